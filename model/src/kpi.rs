//! The five-zero and carbon KPIs as pure functions of window sums.
//!
//! The gateway's accumulators turn readings into window sums per input role (tonnes received,
//! kWh imported, m³ reused …); the functions here turn those sums into [`KpiRecord`]s. The
//! cloud sink recomputes any range (month, rolling year) by adding the stored numerators and
//! denominators and calling the same functions, never by averaging ratios.
//!
//! Rules every KPI follows (they are the contract a plant manager can quote):
//! - A required input that is missing (no device feeds its role, or no sample in the window)
//!   makes the value missing, never zero: quality [`KpiQuality::InsufficientData`].
//! - A denominator below the KPI's epsilon gives no value: [`KpiQuality::NoDenominator`]
//!   (self-sufficiency at night is not 0 %).
//! - Coverage is the smallest coverage of the inputs. Below [`MIN_COVERAGE`] the value is
//!   still computed but every tier says [`TierOutcome::InsufficientData`]; below 1, or when an
//!   input was bridged over a gap, the quality is [`KpiQuality::Estimated`].
//! - An input flagged as faulty (meter reset, rejected spike) gives
//!   [`KpiQuality::MeterFault`] and insufficient tiers.
//! - Ratios are fractions with unit `"1"` (0.99, not 99 %). Tier thresholds are the values
//!   of the national zero-carbon-park guide (tier A, NDRC/MIIT/NEA 2025) and of the reference
//!   park's five-zero claim (tier Z, Qingdao Green Sail).
//! - Every coefficient used is recorded in the record's `factors` with its source.
//!
//! Definitions follow the project's KPI reference: GB/T 2589-2020 standard-coal coefficients,
//! IPCC 2006 combustion factors, MEE/NBS grid factors; see the doc of each function.

use crate::wire::{Factor, KpiQuality, KpiRecord, TierOutcome, TierStatus, Window};

/// Version of the formulas below; raised whenever a definition changes.
pub const FORMULA_VERSION: u32 = 1;

/// Coverage from which tiers are judged.
pub const MIN_COVERAGE: f64 = 0.95;

/// The window sum of one input role, as the accumulators deliver it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sum {
    /// The sum (or, for temperatures, the time-weighted mean) in the role's unit.
    pub value: f64,
    /// Share of expected samples present, `0..=1`.
    pub coverage: f64,
    /// A gap was bridged (a counter's delta spread over a gap), so the sum is an estimate.
    pub estimated: bool,
    /// A meter fault was detected in the window (reset, rejected spike).
    pub fault: bool,
}

impl Sum {
    /// A complete, plausible sum.
    #[must_use]
    pub const fn exact(value: f64) -> Self {
        Self {
            value,
            coverage: 1.0,
            estimated: false,
            fault: false,
        }
    }

    /// The same sum with a coverage.
    #[must_use]
    pub const fn with_coverage(mut self, coverage: f64) -> Self {
        self.coverage = coverage;
        self
    }

    /// Adds another device's sum for the same role: values add, coverage is the worse one.
    #[must_use]
    pub fn plus(self, other: Self) -> Self {
        Self {
            value: self.value + other.value,
            coverage: self.coverage.min(other.coverage),
            estimated: self.estimated || other.estimated,
            fault: self.fault || other.fault,
        }
    }

    fn scaled(self, k: f64) -> Self {
        Self {
            value: self.value * k,
            ..self
        }
    }
}

/// Adds optional sums of one role; `None` only when every part is missing.
#[must_use]
pub fn total(parts: &[Option<Sum>]) -> Option<Sum> {
    parts.iter().flatten().copied().reduce(Sum::plus)
}

/// A coefficient with its provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct Coefficient {
    /// The value.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
    /// Publisher, document and year of data.
    pub source: String,
}

impl Coefficient {
    fn factor(&self, name: &str) -> Factor {
        Factor {
            name: name.to_owned(),
            value: self.value,
            unit: self.unit.to_owned(),
            source: self.source.clone(),
        }
    }
}

