//! The config file as serde reads it: every key, its default, nothing checked beyond types.
//!
//! Every struct refuses unknown keys (`deny_unknown_fields`), so a misspelt key in the file or
//! in an environment override is an error, never silently ignored. Numbers whose range the
//! validator reports in its own words (`unit`, `data_bits`, `stop_bits`) are read as `i64` so
//! that `unit = 300` reaches [`super::validate`] instead of failing in serde with a message
//! about `u8`.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::publish;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) gateway: RawGateway,
    #[serde(default)]
    pub(crate) mqtt: RawMqtt,
    #[serde(default)]
    pub(crate) buffer: RawBuffer,
    #[serde(default)]
    pub(crate) publish: RawPublish,
    #[serde(default)]
    pub(crate) poll: RawPoll,
    #[serde(default)]
    pub(crate) metrics: RawMetrics,
    #[serde(default, rename = "device")]
    pub(crate) devices: Vec<RawDevice>,
    #[serde(default)]
    pub(crate) kpi: RawKpi,
}

/// `[kpi]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKpi {
    #[serde(default)]
    pub(crate) time_zone: Option<String>,
    #[serde(default)]
    pub(crate) factors: std::collections::BTreeMap<String, RawFactor>,
}

/// One `[kpi.factors.NAME]`: a value with its provenance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFactor {
    pub(crate) value: f64,
    pub(crate) unit: String,
    pub(crate) year: i64,
    pub(crate) publisher: String,
    pub(crate) document: String,
}

/// A device's `role`: one entry or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawRoles {
    One(String),
    Many(Vec<String>),
}

/// `[gateway]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGateway {
    pub(crate) id: String,
    pub(crate) site: String,
    #[serde(default = "default_state_dir")]
    pub(crate) state_dir: PathBuf,
    #[serde(default)]
    pub(crate) profile_dir: Option<PathBuf>,
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub(crate) shutdown_timeout: Duration,
}

const fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    #[serde(default = "default_metrics_listen")]
    pub(crate) listen: String,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            listen: default_metrics_listen(),
        }
    }
}

fn default_metrics_listen() -> String {
    "127.0.0.1:9464".to_owned()
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/fivezero")
}

/// `[mqtt]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMqtt {
    #[serde(default = "default_mqtt_url")]
    pub(crate) url: String,
    #[serde(default = "default_prefix")]
    pub(crate) prefix: String,
    #[serde(default)]
    pub(crate) username: Option<String>,
    #[serde(default)]
    pub(crate) password_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) client_key_file: Option<PathBuf>,
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub(crate) keep_alive: Duration,
    #[serde(default = "default_protocol")]
    pub(crate) protocol: String,
}

impl Default for RawMqtt {
    fn default() -> Self {
        Self {
            url: default_mqtt_url(),
            prefix: default_prefix(),
            username: None,
            password_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            keep_alive: default_keep_alive(),
            protocol: default_protocol(),
        }
    }
}

fn default_mqtt_url() -> String {
    "mqtt://127.0.0.1:1883".to_owned()
}

fn default_prefix() -> String {
    fivezero_model::topic::DEFAULT_PREFIX.to_owned()
}

const fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

fn default_protocol() -> String {
    "5".to_owned()
}

/// `[buffer]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBuffer {
    #[serde(default = "default_max_bytes")]
    pub(crate) max_bytes: ByteSize,
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub(crate) max_age: Duration,
    #[serde(default = "default_synchronous")]
    pub(crate) synchronous: String,
    #[serde(default = "default_retain_until")]
    pub(crate) retain_until: String,
}

impl Default for RawBuffer {
    fn default() -> Self {
        Self {
            max_bytes: default_max_bytes(),
            max_age: default_max_age(),
            synchronous: default_synchronous(),
            retain_until: default_retain_until(),
        }
    }
}

const fn default_max_bytes() -> ByteSize {
    ByteSize::gib(2)
}

const fn default_max_age() -> Duration {
    Duration::from_secs(30 * 86_400)
}

