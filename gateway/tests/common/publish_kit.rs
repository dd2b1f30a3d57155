//! Test kit for the publisher: an in-memory [`Outbox`], an MQTT probe (a rumqttc subscriber
//! that can also publish), a private Mosquitto on a free port, and waiting on conditions
//! with deadlines.
//!
//! Included by the `publish_*` tests with `#[path = "common/publish_kit.rs"] mod kit;`.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fivezero_gateway::config::MqttUrl;
use fivezero_gateway::outbox::{Lane, Limits, Outbox, OutboxError, Outgoing, OutgoingGap};
use fivezero_model::topic::TopicKind;
use fivezero_model::wire::{
    self, Batch, BufferState, Epoch, Quality, Reading, SCHEMA_VERSION, Value,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The shared broker of the machine, from `FIVEZERO_TEST_MQTT` (`mqtt://host:port`).
pub fn shared_broker() -> Option<MqttUrl> {
    let text = std::env::var("FIVEZERO_TEST_MQTT").ok()?;
    let rest = text.strip_prefix("mqtt://")?;
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "1883"));
    Some(MqttUrl {
        tls: false,
        host: host.to_owned(),
        port: port.trim_end_matches('/').parse().ok()?,
    })
}

/// A topic prefix no other test run uses.
pub fn unique_prefix() -> String {
    format!("fivezero-test/{:016x}", rand::random::<u64>())
}

/// Waits until `cond` holds, checking every 10 ms; panics with `what` after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ------------------------------------------------------------------------------------------
// In-memory outbox
// ------------------------------------------------------------------------------------------

/// What ends a message's stay in the in-memory outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `pending` leaves out what the broker acknowledged.
    BrokerAck,
    /// `pending` leaves out what the sink's watermark passed; broker-acknowledged messages
    /// are returned again when asked from before them (after a reconnect or a replay).
    SinkAck,
}

#[derive(Debug)]
struct Msg {
    out: Outgoing,
    broker_acked: bool,
}

#[derive(Debug)]
struct Inner {
    mode: Mode,
    messages: Vec<Msg>,
    next_seq: u64,
    sink_seq: u64,
    broker_acks: Vec<(u64, u32)>,
    replays: u64,
    sink_acks: Vec<(Epoch, u64)>,
    gaps: Vec<(OutgoingGap, bool)>,
    limits_seen: Vec<Limits>,
    lanes_seen: Vec<Lane>,
    pending_calls: usize,
}

/// A Vec of messages with ack bookkeeping; clones share it.
#[derive(Debug, Clone)]
pub struct MemoryOutbox {
    inner: Arc<Mutex<Inner>>,
    committed: Arc<watch::Sender<u64>>,
    epoch: Epoch,
    gateway: String,
    site: String,
}

