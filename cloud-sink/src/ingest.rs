//! The MQTT subscriber: the only code that touches the rumqttc event loop.
//!
//! # Delivery (reliability G5, G6 and part C)
//!
//! - **MQTT 5, persistent session.** Clean start off and a session expiry longer than a
//!   restart, so the broker keeps the subscriptions and the unacknowledged messages while the
//!   sink is away, and redelivers them (or, in a shared subscription, hands them to another
//!   member). The client id must be unique per instance and stable across restarts.
//! - **Manual acks after commit.** A message is acknowledged only after the transaction that
//!   stores it (or its dead letter) commits. A database failure is retried with backoff
//!   (0.5 s to 30 s) while nothing further is taken, so a slow or absent database pushes back
//!   on the broker instead of filling memory.
//! - **Bounded in-flight.** Receive Maximum (`mqtt.inflight`) caps the unacknowledged messages
//!   the broker sends, so the queue between the event loop and the worker holds that many
//!   from a broker that keeps the rule. The queue itself is unbounded on purpose: the task
//!   that polls the event loop must never wait on the worker, because the worker's acks and
//!   watermarks go out through that same event loop (a bounded queue deadlocked when a
//!   resumed session redelivered more than the window: the poller waiting for queue room,
//!   the worker waiting for request room, nothing acknowledged). A queue deeper than the
//!   window is normal for a moment after a session resumes (Mosquitto 2 resends the
//!   unacknowledged messages and then sends a window of new ones: twice the window and one
//!   more in the scale-out test); four times the window is logged as a broker overrunning
//!   Receive Maximum. For the same reason the
//!   subscription after each CONNACK is requested from its own task.
//! - **Packet limit.** Maximum Packet Size (`mqtt.max_packet_size`) is announced to the broker,
//!   which then never sends anything larger, and rumqttc refuses anything larger.
//! - **Acks across reconnects.** A message is acknowledged only on the connection that
//!   delivered it: after a reconnect the broker redelivers it (same session) and the copy is
//!   deduplicated, while an ack of the old packet id on the new connection could acknowledge
//!   a different message.
//! - **Preparing off the database.** Between the task that polls the event loop and the
//!   worker that talks to the database sits a preparing stage: it decodes and validates each
//!   message ([`validate`]) and computes the ledger item hashes of a readings batch
//!   ([`HashedBatch::new`]) on tokio's blocking pool, taking whatever is queued, in arrival
//!   order. So while the database thread writes one group, the next messages are decoded on
//!   the other core, and the database thread only plans and writes. The stage keeps the
//!   order of the queue and runs at most two groups ahead of the worker (then waits, so
//!   decoded messages do not pile up; the poller still never waits), and nothing it does is
//!   acknowledged: a message is acknowledged by the worker, after its commit, as before.
//! - **Group commit.** The worker takes the prepared message at the head of the queue with
//!   whatever else is already prepared (up to 16); consecutive readings batches among them are
//!   stored in one transaction ([`Store::store_batches`]: one commit, one fsync), then each
//!   is acknowledged. Under a backlog this divides the commits by up to 16; with one message
//!   at a time it is the single-message path. If the group's transaction fails, its messages
//!   are stored one at a time with the usual retries.
//! - **Watermark.** After each commit of a batch, KPI batch or gap, the gateway's watermarks
//!   (read from `streams` in the same transaction) are published retained (QoS 1) on its
//!   `…/ack` topic as an [`AckWatermark`] (once per gateway per group commit, the newest).
//! - **Watermark convergence with several sinks.** In a shared subscription each sink
//!   publishes the watermark of its own commits, so two sinks committing one stream back to
//!   back can reach the broker in the opposite order and leave the retained ack below the
//!   stored watermark (the gateway keeps the highest it has seen, so nothing is lost, but the
//!   retained value lies). So each sink also subscribes, not shared, at QoS 0 and with No
//!   Local, to `{prefix}/+/+/ack`, and keeps in memory, per ack topic, the highest watermark
//!   it has itself computed per epoch (from its own commits: no extra query) and the last
//!   value it knows the topic to carry (another sink's message as received, or its own last
//!   publication). When the topic carries an epoch below what this sink computed, the sink
//!   republishes, retained at QoS 1, that message with each epoch raised to its own value,
//!   after a settling pause of [`REPUBLISH_SETTLE`] (its own next commit often covers it).
//!   A republication only ever raises values, so the exchange ends once the topic carries
//!   every sink's highest, and the retained ack ends at the stored watermark as long as the
//!   sink that computed it is running (a sink that dies takes its map with it: then the next
//!   commit for that gateway, by any sink, fixes the topic). Echoes of its own publications, from a broker that ignores No Local (the
//!   embedded rumqttd), are recognised by their bytes and skipped; cleared (empty) or
//!   unreadable ack messages are ignored. These observations are not counted as received
//!   messages; republications count in `acks_republished`.
//! - **Drain.** When `shutdown` resolves, the message being stored is finished and
//!   acknowledged, nothing more is taken, the client sends DISCONNECT (the session stays with
//!   the broker, so queued messages wait for the next start), and `run` returns.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::hash::BuildHasher;
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fivezero_model::topic::{self, TopicKind, Topics};
use fivezero_model::wire::{self, AckWatermark, Epoch, SCHEMA_VERSION, StreamAck};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use tokio::sync::{Notify, mpsc, watch};

