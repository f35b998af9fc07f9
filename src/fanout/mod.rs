//! Fan-out: which connection wants which channel, and the bounded queue of each connection.
//!
//! One task reads the log's append notifications and offers every group to the connections
//! subscribed to any of its channels (and every group holding a `system/broadcast` event to
//! every connection). The group is shared, not copied: the connection picks out its events.
//! Events of high-frequency channels go to the channel's batch instead (see `batching`),
//! and the batch, once flushed, is offered to the channel's subscribers the same way.
//!
//! Groups go out in pulses (see `pulse`): each connection gets all of a pulse's groups that
//! concern it as one delivery — one wakeup and one socket write for several events. A
//! connection that the pulse concerns through one channel only, a channel whose events in
//! the pulse are in no other, gets the channel's run instead (see `run`): the same events,
//! with frames laid out once for every connection that takes them all.
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

mod pulse;
mod run;

use pulse::Pulse;
pub use run::{LaidOut, Run};

/// What a connection's queue holds: an append group (its events of ordinary channels), the
/// groups of one pulse that concern the connection, in seq order, the run of the one
/// channel through which a pulse concerns it, or a flushed batch of one high-frequency
/// channel.
#[derive(Clone)]
pub enum Delivery {
    Group(Arc<AppendedGroup>),
    Groups(Arc<[Arc<AppendedGroup>]>),
    Run(Arc<Run>),
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
                                hub.dispatch_pulse(std::slice::from_ref(&group));
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
                        hub.dispatch_pulse(&pulse.release(tokio::time::Instant::now()));
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

    /// Offers each connection what the pulse holds for it, as one delivery: the run of its
    /// channel when the pulse concerns it through that channel alone and the channel's
    /// events in the pulse are in no other; otherwise the groups that concern it.
    fn dispatch_pulse(&self, groups: &[Arc<AppendedGroup>]) {
        let pulse = InPulse::of(groups, &self.high_frequency);
        let registry = self.read();
        let delivery_through = |channel: &Channel, found: &Found| match found.alone {
            true => Delivery::Run(Arc::new(Run::collect(channel, groups, &found.groups))),
            false => groups_delivery(groups, &found.groups),
        };
        if let ([], [(channel, found)]) = (pulse.broadcast.as_slice(), pulse.channels.as_slice()) {
            // The common case: everyone the pulse concerns, it concerns through this channel.
            let Some(subscribers) = registry.channels.get(*channel) else {
                return;
            };
            let delivery = delivery_through(channel, found);
            for handle in subscribers.values() {
                handle.enqueue(delivery.clone());
            }
            return;
        }
        let mut targets: foldhash::HashMap<ConnectionId, Target<'_>> = Default::default();
        for (index, (channel, found)) in pulse.channels.iter().enumerate() {
            let subscribers = registry.channels.get(*channel).into_iter();
            for handle in subscribers.flat_map(HashMap::values) {
                Target::of(&mut targets, handle).concerned_through(index, &found.groups);
            }
        }
        if !pulse.broadcast.is_empty() {
            for handle in registry.connections.values() {
                Target::of(&mut targets, handle).concerned_by_broadcast(&pulse.broadcast);
            }
        }
        let mut runs: Vec<Option<Delivery>> = vec![None; pulse.channels.len()];
        for target in targets.into_values() {
            let delivery = match target.through {
                Through::One(index) if pulse.channels[index].1.alone => runs[index]
                    .get_or_insert_with(|| {
                        let (channel, found) = &pulse.channels[index];
                        delivery_through(channel, found)
                    })
                    .clone(),
                _ => {
                    let mut indices = target.groups;
                    indices.sort_unstable();
                    indices.dedup();
                    groups_delivery(groups, &indices)
                }
            };
            target.handle.enqueue(delivery);
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

/// The ordinary channels a pulse holds events of, and the groups that hold them.
struct InPulse<'g> {
    /// In order of first appearance.
    channels: Vec<(&'g Channel, Found)>,
    /// Groups holding a `system/broadcast` event, ascending.
    broadcast: Vec<usize>,
}

/// Where a pulse holds events of one channel.
struct Found {
    /// Ascending indices of the groups.
    groups: Vec<usize>,
    /// Every such event is in this channel alone: the channel has a run.
    alone: bool,
}

impl<'g> InPulse<'g> {
    fn of(groups: &'g [Arc<AppendedGroup>], high_frequency: &HighFrequency) -> Self {
        let mut pulse = InPulse {
            channels: Vec::new(),
            broadcast: Vec::new(),
        };
        let mut position: foldhash::HashMap<&'g Channel, usize> = Default::default();
        for (index, group) in groups.iter().enumerate() {
            for event in &group.events {
                let alone = event.channels.len() == 1;
                for channel in &event.channels {
                    if channel.as_str() == BROADCAST_CHANNEL {
                        push_once(&mut pulse.broadcast, index);
                        continue;
                    }
                    if high_frequency.rule_for(channel).is_some() {
                        continue;
                    }
                    let at = *position.entry(channel).or_insert_with(|| {
                        let found = Found {
                            groups: Vec::new(),
                            alone: true,
                        };
                        pulse.channels.push((channel, found));
                        pulse.channels.len() - 1
                    });
                    let found = &mut pulse.channels[at].1;
                    push_once(&mut found.groups, index);
                    found.alone &= alone;
                }
            }
        }
        pulse
    }
}

fn push_once(indices: &mut Vec<usize>, index: usize) {
    if indices.last() != Some(&index) {
        indices.push(index);
    }
}

/// The groups at `indices` (ascending) as one delivery.
fn groups_delivery(groups: &[Arc<AppendedGroup>], indices: &[usize]) -> Delivery {
    match indices {
        [one] => Delivery::Group(groups[*one].clone()),
        _ => Delivery::Groups(indices.iter().map(|&i| groups[i].clone()).collect()),
    }
}

/// A connection a pulse concerns: how, and through which groups.
struct Target<'r> {
    handle: &'r Arc<ConnectionHandle>,
    groups: Vec<usize>,
    through: Through,
}

/// Through what a pulse concerns a connection.
#[derive(Clone, Copy)]
enum Through {
    Nothing,
    /// One channel only (its index in `InPulse::channels`).
    One(usize),
    /// Several channels, or a broadcast.
    Several,
}

impl<'r> Target<'r> {
    fn of<'t>(
        targets: &'t mut foldhash::HashMap<ConnectionId, Target<'r>>,
        handle: &'r Arc<ConnectionHandle>,
    ) -> &'t mut Self {
        targets.entry(handle.id).or_insert_with(|| Target {
            handle,
            groups: Vec::new(),
            through: Through::Nothing,
        })
    }

