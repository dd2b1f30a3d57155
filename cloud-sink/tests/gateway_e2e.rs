//! The gateway's real buffer and publisher → the sink's embedded broker → the sink → SQLite:
//! every sequence is stored once, the sink's retained watermark empties the gateway's buffer,
//! a redelivered batch changes nothing, and a conflicting one is quarantined.

mod common;

use std::sync::Arc;

use common::{LIMIT, Probe, Sink, eventually, now_ms, scratch};
use fivezero_gateway::buffer::{Buffer, BufferOptions};
use fivezero_gateway::config::MqttUrl;
use fivezero_gateway::outbox::Outbox;
use fivezero_gateway::poll::DeviceReadings;
use fivezero_gateway::publish::{Publisher, PublisherConfig};
use fivezero_model::topic::Topics;
use fivezero_model::wire::{
    self, Batch, Epoch, Gap, GapReason, KpiBatch, KpiQuality, KpiRecord, Period, Quality, Reading,
    SCHEMA_VERSION, Value, Window,
};
use fivezero_sink::store::sqlite::SqliteStore;
use fivezero_sink::store::{ReadingsQuery, Store};
use tokio::sync::oneshot;

const SITE: &str = "test-site";

fn cycle(ts: i64, n: u32) -> DeviceReadings {
    let device: Arc<str> = Arc::from("meter");
    DeviceReadings {
        device: Arc::clone(&device),
        ts_ms: ts,
        cycle: 0,
        readings: (0..n)
            .map(|i| Reading {
                ts,
                device: "meter".into(),
                metric: if i.is_multiple_of(2) {
                    "electricity.import_energy".into()
                } else {
                    "electricity.export_energy".into()
                },
                value: Some(Value::Number(f64::from(i) + 0.25)),
                quality: Quality::Good,
                reason: None,
            })
            .collect(),
    }
}

