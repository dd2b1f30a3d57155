//! The SQLite store-and-forward buffer: the source of truth for sequence numbers and
//! acknowledgements, between the poller and the publisher.
//!
//! ```text
//! poller ──append_readings──▶ ┌ Buffer (cheap clone) ┐ ──Command + oneshot──▶ writer thread
//! KPIs   ──append_kpis──────▶ │  async API, Outbox   │   (bounded queue)      ├ State (sans-IO core)
//! publisher ◀─pending/acks──▶ └──────────────────────┘ ◀─watch: committed────  └ rusqlite Connection
//! ```
//!
//! | module | what it does |
//! |---|---|
//! | `state` | the core: sequence allocation, pending window, acknowledgement bookkeeping, eviction decisions, figures. Pure and deterministic |
//! | `ranges` | the range set the core keeps finished sequences in |
//! | `codec` | the compact payload of a row |
//! | `message` | merging rows into wire messages within the publisher's limits |
//! | `store` | schema, migration and statements |
//! | `writer` | the thread that owns the connection and runs the commands |
//!
//! # Files
//!
//! One SQLite database, `<state_dir>/buffer.sqlite`, in WAL mode (so also
//! `buffer.sqlite-wal`), opened with `locking_mode=EXCLUSIVE`: one process writes it, a second
//! gateway on the same folder waits 5 s and fails to open rather than writing alongside. There
//! is no `-shm` file. Temporary data stays in memory (`temp_store=MEMORY`), so a full
//! temporary-file partition cannot fail a query.
//!
//! # Schema (version 1)
//!
//! | table | rows | columns |
//! |---|---|---|
//! | `meta` | key/value | `schema_version`, `epoch` (current, hex), `boot_id`, `clean_shutdown` (0 while running, 1 after [`Buffer::close`]), `synchronous` of the last run, `created_ms` |
//! | `streams` | one per epoch still holding rows or gaps | `id` (local, in creation order; the largest is current), `epoch`, `next_seq`, `sink_seq` (the sink's watermark) |
//! | `rows` | one per append (one poll cycle, or one set of KPI records) | `id`, `stream`, `first_seq`, `last_seq`, `count` (generated), `kind` (0 readings, 1 KPI), `created_ms`, `bytes`, `payload`; unique index `(stream, last_seq)` |
//! | `gaps` | one per declared range | `id`, `stream`, `first_seq`, `count`, `reason` (0 buffer_full, 1 max_age, 2 disk_full), `declared_ms` |
//! | `names` | device, metric and reason strings | `id`, `name` |
//!
//! A row's payload is the compact encoding of `codec`: devices, metrics and reasons as ids
//! in `names`, time as deltas, values in their shortest exact form (a decimal mantissa, an
//! `f32` or an `f64`, whichever reads back bit for bit). A row of 150 inverter-like readings
//! takes about 6.5 bytes of payload and 7.1 bytes of database pages per reading, row overhead
//! and index included (measured with
//! `cargo run --release --example buffer_bench -p fivezero-gateway`).
//!
//! Migrations: `meta.schema_version` is read at open inside the first transaction; a newer
//! version is refused ([`BufferError::NewerSchema`]), an older one is migrated step by step
//! in that transaction. A file that is not a database or is corrupt is moved aside to
//! `buffer.sqlite.corrupt-<ms>` (ERROR logged: its data is lost) and a new one is made, so a
//! damaged file never makes the daemon crash-loop.
//!
//! # Sequence numbers
//!
//! - Sequences belong to a stream (an epoch), start at 1 and are contiguous. Readings and KPI
//!   records draw from the same space; reading *i* of a row has `first_seq + i`.
//! - They are assigned in the `BEGIN IMMEDIATE` transaction that stores the row, from
//!   `streams.next_seq`, which the same transaction advances (G1). A rolled-back transaction
//!   assigns nothing (K2). The in-memory counter moves only after `COMMIT` returns; if a
//!   commit reported as failed did land, the next append sees `streams.next_seq` ahead of
//!   memory and reloads rather than reusing a number.
//! - They are never reused. A new epoch starts (a fresh random `u64`, never 0, never one
//!   already in the file) when a number could otherwise be reused:
//!   - with a new database;
//!   - at open, when the previous run used `synchronous=NORMAL`, did not stop cleanly, and
//!     the boot id (`/proc/sys/kernel/random/boot_id`, injectable through
//!     [`BufferOptions::boot_id`]) differs or cannot be read: an OS crash or power loss may
//!     have lost its last commits, which may have been published (B.6.7);
//!   - when the sink's watermark for the current epoch is above what this buffer committed:
//!     the proof that commits were lost (ERROR logged).
//! - Rows of an older epoch stay and are published with their own epoch
//!   ([`Outgoing::epoch`] may differ from [`Outbox::epoch`]); streams are drained oldest
//!   first.
//!
//! # `synchronous`
//!
//! Under WAL, no process crash (`kill -9`) loses a committed transaction at any level (G3).
//! `FULL` (the default) fsyncs the WAL at every commit, so commits also survive power loss on
//! storage that honours fsync (G4). `NORMAL` fsyncs only at checkpoints: several times faster
//! per commit, but a power loss may lose the commits since the last checkpoint; the epoch
//! rotation above keeps sequence numbers from being reused, and the lost readings are the
//! price. Commits of 150 readings take one fsync each under `FULL`; see the bench for the
//! figures of a given disk.
//!
//! # Acknowledgements
//!
//! - The publisher reads with [`Outbox::pending`]: committed sequences that are not finished,
//!   merged across contiguous rows of one kind into messages within the [`Limits`]; a message
//!   never spans a declared gap, a missing row or a finished sequence. On the backlog
//!   [`Lane`] the oldest stream goes first and `after` is the last sequence the publisher
//!   already holds in flight (0 after a reconnect); when the stream served changes (an old
//!   epoch drained), `after` is ignored; an open live lane's split bounds it. The live lane
//!   reads one stream above its own `after` and leaves the backlog lane's place alone.
//! - [`Outbox::broker_acked`] marks the range finished in memory. With
//!   [`RetainUntil::BrokerAck`] the rows whose every sequence is acknowledged are deleted at
//!   once. With [`RetainUntil::SinkAck`] (the default) rows stay until the sink's watermark
//!   passes them; the broker's acknowledgements are kept in memory only, so after a restart
//!   everything above the watermark is published again (duplicates are expected and
//!   deduplicated by the sink), which also repairs messages a broker lost.
//!   [`Buffer::replay_unconfirmed`] does the same without a restart.
//! - [`Outbox::sink_acked`] stores the watermark (never backwards; unknown epochs ignored) and
//!   deletes the rows and gaps at or below it, in chunks of 4096 rows per transaction so a
//!   large acknowledgement never writes a huge WAL.
//! - An acknowledgement that matches nothing handed out is ignored, never applied elsewhere.
//!
//! # Eviction (G7)
//!
//! Budget: the rows' payload bytes plus 64 bytes per row, and the pages in use
//! (`page_count − freelist_count`) × `page_size`, must each stay within `max_bytes`. Before
//! an append that would exceed it, the append's transaction evicts the oldest reading rows
//! (oldest epoch first), and KPI rows only once no reading row is left, until 3 % below the
//! budget; rows older than `max_age` are evicted by the writer's once-a-second housekeeping.
//! Each evicted run of contiguous rows becomes a `gaps` row (reason `buffer_full` or
//! `max_age`) in the same transaction as the delete (K6), or extends the stream's last gap
//! when that one directly precedes it, has the same reason and was never handed out. Gaps are
//! published by [`Outbox::pending_gaps`] and counted in [`Counters`] as intentional drops.
//! Gap rows are never evicted. The database file never shrinks (no VACUUM): freed pages are
//! reused. The oldest rows go first whether or not they were already published: a row the
//! sink has not acknowledged may have reached it or not, so its gap may cover readings the
//! sink holds, which keep precedence there (see `wire::Gap`).
//!
//! # Full or failing disk
//!
//! When SQLite reports a full, read-only or failing disk (`SQLITE_FULL`, `SQLITE_IOERR`,
//! `SQLITE_READONLY`, `SQLITE_CANTOPEN`, …) an append returns [`AppendError::DiskFull`], its
//! readings counted as `dropped{reason="disk_full"}` (unintentional, ERROR logged at most
//! every 10 s). For the next 10 s appends are dropped without touching the disk; the first one
//! after that probes, and appends resume by themselves once it succeeds. Reading, publishing
//! and deleting acknowledged rows go on meanwhile, and deletions free pages that appends can
//! reuse. Nothing panics and nothing exits.
//!
//! # Crash recovery
//!
//! At open, SQLite replays the WAL; the core is rebuilt from `streams` and the row ranges (a
//! sequence is finished when no row holds it). Nothing committed is lost by a crash at any
//! point (K2–K7): a crash inside an append or eviction rolls it back whole; after `COMMIT` the
//! row is republished; acknowledgements not yet applied are applied again when they come
//! again (the sink's watermark is retained on the broker); a crash during a checkpoint is
//! repaired by the WAL replay. `tests/buffer_crash.rs` kills a child process at random points
//! and checks it.
//!
//! # Figures (G8)
//!
//! [`Buffer::stats`] returns [`Stats`]: committed, published, broker-acknowledged and sink
//! sequences, backlog, rows, bytes, oldest unsent age, hours of headroom at the current
//! append rate, and the [`Counters`] (appended, acknowledged, evicted by reason, dropped by
//! reason) for the daemon to export.

