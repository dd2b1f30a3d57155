//! `fivezero-gateway run`: the daemon that wires poller, buffer and publisher together.
//!
//! ```text
//! poller ──DeviceReadings (bounded)──▶ hand-over task ──append──▶ buffer (SQLite) ◀──Outbox── publisher ──▶ broker
//!                                          │ committed cycles           ▲        ▲                 │
//!                                          ▼ of devices with roles      │        └─ sink's ack watermark ◀┘
//!                                      KPI task ──records + state──────┘
//! ```
//!
//! Start-up: the config is validated (profiles included), the buffer opened (a new epoch when
//! needed), the publisher and the poller started, the Prometheus endpoint bound, and systemd
//! told `READY=1` (a no-op outside systemd). One device that cannot be reached never stops
//! start-up: the poller keeps retrying it with backoff.
//!
//! Shutdown on SIGTERM or SIGINT, within `gateway.shutdown_timeout`:
//! 1. the poller stops at cycle boundaries; cycles in flight finish and are handed over;
//! 2. the hand-over task commits everything it holds to the buffer; the KPI task takes the
//!    last cycles, commits the records of windows already due and stores its state;
//! 3. the publisher gets what is left of the deadline to publish what the broker will take,
//!    then publishes the retained `offline` status and disconnects;
//! 4. the buffer marks a clean stop and checkpoints its WAL.
//!
//! Nothing committed is lost by stopping early: what the broker did not acknowledge is
//! published after the next start.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::buffer::{Buffer, BufferOptions};
use crate::config::Config;
use crate::failpoints::{self, failpoint};
use crate::kpi::{self, task::Site};
use crate::metrics::{self, DaemonCounts};
use crate::poll::{self, DeviceReadings, HealthSnapshot, Poller, SystemClock};
use crate::publish::{PublishStats, Publisher, PublisherConfig};

/// Readings the hand-over task received and the buffer refused.
#[derive(Debug, Default)]
struct HandOverCounts {
    polled: AtomicU64,
    refused: AtomicU64,
}

/// Why [`serve`] stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// For good (SIGTERM, SIGINT): systemd is told `STOPPING=1`.
    Stop,
    /// To start again with a new configuration (SIGHUP): systemd is told `RELOADING=1`, and
    /// `READY=1` once the new one runs.
    Reload,
}

/// Runs the gateway until `stop` completes (the binary passes SIGTERM/SIGINT).
///
/// # Errors
/// Start-up failures that need an operator: the buffer cannot be opened, the metrics address
/// is taken, the MQTT credentials or certificates cannot be read.
pub async fn run(config: Config, stop: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    serve(config, async {
        stop.await;
        Shutdown::Stop
    })
    .await
    .map(|_| ())
}

