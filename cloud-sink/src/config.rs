//! The sink's configuration: one TOML file, every key overridable from the environment.
//!
//! ```toml
//! [sink]
//! client_id = "fivezero-sink-a"      # default: fivezero-sink-<hostname>
//! shutdown_timeout = "10s"
//! allowed_gateways = []              # empty: any gateway
//!
//! [storage]
//! url = "sqlite://sink.db"           # sqlite:///abs/path, sqlite://relative (to the working directory), postgres://…
//!
//! [mqtt]
//! broker = "embedded"                # or mqtt://host:port / mqtts://host:port
//! listen = "0.0.0.0:1883"            # embedded: the MQTT 5 listener gateways connect to
//! ```
//!
//! `cloud-sink/sink.toml` is the default, complete and commented. Durations take the humantime
//! form (`"10s"`, `"10m"`), sizes the bytesize form (`"256 KiB"`). Unknown keys are errors.
//!
//! # Environment overrides
//!
//! `FIVEZERO_SINK_<SECTION>__<KEY>` overrides `<key>` of `[<section>]` (case-insensitive).
//! Variables starting with `FIVEZERO_SINK_` without `__` are not keys and are left alone
//! (`FIVEZERO_SINK_MQTT_PASSWORD` holds the broker password when no `password_file` is set);
//! one with `__` that names no key is an error. `sink.allowed_gateways` takes a
//! comma-separated list from the environment.
//!
//! | variable | key | meaning | default |
//! |---|---|---|---|
//! | `FIVEZERO_SINK_SINK__CLIENT_ID` | `sink.client_id` | MQTT client id, unique per instance, stable across restarts | `fivezero-sink-<hostname>` |
//! | `FIVEZERO_SINK_SINK__SHUTDOWN_TIMEOUT` | `sink.shutdown_timeout` | how long SIGTERM may take to finish, ack and disconnect | `10s` |
//! | `FIVEZERO_SINK_SINK__ALLOWED_GATEWAYS` | `sink.allowed_gateways` | gateways accepted; empty for any | empty |
//! | `FIVEZERO_SINK_STORAGE__URL` | `storage.url` | `sqlite://…` or `postgres://…` | `sqlite://sink.db` |
//! | `FIVEZERO_SINK_MQTT__BROKER` | `mqtt.broker` | `embedded` or `mqtt[s]://host[:port]` | `embedded` |
//! | `FIVEZERO_SINK_MQTT__LISTEN` | `mqtt.listen` | embedded broker's MQTT 5 listener | `0.0.0.0:1883` |
//! | `FIVEZERO_SINK_MQTT__LISTEN_V311` | `mqtt.listen_v311` | embedded broker's MQTT 3.1.1 listener; `""` for none | `""` |
//! | `FIVEZERO_SINK_MQTT__PREFIX` | `mqtt.prefix` | topic prefix | `fivezero/v1` |
//! | `FIVEZERO_SINK_MQTT__SHARED_GROUP` | `mqtt.shared_group` | MQTT 5 shared subscription group; `""` for none | `""` |
//! | `FIVEZERO_SINK_MQTT__INFLIGHT` | `mqtt.inflight` | Receive Maximum: unacknowledged messages the broker may send, 1..=65535 | `64` |
//! | `FIVEZERO_SINK_MQTT__MAX_PACKET_SIZE` | `mqtt.max_packet_size` | largest packet accepted, 1 KiB..=256 MiB | `256 KiB` |
//! | `FIVEZERO_SINK_MQTT__SESSION_EXPIRY` | `mqtt.session_expiry` | how long the broker keeps the session after a disconnect | `10m` |
//! | `FIVEZERO_SINK_MQTT__KEEP_ALIVE` | `mqtt.keep_alive` | MQTT keep-alive, 5 s..=18 h | `30s` |
//! | `FIVEZERO_SINK_MQTT__USERNAME` | `mqtt.username` | external broker user | none |
//! | `FIVEZERO_SINK_MQTT__PASSWORD_FILE` | `mqtt.password_file` | file holding the password | none |
//! | `FIVEZERO_SINK_MQTT__CA_FILE` | `mqtt.ca_file` | CA certificates (PEM) for `mqtts://` | system roots |
//! | `FIVEZERO_SINK_MQTT__CLIENT_CERT_FILE` | `mqtt.client_cert_file` | client certificate (PEM) | none |
//! | `FIVEZERO_SINK_MQTT__CLIENT_KEY_FILE` | `mqtt.client_key_file` | client key (PEM) | none |
//! | `FIVEZERO_SINK_STORAGE__RETAIN_READINGS` | `storage.retain_readings` | delete readings older than this; `""` keeps all | `""` |
//! | `FIVEZERO_SINK_STORAGE__RETAIN_KPIS` | `storage.retain_kpis` | delete KPI records older than this; `""` keeps all | `""` |
//! | `FIVEZERO_SINK_HTTP__LISTEN` | `http.listen` | HTTP API address; `""` turns it off; without tokens only a loopback address | `127.0.0.1:8080` |
//! | `FIVEZERO_SINK_HTTP__MAX_RANGE` | `http.max_range` | longest `to - from` of a query | `400d` |
//! | `FIVEZERO_SINK_HTTP__MAX_ROWS` | `http.max_rows` | most database rows one query reads | `500000` |
//! | `FIVEZERO_SINK_HTTP__REQUEST_TIMEOUT` | `http.request_timeout` | longest a request may take (then 503) | `10s` |
//! | `FIVEZERO_SINK_HTTP__MAX_CONCURRENCY` | `http.max_concurrency` | requests served at once (more get 503) | `64` |
//! | `FIVEZERO_SINK_HTTP__MAX_HEADER_SIZE` | `http.max_header_size` | largest total header size (then 431) | `16 KiB` |
//! | `FIVEZERO_SINK_HTTP__MAX_BODY_SIZE` | `http.max_body_size` | largest request body (then 413) | `16 KiB` |
//!
//! API tokens are `[[http.tokens]]` tables (`name`, `scope = "read" | "admin"`, `sha256` of
//! the token, from `fivezero-sink hash-token`); they are not taken from the environment.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use config::{Config as Layers, File, FileFormat};
use fivezero_model::topic;
use serde::Deserialize;