mod codec;
mod message;
mod ranges;
mod state;
mod store;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fivezero_model::topic;
use fivezero_model::wire::{
    BufferState, Epoch, GapReason, KpiBatch, KpiRecord, MAX_BATCH_READINGS, MAX_TS_SKEW_MS,
    SCHEMA_VERSION, Value,
};
use tokio::sync::{Semaphore, oneshot, watch};
use tracing::{error, info, warn};

pub use crate::config::RetainUntil;
use crate::config::{BufferConfig, GatewayConfig, Synchronous};
use crate::outbox::{Lane, Limits, Outbox, OutboxError, Outgoing, OutgoingGap};
use crate::poll::DeviceReadings;

/// The database's file name inside the state folder.
pub const FILE_NAME: &str = "buffer.sqlite";

/// Commands that may wait for the writer at once.
const QUEUE: usize = 64;

/// A source of wall-clock time, UTC milliseconds.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// A source of the current boot id; `None` when it cannot be read.
pub type BootId = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The system clock.
#[must_use]
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    })
}

/// The Linux boot id, `/proc/sys/kernel/random/boot_id`.
#[must_use]
pub fn linux_boot_id() -> BootId {
    Arc::new(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    })
}

/// How to open the buffer.
#[derive(Clone)]
pub struct BufferOptions {
    /// Disk budget in bytes.
    pub max_bytes: u64,
    /// Oldest row kept.
    pub max_age: Duration,
    /// SQLite `synchronous` level.
    pub synchronous: Synchronous,
    /// Gateway id, written into every message.
    pub gateway: String,
    /// Site id, written into every message.
    pub site: String,
    /// When rows may be deleted.
    pub retain_until: RetainUntil,
    /// Reads the current boot id (tests inject one).
    pub boot_id: BootId,
    /// Wall-clock time for `created_ms`, ages and the disk probe (tests inject one).
    pub clock: Clock,
    /// A hard cap on the database in pages (`PRAGMA max_page_count`); past it appends fail as
    /// on a full disk. `None` in production; tests use it to simulate a full disk.
    pub page_limit: Option<u64>,
}

