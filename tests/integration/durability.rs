//! What survives a restart, a SIGTERM and a `kill -9`; idempotency keys; batch atomicity.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde_json::{json, Value};

use crate::support::*;

async fn epoch_of(server: &Server) -> String {
    let health = server.health().await.expect("health");
    health["epoch"].as_str().expect("epoch").to_string()
}

#[tokio::test]
async fn restart_keeps_every_event_the_epoch_and_the_seq_order() {
    let mut server = Server::start().await;
    let epoch = epoch_of(&server).await;
    for i in 1..=10u64 {
        let seq = server.publish_one("arena/d", "t", json!({ "i": i })).await;
        assert_eq!(seq, i);
    }
    let status = server.terminate();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");

    server.restart().await;
    assert_eq!(
        epoch_of(&server).await,
        epoch,
        "the epoch belongs to the data dir"
    );
    assert_eq!(server.head().await, 10);
    let history = server.history_all("arena/d").await;
    assert_eq!(seqs(&history), (1..=10).collect::<Vec<_>>());
    for (event, i) in history.iter().zip(1..) {
        assert_eq!(event["data"], json!({ "i": i }));
    }
    let next = server.publish_one("arena/d", "t", json!({"i": 11})).await;
    assert_eq!(next, 11, "seqs continue, none reused");

    let mut ws = server.ws("/ws/arena/d?since=8").await;
    let hello = ws.recv().await;
    assert_eq!(hello["epoch"], epoch.as_str());
    assert_eq!(hello["head"], 11);
    ws.recv_type("subscribed").await;
    assert_eq!(seqs(&ws.events(3).await), vec![9, 10, 11]);
}

/// seq -> (channel, data) of every publish that was answered 200.
type Answered = Arc<Mutex<HashMap<u64, (String, Value)>>>;

