//! The WebSocket gateway: `GET /ws` and `GET /ws/{kind}/{id}`. This module checks the
//! request (query, credentials, connection limits) before the upgrade, then starts the
//! connection's reader task and session.
//!
//! Architecture invariant: `ws/` is the only code that touches fastwebsockets.

mod publishing;
mod reader;
mod session;
mod sink;
mod subscriptions;

use std::{
    collections::HashMap,
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use axum::{
    extract::{Path, Query, State},
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use fastwebsockets::{upgrade::IncomingUpgrade, Role, WebSocket};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::mpsc;

pub use session::close;
use session::{InitialSubscription, Session, SessionParams};
use sink::{FrameSink, Gather};

use crate::{
    app::AppState,
    error::ApiError,
    event::{now_ms, Channel},
    filter::Filter,
    http::bearer_token,
    protocol::{Cursor, Format},
};

/// Inbound messages read ahead of the session. Small: a client that floods is slowed down
/// by TCP rather than buffered here.
const INBOUND_DEPTH: usize = 16;

pub async fn multiplexed(
    State(app): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: IncomingUpgrade,
) -> Response {
    accept(app, query, headers, None, upgrade).await
}

pub async fn single_channel(
    State(app): State<AppState>,
    Path((kind, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: IncomingUpgrade,
) -> Response {
    match Channel::from_parts(&kind, &id) {
        Ok(channel) => accept(app, query, headers, Some(channel), upgrade).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The connection options of the query string.
struct ConnectOptions {
    format: Format,
    since: Option<u64>,
    epoch: Option<String>,
    types: Option<Vec<String>>,
}

fn parse_options(query: &HashMap<String, String>) -> Result<ConnectOptions, ApiError> {
    let format = match query.get("format") {
        None => Format::Json,
        Some(name) => Format::parse(name).ok_or_else(|| {
            ApiError::bad_request(format!("format `{name}` is not supported; use json"))
        })?,
    };
    if let Some(compress) = query.get("compress") {
        // Accepting gzip lets the server send it; it never has to.
        if compress != "gzip" && compress != "none" {
            return Err(ApiError::bad_request(format!(
                "compress `{compress}` is not supported; use gzip"
            )));
        }
    }
    if let Some(delta) = query.get("delta") {
        if delta != "true" && delta != "false" {
            return Err(ApiError::bad_request("delta must be true or false"));
        }
    }
    let since = match query.get("since") {
        None => None,
        Some(text) => Some(
            Cursor::parse(text)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("since `{text}` is not a cursor (a seq)"))
                })?
                .0,
        ),
    };
    let types = query.get("types").map(|list| {
        list.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect()
    });
    Ok(ConnectOptions {
        format,
        since,
        epoch: query.get("epoch").cloned(),
        types,
    })
}

async fn accept(
    app: AppState,
    query: HashMap<String, String>,
    headers: HeaderMap,
    channel: Option<Channel>,
    upgrade: IncomingUpgrade,
) -> Response {
    let options = match parse_options(&query) {
        Ok(options) => options,
        Err(e) => return e.into_response(),
    };
    let token = query
        .get("token")
        .map(String::as_str)
        .or_else(|| bearer_token(&headers));
    let principal = match app.auth.authenticate(token) {
        Ok(principal) => principal,
        Err(e) => return e.into_response(),
    };
    if let Some(channel) = &channel {
        if !principal.can_subscribe(channel) {
            return ApiError::forbidden(format!("the token does not grant subscribe on {channel}"))
                .into_response();
        }
    }
    let (response, upgraded) = match upgrade.upgrade() {
        Ok(parts) => parts,
        Err(e) => {
            return ApiError::bad_request(format!("bad WebSocket upgrade: {e}")).into_response()
        }
    };
    let limits = &app.config.limits;
    let refusal = if app.hub.connection_count() >= limits.max_connections {
        Some("connection limit reached")
    } else if app.hub.connections_of(&principal.user) >= limits.max_connections_per_user {
        Some("connection limit per user reached")
    } else {
        None
    };
    let initial = channel.map(|channel| {
        let (filter, filter_source) = match options.types {
            Some(types) => (
                Filter::only_types(types.clone()),
                serde_json::json!({ "event_types": types }),
            ),
            None => (Filter::all(), Value::Null),
        };
        InitialSubscription {
            channel,
            since: options.since,
            epoch: options.epoch,
            filter,
            filter_source,
        }
    });
    let params = SessionParams {
        principal,
        format: options.format,
    };
    tokio::spawn(async move {
        let ws = match upgraded.await {
            Ok(ws) => ws,
            Err(error) => {
                tracing::debug!(%error, "upgrade did not complete");
                return;
            }
        };
        run_connection(app, ws, params, initial, refusal).await;
    });
    response.into_response()
}

async fn run_connection(
    app: AppState,
    ws: WebSocket<TokioIo<hyper::upgrade::Upgraded>>,
    params: SessionParams,
    initial: Option<InitialSubscription>,
    refusal: Option<&'static str>,
) {
    // Nothing has been read from the upgraded stream yet, so taking it out of the
    // WebSocket loses nothing; the writing half gets the gathering buffer.
    let (read_half, write_half) = tokio::io::split(ws.into_inner());
    let (read, write) =
        fastwebsockets::after_handshake_split(read_half, Gather::new(write_half), Role::Server);
    let timeout = Duration::from_secs(app.config.delivery.write_timeout_secs);
    let mut sink = FrameSink::new(write, timeout);
    if let Some(reason) = refusal {
        sink.close(close::TRY_AGAIN_LATER, reason).await;
        return;
    }
    let client_id = mint_client_id();
    let (conn, queue) = app.hub.connect(
        client_id,
        params.principal.user.clone(),
        app.config.delivery.queue_capacity,
    );
    let last_seen_ms = Arc::new(AtomicU64::new(now_ms()));
    let (inbound_tx, inbound) = mpsc::channel(INBOUND_DEPTH);
    let reader = reader::spawn(
        read,
        app.config.limits.max_message_bytes,
        inbound_tx,
        last_seen_ms.clone(),
    );
    tracing::debug!(client_id = %conn.client_id, user = %conn.user, "connected");
    let session = Session::new(
        app.clone(),
        conn.clone(),
        queue,
        inbound,
        sink,
        &params,
        last_seen_ms,
    );
    session.run(initial).await;
    reader.abort();
    app.hub.disconnect(conn.id);
    tracing::debug!(client_id = %conn.client_id, "disconnected");
}

fn mint_client_id() -> String {
    use rand::Rng;
    format!("c{:016x}", rand::rng().random::<u64>())
}
