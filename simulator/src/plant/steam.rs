//! `steam`: a steam flow meter in the cascade fed by a boiler.
//!
//! `stream` says where it sits: `generated` (the boiler's output header), `stage` (the steam a
//! cascade stage takes: `share` of the generated steam), or `vent` (steam blown off to
//! atmosphere: `share`, 0.015 by default). The stage and vent shares of one boiler, plus the
//! losses (radiation, traps, condensate), make the whole: they must add up to no more than 1.
//!
//! `pressure_bar` (gauge) is the pressure at the meter at the boiler's set point (default: the
//! boiler's header pressure); it follows the boiler's swings in proportion. Steam is taken as
//! saturated at that pressure.
//!
//! Besides `steam.mass` every meter totals its role: `steam.generated_mass`,
//! `steam.used_mass` (stages) or `steam.vented_mass`.

use super::boiler::t_sat;
use super::params::Params;
use super::site::Env;
use super::{Build, Bus, Model, PlantError};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stream {
    Generated,
    Stage,
    Vent,
}

#[derive(Debug)]
pub(crate) struct SteamMeter {
    boiler: usize,
    stream: Stream,
    share: f64,
    pressure: Option<f64>,
    // State.
    flow: f64,
    p_bar: f64,
    mass: f64,
}

impl SteamMeter {
    pub(crate) fn new(p: &mut Params<'_>, b: &Build<'_>) -> Result<Self, PlantError> {
        let boiler = b.reference(p, "boiler", &["boiler"])?;
        let stream = match p.choice("stream", &["generated", "stage", "vent"], None)? {
            "generated" => Stream::Generated,
            "stage" => Stream::Stage,
            _ => Stream::Vent,
        };
        let share = match stream {
            Stream::Generated => {
                if p.has("share") {
                    return Err(p.bad("share", "a `generated` meter measures all the steam; share applies to stage and vent meters"));
                }
                1.0
            }
            Stream::Stage => p.number("share", None, 0.0, 1.0)?,
            Stream::Vent => p.number("share", Some(0.015), 0.0, 1.0)?,
        };
        let pressure = if p.has("pressure_bar") {
            Some(p.number("pressure_bar", None, 0.0, 100.0)?)
        } else {
            None
        };
        Ok(Self {
            boiler,
            stream,
            share,
            pressure,
            flow: 0.0,
            p_bar: 0.0,
            mass: b.age_days * 24.0 * 5.0 * share,
        })
    }

    /// The boiler this meter takes a share of, and the share, for stage and vent meters.
    pub(crate) fn claim(&self) -> Option<(usize, f64)> {
        (self.stream != Stream::Generated).then_some((self.boiler, self.share))
    }
}

impl Model for SteamMeter {
    fn step(&mut self, env: &Env, bus: &mut [Bus], _me: usize) {
        let bo = bus[self.boiler].boiler;
        self.flow = if bo.running {
            self.share * bo.steam_tph
        } else {
            0.0
        };
        self.p_bar = match self.pressure {
            None => bo.steam_bar,
            Some(p) if bo.steam_set_bar > 0.0 => p * bo.steam_bar / bo.steam_set_bar,
            Some(p) => p,
        };
        self.mass += self.flow * env.dt_h;
    }

    fn value(&self, _env: &Env, metric: &str) -> Option<f64> {
        Some(match (metric, self.stream) {
            ("steam.flow_rate", _) => self.flow,
            ("steam.mass", _)
            | ("steam.generated_mass", Stream::Generated)
            | ("steam.used_mass", Stream::Stage)
            | ("steam.vented_mass", Stream::Vent) => self.mass,
            ("steam.pressure", _) => self.p_bar,
            ("steam.temperature", _) => t_sat(self.p_bar + 1.013),
            _ => return None,
        })
    }

    fn metrics(&self) -> Vec<&'static str> {
        let role = match self.stream {
            Stream::Generated => "steam.generated_mass",
            Stream::Stage => "steam.used_mass",
            Stream::Vent => "steam.vented_mass",
        };
        vec![
            "steam.flow_rate",
            "steam.mass",
            role,
            "steam.pressure",
            "steam.temperature",
        ]
    }

    fn phase(&self) -> u8 {
        1
    }

    fn steam_claim(&self) -> Option<(usize, f64)> {
        self.claim()
    }
}
