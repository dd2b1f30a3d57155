//! The suite's summary: the machine, one Markdown table per device count, and a scaling table.

use std::fmt::Write as _;
use std::time::Duration;

use crate::runner::{Fields, Outcome};

/// The stated workload.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    pub(crate) seconds: u64,
    pub(crate) backlog: u64,
    pub(crate) warmup_live: u64,
    pub(crate) warmup_poll: u64,
    pub(crate) buffer_cycles: u64,
    pub(crate) ingest_readings: u64,
    pub(crate) api_rounds: u64,
    pub(crate) mqtt: String,
    /// The suite's own arguments, as given.
    pub(crate) command: String,
}

/// Points per simulated device (150 registers, `f32`), read every second.
const POINTS: usize = 75;

/// One ingest run of `ingest_bench`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ingest {
    pub(crate) readings: Option<u64>,
    pub(crate) stored_per_s: f64,
    pub(crate) end_to_end_per_s: Option<f64>,
    pub(crate) sink_vm_hwm_mib: Option<f64>,
    pub(crate) sink_cpu_s: Option<f64>,
    /// CPU seconds of the PostgreSQL server's processes (PostgreSQL runs only).
    pub(crate) server_cpu_s: Option<f64>,
}

impl Ingest {
    /// The figures of `backend` (`sqlite`, `postgres`): from a `BENCH ingest_bench.BACKEND`
    /// line (or `BENCH ingest_bench backend=BACKEND`) when there is one, else from the plain
    /// line `[BACKEND] stored N readings: … = R readings/s; … = E readings/s; sink VmHWM M
    /// MiB; CPU: sink C s …[, PostgreSQL server S s]`.
    pub(crate) fn parse(out: &Outcome, backend: &str) -> Result<Self, String> {
        let bench = out.bench();
        let line = bench.get(&format!("ingest_bench.{backend}")).or_else(|| {
            bench
                .get("ingest_bench")
                .filter(|f| f.get("backend").map(String::as_str) == Some(backend))
        });
        if let Some(f) = line
            && let Some(stored_per_s) = number(f, "stored_per_s")
        {
            return Ok(Self {
                readings: number(f, "readings").map(|r| r as u64),
                stored_per_s,
                end_to_end_per_s: number(f, "end_to_end_per_s"),
                sink_vm_hwm_mib: number(f, "sink_vm_hwm_mib")
                    .or_else(|| number(f, "sink_vm_hwm_mb")),
                sink_cpu_s: number(f, "sink_cpu_s"),
                server_cpu_s: number(f, "server_cpu_s"),
            });
        }
        let tag = format!("[{backend}]");
        if let Some(line) = out
            .stdout
            .iter()
            .find(|l| l.starts_with(&format!("{tag} stored")))
        {
            return Self::parse_plain(line).ok_or_else(|| format!("cannot read the line {line:?}"));
        }
        if let Some(skip) = out
            .stdout
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{tag} skipped: ")))
        {
            return Err(format!("skipped by ingest_bench: {skip}"));
        }
        Err(out.reason())
    }

    fn parse_plain(line: &str) -> Option<Self> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| {
            words
                .get(i)
                .and_then(|w| w.trim_end_matches([',', ';', ':']).parse::<f64>().ok())
        };
        let rates: Vec<f64> = words
            .iter()
            .enumerate()
            .filter(|(_, w)| w.starts_with("readings/s"))
            .filter_map(|(i, _)| i.checked_sub(1).and_then(num))
            .collect();
        let after = |a: &str, b: Option<&str>| {
            words.iter().enumerate().find_map(|(i, w)| {
                let prev_ok = b.is_none_or(|b| i > 0 && words[i - 1] == b);
                (*w == a && prev_ok).then(|| num(i + 1)).flatten()
            })
        };
        Some(Self {
            readings: after("stored", None).map(|r| r as u64),
            stored_per_s: *rates.first()?,
            end_to_end_per_s: rates.get(1).copied(),
            sink_vm_hwm_mib: after("VmHWM", None),
            sink_cpu_s: after("sink", Some("CPU:")),
            server_cpu_s: after("server", Some("PostgreSQL")),
        })
    }
}

