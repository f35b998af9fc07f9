//! Dataset export throughput, end to end: a dataset sealed from events on disk, exported by
//! the real server (restarted first, so its cache starts cold) over loopback HTTP, the body
//! read as it streams.
//!
//! `cargo bench --bench export` — `STREAMLOG_BENCH_EVENTS` sets the dataset size (200 000).

#[allow(dead_code, unused_imports)]
#[path = "../tests/integration/support/mod.rs"]
mod support;

use std::time::Instant;

use serde_json::json;

const BATCH: usize = 1000;

fn batch(start: usize) -> Vec<u8> {
    let events: Vec<_> = (start..start + BATCH)
        .map(|i| {
            json!({
                "channel": format!("agent/a{}", i % 16),
                "event_type": "training_data",
                "data": {"university_id": format!("univ_{}", i % 5), "agent_id": format!("a{}", i % 16),
                         "round": i, "state": [0.12, 0.5, 0.33, 0.9], "action": "cooperate", "reward": 0.82}
            })
        })
        .collect();
    json!(events).to_string().into_bytes()
}

/// Exports once; answers (events/s, body bytes, seconds).
async fn export(
    server: &support::Server,
    query: &str,
    gzip: bool,
    events: usize,
) -> (f64, usize, f64) {
    let client = reqwest::Client::new();
    let mut request = client.get(server.url(&format!("/api/v1/datasets/bench/export?{query}")));
    if gzip {
        request = request.header("accept-encoding", "gzip");
    }
    let started = Instant::now();
    let mut response = request.send().await.expect("export");
    assert_eq!(response.status(), 200);
    let mut bytes = 0;
    while let Some(chunk) = response.chunk().await.expect("body") {
        bytes += chunk.len();
    }
    let secs = started.elapsed().as_secs_f64();
    (events as f64 / secs, bytes, secs)
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes bench targets; nothing to test here.
    }
    let events: usize = std::env::var("STREAMLOG_BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000)
        .max(BATCH)
        / BATCH
        * BATCH;
    let mut server = support::Server::start().await;
    for start in (0..events).step_by(BATCH) {
        let (status, body) = server
            .post_raw("/api/v1/events", "application/json", batch(start))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let channels: Vec<String> = (0..16).map(|i| format!("agent/a{i}")).collect();
    let (status, body) = server
        .post_raw(
            "/api/v1/datasets",
            "application/json",
            json!({"dataset_id": "bench", "channels": channels, "event_types": ["training_data"]})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["data_points_count"], events);
    server.terminate();
    server.restart().await;

    println!("dataset export throughput, {events} events (HTTP on loopback, server restarted before the first export)");
    println!("| format | gzip | events/s | MB/s of body | body MB | seconds |");
    println!("|---|---|---:|---:|---:|---:|");
    for (query, gzip) in [
        ("format=jsonl", true),
        ("format=jsonl", true),
        ("format=jsonl", false),
        ("format=msgpack", true),
        ("format=msgpack", false),
        ("format=jsonl&anonymize=true", true),
    ] {
        let (rate, bytes, secs) = export(&server, query, gzip, events).await;
        println!(
            "| {query} | {gzip} | {rate:.0} | {:.1} | {:.1} | {secs:.2} |",
            bytes as f64 / secs / 1e6,
            bytes as f64 / 1e6
        );
    }
}
