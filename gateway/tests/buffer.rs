//! The SQLite buffer through its public API: sequences, pending messages, acknowledgements in
//! both retention modes, restarts, epochs, the byte and age budgets, a full disk, a damaged
//! file, refused input.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use fivezero_gateway::buffer::{
    AppendError, Buffer, BufferError, BufferOptions, FILE_NAME, RetainUntil,
};
use fivezero_gateway::config::Synchronous;
use fivezero_gateway::outbox::{Lane, Limits, Outbox, Outgoing};
use fivezero_gateway::poll::DeviceReadings;
use fivezero_model::topic::TopicKind;
use fivezero_model::wire::{
    self, Epoch, GapReason, KpiQuality, KpiRecord, Period, Quality, Reading, Value, Window,
};

const T0: i64 = 1_750_000_000_000;

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A fresh folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fivezero-buffer-{}-{}-{name}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

struct TestClock(Arc<AtomicI64>);

impl TestClock {
    fn new() -> Self {
        Self(Arc::new(AtomicI64::new(T0)))
    }
    fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn options(clock: &TestClock, boot: &str) -> BufferOptions {
    let mut o = BufferOptions::new("gw-1", "site-1");
    let c = Arc::clone(&clock.0);
    o.clock = Arc::new(move || c.load(Ordering::SeqCst));
    let boot = boot.to_owned();
    o.boot_id = Arc::new(move || Some(boot.clone()));
    o
}

fn cycle(n: usize, ts: i64, salt: usize) -> DeviceReadings {
    DeviceReadings {
        device: Arc::from("pv-roof-a"),
        ts_ms: ts,
        cycle: 1,
        readings: (0..n)
            .map(|i| Reading {
                ts,
                device: "pv-roof-a".into(),
                metric: format!("metric.m{i}"),
                value: Some(Value::Number(((i + salt) as f64) * 0.1)),
                quality: Quality::Good,
                reason: None,
            })
            .collect(),
    }
}

fn kpi(start: i64) -> KpiRecord {
    KpiRecord {
        kpi: "zero_waste.total_recovery_rate".into(),
        window: Window {
            start,
            end: start + 900_000,
            period: Period::FifteenMinutes,
            tz: "Asia/Shanghai".into(),
        },
        numerator: Some(9.5),
        denominator: Some(10.0),
        value: Some(0.95),
        unit: "1".into(),
        coverage: 1.0,
        quality: KpiQuality::Ok,
        tiers: Vec::new(),
        factors: Vec::new(),
        formula_version: 1,
        flags: Vec::new(),
    }
}

fn big() -> Limits {
    Limits {
        messages: 1000,
        items_per_message: 10_000,
        bytes_per_message: 1 << 20,
    }
}

/// Every sequence covered by the messages, checking each payload against the wire contract.
fn covered(messages: &[Outgoing], now: i64) -> Vec<u64> {
    let mut seqs = Vec::new();
    for m in messages {
        match m.kind {
            TopicKind::Batches => {
                let b = wire::decode_batch(&m.payload).expect("a batch");
                b.validate(now).expect("a valid batch");
                assert_eq!(
                    (b.epoch, b.first_seq, b.count),
                    (m.epoch, m.first_seq, m.count)
                );
                assert_eq!(wire::encode(&b), m.payload, "the payload is canonical");
            }
            TopicKind::Kpi => {
                let b = wire::decode_kpi_batch(&m.payload).expect("a KPI batch");
                b.validate(now).expect("a valid KPI batch");
                assert_eq!(
                    (b.epoch, b.first_seq, b.count),
                    (m.epoch, m.first_seq, m.count)
                );
            }
            other => panic!("unexpected kind {other:?}"),
        }
        seqs.extend(m.first_seq..=m.last_seq());
    }
    seqs
}

fn integrity(dir: &Path) -> String {
    let conn = rusqlite::Connection::open(dir.join(FILE_NAME)).expect("open");
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

#[tokio::test]
async fn appends_get_contiguous_sequences_from_one_and_pending_returns_valid_batches() {
    let dir = scratch("basic");
    let clock = TestClock::new();
    let buffer = Buffer::open(&dir, &options(&clock, "boot-a")).expect("open");
    let mut committed = buffer.committed();
    let a = buffer
        .append_readings(&cycle(3, T0, 0))
        .await
        .expect("append");
    let k = buffer
        .append_kpis(&[kpi(T0 - 900_000), kpi(T0)], None)
        .await
        .expect("kpis");
    let b = buffer
        .append_readings(&cycle(4, T0, 1))
        .await
        .expect("append");
    assert_eq!((a.first_seq, a.count), (1, 3));
    assert_eq!((k.first_seq, k.count), (4, 2));
    assert_eq!((b.first_seq, b.count), (6, 4));
    assert!(committed.has_changed().expect("open channel"));
    assert_eq!(*committed.borrow_and_update(), 9);
    assert_eq!(a.epoch, buffer.epoch());

    let out = buffer
        .pending(Lane::backlog(0), big())
        .await
        .expect("pending");
    assert_eq!(
        out.iter()
            .map(|m| (m.kind, m.first_seq, m.count))
            .collect::<Vec<_>>(),
        vec![
            (TopicKind::Batches, 1, 3),
            (TopicKind::Kpi, 4, 2),
            (TopicKind::Batches, 6, 4)
        ]
    );
    assert_eq!(covered(&out, clock.now()), (1..=9).collect::<Vec<_>>());
    let batch = wire::decode_batch(&out[0].payload).expect("batch");
    assert_eq!(
        batch.readings,
        cycle(3, T0, 0).readings,
        "readings come back exactly"
    );
    assert_eq!(
        (batch.gateway.as_str(), batch.site.as_str()),
        ("gw-1", "site-1")
    );
    let kb = wire::decode_kpi_batch(&out[1].payload).expect("kpi batch");
    assert_eq!(kb.records, vec![kpi(T0 - 900_000), kpi(T0)]);

    let stats = buffer.stats();
    assert_eq!((stats.committed_seq, stats.backlog, stats.rows), (9, 9, 3));
    assert_eq!(stats.counters.appended_readings, 7);
    assert_eq!(stats.counters.appended_kpis, 2);
    buffer.close().await;
    assert_eq!(integrity(&dir), "ok");
}

#[tokio::test]
async fn cycles_committed_together_get_a_row_each_and_a_bad_one_is_refused_alone() {
    let dir = scratch("group");
    let clock = TestClock::new();
    let buffer = Buffer::open(&dir, &options(&clock, "boot-a")).expect("open");
    let mut bad = cycle(2, T0, 9);
    bad.readings[1].value = Some(Value::Number(f64::NAN));
    let group = [cycle(3, T0, 0), bad, cycle(4, T0, 1), cycle(1, T0, 2)];
    let results = buffer.append_cycles(&group).await;
    let got: Vec<Result<(u64, u32), u32>> = results
        .iter()
        .map(|r| match r {
            Ok(a) => Ok((a.first_seq, a.count)),
            Err(e) => Err(e.dropped()),
        })
        .collect();
    assert_eq!(got, [Ok((1, 3)), Err(2), Ok((4, 4)), Ok((8, 1))]);
    let stats = buffer.stats();
    assert_eq!(
        (stats.committed_seq, stats.rows),
        (8, 3),
        "one row per good cycle"
    );
    assert_eq!(stats.counters.dropped_invalid, 2);
    let out = buffer
        .pending(Lane::backlog(0), big())
        .await
        .expect("pending");
    assert_eq!(covered(&out, clock.now()), (1..=8).collect::<Vec<_>>());
    let next = buffer
        .append_readings(&cycle(2, T0, 3))
        .await
        .expect("append");
    assert_eq!(next.first_seq, 9, "the sequence goes on after a group");
    buffer.close().await;
    assert_eq!(integrity(&dir), "ok");
}

#[tokio::test]
async fn pending_merges_contiguous_rows_within_the_limits() {
    let dir = scratch("merge");
    let clock = TestClock::new();
    let buffer = Buffer::open(&dir, &options(&clock, "boot-a")).expect("open");
    for i in 0..10 {
        buffer
            .append_readings(&cycle(15, T0, i))
            .await
            .expect("append");
    }
    let limits = Limits {
        messages: 3,
        items_per_message: 40,
        bytes_per_message: 1 << 20,
    };
    let out = buffer
        .pending(Lane::backlog(0), limits)
        .await
        .expect("pending");
    assert_eq!(
        out.iter()
            .map(|m| (m.first_seq, m.count))
            .collect::<Vec<_>>(),
        vec![(1, 40), (41, 40), (81, 40)],
        "rows are merged and split at the item limit"
    );
    let next = buffer
        .pending(Lane::backlog(120), limits)
        .await
        .expect("pending");
    assert_eq!(
        next.iter()
            .map(|m| (m.first_seq, m.count))
            .collect::<Vec<_>>(),
        vec![(121, 30)]
    );

    let small = Limits {
        messages: 100,
        items_per_message: 10_000,
        bytes_per_message: 2_000,
    };
    let out = buffer
        .pending(Lane::backlog(0), small)
        .await
        .expect("pending");
    assert!(out.iter().all(|m| m.payload.len() <= 2_000));
    assert_eq!(covered(&out, clock.now()), (1..=150).collect::<Vec<_>>());
    let none = Limits {
        messages: 0,
        ..small
    };
    assert!(
        buffer
            .pending(Lane::backlog(0), none)
            .await
            .expect("pending")
            .is_empty()
    );
    buffer.close().await;
}

#[tokio::test]
async fn the_live_lane_reads_above_the_split_and_the_backlog_lane_stops_at_it() {
    // Given 150 readings in rows of 15, split at 100 (inside the row 91..=105)
    let dir = scratch("lanes");
    let clock = TestClock::new();
    let buffer = Buffer::open(&dir, &options(&clock, "boot-a")).expect("open");
    for i in 0..10 {
        buffer
            .append_readings(&cycle(15, T0, i))
            .await
            .expect("append");
    }
    let epoch = buffer.epoch();
    let split = Some((epoch, 100));
    let one = Limits {
        messages: 1,
        items_per_message: 40,
        bytes_per_message: 1 << 20,
    };
    let ranges = |out: &[Outgoing]| {
        out.iter()
            .map(|m| (m.first_seq, m.count))
            .collect::<Vec<_>>()
    };
    // When the two lanes are read in turn
    let backlog = |after| Lane::Backlog {
        after,
        through: split,
    };
    let live = |after| Lane::Live { epoch, after };
    let b1 = buffer.pending(backlog(0), one).await.expect("pending");
    let l1 = buffer.pending(live(100), one).await.expect("pending");
    let b2 = buffer.pending(backlog(40), one).await.expect("pending");
    let l2 = buffer.pending(live(140), one).await.expect("pending");
    let b3 = buffer.pending(backlog(80), big()).await.expect("pending");
    // Then each keeps its own place: the live lane does not move the backlog lane
    assert_eq!(ranges(&b1), [(1, 40)]);
    assert_eq!(ranges(&l1), [(101, 40)]);
    assert_eq!(ranges(&b2), [(41, 40)]);
    assert_eq!(ranges(&l2), [(141, 10)]);
    assert_eq!(ranges(&b3), [(81, 20)], "the backlog stops at the split");
    let mut all: Vec<u64> = [&b1, &l1, &b2, &l2, &b3]
        .iter()
        .flat_map(|out| covered(out, clock.now()))
        .collect();
    all.sort_unstable();
    assert_eq!(all, (1..=150).collect::<Vec<_>>(), "each sequence once");
    assert!(
        buffer
            .pending(backlog(100), big())
            .await
            .expect("pending")
            .is_empty(),
        "nothing left below the split"
    );

    // When the live lane's messages are acknowledged and the lanes merge
    buffer.broker_acked(epoch, 101, 40).await.expect("ack");
    buffer.broker_acked(epoch, 141, 10).await.expect("ack");
    let merged = buffer
        .pending(Lane::backlog(0), big())
        .await
        .expect("pending");
    // Then only what the live lane has not finished comes again (here: nothing above 100)
    assert_eq!(ranges(&merged), [(1, 100)]);

    // And a live lane of an epoch the buffer does not hold reads nothing
    let foreign = Lane::Live {
        epoch: Epoch(epoch.0 ^ 1),
        after: 0,
    };
    assert!(
        buffer
            .pending(foreign, big())
            .await
            .expect("pending")
            .is_empty()
    );
    buffer.close().await;
}

#[tokio::test]
async fn in_broker_ack_mode_acknowledged_rows_are_deleted_and_never_returned_again() {
    let dir = scratch("broker");
    let clock = TestClock::new();
    let mut o = options(&clock, "boot-a");
    o.retain_until = RetainUntil::BrokerAck;
    let buffer = Buffer::open(&dir, &o).expect("open");
    for i in 0..4 {
        buffer
            .append_readings(&cycle(10, T0, i))
            .await
            .expect("append");
    }
    let limits = Limits {
        messages: 10,
        items_per_message: 15,
        bytes_per_message: 1 << 20,
    };
    let out = buffer
        .pending(Lane::backlog(0), limits)
        .await
        .expect("pending");
    assert_eq!(
        out.iter()
            .map(|m| (m.first_seq, m.count))
            .collect::<Vec<_>>(),
        vec![(1, 15), (16, 15), (31, 10)]
    );
    buffer
        .broker_acked(buffer.epoch(), 16, 15)
        .await
        .expect("ack");
    buffer
        .broker_acked(buffer.epoch(), 16, 15)
        .await
        .expect("a duplicate is harmless");
    buffer
        .broker_acked(buffer.epoch(), 500, 3)
        .await
        .expect("an unknown range is ignored");
    // Rows 11..=20 and 21..=30 are fully acknowledged only partly: 16..=30 covers row 21..=30.
    let inv = buffer.inventory().await.expect("inventory");
    assert_eq!(
        inv.rows.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(),
        vec![(1, 10), (11, 10), (31, 10)]
    );
    // Reconnect: everything not acknowledged comes again, nothing acknowledged does.
    let again = buffer
        .pending(Lane::backlog(0), limits)
        .await
        .expect("pending");
    let seqs = covered(&again, clock.now());
    assert_eq!(seqs, (1..=15).chain(31..=40).collect::<Vec<_>>());
    buffer
        .broker_acked(buffer.epoch(), 1, 15)
        .await
        .expect("ack");
    let inv = buffer.inventory().await.expect("inventory");
    assert_eq!(
        inv.rows.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(),
        vec![(31, 10)]
    );
    let stats = buffer.stats();
    assert_eq!(
        (
            stats.broker_acked_seq,
            stats.backlog,
            stats.counters.broker_acked
        ),
        (30, 10, 30)
    );
    buffer.close().await;
}

#[tokio::test]
async fn in_sink_ack_mode_rows_stay_until_the_watermark_passes_them() {
    let dir = scratch("sink");
    let clock = TestClock::new();
    let buffer = Buffer::open(&dir, &options(&clock, "boot-a")).expect("open");
    for i in 0..3 {
        buffer
            .append_readings(&cycle(10, T0, i))
            .await
            .expect("append");
    }
    let out = buffer
        .pending(Lane::backlog(0), big())
        .await
        .expect("pending");
    assert_eq!(out.len(), 1);
    buffer
        .broker_acked(buffer.epoch(), 1, 30)
        .await
        .expect("ack");
    assert!(
        buffer
            .pending(Lane::backlog(0), big())
            .await
            .expect("pending")
            .is_empty()
    );
    assert_eq!(
        buffer.inventory().await.expect("inv").rows.len(),
        3,
        "rows stay"
    );
    let epoch = buffer.epoch();
    buffer
        .sink_acked(Epoch(epoch.0 ^ 1), 30)
        .await
        .expect("a foreign epoch is ignored");
    assert_eq!(buffer.inventory().await.expect("inv").rows.len(), 3);
    buffer.sink_acked(epoch, 15).await.expect("watermark");
    let inv = buffer.inventory().await.expect("inv");
    assert_eq!(
        inv.rows.iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![11, 21],
        "row 11..=20 is only half passed"
    );
    buffer
        .sink_acked(epoch, 10)
        .await
        .expect("backwards is ignored");
    assert_eq!(buffer.stats().sink_acked_seq, 15);
    // A restart forgets the broker's acknowledgements: everything above the watermark comes
    // again.
    buffer.close().await;
    let buffer = Buffer::open(&dir, &options(&clock, "boot-a")).expect("reopen");
    assert_eq!(buffer.epoch(), epoch, "a clean restart keeps the epoch");
    let out = buffer
        .pending(Lane::backlog(0), big())
        .await
        .expect("pending");
    assert_eq!(covered(&out, clock.now()), (16..=30).collect::<Vec<_>>());
    // Replay without a restart.
    buffer
        .broker_acked(buffer.epoch(), 16, 15)
        .await
        .expect("ack");
    assert!(
        buffer
            .pending(Lane::backlog(0), big())
            .await
            .expect("pending")
            .is_empty()
    );
    buffer.replay_unconfirmed().await.expect("replay");
    let out = buffer
        .pending(Lane::backlog(0), big())
        .await
        .expect("pending");
    assert_eq!(covered(&out, clock.now()), (16..=30).collect::<Vec<_>>());
    buffer.sink_acked(epoch, 30).await.expect("watermark");
    assert_eq!(buffer.inventory().await.expect("inv").rows.len(), 0);
    let next = buffer
        .append_readings(&cycle(2, T0, 0))
        .await
        .expect("append");
    assert_eq!(
        next.first_seq, 31,
        "sequences continue after the rows are gone"
    );
    buffer.close().await;
}

#[tokio::test]
async fn a_restart_continues_the_sequence_without_reuse() {
    let dir = scratch("restart");
    let clock = TestClock::new();
    let buffer = Buffer::open(&dir, &options(&clock, "boot-a")).expect("open");
    buffer
        .append_readings(&cycle(5, T0, 0))
        .await
        .expect("append");
    let epoch = buffer.epoch();
    drop(buffer); // no clean close: a crash as far as the database knows
    let buffer = Buffer::open(&dir, &options(&clock, "boot-a")).expect("reopen");
    assert_eq!(
        buffer.epoch(),
        epoch,
        "a process crash under FULL keeps the epoch"
    );
    let b = buffer
        .append_readings(&cycle(5, T0, 0))
        .await
        .expect("append");
    assert_eq!(b.first_seq, 6);
    buffer.close().await;
    assert_eq!(integrity(&dir), "ok");
}

#[tokio::test]
async fn the_figures_after_open_carry_the_file_size_before_any_write() {
    let dir = scratch("file-size");
    let clock = TestClock::new();
    let buffer = Buffer::open(&dir, &options(&clock, "boot-a")).expect("open");
    buffer
        .append_readings(&cycle(50, T0, 0))
        .await
        .expect("append");
    buffer.close().await;
    let on_disk = std::fs::metadata(dir.join(fivezero_gateway::buffer::FILE_NAME))
        .expect("the buffer file")
        .len();
    // `buffer stats` opens the buffer and reads the figures at once.
    let buffer = Buffer::open(&dir, &options(&clock, "boot-a")).expect("reopen");
    let stats = buffer.stats();
    assert!(
        stats.file_bytes >= on_disk && on_disk > 0,
        "{} bytes reported, {on_disk} on disk",
        stats.file_bytes
    );
    assert!(stats.used_bytes > 0);
    buffer.close().await;
}

#[tokio::test]
async fn close_marks_a_clean_stop_and_empties_the_wal() {
    let dir = scratch("close");
    let clock = TestClock::new();
    let buffer = Buffer::open(&dir, &options(&clock, "boot-a")).expect("open");
    let other = buffer.clone();
    buffer
        .append_readings(&cycle(5, T0, 0))
        .await
        .expect("append");
    buffer.close().await;
    assert!(matches!(
        other.append_readings(&cycle(5, T0, 0)).await,
        Err(AppendError::Closed { dropped: 5 })
    ));
    assert!(other.pending(Lane::backlog(0), big()).await.is_err());
    let wal = std::fs::metadata(dir.join(format!("{FILE_NAME}-wal"))).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the WAL is truncated");
    let conn = rusqlite::Connection::open(dir.join(FILE_NAME)).expect("open");
    let clean: i64 = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'clean_shutdown'",
            [],
            |r| r.get(0),
        )
        .expect("meta");
    assert_eq!(clean, 1);
}

#[tokio::test]
async fn the_epoch_rotates_after_a_reboot_following_an_unclean_normal_run() {
    let dir = scratch("rotate");
    let clock = TestClock::new();
    let mut o = options(&clock, "boot-a");
    o.synchronous = Synchronous::Normal;
    let buffer = Buffer::open(&dir, &o).expect("open");
    buffer
        .append_readings(&cycle(5, T0, 0))
        .await
        .expect("append");
    let first = buffer.epoch();
    drop(buffer); // unclean
    // Same boot: a process crash loses nothing, the epoch stays.
    let buffer = Buffer::open(&dir, &o).expect("reopen");
    assert_eq!(buffer.epoch(), first);
    drop(buffer);
    // A new boot after an unclean NORMAL run: a new epoch.
    let mut o2 = options(&clock, "boot-b");
    o2.synchronous = Synchronous::Normal;
    let buffer = Buffer::open(&dir, &o2).expect("reopen");
    let second = buffer.epoch();
    assert_ne!(second, first);
    let a = buffer
        .append_readings(&cycle(3, T0, 0))
        .await
        .expect("append");
    assert_eq!(
        (a.epoch, a.first_seq),
        (second, 1),
        "a new epoch starts at 1"
    );
    // The old epoch's rows go out first, with their own epoch.
    let out = buffer
        .pending(Lane::backlog(0), big())
        .await
        .expect("pending");
    assert_eq!(
        out.iter()
            .map(|m| (m.epoch, m.first_seq, m.count))
            .collect::<Vec<_>>(),
        vec![(first, 1, 5)]
    );
    covered(&out, clock.now());
    buffer.broker_acked(first, 1, 5).await.expect("ack");
    // `after` = 5 belonged to the old epoch; the new one is served from its start.
    let out = buffer
        .pending(Lane::backlog(5), big())
        .await
        .expect("pending");
    assert_eq!(
        out.iter()
            .map(|m| (m.epoch, m.first_seq, m.count))
            .collect::<Vec<_>>(),
        vec![(second, 1, 3)]
    );
    buffer.sink_acked(first, 5).await.expect("old watermark");
    buffer.maintain().await;
    let stats = buffer.stats();
    assert_eq!(
        (stats.epochs, stats.rows),
        (1, 1),
        "the drained old epoch is gone"
    );
    buffer.close().await;
    // A clean stop never rotates, even after a reboot.
    let mut o3 = options(&clock, "boot-c");
    o3.synchronous = Synchronous::Normal;
    let buffer = Buffer::open(&dir, &o3).expect("reopen");
    assert_eq!(buffer.epoch(), second);
    drop(buffer);
    // FULL never rotates.
    let buffer = Buffer::open(&dir, &options(&clock, "boot-d")).expect("reopen");
    let third = buffer.epoch();
    assert_ne!(third, second, "the last run was NORMAL and unclean");
    drop(buffer);
    let buffer = Buffer::open(&dir, &options(&clock, "boot-e")).expect("reopen");
    assert_eq!(buffer.epoch(), third, "a FULL run loses no commit");
    buffer.close().await;
    assert_eq!(integrity(&dir), "ok");
}

#[tokio::test]
async fn a_sink_watermark_beyond_the_commits_starts_a_new_epoch() {
    let dir = scratch("beyond");
    let clock = TestClock::new();
    let buffer = Buffer::open(&dir, &options(&clock, "boot-a")).expect("open");
    buffer
        .append_readings(&cycle(5, T0, 0))
        .await
        .expect("append");
    let first = buffer.epoch();
    buffer.sink_acked(first, 9).await.expect("watermark");
    assert_ne!(buffer.epoch(), first);
    let a = buffer
        .append_readings(&cycle(5, T0, 0))
        .await
        .expect("append");
    assert_eq!((a.epoch, a.first_seq), (buffer.epoch(), 1));
    buffer.close().await;
}

#[tokio::test]
async fn the_byte_budget_evicts_the_oldest_readings_first_and_declares_every_evicted_range() {
    let dir = scratch("budget");
    let clock = TestClock::new();
    let mut o = options(&clock, "boot-a");
    o.max_bytes = 160 * 1024;
    o.synchronous = Synchronous::Normal;
    let buffer = Buffer::open(&dir, &o).expect("open");
    buffer.append_kpis(&[kpi(T0)], None).await.expect("kpi");
    let mut committed = 1;
    for i in 0..400 {
        let a = buffer
            .append_readings(&cycle(100, T0, i))
            .await
            .expect("append");
        assert_eq!(
            a.first_seq,
            committed + 1,
            "no sequence is skipped by eviction"
        );
        committed += 100;
    }
    let stats = buffer.stats();
    assert!(
        stats.used_bytes <= o.max_bytes + 8192,
        "used {} bytes",
        stats.used_bytes
    );
    assert!(stats.charged_bytes <= o.max_bytes);
    let evicted = stats.counters.evicted_buffer_full;
    assert!(evicted > 0);
    let inv = buffer.inventory().await.expect("inventory");
    assert_eq!(
        inv.rows[0],
        (buffer.epoch(), 1, 1, true),
        "the KPI row is kept"
    );
    let gaps = buffer.pending_gaps().await.expect("gaps");
    let mut declared = 0;
    let mut ranges = Vec::new();
    for g in &gaps {
        let gap = wire::decode_gap(&g.payload).expect("gap");
        gap.validate(clock.now()).expect("valid gap");
        assert_eq!(gap.reason, GapReason::BufferFull);
        declared += u64::from(gap.count);
        ranges.push((gap.first_seq, gap.count));
    }
    assert_eq!(declared, evicted, "gaps equal the evicted count");
    // Rows and gaps tile 1..=committed exactly.
    let mut tiles: Vec<(u64, u64)> = inv.rows.iter().map(|r| (r.1, r.2)).collect();
    tiles.extend(ranges.iter().map(|&(f, c)| (f, u64::from(c))));
    tiles.sort_unstable();
    let mut next = 1;
    for (f, c) in tiles {
        assert_eq!(f, next);
        next = f + c;
    }
    assert_eq!(next, committed + 1);
    // Messages never straddle a gap; evicted sequences are never published.
    let out = buffer
        .pending(Lane::backlog(0), big())
        .await
        .expect("pending");
    let seqs = covered(&out, clock.now());
    assert!(seqs.iter().all(|s| {
        !ranges
            .iter()
            .any(|&(f, c)| *s >= f && *s < f + u64::from(c))
    }));
    // A published gap is not listed again.
    for g in &gaps {
        buffer.gap_published(g.id).await.expect("published");
    }
    assert!(buffer.pending_gaps().await.expect("gaps").is_empty());
    buffer.close().await;
    assert_eq!(integrity(&dir), "ok");
}

#[tokio::test]
async fn kpi_rows_go_only_when_no_reading_row_is_left() {
    let dir = scratch("kpi-last");
    let clock = TestClock::new();
    let mut o = options(&clock, "boot-a");
    o.max_bytes = 48 * 1024;
    o.synchronous = Synchronous::Normal;
    let buffer = Buffer::open(&dir, &o).expect("open");
    for i in 0..200 {
        buffer
            .append_kpis(&[kpi(T0 + i * 900_000)], None)
            .await
            .expect("kpi");
    }
    buffer
        .append_readings(&cycle(300, T0, 0))
        .await
        .expect("append");
    let inv = buffer.inventory().await.expect("inventory");
    assert!(
        inv.rows.last().is_some_and(|r| !r.3),
        "the newest readings are kept"
    );
    assert!(
        buffer.stats().counters.evicted_buffer_full > 0,
        "KPI rows were evicted"
    );
    buffer.close().await;
}

#[tokio::test]
async fn rows_older_than_max_age_are_evicted_as_declared_gaps() {
    let dir = scratch("age");
    let clock = TestClock::new();
    let mut o = options(&clock, "boot-a");
    o.max_age = Duration::from_secs(3600);
    let buffer = Buffer::open(&dir, &o).expect("open");
    for i in 0..3 {
        buffer
            .append_readings(&cycle(10, clock.now(), i))
            .await
            .expect("append");
    }
    clock.advance(1_800_000);
    buffer
        .append_readings(&cycle(10, clock.now(), 9))
        .await
        .expect("append");
    clock.advance(1_800_001);
    buffer.maintain().await;
    let inv = buffer.inventory().await.expect("inventory");
    assert_eq!(inv.rows.iter().map(|r| r.1).collect::<Vec<_>>(), vec![31]);
    assert_eq!(
        inv.gaps.iter().map(|g| (g.1, g.2, g.3)).collect::<Vec<_>>(),
        vec![(1, 30, GapReason::MaxAge)]
    );
    let stats = buffer.stats();
    assert_eq!(stats.counters.evicted_max_age, 30);
    assert_eq!(stats.oldest_unsent_age_ms, Some(1_800_001));
    buffer.close().await;
}

#[tokio::test]
async fn a_full_disk_drops_appends_keeps_publishing_and_recovers_by_itself() {
    let dir = scratch("diskfull");
    let clock = TestClock::new();
    let mut o = options(&clock, "boot-a");
    o.page_limit = Some(40);
    let buffer = Buffer::open(&dir, &o).expect("open");
    let mut stored = 0_u64;
    let mut failure = None;
    for i in 0..200 {
        match buffer.append_readings(&cycle(150, T0, i)).await {
            Ok(a) => {
                assert_eq!(a.first_seq, stored + 1);
                stored += 150;
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("the page limit is reached");
    assert_eq!(failure.reason(), "disk_full", "{failure}");
    assert!(buffer.stats().disk_failing);
    // Within 10 s appends are refused without touching the disk.
    assert!(matches!(
        buffer.append_readings(&cycle(150, T0, 0)).await,
        Err(AppendError::DiskFull { dropped: 150, .. })
    ));
    assert_eq!(buffer.stats().counters.dropped_disk_full, 300);
    // Publishing goes on.
    let out = buffer
        .pending(Lane::backlog(0), big())
        .await
        .expect("pending");
    assert_eq!(covered(&out, clock.now()).len() as u64, stored);
    // The sink confirms; the rows go and their pages are free again.
    buffer
        .sink_acked(buffer.epoch(), stored)
        .await
        .expect("watermark");
    assert_eq!(buffer.stats().rows, 0);
    clock.advance(10_000);
    let a = buffer
        .append_readings(&cycle(150, T0, 0))
        .await
        .expect("appends resume after the probe interval");
    assert_eq!(
        a.first_seq,
        stored + 1,
        "no sequence was used by the failed appends"
    );
    assert!(!buffer.stats().disk_failing);
    buffer.close().await;
    assert_eq!(integrity(&dir), "ok");
}

#[tokio::test]
async fn a_damaged_file_is_moved_aside_and_a_new_epoch_starts() {
    let dir = scratch("corrupt");
    std::fs::write(dir.join(FILE_NAME), vec![0x5a; 8192]).expect("garbage");
    let clock = TestClock::new();
    let buffer = Buffer::open(&dir, &options(&clock, "boot-a")).expect("opens anyway");
    let a = buffer
        .append_readings(&cycle(2, T0, 0))
        .await
        .expect("append");
    assert_eq!(a.first_seq, 1);
    buffer.close().await;
    let aside = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().contains(".corrupt-"));
    assert!(aside, "the damaged file is kept for inspection");
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = scratch("newer");
    let clock = TestClock::new();
    Buffer::open(&dir, &options(&clock, "boot-a"))
        .expect("open")
        .close()
        .await;
    let conn = rusqlite::Connection::open(dir.join(FILE_NAME)).expect("open");
    conn.execute(
        "UPDATE meta SET value = 99 WHERE key = 'schema_version'",
        [],
    )
    .expect("update");
    drop(conn);
    assert!(matches!(
        Buffer::open(&dir, &options(&clock, "boot-a")),
        Err(BufferError::NewerSchema { found: 99, .. })
    ));
}

#[tokio::test]
async fn input_the_sink_would_refuse_is_refused_and_counted() {
    let dir = scratch("invalid");
    let clock = TestClock::new();
    let buffer = Buffer::open(&dir, &options(&clock, "boot-a")).expect("open");
    let mut nan = cycle(3, T0, 0);
    nan.readings[1].value = Some(Value::Number(f64::NAN));
    let mut slash = cycle(3, T0, 0);
    slash.readings[2].metric = "a/b".into();
    let mut old = cycle(3, T0, 0);
    old.readings[0].ts = 0;
    for bad in [nan, slash, old, cycle(0, T0, 0)] {
        assert!(matches!(
            buffer.append_readings(&bad).await,
            Err(AppendError::Invalid { .. })
        ));
    }
    let mut k = kpi(T0);
    k.coverage = 2.0;
    assert!(buffer.append_kpis(&[k], None).await.is_err());
    assert!(buffer.append_kpis(&[], None).await.is_err());
    let a = buffer
        .append_readings(&cycle(1, T0, 0))
        .await
        .expect("a good one");
    assert_eq!(a.first_seq, 1, "refused input took no sequence number");
    assert_eq!(buffer.stats().counters.dropped_invalid, 10);
    assert!(matches!(
        Buffer::open(&scratch("badname"), &BufferOptions::new("gw/1", "site")),
        Err(BufferError::Invalid {
            field: "gateway",
            ..
        })
    ));
    buffer.close().await;
}

#[tokio::test]
async fn a_second_process_cannot_write_alongside() {
    let dir = scratch("exclusive");
    let clock = TestClock::new();
    let buffer = Buffer::open(&dir, &options(&clock, "boot-a")).expect("open");
    buffer
        .append_readings(&cycle(1, T0, 0))
        .await
        .expect("append");
    let conn = rusqlite::Connection::open(dir.join(FILE_NAME)).expect("open");
    conn.busy_timeout(Duration::from_millis(100))
        .expect("timeout");
    assert!(
        conn.query_row("SELECT COUNT(*) FROM rows", [], |r| r.get::<_, i64>(0))
            .is_err()
    );
    drop(conn);
    buffer.close().await;
}

#[tokio::test]
async fn stats_convert_to_the_wire_buffer_state() {
    let dir = scratch("state");
    let clock = TestClock::new();
    let buffer = Buffer::open(&dir, &options(&clock, "boot-a")).expect("open");
    buffer
        .append_readings(&cycle(10, T0, 0))
        .await
        .expect("append");
    clock.advance(5_000);
    buffer
        .pending(Lane::backlog(0), big())
        .await
        .expect("pending");
    let state = buffer.state();
    assert_eq!(
        (
            state.committed_seq,
            state.published_seq,
            state.broker_acked_seq,
            state.sink_acked_seq
        ),
        (10, 10, 0, 0)
    );
    assert_eq!(state.oldest_unsent_ts, Some(T0));
    assert!(state.bytes > 0);
    let stats = buffer.stats();
    assert!(stats.headroom_hours.is_some());
    buffer.close().await;
}
