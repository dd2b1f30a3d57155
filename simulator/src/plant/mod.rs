//! The plant physics: what every simulated device measures, as a function of the seed, the
//! scenario and the simulated time.
//!
//! Each device of a scenario names a model in `physics`:
//!
//! | physics | stands for | main parameters |
//! |---|---|---|
//! | `pv` | PV array and inverter | `kwp`, `performance_ratio`, `tilt`, `azimuth`, `ac_kw`, `clouds` |
//! | `grid_meter` | the site's grid connection | `base_load_kw` |
//! | `submeter` | a meter on one feeder | `meters` (a device name) |
//! | `ev_charger` | AC charge point | `fleet`, `max_power_kw`, `sessions_per_day`, `mean_session_kwh` |
//! | `boiler` | biomass steam boiler | `rated_heat_kw`, `fuel_lhv_mj_per_kg`, `efficiency` |
//! | `heat_recovery` | heat meter of the flue-gas → seawater loop | `boiler`, `design_efficiency`, `outage` |
//! | `stack` | emission monitor at the chimney | `boiler`, `recovery` |
//! | `steam` | steam meter in the cascade | `boiler`, `stream`, `share`, `pressure_bar` |
//! | `compressor_station` | compressed-air station | `rated_power_kw`, `specific_power`, `pressure_bar` |
//! | `sorting_line` | construction-waste sorting line | `rated_tph`, shares, `shifts`, `power_kw` |
//! | `water` | flow meter of a water stream | `stream`, `daily_m3` (or `catchment_m2` for rain) |
//!
//! Every model also takes `age_days` (default: a seeded 330–400 days): lifetime counters start
//! where a device that has run that long would be, so they are not zero (SunSpec's "not
//! accumulated") at start, and two devices of one kind do not show the same totals.
//!
//! [`Physics::value`] answers `device.serial_number` with an eight-digit number (for profiles whose
//! serial register is numeric); [`Physics::text`] answers `device.manufacturer` = `fivezero simulator`,
//! `device.serial_number` = `SIM-<device>-<seed>`,
//! `device.model_name` = `SIM-<physics>` and `device.firmware_version` = `fivezero-sim <version>`.
//! The module of each model (`src/plant/<model>.rs`) documents its physics and parameters.
//!
//! State codes (numeric, as [`Physics::value`] returns them; profiles label them):
//! - `pv.operating_state`: SunSpec `St`: 2 sleeping (no light), 3 starting (first 60 s of
//!   light), 4 MPPT, 5 throttled (at the AC limit). `pv.event_flags`: 0.
//! - `ev.charging_state` (KEBA P30 style): 2 ready, no vehicle; 3 charging; 5 vehicle plugged,
//!   not charging (authorising, or finished and still plugged). `ev.cable_state`: 1 cable at
//!   the station, no vehicle; 7 plugged into station and vehicle, locked.
//! - `boiler.state` (labels of `biomass-boiler-plc-template`): 0 off, 1 standby, 2 purge /
//!   ignition, 3 firing, 4 low fire, 5 burn-out, 6 fault, 7 maintenance; the model fires round
//!   the clock and reports 3 or 4.
//! - `boiler.running`, `compressor.running`, `compressor.loaded`, `sorting.running`: 1 / 0.
//!   `compressor.alarm_flags`, `flow.error_flags`, `heat.error_flags`: 0.
//!
//! Time advances in fixed steps of `scenario.step` from `site.start`; randomness (clouds, rain,
//! vehicle arrivals, process swings, measurement noise) is hashed from (seed, stream, time) so
//! the state at a time is the same however [`crate::Physics::advance_to`] was called, and a
//! device's random streams are keyed by its name. A step allocates nothing.
//!
//! All devices share the site: sun, clouds, rain, air temperature (`ambient.temperature` is
//! served by every device), grid voltage and frequency.

mod boiler;
mod compressor;
mod electric;
mod ev;
mod grid;
mod noise;
mod params;
mod pv;
mod recovery;
mod schedule;
mod site;
mod sorting;
mod stack;
mod steam;
mod water;

use thiserror::Error;

use crate::Physics;
use crate::scenario::{DeviceSpec, Scenario};
use noise::fnv;
use params::Params;
use site::{Env, Site, Weather};

/// The physics names a scenario may use.
pub const PHYSICS: &[&str] = &[
    "pv",
    "grid_meter",
    "submeter",
    "ev_charger",
    "boiler",
    "heat_recovery",
    "stack",
    "steam",
    "compressor_station",
    "sorting_line",
    "water",
];

