//! Scenario `idle`: open N WebSocket connections, each subscribed to a channel, leave them
//! idle, and read the server's resident memory from `/metrics` before and after: the
//! difference over N is the memory an idle connection costs.
//!
//! One source address has only so many ephemeral ports (`ip_local_port_range`); when
//! they run short, connections are bound to the next loopback address (127.0.0.2, ...).

use std::{
    io,
    net::{IpAddr, Ipv4Addr},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use futures_util::{stream, StreamExt};
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use super::{
    frames::Mode,
    net::{ConnectError, Incoming, Target},
    report::{Outcome, Table},
    subscriber::{self, OpenError},
    BenchError,
};

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct IdleArgs {
    /// idle: connections to open (the server's [limits] max_connections must allow them,
    /// plus the tool's own).
    #[arg(
        id = "idle-connections",
        long = "idle-connections",
        default_value_t = 10_000
    )]
    pub connections: usize,
    /// idle: seconds to wait once all are open, before reading the memory.
    #[arg(
        id = "idle-settle-secs",
        long = "idle-settle-secs",
        default_value_t = 2.0
    )]
    pub settle_secs: f64,
}

const CONNECT_CONCURRENCY: usize = 64;
/// Loopback addresses tried as sources beyond the default one.
const MAX_SOURCE_ADDRESSES: usize = 200;
pub const RSS_METRIC: &str = "streamlog_process_resident_memory_bytes";

/// The source address new connections use: the default one first, then 127.0.0.2, ...
/// once a connect finds no free port.
struct Sources {
    index: AtomicUsize,
}

impl Sources {
    fn current(&self) -> (usize, Option<IpAddr>) {
        let index = self.index.load(Ordering::Relaxed);
        let ip = (index > 0).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + index as u8)));
        (index, ip)
    }

    /// Moves past `index` (once, however many connects noticed it); false when none is left.
    fn exhausted(&self, index: usize) -> bool {
        let _ = self
            .index
            .compare_exchange(index, index + 1, Ordering::Relaxed, Ordering::Relaxed);
        self.index.load(Ordering::Relaxed) < MAX_SOURCE_ADDRESSES
    }
}

fn out_of_ports(error: &OpenError) -> bool {
    matches!(error, OpenError::Connect(ConnectError::Io(e))
        if matches!(e.kind(), io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse))
}

