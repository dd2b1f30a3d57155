//! `fivezero-sink run`: opens the store (migrating it), starts the embedded broker when
//! configured, and runs ingest until the shutdown future resolves.

use std::future::Future;
use std::path::Path;

use crate::api::{self, ApiState};
use crate::broker::{self, BrokerError, EmbeddedSettings};
use crate::config::{BrokerChoice, Config, PASSWORD_ENV};
use crate::ingest::{self, IngestError, IngestSettings, TlsFiles};
use crate::stats::SinkStats;
use crate::store::{self, StoreError};

/// Where the CA certificates are looked for when `mqtt.ca_file` is not set.
pub const SYSTEM_CA_FILES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Why the service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The store cannot be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The embedded broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Ingest cannot subscribe.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The HTTP API cannot listen.
    #[error("http.listen {addr}: {problem}")]
    Http {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        problem: String,
    },
    /// A file named in the configuration cannot be read.
    #[error("{what} {path}: {problem}")]
    File {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        problem: String,
    },
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ServiceError> {
    std::fs::read(path).map_err(|e| ServiceError::File {
        what,
        path: path.display().to_string(),
        problem: e.to_string(),
    })
}

/// The ingest settings for a broker at `host:port`, with credentials and TLS files read.
///
/// # Errors
/// A password, CA, certificate or key file that cannot be read, or an empty password file.
pub fn ingest_settings(
    config: &Config,
    host: &str,
    port: u16,
    tls: bool,
) -> Result<IngestSettings, ServiceError> {
    let mut s = IngestSettings::new(&config.client_id, host, port);
    s.prefix.clone_from(&config.prefix);
    s.shared_group.clone_from(&config.shared_group);
    s.inflight = config.inflight;
    s.max_packet_size = config.max_packet_size;
    s.session_expiry = config.session_expiry;
    s.keep_alive = config.keep_alive;
    s.allowed_gateways.clone_from(&config.allowed_gateways);
    s.shutdown_timeout = config.shutdown_timeout;
    if let Some(user) = &config.username {
        let password = match &config.password_file {
            Some(path) => {
                let text = String::from_utf8_lossy(&read("mqtt.password_file", path)?)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                if text.is_empty() {
                    return Err(ServiceError::File {
                        what: "mqtt.password_file",
                        path: path.display().to_string(),
                        problem: "is empty".into(),
                    });
                }
                text
            }
            None => std::env::var(PASSWORD_ENV).unwrap_or_default(),
        };
        s.credentials = Some((user.clone(), password));
    }
    if tls {
        let ca = match &config.ca_file {
            Some(path) => read("mqtt.ca_file", path)?,
            None => {
                let path = std::env::var_os("SSL_CERT_FILE")
                    .map(std::path::PathBuf::from)
                    .into_iter()
                    .chain(SYSTEM_CA_FILES.iter().map(std::path::PathBuf::from))
                    .find(|p| p.is_file())
                    .ok_or_else(|| ServiceError::File {
                        what: "system CA file",
                        path: SYSTEM_CA_FILES.join(", "),
                        problem: "none found; set mqtt.ca_file".into(),
                    })?;
                read("system CA file", &path)?
            }
        };
        let client = match (&config.client_cert_file, &config.client_key_file) {
            (Some(c), Some(k)) => Some((
                read("mqtt.client_cert_file", c)?,
                read("mqtt.client_key_file", k)?,
            )),
            _ => None,
        };
        s.tls = Some(TlsFiles { ca, client });
    }
    Ok(s)
}