/// The conversion and emission factors KPIs use; configuration, with provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct Factors {
    /// Location-based grid factor, kgCO2/kWh.
    pub grid: Coefficient,
    /// Residual-mix (market-based) grid factor, kgCO2/kWh, when configured.
    pub grid_residual: Option<Coefficient>,
    /// Standard coal equivalent of electricity, kgce/kWh (GB/T 2589-2020 equivalent value).
    pub electricity_kgce_per_kwh: Coefficient,
    /// Standard coal equivalent of heat, kgce/MJ (GB/T 2589-2020).
    pub heat_kgce_per_mj: Coefficient,
}

impl Default for Factors {
    /// The defaults for a site in China: the latest MEE/NBS national average grid factor
    /// (2023 data) and the GB/T 2589-2020 coefficients.
    fn default() -> Self {
        Self {
            grid: Coefficient {
                value: 0.5306,
                unit: "kgCO2/kWh",
                source: "MEE/NBS national average grid emission factor, 2023 data".into(),
            },
            grid_residual: None,
            electricity_kgce_per_kwh: Coefficient {
                value: 0.1229,
                unit: "kgce/kWh",
                source: "GB/T 2589-2020, electricity equivalent value".into(),
            },
            heat_kgce_per_mj: Coefficient {
                value: 0.034_12,
                unit: "kgce/MJ",
                source: "GB/T 2589-2020, heat".into(),
            },
        }
    }
}

/// A fuel burned on site, for scope 1 and fossil energy.
#[derive(Debug, Clone, PartialEq)]
pub struct Fuel {
    /// Fuel name for the record (`diesel`, `natural_gas`).
    pub name: &'static str,
    /// Quantity burned in the window, in the unit the NCV is given per (kg, Nm³ …).
    pub quantity: Option<Sum>,
    /// Net calorific value, MJ per unit of quantity.
    pub ncv_mj: Coefficient,
    /// CO2 factor on NCV, kgCO2/TJ (IPCC 2006 Vol. 2 Table 1.4).
    pub co2_kg_per_tj: Coefficient,
    /// Biogenic fuels are a memo item: not in scope 1 and not fossil.
    pub biogenic: bool,
}

/// What a tier demands of one condition.
#[derive(Debug, Clone, Copy)]
enum Rule {
    AtLeast(f64),
    AtMost(f64),
}

/// A condition of a tier: a value (if known) and its rule.
type Condition = (Option<f64>, Rule);

/// Combines what is known about the inputs of one record.
#[derive(Debug, Clone, Copy)]
struct Inputs {
    all_present: bool,
    coverage: f64,
    estimated: bool,
    fault: bool,
}

fn inputs(sums: &[Option<Sum>]) -> Inputs {
    let present: Vec<Sum> = sums.iter().flatten().copied().collect();
    Inputs {
        all_present: present.len() == sums.len(),
        coverage: present.iter().map(|s| s.coverage.clamp(0.0, 1.0)).fold(
            if present.len() == sums.len() {
                1.0
            } else {
                0.0
            },
            f64::min,
        ),
        estimated: present.iter().any(|s| s.estimated),
        fault: present.iter().any(|s| s.fault),
    }
}

/// Builds records for one window.
#[derive(Debug)]
struct Builder<'a> {
    window: &'a Window,
}