use crate::stats::SinkStats;
use crate::store::{HashedBatch, Outcome, RawMessage, Store, StoreError};
use crate::validate::{self, Inbound, Rejection, Rules};

/// Everything the subscriber needs.
#[derive(Clone)]
pub struct IngestSettings {
    /// MQTT client id (unique per instance, stable across restarts).
    pub client_id: String,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS (PEM CA and optional client certificate and key), for `mqtts://`.
    pub tls: Option<TlsFiles>,
    /// User name and password.
    pub credentials: Option<(String, String)>,
    /// Topic prefix.
    pub prefix: String,
    /// Shared subscription group.
    pub shared_group: Option<String>,
    /// Receive Maximum.
    pub inflight: NonZeroU16,
    /// Maximum Packet Size, bytes.
    pub max_packet_size: u32,
    /// Session expiry.
    pub session_expiry: Duration,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// Gateways accepted; `None` for any.
    pub allowed_gateways: Option<BTreeSet<String>>,
    /// How long the drain may take.
    pub shutdown_timeout: Duration,
}

impl std::fmt::Debug for IngestSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestSettings")
            .field("client_id", &self.client_id)
            .field("broker", &format!("{}:{}", self.host, self.port))
            .field("tls", &self.tls.is_some())
            .field("user", &self.credentials.as_ref().map(|c| &c.0))
            .field("prefix", &self.prefix)
            .field("shared_group", &self.shared_group)
            .field("inflight", &self.inflight)
            .field("max_packet_size", &self.max_packet_size)
            .finish_non_exhaustive()
    }
}

/// PEM bytes for TLS, read at startup.
#[derive(Clone)]
pub struct TlsFiles {
    /// CA certificates.
    pub ca: Vec<u8>,
    /// Client certificate chain and key, for mutual TLS.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca_bytes", &self.ca.len())
            .field("mutual", &self.client.is_some())
            .finish()
    }
}

impl IngestSettings {
    /// Settings for a plain-TCP broker at `host:port`, everything else at the config defaults.
    #[must_use]
    pub fn new(client_id: &str, host: &str, port: u16) -> Self {
        Self {
            client_id: client_id.to_owned(),
            host: host.to_owned(),
            port,
            tls: None,
            credentials: None,
            prefix: topic::DEFAULT_PREFIX.to_owned(),
            shared_group: None,
            inflight: NonZeroU16::new(64).unwrap_or(NonZeroU16::MIN),
            max_packet_size: 256 * 1024,
            session_expiry: Duration::from_secs(600),
            keep_alive: Duration::from_secs(30),
            allowed_gateways: None,
            shutdown_timeout: Duration::from_secs(10),
        }
    }

    /// The topic filters subscribed to (shared when a group is set).
    ///
    /// # Errors
    /// A prefix or group that cannot be a topic.
    pub fn filters(&self) -> Result<Vec<String>, topic::TopicError> {
        [
            TopicKind::Batches,
            TopicKind::Kpi,
            TopicKind::Gaps,
            TopicKind::Status,
        ]
        .into_iter()
        .map(|kind| match &self.shared_group {
            Some(group) => topic::shared_filter(group, &self.prefix, kind),
            None => topic::filter(&self.prefix, kind),
        })
        .collect()
    }

    /// The filter of every gateway's retained ack topic, `{prefix}/+/+/ack`, subscribed to
    /// without sharing (see "Watermark convergence").
    ///
    /// # Errors
    /// A prefix that cannot be a topic.
    pub fn ack_filter(&self) -> Result<String, topic::TopicError> {
        topic::filter(&self.prefix, TopicKind::Ack)
    }

    fn options(&self) -> MqttOptions {
        let mut o = MqttOptions::new(&self.client_id, &self.host, self.port);
        o.set_clean_start(false)
            .set_keep_alive(self.keep_alive)
            .set_manual_acks(true)
            .set_session_expiry_interval(Some(
                u32::try_from(self.session_expiry.as_secs()).unwrap_or(u32::MAX),
            ))
            .set_receive_maximum(Some(self.inflight.get()))
            .set_max_packet_size(Some(self.max_packet_size))
            .set_connection_timeout(10);
        if let Some((user, password)) = &self.credentials {
            o.set_credentials(user, password);
        }
        if let Some(tls) = &self.tls {
            o.set_transport(Transport::Tls(TlsConfiguration::Simple {
                ca: tls.ca.clone(),
                alpn: None,
                client_auth: tls.client.clone(),
            }));
        }
        o
    }
}

