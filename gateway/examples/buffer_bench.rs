//! Measures the buffer: commit rate of 150-reading cycles at `synchronous=FULL` and
//! `NORMAL`, bytes per reading on disk, and how fast `pending` turns rows into wire JSON.
//!
//! ```text
//! cargo run --release --example buffer_bench -p fivezero-gateway [-- DIR [CYCLES]]
//! ```
//!
//! `DIR` (default: the system temporary folder) should be on the disk the gateway will use:
//! the FULL figure is one fsync per commit and says more about the disk than about the code.
//! The readings imitate an inverter and a meter: scaled registers (230.4 V, 49.98 Hz),
//! integers, energy counters with three decimals, unit conversions that give arbitrary
//! doubles, IEEE floats, and a few points marked not available.
//!
//! The last line, `BENCH buffer_bench key=value …`, repeats the figures for the benchmark
//! suite (`bench/`): per mode (`full_`, `normal_`) readings and commits per second, bytes and
//! payload bytes per reading, and `pending` readings per second.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fivezero_gateway::buffer::{Buffer, BufferOptions};
use fivezero_gateway::config::Synchronous;
use fivezero_gateway::outbox::{Lane, Limits, Outbox};
use fivezero_gateway::poll::DeviceReadings;
use fivezero_model::wire::{Quality, Reading, Value};

const READINGS: usize = 150;

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1_u64 << 53) as f64
    }
}

fn cycle(device: usize, n: u64, ts: i64, rng: &mut Rng) -> DeviceReadings {
    let name = format!("device-{device}");
    let readings = (0..READINGS)
        .map(|k| {
            let noise = rng.unit();
            let (value, quality, reason) = match k % 20 {
                // Scaled 16-bit registers: one or two decimals.
                0..=7 => (
                    Some(((2300.0 + noise * 50.0).round() / 10.0).into()),
                    Quality::Good,
                    None,
                ),
                // Integers: power in W, status codes.
                8..=11 => (Some((5000.0 * noise).round().into()), Quality::Good, None),
                // Energy counters, kWh with three decimals.
                12..=14 => (
                    Some(
                        ((1_234_567_890.0 + (n * 17) as f64 + noise * 3.0).round() / 1000.0).into(),
                    ),
                    Quality::Good,
                    None,
                ),
                // Unit conversions: arbitrary doubles.
                15..=17 => (
                    Some(Value::Number((70.0 + noise * 10.0 - 32.0) / 1.8)),
                    Quality::Good,
                    None,
                ),
                // IEEE 754 single-precision registers.
                18 => (
                    Some(Value::Number(f64::from((noise * 100.0) as f32))),
                    Quality::Good,
                    None,
                ),
                // Not implemented on this unit.
                _ => (
                    None,
                    Quality::Good,
                    Some("not available (sentinel)".to_owned()),
                ),
            };
            Reading {
                ts: ts + if k > 120 { 35 } else { 0 },
                device: name.clone(),
                metric: format!("metric.point_{k:03}"),
                value,
                quality,
                reason,
            }
        })
        .collect();
    DeviceReadings {
        device: Arc::from(name.as_str()),
        ts_ms: ts,
        cycle: n,
        readings,
    }
}

struct Figures {
    readings_per_s: f64,
    commits_per_s: f64,
    used_per_reading: f64,
    payload_per_reading: f64,
    pending_per_s: f64,
}

async fn measure(dir: &PathBuf, sync: Synchronous, cycles: u64) -> Figures {
    let _ = std::fs::remove_dir_all(dir);
    let mut options = BufferOptions::new("bench-gw", "bench-site");
    options.synchronous = sync;
    options.max_bytes = 64 * 1024 * 1024 * 1024;
    let buffer = Buffer::open(dir, &options).expect("open the buffer");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let t0 = 1_750_000_000_000;
    // Made beforehand, so only the buffer is timed.
    let input: Vec<DeviceReadings> = (0..cycles)
        .map(|n| cycle((n % 10) as usize, n, t0 + (n / 10) as i64 * 1000, &mut rng))
        .collect();
    let start = Instant::now();
    for c in &input {
        buffer.append_readings(c).await.expect("append");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let stats = buffer.stats();
    let readings = (cycles * READINGS as u64) as f64;
    let limits = Limits {
        messages: 32,
        items_per_message: 10_000,
        bytes_per_message: 256 * 1024,
    };
    let start = Instant::now();
    let mut after = 0;
    let mut published = 0_u64;
    loop {
        let out = buffer
            .pending(Lane::backlog(after), limits)
            .await
            .expect("pending");
        let Some(last) = out.last() else { break };
        after = last.last_seq();
        published += out.iter().map(|m| u64::from(m.count)).sum::<u64>();
    }
    let pending_elapsed = start.elapsed().as_secs_f64();
    assert_eq!(published as f64, readings);
    buffer.close().await;
    let _ = std::fs::remove_dir_all(dir);
    Figures {
        readings_per_s: readings / elapsed,
        commits_per_s: cycles as f64 / elapsed,
        used_per_reading: stats.used_bytes as f64 / readings,
        payload_per_reading: stats.payload_bytes as f64 / readings,
        pending_per_s: readings / pending_elapsed,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let base = args.next().map_or_else(std::env::temp_dir, PathBuf::from);
    let cycles: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "buffer bench: {cycles} cycles of {READINGS} readings, one writer, in {}",
        base.display()
    );
    println!(
        "{:<8} {:>14} {:>11} {:>16} {:>19} {:>18}",
        "sync", "readings/s", "commits/s", "bytes/reading", "payload/reading", "pending readings/s"
    );
    let mut bench = format!(
        "BENCH buffer_bench cycles={cycles} readings_per_commit={READINGS} dir={}",
        base.display().to_string().replace(char::is_whitespace, "_")
    );
    for (name, sync) in [("FULL", Synchronous::Full), ("NORMAL", Synchronous::Normal)] {
        let dir = base.join(format!("fivezero-buffer-bench-{}", std::process::id()));
        let f = rt.block_on(measure(&dir, sync, cycles));
        println!(
            "{name:<8} {:>14.0} {:>11.0} {:>16.2} {:>19.2} {:>18.0}",
            f.readings_per_s,
            f.commits_per_s,
            f.used_per_reading,
            f.payload_per_reading,
            f.pending_per_s
        );
        let key = name.to_ascii_lowercase();
        bench.push_str(&format!(
            " {key}_readings_per_s={:.0} {key}_commits_per_s={:.0} {key}_bytes_per_reading={:.2} \
             {key}_payload_per_reading={:.2} {key}_pending_readings_per_s={:.0}",
            f.readings_per_s,
            f.commits_per_s,
            f.used_per_reading,
            f.payload_per_reading,
            f.pending_per_s
        ));
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("{bench}");
}
