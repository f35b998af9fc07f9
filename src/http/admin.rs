//! Operator endpoints: `/metrics` (open, or for `metrics` and `admin` tokens when
//! `auth.metrics_public` is off), and the admin API (admin permission in jwt mode):
//! connections (list, disconnect), channels, and broadcasts. Every admin action is
//! written to the audit log.

use std::collections::HashMap;

use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use serde_json::{json, value::RawValue, Value};

use super::principal;
use crate::{
    app::AppState,
    auth::Principal,
    error::ApiError,
    event::{format_ts, Channel, NewEvent, BROADCAST_CHANNEL},
    metrics::{ScrapeSnapshot, METRICS},
};

pub async fn metrics(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !app.config.auth.metrics_public {
        permitted(
            &app,
            &headers,
            Principal::can_read_metrics,
            "/metrics needs the metrics or admin permission",
        )?;
    }
    let stats = app.log.stats();
    let snapshot = ScrapeSnapshot {
        queue_depths: app
            .hub
            .connections()
            .iter()
            .map(|c| c.queue_depth())
            .collect(),
        log_size_bytes: stats.size_on_disk,
        retained_events: stats.retained_index_entries,
        log_head: app.log.head(),
    };
    let mut response = METRICS.render(&snapshot).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

fn admin(app: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    permitted(
        app,
        headers,
        Principal::is_admin,
        "this endpoint needs the admin permission",
    )
}

/// The request's principal, if `may` lets it in: 401 without valid credentials, 403
/// (`refusal`) without the permission.
fn permitted(
    app: &AppState,
    headers: &HeaderMap,
    may: fn(&Principal) -> bool,
    refusal: &str,
) -> Result<Principal, ApiError> {
    let who = principal(app, headers)?;
    if !may(&who) {
        return Err(ApiError::forbidden(refusal));
    }
    Ok(who)
}

pub async fn list_connections(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&app, &headers)?;
    let mut connections: Vec<Value> = app
        .hub
        .connections()
        .iter()
        .map(|c| {
            json!({
                "client_id": c.client_id,
                "user": c.user,
                "remote_addr": c.info.remote_addr.map(|a| a.to_string()),
                "connected_at": format_ts(c.info.connected_at_ms),
                "subscriptions": app.hub.subscriptions_of(c.id),
                "queue_depth": c.queue_depth(),
                "messages_sent": c.stats.messages_sent.load(std::sync::atomic::Ordering::Relaxed),
                "bytes_sent": c.stats.bytes_sent.load(std::sync::atomic::Ordering::Relaxed),
            })
        })
        .collect();
    connections.sort_by(|a, b| a["connected_at"].as_str().cmp(&b["connected_at"].as_str()));
    Ok(Json(json!({ "connections": connections })))
}

pub async fn disconnect(
    State(app): State<AppState>,
    Path(client_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = admin(&app, &headers)?;
    let connection = app
        .hub
        .find(&client_id)
        .ok_or_else(|| ApiError::not_found(format!("no connection `{client_id}`")))?;
    let reason = query
        .get("reason")
        .map(|r| r.chars().take(100).collect::<String>())
        .unwrap_or_else(|| "disconnected by an administrator".into());
    tracing::info!(target: "streamlog::audit", admin = %who.user, %client_id, user = %connection.user, %reason, "admin disconnected a connection");
    connection.kick(reason.clone());
    Ok(Json(json!({ "disconnected": client_id, "reason": reason })))
}

pub async fn list_channels(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&app, &headers)?;
    let channels: Vec<Value> = app
        .log
        .channels()
        .await?
        .into_iter()
        .map(|c| {
            let subscribers =
                Channel::parse(&c.channel).map_or(0, |ch| app.hub.subscriber_count(&ch));
            json!({
                "channel": c.channel,
                "head": c.last_seq,
                "retained": c.retained,
                "removed_upto": c.removed_upto,
                "subscribers": subscribers,
            })
        })
        .collect();
    Ok(Json(
        json!({ "channels": channels, "head": app.log.head() }),
    ))
}

#[derive(Deserialize)]
struct Broadcast {
    #[serde(default = "default_level")]
    level: String,
    message: String,
    #[serde(default)]
    affected_components: Vec<String>,
}

fn default_level() -> String {
    "info".into()
}

const LEVELS: [&str; 4] = ["info", "warning", "error", "critical"];

pub async fn broadcast(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let who = admin(&app, &headers)?;
    let body = super::read_body(&app, body).await?;
    let b: Broadcast = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "a broadcast is {{\"level\",\"message\",\"affected_components\"}}: {e}"
        ))
    })?;
    if !LEVELS.contains(&b.level.as_str()) {
        return Err(ApiError::unprocessable(format!(
            "level must be one of {}",
            LEVELS.join(", ")
        )));
    }
    if b.message.is_empty() {
        return Err(ApiError::unprocessable("message must not be empty"));
    }
    let data = json!({ "level": b.level, "message": b.message, "affected_components": b.affected_components });
    let event = NewEvent {
        channels: vec![Channel::parse(BROADCAST_CHANNEL).expect("valid channel")],
        event_type: "broadcast".into(),
        data: RawValue::from_string(data.to_string()).expect("JSON"),
        idempotency_key: None,
    };
    let outcome = app.publisher.publish(vec![event]).await?;
    tracing::info!(target: "streamlog::audit", admin = %who.user, seq = outcome[0].seq, level = %b.level, "admin broadcast");
    Ok(Json(json!({ "seq": outcome[0].seq })))
}
