//! Storage: one [`Store`] trait, two implementations ([`sqlite::SqliteStore`] for one machine,
//! [`postgres::PgStore`] for scale-out), and [`AnyStore`] choosing between them by URL.
//!
//! # Invariants (both backends; `store_conformance` tests them on both)
//!
//! - **One transaction per message, or per group of messages.** A batch's readings (or a KPI
//!   batch's records) and its ledger rows are written in one transaction, and the stream's
//!   watermark is recomputed in it; [`Store::store_batches`] may put several batches in one
//!   transaction (all or none commit). The caller acknowledges MQTT only after [`Store`]
//!   returns `Ok` (G5).
//! - **Per-stream serialisation.** Every transaction first locks its stream's row in
//!   `streams` (an upsert), so concurrent sinks writing one stream to PostgreSQL see each
//!   other's commits before planning (SQLite serialises all writers with `BEGIN IMMEDIATE`).
//! - **Exactly once.** The [`ledger`] decides per sequence: new sequences are stored, the same
//!   content again is a duplicate (nothing changes), different content is a conflict (the raw
//!   message goes to `quarantine`, nothing else changes). The ledger is its own small table,
//!   apart from `readings`, so `readings` can be a TimescaleDB hypertable (whose unique
//!   indexes would have to include the time column).
//! - **Watermark.** `streams.watermark` is the highest sequence with every sequence below it
//!   in the ledger or a declared gap, recomputed from those tables, never from arrival order,
//!   and never lowered.
//! - **Migrations.** `schema_migrations` records the versions applied; [`open`] applies the
//!   missing ones in order, each in its own transaction, and refuses a database with a version
//!   newer than this build knows.
//!
//! # Tables
//!
//! | table | key | what |
//! |---|---|---|
//! | `streams` | (gateway, epoch) | site, watermark, first and last seen |
//! | `ledger` | (gateway, epoch, first_seq) | stored ranges: last_seq, count, kind, hash, item hashes |
//! | `readings` | none (indexes below) | one row per reading, `ts` in UTC ms |
//! | `kpi_records` | none (index on gateway, epoch, seq) | one row per KPI record |
//! | `gaps` | (gateway, epoch, first_seq, count) | declared gaps |
//! | `dead_letters` | id | refused messages: raw bytes, topic, reason, detail |
//! | `quarantine` | id | conflicting duplicates: raw bytes and what conflicted |
//! | `gateways` | gateway | last status: online/offline, last seen, version, buffer figures |
//!
//! Query indexes: `readings (site, device, metric, ts)` for a site's series and their points,
//! `readings (ts)` for retention, `kpi_records (site, period, window_start)` for scorecards
//! (migration 2). `readings` has no other index: every index costs ingest one more b-tree
//! insertion per reading, so migration 3 dropped `readings (site, metric, ts)` and
//! `readings (gateway, epoch, seq)`, which no query of the API used (dedupe is the ledger's
//! job; [`Store::readings`], for tests and diagnosis, scans).
//!
//! Epochs are stored as their 16-hex-digit text; sequences and timestamps as signed 64-bit
//! integers (the validator refuses sequences above `i64::MAX`).

pub mod ledger;
pub mod postgres;
pub mod sqlite;

use std::future::Future;
use std::sync::Arc;

use fivezero_model::wire::{Batch, Gap, KpiBatch, Quality, Status, StreamAck};

use crate::validate::RejectReason;

/// The most epochs of one gateway listed in its ack watermark (the most recently seen).
pub const MAX_ACK_STREAMS: usize = 16;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage URL cannot be used.
    #[error("storage url {url:?}: {problem}")]
    Url {
        /// The URL as given (a password in it is masked).
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection could be had from the pool.
    #[error("postgres pool: {0}")]
    Pool(String),
    /// The schema cannot be brought to this build's version.
    #[error("schema: {0}")]
    Schema(String),
    /// A stored value is out of range or unreadable.
    #[error("stored data: {0}")]
    Corrupt(String),
    /// The database thread went away.
    #[error("the database worker stopped: {0}")]
    Worker(String),
}

impl StoreError {
    /// Whether retrying later may succeed (the database is busy, restarting or unreachable),
    /// as opposed to a problem an operator must fix.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Sqlite(_) | Self::Postgres(_) | Self::Pool(_) | Self::Worker(_)
        )
    }
}

