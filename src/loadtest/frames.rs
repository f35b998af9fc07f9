//! Client-side decoding of server WebSocket frames in every mode the server may use
//! (CONTRACT §5): JSON text frames, MessagePack binary frames, gzip binary frames of either,
//! `batch` messages and `delta` messages (rebuilt against the base they name). Pure: bytes
//! in, messages out, no sockets. The only code of the load tool that touches rmp-serde and
//! flate2.

use std::{
    collections::{HashMap, VecDeque},
    io::Read,
};

use serde::Deserialize;
use serde_json::{Map, Value};

/// What a connection asked the server to send: its `format`, `compress` and `delta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub msgpack: bool,
    pub gzip: bool,
    pub delta: bool,
}

impl Mode {
    pub const JSON: Mode = Mode {
        msgpack: false,
        gzip: false,
        delta: false,
    };

    /// `json`, `msgpack`, optionally followed by `+gzip` and/or `+delta`.
    pub fn parse(name: &str) -> Result<Mode, String> {
        let mut parts = name.split('+');
        let msgpack = match parts.next() {
            Some("json") => false,
            Some("msgpack") => true,
            _ => return Err(format!("mode `{name}` must start with json or msgpack")),
        };
        let mut mode = Mode {
            msgpack,
            ..Mode::JSON
        };
        for part in parts {
            match part {
                "gzip" => mode.gzip = true,
                "delta" => mode.delta = true,
                other => return Err(format!("mode `{name}`: unknown part `{other}`")),
            }
        }
        Ok(mode)
    }

    pub fn name(&self) -> String {
        let mut name = String::from(if self.msgpack { "msgpack" } else { "json" });
        if self.gzip {
            name.push_str("+gzip");
        }
        if self.delta {
            name.push_str("+delta");
        }
        name
    }

    /// The WebSocket query parameters that ask for this mode (empty for plain JSON).
    pub fn query(&self) -> Vec<(&'static str, &'static str)> {
        let mut query = Vec::new();
        if self.msgpack {
            query.push(("format", "msgpack"));
        }
        if self.gzip {
            query.push(("compress", "gzip"));
        }
        if self.delta {
            query.push(("delta", "true"));
        }
        query
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("gzip frame: {0}")]
    Gzip(std::io::Error),
    #[error("JSON message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("MessagePack message: {0}")]
    MsgPack(#[from] rmp_serde::decode::Error),
    #[error("a binary frame that is neither gzip nor MessagePack on a JSON connection")]
    UnexpectedBinary,
    #[error("`{kind}` message without `{field}`")]
    MissingField { kind: String, field: &'static str },
    #[error("delta {seq} names base {base}, which this connection never received")]
    UnknownBase { seq: u64, base: u64 },
}

/// A server message as it travels: the union of the fields the load tool reads. `D` is
/// what `data` is read into: the whole object, or only the publisher's send time.
#[derive(Deserialize)]
#[serde(bound(deserialize = "D: Deserialize<'de>"))]
struct Wire<D> {
    #[serde(rename = "type")]
    kind: String,
    seq: Option<u64>,
    channel: Option<String>,
    event_type: Option<String>,
    data: Option<D>,
    base: Option<u64>,
    set: Option<Map<String, Value>>,
    unset: Option<Vec<String>>,
    messages: Option<Vec<Wire<D>>>,
    head: Option<u64>,
    epoch: Option<String>,
    reason: Option<String>,
    code: Option<String>,
    message: Option<String>,
}

/// One event delivered to the connection, its `data` rebuilt when it came as a delta.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    pub seq: u64,
    pub channel: String,
    pub event_type: String,
    /// Empty when the decoder is lean.
    pub data: Map<String, Value>,
    /// The `sent_us` field of `data` (the load tool's publishers put their clock there).
    pub sent_us: Option<u64>,
    pub was_delta: bool,
}

/// `data` read for its send time only, skipping the rest without building it: at a
/// million events a second, building every object would measure the tool, not the server.
#[derive(Deserialize)]
struct SendTime {
    sent_us: Option<u64>,
}

/// What a decoder takes from `data`.
trait Data {
    fn sent_us(&self) -> Option<u64>;
    fn into_map(self) -> Map<String, Value>;
}

impl Data for Map<String, Value> {
    fn sent_us(&self) -> Option<u64> {
        self.get("sent_us").and_then(Value::as_u64)
    }
    fn into_map(self) -> Map<String, Value> {
        self
    }
}

impl Data for SendTime {
    fn sent_us(&self) -> Option<u64> {
        self.sent_us
    }
    fn into_map(self) -> Map<String, Value> {
        Map::new()
    }
}

/// Any other server message, with the fields a client acts on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Control {
    pub kind: String,
    pub seq: Option<u64>,
    pub head: Option<u64>,
    pub epoch: Option<String>,
    pub reason: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Event(Delivered),
    Control(Control),
}

