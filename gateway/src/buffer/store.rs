//! The SQLite side of the buffer: schema, migration, and the statements the writer thread
//! runs. Every function takes the connection and does what the core ([`State`]) decided; none
//! changes the core itself, so the writer can apply a transaction's effects to the core only
//! after it committed.

use std::path::Path;
use std::time::Duration;

use fivezero_model::wire::{self, Epoch, Gap, KpiRecord, Reading, SCHEMA_VERSION as WIRE_SCHEMA};
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};

use super::codec::{self, DecodeError, Names};
use super::message::{Builder, Push};
use super::state::{
    EvictPlan, GapRow, Kind, LoadedStream, RowHead, State, Totals, reason_code, reason_of,
};
use crate::config::Synchronous;
use crate::failpoints::{self, failpoint};
use crate::outbox::{Lane, Limits, Outgoing, OutgoingGap};

/// Version of the schema this build writes; stored in `meta.schema_version`.
pub(crate) const SCHEMA_VERSION: i64 = 1;

/// Rows deleted per transaction when acknowledged rows are cleaned up, so a large
/// acknowledgement never writes a WAL the size of the database.
pub(crate) const DELETE_CHUNK: i64 = 4096;

/// Rows read per query by `pending` and by eviction.
const SCAN_CHUNK: i64 = 256;

/// Gap notices returned by one `pending_gaps`.
const GAPS_PER_CALL: i64 = 1000;

/// The version-1 schema.
const SCHEMA_V1: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value ANY
);
CREATE TABLE streams (
    id         INTEGER PRIMARY KEY,
    epoch      INTEGER NOT NULL UNIQUE,
    next_seq   INTEGER NOT NULL,
    sink_seq   INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
CREATE TABLE names (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE rows (
    id         INTEGER PRIMARY KEY,
    stream     INTEGER NOT NULL,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    count      INTEGER GENERATED ALWAYS AS (last_seq - first_seq + 1) VIRTUAL,
    kind       INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    bytes      INTEGER NOT NULL,
    payload    BLOB NOT NULL
);
CREATE UNIQUE INDEX rows_by_seq ON rows (stream, last_seq);
CREATE TABLE gaps (
    id          INTEGER PRIMARY KEY,
    stream      INTEGER NOT NULL,
    first_seq   INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    reason      INTEGER NOT NULL,
    declared_ms INTEGER NOT NULL
);
CREATE INDEX gaps_by_seq ON gaps (stream, first_seq);
";

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// SQLite failed.
    #[error("{0}")]
    Sql(#[from] rusqlite::Error),
    /// The database does not agree with the core (a commit whose outcome was unsure landed):
    /// reload the core and try again.
    #[error("the database moved on behind the buffer's back; reloading")]
    OutOfStep,
    /// The database was written by a newer build.
    #[error("schema version {found} is newer than this build's {SCHEMA_VERSION}")]
    NewerSchema {
        /// The stored version.
        found: i64,
    },
    /// A value in the database is out of range.
    #[error("stored value out of range: {0}")]
    Range(&'static str),
}

impl StoreError {
    /// Whether it is a full, failing, read-only or vanished disk: appends are dropped as
    /// `disk_full` and probed again later.
    pub(crate) fn is_disk(&self) -> bool {
        matches!(
            self,
            Self::Sql(e) if matches!(
                e.sqlite_error_code(),
                Some(
                    ErrorCode::DiskFull
                        | ErrorCode::SystemIoFailure
                        | ErrorCode::ReadOnly
                        | ErrorCode::CannotOpen
                        | ErrorCode::PermissionDenied
                        | ErrorCode::NoLargeFileSupport
                        | ErrorCode::FileLockingProtocolFailed
                )
            )
        )
    }

    /// Whether the file is not a database or is damaged beyond use.
    pub(crate) fn is_corrupt(&self) -> bool {
        matches!(
            self,
            Self::Sql(e) if matches!(
                e.sqlite_error_code(),
                Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
            )
        )
    }
}

type Result<T> = std::result::Result<T, StoreError>;

fn i64_of(v: u64, what: &'static str) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::Range(what))
}

fn u64_of(v: i64, what: &'static str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::Range(what))
}

/// Epochs are stored as the `i64` with the same bits.
pub(crate) fn epoch_to_sql(e: Epoch) -> i64 {
    i64::from_ne_bytes(e.0.to_ne_bytes())
}

fn epoch_of_sql(v: i64) -> Epoch {
    Epoch(u64::from_ne_bytes(v.to_ne_bytes()))
}

// ------------------------------------------------------------------------------------------
// Opening
// ------------------------------------------------------------------------------------------

/// Opens the database file with the buffer's settings: one exclusive writer (a second
/// process waits and fails rather than writing alongside), WAL, the chosen `synchronous`,
/// temporary data in memory, the WAL cut back to 64 MiB after checkpoints.
pub(crate) fn connect(
    path: &Path,
    sync: Synchronous,
    page_limit: Option<u64>,
) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Sql(rusqlite::Error::InvalidParameterName(
            format!("journal_mode is {mode}, WAL was refused"),
        )));
    }
    let level = match sync {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", level)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    if let Some(pages) = page_limit {
        let pages = i64_of(pages, "page_limit")?;
        let _: i64 = conn.pragma_update_and_check(None, "max_page_count", pages, |r| r.get(0))?;
    }
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// The `meta` key of the KPI engine's state.
const KPI_STATE: &str = "kpi_state";

/// Stores the KPI engine's state in its own transaction.
pub(crate) fn save_kpi_state(conn: &mut Connection, bytes: &[u8]) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    meta_set(&tx, KPI_STATE, bytes)?;
    tx.commit()?;
    Ok(())
}

