//! The wire envelope: every message the gateway and the sink exchange over MQTT.
//!
//! # Format
//!
//! Every payload is one JSON object whose first field is `"schema": 1` ([`SCHEMA_VERSION`]).
//! The [topic] says which message a payload is, so there is no type tag: a
//! [`Batch`] arrives on `…/batches`, a [`KpiBatch`] on `…/kpi`, a [`Gap`] on `…/gaps`, a
//! [`Status`] on `…/status` and an [`AckWatermark`] on `…/ack`.
//!
//! Decoding is two steps ([`decode_batch`] and friends): a small peek reads only `schema` and
//! refuses any version other than [`SCHEMA_VERSION`] with [`WireError::UnsupportedSchema`], so a
//! newer gateway gets a clear answer instead of a confusing field error; then the typed struct
//! is parsed with `deny_unknown_fields`, so a misspelt or unexpected field is refused rather
//! than silently dropped. A new field therefore means a new schema version. Decoding never
//! panics: serde_json's recursion limit (128 levels) stays on, and its skipping of ignored
//! values in the peek is iterative, so deeply nested input is an error, not a stack overflow.
//!
//! Decoding checks shape only. The sink calls `validate(now_ms)` on every decoded [`Batch`],
//! [`KpiBatch`] and [`Gap`] (and may on [`Status`] and [`AckWatermark`]), which refuses
//! values the types allow but the contract does not, naming the field in [`WireError::Invalid`].
//! [`encode`] does not validate: the gateway validates what it builds before it stores it.
//!
//! # Streams and sequence numbers
//!
//! A *stream* ([`StreamId`]) is a gateway id and an [`Epoch`]. Within a stream, sequence numbers
//! are `u64`, start at 1, are contiguous and are never reused. Readings ([`Batch`]) and KPI
//! records ([`KpiBatch`]) draw from the *same* sequence space: a batch with `first_seq = f` and
//! `count = n` holds sequences `f ..= f + n - 1`, entry *i* having `f + i`. A [`Gap`] consumes no
//! sequence numbers of its own; it declares a range already given to readings or KPI records as
//! evicted. One sequence space means one watermark per stream ([`StreamAck::seq`]) says
//! everything: every sequence at or below it is stored at the sink or covered by a gap.
//!
//! # Numbers in JSON
//!
//! JavaScript consumers read JSON numbers as doubles, exact only up to 2^53. The epoch is a
//! random `u64`, so it travels as a 16-digit hex string. Sequence numbers and byte counts stay
//! numbers: starting at 1 and contiguous, they would take centuries at a million readings a
//! second to reach 2^53. Timestamps are UTC milliseconds since the Unix epoch (`i64`).
//!
//! Floats are written by serde_json in the shortest form that reads back to the same `f64`.
//! Reading them back bit for bit needs serde_json's `float_roundtrip` feature; without it about
//! one value in ten with a full 17-digit mantissa comes back one unit in the last place off.
//! JSON has no NaN or infinity (serde_json refuses them when parsing and writes them as `null`
//! when serialising), so `validate` refuses them in values built in code.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::de::{DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::topic::{self, TopicKind};

/// The schema version this build writes and reads; the first field of every payload.
pub const SCHEMA_VERSION: u32 = 1;

/// The most readings a [`Batch`] (or records a [`KpiBatch`]) may carry.
pub const MAX_BATCH_READINGS: u32 = 10_000;

/// How far a timestamp may be from the validator's clock, either way: ten years of 365.25 days,
/// rounded up to whole days (3 653 days).
///
/// Wide enough for a gateway replaying months of buffered data or running with a wrong clock;
/// narrow enough to catch seconds sent as milliseconds (or the reverse) and garbage.
pub const MAX_TS_SKEW_MS: i64 = 3_653 * 86_400_000;

// ------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------

