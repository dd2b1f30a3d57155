//! The sink's counters: cheap atomics shared by the ingest task and whoever reads them (tests
//! and the Prometheus endpoint, [`SinkStats::render_prometheus`]). Pairs of counters rather than gauges (received vs
//! stored + duplicates + conflicting + dead letters), so rates and backlogs come from
//! differences.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::validate::RejectReason;

#[derive(Debug, Default)]
struct Inner {
    received: AtomicU64,
    stored_messages: AtomicU64,
    stored_items: AtomicU64,
    duplicate_messages: AtomicU64,
    duplicate_items: AtomicU64,
    conflicting_duplicates: AtomicU64,
    gaps: AtomicU64,
    statuses: AtomicU64,
    ignored: AtomicU64,
    acks_published: AtomicU64,
    acks_republished: AtomicU64,
    store_errors: AtomicU64,
    connections: AtomicU64,
    broker_connected: AtomicBool,
    dead_letters: Mutex<BTreeMap<&'static str, u64>>,
}

/// A handle on the counters; clones share them.
#[derive(Debug, Clone, Default)]
pub struct SinkStats(Arc<Inner>);

/// The counters at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// MQTT messages taken from the broker (every topic).
    pub received: u64,
    /// Batch and KPI messages that stored at least one new sequence.
    pub stored_messages: u64,
    /// Readings and KPI records stored.
    pub stored_items: u64,
    /// Messages whose every sequence was already stored with the same content.
    pub duplicate_messages: u64,
    /// Readings and records received again with the same content (whole or partial overlap).
    pub duplicate_items: u64,
    /// Messages whose content differs from what is stored for the same sequences
    /// (quarantined); expected 0.
    pub conflicting_duplicates: u64,
    /// Gap notices stored (new ones).
    pub gaps: u64,
    /// Status messages stored.
    pub statuses: u64,
    /// Messages deliberately ignored (an empty retained-clear on a status topic).
    pub ignored: u64,
    /// Retained ack watermarks published.
    pub acks_published: u64,
    /// Retained ack watermarks republished because another sink's message left the topic
    /// below what this sink had computed (several sinks in a shared subscription).
    pub acks_republished: u64,
    /// Database failures (the message was not acknowledged and will be redelivered).
    pub store_errors: u64,
    /// Successful connections to the broker.
    pub connections: u64,
    /// Dead letters by reason.
    pub dead_letters: BTreeMap<&'static str, u64>,
}