/// The KPI engine's state last stored, if any.
pub(crate) fn load_kpi_state(conn: &mut Connection) -> Result<Option<Vec<u8>>> {
    let tx = conn.transaction()?;
    let v = meta_get(&tx, KPI_STATE)?;
    tx.commit()?;
    Ok(v)
}

fn meta_get<T: rusqlite::types::FromSql>(tx: &Transaction<'_>, key: &str) -> Result<Option<T>> {
    Ok(tx
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

fn meta_set(tx: &Transaction<'_>, key: &str, value: impl rusqlite::ToSql) -> Result<()> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// What opening decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    /// The database was created now.
    pub(crate) created: bool,
    /// A new epoch was started, and why.
    pub(crate) rotated: Option<&'static str>,
}

/// Creates or migrates the schema and starts this run: decides whether a new epoch is due,
/// marks the stop as unclean until [`mark_clean`], stores the boot id and `synchronous`.
/// One transaction.
pub(crate) fn start(
    conn: &mut Connection,
    sync: Synchronous,
    boot_id: Option<&str>,
    now_ms: i64,
) -> Result<Session> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let exists: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
        [],
        |r| r.get(0),
    )?;
    let created = !exists;
    if created {
        tx.execute_batch(SCHEMA_V1)?;
        meta_set(&tx, "schema_version", SCHEMA_VERSION)?;
        meta_set(&tx, "created_ms", now_ms)?;
    }
    let version: i64 = meta_get(&tx, "schema_version")?.unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema { found: version });
    }
    // Migrations from older versions go here, one step per version, in this transaction.
    // Version 1 is the first.
    let previous_normal = meta_get::<String>(&tx, "synchronous")?.as_deref() == Some("normal");
    let clean = meta_get::<i64>(&tx, "clean_shutdown")?.unwrap_or(0) == 1;
    let stored_boot: Option<String> = meta_get(&tx, "boot_id")?;
    let has_stream: bool =
        tx.query_row("SELECT EXISTS (SELECT 1 FROM streams)", [], |r| r.get(0))?;
    let rotated = if has_stream {
        super::state::rotation_reason(
            created,
            previous_normal,
            clean,
            stored_boot.as_deref(),
            boot_id,
        )
    } else {
        None
    };
    if !has_stream || rotated.is_some() {
        new_stream(&tx, now_ms)?;
    }
    meta_set(&tx, "clean_shutdown", 0)?;
    meta_set(&tx, "boot_id", boot_id.unwrap_or(""))?;
    meta_set(
        &tx,
        "synchronous",
        match sync {
            Synchronous::Full => "full",
            Synchronous::Normal => "normal",
        },
    )?;
    tx.commit()?;
    Ok(Session { created, rotated })
}