impl fmt::Debug for BufferOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferOptions")
            .field("max_bytes", &self.max_bytes)
            .field("max_age", &self.max_age)
            .field("synchronous", &self.synchronous)
            .field("gateway", &self.gateway)
            .field("site", &self.site)
            .field("retain_until", &self.retain_until)
            .field("page_limit", &self.page_limit)
            .finish_non_exhaustive()
    }
}

impl BufferOptions {
    /// Defaults: 2 GiB, 30 days, `FULL`, `sink_ack`, the Linux boot id, the system clock.
    #[must_use]
    pub fn new(gateway: &str, site: &str) -> Self {
        Self {
            max_bytes: 2 * 1024 * 1024 * 1024,
            max_age: Duration::from_secs(30 * 86_400),
            synchronous: Synchronous::Full,
            gateway: gateway.to_owned(),
            site: site.to_owned(),
            retain_until: RetainUntil::SinkAck,
            boot_id: linux_boot_id(),
            clock: system_clock(),
            page_limit: None,
        }
    }

    /// From the configuration (`retain_until` stays `sink_ack`).
    #[must_use]
    pub fn from_config(gateway: &GatewayConfig, buffer: &BufferConfig) -> Self {
        Self {
            max_bytes: buffer.max_bytes,
            max_age: buffer.max_age,
            synchronous: buffer.synchronous,
            retain_until: buffer.retain_until,
            ..Self::new(&gateway.id, &gateway.site)
        }
    }
}