/// The runs that do not depend on the device count.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) buffer: Result<Fields, String>,
    pub(crate) api: Result<Fields, String>,
    pub(crate) ingest_sqlite: Result<Ingest, String>,
    pub(crate) ingest_postgres: Result<Ingest, String>,
    pub(crate) ingest_readings: u64,
}

impl Shared {
    /// Every figure measured (PostgreSQL skipped with a reason counts).
    pub(crate) fn complete(&self) -> bool {
        self.buffer.is_ok()
            && self.api.is_ok()
            && self.ingest_sqlite.is_ok()
            && match &self.ingest_postgres {
                Ok(_) => true,
                Err(e) => e.starts_with("skipped"),
            }
    }
}

/// The runs of one device count.
#[derive(Debug)]
pub(crate) struct PerDevices {
    pub(crate) devices: usize,
    /// Load averages when its first run started.
    pub(crate) load: String,
    pub(crate) poll: Result<Fields, String>,
    pub(crate) live: Result<Fields, String>,
    pub(crate) e2e: Result<Fields, String>,
    pub(crate) replay: Result<Fields, String>,
}

impl PerDevices {
    pub(crate) fn complete(&self) -> bool {
        self.poll.is_ok() && self.live.is_ok() && self.e2e.is_ok() && self.replay.is_ok()
    }
}

/// The machine and when the suite ran.
#[derive(Debug)]
pub(crate) struct Machine {
    cpus: usize,
    model: String,
    memory: String,
    kernel: String,
    date: String,
    load_start: String,
    load_end: String,
    took: Duration,
    build: Option<Duration>,
}

impl Machine {
    pub(crate) fn describe(
        load_start: &str,
        date: &str,
        took: Duration,
        build: Option<Duration>,
    ) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
        let mhz = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("cpu MHz"))
            .and_then(|l| l.split_once(':'))
            .and_then(|(_, m)| m.trim().parse::<f64>().ok());
        let model = match mhz {
            Some(m) => format!("{model} ({m:.0} MHz)"),
            None => model,
        };
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        };
        let gib = |k: Option<f64>| {
            k.map_or_else(|| "?".to_owned(), |k| format!("{:.0}", k / 1_048_576.0))
        };
        let memory = format!(
            "{} GiB total, {} GiB available (`free -g`)",
            gib(kib("MemTotal:")),
            gib(kib("MemAvailable:"))
        );
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            model,
            memory,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "?".to_owned(), |k| k.trim().to_owned()),
            date: date.to_owned(),
            load_start: load_start.to_owned(),
            load_end: crate::runner::load_average(),
            took,
            build,
        }
    }
}

/// The local date and time, from `date`.
pub(crate) fn date() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d %H:%M %Z")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |d| d.trim().to_owned())
}

fn number(f: &Fields, key: &str) -> Option<f64> {
    f.get(key)
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
}

