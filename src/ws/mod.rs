//! The WebSocket gateway: `GET /ws` and `GET /ws/{kind}/{id}`. This module checks the
//! request before the upgrade (query, origin, credentials, bans, connection limits; see
//! `handshake.rs`), then starts the connection's reader task and session.
//!
//! Architecture invariant: `ws/` is the only code that touches fastwebsockets.

mod handshake;
mod linger;
mod outbox;
mod publishing;
mod reader;
mod replay;
mod session;
mod sink;
mod subscriptions;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, Path, Query, State},
    http::{header, HeaderMap},
    response::{IntoResponse, Response},
};
use fastwebsockets::{upgrade::IncomingUpgrade, Role, WebSocket};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::Instrument;

pub use session::close;
use session::{InitialSubscription, Session, SessionParams};
use sink::FrameSink;

use crate::{
    app::AppState,
    error::ApiError,
    event::{now_ms, Channel},
    fanout::{ConnectionInfo, ConnectionStats, Slot, SlotRefusal},
    filter::Filter,
    metrics::METRICS,
    protocol::{query, Format, Wire},
};

/// Inbound messages read ahead of the session. Small: a client that floods is slowed down
/// by TCP rather than buffered here.
const INBOUND_DEPTH: usize = 16;

pub async fn multiplexed(
    State(app): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: IncomingUpgrade,
) -> Response {
    accept(app, remote, query, headers, Ok(None), upgrade).await
}

pub async fn single_channel(
    State(app): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Path((kind, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: IncomingUpgrade,
) -> Response {
    let channel = Channel::from_parts(&kind, &id)
        .map(Some)
        .map_err(ApiError::from);
    accept(app, remote, query, headers, channel, upgrade).await
}

/// The connection options of the query string.
struct ConnectOptions {
    format: Format,
    gzip: bool,
    delta: bool,
    since: Option<u64>,
    epoch: Option<String>,
    types: Option<Vec<String>>,
}

fn parse_options(query: &HashMap<String, String>) -> Result<ConnectOptions, ApiError> {
    let format = match query.get("format") {
        None => Format::Json,
        Some(name) => Format::parse(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "format `{name}` is not supported; use json or msgpack"
            ))
        })?,
    };
    let gzip = match query.get("compress").map(String::as_str) {
        None | Some("none") | Some("") => false,
        Some("gzip") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "compress `{other}` is not supported; use gzip or none"
            )))
        }
    };
    let delta = match query.get("delta").map(String::as_str) {
        None | Some("false") | Some("") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("delta must be true or false")),
    };
    Ok(ConnectOptions {
        format,
        gzip,
        delta,
        since: query::cursor(query, "since")?,
        epoch: query::epoch(query),
        types: query::types(query),
    })
}

async fn accept(
    app: AppState,
    remote: SocketAddr,
    query: HashMap<String, String>,
    headers: HeaderMap,
    channel: Result<Option<Channel>, ApiError>,
    upgrade: IncomingUpgrade,
) -> Response {
    let options = match channel.and_then(|channel| Ok((channel, parse_options(&query)?))) {
        Ok(parsed) => parsed,
        Err(e) => return refuse(e, "-", remote),
    };
    let (channel, options) = options;
    // A foreign page learns nothing, not even whether its token is good.
    if let Err(e) = handshake::check_origin(&app.config.security.allowed_origins, &headers) {
        return refuse(e, "-", remote);
    }
    let credentials = handshake::credentials(&query, &headers);
    let principal = match app.auth.authenticate(credentials.token) {
        Ok(principal) => principal,
        Err(e) => return refuse(e, "-", remote),
    };
    let limits = &app.config.limits;
    let abuse_key = handshake::abuse_key(&principal, remote);
    if let Some(left) = app.bans.remaining(&abuse_key) {
        audit_refused(&principal.user, remote, "banned for flooding");
        METRICS.connection_refused(429);
        return handshake::banned(left, limits.messages_per_second);
    }
    if let Some(channel) = &channel {
        if !principal.can_subscribe(channel) {
            let e = ApiError::forbidden(format!("the token does not grant subscribe on {channel}"));
            return refuse(e, &principal.user, remote);
        }
    }
    // Anonymous clients (mode `none`) cannot be told apart: only the global limit holds.
    let per_user = (!principal.is_anonymous()).then_some(limits.max_connections_per_user);
    let slot = app
        .hub
        .reserve(&principal.user, limits.max_connections, per_user);
    let (mut response, upgraded) = match upgrade.upgrade() {
        Ok(parts) => parts,
        Err(e) => {
            let e = ApiError::bad_request(format!("bad WebSocket upgrade: {e}"));
            return refuse(e, &principal.user, remote);
        }
    };
    if let Some(protocol) = credentials.subprotocol {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
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
        wire: Wire::new(
            options.format,
            options.gzip.then_some(app.config.frames.gzip_min_bytes),
        ),
        delta: options.delta,
        abuse_key,
    };
    tokio::spawn(async move {
        let ws = match upgraded.await {
            Ok(ws) => ws,
            Err(error) => {
                tracing::debug!(%error, "upgrade did not complete");
                return;
            }
        };
        // A task of its own, which holds only what the connection needs from here on: this
        // one keeps everything the handshake captured until it ends.
        tokio::spawn(run_connection(
            app,
            ws,
            params,
            initial,
            Admission { remote, slot },
        ));
    });
    response.into_response()
}

