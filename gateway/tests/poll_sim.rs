//! The poller against the Green Sail simulator, end to end over real sockets.
//!
//! The simulator runs in-process with its clock frozen (speed 0): every device keeps serving
//! the image of one physics step, so a snapshot taken at any moment is the truth for every
//! reading. Each test checks every reading it receives against it: a good reading must hold
//! exactly the served value (`corrupted = 0`), whatever fault is switched on.
//!
//! 1. Every point of every device of the scenario (both listeners) decodes to the served value.
//! 2. Each fault of the simulator on one device (`pv-roof-a`) is seen in the readings (quality
//!    error with the right reason) and in the health counters (exceptions by code, timeouts,
//!    reconnects), never yields a wrong value, and clears: the device reads good again. Meanwhile
//!    `grid-meter`, on the same listener, keeps its schedule: its cycles arrive one after the
//!    other, each on time and good.
//!
//! Intervals are 500 ms and timeouts 300 ms; every wait has a deadline.

mod common;
#[path = "fixtures/sim.rs"]
mod sim;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::{HOUR_ALIGNED_MS, config, head};
use fivezero_gateway::poll::{
    DeviceReadings, HealthSnapshot, InstantClock, PollOptions, Poller, RealTransports, spawn_with,
};
use fivezero_model::wire::Quality;
use fivezero_sim::fault::Fault;
use fivezero_sim::server::{DeviceSnapshot, SimulatorHandle};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Device interval.
const INTERVAL_MS: i64 = 500;
/// Request timeout.
const TIMEOUT: &str = "300ms";
/// The device the faults are set on, and the one that must not notice.
const VICTIM: &str = "pv-roof-a";
const WITNESS: &str = "grid-meter";

/// `[[device]]` entries for `devices` of the running simulator.
fn device_entries(sim: &SimulatorHandle, names: Option<&[&str]>) -> String {
    let mut out = String::new();
    for (name, profile, unit, addr) in sim::devices(sim) {
        if names.is_some_and(|n| !n.contains(&name.as_str())) {
            continue;
        }
        out.push_str(&format!(
            r#"
[[device]]
name = "{name}"
profile = "{profile}"
tcp = "{addr}"
unit = {unit}
interval = "{INTERVAL_MS}ms"
timeout = "{TIMEOUT}"
"#
        ));
    }
    out
}

/// Starts the poller; its clock starts 400 ms before an hour boundary, so the first cycle is
/// the boundary's and reads the hourly points too.
fn start(cfg: &fivezero_gateway::config::Config) -> (Poller, mpsc::Receiver<DeviceReadings>) {
    let (tx, rx) = mpsc::channel(256);
    let options = PollOptions {
        clock: Arc::new(InstantClock::starting_at(HOUR_ALIGNED_MS - 400)),
        transports: Arc::new(RealTransports),
        seed: Some(11),
    };
    (spawn_with(cfg, tx, options), rx)
}

fn health(poller: &Poller, device: &str) -> HealthSnapshot {
    poller
        .health()
        .into_iter()
        .find(|h| &*h.device == device)
        .unwrap_or_else(|| panic!("no health for {device}"))
}

/// Receives readings and checks every one of them against the simulator.
struct Watch {
    rx: mpsc::Receiver<DeviceReadings>,
    snapshots: HashMap<String, DeviceSnapshot>,
    /// Every good reading that is not what the simulator served.
    corrupted: Vec<String>,
    /// The witness's cycles: number, lateness of its first reading after the boundary (ms),
    /// all good.
    witness: Vec<(u64, i64, bool)>,
}

impl Watch {
    fn new(sim: &SimulatorHandle, rx: mpsc::Receiver<DeviceReadings>) -> Self {
        let snapshots = sim
            .scenario()
            .devices
            .iter()
            .map(|d| {
                let snap = sim.snapshot(&d.name).expect("a snapshot");
                (d.name.clone(), snap)
            })
            .collect();
        Self {
            rx,
            snapshots,
            corrupted: Vec::new(),
            witness: Vec::new(),
        }
    }

