//! A latency histogram without a lock, that takes many equal observations at once.
//!
//! The delivery latency is observed for every event written to a socket — a million times
//! a second at a thousand subscribers — from every worker thread. `prometheus-client`'s
//! histogram takes a mutex per observation; this one adds to atomic counters, once per
//! group of events that went out together.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::MetricType,
};

#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Upper bounds in seconds, ascending; one more bucket (`+Inf`) follows the last.
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    /// Microseconds: a day of a million deliveries a second at 50 ms each stays far below
    /// `u64::MAX`.
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Vec<f64> = bounds.into_iter().filter(|b| b.is_finite()).collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            inner: Arc::new(Inner {
                bounds,
                counts,
                sum_us: AtomicU64::new(0),
            }),
        }
    }

    /// `count` observations of `latency`.
    pub fn observe_n(&self, latency: Duration, count: u64) {
        let seconds = latency.as_secs_f64();
        let bucket = self.inner.bounds.partition_point(|bound| *bound < seconds);
        self.inner.counts[bucket].fetch_add(count, Ordering::Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.inner
            .sum_us
            .fetch_add(us.saturating_mul(count), Ordering::Relaxed);
    }
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.inner.counts)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.inner.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{encoding::text::encode, registry::Registry};

    use super::*;

    #[test]
    fn counts_land_in_their_buckets_cumulatively() {
        let histogram = LatencyHistogram::new([0.001, 0.01]);
        histogram.observe_n(Duration::from_micros(500), 3);
        histogram.observe_n(Duration::from_millis(1), 1);
        histogram.observe_n(Duration::from_millis(5), 2);
        histogram.observe_n(Duration::from_secs(1), 1);
        let mut registry = Registry::default();
        registry.register("latency", "test", histogram);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            "latency_sum 1.0125\n",
            "latency_count 7\n",
            "latency_bucket{le=\"0.001\"} 4\n",
            "latency_bucket{le=\"0.01\"} 6\n",
            "latency_bucket{le=\"+Inf\"} 7\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }
}