/// As [`run`], stopping when `stop` says why; returns that reason once everything is
/// committed, flushed and closed, so a reload starts from a clean stop.
///
/// # Errors
/// As [`run`].
pub async fn serve(
    config: Config,
    stop: impl Future<Output = Shutdown> + Send,
) -> anyhow::Result<Shutdown> {
    let config = Arc::new(config);
    let buffer_options = BufferOptions::from_config(&config.gateway, &config.buffer);
    let buffer = Buffer::open(&config.gateway.state_dir, &buffer_options).with_context(|| {
        format!(
            "opening the buffer in {}",
            config.gateway.state_dir.display()
        )
    })?;
    let stats = buffer.stats();
    info!(
        epoch = %stats.epoch,
        committed_seq = stats.committed_seq,
        backlog = stats.backlog,
        "Buffer open."
    );

    let profiles: Vec<String> = {
        let mut ids: Vec<String> = config
            .devices
            .iter()
            .map(|d| d.profile.id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let publisher_config =
        PublisherConfig::from_config(&config, profiles).context("preparing the MQTT connection")?;
    let publisher = Publisher::new(publisher_config, buffer.clone());
    let publish_stats = publisher.stats();
    let (publish_stop_tx, publish_stop_rx) = watch::channel(false);
    let publisher_task = tokio::spawn(async move {
        let mut rx = publish_stop_rx;
        let stopped = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        if let Err(e) = publisher.run(stopped).await {
            error!(error = %e, "Publisher stopped.");
        }
    });

    let capacity = (config.devices.len() * 2).max(16);
    let kpi_figures = kpi::task::SharedFigures::default();
    let (kpi_tx, kpi_task) =
        start_kpis(&config, &buffer, capacity, Arc::clone(&kpi_figures)).await?;
    let (tx, rx) = mpsc::channel::<DeviceReadings>(capacity);
    let counts = Arc::new(HandOverCounts::default());
    let hand_over = tokio::spawn(hand_over(rx, buffer.clone(), Arc::clone(&counts), kpi_tx));
    let poller = poll::spawn(&config, tx);

    let metrics_task = match config.metrics.listen {
        Some(addr) => Some(
            serve_metrics(
                addr,
                &poller,
                &buffer,
                &publish_stats,
                &counts,
                kpi_task.as_ref().map(|_| Arc::clone(&kpi_figures)),
            )
            .await
            .with_context(|| format!("binding the metrics endpoint on {addr}"))?,
        ),
        None => None,
    };

    notify_systemd(&[sd_notify::NotifyState::Ready]);
    let watchdog = sd_notify::watchdog_enabled().map(|period| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tick.tick().await;
                notify_systemd(&[sd_notify::NotifyState::Watchdog]);
            }
        })
    });
    info!(
        gateway = %config.gateway.id,
        site = %config.gateway.site,
        devices = config.devices.len(),
        "Gateway running."
    );

    let why = stop.await;
    info!(reason = ?why, "Stopping: finishing the cycles in flight.");
    match why {
        Shutdown::Stop => notify_systemd(&[sd_notify::NotifyState::Stopping]),
        Shutdown::Reload => notify_systemd(&[sd_notify::NotifyState::Reloading]),
    }
    let deadline = tokio::time::Instant::now() + config.gateway.shutdown_timeout;

    // 1–2: stop polling, commit what is in hand.
    let polling_done = async {
        poller.shutdown().await;
        let _ = hand_over.await;
        if let Some(task) = kpi_task {
            let _ = task.await;
        }
    };
    if tokio::time::timeout_at(deadline, polling_done)
        .await
        .is_err()
    {
        warn!(
            "Stopping: the poller did not finish in time; the cycles in flight are not committed."
        );
    }

    // 3: let the publisher flush what the broker takes within the deadline.
    let flushed = async {
        loop {
            let s = buffer.stats();
            if s.broker_acked_seq >= s.committed_seq || !publish_stats.snapshot().connected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // Keep a share of the deadline for the offline status and the disconnect.
    let flush_deadline = deadline
        .checked_sub(config.gateway.shutdown_timeout / 5)
        .unwrap_or(deadline);
    let _ = tokio::time::timeout_at(flush_deadline, flushed).await;
    publish_stop_tx.send_replace(true);
    if tokio::time::timeout_at(deadline, publisher_task)
        .await
        .is_err()
    {
        warn!("Stopping: the publisher did not disconnect in time.");
    }

    // 4: close the buffer cleanly.
    if let Some(task) = metrics_task {
        task.abort();
    }
    if let Some(task) = watchdog {
        task.abort();
    }
    let backlog = buffer.stats().backlog;
    buffer.close().await;
    info!(
        backlog,
        "Gateway stopped; the backlog is published after the next start."
    );
    Ok(why)
}

/// Most poll cycles committed in one transaction.
const GROUP_COMMIT: usize = 256;

/// Moves poll cycles into the buffer, counting what it refuses, and passes the committed
/// cycles of devices with roles to the KPI task. The cycles waiting when the buffer is free
/// are committed together (group commit): one transaction and one `fsync` for all the devices
/// read on the same second, instead of one each.
async fn hand_over(
    mut rx: mpsc::Receiver<DeviceReadings>,
    buffer: Buffer,
    counts: Arc<HandOverCounts>,
    kpis: Option<(mpsc::Sender<DeviceReadings>, Arc<HashSet<String>>)>,
) {
    let mut group = Vec::with_capacity(GROUP_COMMIT);
    while rx.recv_many(&mut group, GROUP_COMMIT).await > 0 {
        failpoint!(failpoints::K1_AFTER_POLL);
        let n: usize = group.iter().map(|c| c.readings.len()).sum();
        counts.polled.fetch_add(n as u64, Relaxed);
        let results = buffer.append_cycles(&group).await;
        for (cycle, result) in group.drain(..).zip(results) {
            match result {
                Ok(_) => {
                    if let Some((tx, devices)) = &kpis
                        && devices.contains(&*cycle.device)
                    {
                        // Only a stopped KPI task refuses, and then its state is already stored.
                        let _ = tx.send(cycle).await;
                    }
                }
                Err(e) => {
                    counts.refused.fetch_add(u64::from(e.dropped()), Relaxed);
                    // The buffer counts the drop by reason and rate-limits its own ERROR lines.
                    tracing::debug!(device = %cycle.device, reason = e.reason(), "Cycle not committed.");
                }
            }
        }
    }
}

/// The KPI task handle and the hand-over's side of its channel, when the config computes KPIs.
type KpiStart = (
    Option<(mpsc::Sender<DeviceReadings>, Arc<HashSet<String>>)>,
    Option<JoinHandle<()>>,
);

/// Builds the site's KPI engine from the stored state and starts its task.
async fn start_kpis(
    config: &Config,
    buffer: &Buffer,
    capacity: usize,
    figures: kpi::task::SharedFigures,
) -> anyhow::Result<KpiStart> {
    if config.kpi.groups.is_empty() {
        return Ok((None, None));
    }
    let saved = buffer
        .kpi_state()
        .await
        .context("reading the stored KPI state")?;
    let Some(site) = Site::new(config, saved.as_deref()).context("building the KPI engine")? else {
        return Ok((None, None));
    };
    let devices: HashSet<String> = config
        .devices
        .iter()
        .filter(|d| site.wants(&d.name))
        .map(|d| d.name.to_string())
        .collect();
    let (tx, rx) = mpsc::channel(capacity);
    let task = tokio::spawn(kpi::task::run(
        site,
        buffer.clone(),
        rx,
        kpi::task::grace(config),
        Arc::new(SystemClock),
        figures,
    ));
    Ok((Some((tx, Arc::new(devices))), Some(task)))
}

/// Binds `GET /metrics` (Prometheus text format) and `GET /healthz`.
async fn serve_metrics(
    addr: SocketAddr,
    poller: &Poller,
    buffer: &Buffer,
    publish: &PublishStats,
    counts: &Arc<HandOverCounts>,
    kpi: Option<kpi::task::SharedFigures>,
) -> std::io::Result<JoinHandle<()>> {
    use axum::routing::get;

    let health: Vec<_> = poller.device_health().to_vec();
    let buffer = buffer.clone();
    let publish = publish.clone();
    let counts = Arc::clone(counts);
    let render = move || {
        let snapshots: Vec<HealthSnapshot> =
            health.iter().map(poll::DeviceHealth::snapshot).collect();
        metrics::render(
            &snapshots,
            &buffer.stats(),
            &publish.snapshot(),
            DaemonCounts {
                polled_readings: counts.polled.load(Relaxed),
                refused_readings: counts.refused.load(Relaxed),
                kpi: kpi
                    .as_ref()
                    .map(|f| *f.lock().unwrap_or_else(PoisonError::into_inner)),
            },
        )
    };
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let render = render.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(address = %listener.local_addr()?, "Metrics on /metrics.");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "Metrics endpoint stopped.");
        }
    }))
}

fn notify_systemd(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed.");
    }
}
