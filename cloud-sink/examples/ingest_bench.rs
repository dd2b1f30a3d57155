//! Ingest rate of the sink into SQLite and PostgreSQL, and the sink process's memory, for
//! BENCHMARKS.md.
//!
//! ```text
//! cargo build --release -p fivezero-sink --bins --examples
//! target/release/examples/ingest_bench [READINGS] [sqlite|postgres|both]
//! ```
//!
//! A gateway buffer (the real one) is filled with READINGS readings (default 500 000) in
//! poll cycles of 1000, before anything is published: a backlog. Then a `fivezero-sink`
//! process (the release binary beside this example) starts on a fresh database, and the
//! gateway's real publisher sends the backlog in messages of 1000 readings with its replay
//! limit raised out of the way (100 000 messages/s), so the broker takes them as fast as it
//! can. Two figures per backend:
//!
//! - **stored rate**: readings / time from the first reading stored to the last (the sink's
//!   `items_stored` counter, read from `/metrics` every 20 ms);
//! - **end to end**: readings / time from the publisher's start until the sink's retained
//!   watermark has reached the gateway for every sequence (the buffer's `sink_acked_seq`).
//!
//! and the sink's peak resident memory (`VmHWM` from `/proc/PID/status`) at the end, the CPU
//! seconds of the sink and of the gateway side and, for PostgreSQL, of every `postgres`
//! process (the server does most of that work; other clients of the server count too), then
//! the same as a `BENCH ingest_bench.BACKEND key=value …` line for the benchmark suite.
//!
//! The broker is the machine's Mosquitto when `FIVEZERO_TEST_MQTT` is set
//! (`mqtt://127.0.0.1:1883`), else the sink's embedded broker (which then runs inside the
//! sink process and counts in its CPU and memory). PostgreSQL is `FIVEZERO_TEST_POSTGRES`
//! (`postgres://postgres@127.0.0.1:5432/test`), in a fresh empty schema (the sink migrates it
//! when it starts) dropped afterwards; without it the PostgreSQL run is skipped.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use fivezero_gateway::buffer::{Buffer, BufferOptions};
use fivezero_gateway::config::MqttUrl;
use fivezero_gateway::poll::DeviceReadings;
use fivezero_gateway::publish::{Publisher, PublisherConfig};
use fivezero_model::topic::Topics;
use fivezero_model::wire::{Quality, Reading, Value};
use fivezero_sink::store::postgres::PgStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SITE: &str = "bench-site";
const PER_CYCLE: usize = 1000;
const DEVICES: usize = 50;

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One poll cycle of `PER_CYCLE` readings: `DEVICES` meters × 20 metrics.
fn cycle(ts: i64, k: u64) -> DeviceReadings {
    const METRICS: [&str; 4] = [
        "electricity.import_energy",
        "electricity.export_energy",
        "electricity.active_power",
        "electricity.frequency",
    ];
    DeviceReadings {
        device: Arc::from("bench"),
        ts_ms: ts,
        cycle: k,
        readings: (0..PER_CYCLE)
            .map(|i| Reading {
                ts,
                device: format!("meter-{:02}", i % DEVICES),
                metric: METRICS[(i / DEVICES) % METRICS.len()].into(),
                value: Some(Value::Number(1000.0 + k as f64 + i as f64 * 0.25)),
                quality: Quality::Good,
                reason: None,
            })
            .collect(),
    }
}

async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    Ok(buf)
}

async fn stored_items(port: u16) -> Option<u64> {
    let text = http_get(port, "/metrics").await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("fivezero_sink_items_stored_total "))
        .and_then(|v| v.trim().parse().ok())
}

fn vm(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name; 100 Hz clock.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds used so far by every process named `postgres` (the server's backends, WAL
/// writer, checkpointer and the rest; other clients' work on the server counts too).
fn postgres_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| cpu_seconds(&pid))
        .sum()
}

fn sink_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("fivezero-sink"))
        .context("no folder above the example")?;
    anyhow::ensure!(
        bin.is_file(),
        "{} is missing: cargo build --release -p fivezero-sink --bins --examples",
        bin.display()
    );
    Ok(bin)
}

