//! Test kit for the sink's integration tests: free ports, scratch folders, a sink running in
//! the test process, a raw MQTT 5 probe that publishes (and can watch topics), and waiting on
//! conditions with deadlines.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fivezero_sink::config::Config;
use fivezero_sink::service::{self, ServiceError};
use fivezero_sink::stats::SinkStats;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long any one wait in these tests may take.
pub const LIMIT: Duration = Duration::from_secs(30);

/// A port the OS says is free now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh folder under the temp dir.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fivezero-sink-{name}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// UTC ms now.
pub fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// The machine's Mosquitto from `FIVEZERO_TEST_MQTT` (`mqtt://host:port`).
pub fn shared_broker() -> Option<(String, u16)> {
    let text = std::env::var("FIVEZERO_TEST_MQTT").ok()?;
    let rest = text.strip_prefix("mqtt://")?;
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "1883"));
    Some((host.to_owned(), port.trim_end_matches('/').parse().ok()?))
}

/// A topic prefix no other test run uses.
pub fn unique_prefix() -> String {
    format!("fivezero-test/{:016x}", rand::random::<u64>())
}

/// Waits until `cond` holds, checking every 20 ms; panics with `what` after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A sink running in this process.
pub struct Sink {
    pub stats: SinkStats,
    pub port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServiceError>>,
}

impl Sink {
    /// Starts the service with the TOML `text` (named sink.toml), and waits until it is
    /// connected to its broker.
    pub async fn start(text: &str, port: u16) -> Self {
        // The HTTP API on a port the OS picks, unless the test chose.
        let text = if text.contains("[http]") {
            text.to_owned()
        } else {
            format!("{text}\n[http]\nlisten = \"127.0.0.1:0\"\n")
        };
        let config = Config::from_text(Path::new("sink.toml"), &text, Vec::new()).unwrap();
        let stats = SinkStats::default();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(service::run(config, stats.clone(), async move {
            let _ = rx.await;
        }));
        let s = stats.clone();
        eventually("the sink connects to its broker", LIMIT, || {
            let s = s.clone();
            async move { s.snapshot().connections >= 1 }
        })
        .await;
        Self {
            stats,
            port,
            stop: Some(stop),
            task,
        }
    }

    /// Starts a sink with the embedded broker on a free port, SQLite at `db`.
    pub async fn embedded(db: &Path, extra_sink: &str) -> Self {
        let port = free_port();
        let text = format!(
            "[sink]\nclient_id = \"sink-{:08x}\"\nshutdown_timeout = \"5s\"\n{extra_sink}\n\
             [storage]\nurl = \"sqlite://{}\"\n\
             [mqtt]\nbroker = \"embedded\"\nlisten = \"127.0.0.1:{port}\"\n",
            rand::random::<u32>(),
            db.display()
        );
        Self::start(&text, port).await
    }

    /// Asks for the drain and waits for the service to return.
    pub async fn stop(mut self) -> Result<(), ServiceError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(LIMIT, &mut self.task)
            .await
            .expect("the sink stops within the limit")
            .expect("the sink task does not panic")
    }
}

/// A message a probe received.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// A raw MQTT 5 client for publishing test payloads and watching topics.
pub struct Probe {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Received>,
    task: JoinHandle<()>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Probe {
    /// Connects to `host:port`, subscribes to `filters` and waits for the SUBACK (for the
    /// CONNACK when there are none).
    pub async fn start(host: &str, port: u16, filters: &[String]) -> Self {
        let id = format!("probe-{:08x}", rand::random::<u32>());
        let mut options = MqttOptions::new(id, host, port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(Some(4 << 20));
        let (client, mut el) = AsyncClient::new(options, 256);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::channel(1);
        let sub = client.clone();
        let filters = filters.to_vec();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if filters.is_empty() {
                            let _ = ready_tx.try_send(());
                        }
                        for f in &filters {
                            let _ = sub.subscribe(f.clone(), QoS::AtLeastOnce).await;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.try_send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Received {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(LIMIT, ready_rx.recv())
            .await
            .expect("the probe connects within the limit");
        Self { client, rx, task }
    }

    /// Publishes with QoS 1.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// The next message, or `None` after `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<Received> {
        tokio::time::timeout(limit, self.rx.recv()).await.ok()?
    }
}
