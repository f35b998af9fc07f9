//! Resume from a cursor: exactly the missed events, in order, then `caught_up`, then live —
//! also while a publisher keeps appending, and for a reader too slow to keep up.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{json, Value};

use crate::support::*;

const QUIET: Duration = Duration::from_millis(300);

/// Reads the greeting of `/ws/{kind}/{id}` and returns (connection_established, subscribed).
async fn greeting(ws: &mut Ws) -> (Value, Value) {
    let hello = ws.recv().await;
    assert_eq!(hello["type"], "connection_established", "{hello}");
    let subscribed = ws.recv().await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    (hello, subscribed)
}

async fn epoch_of(server: &Server) -> String {
    let health = server.health().await.expect("health");
    health["epoch"].as_str().expect("epoch").to_string()
}

/// Reads exactly these events (no other message in between) and returns them.
async fn expect_events(ws: &mut Ws, channel: &str, want: &[u64]) -> Vec<Value> {
    let mut out = Vec::new();
    for seq in want {
        let message = ws.recv().await;
        assert_eq!(
            message["type"], "event",
            "expected event {seq}, got {message}"
        );
        assert_eq!(message["seq"], *seq, "{message}");
        assert_eq!(message["channel"], channel, "{message}");
        out.push(message);
    }
    out
}

#[tokio::test]
async fn resume_after_disconnect_delivers_exactly_the_missed_events_then_live() {
    let server = Server::start().await;
    let epoch = epoch_of(&server).await;
    let mut ws = server.ws("/ws/arena/x").await;
    greeting(&mut ws).await;
    for i in 1..=3 {
        server.publish_one("arena/x", "t", json!({ "i": i })).await;
    }
    let first = expect_events(&mut ws, "arena/x", &[1, 2, 3]).await;
    let last = first.last().unwrap()["seq"].as_u64().unwrap();
    ws.close().await;

    for i in 4..=7 {
        server.publish_one("arena/x", "t", json!({ "i": i })).await;
    }
    // Another channel's events are not part of this channel's backlog.
    server.publish_one("arena/other", "t", json!({})).await; // 8

    let mut ws = server
        .ws(&format!("/ws/arena/x?since={last}&epoch={epoch}"))
        .await;
    let (hello, subscribed) = greeting(&mut ws).await;
    assert_eq!(hello["head"], 8);
    assert_eq!(hello["epoch"], epoch.as_str());
    assert_eq!(subscribed["channel"], "arena/x");
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    assert!(subscribed.get("reason").is_none(), "{subscribed}");
    assert_eq!(subscribed["head"], 8, "{subscribed}");
    assert_eq!(subscribed["earliest"], 1, "{subscribed}");

    let missed = expect_events(&mut ws, "arena/x", &[4, 5, 6, 7]).await;
    for (event, i) in missed.iter().zip(4..) {
        assert_eq!(event["data"], json!({ "i": i }));
        assert_eq!(event["event_type"], "t");
    }
    let caught_up = ws.recv().await;
    assert_eq!(caught_up["type"], "caught_up", "{caught_up}");
    assert_eq!(caught_up["channel"], "arena/x");
    let caught_up_seq = caught_up["seq"].as_u64().expect("caught_up seq");
    assert!(
        (7..=8).contains(&caught_up_seq),
        "caught_up names the position reached: {caught_up}"
    );

    let live = server.publish_one("arena/x", "t", json!({ "i": 9 })).await;
    expect_events(&mut ws, "arena/x", &[live]).await;
    assert!(
        ws.try_recv(QUIET).await.is_none(),
        "no duplicate, nothing else"
    );
}

#[tokio::test]
async fn resume_by_subscribe_message_with_string_cursor() {
    let server = Server::start().await;
    let epoch = epoch_of(&server).await;
    for i in 1..=6 {
        server.publish_one("arena/x", "t", json!({ "i": i })).await;
    }
    let mut ws = server.ws("/ws").await;
    ws.recv_type("connection_established").await;
    ws.send(json!({"type": "subscribe", "id": "r1", "channel": "arena/x", "since": "2", "epoch": epoch}))
        .await;
    let subscribed = ws.recv().await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["id"], "r1");
    assert_eq!(subscribed["channel"], "arena/x");
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    assert_eq!(subscribed["head"], 6);
    let replayed = expect_events(&mut ws, "arena/x", &[3, 4, 5, 6]).await;
    assert_eq!(replayed[0]["data"], json!({"i": 3}));
    let caught_up = ws.recv().await;
    assert_eq!(
        caught_up,
        json!({"type": "caught_up", "channel": "arena/x", "seq": 6})
    );
    let live = server.publish_one("arena/x", "t", json!({ "i": 7 })).await;
    expect_events(&mut ws, "arena/x", &[live]).await;
    assert!(ws.try_recv(QUIET).await.is_none());
}

