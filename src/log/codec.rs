//! The bytes of the sled store: key builders and the value codecs. Pure functions, no IO;
//! `storage-format.md` is the specification and these tests pin it.
//!
//! The log is stored in *chunks*: one sled value holds up to `MAX_CHUNK_EVENTS` events with
//! contiguous seqs, written by one group commit. Each channel has one index entry per chunk
//! it appears in, listing its seqs. So a group of a thousand events costs a handful of sled
//! writes, not two per event, and a channel's range is read by walking a few index entries.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::LogError;
use crate::event::{Channel, Event};

/// Version of the on-disk layout, stored under `meta/format_version`.
pub const FORMAT_VERSION: u32 = 1;

/// First byte of every chunk value: the chunk layout version.
pub const CHUNK_V1: u8 = 1;
/// Most events one chunk holds; bounds the bytes decoded to reach one event.
pub const MAX_CHUNK_EVENTS: usize = 512;
/// A chunk is closed once its records pass this size, whatever their number.
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;

pub const PREFIX_CHUNK: u8 = b'e';
pub const PREFIX_CHANNEL_INDEX: u8 = b'c';
pub const PREFIX_CHANNEL_META: u8 = b'n';
pub const PREFIX_CHUNK_REFS: u8 = b'r';
pub const PREFIX_IDEMPOTENCY: u8 = b'i';
pub const PREFIX_IDEMPOTENCY_GROUP: u8 = b'j';
/// The single key holding the highest seq ever removed by retention.
pub const KEY_REMOVED_UPTO: &[u8] = b"g";

fn prefixed_seq(prefix: u8, seq: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = prefix;
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn seq_suffix(key: &[u8]) -> Result<u64, LogError> {
    if key.len() < 9 {
        return Err(LogError::Corrupt(format!("key too short: {key:?}")));
    }
    Ok(u64::from_be_bytes(
        key[key.len() - 8..].try_into().expect("8 bytes"),
    ))
}

/// `e` + first seq of the chunk.
pub fn chunk_key(first_seq: u64) -> [u8; 9] {
    prefixed_seq(PREFIX_CHUNK, first_seq)
}

/// `r` + first seq of the chunk: how many channel index entries still point into it.
pub fn chunk_refs_key(first_seq: u64) -> [u8; 9] {
    prefixed_seq(PREFIX_CHUNK_REFS, first_seq)
}

pub fn seq_from_key(key: &[u8]) -> Result<u64, LogError> {
    seq_suffix(key)
}

/// `c` + channel + NUL: every index key of the channel starts with it. Channels never hold a
/// NUL, so no channel's prefix is a prefix of another's keys.
pub fn channel_index_prefix(channel: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(channel.len() + 10);
    key.push(PREFIX_CHANNEL_INDEX);
    key.extend_from_slice(channel.as_bytes());
    key.push(0);
    key
}

/// `c` + channel + NUL + the first seq listed in the entry.
pub fn channel_index_key(channel: &str, first_seq: u64) -> Vec<u8> {
    let mut key = channel_index_prefix(channel);
    key.extend_from_slice(&first_seq.to_be_bytes());
    key
}

/// An index entry: the seqs of one channel within one chunk, ascending. Stored as bincode
/// varints: the count, then each seq as the difference from the one before (the first from
/// the seq in the key, so it is 0).
pub fn encode_index_entry(seqs: &[u64]) -> Vec<u8> {
    let mut deltas = Vec::with_capacity(seqs.len());
    let mut previous = seqs.first().copied().unwrap_or(0);
    for seq in seqs {
        deltas.push(seq - previous);
        previous = *seq;
    }
    bincode::serde::encode_to_vec(&deltas, bincode::config::standard()).expect("encode to Vec")
}

pub fn decode_index_entry(key_seq: u64, bytes: &[u8]) -> Result<Vec<u64>, LogError> {
    let (deltas, _): (Vec<u64>, usize) =
        bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map_err(|e| LogError::Corrupt(format!("index entry at {key_seq}: {e}")))?;
    let mut seq = key_seq;
    Ok(deltas
        .into_iter()
        .map(|delta| {
            seq += delta;
            seq
        })
        .collect())
}

pub fn channel_meta_key(channel: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(channel.len() + 1);
    key.push(PREFIX_CHANNEL_META);
    key.extend_from_slice(channel.as_bytes());
    key
}

/// Per-channel bookkeeping stored under `n` + channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelMeta {
    pub retained: u64,
    pub removed_upto: u64,
}

