//! `fivezero-gateway read`: one full cycle of a profile against a live device, printed as a
//! table or as JSON, so an integrator sees every point next to the raw words it came from.
//!
//! Nothing here speaks Modbus itself: the link is opened with the poller's connectors
//! ([`fivezero_gateway::poll::transport`]), each request goes through the poller's
//! `transport::read` (timeout and reply-length check), and the readings are made by the
//! poller's [`Cycle`] from the profile's read plan, exactly as the daemon makes them. After a
//! timeout or a malformed reply the connection is reopened before the next request, as the
//! poller does, so a late answer is never taken for the next one.
//!
//! Exit status 1, with the reason on stderr, when the profile is refused, the link cannot be
//! opened, or the device answers nothing at all; exceptions and other per-request failures
//! show in the points of the request concerned.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use fivezero_gateway::config::{Parity, SerialSettings, inter_frame_delay};
use fivezero_gateway::poll::cycle::Cycle;
use fivezero_gateway::poll::transport::{
    self, Connect, Reply, RtuTcpConnect, SerialConnect, TcpConnect,
};
use fivezero_gateway::poll::{Clock, DeviceException, Disposition, PollError, SystemClock};
use fivezero_model::wire::{Quality, Reading, Value};
use fivezero_profiles::codec::{self, Decoded, RegisterImage};
use fivezero_profiles::plan::{self, ReadRequest};
use fivezero_profiles::{DataType, Point, Profile, load_file};
use tokio::time::Instant;

/// Limit on opening the link (TCP connect, serial open), as the poller's default.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How deep the library folder is searched for `<id>.toml`.
const LIBRARY_DEPTH: usize = 4;

/// How to reach the device: shared by `read` and `scan`.
#[derive(Debug, Clone, Args)]
pub(crate) struct LinkArgs {
    /// Modbus TCP: the device's HOST:PORT.
    #[arg(
        long,
        value_name = "HOST:PORT",
        required_unless_present_any = ["rtu", "rtu_tcp"],
        conflicts_with_all = ["rtu", "rtu_tcp"]
    )]
    tcp: Option<String>,
    /// Modbus RTU on a local serial port, e.g. /dev/ttyUSB0 (8 data bits, 1 stop bit).
    #[arg(long, value_name = "DEVICE", conflicts_with = "rtu_tcp")]
    rtu: Option<String>,
    /// Serial baud rate, with --rtu [default: 9600].
    #[arg(long, value_name = "N", requires = "rtu")]
    baud: Option<u32>,
    /// Serial parity, with --rtu: N, E or O [default: N].
    #[arg(long, value_name = "N|E|O", requires = "rtu", value_parser = parse_parity)]
    parity: Option<Parity>,
    /// Modbus RTU frames over TCP to a serial server at HOST:PORT.
    #[arg(long = "rtu-tcp", value_name = "HOST:PORT")]
    rtu_tcp: Option<String>,
    /// The Modbus unit id (1..=247 on a serial line).
    #[arg(long, value_name = "N")]
    unit: u8,
    /// Limit on each request ("500ms", "2s").
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

fn parse_parity(s: &str) -> Result<Parity, String> {
    match s.to_ascii_uppercase().as_str() {
        "N" | "NONE" => Ok(Parity::None),
        "E" | "EVEN" => Ok(Parity::Even),
        "O" | "ODD" => Ok(Parity::Odd),
        _ => Err(format!("{s:?} is not N, E or O")),
    }
}

