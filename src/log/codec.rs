//! The bytes of the sled store: key builders and the event record codec. Pure functions,
//! no IO; `storage-format.md` is the specification and these tests pin it.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::LogError;
use crate::event::{Channel, Event};

/// Version of the on-disk layout, stored under `meta/format_version`.
pub const FORMAT_VERSION: u32 = 1;

/// First byte of every event record value: the record layout version.
pub const RECORD_V1: u8 = 1;

pub const PREFIX_EVENT: u8 = b'e';
pub const PREFIX_CHANNEL_INDEX: u8 = b'c';
pub const PREFIX_CHANNEL_META: u8 = b'n';
pub const PREFIX_IDEMPOTENCY: u8 = b'i';
pub const PREFIX_IDEMPOTENCY_ORDER: u8 = b'j';
/// The single key holding the highest seq ever removed by retention.
pub const KEY_REMOVED_UPTO: &[u8] = b"g";

pub fn event_key(seq: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = PREFIX_EVENT;
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

pub fn seq_from_event_key(key: &[u8]) -> Result<u64, LogError> {
    match key {
        [PREFIX_EVENT, rest @ ..] if rest.len() == 8 => {
            Ok(u64::from_be_bytes(rest.try_into().expect("8 bytes")))
        }
        _ => Err(LogError::Corrupt(format!("bad event key {key:?}"))),
    }
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

pub fn channel_index_key(channel: &str, seq: u64) -> Vec<u8> {
    let mut key = channel_index_prefix(channel);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub fn seq_from_index_key(key: &[u8]) -> Result<u64, LogError> {
    if key.len() < 10 {
        return Err(LogError::Corrupt(format!("bad index key {key:?}")));
    }
    Ok(u64::from_be_bytes(
        key[key.len() - 8..].try_into().expect("8 bytes"),
    ))
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

pub fn idempotency_order_key(seq: u64) -> [u8; 9] {
    let mut key = event_key(seq);
    key[0] = PREFIX_IDEMPOTENCY_ORDER;
    key
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

pub fn encode_u64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub fn decode_u64(bytes: &[u8]) -> Result<u64, LogError> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| LogError::Corrupt("expected an 8-byte big-endian integer".into()))
}

/// The record body after the version byte, in field order. bincode 2 `standard()`:
/// little-endian varint integers, strings and sequences prefixed by a varint length.
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

pub fn encode_record(event: &Event) -> Vec<u8> {
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
    let mut out = Vec::with_capacity(64 + event.data.get().len());
    out.push(RECORD_V1);
    bincode::serde::encode_into_std_write(&record, &mut out, bincode::config::standard())
        .expect("writing to a Vec cannot fail");
    out
}

pub fn decode_record(seq: u64, bytes: &[u8]) -> Result<Event, LogError> {
    let corrupt = |what: String| LogError::Corrupt(format!("event {seq}: {what}"));
    let (version, body) = bytes
        .split_first()
        .ok_or_else(|| corrupt("empty record".into()))?;
    if *version != RECORD_V1 {
        return Err(corrupt(format!("unknown record version {version}")));
    }
    let (record, _): (RecordV1, usize) =
        bincode::serde::borrow_decode_from_slice(body, bincode::config::standard())
            .map_err(|e| corrupt(e.to_string()))?;
    let channels = record
        .channels
        .iter()
        .map(|c| Channel::parse(c).map_err(|e| corrupt(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let data = RawValue::from_string(record.data.into_owned())
        .map_err(|e| corrupt(format!("data is not JSON: {e}")))?;
    Ok(Event::new(
        seq,
        record.id.into_owned(),
        channels,
        record.event_type.into_owned(),
        record.ts_ms,
        data,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event::new(
            7,
            "k1".into(),
            vec![
                Channel::parse("arena/a1").unwrap(),
                Channel::parse("competition/c7").unwrap(),
            ],
            "competition_round".into(),
            1_700_000_000_123,
            RawValue::from_string(r#"{"round":3}"#.into()).unwrap(),
        )
    }

    #[test]
    fn record_round_trips() {
        let event = sample();
        let bytes = encode_record(&event);
        let back = decode_record(7, &bytes).unwrap();
        assert_eq!(back.id, "k1");
        assert_eq!(back.channels, event.channels);
        assert_eq!(back.event_type, "competition_round");
        assert_eq!(back.ts_ms, event.ts_ms);
        assert_eq!(back.data.get(), r#"{"round":3}"#);
    }

    #[test]
    fn record_bytes_are_the_documented_layout() {
        let bytes = encode_record(&sample());
        // version, then ts_ms as a bincode varint: 0xFD marks a u64 in 8 little-endian bytes.
        assert_eq!(bytes[0], RECORD_V1);
        assert_eq!(bytes[1], 0xFD);
        assert_eq!(&bytes[2..10], &1_700_000_000_123u64.to_le_bytes());
        // id: length 2 then the bytes.
        assert_eq!(&bytes[10..13], b"\x02k1");
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        assert!(decode_record(1, &[]).is_err());
        assert!(decode_record(1, &[9, 1, 2]).is_err());
        assert!(decode_record(1, &[RECORD_V1, 0xFF]).is_err());
    }

    #[test]
    fn keys_sort_by_seq_within_a_channel() {
        let a = channel_index_key("arena/a", 255);
        let b = channel_index_key("arena/a", 256);
        let other = channel_index_key("arena/a1", 1);
        assert!(a < b);
        assert!(!other.starts_with(&channel_index_prefix("arena/a")));
        assert_eq!(seq_from_index_key(&b).unwrap(), 256);
        assert_eq!(seq_from_event_key(&event_key(42)).unwrap(), 42);
    }
}
