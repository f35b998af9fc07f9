//! The only write path: request bodies and WebSocket `publish` messages are parsed and
//! validated into `NewEvent`s here, then appended to the log. Fan-out is not called from
//! here: it follows the log's own notification, so nothing reaches a subscriber before it
//! is durable, whoever appended it.

mod bounded;

use bounded::Unread;

use std::{cell::Cell, sync::Arc};

use serde::Deserialize;
use serde_json::{value::RawValue, Value};

use crate::{
    error::ApiError,
    event::{Channel, NewEvent},
    log::{AppendOutcome, EventLog},
};

const MAX_CHANNELS_PER_EVENT: usize = 16;
const MAX_EVENT_TYPE_LEN: usize = 128;
const MAX_ID_LEN: usize = 256;

/// How a publish body is encoded (from its `Content-Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Ndjson,
    Msgpack,
}

impl BodyFormat {
    pub fn from_content_type(content_type: Option<&str>) -> Result<Self, ApiError> {
        let essence = content_type
            .unwrap_or("application/json")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "" | "application/json" | "text/json" => Ok(Self::Json),
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Ok(Self::Ndjson),
            "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
                Ok(Self::Msgpack)
            }
            other => Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                crate::protocol::ErrorCode::InvalidMessage,
                format!(
                    "content type `{other}` is not accepted; use application/json, \
                     application/x-ndjson or application/msgpack"
                ),
            )),
        }
    }
}

/// One event as a publisher writes it, before validation.
#[derive(Debug, Deserialize)]
pub struct EventInput {
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    pub event_type: String,
    #[serde(default)]
    pub data: Option<Value>,
    /// The idempotency key.
    #[serde(default)]
    pub id: Option<String>,
}

/// A parsed body: the events, and whether the publisher sent a batch (an array or NDJSON)
/// rather than one object, which decides the shape of the answer.
#[derive(Debug)]
pub struct ParsedBody {
    pub events: Vec<NewEvent>,
    pub is_batch: bool,
}

pub fn parse_body(
    format: BodyFormat,
    body: &[u8],
    max_events: usize,
) -> Result<ParsedBody, ApiError> {
    let overflowed = Cell::new(false);
    let seed = bounded::BatchSeed::new(max_events, &overflowed);
    let too_many = || too_many(max_events);
    let (items, is_batch) = match format {
        BodyFormat::Json => {
            if let Some(parsed) = parse_json_direct(body, max_events)? {
                return Ok(parsed);
            }
            // Something is wrong (or unusual) in the body: the general path below finds
            // what, and names the item.
            match bounded::read_json(body, max_events) {
                Ok(parsed) => parsed,
                Err(Unread::TooMany) => return Err(too_many()),
                Err(Unread::Invalid(e)) => {
                    return Err(ApiError::bad_request(format!(
                        "body is not valid JSON: {e}"
                    )))
                }
            }
        }
        BodyFormat::Msgpack => match crate::protocol::decode_msgpack_seed(body, seed) {
            Ok(parsed) => parsed,
            Err(_) if overflowed.get() => return Err(too_many()),
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "body is not a MessagePack map or array: {e}"
                )))
            }
        },
        BodyFormat::Ndjson => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::bad_request("NDJSON body is not UTF-8"))?;
            let mut items = Vec::new();
            for (line_no, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                if items.len() == max_events {
                    return Err(too_many());
                }
                items.push(serde_json::from_str(line).map_err(|e| {
                    ApiError::bad_request(format!("line {}: not valid JSON: {e}", line_no + 1))
                })?);
            }
            (items, true)
        }
    };
    if items.is_empty() {
        return Err(ApiError::bad_request("the batch holds no event"));
    }
    let events = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let input: EventInput = serde_json::from_value(item).map_err(|e| {
                let e = ApiError::bad_request(e.to_string());
                if is_batch {
                    e.in_batch_item(i)
                } else {
                    e
                }
            })?;
            validate(input).map_err(|e| if is_batch { e.in_batch_item(i) } else { e })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ParsedBody { events, is_batch })
}

/// One event as a publisher writes it, with `data` kept as the JSON text it came in.
#[derive(Deserialize)]
struct RawEventInput {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    event_type: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    id: Option<String>,
}