/// The raw message, kept for the quarantine and dead-letter tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// Topic as received (lossy UTF-8).
    pub topic: String,
    /// Payload bytes as received.
    pub payload: Vec<u8>,
    /// When the sink took it, UTC ms.
    pub received_at: i64,
}

/// A validated batch of readings with its ledger item hashes, computed once by
/// [`HashedBatch::new`] (in the ingest pipeline's preparing stage, before the database
/// transaction, so the database thread only plans and writes).
#[derive(Debug, Clone, PartialEq)]
pub struct HashedBatch {
    batch: Batch,
    item_hashes: Vec<u8>,
    raw: RawMessage,
}

impl HashedBatch {
    /// Hashes every reading of `batch` ([`ledger::reading_hashes`]).
    #[must_use]
    pub fn new(batch: Batch, raw: RawMessage) -> Self {
        let item_hashes = ledger::reading_hashes(&batch.readings);
        Self {
            batch,
            item_hashes,
            raw,
        }
    }

    /// The batch.
    #[must_use]
    pub const fn batch(&self) -> &Batch {
        &self.batch
    }

    /// The raw message it came in.
    #[must_use]
    pub const fn raw(&self) -> &RawMessage {
        &self.raw
    }

    /// [`ITEM_HASH_LEN`](ledger::ITEM_HASH_LEN) bytes per reading, in sequence order.
    #[must_use]
    pub fn item_hashes(&self) -> &[u8] {
        &self.item_hashes
    }
}

/// What happened to a batch, KPI batch or gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `items` new sequences were stored; `duplicates` were already stored, identical.
    Stored {
        /// New sequences stored.
        items: u64,
        /// Sequences met again with the same content.
        duplicates: u64,
    },
    /// Everything was already stored, identical; nothing changed.
    Duplicate {
        /// Sequences in the message.
        items: u64,
    },
    /// The content differs from what is stored; the raw message is quarantined.
    Conflict {
        /// What differs.
        detail: String,
    },
}

/// The result of one committed transaction: what happened and the gateway's watermarks
/// after it, ready for the retained ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// What happened.
    pub outcome: Outcome,
    /// One watermark per epoch of the gateway (the [`MAX_ACK_STREAMS`] most recently seen).
    pub acks: Vec<StreamAck>,
}

/// One stream as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Site id.
    pub site: String,
    /// Gateway id.
    pub gateway: String,
    /// Epoch, 16 hex digits.
    pub epoch: String,
    /// Highest sequence stored with no hole below it (gaps count as covered).
    pub watermark: u64,
    /// Readings stored.
    pub readings: u64,
    /// KPI records stored.
    pub kpis: u64,
    /// Sequences declared as gaps.
    pub gap_seqs: u64,
    /// When the stream was first seen, UTC ms.
    pub first_seen: i64,
    /// When it was last written, UTC ms.
    pub last_seen: i64,
}

/// A gateway's last known status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayInfo {
    /// Gateway id.
    pub gateway: String,
    /// Site id.
    pub site: String,
    /// `online` or `offline`.
    pub state: String,
    /// When the sink received the last status, UTC ms.
    pub last_seen: i64,
    /// Gateway software version.
    pub version: String,
    /// Current epoch, when the status said.
    pub epoch: Option<String>,
    /// Sequences committed at the gateway but not yet confirmed by the sink's watermark,
    /// as the gateway last reported.
    pub backlog: Option<u64>,
    /// The sink's watermark for that epoch, now.
    pub watermark: Option<u64>,
}

/// One stored reading.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReading {
    /// Gateway id.
    pub gateway: String,
    /// Epoch, 16 hex digits.
    pub epoch: String,
    /// Sequence number.
    pub seq: u64,
    /// The reading as received.
    pub reading: fivezero_model::wire::Reading,
}

/// Which readings to list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadingsQuery {
    /// Only this site.
    pub site: Option<String>,
    /// Only this gateway.
    pub gateway: Option<String>,
    /// Only this device.
    pub device: Option<String>,
    /// Only this metric.
    pub metric: Option<String>,
    /// From this time, UTC ms inclusive.
    pub from: Option<i64>,
    /// Before this time, UTC ms exclusive.
    pub to: Option<i64>,
    /// At most this many rows (ordered by time, then gateway, epoch and sequence).
    pub limit: u32,
}

/// One stored KPI record.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKpi {
    /// Site id.
    pub site: String,
    /// Gateway id.
    pub gateway: String,
    /// Sequence number.
    pub seq: u64,
    /// The record as received.
    pub record: fivezero_model::wire::KpiRecord,
}

