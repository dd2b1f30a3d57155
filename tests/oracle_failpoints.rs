//! Kill -9 at each of the gateway's failpoints (reliability §B.8, K1–K7), N times each, and
//! the crash storm (K9), each counted by the oracle of `pipeline/` with the pass criteria of
//! `oracle.rs`: nothing missing, spurious, corrupted, stored twice or conflicting; one epoch;
//! a fresh reading of every device within 60 s of the last restart; every SQLite file sound.
//!
//! - **One run per failpoint, N kills in it.** N is `FIVEZERO_FAILPOINT_KILLS` (default 2;
//!   the reliability plan's figure is 20). The gateway runs as a child process with one point
//!   armed (`FIVEZERO_FAILPOINTS="<point>=<n>*off->return"`); each kill draws its own `n`, the
//!   hits let through before the point halts, which is the kill's random pre-delay, from a
//!   generator seeded per point (the seed is printed, `FIVEZERO_FAILPOINT_SEED` sets it; kill
//!   *k* of a point gets the same `n` whatever N and whichever points run). When the child
//!   writes `FAILPOINT <point>` to stderr (it then blocks, holding whatever it holds) it gets
//!   SIGKILL, and its buffer is checked as the kill left it: `PRAGMA integrity_check` is `ok`;
//!   one stream, of the same epoch at every kill; the sequences above the sink's watermark are
//!   each in exactly one row or declared gap, up to the committed sequence (contiguity); and no
//!   sequence is reused: the committed sequence and the watermark never go back, and every row
//!   at or below the previous kill's committed sequence is the one that kill left, unchanged.
//!   The gateway then restarts armed with the next `n`. After the N-th kill it restarts
//!   without failpoints, runs a few seconds, and the run is counted; one summary line per
//!   point gives the kills, the counts and the hits let through at each kill.
//! - **How each point is reached, at every kill.** K1–K5 by the pipeline running. K6 (inside
//!   an eviction) with a 96 KiB byte budget and the broker's link down: readings reach the sink
//!   first, then the link goes down and stays down over every kill and restart (each restart
//!   starts over a full buffer, so it evicts again) until the last restart. K7 (the WAL
//!   checkpoint) at a clean stop: fresh readings reach the sink, SIGTERM, then SIGKILL at the
//!   marker. The points run one after the other in one test
//!   (`FIVEZERO_FAILPOINT_ONLY=<point>` runs just one).
//! - **The crash storm (K9)**, only with `FIVEZERO_ORACLE_LONG=1`: the gateway child is
//!   killed with SIGKILL every U(5, 60) s for `FIVEZERO_ORACLE_STORM_MINUTES` (default 60)
//!   minutes, restarted at once each time, then counted.
//!
//! The test build has the points (the root package's dev-dependency enables the gateway's
//! `failpoints` feature); a build without them prints why it skips.

mod pipeline;

use std::collections::BTreeMap;
use std::hash::{Hash as _, Hasher as _};
use std::path::Path;
use std::time::{Duration, Instant};

use fivezero_gateway::failpoints;
use pipeline::{LIMIT, Pipeline, Place, Setup, now_ms};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// The devices polled: a meter, an inverter and the boiler's PLC (about 60 readings a cycle).
const DEVICES: [&str; 3] = ["grid-meter", "pv-roof-a", "boiler"];
/// Reconnect within a few seconds of the link's return; replay what the sink has not
/// confirmed 2 s after its watermark stalls.
const PUBLISH: &str = "[publish]\nbackoff_min = \"200ms\"\nbackoff_max = \"5s\"\nstall_min = \"2s\"\nstall_max = \"8s\"\n";
/// The most the first fresh reading may take after the restart.
const LIVENESS: Duration = Duration::from_secs(60);
/// How long the restarted gateway runs before the run is counted.
const RUN_AFTER: Duration = Duration::from_secs(3);
/// The byte budget of the K6 run (below the config's 1 MiB floor, set after loading).
const BUDGET: u64 = 96 * 1024;
/// The variable that fixes the seed of the hit counts.
const SEED_ENV: &str = "FIVEZERO_FAILPOINT_SEED";
/// The variable that runs one point only.
const ONLY_ENV: &str = "FIVEZERO_FAILPOINT_ONLY";
/// The variable that sets the kills per point.
const KILLS_ENV: &str = "FIVEZERO_FAILPOINT_KILLS";
/// Kills per point without [`KILLS_ENV`]: the second kill of each point restarts over a
/// buffer a kill left, for about 10 s more than one kill each (measured: 67 s against 59 s).
const DEFAULT_KILLS: usize = 2;

