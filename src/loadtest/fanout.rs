//! Scenario `fanout`: S WebSocket subscribers on one channel, one publisher at R events/s
//! of about E bytes each. Measures deliveries per second, the time from the publisher's
//! send to each receipt, and losses: every subscriber must see every published seq once,
//! in order (a subscriber closed as lagging resumes from its cursor, and that is counted).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{stream, StreamExt};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{watch, Semaphore};

use super::{
    frames::Mode,
    latency::{now_us, Latencies},
    net::Target,
    report::{Outcome, Table},
    subscriber::{self, Goal, OpenError},
    BenchError,
};

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct FanoutArgs {
    /// fanout: WebSocket subscribers of the channel.
    #[arg(
        id = "fanout-subscribers",
        long = "fanout-subscribers",
        default_value_t = 500
    )]
    pub subscribers: usize,
    /// fanout: events per second published.
    #[arg(id = "fanout-rate", long = "fanout-rate", default_value_t = 2000)]
    pub rate: u64,
    /// fanout: approximate size of each event's data, in bytes of JSON.
    #[arg(
        id = "fanout-event-bytes",
        long = "fanout-event-bytes",
        default_value_t = 250
    )]
    pub event_bytes: usize,
    /// fanout: how long to publish, in seconds.
    #[arg(id = "fanout-secs", long = "fanout-secs", default_value_t = 10.0)]
    pub secs: f64,
    /// fanout: how long subscribers may take to receive the rest once publishing ends.
    #[arg(
        id = "fanout-drain-secs",
        long = "fanout-drain-secs",
        default_value_t = 15.0
    )]
    pub drain_secs: f64,
}

/// The publisher sends, every tick, the events that fell due since the last one, as one
/// batch: 2 000 single-event requests a second would measure the HTTP stack, not fan-out.
const TICK: Duration = Duration::from_millis(5);
/// Connections opened at once while setting up.
const CONNECT_CONCURRENCY: usize = 64;
/// Publish requests in flight at once: a slow fsync must not stall the pace.
const PUBLISH_IN_FLIGHT: usize = 64;

