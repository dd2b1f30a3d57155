//! The gateway's configuration: one TOML file, every key overridable from the environment.
//!
//! # Format
//!
//! ```toml
//! [gateway]
//! id = "qd-greensail-gw1"               # topic-level-safe name
//! site = "qingdao-greensail"
//! state_dir = "/var/lib/fivezero"       # buffer.sqlite lives here
//! profile_dir = "/usr/share/fivezero/profiles"   # optional: the profile library
//!
//! [mqtt]                                # the broker
//! url = "mqtts://broker.example:8883"   # mqtt:// or mqtts://
//!
//! [buffer]
//! max_bytes = "2 GiB"
//! max_age = "30d"
//!
//! [publish]                             # optional: how the backlog is sent
//! replay_rate = 200                     # messages a second
//!
//! [poll]
//! connect_timeout = "3s"
//!
//! [[device]]
//! name = "pv-roof-a"
//! profile = "sunspec-inverter"          # a library id, or a path to a .toml file
//! tcp = "10.0.0.21:502"                 # or rtu = "/dev/ttyUSB0" (+ baud, parity, ...) or rtu_tcp = "host:port"
//! unit = 1
//! interval = "5s"
//! ```
//!
//! `gateway/examples/gateway.toml` is a complete, commented example. Durations take the
//! humantime form (`"500ms"`, `"5s"`, `"30d"`), sizes the bytesize form (`"2 GiB"`,
//! `"512 MiB"`). Relative paths (profiles, folders, key files) are taken relative to the
//! folder of the config file.
//!
//! # Loading
//!
//! [`Config::load`] reads the file through the `config` crate, applies the environment
//! overrides below, deserialises into raw structs that refuse unknown keys (a misspelt key,
//! in the file or in a variable name, is an error), then validates everything in one pass
//! (`validate`): ranges, names, addresses, serial settings shared by the devices of one
//! port, and every device profile, loaded and checked with `fivezero_profiles::load_file`.
//! All problems are reported together, each line naming the file and the key or device:
//! `gateway.toml: device "pv-roof-a": unit 300 is outside 0..=255`.
//!
//! Validation opens no socket and reads no file other than the config and the profiles;
//! `fivezero-gateway check-config FILE` runs exactly this.
//!
//! # Environment overrides
//!
//! A variable `FIVEZERO_<SECTION>__<KEY>` overrides `<key>` of `[<section>]`; names are
//! case-insensitive and `__` separates levels. Devices are addressed by their 0-based position
//! in the file: `FIVEZERO_DEVICE__0__UNIT=3` sets `unit` of the first `[[device]]`; only
//! devices present in the file can be overridden. Variables starting with `FIVEZERO_` but
//! without `__` (such as `FIVEZERO_LOG`) are not config keys and are left alone; a variable
//! with `__` that names no key is an error, like a misspelt key in the file.
//!
//! | variable | key | meaning | default |
//! |---|---|---|---|
//! | `FIVEZERO_GATEWAY__ID` | `gateway.id` | gateway id, a topic level | required |
//! | `FIVEZERO_GATEWAY__SITE` | `gateway.site` | site id, a topic level | required |
//! | `FIVEZERO_GATEWAY__STATE_DIR` | `gateway.state_dir` | folder of the buffer database | `/var/lib/fivezero` |
//! | `FIVEZERO_GATEWAY__PROFILE_DIR` | `gateway.profile_dir` | the profile library searched for profile ids | the library in the source tree |
//! | `FIVEZERO_GATEWAY__SHUTDOWN_TIMEOUT` | `gateway.shutdown_timeout` | how long SIGTERM may take to commit, flush and disconnect | `10s` |
//! | `FIVEZERO_METRICS__LISTEN` | `metrics.listen` | address of the Prometheus endpoint; `""` turns it off | `127.0.0.1:9464` |
//! | `FIVEZERO_MQTT__URL` | `mqtt.url` | broker, `mqtt://host[:port]` or `mqtts://host[:port]` | `mqtt://127.0.0.1:1883` |
//! | `FIVEZERO_MQTT__PREFIX` | `mqtt.prefix` | topic prefix | `fivezero/v1` |
//! | `FIVEZERO_MQTT__USERNAME` | `mqtt.username` | broker user name | none |
//! | `FIVEZERO_MQTT__PASSWORD_FILE` | `mqtt.password_file` | file holding the password (never put it in the config) | none |
//! | `FIVEZERO_MQTT__CA_FILE` | `mqtt.ca_file` | CA certificates (PEM) for `mqtts://` | system roots |
//! | `FIVEZERO_MQTT__CLIENT_CERT_FILE` | `mqtt.client_cert_file` | client certificate (PEM), with the key | none |
//! | `FIVEZERO_MQTT__CLIENT_KEY_FILE` | `mqtt.client_key_file` | client private key (PEM), with the certificate | none |
//! | `FIVEZERO_MQTT__KEEP_ALIVE` | `mqtt.keep_alive` | MQTT keep-alive, 1 s to 18 h | `30s` |
//! | `FIVEZERO_MQTT__PROTOCOL` | `mqtt.protocol` | `"5"` or `"3.1.1"` | `"5"` |
//! | `FIVEZERO_BUFFER__MAX_BYTES` | `buffer.max_bytes` | disk budget of the buffer, at least 1 MiB | `2 GiB` |
//! | `FIVEZERO_BUFFER__MAX_AGE` | `buffer.max_age` | oldest reading kept, at least 1 min | `30d` |
//! | `FIVEZERO_BUFFER__SYNCHRONOUS` | `buffer.synchronous` | SQLite `synchronous`: `"full"` or `"normal"` | `"full"` |
//! | `FIVEZERO_BUFFER__RETAIN_UNTIL` | `buffer.retain_until` | what ends a reading's stay: `"sink_ack"` (the sink's watermark passes it) or `"broker_ack"` (the broker's PUBACK, for deployments without the fivezero sink) | `"sink_ack"` |
//! | `FIVEZERO_PUBLISH__WINDOW` | `publish.window` | QoS 1 messages in flight at once, 1 to 65535 (lowered to the broker's Receive Maximum) | `32` |
//! | `FIVEZERO_PUBLISH__ITEMS_PER_MESSAGE` | `publish.items_per_message` | most readings or KPI records in one message, 1 to 10000 | `1000` |
//! | `FIVEZERO_PUBLISH__BYTES_PER_MESSAGE` | `publish.bytes_per_message` | most payload bytes in one message, 1 KiB to 255 MiB (lowered to the broker's Maximum Packet Size) | `255 KiB` |
//! | `FIVEZERO_PUBLISH__REPLAY_RATE` | `publish.replay_rate` | most messages a second, so a backlog drains without flooding the uplink | `200` |
//! | `FIVEZERO_PUBLISH__BACKOFF_MIN` | `publish.backoff_min` | first reconnect backoff ceiling (exponential, full jitter) | `500ms` |
//! | `FIVEZERO_PUBLISH__BACKOFF_MAX` | `publish.backoff_max` | largest reconnect backoff | `30s` |
//! | `FIVEZERO_PUBLISH__STALL_MIN` | `publish.stall_min` | with `sink_ack`: republish what the broker took but the sink's watermark has not passed after this long | `2m` |
//! | `FIVEZERO_PUBLISH__STALL_MAX` | `publish.stall_max` | longest wait between such republishes (doubling from `stall_min`) | `30m` |
//! | `FIVEZERO_POLL__CONNECT_TIMEOUT` | `poll.connect_timeout` | limit on opening a link | `3s` |
//! | `FIVEZERO_POLL__BACKOFF_MIN` | `poll.backoff_min` | first reconnect backoff ceiling | `1s` |
//! | `FIVEZERO_POLL__BACKOFF_MAX` | `poll.backoff_max` | largest backoff; also how often a misconfigured block is retried | `60s` |
//! | `FIVEZERO_POLL__INTER_FRAME_DELAY` | `poll.inter_frame_delay` | silence between frames on an RTU bus | 3.5 character times at the port's settings (1.75 ms above 19200 baud) |
//! | `FIVEZERO_DEVICE__<n>__NAME` | `device[n].name` | device name, a topic level, unique | required |
//! | `FIVEZERO_DEVICE__<n>__PROFILE` | `device[n].profile` | library id or path to a profile | required |
//! | `FIVEZERO_DEVICE__<n>__PROFILE_DIR` | `device[n].profile_dir` | library folder for this device | `gateway.profile_dir` |
//! | `FIVEZERO_DEVICE__<n>__TCP` | `device[n].tcp` | Modbus TCP `host:port` | one of `tcp`, `rtu`, `rtu_tcp` |
//! | `FIVEZERO_DEVICE__<n>__RTU` | `device[n].rtu` | serial port path | one of `tcp`, `rtu`, `rtu_tcp` |
//! | `FIVEZERO_DEVICE__<n>__RTU_TCP` | `device[n].rtu_tcp` | RTU frames over TCP (serial server) `host:port` | one of `tcp`, `rtu`, `rtu_tcp` |
//! | `FIVEZERO_DEVICE__<n>__BAUD` | `device[n].baud` | serial baud rate (`rtu` only) | `9600` |
//! | `FIVEZERO_DEVICE__<n>__PARITY` | `device[n].parity` | `"N"`, `"E"` or `"O"` (`rtu` only) | `"N"` |
//! | `FIVEZERO_DEVICE__<n>__DATA_BITS` | `device[n].data_bits` | 5 to 8 (`rtu` only) | `8` |
//! | `FIVEZERO_DEVICE__<n>__STOP_BITS` | `device[n].stop_bits` | 1 or 2 (`rtu` only) | `1` |
//! | `FIVEZERO_DEVICE__<n>__UNIT` | `device[n].unit` | Modbus unit id: 0..=255 on TCP, 1..=247 on RTU | required |
//! | `FIVEZERO_DEVICE__<n>__INTERVAL` | `device[n].interval` | poll interval, whole milliseconds, 100 ms to 1 day | `5s` |
//! | `FIVEZERO_DEVICE__<n>__TIMEOUT` | `device[n].timeout` | limit on one request, 10 ms to 60 s | `1s` |
//! | `FIVEZERO_DEVICE__<n>__ROLE` | `device[n].role` | what the device feeds in the KPIs: a role, `role:metric`, or a list of them (see [`crate::site`]) | none |
//! | `FIVEZERO_KPI__TIME_ZONE` | `kpi.time_zone` | IANA time zone the KPI windows align to; required when a device has a role | none |
//!
//! Factors (`[kpi.factors.NAME]`, each with `value`, `unit`, `year`, `publisher`,
//! `document`) are overridden in the file; their names, units and defaults are in
//! [`crate::site::FACTORS`].