/// Publishes until `stop`, an error (the server is gone) or 10 s; records what was answered.
async fn publish_until_stopped(
    http: Http,
    worker: usize,
    round: usize,
    stop: Arc<AtomicBool>,
    answered: Answered,
) {
    let channel = format!("arena/k{worker}");
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
        let size = if n % 3 == 2 { 5 } else { 1 };
        let items: Vec<Value> = (0..size)
            .map(|k| {
                json!({"channel": channel, "event_type": "t",
                       "data": {"w": worker, "r": round, "n": n, "k": k}})
            })
            .collect();
        n += 1;
        let body = if size == 1 {
            items[0].clone()
        } else {
            Value::Array(items.clone())
        };
        let Ok((status, answer)) = http.publish(&body).await else {
            return;
        };
        if status != 200 {
            return;
        }
        let seqs: Vec<u64> = match answer.get("seqs") {
            Some(seqs) => seqs
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_u64().unwrap())
                .collect(),
            None => vec![answer["seq"].as_u64().expect("seq")],
        };
        assert_eq!(seqs.len(), items.len(), "{answer}");
        let mut answered = answered.lock().unwrap();
        for (seq, item) in seqs.into_iter().zip(items) {
            let previous = answered.insert(seq, (channel.clone(), item["data"].clone()));
            assert!(previous.is_none(), "seq {seq} answered twice");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_publishing_loses_no_answered_event_and_reuses_no_seq() {
    const WORKERS: usize = 4;
    let mut server = Server::start().await;
    let epoch = epoch_of(&server).await;
    let answered: Answered = Arc::default();
    for round in 0..3 {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..WORKERS)
            .map(|worker| {
                tokio::spawn(publish_until_stopped(
                    server.http(),
                    worker,
                    round,
                    stop.clone(),
                    answered.clone(),
                ))
            })
            .collect();
        let before = answered.lock().unwrap().len();
        // Kill once publishing is well under way.
        wait_until(|| {
            let answered = answered.clone();
            async move { answered.lock().unwrap().len() >= before + 200 }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            tokio::time::timeout(WAIT * 2, task)
                .await
                .expect("publishers stop")
                .expect("publisher");
        }

        server.restart().await;
        assert_eq!(epoch_of(&server).await, epoch);
        let snapshot = answered.lock().unwrap().clone();
        let max_answered = *snapshot.keys().max().unwrap();
        let mut stored: HashMap<u64, Value> = HashMap::new();
        for worker in 0..WORKERS {
            let channel = format!("arena/k{worker}");
            let history = server.history_all(&channel).await;
            let got = seqs(&history);
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "history of {channel} in seq order"
            );
            for event in history {
                let seq = event["seq"].as_u64().unwrap();
                assert!(
                    stored.insert(seq, event["data"].clone()).is_none(),
                    "seq {seq} stored in two channels' histories"
                );
            }
        }
        let mut lost = Vec::new();
        for (seq, (channel, data)) in &snapshot {
            match stored.get(seq) {
                Some(got) => assert_eq!(got, data, "seq {seq} of {channel}"),
                None => lost.push(*seq),
            }
        }
        lost.sort_unstable();
        assert!(
            lost.is_empty(),
            "round {round}: {} answered events lost after kill -9, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
        let head = server.head().await;
        assert!(
            head >= max_answered,
            "head {head} < answered {max_answered}"
        );
        let next = server.publish_one("arena/after", "t", json!({})).await;
        assert!(
            next > max_answered,
            "round {round}: new seq {next} reuses one answered before the kill (max {max_answered})"
        );
    }
}

#[tokio::test]
async fn idempotency_key_answers_the_original_seq_and_appends_nothing() {
    let mut server = Server::start().await;
    let (status, first) = server
        .publish(
            json!({"id": "order-1", "channel": "arena/i", "event_type": "t", "data": {"v": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    let seq = first["seq"].as_u64().unwrap();
    let head = server.head().await;

    let (status, again) = server
        .publish(
            json!({"id": "order-1", "channel": "arena/i", "event_type": "other", "data": {"v": 2}}),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["seq"], seq, "the original seq: {again}");
    assert_eq!(server.head().await, head, "nothing appended");
    let history = server.history_all("arena/i").await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["id"], "order-1");
    assert_eq!(history[0]["data"], json!({"v": 1}));
    assert_eq!(history[0]["event_type"], "t");

    // A batch that repeats the key: the known one answers its original seq.
    let (status, batch) = server
        .publish(json!([
            {"id": "order-2", "channel": "arena/i", "event_type": "t", "data": {"v": 3}},
            {"id": "order-1", "channel": "arena/i", "event_type": "t", "data": {"v": 4}},
        ]))
        .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["seqs"][1], seq, "{batch}");
    let new_seq = batch["seqs"][0].as_u64().unwrap();
    assert_eq!(server.head().await, new_seq);
    assert_eq!(server.history_all("arena/i").await.len(), 2);

    let status = server.terminate();
    assert!(status.success());
    server.restart().await;
    let (status, after) = server
        .publish(
            json!({"id": "order-1", "channel": "arena/i", "event_type": "t", "data": {"v": 5}}),
        )
        .await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["seq"], seq, "the key survives a restart: {after}");
    assert_eq!(
        server.head().await,
        new_seq,
        "nothing appended after restart"
    );
    let history = server.history_all("arena/i").await;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["data"], json!({"v": 1}));
}

fn assert_error_body(status: u16, body: &Value, allowed: &[u16]) {
    assert!(allowed.contains(&status), "status {status}: {body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[tokio::test]
async fn a_batch_with_one_invalid_item_appends_nothing() {
    let server = Server::start().await;
    server.publish_one("arena/b", "t", json!({})).await;
    let head = server.head().await;

    let item =
        |channel: &str, i: u64| json!({"channel": channel, "event_type": "t", "data": {"i": i}});
    let (status, body) = server
        .publish(json!([
            item("arena/b", 1),
            item("arena/b", 2),
            item("Bad Channel", 3),
            item("arena/b", 4)
        ]))
        .await;
    assert_error_body(status, &body, &[400, 422]);
    assert_eq!(body["error"]["code"], "INVALID_CHANNEL", "{body}");

    let (status, body) = server
        .publish(json!([
            item("arena/b", 1),
            item("arena/b", 2),
            {"channel": "arena/b", "data": {}},
        ]))
        .await;
    assert_error_body(status, &body, &[400, 422]);

    let (status, body) = server
        .publish(json!([item("arena/b", 1), item("arena/b", 2), {"channel": "arena/b", "event_type": "t", "data": 7}]))
        .await;
    assert_error_body(status, &body, &[400, 422]);

    assert_eq!(
        server.head().await,
        head,
        "nothing of a rejected batch appended"
    );
    assert_eq!(server.history_all("arena/b").await.len(), 1);
    let next = server.publish_one("arena/b", "t", json!({})).await;
    assert_eq!(
        next,
        head + 1,
        "no seq was consumed by the rejected batches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_websockets_with_1001_and_exits_0() {
    let mut server = Server::start().await;
    let mut single = server.ws("/ws/arena/s").await;
    single.recv_type("subscribed").await;
    let mut multi = server.ws("/ws").await;
    multi.recv_type("connection_established").await;
    server.publish_one("arena/s", "t", json!({})).await;
    single.recv_type("event").await;

    signal(server.pid(), "TERM");
    let (code, reason) = single.closed().await;
    assert_eq!(code, 1001, "{reason}");
    let (code, reason) = multi.closed().await;
    assert_eq!(code, 1001, "{reason}");
    let (status, server) = tokio::task::spawn_blocking(move || (server.wait_exit(), server))
        .await
        .unwrap();
    assert!(
        status.success(),
        "exit status {status:?}; server output:\n{}",
        server.log_text()
    );
}

#[tokio::test]
async fn a_wiped_data_dir_has_a_new_epoch_and_old_cursors_are_refused() {
    let mut server = Server::start().await;
    let old_epoch = epoch_of(&server).await;
    for i in 1..=5 {
        server.publish_one("arena/w", "t", json!({ "i": i })).await;
    }
    assert!(server.terminate().success());
    std::fs::remove_dir_all(server.data_dir()).expect("wipe the data dir");

    server.restart().await;
    let new_epoch = epoch_of(&server).await;
    assert_ne!(new_epoch, old_epoch, "a new store mints a new epoch");
    assert_eq!(server.head().await, 0);
    let first = server.publish_one("arena/w", "t", json!({"new": 1})).await;
    assert_eq!(first, 1);

    let mut ws = server
        .ws(&format!("/ws/arena/w?since=0&epoch={old_epoch}"))
        .await;
    ws.recv_type("connection_established").await;
    let subscribed = ws.recv().await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert_eq!(subscribed["reason"], "epoch_mismatch", "{subscribed}");
    let live = server.publish_one("arena/w", "t", json!({"new": 2})).await;
    let event = ws.recv_type("event").await;
    assert_eq!(
        event["seq"], live,
        "the old cursor replays nothing: {event}"
    );

    // Without the epoch, a cursor past the new head is still not taken for a position.
    let mut ws = server.ws("/ws/arena/w?since=4").await;
    ws.recv_type("connection_established").await;
    let subscribed = ws.recv().await;
    assert_eq!(subscribed["reason"], "future_cursor", "{subscribed}");
}
