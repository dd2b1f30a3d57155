//! One conformance suite for both stores: every property below runs on SQLite (a fresh file
//! per test) and on PostgreSQL (a fresh schema per test, dropped afterwards) when
//! `FIVEZERO_TEST_POSTGRES` names a server (`postgres://postgres@127.0.0.1:5432/test`).
//! Without the variable the PostgreSQL half prints "skipped: FIVEZERO_TEST_POSTGRES not set"
//! and passes.

#[path = "common/both_stores.rs"]
#[macro_use]
mod both_stores;

use std::collections::BTreeSet;
use std::sync::Arc;

use both_stores::{postgres_url, scratch};
use fivezero_model::wire::{
    Batch, BufferState, Epoch, Gap, GapReason, KpiBatch, KpiQuality, KpiRecord, Period, Presence,
    Quality, Reading, SCHEMA_VERSION, Status, StreamAck, TierOutcome, TierStatus, Value, Window,
};
use fivezero_sink::store::postgres::PgStore;
use fivezero_sink::store::sqlite::SqliteStore;
use fivezero_sink::store::{HashedBatch, Outcome, RawMessage, ReadingsQuery, Store};
use fivezero_sink::validate::RejectReason;

const SITE: &str = "site-a";
const GW: &str = "gw-1";
const EPOCH: Epoch = Epoch(0x3f9c_2a7e_5b1d_4c08);
const T0: i64 = 1_780_000_000_000;

fn reading(seq: u64, salt: f64) -> Reading {
    Reading {
        ts: T0 + i64::try_from(seq).unwrap() * 1000,
        device: if seq.is_multiple_of(2) { "meter" } else { "pv" }.into(),
        metric: "electricity.import_energy".into(),
        value: Some(Value::Number(seq as f64 + salt)),
        quality: Quality::Good,
        reason: None,
    }
}

fn batch(epoch: Epoch, first: u64, count: u32, salt: f64) -> Batch {
    Batch {
        schema: SCHEMA_VERSION,
        gateway: GW.into(),
        site: SITE.into(),
        epoch,
        first_seq: first,
        count,
        readings: (first..first + u64::from(count))
            .map(|s| reading(s, salt))
            .collect(),
    }
}

fn raw(topic: &str) -> RawMessage {
    RawMessage {
        topic: topic.into(),
        payload: b"{\"raw\":true}".to_vec(),
        received_at: T0,
    }
}

fn hashed(b: Batch) -> Arc<HashedBatch> {
    Arc::new(HashedBatch::new(b, raw("t")))
}

fn stored(items: u64, duplicates: u64) -> Outcome {
    Outcome::Stored { items, duplicates }
}

fn ack(seq: u64) -> Vec<StreamAck> {
    vec![StreamAck { epoch: EPOCH, seq }]
}

async fn count_readings<S: Store>(s: &S) -> usize {
    s.readings(ReadingsQuery {
        gateway: Some(GW.into()),
        limit: 100_000,
        ..ReadingsQuery::default()
    })
    .await
    .unwrap()
    .len()
}

// ------------------------------------------------------------------------------------------
// The properties
// ------------------------------------------------------------------------------------------

async fn a_new_batch_is_stored_and_advances_the_watermark<S: Store>(s: S) {
    let c = s
        .store_batch(batch(EPOCH, 1, 10, 0.0), raw("t"))
        .await
        .unwrap();
    assert_eq!(c.outcome, stored(10, 0));
    assert_eq!(c.acks, ack(10));
    assert_eq!(count_readings(&s).await, 10);
    let streams = s.streams().await.unwrap();
    assert_eq!(streams.len(), 1);
    assert_eq!(
        (
            streams[0].watermark,
            streams[0].readings,
            streams[0].site.as_str()
        ),
        (10, 10, SITE)
    );
    assert_eq!(s.watermarks(GW.into()).await.unwrap(), ack(10));
}