impl LinkArgs {
    /// Opens nothing yet: the session that will talk to the device.
    pub(crate) fn session(&self) -> Result<Session, String> {
        let (link, connect, quiet): (String, Arc<dyn Connect>, Duration) =
            match (&self.tcp, &self.rtu, &self.rtu_tcp) {
                (Some(addr), _, _) => (
                    format!("tcp {addr}"),
                    Arc::new(TcpConnect { addr: addr.clone() }),
                    Duration::ZERO,
                ),
                (_, _, Some(addr)) => (
                    format!("rtu_tcp {addr}"),
                    Arc::new(RtuTcpConnect { addr: addr.clone() }),
                    Duration::ZERO,
                ),
                (_, Some(path), _) => {
                    let serial = SerialSettings {
                        baud: self.baud.unwrap_or(9600),
                        parity: self.parity.unwrap_or(Parity::None),
                        ..SerialSettings::default()
                    };
                    if !(300..=4_000_000).contains(&serial.baud) {
                        return Err(format!("--baud {} is outside 300..=4000000", serial.baud));
                    }
                    (
                        format!("rtu {path} {serial}"),
                        Arc::new(SerialConnect {
                            path: path.clone(),
                            serial,
                        }),
                        inter_frame_delay(&serial),
                    )
                }
                (None, None, None) => {
                    return Err("say how to reach the device: --tcp, --rtu or --rtu-tcp".into());
                }
            };
        if (self.rtu.is_some() || self.rtu_tcp.is_some()) && !(1..=247).contains(&self.unit) {
            return Err(format!(
                "--unit {} is outside 1..=247, the addresses of devices on a serial line",
                self.unit
            ));
        }
        if self.timeout < Duration::from_millis(10) || self.timeout > Duration::from_secs(60) {
            return Err(format!(
                "--timeout {} is outside 10ms..=60s",
                humantime::format_duration(self.timeout)
            ));
        }
        Ok(Session {
            link,
            connect,
            ctx: None,
            unit: self.unit,
            timeout: self.timeout,
            inter_frame: quiet,
            quiet_until: Instant::now(),
        })
    }
}

/// tokio-modbus's client context has no `Debug`.
struct Ctx(tokio_modbus::client::Context);

impl fmt::Debug for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Context")
    }
}

/// One device on one link, read one request at a time through the poller's transport.
#[derive(Debug)]
pub(crate) struct Session {
    /// The link, as `tcp 10.0.0.21:502`.
    pub(crate) link: String,
    connect: Arc<dyn Connect>,
    ctx: Option<Ctx>,
    /// The unit id.
    pub(crate) unit: u8,
    /// Limit on each request.
    pub(crate) timeout: Duration,
    inter_frame: Duration,
    quiet_until: Instant,
}

impl Session {
    /// Opens the link if it is not open.
    pub(crate) async fn open(&mut self) -> Result<(), PollError> {
        if self.ctx.is_some() {
            return Ok(());
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connect.connect()).await {
            Ok(Ok(ctx)) => {
                self.ctx = Some(Ctx(ctx));
                Ok(())
            }
            Ok(Err(e)) => Err(PollError::Connect(e)),
            Err(_) => Err(PollError::ConnectTimeout),
        }
    }

    /// One read; after a failure that leaves the connection in doubt it is closed, and the
    /// next read opens a fresh one.
    pub(crate) async fn read(
        &mut self,
        req: &ReadRequest,
    ) -> Result<Result<Reply, DeviceException>, PollError> {
        self.open().await?;
        if !self.inter_frame.is_zero() {
            tokio::time::sleep_until(self.quiet_until).await;
        }
        let Some(Ctx(ctx)) = self.ctx.as_mut() else {
            return Err(PollError::ConnectTimeout);
        };
        let result = transport::read(ctx, self.unit, req, self.timeout).await;
        self.quiet_until = Instant::now() + self.inter_frame;
        if let Err(e) = &result
            && matches!(
                e.disposition(),
                Disposition::Reconnect | Disposition::LinkDown
            )
        {
            self.ctx = None;
        }
        result
    }

    /// Closes the link.
    pub(crate) async fn close(&mut self) {
        if let Some(Ctx(mut ctx)) = self.ctx.take() {
            use tokio_modbus::client::Client as _;
            let _ = tokio::time::timeout(Duration::from_secs(1), ctx.disconnect()).await;
        }
    }
}

/// Runs `fut` on a fresh single-threaded runtime.
pub(crate) fn block_on<F: std::future::Future>(fut: F) -> Result<F::Output, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|rt| rt.block_on(fut))
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// `read`'s arguments.
#[derive(Debug, Clone, Args)]
pub(crate) struct ReadArgs {
    /// The profile: a file (`*.toml`) or the id of a library profile (`sunspec-inverter`).
    #[arg(long, value_name = "FILE|ID")]
    profile: String,
    /// The library folder profile ids are looked up in [default: the shipped library].
    #[arg(long, value_name = "DIR")]
    profile_dir: Option<PathBuf>,
    #[command(flatten)]
    link: LinkArgs,
    /// Print a JSON array of objects instead of a table.
    #[arg(long)]
    json: bool,
}

