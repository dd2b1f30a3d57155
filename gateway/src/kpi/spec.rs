//! What the engine must know about each point it accumulates.
//!
//! A [`PointSpec`] is built once per (device, metric) from the gateway configuration and the
//! device's profile; the engine never reads either. The helpers [`wrap_modulus`] and
//! [`resolution`] derive a counter's rollover modulus and register step from a profile point,
//! in the metric's canonical unit (the unit every reading arrives in).

use std::time::Duration;

use fivezero_model::metric::{self, Kind, Metric};
use fivezero_profiles::{DataType, Point};
use serde::{Deserialize, Serialize};

use super::KpiError;

const HOUR_MS: i64 = 3_600_000;
const MINUTE_MS: i64 = 60_000;

/// How a point's readings become one value per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accumulation {
    /// A running total (energy, volume, mass): the window value is the sum of the deltas
    /// between samples, with rollover, meter resets and spikes handled.
    Counter,
    /// A rate (power, mass or volume flow): the window value is its time integral by the
    /// trapezoid rule, in the rate's unit times `per_ms` (kW with `per_ms` = one hour gives
    /// kWh; t/h gives t).
    Integral {
        /// The time unit the rate is per, in milliseconds.
        per_ms: i64,
    },
    /// An instantaneous value (temperature, O2, pressure): the window value is its
    /// time-weighted mean.
    Mean,
}

/// Gauges in kW that are themselves statistics of power, and so are averaged, not integrated.
const NOT_INTEGRATED: &[&str] = &["electricity.power_demand", "electricity.power_demand_max"];

impl Accumulation {
    /// The natural accumulation of a catalogue metric: counters take deltas; power (`kW`,
    /// `kvar`) and mass or volume flows per hour or minute are integrated into energy and
    /// totals; every other gauge is averaged. `None` for `state` and `info` metrics, which
    /// have no window value.
    #[must_use]
    pub fn for_metric(m: &Metric) -> Option<Self> {
        match m.kind {
            Kind::Counter => Some(Self::Counter),
            Kind::State | Kind::Info => None,
            Kind::Gauge => Some(match rate_time_unit(m.unit) {
                Some(per_ms) if !NOT_INTEGRATED.contains(&m.id) => Self::Integral { per_ms },
                _ => Self::Mean,
            }),
        }
    }
}

/// The time unit of a rate unit the engine integrates, in milliseconds.
fn rate_time_unit(unit: &str) -> Option<i64> {
    match unit {
        "kW" | "kvar" => Some(HOUR_MS),
        "t/h" | "kg/h" | "m³/h" | "Nm³/h" => Some(HOUR_MS),
        "m³/min" | "Nm³/min" => Some(MINUTE_MS),
        _ => None,
    }
}

/// The unit of the window value of a metric with canonical unit `unit` accumulated as
/// `acc`: `kWh` for `kW` integrated, `t` for `t/h`, the unit itself for counters and means.
#[must_use]
pub fn window_unit(unit: &str, acc: Accumulation) -> String {
    match acc {
        Accumulation::Counter | Accumulation::Mean => unit.to_owned(),
        Accumulation::Integral { .. } => match unit {
            "kW" => "kWh".to_owned(),
            "kvar" => "kvarh".to_owned(),
            other => other
                .split_once('/')
                .map_or_else(|| other.to_owned(), |(base, _)| base.to_owned()),
        },
    }
}

