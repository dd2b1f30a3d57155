//! `fivezero-sink`: the cloud sink's command line.
//!
//! - `fivezero-sink run --config FILE`: ingest until SIGTERM or SIGINT, then drain and exit 0.
//! - `fivezero-sink check-config FILE`: validate the configuration (no socket, no database).
//! - `fivezero-sink hash-token`: print the SHA-256 of a token read on standard input.
//!
//! Logs go to standard error; `FIVEZERO_SINK_LOG` (or `RUST_LOG`) sets the filter
//! (default [`DEFAULT_LOG_FILTER`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fivezero_sink::config::Config;
use fivezero_sink::service;
use fivezero_sink::stats::SinkStats;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "fivezero-sink", version, about = "fivezero's cloud sink")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sink until SIGTERM or SIGINT.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = "sink.toml")]
        config: PathBuf,
    },
    /// Read an API token on standard input and print the SHA-256 that `[[http.tokens]]`
    /// takes (`openssl rand -hex 32 | tee token | fivezero-sink hash-token`).
    HashToken,
    /// Check a configuration file and print the settings it gives.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
}

/// `info`, less the embedded broker's chatter: rumqttd logs every connection at INFO and
/// every clean disconnect as an ERROR (`router-drop`), which would send operators chasing
/// nothing. Its router warnings stay; the sink checks the listen addresses itself.
const DEFAULT_LOG_FILTER: &str = "info,rumqttd=warn,rumqttd::server::broker=off";

fn init_logs() {
    let filter = std::env::var("FIVEZERO_SINK_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| DEFAULT_LOG_FILTER.to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .try_init();
}

async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received."),
                _ = int.recv() => tracing::info!("SIGINT received."),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs();
    match cli.command {
        Command::HashToken => {
            let mut line = String::new();
            match std::io::stdin().read_line(&mut line) {
                Ok(_) if !line.trim().is_empty() => {
                    println!("{}", fivezero_sink::config::hash_token(line.trim()));
                    ExitCode::SUCCESS
                }
                _ => {
                    eprintln!("fivezero-sink hash-token: no token on standard input");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => {
                println!("{}: ok", file.display());
                println!("  client id: {}", config.client_id);
                println!(
                    "  storage:   {}",
                    fivezero_sink::store::mask_password(&config.storage_url)
                );
                println!("  broker:    {:?}", config.broker);
                println!("  prefix:    {}", config.prefix);
                match config.http.listen {
                    Some(a) => println!("  http api:  {a} ({} tokens)", config.http.tokens.len()),
                    None => println!("  http api:  off"),
                }
                if let Some(group) = &config.shared_group {
                    println!("  shared subscription group: {group}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => match run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("fivezero-sink: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        service::run(config, SinkStats::default(), terminated())
            .await
            .map_err(anyhow::Error::from)
    })
}
