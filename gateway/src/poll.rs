//! The Modbus poller: reads every configured device on its schedule and hands the readings
//! on, decoded into canonical units, over a bounded channel.
//!
//! # Structure
//!
//! ```text
//! spawn(config, tx) ─▶ one LinkTask per physical link ──DeviceReadings──▶ tx (bounded mpsc)
//!                       ├ tcp device            : its own connection
//!                       ├ rtu_tcp host:port      : the devices behind one serial server
//!                       └ rtu /dev/ttyUSB0       : the devices on one serial port
//! ```
//!
//! The logic is pure and tested without sockets; the link task only moves data:
//!
//! | module | what it decides |
//! |---|---|
//! | [`schedule`] | when a device's cycles run: aligned to interval boundaries, no drift, late cycles skipped and counted |
//! | [`backoff`] | how long to wait after failures: exponential with full jitter |
//! | [`unit`](mod@unit) | one device's state: plan cache per due set, misconfigured blocks, unit backoff |
//! | [`cycle`] | one cycle: which request next, what came back, the readings made of it |
//! | [`error`] | what each failure means ([`Disposition`]) |
//! | [`transport`] | the thin I/O: opening a link, one read under a timeout, the reply length check |
//! | [`links`](mod@links) | which devices share a link |
//! | [`health`] | per-device counters and state, read through snapshots |
//! | `link` | the task of one link: the loop that ties the above together |
//!
//! # Readings
//!
//! Every cycle yields one [`DeviceReadings`] with one reading per due point (points with an
//! own, longer interval are due only in some cycles; see `plan::due_points`). No value is
//! ever made up: a point whose request failed has `value: None`, `quality: Error` and a short
//! reason (`timeout`, `exception 02 illegal data address`, `misconfigured block`,
//! `short reply`, `disconnected`, `unit offline`); a point the device marks "not
//! implemented" has `value: None`, `quality: Good`, reason `not available (sentinel)`.
//! Timestamps are receipt times from the injected [`Clock`].

pub mod backoff;
pub mod clock;
pub mod cycle;
pub mod error;
pub mod health;
mod link;
pub mod links;
pub mod schedule;
pub mod transport;
pub mod unit;

use std::sync::Arc;

use fivezero_model::wire::Reading;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use backoff::Backoff;
pub use clock::{Clock, InstantClock, SystemClock};
pub use error::{DeviceException, Disposition, PollError};
pub use health::{DeviceHealth, DeviceState, HealthSnapshot};
pub use links::{LinkAddr, LinkPlan, RealTransports, Transports, links};
pub use schedule::Schedule;
pub use transport::Connect;

use crate::config::Config;
use link::{LinkTask, LinkTiming};
use unit::Unit;

/// The readings of one cycle of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceReadings {
    /// The device's configured name.
    pub device: Arc<str>,
    /// The cycle's boundary, UTC ms (`cycle × interval`).
    pub ts_ms: i64,
    /// The cycle number (`ts_ms / interval`).
    pub cycle: u64,
    /// One reading per due point, in profile order.
    pub readings: Vec<Reading>,
}

/// What the poller runs on; tests replace the clock, the transports and the jitter seed.
#[derive(Debug, Clone)]
pub struct PollOptions {
    /// Source of reading timestamps and of the schedules' phase.
    pub clock: Arc<dyn Clock>,
    /// Opens the links.
    pub transports: Arc<dyn Transports>,
    /// Seed of the backoff jitter; random when `None`.
    pub seed: Option<u64>,
}

impl Default for PollOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            transports: Arc::new(RealTransports),
            seed: None,
        }
    }
}

/// The running poller.
#[derive(Debug)]
pub struct Poller {
    tasks: Vec<JoinHandle<()>>,
    health: Vec<DeviceHealth>,
    stop: watch::Sender<bool>,
}

/// Starts one task per link of `config`, sending readings on `tx`, with real sockets and
/// serial ports and the system clock.
///
/// # Panics
/// Outside a tokio runtime (as `tokio::spawn` does).
#[must_use]
pub fn spawn(config: &Config, tx: mpsc::Sender<DeviceReadings>) -> Poller {
    spawn_with(config, tx, PollOptions::default())
}

/// [`spawn`] with the given clock, transports and seed.
///
/// # Panics
/// Outside a tokio runtime (as `tokio::spawn` does).
#[must_use]
pub fn spawn_with(
    config: &Config,
    tx: mpsc::Sender<DeviceReadings>,
    options: PollOptions,
) -> Poller {
    let (stop, stop_rx) = watch::channel(false);
    let now = Instant::now();
    let now_ms = options.clock.now_ms();
    let mut seed = options.seed.unwrap_or_else(rand::random);
    let mut next_seed = || {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        seed
    };
    let p = &config.poll;
    let mut tasks = Vec::new();
    let mut health = Vec::new();
    for plan in links(config) {
        let name = plan.addr.to_string();
        let units: Vec<Unit> = plan
            .devices
            .iter()
            .filter_map(|&d| config.devices.get(d))
            .map(|device| {
                let h = DeviceHealth::new(Arc::clone(&device.name), name.clone());
                health.push(h.clone());
                let backoff = Backoff::new(p.backoff_min, p.backoff_max, next_seed());
                Unit::new(device.clone(), backoff, h, now, now_ms)
            })
            .collect();
        let timing = LinkTiming {
            connect_timeout: p.connect_timeout,
            backoff_max: p.backoff_max,
            inter_frame_delay: plan.inter_frame_delay,
        };
        let task = LinkTask::new(
            name,
            options.transports.connector(&plan.addr),
            Backoff::new(p.backoff_min, p.backoff_max, next_seed()),
            timing,
            units,
            Arc::clone(&options.clock),
            tx.clone(),
            stop_rx.clone(),
        );
        tasks.push(tokio::spawn(task.run()));
    }
    Poller {
        tasks,
        health,
        stop,
    }
}

impl Poller {
    /// A snapshot of every device's health, in config order.
    #[must_use]
    pub fn health(&self) -> Vec<HealthSnapshot> {
        self.health.iter().map(DeviceHealth::snapshot).collect()
    }

    /// The live health records (cheap to clone and to keep, e.g. for a status endpoint).
    #[must_use]
    pub fn device_health(&self) -> &[DeviceHealth] {
        &self.health
    }

    /// Stops gracefully: no new cycle starts, the cycles in progress finish (each request is
    /// bounded by its timeout) and their readings are sent, then every link closes.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        for task in self.tasks {
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::error!(error = %e, "A link task panicked.");
            }
        }
    }
}
