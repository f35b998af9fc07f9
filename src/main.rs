//! The `streamlog` command line.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use streamlog::{
    client::{commands, Client, ClientError},
    config::{CliOverrides, Config},
    loadtest::BenchArgs,
};

#[derive(Parser)]
#[command(
    name = "streamlog",
    version,
    about = "A persistent event-log streaming server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the client subcommands find the server.
#[derive(Args)]
struct Remote {
    /// The server's base URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// A JWT, sent as `Authorization: Bearer` (and `token=` on WebSockets).
    #[arg(long, global = true, env = "STREAMLOG_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// For an `https://` URL: a PEM file of CA certificates to trust besides the system's
    /// (a private CA, or the server's self-signed certificate).
    #[arg(long, global = true, env = "STREAMLOG_CA_CERT")]
    ca_cert: Option<PathBuf>,
}

impl Remote {
    fn client(self) -> Result<Client, ClientError> {
        Client::new(&self.url, self.token, self.ca_cert.as_deref())
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (overrides `listen`), e.g. 127.0.0.1:8000; port 0 picks one.
        #[arg(long)]
        listen: Option<String>,
        /// Directory of the log (overrides `data_dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Allow auth mode `none` on a non-loopback address: anyone who can reach the
        /// server may then publish, read and administer it.
        #[arg(long)]
        insecure_demo: bool,
        /// Publish simulated traffic (AI agents competing in arenas a1, a2) into the log,
        /// through the in-process write path, until the server stops.
        #[arg(long)]
        demo: bool,
        /// Events per second of `--demo` [default: 20].
        #[arg(long, requires = "demo", value_parser = streamlog::simulate::parse_rate)]
        demo_rate: Option<f64>,
    },
    #[command(flatten)]
    Client(ClientCommand),
    /// Measure a running server on this machine: publish throughput, fan-out, catch-up,
    /// memory per idle connection, bytes per frame mode. Prints tables; `--json` writes
    /// the report.
    Bench {
        #[command(flatten)]
        args: Box<BenchArgs>,
        #[command(flatten)]
        remote: Remote,
    },
}