/// How a point is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// By the pipeline running normally.
    Running,
    /// With the byte budget and the broker's link down, so the buffer evicts.
    Eviction,
    /// At a clean stop (SIGTERM).
    CleanStop,
}

/// Each point, how it is reached, and the hits let through before it halts: `0..max`.
const POINTS: [(&str, Reach, u32); 8] = [
    (failpoints::K1_AFTER_POLL, Reach::Running, 20),
    (failpoints::K2_BEFORE_COMMIT, Reach::Running, 20),
    (failpoints::K3_AFTER_COMMIT, Reach::Running, 20),
    (failpoints::K4_AFTER_PUBLISH, Reach::Running, 20),
    (failpoints::K5_AFTER_PUBACK, Reach::Running, 20),
    (failpoints::K5_BEFORE_WATERMARK_COMMIT, Reach::Running, 5),
    // Hit once per eviction step, and a transaction takes several steps (it re-measures the
    // file after each): 3 or 4 in the first after a restart over a full buffer, so up to 7
    // hits let through take some kills past it, into a later eviction that extends the gap
    // an earlier one committed.
    (failpoints::K6_EVICT_BEFORE_GAP, Reach::Eviction, 8),
    // The clean stop checkpoints once: the first hit.
    (failpoints::K7_CHECKPOINT, Reach::CleanStop, 1),
];

/// The seed: `FIVEZERO_FAILPOINT_SEED`, or a random one.
fn seed() -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{SEED_ENV}={s:?}: {e}")),
        Err(_) => rand::random(),
    }
}

/// The kills per point: `FIVEZERO_FAILPOINT_KILLS` (at least 1), or [`DEFAULT_KILLS`].
fn kills() -> usize {
    match std::env::var(KILLS_ENV) {
        Ok(s) if !s.trim().is_empty() => {
            let n: usize = s
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{KILLS_ENV}={s:?}: {e}"));
            assert!(n >= 1, "{KILLS_ENV}={s:?}: at least one kill per point");
            n
        }
        _ => DEFAULT_KILLS,
    }
}

/// The hits let through before each of `kills` kills of the point at `index`, each in
/// `0..max`, from a generator of the point's own: kill *k* gets the same count whatever
/// `kills` is and whichever points run.
fn hit_counts(seed: u64, index: usize, max: u32, kills: usize) -> Vec<u32> {
    let salt = (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = StdRng::seed_from_u64(seed ^ salt);
    (0..kills).map(|_| rng.random_range(0..max)).collect()
}

/// The gateway's buffer as a kill left it.
#[derive(Debug)]
struct BufferView {
    /// Streams (epochs) in the file.
    streams: u64,
    /// The current stream's epoch.
    epoch: i64,
    /// Its highest committed sequence (`next_seq - 1`).
    committed: u64,
    /// The sink's watermark it stored.
    sink_seq: u64,
    /// Its rows: `(first_seq, last_seq)` → hash of kind and payload.
    rows: BTreeMap<(u64, u64), u64>,
    /// Its declared gaps: `(first_seq, last_seq)`.
    gaps: Vec<(u64, u64)>,
}

/// A column that holds a sequence number or a count (never negative).
fn seq_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_else(|_| panic!("a negative sequence {v} in the buffer"))
}