/// Adds a stream with a fresh random epoch and makes it current; returns its id and epoch.
pub(crate) fn new_stream(tx: &Transaction<'_>, now_ms: i64) -> Result<(i64, Epoch)> {
    let epoch = loop {
        let candidate = Epoch(rand::random::<u64>());
        let taken: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM streams WHERE epoch = ?1)",
            [epoch_to_sql(candidate)],
            |r| r.get(0),
        )?;
        if !taken && candidate.0 != 0 {
            break candidate;
        }
    };
    tx.execute(
        "INSERT INTO streams (epoch, next_seq, sink_seq, created_ms) VALUES (?1, 1, 0, ?2)",
        params![epoch_to_sql(epoch), now_ms],
    )?;
    let id = tx.last_insert_rowid();
    meta_set(tx, "epoch", epoch.to_string())?;
    Ok((id, epoch))
}

/// Marks a clean stop (the last write of a run).
pub(crate) fn mark_clean(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    meta_set(&tx, "clean_shutdown", 1)?;
    tx.commit()?;
    Ok(())
}

/// `PRAGMA wal_checkpoint(TRUNCATE)`: copies the WAL into the database and empties it.
pub(crate) fn checkpoint_truncate(conn: &Connection) -> Result<()> {
    failpoint!(failpoints::K7_CHECKPOINT);
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// Everything the core needs from the database.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    /// The current stream.
    pub(crate) current: LoadedStream,
    /// Older streams, oldest first.
    pub(crate) old: Vec<LoadedStream>,
    /// Rows present.
    pub(crate) totals: Totals,
    /// Creation time of the oldest row.
    pub(crate) oldest_created_ms: Option<i64>,
}

/// Reads the streams and the row ranges (headers only, merged where contiguous).
pub(crate) fn load(conn: &Connection) -> Result<Loaded> {
    let mut streams: Vec<LoadedStream> = Vec::new();
    {
        let mut stmt =
            conn.prepare("SELECT id, epoch, next_seq, sink_seq FROM streams ORDER BY id")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            streams.push(LoadedStream {
                id: r.get(0)?,
                epoch: epoch_of_sql(r.get(1)?),
                next_seq: u64_of(r.get(2)?, "next_seq")?,
                sink_seq: u64_of(r.get(3)?, "sink_seq")?,
                live: Vec::new(),
            });
        }
    }
    {
        let mut stmt =
            conn.prepare("SELECT stream, first_seq, last_seq FROM rows ORDER BY stream, last_seq")?;
        let mut rows = stmt.query([])?;
        let mut at = 0;
        while let Some(r) = rows.next()? {
            let stream: i64 = r.get(0)?;
            let (first, last) = seq_range(r.get(1)?, r.get(2)?)?;
            while streams.get(at).is_some_and(|s| s.id < stream) {
                at += 1;
            }
            let Some(s) = streams.get_mut(at).filter(|s| s.id == stream) else {
                return Err(StoreError::Range("row of an unknown stream"));
            };
            match s.live.last_mut() {
                Some(l) if l.1.checked_add(1) == Some(first) => l.1 = last,
                _ => s.live.push((first, last)),
            }
        }
    }
    let totals = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(last_seq - first_seq + 1), 0), COALESCE(SUM(bytes), 0)
         FROM rows",
        [],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        },
    )?;
    let totals = Totals {
        rows: u64_of(totals.0, "rows")?,
        seqs: u64_of(totals.1, "seqs")?,
        payload_bytes: u64_of(totals.2, "bytes")?,
    };
    let current = streams
        .pop()
        .ok_or(StoreError::Range("the database has no stream"))?;
    Ok(Loaded {
        current,
        old: streams,
        totals,
        oldest_created_ms: oldest(conn)?,
    })
}

/// The names dictionary.
pub(crate) fn load_names(conn: &Connection) -> Result<Names> {
    let mut names = Names::default();
    let mut stmt = conn.prepare("SELECT id, name FROM names")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let id = u32::try_from(r.get::<_, i64>(0)?).map_err(|_| StoreError::Range("name id"))?;
        names.insert(id, &r.get::<_, String>(1)?);
    }
    Ok(names)
}