/// Why ingest stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The prefix or shared group cannot form a topic filter.
    #[error("topic filter: {0}")]
    Topic(#[from] topic::TopicError),
}

/// A message and the connection that delivered it.
#[derive(Debug)]
struct Delivery {
    publish: Publish,
    connection: u64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Exponential backoff with full jitter.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    const fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    fn wait(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        ceiling.mul_f64(rand::random::<f64>().max(0.1))
    }
}

/// Runs the subscriber until `shutdown` resolves, then drains (see the
/// [module documentation](self)). Connection failures are logged and retried with backoff.
///
/// # Errors
/// Only a prefix or group that cannot form a topic filter.
pub async fn run<S, F>(
    settings: IngestSettings,
    store: S,
    stats: SinkStats,
    shutdown: F,
) -> Result<(), IngestError>
where
    S: Store,
    F: Future<Output = ()> + Send,
{
    let filters = settings.filters()?;
    let ack_filter = settings.ack_filter()?;
    let rules = Arc::new(Rules {
        prefix: settings.prefix.clone(),
        max_payload: usize::try_from(settings.max_packet_size).unwrap_or(usize::MAX),
        allowed_gateways: settings.allowed_gateways.clone(),
    });
    let cap = usize::from(settings.inflight.get());
    let (client, mut eventloop) = AsyncClient::new(settings.options(), cap.max(16));
    let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
    let (ready_tx, mut ready_rx) = mpsc::channel::<Prepared>(READY_MAX);
    let queued = Arc::new(AtomicUsize::new(0));
    let connection = Arc::new(AtomicU64::new(0));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = watch::channel(false);
    let book = Arc::new(Mutex::new(AckBook::default()));
    let republish = Arc::new(Notify::new());

    let driver = {
        let client = client.clone();
        let connection = Arc::clone(&connection);
        let stats = stats.clone();
        let queued = Arc::clone(&queued);
        let book = Arc::clone(&book);
        let republish = Arc::clone(&republish);
        let prefix = settings.prefix.clone();
        async move {
            let mut overrun_logged: Option<tokio::time::Instant> = None;
            let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
            let mut connected_at = tokio::time::Instant::now();
            loop {
                let event = tokio::select! {
                    ev = eventloop.poll() => ev,
                    _ = until_set(&mut done_rx) => {
                        // The worker has queued its last ack and the DISCONNECT; flush them.
                        let flush = async {
                            loop {
                                match eventloop.poll().await {
                                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                                    Ok(_) => {}
                                }
                            }
                        };
                        let _ = tokio::time::timeout(Duration::from_secs(5), flush).await;
                        return;
                    }
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        let n = connection.fetch_add(1, Ordering::SeqCst) + 1;
                        stats.connected();
                        connected_at = tokio::time::Instant::now();
                        tracing::info!(
                            session_present = ack.session_present,
                            connection = n,
                            "Connected to the broker."
                        );
                        // From its own task: the request queue may be full of the worker's
                        // acks, which only this loop's polling drains.
                        let mut subs: Vec<Filter> = filters
                            .iter()
                            .map(|f| Filter::new(f.clone(), QoS::AtLeastOnce))
                            .collect();
                        subs.push(Filter {
                            nolocal: true,
                            ..Filter::new(ack_filter.clone(), QoS::AtMostOnce)
                        });
                        let client = client.clone();
                        tokio::spawn(async move {
                            if let Err(e) = client.subscribe_many(subs).await {
                                tracing::error!(error = %e, "Subscribing failed.");
                            }
                        });
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        if let Some(ack_topic) = ack_topic(&prefix, &publish.topic) {
                            // Another sink's watermark (see "Watermark convergence"); never
                            // queued, never stored.
                            if publish.qos != QoS::AtMostOnce
                                && let Err(e) = client.try_ack(&publish)
                            {
                                tracing::debug!(error = %e, "Acknowledging an ack topic message failed.");
                            }
                            if lock(&book).seen(ack_topic, &publish.payload) {
                                republish.notify_one();
                            }
                            continue;
                        }
                        let delivery = Delivery {
                            publish,
                            connection: connection.load(Ordering::SeqCst),
                        };
                        // Never waits (see "Bounded in-flight"). When the worker has stopped
                        // (drain), the message stays unacknowledged and the broker keeps it
                        // in the session.
                        // Counted before it is sent, so the worker never takes it first.
                        let depth = queued.fetch_add(1, Ordering::SeqCst) + 1;
                        if tx.send(delivery).is_err() {
                            queued.fetch_sub(1, Ordering::SeqCst);
                        } else if depth > 4 * cap
                            && overrun_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10))
                        {
                            overrun_logged = Some(tokio::time::Instant::now());
                            tracing::warn!(
                                depth,
                                inflight = cap,
                                "The broker sent more unacknowledged messages than Receive \
                                 Maximum; they wait in memory."
                            );
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        tracing::debug!(codes = ?ack.return_codes, "Subscribed.");
                    }
                    Ok(Event::Incoming(Packet::Disconnect(d))) => {
                        tracing::warn!(reason = ?d.reason_code, "The broker disconnected us.");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        stats.disconnected();
                        if connected_at.elapsed() > Duration::from_secs(10) {
                            backoff.reset();
                        }
                        let wait = backoff.wait();
                        tracing::warn!(error = %e, ?wait, "Broker connection lost; reconnecting.");
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            _ = until_set(&mut done_rx) => return,
                        }
                    }
                }
            }
        }
    };

    // Decodes, validates and hashes in arrival order, on the blocking pool, whatever is
    // queued (see "Preparing off the database"). Ends when the poller or the worker has.
    let preparer = {
        let stats = stats.clone();
        async move {
            while let Some(first) = rx.recv().await {
                let mut chunk = vec![first];
                while chunk.len() < GROUP_MAX {
                    match rx.try_recv() {
                        Ok(d) => chunk.push(d),
                        Err(_) => break,
                    }
                }
                let (rules, stats) = (Arc::clone(&rules), stats.clone());
                let prepared = tokio::task::spawn_blocking(move || {
                    chunk
                        .into_iter()
                        .map(|d| prepare(d, &rules, &stats))
                        .collect::<Vec<_>>()
                })
                .await;
                match prepared {
                    Ok(prepared) => {
                        for p in prepared {
                            if ready_tx.send(p).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        // Not acknowledged: the broker redelivers them after a reconnect.
                        tracing::error!(error = %e, "Preparing messages failed; they stay unacknowledged.");
                    }
                }
            }
        }
    };

    let worker = {
        let client = client.clone();
        let book = Arc::clone(&book);
        let prefix = settings.prefix.clone();
        let stats = stats.clone();
        async move {
            'work: loop {
                let first = tokio::select! {
                    biased;
                    _ = until_set(&mut stop_rx) => break,
                    p = ready_rx.recv() => match p {
                        Some(p) => p,
                        None => break,
                    },
                };
                // Whatever else is already prepared joins it (up to GROUP_MAX): consecutive
                // readings batches are then stored in one transaction.
                let mut group = vec![first];
                while group.len() < GROUP_MAX {
                    match ready_rx.try_recv() {
                        Ok(p) => group.push(p),
                        Err(_) => break,
                    }
                }
                queued.fetch_sub(group.len(), Ordering::SeqCst);
                let mut start = 0;
                while start < group.len() {
                    // Draining: what is not stored yet stays with the broker's session.
                    if start > 0 && *stop_rx.borrow() {
                        break 'work;
                    }
                    let run = group[start..]
                        .iter()
                        .take_while(|p| matches!(p.verdict, Verdict::Batch(_)))
                        .count();
                    let together = if run > 1 {
                        store_group(&group[start..start + run], &prefix, &store, &stats).await
                    } else {
                        None
                    };
                    let (handled, n) = match together {
                        Some(h) => (h, run),
                        None => {
                            let h =
                                handle(&group[start], &prefix, &store, &stats, &mut stop_rx).await;
                            (vec![h], 1)
                        }
                    };
                    // Acknowledge each message; publish each gateway's newest watermark once.
                    let mut marks: Vec<(String, AckWatermark)> = Vec::new();
                    for (p, h) in group[start..start + n].iter().zip(handled) {
                        let Handled::Ack(acks) = h else {
                            break 'work;
                        };
                        if p.delivery.connection == connection.load(Ordering::SeqCst)
                            && let Err(e) = client.ack(&p.delivery.publish).await
                        {
                            tracing::warn!(error = %e, "Acknowledging failed.");
                        }
                        if let Some((topic, ack)) = acks {
                            marks.retain(|(t, _)| *t != topic);
                            marks.push((topic, ack));
                        }
                    }
                    for (topic, ack) in marks {
                        let payload = wire::encode(&ack);
                        lock(&book).published(&topic, &ack, &payload);
                        match client.publish(topic, QoS::AtLeastOnce, true, payload).await {
                            Ok(()) => stats.ack_published(),
                            Err(e) => {
                                tracing::warn!(error = %e, "Publishing the watermark failed.");
                            }
                        }
                    }
                    start += n;
                }
            }
            if let Err(e) = client.disconnect().await {
                tracing::debug!(error = %e, "Disconnect request not queued.");
            }
            let _ = done_tx.send(true);
        }
    };

    // Republishes watermarks that another sink's message left too low (see "Watermark
    // convergence"), after a settling pause.
    let republisher = {
        let client = client.clone();
        let mut stop = stop_tx.subscribe();
        let stats = stats.clone();
        async move {
            loop {
                tokio::select! {
                    biased;
                    _ = until_set(&mut stop) => return,
                    () = republish.notified() => {}
                }
                tokio::select! {
                    biased;
                    _ = until_set(&mut stop) => return,
                    () = tokio::time::sleep(REPUBLISH_SETTLE) => {}
                }
                let due = lock(&book).take_due(now_ms());
                for (topic, payload) in due {
                    match client.publish(topic, QoS::AtLeastOnce, true, payload).await {
                        Ok(()) => stats.ack_republished(),
                        Err(e) => {
                            tracing::warn!(error = %e, "Republishing the watermark failed.");
                        }
                    }
                }
            }
        }
    };

    let stopper = async {
        shutdown.await;
        tracing::info!("Draining: finishing the current message, then disconnecting.");
        let _ = stop_tx.send(true);
    };
    let all = async {
        tokio::join!(driver, preparer, worker, republisher);
    };
    tokio::pin!(all);
    tokio::select! {
        () = &mut all => {}
        () = stopper => {
            if tokio::time::timeout(settings.shutdown_timeout, &mut all).await.is_err() {
                tracing::warn!("The drain took longer than sink.shutdown_timeout; stopping now.");
            }
        }
    }
    Ok(())
}

