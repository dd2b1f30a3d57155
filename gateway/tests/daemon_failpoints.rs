//! kill -9 of the gateway at each point of "kill -9 points in the gateway"
//! (`reference/reliability.md` §B.8, K1–K8), with the failpoints of `src/failpoints.rs`.
//!
//! Each test runs the Green Sail simulator (frozen clock, in this process), a private
//! Mosquitto on a free port, and the `fivezero-gateway` binary (`run --config`, three devices
//! polled every 200 ms, `synchronous = "full"`, `retain_until = "sink_ack"`). The test plays
//! the sink (common/sink_play.rs): it subscribes to the `batches` and `gaps` topics and
//! publishes, retained, the watermark of what it holds with no hole below.
//!
//! K1–K7: the gateway starts with one point armed through `FIVEZERO_FAILPOINTS` at a seeded
//! random hit (`n*off->return`: the point lets `n` hits pass and halts at the next one). The
//! test waits for the line `FAILPOINT <name>` on the gateway's stderr and sends SIGKILL while
//! that thread is blocked at the point. Then, from a copy of the killed gateway's files:
//! `PRAGMA integrity_check` = ok; one stream; rows never overlap (no sequence stored twice);
//! and every sequence `1..=committed` is either at or below the stored watermark, in a row,
//! or in a declared gap (no hole: in particular no eviction without its `Gap`, K6). The
//! gateway is started again without failpoints, runs until every device has readings polled
//! after the restart and the sink holds everything committed before the kill, and is stopped
//! with SIGTERM (exit status 0, integrity ok again). Then, against what the buffer committed
//! (`next_seq − 1` of its one stream, `committed`):
//! - the sink received no sequence above `committed` and nothing of another epoch;
//! - received distinct + declared gaps (less those also received) = `committed`: nothing
//!   committed is missing;
//! - every duplicate lies above the watermark the buffer held at the kill and at or below
//!   what it had committed at the kill (only what was committed and not confirmed is sent
//!   again), and a sequence received twice carried the same reading both times;
//! - no gap is declared except under K6.
//!
//! And per point, what the table expects:
//! - K3: the row committed at the kill had not been published before it (the writer stops
//!   right after `COMMIT`), and arrives after the restart.
//! - K5 (watermark): the watermark the sink had published is not the one in the file.
//! - K6: the test first fills the buffer through the library, with large text readings, to a
//!   seeded random distance below the gateway's 1 MiB budget, and keeps the broker out of
//!   reach (a closed gate) until the gateway, restarted after the kill, has evicted again
//!   (its metrics say so). At the kill the file holds every row and no gap: the eviction
//!   rolled back whole. After the restart the evicted sequences arrive as `buffer_full` gaps
//!   from sequence 1 on, and none evicted before the gate opened arrives as a reading.
//! - K7: the kill lands in the checkpoint of a clean stop (SIGTERM after a seeded random
//!   run), after the shutdown's drain, with a WAL on disk for the next start to replay.
//!
//! K8 (no failpoint, so it runs on any build): a crash loop. Ten starts in a row, each
//! killed at a seeded random delay in 0–2 s after it began and followed by the file checks
//! above; then the gateway starts, makes progress (readings of every device polled after the
//! start arrive) and the checks above hold, with duplicates at or below the highest sequence
//! committed at any kill.
//!
//! The seed is printed; `FIVEZERO_FAILPOINT_SEED=<n>` replays a run's choices. The tests
//! skip, printing why, when `/usr/sbin/mosquitto` is missing or (K1–K7) when the gateway
//! binary has no failpoints (`fivezero-gateway failpoints` exits 1), as with
//! `cargo test -p fivezero-gateway` alone; `--features failpoints` or
//! `cargo test --workspace` builds them in.

#[path = "fixtures/sim.rs"]
mod sim;

#[path = "common/publish_kit.rs"]
mod kit;

#[path = "common/daemon_kit.rs"]
mod daemon_kit;

#[path = "common/sink_play.rs"]
mod sink_play;

#[path = "common/gate.rs"]
mod gate;

#[path = "common/scrape.rs"]
mod scrape;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use daemon_kit::{SITE, config_text, now_ms};
use fivezero_gateway::buffer::{Buffer, BufferOptions};
use fivezero_gateway::failpoints;
use fivezero_gateway::poll::DeviceReadings;
use fivezero_model::topic::Topics;
use fivezero_model::wire::{GapReason, Quality, Reading, Value};
use fivezero_sim::server::SimulatorHandle;
use gate::Gate;
use kit::{Mosquitto, Probe};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sink_play::Sink;
use tokio::time::Instant;

