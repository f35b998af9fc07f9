//! The `streamlog` command line.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use streamlog::config::{CliOverrides, Config};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
        } => {
            let overrides = CliOverrides { listen, data_dir };
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
            match runtime.block_on(streamlog::server::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("streamlog: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