/// Delta bases kept per connection. The server names as base the last event it sent for
/// a key, so a rebuilt event replaces its base; this bound only matters for keys that
/// stopped changing.
const BASES_KEPT: usize = 65_536;

/// The `data` of recent events by seq, and their seqs oldest first.
#[derive(Default)]
struct Bases {
    by_seq: HashMap<u64, Map<String, Value>>,
    order: VecDeque<u64>,
}

/// Decodes the frames of one connection, in order.
pub struct Decoder {
    msgpack: bool,
    /// Read only seqs, channels and send times (never with deltas, which need the data).
    lean: bool,
    /// Only kept when the connection asked for deltas.
    bases: Option<Bases>,
}

impl Decoder {
    pub fn new(mode: Mode) -> Self {
        Self {
            msgpack: mode.msgpack,
            lean: false,
            bases: mode.delta.then(Default::default),
        }
    }

    /// A decoder that leaves `data` empty (but for `sent_us`) unless deltas need it.
    pub fn lean(mode: Mode) -> Self {
        Self {
            lean: !mode.delta,
            ..Self::new(mode)
        }
    }

    /// The messages of one data frame (a batch yields each message inside it).
    pub fn decode(&mut self, payload: &[u8], binary: bool) -> Result<Vec<Message>, FrameError> {
        let mut out = Vec::new();
        if self.lean {
            let wire: Wire<SendTime> = self.read(payload, binary)?;
            self.flatten(wire, &mut out)?;
        } else {
            let wire: Wire<Map<String, Value>> = self.read(payload, binary)?;
            self.flatten(wire, &mut out)?;
        }
        Ok(out)
    }

    fn read<D: serde::de::DeserializeOwned>(
        &self,
        payload: &[u8],
        binary: bool,
    ) -> Result<Wire<D>, FrameError> {
        Ok(if binary && payload.starts_with(&[0x1f, 0x8b]) {
            let mut plain = Vec::with_capacity(payload.len() * 4);
            flate2::read::GzDecoder::new(payload)
                .read_to_end(&mut plain)
                .map_err(FrameError::Gzip)?;
            self.parse(&plain)?
        } else if binary {
            if !self.msgpack {
                return Err(FrameError::UnexpectedBinary);
            }
            rmp_serde::from_slice(payload)?
        } else {
            serde_json::from_slice(payload)?
        })
    }

    fn parse<D: serde::de::DeserializeOwned>(&self, plain: &[u8]) -> Result<Wire<D>, FrameError> {
        // A gzip frame holds the connection's format; JSON always starts with `{`.
        if self.msgpack && plain.first() != Some(&b'{') {
            Ok(rmp_serde::from_slice(plain)?)
        } else {
            Ok(serde_json::from_slice(plain)?)
        }
    }

