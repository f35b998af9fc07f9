//! Fan-out: which connection wants which channel, and the bounded queue of each connection.
//!
//! One task reads the log's append notifications and offers every group to the connections
//! subscribed to any of its channels (and every group holding a `system/broadcast` event to
//! every connection). The group is shared, not copied: the connection picks out its events.
//! Events of high-frequency channels go to the channel's batch instead (see `batching`),
//! and the batch, once flushed, is offered to the channel's subscribers the same way.
//!
//! Groups go out in pulses: a group that arrives while the last pulse is younger than
//! `delivery.coalesce_ms` waits for the next one, and each connection gets all of a pulse's
//! groups as one delivery — one wakeup and one socket write for several events. Sparse
//! traffic is never held: a group arriving after a quiet moment goes out at once.
//!
//! A connection whose queue is full is never waited for and never silently skipped: its
//! `lagged` flag is raised, and the session, on seeing it, drops its queue and catches up
//! from the log from its own cursors (see `ws/subscriptions.rs`). A slow reader costs the
//! others nothing, and loses nothing.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use tokio::sync::{broadcast, mpsc, Notify};

use crate::{
    batching::{Batch, Batcher, HighFrequency},
    event::{Channel, BROADCAST_CHANNEL},
    log::AppendedGroup,
    metrics::METRICS,
};

/// What a connection's queue holds: an append group (its events of ordinary channels), the
/// groups of one pulse that concern the connection, in seq order, or a flushed batch of one
/// high-frequency channel.
#[derive(Clone)]
pub enum Delivery {
    Group(Arc<AppendedGroup>),
    Groups(Vec<Arc<AppendedGroup>>),
    Batch(Arc<Batch>),
}

pub type ConnectionId = u64;

/// Who a connection is, as the admin API shows it.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub client_id: String,
    pub user: String,
    pub remote_addr: Option<SocketAddr>,
    pub connected_at_ms: u64,
}

/// Counters a connection's writer keeps up to date.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub messages_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
}

/// What the hub keeps of a connection: the sending side of its queue, its lag flag, and
/// what the admin API shows and does.
pub struct ConnectionHandle {
    pub id: ConnectionId,
    pub client_id: String,
    pub user: String,
    pub info: ConnectionInfo,
    pub stats: Arc<ConnectionStats>,
    /// Set by an administrator's disconnect; the session closes with this reason.
    kick_reason: Mutex<Option<String>>,
    kicked: Notify,
    queue: mpsc::Sender<Delivery>,
    lagged: AtomicBool,
    /// Number of the last group offered, so a group with several of the connection's
    /// channels is queued once.
    last_group: AtomicU64,
}

/// Groups held for the next pulse, and when the last pulse went out.
struct Pulse {
    every: Duration,
    last: Option<tokio::time::Instant>,
    held: Vec<Arc<AppendedGroup>>,
}

impl Pulse {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held: Vec::new(),
        }
    }

    /// When the held groups are due (groups are only held after a pulse went out).
    fn deadline(&self) -> Option<tokio::time::Instant> {
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
    fn admit(
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
    fn release(&mut self, now: tokio::time::Instant) -> Vec<Arc<AppendedGroup>> {
        self.last = Some(now);
        std::mem::take(&mut self.held)
    }
}

impl ConnectionHandle {
    /// Takes the lag flag down and says whether it was up.
    pub fn take_lagged(&self) -> bool {
        self.lagged.swap(false, Ordering::AcqRel)
    }

    /// Asks the session to close with `reason`.
    pub fn kick(&self, reason: String) {
        *self.kick_reason.lock().expect("kick reason") = Some(reason);
        self.kicked.notify_one();
    }

    /// Resolves once the connection was kicked; the reason it was given.
    pub async fn kicked(&self) -> String {
        self.kicked.notified().await;
        self.kick_reason
            .lock()
            .expect("kick reason")
            .clone()
            .unwrap_or_default()
    }

    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    fn enqueue(&self, delivery: Delivery) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(delivery) {
            self.lagged.store(true, Ordering::Release);
        }
    }
}

