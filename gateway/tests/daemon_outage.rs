//! The whole daemon through a broker outage: the Green Sail simulator (frozen clock),
//! `daemon::run` polling two devices every 200 ms, and a private Mosquitto (started by the
//! test on a free port, `persistence false`) that is killed with SIGKILL for 60 seconds while
//! the gateway keeps polling, then restarted on the same port.
//!
//! The test plays the cloud sink: a subscriber on the gateway's `batches` topic that
//! publishes, retained on the `ack` topic, the watermark of the contiguous sequences it holds.
//! It loses its connection with the broker; a new one subscribes once the broker is back.
//! The readings polled during the outage were never acknowledged by any broker, so they reach
//! the new subscriber only because the gateway replays them from its buffer: at once after
//! reconnecting, and again when the watermark stalls (`publish.stall_min = 2s`), which is what
//! heals whatever the gateway published before the new subscriber was there (a real sink keeps
//! a persistent session; this broker forgets sessions when killed). Then every committed
//! sequence must have arrived, in sequence order with non-decreasing timestamps per device,
//! the outage's readings with their original (outage-time) timestamps, and every value what
//! the simulator served.
//!
//! Without `/usr/sbin/mosquitto` the test prints "skipped: … is not installed" and passes.

#[path = "fixtures/sim.rs"]
mod sim;

#[path = "common/publish_kit.rs"]
mod kit;

#[path = "common/daemon_kit.rs"]
mod daemon_kit;

use daemon_kit::{Received, SITE, collect_until, config_text, now_ms};

use std::collections::HashMap;
use std::time::Duration;

