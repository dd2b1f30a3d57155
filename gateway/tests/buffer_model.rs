//! Model-based test of the buffer (STYLE 11(c), after Vector's disk_v2 model test): random
//! sequences of actions — append, publish a window, broker PUBACK, disconnect, reconnect
//! with or without a session, crash (drop and reopen from disk), eviction under a small byte
//! budget or `max_age`, sink watermark, gap publication — run against the real SQLite buffer
//! in a temporary folder and against a simple reference model. After every action:
//!
//! - nothing acknowledged is returned by `pending` again as new, and `pending` starts at the
//!   first unacknowledged sequence after the cursor, in order, contiguous within a message,
//!   one kind per message, with the exact readings that were appended;
//! - nothing unacknowledged is deleted except by a declared gap, and gaps cover exactly the
//!   evicted sequences (no live row, no double cover; their count equals the eviction
//!   counters);
//! - sequences are contiguous from 1 and never reused;
//! - committed − acknowledged = backlog, and the contiguous acknowledged sequence matches.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use fivezero_gateway::buffer::{Buffer, BufferOptions, RetainUntil};
use fivezero_gateway::config::Synchronous;
use fivezero_gateway::outbox::{Lane, Limits, Outbox};
use fivezero_gateway::poll::DeviceReadings;
use fivezero_model::topic::TopicKind;
use fivezero_model::wire::{
    self, Epoch, KpiQuality, KpiRecord, Period, Quality, Reading, Value, Window,
};
use proptest::prelude::*;

const T0: i64 = 1_750_000_000_000;
const MAX_AGE_MS: i64 = 3_600_000;

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone)]
enum Action {
    Append { n: u8, kpi: bool, salt: u16 },
    Publish { messages: u8, items: u8 },
    PubAck(u8),
    Deliver,
    Disconnect { reached_broker: bool },
    Reconnect { session: bool },
    Crash,
    SinkAck { share: u8 },
    PublishGaps,
    AgeOut { thirds: u8 },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (1_u8..=25, prop::bool::weighted(0.15), any::<u16>())
            .prop_map(|(n, kpi, salt)| Action::Append { n, kpi, salt }),
        3 => (1_u8..=4, 1_u8..=40).prop_map(|(messages, items)| Action::Publish { messages, items }),
        4 => any::<u8>().prop_map(Action::PubAck),
        2 => Just(Action::Deliver),
        1 => any::<bool>().prop_map(|reached_broker| Action::Disconnect { reached_broker }),
        1 => any::<bool>().prop_map(|session| Action::Reconnect { session }),
        1 => Just(Action::Crash),
        2 => any::<u8>().prop_map(|share| Action::SinkAck { share }),
        1 => Just(Action::PublishGaps),
        1 => (1_u8..=4).prop_map(|thirds| Action::AgeOut { thirds }),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum Items {
    Readings(Vec<Reading>),
    Kpis(Vec<KpiRecord>),
}

#[derive(Debug, Default)]
struct Model {
    /// Every row ever appended: first seq → items.
    rows: BTreeMap<u64, Items>,
    next: u64,
    /// Broker acknowledgements the buffer should still remember.
    broker_acked: BTreeSet<u64>,
    sink_w: u64,
    /// Every sequence ever declared as a gap.
    evicted: BTreeSet<u64>,
    /// Sequences declared since the last open (the counters restart with the process).
    evicted_since_open: u64,
    live: BTreeSet<u64>,
    in_flight: Vec<(Epoch, u64, u32)>,
    cursor: u64,
    /// Messages the broker acknowledged but has not delivered to the sink yet.
    broker_queue: Vec<(u64, u32)>,
    sink_stored: BTreeSet<u64>,
}

impl Model {
    fn item_of(&self, seq: u64) -> Option<(bool, &Items, usize)> {
        let (&first, items) = self.rows.range(..=seq).next_back()?;
        let idx = usize::try_from(seq - first).ok()?;
        let len = match items {
            Items::Readings(r) => r.len(),
            Items::Kpis(k) => k.len(),
        };
        (idx < len).then_some((matches!(items, Items::Kpis(_)), items, idx))
    }

    fn acknowledged(&self, seq: u64) -> bool {
        seq <= self.sink_w || self.broker_acked.contains(&seq)
    }

