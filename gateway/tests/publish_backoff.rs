//! Reconnect pacing on tokio's paused clock: a broker that is not there is retried with the
//! project's backoff (0.5 s to 30 s, full jitter), not stormed, and a stop while
//! disconnected returns at once. No broker needed.

#[path = "common/publish_kit.rs"]
mod kit;

use std::time::Duration;

use fivezero_gateway::config::{MqttProtocol, MqttUrl};
use fivezero_gateway::publish::{Publisher, PublisherConfig};
use fivezero_model::topic::Topics;
use kit::{MemoryOutbox, Mode};
use tokio::sync::oneshot;
use tokio::time::Instant;

fn unreachable_broker(protocol: MqttProtocol) -> (PublisherConfig, MemoryOutbox) {
    let url = MqttUrl {
        tls: false,
        host: "127.0.0.1".into(),
        port: kit::free_port(), // bound and released: nothing listens there
    };
    let topics = Topics::new("fivezero-test/backoff", "site", "gw-backoff").unwrap();
    let mut config = PublisherConfig::new(topics, url);
    config.protocol = protocol;
    config.seed = 7;
    (
        config,
        MemoryOutbox::new("gw-backoff", "site", Mode::BrokerAck),
    )
}

async fn retried_with_backoff(protocol: MqttProtocol) {
    let (config, outbox) = unreachable_broker(protocol);
    assert_eq!(config.backoff_min, Duration::from_millis(500));
    assert_eq!(config.backoff_max, Duration::from_secs(30));
    outbox.commit(10);
    let publisher = Publisher::new(config, outbox.clone());
    let stats = publisher.stats();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(publisher.run(async move {
        let _ = rx.await;
    }));

    // Twenty minutes of virtual time.
    tokio::time::sleep(Duration::from_secs(20 * 60)).await;
    let s = stats.snapshot();
    println!(
        "{protocol:?}: {} failed attempts in 20 min",
        s.connect_failures
    );
    // Without backoff a refused connect is retried thousands of times a second. With it the
    // waits grow to 30 s and average 15 s from then on: about 85 attempts in 20 min (fewer
    // if an attempt ran into the connect timeout).
    assert!(
        (30..=200).contains(&s.connect_failures),
        "{} failed attempts in 20 min",
        s.connect_failures
    );
    assert_eq!(s.connects, 0);
    assert!(!s.connected);
    assert_eq!(s.published_messages, 0);

    // A stop while disconnected returns at once.
    let asked = Instant::now();
    tx.send(()).unwrap();
    handle.await.unwrap().unwrap();
    assert!(asked.elapsed() < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_broker_is_retried_with_growing_backoff_not_stormed_over_mqtt5() {
    retried_with_backoff(MqttProtocol::V5).await;
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_broker_is_retried_with_growing_backoff_not_stormed_over_mqtt311() {
    retried_with_backoff(MqttProtocol::V311).await;
}