/// Devices of the scenario polled by the gateway.
const DEVICES: [&str; 3] = ["grid-meter", "pv-roof-a", "boiler"];
/// Limit on each wait.
const LIMIT: Duration = Duration::from_secs(30);
/// The gateway binary.
const BIN: &str = env!("CARGO_BIN_EXE_fivezero-gateway");
/// Reconnect quickly.
const PUBLISH: &str = "
[publish]
backoff_min = \"100ms\"
backoff_max = \"1s\"
";
/// The K6 budget: the validator's floor.
const BUDGET: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Preconditions and the seed
// ---------------------------------------------------------------------------------------------

/// Whether the tests can run here; prints why not.
fn runnable() -> bool {
    if !Mosquitto::available() {
        return false;
    }
    match Command::new(BIN)
        .arg("failpoints")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(out) if out.status.success() => {
            let names = String::from_utf8_lossy(&out.stdout);
            let listed: Vec<&str> = names.lines().collect();
            assert_eq!(
                listed,
                failpoints::ALL,
                "`fivezero-gateway failpoints` lists the points of the library"
            );
            true
        }
        Ok(_) => {
            println!(
                "skipped: the gateway binary was built without the `failpoints` feature \
                 (`fivezero-gateway failpoints` exits 1); run `cargo test -p fivezero-gateway \
                 --features failpoints --test daemon_failpoints` or `cargo test --workspace`"
            );
            false
        }
        Err(e) => panic!("cannot run {BIN}: {e}"),
    }
}