impl ChannelMeta {
    pub fn encode(&self) -> [u8; 16] {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&self.retained.to_be_bytes());
        v[8..].copy_from_slice(&self.removed_upto.to_be_bytes());
        v
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, LogError> {
        if bytes.len() != 16 {
            return Err(LogError::Corrupt("channel meta is not 16 bytes".into()));
        }
        Ok(Self {
            retained: u64::from_be_bytes(bytes[..8].try_into().expect("8")),
            removed_upto: u64::from_be_bytes(bytes[8..].try_into().expect("8")),
        })
    }
}

pub fn idempotency_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(PREFIX_IDEMPOTENCY);
    k.extend_from_slice(key.as_bytes());
    k
}

/// `j` + first seq of a commit group: the idempotency keys that group stored, so that they
/// can be pruned in seq order.
pub fn idempotency_group_key(first_seq: u64) -> [u8; 9] {
    prefixed_seq(PREFIX_IDEMPOTENCY_GROUP, first_seq)
}

/// `i` values: the original seq and its append time.
pub fn encode_idempotency_value(seq: u64, ts_ms: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    v[8..].copy_from_slice(&ts_ms.to_be_bytes());
    v
}

pub fn decode_idempotency_value(bytes: &[u8]) -> Result<(u64, u64), LogError> {
    if bytes.len() != 16 {
        return Err(LogError::Corrupt(
            "idempotency value is not 16 bytes".into(),
        ));
    }
    Ok((
        u64::from_be_bytes(bytes[..8].try_into().expect("8")),
        u64::from_be_bytes(bytes[8..].try_into().expect("8")),
    ))
}

/// `j` values: the group's append time, then its keys (bincode `(u64, Vec<String>)`).
pub fn encode_idempotency_group(ts_ms: u64, keys: &[String]) -> Vec<u8> {
    bincode::serde::encode_to_vec((ts_ms, keys), bincode::config::standard())
        .expect("encode to Vec")
}

pub fn decode_idempotency_group(bytes: &[u8]) -> Result<(u64, Vec<String>), LogError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| LogError::Corrupt(format!("idempotency group: {e}")))
}

pub fn encode_u64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub fn decode_u64(bytes: &[u8]) -> Result<u64, LogError> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| LogError::Corrupt("expected an 8-byte big-endian integer".into()))
}

/// One event inside a chunk. bincode 2 `standard()`: little-endian varint integers, strings
/// and sequences prefixed by a varint length. The seq is not stored: it is the chunk's
/// first seq plus the record's position.
#[derive(Serialize, Deserialize)]
struct RecordV1<'a> {
    ts_ms: u64,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    channels: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    data: Cow<'a, str>,
}

/// Builds a chunk value: version, count (u32 BE), one u32 BE end offset per record
/// (relative to the start of the records), then the records.
#[derive(Default)]
pub struct ChunkBuilder {
    ends: Vec<u32>,
    records: Vec<u8>,
}

impl ChunkBuilder {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.ends.len() >= MAX_CHUNK_EVENTS || self.records.len() >= MAX_CHUNK_BYTES
    }

    pub fn push(&mut self, event: &Event) {
        let record = RecordV1 {
            ts_ms: event.ts_ms,
            id: Cow::Borrowed(&event.id),
            event_type: Cow::Borrowed(&event.event_type),
            channels: event
                .channels
                .iter()
                .map(|c| Cow::Borrowed(c.as_str()))
                .collect(),
            data: Cow::Borrowed(event.data.get()),
        };
        bincode::serde::encode_into_std_write(
            &record,
            &mut self.records,
            bincode::config::standard(),
        )
        .expect("writing to a Vec cannot fail");
        self.ends.push(self.records.len() as u32);
    }

    /// The chunk bytes; the builder is left empty for the next chunk.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + 4 * self.ends.len() + self.records.len());
        out.push(CHUNK_V1);
        out.extend_from_slice(&(self.ends.len() as u32).to_be_bytes());
        for end in &self.ends {
            out.extend_from_slice(&end.to_be_bytes());
        }
        out.extend_from_slice(&self.records);
        self.ends.clear();
        self.records.clear();
        out
    }
}

