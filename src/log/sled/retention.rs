//! Retention: a background thread that, every second, removes what the configured limits no
//! longer keep (the oldest events of a channel past `max_events_per_channel`, events older
//! than `max_age_secs`) and idempotency keys past their window.
//!
//! An event stored in several channels is removed from each channel's index on its own; its
//! record goes only when no channel still indexes it. Every removal raises the channel's
//! `removed_upto` (so a cursor below it is known to have lost events) and the log-wide `g`
//! key (so the head never falls back, even if retention empties the log).

use std::{
    collections::{HashMap, HashSet},
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
/// Removals per sled batch: keeps each write (and the write lock) short.
const MAX_REMOVALS_PER_BATCH: usize = 10_000;
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

/// One full pass: loops until nothing more is due.
pub(super) fn enforce(shared: &Shared, config: &RetentionConfig, now: u64) -> Result<(), LogError> {
    if config.max_age_secs > 0 {
        let cutoff = now.saturating_sub(config.max_age_secs * 1000);
        while remove_older_than(shared, cutoff)? == MAX_REMOVALS_PER_BATCH {}
    }
    if config.max_events_per_channel > 0 {
        trim_channels(shared, config.max_events_per_channel)?;
    }
    prune_idempotency_keys(shared, now)?;
    Ok(())
}

/// Index entries to drop, per channel, in ascending seq order.
type Removals = HashMap<String, Vec<u64>>;

fn remove_older_than(shared: &Shared, cutoff_ms: u64) -> Result<usize, LogError> {
    let head = shared.head();
    let mut removals: Removals = HashMap::new();
    let mut records = Vec::new();
    for item in shared.tree.scan_prefix([codec::PREFIX_EVENT]) {
        let (key, value) = item.map_err(storage)?;
        let seq = codec::seq_from_event_key(&key)?;
        if seq > head || records.len() == MAX_REMOVALS_PER_BATCH {
            break;
        }
        let event = codec::decode_record(seq, &value)?;
        if event.ts_ms >= cutoff_ms {
            break;
        }
        for channel in &event.channels {
            removals
                .entry(channel.as_str().to_string())
                .or_default()
                .push(seq);
        }
        records.push(seq);
    }
    let removed = records.len();
    apply(shared, removals, records)?;
    Ok(removed)
}

fn trim_channels(shared: &Shared, keep: u64) -> Result<(), LogError> {
    let over: Vec<(String, u64)> = {
        let state = shared.write.lock().expect("write lock");
        state
            .channels
            .iter()
            .filter(|(_, meta)| meta.retained > keep)
            .map(|(name, meta)| (name.clone(), meta.retained - keep))
            .collect()
    };
    let mut removals: Removals = HashMap::new();
    let mut pending = 0;
    for (channel, excess) in over {
        let seqs = shared.channel_seqs(&channel, 0, u64::MAX, excess as usize)?;
        pending += seqs.len();
        removals.insert(channel, seqs);
        if pending >= MAX_REMOVALS_PER_BATCH {
            let records = orphaned_records(shared, &removals)?;
            apply(shared, std::mem::take(&mut removals), records)?;
            pending = 0;
        }
    }
    let records = orphaned_records(shared, &removals)?;
    apply(shared, removals, records)
}

/// Records whose every channel index entry is among `removals` (or already gone).
fn orphaned_records(shared: &Shared, removals: &Removals) -> Result<Vec<u64>, LogError> {
    let removing: HashSet<(&str, u64)> = removals
        .iter()
        .flat_map(|(channel, seqs)| seqs.iter().map(move |seq| (channel.as_str(), *seq)))
        .collect();
    let mut candidates: Vec<u64> = removals.values().flatten().copied().collect();
    candidates.sort_unstable();
    candidates.dedup();
    let mut orphaned = Vec::new();
    for seq in candidates {
        let Some(event) = shared.read_event(seq)? else {
            continue;
        };
        let mut still_indexed = false;
        for channel in &event.channels {
            if removing.contains(&(channel.as_str(), seq)) {
                continue;
            }
            let key = codec::channel_index_key(channel.as_str(), seq);
            if shared.tree.contains_key(key).map_err(storage)? {
                still_indexed = true;
                break;
            }
        }
        if !still_indexed {
            orphaned.push(seq);
        }
    }
    Ok(orphaned)
}

fn apply(shared: &Shared, removals: Removals, records: Vec<u64>) -> Result<(), LogError> {
    if removals.is_empty() && records.is_empty() {
        return Ok(());
    }
    let mut state = shared.write.lock().expect("write lock");
    let mut batch = sled::Batch::default();
    let mut metas = HashMap::new();
    for (channel, seqs) in &removals {
        let Some(&last) = seqs.last() else { continue };
        let mut meta = state.channels.get(channel).copied().unwrap_or_default();
        meta.retained = meta.retained.saturating_sub(seqs.len() as u64);
        meta.removed_upto = meta.removed_upto.max(last);
        for seq in seqs {
            batch.remove(codec::channel_index_key(channel, *seq));
        }
        batch.insert(codec::channel_meta_key(channel), &meta.encode());
        metas.insert(channel.clone(), meta);
    }
    let mut removed_upto = state.removed_upto;
    for seq in &records {
        batch.remove(&codec::event_key(*seq));
        removed_upto = removed_upto.max(*seq);
    }
    batch.insert(codec::KEY_REMOVED_UPTO, &codec::encode_u64(removed_upto));
    shared.tree.apply_batch(batch).map_err(storage)?;
    state.channels.extend(metas);
    state.removed_upto = removed_upto;
    Ok(())
}

/// Drops idempotency keys that are both more than 100 000 events behind the head and older
/// than 24 hours. `j` keys are in seq order, so the scan stops at the first one still kept.
fn prune_idempotency_keys(shared: &Shared, now: u64) -> Result<(), LogError> {
    let head = shared.head();
    let mut batch = sled::Batch::default();
    let mut count = 0;
    for item in shared.tree.scan_prefix([codec::PREFIX_IDEMPOTENCY_ORDER]) {
        let (order_key, key) = item.map_err(storage)?;
        let seq = codec::decode_u64(&order_key[1..])?;
        if head.saturating_sub(seq) <= IDEMPOTENCY_MIN_EVENTS || count == MAX_REMOVALS_PER_BATCH {
            break;
        }
        let idem_key = [&[codec::PREFIX_IDEMPOTENCY][..], &key].concat();
        if let Some(value) = shared.tree.get(&idem_key).map_err(storage)? {
            let (_, ts_ms) = codec::decode_idempotency_value(&value)?;
            if now.saturating_sub(ts_ms) <= IDEMPOTENCY_MIN_AGE_MS {
                break;
            }
            batch.remove(idem_key);
        }
        batch.remove(order_key);
        count += 1;
    }
    if count > 0 {
        shared.tree.apply_batch(batch).map_err(storage)?;
    }
    Ok(())
}
