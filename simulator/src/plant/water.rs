//! `water`: an ultrasonic flow meter on one of the site's water streams.
//!
//! `stream`:
//! - `fresh` (mains or well intake), `reused` (treated water returned to the process),
//!   `discharged` (the outfall; 0 for a zero-discharge site): `daily_m3` a day, shaped by the
//!   working day (35 % flow at night) with minute-scale swings.
//! - `rain_collected`: runoff from `catchment_m2` of roofs and yards (`runoff` 0.85) into the
//!   rain tank while the site's weather rains, delayed ~10 minutes by gutters and pipes.
//! - `rain_used`: pumping from that tank (`tank_m3`, 3000; fed by the meter `collected`, by
//!   default the site's only `rain_collected` meter) to the process, up to `daily_m3` a day in
//!   the working-day shape and only while the tank holds water; what overflows a full tank is
//!   lost (so used ≤ collected, and nearly all of it over a day when the pump keeps up).
//!
//! `dn_mm` is the pipe's inner diameter for the velocity (default: the smallest standard size
//! keeping the peak flow under 2 m/s). Besides the `flow.*` totals every meter totals its role
//! as `water.<stream>_volume`. No reverse flow, no error flags.

use std::f64::consts::PI;

use super::noise::key;
use super::params::Params;
use super::site::{Env, daily_window};
use super::{Build, Bus, Model, PlantError};

const STANDARD_DN: &[f64] = &[
    15.0, 20.0, 25.0, 32.0, 40.0, 50.0, 65.0, 80.0, 100.0, 125.0, 150.0, 200.0, 250.0, 300.0,
    350.0, 400.0, 450.0, 500.0, 600.0, 700.0, 800.0, 900.0, 1000.0, 1200.0,
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stream {
    Fresh,
    Reused,
    RainCollected,
    RainUsed,
    Discharged,
}

fn shape(h: f64) -> f64 {
    0.35 + 0.9 * daily_window(h, 6.0, 22.0, 0.5)
}

#[derive(Debug)]
pub(crate) struct FlowMeter {
    key: u64,
    stream: Stream,
    daily: f64,
    shape_mean: f64,
    catchment: f64,
    runoff: f64,
    tank_cap: f64,
    collected: Option<usize>,
    area_m2: f64,
    // State.
    rate: f64,
    tank: f64,
    volume: f64,
    temp_c: f64,
}

impl FlowMeter {
    pub(crate) fn new(p: &mut Params<'_>, b: &Build<'_>) -> Result<Self, PlantError> {
        let stream = match p.choice(
            "stream",
            &[
                "fresh",
                "reused",
                "rain_collected",
                "rain_used",
                "discharged",
            ],
            None,
        )? {
            "fresh" => Stream::Fresh,
            "reused" => Stream::Reused,
            "rain_collected" => Stream::RainCollected,
            "rain_used" => Stream::RainUsed,
            _ => Stream::Discharged,
        };
        let shape_mean = (0..1440).map(|m| shape(f64::from(m) / 60.0)).sum::<f64>() / 1440.0;
        let peak_shape = 1.25 / shape_mean;
        let (mut daily, mut catchment, mut runoff, mut tank_cap, mut collected) =
            (0.0, 0.0, 0.0, 0.0, None);
        let peak = if stream == Stream::RainCollected {
            catchment = p.number("catchment_m2", None, 0.0, 1.0e8)?;
            runoff = p.number("runoff", Some(0.85), 0.0, 1.0)?;
            catchment * runoff * 0.02
        } else {
            daily = p.number("daily_m3", None, 0.0, 1.0e7)?;
            if stream == Stream::RainUsed {
                tank_cap = p.number("tank_m3", Some(3000.0), 0.0, 1.0e7)?;
                collected = Some(if p.has("collected") {
                    b.reference(p, "collected", &["water"])?
                } else {
                    let all: Vec<usize> = b
                        .indices_of(&["water"])
                        .into_iter()
                        .filter(|&i| b.param_text(i, "stream") == Some("rain_collected"))
                        .collect();
                    match all[..] {
                        [one] => one,
                        _ => {
                            return Err(p.bad(
                                "collected",
                                format!("name the rain_collected meter this tank is fed by ({} in the scenario)", all.len()),
                            ));
                        }
                    }
                });
            }
            daily / 24.0 * peak_shape
        };
        if let Some(c) = collected
            && b.param_text(c, "stream") != Some("rain_collected")
        {
            return Err(p.bad(
                "collected",
                format!("`{}` is not a rain_collected meter", b.name_of(c)),
            ));
        }
        let dn = if p.has("dn_mm") {
            p.number("dn_mm", None, 5.0, 5000.0)?
        } else if peak <= 0.0 {
            100.0
        } else {
            let min_area = peak / 3600.0 / 2.0;
            STANDARD_DN
                .iter()
                .copied()
                .find(|d| PI * (d / 2000.0).powi(2) >= min_area)
                .unwrap_or(1200.0)
        };
        let volume = b.age_days
            * match stream {
                Stream::RainCollected => catchment * runoff * 0.0015,
                Stream::RainUsed => daily * 0.05,
                _ => daily,
            };
        Ok(Self {
            key: b.key,
            stream,
            daily,
            shape_mean,
            catchment,
            runoff,
            tank_cap,
            collected,
            area_m2: PI * (dn / 2000.0).powi(2),
            rate: 0.0,
            tank: 0.0,
            volume,
            temp_c: 20.0,
        })
    }

    fn demand(&self, env: &Env) -> f64 {
        let swing = 1.0
            + 0.08 * env.wobble(self.key ^ key!("flow.slow"), 600.0)
            + 0.03 * env.wobble(self.key ^ key!("flow.fast"), 60.0);
        (self.daily / 24.0 * shape(env.hour) / self.shape_mean * swing).max(0.0)
    }

    fn role(&self) -> &'static str {
        match self.stream {
            Stream::Fresh => "water.fresh_volume",
            Stream::Reused => "water.reused_volume",
            Stream::RainCollected => "water.rain_collected_volume",
            Stream::RainUsed => "water.rain_used_volume",
            Stream::Discharged => "water.discharged_volume",
        }
    }
}