#[derive(Default)]
struct Registry {
    connections: HashMap<ConnectionId, Arc<ConnectionHandle>>,
    /// channel -> connections subscribed to it (one entry per connection).
    channels: HashMap<Channel, HashMap<ConnectionId, Arc<ConnectionHandle>>>,
    /// Slots taken, by handshakes in progress and by open connections: what the
    /// connection limits count.
    occupied: usize,
    per_user: HashMap<String, usize>,
}

/// A place among the connections, taken at the handshake and counted against the limits
/// from then on, so that many handshakes at once cannot all pass the check and exceed the
/// limits together. Dropped unused (the upgrade failed), it frees its place.
pub struct Slot {
    hub: Arc<Hub>,
    user: String,
    /// Cleared when a connection takes the slot over; `disconnect` frees it then.
    armed: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.armed {
            self.hub.write().release(&self.user);
        }
    }
}

/// Which connection limit a handshake ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefusal {
    Total,
    PerUser,
}

impl Registry {
    fn release(&mut self, user: &str) {
        self.occupied -= 1;
        if let Some(count) = self.per_user.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                self.per_user.remove(user);
            }
        }
    }
}

#[derive(Default)]
pub struct Hub {
    registry: RwLock<Registry>,
    next_id: AtomicU64,
    groups_dispatched: AtomicU64,
    high_frequency: HighFrequency,
    coalesce: Duration,
}

impl Hub {
    /// `coalesce`: the shortest time between two pulses (zero: every group goes out as it
    /// arrives).
    pub fn new(high_frequency: HighFrequency, coalesce: Duration) -> Arc<Self> {
        Arc::new(Self {
            high_frequency,
            coalesce,
            ..Self::default()
        })
    }

    /// The `[[high_frequency]]` rules: which channels are delivered in batches.
    pub fn high_frequency(&self) -> &HighFrequency {
        &self.high_frequency
    }