/// Why a payload was refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Not JSON, truncated, nested too deeply, or not the shape of the expected message
    /// (a missing, mistyped or unknown field). The message includes serde_json's, with line
    /// and column.
    #[error("malformed payload: {0}")]
    Json(serde_json::Error),
    /// The `schema` field names a version this build does not read.
    #[error("unsupported schema version {found}: this build reads version {SCHEMA_VERSION} only")]
    UnsupportedSchema {
        /// The version the payload declared.
        found: u64,
    },
    /// Well-formed, but a field breaks the contract.
    #[error("field `{field}` {problem}")]
    Invalid {
        /// Path of the field, such as `count` or `readings[3].ts`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl WireError {
    /// The field an [`Invalid`](Self::Invalid) error names (`schema` for an unsupported
    /// version), for counters and dead-letter rows.
    #[must_use]
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Json(_) => None,
            Self::UnsupportedSchema { .. } => Some("schema"),
            Self::Invalid { field, .. } => Some(field),
        }
    }
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> WireError {
    WireError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

// ------------------------------------------------------------------------------------------
// Epoch and stream
// ------------------------------------------------------------------------------------------

/// The random id of a stream, made together with the gateway's buffer database and made anew
/// whenever a sequence number could otherwise be reused (a new database, a new boot after an
/// unclean stop under relaxed fsync).
///
/// On the wire it is a string of exactly 16 lowercase hex digits (`"3f9c2a7e5b1d4c08"`), not a
/// JSON number, because numbers above 2^53 lose digits in JavaScript consumers. Only the
/// lowercase form is accepted, so one epoch has one spelling and the sink can key on the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Why a string is not an [`Epoch`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochError {
    /// The string is not 16 bytes long.
    #[error("an epoch is 16 lowercase hex digits, got {len} bytes")]
    WrongLength {
        /// Length in bytes.
        len: usize,
    },
    /// A character is not one of `0-9a-f`.
    #[error("an epoch is 16 lowercase hex digits, got {ch:?} at byte {at}")]
    NotLowercaseHex {
        /// The first offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
}

impl FromStr for Epoch {
    type Err = EpochError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 {
            return Err(EpochError::WrongLength { len: s.len() });
        }
        s.bytes()
            .enumerate()
            .try_fold(0_u64, |acc, (at, byte)| {
                let digit = match byte {
                    b'0'..=b'9' => byte - b'0',
                    b'a'..=b'f' => byte - b'a' + 10,
                    _ => {
                        // Every byte before `at` is ASCII, so `at` is a character boundary.
                        let ch = s[at..]
                            .chars()
                            .next()
                            .unwrap_or(char::REPLACEMENT_CHARACTER);
                        return Err(EpochError::NotLowercaseHex { ch, at });
                    }
                };
                Ok((acc << 4) | u64::from(digit))
            })
            .map(Epoch)
    }
}

impl Serialize for Epoch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Epoch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EpochVisitor;

        impl Visitor<'_> for EpochVisitor {
            type Value = Epoch;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an epoch as a string of 16 lowercase hex digits")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Epoch, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(EpochVisitor)
    }
}

/// One stream: a gateway and an epoch. Sequence numbers, acknowledgements and deduplication
/// are all per stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    /// Gateway id, as in the topic.
    pub gateway: String,
    /// The gateway's current buffer epoch.
    pub epoch: Epoch,
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.gateway, self.epoch)
    }
}

// ------------------------------------------------------------------------------------------
// Readings
// ------------------------------------------------------------------------------------------

/// A reading's value, in the metric's canonical unit.
///
/// Untagged: a JSON number is a [`Number`](Self::Number), a JSON string a
/// [`Text`](Self::Text). A value that is not available is `Option::<Value>::None`, written
/// `null`. A number must be finite ([`Batch::validate`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// Gauges, counters and state codes.
    Number(f64),
    /// `info` metrics such as `device.serial_number`.
    Text(String),
}

impl From<f64> for Value {
    fn from(value: f64) -> Self {
        Self::Number(value)
    }
}

impl From<String> for Value {
    fn from(value: String) -> Self {
        Self::Text(value)
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Self {
        Self::Text(value.to_owned())
    }
}

/// How far a reading can be trusted, written in snake case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// Read from the device in this poll and decoded without complaint. A `null` value with
    /// quality `good` means the device answered but marks the point "not implemented" (a
    /// sentinel such as SunSpec 0x8000, or NaN); `reason` says which.
    Good,
    /// Not fresh (the device answered with an old value, or the last good value is repeated);
    /// `reason` says why.
    Stale,
    /// No usable value (timeout, exception, short reply, disconnected); the value is `null` and
    /// `reason` says why.
    Error,
}

/// One value of one metric of one device at one time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reading {
    /// Poll time, UTC milliseconds since the Unix epoch, assigned at the gateway and stored in
    /// its buffer, so a replay carries the same timestamp.
    pub ts: i64,
    /// Device name from the gateway's configuration (a topic-level-safe name).
    pub device: String,
    /// Metric id from the [catalogue](crate::metric) (a topic-level-safe name).
    pub metric: String,
    /// The value in the metric's canonical unit; `None` (`null`) when not available.
    pub value: Option<Value>,
    /// Good, stale or error.
    pub quality: Quality,
    /// Why the quality is not good; left out of the JSON when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Readings of one stream with contiguous sequence numbers; published on `…/batches`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Always [`SCHEMA_VERSION`]; the first field on the wire.
    pub schema: u32,
    /// Gateway id, equal to the topic's.
    pub gateway: String,
    /// Site id, equal to the topic's.
    pub site: String,
    /// The stream's epoch.
    pub epoch: Epoch,
    /// Sequence number of `readings[0]`; reading *i* has `first_seq + i`.
    pub first_seq: u64,
    /// Number of readings, equal to `readings.len()`; repeated so a truncated or tampered
    /// batch is caught and the sink's ledger needs no parse of the readings.
    pub count: u32,
    /// The readings, in sequence order.
    pub readings: Vec<Reading>,
}

