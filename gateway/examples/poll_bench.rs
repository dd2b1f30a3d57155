//! Benchmark of the gateway's polling and decoding: many devices against the simulator.
//!
//! ```text
//! cargo build --release -p fivezero-sim
//! cargo run --release -p fivezero-gateway --example poll_bench -- [--devices 100] [--seconds 60]
//! ```
//!
//! The simulator runs as a separate process (`target/release/fivezero-sim`, or `--sim PATH`),
//! so the figures are the gateway's alone: this process runs nothing but the poller and a
//! consumer that counts readings. It generates, in a scratch folder:
//!
//! - a profile of 150 holding registers: 75 `f32` points of distinct catalogue metrics
//!   (the electricity metrics the simulator's grid-meter physics produces first, so most carry
//!   values; the rest read as NaN, "not available");
//! - a scenario of `--devices` such devices (grid-meter physics), 200 unit ids per listener;
//! - the gateway config: every device over its own TCP connection, `--interval` (1 s),
//!   `--timeout` (1 s).
//!
//! After a warm-up it measures for `--seconds`, between two instants half an interval past
//! a cycle boundary (so every cycle of the window is complete), and prints readings per
//! second, requests per cycle against the planner's minimum, CPU seconds per 1,000 readings
//! (process CPU time from `/proc/self/stat`), peak RSS (`VmHWM` from `/proc/self/status`),
//! p50/p99 request latency (from the poller's health histograms), overruns and missed
//! cycles, and the simulator's own CPU time, to show how the machine was shared.
//!
//! `--threads 1` (the default) runs the poller on tokio's current-thread runtime; `--threads N`
//! on a multi-thread runtime with N workers.
//!
//! The last line, `BENCH poll_bench key=value …`, repeats the figures for the benchmark suite
//! (`bench/`): numbers without units (the unit is in the key), latencies as the upper bound of
//! their histogram bucket (`inf` above the last one).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fivezero_gateway::config::Config;
use fivezero_gateway::poll::health::LATENCY_BUCKETS_MS;
use fivezero_gateway::poll::{DeviceReadings, HealthSnapshot, Poller, spawn};
use fivezero_model::wire::Quality;
use fivezero_profiles::{load_file, plan};

#[path = "common/workload.rs"]
mod workload;

use workload::{
    REGISTERS, UNITS_PER_LISTENER, USER_HZ, bench_profile, bench_scenario, device_name,
    listener_name, sibling_binary, unit_of, write,
};

#[derive(Debug, Clone)]
struct Args {
    devices: usize,
    seconds: u64,
    interval: Duration,
    timeout: Duration,
    warmup: Duration,
    threads: usize,
    sim: Option<PathBuf>,
}