use crate::store::StorageUrl;

/// Prefix of every override variable.
pub const ENV_PREFIX: &str = "FIVEZERO_SINK_";
/// The variable holding the broker password when no `password_file` is set.
pub const PASSWORD_ENV: &str = "FIVEZERO_SINK_MQTT_PASSWORD";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{file}: cannot be read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// Values that parse but cannot work, one line each.
    #[error("{file}: {}", problems.join(&format!("\n{}: ", file.display())))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// Each problem.
        problems: Vec<String>,
    },
}

const fn default_inflight() -> u16 {
    64
}
const fn default_shutdown() -> Duration {
    Duration::from_secs(10)
}
const fn default_session_expiry() -> Duration {
    Duration::from_secs(600)
}
const fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
const fn default_max_packet() -> ByteSize {
    ByteSize::kib(256)
}
fn default_broker() -> String {
    "embedded".to_owned()
}
fn default_listen() -> String {
    "0.0.0.0:1883".to_owned()
}
fn default_prefix() -> String {
    topic::DEFAULT_PREFIX.to_owned()
}
fn default_storage() -> String {
    "sqlite://sink.db".to_owned()
}

/// A list from TOML, or a comma-separated string from the environment.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum List {
    Items(Vec<String>),
    Text(String),
    #[default]
    Empty,
}

impl List {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::Empty => Vec::new(),
            Self::Items(v) => v,
            Self::Text(t) => t
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    client_id: Option<String>,
    #[serde(default = "default_shutdown", with = "humantime_serde")]
    shutdown_timeout: Duration,
    #[serde(default)]
    allowed_gateways: List,
}