async fn the_same_batch_again_is_a_duplicate_and_changes_nothing<S: Store>(s: S) {
    s.store_batch(batch(EPOCH, 1, 10, 0.0), raw("t"))
        .await
        .unwrap();
    let c = s
        .store_batch(batch(EPOCH, 1, 10, 0.0), raw("t"))
        .await
        .unwrap();
    assert_eq!(c.outcome, Outcome::Duplicate { items: 10 });
    assert_eq!(c.acks, ack(10), "a duplicate still reports the watermark");
    assert_eq!(count_readings(&s).await, 10);
    assert!(s.quarantined(10).await.unwrap().is_empty());
}

async fn different_content_at_stored_sequences_is_quarantined_and_changes_nothing<S: Store>(s: S) {
    s.store_batch(batch(EPOCH, 1, 10, 0.0), raw("t"))
        .await
        .unwrap();
    let before = s
        .readings(ReadingsQuery {
            limit: 100,
            ..ReadingsQuery::default()
        })
        .await
        .unwrap();
    // 6..=15: 6..=10 stored with other values, 11..=15 new; nothing of it may be stored.
    let mut conflicting = raw("fivezero/v1/site-a/gw-1/batches");
    conflicting.payload = b"conflicting bytes".to_vec();
    let c = s
        .store_batch(batch(EPOCH, 6, 10, 0.5), conflicting)
        .await
        .unwrap();
    assert!(matches!(c.outcome, Outcome::Conflict { .. }), "{c:?}");
    assert_eq!(c.acks, ack(10));
    let after = s
        .readings(ReadingsQuery {
            limit: 100,
            ..ReadingsQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(before, after);
    let q = s.quarantined(10).await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!((q[0].first_seq, q[0].count), (6, 10));
    assert_eq!(q[0].payload, b"conflicting bytes");
    assert!(q[0].detail.contains("sequence 6"), "{}", q[0].detail);
}

async fn a_differently_cut_replay_stores_only_the_missing_sequences<S: Store>(s: S) {
    s.store_batch(batch(EPOCH, 1, 3, 0.0), raw("t"))
        .await
        .unwrap();
    s.store_batch(batch(EPOCH, 6, 2, 0.0), raw("t"))
        .await
        .unwrap();
    let c = s
        .store_batch(batch(EPOCH, 1, 10, 0.0), raw("t"))
        .await
        .unwrap();
    assert_eq!(c.outcome, stored(5, 5));
    assert_eq!(c.acks, ack(10));
    let seqs: Vec<u64> = s
        .readings(ReadingsQuery {
            limit: 100,
            ..ReadingsQuery::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>(), "each sequence once");
    assert_eq!(s.streams().await.unwrap()[0].readings, 10);
}

async fn the_watermark_follows_the_ledger_not_arrival_order<S: Store>(s: S) {
    let c = s
        .store_batch(batch(EPOCH, 11, 10, 0.0), raw("t"))
        .await
        .unwrap();
    assert_eq!(c.acks, ack(0), "1..=10 missing");
    let c = s
        .store_batch(batch(EPOCH, 21, 5, 0.0), raw("t"))
        .await
        .unwrap();
    assert_eq!(c.acks, ack(0));
    let c = s
        .store_batch(batch(EPOCH, 1, 10, 0.0), raw("t"))
        .await
        .unwrap();
    assert_eq!(c.acks, ack(25), "the hole is filled");
}

async fn declared_gaps_count_as_covered_and_a_repeated_gap_is_a_duplicate<S: Store>(s: S) {
    s.store_batch(batch(EPOCH, 1, 5, 0.0), raw("t"))
        .await
        .unwrap();
    s.store_batch(batch(EPOCH, 21, 5, 0.0), raw("t"))
        .await
        .unwrap();
    let gap = Gap {
        schema: SCHEMA_VERSION,
        gateway: GW.into(),
        site: SITE.into(),
        epoch: EPOCH,
        first_seq: 6,
        count: 15,
        reason: GapReason::BufferFull,
        declared_at: T0,
    };
    let c = s.store_gap(gap.clone(), T0).await.unwrap();
    assert_eq!(c.outcome, stored(15, 0));
    assert_eq!(c.acks, ack(25));
    let c = s.store_gap(gap, T0).await.unwrap();
    assert_eq!(c.outcome, Outcome::Duplicate { items: 15 });
    let gaps = s.gaps(GW.into()).await.unwrap();
    assert_eq!(gaps.len(), 1);
    assert_eq!(
        (gaps[0].first_seq, gaps[0].count, gaps[0].reason.as_str()),
        (6, 15, "buffer_full")
    );
    assert_eq!(s.streams().await.unwrap()[0].gap_seqs, 15);
}

fn kpi(end: i64) -> KpiRecord {
    KpiRecord {
        kpi: "zero_waste.total_recovery_rate".into(),
        window: Window {
            start: end - 900_000,
            end,
            period: Period::FifteenMinutes,
            tz: "Asia/Shanghai".into(),
        },
        numerator: Some(990.0),
        denominator: Some(1000.0),
        value: Some(0.99),
        unit: "1".into(),
        coverage: 0.75,
        quality: KpiQuality::Estimated,
        tiers: vec![TierStatus {
            tier: "A".into(),
            status: TierOutcome::Achieved,
        }],
        factors: vec![fivezero_model::wire::Factor {
            name: "grid".into(),
            value: 0.5703,
            unit: "kgCO2/kWh".into(),
            source: "MEE 2023".into(),
        }],
        formula_version: 3,
        flags: vec!["meter_reset".into()],
    }
}

async fn kpi_records_share_the_sequence_space_and_round_trip<S: Store>(s: S) {
    s.store_batch(batch(EPOCH, 1, 2, 0.0), raw("t"))
        .await
        .unwrap();
    let records = vec![kpi(T0), kpi(T0 + 900_000)];
    let k = KpiBatch {
        schema: SCHEMA_VERSION,
        gateway: GW.into(),
        site: SITE.into(),
        epoch: EPOCH,
        first_seq: 3,
        count: 2,
        records: records.clone(),
    };
    let c = s.store_kpis(k.clone(), raw("t")).await.unwrap();
    assert_eq!(c.outcome, stored(2, 0));
    assert_eq!(c.acks, ack(4));
    assert_eq!(
        s.store_kpis(k, raw("t")).await.unwrap().outcome,
        Outcome::Duplicate { items: 2 }
    );
    let got = s.kpi_records(GW.into()).await.unwrap();
    assert_eq!(got.iter().map(|k| k.seq).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(
        got.into_iter().map(|k| k.record).collect::<Vec<_>>(),
        records
    );
    // Readings over the KPI records' sequences conflict.
    let c = s
        .store_batch(batch(EPOCH, 3, 1, 0.0), raw("t"))
        .await
        .unwrap();
    assert!(matches!(c.outcome, Outcome::Conflict { .. }));
    let info = &s.streams().await.unwrap()[0];
    assert_eq!((info.readings, info.kpis), (2, 2));
}

async fn readings_round_trip_exactly<S: Store>(s: S) {
    let mut b = batch(EPOCH, 1, 4, 0.0);
    b.readings[0].value = Some(Value::Number(0.1 + 0.2));
    b.readings[1].value = Some(Value::Text("SN-1234".into()));
    b.readings[2].value = None;
    b.readings[2].quality = Quality::Error;
    b.readings[2].reason = Some("timeout".into());
    b.readings[3].quality = Quality::Stale;
    b.readings[3].value = Some(Value::Number(-1.0e-300));
    s.store_batch(b.clone(), raw("t")).await.unwrap();
    let got = s
        .readings(ReadingsQuery {
            limit: 10,
            ..ReadingsQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|r| r.reading.clone()).collect::<Vec<_>>(),
        b.readings
    );
    assert!(got.iter().all(|r| r.epoch == EPOCH.to_string()));
    // Filters by site, device, metric and time.
    let pv = s
        .readings(ReadingsQuery {
            site: Some(SITE.into()),
            device: Some("pv".into()),
            metric: Some("electricity.import_energy".into()),
            from: Some(T0 + 1000),
            to: Some(T0 + 3001),
            limit: 10,
            ..ReadingsQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(pv.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 3]);
    let none = s
        .readings(ReadingsQuery {
            site: Some("other".into()),
            limit: 10,
            ..ReadingsQuery::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
}

async fn epochs_are_separate_streams_with_their_own_watermarks<S: Store>(s: S) {
    let other = Epoch(1);
    s.store_batch(batch(EPOCH, 1, 3, 0.0), raw("t"))
        .await
        .unwrap();
    let c = s
        .store_batch(batch(other, 1, 5, 0.0), raw("t"))
        .await
        .unwrap();
    assert_eq!(c.outcome, stored(5, 0), "same sequences, other epoch: new");
    let acks: BTreeSet<_> = c.acks.into_iter().map(|a| (a.epoch, a.seq)).collect();
    assert_eq!(acks, BTreeSet::from([(EPOCH, 3), (other, 5)]));
    assert_eq!(count_readings(&s).await, 8);
}

async fn dead_letters_keep_the_raw_bytes_and_the_reason<S: Store>(s: S) {
    let mut r = raw("fivezero/v1/site-a/gw-1/batches");
    r.payload = vec![0xff, 0x00, b'{'];
    s.dead_letter(r, RejectReason::Malformed, "not JSON".into())
        .await
        .unwrap();
    let d = s.dead_letters(10).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].payload, [0xff, 0x00, b'{']);
    assert_eq!(
        (
            d[0].reason.as_str(),
            d[0].detail.as_str(),
            d[0].topic.as_str()
        ),
        ("malformed", "not JSON", "fivezero/v1/site-a/gw-1/batches")
    );
}

async fn status_records_presence_and_buffer_figures<S: Store>(s: S) {
    s.store_batch(batch(EPOCH, 1, 7, 0.0), raw("t"))
        .await
        .unwrap();
    let online = Status {
        schema: SCHEMA_VERSION,
        gateway: GW.into(),
        site: SITE.into(),
        state: Presence::Online,
        ts: T0,
        version: "0.1.0".into(),
        epoch: Some(EPOCH),
        profiles: vec!["sunspec-inverter".into()],
        buffer: Some(BufferState {
            committed_seq: 12,
            published_seq: 10,
            broker_acked_seq: 9,
            sink_acked_seq: 7,
            bytes: 4096,
            oldest_unsent_ts: Some(T0),
        }),
    };
    s.store_status(online, T0 + 5).await.unwrap();
    let g = s.gateways().await.unwrap();
    assert_eq!(g.len(), 1);
    assert_eq!(
        (
            g[0].state.as_str(),
            g[0].last_seen,
            g[0].backlog,
            g[0].watermark
        ),
        ("online", T0 + 5, Some(5), Some(7))
    );
    s.store_status(Status::offline_will(GW, SITE, "0.1.0", T0), T0 + 9)
        .await
        .unwrap();
    let g = s.gateways().await.unwrap();
    assert_eq!((g[0].state.as_str(), g[0].last_seen), ("offline", T0 + 9));
    assert_eq!(
        g[0].epoch.as_deref(),
        Some(EPOCH.to_string().as_str()),
        "the will keeps the known epoch"
    );
}

async fn batches_stored_together_have_each_the_outcome_they_would_have_alone<S: Store>(s: S) {
    s.store_batch(batch(EPOCH, 1, 5, 0.0), raw("t"))
        .await
        .unwrap();
    let commits = s
        .store_batches(vec![
            hashed(batch(EPOCH, 6, 5, 0.0)),
            hashed(batch(EPOCH, 1, 5, 0.0)),
            hashed(batch(EPOCH, 11, 5, 0.0)),
            hashed(batch(EPOCH, 1, 5, 1.0)),
        ])
        .await
        .unwrap();
    let outcomes: Vec<_> = commits.iter().map(|c| c.outcome.clone()).collect();
    assert_eq!(
        outcomes[..3],
        [stored(5, 0), Outcome::Duplicate { items: 5 }, stored(5, 0)]
    );
    assert!(
        matches!(outcomes[3], Outcome::Conflict { .. }),
        "{outcomes:?}"
    );
    let acks: Vec<_> = commits.iter().map(|c| c.acks.clone()).collect();
    assert_eq!(acks, [ack(10), ack(10), ack(15), ack(15)]);
    assert_eq!(count_readings(&s).await, 15);
    assert_eq!(s.quarantined(10).await.unwrap().len(), 1);
    assert_eq!(s.watermarks(GW.into()).await.unwrap(), ack(15));
}

async fn concurrent_writers_store_each_sequence_once<S: Store + Clone>(s: S) {
    // 4 writers race over the same 40 batches of 5 readings, in different orders.
    let mut tasks = Vec::new();
    for w in 0..4_u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40_u64 {
                let k = if w.is_multiple_of(2) { i } else { 39 - i };
                s.store_batch(batch(EPOCH, 1 + k * 5, 5, 0.0), raw("t"))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seqs: Vec<u64> = s
        .readings(ReadingsQuery {
            limit: 1000,
            ..ReadingsQuery::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    assert_eq!(s.watermarks(GW.into()).await.unwrap(), ack(200));
    assert!(s.quarantined(10).await.unwrap().is_empty());
}

async fn groups_over_two_streams_in_opposite_orders_all_commit<S: Store + Clone>(s: S) {
    // Four writers store groups covering the same two streams, half in each order: on
    // PostgreSQL each group locks both streams, which can deadlock unless the locks are
    // always taken in one order.
    const OTHER: Epoch = Epoch(0x0123_4567_89ab_cdef);
    let mut tasks = Vec::new();
    for w in 0..4_u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40_u64 {
                let a = hashed(batch(EPOCH, 1 + i * 5, 5, 0.0));
                let b = hashed(batch(OTHER, 1 + i * 5, 5, 0.0));
                let group = if w.is_multiple_of(2) {
                    vec![a, b]
                } else {
                    vec![b, a]
                };
                let commits = s.store_batches(group).await.unwrap();
                assert_eq!(commits.len(), 2);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut marks = s.watermarks(GW.into()).await.unwrap();
    marks.sort_by_key(|a| a.epoch.0);
    assert_eq!(
        marks,
        [
            StreamAck {
                epoch: OTHER,
                seq: 200
            },
            StreamAck {
                epoch: EPOCH,
                seq: 200
            }
        ]
    );
    assert_eq!(count_readings(&s).await, 400);
    assert!(s.quarantined(10).await.unwrap().is_empty());
}

async fn the_schema_is_at_the_latest_version<S: Store>(s: S) {
    assert_eq!(s.schema_version().await.unwrap(), 3);
}

// ------------------------------------------------------------------------------------------
// Backends
// ------------------------------------------------------------------------------------------

both_stores!(
    a_new_batch_is_stored_and_advances_the_watermark,
    the_same_batch_again_is_a_duplicate_and_changes_nothing,
    different_content_at_stored_sequences_is_quarantined_and_changes_nothing,
    a_differently_cut_replay_stores_only_the_missing_sequences,
    the_watermark_follows_the_ledger_not_arrival_order,
    declared_gaps_count_as_covered_and_a_repeated_gap_is_a_duplicate,
    kpi_records_share_the_sequence_space_and_round_trip,
    readings_round_trip_exactly,
    epochs_are_separate_streams_with_their_own_watermarks,
    dead_letters_keep_the_raw_bytes_and_the_reason,
    status_records_presence_and_buffer_figures,
    batches_stored_together_have_each_the_outcome_they_would_have_alone,
    concurrent_writers_store_each_sequence_once,
    groups_over_two_streams_in_opposite_orders_all_commit,
    the_schema_is_at_the_latest_version,
);

#[tokio::test]
async fn reopening_a_sqlite_store_keeps_its_data_and_migrates_nothing() {
    let dir = scratch("reopen");
    let path = dir.join("sink.db");
    let s = SqliteStore::open(&path).await.unwrap();
    s.store_batch(batch(EPOCH, 1, 3, 0.0), raw("t"))
        .await
        .unwrap();
    drop(s);
    let s = SqliteStore::open(&path).await.unwrap();
    assert_eq!(s.schema_version().await.unwrap(), 3);
    assert_eq!(s.watermarks(GW.into()).await.unwrap(), ack(3));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_sqlite_file_from_a_newer_build_is_refused() {
    let dir = scratch("newer");
    let path = dir.join("sink.db");
    drop(SqliteStore::open(&path).await.unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO schema_migrations (version, applied_at) VALUES (99, 0)",
        [],
    )
    .unwrap();
    drop(conn);
    let e = SqliteStore::open(&path).await.unwrap_err();
    assert!(e.to_string().contains("newer"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_opening_a_new_sqlite_file_together_migrate_it_once() {
    let dir = scratch("race");
    let path = dir.join("sink.db");
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move { SqliteStore::open(&path).await })
        })
        .collect();
    for open in opens {
        let store = open.await.unwrap().expect("every open succeeds");
        assert_eq!(store.schema_version().await.unwrap(), 3);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The indexes of `readings` and the names of the query plans' indexes, in SQLite.
fn sqlite_readings_indexes(conn: &rusqlite::Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'readings'
             ORDER BY name",
        )
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn sqlite_readings_keep_only_the_indexes_the_queries_use_after_migration_3() {
    // Given a database at schema version 2, with the two readings indexes it had then
    let dir = scratch("indexes");
    let path = dir.join("sink.db");
    drop(SqliteStore::open(&path).await.unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE INDEX readings_metric ON readings (site, metric, ts);
         CREATE INDEX readings_stream ON readings (gateway, epoch, seq);
         DELETE FROM schema_migrations WHERE version = 3;",
    )
    .unwrap();
    assert_eq!(sqlite_readings_indexes(&conn).len(), 4);
    drop(conn);
    // When it is opened by this build
    let s = SqliteStore::open(&path).await.unwrap();
    assert_eq!(s.schema_version().await.unwrap(), 3);
    drop(s);
    // Then readings keep the series and retention indexes only
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(
        sqlite_readings_indexes(&conn),
        ["readings_retention", "readings_series"]
    );
    // and the series and retention queries are still planned on them
    for (sql, index) in [
        (
            "SELECT ts, value, quality FROM readings
             WHERE site = 's' AND device = 'd' AND metric = 'm' AND ts >= 0 AND ts < 9
             ORDER BY ts LIMIT 10",
            "readings_series",
        ),
        (
            "SELECT device, metric, COUNT(*), MIN(ts), MAX(ts) FROM readings
             WHERE site = 's' GROUP BY device, metric ORDER BY device, metric",
            "readings_series",
        ),
        ("DELETE FROM readings WHERE ts < 5", "readings_retention"),
    ] {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> = stmt
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(plan.iter().any(|p| p.contains(index)), "{sql}: {plan:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres_readings_keep_only_the_indexes_the_queries_use_after_migration_3() {
    let Some(url) = postgres_url() else {
        println!("skipped: FIVEZERO_TEST_POSTGRES not set");
        return;
    };
    // Given a schema at version 2, with the two readings indexes it had then
    let schema = format!("fz_test_{:016x}", rand::random::<u64>());
    drop(PgStore::open(&url, Some(&schema)).await.unwrap());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "SET search_path = {schema};
             CREATE INDEX readings_metric ON readings (site, metric, ts);
             CREATE INDEX readings_stream ON readings (gateway, epoch, seq);
             DELETE FROM schema_migrations WHERE version = 3;"
        ))
        .await
        .unwrap();
    // When this build opens it
    let s = PgStore::open(&url, Some(&schema)).await.unwrap();
    let version = s.schema_version().await;
    drop(s);
    // Then readings keep the series and retention indexes only
    let names: Vec<String> = client
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1
             AND tablename = 'readings' ORDER BY indexname",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    drop(client);
    let _ = driver.await;
    PgStore::drop_schema(&url, &schema).await.unwrap();
    assert_eq!(version.unwrap(), 3);
    assert_eq!(names, ["readings_retention", "readings_series"]);
}
