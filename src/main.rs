//! `cargo run --release` at the root: the whole fivezero pipeline on one machine.
//!
//! In this one process: the simulator serving the Green Sail park (accelerated, 60 simulated
//! seconds per second by default), the sink with its embedded MQTT broker and SQLite store,
//! and a gateway polling every device of the park, computing the five-zero KPIs and
//! publishing to the sink. Every port is picked free (1883 may be taken); the databases and
//! the generated gateway config go to `--dir`. A progress line shows what is polled,
//! buffered and stored; Ctrl-C stops the gateway (committing and flushing), then the sink
//! (finishing its transaction), then the simulator.

mod greensail;
mod progress;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use fivezero_sim::plant::Plant;
use fivezero_sim::scenario::Scenario;
use fivezero_sim::server::{Options, Simulator};
use fivezero_sink::stats::SinkStats;
use tokio::sync::oneshot;
use tracing_subscriber::EnvFilter;

/// The whole fivezero pipeline on one machine: simulated plant, gateway, broker, sink.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Simulated seconds per second of the plant (1 for real time).
    #[arg(long, default_value_t = 60.0)]
    speed: f64,
    /// Folder for the gateway's buffer, the sink's database and the generated config.
    #[arg(long, default_value = "fivezero-demo")]
    dir: PathBuf,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5)]
    progress: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = std::env::var("FIVEZERO_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("warn,rumqttd=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fivezero: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demo(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fivezero: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A loopback address with a port that was free a moment ago.
fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// Waits until something accepts connections on `addr`.
async fn accepting(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what} did not accept connections on {addr} within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn scenario_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("simulator/scenarios/greensail.toml")
}

async fn demo(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.speed.is_finite() && args.speed > 0.0,
        "--speed must be a positive number"
    );
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)?;

    // The plant.
    let scenario = Scenario::load(&scenario_file(), &fivezero_profiles::library_dir())?;
    let devices = scenario.devices.len();
    let plant = Plant::new(&scenario)?;
    let sim = Simulator::start(
        scenario,
        Box::new(plant),
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            speed: args.speed,
            control: None,
        },
    )
    .await
    .context("starting the simulator")?;
    let listeners: Vec<String> = sim
        .listeners()
        .iter()
        .map(|l| format!("{} on {}", l.name, l.addr))
        .collect();
    println!(
        "fivezero: simulator: the Green Sail park, {devices} Modbus devices ({}), {}x real time",
        listeners.join(", "),
        args.speed
    );

    // The sink, with its embedded broker and its HTTP API.
    let broker = free_addr()?;
    let http = free_addr()?;
    let sink_text = format!(
        "[sink]\nclient_id = \"fivezero-demo-sink\"\n\n[storage]\nurl = \"sqlite://{}\"\n\n\
         [mqtt]\nbroker = \"embedded\"\nlisten = \"{broker}\"\nlisten_v311 = \"\"\n\n\
         [http]\nlisten = \"{http}\"\n",
        dir.join("sink.db").display()
    );
    let sink_config = fivezero_sink::config::Config::from_text(
        Path::new("demo sink config"),
        &sink_text,
        Vec::new(),
    )?;
    let stats = SinkStats::default();
    let (sink_stop, sink_stopped) = oneshot::channel::<()>();
    let mut sink = tokio::spawn(fivezero_sink::service::run(
        sink_config,
        stats.clone(),
        async move {
            let _ = sink_stopped.await;
        },
    ));
    accepting(broker, "the sink's embedded broker").await?;
    accepting(http, "the sink's HTTP API").await?;
    println!(
        "fivezero: sink: embedded MQTT broker on {broker}, storing into {}",
        dir.join("sink.db").display()
    );

    // The gateway.
    let metrics = free_addr()?;
    let state_dir = dir.join("gateway");
    let gateway_file = dir.join("gateway.toml");
    std::fs::write(
        &gateway_file,
        greensail::gateway_config(
            &sim,
            &greensail::Places {
                broker,
                state_dir: &state_dir,
                metrics,
            },
        ),
    )?;
    let gateway_config = fivezero_gateway::config::Config::load(&gateway_file)?;
    let groups: Vec<&str> = gateway_config.kpi.groups.iter().map(|g| g.name()).collect();
    let (gateway_stop, gateway_stopped) = oneshot::channel::<()>();
    let mut gateway = tokio::spawn(fivezero_gateway::daemon::run(gateway_config, async move {
        let _ = gateway_stopped.await;
    }));
    println!(
        "fivezero: gateway: polling every device every 5 s, config {}; KPIs: {}",
        gateway_file.display(),
        groups.join(", ")
    );
    println!("fivezero: gateway metrics: http://{metrics}/metrics");
    let site = &sim.scenario().site.name;
    println!("fivezero: dashboard: http://{http}/");
    println!(
        "fivezero: API: http://{http}/api/v1/sites/{site}/kpis/latest (OpenAPI at http://{http}/api/v1/openapi.json)"
    );
    println!("fivezero: running; Ctrl-C stops everything cleanly.");
    let progress = tokio::spawn(progress::run(
        metrics,
        stats.clone(),
        Duration::from_secs(args.progress.max(1)),
    ));

    let mut failure = None;
    tokio::select! {
        r = tokio::signal::ctrl_c() => {
            r.context("listening for Ctrl-C")?;
            println!("\nfivezero: stopping: the gateway commits and flushes, then the sink drains.");
        }
        r = &mut gateway => failure = Some(format!("the gateway stopped: {}", outcome(r))),
        r = &mut sink => failure = Some(format!("the sink stopped: {}", outcome(r))),
    }
    progress.abort();
    let _ = gateway_stop.send(());
    finish(&mut gateway, "the gateway").await;
    let _ = sink_stop.send(());
    finish(&mut sink, "the sink").await;
    sim.shutdown().await;
    let s = stats.snapshot();
    println!(
        "fivezero: stopped; the sink stored {} readings and KPI records ({} dead letters). Data in {}.",
        s.stored_items,
        s.dead_letters_total(),
        dir.display()
    );
    match failure {
        Some(f) => anyhow::bail!(f),
        None => Ok(()),
    }
}

/// Waits (at most 30 s) for a task not yet finished, and reports its error.
async fn finish<E: std::fmt::Display>(
    task: &mut tokio::task::JoinHandle<Result<(), E>>,
    what: &str,
) {
    if task.is_finished() {
        return; // Its outcome was taken already.
    }
    match tokio::time::timeout(Duration::from_secs(30), task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => eprintln!("fivezero: {what}: {e}"),
        Ok(Err(e)) => eprintln!("fivezero: {what}: {e}"),
        Err(_) => eprintln!("fivezero: {what} did not stop within 30 s"),
    }
}

/// What a finished task said.
fn outcome<E: std::fmt::Display>(r: Result<Result<(), E>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Ok(())) => "without error".to_owned(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}