/// One stored gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredGap {
    /// Gateway id.
    pub gateway: String,
    /// Epoch, 16 hex digits.
    pub epoch: String,
    /// First sequence.
    pub first_seq: u64,
    /// Number of sequences.
    pub count: u64,
    /// Why (`buffer_full`, `max_age`, `disk_full`).
    pub reason: String,
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Row id.
    pub id: i64,
    /// When, UTC ms.
    pub received_at: i64,
    /// Topic.
    pub topic: String,
    /// Raw payload.
    pub payload: Vec<u8>,
    /// Reason label ([`RejectReason::as_str`]).
    pub reason: String,
    /// Detail.
    pub detail: String,
}

/// One quarantined message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Row id.
    pub id: i64,
    /// Gateway id.
    pub gateway: String,
    /// Epoch.
    pub epoch: String,
    /// First sequence.
    pub first_seq: u64,
    /// Count.
    pub count: u64,
    /// Raw payload.
    pub payload: Vec<u8>,
    /// What conflicted.
    pub detail: String,
}

/// One series of a site: a device's metric, with the span of its readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesInfo {
    /// Device name.
    pub device: String,
    /// Metric id.
    pub metric: String,
    /// Readings stored.
    pub readings: u64,
    /// First reading, UTC ms.
    pub first_ts: i64,
    /// Last reading, UTC ms.
    pub last_ts: i64,
}

/// The readings of one series in a time range, for the query API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesQuery {
    /// Site id.
    pub site: String,
    /// Device name.
    pub device: String,
    /// Metric id.
    pub metric: String,
    /// From, UTC ms inclusive.
    pub from: i64,
    /// To, UTC ms exclusive.
    pub to: i64,
    /// At most this many points (in time order).
    pub limit: u32,
}

/// One stored point of a series: time, numeric value (`None` for text or missing values),
/// and whether its quality was `error`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// UTC ms.
    pub ts: i64,
    /// The numeric value.
    pub value: Option<f64>,
    /// The reading's quality was `error`.
    pub error: bool,
}

/// KPI records of a site whose windows lie inside a time range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KpiQuery {
    /// Site id.
    pub site: String,
    /// Window length of the records.
    pub period: fivezero_model::wire::Period,
    /// Windows starting at or after this, UTC ms.
    pub from: i64,
    /// Windows ending at or before this, UTC ms.
    pub to: i64,
    /// At most this many records (ordered by window start, then gateway, epoch and sequence).
    pub limit: u32,
}

/// A sequence range stored or declared as a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    /// First sequence.
    pub first: u64,
    /// Last sequence (inclusive).
    pub last: u64,
    /// A declared gap rather than stored data.
    pub gap: bool,
}

/// What a retention pass deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retained {
    /// Readings deleted.
    pub readings: u64,
    /// KPI records deleted.
    pub kpis: u64,
}

