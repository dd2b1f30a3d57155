//! The sink against the machine's Mosquitto (`FIVEZERO_TEST_MQTT`, such as
//! `mqtt://127.0.0.1:1883`): its persistent session keeps what arrives while it is stopped,
//! two sinks in one shared subscription store each batch once, and a sink process killed with
//! SIGKILL mid-stream loses nothing once restarted, then drains on SIGTERM and exits 0.
//! Without the variable each test prints "skipped: FIVEZERO_TEST_MQTT not set" and passes.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::{LIMIT, Probe, Sink, eventually, now_ms, scratch, shared_broker, unique_prefix};
use fivezero_gateway::buffer::{Buffer, BufferOptions};
use fivezero_gateway::config::MqttUrl;
use fivezero_gateway::poll::DeviceReadings;
use fivezero_gateway::publish::{Publisher, PublisherConfig};
use fivezero_model::topic::Topics;
use fivezero_model::wire::{self, Batch, Epoch, Quality, Reading, SCHEMA_VERSION, Status, Value};
use fivezero_sink::store::sqlite::SqliteStore;
use fivezero_sink::store::{ReadingsQuery, Store};
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::oneshot;

const SITE: &str = "s";

fn batch(gateway: &str, first_seq: u64, count: u32) -> Batch {
    Batch {
        schema: SCHEMA_VERSION,
        gateway: gateway.into(),
        site: SITE.into(),
        epoch: Epoch(7),
        first_seq,
        count,
        readings: (0..count)
            .map(|i| Reading {
                ts: now_ms(),
                device: "meter".into(),
                metric: "electricity.import_energy".into(),
                value: Some(Value::Number(f64::from(i))),
                quality: Quality::Good,
                reason: None,
            })
            .collect(),
    }
}

fn sink_toml(
    client_id: &str,
    db: &Path,
    host: &str,
    port: u16,
    prefix: &str,
    group: &str,
) -> String {
    format!(
        "[sink]\nclient_id = \"{client_id}\"\nshutdown_timeout = \"5s\"\n\
         [storage]\nurl = \"sqlite://{}\"\n\
         [mqtt]\nbroker = \"mqtt://{host}:{port}\"\nprefix = \"{prefix}\"\nshared_group = \"{group}\"\n",
        db.display()
    )
}

