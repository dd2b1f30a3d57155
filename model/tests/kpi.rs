//! The KPI formulas against the test vectors of the project's KPI reference (§4) and the rules
//! every KPI follows (missing is missing, no denominator, coverage and tiers).

use fivezero_model::kpi::{
    self, Coefficient, CompressedAirSums, EnergySums, Factors, Fuel, HeatSums, SteamSums, Sum,
    WasteSums, WaterSums,
};
use fivezero_model::wire::{KpiQuality, KpiRecord, Period, TierOutcome, Window};

fn day() -> Window {
    Window {
        start: 1_782_057_600_000,
        end: 1_782_144_000_000,
        period: Period::Day,
        tz: "Asia/Shanghai".into(),
    }
}

fn find<'a>(records: &'a [KpiRecord], id: &str) -> &'a KpiRecord {
    records
        .iter()
        .find(|r| r.kpi == id)
        .unwrap_or_else(|| panic!("no {id} in {records:#?}"))
}

fn tier(r: &KpiRecord, name: &str) -> TierOutcome {
    r.tiers
        .iter()
        .find(|t| t.tier == name)
        .unwrap_or_else(|| panic!("{} has no tier {name}", r.kpi))
        .status
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() <= 1e-9 * b.abs().max(1.0))
}

fn x(v: f64) -> Option<Sum> {
    Some(Sum::exact(v))
}

fn energy(generated: f64, import: f64, export: f64) -> EnergySums {
    EnergySums {
        renewable_generated: x(generated),
        grid_import: x(import),
        grid_export: x(export),
        green_purchased: None,
    }
}

#[test]
fn avoided_emissions_of_45000_kwh_pv_are_23877_kg_at_the_2023_grid_factor() {
    let records = kpi::energy_and_carbon(
        &day(),
        &energy(45_000.0, 0.0, 0.0),
        &[],
        &Factors::default(),
    );
    let avoided = find(&records, "carbon.avoided_t");
    assert!(close(avoided.value, 23.877), "{avoided:?}");
    assert_eq!(avoided.unit, "tCO2");
    assert_eq!(avoided.factors[0].value, 0.5306);
    assert_eq!(avoided.quality, KpiQuality::Ok);

    let mut old = Factors::default();
    old.grid.value = 0.7035;
    let records = kpi::energy_and_carbon(&day(), &energy(45_000.0, 0.0, 0.0), &[], &old);
    assert!(close(find(&records, "carbon.avoided_t").value, 31.6575));
}

#[test]
fn avoided_emissions_are_never_subtracted_from_scope_2() {
    let records = kpi::energy_and_carbon(
        &day(),
        &energy(45_000.0, 1_000.0, 0.0),
        &[],
        &Factors::default(),
    );
    assert!(close(
        find(&records, "carbon.scope2_location_t").value,
        0.5306
    ));
}

#[test]
fn a_megawatt_hour_of_grid_electricity_is_122_9_kgce_and_a_gigajoule_of_heat_34_12_kgce() {
    let f = Factors::default();
    let records = kpi::energy_and_carbon(&day(), &energy(0.0, 1_000.0, 0.0), &[], &f);
    let intensity = find(&records, "carbon.intensity_t_per_tce");
    assert!(close(intensity.denominator, 0.1229), "{intensity:?}");
    assert!(close(
        Some(kpi::heat_kwh_to_tce(1e6 / 3600.0, &f)),
        0.034_12
    ));
}

fn fuel(name: &'static str, gj: f64, co2_kg_per_tj: f64, biogenic: bool) -> Fuel {
    Fuel {
        name,
        quantity: x(gj * 1000.0),
        ncv_mj: Coefficient {
            value: 1.0,
            unit: "MJ/MJ",
            source: "quantity given in MJ".into(),
        },
        co2_kg_per_tj: Coefficient {
            value: co2_kg_per_tj,
            unit: "kgCO2/TJ",
            source: "IPCC 2006 Vol. 2 Table 1.4".into(),
        },
        biogenic,
    }
}