/// One point the engine accumulates: a (device, metric) pair and how to treat it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointSpec {
    /// Device name from the gateway configuration, as in [`Reading::device`](fivezero_model::wire::Reading::device).
    pub device: String,
    /// Catalogue metric id, as in [`Reading::metric`](fivezero_model::wire::Reading::metric).
    pub metric: String,
    /// Counter, integral or mean.
    pub accumulation: Accumulation,
    /// The poll interval, milliseconds (> 0): expected samples per window are the window
    /// length over this, and integration never bridges a gap longer than twice it.
    pub interval_ms: i64,
    /// Counters only: the value at which the register wraps to zero, in the canonical unit
    /// (2^bits × scale); `None` when the register cannot wrap in practice or is not an
    /// unsigned integer, so any fall is a meter reset.
    pub wrap: Option<f64>,
    /// Counters only: the most the metered quantity can grow per hour (the device's rating,
    /// e.g. rated kW for a kWh counter), in the canonical unit per hour; a delta above
    /// 1.2 × this × elapsed hours (+ one [`resolution`](Self::resolution)) is rejected as a
    /// spike. `None` disables the filter.
    pub max_rate_per_hour: Option<f64>,
    /// Counters only: the smallest step the register can show, in the canonical unit (0 when
    /// unknown). Allows for quantised deltas in the spike filter and treats a fall of at most
    /// one step as jitter, not a reset.
    pub resolution: f64,
}

impl PointSpec {
    /// A point with the given accumulation and poll interval, no wrap, no rating.
    #[must_use]
    pub fn new(
        device: impl Into<String>,
        metric: impl Into<String>,
        accumulation: Accumulation,
        interval: Duration,
    ) -> Self {
        Self {
            device: device.into(),
            metric: metric.into(),
            accumulation,
            interval_ms: i64::try_from(interval.as_millis()).unwrap_or(i64::MAX),
            wrap: None,
            max_rate_per_hour: None,
            resolution: 0.0,
        }
    }

    /// A point accumulated the natural way for its catalogue metric
    /// ([`Accumulation::for_metric`]).
    ///
    /// # Errors
    /// [`KpiError::UnknownMetric`] for an id not in the catalogue,
    /// [`KpiError::NotAccumulated`] for a `state` or `info` metric.
    pub fn for_metric(
        device: impl Into<String>,
        metric_id: &str,
        interval: Duration,
    ) -> Result<Self, KpiError> {
        let m = metric::lookup(metric_id).ok_or_else(|| KpiError::UnknownMetric {
            metric: metric_id.to_owned(),
        })?;
        let acc = Accumulation::for_metric(m).ok_or_else(|| KpiError::NotAccumulated {
            metric: metric_id.to_owned(),
        })?;
        Ok(Self::new(device, metric_id, acc, interval))
    }

    /// A point from a profile point: accumulation from its metric, and for counters the wrap
    /// modulus and resolution of its register ([`wrap_modulus`], [`resolution`]).
    /// `scale_factor` is the power-of-ten exponent of a SunSpec `*_SF` register when the point
    /// has one (read it once from the device); without it a scaled point gets no wrap.
    ///
    /// # Errors
    /// [`KpiError::NotAccumulated`] for a helper point without a metric or a `state`/`info`
    /// metric.
    pub fn for_profile_point(
        device: impl Into<String>,
        point: &Point,
        interval: Duration,
        scale_factor: Option<i16>,
    ) -> Result<Self, KpiError> {
        let m = point.metric.ok_or_else(|| KpiError::NotAccumulated {
            metric: point.name.clone(),
        })?;
        let acc = Accumulation::for_metric(m).ok_or_else(|| KpiError::NotAccumulated {
            metric: m.id.to_owned(),
        })?;
        let mut spec = Self::new(device, m.id, acc, interval);
        if acc == Accumulation::Counter {
            spec.wrap = wrap_modulus(point, scale_factor);
            spec.resolution = resolution(point, scale_factor).unwrap_or(0.0);
        }
        Ok(spec)
    }

    /// The same point with a wrap modulus.
    #[must_use]
    pub fn with_wrap(mut self, wrap: Option<f64>) -> Self {
        self.wrap = wrap;
        self
    }

    /// The same point with a maximum rate per hour (spike filter).
    #[must_use]
    pub fn with_max_rate_per_hour(mut self, rate: Option<f64>) -> Self {
        self.max_rate_per_hour = rate;
        self
    }

    /// The same point with a register resolution.
    #[must_use]
    pub fn with_resolution(mut self, resolution: f64) -> Self {
        self.resolution = resolution;
        self
    }

