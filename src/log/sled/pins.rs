//! Pinned sets: named, sealed lists of seqs (`p` header and `q` parts, see
//! `storage-format.md`) whose events outlive retention.
//!
//! A pinned seq is one more reference to its chunk, counted in the chunk's `r` key like an
//! index reference. Retention only ever drops index references, so a chunk holding a pinned
//! event never reaches zero while the set exists; unpinning drops the set's references and
//! deletes the chunks left with none, exactly as retention does.
//!
//! Pinning and unpinning hold the write lock: `r` counts are read and rewritten under it by
//! retention and the committer too, so every writer starts from the others' last write.

use std::{collections::BTreeMap, sync::Arc};

use super::{retention, storage, ChunkReader, Shared};
use crate::{
    event::Event,
    log::{codec, LogError, PinOutcome, PinnedSet},
};

pub(super) fn pin(
    shared: &Shared,
    name: &str,
    seqs: &[u64],
    meta: &[u8],
) -> Result<PinOutcome, LogError> {
    let state = shared.write.lock().expect("write lock");
    if let Some(why) = &state.poisoned {
        return Err(LogError::Poisoned(why.clone()));
    }
    let header_key = codec::pin_key(name);
    if shared.tree.get(&header_key).map_err(storage)?.is_some() {
        return Ok(PinOutcome::NameTaken);
    }
    let head = shared.head();
    let mut locator = retention::ChunkLocator::new(shared);
    let mut added: BTreeMap<u64, u64> = BTreeMap::new();
    let mut previous = 0;
    for &seq in seqs {
        if seq <= previous || seq > head {
            return Err(LogError::Storage(format!(
                "pin {name}: seqs must ascend within the head, got {seq} after {previous}"
            )));
        }
        previous = seq;
        match locator.find(seq)? {
            Some(first) => *added.entry(first).or_default() += 1,
            None => return Ok(PinOutcome::Gone { seq }),
        }
    }
    let mut batch = sled::Batch::default();
    for (first, count) in &added {
        let key = codec::chunk_refs_key(*first);
        let refs = match shared.tree.get(key).map_err(storage)? {
            Some(v) => codec::decode_u64(&v)?,
            None => {
                return Err(LogError::Corrupt(format!(
                    "chunk {first} has no reference count"
                )))
            }
        };
        batch.insert(&key, &codec::encode_u64(refs + count));
    }
    for (part, part_seqs) in seqs.chunks(codec::PIN_PART_SEQS).enumerate() {
        batch.insert(
            codec::pin_part_key(name, part as u32),
            codec::encode_pin_part(part_seqs),
        );
    }
    batch.insert(
        header_key,
        codec::encode_pin_header(seqs.len() as u64, meta),
    );
    shared.tree.apply_batch(batch).map_err(storage)?;
    // The set is acknowledged only once durable, like an append.
    shared.db.flush().map_err(storage)?;
    drop(state);
    Ok(PinOutcome::Pinned {
        count: seqs.len() as u64,
    })
}

pub(super) fn unpin(shared: &Shared, name: &str) -> Result<bool, LogError> {
    let mut state = shared.write.lock().expect("write lock");
    let header_key = codec::pin_key(name);
    if shared.tree.get(&header_key).map_err(storage)?.is_none() {
        return Ok(false);
    }
    let mut batch = sled::Batch::default();
    let mut released: BTreeMap<u64, u64> = BTreeMap::new();
    let mut locator = retention::ChunkLocator::new(shared);
    for item in shared.tree.scan_prefix(codec::pin_part_prefix(name)) {
        let (key, value) = item.map_err(storage)?;
        for seq in codec::decode_pin_part(&value)? {
            *released.entry(locator.first_seq(seq)?).or_default() += 1;
        }
        batch.remove(key);
    }
    batch.remove(header_key);
    let mut removed_upto = state.removed_upto;
    retention::release_chunk_refs(shared, &mut batch, &released, &mut removed_upto)?;
    batch.insert(codec::KEY_REMOVED_UPTO, &codec::encode_u64(removed_upto));
    shared.tree.apply_batch(batch).map_err(storage)?;
    shared.db.flush().map_err(storage)?;
    state.removed_upto = removed_upto;
    Ok(true)
}

fn decode_set(key: &[u8], value: &[u8]) -> Result<PinnedSet, LogError> {
    let name = String::from_utf8(key[1..].to_vec())
        .map_err(|_| LogError::Corrupt("pinned set name is not UTF-8".into()))?;
    let (count, meta) = codec::decode_pin_header(value)?;
    Ok(PinnedSet {
        name,
        count,
        meta: meta.to_vec(),
    })
}

pub(super) fn pinned(shared: &Shared, name: &str) -> Result<Option<PinnedSet>, LogError> {
    let key = codec::pin_key(name);
    match shared.tree.get(&key).map_err(storage)? {
        Some(value) => decode_set(&key, &value).map(Some),
        None => Ok(None),
    }
}

pub(super) fn pinned_sets(shared: &Shared) -> Result<Vec<PinnedSet>, LogError> {
    shared
        .tree
        .scan_prefix([codec::PREFIX_PIN])
        .map(|item| {
            let (key, value) = item.map_err(storage)?;
            decode_set(&key, &value)
        })
        .collect()
}

/// Reads list positions `from .. from + limit`, decoding only the parts they fall in. A set
/// unpinned meanwhile ends the read early (its parts are gone); callers that must have
/// every event compare with the count they were told.
pub(super) fn read_pinned(
    shared: &Shared,
    name: &str,
    from: u64,
    limit: usize,
) -> Result<Vec<Arc<Event>>, LogError> {
    let per_part = codec::PIN_PART_SEQS as u64;
    let mut part = from / per_part;
    let mut skip = (from % per_part) as usize;
    let mut reader = ChunkReader::new(shared);
    let mut events = Vec::with_capacity(limit.min(codec::PIN_PART_SEQS));
    while events.len() < limit {
        let Ok(part_number) = u32::try_from(part) else {
            break;
        };
        let Some(bytes) = shared
            .tree
            .get(codec::pin_part_key(name, part_number))
            .map_err(storage)?
        else {
            break;
        };
        for seq in codec::decode_pin_part(&bytes)?.into_iter().skip(skip) {
            if events.len() == limit {
                break;
            }
            match reader.event(seq)? {
                Some(event) => events.push(event),
                // Only an unpin running beside this read can take a pinned event away.
                None if pinned(shared, name)?.is_none() => return Ok(events),
                None => return Err(LogError::Corrupt(format!("pinned seq {seq} has no event"))),
            }
        }
        skip = 0;
        part += 1;
    }
    Ok(events)
}