/// `fivezero-gateway read`.
pub(crate) fn run(args: &ReadArgs) -> ExitCode {
    let mut stderr = std::io::stderr().lock();
    let library = args
        .profile_dir
        .clone()
        .unwrap_or_else(fivezero_profiles::library_dir);
    let path = match resolve_profile(&args.profile, &library) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let profile = match load_file(&path) {
        Ok(p) => p,
        Err(diagnostics) => {
            for d in diagnostics {
                let _ = writeln!(stderr, "{d}");
            }
            let _ = writeln!(stderr, "error: profile {} is refused", path.display());
            return ExitCode::FAILURE;
        }
    };
    let mut session = match args.link.session() {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match block_on(read_all(&mut session, &profile)) {
        Ok(Ok(o)) => o,
        Ok(Err(e)) | Err(e) => {
            let _ = writeln!(stderr, "error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rows = rows(&profile, &outcome);
    let mut stdout = std::io::stdout().lock();
    let printed = if args.json {
        writeln!(stdout, "{}", json(&rows))
    } else {
        print_table(&mut stdout, &profile, &session, &outcome, &rows)
    };
    match printed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(stderr, "error: cannot write the output: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where a profile argument points: a `.toml` file, or a library id found as `<id>.toml` in
/// `library` or below it.
pub(crate) fn resolve_profile(arg: &str, library: &Path) -> Result<PathBuf, String> {
    if arg.is_empty() {
        return Err("--profile is empty; give a library id or a .toml file".into());
    }
    if arg.ends_with(".toml") {
        let p = PathBuf::from(arg);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("profile file {arg} does not exist"))
        };
    }
    let mut ids = std::collections::BTreeMap::new();
    list_library(library, LIBRARY_DEPTH, &mut ids);
    if let Some(p) = ids.remove(arg) {
        return Ok(p);
    }
    let known: Vec<&str> = ids.keys().map(String::as_str).collect();
    Err(format!(
        "no profile {arg:?} in the library {} (it has: {}); give a path ending in .toml for a \
         file of your own",
        library.display(),
        if known.is_empty() {
            "none".to_owned()
        } else {
            known.join(", ")
        }
    ))
}

fn list_library(dir: &Path, depth: usize, out: &mut std::collections::BTreeMap<String, PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if depth > 0 {
                list_library(&p, depth - 1, out);
            }
        } else if p.extension().is_some_and(|e| e == "toml")
            && let Some(stem) = p.file_stem().and_then(|s| s.to_str())
        {
            out.entry(stem.to_owned()).or_insert(p);
        }
    }
}

/// What one full cycle gave.
#[derive(Debug)]
pub(crate) struct Outcome {
    plan: Vec<ReadRequest>,
    readings: Vec<Reading>,
    image: RegisterImage,
    /// Why each failed request (by plan index) failed.
    failed: HashMap<usize, String>,
    sent: u64,
    elapsed: Duration,
}

/// Reads every point of `profile` once.
async fn read_all(session: &mut Session, profile: &Profile) -> Result<Outcome, String> {
    let link = session.link.clone();
    let unit = session.unit;
    session
        .open()
        .await
        .map_err(|e| format!("cannot reach {link}: {e}"))?;
    let started = Instant::now();
    let plan = plan::plan_all(profile);
    let clock = SystemClock;
    let now_ms = clock.now_ms();
    let mut cycle = Cycle::new(0, now_ms, Arc::from(plan.clone()), now_ms, |_| None);
    let mut image = RegisterImage::new();
    let mut failed = HashMap::new();
    let mut answered = 0usize;
    while !cycle.is_done() {
        let Some((step, req)) = cycle.take_ready(Instant::now()) else {
            match cycle.next_ready() {
                Some(at) => tokio::time::sleep_until(at).await,
                None => break,
            }
            continue;
        };
        let result = session.read(&req).await;
        let ts = clock.now_ms();
        match result {
            Ok(Ok(reply)) => {
                answered += 1;
                match &reply {
                    Reply::Words(w) => image.put_registers(req.table, req.start, w),
                    Reply::Bits(b) => image.put_bits(req.table, req.start, b),
                }
                cycle.record(step, &reply, ts);
            }
            Ok(Err(exception)) => {
                answered += 1;
                match exception.disposition() {
                    Disposition::RetryAfter(after) if !step.retried => {
                        cycle.retry_at(step, Instant::now() + after);
                    }
                    _ => {
                        let reason = exception.reason();
                        cycle.fail(step, &reason, ts);
                        failed.insert(step.index, reason);
                    }
                }
            }
            Err(e) if answered == 0 => {
                session.close().await;
                return Err(match e {
                    PollError::Timeout => format!(
                        "unit {unit} on {link} did not answer within {}: check the unit id, the \
                         wiring or the device's Modbus settings (or try a longer --timeout)",
                        humantime::format_duration(session.timeout)
                    ),
                    other => format!("unit {unit} on {link} did not answer: {other}"),
                });
            }
            Err(e) => {
                cycle.fail(step, e.reason(), ts);
                failed.insert(step.index, format!("{}: {e}", e.reason()));
            }
        }
    }
    session.close().await;
    let readings = cycle.readings(profile, &profile.id);
    Ok(Outcome {
        plan,
        readings,
        image,
        failed,
        sent: cycle.sent(),
        elapsed: started.elapsed(),
    })
}

/// One printed line.
#[derive(Debug)]
struct Row<'a> {
    point: &'a Point,
    metric: Option<&'static str>,
    unit: &'static str,
    value: Option<Value>,
    shown: String,
    quality: Quality,
    reason: Option<String>,
    raw: Option<Vec<u16>>,
}

fn rows<'a>(profile: &'a Profile, o: &Outcome) -> Vec<Row<'a>> {
    let mut readings: HashMap<usize, &Reading> = HashMap::new();
    for (i, r) in profile.reading_points().zip(&o.readings) {
        readings.insert(i, r);
    }
    let request_of = |i: usize| o.plan.iter().position(|r| r.points.contains(&i));
    profile
        .points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let req = request_of(i);
            let failure = req.and_then(|r| o.failed.get(&r));
            let raw = if failure.is_some() || req.is_none() {
                None
            } else {
                raw_words(p, &o.image)
            };
            let (value, quality, reason) = match (readings.get(&i), p.metric) {
                (Some(r), Some(_)) => (r.value.clone(), r.quality, r.reason.clone()),
                _ => helper_value(profile, i, &o.image, failure),
            };
            Row {
                point: p,
                metric: p.metric.map(|m| m.id),
                unit: p.metric.map_or("", |m| m.unit),
                shown: show(p, value.as_ref()),
                value,
                quality,
                reason,
                raw,
            }
        })
        .collect()
}