#[tokio::test]
async fn since_zero_delivers_from_the_earliest_event() {
    let server = Server::start().await;
    for i in 1..=5 {
        server.publish_one("arena/z", "t", json!({ "i": i })).await;
    }
    let mut ws = server.ws("/ws/arena/z?since=0").await;
    let (_, subscribed) = greeting(&mut ws).await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    assert_eq!(subscribed["earliest"], 1);
    expect_events(&mut ws, "arena/z", &[1, 2, 3, 4, 5]).await;
    assert_eq!(
        ws.recv().await,
        json!({"type": "caught_up", "channel": "arena/z", "seq": 5})
    );
}

#[tokio::test]
async fn resume_of_a_second_channel_delivers_shared_events_once() {
    let server = Server::start().await;
    let both =
        |i: u64| json!({"channels": ["arena/a", "arena/b"], "event_type": "t", "data": {"i": i}});
    for i in 1..=3 {
        assert_eq!(server.publish(both(i)).await.0, 200);
    }
    let mut ws = server.ws("/ws").await;
    ws.recv_type("connection_established").await;
    let subscribed = ws.subscribe("arena/a", json!({})).await;
    assert_eq!(subscribed["recovered"], true);
    assert_eq!(server.publish(both(4)).await.1["seq"], 4);
    expect_events(&mut ws, "arena/a", &[4]).await;

    // 1-3 predate the arena/a subscription: they come through arena/b; 4 already came.
    let subscribed = ws.subscribe("arena/b", json!({"since": "0"})).await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    expect_events(&mut ws, "arena/b", &[1, 2, 3]).await;
    let caught_up = ws.recv().await;
    assert_eq!(caught_up["type"], "caught_up", "{caught_up}");
    assert_eq!(caught_up["channel"], "arena/b");

    assert_eq!(server.publish(both(5)).await.1["seq"], 5);
    let event = ws.recv().await;
    assert_eq!(event["seq"], 5, "{event}");
    assert!(ws.try_recv(QUIET).await.is_none(), "each event once");
}

#[tokio::test]
async fn resume_applies_the_subscription_filter_to_the_backlog() {
    let server = Server::start().await;
    for (i, event_type) in ["a", "b", "a", "c", "a"].into_iter().enumerate() {
        server
            .publish_one("arena/f", event_type, json!({ "i": i }))
            .await;
    }
    let mut ws = server.ws("/ws/arena/f?since=1&types=a,c").await;
    let (_, subscribed) = greeting(&mut ws).await;
    assert_eq!(subscribed["recovered"], true);
    expect_events(&mut ws, "arena/f", &[3, 4, 5]).await;
    assert_eq!(ws.recv().await["type"], "caught_up");

    let mut ws = server.ws("/ws").await;
    ws.recv_type("connection_established").await;
    ws.subscribe(
        "arena/f",
        json!({"since": "0", "filters": {"i": {"min": 2}}}),
    )
    .await;
    expect_events(&mut ws, "arena/f", &[3, 4, 5]).await;
    assert_eq!(ws.recv().await["type"], "caught_up");
}

/// After a cursor that is not from this log: nothing with seq <= head is delivered, and
/// live events still are. A `caught_up` may come; an event from the past may not.
async fn expect_live_only(server: &Server, ws: &mut Ws, channel: &str, head: u64) {
    let live = server
        .publish_one(channel, "t", json!({"live": true}))
        .await;
    assert!(live > head);
    let mut events = Vec::new();
    let mut caught_up = 0;
    while let Some(message) = ws.try_recv(QUIET).await {
        match message["type"].as_str() {
            Some("caught_up") => {
                caught_up += 1;
                assert_eq!(message["channel"], channel);
                assert!(message["seq"].as_u64().unwrap() >= head, "{message}");
            }
            Some("event") => events.push(message["seq"].as_u64().unwrap()),
            _ => panic!("unexpected {message}"),
        }
        assert!(events.len() + caught_up <= 10, "too many messages");
    }
    assert_eq!(
        events,
        vec![live],
        "nothing is replayed, live events arrive"
    );
    assert!(caught_up <= 1);
}