pub async fn run(target: &Target, run_id: &str, args: &IdleArgs) -> Result<Outcome, BenchError> {
    if target.addr.is_ipv6() {
        return Err(BenchError::Setup(
            "the idle scenario needs an IPv4 loopback --url".into(),
        ));
    }
    let channel = format!("arena/bench-{run_id}-idle");
    let rss_before = target.metric(RSS_METRIC).await?;
    let active_before = target.metric("streamlog_connections_active").await?;
    let sources = Sources {
        index: AtomicUsize::new(0),
    };
    let (stop_tx, stop) = watch::channel(false);
    let (refused_tx, refused_rx) = watch::channel(None::<String>);
    eprintln!("idle: opening {} connections", args.connections);
    let started = Instant::now();
    let results: Vec<Result<tokio::task::JoinHandle<Option<u16>>, OpenError>> =
        stream::iter(0..args.connections)
            .map(|_| {
                let (target, channel, sources) = (target, &channel, &sources);
                let (stop, refused_tx, refused_rx) = (stop.clone(), &refused_tx, &refused_rx);
                async move {
                    // After one 1013 the rest would be refused as well.
                    if let Some(reason) = refused_rx.borrow().clone() {
                        return Err(OpenError::LimitReached(reason));
                    }
                    let opened = loop {
                        let (index, source) = sources.current();
                        match subscriber::open(target, channel, Mode::JSON, None, source).await {
                            Err(e) if out_of_ports(&e) && sources.exhausted(index) => continue,
                            Err(OpenError::LimitReached(reason)) => {
                                refused_tx.send_replace(Some(reason.clone()));
                                return Err(OpenError::LimitReached(reason));
                            }
                            other => break other?,
                        }
                    };
                    Ok(tokio::spawn(hold(opened.ws, stop)))
                }
            })
            .buffer_unordered(CONNECT_CONCURRENCY)
            .collect()
            .await;
    let open_secs = started.elapsed().as_secs_f64();
    let mut holders = Vec::new();
    let (mut refused, mut failed, mut first_failure) = (0usize, 0usize, None);
    for result in results {
        match result {
            Ok(holder) => holders.push(holder),
            Err(OpenError::LimitReached(_)) => refused += 1,
            Err(e) => {
                failed += 1;
                first_failure.get_or_insert(e.to_string());
            }
        }
    }
    let opened = holders.len();
    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    let rss_after = target.metric(RSS_METRIC).await?;
    let active_after = target.metric("streamlog_connections_active").await?;
    let _ = stop_tx.send(true);
    let mut closed_by_server = 0;
    for holder in holders {
        if let Ok(Some(_code)) = holder.await {
            closed_by_server += 1;
        }
    }
    let per_connection = (opened > 0).then(|| (rss_after - rss_before) / opened as f64);

    let mut problems = Vec::new();
    if refused > 0 {
        let reason = refused_rx.borrow().clone().unwrap_or_default();
        problems.push(format!(
            "the server refused {refused} connections with 1013 ({reason}) after {opened} were \
             open: start it with [limits] max_connections of at least {} (the connections of \
             this scenario plus the tool's own), and in jwt mode a token whose user may hold \
             them (max_connections_per_user)",
            args.connections + 100
        ));
    }
    if let Some(failure) = first_failure {
        problems.push(format!("{failed} connections failed; the first: {failure}"));
    }
    if closed_by_server > 0 {
        problems.push(format!(
            "the server closed {closed_by_server} idle connections while they were held"
        ));
    }
    if opened == 0 {
        problems.push("no connection could be opened".to_string());
    }
    let sources_used = sources.current().0 + 1;
    let mib = |bytes: f64| format!("{:.1}", bytes / (1024.0 * 1024.0));
    let mut table = Table::figures("idle: server memory per idle WebSocket connection");
    table.figure("connections opened", opened);
    table.figure("refused (1013)", refused);
    table.figure("failed", failed);
    table.figure("source addresses", sources_used);
    table.figure("open seconds", format!("{open_secs:.2}"));
    table.figure(
        "server connections before / after",
        format!("{active_before} / {active_after}"),
    );
    table.figure("server RSS before (MiB)", mib(rss_before));
    table.figure("server RSS after (MiB)", mib(rss_after));
    table.figure(
        "bytes per idle connection",
        per_connection.map_or("-".into(), |b| format!("{b:.0}")),
    );
    Ok(Outcome {
        results: json!({
            "channel": channel,
            "connections_requested": args.connections,
            "connections_opened": opened,
            "refused_1013": refused,
            "failed": failed,
            "closed_by_server_while_idle": closed_by_server,
            "source_addresses": sources_used,
            "open_seconds": open_secs,
            "server_connections_before": active_before,
            "server_connections_after": active_after,
            "rss_before_bytes": rss_before,
            "rss_after_bytes": rss_after,
            "bytes_per_connection": per_connection,
        }),
        tables: vec![table],
        problems,
    })
}

/// Keeps a connection open and reading (so that the server's pings are answered) until
/// `stop`; answers the close code if the server closed it first.
async fn hold(mut ws: super::net::Ws, mut stop: watch::Receiver<bool>) -> Option<u16> {
    loop {
        tokio::select! {
            frame = ws.next_frame() => {
                if let Incoming::Closed(code, _) = frame {
                    return Some(code);
                }
            }
            _ = stop.changed() => {
                ws.close().await;
                return None;
            }
        }
    }
}