mod env;
mod raw;
mod site;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::num::{NonZeroU16, NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fivezero_profiles::Profile;

use crate::site::{Group, Provenanced, Role};

pub use env::{ENV_PREFIX, env_overrides};
pub use validate::inter_frame_delay;

/// The validated configuration of the gateway.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    /// `[gateway]`.
    pub gateway: GatewayConfig,
    /// `[mqtt]`.
    pub mqtt: MqttConfig,
    /// `[buffer]`.
    pub buffer: BufferConfig,
    /// `[publish]`.
    pub publish: PublishConfig,
    /// `[poll]`.
    pub poll: PollConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// The `[[device]]` entries, in file order.
    pub devices: Vec<DeviceConfig>,
    /// `[kpi]` with the devices' roles.
    pub kpi: KpiConfig,
}

/// `[gateway]`: who this gateway is and where it keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Gateway id, a valid topic level.
    pub id: String,
    /// Site id, a valid topic level.
    pub site: String,
    /// Folder of the buffer database.
    pub state_dir: PathBuf,
    /// The profile library devices name profiles from.
    pub profile_dir: PathBuf,
    /// How long a SIGTERM may take: stop polling, commit, flush what the broker will take,
    /// disconnect. Match systemd's `TimeoutStopSec` to it (with a margin).
    pub shutdown_timeout: Duration,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Address of `GET /metrics`; `None` when `listen = ""` turns it off.
    pub listen: Option<std::net::SocketAddr>,
}

