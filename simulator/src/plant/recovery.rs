//! `heat_recovery`: the heat meter on the flue-gas → seawater recovery loop in the chimney.
//!
//! The heat available in the flue gas is its sensible heat between the boiler outlet and the
//! 25 °C reference (flow × 1.38 kJ/(Nm³·K) × ΔT). The loop recovers `design_efficiency` of it,
//! so the gas leaves the stack at 25 °C + (1 − η)·(T_outlet − 25 °C) ≈ 40 °C, and recovered /
//! (recovered + heat left at the stack) = η ≈ 0.90. Latent heat of the condensing water vapour
//! is left out on both sides of that ratio (the KPI's sensible-heat form). The seawater side
//! runs at a design temperature rise (`delta_t`, 15 K at full load, a little less at part
//! load) with the pump speed following the heat, so the meter's flow × ΔT × ρc_p equals the
//! recovered power.
//!
//! When the loop stops (the boiler is off, or the time is inside `outage`, a list of windows
//! such as `"13:00-14:30"` daily or `"2026-06-21T13:00:00+08:00/2026-06-21T15:00:00+08:00"`),
//! the recovery fades out over a few minutes and the stack temperature rises to the boiler
//! outlet temperature.

use super::params::Params;
use super::schedule::Schedule;
use super::site::Env;
use super::{Build, Bus, Model, PlantError};

/// Specific heat of wet flue gas per normal cubic metre, kJ/(Nm³·K).
pub(crate) const CP_FLUE: f64 = 1.38;
/// Reference temperature of the heat balance, °C.
pub(crate) const T_REF: f64 = 25.0;
/// ρ·c_p of seawater, kWh/(m³·K) (1025 kg/m³ × 3.99 kJ/(kg·K)).
const SEA_KWH_PER_M3K: f64 = 1.136;
/// Time constant of the loop starting or stopping, s.
const TAU_S: f64 = 180.0;

#[derive(Debug)]
pub(crate) struct HeatRecovery {
    boiler: usize,
    design: f64,
    delta_t: f64,
    outage: Schedule,
    // State.
    eff: f64,
    q_kw: f64,
    flow: f64,
    supply_c: f64,
    return_c: f64,
    energy: f64,
    volume: f64,
}

impl HeatRecovery {
    pub(crate) fn new(p: &mut Params<'_>, b: &Build<'_>) -> Result<Self, PlantError> {
        let boiler = b.reference(p, "boiler", &["boiler"])?;
        let design = p.number("design_efficiency", Some(0.9), 0.1, 0.99)?;
        let delta_t = p.number("delta_t", Some(15.0), 2.0, 60.0)?;
        let items = p.list("outage")?;
        let outage = Schedule::parse(&items).map_err(|m| p.bad("outage", m))?;
        Ok(Self {
            boiler,
            design,
            delta_t,
            outage,
            eff: 0.0,
            q_kw: 0.0,
            flow: 0.0,
            supply_c: 20.0,
            return_c: 20.0,
            energy: b.age_days * 24.0 * 500.0,
            volume: b.age_days * 24.0 * 30.0,
        })
    }
}

impl Model for HeatRecovery {
    fn step(&mut self, env: &Env, bus: &mut [Bus], me: usize) {
        let bo = bus[self.boiler].boiler;
        let active = bo.running && (self.outage.is_empty() || !self.outage.contains(env));
        self.eff = env.lag(self.eff, if active { self.design } else { 0.0 }, TAU_S);
        let e = if self.eff > 0.005 { self.eff } else { 0.0 };
        let available = bo.flue_nm3h * CP_FLUE * (bo.flue_c - T_REF).max(0.0) / 3600.0;
        self.q_kw = e * available;
        self.return_c = env.sea_c;
        if e > 0.0 {
            let dt = self.delta_t * (0.85 + 0.15 * bo.load.clamp(0.0, 1.0));
            self.flow = self.q_kw / (SEA_KWH_PER_M3K * dt);
            self.supply_c = self.return_c + dt;
        } else {
            self.flow = 0.0;
            self.supply_c = env.lag(self.supply_c, self.return_c, 900.0);
        }
        self.energy += self.q_kw * env.dt_h;
        self.volume += self.flow * env.dt_h;
        bus[me].recovery = e;
        bus[me].exit_c = T_REF + (1.0 - e) * (bo.flue_c - T_REF);
    }

    fn value(&self, _env: &Env, metric: &str) -> Option<f64> {
        Some(match metric {
            "heat.power" => self.q_kw,
            "heat.energy" => self.energy,
            "heat.flow_rate" => self.flow,
            "heat.volume" => self.volume,
            "heat.supply_temperature" => self.supply_c,
            "heat.return_temperature" => self.return_c,
            "heat.temperature_difference" => self.supply_c - self.return_c,
            "heat.error_flags" => 0.0,
            _ => return None,
        })
    }

    fn metrics(&self) -> Vec<&'static str> {
        vec![
            "heat.power",
            "heat.energy",
            "heat.flow_rate",
            "heat.volume",
            "heat.supply_temperature",
            "heat.return_temperature",
            "heat.temperature_difference",
            "heat.error_flags",
        ]
    }

    fn phase(&self) -> u8 {
        1
    }
}
