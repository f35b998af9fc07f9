//! How one connection's server messages become frames: its wire (format, gzip) and, when
//! it asked for deltas, its delta memory. Whatever can be shared comes from the protocol
//! caches; what is computed here is only what is truly this connection's (which events its
//! filters let through, the base of each delta).

use std::{borrow::Cow, sync::Arc};

use crate::{
    event::{Channel, Event},
    protocol::{self, BatchCache, BatchItem, DeltaKeys, DeltaState, OutFrame, ServerMessage, Wire},
};

pub struct Outbox {
    wire: Wire,
    /// `Some` when the client asked for `delta=true`.
    deltas: Option<DeltaState>,
}

impl Outbox {
    pub fn new(wire: Wire, delta_keys: Option<Arc<DeltaKeys>>) -> Self {
        Self {
            wire,
            deltas: delta_keys.map(DeltaState::new),
        }
    }

    pub fn wire(&self) -> Wire {
        self.wire
    }

    /// Whether this connection's event frames are the shared ones (no deltas): a run's
    /// frames laid out once can then serve it.
    pub fn shares_event_frames(&self) -> bool {
        self.deltas.is_none()
    }

    pub fn control(&self, message: &ServerMessage<'_>) -> OutFrame {
        protocol::control_frame(message, self.wire)
    }

    /// One live or resumed event, received through its channel `channel_index`: a `delta`
    /// when this connection takes them and one is worth it, the (shared) `event` otherwise.
    pub fn event<'e>(&mut self, event: &'e Arc<Event>, channel_index: usize) -> Cow<'e, OutFrame> {
        match self.delta_of(event, channel_index) {
            Some(delta) => Cow::Owned(self.wire.finish(delta)),
            None => Cow::Borrowed(protocol::event_frame(event, channel_index, self.wire)),
        }
    }

    /// A `batch` of `events`, all received through `channel`, in seq order. `whole` is the
    /// batch's shared cache when `events` are exactly that batch's events: its frame is
    /// then encoded once for every connection that takes the same (unless deltas make this
    /// connection's frame its own).
    pub fn batch(
        &mut self,
        events: &[&Arc<Event>],
        channel: &Channel,
        whole: Option<&BatchCache>,
    ) -> OutFrame {
        let items: Vec<BatchItem<'_>> = events
            .iter()
            .map(|event| {
                let index = event
                    .channel_index(channel.as_str())
                    .expect("a batch holds events of its channel");
                match self.delta_of(event, index) {
                    Some(delta) => BatchItem::Delta(delta),
                    None => BatchItem::Event(event, index),
                }
            })
            .collect();
        let shared = if self.deltas.is_none() { whole } else { None };
        protocol::batch_frame(shared, &items, self.wire)
    }

    /// The next events of `channel` go out in full (the subscription restarted or ended).
    pub fn forget_channel(&mut self, channel: &Channel) {
        if let Some(deltas) = &mut self.deltas {
            deltas.forget_channel(channel);
        }
    }

    fn delta_of(&mut self, event: &Arc<Event>, channel_index: usize) -> Option<bytes::Bytes> {
        let format = self.wire.format;
        self.deltas.as_mut()?.next(event, channel_index, |base| {
            protocol::delta_message(event, channel_index, base, format)
        })
    }
}