/// Models whose electrical power is a load behind the grid meter.
const LOADS: &[&str] = &["sorting_line", "compressor_station", "ev_charger", "boiler"];

/// Text metrics every device answers through [`Physics::text`].
const INFO: &[&str] = &[
    "device.manufacturer",
    "device.serial_number",
    "device.model_name",
    "device.firmware_version",
];

/// Why a scenario's physics were refused. Every variant names the device and, where it is a
/// parameter, the key.
#[derive(Debug, Error)]
pub enum PlantError {
    /// `physics` names no model.
    #[error("device `{device}`: unknown physics `{physics}`; the models are {known}")]
    UnknownPhysics {
        /// The device.
        device: String,
        /// What it asked for.
        physics: String,
        /// The models there are.
        known: String,
    },
    /// A required parameter is absent.
    #[error("device `{device}`: parameter `{key}` is required by physics `{physics}`")]
    MissingParam {
        /// The device.
        device: String,
        /// Its model.
        physics: String,
        /// The missing key.
        key: String,
    },
    /// A parameter has the wrong type, is out of range or names the wrong device.
    #[error("device `{device}`: parameter `{key}`: {message}")]
    BadParam {
        /// The device.
        device: String,
        /// The key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A parameter the model does not know (a typo, or meant for another model).
    #[error(
        "device `{device}`: unknown parameter `{key}` for physics `{physics}`; it takes {known}"
    )]
    UnknownParam {
        /// The device.
        device: String,
        /// Its model.
        physics: String,
        /// The unknown key.
        key: String,
        /// The keys the model takes.
        known: String,
    },
    /// The site section cannot be simulated.
    #[error("site: {0}")]
    Site(String),
}

/// What a device shows the devices that depend on it, rewritten every step.
#[derive(Debug, Clone, Copy, Default)]
struct Bus {
    /// Electrical active power, kW: positive = consumption, negative = generation.
    p_kw: f64,
    /// Reactive power, kvar.
    q_kvar: f64,
    /// A boiler's state.
    boiler: boiler::BoilerOut,
    /// A heat-recovery loop's effective recovery ratio (0 when stopped).
    recovery: f64,
    /// The stack exit temperature behind a heat-recovery loop, °C.
    exit_c: f64,
    /// A sorting line's feed as a share of its rating.
    production: f64,
    /// A flow meter's flow, m³/h.
    flow_m3h: f64,
}

/// One device's model.
trait Model: std::fmt::Debug + Send {
    /// Advances the state by one step to the conditions of `env`, reading the buses of the
    /// devices it depends on (already stepped, see [`Model::phase`]) and writing its own.
    fn step(&mut self, env: &Env, bus: &mut [Bus], me: usize);
    /// A metric's current value in its canonical unit.
    fn value(&self, env: &Env, metric: &str) -> Option<f64>;
    /// The metrics [`Model::value`] answers (besides `ambient.temperature`).
    fn metrics(&self) -> Vec<&'static str>;
    /// Order within a step: a model reads only buses of lower phases.
    fn phase(&self) -> u8;
    /// For steam meters: the boiler they take a share of, and the share.
    fn steam_claim(&self) -> Option<(usize, f64)> {
        None
    }
}

/// What a model's constructor may know about the scenario.
struct Build<'a> {
    seed: u64,
    key: u64,
    index: usize,
    age_days: f64,
    devices: &'a [DeviceSpec],
}

impl Build<'_> {
    /// The device a parameter names, which must run one of `physics`.
    fn reference(
        &self,
        p: &mut Params<'_>,
        key: &'static str,
        physics: &[&str],
    ) -> Result<usize, PlantError> {
        let name = p.text(key, None)?;
        self.lookup(p, key, name, physics)
    }

    fn lookup(
        &self,
        p: &Params<'_>,
        key: &str,
        name: &str,
        physics: &[&str],
    ) -> Result<usize, PlantError> {
        let i = self
            .devices
            .iter()
            .position(|d| d.name == name)
            .ok_or_else(|| p.bad(key, format!("no device is named `{name}`")))?;
        if i == self.index {
            return Err(p.bad(key, "a device cannot refer to itself"));
        }
        let actual = self.devices[i].physics.as_str();
        if !physics.contains(&actual) {
            return Err(p.bad(
                key,
                format!(
                    "`{name}` runs physics `{actual}`; expected {}",
                    physics.join(" or ")
                ),
            ));
        }
        Ok(i)
    }

    fn indices_of(&self, physics: &[&str]) -> Vec<usize> {
        (0..self.devices.len())
            .filter(|&i| i != self.index && physics.contains(&self.devices[i].physics.as_str()))
            .collect()
    }

    fn physics_of(&self, i: usize) -> &str {
        &self.devices[i].physics
    }

    fn name_of(&self, i: usize) -> &str {
        &self.devices[i].name
    }

    fn param_text(&self, i: usize, key: &str) -> Option<&str> {
        self.devices[i]
            .params
            .get(key)
            .and_then(toml::Value::as_str)
    }

    fn wiring(&self, imbalance: f64) -> electric::Wiring {
        electric::Wiring::new(self.seed, self.key, imbalance)
    }
}