fn usage() -> &'static str {
    "poll_bench [--devices N] [--seconds S] [--interval 1s] [--timeout 1s] [--warmup 5s] \
     [--threads N] [--sim PATH]"
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        devices: 100,
        seconds: 60,
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        warmup: Duration::from_secs(5),
        threads: 1,
        sim: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(usage().to_owned());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value; {}", usage()))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value:?}: {e}");
        let duration = |v: &str| humantime::parse_duration(v).map_err(|e| bad(&e));
        match flag.as_str() {
            "--devices" => a.devices = value.parse().map_err(|e| bad(&e))?,
            "--seconds" => a.seconds = value.parse().map_err(|e| bad(&e))?,
            "--interval" => a.interval = duration(&value)?,
            "--timeout" => a.timeout = duration(&value)?,
            "--warmup" => a.warmup = duration(&value)?,
            "--threads" => a.threads = value.parse().map_err(|e| bad(&e))?,
            "--sim" => a.sim = Some(PathBuf::from(&value)),
            _ => return Err(format!("unknown option {flag}; {}", usage())),
        }
    }
    if a.devices == 0 || a.seconds == 0 || a.threads == 0 {
        return Err("--devices, --seconds and --threads must be at least 1".to_owned());
    }
    if a.interval < Duration::from_millis(100)
        || !a.interval.subsec_nanos().is_multiple_of(1_000_000)
    {
        return Err("--interval must be whole milliseconds, at least 100ms".to_owned());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Kills the simulator when dropped, whatever happened.
struct SimProcess(Child);

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(args: &Args) -> Result<bool, String> {
    let dir = std::env::temp_dir().join(format!("fivezero-poll-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = bench(args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench(args: &Args, dir: &Path) -> Result<bool, String> {
    let profile_file = dir.join("bench-150.toml");
    write(&profile_file, &bench_profile("poll_bench")?)?;
    let profile = load_file(&profile_file).map_err(|d| {
        let lines: Vec<String> = d.iter().map(ToString::to_string).collect();
        format!("the generated profile is refused:\n{}", lines.join("\n"))
    })?;
    let scenario_file = dir.join("bench.toml");
    write(&scenario_file, &bench_scenario("poll_bench", args.devices))?;

    let sim_path = match &args.sim {
        Some(p) => p.clone(),
        None => sibling_binary("fivezero-sim", "fivezero-sim")?,
    };
    let (sim, listeners) = start_sim(&sim_path, &scenario_file, dir)?;
    let sim_pid = sim.0.id();

    let config_file = dir.join("gateway.toml");
    write(
        &config_file,
        &gateway_config(args, &profile_file, &listeners, dir),
    )?;
    let config = Config::load_with_env(&config_file, Vec::new())
        .map_err(|e| format!("the generated config is refused:\n{e}"))?;
    let all: Vec<usize> = (0..profile.points.len()).collect();
    let planned = plan::plan_all(&profile).len();
    let minimum = plan::minimum_requests(&profile, &all);

    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let m = runtime.block_on(measure(args, &config, sim_pid))?;
    drop(sim);

    let window = m.window_ms as f64 / 1000.0;
    let readings = m.readings as f64;
    let cycles_expected = args.devices as u64 * (m.window_ms / interval_ms(args)) as u64;
    let cpu_per_k = m.cpu_s / (readings / 1000.0);
    let rss_mb = m.vm_hwm_kb as f64 / 1024.0;
    let missed = cycles_expected.saturating_sub(m.cycles);
    let on_time = m.overruns == 0 && missed == 0 && m.dropped == 0 && m.errors == 0;
    let cpu_ok = cpu_per_k < 0.0005;
    let rss_ok = rss_mb < 15.0;

    println!(
        "poll_bench: {} devices x {REGISTERS} registers ({} f32 points) every {}, measured for {:.1} s after {} warm-up",
        args.devices,
        profile.points.len(),
        humantime::format_duration(args.interval),
        window,
        humantime::format_duration(args.warmup),
    );
    println!(
        "  gateway: this process, tokio {} runtime; simulator: separate process {} (pid {sim_pid})",
        if args.threads == 1 {
            "current-thread".to_owned()
        } else {
            format!("multi-thread ({} workers)", args.threads)
        },
        sim_path.display()
    );
    println!(
        "readings/s                    {:.0} ({} readings: {} with a value, {} not available, {} errors)",
        readings / window,
        m.readings,
        m.valued,
        m.readings - m.valued - m.errors,
        m.errors
    );
    println!(
        "requests per cycle            {:.2} measured; planner {planned}, minimum {minimum}",
        m.requests as f64 / m.cycles.max(1) as f64
    );
    println!(
        "CPU s per 1,000 readings      {cpu_per_k:.6} ({:.2} s user+sys in {:.1} s = {:.1} % of one core)",
        m.cpu_s,
        window,
        100.0 * m.cpu_s / window
    );
    println!(
        "peak RSS (VmHWM)              {rss_mb:.1} MB (VmRSS at the end {:.1} MB)",
        m.vm_rss_kb as f64 / 1024.0
    );
    println!(
        "poll latency p50 / p99        {} / {} ({} requests; health histogram buckets)",
        percentile(&m.histogram, 0.50),
        percentile(&m.histogram, 0.99),
        m.histogram.iter().sum::<u64>()
    );
    println!("overruns                      {}", m.overruns);
    println!(
        "missed cycles                 {missed} ({} of {cycles_expected} cycles done, {} dropped)",
        m.cycles, m.dropped
    );
    if !m.reasons.is_empty() {
        println!("error reasons                 {:?}", m.reasons);
    }
    println!(
        "simulator CPU                 {:.2} s in {:.1} s = {:.1} % of one core",
        m.sim_cpu_s,
        window,
        100.0 * m.sim_cpu_s / window
    );
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "targets: < 0.0005 CPU s per 1,000 readings: {}; < 15 MB RSS: {}; every scheduled read done on time: {}",
        verdict(cpu_ok),
        verdict(rss_ok),
        verdict(on_time)
    );
    let load1 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    println!(
        "BENCH poll_bench devices={} window_s={window:.1} readings_per_s={:.0} readings={} \
         errors={} requests_per_cycle={:.2} planned={planned} minimum={minimum} \
         cpu_s={:.2} cpu_s_per_1000={cpu_per_k:.6} vm_hwm_mb={rss_mb:.1} p50_le_ms={} \
         p99_le_ms={} overruns={} missed={missed} dropped={} sim_cpu_s={:.2} load1={load1}",
        args.devices,
        readings / window,
        m.readings,
        m.errors,
        m.requests as f64 / m.cycles.max(1) as f64,
        m.cpu_s,
        bucket_bound(&m.histogram, 0.50),
        bucket_bound(&m.histogram, 0.99),
        m.overruns,
        m.dropped,
        m.sim_cpu_s,
    );
    Ok(cpu_ok && rss_ok && on_time)
}

fn interval_ms(args: &Args) -> i64 {
    i64::try_from(args.interval.as_millis()).unwrap_or(i64::MAX)
}

fn gateway_config(
    args: &Args,
    profile: &Path,
    listeners: &BTreeMap<String, SocketAddr>,
    dir: &Path,
) -> String {
    let mut s = format!(
        "[gateway]\nid = \"bench-gw\"\nsite = \"bench\"\nstate_dir = \"{}\"\n\n[poll]\n\
         connect_timeout = \"3s\"\n",
        dir.join("state").display()
    );
    for i in 0..args.devices {
        let addr = listeners
            .get(&listener_name(i))
            .map_or_else(String::new, ToString::to_string);
        s.push_str(&format!(
            "\n[[device]]\nname = \"{}\"\nprofile = \"{}\"\ntcp = \"{addr}\"\nunit = {}\n\
             interval = \"{}ms\"\ntimeout = \"{}ms\"\n",
            device_name(i),
            profile.display(),
            unit_of(i),
            args.interval.as_millis(),
            args.timeout.as_millis()
        ));
    }
    s
}

/// Starts the simulator and reads its listener lines.
fn start_sim(
    sim: &Path,
    scenario: &Path,
    dir: &Path,
) -> Result<(SimProcess, BTreeMap<String, SocketAddr>), String> {
    let log = std::fs::File::create(dir.join("sim.log"))
        .map_err(|e| format!("cannot create the simulator log: {e}"))?;
    let mut child = Command::new(sim)
        .arg("--scenario")
        .arg(scenario)
        .args(["--listen", "127.0.0.1:0", "--speed", "1"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", sim.display()))?;
    let stdout = child.stdout.take().ok_or("no simulator stdout")?;
    let process = SimProcess(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut listeners = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // One line per listener: "listener NAME on ADDR: devices".
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let Some(rest) = line.strip_prefix("listener ") else {
                    continue;
                };
                let mut words = rest.split_whitespace();
                let (Some(name), Some("on"), Some(addr)) =
                    (words.next(), words.next(), words.next())
                else {
                    continue;
                };
                let addr: SocketAddr = addr
                    .trim_end_matches(':')
                    .parse()
                    .map_err(|e| format!("simulator line {line:?}: {e}"))?;
                listeners.insert(name.to_owned(), addr);
                if listeners.len() == expected_listeners(scenario) {
                    return Ok((process, listeners));
                }
            }
            Err(_) => {
                return Err(format!(
                    "the simulator did not report its listeners within 60 s (log: {})",
                    dir.join("sim.log").display()
                ));
            }
        }
    }
}

fn expected_listeners(scenario: &Path) -> usize {
    let text = std::fs::read_to_string(scenario).unwrap_or_default();
    let devices = text.matches("[[device]]").count();
    devices.div_ceil(UNITS_PER_LISTENER).max(1)
}

/// What the measurement window saw.
#[derive(Debug, Default)]
struct Measured {
    window_ms: i64,
    readings: u64,
    valued: u64,
    errors: u64,
    reasons: BTreeMap<String, u64>,
    requests: u64,
    cycles: u64,
    overruns: u64,
    dropped: u64,
    histogram: Vec<u64>,
    cpu_s: f64,
    sim_cpu_s: f64,
    vm_hwm_kb: u64,
    vm_rss_kb: u64,
}

/// Counters shared with the consumer task.
#[derive(Debug, Default)]
struct Counts {
    readings: AtomicU64,
    valued: AtomicU64,
    errors: AtomicU64,
    reasons: std::sync::Mutex<BTreeMap<String, u64>>,
}

async fn measure(args: &Args, config: &Config, sim_pid: u32) -> Result<Measured, String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<DeviceReadings>(1024);
    let counts = Arc::new(Counts::default());
    let consumer = {
        let counts = Arc::clone(&counts);
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let mut valued = 0;
                let mut errors = 0;
                for x in &r.readings {
                    if x.quality == Quality::Error {
                        errors += 1;
                        if let Ok(mut m) = counts.reasons.lock() {
                            *m.entry(x.reason.clone().unwrap_or_default()).or_default() += 1;
                        }
                    } else if x.value.is_some() {
                        valued += 1;
                    }
                }
                counts
                    .readings
                    .fetch_add(r.readings.len() as u64, Ordering::Relaxed);
                counts.valued.fetch_add(valued, Ordering::Relaxed);
                counts.errors.fetch_add(errors, Ordering::Relaxed);
            }
        })
    };
    let poller = spawn(config, tx);

    tokio::time::sleep(args.warmup).await;
    let interval = interval_ms(args);
    let t0 = sleep_to_mid_interval(interval).await;
    let start = Snapshot::take(&poller, &counts, sim_pid)?;
    let window_ms = i64::try_from(args.seconds).unwrap_or(i64::MAX / 1000) * 1000;
    let window_ms = (window_ms - window_ms % interval).max(interval);
    sleep_until_wall(t0 + window_ms).await;
    let end = Snapshot::take(&poller, &counts, sim_pid)?;

    poller.shutdown().await;
    let _ = consumer.await;
    let reasons = counts.reasons.lock().map(|m| m.clone()).unwrap_or_default();
    let (hwm, rss) = memory();
    Ok(Measured {
        window_ms,
        readings: end.readings - start.readings,
        valued: end.valued - start.valued,
        errors: end.errors - start.errors,
        reasons,
        requests: end.health.requests - start.health.requests,
        cycles: end.health.cycles - start.health.cycles,
        overruns: end.health.overruns - start.health.overruns,
        dropped: end.health.dropped - start.health.dropped,
        histogram: end
            .health
            .histogram
            .iter()
            .zip(&start.health.histogram)
            .map(|(e, s)| e - s)
            .collect(),
        cpu_s: end.cpu - start.cpu,
        sim_cpu_s: end.sim_cpu - start.sim_cpu,
        vm_hwm_kb: hwm,
        vm_rss_kb: rss,
    })
}

