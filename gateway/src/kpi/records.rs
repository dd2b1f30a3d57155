//! From a closed window's point sums to the site's KPI records: each role's sources are added
//! up, the sums handed to the model's KPI functions (`fivezero_model::kpi`), and the points'
//! flags and the factors used written into the records.
//!
//! - A role whose every source is silent is missing (its KPIs say `insufficient_data`); a role
//!   with some silent sources keeps the sum of the others with coverage 0, so the value is
//!   shown but never judged against a tier.
//! - Heat left at the stack is the flue gas's sensible heat above 25 °C: volume (Nm³) × c_p
//!   (`kpi.factors.flue_gas_cp`) × (mean exit temperature − 25 °C). Using the window's mean
//!   temperature with the window's volume is exact when either is steady over the window; the
//!   latent heat of condensing vapour is left out (records are flagged `sensible_heat_only`).
//! - The exit-temperature condition of zero waste heat (tier Z) counts running hours: an hour
//!   is running when the boiler's running share (role `boiler_running`, else the flue-gas
//!   flow) is above zero, and within the limit when its mean exit temperature is at most
//!   40 °C. A 15-minute window judges itself the same way; a day uses the hours it holds
//!   ([`HourMarks`]).

use std::collections::BTreeMap;

use fivezero_model::kpi::{
    self, CompressedAirSums, EnergySums, Factors, Fuel, HeatSums, SteamSums, Sum, WasteSums,
    WaterSums,
};
use fivezero_model::wire::{Factor, KpiRecord, Period};
use serde::{Deserialize, Serialize};

use super::ClosedWindow;
use crate::config::KpiConfig;
use crate::site::{Group, Provenanced, Role};

/// The exit temperature the tier-Z condition allows, °C.
pub const EXIT_LIMIT_C: f64 = 40.0;
/// Reference temperature of the heat balance, °C.
pub const T_REF_C: f64 = 25.0;

/// One closed hour of the heat-recovery condition, kept until its day closes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HourMark {
    /// Start of the hour, UTC milliseconds.
    pub start: i64,
    /// The boiler ran in it.
    pub running: bool,
    /// Its mean exit temperature was within the limit.
    pub within: bool,
}

/// The closed hours not yet used by a day window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HourMarks(pub Vec<HourMark>);

impl HourMarks {
    /// Share of running hours within the limit in `[start, end)`; `None` with no running hour.
    fn share(&self, start: i64, end: i64) -> Option<f64> {
        let hours: Vec<&HourMark> = self
            .0
            .iter()
            .filter(|h| h.running && h.start >= start && h.start < end)
            .collect();
        if hours.is_empty() {
            return None;
        }
        let within = hours.iter().filter(|h| h.within).count();
        Some(within as f64 / hours.len() as f64)
    }

    /// Forgets hours before `start`.
    fn prune(&mut self, start: i64) {
        self.0.retain(|h| h.start >= start);
    }
}

/// The site's records for one closed window; `marks` collects the hours for the day windows
/// (feed windows in order of their end, hours before the day that ends with them).
#[must_use]
pub fn records(window: &ClosedWindow, kpi: &KpiConfig, marks: &mut HourMarks) -> Vec<KpiRecord> {
    let sum = |role: Role| role_sum(window, kpi, role);
    let w = &window.window;
    let mut out = Vec::new();
    for group in &kpi.groups {
        let mut records = match group {
            Group::ZeroWaste => kpi::zero_waste(
                w,
                &WasteSums {
                    received: sum(Role::WasteReceived),
                    stock_drawn: sum(Role::StockDrawn),
                    material: sum(Role::MaterialRecovered),
                    energy: sum(Role::EnergyRecovery),
                    landfill: sum(Role::Landfilled),
                    stock_change: sum(Role::StockChange),
                },
            ),
            Group::ZeroWastewater => kpi::zero_wastewater(
                w,
                &WaterSums {
                    fresh: sum(Role::FreshWater),
                    reused: sum(Role::ReusedWater),
                    discharged: sum(Role::DischargedWater),
                    rain_collected: sum(Role::RainCollected),
                    rain_used: sum(Role::RainUsed),
                },
            ),
            Group::ZeroExhaust => kpi::zero_exhaust(
                w,
                &SteamSums {
                    generated: sum(Role::SteamGenerated),
                    used: sum(Role::SteamUsed),
                    vented: sum(Role::SteamVented),
                },
            ),
            Group::ZeroWasteHeat => heat(window, kpi, marks),
            Group::ZeroEnergy => energy(window, kpi),
            Group::CompressedAir => vec![kpi::compressed_air(
                w,
                &CompressedAirSums {
                    energy: sum(Role::CompressorEnergy),
                    delivered: sum(Role::AirDelivered),
                },
            )],
        };
        let flags = group_flags(window, kpi, *group);
        for r in &mut records {
            for f in &flags {
                if !r.flags.contains(f) {
                    r.flags.push(f.clone());
                }
            }
        }
        out.extend(records);
    }
    out
}

