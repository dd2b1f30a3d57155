//! One point's accumulator in one window, and the counter step rules.
//!
//! Rules (the contract the engine keeps; numbers from the KPI reference, §5):
//! - **Rollover**: a counter that falls from at least 90 % of its wrap modulus `M` to a value
//!   that makes the wrapped delta `M − prev + cur` smaller than `M / 2` has wrapped; the
//!   delta is the wrapped one. `M` is the register's 2^bits in the canonical unit (raw
//!   modulus × scale × conversion), so wrapping on engineering values is wrapping on raw ones.
//! - **Jitter**: a fall of at most one register step (or 1e-12 relative) is no change.
//! - **Reset** (meter exchange, reset to zero): any other fall. The window is flagged
//!   faulty. The new reading counts as the delta (energy since a reset to zero) only when a
//!   rating is known and the reading is within what it allows over the interval; otherwise
//!   the interval of the reset counts nothing. The new reading becomes the baseline.
//! - **Spike**: a delta above `1.2 × max_rate × Δt + resolution` is rejected and flagged;
//!   the baseline stays, so a one-off glitch costs nothing. After
//!   [`SPIKE_REBASE_AFTER`] rejections in a row the meter is taken to have really jumped and
//!   the newest reading becomes the baseline, without counting the jump.

use fivezero_model::kpi::Sum;
use serde::{Deserialize, Serialize};

use super::spec::{Accumulation, PointSpec};

/// Consecutive rejected spikes after which the newest reading becomes the baseline.
pub const SPIKE_REBASE_AFTER: u32 = 3;

/// Spike filter margin over the rating.
const SPIKE_MARGIN: f64 = 1.2;

const HOUR_MS: f64 = 3_600_000.0;

/// What one counter step (previous baseline → new reading) amounts to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Step {
    /// A plausible increase (possibly across a rollover).
    Delta {
        /// The increase, in the canonical unit.
        delta: f64,
        /// The register wrapped.
        wrapped: bool,
    },
    /// A fall of at most one step: no change.
    Jitter,
    /// The meter was reset or exchanged.
    Reset {
        /// What the interval is credited with (the new reading or 0).
        delta: f64,
    },
    /// The increase is beyond what the rating allows.
    Spike,
}

/// Classifies a counter step from `prev` to `cur` over `dt_ms` per the module's rules.
pub(crate) fn classify(spec: &PointSpec, prev: f64, cur: f64, dt_ms: i64) -> Step {
    let allowed = spec
        .max_rate_per_hour
        .map(|rate| SPIKE_MARGIN * rate * (dt_ms as f64 / HOUR_MS) + spec.resolution);
    let within = |d: f64| d.is_finite() && allowed.is_none_or(|a| d <= a);
    let raw = cur - prev;
    let (delta, wrapped) = if raw >= 0.0 {
        (raw, false)
    } else if -raw <= spec.resolution.max(prev.abs() * 1e-12) {
        return Step::Jitter;
    } else {
        let wrapped = spec.wrap.and_then(|m| {
            let d = m - prev + cur;
            (prev >= 0.9 * m && (0.0..m / 2.0).contains(&d)).then_some(d)
        });
        match wrapped {
            Some(d) => (d, true),
            None => {
                let credited = if allowed.is_some() && cur >= 0.0 && within(cur) {
                    cur
                } else {
                    0.0
                };
                return Step::Reset { delta: credited };
            }
        }
    };
    if within(delta) {
        Step::Delta { delta, wrapped }
    } else {
        Step::Spike
    }
}

/// One point's accumulator in one window.
///
/// `total` is the sum of counter deltas, or the time integral of the value in
/// value × milliseconds (for integrals and means); `covered_ms` the time those integrated
/// segments span.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Acc {
    pub(crate) samples: u32,
    pub(crate) sample_sum: f64,
    pub(crate) total: f64,
    pub(crate) covered_ms: f64,
    pub(crate) credited: bool,
    pub(crate) estimated: bool,
    pub(crate) fault: bool,
    pub(crate) wraps: u32,
    pub(crate) resets: u32,
    pub(crate) spikes: u32,
    pub(crate) gaps: u32,
}

/// One point's result for one closed window.
#[derive(Debug, Clone, PartialEq)]
pub struct PointSum {
    /// Device name.
    pub device: String,
    /// Metric id.
    pub metric: String,
    /// How the value was accumulated.
    pub accumulation: Accumulation,
    /// The window sum for the KPI functions. Its `value` is the sum of deltas (counters), the
    /// integral (rates, e.g. kWh from kW) or the time-weighted mean (gauges); 0 when
    /// [`has_value`](Self::has_value) is false. `coverage` is the share of expected samples
    /// present, capped at 1; `estimated` is set when a counter delta was spread over a gap or
    /// carried from an already closed window; `fault` when a reset or spike was seen.
    pub sum: Sum,
    /// Whether anything is known about the window: false for a silent point (coverage 0).
    pub has_value: bool,
    /// Good samples with a timestamp in the window.
    pub samples: u32,
    /// Samples expected: window length over poll interval.
    pub expected: f64,
    /// Rollovers seen.
    pub wraps: u32,
    /// Meter resets seen.
    pub resets: u32,
    /// Spikes rejected.
    pub spikes: u32,
    /// Gaps longer than twice the poll interval ending in the window (bridged for counters,
    /// left out for integrals and means).
    pub gaps: u32,
}

