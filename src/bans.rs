//! Clients refused at the handshake for a while because they flooded: keyed by user in mode
//! `jwt`, by address in mode `none` (where everybody is the same anonymous user).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

pub struct BanList {
    period: Duration,
    /// Key -> end of its ban. Expired entries are dropped whenever a ban is added, so the
    /// map holds at most the clients banned within one period.
    until: Mutex<HashMap<String, Instant>>,
}

impl BanList {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            until: Mutex::default(),
        }
    }

    pub fn ban(&self, key: &str) {
        let now = Instant::now();
        let mut until = self.until.lock().expect("ban list");
        until.retain(|_, end| *end > now);
        until.insert(key.to_string(), now + self.period);
    }

    /// How long `key` is still banned, if it is.
    pub fn remaining(&self, key: &str) -> Option<Duration> {
        let end = *self.until.lock().expect("ban list").get(key)?;
        end.checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_last_their_period() {
        let bans = BanList::new(Duration::from_secs(60));
        assert_eq!(bans.remaining("u"), None);
        bans.ban("u");
        let left = bans.remaining("u").unwrap();
        assert!(left > Duration::from_secs(59) && left <= Duration::from_secs(60));
        assert_eq!(bans.remaining("v"), None);
        let short = BanList::new(Duration::ZERO);
        short.ban("u");
        assert_eq!(short.remaining("u"), None);
    }
}