/// The subcommands that talk to a running server.
#[derive(Subcommand)]
enum ClientCommand {
    /// Publish one event from arguments, or NDJSON event objects from stdin (batched).
    Publish {
        channel: Option<String>,
        event_type: Option<String>,
        /// The event's data, a JSON object.
        data: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print the events of channels as JSON lines, live; reconnects and resumes on its own.
    Tail {
        #[arg(required = true)]
        channels: Vec<String>,
        /// Start after this seq (the last one printed by an earlier tail).
        #[arg(long)]
        since: Option<u64>,
        /// The epoch `--since` came from.
        #[arg(long)]
        epoch: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Replay a channel's recorded events.
    Replay {
        channel: String,
        #[arg(long)]
        from: Option<u64>,
        #[arg(long)]
        to: Option<u64>,
        /// RFC 3339 UTC times bounding the events' `ts`.
        #[arg(long)]
        from_ts: Option<String>,
        #[arg(long)]
        to_ts: Option<String>,
        /// 1 = original pace, 2 = twice as fast, 0 = as fast as possible.
        #[arg(long, default_value_t = 0.0)]
        speed: f64,
        /// Filters as JSON.
        #[arg(long)]
        filters: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print a channel's retained events as JSON lines.
    History {
        channel: String,
        #[arg(long, default_value_t = 0)]
        since: u64,
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Publish realistic simulated traffic (competitions, agent statuses, curricula,
    /// training data) at a steady rate; prints a summary at the end.
    Simulate {
        /// Arenas, each with its own competitions and agents.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=1000))]
        arenas: u16,
        /// Events per second.
        #[arg(long, default_value = "100", value_parser = streamlog::simulate::parse_rate)]
        rate: f64,
        /// Seconds to run [default: until Ctrl-C].
        #[arg(long, value_parser = streamlog::simulate::parse_seconds)]
        duration: Option<std::time::Duration>,
        /// Seed of the generator: the same seed publishes the same events.
        #[arg(long)]
        seed: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Create, list and export datasets.
    Datasets {
        #[command(subcommand)]
        command: DatasetCommand,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Seal a dataset.
    Create {
        #[arg(long)]
        id: Option<String>,
        #[arg(long = "channel", required = true)]
        channels: Vec<String>,
        #[arg(long = "event-type")]
        event_types: Vec<String>,
        #[arg(long)]
        since: Option<u64>,
        #[arg(long)]
        until: Option<u64>,
        /// Filters as JSON.
        #[arg(long)]
        filters: Option<String>,
    },
    /// List the datasets, one JSON line each.
    List,
    /// Stream a dataset's export to stdout or a file.
    Export {
        id: String,
        #[arg(long, default_value = "jsonl")]
        format: String,
        #[arg(long)]
        anonymize: bool,
        /// Keep the body gzip-compressed.
        #[arg(long)]
        gzip: bool,
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STREAMLOG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("STREAMLOG_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn json_arg(text: Option<String>) -> Result<Value, ClientError> {
    match text {
        Some(text) => {
            serde_json::from_str(&text).map_err(|e| ClientError::Protocol(format!("not JSON: {e}")))
        }
        None => Ok(Value::Null),
    }
}

async fn run_client(command: ClientCommand) -> Result<(), ClientError> {
    match command {
        ClientCommand::Publish {
            channel,
            event_type,
            data,
            remote,
        } => {
            let client = remote.client()?;
            commands::publish(&client, channel, event_type, data).await
        }
        ClientCommand::Tail {
            channels,
            since,
            epoch,
            remote,
        } => {
            let client = remote.client()?;
            commands::follow(&client, channels, since, epoch).await
        }
        ClientCommand::Replay {
            channel,
            from,
            to,
            from_ts,
            to_ts,
            speed,
            filters,
            remote,
        } => {
            let client = remote.client()?;
            let mut request = json!({"id": "cli", "channel": channel, "speed": speed});
            for (key, value) in [("from", from), ("to", to)] {
                if let Some(seq) = value {
                    request[key] = json!(seq.to_string());
                }
            }
            for (key, value) in [("from_ts", from_ts), ("to_ts", to_ts)] {
                if let Some(ts) = value {
                    request[key] = json!(ts);
                }
            }
            request["filters"] = json_arg(filters)?;
            commands::replay(&client, request).await
        }
        ClientCommand::History {
            channel,
            since,
            limit,
            remote,
        } => {
            let client = remote.client()?;
            commands::history(&client, &channel, since, limit).await
        }
        ClientCommand::Simulate {
            arenas,
            rate,
            duration,
            seed,
            remote,
        } => {
            let client = remote.client()?;
            let options = streamlog::simulate::SimulateOptions {
                arenas: arenas.into(),
                pace: streamlog::simulate::Pace { rate, duration },
                seed,
            };
            let summary = streamlog::simulate::simulate(client, options).await?;
            println!("{summary}");
            Ok(())
        }
        ClientCommand::Datasets { command, remote } => {
            let client = remote.client()?;
            match command {
                DatasetCommand::Create {
                    id,
                    channels,
                    event_types,
                    since,
                    until,
                    filters,
                } => {
                    let mut request = json!({"channels": channels, "filters": json_arg(filters)?});
                    if let Some(id) = id {
                        request["dataset_id"] = json!(id);
                    }
                    if !event_types.is_empty() {
                        request["event_types"] = json!(event_types);
                    }
                    for (key, value) in [("since", since), ("until", until)] {
                        if let Some(seq) = value {
                            request[key] = json!(seq.to_string());
                        }
                    }
                    commands::create_dataset(&client, request).await
                }
                DatasetCommand::List => commands::list_datasets(&client).await,
                DatasetCommand::Export {
                    id,
                    format,
                    anonymize,
                    gzip,
                    output,
                } => commands::export_dataset(&client, &id, &format, anonymize, gzip, output).await,
            }
        }
    }
}

fn main() -> ExitCode {
    streamlog::tls::install_default_provider();
    match Cli::parse().command {
        Command::Client(command) => client_main(command),
        Command::Bench { args, remote } => bench_main(*args, remote),
        Command::Serve {
            config,
            listen,
            data_dir,
            insecure_demo,
            demo,
            demo_rate,
        } => serve_main(
            config,
            CliOverrides {
                listen,
                data_dir,
                insecure_demo,
            },
            demo.then(|| streamlog::simulate::demo::DemoOptions::with_rate(demo_rate)),
        ),
    }
}

fn client_main(command: ClientCommand) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run_client(command)) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed stdout (`| head`) is how a reader says it has enough.
        Err(ClientError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("streamlog: {error}");
            ExitCode::FAILURE
        }
    }
}

fn bench_main(args: BenchArgs, remote: Remote) -> ExitCode {
    // Thousands of sockets and a million decoded frames a second want every core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(streamlog::loadtest::run(args, &remote.url, remote.token)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("streamlog bench: {error}");
            ExitCode::from(2)
        }
    }
}

fn serve_main(
    config: Option<PathBuf>,
    overrides: CliOverrides,
    demo: Option<streamlog::simulate::demo::DemoOptions>,
) -> ExitCode {
    init_tracing();
    let config = match Config::load(config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("streamlog: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(streamlog::server::serve(
        config,
        demo.map(streamlog::simulate::demo::companion),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("streamlog: {error}");
            ExitCode::FAILURE
        }
    }
}