pub async fn run(
    target: &Target,
    run_id: &str,
    mode: Mode,
    args: &FanoutArgs,
) -> Result<Outcome, BenchError> {
    if args.subscribers == 0 || args.rate == 0 {
        return Err(BenchError::Setup(
            "--fanout-subscribers and --fanout-rate must be at least 1".into(),
        ));
    }
    let channel = format!("arena/bench-{run_id}-fanout");
    eprintln!("fanout: opening {} subscribers", args.subscribers);
    let opened: Vec<_> = stream::iter(0..args.subscribers)
        .map(|_| subscriber::open(target, &channel, mode, None, None))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let mut connections = Vec::with_capacity(opened.len());
    let mut refused = 0;
    let mut first_error = None;
    for result in opened {
        match result {
            Ok(opened) => connections.push(opened),
            Err(OpenError::LimitReached(_)) => refused += 1,
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    if refused > 0 {
        return Err(BenchError::Failed(format!(
            "the server refused {refused} of {} subscribers with 1013 (connection limit \
             reached): raise [limits] max_connections",
            args.subscribers
        )));
    }
    if let Some(error) = first_error {
        return Err(BenchError::Failed(format!("opening subscribers: {error}")));
    }

    let (expected_tx, expected) = watch::channel(u64::MAX);
    let (stop_tx, stop) = watch::channel(false);
    let followers: Vec<_> = connections
        .into_iter()
        .map(|opened| {
            let goal = Goal {
                expected: expected.clone(),
                stop: stop.clone(),
                needs_caught_up: false,
                measure_latency: true,
            };
            let (target, channel) = (target.clone(), channel.clone());
            tokio::spawn(
                async move { subscriber::follow(&target, &channel, mode, opened, goal).await },
            )
        })
        .collect();

    eprintln!(
        "fanout: publishing {} events/s for {} s",
        args.rate, args.secs
    );
    let started = Instant::now();
    let published = publish_on_own_thread(target, &channel, args).await?;
    let publish_secs = started.elapsed().as_secs_f64();
    let _ = expected_tx.send(published.events);
    let stopper = tokio::spawn({
        let drain = Duration::from_secs_f64(args.drain_secs);
        async move {
            tokio::time::sleep(drain).await;
            let _ = stop_tx.send(true);
            stop_tx
        }
    });

    let mut latencies = Latencies::default();
    let (mut received, mut disorder, mut resumes, mut incomplete) = (0u64, 0u64, 0u64, 0usize);
    let mut last_receipt = started;
    let mut errors = Vec::new();
    for follower in followers {
        let tally = follower
            .await
            .map_err(|e| BenchError::Failed(format!("subscriber task: {e}")))?;
        received += tally.received;
        disorder += tally.disorder;
        resumes += tally.resumes;
        if tally.received != published.events || tally.seq_sum != published.seq_sum {
            incomplete += 1;
        }
        if let Some(at) = tally.last_event_at {
            last_receipt = last_receipt.max(at);
        }
        errors.extend(tally.error);
        latencies.merge(tally.latencies);
    }
    stopper.abort();
    drop(expected_tx);

    let expected_total = published.events * args.subscribers as u64;
    let lost = expected_total.saturating_sub(received);
    let delivery_secs = (last_receipt - started).as_secs_f64().max(publish_secs);
    let deliveries_per_sec = received as f64 / delivery_secs;
    let latency = latencies.summary();
    let mut problems = Vec::new();
    if published.events == 0 {
        problems.push("no event was published".to_string());
    }
    if lost > 0 || disorder > 0 || incomplete > 0 {
        problems.push(format!(
            "{lost} deliveries lost, {disorder} duplicate or out of order, {incomplete} \
             subscribers did not receive exactly the published seqs"
        ));
    }
    if let Some(failure) = &published.first_failure {
        problems.push(format!(
            "{} publish requests failed; the first: {failure}",
            published.failures
        ));
    }
    if let Some(error) = errors.first() {
        problems.push(format!(
            "{} subscribers stopped early; the first: {error}",
            errors.len()
        ));
    }

    let mut table = Table::figures(&format!(
        "fanout: 1 publisher, WebSocket subscribers ({})",
        mode.name()
    ));
    table.figure("subscribers", args.subscribers);
    table.figure("events published", published.events);
    table.figure(
        "publish rate achieved (events/s)",
        format!("{:.0}", published.events as f64 / publish_secs),
    );
    table.figure("deliveries expected", expected_total);
    table.figure("deliveries received", received);
    table.figure("lost", lost);
    table.figure("duplicate or out of order", disorder);
    table.figure("resumes after 4000", resumes);
    table.figure("deliveries/s", format!("{deliveries_per_sec:.0}"));
    table.latency("append to receipt", latency.as_ref());
    Ok(Outcome {
        results: json!({
            "channel": channel,
            "mode": mode.name(),
            "events_published": published.events,
            "publish_failures": published.failures,
            "publish_seconds": publish_secs,
            "publish_rate_achieved": published.events as f64 / publish_secs,
            "deliveries_expected": expected_total,
            "deliveries_received": received,
            "lost": lost,
            "duplicate_or_out_of_order": disorder,
            "subscribers_incomplete": incomplete,
            "subscribers_stopped_early": errors.len(),
            "resumes_after_4000": resumes,
            "delivery_seconds": delivery_secs,
            "deliveries_per_sec": deliveries_per_sec,
            "latency": latency,
        }),
        tables: vec![table],
        problems,
    })
}

#[derive(Default)]
struct Published {
    events: u64,
    seq_sum: u64,
    failures: u64,
    first_failure: Option<String>,
}

/// Runs the publisher on a thread and runtime of its own: the subscribers' tasks, busy
/// decoding, must not delay its ticks (the rate would drop and the send times would lie).
async fn publish_on_own_thread(
    target: &Target,
    channel: &str,
    args: &FanoutArgs,
) -> Result<Published, BenchError> {
    let (target, channel, args) = (
        target.for_other_runtime()?,
        channel.to_string(),
        args.clone(),
    );
    let (done_tx, done) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench-publisher".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let _ = done_tx.send(runtime.block_on(publish_at_rate(&target, &channel, &args)));
        })
        .map_err(|e| BenchError::Setup(format!("cannot start the publisher thread: {e}")))?;
    done.await
        .map_err(|_| BenchError::Failed("the publisher thread ended without an answer".into()))
}

/// Publishes at `args.rate` for `args.secs`, each event carrying its send time in µs.
async fn publish_at_rate(target: &Target, channel: &str, args: &FanoutArgs) -> Published {
    let total = (args.rate as f64 * args.secs).round() as u64;
    // `{"seq_in_run":N,"sent_us":N,"agent_id":"aNN","pad":""}` is about 70 bytes.
    let pad = "x".repeat(args.event_bytes.saturating_sub(70));
    let in_flight = Arc::new(Semaphore::new(PUBLISH_IN_FLIGHT));
    let started = Instant::now();
    let mut requests = Vec::new();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * args.rate as f64) as u64).min(total);
        if due <= sent {
            continue;
        }
        let sent_us = now_us();
        let events: Vec<_> = (sent..due)
            .map(|i| {
                json!({"channel": channel, "event_type": "agent_status",
                       "data": {"seq_in_run": i, "sent_us": sent_us, "agent_id": format!("a{}", i % 50), "pad": pad}})
            })
            .collect();
        sent = due;
        let body = serde_json::Value::Array(events).to_string();
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let target = target.clone();
        requests.push(tokio::spawn(async move {
            let answer = target.publish(body).await;
            drop(permit);
            answer
        }));
    }
    let mut published = Published::default();
    for request in requests {
        match request.await {
            Ok(Ok(seqs)) => {
                published.events += seqs.len() as u64;
                published.seq_sum = seqs
                    .iter()
                    .fold(published.seq_sum, |s, q| s.wrapping_add(*q));
            }
            Ok(Err(e)) => {
                published.failures += 1;
                published.first_failure.get_or_insert(e.to_string());
            }
            Err(e) => {
                published.failures += 1;
                published.first_failure.get_or_insert(e.to_string());
            }
        }
    }
    published
}
