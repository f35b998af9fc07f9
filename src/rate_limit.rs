//! The per-connection rate limit on client messages: a token bucket (GCRA) refilled at
//! `limits.messages_per_second` and holding `limits.burst`, and the count of refusals that
//! tells a client that keeps flooding from one that had a burst. And the per-user limit on
//! HTTP publish requests (`limits.http_publish_per_second`, off by default).
//!
//! Architecture invariant: this is the only module that touches governor.

use std::{
    num::NonZeroU32,
    time::{Duration, Instant},
};

use governor::{
    clock::{Clock, DefaultClock},
    state::keyed::HashMapStateStore,
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

/// Users whose buckets are kept before the full ones are forgotten: a bucket that has
/// refilled is the same as none.
const USERS_KEPT: usize = 10_000;

/// HTTP publish requests per user (`None`: no limit).
pub struct PublishRate {
    limiter: Option<RateLimiter<String, HashMapStateStore<String>, DefaultClock>>,
    clock: DefaultClock,
    per_second: u32,
}

impl PublishRate {
    /// `per_second` 0 turns the limit off; `burst` 0 means `per_second`.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::hashmap(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            limiter,
            clock: DefaultClock::default(),
            per_second,
        }
    }

    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// `Err(wait)`: `user` is over the limit; a request is allowed again after `wait`.
    pub fn check(&self, user: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() > USERS_KEPT {
            limiter.retain_recent();
        }
        limiter
            .check_key(&user.to_string())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_requests_are_limited_per_user_and_only_when_asked() {
        let off = PublishRate::new(0, 0);
        assert!((0..1000).all(|_| off.check("u").is_ok()));
        let rate = PublishRate::new(1, 2);
        assert!(rate.check("a").is_ok() && rate.check("a").is_ok());
        let wait = rate.check("a").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(
            rate.check("b").is_ok(),
            "another user has a bucket of its own"
        );
    }

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