/// `[mqtt]`: the broker connection (used by the publisher).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// The broker.
    pub url: MqttUrl,
    /// Topic prefix, checked with `fivezero_model::topic::check_prefix`.
    pub prefix: String,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// CA certificates for TLS.
    pub ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS (always together with the key).
    pub client_cert_file: Option<PathBuf>,
    /// Client private key for mutual TLS (always together with the certificate).
    pub client_key_file: Option<PathBuf>,
    /// Keep-alive interval (whole seconds, 1 s to 65535 s).
    pub keep_alive: Duration,
    /// MQTT protocol version.
    pub protocol: MqttProtocol,
}

/// A broker address from `mqtt://host[:port]` or `mqtts://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    /// `mqtts://`.
    pub tls: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port; 1883 or 8883 when not given.
    pub port: u16,
}

impl fmt::Display for MqttUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttProtocol {
    /// MQTT 5.
    V5,
    /// MQTT 3.1.1.
    V311,
}

/// `[buffer]`: the local store's budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferConfig {
    /// Disk budget in bytes.
    pub max_bytes: u64,
    /// Oldest reading kept.
    pub max_age: Duration,
    /// SQLite `synchronous` level.
    pub synchronous: Synchronous,
    /// What ends a reading's stay in the buffer.
    pub retain_until: RetainUntil,
}

