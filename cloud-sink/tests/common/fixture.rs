//! Known data for the API tests (`tests/api.rs`, `tests/schemathesis.rs`): what [`fill`]
//! stores, and the tokens the tests present. Include with
//! `#[path = "common/fixture.rs"] mod fixture;`.
//!
//! The site, device, metric and times are the examples of the OpenAPI document, so the
//! fuzzer's example phase queries data that exists.

#![allow(dead_code)] // Each test file uses its own part.

use fivezero_model::kpi::{
    self, EnergySums, Factors, HeatSums, SteamSums, Sum, WasteSums, WaterSums,
};
use fivezero_model::wire::{
    Batch, BufferState, Epoch, Gap, GapReason, KpiBatch, KpiRecord, Period, Presence, Quality,
    Reading, SCHEMA_VERSION, Status, Value, Window,
};
use fivezero_sink::config::{ApiToken, HttpConfig, Scope, hash_token};
use fivezero_sink::store::{AnyStore, RawMessage, Store};

pub(crate) const SITE: &str = "qingdao-greensail";
pub(crate) const GW: &str = "qd-greensail-gw1";
pub(crate) const METER: &str = "grid-meter";
pub(crate) const EPOCH: Epoch = Epoch(0x0123_4567_89ab_cdef);
/// 2026-06-01T00:00:00Z.
pub(crate) const DAY: i64 = 1_780_272_000_000;
pub(crate) const READ: &str = "read-token-0123456789";
pub(crate) const ADMIN: &str = "admin-token-0123456789";

pub(crate) fn raw() -> RawMessage {
    RawMessage {
        topic: "t".into(),
        payload: b"{}".to_vec(),
        received_at: DAY,
    }
}

pub(crate) fn reading(ts: i64, device: &str, metric: &str, v: f64) -> Reading {
    Reading {
        ts,
        device: device.into(),
        metric: metric.into(),
        value: Some(Value::Number(v)),
        quality: Quality::Good,
        reason: None,
    }
}

pub(crate) fn batch(first: u64, readings: Vec<Reading>) -> Batch {
    Batch {
        schema: SCHEMA_VERSION,
        gateway: GW.into(),
        site: SITE.into(),
        epoch: EPOCH,
        first_seq: first,
        count: u32::try_from(readings.len()).unwrap(),
        readings,
    }
}

pub(crate) fn hour(i: i64) -> Window {
    Window {
        start: DAY + i * 3_600_000,
        end: DAY + (i + 1) * 3_600_000,
        period: Period::Hour,
        tz: "Asia/Shanghai".into(),
    }
}

pub(crate) fn waste(i: i64, received: f64, recovered: f64) -> Vec<KpiRecord> {
    kpi::zero_waste(
        &hour(i),
        &WasteSums {
            received: Some(Sum::exact(received)),
            stock_drawn: None,
            material: Some(Sum::exact(recovered / 2.0)),
            energy: Some(Sum::exact(recovered / 2.0)),
            landfill: Some(Sum::exact(received - recovered)),
            stock_change: None,
        },
    )
}

fn kpi_batch(first_seq: u64, records: Vec<KpiRecord>) -> KpiBatch {
    KpiBatch {
        schema: SCHEMA_VERSION,
        gateway: GW.into(),
        site: SITE.into(),
        epoch: EPOCH,
        first_seq,
        count: u32::try_from(records.len()).unwrap(),
        records,
    }
}