// ------------------------------------------------------------------------------------------
// KPI records
// ------------------------------------------------------------------------------------------

/// The length of a KPI window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Period {
    /// `"15m"`: a quarter hour, 900 000 ms.
    #[serde(rename = "15m")]
    FifteenMinutes,
    /// `"1h"`: an hour, 3 600 000 ms.
    #[serde(rename = "1h")]
    Hour,
    /// `"1d"`: a local calendar day in the window's time zone, 22 to 26 hours long across
    /// daylight-saving changes (Antarctica/Troll shifts by two hours).
    #[serde(rename = "1d")]
    Day,
}

impl Period {
    /// The name used on the wire.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::FifteenMinutes => "15m",
            Self::Hour => "1h",
            Self::Day => "1d",
        }
    }

    /// Shortest and longest window of this period, in milliseconds.
    #[must_use]
    pub const fn length_ms(self) -> (i64, i64) {
        const HOUR: i64 = 3_600_000;
        match self {
            Self::FifteenMinutes => (HOUR / 4, HOUR / 4),
            Self::Hour => (HOUR, HOUR),
            Self::Day => (22 * HOUR, 26 * HOUR),
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A closed KPI window, `start` inclusive and `end` exclusive, aligned in the site's time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// First instant in the window, UTC milliseconds.
    pub start: i64,
    /// First instant after the window, UTC milliseconds.
    pub end: i64,
    /// The window's length: `15m`, `1h` or `1d`.
    pub period: Period,
    /// IANA time zone the window is aligned in, such as `Asia/Shanghai`.
    pub tz: String,
}

/// The quality of one KPI value, written in snake case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KpiQuality {
    /// Every input present and plausible.
    Ok,
    /// Computed, but some input was filled in or estimated (see `coverage` and `flags`).
    Estimated,
    /// Too few samples of a required input; the value is missing, never zero.
    InsufficientData,
    /// The denominator is zero or missing (a ratio at night, with no generation).
    NoDenominator,
    /// A meter feeding the KPI reported a fault.
    MeterFault,
}

/// Where a KPI stands against a tier's threshold, written in snake case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierOutcome {
    /// The threshold is met.
    Achieved,
    /// The threshold is missed.
    NotAchieved,
    /// The data cannot tell.
    InsufficientData,
}

/// A KPI's status against one tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierStatus {
    /// `"A"` (national zero-carbon-park guide values) or `"Z"` (the five-zero claim).
    pub tier: String,
    /// Achieved, not achieved or insufficient data.
    pub status: TierOutcome,
}

/// A coefficient a KPI was computed with, recorded so any value can be traced and recomputed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Factor {
    /// Factor name, such as `grid_emission_factor`.
    pub name: String,
    /// Its value, finite.
    pub value: f64,
    /// Its unit, such as `kgCO2/kWh`.
    pub unit: String,
    /// Publisher, document and year, such as `MEE/NBS 2023 national average`.
    pub source: String,
}

/// One KPI over one closed window.
///
/// The sink recomputes longer ranges by summing `numerator` and `denominator` over windows,
/// never by averaging `value`s. A KPI whose inputs are missing is `null`, never zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KpiRecord {
    /// KPI id, `domain.name`, such as `zero_waste.total_recovery_rate`.
    pub kpi: String,
    /// The window the record covers.
    pub window: Window,
    /// Window sum of the numerator, when the KPI has one.
    pub numerator: Option<f64>,
    /// Window sum of the denominator, when the KPI is a ratio.
    pub denominator: Option<f64>,
    /// The KPI's value; `None` when it cannot be computed. Present whenever `quality` is `ok`
    /// or `estimated`.
    pub value: Option<f64>,
    /// Unit of `value` (`1` for a plain fraction).
    pub unit: String,
    /// Share of expected samples present, `0..=1`.
    pub coverage: f64,
    /// Whether the value can be trusted.
    pub quality: KpiQuality,
    /// Status against each tier the KPI has; empty for reported-only KPIs.
    pub tiers: Vec<TierStatus>,
    /// Coefficients used.
    pub factors: Vec<Factor>,
    /// Version of the formula, raised whenever its definition changes.
    pub formula_version: u32,
    /// Notable events in the window (`meter_reset`, `lhv_above_100`); left out of the JSON
    /// when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