#[derive(Debug)]
struct Device {
    name: String,
    model_name: String,
    key: u64,
    model: Box<dyn Model>,
}

/// The simulated plant: every device of a scenario, stepped together in simulated time.
#[derive(Debug)]
pub struct Plant {
    site: Site,
    weather: Weather,
    env: Env,
    devices: Vec<Device>,
    bus: Vec<Bus>,
    order: Vec<usize>,
}

impl Plant {
    /// Builds the models of a scenario's devices and evaluates them at the start time.
    ///
    /// # Errors
    /// A [`PlantError`] naming the device (and parameter) that cannot be simulated.
    pub fn new(scenario: &Scenario) -> Result<Self, PlantError> {
        let tz = jiff::tz::TimeZone::get(&scenario.site.timezone).map_err(|e| {
            PlantError::Site(format!("time zone {:?}: {e}", scenario.site.timezone))
        })?;
        let step_ms = i64::try_from(scenario.step.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let site = Site {
            seed: scenario.seed,
            latitude: scenario.site.latitude,
            longitude: scenario.site.longitude,
            tz,
            start_ms: scenario.site.start_ms,
            step_ms,
        };
        let mut devices = Vec::with_capacity(scenario.devices.len());
        for (index, spec) in scenario.devices.iter().enumerate() {
            let mut p = Params::new(&spec.name, &spec.physics, &spec.params);
            let key = fnv(&spec.name);
            // Devices commissioned together differ by a few weeks, so their totals differ.
            let default_age = 330.0 + 70.0 * noise::uniform(scenario.seed, &[key, fnv("age")]);
            let age_days = p.number("age_days", Some(default_age), 0.0, 36_500.0)?;
            let b = Build {
                seed: scenario.seed,
                key,
                index,
                age_days,
                devices: &scenario.devices,
            };
            let model: Box<dyn Model> = match spec.physics.as_str() {
                "pv" => Box::new(pv::Pv::new(&mut p, &b)?),
                "grid_meter" => Box::new(grid::GridMeter::new(&mut p, &b)?),
                "submeter" => Box::new(grid::Submeter::new(&mut p, &b)?),
                "ev_charger" => Box::new(ev::Charger::new(&mut p, &b)?),
                "boiler" => Box::new(boiler::Boiler::new(&mut p, &b)?),
                "heat_recovery" => Box::new(recovery::HeatRecovery::new(&mut p, &b)?),
                "stack" => Box::new(stack::Stack::new(&mut p, &b)?),
                "steam" => Box::new(steam::SteamMeter::new(&mut p, &b)?),
                "compressor_station" => Box::new(compressor::Station::new(&mut p, &b)?),
                "sorting_line" => Box::new(sorting::Line::new(&mut p, &b)?),
                "water" => Box::new(water::FlowMeter::new(&mut p, &b)?),
                other => {
                    return Err(PlantError::UnknownPhysics {
                        device: spec.name.clone(),
                        physics: other.to_owned(),
                        known: PHYSICS.join(", "),
                    });
                }
            };
            p.finish()?;
            devices.push(Device {
                name: spec.name.clone(),
                model_name: format!("SIM-{}", spec.physics),
                key: b.key,
                model,
            });
        }
        check_steam_shares(&devices)?;
        let mut order: Vec<usize> = (0..devices.len()).collect();
        order.sort_by_key(|&i| devices[i].model.phase());
        let mut weather = Weather::new(site.seed);
        let env = site.env(&mut weather, 0, true);
        let mut plant = Self {
            site,
            weather,
            env,
            bus: vec![Bus::default(); devices.len()],
            devices,
            order,
        };
        plant.run_models();
        Ok(plant)
    }

    /// The metrics the model of a device produces (numeric ones through
    /// [`Physics::value`], the `device.*` ones through [`Physics::text`]); empty for an
    /// unknown device.
    #[must_use]
    pub fn metrics(&self, device: usize) -> Vec<&'static str> {
        let Some(d) = self.devices.get(device) else {
            return Vec::new();
        };
        let mut m = d.model.metrics();
        m.push("ambient.temperature");
        m.extend_from_slice(INFO);
        m
    }

