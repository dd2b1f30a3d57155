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
//! - **Group commit.** The worker takes the message at the head of the queue with whatever
//!   else is already queued (up to 16); consecutive readings batches among them are stored
//!   in one transaction ([`Store::store_batches`]: one commit, one fsync on SQLite), then each
//!   is acknowledged. Under a backlog this divides the commits by up to 16; with one message
//!   at a time it is the single-message path. If the group's transaction fails, its messages
//!   are stored one at a time with the usual retries.
//! - **Watermark.** After each commit of a batch, KPI batch or gap, the gateway's watermarks
//!   are published retained (QoS 1) on its `…/ack` topic as an [`AckWatermark`] (once per
//!   gateway per group commit, the newest).
//! - **Drain.** When `shutdown` resolves, the message being stored is finished and
//!   acknowledged, nothing more is taken, the client sends DISCONNECT (the session stays with
//!   the broker, so queued messages wait for the next start), and `run` returns.

use std::collections::BTreeSet;
use std::future::Future;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use fivezero_model::topic::{self, TopicKind, Topics};
use fivezero_model::wire::{self, AckWatermark, SCHEMA_VERSION, StreamAck};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use tokio::sync::{mpsc, watch};

use crate::stats::SinkStats;
use crate::store::{Outcome, RawMessage, Store, StoreError};
use crate::validate::{self, Inbound, Rules};

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
    let rules = Rules {
        prefix: settings.prefix.clone(),
        max_payload: usize::try_from(settings.max_packet_size).unwrap_or(usize::MAX),
        allowed_gateways: settings.allowed_gateways.clone(),
    };
    let cap = usize::from(settings.inflight.get());
    let (client, mut eventloop) = AsyncClient::new(settings.options(), cap.max(16));
    let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
    let queued = Arc::new(AtomicUsize::new(0));
    let connection = Arc::new(AtomicU64::new(0));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = watch::channel(false);

    let driver = {
        let client = client.clone();
        let connection = Arc::clone(&connection);
        let stats = stats.clone();
        let queued = Arc::clone(&queued);
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
                        let subs: Vec<Filter> = filters
                            .iter()
                            .map(|f| Filter::new(f.clone(), QoS::AtLeastOnce))
                            .collect();
                        let client = client.clone();
                        tokio::spawn(async move {
                            if let Err(e) = client.subscribe_many(subs).await {
                                tracing::error!(error = %e, "Subscribing failed.");
                            }
                        });
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
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

    let worker = {
        let client = client.clone();
        async move {
            'work: loop {
                let first = tokio::select! {
                    biased;
                    _ = until_set(&mut stop_rx) => break,
                    d = rx.recv() => match d {
                        Some(d) => d,
                        None => break,
                    },
                };
                // Whatever else is already queued joins it (up to GROUP_MAX): consecutive
                // readings batches are then stored in one transaction.
                let mut group = vec![first];
                while group.len() < GROUP_MAX {
                    match rx.try_recv() {
                        Ok(d) => group.push(d),
                        Err(_) => break,
                    }
                }
                queued.fetch_sub(group.len(), Ordering::SeqCst);
                let group: Vec<(Delivery, Checked)> = group
                    .into_iter()
                    .map(|d| {
                        let c = check(&d.publish, &rules, &stats);
                        (d, c)
                    })
                    .collect();
                let mut start = 0;
                while start < group.len() {
                    // Draining: what is not stored yet stays with the broker's session.
                    if start > 0 && *stop_rx.borrow() {
                        break 'work;
                    }
                    let run = group[start..]
                        .iter()
                        .take_while(|(_, c)| matches!(c.verdict, Ok(Inbound::Batch(_))))
                        .count();
                    let together = if run > 1 {
                        store_group(&group[start..start + run], &rules.prefix, &store, &stats).await
                    } else {
                        None
                    };
                    let (handled, n) = match together {
                        Some(h) => (h, run),
                        None => {
                            let (d, c) = &group[start];
                            let h =
                                handle(&d.publish, c, &rules, &store, &stats, &mut stop_rx).await;
                            (vec![h], 1)
                        }
                    };
                    // Acknowledge each message; publish each gateway's newest watermark once.
                    let mut marks: Vec<(String, AckWatermark)> = Vec::new();
                    for ((d, _), h) in group[start..start + n].iter().zip(handled) {
                        let Handled::Ack(acks) = h else {
                            break 'work;
                        };
                        if d.connection == connection.load(Ordering::SeqCst)
                            && let Err(e) = client.ack(&d.publish).await
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
                        match client.publish(topic, QoS::AtLeastOnce, true, payload).await {
                            Ok(()) => stats.ack_published(),
                            Err(e) => {
                                tracing::warn!(error = %e, "Publishing the watermark failed.")
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

    let stopper = async {
        shutdown.await;
        tracing::info!("Draining: finishing the current message, then disconnecting.");
        let _ = stop_tx.send(true);
    };
    let all = async {
        tokio::join!(driver, worker);
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

/// What the worker does after handling a message.
enum Handled {
    /// Acknowledge it, and publish this watermark (topic, payload) if any.
    Ack(Option<(String, AckWatermark)>),
    /// Shutdown came while the database was failing: leave it unacknowledged.
    Abandoned,
}

/// A delivered message, validated.
struct Checked {
    topic: String,
    now: i64,
    verdict: Result<Inbound, validate::Rejection>,
}

/// Counts a received message and validates it.
fn check(publish: &Publish, rules: &Rules, stats: &SinkStats) -> Checked {
    stats.received();
    let topic = String::from_utf8_lossy(&publish.topic).into_owned();
    let now = now_ms();
    let verdict = validate::validate(rules, &topic, &publish.payload, now);
    Checked {
        topic,
        now,
        verdict,
    }
}

/// The most messages stored in one transaction by [`Store::store_batches`].
const GROUP_MAX: usize = 16;

/// Stores a group of readings batches (all `Inbound::Batch`) in one transaction. On success
/// returns, per message, what to do (acknowledge, and the watermark); on a database error
/// `None`, and the caller stores them one at a time, with retries.
async fn store_group<S: Store>(
    group: &[(Delivery, Checked)],
    prefix: &str,
    store: &S,
    stats: &SinkStats,
) -> Option<Vec<Handled>> {
    let mut batches = Vec::with_capacity(group.len());
    for (d, c) in group {
        let Ok(Inbound::Batch(b)) = &c.verdict else {
            return None;
        };
        let raw = RawMessage {
            topic: c.topic.clone(),
            payload: d.publish.payload.to_vec(),
            received_at: c.now,
        };
        batches.push((b.clone(), raw));
    }
    match store.store_batches(batches).await {
        Ok(commits) => Some(
            group
                .iter()
                .zip(commits)
                .map(|((_, c), commit)| match &c.verdict {
                    Ok(Inbound::Batch(b)) => {
                        committed(stats, prefix, &b.site, &b.gateway, &c.topic, commit, c.now)
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

/// Stores one validated message, retrying database failures until they succeed or a
/// shutdown is requested.
async fn handle<S: Store>(
    publish: &Publish,
    checked: &Checked,
    rules: &Rules,
    store: &S,
    stats: &SinkStats,
    stop: &mut watch::Receiver<bool>,
) -> Handled {
    let Checked {
        topic,
        now,
        verdict,
    } = checked;
    let (topic, now) = (topic.clone(), *now);
    let raw = || RawMessage {
        topic: topic.clone(),
        payload: publish.payload.to_vec(),
        received_at: now,
    };
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let result: Result<Handled, StoreError> = match verdict {
            Err(rejection) => store
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
            Ok(Inbound::Cleared) => {
                stats.ignored();
                Ok(Handled::Ack(None))
            }
            Ok(Inbound::Status(s)) => store.store_status(s.clone(), now).await.map(|()| {
                stats.status();
                Handled::Ack(None)
            }),
            Ok(Inbound::Batch(b)) => {
                let (site, gw) = (b.site.clone(), b.gateway.clone());
                store
                    .store_batch(b.clone(), raw())
                    .await
                    .map(|c| committed(stats, &rules.prefix, &site, &gw, &topic, c, now))
            }
            Ok(Inbound::Kpi(k)) => {
                let (site, gw) = (k.site.clone(), k.gateway.clone());
                store
                    .store_kpis(k.clone(), raw())
                    .await
                    .map(|c| committed(stats, &rules.prefix, &site, &gw, &topic, c, now))
            }
            Ok(Inbound::Gap(g)) => {
                let (site, gw) = (g.site.clone(), g.gateway.clone());
                store.store_gap(g.clone(), now).await.map(|c| {
                    if matches!(c.outcome, Outcome::Stored { .. }) {
                        stats.gap();
                    }
                    committed(stats, &rules.prefix, &site, &gw, &topic, c, now)
                })
            }
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