/// Creation time of the oldest row (rows are created in id order).
pub(crate) fn oldest(conn: &Connection) -> Result<Option<i64>> {
    Ok(conn
        .query_row("SELECT created_ms FROM rows ORDER BY id LIMIT 1", [], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Pages in use × page size, and main file plus WAL on disk.
pub(crate) fn file_usage(conn: &Connection, path: &Path) -> Result<super::state::FileUsage> {
    let (pages, free, size): (i64, i64, i64) = conn.query_row(
        "SELECT (SELECT page_count FROM pragma_page_count()),
                (SELECT freelist_count FROM pragma_freelist_count()),
                (SELECT page_size FROM pragma_page_size())",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let pages = u64_of(pages, "page_count")?;
    let free = u64_of(free, "freelist_count")?;
    let size = u64_of(size, "page_size")?;
    let wal = std::fs::metadata(wal_path(path)).map_or(0, |m| m.len());
    Ok(super::state::FileUsage {
        used: pages.saturating_sub(free) * size,
        on_disk: pages * size + wal,
    })
}

/// The WAL file of a database.
pub(crate) fn wal_path(path: &Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-wal");
    p.into()
}

// ------------------------------------------------------------------------------------------
// Appending
// ------------------------------------------------------------------------------------------

/// One row to append.
#[derive(Debug)]
pub(crate) struct NewRow<'a> {
    /// Readings or KPI records.
    pub(crate) kind: Kind,
    /// Number of sequences.
    pub(crate) count: u32,
    /// The encoded payload.
    pub(crate) payload: &'a [u8],
}

/// Rows to append in one transaction, with what goes with them.
#[derive(Debug)]
pub(crate) struct NewRows<'a> {
    /// The rows, in sequence order.
    pub(crate) rows: &'a [NewRow<'a>],
    /// Names first used by the payloads, with their tentative ids.
    pub(crate) new_names: &'a [(u32, String)],
    /// The KPI engine's state, stored in the same transaction.
    pub(crate) kpi_state: Option<&'a [u8]>,
}

/// What an append transaction did.
#[derive(Debug)]
pub(crate) struct Appended {
    /// The stored rows, in the order given.
    pub(crate) rows: Vec<RowHead>,
    /// Rows evicted to make room.
    pub(crate) evicted: Vec<EvictPlan>,
}

/// `(first_seq, last_seq)` of a stored row or gap, refusing a damaged range.
fn seq_range(first: i64, last: i64) -> Result<(u64, u64)> {
    let first = u64_of(first, "first_seq")?;
    let last = u64_of(last, "last_seq")?;
    if first == 0 || last < first {
        return Err(StoreError::Range(
            "a row's sequence range is empty or reversed",
        ));
    }
    Ok((first, last))
}

fn head(r: &rusqlite::Row<'_>) -> Result<RowHead> {
    let (first_seq, last_seq) = seq_range(r.get(2)?, r.get(3)?)?;
    Ok(RowHead {
        id: r.get(0)?,
        stream: r.get(1)?,
        first_seq,
        last_seq,
        kind: Kind::from_code(r.get(4)?).ok_or(StoreError::Range("kind"))?,
        bytes: u64_of(r.get(5)?, "bytes")?,
        created_ms: r.get(6)?,
    })
}

const HEAD_COLUMNS: &str = "id, stream, first_seq, last_seq, kind, bytes, created_ms";

fn oldest_heads(tx: &Transaction<'_>, kind: Option<Kind>, limit: i64) -> Result<Vec<RowHead>> {
    let sql = match kind {
        Some(_) => format!("SELECT {HEAD_COLUMNS} FROM rows WHERE kind = ?1 ORDER BY id LIMIT ?2"),
        None => format!("SELECT {HEAD_COLUMNS} FROM rows WHERE ?1 IS NULL ORDER BY id LIMIT ?2"),
    };
    let mut stmt = tx.prepare_cached(&sql)?;
    let mut rows = stmt.query(params![kind.map(Kind::code), limit])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(head(r)?);
    }
    Ok(out)
}