/// Resolves once the flag is set (or its sender is gone); holds no borrow of the value.
async fn until_set(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

/// The book, even if a holder panicked (its state is plain data, always consistent).
fn lock(book: &Mutex<AckBook>) -> MutexGuard<'_, AckBook> {
    book.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The topic, when a received message is on an ack topic under `prefix`.
fn ack_topic<'t>(prefix: &str, topic: &'t [u8]) -> Option<&'t str> {
    if !topic.ends_with(b"/ack") {
        return None;
    }
    let topic = std::str::from_utf8(topic).ok()?;
    matches!(topic::parse(prefix, topic), Some((_, _, TopicKind::Ack))).then_some(topic)
}

/// What the worker does after handling a message.
enum Handled {
    /// Acknowledge it, and publish this watermark (topic, payload) if any.
    Ack(Option<(String, AckWatermark)>),
    /// Shutdown came while the database was failing: leave it unacknowledged.
    Abandoned,
}

/// A delivered message, prepared for the worker: validated, and hashed when it is a batch.
struct Prepared {
    delivery: Delivery,
    topic: String,
    now: i64,
    verdict: Verdict,
}

/// The validator's verdict, with a readings batch already hashed for the ledger.
enum Verdict {
    Batch(Arc<HashedBatch>),
    Other(Inbound),
    Refused(Rejection),
}

