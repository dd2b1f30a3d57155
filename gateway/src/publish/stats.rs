//! The publisher's counters, written by the publisher task and read by anyone.
//!
//! [`PublishStats`] is an `Arc` of atomics: cloning it is cheap, and [`PublishStats::snapshot`]
//! reads every field with relaxed loads, so it never blocks publishing (fields may be from
//! instants a few microseconds apart). Counters only grow; `connected`, `in_flight` and
//! `sink_watermark` are gauges.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
struct Cells {
    connected: AtomicBool,
    connects: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    disconnects: AtomicU64,
    published_messages: AtomicU64,
    published_readings: AtomicU64,
    republished_messages: AtomicU64,
    broker_acks: AtomicU64,
    broker_acked_readings: AtomicU64,
    rejected: AtomicU64,
    gaps_published: AtomicU64,
    oversized: AtomicU64,
    sink_acks: AtomicU64,
    malformed_acks: AtomicU64,
    sink_watermark: AtomicU64,
    replays: AtomicU64,
    outbox_errors: AtomicU64,
    in_flight: AtomicU64,
}

/// A cheap handle on the publisher's counters.
#[derive(Debug, Clone, Default)]
pub struct PublishStats(Arc<Cells>);

/// The publisher's counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Connected to the broker now (gauge).
    pub connected: bool,
    /// Connections made (CONNACK received), the first included.
    pub connects: u64,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Connection attempts that failed before a CONNACK.
    pub connect_failures: u64,
    /// Established connections that were lost.
    pub disconnects: u64,
    /// Batch and KPI messages handed to the client (republications included).
    pub published_messages: u64,
    /// Readings and KPI records in those messages.
    pub published_readings: u64,
    /// Messages handed to the client again, after a reconnect or a replay.
    pub republished_messages: u64,
    /// Batch and KPI messages the broker acknowledged (PUBACK).
    pub broker_acks: u64,
    /// Readings and KPI records in those messages.
    pub broker_acked_readings: u64,
    /// Publishes the broker refused (MQTT 5 PUBACK with an error reason code).
    pub rejected: u64,
    /// Gap notices the broker acknowledged.
    pub gaps_published: u64,
    /// Messages larger than the broker accepts, left in the buffer.
    pub oversized: u64,
    /// Well-formed sink watermarks received.
    pub sink_acks: u64,
    /// Payloads on the ack topic that could not be decoded (or named another gateway).
    pub malformed_acks: u64,
    /// The sink's watermark for the current epoch, as last received (gauge).
    pub sink_watermark: u64,
    /// Replays started because the sink's watermark stalled behind the broker's acks.
    pub replays: u64,
    /// Buffer operations that failed (retried).
    pub outbox_errors: u64,
    /// Publishes queued or in flight now (gauge).
    pub in_flight: u64,
}

impl PublishStats {
    /// The counters now.
    #[must_use]
    pub fn snapshot(&self) -> StatsSnapshot {
        let c = &self.0;
        StatsSnapshot {
            connected: c.connected.load(Relaxed),
            connects: c.connects.load(Relaxed),
            reconnects: c.reconnects.load(Relaxed),
            connect_failures: c.connect_failures.load(Relaxed),
            disconnects: c.disconnects.load(Relaxed),
            published_messages: c.published_messages.load(Relaxed),
            published_readings: c.published_readings.load(Relaxed),
            republished_messages: c.republished_messages.load(Relaxed),
            broker_acks: c.broker_acks.load(Relaxed),
            broker_acked_readings: c.broker_acked_readings.load(Relaxed),
            rejected: c.rejected.load(Relaxed),
            gaps_published: c.gaps_published.load(Relaxed),
            oversized: c.oversized.load(Relaxed),
            sink_acks: c.sink_acks.load(Relaxed),
            malformed_acks: c.malformed_acks.load(Relaxed),
            sink_watermark: c.sink_watermark.load(Relaxed),
            replays: c.replays.load(Relaxed),
            outbox_errors: c.outbox_errors.load(Relaxed),
            in_flight: c.in_flight.load(Relaxed),
        }
    }

    pub(super) fn connected(&self, first: bool) {
        self.0.connected.store(true, Relaxed);
        self.0.connects.fetch_add(1, Relaxed);
        if !first {
            self.0.reconnects.fetch_add(1, Relaxed);
        }
    }

    pub(super) fn down(&self, was_connected: bool) {
        self.0.connected.store(false, Relaxed);
        self.0.in_flight.store(0, Relaxed);
        if was_connected {
            self.0.disconnects.fetch_add(1, Relaxed);
        } else {
            self.0.connect_failures.fetch_add(1, Relaxed);
        }
    }

    pub(super) fn stopped(&self) {
        self.0.connected.store(false, Relaxed);
        self.0.in_flight.store(0, Relaxed);
    }

    pub(super) fn published(&self, readings: u32, republished: bool) {
        self.0.published_messages.fetch_add(1, Relaxed);
        self.0
            .published_readings
            .fetch_add(u64::from(readings), Relaxed);
        if republished {
            self.0.republished_messages.fetch_add(1, Relaxed);
        }
    }

    pub(super) fn broker_acked(&self, readings: u32) {
        self.0.broker_acks.fetch_add(1, Relaxed);
        self.0
            .broker_acked_readings
            .fetch_add(u64::from(readings), Relaxed);
    }

    pub(super) fn rejected(&self) {
        self.0.rejected.fetch_add(1, Relaxed);
    }

    pub(super) fn gap_published(&self) {
        self.0.gaps_published.fetch_add(1, Relaxed);
    }

    pub(super) fn oversized(&self) {
        self.0.oversized.fetch_add(1, Relaxed);
    }

    pub(super) fn sink_ack(&self, watermark: Option<u64>) {
        self.0.sink_acks.fetch_add(1, Relaxed);
        if let Some(seq) = watermark {
            self.0.sink_watermark.fetch_max(seq, Relaxed);
        }
    }

    pub(super) fn malformed_ack(&self) {
        self.0.malformed_acks.fetch_add(1, Relaxed);
    }

    pub(super) fn replay(&self) {
        self.0.replays.fetch_add(1, Relaxed);
    }

    pub(super) fn outbox_error(&self) {
        self.0.outbox_errors.fetch_add(1, Relaxed);
    }

    pub(super) fn in_flight(&self, n: usize) {
        self.0
            .in_flight
            .store(u64::try_from(n).unwrap_or(u64::MAX), Relaxed);
    }
}
