//! The thin layer over rumqttc: one enum over its MQTT 3.1.1 and MQTT 5 clients, their events
//! reduced to what the publisher needs ([`LinkEvent`]), and the driver that owns the event
//! loop.
//!
//! # Why a driver
//!
//! `EventLoop::poll` is not safe to cancel: a poll dropped between rumqttc taking a request
//! and writing it leaves the publish counted in flight but never sent. So the event loop is
//! never polled inside a `select!` that could drop it. [`Driver::run`] polls it in a plain loop
//! and forwards events over a bounded channel; the publisher polls the driver's future (never
//! dropping it while running) next to its other wake-ups.
//!
//! # What the driver does on a disconnect (B.6 items 1 and 3)
//!
//! 1. forwards the events rumqttc had already queued (in order), then [`LinkEvent::Down`];
//! 2. clears rumqttc's own resend queue (`EventLoop::pending`) and any held colliding
//!    publish, so rumqttc never resends on its own: the publisher republishes from the
//!    outbox, and every write it sees is one it asked for;
//! 3. waits until the publisher has reset its window ([`Driver`]'s resume channel), so no
//!    request from the old connection can be taken for one of the new;
//! 4. waits the reconnect backoff (exponential, full jitter; reset when the connection had
//!    lived [`STABLE_AFTER`]), drops whatever requests were still queued, refreshes the
//!    will's timestamp, and connects again.

use std::time::Duration;

use fivezero_model::wire::{self, Status};
use rumqttc::v5;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::PublisherConfig;
use crate::config::MqttProtocol;
use crate::poll::Backoff;

/// A connection that lived this long resets the reconnect backoff; one that dies sooner (a
/// broker that accepts and then drops us, another client with the same id) keeps it growing.
pub(crate) const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Largest packet the publisher accepts from the broker (the ack watermark is far smaller).
pub(crate) const MAX_INCOMING_PACKET: u32 = 64 * 1024;

/// `content-type` of every payload (MQTT 5).
const CONTENT_TYPE: &str = "application/json";

/// Bytes of a PUBLISH packet other than payload and topic, at most: fixed header (5),
/// topic length (2), packet id (2).
const V4_OVERHEAD: usize = 9;
/// With MQTT 5: the property length (2) and the properties the publisher sets:
/// content type (1 + 2 + 16) and the `schema` user property (1 + 2 + 6 + 2 + 1).
const V5_OVERHEAD: usize = V4_OVERHEAD + 2 + 19 + 12;

/// What happened on the connection, reduced to what the publisher needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LinkEvent {
    /// CONNACK: the connection is up.
    Connected {
        /// The broker kept a session.
        session_present: bool,
        /// The broker's Receive Maximum (MQTT 5).
        receive_maximum: Option<u16>,
        /// The broker's Maximum Packet Size (MQTT 5).
        max_packet_size: Option<u32>,
        /// False when the broker said it does not keep retained messages (MQTT 5).
        retain_available: bool,
    },
    /// A QoS 1 publish was written with this packet id.
    Written {
        /// The packet id.
        pkid: u16,
    },
    /// A publish waits for its packet id to be freed (rumqttc's collision).
    Collision {
        /// The packet id.
        pkid: u16,
    },
    /// A PUBACK.
    PubAck {
        /// The packet id.
        pkid: u16,
        /// MQTT 5 error reason: the broker did not accept the message.
        refused: Option<String>,
        /// The refusal needs an operator (not authorised, invalid topic).
        operator: bool,
    },
    /// A message on a subscribed topic.
    Message {
        /// Its topic.
        topic: String,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// A SUBACK.
    SubAck {
        /// The broker refused the subscription.
        refused: bool,
    },
    /// Our DISCONNECT went out; the driver has stopped.
    Closed,
    /// The connection failed or could not be made.
    Down {
        /// What rumqttc said.
        error: String,
        /// An operator must act (credentials refused, TLS rejected).
        operator: bool,
        /// The connection had been up (a CONNACK was received).
        was_connected: bool,
    },
}

/// The request side: hands publishes to rumqttc.
#[derive(Debug, Clone)]
pub(crate) enum Client {
    /// MQTT 3.1.1.
    V4(rumqttc::AsyncClient),
    /// MQTT 5.
    V5(v5::AsyncClient),
}

