//! Server messages. `type` always comes first: the enum is internally tagged, and serde
//! writes the tag before the fields.

use serde::Serialize;
use serde_json::Value;

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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