/// Counts a received message, validates it and hashes a batch (the preparing stage).
fn prepare(delivery: Delivery, rules: &Rules, stats: &SinkStats) -> Prepared {
    stats.received();
    let topic = String::from_utf8_lossy(&delivery.publish.topic).into_owned();
    let now = now_ms();
    let verdict = match validate::validate(rules, &topic, &delivery.publish.payload, now) {
        Ok(Inbound::Batch(b)) => {
            let raw = RawMessage {
                topic: topic.clone(),
                payload: delivery.publish.payload.to_vec(),
                received_at: now,
            };
            Verdict::Batch(Arc::new(HashedBatch::new(b, raw)))
        }
        Ok(other) => Verdict::Other(other),
        Err(rejection) => Verdict::Refused(rejection),
    };
    Prepared {
        delivery,
        topic,
        now,
        verdict,
    }
}

/// The most messages stored in one transaction by [`Store::store_batches`].
const GROUP_MAX: usize = 16;

/// The most prepared messages waiting for the worker: two groups. The preparing stage runs
/// that far ahead and then waits, so decoded messages do not pile up in memory (the queue
/// before it holds the raw messages, which the poller must never wait to add to).
const READY_MAX: usize = 2 * GROUP_MAX;

/// How long the republisher waits after a low watermark is seen before it checks again and
/// republishes (see "Watermark convergence").
pub const REPUBLISH_SETTLE: Duration = Duration::from_millis(100);

/// Stores a group of readings batches in one transaction. On success returns, per message,
/// what to do (acknowledge, and the watermark); on a database error `None`, and the caller
/// stores them one at a time, with retries.
async fn store_group<S: Store>(
    group: &[Prepared],
    prefix: &str,
    store: &S,
    stats: &SinkStats,
) -> Option<Vec<Handled>> {
    let mut batches = Vec::with_capacity(group.len());
    for p in group {
        let Verdict::Batch(b) = &p.verdict else {
            return None;
        };
        batches.push(Arc::clone(b));
    }
    match store.store_batches(batches).await {
        Ok(commits) => Some(
            group
                .iter()
                .zip(commits)
                .map(|(p, commit)| match &p.verdict {
                    Verdict::Batch(h) => {
                        let b = h.batch();
                        committed(stats, prefix, &b.site, &b.gateway, &p.topic, commit, p.now)
                    }
                    _ => Handled::Ack(None),
                })
                .collect(),
        ),
        Err(e) => {
            stats.store_error();
            tracing::warn!(error = %e, messages = group.len(),
                "Storing a group of batches failed; storing them one at a time.");
            None
        }
    }
}

