//! `boiler`: a biomass steam boiler burning the sorting line's wood and residue fraction.
//!
//! The load follows the steam demand of the cascade (about 55 % of rating at night, 90 % by
//! day, with slow and quick swings); the firing rate lags the demand by minutes, and the drum
//! pressure sags while demand outruns it. Fuel feed = heat / (LHV × η); steam = heat / 2.7 GJ/t;
//! flue gas from the fuel and the excess air (residual O₂ 6 % at full load to 8 % at minimum),
//! leaving the boiler at 160–180 °C with load.
//!
//! Parameters: `rated_heat_kw`, `fuel_lhv_mj_per_kg` (12, wet wood residue), `efficiency`
//! (0.85), `steam_pressure_bar` (gauge set point, 10), `min_load` (0.35 of rating).
//!
//! `boiler.state` codes, as the `biomass-boiler-plc-template` profile labels them: 0 off,
//! 1 standby, 2 purge / ignition, 3 firing (modulating), 4 low fire / banked (held at minimum
//! load), 5 burn-out / shut-down, 6 fault, 7 maintenance. The model keeps the boiler firing
//! round the clock, so it reports 3 or 4; `boiler.running` is 1.

use super::noise::key;
use super::params::Params;
use super::site::Env;
use super::{Build, Bus, Model, PlantError};

/// Heat per tonne of steam raised from feedwater, GJ/t.
pub(crate) const STEAM_GJ_PER_T: f64 = 2.7;
/// Wet flue gas at stoichiometric combustion per MJ of fuel, Nm³/MJ.
const FLUE_NM3_PER_MJ: f64 = 0.30;
/// Stoichiometric combustion air per MJ of fuel, Nm³/MJ.
const AIR_NM3_PER_MJ: f64 = 0.26;

/// `boiler.state`: firing, modulating.
const FIRING: f64 = 3.0;
/// `boiler.state`: low fire, held at minimum load.
const LOW_FIRE: f64 = 4.0;

/// What the boiler shows the devices that depend on it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BoilerOut {
    pub(crate) running: bool,
    pub(crate) load: f64,
    pub(crate) flue_nm3h: f64,
    pub(crate) flue_c: f64,
    pub(crate) o2: f64,
    pub(crate) steam_tph: f64,
    pub(crate) steam_bar: f64,
    pub(crate) steam_set_bar: f64,
}

/// Saturation temperature of water at an absolute pressure (bar), °C; Antoine's equation for
/// 100–374 °C, within half a kelvin of the steam tables over 1–20 bar.
pub(crate) fn t_sat(p_abs_bar: f64) -> f64 {
    let mmhg = (p_abs_bar * 750.06).max(1.0);
    1810.94 / (8.140_19 - mmhg.log10()) - 244.485
}

#[derive(Debug)]
pub(crate) struct Boiler {
    key: u64,
    rated: f64,
    lhv: f64,
    eta: f64,
    p_set: f64,
    min_load: f64,
    // State.
    heat_kw: f64,
    demand_kw: f64,
    o2: f64,
    flue_c: f64,
    p_bar: f64,
    heat_kwh: f64,
    fuel_t: f64,
    steam_t: f64,
    hours: f64,
    aux_kw: f64,
    out: BoilerOut,
}

impl Boiler {
    pub(crate) fn new(p: &mut Params<'_>, b: &Build<'_>) -> Result<Self, PlantError> {
        let rated = p.number("rated_heat_kw", None, 10.0, 1.0e6)?;
        let lhv = p.number("fuel_lhv_mj_per_kg", Some(12.0), 5.0, 45.0)?;
        let eta = p.number("efficiency", Some(0.85), 0.5, 0.99)?;
        let p_set = p.number("steam_pressure_bar", Some(10.0), 0.5, 100.0)?;
        let min_load = p.number("min_load", Some(0.35), 0.1, 0.9)?;
        let heat_kwh = b.age_days * 24.0 * 0.7 * rated;
        Ok(Self {
            key: b.key,
            rated,
            lhv,
            eta,
            p_set,
            min_load,
            heat_kw: 0.0,
            demand_kw: 0.0,
            o2: 7.0,
            flue_c: 170.0,
            p_bar: p_set,
            heat_kwh,
            fuel_t: heat_kwh * 3.6 / (eta * lhv * 1000.0),
            steam_t: heat_kwh * 3.6 / (STEAM_GJ_PER_T * 1000.0),
            hours: b.age_days * 24.0 * 0.97,
            aux_kw: 0.0,
            out: BoilerOut::default(),
        })
    }

    fn fuel_tph(&self) -> f64 {
        self.heat_kw * 3.6 / (self.eta * self.lhv * 1000.0)
    }

    fn steam_tph(&self) -> f64 {
        self.heat_kw * 3.6 / (STEAM_GJ_PER_T * 1000.0)
    }

