//! The publisher against the machine's Mosquitto (`FIVEZERO_TEST_MQTT`, e.g.
//! `mqtt://127.0.0.1:1883`), with an in-memory outbox. Each test uses its own random topic
//! prefix and client id, so tests run in parallel without seeing each other; retained
//! messages are cleared at the end. Without the variable every test prints
//! "skipped: FIVEZERO_TEST_MQTT not set" and passes.

#[path = "common/publish_kit.rs"]
mod kit;

use std::time::Duration;

use fivezero_gateway::config::MqttProtocol;
use fivezero_gateway::publish::{
    PublishError, PublishStats, Publisher, PublisherConfig, RetainUntil,
};
use fivezero_model::topic::Topics;
use fivezero_model::wire::{
    self, AckWatermark, Epoch, Gap, GapReason, Presence, SCHEMA_VERSION, StreamAck,
};
use kit::{MemoryOutbox, Mode, Probe, eventually};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const SITE: &str = "test-site";
const LIMIT: Duration = Duration::from_secs(20);

/// Settings for a fresh gateway on the shared broker, or `None` when there is none.
fn setup(protocol: MqttProtocol, mode: Mode) -> Option<(PublisherConfig, MemoryOutbox)> {
    let Some(url) = kit::shared_broker() else {
        println!("skipped: FIVEZERO_TEST_MQTT not set");
        return None;
    };
    let gateway = format!("gw-{:08x}", rand::random::<u32>());
    let topics = Topics::new(&kit::unique_prefix(), SITE, &gateway).unwrap();
    let mut config = PublisherConfig::new(topics, url);
    config.protocol = protocol;
    config.retain_until = match mode {
        Mode::BrokerAck => RetainUntil::BrokerAck,
        Mode::SinkAck => RetainUntil::SinkAck,
    };
    config.backoff_min = Duration::from_millis(100);
    config.backoff_max = Duration::from_secs(1);
    config.profiles = vec!["eastron-sdm630".into()];
    Some((config, MemoryOutbox::new(&gateway, SITE, mode)))
}

/// A publisher running in its own task.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), PublishError>>,
    stats: PublishStats,
}

fn spawn(config: PublisherConfig, outbox: MemoryOutbox) -> Running {
    let publisher = Publisher::new(config, outbox);
    let stats = publisher.stats();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(publisher.run(async move {
        let _ = rx.await;
    }));
    Running {
        stop: Some(tx),
        handle,
        stats,
    }
}

impl Running {
    async fn connected(&self) {
        eventually("the publisher to connect", LIMIT, || {
            self.stats.snapshot().connected
        })
        .await;
    }

    /// Asks for a clean stop and waits for `run` to return.
    async fn stop(mut self) -> Result<(), PublishError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(LIMIT, &mut self.handle)
            .await
            .expect("the publisher stops within the limit")
            .expect("the publisher task does not panic")
    }
}

/// Clears the retained status and ack of `topics`.
async fn clear_retained(probe: &Probe, topics: &Topics) {
    probe.publish_retained(topics.status(), Vec::new()).await;
    probe.publish_retained(topics.ack(), Vec::new()).await;
}

