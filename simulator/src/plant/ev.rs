//! `ev_charger`: an AC charge point for the park's electric loaders, mixer trucks or cars.
//!
//! Vehicles arrive by a seeded process: while the charge point is free, each step has an
//! arrival probability proportional to the fleet's daily weight (working day; loaders and
//! mixer trucks crowd into the PV hours and the lunch break, cars into the morning), scaled so
//! that `sessions_per_day` vehicles would arrive at a free charge point in a day (arrivals at a
//! busy charge point go elsewhere). Each session draws the energy the vehicle wants (±40 %
//! around `mean_session_kwh`) and its target state of charge, waits 20–60 s for
//! authorisation, charges at up to `max_power_kw` (cars: their 11 kW on-board charger) with a
//! taper above 90 % state of charge, stops when the energy is delivered, and the vehicle stays
//! plugged for a few minutes (loaders, trucks) to a few hours (cars).
//!
//! Parameters: `fleet` = "loader" | "mixer_truck" | "car", `max_power_kw`, `sessions_per_day`
//! and `mean_session_kwh` (defaults per fleet: 3 × 60 kWh, 2 × 80 kWh, 4 × 20 kWh).
//!
//! Codes (KEBA P30 report 2 style; profiles label them):
//! - `ev.charging_state`: 2 = ready, no vehicle; 3 = charging; 5 = vehicle plugged, not
//!   charging (authorising, or finished and still plugged).
//! - `ev.cable_state`: 1 = cable at the station, no vehicle; 7 = plugged into station and
//!   vehicle, locked.
//!
//! `ev.state_of_charge` is known only while a vehicle is plugged (otherwise not available);
//! `ev.session_energy` and `ev.charging_time` keep the last session's figures until the next
//! vehicle arrives.

use super::electric::{AC_METRICS, Ac, Wiring};
use super::noise::{fnv, uniform};
use super::params::Params;
use super::site::{Env, daily_window};
use super::{Build, Bus, Model, PlantError};

/// `ev.charging_state`: ready, no vehicle.
const READY: f64 = 2.0;
/// `ev.charging_state`: charging.
const CHARGING: f64 = 3.0;
/// `ev.charging_state`: vehicle plugged, not charging.
const PLUGGED: f64 = 5.0;

/// State of charge above which the charging power tapers (AC charging is slow for these
/// batteries, so the constant-current phase lasts long).
const TAPER_KNEE: f64 = 0.9;

const K_ARRIVE: u64 = fnv("ev.arrive");
const K_SESSION: u64 = fnv("ev.session");

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fleet {
    Loader,
    MixerTruck,
    Car,
}

impl Fleet {
    /// Relative arrival weight over the local day.
    fn weight(self, h: f64) -> f64 {
        let w = |a, b, r| daily_window(h, a, b, r);
        match self {
            Self::Loader => {
                0.1 + 0.9 * w(6.0, 22.0, 0.5) + 2.0 * w(10.0, 15.0, 1.0) + 2.0 * w(11.5, 13.0, 0.25)
            }
            Self::MixerTruck => 0.2 + 0.8 * w(6.0, 22.0, 0.5) + 1.5 * w(10.0, 15.0, 1.0),
            Self::Car => {
                0.05 + 4.0 * w(7.0, 9.5, 0.5) + 0.8 * w(9.5, 18.0, 0.5) + 0.4 * w(18.0, 22.0, 0.5)
            }
        }
    }

    /// Battery capacity, kWh.
    fn capacity(self) -> f64 {
        match self {
            Self::Loader | Self::MixerTruck => 282.0,
            Self::Car => 60.0,
        }
    }

    /// What the vehicle's on-board charger takes, kW.
    fn vehicle_kw(self) -> f64 {
        match self {
            Self::Car => 11.0,
            _ => f64::INFINITY,
        }
    }