/// What ends a message's stay in the buffer (`reference/reliability.md`, B.6 item 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainUntil {
    /// The sink's watermark passes it (end to end; the default). Messages the broker
    /// acknowledged but the sink never stored are published again.
    #[default]
    SinkAck,
    /// The broker's PUBACK: for deployments without the fivezero sink. Cheaper, but a broker
    /// that drops queued messages loses them.
    BrokerAck,
}

/// `[publish]`: how the publisher sends what the buffer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishConfig {
    /// QoS 1 messages queued or in flight at once (lowered to the broker's Receive Maximum).
    pub window: NonZeroU16,
    /// Most readings or KPI records in one message.
    pub items_per_message: NonZeroU32,
    /// Most payload bytes in one message (lowered to fit the broker's Maximum Packet Size).
    pub bytes_per_message: NonZeroUsize,
    /// Most messages a second.
    pub replay_rate: NonZeroU32,
    /// First reconnect backoff ceiling.
    pub backoff_min: Duration,
    /// Largest reconnect backoff.
    pub backoff_max: Duration,
    /// With [`RetainUntil::SinkAck`]: first republish when the sink's watermark stalls
    /// behind the broker's acknowledgements.
    pub stall_min: Duration,
    /// Longest wait between such republishes.
    pub stall_max: Duration,
}

/// SQLite `synchronous` level of the buffer (see `reference/reliability.md`, B.6 item 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// `FULL`: durable across power loss on storage that honours fsync (the default).
    Full,
    /// `NORMAL`: faster; the epoch rotates on a new boot so sequences are never reused.
    Normal,
}

/// `[poll]`: timing shared by every device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollConfig {
    /// Limit on opening a link (TCP connect, serial open).
    pub connect_timeout: Duration,
    /// Backoff ceiling after the first failure.
    pub backoff_min: Duration,
    /// Largest backoff ceiling; also how often a misconfigured block is tried again.
    pub backoff_max: Duration,
    /// Silence between frames on an RTU bus, when set; otherwise computed per port by
    /// [`inter_frame_delay`] (0 for `rtu_tcp`, whose serial server keeps the bus timing).
    pub inter_frame_delay: Option<Duration>,
}

/// One device to poll.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Unique name, a valid topic level; readings carry it.
    pub name: Arc<str>,
    /// The validated profile.
    pub profile: Arc<Profile>,
    /// The file the profile was loaded from.
    pub profile_path: PathBuf,
    /// How the device is reached.
    pub transport: Transport,
    /// Modbus unit id.
    pub unit: u8,
    /// Poll interval (whole milliseconds, at least 100 ms).
    pub interval: Duration,
    /// Limit on one request.
    pub timeout: Duration,
}

