//! The subscriptions of one connection, and the rule that decides, event by event, whether
//! and through which channel it is delivered. Pure state, no IO: the session feeds it.
//!
//! Every subscription keeps a cursor: every event of its channel with `seq <= cursor` has
//! been handled (delivered, or filtered out). A subscription is either *live* (it takes
//! events from the connection's queue) or *catching up* (it reads the log from its cursor;
//! live events for it are ignored, the log read will reach them).
//!
//! Hand-over from backlog to live, without gap or duplicate: the channel is registered with
//! the fan-out *before* the log is read. An event durable before a log read is found by that
//! read; one made durable after it arrives through the queue. Reading stops at a short page;
//! the cursor then becomes the head seen before that last read, and queued events at or
//! below the cursor are skipped. If the queue overflowed meanwhile, the lag flag sends every
//! live subscription back to catching up, from its own cursor.
//!
//! A subscription of a high-frequency channel (`batched`) takes its live events from the
//! channel's batches, not from append groups: each subscription's cursor only moves with
//! its own stream, so a batch that arrives after the groups of later events still finds
//! its events above the cursor.
//!
//! Delivered once per connection: an event in several subscribed channels is delivered
//! through the first subscription that wants it, unless another subscription already
//! covered it (its cursor passed the event, it started before it, and its filter matches).

// A connection holds at most `max_subscriptions_per_connection` channels, and each live
// event is looked up here once per connection: a fast hash pays, SipHash's HashDoS
// resistance buys nothing at that size.
use foldhash::HashMap;

use serde_json::Value;

use crate::{
    event::{Channel, Event},
    filter::Filter,
    log::ChannelPosition,
};

#[derive(Debug)]
pub struct Subscription {
    pub channel: Channel,
    filter: Filter,
    /// The filters as the client sent them, for `get_subscriptions`.
    pub filter_source: Value,
    /// Events at or below `start` were never this subscription's to deliver.
    start: u64,
    cursor: u64,
    catching_up: Option<CatchUp>,
    /// The connection's automatic `system/broadcast` subscription: not listed or counted.
    implicit: bool,
    /// A high-frequency channel: live events come in batches, and go out as `batch` frames.
    pub batched: bool,
}

impl Subscription {
    /// Whether a live event of an append group with this seq is still this subscription's
    /// to take: it is live (not catching up), unbatched, and not past the event.
    fn takes_live(&self, seq: u64) -> bool {
        !self.batched && self.catching_up.is_none() && seq > self.cursor
    }
}

#[derive(Debug, Clone, Copy)]
struct CatchUp {
    /// Send `caught_up` when done (a resume asked by the client, not a lag recovery).
    announce: bool,
}

/// How a new subscription begins.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// Live from this seq (the head when it was registered).
    Live { head: u64 },
    /// Deliver the log after `cursor`, then go live; announce `caught_up`.
    Resume { cursor: u64 },
}

#[derive(Debug, Default)]
pub struct Subscriptions {
    by_channel: HashMap<Channel, Subscription>,
}

impl Subscriptions {
    pub fn add(
        &mut self,
        channel: Channel,
        filter: Filter,
        filter_source: Value,
        start: Start,
        batched: bool,
    ) {
        self.insert(channel, filter, filter_source, start, false, batched);
    }

    pub fn add_implicit(&mut self, channel: Channel, head: u64) {
        self.insert(
            channel,
            Filter::all(),
            Value::Null,
            Start::Live { head },
            true,
            false,
        );
    }

    fn insert(
        &mut self,
        channel: Channel,
        filter: Filter,
        filter_source: Value,
        start: Start,
        implicit: bool,
        batched: bool,
    ) {
        let (cursor, catching_up) = match start {
            Start::Live { head } => (head, None),
            Start::Resume { cursor } => (cursor, Some(CatchUp { announce: true })),
        };
        self.by_channel.insert(
            channel.clone(),
            Subscription {
                channel,
                filter,
                filter_source,
                start: cursor,
                cursor,
                catching_up,
                implicit,
                batched,
            },
        );
    }

    pub fn remove(&mut self, channel: &str) -> bool {
        match self.by_channel.get(channel) {
            Some(sub) if !sub.implicit => {
                self.by_channel.remove(channel);
                true
            }
            _ => false,
        }
    }

    pub fn contains(&self, channel: &str) -> bool {
        self.by_channel.get(channel).is_some_and(|s| !s.implicit)
    }

