//! The embedded engine: the whole log in one sled database.
//!
//! Architecture invariant: this folder is the only code in streamlog that touches sled.
//! `storage-format.md` specifies every key and value it writes.
//!
//! - `mod.rs` opens and recovers the store and serves reads;
//! - `commit.rs` is the single writer: it groups concurrent appends into one atomic sled
//!   batch and one fsync (group commit), then publishes the group to watchers;
//! - `retention.rs` removes what retention no longer keeps, and old idempotency keys;
//! - `pins.rs` keeps pinned sets (sealed seq lists that retention must not touch).

mod commit;
mod pins;
mod retention;

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use tokio::sync::{broadcast, mpsc, oneshot};

use super::recent::RecentEvents;
use super::{
    codec::{self, ChannelMeta},
    AppendOutcome, AppendedGroup, BoxFuture, ChannelPosition, ChannelSummary, EventLog, LogError,
    LogStats, PinOutcome, PinnedSet, ReadRange,
};
use crate::{
    config::{RetentionConfig, StorageConfig},
    event::{Channel, Event, NewEvent},
};

/// Groups kept for watchers that fall behind; a watcher that loses more must catch up
/// from the log (the fan-out does so for every connection).
const WATCH_CAPACITY: usize = 4096;

pub struct SledLog {
    shared: Arc<Shared>,
    commands: mpsc::Sender<commit::Command>,
    /// Joined on close: the thread holds the database until it ends.
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    retention: Mutex<Option<retention::Handle>>,
}

/// State shared by readers, the committer thread and the retention thread.
struct Shared {
    db: sled::Db,
    /// Events, channel index, channel metadata and idempotency keys (see storage-format.md).
    tree: sled::Tree,
    epoch: String,
    /// Seq of the last durable event. Readers never look past it, so nobody sees an event
    /// that a crash could still take back.
    head: AtomicU64,
    /// Held while a batch is built and applied: the committer and retention both rewrite
    /// channel metadata, and each must start from the other's last write.
    write: Mutex<WriteState>,
    /// Held for a whole retention pass: a pass decides its removals before it takes the
    /// write lock, so two passes at once would both remove the same references.
    retention_pass: Mutex<()>,
    watch: broadcast::Sender<Arc<AppendedGroup>>,
    recent: RecentEvents,
}

struct WriteState {
    channels: HashMap<String, ChannelMeta>,
    /// Timestamp of the last appended event; new ones never go below it, so `ts` is
    /// monotonic in seq even if the wall clock steps back.
    last_ts: u64,
    /// Highest seq ever removed by retention (the `g` key).
    removed_upto: u64,
    /// Set when a write failed: the store may hold a batch that was never made durable.
    poisoned: Option<String>,
}

fn storage(e: sled::Error) -> LogError {
    LogError::Storage(e.to_string())
}

impl SledLog {
    /// Opens (or creates) the store in `dir` and recovers the head from what is on disk.
    pub fn open(
        dir: &Path,
        storage_config: &StorageConfig,
        retention_config: RetentionConfig,
    ) -> Result<Self, LogError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| LogError::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let db = sled::Config::new()
            .path(dir.join("sled"))
            .cache_capacity(storage_config.cache_capacity_mb << 20)
            .open()
            .map_err(|e| LogError::Storage(format!("cannot open {}: {e}", dir.display())))?;
        let meta = db.open_tree("meta").map_err(storage)?;
        let tree = db.open_tree("log").map_err(storage)?;
        let epoch = init_or_check_meta(&db, &meta, &tree)?;
        let (head, state) = recover(&tree)?;
        let (watch, _) = broadcast::channel(WATCH_CAPACITY);
        let shared = Arc::new(Shared {
            db,
            tree,
            epoch,
            head: AtomicU64::new(head),
            write: Mutex::new(state),
            retention_pass: Mutex::new(()),
            watch,
            recent: RecentEvents::new(storage_config.recent_events_cached),
        });
        let (commands, committer) = commit::spawn(shared.clone(), storage_config.max_group_events)?;
        let retention = retention::spawn(shared.clone(), retention_config)?;
        tracing::info!(head, epoch = %shared.epoch, dir = %dir.display(), "log opened");
        Ok(Self {
            shared,
            commands,
            committer: Mutex::new(Some(committer)),
            retention: Mutex::new(Some(retention)),
        })
    }
}