/// KPI records of closed windows; published on `…/kpi` with the same delivery rules as
/// readings, drawing sequence numbers from the same stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KpiBatch {
    /// Always [`SCHEMA_VERSION`]; the first field on the wire.
    pub schema: u32,
    /// Gateway id, equal to the topic's.
    pub gateway: String,
    /// Site id, equal to the topic's.
    pub site: String,
    /// The stream's epoch.
    pub epoch: Epoch,
    /// Sequence number of `records[0]`; record *i* has `first_seq + i`.
    pub first_seq: u64,
    /// Number of records, equal to `records.len()`.
    pub count: u32,
    /// The records, in sequence order.
    pub records: Vec<KpiRecord>,
}

// ------------------------------------------------------------------------------------------
// Gaps
// ------------------------------------------------------------------------------------------

/// Why a range of sequence numbers will never reach the sink, written in snake case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The buffer reached its byte budget and dropped its oldest entries.
    BufferFull,
    /// The entries were older than the buffer's `max_age`.
    MaxAge,
    /// The disk was full, so the entries could not be kept.
    DiskFull,
}

/// A declared gap: sequences `first_seq ..= first_seq + count - 1` of one stream were evicted
/// from the gateway's buffer and will never be sent (again). Published on `…/gaps`; the sink
/// lets its watermark pass over them, and counts as intentional drops only those it does not
/// hold: an evicted row may already have been published and stored (the budget evicts the
/// oldest rows the sink has not yet acknowledged, whether or not they were sent), and a
/// stored reading always wins over a gap that covers it.
///
/// Unlike a batch, a gap's `count` is not capped at [`MAX_BATCH_READINGS`]: one eviction can
/// drop many batches at once, and a gap carries no per-sequence payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gap {
    /// Always [`SCHEMA_VERSION`]; the first field on the wire.
    pub schema: u32,
    /// Gateway id, equal to the topic's.
    pub gateway: String,
    /// Site id, equal to the topic's.
    pub site: String,
    /// The stream's epoch.
    pub epoch: Epoch,
    /// First evicted sequence number.
    pub first_seq: u64,
    /// Number of evicted sequence numbers.
    pub count: u32,
    /// Why they were evicted.
    pub reason: GapReason,
    /// When the gateway declared the gap, UTC milliseconds.
    pub declared_at: i64,
}

// ------------------------------------------------------------------------------------------
// Status and acknowledgement
// ------------------------------------------------------------------------------------------

/// Whether a gateway is connected, written in lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Published retained by the gateway after each connect (birth message).
    Online,
    /// Registered as the last will at connect; published by the broker when the gateway
    /// disappears, or by the gateway itself on a clean shutdown.
    Offline,
}

/// The gateway's buffer as last seen, for dashboards and alarms (reliability G8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferState {
    /// Highest sequence number committed to the buffer.
    pub committed_seq: u64,
    /// Highest sequence number handed to the MQTT client.
    pub published_seq: u64,
    /// Highest sequence number below which every publish has the broker's PUBACK.
    pub broker_acked_seq: u64,
    /// The sink's watermark for the current epoch, as last received on `…/ack`.
    pub sink_acked_seq: u64,
    /// Bytes the buffer takes on disk.
    pub bytes: u64,
    /// Timestamp of the oldest reading the sink has not acknowledged yet; `None` when every
    /// reading is acknowledged.
    pub oldest_unsent_ts: Option<i64>,
}

/// A gateway's presence, retained on `…/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// Always [`SCHEMA_VERSION`]; the first field on the wire.
    pub schema: u32,
    /// Gateway id, equal to the topic's.
    pub gateway: String,
    /// Site id, equal to the topic's.
    pub site: String,
    /// Online (birth) or offline (will).
    pub state: Presence,
    /// When the message was built, UTC milliseconds. For a last will that is the time of the
    /// connect that registered it, not the time the gateway vanished: the sink should use the
    /// time it received the will for that.
    pub ts: i64,
    /// Gateway software version.
    pub version: String,
    /// Current buffer epoch; `None` in the minimal offline will.
    pub epoch: Option<Epoch>,
    /// Names of the device profiles in use; empty in the minimal offline will.
    pub profiles: Vec<String>,
    /// Buffer state; `None` in the minimal offline will.
    pub buffer: Option<BufferState>,
}

