//! Durable append throughput, end to end: the real server on loopback, concurrent HTTP
//! publishers, every answer received only after the events were fsync'd.
//!
//! `cargo bench --bench append` — `STREAMLOG_BENCH_SECS` sets the seconds per case (5).

#[allow(dead_code, unused_imports)]
#[path = "../tests/integration/support/mod.rs"]
mod support;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::json;

fn body(batch: usize) -> Vec<u8> {
    let event = |i: usize| {
        json!({
            "channel": format!("arena/a{}", i % 8),
            "event_type": "competition_round",
            "data": {"competition_id": "c7", "round": i, "agent_a": {"action": "cooperate", "score": 0.82},
                     "agent_b": {"action": "defect", "score": 0.41}, "note": "x".repeat(64)}
        })
    };
    if batch == 1 {
        event(0).to_string().into_bytes()
    } else {
        json!((0..batch).map(event).collect::<Vec<_>>())
            .to_string()
            .into_bytes()
    }
}

struct Outcome {
    events_per_sec: f64,
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn run_case(server: &support::Server, publishers: usize, batch: usize, secs: u64) -> Outcome {
    let url = server.url("/api/v1/events");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(publishers)
        .build()
        .unwrap();
    let body = Arc::new(body(batch));
    let events = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..publishers {
        let (client, url, body, events) =
            (client.clone(), url.clone(), body.clone(), events.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.as_ref().clone())
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(response.status(), 200);
                let _ = response.bytes().await;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                events.fetch_add(batch as u64, Ordering::Relaxed);
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    Outcome {
        events_per_sec: events.load(Ordering::Relaxed) as f64 / elapsed,
        requests_per_sec: latencies.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes bench targets; nothing to test here.
    }
    let secs = std::env::var("STREAMLOG_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    println!("durable append throughput, {secs} s per case (HTTP on loopback, fsync before every answer)");
    println!("| publishers | batch | events/s | requests/s | p50 ms | p99 ms |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for batch in [1usize, 100] {
        for publishers in [1usize, 8, 64] {
            let server = support::Server::start().await;
            let o = run_case(&server, publishers, batch, secs).await;
            println!(
                "| {publishers} | {batch} | {:.0} | {:.0} | {:.2} | {:.2} |",
                o.events_per_sec, o.requests_per_sec, o.p50_ms, o.p99_ms
            );
        }
    }
}
