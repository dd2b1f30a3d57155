//! The oracle under link-quality faults ("toxics", as in toxiproxy) on the link between the
//! gateway and the broker, the reliability plan's list: the whole pipeline as in `oracle.rs`
//! (simulator, gateway, sink with its embedded broker) with the gateway's TCP gate
//! (`gateway/tests/common/gate.rs`) turned toxic for a while, then cleared. Pass: nothing
//! missing, spurious, corrupted, stored twice or conflicting; one epoch; a fresh reading of
//! every device in the sink within 60 s of the toxic's end; both databases sound; and the
//! toxic visibly acted (last column).
//!
//! | scenario | toxic (both directions) | what shows it acted |
//! |---|---|---|
//! | `latency` | every chunk held 500 ms ± 250 ms | an MQTT CONNECT through the gate waits ≥ 500 ms for its CONNACK |
//! | `bandwidth` | 8 KiB/s each way | the sink stores fewer readings during the toxic than the gateway commits (the backlog grows, and drains afterwards) |
//! | `slicer` | chunks cut in 16 ± 8-byte slices, 10 ms apart | as bandwidth (the slicer carries about 1.6 KB/s) |
//! | `slow_close` | FINs delayed 5 s; the gate hangs up the gateway's connection as a broker would, again after each reconnect | every reconnect comes ≥ 4 s after its hang-up (the gateway learns of the close only from the late FIN, or at the latest from its 5 s ping) |
//! | `reset_peer` | each connection aborted with RST (SO_LINGER 0) 5 s after it started | the gateway connects at least twice more |
//! | `limit_data` | each connection cut once 64 KiB have passed, mid-message | the gateway connects at least twice more |
//!
//! Each scenario warms (every device reaches the sink), applies its toxic for 20 s, removes
//! it, measures the time to a fresh reading of every device, stops the gateway, lets the sink
//! catch up, counts, and prints one line:
//! `link <name>: liveness …, committed …, delivered …, transport duplicates …, <evidence>`.
//! The whole file takes about 75 s on two cores (two scenarios at a time, the machine busy).
//!
//! With `FIVEZERO_ORACLE_LONG=1` each toxic acts for 30 minutes instead (the plan's nightly
//! length; about 90 minutes for the file, not in CI).
//!
//! Run: `cargo test -p fivezero --test oracle_link -- --nocapture`.

mod pipeline;

use std::time::Duration;

use pipeline::{Gate, LIMIT, Metrics, Pipeline, Setup, now_ms};
use tokio::time::Instant;

/// The devices polled: a meter, an inverter and the boiler's PLC (about 60 readings a cycle).
const DEVICES: [&str; 3] = ["grid-meter", "pv-roof-a", "boiler"];
/// Reconnect within a few seconds of the link's return; replay what the sink has not
/// confirmed 2 s after its watermark stalls.
const PUBLISH: &str = "[publish]\nbackoff_min = \"200ms\"\nbackoff_max = \"5s\"\nstall_min = \"2s\"\nstall_max = \"8s\"\n";
/// The most the first fresh reading may take after the toxic ends.
const LIVENESS: Duration = Duration::from_secs(60);
/// How long a toxic acts in CI.
const CI_LENGTH: Duration = Duration::from_secs(20);
/// How long a toxic acts with `FIVEZERO_ORACLE_LONG=1`.
const LONG_LENGTH: Duration = Duration::from_secs(30 * 60);
/// The gateway's count of MQTT connections made.
const CONNECTS: &str = "fivezero_mqtt_connects_total";
/// The gateway's highest committed sequence.
const COMMITTED: &str = "fivezero_outbox_committed_seq";

/// Latency's mean and jitter.
const LATENCY: Duration = Duration::from_millis(500);
const JITTER: Duration = Duration::from_millis(250);
/// Bandwidth's rate, each way.
const BANDWIDTH: u64 = 8 * 1024;
/// Slicer's mean slice, its variation and the pause after each slice.
const SLICE: usize = 16;
const SLICE_VARIATION: usize = 8;
const SLICE_DELAY: Duration = Duration::from_millis(10);
/// How late slow_close sends a FIN.
const SLOW_CLOSE: Duration = Duration::from_secs(5);
/// How long reset_peer lets a connection live.
const RESET_EVERY: Duration = Duration::from_secs(5);
/// What limit_data lets a connection carry.
const LIMIT_DATA: u64 = 64 * 1024;

/// How long each toxic acts.
fn length() -> Duration {
    match std::env::var("FIVEZERO_ORACLE_LONG") {
        Ok(v) if !v.is_empty() => LONG_LENGTH,
        _ => CI_LENGTH,
    }
}

/// The gateway's and the sink's counts at one moment.
#[derive(Debug, Clone, Copy)]
struct Counts {
    connects: u64,
    committed: u64,
    stored: u64,
}