/// Why the buffer could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// The state folder could not be made.
    #[error("{}: cannot be created: {source}", .path.display())]
    Folder {
        /// The folder.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// SQLite refused to open or set up the database.
    #[error("{}: {message}", .path.display())]
    Database {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The database was written by a newer build.
    #[error("{}: schema version {found} is newer than this build's {supported}; upgrade the gateway", .path.display())]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// The stored version.
        found: i64,
        /// This build's.
        supported: i64,
    },
    /// The gateway or site id is not a valid name.
    #[error("{field} {problem}")]
    Invalid {
        /// `gateway` or `site`.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The writer thread could not be started.
    #[error("cannot start the buffer's writer thread: {0}")]
    Thread(std::io::Error),
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The stream's epoch.
    pub epoch: Epoch,
    /// Sequence number of the first reading or record.
    pub first_seq: u64,
    /// How many.
    pub count: u32,
}

/// Why an append stored nothing. Every variant is an unintentional drop of `dropped`
/// readings or records, already counted in [`Counters`] under [`AppendError::reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The disk is full, read-only or failing (or was less than 10 s ago).
    #[error("buffer disk full or failing, {dropped} dropped: {detail}")]
    DiskFull {
        /// Readings or records dropped.
        dropped: u32,
        /// What SQLite said.
        detail: String,
    },
    /// Another database error.
    #[error("buffer database error, {dropped} dropped: {detail}")]
    Storage {
        /// Readings or records dropped.
        dropped: u32,
        /// What SQLite said.
        detail: String,
    },
    /// The input breaks the wire contract (a name, a non-finite number, a timestamp more
    /// than 10 years off, an empty or oversized batch) and would be refused by the sink.
    #[error("refused, {dropped} dropped: {problem}")]
    Invalid {
        /// Readings or records dropped.
        dropped: u32,
        /// What is wrong.
        problem: String,
    },
    /// The buffer was closed.
    #[error("buffer is closed, {dropped} dropped")]
    Closed {
        /// Readings or records dropped.
        dropped: u32,
    },
}

impl AppendError {
    /// The same error for a part of what was dropped (one cycle of a group).
    #[must_use]
    pub fn with_dropped(&self, n: u32) -> Self {
        match self {
            Self::DiskFull { detail, .. } => Self::DiskFull {
                dropped: n,
                detail: detail.clone(),
            },
            Self::Storage { detail, .. } => Self::Storage {
                dropped: n,
                detail: detail.clone(),
            },
            Self::Invalid { problem, .. } => Self::Invalid {
                dropped: n,
                problem: problem.clone(),
            },
            Self::Closed { .. } => Self::Closed { dropped: n },
        }
    }

    /// Readings or records dropped.
    #[must_use]
    pub fn dropped(&self) -> u32 {
        match self {
            Self::DiskFull { dropped, .. }
            | Self::Storage { dropped, .. }
            | Self::Invalid { dropped, .. }
            | Self::Closed { dropped } => *dropped,
        }
    }

    /// The `reason` label of the drop: `disk_full`, `storage`, `invalid` or `closed`.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::DiskFull { .. } => "disk_full",
            Self::Storage { .. } => "storage",
            Self::Invalid { .. } => "invalid",
            Self::Closed { .. } => "closed",
        }
    }
}

/// Counters since the buffer was opened (reset by a restart, as Prometheus counters are).
/// Sequences are readings or KPI records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Rows committed.
    pub appended_rows: u64,
    /// Readings committed.
    pub appended_readings: u64,
    /// KPI records committed.
    pub appended_kpis: u64,
    /// Sequences newly acknowledged by the broker.
    pub broker_acked: u64,
    /// Sequences the sink's watermark passed.
    pub sink_acked: u64,
    /// Sequences evicted under the byte budget (intentional, `reason="buffer_full"`).
    pub evicted_buffer_full: u64,
    /// Sequences evicted as older than `max_age` (intentional, `reason="max_age"`).
    pub evicted_max_age: u64,
    /// Sequences evicted because the disk was full (intentional, `reason="disk_full"`; not
    /// used yet).
    pub evicted_disk_full: u64,
    /// Gap rows declared (a gap extended by a later eviction counts once).
    pub gaps_declared: u64,
    /// Gap notices the broker acknowledged.
    pub gaps_published: u64,
    /// Readings or records not stored: full or failing disk (unintentional).
    pub dropped_disk_full: u64,
    /// Not stored: another database error (unintentional).
    pub dropped_storage: u64,
    /// Not stored: refused input (unintentional).
    pub dropped_invalid: u64,
    /// Not stored: the buffer was closed (unintentional).
    pub dropped_closed: u64,
}

