//! `pv`: a photovoltaic array and its inverter.
//!
//! Plane-of-array irradiance from the sun's position (`spa`), a clear-sky model with air-mass
//! attenuation, and the site's cloud cover (beam blocked, diffuse raised); cell temperature
//! from irradiance over ambient; DC power from the rating, performance ratio and temperature;
//! an inverter with its efficiency, AC limit and SunSpec operating states.
//!
//! Parameters: `kwp` (DC peak power), `performance_ratio` (0.8: the AC yield per kWh/m² and
//! kWp at usual operating temperature), `tilt` (degrees from horizontal, 10), `azimuth` (degrees
//! clockwise from north, 180 = south), `ac_kw` (inverter limit, = `kwp`), `clouds` (0..1, how
//! much of the site's cloud cover this array sees: 1 for real weather, 0 for a clear sky; give
//! every array of a site the same value).
//!
//! `pv.operating_state` uses SunSpec `St`: 2 sleeping (no light), 3 starting (grid checks for
//! 60 s after first light), 4 MPPT (producing), 5 throttled (at the AC limit).

use super::electric::{AC_METRICS, Ac, Wiring};
use super::params::Params;
use super::site::Env;
use super::{Build, Bus, Model, PlantError};

const SLEEPING: f64 = 2.0;
const STARTING: f64 = 3.0;
const MPPT: f64 = 4.0;
const THROTTLED: f64 = 5.0;

/// Seconds of grid checks between first light and feeding in.
const START_DELAY_S: f64 = 60.0;
/// Nominal MPP string voltage at 25 °C cell temperature, V.
const V_MPP: f64 = 1050.0;
/// Power temperature coefficient of crystalline silicon, 1/K.
const GAMMA: f64 = -0.0037;
/// Cell temperature the performance ratio is quoted at, °C.
const T_QUOTED: f64 = 45.0;
/// Peak inverter efficiency.
const ETA_INV: f64 = 0.985;
/// Ground reflectance.
const ALBEDO: f64 = 0.2;

#[derive(Debug)]
pub(crate) struct Pv {
    kwp: f64,
    ac_kw: f64,
    pr: f64,
    cos_tilt: f64,
    sin_tilt: f64,
    azimuth: f64,
    clouds: f64,
    wiring: Wiring,
    // State.
    state: f64,
    starting_s: f64,
    poa: f64,
    t_cell: f64,
    dc_kw: f64,
    dc_v: f64,
    ac: f64,
    energy: f64,
    cabinet_c: f64,
    heatsink_c: f64,
    ac_side: Ac,
}

impl Pv {
    pub(crate) fn new(p: &mut Params<'_>, b: &Build<'_>) -> Result<Self, PlantError> {
        let kwp = p.number("kwp", None, 0.1, 1.0e6)?;
        let pr = p.number("performance_ratio", Some(0.8), 0.3, 1.0)?;
        let tilt = p.number("tilt", Some(10.0), 0.0, 90.0)?;
        let azimuth = p.number("azimuth", Some(180.0), 0.0, 360.0)?;
        let ac_kw = p.number("ac_kw", Some(kwp), 0.1, 1.0e6)?;
        let clouds = p.number("clouds", Some(1.0), 0.0, 1.0)?;
        Ok(Self {
            kwp,
            ac_kw,
            pr,
            cos_tilt: tilt.to_radians().cos(),
            sin_tilt: tilt.to_radians().sin(),
            azimuth,
            clouds,
            wiring: b.wiring(0.005),
            state: SLEEPING,
            starting_s: 0.0,
            poa: 0.0,
            t_cell: 20.0,
            dc_kw: 0.0,
            dc_v: 0.0,
            ac: 0.0,
            // About 1,300 kWh/kWp a year in Qingdao.
            energy: b.age_days * kwp * 3.6,
            cabinet_c: 25.0,
            heatsink_c: 25.0,
            ac_side: Ac::default(),
        })
    }