    fn true_watermark(&self) -> u64 {
        let mut w = 0;
        while self.sink_stored.contains(&(w + 1)) || self.evicted.contains(&(w + 1)) {
            w += 1;
        }
        w
    }
}

fn readings(n: u8, salt: u16) -> Vec<Reading> {
    (0..n)
        .map(|i| {
            let k = u32::from(salt) + u32::from(i);
            Reading {
                ts: T0 + i64::from(k % 7),
                device: if k % 11 == 0 {
                    "meter-2".into()
                } else {
                    "dev-1".into()
                },
                metric: format!("metric.{}", k % 9),
                value: match k % 5 {
                    0 => None,
                    1 => Some(Value::Number(f64::from(k) / 3.0)),
                    2 => Some(Value::Text(format!("t{k}"))),
                    _ => Some(Value::Number(f64::from(k) * 0.1)),
                },
                quality: if k % 5 == 0 {
                    Quality::Error
                } else {
                    Quality::Good
                },
                reason: (k % 5 == 0).then(|| "timeout".to_owned()),
            }
        })
        .collect()
}

fn kpis(n: u8, salt: u16) -> Vec<KpiRecord> {
    (0..n.min(3))
        .map(|i| KpiRecord {
            kpi: "zero_energy.self_sufficiency".into(),
            window: Window {
                start: T0 + i64::from(i) * 900_000,
                end: T0 + (i64::from(i) + 1) * 900_000,
                period: Period::FifteenMinutes,
                tz: "Asia/Shanghai".into(),
            },
            numerator: Some(f64::from(salt)),
            denominator: Some(7.0),
            value: Some(f64::from(salt) / 7.0),
            unit: "1".into(),
            coverage: 0.5,
            quality: KpiQuality::Estimated,
            tiers: Vec::new(),
            factors: Vec::new(),
            formula_version: 2,
            flags: vec!["meter_reset".into()],
        })
        .collect()
}

struct Harness {
    dir: PathBuf,
    options: BufferOptions,
    clock: Arc<AtomicI64>,
    buffer: Option<Buffer>,
    model: Model,
    epoch: Epoch,
}

impl Harness {
    fn buffer(&self) -> &Buffer {
        self.buffer.as_ref().expect("open")
    }

