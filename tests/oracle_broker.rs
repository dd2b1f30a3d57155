//! Oracle scenarios on the broker (reliability §B.8, "broker restart (Mosquitto persistence
//! true)"), each counted by the oracle of `pipeline/` with the pass criteria of `oracle.rs`:
//! nothing missing, spurious, corrupted, stored twice or conflicting; one epoch; every poll
//! the simulator answered committed (but those in flight at the stop); a fresh reading of
//! every device within 60 s of the last restart; every SQLite file sound. The broker is a
//! Mosquitto of the run's own (`Broker::Private`: a free port, `persistence true`, autosave
//! every 5 s); the gateway reaches it through the gate, the sink as a client. Without
//! `/usr/sbin/mosquitto` the scenarios print why they skip.
//!
//! - **SIGTERM and restart, twice.** Under continuous polling the broker is stopped cleanly
//!   (it saves its state: the sink's session, its queue, the retained topics), kept down for
//!   10 s and started again on the same port with the same persistence file.
//! - **SIGKILL and restart, twice.** The sink is stopped cleanly first, so the broker holds
//!   what the gateway publishes meanwhile in the sink's session; then the broker is killed and
//!   started again from a persistence file up to 5 s old. What it acknowledged to the
//!   gateway and had not saved is lost by the broker: the gateway's `sink_ack` mode must
//!   republish it (the sink's watermark stalls), so nothing may be missing.
//!
//! The summary line of each names the transport duplicates: the republished messages the
//! sink met again.

mod pipeline;

use std::time::Duration;

use pipeline::{Broker, Mosquitto, Pipeline, Setup, now_ms};

/// The devices polled: a meter, an inverter and the boiler's PLC (about 60 readings a cycle).
const DEVICES: [&str; 3] = ["grid-meter", "pv-roof-a", "boiler"];
/// Reconnect within a few seconds of the broker's return; replay what the sink has not
/// confirmed 2 s after its watermark stalls.
const PUBLISH: &str = "[publish]\nbackoff_min = \"200ms\"\nbackoff_max = \"5s\"\nstall_min = \"2s\"\nstall_max = \"8s\"\n";
/// The most the first fresh reading may take after the last restart.
const LIVENESS: Duration = Duration::from_secs(60);
/// Restarts of the broker in each scenario.
const RESTARTS: usize = 2;
/// Polling with everything up before each stop of the broker.
const UP: Duration = Duration::from_secs(5);

/// How the broker goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM: it saves its persistence file.
    Term,
    /// SIGKILL, with the sink away for `sink_away` before: what it queued for the sink since
    /// its last autosave is lost.
    Kill { sink_away: Duration },
}

/// Runs the pipeline on the run's own Mosquitto, stops it `RESTARTS` times as `stop` says,
/// each time for `down`, and checks the report.
async fn scenario(name: &str, stop: Stop, down: Duration) {
    if !Mosquitto::available() {
        return;
    }
    let mut setup = Setup::new(&DEVICES, PUBLISH);
    setup.broker = Broker::Private;
    let mut p = Pipeline::start(name, setup).await;
    p.fresh_after(now_ms()).await;
    let mut persisted = Vec::new();
    for _ in 0..RESTARTS {
        tokio::time::sleep(UP).await;
        match stop {
            Stop::Term => p.stop_broker().await,
            Stop::Kill { sink_away } => {
                p.stop_sink().await;
                tokio::time::sleep(sink_away).await;
                p.kill_broker();
            }
        }
        persisted.push(p.broker_persisted_bytes());
        tokio::time::sleep(down).await;
        p.start_broker().await;
        if matches!(stop, Stop::Kill { .. }) {
            p.start_sink().await;
        }
    }
    let healed = now_ms();
    let live = p.fresh_after(healed).await;
    assert!(live <= LIVENESS, "{name}: liveness {live:?}");
    let report = p.finish().await;
    println!(
        "{name}: {RESTARTS} restarts ({stop:?}, down {down:?}; persistence file at each stop \
         {persisted:?} bytes); liveness {live:?}; committed {}, delivered {}, missing {}, \
         transport duplicates {}, stored duplicates {}",
        report.committed,
        report.delivered,
        report.missing,
        report.transport_duplicates,
        report.stored_duplicates
    );
    report.assert_pass(name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stopped_with_sigterm_and_restarted_twice_loses_and_duplicates_nothing() {
    scenario("broker-term", Stop::Term, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_with_sigkill_and_restarted_twice_loses_nothing() {
    let sink_away = Duration::from_secs(3);
    scenario(
        "broker-kill",
        Stop::Kill { sink_away },
        Duration::from_secs(5),
    )
    .await;
}