async fn seqs(store: &SqliteStore) -> Vec<u64> {
    let mut s: Vec<u64> = store
        .readings(ReadingsQuery {
            limit: 1_000_000,
            ..ReadingsQuery::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    s.sort_unstable();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sink_receives_what_its_session_kept_while_it_was_stopped() {
    let Some((host, port)) = shared_broker() else {
        println!("skipped: FIVEZERO_TEST_MQTT not set");
        return;
    };
    let dir = scratch("session");
    let db = dir.join("sink.db");
    let prefix = unique_prefix();
    let id = format!("sink-{:08x}", rand::random::<u32>());
    let text = sink_toml(&id, &db, &host, port, &prefix, "");
    // Given a sink that subscribed once and stopped (drained, session kept)
    let sink = Sink::start(&text, port).await;
    sink.stop().await.unwrap();

    // When batches are published while it is away
    let probe = Probe::start(&host, port, &[]).await;
    let topic = format!("{prefix}/{SITE}/gw-1/batches");
    for i in 0..5 {
        probe
            .publish(&topic, wire::encode(&batch("gw-1", 1 + i * 4, 4)))
            .await;
    }

    // Then the restarted sink (same client id) gets them from its session.
    let sink = Sink::start(&text, port).await;
    let store = SqliteStore::open(&db).await.unwrap();
    eventually("the queued batches are stored", LIMIT, || {
        let store = store.clone();
        async move { seqs(&store).await == (1..=20).collect::<Vec<_>>() }
    })
    .await;
    sink.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sinks_in_one_shared_subscription_store_each_batch_once() {
    let Some((host, port)) = shared_broker() else {
        println!("skipped: FIVEZERO_TEST_MQTT not set");
        return;
    };
    let dir = scratch("shared");
    let db = dir.join("sink.db");
    let prefix = unique_prefix();
    let group = format!("g{:08x}", rand::random::<u32>());
    let a_id = format!("sink-a-{group}");
    let b_id = format!("sink-b-{group}");
    let a = Sink::start(&sink_toml(&a_id, &db, &host, port, &prefix, &group), port).await;
    let b = Sink::start(&sink_toml(&b_id, &db, &host, port, &prefix, &group), port).await;
    let probe = Probe::start(&host, port, &[]).await;
    let topic = format!("{prefix}/{SITE}/gw-1/batches");
    for i in 0..40 {
        probe
            .publish(&topic, wire::encode(&batch("gw-1", 1 + i * 3, 3)))
            .await;
    }
    let store = SqliteStore::open(&db).await.unwrap();
    eventually("every batch is stored", LIMIT, || {
        let store = store.clone();
        async move { seqs(&store).await.len() >= 120 }
    })
    .await;
    assert_eq!(
        seqs(&store).await,
        (1..=120).collect::<Vec<_>>(),
        "each once"
    );
    let (sa, sb) = (a.stats.snapshot(), b.stats.snapshot());
    assert_eq!(
        sa.received + sb.received,
        40,
        "each message went to one member"
    );
    assert!(sa.received > 0 && sb.received > 0, "{sa:?} {sb:?}");
    assert_eq!(store.watermarks("gw-1".into()).await.unwrap()[0].seq, 120);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_sink(config: &Path) -> Process {
    Process(
        Command::new(env!("CARGO_BIN_EXE_fivezero-sink"))
            .args(["run", "--config"])
            .arg(config)
            .env("FIVEZERO_SINK_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the sink binary starts"),
    )
}

fn cycle(ts: i64) -> DeviceReadings {
    DeviceReadings {
        device: Arc::from("meter"),
        ts_ms: ts,
        cycle: 0,
        readings: (0..5)
            .map(|i| Reading {
                ts,
                device: "meter".into(),
                metric: "electricity.import_energy".into(),
                value: Some(Value::Number(f64::from(i) + 0.5)),
                quality: Quality::Good,
                reason: None,
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_process_killed_mid_stream_loses_nothing_and_a_sigterm_drains_it() {
    let Some((host, port)) = shared_broker() else {
        println!("skipped: FIVEZERO_TEST_MQTT not set");
        return;
    };
    let dir = scratch("kill9");
    let db = dir.join("sink.db");
    let prefix = unique_prefix();
    let config = dir.join("sink.toml");
    std::fs::write(
        &config,
        sink_toml(
            &format!("sink-{:08x}", rand::random::<u32>()),
            &db,
            &host,
            port,
            &prefix,
            "",
        ),
    )
    .unwrap();

    // Given a gateway publishing 400 cycles (2,000 readings) to a sink process
    let gateway = format!("gw-{:08x}", rand::random::<u32>());
    let topics = Topics::new(&prefix, SITE, &gateway).unwrap();
    let buffer = Buffer::open(&dir.join("gw"), &BufferOptions::new(&gateway, SITE)).unwrap();
    let ts = now_ms();
    for i in 0..400 {
        buffer.append_readings(&cycle(ts + i)).await.unwrap();
    }
    let total = 2000;
    // (a retained status the sink stores once it has subscribed tells us it is ready, so its
    // session exists before the gateway publishes: the broker drops what no session holds)
    let probe = Probe::start(&host, port, &[]).await;
    let ready_topic = Topics::new(&prefix, SITE, "ready-probe").unwrap();
    let ready = Status::offline_will("ready-probe", SITE, "0", now_ms());
    probe
        .client
        .publish(
            ready_topic.status(),
            QoS::AtLeastOnce,
            true,
            wire::encode(&ready),
        )
        .await
        .unwrap();
    let mut sink = spawn_sink(&config);
    let store = SqliteStore::open(&db)
        .await
        .expect("the store opens beside the sink");
    eventually("the sink process subscribes", LIMIT, || {
        let store = store.clone();
        async move { !store.gateways().await.unwrap().is_empty() }
    })
    .await;
    let mut pc = PublisherConfig::new(
        topics.clone(),
        MqttUrl {
            tls: false,
            host: host.clone(),
            port,
        },
    );
    pc.items_per_message = std::num::NonZeroU32::new(5).unwrap();
    let publisher = Publisher::new(pc, buffer.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let running = tokio::spawn(publisher.run(async move {
        let _ = stop_rx.await;
    }));

    // When the sink is killed with SIGKILL while readings are arriving, three times
    for round in 1..=3_usize {
        eventually("the sink stores more readings", LIMIT, || {
            let store = store.clone();
            async move { seqs(&store).await.len() >= round * 200 }
        })
        .await;
        sink.0.kill().unwrap();
        sink.0.wait().unwrap();
        sink = spawn_sink(&config);
    }

    // Then everything arrives once the sink is back, each sequence stored once,
    eventually(
        "the sink's watermark passes every sequence",
        LIMIT * 2,
        || {
            let s = buffer.stats();
            async move { s.sink_acked_seq == total }
        },
    )
    .await;
    assert_eq!(seqs(&store).await, (1..=total).collect::<Vec<_>>());

    // and SIGTERM drains the sink, which exits 0.
    let status = Command::new("kill")
        .args(["-TERM", &sink.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let code = sink.0.wait().unwrap();
        drop(sink);
        code
    })
    .await
    .unwrap();
    assert!(exit.success(), "exit status {exit:?}");

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(LIMIT, running).await;
    for t in [topics.ack(), topics.status(), ready_topic.status()] {
        probe
            .client
            .publish(t, QoS::AtLeastOnce, true, Vec::new())
            .await
            .unwrap();
    }
    buffer.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