/// Stores one prepared message, retrying database failures until they succeed or a
/// shutdown is requested.
async fn handle<S: Store>(
    prepared: &Prepared,
    prefix: &str,
    store: &S,
    stats: &SinkStats,
    stop: &mut watch::Receiver<bool>,
) -> Handled {
    let Prepared {
        delivery,
        topic,
        now,
        verdict,
    } = prepared;
    let (topic, now) = (topic.as_str(), *now);
    let raw = || RawMessage {
        topic: topic.to_owned(),
        payload: delivery.publish.payload.to_vec(),
        received_at: now,
    };
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let result: Result<Handled, StoreError> = match verdict {
            Verdict::Refused(rejection) => store
                .dead_letter(raw(), rejection.reason, rejection.detail.clone())
                .await
                .map(|()| {
                    stats.dead_letter(rejection.reason);
                    tracing::warn!(
                        %topic,
                        reason = rejection.reason.as_str(),
                        detail = %rejection.detail,
                        "Message refused; kept in the dead letters."
                    );
                    Handled::Ack(None)
                }),
            Verdict::Other(Inbound::Cleared) => {
                stats.ignored();
                Ok(Handled::Ack(None))
            }
            Verdict::Other(Inbound::Status(s)) => {
                store.store_status(s.clone(), now).await.map(|()| {
                    stats.status();
                    Handled::Ack(None)
                })
            }
            Verdict::Batch(h) => store
                .store_batches(vec![Arc::clone(h)])
                .await
                .and_then(|mut commits| {
                    commits
                        .pop()
                        .ok_or_else(|| StoreError::Worker("no commit for the batch".to_owned()))
                })
                .map(|c| {
                    let b = h.batch();
                    committed(stats, prefix, &b.site, &b.gateway, topic, c, now)
                }),
            // Stored by Verdict::Batch; the validator never leaves a batch here.
            Verdict::Other(Inbound::Batch(b)) => store
                .store_batch(b.clone(), raw())
                .await
                .map(|c| committed(stats, prefix, &b.site, &b.gateway, topic, c, now)),
            Verdict::Other(Inbound::Kpi(k)) => store
                .store_kpis(k.clone(), raw())
                .await
                .map(|c| committed(stats, prefix, &k.site, &k.gateway, topic, c, now)),
            Verdict::Other(Inbound::Gap(g)) => store.store_gap(g.clone(), now).await.map(|c| {
                if matches!(c.outcome, Outcome::Stored { .. }) {
                    stats.gap();
                }
                committed(stats, prefix, &g.site, &g.gateway, topic, c, now)
            }),
        };
        match result {
            Ok(h) => return h,
            Err(e) => {
                stats.store_error();
                let wait = backoff.wait();
                tracing::error!(error = %e, %topic, ?wait, "Storing failed; retrying (not acknowledged).");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = until_set(stop) => return Handled::Abandoned,
                }
            }
        }
    }
}

/// Counts a commit and builds the watermark to publish.
fn committed(
    stats: &SinkStats,
    prefix: &str,
    site: &str,
    gateway: &str,
    topic: &str,
    commit: crate::store::Commit,
    now: i64,
) -> Handled {
    match &commit.outcome {
        Outcome::Stored { items, duplicates } if !topic.ends_with("/gaps") => {
            stats.stored(*items, *duplicates);
        }
        Outcome::Stored { .. } => {}
        Outcome::Duplicate { items } => {
            if !topic.ends_with("/gaps") {
                stats.duplicate(*items);
            }
        }
        Outcome::Conflict { detail } => {
            stats.conflicting();
            tracing::error!(%topic, %detail, "Conflicting duplicate quarantined.");
        }
    }
    let ack_topic = match Topics::new(prefix, site, gateway) {
        Ok(t) => t.ack().to_owned(),
        Err(_) => return Handled::Ack(None),
    };
    let streams: Vec<StreamAck> = commit.acks;
    Handled::Ack(Some((
        ack_topic,
        AckWatermark {
            schema: SCHEMA_VERSION,
            gateway: gateway.to_owned(),
            streams,
            ts: now,
        },
    )))
}

// ------------------------------------------------------------------------------------------
// Watermark convergence: the pure bookkeeping
// ------------------------------------------------------------------------------------------

/// Own publications remembered per ack topic, to recognise their echoes.
const ECHOES: usize = 32;

