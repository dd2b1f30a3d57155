//! KPI records committed to the buffer reach the broker on the `kpi` topic, in the same
//! sequence space as the readings, and leave the buffer only when the sink's watermark passes
//! them: the publisher over the machine's Mosquitto (`FIVEZERO_TEST_MQTT`) with a real buffer.
//! Without the variable the test prints "skipped: FIVEZERO_TEST_MQTT not set" and passes.

#[path = "common/publish_kit.rs"]
mod kit;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fivezero_gateway::buffer::{Buffer, BufferOptions};
use fivezero_gateway::outbox::Outbox;
use fivezero_gateway::poll::DeviceReadings;
use fivezero_gateway::publish::{Publisher, PublisherConfig};
use fivezero_model::topic::Topics;
use fivezero_model::wire::{
    self, AckWatermark, KpiQuality, KpiRecord, Period, Quality, Reading, SCHEMA_VERSION, StreamAck,
    Value, Window,
};
use kit::{Probe, eventually};
use tokio::sync::oneshot;

const SITE: &str = "test-site";
const LIMIT: Duration = Duration::from_secs(20);

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn record(end: i64) -> KpiRecord {
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
        coverage: 1.0,
        quality: KpiQuality::Ok,
        tiers: Vec::new(),
        factors: Vec::new(),
        formula_version: 1,
        flags: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpi_records_go_out_on_the_kpi_topic_between_the_readings_and_stay_until_acknowledged() {
    let Some(url) = kit::shared_broker() else {
        println!("skipped: FIVEZERO_TEST_MQTT not set");
        return;
    };
    // Given a buffer holding a poll cycle, two KPI records and another cycle
    let gateway = format!("gw-{:08x}", rand::random::<u32>());
    let topics = Topics::new(&kit::unique_prefix(), SITE, &gateway).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "fivezero-publish-kpi-{}-{gateway}",
        std::process::id()
    ));
    let buffer = Buffer::open(&dir, &BufferOptions::new(&gateway, SITE)).expect("buffer");
    let ts = now_ms();
    let cycle = |n: usize| DeviceReadings {
        device: "meter".into(),
        ts_ms: ts,
        cycle: 0,
        readings: (0..n)
            .map(|i| Reading {
                ts,
                device: "meter".into(),
                metric: if i == 0 {
                    "electricity.import_energy".into()
                } else {
                    "electricity.export_energy".into()
                },
                value: Some(Value::Number(i as f64)),
                quality: Quality::Good,
                reason: None,
            })
            .collect(),
    };
    buffer.append_readings(&cycle(2)).await.expect("cycle");
    let end = ts - ts.rem_euclid(900_000);
    let records = vec![record(end), record(end - 900_000)];
    buffer
        .append_kpis(&records, Some(b"state".to_vec()))
        .await
        .expect("kpis");
    buffer.append_readings(&cycle(1)).await.expect("cycle");

    // When the publisher runs with a subscriber on the batches and kpi topics
    let mut probe = Probe::start(
        &url,
        &[topics.batches().to_owned(), topics.kpi().to_owned()],
    )
    .await;
    let publisher = Publisher::new(PublisherConfig::new(topics.clone(), url), buffer.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let running = tokio::spawn(publisher.run(async move {
        let _ = stop_rx.await;
    }));

    // Then the records arrive on the kpi topic with sequences 3 and 4, between the readings
    let mut kpi = None;
    let mut seqs = Vec::new();
    while seqs.len() < 5 {
        let m = probe.next(LIMIT).await.expect("a message within the limit");
        if m.topic == topics.kpi() {
            let batch = wire::decode_kpi_batch(&m.payload).expect("a KPI batch");
            seqs.extend(batch.first_seq..batch.first_seq + u64::from(batch.count));
            kpi = Some(batch);
        } else if m.topic == topics.batches() {
            let batch = wire::decode_batch(&m.payload).expect("a batch");
            seqs.extend(batch.first_seq..batch.first_seq + u64::from(batch.count));
        }
    }
    seqs.sort_unstable();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let kpi = kpi.expect("a KPI batch");
    assert_eq!((kpi.first_seq, kpi.count), (3, 2));
    assert_eq!(kpi.records, records);
    assert_eq!(kpi.epoch, buffer.epoch());

    // and they stay in the buffer until the sink's watermark passes them.
    eventually("the broker acknowledges everything", LIMIT, || {
        buffer.stats().broker_acked_seq == 5
    })
    .await;
    assert_eq!(buffer.stats().backlog, 0);
    assert!(
        buffer.inventory().await.expect("inventory").rows.len() == 3,
        "rows kept until the sink acknowledges"
    );
    let ack = AckWatermark {
        schema: SCHEMA_VERSION,
        gateway: gateway.clone(),
        streams: vec![StreamAck {
            epoch: buffer.epoch(),
            seq: 4,
        }],
        ts: now_ms(),
    };
    probe
        .publish_retained(topics.ack(), wire::encode(&ack))
        .await;
    eventually("the rows up to the watermark are deleted", LIMIT, || {
        buffer.stats().sink_acked_seq == 4
    })
    .await;
    let inv = buffer.inventory().await.expect("inventory");
    assert_eq!(inv.rows.len(), 1, "only the last cycle is left");
    assert_eq!(
        buffer.kpi_state().await.expect("state").as_deref(),
        Some(&b"state"[..])
    );

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(LIMIT, running).await;
    probe.publish_retained(topics.ack(), Vec::new()).await;
    probe.publish_retained(topics.status(), Vec::new()).await;
    buffer.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