    /// Starts the task that feeds every appended group to the connections.
    pub fn spawn_dispatcher(
        self: &Arc<Self>,
        mut appends: broadcast::Receiver<Arc<AppendedGroup>>,
    ) -> tokio::task::JoinHandle<()> {
        let hub = self.clone();
        tokio::spawn(async move {
            let mut batcher = Batcher::default();
            let mut pulse = Pulse::new(hub.coalesce);
            loop {
                let batch_due = batcher.next_deadline();
                let pulse_due = pulse.deadline();
                tokio::select! {
                    appended = appends.recv() => match appended {
                        Ok(group) => {
                            METRICS.group_appended(group.events.len(), group.durable_in);
                            hub.feed_batches(&group, &mut batcher);
                            if let Some(group) = pulse.admit(group, tokio::time::Instant::now()) {
                                hub.dispatch(&group);
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(
                                missed,
                                "fan-out fell behind the log; every connection catches up from the log"
                            );
                            hub.mark_all_lagged();
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    _ = sleep_until(pulse_due), if pulse_due.is_some() => {
                        hub.dispatch_pulse(pulse.release(tokio::time::Instant::now()));
                    }
                    _ = sleep_until(batch_due), if batch_due.is_some() => {
                        for batch in batcher.take_due(tokio::time::Instant::now()) {
                            hub.dispatch_batch(batch);
                        }
                    }
                }
            }
        })
    }

    /// Takes a slot for a connection of `user`, unless that would pass `max_total`
    /// connections, or `max_per_user` of this user (`None`: no per-user limit).
    pub fn reserve(
        self: &Arc<Self>,
        user: &str,
        max_total: usize,
        max_per_user: Option<usize>,
    ) -> Result<Slot, SlotRefusal> {
        let mut registry = self.write();
        if registry.occupied >= max_total {
            return Err(SlotRefusal::Total);
        }
        let of_user = registry.per_user.get(user).copied().unwrap_or(0);
        if max_per_user.is_some_and(|max| of_user >= max) {
            return Err(SlotRefusal::PerUser);
        }
        registry.occupied += 1;
        *registry.per_user.entry(user.to_string()).or_default() += 1;
        Ok(Slot {
            hub: self.clone(),
            user: user.to_string(),
            armed: true,
        })
    }

    /// Registers a connection in its slot; the receiver is its queue. The slot is freed by
    /// `disconnect`.
    pub fn connect(
        &self,
        mut slot: Slot,
        info: ConnectionInfo,
        stats: Arc<ConnectionStats>,
        queue_capacity: usize,
    ) -> (Arc<ConnectionHandle>, mpsc::Receiver<Delivery>) {
        // The slot was counted for its user: the connection must be that user's.
        debug_assert_eq!(slot.user, info.user);
        slot.armed = false;
        let (tx, rx) = mpsc::channel(queue_capacity);
        let handle = Arc::new(ConnectionHandle {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            client_id: info.client_id.clone(),
            user: info.user.clone(),
            info,
            stats,
            kick_reason: Mutex::new(None),
            kicked: Notify::new(),
            queue: tx,
            lagged: AtomicBool::new(false),
            last_group: AtomicU64::new(0),
        });
        self.write().connections.insert(handle.id, handle.clone());
        (handle, rx)
    }

    pub fn disconnect(&self, id: ConnectionId) {
        let mut registry = self.write();
        let Some(handle) = registry.connections.remove(&id) else {
            return;
        };
        registry.release(&handle.user);
        registry.channels.retain(|_, subscribers| {
            subscribers.remove(&id);
            !subscribers.is_empty()
        });
    }

    /// From now on, groups holding `channel` are offered to the connection.
    pub fn subscribe(&self, handle: &Arc<ConnectionHandle>, channel: &Channel) {
        self.write()
            .channels
            .entry(channel.clone())
            .or_default()
            .insert(handle.id, handle.clone());
    }

    pub fn unsubscribe(&self, id: ConnectionId, channel: &Channel) {
        let mut registry = self.write();
        if let Some(subscribers) = registry.channels.get_mut(channel) {
            subscribers.remove(&id);
            if subscribers.is_empty() {
                registry.channels.remove(channel);
            }
        }
    }

    /// Slots of `user`: its open connections and its handshakes in progress.
    pub fn connections_of(&self, user: &str) -> usize {
        self.read().per_user.get(user).copied().unwrap_or(0)
    }

    /// Open connections (handshakes in progress are not counted).
    pub fn connection_count(&self) -> usize {
        self.read().connections.len()
    }

    /// (channel, connection) pairs registered for live delivery.
    pub fn subscription_count(&self) -> usize {
        self.read().channels.values().map(HashMap::len).sum()
    }

    pub fn subscriber_count(&self, channel: &Channel) -> usize {
        self.read().channels.get(channel).map_or(0, HashMap::len)
    }

    pub fn connections(&self) -> Vec<Arc<ConnectionHandle>> {
        self.read().connections.values().cloned().collect()
    }

    pub fn find(&self, client_id: &str) -> Option<Arc<ConnectionHandle>> {
        self.read()
            .connections
            .values()
            .find(|c| c.client_id == client_id)
            .cloned()
    }

    /// The channels a connection is registered for, sorted.
    pub fn subscriptions_of(&self, id: ConnectionId) -> Vec<String> {
        let registry = self.read();
        let mut channels: Vec<String> = registry
            .channels
            .iter()
            .filter(|(_, subscribers)| subscribers.contains_key(&id))
            .map(|(channel, _)| channel.to_string())
            .collect();
        channels.sort();
        channels
    }

    /// Adds the events of the group's high-frequency channels to their batches (only while
    /// the channel has subscribers: one who subscribes later starts after these events
    /// anyway). Done as the group arrives, so that batches keep their own timing.
    fn feed_batches(&self, group: &Arc<AppendedGroup>, batcher: &mut Batcher) {
        if self.high_frequency.is_empty() {
            return;
        }
        let registry = self.read();
        let mut full = Vec::new();
        for event in &group.events {
            for channel in &event.channels {
                if let Some(rule) = self.high_frequency.rule_for(channel) {
                    if registry.channels.contains_key(channel) {
                        full.extend(batcher.push(channel, rule, event, group.durable_at));
                    }
                }
            }
        }
        drop(registry);
        for batch in full {
            self.dispatch_batch(batch);
        }
    }

    /// Offers the group to the subscribers of its ordinary channels.
    fn dispatch(&self, group: &Arc<AppendedGroup>) {
        let registry = self.read();
        self.for_each_subscriber(&registry, group, |handle| {
            handle.enqueue(Delivery::Group(group.clone()))
        });
    }

    /// Offers each connection the groups of the pulse that concern it, as one delivery.
    fn dispatch_pulse(&self, groups: Vec<Arc<AppendedGroup>>) {
        if let [group] = groups.as_slice() {
            return self.dispatch(group);
        }
        let registry = self.read();
        let mut by_connection: foldhash::HashMap<ConnectionId, (&Arc<ConnectionHandle>, Vec<_>)> =
            Default::default();
        for group in &groups {
            self.for_each_subscriber(&registry, group, |handle| {
                by_connection
                    .entry(handle.id)
                    .or_insert_with(|| (handle, Vec::new()))
                    .1
                    .push(group.clone());
            });
        }
        for (handle, groups) in by_connection.into_values() {
            handle.enqueue(Delivery::Groups(groups));
        }
    }

    /// Calls `offer` once for every connection subscribed to an ordinary channel of the
    /// group (every connection, when it holds a `system/broadcast` event).
    fn for_each_subscriber<'r>(
        &self,
        registry: &'r Registry,
        group: &AppendedGroup,
        mut offer: impl FnMut(&'r Arc<ConnectionHandle>),
    ) {
        let group_no = self.groups_dispatched.fetch_add(1, Ordering::Relaxed) + 1;
        let mut offer_once = |handle: &'r Arc<ConnectionHandle>| {
            if handle.last_group.swap(group_no, Ordering::Relaxed) != group_no {
                offer(handle);
            }
        };
        for event in &group.events {
            for channel in &event.channels {
                if channel.as_str() == BROADCAST_CHANNEL {
                    registry.connections.values().for_each(&mut offer_once);
                    continue;
                }
                if self.high_frequency.rule_for(channel).is_some() {
                    continue;
                }
                if let Some(subscribers) = registry.channels.get(channel) {
                    subscribers.values().for_each(&mut offer_once);
                }
            }
        }
    }

    /// Offers a flushed batch to the subscribers its channel has now.
    fn dispatch_batch(&self, batch: Batch) {
        METRICS.batch_flushed(batch.events.len());
        let batch = Arc::new(batch);
        if let Some(subscribers) = self.read().channels.get(&batch.channel) {
            for handle in subscribers.values() {
                handle.enqueue(Delivery::Batch(batch.clone()));
            }
        }
    }

    fn mark_all_lagged(&self) {
        for handle in self.read().connections.values() {
            handle.lagged.store(true, Ordering::Release);
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().expect("hub registry")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().expect("hub registry")
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;
    use crate::event::Event;

    fn group(seq: u64, channels: &[&str]) -> Arc<AppendedGroup> {
        Arc::new(AppendedGroup::new(vec![Arc::new(Event::new(
            seq,
            format!("{seq}"),
            channels
                .iter()
                .map(|c| Channel::parse(c).unwrap())
                .collect(),
            "t".into(),
            0,
            RawValue::from_string("{}".into()).unwrap(),
        ))]))
    }

    impl Hub {
        fn dispatch_one(&self, group: &Arc<AppendedGroup>) {
            self.feed_batches(group, &mut Batcher::default());
            self.dispatch(group);
        }
    }

    fn group_seq(delivery: Delivery) -> u64 {
        match delivery {
            Delivery::Group(group) => group.events[0].seq,
            Delivery::Groups(groups) => groups[0].events[0].seq,
            Delivery::Batch(batch) => batch.events[0].seq,
        }
    }

    fn info(user: &str) -> ConnectionInfo {
        ConnectionInfo {
            client_id: format!("c-{user}"),
            user: user.into(),
            remote_addr: None,
            connected_at_ms: 0,
        }
    }

    #[test]
    fn offers_once_per_connection_and_flags_lag_when_full() {
        let hub = Hub::new(HighFrequency::default(), Duration::ZERO);
        let slot = hub.reserve("u", 10, Some(1)).unwrap();
        let (conn, mut queue) = hub.connect(slot, info("u"), Default::default(), 2);
        let a = Channel::parse("arena/a").unwrap();
        let b = Channel::parse("arena/b").unwrap();
        hub.subscribe(&conn, &a);
        hub.subscribe(&conn, &b);
        hub.dispatch_one(&group(1, &["arena/a", "arena/b"]));
        assert_eq!(group_seq(queue.try_recv().unwrap()), 1);
        assert!(
            queue.try_recv().is_err(),
            "queued once although in two channels"
        );

        hub.dispatch_one(&group(2, &["arena/x"]));
        assert!(queue.try_recv().is_err(), "not subscribed");
        hub.dispatch_one(&group(3, &["system/broadcast"]));
        assert_eq!(
            group_seq(queue.try_recv().unwrap()),
            3,
            "broadcast reaches all"
        );

        for seq in 4..8 {
            hub.dispatch_one(&group(seq, &["arena/a"]));
        }
        assert!(conn.take_lagged());
        assert!(!conn.take_lagged());
        hub.disconnect(conn.id);
        assert_eq!(hub.connection_count(), 0);
        assert_eq!(hub.subscriber_count(&a), 0);
    }

    fn seqs(delivery: Delivery) -> Vec<u64> {
        match delivery {
            Delivery::Group(group) => vec![group.events[0].seq],
            Delivery::Groups(groups) => groups.iter().map(|g| g.events[0].seq).collect(),
            Delivery::Batch(batch) => batch.events.iter().map(|e| e.seq).collect(),
        }
    }

    #[test]
    fn a_pulse_reaches_each_connection_once_with_its_groups_in_order() {
        let hub = Hub::new(HighFrequency::default(), Duration::from_millis(2));
        let a = Channel::parse("arena/a").unwrap();
        let b = Channel::parse("arena/b").unwrap();
        let connect = |user: &str, channel: &Channel| {
            let slot = hub.reserve(user, 10, None).unwrap();
            let (conn, queue) = hub.connect(slot, info(user), Default::default(), 8);
            hub.subscribe(&conn, channel);
            (conn, queue)
        };
        let (_ca, mut qa) = connect("a", &a);
        let (_cb, mut qb) = connect("b", &b);
        hub.dispatch_pulse(vec![
            group(1, &["arena/a"]),
            group(2, &["arena/b"]),
            group(3, &["arena/a", "arena/b"]),
            group(4, &["arena/x"]),
            group(5, &["system/broadcast"]),
        ]);
        assert_eq!(seqs(qa.try_recv().unwrap()), [1, 3, 5]);
        assert_eq!(seqs(qb.try_recv().unwrap()), [2, 3, 5]);
        assert!(
            qa.try_recv().is_err() && qb.try_recv().is_err(),
            "one delivery each"
        );

        hub.dispatch_pulse(vec![group(6, &["arena/a"])]);
        assert!(matches!(qa.try_recv().unwrap(), Delivery::Group(_)));
        assert!(qb.try_recv().is_err());
    }

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

    #[test]
    fn slots_count_handshakes_and_connections_and_are_freed_once() {
        let hub = Hub::new(HighFrequency::default(), Duration::ZERO);
        let a1 = hub.reserve("a", 3, Some(2)).unwrap();
        let a2 = hub.reserve("a", 3, Some(2)).unwrap();
        assert_eq!(
            hub.reserve("a", 3, Some(2)).err(),
            Some(SlotRefusal::PerUser)
        );
        let b1 = hub.reserve("b", 3, None).unwrap();
        assert_eq!(hub.reserve("c", 3, None).err(), Some(SlotRefusal::Total));
        drop(a2);
        assert_eq!(hub.connections_of("a"), 1);
        let (conn, _queue) = hub.connect(a1, info("a"), Default::default(), 1);
        assert_eq!((hub.connection_count(), hub.connections_of("a")), (1, 1));
        hub.disconnect(conn.id);
        hub.disconnect(conn.id);
        assert_eq!((hub.connection_count(), hub.connections_of("a")), (0, 0));
        drop(b1);
        for user in ["x", "y", "z"] {
            std::mem::forget(hub.reserve(user, 3, Some(1)).unwrap());
        }
        assert_eq!(hub.reserve("w", 3, None).err(), Some(SlotRefusal::Total));
    }
}
