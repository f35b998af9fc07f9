//! Stored events as whole objects — history pages, exports — in JSON and MessagePack, and
//! the gzip used on HTTP bodies. Everything here writes bytes into a buffer; no IO.

use std::io::Write;

use serde::Serialize;
use serde_json::{value::RawValue, Value};

use crate::event::{Channel, Event};

/// `{"seq","id","channel"?,"channels","event_type","ts","data"}`: every field of the stored
/// event, plus the channel it was read through when there is one.
#[derive(Serialize)]
struct StoredEvent<'a, D> {
    seq: u64,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    channels: Vec<&'a str>,
    event_type: &'a str,
    ts: &'a str,
    data: D,
}

fn stored<'a, D>(event: &'a Event, channel: Option<&'a Channel>, data: D) -> StoredEvent<'a, D> {
    StoredEvent {
        seq: event.seq,
        id: &event.id,
        channel: channel.map(Channel::as_str),
        channels: event.channels.iter().map(Channel::as_str).collect(),
        event_type: &event.event_type,
        ts: &event.ts,
        data,
    }
}

pub fn write_stored_event_json(out: &mut Vec<u8>, event: &Event, channel: Option<&Channel>) {
    let object = stored::<&RawValue>(event, channel, &event.data);
    serde_json::to_writer(out, &object).expect("writing JSON to a Vec cannot fail");
}

pub fn write_stored_event_msgpack(out: &mut Vec<u8>, event: &Event, channel: Option<&Channel>) {
    let object = stored::<&Value>(event, channel, event.data_value());
    rmp_serde::encode::write_named(out, &object).expect("writing MessagePack to a Vec cannot fail");
}

/// Decodes a MessagePack body (a map, or an array of maps) into JSON values.
pub fn decode_msgpack(bytes: &[u8]) -> Result<Value, String> {
    rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
}

/// Decodes a MessagePack body with a deserializer of the caller's choice (one that can
/// refuse while reading, for instance).
pub fn decode_msgpack_seed<'de, S: serde::de::DeserializeSeed<'de>>(
    bytes: &'de [u8],
    seed: S,
) -> Result<S::Value, String> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    seed.deserialize(&mut de).map_err(|e| e.to_string())
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    encoder
        .write_all(bytes)
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

/// Gunzips `bytes`; `None` when they are not gzip or unpack to more than `limit` bytes.
pub fn gunzip_limited(bytes: &[u8], limit: usize) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut decoder = flate2::read::GzDecoder::new(bytes).take(limit as u64 + 1);
    decoder.read_to_end(&mut out).ok()?;
    (out.len() <= limit).then_some(out)
}

/// Gzip over a stream of pieces: each `compress` returns the compressed bytes ready so far,
/// `finish` the rest and the trailer. Nothing is flushed early, so the same pieces always
/// give the same bytes.
pub struct GzipStream {
    encoder: flate2::write::GzEncoder<Vec<u8>>,
}

impl Default for GzipStream {
    fn default() -> Self {
        Self {
            encoder: flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()),
        }
    }
}

impl GzipStream {
    pub fn compress(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.encoder
            .write_all(bytes)
            .expect("writing to a Vec cannot fail");
        std::mem::take(self.encoder.get_mut())
    }

    pub fn finish(self) -> Vec<u8> {
        self.encoder.finish().expect("writing to a Vec cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use serde_json::json;

    use super::*;

    fn event() -> Event {
        Event::new(
            5,
            "k".into(),
            vec![
                Channel::parse("arena/a").unwrap(),
                Channel::parse("agent/b").unwrap(),
            ],
            "t".into(),
            0,
            RawValue::from_string(r#"{"x":[1,{"y":null}]}"#.into()).unwrap(),
        )
    }

    #[test]
    fn json_and_msgpack_carry_the_same_object() {
        let e = event();
        let mut j = Vec::new();
        write_stored_event_json(&mut j, &e, Some(&e.channels[1]));
        let from_json: Value = serde_json::from_slice(&j).unwrap();
        assert_eq!(
            from_json,
            json!({"seq":5,"id":"k","channel":"agent/b","channels":["arena/a","agent/b"],
                   "event_type":"t","ts":"1970-01-01T00:00:00.000Z","data":{"x":[1,{"y":null}]}})
        );
        let mut m = Vec::new();
        write_stored_event_msgpack(&mut m, &e, Some(&e.channels[1]));
        assert_eq!(decode_msgpack(&m).unwrap(), from_json);
    }

    #[test]
    fn gzip_stream_round_trips() {
        let mut stream = GzipStream::default();
        let mut out = Vec::new();
        for piece in [&b"one "[..], b"two ", b"three"] {
            out.extend(stream.compress(&piece.repeat(100)));
        }
        out.extend(stream.finish());
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(
            back,
            [
                b"one ".repeat(100),
                b"two ".repeat(100),
                b"three".repeat(100)
            ]
            .concat()
        );
    }

    #[test]
    fn gzip_round_trips() {
        let data = b"hello hello hello hello".repeat(10);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gzip(&data)[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }
}