impl Builder<'_> {
    #[allow(clippy::too_many_arguments)] // Each argument is one field of the record.
    fn record(
        &self,
        kpi: &str,
        unit: &str,
        numerator: Option<f64>,
        denominator: Option<f64>,
        value: Option<f64>,
        inputs: Inputs,
        no_denominator: bool,
        tiers: &[(&str, Vec<Condition>)],
        factors: Vec<Factor>,
        flags: Vec<String>,
    ) -> KpiRecord {
        let quality = if !inputs.all_present {
            KpiQuality::InsufficientData
        } else if no_denominator {
            KpiQuality::NoDenominator
        } else if inputs.fault {
            KpiQuality::MeterFault
        } else if inputs.estimated || inputs.coverage < 1.0 {
            KpiQuality::Estimated
        } else {
            KpiQuality::Ok
        };
        let judgeable = matches!(quality, KpiQuality::Ok | KpiQuality::Estimated)
            && inputs.coverage >= MIN_COVERAGE;
        let value = if inputs.all_present && !no_denominator {
            value
        } else {
            None
        };
        let tiers = tiers
            .iter()
            .map(|(tier, conditions)| TierStatus {
                tier: (*tier).to_owned(),
                status: if judgeable {
                    judge(conditions)
                } else {
                    TierOutcome::InsufficientData
                },
            })
            .collect();
        KpiRecord {
            kpi: kpi.to_owned(),
            window: self.window.clone(),
            numerator,
            denominator,
            value,
            unit: unit.to_owned(),
            coverage: inputs.coverage,
            quality,
            tiers,
            factors,
            formula_version: FORMULA_VERSION,
            flags,
        }
    }

    /// A ratio `numerator / denominator` with the usual rules.
    fn ratio(
        &self,
        kpi: &str,
        numerator: Option<Sum>,
        denominator: Option<Sum>,
        epsilon: f64,
        tiers: impl FnOnce(Option<f64>) -> Vec<(&'static str, Vec<Condition>)>,
    ) -> KpiRecord {
        let inputs = inputs(&[numerator, denominator]);
        let (num, den) = (numerator.map(|s| s.value), denominator.map(|s| s.value));
        let no_den = inputs.all_present && den.is_none_or(|d| d.abs() < epsilon);
        let value = match (num, den) {
            (Some(n), Some(d)) if d.abs() >= epsilon => Some(n / d),
            _ => None,
        };
        let tiers = tiers(value);
        self.record(
            kpi,
            "1",
            num,
            den,
            value,
            inputs,
            no_den,
            &tiers,
            Vec::new(),
            Vec::new(),
        )
    }

    /// A plain quantity (a sum, reported with its tiers if any).
    fn quantity(
        &self,
        kpi: &str,
        unit: &str,
        parts: &[Option<Sum>],
        value: Option<f64>,
        tiers: &[(&str, Vec<Condition>)],
        factors: Vec<Factor>,
    ) -> KpiRecord {
        let inputs = inputs(parts);
        self.record(
            kpi,
            unit,
            value,
            None,
            value,
            inputs,
            false,
            tiers,
            factors,
            Vec::new(),
        )
    }
}

fn judge(conditions: &[Condition]) -> TierOutcome {
    let mut outcome = TierOutcome::Achieved;
    for (value, rule) in conditions {
        let ok = match (value, rule) {
            (None, _) => return TierOutcome::InsufficientData,
            (Some(v), Rule::AtLeast(t)) => *v >= *t - 1e-12,
            (Some(v), Rule::AtMost(t)) => *v <= *t + 1e-12,
        };
        if !ok {
            outcome = TierOutcome::NotAchieved;
        }
    }
    outcome
}

/// Window sums for zero waste, in tonnes.
#[derive(Debug, Clone, Copy, Default)]
pub struct WasteSums {
    /// Waste received into the plant.
    pub received: Option<Sum>,
    /// Material drawn from stock into processing.
    pub stock_drawn: Option<Sum>,
    /// Recovered as material (products).
    pub material: Option<Sum>,
    /// Sent to energy recovery (boiler fuel).
    pub energy: Option<Sum>,
    /// Sent to landfill or disposal.
    pub landfill: Option<Sum>,
    /// Change of stock in the window (positive = stock grew).
    pub stock_change: Option<Sum>,
}