#[test]
fn a_hundred_gigajoules_of_gas_emit_5_61_t_and_of_diesel_7_41_t() {
    let f = Factors::default();
    let gas = [fuel("natural_gas", 100.0, 56_100.0, false)];
    let r = kpi::energy_and_carbon(&day(), &energy(0.0, 0.0, 0.0), &gas, &f);
    assert!(close(find(&r, "carbon.scope1_t").value, 5.61));
    let diesel = [fuel("diesel", 100.0, 74_100.0, false)];
    let r = kpi::energy_and_carbon(&day(), &energy(0.0, 0.0, 0.0), &diesel, &f);
    assert!(close(find(&r, "carbon.scope1_t").value, 7.41));
}

#[test]
fn biomass_is_a_memo_item_outside_scope_1_and_fossil_energy() {
    let wood = [fuel("biomass", 100.0, 112_000.0, true)];
    let r = kpi::energy_and_carbon(&day(), &energy(0.0, 0.0, 0.0), &wood, &Factors::default());
    assert!(close(find(&r, "carbon.scope1_t").value, 0.0));
    assert!(close(find(&r, "zero_energy.fossil_energy_tce").value, 0.0));
}

#[test]
fn compressor_specific_power_of_110_kw_at_18_3_m3_per_min_is_6_01() {
    let r = kpi::compressed_air(
        &day(),
        &CompressedAirSums {
            energy: x(110.0),
            delivered: x(18.3 * 60.0),
        },
    );
    let v = r.value.unwrap();
    assert!((v - 6.01).abs() < 0.005, "{v}");
    assert_eq!(r.unit, "kW/(m³/min)");
}

#[test]
fn the_reference_waste_balance_achieves_tier_z() {
    let r = kpi::zero_waste(
        &day(),
        &WasteSums {
            received: x(10_000.0),
            stock_drawn: None,
            material: x(9_200.0),
            energy: x(700.0),
            landfill: x(80.0),
            stock_change: x(20.0),
        },
    );
    let total = find(&r, "zero_waste.total_recovery_rate");
    assert!(close(total.value, 0.99), "{total:?}");
    assert!(close(total.numerator, 9_900.0));
    assert!(close(total.denominator, 10_000.0));
    assert_eq!(tier(total, "A"), TierOutcome::Achieved);
    assert_eq!(tier(total, "Z"), TierOutcome::Achieved);
    assert!(close(find(&r, "zero_waste.landfill_share").value, 0.008));
    assert!(close(
        find(&r, "zero_waste.mass_balance_closure").value,
        0.0
    ));
    assert!(close(
        find(&r, "zero_waste.material_recovery_rate").value,
        0.92
    ));
    assert!(close(
        find(&r, "zero_waste.energy_recovery_share").value,
        0.07
    ));
}

#[test]
fn a_landfill_share_above_one_percent_misses_tier_z_but_not_a() {
    let r = kpi::zero_waste(
        &day(),
        &WasteSums {
            received: x(10_000.0),
            material: x(9_000.0),
            energy: x(800.0),
            landfill: x(200.0),
            ..WasteSums::default()
        },
    );
    let total = find(&r, "zero_waste.total_recovery_rate");
    assert_eq!(tier(total, "A"), TierOutcome::Achieved);
    assert_eq!(tier(total, "Z"), TierOutcome::NotAchieved);
}

#[test]
fn self_sufficiency_at_night_has_no_denominator_not_zero() {
    let r = kpi::energy_and_carbon(&day(), &energy(0.0, 0.0, 0.0), &[], &Factors::default());
    let ss = find(&r, "zero_energy.self_sufficiency");
    assert_eq!(ss.quality, KpiQuality::NoDenominator);
    assert_eq!(ss.value, None);
    let sc = find(&r, "zero_energy.self_consumption");
    assert_eq!(sc.quality, KpiQuality::NoDenominator);
}

