//! What every device of the site shares at a step: clock, sun, sky, weather and grid.
//!
//! The weather is a seeded process keyed by the local day: each day draws a sky type (clear,
//! partly cloudy, overcast, with June-in-Qingdao odds) and its rain showers; within the day,
//! cloud cover is smooth value noise, so clouds drift over minutes rather than flicker. Days
//! blend into each other over the first two hours after midnight. The ambient temperature is a
//! daily sine around the June mean of Qingdao (21.5 °C, peak mid-afternoon), damped by cloud,
//! cooled by rain and lagged like a real air mass.

use std::f64::consts::PI;
use std::time::Duration;

use super::noise::{fnv, hash, smooth, smoothstep, unit};

const DAY_MS: i64 = 86_400_000;

/// June mean air temperature of Qingdao, °C.
const JUNE_MEAN_C: f64 = 21.5;
/// Half the usual day–night swing of a clear June day at the coast, K.
const DAILY_SWING_K: f64 = 3.5;
/// Sea-surface temperature off Qingdao in June, °C (the heat-recovery loop's cold side).
const SEA_C: f64 = 20.0;

// Keys of the site-wide random streams.
const K_SKY: u64 = fnv("site.sky");
const K_CLOUD_SLOW: u64 = fnv("site.cloud.slow");
const K_CLOUD_FAST: u64 = fnv("site.cloud.fast");
const K_OVERCAST: u64 = fnv("site.cloud.overcast");
const K_HAZE: u64 = fnv("site.haze");
const K_AIR_DAY: u64 = fnv("site.air.day");
const K_AIR_FAST: u64 = fnv("site.air.fast");
const K_SEA: u64 = fnv("site.sea");
const K_VOLT: [u64; 3] = [
    fnv("site.volt.l1"),
    fnv("site.volt.l2"),
    fnv("site.volt.l3"),
];
const K_VOLT_FAST: [u64; 3] = [
    fnv("site.volt.f1"),
    fnv("site.volt.f2"),
    fnv("site.volt.f3"),
];
const K_VOLT_SITE: u64 = fnv("site.volt");
const K_HZ: u64 = fnv("site.hz");
const K_HZ_FAST: u64 = fnv("site.hz.fast");

/// The site's fixed facts, from the scenario.
#[derive(Debug, Clone)]
pub(crate) struct Site {
    pub(crate) seed: u64,
    pub(crate) latitude: f64,
    pub(crate) longitude: f64,
    pub(crate) tz: jiff::tz::TimeZone,
    pub(crate) start_ms: i64,
    pub(crate) step_ms: i64,
}

/// The shared conditions at one step.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Env {
    pub(crate) seed: u64,
    /// Step index since the scenario start (0 = start).
    pub(crate) n: u64,
    /// Simulated UTC milliseconds.
    pub(crate) t_ms: i64,
    /// True at the initial evaluation (step 0): lags start at their targets, nothing integrates.
    pub(crate) first: bool,
    /// Step length in seconds (0 at the initial evaluation).
    pub(crate) dt_s: f64,
    /// Step length in hours (0 at the initial evaluation).
    pub(crate) dt_h: f64,
    /// Local milliseconds since midnight.
    pub(crate) local_ms: i64,
    /// Local hour of day, fractional.
    pub(crate) hour: f64,
    /// Cosine of the solar zenith angle (negative at night).
    pub(crate) cos_zenith: f64,
    /// Solar azimuth, degrees clockwise from north.
    pub(crate) sun_azimuth: f64,
    /// Clear-sky global horizontal irradiance, W/m².
    pub(crate) ghi_clear: f64,
    /// Cloud cover in front of the sun, 0 (clear) to 1 (overcast).
    pub(crate) cloud: f64,
    /// Rain intensity, mm/h.
    pub(crate) rain_mm_h: f64,
    /// Outdoor air temperature, °C.
    pub(crate) ambient_c: f64,
    /// Sea-water temperature, °C.
    pub(crate) sea_c: f64,
    /// Phase-to-neutral voltages at the site's connection point, V.
    pub(crate) volts: [f64; 3],
    /// Grid frequency, Hz.
    pub(crate) hz: f64,
}