/// Zero waste (Z1): total, material and energy recovery rates, landfill share and mass-balance
/// closure, each over (received + stock drawn).
///
/// Tier A: total recovery ≥ 80 %. Tier Z: total ≥ 98 % AND landfill ≤ 1 % AND closure ≤ 2 %.
/// Stock drawn and stock change count as zero when no device feeds them.
#[must_use]
pub fn zero_waste(window: &Window, s: &WasteSums) -> Vec<KpiRecord> {
    let b = Builder { window };
    let zero = Some(Sum::exact(0.0));
    let base = match (s.received, s.stock_drawn.or(zero)) {
        (Some(r), Some(d)) => Some(r.plus(d)),
        _ => None,
    };
    let recovered = match (s.material, s.energy) {
        (Some(m), Some(e)) => Some(m.plus(e)),
        _ => None,
    };
    let ratio = |n: Option<Sum>, d: Option<Sum>| match (n, d) {
        (Some(n), Some(d)) if d.value.abs() >= 1e-3 => Some(n.value / d.value),
        _ => None,
    };
    let landfill = ratio(s.landfill, base);
    let closure = match (s.received, s.material, s.energy, s.landfill) {
        (Some(r), Some(m), Some(e), Some(l)) if r.value.abs() >= 1e-3 => {
            let stock = s.stock_change.map_or(0.0, |x| x.value);
            Some((r.value - (m.value + e.value + l.value + stock)).abs() / r.value)
        }
        _ => None,
    };
    let total = ratio(recovered, base);
    let z = vec![
        (total, Rule::AtLeast(0.98)),
        (landfill, Rule::AtMost(0.01)),
        (closure, Rule::AtMost(0.02)),
    ];
    let mut closure_record = b.record(
        "zero_waste.mass_balance_closure",
        "1",
        None,
        s.received.map(|r| r.value),
        closure,
        inputs(&[s.received, s.material, s.energy, s.landfill]),
        s.received.is_some_and(|r| r.value.abs() < 1e-3),
        &[("Z", vec![(closure, Rule::AtMost(0.02))])],
        Vec::new(),
        Vec::new(),
    );
    closure_record.numerator = closure.map(|c| c * s.received.map_or(0.0, |r| r.value));
    vec![
        b.ratio(
            "zero_waste.total_recovery_rate",
            recovered,
            base,
            1e-3,
            |v| vec![("A", vec![(v, Rule::AtLeast(0.80))]), ("Z", z.clone())],
        ),
        b.ratio(
            "zero_waste.material_recovery_rate",
            s.material,
            base,
            1e-3,
            |_| Vec::new(),
        ),
        b.ratio(
            "zero_waste.energy_recovery_share",
            s.energy,
            base,
            1e-3,
            |_| Vec::new(),
        ),
        b.ratio("zero_waste.landfill_share", s.landfill, base, 1e-3, |v| {
            vec![("Z", vec![(v, Rule::AtMost(0.01))])]
        }),
        closure_record,
    ]
}

/// Window sums for zero wastewater, in m³.
#[derive(Debug, Clone, Copy, Default)]
pub struct WaterSums {
    /// Fresh water taken in.
    pub fresh: Option<Sum>,
    /// Treated water reused.
    pub reused: Option<Sum>,
    /// Water discharged off site.
    pub discharged: Option<Sum>,
    /// Rainwater collected.
    pub rain_collected: Option<Sum>,
    /// Rainwater used.
    pub rain_used: Option<Sum>,
}