/// `12345.6` → `12,346`.
fn int(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A figure of a run, formatted by `f`, or why it is missing.
fn cell(r: &Result<Fields, String>, f: impl Fn(&Fields) -> Option<String>) -> String {
    match r {
        Ok(fields) => f(fields).unwrap_or_else(|| "not printed".to_owned()),
        Err(e) => format!("not measured: {}", e.replace('|', "/")),
    }
}

/// `key` formatted as an integer with separators.
fn i(f: &Fields, key: &str) -> Option<String> {
    number(f, key).map(int)
}

/// `key` with `d` decimals.
fn d(f: &Fields, key: &str, decimals: usize) -> Option<String> {
    number(f, key).map(|v| format!("{v:.decimals$}"))
}

/// CPU seconds per 1,000 readings, flagged when the run used too little CPU for the 10 ms
/// ticks of `/proc/PID/stat` to measure it well.
fn cpu_per_k(f: &Fields, per_k: &str, total: &str) -> Option<String> {
    let v = d(f, per_k, 4)?;
    Some(match number(f, total) {
        Some(cpu) if cpu < 0.5 => format!("{v} (from {cpu:.2} CPU s: 10 ms ticks, imprecise)"),
        _ => v,
    })
}

/// As [`cpu_per_k`], flagged with `*` only.
fn cpu_per_k_short(f: &Fields, per_k: &str, total: &str) -> Option<String> {
    let v = d(f, per_k, 4)?;
    Some(match number(f, total) {
        Some(cpu) if cpu < 0.5 => format!("{v}*"),
        _ => v,
    })
}

/// Shortest drain that gives a sustained replay rate rather than one burst, seconds.
const SUSTAINED_REPLAY_S: f64 = 2.0;

fn ingest_cell(r: &Result<Ingest, String>) -> String {
    match r {
        Ok(g) => {
            let mut s = format!("{} readings/s stored", int(g.stored_per_s));
            if let Some(e) = g.end_to_end_per_s {
                let _ = write!(s, " ({} end to end)", int(e));
            }
            if let Some(m) = g.sink_vm_hwm_mib {
                let _ = write!(s, "; sink VmHWM {m:.0} MiB");
            }
            if let (Some(c), Some(n)) = (g.sink_cpu_s, g.readings) {
                let _ = write!(
                    s,
                    "; sink CPU {:.1} s per million readings",
                    c / (n as f64 / 1e6)
                );
                if let Some(server) = g.server_cpu_s {
                    let _ = write!(s, ", PostgreSQL server {:.1} s", server / (n as f64 / 1e6));
                }
            }
            s
        }
        Err(e) => e.replace('|', "/"),
    }
}

/// Renders the summary.
pub(crate) fn render(m: &Machine, w: &Workload, s: &Shared, per: &[PerDevices]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Suite and scaling (printed by the suite)");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "**Command:** `cargo run --release -p fivezero-bench --{}{}`",
        if w.command.is_empty() { "" } else { " " },
        w.command
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "**Machine:** {} CPUs (`nproc`), {}; {}; Linux {}. **Date:** {}. **Load average** \
         (1, 5, 15 min) at the start {}, at the end {}; the suite took {:.0} min{}.",
        m.cpus,
        m.model,
        m.memory,
        m.kernel,
        m.date,
        m.load_start,
        m.load_end,
        m.took.as_secs_f64() / 60.0,
        m.build.map_or_else(String::new, |b| format!(
            ", of which {:.0} min the release build",
            b.as_secs_f64() / 60.0
        ))
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "**Workload:** N simulated devices (grid-meter physics) × 150 holding registers (75 `f32` \
         points) polled every 1 s, one TCP connection per device, buffer at `synchronous = FULL`, \
         MQTT QoS 1 on {}. Windows of {} s after a warm-up ({} s for the whole gateway, {} s \
         for polling alone); replay after a {} s broker outage. Once for all device counts: \
         `buffer_bench` {} cycles of 150 readings; `ingest_bench` {} readings; `api_latency` {} \
         requests per query on a month of 20 meters at 1-minute resolution.",
        w.mqtt,
        w.seconds,
        w.warmup_live,
        w.warmup_poll,
        w.backlog,
        int(w.buffer_cycles as f64),
        int(s.ingest_readings as f64),
        w.api_rounds
    );
    for p in per {
        let _ = writeln!(out);
        let _ = write!(out, "{}", device_table(w, s, p));
    }
    if per.len() > 1 {
        let _ = writeln!(out);
        let _ = write!(out, "{}", scaling_table(per));
    }
    out
}

