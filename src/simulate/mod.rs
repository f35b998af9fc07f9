//! Simulated domain traffic: `streamlog simulate` publishes the [`world`]'s events to a
//! server over HTTP, and `serve --demo` ([`demo`]) feeds them into its own log.
//!
//! Both use [`run_paced`]: every tick it publishes, as one batch, all the events due by then,
//! counting from the start time (not from the previous send), so the rate does not drift
//! and thousands of events per second cost only a hundred requests. Every event carries an
//! idempotency `id` (a per-run prefix and its number), so a batch retried after a transient
//! error is never stored twice.

pub mod demo;
#[cfg(test)]
mod tests;
pub mod world;

use std::{fmt, future::Future, time::Duration};

use rand::Rng;
use serde_json::Value;
use tokio::time::{Instant, MissedTickBehavior};

use crate::client::{Client, ClientError};
use world::World;

/// How often due events are sent: short enough to look live, long enough to batch.
const TICK: Duration = Duration::from_millis(10);
/// Events per request when catching up; well below the server's default batch limit.
const MAX_BATCH: u64 = 1000;
const RETRY_START: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// About 15 s of retries before giving up on the server.
const MAX_ATTEMPTS: u32 = 12;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where paced events go.
pub trait EventSink {
    type Error;
    /// Publishes one batch, in order; returns once it is stored.
    fn publish(&mut self, batch: &[Value]) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// How fast, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Events per second.
    pub rate: f64,
    /// Stop after this long; run until stopped when `None`.
    pub duration: Option<Duration>,
}

/// What a run did.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Events the sink acknowledged.
    pub published: u64,
    pub elapsed: Duration,
    pub seed: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.published as f64 / secs
        } else {
            0.0
        };
        write!(
            f,
            "published {} events in {secs:.2} s: {rate:.1} events/s (seed {})",
            self.published, self.seed
        )
    }
}

/// Events due `elapsed` after the start at `rate` per second.
fn events_due(rate: f64, elapsed: Duration) -> u64 {
    (rate * elapsed.as_secs_f64()).floor() as u64
}

/// A prefix for this run's idempotency ids: random, so that two runs with the same seed do
/// not take each other's events for retries.
pub fn run_prefix(kind: &str) -> String {
    format!("{kind}-{:016x}", rand::rng().random::<u64>())
}

/// Publishes `world`'s events to `sink` at `pace` until the duration ends or `stop`
/// completes. At the end of the duration, events still due beyond one batch are dropped
/// rather than sent late: the summary then shows the rate the sink really took.
pub async fn run_paced<S: EventSink>(
    world: &mut World,
    pace: Pace,
    id_prefix: &str,
    sink: &mut S,
    stop: impl Future<Output = ()>,
) -> Result<u64, S::Error> {
    let start = Instant::now();
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    tokio::pin!(stop);
    let mut sent = 0u64;
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(sent),
            _ = ticks.tick() => {}
        }
        let elapsed = start.elapsed();
        let at_end = pace.duration.is_some_and(|d| elapsed >= d);
        let horizon = pace.duration.map_or(elapsed, |d| elapsed.min(d));
        let due = events_due(pace.rate, horizon);
        let mut batches = 0;
        while sent < due && !(at_end && batches > 0) {
            let batch: Vec<Value> = (sent..due.min(sent + MAX_BATCH))
                .map(|n| {
                    world
                        .next_event()
                        .to_publish(format!("{id_prefix}-{}", n + 1))
                })
                .collect();
            tokio::select! {
                _ = &mut stop => return Ok(sent),
                result = sink.publish(&batch) => result?,
            }
            sent += batch.len() as u64;
            batches += 1;
        }
        if at_end {
            return Ok(sent);
        }
    }
}

/// Parses a rate (`--rate`, `--demo-rate`): events per second, positive.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "`{text}` is not a positive number of events per second"
        )),
    }
}

/// Parses a positive number of seconds (`--duration 2.5`).
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("`{text}` is not a positive number of seconds")),
    }
}

/// What `streamlog simulate` is asked to do.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    pub arenas: usize,
    pub pace: Pace,
    /// A random seed is drawn (and reported) when none is given.
    pub seed: Option<u64>,
}

/// `streamlog simulate`: publishes to the server of `client` until the duration ends or
/// Ctrl-C.
pub async fn simulate(client: Client, options: SimulateOptions) -> Result<Summary, ClientError> {
    let seed = options
        .seed
        .unwrap_or_else(|| rand::rng().random_range(0..1_000_000));
    let mut world = World::new(seed, options.arenas);
    let mut sink = HttpSink { client };
    let start = Instant::now();
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let published = run_paced(
        &mut world,
        options.pace,
        &run_prefix("sim"),
        &mut sink,
        stop,
    )
    .await?;
    Ok(Summary {
        published,
        elapsed: start.elapsed(),
        seed,
    })
}

/// Publishes over HTTP with the client library, retrying transient failures.
struct HttpSink {
    client: Client,
}

/// Worth retrying: the server may be restarting, overloaded or briefly unreachable. A 4xx
/// answer other than 429 means the events themselves are refused, and would be again; so
/// would a failed TLS handshake (a refused certificate).
fn is_transient(error: &ClientError) -> bool {
    match error {
        ClientError::Http(e) => !e.is_builder() && !error.is_tls_failure(),
        ClientError::Server { status, .. } => *status == 429 || *status >= 500,
        ClientError::Io(e) => e.kind() == std::io::ErrorKind::TimedOut,
        ClientError::WebSocket(_) | ClientError::Protocol(_) | ClientError::Tls(_) => false,
    }
}

impl HttpSink {
    async fn publish_once(&self, batch: &[Value]) -> Result<(), ClientError> {
        let seqs = tokio::time::timeout(REQUEST_TIMEOUT, self.client.publish(batch))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 10 s")
            })??;
        if seqs.len() != batch.len() {
            return Err(ClientError::Protocol(format!(
                "{} seqs answered for {} events",
                seqs.len(),
                batch.len()
            )));
        }
        Ok(())
    }
}

impl EventSink for HttpSink {
    type Error = ClientError;

    async fn publish(&mut self, batch: &[Value]) -> Result<(), ClientError> {
        let mut delay = RETRY_START;
        let mut attempt = 1;
        loop {
            match self.publish_once(batch).await {
                Ok(()) => return Ok(()),
                Err(error) if is_transient(&error) && attempt < MAX_ATTEMPTS => {
                    eprintln!("streamlog simulate: {error}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }
}