/// The connection side, owned by the [`Driver`].
pub(crate) enum EventLoop {
    /// MQTT 3.1.1.
    V4(Box<rumqttc::EventLoop>),
    /// MQTT 5.
    V5(Box<v5::EventLoop>),
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V4(_) => "EventLoop::V4",
            Self::V5(_) => "EventLoop::V5",
        })
    }
}

fn v5_properties() -> v5::mqttbytes::v5::PublishProperties {
    v5::mqttbytes::v5::PublishProperties {
        content_type: Some(CONTENT_TYPE.to_owned()),
        user_properties: vec![("schema".to_owned(), wire::SCHEMA_VERSION.to_string())],
        ..Default::default()
    }
}

impl Client {
    /// Hands a QoS 1 publish to rumqttc (never waits: the request channel holds more than W).
    ///
    /// # Errors
    /// The request channel is full or closed, or the topic is invalid.
    pub(crate) fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> Result<(), String> {
        match self {
            Self::V4(c) => c
                .try_publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload)
                .map_err(|e| e.to_string()),
            Self::V5(c) => c
                .try_publish_with_properties(
                    topic,
                    v5::mqttbytes::QoS::AtLeastOnce,
                    retain,
                    payload,
                    v5_properties(),
                )
                .map_err(|e| e.to_string()),
        }
    }

    /// Subscribes to `filter` with QoS 1.
    ///
    /// # Errors
    /// The request channel is full or closed.
    pub(crate) fn subscribe(&self, filter: &str) -> Result<(), String> {
        match self {
            Self::V4(c) => c
                .try_subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            Self::V5(c) => c
                .try_subscribe(filter, v5::mqttbytes::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
        }
    }

    /// Sends DISCONNECT (the broker then discards the will).
    ///
    /// # Errors
    /// The request channel is full or closed.
    pub(crate) fn disconnect(&self) -> Result<(), String> {
        match self {
            Self::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Self::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        }
    }

    /// Bytes a PUBLISH on a topic of `topic_len` bytes adds to its payload, at most.
    #[must_use]
    pub(crate) const fn overhead(&self, topic_len: usize) -> usize {
        topic_len
            + match self {
                Self::V4(_) => V4_OVERHEAD,
                Self::V5(_) => V5_OVERHEAD,
            }
    }
}

/// The host as rumqttc wants it: IPv6 literals in brackets (it joins host and port with `:`).
fn host(config: &PublisherConfig) -> String {
    if config.url.host.contains(':') {
        format!("[{}]", config.url.host)
    } else {
        config.url.host.clone()
    }
}

