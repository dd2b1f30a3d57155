//! The benchmark suite: one command that runs every benchmark program of the workspace for a
//! stated workload and prints each figure issue 9 asks for, at several plant sizes.
//!
//! ```text
//! cargo run --release -p fivezero-bench -- [--devices 10,100,500] [--seconds 30] [--quick]
//!     [--mqtt mqtt://127.0.0.1:1883] [--postgres postgres://postgres@127.0.0.1:5432/test]
//! ```
//!
//! More options: `--backlog 60s` (the broker outage before the replay), `--no-build` (use the
//! binaries already in the target folder), `--help`.
//!
//! # What it does
//!
//! It builds nothing itself. It first runs `cargo build --release -p fivezero-sim -p
//! fivezero-gateway -p fivezero-sink --bins --examples` (safe under `cargo run`, which has
//! released its lock by then), copies the release binaries and examples it needs into a
//! scratch folder (so that other builds on the machine cannot replace them halfway through),
//! and runs them one after another as child processes, passing each the workload:
//!
//! | program | figures | runs |
//! |---|---|---|
//! | `buffer_bench` (gateway) | buffer commit rate at `synchronous` FULL and NORMAL | once |
//! | `api_latency` (sink) | query p50 / p99: a day of 1-minute series, the month's KPI scorecard | once |
//! | `ingest_bench` (sink) | sink ingest rate and RSS, SQLite, then PostgreSQL | once per backend |
//! | `poll_bench` (gateway) | Modbus requests per cycle vs the minimum; polling CPU and RSS alone | per device count |
//! | `gateway_bench` (gateway) | the whole gateway: readings/s, CPU s per 1,000 readings, peak RSS, read → MQTT arrival, change → MQTT arrival, replay rate; end to end: a register change in the simulator → the value in the real sink's HTTP API | per device count |
//!
//! The first three do not depend on the number of devices and run once; their figures are
//! repeated in every table. Every program's output is echoed, indented, as it runs, and each
//! ends with a machine-readable line `BENCH NAME key=value …` that the suite reads
//! (`ingest_bench` has none yet: its plain `[BACKEND] stored …` lines are parsed instead). A
//! program that runs far past its expected time is killed with every process it started.
//!
//! # The workload
//!
//! Per device count N: N simulated devices (`fivezero-sim`, grid-meter physics) of 150
//! holding registers (75 `f32` points) each, polled every second over one TCP connection per
//! device by the real gateway daemon, committing at `synchronous = FULL` and publishing to
//! Mosquitto at QoS 1, i.e. 75 × N readings a second. `--seconds` (default 30; 10 with
//! `--quick`) is the length of each measured window (polling alone, the whole gateway, end to
//! end), each after a warm-up; `--backlog` (default 60 s; 20 s with `--quick`) the broker
//! outage whose backlog is then replayed. `--quick` also shortens the once-only runs (500
//! buffer cycles instead of 2,000, 100,000 ingested readings instead of 500,000, 50 requests
//! per query instead of 200) and the warm-ups.
//!
//! # Services
//!
//! `--mqtt` (default `$FIVEZERO_TEST_MQTT`, else `mqtt://127.0.0.1:1883`) is the broker of the
//! live and end-to-end runs and of `ingest_bench`; the replay starts its own private
//! Mosquitto. If the broker does not accept a TCP connection, the live and end-to-end runs
//! are skipped with the reason printed, and `ingest_bench` uses the sink's embedded broker.
//! `--postgres` (default `$FIVEZERO_TEST_POSTGRES`, else
//! `postgres://postgres@127.0.0.1:5432/test`; `none` to skip) is the database of the
//! PostgreSQL ingest run; when it cannot be reached (TCP) or `ingest_bench` fails on it, the
//! PostgreSQL figures are skipped with the reason printed.
//!
//! # Output
//!
//! After the programs' own output: the machine (CPU count, model, memory, kernel), the date
//! and the load averages, then one Markdown table per device count with every figure and
//! the program that measured it, and a scaling table (the figures that depend on the device
//! count, side by side). The exit status is 0 when every figure was measured (PostgreSQL
//! skipped with a reason counts as measured), 1 otherwise, 2 for a usage error.

mod report;
mod runner;

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use report::{Ingest, PerDevices, Shared, Workload};
use runner::{Outcome, load_average, run};

/// Options; see the module documentation.
#[derive(Debug, Clone)]
struct Options {
    devices: Vec<usize>,
    seconds: u64,
    backlog: u64,
    quick: bool,
    mqtt: String,
    postgres: Option<String>,
    build: bool,
}

const USAGE: &str = "cargo run --release -p fivezero-bench -- [--devices 10,100,500] \
                     [--seconds 30] [--quick] [--backlog 60s] [--mqtt mqtt://HOST:PORT] \
                     [--postgres URL|none] [--no-build]";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// `60`, `60s`, `2m`: whole seconds.