/// A scale-factor helper: its decoded factor, or why it is missing.
fn helper_value(
    profile: &Profile,
    i: usize,
    image: &RegisterImage,
    failure: Option<&String>,
) -> (Option<Value>, Quality, Option<String>) {
    if let Some(f) = failure {
        return (None, Quality::Error, Some(f.clone()));
    }
    match codec::decode(profile, i, image) {
        Ok(Decoded::Number(x)) => (Some(Value::Number(x)), Quality::Good, None),
        Ok(Decoded::Text(t)) => (Some(Value::Text(t)), Quality::Good, None),
        Ok(Decoded::NotAvailable(_)) => (
            None,
            Quality::Good,
            Some("not available (sentinel)".to_owned()),
        ),
        Err(e) => (None, Quality::Error, Some(e.to_string())),
    }
}

fn raw_words(p: &Point, image: &RegisterImage) -> Option<Vec<u16>> {
    match p.data_type {
        DataType::Bool => image.bit(p.table, p.address).map(|b| vec![u16::from(b)]),
        dt => image
            .registers(p.table, p.address, dt.width())
            .map(<[u16]>::to_vec),
    }
}

/// A value as a person reads it: numbers to ten significant digits, with the label of an
/// enumerated state or the names of the bits set.
fn show(p: &Point, value: Option<&Value>) -> String {
    match value {
        None => "-".to_owned(),
        Some(Value::Text(t)) => format!("{t:?}"),
        Some(Value::Number(x)) => {
            let n = number(*x);
            if x.fract() != 0.0 || !(0.0..=u64::MAX as f64).contains(x) {
                return n;
            }
            let whole = *x as u64;
            if let Some(label) = i64::try_from(whole).ok().and_then(|k| p.labels.get(&k)) {
                return format!("{n} ({label})");
            }
            if !p.flags.is_empty() {
                let set: Vec<&str> = p
                    .flags
                    .iter()
                    .filter(|(bit, _)| whole.checked_shr(u32::from(**bit)).unwrap_or(0) & 1 == 1)
                    .map(|(_, name)| name.as_str())
                    .collect();
                let set = if set.is_empty() {
                    "none".to_owned()
                } else {
                    set.join(", ")
                };
                return format!("{whole:#06X} ({set})");
            }
            n
        }
    }
}

