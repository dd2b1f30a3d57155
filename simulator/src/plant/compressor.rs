//! `compressor_station`: the compressed-air station (dust suppression, pneumatic sorting
//! ejectors, tools).
//!
//! Air demand follows production: leakage (10 % of capacity) plus the sorting lines' air use
//! in proportion to their feed (parameter `serves`: sorting line names, default all of the
//! site's; without any, a 06:00–22:00 working day). A speed-controlled compressor holds the
//! pressure set point above its minimum speed (`turndown` of capacity); below it the station
//! cycles loaded/unloaded on its receiver (`receiver_m3`) between set point −0.2 and
//! +0.5 bar, and stops after 10 minutes unloaded. Power = `specific_power` × delivery, a
//! little worse at part load; 8 % of rated power while running unloaded.
//!
//! Parameters: `rated_power_kw`, `specific_power` (kW per m³/min, 6.2), `pressure_bar`
//! (gauge set point, 7), `serves`, `receiver_m3` (10), `turndown` (0.25).
//!
//! `compressor.alarm_flags` is always 0; `running` and `loaded` are 1/0.

use super::electric::{AC_METRICS, Ac, Wiring};
use super::noise::key;
use super::params::Params;
use super::site::Env;
use super::{Build, Bus, Model, PlantError};

/// Atmospheric pressure, bar.
const P_ATM: f64 = 1.013;
/// Reactive power per active power at power factor 0.95.
const TAN_PHI: f64 = 0.33;

#[derive(Debug)]
pub(crate) struct Station {
    key: u64,
    rated: f64,
    sp: f64,
    p_set: f64,
    serves: Vec<usize>,
    receiver: f64,
    fad_max: f64,
    min_fad: f64,
    wiring: Wiring,
    // State.
    running: bool,
    loaded: bool,
    unloaded_s: f64,
    supply: f64,
    p_bar: f64,
    power: f64,
    element_c: f64,
    energy: f64,
    delivered: f64,
    run_h: f64,
    load_h: f64,
    ac: Ac,
}

impl Station {
    pub(crate) fn new(p: &mut Params<'_>, b: &Build<'_>) -> Result<Self, PlantError> {
        let rated = p.number("rated_power_kw", None, 1.0, 1.0e5)?;
        let sp = p.number("specific_power", Some(6.2), 3.0, 15.0)?;
        let p_set = p.number("pressure_bar", Some(7.0), 2.0, 15.0)?;
        let receiver = p.number("receiver_m3", Some(10.0), 0.5, 1000.0)?;
        let turndown = p.number("turndown", Some(0.25), 0.1, 0.9)?;
        let serves = if p.has("serves") {
            let names = p.list("serves")?;
            let mut idx = Vec::with_capacity(names.len());
            for name in names {
                idx.push(b.lookup(p, "serves", name, &["sorting_line"])?);
            }
            idx
        } else {
            b.indices_of(&["sorting_line"])
        };
        let fad_max = rated / sp;
        let energy = b.age_days * 24.0 * 0.6 * rated;
        Ok(Self {
            key: b.key,
            rated,
            sp,
            p_set,
            serves,
            receiver,
            fad_max,
            min_fad: turndown * fad_max,
            wiring: b.wiring(0.01),
            running: true,
            loaded: true,
            unloaded_s: 0.0,
            supply: 0.0,
            p_bar: p_set,
            power: 0.0,
            element_c: 80.0,
            energy,
            delivered: energy / sp * 60.0,
            run_h: b.age_days * 24.0 * 0.95,
            load_h: b.age_days * 24.0 * 0.8,
            ac: Ac::default(),
        })
    }
}

impl Model for Station {
    fn step(&mut self, env: &Env, bus: &mut [Bus], me: usize) {
        let production = if self.serves.is_empty() {
            0.9 * env.window(6.0, 22.0, 0.5)
        } else {
            self.serves.iter().map(|&i| bus[i].production).sum::<f64>() / self.serves.len() as f64
        };
        let frac = 0.10
            + 0.75 * production
            + 0.04 * env.wobble(self.key ^ key!("air.slow"), 120.0)
            + 0.02 * env.wobble(self.key ^ key!("air.fast"), 15.0);
        let demand = self.fad_max * frac.clamp(0.02, 1.1);
        if demand >= self.min_fad {
            // Speed control holds the set point; a shortfall above capacity drags it down.
            self.running = true;
            self.loaded = true;
            self.unloaded_s = 0.0;
            self.supply = demand.min(self.fad_max);
            let target = self.p_set - (demand - self.supply) / self.fad_max
                + 0.03 * env.wobble(self.key ^ key!("pressure"), 20.0);
            self.p_bar = env.lag(self.p_bar, target, 20.0);
        } else {
            // Load/unload cycling on the receiver.
            self.supply = if self.loaded { self.min_fad } else { 0.0 };
            let dp = (self.supply - demand) / 60.0 * P_ATM / self.receiver * env.dt_s;
            self.p_bar = (self.p_bar + dp).clamp(self.p_set - 1.5, self.p_set + 1.0);
            if self.loaded && self.p_bar >= self.p_set + 0.5 {
                self.loaded = false;
            } else if !self.loaded && self.p_bar <= self.p_set - 0.2 {
                self.loaded = true;
                self.running = true;
            }
            if self.loaded {
                self.unloaded_s = 0.0;
            } else {
                self.unloaded_s += env.dt_s;
                if self.unloaded_s > 600.0 {
                    self.running = false;
                }
            }
        }
        self.power = if self.loaded {
            self.sp * self.supply * (1.0 + 0.12 * (1.0 - self.supply / self.fad_max))
        } else if self.running {
            0.08 * self.rated
        } else {
            0.0
        };
        let element_target = if self.loaded {
            78.0 + 8.0 * self.supply / self.fad_max
        } else if self.running {
            70.0
        } else {
            env.ambient_c + 5.0
        };
        self.element_c = env.lag(self.element_c, element_target, 300.0);
        self.energy += self.power * env.dt_h;
        self.delivered += self.supply * env.dt_s / 60.0;
        if self.running {
            self.run_h += env.dt_h;
        }
        if self.loaded {
            self.load_h += env.dt_h;
        }
        let q = TAN_PHI * self.power;
        self.ac = self.wiring.ac(env, self.power, q);
        bus[me].p_kw = self.power;
        bus[me].q_kvar = q;
    }

    fn value(&self, _env: &Env, metric: &str) -> Option<f64> {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        Some(match metric {
            "compressor.power" => self.power,
            "compressor.energy" => self.energy,
            "compressor.free_air_delivery" => self.supply,
            "compressor.delivered_volume" => self.delivered,
            "compressor.outlet_pressure" => self.p_bar,
            "compressor.running" => flag(self.running),
            "compressor.loaded" => flag(self.loaded),
            "compressor.running_hours" => self.run_h,
            "compressor.load_hours" => self.load_h,
            "compressor.element_outlet_temperature" => self.element_c,
            "compressor.alarm_flags" => 0.0,
            m => self.ac.value(m)?,
        })
    }

    fn metrics(&self) -> Vec<&'static str> {
        let mut m = vec![
            "compressor.power",
            "compressor.energy",
            "compressor.free_air_delivery",
            "compressor.delivered_volume",
            "compressor.outlet_pressure",
            "compressor.running",
            "compressor.loaded",
            "compressor.running_hours",
            "compressor.load_hours",
            "compressor.element_outlet_temperature",
            "compressor.alarm_flags",
        ];
        m.extend_from_slice(AC_METRICS);
        m
    }

    fn phase(&self) -> u8 {
        1
    }
}