impl StatsSnapshot {
    /// All dead letters, whatever the reason.
    #[must_use]
    pub fn dead_letters_total(&self) -> u64 {
        self.dead_letters.values().sum()
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl SinkStats {
    /// A message arrived.
    pub fn received(&self) {
        add(&self.0.received, 1);
    }

    /// A batch or KPI message stored `items` new sequences and met `duplicates` known ones.
    pub fn stored(&self, items: u64, duplicates: u64) {
        add(&self.0.stored_messages, 1);
        add(&self.0.stored_items, items);
        add(&self.0.duplicate_items, duplicates);
    }

    /// A batch or KPI message was a whole duplicate of `items` sequences.
    pub fn duplicate(&self, items: u64) {
        add(&self.0.duplicate_messages, 1);
        add(&self.0.duplicate_items, items);
    }

    /// A message conflicted with stored content and was quarantined.
    pub fn conflicting(&self) {
        add(&self.0.conflicting_duplicates, 1);
    }

    /// A new gap notice was stored.
    pub fn gap(&self) {
        add(&self.0.gaps, 1);
    }

    /// A status message was stored.
    pub fn status(&self) {
        add(&self.0.statuses, 1);
    }

    /// A message was ignored on purpose.
    pub fn ignored(&self) {
        add(&self.0.ignored, 1);
    }

    /// A watermark was published.
    pub fn ack_published(&self) {
        add(&self.0.acks_published, 1);
    }

    /// A watermark was republished over a lower one from another sink.
    pub fn ack_republished(&self) {
        add(&self.0.acks_republished, 1);
    }

    /// The database failed.
    pub fn store_error(&self) {
        add(&self.0.store_errors, 1);
    }

    /// The client connected to the broker.
    pub fn connected(&self) {
        add(&self.0.connections, 1);
        self.0.broker_connected.store(true, Ordering::Relaxed);
    }

    /// The connection to the broker was lost.
    pub fn disconnected(&self) {
        self.0.broker_connected.store(false, Ordering::Relaxed);
    }

    /// Whether ingest is connected to the broker now (for `/readyz`).
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.0.broker_connected.load(Ordering::Relaxed)
    }

    /// Every counter in the Prometheus text format (OpenMetrics), for `GET /metrics`.
    #[must_use]
    pub fn render_prometheus(&self) -> String {
        use prometheus_client::encoding::text::encode;
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::gauge::Gauge;
        use prometheus_client::registry::Registry;

        fn counter(r: &mut Registry, name: &str, help: &str, value: u64) {
            let c: Counter<u64, AtomicU64> = Counter::default();
            c.inc_by(value);
            r.register(name, help, c);
        }
        let s = self.snapshot();
        let mut r = Registry::with_prefix("fivezero_sink");
        counter(
            &mut r,
            "messages_received",
            "MQTT messages taken from the broker",
            s.received,
        );
        counter(
            &mut r,
            "messages_stored",
            "Batch and KPI messages that stored new sequences",
            s.stored_messages,
        );
        counter(
            &mut r,
            "items_stored",
            "Readings and KPI records stored",
            s.stored_items,
        );
        counter(
            &mut r,
            "duplicate_messages",
            "Messages already stored with the same content",
            s.duplicate_messages,
        );
        counter(
            &mut r,
            "duplicate_items",
            "Readings and records received again with the same content",
            s.duplicate_items,
        );
        counter(
            &mut r,
            "conflicting_duplicates",
            "Messages quarantined for content differing from what is stored (expected 0)",
            s.conflicting_duplicates,
        );
        counter(&mut r, "gaps", "Gap notices stored", s.gaps);
        counter(
            &mut r,
            "statuses",
            "Gateway status messages stored",
            s.statuses,
        );
        counter(&mut r, "ignored", "Messages ignored on purpose", s.ignored);
        counter(
            &mut r,
            "acks_published",
            "Retained ack watermarks published",
            s.acks_published,
        );
        counter(
            &mut r,
            "acks_republished",
            "Retained ack watermarks republished over a lower one from another sink",
            s.acks_republished,
        );
        counter(
            &mut r,
            "store_errors",
            "Database failures (message redelivered later)",
            s.store_errors,
        );
        counter(
            &mut r,
            "broker_connections",
            "Successful connections to the broker",
            s.connections,
        );
        let dead: Family<Vec<(String, String)>, Counter<u64, AtomicU64>> = Family::default();
        for (reason, n) in &s.dead_letters {
            dead.get_or_create(&vec![("reason".to_owned(), (*reason).to_owned())])
                .inc_by(*n);
        }
        r.register(
            "dead_letters",
            "Refused messages kept in the dead-letter table",
            dead,
        );
        let up: Gauge<i64> = Gauge::default();
        up.set(i64::from(self.is_connected()));
        r.register(
            "broker_connected",
            "1 while ingest is connected to the broker",
            up,
        );
        let mut out = String::new();
        if encode(&mut out, &r).is_err() {
            out = "# encoding failed\n".to_owned();
        }
        out
    }

    /// A message went to the dead letters.
    pub fn dead_letter(&self, reason: RejectReason) {
        let mut map = self
            .0
            .dead_letters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry(reason.as_str()).or_default() += 1;
    }

    /// The counters now.
    #[must_use]
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let i = &self.0;
        StatsSnapshot {
            received: get(&i.received),
            stored_messages: get(&i.stored_messages),
            stored_items: get(&i.stored_items),
            duplicate_messages: get(&i.duplicate_messages),
            duplicate_items: get(&i.duplicate_items),
            conflicting_duplicates: get(&i.conflicting_duplicates),
            gaps: get(&i.gaps),
            statuses: get(&i.statuses),
            ignored: get(&i.ignored),
            acks_published: get(&i.acks_published),
            acks_republished: get(&i.acks_republished),
            store_errors: get(&i.store_errors),
            connections: get(&i.connections),
            dead_letters: i
                .dead_letters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }
}