impl Status {
    /// The minimal last will: `offline`, no epoch, no profiles, no buffer state. `ts` is the
    /// time of the connect that registers it.
    #[must_use]
    pub fn offline_will(gateway: &str, site: &str, version: &str, ts: i64) -> Self {
        Self {
            schema: SCHEMA_VERSION,
            gateway: gateway.to_owned(),
            site: site.to_owned(),
            state: Presence::Offline,
            ts,
            version: version.to_owned(),
            epoch: None,
            profiles: Vec::new(),
            buffer: None,
        }
    }
}

/// The sink's watermark for one stream of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamAck {
    /// The stream's epoch.
    pub epoch: Epoch,
    /// Highest sequence number stored with no hole below it, counting declared gaps as
    /// covered; 0 when nothing is stored yet.
    pub seq: u64,
}

/// What the sink has stored for one gateway, retained on `…/ack` and written by the sink only
/// after the transactions that store the data commit. The gateway keeps a batch until this
/// watermark passes it: a broker's PUBACK alone is not proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckWatermark {
    /// Always [`SCHEMA_VERSION`]; the first field on the wire.
    pub schema: u32,
    /// Gateway id, equal to the topic's.
    pub gateway: String,
    /// One watermark per epoch the sink has seen from this gateway, each epoch at most once.
    pub streams: Vec<StreamAck>,
    /// When the sink wrote it, UTC milliseconds.
    pub ts: i64,
}

impl AckWatermark {
    /// The watermark of one epoch; `None` when the sink has not seen it.
    #[must_use]
    pub fn seq_for(&self, epoch: Epoch) -> Option<u64> {
        self.streams
            .iter()
            .find(|s| s.epoch == epoch)
            .map(|s| s.seq)
    }
}

// ------------------------------------------------------------------------------------------
// Stream accessors
// ------------------------------------------------------------------------------------------

/// Last sequence of `count` entries from `first`; `None` when `count` is 0 or it overflows.
fn last_seq(first: u64, count: u32) -> Option<u64> {
    first.checked_add(u64::from(count.checked_sub(1)?))
}

macro_rules! stream_accessors {
    ($($ty:ty),*) => {$(
        impl $ty {
            /// The stream this message belongs to.
            #[must_use]
            pub fn stream(&self) -> StreamId {
                StreamId { gateway: self.gateway.clone(), epoch: self.epoch }
            }

            /// The last sequence number covered, `first_seq + count - 1`; `None` when `count`
            /// is 0 or the sum overflows (both refused by `validate`).
            #[must_use]
            pub fn last_seq(&self) -> Option<u64> {
                last_seq(self.first_seq, self.count)
            }
        }
    )*};
}

stream_accessors!(Batch, KpiBatch, Gap);

// ------------------------------------------------------------------------------------------
// Validation
// ------------------------------------------------------------------------------------------

/// Shows at most 64 characters of an untrusted string in an error message.
fn shown(value: &str) -> String {
    match value.char_indices().nth(64) {
        Some((cut, _)) => format!("{:?}…", &value[..cut]),
        None => format!("{value:?}"),
    }
}

/// Gateway, site, device and metric names follow the topic-level rule
/// ([`topic::check_segment`]): non-empty, at most 64 bytes, no `/`, `+`, `#` or control
/// character.
fn check_name(value: &str) -> Result<(), String> {
    topic::check_segment(value).map_err(|err| format!("{} {err}", shown(value)))
}

fn check_non_empty(value: &str) -> Result<(), String> {
    if value.is_empty() {
        Err("is empty".to_owned())
    } else {
        Ok(())
    }
}

fn check_ts(ts: i64, now_ms: i64) -> Result<(), String> {
    if ts.abs_diff(now_ms) > MAX_TS_SKEW_MS.unsigned_abs() {
        Err(format!(
            "{ts} is more than 10 years ({MAX_TS_SKEW_MS} ms) away from now ({now_ms})"
        ))
    } else {
        Ok(())
    }
}

fn check_finite(value: f64) -> Result<(), String> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(format!("is {value}, not a finite number"))
    }
}

fn check_schema(schema: u32) -> Result<(), WireError> {
    if schema == SCHEMA_VERSION {
        Ok(())
    } else {
        Err(invalid(
            "schema",
            format!("is {schema}; this build writes version {SCHEMA_VERSION}"),
        ))
    }
}

fn check_ids(gateway: &str, site: &str) -> Result<(), WireError> {
    check_name(gateway).map_err(|p| invalid("gateway", p))?;
    check_name(site).map_err(|p| invalid("site", p))
}

