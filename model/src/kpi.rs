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
//!   park's five-zero claim (tier Z, Qingdao Green Sail), written once in [`TIER_RULES`]:
//!   the functions here judge each window with it ([`judge_tiers`]) and the cloud sink judges
//!   the ranges it recomputes with it ([`judge_tier`]).
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

// ------------------------------------------------------------------------------------------
// Tier rules: the one table both the gateway's windows and the sink's ranges are judged by
// ------------------------------------------------------------------------------------------

/// Tolerance of every threshold comparison, so a ratio computed as 0.8 − 1 ulp still meets
/// "≥ 80 %".
pub const TIER_TOLERANCE: f64 = 1e-12;

/// Tier Z of zero wastewater: discharge allowed as a share of the water used (reused +
/// fresh, the reuse rate's denominator).
pub const DISCHARGE_ALLOWANCE_SHARE: f64 = 0.005;

/// Tier Z of zero wastewater: the discharge always allowed, m³ (a meter's resolution).
pub const DISCHARGE_ALLOWANCE_FLOOR_M3: f64 = 0.1;

/// Tier Z of zero wastewater: rainwater utilisation demanded when it rained.
pub const RAIN_UTILISATION_MIN: f64 = 0.95;

/// One condition of a tier rule. All conditions of a rule must hold; one whose input is
/// missing makes the tier [`TierOutcome::InsufficientData`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TierCondition {
    /// The value of the KPI named is at least the threshold.
    AtLeast(&'static str, f64),
    /// The value of the KPI named is at most the threshold.
    AtMost(&'static str, f64),
    /// `zero_wastewater.discharged_m3` ≤ max([`DISCHARGE_ALLOWANCE_SHARE`] × the denominator
    /// of `zero_wastewater.reuse_rate`, [`DISCHARGE_ALLOWANCE_FLOOR_M3`]).
    DischargeAllowance,
    /// `zero_wastewater.rain_utilisation` ≥ [`RAIN_UTILISATION_MIN`], or it has no
    /// denominator (no rain: a dry window is not a failure).
    RainOrDry,
}

/// A tier of one KPI: the KPI, the tier (`A` = the national guide, `Z` = the reference park's
/// five-zero claim) and the conditions that must all hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierRule {
    /// KPI id.
    pub kpi: &'static str,
    /// `A` or `Z`.
    pub tier: &'static str,
    /// All must hold.
    pub conditions: &'static [TierCondition],
}