    /// The unit of this point's window value, from the catalogue (`kWh` for a `kW` point
    /// integrated); empty for a metric not in the catalogue.
    #[must_use]
    pub fn window_unit(&self) -> String {
        metric::lookup(&self.metric)
            .map_or_else(String::new, |m| window_unit(m.unit, self.accumulation))
    }

    pub(crate) fn validate(&self) -> Result<(), KpiError> {
        let bad = |why: &str| KpiError::BadSpec {
            device: self.device.clone(),
            metric: self.metric.clone(),
            why: why.to_owned(),
        };
        if self.interval_ms <= 0 {
            return Err(bad("the poll interval must be positive"));
        }
        if let Accumulation::Integral { per_ms } = self.accumulation
            && per_ms <= 0
        {
            return Err(bad("the integral's time unit must be positive"));
        }
        if let Some(w) = self.wrap
            && !(w.is_finite() && w > 0.0)
        {
            return Err(bad("the wrap modulus must be finite and positive"));
        }
        if let Some(r) = self.max_rate_per_hour
            && !(r.is_finite() && r > 0.0)
        {
            return Err(bad("the maximum rate must be finite and positive"));
        }
        if !(self.resolution.is_finite() && self.resolution >= 0.0) {
            return Err(bad("the resolution must be finite and not negative"));
        }
        Ok(())
    }
}

/// The factor from one raw register step to the canonical unit: profile scale, SunSpec scale
/// factor and unit conversion. `None` when the point has a scale-factor register and
/// `scale_factor` is not given.
fn step(point: &Point, scale_factor: Option<i16>) -> Option<f64> {
    let sf = match (point.scale_factor, scale_factor) {
        (Some(_), None) => return None,
        (_, sf) => sf.unwrap_or(0),
    };
    let k = 10f64.powi(i32::from(sf)) * point.scale * point.conversion.scale;
    (k.is_finite() && k != 0.0).then_some(k.abs())
}

/// The value at which a counter point's register wraps to zero, in the metric's canonical
/// unit: 2^bits of its unsigned type (u16, u32 — SunSpec `acc32` —, u64) times its scale,
/// its SunSpec scale factor (`scale_factor`, the `*_SF` exponent, needed when the point has
/// one) and the unit conversion. An `acc32` in Wh with scale factor 1 read as kWh wraps at
/// 2^32 × 10 × 0.001 = 42 949 672.96 kWh.
///
/// `None` for signed and float types (which do not wrap in a way a delta can undo) and when
/// the scale factor is needed but unknown. The profile's offset cancels in deltas and is
/// ignored.
#[must_use]
pub fn wrap_modulus(point: &Point, scale_factor: Option<i16>) -> Option<f64> {
    let bits = match point.data_type {
        DataType::U16 => 16,
        DataType::U32 => 32,
        DataType::U64 => 64,
        _ => return None,
    };
    let m = 2f64.powi(bits) * step(point, scale_factor)?;
    (m.is_finite() && m > 0.0).then_some(m)
}