#[test]
fn self_sufficiency_counts_generation_used_on_site() {
    let r = kpi::energy_and_carbon(
        &day(),
        &energy(800.0, 400.0, 200.0),
        &[],
        &Factors::default(),
    );
    // Used on site 600 of a load of 800 + 400 - 200 = 1000.
    assert!(close(find(&r, "zero_energy.self_sufficiency").value, 0.6));
    assert!(close(find(&r, "zero_energy.self_consumption").value, 0.75));
    assert!(close(
        find(&r, "zero_energy.net_grid_import_kwh").value,
        200.0
    ));
}

#[test]
fn a_meter_offline_for_a_fifth_of_the_window_gives_coverage_0_8_and_no_tier_verdict() {
    let mut reused = Sum::exact(950.0);
    reused.coverage = 0.8;
    reused.estimated = true;
    let r = kpi::zero_wastewater(
        &day(),
        &WaterSums {
            fresh: x(50.0),
            reused: Some(reused),
            discharged: x(0.0),
            rain_collected: x(0.0),
            rain_used: x(0.0),
        },
    );
    let reuse = find(&r, "zero_wastewater.reuse_rate");
    assert!((reuse.coverage - 0.8).abs() < 1e-12);
    assert_eq!(reuse.quality, KpiQuality::Estimated);
    assert!(close(reuse.value, 0.95));
    assert_eq!(tier(reuse, "A"), TierOutcome::InsufficientData);
    assert_eq!(tier(reuse, "Z"), TierOutcome::InsufficientData);
}

#[test]
fn a_missing_input_makes_the_kpi_missing_never_zero() {
    let r = kpi::zero_wastewater(
        &day(),
        &WaterSums {
            fresh: None,
            reused: x(950.0),
            ..WaterSums::default()
        },
    );
    let reuse = find(&r, "zero_wastewater.reuse_rate");
    assert_eq!(reuse.value, None);
    assert_eq!(reuse.quality, KpiQuality::InsufficientData);
    assert_eq!(tier(reuse, "A"), TierOutcome::InsufficientData);
}

#[test]
fn water_reuse_of_95_percent_with_no_discharge_and_a_dry_day_achieves_tier_z() {
    let r = kpi::zero_wastewater(
        &day(),
        &WaterSums {
            fresh: x(50.0),
            reused: x(950.0),
            discharged: x(0.0),
            rain_collected: x(0.0),
            rain_used: x(0.0),
        },
    );
    let reuse = find(&r, "zero_wastewater.reuse_rate");
    assert_eq!(tier(reuse, "A"), TierOutcome::Achieved);
    assert_eq!(tier(reuse, "Z"), TierOutcome::Achieved);
    assert_eq!(
        find(&r, "zero_wastewater.rain_utilisation").quality,
        KpiQuality::NoDenominator
    );
}

#[test]
fn discharging_more_than_half_a_percent_misses_tier_z() {
    let r = kpi::zero_wastewater(
        &day(),
        &WaterSums {
            fresh: x(50.0),
            reused: x(950.0),
            discharged: x(6.0),
            rain_collected: x(0.0),
            rain_used: x(0.0),
        },
    );
    assert_eq!(
        tier(find(&r, "zero_wastewater.reuse_rate"), "Z"),
        TierOutcome::NotAchieved
    );
    assert_eq!(
        tier(find(&r, "zero_wastewater.discharged_m3"), "Z"),
        TierOutcome::NotAchieved
    );
}

#[test]
fn the_reference_heat_recovery_of_90_percent_at_40_degrees_achieves_tier_z() {
    let r = kpi::zero_waste_heat(
        &day(),
        &HeatSums {
            recovered: x(9_000.0),
            stack_loss: x(1_000.0),
            exit_temperature: x(40.0),
            exit_within_limit_share: x(0.97),
        },
    );
    let rate = find(&r, "zero_waste_heat.recovery_rate");
    assert!(close(rate.value, 0.9));
    assert_eq!(tier(rate, "A"), TierOutcome::Achieved);
    assert_eq!(tier(rate, "Z"), TierOutcome::Achieved);
    assert!(close(
        find(&r, "zero_waste_heat.flue_exit_temperature").value,
        40.0
    ));
}