    async fn next(&mut self, deadline: Instant, what: &str) -> DeviceReadings {
        let r = match tokio::time::timeout_at(deadline, self.rx.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => panic!("the readings channel closed while waiting for {what}"),
            Err(_) => panic!("gave up waiting for {what}"),
        };
        let snap = &self.snapshots[&*r.device];
        for reading in &r.readings {
            if let Err(e) = sim::check(snap, reading) {
                self.corrupted.push(e);
            }
        }
        if &*r.device == WITNESS {
            let first = r.readings.iter().map(|x| x.ts).min().unwrap_or(i64::MAX);
            let good = r.readings.iter().all(|x| x.quality == Quality::Good);
            self.witness.push((r.cycle, first - r.ts_ms, good));
        }
        r
    }

    /// Receives until `pred` holds for a cycle, for at most `limit`.
    async fn until(
        &mut self,
        what: &str,
        limit: Duration,
        mut pred: impl FnMut(&DeviceReadings) -> bool,
    ) -> DeviceReadings {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.next(deadline, what).await;
            if pred(&r) {
                return r;
            }
        }
    }
}

fn reasons(r: &DeviceReadings) -> Vec<&str> {
    r.readings
        .iter()
        .filter_map(|x| x.reason.as_deref())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_point_of_every_device_decodes_to_the_value_the_simulator_serves() {
    let sim = sim::greensail(0.0).await;
    let cfg = config("sim-all", &(head("1s") + &device_entries(&sim, None)));
    assert_eq!(cfg.devices.len(), sim.scenario().devices.len());
    assert!(
        sim::devices(&sim)
            .iter()
            .any(|d| Some(d.3) == sim.addr("ev-gateway")),
        "both listeners are polled"
    );
    let (poller, rx) = start(&cfg);
    let mut watch = Watch::new(&sim, rx);

    // Two cycles of every device: the first reads every point (hourly ones too).
    let mut cycles: BTreeMap<String, Vec<DeviceReadings>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cycles.len() < cfg.devices.len() || cycles.values().any(|c| c.len() < 2) {
        let r = watch.next(deadline, "two cycles of every device").await;
        cycles.entry(r.device.to_string()).or_default().push(r);
    }
    assert!(watch.corrupted.is_empty(), "{:#?}", watch.corrupted);
    for d in &cfg.devices {
        let got = &cycles[&*d.name];
        let points = d.profile.reading_points().count();
        assert_eq!(
            got[0].readings.len(),
            points,
            "{}: a full first cycle",
            d.name
        );
        for r in got {
            for reading in &r.readings {
                assert_eq!(
                    reading.quality,
                    Quality::Good,
                    "{} {}: {:?}",
                    d.name,
                    reading.metric,
                    reading.reason
                );
            }
        }
        // Some values are real numbers, not only "not available".
        assert!(
            got[0].readings.iter().any(|x| x.value.is_some()),
            "{}: nothing but sentinels",
            d.name
        );
    }
    for h in poller.health() {
        assert_eq!((h.timeouts, h.reconnects, h.overruns), (0, 0, 0), "{h:?}");
        assert!(h.exceptions.is_empty(), "{h:?}");
    }
    poller.shutdown().await;
    sim.shutdown().await;
}

/// What a fault must show.
#[derive(Debug, Clone, Copy)]
enum Evidence {
    /// A reading with this reason, and the exception counter of this code up by `n`.
    Exception(&'static str, u8, u64),
    /// A reading with this reason, and timeouts and reconnects up.
    Timeout,
    /// A reading with this reason, and reconnects up.
    Reconnect(&'static str),
    /// Every reading good, after a request that took at least this long.
    Slow(Duration),
}

/// Runs each fault on the victim in turn, checking what it shows, that it clears, and that
/// the witness keeps its schedule meanwhile.
async fn faults(name: &str, cases: &[(Fault, Evidence)]) {
    let sim = sim::greensail(0.0).await;
    let cfg = config(
        name,
        &(head("1s") + &device_entries(&sim, Some(&[WITNESS, VICTIM]))),
    );
    let (poller, rx) = start(&cfg);
    let mut watch = Watch::new(&sim, rx);
    watch
        .until(
            "the victim's first good cycle",
            Duration::from_secs(10),
            |r| &*r.device == VICTIM && r.readings.iter().all(|x| x.quality == Quality::Good),
        )
        .await;

    for &(fault, evidence) in cases {
        let from = watch.witness.len();
        let before = health(&poller, VICTIM);
        sim.set_fault(VICTIM, fault).expect("known device");
        let what = format!("{fault} to show");
        watch
            .until(&what, Duration::from_secs(8), |r| {
                if &*r.device != VICTIM {
                    return false;
                }
                let now = health(&poller, VICTIM);
                let counted = |code: u8| {
                    now.exceptions.get(&code).copied().unwrap_or(0)
                        - before.exceptions.get(&code).copied().unwrap_or(0)
                };
                let has = |reason: &str| reasons(r).contains(&reason);
                match evidence {
                    Evidence::Exception(reason, code, n) => has(reason) && counted(code) >= n,
                    Evidence::Timeout => {
                        has("timeout")
                            && now.timeouts > before.timeouts
                            && now.reconnects > before.reconnects
                    }
                    Evidence::Reconnect(reason) => {
                        has(reason) && now.reconnects > before.reconnects
                    }
                    Evidence::Slow(at_least) => {
                        r.readings.iter().all(|x| x.quality == Quality::Good)
                            && now.latency_last.is_some_and(|l| l >= at_least)
                    }
                }
            })
            .await;
        sim.clear_fault(VICTIM).expect("known device");
        let what = format!("the victim to read good again after {fault}");
        watch
            .until(&what, Duration::from_secs(8), |r| {
                &*r.device == VICTIM && r.readings.iter().all(|x| x.quality == Quality::Good)
            })
            .await;

        // A fault that shows and clears within one witness cycle (busy: one retry after
        // 100 ms) leaves one cycle to judge; wait for a second so continuity is checked.
        while watch.witness.len() - from < 2 {
            watch
                .until("a second witness cycle", Duration::from_secs(8), |r| {
                    &*r.device == WITNESS
                })
                .await;
        }

        // The witness kept its schedule all along.
        let seen = &watch.witness[from..];
        assert!(seen.len() >= 2, "{fault}: witness cycles {seen:?}");
        for pair in seen.windows(2) {
            assert_eq!(
                pair[1].0,
                pair[0].0 + 1,
                "{fault}: witness skipped a cycle: {seen:?}"
            );
        }
        for &(cycle, late, good) in seen {
            assert!(good, "{fault}: witness cycle {cycle} not good");
            assert!(
                late < INTERVAL_MS / 2,
                "{fault}: witness cycle {cycle} read {late} ms after its boundary"
            );
        }
        assert!(
            watch.corrupted.is_empty(),
            "{fault}: {:#?}",
            watch.corrupted
        );
    }
    let w = health(&poller, WITNESS);
    assert_eq!(
        (w.overruns, w.cycles_dropped, w.timeouts, w.reconnects),
        (0, 0, 0, 0),
        "{w:?}"
    );
    assert!(w.exceptions.is_empty(), "{w:?}");
    poller.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_show_by_code_and_clear() {
    faults(
        "sim-exceptions",
        &[
            (
                Fault::Exception(0x01),
                Evidence::Exception("exception 01 illegal function", 0x01, 1),
            ),
            (
                Fault::Exception(0x02),
                Evidence::Exception("exception 02 illegal data address", 0x02, 1),
            ),
            (
                Fault::Exception(0x04),
                Evidence::Exception("exception 04 server device failure", 0x04, 1),
            ),
            // Busy: retried once within the cycle, so two exceptions per request.
            (
                Fault::Exception(0x06),
                Evidence::Exception("exception 06 server device busy", 0x06, 2),
            ),
            (
                Fault::Exception(0x0B),
                Evidence::Exception(
                    "exception 0B gateway target device failed to respond",
                    0x0B,
                    1,
                ),
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_late_replies_and_wrong_headers_reconnect_and_never_corrupt() {
    faults(
        "sim-silence",
        &[
            (Fault::NoReply, Evidence::Timeout),
            (
                Fault::LateReply {
                    delay: Duration::from_millis(800),
                },
                Evidence::Timeout,
            ),
            (
                Fault::WrongTransactionId,
                Evidence::Reconnect("header mismatch"),
            ),
            (Fault::WrongUnitId, Evidence::Reconnect("header mismatch")),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_dropped_garbled_and_slow_replies_are_handled() {
    faults(
        "sim-frames",
        &[
            (Fault::FewerRegisters, Evidence::Reconnect("short reply")),
            (Fault::DropConnection, Evidence::Reconnect("disconnected")),
            (Fault::Garbled, Evidence::Reconnect("invalid frame")),
            (
                Fault::Slow {
                    delay: Duration::from_millis(100),
                },
                Evidence::Slow(Duration::from_millis(100)),
            ),
        ],
    )
    .await;
}