/// What one run measured.
struct Figures {
    stored_rate: f64,
    end_to_end_rate: f64,
    span: Duration,
    vm_hwm_kib: u64,
    sink_cpu: f64,
}

async fn run(
    name: &str,
    storage: &str,
    mosquitto: Option<(String, u16)>,
    readings: u64,
    dir: &Path,
) -> anyhow::Result<Figures> {
    // The backlog, in the real gateway buffer.
    let gateway = format!("bench-gw-{:08x}", rand::random::<u32>());
    let mut options = BufferOptions::new(&gateway, SITE);
    options.max_bytes = 64 * 1024 * 1024 * 1024;
    let buffer = Buffer::open(&dir.join(format!("gw-{name}")), &options)?;
    let t = Instant::now();
    let ts = fivezero_now() - 3_600_000;
    let cycles = readings / PER_CYCLE as u64;
    let mut k = 0;
    while k < cycles {
        let batch: Vec<DeviceReadings> = (k..(k + 20).min(cycles))
            .map(|c| cycle(ts + i64::try_from(c).unwrap_or(0), c))
            .collect();
        for r in buffer.append_cycles(&batch).await {
            r.map_err(|e| anyhow::anyhow!("append: {e}"))?;
        }
        k += batch.len() as u64;
    }
    let total = cycles * PER_CYCLE as u64;
    println!(
        "[{name}] backlog: {total} readings in the gateway buffer ({:.1} s to fill)",
        t.elapsed().as_secs_f64()
    );

    // The sink process.
    let http = free_port()?;
    let (broker_line, host, port) = match &mosquitto {
        Some((host, port)) => (
            format!("broker = \"mqtt://{host}:{port}\"\nprefix = \"fivezero-bench/{gateway}\"\n"),
            host.clone(),
            *port,
        ),
        None => {
            let port = free_port()?;
            (
                format!("broker = \"embedded\"\nlisten = \"127.0.0.1:{port}\"\n"),
                "127.0.0.1".to_owned(),
                port,
            )
        }
    };
    let prefix = if mosquitto.is_some() {
        format!("fivezero-bench/{gateway}")
    } else {
        fivezero_model::topic::DEFAULT_PREFIX.to_owned()
    };
    let config = dir.join(format!("sink-{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[sink]\nclient_id = \"bench-sink-{gateway}\"\n\
             [storage]\nurl = \"{storage}\"\n\
             [mqtt]\n{broker_line}session_expiry = \"1m\"\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n"
        ),
    )?;
    let child = Process(
        Command::new(sink_binary()?)
            .args(["run", "--config"])
            .arg(&config)
            .env("FIVEZERO_SINK_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let pid = child.0.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http_get(http, "/readyz")
            .await
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200"));
        if ready {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the sink is not ready after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The publisher, as fast as the broker takes it.
    let topics = Topics::new(&prefix, SITE, &gateway)?;
    let mut pc = PublisherConfig::new(
        topics.clone(),
        MqttUrl {
            tls: false,
            host,
            port,
        },
    );
    pc.replay_rate = NonZeroU32::new(100_000).context("rate")?;
    pc.items_per_message = NonZeroU32::new(1000).context("items")?;
    let publisher = Publisher::new(pc, buffer.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let (sink_cpu0, own_cpu0) = (cpu_seconds(&pid.to_string()), cpu_seconds("self"));
    let server_cpu0 = postgres_cpu_seconds();
    let running = tokio::spawn(publisher.run(async move {
        let _ = stop_rx.await;
    }));

    let mut first_stored: Option<Instant> = None;
    let mut last_stored: Option<Instant> = None;
    let mut peak_rss = 0;
    let limit = Instant::now() + Duration::from_secs(600);
    loop {
        let now = Instant::now();
        anyhow::ensure!(now < limit, "[{name}] not done after 600 s");
        if let Some(n) = stored_items(http).await {
            if n > 0 && first_stored.is_none() {
                first_stored = Some(now);
            }
            if n >= total && last_stored.is_none() {
                last_stored = Some(now);
            }
        }
        peak_rss = peak_rss.max(vm(pid, "VmRSS:").unwrap_or(0));
        if last_stored.is_some() && buffer.stats().sink_acked_seq >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let end_to_end = started.elapsed();
    let vm_hwm_kib = vm(pid, "VmHWM:").unwrap_or(peak_rss);
    let sink_cpu = cpu_seconds(&pid.to_string()) - sink_cpu0;
    let own_cpu = cpu_seconds("self") - own_cpu0;
    let server_cpu = postgres_cpu_seconds() - server_cpu0;
    let (first, last) = (
        first_stored.context("nothing stored")?,
        last_stored.context("not all stored")?,
    );
    let span = last.duration_since(first);
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), running).await;
    drop(child);
    buffer.close().await;
    let figures = Figures {
        stored_rate: total as f64 / span.as_secs_f64().max(1e-3),
        end_to_end_rate: total as f64 / end_to_end.as_secs_f64(),
        span,
        vm_hwm_kib,
        sink_cpu,
    };
    println!(
        "[{name}] stored {total} readings: first to last stored {:.2} s = {:.0} readings/s; \
         publisher start to last watermark {:.2} s = {:.0} readings/s; sink VmHWM {} MiB; \
         CPU: sink {:.2} s ({:.0} readings per sink CPU second), gateway side {own_cpu:.2} s{}",
        figures.span.as_secs_f64(),
        figures.stored_rate,
        end_to_end.as_secs_f64(),
        figures.end_to_end_rate,
        figures.vm_hwm_kib / 1024,
        figures.sink_cpu,
        total as f64 / figures.sink_cpu.max(1e-3),
        if storage.starts_with("postgres") {
            format!(", PostgreSQL server {server_cpu:.2} s")
        } else {
            String::new()
        },
    );
    // The same figures for the benchmark suite (bench/): `BENCH NAME key=value …`.
    println!(
        "BENCH ingest_bench.{name} readings={total} stored_per_s={:.0} end_to_end_per_s={:.0} \
         sink_vm_hwm_mib={} sink_cpu_s={:.2}{}",
        figures.stored_rate,
        figures.end_to_end_rate,
        figures.vm_hwm_kib / 1024,
        figures.sink_cpu,
        if storage.starts_with("postgres") {
            format!(" server_cpu_s={server_cpu:.2}")
        } else {
            String::new()
        },
    );
    Ok(figures)
}

fn fivezero_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn mosquitto() -> Option<(String, u16)> {
    let text = std::env::var("FIVEZERO_TEST_MQTT").ok()?;
    let rest = text.strip_prefix("mqtt://")?;
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "1883"));
    Some((host.to_owned(), port.trim_end_matches('/').parse().ok()?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let readings: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(500_000);
    let which = args.next().unwrap_or_else(|| "both".into());
    let broker = mosquitto();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "broker: {}; load average before: {}",
        broker.as_ref().map_or(
            "embedded (in the sink process)".to_owned(),
            |(h, p)| format!("Mosquitto {h}:{p}")
        ),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let dir = std::env::temp_dir().join(format!("fivezero-ingest-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut result = Ok(());
    if which == "sqlite" || which == "both" {
        let url = format!("sqlite://{}", dir.join("sink.db").display());
        if let Err(e) = run("sqlite", &url, broker.clone(), readings, &dir).await {
            result = Err(e);
        }
    }
    if which == "postgres" || which == "both" {
        match std::env::var("FIVEZERO_TEST_POSTGRES") {
            Ok(pg) if !pg.is_empty() => {
                let schema = format!("fz_bench_{:016x}", rand::random::<u64>());
                // An empty schema: the sink migrates it when it starts, as in production.
                let (client, conn) = tokio_postgres::connect(&pg, tokio_postgres::NoTls).await?;
                let driver = tokio::spawn(conn);
                client
                    .batch_execute(&format!("CREATE SCHEMA {schema}"))
                    .await?;
                drop(client);
                let _ = driver.await;
                let sep = if pg.contains('?') { '&' } else { '?' };
                let url = format!("{pg}{sep}options=-c%20search_path%3D{schema}");
                let r = run("postgres", &url, broker.clone(), readings, &dir).await;
                PgStore::drop_schema(&pg, &schema).await?;
                if let Err(e) = r {
                    result = Err(e);
                }
            }
            _ => println!("[postgres] skipped: FIVEZERO_TEST_POSTGRES not set"),
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average after: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = std::fs::remove_dir_all(&dir);
    result
}