/// Deletes the plan's rows and declares its gaps, extending the stream's last gap where the
/// core allows (K6: in the caller's transaction, so both or neither).
fn evict(tx: &Transaction<'_>, state: &State, plan: &EvictPlan, now_ms: i64) -> Result<()> {
    for row in &plan.rows {
        tx.prepare_cached("DELETE FROM rows WHERE id = ?1")?
            .execute([row.id])?;
    }
    failpoint!(failpoints::K6_EVICT_BEFORE_GAP);
    for gap in &plan.gaps {
        let last: Option<GapRow> = tx
            .prepare_cached(
                "SELECT id, stream, first_seq, count, reason FROM gaps
                 WHERE stream = ?1 ORDER BY first_seq DESC LIMIT 1",
            )?
            .query_row([gap.stream], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .optional()?
            .and_then(|(id, stream, first, count, reason)| {
                Some(GapRow {
                    id,
                    stream,
                    first_seq: u64::try_from(first).ok()?,
                    count: u64::try_from(count).ok()?,
                    reason: reason_of(reason)?,
                })
            });
        let count = gap.last_seq - gap.first_seq + 1;
        match state.gap_to_extend(last.as_ref(), gap) {
            Some(id) => {
                tx.prepare_cached(
                    "UPDATE gaps SET count = count + ?1, declared_ms = ?2 WHERE id = ?3",
                )?
                .execute(params![i64_of(count, "gap count")?, now_ms, id])?;
            }
            None => {
                tx.prepare_cached(
                    "INSERT INTO gaps (stream, first_seq, count, reason, declared_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    gap.stream,
                    i64_of(gap.first_seq, "gap first_seq")?,
                    i64_of(count, "gap count")?,
                    reason_code(gap.reason),
                    now_ms
                ])?;
            }
        }
    }
    Ok(())
}

/// Evicts under the byte budget before `incoming` more bytes are stored, in `tx`: oldest
/// reading rows first, KPI rows last, re-measuring the file after each step.
fn evict_for_budget(
    tx: &Transaction<'_>,
    state: &State,
    path: &Path,
    incoming: u64,
    now_ms: i64,
) -> Result<Vec<EvictPlan>> {
    let mut plans = Vec::new();
    let mut freed = 0;
    // Bounded: each round evicts at least one row or stops.
    for _ in 0..10_000 {
        let used = file_usage(tx, path)?.used;
        let need = state.eviction_need(incoming, used, freed);
        if need == 0 {
            break;
        }
        let readings = oldest_heads(tx, Some(Kind::Readings), SCAN_CHUNK)?;
        let have: u64 = readings.iter().map(RowHead::charged).sum();
        let kpis = if have < need && (readings.len() as i64) < SCAN_CHUNK {
            oldest_heads(tx, Some(Kind::Kpi), SCAN_CHUNK)?
        } else {
            Vec::new()
        };
        let plan = State::plan_budget_eviction(&readings, &kpis, need);
        if plan.is_empty() {
            break;
        }
        evict(tx, state, &plan, now_ms)?;
        freed += plan.freed();
        plans.push(plan);
    }
    Ok(plans)
}

/// Stores rows in the current stream, each with its sequence numbers, after evicting what the
/// budget requires: one `BEGIN IMMEDIATE` transaction for them all (G1), so the poll cycles
/// that arrive together cost one commit (and one `fsync` at `synchronous=FULL`).
pub(crate) fn append(
    conn: &mut Connection,
    state: &State,
    path: &Path,
    new: &NewRows<'_>,
    now_ms: i64,
) -> Result<Appended> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current = state.current();
    let stored: i64 = tx
        .prepare_cached("SELECT next_seq FROM streams WHERE id = ?1")?
        .query_row([current.id], |r| r.get(0))?;
    if u64_of(stored, "next_seq")? != current.next_seq {
        return Err(StoreError::OutOfStep);
    }
    let total: u32 = new
        .rows
        .iter()
        .try_fold(0u32, |n, r| n.checked_add(r.count))
        .ok_or(StoreError::Range("sequence overflow"))?;
    let mut next = state
        .next_range(total)
        .ok_or(StoreError::Range("sequence overflow"))?;
    let incoming: u64 = new
        .rows
        .iter()
        .map(|r| r.payload.len() as u64 + super::state::ROW_OVERHEAD)
        .sum();
    let evicted = evict_for_budget(&tx, state, path, incoming, now_ms)?;
    for (id, name) in new.new_names {
        tx.prepare_cached("INSERT INTO names (id, name) VALUES (?1, ?2)")?
            .execute(params![id, name])?;
    }
    let mut rows = Vec::with_capacity(new.rows.len());
    for row in new.rows {
        let first = next;
        let last = first + u64::from(row.count) - 1;
        next = last + 1;
        let bytes = row.payload.len() as u64;
        tx.prepare_cached(
            "INSERT INTO rows (stream, first_seq, last_seq, kind, created_ms, bytes, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            current.id,
            i64_of(first, "first_seq")?,
            i64_of(last, "last_seq")?,
            row.kind.code(),
            now_ms,
            i64_of(bytes, "bytes")?,
            row.payload
        ])?;
        rows.push(RowHead {
            id: tx.last_insert_rowid(),
            stream: current.id,
            first_seq: first,
            last_seq: last,
            kind: row.kind,
            bytes,
            created_ms: now_ms,
        });
    }
    tx.prepare_cached("UPDATE streams SET next_seq = ?1 WHERE id = ?2")?
        .execute(params![i64_of(next, "next_seq")?, current.id])?;
    if let Some(bytes) = new.kpi_state {
        meta_set(&tx, KPI_STATE, bytes)?;
    }
    failpoint!(failpoints::K2_BEFORE_COMMIT);
    tx.commit()?;
    failpoint!(failpoints::K3_AFTER_COMMIT);
    Ok(Appended { rows, evicted })
}