#[test]
fn a_steam_cascade_venting_three_percent_misses_tier_z() {
    let r = kpi::zero_exhaust(
        &day(),
        &SteamSums {
            generated: x(100.0),
            used: x(96.0),
            vented: x(3.0),
        },
    );
    let u = find(&r, "zero_exhaust.steam_cascade_utilisation");
    assert!(close(u.value, 0.96));
    assert_eq!(tier(u, "Z"), TierOutcome::NotAchieved);
    assert!(u.flags.contains(&"mass_basis".to_owned()));
}

#[test]
fn a_meter_fault_is_reported_as_such_and_never_judged() {
    let mut faulty = Sum::exact(9_200.0);
    faulty.fault = true;
    let r = kpi::zero_waste(
        &day(),
        &WasteSums {
            received: x(10_000.0),
            material: Some(faulty),
            energy: x(700.0),
            landfill: x(80.0),
            ..WasteSums::default()
        },
    );
    let total = find(&r, "zero_waste.total_recovery_rate");
    assert_eq!(total.quality, KpiQuality::MeterFault);
    assert_eq!(tier(total, "Z"), TierOutcome::InsufficientData);
}

#[test]
fn a_range_is_recomputed_from_sums_not_by_averaging_ratios() {
    // Two days: 90 % of 1000 t, then 50 % of 100 t. The range is 950/1100, not 70 %.
    let sums = |received: f64, material: f64| WasteSums {
        received: x(received),
        material: x(material),
        energy: x(0.0),
        landfill: x(received - material),
        ..WasteSums::default()
    };
    let a = sums(1000.0, 900.0);
    let b = sums(100.0, 50.0);
    let range = WasteSums {
        received: kpi::total(&[a.received, b.received]),
        material: kpi::total(&[a.material, b.material]),
        energy: kpi::total(&[a.energy, b.energy]),
        landfill: kpi::total(&[a.landfill, b.landfill]),
        ..WasteSums::default()
    };
    let r = kpi::zero_waste(&day(), &range);
    assert!(close(
        find(&r, "zero_waste.total_recovery_rate").value,
        950.0 / 1100.0
    ));
}

#[test]
fn every_record_passes_wire_validation() {
    let w = day();
    let mut records = kpi::zero_waste(&w, &WasteSums::default());
    records.extend(kpi::energy_and_carbon(
        &w,
        &energy(1.0, 2.0, 0.5),
        &[],
        &Factors::default(),
    ));
    records.extend(kpi::zero_waste_heat(&w, &HeatSums::default()));
    let batch = fivezero_model::wire::KpiBatch {
        schema: fivezero_model::wire::SCHEMA_VERSION,
        gateway: "gw".into(),
        site: "site".into(),
        epoch: fivezero_model::wire::Epoch(7),
        first_seq: 1,
        count: u32::try_from(records.len()).unwrap(),
        records,
    };
    batch.validate(w.start).expect("valid");
}

// ------------------------------------------------------------------------------------------
// The exported tier rules (what the cloud sink judges recomputed ranges with)
// ------------------------------------------------------------------------------------------

use fivezero_model::kpi::{TierCondition, TierFacts};