async fn all_readings(store: &SqliteStore) -> Vec<(u64, Reading)> {
    store
        .readings(ReadingsQuery {
            limit: 100_000,
            ..ReadingsQuery::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.reading))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_batches_are_stored_once_and_the_sink_watermark_drains_the_buffer() {
    // Given a sink with its embedded broker, and a gateway buffer holding 40 poll cycles
    let dir = scratch("e2e");
    let db = dir.join("sink.db");
    let sink = Sink::embedded(&db, "").await;
    let gateway = format!("gw-{:08x}", rand::random::<u32>());
    let topics = Topics::new("fivezero/v1", SITE, &gateway).unwrap();
    let buffer = Buffer::open(&dir.join("gw"), &BufferOptions::new(&gateway, SITE)).unwrap();
    let ts = now_ms();
    for i in 0..40 {
        buffer.append_readings(&cycle(ts + i, 3)).await.unwrap();
    }

    // When the gateway's publisher runs against the embedded broker, and more cycles land
    let url = MqttUrl {
        tls: false,
        host: "127.0.0.1".into(),
        port: sink.port,
    };
    let publisher = Publisher::new(PublisherConfig::new(topics.clone(), url), buffer.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let running = tokio::spawn(publisher.run(async move {
        let _ = stop_rx.await;
    }));
    for i in 40..60 {
        buffer.append_readings(&cycle(ts + i, 3)).await.unwrap();
    }
    let total = 180;

    // Then the sink's watermark reaches the gateway and its buffer empties
    eventually("the sink's watermark passes every sequence", LIMIT, || {
        let s = buffer.stats();
        async move { s.sink_acked_seq == total && s.backlog == 0 }
    })
    .await;
    eventually("the buffer deletes every row", LIMIT, || {
        let b = buffer.clone();
        async move { b.inventory().await.unwrap().rows.is_empty() }
    })
    .await;

    // and every sequence is stored exactly once, with the gateway's content.
    let store = SqliteStore::open(&db).await.unwrap();
    let stored = all_readings(&store).await;
    let mut seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    let streams = store.streams().await.unwrap();
    assert_eq!(streams.len(), 1);
    assert_eq!((streams[0].watermark, streams[0].readings), (total, total));
    assert_eq!(streams[0].epoch, buffer.epoch().to_string());
    let snap = sink.stats.snapshot();
    assert_eq!(snap.stored_items, total);
    assert_eq!(snap.conflicting_duplicates, 0);
    assert_eq!(snap.dead_letters_total(), 0, "{snap:?}");
    assert!(snap.acks_published >= 1);
    eventually("the gateway's online status is recorded", LIMIT, || {
        let store = store.clone();
        async move {
            store
                .gateways()
                .await
                .unwrap()
                .first()
                .is_some_and(|g| g.state == "online")
        }
    })
    .await;

    // When the first batch is delivered again, identical
    let mut probe = Probe::start("127.0.0.1", sink.port, &[topics.ack().to_owned()]).await;
    let first: Vec<Reading> = stored
        .iter()
        .filter(|(s, _)| *s <= 3)
        .map(|(_, r)| r.clone())
        .collect();
    let again = Batch {
        schema: SCHEMA_VERSION,
        gateway: gateway.clone(),
        site: SITE.into(),
        epoch: buffer.epoch(),
        first_seq: 1,
        count: 3,
        readings: first.clone(),
    };
    let dups_before = sink.stats.snapshot().duplicate_messages;
    probe.publish(topics.batches(), wire::encode(&again)).await;

    // Then it is counted as a duplicate and nothing changes
    let stats = sink.stats.clone();
    eventually("the redelivery is counted as a duplicate", LIMIT, || {
        let s = stats.snapshot();
        async move { s.duplicate_messages > dups_before }
    })
    .await;
    assert_eq!(all_readings(&store).await.len(), stored.len());

    // and the watermark is published again (retained) on the ack topic.
    let ack = loop {
        let m = probe.next(LIMIT).await.expect("an ack within the limit");
        if m.topic == topics.ack() {
            break wire::decode_ack(&m.payload).unwrap();
        }
    };
    assert_eq!(ack.seq_for(buffer.epoch()), Some(total));

    // When a batch with different content claims sequences already stored
    let mut changed = again.clone();
    changed.readings[1].value = Some(Value::Number(999.0));
    probe
        .publish(topics.batches(), wire::encode(&changed))
        .await;

    // Then it is quarantined and counted as a conflicting duplicate, and nothing changes.
    eventually("the conflict is counted", LIMIT, || {
        let s = stats.snapshot();
        async move { s.conflicting_duplicates == 1 }
    })
    .await;
    let q = store.quarantined(10).await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].payload, wire::encode(&changed));
    assert_eq!(all_readings(&store).await, stored);

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(LIMIT, running).await;
    buffer.close().await;
    sink.stop()
        .await
        .expect("the sink drains and stops cleanly");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpi_batches_and_gap_notices_through_the_broker_advance_the_retained_watermark() {
    // Given a sink with its embedded broker and a probe watching the gateway's ack topic
    let dir = scratch("kpi-gap");
    let db = dir.join("sink.db");
    let sink = Sink::embedded(&db, "").await;
    let topics = Topics::new("fivezero/v1", SITE, "gw-k").unwrap();
    let mut probe = Probe::start("127.0.0.1", sink.port, &[topics.ack().to_owned()]).await;
    let epoch = Epoch(9);
    let now = now_ms();
    let end = now - now.rem_euclid(900_000);
    let record = KpiRecord {
        kpi: "zero_waste.total_recovery_rate".into(),
        window: Window {
            start: end - 900_000,
            end,
            period: Period::FifteenMinutes,
            tz: "Asia/Shanghai".into(),
        },
        numerator: Some(98.0),
        denominator: Some(100.0),
        value: Some(0.98),
        unit: "1".into(),
        coverage: 1.0,
        quality: KpiQuality::Ok,
        tiers: Vec::new(),
        factors: Vec::new(),
        formula_version: 1,
        flags: Vec::new(),
    };

    // When sequences 1..=2 arrive as KPI records, 3..=10 are declared a gap and 11 is a reading
    let kpis = KpiBatch {
        schema: SCHEMA_VERSION,
        gateway: "gw-k".into(),
        site: SITE.into(),
        epoch,
        first_seq: 1,
        count: 2,
        records: vec![record.clone(), record],
    };
    probe.publish(topics.kpi(), wire::encode(&kpis)).await;
    let gap = Gap {
        schema: SCHEMA_VERSION,
        gateway: "gw-k".into(),
        site: SITE.into(),
        epoch,
        first_seq: 3,
        count: 8,
        reason: GapReason::MaxAge,
        declared_at: now,
    };
    probe.publish(topics.gaps(), wire::encode(&gap)).await;
    let reading = cycle(now, 1).readings;
    let batch = Batch {
        schema: SCHEMA_VERSION,
        gateway: "gw-k".into(),
        site: SITE.into(),
        epoch,
        first_seq: 11,
        count: 1,
        readings: reading,
    };
    probe.publish(topics.batches(), wire::encode(&batch)).await;

    // Then the retained watermark reaches 11, the gap counting as covered
    loop {
        let m = probe.next(LIMIT).await.expect("an ack within the limit");
        let ack = wire::decode_ack(&m.payload).unwrap();
        if ack.seq_for(epoch) == Some(11) {
            break;
        }
    }
    let store = SqliteStore::open(&db).await.unwrap();
    assert_eq!(store.kpi_records("gw-k".into()).await.unwrap().len(), 2);
    assert_eq!(store.gaps("gw-k".into()).await.unwrap().len(), 1);
    let snap = sink.stats.snapshot();
    assert_eq!((snap.gaps, snap.stored_items), (1, 3));
    sink.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
