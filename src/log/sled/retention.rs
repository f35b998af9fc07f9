//! Retention: a background thread that, every second, removes what the configured limits no
//! longer keep — the oldest events of a channel past `max_events_per_channel`, events older
//! than `max_age_secs` — and idempotency keys past their window.
//!
//! Events leave a channel by being dropped from its index entries; nothing reads an event
//! but through an index or a pinned list, so an unindexed, unpinned event is never served.
//! Each chunk counts the index and pinned-list references into it (`r` keys); a chunk whose
//! count reaches zero is deleted, so a pinned event's chunk outlives its channels' limits. Every removal
//! raises the channel's `removed_upto` (so a cursor below it is known to have lost events),
//! and every deleted chunk raises the log-wide `g` key (so the head never falls back, even
//! when retention empties the log).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{mpsc, Arc},
    time::Duration,
};

use super::{storage, Shared};
use crate::{
    config::RetentionConfig,
    event::now_ms,
    log::{codec, LogError},
};

const PASS_INTERVAL: Duration = Duration::from_secs(1);
/// Index references dropped per sled batch: keeps each write (and the write lock) short.
const MAX_REMOVALS_PER_BATCH: usize = 50_000;
/// Idempotency keys are kept while they are within this many events of the head...
const IDEMPOTENCY_MIN_EVENTS: u64 = 100_000;
/// ...or younger than this.
const IDEMPOTENCY_MIN_AGE_MS: u64 = 24 * 3600 * 1000;