/// Evicts rows older than `cutoff` (oldest first), declaring them as `max_age` gaps. One
/// transaction per call, at most [`DELETE_CHUNK`] rows; returns the plan (empty when nothing
/// was old).
pub(crate) fn evict_old(
    conn: &mut Connection,
    state: &State,
    cutoff: i64,
    now_ms: i64,
) -> Result<EvictPlan> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let heads = oldest_heads(&tx, None, DELETE_CHUNK)?;
    let plan = State::plan_age_eviction(&heads, cutoff);
    if !plan.is_empty() {
        evict(&tx, state, &plan, now_ms)?;
        tx.commit()?;
    }
    Ok(plan)
}

// ------------------------------------------------------------------------------------------
// Publishing
// ------------------------------------------------------------------------------------------

/// Items of a row, JSON-encoded, by position.
fn row_items(
    kind: Kind,
    payload: &[u8],
    names: &Names,
) -> std::result::Result<Vec<Vec<u8>>, DecodeError> {
    fn json<T: serde::Serialize>(items: &[T]) -> std::result::Result<Vec<Vec<u8>>, DecodeError> {
        items
            .iter()
            .map(|i| serde_json::to_vec(i).map_err(|_| DecodeError("JSON encoding")))
            .collect()
    }
    match kind {
        Kind::Readings => json::<Reading>(&codec::decode_readings(payload, names)?),
        Kind::Kpi => json::<KpiRecord>(&codec::decode_kpis(payload)?),
    }
}

/// Rows that could not be decoded, reported by `pending` (they are skipped and stay until
/// evicted).
#[derive(Debug, Default)]
pub(crate) struct Damaged(pub(crate) Vec<(i64, DecodeError)>);

/// Builds the messages of `pending(lane)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pending(
    conn: &Connection,
    state: &mut State,
    names: &Names,
    gateway: &str,
    site: &str,
    lane: Lane,
    limits: Limits,
    damaged: &mut Damaged,
) -> Result<Vec<Outgoing>> {
    let Some((stream, epoch, from, through)) = state.pending_scan(lane) else {
        return Ok(Vec::new());
    };
    let mut builder = Builder::new(gateway, site, epoch, limits);
    let mut cursor = from;
    let mut served = 0;
    let mut stmt = conn.prepare_cached(
        "SELECT id, first_seq, last_seq, kind, payload FROM rows
         WHERE stream = ?1 AND last_seq >= ?2 ORDER BY last_seq LIMIT ?3",
    )?;
    'rows: while !builder.is_full() {
        let mut rows = stmt.query(params![stream, i64_of(cursor, "seq")?, SCAN_CHUNK])?;
        let mut seen = 0;
        while let Some(r) = rows.next()? {
            seen += 1;
            let id: i64 = r.get(0)?;
            let (first, last) = seq_range(r.get(1)?, r.get(2)?)?;
            if first > through {
                break 'rows;
            }
            let kind = Kind::from_code(r.get(3)?).ok_or(StoreError::Range("kind"))?;
            cursor = last.saturating_add(1);
            let runs = state.unfinished_within(stream, first.max(from), last.min(through));
            if runs.is_empty() {
                continue;
            }
            let payload: &[u8] = r.get_ref(4)?.as_blob().map_err(rusqlite::Error::from)?;
            let items = match row_items(kind, payload, names) {
                Ok(items) if items.len() as u64 == last - first + 1 => items,
                Ok(_) => {
                    damaged
                        .0
                        .push((id, DecodeError("item count differs from the row's")));
                    continue;
                }
                Err(e) => {
                    damaged.0.push((id, e));
                    continue;
                }
            };
            for (a, b) in runs {
                for seq in a..=b {
                    let Some(item) = usize::try_from(seq - first).ok().and_then(|i| items.get(i))
                    else {
                        continue;
                    };
                    if builder.push(kind, seq, item) == Push::Full {
                        break 'rows;
                    }
                    served = seq;
                }
            }
        }
        if seen < SCAN_CHUNK {
            break;
        }
    }
    drop(stmt);
    let out = builder.finish();
    state.on_served(stream, served);
    Ok(out)
}

