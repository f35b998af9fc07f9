//! Subscription filters: which events of a channel a subscriber wants.
//!
//! `{"event_types":["competition_round"], "competition_id":"c7", "score":{"min":0.8}}` —
//! every key but `event_types` is a dot path into `data`, compared with a literal
//! (equality) or an object of operators `eq`, `ne`, `in`, `min`, `max` (all must hold).
//! Filters are parsed once, at subscribe time, and apply alike to live, resumed and
//! replayed events.

use serde_json::{Map, Value};

use crate::event::Event;

/// Largest filter accepted, in conditions, so one subscription cannot make every event
/// expensive to route.
const MAX_CONDITIONS: usize = 32;
const MAX_PATH_DEPTH: usize = 8;
const MAX_IN_VALUES: usize = 256;
/// Nesting of the whole filter object, literals included: comparing deep literals costs
/// every event, and nothing useful needs more.
const MAX_NESTING: usize = 8;
/// Size of the whole filter, counted as its JSON values plus the bytes of its strings and
/// keys: a subscription's filter is kept for its whole life and run on every event.
const MAX_FILTER_SIZE: usize = 16 * 1024;

#[derive(Debug, Clone, Default)]
pub struct Filter {
    event_types: Option<Vec<String>>,
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone)]
struct Condition {
    path: Vec<String>,
    ops: Vec<Op>,
}