/// Known data: a day of 1-minute energy counter readings (+1 kWh a minute) on
/// [`METER`], ten temperatures on `weather`, a declared gap 1451..=1460, a hole
/// 1461..=1470, a batch at 1471..=1475, two hourly zero-waste windows (50 % on 1 t, 100 % on
/// 99 t), a status.
pub(crate) async fn fill(s: &AnyStore) {
    let energy: Vec<Reading> = (0..1440)
        .map(|m| {
            reading(
                DAY + m * 60_000,
                METER,
                "electricity.import_energy",
                100.0 + m as f64,
            )
        })
        .collect();
    s.store_batch(batch(1, energy), raw()).await.unwrap();
    let temps: Vec<Reading> = (0..10)
        .map(|i| {
            reading(
                DAY + i * 60_000,
                "weather",
                "ambient.temperature",
                20.0 + i as f64,
            )
        })
        .collect();
    s.store_batch(batch(1441, temps), raw()).await.unwrap();
    s.store_gap(
        Gap {
            schema: SCHEMA_VERSION,
            gateway: GW.into(),
            site: SITE.into(),
            epoch: EPOCH,
            first_seq: 1451,
            count: 10,
            reason: GapReason::BufferFull,
            declared_at: DAY,
        },
        DAY,
    )
    .await
    .unwrap();
    let late: Vec<Reading> = (0..5)
        .map(|i| reading(DAY + 3_600_000 + i, "weather", "ambient.temperature", 30.0))
        .collect();
    s.store_batch(batch(1471, late), raw()).await.unwrap();
    let mut records = waste(0, 1.0, 0.5);
    records.extend(waste(1, 99.0, 99.0));
    s.store_kpis(kpi_batch(1476, records), raw()).await.unwrap();
    s.store_status(
        Status {
            schema: SCHEMA_VERSION,
            gateway: GW.into(),
            site: SITE.into(),
            state: Presence::Online,
            ts: DAY,
            version: "0.1.0".into(),
            epoch: Some(EPOCH),
            profiles: vec![],
            buffer: Some(BufferState {
                committed_seq: 1500,
                published_seq: 1490,
                broker_acked_seq: 1490,
                sink_acked_seq: 1460,
                bytes: 1,
                oldest_unsent_ts: None,
            }),
        },
        DAY,
    )
    .await
    .unwrap();
}

/// Hourly windows of every pillar for hours 2..24 of [`DAY`] (one KPI batch per hour, from
/// sequence 2001), values moving through the day, so every KPI and tier rule has data.
pub(crate) async fn fill_pillars(s: &AnyStore) {
    let exact = |v: f64| Some(Sum::exact(v));
    let mut seq = 2001;
    for i in 2..24 {
        let w = hour(i);
        let f = i as f64;
        let recovered = 9.0 + (f * 0.7).sin() * 0.9;
        let mut records = kpi::zero_waste(
            &w,
            &WasteSums {
                received: exact(10.0),
                stock_drawn: None,
                material: exact(recovered * 0.6),
                energy: exact(recovered * 0.4),
                landfill: exact(10.0 - recovered),
                stock_change: None,
            },
        );
        records.extend(kpi::zero_wastewater(
            &w,
            &WaterSums {
                fresh: exact(3.0 + f % 4.0),
                reused: exact(30.0),
                discharged: exact(0.05 * (f % 3.0)),
                rain_collected: if i % 5 == 0 { exact(2.0) } else { exact(0.0) },
                rain_used: if i % 5 == 0 { exact(1.95) } else { exact(0.0) },
            },
        ));
        records.extend(kpi::zero_exhaust(
            &w,
            &SteamSums {
                generated: exact(5.0),
                used: exact(4.7 + (f % 3.0) * 0.1),
                vented: exact(0.05 * (f % 4.0)),
            },
        ));
        records.extend(kpi::zero_waste_heat(
            &w,
            &HeatSums {
                recovered: exact(if i == 5 { 40.0 } else { 95.0 }),
                stack_loss: exact(if i == 5 { 60.0 } else { 5.0 }),
                exit_temperature: exact(35.0 + f % 7.0),
                exit_within_limit_share: exact(if i == 5 { 0.5 } else { 1.0 }),
            },
        ));
        let sun = (((f - 6.0) / 12.0) * std::f64::consts::PI).sin().max(0.0);
        records.extend(kpi::energy_and_carbon(
            &w,
            &EnergySums {
                renewable_generated: exact(500.0 * sun),
                grid_import: exact(300.0 - 250.0 * sun),
                grid_export: exact(if sun > 0.8 { 40.0 } else { 0.0 }),
                green_purchased: None,
            },
            &[],
            &Factors::default(),
        ));
        let n = u64::try_from(records.len()).unwrap();
        s.store_kpis(kpi_batch(seq, records), raw()).await.unwrap();
        seq += n;
    }
}

pub(crate) fn token(name: &str, scope: Scope, secret: &str) -> ApiToken {
    let hex = hash_token(secret);
    let mut sha256 = [0u8; 32];
    for (i, b) in sha256.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap();
    }
    ApiToken {
        name: name.into(),
        scope,
        sha256,
    }
}

/// The defaults, on a port the OS picks, with a [`READ`] and an [`ADMIN`] token.
pub(crate) fn http_config() -> HttpConfig {
    HttpConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        tokens: vec![
            token("dash", Scope::Read, READ),
            token("ops", Scope::Admin, ADMIN),
        ],
        ..HttpConfig::default()
    }
}
