//! Pulses: how the dispatcher spaces out what it hands to the connections. A group that
//! arrives while the last pulse is younger than `delivery.coalesce_ms` waits for the next
//! one; a group arriving after a quiet moment goes out at once.

use std::{sync::Arc, time::Duration};

use crate::log::AppendedGroup;

/// Groups held for the next pulse, and when the last pulse went out.
pub(super) struct Pulse {
    every: Duration,
    last: Option<tokio::time::Instant>,
    held: Vec<Arc<AppendedGroup>>,
}

impl Pulse {
    pub(super) fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held: Vec::new(),
        }
    }

    /// When the held groups are due (groups are only held after a pulse went out).
    pub(super) fn deadline(&self) -> Option<tokio::time::Instant> {
        self.last
            .filter(|_| !self.held.is_empty())
            .map(|last| last + self.every)
    }

    /// Whether a group arriving now may go out at once.
    fn open(&self, now: tokio::time::Instant) -> bool {
        self.held.is_empty() && self.last.is_none_or(|last| now >= last + self.every)
    }

    /// A group that arrived at `now`: itself when it goes out at once (a pulse of its own),
    /// `None` when it is held for the next pulse.
    pub(super) fn admit(
        &mut self,
        group: Arc<AppendedGroup>,
        now: tokio::time::Instant,
    ) -> Option<Arc<AppendedGroup>> {
        if self.open(now) {
            self.last = Some(now);
            Some(group)
        } else {
            self.held.push(group);
            None
        }
    }

    /// The held groups, going out now.
    pub(super) fn release(&mut self, now: tokio::time::Instant) -> Vec<Arc<AppendedGroup>> {
        self.last = Some(now);
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::tests::group;

    #[test]
    fn a_pulse_holds_groups_only_right_after_the_last_one() {
        let start = tokio::time::Instant::now();
        let every = Duration::from_millis(2);
        let mut pulse = Pulse {
            every,
            last: None,
            held: Vec::new(),
        };
        assert!(pulse.open(start), "the first group goes out at once");
        assert_eq!(pulse.deadline(), None);
        pulse.last = Some(start);
        let soon = start + Duration::from_millis(1);
        assert!(!pulse.open(soon), "held: the last pulse is too recent");
        pulse.held.push(group(1, &["arena/a"]));
        assert_eq!(pulse.deadline(), Some(start + every));
        assert!(
            !pulse.open(start + every),
            "a later group waits behind the held ones"
        );
        pulse.held.clear();
        assert!(
            pulse.open(start + every),
            "after a quiet moment, at once again"
        );
    }
}