impl Env {
    /// A first-order lag of `x` towards `target` with time constant `tau_s` (implicit Euler:
    /// stable for any step). At the initial evaluation the state starts at its target.
    pub(crate) fn lag(&self, x: f64, target: f64, tau_s: f64) -> f64 {
        if self.first {
            target
        } else {
            x + (target - x) * self.dt_s / (tau_s + self.dt_s)
        }
    }

    /// Smooth seeded noise in [-1, 1] for a device stream.
    pub(crate) fn wobble(&self, key: u64, period_s: f64) -> f64 {
        smooth(self.seed, key, self.t_ms, (period_s * 1000.0) as i64)
    }

    /// A smooth 0..1 window over local hours `[start, end)` with ramps of `ramp_h` hours
    /// centred on the edges; `start > end` wraps past midnight.
    pub(crate) fn window(&self, start: f64, end: f64, ramp_h: f64) -> f64 {
        daily_window(self.hour, start, end, ramp_h)
    }
}

/// A smooth 0..1 window over hours of the day, see [`Env::window`].
pub(crate) fn daily_window(hour: f64, start: f64, end: f64, ramp_h: f64) -> f64 {
    let r = ramp_h.max(1e-6);
    let end = if end < start { end + 24.0 } else { end };
    if end - start >= 24.0 {
        return 1.0;
    }
    let lin = |h: f64| {
        if h <= start - r / 2.0 || h >= end + r / 2.0 {
            0.0
        } else {
            smoothstep((h - start) / r + 0.5) * (1.0 - smoothstep((h - end) / r + 0.5))
        }
    };
    lin(hour).max(lin(hour + 24.0)).max(lin(hour - 24.0))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SkyKind {
    Clear,
    Partly,
    Overcast,
}

#[derive(Debug, Clone, Copy, Default)]
struct Shower {
    start_ms: i64,
    end_ms: i64,
    peak_mm_h: f64,
}

/// The weather of one local day.
#[derive(Debug, Clone, Copy)]
struct DaySky {
    kind: SkyKind,
    /// Partly cloudy days: how much of the noise lies above the cloud threshold.
    threshold: f64,
    showers: [Shower; 3],
    n_showers: usize,
}

fn day_sky(seed: u64, day: i64) -> DaySky {
    let u = |k: u64| unit(hash(seed, &[K_SKY, day as u64, k]));
    // June in Qingdao: about 9 rain days a month, many hazy or partly cloudy days.
    let kind = match u(0) {
        x if x < 0.30 => SkyKind::Clear,
        x if x < 0.75 => SkyKind::Partly,
        _ => SkyKind::Overcast,
    };
    let n_showers = match kind {
        SkyKind::Clear => 0,
        SkyKind::Partly => usize::from(u(1) < 0.15),
        SkyKind::Overcast => {
            if u(1) < 0.75 {
                1 + (u(2) * 3.0) as usize % 3
            } else {
                0
            }
        }
    };
    let mut showers = [Shower::default(); 3];
    for (i, s) in showers.iter_mut().enumerate().take(n_showers) {
        let k = 10 + 4 * i as u64;
        let hours = match kind {
            SkyKind::Overcast => 0.75 + 3.0 * u(k),
            _ => 0.3 + 0.7 * u(k),
        };
        let dur = (hours * 3_600_000.0) as i64;
        // Within 02:00..24:00 of the day so a shower never straddles the midnight blend.
        let start = 7_200_000 + ((DAY_MS - 7_200_000 - dur) as f64 * u(k + 1)) as i64;
        s.start_ms = start;
        s.end_ms = start + dur;
        s.peak_mm_h = match kind {
            SkyKind::Overcast => 1.5 + 7.0 * u(k + 2),
            _ => 4.0 + 10.0 * u(k + 2),
        };
    }
    DaySky {
        kind,
        threshold: -0.25 + 0.5 * u(3),
        showers,
        n_showers,
    }
}

impl DaySky {
    fn rain(&self, local_ms: i64) -> f64 {
        self.showers[..self.n_showers]
            .iter()
            .filter(|s| local_ms >= s.start_ms && local_ms < s.end_ms)
            .map(|s| {
                let f = (local_ms - s.start_ms) as f64 / (s.end_ms - s.start_ms) as f64;
                s.peak_mm_h * (PI * f).sin()
            })
            .sum()
    }

    fn cover(&self, seed: u64, t_ms: i64) -> f64 {
        match self.kind {
            SkyKind::Clear => 0.04 * (0.5 + 0.5 * smooth(seed, K_HAZE, t_ms, 3_600_000)),
            SkyKind::Partly => {
                let n = 0.65 * smooth(seed, K_CLOUD_SLOW, t_ms, 1_200_000)
                    + 0.35 * smooth(seed, K_CLOUD_FAST, t_ms, 240_000);
                smoothstep((n - self.threshold) / 0.25 + 0.5)
            }
            SkyKind::Overcast => 0.85 + 0.15 * smooth(seed, K_OVERCAST, t_ms, 1_800_000),
        }
    }
}

/// The weather's memory: the sky of the current and previous day, and the air temperature.
#[derive(Debug, Clone)]
pub(crate) struct Weather {
    days: [(i64, DaySky); 2],
    ambient_c: f64,
}

impl Weather {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            days: [(i64::MIN, day_sky(seed, 0)), (i64::MIN, day_sky(seed, 0))],
            ambient_c: JUNE_MEAN_C,
        }
    }

    fn sky(&mut self, seed: u64, day: i64) -> DaySky {
        if let Some((_, s)) = self.days.iter().find(|(d, _)| *d == day) {
            return *s;
        }
        let s = day_sky(seed, day);
        // Keep the newest two days.
        let slot = usize::from(self.days[0].0 > self.days[1].0);
        self.days[slot] = (day, s);
        s
    }
}