/// A scrape of the gateway's metrics, tried again while it does not answer.
async fn metrics(p: &Pipeline) -> Metrics {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(m) = p.gateway_metrics().await {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{}: the gateway's metrics did not answer within {LIMIT:?}",
            p.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn counts(p: &Pipeline) -> Counts {
    let m = metrics(p).await;
    Counts {
        connects: m.count(CONNECTS, &[]),
        committed: m.count(COMMITTED, &[]),
        stored: p.stored(),
    }
}

/// Waits until the gateway has connected more than `since` times; returns the count.
async fn connected_after(p: &Pipeline, since: u64) -> u64 {
    let deadline = Instant::now() + LIMIT;
    loop {
        let n = metrics(p).await.count(CONNECTS, &[]);
        if n > since {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "{}: the gateway did not reconnect within {LIMIT:?}",
            p.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the pipeline, warms it, sets a toxic with `apply`, runs `act` while it is set (`act`
/// gets the instant the toxic is to end, and returns what showed that the toxic acted),
/// removes the toxic, and checks liveness and the report.
async fn scenario<A>(name: &str, apply: impl FnOnce(&Gate), act: A)
where
    A: AsyncFnOnce(&Pipeline, Instant) -> String,
{
    let mut setup = Setup::new(&DEVICES, PUBLISH);
    setup.metrics = true;
    let p = Pipeline::start(name, setup).await;
    // Warm: every device reaches the sink.
    p.fresh_after(now_ms()).await;
    apply(&p.gate);
    let until = Instant::now() + length();
    let evidence = act(&p, until).await;
    tokio::time::sleep_until(until).await;
    p.gate.set_toxic(None);
    let healed = now_ms();
    let live = p.fresh_after(healed).await;
    assert!(live <= LIVENESS, "{name}: liveness {live:?}");
    let report = p.finish().await;
    println!(
        "link {name}: liveness {live:?}, committed {}, delivered {}, transport duplicates {}, \
         {evidence}",
        report.committed, report.delivered, report.transport_duplicates
    );
    report.assert_pass(name);
}

/// What the sink stored and the gateway committed while the toxic acted; asserts the sink
/// fell behind.
async fn falls_behind(name: &str, p: &Pipeline, until: Instant) -> String {
    let before = counts(p).await;
    tokio::time::sleep_until(until).await;
    let after = counts(p).await;
    let stored = after.stored - before.stored;
    let committed = after.committed - before.committed;
    assert!(
        stored < committed,
        "{name}: the sink stored {stored} readings while the gateway committed {committed}: \
         the toxic did not slow the link"
    );
    format!(
        "during the toxic: {stored} stored of {committed} committed, {} reconnects",
        after.connects - before.connects
    )
}

/// How many times the gateway connected while the toxic acted; asserts at least `least`.
async fn reconnects(name: &str, p: &Pipeline, until: Instant, least: u64) -> String {
    let before = counts(p).await;
    tokio::time::sleep_until(until).await;
    let after = counts(p).await;
    let n = after.connects - before.connects;
    assert!(
        n >= least,
        "{name}: the gateway connected {n} times during the toxic, expected at least {least}"
    );
    format!(
        "during the toxic: {n} reconnects, {} stored of {} committed",
        after.stored - before.stored,
        after.committed - before.committed
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_500_ms_with_250_ms_jitter_loses_and_duplicates_nothing() {
    let name = "latency";
    scenario(
        name,
        |g| g.set_toxic(Some(Gate::latency(LATENCY, JITTER))),
        async |p: &Pipeline, until| {
            // A probe of our own through the gate: CONNECT and CONNACK are each held.
            let started = Instant::now();
            let probe = pipeline::mqtt::Client::connect("127.0.0.1", p.gate.port()).await;
            let round_trip = started.elapsed();
            drop(probe);
            let least = 2 * (LATENCY - JITTER);
            assert!(
                round_trip >= least,
                "{name}: a round trip through the gate took {round_trip:?}, less than {least:?}"
            );
            let during = reconnects(name, p, until, 0).await;
            format!("probe round trip {round_trip:?}, {during}")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_8_kib_per_s_loses_and_duplicates_nothing() {
    let name = "bandwidth";
    scenario(
        name,
        |g| g.set_toxic(Some(Gate::bandwidth(BANDWIDTH))),
        async |p: &Pipeline, until| falls_behind(name, p, until).await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slicer_of_16_byte_chunks_loses_and_duplicates_nothing() {
    let name = "slicer";
    scenario(
        name,
        |g| {
            g.set_toxic(Some(Gate::slicer(SLICE, SLICE_VARIATION, SLICE_DELAY)));
        },
        async |p: &Pipeline, until| falls_behind(name, p, until).await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_close_of_5_s_loses_and_duplicates_nothing() {
    let name = "slow_close";
    scenario(
        name,
        |g| g.set_toxic(Some(Gate::slow_close(SLOW_CLOSE))),
        async |p: &Pipeline, until| {
            // The gateway learns of a hang-up only when the FIN arrives, 5 s late (or when a
            // ping goes unanswered, which also takes its 5 s keep-alive: 1 s of slack).
            let least = SLOW_CLOSE - Duration::from_secs(1);
            let mut waits = Vec::new();
            while Instant::now() < until {
                let before = metrics(p).await.count(CONNECTS, &[]);
                let hung = Instant::now();
                p.gate.hang_up();
                connected_after(p, before).await;
                waits.push(hung.elapsed());
            }
            assert!(
                waits.len() >= 2,
                "{name}: only {} hang-ups in {:?}",
                waits.len(),
                length()
            );
            let shortest = waits.iter().min().copied().unwrap_or_default();
            assert!(
                shortest >= least,
                "{name}: the gateway reconnected {shortest:?} after a hang-up (waits {waits:?}): \
                 the FIN was not held {SLOW_CLOSE:?}"
            );
            let longest = waits.iter().max().copied().unwrap_or_default();
            format!(
                "{} hang-ups, reconnect {shortest:.1?} to {longest:.1?} after each",
                waits.len()
            )
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_peer_every_5_s_loses_and_duplicates_nothing() {
    let name = "reset_peer";
    scenario(
        name,
        |g| g.set_toxic(Some(Gate::reset_peer(RESET_EVERY))),
        async |p: &Pipeline, until| reconnects(name, p, until, 2).await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_data_of_64_kib_per_connection_loses_and_duplicates_nothing() {
    let name = "limit_data";
    scenario(
        name,
        |g| g.set_toxic(Some(Gate::limit_data(LIMIT_DATA))),
        async |p: &Pipeline, until| reconnects(name, p, until, 2).await,
    )
    .await;
}
