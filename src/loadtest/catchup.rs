//! Scenario `catchup`: publish N events to a fresh channel as fast as batches allow, then
//! time one subscriber that connects with `since` = the head before them until it has
//! received all N and `caught_up`.

use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use super::{
    frames::Mode,
    net::Target,
    report::{Outcome, Table},
    subscriber::{self, Goal},
    BenchError,
};

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct CatchupArgs {
    /// catchup: events published before the subscriber connects.
    #[arg(
        id = "catchup-events",
        long = "catchup-events",
        default_value_t = 100_000
    )]
    pub events: u64,
    /// catchup: events per publish request.
    #[arg(id = "catchup-batch", long = "catchup-batch", default_value_t = 1000)]
    pub batch: u64,
    /// catchup: the longest the subscriber may take, in seconds.
    #[arg(
        id = "catchup-timeout-secs",
        long = "catchup-timeout-secs",
        default_value_t = 300.0
    )]
    pub timeout_secs: f64,
}

/// Publish requests in flight while filling the channel.
const FILL_CONCURRENCY: usize = 8;

pub async fn run(
    target: &Target,
    run_id: &str,
    mode: Mode,
    args: &CatchupArgs,
) -> Result<Outcome, BenchError> {
    if args.events == 0 || args.batch == 0 {
        return Err(BenchError::Setup(
            "--catchup-events and --catchup-batch must be at least 1".into(),
        ));
    }
    let channel = format!("arena/bench-{run_id}-catchup");
    let health = target.health().await?;
    let since = health["head"].as_u64().unwrap_or(0);
    let epoch = health["epoch"].as_str().unwrap_or_default().to_string();

    eprintln!("catchup: publishing {} events", args.events);
    let fill_started = Instant::now();
    let batches: Vec<(u64, u64)> = (0..args.events)
        .step_by(args.batch as usize)
        .map(|start| (start, (start + args.batch).min(args.events)))
        .collect();
    let answers: Vec<Result<Vec<u64>, BenchError>> = stream::iter(batches)
        .map(|(start, end)| {
            let events: Vec<_> = (start..end)
                .map(|i| json!({"channel": channel, "event_type": "bench_catchup", "data": {"i": i, "score": i % 1000}}))
                .collect();
            target.publish(serde_json::Value::Array(events).to_string())
        })
        .buffered(FILL_CONCURRENCY)
        .collect()
        .await;
    let mut published = 0u64;
    for answer in answers {
        published += answer?.len() as u64;
    }
    let fill_secs = fill_started.elapsed().as_secs_f64();

    eprintln!("catchup: subscribing with since={since}");
    let connect_started = Instant::now();
    let opened = subscriber::open(target, &channel, mode, Some((since, &epoch)), None)
        .await
        .map_err(|e| BenchError::Failed(format!("opening the subscriber: {e}")))?;
    let (_expected_tx, expected) = watch::channel(published);
    let (stop_tx, stop) = watch::channel(false);
    let goal = Goal {
        expected,
        stop,
        needs_caught_up: true,
        measure_latency: false,
    };
    let timeout = Duration::from_secs_f64(args.timeout_secs);
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        let _ = stop_tx.send(true);
        stop_tx
    });
    let tally = subscriber::follow(target, &channel, mode, opened, goal).await;
    let seconds = connect_started.elapsed().as_secs_f64();
    stopper.abort();
    let first_event_secs = tally
        .first_event_at
        .map(|at| (at - connect_started).as_secs_f64());
    let events_per_sec = tally.received as f64 / seconds;

    let mut problems = Vec::new();
    if tally.received != published || tally.disorder > 0 {
        problems.push(format!(
            "received {} of {published} events ({} duplicate or out of order)",
            tally.received, tally.disorder
        ));
    }
    if !tally.caught_up {
        problems.push("no `caught_up` arrived".to_string());
    }
    problems.extend(tally.error.clone());

    let mut table = Table::figures(&format!("catchup: resume from a cursor ({})", mode.name()));
    table.figure("events published", published);
    table.figure("publish seconds", format!("{fill_secs:.2}"));
    table.figure("events received", tally.received);
    table.figure("caught_up received", tally.caught_up);
    table.figure("resumes after 4000", tally.resumes);
    table.figure(
        "first event after (s)",
        first_event_secs.map_or("-".into(), |s| format!("{s:.3}")),
    );
    table.figure("catch-up seconds", format!("{seconds:.2}"));
    table.figure("events/s", format!("{events_per_sec:.0}"));
    Ok(Outcome {
        results: json!({
            "channel": channel,
            "mode": mode.name(),
            "since": since,
            "events_published": published,
            "publish_seconds": fill_secs,
            "events_received": tally.received,
            "duplicate_or_out_of_order": tally.disorder,
            "caught_up": tally.caught_up,
            "resumes_after_4000": tally.resumes,
            "first_event_seconds": first_event_secs,
            "seconds": seconds,
            "events_per_sec": events_per_sec,
        }),
        tables: vec![table],
        problems,
    })
}
