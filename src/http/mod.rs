//! HTTP routes: the router, `/health`, and helpers shared by the handlers (credentials,
//! body reading, content negotiation). Handlers live in one file per resource.

mod admin;
mod datasets;
mod events;

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{header, HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::json;

use crate::{app::AppState, auth::Principal, error::ApiError, protocol};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(admin::metrics))
        .route("/api/v1/connections", get(admin::list_connections))
        .route(
            "/api/v1/connections/{client_id}",
            axum::routing::delete(admin::disconnect),
        )
        .route("/api/v1/channels", get(admin::list_channels))
        .route("/api/v1/broadcast", post(admin::broadcast))
        .route("/api/v1/events", post(events::publish))
        .route("/api/v1/channels/{kind}/{id}/events", get(events::history))
        .route(
            "/api/v1/datasets",
            post(datasets::create).get(datasets::list),
        )
        .route(
            "/api/v1/datasets/{id}",
            get(datasets::get).delete(datasets::delete),
        )
        .route("/api/v1/datasets/{id}/export", get(datasets::export))
        .route("/ws", get(crate::ws::multiplexed))
        .route("/ws/{kind}/{id}", get(crate::ws::single_channel))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
}

async fn health(State(app): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "head": app.log.head(),
        "epoch": app.log.epoch(),
        "connections": app.hub.connection_count(),
        "subscriptions": app.hub.subscription_count(),
    }))
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub fn principal(app: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    app.auth.authenticate(bearer_token(headers))
}

/// Reads a whole request body, refusing more than the configured limit with 413.
pub async fn read_body(app: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let limit = app.config.limits.max_http_body_bytes;
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(format!("request bodies are limited to {limit} bytes")))
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| p.trim().replace(' ', "") == "q=0");
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

/// A complete body with its content type, gzip-compressed when the client accepts it.
pub fn negotiated_body(headers: &HeaderMap, content_type: &'static str, body: Vec<u8>) -> Response {
    let mut response = if accepts_gzip(headers) {
        let mut response = protocol::gzip(&body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        response
    } else {
        body.into_response()
    };
    let response_headers = response.headers_mut();
    response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response_headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_negotiation() {
        let mut h = HeaderMap::new();
        assert!(!accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("deflate, gzip;q=0.8"),
        );
        assert!(accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0"),
        );
        assert!(!accepts_gzip(&h));
    }

    #[test]
    fn bearer() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&h), None);
    }
}
