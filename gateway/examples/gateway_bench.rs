//! Benchmark of the whole gateway: poll, decode, commit at `synchronous = FULL`, publish to
//! Mosquitto, with a subscriber acknowledging like the cloud sink.
//!
//! ```text
//! cargo build --release -p fivezero-sim -p fivezero-gateway
//! cargo run --release -p fivezero-gateway --example gateway_bench -- \
//!     [--devices 100] [--seconds 60] [--backlog 600s] [--mqtt mqtt://127.0.0.1:1883]
//! ```
//!
//! Three processes: the simulator (`target/release/fivezero-sim`, or `--sim PATH`), the real
//! gateway daemon (`target/release/fivezero-gateway run --config FILE`, or `--gateway PATH`)
//! and this program, which writes the scenario and the config into a scratch folder, plays the
//! cloud sink's part on MQTT and measures. The gateway's CPU time is `utime + stime` of its
//! process from `/proc/PID/stat` (every thread, 10 ms ticks), its memory `VmHWM` / `VmRSS`
//! from `/proc/PID/status`.
//!
//! The workload is `poll_bench`'s: a generated profile of 150 holding registers (75 `f32`
//! points), `--devices` such devices behind the simulator (grid-meter physics), each polled
//! over its own TCP connection every `--interval` (1 s).
//!
//! # The subscriber
//!
//! A rumqttc client (MQTT 3.1.1, QoS 1) subscribed to the gateway's `…/batches` topic counts
//! messages, readings, payload bytes and new sequence numbers, and, as the cloud sink does,
//! publishes the retained ack watermark (`AckWatermark` on `…/ack`): the highest sequence of
//! the batch's epoch below which every sequence has arrived. It publishes the watermark when it
//! has moved, at most every 100 ms (a sink acknowledges after its store commits, which batches
//! in the same way). Without it the gateway's buffer (`retain_until = "sink_ack"`, the default)
//! would only grow.
//!
//! # Live figures (`--seconds`, on the broker of `--mqtt`)
//!
//! After `--warmup` the window runs for `--seconds`, from half an interval past a cycle
//! boundary. CPU seconds per 1,000 readings are the gateway's CPU time over the readings it
//! committed in the window (`fivezero_readings_committed_total` from its metrics endpoint,
//! scraped at both ends); the subscriber's count of readings received is printed beside it.
//!
//! Latency is measured two ways:
//!
//! - **read → arrival**, for every reading of the window: the instant the subscriber received
//!   the message minus the reading's `ts`, which the gateway sets to the receipt time of the
//!   Modbus reply that carried the register (same machine, same clock, 1 ms resolution of `ts`).
//!   This is the latency from a register change to its arrival when the change happens just
//!   before the poll, and is the figure held against the aim.
//! - **change → arrival**, for real register changes made through the simulator's control
//!   endpoint: four tasks, each with its own devices, repeatedly wait a random fraction of an
//!   interval, note the time `t0`, switch a device into Modbus exception 04 (`PUT
//!   /devices/NAME/fault`), wait for the first reading of that device with quality `error` and
//!   `ts >= t0` to arrive, then likewise clear the fault and wait for the first non-error
//!   reading. Each arrival minus `t0` is one sample. Changes land at a random phase of the poll
//!   cycle, so these include the wait for the next poll (uniform over one interval, the same
//!   for any polling gateway); the split into "wait for the poll" (`ts - t0`) and "read →
//!   arrival" (`arrival - ts`) is printed too.
//!
//! Bytes on the wire: MQTT payload bytes received per reading, and, computed from the payload
//! and topic sizes, the MQTT 5 PUBLISH packets the gateway sends (fixed header, topic, packet
//! id, its content-type and `schema` properties); TCP/IP headers and PUBACKs are not counted.
//!
//! # Replay (`--backlog`, on a private Mosquitto)
//!
//! The bench starts its own Mosquitto (`/usr/sbin/mosquitto`, or `--mosquitto PATH`) on a free
//! port, with no limit on the messages it queues for the subscriber, and puts a TCP relay of
//! its own in front of it for the gateway; the subscriber connects to Mosquitto directly. After
//! the warm-up the relay closes the gateway's connection and its listening socket (the broker
//! is unreachable: connection refused) for `--backlog` (600 s), then listens on the same port
//! again. The gateway reconnects after its own backoff and drains the backlog while it keeps
//! polling. Printed: the backlog (readings and buffer bytes), the live commit rate during the
//! outage, the delay until the first message arrives after the broker is back, the replay
//! rate (new readings received per second from that first message until the subscriber's
//! watermark reaches what was committed when the broker came back) and its ratio to the live
//! rate, the time until the gateway is live again, and the gateway's largest RSS (sampled every
//! 100 ms) during the outage and during the drain. The relay keeps the subscriber's session
//! and the retained ack out of the outage, so what is measured is the gateway's replay alone.
//!
//! # End to end (`--sink-seconds`, on the broker of `--mqtt`)
//!
//! A register change all the way to the cloud sink's HTTP API. A fresh gateway publishes to
//! the broker of `--mqtt`, and the real sink (`target/release/fivezero-sink`, or `--sink
//! PATH`; a separate process on a fresh SQLite file, its own topic prefix) stores and
//! acknowledges, in place of the subscriber above. After the warm-up, four tasks, each with
//! its own devices, work in turn for `--sink-seconds` (default: `--seconds`): switch a device
//! into Modbus exception 04 through the simulator's control endpoint, wait one to two
//! intervals (a random time, so that at least one poll sees the exception and the change
//! below lands at a random phase of the poll cycle), note `t0` and clear the fault. The
//! register now answers with its value again: that is the change. The task then asks the
//! sink's API (`GET /api/v1/sites/bench/series?device=…&metric=…&from=t0&step=1s&agg=last`)
//! every 20 ms until a bucket appears, i.e. until the sink serves a value read at or after
//! `t0` (the API leaves readings of quality `error` out, so only the new value can appear).
//! The time of that answer minus `t0` is one sample. A second query then checks that the API
//! holds no value between the fault and `t0` (from 100 ms after the fault was set), i.e. that
//! the exception really replaced the value; a sample that fails the check is not counted. The
//! metric is the first of the profile's that carries values on `dev-0000`.
//!
//! Printed: p50, p95, p99 and max of change → value in the sink's API, the part of it spent
//! waiting for the next poll (computed from the cycle boundaries, which the gateway aligns
//! to multiples of the interval on the wall clock) and the rest; and the sink's live figures
//! over the window: readings stored per second, CPU seconds per 1,000 readings stored and its
//! peak RSS (`VmHWM`). The API queries themselves (about 50 a second while a change is being
//! waited for, four tasks) are included in the sink's CPU time.
//!
//! `--seconds 0` skips the live figures, `--sink-seconds 0` the end-to-end ones, `--backlog
//! 0s` the replay. A phase that fails is reported and the next one still runs.
//!
//! # Machine-readable output
//!
//! Each phase ends with one line `BENCH gateway_bench.PHASE key=value …` (`live`, `e2e`,
//! `replay`): the same figures as the lines above it, numbers without units (the unit is in
//! the key: `_ms`, `_s`, `_mb`, `_per_s`), for the benchmark suite (`bench/`) to collect.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fivezero_model::topic::Topics;
use fivezero_model::wire::{self, AckWatermark, Epoch, Quality, SCHEMA_VERSION, StreamAck};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[path = "common/workload.rs"]
mod workload;

use workload::{
    REGISTERS, SITE, UNITS_PER_LISTENER, USER_HZ, bench_profile, bench_scenario, device_name,
    listener_name, sibling_binary, unit_of, write,
};

/// Tasks making register changes through the control endpoint.
const CHANGE_TASKS: usize = 4;
/// Most time a register change may take to arrive before it counts as lost.
const CHANGE_LIMIT: Duration = Duration::from_secs(10);
/// How often the subscriber publishes a moved watermark.
const ACK_EVERY: Duration = Duration::from_millis(100);
/// Properties of the gateway's MQTT 5 publishes: content type (1 + 2 + 16) and the `schema`
/// user property (1 + 2 + 6 + 2 + 1).
const V5_PROPERTIES: usize = 19 + 12;

#[derive(Debug, Clone)]
struct Args {
    devices: usize,
    seconds: u64,
    interval: Duration,
    timeout: Duration,
    warmup: Duration,
    backlog: Duration,
    drain_limit: Duration,
    synchronous: String,
    mqtt: (String, u16),
    sim: Option<PathBuf>,
    gateway: Option<PathBuf>,
    mosquitto: PathBuf,
    /// The end-to-end phase's length; `None`: `seconds`.
    sink_seconds: Option<u64>,
    sink: Option<PathBuf>,
}