fn parse_seconds(text: &str) -> Option<u64> {
    let t = text.trim();
    if let Some(m) = t.strip_suffix('m') {
        return m.parse::<u64>().ok().map(|m| m * 60);
    }
    t.strip_suffix('s').unwrap_or(t).parse().ok()
}

fn parse_options() -> Result<Options, String> {
    let mut devices = vec![10, 100, 500];
    let mut seconds = None;
    let mut backlog = None;
    let mut quick = false;
    let mut mqtt = env_or("FIVEZERO_TEST_MQTT", "mqtt://127.0.0.1:1883");
    let mut postgres = Some(env_or(
        "FIVEZERO_TEST_POSTGRES",
        "postgres://postgres@127.0.0.1:5432/test",
    ));
    let mut build = true;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |what: &str| {
            it.next()
                .ok_or_else(|| format!("{flag} needs {what}; {USAGE}"))
        };
        match flag.as_str() {
            "--help" | "-h" => return Err(USAGE.to_owned()),
            "--quick" => quick = true,
            "--no-build" => build = false,
            "--devices" => {
                let v = value("a list of device counts, e.g. 10,100,500")?;
                devices = v
                    .split(',')
                    .map(|d| d.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--devices {v:?}: {e}"))?;
                if devices.is_empty() || devices.contains(&0) {
                    return Err("--devices: every count must be at least 1".to_owned());
                }
            }
            "--seconds" => {
                let v = value("a number of seconds")?;
                seconds = Some(
                    v.parse::<u64>()
                        .ok()
                        .filter(|s| *s > 0)
                        .ok_or_else(|| format!("--seconds {v:?}: a whole number, at least 1"))?,
                );
            }
            "--backlog" => {
                let v = value("a duration, e.g. 60s")?;
                backlog = Some(
                    parse_seconds(&v)
                        .filter(|s| *s > 0)
                        .ok_or_else(|| format!("--backlog {v:?}: a duration such as 60s or 2m"))?,
                );
            }
            "--mqtt" => mqtt = value("a broker URL, mqtt://HOST:PORT")?,
            "--postgres" => {
                let v = value("a PostgreSQL URL, or none")?;
                postgres = (v != "none" && !v.is_empty()).then_some(v);
            }
            _ => return Err(format!("unknown option {flag}; {USAGE}")),
        }
    }
    if host_port(&mqtt, "mqtt://", 1883).is_none() {
        return Err(format!("--mqtt {mqtt:?}: use mqtt://HOST[:PORT]"));
    }
    Ok(Options {
        devices,
        seconds: seconds.unwrap_or(if quick { 10 } else { 30 }),
        backlog: backlog.unwrap_or(if quick { 20 } else { 60 }),
        quick,
        mqtt,
        postgres,
        build,
    })
}

/// Host and port of `scheme://[user[:password]@]host[:port][/…]`.
fn host_port(url: &str, scheme: &str, default_port: u16) -> Option<(String, u16)> {
    let rest = url.strip_prefix(scheme)?;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.is_empty() {
        return None;
    }
    // [v6]:port, host:port, host
    if let Some(v6) = host_port.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        return Some((host.to_owned(), port));
    }
    match host_port.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), p.parse().ok()?)),
        None => Some((host_port.to_owned(), default_port)),
    }
}

/// Whether `host:port` accepts a TCP connection within 3 s; the reason when not.
fn reachable(host: &str, port: u16) -> Result<(), String> {
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last = format!("{host} has no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, Duration::from_secs(3)) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("cannot connect to {a}: {e}"),
        }
    }
    Err(last)
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match suite(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (this package's parent folder, where it was built).
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `cargo build --release` of the binaries and examples the suite runs.
fn build() -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let manifest = workspace_root().join("Cargo.toml");
    let args = [
        "build",
        "--release",
        "--manifest-path",
        &manifest.display().to_string(),
        "-p",
        "fivezero-sim",
        "-p",
        "fivezero-gateway",
        "-p",
        "fivezero-sink",
        "--bins",
        "--examples",
    ]
    .map(str::to_owned);
    println!("==> {cargo} {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(&args)
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the release build failed ({status})"))
    }
}

/// The programs the suite runs, copied into `scratch/release` (binaries) and
/// `scratch/release/examples`, the layout in which the examples find their sibling binaries.
#[derive(Debug)]
struct Programs {
    scratch: PathBuf,
    release: PathBuf,
}

const BINARIES: [&str; 3] = ["fivezero-sim", "fivezero-gateway", "fivezero-sink"];
const EXAMPLES: [&str; 5] = [
    "poll_bench",
    "buffer_bench",
    "gateway_bench",
    "ingest_bench",
    "api_latency",
];

impl Programs {
    /// Copies them from the release folder this program runs from.
    fn snapshot() -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        let from = exe.parent().ok_or("no folder above this program")?;
        let scratch = std::env::temp_dir().join(format!("fivezero-bench-{}", std::process::id()));
        let release = scratch.join("release");
        std::fs::create_dir_all(release.join("examples"))
            .map_err(|e| format!("{}: {e}", release.display()))?;
        let programs = Self { scratch, release };
        let copy = |name: &str, sub: &str| -> Result<(), String> {
            let src = from.join(sub).join(name);
            let dst = programs.release.join(sub).join(name);
            std::fs::copy(&src, &dst).map(|_| ()).map_err(|e| {
                format!(
                    "{}: {e} (build it with `cargo build --release -p fivezero-sim -p \
                     fivezero-gateway -p fivezero-sink --bins --examples`, or drop --no-build)",
                    src.display()
                )
            })
        };
        for b in BINARIES {
            copy(b, "")?;
        }
        for e in EXAMPLES {
            copy(e, "examples")?;
        }
        Ok(programs)
    }

    fn binary(&self, name: &str) -> PathBuf {
        self.release.join(name)
    }

    fn example(&self, name: &str) -> PathBuf {
        self.release.join("examples").join(name)
    }
}

