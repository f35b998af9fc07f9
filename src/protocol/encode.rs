//! Message bytes of `event`, `delta`, `batch` and control messages, in JSON and
//! MessagePack. Uncompressed: `Wire::finish` decides about gzip.
//!
//! MessagePack messages are maps with the same field names and values as the JSON ones.

use std::io::Write;

use serde::Serialize;
use serde_json::Value;

use super::{delta::Diff, Format, ServerMessage};
use crate::event::Event;

/// The `event` message, MessagePack side: serde writes the map in field order.
#[derive(Serialize)]
struct EventMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    seq: u64,
    channel: &'a str,
    event_type: &'a str,
    ts: &'a str,
    data: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    replay: Option<&'a Value>,
}

#[derive(Serialize)]
struct DeltaMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    seq: u64,
    channel: &'a str,
    event_type: &'a str,
    ts: &'a str,
    base: u64,
    set: &'a serde_json::Map<String, Value>,
    unset: &'a [String],
}

/// `{"type":"event","seq","channel","event_type","ts","data"[,"replay"]}`.
pub(super) fn event_message(
    event: &Event,
    channel_index: usize,
    format: Format,
    replay: Option<&Value>,
) -> Vec<u8> {
    match format {
        Format::Json => event_json(event, channel_index, replay),
        Format::MsgPack => msgpack(&EventMessage {
            kind: "event",
            seq: event.seq,
            channel: event.channels[channel_index].as_str(),
            event_type: &event.event_type,
            ts: &event.ts,
            data: event.data_value(),
            replay,
        }),
    }
}

/// The JSON `event` message, written by hand: it is the hot path, and `data` is already
/// compact JSON text that only needs to be copied.
fn event_json(event: &Event, channel_index: usize, replay: Option<&Value>) -> Vec<u8> {
    let data = event.data.get();
    let mut out = Vec::with_capacity(112 + data.len() + event.event_type.len());
    out.extend_from_slice(b"{\"type\":\"event\",\"seq\":");
    write!(out, "{}", event.seq).expect("vec write");
    out.extend_from_slice(b",\"channel\":");
    // Channel names are plain ASCII without quotes or backslashes.
    out.push(b'"');
    out.extend_from_slice(event.channels[channel_index].as_str().as_bytes());
    out.extend_from_slice(b"\",\"event_type\":");
    serde_json::to_writer(&mut out, &event.event_type).expect("vec write");
    out.extend_from_slice(b",\"ts\":\"");
    out.extend_from_slice(event.ts.as_bytes());
    out.extend_from_slice(b"\",\"data\":");
    out.extend_from_slice(data.as_bytes());
    if let Some(tag) = replay {
        out.extend_from_slice(b",\"replay\":");
        serde_json::to_writer(&mut out, tag).expect("vec write");
    }
    out.push(b'}');
    out
}

/// `{"type":"delta","seq","channel","event_type","ts","base","set","unset"}`.
pub(super) fn delta_message(
    event: &Event,
    channel_index: usize,
    base: u64,
    diff: &Diff,
    format: Format,
) -> Vec<u8> {
    let message = DeltaMessage {
        kind: "delta",
        seq: event.seq,
        channel: event.channels[channel_index].as_str(),
        event_type: &event.event_type,
        ts: &event.ts,
        base,
        set: &diff.set,
        unset: &diff.unset,
    };
    match format {
        Format::Json => serde_json::to_vec(&message).expect("deltas always serialize"),
        Format::MsgPack => msgpack(&message),
    }
}