/// The smallest step an integer point's register can show, in the canonical unit; `None` for
/// float types and when the scale factor is needed but unknown.
#[must_use]
pub fn resolution(point: &Point, scale_factor: Option<i16>) -> Option<f64> {
    match point.data_type {
        DataType::U16
        | DataType::I16
        | DataType::U32
        | DataType::I32
        | DataType::U64
        | DataType::I64 => step(point, scale_factor),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile_point(profile: &str, name: &str) -> Point {
        let path = fivezero_profiles::library_dir().join(format!("{profile}.toml"));
        let p = fivezero_profiles::load_file(&path).expect("shipped profile loads");
        p.point(name).expect("point exists").clone()
    }

    #[test]
    fn counters_take_deltas_power_and_flows_are_integrated_and_temperatures_averaged() {
        let acc = |id| metric::lookup(id).and_then(Accumulation::for_metric);
        assert_eq!(acc("pv.energy"), Some(Accumulation::Counter));
        assert_eq!(
            acc("pv.ac_power"),
            Some(Accumulation::Integral { per_ms: HOUR_MS })
        );
        assert_eq!(
            acc("sorting.input_rate"),
            Some(Accumulation::Integral { per_ms: HOUR_MS })
        );
        assert_eq!(
            acc("compressor.free_air_delivery"),
            Some(Accumulation::Integral { per_ms: MINUTE_MS })
        );
        assert_eq!(acc("stack.flue_gas_temperature"), Some(Accumulation::Mean));
        assert_eq!(acc("stack.o2"), Some(Accumulation::Mean));
        assert_eq!(
            acc("electricity.power_demand_max"),
            Some(Accumulation::Mean)
        );
        assert_eq!(acc("boiler.running"), None);
        assert_eq!(acc("device.serial_number"), None);
    }

    #[test]
    fn window_units_follow_the_integration() {
        let kw = Accumulation::Integral { per_ms: HOUR_MS };
        assert_eq!(window_unit("kW", kw), "kWh");
        assert_eq!(window_unit("t/h", kw), "t");
        assert_eq!(window_unit("Nm³/h", kw), "Nm³");
        assert_eq!(window_unit("m³/min", kw), "m³");
        assert_eq!(window_unit("°C", Accumulation::Mean), "°C");
        assert_eq!(window_unit("kWh", Accumulation::Counter), "kWh");
    }

    #[test]
    fn an_acc32_energy_register_with_scale_factor_wraps_at_two_to_the_32_steps_in_kwh() {
        // Given the shipped SunSpec inverter's WH point (u32 acc32, Wh, WH_SF).
        let wh = profile_point("sunspec-inverter", "WH");
        // When its scale factor is 1 (×10 Wh), the register counts 10 Wh = 0.01 kWh per step.
        let m = wrap_modulus(&wh, Some(1)).expect("wraps");
        assert!((m - 42_949_672.96).abs() < 1e-6, "{m}");
        let r = resolution(&wh, Some(1)).expect("integer");
        assert!((r - 0.01).abs() < 1e-12, "{r}");
        // Without the scale factor the modulus is unknown, not guessed.
        assert_eq!(wrap_modulus(&wh, None), None);
    }

    #[test]
    fn a_point_spec_from_a_profile_counter_carries_wrap_and_resolution() {
        let wh = profile_point("sunspec-inverter", "WH");
        let spec = PointSpec::for_profile_point("pv-roof-a", &wh, Duration::from_secs(5), Some(0))
            .expect("counter");
        assert_eq!(spec.metric, "pv.energy");
        assert_eq!(spec.accumulation, Accumulation::Counter);
        assert_eq!(spec.interval_ms, 5_000);
        let w = spec.wrap.expect("wrap");
        assert!((w - 4_294_967.296).abs() < 1e-6, "{w}");
        assert_eq!(spec.window_unit(), "kWh");
    }

    #[test]
    fn unknown_and_state_metrics_are_refused() {
        assert!(matches!(
            PointSpec::for_metric("d", "no.such", Duration::from_secs(1)),
            Err(KpiError::UnknownMetric { .. })
        ));
        assert!(matches!(
            PointSpec::for_metric("d", "boiler.running", Duration::from_secs(1)),
            Err(KpiError::NotAccumulated { .. })
        ));
    }

    #[test]
    fn a_spec_with_a_zero_interval_or_negative_wrap_is_invalid() {
        let s = PointSpec::new("d", "pv.energy", Accumulation::Counter, Duration::ZERO);
        assert!(s.validate().is_err());
        let s = PointSpec::new(
            "d",
            "pv.energy",
            Accumulation::Counter,
            Duration::from_secs(1),
        )
        .with_wrap(Some(-1.0));
        assert!(s.validate().is_err());
        let s = PointSpec::new(
            "d",
            "pv.energy",
            Accumulation::Counter,
            Duration::from_secs(1),
        )
        .with_wrap(Some(65_536.0))
        .with_max_rate_per_hour(Some(100.0))
        .with_resolution(1.0);
        assert!(s.validate().is_ok());
    }
}