/// A read-only view of a chunk value.
pub struct ChunkView<'a> {
    pub first_seq: u64,
    count: usize,
    bytes: &'a [u8],
}

impl<'a> ChunkView<'a> {
    pub fn parse(first_seq: u64, bytes: &'a [u8]) -> Result<Self, LogError> {
        let corrupt = |what: &str| LogError::Corrupt(format!("chunk {first_seq}: {what}"));
        match bytes.first() {
            Some(&CHUNK_V1) => {}
            Some(v) => return Err(corrupt(&format!("unknown chunk version {v}"))),
            None => return Err(corrupt("empty")),
        }
        let count = u32::from_be_bytes(
            bytes
                .get(1..5)
                .ok_or_else(|| corrupt("truncated header"))?
                .try_into()
                .expect("4"),
        ) as usize;
        if bytes.len() < 5 + 4 * count {
            return Err(corrupt("truncated offsets"));
        }
        Ok(Self {
            first_seq,
            count,
            bytes,
        })
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.count as u64 - 1
    }

    pub fn contains(&self, seq: u64) -> bool {
        seq >= self.first_seq && seq < self.first_seq + self.count as u64
    }

    fn end(&self, index: usize) -> usize {
        let at = 5 + 4 * index;
        u32::from_be_bytes(self.bytes[at..at + 4].try_into().expect("4")) as usize
    }

    fn record(&self, index: usize) -> Result<&'a [u8], LogError> {
        let base = 5 + 4 * self.count;
        let start = if index == 0 { 0 } else { self.end(index - 1) };
        let end = self.end(index);
        self.bytes.get(base + start..base + end).ok_or_else(|| {
            LogError::Corrupt(format!(
                "chunk {}: record {index} out of bounds",
                self.first_seq
            ))
        })
    }

    pub fn event(&self, seq: u64) -> Result<Event, LogError> {
        self.event_cached(seq, &mut DecodeCache::default())
    }

    /// As `event`, reusing what `cache` already made for earlier events of a read.
    pub fn event_cached(&self, seq: u64, cache: &mut DecodeCache) -> Result<Event, LogError> {
        let index = (seq - self.first_seq) as usize;
        decode_record(seq, self.record(index)?, cache)
    }

    /// Only the timestamp of an event (retention by age needs no more).
    pub fn ts_ms(&self, seq: u64) -> Result<u64, LogError> {
        let index = (seq - self.first_seq) as usize;
        let (ts, _): (u64, usize) =
            bincode::serde::decode_from_slice(self.record(index)?, bincode::config::standard())
                .map_err(|e| LogError::Corrupt(format!("event {seq}: {e}")))?;
        Ok(ts)
    }
}

/// What consecutive events of one read share: a commit group stamps one `ts` on all its
/// events, and a read mostly sees a few channels. Reusing them saves a timestamp format and
/// a channel-name check per event on long reads (exports, catch-up).
#[derive(Default)]
pub struct DecodeCache {
    ts: Option<(u64, String)>,
    channels: std::collections::HashMap<String, Channel>,
}

/// Channel names remembered per read at most: bounds the cache on reads across many channels.
const MAX_CACHED_CHANNELS: usize = 1024;

impl DecodeCache {
    fn ts(&mut self, ts_ms: u64) -> (u64, String) {
        match &self.ts {
            Some((cached, text)) if *cached == ts_ms => (ts_ms, text.clone()),
            _ => {
                let text = crate::event::format_ts(ts_ms);
                self.ts = Some((ts_ms, text.clone()));
                (ts_ms, text)
            }
        }
    }

