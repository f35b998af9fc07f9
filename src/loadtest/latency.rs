//! Latency samples and their summary (percentiles by sorting; a few million samples of
//! four bytes each are cheap next to what produced them), and the one clock the load tool
//! timestamps events with.

use std::{
    sync::LazyLock,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

/// Microseconds since the Unix epoch: the publisher writes it into an event and the
/// subscriber compares it at receipt. Both run in this process, so they share the clock.
pub fn now_us() -> u64 {
    us_at(Instant::now())
}

/// `at` in microseconds since the Unix epoch, on the monotonic clock: a subscriber reads
/// the clock once per frame and has both its `Instant` and its timestamp.
pub fn us_at(at: Instant) -> u64 {
    static START: LazyLock<(Instant, u64)> = LazyLock::new(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        (Instant::now(), wall.as_micros() as u64)
    });
    let (start, start_us) = *START;
    start_us + at.saturating_duration_since(start).as_micros() as u64
}

/// Samples in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    micros: Vec<u32>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latencies {
    pub fn record(&mut self, elapsed: Duration) {
        self.record_us(elapsed.as_micros() as u64);
    }

    /// Saturates at about 71 minutes, far beyond any run of the tool.
    pub fn record_us(&mut self, micros: u64) {
        self.micros.push(micros.min(u32::MAX as u64) as u32);
    }

    pub fn merge(&mut self, other: Latencies) {
        self.micros.extend(other.micros);
    }

    /// `None` without samples.
    pub fn summary(mut self) -> Option<LatencySummary> {
        if self.micros.is_empty() {
            return None;
        }
        self.micros.sort_unstable();
        let n = self.micros.len();
        // Nearest rank: the smallest sample at or above the fraction `p` of all samples.
        let rank = |p: f64| self.micros[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        let ms = |us: u32| us as f64 / 1000.0;
        let sum: u64 = self.micros.iter().map(|&us| us as u64).sum();
        Some(LatencySummary {
            count: n,
            p50_ms: ms(rank(0.50)),
            p99_ms: ms(rank(0.99)),
            max_ms: ms(self.micros[n - 1]),
            mean_ms: sum as f64 / n as f64 / 1000.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples = Latencies::default();
        for us in (1..=100).rev() {
            samples.record_us(us * 1000);
        }
        let mut other = Latencies::default();
        other.record(Duration::from_millis(500));
        samples.merge(other);
        let s = samples.summary().unwrap();
        assert_eq!(s.count, 101);
        assert_eq!(s.p50_ms, 51.0);
        assert_eq!(s.p99_ms, 100.0);
        assert_eq!(s.max_ms, 500.0);
        assert!(Latencies::default().summary().is_none());
    }
}
