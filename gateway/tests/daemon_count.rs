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

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use fivezero_gateway::buffer::{Buffer, BufferOptions};
use fivezero_gateway::config::Config;
use fivezero_gateway::daemon;
use fivezero_model::topic::Topics;
use fivezero_model::wire::{self, Quality, Reading, Value};
use fivezero_sim::server::{DeviceSnapshot, ServedValue, SimulatorHandle};
use kit::Probe;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// The scenario's site, a topic level.
const SITE: &str = "qingdao-greensail";
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

/// The gateway config file's text: four devices of the simulator at 200 ms.
fn config_text(
    sim: &SimulatorHandle,
    state_dir: &Path,
    url: &str,
    prefix: &str,
    id: &str,
) -> String {
    let mut text = format!(
        r#"
[gateway]
id = "{id}"
site = "{SITE}"
state_dir = "{}"
shutdown_timeout = "5s"

[metrics]
listen = ""

[mqtt]
url = "{url}"
prefix = "{prefix}"
keep_alive = "5s"

[buffer]
max_bytes = "64 MiB"
"#,
        state_dir.display()
    );
    for (name, profile, unit, addr) in sim::devices(sim) {
        if DEVICES.contains(&name.as_str()) {
            text.push_str(&format!(
                r#"
[[device]]
name = "{name}"
profile = "{profile}"
tcp = "{addr}"
unit = {unit}
interval = "200ms"
timeout = "500ms"
"#
            ));
        }
    }
    text
}

/// What the subscriber has received, by sequence.
#[derive(Debug, Default)]
struct Received {
    readings: BTreeMap<u64, Reading>,
    duplicates: u64,
    batches: u64,
    epochs: Vec<wire::Epoch>,
}

impl Received {
    fn take(&mut self, payload: &[u8], gateway: &str) {
        let batch = wire::decode_batch(payload).expect("a valid batch");
        assert_eq!(
            (batch.gateway.as_str(), batch.site.as_str()),
            (gateway, SITE)
        );
        assert_eq!(batch.count as usize, batch.readings.len());
        if !self.epochs.contains(&batch.epoch) {
            self.epochs.push(batch.epoch);
        }
        self.batches += 1;
        for (seq, reading) in (batch.first_seq..).zip(batch.readings) {
            match self.readings.get(&seq) {
                Some(seen) => {
                    assert_eq!(
                        seen, &reading,
                        "seq {seq} arrived twice with different readings"
                    );
                    self.duplicates += 1;
                }
                None => {
                    self.readings.insert(seq, reading);
                }
            }
        }
    }

    /// Cycles of `device` received: how often its most frequent metric came (points with a
    /// longer interval come in fewer cycles).
    fn cycles(&self, device: &str) -> usize {
        let mut per_metric: HashMap<&str, usize> = HashMap::new();
        for r in self.readings.values().filter(|r| r.device == device) {
            *per_metric.entry(r.metric.as_str()).or_default() += 1;
        }
        per_metric.values().copied().max().unwrap_or(0)
    }

    fn max_seq(&self) -> u64 {
        self.readings.last_key_value().map_or(0, |(s, _)| *s)
    }

    fn contiguous(&self) -> u64 {
        let seqs = self.readings.keys().copied().collect();
        kit::contiguous(&seqs)
    }
}

/// Takes every batch message that arrives within `limit`, until `done` holds.
async fn collect_until(
    probe: &mut Probe,
    topic: &str,
    gateway: &str,
    got: &mut Received,
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&Received) -> bool,
) {
    let deadline = Instant::now() + limit;
    while !done(got) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(m) = probe.next(left).await else {
            panic!(
                "timed out after {limit:?} waiting for {what}: {} sequences, highest {}, contiguous to {}",
                got.readings.len(),
                got.max_seq(),
                got.contiguous()
            );
        };
        if m.topic == topic {
            got.take(&m.payload, gateway);
        }
    }
}

/// Checks a reading against what the simulator serves for its device and metric.
fn check(snapshot: &DeviceSnapshot, seq: u64, r: &Reading) {
    let point = snapshot
        .points
        .iter()
        .find(|p| p.metric == Some(r.metric.as_str()))
        .unwrap_or_else(|| panic!("seq {seq}: {} has no point for {}", r.device, r.metric));
    assert_eq!(
        r.quality,
        Quality::Good,
        "seq {seq}: {} {} is not good: {:?}",
        r.device,
        r.metric,
        r.reason
    );
    match (&r.value, &point.value) {
        (Some(Value::Number(x)), ServedValue::Number(y)) => assert!(
            x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()),
            "seq {seq}: {} {} read {x}, the simulator serves {y}",
            r.device,
            r.metric
        ),
        (Some(Value::Text(_)), ServedValue::Text(_)) | (None, ServedValue::NotAvailable(_)) => {}
        (got, served) => panic!(
            "seq {seq}: {} {} read {got:?} ({:?}), the simulator serves {served:?}",
            r.device, r.metric, r.reason
        ),
    }
}

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
    std::fs::write(&file, config_text(&sim, &state_dir, &url, &prefix, &id)).unwrap();
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
        check(snapshot, seq, r);
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
