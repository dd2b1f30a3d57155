//! The whole daemon end to end: the Green Sail simulator (frozen clock), `daemon::run` with a
//! config file of four devices polled every 200 ms, the machine's Mosquitto
//! (`FIVEZERO_TEST_MQTT`) and a subscriber on the gateway's `batches` topic.
//!
//! After at least ten cycles of every device have reached the subscriber, the daemon is
//! stopped. Then every committed sequence must have arrived exactly once (an exact duplicate
//! is tolerated: QoS 1), with the value the simulator served, and the buffer, reopened, must
//! hold exactly as many committed sequences as were delivered.
//!
//! Without the variable the test prints "skipped: FIVEZERO_TEST_MQTT not set" and passes.

#[path = "fixtures/sim.rs"]
mod sim;

#[path = "common/publish_kit.rs"]
mod kit;

#[path = "common/daemon_kit.rs"]
mod daemon_kit;

use daemon_kit::{Received, SITE, collect_until, config_text};

use std::collections::HashMap;
use std::time::Duration;

use fivezero_gateway::buffer::{Buffer, BufferOptions};
use fivezero_gateway::config::Config;
use fivezero_gateway::daemon;
use fivezero_model::topic::Topics;
use fivezero_model::wire::{Quality, Value};
use fivezero_sim::server::DeviceSnapshot;
use kit::Probe;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Devices of the scenario's `main` listener polled by the gateway.
const DEVICES: [&str; 4] = [
    "grid-meter",
    "pv-roof-a",
    "sorting-line-meter",
    "water-reused",
];
/// Cycles of every device to see before stopping.
const CYCLES: usize = 10;
/// Limit on each wait.
const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_polled_reading_arrives_once_with_its_value_and_matches_the_buffer() {
    let Ok(url) = std::env::var("FIVEZERO_TEST_MQTT") else {
        println!("skipped: FIVEZERO_TEST_MQTT not set");
        return;
    };
    let broker = kit::shared_broker().expect("FIVEZERO_TEST_MQTT is mqtt://host[:port]");
    let started = Instant::now();

    // Given the simulator with its clock frozen
    let sim = sim::greensail(0.0).await;
    // and a gateway config of its own (id, topic prefix, state folder)
    let id = format!("gw-count-{:08x}", rand::random::<u32>());
    let prefix = format!("fivezero-test-{:016x}/v1", rand::random::<u64>());
    let dir = std::env::temp_dir().join(format!(
        "fivezero-daemon-count-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let state_dir = dir.join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        config_text(&sim, &DEVICES, &state_dir, &url, &prefix, &id, ""),
    )
    .unwrap();
    let config = Config::load(&file).unwrap_or_else(|e| panic!("the config loads: {e}"));
    assert_eq!(config.devices.len(), DEVICES.len());
    let buffer_options = BufferOptions::from_config(&config.gateway, &config.buffer);
    let topics = Topics::new(&prefix, SITE, &id).unwrap();
    let batches = topics.batches().to_owned();

    // and a subscriber on its batches before it starts
    let mut probe = Probe::start(&broker, std::slice::from_ref(&batches)).await;

    // When the daemon runs until every device's tenth cycle has arrived
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let daemon = tokio::spawn(daemon::run(config, async move {
        let _ = stop_rx.await;
    }));
    let mut got = Received::default();
    collect_until(
        &mut probe,
        &batches,
        &id,
        &mut got,
        LIMIT,
        "ten cycles of every device",
        |g| DEVICES.iter().all(|d| g.cycles(d) >= CYCLES),
    )
    .await;
    let at_stop = got.readings.len();
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
    assert_eq!(got.readings.len() as u64, n);
    assert_eq!(
        committed, n,
        "the buffer committed {committed} sequences, the subscriber got 1..={n}"
    );
    assert_eq!(got.epochs, [stats.epoch], "one stream, the buffer's");
    assert!(n as usize >= at_stop);

    // and every reading is good, holds the served value, and each device's clock never goes back.
    let snapshots: HashMap<&str, DeviceSnapshot> = DEVICES
        .iter()
        .map(|&d| (d, sim.snapshot(d).expect("a snapshot")))
        .collect();
    let mut last_ts: HashMap<&str, i64> = HashMap::new();
    let numbers = got
        .readings
        .values()
        .filter(|r| matches!(r.value, Some(Value::Number(_))))
        .count();
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
    let cycles: Vec<usize> = DEVICES.iter().map(|d| got.cycles(d)).collect();
    assert!(cycles.iter().all(|&c| c >= CYCLES), "cycles {cycles:?}");
    println!(
        "N = {n} sequences in {} batches ({} duplicate readings), {at_stop} when stopping, {numbers} numbers compared; \
         cycles per device {cycles:?}; {:?}",
        got.batches,
        got.duplicates,
        started.elapsed()
    );

    // Clean up the retained status and the files.
    probe.publish_retained(topics.status(), Vec::new()).await;
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