fn init_or_check_meta(
    db: &sled::Db,
    meta: &sled::Tree,
    tree: &sled::Tree,
) -> Result<String, LogError> {
    match meta.get("format_version").map_err(storage)? {
        Some(v) => {
            let found = codec::decode_u64(&v)? as u32;
            if found != codec::FORMAT_VERSION {
                return Err(LogError::UnsupportedFormat {
                    found,
                    supported: codec::FORMAT_VERSION,
                });
            }
            let epoch = meta
                .get("epoch")
                .map_err(storage)?
                .ok_or_else(|| LogError::Corrupt("meta has no epoch".into()))?;
            String::from_utf8(epoch.to_vec())
                .map_err(|_| LogError::Corrupt("epoch is not UTF-8".into()))
        }
        None if tree.is_empty() => {
            let epoch = mint_epoch();
            // Epoch and version are written and flushed before any event can exist, so a
            // store with events always has both.
            meta.insert("epoch", epoch.as_bytes()).map_err(storage)?;
            meta.insert("created_at_ms", &codec::encode_u64(crate::event::now_ms()))
                .map_err(storage)?;
            meta.insert(
                "format_version",
                &codec::encode_u64(codec::FORMAT_VERSION as u64),
            )
            .map_err(storage)?;
            db.flush().map_err(storage)?;
            Ok(epoch)
        }
        None => Err(LogError::Corrupt(
            "events are stored but meta/format_version is missing".into(),
        )),
    }
}

fn mint_epoch() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..10)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The head is the larger of the last stored event and the highest seq retention removed:
/// even a log that retention emptied never hands out a seq twice.
fn recover(tree: &sled::Tree) -> Result<(u64, WriteState), LogError> {
    let removed_upto = match tree.get(codec::KEY_REMOVED_UPTO).map_err(storage)? {
        Some(v) => codec::decode_u64(&v)?,
        None => 0,
    };
    let last = tree
        .scan_prefix([codec::PREFIX_CHUNK])
        .next_back()
        .transpose()
        .map_err(storage)?;
    let (last_seq, last_ts) = match last {
        Some((key, value)) => {
            let chunk = codec::ChunkView::parse(codec::seq_from_key(&key)?, &value)?;
            (chunk.last_seq(), chunk.ts_ms(chunk.last_seq())?)
        }
        None => (0, 0),
    };
    let mut channels = HashMap::new();
    for item in tree.scan_prefix([codec::PREFIX_CHANNEL_META]) {
        let (key, value) = item.map_err(storage)?;
        let name = String::from_utf8(key[1..].to_vec())
            .map_err(|_| LogError::Corrupt("channel name is not UTF-8".into()))?;
        channels.insert(name, ChannelMeta::decode(&value)?);
    }
    let state = WriteState {
        channels,
        last_ts,
        removed_upto,
        poisoned: None,
    };
    Ok((last_seq.max(removed_upto), state))
}

/// Reads events by seq, keeping the last chunk it opened: consecutive seqs mostly share one.
struct ChunkReader<'a> {
    tree: &'a sled::Tree,
    recent: &'a RecentEvents,
    current: Option<(u64, sled::IVec)>,
    cache: codec::DecodeCache,
}

impl<'a> ChunkReader<'a> {
    fn new(shared: &'a Shared) -> Self {
        Self {
            tree: &shared.tree,
            recent: &shared.recent,
            current: None,
            cache: codec::DecodeCache::default(),
        }
    }