    fn load(&self) -> f64 {
        self.heat_kw / self.rated
    }
}

impl Model for Boiler {
    fn step(&mut self, env: &Env, bus: &mut [Bus], me: usize) {
        let demand = (0.55
            + 0.35 * env.window(6.5, 21.0, 1.5)
            + 0.05 * env.wobble(self.key ^ key!("demand.slow"), 1200.0)
            + 0.02 * env.wobble(self.key ^ key!("demand.fast"), 120.0))
        .clamp(self.min_load, 1.0);
        self.demand_kw = demand * self.rated;
        self.heat_kw = env.lag(self.heat_kw, self.demand_kw, 480.0);
        let load = self.load();
        let span = (1.0 - self.min_load).max(0.05);
        let o2_target = (6.0 + 2.0 * (1.0 - load) / span).clamp(6.0, 8.0)
            + 0.15 * env.wobble(self.key ^ key!("o2"), 180.0);
        self.o2 = env.lag(self.o2, o2_target, 60.0);
        self.flue_c = env.lag(
            self.flue_c,
            160.0 + 20.0 * load + 1.5 * env.wobble(self.key ^ key!("flue"), 600.0),
            600.0,
        );
        self.p_bar = self.p_set - 2.5 * (self.demand_kw - self.heat_kw) / self.rated
            + 0.05 * env.wobble(self.key ^ key!("pressure"), 60.0);

        let fuel = self.fuel_tph();
        self.fuel_t += fuel * env.dt_h;
        self.heat_kwh += self.heat_kw * env.dt_h;
        self.steam_t += self.steam_tph() * env.dt_h;
        self.hours += env.dt_h;

        let lambda = 21.0 / (21.0 - self.o2);
        let flue = fuel * 1000.0 * self.lhv * (FLUE_NM3_PER_MJ + AIR_NM3_PER_MJ * (lambda - 1.0));
        self.out = BoilerOut {
            running: true,
            load,
            flue_nm3h: flue,
            flue_c: self.flue_c,
            o2: self.o2,
            steam_tph: self.steam_tph(),
            steam_bar: self.p_bar,
            steam_set_bar: self.p_set,
        };
        // Auxiliaries: fans, fuel feed, feedwater pumps (power factor 0.88).
        self.aux_kw = 30.0 + 0.018 * self.heat_kw;
        bus[me].p_kw = self.aux_kw;
        bus[me].q_kvar = 0.54 * self.aux_kw;
        bus[me].boiler = self.out;
    }

    fn value(&self, env: &Env, metric: &str) -> Option<f64> {
        Some(match metric {
            "boiler.fuel_feed_mass" | "fuel.biomass_mass" => self.fuel_t,
            "boiler.fuel_feed_rate" => self.fuel_tph(),
            "boiler.heat_output_power" => self.heat_kw,
            "boiler.heat_output_energy" => self.heat_kwh,
            "boiler.flue_gas_temperature" => self.flue_c,
            "boiler.residual_o2" => self.o2,
            "boiler.flue_gas_flow" => self.out.flue_nm3h,
            "boiler.running" => 1.0,
            "boiler.state" => {
                if self.load() <= self.min_load + 0.02 {
                    LOW_FIRE
                } else {
                    FIRING
                }
            }
            "boiler.steam_pressure" => self.p_bar,
            "boiler.water_temperature" => t_sat(self.p_bar + 1.013),
            "boiler.return_temperature" => {
                104.0 + 1.5 * env.wobble(self.key ^ key!("return"), 1800.0)
            }
            "boiler.operating_hours" => self.hours,
            // The induced-draught fan follows the firing rate.
            "boiler.fan_speed" => 900.0 + 1800.0 * self.load(),
            // The heat buffer's top sensor, a few kelvin below the boiler water.
            "boiler.buffer_temperature" => {
                t_sat(self.p_bar + 1.013) - 6.0 + env.wobble(self.key ^ key!("buffer"), 3600.0)
            }
            "steam.generated_mass" => self.steam_t,
            "steam.flow_rate" => self.steam_tph(),
            _ => return None,
        })
    }

    fn metrics(&self) -> Vec<&'static str> {
        vec![
            "boiler.fuel_feed_mass",
            "boiler.fuel_feed_rate",
            "boiler.heat_output_power",
            "boiler.heat_output_energy",
            "boiler.flue_gas_temperature",
            "boiler.residual_o2",
            "boiler.flue_gas_flow",
            "boiler.running",
            "boiler.state",
            "boiler.steam_pressure",
            "boiler.water_temperature",
            "boiler.return_temperature",
            "boiler.operating_hours",
            "boiler.fan_speed",
            "boiler.buffer_temperature",
            "steam.generated_mass",
            "steam.flow_rate",
            "fuel.biomass_mass",
        ]
    }

    fn phase(&self) -> u8 {
        0
    }
}