/// Every tier rule, tier A before tier Z for each KPI. The functions below judge their
/// records with it ([`judge_tiers`]), and the cloud sink judges the ranges it recomputes
/// with it: this table is the only place a threshold is written.
pub const TIER_RULES: &[TierRule] = {
    use TierCondition::{AtLeast, AtMost, DischargeAllowance, RainOrDry};
    const fn rule(
        kpi: &'static str,
        tier: &'static str,
        conditions: &'static [TierCondition],
    ) -> TierRule {
        TierRule {
            kpi,
            tier,
            conditions,
        }
    }
    const TOTAL: &str = "zero_waste.total_recovery_rate";
    const LANDFILL: &str = "zero_waste.landfill_share";
    const CLOSURE: &str = "zero_waste.mass_balance_closure";
    const REUSE: &str = "zero_wastewater.reuse_rate";
    const RAIN: &str = "zero_wastewater.rain_utilisation";
    const CASCADE: &str = "zero_exhaust.steam_cascade_utilisation";
    const VENT: &str = "zero_exhaust.vent_fraction";
    const HEAT: &str = "zero_waste_heat.recovery_rate";
    const EXIT: &str = "zero_waste_heat.exit_within_limit_share";
    const NET_ZERO: &str = "zero_energy.net_zero_ratio";
    const FOSSIL: &str = "zero_energy.fossil_energy_tce";
    const NET_IMPORT: &str = "zero_energy.net_grid_import_kwh";
    &[
        // Zero waste: total recovery ≥ 80 % (A); ≥ 98 % with landfill ≤ 1 % and mass-balance
        // closure ≤ 2 % (Z).
        rule(TOTAL, "A", &[AtLeast(TOTAL, 0.80)]),
        rule(
            TOTAL,
            "Z",
            &[
                AtLeast(TOTAL, 0.98),
                AtMost(LANDFILL, 0.01),
                AtMost(CLOSURE, 0.02),
            ],
        ),
        rule(LANDFILL, "Z", &[AtMost(LANDFILL, 0.01)]),
        rule(CLOSURE, "Z", &[AtMost(CLOSURE, 0.02)]),
        // Zero wastewater: reuse ≥ 80 % (A); ≥ 90 % with discharge within the allowance and
        // rain used ≥ 95 % when it rained (Z).
        rule(REUSE, "A", &[AtLeast(REUSE, 0.80)]),
        rule(
            REUSE,
            "Z",
            &[AtLeast(REUSE, 0.90), DischargeAllowance, RainOrDry],
        ),
        rule("zero_wastewater.discharged_m3", "Z", &[DischargeAllowance]),
        rule(RAIN, "Z", &[AtLeast(RAIN, RAIN_UTILISATION_MIN)]),
        // Zero exhaust gas: steam put to use ≥ 95 % with vented ≤ 2 % (Z).
        rule(CASCADE, "Z", &[AtLeast(CASCADE, 0.95), AtMost(VENT, 0.02)]),
        rule(VENT, "Z", &[AtMost(VENT, 0.02)]),
        // Zero waste heat: recovery ≥ 50 % (A); ≥ 90 % with the exit ≤ 40 °C for ≥ 95 % of
        // running hours (Z).
        rule(HEAT, "A", &[AtLeast(HEAT, 0.50)]),
        rule(HEAT, "Z", &[AtLeast(HEAT, 0.90), AtLeast(EXIT, 0.95)]),
        rule(EXIT, "Z", &[AtLeast(EXIT, 0.95)]),
        // Zero energy: net-zero ratio ≥ 100 % with no fossil energy and no net import (Z);
        // clean-energy share ≥ 90 % (A).
        rule(
            NET_ZERO,
            "Z",
            &[
                AtLeast(NET_ZERO, 1.0),
                AtMost(FOSSIL, 0.0),
                AtMost(NET_IMPORT, 0.0),
            ],
        ),
        rule(
            "zero_energy.clean_energy_share",
            "A",
            &[AtLeast("zero_energy.clean_energy_share", 0.90)],
        ),
        rule(FOSSIL, "Z", &[AtMost(FOSSIL, 0.0)]),
        rule(NET_IMPORT, "Z", &[AtMost(NET_IMPORT, 0.0)]),
        // Carbon: intensity ≤ 0.20 tCO2/tce (A).
        rule(
            "carbon.intensity_t_per_tce",
            "A",
            &[AtMost("carbon.intensity_t_per_tce", 0.20)],
        ),
    ]
};

/// The rule of `tier` for `kpi`, if there is one.
#[must_use]
pub fn tier_rule(kpi: &str, tier: &str) -> Option<&'static TierRule> {
    TIER_RULES.iter().find(|r| r.kpi == kpi && r.tier == tier)
}

/// The rules of `kpi`, tier A before tier Z.
pub fn tier_rules(kpi: &str) -> impl Iterator<Item = &'static TierRule> + '_ {
    TIER_RULES.iter().filter(move |r| r.kpi == kpi)
}

/// What a tier condition reads of a KPI of the same window (or of the same range).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierFacts {
    /// The value; `None` when missing.
    pub value: Option<f64>,
    /// The denominator of a ratio.
    pub denominator: Option<f64>,
    /// The quality.
    pub quality: KpiQuality,
}

impl From<&KpiRecord> for TierFacts {
    fn from(r: &KpiRecord) -> Self {
        Self {
            value: r.value,
            denominator: r.denominator,
            quality: r.quality,
        }
    }
}