/// Zero wastewater (Z2): reuse rate = reused / (reused + fresh), discharged volume, rainwater
/// utilisation = used / collected.
///
/// Tier A: reuse ≥ 80 %. Tier Z: reuse ≥ 90 % AND discharge ≤ 0.5 % of (reused + fresh)
/// (at least the meter's resolution, taken as 0.1 m³) AND rain ≥ 95 % (judged only when it
/// rained: a dry window has no rain denominator).
#[must_use]
pub fn zero_wastewater(window: &Window, s: &WaterSums) -> Vec<KpiRecord> {
    let b = Builder { window };
    let total = match (s.reused, s.fresh) {
        (Some(r), Some(f)) => Some(r.plus(f)),
        _ => None,
    };
    let reuse = b.ratio("zero_wastewater.reuse_rate", s.reused, total, 0.1, |_| {
        Vec::new()
    });
    let allowed = total.map(|t| (t.value * 0.005).max(0.1));
    let discharge_ok = match (s.discharged, allowed) {
        (Some(d), Some(a)) => Some(d.value - a),
        _ => None,
    };
    let rain = b.ratio(
        "zero_wastewater.rain_utilisation",
        s.rain_used,
        s.rain_collected,
        0.1,
        |v| vec![("Z", vec![(v, Rule::AtLeast(0.95))])],
    );
    let rain_condition = match rain.quality {
        KpiQuality::NoDenominator => Some(1.0),
        _ => rain.value,
    };
    let reuse_value = reuse.value;
    let mut reuse = reuse;
    reuse.tiers = b
        .ratio("zero_wastewater.reuse_rate", s.reused, total, 0.1, |v| {
            vec![
                ("A", vec![(v, Rule::AtLeast(0.80))]),
                (
                    "Z",
                    vec![
                        (reuse_value, Rule::AtLeast(0.90)),
                        (discharge_ok, Rule::AtMost(0.0)),
                        (rain_condition, Rule::AtLeast(0.95)),
                    ],
                ),
            ]
        })
        .tiers;
    vec![
        reuse,
        b.quantity(
            "zero_wastewater.discharged_m3",
            "m³",
            &[s.discharged],
            s.discharged.map(|d| d.value),
            &[("Z", vec![(discharge_ok, Rule::AtMost(0.0))])],
            Vec::new(),
        ),
        rain,
    ]
}

/// Window sums for the steam cascade, in tonnes of steam.
#[derive(Debug, Clone, Copy, Default)]
pub struct SteamSums {
    /// Steam generated.
    pub generated: Option<Sum>,
    /// Steam put to use, summed over every cascade stage.
    pub used: Option<Sum>,
    /// Steam vented.
    pub vented: Option<Sum>,
}

/// Zero exhaust gas (Z3): steam cascade utilisation = used / generated and vented fraction =
/// vented / generated, on a mass basis (stages at similar pressure; an enthalpy basis needs
/// pressure and temperature per stage and is flagged when added). Stack pollutants are
/// published as measured and never called zero.
///
/// Tier Z: utilisation ≥ 95 % AND vented ≤ 2 %.
#[must_use]
pub fn zero_exhaust(window: &Window, s: &SteamSums) -> Vec<KpiRecord> {
    let b = Builder { window };
    let ratio = |n: Option<Sum>| match (n, s.generated) {
        (Some(n), Some(g)) if g.value.abs() >= 0.01 => Some(n.value / g.value),
        _ => None,
    };
    let z = vec![
        (ratio(s.used), Rule::AtLeast(0.95)),
        (ratio(s.vented), Rule::AtMost(0.02)),
    ];
    let mut records = vec![
        b.ratio(
            "zero_exhaust.steam_cascade_utilisation",
            s.used,
            s.generated,
            0.01,
            |_| vec![("Z", z.clone())],
        ),
        b.ratio(
            "zero_exhaust.vent_fraction",
            s.vented,
            s.generated,
            0.01,
            |v| vec![("Z", vec![(v, Rule::AtMost(0.02))])],
        ),
    ];
    for r in &mut records {
        r.flags.push("mass_basis".to_owned());
    }
    records
}

/// Window figures for zero waste heat.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeatSums {
    /// Heat recovered from the flue gas (recovery-loop heat meter), kWh.
    pub recovered: Option<Sum>,
    /// Heat left in the flue gas at the stack exit above 25 °C, kWh (from flue flow and exit
    /// temperature).
    pub stack_loss: Option<Sum>,
    /// Time-weighted mean flue-gas exit temperature while the boiler ran, °C.
    pub exit_temperature: Option<Sum>,
    /// Share of boiler-running time with the hourly mean exit temperature ≤ 40 °C, `0..=1`.
    pub exit_within_limit_share: Option<Sum>,
}