fn usage() -> &'static str {
    "gateway_bench [--devices N] [--seconds S] [--interval 1s] [--timeout 1s] [--warmup 10s] \
     [--backlog 600s] [--drain-limit 900s] [--synchronous full|normal] [--mqtt mqtt://HOST:PORT] \
     [--sim PATH] [--gateway PATH] [--mosquitto PATH] [--sink-seconds S] [--sink PATH]"
}

fn parse_mqtt(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("mqtt://")
        .ok_or_else(|| format!("{url:?}: only mqtt://HOST[:PORT] is supported"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "1883"));
    let port = port
        .parse()
        .map_err(|e| format!("{url:?}: bad port: {e}"))?;
    Ok((host.to_owned(), port))
}

fn parse_args() -> Result<Args, String> {
    let default_mqtt = std::env::var("FIVEZERO_TEST_MQTT")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "mqtt://127.0.0.1:1883".to_owned());
    let mut a = Args {
        devices: 100,
        seconds: 60,
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        warmup: Duration::from_secs(10),
        backlog: Duration::from_secs(600),
        drain_limit: Duration::from_secs(900),
        synchronous: "full".to_owned(),
        mqtt: parse_mqtt(&default_mqtt)?,
        sim: None,
        gateway: None,
        mosquitto: PathBuf::from("/usr/sbin/mosquitto"),
        sink_seconds: None,
        sink: None,
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
            "--backlog" => a.backlog = duration(&value)?,
            "--drain-limit" => a.drain_limit = duration(&value)?,
            "--synchronous" => match value.as_str() {
                "full" | "normal" => a.synchronous.clone_from(&value),
                _ => return Err(bad(&"use full or normal")),
            },
            "--mqtt" => a.mqtt = parse_mqtt(&value)?,
            "--sim" => a.sim = Some(PathBuf::from(&value)),
            "--gateway" => a.gateway = Some(PathBuf::from(&value)),
            "--mosquitto" => a.mosquitto = PathBuf::from(&value),
            "--sink-seconds" => a.sink_seconds = Some(value.parse().map_err(|e| bad(&e))?),
            "--sink" => a.sink = Some(PathBuf::from(&value)),
            _ => return Err(format!("unknown option {flag}; {}", usage())),
        }
    }
    if a.devices == 0 {
        return Err("--devices must be at least 1".to_owned());
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
    let dir = std::env::temp_dir().join(format!("fivezero-gateway-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("error: {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(bench(&args, &dir));
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("(scratch folder and logs kept in {})", dir.display());
    }
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

// ------------------------------------------------------------------------------------------
// Set-up: profile, scenario, config, processes
// ------------------------------------------------------------------------------------------

/// What makes one gateway run distinct on the broker.
#[derive(Debug, Clone)]
struct Identity {
    id: String,
    prefix: String,
}

impl Identity {
    fn new(what: &str) -> Self {
        let tag = format!("{:08x}", rand::random::<u32>());
        Self {
            id: format!("bench-gw-{what}-{tag}"),
            prefix: format!("fivezero-bench/{tag}"),
        }
    }

    fn topics(&self) -> Result<Topics, String> {
        Topics::new(&self.prefix, SITE, &self.id).map_err(|e| e.to_string())
    }
}

fn gateway_config(
    args: &Args,
    who: &Identity,
    profile: &Path,
    listeners: &BTreeMap<String, SocketAddr>,
    state_dir: &Path,
    broker: (&str, u16),
    metrics: SocketAddr,
) -> String {
    let mut s = format!(
        "[gateway]\nid = \"{}\"\nsite = \"{SITE}\"\nstate_dir = \"{}\"\n\n\
         [metrics]\nlisten = \"{metrics}\"\n\n\
         [mqtt]\nurl = \"mqtt://{}:{}\"\nprefix = \"{}\"\n\n\
         [buffer]\nsynchronous = \"{}\"\n\n\
         [poll]\nconnect_timeout = \"3s\"\n",
        who.id,
        state_dir.display(),
        broker.0,
        broker.1,
        who.prefix,
        args.synchronous,
    );
    for i in 0..args.devices {
        let addr = listeners
            .get(&listener_name(i))
            .map_or_else(String::new, ToString::to_string);
        let _ = write!(
            s,
            "\n[[device]]\nname = \"{}\"\nprofile = \"{}\"\ntcp = \"{addr}\"\nunit = {}\n\
             interval = \"{}ms\"\ntimeout = \"{}ms\"\n",
            device_name(i),
            profile.display(),
            unit_of(i),
            args.interval.as_millis(),
            args.timeout.as_millis()
        );
    }
    s
}

/// A child process killed (SIGKILL) when dropped, whatever happened.
#[derive(Debug)]
struct Process {
    child: Option<Child>,
    what: &'static str,
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM (through `kill`, this program has no libc), then waits up to `limit`, then
    /// SIGKILL. Returns whether it stopped on the SIGTERM.
    async fn terminate(&mut self, limit: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "{} did not stop within {limit:?} of SIGTERM; killed",
            self.what
        );
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Whether it is still running.
    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The simulator, its listeners and its control endpoint.
#[derive(Debug)]
struct Sim {
    process: Process,
    listeners: BTreeMap<String, SocketAddr>,
    control: SocketAddr,
}

fn start_sim(sim: &Path, scenario: &Path, devices: usize, dir: &Path) -> Result<Sim, String> {
    let log = std::fs::File::create(dir.join("sim.log"))
        .map_err(|e| format!("cannot create the simulator log: {e}"))?;
    let mut child = Command::new(sim)
        .arg("--scenario")
        .arg(scenario)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--speed",
            "1",
            "--control",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", sim.display()))?;
    let stdout = child.stdout.take().ok_or("no simulator stdout")?;
    let mut process = Process {
        child: Some(child),
        what: "the simulator",
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let want = devices.div_ceil(UNITS_PER_LISTENER).max(1);
    let mut listeners = BTreeMap::new();
    let mut control = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let log = dir.join("sim.log");
    // "listener NAME on ADDR: devices", then "control on http://ADDR/devices".
    while listeners.len() < want || control.is_none() {
        let line = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => line,
            Err(_) if !process.running() => {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("the simulator stopped:\n{}", text.trim_end()));
            }
            Err(_) if std::time::Instant::now() > deadline => {
                return Err(format!(
                    "the simulator did not report its listeners and control endpoint within \
                     60 s (log: {})",
                    log.display()
                ));
            }
            Err(_) => continue,
        };
        if let Some(rest) = line.strip_prefix("listener ") {
            let mut words = rest.split_whitespace();
            if let (Some(name), Some("on"), Some(addr)) = (words.next(), words.next(), words.next())
            {
                let addr: SocketAddr = addr
                    .trim_end_matches(':')
                    .parse()
                    .map_err(|e| format!("simulator line {line:?}: {e}"))?;
                listeners.insert(name.to_owned(), addr);
            }
        } else if let Some(rest) = line.strip_prefix("control on http://") {
            let addr = rest.trim_end_matches("/devices");
            control = Some(
                addr.parse()
                    .map_err(|e| format!("simulator line {line:?}: {e}"))?,
            );
        }
    }
    Ok(Sim {
        process,
        listeners,
        control: control.ok_or("no control endpoint")?,
    })
}

fn start_gateway(gateway: &Path, config: &Path, log: &Path) -> Result<Process, String> {
    let log = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = log
        .try_clone()
        .map_err(|e| format!("cannot share the gateway log: {e}"))?;
    let child = Command::new(gateway)
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("FIVEZERO_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", gateway.display()))?;
    Ok(Process {
        child: Some(child),
        what: "the gateway",
    })
}

/// A port that was free a moment ago.
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local addr: {e}"))
}

/// Waits until `addr` accepts TCP connections.
async fn wait_listening(addr: SocketAddr, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{what} does not accept connections on {addr}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------------------------------
// /proc and HTTP
// ------------------------------------------------------------------------------------------

/// utime + stime of a process, from `/proc/<pid>/stat`, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64, String> {
    cpu_split(pid).map(|(user, system)| user + system)
}

/// utime and stime of a process, from `/proc/<pid>/stat`, in seconds.
fn cpu_split(pid: u32) -> Result<(f64, f64), String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
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
    Ok((tick(11)?, tick(12)?))
}