/// The common case of a JSON body, read straight into events: `data` is copied as the
/// compact text it already is instead of being built into a tree and written out again
/// (half the server's time went there at batches of 100). `Ok(None)` when anything is
/// off — not valid, not an object, not compact, an invalid field — so that the general
/// path reports exactly what; `Err` only for a batch over the limit.
fn parse_json_direct(body: &[u8], max_events: usize) -> Result<Option<ParsedBody>, ApiError> {
    let (items, is_batch) = match bounded::read_json::<RawEventInput>(body, max_events) {
        Ok(parsed) => parsed,
        Err(Unread::TooMany) => return Err(too_many(max_events)),
        Err(Unread::Invalid(_)) => return Ok(None),
    };
    if items.is_empty() {
        return Ok(None);
    }
    let mut events = Vec::with_capacity(items.len());
    for item in items {
        let data = match item.data {
            None => None,
            Some(raw) if raw.get() == "null" => None,
            Some(raw) if raw.get().starts_with('{') && is_compact(raw.get()) => Some(raw),
            Some(_) => return Ok(None),
        };
        match validate_parts(item.channel, item.channels, item.event_type, data, item.id) {
            Ok(event) => events.push(event),
            Err(_) => return Ok(None),
        }
    }
    Ok(Some(ParsedBody { events, is_batch }))
}

fn too_many(max_events: usize) -> ApiError {
    ApiError::too_large(format!("a batch holds at most {max_events} events"))
}

/// Whether JSON text has no whitespace outside its strings (what the log stores).
fn is_compact(json: &str) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    for byte in json.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match byte {
                b'"' => in_string = true,
                b' ' | b'\n' | b'\r' | b'\t' => return false,
                _ => {}
            }
        }
    }
    true
}

/// Turns one publisher-written event into a `NewEvent`, or says exactly what is wrong.
pub fn validate(input: EventInput) -> Result<NewEvent, ApiError> {
    let data = match input.data {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(
            RawValue::from_string(Value::Object(map).to_string())
                .expect("a Value serializes to JSON"),
        ),
        Some(_) => return Err(ApiError::bad_request("`data` must be a JSON object")),
    };
    validate_parts(
        input.channel,
        input.channels,
        input.event_type,
        data,
        input.id,
    )
}

fn validate_parts(
    channel: Option<String>,
    channels: Option<Vec<String>>,
    event_type: String,
    data: Option<Box<RawValue>>,
    id: Option<String>,
) -> Result<NewEvent, ApiError> {
    let names = match (channel, channels) {
        (Some(one), None) => vec![one],
        (None, Some(many)) => many,
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give `channel` or `channels`, not both",
            ))
        }
        (None, None) => return Err(ApiError::bad_request("missing `channel` (or `channels`)")),
    };
    if names.is_empty() {
        return Err(ApiError::unprocessable("`channels` is empty"));
    }
    if names.len() > MAX_CHANNELS_PER_EVENT {
        return Err(ApiError::unprocessable(format!(
            "an event goes to at most {MAX_CHANNELS_PER_EVENT} channels"
        )));
    }
    let mut channels: Vec<Channel> = Vec::with_capacity(names.len());
    for name in &names {
        let channel = Channel::parse(name)?;
        if !channels.contains(&channel) {
            channels.push(channel);
        }
    }
    if event_type.is_empty()
        || event_type.len() > MAX_EVENT_TYPE_LEN
        || event_type.chars().any(char::is_control)
    {
        return Err(ApiError::unprocessable(format!(
            "`event_type` must be 1 to {MAX_EVENT_TYPE_LEN} printable characters"
        )));
    }
    if let Some(id) = &id {
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err(ApiError::unprocessable(format!(
                "`id` must be 1 to {MAX_ID_LEN} bytes"
            )));
        }
    }
    let data = data.unwrap_or_else(|| RawValue::from_string("{}".into()).expect("valid JSON"));
    Ok(NewEvent {
        channels,
        event_type,
        data,
        idempotency_key: id,
    })
}

/// Appends validated events; answers once they are durable.
#[derive(Clone)]
pub struct Publisher {
    log: Arc<dyn EventLog>,
}

impl Publisher {
    pub fn new(log: Arc<dyn EventLog>) -> Self {
        Self { log }
    }