#[tokio::test]
async fn epoch_mismatch_and_future_cursor_replay_nothing_and_stay_live() {
    let server = Server::start().await;
    let epoch = epoch_of(&server).await;
    for i in 1..=3 {
        server.publish_one("arena/e", "t", json!({ "i": i })).await;
    }

    let mut ws = server.ws("/ws/arena/e?since=1&epoch=not-this-log").await;
    let (_, subscribed) = greeting(&mut ws).await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert_eq!(subscribed["reason"], "epoch_mismatch", "{subscribed}");
    expect_live_only(&server, &mut ws, "arena/e", 3).await;
    let head = server.head().await;

    let mut ws = server
        .ws(&format!("/ws/arena/e?since=1000&epoch={epoch}"))
        .await;
    let (_, subscribed) = greeting(&mut ws).await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert_eq!(subscribed["reason"], "future_cursor", "{subscribed}");
    expect_live_only(&server, &mut ws, "arena/e", head).await;
    let head = server.head().await;

    // The same through the subscribe message.
    let mut ws = server.ws("/ws").await;
    ws.recv_type("connection_established").await;
    let subscribed = ws
        .subscribe("arena/e", json!({"since": "1", "epoch": "other"}))
        .await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert_eq!(subscribed["reason"], "epoch_mismatch", "{subscribed}");
    expect_live_only(&server, &mut ws, "arena/e", head).await;
}

/// What one subscriber connection saw: its events' seqs, in arrival order.
struct Session {
    seqs: Vec<u64>,
    caught_up: Option<u64>,
}