/// This sink's view of the retained ack topics (see "Watermark convergence"): what it has
/// computed and what each topic is known to carry. Pure; the poller, the worker and the
/// republisher share it behind a mutex and hold it only for these calls.
#[derive(Debug, Default)]
struct AckBook {
    topics: HashMap<String, TopicAcks>,
    hasher: RandomState,
}

/// One ack topic in the [`AckBook`].
#[derive(Debug)]
struct TopicAcks {
    gateway: String,
    /// The highest watermark this sink has computed per epoch, over the epochs of its latest
    /// commit for the gateway (at most [`MAX_ACK_STREAMS`](crate::store::MAX_ACK_STREAMS)).
    mine: Vec<StreamAck>,
    /// What the topic carries as far as this sink knows.
    last: Vec<StreamAck>,
    /// Hashes of this sink's recent publications not yet seen back, oldest first.
    sent: VecDeque<u64>,
    /// `last` is below `mine` for some epoch.
    due: bool,
}

fn seq_of(streams: &[StreamAck], epoch: Epoch) -> Option<u64> {
    streams.iter().find(|s| s.epoch == epoch).map(|s| s.seq)
}

/// Whether `last` carries some epoch below this sink's value for it.
fn behind(last: &[StreamAck], mine: &[StreamAck]) -> bool {
    last.iter()
        .any(|s| seq_of(mine, s.epoch).is_some_and(|m| m > s.seq))
}

/// `streams` with every epoch raised to this sink's value where that is higher.
fn raised(streams: &[StreamAck], mine: &[StreamAck]) -> Vec<StreamAck> {
    streams
        .iter()
        .map(|s| StreamAck {
            epoch: s.epoch,
            seq: s.seq.max(seq_of(mine, s.epoch).unwrap_or(0)),
        })
        .collect()
}

impl TopicAcks {
    fn sending(&mut self, hash: u64, streams: Vec<StreamAck>) {
        if self.sent.len() == ECHOES {
            self.sent.pop_front();
        }
        self.sent.push_back(hash);
        self.last = streams;
        self.due = behind(&self.last, &self.mine);
    }
}

impl AckBook {
    /// This sink is about to publish `ack` (encoded as `payload`) on `topic` after a commit.
    fn published(&mut self, topic: &str, ack: &AckWatermark, payload: &[u8]) {
        let hash = self.hasher.hash_one(payload);
        let entry = self
            .topics
            .entry(topic.to_owned())
            .or_insert_with(|| TopicAcks {
                gateway: ack.gateway.clone(),
                mine: Vec::new(),
                last: Vec::new(),
                sent: VecDeque::new(),
                due: false,
            });
        entry.mine = raised(&ack.streams, &entry.mine);
        entry.sending(hash, ack.streams.clone());
    }

    /// A message seen on an ack topic. Returns whether a republication is now due.
    fn seen(&mut self, topic: &str, payload: &[u8]) -> bool {
        let hash = self.hasher.hash_one(payload);
        let Some(entry) = self.topics.get_mut(topic) else {
            // This sink has computed nothing for the gateway: nothing to compare.
            return false;
        };
        if let Some(i) = entry.sent.iter().position(|h| *h == hash) {
            // Our own publication, back from a broker that ignores No Local; what we sent
            // after it follows it.
            entry.sent.drain(..=i);
            return false;
        }
        // A cleared (empty) or unreadable message is not a watermark.
        let Ok(ack) = wire::decode_ack(payload) else {
            return false;
        };
        if ack.gateway != entry.gateway {
            return false;
        }
        entry.last = ack.streams;
        entry.due = behind(&entry.last, &entry.mine);
        entry.due
    }