/// The buffer's figures (G8).
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// The current epoch.
    pub epoch: Epoch,
    /// Highest committed sequence of the current epoch.
    pub committed_seq: u64,
    /// Highest sequence of the current epoch handed to the publisher by `pending`.
    pub published_seq: u64,
    /// Highest sequence of the current epoch below which everything is acknowledged by the
    /// broker or the sink, or evicted.
    pub broker_acked_seq: u64,
    /// The sink's watermark for the current epoch.
    pub sink_acked_seq: u64,
    /// Sequences of every epoch neither acknowledged nor evicted.
    pub backlog: u64,
    /// Sequences held in rows (acknowledged by the broker but not the sink included).
    pub retained_seqs: u64,
    /// Rows held.
    pub rows: u64,
    /// Their payload bytes.
    pub payload_bytes: u64,
    /// Bytes charged against the budget (payload plus 64 per row).
    pub charged_bytes: u64,
    /// Pages in use × page size.
    pub used_bytes: u64,
    /// Database file plus WAL on disk.
    pub file_bytes: u64,
    /// The budget.
    pub max_bytes: u64,
    /// Creation time of the oldest row held (UTC ms).
    pub oldest_unsent_ms: Option<i64>,
    /// Its age.
    pub oldest_unsent_age_ms: Option<i64>,
    /// Average append rate (5 min time constant), bytes per second.
    pub append_bytes_per_s: f64,
    /// Hours until the budget is full at that rate; `None` when nothing is appended.
    pub headroom_hours: Option<f64>,
    /// Appends are failing on a full or failing disk.
    pub disk_failing: bool,
    /// Epochs holding data (1 normally).
    pub epochs: usize,
    /// Entries in the names dictionary.
    pub names: usize,
    /// The counters.
    pub counters: Counters,
}

impl From<&Stats> for BufferState {
    fn from(s: &Stats) -> Self {
        Self {
            committed_seq: s.committed_seq,
            published_seq: s.published_seq,
            broker_acked_seq: s.broker_acked_seq,
            sink_acked_seq: s.sink_acked_seq,
            bytes: s.file_bytes,
            oldest_unsent_ts: s.oldest_unsent_ms,
        }
    }
}

/// What is in the database, for diagnostics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// Every row: epoch, first sequence, count, whether it holds KPI records; in order.
    pub rows: Vec<(Epoch, u64, u64, bool)>,
    /// Every gap row: epoch, first sequence, count, reason.
    pub gaps: Vec<(Epoch, u64, u64, GapReason)>,
}

/// What the writer shares with the handles.
#[derive(Debug)]
pub(crate) struct Shared {
    stats: Mutex<Stats>,
    committed: watch::Sender<u64>,
    dropped_invalid: AtomicU64,
    dropped_closed: AtomicU64,
}

struct Inner {
    tx: std::sync::mpsc::Sender<writer::Envelope>,
    permits: Arc<Semaphore>,
    shared: Arc<Shared>,
    clock: Clock,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

/// The buffer. Cheap to clone; every clone talks to the same writer thread.
#[derive(Debug, Clone)]
pub struct Buffer {
    inner: Arc<Inner>,
}

fn open_store(
    path: &Path,
    options: &BufferOptions,
) -> Result<
    (
        rusqlite::Connection,
        store::Session,
        store::Loaded,
        codec::Names,
    ),
    store::StoreError,
> {
    let mut conn = store::connect(path, options.synchronous, options.page_limit)?;
    let boot = (options.boot_id)();
    let session = store::start(
        &mut conn,
        options.synchronous,
        boot.as_deref(),
        (options.clock)(),
    )?;
    let loaded = store::load(&conn)?;
    let names = store::load_names(&conn)?;
    Ok((conn, session, loaded, names))
}

fn move_aside(path: &Path, now_ms: i64) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let from = PathBuf::from(from);
        if from.exists() {
            let mut to = path.as_os_str().to_owned();
            to.push(format!(".corrupt-{now_ms}{suffix}"));
            if let Err(e) = std::fs::rename(&from, PathBuf::from(to)) {
                warn!(path = %from.display(), error = %e, "Could not move a damaged buffer file aside.");
            }
        }
    }
}

