//! What a dataset says about its data points, computed once while it is sealed:
//! `data_points_count`, `source_universities` and `quality_score`.
//!
//! - A *source university* is the `university_id` field of an event's data (a string, or a
//!   number written as text), or the id of a `university/<id>` channel the event was
//!   published to. `source_universities` lists them distinct, sorted.
//! - `quality_score` is the share of data points that are *usable*: complete (the data
//!   object has at least one field and no top-level field is `null`) and not a duplicate (no
//!   earlier point of the dataset has the same `event_type` and identical data). Rounded to
//!   four decimals; 0 for an empty dataset.

use std::{
    collections::{BTreeSet, HashSet},
    hash::{Hash, Hasher},
};

use serde_json::Value;

use crate::event::Event;

const UNIVERSITY_FIELD: &str = "university_id";
const UNIVERSITY_KIND: &str = "university";

#[derive(Debug, Default)]
pub struct DatasetStats {
    count: u64,
    usable: u64,
    universities: BTreeSet<String>,
    /// Hashes of (event_type, data) seen: 8 bytes per point, not the points themselves.
    seen: HashSet<u64>,
}

impl DatasetStats {
    pub fn add(&mut self, event: &Event) {
        self.count += 1;
        let data = event.data_value();
        match data.get(UNIVERSITY_FIELD) {
            Some(Value::String(id)) => {
                self.universities.insert(id.clone());
            }
            Some(Value::Number(n)) => {
                self.universities.insert(n.to_string());
            }
            _ => {}
        }
        for channel in &event.channels {
            if channel.kind() == UNIVERSITY_KIND {
                let id = &channel.as_str()[UNIVERSITY_KIND.len() + 1..];
                self.universities.insert(id.to_string());
            }
        }
        let complete = data
            .as_object()
            .is_some_and(|fields| !fields.is_empty() && fields.values().all(|v| !v.is_null()));
        // `DefaultHasher::new()` has fixed keys: the same points always hash alike.
        let mut hasher = std::hash::DefaultHasher::new();
        event.event_type.hash(&mut hasher);
        event.data.get().hash(&mut hasher);
        let first_time = self.seen.insert(hasher.finish());
        if complete && first_time {
            self.usable += 1;
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn source_universities(&self) -> Vec<String> {
        self.universities.iter().cloned().collect()
    }

    pub fn quality_score(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        (self.usable as f64 / self.count as f64 * 10_000.0).round() / 10_000.0
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;
    use crate::event::Channel;

    fn event(channels: &[&str], data: &str) -> Event {
        Event::new(
            1,
            "k".into(),
            channels
                .iter()
                .map(|c| Channel::parse(c).unwrap())
                .collect(),
            "training_data".into(),
            0,
            RawValue::from_string(data.into()).unwrap(),
        )
    }

    #[test]
    fn counts_universities_and_quality() {
        let mut stats = DatasetStats::default();
        stats.add(&event(&["agent/a"], r#"{"university_id":"u2","x":1}"#));
        stats.add(&event(&["agent/a"], r#"{"university_id":"u2","x":1}"#)); // duplicate
        stats.add(&event(&["university/u1"], r#"{"x":null}"#)); // incomplete
        stats.add(&event(&["agent/b"], r#"{"university_id":7,"x":2}"#));
        stats.add(&event(&["agent/b"], "{}")); // incomplete
        assert_eq!(stats.count(), 5);
        assert_eq!(stats.source_universities(), vec!["7", "u1", "u2"]);
        assert_eq!(stats.quality_score(), 0.4);
        assert_eq!(DatasetStats::default().quality_score(), 0.0);
    }
}