    fn concerned_through(&mut self, channel: usize, groups: &[usize]) {
        self.through = match self.through {
            Through::Nothing => Through::One(channel),
            _ => Through::Several,
        };
        self.groups.extend_from_slice(groups);
    }

    fn concerned_by_broadcast(&mut self, groups: &[usize]) {
        self.through = Through::Several;
        self.groups.extend_from_slice(groups);
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

    pub(super) fn group(seq: u64, channels: &[&str]) -> Arc<AppendedGroup> {
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
            self.dispatch_pulse(std::slice::from_ref(group));
        }
    }

    fn group_seq(delivery: Delivery) -> u64 {
        match delivery {
            Delivery::Group(group) => group.events[0].seq,
            Delivery::Groups(groups) => groups[0].events[0].seq,
            Delivery::Run(run) => run.first_seq(),
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
            Delivery::Run(run) => run.events.iter().map(|e| e.seq).collect(),
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
        hub.dispatch_pulse(&[
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

        hub.dispatch_pulse(&[group(6, &["arena/a"])]);
        assert!(matches!(qa.try_recv().unwrap(), Delivery::Run(_)));
        assert!(qb.try_recv().is_err());
    }

    #[test]
    fn a_connection_concerned_through_one_channel_alone_gets_its_shared_run() {
        let hub = Hub::new(HighFrequency::default(), Duration::from_millis(2));
        let connect = |user: &str, channels: &[&str]| {
            let slot = hub.reserve(user, 10, None).unwrap();
            let (conn, queue) = hub.connect(slot, info(user), Default::default(), 8);
            for channel in channels {
                hub.subscribe(&conn, &Channel::parse(channel).unwrap());
            }
            (conn, queue)
        };
        let (_a1, mut a1) = connect("a1", &["arena/a"]);
        let (_a2, mut a2) = connect("a2", &["arena/a"]);
        let (_b, mut b) = connect("b", &["arena/b"]);
        let (_ab, mut ab) = connect("ab", &["arena/a", "arena/b"]);
        let pulse = [
            group(1, &["arena/a"]),
            group(2, &["arena/b"]),
            group(3, &["arena/a"]),
            group(4, &["arena/c"]),
        ];
        hub.dispatch_pulse(&pulse);
        let (Delivery::Run(run1), Delivery::Run(run2)) =
            (a1.try_recv().unwrap(), a2.try_recv().unwrap())
        else {
            panic!("runs expected");
        };
        assert!(Arc::ptr_eq(&run1, &run2), "one run, shared");
        assert_eq!(run1.channel.as_str(), "arena/a");
        assert_eq!((run1.first_seq(), run1.last_seq()), (1, 3));
        assert_eq!(
            run1.groups,
            [(pulse[0].durable_at, 1), (pulse[2].durable_at, 1)]
        );
        assert_eq!(seqs(b.try_recv().unwrap()), [2]);
        let both = ab.try_recv().unwrap();
        assert!(matches!(both, Delivery::Groups(_)), "two channels: groups");
        assert_eq!(seqs(both), [1, 2, 3]);

        // An event of `arena/a` is also in `arena/b`: neither channel has a run.
        hub.dispatch_pulse(&[group(5, &["arena/a"]), group(6, &["arena/a", "arena/b"])]);
        let only_a = a1.try_recv().unwrap();
        assert!(matches!(only_a, Delivery::Groups(_)));
        assert_eq!(seqs(only_a), [5, 6]);
        assert!(matches!(b.try_recv().unwrap(), Delivery::Group(_)));
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
