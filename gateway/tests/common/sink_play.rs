//! The test playing the cloud sink for one gateway: it takes the `batches` and `gaps`
//! messages a [`Probe`] receives, keeps every reading by sequence (an identical duplicate is
//! counted, a different one fails the test) and every declared gap, and publishes, retained
//! on the gateway's `ack` topic, the watermark of the sequences covered with no hole below
//! it, a declared gap counting as covered (`wire::StreamAck`).
//!
//! Include with `#[path = "common/sink_play.rs"] mod sink_play;` beside `mod kit;`
//! (common/publish_kit.rs) and `mod daemon_kit;` (common/daemon_kit.rs).

#![allow(dead_code)] // Each test file uses its own part.

use std::collections::BTreeMap;
use std::time::Duration;

use fivezero_model::topic::Topics;
use fivezero_model::wire::{self, Epoch, Gap, Reading};

use super::daemon_kit::{SITE, now_ms};
use super::kit::Probe;

/// What the sink has received, in arrival order where it matters.
#[derive(Debug)]
pub(crate) struct Sink {
    gateway: String,
    batches_topic: String,
    gaps_topic: String,
    ack_topic: String,
    /// Readings by sequence, with the arrival number of the message that first brought each.
    pub(crate) readings: BTreeMap<u64, (Reading, u64)>,
    /// Every gap notice, with its arrival number (a repeated notice is kept once).
    pub(crate) gaps: Vec<(Gap, u64)>,
    /// Gaps by first sequence → last sequence, for the watermark.
    gap_index: BTreeMap<u64, u64>,
    /// Readings received again, identical.
    pub(crate) duplicates: u64,
    /// The sequence of every reading received again, in arrival order.
    pub(crate) duplicate_seqs: Vec<u64>,
    /// Batch messages received.
    pub(crate) batches: u64,
    /// Messages taken so far (batches and gaps).
    pub(crate) arrivals: u64,
    /// Epochs seen, in order.
    pub(crate) epochs: Vec<Epoch>,
    /// Whether the watermark is published (the test may hold it back).
    pub(crate) acking: bool,
    /// Highest sequence covered with no hole below it.
    covered: u64,
    /// The watermark last published.
    pub(crate) acked: u64,
}

impl Sink {
    /// A sink for the gateway of `topics`, acknowledging.
    pub(crate) fn new(topics: &Topics, gateway: &str) -> Self {
        Self {
            gateway: gateway.to_owned(),
            batches_topic: topics.batches().to_owned(),
            gaps_topic: topics.gaps().to_owned(),
            ack_topic: topics.ack().to_owned(),
            readings: BTreeMap::new(),
            gaps: Vec::new(),
            gap_index: BTreeMap::new(),
            duplicates: 0,
            duplicate_seqs: Vec::new(),
            batches: 0,
            arrivals: 0,
            epochs: Vec::new(),
            acking: true,
            covered: 0,
            acked: 0,
        }
    }

    /// The topics a probe subscribes to for this sink.
    pub(crate) fn filters(&self) -> Vec<String> {
        vec![self.batches_topic.clone(), self.gaps_topic.clone()]
    }

    fn epoch_seen(&mut self, epoch: Epoch) {
        if !self.epochs.contains(&epoch) {
            self.epochs.push(epoch);
        }
    }

    /// Takes one received message; other topics are ignored.
    pub(crate) fn take(&mut self, topic: &str, payload: &[u8]) {
        if topic == self.batches_topic {
            let batch = wire::decode_batch(payload).expect("a valid batch");
            assert_eq!(
                (batch.gateway.as_str(), batch.site.as_str()),
                (self.gateway.as_str(), SITE)
            );
            assert_eq!(batch.count as usize, batch.readings.len());
            self.arrivals += 1;
            self.batches += 1;
            self.epoch_seen(batch.epoch);
            for (seq, reading) in (batch.first_seq..).zip(batch.readings) {
                match self.readings.get(&seq) {
                    Some((seen, _)) => {
                        assert_eq!(
                            seen, &reading,
                            "seq {seq} arrived twice with different readings"
                        );
                        self.duplicates += 1;
                        self.duplicate_seqs.push(seq);
                    }
                    None => {
                        self.readings.insert(seq, (reading, self.arrivals));
                    }
                }
            }
        } else if topic == self.gaps_topic {
            let gap = wire::decode_gap(payload).expect("a valid gap notice");
            assert_eq!(
                (gap.gateway.as_str(), gap.site.as_str()),
                (self.gateway.as_str(), SITE)
            );
            assert!(gap.count > 0, "an empty gap: {gap:?}");
            self.arrivals += 1;
            self.epoch_seen(gap.epoch);
            if self.gaps.iter().any(|(g, _)| g == &gap) {
                return;
            }
            let last = gap.first_seq + u64::from(gap.count) - 1;
            let entry = self.gap_index.entry(gap.first_seq).or_insert(last);
            *entry = (*entry).max(last);
            self.gaps.push((gap, self.arrivals));
        } else {
            return;
        }
        self.advance();
    }

    fn advance(&mut self) {
        loop {
            let next = self.covered + 1;
            if self.readings.contains_key(&next) {
                self.covered = next;
                continue;
            }
            match self.gap_index.range(..=next).next_back() {
                Some((_, &last)) if last >= next => self.covered = last,
                _ => return,
            }
        }
    }

    /// Highest sequence covered by readings and gaps with no hole below it.
    pub(crate) fn covered(&self) -> u64 {
        self.covered
    }

    /// Highest sequence received, as a reading or in a gap.
    pub(crate) fn max_seq(&self) -> u64 {
        let readings = self.readings.last_key_value().map_or(0, |(s, _)| *s);
        let gaps = self.gap_index.values().copied().max().unwrap_or(0);
        readings.max(gaps)
    }

    /// Sum of the gaps' counts.
    pub(crate) fn gap_total(&self) -> u64 {
        self.gaps.iter().map(|(g, _)| u64::from(g.count)).sum()
    }

    /// Whether a reading of `device` polled at or after `ts` has arrived.
    pub(crate) fn has_after(&self, device: &str, ts: i64) -> bool {
        self.readings
            .values()
            .any(|(r, _)| r.device == device && r.ts >= ts)
    }

    /// Publishes the watermark when it moved (acknowledging, one epoch received).
    pub(crate) async fn acknowledge(&mut self, probe: &Probe) {
        let [epoch] = self.epochs.as_slice() else {
            return;
        };
        if !self.acking || self.covered <= self.acked {
            return;
        }
        let ack = wire::AckWatermark {
            schema: wire::SCHEMA_VERSION,
            gateway: self.gateway.clone(),
            streams: vec![wire::StreamAck {
                epoch: *epoch,
                seq: self.covered,
            }],
            ts: now_ms(),
        };
        probe
            .publish_retained(&self.ack_topic, wire::encode(&ack))
            .await;
        self.acked = self.covered;
    }

    /// Takes what arrives within `wait` (at least one message if one comes), acknowledging
    /// after each; returns how many messages were taken.
    pub(crate) async fn pump(&mut self, probe: &mut Probe, wait: Duration) -> usize {
        let mut taken = 0;
        let Some(first) = probe.next(wait).await else {
            return 0;
        };
        self.take(&first.topic, &first.payload);
        taken += 1;
        for m in probe.drain() {
            self.take(&m.topic, &m.payload);
            taken += 1;
        }
        self.acknowledge(probe).await;
        taken
    }
}