type Stream = linger::Shared<TokioIo<hyper::upgrade::Upgraded>>;
type Running = std::pin::Pin<Box<dyn std::future::Future<Output = Option<u16>> + Send>>;

/// A connection's task. Everything is set up before the task's future is made, and the
/// session's own future is boxed: a future keeps its captured values for its whole life,
/// so what an idle connection's task holds is the session and a few handles, not the
/// handshake's leftovers beside a second copy of the session.
fn run_connection(
    app: AppState,
    ws: WebSocket<TokioIo<hyper::upgrade::Upgraded>>,
    params: SessionParams,
    initial: Option<InitialSubscription>,
    admission: Admission,
) -> impl std::future::Future<Output = ()> + Send {
    // Nothing has been read from the upgraded stream yet, so taking it out of the
    // WebSocket loses nothing; the reader and the sink share it.
    let stream = linger::Shared::new(ws.into_inner());
    let opened = open_session(&app, &stream, &params, admission).map(|(session, conn, reader)| {
        let span =
            tracing::info_span!("connection", client_id = %conn.client_id, user = %conn.user);
        let running: Running = Box::pin(session.run(initial).instrument(span));
        (running, conn, reader)
    });
    async move {
        let mut stream = stream;
        let (running, conn, reader) = match opened {
            Ok(opened) => opened,
            Err(refused) => {
                refused.await;
                Box::pin(linger::linger(&mut stream)).await;
                return;
            }
        };
        let closed_with = running.await;
        reader.abort();
        app.hub.disconnect(conn.id);
        METRICS.connections_active.dec();
        let code = closed_with.map_or_else(|| "client".to_string(), |code| code.to_string());
        METRICS.connection_closed(&code);
        tracing::info!(target: "streamlog::audit", client_id = %conn.client_id, user = %conn.user, close = %code, "connection closed");
        if closed_with.is_some() {
            Box::pin(linger::linger(&mut stream)).await;
        }
    }
}

/// Registers the connection and builds its session and reader; or, when the handshake
/// found no slot, the close to send instead.
#[allow(clippy::type_complexity)]
fn open_session(
    app: &AppState,
    stream: &Stream,
    params: &SessionParams,
    admission: Admission,
) -> Result<
    (
        Session<Stream>,
        Arc<crate::fanout::ConnectionHandle>,
        tokio::task::JoinHandle<()>,
    ),
    std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
> {
    // Only the reading half is fastwebsockets': the sink lays out its own (server) frames.
    let (read, _) =
        fastwebsockets::after_handshake_split(stream.clone(), tokio::io::sink(), Role::Server);
    let timeout = Duration::from_secs(app.config.delivery.write_timeout_secs);
    let stats = Arc::new(ConnectionStats::default());
    let mut sink = FrameSink::new(stream.clone(), timeout, stats.clone());
    let info = ConnectionInfo {
        client_id: mint_client_id(),
        user: params.principal.user.clone(),
        remote_addr: Some(admission.remote),
        connected_at_ms: now_ms(),
    };
    let slot = match admission.slot {
        Ok(slot) => slot,
        Err(refusal) => {
            let reason = match refusal {
                SlotRefusal::Total => "connection limit reached",
                SlotRefusal::PerUser => "connection limit per user reached",
            };
            audit_refused(&info.user, admission.remote, reason);
            METRICS.connection_refused(close::TRY_AGAIN_LATER);
            return Err(Box::pin(async move {
                sink.close(close::TRY_AGAIN_LATER, reason).await;
            }));
        }
    };
    let (conn, queue) = app
        .hub
        .connect(slot, info, stats, app.config.delivery.queue_capacity);
    tracing::info!(target: "streamlog::audit", client_id = %conn.client_id, user = %conn.user, remote = %admission.remote, "connection accepted");
    METRICS.connections_opened.inc();
    METRICS.connections_active.inc();
    let last_seen_ms = Arc::new(AtomicU64::new(now_ms()));
    let (inbound_tx, inbound) = mpsc::channel(INBOUND_DEPTH);
    let reader = reader::spawn(
        read,
        app.config.limits.max_message_bytes,
        inbound_tx,
        last_seen_ms.clone(),
    );
    let session = Session::new(
        app.clone(),
        conn.clone(),
        queue,
        inbound,
        sink,
        params,
        last_seen_ms,
    );
    Ok((session, conn, reader))
}

/// Where a connection comes from, and its place among the connections (or which limit
/// left it none: it is then closed at once).
struct Admission {
    remote: SocketAddr,
    slot: Result<Slot, SlotRefusal>,
}

fn audit_refused(user: &str, remote: SocketAddr, reason: &str) {
    tracing::info!(target: "streamlog::audit", %user, %remote, %reason, "connection refused");
}

/// Answers a refused handshake, with an audit line and a metric.
fn refuse(error: ApiError, user: &str, remote: SocketAddr) -> Response {
    audit_refused(user, remote, &error.message);
    METRICS.connection_refused(error.status.as_u16());
    error.into_response()
}

fn mint_client_id() -> String {
    use rand::Rng;
    format!("c{:016x}", rand::rng().random::<u64>())
}