    fn flatten<D: Data>(
        &mut self,
        wire: Wire<D>,
        out: &mut Vec<Message>,
    ) -> Result<(), FrameError> {
        let missing = |kind: &str, field| FrameError::MissingField {
            kind: kind.to_string(),
            field,
        };
        match wire.kind.as_str() {
            "batch" => {
                for inner in wire.messages.ok_or_else(|| missing("batch", "messages"))? {
                    self.flatten(inner, out)?;
                }
            }
            "event" | "delta" => {
                let kind = wire.kind.as_str();
                let seq = wire.seq.ok_or_else(|| missing(kind, "seq"))?;
                let was_delta = kind == "delta";
                let lean_sent_us = wire.data.as_ref().and_then(Data::sent_us);
                let data = if was_delta {
                    let base = wire.base.ok_or_else(|| missing(kind, "base"))?;
                    self.rebuild(seq, base, wire.set, wire.unset)?
                } else {
                    wire.data.map(Data::into_map).unwrap_or_default()
                };
                let sent_us = if self.lean {
                    lean_sent_us
                } else {
                    data.sent_us()
                };
                self.keep_base(seq, &data);
                out.push(Message::Event(Delivered {
                    seq,
                    channel: wire.channel.ok_or_else(|| missing(kind, "channel"))?,
                    event_type: wire.event_type.unwrap_or_default(),
                    data,
                    sent_us,
                    was_delta,
                }));
            }
            _ => out.push(Message::Control(Control {
                kind: wire.kind,
                seq: wire.seq,
                head: wire.head,
                epoch: wire.epoch,
                reason: wire.reason,
                code: wire.code,
                message: wire.message,
            })),
        }
        Ok(())
    }

    fn rebuild(
        &mut self,
        seq: u64,
        base: u64,
        set: Option<Map<String, Value>>,
        unset: Option<Vec<String>>,
    ) -> Result<Map<String, Value>, FrameError> {
        let Some(bases) = self.bases.as_mut() else {
            return Err(FrameError::UnknownBase { seq, base });
        };
        let mut data = bases
            .by_seq
            .remove(&base)
            .ok_or(FrameError::UnknownBase { seq, base })?;
        for (field, value) in set.unwrap_or_default() {
            data.insert(field, value);
        }
        for field in unset.unwrap_or_default() {
            data.remove(&field);
        }
        Ok(data)
    }

    fn keep_base(&mut self, seq: u64, data: &Map<String, Value>) {
        let Some(bases) = self.bases.as_mut() else {
            return;
        };
        bases.by_seq.insert(seq, data.clone());
        bases.order.push_back(seq);
        while bases.order.len() > BASES_KEPT {
            if let Some(old) = bases.order.pop_front() {
                bases.by_seq.remove(&old);
            }
        }
    }
}

/// The events of a plain JSON `event` or `batch` frame from the server, as (seq, sent_us),
/// found by scanning for the server's `{"type":"event","seq":N,"channel":"C",` prefix
/// instead of parsing: at a million deliveries a second on the server's own machine, a
/// full parse in the tool would measure the tool. `None` (decode in full instead) for
/// anything else: another channel, deltas, control messages, another layout. The prefix
/// cannot occur inside a JSON string (its quotes would be escaped there), and the load
/// tool's event data holds no nested events.
pub fn scan_json_events(payload: &[u8], channel: &str) -> Option<Vec<(u64, Option<u64>)>> {
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    // Built once: building a searcher costs more than searching one frame.
    static EVENTS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(EVENT));
    static DELTAS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#"{"type":"delta""#));
    if payload.starts_with(EVENT) {
        return Some(vec![scan_event(payload, channel)?]);
    }
    if !payload.starts_with(br#"{"type":"batch","messages":["#) || DELTAS.find(payload).is_some() {
        return None;
    }
    let mut starts = EVENTS.find_iter(payload).peekable();
    starts.peek()?;
    let mut out = Vec::new();
    while let Some(start) = starts.next() {
        // Each event of the batch but the last is followed by `,`; the last by `]}`.
        let end = starts.peek().map_or(payload.len() - 2, |next| next - 1);
        out.push(scan_event(&payload[start..end], channel)?);
    }
    Some(out)
}

const EVENT: &[u8] = br#"{"type":"event","seq":"#;

