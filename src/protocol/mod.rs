//! The WebSocket protocol: client messages in, server messages out, as bytes. No IO here:
//! the session hands bytes in and writes the frames this module makes.
//!
//! Architecture invariant: this module owns the wire encodings (JSON, MessagePack, gzip,
//! `batch` and `delta` messages) and is the only one that touches rmp-serde and flate2.
//! What can be shared is encoded once: an event's frame per (channel, format, compression)
//! is cached on the event, a batch's frame on the batch, a delta's bytes on the event, so
//! a thousand subscribers that need the same frame share one allocation.

pub mod client;
pub mod delta;
mod encode;
pub mod query;
pub mod server;
mod stored;

use std::sync::OnceLock;

use bytes::Bytes;

pub use client::{
    ClientMessage, Cursor, ParseError, PublishMessage, ReplayMessage, SubscribeMessage,
};
pub use delta::{DeltaKeys, DeltaState};
pub use server::{ErrorCode, ServerMessage, SubscriptionInfo};
pub use stored::{
    decode_msgpack, decode_msgpack_seed, gunzip_limited, gzip, write_stored_event_json,
    write_stored_event_msgpack, GzipStream,
};

use crate::event::Event;

/// How a connection wants its server messages encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Json,
    MsgPack,
}

impl Format {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "json" => Some(Self::Json),
            "msgpack" => Some(Self::MsgPack),
            _ => None,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Json => 0,
            Self::MsgPack => 1,
        }
    }
}

/// Everything about a connection's outbound encoding: the format, and whether (from which
/// size on) frames are gzipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wire {
    pub format: Format,
    /// Messages of at least this many bytes go out gzipped; `None`: the client did not ask
    /// for gzip. Smaller messages stay plain, since gzip makes tiny messages bigger.
    pub gzip_from: Option<usize>,
}

impl Wire {
    pub fn new(format: Format, gzip_from: Option<usize>) -> Self {
        Self { format, gzip_from }
    }

    /// The cache slot of this wire among the four (format × gzip) variants.
    fn slot(self) -> usize {
        self.format.index() * 2 + usize::from(self.gzip_from.is_some())
    }

    /// The plain (uncompressed) variant of this wire.
    fn plain(self) -> Self {
        Self {
            format: self.format,
            gzip_from: None,
        }
    }

    /// Turns message bytes into the frame this wire sends: gzipped when asked for and big
    /// enough (and only when that is smaller), text for JSON, binary otherwise.
    pub fn finish(self, message: Bytes) -> OutFrame {
        if let Some(from) = self.gzip_from {
            if message.len() >= from {
                let packed = gzip(&message);
                if packed.len() < message.len() {
                    return OutFrame {
                        payload: Bytes::from(packed),
                        binary: true,
                    };
                }
            }
        }
        OutFrame {
            payload: message,
            binary: self.format == Format::MsgPack,
        }
    }
}

/// One outbound WebSocket message, ready to write.
#[derive(Debug, Clone)]
pub struct OutFrame {
    pub payload: Bytes,
    pub binary: bool,
}

const WIRES: usize = 4;

/// Encoded frames of one event: for each channel of the event (the `channel` field
/// differs) and each wire, filled on first use; and the last delta computed from it.
pub struct FrameCache {
    frames: Box<[OnceLock<OutFrame>]>,
    /// Per format: (base seq, channel index, the delta message or `None` when a delta
    /// would not be smaller). Connections that last got the same base share it.
    deltas: [OnceLock<(u64, usize, Option<Bytes>)>; 2],
}

impl FrameCache {
    pub fn new(channels: usize) -> Self {
        Self {
            frames: (0..channels * WIRES).map(|_| OnceLock::new()).collect(),
            deltas: Default::default(),
        }
    }
}