/// The minimal `offline` will, stamped now.
pub(crate) fn will_payload(config: &PublisherConfig) -> Vec<u8> {
    wire::encode(&Status::offline_will(
        config.topics.gateway(),
        config.topics.site(),
        &config.version,
        now_ms(),
    ))
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Builds the client and its event loop for `config` (clean session: the outbox, not the
/// broker, remembers what is unacknowledged).
#[must_use]
pub(crate) fn build(config: &PublisherConfig) -> (Client, EventLoop) {
    let window = config.window.get();
    // rumqttc draws packet ids from 1..=its in-flight limit, in turn. With twice W ids, a new
    // publish only waits for an id (rumqttc's "collision") when one message has been stuck
    // while W others were acknowledged; the window still never lets more than W out.
    let ids = window.saturating_mul(2);
    let capacity = usize::from(window) + 16;
    let id = config.topics.gateway().to_owned();
    let status = config.topics.status().to_owned();
    let will = will_payload(config);
    let connect_timeout = config.connect_timeout.as_secs().max(1);
    let longest_topic = config
        .topics
        .batches()
        .len()
        .max(config.topics.kpi().len())
        .max(config.topics.gaps().len())
        .max(status.len());
    match config.protocol {
        MqttProtocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(id, host(config), config.url.port);
            o.set_keep_alive(config.keep_alive.max(Duration::from_secs(1)))
                .set_clean_session(true)
                .set_inflight(ids)
                .set_request_channel_capacity(capacity)
                .set_max_packet_size(
                    MAX_INCOMING_PACKET as usize,
                    config.bytes_per_message.get() + V4_OVERHEAD + longest_topic,
                )
                .set_last_will(rumqttc::LastWill::new(
                    status,
                    will,
                    rumqttc::QoS::AtLeastOnce,
                    true,
                ));
            if let Some(user) = &config.username {
                let password = config.password.as_ref().map_or("", |p| p.expose());
                o.set_credentials(user.clone(), password.to_owned());
            }
            if let Some(tls) = &config.tls {
                o.set_transport(rumqttc::Transport::tls_with_config(
                    rumqttc::TlsConfiguration::Rustls(tls.client_config()),
                ));
            }
            let (client, mut el) = rumqttc::AsyncClient::new(o, capacity);
            let mut network = rumqttc::NetworkOptions::new();
            network.set_connection_timeout(connect_timeout);
            el.set_network_options(network);
            (Client::V4(client), EventLoop::V4(Box::new(el)))
        }
        MqttProtocol::V5 => {
            let mut o = v5::MqttOptions::new(id, host(config), config.url.port);
            let will_properties = v5::mqttbytes::v5::LastWillProperties {
                delay_interval: None,
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: Some(CONTENT_TYPE.to_owned()),
                response_topic: None,
                correlation_data: None,
                user_properties: Vec::new(),
            };
            o.set_keep_alive(config.keep_alive.max(Duration::from_secs(5)))
                .set_clean_start(true)
                .set_outgoing_inflight_upper_limit(ids)
                .set_request_channel_capacity(capacity)
                .set_max_packet_size(Some(MAX_INCOMING_PACKET))
                .set_connection_timeout(connect_timeout)
                .set_last_will(v5::mqttbytes::v5::LastWill::new(
                    status,
                    will,
                    v5::mqttbytes::QoS::AtLeastOnce,
                    true,
                    Some(will_properties),
                ));
            if let Some(user) = &config.username {
                let password = config.password.as_ref().map_or("", |p| p.expose());
                o.set_credentials(user.clone(), password.to_owned());
            }
            if let Some(tls) = &config.tls {
                o.set_transport(rumqttc::Transport::tls_with_config(
                    rumqttc::TlsConfiguration::Rustls(tls.client_config()),
                ));
            }
            let (client, el) = v5::AsyncClient::new(o, capacity);
            (Client::V5(client), EventLoop::V5(Box::new(el)))
        }
    }
}

fn v4_event(event: rumqttc::Event) -> Option<LinkEvent> {
    use rumqttc::{Event, Outgoing, Packet};
    Some(match event {
        Event::Incoming(Packet::ConnAck(c)) => LinkEvent::Connected {
            session_present: c.session_present,
            receive_maximum: None,
            max_packet_size: None,
            retain_available: true,
        },
        Event::Incoming(Packet::PubAck(p)) => LinkEvent::PubAck {
            pkid: p.pkid,
            refused: None,
            operator: false,
        },
        Event::Incoming(Packet::Publish(p)) => LinkEvent::Message {
            topic: p.topic,
            payload: p.payload.to_vec(),
        },
        Event::Incoming(Packet::SubAck(s)) => LinkEvent::SubAck {
            refused: s
                .return_codes
                .iter()
                .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)),
        },
        Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => LinkEvent::Written { pkid },
        Event::Outgoing(Outgoing::AwaitAck(pkid)) => LinkEvent::Collision { pkid },
        Event::Outgoing(Outgoing::Disconnect) => LinkEvent::Closed,
        _ => return None,
    })
}

