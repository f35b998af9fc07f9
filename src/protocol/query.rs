//! Query-string parameters that the history route and the WebSocket handshake both take:
//! cursors (`since`, `until`), the `types` list and the `epoch`, read the same way in both.

use std::collections::HashMap;

use super::Cursor;
use crate::error::ApiError;

pub type Query = HashMap<String, String>;

/// The cursor parameter `name`, if given; a 400 naming it when it is not a seq.
pub fn cursor(query: &Query, name: &str) -> Result<Option<u64>, ApiError> {
    query
        .get(name)
        .map(|text| {
            Cursor::parse(text).map(|c| c.0).ok_or_else(|| {
                ApiError::bad_request(format!("{name} `{text}` is not a cursor (a seq)"))
            })
        })
        .transpose()
}

/// `types=a,b`: the event types asked for (blank entries ignored), if given.
pub fn types(query: &Query) -> Option<Vec<String>> {
    query.get("types").map(|list| {
        list.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect()
    })
}

/// `epoch=…`, if given and not empty.
pub fn epoch(query: &Query) -> Option<String> {
    query.get("epoch").filter(|e| !e.is_empty()).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Query {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_cursors_types_and_epoch() {
        let q = query(&[("since", "42"), ("types", "a, ,b"), ("epoch", "")]);
        assert_eq!(cursor(&q, "since").unwrap(), Some(42));
        assert_eq!(cursor(&q, "until").unwrap(), None);
        assert_eq!(types(&q), Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(epoch(&q), None);
        let bad = query(&[("until", "x")]);
        let error = cursor(&bad, "until").unwrap_err();
        assert_eq!(error.message, "until `x` is not a cursor (a seq)");
    }
}
