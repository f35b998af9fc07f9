//! High-frequency channels: the `[[high_frequency]]` rules, and the coalescing of a
//! channel's live events into batches that the fan-out hands to every subscriber of the
//! channel as one shared unit (one `batch` frame per wire, encoded once).
//!
//! A channel's pending batch is flushed when it holds `batch_max_messages` events or when
//! its oldest event has waited `batch_max_delay_ms` since it became durable, whichever
//! comes first: a quiet channel adds no delay beyond `batch_max_delay_ms`.
//!
//! Architecture invariant: batching only delays and groups live delivery. It never holds
//! anything the log does not already have, so a connection that falls behind, resumes or
//! reconnects reads the same events from the log.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::time::Instant;

use crate::{
    config::HighFrequencyRule,
    event::{Channel, ChannelPattern, Event, BROADCAST_CHANNEL},
    protocol::BatchCache,
};

/// One compiled `[[high_frequency]]` rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pattern: ChannelPattern,
    pub max_delay: Duration,
    pub max_messages: usize,
}

/// The rules, in configuration order: the first that matches a channel applies.
#[derive(Debug, Default)]
pub struct HighFrequency {
    rules: Vec<Rule>,
}

impl HighFrequency {
    /// Compiles the rules; the configuration was validated, so patterns compile.
    pub fn new(rules: &[HighFrequencyRule]) -> Self {
        let rules = rules
            .iter()
            .map(|rule| Rule {
                pattern: ChannelPattern::new(&rule.pattern).expect("validated pattern"),
                max_delay: Duration::from_millis(rule.batch_max_delay_ms),
                max_messages: rule.batch_max_messages.max(1),
            })
            .collect();
        Self { rules }
    }

    /// No channel is batched.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rule batching `channel`, if any. Broadcasts are never batched.
    pub fn rule_for(&self, channel: &Channel) -> Option<&Rule> {
        if self.rules.is_empty() || channel.as_str() == BROADCAST_CHANNEL {
            return None;
        }
        self.rules
            .iter()
            .find(|r| r.pattern.matches(channel.as_str()))
    }

    pub fn is_batched(&self, channel: &Channel) -> bool {
        self.rule_for(channel).is_some()
    }
}

/// Live events of one high-frequency channel, in seq order, delivered together.
pub struct Batch {
    pub channel: Channel,
    pub events: Vec<Arc<Event>>,
    /// When the oldest event became durable: deliveries measure their latency from here.
    pub durable_at: std::time::Instant,
    /// The batch's frames, per wire, for the connections that take every event as is.
    pub frames: BatchCache,
}

struct Pending {
    events: Vec<Arc<Event>>,
    durable_at: std::time::Instant,
    deadline: Instant,
    max_messages: usize,
}

/// The batches being filled, one per high-frequency channel with live subscribers. Owned
/// by the fan-out's dispatcher task: no lock.
#[derive(Default)]
pub struct Batcher {
    pending: HashMap<Channel, Pending>,
}

impl Batcher {
    /// Adds a live event of `channel`; returns the batch when this filled it.
    pub fn push(
        &mut self,
        channel: &Channel,
        rule: &Rule,
        event: &Arc<Event>,
        durable_at: std::time::Instant,
    ) -> Option<Batch> {
        let pending = self.pending.entry(channel.clone()).or_insert_with(|| {
            let waited = durable_at.elapsed();
            Pending {
                events: Vec::new(),
                durable_at,
                deadline: Instant::now() + rule.max_delay.saturating_sub(waited),
                max_messages: rule.max_messages,
            }
        });
        pending.events.push(event.clone());
        if pending.events.len() >= pending.max_messages {
            let pending = self.pending.remove(channel).expect("just filled");
            return Some(seal(channel.clone(), pending));
        }
        None
    }

    /// When the next pending batch is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// Takes every batch due at `now`, oldest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<Batch> {
        let due: Vec<Channel> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(channel, _)| channel.clone())
            .collect();
        let mut batches: Vec<Batch> = due
            .into_iter()
            .filter_map(|channel| {
                let pending = self.pending.remove(&channel)?;
                Some(seal(channel, pending))
            })
            .collect();
        batches.sort_by_key(|b| b.events[0].seq);
        batches
    }
}

fn seal(channel: Channel, pending: Pending) -> Batch {
    Batch {
        channel,
        events: pending.events,
        durable_at: pending.durable_at,
        frames: BatchCache::default(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    fn rules() -> HighFrequency {
        HighFrequency::new(&[
            HighFrequencyRule {
                pattern: "arena/*".into(),
                batch_max_delay_ms: 20,
                batch_max_messages: 3,
            },
            HighFrequencyRule {
                pattern: "*".into(),
                batch_max_delay_ms: 50,
                batch_max_messages: 100,
            },
        ])
    }

    fn event(seq: u64) -> Arc<Event> {
        Arc::new(Event::new(
            seq,
            seq.to_string(),
            vec![Channel::parse("arena/a1").unwrap()],
            "t".into(),
            0,
            RawValue::from_string("{}".into()).unwrap(),
        ))
    }

    #[test]
    fn first_matching_rule_applies_and_broadcasts_are_never_batched() {
        let hf = rules();
        let arena = Channel::parse("arena/a1").unwrap();
        assert_eq!(hf.rule_for(&arena).unwrap().max_messages, 3);
        let agent = Channel::parse("agent/x").unwrap();
        assert_eq!(hf.rule_for(&agent).unwrap().max_messages, 100);
        assert!(!hf.is_batched(&Channel::parse(BROADCAST_CHANNEL).unwrap()));
        assert!(!HighFrequency::default().is_batched(&arena));
    }

    #[test]
    fn flushes_when_full_or_when_the_oldest_event_waited_long_enough() {
        let hf = rules();
        let arena = Channel::parse("arena/a1").unwrap();
        let rule = hf.rule_for(&arena).unwrap();
        let mut batcher = Batcher::default();
        let now = std::time::Instant::now();
        assert!(batcher.push(&arena, rule, &event(1), now).is_none());
        assert!(batcher.push(&arena, rule, &event(2), now).is_none());
        let full = batcher.push(&arena, rule, &event(3), now).unwrap();
        let seqs: Vec<u64> = full.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert!(batcher.next_deadline().is_none());

        batcher.push(&arena, rule, &event(4), std::time::Instant::now());
        let deadline = batcher.next_deadline().unwrap();
        assert!(batcher
            .take_due(deadline - Duration::from_millis(1))
            .is_empty());
        let due = batcher.take_due(deadline);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].events[0].seq, 4);
        assert!(batcher.next_deadline().is_none());
    }
}
