//! Server messages. `type` always comes first: the enum is internally tagged, and serde
//! writes the tag before the fields.

use std::io::Write;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::event::Event;

/// The error codes of the protocol (and of HTTP error bodies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidMessage,
    UnknownType,
    InvalidChannel,
    Unauthorized,
    Forbidden,
    RateLimitExceeded,
    MessageTooLarge,
    SubscriptionLimit,
    NotFound,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidMessage => "INVALID_MESSAGE",
            Self::UnknownType => "UNKNOWN_TYPE",
            Self::InvalidChannel => "INVALID_CHANNEL",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Forbidden => "FORBIDDEN",
            Self::RateLimitExceeded => "RATE_LIMIT_EXCEEDED",
            Self::MessageTooLarge => "MESSAGE_TOO_LARGE",
            Self::SubscriptionLimit => "SUBSCRIPTION_LIMIT",
            Self::NotFound => "NOT_FOUND",
            Self::Internal => "INTERNAL",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SubscriptionInfo<'a> {
    pub channel: &'a str,
    pub filters: &'a Value,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    ConnectionEstablished {
        client_id: &'a str,
        server_time: String,
        head: u64,
        epoch: &'a str,
    },
    Subscribed {
        id: Option<&'a Value>,
        channel: &'a str,
        recovered: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
        head: u64,
        earliest: u64,
    },
    CaughtUp {
        channel: &'a str,
        seq: u64,
    },
    Unsubscribed {
        id: Option<&'a Value>,
        channel: &'a str,
    },
    Subscriptions {
        id: Option<&'a Value>,
        subscriptions: Vec<SubscriptionInfo<'a>>,
    },
    Pong {
        id: Option<&'a Value>,
    },
    Published {
        id: Option<&'a Value>,
        seq: u64,
    },
    /// A replay delivered its last event (or was stopped: `stopped: true`).
    ReplayEnd {
        id: Option<&'a Value>,
        channel: &'a str,
        count: u64,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        stopped: bool,
    },
    Error {
        id: Option<&'a Value>,
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        details: Option<Value>,
    },
}

/// The JSON `event` message, written by hand: it is the hot path, and `data` is already
/// compact JSON text that only needs to be copied.
pub(super) fn event_json(event: &Event, channel_index: usize) -> Bytes {
    Bytes::from(event_json_vec(event, channel_index, 0))
}

/// `event_json` with a `"replay":<tag>` field after `data`.
pub(super) fn replay_event_json(event: &Event, channel_index: usize, tag: &str) -> Bytes {
    let mut out = event_json_vec(event, channel_index, tag.len() + 10);
    out.pop();
    out.extend_from_slice(b",\"replay\":");
    out.extend_from_slice(tag.as_bytes());
    out.push(b'}');
    Bytes::from(out)
}

fn event_json_vec(event: &Event, channel_index: usize, spare: usize) -> Vec<u8> {
    let data = event.data.get();
    let mut out = Vec::with_capacity(96 + spare + data.len() + event.event_type.len());
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
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{json, value::RawValue};

    use super::*;
    use crate::event::Channel;

    #[test]
    fn event_json_is_valid_and_complete() {
        let event = Event::new(
            12,
            "k".into(),
            vec![
                Channel::parse("arena/a1").unwrap(),
                Channel::parse("agent/x").unwrap(),
            ],
            "say \"hi\"".into(),
            1_700_000_000_000,
            RawValue::from_string(r#"{"a":[1,2]}"#.into()).unwrap(),
        );
        let v: Value = serde_json::from_slice(&event_json(&event, 1)).unwrap();
        assert_eq!(
            v,
            json!({"type":"event","seq":12,"channel":"agent/x","event_type":"say \"hi\"",
                   "ts":"2023-11-14T22:13:20.000Z","data":{"a":[1,2]}})
        );
    }

    #[test]
    fn replayed_event_carries_its_replay_tag() {
        let event = Event::new(
            3,
            "k".into(),
            vec![Channel::parse("arena/a1").unwrap()],
            "t".into(),
            0,
            RawValue::from_string("{}".into()).unwrap(),
        );
        let v: Value = serde_json::from_slice(&replay_event_json(&event, 0, "\"r5\"")).unwrap();
        assert_eq!(v["replay"], "r5");
        assert_eq!(v["seq"], 3);
    }

    #[test]
    fn type_comes_first() {
        let text = serde_json::to_string(&ServerMessage::Pong { id: None }).unwrap();
        assert_eq!(text, r#"{"type":"pong","id":null}"#);
        let text = serde_json::to_string(&ServerMessage::Error {
            id: Some(&json!("r1")),
            code: ErrorCode::RateLimitExceeded,
            message: "slow down",
            details: Some(json!({"limit":100})),
        })
        .unwrap();
        assert!(text.starts_with(r#"{"type":"error","id":"r1","code":"RATE_LIMIT_EXCEEDED""#));
    }
}