pub(super) struct Handle {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Handle {
    pub(super) fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

pub(super) fn spawn(shared: Arc<Shared>, config: RetentionConfig) -> Result<Handle, LogError> {
    let (stop, stopped) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("streamlog-retention".into())
        .spawn(move || loop {
            if let Err(error) = enforce(&shared, &config, now_ms()) {
                tracing::error!(%error, "retention pass failed");
            }
            match stopped.recv_timeout(PASS_INTERVAL) {
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                _ => break,
            }
        })
        .map_err(|e| LogError::Storage(format!("cannot start the retention thread: {e}")))?;
    Ok(Handle { stop, thread })
}

/// One full pass.
pub(super) fn enforce(shared: &Shared, config: &RetentionConfig, now: u64) -> Result<(), LogError> {
    let _pass = shared.retention_pass.lock().expect("retention pass lock");
    let channels: Vec<(String, u64)> = {
        let state = shared.write.lock().expect("write lock");
        state
            .channels
            .iter()
            .map(|(name, meta)| (name.clone(), meta.retained))
            .collect()
    };
    let age_cut = if config.max_age_secs > 0 {
        last_seq_older_than(shared, now.saturating_sub(config.max_age_secs * 1000))?
    } else {
        0
    };
    let mut pass = Removal::default();
    for (channel, retained) in channels {
        let excess = match config.max_events_per_channel {
            0 => 0,
            keep => retained.saturating_sub(keep),
        };
        if excess == 0 && age_cut == 0 {
            continue;
        }
        trim_channel(shared, &channel, excess, age_cut, &mut pass)?;
        if pass.dropped >= MAX_REMOVALS_PER_BATCH {
            apply(shared, std::mem::take(&mut pass))?;
        }
    }
    apply(shared, pass)?;
    prune_idempotency_keys(shared, now)
}

/// The last seq appended before `cutoff_ms` (0 if none). Timestamps never decrease with
/// seq, so age retention removes a prefix of the log.
fn last_seq_older_than(shared: &Shared, cutoff_ms: u64) -> Result<u64, LogError> {
    let head = shared.head();
    let mut cut = 0;
    for item in shared.tree.scan_prefix([codec::PREFIX_CHUNK]) {
        let (key, bytes) = item.map_err(storage)?;
        let chunk = codec::ChunkView::parse(codec::seq_from_key(&key)?, &bytes)?;
        if chunk.first_seq > head {
            break;
        }
        if chunk.ts_ms(chunk.last_seq())? < cutoff_ms {
            cut = chunk.last_seq();
            continue;
        }
        for seq in chunk.first_seq..=chunk.last_seq() {
            if chunk.ts_ms(seq)? >= cutoff_ms {
                break;
            }
            cut = seq;
        }
        break;
    }
    Ok(cut.min(head))
}

/// What one pass removes, gathered before it is written in one batch.
#[derive(Default)]
struct Removal {
    batch: sled::Batch,
    /// channel -> (references dropped, highest seq dropped)
    channels: HashMap<String, (u64, u64)>,
    /// chunk first seq -> references dropped
    chunk_refs: BTreeMap<u64, u64>,
    dropped: usize,
}

/// Drops from `channel` its oldest `count` events and every event at or below `upto`.
fn trim_channel(
    shared: &Shared,
    channel: &str,
    count: u64,
    upto: u64,
    pass: &mut Removal,
) -> Result<(), LogError> {
    let mut left = count;
    let mut chunk_of = ChunkLocator::new(shared);
    let (mut dropped, mut highest) = (0u64, 0u64);
    for item in shared.index_entries(channel, 0)? {
        let (key, value) = item.map_err(storage)?;
        let seqs = codec::decode_index_entry(codec::seq_from_key(&key)?, &value)?;
        let keep_from = seqs
            .iter()
            .position(|seq| {
                if left > 0 || *seq <= upto {
                    left = left.saturating_sub(1);
                    false
                } else {
                    true
                }
            })
            .unwrap_or(seqs.len());
        if keep_from == 0 {
            break;
        }
        for seq in &seqs[..keep_from] {
            *pass
                .chunk_refs
                .entry(chunk_of.first_seq(*seq)?)
                .or_default() += 1;
        }
        dropped += keep_from as u64;
        highest = seqs[keep_from - 1];
        pass.batch.remove(key);
        if keep_from < seqs.len() {
            let rest = &seqs[keep_from..];
            pass.batch.insert(
                codec::channel_index_key(channel, rest[0]),
                codec::encode_index_entry(rest),
            );
            break;
        }
    }
    if dropped > 0 {
        pass.channels
            .insert(channel.to_string(), (dropped, highest));
        pass.dropped += dropped as usize;
    }
    Ok(())
}

/// Finds the chunk holding a seq; consecutive seqs mostly share one, so it remembers it.
pub(super) struct ChunkLocator<'a> {
    shared: &'a Shared,
    current: Option<(u64, u64)>,
}

impl<'a> ChunkLocator<'a> {
    pub(super) fn new(shared: &'a Shared) -> Self {
        Self {
            shared,
            current: None,
        }
    }

    /// The first seq of the chunk holding `seq`, which must exist (it is referenced).
    pub(super) fn first_seq(&mut self, seq: u64) -> Result<u64, LogError> {
        self.find(seq)?
            .ok_or_else(|| LogError::Corrupt(format!("referenced seq {seq} has no chunk")))
    }

