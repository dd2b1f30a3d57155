//! A simulated day of the Green Sail park through the gateway's KPI path, against KPIs
//! computed independently from the raw readings a subscriber received.
//!
//! The simulator's physics (`fivezero_sim::plant::Plant`, the model the simulator serves) is
//! stepped through midsummer day 2026-06-21 in Asia/Shanghai in simulated time, and every
//! point a role uses is sampled at its poll interval as the poller would decode it (values in
//! canonical units; the Modbus leg is covered by the poller's tests, rollover by the engine's).
//! Each poll cycle is committed to a real buffer and then given to the daemon's [`Site`], as
//! the daemon's hand-over does; the records of the windows it closes are committed with the
//! engine state, as the KPI task does. The gateway's publisher then sends the buffer to the
//! machine's Mosquitto (`FIVEZERO_TEST_MQTT`) and a subscriber takes every batch and KPI batch
//! (without the variable, the messages are read from the buffer as the publisher sends them).
//! Then:
//!
//! - every reading arrives, and the day's published KPIs equal those computed here from the
//!   readings received, by plain arithmetic (counter = last − first, rates and means by the
//!   trapezoid rule), to 1e-9;
//! - they sit near the reference park's figures: total recovery ≈ 98–99 %, flue gas exit
//!   ≈ 40 °C, heat recovery ≈ 90 %, and each tier judged;
//! - the 96 quarter hours and 24 hours of the day add up to the day's numerators and
//!   denominators (the sink recomputes ranges this way, never averaging ratios);
//! - a restart in the middle of a window (state saved, engine rebuilt from it) gives exactly
//!   the same records.

mod common;

#[path = "common/publish_kit.rs"]
mod kit;

use std::collections::BTreeMap;

use std::time::Duration;

use fivezero_gateway::buffer::{Buffer, BufferOptions};
use fivezero_gateway::config::{Config, MqttUrl, Synchronous};
use fivezero_gateway::kpi::task::{Site, specs};
use fivezero_gateway::kpi::{Accumulation, PointSpec};
use fivezero_gateway::outbox::{Lane, Limits, Outbox};
use fivezero_gateway::poll::DeviceReadings;
use fivezero_gateway::publish::{Publisher, PublisherConfig};
use fivezero_model::topic::TopicKind;
use fivezero_model::topic::Topics;
use fivezero_model::wire::{
    self, KpiQuality, KpiRecord, Period, Quality, Reading, TierOutcome, Value,
};
use fivezero_sim::Physics;
use fivezero_sim::plant::Plant;
use fivezero_sim::scenario::Scenario;

/// Local midnight of 2026-06-21 in Asia/Shanghai, UTC ms.
const DAY_START: i64 = 1_781_971_200_000;
const DAY_MS: i64 = 86_400_000;
/// Sampling step of the test: the devices' poll interval.
const STEP_MS: i64 = 10_000;

