//! The publisher's settings: built from the gateway's [`Config`] (`[mqtt]`, `[publish]` and
//! `buffer.retain_until`); the defaults below are those of the config file.
//!
//! Secrets and files are read here, once, when the gateway starts, so a missing CA file or an
//! unreadable password is refused at startup with the file named, not found at the first
//! connect. The password never appears in logs or `Debug` output ([`Secret`]).
//!
//! | setting | default | meaning |
//! |---|---|---|
//! | `window` | [`DEFAULT_WINDOW`] (32) | W: QoS 1 publishes queued or in flight at once, lowered to the broker's Receive Maximum |
//! | `items_per_message` | [`DEFAULT_ITEMS_PER_MESSAGE`] (1000) | most readings or KPI records in one message |
//! | `bytes_per_message` | [`DEFAULT_BYTES_PER_MESSAGE`] (255 KiB) | most payload bytes in one message, lowered to fit the broker's Maximum Packet Size |
//! | `replay_rate` | [`DEFAULT_REPLAY_RATE`] (200) | most messages a second, so a backlog drains without flooding the uplink |
//! | `retain_until` | [`RetainUntil::SinkAck`] | what ends a message's stay in the buffer |
//! | `backoff_min`, `backoff_max` | 0.5 s, 30 s | reconnect backoff, exponential with full jitter |
//! | `stall_min`, `stall_max` | 2 min, 30 min | replay when the sink's watermark stalls behind the broker's acks (`sink_ack` only) |
//! | `shutdown_timeout` | 5 s | how long a clean stop waits for the `offline` status to be acknowledged (not a config key: the daemon's `gateway.shutdown_timeout` bounds the whole stop) |
//! | password | `mqtt.password_file`, else the `FIVEZERO_MQTT_PASSWORD` variable | never logged |

use std::fmt;
use std::num::{NonZeroU16, NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fivezero_model::topic::Topics;
use rumqttc::tokio_rustls::rustls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::PublishError;
pub use crate::config::RetainUntil;
use crate::config::{Config, MqttProtocol, MqttUrl};

/// Default W: publishes queued or in flight at once.
pub const DEFAULT_WINDOW: u16 = 32;
/// Default most readings or KPI records in one message.
pub const DEFAULT_ITEMS_PER_MESSAGE: u32 = 1000;
/// Default most payload bytes in one message: 255 KiB, so a message with its topic and
/// header fits in the 256 KiB packets the sink accepts.
pub const DEFAULT_BYTES_PER_MESSAGE: usize = 255 * 1024;
/// Default most messages a second.
pub const DEFAULT_REPLAY_RATE: u32 = 200;
/// The environment variable that holds the broker password when no `password_file` is set.
pub const PASSWORD_ENV: &str = "FIVEZERO_MQTT_PASSWORD";

/// Where the publisher looks for the system's CA certificates when no `ca_file` is set (the
/// `SSL_CERT_FILE` variable first, as OpenSSL does).
pub const SYSTEM_CA_FILES: [&str; 5] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// A secret string: `Debug` shows `***`, and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    #[must_use]
    pub const fn new(secret: String) -> Self {
        Self(secret)
    }

    /// The secret itself, for the one place that sends it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A ready rustls client configuration for `mqtts://`.
#[derive(Clone)]
pub struct TlsSettings {
    config: Arc<rustls::ClientConfig>,
    summary: String,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TlsSettings").field(&self.summary).finish()
    }
}