impl Default for RawSink {
    fn default() -> Self {
        Self {
            client_id: None,
            shutdown_timeout: default_shutdown(),
            allowed_gateways: List::Empty,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    #[serde(default = "default_storage")]
    url: String,
    #[serde(default)]
    retain_readings: String,
    #[serde(default)]
    retain_kpis: String,
}

impl Default for RawStorage {
    fn default() -> Self {
        Self {
            url: default_storage(),
            retain_readings: String::new(),
            retain_kpis: String::new(),
        }
    }
}

fn default_http_listen() -> String {
    "127.0.0.1:8080".to_owned()
}
const fn default_max_range() -> Duration {
    Duration::from_secs(400 * 86_400)
}
const fn default_max_rows() -> u32 {
    500_000
}
const fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
const fn default_max_concurrency() -> usize {
    64
}
const fn default_max_header() -> ByteSize {
    ByteSize::kib(16)
}
const fn default_max_body() -> ByteSize {
    ByteSize::kib(16)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default = "default_http_listen")]
    listen: String,
    #[serde(default = "default_max_range", with = "humantime_serde")]
    max_range: Duration,
    #[serde(default = "default_max_rows")]
    max_rows: u32,
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    request_timeout: Duration,
    #[serde(default = "default_max_concurrency")]
    max_concurrency: usize,
    #[serde(default = "default_max_header")]
    max_header_size: ByteSize,
    #[serde(default = "default_max_body")]
    max_body_size: ByteSize,
    #[serde(default)]
    tokens: Vec<RawToken>,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            listen: default_http_listen(),
            max_range: default_max_range(),
            max_rows: default_max_rows(),
            request_timeout: default_request_timeout(),
            max_concurrency: default_max_concurrency(),
            max_header_size: default_max_header(),
            max_body_size: default_max_body(),
            tokens: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    scope: Scope,
    sha256: String,
}

/// What a bearer token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every `GET /api/v1/sites…` query.
    Read,
    /// Reads, plus the operator's views (`/api/v1/admin/…`: dead letters, quarantine).
    Admin,
}

/// An API token as configured: its name (for logs) and the SHA-256 of the secret. The secret
/// itself is never stored: `fivezero-sink hash-token` prints the hash of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Name, for logs.
    pub name: String,
    /// Scope.
    pub scope: Scope,
    /// SHA-256 of the token.
    pub sha256: [u8; 32],
}

/// The HTTP API's settings (`[http]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Where to listen; `None` when `listen = ""` turns the API off.
    pub listen: Option<SocketAddr>,
    /// Longest `to - from` of a query.
    pub max_range: Duration,
    /// Most rows one query reads from the database.
    pub max_rows: u32,
    /// Longest a request may take.
    pub request_timeout: Duration,
    /// Most requests handled at once; more are refused with 503.
    pub max_concurrency: usize,
    /// Largest total size of a request's headers, bytes.
    pub max_header_size: usize,
    /// Largest request body, bytes.
    pub max_body_size: usize,
    /// Tokens; empty leaves the API open (allowed only on a loopback address).
    pub tokens: Vec<ApiToken>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        // The defaults are valid by construction (the unit test on an empty file checks it).
        validate_http(RawHttp::default(), &mut Vec::new()).unwrap_or(Self {
            listen: None,
            max_range: default_max_range(),
            max_rows: default_max_rows(),
            request_timeout: default_request_timeout(),
            max_concurrency: default_max_concurrency(),
            max_header_size: 16 * 1024,
            max_body_size: 16 * 1024,
            tokens: Vec::new(),
        })
    }
}

