//! The edge KPI engine's pure core: readings in, per-point window sums out.
//!
//! Decoded readings go into an [`Engine`] built from one [`PointSpec`] per (device, metric)
//! and the site's IANA time zone. Per point and per window the engine keeps an accumulator:
//!
//! | accumulation | window value | from |
//! |---|---|---|
//! | [`Accumulation::Counter`] | sum of deltas, rollover undone, resets and spikes flagged | energy, volume, mass totalisers |
//! | [`Accumulation::Integral`] | trapezoid integral, never over a gap > 2 × poll interval | power (kW → kWh), mass and volume flows (t/h → t) |
//! | [`Accumulation::Mean`] | time-weighted mean | temperatures, O2, pressures |
//!
//! Windows are the 15 minutes, hours and local days of the site's time zone
//! ([`window`]); [`Engine::close_due`] returns each window once it has ended, with a
//! [`PointSum`] for every configured point (coverage 0 and no value for a silent one), whose
//! [`PointSum::input`] is what the KPI functions of [`fivezero_model::kpi`] take. The engine
//! state serialises with [`Engine::save`] and continues with [`Engine::restore`] after a
//! restart, without losing or double counting a counter delta.
//!
//! The rules (rollover, reset, spike, gaps, boundary splitting, late readings) are written
//! next to the code that keeps them: [`accumulate`] and [`engine`].
//!
//! The engine itself does no I/O and reads no configuration. [`records`] turns a closed
//! window into the site's KPI records from the roles of the configuration
//! ([`crate::site`]); [`task`] is the daemon's task that builds the points from the devices'
//! profiles, feeds the engine with every committed poll cycle, closes windows on the wall
//! clock and commits their records and the engine's state to the buffer together.

pub mod accumulate;
pub mod engine;
pub mod records;
pub mod spec;
pub mod task;
pub mod window;

pub use accumulate::PointSum;
pub use engine::{ClosedWindow, Engine, Ingested, Stats};
pub use spec::{Accumulation, PointSpec, resolution, window_unit, wrap_modulus};
pub use window::{Calendar, PERIODS};

/// Why the KPI engine cannot be built or restored.
#[derive(Debug, thiserror::Error)]
pub enum KpiError {
    /// The site's time zone is not in the time-zone database.
    #[error("unknown time zone {tz:?}: {why}")]
    TimeZone {
        /// The zone name given.
        tz: String,
        /// What the time-zone database said.
        why: String,
    },
    /// A metric id is not in the catalogue.
    #[error("metric {metric:?} is not in the catalogue")]
    UnknownMetric {
        /// The id given.
        metric: String,
    },
    /// A `state` or `info` metric (or a helper point) has no window value.
    #[error("{metric:?} is a state, info or helper point and is not accumulated")]
    NotAccumulated {
        /// The metric id or point name.
        metric: String,
    },
    /// A point spec is invalid.
    #[error("point {device}/{metric}: {why}")]
    BadSpec {
        /// Device name.
        device: String,
        /// Metric id.
        metric: String,
        /// What is wrong.
        why: String,
    },
    /// Two specs name the same device and metric.
    #[error("point {device}/{metric} is configured twice")]
    DuplicatePoint {
        /// Device name.
        device: String,
        /// Metric id.
        metric: String,
    },
    /// A saved state cannot be read or does not fit.
    #[error("KPI engine state: {why}")]
    State {
        /// What is wrong.
        why: String,
    },
}