/// Whether tiers are judged at all for a KPI of this quality and coverage: only `ok` or
/// `estimated`, with coverage ≥ [`MIN_COVERAGE`]. Otherwise every tier says
/// [`TierOutcome::InsufficientData`].
#[must_use]
pub fn judgeable(quality: KpiQuality, coverage: f64) -> bool {
    matches!(quality, KpiQuality::Ok | KpiQuality::Estimated) && coverage >= MIN_COVERAGE
}

/// Judges one rule. `facts` gives what is known of a KPI of the same window or range (`None`
/// when it is not there). The first condition whose input is missing makes the tier
/// [`TierOutcome::InsufficientData`]; otherwise one that fails makes it
/// [`TierOutcome::NotAchieved`]. Does not check [`judgeable`]: the caller does, for the
/// KPI the tier belongs to.
pub fn judge_tier(rule: &TierRule, facts: impl Fn(&str) -> Option<TierFacts>) -> TierOutcome {
    let value = |kpi: &str| facts(kpi).and_then(|f| f.value);
    let mut outcome = TierOutcome::Achieved;
    for condition in rule.conditions {
        let ok = match *condition {
            TierCondition::AtLeast(kpi, t) => value(kpi).map(|v| v >= t - TIER_TOLERANCE),
            TierCondition::AtMost(kpi, t) => value(kpi).map(|v| v <= t + TIER_TOLERANCE),
            TierCondition::DischargeAllowance => {
                let discharged = value("zero_wastewater.discharged_m3");
                let used = facts("zero_wastewater.reuse_rate").and_then(|f| f.denominator);
                discharged.zip(used).map(|(d, u)| {
                    let allowed = (u * DISCHARGE_ALLOWANCE_SHARE).max(DISCHARGE_ALLOWANCE_FLOOR_M3);
                    d - allowed <= TIER_TOLERANCE
                })
            }
            TierCondition::RainOrDry => facts("zero_wastewater.rain_utilisation").and_then(|f| {
                if f.quality == KpiQuality::NoDenominator {
                    Some(true)
                } else {
                    f.value.map(|v| v >= RAIN_UTILISATION_MIN - TIER_TOLERANCE)
                }
            }),
        };
        match ok {
            None => return TierOutcome::InsufficientData,
            Some(false) => outcome = TierOutcome::NotAchieved,
            Some(true) => {}
        }
    }
    outcome
}

/// Sets the tiers of every record from [`TIER_RULES`], judged against the records of the
/// same window (`records`): a KPI with rules gets one [`TierStatus`] per rule, tier A first,
/// [`TierOutcome::InsufficientData`] unless [`judgeable`]; a KPI without keeps none.
pub fn judge_tiers(records: &mut [KpiRecord]) {
    let facts: Vec<(String, TierFacts)> = records
        .iter()
        .map(|r| (r.kpi.clone(), TierFacts::from(r)))
        .collect();
    let lookup = |kpi: &str| facts.iter().find(|(k, _)| k == kpi).map(|(_, f)| *f);
    for r in records.iter_mut() {
        let judged = judgeable(r.quality, r.coverage);
        r.tiers = tier_rules(&r.kpi)
            .map(|rule| TierStatus {
                tier: rule.tier.to_owned(),
                status: if judged {
                    judge_tier(rule, lookup)
                } else {
                    TierOutcome::InsufficientData
                },
            })
            .collect();
    }
}