fn default_synchronous() -> String {
    "full".to_owned()
}

fn default_retain_until() -> String {
    "sink_ack".to_owned()
}

/// `[publish]`. Counts are `i64` so that the validator reports a range in its own words.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPublish {
    #[serde(default = "default_window")]
    pub(crate) window: i64,
    #[serde(default = "default_items_per_message")]
    pub(crate) items_per_message: i64,
    #[serde(default = "default_bytes_per_message")]
    pub(crate) bytes_per_message: ByteSize,
    #[serde(default = "default_replay_rate")]
    pub(crate) replay_rate: i64,
    #[serde(default = "default_publish_backoff_min", with = "humantime_serde")]
    pub(crate) backoff_min: Duration,
    #[serde(default = "default_publish_backoff_max", with = "humantime_serde")]
    pub(crate) backoff_max: Duration,
    #[serde(default = "default_stall_min", with = "humantime_serde")]
    pub(crate) stall_min: Duration,
    #[serde(default = "default_stall_max", with = "humantime_serde")]
    pub(crate) stall_max: Duration,
}

impl Default for RawPublish {
    fn default() -> Self {
        Self {
            window: default_window(),
            items_per_message: default_items_per_message(),
            bytes_per_message: default_bytes_per_message(),
            replay_rate: default_replay_rate(),
            backoff_min: default_publish_backoff_min(),
            backoff_max: default_publish_backoff_max(),
            stall_min: default_stall_min(),
            stall_max: default_stall_max(),
        }
    }
}

const fn default_window() -> i64 {
    publish::DEFAULT_WINDOW as i64
}

const fn default_items_per_message() -> i64 {
    publish::DEFAULT_ITEMS_PER_MESSAGE as i64
}

const fn default_bytes_per_message() -> ByteSize {
    ByteSize::b(publish::DEFAULT_BYTES_PER_MESSAGE as u64)
}

const fn default_replay_rate() -> i64 {
    publish::DEFAULT_REPLAY_RATE as i64
}

const fn default_publish_backoff_min() -> Duration {
    Duration::from_millis(500)
}

const fn default_publish_backoff_max() -> Duration {
    Duration::from_secs(30)
}

const fn default_stall_min() -> Duration {
    Duration::from_secs(120)
}

const fn default_stall_max() -> Duration {
    Duration::from_secs(1800)
}

/// `[poll]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPoll {
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub(crate) connect_timeout: Duration,
    #[serde(default = "default_backoff_min", with = "humantime_serde")]
    pub(crate) backoff_min: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub(crate) backoff_max: Duration,
    #[serde(default, with = "humantime_serde")]
    pub(crate) inter_frame_delay: Option<Duration>,
}

impl Default for RawPoll {
    fn default() -> Self {
        Self {
            connect_timeout: default_connect_timeout(),
            backoff_min: default_backoff_min(),
            backoff_max: default_backoff_max(),
            inter_frame_delay: None,
        }
    }
}

const fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}

const fn default_backoff_min() -> Duration {
    Duration::from_secs(1)
}

const fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}

/// One `[[device]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDevice {
    pub(crate) name: String,
    pub(crate) profile: String,
    #[serde(default)]
    pub(crate) profile_dir: Option<PathBuf>,
    #[serde(default)]
    pub(crate) tcp: Option<String>,
    #[serde(default)]
    pub(crate) rtu: Option<String>,
    #[serde(default)]
    pub(crate) rtu_tcp: Option<String>,
    #[serde(default)]
    pub(crate) baud: Option<u32>,
    #[serde(default)]
    pub(crate) parity: Option<String>,
    #[serde(default)]
    pub(crate) data_bits: Option<i64>,
    #[serde(default)]
    pub(crate) stop_bits: Option<i64>,
    pub(crate) unit: i64,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub(crate) interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub(crate) timeout: Duration,
    #[serde(default)]
    pub(crate) role: Option<RawRoles>,
}

const fn default_interval() -> Duration {
    Duration::from_secs(5)
}

const fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