/// Sleeps until half an interval past the next cycle boundary of the wall clock; returns that
/// instant (UTC ms).
async fn sleep_to_mid_interval(interval_ms: i64) -> i64 {
    let now = now_ms();
    let target = (now - interval_ms / 2).div_euclid(interval_ms) * interval_ms
        + interval_ms
        + interval_ms / 2;
    sleep_until_wall(target).await;
    target
}

/// Sleeps until the wall clock reads `target_ms`.
async fn sleep_until_wall(target_ms: i64) {
    let wait = u64::try_from(target_ms - now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[derive(Debug, Default)]
struct HealthTotals {
    requests: u64,
    cycles: u64,
    overruns: u64,
    dropped: u64,
    histogram: Vec<u64>,
}

impl HealthTotals {
    fn of(all: &[HealthSnapshot]) -> Self {
        let mut t = Self {
            histogram: vec![0; LATENCY_BUCKETS_MS.len() + 1],
            ..Self::default()
        };
        for h in all {
            t.requests += h.requests;
            t.cycles += h.cycles;
            t.overruns += h.overruns;
            t.dropped += h.cycles_dropped;
            for (sum, n) in t.histogram.iter_mut().zip(&h.latency_histogram) {
                *sum += n;
            }
        }
        t
    }
}

#[derive(Debug)]
struct Snapshot {
    readings: u64,
    valued: u64,
    errors: u64,
    health: HealthTotals,
    cpu: f64,
    sim_cpu: f64,
}

impl Snapshot {
    fn take(poller: &Poller, counts: &Counts, sim_pid: u32) -> Result<Self, String> {
        Ok(Self {
            readings: counts.readings.load(Ordering::Relaxed),
            valued: counts.valued.load(Ordering::Relaxed),
            errors: counts.errors.load(Ordering::Relaxed),
            health: HealthTotals::of(&poller.health()),
            cpu: cpu_seconds("/proc/self/stat")?,
            sim_cpu: cpu_seconds(&format!("/proc/{sim_pid}/stat"))?,
        })
    }
}

/// utime + stime of a process, from `/proc/<pid>/stat`, in seconds.
fn cpu_seconds(path: &str) -> Result<f64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| format!("{path}: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line (utime, stime); `rest` starts at field 3.
    let tick = |i: usize| -> Result<f64, String> {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v as f64 / USER_HZ)
            .ok_or_else(|| format!("{path}: no field {}", i + 3))
    };
    Ok(tick(11)? + tick(12)?)
}

/// VmHWM and VmRSS of this process, kB.
fn memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The upper bound (ms) of the bucket the `q` quantile falls in: `inf` above the last bucket,
/// `-` without requests.
fn bucket_bound(histogram: &[u64], q: f64) -> String {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return "-".to_owned();
    }
    let rank = ((total as f64) * q).ceil() as u64;
    let mut seen = 0;
    for (i, n) in histogram.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return LATENCY_BUCKETS_MS
                .get(i)
                .map_or_else(|| "inf".to_owned(), ToString::to_string);
        }
    }
    "-".to_owned()
}

/// The bucket the `q` quantile falls in, as "≤ N ms".
fn percentile(histogram: &[u64], q: f64) -> String {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return "-".to_owned();
    }
    let rank = ((total as f64) * q).ceil() as u64;
    let mut seen = 0;
    for (i, n) in histogram.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return match LATENCY_BUCKETS_MS.get(i) {
                Some(ms) => format!("<= {ms} ms"),
                None => format!("> {} ms", LATENCY_BUCKETS_MS.last().copied().unwrap_or(0)),
            };
        }
    }
    "-".to_owned()
}