    pub async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<AppendOutcome>, ApiError> {
        Ok(self.log.append(events).await?)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(format: BodyFormat, body: &[u8]) -> Result<ParsedBody, ApiError> {
        parse_body(format, body, 100)
    }

    #[test]
    fn single_batch_ndjson_and_msgpack() {
        let one = parse(
            BodyFormat::Json,
            br#"{"channel":"arena/a1","event_type":"t","data":{"x":1}}"#,
        )
        .unwrap();
        assert!(!one.is_batch);
        assert_eq!(one.events[0].data.get(), r#"{"x":1}"#);
        let many = parse(
            BodyFormat::Json,
            br#"[{"channels":["arena/a1","arena/a1","agent/b"],"event_type":"t","id":"k"}]"#,
        )
        .unwrap();
        assert!(many.is_batch);
        assert_eq!(
            many.events[0].channels.len(),
            2,
            "duplicate channels collapse"
        );
        assert_eq!(many.events[0].idempotency_key.as_deref(), Some("k"));
        let nd = parse(
            BodyFormat::Ndjson,
            b"{\"channel\":\"a/b\",\"event_type\":\"t\"}\n\n{\"channel\":\"a/c\",\"event_type\":\"t\"}\n",
        )
        .unwrap();
        assert_eq!(nd.events.len(), 2);
        let mp =
            rmp_serde::to_vec_named(&json!({"channel":"a/b","event_type":"t","data":{"k":[1,2]}}))
                .unwrap();
        let mp = parse(BodyFormat::Msgpack, &mp).unwrap();
        assert_eq!(mp.events[0].data.get(), r#"{"k":[1,2]}"#);
    }

    #[test]
    fn data_with_line_breaks_is_compacted_and_null_data_is_empty() {
        let p = parse(
            BodyFormat::Json,
            b"{\"channel\":\"a/b\",\"event_type\":\"t\",\"data\":{\n \"x\": 1\n}}",
        )
        .unwrap();
        assert_eq!(p.events[0].data.get(), r#"{"x":1}"#);
        let p = parse(
            BodyFormat::Json,
            br#"{"channel":"a/b","event_type":"t","data":null}"#,
        )
        .unwrap();
        assert_eq!(p.events[0].data.get(), "{}");
    }

    #[test]
    fn errors_name_the_problem_with_the_right_status() {
        let cases: [(&[u8], u16, &str); 9] = [
            (b"{", 400, "JSON"),
            (b"3", 400, "object"),
            (b"[]", 400, "no event"),
            (br#"{"event_type":"t"}"#, 400, "channel"),
            (br#"{"channel":"a/b"}"#, 400, "event_type"),
            (
                br#"{"channel":"Bad","event_type":"t"}"#,
                422,
                "not a channel",
            ),
            (br#"{"channel":"a/b","event_type":""}"#, 422, "event_type"),
            (
                br#"{"channel":"a/b","event_type":"t","data":[1]}"#,
                400,
                "data",
            ),
            (
                br#"[{"channel":"a/b","event_type":"t"},{"channel":"a/b"}]"#,
                400,
                "event 1",
            ),
        ];
        for (body, status, words) in cases {
            let e = parse(BodyFormat::Json, body).unwrap_err();
            assert_eq!(
                e.status.as_u16(),
                status,
                "{}",
                String::from_utf8_lossy(body)
            );
            assert!(
                e.message.contains(words),
                "{}: {}",
                String::from_utf8_lossy(body),
                e.message
            );
        }
        assert_eq!(
            parse_body(
                BodyFormat::Json,
                br#"[{"channel":"a/b","event_type":"t"},{"channel":"a/b","event_type":"t"}]"#,
                1
            )
            .unwrap_err()
            .status
            .as_u16(),
            413
        );
        let ndjson = b"{\"channel\":\"a/b\",\"event_type\":\"t\"}\n".repeat(3);
        assert_eq!(
            parse_body(BodyFormat::Ndjson, &ndjson, 2)
                .unwrap_err()
                .status
                .as_u16(),
            413
        );
        let msgpack = rmp_serde::to_vec_named(&json!([{}, {}, {}])).unwrap();
        assert_eq!(
            parse_body(BodyFormat::Msgpack, &msgpack, 2)
                .unwrap_err()
                .status
                .as_u16(),
            413
        );
        assert!(BodyFormat::from_content_type(Some("text/plain")).is_err());
        assert_eq!(
            BodyFormat::from_content_type(Some("application/json; charset=utf-8")).unwrap(),
            BodyFormat::Json
        );
    }

    #[test]
    fn direct_and_general_paths_store_the_same_compact_data() {
        let direct = parse(
            BodyFormat::Json,
            br#"[{"channel":"arena/a","event_type":"t","data":{"z":1,"a":"x y"}}]"#,
        )
        .unwrap();
        assert_eq!(
            direct.events[0].data.get(),
            r#"{"z":1,"a":"x y"}"#,
            "text kept as sent"
        );
        let spaced = parse(
            BodyFormat::Json,
            b"{\"channel\":\"arena/a\",\"event_type\":\"t\",\"data\": { \"b\" : [1, 2] }}",
        )
        .unwrap();
        assert_eq!(
            spaced.events[0].data.get(),
            r#"{"b":[1,2]}"#,
            "made compact"
        );
        let null = parse(
            BodyFormat::Json,
            br#"{"channel":"arena/a","event_type":"t","data":null}"#,
        )
        .unwrap();
        assert_eq!(null.events[0].data.get(), "{}");
        let e = parse(BodyFormat::Json, br#"[{"channel":"arena/a","event_type":"t"},{"channel":"arena/a","event_type":"t","data":[1]}]"#).unwrap_err();
        assert_eq!(
            e.details.unwrap()["index"],
            1,
            "the general path names the item"
        );
        assert!(is_compact(r#"{"a":" \" \\","b":[1,{"c":"\t"}]}"#));
        assert!(!is_compact("{\"a\":1 }"));
    }
}