    /// Plane-of-array irradiance, W/m².
    fn irradiance(&self, env: &Env) -> f64 {
        if env.ghi_clear <= 0.0 {
            return 0.0;
        }
        let cz = env.cos_zenith;
        let sz = (1.0 - cz * cz).max(0.0).sqrt();
        let cloud = (self.clouds * env.cloud).clamp(0.0, 1.0);
        // Clear-sky split: ~12 % diffuse at high sun, more at low sun. A cloud in front of the
        // sun blocks the beam and scatters a little of it back as diffuse light, leaving a
        // quarter of the clear-sky irradiance under thick cloud.
        let fd = 0.12 + 0.2 * (1.0 - cz).powi(3);
        let beam_h = env.ghi_clear * (1.0 - fd) * (1.0 - cloud);
        let diffuse = env.ghi_clear * (fd + 0.15 * cloud * (1.0 - fd));
        let ghi = beam_h + diffuse;
        let cos_inc = cz * self.cos_tilt
            + sz * self.sin_tilt * (env.sun_azimuth - self.azimuth).to_radians().cos();
        let beam_n = beam_h / cz.max(0.05);
        (beam_n * cos_inc.max(0.0)
            + diffuse * (1.0 + self.cos_tilt) / 2.0
            + ghi * ALBEDO * (1.0 - self.cos_tilt) / 2.0)
            .max(0.0)
    }
}

impl Model for Pv {
    fn step(&mut self, env: &Env, bus: &mut [Bus], me: usize) {
        let g = self.irradiance(env);
        self.poa = g;
        self.t_cell = env.ambient_c + 0.032 * g;
        let dc_avail = (self.kwp * g / 1000.0
            * (self.pr / ETA_INV)
            * (1.0 + GAMMA * (self.t_cell - T_QUOTED)))
            .max(0.0);
        let light = dc_avail > 0.002 * self.kwp;
        if !light {
            self.state = SLEEPING;
            self.starting_s = 0.0;
        } else if self.state == SLEEPING {
            self.state = STARTING;
            self.starting_s = 0.0;
        } else if self.state == STARTING {
            self.starting_s += env.dt_s;
            if self.starting_s >= START_DELAY_S {
                self.state = MPPT;
            }
        }
        let producing = self.state == MPPT || self.state == THROTTLED;
        if producing {
            let ac = (dc_avail * ETA_INV - 0.002 * self.ac_kw).max(0.0);
            if ac > self.ac_kw {
                self.state = THROTTLED;
                self.ac = self.ac_kw;
                self.dc_kw = self.ac_kw / ETA_INV;
            } else {
                self.state = MPPT;
                self.ac = ac;
                self.dc_kw = dc_avail;
            }
        } else {
            self.ac = 0.0;
            self.dc_kw = 0.0;
        }
        let v_mpp = V_MPP
            * (1.0 - 0.0035 * (self.t_cell - 25.0))
            * (1.0 + 0.04 * (g.max(10.0) / 1000.0).ln());
        self.dc_v = if g < 1.0 {
            0.0
        } else if producing {
            v_mpp
        } else {
            1.22 * v_mpp
        };
        self.energy += self.ac * env.dt_h;
        let load = self.ac / self.ac_kw;
        self.cabinet_c = env.lag(self.cabinet_c, env.ambient_c + 4.0 + 8.0 * load, 1200.0);
        self.heatsink_c = env.lag(self.heatsink_c, env.ambient_c + 3.0 + 28.0 * load, 360.0);
        // Unity power factor; the AC side reports generation as positive power.
        self.ac_side = self.wiring.ac(env, self.ac, 0.0);
        bus[me].p_kw = -self.ac;
        bus[me].q_kvar = 0.0;
    }

    fn value(&self, _env: &Env, metric: &str) -> Option<f64> {
        Some(match metric {
            "pv.ac_power" => self.ac,
            "pv.energy" => self.energy,
            "pv.dc_power" => self.dc_kw,
            "pv.dc_voltage" => self.dc_v,
            "pv.dc_current" => {
                if self.dc_v > 1.0 {
                    self.dc_kw * 1000.0 / self.dc_v
                } else {
                    0.0
                }
            }
            "pv.irradiance" => self.poa,
            "pv.cabinet_temperature" => self.cabinet_c,
            "pv.heatsink_temperature" => self.heatsink_c,
            "pv.operating_state" => self.state,
            "pv.event_flags" => 0.0,
            // Active power is `pv.ac_power` (the catalogue's `electricity.active_power` counts
            // import as positive, which would read as consumption here).
            m if m.starts_with("electricity.active_power") => return None,
            m => self.ac_side.value(m)?,
        })
    }

    fn metrics(&self) -> Vec<&'static str> {
        let mut m = vec![
            "pv.ac_power",
            "pv.energy",
            "pv.dc_power",
            "pv.dc_voltage",
            "pv.dc_current",
            "pv.irradiance",
            "pv.cabinet_temperature",
            "pv.heatsink_temperature",
            "pv.operating_state",
            "pv.event_flags",
        ];
        m.extend(
            AC_METRICS
                .iter()
                .filter(|x| !x.starts_with("electricity.active_power")),
        );
        m
    }

    fn phase(&self) -> u8 {
        0
    }
}