impl Drop for Programs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

fn suite(o: &Options) -> Result<bool, String> {
    let started = std::time::Instant::now();
    let load_start = load_average();
    let date_start = report::date();
    println!("fivezero benchmark suite; load average at the start {load_start}");
    let build_took = if o.build {
        let t = std::time::Instant::now();
        build()?;
        Some(t.elapsed())
    } else {
        None
    };
    let programs = Programs::snapshot()?;
    let w = Workload {
        seconds: o.seconds,
        backlog: o.backlog,
        warmup_live: if o.quick { 5 } else { 10 },
        warmup_poll: if o.quick { 3 } else { 5 },
        buffer_cycles: if o.quick { 500 } else { 2_000 },
        ingest_readings: if o.quick { 100_000 } else { 500_000 },
        api_rounds: if o.quick { 50 } else { 200 },
        mqtt: o.mqtt.clone(),
        command: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
    };

    // Services.
    let mqtt = host_port(&o.mqtt, "mqtt://", 1883)
        .ok_or_else(|| format!("--mqtt {:?}: use mqtt://HOST[:PORT]", o.mqtt))?;
    let mqtt_down = reachable(&mqtt.0, mqtt.1).err();
    if let Some(why) = &mqtt_down {
        println!(
            "MQTT broker {}: {why}; the live and end-to-end runs are skipped, ingest_bench uses \
             the sink's embedded broker",
            o.mqtt
        );
    }
    let postgres: Result<String, String> = match &o.postgres {
        None => Err("skipped: --postgres none".to_owned()),
        Some(url) => match host_port(url, "postgres://", 5432)
            .or_else(|| host_port(url, "postgresql://", 5432))
        {
            None => Err(format!("skipped: {url:?} is not a postgres:// URL")),
            Some((h, p)) => reachable(&h, p)
                .map(|()| url.clone())
                .map_err(|e| format!("skipped: PostgreSQL at {url}: {e}")),
        },
    };
    if let Err(why) = &postgres {
        println!("PostgreSQL {why}");
    }
    let broker_env: Vec<(&str, String)> = if mqtt_down.is_none() {
        vec![("FIVEZERO_TEST_MQTT", o.mqtt.clone())]
    } else {
        Vec::new()
    };

    // The runs that do not depend on the device count.
    let buffer = run(
        &programs.example("buffer_bench"),
        &[
            std::env::temp_dir().display().to_string(),
            w.buffer_cycles.to_string(),
        ],
        &[],
        &[],
        minutes(10),
    );
    let api = run(
        &programs.example("api_latency"),
        &[w.api_rounds.to_string()],
        &[],
        &[],
        minutes(10),
    );
    let ingest_sqlite = run(
        &programs.example("ingest_bench"),
        &args(&[&w.ingest_readings.to_string(), "sqlite"]),
        &broker_env,
        &["FIVEZERO_TEST_POSTGRES"],
        minutes(15),
    );
    let ingest_postgres = match &postgres {
        Ok(url) => {
            let mut env = broker_env.clone();
            env.push(("FIVEZERO_TEST_POSTGRES", url.clone()));
            let out = run(
                &programs.example("ingest_bench"),
                &args(&[&w.ingest_readings.to_string(), "postgres"]),
                &env,
                &[],
                minutes(15),
            );
            Ingest::parse(&out, "postgres").map_err(|e| format!("skipped: {e}"))
        }
        Err(why) => Err(why.clone()),
    };
    let shared = Shared {
        buffer: fields(&buffer, "buffer_bench"),
        api: fields(&api, "api_latency"),
        ingest_sqlite: Ingest::parse(&ingest_sqlite, "sqlite"),
        ingest_postgres,
        ingest_readings: w.ingest_readings,
    };

    // The runs per device count.
    let mut per = Vec::new();
    for &n in &o.devices {
        let load = load_average();
        let poll = run(
            &programs.example("poll_bench"),
            &[
                "--devices".to_owned(),
                n.to_string(),
                "--seconds".to_owned(),
                o.seconds.to_string(),
                "--warmup".to_owned(),
                format!("{}s", w.warmup_poll),
                "--sim".to_owned(),
                programs.binary("fivezero-sim").display().to_string(),
            ],
            &[],
            &[],
            Duration::from_secs(w.warmup_poll + o.seconds + 180),
        );
        let live_seconds = if mqtt_down.is_some() { 0 } else { o.seconds };
        let drain_limit = (o.backlog * 3).max(300);
        let gateway = run(
            &programs.example("gateway_bench"),
            &[
                "--devices".to_owned(),
                n.to_string(),
                "--seconds".to_owned(),
                live_seconds.to_string(),
                "--sink-seconds".to_owned(),
                live_seconds.to_string(),
                "--warmup".to_owned(),
                format!("{}s", w.warmup_live),
                "--backlog".to_owned(),
                format!("{}s", o.backlog),
                "--drain-limit".to_owned(),
                format!("{drain_limit}s"),
                "--mqtt".to_owned(),
                o.mqtt.clone(),
                "--sim".to_owned(),
                programs.binary("fivezero-sim").display().to_string(),
                "--gateway".to_owned(),
                programs.binary("fivezero-gateway").display().to_string(),
                "--sink".to_owned(),
                programs.binary("fivezero-sink").display().to_string(),
            ],
            &[],
            &[],
            Duration::from_secs(
                3 * (w.warmup_live + o.seconds + 90) + o.backlog + drain_limit + 300,
            ),
        );
        let bench = gateway.bench();
        let phase = |name: &str, skipped: bool| match bench.get(&format!("gateway_bench.{name}")) {
            Some(f) => Ok(f.clone()),
            None if skipped => Err(format!(
                "skipped: the broker {} is unreachable ({})",
                o.mqtt,
                mqtt_down.clone().unwrap_or_default()
            )),
            None => Err(phase_reason(&gateway, name)),
        };
        per.push(PerDevices {
            devices: n,
            load,
            poll: fields(&poll, "poll_bench"),
            live: phase("live", mqtt_down.is_some()),
            e2e: phase("e2e", mqtt_down.is_some()),
            replay: phase("replay", false),
        });
    }

    let machine =
        report::Machine::describe(&load_start, &date_start, started.elapsed(), build_took);
    let text = report::render(&machine, &w, &shared, &per);
    println!();
    println!("{text}");
    let complete = shared.complete() && per.iter().all(PerDevices::complete) && mqtt_down.is_none();
    Ok(complete)
}

