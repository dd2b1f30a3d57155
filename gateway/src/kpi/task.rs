//! The daemon's KPI task: the site's [`Engine`] fed with every committed poll cycle of a
//! device that has a role, closing windows on the wall clock and committing their records to
//! the buffer, which publishes them on the `kpi` topic with the same guarantees as readings.
//!
//! Persistence: the engine's state (with the hours kept for the day's exit-temperature
//! condition) is stored in the buffer's database in the same transaction as the records of the
//! windows it closed, so a crash can neither lose a window's records nor publish them twice;
//! it is also stored every [`SAVE_EVERY`] and at a clean stop. After a restart the windows
//! continue from the stored state: a counter's first delta after the restart is measured from
//! its last stored value (nothing lost, nothing counted twice); power and flows integrated
//! between the last save and a crash are missing from their window, which its coverage shows.
//!
//! A window closes [`grace`] after its end, so that the cycles polled just before the end
//! (committed a poll timeout later) are in it; a reading that arrives later still is counted
//! as late and left out.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fivezero_model::wire::{KpiRecord, Reading};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::records::{self, HourMarks};
use super::{Accumulation, Engine, KpiError, PointSpec, Stats};
use crate::buffer::Buffer;
use crate::config::{Config, KpiConfig};
use crate::poll::DeviceReadings;
use crate::poll::clock::Clock;
use crate::site::Measure;

/// How often the engine's state is stored when no window closes.
pub const SAVE_EVERY: Duration = Duration::from_secs(60);

/// What the KPI task has done, for the metrics endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// The engine's counters (kept across restarts).
    pub engine: Stats,
    /// Windows closed since the start.
    pub windows_closed: u64,
    /// KPI records committed to the buffer since the start.
    pub records_committed: u64,
    /// KPI records the buffer refused since the start (counted by reason there too).
    pub records_dropped: u64,
}

/// [`Figures`] shared with the metrics endpoint.
pub type SharedFigures = Arc<Mutex<Figures>>;

/// The site's engine with what the records need beyond it.
#[derive(Debug)]
pub struct Site {
    engine: Engine,
    kpi: Arc<KpiConfig>,
    marks: HourMarks,
    devices: HashSet<String>,
}

/// What is stored: the engine's own bytes and the hours kept for the day.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    engine: Vec<u8>,
    marks: HourMarks,
}

impl Site {
    /// The site of `config`, continuing from `saved` (the bytes of [`Site::save`]) when given
    /// and usable; `None` when no KPI group is computed.
    ///
    /// # Errors
    /// [`KpiError`] when the points cannot be built (a role's metric without a profile point
    /// is refused by the config's validation, so this means an inconsistent config).
    pub fn new(config: &Config, saved: Option<&[u8]>) -> Result<Option<Self>, KpiError> {
        let kpi = &config.kpi;
        let Some(tz) = kpi.time_zone.as_deref() else {
            return Ok(None);
        };
        if kpi.groups.is_empty() {
            return Ok(None);
        }
        let specs = specs(config)?;
        let devices = specs.iter().map(|s| s.device.clone()).collect();
        let restored = saved.and_then(|bytes| match postcard::from_bytes::<Saved>(bytes) {
            Ok(s) => match Engine::restore(tz, specs.clone(), &s.engine) {
                Ok(engine) => Some((engine, s.marks)),
                Err(e) => {
                    warn!(error = %e, "The stored KPI state does not fit this configuration; the open windows start afresh.");
                    None
                }
            },
            Err(e) => {
                warn!(error = %e, "The stored KPI state cannot be read; the open windows start afresh.");
                None
            }
        });
        let (engine, marks) = match restored {
            Some(r) => r,
            None => (Engine::new(tz, specs)?, HourMarks::default()),
        };
        Ok(Some(Self {
            engine,
            kpi: Arc::new(kpi.clone()),
            marks,
            devices,
        }))
    }

    /// The state to store.
    ///
    /// # Errors
    /// [`KpiError::State`] if the engine cannot serialise (it does not for finite readings).
    pub fn save(&self) -> Result<Vec<u8>, KpiError> {
        let saved = Saved {
            engine: self.engine.save()?,
            marks: self.marks.clone(),
        };
        postcard::to_stdvec(&saved).map_err(|e| KpiError::State { why: e.to_string() })
    }

    /// Whether readings of `device` feed a role.
    #[must_use]
    pub fn wants(&self, device: &str) -> bool {
        self.devices.contains(device)
    }

    /// Takes committed readings.
    pub fn ingest<'a>(&mut self, readings: impl IntoIterator<Item = &'a Reading>) {
        self.engine.ingest_all(readings);
    }

    /// The records of every window that ended at or before `now_ms`, in the order the windows
    /// ended.
    pub fn close_due(&mut self, now_ms: i64) -> Vec<KpiRecord> {
        self.close_due_counted(now_ms).0
    }

    /// As [`Site::close_due`], with the number of windows closed.
    fn close_due_counted(&mut self, now_ms: i64) -> (Vec<KpiRecord>, u64) {
        let mut out = Vec::new();
        let windows = self.engine.close_due(now_ms);
        let n = windows.len() as u64;
        for window in windows {
            out.extend(records::records(&window, &self.kpi, &mut self.marks));
        }
        (out, n)
    }

    /// When the next window ends, once known.
    #[must_use]
    pub fn next_due(&self) -> Option<i64> {
        self.engine.next_due()
    }

    /// What the engine did with its input.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }
}

