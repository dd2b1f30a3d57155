//! `fivezero-gateway run` and `fivezero-gateway buffer stats`.

use std::path::Path;
use std::process::ExitCode;

use fivezero_gateway::buffer::{Buffer, BufferOptions};
use fivezero_gateway::config::Config;
use fivezero_gateway::daemon::Shutdown;
use tracing_subscriber::EnvFilter;

/// Logs to stderr (journald picks it up under systemd); `FIVEZERO_LOG` or `RUST_LOG` filter,
/// `info` by default.
fn init_logging() {
    let filter = std::env::var("FIVEZERO_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn load(file: &Path) -> Result<Config, ExitCode> {
    Config::load(file).map_err(|e| {
        eprintln!("{e}");
        ExitCode::FAILURE
    })
}

/// Waits for SIGTERM or SIGINT (stop), or for a SIGHUP with a valid configuration in `file`
/// (reload, with the new configuration in `new`). A SIGHUP whose configuration is refused is
/// logged with every problem, and the running configuration is kept.
async fn signals(file: &Path, new: &mut Option<Config>) -> Shutdown {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(h)) => (t, h),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "Cannot listen for SIGTERM and SIGHUP; stop with Ctrl-C.");
            let _ = tokio::signal::ctrl_c().await;
            return Shutdown::Stop;
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM received.");
                return Shutdown::Stop;
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("SIGINT received.");
                return Shutdown::Stop;
            }
            _ = hup.recv() => match Config::load(file) {
                Ok(config) => {
                    tracing::info!(file = %file.display(), "SIGHUP: the new configuration is valid; restarting with it.");
                    *new = Some(config);
                    return Shutdown::Reload;
                }
                Err(e) => {
                    for line in e.lines() {
                        tracing::error!("{line}");
                    }
                    tracing::error!(file = %file.display(), "SIGHUP: the new configuration is refused; the running one is kept.");
                }
            },
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT; SIGHUP reloads the configuration.
pub(crate) fn run(file: &Path) -> ExitCode {
    let config = match load(file) {
        Ok(c) => c,
        Err(code) => return code,
    };
    init_logging();
    // Test builds only (cargo feature `failpoints`); a release build ignores the variable.
    if let Err(e) = fivezero_gateway::failpoints::arm_from_env() {
        eprintln!("fivezero-gateway: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let mut config = config;
        loop {
            let mut new = None;
            let why = fivezero_gateway::daemon::serve(config, signals(file, &mut new)).await?;
            match (why, new) {
                (Shutdown::Reload, Some(next)) => config = next,
                _ => return Ok::<(), anyhow::Error>(()),
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("fivezero-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the buffer's figures; the gateway must be stopped (the running daemon holds the
/// database exclusively and publishes the same figures on its metrics endpoint).
pub(crate) fn buffer_stats(file: &Path) -> ExitCode {
    let config = match load(file) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let db = config.gateway.state_dir.join("buffer.sqlite");
    if !db.exists() {
        println!(
            "No buffer yet: {} does not exist (the gateway has not run).",
            db.display()
        );
        return ExitCode::SUCCESS;
    }
    let options = BufferOptions::from_config(&config.gateway, &config.buffer);
    let buffer = match Buffer::open(&config.gateway.state_dir, &options) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot open {}: {e}", db.display());
            if let Some(addr) = config.metrics.listen {
                eprintln!(
                    "If the gateway is running, read its figures with: curl -s http://{addr}/metrics | grep fivezero_outbox"
                );
            }
            return ExitCode::FAILURE;
        }
    };
    let s = buffer.stats();
    let c = &s.counters;
    let age = s.oldest_unsent_age_ms.map_or_else(
        || "-".to_owned(),
        |ms| {
            humantime::format_duration(std::time::Duration::from_millis(
                u64::try_from(ms.max(0)).unwrap_or(0),
            ))
            .to_string()
        },
    );
    let headroom = s
        .headroom_hours
        .map_or_else(|| "-".to_owned(), |h| format!("{h:.1} h"));
    println!("buffer           {}", db.display());
    println!("epoch            {}", s.epoch);
    println!("committed seq    {}", s.committed_seq);
    println!("broker-acked seq {}", s.broker_acked_seq);
    println!("sink-acked seq   {}", s.sink_acked_seq);
    println!("backlog          {} readings in {} rows", s.backlog, s.rows);
    println!(
        "bytes            {} charged of {} budget, {} on disk",
        s.charged_bytes, s.max_bytes, s.file_bytes
    );
    println!("oldest unsent    {age}");
    println!("headroom         {headroom}");
    println!(
        "evicted          buffer_full {}, max_age {}",
        c.evicted_buffer_full, c.evicted_max_age
    );
    println!(
        "dropped          disk_full {}, storage {}, invalid {}",
        c.dropped_disk_full, c.dropped_storage, c.dropped_invalid
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    if let Ok(rt) = runtime {
        rt.block_on(buffer.close());
    }
    ExitCode::SUCCESS
}