/// The sum of a role's sources; see the module doc for silent sources.
fn role_sum(window: &ClosedWindow, kpi: &KpiConfig, role: Role) -> Option<Sum> {
    let sources = kpi.inputs.get(&role)?;
    let parts: Vec<Option<Sum>> = sources
        .iter()
        .map(|s| {
            window
                .point(&s.device, s.metric)
                .and_then(super::PointSum::input)
        })
        .collect();
    let present = kpi::total(&parts)?;
    if parts.iter().any(Option::is_none) {
        Some(Sum {
            coverage: 0.0,
            estimated: true,
            ..present
        })
    } else {
        Some(present)
    }
}

/// `device metric: flag` for every flag of a source of the group's roles.
fn group_flags(window: &ClosedWindow, kpi: &KpiConfig, group: Group) -> Vec<String> {
    let mut out = Vec::new();
    for (_, sources) in kpi.inputs.iter().filter(|(r, _)| r.group() == group) {
        for s in sources {
            if let Some(p) = window.point(&s.device, s.metric) {
                for f in p.flags() {
                    let flag = format!("{} {}: {f}", s.device, s.metric);
                    if !out.contains(&flag) {
                        out.push(flag);
                    }
                }
            }
        }
    }
    out
}

fn factor<'a>(kpi: &'a KpiConfig, name: &str) -> Option<&'a Provenanced> {
    kpi.factors.get(name)
}

fn heat(window: &ClosedWindow, kpi: &KpiConfig, marks: &mut HourMarks) -> Vec<KpiRecord> {
    let w = &window.window;
    let sum = |role: Role| role_sum(window, kpi, role);
    let (flow, temperature) = (sum(Role::FlueGasFlow), sum(Role::FlueGasExitTemperature));
    let cp = factor(kpi, "flue_gas_cp");
    let stack_loss = match (flow, temperature, cp) {
        (Some(v), Some(t), Some(cp)) => Some(Sum {
            // Nm³ × kJ/(Nm³·K) × K = kJ; / 3600 = kWh.
            value: v.value * cp.value * (t.value - T_REF_C).max(0.0) / 3600.0,
            coverage: v.coverage.min(t.coverage),
            estimated: v.estimated || t.estimated,
            fault: v.fault || t.fault,
        }),
        _ => None,
    };
    let running = match sum(Role::BoilerRunning) {
        Some(r) => Some(r.value > 0.0),
        None => flow.map(|f| f.value > 0.0),
    };
    let within = temperature.map(|t| t.value <= EXIT_LIMIT_C);
    let share = match w.period {
        Period::Day => {
            let s = marks.share(w.start, w.end);
            marks.prune(w.end);
            s
        }
        Period::Hour | Period::FifteenMinutes => {
            if let (Period::Hour, Some(running), Some(within)) = (w.period, running, within) {
                marks.0.push(HourMark {
                    start: w.start,
                    running,
                    within,
                });
            }
            match (running, within) {
                (Some(true), Some(within)) => Some(if within { 1.0 } else { 0.0 }),
                _ => None,
            }
        }
    };
    let share = share.map(|v| Sum {
        value: v,
        ..temperature.unwrap_or(Sum::exact(v))
    });
    let mut records = kpi::zero_waste_heat(
        w,
        &HeatSums {
            recovered: sum(Role::HeatRecovered),
            stack_loss,
            exit_temperature: temperature,
            exit_within_limit_share: share,
        },
    );
    for r in &mut records {
        if r.kpi == "zero_waste_heat.recovery_rate" {
            if let Some(cp) = cp {
                r.factors.push(as_factor("flue_gas_cp", cp));
            }
            r.flags.push("sensible_heat_only".to_owned());
        }
    }
    records
}

