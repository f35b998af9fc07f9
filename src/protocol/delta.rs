//! Delta frames: which top-level fields of `data` changed from one event to the next, and
//! the per-connection memory of what each (channel, event_type, key) last received.
//!
//! A connection that asked for deltas gets, for an event, a `delta` against the last event
//! it received for the same (channel, event_type, key) — when there is one, when fewer than
//! `full_every` deltas were sent since the last full event, and when the delta leaves out
//! at least one field. Otherwise the full `event`, which becomes the next base.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::event::{Channel, Event};

/// Keys remembered per connection; past this many the memory is dropped and every key
/// starts again from a full event, so a connection cannot grow without bound.
const MAX_KEYS: usize = 4096;

/// The changes from one `data` object to the next.
#[derive(Debug, Clone, PartialEq)]
pub struct Diff {
    pub set: Map<String, Value>,
    pub unset: Vec<String>,
}

/// The delta from `base` to `next`, or `None` when it would not be smaller than `next`
/// itself (every field changed) or either is not an object.
pub fn diff(base: &Value, next: &Value) -> Option<Diff> {
    let (Value::Object(base), Value::Object(next)) = (base, next) else {
        return None;
    };
    let set: Map<String, Value> = next
        .iter()
        .filter(|(field, value)| base.get(*field) != Some(*value))
        .map(|(field, value)| (field.clone(), value.clone()))
        .collect();
    if !next.is_empty() && set.len() == next.len() {
        return None;
    }
    let unset = base
        .keys()
        .filter(|field| !next.contains_key(*field))
        .cloned()
        .collect();
    Some(Diff { set, unset })
}

/// What a client does with a delta: `base` with the fields of `set` replaced and those of
/// `unset` removed.
pub fn apply(base: &Value, set: &Map<String, Value>, unset: &[String]) -> Value {
    let mut data = base.as_object().cloned().unwrap_or_default();
    for field in unset {
        data.remove(field);
    }
    for (field, value) in set {
        data.insert(field.clone(), value.clone());
    }
    Value::Object(data)
}

/// The configured key field per event type, and how many deltas may follow a full event.
#[derive(Debug, Clone)]
pub struct DeltaKeys {
    /// event_type -> dot path into `data` whose value keys the delta chain.
    fields: HashMap<String, String>,
    full_every: u32,
}

impl DeltaKeys {
    pub fn new(fields: HashMap<String, String>, full_every: u32) -> Self {
        Self { fields, full_every }
    }

    /// The key of `event`: the JSON text of its key field, `None` for an event type without
    /// one (or an event that lacks the field).
    fn key_of(&self, event: &Event) -> Option<String> {
        let path = self.fields.get(&event.event_type)?;
        let mut value = event.data_value();
        for part in path.split('.') {
            value = value.get(part)?;
        }
        Some(value.to_string())
    }
}

type Key = (Channel, Box<str>, Option<String>);

struct Last {
    event: Arc<Event>,
    deltas_since_full: u32,
}

/// One connection's delta memory.
pub struct DeltaState {
    keys: Arc<DeltaKeys>,
    last: HashMap<Key, Last>,
}

impl DeltaState {
    pub fn new(keys: Arc<DeltaKeys>) -> Self {
        Self {
            keys,
            last: HashMap::new(),
        }
    }

    /// Decides how `event` (received through its channel `channel_index`) goes out: returns
    /// the delta message when `make_delta(base)` gives one, `None` for the full event; and
    /// remembers `event` as the key's last one either way.
    pub fn next(
        &mut self,
        event: &Arc<Event>,
        channel_index: usize,
        make_delta: impl FnOnce(&Event) -> Option<Bytes>,
    ) -> Option<Bytes> {
        let key = (
            event.channels[channel_index].clone(),
            Box::from(event.event_type.as_str()),
            self.keys.key_of(event),
        );
        let delta = match self.last.get(&key) {
            Some(last) if last.deltas_since_full < self.keys.full_every => make_delta(&last.event),
            _ => None,
        };
        let deltas_since_full = match (&delta, self.last.get(&key)) {
            (Some(_), Some(last)) => last.deltas_since_full + 1,
            _ => 0,
        };
        if self.last.len() >= MAX_KEYS && !self.last.contains_key(&key) {
            self.last.clear();
        }
        self.last.insert(
            key,
            Last {
                event: event.clone(),
                deltas_since_full,
            },
        );
        delta
    }