/// The storage the sink needs: writes for ingest, reads for tests and the query API.
///
/// Every write is one transaction; `Ok` means committed.
pub trait Store: Send + Sync + 'static {
    /// Stores a validated batch of readings (see the [module documentation](self)): hashes
    /// it ([`HashedBatch::new`]) and stores it as a group of one.
    fn store_batch(
        &self,
        batch: Batch,
        raw: RawMessage,
    ) -> impl Future<Output = Result<Commit, StoreError>> + Send {
        async move {
            let hashed = Arc::new(HashedBatch::new(batch, raw));
            let mut commits = self.store_batches(vec![hashed]).await?;
            commits
                .pop()
                .ok_or_else(|| StoreError::Worker("no commit for the batch".to_owned()))
        }
    }

    /// Stores validated batches of readings in one transaction, each with the outcome it
    /// would have alone, returning their commits in order: one commit (one fsync) for the
    /// lot. `Ok` means every one committed, `Err` that none did, so the caller may retry them
    /// (a batch stored again is a duplicate and changes nothing). The batches come hashed and
    /// shared, so the caller keeps them for a retry and the hashing is done before the
    /// database is busy.
    fn store_batches(
        &self,
        batches: Vec<Arc<HashedBatch>>,
    ) -> impl Future<Output = Result<Vec<Commit>, StoreError>> + Send;

    /// Stores a validated batch of KPI records.
    fn store_kpis(
        &self,
        kpis: KpiBatch,
        raw: RawMessage,
    ) -> impl Future<Output = Result<Commit, StoreError>> + Send;

    /// Stores a validated gap notice; a notice already stored is a duplicate.
    fn store_gap(
        &self,
        gap: Gap,
        received_at: i64,
    ) -> impl Future<Output = Result<Commit, StoreError>> + Send;

    /// Records a gateway's status.
    fn store_status(
        &self,
        status: Status,
        received_at: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Keeps a refused message.
    fn dead_letter(
        &self,
        raw: RawMessage,
        reason: RejectReason,
        detail: String,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The gateway's watermarks (the [`MAX_ACK_STREAMS`] most recently seen epochs).
    fn watermarks(
        &self,
        gateway: String,
    ) -> impl Future<Output = Result<Vec<StreamAck>, StoreError>> + Send;

    /// Every stream, ordered by gateway and epoch.
    fn streams(&self) -> impl Future<Output = Result<Vec<StreamInfo>, StoreError>> + Send;

    /// Every gateway's last status, ordered by site and gateway.
    fn gateways(&self) -> impl Future<Output = Result<Vec<GatewayInfo>, StoreError>> + Send;

    /// Readings matching a query.
    fn readings(
        &self,
        query: ReadingsQuery,
    ) -> impl Future<Output = Result<Vec<StoredReading>, StoreError>> + Send;

    /// KPI records of a gateway, in sequence order.
    fn kpi_records(
        &self,
        gateway: String,
    ) -> impl Future<Output = Result<Vec<StoredKpi>, StoreError>> + Send;

    /// Gaps of a gateway, in sequence order.
    fn gaps(
        &self,
        gateway: String,
    ) -> impl Future<Output = Result<Vec<StoredGap>, StoreError>> + Send;

    /// The latest dead letters, newest first.
    fn dead_letters(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, StoreError>> + Send;

    /// The latest quarantined messages, newest first.
    fn quarantined(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Quarantined>, StoreError>> + Send;

    /// The schema version the database is at.
    fn schema_version(&self) -> impl Future<Output = Result<u32, StoreError>> + Send;

    /// Every site that has a stream or a gateway status, sorted.
    fn sites(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Every (device, metric) series of a site, sorted.
    fn site_series(
        &self,
        site: String,
    ) -> impl Future<Output = Result<Vec<SeriesInfo>, StoreError>> + Send;

    /// The points of one series in a range, in time order (at most `limit`).
    fn series_points(
        &self,
        query: SeriesQuery,
    ) -> impl Future<Output = Result<Vec<Point>, StoreError>> + Send;

    /// KPI records of a site and period whose windows lie inside a range.
    fn kpis_in_range(
        &self,
        query: KpiQuery,
    ) -> impl Future<Output = Result<Vec<StoredKpi>, StoreError>> + Send;

    /// The latest record of every (KPI, period) of a site.
    fn kpis_latest(
        &self,
        site: String,
    ) -> impl Future<Output = Result<Vec<StoredKpi>, StoreError>> + Send;

    /// The ledger ranges and gaps of a stream ending above `above`, in sequence order
    /// (at most `limit`): what lies past the watermark.
    fn ranges_above(
        &self,
        gateway: String,
        epoch: String,
        above: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<SeqRange>, StoreError>> + Send;

    /// Deletes readings with `ts` before `readings_before` and KPI records whose window ended
    /// before `kpis_before` (`None` keeps the table). The ledger is kept, so a late
    /// redelivery of deleted data stays a duplicate.
    fn apply_retention(
        &self,
        readings_before: Option<i64>,
        kpis_before: Option<i64>,
    ) -> impl Future<Output = Result<Retained, StoreError>> + Send;
}

/// Either backend, chosen by URL.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// `sqlite:///path` or `sqlite://relative/path`.
    Sqlite(sqlite::SqliteStore),
    /// `postgres://…` or `postgresql://…`.
    Postgres(postgres::PgStore),
}

/// What a storage URL names, checked without opening anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// A SQLite file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL connection string.
    Postgres(String),
}

impl StorageUrl {
    /// Parses `sqlite:///abs/path`, `sqlite://relative/path` (relative to the working
    /// directory) or `postgres://…` / `postgresql://…`.
    ///
    /// # Errors
    /// Any other scheme, or an empty path.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let problem = |p: &str| StoreError::Url {
            url: mask_password(url),
            problem: p.to_owned(),
        };
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(problem(
                    "names no file: use sqlite:///abs/path or sqlite://file.db",
                ));
            }
            return Ok(Self::Sqlite(path.into()));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            url.parse::<tokio_postgres::Config>()
                .map_err(|e| problem(&e.to_string()))?;
            return Ok(Self::Postgres(url.to_owned()));
        }
        Err(problem(
            "must start with sqlite:// or postgres:// (postgresql://)",
        ))
    }
}