impl MemoryOutbox {
    /// An empty outbox of a fresh random epoch.
    pub fn new(gateway: &str, site: &str, mode: Mode) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                mode,
                messages: Vec::new(),
                next_seq: 1,
                sink_seq: 0,
                broker_acks: Vec::new(),
                replays: 0,
                sink_acks: Vec::new(),
                gaps: Vec::new(),
                limits_seen: Vec::new(),
                lanes_seen: Vec::new(),
                pending_calls: 0,
            })),
            committed: Arc::new(watch::channel(0).0),
            epoch: Epoch(rand::random()),
            gateway: gateway.to_owned(),
            site: site.to_owned(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Commits a batch of `readings` readings; returns its first sequence.
    pub fn commit(&self, readings: u32) -> u64 {
        let mut inner = self.lock();
        let first_seq = inner.next_seq;
        let batch = Batch {
            schema: SCHEMA_VERSION,
            gateway: self.gateway.clone(),
            site: self.site.clone(),
            epoch: self.epoch,
            first_seq,
            count: readings,
            readings: (0..readings)
                .map(|i| Reading {
                    ts: 1_700_000_000_000 + i64::try_from(first_seq).unwrap() * 1000,
                    device: "meter".into(),
                    metric: "electricity.active_power".into(),
                    value: Some(Value::Number(f64::from(i))),
                    quality: Quality::Good,
                    reason: None,
                })
                .collect(),
        };
        inner.messages.push(Msg {
            out: Outgoing {
                kind: TopicKind::Batches,
                epoch: self.epoch,
                first_seq,
                count: readings,
                payload: wire::encode(&batch),
            },
            broker_acked: false,
        });
        inner.next_seq += u64::from(readings);
        let committed = inner.next_seq - 1;
        drop(inner);
        self.committed.send_replace(committed);
        first_seq
    }

    /// Declares a gap waiting to be published; returns its id.
    pub fn declare_gap(&self, payload: Vec<u8>) -> i64 {
        let mut inner = self.lock();
        let id = i64::try_from(inner.gaps.len()).unwrap() + 1;
        inner.gaps.push((OutgoingGap { id, payload }, false));
        drop(inner);
        self.committed.send_modify(|_| {});
        id
    }

    /// Highest committed sequence.
    pub fn committed_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// Messages committed.
    pub fn message_count(&self) -> usize {
        self.lock().messages.len()
    }

    /// True when every committed message has the broker's PUBACK.
    pub fn all_broker_acked(&self) -> bool {
        self.lock().messages.iter().all(|m| m.broker_acked)
    }

    /// Messages with the broker's PUBACK.
    pub fn broker_acked_count(&self) -> usize {
        self.lock()
            .messages
            .iter()
            .filter(|m| m.broker_acked)
            .count()
    }

    /// Every `broker_acked` call, in order.
    pub fn broker_acks(&self) -> Vec<(u64, u32)> {
        self.lock().broker_acks.clone()
    }

    /// Every `sink_acked` call, in order.
    pub fn sink_acks(&self) -> Vec<(Epoch, u64)> {
        self.lock().sink_acks.clone()
    }

    /// The sink's watermark for this outbox's epoch.
    pub fn sink_seq(&self) -> u64 {
        self.lock().sink_seq
    }

    /// Ids of the gaps confirmed with `gap_published`.
    pub fn published_gaps(&self) -> Vec<i64> {
        self.lock()
            .gaps
            .iter()
            .filter(|(_, done)| *done)
            .map(|(g, _)| g.id)
            .collect()
    }

    /// The limits of every `pending` call.
    pub fn limits_seen(&self) -> Vec<Limits> {
        self.lock().limits_seen.clone()
    }

    /// `pending` calls so far.
    pub fn pending_calls(&self) -> usize {
        self.lock().pending_calls
    }

    /// The lane of every `pending` call.
    pub fn lanes_seen(&self) -> Vec<Lane> {
        self.lock().lanes_seen.clone()
    }
}

impl Outbox for MemoryOutbox {
    async fn pending(&self, lane: Lane, limits: Limits) -> Result<Vec<Outgoing>, OutboxError> {
        let mut inner = self.lock();
        inner.pending_calls += 1;
        inner.limits_seen.push(limits);
        inner.lanes_seen.push(lane);
        let (mode, sink_seq) = (inner.mode, inner.sink_seq);
        // One stream, whose messages are never split: the split is a message's last sequence.
        let (after, through) = match lane {
            Lane::Backlog { after, through } => (
                after,
                through.filter(|(e, _)| *e == self.epoch).map(|(_, t)| t),
            ),
            Lane::Live { epoch, after } if epoch == self.epoch => (after, None),
            Lane::Live { .. } => return Ok(Vec::new()),
        };
        Ok(inner
            .messages
            .iter()
            .filter(|m| m.out.first_seq > after)
            .filter(|m| through.is_none_or(|t| m.out.last_seq() <= t))
            .filter(|m| match mode {
                Mode::BrokerAck => !m.broker_acked,
                Mode::SinkAck => m.out.last_seq() > sink_seq,
            })
            .take(limits.messages)
            .map(|m| m.out.clone())
            .collect())
    }

    async fn broker_acked(
        &self,
        epoch: Epoch,
        first_seq: u64,
        count: u32,
    ) -> Result<(), OutboxError> {
        let mut inner = self.lock();
        inner.broker_acks.push((first_seq, count));
        if let Some(m) = inner
            .messages
            .iter_mut()
            .find(|m| m.out.epoch == epoch && m.out.first_seq == first_seq && m.out.count == count)
        {
            m.broker_acked = true;
        }
        Ok(())
    }

    async fn sink_acked(&self, epoch: Epoch, seq: u64) -> Result<(), OutboxError> {
        let mut inner = self.lock();
        inner.sink_acks.push((epoch, seq));
        if epoch == self.epoch && seq > inner.sink_seq {
            inner.sink_seq = seq;
        }
        Ok(())
    }

    async fn replay_unconfirmed(&self) -> Result<(), OutboxError> {
        // `pending` already hands out everything above the sink's watermark in sink_ack mode.
        self.lock().replays += 1;
        Ok(())
    }

    async fn pending_gaps(&self) -> Result<Vec<OutgoingGap>, OutboxError> {
        Ok(self
            .lock()
            .gaps
            .iter()
            .filter(|(_, done)| !done)
            .map(|(g, _)| g.clone())
            .collect())
    }