/// `[kpi]` and the devices' roles: the site model (see [`crate::site`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KpiConfig {
    /// IANA time zone the windows align to; `None` only when no device has a role.
    pub time_zone: Option<String>,
    /// Every role with a source, and its sources (summed).
    pub inputs: BTreeMap<Role, Vec<RoleSource>>,
    /// The KPI groups every required role of which has a source: the ones computed.
    pub groups: Vec<Group>,
    /// Every factor with a value, configured or by default, by name.
    pub factors: BTreeMap<&'static str, Provenanced>,
}

/// A device metric that feeds a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSource {
    /// The device's name.
    pub device: Arc<str>,
    /// The catalogue metric.
    pub metric: &'static str,
}

/// How a device is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Modbus TCP (MBAP framing) to `host:port`; every device has its own connection.
    Tcp {
        /// `host:port` as written.
        addr: String,
    },
    /// Modbus RTU on a local serial port; the devices of one port share it.
    Rtu {
        /// The port, e.g. `/dev/ttyUSB0`.
        path: String,
        /// Its settings (equal for every device of the port).
        serial: SerialSettings,
    },
    /// Modbus RTU frames over TCP to a serial server at `host:port`; the devices behind one
    /// address share its connection.
    RtuTcp {
        /// `host:port` as written.
        addr: String,
    },
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { addr } => write!(f, "tcp {addr}"),
            Self::Rtu { path, serial } => write!(f, "rtu {path} {serial}"),
            Self::RtuTcp { addr } => write!(f, "rtu_tcp {addr}"),
        }
    }
}

/// Serial line settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SerialSettings {
    /// Baud rate (at least 300).
    pub baud: u32,
    /// Parity.
    pub parity: Parity,
    /// Data bits, 5..=8.
    pub data_bits: u8,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
}

impl Default for SerialSettings {
    fn default() -> Self {
        Self {
            baud: 9600,
            parity: Parity::None,
            data_bits: 8,
            stop_bits: 1,
        }
    }
}

impl fmt::Display for SerialSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        write!(f, "{} {}{}{}", self.baud, self.data_bits, p, self.stop_bits)
    }
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parity {
    /// `"N"`.
    None,
    /// `"E"`.
    Even,
    /// `"O"`.
    Odd,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot be read: {source}", .file.display())]
    Read {
        /// The config file.
        file: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown or of the wrong type.
    #[error("{}{}: {message}", .file.display(), env_note(.env))]
    Parse {
        /// The config file.
        file: PathBuf,
        /// The `config` crate's message (which names the key).
        message: String,
        /// The environment overrides that were applied, for the reader to check.
        env: Vec<String>,
    },
    /// The values break rules; one line per problem.
    #[error("{}", problems_text(.file, .problems))]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// Each problem, naming the key or device (without the file name).
        problems: Vec<String>,
    },
}

impl ConfigError {
    /// Every problem as its own line, each starting with the file name.
    #[must_use]
    pub fn lines(&self) -> Vec<String> {
        match self {
            Self::Invalid { file, problems } => problems
                .iter()
                .map(|p| format!("{}: {p}", file.display()))
                .collect(),
            other => vec![other.to_string()],
        }
    }
}

fn env_note(env: &[String]) -> String {
    if env.is_empty() {
        String::new()
    } else {
        format!(" (with {} from the environment)", env.join(", "))
    }
}

fn problems_text(file: &Path, problems: &[String]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {p}", file.display()))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads and validates `path`, with the overrides of the process environment.
    ///
    /// # Errors
    /// The file cannot be read, is not valid TOML, has unknown keys or values of the wrong
    /// type, or breaks a rule (every broken rule is listed).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, env::process_env())
    }

    /// Reads and validates `path` with the given environment instead of the process's.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn load_with_env<I>(path: &Path, env: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(path, &text, env)
    }

    /// Validates config text; `path` names it in messages and relative paths are taken from
    /// its folder.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn from_toml<I>(path: &Path, text: &str, env: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let raw = env::read_raw(path, text, env)?;
        validate::validate(path, raw)
    }
}