/// Reads from a resumed connection until `enough` says stop; checks order and the
/// `caught_up` boundary on the way.
async fn read_session(ws: &mut Ws, since: u64, mut enough: impl FnMut(&[u64]) -> bool) -> Session {
    let mut session = Session {
        seqs: Vec::new(),
        caught_up: None,
    };
    let mut last = since;
    while !enough(&session.seqs) {
        let message = ws.recv().await;
        match message["type"].as_str() {
            Some("event") => {
                let seq = message["seq"].as_u64().unwrap();
                assert!(seq > last, "out of order or duplicate: {seq} after {last}");
                if let Some(mark) = session.caught_up {
                    assert!(seq > mark, "{seq} delivered again after caught_up {mark}");
                }
                last = seq;
                session.seqs.push(seq);
            }
            Some("caught_up") => {
                assert!(session.caught_up.is_none(), "a second caught_up: {message}");
                let mark = message["seq"].as_u64().unwrap();
                assert!(mark >= last, "caught_up {mark} below delivered {last}");
                session.caught_up = Some(mark);
            }
            _ => panic!("unexpected {message}"),
        }
    }
    session
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_while_a_publisher_keeps_publishing_is_gap_free() {
    const TOTAL: usize = 2000;
    let server = Server::start().await;
    let epoch = epoch_of(&server).await;
    let answered = Arc::new(Mutex::new(Vec::<u64>::new()));
    let publisher = {
        let http = server.http();
        let answered = answered.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            let mut round = 0;
            while sent < TOTAL {
                round += 1;
                let size = if round % 4 == 0 {
                    25.min(TOTAL - sent)
                } else {
                    1
                };
                let items: Vec<Value> = (sent..sent + size)
                    .map(|i| json!({"channel": "arena/x", "event_type": "tick", "data": {"i": i}}))
                    .collect();
                let body = if size == 1 {
                    items[0].clone()
                } else {
                    Value::Array(items)
                };
                let (status, answer) = http.publish(&body).await.expect("publish");
                assert_eq!(status, 200, "{answer}");
                let mut got: Vec<u64> = match answer.get("seqs") {
                    Some(seqs) => seqs
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_u64().unwrap())
                        .collect(),
                    None => vec![answer["seq"].as_u64().unwrap()],
                };
                assert_eq!(got.len(), size);
                answered.lock().unwrap().append(&mut got);
                sent += size;
            }
        })
    };

    let count = |n: usize| {
        let answered = answered.clone();
        async move { answered.lock().unwrap().len() >= n }
    };
    wait_until(|| count(200)).await;
    let since = answered.lock().unwrap()[99];

    let mut received = Vec::new();
    let mut cursor = since;
    // Several sessions, each dropped mid-stream, each resumed from the last seq it got.
    for _ in 0..4 {
        let mut ws = server
            .ws(&format!("/ws/arena/x?since={cursor}&epoch={epoch}"))
            .await;
        let (_, subscribed) = greeting(&mut ws).await;
        assert_eq!(subscribed["recovered"], true, "{subscribed}");
        let session = read_session(&mut ws, cursor, |seqs| seqs.len() >= 150).await;
        ws.close().await;
        cursor = *session.seqs.last().unwrap();
        received.extend(session.seqs);
    }
    publisher.await.expect("publisher");
    let expected: Vec<u64> = {
        let answered = answered.lock().unwrap();
        answered.iter().copied().filter(|s| *s > since).collect()
    };
    let final_seq = *expected.last().unwrap();
    let mut ws = server
        .ws(&format!("/ws/arena/x?since={cursor}&epoch={epoch}"))
        .await;
    let (_, subscribed) = greeting(&mut ws).await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    let session = read_session(&mut ws, cursor, |seqs| seqs.last() == Some(&final_seq)).await;
    received.extend(session.seqs);
    if session.caught_up.is_none() {
        let message = ws.recv().await;
        assert_eq!(message["type"], "caught_up", "{message}");
    }
    assert_eq!(received.len(), expected.len());
    assert_eq!(
        received, expected,
        "every answered seq after {since}, once, in order"
    );
    assert!(ws.try_recv(QUIET).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_gets_everything_in_order_or_is_closed_with_4000() {
    const TOTAL: u64 = 20_000;
    const BATCH: u64 = 500;
    let server = Server::start_with("[delivery]\nqueue_capacity = 4\n").await;
    let epoch = epoch_of(&server).await;

    let mut slow = server.ws("/ws/arena/slow").await;
    greeting(&mut slow).await;
    let mut fast = server.ws("/ws/arena/slow").await;
    greeting(&mut fast).await;
    let fast_reader = tokio::spawn(async move {
        let mut last = 0;
        while last < TOTAL {
            let message = fast.recv().await;
            assert_eq!(message["type"], "event", "{message}");
            let seq = message["seq"].as_u64().unwrap();
            assert_eq!(seq, last + 1, "fast subscriber: gap or duplicate");
            last = seq;
        }
        fast
    });

    let padding = "x".repeat(1000);
    let http = server.http();
    for start in (0..TOTAL).step_by(BATCH as usize) {
        let batch: Vec<Value> = (start..start + BATCH)
            .map(|i| json!({"channel": "arena/slow", "event_type": "t", "data": {"i": i, "pad": padding}}))
            .collect();
        let (status, answer) = http.publish(&Value::Array(batch)).await.expect("publish");
        assert_eq!(status, 200, "{answer}");
    }
    let mut fast = tokio::time::timeout(Duration::from_secs(30), fast_reader)
        .await
        .expect("the fast subscriber keeps up")
        .expect("fast reader");
    assert!(fast.try_recv(QUIET).await.is_none());

    // Now the slow one reads: everything, or a 4000 close naming where to resume.
    let mut last = 0;
    let mut closed = None;
    while last < TOTAL {
        match slow.recv_or_close().await {
            Incoming::Message(message) => {
                assert_eq!(message["type"], "event", "{message}");
                let seq = message["seq"].as_u64().unwrap();
                assert_eq!(seq, last + 1, "slow subscriber: gap or duplicate");
                assert_eq!(message["data"]["i"], seq - 1);
                last = seq;
            }
            Incoming::Closed(code, reason) => {
                closed = Some((code, reason));
                break;
            }
        }
    }
    if let Some((code, reason)) = closed {
        assert_eq!(code, 4000, "a lagging reader is closed with 4000: {reason}");
        assert!(
            reason
                .split(|c: char| !c.is_ascii_digit())
                .any(|n| n == last.to_string()),
            "the close reason names the last seq delivered ({last}): {reason}"
        );
        // Resuming from there gives the rest.
        let mut ws = server
            .ws(&format!("/ws/arena/slow?since={last}&epoch={epoch}"))
            .await;
        let (_, subscribed) = greeting(&mut ws).await;
        assert_eq!(subscribed["recovered"], true);
        let rest = read_session(&mut ws, last, |seqs| seqs.last() == Some(&TOTAL)).await;
        assert_eq!(rest.seqs, (last + 1..=TOTAL).collect::<Vec<_>>());
    } else {
        assert!(
            slow.try_recv(QUIET).await.is_none(),
            "nothing after the last event"
        );
    }
}