impl Site {
    /// The conditions at step `n`; `first` marks the initial evaluation.
    pub(crate) fn env(&self, weather: &mut Weather, n: u64, first: bool) -> Env {
        let t_ms = self
            .start_ms
            .saturating_add((n as i64).saturating_mul(self.step_ms));
        let offset_ms = jiff::Timestamp::from_millisecond(t_ms)
            .map(|ts| i64::from(self.tz.to_offset(ts).seconds()) * 1000)
            .unwrap_or(0);
        let local = t_ms.saturating_add(offset_ms);
        let day = local.div_euclid(DAY_MS);
        let local_ms = local.rem_euclid(DAY_MS);
        let hour = local_ms as f64 / 3_600_000.0;
        let (dt_s, dt_h) = if first {
            (0.0, 0.0)
        } else {
            let s = self.step_ms as f64 / 1000.0;
            (s, s / 3600.0)
        };
        let seed = self.seed;

        let (cos_zenith, sun_azimuth) = sun(self.latitude, self.longitude, t_ms);
        let ghi_clear = clear_sky_ghi(cos_zenith);

        // Sky: today's cover, blended from yesterday's over 00:00–02:00.
        let today = weather.sky(seed, day);
        let mut cloud = today.cover(seed, t_ms);
        if hour < 2.0 {
            let yesterday = weather.sky(seed, day - 1);
            let w = smoothstep(hour / 2.0);
            cloud = yesterday.cover(seed, t_ms) * (1.0 - w) + cloud * w;
        }
        let rain_mm_h = today.rain(local_ms);
        if rain_mm_h > 0.0 {
            cloud = cloud.max((0.9 + rain_mm_h / 10.0).min(1.0));
        }

        // Air: daily sine peaking near 15:00, damped by cloud, cooled by rain, lagged 30 min.
        let mean = JUNE_MEAN_C + 1.5 * smooth(seed, K_AIR_DAY, t_ms, DAY_MS);
        let swing = DAILY_SWING_K * (1.0 - 0.5 * cloud);
        let target = mean + swing * (2.0 * PI * (hour - 9.0) / 24.0).sin()
            - 1.5 * (rain_mm_h / 3.0).min(1.0)
            + 0.3 * smooth(seed, K_AIR_FAST, t_ms, 600_000);
        let mut env = Env {
            seed,
            n,
            t_ms,
            first,
            dt_s,
            dt_h,
            local_ms,
            hour,
            cos_zenith,
            sun_azimuth,
            ghi_clear,
            cloud,
            rain_mm_h,
            ambient_c: 0.0,
            sea_c: SEA_C + 0.5 * smooth(seed, K_SEA, t_ms, DAY_MS),
            volts: [0.0; 3],
            hz: 50.0
                + 0.02 * smooth(seed, K_HZ, t_ms, 120_000)
                + 0.006 * smooth(seed, K_HZ_FAST, t_ms, 7_000),
        };
        weather.ambient_c = env.lag(weather.ambient_c, target, 1800.0);
        env.ambient_c = weather.ambient_c;
        let site_v = 0.004 * smooth(seed, K_VOLT_SITE, t_ms, 1_800_000);
        for (i, v) in env.volts.iter_mut().enumerate() {
            *v = 230.0
                * (1.0
                    + site_v
                    + 0.006 * smooth(seed, K_VOLT[i], t_ms, 600_000)
                    + 0.002 * smooth(seed, K_VOLT_FAST[i], t_ms, 15_000));
        }
        env
    }
}