use fivezero_gateway::buffer::{Buffer, BufferOptions};
use fivezero_gateway::config::Config;
use fivezero_gateway::daemon;
use fivezero_model::topic::Topics;
use fivezero_model::wire::{Quality, Reading, Value};
use fivezero_sim::server::DeviceSnapshot;
use kit::{Mosquitto, Probe};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Devices of the scenario polled by the gateway.
const DEVICES: [&str; 2] = ["grid-meter", "pv-roof-a"];
/// Cycles of every device to see before the broker dies.
const CYCLES: usize = 5;
/// How long the broker stays dead (the outage).
const OUTAGE: Duration = Duration::from_secs(60);
/// Limit on each wait.
const LIMIT: Duration = Duration::from_secs(60);
/// The publisher's settings for the test: reconnect within 5 s of the broker's return, replay
/// what the sink has not confirmed 2 s after its watermark stalls.
const PUBLISH: &str = "
[publish]
backoff_min = \"200ms\"
backoff_max = \"5s\"
stall_min = \"2s\"
stall_max = \"4s\"
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_polled_while_the_broker_is_down_arrive_in_order_with_their_timestamps() {
    if !Mosquitto::available() {
        return;
    }
    let started = Instant::now();

    // Given a private broker, the simulator with its clock frozen
    let mut broker = Mosquitto::start("daemon-outage", "").await;
    let sim = sim::greensail(0.0).await;
    // and a gateway config of its own (id, topic prefix, state folder)
    let id = format!("gw-outage-{:08x}", rand::random::<u32>());
    let prefix = format!("fivezero-test-{:016x}/v1", rand::random::<u64>());
    let dir = std::env::temp_dir().join(format!(
        "fivezero-daemon-outage-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let state_dir = dir.join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let file = dir.join("gateway.toml");
    let url = broker.url().to_string();
    std::fs::write(
        &file,
        config_text(&sim, &DEVICES, &state_dir, &url, &prefix, &id, PUBLISH),
    )
    .unwrap();
    let config = Config::load(&file).unwrap_or_else(|e| panic!("the config loads: {e}"));
    assert_eq!(config.devices.len(), DEVICES.len());
    let buffer_options = BufferOptions::from_config(&config.gateway, &config.buffer);
    let topics = Topics::new(&prefix, SITE, &id).unwrap();
    let batches = topics.batches().to_owned();

    // and a subscriber on its batches before it starts
    let mut probe = Probe::start(&broker.url(), std::slice::from_ref(&batches)).await;

    // When the daemon runs until five cycles of every device have arrived
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let daemon = tokio::spawn(daemon::run(config, async move {
        let _ = stop_rx.await;
    }));
    let mut got = Received {
        ack_topic: Some(topics.ack().to_owned()),
        ..Received::default()
    };
    collect_until(
        &mut probe,
        &batches,
        &id,
        &mut got,
        LIMIT,
        "five cycles of every device",
        |g| DEVICES.iter().all(|d| g.cycles(d) >= CYCLES),
    )
    .await;

    // and the broker dies (SIGKILL: nothing saved) for the outage while polling goes on
    broker.kill();
    let killed_ms = now_ms();
    for m in probe.drain() {
        if m.topic == batches {
            got.take(&m.payload, &id);
        }
    }
    drop(probe);
    let before_outage = got.max_seq();
    tokio::time::sleep(OUTAGE).await;

    // and comes back on the same port, with a new subscriber
    broker.restart().await;
    let restarted_ms = now_ms();
    let mut probe = Probe::start(&broker.url(), std::slice::from_ref(&batches)).await;
    collect_until(
        &mut probe,
        &batches,
        &id,
        &mut got,
        LIMIT,
        "readings of every device polled after the restart, with no hole below them",
        |g| DEVICES.iter().all(|d| g.has_after(d, restarted_ms)) && g.contiguous() == g.max_seq(),
    )
    .await;
    let _ = stop_tx.send(());
    tokio::time::timeout(LIMIT, daemon)
        .await
        .expect("the daemon stops within the limit")
        .expect("the daemon task does not panic")
        .expect("the daemon runs without error");

    // Then the buffer, reopened, has committed what the subscriber gets
    let buffer = Buffer::open(&state_dir, &buffer_options).expect("the buffer reopens");
    let stats = buffer.stats();
    buffer.close().await;
    let committed = stats.committed_seq;
    collect_until(
        &mut probe,
        &batches,
        &id,
        &mut got,
        LIMIT,
        "every committed sequence",
        |g| g.contiguous() >= committed.max(g.max_seq()),
    )
    .await;
    let n = got.max_seq();
    assert_eq!(got.contiguous(), n, "a hole in the sequences");
    assert_eq!(
        committed, n,
        "the buffer committed {committed} sequences, the subscribers got 1..={n}"
    );
    assert!(n > before_outage);
    assert_eq!(got.epochs, [stats.epoch], "one stream, the buffer's");

    // and the readings polled during the outage are there with their outage-time timestamps
    let during: Vec<&Reading> = got
        .readings
        .values()
        .filter(|r| r.ts > killed_ms && r.ts < restarted_ms)
        .collect();
    for d in DEVICES {
        assert!(
            during.iter().any(|r| r.device == d),
            "no reading of {d} polled during the outage ({killed_ms}..{restarted_ms})"
        );
    }
    let during_cycles: Vec<usize> = DEVICES
        .iter()
        .map(|d| {
            let mut per_metric: HashMap<&str, usize> = HashMap::new();
            for r in during.iter().filter(|r| r.device == *d) {
                *per_metric.entry(r.metric.as_str()).or_default() += 1;
            }
            per_metric.values().copied().max().unwrap_or(0)
        })
        .collect();
    // Polling every 200 ms for 6 s: far more than one cycle each.
    assert!(
        during_cycles.iter().all(|&c| c >= 5),
        "outage cycles per device {during_cycles:?}"
    );

    // and every reading is good, holds the served value, and each device's clock never goes back.
    let snapshots: HashMap<&str, DeviceSnapshot> = DEVICES
        .iter()
        .map(|&d| (d, sim.snapshot(d).expect("a snapshot")))
        .collect();
    let mut last_ts: HashMap<&str, i64> = HashMap::new();
    let mut numbers = 0;
    for (&seq, r) in &got.readings {
        let snapshot = snapshots
            .get(r.device.as_str())
            .unwrap_or_else(|| panic!("seq {seq}: unknown device {}", r.device));
        assert_eq!(
            r.quality,
            Quality::Good,
            "seq {seq}: {} {} is not good: {:?}",
            r.device,
            r.metric,
            r.reason
        );
        sim::check(snapshot, r).unwrap_or_else(|e| panic!("seq {seq}: {e}"));
        if matches!(r.value, Some(Value::Number(_))) {
            numbers += 1;
        }
        let last = last_ts.entry(snapshot.device.as_str()).or_insert(i64::MIN);
        assert!(
            r.ts >= *last,
            "seq {seq}: {} ts {} before the previous {}",
            r.device,
            r.ts,
            *last
        );
        *last = r.ts;
    }
    println!(
        "C = {n} sequences in {} batches ({} duplicate readings); {before_outage} before the outage, \
         {} polled during it (cycles per device {during_cycles:?}); {numbers} numbers compared; {:?}",
        got.batches,
        got.duplicates,
        during.len(),
        started.elapsed()
    );

    drop(probe);
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