/// The roles of the park's devices (name, roles).
const ROLES: &[(&str, &str)] = &[
    ("grid-meter", r#""grid""#),
    ("pv-roof-a", r#""pv""#),
    ("pv-roof-b", r#""pv""#),
    ("pv-facade-south", r#""pv""#),
    ("boiler", r#""boiler_running""#),
    ("heat-recovery", r#""heat_recovered""#),
    ("stack", r#"["flue_gas_exit_temperature", "flue_gas_flow"]"#),
    ("steam-generated", r#""steam_generated""#),
    ("steam-stage-1-maglev", r#""steam_used""#),
    ("steam-stage-2-curing-desalination", r#""steam_used""#),
    ("steam-stage-3-autoclaves", r#""steam_used""#),
    ("steam-vent", r#""steam_vented""#),
    (
        "compressed-air",
        r#"["compressor_energy", "air_delivered"]"#,
    ),
    (
        "sorting-line",
        r#"["waste_received", "stock_drawn", "material_recovered", "energy_recovery", "landfilled"]"#,
    ),
    ("water-fresh", r#""fresh_water""#),
    ("water-reused", r#""reused_water""#),
    ("rain-collected", r#""rain_collected""#),
    ("rain-used", r#""rain_used""#),
    ("water-discharged", r#""discharged_water""#),
    ("ev-loader-1", r#""ev_charging""#),
    ("ev-mixer-1", r#""ev_charging""#),
];

fn scenario() -> Scenario {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../simulator/scenarios/greensail.toml");
    Scenario::load(&file, &fivezero_profiles::library_dir()).expect("the scenario loads")
}

/// The gateway config of the park: every device with a role, polled every 10 s.
fn config(scenario: &Scenario, name: &str) -> Config {
    let mut text = String::from(
        r#"
[gateway]
id = "gw-kpi-day"
site = "qingdao-greensail"

[kpi]
time_zone = "Asia/Shanghai"

[kpi.factors.flue_gas_cp]
value = 1.38
unit = "kJ/(Nm³·K)"
year = 2026
publisher = "fivezero test"
document = "wet flue gas, the simulator's heat balance"
"#,
    );
    for (i, (device, roles)) in ROLES.iter().enumerate() {
        let spec = scenario
            .devices
            .iter()
            .find(|d| d.name == *device)
            .unwrap_or_else(|| panic!("{device} is in the scenario"));
        text.push_str(&format!(
            "\n[[device]]\nname = \"{device}\"\nprofile = \"{}\"\ntcp = \"127.0.0.1:5020\"\nunit = {}\ninterval = \"10s\"\nrole = {roles}\n",
            spec.profile.id,
            i + 1
        ));
    }
    let file = common::scratch(name).join("gateway.toml");
    std::fs::write(&file, text).unwrap();
    Config::load_with_env(&file, Vec::new()).unwrap_or_else(|e| panic!("{e}"))
}

/// The raw readings of the day, sampled from the physics at each point's interval, from
/// local midnight to one step past the next midnight.
fn readings(scenario: &Scenario, specs: &[PointSpec]) -> Vec<Reading> {
    let mut plant = Plant::new(scenario).expect("the physics start");
    let index: Vec<usize> = specs
        .iter()
        .map(|s| scenario.device_index(&s.device).expect("a scenario device"))
        .collect();
    let mut out = Vec::new();
    let mut t = DAY_START;
    while t <= DAY_START + DAY_MS + STEP_MS {
        plant.advance_to(t);
        for (s, &i) in specs.iter().zip(&index) {
            if (t - DAY_START) % s.interval_ms != 0 {
                continue;
            }
            let value = plant
                .value(i, &s.metric)
                .unwrap_or_else(|| panic!("{} {} has a value", s.device, s.metric));
            out.push(Reading {
                ts: t,
                device: s.device.clone(),
                metric: s.metric.clone(),
                value: Some(Value::Number(value)),
                quality: Quality::Good,
                reason: None,
            });
        }
        t += STEP_MS;
    }
    out
}

/// Feeds the readings in time order, closing windows as the daemon's timer would; with
/// `restart_at`, stores the state there and continues with a rebuilt site.
fn run(config: &Config, raw: &[Reading], restart_at: Option<i64>) -> (Vec<KpiRecord>, Vec<u8>) {
    let mut site = Site::new(config, None).unwrap().expect("KPIs are computed");
    let mut records = Vec::new();
    let mut restarted = false;
    let mut last_ts = i64::MIN;
    for r in raw {
        if r.ts != last_ts {
            // A new poll instant: the timer closes what ended before it.
            records.extend(site.close_due(r.ts - 1));
            if let Some(at) = restart_at
                && !restarted
                && r.ts >= at
            {
                let saved = site.save().expect("save");
                site = Site::new(config, Some(&saved)).unwrap().expect("rebuilt");
                restarted = true;
            }
            last_ts = r.ts;
        }
        site.ingest(std::iter::once(r));
    }
    records.extend(site.close_due(DAY_START + DAY_MS + STEP_MS));
    let state = site.save().expect("save");
    (records, state)
}

/// Plain arithmetic over one point's samples in `[start, end]`.
fn independent(raw: &[Reading], device: &str, metric: &str, acc: Accumulation) -> f64 {
    let samples: Vec<(i64, f64)> = raw
        .iter()
        .filter(|r| r.device == device && r.metric == metric)
        .filter(|r| r.ts >= DAY_START && r.ts <= DAY_START + DAY_MS)
        .map(|r| match r.value {
            Some(Value::Number(v)) => (r.ts, v),
            _ => panic!("a number"),
        })
        .collect();
    let trapezoid: f64 = samples
        .windows(2)
        .map(|w| (w[0].1 + w[1].1) / 2.0 * (w[1].0 - w[0].0) as f64)
        .sum();
    match acc {
        Accumulation::Counter => samples.last().unwrap().1 - samples.first().unwrap().1,
        Accumulation::Integral { per_ms } => trapezoid / per_ms as f64,
        Accumulation::Mean => trapezoid / DAY_MS as f64,
    }
}

/// The day's sum of a role, from the config's sources.
fn role(config: &Config, raw: &[Reading], specs: &[PointSpec], name: &str) -> f64 {
    let role = fivezero_gateway::site::Role::parse(name).unwrap()[0];
    config.kpi.inputs[&role]
        .iter()
        .map(|s| {
            let spec = specs
                .iter()
                .find(|p| p.device == *s.device && p.metric == s.metric)
                .unwrap();
            independent(raw, &spec.device, &spec.metric, spec.accumulation)
        })
        .sum()
}

fn close(got: f64, want: f64, what: &str) {
    let tol = 1e-9 * want.abs().max(1.0);
    assert!(
        (got - want).abs() <= tol,
        "{what}: published {got}, computed {want}"
    );
}

fn day_records(records: &[KpiRecord]) -> BTreeMap<&str, &KpiRecord> {
    records
        .iter()
        .filter(|r| r.window.period == Period::Day && r.window.start == DAY_START)
        .map(|r| (r.kpi.as_str(), r))
        .collect()
}

/// The readings and KPI records of every message the buffer hands the publisher, in sequence
/// order.
async fn from_buffer(buffer: &Buffer) -> (Vec<Reading>, Vec<KpiRecord>) {
    let mut messages = Vec::new();
    let mut after = 0;
    loop {
        let out = buffer
            .pending(
                Lane::backlog(after),
                Limits {
                    messages: 100,
                    items_per_message: 10_000,
                    bytes_per_message: 16 << 20,
                },
            )
            .await
            .expect("pending");
        let Some(last) = out.last() else {
            break;
        };
        after = last.last_seq();
        messages.extend(out.into_iter().map(|m| (m.kind, m.payload)));
    }
    decode(messages)
}

/// The same, from a subscriber on the batches and kpi topics while the publisher sends the
/// buffer to the machine's Mosquitto.
async fn over_mqtt(buffer: &Buffer, url: MqttUrl) -> (Vec<Reading>, Vec<KpiRecord>) {
    let committed = buffer.stats().committed_seq;
    let topics = Topics::new(
        &kit::unique_prefix(),
        "qingdao-greensail",
        &format!("gw-kpi-day-{:08x}", rand::random::<u32>()),
    )
    .unwrap();
    let (batches, kpis) = (topics.batches().to_owned(), topics.kpi().to_owned());
    let mut probe = kit::Probe::start(&url, &[batches.clone(), kpis.clone()]).await;
    let publisher = Publisher::new(PublisherConfig::new(topics.clone(), url), buffer.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(publisher.run(async move {
        let _ = stop_rx.await;
    }));
    let mut seen = std::collections::BTreeSet::new();
    let mut messages = Vec::new();
    while kit::contiguous(&seen) < committed {
        let m = probe
            .next(Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("sequences stopped at {}", kit::contiguous(&seen)));
        let kind = if m.topic == batches {
            let b = wire::decode_batch(&m.payload).expect("a batch");
            seen.extend(b.first_seq..b.first_seq + u64::from(b.count));
            TopicKind::Batches
        } else if m.topic == kpis {
            let b = wire::decode_kpi_batch(&m.payload).expect("a KPI batch");
            seen.extend(b.first_seq..b.first_seq + u64::from(b.count));
            TopicKind::Kpi
        } else {
            continue;
        };
        messages.push((kind, m.payload));
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), running).await;
    probe.publish_retained(topics.status(), Vec::new()).await;
    decode(messages)
}

/// Readings and records by sequence, each sequence once.
fn decode(messages: Vec<(TopicKind, Vec<u8>)>) -> (Vec<Reading>, Vec<KpiRecord>) {
    let mut readings = BTreeMap::new();
    let mut records = BTreeMap::new();
    for (kind, payload) in messages {
        match kind {
            TopicKind::Batches => {
                let b = wire::decode_batch(&payload).expect("a batch");
                readings.extend((b.first_seq..).zip(b.readings));
            }
            TopicKind::Kpi => {
                let b = wire::decode_kpi_batch(&payload).expect("a KPI batch");
                records.extend((b.first_seq..).zip(b.records));
            }
            other => panic!("a message of kind {other:?}"),
        }
    }
    (
        readings.into_values().collect(),
        records.into_values().collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_day_gives_the_kpis_computed_independently_and_the_reference_figures() {
    let scenario = scenario();
    let config = config(&scenario, "kpi-day");
    let specs = specs(&config).expect("specs");
    let raw = readings(&scenario, &specs);

    // When the day's poll cycles are committed to a buffer, the site takes each committed
    // cycle as the daemon's hand-over gives it, and the records of the windows it closes are
    // committed with its state, as the daemon's KPI task does
    let dir = common::scratch("kpi-day-buffer");
    let _ = std::fs::remove_dir_all(&dir);
    let mut options = BufferOptions::from_config(&config.gateway, &config.buffer);
    options.max_age = Duration::from_secs(400 * 86_400); // The day is in June.
    options.synchronous = Synchronous::Normal;
    let buffer = Buffer::open(&dir, &options).expect("buffer");
    let mut site = Site::new(&config, None)
        .unwrap()
        .expect("KPIs are computed");
    let mut closed = Vec::new();
    let mut instants: BTreeMap<i64, BTreeMap<&str, Vec<Reading>>> = BTreeMap::new();
    for r in &raw {
        instants
            .entry(r.ts)
            .or_default()
            .entry(r.device.as_str())
            .or_default()
            .push(r.clone());
    }
    for (ts, cycles) in instants {
        let records = site.close_due(ts - 1);
        if !records.is_empty() {
            let state = site.save().expect("save");
            buffer
                .append_kpis(&records, Some(state))
                .await
                .expect("the records commit");
            closed.extend(records);
        }
        for (device, readings) in cycles {
            let cycle = DeviceReadings {
                device: device.into(),
                ts_ms: ts,
                cycle: 0,
                readings,
            };
            buffer
                .append_readings(&cycle)
                .await
                .expect("the cycle commits");
            site.ingest(&cycle.readings);
        }
    }
    let records = site.close_due(DAY_START + DAY_MS + STEP_MS);
    let state = site.save().expect("save");
    if records.is_empty() {
        buffer.save_kpi_state(state.clone()).await.expect("state");
    } else {
        buffer
            .append_kpis(&records, Some(state.clone()))
            .await
            .expect("the records commit");
        closed.extend(records);
    }
    assert_eq!(
        buffer.kpi_state().await.expect("state"),
        Some(state),
        "the state commits with the records"
    );
    // and everything is published: to a subscriber over MQTT when a broker is given, else
    // read from the buffer as the publisher sends it.
    let (received, published) = match kit::shared_broker() {
        Some(url) => over_mqtt(&buffer, url).await,
        None => {
            println!("FIVEZERO_TEST_MQTT not set: reading the messages from the buffer");
            from_buffer(&buffer).await
        }
    };
    buffer.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(published, closed, "what is published is what was closed");
    assert_eq!(received.len(), raw.len(), "every reading is published");
    let raw = received;

    // Then the day's KPIs are those computed here from the raw readings
    let day = day_records(&published);
    let kpi = |id: &str| {
        day.get(id)
            .copied()
            .unwrap_or_else(|| panic!("no day record {id}: {:?}", day.keys()))
    };
    let r = |name| role(&config, &raw, &specs, name);
    let (received, drawn) = (r("waste_received"), r("stock_drawn"));
    let (material, energy, landfill) = (
        r("material_recovered"),
        r("energy_recovery"),
        r("landfilled"),
    );
    let total = kpi("zero_waste.total_recovery_rate");
    close(total.numerator.unwrap(), material + energy, "recovered t");
    close(total.denominator.unwrap(), received + drawn, "input t");
    close(
        total.value.unwrap(),
        (material + energy) / (received + drawn),
        "total recovery",
    );
    close(
        kpi("zero_waste.landfill_share").value.unwrap(),
        landfill / (received + drawn),
        "landfill share",
    );

    let (fresh, reused) = (r("fresh_water"), r("reused_water"));
    close(
        kpi("zero_wastewater.reuse_rate").value.unwrap(),
        reused / (reused + fresh),
        "reuse rate",
    );
    let (generated, used) = (r("steam_generated"), r("steam_used"));
    close(
        kpi("zero_exhaust.steam_cascade_utilisation").value.unwrap(),
        used / generated,
        "steam utilisation",
    );

    let recovered = r("heat_recovered");
    let exit = r("flue_gas_exit_temperature");
    let stack_loss = r("flue_gas_flow") * 1.38 * (exit - 25.0) / 3600.0;
    let heat = kpi("zero_waste_heat.recovery_rate");
    close(
        heat.value.unwrap(),
        recovered / (recovered + stack_loss),
        "heat recovery",
    );
    assert!(heat.flags.iter().any(|f| f == "sensible_heat_only"));
    assert!(heat.factors.iter().any(|f| f.name == "flue_gas_cp"));
    close(
        kpi("zero_waste_heat.flue_exit_temperature").value.unwrap(),
        exit,
        "exit temperature",
    );

    let pv = r("renewable_generation");
    let (import, export) = (r("grid_import"), r("grid_export"));
    close(
        kpi("carbon.avoided_t").value.unwrap(),
        pv * 0.5306 / 1000.0,
        "avoided CO2",
    );
    close(
        kpi("carbon.scope2_location_t").value.unwrap(),
        import * 0.5306 / 1000.0,
        "scope 2",
    );
    close(
        kpi("zero_energy.net_grid_import_kwh").value.unwrap(),
        import - export,
        "net import",
    );
    close(
        kpi("zero_energy.ev_charging_kwh").value.unwrap(),
        r("ev_charging"),
        "EV charging",
    );
    let air = kpi("compressed_air.specific_power");
    close(
        air.value.unwrap(),
        r("compressor_energy") / r("air_delivered") * 60.0,
        "specific power",
    );

    // and near the reference park's figures, each judged.
    let total_rate = total.value.unwrap();
    assert!(
        (0.97..=1.0).contains(&total_rate),
        "total recovery {total_rate}"
    );
    let heat_rate = heat.value.unwrap();
    assert!(
        (0.85..=0.95).contains(&heat_rate),
        "heat recovery {heat_rate}"
    );
    assert!((35.0..=45.0).contains(&exit), "flue gas exit {exit} °C");
    let air_sp = air.value.unwrap();
    assert!((5.0..=8.0).contains(&air_sp), "specific power {air_sp}");
    for id in [
        "zero_waste.total_recovery_rate",
        "zero_wastewater.reuse_rate",
        "zero_waste_heat.recovery_rate",
    ] {
        let rec = kpi(id);
        assert!(
            matches!(rec.quality, KpiQuality::Ok),
            "{id}: {:?} {:?}",
            rec.quality,
            rec.flags
        );
        assert!((rec.coverage - 1.0).abs() < 1e-9, "{id} coverage");
        assert!(
            rec.tiers
                .iter()
                .all(|t| t.status != TierOutcome::InsufficientData),
            "{id}: {:?}",
            rec.tiers
        );
    }

    // and the quarter hours and hours add up to the day.
    for period in [Period::FifteenMinutes, Period::Hour] {
        let parts: Vec<&KpiRecord> = published
            .iter()
            .filter(|r| r.kpi == "zero_waste.total_recovery_rate" && r.window.period == period)
            .filter(|r| r.window.start >= DAY_START && r.window.end <= DAY_START + DAY_MS)
            .collect();
        assert_eq!(
            parts.len(),
            if period == Period::Hour { 24 } else { 96 },
            "{period:?} windows of the day"
        );
        let num: f64 = parts.iter().map(|r| r.numerator.unwrap()).sum();
        let den: f64 = parts.iter().map(|r| r.denominator.unwrap()).sum();
        close(num, total.numerator.unwrap(), "Σ numerators");
        close(den, total.denominator.unwrap(), "Σ denominators");
    }
    println!(
        "day of {} readings: total recovery {:.4}, landfill {:.4}, reuse {:.4}, steam use {:.4}, heat recovery {heat_rate:.4}, exit {exit:.2} °C, PV {pv:.0} kWh, import {import:.0} kWh, specific power {air_sp:.2}; {} records",
        raw.len(),
        total_rate,
        landfill / (received + drawn),
        reused / (reused + fresh),
        used / generated,
        published.len()
    );
}

#[test]
fn a_restart_in_the_middle_of_a_window_gives_the_same_records() {
    let scenario = scenario();
    let config = config(&scenario, "kpi-day-restart");
    let specs = specs(&config).expect("specs");
    let raw = readings(&scenario, &specs);
    let (straight, _) = run(&config, &raw, None);
    // 13:37:30 local: inside a quarter hour, an hour and the day.
    let (restarted, _) = run(&config, &raw, Some(DAY_START + 49_050_000));
    assert_eq!(straight.len(), restarted.len());
    for (a, b) in straight.iter().zip(&restarted) {
        assert_eq!(a, b, "{} {:?}", a.kpi, a.window);
    }
}