impl PointSum {
    pub(crate) fn from_acc(spec: &PointSpec, acc: &Acc, window_ms: i64) -> Self {
        let expected = window_ms as f64 / spec.interval_ms as f64;
        let coverage = if expected > 0.0 {
            (f64::from(acc.samples) / expected).min(1.0)
        } else {
            0.0
        };
        let (has_value, value) = match spec.accumulation {
            Accumulation::Counter => (acc.samples > 0 || acc.credited, acc.total),
            Accumulation::Integral { per_ms } => (
                acc.samples > 0 || acc.covered_ms > 0.0,
                acc.total / per_ms as f64,
            ),
            Accumulation::Mean => {
                if acc.covered_ms > 0.0 {
                    (true, acc.total / acc.covered_ms)
                } else if acc.samples > 0 {
                    (true, acc.sample_sum / f64::from(acc.samples))
                } else {
                    (false, 0.0)
                }
            }
        };
        Self {
            device: spec.device.clone(),
            metric: spec.metric.clone(),
            accumulation: spec.accumulation,
            sum: Sum {
                value,
                coverage,
                estimated: acc.estimated,
                fault: acc.fault,
            },
            has_value,
            samples: acc.samples,
            expected,
            wraps: acc.wraps,
            resets: acc.resets,
            spikes: acc.spikes,
            gaps: acc.gaps,
        }
    }

    /// The input for the model's KPI functions: `None` when nothing is known about the window,
    /// so a silent meter makes its KPI missing, never zero.
    #[must_use]
    pub fn input(&self) -> Option<Sum> {
        self.has_value.then_some(self.sum)
    }

    /// Flags for a KPI record's `flags`: `meter_reset`, `spike_rejected`, `counter_rollover`,
    /// `gap_bridged` (counters) or `gap` (integrals and means).
    #[must_use]
    pub fn flags(&self) -> Vec<&'static str> {
        let mut f = Vec::new();
        if self.resets > 0 {
            f.push("meter_reset");
        }
        if self.spikes > 0 {
            f.push("spike_rejected");
        }
        if self.wraps > 0 {
            f.push("counter_rollover");
        }
        if self.gaps > 0 {
            f.push(if self.accumulation == Accumulation::Counter {
                "gap_bridged"
            } else {
                "gap"
            });
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn counter() -> PointSpec {
        PointSpec::new(
            "m",
            "electricity.import_energy",
            Accumulation::Counter,
            Duration::from_secs(5),
        )
    }

    #[test]
    fn an_increase_is_a_delta() {
        assert_eq!(
            classify(&counter(), 10.0, 12.5, 5_000),
            Step::Delta {
                delta: 2.5,
                wrapped: false
            }
        );
    }

    #[test]
    fn a_u32_register_near_its_top_that_falls_has_wrapped() {
        let spec = counter().with_wrap(Some(4_294_967_296.0));
        assert_eq!(
            classify(&spec, 4_294_967_290.0, 4.0, 5_000),
            Step::Delta {
                delta: 10.0,
                wrapped: true
            }
        );
    }

    #[test]
    fn a_fall_far_from_the_top_is_a_reset_even_with_a_wrap_modulus() {
        let spec = counter().with_wrap(Some(4_294_967_296.0));
        assert_eq!(
            classify(&spec, 1_000_000.0, 3.0, 5_000),
            Step::Reset { delta: 0.0 }
        );
        // Without a modulus a fall from the top is a reset too.
        assert_eq!(
            classify(&counter(), 4_294_967_290.0, 4.0, 5_000),
            Step::Reset { delta: 0.0 }
        );
    }

    #[test]
    fn a_reset_credits_the_new_reading_only_within_the_rating() {
        let spec = counter().with_max_rate_per_hour(Some(3_600.0)); // 1 kWh/s
        assert_eq!(
            classify(&spec, 500.0, 4.0, 5_000),
            Step::Reset { delta: 4.0 }
        );
        assert_eq!(
            classify(&spec, 500.0, 400.0, 5_000),
            Step::Reset { delta: 0.0 }
        );
    }

    #[test]
    fn a_fall_of_one_step_is_jitter() {
        let spec = counter().with_resolution(0.1);
        assert_eq!(classify(&spec, 10.0, 9.9, 5_000), Step::Jitter);
    }

    #[test]
    fn an_increase_beyond_the_rating_is_a_spike_but_one_quantum_is_allowed() {
        // 100 kW for 5 s allows 0.1667 kWh × 1.2 = 0.2 kWh, plus one 1-kWh register step.
        let spec = counter()
            .with_max_rate_per_hour(Some(100.0))
            .with_resolution(1.0);
        assert!(matches!(
            classify(&spec, 10.0, 11.0, 5_000),
            Step::Delta { .. }
        ));
        assert_eq!(classify(&spec, 10.0, 12.0, 5_000), Step::Spike);
        // The same rise over an hour is fine.
        assert!(matches!(
            classify(&spec, 10.0, 110.0, 3_600_000),
            Step::Delta { .. }
        ));
    }

    #[test]
    fn a_silent_gauge_has_no_value_and_a_counter_with_samples_does() {
        let spec = PointSpec::new("b", "stack.o2", Accumulation::Mean, Duration::from_secs(10));
        let s = PointSum::from_acc(&spec, &Acc::default(), 900_000);
        assert!(!s.has_value);
        assert_eq!(s.input(), None);
        assert_eq!(s.sum.coverage, 0.0);
        let acc = Acc {
            samples: 90,
            sample_sum: 90.0 * 5.0,
            ..Acc::default()
        };
        let s = PointSum::from_acc(&spec, &acc, 900_000);
        assert!(s.has_value);
        assert_eq!(s.sum.value, 5.0);
        assert_eq!(s.sum.coverage, 1.0);
    }
}
