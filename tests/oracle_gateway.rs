//! Oracle scenarios on the gateway's side (reliability §B.8), each counted by the oracle of
//! `pipeline/` with the same pass criteria as `oracle.rs`: nothing missing, spurious,
//! corrupted, stored twice or conflicting; one epoch; a fresh reading of every device within
//! 60 s of the fault's end; every SQLite file sound.
//!
//! - **Crash loop at start (K8).** The gateway runs as a child process and is killed with
//!   SIGKILL at a random delay in 0..2 s after each start, ten times in a row; its buffer
//!   passes `PRAGMA integrity_check` after every kill; then it comes up and makes progress.
//! - **Disk budget reached under a long outage.** A gateway with a 96 KiB budget (set after
//!   loading: the config's floor is 1 MiB) loses its broker until it has evicted several
//!   times; the sequences it counts as evicted (`fivezero_readings_dropped_total{reason=
//!   "buffer_full"}`) must equal the gaps the sink holds, exactly, and the rest must arrive.
//! - **The Modbus fault matrix.** Every fault the simulator can play (`simulator/src/fault.rs`,
//!   exceptions with each code class) is applied, one after the other, to one device while
//!   the others are polled on their schedule: no value is corrupted, the daemon keeps running,
//!   the faulty device resumes after each fault is cleared, and the others' polls in each
//!   fault's window stay close to their schedule.

mod pipeline;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use fivezero_model::wire::Quality;
use fivezero_sim::fault::Fault;
use pipeline::{LIMIT, Pipeline, Place, Setup, now_ms};
use rand::Rng as _;

/// The devices polled: a meter, an inverter and the boiler's PLC (about 60 readings a cycle).
const DEVICES: [&str; 3] = ["grid-meter", "pv-roof-a", "boiler"];
/// Reconnect within a few seconds of the link's return; replay what the sink has not
/// confirmed 2 s after its watermark stalls.
const PUBLISH: &str = "[publish]\nbackoff_min = \"200ms\"\nbackoff_max = \"5s\"\nstall_min = \"2s\"\nstall_max = \"8s\"\n";
/// The most the first fresh reading may take after the faults stop.
const LIVENESS: Duration = Duration::from_secs(60);

/// Kills in the crash loop.
const CRASHES: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_at_start_ends_with_a_gateway_that_makes_progress_and_loses_nothing() {
    let name = "crash-loop";
    let mut setup = Setup::new(&DEVICES, PUBLISH);
    setup.gateway = Place::Child;
    let mut p = Pipeline::start(name, setup).await;
    let mut kills = Vec::new();
    for crash in 1..=CRASHES {
        let delay = rand::rng().random_range(0..2000);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        assert!(
            p.gateway_running(),
            "{name}: the gateway ended on its own before kill {crash}"
        );
        let (integrity, committed) = p.kill_gateway();
        assert_eq!(integrity, "ok", "{name}: integrity after kill {crash}");
        kills.push((delay, committed));
        p.start_gateway();
    }
    // It comes up and makes progress: fresh readings of every device reach the sink.
    let healed = now_ms();
    let live = p.fresh_after(healed).await;
    assert!(live <= LIVENESS, "{name}: liveness {live:?}");
    println!(
        "{name}: {CRASHES} kills (delay ms, committed seq at the kill): {kills:?}; \
         liveness {live:?}"
    );
    p.finish().await.assert_pass(name);
}

