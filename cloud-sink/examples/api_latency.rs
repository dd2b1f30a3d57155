//! Query latency of the HTTP API on SQLite, for BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p fivezero-sink --example api_latency [-- ROUNDS]
//! ```
//!
//! Fills a scratch SQLite database with a month of one site's data: 20 devices × 1-minute
//! readings for the month (864 000 readings) and the KPI records of every 15-minute,
//! hourly and daily window of the month (zero waste, 5 KPIs per window). Then serves the API
//! on a port the OS picks and times, over HTTP on loopback, ROUNDS (default 200) requests of
//! each: a day of 1-minute series (`step=1m`, 1440 buckets) and the month's KPI scorecard
//! (`period=1mo`, from the daily windows; and the whole month from the hourly windows).
//! Prints p50 and p99 in milliseconds, then one line `BENCH api_latency key=value …` with the
//! same figures for the benchmark suite (`bench/`): `series_day_`, `kpi_month_daily_` and
//! `kpi_month_hourly_` `p50_ms` / `p99_ms`.

use std::time::{Duration, Instant};

use fivezero_model::kpi::{self, Sum, WasteSums};
use fivezero_model::wire::{
    Batch, Epoch, KpiBatch, Period, Quality, Reading, SCHEMA_VERSION, Value, Window,
};
use fivezero_sink::api::{self, ApiState};
use fivezero_sink::config::HttpConfig;
use fivezero_sink::stats::SinkStats;
use fivezero_sink::store::sqlite::SqliteStore;
use fivezero_sink::store::{AnyStore, RawMessage, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SITE: &str = "bench-site";
/// 2026-06-01T00:00:00+08:00 (Asia/Shanghai).
const MONTH: i64 = 1_780_243_200_000;
const DAYS: i64 = 30;
const DEVICES: usize = 20;

fn raw() -> RawMessage {
    RawMessage {
        topic: "t".into(),
        payload: Vec::new(),
        received_at: MONTH,
    }
}

async fn fill(store: &AnyStore) -> anyhow::Result<()> {
    let epoch = Epoch(0x00be_4c40_0000_0001);
    let mut seq = 1u64;
    let minutes = DAYS * 1440;
    // One batch per minute with every device's reading, as a gateway sends them.
    for chunk in (0..minutes).collect::<Vec<_>>().chunks(60) {
        let mut readings = Vec::with_capacity(chunk.len() * DEVICES);
        for &m in chunk {
            for d in 0..DEVICES {
                readings.push(Reading {
                    ts: MONTH + m * 60_000,
                    device: format!("meter-{d:02}"),
                    metric: "electricity.import_energy".into(),
                    value: Some(Value::Number(1000.0 + m as f64 * 0.5)),
                    quality: Quality::Good,
                    reason: None,
                });
            }
        }
        let count = u32::try_from(readings.len())?;
        store
            .store_batch(
                Batch {
                    schema: SCHEMA_VERSION,
                    gateway: "gw1".into(),
                    site: SITE.into(),
                    epoch,
                    first_seq: seq,
                    count,
                    readings,
                },
                raw(),
            )
            .await?;
        seq += u64::from(count);
    }
    for (period, len) in [
        (Period::FifteenMinutes, 900_000i64),
        (Period::Hour, 3_600_000),
        (Period::Day, 86_400_000),
    ] {
        let mut records = Vec::new();
        for i in 0..(DAYS * 86_400_000 / len) {
            let window = Window {
                start: MONTH + i * len,
                end: MONTH + (i + 1) * len,
                period,
                tz: "Asia/Shanghai".into(),
            };
            let received = 10.0 + (i % 7) as f64;
            records.extend(kpi::zero_waste(
                &window,
                &WasteSums {
                    received: Some(Sum::exact(received)),
                    stock_drawn: None,
                    material: Some(Sum::exact(received * 0.6)),
                    energy: Some(Sum::exact(received * 0.39)),
                    landfill: Some(Sum::exact(received * 0.01)),
                    stock_change: None,
                },
            ));
        }
        for chunk in records.chunks(500) {
            let count = u32::try_from(chunk.len())?;
            store
                .store_kpis(
                    KpiBatch {
                        schema: SCHEMA_VERSION,
                        gateway: "gw1".into(),
                        site: SITE.into(),
                        epoch,
                        first_seq: seq,
                        count,
                        records: chunk.to_vec(),
                    },
                    raw(),
                )
                .await?;
            seq += u64::from(count);
        }
    }
    Ok(())
}

async fn get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, usize)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let status = std::str::from_utf8(buf.get(9..12).unwrap_or_default())?.parse()?;
    Ok((status, buf.len()))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200);
    let dir = std::env::temp_dir().join(format!("fivezero-api-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = AnyStore::Sqlite(SqliteStore::open(&dir.join("sink.db")).await?);
    let t = Instant::now();
    fill(&store).await?;
    println!(
        "filled: {} readings, 30 days of 15m/1h/1d KPI windows, in {:.1} s",
        DAYS * 1440 * DEVICES as i64,
        t.elapsed().as_secs_f64()
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = HttpConfig {
        listen: Some(addr),
        ..HttpConfig::default()
    };
    tokio::spawn(api::serve(
        listener,
        ApiState::new(store, SinkStats::default(), config),
        std::future::pending(),
    ));
    let day = MONTH + 10 * 86_400_000;
    let month_end = MONTH + DAYS * 86_400_000;
    let queries = [
        (
            "series_day",
            "day of 1-minute series",
            format!(
                "/api/v1/sites/{SITE}/series?device=meter-07&metric=electricity.import_energy&from={day}&to={}&step=1m",
                day + 86_400_000
            ),
        ),
        (
            "kpi_month_daily",
            "month KPI scorecard (period=1mo, daily windows)",
            format!("/api/v1/sites/{SITE}/kpis?from={MONTH}&to={month_end}&period=1mo"),
        ),
        (
            "kpi_month_hourly",
            "month KPI scorecard (whole range, hourly windows)",
            format!("/api/v1/sites/{SITE}/kpis?from={MONTH}&to={month_end}"),
        ),
    ];
    let mut bench = format!("BENCH api_latency rounds={rounds}");
    for (key, name, path) in &queries {
        let (status, bytes) = get(addr, path).await?;
        anyhow::ensure!(status == 200, "{name}: status {status}");
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            get(addr, path).await?;
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "{name}: p50 {:.2} ms, p99 {:.2} ms ({rounds} requests, {bytes} bytes each)",
            percentile(&times, 0.50),
            percentile(&times, 0.99)
        );
        bench.push_str(&format!(
            " {key}_p50_ms={:.2} {key}_p99_ms={:.2} {key}_bytes={bytes}",
            percentile(&times, 0.50),
            percentile(&times, 0.99)
        ));
    }
    println!("{bench}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