#[test]
fn the_tier_table_holds_the_thresholds_of_the_design() {
    use TierCondition::{AtLeast, AtMost, DischargeAllowance, RainOrDry};
    let rule = |kpi: &str, t: &str| kpi::tier_rule(kpi, t).unwrap().conditions.to_vec();
    let total = "zero_waste.total_recovery_rate";
    assert_eq!(rule(total, "A"), [AtLeast(total, 0.80)]);
    assert_eq!(
        rule(total, "Z"),
        [
            AtLeast(total, 0.98),
            AtMost("zero_waste.landfill_share", 0.01),
            AtMost("zero_waste.mass_balance_closure", 0.02)
        ]
    );
    let reuse = "zero_wastewater.reuse_rate";
    assert_eq!(rule(reuse, "A"), [AtLeast(reuse, 0.80)]);
    assert_eq!(
        rule(reuse, "Z"),
        [AtLeast(reuse, 0.90), DischargeAllowance, RainOrDry]
    );
    let heat = "zero_waste_heat.recovery_rate";
    assert_eq!(rule(heat, "A"), [AtLeast(heat, 0.50)]);
    assert_eq!(
        rule("zero_energy.clean_energy_share", "A"),
        [AtLeast("zero_energy.clean_energy_share", 0.90)]
    );
    assert_eq!(
        rule("carbon.intensity_t_per_tce", "A"),
        [AtMost("carbon.intensity_t_per_tce", 0.20)]
    );
    // Zero exhaust gas has no tier A; self-sufficiency is reported, never judged.
    assert!(kpi::tier_rule("zero_exhaust.steam_cascade_utilisation", "A").is_none());
    assert_eq!(kpi::tier_rules("zero_energy.self_sufficiency").count(), 0);
    // Every KPI named by a condition has records of its own.
    for r in kpi::TIER_RULES {
        for c in r.conditions {
            if let AtLeast(k, _) | AtMost(k, _) = c {
                assert!(kpi::tier_rules(k).count() > 0, "{k} has no rule of its own");
            }
        }
        // A before Z.
        let tiers: Vec<&str> = kpi::tier_rules(r.kpi).map(|r| r.tier).collect();
        let mut sorted = tiers.clone();
        sorted.sort_unstable();
        assert_eq!(tiers, sorted, "{}", r.kpi);
    }
}

fn facts(value: Option<f64>, denominator: Option<f64>, quality: KpiQuality) -> TierFacts {
    TierFacts {
        value,
        denominator,
        quality,
    }
}

#[test]
fn a_threshold_is_met_exactly_and_missed_by_a_hair() {
    let a = kpi::tier_rule("zero_waste.total_recovery_rate", "A").unwrap();
    let at = |v: f64| kpi::judge_tier(a, |_| Some(facts(Some(v), Some(1.0), KpiQuality::Ok)));
    assert_eq!(at(0.80), TierOutcome::Achieved);
    assert_eq!(at(0.8 - 1e-15), TierOutcome::Achieved); // within the tolerance
    assert_eq!(at(0.8 - 1e-9), TierOutcome::NotAchieved);
    assert_eq!(kpi::judge_tier(a, |_| None), TierOutcome::InsufficientData);
}

#[test]
fn the_wastewater_z_tier_allows_a_small_discharge_and_a_dry_window() {
    let z = kpi::tier_rule("zero_wastewater.reuse_rate", "Z").unwrap();
    let judge = |discharged: f64, rain: TierFacts| {
        kpi::judge_tier(z, |k| match k {
            // 950 m³ reused of 1000 m³: allowance max(0.5 % × 1000, 0.1) = 5 m³.
            "zero_wastewater.reuse_rate" => Some(facts(Some(0.95), Some(1000.0), KpiQuality::Ok)),
            "zero_wastewater.discharged_m3" => Some(facts(Some(discharged), None, KpiQuality::Ok)),
            "zero_wastewater.rain_utilisation" => Some(rain),
            _ => None,
        })
    };
    let dry = facts(None, Some(0.0), KpiQuality::NoDenominator);
    let rained = |v| facts(Some(v), Some(10.0), KpiQuality::Ok);
    assert_eq!(judge(5.0, dry), TierOutcome::Achieved);
    assert_eq!(judge(5.1, dry), TierOutcome::NotAchieved);
    assert_eq!(judge(0.0, rained(0.95)), TierOutcome::Achieved);
    assert_eq!(judge(0.0, rained(0.90)), TierOutcome::NotAchieved);
    // Rain meters missing: no verdict.
    assert_eq!(
        judge(0.0, facts(None, None, KpiQuality::InsufficientData)),
        TierOutcome::InsufficientData
    );
}