fn v5_event(event: v5::Event) -> Option<LinkEvent> {
    use rumqttc::Outgoing;
    use v5::Event;
    use v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode};
    Some(match event {
        Event::Incoming(Packet::ConnAck(c)) => {
            let props = c.properties.as_ref();
            LinkEvent::Connected {
                session_present: c.session_present,
                receive_maximum: props.and_then(|p| p.receive_max),
                max_packet_size: props.and_then(|p| p.max_packet_size),
                retain_available: props.and_then(|p| p.retain_available) != Some(0),
            }
        }
        Event::Incoming(Packet::PubAck(p)) => {
            let ok = matches!(
                p.reason,
                PubAckReason::Success | PubAckReason::NoMatchingSubscribers
            );
            LinkEvent::PubAck {
                pkid: p.pkid,
                operator: matches!(
                    p.reason,
                    PubAckReason::NotAuthorized
                        | PubAckReason::TopicNameInvalid
                        | PubAckReason::PayloadFormatInvalid
                ),
                refused: (!ok).then(|| format!("{:?}", p.reason)),
            }
        }
        Event::Incoming(Packet::Publish(p)) => LinkEvent::Message {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.to_vec(),
        },
        Event::Incoming(Packet::SubAck(s)) => LinkEvent::SubAck {
            refused: s
                .return_codes
                .iter()
                .any(|c| !matches!(c, SubscribeReasonCode::Success(_))),
        },
        Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => LinkEvent::Written { pkid },
        Event::Outgoing(Outgoing::AwaitAck(pkid)) => LinkEvent::Collision { pkid },
        Event::Outgoing(Outgoing::Disconnect) => LinkEvent::Closed,
        _ => return None,
    })
}

/// Whether a TLS error needs an operator (a certificate or name problem) rather than time.
fn tls_needs_operator(e: &rumqttc::TlsError) -> bool {
    !matches!(e, rumqttc::TlsError::Io(_))
}

fn v4_error(e: &rumqttc::ConnectionError) -> bool {
    use rumqttc::{ConnectReturnCode, ConnectionError};
    match e {
        ConnectionError::ConnectionRefused(code) => *code != ConnectReturnCode::ServiceUnavailable,
        ConnectionError::Tls(t) => tls_needs_operator(t),
        _ => false,
    }
}

fn v5_error(e: &v5::ConnectionError) -> bool {
    use v5::ConnectionError;
    use v5::mqttbytes::v5::ConnectReturnCode;
    match e {
        ConnectionError::ConnectionRefused(code) => !matches!(
            code,
            ConnectReturnCode::ServerUnavailable
                | ConnectReturnCode::ServerBusy
                | ConnectReturnCode::ServiceUnavailable
                | ConnectReturnCode::ConnectionRateExceeded
                | ConnectReturnCode::QuotaExceeded
                | ConnectReturnCode::UseAnotherServer
                | ConnectReturnCode::ServerMoved
        ),
        ConnectionError::Tls(t) => tls_needs_operator(t),
        _ => false,
    }
}

impl EventLoop {
    /// The next event worth forwarding (`Ok(None)` for the others: pings, our own acks), or
    /// the error that ended the connection with whether an operator must act.
    async fn poll(&mut self) -> Result<Option<LinkEvent>, (String, bool)> {
        match self {
            Self::V4(el) => match el.poll().await {
                Ok(ev) => Ok(v4_event(ev)),
                Err(e) => Err((e.to_string(), v4_error(&e))),
            },
            Self::V5(el) => match el.poll().await {
                Ok(ev) => Ok(v5_event(ev)),
                Err(e) => Err((e.to_string(), v5_error(&e))),
            },
        }
    }

    /// Events rumqttc had queued when the connection failed, in order.
    fn take_stale_events(&mut self) -> Vec<LinkEvent> {
        match self {
            Self::V4(el) => el.state.events.drain(..).filter_map(v4_event).collect(),
            Self::V5(el) => el.state.events.drain(..).filter_map(v5_event).collect(),
        }
    }

    /// Clears rumqttc's resend queue and any held colliding publish (after `poll` failed,
    /// rumqttc has moved its in-flight publishes into `pending`).
    fn forget_in_flight(&mut self) {
        match self {
            Self::V4(el) => {
                el.pending.clear();
                el.state.collision = None;
            }
            Self::V5(el) => {
                el.pending.clear();
                el.state.collision = None;
            }
        }
    }

    /// Drops every request still queued (handed over before the publisher knew the
    /// connection was gone) and every event left over, before connecting again.
    fn drop_stale_requests(&mut self) {
        match self {
            Self::V4(el) => {
                el.clean();
                el.pending.clear();
                el.state.events.clear();
                el.state.collision = None;
            }
            Self::V5(el) => {
                el.clean();
                el.pending.clear();
                el.state.events.clear();
                el.state.collision = None;
            }
        }
    }

