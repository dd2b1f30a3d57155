//! Pure: a KPI over a range, recomputed from the stored window records.
//!
//! The rules (the plant manager's contract, after `fivezero_model::kpi`):
//! - A ratio's range value is Σ numerator / Σ denominator over the windows present, times the
//!   KPI's scale (60 for compressor specific power), never the mean of the window ratios.
//! - An extensive quantity (tCO2, kWh, tce, m³) adds up; an intensive one (a temperature or
//!   a share, unit `°C` or `1` without a denominator) is the duration-weighted mean of the
//!   windows, flagged `window_mean`.
//! - Windows with quality `insufficient_data` (or without the sums) count as missing.
//!   Coverage is the smallest of the windows' coverages and of windows present / windows
//!   expected. No window present: the value is missing (`insufficient_data`), never zero.
//! - A meter fault in any window makes the range `meter_fault`; otherwise `estimated` if any
//!   window was estimated or coverage is below 1; `no_denominator` if Σ denominator is 0.
//! - Tiers are judged again on the range values with the thresholds of `fivezero_model::kpi`
//!   ([`TIER_RULES`]), only for quality `ok`/`estimated` and coverage ≥
//!   [`fivezero_model::kpi::MIN_COVERAGE`]; a tier whose rule this build does not know is
//!   `insufficient_data` with the flag `tier_rule_unknown`.
//! - Several records for one window (a window resent under a new epoch) count once: the
//!   last received.

use std::collections::BTreeMap;

use fivezero_model::kpi::MIN_COVERAGE;
use fivezero_model::wire::{KpiQuality, KpiRecord, TierOutcome, TierStatus};

