//! The most recent events, in memory, exactly as they were appended and fanned out.
//!
//! Resumes and lag recoveries mostly ask for what was appended a moment ago. Served from
//! here, they cost no decoding, and they share the very `Arc<Event>` live subscribers got —
//! with its frames already encoded. Reads still go through the channel index first, so an
//! event retention removed is never served from here either.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use crate::event::Event;

pub struct RecentEvents {
    capacity: usize,
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    /// first seq -> events with contiguous seqs from it
    chunks: BTreeMap<u64, Arc<[Arc<Event>]>>,
    events: usize,
}

impl RecentEvents {
    /// Keeps about `capacity` events (whole chunks); 0 keeps none.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: RwLock::new(Inner::default()),
        }
    }

    /// Adds events with contiguous, increasing seqs, newer than any held.
    pub fn insert(&self, chunk: &[Arc<Event>]) {
        if self.capacity == 0 || chunk.is_empty() {
            return;
        }
        let mut inner = self.inner.write().expect("recent events");
        inner.events += chunk.len();
        inner.chunks.insert(chunk[0].seq, chunk.into());
        while inner.events > self.capacity {
            match inner.chunks.pop_first() {
                Some((_, evicted)) => inner.events -= evicted.len(),
                None => break,
            }
        }
    }

    pub fn get(&self, seq: u64) -> Option<Arc<Event>> {
        let inner = self.inner.read().expect("recent events");
        let (first, chunk) = inner.chunks.range(..=seq).next_back()?;
        chunk.get((seq - first) as usize).cloned()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;
    use crate::event::Channel;

    fn events(seqs: std::ops::Range<u64>) -> Vec<Arc<Event>> {
        seqs.map(|seq| {
            Arc::new(Event::new(
                seq,
                seq.to_string(),
                vec![Channel::parse("a/b").unwrap()],
                "t".into(),
                0,
                RawValue::from_string("{}".into()).unwrap(),
            ))
        })
        .collect()
    }

    #[test]
    fn keeps_the_newest_chunks() {
        let recent = RecentEvents::new(5);
        recent.insert(&events(1..4));
        recent.insert(&events(4..7));
        assert_eq!(recent.get(5).unwrap().seq, 5);
        assert!(recent.get(2).is_none(), "the oldest chunk was evicted");
        assert!(recent.get(7).is_none());
        assert!(RecentEvents::new(0).get(1).is_none());
    }
}
