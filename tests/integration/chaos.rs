//! Chaos: for a bounded time, publishers (HTTP and WebSocket, retrying with idempotency
//! keys), resuming subscribers, a slow reader, a replayer and garbage senders all run while
//! the server is killed with SIGKILL and restarted. Then: every acknowledged event is in the
//! log exactly once, every subscriber saw every event of its channel exactly once and in
//! order, every complete replay was in order, and no seq was handed out twice.
//!
//! `STREAMLOG_CHAOS_SECS` (default 6) and `STREAMLOG_CHAOS_KILLS` (default 3) make it larger.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

const CHANNELS: [&str; 3] = ["arena/c0", "arena/c1", "competition/c2"];

#[derive(Clone)]
struct Shared {
    addr: Arc<RwLock<SocketAddr>>,
    stop: Arc<AtomicBool>,
    /// idempotency key -> (seq, channel)
    acked: Arc<Mutex<HashMap<String, (u64, String)>>>,
    resumes: Arc<AtomicU64>,
}

impl Shared {
    fn addr(&self) -> SocketAddr {
        *self.addr.read().unwrap()
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// HTTP publisher: every event has a key and is retried until acknowledged.
async fn http_publisher(shared: Shared, n: usize) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut i = 0;
    while !shared.stopped() {
        let key = format!("h{n}-{i}");
        let channel = CHANNELS[i % CHANNELS.len()];
        let body = json!({"channel": channel, "event_type": "t", "id": key, "data": {"key": key}});
        loop {
            let url = format!("http://{}/api/v1/events", shared.addr());
            match client.post(url).json(&body).send().await {
                Ok(r) if r.status() == 200 => {
                    let answer: Value = r.json().await.unwrap();
                    let seq = answer["seq"].as_u64().unwrap();
                    shared
                        .acked
                        .lock()
                        .unwrap()
                        .insert(key.clone(), (seq, channel.to_string()));
                    break;
                }
                Ok(r) => panic!("publish refused: {}", r.status()),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
            if shared.stopped() {
                return; // Unacknowledged: it may or may not be in the log.
            }
        }
        i += 1;
    }
}

/// WebSocket publisher: pipelines a few publishes, re-sends unanswered ones after a drop.
async fn ws_publisher(shared: Shared, n: usize) {
    let mut i = 0usize;
    while !shared.stopped() {
        let Ok((mut ws, _)) =
            tokio_tungstenite::connect_async(format!("ws://{}/ws", shared.addr())).await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let mut pending: BTreeMap<String, &str> = BTreeMap::new();
        'conn: while !shared.stopped() {
            while pending.len() < 5 {
                let key = format!("w{n}-{i}");
                let channel = CHANNELS[i % CHANNELS.len()];
                i += 1;
                pending.insert(key, channel);
            }
            for (key, channel) in &pending {
                let m = json!({"type":"publish","id":key,"idempotency_key":key,"channel":channel,"event_type":"t","data":{"key":key}});
                if ws.send(Message::text(m.to_string())).await.is_err() {
                    break 'conn;
                }
            }
            while !pending.is_empty() {
                match tokio::time::timeout(Duration::from_secs(1), ws.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) => {
                        let m: Value = serde_json::from_str(&text).unwrap();
                        if m["type"] == "published" {
                            let key = m["id"].as_str().unwrap().to_string();
                            if let Some(channel) = pending.remove(&key) {
                                let seq = m["seq"].as_u64().unwrap();
                                shared
                                    .acked
                                    .lock()
                                    .unwrap()
                                    .insert(key, (seq, channel.to_string()));
                            }
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break 'conn,
                }
            }
        }
    }
}

/// A subscriber that resumes from its cursor after every drop (and drops on purpose every
/// `drop_every` events); `pause` makes it a slow reader. Returns every seq it received.
async fn subscriber(
    shared: Shared,
    channel: &'static str,
    drop_every: usize,
    pause: Duration,
) -> Vec<u64> {
    let mut seen: Vec<u64> = Vec::new();
    let mut epoch = String::new();
    let mut final_pass = false;
    loop {
        let cursor = seen.last().copied().unwrap_or(0);
        let url = format!(
            "ws://{}/ws/{channel}?since={cursor}&epoch={epoch}",
            shared.addr()
        );
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if cursor > 0 {
            shared.resumes.fetch_add(1, Ordering::Relaxed);
        }
        let mut in_this_connection = 0;
        loop {
            // Once the run is over, a quiet socket means: reconnect for the final catch-up.
            let wait = if shared.stopped() && !final_pass {
                Duration::from_millis(300)
            } else {
                Duration::from_secs(3)
            };
            let next = tokio::time::timeout(wait, ws.next()).await;
            let Ok(Some(Ok(Message::Text(text)))) = next else {
                break;
            };
            let m: Value = serde_json::from_str(&text).unwrap();
            match m["type"].as_str().unwrap() {
                "connection_established" => epoch = m["epoch"].as_str().unwrap().to_string(),
                "subscribed" => assert_eq!(m["recovered"], true, "{m}"),
                "event" => {
                    let seq = m["seq"].as_u64().unwrap();
                    if let Some(last) = seen.last() {
                        assert!(
                            seq > *last,
                            "{channel}: seq {seq} after {last}: duplicate or out of order"
                        );
                    }
                    seen.push(seq);
                    in_this_connection += 1;
                    // A slow reader: it stalls now and then while events keep coming.
                    if !pause.is_zero() && seen.len() % 100 == 0 && !shared.stopped() {
                        tokio::time::sleep(pause).await;
                    }
                    if drop_every > 0 && in_this_connection % drop_every == 0 && !final_pass {
                        break;
                    }
                }
                "caught_up" if final_pass => return seen,
                _ => {}
            }
        }
        if shared.stopped() {
            final_pass = true;
        }
    }
}

/// Replays a channel from the start again and again: each complete replay must arrive in
/// seq order with as many events as its `replay_end` counts. Returns the replays completed.
async fn replayer(shared: Shared) -> u64 {
    let mut completed = 0;
    while !shared.stopped() {
        let Ok((mut ws, _)) =
            tokio_tungstenite::connect_async(format!("ws://{}/ws", shared.addr())).await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let request =
            json!({"type": "replay", "id": "rp", "channel": CHANNELS[1], "from": "0", "speed": 0});
        if ws.send(Message::text(request.to_string())).await.is_err() {
            continue;
        }
        let mut last = 0;
        let mut count = 0u64;
        loop {
            let Ok(Some(Ok(Message::Text(text)))) =
                tokio::time::timeout(Duration::from_secs(3), ws.next()).await
            else {
                break; // killed mid-replay: start over
            };
            let m: Value = serde_json::from_str(&text).unwrap();
            match m["type"].as_str().unwrap() {
                "event" if m["replay"] == "rp" => {
                    let seq = m["seq"].as_u64().unwrap();
                    assert!(seq > last, "replay out of order: {seq} after {last}");
                    last = seq;
                    count += 1;
                }
                "replay_end" => {
                    assert_eq!(m["count"], count, "replay_end counts what was sent");
                    completed += 1;
                    break;
                }
                _ => {}
            }
        }
    }
    completed
}

/// Sends junk: broken JSON, wrong types, binary noise, oversize messages.
async fn garbage_sender(shared: Shared) {
    let junk: [Message; 5] = [
        Message::text("{not json"),
        Message::text(r#"{"type":"subscribe","channel":7}"#),
        Message::binary(vec![0xff, 0x00, 0x1f, 0x8b]),
        Message::text(format!(
            r#"{{"type":"ping","id":"{}"}}"#,
            "x".repeat(200_000)
        )),
        Message::text(r#"{"type":"publish","channel":"Bad!","event_type":"t"}"#),
    ];
    let mut i = 0;
    while !shared.stopped() {
        if let Ok((mut ws, _)) =
            tokio_tungstenite::connect_async(format!("ws://{}/ws", shared.addr())).await
        {
            for _ in 0..10 {
                if ws.send(junk[i % junk.len()].clone()).await.is_err() {
                    break;
                }
                i += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_kills_lose_nothing_acknowledged_and_resumes_are_exact() {
    let secs = env_u64("STREAMLOG_CHAOS_SECS", 6);
    let kills = env_u64("STREAMLOG_CHAOS_KILLS", 3);
    let mut server =
        Server::start_with("[delivery]\nqueue_capacity = 8\n[limits]\nmax_message_bytes = 65536\n")
            .await;
    let shared = Shared {
        addr: Arc::new(RwLock::new(server.addr)),
        stop: Arc::new(AtomicBool::new(false)),
        acked: Arc::default(),
        resumes: Arc::default(),
    };
    let mut workers = Vec::new();
    for n in 0..3 {
        workers.push(tokio::spawn(http_publisher(shared.clone(), n)));
    }
    for n in 0..2 {
        workers.push(tokio::spawn(ws_publisher(shared.clone(), n)));
    }
    workers.push(tokio::spawn(garbage_sender(shared.clone())));
    let replays = tokio::spawn(replayer(shared.clone()));
    let mut subscribers = Vec::new();
    for (i, channel) in CHANNELS.iter().enumerate() {
        subscribers.push((
            *channel,
            tokio::spawn(subscriber(
                shared.clone(),
                channel,
                40 + i * 7,
                Duration::ZERO,
            )),
        ));
    }
    subscribers.push((
        "arena/c0",
        tokio::spawn(subscriber(
            shared.clone(),
            "arena/c0",
            0,
            Duration::from_millis(150),
        )),
    ));

    let started = Instant::now();
    let mut max_recovery = Duration::ZERO;
    for k in 0..kills {
        let at = Duration::from_secs(secs) * (k as u32 + 1) / (kills as u32 + 1);
        tokio::time::sleep(at.saturating_sub(started.elapsed())).await;
        server.kill();
        let restart = Instant::now();
        server.restart().await;
        max_recovery = max_recovery.max(restart.elapsed());
        *shared.addr.write().unwrap() = server.addr;
    }
    tokio::time::sleep(Duration::from_secs(secs).saturating_sub(started.elapsed())).await;
    shared.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(20), worker)
            .await
            .expect("worker stops")
            .unwrap();
    }

    let replays = tokio::time::timeout(Duration::from_secs(20), replays)
        .await
        .expect("replayer stops")
        .unwrap();
    // Every acknowledged event is in the log, exactly once, with its data; no seq reused.
    let acked = shared.acked.lock().unwrap().clone();
    let mut histories: HashMap<&str, Vec<Value>> = HashMap::new();
    for channel in CHANNELS {
        histories.insert(channel, server.history_all(channel).await);
    }
    let mut seqs_seen = HashSet::new();
    for (channel, events) in &histories {
        let seqs: Vec<u64> = seqs(events);
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{channel}: history out of order"
        );
        for seq in seqs {
            assert!(seqs_seen.insert(seq), "seq {seq} appears twice in the log");
        }
    }
    // (channel, key) -> the events carrying that key
    let mut by_key: HashMap<(&str, &str), Vec<&Value>> = HashMap::new();
    for (channel, events) in &histories {
        for event in events {
            if let Some(key) = event["data"]["key"].as_str() {
                by_key.entry((channel, key)).or_default().push(event);
            }
        }
    }
    let mut acked_seqs = HashSet::new();
    for (key, (seq, channel)) in &acked {
        assert!(acked_seqs.insert(*seq), "seq {seq} acknowledged twice");
        let found = by_key
            .get(&(channel.as_str(), key.as_str()))
            .cloned()
            .unwrap_or_default();
        assert_eq!(found.len(), 1, "{key} must be in {channel} exactly once");
        assert_eq!(found[0]["seq"], *seq, "{key}: acknowledged seq");
        assert_eq!(found[0]["id"], key.as_str());
    }
    // Every subscriber saw its whole channel, once, in order.
    for (channel, task) in subscribers {
        let seen = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("subscriber finishes")
            .unwrap();
        assert_eq!(
            seen,
            seqs(&histories[channel]),
            "{channel}: a resuming subscriber missed or repeated events"
        );
    }
    let head = server.head().await;
    let new_seq = server.publish_one("arena/c0", "t", json!({})).await;
    assert!(new_seq > head && acked_seqs.iter().all(|s| *s < new_seq));
    println!(
        "chaos: {} s, {} kills, {} acknowledged events ({} in the log), {} resumes, {} full replays, max recovery {:?}",
        secs,
        kills,
        acked.len(),
        seqs_seen.len(),
        shared.resumes.load(Ordering::Relaxed),
        replays,
        max_recovery
    );
    assert!(replays > 0, "at least one replay completed");
    assert!(acked.len() > 100, "the publishers made progress");
}