/// The smallest denominator a ratio KPI is computed from, in the denominator's unit: below
/// it the KPI has no value ([`KpiQuality::NoDenominator`]: self-sufficiency at night is not
/// 0 %). The same for a window and for a range of summed windows.
#[must_use]
pub fn denominator_epsilon(kpi: &str) -> f64 {
    match kpi {
        // Tonnes.
        "zero_waste.total_recovery_rate"
        | "zero_waste.material_recovery_rate"
        | "zero_waste.energy_recovery_share"
        | "zero_waste.landfill_share"
        | "zero_waste.mass_balance_closure" => 1e-3,
        // Cubic metres.
        "zero_wastewater.reuse_rate" | "zero_wastewater.rain_utilisation" => 0.1,
        // Tonnes of steam; cubic metres of air.
        "zero_exhaust.steam_cascade_utilisation"
        | "zero_exhaust.vent_fraction"
        | "compressed_air.specific_power" => 0.01,
        // Kilowatt-hours.
        "zero_waste_heat.recovery_rate"
        | "zero_energy.self_sufficiency"
        | "zero_energy.self_consumption" => 1.0,
        // Tonnes of coal equivalent.
        "zero_energy.net_zero_ratio"
        | "zero_energy.clean_energy_share"
        | "carbon.intensity_t_per_tce" => 1e-6,
        _ => 1e-12,
    }
}