/// One engine point per role source: counters with the wrap and step of their register, a
/// spike limit from the profile's rated power for energy counters, states averaged into a
/// running share.
///
/// # Errors
/// [`KpiError::NotAccumulated`] when a source's device or point is missing (the config's
/// validation refuses such configs).
pub fn specs(config: &Config) -> Result<Vec<PointSpec>, KpiError> {
    let mut out: Vec<PointSpec> = Vec::new();
    for (role, sources) in &config.kpi.inputs {
        for source in sources {
            if out
                .iter()
                .any(|s| s.device == *source.device && s.metric == source.metric)
            {
                continue;
            }
            let missing = || KpiError::NotAccumulated {
                metric: format!("{} {}", source.device, source.metric),
            };
            let device = config
                .devices
                .iter()
                .find(|d| d.name == source.device)
                .ok_or_else(missing)?;
            let point = device
                .profile
                .points
                .iter()
                .find(|p| p.metric.is_some_and(|m| m.id == source.metric))
                .ok_or_else(missing)?;
            let interval = point.interval.unwrap_or(device.interval);
            let spec = if role.measure() == Measure::State {
                PointSpec::new(&*device.name, source.metric, Accumulation::Mean, interval)
            } else {
                let spec = PointSpec::for_profile_point(&*device.name, point, interval, None)?;
                let rated = device
                    .profile
                    .rated_power_kw
                    .filter(|_| spec.accumulation == Accumulation::Counter)
                    .filter(|_| point.metric.is_some_and(|m| m.unit == "kWh"));
                spec.with_max_rate_per_hour(rated)
            };
            out.push(spec);
        }
    }
    Ok(out)
}

/// How long after a window's end it closes: the longest poll interval plus request timeout of
/// the devices with roles, plus 2 s for the hand-over.
#[must_use]
pub fn grace(config: &Config) -> Duration {
    let devices: HashSet<&str> = config
        .kpi
        .inputs
        .values()
        .flatten()
        .map(|s| &*s.device)
        .collect();
    config
        .devices
        .iter()
        .filter(|d| devices.contains(&*d.name))
        .map(|d| d.interval + d.timeout)
        .max()
        .unwrap_or_default()
        + Duration::from_secs(2)
}

/// Runs until `rx` closes (the hand-over stopped), then stores the state; keeps `figures`
/// up to date.
pub async fn run(
    mut site: Site,
    buffer: Buffer,
    mut rx: mpsc::Receiver<DeviceReadings>,
    grace: Duration,
    clock: Arc<dyn Clock>,
    figures: SharedFigures,
) {
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let mut save_tick = tokio::time::interval(SAVE_EVERY);
    save_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        grace = %humantime::format_duration(grace),
        "KPI engine running."
    );
    loop {
        let now = clock.now_ms();
        let due_in = site.next_due().map_or(SAVE_EVERY, |due| {
            Duration::from_millis(
                u64::try_from(due.saturating_add(grace_ms).saturating_sub(now)).unwrap_or(0),
            )
        });
        tokio::select! {
            cycle = rx.recv() => match cycle {
                Some(cycle) => {
                    site.ingest(&cycle.readings);
                    update(&figures, |f| f.engine = site.stats());
                }
                None => break,
            },
            () = tokio::time::sleep(due_in) => {
                close(&mut site, &buffer, clock.now_ms() - grace_ms, &figures).await;
            }
            _ = save_tick.tick() => save(&site, &buffer).await,
        }
    }
    close(&mut site, &buffer, clock.now_ms() - grace_ms, &figures).await;
    save(&site, &buffer).await;
    info!(stats = ?site.stats(), "KPI engine stopped; its state is stored.");
}

fn update(figures: &SharedFigures, f: impl FnOnce(&mut Figures)) {
    f(&mut figures.lock().unwrap_or_else(PoisonError::into_inner));
}

/// Closes what is due and commits the records with the state.
async fn close(site: &mut Site, buffer: &Buffer, now_ms: i64, figures: &SharedFigures) {
    let (records, windows) = site.close_due_counted(now_ms);
    update(figures, |f| {
        f.windows_closed += windows;
        f.engine = site.stats();
    });
    if records.is_empty() {
        return;
    }
    let state = match site.save() {
        Ok(s) => Some(s),
        Err(e) => {
            error!(error = %e, "The KPI state cannot be saved; the records go without it.");
            None
        }
    };
    let n = records.len();
    match buffer.append_kpis(&records, state).await {
        Ok(a) => {
            update(figures, |f| f.records_committed += n as u64);
            debug!(
                records = n,
                first_seq = a.first_seq,
                "KPI records committed."
            );
        }
        Err(e) => {
            update(figures, |f| f.records_dropped += n as u64);
            // The buffer counts the drop by reason and logs it.
            warn!(
                records = n,
                reason = e.reason(),
                "KPI records not committed."
            );
        }
    }
}

async fn save(site: &Site, buffer: &Buffer) {
    match site.save() {
        Ok(bytes) => {
            if let Err(e) = buffer.save_kpi_state(bytes).await {
                warn!(error = %e, "The KPI state could not be stored; it is tried again.");
            }
        }
        Err(e) => error!(error = %e, "The KPI state cannot be saved."),
    }
}