/// Checks `first_seq` and `count`, and `count` against the number of entries when the message
/// carries them (`entries = Some(("readings", len))`).
fn check_range(
    first_seq: u64,
    count: u32,
    entries: Option<(&str, usize)>,
) -> Result<(), WireError> {
    if count == 0 {
        return Err(invalid(
            "count",
            "is 0; a message covers at least one sequence number",
        ));
    }
    if let Some((list, len)) = entries {
        if count > MAX_BATCH_READINGS {
            return Err(invalid(
                "count",
                format!("is {count}, more than the {MAX_BATCH_READINGS} a batch may carry"),
            ));
        }
        if usize::try_from(count).ok() != Some(len) {
            return Err(invalid(
                "count",
                format!("is {count} but `{list}` holds {len}"),
            ));
        }
    }
    if first_seq == 0 {
        return Err(invalid("first_seq", "is 0; sequence numbers start at 1"));
    }
    if first_seq.checked_add(u64::from(count)).is_none() {
        return Err(invalid(
            "first_seq",
            format!("is {first_seq}; with count {count} the sequence overflows u64"),
        ));
    }
    Ok(())
}

impl Batch {
    /// Checks what the types cannot: `schema` is [`SCHEMA_VERSION`]; `gateway` and `site`, and
    /// each reading's `device` and `metric`, are names (non-empty, at most 64 bytes, no `/`,
    /// `+`, `#` or control character); `0 < count <=` [`MAX_BATCH_READINGS`] and
    /// `count == readings.len()`; `first_seq >= 1` and `first_seq + count` fits in `u64`;
    /// every number is finite; every `ts` is within [`MAX_TS_SKEW_MS`] of `now_ms`.
    ///
    /// # Errors
    ///
    /// The first broken rule, as [`WireError::Invalid`] naming the field (`readings[3].ts`).
    pub fn validate(&self, now_ms: i64) -> Result<(), WireError> {
        check_schema(self.schema)?;
        check_ids(&self.gateway, &self.site)?;
        check_range(
            self.first_seq,
            self.count,
            Some(("readings", self.readings.len())),
        )?;
        for (i, r) in self.readings.iter().enumerate() {
            check_ts(r.ts, now_ms).map_err(|p| invalid(format!("readings[{i}].ts"), p))?;
            check_name(&r.device).map_err(|p| invalid(format!("readings[{i}].device"), p))?;
            check_name(&r.metric).map_err(|p| invalid(format!("readings[{i}].metric"), p))?;
            if let Some(Value::Number(x)) = r.value {
                check_finite(x).map_err(|p| invalid(format!("readings[{i}].value"), p))?;
            }
        }
        Ok(())
    }
}

impl KpiRecord {
    fn validate(&self, now_ms: i64) -> Result<(), (String, String)> {
        fn at(field: &'static str) -> impl Fn(String) -> (String, String) {
            move |problem| (field.to_owned(), problem)
        }
        check_name(&self.kpi).map_err(at("kpi"))?;
        let w = &self.window;
        check_ts(w.start, now_ms).map_err(at("window.start"))?;
        check_ts(w.end, now_ms).map_err(at("window.end"))?;
        let (shortest, longest) = w.period.length_ms();
        // Both within ±10 years of now, so the difference cannot overflow.
        let length = w.end - w.start;
        if length < shortest || length > longest {
            return Err((
                "window.end".to_owned(),
                format!(
                    "is {length} ms after window.start; a {} window lasts {}",
                    w.period,
                    if shortest == longest {
                        format!("{shortest} ms")
                    } else {
                        format!("{shortest} to {longest} ms")
                    }
                ),
            ));
        }
        check_non_empty(&w.tz).map_err(at("window.tz"))?;
        for (name, x) in [
            ("numerator", self.numerator),
            ("denominator", self.denominator),
            ("value", self.value),
        ] {
            if let Some(x) = x {
                check_finite(x).map_err(at(name))?;
            }
        }
        if !(0.0..=1.0).contains(&self.coverage) {
            return Err((
                "coverage".to_owned(),
                format!("is {}, outside 0..=1", self.coverage),
            ));
        }
        if self.value.is_none() && matches!(self.quality, KpiQuality::Ok | KpiQuality::Estimated) {
            return Err((
                "value".to_owned(),
                "is null but quality says the KPI was computed".to_owned(),
            ));
        }
        for (j, tier) in self.tiers.iter().enumerate() {
            check_non_empty(&tier.tier).map_err(|p| (format!("tiers[{j}].tier"), p))?;
        }
        for (j, factor) in self.factors.iter().enumerate() {
            check_non_empty(&factor.name).map_err(|p| (format!("factors[{j}].name"), p))?;
            check_finite(factor.value).map_err(|p| (format!("factors[{j}].value"), p))?;
        }
        for (j, flag) in self.flags.iter().enumerate() {
            check_non_empty(flag).map_err(|p| (format!("flags[{j}]"), p))?;
        }
        Ok(())
    }
}