async fn every_sequence_arrives_once_each_lane_in_order(protocol: MqttProtocol) {
    let Some((config, outbox)) = setup(protocol, Mode::BrokerAck) else {
        return;
    };
    let topics = config.topics.clone();
    let mut probe = Probe::start(&config.url, &[topics.batches().to_owned()]).await;
    // Given 100 messages committed before the start
    for _ in 0..100 {
        outbox.commit(5);
    }
    let running = spawn(config, outbox.clone());
    running.connected().await;
    // and 100 more committed while it runs
    for _ in 0..100 {
        outbox.commit(5);
    }
    // Then every message ends acknowledged by the broker
    eventually("every message to be broker-acked", LIMIT, || {
        outbox.all_broker_acked()
    })
    .await;
    // and the subscriber sees every sequence exactly once: the backlog (committed before
    // the connect) in order, and what came after it in order, on the live lane beside it
    let mut received = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while kit::sequences(&received).len() < 1000 && Instant::now() < deadline {
        if let Some(m) = probe.next(Duration::from_secs(1)).await {
            received.push(m);
        }
    }
    let seqs = kit::sequences(&received);
    let (backlog, live): (Vec<u64>, Vec<u64>) = seqs.iter().partition(|&&s| s <= 500);
    assert_eq!(backlog, (1..=500).collect::<Vec<_>>());
    assert_eq!(live, (501..=1000).collect::<Vec<_>>());
    let s = running.stats.snapshot();
    assert_eq!(s.published_messages, 200);
    assert_eq!(s.published_readings, 1000);
    assert_eq!(s.broker_acks, 200);
    assert_eq!(s.broker_acked_readings, 1000);
    assert_eq!(s.republished_messages, 0);
    assert_eq!((s.connects, s.reconnects), (1, 0));
    // Each message was acknowledged once, by its own range.
    let mut acks = outbox.broker_acks();
    acks.sort_unstable();
    let expected: Vec<_> = (0..200u64).map(|i| (1 + i * 5, 5)).collect();
    assert_eq!(acks, expected);
    running.stop().await.unwrap();
    clear_retained(&probe, &topics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_sequence_reaches_a_subscriber_once_each_lane_in_order_over_mqtt5() {
    every_sequence_arrives_once_each_lane_in_order(MqttProtocol::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_sequence_reaches_a_subscriber_once_each_lane_in_order_over_mqtt311() {
    every_sequence_arrives_once_each_lane_in_order(MqttProtocol::V311).await;
}

async fn birth_and_will(protocol: MqttProtocol) {
    let Some((config, outbox)) = setup(protocol, Mode::BrokerAck) else {
        return;
    };
    let topics = config.topics.clone();
    let running = spawn(config.clone(), outbox.clone());
    running.connected().await;

    // The birth is retained: a subscriber that comes later gets it.
    let mut probe = Probe::start(&config.url, &[topics.status().to_owned()]).await;
    let birth = probe
        .next_on(topics.status(), LIMIT)
        .await
        .expect("a retained birth");
    assert!(birth.retain, "the birth is retained");
    let status = wire::decode_status(&birth.payload).unwrap();
    assert_eq!(status.state, Presence::Online);
    assert_eq!(status.gateway, topics.gateway());
    assert_eq!(status.site, SITE);
    assert_eq!(status.epoch, Some(outbox_epoch(&outbox)));
    assert_eq!(status.profiles, ["eastron-sdm630"]);
    assert!(status.buffer.is_some());

    // When the connection dies without a DISCONNECT (the task is aborted, dropping the event
    // loop), the broker publishes the will.
    running.handle.abort();
    let will = probe
        .next_on(topics.status(), LIMIT)
        .await
        .expect("the will is published");
    let status = wire::decode_status(&will.payload).unwrap();
    assert_eq!(status.state, Presence::Offline);
    assert_eq!(status.epoch, None, "the will is the minimal offline status");
    assert_eq!(status.gateway, topics.gateway());

    // and it is retained.
    let mut later = Probe::start(&config.url, &[topics.status().to_owned()]).await;
    let retained = later.next_on(topics.status(), LIMIT).await.unwrap();
    assert!(retained.retain);
    assert_eq!(
        wire::decode_status(&retained.payload).unwrap().state,
        Presence::Offline
    );
    clear_retained(&probe, &topics).await;
}

fn outbox_epoch(outbox: &MemoryOutbox) -> Epoch {
    use fivezero_gateway::outbox::Outbox;
    outbox.epoch()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_birth_is_retained_and_the_will_reports_offline_when_the_connection_dies_over_mqtt5() {
    birth_and_will(MqttProtocol::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_birth_is_retained_and_the_will_reports_offline_when_the_connection_dies_over_mqtt311()
{
    birth_and_will(MqttProtocol::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_publishes_a_full_offline_status_and_disconnects() {
    let Some((config, outbox)) = setup(MqttProtocol::V5, Mode::BrokerAck) else {
        return;
    };
    let topics = config.topics.clone();
    let mut probe = Probe::start(&config.url, &[topics.status().to_owned()]).await;
    let running = spawn(config.clone(), outbox.clone());
    running.connected().await;
    let birth = probe.next_on(topics.status(), LIMIT).await.unwrap();
    assert_eq!(
        wire::decode_status(&birth.payload).unwrap().state,
        Presence::Online
    );
    let stats = running.stats.clone();
    running.stop().await.unwrap();
    assert!(!stats.snapshot().connected);
    let offline = probe.next_on(topics.status(), LIMIT).await.unwrap();
    let status = wire::decode_status(&offline.payload).unwrap();
    assert_eq!(status.state, Presence::Offline);
    assert_eq!(
        status.epoch,
        Some(outbox_epoch(&outbox)),
        "not the minimal will"
    );
    // The DISCONNECT made the broker discard the will: the retained status stays ours.
    let mut later = Probe::start(&config.url, &[topics.status().to_owned()]).await;
    let retained = later.next_on(topics.status(), LIMIT).await.unwrap();
    let status = wire::decode_status(&retained.payload).unwrap();
    assert_eq!(
        (status.state, status.epoch),
        (Presence::Offline, Some(outbox_epoch(&outbox)))
    );
    clear_retained(&probe, &topics).await;
}

fn watermark(gateway: &str, streams: &[(Epoch, u64)]) -> Vec<u8> {
    wire::encode(&AckWatermark {
        schema: SCHEMA_VERSION,
        gateway: gateway.to_owned(),
        streams: streams
            .iter()
            .map(|&(epoch, seq)| StreamAck { epoch, seq })
            .collect(),
        ts: 1_700_000_000_000,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sinks_retained_watermark_is_handed_to_the_outbox_after_every_connect() {
    let Some((config, outbox)) = setup(MqttProtocol::V5, Mode::SinkAck) else {
        return;
    };
    let topics = config.topics.clone();
    let epoch = outbox_epoch(&outbox);
    let other = Epoch(epoch.0 ^ 1);
    for _ in 0..10 {
        outbox.commit(3);
    }
    let probe = Probe::start(&config.url, &[]).await;
    let running = spawn(config.clone(), outbox.clone());
    running.connected().await;
    // When the sink writes its retained watermark for two streams
    probe
        .publish_retained(
            topics.ack(),
            watermark(topics.gateway(), &[(epoch, 12), (other, 3)]),
        )
        .await;
    // Then the outbox gets each stream's watermark
    eventually("the watermark to reach the outbox", LIMIT, || {
        let acks = outbox.sink_acks();
        acks.contains(&(epoch, 12)) && acks.contains(&(other, 3))
    })
    .await;
    assert_eq!(outbox.sink_seq(), 12);
    let s = running.stats.snapshot();
    assert_eq!(
        (s.sink_acks, s.sink_watermark, s.malformed_acks),
        (1, 12, 0)
    );
    running.stop().await.unwrap();

    // and after a new connect the retained watermark arrives again.
    let running = spawn(config, outbox.clone());
    eventually("the retained watermark after a reconnect", LIMIT, || {
        running.stats.snapshot().sink_acks == 1
    })
    .await;
    assert_eq!(
        outbox
            .sink_acks()
            .iter()
            .filter(|a| **a == (epoch, 12))
            .count(),
        2
    );
    running.stop().await.unwrap();
    clear_retained(&probe, &topics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_ack_payload_is_counted_and_never_fatal() {
    let Some((config, outbox)) = setup(MqttProtocol::V5, Mode::SinkAck) else {
        return;
    };
    let topics = config.topics.clone();
    let epoch = outbox_epoch(&outbox);
    let probe = Probe::start(&config.url, &[]).await;
    let running = spawn(config, outbox.clone());
    running.connected().await;
    // Not JSON
    probe
        .publish_retained(topics.ack(), b"{\"schema\": 1, \"gatew".to_vec())
        .await;
    eventually("the malformed ack to be counted", LIMIT, || {
        running.stats.snapshot().malformed_acks == 1
    })
    .await;
    // Well-formed but for another gateway
    probe
        .publish_retained(topics.ack(), watermark("someone-else", &[(epoch, 5)]))
        .await;
    eventually("the foreign ack to be counted", LIMIT, || {
        running.stats.snapshot().malformed_acks == 2
    })
    .await;
    assert!(outbox.sink_acks().is_empty());
    // The publisher is still up and still takes a good one
    outbox.commit(4);
    probe
        .publish_retained(topics.ack(), watermark(topics.gateway(), &[(epoch, 4)]))
        .await;
    eventually("the good ack", LIMIT, || outbox.sink_seq() == 4).await;
    let s = running.stats.snapshot();
    assert!(s.connected);
    assert_eq!((s.connects, s.malformed_acks, s.sink_acks), (1, 2, 1));
    running.stop().await.unwrap();
    clear_retained(&probe, &topics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_gaps_are_published_and_confirmed_on_their_puback() {
    let Some((config, outbox)) = setup(MqttProtocol::V5, Mode::BrokerAck) else {
        return;
    };
    let topics = config.topics.clone();
    let gap = wire::encode(&Gap {
        schema: SCHEMA_VERSION,
        gateway: topics.gateway().to_owned(),
        site: SITE.to_owned(),
        epoch: outbox_epoch(&outbox),
        first_seq: 1,
        count: 40,
        reason: GapReason::DiskFull,
        declared_at: 1_700_000_000_000,
    });
    let id = outbox.declare_gap(gap.clone());
    let mut probe = Probe::start(&config.url, &[topics.gaps().to_owned()]).await;
    let running = spawn(config, outbox.clone());
    let got = probe.next_on(topics.gaps(), LIMIT).await.expect("the gap");
    assert_eq!(got.payload, gap);
    assert!(!got.retain);
    eventually("the gap to be confirmed", LIMIT, || {
        outbox.published_gaps() == [id]
    })
    .await;
    assert_eq!(running.stats.snapshot().gaps_published, 1);
    // A gap declared while running wakes the publisher too.
    let second = outbox.declare_gap(gap.clone());
    eventually("the second gap", LIMIT, || {
        outbox.published_gaps() == [id, second]
    })
    .await;
    running.stop().await.unwrap();
    clear_retained(&probe, &topics).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_oldest_first_at_the_replay_rate() {
    let Some((mut config, outbox)) = setup(MqttProtocol::V5, Mode::BrokerAck) else {
        return;
    };
    config.replay_rate = std::num::NonZeroU32::new(50).unwrap();
    config.window = std::num::NonZeroU16::new(8).unwrap();
    let topics = config.topics.clone();
    for _ in 0..108 {
        outbox.commit(1);
    }
    let mut probe = Probe::start(&config.url, &[topics.batches().to_owned()]).await;
    let start = Instant::now();
    let running = spawn(config, outbox.clone());
    eventually("the backlog to drain", LIMIT, || outbox.all_broker_acked()).await;
    let took = start.elapsed();
    // A burst of 8 (the window), then 100 at 50 a second: about 2 s.
    assert!(took >= Duration::from_millis(1800), "drained in {took:?}");
    assert!(took < Duration::from_secs(10), "drained in {took:?}");
    let mut received = Vec::new();
    while kit::sequences(&received).len() < 108 {
        received.push(probe.next(LIMIT).await.expect("every batch"));
    }
    assert_eq!(kit::sequences(&received), (1..=108).collect::<Vec<_>>());
    running.stop().await.unwrap();
    clear_retained(&probe, &topics).await;
}