/// `{"type":"batch","messages":[..]}` around messages already encoded in `format`.
pub(super) fn batch_message(parts: &[bytes::Bytes], format: Format) -> Vec<u8> {
    let size: usize = parts.iter().map(|p| p.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 32);
    match format {
        Format::Json => {
            out.extend_from_slice(b"{\"type\":\"batch\",\"messages\":[");
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(part);
            }
            out.extend_from_slice(b"]}");
        }
        Format::MsgPack => {
            // fixmap(2) "type" "batch" "messages" array(n) then the messages as they are.
            out.push(0x82);
            out.extend_from_slice(b"\xa4type\xa5batch\xa8messages");
            let n = parts.len();
            if n < 16 {
                out.push(0x90 | n as u8);
            } else if n <= u16::MAX as usize {
                out.push(0xdc);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            } else {
                out.push(0xdd);
                out.extend_from_slice(&(n as u32).to_be_bytes());
            }
            for part in parts {
                out.extend_from_slice(part);
            }
        }
    }
    out
}

pub(super) fn control_message(message: &ServerMessage<'_>, format: Format) -> Vec<u8> {
    match format {
        Format::Json => serde_json::to_vec(message).expect("server messages always serialize"),
        Format::MsgPack => msgpack(message),
    }
}

fn msgpack<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("server messages always serialize")
}

#[cfg(test)]
mod tests {
    use serde_json::{json, value::RawValue};

    use super::*;
    use crate::event::Channel;

    fn event() -> Event {
        Event::new(
            12,
            "k".into(),
            vec![
                Channel::parse("arena/a1").unwrap(),
                Channel::parse("agent/x").unwrap(),
            ],
            "say \"hi\"".into(),
            1_700_000_000_000,
            RawValue::from_string(r#"{"a":[1,2],"f":1.5,"n":null}"#.into()).unwrap(),
        )
    }

    fn expected() -> Value {
        json!({"type":"event","seq":12,"channel":"agent/x","event_type":"say \"hi\"",
               "ts":"2023-11-14T22:13:20.000Z","data":{"a":[1,2],"f":1.5,"n":null}})
    }

    #[test]
    fn event_json_is_valid_and_complete() {
        let bytes = event_message(&event(), 1, Format::Json, None);
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), expected());
    }

    #[test]
    fn event_msgpack_has_the_same_fields_and_type_first() {
        let bytes = event_message(&event(), 1, Format::MsgPack, None);
        let value: Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(value, expected());
        assert_eq!(&bytes[..6], b"\x86\xa4type", "a map of 6, `type` first");
    }

    #[test]
    fn replayed_event_carries_its_replay_tag() {
        for format in [Format::Json, Format::MsgPack] {
            let bytes = event_message(&event(), 0, format, Some(&json!("r5")));
            let v: Value = match format {
                Format::Json => serde_json::from_slice(&bytes).unwrap(),
                Format::MsgPack => rmp_serde::from_slice(&bytes).unwrap(),
            };
            assert_eq!(v["replay"], "r5");
            assert_eq!(v["seq"], 12);
        }
    }

    #[test]
    fn batches_wrap_their_messages_in_order() {
        let e = event();
        for n in [0usize, 1, 15, 16, 300] {
            for format in [Format::Json, Format::MsgPack] {
                let parts: Vec<bytes::Bytes> = (0..n)
                    .map(|i| event_message(&e, i % 2, format, None).into())
                    .collect();
                let bytes = batch_message(&parts, format);
                let v: Value = match format {
                    Format::Json => serde_json::from_slice(&bytes).unwrap(),
                    Format::MsgPack => rmp_serde::from_slice(&bytes).unwrap(),
                };
                assert_eq!(v["type"], "batch");
                let messages = v["messages"].as_array().unwrap();
                assert_eq!(messages.len(), n);
                if n > 1 {
                    assert_eq!(messages[1], expected());
                }
            }
        }
    }

    #[test]
    fn control_messages_put_type_first_in_both_formats() {
        let message = ServerMessage::Pong {
            id: Some(&json!("r4")),
        };
        let json_bytes = control_message(&message, Format::Json);
        assert_eq!(json_bytes, br#"{"type":"pong","id":"r4"}"#);
        let mp: Value = rmp_serde::from_slice(&control_message(&message, Format::MsgPack)).unwrap();
        assert_eq!(mp, json!({"type":"pong","id":"r4"}));
    }
}