    /// Subscriptions the client made (the implicit broadcast one is not counted).
    pub fn count(&self) -> usize {
        self.by_channel.values().filter(|s| !s.implicit).count()
    }

    pub fn listed(&self) -> Vec<&Subscription> {
        let mut subs: Vec<_> = self.by_channel.values().filter(|s| !s.implicit).collect();
        subs.sort_by(|a, b| a.channel.cmp(&b.channel));
        subs
    }

    /// A live event from an append group: the index (into `event.channels`) of the channel
    /// to deliver it through, or `None`. Advances the cursors of the live, unbatched
    /// subscriptions it concerns either way.
    pub fn route_live(&mut self, event: &Event) -> Option<usize> {
        if let [channel] = event.channels.as_slice() {
            // The common case, in one lookup: no other channel can have covered it.
            let sub = self.by_channel.get_mut(channel)?;
            if !sub.takes_live(event.seq) {
                return None;
            }
            sub.cursor = event.seq;
            return sub.filter.matches(event).then_some(0);
        }
        let mut chosen = None;
        for (index, channel) in event.channels.iter().enumerate() {
            let Some(sub) = self.by_channel.get(channel) else {
                continue;
            };
            if !sub.takes_live(event.seq) {
                continue;
            }
            if chosen.is_none()
                && sub.filter.matches(event)
                && !self.covered_elsewhere(event, channel)
            {
                chosen = Some(index);
            }
        }
        for channel in &event.channels {
            if let Some(sub) = self.by_channel.get_mut(channel) {
                if sub.takes_live(event.seq) {
                    sub.cursor = event.seq;
                }
            }
        }
        chosen
    }

    /// A run of live events `first..=last`, every one in `channel` alone: whether this
    /// connection takes them all as they are — its subscription of the channel is live,
    /// before the first, unfiltered. Its cursor then moves past them; as `route_live` would
    /// have moved it, event by event.
    pub fn take_run(&mut self, channel: &Channel, first: u64, last: u64) -> bool {
        match self.by_channel.get_mut(channel) {
            Some(sub) if sub.takes_live(first) && sub.filter.is_all() => {
                sub.cursor = last;
                true
            }
            _ => false,
        }
    }

    /// An event read from the log for the catching-up subscription of `channel`: whether to
    /// deliver it (through that channel). Advances that subscription's cursor.
    pub fn route_catch_up(&mut self, channel: &Channel, event: &Event) -> bool {
        self.route_through(channel, event, true)
    }

    /// A live event from a batch of `channel`: whether to deliver it (through that
    /// channel). Advances that subscription's cursor.
    pub fn route_batched(&mut self, channel: &Channel, event: &Event) -> bool {
        self.route_through(channel, event, false)
    }

    fn route_through(&mut self, channel: &Channel, event: &Event, catching_up: bool) -> bool {
        let deliver = match self.by_channel.get(channel) {
            Some(sub) if sub.catching_up.is_some() == catching_up && event.seq > sub.cursor => {
                sub.filter.matches(event) && !self.covered_elsewhere(event, channel)
            }
            _ => return false,
        };
        if let Some(sub) = self.by_channel.get_mut(channel) {
            sub.cursor = event.seq;
        }
        deliver
    }

    /// Whether a subscription other than `except`'s already covered this event.
    fn covered_elsewhere(&self, event: &Event, except: &Channel) -> bool {
        event.channels.iter().filter(|c| *c != except).any(|c| {
            self.by_channel.get(c).is_some_and(|other| {
                other.start < event.seq && event.seq <= other.cursor && other.filter.matches(event)
            })
        })
    }

    /// The next subscription to catch up, and its cursor.
    pub fn next_catching_up(&self) -> Option<(Channel, u64)> {
        self.by_channel
            .values()
            .filter(|s| s.catching_up.is_some())
            .min_by_key(|s| s.cursor)
            .map(|s| (s.channel.clone(), s.cursor))
    }

    pub fn is_catching_up(&self) -> bool {
        self.by_channel.values().any(|s| s.catching_up.is_some())
    }

    /// The log held nothing more after the cursor when `head_before_read` was the head:
    /// the subscription goes live. Returns the seq to announce in `caught_up`, if asked.
    pub fn finish_catch_up(&mut self, channel: &Channel, head_before_read: u64) -> Option<u64> {
        let sub = self.by_channel.get_mut(channel)?;
        let catch_up = sub.catching_up.take()?;
        sub.cursor = sub.cursor.max(head_before_read);
        catch_up.announce.then_some(sub.cursor)
    }