    /// Minutes the vehicle stays plugged after charging: (least, spread).
    fn dwell_min(self) -> (f64, f64) {
        match self {
            Self::Loader => (2.0, 13.0),
            Self::MixerTruck => (2.0, 18.0),
            Self::Car => (10.0, 170.0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Free,
    Authorising,
    Charging,
    Finished,
}

#[derive(Debug)]
pub(crate) struct Charger {
    key: u64,
    fleet: Fleet,
    max_kw: f64,
    per_day: f64,
    mean_kwh: f64,
    /// ∫ weight dh over a day, to turn the weight into arrivals per hour.
    weight_day: f64,
    wiring: Wiring,
    /// The device's codes for ready, charging and plugged-not-charging (`state_codes`).
    codes: [f64; 3],
    // State.
    stage: Stage,
    session: u64,
    wait_s: f64,
    target_kwh: f64,
    session_kwh: f64,
    charging_s: f64,
    soc: f64,
    power: f64,
    energy: f64,
    ac: Ac,
}

impl Charger {
    pub(crate) fn new(p: &mut Params<'_>, b: &Build<'_>) -> Result<Self, PlantError> {
        let fleet = match p.choice("fleet", &["loader", "mixer_truck", "car"], None)? {
            "loader" => Fleet::Loader,
            "mixer_truck" => Fleet::MixerTruck,
            _ => Fleet::Car,
        };
        let (per_day, mean) = match fleet {
            Fleet::Loader => (3.0, 60.0),
            Fleet::MixerTruck => (2.0, 80.0),
            Fleet::Car => (4.0, 20.0),
        };
        let max_kw = p.number("max_power_kw", None, 1.0, 1000.0)?;
        let per_day = p.number("sessions_per_day", Some(per_day), 0.0, 200.0)?;
        let mean_kwh = p.number(
            "mean_session_kwh",
            Some(mean),
            1.0,
            0.9 * fleet.capacity() / 1.4,
        )?;
        let codes = match p.has("state_codes") {
            false => [READY, CHARGING, PLUGGED],
            true => {
                let given = p.numbers("state_codes", 0.0, 65_535.0)?;
                <[f64; 3]>::try_from(given.as_slice()).map_err(|_| {
                    p.bad(
                        "state_codes",
                        "must list three codes: [ready, charging, plugged-not-charging]",
                    )
                })?
            }
        };
        let weight_day = (0..1440)
            .map(|m| fleet.weight(f64::from(m) / 60.0))
            .sum::<f64>()
            / 60.0;
        Ok(Self {
            key: b.key,
            fleet,
            max_kw,
            per_day,
            mean_kwh,
            weight_day,
            wiring: b.wiring(0.01),
            codes,
            stage: Stage::Free,
            session: 0,
            wait_s: 0.0,
            target_kwh: 0.0,
            session_kwh: 0.0,
            charging_s: 0.0,
            soc: 0.0,
            power: 0.0,
            energy: b.age_days * per_day * mean_kwh * 0.7,
            ac: Ac::default(),
        })
    }

    fn draw(&self, env: &Env, what: u64) -> f64 {
        uniform(env.seed, &[self.key, K_SESSION, self.session, what])
    }

    fn arrive(&mut self, env: &Env) {
        self.session += 1;
        let cap = self.fleet.capacity();
        let target_soc = match self.fleet {
            Fleet::Car => 0.8 + 0.2 * self.draw(env, 1),
            _ => 0.95,
        };
        let wanted = self.mean_kwh * (0.6 + 0.8 * self.draw(env, 2));
        let soc0 = (target_soc - wanted / cap).max(0.05);
        self.soc = soc0;
        self.target_kwh = (target_soc - soc0) * cap;
        self.session_kwh = 0.0;
        self.charging_s = 0.0;
        self.wait_s = 20.0 + 40.0 * self.draw(env, 3);
        self.stage = Stage::Authorising;
    }
}

impl Model for Charger {
    fn step(&mut self, env: &Env, bus: &mut [Bus], me: usize) {
        self.power = 0.0;
        match self.stage {
            Stage::Free => {
                let per_hour = self.per_day * self.fleet.weight(env.hour) / self.weight_day;
                if uniform(env.seed, &[self.key, K_ARRIVE, env.n]) < per_hour * env.dt_h {
                    self.arrive(env);
                }
            }
            Stage::Authorising => {
                self.wait_s -= env.dt_s;
                if self.wait_s <= 0.0 {
                    self.stage = Stage::Charging;
                }
            }
            Stage::Charging => {
                // Constant current up to the knee, then the battery takes less and less.
                let taper = ((1.0 - self.soc) / (1.0 - TAPER_KNEE)).clamp(0.15, 1.0);
                let mut kw = self.max_kw.min(self.fleet.vehicle_kw()) * taper;
                let mut kwh = kw * env.dt_h;
                if self.session_kwh + kwh >= self.target_kwh {
                    kwh = (self.target_kwh - self.session_kwh).max(0.0);
                    kw = if env.dt_h > 0.0 { kwh / env.dt_h } else { 0.0 };
                    let (least, spread) = self.fleet.dwell_min();
                    self.wait_s = 60.0 * (least + spread * self.draw(env, 4));
                    self.stage = Stage::Finished;
                }
                self.power = kw;
                self.session_kwh += kwh;
                self.energy += kwh;
                self.soc += kwh / self.fleet.capacity();
                self.charging_s += env.dt_s;
            }
            Stage::Finished => {
                self.wait_s -= env.dt_s;
                if self.wait_s <= 0.0 {
                    self.stage = Stage::Free;
                }
            }
        }
        let q = 0.05 * self.power;
        self.ac = self.wiring.ac(env, self.power, q);
        bus[me].p_kw = self.power;
        bus[me].q_kvar = q;
    }

    fn value(&self, _env: &Env, metric: &str) -> Option<f64> {
        let plugged = self.stage != Stage::Free;
        Some(match metric {
            "ev.power" => self.power,
            "ev.energy" => self.energy,
            "ev.session_energy" => self.session_kwh,
            "ev.charging_time" => self.charging_s,
            "ev.state_of_charge" if plugged => 100.0 * self.soc,
            "ev.state_of_charge" => return None,
            "ev.charging_state" => match self.stage {
                Stage::Free => self.codes[0],
                Stage::Charging => self.codes[1],
                Stage::Authorising | Stage::Finished => self.codes[2],
            },
            "ev.cable_state" => {
                if plugged {
                    7.0
                } else {
                    1.0
                }
            }
            m => self.ac.value(m)?,
        })
    }

    fn metrics(&self) -> Vec<&'static str> {
        let mut m = vec![
            "ev.power",
            "ev.energy",
            "ev.session_energy",
            "ev.charging_time",
            "ev.state_of_charge",
            "ev.charging_state",
            "ev.cable_state",
        ];
        m.extend_from_slice(AC_METRICS);
        m
    }

    fn phase(&self) -> u8 {
        0
    }
}
