//! The oracle scenarios that run in CI: the whole pipeline (simulator, gateway, sink with its
//! embedded broker) with the link between the gateway and the broker cut for 5 s, 30 s and
//! 2 min, and flapping (10 s down, 20 s up, twice), then counted stream by stream. Pass: nothing
//! missing, spurious, corrupted, stored twice or conflicting; one epoch; a fresh reading of
//! every device in the sink within 60 s of the link's return; both databases sound.
//!
//! Longer outages (15 min and 1 h) run with `FIVEZERO_ORACLE_LONG=1` (not in CI);
//! `FIVEZERO_ORACLE_OUTAGE_MINUTES=60` (a comma-separated list) picks the lengths.
//!
//! The other scenarios that run in CI: `oracle_sink.rs` (sink kill -9 mid-transaction,
//! PostgreSQL unavailable for 60 s, 10 % poison messages) and `oracle_gateway.rs` (crash loop
//! at start, disk budget reached under a long outage, the Modbus fault matrix).

mod pipeline;

use std::time::Duration;

use pipeline::{Pipeline, Setup, now_ms};

/// The devices polled: a meter, an inverter and the boiler's PLC (about 60 readings a cycle).
const DEVICES: [&str; 3] = ["grid-meter", "pv-roof-a", "boiler"];
/// Reconnect within a few seconds of the link's return; replay what the sink has not
/// confirmed 2 s after its watermark stalls.
const PUBLISH: &str = "[publish]\nbackoff_min = \"200ms\"\nbackoff_max = \"5s\"\nstall_min = \"2s\"\nstall_max = \"8s\"\n";
/// The most the first fresh reading may take after the faults stop.
const LIVENESS: Duration = Duration::from_secs(60);

/// Runs the pipeline, cuts the link for each `(down, up)` in `faults`, and checks the report.
async fn scenario(name: &str, faults: &[(Duration, Duration)]) {
    let p = Pipeline::start(name, Setup::new(&DEVICES, PUBLISH)).await;
    // Warm: every device reaches the sink.
    p.fresh_after(now_ms()).await;
    for &(down, up) in faults {
        p.gate.close();
        tokio::time::sleep(down).await;
        p.gate.open();
        tokio::time::sleep(up).await;
    }
    let healed = now_ms();
    let live = p.fresh_after(healed).await;
    let stored = p.stored();
    println!("{name}: liveness {live:?}, {stored} items stored at that moment");
    assert!(live <= LIVENESS, "{name}: liveness {live:?}");
    let report = p.finish().await;
    report.assert_pass(name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fault_baseline() {
    scenario("baseline", &[(Duration::ZERO, Duration::from_secs(5))]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5_s_outage_loses_and_duplicates_nothing() {
    scenario("outage-5s", &[(Duration::from_secs(5), Duration::ZERO)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_s_outage_loses_and_duplicates_nothing() {
    scenario("outage-30s", &[(Duration::from_secs(30), Duration::ZERO)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_min_outage_loses_and_duplicates_nothing() {
    scenario("outage-2min", &[(Duration::from_secs(120), Duration::ZERO)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_link_loses_and_duplicates_nothing() {
    let flap = (Duration::from_secs(10), Duration::from_secs(20));
    scenario("flapping", &[flap, flap]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_outages_when_asked() {
    let Ok(v) = std::env::var("FIVEZERO_ORACLE_LONG") else {
        println!("skipped: set FIVEZERO_ORACLE_LONG=1 for the 15 min and 1 h outages");
        return;
    };
    if v.is_empty() {
        return;
    }
    let lengths =
        std::env::var("FIVEZERO_ORACLE_OUTAGE_MINUTES").unwrap_or_else(|_| "15,60".into());
    for minutes in lengths.split(',').map(|m| {
        m.trim()
            .parse::<u64>()
            .expect("FIVEZERO_ORACLE_OUTAGE_MINUTES is a comma-separated list of minutes")
    }) {
        scenario(
            &format!("outage-{minutes}min"),
            &[(Duration::from_secs(60 * minutes), Duration::ZERO)],
        )
        .await;
    }
}