    /// The chunk holding `seq`, if it is still stored.
    fn chunk(&mut self, seq: u64) -> Result<Option<codec::ChunkView<'_>>, LogError> {
        let cached = match &self.current {
            Some((first, bytes)) => codec::ChunkView::parse(*first, bytes)?.contains(seq),
            None => false,
        };
        if !cached {
            let found = self
                .tree
                .range(codec::chunk_key(0)..=codec::chunk_key(seq))
                .next_back()
                .transpose()
                .map_err(storage)?;
            self.current = match found {
                Some((key, bytes)) => Some((codec::seq_from_key(&key)?, bytes)),
                None => None,
            };
        }
        match &self.current {
            Some((first, bytes)) => {
                let view = codec::ChunkView::parse(*first, bytes)?;
                Ok(view.contains(seq).then_some(view))
            }
            None => Ok(None),
        }
    }

    fn event(&mut self, seq: u64) -> Result<Option<Arc<Event>>, LogError> {
        if let Some(event) = self.recent.get(seq) {
            return Ok(Some(event));
        }
        if self.chunk(seq)?.is_none() {
            return Ok(None);
        }
        let (first, bytes) = self.current.as_ref().expect("the chunk was just found");
        codec::ChunkView::parse(*first, bytes)?
            .event_cached(seq, &mut self.cache)
            .map(|event| Some(Arc::new(event)))
    }
}

impl Shared {
    fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Index entries of a channel, in seq order, starting with the one that may hold
    /// `after + 1` (an entry's key is its first seq, so it can start before `after`).
    fn index_entries(
        &self,
        channel: &str,
        after: u64,
    ) -> Result<impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>, LogError> {
        let prefix = codec::channel_index_prefix(channel);
        let wanted = codec::channel_index_key(channel, after.saturating_add(1));
        let start = match self.tree.range(prefix.clone()..wanted.clone()).next_back() {
            Some(item) => item.map_err(storage)?.0.to_vec(),
            None => wanted,
        };
        Ok(self.tree.range(start..).take_while(move |item| match item {
            Ok((key, _)) => key.starts_with(&prefix),
            Err(_) => true,
        }))
    }

    /// Seqs of one channel in `(after, until]`, ascending, at most `limit`.
    fn channel_seqs(
        &self,
        channel: &str,
        after: u64,
        until: u64,
        limit: usize,
    ) -> Result<Vec<u64>, LogError> {
        let mut seqs = Vec::new();
        if after >= until || limit == 0 {
            return Ok(seqs);
        }
        for item in self.index_entries(channel, after)? {
            let (key, value) = item.map_err(storage)?;
            for seq in codec::decode_index_entry(codec::seq_from_key(&key)?, &value)? {
                if seq > until || seqs.len() == limit {
                    return Ok(seqs);
                }
                if seq > after {
                    seqs.push(seq);
                }
            }
        }
        Ok(seqs)
    }

    fn read(&self, range: &ReadRange<'_>) -> Result<Vec<Arc<Event>>, LogError> {
        let until = range.until.min(self.head());
        let mut seqs = Vec::new();
        for channel in range.channels {
            seqs.extend(self.channel_seqs(channel.as_str(), range.after, until, range.limit)?);
        }
        if range.channels.len() > 1 {
            seqs.sort_unstable();
            seqs.dedup();
        }
        seqs.truncate(range.limit);
        let mut reader = ChunkReader::new(self);
        let mut events = Vec::with_capacity(seqs.len());
        for seq in seqs {
            // A chunk retention removed between the index scan and this read is gone for
            // every reader, which is what retention promises.
            if let Some(event) = reader.event(seq)? {
                events.push(event);
            }
        }
        Ok(events)
    }

    fn last_seq(&self, channel: &str) -> Result<u64, LogError> {
        let prefix = codec::channel_index_prefix(channel);
        match self
            .tree
            .scan_prefix(&prefix)
            .next_back()
            .transpose()
            .map_err(storage)?
        {
            Some((key, value)) => Ok(codec::decode_index_entry(
                codec::seq_from_key(&key)?,
                &value,
            )?
            .last()
            .copied()
            .unwrap_or(0)),
            None => Ok(0),
        }
    }

    fn channels(&self) -> Result<Vec<ChannelSummary>, LogError> {
        let metas: Vec<(String, ChannelMeta)> = {
            let state = self.write.lock().expect("write lock");
            state
                .channels
                .iter()
                .map(|(name, meta)| (name.clone(), *meta))
                .collect()
        };
        let mut out = Vec::with_capacity(metas.len());
        for (channel, meta) in metas {
            let last_seq = self.last_seq(&channel)?;
            out.push(ChannelSummary {
                channel,
                last_seq,
                retained: meta.retained,
                removed_upto: meta.removed_upto,
            });
        }
        out.sort_by(|a, b| a.channel.cmp(&b.channel));
        Ok(out)
    }

