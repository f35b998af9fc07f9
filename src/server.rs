//! Wiring and lifecycle: open the log, start the fan-out, bind, serve, and shut down in
//! order — stop accepting, close every socket with 1001, flush the log, return.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    serve::{Listener, ListenerExt},
    Router,
};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    app::{App, AppState},
    auth::{AuthSetupError, Authenticator},
    bans::BanList,
    batching::HighFrequency,
    config::{AuthMode, Config, ConfigError},
    fanout::Hub,
    log::{sled::SledLog, EventLog, LogError},
    protocol::DeltaKeys,
    publish::Publisher,
    rate_limit::PublishRate,
    tls::{self, TlsListener, TlsSetupError},
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the log: {0}")]
    Log(#[from] LogError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// A task started beside the server once it listens, given the shared state and the bound
/// address: the built-in traffic of `serve --demo`. It must end once `shutdown` turns true;
/// the log is closed only after it has.
pub type Companion = Box<dyn FnOnce(AppState, SocketAddr) -> tokio::task::JoinHandle<()> + Send>;

/// Runs the server, and `companion` beside it when there is one, until SIGINT or SIGTERM.
pub async fn serve(config: Config, companion: Option<Companion>) -> Result<(), ServeError> {
    match raise_open_files_limit() {
        Ok(limit) => tracing::info!(limit, "open files limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open files limit"),
    }
    run(config, shutdown_signal(), companion).await
}

pub async fn serve_until(
    config: Config,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    run(config, stop, None).await
}

async fn run(
    config: Config,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    companion: Option<Companion>,
) -> Result<(), ServeError> {
    let addr = config.listen_addr()?;
    let auth = Authenticator::new(&config.auth)?;
    let tls = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
        _ => None,
    };
    if config.auth.mode == AuthMode::Jwt
        && !config.auth.hs256_secret.is_empty()
        && config.auth.hs256_secret.len() < 32
    {
        tracing::warn!(
            "auth.hs256_secret is shorter than 32 bytes: an HS256 secret should hold at least \
             256 random bits, or tokens can be forged by guessing it"
        );
    }
    if config.auth.mode == AuthMode::None {
        tracing::warn!(
            auth_mode = "none",
            "auth mode `none`: every client may publish, subscribe and use the admin API; \
             use auth.mode = \"jwt\" for anything but a demo"
        );
    }
    let log: Arc<dyn EventLog> = Arc::new(SledLog::open(
        &config.data_dir,
        &config.storage,
        config.retention.clone(),
    )?);
    let hub = Hub::new(
        HighFrequency::new(&config.high_frequency),
        Duration::from_millis(config.delivery.coalesce_ms),
    );
    let dispatcher = hub.spawn_dispatcher(log.watch());
    let (stopping_tx, stopping) = watch::channel(false);
    let bans = BanList::new(Duration::from_secs(config.limits.flood_ban_secs));
    let delta_keys = Arc::new(DeltaKeys::new(
        config.frames.delta_keys.clone(),
        config.frames.delta_full_every,
    ));
    let publish_rate = PublishRate::new(
        config.limits.http_publish_per_second,
        config.limits.http_publish_burst,
    );
    let state = AppState::new(App {
        delta_keys,
        publish_rate,
        config,
        log: log.clone(),
        hub: hub.clone(),
        publisher: Publisher::new(log.clone()),
        auth,
        bans,
        shutdown: stopping,
    });

    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %local, scheme, "streamlog listening on {local}");
    let companion = companion.map(|start| start(state.clone(), local));

    let router = crate::http::router(state.clone());
    let drain_timeout = Duration::from_secs(state.config.shutdown.drain_timeout_secs);
    let graceful = async move {
        stop.await;
        tracing::info!("shutting down: no new connections, closing sockets with 1001");
        let _ = stopping_tx.send(true);
        // A second signal means: do not wait. Every acknowledged event is already on disk,
        // so exiting now loses nothing that was promised.
        tokio::spawn(async {
            shutdown_signal().await;
            tracing::warn!("second signal: exiting without waiting for connections");
            std::process::exit(130);
        });
    };
    match tls {
        Some(config) => {
            // The TLS listener sets TCP_NODELAY itself, before the handshake.
            let listener = TlsListener::new(listener, config)?.tap_io(|_| {});
            serve_http(listener, router, graceful).await?;
        }
        None => {
            // Small frames must not wait for Nagle's algorithm: see the README's
            // performance notes.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            serve_http(listener, router, graceful).await?;
        }
    }

    // Upgraded WebSockets are not tracked by the HTTP server: wait for the sessions.
    let deadline = tokio::time::Instant::now() + drain_timeout;
    while hub.connection_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some(companion) = companion {
        let _ = companion.await;
    }
    log.close().await?;
    dispatcher.abort();
    tracing::info!(head = log.head(), "log flushed; stopped");
    Ok(())
}

/// Serves until `graceful` completes; handlers see the peer address (`ConnectInfo`).
async fn serve_http<L, F>(
    listener: axum::serve::TapIo<L, F>,
    router: Router,
    graceful: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
    F: FnMut(&mut L::Io) + Send + 'static,
{
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(graceful)
        .await
}

/// Raises this process's soft limit on open files to the hard limit: every connection is
/// a file descriptor, and the usual soft default (1024) would refuse connections long
/// before `limits.max_connections`. Answers the limit now in force.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit; raising the soft limit up to the hard one
        // needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform.
    Ok(limit.rlim_cur as u64)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