    /// Replaces the will's payload (a fresh timestamp) for the next connect.
    fn set_will(&mut self, payload: Vec<u8>) {
        match self {
            Self::V4(el) => {
                if let Some(mut will) = el.mqtt_options.last_will() {
                    will.message = payload.into();
                    el.mqtt_options.set_last_will(will);
                }
            }
            Self::V5(el) => {
                if let Some(mut will) = el.options.last_will() {
                    will.message = payload.into();
                    el.options.set_last_will(will);
                }
            }
        }
    }
}

/// Owns the event loop; see the module documentation.
#[derive(Debug)]
pub(crate) struct Driver {
    /// The event loop.
    pub(crate) event_loop: EventLoop,
    /// Where events go.
    pub(crate) events: mpsc::Sender<LinkEvent>,
    /// The publisher's go-ahead after a [`LinkEvent::Down`].
    pub(crate) resume: mpsc::Receiver<()>,
    /// The reconnect backoff.
    pub(crate) backoff: Backoff,
    /// Makes a fresh will payload before each reconnect.
    pub(crate) will: PublisherConfig,
}

impl Driver {
    /// Runs until the publisher goes away or our DISCONNECT has gone out.
    pub(crate) async fn run(mut self) {
        let mut up_since: Option<Instant> = None;
        loop {
            match self.event_loop.poll().await {
                Ok(Some(event)) => {
                    if matches!(event, LinkEvent::Connected { .. }) {
                        up_since = Some(Instant::now());
                    }
                    let closed = event == LinkEvent::Closed;
                    if self.events.send(event).await.is_err() || closed {
                        return;
                    }
                }
                Ok(None) => {}
                Err((error, operator)) => {
                    for event in self.event_loop.take_stale_events() {
                        if self.events.send(event).await.is_err() {
                            return;
                        }
                    }
                    self.event_loop.forget_in_flight();
                    let down = LinkEvent::Down {
                        error,
                        operator,
                        was_connected: up_since.is_some(),
                    };
                    if self.events.send(down).await.is_err() {
                        return;
                    }
                    if up_since
                        .take()
                        .is_some_and(|since| since.elapsed() >= STABLE_AFTER)
                    {
                        self.backoff.reset();
                    }
                    if self.resume.recv().await.is_none() {
                        return;
                    }
                    let wait = self.backoff.fail(Instant::now());
                    tokio::time::sleep(wait).await;
                    self.event_loop.drop_stale_requests();
                    self.event_loop.set_will(will_payload(&self.will));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_qos1_writes_are_reported() {
        use rumqttc::{Event, Outgoing};
        assert_eq!(
            v4_event(Event::Outgoing(Outgoing::Publish(7))),
            Some(LinkEvent::Written { pkid: 7 })
        );
        assert_eq!(v4_event(Event::Outgoing(Outgoing::Publish(0))), None);
        assert_eq!(v4_event(Event::Outgoing(Outgoing::PingReq)), None);
    }

    #[test]
    fn an_mqtt5_puback_with_an_error_reason_is_a_refusal() {
        use v5::mqttbytes::v5::{Packet, PubAck, PubAckReason};
        let mut ack = PubAck::new(3, None);
        ack.reason = PubAckReason::NotAuthorized;
        assert_eq!(
            v5_event(v5::Event::Incoming(Packet::PubAck(ack))),
            Some(LinkEvent::PubAck {
                pkid: 3,
                refused: Some("NotAuthorized".into()),
                operator: true
            })
        );
        let mut ack = PubAck::new(4, None);
        ack.reason = PubAckReason::NoMatchingSubscribers;
        assert_eq!(
            v5_event(v5::Event::Incoming(Packet::PubAck(ack))),
            Some(LinkEvent::PubAck {
                pkid: 4,
                refused: None,
                operator: false
            })
        );
    }

    #[test]
    fn refused_credentials_need_an_operator_but_a_busy_broker_does_not() {
        use rumqttc::{ConnectReturnCode, ConnectionError};
        assert!(v4_error(&ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword
        )));
        assert!(!v4_error(&ConnectionError::ConnectionRefused(
            ConnectReturnCode::ServiceUnavailable
        )));
        assert!(!v4_error(&ConnectionError::NetworkTimeout));
    }
}