/// Zero waste heat (Z4): recovery rate = recovered / (recovered + heat left at the stack),
/// a heat-balance definition consistent on a higher-heating-value basis; a rate above 100 %
/// cannot happen with it, and is flagged `lhv_above_100` if inputs produce one.
///
/// Tier A: ≥ 50 %. Tier Z: ≥ 90 % AND exit ≤ 40 °C for ≥ 95 % of running hours.
#[must_use]
pub fn zero_waste_heat(window: &Window, s: &HeatSums) -> Vec<KpiRecord> {
    let b = Builder { window };
    let available = match (s.recovered, s.stack_loss) {
        (Some(r), Some(l)) => Some(r.plus(l)),
        _ => None,
    };
    let share = s.exit_within_limit_share.map(|x| x.value);
    let mut rate = b.ratio(
        "zero_waste_heat.recovery_rate",
        s.recovered,
        available,
        1.0,
        |v| {
            vec![
                ("A", vec![(v, Rule::AtLeast(0.50))]),
                (
                    "Z",
                    vec![(v, Rule::AtLeast(0.90)), (share, Rule::AtLeast(0.95))],
                ),
            ]
        },
    );
    if rate.value.is_some_and(|v| v > 1.0) {
        rate.flags.push("lhv_above_100".to_owned());
    }
    vec![
        rate,
        b.quantity(
            "zero_waste_heat.flue_exit_temperature",
            "°C",
            &[s.exit_temperature],
            s.exit_temperature.map(|t| t.value),
            &[],
            Vec::new(),
        ),
        b.quantity(
            "zero_waste_heat.exit_within_limit_share",
            "1",
            &[s.exit_within_limit_share],
            share,
            &[("Z", vec![(share, Rule::AtLeast(0.95))])],
            Vec::new(),
        ),
    ]
}

/// Window sums for energy, in kWh.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnergySums {
    /// On-site renewable generation (PV, wind, maglev from recovered steam is not renewable
    /// generation and is not counted here).
    pub renewable_generated: Option<Sum>,
    /// Electricity imported from the grid.
    pub grid_import: Option<Sum>,
    /// Electricity exported to the grid.
    pub grid_export: Option<Sum>,
    /// Green electricity bought under contract (certificates, direct PPAs), for market-based
    /// scope 2 and the clean-energy share.
    pub green_purchased: Option<Sum>,
}

