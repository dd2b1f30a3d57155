//! What the daemon end-to-end tests share: the gateway config they run, and a subscriber-side
//! record of every batch received, checked for identical duplicates as it arrives.
//!
//! Include with `#[path = "common/daemon_kit.rs"] mod daemon_kit;` beside `mod sim;` (the
//! fixtures/sim.rs helper) and `mod kit;` (common/publish_kit.rs).

#![allow(dead_code)] // Each test file uses its own part.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fivezero_model::wire::{self, Reading};
use fivezero_sim::server::SimulatorHandle;
use tokio::time::Instant;

use super::kit::{self, Probe};
use super::sim;

/// The scenario's site, a topic level.
pub(crate) const SITE: &str = "qingdao-greensail";

/// The gateway config file's text: `devices` of the simulator, polled every 200 ms, then
/// `extra` (whole sections, such as `[publish]`).
pub(crate) fn config_text(
    sim: &SimulatorHandle,
    devices: &[&str],
    state_dir: &Path,
    url: &str,
    prefix: &str,
    id: &str,
    extra: &str,
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
        if devices.contains(&name.as_str()) {
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
    text.push_str(extra);
    text
}

/// What the subscribers have received, by sequence.
#[derive(Debug, Default)]
pub(crate) struct Received {
    pub(crate) readings: BTreeMap<u64, Reading>,
    pub(crate) duplicates: u64,
    /// The sequence of every duplicate, in the order received.
    pub(crate) duplicate_seqs: Vec<u64>,
    pub(crate) batches: u64,
    pub(crate) epochs: Vec<wire::Epoch>,
    /// When set, [`collect_until`] plays the sink: after each batch it publishes, retained on
    /// this topic, the watermark of the contiguous sequences received.
    pub(crate) ack_topic: Option<String>,
    /// The watermark last published.
    pub(crate) acked: u64,
}

impl Received {
    pub(crate) fn take(&mut self, payload: &[u8], gateway: &str) {
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
                    self.duplicate_seqs.push(seq);
                }
                None => {
                    self.readings.insert(seq, reading);
                }
            }
        }
    }

    /// Cycles of `device` received: how often its most frequent metric came (points with a
    /// longer interval come in fewer cycles).
    pub(crate) fn cycles(&self, device: &str) -> usize {
        let mut per_metric: HashMap<&str, usize> = HashMap::new();
        for r in self.readings.values().filter(|r| r.device == device) {
            *per_metric.entry(r.metric.as_str()).or_default() += 1;
        }
        per_metric.values().copied().max().unwrap_or(0)
    }

    /// Whether a reading of `device` polled at or after `ts` has arrived.
    pub(crate) fn has_after(&self, device: &str, ts: i64) -> bool {
        self.readings
            .values()
            .any(|r| r.device == device && r.ts >= ts)
    }

    pub(crate) fn max_seq(&self) -> u64 {
        self.readings.last_key_value().map_or(0, |(s, _)| *s)
    }

    pub(crate) fn contiguous(&self) -> u64 {
        let seqs = self.readings.keys().copied().collect();
        kit::contiguous(&seqs)
    }
}

/// Takes every batch message that arrives within `limit`, until `done` holds.
pub(crate) async fn collect_until(
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
            acknowledge(probe, gateway, got).await;
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch (the readings' clock).
pub(crate) fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_millis()).expect("milliseconds fit in i64")
}

/// As the sink: publishes the watermark of the contiguous sequences received when it moved
/// (only with `got.ack_topic` set, and one epoch received).
pub(crate) async fn acknowledge(probe: &Probe, gateway: &str, got: &mut Received) {
    let (Some(topic), [epoch]) = (got.ack_topic.clone(), got.epochs.as_slice()) else {
        return;
    };
    let seq = got.contiguous();
    if seq > got.acked {
        let ack = wire::AckWatermark {
            schema: wire::SCHEMA_VERSION,
            gateway: gateway.to_owned(),
            streams: vec![wire::StreamAck { epoch: *epoch, seq }],
            ts: now_ms(),
        };
        probe.publish_retained(&topic, wire::encode(&ack)).await;
        got.acked = seq;
    }
}