fn device_table(w: &Workload, s: &Shared, p: &PerDevices) -> String {
    let n = p.devices;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "### {n} devices: {} readings/s offered ({n} × {POINTS} points every 1 s)",
        int((n * POINTS) as f64)
    );
    let _ = writeln!(t);
    let _ = writeln!(t, "| figure | result | measured by |");
    let _ = writeln!(t, "|---|---|---|");
    let mut row = |figure: &str, result: String, by: String| {
        let _ = writeln!(t, "| {figure} | {result} | {by} |");
    };
    row(
        "gateway readings/s",
        cell(&p.live, |f| {
            Some(format!(
                "{} committed ({} received by the subscriber, {} duplicates)",
                i(f, "readings_per_s")?,
                i(f, "received_per_s").unwrap_or_default(),
                i(f, "duplicates").unwrap_or_default()
            ))
        }),
        format!("gateway_bench, live, {} s", w.seconds),
    );
    row(
        "CPU s per 1,000 readings",
        format!(
            "{} whole gateway (poll, decode, buffer, MQTT); {} polling and decoding alone",
            cell(&p.live, |f| cpu_per_k(f, "cpu_s_per_1000", "cpu_s")),
            cell(&p.poll, |f| cpu_per_k(f, "cpu_s_per_1000", "cpu_s")),
        ),
        "gateway_bench (`/proc/PID/stat`); poll_bench".to_owned(),
    );
    row(
        "peak RSS (VmHWM)",
        format!(
            "{} MB whole gateway, live; {} MB over the outage and the replay; {} MB polling alone",
            cell(&p.live, |f| d(f, "vm_hwm_mb", 1)),
            cell(&p.replay, |f| d(f, "vm_hwm_mb", 1)),
            cell(&p.poll, |f| d(f, "vm_hwm_mb", 1)),
        ),
        "gateway_bench; poll_bench".to_owned(),
    );
    row(
        "Modbus requests per cycle",
        cell(&p.poll, |f| {
            Some(format!(
                "{} per device cycle; minimum {}, planner {}",
                d(f, "requests_per_cycle", 2)?,
                f.get("minimum")?,
                f.get("planned")?
            ))
        }),
        "poll_bench".to_owned(),
    );
    row(
        "buffer commit rate",
        cell(&s.buffer, |f| {
            Some(format!(
                "FULL {} commits/s = {} readings/s; NORMAL {} commits/s = {} readings/s; this \
                 plant needs at most {n} commits/s (one per device cycle, fewer with group commit)",
                i(f, "full_commits_per_s")?,
                i(f, "full_readings_per_s")?,
                i(f, "normal_commits_per_s")?,
                i(f, "normal_readings_per_s")?,
            ))
        }),
        "buffer_bench, 150 readings per commit, in the temporary folder (same for every device count)"
            .to_owned(),
    );
    row(
        "replay rate",
        cell(&p.replay, |f| {
            if f.get("drained").map(String::as_str) == Some("0") {
                return Some(format!(
                    "the backlog of {} readings did not drain",
                    i(f, "backlog_readings")?
                ));
            }
            if number(f, "replay_s")? < SUSTAINED_REPLAY_S {
                return Some(format!(
                    "backlog of {} readings too small for a sustained rate: sent within {} s of \
                     the first message (a burst of {} readings/s); first message {} s after the \
                     broker came back (reconnect backoff)",
                    i(f, "backlog_readings")?,
                    d(f, "replay_s", 1)?,
                    i(f, "replay_readings_per_s")?,
                    d(f, "first_message_s", 1)?,
                ));
            }
            Some(format!(
                "{} readings/s = {}× the live rate, backlog {} readings; first message {} s \
                 after the broker came back (reconnect backoff)",
                i(f, "replay_readings_per_s")?,
                d(f, "replay_ratio", 1)?,
                i(f, "backlog_readings")?,
                d(f, "first_message_s", 1)?,
            ))
        }),
        format!("gateway_bench, replay after {} s", w.backlog),
    );
    row(
        "sink ingest, SQLite",
        ingest_cell(&s.ingest_sqlite),
        "ingest_bench (same for every device count)".to_owned(),
    );
    row(
        "sink ingest, PostgreSQL",
        ingest_cell(&s.ingest_postgres),
        "ingest_bench (same for every device count)".to_owned(),
    );
    row(
        "query p50 / p99",
        cell(&s.api, |f| {
            Some(format!(
                "day of 1-minute series {} / {} ms; month KPI scorecard {} / {} ms (from hourly \
                 windows {} / {} ms)",
                d(f, "series_day_p50_ms", 2)?,
                d(f, "series_day_p99_ms", 2)?,
                d(f, "kpi_month_daily_p50_ms", 2)?,
                d(f, "kpi_month_daily_p99_ms", 2)?,
                d(f, "kpi_month_hourly_p50_ms", 2)?,
                d(f, "kpi_month_hourly_p99_ms", 2)?,
            ))
        }),
        "api_latency, SQLite (same for every device count)".to_owned(),
    );
    row(
        "register change → value in the sink's API",
        cell(&p.e2e, |f| {
            Some(format!(
                "p50 {} ms, p95 {} ms, p99 {} ms ({} changes, {} lost); of which the wait for \
                 the poll p50 {} ms, after the poll p50 {} ms",
                i(f, "change_api_p50_ms")?,
                i(f, "change_api_p95_ms")?,
                i(f, "change_api_p99_ms")?,
                f.get("changes")?,
                f.get("changes_lost")?,
                i(f, "wait_p50_ms")?,
                i(f, "after_poll_p50_ms")?,
            ))
        }),
        format!("gateway_bench, e2e, {} s (real sink, SQLite)", w.seconds),
    );
    row(
        "read → MQTT arrival",
        cell(&p.live, |f| {
            Some(format!(
                "p50 {} ms, p95 {} ms, p99 {} ms",
                d(f, "read_arrival_p50_ms", 1)?,
                d(f, "read_arrival_p95_ms", 1)?,
                d(f, "read_arrival_p99_ms", 1)?,
            ))
        }),
        "gateway_bench, live".to_owned(),
    );
    row(
        "register change → MQTT arrival",
        cell(&p.live, |f| {
            Some(format!(
                "p50 {} ms, p95 {} ms ({} changes, {} lost)",
                i(f, "change_arrival_p50_ms")?,
                i(f, "change_arrival_p95_ms")?,
                f.get("changes")?,
                f.get("changes_lost")?,
            ))
        }),
        "gateway_bench, live".to_owned(),
    );
    row(
        "sink at this plant's rate",
        cell(&p.e2e, |f| {
            Some(format!(
                "{} readings/s stored; {} CPU s per 1,000 readings (API queries included); \
                 VmHWM {} MB",
                i(f, "sink_stored_per_s")?,
                d(f, "sink_cpu_s_per_1000", 4)?,
                d(f, "sink_vm_hwm_mb", 1)?,
            ))
        }),
        "gateway_bench, e2e".to_owned(),
    );
    let loads = [
        ("poll_bench", &p.poll),
        ("live", &p.live),
        ("e2e", &p.e2e),
        ("replay", &p.replay),
    ]
    .iter()
    .filter_map(|(name, r)| {
        r.as_ref()
            .ok()
            .and_then(|f| f.get("load1"))
            .map(|l| format!("{l} ({name})"))
    })
    .collect::<Vec<_>>()
    .join(", ");
    row(
        "load average (1 min)",
        format!("{} at the start; at the end of each run: {loads}", p.load),
        "/proc/loadavg (2 CPUs shared with other work)".to_owned(),
    );
    t
}