/// The URL with any password replaced by `***`, for messages and logs.
#[must_use]
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Opens the store a URL names and brings its schema up to date.
///
/// # Errors
/// A bad URL, a database that cannot be opened or reached, or a failed migration.
pub async fn open(url: &str) -> Result<AnyStore, StoreError> {
    match StorageUrl::parse(url)? {
        StorageUrl::Sqlite(path) => Ok(AnyStore::Sqlite(sqlite::SqliteStore::open(&path).await?)),
        StorageUrl::Postgres(url) => Ok(AnyStore::Postgres(
            postgres::PgStore::open(&url, None).await?,
        )),
    }
}

macro_rules! delegate {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {
        match $self {
            AnyStore::Sqlite(s) => s.$method($($arg),*).await,
            AnyStore::Postgres(s) => s.$method($($arg),*).await,
        }
    };
}

impl Store for AnyStore {
    async fn store_batch(&self, batch: Batch, raw: RawMessage) -> Result<Commit, StoreError> {
        delegate!(self, store_batch(batch, raw))
    }
    async fn store_batches(
        &self,
        batches: Vec<Arc<HashedBatch>>,
    ) -> Result<Vec<Commit>, StoreError> {
        delegate!(self, store_batches(batches))
    }
    async fn store_kpis(&self, kpis: KpiBatch, raw: RawMessage) -> Result<Commit, StoreError> {
        delegate!(self, store_kpis(kpis, raw))
    }
    async fn store_gap(&self, gap: Gap, received_at: i64) -> Result<Commit, StoreError> {
        delegate!(self, store_gap(gap, received_at))
    }
    async fn store_status(&self, status: Status, received_at: i64) -> Result<(), StoreError> {
        delegate!(self, store_status(status, received_at))
    }
    async fn dead_letter(
        &self,
        raw: RawMessage,
        reason: RejectReason,
        detail: String,
    ) -> Result<(), StoreError> {
        delegate!(self, dead_letter(raw, reason, detail))
    }
    async fn watermarks(&self, gateway: String) -> Result<Vec<StreamAck>, StoreError> {
        delegate!(self, watermarks(gateway))
    }
    async fn streams(&self) -> Result<Vec<StreamInfo>, StoreError> {
        delegate!(self, streams())
    }
    async fn gateways(&self) -> Result<Vec<GatewayInfo>, StoreError> {
        delegate!(self, gateways())
    }
    async fn readings(&self, query: ReadingsQuery) -> Result<Vec<StoredReading>, StoreError> {
        delegate!(self, readings(query))
    }
    async fn kpi_records(&self, gateway: String) -> Result<Vec<StoredKpi>, StoreError> {
        delegate!(self, kpi_records(gateway))
    }
    async fn gaps(&self, gateway: String) -> Result<Vec<StoredGap>, StoreError> {
        delegate!(self, gaps(gateway))
    }
    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        delegate!(self, dead_letters(limit))
    }
    async fn quarantined(&self, limit: u32) -> Result<Vec<Quarantined>, StoreError> {
        delegate!(self, quarantined(limit))
    }
    async fn schema_version(&self) -> Result<u32, StoreError> {
        delegate!(self, schema_version())
    }
    async fn sites(&self) -> Result<Vec<String>, StoreError> {
        delegate!(self, sites())
    }
    async fn site_series(&self, site: String) -> Result<Vec<SeriesInfo>, StoreError> {
        delegate!(self, site_series(site))
    }
    async fn series_points(&self, query: SeriesQuery) -> Result<Vec<Point>, StoreError> {
        delegate!(self, series_points(query))
    }
    async fn kpis_in_range(&self, query: KpiQuery) -> Result<Vec<StoredKpi>, StoreError> {
        delegate!(self, kpis_in_range(query))
    }
    async fn kpis_latest(&self, site: String) -> Result<Vec<StoredKpi>, StoreError> {
        delegate!(self, kpis_latest(site))
    }
    async fn ranges_above(
        &self,
        gateway: String,
        epoch: String,
        above: u64,
        limit: u32,
    ) -> Result<Vec<SeqRange>, StoreError> {
        delegate!(self, ranges_above(gateway, epoch, above, limit))
    }
    async fn apply_retention(
        &self,
        readings_before: Option<i64>,
        kpis_before: Option<i64>,
    ) -> Result<Retained, StoreError> {
        delegate!(self, apply_retention(readings_before, kpis_before))
    }
}

