//! The KPI engine's accumulators and windows, from readings to window sums (issue 5).
//!
//! Pure: no sockets, no clock. Each test feeds readings with chosen timestamps and closes
//! windows at chosen instants.

use std::time::Duration;

use fivezero_gateway::kpi::{
    Accumulation, ClosedWindow, Engine, PointSpec, resolution, wrap_modulus,
};
use fivezero_model::kpi::{CompressedAirSums, WaterSums, compressed_air, zero_wastewater};
use fivezero_model::wire::{KpiQuality, Period, Quality, Reading, TierOutcome, Value};
use proptest::prelude::*;

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;

fn ms(s: &str) -> i64 {
    s.parse::<jiff::Timestamp>()
        .expect("timestamp")
        .as_millisecond()
}

fn reading(ts: i64, device: &str, metric: &str, value: f64) -> Reading {
    Reading {
        ts,
        device: device.into(),
        metric: metric.into(),
        value: Some(Value::Number(value)),
        quality: Quality::Good,
        reason: None,
    }
}

fn failed(ts: i64, device: &str, metric: &str) -> Reading {
    Reading {
        ts,
        device: device.into(),
        metric: metric.into(),
        value: None,
        quality: Quality::Error,
        reason: Some("timeout".into()),
    }
}

fn quarter(closed: &[ClosedWindow], start: i64) -> &ClosedWindow {
    closed
        .iter()
        .find(|w| w.window.period == Period::FifteenMinutes && w.window.start == start)
        .expect("quarter hour closed")
}

fn hour(closed: &[ClosedWindow], start: i64) -> &ClosedWindow {
    closed
        .iter()
        .find(|w| w.window.period == Period::Hour && w.window.start == start)
        .expect("hour closed")
}

fn shipped_point(profile: &str, name: &str) -> fivezero_profiles::Point {
    let path = fivezero_profiles::library_dir().join(format!("{profile}.toml"));
    fivezero_profiles::load_file(&path)
        .expect("shipped profile loads")
        .point(name)
        .expect("point exists")
        .clone()
}

#[test]
fn a_u32_counter_rolls_over_without_losing_or_inventing_energy() {
    // Given a u32 Wh register read as kWh: it wraps at 2^32 Wh = 4 294 967.296 kWh.
    let wrap = 4_294_967.296;
    let spec = PointSpec::new(
        "meter",
        "electricity.import_energy",
        Accumulation::Counter,
        Duration::from_secs(5),
    )
    .with_wrap(Some(wrap))
    .with_resolution(0.001);
    let mut e = Engine::new("Asia/Shanghai", vec![spec]).expect("engine");
    let t0 = ms("2026-06-01T00:00:00Z");
    // When it counts 1 kWh every 5 s from 5 kWh below the top, across the rollover.
    let mut v: f64 = wrap - 5.0;
    for k in 0..180 {
        e.ingest(&reading(
            t0 + k * 5_000,
            "meter",
            "electricity.import_energy",
            v,
        ));
        v = (v + 1.0) % wrap;
    }
    e.ingest(&reading(
        t0 + 900_000,
        "meter",
        "electricity.import_energy",
        v,
    ));
    // Then the quarter hour has 180 kWh, one rollover, no fault.
    let closed = e.close_due(t0 + 900_000);
    let s = quarter(&closed, t0)
        .point("meter", "electricity.import_energy")
        .expect("point");
    assert!((s.sum.value - 180.0).abs() < 1e-6, "{}", s.sum.value);
    assert_eq!(s.wraps, 1);
    assert!(!s.sum.fault && !s.sum.estimated);
    assert_eq!(s.sum.coverage, 1.0);
}