fn energy(window: &ClosedWindow, kpi: &KpiConfig) -> Vec<KpiRecord> {
    let w = &window.window;
    let sum = |role: Role| role_sum(window, kpi, role);
    let factors = model_factors(kpi);
    let fuels: Vec<Fuel> = FUELS
        .iter()
        .filter(|f| kpi.inputs.contains_key(&f.role))
        .filter_map(|f| {
            let ncv = factor(kpi, f.ncv)?.coefficient();
            let co2 = factor(kpi, f.co2)?.coefficient();
            Some(Fuel {
                name: f.name,
                quantity: sum(f.role),
                ncv_mj: ncv,
                co2_kg_per_tj: co2,
                biogenic: f.biogenic,
            })
        })
        .collect();
    let mut records = kpi::energy_and_carbon(
        w,
        &EnergySums {
            renewable_generated: sum(Role::RenewableGeneration),
            grid_import: sum(Role::GridImport),
            grid_export: sum(Role::GridExport),
            green_purchased: None,
        },
        &fuels,
        &factors,
    );
    for (role, id) in [
        (Role::EvCharging, "zero_energy.ev_charging_kwh"),
        (Role::SiteConsumption, "zero_energy.site_consumption_kwh"),
    ] {
        if kpi.inputs.contains_key(&role) {
            records.push(kpi::reported(w, id, "kWh", sum(role)));
        }
    }
    records
}

/// A fuel role and its factors.
struct FuelRole {
    role: Role,
    name: &'static str,
    ncv: &'static str,
    co2: &'static str,
    biogenic: bool,
}

const FUELS: &[FuelRole] = &[
    FuelRole {
        role: Role::FuelCoal,
        name: "coal",
        ncv: "coal_ncv",
        co2: "coal_co2",
        biogenic: false,
    },
    FuelRole {
        role: Role::FuelNaturalGas,
        name: "natural_gas",
        ncv: "natural_gas_ncv",
        co2: "natural_gas_co2",
        biogenic: false,
    },
    FuelRole {
        role: Role::FuelDiesel,
        name: "diesel",
        ncv: "diesel_ncv",
        co2: "diesel_co2",
        biogenic: false,
    },
    FuelRole {
        role: Role::FuelBiomass,
        name: "biomass",
        ncv: "biomass_ncv",
        co2: "biomass_co2",
        biogenic: true,
    },
];

/// The model's factors from the configured ones (every one has a default or is required).
#[must_use]
pub fn model_factors(kpi: &KpiConfig) -> Factors {
    let defaults = Factors::default();
    let get = |name: &str, fallback: &kpi::Coefficient| {
        factor(kpi, name).map_or_else(|| fallback.clone(), Provenanced::coefficient)
    };
    Factors {
        grid: get("grid", &defaults.grid),
        grid_residual: factor(kpi, "grid_residual").map(Provenanced::coefficient),
        electricity_kgce_per_kwh: get(
            "electricity_coal_equivalent",
            &defaults.electricity_kgce_per_kwh,
        ),
        heat_kgce_per_mj: get("heat_coal_equivalent", &defaults.heat_kgce_per_mj),
    }
}

fn as_factor(name: &str, p: &Provenanced) -> Factor {
    let c = p.coefficient();
    Factor {
        name: name.to_owned(),
        value: c.value,
        unit: c.unit.to_owned(),
        source: c.source,
    }
}

/// Records by KPI id, for tests and logs.
#[must_use]
pub fn by_id(records: &[KpiRecord]) -> BTreeMap<&str, &KpiRecord> {
    records.iter().map(|r| (r.kpi.as_str(), r)).collect()
}
