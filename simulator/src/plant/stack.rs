//! `stack`: the continuous emission monitor at the chimney, after heat recovery.
//!
//! Temperature from the recovery loop (≈ 40 °C while it runs, the boiler outlet temperature
//! when it stops); O₂ a little above the boiler's (the gas is partly dried by condensation);
//! flow = the boiler's flue gas. Concentrations (mg/Nm³, as measured) are plausible for a
//! biomass boiler with a bag filter and SNCR, well within GB 13271-2014 (particulate 30,
//! SO₂ 200, NOx 200 mg/m³): NOx 120–150, SO₂ 10–25, dust 3–8, CO higher at low load. The
//! condensing recovery loop also scrubs part of the SO₂ and dust, so both rise when it stops.
//!
//! Parameters: `boiler` and `recovery` (device names; the recovery must serve that boiler).

use super::noise::key;
use super::params::Params;
use super::site::Env;
use super::{Build, Bus, Model, PlantError};

#[derive(Debug, Default)]
pub(crate) struct Stack {
    key: u64,
    boiler: usize,
    recovery: usize,
    temp_c: f64,
    o2: f64,
    flow: f64,
    so2: f64,
    nox: f64,
    co: f64,
    dust: f64,
}

impl Stack {
    pub(crate) fn new(p: &mut Params<'_>, b: &Build<'_>) -> Result<Self, PlantError> {
        let boiler = b.reference(p, "boiler", &["boiler"])?;
        let recovery = b.reference(p, "recovery", &["heat_recovery"])?;
        let served = b.param_text(recovery, "boiler");
        if served != Some(b.name_of(boiler)) {
            return Err(p.bad(
                "recovery",
                format!(
                    "`{}` recovers heat from {served:?}, not from boiler `{}`",
                    b.name_of(recovery),
                    b.name_of(boiler)
                ),
            ));
        }
        Ok(Self {
            key: b.key,
            boiler,
            recovery,
            temp_c: 40.0,
            ..Self::default()
        })
    }
}

impl Model for Stack {
    fn step(&mut self, env: &Env, bus: &mut [Bus], _me: usize) {
        let bo = bus[self.boiler].boiler;
        let rec = bus[self.recovery];
        let w = |k: u64, s: f64| env.wobble(self.key ^ k, s);
        if !bo.running {
            self.temp_c = env.lag(self.temp_c, env.ambient_c, 1800.0);
            self.o2 = 20.9;
            self.flow = 0.0;
            (self.so2, self.nox, self.co, self.dust) = (0.0, 0.0, 0.0, 0.0);
            return;
        }
        let l = bo.load.clamp(0.0, 1.0);
        let scrub = rec.recovery;
        self.temp_c = rec.exit_c;
        self.o2 = bo.o2 + 0.3;
        self.flow = bo.flue_nm3h;
        self.nox = 120.0 + 30.0 * l + 6.0 * w(key!("stack.nox"), 600.0);
        self.so2 =
            ((15.0 + 10.0 * l) * (1.0 - 0.4 * scrub) + 2.0 * w(key!("stack.so2"), 900.0)).max(0.5);
        self.dust =
            ((6.0 + 3.0 * l) * (1.0 - 0.35 * scrub) + 0.6 * w(key!("stack.dust"), 300.0)).max(0.2);
        self.co = 50.0 + 120.0 * (1.0 - l).powi(2) + 12.0 * w(key!("stack.co"), 120.0);
    }

    fn value(&self, _env: &Env, metric: &str) -> Option<f64> {
        Some(match metric {
            "stack.flue_gas_temperature" => self.temp_c,
            "stack.o2" => self.o2,
            "stack.flue_gas_flow" => self.flow,
            "stack.so2_concentration" => self.so2,
            "stack.nox_concentration" => self.nox,
            "stack.co_concentration" => self.co,
            "stack.dust_concentration" => self.dust,
            _ => return None,
        })
    }

    fn metrics(&self) -> Vec<&'static str> {
        vec![
            "stack.flue_gas_temperature",
            "stack.o2",
            "stack.flue_gas_flow",
            "stack.so2_concentration",
            "stack.nox_concentration",
            "stack.co_concentration",
            "stack.dust_concentration",
        ]
    }

    fn phase(&self) -> u8 {
        2
    }
}