/// The one `BENCH NAME` line of a run, or why it is missing.
fn fields(out: &Outcome, name: &str) -> Result<runner::Fields, String> {
    out.bench().remove(name).ok_or_else(|| out.reason())
}

/// Why a phase of `gateway_bench` printed no figures: its own "PHASE: failed: …" line, or
/// how the program ended.
fn phase_reason(out: &Outcome, phase: &str) -> String {
    let prefix = format!("{phase}: failed: ");
    out.stdout
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or_else(|| out.reason(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_come_from_urls_with_and_without_user_and_port() {
        let hp = |u: &str, s: &str, d: u16| host_port(u, s, d);
        assert_eq!(
            hp(
                "postgres://postgres@127.0.0.1:5432/test",
                "postgres://",
                5432
            ),
            Some(("127.0.0.1".to_owned(), 5432))
        );
        assert_eq!(
            hp(
                "postgres://u:p@db.example/x?sslmode=disable",
                "postgres://",
                5432
            ),
            Some(("db.example".to_owned(), 5432))
        );
        assert_eq!(
            hp("mqtt://[::1]:1884", "mqtt://", 1883),
            Some(("::1".to_owned(), 1884))
        );
        assert_eq!(
            hp("mqtt://broker", "mqtt://", 1883),
            Some(("broker".to_owned(), 1883))
        );
        assert_eq!(hp("tcp://broker", "mqtt://", 1883), None);
        assert_eq!(hp("mqtt://broker:x", "mqtt://", 1883), None);
    }

    #[test]
    fn durations_are_whole_seconds_or_minutes() {
        assert_eq!(parse_seconds("60"), Some(60));
        assert_eq!(parse_seconds("60s"), Some(60));
        assert_eq!(parse_seconds("2m"), Some(120));
        assert_eq!(parse_seconds("soon"), None);
    }
}
