//! `fivezero-gateway`: the edge daemon and the integrator's tools.
//!
//! Subcommands so far: `check-config` (validate the gateway's config and every profile it
//! names, without opening sockets), `profile check` (validate profiles and show their read
//! plan), `profile metrics` (the metric catalogue profiles may use), `read` (one full cycle
//! of a profile against a live device), `scan` (SunSpec discovery and a draft profile), `run`
//! (the daemon) and `buffer stats` (the buffer's figures while the daemon is stopped).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod check_config;
mod cli_read;
mod cli_run;
mod cli_scan;
mod profile_cmd;

/// fivezero gateway: polls plant equipment over Modbus and carries the readings to the cloud.
#[derive(Debug, Parser)]
#[command(name = "fivezero-gateway", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway: poll the devices, keep every reading in the buffer, publish over MQTT.
    /// Stops cleanly on SIGTERM or SIGINT; tells systemd READY/WATCHDOG when run under it.
    Run {
        /// The config file (TOML); FIVEZERO_* environment overrides apply.
        #[arg(long)]
        config: PathBuf,
    },
    /// Inspect the store-and-forward buffer.
    #[command(subcommand)]
    Buffer(BufferCommand),
    /// Validate a gateway config file and every device profile it names, without opening a
    /// socket or a serial port; prints the links, the devices and their requests per cycle.
    /// Exit status 1, with every problem on stderr, if it is refused.
    CheckConfig {
        /// The config file (TOML); FIVEZERO_* environment overrides apply.
        file: PathBuf,
    },
    /// Work with device profiles.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Read every point of a profile once from a live device and print it next to its raw
    /// words: a table, or a JSON array with --json. Exceptions and timeouts show per point;
    /// exit status 1 if the device cannot be reached at all.
    Read(cli_read::ReadArgs),
    /// Discover a SunSpec device: find "SunS" at 40000, 0 or 50000, list the models of the
    /// chain and, with --emit-profile, write a draft profile for the models scan knows
    /// (common 1, inverters 101-103, meters 201-204).
    Scan(cli_scan::ScanArgs),
    /// Lists the kill -9 failpoints of this build, one name a line (exit status 0), or says
    /// the build has none (exit status 1). Test builds only; see src/failpoints.rs.
    #[command(hide = true)]
    Failpoints,
}

#[derive(Debug, Subcommand)]
enum BufferCommand {
    /// Print the buffer's figures: sequences committed and acknowledged, backlog, bytes,
    /// oldest unsent reading, headroom, evictions and drops. The gateway must be stopped.
    Stats {
        /// The gateway's config file.
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ProfileCommand {
    /// Validate profile files or folders of them; prints a summary line per valid profile and
    /// every problem as `file:line:column: message`. Exit status 1 if any profile is refused.
    Check {
        /// Profile files (`*.toml`) or folders searched recursively.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List the metric catalogue: id, canonical unit, kind and description.
    Metrics,
    /// List the profile library: id, manufacturer, category, reading points, model and the
    /// document each map comes from.
    List {
        /// Another folder of profiles instead of the shipped library.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// `fivezero-gateway failpoints`.
fn failpoints() -> ExitCode {
    use fivezero_gateway::failpoints;
    if failpoints::compiled_in() {
        for name in failpoints::ALL {
            println!("{name}");
        }
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "this build has no failpoints (cargo feature `failpoints`; see gateway/src/failpoints.rs)"
        );
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => cli_run::run(&config),
        Command::Buffer(BufferCommand::Stats { config }) => cli_run::buffer_stats(&config),
        Command::CheckConfig { file } => check_config::check(&file),
        Command::Profile(ProfileCommand::Check { paths }) => profile_cmd::check(&paths),
        Command::Profile(ProfileCommand::Metrics) => profile_cmd::metrics(),
        Command::Profile(ProfileCommand::List { dir }) => profile_cmd::list(dir.as_deref()),
        Command::Read(args) => cli_read::run(&args),
        Command::Scan(args) => cli_scan::run(&args),
        Command::Failpoints => failpoints(),
    }
}