/// Runs the sink until `shutdown` resolves, then drains and returns.
///
/// # Errors
/// The store cannot be opened, the embedded broker cannot start or dies, or a file named in
/// the configuration cannot be read.
pub async fn run<F>(config: Config, stats: SinkStats, shutdown: F) -> Result<(), ServiceError>
where
    F: Future<Output = ()> + Send,
{
    let store = store::open(&config.storage_url).await?;
    tracing::info!(
        storage = %store::mask_password(&config.storage_url),
        "Store open and migrated."
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let api = match config.http.listen {
        Some(addr) => {
            let listener =
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| ServiceError::Http {
                        addr,
                        problem: e.to_string(),
                    })?;
            let bound = listener.local_addr().unwrap_or(addr);
            if config.http.tokens.is_empty() {
                tracing::warn!(%bound, "HTTP API listening without tokens (loopback only).");
            } else {
                tracing::info!(%bound, tokens = config.http.tokens.len(), "HTTP API listening.");
            }
            let state = ApiState::new(store.clone(), stats.clone(), config.http.clone());
            let mut rx = stop_rx.clone();
            Some(tokio::spawn(async move {
                let stop = async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                };
                if let Err(e) = api::serve(listener, state, stop).await {
                    tracing::error!(error = %e, "The HTTP API stopped.");
                }
            }))
        }
        None => None,
    };
    let retention = (config.retain_readings.is_some() || config.retain_kpis.is_some()).then(|| {
        tokio::spawn(retention_loop(
            store.clone(),
            config.retain_readings,
            config.retain_kpis,
        ))
    });
    // systemd (Type=notify): ready once the store is open and the API bound; the watchdog
    // is petted at half its period; a no-op outside systemd.
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    let watchdog = sd_notify::watchdog_enabled().map(|period| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tick.tick().await;
                notify_systemd(&[sd_notify::NotifyState::Watchdog]);
            }
        })
    });
    let shutdown = async {
        shutdown.await;
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
    };
    let result = run_ingest(&config, store, stats, shutdown).await;
    if let Some(task) = watchdog {
        task.abort();
    }
    let _ = stop_tx.send(true);
    if let Some(task) = retention {
        task.abort();
    }
    if let Some(task) = api {
        let _ = tokio::time::timeout(config.shutdown_timeout, task).await;
    }
    result
}

/// Deletes what is past the retention ages, once at start and then every hour.
async fn retention_loop(
    store: store::AnyStore,
    readings: Option<std::time::Duration>,
    kpis: Option<std::time::Duration>,
) {
    use crate::store::Store as _;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let before = |age: Option<std::time::Duration>| {
            age.map(|a| now.saturating_sub(i64::try_from(a.as_millis()).unwrap_or(i64::MAX)))
        };
        match store.apply_retention(before(readings), before(kpis)).await {
            Ok(r) => tracing::debug!(readings = r.readings, kpis = r.kpis, "Retention applied."),
            Err(e) => tracing::warn!(error = %e, "Retention failed; retrying in an hour."),
        }
    }
}

async fn run_ingest<F>(
    config: &Config,
    store: store::AnyStore,
    stats: SinkStats,
    shutdown: F,
) -> Result<(), ServiceError>
where
    F: Future<Output = ()> + Send,
{
    match config.broker.clone() {
        BrokerChoice::External { tls, host, port } => {
            let settings = ingest_settings(config, &host, port, tls)?;
            tracing::info!(?settings, "Ingest starting.");
            ingest::run(settings, store, stats, shutdown).await?;
        }
        BrokerChoice::Embedded {
            listen,
            listen_v311,
        } => {
            let mut broker = broker::start(&EmbeddedSettings {
                listen,
                listen_v311,
                max_packet_size: usize::try_from(config.max_packet_size).unwrap_or(usize::MAX),
            })
            .await?;
            let addr = broker.connect_addr;
            let settings = ingest_settings(config, &addr.ip().to_string(), addr.port(), false)?;
            tracing::info!(?settings, "Ingest starting.");
            tokio::select! {
                r = ingest::run(settings, store, stats, shutdown) => r?,
                why = broker.stopped() => {
                    return Err(BrokerError::Failed(why).into());
                }
            }
        }
    }
    tracing::info!("Stopped.");
    Ok(())
}

fn notify_systemd(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed.");
    }
}