    /// The queue overflowed: every live subscription goes back to reading the log.
    pub fn start_lag_recovery(&mut self) {
        for sub in self.by_channel.values_mut() {
            if sub.catching_up.is_none() {
                sub.catching_up = Some(CatchUp { announce: false });
            }
        }
    }

    /// The cursor a client should resume from: the lowest over its own subscriptions (the
    /// implicit broadcast one only moves with broadcasts, so it counts only when alone).
    pub fn resume_cursor(&self) -> u64 {
        let own = self
            .by_channel
            .values()
            .filter(|s| !s.implicit)
            .map(|s| s.cursor)
            .min();
        own.or_else(|| self.by_channel.values().map(|s| s.cursor).min())
            .unwrap_or(0)
    }
}

/// Where a subscription starts, and why it is not a full recovery when it is not.
pub fn resolve_start(
    since: Option<u64>,
    epoch: Option<&str>,
    log_epoch: &str,
    position: &ChannelPosition,
) -> (Start, Option<&'static str>) {
    let head = position.head;
    match since {
        None => (Start::Live { head }, None),
        Some(_) if epoch.is_some_and(|e| e != log_epoch) => {
            (Start::Resume { cursor: head }, Some("epoch_mismatch"))
        }
        Some(since) if since > head => (Start::Resume { cursor: head }, Some("future_cursor")),
        // `since=0` asks for the earliest retained event: nothing it asked for is lost.
        Some(0) => (
            Start::Resume {
                cursor: position.removed_upto,
            },
            None,
        ),
        Some(since) if since < position.removed_upto => (
            Start::Resume {
                cursor: position.removed_upto,
            },
            Some("expired"),
        ),
        Some(since) => (Start::Resume { cursor: since }, None),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, value::RawValue};

    use super::*;

    fn ch(name: &str) -> Channel {
        Channel::parse(name).unwrap()
    }

    fn event(seq: u64, channels: &[&str], data: Value) -> Event {
        Event::new(
            seq,
            seq.to_string(),
            channels.iter().map(|c| ch(c)).collect(),
            "t".into(),
            0,
            RawValue::from_string(data.to_string()).unwrap(),
        )
    }

    #[test]
    fn multi_channel_event_is_delivered_once() {
        let mut subs = Subscriptions::default();
        subs.add(
            ch("arena/a"),
            Filter::all(),
            Value::Null,
            Start::Live { head: 0 },
            false,
        );
        subs.add(
            ch("arena/b"),
            Filter::all(),
            Value::Null,
            Start::Live { head: 0 },
            false,
        );
        let e = event(1, &["arena/b", "arena/a"], json!({}));
        assert_eq!(subs.route_live(&e), Some(0));
        assert_eq!(subs.route_live(&e), None, "a repeat is never delivered");
    }

    #[test]
    fn filtered_out_subscription_does_not_block_another() {
        let mut subs = Subscriptions::default();
        let only_x = Filter::parse(&json!({"k": "x"})).unwrap();
        subs.add(
            ch("arena/a"),
            only_x,
            Value::Null,
            Start::Live { head: 0 },
            false,
        );
        subs.add(
            ch("arena/b"),
            Filter::all(),
            Value::Null,
            Start::Live { head: 0 },
            false,
        );
        let e = event(1, &["arena/a", "arena/b"], json!({"k": "y"}));
        assert_eq!(subs.route_live(&e), Some(1));
    }

    #[test]
    fn resume_then_live_skips_what_the_backlog_delivered() {
        let mut subs = Subscriptions::default();
        let a = ch("arena/a");
        subs.add(
            a.clone(),
            Filter::all(),
            Value::Null,
            Start::Resume { cursor: 2 },
            false,
        );
        // Live events arrive while the backlog is read: ignored, the log read covers them.
        assert_eq!(subs.route_live(&event(4, &["arena/a"], json!({}))), None);
        assert!(!subs.route_catch_up(&a, &event(2, &["arena/a"], json!({}))));
        assert!(subs.route_catch_up(&a, &event(3, &["arena/a"], json!({}))));
        assert!(subs.route_catch_up(&a, &event(4, &["arena/a"], json!({}))));
        assert_eq!(subs.finish_catch_up(&a, 5), Some(5));
        // 4 and 5 were covered by the read; 6 is new.
        assert_eq!(subs.route_live(&event(4, &["arena/a"], json!({}))), None);
        assert_eq!(subs.route_live(&event(5, &["arena/a"], json!({}))), None);
        assert_eq!(subs.route_live(&event(6, &["arena/a"], json!({}))), Some(0));
    }

    #[test]
    fn catch_up_skips_events_another_live_subscription_delivered() {
        let mut subs = Subscriptions::default();
        subs.add(
            ch("arena/b"),
            Filter::all(),
            Value::Null,
            Start::Live { head: 6 },
            false,
        );
        let shared = event(7, &["arena/a", "arena/b"], json!({}));
        assert_eq!(subs.route_live(&shared), Some(1));
        let a = ch("arena/a");
        subs.add(
            a.clone(),
            Filter::all(),
            Value::Null,
            Start::Resume { cursor: 0 },
            false,
        );
        assert!(
            subs.route_catch_up(&a, &event(6, &["arena/a", "arena/b"], json!({}))),
            "6 predates the arena/b subscription"
        );
        assert!(
            !subs.route_catch_up(&a, &shared),
            "7 went out through arena/b"
        );
    }

    #[test]
    fn lag_recovery_resumes_every_live_subscription_from_its_cursor() {
        let mut subs = Subscriptions::default();
        let a = ch("arena/a");
        subs.add(
            a.clone(),
            Filter::all(),
            Value::Null,
            Start::Live { head: 0 },
            false,
        );
        assert_eq!(subs.route_live(&event(1, &["arena/a"], json!({}))), Some(0));
        subs.start_lag_recovery();
        assert_eq!(subs.next_catching_up(), Some((a.clone(), 1)));
        assert!(subs.route_catch_up(&a, &event(2, &["arena/a"], json!({}))));
        assert_eq!(
            subs.finish_catch_up(&a, 2),
            None,
            "no caught_up for lag recovery"
        );
        assert!(!subs.is_catching_up());
    }

    #[test]
    fn a_batched_channel_moves_only_with_its_batches() {
        let mut subs = Subscriptions::default();
        let hf = ch("arena/hf");
        subs.add(
            hf.clone(),
            Filter::all(),
            Value::Null,
            Start::Live { head: 0 },
            true,
        );
        subs.add(
            ch("agent/x"),
            Filter::all(),
            Value::Null,
            Start::Live { head: 0 },
            false,
        );
        // A group of later events (one also in the batched channel) arrives before the batch.
        let both = event(2, &["arena/hf", "agent/x"], json!({}));
        assert_eq!(subs.route_live(&event(1, &["arena/hf"], json!({}))), None);
        assert_eq!(
            subs.route_live(&both),
            Some(1),
            "through the unbatched channel"
        );
        // The batch of arena/hf still delivers 1, and not 2 again.
        assert!(subs.route_batched(&hf, &event(1, &["arena/hf"], json!({}))));
        assert!(!subs.route_batched(&hf, &both));
        assert!(subs.route_batched(&hf, &event(3, &["arena/hf"], json!({}))));
        assert!(!subs.route_batched(&hf, &event(3, &["arena/hf"], json!({}))));
    }

    fn position(head: u64, removed_upto: u64) -> ChannelPosition {
        ChannelPosition {
            head,
            earliest: removed_upto + 1,
            removed_upto,
            retained: 1,
        }
    }

    #[test]
    fn resume_decisions() {
        let p = position(100, 40);
        let cases = [
            (None, None, None, "live"),
            (Some(50), None, None, "resume 50"),
            (Some(50), Some("e1"), None, "resume 50"),
            (
                Some(50),
                Some("other"),
                Some("epoch_mismatch"),
                "resume 100",
            ),
            (Some(101), None, Some("future_cursor"), "resume 100"),
            (Some(39), None, Some("expired"), "resume 40"),
            (Some(40), None, None, "resume 40"),
            (Some(0), None, None, "resume 40"),
        ];
        for (since, epoch, reason, want) in cases {
            let (start, got_reason) = resolve_start(since, epoch, "e1", &p);
            let got = match start {
                Start::Live { .. } => "live".to_string(),
                Start::Resume { cursor } => format!("resume {cursor}"),
            };
            assert_eq!(
                (got.as_str(), got_reason),
                (want, reason),
                "since {since:?} epoch {epoch:?}"
            );
        }
    }
}
