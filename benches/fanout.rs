//! Fan-out, end to end: one publisher at a steady rate, S WebSocket subscribers on loopback.
//! Reports deliveries per second, losses, and latency from publish to receipt — an upper
//! bound of append-to-receipt, as it includes the HTTP request and the fsync.
//!
//! `cargo bench --bench fanout` — `STREAMLOG_BENCH_SECS` (5), `STREAMLOG_BENCH_RATE`
//! events/s (1000), `STREAMLOG_BENCH_SUBSCRIBERS` (comma list, "100,1000").

#[allow(dead_code, unused_imports)]
#[path = "../tests/integration/support/mod.rs"]
mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Reads `"sent_us":N` out of an event frame without parsing the whole message.
fn sent_us(text: &str) -> Option<u64> {
    let rest = text.split("\"sent_us\":").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

struct Received {
    count: u64,
    latencies_us: Vec<u64>,
    last_at: Option<Instant>,
}

async fn subscriber(
    url: String,
    ready: Arc<tokio::sync::Barrier>,
    stop_at: Arc<tokio::sync::Notify>,
    expected: Arc<std::sync::atomic::AtomicU64>,
) -> Received {
    // A small read buffer: the library zeroes its free part before every read.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&url, Some(config), true)
        .await
        .expect("connect");
    // connection_established, subscribed
    for _ in 0..2 {
        ws.next().await.unwrap().unwrap();
    }
    ready.wait().await;
    let mut received = Received {
        count: 0,
        latencies_us: Vec::with_capacity(16_384),
        last_at: None,
    };
    loop {
        if received.count >= expected.load(std::sync::atomic::Ordering::Acquire) {
            break;
        }
        let frame = tokio::select! {
            frame = ws.next() => frame,
            // Re-check the expected count now and then: it is known only once publishing ends.
            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
            _ = stop_at.notified() => break,
        };
        let Some(Ok(Message::Text(text))) = frame else {
            break;
        };
        if let Some(sent) = sent_us(&text) {
            received.count += 1;
            received.latencies_us.push(now_us().saturating_sub(sent));
            received.last_at = Some(Instant::now());
            if received.count >= expected.load(std::sync::atomic::Ordering::Acquire) {
                break;
            }
        }
    }
    received
}

async fn run_case(subscribers: usize, rate: u64, secs: u64) {
    let server = support::Server::start().await;
    let url = server.ws_url("/ws/arena/bench");
    let ready = Arc::new(tokio::sync::Barrier::new(subscribers + 1));
    let stop = Arc::new(tokio::sync::Notify::new());
    let expected = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        tasks.push(tokio::spawn(subscriber(
            url.clone(),
            ready.clone(),
            stop.clone(),
            expected.clone(),
        )));
    }
    ready.wait().await;

    let client = reqwest::Client::new();
    let publish_url = server.url("/api/v1/events");
    let total = rate * secs;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut publishes = Vec::new();
    let pad = "x".repeat(150);
    for i in 0..total {
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        let body = format!(
            r#"{{"channel":"arena/bench","event_type":"agent_status","data":{{"agent_id":"a{}","sent_us":{},"pad":"{pad}"}}}}"#,
            i % 50,
            now_us()
        );
        let (client, url) = (client.clone(), publish_url.clone());
        publishes.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("publish");
            assert_eq!(r.status(), 200);
        }));
    }
    for p in publishes {
        p.await.unwrap();
    }
    let publish_secs = started.elapsed().as_secs_f64();
    expected.store(total, std::sync::atomic::Ordering::Release);
    // Give stragglers a bounded time to drain, then stop everyone.
    let drain = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            stop.notify_waiters();
        }
    });
    let mut latencies = Vec::new();
    let mut delivered = 0;
    let mut last_delivery = started;
    for task in tasks {
        let r = task.await.unwrap();
        delivered += r.count;
        latencies.extend(r.latencies_us);
        last_delivery = last_delivery.max(r.last_at.unwrap_or(started));
    }
    // Deliveries per second over the time it took to deliver everything.
    let elapsed = (last_delivery - started).as_secs_f64();
    drain.abort();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)] as f64 / 1000.0
    };
    println!(
        "| {subscribers} | {rate} | {:.0} | {} / {} | {:.2} | {:.2} | {:.2} |",
        delivered as f64 / elapsed.max(publish_secs),
        delivered,
        total * subscribers as u64,
        pct(0.50),
        pct(0.99),
        *latencies.last().unwrap() as f64 / 1000.0
    );
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let env =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
    let secs: u64 = env("STREAMLOG_BENCH_SECS", "5").parse().unwrap();
    let rate: u64 = env("STREAMLOG_BENCH_RATE", "1000").parse().unwrap();
    println!("fan-out: 1 publisher at {rate} events/s for {secs} s, ~250-byte events, WebSocket subscribers on loopback");
    println!("| subscribers | events/s | deliveries/s | delivered / expected | p50 ms | p99 ms | max ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for subscribers in env("STREAMLOG_BENCH_SUBSCRIBERS", "100,1000").split(',') {
        run_case(subscribers.trim().parse().unwrap(), rate, secs).await;
    }
}