// ------------------------------------------------------------------------------------------
// Helpers shared by both backends
// ------------------------------------------------------------------------------------------

/// `u64` → `i64` for the database; the validator keeps sequences within range.
pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} exceeds i64")))
}

/// `i64` from the database → `u64`.
pub(crate) fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} is negative")))
}

/// JSON text of a small serialisable value (tiers, factors, flags, profiles).
pub(crate) fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// Parses JSON text written by [`json_text`].
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("json column: {e}")))
}

/// The wire name of a serde unit enum value (`good`, `ok`, `15m`, `buffer_full`).
pub(crate) fn enum_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The enum value of a wire name written by [`enum_name`].
pub(crate) fn enum_of<T: serde::de::DeserializeOwned>(name: &str) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|e| StoreError::Corrupt(format!("enum column {name:?}: {e}")))
}

/// The wire name of a reading's quality (`good`, `stale`, `error`): what [`enum_name`]
/// gives, without going through serde for every reading.
pub(crate) const fn quality_name(quality: Quality) -> &'static str {
    match quality {
        Quality::Good => "good",
        Quality::Stale => "stale",
        Quality::Error => "error",
    }
}

/// The sequences a plan stores, in message order, as `(first, last)` index ranges into the
/// message's entries.
pub(crate) fn run_indices(first_seq: u64, runs: &[(u64, u64)]) -> Vec<std::ops::Range<usize>> {
    runs.iter()
        .filter_map(|&(a, b)| {
            let start = usize::try_from(a - first_seq).ok()?;
            let end = usize::try_from(b - first_seq).ok()?.checked_add(1)?;
            Some(start..end)
        })
        .collect()
}

/// The count of sequences in runs.
pub(crate) fn run_len(runs: &[(u64, u64)]) -> u64 {
    runs.iter().map(|(a, b)| b - a + 1).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_urls_name_their_backend() {
        assert_eq!(
            StorageUrl::parse("sqlite:///var/lib/fivezero/sink.db").unwrap(),
            StorageUrl::Sqlite("/var/lib/fivezero/sink.db".into())
        );
        assert_eq!(
            StorageUrl::parse("sqlite://sink.db").unwrap(),
            StorageUrl::Sqlite("sink.db".into())
        );
        assert!(matches!(
            StorageUrl::parse("postgres://u@localhost/db").unwrap(),
            StorageUrl::Postgres(_)
        ));
        assert!(StorageUrl::parse("mysql://x").is_err());
        assert!(StorageUrl::parse("sqlite://").is_err());
    }

    #[test]
    fn quality_names_are_the_wire_names() {
        for q in [Quality::Good, Quality::Stale, Quality::Error] {
            assert_eq!(quality_name(q), enum_name(&q));
        }
    }

    #[test]
    fn a_hashed_batch_carries_the_ledger_hashes_of_its_readings() {
        use fivezero_model::wire::{Epoch, Reading, SCHEMA_VERSION, Value};
        let batch = Batch {
            schema: SCHEMA_VERSION,
            gateway: "gw".into(),
            site: "s".into(),
            epoch: Epoch(1),
            first_seq: 1,
            count: 2,
            readings: (0..2)
                .map(|i| Reading {
                    ts: i,
                    device: "d".into(),
                    metric: "m".into(),
                    value: Some(Value::Number(1.0)),
                    quality: Quality::Good,
                    reason: None,
                })
                .collect(),
        };
        let raw = RawMessage {
            topic: "t".into(),
            payload: Vec::new(),
            received_at: 0,
        };
        let h = HashedBatch::new(batch.clone(), raw);
        assert_eq!(h.item_hashes(), ledger::reading_hashes(&batch.readings));
        assert_eq!(h.item_hashes().len(), 2 * ledger::ITEM_HASH_LEN);
        assert_eq!(h.batch(), &batch);
    }

    #[test]
    fn passwords_are_masked_in_messages() {
        assert_eq!(
            mask_password("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        let e = StorageUrl::parse("mysql://u:secret@h/db").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