/// Cosine of the zenith angle and the azimuth (degrees from north) of the sun, from the `spa`
/// solar position algorithm.
fn sun(latitude: f64, longitude: f64, t_ms: i64) -> (f64, f64) {
    match spa::solar_position::<spa::StdFloatOps>(
        utc_at(t_ms.div_euclid(1000)),
        latitude,
        longitude,
    ) {
        Ok(p) => (p.zenith_angle.to_radians().cos(), p.azimuth),
        Err(_) => (-1.0, 0.0),
    }
}

/// `spa` takes a chrono `DateTime<Utc>`; chrono is not a direct dependency of this crate, so the
/// value is built generically as the Unix epoch (its `Default`) plus a `Duration`, the type being
/// inferred from `spa`'s signature. Times are clamped to ±30,000 years so the addition cannot
/// overflow.
fn utc_at<T>(unix_s: i64) -> T
where
    T: Default + std::ops::Add<Duration, Output = T> + std::ops::Sub<Duration, Output = T>,
{
    let s = unix_s.clamp(-1_000_000_000_000, 1_000_000_000_000);
    if s >= 0 {
        T::default() + Duration::from_secs(s.unsigned_abs())
    } else {
        T::default() - Duration::from_secs(s.unsigned_abs())
    }
}

/// Clear-sky global horizontal irradiance (Haurwitz): 1098 W/m² · cos z · e^(−0.057 / cos z);
/// the exponential is the air-mass attenuation that flattens the curve at low sun.
fn clear_sky_ghi(cos_zenith: f64) -> f64 {
    if cos_zenith <= 0.01 {
        0.0
    } else {
        1098.0 * cos_zenith * (-0.057 / cos_zenith).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_ramp_and_wrap() {
        assert!(daily_window(12.0, 6.0, 22.0, 1.0) > 0.999);
        assert!(daily_window(3.0, 6.0, 22.0, 1.0) < 0.001);
        assert!((daily_window(6.0, 6.0, 22.0, 1.0) - 0.5).abs() < 1e-9);
        assert!(daily_window(23.5, 22.0, 6.0, 1.0) > 0.999);
        assert!(daily_window(12.0, 22.0, 6.0, 1.0) < 0.001);
    }

    #[test]
    fn the_sun_is_high_at_noon_and_down_at_midnight_in_qingdao() {
        // 2026-06-21 12:00 and 00:00 at UTC+8.
        let noon = 1_782_014_400_000;
        let (cz, az) = sun(36.07, 120.38, noon);
        assert!(cz > 0.95, "cos z {cz}");
        assert!((150.0..215.0).contains(&az), "azimuth {az}");
        let (cz, _) = sun(36.07, 120.38, noon - 43_200_000);
        assert!(cz < -0.2, "cos z {cz}");
    }
}
