//! Kill -9 at each of the gateway's failpoints (reliability §B.8, K1–K7), and the crash
//! storm (K9), each counted by the oracle of `pipeline/` with the pass criteria of
//! `oracle.rs`: nothing missing, spurious, corrupted, stored twice or conflicting; one epoch;
//! a fresh reading of every device within 60 s of the restart; every SQLite file sound.
//!
//! - **One run per failpoint.** The gateway runs as a child process with one point armed
//!   (`FIVEZERO_FAILPOINTS="<point>=<n>*off->return"`, `n` drawn from a seeded generator: the
//!   seed is printed, `FIVEZERO_FAILPOINT_SEED` sets it). When the child writes
//!   `FAILPOINT <point>` to stderr (it then blocks, holding whatever it holds) it gets
//!   SIGKILL; its buffer must pass `PRAGMA integrity_check`; the gateway restarts without
//!   failpoints, runs a few seconds, and the run is counted. K6 (inside an eviction) runs
//!   with a 96 KiB byte budget and the broker's link down; K7 (the WAL checkpoint) is
//!   reached at a clean stop: SIGTERM, then SIGKILL at the marker. The points run one after
//!   the other in one test (`FIVEZERO_FAILPOINT_ONLY=<point>` runs just one).
//! - **The crash storm (K9)**, only with `FIVEZERO_ORACLE_LONG=1`: the gateway child is
//!   killed with SIGKILL every U(5, 60) s for `FIVEZERO_ORACLE_STORM_MINUTES` (default 60)
//!   minutes, restarted at once each time, then counted.
//!
//! The test build has the points (the root package's dev-dependency enables the gateway's
//! `failpoints` feature); a build without them prints why it skips.

mod pipeline;

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
    (failpoints::K6_EVICT_BEFORE_GAP, Reach::Eviction, 4),
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

/// One oracle run with `point` armed to halt after `hits` passing hits.
async fn kill_at(point: &str, reach: Reach, hits: u32, seed: u64) {
    let name = format!("failpoint-{point}");
    let spec = format!("{point}={hits}*off->return");
    println!("{name}: {}={spec:?} (seed {seed})", failpoints::ENV);
    let mut setup = Setup::new(&DEVICES, PUBLISH);
    setup.gateway = Place::Child;
    setup.gateway_env = vec![(failpoints::ENV.to_owned(), spec)];
    if reach == Reach::Eviction {
        setup.budget = Some(BUDGET);
    }
    let mut p = Pipeline::start(&name, setup).await;
    let marker = format!("{} {point}", failpoints::MARKER);
    let armed = Instant::now();
    match reach {
        Reach::Running => {}
        Reach::Eviction => {
            // Readings reach the sink first, then the link goes down until the buffer
            // reaches its budget and evicts.
            p.fresh_after(now_ms()).await;
            p.gate.close();
        }
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
    let reached = armed.elapsed();
    let (integrity, committed) = p.kill_gateway();
    assert_eq!(integrity, "ok", "{name}: integrity after the kill");

    // The gateway restarts without failpoints (the link still down in the K6 run for a
    // moment, so it starts over a full buffer).
    p.set_gateway_env(Vec::new());
    p.start_gateway();
    let restarted = Instant::now();
    if reach == Reach::Eviction {
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
    println!(
        "{name}: {line:?} after {reached:?} ({hits} hits let through), committed seq at the \
         kill {committed}; liveness after the restart {live:?}"
    );
    p.finish().await.assert_pass(&name);
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
    println!("failpoints: seed {seed} ({SEED_ENV} to repeat)");
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
    let mut rng = StdRng::seed_from_u64(seed);
    for (point, reach, max) in POINTS {
        // Drawn for every point, so one seed gives each point the same count with or
        // without FIVEZERO_FAILPOINT_ONLY.
        let hits = rng.random_range(0..max);
        if only.as_deref().is_some_and(|o| o != point) {
            continue;
        }
        kill_at(point, reach, hits, seed).await;
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
