//! Hostile input: thousands of garbage frames from several connections at once. Every
//! frame that leaves the connection open is answered (an error with a code, or a pong); a
//! frame that breaks the protocol closes its connection with the right code; meanwhile an
//! honest client is served, and afterwards the server is healthy and its memory is back.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{
    protocol::frame::{
        coding::{Data, OpCode},
        Frame,
    },
    Message,
};

use crate::support::*;

const CONNECTIONS: usize = 4;
const FRAMES_PER_CONNECTION: usize = 1000;
const MIB: usize = 1 << 20;

const CONFIG: &str = "
[limits]
messages_per_second = 1000000
burst = 1000000
flood_refusals = 1000000
max_message_bytes = 2097152
[storage]
cache_capacity_mb = 16
";

/// The codes a garbage frame may be answered with.
const CODES: [&str; 4] = [
    "INVALID_MESSAGE",
    "UNKNOWN_TYPE",
    "INVALID_CHANNEL",
    "NOT_FOUND",
];

/// One frame of garbage that the connection survives. Every kind the issue lists: random
/// bytes, wrong types, huge numbers, 10 000-deep nesting, 1 MiB strings (broken UTF-8 ends
/// a connection, so it is sent separately).
fn garbage(rng: &mut StdRng, i: usize) -> Message {
    let text = |s: String| Message::text(s);
    match i % 16 {
        0 => {
            let len = rng.random_range(0..4096);
            Message::binary((0..len).map(|_| rng.random::<u8>()).collect::<Vec<u8>>())
        }
        1 => text(
            (0..rng.random_range(1..512))
                .map(|_| rng.random::<char>())
                .collect(),
        ),
        2 => text(json!({"type": rng.random::<u32>()}).to_string()),
        3 => text(json!({"type": "subscribe", "channel": [1, {"x": null}]}).to_string()),
        4 => text(r#"{"type":"subscribe","channel":"arena/x","since":1e999}"#.into()),
        5 => text(format!(
            r#"{{"type":"subscribe","channel":"arena/x","since":"{}"}}"#,
            "9".repeat(rng.random_range(20..400))
        )),
        6 => text(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000))),
        7 => text(format!(
            "{}1{}",
            r#"{"a":"#.repeat(10_000),
            "}".repeat(10_000)
        )),
        8 if i % 160 == 8 => {
            text(json!({"type": "subscribe", "channel": "x".repeat(MIB)}).to_string())
        }
        9 if i % 160 == 9 => text(format!("\"{}\"", "y".repeat(MIB))),
        10 => text(json!({"type": "publish", "channel": "arena/x", "event_type": 3}).to_string()),
        11 => text(
            json!({"type": "publish", "channel": "arena/x", "event_type": "t", "data": [1]})
                .to_string(),
        ),
        12 => text(
            json!({"type": "subscribe", "channel": "arena/x", "filters": {"a": {"gt": 1}}})
                .to_string(),
        ),
        13 => text(json!({"type": "unsubscribe", "channel": "never/subscribed"}).to_string()),
        14 => text(json!({"type": "dance", "id": i}).to_string()),
        _ => text(
            [
                "null",
                "[]",
                "\"\"",
                "{}",
                "-0",
                "1e-999",
                "{\"type\":null}",
            ][i % 7]
                .into(),
        ),
    }
}