/// The `event` message for `event` as received through its channel number `channel_index`.
pub fn event_frame(event: &Event, channel_index: usize, wire: Wire) -> &OutFrame {
    let slot = |wire: Wire| &event.frames.frames[channel_index * WIRES + wire.slot()];
    let plain = wire.plain();
    let plain_frame = slot(plain).get_or_init(|| {
        plain.finish(Bytes::from(encode::event_message(
            event,
            channel_index,
            plain.format,
            None,
        )))
    });
    if wire.gzip_from.is_none() {
        return plain_frame;
    }
    slot(wire).get_or_init(|| wire.finish(plain_frame.payload.clone()))
}

/// The uncompressed `event` message bytes (as a batch embeds them).
fn event_message(event: &Event, channel_index: usize, format: Format) -> Bytes {
    event_frame(event, channel_index, Wire::new(format, None))
        .payload
        .clone()
}

/// The `event` message of a replayed event: the live message plus `"replay":<tag>`, the
/// id of the replay. Not cached: a replayed frame serves one connection.
pub fn replay_event_frame(
    event: &Event,
    channel_index: usize,
    wire: Wire,
    tag: &serde_json::Value,
) -> OutFrame {
    wire.finish(Bytes::from(encode::event_message(
        event,
        channel_index,
        wire.format,
        Some(tag),
    )))
}

/// The `delta` message bytes (uncompressed) that turn `base`'s data into `event`'s, or
/// `None` when a delta would carry as much as the full event. Shared through the event's
/// cache by connections whose last event for the key is the same `base`.
pub fn delta_message(
    event: &Event,
    channel_index: usize,
    base: &Event,
    format: Format,
) -> Option<Bytes> {
    let compute = || {
        let diff = delta::diff(base.data_value(), event.data_value())?;
        Some(Bytes::from(encode::delta_message(
            event,
            channel_index,
            base.seq,
            &diff,
            format,
        )))
    };
    let cached =
        event.frames.deltas[format.index()].get_or_init(|| (base.seq, channel_index, compute()));
    if cached.0 == base.seq && cached.1 == channel_index {
        cached.2.clone()
    } else {
        compute()
    }
}

/// One message inside a `batch`: an event, or a delta, as uncompressed message bytes.
pub enum BatchItem<'a> {
    Event(&'a Event, usize),
    Delta(Bytes),
}

impl BatchItem<'_> {
    fn bytes(&self, format: Format) -> Bytes {
        match self {
            Self::Event(event, index) => event_message(event, *index, format),
            Self::Delta(bytes) => bytes.clone(),
        }
    }
}

/// The frames of one batch, per wire, for the connections that take all of its events
/// as they are (no filter dropped any, no deltas).
pub type BatchCache = PerWire<OutFrame>;

/// One value per wire, made by the first connection of that wire that needs it and shared
/// by the others.
pub struct PerWire<T> {
    slots: [OnceLock<T>; WIRES],
}

impl<T> Default for PerWire<T> {
    fn default() -> Self {
        Self {
            slots: Default::default(),
        }
    }
}

impl<T> PerWire<T> {
    pub fn get_or_init(&self, wire: Wire, make: impl FnOnce() -> T) -> &T {
        self.slots[wire.slot()].get_or_init(make)
    }
}

/// A `batch` message holding `items` in order. With a cache, the frame is made once per
/// wire and shared; the caller guarantees that every user of the cache passes the same
/// items.
pub fn batch_frame(cache: Option<&BatchCache>, items: &[BatchItem<'_>], wire: Wire) -> OutFrame {
    let make = || {
        let parts: Vec<Bytes> = items.iter().map(|item| item.bytes(wire.format)).collect();
        wire.finish(Bytes::from(encode::batch_message(&parts, wire.format)))
    };
    match cache {
        Some(cache) => cache.get_or_init(wire, make).clone(),
        None => make(),
    }
}

/// A control message (anything but `event`, `batch` and `delta`), encoded for `wire`.
pub fn control_frame(message: &ServerMessage<'_>, wire: Wire) -> OutFrame {
    wire.finish(Bytes::from(encode::control_message(message, wire.format)))
}