    /// The republications due, as (topic, payload): for each topic known to carry an epoch
    /// below this sink's value, that message with every epoch raised to this sink's value.
    fn take_due(&mut self, now: i64) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for (topic, entry) in &mut self.topics {
            if !entry.due {
                continue;
            }
            let ack = AckWatermark {
                schema: SCHEMA_VERSION,
                gateway: entry.gateway.clone(),
                streams: raised(&entry.last, &entry.mine),
                ts: now,
            };
            let payload = wire::encode(&ack);
            entry.sending(self.hasher.hash_one(&payload), ack.streams);
            out.push((topic.clone(), payload));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "fivezero/v1/s/gw/ack";

    fn ack(streams: &[(u64, u64)], ts: i64) -> AckWatermark {
        AckWatermark {
            schema: SCHEMA_VERSION,
            gateway: "gw".into(),
            streams: streams
                .iter()
                .map(|&(e, seq)| StreamAck {
                    epoch: Epoch(e),
                    seq,
                })
                .collect(),
            ts,
        }
    }

    fn publish(book: &mut AckBook, a: &AckWatermark) -> Vec<u8> {
        let payload = wire::encode(a);
        book.published(T, a, &payload);
        payload
    }

    #[test]
    fn a_lower_watermark_from_another_sink_is_republished_raised() {
        // Given this sink computed 100 for epoch 1 and 7 for epoch 2
        let mut book = AckBook::default();
        publish(&mut book, &ack(&[(1, 100), (2, 7)], 1));
        // When another sink's older commit arrives later, with 90 and 8
        assert!(book.seen(T, &wire::encode(&ack(&[(1, 90), (2, 8)], 2))));
        // Then the republication carries the highest of both per epoch
        let due = book.take_due(5);
        assert_eq!(due.len(), 1);
        let (topic, payload) = &due[0];
        assert_eq!(topic, T);
        let got = wire::decode_ack(payload).unwrap();
        assert_eq!(got.streams, ack(&[(1, 100), (2, 8)], 5).streams);
        assert_eq!(got.ts, 5);
        // and nothing more is due
        assert!(book.take_due(6).is_empty());
    }

    #[test]
    fn an_equal_or_higher_watermark_needs_nothing() {
        let mut book = AckBook::default();
        publish(&mut book, &ack(&[(1, 100)], 1));
        assert!(!book.seen(T, &wire::encode(&ack(&[(1, 100)], 2))));
        assert!(!book.seen(T, &wire::encode(&ack(&[(1, 120)], 3))));
        assert!(book.take_due(4).is_empty());
    }

    #[test]
    fn this_sinks_next_publication_clears_a_due_republication() {
        let mut book = AckBook::default();
        publish(&mut book, &ack(&[(1, 100)], 1));
        assert!(book.seen(T, &wire::encode(&ack(&[(1, 90)], 2))));
        publish(&mut book, &ack(&[(1, 110)], 3));
        assert!(book.take_due(4).is_empty());
    }

    #[test]
    fn echoes_of_own_publications_are_not_taken_for_another_sinks() {
        // Given two publications of this sink, 100 then 110
        let mut book = AckBook::default();
        let first = publish(&mut book, &ack(&[(1, 100)], 1));
        let second = publish(&mut book, &ack(&[(1, 110)], 2));
        // When a broker that ignores No Local sends both back
        assert!(!book.seen(T, &first));
        assert!(!book.seen(T, &second));
        // Then nothing is due
        assert!(book.take_due(3).is_empty());
    }

    #[test]
    fn cleared_unreadable_foreign_and_unknown_topics_are_ignored() {
        let mut book = AckBook::default();
        publish(&mut book, &ack(&[(1, 100)], 1));
        assert!(!book.seen(T, b""));
        assert!(!book.seen(T, b"{not json"));
        let mut other = ack(&[(1, 1)], 2);
        other.gateway = "gw2".into();
        assert!(!book.seen(T, &wire::encode(&other)));
        assert!(!book.seen("fivezero/v1/s/gw9/ack", &wire::encode(&ack(&[(1, 1)], 2))));
        assert!(book.take_due(3).is_empty());
    }

    #[test]
    fn epochs_this_sink_never_computed_are_left_as_they_are() {
        let mut book = AckBook::default();
        publish(&mut book, &ack(&[(1, 100)], 1));
        assert!(book.seen(T, &wire::encode(&ack(&[(3, 5), (1, 50)], 2))));
        let (_, payload) = book.take_due(3).pop().unwrap();
        assert_eq!(
            wire::decode_ack(&payload).unwrap().streams,
            ack(&[(3, 5), (1, 100)], 3).streams
        );
    }

    #[test]
    fn two_books_exchanging_messages_agree_on_the_highest() {
        // Given two sinks that computed different epochs' highs
        let (mut a, mut b) = (AckBook::default(), AckBook::default());
        let pa = publish(&mut a, &ack(&[(1, 100), (2, 5)], 1));
        let pb = publish(&mut b, &ack(&[(1, 90), (2, 9)], 2));
        // When each sees the other's message (in either order on the broker)
        b.seen(T, &pa);
        a.seen(T, &pb);
        // Then after they exchange republications, neither has anything more to say and the
        // last message either sends carries the highest of each epoch
        let mut last = pb;
        for _ in 0..4 {
            for (_, p) in a.take_due(3) {
                b.seen(T, &p);
                last = p;
            }
            for (_, p) in b.take_due(3) {
                a.seen(T, &p);
                last = p;
            }
        }
        assert!(a.take_due(4).is_empty() && b.take_due(4).is_empty());
        assert_eq!(
            wire::decode_ack(&last).unwrap().streams,
            ack(&[(1, 100), (2, 9)], 0).streams
        );
    }

    #[test]
    fn ack_topics_are_recognised_under_the_prefix_only() {
        let p = "fivezero/v1";
        assert_eq!(ack_topic(p, T.as_bytes()), Some(T));
        assert_eq!(ack_topic(p, b"fivezero/v1/s/gw/batches"), None);
        assert_eq!(ack_topic(p, b"other/v1/s/gw/ack"), None);
        assert_eq!(ack_topic(p, b"fivezero/v1/s/gw/x/ack"), None);
    }
}