/// Sends `FRAMES_PER_CONNECTION` garbage frames on a new connection while reading the
/// answers; returns how many answers came.
async fn flood(server: &Server, seed: u64) -> usize {
    let mut ws = server.ws("/ws").await;
    ws.recv_type("connection_established").await;
    let (mut tx, mut rx) = ws.into_stream().split();
    let reader = tokio::spawn(async move {
        let mut answers = 0;
        while answers < FRAMES_PER_CONNECTION {
            let message = tokio::time::timeout(WAIT, rx.next())
                .await
                .expect("an answer within 10 s")
                .expect("open")
                .expect("a frame");
            let Message::Text(text) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            match answer["type"].as_str() {
                Some("error") => {
                    let code = answer["code"].as_str().unwrap();
                    assert!(CODES.contains(&code), "{code}");
                    assert!(!answer["message"].as_str().unwrap().is_empty());
                }
                other => panic!("garbage answered with {other:?}: {text:.200}"),
            }
            answers += 1;
        }
        answers
    });
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..FRAMES_PER_CONNECTION {
        tx.send(garbage(&mut rng, i)).await.unwrap();
    }
    let answers = reader.await.unwrap();
    let _ = tx.close().await;
    answers
}

/// Text frames that are not UTF-8 end their connection with 1007.
async fn broken_utf8(server: &Server, count: usize) {
    for i in 0..count {
        let mut ws = server.ws("/ws").await;
        ws.recv_type("connection_established").await;
        let mut payload = b"{\"type\":\"ping\",\"id\":\"".to_vec();
        payload.extend_from_slice(&[0xff, 0xfe, 0xc3, (i % 256) as u8, 0xed, 0xa0, 0x80]);
        payload.extend_from_slice(b"\"}");
        let frame = Frame::message(payload, OpCode::Data(Data::Text), true);
        ws.send_raw(Message::Frame(frame)).await;
        assert_eq!(ws.closed().await.0, 1007);
    }
}

async fn round(server: &Server, seed: u64, connections: usize) {
    let floods = (0..connections).map(|c| flood(server, seed + c as u64));
    let answers = futures_util::future::join_all(floods).await;
    assert!(
        answers.iter().all(|&n| n == FRAMES_PER_CONNECTION),
        "{answers:?}"
    );
    broken_utf8(server, 20).await;
    wait_until(|| async { server.health().await.unwrap()["connections"] == 1 }).await;
}

#[tokio::test]
async fn garbage_from_many_connections_harms_nobody_and_memory_comes_back() {
    let server = Server::start_with(CONFIG).await;
    let mut honest = server.ws("/ws/arena/honest").await;
    honest.recv_type("subscribed").await;

    // A first round lets the allocator reach its working size; the second must not grow it.
    round(&server, 1, 1).await;
    let baseline = server.rss_kib();

    let publishing = async {
        let mut seqs = Vec::new();
        for i in 0..100 {
            seqs.push(
                server
                    .publish_one("arena/honest", "t", json!({"i": i}))
                    .await,
            );
        }
        seqs
    };
    let (seqs, (), events) = tokio::join!(
        publishing,
        round(&server, 100, CONNECTIONS),
        honest.events(100)
    );
    let after_flood = server.rss_kib();
    assert_eq!(
        crate::support::seqs(&events),
        seqs,
        "the honest client got every event"
    );

    let health = server.health().await.expect("healthy");
    assert_eq!(
        (
            health["connections"].as_u64(),
            health["subscriptions"].as_u64()
        ),
        (Some(1), Some(1))
    );
    honest.send(json!({"type": "ping", "id": "still"})).await;
    assert_eq!(honest.recv_type("pong").await["id"], "still");

    // Memory must come back: more floods of the same size must not raise the resident
    // size by much. The allocator keeps some freed memory around (up to what the busiest
    // moment needed), so the bound is on growth over several floods: keeping even a part of
    // what each flood sent (~56 MiB of large frames each) would pass it.
    for seed in [200, 300, 400] {
        round(&server, seed, CONNECTIONS).await;
    }
    let at_rest = server.rss_kib();
    eprintln!("RSS KiB: baseline {baseline}, after a flood {after_flood}, after four {at_rest}");
    assert!(
        at_rest <= baseline + 96 * 1024,
        "RSS grew from {baseline} KiB to {at_rest} KiB over four floods"
    );
    tokio::time::timeout(Duration::from_secs(1), honest.close())
        .await
        .unwrap();
}