    /// The number of steps taken since the start.
    #[must_use]
    pub fn steps(&self) -> u64 {
        self.env.n
    }

    fn run_models(&mut self) {
        for &i in &self.order {
            self.devices[i].model.step(&self.env, &mut self.bus, i);
        }
    }

    fn step(&mut self) {
        let n = self.env.n.saturating_add(1);
        self.env = self.site.env(&mut self.weather, n, false);
        self.run_models();
    }
}

fn check_steam_shares(devices: &[Device]) -> Result<(), PlantError> {
    for (i, d) in devices.iter().enumerate() {
        let Some((boiler, _)) = d.model.steam_claim() else {
            continue;
        };
        let total: f64 = devices[..=i]
            .iter()
            .filter_map(|x| x.model.steam_claim())
            .filter(|(b, _)| *b == boiler)
            .map(|(_, s)| s)
            .sum();
        if total > 1.0 + 1e-9 {
            return Err(PlantError::BadParam {
                device: d.name.clone(),
                key: "share".to_owned(),
                message: format!(
                    "the stage and vent shares of boiler `{}` add up to {total:.4} with this meter; with the losses they must not exceed 1",
                    devices[boiler].name
                ),
            });
        }
    }
    Ok(())
}

/// Sensor noise added to gauge readings: σ 0.05 K on temperatures, 0.2 % elsewhere; none on
/// voltages, frequency and power factor (their variation is the grid's own), on times and
/// on figures a controller computes, nor on counters and states.
fn with_noise(env: &Env, key: u64, metric: &str, x: f64) -> f64 {
    let Some(m) = fivezero_model::metric::lookup(metric) else {
        return x;
    };
    if m.kind != fivezero_model::Kind::Gauge
        || metric.starts_with("electricity.voltage_l")
        || matches!(
            metric,
            "electricity.frequency"
                | "electricity.power_factor"
                | "electricity.power_demand"
                | "electricity.power_demand_max"
                | "ev.charging_time"
                | "sorting.separation_rate"
                | "flow.signal_quality"
        )
    {
        return x;
    }
    let e = noise::normal(env.seed, &[key, fnv(metric), env.n]);
    if m.unit == "°C" || m.unit == "K" {
        x + 0.05 * e
    } else {
        x * (1.0 + 0.002 * e)
    }
}

impl Physics for Plant {
    fn advance_to(&mut self, t_ms: i64) {
        let since = i128::from(t_ms) - i128::from(self.site.start_ms);
        if since <= 0 {
            return;
        }
        let target = u64::try_from(since / i128::from(self.site.step_ms)).unwrap_or(u64::MAX);
        while self.env.n < target {
            self.step();
        }
    }

    fn now_ms(&self) -> i64 {
        self.env.t_ms
    }

    fn value(&self, device: usize, metric: &str) -> Option<f64> {
        let d = self.devices.get(device)?;
        let x = if metric == "ambient.temperature" {
            self.env.ambient_c
        } else if metric == "device.serial_number" {
            // For profiles whose serial number register is a number: eight digits, fixed per
            // device and seed.
            #[allow(clippy::cast_precision_loss)] // Below 10^8: exact in f64.
            let n = (d.key ^ self.site.seed.rotate_left(17)) % 90_000_000;
            #[allow(clippy::cast_precision_loss)]
            return Some(10_000_000.0 + n as f64);
        } else {
            d.model.value(&self.env, metric)?
        };
        x.is_finite()
            .then(|| with_noise(&self.env, d.key, metric, x))
    }

    fn text(&self, device: usize, metric: &str) -> Option<String> {
        let d = self.devices.get(device)?;
        match metric {
            "device.serial_number" => Some(format!("SIM-{}-{}", d.name, self.site.seed)),
            "device.manufacturer" => Some("fivezero simulator".to_owned()),
            "device.model_name" => Some(d.model_name.clone()),
            "device.firmware_version" => {
                Some(format!("fivezero-sim {}", env!("CARGO_PKG_VERSION")))
            }
            _ => None,
        }
    }
}