/// Zero energy consumption (Z5) and carbon, which share their inputs.
///
/// - `zero_energy.self_sufficiency` = (generated − exported) / (generated + imported −
///   exported); no denominator with no consumption.
/// - `zero_energy.self_consumption` = (generated − exported) / generated; no denominator at
///   night.
/// - `zero_energy.net_zero_ratio` = (generated + fuels' renewable part, none yet) / consumption,
///   electricity and fuels in tce.
/// - `zero_energy.clean_energy_share` = (renewable used on site + green purchased) in tce /
///   total consumption in tce (tier A ≥ 90 %).
/// - `zero_energy.fossil_energy_tce`, `zero_energy.net_grid_import_kwh`.
/// - `carbon.scope1_t` = Σ fuel × NCV × EF (biogenic fuels excluded), `carbon.scope2_location_t`
///   = import × grid factor, `carbon.scope2_market_t` = (import − green) × residual factor,
///   `carbon.avoided_t` = renewable generation × grid factor (reported apart, never
///   subtracted), `carbon.intensity_t_per_tce` = (scope 1 + scope 2 location) / total energy
///   in tce (tier A ≤ 0.20).
///
/// Tier Z of net-zero ratio: ≥ 100 % AND fossil 0 AND net import ≤ 0.
#[must_use]
pub fn energy_and_carbon(
    window: &Window,
    s: &EnergySums,
    fuels: &[Fuel],
    f: &Factors,
) -> Vec<KpiRecord> {
    let b = Builder { window };
    let kgce = f.electricity_kgce_per_kwh.value;
    let (generated, imp, exp) = (s.renewable_generated, s.grid_import, s.grid_export);
    let used_onsite = match (generated, exp) {
        (Some(g), Some(e)) => Some(Sum {
            value: (g.value - e.value).max(0.0),
            ..g.plus(e)
        }),
        _ => None,
    };
    let load = match (generated, imp, exp) {
        (Some(g), Some(i), Some(e)) => Some(Sum {
            value: g.value + i.value - e.value,
            ..g.plus(i).plus(e)
        }),
        _ => None,
    };
    // Fuels: energy in MJ and CO2 in t.
    let mut fossil_tce = Some(Sum::exact(0.0));
    let mut scope1 = Some(Sum::exact(0.0));
    let mut fuel_factors = Vec::new();
    for fuel in fuels {
        let Some(q) = fuel.quantity else {
            fossil_tce = None;
            scope1 = None;
            continue;
        };
        let mj = q.value * fuel.ncv_mj.value;
        fuel_factors.push(fuel.ncv_mj.factor(&format!("{}_ncv", fuel.name)));
        if fuel.biogenic {
            continue;
        }
        fuel_factors.push(
            fuel.co2_kg_per_tj
                .factor(&format!("{}_co2_factor", fuel.name)),
        );
        let t_co2 = mj / 1e6 * fuel.co2_kg_per_tj.value / 1000.0;
        let tce = mj / 29.3076;
        fossil_tce = fossil_tce.map(|x| x.plus(Sum { value: tce, ..q }));
        scope1 = scope1.map(|x| x.plus(Sum { value: t_co2, ..q }));
    }
    let load_tce = load.map(|l| l.scaled(kgce / 1000.0));
    let total_tce = match (load_tce, fossil_tce) {
        (Some(l), Some(fo)) => Some(l.plus(fo)),
        _ => None,
    };
    let gen_tce = generated.map(|g| g.scaled(kgce / 1000.0));
    let clean_tce = match (used_onsite, s.green_purchased.or(Some(Sum::exact(0.0)))) {
        (Some(u), Some(g)) => Some(u.plus(g).scaled(kgce / 1000.0)),
        _ => None,
    };
    let net_import = match (imp, exp) {
        (Some(i), Some(e)) => Some(Sum {
            value: i.value - e.value,
            ..i.plus(e)
        }),
        _ => None,
    };
    let ratio = |n: Option<Sum>, d: Option<Sum>, eps: f64| match (n, d) {
        (Some(n), Some(d)) if d.value.abs() >= eps => Some(n.value / d.value),
        _ => None,
    };
    let grid_kg = f.grid.value;
    let scope2_loc = imp.map(|i| i.scaled(grid_kg / 1000.0));
    let intensity_num = match (scope1, scope2_loc) {
        (Some(a), Some(b2)) => Some(a.plus(b2)),
        _ => None,
    };
    let intensity = ratio(intensity_num, total_tce, 1e-6);
    let grid_factor = f.grid.factor("grid_emission_factor");
    let kgce_factor = f
        .electricity_kgce_per_kwh
        .factor("electricity_kgce_per_kwh");

    let mut out = vec![
        b.ratio(
            "zero_energy.self_sufficiency",
            used_onsite,
            load,
            1.0,
            |_| Vec::new(),
        ),
        b.ratio(
            "zero_energy.self_consumption",
            used_onsite,
            generated,
            1.0,
            |_| Vec::new(),
        ),
        b.ratio(
            "zero_energy.net_zero_ratio",
            gen_tce,
            total_tce,
            1e-6,
            |v| {
                vec![(
                    "Z",
                    vec![
                        (v, Rule::AtLeast(1.0)),
                        (fossil_tce.map(|x| x.value), Rule::AtMost(0.0)),
                        (net_import.map(|x| x.value), Rule::AtMost(0.0)),
                    ],
                )]
            },
        ),
        b.ratio(
            "zero_energy.clean_energy_share",
            clean_tce,
            total_tce,
            1e-6,
            |v| vec![("A", vec![(v, Rule::AtLeast(0.90))])],
        ),
        b.quantity(
            "zero_energy.fossil_energy_tce",
            "tce",
            &[fossil_tce],
            fossil_tce.map(|x| x.value),
            &[("Z", vec![(fossil_tce.map(|x| x.value), Rule::AtMost(0.0))])],
            fuel_factors.clone(),
        ),
        b.quantity(
            "zero_energy.net_grid_import_kwh",
            "kWh",
            &[imp, exp],
            net_import.map(|x| x.value),
            &[("Z", vec![(net_import.map(|x| x.value), Rule::AtMost(0.0))])],
            Vec::new(),
        ),
        b.quantity(
            "carbon.scope1_t",
            "tCO2",
            &[scope1],
            scope1.map(|x| x.value),
            &[],
            fuel_factors,
        ),
        b.quantity(
            "carbon.scope2_location_t",
            "tCO2",
            &[imp],
            scope2_loc.map(|x| x.value),
            &[],
            vec![grid_factor.clone()],
        ),
        b.quantity(
            "carbon.avoided_t",
            "tCO2",
            &[generated],
            generated.map(|g| g.value * grid_kg / 1000.0),
            &[],
            vec![grid_factor.clone()],
        ),
    ];
    for name in [
        "zero_energy.net_zero_ratio",
        "zero_energy.clean_energy_share",
    ] {
        if let Some(r) = out.iter_mut().find(|r| r.kpi == name) {
            r.factors.push(kgce_factor.clone());
        }
    }
    if let Some(residual) = &f.grid_residual {
        let bought = match (imp, s.green_purchased.or(Some(Sum::exact(0.0)))) {
            (Some(i), Some(g)) => Some(Sum {
                value: (i.value - g.value).max(0.0) * residual.value / 1000.0,
                ..i.plus(g)
            }),
            _ => None,
        };
        out.push(b.quantity(
            "carbon.scope2_market_t",
            "tCO2",
            &[bought],
            bought.map(|x| x.value),
            &[],
            vec![residual.factor("grid_residual_emission_factor")],
        ));
    }
    let mut intensity_record = b.record(
        "carbon.intensity_t_per_tce",
        "tCO2/tce",
        intensity_num.map(|x| x.value),
        total_tce.map(|x| x.value),
        intensity,
        inputs(&[intensity_num, total_tce]),
        total_tce.is_some_and(|t| t.value.abs() < 1e-6),
        &[("A", vec![(intensity, Rule::AtMost(0.20))])],
        vec![grid_factor, kgce_factor],
        Vec::new(),
    );
    intensity_record.factors.dedup();
    out.push(intensity_record);
    out
}