    /// Forgets every key of `channel`: its next events go out in full (after a resume).
    pub fn forget_channel(&mut self, channel: &Channel) {
        self.last.retain(|(c, _, _), _| c != channel);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, value::RawValue};

    use super::*;

    fn event(seq: u64, event_type: &str, data: Value) -> Arc<Event> {
        Arc::new(Event::new(
            seq,
            format!("k{seq}"),
            vec![Channel::parse("agent/a1").unwrap()],
            event_type.into(),
            0,
            RawValue::from_string(data.to_string()).unwrap(),
        ))
    }

    #[test]
    fn diff_then_apply_gives_the_next_data_back() {
        let base = json!({"agent_id":"a1","state":"idle","elo":1200,"gone":true,"deep":{"x":1}});
        let next = json!({"agent_id":"a1","state":"playing","elo":1200,"deep":{"x":2},"new":[1]});
        let d = diff(&base, &next).unwrap();
        assert_eq!(
            d.set,
            *json!({"state":"playing","deep":{"x":2},"new":[1]})
                .as_object()
                .unwrap()
        );
        assert_eq!(d.unset, vec!["gone".to_string()]);
        assert_eq!(apply(&base, &d.set, &d.unset), next);
    }

    #[test]
    fn no_delta_when_every_field_changed_or_not_objects() {
        assert!(diff(&json!({"a":1}), &json!({"a":2})).is_none());
        assert!(diff(&json!([1]), &json!({"a":2})).is_none());
        assert_eq!(
            diff(&json!({"a":1,"b":2}), &json!({"a":1,"b":2}))
                .unwrap()
                .set
                .len(),
            0
        );
    }

    fn keys(full_every: u32) -> Arc<DeltaKeys> {
        let fields = HashMap::from([("agent_status".to_string(), "agent_id".to_string())]);
        Arc::new(DeltaKeys::new(fields, full_every))
    }

    fn make(base: &Event) -> Option<Bytes> {
        Some(Bytes::from(base.seq.to_string()))
    }

    #[test]
    fn first_event_of_each_key_is_full_then_deltas_from_the_last_one() {
        let mut state = DeltaState::new(keys(100));
        let a1 = event(1, "agent_status", json!({"agent_id":"a1","s":1}));
        let a2 = event(2, "agent_status", json!({"agent_id":"a2","s":1}));
        let a1b = event(3, "agent_status", json!({"agent_id":"a1","s":2}));
        assert!(state.next(&a1, 0, make).is_none());
        assert!(
            state.next(&a2, 0, make).is_none(),
            "another key starts full"
        );
        assert_eq!(
            state.next(&a1b, 0, make).unwrap(),
            "1",
            "base is a1's last event"
        );
        let other_type = event(4, "agent_progress", json!({"agent_id":"a1"}));
        assert!(state.next(&other_type, 0, make).is_none());
    }

    #[test]
    fn a_full_event_comes_at_least_every_n_deltas_and_after_forgetting() {
        let mut state = DeltaState::new(keys(3));
        let kinds: Vec<bool> = (1..=9)
            .map(|seq| {
                let e = event(seq, "agent_status", json!({"agent_id":"a1","s":seq}));
                state.next(&e, 0, make).is_some()
            })
            .collect();
        assert_eq!(
            kinds,
            [false, true, true, true, false, true, true, true, false]
        );
        state.forget_channel(&Channel::parse("agent/a1").unwrap());
        let e = event(10, "agent_status", json!({"agent_id":"a1","s":10}));
        assert!(state.next(&e, 0, make).is_none());
    }

    #[test]
    fn a_refused_delta_makes_the_event_the_new_full_base() {
        let mut state = DeltaState::new(keys(100));
        state.next(&event(1, "t", json!({"a":1})), 0, make);
        assert!(state
            .next(&event(2, "t", json!({"a":2})), 0, |_| None)
            .is_none());
        assert_eq!(
            state.next(&event(3, "t", json!({"a":3})), 0, make).unwrap(),
            "2"
        );
    }
}