    /// The first seq of the chunk holding `seq`, if that chunk is still stored.
    pub(super) fn find(&mut self, seq: u64) -> Result<Option<u64>, LogError> {
        if let Some((first, last)) = self.current {
            if (first..=last).contains(&seq) {
                return Ok(Some(first));
            }
        }
        let found = self
            .shared
            .tree
            .range(codec::chunk_key(0)..=codec::chunk_key(seq))
            .next_back()
            .transpose()
            .map_err(storage)?;
        let Some((key, bytes)) = found else {
            return Ok(None);
        };
        let chunk = codec::ChunkView::parse(codec::seq_from_key(&key)?, &bytes)?;
        if !chunk.contains(seq) {
            return Ok(None);
        }
        self.current = Some((chunk.first_seq, chunk.last_seq()));
        Ok(Some(chunk.first_seq))
    }
}

fn apply(shared: &Shared, mut pass: Removal) -> Result<(), LogError> {
    if pass.channels.is_empty() {
        return Ok(());
    }
    let mut state = shared.write.lock().expect("write lock");
    let mut removed_upto = state.removed_upto;
    release_chunk_refs(shared, &mut pass.batch, &pass.chunk_refs, &mut removed_upto)?;
    let mut metas = Vec::new();
    for (channel, (dropped, highest)) in &pass.channels {
        let mut meta = state.channels.get(channel).copied().unwrap_or_default();
        meta.retained = meta.retained.saturating_sub(*dropped);
        meta.removed_upto = meta.removed_upto.max(*highest);
        pass.batch
            .insert(codec::channel_meta_key(channel), &meta.encode());
        metas.push((channel.clone(), meta));
    }
    pass.batch
        .insert(codec::KEY_REMOVED_UPTO, &codec::encode_u64(removed_upto));
    // Readers check `removed_upto` after reading a page, so it is raised *before* the
    // deletion becomes visible: a page that lost events to this pass is always detected.
    let previous: Vec<(String, Option<codec::ChannelMeta>)> = metas
        .iter()
        .map(|(channel, _)| (channel.clone(), state.channels.get(channel).copied()))
        .collect();
    state.channels.extend(metas);
    if let Err(e) = shared.tree.apply_batch(pass.batch) {
        for (channel, meta) in previous {
            match meta {
                Some(meta) => state.channels.insert(channel, meta),
                None => state.channels.remove(&channel),
            };
        }
        return Err(storage(e));
    }
    state.removed_upto = removed_upto;
    Ok(())
}

/// Adds to `batch` the decrement of each chunk's `r` count by the references dropped, and
/// the deletion of every chunk left with none, raising `removed_upto` to its last seq.
/// The caller holds the write lock: counts are read here and written by its batch.
pub(super) fn release_chunk_refs(
    shared: &Shared,
    batch: &mut sled::Batch,
    chunk_refs: &BTreeMap<u64, u64>,
    removed_upto: &mut u64,
) -> Result<(), LogError> {
    for (first_seq, dropped) in chunk_refs {
        let key = codec::chunk_refs_key(*first_seq);
        let refs = match shared.tree.get(key).map_err(storage)? {
            Some(v) => codec::decode_u64(&v)?,
            None => {
                return Err(LogError::Corrupt(format!(
                    "chunk {first_seq} has no reference count"
                )))
            }
        };
        let left = refs.saturating_sub(*dropped);
        if left == 0 {
            let chunk_key = codec::chunk_key(*first_seq);
            if let Some(bytes) = shared.tree.get(chunk_key).map_err(storage)? {
                *removed_upto =
                    (*removed_upto).max(codec::ChunkView::parse(*first_seq, &bytes)?.last_seq());
            }
            batch.remove(&chunk_key);
            batch.remove(&key);
        } else {
            batch.insert(&key, &codec::encode_u64(left));
        }
    }
    Ok(())
}

/// Drops idempotency keys that are both more than 100 000 events behind the head and older
/// than 24 hours. `j` entries are in seq order, so the scan stops at the first one kept.
fn prune_idempotency_keys(shared: &Shared, now: u64) -> Result<(), LogError> {
    let head = shared.head();
    let mut batch = sled::Batch::default();
    let mut pruned = 0;
    for item in shared.tree.scan_prefix([codec::PREFIX_IDEMPOTENCY_GROUP]) {
        let (group_key, value) = item.map_err(storage)?;
        let first_seq = codec::seq_from_key(&group_key)?;
        let (ts_ms, keys) = codec::decode_idempotency_group(&value)?;
        if head.saturating_sub(first_seq) <= IDEMPOTENCY_MIN_EVENTS
            || now.saturating_sub(ts_ms) <= IDEMPOTENCY_MIN_AGE_MS
            || pruned >= MAX_REMOVALS_PER_BATCH
        {
            break;
        }
        for key in &keys {
            batch.remove(codec::idempotency_key(key));
        }
        pruned += keys.len();
        batch.remove(group_key);
    }
    if pruned > 0 {
        shared.tree.apply_batch(batch).map_err(storage)?;
    }
    Ok(())
}