/// The run's seed (`FIVEZERO_FAILPOINT_SEED`, else random), printed, mixed with `salt` so
/// each test draws its own numbers.
fn rng(salt: &str) -> StdRng {
    let seed = std::env::var("FIVEZERO_FAILPOINT_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(rand::random);
    println!("{salt}: seed {seed} (replay with FIVEZERO_FAILPOINT_SEED={seed})");
    let mix = salt.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    StdRng::seed_from_u64(seed ^ mix)
}

// ---------------------------------------------------------------------------------------------
// The gateway process
// ---------------------------------------------------------------------------------------------

/// The gateway binary, run as a child process with stderr in its own log file.
struct Gateway {
    child: Child,
    log: PathBuf,
}

impl Gateway {
    /// Starts `run --config config`, with `armed` in `FIVEZERO_FAILPOINTS` (none when `None`).
    fn start(config: &Path, log: PathBuf, armed: Option<&str>) -> Self {
        let file = std::fs::File::create(&log).expect("create the gateway's log");
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .env("FIVEZERO_LOG", "info")
            .env_remove(failpoints::ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        if let Some(spec) = armed {
            cmd.env(failpoints::ENV, spec);
        }
        let child = cmd.spawn().expect("start fivezero-gateway");
        Self { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The end of the log, for failure messages.
    fn tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Whether the line `FAILPOINT <point>` is in the log.
    fn halted_at(&self, point: &str) -> bool {
        let line = format!("{} {point}", failpoints::MARKER);
        self.log_text().lines().any(|l| l == line)
    }

    /// Fails the test when the process has exited.
    fn assert_running(&mut self, when: &str) {
        if let Some(status) = self.child.try_wait().expect("wait for the gateway") {
            panic!(
                "the gateway exited ({status}) {when}; log {}:\n{}",
                self.log.display(),
                self.tail()
            );
        }
    }

    /// SIGKILL, and wait for it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM failed");
    }

    /// SIGTERM, and wait (within `limit`) for its exit status.
    async fn terminate(&mut self, limit: Duration) -> ExitStatus {
        self.sigterm();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the gateway") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not exit within {limit:?} of SIGTERM; log {}:\n{}",
                self.log.display(),
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// The buffer's files
// ---------------------------------------------------------------------------------------------

/// What a copy of the buffer's files holds.
#[derive(Debug)]
struct Db {
    integrity: String,
    /// Per stream: id, epoch, next sequence, sink watermark.
    streams: Vec<(i64, i64, u64, u64)>,
    /// Per row: stream, first and last sequence.
    rows: Vec<(i64, u64, u64)>,
    /// Per gap: stream, first and last sequence.
    gaps: Vec<(i64, u64, u64)>,
    /// Bytes of the WAL file left on disk.
    wal_bytes: u64,
}

impl Db {
    /// Reads a copy of `db` and its WAL (so the gateway's own files, WAL included, are left
    /// exactly as the kill left them for the next start to recover); `None` when the file
    /// or its tables do not exist yet (a kill before the first open finished).
    fn inspect(db: &Path, scratch: &Path) -> Option<Self> {
        if !db.exists() {
            return None;
        }
        let copy_dir = scratch.join("inspect");
        let _ = std::fs::remove_dir_all(&copy_dir);
        std::fs::create_dir_all(&copy_dir).expect("inspect folder");
        let copy = copy_dir.join("buffer.sqlite");
        std::fs::copy(db, &copy).expect("copy the buffer database");
        let wal = PathBuf::from(format!("{}-wal", db.display()));
        let wal_bytes = std::fs::metadata(&wal).map_or(0, |m| m.len());
        if wal_bytes > 0 {
            std::fs::copy(&wal, copy_dir.join("buffer.sqlite-wal")).expect("copy the WAL");
        }
        let conn = rusqlite::Connection::open(&copy).expect("open the copy");
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .expect("read the schema");
        if tables == 0 {
            drop(conn);
            let _ = std::fs::remove_dir_all(&copy_dir);
            return None;
        }
        let integrity: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        let u = |v: i64| u64::try_from(v).expect("a non-negative sequence");
        let streams = conn
            .prepare("SELECT id, epoch, next_seq, sink_seq FROM streams ORDER BY id")
            .expect("prepare")
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .expect("query streams")
            .collect::<Result<Vec<_>, _>>()
            .expect("streams")
            .into_iter()
            .map(|(id, e, n, s)| (id, e, u(n), u(s)))
            .collect();
        let ranges = |sql: &str| -> Vec<(i64, u64, u64)> {
            conn.prepare(sql)
                .expect("prepare")
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .expect("query ranges")
                .collect::<Result<Vec<_>, _>>()
                .expect("ranges")
                .into_iter()
                .map(|(s, a, b)| (s, u(a), u(b)))
                .collect()
        };
        let rows = ranges("SELECT stream, first_seq, last_seq FROM rows ORDER BY first_seq");
        let gaps =
            ranges("SELECT stream, first_seq, first_seq + count - 1 FROM gaps ORDER BY first_seq");
        drop(conn);
        let _ = std::fs::remove_dir_all(&copy_dir);
        Some(Self {
            integrity,
            streams,
            rows,
            gaps,
            wal_bytes,
        })
    }

    /// As [`Db::inspect`], failing the test when there is no database.
    fn must(db: &Path, scratch: &Path) -> Self {
        Self::inspect(db, scratch)
            .unwrap_or_else(|| panic!("no buffer database in {}", db.display()))
    }

    /// The one stream's (epoch, committed, watermark), after checking the file: integrity,
    /// one stream, rows that never overlap, and no hole in `1..=committed` (every sequence
    /// acknowledged, in a row or in a declared gap).
    fn check(&self, when: &str) -> (i64, u64, u64) {
        assert_eq!(self.integrity, "ok", "{when}: integrity_check");
        assert_eq!(
            self.streams.len(),
            1,
            "{when}: one stream at synchronous=full: {:?}",
            self.streams
        );
        let (id, epoch, next_seq, sink_seq) = self.streams[0];
        let committed = next_seq - 1;
        assert!(
            sink_seq <= committed,
            "{when}: watermark {sink_seq} above committed {committed}"
        );
        let mut last_row = 0;
        for &(stream, first, last) in &self.rows {
            assert_eq!(stream, id, "{when}: a row of another stream");
            assert!(
                first > last_row && first <= last && last <= committed,
                "{when}: row {first}..={last} overlaps the one before (ending {last_row}) or \
                 lies above committed {committed}: a sequence stored twice"
            );
            last_row = last;
        }
        let mut covered: Vec<(u64, u64)> = vec![(1, sink_seq)];
        covered.extend(self.rows.iter().map(|&(_, a, b)| (a, b)));
        covered.extend(self.gaps.iter().map(|&(_, a, b)| (a, b)));
        covered.sort_unstable();
        let mut upto = 0;
        for (a, b) in covered {
            if a > b {
                continue;
            }
            assert!(
                a <= upto + 1 || upto >= committed,
                "{when}: sequences {}..={} are neither acknowledged ({sink_seq}), in a row nor \
                 in a declared gap (rows {:?}, gaps {:?})",
                upto + 1,
                a - 1,
                self.rows.first().zip(self.rows.last()),
                self.gaps
            );
            upto = upto.max(b);
        }
        assert!(
            upto >= committed,
            "{when}: sequences {}..={committed} are neither acknowledged, in a row nor in a gap",
            upto + 1
        );
        (epoch, committed, sink_seq)
    }
}

// ---------------------------------------------------------------------------------------------
// The rig: broker, simulator, sink, config
// ---------------------------------------------------------------------------------------------

/// What the test saw at one kill.
#[derive(Debug, Clone, Copy)]
struct Kill {
    epoch: i64,
    committed: u64,
    watermark: u64,
}

struct Rig {
    name: &'static str,
    sim: SimulatorHandle,
    dir: PathBuf,
    file: PathBuf,
    db: PathBuf,
    state_dir: PathBuf,
    id: String,
    probe: Probe,
    sink: Sink,
    starts: usize,
    gate: Option<Gate>,
    /// The gateway's metrics endpoint, when asked for.
    metrics: Option<SocketAddr>,
    // Dropped last: the probe and the gateways talk to it.
    _broker: Mosquitto,
}

impl Rig {
    /// A broker, the simulator, the sink subscribed, and a gateway config reaching the broker
    /// straight or (with `gated`) through a closed gate and with its metrics endpoint on a
    /// free port; `budget` replaces the `[buffer]` budget.
    async fn new(name: &'static str, gated: bool, budget: Option<&str>) -> Self {
        let broker = Mosquitto::start(name, "").await;
        let broker_addr = SocketAddr::from(([127, 0, 0, 1], broker.port));
        let gate = if gated {
            let g = Gate::start(broker_addr).await;
            g.close();
            Some(g)
        } else {
            None
        };
        let sim = sim::greensail(0.0).await;
        let id = format!("gw-fp-{:08x}", rand::random::<u32>());
        let prefix = format!("fivezero-test-{:016x}/v1", rand::random::<u64>());
        let dir = std::env::temp_dir().join(format!(
            "fivezero-daemon-failpoints-{}-{name}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let state_dir = dir.join("state");
        std::fs::create_dir_all(&state_dir).expect("state folder");
        let url = match &gate {
            Some(g) => format!("mqtt://127.0.0.1:{}", g.port()),
            None => broker.url().to_string(),
        };
        let mut text = config_text(&sim, &DEVICES, &state_dir, &url, &prefix, &id, PUBLISH);
        if let Some(b) = budget {
            let line = "max_bytes = \"64 MiB\"";
            assert!(text.contains(line), "the kit's config sets the budget");
            text = text.replace(line, &format!("max_bytes = \"{b}\""));
        }
        let metrics = gated.then(|| SocketAddr::from(([127, 0, 0, 1], kit::free_port())));
        if let Some(addr) = metrics {
            let line = "listen = \"\"";
            assert!(
                text.contains(line),
                "the kit's config has no metrics endpoint"
            );
            text = text.replace(line, &format!("listen = \"{addr}\""));
        }
        let file = dir.join("gateway.toml");
        std::fs::write(&file, text).expect("write the config");
        let db = state_dir.join(fivezero_gateway::buffer::FILE_NAME);
        let topics = Topics::new(&prefix, SITE, &id).expect("topics");
        let sink = Sink::new(&topics, &id);
        let probe = Probe::start(&broker.url(), &sink.filters()).await;
        Self {
            name,
            sim,
            dir,
            file,
            db,
            state_dir,
            id,
            probe,
            sink,
            starts: 0,
            gate,
            metrics,
            _broker: broker,
        }
    }

    fn start(&mut self, armed: Option<&str>) -> Gateway {
        self.starts += 1;
        let log = self.dir.join(format!("gateway-{}.log", self.starts));
        Gateway::start(&self.file, log, armed)
    }

    /// Takes what the sink receives for up to `wait`, acknowledging.
    async fn pump(&mut self, wait: Duration) {
        self.sink.pump(&mut self.probe, wait).await;
    }

    /// Pumps until `done` holds, failing after [`LIMIT`]; `gw` must keep running meanwhile.
    async fn pump_until(
        &mut self,
        gw: &mut Gateway,
        what: &str,
        mut done: impl FnMut(&Sink) -> bool,
    ) {
        let deadline = Instant::now() + LIMIT;
        while !done(&self.sink) {
            gw.assert_running(&format!("while waiting for {what}"));
            assert!(
                Instant::now() < deadline,
                "{}: timed out after {LIMIT:?} waiting for {what}: {} sequences, highest {}, \
                 covered to {}; log {}:\n{}",
                self.name,
                self.sink.readings.len(),
                self.sink.max_seq(),
                self.sink.covered(),
                gw.log.display(),
                gw.tail()
            );
            self.pump(Duration::from_millis(50)).await;
        }
    }

    /// Pumps until the gateway writes `FAILPOINT <point>`, then kills it and checks its files.
    async fn kill_at(&mut self, gw: &mut Gateway, point: &str) -> Kill {
        let deadline = Instant::now() + LIMIT;
        while !gw.halted_at(point) {
            gw.assert_running(&format!("before reaching {point}"));
            assert!(
                Instant::now() < deadline,
                "{}: the gateway did not reach {point} within {LIMIT:?}; log {}:\n{}",
                self.name,
                gw.log.display(),
                gw.tail()
            );
            self.pump(Duration::from_millis(20)).await;
        }
        gw.kill();
        self.after_kill(&format!("kill -9 at {point}"))
            .expect("a database after the kill")
    }

    /// Checks the killed gateway's files; `None` when it had not made them yet.
    fn after_kill(&self, when: &str) -> Option<Kill> {
        let (epoch, committed, watermark) = Db::inspect(&self.db, &self.dir)?.check(when);
        Some(Kill {
            epoch,
            committed,
            watermark,
        })
    }

    /// Starts the gateway without failpoints, lets it run until every device has readings
    /// polled after the start and the sink holds everything committed at the last kill,
    /// stops it with SIGTERM, and checks what the sink holds against what it committed:
    /// nothing missing, nothing spurious, one epoch, no gap unless `gaps`, and every
    /// duplicate within the bounds of `kills`. Returns the committed count.
    async fn settle(&mut self, kills: &[Kill], gaps: bool) -> u64 {
        let started_ms = now_ms();
        let gw = self.start(None);
        self.settle_started(gw, started_ms, kills, gaps).await
    }

    /// As [`Rig::settle`], with the gateway already started (at `started_ms`).
    async fn settle_started(
        &mut self,
        mut gw: Gateway,
        started_ms: i64,
        kills: &[Kill],
        gaps: bool,
    ) -> u64 {
        let last = kills.last().copied();
        let before = last.map_or(0, |k| k.committed);
        self.pump_until(
            &mut gw,
            "readings of every device polled after the restart and everything committed \
             before the kill",
            |s| DEVICES.iter().all(|d| s.has_after(d, started_ms)) && s.covered() >= before,
        )
        .await;
        let status = gw.terminate(LIMIT).await;
        assert!(
            status.success(),
            "{}: SIGTERM: exit status {status}; log {}:\n{}",
            self.name,
            gw.log.display(),
            gw.tail()
        );
        let (epoch, committed, _) = Db::must(&self.db, &self.dir).check("after SIGTERM");
        if let Some(last) = last {
            assert_eq!(epoch, last.epoch, "the epoch changed across the restart");
        }
        assert!(committed >= before, "committed went back");
        let deadline = Instant::now() + LIMIT;
        while self.sink.covered() < committed {
            assert!(
                Instant::now() < deadline,
                "{}: the sink covers {} of {committed} committed sequences after {LIMIT:?}",
                self.name,
                self.sink.covered()
            );
            self.pump(Duration::from_millis(50)).await;
        }
        // Anything still on its way.
        self.pump(Duration::from_millis(200)).await;

        let sink = &self.sink;
        assert_eq!(sink.epochs.len(), 1, "one epoch: {:?}", sink.epochs);
        assert_eq!(
            sink.max_seq(),
            committed,
            "the sink holds sequences the buffer never committed"
        );
        let delivered = sink.readings.len() as u64;
        let gap_seqs: Vec<(u64, u64)> = sink
            .gaps
            .iter()
            .map(|(g, _)| (g.first_seq, g.first_seq + u64::from(g.count) - 1))
            .collect();
        let declared = sink.gap_total();
        let also_received = sink
            .readings
            .keys()
            .filter(|&&s| gap_seqs.iter().any(|&(a, b)| (a..=b).contains(&s)))
            .count() as u64;
        assert_eq!(
            delivered + declared - also_received,
            committed,
            "received distinct ({delivered}) + declared gaps ({declared}, {also_received} of \
             them also received) ≠ committed ({committed})"
        );
        assert_eq!(
            sink.covered(),
            committed,
            "a hole below the committed sequences"
        );
        if !gaps {
            assert_eq!(
                declared, 0,
                "gaps declared without eviction: {:?}",
                sink.gaps
            );
        }
        let highest = kills.iter().map(|k| k.committed).max().unwrap_or(0);
        let lowest_watermark = kills.iter().map(|k| k.watermark).min().unwrap_or(0);
        for &seq in &sink.duplicate_seqs {
            assert!(
                seq > lowest_watermark && seq <= highest,
                "seq {seq} sent twice, outside what was committed ({highest}) and not \
                 confirmed ({lowest_watermark}) at a kill"
            );
        }
        println!(
            "{}: killed at committed {} / watermark {}; then committed {committed}: {delivered} \
             received distinct, {declared} in gaps ({also_received} also received), {} \
             duplicates, {} kills",
            self.name,
            before,
            last.map_or(0, |k| k.watermark),
            sink.duplicates,
            kills.len()
        );
        committed
    }

    async fn finish(self) {
        let Self {
            sim, dir, probe, ..
        } = self;
        drop(probe);
        sim.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}

// ---------------------------------------------------------------------------------------------
// K1–K5: one point, a seeded hit
// ---------------------------------------------------------------------------------------------

/// Runs the gateway with `point` armed to halt after `skip` hits, kills it there, checks,
/// restarts and settles; returns the kill and the highest sequence the sink had received
/// before the restart.
async fn kill_once(rig: &mut Rig, point: &str, skip: u32) -> (Kill, u64) {
    let spec = format!("{point}={skip}*off->return");
    println!("{}: {} = {spec}", rig.name, failpoints::ENV);
    let mut gw = rig.start(Some(&spec));
    let kill = rig.kill_at(&mut gw, point).await;
    // What was in flight at the kill.
    rig.pump(Duration::from_millis(200)).await;
    let before = rig.sink.max_seq();
    let committed = rig.settle(&[kill], false).await;
    assert!(committed > kill.committed, "no progress after the restart");
    (kill, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k1_kill_after_a_modbus_reply_before_the_buffer_insert_loses_nothing_committed() {
    if !runnable() {
        return;
    }
    let skip = rng("k1").random_range(2..20);
    let mut rig = Rig::new("k1", false, None).await;
    kill_once(&mut rig, failpoints::K1_AFTER_POLL, skip).await;
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k2_kill_inside_the_append_transaction_rolls_back_with_its_sequence_numbers() {
    if !runnable() {
        return;
    }
    let skip = rng("k2").random_range(2..20);
    let mut rig = Rig::new("k2", false, None).await;
    let (kill, before) = kill_once(&mut rig, failpoints::K2_BEFORE_COMMIT, skip).await;
    // The rolled-back rows took no sequence: the file's next_seq is what was committed, the
    // restart continues from it, and `settle` found no hole.
    assert!(
        before <= kill.committed,
        "a sequence above the committed ones was published"
    );
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k3_kill_after_commit_before_publish_republishes_the_committed_row_after_restart() {
    if !runnable() {
        return;
    }
    let skip = rng("k3").random_range(2..20);
    let mut rig = Rig::new("k3", false, None).await;
    let (kill, before) = kill_once(&mut rig, failpoints::K3_AFTER_COMMIT, skip).await;
    assert!(
        before < kill.committed,
        "the row committed at the kill (up to {}) was published before it (the sink had {before})",
        kill.committed
    );
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k4_kill_after_publish_before_puback_republishes_and_the_sink_dedupes() {
    if !runnable() {
        return;
    }
    let skip = rng("k4").random_range(2..20);
    let mut rig = Rig::new("k4", false, None).await;
    kill_once(&mut rig, failpoints::K4_AFTER_PUBLISH, skip).await;
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k5_kill_after_puback_before_it_is_recorded_republishes_only_unconfirmed_sequences() {
    if !runnable() {
        return;
    }
    let skip = rng("k5").random_range(1..15);
    let mut rig = Rig::new("k5", false, None).await;
    kill_once(&mut rig, failpoints::K5_AFTER_PUBACK, skip).await;
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k5_kill_before_the_sink_watermark_commits_keeps_the_older_one_and_republishes_above_it() {
    if !runnable() {
        return;
    }
    let skip = rng("k5w").random_range(1..10);
    let mut rig = Rig::new("k5w", false, None).await;
    let spec = format!(
        "{}={skip}*off->return",
        failpoints::K5_BEFORE_WATERMARK_COMMIT
    );
    let mut gw = rig.start(Some(&spec));
    let kill = rig
        .kill_at(&mut gw, failpoints::K5_BEFORE_WATERMARK_COMMIT)
        .await;
    assert!(
        kill.watermark < rig.sink.acked,
        "the watermark being stored at the kill ({}) is in the file ({})",
        rig.sink.acked,
        kill.watermark
    );
    let committed = rig.settle(&[kill], false).await;
    assert!(committed > kill.committed, "no progress after the restart");
    rig.finish().await;
}

// ---------------------------------------------------------------------------------------------
// K6: eviction
// ---------------------------------------------------------------------------------------------

/// Fills the buffer of `rig` (as the gateway would find it) with text readings of device
/// `prefill` until its bytes are within `short_by` of [`BUDGET`].
async fn prefill(rig: &Rig, short_by: u64) -> u64 {
    let options = BufferOptions::new(&rig.id, SITE);
    let buffer = Buffer::open(&rig.state_dir, &options).expect("open the buffer to fill it");
    let device: Arc<str> = Arc::from("prefill");
    let text: String = "x".repeat(500);
    let mut n = 0u64;
    loop {
        let s = buffer.stats();
        if s.charged_bytes.max(s.used_bytes) + short_by >= BUDGET {
            break;
        }
        let ts = now_ms();
        // Big steps while far from the target, single rows of about 2 KB near it.
        let step = if s.charged_bytes.max(s.used_bytes) + short_by + 128 * 1024 < BUDGET {
            16
        } else {
            1
        };
        let cycles: Vec<DeviceReadings> = (0..step)
            .map(|i| DeviceReadings {
                device: Arc::clone(&device),
                ts_ms: ts,
                cycle: n + i,
                readings: (0..4)
                    .map(|k| Reading {
                        ts,
                        device: device.to_string(),
                        metric: format!("label_{k}"),
                        value: Some(Value::Text(format!("{n}-{i}-{k}-{text}"))),
                        quality: Quality::Good,
                        reason: None,
                    })
                    .collect(),
            })
            .collect();
        for r in buffer.append_cycles(&cycles).await {
            r.expect("prefill append");
        }
        n += step;
    }
    let committed = buffer.stats().committed_seq;
    buffer.close().await;
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k6_kill_inside_eviction_leaves_no_gap_without_its_gap_record() {
    if !runnable() {
        return;
    }
    let short_by = rng("k6").random_range(0..12_000);
    let mut rig = Rig::new("k6", true, Some("1 MiB")).await;
    let filled = prefill(&rig, short_by).await;
    println!("k6: {filled} sequences prefilled, {short_by} bytes short of the budget");

    // The broker is out of reach: nothing is published before the kill.
    let spec = format!("{}=return", failpoints::K6_EVICT_BEFORE_GAP);
    let mut gw = rig.start(Some(&spec));
    let kill = rig.kill_at(&mut gw, failpoints::K6_EVICT_BEFORE_GAP).await;
    assert!(
        kill.committed >= filled,
        "the prefilled sequences are committed"
    );
    assert!(
        rig.sink.readings.is_empty() && rig.sink.gaps.is_empty(),
        "something was published through the closed gate"
    );
    // The kill rolled the eviction back: every row is still there, no gap.
    let db = Db::must(&rig.db, &rig.dir);
    assert!(
        db.gaps.is_empty(),
        "a gap survived the rollback: {:?}",
        db.gaps
    );
    assert_eq!(
        db.rows.first().map(|r| r.1),
        Some(1),
        "the oldest row is still there"
    );

    // Restarted without failpoints, the broker still out of reach, it evicts (and this time
    // commits the eviction with its gap) before anything can be published.
    let started_ms = now_ms();
    let mut gw = rig.start(None);
    let metrics = rig.metrics.expect("a metrics endpoint");
    let deadline = Instant::now() + LIMIT;
    let evicted = loop {
        gw.assert_running("before evicting");
        if let Some(m) = scrape::scrape(metrics).await {
            let n = m.count(
                "fivezero_readings_dropped_total",
                &[("intentional", "true"), ("reason", "buffer_full")],
            );
            if n > 0 {
                break n;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no eviction within {LIMIT:?} of the restart; log {}:\n{}",
            gw.log.display(),
            gw.tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    rig.gate.as_ref().expect("a gate").open();
    let committed = rig.settle_started(gw, started_ms, &[kill], true).await;
    let sink = &rig.sink;
    assert!(
        sink.gaps
            .iter()
            .all(|(g, _)| g.reason == GapReason::BufferFull),
        "gaps: {:?}",
        sink.gaps
    );
    let first_gap = sink.gaps.iter().map(|(g, _)| g.first_seq).min();
    assert_eq!(first_gap, Some(1), "the oldest sequences are evicted first");
    assert!(
        sink.gap_total() >= evicted,
        "the eviction before the gate opened was declared"
    );
    let leaked: Vec<u64> = (1..=evicted)
        .filter(|s| sink.readings.contains_key(s))
        .collect();
    assert!(
        leaked.is_empty(),
        "sequences evicted before anything could be published arrived as readings: {leaked:?}"
    );
    assert!(committed > kill.committed, "no progress after the restart");
    println!("k6: {evicted} sequences evicted after the restart, before the gate opened");
    rig.finish().await;
}

// ---------------------------------------------------------------------------------------------
// K7: the checkpoint
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k7_kill_during_the_checkpoint_after_the_drain_loses_nothing_and_the_wal_is_replayed() {
    if !runnable() {
        return;
    }
    let run_for = Duration::from_millis(rng("k7").random_range(500..3_000));
    let mut rig = Rig::new("k7", false, None).await;
    let spec = format!("{}=return", failpoints::K7_CHECKPOINT);
    let mut gw = rig.start(Some(&spec));
    let until = Instant::now() + run_for;
    rig.pump_until(&mut gw, "the first readings", |s| !s.readings.is_empty())
        .await;
    while Instant::now() < until {
        rig.pump(Duration::from_millis(50)).await;
    }
    // A clean stop: drain, mark the clean stop, checkpoint — where it halts.
    gw.sigterm();
    let kill = rig.kill_at(&mut gw, failpoints::K7_CHECKPOINT).await;
    let db = Db::must(&rig.db, &rig.dir);
    assert!(
        db.wal_bytes > 0,
        "no WAL left at the kill: the checkpoint had run"
    );
    let committed = rig.settle(&[kill], false).await;
    assert!(committed > kill.committed, "no progress after the restart");
    rig.finish().await;
}

// ---------------------------------------------------------------------------------------------
// K8: a crash loop at start
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8_a_crash_loop_at_start_comes_up_makes_progress_and_loses_nothing() {
    // No failpoint here: it runs on any build.
    if !Mosquitto::available() {
        return;
    }
    let mut rng = rng("k8");
    let mut rig = Rig::new("k8", false, None).await;
    let mut kills = Vec::new();
    let mut delays = Vec::new();
    for round in 0..10 {
        let delay = Duration::from_millis(rng.random_range(0..2_000));
        delays.push(delay.as_millis());
        let mut gw = rig.start(None);
        let until = Instant::now() + delay;
        while Instant::now() < until {
            rig.pump(
                until
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(50)),
            )
            .await;
        }
        gw.kill();
        let Some(kill) =
            rig.after_kill(&format!("crash loop round {round}, {delay:?} after start"))
        else {
            continue;
        };
        if let Some(prev) = kills.last() {
            let prev: &Kill = prev;
            assert_eq!(kill.epoch, prev.epoch, "round {round}: a new epoch");
            assert!(
                kill.committed >= prev.committed,
                "round {round}: committed went back"
            );
        }
        kills.push(kill);
    }
    println!("k8: killed at {delays:?} ms after each start");
    let committed = rig.settle(&kills, false).await;
    assert!(
        committed > kills.last().map_or(0, |k| k.committed),
        "no progress after the crash loop"
    );
    rig.finish().await;
}