/// Deletes, in one transaction, up to [`DELETE_CHUNK`] rows lying wholly inside the
/// deletable ranges (acknowledged rows), and the gaps the sink's watermark passed. Returns the
/// deleted rows, the deleted gap ids, and whether more rows may be left.
pub(crate) fn delete_acknowledged(
    conn: &mut Connection,
    state: &State,
) -> Result<(Vec<RowHead>, Vec<i64>, bool)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut rows = Vec::new();
    let mut gaps = Vec::new();
    let mut more = false;
    for stream in state.streams() {
        for (a, b) in state.deletable_ranges(stream) {
            let budget = DELETE_CHUNK - rows.len() as i64;
            if budget <= 0 {
                more = true;
                break;
            }
            let mut stmt = tx.prepare_cached(&format!(
                "DELETE FROM rows WHERE id IN (
                     SELECT id FROM rows WHERE stream = ?1 AND last_seq BETWEEN ?2 AND ?3
                     AND first_seq >= ?2 ORDER BY last_seq LIMIT ?4)
                 RETURNING {HEAD_COLUMNS}"
            ))?;
            let mut q = stmt.query(params![
                stream.id,
                i64_of(a, "seq")?,
                i64_of(b, "seq")?,
                budget
            ])?;
            let mut n = 0;
            while let Some(r) = q.next()? {
                rows.push(head(r)?);
                n += 1;
            }
            if n == budget {
                more = true;
            }
        }
        if stream.sink_seq > 0 {
            let mut stmt = tx.prepare_cached(
                "DELETE FROM gaps WHERE stream = ?1 AND first_seq + count - 1 <= ?2 RETURNING id",
            )?;
            let mut q = stmt.query(params![stream.id, i64_of(stream.sink_seq, "seq")?])?;
            while let Some(r) = q.next()? {
                gaps.push(r.get(0)?);
            }
        }
    }
    tx.commit()?;
    Ok((rows, gaps, more))
}

/// Stores a stream's sink watermark; with `rotate`, also starts a new current stream.
pub(crate) fn store_watermark(
    conn: &mut Connection,
    stream: i64,
    seq: u64,
    rotate: bool,
    now_ms: i64,
) -> Result<Option<(i64, Epoch)>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.prepare_cached("UPDATE streams SET sink_seq = MAX(sink_seq, ?1) WHERE id = ?2")?
        .execute(params![i64_of(seq, "seq")?, stream])?;
    let fresh = if rotate {
        Some(new_stream(&tx, now_ms)?)
    } else {
        None
    };
    failpoint!(failpoints::K5_BEFORE_WATERMARK_COMMIT);
    tx.commit()?;
    Ok(fresh)
}

/// Rows of `stream` overlapping `first..=last`.
pub(crate) fn rows_overlapping(
    conn: &Connection,
    stream: i64,
    first: u64,
    last: u64,
) -> Result<Vec<RowHead>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {HEAD_COLUMNS} FROM rows WHERE stream = ?1 AND last_seq >= ?2 AND first_seq <= ?3
         ORDER BY last_seq"
    ))?;
    let mut q = stmt.query(params![stream, i64_of(first, "seq")?, i64_of(last, "seq")?])?;
    let mut out = Vec::new();
    while let Some(r) = q.next()? {
        out.push(head(r)?);
    }
    Ok(out)
}