/// Ten significant digits, without trailing zeros.
fn number(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let magnitude = x.abs().log10().floor() as i32;
    let decimals = usize::try_from((9 - magnitude).clamp(0, 15)).unwrap_or(0);
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

fn hex(words: &[u16]) -> String {
    let v: Vec<String> = words.iter().map(|w| format!("0x{w:04X}")).collect();
    v.join(" ")
}

const fn quality_name(q: Quality) -> &'static str {
    match q {
        Quality::Good => "good",
        Quality::Stale => "stale",
        Quality::Error => "error",
    }
}

/// One object of `--json`, fields in this order.
#[derive(Debug, serde::Serialize)]
struct JsonRow<'a> {
    point: &'a str,
    metric: Option<&'static str>,
    value: Option<&'a Value>,
    unit: Option<&'static str>,
    quality: &'static str,
    reason: Option<&'a str>,
    table: &'static str,
    address: u16,
    raw: Option<Vec<String>>,
}

fn json(rows: &[Row<'_>]) -> String {
    let v: Vec<JsonRow<'_>> = rows
        .iter()
        .map(|r| JsonRow {
            point: &r.point.name,
            metric: r.metric,
            value: r.value.as_ref(),
            unit: r.metric.map(|_| r.unit),
            quality: quality_name(r.quality),
            reason: r.reason.as_deref(),
            table: r.point.table.as_str(),
            address: r.point.address,
            raw: r
                .raw
                .as_ref()
                .map(|w| w.iter().map(|w| format!("0x{w:04X}")).collect()),
        })
        .collect();
    serde_json::to_string_pretty(&v).unwrap_or_else(|_| "[]".to_owned())
}

fn print_table(
    out: &mut impl Write,
    profile: &Profile,
    session: &Session,
    o: &Outcome,
    rows: &[Row<'_>],
) -> std::io::Result<()> {
    let good = rows
        .iter()
        .filter(|r| r.metric.is_some() && r.quality == Quality::Good && r.value.is_some())
        .count();
    let absent = rows
        .iter()
        .filter(|r| r.metric.is_some() && r.quality == Quality::Good && r.value.is_none())
        .count();
    let errors = rows
        .iter()
        .filter(|r| r.metric.is_some() && r.quality != Quality::Good)
        .count();
    writeln!(
        out,
        "{} ({} {}) on {} unit {}: {} request{} (minimum {}) in {} ms; {good} good, {absent} \
         not available, {errors} errors",
        profile.id,
        profile.manufacturer,
        profile.model,
        session.link,
        session.unit,
        o.sent,
        if o.sent == 1 { "" } else { "s" },
        plan::minimum_requests(profile, &(0..profile.points.len()).collect::<Vec<_>>()),
        o.elapsed.as_millis(),
    )?;
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let quality = match &r.reason {
                Some(why) => format!("{}: {why}", quality_name(r.quality)),
                None => quality_name(r.quality).to_owned(),
            };
            [
                r.point.name.clone(),
                r.metric.unwrap_or("(scale factor)").to_owned(),
                r.shown.clone(),
                r.unit.to_owned(),
                quality,
                r.raw.as_deref().map_or_else(|| "-".to_owned(), hex),
            ]
        })
        .collect();
    let header = ["point", "metric", "value", "unit", "quality", "raw"].map(str::to_owned);
    let mut widths = [0usize; 6];
    for row in std::iter::once(&header).chain(&cells) {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&cells) {
        let mut line = String::new();
        for (k, (c, w)) in row.iter().zip(widths).enumerate() {
            if k == 5 {
                line.push_str(c);
            } else {
                line.push_str(c);
                line.push_str(&" ".repeat(w - c.chars().count() + 2));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_ten_significant_digits() {
        assert_eq!(number(0.123_400_000_000_000_01), "0.1234");
        assert_eq!(number(3_941.14), "3941.14");
        assert_eq!(number(228.8), "228.8");
        assert_eq!(number(-0.5), "-0.5");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(12_345_678_901.0), "12345678901");
    }

    #[test]
    fn a_library_id_is_found_and_a_missing_one_lists_the_library() {
        let lib = fivezero_profiles::library_dir();
        let p = resolve_profile("sunspec-inverter", &lib).unwrap();
        assert!(p.ends_with("sunspec-inverter.toml"));
        let e = resolve_profile("nope", &lib).unwrap_err();
        assert!(e.contains("eastron-sdm630"), "{e}");
        assert!(resolve_profile("missing.toml", &lib).is_err());
    }
}