    async fn run(&mut self, action: &Action) -> Result<(), TestCaseError> {
        let now = self.clock.load(Ordering::SeqCst);
        match action {
            Action::Append { n, kpi, salt } => {
                let (appended, items) = if *kpi {
                    let k = kpis(*n, *salt);
                    (self.buffer().append_kpis(&k, None).await, Items::Kpis(k))
                } else {
                    let r = readings(*n, *salt);
                    let cycle = DeviceReadings {
                        device: Arc::from("dev-1"),
                        ts_ms: T0,
                        cycle: 0,
                        readings: r.clone(),
                    };
                    (
                        self.buffer().append_readings(&cycle).await,
                        Items::Readings(r),
                    )
                };
                let a = appended.map_err(|e| TestCaseError::fail(format!("append: {e}")))?;
                prop_assert_eq!(a.epoch, self.epoch);
                prop_assert_eq!(a.first_seq, self.model.next, "contiguous, never reused");
                let count = match &items {
                    Items::Readings(r) => r.len(),
                    Items::Kpis(k) => k.len(),
                } as u64;
                self.model.live.extend(a.first_seq..a.first_seq + count);
                self.model.rows.insert(a.first_seq, items);
                self.model.next += count;
            }
            Action::Publish { messages, items } => {
                let limits = Limits {
                    messages: usize::from(*messages),
                    items_per_message: u32::from(*items),
                    bytes_per_message: 4096,
                };
                let out = self
                    .buffer()
                    .pending(Lane::backlog(self.model.cursor), limits)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(out.len() <= usize::from(*messages));
                let first_expected = self
                    .model
                    .live
                    .iter()
                    .find(|&&s| s > self.model.cursor && !self.model.acknowledged(s))
                    .copied();
                prop_assert_eq!(
                    out.first().map(|m| m.first_seq),
                    first_expected,
                    "pending starts at the first unacknowledged sequence"
                );
                let mut prev_last = self.model.cursor;
                for m in &out {
                    prop_assert_eq!(m.epoch, self.epoch);
                    prop_assert!(m.first_seq > prev_last, "in order");
                    prop_assert!(m.count >= 1 && m.count <= u32::from(*items));
                    prev_last = m.last_seq();
                    let mut kinds = BTreeSet::new();
                    for s in m.first_seq..=m.last_seq() {
                        prop_assert!(self.model.live.contains(&s), "seq {} is not stored", s);
                        prop_assert!(
                            !self.model.acknowledged(s),
                            "acknowledged seq {} returned again",
                            s
                        );
                        let (is_kpi, _, _) = self.model.item_of(s).expect("a model row");
                        kinds.insert(is_kpi);
                    }
                    prop_assert_eq!(kinds.len(), 1, "one kind per message");
                    match m.kind {
                        TopicKind::Batches => {
                            let b = wire::decode_batch(&m.payload).expect("batch");
                            b.validate(now)
                                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                            prop_assert_eq!(wire::encode(&b), m.payload.clone());
                            for (i, r) in b.readings.iter().enumerate() {
                                let Some((false, Items::Readings(rs), idx)) =
                                    self.model.item_of(m.first_seq + i as u64)
                                else {
                                    return Err(TestCaseError::fail(
                                        "a reading where the model has none",
                                    ));
                                };
                                prop_assert_eq!(
                                    r,
                                    &rs[idx],
                                    "the stored reading comes back exactly"
                                );
                            }
                        }
                        TopicKind::Kpi => {
                            let b = wire::decode_kpi_batch(&m.payload).expect("kpi batch");
                            b.validate(now)
                                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                            for (i, r) in b.records.iter().enumerate() {
                                let Some((true, Items::Kpis(ks), idx)) =
                                    self.model.item_of(m.first_seq + i as u64)
                                else {
                                    return Err(TestCaseError::fail(
                                        "a KPI record where the model has none",
                                    ));
                                };
                                prop_assert_eq!(r, &ks[idx]);
                            }
                        }
                        other => return Err(TestCaseError::fail(format!("kind {other:?}"))),
                    }
                    self.model.in_flight.push((m.epoch, m.first_seq, m.count));
                }
                if let Some(m) = out.last() {
                    self.model.cursor = m.last_seq();
                }
            }
            Action::PubAck(i) => {
                if !self.model.in_flight.is_empty() {
                    let (epoch, first, count) = self
                        .model
                        .in_flight
                        .remove(usize::from(*i) % self.model.in_flight.len());
                    self.buffer()
                        .broker_acked(epoch, first, count)
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    self.model
                        .broker_acked
                        .extend(first..first + u64::from(count));
                    self.model.broker_queue.push((first, count));
                }
            }
            Action::Deliver => {
                for (first, count) in self.model.broker_queue.drain(..) {
                    self.model
                        .sink_stored
                        .extend(first..first + u64::from(count));
                }
            }
            Action::Disconnect { reached_broker } => {
                if *reached_broker {
                    // The publishes reached the sink, only the PUBACKs were lost.
                    for &(_, first, count) in &self.model.in_flight {
                        self.model
                            .sink_stored
                            .extend(first..first + u64::from(count));
                    }
                }
                self.model.in_flight.clear();
                self.model.cursor = 0;
            }
            Action::Reconnect { session } => {
                self.model.in_flight.clear();
                self.model.cursor = 0;
                if !session {
                    // The broker lost what it queued for the sink; the publisher replays
                    // everything the sink has not confirmed.
                    self.model.broker_queue.clear();
                    self.buffer()
                        .replay_unconfirmed()
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    self.model.broker_acked.clear();
                }
            }
            Action::Crash => {
                drop(self.buffer.take());
                let reopened = Buffer::open(&self.dir, &self.options)
                    .map_err(|e| TestCaseError::fail(format!("reopen: {e}")))?;
                prop_assert_eq!(
                    reopened.epoch(),
                    self.epoch,
                    "a process crash keeps the epoch"
                );
                prop_assert_eq!(reopened.stats().committed_seq, self.model.next - 1);
                self.buffer = Some(reopened);
                self.model.in_flight.clear();
                self.model.cursor = 0;
                self.model.broker_acked.clear();
                self.model.evicted_since_open = 0;
            }
            Action::SinkAck { share } => {
                let w = self.model.true_watermark() * u64::from(*share) / 255;
                self.buffer()
                    .sink_acked(self.epoch, w)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                self.model.sink_w = self.model.sink_w.max(w);
            }
            Action::PublishGaps => {
                let gaps = self
                    .buffer()
                    .pending_gaps()
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                for g in gaps {
                    let gap = wire::decode_gap(&g.payload).expect("gap");
                    gap.validate(now)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(gap.epoch, self.epoch);
                    for s in gap.first_seq..gap.first_seq + u64::from(gap.count) {
                        prop_assert!(
                            self.model.evicted.contains(&s),
                            "a gap over seq {} that was not evicted",
                            s
                        );
                    }
                    self.buffer()
                        .gap_published(g.id)
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
            }
            Action::AgeOut { thirds } => {
                self.clock
                    .fetch_add(i64::from(*thirds) * MAX_AGE_MS / 3 + 1, Ordering::SeqCst);
                self.buffer().maintain().await;
            }
        }
        self.check().await
    }

    /// Compares the database with the model.
    async fn check(&mut self) -> Result<(), TestCaseError> {
        let inv = self
            .buffer()
            .inventory()
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut live = BTreeSet::new();
        for &(epoch, first, count, is_kpi) in &inv.rows {
            prop_assert_eq!(epoch, self.epoch);
            prop_assert!(
                self.model.rows.contains_key(&first),
                "a row the model never appended"
            );
            let (model_kpi, _, _) = self.model.item_of(first).expect("row");
            prop_assert_eq!(model_kpi, is_kpi);
            for s in first..first + count {
                prop_assert!(live.insert(s));
            }
        }
        let mut new_gaps = 0;
        let mut in_gaps = BTreeSet::new();
        for &(epoch, first, count, _) in &inv.gaps {
            prop_assert_eq!(epoch, self.epoch);
            for s in first..first + count {
                prop_assert!(in_gaps.insert(s), "seq {} in two gaps", s);
                prop_assert!(
                    !live.contains(&s),
                    "seq {} both stored and declared a gap",
                    s
                );
                if self.model.evicted.insert(s) {
                    prop_assert!(
                        self.model.live.contains(&s),
                        "a gap over seq {} that was not stored",
                        s
                    );
                    new_gaps += 1;
                }
            }
        }
        self.model.evicted_since_open += new_gaps;
        // Every sequence that left the buffer was acknowledged or declared.
        for &s in self.model.live.difference(&live) {
            let by_sink = s <= self.model.sink_w;
            let by_broker = self.options.retain_until == RetainUntil::BrokerAck
                && self.model.broker_acked.contains(&s);
            prop_assert!(
                by_sink || by_broker || self.model.evicted.contains(&s),
                "seq {} deleted without acknowledgement or gap",
                s
            );
        }
        prop_assert!(live.is_subset(&self.model.live), "a deleted row came back");
        self.model.live = live;
        let stats = self.buffer().stats();
        let committed = self.model.next - 1;
        prop_assert_eq!(stats.committed_seq, committed);
        prop_assert_eq!(stats.epoch, self.epoch);
        let c = &stats.counters;
        prop_assert_eq!(
            c.evicted_buffer_full + c.evicted_max_age,
            self.model.evicted_since_open,
            "evicted = declared"
        );
        let unfinished: Vec<u64> = self
            .model
            .live
            .iter()
            .copied()
            .filter(|&s| !self.model.acknowledged(s))
            .collect();
        prop_assert_eq!(
            stats.backlog,
            unfinished.len() as u64,
            "committed − acknowledged = backlog"
        );
        let floor = unfinished.first().map_or(committed, |&s| s - 1);
        prop_assert_eq!(stats.broker_acked_seq, floor, "contiguous acknowledged");
        prop_assert_eq!(stats.retained_seqs, self.model.live.len() as u64);
        // A publisher starting over gets exactly the unacknowledged sequences.
        let all = Limits {
            messages: 100_000,
            items_per_message: 10_000,
            bytes_per_message: 1 << 20,
        };
        let again = self
            .buffer()
            .pending(Lane::backlog(0), all)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let handed: Vec<u64> = again
            .iter()
            .flat_map(|m| m.first_seq..=m.last_seq())
            .collect();
        prop_assert_eq!(
            handed,
            unfinished,
            "pending(0) = every unacknowledged sequence, once"
        );
        Ok(())
    }
}

fn run_case(actions: &[Action], broker: bool, budget: u64) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!(
        "fivezero-buffer-model-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let clock = Arc::new(AtomicI64::new(T0));
    let mut options = BufferOptions::new("gw-1", "site-1");
    let c = Arc::clone(&clock);
    options.clock = Arc::new(move || c.load(Ordering::SeqCst));
    options.boot_id = Arc::new(|| Some("model-boot".into()));
    options.synchronous = Synchronous::Normal;
    options.max_bytes = budget;
    options.max_age = Duration::from_millis(MAX_AGE_MS as u64);
    options.retain_until = if broker {
        RetainUntil::BrokerAck
    } else {
        RetainUntil::SinkAck
    };
    let result = rt.block_on(async {
        let buffer =
            Buffer::open(&dir, &options).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let epoch = buffer.epoch();
        let mut h = Harness {
            dir: dir.clone(),
            options: options.clone(),
            clock,
            buffer: Some(buffer),
            model: Model {
                next: 1,
                ..Model::default()
            },
            epoch,
        };
        for action in actions {
            h.run(action).await?;
        }
        if std::env::var_os("BUFFER_MODEL_TRACE").is_some() {
            eprintln!(
                "actions {} committed {} evicted {} live {} sink_w {} stored {}",
                actions.len(),
                h.model.next - 1,
                h.model.evicted.len(),
                h.model.live.len(),
                h.model.sink_w,
                h.model.sink_stored.len()
            );
        }
        if let Some(b) = h.buffer.take() {
            b.close().await;
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn the_buffer_behaves_like_the_model(
        actions in prop::collection::vec(action(), 1..48),
        broker in any::<bool>(),
        small in any::<bool>(),
    ) {
        let budget = if small { 40 * 1024 } else { 64 * 1024 * 1024 };
        run_case(&actions, broker, budget)?;
    }
}
