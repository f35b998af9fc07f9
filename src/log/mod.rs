//! The durable event log, behind a small trait.
//!
//! Architecture invariant: nothing outside `log/` knows which engine stores the events. The
//! gateway appends batches, reads ranges of channels, asks for positions and listens to
//! appends through [`EventLog`]; `log/sled/` is the embedded engine and the only code that
//! touches sled. A distributed engine replaces it by implementing the same trait.
//!
//! Guarantees every engine gives:
//! - `append` answers only once the events are durable, assigns one `seq` per event that is
//!   strictly increasing across the whole log and never reused, and is all-or-nothing;
//! - reads never return an event before it is durable (they stop at [`EventLog::head`]);
//! - [`EventLog::watch`] yields every appended group, in seq order, after it is durable.

pub mod codec;
pub mod recent;
pub mod sled;

use std::{future::Future, pin::Pin, sync::Arc};

use tokio::sync::broadcast;

use crate::event::{Channel, Event, NewEvent};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What `append` made of one submitted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    pub seq: u64,
    /// The idempotency key was already stored: nothing was appended, `seq` is the original.
    pub duplicate: bool,
}

/// Events made durable together, in seq order. Shared by every connection it is fanned out to.
#[derive(Debug)]
pub struct AppendedGroup {
    pub events: Vec<Arc<Event>>,
    /// When the group became durable: live deliveries measure their latency from here.
    pub durable_at: std::time::Instant,
    /// How long writing and syncing the group took.
    pub durable_in: std::time::Duration,
}

impl AppendedGroup {
    pub fn new(events: Vec<Arc<Event>>) -> Self {
        Self {
            events,
            durable_at: std::time::Instant::now(),
            durable_in: Default::default(),
        }
    }
}

/// Size figures of the log, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogStats {
    pub size_on_disk: u64,
    /// Retained events, counted once per channel they are in.
    pub retained_index_entries: u64,
}

/// One channel as the log knows it.
#[derive(Debug, Clone)]
pub struct ChannelSummary {
    pub channel: String,
    /// Seq of its newest retained event (0 when it holds none).
    pub last_seq: u64,
    pub retained: u64,
    pub removed_upto: u64,
}

/// Where a channel stands in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelPosition {
    /// The log's head (last durable seq, all channels).
    pub head: u64,
    /// Seq of the oldest retained event of the channel, 0 when it holds none.
    pub earliest: u64,
    /// Highest seq of this channel that retention removed, 0 when nothing was removed.
    /// A cursor below it has lost events.
    pub removed_upto: u64,
    /// Retained events of the channel.
    pub retained: u64,
}

/// A range read: events of any of `channels` with `after < seq <= until`, merged by seq,
/// each event once, at most `limit` of them.
#[derive(Debug, Clone)]
pub struct ReadRange<'a> {
    pub channels: &'a [Channel],
    pub after: u64,
    pub until: u64,
    pub limit: usize,
}

/// A named, sealed list of seqs whose events the log keeps, whatever retention says, until
/// the list is unpinned. Datasets are built on it; the log knows nothing of datasets and
/// keeps the owner's `meta` bytes as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedSet {
    pub name: String,
    /// Seqs in the list.
    pub count: u64,
    pub meta: Vec<u8>,
}

/// What `pin` made of a request. Both refusals are expected outcomes, not failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinOutcome {
    Pinned {
        count: u64,
    },
    /// A set of that name exists; nothing was changed.
    NameTaken,
    /// Retention removed this seq's event before it could be pinned; nothing was pinned.
    Gone {
        seq: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("the stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the log is closed")]
    Closed,
    #[error(
        "the data dir holds storage format version {found}; this streamlog reads version {supported}"
    )]
    UnsupportedFormat { found: u32, supported: u32 },
    #[error("a previous write failed and the log refuses further appends: {0}")]
    Poisoned(String),
}

pub trait EventLog: Send + Sync + 'static {
    /// The random identity of this log, minted when its store was created.
    fn epoch(&self) -> &str;

    /// Seq of the last durable event (0 for an empty log).
    fn head(&self) -> u64;

    /// Appends a batch atomically and durably; one outcome per submitted event, in order.
    fn append(&self, batch: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<AppendOutcome>, LogError>>;

    /// Reads a range of one or more channels, merged by seq.
    fn read<'a>(&'a self, range: ReadRange<'a>)
        -> BoxFuture<'a, Result<Vec<Arc<Event>>, LogError>>;

    fn position<'a>(
        &'a self,
        channel: &'a Channel,
    ) -> BoxFuture<'a, Result<ChannelPosition, LogError>>;

    /// Pins the events of `seqs` (ascending, distinct, at most the head) under `name`,
    /// with the owner's `meta`, durably and all-or-nothing.
    fn pin<'a>(
        &'a self,
        name: &'a str,
        seqs: Vec<u64>,
        meta: Vec<u8>,
    ) -> BoxFuture<'a, Result<PinOutcome, LogError>>;

    fn pinned<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<PinnedSet>, LogError>>;

    /// Every pinned set, by name.
    fn pinned_sets(&self) -> BoxFuture<'_, Result<Vec<PinnedSet>, LogError>>;

    /// The events at positions `from .. from + limit` of a pinned list, in list order;
    /// fewer at its end.
    fn read_pinned<'a>(
        &'a self,
        name: &'a str,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Arc<Event>>, LogError>>;

    /// Drops a pinned set; its events are left to retention again. `false` if there was none.
    fn unpin<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, LogError>>;

    /// Every group appended from now on, in seq order, after it is durable.
    fn watch(&self) -> broadcast::Receiver<Arc<AppendedGroup>>;

    /// Every channel that holds or held events.
    fn channels(&self) -> BoxFuture<'_, Result<Vec<ChannelSummary>, LogError>>;

    fn stats(&self) -> LogStats;

    /// Makes everything durable and stops taking appends.
    fn close(&self) -> BoxFuture<'_, Result<(), LogError>>;
}