#[test]
fn an_acc32_counter_with_a_scale_factor_rolls_over_at_its_scaled_modulus() {
    // Given the SunSpec inverter's WH (acc32, Wh) with WH_SF = 1: steps of 10 Wh, wrapping at
    // 2^32 × 10 Wh = 42 949 672.96 kWh.
    let wh = shipped_point("sunspec-inverter", "WH");
    let wrap = wrap_modulus(&wh, Some(1)).expect("acc32 wraps");
    assert!((wrap - 42_949_672.96).abs() < 1e-6);
    assert!((resolution(&wh, Some(1)).expect("integer") - 0.01).abs() < 1e-12);
    let spec = PointSpec::for_profile_point("pv-roof-a", &wh, Duration::from_secs(10), Some(1))
        .expect("counter")
        .with_max_rate_per_hour(Some(110.0)); // a 100 kW inverter
    let mut e = Engine::new("Asia/Shanghai", vec![spec]).expect("engine");
    let t0 = ms("2026-06-01T02:00:00Z");
    // When it produces 0.25 kWh per 10 s (90 kW) and crosses the top of the register.
    let raw_top: u64 = 1 << 32;
    let mut raw = raw_top - 60; // 0.6 kWh below the top, in 10 Wh steps
    for k in 0..=90 {
        let kwh = raw as f64 * 0.01;
        e.ingest(&reading(t0 + k * 10_000, "pv-roof-a", "pv.energy", kwh));
        raw = (raw + 25) % raw_top;
    }
    // Then the quarter hour holds 90 × 0.25 = 22.5 kWh, with one rollover and no spike.
    let closed = e.close_due(t0 + 900_000);
    let s = quarter(&closed, t0)
        .point("pv-roof-a", "pv.energy")
        .expect("point");
    assert!((s.sum.value - 22.5).abs() < 1e-6, "{}", s.sum.value);
    assert_eq!((s.wraps, s.spikes, s.resets), (1, 0, 0));
    assert!(!s.sum.fault);
}

#[test]
fn a_meter_reset_is_flagged_and_the_kpi_says_meter_fault() {
    let specs = vec![
        PointSpec::new(
            "comp",
            "compressor.energy",
            Accumulation::Counter,
            Duration::from_secs(5),
        )
        .with_wrap(Some(4_294_967_296.0)),
        PointSpec::for_metric(
            "comp",
            "compressor.free_air_delivery",
            Duration::from_secs(5),
        )
        .expect("gauge"),
    ];
    let mut e = Engine::new("Asia/Shanghai", specs).expect("engine");
    let t0 = ms("2026-06-01T04:00:00Z");
    // The energy counter runs to 50 123 kWh, then the meter is exchanged and starts at 0.
    for k in 0..180 {
        let t = t0 + k * 5_000;
        let kwh = if k < 100 {
            50_000.0 + k as f64 * 0.15
        } else {
            (k - 100) as f64 * 0.15
        };
        e.ingest(&reading(t, "comp", "compressor.energy", kwh));
        e.ingest(&reading(t, "comp", "compressor.free_air_delivery", 18.3));
    }
    let closed = e.close_due(t0 + 900_000);
    let q = quarter(&closed, t0);
    let energy = q.point("comp", "compressor.energy").expect("point");
    assert_eq!(energy.resets, 1);
    assert!(energy.sum.fault);
    assert!(energy.flags().contains(&"meter_reset"));
    // Deltas before and after the exchange still count (99 + 79 steps of 0.15 kWh).
    assert!(
        (energy.sum.value - 178.0 * 0.15).abs() < 1e-9,
        "{}",
        energy.sum.value
    );
    let fad = q
        .point("comp", "compressor.free_air_delivery")
        .expect("point");
    let record = compressed_air(
        &q.window,
        &CompressedAirSums {
            energy: energy.input(),
            delivered: fad.input(),
        },
    );
    assert_eq!(record.quality, KpiQuality::MeterFault);
}

#[test]
fn a_meter_offline_for_a_fifth_of_a_window_has_coverage_0_8_and_insufficient_tiers() {
    let specs = vec![
        PointSpec::for_metric("fresh", "water.fresh_volume", Duration::from_secs(5))
            .expect("counter"),
        PointSpec::for_metric("reuse", "water.reused_volume", Duration::from_secs(5))
            .expect("counter"),
    ];
    let mut e = Engine::new("Asia/Shanghai", specs).expect("engine");
    let t0 = ms("2026-06-01T05:00:00Z");
    for k in 0..180 {
        let t = t0 + k * 5_000;
        e.ingest(&reading(
            t,
            "fresh",
            "water.fresh_volume",
            100.0 + k as f64 * 0.01,
        ));
        // The reuse meter answers for the first 12 minutes, then times out.
        if k < 144 {
            e.ingest(&reading(
                t,
                "reuse",
                "water.reused_volume",
                500.0 + k as f64 * 0.1,
            ));
        } else {
            e.ingest(&failed(t, "reuse", "water.reused_volume"));
        }
    }
    e.ingest(&reading(t0 + 900_000, "fresh", "water.fresh_volume", 101.8));
    let closed = e.close_due(t0 + 900_000);
    let q = quarter(&closed, t0);
    let reused = q.point("reuse", "water.reused_volume").expect("point");
    assert!(
        (reused.sum.coverage - 0.8).abs() < 1e-12,
        "{}",
        reused.sum.coverage
    );
    assert_eq!(reused.samples, 144);
    let fresh = q.point("fresh", "water.fresh_volume").expect("point");
    assert_eq!(fresh.sum.coverage, 1.0);
    let records = zero_wastewater(
        &q.window,
        &WaterSums {
            fresh: fresh.input(),
            reused: reused.input(),
            ..WaterSums::default()
        },
    );
    let reuse = records
        .iter()
        .find(|r| r.kpi == "zero_wastewater.reuse_rate")
        .expect("reuse rate");
    assert!((reuse.coverage - 0.8).abs() < 1e-12);
    assert!(
        reuse
            .tiers
            .iter()
            .all(|t| t.status == TierOutcome::InsufficientData)
    );
}