/// The constant a ratio KPI's value is Σ numerator / Σ denominator times: 60 for compressor
/// specific power (kWh per m³ → kW per m³/min), 1 for every other.
#[must_use]
pub fn ratio_scale(kpi: &str) -> f64 {
    if kpi == "compressed_air.specific_power" {
        60.0
    } else {
        1.0
    }
}

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
    /// A record without tiers ([`judge_tiers`] sets them once the window's records exist).
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
        let value = if inputs.all_present && !no_denominator {
            value
        } else {
            None
        };
        KpiRecord {
            kpi: kpi.to_owned(),
            window: self.window.clone(),
            numerator,
            denominator,
            value,
            unit: unit.to_owned(),
            coverage: inputs.coverage,
            quality,
            tiers: Vec::new(),
            factors,
            formula_version: FORMULA_VERSION,
            flags,
        }
    }

    /// A ratio `numerator / denominator` with the usual rules and the KPI's
    /// [`denominator_epsilon`].
    fn ratio(&self, kpi: &str, numerator: Option<Sum>, denominator: Option<Sum>) -> KpiRecord {
        let epsilon = denominator_epsilon(kpi);
        let inputs = inputs(&[numerator, denominator]);
        let (num, den) = (numerator.map(|s| s.value), denominator.map(|s| s.value));
        let no_den = inputs.all_present && den.is_none_or(|d| d.abs() < epsilon);
        let value = match (num, den) {
            (Some(n), Some(d)) if d.abs() >= epsilon => Some(n / d),
            _ => None,
        };
        self.record(
            kpi,
            "1",
            num,
            den,
            value,
            inputs,
            no_den,
            Vec::new(),
            Vec::new(),
        )
    }

    /// A plain quantity (a sum).
    fn quantity(
        &self,
        kpi: &str,
        unit: &str,
        parts: &[Option<Sum>],
        value: Option<f64>,
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
            factors,
            Vec::new(),
        )
    }
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
    let closure_epsilon = denominator_epsilon("zero_waste.mass_balance_closure");
    let closure = match (s.received, s.material, s.energy, s.landfill) {
        (Some(r), Some(m), Some(e), Some(l)) if r.value.abs() >= closure_epsilon => {
            let stock = s.stock_change.map_or(0.0, |x| x.value);
            Some((r.value - (m.value + e.value + l.value + stock)).abs() / r.value)
        }
        _ => None,
    };
    let mut closure_record = b.record(
        "zero_waste.mass_balance_closure",
        "1",
        None,
        s.received.map(|r| r.value),
        closure,
        inputs(&[s.received, s.material, s.energy, s.landfill]),
        s.received.is_some_and(|r| r.value.abs() < closure_epsilon),
        Vec::new(),
        Vec::new(),
    );
    closure_record.numerator = closure.map(|c| c * s.received.map_or(0.0, |r| r.value));
    let mut records = vec![
        b.ratio("zero_waste.total_recovery_rate", recovered, base),
        b.ratio("zero_waste.material_recovery_rate", s.material, base),
        b.ratio("zero_waste.energy_recovery_share", s.energy, base),
        b.ratio("zero_waste.landfill_share", s.landfill, base),
        closure_record,
    ];
    judge_tiers(&mut records);
    records
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
    let mut records = vec![
        b.ratio("zero_wastewater.reuse_rate", s.reused, total),
        b.quantity(
            "zero_wastewater.discharged_m3",
            "m³",
            &[s.discharged],
            s.discharged.map(|d| d.value),
            Vec::new(),
        ),
        b.ratio(
            "zero_wastewater.rain_utilisation",
            s.rain_used,
            s.rain_collected,
        ),
    ];
    judge_tiers(&mut records);
    records
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
    let mut records = vec![
        b.ratio(
            "zero_exhaust.steam_cascade_utilisation",
            s.used,
            s.generated,
        ),
        b.ratio("zero_exhaust.vent_fraction", s.vented, s.generated),
    ];
    judge_tiers(&mut records);
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
    let mut rate = b.ratio("zero_waste_heat.recovery_rate", s.recovered, available);
    if rate.value.is_some_and(|v| v > 1.0) {
        rate.flags.push("lhv_above_100".to_owned());
    }
    let mut records = vec![
        rate,
        b.quantity(
            "zero_waste_heat.flue_exit_temperature",
            "°C",
            &[s.exit_temperature],
            s.exit_temperature.map(|t| t.value),
            Vec::new(),
        ),
        b.quantity(
            "zero_waste_heat.exit_within_limit_share",
            "1",
            &[s.exit_within_limit_share],
            share,
            Vec::new(),
        ),
    ];
    judge_tiers(&mut records);
    records
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
    let intensity_epsilon = denominator_epsilon("carbon.intensity_t_per_tce");
    let intensity = ratio(intensity_num, total_tce, intensity_epsilon);
    let grid_factor = f.grid.factor("grid_emission_factor");
    let kgce_factor = f
        .electricity_kgce_per_kwh
        .factor("electricity_kgce_per_kwh");

    let mut out = vec![
        b.ratio("zero_energy.self_sufficiency", used_onsite, load),
        b.ratio("zero_energy.self_consumption", used_onsite, generated),
        b.ratio("zero_energy.net_zero_ratio", gen_tce, total_tce),
        b.ratio("zero_energy.clean_energy_share", clean_tce, total_tce),
        b.quantity(
            "zero_energy.fossil_energy_tce",
            "tce",
            &[fossil_tce],
            fossil_tce.map(|x| x.value),
            fuel_factors.clone(),
        ),
        b.quantity(
            "zero_energy.net_grid_import_kwh",
            "kWh",
            &[imp, exp],
            net_import.map(|x| x.value),
            Vec::new(),
        ),
        b.quantity(
            "carbon.scope1_t",
            "tCO2",
            &[scope1],
            scope1.map(|x| x.value),
            fuel_factors,
        ),
        b.quantity(
            "carbon.scope2_location_t",
            "tCO2",
            &[imp],
            scope2_loc.map(|x| x.value),
            vec![grid_factor.clone()],
        ),
        b.quantity(
            "carbon.avoided_t",
            "tCO2",
            &[generated],
            generated.map(|g| g.value * grid_kg / 1000.0),
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
        total_tce.is_some_and(|t| t.value.abs() < intensity_epsilon),
        vec![grid_factor, kgce_factor],
        Vec::new(),
    );
    intensity_record.factors.dedup();
    out.push(intensity_record);
    judge_tiers(&mut out);
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
    let mut r = b.ratio("compressed_air.specific_power", s.energy, s.delivered);
    r.value = r
        .value
        .map(|v| v * ratio_scale("compressed_air.specific_power"));
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
    Builder { window }.quantity(kpi, unit, &[sum], sum.map(|s| s.value), Vec::new())
}