/// (seq, sent_us) of one `event` message. `sent_us` is read backwards from its end when
/// it is the last field of `data` (the load tool's publishers put it there), searched for
/// otherwise.
fn scan_event(event: &[u8], channel: &str) -> Option<(u64, Option<u64>)> {
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    const SENT: &[u8] = br#""sent_us":"#;
    static SENTS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(SENT));
    let (seq, rest) = leading_number(event.strip_prefix(EVENT)?)?;
    let rest = rest.strip_prefix(br#","channel":""#)?;
    let rest = rest.strip_prefix(channel.as_bytes())?.strip_prefix(b"\"")?;
    let sent_us = match rest.strip_suffix(b"}}").and_then(trailing_number) {
        Some((n, before)) if before.ends_with(SENT) => Some(n),
        _ => SENTS
            .find(rest)
            .and_then(|at| leading_number(&rest[at + SENT.len()..]))
            .map(|(n, _)| n),
    };
    Some((seq, sent_us))
}

/// The decimal number that `bytes` end with, and what precedes it.
fn trailing_number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let (before, number) = bytes.split_at(bytes.len() - digits);
    Some((leading_number(number)?.0, before))
}

fn leading_number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let n = bytes[..digits]
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some((n, &bytes[digits..]))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use serde_json::json;

    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn msgpack(value: &Value) -> Vec<u8> {
        rmp_serde::to_vec_named(value).unwrap()
    }

    fn event(seq: u64, data: Value) -> Value {
        json!({"type": "event", "seq": seq, "channel": "arena/a1", "event_type": "agent_status",
               "ts": "2026-01-01T00:00:00.000Z", "data": data})
    }

    fn seqs(messages: &[Message]) -> Vec<u64> {
        messages
            .iter()
            .filter_map(|m| match m {
                Message::Event(e) => Some(e.seq),
                Message::Control(_) => None,
            })
            .collect()
    }

    #[test]
    fn modes_parse_and_name_themselves() {
        for name in [
            "json",
            "msgpack",
            "json+gzip",
            "msgpack+gzip+delta",
            "json+delta",
        ] {
            assert_eq!(Mode::parse(name).unwrap().name(), name);
        }
        assert_eq!(
            Mode::parse("msgpack+gzip+delta").unwrap().query(),
            [
                ("format", "msgpack"),
                ("compress", "gzip"),
                ("delta", "true")
            ]
        );
        assert!(Mode::parse("xml").is_err());
        assert!(Mode::parse("json+zstd").is_err());
    }

    #[test]
    fn every_encoding_of_the_same_event_decodes_alike() {
        let message = event(7, json!({"agent_id": "a1", "x": 1.5}));
        let text = message.to_string();
        let cases: [(Mode, Vec<u8>, bool); 4] = [
            (Mode::JSON, text.clone().into_bytes(), false),
            (
                Mode::parse("json+gzip").unwrap(),
                gzip(text.as_bytes()),
                true,
            ),
            (Mode::parse("msgpack").unwrap(), msgpack(&message), true),
            (
                Mode::parse("msgpack+gzip").unwrap(),
                gzip(&msgpack(&message)),
                true,
            ),
        ];
        for (mode, frame, binary) in cases {
            let decoded = Decoder::new(mode).decode(&frame, binary).unwrap();
            let [Message::Event(e)] = decoded.as_slice() else {
                panic!("{}: {decoded:?}", mode.name());
            };
            assert_eq!((e.seq, e.channel.as_str()), (7, "arena/a1"));
            assert_eq!(
                Value::Object(e.data.clone()),
                json!({"agent_id": "a1", "x": 1.5})
            );
        }
    }

    #[test]
    fn batches_count_each_message_and_deltas_rebuild_data() {
        let mode = Mode::parse("msgpack+gzip+delta").unwrap();
        let mut decoder = Decoder::new(mode);
        let first = event(10, json!({"agent_id": "a1", "hp": 9, "pos": 1}));
        let delta = json!({"type": "delta", "seq": 12, "channel": "arena/a1",
            "event_type": "agent_status", "base": 10, "set": {"hp": 8}, "unset": ["pos"]});
        let again = json!({"type": "delta", "seq": 15, "channel": "arena/a1",
            "event_type": "agent_status", "base": 12, "set": {"pos": 3}});
        let batch = json!({"type": "batch", "messages": [first, delta, again]});
        let decoded = decoder.decode(&gzip(&msgpack(&batch)), true).unwrap();
        assert_eq!(seqs(&decoded), [10, 12, 15]);
        let Message::Event(last) = &decoded[2] else {
            panic!()
        };
        assert!(last.was_delta);
        assert_eq!(
            Value::Object(last.data.clone()),
            json!({"agent_id": "a1", "hp": 8, "pos": 3})
        );
        let orphan =
            json!({"type": "delta", "seq": 20, "channel": "arena/a1", "base": 3, "set": {}});
        assert!(matches!(
            decoder.decode(&msgpack(&orphan), true),
            Err(FrameError::UnknownBase { seq: 20, base: 3 })
        ));
    }

    #[test]
    fn control_messages_and_bad_frames() {
        let mut decoder = Decoder::new(Mode::JSON);
        let hello =
            json!({"type": "connection_established", "client_id": "c1", "head": 5, "epoch": "ab"});
        let decoded = decoder.decode(hello.to_string().as_bytes(), false).unwrap();
        let [Message::Control(c)] = decoded.as_slice() else {
            panic!("{decoded:?}")
        };
        assert_eq!(
            (c.kind.as_str(), c.head, c.epoch.as_deref()),
            ("connection_established", Some(5), Some("ab"))
        );
        let caught_up = json!({"type": "caught_up", "channel": "arena/a1", "seq": 9});
        let decoded = decoder
            .decode(&gzip(caught_up.to_string().as_bytes()), true)
            .unwrap();
        assert!(matches!(&decoded[0], Message::Control(c) if c.seq == Some(9)));
        assert!(matches!(
            decoder.decode(&msgpack(&hello), true),
            Err(FrameError::UnexpectedBinary)
        ));
        assert!(decoder.decode(b"{\"type\":\"event\"}", false).is_err());
        assert!(decoder.decode(&[0x1f, 0x8b, 0, 1], true).is_err());
        assert!(Decoder::new(Mode::JSON).decode(b"not json", false).is_err());
    }

    #[test]
    fn the_scan_finds_what_the_full_decoder_finds() {
        // Laid out as the server writes them (`type` first), a quote-laden string inside.
        let events: Vec<String> = (1..=3u64)
            .map(|seq| {
                format!(
                    r#"{{"type":"event","seq":{seq},"channel":"arena/b","event_type":"t","ts":"x","data":{{"agent_id":"a","pad":"\"{{\"type\":\"event\"","sent_us":{}}}}}"#,
                    seq * 10
                )
            })
            .collect();
        let batch = format!(r#"{{"type":"batch","messages":[{}]}}"#, events.join(",")).into_bytes();
        assert_eq!(
            scan_json_events(&batch, "arena/b").unwrap(),
            [(1, Some(10)), (2, Some(20)), (3, Some(30))]
        );
        let full = Decoder::new(Mode::JSON).decode(&batch, false).unwrap();
        assert_eq!(full.len(), 3);
        assert!(
            scan_json_events(&batch, "arena/c").is_none(),
            "another channel"
        );
        let single = events[0].as_bytes();
        assert_eq!(
            scan_json_events(single, "arena/b").unwrap(),
            [(1, Some(10))]
        );
        assert!(scan_json_events(br#"{"type":"pong","id":1}"#, "arena/b").is_none());
        let first = br#"{"type":"event","seq":7,"channel":"arena/b","event_type":"t","ts":"x","data":{"sent_us":70,"pad":"1"}}"#;
        assert_eq!(
            scan_json_events(first, "arena/b").unwrap(),
            [(7, Some(70))],
            "sent_us elsewhere in data is searched for"
        );
        let none = br#"{"type":"event","seq":8,"channel":"arena/b","event_type":"t","ts":"x","data":{"n":80}}"#;
        assert_eq!(scan_json_events(none, "arena/b").unwrap(), [(8, None)]);
    }
}