/// The hex SHA-256 of a token, as `[[http.tokens]] sha256` takes it.
#[must_use]
pub fn hash_token(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        *out.get_mut(i)? = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

fn validate_http(raw: RawHttp, problems: &mut Vec<String>) -> Option<HttpConfig> {
    let before = problems.len();
    let listen = if raw.listen.is_empty() {
        None
    } else {
        match raw.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(format!(
                    "http.listen {:?} is not an ip:port address",
                    raw.listen
                ));
                None
            }
        }
    };
    if raw.max_range < Duration::from_secs(60) {
        problems.push("http.max_range must be at least 1m".to_owned());
    }
    if raw.max_rows == 0 {
        problems.push("http.max_rows must be at least 1".to_owned());
    }
    if raw.request_timeout < Duration::from_millis(100) {
        problems.push("http.request_timeout must be at least 100ms".to_owned());
    }
    if raw.max_concurrency == 0 {
        problems.push("http.max_concurrency must be at least 1".to_owned());
    }
    let size = |key: &str, v: ByteSize, problems: &mut Vec<String>| {
        usize::try_from(v.as_u64())
            .ok()
            .filter(|s| (1024..=1024 * 1024).contains(s))
            .unwrap_or_else(|| {
                problems.push(format!("http.{key} {v} is outside 1 KiB..=1 MiB"));
                0
            })
    };
    let max_header_size = size("max_header_size", raw.max_header_size, problems);
    let max_body_size = size("max_body_size", raw.max_body_size, problems);
    let mut tokens = Vec::new();
    let mut names = BTreeSet::new();
    for t in raw.tokens {
        if t.name.is_empty() || !names.insert(t.name.clone()) {
            problems.push(format!(
                "http.tokens: name {:?} is empty or used twice",
                t.name
            ));
        }
        match parse_hex32(&t.sha256.to_ascii_lowercase()) {
            Some(sha256) => tokens.push(ApiToken {
                name: t.name,
                scope: t.scope,
                sha256,
            }),
            None => problems.push(format!(
                "http.tokens {:?}: sha256 must be 64 hex digits (fivezero-sink hash-token prints it)",
                t.name
            )),
        }
    }
    if let Some(addr) = listen
        && tokens.is_empty()
        && !addr.ip().is_loopback()
    {
        problems.push(format!(
            "http.listen {addr} is not a loopback address: configure [[http.tokens]] \
             so the API is not open to the network"
        ));
    }
    (problems.len() == before).then_some(HttpConfig {
        listen,
        max_range: raw.max_range,
        max_rows: raw.max_rows,
        request_timeout: raw.request_timeout,
        max_concurrency: raw.max_concurrency,
        max_header_size,
        max_body_size,
        tokens,
    })
}

fn retention(key: &str, text: &str, problems: &mut Vec<String>) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    match humantime::parse_duration(text) {
        Ok(d) if d >= Duration::from_secs(3600) => Some(d),
        _ => {
            problems.push(format!(
                "storage.{key} {text:?} must be a duration of at least 1h, or \"\" to keep everything"
            ));
            None
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    #[serde(default = "default_broker")]
    broker: String,
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default)]
    listen_v311: String,
    #[serde(default = "default_prefix")]
    prefix: String,
    #[serde(default)]
    shared_group: String,
    #[serde(default = "default_inflight")]
    inflight: u16,
    #[serde(default = "default_max_packet")]
    max_packet_size: ByteSize,
    #[serde(default = "default_session_expiry", with = "humantime_serde")]
    session_expiry: Duration,
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    keep_alive: Duration,
    username: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
}

