//! `fivezero-sim`: serves a simulated park over Modbus TCP.
//!
//! ```text
//! fivezero-sim --scenario park.toml --listen 127.0.0.1:5020 [--speed 60] [--seed 7]
//!              [--control 127.0.0.1:5080] [--fault pv-roof-a=late_reply:1500ms]...
//! ```
//!
//! Prints one line per listener with its address and the devices behind it, then serves until
//! Ctrl-C or SIGTERM. Logs go to stderr (`RUST_LOG`, default `info`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use fivezero_sim::Physics;
use fivezero_sim::fault::Fault;
use fivezero_sim::scenario::Scenario;
use fivezero_sim::server::{Options, Simulator};
use tracing_subscriber::EnvFilter;

/// A Modbus TCP simulator of a five-zero park.
#[derive(Debug, Parser)]
#[command(name = "fivezero-sim", version, about)]
struct Cli {
    /// The scenario file (devices, profiles, unit ids, listeners, physics).
    #[arg(long, value_name = "FILE")]
    scenario: PathBuf,

    /// Address of the `main` listener, e.g. 127.0.0.1:5020 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,

    /// Simulated seconds per wall-clock second (0 freezes the clock).
    #[arg(long, value_name = "X", default_value_t = 1.0)]
    speed: f64,

    /// Overrides the scenario's seed.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,

    /// Address of the HTTP control endpoint (keep it on loopback).
    #[arg(long, value_name = "ADDR")]
    control: Option<SocketAddr>,

    /// A fault to start with, DEVICE=KIND[:ARG], e.g. meter=exception:4, pv=late_reply:1500ms,
    /// boiler=no_reply. Repeatable.
    #[arg(long = "fault", value_name = "DEVICE=KIND[:ARG]", value_parser = parse_fault)]
    faults: Vec<(String, Fault)>,
}

fn parse_fault(s: &str) -> Result<(String, Fault), String> {
    let (device, spec) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: write DEVICE=KIND[:ARG], e.g. meter=exception:4"))?;
    let device = device.trim();
    if device.is_empty() {
        return Err(format!("{s:?}: the device name is empty"));
    }
    let fault = spec.parse::<Fault>().map_err(|e| e.to_string())?;
    Ok((device.to_owned(), fault))
}

/// The plant physics for `scenario`.
fn build_physics(scenario: &Scenario) -> anyhow::Result<Box<dyn Physics>> {
    let plant =
        fivezero_sim::plant::Plant::new(scenario).context("the scenario's physics is refused")?;
    Ok(Box::new(plant))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut scenario = Scenario::load(&cli.scenario, &fivezero_profiles::library_dir())?;
    if let Some(seed) = cli.seed {
        scenario.seed = seed;
    }
    for (device, _) in &cli.faults {
        if scenario.device_index(device).is_none() {
            let known: Vec<&str> = scenario.devices.iter().map(|d| d.name.as_str()).collect();
            anyhow::bail!(
                "--fault names device `{device}`, the scenario has: {}",
                known.join(", ")
            );
        }
    }
    let physics = build_physics(&scenario)?;
    let options = Options {
        listen: cli.listen,
        speed: cli.speed,
        control: cli.control,
    };
    let handle = Simulator::start(scenario, physics, options).await?;
    for (device, fault) in &cli.faults {
        handle.set_fault(device, *fault)?;
    }
    for l in handle.listeners() {
        let devices: Vec<String> = l
            .devices
            .iter()
            .map(|(name, unit)| {
                let profile = handle
                    .scenario()
                    .devices
                    .iter()
                    .find(|d| &d.name == name)
                    .map_or("?", |d| d.profile.id.as_str());
                match handle.fault(name) {
                    Some(f) => format!("{name} (unit {unit}, {profile}, fault {f})"),
                    None => format!("{name} (unit {unit}, {profile})"),
                }
            })
            .collect();
        println!("listener {} on {}: {}", l.name, l.addr, devices.join(", "));
    }
    if let Some(addr) = handle.control_addr() {
        println!("control on http://{addr}/devices");
    }
    tracing::info!(
        speed = cli.speed,
        seed = handle.scenario().seed,
        "simulator running; Ctrl-C to stop"
    );
    shutdown_signal().await;
    tracing::info!("stopping");
    handle.shutdown().await;
    Ok(())
}

/// Waits for Ctrl-C or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {err}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(err) => {
                tracing::warn!("cannot listen for SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
