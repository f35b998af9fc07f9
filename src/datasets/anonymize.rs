//! Anonymized exports: agent and user ids replaced by a keyed hash, stable within a dataset
//! (one random key per dataset, stored with it) and unlinkable across datasets.
//!
//! Replaced, at any depth of `data`:
//! - the value of every field named `agent_id`, `user_id`, or ending in `_agent_id` or
//!   `_user_id` (e.g. `winner_agent_id`), and every element of a field named `agent_ids` or
//!   `user_ids`;
//! - the `id` field of every object held under a key `agent`, `user`, or starting with
//!   `agent_` or `user_` (e.g. `agent_a: {"id": ..}`).
//!
//! and the id of every `agent/<id>` or `user/<id>` channel of the event. A string or number
//! id becomes `anon_` + 16 hex digits of BLAKE3 keyed with the dataset's key, over the id's
//! text; other values are left as they are.

use std::sync::Arc;

use serde_json::{value::RawValue, Map, Value};

use crate::event::{Channel, Event};

pub struct Anonymizer {
    key: [u8; 32],
}

impl Anonymizer {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    fn pseudonym(&self, id: &str) -> String {
        let hash = blake3::keyed_hash(&self.key, id.as_bytes());
        format!("anon_{}", &hash.to_hex()[..16])
    }

    fn replace(&self, value: &mut Value) {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return,
        };
        *value = Value::String(self.pseudonym(&text));
    }

    fn walk_object(&self, fields: &mut Map<String, Value>) {
        for (name, value) in fields.iter_mut() {
            if is_id_field(name) {
                self.replace(value);
            } else if name == "agent_ids" || name == "user_ids" {
                if let Value::Array(items) = value {
                    items.iter_mut().for_each(|item| self.replace(item));
                }
            } else {
                if is_identity_object(name) {
                    if let Some(id) = value.as_object_mut().and_then(|o| o.get_mut("id")) {
                        self.replace(id);
                    }
                }
                self.walk(value);
            }
        }
    }

    fn walk(&self, value: &mut Value) {
        match value {
            Value::Object(fields) => self.walk_object(fields),
            Value::Array(items) => items.iter_mut().for_each(|item| self.walk(item)),
            _ => {}
        }
    }

    /// The event with its ids replaced; seq, id, type and time unchanged.
    pub fn event(&self, event: &Event) -> Arc<Event> {
        let mut data = event.data_value().clone();
        self.walk(&mut data);
        let channels = event
            .channels
            .iter()
            .map(|channel| match channel.kind() {
                kind @ ("agent" | "user") => {
                    let id = &channel.as_str()[kind.len() + 1..];
                    Channel::from_parts(kind, &self.pseudonym(id))
                        .expect("a pseudonym is a valid id")
                }
                _ => channel.clone(),
            })
            .collect();
        let data = RawValue::from_string(data.to_string()).expect("serialized JSON is valid");
        Arc::new(Event::with_ts(
            event.seq,
            event.id.clone(),
            channels,
            event.event_type.clone(),
            (event.ts_ms, event.ts.clone()),
            data,
        ))
    }
}

fn is_id_field(name: &str) -> bool {
    matches!(name, "agent_id" | "user_id")
        || name.ends_with("_agent_id")
        || name.ends_with("_user_id")
}

fn is_identity_object(name: &str) -> bool {
    matches!(name, "agent" | "user") || name.starts_with("agent_") || name.starts_with("user_")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn replaces_the_defined_fields_only_and_stably() {
        let a = Anonymizer::new([7; 32]);
        let event = Event::new(
            4,
            "k".into(),
            vec![
                Channel::parse("agent/bob").unwrap(),
                Channel::parse("arena/a1").unwrap(),
            ],
            "training_data".into(),
            0,
            RawValue::from_string(
                json!({"agent_id":"bob","user_id":42,"score":1,"winner_agent_id":"bob",
                       "agent_ids":["bob","eve"],"agent_a":{"id":"eve","name":"x"},
                       "rounds":[{"user":{"id":"u9"}}],"id":"keep"})
                .to_string(),
            )
            .unwrap(),
        );
        let out = a.event(&event);
        let data = out.data_value();
        let bob = a.pseudonym("bob");
        assert!(bob.starts_with("anon_") && bob.len() == 21);
        assert_eq!(data["agent_id"], bob.as_str());
        assert_eq!(data["winner_agent_id"], bob.as_str());
        assert_eq!(data["user_id"], a.pseudonym("42").as_str());
        assert_eq!(data["agent_ids"], json!([bob, a.pseudonym("eve")]));
        assert_eq!(
            data["agent_a"],
            json!({"id": a.pseudonym("eve"), "name": "x"})
        );
        assert_eq!(data["rounds"][0]["user"]["id"], a.pseudonym("u9").as_str());
        assert_eq!(
            (data["score"].clone(), data["id"].clone()),
            (json!(1), json!("keep"))
        );
        assert_eq!(out.channels[0].as_str(), format!("agent/{bob}"));
        assert_eq!(out.channels[1].as_str(), "arena/a1");
        assert_ne!(
            Anonymizer::new([8; 32]).pseudonym("bob"),
            bob,
            "keyed per dataset"
        );
    }
}
