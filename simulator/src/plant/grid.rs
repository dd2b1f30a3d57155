//! `grid_meter` (the site's connection to the grid) and `submeter` (a meter on one feeder).
//!
//! The grid meter sees the site's net active power: its own base load (offices, lighting,
//! workshops, pumps: parameter `base_load_kw`, full by day and 60 % at night) plus every load
//! device (sorting line, compressor station, EV chargers, boiler auxiliaries) minus every PV
//! inverter's output. Positive is import. One grid meter per site.
//!
//! A submeter (parameter `meters` = a device name) measures the electrical power of that
//! device: a load, a PV inverter (its feed-in counts as export), or a grid meter, whose base
//! load it then measures (the feeder of the site's other consumers).

use super::electric::{AC_METRICS, METER_METRICS, Registers, Wiring, thd};
use super::noise::key;
use super::params::Params;
use super::site::Env;
use super::{Build, Bus, LOADS, Model, PlantError};

/// tan φ of the base load at power factor 0.95.
const BASE_TAN_PHI: f64 = 0.3287;

#[derive(Debug)]
pub(crate) struct GridMeter {
    key: u64,
    base_kw: f64,
    sources: Vec<usize>,
    wiring: Wiring,
    registers: Registers,
    p_kw: f64,
    q_kvar: f64,
    ac: super::electric::Ac,
}

impl GridMeter {
    pub(crate) fn new(p: &mut Params<'_>, b: &Build<'_>) -> Result<Self, PlantError> {
        let base_kw = p.number("base_load_kw", None, 0.0, 1.0e6)?;
        let mut physics = LOADS.to_vec();
        physics.push("pv");
        Ok(Self {
            key: b.key,
            base_kw,
            sources: b.indices_of(&physics),
            wiring: b.wiring(0.03),
            registers: Registers::starting_at(
                b.age_days * base_kw * 14.0,
                b.age_days * base_kw * 4.0,
            ),
            p_kw: 0.0,
            q_kvar: 0.0,
            ac: super::electric::Ac::default(),
        })
    }
}

impl Model for GridMeter {
    fn step(&mut self, env: &Env, bus: &mut [Bus], me: usize) {
        let shape = 0.6 + 0.4 * env.window(7.5, 18.5, 1.0);
        let base = (self.base_kw
            * (shape
                + 0.05 * env.wobble(self.key ^ key!("base.slow"), 300.0)
                + 0.02 * env.wobble(self.key ^ key!("base.fast"), 30.0)))
        .max(0.0);
        bus[me].p_kw = base;
        bus[me].q_kvar = base * BASE_TAN_PHI;
        let (mut p, mut q) = (base, base * BASE_TAN_PHI);
        for &i in &self.sources {
            p += bus[i].p_kw;
            q += bus[i].q_kvar;
        }
        self.p_kw = p;
        self.q_kvar = q;
        self.registers.step(env, p, q);
        self.ac = self.wiring.ac(env, p, q);
    }

    fn value(&self, env: &Env, metric: &str) -> Option<f64> {
        self.registers
            .value(metric)
            .or_else(|| self.ac.value(metric))
            .or_else(|| {
                thd(
                    env,
                    self.key,
                    metric,
                    self.p_kw.abs() / (3.0 * self.base_kw).max(1.0),
                )
            })
    }

    fn metrics(&self) -> Vec<&'static str> {
        [AC_METRICS, METER_METRICS].concat()
    }

    fn phase(&self) -> u8 {
        3
    }
}

#[derive(Debug)]
pub(crate) struct Submeter {
    key: u64,
    target: usize,
    wiring: Wiring,
    registers: Registers,
    p_kw: f64,
    p_max: f64,
    ac: super::electric::Ac,
}

impl Submeter {
    pub(crate) fn new(p: &mut Params<'_>, b: &Build<'_>) -> Result<Self, PlantError> {
        let mut physics = LOADS.to_vec();
        physics.extend(["pv", "grid_meter"]);
        let target = b.reference(p, "meters", &physics)?;
        let generator = b.physics_of(target) == "pv";
        let start = b.age_days * 1000.0;
        Ok(Self {
            key: b.key,
            target,
            wiring: b.wiring(0.02),
            registers: if generator {
                Registers::starting_at(b.age_days * 0.5, start)
            } else {
                Registers::starting_at(start, 0.0)
            },
            p_kw: 0.0,
            p_max: 1.0,
            ac: super::electric::Ac::default(),
        })
    }
}

impl Model for Submeter {
    fn step(&mut self, env: &Env, bus: &mut [Bus], _me: usize) {
        let (p, q) = (bus[self.target].p_kw, bus[self.target].q_kvar);
        self.p_kw = p;
        self.p_max = self.p_max.max(p.abs());
        self.registers.step(env, p, q);
        self.ac = self.wiring.ac(env, p, q);
    }

    fn value(&self, env: &Env, metric: &str) -> Option<f64> {
        self.registers
            .value(metric)
            .or_else(|| self.ac.value(metric))
            .or_else(|| thd(env, self.key, metric, self.p_kw.abs() / self.p_max))
    }

    fn metrics(&self) -> Vec<&'static str> {
        [AC_METRICS, METER_METRICS].concat()
    }

    fn phase(&self) -> u8 {
        4
    }
}
