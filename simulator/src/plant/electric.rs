//! The electrical side shared by meters, inverters and chargers: three phases from a total
//! active and reactive power, and the registers of an energy meter.

use super::noise::{fnv, normal};
use super::site::Env;

/// AC quantities a device with an AC side reports.
pub(crate) const AC_METRICS: &[&str] = &[
    "electricity.active_power",
    "electricity.active_power_l1",
    "electricity.active_power_l2",
    "electricity.active_power_l3",
    "electricity.apparent_power",
    "electricity.reactive_power",
    "electricity.power_factor",
    "electricity.current",
    "electricity.current_l1",
    "electricity.current_l2",
    "electricity.current_l3",
    "electricity.voltage_l1",
    "electricity.voltage_l2",
    "electricity.voltage_l3",
    "electricity.voltage_l1_l2",
    "electricity.voltage_l2_l3",
    "electricity.voltage_l3_l1",
    "electricity.frequency",
];

/// What an energy meter adds to [`AC_METRICS`].
pub(crate) const METER_METRICS: &[&str] = &[
    "electricity.current_n",
    "electricity.import_energy",
    "electricity.export_energy",
    "electricity.total_energy",
    "electricity.reactive_import_energy",
    "electricity.reactive_export_energy",
    "electricity.power_demand",
    "electricity.power_demand_max",
    "electricity.voltage_thd_l1",
    "electricity.voltage_thd_l2",
    "electricity.voltage_thd_l3",
    "electricity.current_thd_l1",
    "electricity.current_thd_l2",
    "electricity.current_thd_l3",
];

/// A device's fixed electrical personality: phase imbalance and local voltage offset.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wiring {
    share: [f64; 3],
    volt_factor: [f64; 3],
}

impl Wiring {
    /// Seeded from the device key: loads differ by a few per cent between phases.
    pub(crate) fn new(seed: u64, key: u64, imbalance: f64) -> Self {
        let k = fnv("wiring");
        let d: [f64; 3] = std::array::from_fn(|i| {
            1.0 + imbalance * normal(seed, &[key, k, i as u64]).clamp(-2.0, 2.0)
        });
        let sum: f64 = d.iter().sum();
        Self {
            share: d.map(|x| x / sum),
            volt_factor: std::array::from_fn(|i| {
                1.0 + 0.003 * normal(seed, &[key, k, 10 + i as u64]).clamp(-2.0, 2.0)
            }),
        }
    }

    /// The three phases at this device for a total active and reactive power.
    pub(crate) fn ac(&self, env: &Env, p_kw: f64, q_kvar: f64) -> Ac {
        Ac {
            p_kw,
            q_kvar,
            share: self.share,
            volts: std::array::from_fn(|i| env.volts[i] * self.volt_factor[i]),
            hz: env.hz,
        }
    }
}

/// Instantaneous AC values of a device.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ac {
    pub(crate) p_kw: f64,
    pub(crate) q_kvar: f64,
    share: [f64; 3],
    volts: [f64; 3],
    hz: f64,
}

impl Ac {
    fn current(&self, i: usize) -> f64 {
        let s = self.p_kw.hypot(self.q_kvar) * self.share[i];
        if self.volts[i] > 1.0 {
            s * 1000.0 / self.volts[i]
        } else {
            0.0
        }
    }

    fn line(&self, a: usize, b: usize) -> f64 {
        let (x, y) = (self.volts[a], self.volts[b]);
        (x * x + y * y + x * y).sqrt()
    }

