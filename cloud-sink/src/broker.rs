//! The embedded broker (rumqttd) for a single machine: `mqtt.broker = "embedded"`. Gateways
//! connect to `mqtt.listen` (MQTT 5) or `mqtt.listen_v311` (MQTT 3.1.1, optional); the sink's
//! own subscriber connects to the MQTT 5 listener over loopback like any other client, so the
//! ingest path is the same as with an external broker.
//!
//! rumqttd keeps sessions and retained messages in memory: a restart of the sink process loses
//! queued messages, which is why the gateway keeps everything until the sink's retained
//! watermark passes it and replays the rest (the watermark itself is republished by the sink
//! after its next commit). Payloads above `mqtt.max_packet_size` are refused by the broker.
//!
//! rumqttd runs its router and listeners on threads of its own and has no way to stop them;
//! they end with the process.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};
use tokio::sync::oneshot;

/// Why the embedded broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A listen address cannot be bound.
    #[error("embedded broker cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The broker did not come up or stopped.
    #[error("embedded broker: {0}")]
    Failed(String),
}

/// Settings of the embedded broker.
#[derive(Debug, Clone)]
pub struct EmbeddedSettings {
    /// MQTT 5 listener.
    pub listen: SocketAddr,
    /// Optional MQTT 3.1.1 listener.
    pub listen_v311: Option<SocketAddr>,
    /// Largest packet accepted, bytes.
    pub max_packet_size: usize,
}

/// A running embedded broker; [`EmbeddedBroker::stopped`] resolves if it dies.
#[derive(Debug)]
pub struct EmbeddedBroker {
    /// The MQTT 5 address clients connect to (loopback when listening on all interfaces).
    pub connect_addr: SocketAddr,
    stopped: oneshot::Receiver<String>,
}

impl EmbeddedBroker {
    /// Resolves when the broker's threads have ended (they should not).
    pub async fn stopped(&mut self) -> String {
        (&mut self.stopped)
            .await
            .unwrap_or_else(|_| "the broker thread went away".to_owned())
    }
}

fn server(name: &str, listen: SocketAddr, max_packet_size: usize) -> ServerSettings {
    ServerSettings {
        name: name.to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: max_packet_size,
            max_inflight_count: 1000,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    }
}

/// Starts the broker on its own threads and waits (at most 10 s) until the MQTT 5 listener
/// accepts connections.
///
/// # Errors
/// A listen address that is taken or not allowed, or a broker that does not come up.
pub async fn start(settings: &EmbeddedSettings) -> Result<EmbeddedBroker, BrokerError> {
    // rumqttd binds on its own thread and only logs a failure: try each address first so a
    // taken port is a clear error at startup.
    for addr in std::iter::once(settings.listen).chain(settings.listen_v311) {
        TcpListener::bind(addr).map_err(|source| BrokerError::Bind { addr, source })?;
    }
    let mut v5 = HashMap::new();
    v5.insert(
        "v5".to_owned(),
        server("fivezero-v5", settings.listen, settings.max_packet_size),
    );
    let v4 = settings.listen_v311.map(|addr| {
        let mut m = HashMap::new();
        m.insert(
            "v4".to_owned(),
            server("fivezero-v311", addr, settings.max_packet_size),
        );
        m
    });
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: rumqttd::Strategy::default(),
        },
        v4,
        v5: Some(v5),
        ..Config::default()
    };
    let (tx, stopped) = oneshot::channel();
    std::thread::Builder::new()
        .name("embedded-broker".to_owned())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            let why = match broker.start() {
                Ok(()) => "the broker's listeners ended".to_owned(),
                Err(e) => e.to_string(),
            };
            let _ = tx.send(why);
        })
        .map_err(|e| BrokerError::Failed(format!("cannot start its thread: {e}")))?;
    let connect_addr = if settings.listen.ip().is_unspecified() {
        let ip = if settings.listen.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(ip, settings.listen.port())
    } else {
        settings.listen
    };
    // Ready when an MQTT handshake succeeds (a bare TCP probe would make rumqttd log an
    // aborted connect as an error).
    let probe_id = format!("fivezero-sink-probe-{:08x}", rand::random::<u32>());
    let mut options =
        MqttOptions::new(probe_id, connect_addr.ip().to_string(), connect_addr.port());
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break,
            Ok(_) => {}
            Err(e) => {
                if Instant::now() > deadline {
                    return Err(BrokerError::Failed(format!(
                        "not accepting MQTT connections on {connect_addr} after 10 s: {e}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let _ = client.disconnect().await;
    let flush = async {
        while let Ok(ev) = eventloop.poll().await {
            if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
    tracing::info!(listen = %settings.listen, v311 = ?settings.listen_v311, "Embedded broker started.");
    Ok(EmbeddedBroker {
        connect_addr,
        stopped,
    })
}