    fn channel(&mut self, name: &str) -> Result<Channel, crate::event::InvalidChannel> {
        if let Some(channel) = self.channels.get(name) {
            return Ok(channel.clone());
        }
        let channel = Channel::parse(name)?;
        if self.channels.len() < MAX_CACHED_CHANNELS {
            self.channels.insert(name.to_string(), channel.clone());
        }
        Ok(channel)
    }
}

fn decode_record(seq: u64, bytes: &[u8], cache: &mut DecodeCache) -> Result<Event, LogError> {
    let corrupt = |what: String| LogError::Corrupt(format!("event {seq}: {what}"));
    let (record, _): (RecordV1, usize) =
        bincode::serde::borrow_decode_from_slice(bytes, bincode::config::standard())
            .map_err(|e| corrupt(e.to_string()))?;
    let channels = record
        .channels
        .iter()
        .map(|c| cache.channel(c).map_err(|e| corrupt(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let data = RawValue::from_string(record.data.into_owned())
        .map_err(|e| corrupt(format!("data is not JSON: {e}")))?;
    Ok(Event::with_ts(
        seq,
        record.id.into_owned(),
        channels,
        record.event_type.into_owned(),
        cache.ts(record.ts_ms),
        data,
    ))
}

/// `p` + set name: the header of a pinned set (below).
pub const PREFIX_PIN: u8 = b'p';
/// `q` + set name + NUL + `u32be` part number: one part of a pinned set's seq list.
pub const PREFIX_PIN_PART: u8 = b'q';
/// Seqs per part of a pinned list: a part is a few KiB, and reading from a position
/// decodes one part, never the whole list.
pub const PIN_PART_SEQS: usize = 4096;
/// First byte of a pin header: its layout version.
pub const PIN_V1: u8 = 1;

pub fn pin_key(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 1);
    key.push(PREFIX_PIN);
    key.extend_from_slice(name.as_bytes());
    key
}

/// `q` + name + NUL: every part key of the set starts with it. Set names never hold a NUL.
pub fn pin_part_prefix(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 6);
    key.push(PREFIX_PIN_PART);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key
}

pub fn pin_part_key(name: &str, part: u32) -> Vec<u8> {
    let mut key = pin_part_prefix(name);
    key.extend_from_slice(&part.to_be_bytes());
    key
}

/// A pin header: `0x01`, `u64be` number of seqs, then the owner's metadata, opaque here.
pub fn encode_pin_header(count: u64, meta: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + meta.len());
    v.push(PIN_V1);
    v.extend_from_slice(&count.to_be_bytes());
    v.extend_from_slice(meta);
    v
}

pub fn decode_pin_header(bytes: &[u8]) -> Result<(u64, &[u8]), LogError> {
    if bytes.len() < 9 || bytes[0] != PIN_V1 {
        return Err(LogError::Corrupt(
            "pin header: bad version or length".into(),
        ));
    }
    let count = u64::from_be_bytes(bytes[1..9].try_into().expect("8 bytes"));
    Ok((count, &bytes[9..]))
}

/// A part of a pinned list: ascending seqs as a bincode `Vec<u64>` of deltas, the first
/// from 0 (so it is the seq itself) — the index-entry encoding with a key seq of 0.
pub fn encode_pin_part(seqs: &[u64]) -> Vec<u8> {
    let mut deltas = Vec::with_capacity(seqs.len());
    let mut previous = 0;
    for seq in seqs {
        deltas.push(seq - previous);
        previous = *seq;
    }
    bincode::serde::encode_to_vec(&deltas, bincode::config::standard()).expect("encode to Vec")
}