impl Default for RawMqtt {
    fn default() -> Self {
        Self {
            broker: default_broker(),
            listen: default_listen(),
            listen_v311: String::new(),
            prefix: default_prefix(),
            shared_group: String::new(),
            inflight: default_inflight(),
            max_packet_size: default_max_packet(),
            session_expiry: default_session_expiry(),
            keep_alive: default_keep_alive(),
            username: None,
            password_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    sink: RawSink,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    mqtt: RawMqtt,
    #[serde(default)]
    http: RawHttp,
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerChoice {
    /// The embedded rumqttd.
    Embedded {
        /// MQTT 5 listener.
        listen: SocketAddr,
        /// Optional MQTT 3.1.1 listener.
        listen_v311: Option<SocketAddr>,
    },
    /// An external broker.
    External {
        /// `mqtts://`.
        tls: bool,
        /// Host name or address.
        host: String,
        /// Port (1883, or 8883 with TLS, when not given).
        port: u16,
    },
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// MQTT client id of this instance.
    pub client_id: String,
    /// How long a SIGTERM drain may take.
    pub shutdown_timeout: Duration,
    /// Gateways accepted; `None` for any.
    pub allowed_gateways: Option<BTreeSet<String>>,
    /// Storage URL (checked).
    pub storage_url: String,
    /// The broker.
    pub broker: BrokerChoice,
    /// Topic prefix.
    pub prefix: String,
    /// Shared subscription group.
    pub shared_group: Option<String>,
    /// Receive Maximum.
    pub inflight: NonZeroU16,
    /// Largest packet accepted, bytes.
    pub max_packet_size: u32,
    /// Session expiry.
    pub session_expiry: Duration,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// External broker user.
    pub username: Option<String>,
    /// Password file.
    pub password_file: Option<PathBuf>,
    /// CA file.
    pub ca_file: Option<PathBuf>,
    /// Client certificate file.
    pub client_cert_file: Option<PathBuf>,
    /// Client key file.
    pub client_key_file: Option<PathBuf>,
    /// The HTTP API.
    pub http: HttpConfig,
    /// Readings older than this are deleted; `None` keeps them.
    pub retain_readings: Option<Duration>,
    /// KPI records whose window ended longer ago than this are deleted; `None` keeps them.
    pub retain_kpis: Option<Duration>,
}

/// The variables of this process that are ours (skipping names or values that are not UTF-8).
fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Turns variables into `(key path, value)` overrides.
fn env_overrides(vars: Vec<(String, String)>) -> Result<Vec<(String, String)>, Vec<String>> {
    let mut ours: Vec<_> = vars
        .into_iter()
        .filter_map(|(k, v)| {
            let rest = k
                .get(..ENV_PREFIX.len())
                .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
                .and_then(|_| k.get(ENV_PREFIX.len()..))?;
            rest.contains("__").then(|| (k.clone(), rest.to_owned(), v))
        })
        .collect();
    ours.sort();
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (var, rest, value) in ours {
        let levels: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        match levels.as_slice() {
            [section, key]
                if !section.is_empty()
                    && !key.is_empty()
                    && levels
                        .iter()
                        .all(|l| l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) =>
            {
                out.push((format!("{section}.{key}"), value));
            }
            _ => errors.push(format!(
                "environment variable {var}: names no key; overrides are {ENV_PREFIX}<SECTION>__<KEY>"
            )),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn parse_broker(text: &str) -> Result<(bool, String, u16), String> {
    let (tls, rest) = if let Some(r) = text.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = text.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(format!(
            "mqtt.broker {text:?} is neither \"embedded\" nor mqtt://host[:port] or mqtts://host[:port]"
        ));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("mqtt.broker {text:?}: port {p:?} is not 1..=65535"))?;
            (h, port)
        }
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err(format!("mqtt.broker {text:?} names no host"));
    }
    Ok((tls, host.to_owned(), port))
}

impl Config {
    /// Reads and validates `path` with this process's environment.
    ///
    /// # Errors
    /// As [`Config::from_text`], or the file cannot be read.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::from_text(path, &text, process_env())
    }

    /// Parses `text` (named `path` in messages) with the variables `env`, and validates it.
    /// Opens no socket and no database.
    ///
    /// # Errors
    /// Bad TOML, an unknown key (in the file or a variable), a value of the wrong type, or
    /// values that cannot work (every such problem listed).
    pub fn from_text(
        path: &Path,
        text: &str,
        env: Vec<(String, String)>,
    ) -> Result<Self, ConfigError> {
        let parse = |message: String| ConfigError::Parse {
            file: path.to_path_buf(),
            message,
        };
        let overrides = env_overrides(env).map_err(|e| parse(e.join("; ")))?;
        let mut builder = Layers::builder().add_source(File::from_str(text, FileFormat::Toml));
        for (key, value) in overrides {
            builder = builder
                .set_override(key.clone(), value)
                .map_err(|e| parse(format!("override {key}: {e}")))?;
        }
        let raw: RawConfig = builder
            .build()
            .and_then(Layers::try_deserialize)
            .map_err(|e| parse(e.to_string()))?;
        validate(raw).map_err(|problems| ConfigError::Invalid {
            file: path.to_path_buf(),
            problems,
        })
    }
}

fn validate(raw: RawConfig) -> Result<Config, Vec<String>> {
    let mut problems = Vec::new();
    let RawConfig {
        sink,
        storage,
        mqtt,
        http,
    } = raw;
    let http = validate_http(http, &mut problems);
    let retain_readings = retention("retain_readings", &storage.retain_readings, &mut problems);
    let retain_kpis = retention("retain_kpis", &storage.retain_kpis, &mut problems);
    let client_id = sink
        .client_id
        .unwrap_or_else(|| format!("fivezero-sink-{}", hostname()));
    if client_id.is_empty() || client_id.len() > 128 {
        problems.push("sink.client_id must be 1 to 128 bytes".to_owned());
    }
    if sink.shutdown_timeout < Duration::from_secs(1) {
        problems.push("sink.shutdown_timeout must be at least 1s".to_owned());
    }
    let allowed: BTreeSet<String> = sink.allowed_gateways.into_vec().into_iter().collect();
    for g in &allowed {
        if let Err(e) = topic::check_segment(g) {
            problems.push(format!("sink.allowed_gateways: {g:?} {e}"));
        }
    }
    if let Err(e) = StorageUrl::parse(&storage.url) {
        problems.push(e.to_string());
    }
    let addr = |key: &str, text: &str, problems: &mut Vec<String>| -> Option<SocketAddr> {
        text.parse()
            .map_err(|_| problems.push(format!("mqtt.{key} {text:?} is not an ip:port address")))
            .ok()
    };
    let broker = if mqtt.broker == "embedded" {
        let listen = addr("listen", &mqtt.listen, &mut problems);
        let v311 = if mqtt.listen_v311.is_empty() {
            None
        } else {
            addr("listen_v311", &mqtt.listen_v311, &mut problems)
        };
        if mqtt.username.is_some() || mqtt.password_file.is_some() || mqtt.ca_file.is_some() {
            problems.push(
                "mqtt.username, password_file and ca_file are for an external broker; \
                 the embedded one takes no credentials"
                    .to_owned(),
            );
        }
        listen.map(|listen| BrokerChoice::Embedded {
            listen,
            listen_v311: v311,
        })
    } else {
        match parse_broker(&mqtt.broker) {
            Ok((tls, host, port)) => {
                if !tls && (mqtt.ca_file.is_some() || mqtt.client_cert_file.is_some()) {
                    problems.push("mqtt.ca_file and client_cert_file need mqtts://".to_owned());
                }
                Some(BrokerChoice::External { tls, host, port })
            }
            Err(e) => {
                problems.push(e);
                None
            }
        }
    };
    if mqtt.client_cert_file.is_some() != mqtt.client_key_file.is_some() {
        problems.push("mqtt.client_cert_file and client_key_file go together".to_owned());
    }
    if let Err(e) = topic::check_prefix(&mqtt.prefix) {
        problems.push(format!("mqtt.prefix: {e}"));
    }
    let shared_group = if mqtt.shared_group.is_empty() {
        None
    } else {
        if let Err(e) = topic::check_segment(&mqtt.shared_group) {
            problems.push(format!("mqtt.shared_group {:?} {e}", mqtt.shared_group));
        }
        Some(mqtt.shared_group)
    };
    let inflight = NonZeroU16::new(mqtt.inflight);
    if inflight.is_none() {
        problems.push("mqtt.inflight must be at least 1".to_owned());
    }
    let max_packet_size = u32::try_from(mqtt.max_packet_size.as_u64())
        .ok()
        .filter(|s| (1024..=256 * 1024 * 1024).contains(s));
    if max_packet_size.is_none() {
        problems.push(format!(
            "mqtt.max_packet_size {} is outside 1 KiB..=256 MiB",
            mqtt.max_packet_size
        ));
    }
    if mqtt.session_expiry < Duration::from_secs(1)
        || mqtt.session_expiry > Duration::from_secs(u64::from(u32::MAX))
    {
        problems.push("mqtt.session_expiry must be 1s..=136y (u32 seconds)".to_owned());
    }
    if mqtt.keep_alive < Duration::from_secs(5) || mqtt.keep_alive > Duration::from_secs(65_535) {
        problems.push("mqtt.keep_alive must be 5s..=18h".to_owned());
    }
    match (broker, inflight, max_packet_size, http, problems.is_empty()) {
        (Some(broker), Some(inflight), Some(max_packet_size), Some(http), true) => Ok(Config {
            client_id,
            shutdown_timeout: sink.shutdown_timeout,
            allowed_gateways: (!allowed.is_empty()).then_some(allowed),
            storage_url: storage.url,
            broker,
            prefix: mqtt.prefix,
            shared_group,
            inflight,
            max_packet_size,
            session_expiry: mqtt.session_expiry,
            keep_alive: mqtt.keep_alive,
            username: mqtt.username,
            password_file: mqtt.password_file,
            ca_file: mqtt.ca_file,
            client_cert_file: mqtt.client_cert_file,
            client_key_file: mqtt.client_key_file,
            http,
            retain_readings,
            retain_kpis,
        }),
        _ => Err(problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_text(
            Path::new("sink.toml"),
            text,
            env.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn an_empty_file_gives_the_single_machine_defaults() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.storage_url, "sqlite://sink.db");
        assert_eq!(
            c.broker,
            BrokerChoice::Embedded {
                listen: "0.0.0.0:1883".parse().unwrap(),
                listen_v311: None
            }
        );
        assert_eq!(c.max_packet_size, 256 * 1024);
        assert_eq!(c.inflight.get(), 64);
        assert!(c.client_id.starts_with("fivezero-sink-"));
        assert_eq!(c.shared_group, None);
        assert_eq!(c.http, HttpConfig::default());
        assert_eq!(c.http.listen, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(c.retain_readings, None);
    }

    #[test]
    fn tokens_are_read_hashed_and_an_open_api_stays_on_loopback() {
        let hash = hash_token("secret");
        let c = load(
            &format!(
                "[http]\nlisten = \"0.0.0.0:9000\"\n[[http.tokens]]\nname = \"ops\"\nscope = \"admin\"\nsha256 = \"{hash}\"\n"
            ),
            &[],
        )
        .unwrap();
        assert_eq!(c.http.tokens.len(), 1);
        assert_eq!(c.http.tokens[0].scope, Scope::Admin);
        let e = load("[http]\nlisten = \"0.0.0.0:9000\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        let e = load(
            "[[http.tokens]]\nname = \"x\"\nscope = \"read\"\nsha256 = \"abc\"\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("64 hex"), "{e}");
    }

    #[test]
    fn environment_variables_override_keys() {
        let c = load(
            "[mqtt]\nbroker = \"embedded\"\n",
            &[
                ("FIVEZERO_SINK_MQTT__BROKER", "mqtts://broker.example"),
                ("FIVEZERO_SINK_MQTT__INFLIGHT", "200"),
                ("FIVEZERO_SINK_SINK__ALLOWED_GATEWAYS", "gw1, gw2"),
                ("FIVEZERO_SINK_LOG", "debug"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.broker,
            BrokerChoice::External {
                tls: true,
                host: "broker.example".into(),
                port: 8883
            }
        );
        assert_eq!(c.inflight.get(), 200);
        assert_eq!(
            c.allowed_gateways,
            Some(BTreeSet::from(["gw1".to_owned(), "gw2".to_owned()]))
        );
    }

    #[test]
    fn unknown_keys_are_errors_in_the_file_and_the_environment() {
        let e = load("[mqtt]\nbrokr = \"x\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("brokr"), "{e}");
        let e = load("", &[("FIVEZERO_SINK_MQTT__BROKR", "x")]).unwrap_err();
        assert!(e.to_string().contains("brokr"), "{e}");
        let e = load("", &[("FIVEZERO_SINK_A__B__C", "x")]).unwrap_err();
        assert!(e.to_string().contains("FIVEZERO_SINK_A__B__C"), "{e}");
    }

    #[test]
    fn human_durations_and_sizes_are_read() {
        let c = load(
            "[mqtt]\nmax_packet_size = \"1 MiB\"\nsession_expiry = \"1h\"\n[sink]\nshutdown_timeout = \"3s\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.max_packet_size, 1024 * 1024);
        assert_eq!(c.session_expiry, Duration::from_secs(3600));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(3));
    }

    #[test]
    fn values_that_cannot_work_are_all_listed() {
        let e = load(
            "[storage]\nurl = \"mysql://x\"\n[mqtt]\nlisten = \"nowhere\"\ninflight = 0\nshared_group = \"a/b\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        for needle in ["mysql", "mqtt.listen", "mqtt.inflight", "shared_group"] {
            assert!(e.contains(needle), "{needle} missing in {e}");
        }
    }

    #[test]
    fn broker_urls_take_a_default_port() {
        assert_eq!(parse_broker("mqtt://h").unwrap(), (false, "h".into(), 1883));
        assert_eq!(
            parse_broker("mqtt://10.0.0.1:1884").unwrap(),
            (false, "10.0.0.1".into(), 1884)
        );
        assert!(parse_broker("http://h").is_err());
        assert!(parse_broker("mqtt://h:0").is_err());
    }
}
