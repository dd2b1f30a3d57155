//! `fivezero-gateway`: the edge daemon and the integrator's tools.
//!
//! Subcommands so far: `check-config` (validate the gateway's config and every profile it
//! names, without opening sockets), `profile check` (validate profiles and show their read
//! plan) and `profile metrics` (the metric catalogue profiles may use).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod check_config;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => check_config::check(&file),
        Command::Profile(ProfileCommand::Check { paths }) => profile_cmd::check(&paths),
        Command::Profile(ProfileCommand::Metrics) => profile_cmd::metrics(),
    }
}