/// Window sums of a compressed-air station.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompressedAirSums {
    /// Electrical energy, kWh.
    pub energy: Option<Sum>,
    /// Free air delivered, m³.
    pub delivered: Option<Sum>,
}

/// Compressor specific power = energy / free air delivered × 60, in kW/(m³/min) (GB
/// 19153-2019's unit). No denominator while the station delivers no air.
#[must_use]
pub fn compressed_air(window: &Window, s: &CompressedAirSums) -> KpiRecord {
    let b = Builder { window };
    let mut r = b.ratio(
        "compressed_air.specific_power",
        s.energy,
        s.delivered,
        0.01,
        |_| Vec::new(),
    );
    r.value = r.value.map(|v| v * 60.0);
    r.unit = "kW/(m³/min)".to_owned();
    r
}

/// Converts a heat quantity in kWh into tce with the GB/T 2589 heat coefficient.
#[must_use]
pub fn heat_kwh_to_tce(kwh: f64, f: &Factors) -> f64 {
    kwh * 3.6 * f.heat_kgce_per_mj.value / 1000.0
}

/// A metered quantity reported as it is, with no tier: EV charging energy, site consumption.
/// Missing when its input is.
#[must_use]
pub fn reported(window: &Window, kpi: &str, unit: &str, sum: Option<Sum>) -> KpiRecord {
    Builder { window }.quantity(kpi, unit, &[sum], sum.map(|s| s.value), &[], Vec::new())
}
