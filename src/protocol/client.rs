//! Parsing of client messages. Every failure is an answerable `ParseError` carrying the
//! request `id` when one could be read, so the client always learns what was wrong.

use serde::{de, Deserialize, Deserializer};
use serde_json::Value;

use super::ErrorCode;

#[derive(Debug)]
pub enum ClientMessage {
    Subscribe(SubscribeMessage),
    Unsubscribe { id: Option<Value>, channel: String },
    GetSubscriptions { id: Option<Value> },
    Ping { id: Option<Value> },
    Publish(PublishMessage),
    Replay(ReplayMessage),
    ReplayStop { id: Option<Value> },
}

#[derive(Debug, Deserialize)]
pub struct SubscribeMessage {
    #[serde(default)]
    pub id: Option<Value>,
    pub channel: String,
    #[serde(default)]
    pub since: Option<Cursor>,
    #[serde(default)]
    pub epoch: Option<String>,
    #[serde(default)]
    pub filters: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct PublishMessage {
    #[serde(default)]
    pub id: Option<Value>,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    pub event_type: String,
    #[serde(default)]
    pub data: Option<Value>,
    /// The WebSocket `id` only pairs a request with its answer; idempotency has its own key.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// `replay`: the recorded events of one channel in a seq range and/or a time range.
#[derive(Debug, Deserialize)]
pub struct ReplayMessage {
    #[serde(default)]
    pub id: Option<Value>,
    pub channel: String,
    /// Exclusive, like `since`: the replay starts after this seq.
    #[serde(default)]
    pub from: Option<Cursor>,
    /// Inclusive; the head at the time of the request when absent.
    #[serde(default)]
    pub to: Option<Cursor>,
    /// RFC 3339 UTC: only events appended at or after this time.
    #[serde(default)]
    pub from_ts: Option<String>,
    /// RFC 3339 UTC: only events appended at or before this time.
    #[serde(default)]
    pub to_ts: Option<String>,
    #[serde(default)]
    pub speed: Option<f64>,
    #[serde(default)]
    pub filters: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Unsubscribe {
    #[serde(default)]
    id: Option<Value>,
    channel: String,
}

#[derive(Debug, Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<Value>,
}

/// A position in the log: the decimal string of a seq (a bare number is accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub u64);

impl Cursor {
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok().map(Cursor)
    }
}

impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(s) => Cursor::parse(&s)
                .ok_or_else(|| de::Error::custom(format!("`{s}` is not a cursor (a seq)"))),
            Value::Number(n) => n
                .as_u64()
                .map(Cursor)
                .ok_or_else(|| de::Error::custom("a cursor is a non-negative integer")),
            _ => Err(de::Error::custom("a cursor is a decimal string")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub id: Option<Value>,
    pub code: ErrorCode,
    pub message: String,
}

impl ClientMessage {
    pub fn parse_json(bytes: &[u8]) -> Result<Self, ParseError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| ParseError {
            id: None,
            code: ErrorCode::InvalidMessage,
            message: format!("not valid JSON: {e}"),
        })?;
        Self::from_value(value)
    }

    /// A client message sent as one MessagePack map (connections with `format=msgpack`).
    pub fn parse_msgpack(bytes: &[u8]) -> Result<Self, ParseError> {
        let value: Value = rmp_serde::from_slice(bytes).map_err(|e| ParseError {
            id: None,
            code: ErrorCode::InvalidMessage,
            message: format!("not a MessagePack map of JSON values: {e}"),
        })?;
        Self::from_value(value)
    }

    pub fn from_value(value: Value) -> Result<Self, ParseError> {
        let Value::Object(map) = &value else {
            return Err(ParseError {
                id: None,
                code: ErrorCode::InvalidMessage,
                message: "a message must be a JSON object".into(),
            });
        };
        let id = map.get("id").cloned();
        let fail = |code, message: String| ParseError {
            id: id.clone(),
            code,
            message,
        };
        let kind = match map.get("type") {
            Some(Value::String(kind)) => kind.clone(),
            Some(_) => {
                return Err(fail(
                    ErrorCode::InvalidMessage,
                    "`type` must be a string".into(),
                ))
            }
            None => return Err(fail(ErrorCode::InvalidMessage, "missing `type`".into())),
        };
        let shape = |e: serde_json::Error| fail(ErrorCode::InvalidMessage, format!("{kind}: {e}"));
        Ok(match kind.as_str() {
            "subscribe" => Self::Subscribe(serde_json::from_value(value).map_err(shape)?),
            "unsubscribe" => {
                let m: Unsubscribe = serde_json::from_value(value).map_err(shape)?;
                Self::Unsubscribe {
                    id: m.id,
                    channel: m.channel,
                }
            }
            "get_subscriptions" => {
                let m: IdOnly = serde_json::from_value(value).map_err(shape)?;
                Self::GetSubscriptions { id: m.id }
            }
            "ping" => {
                let m: IdOnly = serde_json::from_value(value).map_err(shape)?;
                Self::Ping { id: m.id }
            }
            "publish" => Self::Publish(serde_json::from_value(value).map_err(shape)?),
            "replay" => Self::Replay(serde_json::from_value(value).map_err(shape)?),
            "replay_stop" => {
                let m: IdOnly = serde_json::from_value(value).map_err(shape)?;
                Self::ReplayStop { id: m.id }
            }
            other => {
                return Err(fail(
                    ErrorCode::UnknownType,
                    format!(
                        "unknown message type `{}`",
                        other.chars().take(64).collect::<String>()
                    ),
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_every_message() {
        let m = ClientMessage::parse_json(
            br#"{"type":"subscribe","id":"r1","channel":"arena/a1","since":"42","epoch":"e","filters":{"x":1}}"#,
        )
        .unwrap();
        let ClientMessage::Subscribe(s) = m else {
            panic!()
        };
        assert_eq!(s.since, Some(Cursor(42)));
        assert_eq!(s.id, Some(json!("r1")));
        assert!(matches!(
            ClientMessage::parse_json(br#"{"type":"ping","id":7}"#).unwrap(),
            ClientMessage::Ping { id: Some(_) }
        ));
        assert!(matches!(
            ClientMessage::parse_json(br#"{"type":"get_subscriptions"}"#).unwrap(),
            ClientMessage::GetSubscriptions { id: None }
        ));
        assert!(matches!(
            ClientMessage::parse_json(br#"{"type":"unsubscribe","channel":"a/b"}"#).unwrap(),
            ClientMessage::Unsubscribe { .. }
        ));
        let m = ClientMessage::parse_json(
            br#"{"type":"replay","id":"r5","channel":"competition/c7","from":"0","to":"9","speed":2.5,"filters":{"k":1}}"#,
        )
        .unwrap();
        let ClientMessage::Replay(r) = m else {
            panic!()
        };
        assert_eq!(
            (r.from, r.to, r.speed),
            (Some(Cursor(0)), Some(Cursor(9)), Some(2.5))
        );
        assert!(matches!(
            ClientMessage::parse_json(br#"{"type":"replay_stop","id":"r5"}"#).unwrap(),
            ClientMessage::ReplayStop { id: Some(_) }
        ));
    }

    #[test]
    fn errors_keep_the_id_and_the_right_code() {
        let e = ClientMessage::parse_json(br#"{"type":"dance","id":"r9"}"#).unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::UnknownType, Some(json!("r9"))));
        let e = ClientMessage::parse_json(br#"{"type":"subscribe","id":"r2"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidMessage);
        assert!(e.message.contains("channel"), "{}", e.message);
        assert_eq!(e.id, Some(json!("r2")));
        for bad in [&b"{nope"[..], b"[]", b"{}", b"{\"type\":3}", b"\xff\xfe"] {
            assert_eq!(
                ClientMessage::parse_json(bad).unwrap_err().code,
                ErrorCode::InvalidMessage
            );
        }
        let e = ClientMessage::parse_json(br#"{"type":"subscribe","channel":"a/b","since":"-1"}"#)
            .unwrap_err();
        assert!(e.message.contains("cursor"), "{}", e.message);
    }
}