impl BufferView {
    /// Reads the buffer at `path`, leaving it as found (closing does not checkpoint the WAL,
    /// so the restarted gateway still recovers its own); `None` when it does not exist.
    fn read(path: &Path) -> Option<Self> {
        if !path.exists() {
            return None;
        }
        let c = pipeline::open_to_inspect(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        Some(Self::query(&c).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
    }

    fn query(c: &rusqlite::Connection) -> rusqlite::Result<Self> {
        let streams: i64 = c.query_row("SELECT COUNT(*) FROM streams", [], |r| r.get(0))?;
        let (stream, epoch, next_seq, sink_seq): (i64, i64, i64, i64) = c.query_row(
            "SELECT id, epoch, next_seq, sink_seq FROM streams ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        let mut rows = BTreeMap::new();
        let mut stmt =
            c.prepare("SELECT first_seq, last_seq, kind, payload FROM rows WHERE stream = ?1")?;
        let mut q = stmt.query([stream])?;
        while let Some(r) = q.next()? {
            let range = (seq_of(r.get(0)?), seq_of(r.get(1)?));
            let mut h = std::hash::DefaultHasher::new();
            r.get::<_, i64>(2)?.hash(&mut h);
            r.get::<_, Vec<u8>>(3)?.hash(&mut h);
            let earlier = rows.insert(range, h.finish());
            assert!(earlier.is_none(), "two rows hold {range:?}");
        }
        let mut gaps = Vec::new();
        let mut stmt = c.prepare("SELECT first_seq, count FROM gaps WHERE stream = ?1")?;
        let mut q = stmt.query([stream])?;
        while let Some(r) = q.next()? {
            let (first, count) = (seq_of(r.get(0)?), seq_of(r.get(1)?));
            assert!(count > 0, "an empty gap at {first}");
            gaps.push((first, first + count - 1));
        }
        Ok(Self {
            streams: seq_of(streams),
            epoch,
            committed: seq_of(next_seq) - 1,
            sink_seq: seq_of(sink_seq),
            rows,
            gaps,
        })
    }

    /// Asserts one epoch and contiguous sequences: no two rows share a sequence, none is
    /// above the committed one, and every sequence above the sink's watermark up to the
    /// committed one is in exactly one row or declared gap (with `retain_until = "sink_ack"`,
    /// the default, only the watermark deletes rows; eviction declares what it deletes).
    fn assert_contiguous(&self, what: &str) {
        assert_eq!(
            self.streams, 1,
            "{what}: one stream (one epoch) in the buffer"
        );
        assert!(
            self.sink_seq <= self.committed,
            "{what}: watermark {} above the committed sequence {}",
            self.sink_seq,
            self.committed
        );
        let mut below = 0;
        for &(first, last) in self.rows.keys() {
            assert!(
                first <= last && first > below && last <= self.committed,
                "{what}: row {first}..={last} after sequence {below}, committed {}",
                self.committed
            );
            below = last;
        }
        let mut spans: Vec<(u64, u64, &str)> = self
            .rows
            .keys()
            .map(|&(a, b)| (a, b, "row"))
            .chain(self.gaps.iter().map(|&(a, b)| (a, b, "gap")))
            .filter(|&(_, b, _)| b > self.sink_seq)
            .collect();
        spans.sort_unstable();
        let mut next = self.sink_seq + 1;
        for (first, last, kind) in spans {
            let from = first.max(self.sink_seq + 1);
            assert!(
                from == next,
                "{what}: {kind} {first}..={last} where sequence {next} comes next (watermark \
                 {}, committed {}): a {}",
                self.sink_seq,
                self.committed,
                if from > next {
                    "hole"
                } else {
                    "sequence held twice"
                }
            );
            next = last + 1;
        }
        assert_eq!(
            next,
            self.committed + 1,
            "{what}: the rows and gaps above watermark {} end at {}, the committed sequence is \
             {}",
            self.sink_seq,
            next - 1,
            self.committed
        );
    }

    /// Asserts that nothing went back since `before` (the previous kill): the same epoch, the
    /// committed sequence and the watermark not lower, and every row at or below the
    /// committed sequence then the very row it was (a new row there would reuse a sequence).
    fn assert_follows(&self, before: &Self, what: &str) {
        assert_eq!(self.epoch, before.epoch, "{what}: the epoch changed");
        assert!(
            self.committed >= before.committed && self.sink_seq >= before.sink_seq,
            "{what}: committed {} / watermark {} after {} / {} at the previous kill",
            self.committed,
            self.sink_seq,
            before.committed,
            before.sink_seq
        );
        for (range, hash) in self.rows.range(..=(before.committed, u64::MAX)) {
            assert!(
                before.rows.get(range) == Some(hash),
                "{what}: row {range:?} was not in the buffer as the previous kill left it \
                 (committed {}): a sequence reused",
                before.committed
            );
        }
    }
}

/// Waits until the gateway child, armed at `point`, halts there, reaching it as `reach`
/// says (`first`: the first kill of the run); returns the marker line and how long it took.
async fn reach(p: &mut Pipeline, point: &str, reach: Reach, first: bool) -> (String, Duration) {
    let name = p.name.clone();
    let marker = format!("{} {point}", failpoints::MARKER);
    let armed = Instant::now();
    match reach {
        Reach::Running => {}
        Reach::Eviction if first => {
            // Readings reach the sink first, then the link goes down until the buffer
            // reaches its budget and evicts; it stays down over the next kills, so each
            // restart starts over a full buffer.
            p.fresh_after(now_ms()).await;
            p.gate.close();
        }
        Reach::Eviction => {}
        Reach::CleanStop => {
            p.fresh_after(now_ms()).await;
            // The point is reached by the stop, not before it.
            let early = p.gateway_stderr_line(&marker, Duration::ZERO).await;
            assert!(early.is_err(), "{name}: halted before the stop: {early:?}");
            assert!(p.gateway_running(), "{name}: the gateway ended on its own");
            p.signal_term_gateway();
        }
    }
    let line = p
        .gateway_stderr_line(&marker, LIMIT)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}; see {}", p.dir().display()));
    (line, armed.elapsed())
}

/// One oracle run with `point` armed again at every start: SIGKILL when it halts, after
/// `hits[k]` passing hits at kill `k`; then a restart without failpoints and the count.
async fn kill_at(point: &str, reach_by: Reach, hits: &[u32], seed: u64) {
    let name = format!("failpoint-{point}");
    let started = Instant::now();
    let arm = |n: u32| {
        vec![(
            failpoints::ENV.to_owned(),
            format!("{point}={n}*off->return"),
        )]
    };
    let kills = hits.len();
    println!(
        "{name}: {kills} kills, {}=\"{point}=<n>*off->return\", n = {hits:?} (seed {seed})",
        failpoints::ENV
    );
    let mut setup = Setup::new(&DEVICES, PUBLISH);
    setup.gateway = Place::Child;
    setup.gateway_env = arm(hits[0]);
    if reach_by == Reach::Eviction {
        setup.budget = Some(BUDGET);
    }
    let mut p = Pipeline::start(&name, setup).await;
    let buffer = p
        .config
        .gateway
        .state_dir
        .join(fivezero_gateway::buffer::FILE_NAME);
    let mut before: Option<BufferView> = None;
    for (k, &n) in hits.iter().enumerate() {
        if k > 0 {
            p.set_gateway_env(arm(n));
            p.start_gateway();
        }
        let what = format!("{name}: kill {}/{kills}", k + 1);
        let (line, reached) = reach(&mut p, point, reach_by, k == 0).await;
        let (integrity, committed) = p.kill_gateway();
        assert_eq!(integrity, "ok", "{what}: integrity after the kill");
        let held = match BufferView::read(&buffer) {
            Some(view) => {
                view.assert_contiguous(&what);
                if let Some(b) = &before {
                    view.assert_follows(b, &what);
                }
                let held = format!(
                    "watermark {}, {} rows and {} gaps in the buffer",
                    view.sink_seq,
                    view.rows.len(),
                    view.gaps.len()
                );
                before = Some(view);
                held
            }
            // Only the first kill may come before the gateway created its buffer.
            None => {
                assert!(before.is_none(), "{what}: the buffer is gone");
                "no buffer yet".to_owned()
            }
        };
        println!(
            "{what}: {line:?} after {reached:?} ({n} hits let through), committed seq \
             {committed}, {held}"
        );
    }

    // The gateway restarts without failpoints (the link still down in the K6 run for a
    // moment, so it starts over a full buffer).
    p.set_gateway_env(Vec::new());
    p.start_gateway();
    let restarted = Instant::now();
    if reach_by == Reach::Eviction {
        tokio::time::sleep(Duration::from_secs(1)).await;
        p.gate.open();
    }
    let healed = now_ms();
    let live = p.fresh_after(healed).await;
    assert!(live <= LIVENESS, "{name}: liveness {live:?}");
    if let Some(rest) = RUN_AFTER.checked_sub(restarted.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    assert!(
        p.gateway_running(),
        "{name}: the restarted gateway ended on its own"
    );
    let report = p.finish().await;
    report.assert_pass(&name);
    println!(
        "summary {point}: kills {kills}, committed {}, delivered {}, gaps {}, transport \
         duplicates {}, liveness {live:?}, hits let through per kill {hits:?} ({:.1} s)",
        report.committed,
        report.delivered,
        report.declared_gaps,
        report.transport_duplicates,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_at_each_failpoint_loses_nothing_and_the_restarted_gateway_makes_progress() {
    if !failpoints::compiled_in() {
        println!(
            "skipped: this build of fivezero-gateway has no failpoints (cargo feature \
             `failpoints`)"
        );
        return;
    }
    let seed = seed();
    let kills = kills();
    println!(
        "failpoints: seed {seed} ({SEED_ENV} to repeat), {kills} kills per point ({KILLS_ENV})"
    );
    let only = std::env::var(ONLY_ENV).ok().filter(|o| !o.is_empty());
    if let Some(o) = &only {
        assert!(
            POINTS.iter().any(|(p, _, _)| p == o),
            "{ONLY_ENV}={o:?}: not a failpoint; the points are {:?}",
            failpoints::ALL
        );
    }
    assert_eq!(
        POINTS.map(|(p, _, _)| p),
        failpoints::ALL,
        "every failpoint is covered"
    );
    for (index, (point, reach, max)) in POINTS.into_iter().enumerate() {
        if only.as_deref().is_some_and(|o| o != point) {
            continue;
        }
        let hits = hit_counts(seed, index, max, kills);
        kill_at(point, reach, &hits, seed).await;
    }
}

/// The variable that enables the long scenarios.
const LONG_ENV: &str = "FIVEZERO_ORACLE_LONG";
/// The storm's length in minutes.
const STORM_ENV: &str = "FIVEZERO_ORACLE_STORM_MINUTES";
/// The delay between kills: U(5, 60) s.
const STORM_DELAY_MS: std::ops::RangeInclusive<u64> = 5_000..=60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_storm_of_kills_every_5_to_60_s_loses_nothing() {
    if std::env::var(LONG_ENV).as_deref() != Ok("1") {
        println!("skipped: the crash storm (K9) runs with {LONG_ENV}=1");
        return;
    }
    let minutes: f64 = std::env::var(STORM_ENV).map_or(60.0, |m| {
        m.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{STORM_ENV}={m:?}: {e}"))
    });
    assert!(
        minutes.is_finite() && minutes > 0.0,
        "{STORM_ENV}: {minutes} minutes"
    );
    let seed = seed();
    println!("crash-storm: {minutes} minutes, seed {seed} ({SEED_ENV} to repeat)");
    let mut rng = StdRng::seed_from_u64(seed);
    let name = "crash-storm";
    let mut setup = Setup::new(&DEVICES, PUBLISH);
    setup.gateway = Place::Child;
    let mut p = Pipeline::start(name, setup).await;
    let length = Duration::from_secs_f64(minutes * 60.0);
    let started = Instant::now();
    let mut kills = Vec::new();
    loop {
        let delay = Duration::from_millis(rng.random_range(STORM_DELAY_MS));
        if started.elapsed() + delay > length {
            break;
        }
        tokio::time::sleep(delay).await;
        assert!(
            p.gateway_running(),
            "{name}: the gateway ended on its own before kill {}",
            kills.len() + 1
        );
        let (integrity, committed) = p.kill_gateway();
        assert_eq!(
            integrity,
            "ok",
            "{name}: integrity after kill {}",
            kills.len() + 1
        );
        kills.push((delay.as_secs(), committed));
        p.start_gateway();
    }
    if let Some(rest) = length.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let healed = now_ms();
    let live = p.fresh_after(healed).await;
    assert!(live <= LIVENESS, "{name}: liveness {live:?}");
    assert!(!kills.is_empty(), "{name}: no kill in {minutes} minutes");
    println!(
        "{name}: {} kills in {:?} (delay s, committed seq at the kill): {kills:?}; \
         liveness {live:?}",
        kills.len(),
        started.elapsed()
    );
    p.finish().await.assert_pass(name);
}