/// One condition of a tier.
#[derive(Debug, Clone, Copy)]
pub enum Condition {
    /// The KPI named (`""` for the KPI itself) is at least the threshold.
    AtLeast(&'static str, f64),
    /// The KPI named (`""` for the KPI itself) is at most the threshold.
    AtMost(&'static str, f64),
    /// Discharged volume ≤ max(0.5 % of the reuse rate's denominator, 0.1 m³).
    DischargeAllowance,
    /// Rain utilisation ≥ 95 %, or no rain (no denominator).
    RainOrDry,
}

/// The tier rules of `fivezero_model::kpi`, by KPI and tier. Kept in step with it by the
/// `range_tiers_match_the_window_rules` test.
pub const TIER_RULES: &[(&str, &str, &[Condition])] = {
    use Condition::{AtLeast, AtMost, DischargeAllowance, RainOrDry};
    &[
        ("zero_waste.total_recovery_rate", "A", &[AtLeast("", 0.80)]),
        (
            "zero_waste.total_recovery_rate",
            "Z",
            &[
                AtLeast("", 0.98),
                AtMost("zero_waste.landfill_share", 0.01),
                AtMost("zero_waste.mass_balance_closure", 0.02),
            ],
        ),
        ("zero_waste.landfill_share", "Z", &[AtMost("", 0.01)]),
        ("zero_waste.mass_balance_closure", "Z", &[AtMost("", 0.02)]),
        ("zero_wastewater.reuse_rate", "A", &[AtLeast("", 0.80)]),
        (
            "zero_wastewater.reuse_rate",
            "Z",
            &[AtLeast("", 0.90), DischargeAllowance, RainOrDry],
        ),
        ("zero_wastewater.discharged_m3", "Z", &[DischargeAllowance]),
        (
            "zero_wastewater.rain_utilisation",
            "Z",
            &[AtLeast("", 0.95)],
        ),
        (
            "zero_exhaust.steam_cascade_utilisation",
            "Z",
            &[
                AtLeast("", 0.95),
                AtMost("zero_exhaust.vent_fraction", 0.02),
            ],
        ),
        ("zero_exhaust.vent_fraction", "Z", &[AtMost("", 0.02)]),
        ("zero_waste_heat.recovery_rate", "A", &[AtLeast("", 0.50)]),
        (
            "zero_waste_heat.recovery_rate",
            "Z",
            &[
                AtLeast("", 0.90),
                AtLeast("zero_waste_heat.exit_within_limit_share", 0.95),
            ],
        ),
        (
            "zero_waste_heat.exit_within_limit_share",
            "Z",
            &[AtLeast("", 0.95)],
        ),
        (
            "zero_energy.net_zero_ratio",
            "Z",
            &[
                AtLeast("", 1.0),
                AtMost("zero_energy.fossil_energy_tce", 0.0),
                AtMost("zero_energy.net_grid_import_kwh", 0.0),
            ],
        ),
        ("zero_energy.clean_energy_share", "A", &[AtLeast("", 0.90)]),
        ("zero_energy.fossil_energy_tce", "Z", &[AtMost("", 0.0)]),
        ("zero_energy.net_grid_import_kwh", "Z", &[AtMost("", 0.0)]),
        ("carbon.intensity_t_per_tce", "A", &[AtMost("", 0.20)]),
    ]
};

/// Ratios whose value is the ratio of sums times a constant.
const SCALES: &[(&str, f64)] = &[("compressed_air.specific_power", 60.0)];

/// One KPI over a range.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeKpi {
    /// KPI id.
    pub kpi: String,
    /// Unit of `value`.
    pub unit: String,
    /// The range value; `None` when it cannot be computed.
    pub value: Option<f64>,
    /// Σ numerator of the windows present.
    pub numerator: Option<f64>,
    /// Σ denominator of the windows present (ratios only).
    pub denominator: Option<f64>,
    /// See the module rules.
    pub coverage: f64,
    /// See the module rules.
    pub quality: KpiQuality,
    /// Status per tier, re-judged on the range.
    pub tiers: Vec<TierStatus>,
    /// Windows with data.
    pub windows: u32,
    /// Windows the range should hold.
    pub windows_expected: u32,
    /// `window_mean`, `tier_rule_unknown`, and the windows' own flags.
    pub flags: Vec<String>,
}

fn one_kpi(records: &[&KpiRecord], expected: u32) -> RangeKpi {
    let first = records.first();
    let kpi = first.map_or_else(String::new, |r| r.kpi.clone());
    let unit = first.map_or_else(String::new, |r| r.unit.clone());
    let is_ratio = records.iter().any(|r| r.denominator.is_some());
    let intensive = !is_ratio && (unit == "°C" || unit == "1");
    let mut flags: Vec<String> = Vec::new();
    let (mut num, mut den, mut weighted, mut weight) = (0.0, 0.0, 0.0, 0.0);
    let (mut present, mut coverage) = (0u32, 1.0f64);
    let (mut fault, mut estimated) = (false, false);
    for r in records {
        for f in &r.flags {
            if !flags.contains(f) {
                flags.push(f.clone());
            }
        }
        let usable = r.quality != KpiQuality::InsufficientData
            && r.numerator.is_some()
            && (!is_ratio || r.denominator.is_some());
        if r.quality == KpiQuality::MeterFault {
            fault = true;
        }
        if !usable {
            continue;
        }
        present += 1;
        coverage = coverage.min(r.coverage.clamp(0.0, 1.0));
        estimated |= r.quality == KpiQuality::Estimated;
        num += r.numerator.unwrap_or(0.0);
        den += r.denominator.unwrap_or(0.0);
        if let Some(v) = r.value {
            let w = (r.window.end - r.window.start).max(1) as f64;
            weighted += v * w;
            weight += w;
        }
    }
    let expected = expected.max(present).max(1);
    coverage = coverage.min(f64::from(present) / f64::from(expected));
    let scale = SCALES
        .iter()
        .find(|(k, _)| *k == kpi)
        .map_or(1.0, |(_, s)| *s);
    let (value, numerator, denominator, no_den) = if present == 0 {
        (None, None, None, false)
    } else if is_ratio {
        if den.abs() < 1e-12 {
            (None, Some(num), Some(den), true)
        } else {
            (Some(num / den * scale), Some(num), Some(den), false)
        }
    } else if intensive {
        flags.push("window_mean".to_owned());
        ((weight > 0.0).then(|| weighted / weight), None, None, false)
    } else {
        (Some(num), Some(num), None, false)
    };
    let quality = if present == 0 {
        KpiQuality::InsufficientData
    } else if no_den {
        KpiQuality::NoDenominator
    } else if fault {
        KpiQuality::MeterFault
    } else if estimated || coverage < 1.0 {
        KpiQuality::Estimated
    } else {
        KpiQuality::Ok
    };
    let value = if matches!(quality, KpiQuality::Ok | KpiQuality::Estimated) {
        value
    } else {
        None
    };
    let mut tiers: Vec<TierStatus> = Vec::new();
    for r in records {
        for t in &r.tiers {
            if !tiers.iter().any(|x| x.tier == t.tier) {
                tiers.push(TierStatus {
                    tier: t.tier.clone(),
                    status: TierOutcome::InsufficientData,
                });
            }
        }
    }
    RangeKpi {
        kpi,
        unit,
        value,
        numerator,
        denominator,
        coverage,
        quality,
        tiers,
        windows: present,
        windows_expected: expected,
        flags,
    }
}

fn judge(
    kpi: &RangeKpi,
    conditions: &[Condition],
    all: &BTreeMap<String, RangeKpi>,
) -> TierOutcome {
    let value_of = |name: &str| -> Option<f64> {
        if name.is_empty() {
            kpi.value
        } else {
            all.get(name).and_then(|k| k.value)
        }
    };
    let mut outcome = TierOutcome::Achieved;
    for c in conditions {
        let ok = match *c {
            Condition::AtLeast(name, t) => value_of(name).map(|v| v >= t - 1e-12),
            Condition::AtMost(name, t) => value_of(name).map(|v| v <= t + 1e-12),
            Condition::DischargeAllowance => {
                let discharged = all
                    .get("zero_wastewater.discharged_m3")
                    .and_then(|k| k.value);
                let base = all
                    .get("zero_wastewater.reuse_rate")
                    .and_then(|k| k.denominator);
                discharged
                    .zip(base)
                    .map(|(d, b)| d <= (b * 0.005).max(0.1) + 1e-12)
            }
            Condition::RainOrDry => all.get("zero_wastewater.rain_utilisation").and_then(|k| {
                if k.quality == KpiQuality::NoDenominator {
                    Some(true)
                } else {
                    k.value.map(|v| v >= 0.95 - 1e-12)
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

/// The scorecard of a range: every KPI among `records` recomputed over the range, which
/// should hold `expected` windows of the records' period. Sorted by KPI id.
#[must_use]
pub fn scorecard(records: &[KpiRecord], expected: u32) -> Vec<RangeKpi> {
    // Last record per (kpi, window start) wins: records come in storage order.
    let mut by_window: BTreeMap<(&str, i64), &KpiRecord> = BTreeMap::new();
    for r in records {
        by_window.insert((r.kpi.as_str(), r.window.start), r);
    }
    let mut grouped: BTreeMap<&str, Vec<&KpiRecord>> = BTreeMap::new();
    for ((kpi, _), r) in by_window {
        grouped.entry(kpi).or_default().push(r);
    }
    let all: BTreeMap<String, RangeKpi> = grouped
        .into_iter()
        .map(|(k, rs)| (k.to_owned(), one_kpi(&rs, expected)))
        .collect();
    let mut out = Vec::with_capacity(all.len());
    for k in all.values() {
        let mut k = k.clone();
        let judgeable = matches!(k.quality, KpiQuality::Ok | KpiQuality::Estimated)
            && k.coverage >= MIN_COVERAGE;
        let mut unknown = false;
        let statuses: Vec<TierOutcome> = k
            .tiers
            .iter()
            .map(|t| {
                let rule = TIER_RULES
                    .iter()
                    .find(|(kpi, tier, _)| *kpi == k.kpi && *tier == t.tier);
                match rule {
                    Some((_, _, conditions)) if judgeable => judge(&k, conditions, &all),
                    Some(_) => TierOutcome::InsufficientData,
                    None => {
                        unknown = true;
                        TierOutcome::InsufficientData
                    }
                }
            })
            .collect();
        for (t, s) in k.tiers.iter_mut().zip(statuses) {
            t.status = s;
        }
        if unknown {
            k.flags.push("tier_rule_unknown".to_owned());
        }
        out.push(k);
    }
    out
}

#[cfg(test)]
mod tests {
    use fivezero_model::kpi::{self, Sum, WasteSums};
    use fivezero_model::wire::{Period, Window};

    use super::*;

    fn window(i: i64) -> Window {
        Window {
            start: i * 3_600_000,
            end: (i + 1) * 3_600_000,
            period: Period::Hour,
            tz: "Asia/Shanghai".into(),
        }
    }

    fn waste(i: i64, received: f64, recovered: f64) -> Vec<KpiRecord> {
        kpi::zero_waste(
            &window(i),
            &WasteSums {
                received: Some(Sum::exact(received)),
                stock_drawn: None,
                material: Some(Sum::exact(recovered * 0.5)),
                energy: Some(Sum::exact(recovered * 0.5)),
                landfill: Some(Sum::exact(received - recovered)),
                stock_change: None,
            },
        )
    }

    #[test]
    fn a_range_ratio_is_the_ratio_of_sums_not_the_mean_of_ratios() {
        // Window 0: 1 t in, 0.5 t recovered (50 %); window 1: 99 t in, 99 t recovered (100 %).
        let mut records = waste(0, 1.0, 0.5);
        records.extend(waste(1, 99.0, 99.0));
        let card = scorecard(&records, 2);
        let total = card
            .iter()
            .find(|k| k.kpi == "zero_waste.total_recovery_rate")
            .unwrap();
        assert!((total.value.unwrap() - 99.5 / 100.0).abs() < 1e-12);
        assert_ne!(total.value, Some(0.75));
        assert_eq!(total.numerator, Some(99.5));
        assert_eq!(total.denominator, Some(100.0));
        assert_eq!(total.quality, KpiQuality::Ok);
        assert_eq!(total.windows, 2);
        let a = total.tiers.iter().find(|t| t.tier == "A").unwrap();
        assert_eq!(a.status, TierOutcome::Achieved);
        // Z also needs landfill ≤ 1 %: 0.5 / 100 = 0.5 % and closure 0 → achieved... but
        // 99.5 % ≥ 98 % so Z is achieved on the range although window 0 alone failed it.
        let z = total.tiers.iter().find(|t| t.tier == "Z").unwrap();
        assert_eq!(z.status, TierOutcome::Achieved);
    }

    #[test]
    fn missing_windows_lower_coverage_and_withhold_tiers() {
        let records = waste(0, 10.0, 9.0);
        let card = scorecard(&records, 24);
        let total = card
            .iter()
            .find(|k| k.kpi == "zero_waste.total_recovery_rate")
            .unwrap();
        assert!((total.coverage - 1.0 / 24.0).abs() < 1e-12);
        assert_eq!(total.quality, KpiQuality::Estimated);
        assert!(
            total
                .tiers
                .iter()
                .all(|t| t.status == TierOutcome::InsufficientData)
        );
    }

    #[test]
    fn range_tiers_match_the_window_rules() {
        // On a single complete window, re-judging must give the gateway's own verdicts.
        for (received, recovered) in [(100.0, 99.5), (100.0, 85.0), (100.0, 50.0)] {
            let records = waste(0, received, recovered);
            let card = scorecard(&records, 1);
            for r in &records {
                let k = card.iter().find(|k| k.kpi == r.kpi).unwrap();
                assert_eq!(k.tiers, r.tiers, "{}", r.kpi);
                if r.denominator.is_some() {
                    assert!((k.value.unwrap() - r.value.unwrap()).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn a_range_without_windows_is_missing_never_zero() {
        let mut records = waste(0, 10.0, 9.0);
        for r in &mut records {
            r.quality = KpiQuality::InsufficientData;
            r.value = None;
        }
        let card = scorecard(&records, 1);
        assert!(
            card.iter()
                .all(|k| k.value.is_none() && k.quality == KpiQuality::InsufficientData)
        );
    }
}
