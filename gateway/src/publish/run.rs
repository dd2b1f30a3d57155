//! The publisher's task: ties the window, the rate limit, the stall watch, the outbox and the
//! link together. Every decision is made by the pure modules; this file only moves data
//! between them and logs.

use std::future::Future;

use fivezero_model::topic::TopicKind;
use fivezero_model::wire::{self, Epoch, MAX_BATCH_READINGS, Presence, SCHEMA_VERSION, Status};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::link::{self, Client, Driver, LinkEvent};
use super::rate::TokenBucket;
use super::stall::StallWatch;
use super::throttle::Throttle;
use super::window::{MessageRef, Slot, Window, WindowError};
use super::{PublishError, PublishStats, PublisherConfig, RetainUntil};
use crate::config::MqttProtocol;
use crate::failpoints::{self, failpoint};
use crate::outbox::{Lane, Limits, Outbox, OutboxError};
use crate::poll::Backoff;

/// Events buffered between the driver and the publisher.
const EVENT_CHANNEL: usize = 256;

/// Where a clean stop stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Not stopping.
    Running,
    /// Asked to stop: publish `offline` when the window has room.
    Requested { deadline: Instant },
    /// `offline` handed to the client; waiting for its PUBACK.
    AwaitingOffline { deadline: Instant },
    /// DISCONNECT handed to the client; waiting for it to go out.
    Disconnecting { deadline: Instant },
    /// Finished.
    Done,
}

impl Stop {
    const fn deadline(self) -> Option<Instant> {
        match self {
            Self::Requested { deadline }
            | Self::AwaitingOffline { deadline }
            | Self::Disconnecting { deadline } => Some(deadline),
            Self::Running | Self::Done => None,
        }
    }
}

#[derive(Debug, Default)]
struct Logs {
    down: Throttle,
    outbox: Throttle,
    malformed: Throttle,
    refused: Throttle,
    oversized: Throttle,
    client: Throttle,
}

/// The state of one `Publisher::run`.
struct Runner<'a, O> {
    cfg: &'a PublisherConfig,
    outbox: &'a O,
    stats: &'a PublishStats,
    client: Client,
    resume: mpsc::Sender<()>,
    window: Window,
    bucket: TokenBucket,
    stall: StallWatch,
    /// The epoch `stall` watches.
    stall_epoch: Epoch,
    /// Backoff of buffer retries and of rewinds after refused publishes.
    retry_backoff: Backoff,
    broker: String,
    connected: bool,
    ever_connected: bool,
    down_since: Option<Instant>,
    limits: Limits,
    /// Largest packet the broker (MQTT 5) or rumqttc (3.1.1) takes, when known.
    packet_limit: Option<usize>,
    /// The backlog lane may have messages to hand out.
    want_messages: bool,
    /// The live lane may have messages to hand out.
    want_live: bool,
    /// The sink's watermark as last received, with its epoch.
    sink_watermark: Option<(Epoch, u64)>,
    want_gaps: bool,
    /// In `sink_ack` mode: ask the outbox to hand out again what the broker acknowledged but
    /// the sink has not confirmed (after a reconnect, or when the sink's watermark stalls).
    want_replay: bool,
    retry_at: Option<Instant>,
    rewind_at: Option<Instant>,
    /// The highest committed sequence of the current stream, where a live lane splits it.
    tip: watch::Receiver<u64>,
    stop: Stop,
    fatal: Option<PublishError>,
    logs: Logs,
}

impl<O> std::fmt::Debug for Runner<'_, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("broker", &self.broker)
            .field("connected", &self.connected)
            .field("window", &self.window)
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