#[test]
fn power_is_integrated_but_a_gap_longer_than_twice_the_interval_is_not_bridged() {
    let spec = PointSpec::for_metric("pv", "pv.ac_power", Duration::from_secs(10)).expect("gauge");
    assert_eq!(spec.window_unit(), "kWh");
    let mut e = Engine::new("Asia/Shanghai", vec![spec]).expect("engine");
    let t0 = ms("2026-06-01T06:00:00Z");
    // 120 kW all hour, polled every 10 s, but silent from minute 20 to minute 30 (the samples
    // at 20:00 and 30:00 arrive; 59 in between do not).
    let mut t = t0;
    while t <= t0 + HOUR {
        let silent = t > t0 + 20 * MIN && t < t0 + 30 * MIN;
        if !silent {
            e.ingest(&reading(t, "pv", "pv.ac_power", 120.0));
        }
        t += 10_000;
    }
    let closed = e.close_due(t0 + HOUR);
    let h = hour(&closed, t0).point("pv", "pv.ac_power").expect("point");
    // 50 minutes at 120 kW = 100 kWh; the 10-minute gap adds nothing.
    assert!((h.sum.value - 100.0).abs() < 1e-9, "{}", h.sum.value);
    assert_eq!(h.gaps, 1);
    assert!(
        (h.sum.coverage - 301.0 / 360.0).abs() < 1e-12,
        "{}",
        h.sum.coverage
    );
    // The quarter hours agree with the hour.
    let quarters: f64 = (0..4)
        .map(|k| {
            quarter(&closed, t0 + k * 15 * MIN)
                .point("pv", "pv.ac_power")
                .expect("point")
                .sum
                .value
        })
        .sum();
    assert!((quarters - h.sum.value).abs() < 1e-9);
}

#[test]
fn berlin_dst_days_last_23_and_25_hours_and_expect_samples_accordingly() {
    let spec = PointSpec::for_metric("amb", "ambient.temperature", Duration::from_secs(60))
        .expect("gauge");
    for (day_before, day, hours) in [
        ("2026-03-28", "2026-03-29", 23),
        ("2026-10-24", "2026-10-25", 25),
    ] {
        let mut e = Engine::new("Europe/Berlin", vec![spec.clone()]).expect("engine");
        // Windows start the day before, so every hour of the changing day is seen.
        assert!(
            e.close_due(ms(&format!("{day_before}T11:00:00Z")))
                .is_empty()
        );
        let noon = ms(&format!("{day}T11:00:00Z"));
        e.ingest(&reading(noon, "amb", "ambient.temperature", 12.0));
        let closed = e.close_due(noon + 2 * 86_400_000);
        let d = closed
            .iter()
            .find(|w| w.window.period == Period::Day && w.window.end > noon)
            .expect("day closed");
        assert_eq!(d.window.end - d.window.start, hours * HOUR, "{day}");
        assert_eq!(d.window.tz, "Europe/Berlin");
        assert_eq!(d.points[0].expected, (hours * 60) as f64);
        let hours_in_day = closed
            .iter()
            .filter(|w| {
                w.window.period == Period::Hour
                    && w.window.start >= d.window.start
                    && w.window.end <= d.window.end
            })
            .count();
        assert_eq!(hours_in_day, hours as usize, "{day}");
    }
}

