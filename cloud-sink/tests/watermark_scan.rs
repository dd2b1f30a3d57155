//! The watermark over many ledger rows above a hole, on both stores: the live lane stores
//! fresh readings far above the watermark while the replay of an outage is still missing, so
//! hundreds of rows (several chunks of the watermark scan) wait above a hole; the watermark
//! must stay put while they arrive and jump to the end of what is contiguous once the hole is
//! filled, carried over declared gaps, including one that starts exactly where a chunk of the
//! scan ends. Runs on SQLite (a fresh file) and on PostgreSQL (a fresh schema, dropped
//! afterwards) when `FIVEZERO_TEST_POSTGRES` names a server; without it the PostgreSQL half
//! prints "skipped: FIVEZERO_TEST_POSTGRES not set" and passes.

#[path = "common/both_stores.rs"]
#[macro_use]
mod both_stores;

use std::sync::Arc;

use both_stores::{postgres_url, scratch};
use fivezero_model::wire::{
    Batch, Epoch, Gap, GapReason, Quality, Reading, SCHEMA_VERSION, StreamAck, Value,
};
use fivezero_sink::store::ledger::WATERMARK_CHUNK;
use fivezero_sink::store::postgres::PgStore;
use fivezero_sink::store::sqlite::SqliteStore;
use fivezero_sink::store::{HashedBatch, Outcome, RawMessage, Store};

const SITE: &str = "site-a";
const GW: &str = "gw-1";
const EPOCH: Epoch = Epoch(0x5d0c_91aa_27e4_b630);
const T0: i64 = 1_780_000_000_000;

/// The first hole, filled last but one.
const HOLE_1: (u64, u64) = (1, 10);
/// Where the declared gap starts: right after the first chunk the scan reads once the first
/// hole is filled (that row, then `WATERMARK_CHUNK - 1` single-sequence rows).
const GAP_FIRST: u64 = HOLE_1.1 + WATERMARK_CHUNK as u64;
const GAP_LAST: u64 = GAP_FIRST + 34;
/// Single-sequence rows after the gap, then rows of 3 up to the second hole.
const SINGLES_END: u64 = GAP_LAST + 400;
const TRIPLES_END: u64 = SINGLES_END + 3 * 100;
/// The second hole, filled last.
const HOLE_2: (u64, u64) = (TRIPLES_END + 1, TRIPLES_END + 5);
/// Rows of 4 after the second hole.
const END: u64 = HOLE_2.1 + 4 * 24;

fn raw() -> RawMessage {
    RawMessage {
        topic: format!("fivezero/{SITE}/{GW}/batches"),
        payload: b"{\"raw\":true}".to_vec(),
        received_at: T0,
    }
}

fn batch(first: u64, last: u64) -> Arc<HashedBatch> {
    let readings = (first..=last)
        .map(|seq| Reading {
            ts: T0 + i64::try_from(seq).unwrap() * 1000,
            device: "meter".into(),
            metric: "electricity.import_energy".into(),
            value: Some(Value::Number(seq as f64)),
            quality: Quality::Good,
            reason: None,
        })
        .collect();
    let b = Batch {
        schema: SCHEMA_VERSION,
        gateway: GW.into(),
        site: SITE.into(),
        epoch: EPOCH,
        first_seq: first,
        count: u32::try_from(last - first + 1).unwrap(),
        readings,
    };
    Arc::new(HashedBatch::new(b, raw()))
}

/// Every row stored above the first hole, `(first, last)`, newest first as the live lane
/// delivers them interleaved with the replay.
fn rows_above_the_holes() -> Vec<(u64, u64)> {
    let singles = (HOLE_1.1 + 1..GAP_FIRST).chain(GAP_LAST + 1..=SINGLES_END);
    let mut rows: Vec<(u64, u64)> = singles.map(|s| (s, s)).collect();
    rows.extend(
        (SINGLES_END + 1..=TRIPLES_END)
            .step_by(3)
            .map(|s| (s, s + 2)),
    );
    rows.extend((HOLE_2.1 + 1..=END).step_by(4).map(|s| (s, s + 3)));
    rows.reverse();
    rows
}

fn ack(seq: u64) -> Vec<StreamAck> {
    vec![StreamAck { epoch: EPOCH, seq }]
}

async fn store_rows<S: Store>(s: &S, rows: &[(u64, u64)]) -> Vec<Vec<StreamAck>> {
    let mut acks = Vec::new();
    for group in rows.chunks(64) {
        let batches = group.iter().map(|&(a, b)| batch(a, b)).collect();
        for commit in s.store_batches(batches).await.unwrap() {
            assert!(matches!(
                commit.outcome,
                Outcome::Stored { duplicates: 0, .. }
            ));
            acks.push(commit.acks);
        }
    }
    acks
}

async fn many_rows_above_a_hole_then_the_hole_filled_jumps_to_the_end<S: Store>(s: S) {
    // Given hundreds of rows (several scan chunks) and a gap stored above two holes
    let rows = rows_above_the_holes();
    assert!(rows.len() > 3 * WATERMARK_CHUNK, "{} rows", rows.len());
    let acks = store_rows(&s, &rows).await;
    assert!(
        acks.iter().all(|a| *a == ack(0)),
        "the watermark moved with 1..=10 missing"
    );
    let gap = Gap {
        schema: SCHEMA_VERSION,
        gateway: GW.into(),
        site: SITE.into(),
        epoch: EPOCH,
        first_seq: GAP_FIRST,
        count: u32::try_from(GAP_LAST - GAP_FIRST + 1).unwrap(),
        reason: GapReason::BufferFull,
        declared_at: T0,
    };
    assert_eq!(s.store_gap(gap, T0).await.unwrap().acks, ack(0));

    // When the first hole is filled, the watermark runs over every chunk and the gap up to
    // the second hole
    let c = store_rows(&s, &[HOLE_1]).await;
    assert_eq!(c, vec![ack(TRIPLES_END)]);
    assert_eq!(s.watermarks(GW.into()).await.unwrap(), ack(TRIPLES_END));

    // and when the second is filled, to the end
    let c = store_rows(&s, &[HOLE_2]).await;
    assert_eq!(c, vec![ack(END)]);
    let streams = s.streams().await.unwrap();
    assert_eq!(
        (streams.len(), streams[0].watermark, streams[0].readings),
        (1, END, END - (GAP_LAST - GAP_FIRST + 1))
    );
}

async fn a_hole_right_after_the_watermark_holds_it_while_the_live_lane_runs_ahead<S: Store>(s: S) {
    // Given 1..=100 stored in order
    let in_order: Vec<(u64, u64)> = (1..=100).step_by(10).map(|a| (a, a + 9)).collect();
    assert_eq!(store_rows(&s, &in_order).await.last(), Some(&ack(100)));
    // when the live lane stores 102..=1101, one sequence per message, while 101 is missing
    let live: Vec<(u64, u64)> = (102..=1101).map(|a| (a, a)).collect();
    let acks = store_rows(&s, &live).await;
    assert!(acks.iter().all(|a| *a == ack(100)), "moved past the hole");
    // then 101 arriving moves it to the end of the live lane
    assert_eq!(store_rows(&s, &[(101, 101)]).await, vec![ack(1101)]);
    // and a duplicate of any row leaves it there
    let c = s
        .store_batches(vec![batch(500, 500)])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (c.outcome, c.acks),
        (Outcome::Duplicate { items: 1 }, ack(1101))
    );
}

both_stores!(
    many_rows_above_a_hole_then_the_hole_filled_jumps_to_the_end,
    a_hole_right_after_the_watermark_holds_it_while_the_live_lane_runs_ahead,
);