#[derive(Debug, Clone)]
enum Op {
    Eq(Value),
    Ne(Value),
    In(Vec<Value>),
    Min(f64),
    Max(f64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter: {0}")]
pub struct FilterError(pub String);

fn err(message: impl Into<String>) -> FilterError {
    FilterError(message.into())
}

impl Filter {
    /// Everything passes.
    pub fn all() -> Self {
        Self::default()
    }

    pub fn only_types(types: Vec<String>) -> Self {
        Self {
            event_types: Some(types),
            conditions: Vec::new(),
        }
    }

    pub fn is_all(&self) -> bool {
        self.event_types.is_none() && self.conditions.is_empty()
    }

    pub fn parse(value: &Value) -> Result<Self, FilterError> {
        let map = match value {
            Value::Null => return Ok(Self::all()),
            Value::Object(map) => map,
            _ => return Err(err("filters must be an object")),
        };
        check_size(value)?;
        if map.len() > MAX_CONDITIONS {
            return Err(err(format!("at most {MAX_CONDITIONS} keys")));
        }
        let mut filter = Self::all();
        for (key, value) in map {
            if key == "event_types" {
                filter.event_types = Some(parse_types(value)?);
                continue;
            }
            let path: Vec<String> = key.split('.').map(str::to_string).collect();
            if path.len() > MAX_PATH_DEPTH || path.iter().any(String::is_empty) {
                return Err(err(format!("`{key}` is not a dot path into data")));
            }
            let ops = match value {
                Value::Object(ops) => parse_ops(key, ops)?,
                literal => vec![Op::Eq(literal.clone())],
            };
            filter.conditions.push(Condition { path, ops });
        }
        Ok(filter)
    }

    pub fn matches(&self, event: &Event) -> bool {
        if let Some(types) = &self.event_types {
            if !types.contains(&event.event_type) {
                return false;
            }
        }
        if self.conditions.is_empty() {
            return true;
        }
        let data = event.data_value();
        self.conditions.iter().all(|c| c.holds(data))
    }
}

/// Refuses filters nested deeper than `MAX_NESTING` or larger than `MAX_FILTER_SIZE`,
/// without recursing further than `MAX_NESTING` itself.
fn check_size(filter: &Value) -> Result<(), FilterError> {
    let mut size = 0usize;
    let mut pending = vec![(filter, 1usize)];
    while let Some((value, depth)) = pending.pop() {
        if depth > MAX_NESTING {
            return Err(err(format!("filters nest at most {MAX_NESTING} levels")));
        }
        size += 1;
        match value {
            Value::String(text) => size += text.len(),
            Value::Array(items) => pending.extend(items.iter().map(|v| (v, depth + 1))),
            Value::Object(map) => {
                for (key, v) in map {
                    size += key.len();
                    pending.push((v, depth + 1));
                }
            }
            _ => {}
        }
        if size > MAX_FILTER_SIZE {
            return Err(err(format!(
                "filters are limited to {MAX_FILTER_SIZE} bytes of keys and values"
            )));
        }
    }
    Ok(())
}

fn parse_types(value: &Value) -> Result<Vec<String>, FilterError> {
    let list = value
        .as_array()
        .ok_or_else(|| err("event_types must be a list of strings"))?;
    if list.len() > MAX_IN_VALUES {
        return Err(err(format!(
            "event_types holds at most {MAX_IN_VALUES} names"
        )));
    }
    list.iter()
        .map(|t| {
            t.as_str()
                .map(str::to_string)
                .ok_or_else(|| err("event_types must be a list of strings"))
        })
        .collect()
}

fn parse_ops(key: &str, ops: &Map<String, Value>) -> Result<Vec<Op>, FilterError> {
    if ops.is_empty() {
        return Err(err(format!("`{key}` has no operator")));
    }
    let number = |op: &str, v: &Value| {
        v.as_f64()
            .ok_or_else(|| err(format!("`{key}.{op}` must be a number")))
    };
    ops.iter()
        .map(|(op, v)| match op.as_str() {
            "eq" => Ok(Op::Eq(v.clone())),
            "ne" => Ok(Op::Ne(v.clone())),
            "in" => match v {
                Value::Array(values) if values.len() <= MAX_IN_VALUES => Ok(Op::In(values.clone())),
                _ => Err(err(format!(
                    "`{key}.in` must be a list of at most {MAX_IN_VALUES} values"
                ))),
            },
            "min" => Ok(Op::Min(number(op, v)?)),
            "max" => Ok(Op::Max(number(op, v)?)),
            other => Err(err(format!(
                "`{key}`: unknown operator `{other}`; use eq, ne, in, min or max"
            ))),
        })
        .collect()
}

impl Condition {
    fn holds(&self, data: &Value) -> bool {
        let found = self
            .path
            .iter()
            .try_fold(data, |value, segment| value.get(segment.as_str()));
        self.ops.iter().all(|op| match (op, found) {
            (Op::Eq(want), Some(v)) => json_eq(v, want),
            (Op::Ne(want), Some(v)) => !json_eq(v, want),
            (Op::Ne(_), None) => true,
            (Op::In(values), Some(v)) => values.iter().any(|want| json_eq(v, want)),
            (Op::Min(min), Some(v)) => v.as_f64().is_some_and(|x| x >= *min),
            (Op::Max(max), Some(v)) => v.as_f64().is_some_and(|x| x <= *max),
            (_, None) => false,
        })
    }
}

/// JSON equality where numbers compare by value (`1` equals `1.0`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, value::RawValue};

    use super::*;
    use crate::event::Channel;

    fn event(event_type: &str, data: Value) -> Event {
        Event::new(
            1,
            "id".into(),
            vec![Channel::parse("arena/a1").unwrap()],
            event_type.into(),
            0,
            RawValue::from_string(data.to_string()).unwrap(),
        )
    }

    #[test]
    fn contract_example() {
        let f = Filter::parse(&json!({
            "event_types": ["competition_round"],
            "competition_id": "c7",
            "score": {"min": 0.8}
        }))
        .unwrap();
        let hit = event(
            "competition_round",
            json!({"competition_id":"c7","score":0.9}),
        );
        assert!(f.matches(&hit));
        for miss in [
            event("agent_status", json!({"competition_id":"c7","score":0.9})),
            event(
                "competition_round",
                json!({"competition_id":"c8","score":0.9}),
            ),
            event(
                "competition_round",
                json!({"competition_id":"c7","score":0.5}),
            ),
            event("competition_round", json!({"competition_id":"c7"})),
        ] {
            assert!(!f.matches(&miss), "{:?}", miss.data);
        }
    }

    #[test]
    fn operators_and_paths() {
        let e = event("t", json!({"a":{"b":3},"tag":"x","n":1}));
        let cases = [
            (json!({"a.b": 3}), true),
            (json!({"a.b": 3.0}), true),
            (json!({"a.b": {"min": 1, "max": 3}}), true),
            (json!({"a.b": {"max": 2}}), false),
            (json!({"tag": {"in": ["y", "x"]}}), true),
            (json!({"tag": {"ne": "x"}}), false),
            (json!({"missing": {"ne": "x"}}), true),
            (json!({"missing": 1}), false),
            (json!({"tag": {"min": 0}}), false),
        ];
        for (filter, want) in cases {
            assert_eq!(
                Filter::parse(&filter).unwrap().matches(&e),
                want,
                "{filter}"
            );
        }
    }

    #[test]
    fn bad_filters_are_named() {
        for (bad, words) in [
            (json!([1]), "object"),
            (json!({"event_types": "x"}), "event_types"),
            (json!({"score": {"gt": 1}}), "unknown operator"),
            (json!({"score": {"min": "a"}}), "number"),
            (json!({"a..b": 1}), "dot path"),
            (json!({"x": {}}), "no operator"),
            (
                json!({"x": {"eq": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}}),
                "nest",
            ),
            (
                json!({"x": {"in": ["a".repeat(9000), "b".repeat(9000)]}}),
                "limited",
            ),
        ] {
            let e = Filter::parse(&bad).unwrap_err().to_string();
            assert!(e.contains(words), "{bad}: {e}");
        }
    }
}