/// Deletes rows by id, in one transaction.
pub(crate) fn delete_rows(conn: &mut Connection, rows: &[RowHead]) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for row in rows {
        tx.prepare_cached("DELETE FROM rows WHERE id = ?1")?
            .execute([row.id])?;
    }
    tx.commit()?;
    Ok(())
}

/// Gap notices not yet confirmed, oldest first.
pub(crate) fn pending_gaps(
    conn: &Connection,
    state: &State,
    gateway: &str,
    site: &str,
) -> Result<Vec<OutgoingGap>> {
    let mut stmt = conn.prepare_cached(
        "SELECT g.id, s.epoch, g.first_seq, g.count, g.reason, g.declared_ms
         FROM gaps g JOIN streams s ON s.id = g.stream ORDER BY g.id LIMIT ?1",
    )?;
    let mut q = stmt.query([GAPS_PER_CALL])?;
    let mut out = Vec::new();
    while let Some(r) = q.next()? {
        let id: i64 = r.get(0)?;
        if state.gap_confirmed(id) {
            continue;
        }
        let count =
            u32::try_from(r.get::<_, i64>(3)?).map_err(|_| StoreError::Range("gap count"))?;
        let gap = Gap {
            schema: WIRE_SCHEMA,
            gateway: gateway.to_owned(),
            site: site.to_owned(),
            epoch: epoch_of_sql(r.get(1)?),
            first_seq: u64_of(r.get(2)?, "gap first_seq")?,
            count,
            reason: reason_of(r.get(4)?).ok_or(StoreError::Range("gap reason"))?,
            declared_at: r.get(5)?,
        };
        out.push(OutgoingGap {
            id,
            payload: wire::encode(&gap),
        });
    }
    Ok(out)
}

/// Deletes a gap row.
pub(crate) fn delete_gap(conn: &mut Connection, id: i64) -> Result<()> {
    conn.prepare_cached("DELETE FROM gaps WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// Deletes an old stream that has no rows and no gaps left; returns whether it did.
pub(crate) fn drop_stream(conn: &mut Connection, id: i64) -> Result<bool> {
    let n = conn
        .prepare_cached(
            "DELETE FROM streams WHERE id = ?1
             AND NOT EXISTS (SELECT 1 FROM rows WHERE stream = ?1)
             AND NOT EXISTS (SELECT 1 FROM gaps WHERE stream = ?1)
             AND id < (SELECT MAX(id) FROM streams)",
        )?
        .execute([id])?;
    Ok(n > 0)
}

/// Row and gap ranges for diagnostics: `(epoch, first_seq, count, kind)` and
/// `(epoch, first_seq, count, reason)`.
pub(crate) type Inventory = (
    Vec<(Epoch, u64, u64, Kind)>,
    Vec<(Epoch, u64, u64, wire::GapReason)>,
);

/// Every row's and gap's range, in order.
pub(crate) fn inventory(conn: &Connection) -> Result<Inventory> {
    let mut rows = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT s.epoch, r.first_seq, r.last_seq, r.kind FROM rows r
         JOIN streams s ON s.id = r.stream ORDER BY r.id",
    )?;
    let mut q = stmt.query([])?;
    while let Some(r) = q.next()? {
        let (first, last) = seq_range(r.get(1)?, r.get(2)?)?;
        rows.push((
            epoch_of_sql(r.get(0)?),
            first,
            last - first + 1,
            Kind::from_code(r.get(3)?).ok_or(StoreError::Range("kind"))?,
        ));
    }
    let mut gaps = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT s.epoch, g.first_seq, g.count, g.reason FROM gaps g
         JOIN streams s ON s.id = g.stream ORDER BY g.stream, g.first_seq",
    )?;
    let mut q = stmt.query([])?;
    while let Some(r) = q.next()? {
        gaps.push((
            epoch_of_sql(r.get(0)?),
            u64_of(r.get(1)?, "first_seq")?,
            u64_of(r.get(2)?, "count")?,
            reason_of(r.get(3)?).ok_or(StoreError::Range("reason"))?,
        ));
    }
    Ok((rows, gaps))
}