impl KpiBatch {
    /// Checks the batch rules of [`Batch::validate`] (schema, names, count, sequence range)
    /// and, for every record: `kpi` is a name; `window.start` and `window.end` are within
    /// [`MAX_TS_SKEW_MS`] of `now_ms` and as far apart as the period says (15 min, 1 h, or
    /// 22 to 26 h for a local day); `window.tz` is not empty; numerator, denominator, value
    /// and factor values are finite; `coverage` is within `0..=1`; `value` is present when
    /// `quality` is `ok` or `estimated`; tier names, factor names and flags are not empty.
    ///
    /// # Errors
    ///
    /// The first broken rule, as [`WireError::Invalid`] naming the field
    /// (`records[0].coverage`).
    pub fn validate(&self, now_ms: i64) -> Result<(), WireError> {
        check_schema(self.schema)?;
        check_ids(&self.gateway, &self.site)?;
        check_range(
            self.first_seq,
            self.count,
            Some(("records", self.records.len())),
        )?;
        for (i, record) in self.records.iter().enumerate() {
            record
                .validate(now_ms)
                .map_err(|(field, problem)| invalid(format!("records[{i}].{field}"), problem))?;
        }
        Ok(())
    }
}

impl Gap {
    /// Checks `schema`, `gateway` and `site` as [`Batch::validate`] does; `count > 0`;
    /// `first_seq >= 1` and `first_seq + count` fits in `u64`; `declared_at` is within
    /// [`MAX_TS_SKEW_MS`] of `now_ms`. `count` has no cap beyond `u32`.
    ///
    /// # Errors
    ///
    /// The first broken rule, as [`WireError::Invalid`] naming the field.
    pub fn validate(&self, now_ms: i64) -> Result<(), WireError> {
        check_schema(self.schema)?;
        check_ids(&self.gateway, &self.site)?;
        check_range(self.first_seq, self.count, None)?;
        check_ts(self.declared_at, now_ms).map_err(|p| invalid("declared_at", p))
    }
}

impl Status {
    /// Checks `schema`, `gateway` and `site` as [`Batch::validate`] does, and that `ts` and
    /// `buffer.oldest_unsent_ts` are within [`MAX_TS_SKEW_MS`] of `now_ms`.
    ///
    /// # Errors
    ///
    /// The first broken rule, as [`WireError::Invalid`] naming the field.
    pub fn validate(&self, now_ms: i64) -> Result<(), WireError> {
        check_schema(self.schema)?;
        check_ids(&self.gateway, &self.site)?;
        check_ts(self.ts, now_ms).map_err(|p| invalid("ts", p))?;
        if let Some(ts) = self.buffer.as_ref().and_then(|b| b.oldest_unsent_ts) {
            check_ts(ts, now_ms).map_err(|p| invalid("buffer.oldest_unsent_ts", p))?;
        }
        Ok(())
    }
}

