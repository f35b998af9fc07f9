//! What an event is: channel names and patterns, the validated input of a publish
//! (`NewEvent`), and the stored, immutable `Event` that flows from the log to every socket.

use std::{
    fmt,
    sync::{Arc, OnceLock},
    time::{Duration, UNIX_EPOCH},
};

use serde_json::{value::RawValue, Value};

use crate::protocol::FrameCache;

/// A validated channel name `kind/id`.
///
/// `kind` matches `[a-z][a-z0-9_]{0,31}` and `id` matches `[A-Za-z0-9_.:-]{1,128}`, so a
/// channel never contains a NUL byte: the log's channel index relies on that.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` is not a channel: {reason}")]
pub struct InvalidChannel {
    pub name: String,
    pub reason: &'static str,
}

pub const BROADCAST_CHANNEL: &str = "system/broadcast";

impl Channel {
    pub fn parse(name: &str) -> Result<Self, InvalidChannel> {
        let fail = |reason| InvalidChannel {
            name: name.chars().take(200).collect(),
            reason,
        };
        let (kind, id) = name
            .split_once('/')
            .ok_or_else(|| fail("expected `kind/id`"))?;
        Self::check_kind(kind).map_err(fail)?;
        if id.is_empty() || id.len() > 128 {
            return Err(fail("the id must be 1 to 128 characters"));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
        {
            return Err(fail("the id may only hold A-Z a-z 0-9 _ . : -"));
        }
        Ok(Self(Arc::from(name)))
    }

    /// Builds a channel from its two path segments (`/ws/{kind}/{id}`).
    pub fn from_parts(kind: &str, id: &str) -> Result<Self, InvalidChannel> {
        Self::parse(&format!("{kind}/{id}"))
    }

    fn check_kind(kind: &str) -> Result<(), &'static str> {
        let mut bytes = kind.bytes();
        match bytes.next() {
            Some(b'a'..=b'z') => {}
            _ => return Err("the kind must start with a-z"),
        }
        if kind.len() > 32 {
            return Err("the kind must be at most 32 characters");
        }
        if !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err("the kind may only hold a-z 0-9 _");
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn kind(&self) -> &str {
        self.0.split_once('/').map(|(k, _)| k).unwrap_or(&self.0)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl std::borrow::Borrow<str> for Channel {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A glob over channel names (`arena/*`, `university/univ_1`, `*`), as used by
/// `[[high_frequency]]` rules and token permissions. `*` matches any run of characters.
#[derive(Debug, Clone)]
pub struct ChannelPattern {
    source: String,
    matcher: globset::GlobMatcher,
}

impl ChannelPattern {
    pub fn new(pattern: &str) -> Result<Self, globset::Error> {
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(false)
            .backslash_escape(true)
            .build()?;
        Ok(Self {
            source: pattern.to_string(),
            matcher: glob.compile_matcher(),
        })
    }

    pub fn matches(&self, channel: &str) -> bool {
        self.matcher.is_match(channel)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// The validated content of one event to append: everything but what the log assigns.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// One or more distinct channels, in the order the publisher gave them.
    pub channels: Vec<Channel>,
    pub event_type: String,
    /// Compact JSON text of an object.
    pub data: Box<RawValue>,
    /// The publisher's idempotency key, when it gave one.
    pub idempotency_key: Option<String>,
}

/// A stored event. Immutable once built; shared as `Arc<Event>` by the log, the fan-out and
/// every connection that delivers it.
pub struct Event {
    pub seq: u64,
    pub id: String,
    pub channels: Vec<Channel>,
    pub event_type: String,
    /// Server time at append, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// `ts_ms` as RFC 3339 UTC with milliseconds, formatted once.
    pub ts: String,
    /// Compact JSON text of an object.
    pub data: Box<RawValue>,
    parsed: OnceLock<Value>,
    /// Encoded frames of this event, made on first use and shared by every subscriber.
    pub(crate) frames: FrameCache,
}

impl Event {
    pub fn new(
        seq: u64,
        id: String,
        channels: Vec<Channel>,
        event_type: String,
        ts_ms: u64,
        data: Box<RawValue>,
    ) -> Self {
        Self::with_ts(
            seq,
            id,
            channels,
            event_type,
            (ts_ms, format_ts(ts_ms)),
            data,
        )
    }

    /// As `new`, with the timestamp already formatted (a commit group shares one).
    pub fn with_ts(
        seq: u64,
        id: String,
        channels: Vec<Channel>,
        event_type: String,
        (ts_ms, ts): (u64, String),
        data: Box<RawValue>,
    ) -> Self {
        let frames = FrameCache::new(channels.len());
        Self {
            seq,
            id,
            channels,
            event_type,
            ts_ms,
            ts,
            data,
            parsed: OnceLock::new(),
            frames,
        }
    }

    /// The data as a parsed JSON value, parsed at most once (filters need it).
    pub fn data_value(&self) -> &Value {
        self.parsed.get_or_init(|| {
            serde_json::from_str(self.data.get()).unwrap_or(Value::Object(Default::default()))
        })
    }

    pub fn channel_index(&self, channel: &str) -> Option<usize> {
        self.channels.iter().position(|c| c.as_str() == channel)
    }

    pub fn in_channel(&self, channel: &str) -> bool {
        self.channel_index(channel).is_some()
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("seq", &self.seq)
            .field("channels", &self.channels)
            .field("event_type", &self.event_type)
            .finish_non_exhaustive()
    }
}

pub fn format_ts(ts_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ts_ms)).to_string()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        for ok in ["arena/a1", "system/broadcast", "agent/A-1.b:c_d", "k9_x/1"] {
            Channel::parse(ok).unwrap();
        }
        let long_kind = format!("{}/x", "a".repeat(33));
        let long_id = format!("a/{}", "x".repeat(129));
        for bad in [
            "arena",
            "/a1",
            "arena/",
            "Arena/a1",
            "1arena/a",
            "arena/a/b",
            "arena/a b",
            "arena/é",
            long_kind.as_str(),
            long_id.as_str(),
        ] {
            assert!(Channel::parse(bad).is_err(), "{bad} should be rejected");
        }
        assert_eq!(Channel::parse("arena/a1").unwrap().kind(), "arena");
    }

    #[test]
    fn patterns() {
        let p = ChannelPattern::new("arena/*").unwrap();
        assert!(p.matches("arena/a1"));
        assert!(!p.matches("agent/a1"));
        assert!(ChannelPattern::new("*").unwrap().matches("university/u1"));
        let exact = ChannelPattern::new("university/univ_1").unwrap();
        assert!(exact.matches("university/univ_1"));
        assert!(!exact.matches("university/univ_10"));
    }

    #[test]
    fn timestamps_are_rfc3339_millis() {
        assert_eq!(format_ts(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
