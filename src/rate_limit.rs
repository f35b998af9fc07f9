//! The per-connection rate limit on client messages: a token bucket (GCRA) refilled at
//! `limits.messages_per_second` and holding `limits.burst`, and the count of refusals that
//! tells a client that keeps flooding from one that had a burst.
//!
//! Architecture invariant: this is the only module that touches governor.

use std::{
    num::NonZeroU32,
    time::{Duration, Instant},
};

use governor::{
    clock::{Clock, DefaultClock},
    DefaultDirectRateLimiter, Quota, RateLimiter,
};

/// Refusals are counted over windows this long: `flood_refusals` of them within one window
/// is a flood, while the same number spread over minutes is a client that retries politely.
pub const FLOOD_WINDOW: Duration = Duration::from_secs(10);

/// What to do with one client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused; the bucket holds a token again after this long.
    Refused {
        retry_after: Duration,
    },
    /// Refused, and the client has been refused too often: it must go.
    Flooding,
}

pub struct MessageRate {
    limiter: DefaultDirectRateLimiter,
    clock: DefaultClock,
    per_second: u32,
    max_refusals: u32,
    window_start: Option<Instant>,
    refusals: u32,
}

impl MessageRate {
    /// All three numbers are validated as positive by `Config`; zero is raised to one.
    pub fn new(per_second: u32, burst: u32, max_refusals: u32) -> Self {
        let positive = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(positive(per_second)).allow_burst(positive(burst));
        Self {
            limiter: RateLimiter::direct(quota),
            clock: DefaultClock::default(),
            per_second,
            max_refusals: max_refusals.max(1),
            window_start: None,
            refusals: 0,
        }
    }

    /// The sustained rate, as reported to refused clients (`details.limit`).
    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    pub fn check(&mut self) -> Verdict {
        let not_until = match self.limiter.check() {
            Ok(()) => return Verdict::Allowed,
            Err(not_until) => not_until,
        };
        let now = Instant::now();
        if self
            .window_start
            .is_none_or(|start| now.duration_since(start) > FLOOD_WINDOW)
        {
            self.window_start = Some(now);
            self.refusals = 0;
        }
        self.refusals += 1;
        if self.refusals >= self.max_refusals {
            return Verdict::Flooding;
        }
        Verdict::Refused {
            retry_after: not_until.wait_time_from(self.clock.now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_refusals_carry_the_wait_then_a_flood_is_named() {
        let mut rate = MessageRate::new(1, 3, 4);
        for _ in 0..3 {
            assert_eq!(rate.check(), Verdict::Allowed);
        }
        for _ in 0..3 {
            match rate.check() {
                Verdict::Refused { retry_after } => {
                    assert!(
                        retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1),
                        "{retry_after:?}"
                    )
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
        assert_eq!(rate.check(), Verdict::Flooding);
        assert_eq!(rate.per_second(), 1);
    }
}