/// VmHWM and VmRSS of a process, kB (0 when unreadable).
fn memory(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// One HTTP/1.1 request with `Connection: close`: the status and the body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| format!("{method} http://{addr}{path}: no answer within 10 s"))?
        .map_err(|e| format!("{method} http://{addr}{path}: {e}"))?;
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{method} http://{addr}{path}: not an HTTP answer"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or_else(String::new, |(_, b)| b.to_owned());
    Ok((status, body))
}

/// The gateway's Prometheus figures, by metric name (labels dropped, values of one name
/// summed).
#[derive(Debug, Default, Clone)]
struct Metrics(HashMap<String, f64>);

impl Metrics {
    async fn scrape(addr: SocketAddr) -> Result<Self, String> {
        let (status, body) = http(addr, "GET", "/metrics", "").await?;
        if status != 200 {
            return Err(format!("GET /metrics answered {status}"));
        }
        let mut m = HashMap::new();
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = name.split('{').next().unwrap_or(name).trim();
            if let Ok(v) = value.trim().parse::<f64>() {
                *m.entry(name.to_owned()).or_insert(0.0) += v;
            }
        }
        Ok(Self(m))
    }

    /// A figure; counters are looked up with and without `_total`.
    fn get(&self, name: &str) -> f64 {
        self.0
            .get(name)
            .or_else(|| self.0.get(&format!("{name}_total")))
            .copied()
            .unwrap_or(0.0)
    }

    fn u(&self, name: &str) -> u64 {
        self.get(name).max(0.0) as u64
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn now_ms() -> i64 {
    now_us() / 1000
}

/// Sleeps until half an interval past the next cycle boundary of the wall clock.
async fn sleep_to_mid_interval(interval_ms: i64) {
    let now = now_ms();
    let target = (now - interval_ms / 2).div_euclid(interval_ms) * interval_ms
        + interval_ms
        + interval_ms / 2;
    let wait = u64::try_from(target - now).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ------------------------------------------------------------------------------------------
// The subscriber ("the sink")
// ------------------------------------------------------------------------------------------

/// Sequences received of one epoch: the contiguous watermark and the ranges above it.
#[derive(Debug, Default)]
struct Ranges {
    contiguous: u64,
    /// Disjoint ranges `first -> last` above `contiguous + 1`.
    above: BTreeMap<u64, u64>,
}

impl Ranges {
    /// Adds `first ..= last`; returns how many of them are new.
    fn add(&mut self, first: u64, last: u64) -> u64 {
        // The part above the watermark; the rest is already here.
        let lo = first.max(self.contiguous + 1);
        if lo > last {
            return 0;
        }
        let (mut a, mut b) = (lo, last);
        let mut covered = 0;
        // Ranges overlapping or touching [lo, last]: count the overlap, merge them in.
        let touching: Vec<(u64, u64)> = self
            .above
            .range(..=last.saturating_add(1))
            .filter(|&(_, &l)| l.saturating_add(1) >= lo)
            .map(|(&f, &l)| (f, l))
            .collect();
        for (f, l) in touching {
            let (x, y) = (f.max(lo), l.min(last));
            if x <= y {
                covered += y - x + 1;
            }
            self.above.remove(&f);
            a = a.min(f);
            b = b.max(l);
        }
        if a <= self.contiguous + 1 {
            self.contiguous = self.contiguous.max(b);
        } else {
            self.above.insert(a, b);
        }
        (last - lo + 1) - covered
    }
}

/// One register change being waited for.
#[derive(Debug, Clone, Copy)]
struct Watch {
    /// Waiting for an `error` reading (the fault was set) or a non-error one (cleared).
    want_error: bool,
    /// `t0`, UTC ms: only readings read at or after it count.
    since_ms: i64,
    /// The first matching reading: (arrival µs, its ts ms).
    hit: Option<(i64, i64)>,
}

/// What the subscriber has seen; shared with the measuring code.
#[derive(Debug, Default)]
struct SinkState {
    messages: AtomicU64,
    readings: AtomicU64,
    new_readings: AtomicU64,
    payload_bytes: AtomicU64,
    /// MQTT 5 PUBLISH bytes the gateway sent for these payloads (computed).
    packet_bytes: AtomicU64,
    malformed: AtomicU64,
    /// UTC µs of the latest batch received.
    last_arrival_us: AtomicI64,
    /// Per epoch.
    ranges: Mutex<HashMap<Epoch, Ranges>>,
    /// Decode every reading (latency, register changes) rather than the header only.
    full_decode: AtomicBool,
    /// Record read → arrival latencies (ms).
    recording: AtomicBool,
    latencies: Mutex<Vec<f32>>,
    watches: Mutex<HashMap<String, Watch>>,
    watch_hit: Notify,
    /// Set by the event loop on every CONNACK: publish the watermark again.
    reconnected: AtomicBool,
    /// Replay: UTC µs of the first batch received after the broker came back (0: none yet).
    first_us: AtomicI64,
    /// Replay: the watermark to reach (0: none).
    target: AtomicU64,
    /// Replay: UTC µs when the watermark reached `target`, and `new_readings` then.
    caught_us: AtomicI64,
    caught_new: AtomicU64,
}

impl SinkState {
    fn contiguous(&self) -> u64 {
        lock(&self.ranges)
            .values()
            .map(|r| r.contiguous)
            .max()
            .unwrap_or(0)
    }
}

/// The header of a batch, read without its readings.
#[derive(Debug, serde::Deserialize)]
struct Header {
    epoch: Epoch,
    first_seq: u64,
    count: u32,
}

/// The subscriber's tasks; aborted when dropped.
#[derive(Debug)]
struct Sink {
    state: Arc<SinkState>,
    client: AsyncClient,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

impl Sink {
    /// Connects to `broker`, subscribes to the batches of `topics` and waits for the SUBACK.
    async fn start(
        broker: (&str, u16),
        topics: &Topics,
        full_decode: bool,
    ) -> Result<Self, String> {
        let id = format!("bench-sink-{:08x}", rand::random::<u32>());
        let mut options = MqttOptions::new(id, broker.0, broker.1);
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(options, 256);
        let state = Arc::new(SinkState::default());
        state.full_decode.store(full_decode, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::channel(1);
        let batches = topics.batches().to_owned();
        let topic_len = batches.len();
        let sub = client.clone();
        let st = Arc::clone(&state);
        let events = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        st.reconnected.store(true, Ordering::Relaxed);
                        let _ = sub.subscribe(batches.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.try_send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.topic == batches {
                            let _ = tx.send((now_us(), p.payload));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        let st = Arc::clone(&state);
        let process = tokio::spawn(async move {
            while let Some((arrival, payload)) = rx.recv().await {
                receive(&st, arrival, &payload, topic_len);
            }
        });
        let ack = tokio::spawn(publish_acks(
            client.clone(),
            Arc::clone(&state),
            topics.ack().to_owned(),
            topics.gateway().to_owned(),
        ));
        tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
            .await
            .map_err(|_| {
                format!(
                    "cannot subscribe on mqtt://{}:{} within 10 s (is the broker running?)",
                    broker.0, broker.1
                )
            })?;
        Ok(Self {
            state,
            client,
            tasks: vec![events, process, ack],
        })
    }

    /// Clears the retained status and ack of the run, so the broker keeps nothing of it.
    async fn clean_up(&self, topics: &Topics) {
        for topic in [topics.status(), topics.ack()] {
            let _ = self
                .client
                .publish(topic, QoS::AtLeastOnce, true, Vec::new())
                .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Counts one batch message.
fn receive(st: &SinkState, arrival_us: i64, payload: &[u8], topic_len: usize) {
    st.last_arrival_us.store(arrival_us, Ordering::Relaxed);
    st.messages.fetch_add(1, Ordering::Relaxed);
    st.payload_bytes
        .fetch_add(payload.len() as u64, Ordering::Relaxed);
    let remaining = 2 + topic_len + 2 + 1 + V5_PROPERTIES + payload.len();
    st.packet_bytes.fetch_add(
        (1 + varint_len(remaining) + remaining) as u64,
        Ordering::Relaxed,
    );
    let (epoch, first_seq, count) = if st.full_decode.load(Ordering::Relaxed) {
        let Ok(batch) = wire::decode_batch(payload) else {
            st.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let arrival_ms = arrival_us as f64 / 1000.0;
        if st.recording.load(Ordering::Relaxed) {
            let mut l = lock(&st.latencies);
            l.extend(
                batch
                    .readings
                    .iter()
                    .map(|r| (arrival_ms - r.ts as f64) as f32),
            );
        }
        let mut hit = false;
        {
            let mut watches = lock(&st.watches);
            if !watches.is_empty() {
                for r in &batch.readings {
                    if let Some(w) = watches.get_mut(r.device.as_str())
                        && w.hit.is_none()
                        && r.ts >= w.since_ms
                        && (r.quality == Quality::Error) == w.want_error
                    {
                        w.hit = Some((arrival_us, r.ts));
                        hit = true;
                    }
                }
            }
        }
        if hit {
            st.watch_hit.notify_waiters();
        }
        (batch.epoch, batch.first_seq, batch.count)
    } else {
        match serde_json::from_slice::<Header>(payload) {
            Ok(h) => (h.epoch, h.first_seq, h.count),
            Err(_) => {
                st.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    };
    st.readings.fetch_add(u64::from(count), Ordering::Relaxed);
    let target = st.target.load(Ordering::Relaxed);
    if target > 0 {
        let _ = st
            .first_us
            .compare_exchange(0, arrival_us, Ordering::Relaxed, Ordering::Relaxed);
    }
    if count > 0 {
        let contiguous = {
            let mut ranges = lock(&st.ranges);
            let r = ranges.entry(epoch).or_default();
            let new = r.add(first_seq, first_seq + u64::from(count) - 1);
            st.new_readings.fetch_add(new, Ordering::Relaxed);
            r.contiguous
        };
        if target > 0 && contiguous >= target && st.caught_us.load(Ordering::Relaxed) == 0 {
            st.caught_new
                .store(st.new_readings.load(Ordering::Relaxed), Ordering::Relaxed);
            st.caught_us.store(arrival_us, Ordering::Relaxed);
        }
    }
}

/// Publishes the retained watermark when it moved (or after a reconnect), at most every
/// [`ACK_EVERY`].
async fn publish_acks(client: AsyncClient, st: Arc<SinkState>, topic: String, gateway: String) {
    let mut last: HashMap<Epoch, u64> = HashMap::new();
    let mut tick = tokio::time::interval(ACK_EVERY);
    loop {
        tick.tick().await;
        let streams: Vec<StreamAck> = lock(&st.ranges)
            .iter()
            .map(|(&epoch, r)| StreamAck {
                epoch,
                seq: r.contiguous,
            })
            .collect();
        let again = st.reconnected.swap(false, Ordering::Relaxed);
        let moved = streams.iter().any(|s| last.get(&s.epoch) != Some(&s.seq));
        if streams.is_empty() || !(moved || again) {
            continue;
        }
        let ack = AckWatermark {
            schema: SCHEMA_VERSION,
            gateway: gateway.clone(),
            streams: streams.clone(),
            ts: now_ms(),
        };
        if client
            .publish(topic.clone(), QoS::AtLeastOnce, true, wire::encode(&ack))
            .await
            .is_ok()
        {
            last = streams.iter().map(|s| (s.epoch, s.seq)).collect();
        } else {
            st.reconnected.store(true, Ordering::Relaxed);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Register changes through the simulator's control endpoint
// ------------------------------------------------------------------------------------------

/// One register change and when it arrived.
#[derive(Debug, Clone, Copy)]
struct Change {
    /// `t0`, UTC µs, just before the control request.
    t0_us: i64,
    /// `ts` of the first reading showing it, UTC ms.
    ts_ms: i64,
    /// When that reading arrived at the subscriber, UTC µs.
    arrival_us: i64,
}

/// Makes changes on `devices` in turn until `until`; returns them and the changes lost.
async fn make_changes(
    control: SocketAddr,
    st: Arc<SinkState>,
    devices: Vec<String>,
    interval_ms: u64,
    until: Instant,
) -> Result<(Vec<Change>, u64), String> {
    let mut changes = Vec::new();
    let mut lost = 0;
    let mut next = 0;
    while Instant::now() < until && !devices.is_empty() {
        let device = &devices[next % devices.len()];
        next += 1;
        for want_error in [true, false] {
            let phase = rand::random_range(0..interval_ms.max(1));
            tokio::time::sleep(Duration::from_millis(phase)).await;
            let t0_us = now_us();
            lock(&st.watches).insert(
                device.clone(),
                Watch {
                    want_error,
                    since_ms: t0_us.div_euclid(1000),
                    hit: None,
                },
            );
            let path = format!("/devices/{device}/fault");
            let (status, body) = if want_error {
                http(control, "PUT", &path, r#"{"kind":"exception","code":4}"#).await?
            } else {
                http(control, "DELETE", &path, "").await?
            };
            if status != 200 {
                return Err(format!(
                    "control endpoint: {path} answered {status}: {body}"
                ));
            }
            let deadline = Instant::now() + CHANGE_LIMIT;
            let hit = loop {
                let notified = st.watch_hit.notified();
                let hit = lock(&st.watches).get(device).and_then(|w| w.hit);
                if hit.is_some() {
                    break hit;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    let hit = lock(&st.watches).get(device).and_then(|w| w.hit);
                    break hit;
                }
            };
            lock(&st.watches).remove(device);
            match hit {
                Some((arrival_us, ts_ms)) => changes.push(Change {
                    t0_us,
                    ts_ms,
                    arrival_us,
                }),
                None => lost += 1,
            }
        }
    }
    Ok((changes, lost))
}

// ------------------------------------------------------------------------------------------
// The runs
// ------------------------------------------------------------------------------------------

/// The `q` quantile of sorted values.
fn quantile(sorted: &[f32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64) * q).ceil().max(1.0) as usize;
    f64::from(sorted[rank.min(sorted.len()) - 1])
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// Prints a phase's machine-readable line, `BENCH gateway_bench.PHASE key=value …` (values
/// never hold spaces).
fn bench_line(phase: &str, fields: &[(&str, String)]) {
    let mut line = format!("BENCH gateway_bench.{phase}");
    for (key, value) in fields {
        let _ = write!(line, " {key}={}", value.replace(char::is_whitespace, "_"));
    }
    println!("{line}");
}

/// The 1-minute load average.
fn load1() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

async fn bench(args: &Args, dir: &Path) -> Result<bool, String> {
    let profile_file = dir.join("bench-150.toml");
    write(&profile_file, &bench_profile("gateway_bench")?)?;
    let scenario_file = dir.join("bench.toml");
    write(
        &scenario_file,
        &bench_scenario("gateway_bench", args.devices),
    )?;
    let sim_path = match &args.sim {
        Some(p) => p.clone(),
        None => sibling_binary("fivezero-sim", "fivezero-sim")?,
    };
    let gateway_path = match &args.gateway {
        Some(p) => p.clone(),
        None => sibling_binary("fivezero-gateway", "fivezero-gateway")?,
    };
    let sim = start_sim(&sim_path, &scenario_file, args.devices, dir)?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "gateway_bench: {} devices x {REGISTERS} registers (75 f32 points) every {}, \
         synchronous = {}",
        args.devices,
        humantime::format_duration(args.interval),
        args.synchronous.to_uppercase()
    );
    println!(
        "  gateway {} (separate process); simulator {} (pid {}); load average at start {}",
        gateway_path.display(),
        sim_path.display(),
        sim.process.pid(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut ok = true;
    let mut failed = Vec::new();
    let mut outcome = |phase: &str, r: Result<bool, String>| match r {
        Ok(met) => ok &= met,
        Err(e) => {
            println!("{phase}: failed: {e}");
            failed.push(format!("{phase}: {e}"));
        }
    };
    if args.seconds > 0 {
        outcome(
            "live",
            live(args, dir, &sim, &gateway_path, &profile_file).await,
        );
    }
    let sink_seconds = args.sink_seconds.unwrap_or(args.seconds);
    if sink_seconds > 0 {
        let r = end_to_end(args, sink_seconds, dir, &sim, &gateway_path, &profile_file).await;
        outcome("e2e", r);
    }
    if !args.backlog.is_zero() {
        outcome(
            "replay",
            replay(args, dir, &sim, &gateway_path, &profile_file).await,
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average at the end {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    drop(sim);
    if failed.is_empty() {
        Ok(ok)
    } else {
        Err(failed.join("; "))
    }
}

/// Starts a gateway with its own state folder and metrics port against `broker`.
#[allow(clippy::too_many_arguments)]
async fn launch(
    args: &Args,
    dir: &Path,
    name: &str,
    sim: &Sim,
    gateway: &Path,
    profile: &Path,
    who: &Identity,
    broker: (&str, u16),
) -> Result<(Process, SocketAddr), String> {
    let state = dir.join(format!("state-{name}"));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let config = dir.join(format!("gateway-{name}.toml"));
    write(
        &config,
        &gateway_config(args, who, profile, &sim.listeners, &state, broker, metrics),
    )?;
    let mut process = start_gateway(gateway, &config, &dir.join(format!("gateway-{name}.log")))?;
    if let Err(e) = wait_listening(metrics, "the gateway's metrics endpoint").await {
        if !process.running() {
            return Err(format!(
                "the gateway stopped at start-up; see {}",
                dir.join(format!("gateway-{name}.log")).display()
            ));
        }
        return Err(e);
    }
    Ok((process, metrics))
}

/// Waits until the subscriber has received readings and `warmup` has passed.
async fn warm_up(st: &SinkState, warmup: Duration, gateway: &mut Process) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30).max(warmup * 2);
    let start = Instant::now();
    while st.new_readings.load(Ordering::Relaxed) == 0 || start.elapsed() < warmup {
        if !gateway.running() {
            return Err("the gateway stopped during the warm-up".to_owned());
        }
        if Instant::now() > deadline {
            return Err("no readings reached the subscriber during the warm-up".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn live(
    args: &Args,
    dir: &Path,
    sim: &Sim,
    gateway_path: &Path,
    profile: &Path,
) -> Result<bool, String> {
    let who = Identity::new("live");
    let topics = who.topics()?;
    let broker = (args.mqtt.0.as_str(), args.mqtt.1);
    let sink = Sink::start(broker, &topics, true).await?;
    let (mut gateway, metrics_addr) =
        launch(args, dir, "live", sim, gateway_path, profile, &who, broker).await?;
    let pid = gateway.pid();
    let st = Arc::clone(&sink.state);
    warm_up(&st, args.warmup, &mut gateway).await?;

    let interval_ms = i64::try_from(args.interval.as_millis()).unwrap_or(1000);
    sleep_to_mid_interval(interval_ms).await;
    let window = Duration::from_secs(args.seconds);
    let start = Instant::now();
    let m0 = Metrics::scrape(metrics_addr).await?;
    let (user0, sys0) = cpu_split(pid)?;
    let sim_cpu0 = cpu_seconds(sim.process.pid())?;
    let msgs0 = st.messages.load(Ordering::Relaxed);
    let readings0 = st.readings.load(Ordering::Relaxed);
    let new0 = st.new_readings.load(Ordering::Relaxed);
    let payload0 = st.payload_bytes.load(Ordering::Relaxed);
    let packet0 = st.packet_bytes.load(Ordering::Relaxed);
    st.recording.store(true, Ordering::Relaxed);

    let until = start + window;
    let mut tasks = Vec::new();
    for k in 0..CHANGE_TASKS.min(args.devices) {
        let devices: Vec<String> = (k..args.devices)
            .step_by(CHANGE_TASKS)
            .map(device_name)
            .collect();
        tasks.push(tokio::spawn(make_changes(
            sim.control,
            Arc::clone(&st),
            devices,
            u64::try_from(interval_ms).unwrap_or(1000),
            until,
        )));
    }
    tokio::time::sleep_until(until).await;
    st.recording.store(false, Ordering::Relaxed);
    let (user1, sys1) = cpu_split(pid)?;
    let sim_cpu1 = cpu_seconds(sim.process.pid())?;
    let m1 = Metrics::scrape(metrics_addr).await?;
    let elapsed = start.elapsed().as_secs_f64();
    let (hwm, rss) = memory(pid);
    let msgs = st.messages.load(Ordering::Relaxed) - msgs0;
    let readings = st.readings.load(Ordering::Relaxed) - readings0;
    let new = st.new_readings.load(Ordering::Relaxed) - new0;
    let payload = st.payload_bytes.load(Ordering::Relaxed) - payload0;
    let packet = st.packet_bytes.load(Ordering::Relaxed) - packet0;
    let mut changes = Vec::new();
    let mut lost = 0;
    for t in tasks {
        let (c, l) = t.await.map_err(|e| format!("change task: {e}"))??;
        changes.extend(c);
        lost += l;
    }
    let backlog_end = m1
        .u("fivezero_outbox_committed_seq")
        .saturating_sub(st.contiguous());
    let stopped = gateway.terminate(Duration::from_secs(20)).await;
    sink.clean_up(&topics).await;
    drop(sink);

    let committed = m1
        .u("fivezero_readings_committed")
        .saturating_sub(m0.u("fivezero_readings_committed"));
    let (user, sys) = (user1 - user0, sys1 - sys0);
    let cpu = user + sys;
    let cpu_per_k = cpu / (committed.max(1) as f64 / 1000.0);
    let mut lat = std::mem::take(&mut *lock(&st.latencies));
    lat.sort_by(f32::total_cmp);
    let to_ms = |us: i64| (us as f64 / 1000.0) as f32;
    let mut change_total: Vec<f32> = changes
        .iter()
        .map(|c| to_ms(c.arrival_us - c.t0_us))
        .collect();
    let mut change_wait: Vec<f32> = changes
        .iter()
        .map(|c| to_ms(c.ts_ms * 1000 - c.t0_us))
        .collect();
    let mut change_pipe: Vec<f32> = changes
        .iter()
        .map(|c| to_ms(c.arrival_us - c.ts_ms * 1000))
        .collect();
    for v in [&mut change_total, &mut change_wait, &mut change_pipe] {
        v.sort_by(f32::total_cmp);
    }
    let p = |v: &[f32], q| quantile(v, q);
    let per_reading = |bytes: u64| bytes as f64 / readings.max(1) as f64;

    println!();
    println!(
        "live: broker mqtt://{}:{} (QoS 1), measured for {elapsed:.1} s after {} warm-up",
        args.mqtt.0,
        args.mqtt.1,
        humantime::format_duration(args.warmup)
    );
    println!(
        "readings/s                    {:.0} committed ({committed} readings); {:.0} received \
         ({new} new, {} duplicates)",
        committed as f64 / elapsed,
        new as f64 / elapsed,
        readings - new
    );
    println!(
        "messages                      {msgs} ({:.1}/s, {:.0} readings per message)",
        msgs as f64 / elapsed,
        readings as f64 / msgs.max(1) as f64
    );
    println!(
        "CPU s per 1,000 readings      {cpu_per_k:.6} ({cpu:.2} s = {user:.2} user + {sys:.2} \
         system in {elapsed:.1} s = {:.1} % of one core)",
        100.0 * cpu / elapsed
    );
    println!(
        "gateway RSS                   peak (VmHWM) {:.1} MB, at the end (VmRSS) {:.1} MB",
        mb(hwm),
        mb(rss)
    );
    println!(
        "read -> arrival               p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
         ({} readings)",
        p(&lat, 0.50),
        p(&lat, 0.95),
        p(&lat, 0.99),
        p(&lat, 1.0),
        lat.len()
    );
    println!(
        "change -> arrival             p50 {:.1} ms, p95 {:.1} ms ({} changes at a random phase, \
         {lost} not seen within {}s)",
        p(&change_total, 0.50),
        p(&change_total, 0.95),
        change_total.len(),
        CHANGE_LIMIT.as_secs()
    );
    println!(
        "  of which wait for the poll  p50 {:.1} ms, p95 {:.1} ms; read -> arrival p50 {:.1} ms, \
         p95 {:.1} ms",
        p(&change_wait, 0.50),
        p(&change_wait, 0.95),
        p(&change_pipe, 0.50),
        p(&change_pipe, 0.95)
    );
    println!(
        "bytes on the wire per reading {:.1} MQTT payload; {:.1} with the MQTT 5 PUBLISH \
         framing (topic, header, properties; computed)",
        per_reading(payload),
        per_reading(packet)
    );
    println!(
        "buffer                        {} readings not yet acknowledged at the end; {} bytes \
         charged",
        backlog_end,
        m1.u("fivezero_outbox_bytes")
    );
    println!(
        "simulator CPU                 {:.2} s ({:.1} % of one core); gateway stopped on \
         SIGTERM: {}",
        sim_cpu1 - sim_cpu0,
        100.0 * (sim_cpu1 - sim_cpu0) / elapsed,
        if stopped { "yes" } else { "no" }
    );
    let cpu_ok = cpu_per_k < 0.001;
    let rss_ok = mb(hwm) < 20.0;
    let lat_ok = p(&lat, 0.95) < 50.0;
    println!(
        "aims: < 0.001 CPU s per 1,000 readings: {}; < 20 MB RSS: {}; read -> arrival p95 < \
         50 ms: {}",
        verdict(cpu_ok),
        verdict(rss_ok),
        verdict(lat_ok)
    );
    bench_line(
        "live",
        &[
            ("devices", args.devices.to_string()),
            ("window_s", format!("{elapsed:.1}")),
            (
                "readings_per_s",
                format!("{:.0}", committed as f64 / elapsed),
            ),
            ("committed", committed.to_string()),
            ("received_per_s", format!("{:.0}", new as f64 / elapsed)),
            ("duplicates", (readings - new).to_string()),
            (
                "readings_per_message",
                format!("{:.0}", readings as f64 / msgs.max(1) as f64),
            ),
            ("cpu_s", format!("{cpu:.2}")),
            ("cpu_s_per_1000", format!("{cpu_per_k:.6}")),
            ("vm_hwm_mb", format!("{:.1}", mb(hwm))),
            ("vm_rss_mb", format!("{:.1}", mb(rss))),
            ("read_arrival_p50_ms", format!("{:.1}", p(&lat, 0.50))),
            ("read_arrival_p95_ms", format!("{:.1}", p(&lat, 0.95))),
            ("read_arrival_p99_ms", format!("{:.1}", p(&lat, 0.99))),
            ("read_arrival_max_ms", format!("{:.1}", p(&lat, 1.0))),
            ("changes", change_total.len().to_string()),
            ("changes_lost", lost.to_string()),
            (
                "change_arrival_p50_ms",
                format!("{:.1}", p(&change_total, 0.50)),
            ),
            (
                "change_arrival_p95_ms",
                format!("{:.1}", p(&change_total, 0.95)),
            ),
            (
                "change_wait_p50_ms",
                format!("{:.1}", p(&change_wait, 0.50)),
            ),
            (
                "wire_bytes_per_reading",
                format!("{:.1}", per_reading(payload)),
            ),
            ("sim_cpu_s", format!("{:.2}", sim_cpu1 - sim_cpu0)),
            ("load1", load1()),
        ],
    );
    Ok(cpu_ok && rss_ok && lat_ok)
}

// ------------------------------------------------------------------------------------------
// End to end: a register change until its value is in the sink's API
// ------------------------------------------------------------------------------------------

/// How often a change task asks the sink's API while it waits for the new value.
const API_POLL: Duration = Duration::from_millis(20);

/// The sink's `/series` answer; only the number of buckets matters here.
#[derive(Debug, serde::Deserialize)]
struct SeriesAnswer {
    points: Vec<serde_json::Value>,
}

/// Starts the sink binary on a fresh SQLite file, subscribed under `who`'s prefix, and waits
/// until its `/readyz` answers 200; returns it and its HTTP address.
async fn start_sink(
    path: &Path,
    dir: &Path,
    who: &Identity,
    broker: (&str, u16),
) -> Result<(Process, SocketAddr), String> {
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let config = dir.join("sink-e2e.toml");
    write(
        &config,
        &format!(
            "[sink]\nclient_id = \"{}-sink\"\n\n[storage]\nurl = \"sqlite://{}\"\n\n\
             [mqtt]\nbroker = \"mqtt://{}:{}\"\nprefix = \"{}\"\nsession_expiry = \"1m\"\n\n\
             [http]\nlisten = \"{api}\"\n",
            who.id,
            dir.join("sink-e2e.db").display(),
            broker.0,
            broker.1,
            who.prefix
        ),
    )?;
    let log_path = dir.join("sink-e2e.log");
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let err = log
        .try_clone()
        .map_err(|e| format!("cannot share the sink log: {e}"))?;
    let child = Command::new(path)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("FIVEZERO_SINK_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
    let mut process = Process {
        child: Some(child),
        what: "the sink",
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if matches!(http(api, "GET", "/readyz", "").await, Ok((200, _))) {
            return Ok((process, api));
        }
        if !process.running() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!(
                "the sink stopped at start-up:\n{}",
                text.trim_end()
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the sink is not ready after 30 s (log: {})",
                log_path.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Non-empty 1 s buckets the sink's API serves for `device`'s `metric` in `[from, to)`, UTC ms.
async fn api_buckets(
    api: SocketAddr,
    device: &str,
    metric: &str,
    from: i64,
    to: i64,
) -> Result<usize, String> {
    let path = format!(
        "/api/v1/sites/{SITE}/series?device={device}&metric={metric}&from={from}&to={to}\
         &step=1s&agg=last"
    );
    let (status, body) = http(api, "GET", &path, "").await?;
    if status != 200 {
        return Err(format!("GET {path} answered {status}: {body}"));
    }
    let answer: SeriesAnswer =
        serde_json::from_str(&body).map_err(|e| format!("GET {path}: {e}: {body}"))?;
    Ok(answer.points.len())
}

/// One register change and when the sink's API first served the new value.
#[derive(Debug, Clone, Copy)]
struct ApiChange {
    /// `t0`, UTC µs, just before the control request that cleared the fault.
    t0_us: i64,
    /// When the API's answer holding the new value arrived, UTC µs.
    arrival_us: i64,
}

/// What one change task saw.
#[derive(Debug, Default)]
struct ApiChanges {
    seen: Vec<ApiChange>,
    /// Not in the API within [`CHANGE_LIMIT`].
    lost: u64,
    /// The API held a value read while the exception was set: not counted.
    unfaulted: u64,
}

/// Makes register changes on `devices` in turn until `until` and waits for each in the API.
async fn make_api_changes(
    control: SocketAddr,
    api: SocketAddr,
    devices: Vec<String>,
    metric: String,
    interval_ms: u64,
    until: Instant,
) -> Result<ApiChanges, String> {
    let mut out = ApiChanges::default();
    let limit_ms = i64::try_from(CHANGE_LIMIT.as_millis()).unwrap_or(10_000);
    let mut next = 0;
    while Instant::now() < until && !devices.is_empty() {
        let device = &devices[next % devices.len()];
        next += 1;
        let path = format!("/devices/{device}/fault");
        let fault_ms = now_ms();
        let (status, body) =
            http(control, "PUT", &path, r#"{"kind":"exception","code":4}"#).await?;
        if status != 200 {
            return Err(format!(
                "control endpoint: PUT {path} answered {status}: {body}"
            ));
        }
        // At least one poll sees the exception; the change lands at a random phase.
        let hold = interval_ms + rand::random_range(0..interval_ms.max(1));
        tokio::time::sleep(Duration::from_millis(hold)).await;
        let t0_us = now_us();
        let (status, body) = http(control, "DELETE", &path, "").await?;
        if status != 200 {
            return Err(format!(
                "control endpoint: DELETE {path} answered {status}: {body}"
            ));
        }
        // A value read before t0 (in the same millisecond) was an exception: the floor is safe.
        let from = t0_us.div_euclid(1000);
        let deadline = Instant::now() + CHANGE_LIMIT;
        let arrival = loop {
            if api_buckets(api, device, &metric, from, from + limit_ms).await? > 0 {
                break Some(now_us());
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(API_POLL).await;
        };
        let Some(arrival_us) = arrival else {
            out.lost += 1;
            continue;
        };
        // The exception must have replaced the value between the fault and t0 (a poll in
        // flight when the fault was set may still carry a value: 100 ms of margin).
        let check_from = fault_ms + 100;
        if check_from < from && api_buckets(api, device, &metric, check_from, from).await? > 0 {
            out.unfaulted += 1;
            continue;
        }
        out.seen.push(ApiChange { t0_us, arrival_us });
    }
    Ok(out)
}

async fn end_to_end(
    args: &Args,
    seconds: u64,
    dir: &Path,
    sim: &Sim,
    gateway_path: &Path,
    profile: &Path,
) -> Result<bool, String> {
    let sink_path = match &args.sink {
        Some(p) => p.clone(),
        None => sibling_binary("fivezero-sink", "fivezero-sink")?,
    };
    let who = Identity::new("e2e");
    let topics = who.topics()?;
    let broker = (args.mqtt.0.as_str(), args.mqtt.1);
    let (mut sink, api) = start_sink(&sink_path, dir, &who, broker).await?;
    let sink_pid = sink.pid();
    let (mut gateway, _) =
        launch(args, dir, "e2e", sim, gateway_path, profile, &who, broker).await?;

    // Warm-up: readings stored, and `--warmup` passed.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30).max(args.warmup * 2);
    loop {
        let stored = Metrics::scrape(api).await?.u("fivezero_sink_items_stored");
        if stored > 0 && started.elapsed() >= args.warmup {
            break;
        }
        if !gateway.running() {
            return Err("the gateway stopped during the warm-up".to_owned());
        }
        if !sink.running() {
            return Err(format!(
                "the sink stopped during the warm-up; see {}",
                dir.join("sink-e2e.log").display()
            ));
        }
        if Instant::now() > deadline {
            return Err("no readings reached the sink's store during the warm-up".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The first metric of the profile that carries values.
    let text =
        std::fs::read_to_string(profile).map_err(|e| format!("{}: {e}", profile.display()))?;
    let now = now_ms();
    let mut metric = None;
    for m in text
        .lines()
        .filter_map(|l| l.strip_prefix("metric = \""))
        .map(|m| m.trim_end_matches('"'))
    {
        if api_buckets(api, &device_name(0), m, now - 60_000, now + 1000).await? > 0 {
            metric = Some(m.to_owned());
            break;
        }
    }
    let metric = metric.ok_or("the sink's API has no values of any metric of dev-0000")?;

    let interval_ms = i64::try_from(args.interval.as_millis()).unwrap_or(1000);
    sleep_to_mid_interval(interval_ms).await;
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let cpu0 = cpu_seconds(sink_pid)?;
    let stored0 = Metrics::scrape(api).await?.u("fivezero_sink_items_stored");
    let mut tasks = Vec::new();
    for k in 0..CHANGE_TASKS.min(args.devices) {
        let devices: Vec<String> = (k..args.devices)
            .step_by(CHANGE_TASKS)
            .map(device_name)
            .collect();
        tasks.push(tokio::spawn(make_api_changes(
            sim.control,
            api,
            devices,
            metric.clone(),
            u64::try_from(interval_ms).unwrap_or(1000),
            until,
        )));
    }
    tokio::time::sleep_until(until).await;
    let cpu1 = cpu_seconds(sink_pid)?;
    let stored1 = Metrics::scrape(api).await?.u("fivezero_sink_items_stored");
    let elapsed = start.elapsed().as_secs_f64();
    let (hwm, rss) = memory(sink_pid);
    let mut all = ApiChanges::default();
    for t in tasks {
        let c = t.await.map_err(|e| format!("change task: {e}"))??;
        all.seen.extend(c.seen);
        all.lost += c.lost;
        all.unfaulted += c.unfaulted;
    }
    let gateway_stopped = gateway.terminate(Duration::from_secs(20)).await;
    let sink_stopped = sink.terminate(Duration::from_secs(20)).await;
    // Leave nothing retained on the broker.
    if let Ok(cleaner) = Sink::start(broker, &topics, false).await {
        cleaner.clean_up(&topics).await;
    }

    let to_ms = |us: i64| (us as f64 / 1000.0) as f32;
    let boundary_us = |t0_us: i64| {
        let ms = t0_us.div_euclid(1000);
        (ms.div_euclid(interval_ms) + 1) * interval_ms * 1000
    };
    let mut total: Vec<f32> = all
        .seen
        .iter()
        .map(|c| to_ms(c.arrival_us - c.t0_us))
        .collect();
    let mut wait: Vec<f32> = all
        .seen
        .iter()
        .map(|c| to_ms(boundary_us(c.t0_us) - c.t0_us))
        .collect();
    let mut after: Vec<f32> = all
        .seen
        .iter()
        .map(|c| to_ms(c.arrival_us - boundary_us(c.t0_us)))
        .collect();
    for v in [&mut total, &mut wait, &mut after] {
        v.sort_by(f32::total_cmp);
    }
    let p = |v: &[f32], q| quantile(v, q);
    let stored = stored1.saturating_sub(stored0);
    let sink_cpu = cpu1 - cpu0;
    let cpu_per_k = sink_cpu / (stored.max(1) as f64 / 1000.0);

    println!();
    println!(
        "e2e: sink {} (pid {sink_pid}, SQLite, separate process) on mqtt://{}:{}, its API on \
         http://{api}; measured for {elapsed:.1} s after {} warm-up; metric {metric}",
        sink_path.display(),
        args.mqtt.0,
        args.mqtt.1,
        humantime::format_duration(args.warmup)
    );
    println!(
        "change -> value in the sink's API p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
         ({} changes at a random phase; {} not in the API within {}s; {} without the exception \
         seen, not counted)",
        p(&total, 0.50),
        p(&total, 0.95),
        p(&total, 0.99),
        p(&total, 1.0),
        total.len(),
        all.lost,
        CHANGE_LIMIT.as_secs(),
        all.unfaulted
    );
    println!(
        "  of which wait for the poll      p50 {:.1} ms, p95 {:.1} ms (to the next cycle boundary, \
         computed); after it p50 {:.1} ms, p95 {:.1} ms",
        p(&wait, 0.50),
        p(&wait, 0.95),
        p(&after, 0.50),
        p(&after, 0.95)
    );
    println!(
        "sink, live                        {:.0} readings/s stored ({stored} in {elapsed:.1} s); \
         CPU {sink_cpu:.2} s = {cpu_per_k:.6} s per 1,000 readings ({:.1} % of one core, API \
         queries included); VmHWM {:.1} MB, VmRSS at the end {:.1} MB",
        stored as f64 / elapsed,
        100.0 * sink_cpu / elapsed,
        mb(hwm),
        mb(rss)
    );
    println!(
        "gateway stopped on SIGTERM: {}; sink stopped on SIGTERM: {}",
        if gateway_stopped { "yes" } else { "no" },
        if sink_stopped { "yes" } else { "no" }
    );
    bench_line(
        "e2e",
        &[
            ("devices", args.devices.to_string()),
            ("window_s", format!("{elapsed:.1}")),
            ("metric", metric.clone()),
            ("changes", total.len().to_string()),
            ("changes_lost", all.lost.to_string()),
            ("changes_unfaulted", all.unfaulted.to_string()),
            ("change_api_p50_ms", format!("{:.1}", p(&total, 0.50))),
            ("change_api_p95_ms", format!("{:.1}", p(&total, 0.95))),
            ("change_api_p99_ms", format!("{:.1}", p(&total, 0.99))),
            ("change_api_max_ms", format!("{:.1}", p(&total, 1.0))),
            ("wait_p50_ms", format!("{:.1}", p(&wait, 0.50))),
            ("after_poll_p50_ms", format!("{:.1}", p(&after, 0.50))),
            ("after_poll_p95_ms", format!("{:.1}", p(&after, 0.95))),
            (
                "sink_stored_per_s",
                format!("{:.0}", stored as f64 / elapsed),
            ),
            ("sink_cpu_s", format!("{sink_cpu:.2}")),
            ("sink_cpu_s_per_1000", format!("{cpu_per_k:.6}")),
            ("sink_vm_hwm_mb", format!("{:.1}", mb(hwm))),
            ("load1", load1()),
        ],
    );
    Ok(true)
}

/// A TCP relay in front of the broker that can be switched off (connections closed, port
/// refused) and on again on the same port.
#[derive(Debug)]
struct Relay {
    port: u16,
    upstream: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Result<Self, String> {
        let mut relay = Self {
            port: free_port()?,
            upstream,
            task: None,
        };
        relay.up().await?;
        Ok(relay)
    }

    /// Listens again; each connection is copied both ways to the upstream.
    async fn up(&mut self) -> Result<(), String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("relay on {addr}: {e}"))?;
        let upstream = self.upstream;
        self.task = Some(tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every relayed connection.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    continue;
                };
                while conns.try_join_next().is_some() {}
                conns.spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = down.set_nodelay(true);
                        let _ = up.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
        }));
        Ok(())
    }

    /// Closes every relayed connection and the listening socket.
    async fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

fn start_mosquitto(path: &Path, dir: &Path) -> Result<(Process, u16), String> {
    let port = free_port()?;
    let conf = dir.join("mosquitto.conf");
    write(
        &conf,
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 0\nmax_queued_bytes 0\n"
        ),
    )?;
    let log = std::fs::File::create(dir.join("mosquitto.log"))
        .map_err(|e| format!("cannot create the mosquitto log: {e}"))?;
    let child = Command::new(path)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
    Ok((
        Process {
            child: Some(child),
            what: "mosquitto",
        },
        port,
    ))
}

async fn replay(
    args: &Args,
    dir: &Path,
    sim: &Sim,
    gateway_path: &Path,
    profile: &Path,
) -> Result<bool, String> {
    let (_mosquitto, port) = start_mosquitto(&args.mosquitto, dir)?;
    let broker_addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(broker_addr, "the private mosquitto").await?;
    let mut relay = Relay::start(broker_addr).await?;
    let who = Identity::new("replay");
    let topics = who.topics()?;
    let sink = Sink::start(("127.0.0.1", port), &topics, false).await?;
    let (mut gateway, metrics_addr) = launch(
        args,
        dir,
        "replay",
        sim,
        gateway_path,
        profile,
        &who,
        ("127.0.0.1", relay.port),
    )
    .await?;
    let pid = gateway.pid();
    let st = Arc::clone(&sink.state);
    warm_up(&st, args.warmup, &mut gateway).await?;

    // Outage.
    println!();
    println!(
        "replay: private mosquitto on port {port}, the gateway through a relay on port {}; \
         broker unreachable for {}",
        relay.port,
        humantime::format_duration(args.backlog)
    );
    relay.down().await;
    let out_start = Instant::now();
    let m_down = Metrics::scrape(metrics_addr).await?;
    let cpu_down = cpu_seconds(pid)?;
    let mut rss_outage = 0;
    let mut last_report = Instant::now();
    while out_start.elapsed() < args.backlog {
        if !gateway.running() {
            return Err("the gateway stopped during the outage".to_owned());
        }
        rss_outage = rss_outage.max(memory(pid).1);
        if last_report.elapsed() >= Duration::from_secs(60) {
            last_report = Instant::now();
            let m = Metrics::scrape(metrics_addr).await?;
            println!(
                "  {:>4.0} s: backlog {} readings, {} bytes charged, RSS {:.1} MB",
                out_start.elapsed().as_secs_f64(),
                m.u("fivezero_outbox_backlog"),
                m.u("fivezero_outbox_bytes"),
                mb(memory(pid).1)
            );
        }
        let left = args.backlog.saturating_sub(out_start.elapsed());
        tokio::time::sleep(left.min(Duration::from_millis(100))).await;
    }

    // The broker is back.
    let m_up = Metrics::scrape(metrics_addr).await?;
    let outage = out_start.elapsed().as_secs_f64();
    let cpu_up = cpu_seconds(pid)?;
    relay.up().await?;
    let t_up = Instant::now();
    let up_us = now_us();
    let target = m_up.u("fivezero_outbox_committed_seq");
    let contiguous_up = st.contiguous();
    let new_up = st.new_readings.load(Ordering::Relaxed);
    st.target.store(target.max(1), Ordering::Relaxed);
    let live_rate = m_up
        .u("fivezero_readings_committed")
        .saturating_sub(m_down.u("fivezero_readings_committed")) as f64
        / outage;
    let backlog = target.saturating_sub(contiguous_up);
    let mut rss_drain = 0;
    let per_cycle = (args.devices * REGISTERS / 2) as u64;
    let live_again = loop {
        if !gateway.running() {
            return Err("the gateway stopped during the drain".to_owned());
        }
        rss_drain = rss_drain.max(memory(pid).1);
        if st.caught_us.load(Ordering::Relaxed) != 0 {
            let contiguous = st.contiguous();
            let m = Metrics::scrape(metrics_addr).await?;
            if m.u("fivezero_outbox_committed_seq") <= contiguous + 2 * per_cycle {
                break Some(Instant::now());
            }
        }
        if t_up.elapsed() > args.drain_limit {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let first_us = st.first_us.load(Ordering::Relaxed);
    let caught_us = st.caught_us.load(Ordering::Relaxed);
    let first = (first_us != 0).then_some(first_us);
    let caught = (caught_us != 0).then(|| (caught_us, st.caught_new.load(Ordering::Relaxed)));
    let cpu_end = cpu_seconds(pid)?;
    let (hwm, _) = memory(pid);
    let m_end = Metrics::scrape(metrics_addr).await?;
    let end_contiguous = st.contiguous();
    let stopped = gateway.terminate(Duration::from_secs(20)).await;
    drop(sink);
    relay.down().await;

    let charged = m_up.u("fivezero_outbox_bytes");
    let file = m_up.u("fivezero_outbox_file_bytes");
    println!(
        "backlog when the broker came back  {backlog} readings ({:.0} s of polling); {charged} \
         bytes charged ({:.2} per reading), buffer file {file} bytes",
        backlog as f64 / live_rate.max(1.0),
        charged as f64 / backlog.max(1) as f64,
    );
    println!(
        "live commit rate during the outage {live_rate:.0} readings/s; gateway CPU {:.2} s in \
         {outage:.0} s ({:.6} s per 1,000 readings); largest RSS {:.1} MB",
        cpu_up - cpu_down,
        (cpu_up - cpu_down) / ((live_rate * outage).max(1.0) / 1000.0),
        mb(rss_outage)
    );
    let mut ok = true;
    let mut fields = vec![
        ("devices", args.devices.to_string()),
        ("outage_s", format!("{outage:.0}")),
        ("backlog_readings", backlog.to_string()),
        ("backlog_bytes", charged.to_string()),
        ("live_rate_per_s", format!("{live_rate:.0}")),
        ("outage_rss_mb", format!("{:.1}", mb(rss_outage))),
    ];
    match (first, caught) {
        (Some(first_us), Some((caught_us, new_caught))) => {
            let secs = ((caught_us - first_us) as f64 / 1e6).max(0.001);
            let rate = new_caught.saturating_sub(new_up) as f64 / secs;
            let ratio = rate / live_rate.max(1.0);
            println!(
                "first message after the broker came back  {:.1} s (the gateway's reconnect \
                 backoff)",
                (first_us - up_us) as f64 / 1e6
            );
            println!(
                "replay rate                        {rate:.0} readings/s = {ratio:.1} x the live \
                 rate ({} new readings in {secs:.1} s, from the first message until the \
                 watermark reached the sequence committed when the broker came back)",
                new_caught - new_up
            );
            if let Some(t_live) = live_again {
                println!(
                    "live again (backlog <= 2 cycles)   {:.1} s after the broker came back",
                    t_live.duration_since(t_up).as_secs_f64()
                );
            }
            println!(
                "gateway CPU during the drain       {:.2} s for {} readings ({:.6} s per 1,000)",
                cpu_end - cpu_up,
                new_caught.max(st.new_readings.load(Ordering::Relaxed)) - new_up,
                (cpu_end - cpu_up)
                    / ((st.new_readings.load(Ordering::Relaxed) - new_up).max(1) as f64 / 1000.0)
            );
            println!(
                "gateway RSS                        largest during the drain {:.1} MB; peak over \
                 the run (VmHWM) {:.1} MB",
                mb(rss_drain),
                mb(hwm)
            );
            fields.extend([
                ("drained", "1".to_owned()),
                (
                    "first_message_s",
                    format!("{:.1}", (first_us - up_us) as f64 / 1e6),
                ),
                ("replay_readings_per_s", format!("{rate:.0}")),
                ("replay_ratio", format!("{ratio:.1}")),
                ("replay_s", format!("{secs:.1}")),
                ("drain_rss_mb", format!("{:.1}", mb(rss_drain))),
                ("vm_hwm_mb", format!("{:.1}", mb(hwm))),
            ]);
            if let Some(t_live) = live_again {
                fields.push((
                    "live_again_s",
                    format!("{:.1}", t_live.duration_since(t_up).as_secs_f64()),
                ));
            }
            let rate_ok = ratio >= 5.0;
            let rss_ok = mb(rss_drain.max(hwm)) < 40.0;
            println!(
                "aims: replay >= 5 x live: {}; RSS < 40 MB during the replay: {}",
                verdict(rate_ok),
                verdict(rss_ok)
            );
            ok &= rate_ok && rss_ok;
        }
        _ => {
            println!(
                "the backlog did not drain within {} (watermark {end_contiguous} of {target}; \
                 gateway committed {}, published {} messages, republished {})",
                humantime::format_duration(args.drain_limit),
                m_end.u("fivezero_outbox_committed_seq"),
                m_end.u("fivezero_mqtt_published_messages"),
                m_end.u("fivezero_mqtt_republished_messages")
            );
            fields.push(("drained", "0".to_owned()));
            ok = false;
        }
    }
    let duplicates = st.readings.load(Ordering::Relaxed) - st.new_readings.load(Ordering::Relaxed);
    println!(
        "duplicates received {duplicates}, malformed {}; gateway stopped on SIGTERM: {}",
        st.malformed.load(Ordering::Relaxed),
        if stopped { "yes" } else { "no" }
    );
    fields.extend([("duplicates", duplicates.to_string()), ("load1", load1())]);
    bench_line("replay", &fields);
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::Ranges;

    #[test]
    fn ranges_count_new_sequences_and_advance_the_watermark() {
        let mut r = Ranges::default();
        assert_eq!(r.add(1, 10), 10);
        assert_eq!(r.contiguous, 10);
        assert_eq!(r.add(21, 30), 10);
        assert_eq!(r.contiguous, 10);
        assert_eq!(r.add(5, 25), 10);
        assert_eq!(r.contiguous, 30);
        assert_eq!(r.add(1, 30), 0);
        assert_eq!(r.add(40, 45), 6);
        assert_eq!(r.add(35, 50), 10);
        assert_eq!(r.add(31, 34), 4);
        assert_eq!(r.contiguous, 50);
        assert!(r.above.is_empty());
    }
}
