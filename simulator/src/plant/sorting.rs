//! `sorting_line`: the construction-waste sorting and crushing line (belt scales, PLC).
//!
//! While a shift runs (`shifts`: daily windows, default round the clock) the feed ramps to
//! 91–98 % of `rated_tph` and wanders with the trucks and the loaders; between shifts the
//! belts run empty within minutes. By day the line is fed from deliveries; at night
//! (22:00–06:00) a part of the feed (`stock_share`, 3 %) comes from the stockpile, reported as
//! `sorting.stock_drawn_mass` apart from `sorting.input_mass` (the waste received).
//!
//! Of the whole feed (input + stock drawn) the line sends `material` (0.92) to products
//! (recycled aggregate, metals, wood for reuse), `energy_recovery` (0.07) to the boiler as
//! fuel, `landfill` (0.008) to disposal, and the rest is moisture and dust lost on the way:
//! recovered + energy recovery + landfill = (input + stock drawn) × (1 − moisture) at every
//! step. The separation rate (impurities removed) is about 98 %, a little lower at full feed.
//!
//! Electrical power: `power_kw` × (0.4 + 0.6 × feed / rated) while running (crushers and
//! screens idle at 40 %), 4 % when stopped; a load on the grid meter.

use super::noise::key;
use super::params::Params;
use super::schedule::Schedule;
use super::site::Env;
use super::{Build, Bus, Model, PlantError};

#[derive(Debug)]
pub(crate) struct Line {
    key: u64,
    rated: f64,
    material: f64,
    energy: f64,
    landfill: f64,
    stock_share: f64,
    power_kw: f64,
    shifts: Schedule,
    // State.
    feed: f64,
    running: bool,
    separation: f64,
    power: f64,
    input_t: f64,
    stock_t: f64,
    recovered_t: f64,
    energy_t: f64,
    landfill_t: f64,
}

impl Line {
    pub(crate) fn new(p: &mut Params<'_>, b: &Build<'_>) -> Result<Self, PlantError> {
        let rated = p.number("rated_tph", None, 0.1, 1.0e5)?;
        let material = p.number("material", Some(0.92), 0.0, 1.0)?;
        let energy = p.number("energy_recovery", Some(0.07), 0.0, 1.0)?;
        let landfill = p.number("landfill", Some(0.008), 0.0, 1.0)?;
        if material + energy + landfill > 1.0 + 1e-9 {
            return Err(p.bad(
                "material",
                format!(
                    "material {material} + energy_recovery {energy} + landfill {landfill} = {} is more than the whole feed",
                    material + energy + landfill
                ),
            ));
        }
        let stock_share = p.number("stock_share", Some(0.03), 0.0, 1.0)?;
        let power_kw = p.number("power_kw", None, 0.0, 1.0e5)?;
        let items = p.list("shifts")?;
        let shifts = if items.is_empty() {
            Schedule::parse(&["00:00-24:00"])
        } else {
            Schedule::parse(&items)
        }
        .map_err(|m| p.bad("shifts", m))?;
        let input_t = b.age_days * rated * 20.0;
        Ok(Self {
            key: b.key,
            rated,
            material,
            energy,
            landfill,
            stock_share,
            power_kw,
            shifts,
            feed: 0.0,
            running: false,
            separation: 98.0,
            power: 0.0,
            input_t,
            stock_t: input_t * 0.01,
            recovered_t: input_t * 1.01 * material,
            energy_t: input_t * 1.01 * energy,
            landfill_t: input_t * 1.01 * landfill,
        })
    }

    fn stock_rate(&self, env: &Env) -> f64 {
        self.feed * self.stock_share * (1.0 - env.window(6.0, 22.0, 0.5))
    }
}

impl Model for Line {
    fn step(&mut self, env: &Env, bus: &mut [Bus], me: usize) {
        let scheduled = self.shifts.contains(env);
        let target = if scheduled {
            self.rated
                * (0.945
                    + 0.035 * env.wobble(self.key ^ key!("feed.slow"), 900.0)
                    + 0.015 * env.wobble(self.key ^ key!("feed.fast"), 60.0))
                .min(1.0)
        } else {
            0.0
        };
        self.feed = env.lag(self.feed, target, 120.0);
        if !scheduled && self.feed < 0.002 * self.rated {
            self.feed = 0.0;
        }
        self.running = scheduled || self.feed > 0.01 * self.rated;
        let stock = self.stock_rate(env);
        self.input_t += (self.feed - stock) * env.dt_h;
        self.stock_t += stock * env.dt_h;
        self.recovered_t += self.feed * self.material * env.dt_h;
        self.energy_t += self.feed * self.energy * env.dt_h;
        self.landfill_t += self.feed * self.landfill * env.dt_h;
        let load = self.feed / self.rated;
        if self.running {
            self.separation =
                98.6 - 1.2 * load + 0.3 * env.wobble(self.key ^ key!("separation"), 1800.0);
        }
        self.power = if self.running {
            self.power_kw * (0.4 + 0.6 * load)
        } else {
            0.04 * self.power_kw
        };
        bus[me].p_kw = self.power;
        bus[me].q_kvar = 0.54 * self.power;
        bus[me].production = load;
    }

    fn value(&self, env: &Env, metric: &str) -> Option<f64> {
        Some(match metric {
            "sorting.input_mass" => self.input_t,
            "sorting.input_rate" => self.feed - self.stock_rate(env),
            "sorting.stock_drawn_mass" => self.stock_t,
            "sorting.stock_drawn_rate" => self.stock_rate(env),
            "sorting.recovered_mass" => self.recovered_t,
            "sorting.recovered_rate" => self.feed * self.material,
            "sorting.energy_recovery_mass" => self.energy_t,
            "sorting.energy_recovery_rate" => self.feed * self.energy,
            "sorting.landfill_mass" => self.landfill_t,
            "sorting.landfill_rate" => self.feed * self.landfill,
            "sorting.running" => {
                if self.running {
                    1.0
                } else {
                    0.0
                }
            }
            "sorting.separation_rate" => self.separation,
            _ => return None,
        })
    }

    fn metrics(&self) -> Vec<&'static str> {
        vec![
            "sorting.input_mass",
            "sorting.input_rate",
            "sorting.stock_drawn_mass",
            "sorting.stock_drawn_rate",
            "sorting.recovered_mass",
            "sorting.recovered_rate",
            "sorting.energy_recovery_mass",
            "sorting.energy_recovery_rate",
            "sorting.landfill_mass",
            "sorting.landfill_rate",
            "sorting.running",
            "sorting.separation_rate",
        ]
    }

    fn phase(&self) -> u8 {
        0
    }
}