impl AckWatermark {
    /// Checks `schema` and `gateway` as [`Batch::validate`] does, that `ts` is within
    /// [`MAX_TS_SKEW_MS`] of `now_ms`, and that no epoch appears twice in `streams`.
    ///
    /// # Errors
    ///
    /// The first broken rule, as [`WireError::Invalid`] naming the field.
    pub fn validate(&self, now_ms: i64) -> Result<(), WireError> {
        check_schema(self.schema)?;
        check_name(&self.gateway).map_err(|p| invalid("gateway", p))?;
        check_ts(self.ts, now_ms).map_err(|p| invalid("ts", p))?;
        let mut seen = HashMap::with_capacity(self.streams.len());
        for (i, stream) in self.streams.iter().enumerate() {
            if let Some(first) = seen.insert(stream.epoch, i) {
                return Err(invalid(
                    format!("streams[{i}].epoch"),
                    format!("repeats epoch {} of streams[{first}]", stream.epoch),
                ));
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// Encoding and decoding
// ------------------------------------------------------------------------------------------

mod sealed {
    pub trait Sealed {}
}

/// A top-level wire message: one of [`Batch`], [`KpiBatch`], [`Gap`], [`Status`] and
/// [`AckWatermark`]. Sealed: only these five serialise without fail, which is what lets
/// [`encode`] return bytes rather than a `Result`.
pub trait Message: Serialize + DeserializeOwned + sealed::Sealed {
    /// The topic kind this message is published on.
    const KIND: TopicKind;
}

macro_rules! messages {
    ($($ty:ty => $kind:ident),*) => {$(
        impl sealed::Sealed for $ty {}
        impl Message for $ty {
            const KIND: TopicKind = TopicKind::$kind;
        }
    )*};
}

messages!(
    Batch => Batches,
    KpiBatch => Kpi,
    Gap => Gaps,
    Status => Status,
    AckWatermark => Ack
);

/// Compact JSON for a message, fields in declaration order, `schema` first.
///
/// Does not validate: a NaN or infinite number would be written as `null`. Call `validate`
/// first.
#[must_use]
pub fn encode<T: Message>(message: &T) -> Vec<u8> {
    // The five message types hold only strings, numbers, options, sequences, structs and unit
    // enum variants, and write into a Vec: serde_json cannot fail on them (it only fails on
    // non-string map keys, custom serialiser errors and I/O errors).
    serde_json::to_vec(message).expect("wire messages always serialise to JSON")
}

/// The part of every payload read before anything else.
#[derive(Deserialize)]
struct SchemaPeek {
    /// `u64`, not `u32`, so a large version number is reported as unsupported rather than as
    /// a type error.
    schema: u64,
}

fn decode<T: Message>(payload: &[u8]) -> Result<T, WireError> {
    let peek: SchemaPeek = serde_json::from_slice(payload).map_err(WireError::Json)?;
    if peek.schema != u64::from(SCHEMA_VERSION) {
        return Err(WireError::UnsupportedSchema { found: peek.schema });
    }
    serde_json::from_slice(payload).map_err(WireError::Json)
}

/// Decodes a [`Batch`] from a `…/batches` payload: schema check, then strict parse.
///
/// # Errors
///
/// [`WireError::Json`] for anything that is not a well-formed batch, and
/// [`WireError::UnsupportedSchema`] for another schema version. Never panics.
pub fn decode_batch(payload: &[u8]) -> Result<Batch, WireError> {
    decode(payload)
}

/// Decodes a [`KpiBatch`] from a `…/kpi` payload: schema check, then strict parse.
///
/// # Errors
///
/// As [`decode_batch`].
pub fn decode_kpi_batch(payload: &[u8]) -> Result<KpiBatch, WireError> {
    decode(payload)
}

/// Decodes a [`Gap`] from a `…/gaps` payload: schema check, then strict parse.
///
/// # Errors
///
/// As [`decode_batch`].
pub fn decode_gap(payload: &[u8]) -> Result<Gap, WireError> {
    decode(payload)
}

/// Decodes a [`Status`] from a `…/status` payload: schema check, then strict parse.
///
/// # Errors
///
/// As [`decode_batch`].
pub fn decode_status(payload: &[u8]) -> Result<Status, WireError> {
    decode(payload)
}

/// Decodes an [`AckWatermark`] from a `…/ack` payload: schema check, then strict parse.
///
/// # Errors
///
/// As [`decode_batch`].
pub fn decode_ack(payload: &[u8]) -> Result<AckWatermark, WireError> {
    decode(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_is_written_as_sixteen_lowercase_hex_digits() {
        assert_eq!(Epoch(0).to_string(), "0000000000000000");
        assert_eq!(Epoch(0x3f9c_2a7e_5b1d_4c08).to_string(), "3f9c2a7e5b1d4c08");
        assert_eq!(Epoch(u64::MAX).to_string(), "ffffffffffffffff");
    }

    #[test]
    fn every_message_goes_to_its_own_topic_kind() {
        assert_eq!(Batch::KIND, TopicKind::Batches);
        assert_eq!(KpiBatch::KIND, TopicKind::Kpi);
        assert_eq!(Gap::KIND, TopicKind::Gaps);
        assert_eq!(Status::KIND, TopicKind::Status);
        assert_eq!(AckWatermark::KIND, TopicKind::Ack);
    }

    #[test]
    fn last_seq_is_none_for_an_empty_or_overflowing_range() {
        assert_eq!(last_seq(1, 1), Some(1));
        assert_eq!(last_seq(5, 3), Some(7));
        assert_eq!(last_seq(5, 0), None);
        assert_eq!(last_seq(u64::MAX, 1), Some(u64::MAX));
        assert_eq!(last_seq(u64::MAX, 2), None);
    }

    #[test]
    fn long_untrusted_strings_are_cut_in_messages() {
        let long = "x".repeat(1000);
        assert_eq!(shown(&long), format!("\"{}\"…", "x".repeat(64)));
        assert_eq!(shown("gw/1"), "\"gw/1\"");
    }
}