#[test]
fn shanghai_windows_are_aligned_at_local_midnight() {
    let spec = PointSpec::for_metric("amb", "ambient.temperature", Duration::from_secs(60))
        .expect("gauge");
    let mut e = Engine::new("Asia/Shanghai", vec![spec]).expect("engine");
    // 10:07 local on 1 June.
    let t = ms("2026-06-01T02:07:00Z");
    e.ingest(&reading(t, "amb", "ambient.temperature", 25.0));
    let closed = e.close_due(ms("2026-06-02T16:00:00Z"));
    let days: Vec<_> = closed
        .iter()
        .filter(|w| w.window.period == Period::Day)
        .collect();
    assert_eq!(days.len(), 2);
    assert_eq!(days[0].window.start, ms("2026-05-31T16:00:00Z"));
    assert_eq!(days[0].window.end, ms("2026-06-01T16:00:00Z"));
    assert_eq!(days[1].window.end, ms("2026-06-02T16:00:00Z"));
    assert!(days[0].points[0].has_value);
    assert!(!days[1].points[0].has_value, "a silent day has no value");
    assert_eq!(days[1].points[0].sum.coverage, 0.0);
    let first_quarter = closed
        .iter()
        .find(|w| w.window.period == Period::FifteenMinutes)
        .expect("quarter");
    assert_eq!(first_quarter.window.start, ms("2026-06-01T02:00:00Z"));
}

/// A plant's hour: an energy counter, a power gauge and a temperature, polled every 5 s,
/// with a failed poll now and then and a closing call every minute.
fn plant_hour(t0: i64) -> Vec<Event> {
    let mut events = Vec::new();
    for k in 0..=720 {
        let t = t0 + k * 5_000;
        let kf = k as f64;
        if k % 97 == 13 {
            events.push(Event::Read(failed(t, "meter", "electricity.import_energy")));
        } else {
            events.push(Event::Read(reading(
                t,
                "meter",
                "electricity.import_energy",
                (65_530.0 + kf * 0.07) % 65_536.0,
            )));
        }
        events.push(Event::Read(reading(
            t,
            "pv",
            "pv.ac_power",
            50.0 + 40.0 * (kf / 50.0).sin(),
        )));
        events.push(Event::Read(reading(
            t,
            "boiler",
            "stack.flue_gas_temperature",
            40.0 + (kf / 30.0).cos(),
        )));
        if k % 12 == 11 {
            events.push(Event::Close(t - 5_000));
        }
    }
    events.push(Event::Close(t0 + HOUR));
    events
}

fn plant_specs() -> Vec<PointSpec> {
    vec![
        PointSpec::new(
            "meter",
            "electricity.import_energy",
            Accumulation::Counter,
            Duration::from_secs(5),
        )
        .with_wrap(Some(65_536.0))
        .with_max_rate_per_hour(Some(100.0))
        .with_resolution(0.01),
        PointSpec::for_metric("pv", "pv.ac_power", Duration::from_secs(5)).expect("gauge"),
        PointSpec::for_metric(
            "boiler",
            "stack.flue_gas_temperature",
            Duration::from_secs(5),
        )
        .expect("gauge"),
    ]
}

#[derive(Debug, Clone)]
enum Event {
    Read(Reading),
    Close(i64),
}

/// Runs `events` through an engine, saving and restoring it (a restart) before event
/// `restart_at` when given; returns every closed window.
fn run(
    tz: &str,
    specs: &[PointSpec],
    events: &[Event],
    restart_at: Option<usize>,
) -> Vec<ClosedWindow> {
    let mut e = Engine::new(tz, specs.to_vec()).expect("engine");
    let mut out = Vec::new();
    for (i, ev) in events.iter().enumerate() {
        if restart_at == Some(i) {
            let bytes = e.save().expect("save");
            drop(e);
            e = Engine::restore(tz, specs.to_vec(), &bytes).expect("restore");
        }
        match ev {
            Event::Read(r) => {
                e.ingest(r);
            }
            Event::Close(now) => out.extend(e.close_due(*now)),
        }
    }
    out
}