    /// The value of one of [`AC_METRICS`] (and the neutral current).
    pub(crate) fn value(&self, metric: &str) -> Option<f64> {
        let s = self.p_kw.hypot(self.q_kvar);
        Some(match metric {
            "electricity.active_power" => self.p_kw,
            "electricity.active_power_l1" => self.p_kw * self.share[0],
            "electricity.active_power_l2" => self.p_kw * self.share[1],
            "electricity.active_power_l3" => self.p_kw * self.share[2],
            "electricity.apparent_power" => s,
            "electricity.reactive_power" => self.q_kvar,
            "electricity.power_factor" => {
                if s < 1e-6 {
                    1.0
                } else {
                    self.p_kw / s
                }
            }
            "electricity.current" => self.current(0) + self.current(1) + self.current(2),
            "electricity.current_l1" => self.current(0),
            "electricity.current_l2" => self.current(1),
            "electricity.current_l3" => self.current(2),
            "electricity.current_n" => {
                let (a, b, c) = (self.current(0), self.current(1), self.current(2));
                (a * a + b * b + c * c - a * b - b * c - c * a)
                    .max(0.0)
                    .sqrt()
            }
            "electricity.voltage_l1" => self.volts[0],
            "electricity.voltage_l2" => self.volts[1],
            "electricity.voltage_l3" => self.volts[2],
            "electricity.voltage_l1_l2" => self.line(0, 1),
            "electricity.voltage_l2_l3" => self.line(1, 2),
            "electricity.voltage_l3_l1" => self.line(2, 0),
            "electricity.frequency" => self.hz,
            _ => return None,
        })
    }
}

/// The totalising registers of an energy meter.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Registers {
    pub(crate) import_kwh: f64,
    pub(crate) export_kwh: f64,
    q_import: f64,
    q_export: f64,
    demand: f64,
    demand_max: f64,
}

impl Registers {
    /// Starts the totals where a meter of this age would be.
    pub(crate) fn starting_at(import_kwh: f64, export_kwh: f64) -> Self {
        Self {
            import_kwh,
            export_kwh,
            q_import: import_kwh * 0.3,
            q_export: export_kwh * 0.02,
            ..Self::default()
        }
    }

    /// Integrates one step of active power `p_kw` (positive = import) and reactive `q_kvar`.
    pub(crate) fn step(&mut self, env: &Env, p_kw: f64, q_kvar: f64) {
        self.import_kwh += p_kw.max(0.0) * env.dt_h;
        self.export_kwh += (-p_kw).max(0.0) * env.dt_h;
        self.q_import += q_kvar.max(0.0) * env.dt_h;
        self.q_export += (-q_kvar).max(0.0) * env.dt_h;
        // Thermal (exponential) demand with a 15-minute time constant, as many meters show it.
        self.demand = env.lag(self.demand, p_kw, 900.0);
        self.demand_max = self.demand_max.max(self.demand);
    }

    /// The value of a register metric.
    pub(crate) fn value(&self, metric: &str) -> Option<f64> {
        Some(match metric {
            "electricity.import_energy" => self.import_kwh,
            "electricity.export_energy" => self.export_kwh,
            "electricity.total_energy" => self.import_kwh + self.export_kwh,
            "electricity.reactive_import_energy" => self.q_import,
            "electricity.reactive_export_energy" => self.q_export,
            "electricity.power_demand" => self.demand,
            "electricity.power_demand_max" => self.demand_max,
            _ => return None,
        })
    }
}

/// Harmonic distortion a meter shows: a few per cent on voltage, more on current at low load.
pub(crate) fn thd(env: &Env, key: u64, metric: &str, load_fraction: f64) -> Option<f64> {
    let (phase, voltage) = match metric {
        "electricity.voltage_thd_l1" => (0, true),
        "electricity.voltage_thd_l2" => (1, true),
        "electricity.voltage_thd_l3" => (2, true),
        "electricity.current_thd_l1" => (0, false),
        "electricity.current_thd_l2" => (1, false),
        "electricity.current_thd_l3" => (2, false),
        _ => return None,
    };
    let w = env.wobble(key ^ fnv(metric), 900.0);
    Some(if voltage {
        1.8 + 0.1 * phase as f64 + 0.4 * w
    } else {
        3.5 + 6.0 * (1.0 - load_fraction.clamp(0.0, 1.0)) + 0.8 * w
    })
}