    async fn gap_published(&self, id: i64) -> Result<(), OutboxError> {
        if let Some(g) = self.lock().gaps.iter_mut().find(|(g, _)| g.id == id) {
            g.1 = true;
        }
        Ok(())
    }

    fn epoch(&self) -> Epoch {
        self.epoch
    }

    fn state(&self) -> BufferState {
        let inner = self.lock();
        BufferState {
            committed_seq: inner.next_seq - 1,
            published_seq: 0,
            broker_acked_seq: 0,
            sink_acked_seq: inner.sink_seq,
            bytes: 0,
            oldest_unsent_ts: None,
        }
    }

    fn committed(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }
}

// ------------------------------------------------------------------------------------------
// MQTT probe
// ------------------------------------------------------------------------------------------

/// A message the probe received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Delivered as a retained message.
    pub retain: bool,
}

/// An MQTT 3.1.1 client that subscribes (again after every reconnect) and can publish.
#[derive(Debug)]
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
    /// Connects to `url`, subscribes to `filters` (QoS 1) and waits for the SUBACK (for the
    /// CONNACK when there are no filters).
    pub async fn start(url: &MqttUrl, filters: &[String]) -> Self {
        let id = format!("probe-{:08x}", rand::random::<u32>());
        let mut options = MqttOptions::new(id, url.host.clone(), url.port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(options, 64);
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
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
            .await
            .expect("probe subscribed within 10 s");
        Self { client, rx, task }
    }

    /// The next message, or `None` after `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<Received> {
        tokio::time::timeout(limit, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next message on `topic` within `limit` (others are dropped).
    pub async fn next_on(&mut self, topic: &str, limit: Duration) -> Option<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self.next(left).await?;
            if m.topic == topic {
                return Some(m);
            }
        }
    }

    /// Everything received so far, without waiting.
    pub fn drain(&mut self) -> Vec<Received> {
        let mut out = Vec::new();
        while let Ok(m) = self.rx.try_recv() {
            out.push(m);
        }
        out
    }

    /// Publishes `payload` retained with QoS 1 (an empty payload clears the topic).
    pub async fn publish_retained(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .expect("probe publish");
    }
}

/// Every sequence number in the batches among `messages`, in the order received.
pub fn sequences(messages: &[Received]) -> Vec<u64> {
    messages
        .iter()
        .filter(|m| m.topic.ends_with("/batches"))
        .flat_map(|m| {
            let b = wire::decode_batch(&m.payload).expect("a valid batch");
            b.first_seq..b.first_seq + u64::from(b.count)
        })
        .collect()
}

/// The highest `n` such that every sequence `1..=n` is in `seen`.
pub fn contiguous(seen: &BTreeSet<u64>) -> u64 {
    let mut n = 0;
    for &s in seen {
        if s == n + 1 {
            n = s;
        } else if s > n + 1 {
            break;
        }
    }
    n
}

// ------------------------------------------------------------------------------------------
// A private Mosquitto
// ------------------------------------------------------------------------------------------

/// Where the Mosquitto binary is installed.
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A Mosquitto started by the test on its own port; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Mosquitto {
    pub port: u16,
    dir: PathBuf,
    extra: String,
    child: Option<Child>,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

impl Mosquitto {
    /// False (with the reason printed) when the binary is absent.
    pub fn available() -> bool {
        if Path::new(MOSQUITTO).is_file() {
            true
        } else {
            println!("skipped: {MOSQUITTO} is not installed");
            false
        }
    }

    /// Starts Mosquitto on a free port with `extra` config lines, and waits until it accepts
    /// connections.
    pub async fn start(name: &str, extra: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "fivezero-mosquitto-{}-{name}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("mosquitto scratch dir");
        let mut m = Self {
            port: free_port(),
            dir,
            extra: extra.to_owned(),
            child: None,
        };
        m.restart().await;
        m
    }

    /// The broker's URL.
    pub fn url(&self) -> MqttUrl {
        MqttUrl {
            tls: false,
            host: "127.0.0.1".into(),
            port: self.port,
        }
    }

    /// The folder of its config file (for certificates).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// (Re)starts it on the same port and waits until it accepts connections.
    pub async fn restart(&mut self) {
        let conf = self.dir.join("mosquitto.conf");
        let text = format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n{}\n",
            self.port, self.extra
        );
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        eventually(
            "mosquitto to accept connections",
            Duration::from_secs(10),
            || TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok(),
        )
        .await;
    }

    /// Kills it with SIGKILL (no clean shutdown, nothing saved).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