impl TlsSettings {
    /// Reads the CA certificates (PEM; the system's when `ca_file` is `None`) and, for mutual
    /// TLS, the client certificate chain and private key (PEM), and builds the rustls
    /// configuration.
    ///
    /// # Errors
    /// A file that cannot be read or holds no usable certificate or key, a certificate
    /// without its key (or the reverse), or a key that does not match its certificate; each
    /// names the file.
    pub fn from_files(
        ca_file: Option<&Path>,
        client_cert_file: Option<&Path>,
        client_key_file: Option<&Path>,
    ) -> Result<Self, PublishError> {
        let (ca_path, what) = match ca_file {
            Some(path) => (path.to_path_buf(), "CA file"),
            None => (system_ca_file()?, "system CA file"),
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(what, &ca_path)? {
            roots.add(cert).map_err(|e| PublishError::BadFile {
                what,
                path: ca_path.clone(),
                problem: format!("holds a certificate that cannot be used: {e}"),
            })?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PublishError::Tls(e.to_string()))?
            .with_root_certificates(roots);
        let mut summary = format!("roots from {}", ca_path.display());
        let config = match (client_cert_file, client_key_file) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert_path), Some(key_path)) => {
                let chain = read_certs("client certificate", cert_path)?;
                let bytes = read_file("client key", key_path)?;
                let key =
                    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| PublishError::BadFile {
                        what: "client key",
                        path: key_path.to_path_buf(),
                        problem: format!("holds no usable PEM private key: {e}"),
                    })?;
                summary.push_str(&format!(", client certificate {}", cert_path.display()));
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    PublishError::Tls(format!(
                        "client certificate {} and key {} cannot be used together: {e}",
                        cert_path.display(),
                        key_path.display()
                    ))
                })?
            }
            (Some(path), None) | (None, Some(path)) => {
                return Err(PublishError::Tls(format!(
                    "{} is given without its pair: mutual TLS needs both \
                     `mqtt.client_cert_file` and `mqtt.client_key_file`",
                    path.display()
                )));
            }
        };
        Ok(Self {
            config: Arc::new(config),
            summary,
        })
    }

    /// The rustls configuration.
    #[must_use]
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(&self.config)
    }
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, PublishError> {
    std::fs::read(path).map_err(|source| PublishError::File {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, PublishError> {
    let bytes = read_file(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PublishError::BadFile {
            what,
            path: path.to_path_buf(),
            problem: format!("is not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(PublishError::BadFile {
            what,
            path: path.to_path_buf(),
            problem: "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        });
    }
    Ok(certs)
}

fn system_ca_file() -> Result<PathBuf, PublishError> {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    from_env
        .into_iter()
        .chain(SYSTEM_CA_FILES.iter().map(PathBuf::from))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            PublishError::Config(format!(
                "no `mqtt.ca_file` is set and no system CA file was found (tried $SSL_CERT_FILE, {})",
                SYSTEM_CA_FILES.join(", ")
            ))
        })
}

/// Everything the publisher needs to know.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// The gateway's topics; the gateway id is also the MQTT client id.
    pub topics: Topics,
    /// The broker.
    pub url: MqttUrl,
    /// MQTT 5 (the default) or 3.1.1.
    pub protocol: MqttProtocol,
    /// Keep-alive (at least 1 s; at least 5 s with MQTT 5, a rumqttc limit).
    pub keep_alive: Duration,
    /// Broker user name.
    pub username: Option<String>,
    /// Broker password.
    pub password: Option<Secret>,
    /// TLS, for `mqtts://`.
    pub tls: Option<TlsSettings>,
    /// Gateway software version, for the status message.
    pub version: String,
    /// Names of the device profiles in use, for the status message.
    pub profiles: Vec<String>,
    /// W: publishes queued or in flight at once.
    pub window: NonZeroU16,
    /// Most readings or KPI records in one message.
    pub items_per_message: NonZeroU32,
    /// Most payload bytes in one message.
    pub bytes_per_message: NonZeroUsize,
    /// Most messages a second.
    pub replay_rate: NonZeroU32,
    /// What ends a message's stay in the buffer.
    pub retain_until: RetainUntil,
    /// First reconnect backoff ceiling.
    pub backoff_min: Duration,
    /// Largest reconnect backoff.
    pub backoff_max: Duration,
    /// First replay after the sink's watermark stalls (`sink_ack` only).
    pub stall_min: Duration,
    /// Longest wait between such replays.
    pub stall_max: Duration,
    /// How long a clean stop waits for the broker.
    pub shutdown_timeout: Duration,
    /// Limit on opening a connection (TCP, TLS and CONNACK), whole seconds.
    pub connect_timeout: Duration,
    /// Seed of the reconnect jitter.
    pub seed: u64,
}

impl PublisherConfig {
    /// Settings for `topics` on the broker at `url`, everything else at its default: MQTT 5,
    /// plain TCP, no credentials, 30 s keep-alive.
    #[must_use]
    pub fn new(topics: Topics, url: MqttUrl) -> Self {
        Self {
            topics,
            url,
            protocol: MqttProtocol::V5,
            keep_alive: Duration::from_secs(30),
            username: None,
            password: None,
            tls: None,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            profiles: Vec::new(),
            window: NonZeroU16::new(DEFAULT_WINDOW).unwrap_or(NonZeroU16::MIN),
            items_per_message: NonZeroU32::new(DEFAULT_ITEMS_PER_MESSAGE)
                .unwrap_or(NonZeroU32::MIN),
            bytes_per_message: NonZeroUsize::new(DEFAULT_BYTES_PER_MESSAGE)
                .unwrap_or(NonZeroUsize::MIN),
            replay_rate: NonZeroU32::new(DEFAULT_REPLAY_RATE).unwrap_or(NonZeroU32::MIN),
            retain_until: RetainUntil::SinkAck,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            stall_min: Duration::from_secs(120),
            stall_max: Duration::from_secs(1800),
            shutdown_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            seed: rand::random(),
        }
    }

    /// Settings from the gateway's configuration; the password comes from
    /// `mqtt.password_file`, else from the `FIVEZERO_MQTT_PASSWORD` variable.
    ///
    /// # Errors
    /// As [`PublisherConfig::from_config_with_password`].
    pub fn from_config(config: &Config, profiles: Vec<String>) -> Result<Self, PublishError> {
        let env = std::env::var(PASSWORD_ENV).ok().map(Secret::new);
        Self::from_config_with_password(config, profiles, env)
    }

    /// As [`PublisherConfig::from_config`], with `env_password` standing for the
    /// `FIVEZERO_MQTT_PASSWORD` variable.
    ///
    /// # Errors
    /// Ids that cannot be topic levels; a password file that cannot be read or is empty; a
    /// password without a user name; TLS files that cannot be read or used (each error names
    /// the file).
    pub fn from_config_with_password(
        config: &Config,
        profiles: Vec<String>,
        env_password: Option<Secret>,
    ) -> Result<Self, PublishError> {
        let mqtt = &config.mqtt;
        let topics = Topics::new(&mqtt.prefix, &config.gateway.site, &config.gateway.id)?;
        let mut out = Self::new(topics, mqtt.url.clone());
        out.protocol = mqtt.protocol;
        out.keep_alive = mqtt.keep_alive;
        out.username.clone_from(&mqtt.username);
        out.profiles = profiles;
        let publish = &config.publish;
        out.window = publish.window;
        out.items_per_message = publish.items_per_message;
        out.bytes_per_message = publish.bytes_per_message;
        out.replay_rate = publish.replay_rate;
        out.retain_until = config.buffer.retain_until;
        out.backoff_min = publish.backoff_min;
        out.backoff_max = publish.backoff_max;
        out.stall_min = publish.stall_min;
        out.stall_max = publish.stall_max;
        out.password = match &mqtt.password_file {
            Some(path) => Some(read_password(path)?),
            None => env_password,
        };
        if out.password.is_some() && out.username.is_none() {
            return Err(PublishError::Config(format!(
                "a password is set (from {}) but no `mqtt.username`",
                mqtt.password_file
                    .as_ref()
                    .map_or_else(|| PASSWORD_ENV.to_owned(), |p| p.display().to_string())
            )));
        }
        if mqtt.url.tls {
            out.tls = Some(TlsSettings::from_files(
                mqtt.ca_file.as_deref(),
                mqtt.client_cert_file.as_deref(),
                mqtt.client_key_file.as_deref(),
            )?);
        }
        Ok(out)
    }

    /// The broker as a URL, for logs.
    #[must_use]
    pub fn broker(&self) -> String {
        self.url.to_string()
    }
}

/// Reads a password file: its first line, without the line end.
fn read_password(path: &Path) -> Result<Secret, PublishError> {
    let text = std::fs::read_to_string(path).map_err(|source| PublishError::File {
        what: "password file",
        path: path.to_path_buf(),
        source,
    })?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(PublishError::BadFile {
            what: "password file",
            path: path.to_path_buf(),
            problem: "is empty".into(),
        });
    }
    Ok(Secret::new(line.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "fivezero-publish-config-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let topics = Topics::new("fivezero/v1", "site", "gw").unwrap();
        let url = MqttUrl {
            tls: false,
            host: "127.0.0.1".into(),
            port: 1883,
        };
        let mut c = PublisherConfig::new(topics, url);
        c.password = Some(s);
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn a_password_file_gives_its_first_line() {
        let file = scratch("pw").join("mqtt.pass");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(read_password(&file).unwrap().expose(), "s3cret");
        std::fs::write(&file, "\n").unwrap();
        let e = read_password(&file).unwrap_err();
        assert!(e.to_string().ends_with("mqtt.pass: is empty"), "{e}");
    }

    #[test]
    fn a_missing_password_file_is_named() {
        let e = read_password(Path::new("/nonexistent/mqtt.pass")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("password file /nonexistent/mqtt.pass: cannot be read"),
            "{e}"
        );
    }

    #[test]
    fn tls_errors_name_the_file() {
        let dir = scratch("tls");
        let e = TlsSettings::from_files(Some(&dir.join("missing.pem")), None, None).unwrap_err();
        assert!(e.to_string().starts_with("CA file "), "{e}");
        assert!(e.to_string().contains("missing.pem: cannot be read"), "{e}");

        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = TlsSettings::from_files(Some(&junk), None, None).unwrap_err();
        assert!(
            e.to_string().contains("junk.pem: holds no PEM certificate"),
            "{e}"
        );
    }

    #[test]
    fn a_client_certificate_without_its_key_is_refused() {
        let dir = scratch("mtls");
        let e = TlsSettings::from_files(
            Some(Path::new("/etc/ssl/certs/ca-certificates.crt")),
            Some(&dir.join("gw.pem")),
            None,
        );
        // The CA file may be absent on a minimal machine; either error names a file.
        let e = e.unwrap_err().to_string();
        assert!(e.contains(".pem") || e.contains(".crt"), "{e}");
    }

    #[test]
    fn the_system_roots_make_a_working_configuration_when_present() {
        if SYSTEM_CA_FILES.iter().any(|p| Path::new(p).is_file()) {
            let tls = TlsSettings::from_files(None, None, None).unwrap();
            assert!(format!("{tls:?}").contains("roots from"));
        }
    }
}
