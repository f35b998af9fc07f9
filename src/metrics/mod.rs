//! Prometheus metrics: the only module that touches `prometheus-client`.
//!
//! One process-wide set of metrics, recorded where things happen (append groups in the
//! fan-out dispatcher, frames in the sessions, errors where they are answered) and a few
//! gauges filled in at scrape time (queue depths, log size). Labels are bounded: close codes,
//! error codes, and channel kinds folded to the known ones plus `other` — never a channel or
//! connection name.

use std::{
    sync::LazyLock,
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::protocol::ErrorCode;

mod counted;

pub use counted::LatencyHistogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// The channel kinds of the domain; any other kind is counted as `other`.
const KNOWN_KINDS: [&str; 7] = [
    "university",
    "arena",
    "competition",
    "curriculum",
    "agent",
    "dataset",
    "system",
];

pub fn kind_label(kind: &str) -> KindLabel {
    KindLabel {
        kind: KNOWN_KINDS
            .iter()
            .find(|k| **k == kind)
            .copied()
            .unwrap_or("other"),
    }
}

pub struct Metrics {
    registry: Registry,
    pub connections_active: Gauge,
    pub connections_opened: Counter,
    pub connections_closed: Family<CodeLabel, Counter>,
    pub connections_refused: Family<CodeLabel, Counter>,
    pub subscriptions_active: Gauge,
    pub subscriptions_by_kind: Family<KindLabel, Gauge>,
    pub events_appended: Counter,
    pub append_group_events: Histogram,
    pub append_durable_seconds: Histogram,
    pub events_delivered: Counter,
    pub messages_sent: Counter,
    pub bytes_sent: Counter,
    pub delivery_latency: LatencyHistogram,
    pub errors: Family<CodeLabel, Counter>,
    pub rate_limited: Counter,
    pub lag_recoveries: Counter,
    pub batch_events: Histogram,
    queue_depth_total: Gauge,
    queue_depth_max: Gauge,
    log_size_bytes: Gauge,
    retained_events: Gauge,
    log_head: Gauge,
    resident_memory_bytes: Gauge,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Values read at scrape time rather than kept up to date on every event.
pub struct ScrapeSnapshot {
    pub queue_depths: Vec<usize>,
    pub log_size_bytes: u64,
    pub retained_events: u64,
    pub log_head: u64,
}

/// 50 µs .. ~1.6 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 16)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("streamlog");
        let m = Metrics {
            registry: Registry::default(),
            connections_active: Gauge::default(),
            connections_opened: Counter::default(),
            connections_closed: Family::default(),
            connections_refused: Family::default(),
            subscriptions_active: Gauge::default(),
            subscriptions_by_kind: Family::default(),
            events_appended: Counter::default(),
            append_group_events: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1.0, 4.0, 9),
            ),
            append_durable_seconds: Histogram::new(latency_buckets()),
            events_delivered: Counter::default(),
            messages_sent: Counter::default(),
            bytes_sent: Counter::default(),
            delivery_latency: LatencyHistogram::new(latency_buckets()),
            errors: Family::default(),
            rate_limited: Counter::default(),
            lag_recoveries: Counter::default(),
            batch_events: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 12),
            ),
            queue_depth_total: Gauge::default(),
            queue_depth_max: Gauge::default(),
            log_size_bytes: Gauge::default(),
            retained_events: Gauge::default(),
            log_head: Gauge::default(),
            resident_memory_bytes: Gauge::default(),
        };
        registry.register(
            "connections_active",
            "Open WebSocket connections",
            m.connections_active.clone(),
        );
        registry.register(
            "connections_opened",
            "WebSocket connections accepted",
            m.connections_opened.clone(),
        );
        registry.register(
            "connections_closed",
            "WebSocket connections closed, by close code",
            m.connections_closed.clone(),
        );
        registry.register(
            "connections_refused",
            "WebSocket upgrades refused, by HTTP status",
            m.connections_refused.clone(),
        );
        registry.register(
            "subscriptions_active",
            "Active subscriptions",
            m.subscriptions_active.clone(),
        );
        registry.register(
            "subscriptions_by_kind",
            "Active subscriptions by channel kind",
            m.subscriptions_by_kind.clone(),
        );
        registry.register(
            "events_appended",
            "Events appended to the log",
            m.events_appended.clone(),
        );
        registry.register(
            "append_group_events",
            "Events per group commit",
            m.append_group_events.clone(),
        );
        registry.register(
            "append_durable_seconds",
            "Time to make a group commit durable (write and fsync)",
            m.append_durable_seconds.clone(),
        );
        registry.register(
            "events_delivered",
            "Event messages delivered to sockets",
            m.events_delivered.clone(),
        );
        registry.register(
            "messages_sent",
            "Server messages written to sockets",
            m.messages_sent.clone(),
        );
        registry.register(
            "bytes_sent",
            "Payload bytes of server messages written to sockets",
            m.bytes_sent.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "From durable append to socket write, live deliveries",
            m.delivery_latency.clone(),
        );
        registry.register("errors", "Errors answered, by code", m.errors.clone());
        registry.register(
            "rate_limit_refusals",
            "Client messages refused by the rate limit",
            m.rate_limited.clone(),
        );
        registry.register(
            "batch_events",
            "Events per flushed batch of a high-frequency channel",
            m.batch_events.clone(),
        );
        registry.register(
            "lag_recoveries",
            "Connections whose queue overflowed and that caught up from the log",
            m.lag_recoveries.clone(),
        );
        registry.register(
            "queue_depth",
            "Append groups waiting in all connection queues",
            m.queue_depth_total.clone(),
        );
        registry.register(
            "queue_depth_max",
            "Longest connection queue, in append groups",
            m.queue_depth_max.clone(),
        );
        registry.register(
            "log_size_bytes",
            "Size of the log on disk",
            m.log_size_bytes.clone(),
        );
        registry.register(
            "retained_index_entries",
            "Retained events counted once per channel",
            m.retained_events.clone(),
        );
        registry.register(
            "log_head",
            "Seq of the last durable event",
            m.log_head.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the server process (Linux; 0 elsewhere)",
            m.resident_memory_bytes.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn error(&self, code: ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.as_str().to_string(),
            })
            .inc();
    }

    /// `code` is the close code the server sent, or `client` when the client closed first.
    pub fn connection_closed(&self, code: &str) {
        self.connections_closed
            .get_or_create(&CodeLabel {
                code: code.to_string(),
            })
            .inc();
    }

    pub fn connection_refused(&self, status: u16) {
        self.connections_refused
            .get_or_create(&CodeLabel {
                code: status.to_string(),
            })
            .inc();
    }

    pub fn subscription_added(&self, kind: &str) {
        self.subscriptions_active.inc();
        self.subscriptions_by_kind
            .get_or_create(&kind_label(kind))
            .inc();
    }

    pub fn subscription_removed(&self, kind: &str) {
        self.subscriptions_active.dec();
        self.subscriptions_by_kind
            .get_or_create(&kind_label(kind))
            .dec();
    }

    pub fn group_appended(&self, events: usize, durable_in: Duration) {
        self.events_appended.inc_by(events as u64);
        self.append_group_events.observe(events as f64);
        self.append_durable_seconds
            .observe(durable_in.as_secs_f64());
    }

    pub fn batch_flushed(&self, events: usize) {
        self.batch_events.observe(events as f64);
    }

    /// `count` live event messages of a group made durable at `durable_at` were written now.
    pub fn delivered_live(&self, durable_at: Instant, count: u64) {
        self.events_delivered.inc_by(count);
        self.delivery_latency.observe_n(durable_at.elapsed(), count);
    }

    /// The exposition text, with the scrape-time gauges filled in.
    pub fn render(&self, snapshot: &ScrapeSnapshot) -> String {
        self.queue_depth_total
            .set(snapshot.queue_depths.iter().sum::<usize>() as i64);
        self.queue_depth_max
            .set(snapshot.queue_depths.iter().copied().max().unwrap_or(0) as i64);
        self.log_size_bytes.set(snapshot.log_size_bytes as i64);
        self.retained_events.set(snapshot.retained_events as i64);
        self.log_head.set(snapshot.log_head as i64);
        self.resident_memory_bytes
            .set(resident_memory_bytes().unwrap_or(0) as i64);
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Resident pages (`/proc/self/statm`, second field) times the page size.
fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_names_are_exposed() {
        METRICS.error(ErrorCode::InvalidMessage);
        METRICS.group_appended(3, Duration::from_millis(1));
        METRICS.delivered_live(Instant::now(), 2);
        let text = METRICS.render(&ScrapeSnapshot {
            queue_depths: vec![1, 4],
            log_size_bytes: 10,
            retained_events: 3,
            log_head: 3,
        });
        for name in [
            "streamlog_connections_active ",
            "streamlog_events_appended_total ",
            "streamlog_messages_sent_total ",
            "streamlog_delivery_latency_seconds_bucket{le=",
            "streamlog_subscriptions_active ",
            "streamlog_errors_total{code=\"INVALID_MESSAGE\"} ",
            "streamlog_queue_depth_max 4",
            "streamlog_process_resident_memory_bytes ",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        if cfg!(target_os = "linux") {
            let rss = text
                .lines()
                .find_map(|l| l.strip_prefix("streamlog_process_resident_memory_bytes "))
                .and_then(|v| v.parse::<u64>().ok())
                .expect("a resident memory sample");
            assert!(rss > 1 << 20, "a process holds more than 1 MiB: {rss}");
        }
        assert_eq!(kind_label("arena").kind, "arena");
        assert_eq!(kind_label("weird").kind, "other");
    }
}