fn any_sum() -> impl Strategy<Value = Option<Sum>> {
    let value = prop_oneof![
        Just(0.0),
        Just(1e-4),
        0.0..2.0f64,
        0.0..1000.0f64,
        prop::sample::select(vec![0.01, 0.02, 0.5, 0.8, 0.9, 0.95, 0.98, 1.0, 100.0])
    ];
    let coverage = prop::sample::select(vec![1.0, 1.0, 0.96, 0.95, 0.94, 0.5]);
    prop::option::weighted(
        0.9,
        (
            value,
            coverage,
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.05),
        )
            .prop_map(|(value, coverage, estimated, fault)| Sum {
                value,
                coverage,
                estimated,
                fault,
            }),
    )
}

fn window_records() -> impl Strategy<Value = Vec<KpiRecord>> {
    (
        prop::collection::vec(any_sum(), 6),
        prop::collection::vec(any_sum(), 5),
        prop::collection::vec(any_sum(), 3),
        prop::collection::vec(any_sum(), 4),
        prop::collection::vec(any_sum(), 4),
    )
        .prop_map(|(w, h2o, st, he, en)| {
            let mut out = kpi::zero_waste(
                &day(),
                &WasteSums {
                    received: w[0],
                    stock_drawn: w[1],
                    material: w[2],
                    energy: w[3],
                    landfill: w[4],
                    stock_change: w[5],
                },
            );
            out.extend(kpi::zero_wastewater(
                &day(),
                &WaterSums {
                    fresh: h2o[0],
                    reused: h2o[1],
                    discharged: h2o[2],
                    rain_collected: h2o[3],
                    rain_used: h2o[4],
                },
            ));
            out.extend(kpi::zero_exhaust(
                &day(),
                &SteamSums {
                    generated: st[0],
                    used: st[1],
                    vented: st[2],
                },
            ));
            out.extend(kpi::zero_waste_heat(
                &day(),
                &HeatSums {
                    recovered: he[0],
                    stack_loss: he[1],
                    exit_temperature: he[2],
                    exit_within_limit_share: he[3],
                },
            ));
            out.extend(kpi::energy_and_carbon(
                &day(),
                &EnergySums {
                    renewable_generated: en[0],
                    grid_import: en[1],
                    grid_export: en[2],
                    green_purchased: en[3],
                },
                &[],
                &Factors::default(),
            ));
            out
        })
}

use proptest::prelude::*;

proptest! {
    /// What the sink relies on: a window's tiers are the exported rules judged on the
    /// window's own records, so judging a range's sums with the same rules is consistent.
    #[test]
    fn every_window_verdict_is_the_exported_rule_judged_on_the_windows_records(
        records in window_records()
    ) {
        let lookup = |k: &str| records.iter().find(|r| r.kpi == k).map(TierFacts::from);
        for r in &records {
            let rules: Vec<&str> = kpi::tier_rules(&r.kpi).map(|x| x.tier).collect();
            let tiers: Vec<&str> = r.tiers.iter().map(|t| t.tier.as_str()).collect();
            prop_assert_eq!(&tiers, &rules, "{}", r.kpi);
            for t in &r.tiers {
                let rule = kpi::tier_rule(&r.kpi, &t.tier).unwrap();
                let expected = if kpi::judgeable(r.quality, r.coverage) {
                    kpi::judge_tier(rule, lookup)
                } else {
                    TierOutcome::InsufficientData
                };
                prop_assert_eq!(t.status, expected, "{} {}", r.kpi, t.tier);
            }
        }
    }
}