/// Runs the publisher until `shutdown` completes (then stops cleanly) or the outbox closes.
pub(super) async fn run<O, S>(
    cfg: &PublisherConfig,
    outbox: &O,
    stats: &PublishStats,
    shutdown: S,
) -> Result<(), PublishError>
where
    O: Outbox,
    S: Future<Output = ()> + Send,
{
    let (client, event_loop) = link::build(cfg);
    let (events_tx, mut events) = mpsc::channel(EVENT_CHANNEL);
    let (resume_tx, resume_rx) = mpsc::channel(1);
    let driver = Driver {
        event_loop,
        events: events_tx,
        resume: resume_rx,
        backoff: Backoff::new(cfg.backoff_min, cfg.backoff_max, cfg.seed),
        will: cfg.clone(),
    }
    .run();
    tokio::pin!(driver);
    tokio::pin!(shutdown);
    let mut committed = outbox.committed();
    let mut committed_open = true;
    let mut driver_done = false;
    let mut runner = Runner::new(cfg, outbox, stats, client, resume_tx);
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    info!(
        broker = %runner.broker,
        protocol = if cfg.protocol == MqttProtocol::V5 { "5" } else { "3.1.1" },
        window = cfg.window.get(),
        client_id = cfg.topics.gateway(),
        "Publisher starting."
    );

    loop {
        let wake = runner.next_wake(Instant::now());
        if let Some(at) = wake {
            timer.as_mut().reset(at);
        }
        tokio::select! {
            biased;
            () = &mut shutdown, if runner.stop == Stop::Running => runner.request_stop(Instant::now()),
            () = &mut driver, if !driver_done => driver_done = true,
            event = events.recv() => match event {
                Some(event) => runner.on_event(event).await,
                None => driver_done = true,
            },
            changed = committed.changed(), if committed_open => match changed {
                Ok(()) => {
                    runner.want_messages = true;
                    runner.want_live = true;
                    runner.want_gaps = true;
                }
                Err(_) => committed_open = false,
            },
            () = &mut timer, if wake.is_some() => {}
        }
        runner.on_time(Instant::now());
        if runner.stop == Stop::Done || driver_done {
            break;
        }
        runner.fill(Instant::now()).await;
    }
    stats.stopped();
    info!(broker = %runner.broker, "Publisher stopped.");
    match runner.fatal.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

impl<'a, O: Outbox> Runner<'a, O> {
    fn new(
        cfg: &'a PublisherConfig,
        outbox: &'a O,
        stats: &'a PublishStats,
        client: Client,
        resume: mpsc::Sender<()>,
    ) -> Self {
        let now = Instant::now();
        let burst = std::num::NonZeroU32::from(cfg.window);
        let mut runner = Self {
            cfg,
            outbox,
            stats,
            client,
            resume,
            window: Window::new(cfg.window),
            bucket: TokenBucket::new(cfg.replay_rate, burst, now),
            stall: StallWatch::new(cfg.stall_min, cfg.stall_max),
            stall_epoch: outbox.epoch(),
            retry_backoff: Backoff::new(cfg.backoff_min, cfg.backoff_max, cfg.seed.wrapping_add(1)),
            broker: cfg.broker(),
            connected: false,
            ever_connected: false,
            down_since: None,
            limits: Limits {
                messages: 0,
                items_per_message: 0,
                bytes_per_message: 0,
            },
            packet_limit: None,
            want_messages: true,
            want_live: false,
            sink_watermark: None,
            want_gaps: true,
            want_replay: false,
            retry_at: None,
            rewind_at: None,
            tip: outbox.committed(),
            stop: Stop::Running,
            fatal: None,
            logs: Logs::default(),
        };
        runner.set_limits(None);
        runner
    }

    /// The topic a data message goes to.
    fn data_topic(&self, kind: TopicKind) -> Option<&'a str> {
        match kind {
            TopicKind::Batches => Some(self.cfg.topics.batches()),
            TopicKind::Kpi => Some(self.cfg.topics.kpi()),
            TopicKind::Gaps | TopicKind::Status | TopicKind::Ack => None,
        }
    }

    /// Message limits for this connection: the configured ones, with `bytes_per_message`
    /// lowered so the largest packet fits the broker's Maximum Packet Size.
    fn set_limits(&mut self, broker_max: Option<u32>) {
        let topics = &self.cfg.topics;
        let longest = topics.batches().len().max(topics.kpi().len());
        let overhead = self.client.overhead(longest);
        let mut bytes = self.cfg.bytes_per_message.get();
        self.packet_limit = match self.client {
            Client::V4(_) => Some(
                bytes
                    + self
                        .client
                        .overhead(longest.max(topics.gaps().len()).max(topics.status().len())),
            ),
            Client::V5(_) => broker_max.map(|m| usize::try_from(m).unwrap_or(usize::MAX)),
        };
        if let Some(max) = broker_max {
            let fits = usize::try_from(max)
                .unwrap_or(usize::MAX)
                .saturating_sub(overhead);
            if fits < bytes {
                info!(
                    broker = %self.broker,
                    max_packet_size = max,
                    bytes_per_message = fits,
                    "Messages shrunk to the broker's maximum packet size."
                );
                bytes = fits;
            }
        }
        self.limits = Limits {
            messages: usize::from(self.cfg.window.get()),
            items_per_message: self.cfg.items_per_message.get().min(MAX_BATCH_READINGS),
            bytes_per_message: bytes.max(1),
        };
    }

    fn request_stop(&mut self, now: Instant) {
        let deadline = now + self.cfg.shutdown_timeout;
        self.stop = if self.connected {
            info!(broker = %self.broker, "Stopping: publishing offline status.");
            Stop::Requested { deadline }
        } else {
            Stop::Done
        };
    }

    fn next_wake(&mut self, now: Instant) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
        };
        at(self.retry_at);
        at(self.rewind_at);
        at(self.stop.deadline());
        if self.connected && self.cfg.retain_until == RetainUntil::SinkAck {
            at(self.stall.due());
        }
        if self.connected
            && self.stop == Stop::Running
            && self.wants_messages()
            && self.retry_at.is_none()
            && self.window.room() > 0
        {
            at(Some(self.bucket.next_token(now)));
        }
        wake
    }

    fn on_time(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
        }
        if self.rewind_at.is_some_and(|t| now >= t) {
            self.rewind_at = None;
            self.rewind();
        }
        if self.connected
            && self.stop == Stop::Running
            && self.cfg.retain_until == RetainUntil::SinkAck
            && self.stall.is_due(now)
        {
            self.stats.replay();
            warn!(
                broker = %self.broker,
                sink_watermark = self.stall.sink(),
                "The sink's watermark is stuck behind the broker's acknowledgements; \
                 republishing from the buffer."
            );
            self.stall.replayed(now);
            self.rewind();
        }
        if self.stop.deadline().is_some_and(|d| now >= d) {
            warn!(
                broker = %self.broker,
                "Stopped before the broker acknowledged the offline status; the will reports it."
            );
            self.stop = Stop::Done;
        }
    }

    /// The stall watch, started afresh when the buffer's epoch changed.
    fn stall_for_current_epoch(&mut self) -> &mut StallWatch {
        let epoch = self.outbox.epoch();
        if self.stall_epoch != epoch {
            self.stall_epoch = epoch;
            self.stall = StallWatch::new(self.cfg.stall_min, self.cfg.stall_max);
        }
        &mut self.stall
    }

    fn rewind(&mut self) {
        self.window.rewind();
        self.split_at_tip();
        self.want_messages = true;
        self.want_gaps = true;
        self.want_replay = self.cfg.retain_until == RetainUntil::SinkAck;
    }

    /// True when a lane has messages to hand out now.
    fn wants_messages(&self) -> bool {
        (self.want_live && self.window.live().is_some())
            || (self.want_messages && !self.backlog_paused())
    }

    /// Sequences the backlog lane may run ahead of the sink's watermark: a full window of
    /// full messages.
    fn replay_ahead(&self) -> u64 {
        u64::try_from(self.limits.messages).unwrap_or(u64::MAX)
            * u64::from(self.limits.items_per_message)
    }

    /// In `sink_ack` mode, while a live lane is open, the replay is paced by the sink: the
    /// backlog lane waits while it is more than [`Runner::replay_ahead`] sequences past the
    /// sink's watermark, so the broker never queues more replay in front of the live lane's
    /// messages than the sink takes in a moment (without it, after an hour's outage a fresh
    /// reading would wait behind minutes of backlog in the broker's queue to the sink). A
    /// watermark stuck at a message the broker lost holds the replay until the stall watch
    /// republishes from it; the live lane goes on meanwhile. Without a watermark seen yet (no
    /// sink, or the ack topic refused) it does not wait.
    fn backlog_paused(&self) -> bool {
        self.cfg.retain_until == RetainUntil::SinkAck
            && self
                .window
                .replay_paused(self.sink_watermark, self.replay_ahead())
    }

    /// Opens the live lane at the current stream's last commit: what is committed from now
    /// on goes out at once, beside the replay of what was committed before.
    fn split_at_tip(&mut self) {
        let split = *self.tip.borrow_and_update();
        self.window.open_live(self.outbox.epoch(), split);
        self.want_live = true;
    }

    fn schedule_retry(&mut self, now: Instant) {
        if self.retry_at.is_none() {
            let wait = self.retry_backoff.fail(now);
            self.retry_at = Some(now + wait);
        }
    }

    fn schedule_rewind(&mut self, now: Instant) {
        if self.rewind_at.is_none() {
            let wait = self.retry_backoff.fail(now);
            self.rewind_at = Some(now + wait);
        }
    }

    /// A buffer operation failed: retry later, or stop when the buffer is closed.
    fn outbox_failed(&mut self, what: &'static str, e: OutboxError, now: Instant) {
        match e {
            OutboxError::Closed => {
                if self.fatal.is_none() {
                    info!(broker = %self.broker, "The buffer is closed; stopping the publisher.");
                    self.fatal = Some(PublishError::Outbox(OutboxError::Closed));
                }
                if self.stop == Stop::Running {
                    self.request_stop(now);
                }
            }
            OutboxError::Storage(message) => {
                self.stats.outbox_error();
                if let Some(held) = self.logs.outbox.allow(now) {
                    warn!(
                        operation = what,
                        error = %message,
                        held_back = held,
                        "Buffer operation failed; retrying (nothing is lost)."
                    );
                }
            }
        }
    }

    async fn on_event(&mut self, event: LinkEvent) {
        let now = Instant::now();
        match event {
            LinkEvent::Connected {
                session_present,
                receive_maximum,
                max_packet_size,
                retain_available,
            } => self.on_connected(
                session_present,
                receive_maximum,
                max_packet_size,
                retain_available,
                now,
            ),
            LinkEvent::Written { pkid } => match self.window.written(pkid) {
                Ok(()) => failpoint!(failpoints::K4_AFTER_PUBLISH),
                Err(WindowError::PkidInUse { dropped, .. }) => {
                    // The dropped publish has no PUBACK to wait for any more: read it from
                    // the outbox again soon.
                    debug!(
                        pkid,
                        ?dropped,
                        "Packet id reused while in flight; republishing."
                    );
                    self.schedule_rewind(now);
                }
                Err(e) => {
                    debug!(pkid, error = %e, "Write of a publish this connection did not queue; ignored.");
                }
            },
            LinkEvent::Collision { pkid } => {
                debug!(
                    pkid,
                    "Packet id still in flight; the publish waits for its PUBACK."
                );
            }
            LinkEvent::PubAck {
                pkid,
                refused,
                operator,
            } => self.on_puback(pkid, refused, operator, now).await,
            LinkEvent::Message { topic, payload } => self.on_message(&topic, &payload, now).await,
            LinkEvent::SubAck { refused } => {
                if refused {
                    error!(
                        broker = %self.broker,
                        topic = self.cfg.topics.ack(),
                        "The broker refused the subscription to the ack topic; the sink's \
                         watermark cannot be seen (check the broker's ACL)."
                    );
                }
            }
            LinkEvent::Closed => {
                debug!(broker = %self.broker, "Disconnected cleanly.");
                self.connected = false;
                self.stop = Stop::Done;
            }
            LinkEvent::Down {
                error,
                operator,
                was_connected,
            } => self.on_down(&error, operator, was_connected, now),
        }
        self.stats.in_flight(self.window.len());
    }

    fn on_connected(
        &mut self,
        session_present: bool,
        receive_maximum: Option<u16>,
        max_packet_size: Option<u32>,
        retain_available: bool,
        now: Instant,
    ) {
        let first = !self.ever_connected;
        self.ever_connected = true;
        self.connected = true;
        self.window.connected(session_present, receive_maximum);
        self.stats.connected(first);
        self.set_limits(max_packet_size);
        self.retry_backoff.reset();
        self.rewind_at = None;
        match self.down_since.take() {
            Some(since) => info!(
                broker = %self.broker,
                outage_ms = u64::try_from(now.saturating_duration_since(since).as_millis()).unwrap_or(u64::MAX),
                session_present,
                window = self.window.capacity(),
                "Reconnected to the broker; republishing everything not acknowledged."
            ),
            None => info!(
                broker = %self.broker,
                session_present,
                window = self.window.capacity(),
                "Connected to the broker."
            ),
        }
        if !retain_available {
            warn!(
                broker = %self.broker,
                "The broker does not keep retained messages; status and ack watermarks will not persist."
            );
        }
        if let Err(e) = self.client.subscribe(self.cfg.topics.ack()) {
            warn!(broker = %self.broker, error = %e, "Cannot subscribe to the ack topic.");
        }
        if !self.publish_status(Presence::Online, now) {
            debug!("Birth message not sent.");
        }
        self.split_at_tip();
        self.want_messages = true;
        self.want_gaps = true;
        self.want_replay = self.cfg.retain_until == RetainUntil::SinkAck;
    }

    fn on_down(&mut self, error: &str, operator: bool, was_connected: bool, now: Instant) {
        let forgotten = self.window.disconnected();
        self.connected = false;
        self.stats.down(was_connected);
        if was_connected {
            self.down_since = Some(now);
        }
        if let Some(held) = self.logs.down.allow(now) {
            if operator {
                error!(
                    broker = %self.broker,
                    %error,
                    held_back = held,
                    "The broker refused the connection; an operator must act. Readings stay in the buffer."
                );
            } else if was_connected {
                warn!(
                    broker = %self.broker,
                    %error,
                    republish = forgotten,
                    held_back = held,
                    "Lost the broker connection; readings stay in the buffer."
                );
            } else {
                warn!(
                    broker = %self.broker,
                    %error,
                    held_back = held,
                    "Cannot reach the broker; readings stay in the buffer."
                );
            }
        }
        if self.stop == Stop::Running {
            // The driver waits for this before it reconnects: nothing queued from now on
            // belongs to the old connection. A full channel means a resume is already there.
            let _ = self.resume.try_send(());
        } else {
            self.stop = Stop::Done;
        }
    }

    async fn on_puback(
        &mut self,
        pkid: u16,
        refused: Option<String>,
        operator: bool,
        now: Instant,
    ) {
        let Some(slot) = self.window.acked(pkid) else {
            debug!(
                pkid,
                "PUBACK for a publish of an earlier connection; ignored."
            );
            return;
        };
        if let Some(reason) = refused {
            self.stats.rejected();
            if let Some(held) = self.logs.refused.allow(now) {
                if operator {
                    error!(broker = %self.broker, %reason, ?slot, held_back = held,
                        "The broker refused a publish; it stays in the buffer (check the broker's ACL).");
                } else {
                    warn!(broker = %self.broker, %reason, ?slot, held_back = held,
                        "The broker refused a publish; it stays in the buffer and is sent again.");
                }
            }
            if let Slot::Status(Presence::Offline) = slot {
                self.disconnect();
            } else {
                self.schedule_rewind(now);
            }
            return;
        }
        if let Slot::Message(_) = slot {
            failpoint!(failpoints::K5_AFTER_PUBACK);
        }
        match slot {
            Slot::Message(m) => match self
                .outbox
                .broker_acked(m.epoch, m.first_seq, m.count)
                .await
            {
                Ok(()) => {
                    self.stats.broker_acked(m.count);
                    if m.epoch == self.outbox.epoch() {
                        self.stall_for_current_epoch()
                            .broker_acked(m.last_seq(), now);
                    }
                }
                Err(e) => {
                    self.outbox_failed("broker_acked", e, now);
                    self.schedule_rewind(now);
                }
            },
            Slot::Gap(id) => match self.outbox.gap_published(id).await {
                Ok(()) => self.stats.gap_published(),
                Err(e) => {
                    self.outbox_failed("gap_published", e, now);
                    self.schedule_rewind(now);
                }
            },
            Slot::Status(Presence::Online) => debug!("Birth message acknowledged."),
            Slot::Status(Presence::Offline) => self.disconnect(),
        }
    }

    fn disconnect(&mut self) {
        if let Stop::AwaitingOffline { deadline } | Stop::Requested { deadline } = self.stop {
            match self.client.disconnect() {
                Ok(()) => self.stop = Stop::Disconnecting { deadline },
                Err(e) => {
                    warn!(broker = %self.broker, error = %e, "Cannot send DISCONNECT.");
                    self.stop = Stop::Done;
                }
            }
        }
    }

    async fn on_message(&mut self, topic: &str, payload: &[u8], now: Instant) {
        if topic != self.cfg.topics.ack() {
            debug!(topic, "Message on an unexpected topic ignored.");
            return;
        }
        if payload.is_empty() {
            debug!(topic, "The ack watermark was cleared.");
            return;
        }
        let ack = match wire::decode_ack(payload) {
            Ok(ack) if ack.gateway == self.cfg.topics.gateway() => ack,
            other => {
                self.stats.malformed_ack();
                if let Some(held) = self.logs.malformed.allow(now) {
                    let problem = match other {
                        Ok(ack) => format!("names gateway {:?}", ack.gateway),
                        Err(e) => e.to_string(),
                    };
                    warn!(
                        topic,
                        bytes = payload.len(),
                        %problem,
                        held_back = held,
                        "Malformed ack watermark ignored."
                    );
                }
                return;
            }
        };
        for stream in &ack.streams {
            if let Err(e) = self.outbox.sink_acked(stream.epoch, stream.seq).await {
                self.outbox_failed("sink_acked", e, now);
            }
        }
        let current = ack.seq_for(self.outbox.epoch());
        self.stats.sink_ack(current);
        if let Some(seq) = current {
            debug!(seq, "Sink watermark received.");
            let epoch = self.outbox.epoch();
            let high = match self.sink_watermark {
                Some((e, w)) if e == epoch => w.max(seq),
                _ => seq,
            };
            self.sink_watermark = Some((epoch, high));
            self.stall_for_current_epoch().sink_acked(seq, now);
        }
    }

    /// Hands a retained status message to the client; false when the window is full or
    /// the client refused it.
    fn publish_status(&mut self, presence: Presence, now: Instant) -> bool {
        if self.window.room() == 0 {
            return false;
        }
        let status = Status {
            schema: SCHEMA_VERSION,
            gateway: self.cfg.topics.gateway().to_owned(),
            site: self.cfg.topics.site().to_owned(),
            state: presence,
            ts: link::now_ms(),
            version: self.cfg.version.clone(),
            epoch: Some(self.outbox.epoch()),
            profiles: self.cfg.profiles.clone(),
            buffer: Some(self.outbox.state()),
        };
        match self
            .client
            .publish(self.cfg.topics.status(), wire::encode(&status), true)
        {
            Ok(()) => self.window.send(Slot::Status(presence)).is_ok(),
            Err(e) => {
                self.client_failed(&e, now);
                false
            }
        }
    }

    fn client_failed(&mut self, e: &str, now: Instant) {
        // Try again after a backoff rather than at once (the client's queue holds more than
        // W, so this is rare: the driver may just have stopped).
        self.schedule_retry(now);
        if let Some(held) = self.logs.client.allow(now) {
            warn!(broker = %self.broker, error = %e, held_back = held,
                "The MQTT client did not take a publish; it is sent later.");
        }
    }

    /// Hands the client as much as the window, the rate limit and the outbox allow.
    async fn fill(&mut self, now: Instant) {
        if !self.connected {
            return;
        }
        match self.stop {
            Stop::Running => {}
            Stop::Requested { deadline } => {
                if self.publish_status(Presence::Offline, now) {
                    self.stop = Stop::AwaitingOffline { deadline };
                }
                return;
            }
            Stop::AwaitingOffline { .. } | Stop::Disconnecting { .. } | Stop::Done => return,
        }
        if self.retry_at.is_some() {
            return;
        }
        if self.want_replay {
            self.want_replay = false;
            if let Err(e) = self.outbox.replay_unconfirmed().await {
                self.outbox_failed("replay_unconfirmed", e, now);
                return;
            }
        }
        if self
            .window
            .live_epoch()
            .is_some_and(|e| e != self.outbox.epoch())
        {
            // The stream rotated under the live lane: the backlog lane reads it whole.
            self.window.close_live();
        }
        if self.want_gaps && self.window.room() > 0 {
            self.fill_gaps(now).await;
        }
        // The live lane goes first, so fresh readings never wait behind the replay.
        while self.retry_at.is_none() && self.window.room() > 0 {
            let lane = match self.window.live() {
                Some(live) if self.want_live => live,
                _ if self.want_messages && !self.backlog_paused() => self.window.backlog(),
                _ => break,
            };
            let tokens = self.bucket.available(now);
            if tokens == 0 {
                break;
            }
            let n = self
                .window
                .room()
                .min(usize::try_from(tokens).unwrap_or(usize::MAX));
            if !self.fill_messages(lane, n, now).await {
                break;
            }
        }
        self.stats.in_flight(self.window.len());
    }

    async fn fill_gaps(&mut self, now: Instant) {
        let gaps = match self.outbox.pending_gaps().await {
            Ok(gaps) => gaps,
            Err(e) => {
                self.outbox_failed("pending_gaps", e, now);
                self.schedule_retry(now);
                return;
            }
        };
        for gap in gaps {
            if self.window.gap_in_flight(gap.id) {
                continue;
            }
            if self.window.room() == 0 {
                return;
            }
            if let Err(e) = self
                .client
                .publish(self.cfg.topics.gaps(), gap.payload, false)
            {
                self.client_failed(&e, now);
                return;
            }
            let _ = self.window.send(Slot::Gap(gap.id));
        }
        self.want_gaps = false;
    }

    /// Publishes up to `n` messages of `lane`; false when nothing more should be tried now.
    async fn fill_messages(&mut self, lane: Lane, n: usize, now: Instant) -> bool {
        let limits = Limits {
            messages: n,
            ..self.limits
        };
        let batch = match self.outbox.pending(lane, limits).await {
            Ok(batch) => batch,
            Err(e) => {
                self.outbox_failed("pending", e, now);
                self.schedule_retry(now);
                return false;
            }
        };
        let got = batch.len();
        let mut sent = 0u32;
        for m in batch {
            let slot = MessageRef {
                kind: m.kind,
                epoch: m.epoch,
                first_seq: m.first_seq,
                count: m.count,
            };
            let Some(topic) = self.data_topic(m.kind) else {
                warn!(kind = %m.kind, "Outbox returned a message of a kind that is not data; skipped.");
                self.window.skip(&slot);
                continue;
            };
            let size = m.payload.len() + self.client.overhead(topic.len());
            if self.packet_limit.is_some_and(|limit| size > limit) {
                self.stats.oversized();
                if let Some(held) = self.logs.oversized.allow(now) {
                    error!(
                        broker = %self.broker,
                        first_seq = m.first_seq,
                        count = m.count,
                        bytes = size,
                        limit = self.packet_limit,
                        held_back = held,
                        "A message is larger than the broker accepts; it stays in the buffer \
                         (lower the readings per message or raise the broker's limit)."
                    );
                }
                self.window.skip(&slot);
                continue;
            }
            if let Err(e) = self.client.publish(topic, m.payload, false) {
                self.client_failed(&e, now);
                self.bucket.take(sent, now);
                return false;
            }
            match self.window.send(Slot::Message(slot)) {
                Ok(s) => {
                    self.stats.published(m.count, s.republished);
                    sent += 1;
                }
                Err(e) => {
                    debug!(error = %e, "Window full.");
                    break;
                }
            }
        }
        self.bucket.take(sent, now);
        if got < n {
            match lane {
                Lane::Live { .. } => self.want_live = false,
                Lane::Backlog { .. } => {
                    self.want_messages = false;
                    if self.window.live().is_some() {
                        // Nothing left below the split: one lane again, carrying on from
                        // where the live lane stands.
                        self.window.merge_live();
                        self.want_messages = std::mem::take(&mut self.want_live);
                    }
                }
            }
            // The other lane may still have work.
            return self.wants_messages();
        }
        true
    }
}