/// The gateway's byte budget.
const BUDGET: u64 = 96 * 1024;
/// Separate scrapes at which the evicted count must have grown before the link returns.
const EVICTIONS: usize = 3;
const DROPPED: &str = "fivezero_readings_dropped_total";
const BUFFER_FULL: [(&str, &str); 2] = [("intentional", "true"), ("reason", "buffer_full")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_budget_reached_under_a_long_outage_evicts_exactly_the_declared_gaps() {
    let name = "budget";
    let mut setup = Setup::new(&DEVICES, PUBLISH);
    setup.budget = Some(BUDGET);
    setup.metrics = true;
    let mut p = Pipeline::start(name, setup).await;
    p.fresh_after(now_ms()).await;

    // The link goes down until the gateway has evicted at several separate scrapes.
    p.gate.close();
    let closed = Instant::now();
    let mut grew = 0;
    let mut last = 0;
    while grew < EVICTIONS {
        assert!(
            closed.elapsed() < LIMIT,
            "{name}: the budget was not reached within {LIMIT:?}"
        );
        assert!(p.gateway_running(), "{name}: the gateway stopped");
        let m = p.gateway_metrics().await.expect("the metrics answer");
        let evicted = m.count(DROPPED, &BUFFER_FULL);
        if evicted > last {
            grew += 1;
            last = evicted;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let outage = closed.elapsed();
    p.gate.open();
    let healed = now_ms();
    let live = p.fresh_after(healed).await;
    assert!(live <= LIVENESS, "{name}: liveness {live:?}");

    // Once the sink has caught up the buffer is far below its budget, so nothing more is
    // evicted: the gateway's count is final.
    let deadline = Instant::now() + LIMIT;
    let evicted = loop {
        let m = p.gateway_metrics().await.expect("the metrics answer");
        let committed = m.count("fivezero_outbox_committed_seq", &[]);
        let watermark = m.count("fivezero_outbox_sink_watermark_seq", &[]);
        let bytes = m.count("fivezero_outbox_bytes", &[]);
        if watermark + 200 >= committed && bytes < BUDGET / 2 {
            break m.count(DROPPED, &BUFFER_FULL);
        }
        assert!(
            Instant::now() < deadline,
            "{name}: the backlog did not drain: watermark {watermark} of {committed}, \
             {bytes} bytes charged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let report = p.finish().await;
    println!(
        "{name}: {BUDGET} B budget, link down {outage:?}, {evicted} sequences evicted, \
         {} declared as gaps ({} of them also delivered); liveness {live:?}",
        report.declared_gaps, report.overlap
    );
    assert!(evicted > 0, "{name}: nothing evicted");
    assert_eq!(
        report.declared_gaps, evicted,
        "{name}: declared gaps = sequences the gateway evicted"
    );
    report.assert_pass(name);
}

/// The faulty device; the others must keep their schedule.
const FAULTY: &str = "pv-roof-a";
/// How long each fault stays on: several poll intervals, and more than the 500 ms timeout.
const FAULT_FOR: Duration = Duration::from_millis(1500);
/// The poll interval.
const INTERVAL_MS: i64 = 200;
/// Per-device backoff short enough that a cleared fault is left behind within seconds.
const POLL: &str = "[poll]\nbackoff_min = \"100ms\"\nbackoff_max = \"1s\"\n";
/// The share of a fault window's scheduled polls the other devices must have stored.
const ON_SCHEDULE: f64 = 0.7;

/// Every fault the simulator plays, exceptions with a code of each class.
fn matrix() -> Vec<Fault> {
    let ms = Duration::from_millis;
    let faults = vec![
        Fault::Exception(0x01),
        Fault::Exception(0x02),
        Fault::Exception(0x03),
        Fault::Exception(0x04),
        Fault::Exception(0x05),
        Fault::Exception(0x06),
        Fault::Exception(0x0A),
        Fault::Exception(0x0B),
        Fault::NoReply,
        Fault::LateReply { delay: ms(1500) },
        Fault::Slow { delay: ms(200) },
        Fault::WrongTransactionId,
        Fault::WrongUnitId,
        Fault::WrongFunctionCode,
        Fault::FewerRegisters,
        Fault::TruncatedPdu,
        Fault::Garbled,
        Fault::ZeroLength,
        Fault::HugeLength,
        Fault::Sliced { gap: ms(1) },
        Fault::DropConnection,
        Fault::ResetMidFrame,
    ];
    let kinds: BTreeSet<&str> = faults.iter().map(Fault::kind).collect();
    assert_eq!(
        kinds,
        Fault::KINDS.into_iter().collect::<BTreeSet<_>>(),
        "the matrix covers every fault kind of the simulator"
    );
    faults
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_modbus_fault_matrix_on_one_device_corrupts_nothing_and_the_others_stay_on_schedule() {
    let name = "modbus-faults";
    let mut p = Pipeline::start(name, Setup::new(&DEVICES, &format!("{PUBLISH}{POLL}"))).await;
    p.fresh_after(now_ms()).await;
    let faulty = vec![FAULTY.to_owned()];
    let others: Vec<String> = DEVICES
        .iter()
        .filter(|d| **d != FAULTY)
        .map(|d| (*d).to_owned())
        .collect();

    let mut windows = Vec::new();
    let mut resumed = Vec::new();
    for fault in matrix() {
        let from = now_ms();
        p.sim.set_fault(FAULTY, fault).expect("the device exists");
        tokio::time::sleep(FAULT_FOR).await;
        p.sim.clear_fault(FAULTY).expect("the device exists");
        let to = now_ms();
        assert!(
            p.gateway_running(),
            "{name}: the gateway stopped during {fault}"
        );
        // The faulty device resumes: a good reading polled after the fault was cleared.
        let back = p.fresh_where(to, &faulty, true).await;
        assert!(
            back <= LIVENESS,
            "{name}: {FAULTY} resumed after {back:?} from {fault}"
        );
        windows.push((fault, from, to));
        resumed.push((fault.to_string(), back.as_millis()));
    }
    let healed = now_ms();
    let live = p.fresh_after(healed).await;
    assert!(live <= LIVENESS, "{name}: liveness {live:?}");

    // Each fault showed: errors stored for the faulty device, or for a reply that is slow
    // or sliced but within the timeout, good readings (checked against the simulator with
    // every other value at the end). The others' polls in each fault's window: distinct poll
    // times stored per device.
    let store = p.store().await;
    let mut worst = f64::INFINITY;
    let mut seen = Vec::new();
    for (fault, from, to) in &windows {
        let rows = p.readings(&store, Some(*from), Some(*to)).await;
        let mut polls: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
        let (mut good, mut bad) = (0, 0);
        for r in &rows {
            polls
                .entry(r.reading.device.as_str())
                .or_default()
                .insert(r.reading.ts);
            if r.reading.device == FAULTY {
                if r.reading.quality == Quality::Good {
                    good += 1;
                } else {
                    bad += 1;
                }
            }
        }
        if matches!(fault, Fault::Slow { .. } | Fault::Sliced { .. }) {
            assert!(
                good > 0,
                "{name}: no good reading of {FAULTY} during {fault}"
            );
        } else {
            assert!(
                bad > 0,
                "{name}: no error reading of {FAULTY} during {fault}"
            );
        }
        seen.push(format!("{fault} {good}/{bad}"));
        let scheduled = (to - from) as f64 / INTERVAL_MS as f64;
        for d in &others {
            let n = polls.get(d.as_str()).map_or(0, BTreeSet::len) as f64;
            worst = worst.min(n / scheduled);
            assert!(
                n >= (scheduled * ON_SCHEDULE).floor(),
                "{name}: {d} stored {n} polls of {scheduled:.1} scheduled during {fault}"
            );
        }
    }
    drop(store);
    println!(
        "{name}: {} faults on {FAULTY}, its good/error readings in each window: {seen:?}; \
         resumed after (ms): {resumed:?}; the others stored at least {:.0} % of their \
         scheduled polls in every window; liveness {live:?}",
        windows.len(),
        worst * 100.0
    );
    p.finish().await.assert_pass(name);
}
