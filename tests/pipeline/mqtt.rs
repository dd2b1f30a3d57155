//! A plain MQTT 5 client for the scenarios: publishes test payloads (poison messages) straight
//! to the broker, and clears retained topics a run left on a shared broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::LIMIT;

/// A connected client; its event loop ends when it is dropped.
#[derive(Debug)]
pub(crate) struct Client {
    client: AsyncClient,
    acked: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Connects to `host:port` and waits for the CONNACK.
    pub(crate) async fn connect(host: &str, port: u16) -> Self {
        let id = format!("oracle-probe-{:08x}", rand::random::<u32>());
        let mut options = MqttOptions::new(id, host, port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(Some(1 << 20));
        let (client, mut events) = AsyncClient::new(options, 256);
        let acked = Arc::new(AtomicU64::new(0));
        let (ready_tx, mut ready_rx) = mpsc::channel::<()>(1);
        let task = {
            let acked = Arc::clone(&acked);
            tokio::spawn(async move {
                loop {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = ready_tx.try_send(());
                        }
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            })
        };
        tokio::time::timeout(LIMIT, ready_rx.recv())
            .await
            .expect("the MQTT client connects within the limit");
        Self {
            client,
            acked,
            task,
        }
    }

    /// Publishes with QoS 1.
    pub(crate) async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .expect("the publish is queued");
    }

    /// PUBACKs received so far.
    pub(crate) fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits until `n` publishes are acknowledged by the broker.
    pub(crate) async fn wait_acked(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + LIMIT;
        while self.acked() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the broker acknowledged {} of {n} publishes",
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