impl Model for FlowMeter {
    fn step(&mut self, env: &Env, bus: &mut [Bus], me: usize) {
        let temp_target = match self.stream {
            Stream::Fresh => 17.0 + 0.3 * env.wobble(self.key ^ key!("temp"), 3600.0),
            Stream::Reused | Stream::Discharged => env.ambient_c + 3.0,
            Stream::RainCollected | Stream::RainUsed => env.ambient_c - 1.0,
        };
        self.temp_c = env.lag(self.temp_c, temp_target, 1800.0);
        self.rate = match self.stream {
            Stream::Fresh | Stream::Reused | Stream::Discharged => self.demand(env),
            Stream::RainCollected => {
                let r = env.lag(
                    self.rate,
                    env.rain_mm_h * self.catchment * self.runoff / 1000.0,
                    600.0,
                );
                if r < 1e-4 { 0.0 } else { r }
            }
            Stream::RainUsed => {
                if let Some(c) = self.collected {
                    self.tank += bus[c].flow_m3h * env.dt_h;
                }
                let r = if env.dt_h > 0.0 {
                    self.demand(env).min(self.tank / env.dt_h)
                } else {
                    0.0
                };
                self.tank = (self.tank - r * env.dt_h).clamp(0.0, self.tank_cap);
                r
            }
        };
        self.volume += self.rate * env.dt_h;
        bus[me].flow_m3h = self.rate;
    }

    fn value(&self, env: &Env, metric: &str) -> Option<f64> {
        Some(match metric {
            "flow.rate" => self.rate,
            "flow.volume" | "flow.net_volume" => self.volume,
            "flow.negative_volume" | "flow.error_flags" => 0.0,
            "flow.velocity" => self.rate / 3600.0 / self.area_m2,
            "flow.temperature" => self.temp_c,
            "flow.signal_quality" => 85.0 + 5.0 * env.wobble(self.key ^ key!("quality"), 3600.0),
            m if m == self.role() => self.volume,
            _ => return None,
        })
    }

    fn metrics(&self) -> Vec<&'static str> {
        vec![
            "flow.rate",
            "flow.volume",
            "flow.net_volume",
            "flow.negative_volume",
            "flow.velocity",
            "flow.temperature",
            "flow.signal_quality",
            "flow.error_flags",
            self.role(),
        ]
    }

    fn phase(&self) -> u8 {
        if self.stream == Stream::RainUsed {
            1
        } else {
            0
        }
    }
}
