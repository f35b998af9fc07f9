//! `streamlog bench`: a load tool run against a running server on this machine. Each
//! scenario is bounded in count and time and stops by itself; the figures are printed as
//! tables and written as one JSON report.
//!
//! - `publish.rs` durable HTTP publish throughput; `fanout.rs` delivery to many WebSocket
//!   subscribers (rate, latency, losses); `catchup.rs` resume from a cursor; `idle.rs`
//!   server memory per idle connection; `bytes.rs` bytes on the wire per frame mode, with
//!   its traffic from `traffic.rs`.
//! - `subscriber.rs` the checking subscriber; `frames.rs` decodes every frame mode;
//!   `latency.rs` the samples; `net.rs` the connections; `report.rs` tables and JSON.
//!
//! It speaks only the public protocol and reads the server's figures from `/metrics`, so
//! it measures any local streamlog server, not only one it started.

mod bytes;
mod catchup;
mod fanout;
pub mod frames;
mod idle;
mod latency;
mod net;
mod publish;
mod report;
mod subscriber;
mod traffic;
mod wsclient;

use std::path::PathBuf;

use serde_json::json;

use self::{frames::Mode, net::Target, report::Report};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The command line or the environment does not allow the run.
    #[error("{0}")]
    Setup(String),
    /// The server answered something unexpected.
    #[error("server: {0}")]
    Server(String),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    /// The scenario could not measure what it measures.
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Publish,
    Fanout,
    Catchup,
    Idle,
    Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Scenarios to run, comma separated (default: all, in this order).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenario: Vec<Scenario>,
    /// Frame mode of the fanout and catchup subscribers: json or msgpack, optionally with
    /// +gzip and/or +delta (e.g. msgpack+gzip+delta).
    #[arg(long, default_value = "json", value_parser = Mode::parse)]
    pub mode: Mode,
    /// What stdout gets: tables for people, or the JSON report.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub publish: publish::PublishArgs,
    #[command(flatten)]
    pub fanout: fanout::FanoutArgs,
    #[command(flatten)]
    pub catchup: catchup::CatchupArgs,
    #[command(flatten)]
    pub idle: idle::IdleArgs,
    #[command(flatten)]
    pub bytes: bytes::BytesArgs,
}

const ALL: [Scenario; 5] = [
    Scenario::Publish,
    Scenario::Fanout,
    Scenario::Catchup,
    Scenario::Idle,
    Scenario::Bytes,
];

/// Runs the chosen scenarios; answers whether every one measured without a problem.
pub async fn run(args: BenchArgs, url: &str, token: Option<String>) -> Result<bool, BenchError> {
    match crate::server::raise_open_files_limit() {
        Ok(limit) => eprintln!("bench: open files limit {limit}"),
        Err(e) => eprintln!("bench: cannot raise the open files limit: {e}"),
    }
    let target = Target::new(url, token.clone()).await?;
    let health = target
        .health()
        .await
        .map_err(|e| BenchError::Setup(format!("no streamlog server answers at {url}: {e}")))?;
    // Names unique to this run, so that runs against one server never mix their events.
    let run_id = format!("{:x}", latency::now_us() % 0xffff_ffff);
    let selected: Vec<Scenario> = ALL
        .into_iter()
        .filter(|s| args.scenario.is_empty() || args.scenario.contains(s))
        .collect();
    let mut report = Report::new(
        url,
        json!({
            "scenarios": selected.iter().map(|s| format!("{s:?}").to_lowercase()).collect::<Vec<_>>(),
            "mode": args.mode.name(),
            "run_id": run_id,
            "server_head_at_start": health["head"],
        }),
    );
    let mut all_ok = true;
    let mut text = String::new();
    for scenario in selected {
        let name = format!("{scenario:?}").to_lowercase();
        eprintln!("bench: {name}");
        let (params, outcome) = match scenario {
            Scenario::Publish => (
                json!(args.publish),
                publish::run(&target, &run_id, &args.publish).await,
            ),
            Scenario::Fanout => (
                json!(args.fanout),
                fanout::run(&target, &run_id, args.mode, &args.fanout).await,
            ),
            Scenario::Catchup => (
                json!(args.catchup),
                catchup::run(&target, &run_id, args.mode, &args.catchup).await,
            ),
            Scenario::Idle => (
                json!(args.idle),
                idle::run(&target, &run_id, &args.idle).await,
            ),
            Scenario::Bytes => (
                json!(args.bytes),
                bytes::run(&target, url, token.as_deref(), &run_id, &args.bytes).await,
            ),
        };
        let outcome = outcome.map_err(|e| e.to_string());
        match &outcome {
            Ok(outcome) => {
                for table in &outcome.tables {
                    text.push_str(&table.render());
                    text.push('\n');
                }
                for problem in &outcome.problems {
                    text.push_str(&format!("  PROBLEM: {problem}\n\n"));
                    eprintln!("bench: {name}: {problem}");
                }
                all_ok &= outcome.problems.is_empty();
            }
            Err(error) => {
                text.push_str(&format!("{name}: FAILED: {error}\n\n"));
                eprintln!("bench: {name} failed: {error}");
                all_ok = false;
            }
        }
        report.add(&name, params, &outcome);
    }
    let json = report.json();
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{json}\n")).map_err(|e| {
            BenchError::Setup(format!(
                "cannot write the report to {}: {e}",
                path.display()
            ))
        })?;
    }
    match args.output {
        Output::Table => print!("{text}"),
        Output::Json => println!("{json}"),
    }
    Ok(all_ok)
}