#[test]
fn a_restart_in_the_middle_of_a_window_gives_the_same_totals() {
    let t0 = ms("2026-06-01T08:00:00Z");
    let events = plant_hour(t0);
    let specs = plant_specs();
    let plain = run("Asia/Shanghai", &specs, &events, None);
    // Restart at minute 37, in the middle of the third quarter hour.
    let at = events
        .iter()
        .position(|e| matches!(e, Event::Read(r) if r.ts >= t0 + 37 * MIN))
        .expect("minute 37");
    let restarted = run("Asia/Shanghai", &specs, &events, Some(at));
    assert_eq!(plain, restarted);
    let h = hour(&plain, t0);
    let energy = h
        .point("meter", "electricity.import_energy")
        .expect("point");
    // 720 steps of 0.07 kWh, across one rollover of the 16-bit register.
    assert!(
        (energy.sum.value - 720.0 * 0.07).abs() < 1e-6,
        "{}",
        energy.sum.value
    );
    assert_eq!(energy.wraps, 1);
    assert!(!energy.sum.fault);
}

fn arb_events() -> impl Strategy<Value = Vec<Event>> {
    // Per step: seconds to the next poll, counter increase, a rare event on the counter
    // (0 = reset to zero, 1 = glitch), failed poll, power, temperature, close now.
    let step = (
        1i64..40,
        0.0f64..0.5,
        0u8..40,
        0u8..8,
        0.0f64..100.0,
        20.0f64..60.0,
        0u8..6,
    );
    prop::collection::vec(step, 0..400).prop_map(|steps| {
        let mut t = ms("2026-10-24T23:00:00Z"); // runs into the Berlin autumn change
        let mut counter = 900.0;
        let mut events = Vec::new();
        for (dt, inc, rare, fail, power, temp, close) in steps {
            t += dt * 1_000;
            counter = (counter + inc) % 1_000.0;
            let mut value = counter;
            if rare == 0 {
                counter = 0.0;
                value = 0.0;
            } else if rare == 1 {
                value = counter + 400.0;
            }
            if fail == 0 {
                events.push(Event::Read(failed(t, "meter", "flow.volume")));
            } else {
                events.push(Event::Read(reading(t, "meter", "flow.volume", value)));
            }
            events.push(Event::Read(reading(t, "pv", "pv.ac_power", power)));
            events.push(Event::Read(reading(t, "boiler", "stack.o2", temp)));
            if close == 0 {
                events.push(Event::Close(t - 10_000));
            }
        }
        events.push(Event::Close(t + 2 * 86_400_000));
        events
    })
}

fn arb_specs() -> Vec<PointSpec> {
    vec![
        PointSpec::new(
            "meter",
            "flow.volume",
            Accumulation::Counter,
            Duration::from_secs(10),
        )
        .with_wrap(Some(1_000.0))
        .with_max_rate_per_hour(Some(360.0)),
        PointSpec::for_metric("pv", "pv.ac_power", Duration::from_secs(10)).expect("gauge"),
        PointSpec::for_metric("boiler", "stack.o2", Duration::from_secs(10)).expect("gauge"),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Splitting the stream at any point with a save and restore changes no window.
    #[test]
    fn a_save_and_restore_anywhere_gives_the_same_sums(
        events in arb_events(),
        split in 0.0f64..1.0,
    ) {
        let specs = arb_specs();
        let at = ((events.len() as f64) * split) as usize;
        let plain = run("Europe/Berlin", &specs, &events, None);
        let restarted = run("Europe/Berlin", &specs, &events, Some(at));
        prop_assert_eq!(plain, restarted);
    }

    /// Counters conserve: the quarter hours of a period add up to its hour and its day,
    /// whatever the gaps, resets and glitches.
    #[test]
    fn quarter_hours_add_up_to_hours_and_days(events in arb_events()) {
        let specs = arb_specs();
        let closed = run("Europe/Berlin", &specs, &events, None);
        for longer in closed.iter().filter(|w| w.window.period != Period::FifteenMinutes) {
            for (i, p) in longer.points.iter().enumerate() {
                if p.accumulation == Accumulation::Mean {
                    continue;
                }
                let parts: f64 = closed
                    .iter()
                    .filter(|w| {
                        w.window.period == Period::FifteenMinutes
                            && w.window.start >= longer.window.start
                            && w.window.end <= longer.window.end
                    })
                    .map(|w| w.points[i].sum.value)
                    .sum();
                prop_assert!(
                    (parts - p.sum.value).abs() <= 1e-6 * (1.0 + p.sum.value.abs()),
                    "{} {}: {} vs {}", longer.window.period, p.metric, parts, p.sum.value
                );
            }
        }
    }
}