impl Buffer {
    /// Opens (or creates) `<dir>/buffer.sqlite`, recovers from the last run and starts the
    /// writer thread.
    ///
    /// # Errors
    /// The folder cannot be made, SQLite cannot open or set up the file (including a full or
    /// read-only disk at open), the schema is newer than this build's, or the gateway or site
    /// id is not a valid name.
    pub fn open(dir: &Path, options: &BufferOptions) -> Result<Self, BufferError> {
        for (field, value) in [("gateway", &options.gateway), ("site", &options.site)] {
            topic::check_segment(value).map_err(|e| BufferError::Invalid {
                field,
                problem: e.to_string(),
            })?;
        }
        std::fs::create_dir_all(dir).map_err(|source| BufferError::Folder {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let database = |e: store::StoreError| match e {
            store::StoreError::NewerSchema { found } => BufferError::NewerSchema {
                path: path.clone(),
                found,
                supported: store::SCHEMA_VERSION,
            },
            other => BufferError::Database {
                path: path.clone(),
                message: other.to_string(),
            },
        };
        let opened = match open_store(&path, options) {
            Err(e) if e.is_corrupt() => {
                error!(
                    path = %path.display(), error = %e,
                    "The buffer database is damaged; moving it aside and starting a new one. Its unsent readings are lost."
                );
                move_aside(&path, (options.clock)());
                open_store(&path, options)
            }
            other => other,
        };
        let (conn, session, loaded, names) = opened.map_err(database)?;
        let retain = options.retain_until;
        let budget = state::Budget {
            max_bytes: options.max_bytes,
            max_age_ms: i64::try_from(options.max_age.as_millis()).unwrap_or(i64::MAX),
        };
        let state = state::State::new(
            retain,
            budget,
            loaded.current,
            loaded.old,
            loaded.totals,
            loaded.oldest_created_ms,
        );
        let now = (options.clock)();
        let current = state.current();
        if let Some(why) = session.rotated {
            warn!(epoch = %current.epoch, why, "Started a new buffer epoch so no sequence number is reused.");
        }
        info!(
            path = %path.display(),
            epoch = %current.epoch,
            committed = current.committed(),
            rows = state.totals().rows,
            created = session.created,
            "Buffer opened."
        );
        // The file's size as opened, so the figures are true before the writer's first step
        // (`buffer stats` reads them at once).
        let file = store::file_usage(&conn, &path).unwrap_or_default();
        let stats = state.stats(now, file, names.len());
        let shared = Arc::new(Shared {
            committed: watch::Sender::new(current.committed()),
            stats: Mutex::new(stats),
            dropped_invalid: AtomicU64::new(0),
            dropped_closed: AtomicU64::new(0),
        });
        let permits = Arc::new(Semaphore::new(QUEUE));
        let (tx, rx) = std::sync::mpsc::channel();
        let w = writer::Writer {
            conn,
            path,
            state,
            names,
            gateway: options.gateway.clone(),
            site: options.site.clone(),
            clock: Arc::clone(&options.clock),
            shared: Arc::clone(&shared),
            cleanup: true,
            retry: false,
            last_tick_ms: now,
            last_truncate_ms: i64::MIN / 2,
            file,
            damaged: std::collections::HashSet::new(),
        };
        let thread_permits = Arc::clone(&permits);
        std::thread::Builder::new()
            .name("fivezero-buffer".into())
            .spawn(move || w.run(rx, thread_permits))
            .map_err(BufferError::Thread)?;
        Ok(Self {
            inner: Arc::new(Inner {
                tx,
                permits,
                shared,
                clock: Arc::clone(&options.clock),
            }),
        })
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> writer::Command,
    ) -> Result<T, OutboxError> {
        let permit = Arc::clone(&self.inner.permits)
            .acquire_owned()
            .await
            .map_err(|_| OutboxError::Closed)?;
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(writer::Envelope {
                command: make(tx),
                permit,
            })
            .map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)
    }

    fn refused(&self, dropped: u32, problem: String) -> AppendError {
        self.inner
            .shared
            .dropped_invalid
            .fetch_add(u64::from(dropped), Ordering::Relaxed);
        AppendError::Invalid { dropped, problem }
    }

    async fn append(&self, item: writer::Item, count: u32) -> Result<Vec<Appended>, AppendError> {
        match self
            .call(|reply| writer::Command::Append(item, reply))
            .await
        {
            Ok(result) => result,
            Err(_) => {
                self.inner
                    .shared
                    .dropped_closed
                    .fetch_add(u64::from(count), Ordering::Relaxed);
                Err(AppendError::Closed { dropped: count })
            }
        }
    }

    /// Stores one poll cycle as one row, in one transaction, with its sequence numbers.
    ///
    /// # Errors
    /// [`AppendError`]: nothing was stored and the readings are counted as dropped.
    pub async fn append_readings(&self, cycle: &DeviceReadings) -> Result<Appended, AppendError> {
        self.append_cycles(std::slice::from_ref(cycle))
            .await
            .pop()
            .unwrap_or(Err(AppendError::Invalid {
                dropped: 0,
                problem: "no cycle".into(),
            }))
    }

    /// Stores poll cycles, one row each with its sequence numbers, all in one transaction
    /// (one commit, one `fsync` at `synchronous=FULL`, however many cycles arrived together).
    /// Returns one result per cycle, in order: a cycle that breaks the wire contract is
    /// refused alone; a failed transaction drops them all, each counted.
    pub async fn append_cycles(
        &self,
        cycles: &[DeviceReadings],
    ) -> Vec<Result<Appended, AppendError>> {
        let now = (self.clock())();
        let count = |c: &DeviceReadings| u32::try_from(c.readings.len()).unwrap_or(u32::MAX);
        let mut results: Vec<Option<Result<Appended, AppendError>>> = Vec::new();
        let mut valid = Vec::new();
        for c in cycles {
            match check_readings(c, now) {
                Ok(()) => {
                    results.push(None);
                    valid.push(c.clone());
                }
                Err(problem) => results.push(Some(Err(self.refused(count(c), problem)))),
            }
        }
        let counts: Vec<u32> = valid.iter().map(count).collect();
        let total = counts.iter().fold(0u32, |a, &c| a.saturating_add(c));
        let mut outcome = if valid.is_empty() {
            Ok(Vec::new())
        } else {
            self.append(writer::Item::Readings(valid), total).await
        };
        let mut appended = match &mut outcome {
            Ok(a) => std::mem::take(a).into_iter(),
            Err(_) => Vec::new().into_iter(),
        };
        let mut counts = counts.into_iter();
        results
            .into_iter()
            .map(|r| match r {
                Some(refused) => refused,
                None => {
                    let n = counts.next().unwrap_or(0);
                    match &outcome {
                        Ok(_) => appended.next().ok_or(AppendError::Storage {
                            dropped: n,
                            detail: "the writer returned fewer rows than cycles".into(),
                        }),
                        Err(e) => Err(e.with_dropped(n)),
                    }
                }
            })
            .collect()
    }

    /// Stores KPI records as one row, in one transaction, with their sequence numbers, and
    /// with them `engine_state` (the KPI engine's saved state, see [`Buffer::kpi_state`]): the
    /// records of a window and the state that says the window is closed commit together, so
    /// a crash can neither lose a window's records nor publish them twice.
    ///
    /// # Errors
    /// [`AppendError`]: nothing was stored and the records are counted as dropped.
    pub async fn append_kpis(
        &self,
        records: &[KpiRecord],
        engine_state: Option<Vec<u8>>,
    ) -> Result<Appended, AppendError> {
        let count = u32::try_from(records.len()).unwrap_or(u32::MAX);
        if let Err(problem) = check_kpis(records, (self.clock())()) {
            return Err(self.refused(count, problem));
        }
        self.append(writer::Item::Kpis(records.to_vec(), engine_state), count)
            .await?
            .pop()
            .ok_or(AppendError::Storage {
                dropped: count,
                detail: "the writer returned no row".into(),
            })
    }

    /// Stores the KPI engine's state on its own (periodically and at a clean stop).
    ///
    /// # Errors
    /// The buffer is closed or the disk refused the write.
    pub async fn save_kpi_state(&self, bytes: Vec<u8>) -> Result<(), OutboxError> {
        self.call(|reply| writer::Command::SaveKpiState(bytes, reply))
            .await?
    }

    /// The KPI engine's state last stored, with KPI records or on its own.
    ///
    /// # Errors
    /// The buffer is closed or the database cannot be read.
    pub async fn kpi_state(&self) -> Result<Option<Vec<u8>>, OutboxError> {
        self.call(writer::Command::LoadKpiState).await?
    }

    fn clock(&self) -> Clock {
        Arc::clone(&self.inner.clock)
    }

    /// The figures, as of the writer's last step.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.inner
            .shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs the housekeeping now (age eviction, deletion of acknowledged rows) instead of at
    /// the next tick.
    pub async fn maintain(&self) {
        let _ = self.call(writer::Command::Maintain).await;
    }

    /// Every row's and gap's range, for diagnostics.
    ///
    /// # Errors
    /// The database failed or the buffer is closed.
    pub async fn inventory(&self) -> Result<Inventory, OutboxError> {
        let (rows, gaps) = self.call(writer::Command::Inventory).await??;
        Ok(Inventory {
            rows: rows
                .into_iter()
                .map(|(e, f, c, k)| (e, f, c, k == state::Kind::Kpi))
                .collect(),
            gaps,
        })
    }

    /// Marks a clean shutdown, checkpoints the WAL (`TRUNCATE`) and stops the writer; every
    /// clone's later calls fail with [`OutboxError::Closed`].
    pub async fn close(self) {
        let _ = self.call(writer::Command::Close).await;
    }
}

fn check_name(what: &str, value: &str) -> Result<(), String> {
    topic::check_segment(value).map_err(|e| format!("{what} {value:?}: {e}"))
}

fn check_readings(cycle: &DeviceReadings, now_ms: i64) -> Result<(), String> {
    let n = cycle.readings.len();
    if n == 0 {
        return Err("a poll cycle without readings".into());
    }
    if n > MAX_BATCH_READINGS as usize {
        return Err(format!(
            "{n} readings in one cycle, more than {MAX_BATCH_READINGS}"
        ));
    }
    check_name("device", &cycle.device)?;
    for (i, r) in cycle.readings.iter().enumerate() {
        if r.ts.abs_diff(now_ms) > MAX_TS_SKEW_MS.unsigned_abs() {
            return Err(format!(
                "readings[{i}].ts {} is more than 10 years from now",
                r.ts
            ));
        }
        check_name(&format!("readings[{i}].device"), &r.device)?;
        check_name(&format!("readings[{i}].metric"), &r.metric)?;
        if let Some(Value::Number(x)) = r.value
            && !x.is_finite()
        {
            return Err(format!("readings[{i}].value is {x}, not a finite number"));
        }
    }
    Ok(())
}

fn check_kpis(records: &[KpiRecord], now_ms: i64) -> Result<(), String> {
    let count = u32::try_from(records.len()).unwrap_or(u32::MAX);
    let batch = KpiBatch {
        schema: SCHEMA_VERSION,
        gateway: "gateway".into(),
        site: "site".into(),
        epoch: Epoch(1),
        first_seq: 1,
        count,
        records: records.to_vec(),
    };
    batch.validate(now_ms).map_err(|e| e.to_string())
}

impl Outbox for Buffer {
    async fn pending(&self, lane: Lane, limits: Limits) -> Result<Vec<Outgoing>, OutboxError> {
        self.call(|reply| writer::Command::Pending(lane, limits, reply))
            .await?
    }

    async fn broker_acked(
        &self,
        epoch: Epoch,
        first_seq: u64,
        count: u32,
    ) -> Result<(), OutboxError> {
        self.call(|reply| writer::Command::BrokerAcked(epoch, first_seq, count, reply))
            .await?
    }

    async fn replay_unconfirmed(&self) -> Result<(), OutboxError> {
        self.call(writer::Command::Replay).await?
    }

    async fn sink_acked(&self, epoch: Epoch, seq: u64) -> Result<(), OutboxError> {
        self.call(|reply| writer::Command::SinkAcked(epoch, seq, reply))
            .await?
    }

    async fn pending_gaps(&self) -> Result<Vec<OutgoingGap>, OutboxError> {
        self.call(writer::Command::PendingGaps).await?
    }

    async fn gap_published(&self, id: i64) -> Result<(), OutboxError> {
        self.call(|reply| writer::Command::GapPublished(id, reply))
            .await?
    }

    fn epoch(&self) -> Epoch {
        self.stats().epoch
    }

    fn state(&self) -> BufferState {
        BufferState::from(&self.stats())
    }

    fn committed(&self) -> watch::Receiver<u64> {
        self.inner.shared.committed.subscribe()
    }
}