pub fn decode_pin_part(bytes: &[u8]) -> Result<Vec<u64>, LogError> {
    decode_index_entry(0, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64, data: &str) -> Event {
        Event::new(
            seq,
            "k1".into(),
            vec![
                Channel::parse("arena/a1").unwrap(),
                Channel::parse("competition/c7").unwrap(),
            ],
            "competition_round".into(),
            1_700_000_000_123,
            RawValue::from_string(data.into()).unwrap(),
        )
    }

    #[test]
    fn chunk_round_trips() {
        let mut builder = ChunkBuilder::default();
        builder.push(&sample(7, r#"{"round":3}"#));
        builder.push(&sample(8, r#"{"round":4}"#));
        let bytes = builder.finish();
        assert!(builder.is_empty());
        let view = ChunkView::parse(7, &bytes).unwrap();
        assert_eq!((view.count(), view.last_seq()), (2, 8));
        let back = view.event(8).unwrap();
        assert_eq!(back.seq, 8);
        assert_eq!(back.id, "k1");
        assert_eq!(back.channels.len(), 2);
        assert_eq!(back.event_type, "competition_round");
        assert_eq!(back.data.get(), r#"{"round":4}"#);
        assert_eq!(view.ts_ms(7).unwrap(), 1_700_000_000_123);
    }

    #[test]
    fn chunk_bytes_are_the_documented_layout() {
        let mut builder = ChunkBuilder::default();
        builder.push(&sample(1, "{}"));
        let bytes = builder.finish();
        assert_eq!(bytes[0], CHUNK_V1);
        assert_eq!(&bytes[1..5], &1u32.to_be_bytes());
        let end = u32::from_be_bytes(bytes[5..9].try_into().unwrap()) as usize;
        assert_eq!(bytes.len(), 9 + end);
        // The record: ts_ms as a bincode varint (0xFD then 8 little-endian bytes), then the
        // id as length 2 and its bytes.
        assert_eq!(bytes[9], 0xFD);
        assert_eq!(&bytes[10..18], &1_700_000_000_123u64.to_le_bytes());
        assert_eq!(&bytes[18..21], b"\x02k1");
    }

    #[test]
    fn index_entries_are_delta_varints() {
        let bytes = encode_index_entry(&[100, 101, 105, 400]);
        assert_eq!(bytes, vec![4, 0, 1, 4, 251, 39, 1]);
        assert_eq!(
            decode_index_entry(100, &bytes).unwrap(),
            vec![100, 101, 105, 400]
        );
    }

    #[test]
    fn corrupt_values_are_errors_not_panics() {
        assert!(ChunkView::parse(1, &[]).is_err());
        assert!(ChunkView::parse(1, &[9, 0, 0, 0, 1]).is_err());
        assert!(ChunkView::parse(1, &[CHUNK_V1, 0, 0, 0, 9, 1]).is_err());
        let view = ChunkView::parse(1, &[CHUNK_V1, 0, 0, 0, 1, 0, 0, 0, 9]).unwrap();
        assert!(view.event(1).is_err());
        assert!(decode_index_entry(1, &[5, 1]).is_err());
    }

    #[test]
    fn keys_sort_by_seq_within_a_channel() {
        let a = channel_index_key("arena/a", 255);
        let b = channel_index_key("arena/a", 256);
        let other = channel_index_key("arena/a1", 1);
        assert!(a < b);
        assert!(!other.starts_with(&channel_index_prefix("arena/a")));
        assert_eq!(seq_from_key(&b).unwrap(), 256);
        assert_eq!(seq_from_key(&chunk_key(42)).unwrap(), 42);
    }

    #[test]
    fn pin_bytes() {
        assert_eq!(pin_key("d1"), b"pd1");
        assert_eq!(pin_part_key("d1", 2), b"qd1\x00\x00\x00\x00\x02");
        assert_eq!(
            encode_pin_header(3, b"{}"),
            [1, 0, 0, 0, 0, 0, 0, 0, 3, b'{', b'}']
        );
        assert_eq!(
            decode_pin_header(&encode_pin_header(3, b"{}")).unwrap(),
            (3, &b"{}"[..])
        );
        // 100, 101, 105, 400: absolute first, then deltas.
        let part = encode_pin_part(&[100, 101, 105, 400]);
        assert_eq!(part, [4, 100, 1, 4, 0xFB, 0x27, 0x01]);
        assert_eq!(decode_pin_part(&part).unwrap(), vec![100, 101, 105, 400]);
    }
}