    fn position(&self, channel: &Channel) -> Result<ChannelPosition, LogError> {
        let head = self.head();
        let meta = self
            .write
            .lock()
            .expect("write lock")
            .channels
            .get(channel.as_str())
            .copied()
            .unwrap_or_default();
        let earliest = self
            .channel_seqs(channel.as_str(), 0, head, 1)?
            .first()
            .copied()
            .unwrap_or(0);
        Ok(ChannelPosition {
            head,
            earliest,
            removed_upto: meta.removed_upto,
            retained: meta.retained,
        })
    }
}

impl EventLog for SledLog {
    fn epoch(&self) -> &str {
        &self.shared.epoch
    }

    fn head(&self) -> u64 {
        self.shared.head()
    }

    fn append(&self, batch: Vec<NewEvent>) -> BoxFuture<'_, Result<Vec<AppendOutcome>, LogError>> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            let (reply, answer) = oneshot::channel();
            self.commands
                .send(commit::Command::Append { batch, reply })
                .await
                .map_err(|_| LogError::Closed)?;
            answer.await.map_err(|_| LogError::Closed)?
        })
    }

    fn read<'a>(
        &'a self,
        range: ReadRange<'a>,
    ) -> BoxFuture<'a, Result<Vec<Arc<Event>>, LogError>> {
        Box::pin(async move { self.shared.read(&range) })
    }

    fn position<'a>(
        &'a self,
        channel: &'a Channel,
    ) -> BoxFuture<'a, Result<ChannelPosition, LogError>> {
        Box::pin(async move { self.shared.position(channel) })
    }

    fn pin<'a>(
        &'a self,
        name: &'a str,
        seqs: Vec<u64>,
        meta: Vec<u8>,
    ) -> BoxFuture<'a, Result<PinOutcome, LogError>> {
        let shared = self.shared.clone();
        let name = name.to_string();
        // The flush blocks: keep it off the async workers.
        Box::pin(async move {
            tokio::task::spawn_blocking(move || pins::pin(&shared, &name, &seqs, &meta))
                .await
                .map_err(|e| LogError::Storage(e.to_string()))?
        })
    }

    fn pinned<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<PinnedSet>, LogError>> {
        Box::pin(async move { pins::pinned(&self.shared, name) })
    }

    fn pinned_sets(&self) -> BoxFuture<'_, Result<Vec<PinnedSet>, LogError>> {
        Box::pin(async move { pins::pinned_sets(&self.shared) })
    }

    fn read_pinned<'a>(
        &'a self,
        name: &'a str,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Arc<Event>>, LogError>> {
        Box::pin(async move { pins::read_pinned(&self.shared, name, from, limit) })
    }

    fn unpin<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, LogError>> {
        let shared = self.shared.clone();
        let name = name.to_string();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || pins::unpin(&shared, &name))
                .await
                .map_err(|e| LogError::Storage(e.to_string()))?
        })
    }

    fn watch(&self) -> broadcast::Receiver<Arc<AppendedGroup>> {
        self.shared.watch.subscribe()
    }

    fn channels(&self) -> BoxFuture<'_, Result<Vec<ChannelSummary>, LogError>> {
        Box::pin(async move { self.shared.channels() })
    }

    fn stats(&self) -> LogStats {
        let retained = self
            .shared
            .write
            .lock()
            .expect("write lock")
            .channels
            .values()
            .map(|m| m.retained)
            .sum();
        LogStats {
            size_on_disk: self.shared.db.size_on_disk().unwrap_or(0),
            retained_index_entries: retained,
        }
    }

    fn close(&self) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move {
            if let Some(handle) = self.retention.lock().expect("retention").take() {
                handle.stop();
            }
            let (reply, done) = oneshot::channel();
            if self
                .commands
                .send(commit::Command::Close { reply })
                .await
                .is_ok()
            {
                done.await.map_err(|_| LogError::Closed)??;
            }
            let committer = self.committer.lock().expect("committer").take();
            if let Some(thread) = committer {
                // It has answered the close and is returning; the join is immediate.
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests;
