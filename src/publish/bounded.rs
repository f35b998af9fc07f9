//! Reads a publish body — one event object, or an array of them — and refuses an array of
//! more than the batch limit *while* it is read. Parsing the whole array first would let a
//! body of a few MiB of tiny items (`[{},{},…]`) become millions of values in memory before
//! the count could be checked.

use std::{cell::Cell, fmt, marker::PhantomData};

use serde::{
    de::{self, value::MapAccessDeserializer, DeserializeSeed, MapAccess, SeqAccess, Visitor},
    Deserialize,
};
use serde_json::Value;

/// Deserializes to `(items, is_batch)`, each item a `T` (a JSON value, or an event read
/// straight into its fields). An array longer than `max` fails, with `overflowed` set so
/// that the caller can answer 413 rather than 400.
pub struct BatchSeed<'a, T = Value> {
    max: usize,
    overflowed: &'a Cell<bool>,
    item: PhantomData<T>,
}

impl<'a, T> BatchSeed<'a, T> {
    pub fn new(max: usize, overflowed: &'a Cell<bool>) -> Self {
        Self {
            max,
            overflowed,
            item: PhantomData,
        }
    }
}

/// Why a JSON body could not be read into items.
pub enum Unread {
    /// An array longer than the limit.
    TooMany,
    Invalid(serde_json::Error),
}

/// Reads a whole JSON body (nothing may follow the value) as `(items, is_batch)`.
pub fn read_json<T: de::DeserializeOwned>(
    body: &[u8],
    max: usize,
) -> Result<(Vec<T>, bool), Unread> {
    let overflowed = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(body);
    BatchSeed::new(max, &overflowed)
        .deserialize(&mut de)
        .and_then(|parsed| {
            de.end()?;
            Ok(parsed)
        })
        .map_err(|e| {
            if overflowed.get() {
                Unread::TooMany
            } else {
                Unread::Invalid(e)
            }
        })
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for BatchSeed<'_, T> {
    type Value = (Vec<T>, bool);

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BatchSeed<'_, T> {
    type Value = (Vec<T>, bool);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event object or an array of them")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<T>()? {
            if items.len() == self.max {
                self.overflowed.set(true);
                return Err(de::Error::custom("too many events"));
            }
            items.push(item);
        }
        Ok((items, true))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let value = T::deserialize(MapAccessDeserializer::new(map))?;
        Ok((vec![value], false))
    }
}