fn scaling_table(per: &[PerDevices]) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "### Scaling");
    let _ = writeln!(t);
    let _ = write!(t, "| figure |");
    for p in per {
        let _ = write!(t, " {} devices |", p.devices);
    }
    let _ = writeln!(t);
    let _ = write!(t, "|---|");
    for _ in per {
        let _ = write!(t, "---|");
    }
    let _ = writeln!(t);
    let short = |r: &Result<Fields, String>, f: &dyn Fn(&Fields) -> Option<String>| match r {
        Ok(fields) => f(fields).unwrap_or_else(|| "?".to_owned()),
        Err(_) => "—".to_owned(),
    };
    type Pick<'a> = (&'a str, Box<dyn Fn(&PerDevices) -> String + 'a>);
    let rows: Vec<Pick<'_>> = vec![
        (
            "readings/s (committed)",
            Box::new(|p| short(&p.live, &|f| i(f, "readings_per_s"))),
        ),
        (
            "gateway CPU s per 1,000 readings",
            Box::new(|p| short(&p.live, &|f| cpu_per_k_short(f, "cpu_s_per_1000", "cpu_s"))),
        ),
        (
            "gateway CPU, % of one core",
            Box::new(|p| {
                short(&p.live, &|f| {
                    Some(format!(
                        "{:.1} %",
                        100.0 * number(f, "cpu_s")? / number(f, "window_s")?
                    ))
                })
            }),
        ),
        (
            "polling alone, CPU s per 1,000",
            Box::new(|p| short(&p.poll, &|f| cpu_per_k_short(f, "cpu_s_per_1000", "cpu_s"))),
        ),
        (
            "gateway peak RSS, live (MB)",
            Box::new(|p| short(&p.live, &|f| d(f, "vm_hwm_mb", 1))),
        ),
        (
            "gateway peak RSS over the replay (MB)",
            Box::new(|p| short(&p.replay, &|f| d(f, "vm_hwm_mb", 1))),
        ),
        (
            "requests per cycle (minimum)",
            Box::new(|p| {
                short(&p.poll, &|f| {
                    Some(format!(
                        "{} ({})",
                        d(f, "requests_per_cycle", 2)?,
                        f.get("minimum")?
                    ))
                })
            }),
        ),
        (
            "replay readings/s (× live)",
            Box::new(|p| {
                short(&p.replay, &|f| {
                    if number(f, "replay_s")? < SUSTAINED_REPLAY_S {
                        return Some(format!(
                            "burst: {} readings in {} s",
                            i(f, "backlog_readings")?,
                            d(f, "replay_s", 1)?
                        ));
                    }
                    Some(format!(
                        "{} ({}×)",
                        i(f, "replay_readings_per_s")?,
                        d(f, "replay_ratio", 1)?
                    ))
                })
            }),
        ),
        (
            "read → MQTT arrival p50 / p95 (ms)",
            Box::new(|p| {
                short(&p.live, &|f| {
                    Some(format!(
                        "{} / {}",
                        d(f, "read_arrival_p50_ms", 1)?,
                        d(f, "read_arrival_p95_ms", 1)?
                    ))
                })
            }),
        ),
        (
            "change → value in the sink's API p50 / p95 (ms)",
            Box::new(|p| {
                short(&p.e2e, &|f| {
                    Some(format!(
                        "{} / {}",
                        i(f, "change_api_p50_ms")?,
                        i(f, "change_api_p95_ms")?
                    ))
                })
            }),
        ),
        (
            "sink CPU s per 1,000 readings, live",
            Box::new(|p| {
                short(&p.e2e, &|f| {
                    cpu_per_k_short(f, "sink_cpu_s_per_1000", "sink_cpu_s")
                })
            }),
        ),
        (
            "sink peak RSS, live (MB)",
            Box::new(|p| short(&p.e2e, &|f| d(f, "sink_vm_hwm_mb", 1))),
        ),
        ("load average at the start", Box::new(|p| p.load.clone())),
    ];
    for (name, pick) in &rows {
        let _ = write!(t, "| {name} |");
        for p in per {
            let _ = write!(t, " {} |", pick(p));
        }
        let _ = writeln!(t);
    }
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "\\* from less than 0.5 CPU s in the window: the 10 ms ticks of `/proc/PID/stat` make \
         it imprecise. A replay \"burst\" is a backlog sent within {SUSTAINED_REPLAY_S:.0} s, \
         too small for a sustained rate."
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_ingest_line_gives_its_rates_memory_and_cpu() {
        let line = "[sqlite] stored 1000000 readings: first to last stored 12.22 s = 81841 \
                    readings/s; publisher start to last watermark 12.31 s = 81240 readings/s; \
                    sink VmHWM 208 MiB; CPU: sink 9.61 s (104058 readings per sink CPU \
                    second), gateway side 1.13 s, PostgreSQL server 4.20 s";
        let g = Ingest::parse_plain(line).unwrap();
        assert_eq!(g.readings, Some(1_000_000));
        assert!((g.stored_per_s - 81_841.0).abs() < 0.5);
        assert_eq!(g.end_to_end_per_s, Some(81_240.0));
        assert_eq!(g.sink_vm_hwm_mib, Some(208.0));
        assert_eq!(g.sink_cpu_s, Some(9.61));
        assert_eq!(g.server_cpu_s, Some(4.2));
    }

    #[test]
    fn a_bench_line_wins_over_the_plain_line() {
        let out = Outcome {
            stdout: vec![
                "[postgres] stored 10 readings: first to last stored 1 s = 10 readings/s".into(),
                "BENCH ingest_bench.postgres stored_per_s=61738 sink_vm_hwm_mib=132".into(),
            ],
            code: Some(0),
            ..Outcome::default()
        };
        let g = Ingest::parse(&out, "postgres").unwrap();
        assert_eq!(g.stored_per_s, 61_738.0);
        assert_eq!(g.sink_vm_hwm_mib, Some(132.0));
        assert!(Ingest::parse(&out, "sqlite").is_err());
    }

    #[test]
    fn integers_get_thousands_separators() {
        assert_eq!(int(7499.6), "7,500");
        assert_eq!(int(202_263.0), "202,263");
        assert_eq!(int(12.0), "12");
        assert_eq!(int(-1234.0), "-1,234");
    }
}
