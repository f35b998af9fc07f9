//! `POST /api/v1/events` (publish) and `GET /api/v1/channels/{kind}/{id}/events` (history).

use std::collections::HashMap;

use axum::{
    body::Body,
    extract::{Path, Query, State},
    http::{header, HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use serde_json::{json, value::RawValue};

use super::{negotiated_body, principal, read_body};
use crate::{
    app::AppState,
    error::ApiError,
    event::{Channel, Event},
    log::ReadRange,
    protocol::{self, query},
    publish::{parse_body, BodyFormat},
};

pub async fn publish(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let who = principal(&app, &headers)?;
    // Checked before the body is read: reading it is the cost the limit protects.
    if let Err(wait) = app.publish_rate.check(&who.user) {
        let limit = app.publish_rate.per_second();
        return Ok(ApiError::rate_limited_response(
            format!("at most {limit} publish requests per second; request refused"),
            limit,
            wait,
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = BodyFormat::from_content_type(content_type)?;
    let body = read_body(&app, body).await?;
    let parsed = parse_body(format, &body, app.config.limits.max_batch_events)?;
    for (index, event) in parsed.events.iter().enumerate() {
        if let Some(channel) = event.channels.iter().find(|c| !who.can_publish(c)) {
            let e = ApiError::forbidden(format!("the token does not grant publish on {channel}"));
            return Err(if parsed.is_batch {
                e.in_batch_item(index)
            } else {
                e
            });
        }
    }
    let outcomes = app.publisher.publish(parsed.events).await?;
    let answer = if parsed.is_batch {
        json!({ "seqs": outcomes.iter().map(|o| o.seq).collect::<Vec<_>>() })
    } else if outcomes[0].duplicate {
        json!({ "seq": outcomes[0].seq, "duplicate": true })
    } else {
        json!({ "seq": outcomes[0].seq })
    };
    Ok(Json(answer).into_response())
}

/// Most events one history page may hold.
const MAX_PAGE: usize = 10_000;
const DEFAULT_PAGE: usize = 100;
/// Events examined per request when `types` filters most of them out; `next` then points
/// past what was examined so the client continues from there.
const SCAN_BUDGET: usize = 100_000;

struct HistoryQuery {
    since: u64,
    until: u64,
    limit: usize,
    types: Option<Vec<String>>,
    format: HistoryFormat,
    epoch: Option<String>,
}

#[derive(Clone, Copy)]
enum HistoryFormat {
    Json,
    Ndjson,
    Msgpack,
}

fn parse_query(query: &HashMap<String, String>) -> Result<HistoryQuery, ApiError> {
    let limit = match query.get("limit") {
        None => DEFAULT_PAGE,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit must be 1 to {MAX_PAGE}"
                )))
            }
        },
    };
    let format = match query.get("format").map(String::as_str) {
        None | Some("json") => HistoryFormat::Json,
        Some("ndjson") | Some("jsonl") => HistoryFormat::Ndjson,
        Some("msgpack") => HistoryFormat::Msgpack,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format `{other}` is not one of json, ndjson, msgpack"
            )))
        }
    };
    Ok(HistoryQuery {
        since: query::cursor(query, "since")?.unwrap_or(0),
        until: query::cursor(query, "until")?.unwrap_or(u64::MAX),
        limit,
        types: query::types(query),
        format,
        epoch: query::epoch(query),
    })
}

pub async fn history(
    State(app): State<AppState>,
    Path((kind, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = principal(&app, &headers)?;
    let channel = Channel::from_parts(&kind, &id)?;
    if !who.can_subscribe(&channel) {
        return Err(ApiError::forbidden(format!(
            "the token does not grant subscribe on {channel}"
        )));
    }
    let q = parse_query(&query)?;
    let position = app.log.position(&channel).await?;
    let reason = if q.epoch.as_deref().is_some_and(|e| e != app.log.epoch()) {
        Some("epoch_mismatch")
    } else if q.since > position.head {
        Some("future_cursor")
    } else if q.since > 0 && q.since < position.removed_upto {
        Some("expired")
    } else {
        None
    };

    let mut events: Vec<std::sync::Arc<Event>> = Vec::new();
    let mut scanned_upto = q.since;
    let mut scanned = 0;
    let channels = [channel.clone()];
    if reason != Some("epoch_mismatch") {
        while events.len() < q.limit && scanned < SCAN_BUDGET {
            let want = q.limit - events.len();
            let range = ReadRange {
                channels: &channels,
                after: scanned_upto,
                until: q.until,
                limit: want,
            };
            let page = app.log.read(range).await?;
            let exhausted = page.len() < want;
            scanned += page.len();
            for event in page {
                scanned_upto = event.seq;
                if q.types
                    .as_ref()
                    .is_none_or(|types| types.iter().any(|t| *t == event.event_type))
                {
                    events.push(event);
                }
            }
            if exhausted {
                break;
            }
        }
    }

    let (body, content_type) = match q.format {
        HistoryFormat::Json => {
            let events = events
                .iter()
                .map(|event| {
                    let mut out = Vec::with_capacity(128);
                    protocol::write_stored_event_json(&mut out, event, Some(&channel));
                    RawValue::from_string(String::from_utf8(out).expect("JSON is UTF-8"))
                        .expect("valid JSON")
                })
                .collect();
            let page = HistoryPage {
                events,
                next: scanned_upto.to_string(),
                recovered: reason.is_none(),
                reason,
                head: position.head,
            };
            (serde_json::to_vec(&page).expect("json"), "application/json")
        }
        HistoryFormat::Ndjson => {
            let mut out = Vec::new();
            for event in &events {
                protocol::write_stored_event_json(&mut out, event, Some(&channel));
                out.push(b'\n');
            }
            (out, "application/x-ndjson")
        }
        HistoryFormat::Msgpack => {
            let mut out = Vec::new();
            for event in &events {
                protocol::write_stored_event_msgpack(&mut out, event, Some(&channel));
            }
            (out, "application/msgpack")
        }
    };
    let mut response = negotiated_body(&headers, content_type, body);
    // The line formats have no envelope: the page position travels in headers.
    let h = response.headers_mut();
    h.insert("streamlog-next", scanned_upto.into());
    h.insert(
        "streamlog-recovered",
        HeaderValue::from_static(if reason.is_none() { "true" } else { "false" }),
    );
    Ok(response)
}

#[derive(Serialize)]
struct HistoryPage {
    events: Vec<Box<RawValue>>,
    next: String,
    recovered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    head: u64,
}
