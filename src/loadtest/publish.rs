//! Scenario `publish`: durable publish throughput over HTTP. P concurrent publishers each
//! send batches of B events and wait for the durable answer before the next, for a fixed
//! time or until an event budget is spent.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::json;

use super::{
    latency::{now_us, Latencies},
    net::Target,
    report::{Outcome, Table},
    BenchError,
};

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct PublishArgs {
    /// publish: concurrent HTTP publishers.
    #[arg(
        id = "publish-publishers",
        long = "publish-publishers",
        default_value_t = 64
    )]
    pub publishers: usize,
    /// publish: events per request (one batch, appended atomically).
    #[arg(id = "publish-batch", long = "publish-batch", default_value_t = 100)]
    pub batch: usize,
    /// publish: how long to publish, in seconds.
    #[arg(id = "publish-secs", long = "publish-secs", default_value_t = 10.0)]
    pub secs: f64,
    /// publish: stop earlier once this many events are durable (0 = no budget).
    #[arg(id = "publish-events", long = "publish-events", default_value_t = 0)]
    pub events: u64,
}

#[derive(Default)]
struct PublisherResult {
    events: u64,
    requests: u64,
    failures: u64,
    first_failure: Option<String>,
    latencies: Latencies,
}

pub async fn run(target: &Target, run_id: &str, args: &PublishArgs) -> Result<Outcome, BenchError> {
    if args.publishers == 0 || args.batch == 0 {
        return Err(BenchError::Setup(
            "--publish-publishers and --publish-batch must be at least 1".into(),
        ));
    }
    let channel = format!("arena/bench-{run_id}-publish");
    let budget = Arc::new(AtomicU64::new(if args.events == 0 {
        u64::MAX
    } else {
        args.events
    }));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.secs);
    let mut tasks = Vec::new();
    for publisher in 0..args.publishers {
        let (target, channel, budget) = (target.clone(), channel.clone(), budget.clone());
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            publish_until(&target, &channel, publisher, batch, deadline, &budget).await
        }));
    }
    let mut total = PublisherResult::default();
    for task in tasks {
        let result = task
            .await
            .map_err(|e| BenchError::Failed(format!("publisher task: {e}")))?;
        total.events += result.events;
        total.requests += result.requests;
        total.failures += result.failures;
        total.first_failure = total.first_failure.or(result.first_failure);
        total.latencies.merge(result.latencies);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let latency = total.latencies.summary();
    let events_per_sec = total.events as f64 / elapsed;
    let mut problems = Vec::new();
    if total.events == 0 {
        problems.push("no event was published".to_string());
    }
    if let Some(failure) = &total.first_failure {
        problems.push(format!(
            "{} requests failed; the first: {failure}",
            total.failures
        ));
    }
    let mut table = Table::figures("publish: durable HTTP publish throughput");
    table.figure(
        "publishers x batch",
        format!("{} x {}", args.publishers, args.batch),
    );
    table.figure("events durable", total.events);
    table.figure("requests", total.requests);
    table.figure("failed requests", total.failures);
    table.figure("seconds", format!("{elapsed:.2}"));
    table.figure("events/s", format!("{events_per_sec:.0}"));
    table.latency("request latency", latency.as_ref());
    Ok(Outcome {
        results: json!({
            "channel": channel,
            "events": total.events,
            "requests": total.requests,
            "failed_requests": total.failures,
            "seconds": elapsed,
            "events_per_sec": events_per_sec,
            "requests_per_sec": total.requests as f64 / elapsed,
            "request_latency": latency,
        }),
        tables: vec![table],
        problems,
    })
}

/// Takes up to `batch` events out of the budget; 0 once it is spent.
fn take(budget: &AtomicU64, batch: usize) -> u64 {
    let mut left = budget.load(Ordering::Relaxed);
    loop {
        let take = left.min(batch as u64);
        if take == 0 {
            return 0;
        }
        match budget.compare_exchange_weak(left, left - take, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => return take,
            Err(now) => left = now,
        }
    }
}

async fn publish_until(
    target: &Target,
    channel: &str,
    publisher: usize,
    batch: usize,
    deadline: Instant,
    budget: &AtomicU64,
) -> PublisherResult {
    let mut result = PublisherResult::default();
    let mut round = 0u64;
    while Instant::now() < deadline {
        let count = take(budget, batch);
        if count == 0 {
            break;
        }
        let sent_us = now_us();
        let events: Vec<_> = (0..count)
            .map(|i| {
                json!({"channel": channel, "event_type": "bench_publish",
                       "data": {"publisher": publisher, "round": round, "i": i, "sent_us": sent_us}})
            })
            .collect();
        let body = serde_json::Value::Array(events).to_string();
        let sent = Instant::now();
        result.requests += 1;
        match target.publish(body).await {
            Ok(seqs) if seqs.len() as u64 == count => {
                result.latencies.record(sent.elapsed());
                result.events += count;
            }
            Ok(seqs) => {
                result.failures += 1;
                result.first_failure.get_or_insert_with(|| {
                    format!("{} seqs answered for {count} events", seqs.len())
                });
            }
            Err(e) => {
                result.failures += 1;
                result.first_failure.get_or_insert_with(|| e.to_string());
                // A failing server is not hammered in a tight loop.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        round += 1;
    }
    result
}
