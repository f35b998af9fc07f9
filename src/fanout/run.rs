//! Runs: the events of a pulse that are in one ordinary channel and in no other.
//!
//! A connection that a pulse concerns through one channel only gets that channel's run.
//! When its subscription takes every event of the run as it is — live, past none of them,
//! unfiltered, no deltas — the session writes the run's frames as one block of bytes, laid
//! out for its wire by the first connection that needed them and shared by the rest: no
//! routing, lookup or copy per event and connection. Otherwise the session routes the run's
//! events one by one, as it would the groups they came from.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;

use crate::{
    event::{Channel, Event},
    log::AppendedGroup,
    protocol::{PerWire, Wire},
};

pub struct Run {
    pub channel: Channel,
    /// In seq order; never empty.
    pub events: Vec<Arc<Event>>,
    /// The append groups the events came from, in order: when each became durable and how
    /// many of the run's events it holds (the delivery latency is measured per group).
    pub groups: Vec<(Instant, usize)>,
    laid_out: PerWire<LaidOut>,
}

/// A run's frames as they go to the socket, and how many payload bytes they carry (what
/// the counters of bytes sent count).
pub struct LaidOut {
    pub bytes: Bytes,
    pub payload_bytes: u64,
}

impl Run {
    /// The events of `channel` in the groups at `indices` (ascending), every one of which
    /// is in that channel alone.
    pub(super) fn collect(
        channel: &Channel,
        groups: &[Arc<AppendedGroup>],
        indices: &[usize],
    ) -> Self {
        let mut events = Vec::new();
        let mut from = Vec::with_capacity(indices.len());
        for group in indices.iter().map(|&i| &groups[i]) {
            let before = events.len();
            events.extend(
                group
                    .events
                    .iter()
                    .filter(|event| event.channels.as_slice() == std::slice::from_ref(channel))
                    .cloned(),
            );
            from.push((group.durable_at, events.len() - before));
        }
        debug_assert!(!events.is_empty(), "a run of a channel in the pulse");
        Self {
            channel: channel.clone(),
            events,
            groups: from,
            laid_out: PerWire::default(),
        }
    }

    pub fn first_seq(&self) -> u64 {
        self.events.first().map_or(0, |event| event.seq)
    }

    pub fn last_seq(&self) -> u64 {
        self.events.last().map_or(0, |event| event.seq)
    }

    /// The run's frames for `wire`, laid out by `lay_out` the first time they are needed.
    pub fn laid_out(&self, wire: Wire, lay_out: impl FnOnce() -> LaidOut) -> &LaidOut {
        self.laid_out.get_or_init(wire, lay_out)
    }
}
