//! The WebSocket protocol: client messages in, server messages out, as bytes. No IO here:
//! the session hands bytes in and writes the frames this module makes.
//!
//! Architecture invariant: this module owns the wire encodings. An event is encoded once
//! per (channel, format) and the bytes are cached on the event, so a thousand subscribers
//! that need the same frame share one allocation.

pub mod client;
pub mod server;
mod stored;

use std::sync::OnceLock;

use bytes::Bytes;

pub use client::{
    ClientMessage, Cursor, ParseError, PublishMessage, ReplayMessage, SubscribeMessage,
};
pub use server::{ErrorCode, ServerMessage, SubscriptionInfo};
pub use stored::{
    decode_msgpack, decode_msgpack_seed, gzip, write_stored_event_json, write_stored_event_msgpack,
    GzipStream,
};

use crate::event::Event;

/// How a connection wants its server messages encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Json,
}

impl Format {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// One outbound WebSocket message, ready to write.
#[derive(Debug, Clone)]
pub struct OutFrame {
    pub payload: Bytes,
    pub binary: bool,
}

/// Encoded frames of one event, one slot per channel of the event (the `channel` field
/// differs), filled on first use.
pub struct FrameCache {
    json: Box<[OnceLock<Bytes>]>,
}

impl FrameCache {
    pub fn new(channels: usize) -> Self {
        Self {
            json: (0..channels).map(|_| OnceLock::new()).collect(),
        }
    }
}

/// The `event` message for `event` as received through its channel number `channel_index`.
pub fn event_frame(event: &Event, channel_index: usize, format: Format) -> OutFrame {
    match format {
        Format::Json => OutFrame {
            payload: event.frames.json[channel_index]
                .get_or_init(|| server::event_json(event, channel_index))
                .clone(),
            binary: false,
        },
    }
}

/// The `event` message of a replayed event: the live frame plus `"replay":<tag>`, where
/// `tag` is JSON text naming the replay. Not cached: a replayed frame serves one connection.
pub fn replay_event_frame(
    event: &Event,
    channel_index: usize,
    format: Format,
    tag: &str,
) -> OutFrame {
    match format {
        Format::Json => OutFrame {
            payload: server::replay_event_json(event, channel_index, tag),
            binary: false,
        },
    }
}

/// A control message (anything but `event`), encoded for `format`.
pub fn control_frame(message: &ServerMessage<'_>, format: Format) -> OutFrame {
    match format {
        Format::Json => OutFrame {
            payload: Bytes::from(
                serde_json::to_vec(message).expect("server messages always serialize"),
            ),
            binary: false,
        },
    }
}
