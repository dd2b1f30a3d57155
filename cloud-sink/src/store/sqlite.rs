//! The SQLite store: one file in WAL mode with `synchronous = FULL` (a commit the sink
//! acknowledges survives a power loss), one connection behind a mutex, every call on tokio's
//! blocking pool, and a checkpointer thread with a connection of its own that copies the WAL
//! back into the database file (PASSIVE checkpoints every 200 ms, so the writer does not do
//! it after its commits; a commit still checkpoints by itself past 64 MiB of WAL, should the
//! checkpointer fall behind). Writers take `BEGIN IMMEDIATE`, so each transaction holds the
//! write lock from its first statement and plans against everything committed before it.
//! Every statement of the ingest path is prepared once and cached on the connection; the
//! readings arrive hashed ([`HashedBatch`]), so the database thread only plans and writes.

use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use fivezero_model::wire::{
    Batch, Epoch, Gap, KpiBatch, KpiRecord, Reading, Status, StreamAck, Value,
};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::ledger::{self, ItemKind, LedgerRange, Plan};
use super::{
    Commit, DeadLetter, GatewayInfo, HashedBatch, KpiQuery, MAX_ACK_STREAMS, Outcome, Point,
    Quarantined, RawMessage, ReadingsQuery, Retained, SeqRange, SeriesInfo, SeriesQuery, Store,
    StoreError, StoredGap, StoredKpi, StoredReading, StreamInfo, enum_name, enum_of, from_json,
    json_text, quality_name, run_indices, run_len, to_i64, to_u64,
};
use crate::validate::RejectReason;

/// Schema versions, applied in order; never edit one that shipped, add the next.
const MIGRATIONS: &[(u32, &str)] = &[
    (
        1,
        "CREATE TABLE streams (
        gateway TEXT NOT NULL, epoch TEXT NOT NULL, site TEXT NOT NULL,
        watermark INTEGER NOT NULL DEFAULT 0,
        first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,
        PRIMARY KEY (gateway, epoch));
     CREATE TABLE ledger (
        gateway TEXT NOT NULL, epoch TEXT NOT NULL,
        first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, count INTEGER NOT NULL,
        kind TEXT NOT NULL, hash BLOB NOT NULL, item_hashes BLOB NOT NULL,
        received_at INTEGER NOT NULL,
        PRIMARY KEY (gateway, epoch, first_seq));
     CREATE INDEX ledger_last ON ledger (gateway, epoch, last_seq);
     CREATE TABLE readings (
        site TEXT NOT NULL, gateway TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL,
        ts INTEGER NOT NULL, device TEXT NOT NULL, metric TEXT NOT NULL,
        value REAL, value_text TEXT, quality TEXT NOT NULL, reason TEXT);
     CREATE INDEX readings_series ON readings (site, device, metric, ts);
     CREATE INDEX readings_metric ON readings (site, metric, ts);
     CREATE INDEX readings_stream ON readings (gateway, epoch, seq);
     CREATE TABLE kpi_records (
        site TEXT NOT NULL, gateway TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL,
        kpi TEXT NOT NULL, window_start INTEGER NOT NULL, window_end INTEGER NOT NULL,
        period TEXT NOT NULL, tz TEXT NOT NULL,
        numerator REAL, denominator REAL, value REAL, unit TEXT NOT NULL,
        coverage REAL NOT NULL, quality TEXT NOT NULL,
        tiers TEXT NOT NULL, factors TEXT NOT NULL, flags TEXT NOT NULL,
        formula_version INTEGER NOT NULL);
     CREATE INDEX kpi_window ON kpi_records (site, kpi, period, window_start);
     CREATE INDEX kpi_stream ON kpi_records (gateway, epoch, seq);
     CREATE TABLE gaps (
        gateway TEXT NOT NULL, epoch TEXT NOT NULL, site TEXT NOT NULL,
        first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, count INTEGER NOT NULL,
        reason TEXT NOT NULL, declared_at INTEGER NOT NULL, received_at INTEGER NOT NULL,
        PRIMARY KEY (gateway, epoch, first_seq, count));
     CREATE INDEX gaps_last ON gaps (gateway, epoch, last_seq);
     CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT, received_at INTEGER NOT NULL,
        topic TEXT NOT NULL, payload BLOB NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL);
     CREATE INDEX dead_letters_reason ON dead_letters (reason, received_at);
     CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY AUTOINCREMENT, received_at INTEGER NOT NULL,
        topic TEXT NOT NULL, gateway TEXT NOT NULL, epoch TEXT NOT NULL,
        first_seq INTEGER NOT NULL, count INTEGER NOT NULL, kind TEXT NOT NULL,
        hash BLOB NOT NULL, payload BLOB NOT NULL, detail TEXT NOT NULL);
     CREATE TABLE gateways (
        gateway TEXT PRIMARY KEY, site TEXT NOT NULL, state TEXT NOT NULL,
        status_ts INTEGER NOT NULL, last_seen INTEGER NOT NULL, version TEXT NOT NULL,
        epoch TEXT, profiles TEXT NOT NULL, committed_seq INTEGER, sink_acked_seq INTEGER,
        buffer_bytes INTEGER, oldest_unsent_ts INTEGER);",
    ),
    (
        2,
        "CREATE INDEX kpi_site_period ON kpi_records (site, period, window_start);
         CREATE INDEX kpi_retention ON kpi_records (window_end);
         CREATE INDEX readings_retention ON readings (ts);",
    ),
    (
        3,
        "DROP INDEX IF EXISTS readings_metric;
         DROP INDEX IF EXISTS readings_stream;",
    ),
];

/// How often the checkpointer copies the WAL back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// WAL pages (4 KiB each) past which a commit checkpoints by itself: a backstop for when the
/// checkpointer cannot keep up, far above what it leaves behind.
const AUTOCHECKPOINT_PAGES: i64 = 16_384;

/// The SQLite store; clones share the connection (and the checkpointer, which stops when the
/// last clone is dropped).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    _checkpointer: Arc<mpsc::Sender<()>>,
}

/// Starts the checkpointer: a thread with its own connection that runs a PASSIVE checkpoint
/// every [`CHECKPOINT_EVERY`], so the writer does not stop to copy the WAL into the database
/// after its commits (SQLite's automatic checkpoint runs in the committing thread: 12 % of
/// the writer's time in the ingest benchmark). A PASSIVE checkpoint waits for nobody and
/// never blocks the writer; the thread ends when the returned sender is dropped.
fn start_checkpointer(path: &Path) -> Result<mpsc::Sender<()>, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(1))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY)
            {
                let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                });
                if let Err(e) = done {
                    tracing::debug!(error = %e, "WAL checkpoint failed; trying again.");
                }
            }
        })
        .map_err(|e| StoreError::Worker(format!("cannot start the checkpointer: {e}")))?;
    Ok(stop)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file, sets WAL and `synchronous = FULL`, and
    /// applies the missing migrations.
    ///
    /// # Errors
    /// The file cannot be opened, or a migration fails or the schema is newer than this build.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let conn = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Url {
                    url: format!("sqlite://{}", path.display()),
                    problem: format!("cannot create folder {}: {e}", dir.display()),
                })?;
            }
            let mut conn = Connection::open(&path)?;
            conn.busy_timeout(Duration::from_secs(10))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            // 64 MiB of page cache (the default is 2 MiB): ingest touches leaf pages of four
            // readings indexes per transaction, and with the default cache they were read
            // back from the OS on every transaction (ingest benchmark: 60,000 readings per
            // CPU second with 2 MiB, 86,000 with 64 MiB).
            conn.pragma_update(None, "cache_size", -65_536)?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
            conn.pragma_update(None, "wal_autocheckpoint", AUTOCHECKPOINT_PAGES)?;
            migrate(&mut conn)?;
            let checkpointer = start_checkpointer(&path)?;
            Ok((conn, checkpointer))
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))??;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn.0)),
            _checkpointer: Arc::new(conn.1),
        })
    }

    async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Worker("a previous database call panicked".to_owned()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    // The version is read under the write lock (BEGIN IMMEDIATE), so two processes opening a
    // new file together apply each migration once: the second sees the first's commit.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: u32 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    if current > latest {
        return Err(StoreError::Schema(format!(
            "the database is at schema version {current}, newer than this build's {latest}"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.execute_batch(sql)
            .map_err(|e| StoreError::Schema(format!("migration {version}: {e}")))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, now_ms()],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Inserts the entries at an index range of the message, the first having the given
/// sequence number.
type InsertFn<'a> =
    &'a mut dyn FnMut(&Transaction<'_>, std::ops::Range<usize>, u64) -> Result<(), StoreError>;

/// What differs between storing readings and KPI records.
struct Items<'a> {
    site: &'a str,
    gateway: &'a str,
    epoch: Epoch,
    first_seq: u64,
    count: u32,
    kind: ItemKind,
    item_hashes: &'a [u8],
}

/// Locks the stream (upsert) and returns its watermark.
fn lock_stream(
    tx: &Transaction<'_>,
    site: &str,
    gateway: &str,
    epoch: &str,
    at: i64,
) -> Result<u64, StoreError> {
    let w: i64 = tx
        .prepare_cached(
            "INSERT INTO streams (gateway, epoch, site, watermark, first_seen, last_seen)
             VALUES (?1, ?2, ?3, 0, ?4, ?4)
             ON CONFLICT (gateway, epoch) DO UPDATE SET last_seen = excluded.last_seen
             RETURNING watermark",
        )?
        .query_row(params![gateway, epoch, site, at], |r| r.get(0))?;
    to_u64(w, "watermark")
}

fn overlapping(
    tx: &Transaction<'_>,
    gateway: &str,
    epoch: &str,
    first: i64,
    last: i64,
) -> Result<Vec<LedgerRange>, StoreError> {
    let mut stmt = tx.prepare_cached(
        "SELECT first_seq, last_seq, kind, item_hashes FROM ledger
         WHERE gateway = ?1 AND epoch = ?2 AND last_seq >= ?3 AND first_seq <= ?4",
    )?;
    let rows = stmt.query_map(params![gateway, epoch, first, last], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Vec<u8>>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (a, b, kind, item_hashes) = row?;
        out.push(LedgerRange {
            first: to_u64(a, "first_seq")?,
            last: to_u64(b, "last_seq")?,
            kind: ItemKind::from_name(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("ledger kind {kind:?}")))?,
            item_hashes,
        });
    }
    Ok(out)
}

/// Runs a query selecting `first_seq, last_seq` and returns the pairs.
fn seq_ranges(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<(u64, u64)>, StoreError> {
    let mut out = Vec::new();
    for row in stmt.query_map(params, |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))? {
        let (a, b) = row?;
        out.push((to_u64(a, "first_seq")?, to_u64(b, "last_seq")?));
    }
    Ok(out)
}

/// Recomputes the stream's watermark from the ledger and the gaps, stores it if higher.
///
/// Reads every gap above the watermark but the ledger only in chunks of
/// [`ledger::WATERMARK_CHUNK`] rows in `last_seq` order, stopping at the first hole
/// ([`ledger::scan_step`]), so rows stored far above a hole are not read again by every
/// message.
fn update_watermark(
    tx: &Transaction<'_>,
    gateway: &str,
    epoch: &str,
    current: u64,
) -> Result<(), StoreError> {
    let gaps = seq_ranges(
        &mut tx.prepare_cached(
            "SELECT first_seq, last_seq FROM gaps WHERE gateway = ?1 AND epoch = ?2 AND last_seq > ?3",
        )?,
        params![gateway, epoch, to_i64(current, "watermark")?],
    )?;
    let mut chunk_stmt = tx.prepare_cached(
        "SELECT first_seq, last_seq FROM ledger WHERE gateway = ?1 AND epoch = ?2 AND last_seq > ?3
         ORDER BY last_seq LIMIT ?4",
    )?;
    let limit = i64::try_from(ledger::WATERMARK_CHUNK).unwrap_or(i64::MAX);
    let mut w = current;
    loop {
        let chunk = seq_ranges(
            &mut chunk_stmt,
            params![gateway, epoch, to_i64(w, "watermark")?, limit],
        )?;
        let step = ledger::scan_step(w, &chunk, chunk.len() >= ledger::WATERMARK_CHUNK, &gaps);
        w = step.watermark;
        if !step.more {
            break;
        }
    }
    if w > current {
        tx.prepare_cached(
            "UPDATE streams SET watermark = ?3 WHERE gateway = ?1 AND epoch = ?2 AND watermark < ?3",
        )?
        .execute(params![gateway, epoch, to_i64(w, "watermark")?])?;
    }
    Ok(())
}

fn acks_of(conn: &Connection, gateway: &str) -> Result<Vec<StreamAck>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT epoch, watermark FROM streams WHERE gateway = ?1
         ORDER BY last_seen DESC, epoch LIMIT ?2",
    )?;
    let mut out = Vec::new();
    for row in stmt.query_map(params![gateway, MAX_ACK_STREAMS as i64], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })? {
        let (epoch, w) = row?;
        out.push(StreamAck {
            epoch: epoch
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("epoch {epoch:?}: {e}")))?,
            seq: to_u64(w, "watermark")?,
        });
    }
    Ok(out)
}

/// The common path of batches and KPI batches: plan against the ledger, insert what is new
/// with `insert` (called with index ranges into the message's entries), update the watermark.
fn store_items(
    conn: &mut Connection,
    items: &Items<'_>,
    raw: &RawMessage,
    insert: InsertFn<'_>,
) -> Result<Commit, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let commit = store_items_in(&tx, items, raw, insert)?;
    tx.commit()?;
    Ok(commit)
}

/// [`store_items`] inside a transaction the caller commits.
fn store_items_in(
    tx: &Transaction<'_>,
    items: &Items<'_>,
    raw: &RawMessage,
    insert: InsertFn<'_>,
) -> Result<Commit, StoreError> {
    let epoch = items.epoch.to_string();
    let last = items.first_seq + u64::from(items.count) - 1;
    let (first_i, last_i) = (
        to_i64(items.first_seq, "first_seq")?,
        to_i64(last, "last_seq")?,
    );
    let watermark = lock_stream(tx, items.site, items.gateway, &epoch, raw.received_at)?;
    let existing = overlapping(tx, items.gateway, &epoch, first_i, last_i)?;
    let plan = ledger::plan(
        items.first_seq,
        last,
        items.kind,
        items.item_hashes,
        &existing,
    );
    let outcome = match plan {
        Plan::Duplicate => Outcome::Duplicate {
            items: u64::from(items.count),
        },
        Plan::Conflict { detail } => {
            tx.execute(
                "INSERT INTO quarantine (received_at, topic, gateway, epoch, first_seq, count,
                 kind, hash, payload, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    raw.received_at,
                    raw.topic,
                    items.gateway,
                    epoch,
                    first_i,
                    items.count,
                    items.kind.as_str(),
                    ledger::content_hash(items.item_hashes),
                    raw.payload,
                    detail
                ],
            )?;
            Outcome::Conflict { detail }
        }
        Plan::Insert { runs, duplicates } => {
            let mut ledger_stmt = tx.prepare_cached(
                "INSERT INTO ledger (gateway, epoch, first_seq, last_seq, count, kind, hash,
                 item_hashes, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for (range, &(a, b)) in run_indices(items.first_seq, &runs).into_iter().zip(&runs) {
                let hashes = items
                    .item_hashes
                    .get(range.start * ledger::ITEM_HASH_LEN..range.end * ledger::ITEM_HASH_LEN)
                    .unwrap_or_default();
                ledger_stmt.execute(params![
                    items.gateway,
                    epoch,
                    to_i64(a, "first_seq")?,
                    to_i64(b, "last_seq")?,
                    to_i64(b - a + 1, "count")?,
                    items.kind.as_str(),
                    ledger::content_hash(hashes),
                    hashes,
                    raw.received_at
                ])?;
                insert(tx, range, a)?;
            }
            drop(ledger_stmt);
            update_watermark(tx, items.gateway, &epoch, watermark)?;
            Outcome::Stored {
                items: run_len(&runs),
                duplicates,
            }
        }
    };
    let acks = acks_of(tx, items.gateway)?;
    Ok(Commit { outcome, acks })
}

/// Inserts the readings of `runs` (batch index, index range, first sequence) in the order of
/// the `readings_series` index, (site, device, metric, ts): consecutive rows then land on
/// the same index pages, which stay in the CPU cache, instead of one page per series in turn.
/// Rows have no meaning in their rowid order (queries order by their columns), and nothing
/// in the transaction reads `readings`, so the order is free.
fn insert_sorted(
    tx: &Transaction<'_>,
    batches: &[Arc<HashedBatch>],
    runs: &[(usize, std::ops::Range<usize>, u64)],
) -> Result<(), StoreError> {
    let mut rows: Vec<(&Batch, i64, &Reading)> = Vec::new();
    for (i, range, first) in runs {
        let Some(batch) = batches.get(*i).map(|h| h.batch()) else {
            continue;
        };
        let first = to_i64(*first, "seq")?;
        rows.extend(
            (first..)
                .zip(batch.readings.get(range.clone()).unwrap_or_default())
                .map(|(seq, r)| (batch, seq, r)),
        );
    }
    rows.sort_unstable_by(|a, b| {
        (
            a.0.site.as_str(),
            a.2.device.as_str(),
            a.2.metric.as_str(),
            a.2.ts,
        )
            .cmp(&(
                b.0.site.as_str(),
                b.2.device.as_str(),
                b.2.metric.as_str(),
                b.2.ts,
            ))
    });
    let mut stmt = tx.prepare_cached(
        "INSERT INTO readings (site, gateway, epoch, seq, ts, device, metric, value, value_text,
         quality, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    let mut epoch = (None, String::new());
    for (batch, seq, r) in rows {
        if epoch.0 != Some(batch.epoch) {
            epoch = (Some(batch.epoch), batch.epoch.to_string());
        }
        let (number, text) = match &r.value {
            Some(Value::Number(x)) => (Some(*x), None),
            Some(Value::Text(t)) => (None, Some(t.as_str())),
            None => (None, None),
        };
        stmt.execute(params![
            batch.site,
            batch.gateway,
            epoch.1,
            seq,
            r.ts,
            r.device,
            r.metric,
            number,
            text,
            quality_name(r.quality),
            r.reason
        ])?;
    }
    Ok(())
}

fn insert_kpis(
    tx: &Transaction<'_>,
    kpis: &KpiBatch,
    epoch: &str,
    range: std::ops::Range<usize>,
    first_seq: u64,
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO kpi_records (site, gateway, epoch, seq, kpi, window_start, window_end,
         period, tz, numerator, denominator, value, unit, coverage, quality, tiers, factors,
         flags, formula_version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
         ?18, ?19)",
    )?;
    let first = to_i64(first_seq, "seq")?;
    for (seq, k) in (first..).zip(kpis.records.get(range).unwrap_or_default()) {
        stmt.execute(params![
            kpis.site,
            kpis.gateway,
            epoch,
            seq,
            k.kpi,
            k.window.start,
            k.window.end,
            k.window.period.as_str(),
            k.window.tz,
            k.numerator,
            k.denominator,
            k.value,
            k.unit,
            k.coverage,
            enum_name(&k.quality),
            json_text(&k.tiers),
            json_text(&k.factors),
            json_text(&k.flags),
            k.formula_version
        ])?;
    }
    Ok(())
}

fn kpi_of(r: &rusqlite::Row<'_>, at: usize) -> Result<KpiRecord, StoreError> {
    let period: String = r.get(at + 3)?;
    let quality: String = r.get(at + 10)?;
    Ok(KpiRecord {
        kpi: r.get(at)?,
        window: fivezero_model::wire::Window {
            start: r.get(at + 1)?,
            end: r.get(at + 2)?,
            period: enum_of(&period)?,
            tz: r.get(at + 4)?,
        },
        numerator: r.get(at + 5)?,
        denominator: r.get(at + 6)?,
        value: r.get(at + 7)?,
        unit: r.get(at + 8)?,
        coverage: r.get(at + 9)?,
        quality: enum_of(&quality)?,
        tiers: from_json(&r.get::<_, String>(at + 11)?)?,
        factors: from_json(&r.get::<_, String>(at + 12)?)?,
        flags: from_json(&r.get::<_, String>(at + 13)?)?,
        formula_version: r.get(at + 14)?,
    })
}

impl Store for SqliteStore {
    /// All in one transaction: one commit (one WAL fsync) for the lot.
    async fn store_batches(
        &self,
        batches: Vec<Arc<HashedBatch>>,
    ) -> Result<Vec<Commit>, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut commits = Vec::with_capacity(batches.len());
            // The readings to insert: (batch, index range, first sequence), inserted after
            // every batch is planned, in index order (see `insert_sorted`).
            let mut runs: Vec<(usize, std::ops::Range<usize>, u64)> = Vec::new();
            for (i, hashed) in batches.iter().enumerate() {
                let batch = hashed.batch();
                let items = Items {
                    site: &batch.site,
                    gateway: &batch.gateway,
                    epoch: batch.epoch,
                    first_seq: batch.first_seq,
                    count: batch.count,
                    kind: ItemKind::Readings,
                    item_hashes: hashed.item_hashes(),
                };
                commits.push(store_items_in(
                    &tx,
                    &items,
                    hashed.raw(),
                    &mut |_, range, first| {
                        runs.push((i, range, first));
                        Ok(())
                    },
                )?);
            }
            insert_sorted(&tx, &batches, &runs)?;
            tx.commit()?;
            Ok(commits)
        })
        .await
    }

    async fn store_kpis(&self, kpis: KpiBatch, raw: RawMessage) -> Result<Commit, StoreError> {
        self.call(move |conn| {
            let items = Items {
                site: &kpis.site,
                gateway: &kpis.gateway,
                epoch: kpis.epoch,
                first_seq: kpis.first_seq,
                count: kpis.count,
                kind: ItemKind::Kpis,
                item_hashes: &ledger::kpi_hashes(&kpis.records),
            };
            let epoch = kpis.epoch.to_string();
            store_items(conn, &items, &raw, &mut |tx, range, first| {
                insert_kpis(tx, &kpis, &epoch, range, first)
            })
        })
        .await
    }

    async fn store_gap(&self, gap: Gap, received_at: i64) -> Result<Commit, StoreError> {
        self.call(move |conn| {
            let epoch = gap.epoch.to_string();
            let last = gap.first_seq + u64::from(gap.count) - 1;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let watermark = lock_stream(&tx, &gap.site, &gap.gateway, &epoch, received_at)?;
            let n = tx.execute(
                "INSERT INTO gaps (gateway, epoch, site, first_seq, last_seq, count, reason,
                 declared_at, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT DO NOTHING",
                params![
                    gap.gateway,
                    epoch,
                    gap.site,
                    to_i64(gap.first_seq, "first_seq")?,
                    to_i64(last, "last_seq")?,
                    gap.count,
                    enum_name(&gap.reason),
                    gap.declared_at,
                    received_at
                ],
            )?;
            let outcome = if n == 1 {
                update_watermark(&tx, &gap.gateway, &epoch, watermark)?;
                Outcome::Stored {
                    items: u64::from(gap.count),
                    duplicates: 0,
                }
            } else {
                Outcome::Duplicate {
                    items: u64::from(gap.count),
                }
            };
            let acks = acks_of(&tx, &gap.gateway)?;
            tx.commit()?;
            Ok(Commit { outcome, acks })
        })
        .await
    }

    async fn store_status(&self, status: Status, received_at: i64) -> Result<(), StoreError> {
        self.call(move |conn| {
            let b = status.buffer.as_ref();
            let opt = |v: Option<u64>, what: &str| v.map(|v| to_i64(v, what)).transpose();
            conn.execute(
                "INSERT INTO gateways (gateway, site, state, status_ts, last_seen, version, epoch,
                 profiles, committed_seq, sink_acked_seq, buffer_bytes, oldest_unsent_ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT (gateway) DO UPDATE SET site = excluded.site,
                 state = excluded.state, status_ts = excluded.status_ts,
                 last_seen = excluded.last_seen, version = excluded.version,
                 epoch = COALESCE(excluded.epoch, gateways.epoch),
                 profiles = excluded.profiles,
                 committed_seq = COALESCE(excluded.committed_seq, gateways.committed_seq),
                 sink_acked_seq = COALESCE(excluded.sink_acked_seq, gateways.sink_acked_seq),
                 buffer_bytes = COALESCE(excluded.buffer_bytes, gateways.buffer_bytes),
                 oldest_unsent_ts = excluded.oldest_unsent_ts",
                params![
                    status.gateway,
                    status.site,
                    enum_name(&status.state),
                    status.ts,
                    received_at,
                    status.version,
                    status.epoch.map(|e| e.to_string()),
                    json_text(&status.profiles),
                    opt(b.map(|b| b.committed_seq), "committed_seq")?,
                    opt(b.map(|b| b.sink_acked_seq), "sink_acked_seq")?,
                    opt(b.map(|b| b.bytes), "bytes")?,
                    b.and_then(|b| b.oldest_unsent_ts)
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn dead_letter(
        &self,
        raw: RawMessage,
        reason: RejectReason,
        detail: String,
    ) -> Result<(), StoreError> {
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO dead_letters (received_at, topic, payload, reason, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    raw.received_at,
                    raw.topic,
                    raw.payload,
                    reason.as_str(),
                    detail
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn watermarks(&self, gateway: String) -> Result<Vec<StreamAck>, StoreError> {
        self.call(move |conn| acks_of(conn, &gateway)).await
    }

    async fn streams(&self) -> Result<Vec<StreamInfo>, StoreError> {
        self.call(|conn| {
            let mut stmt = conn.prepare(
                "SELECT s.site, s.gateway, s.epoch, s.watermark, s.first_seen, s.last_seen,
                  (SELECT COALESCE(SUM(count), 0) FROM ledger l WHERE l.gateway = s.gateway
                     AND l.epoch = s.epoch AND l.kind = 'readings'),
                  (SELECT COALESCE(SUM(count), 0) FROM ledger l WHERE l.gateway = s.gateway
                     AND l.epoch = s.epoch AND l.kind = 'kpis'),
                  (SELECT COALESCE(SUM(count), 0) FROM gaps g WHERE g.gateway = s.gateway
                     AND g.epoch = s.epoch)
                 FROM streams s ORDER BY s.gateway, s.epoch",
            )?;
            let mut out = Vec::new();
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                out.push(StreamInfo {
                    site: r.get(0)?,
                    gateway: r.get(1)?,
                    epoch: r.get(2)?,
                    watermark: to_u64(r.get(3)?, "watermark")?,
                    first_seen: r.get(4)?,
                    last_seen: r.get(5)?,
                    readings: to_u64(r.get(6)?, "count")?,
                    kpis: to_u64(r.get(7)?, "count")?,
                    gap_seqs: to_u64(r.get(8)?, "count")?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn gateways(&self) -> Result<Vec<GatewayInfo>, StoreError> {
        self.call(|conn| {
            let mut stmt = conn.prepare(
                "SELECT g.gateway, g.site, g.state, g.last_seen, g.version, g.epoch,
                  g.committed_seq - g.sink_acked_seq, s.watermark
                 FROM gateways g LEFT JOIN streams s ON s.gateway = g.gateway AND s.epoch = g.epoch
                 ORDER BY g.site, g.gateway",
            )?;
            let mut out = Vec::new();
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                out.push(GatewayInfo {
                    gateway: r.get(0)?,
                    site: r.get(1)?,
                    state: r.get(2)?,
                    last_seen: r.get(3)?,
                    version: r.get(4)?,
                    epoch: r.get(5)?,
                    backlog: r
                        .get::<_, Option<i64>>(6)?
                        .map(|v| u64::try_from(v).unwrap_or(0)),
                    watermark: r
                        .get::<_, Option<i64>>(7)?
                        .map(|v| to_u64(v, "watermark"))
                        .transpose()?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn readings(&self, q: ReadingsQuery) -> Result<Vec<StoredReading>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT gateway, epoch, seq, ts, device, metric, value, value_text, quality, reason
                 FROM readings
                 WHERE (?1 IS NULL OR site = ?1) AND (?2 IS NULL OR gateway = ?2)
                   AND (?3 IS NULL OR device = ?3) AND (?4 IS NULL OR metric = ?4)
                   AND (?5 IS NULL OR ts >= ?5) AND (?6 IS NULL OR ts < ?6)
                 ORDER BY ts, gateway, epoch, seq LIMIT ?7",
            )?;
            let mut rows = stmt.query(params![
                q.site, q.gateway, q.device, q.metric, q.from, q.to, q.limit
            ])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let number: Option<f64> = r.get(6)?;
                let text: Option<String> = r.get(7)?;
                let quality: String = r.get(8)?;
                out.push(StoredReading {
                    gateway: r.get(0)?,
                    epoch: r.get(1)?,
                    seq: to_u64(r.get(2)?, "seq")?,
                    reading: Reading {
                        ts: r.get(3)?,
                        device: r.get(4)?,
                        metric: r.get(5)?,
                        value: number.map(Value::Number).or(text.map(Value::Text)),
                        quality: enum_of(&quality)?,
                        reason: r.get(9)?,
                    },
                });
            }
            Ok(out)
        })
        .await
    }

    async fn kpi_records(&self, gateway: String) -> Result<Vec<StoredKpi>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT site, gateway, seq, kpi, window_start, window_end, period, tz, numerator,
                  denominator, value, unit, coverage, quality, tiers, factors, flags,
                  formula_version
                 FROM kpi_records WHERE gateway = ?1 ORDER BY epoch, seq",
            )?;
            let mut rows = stmt.query([gateway])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(StoredKpi {
                    site: r.get(0)?,
                    gateway: r.get(1)?,
                    seq: to_u64(r.get(2)?, "seq")?,
                    record: kpi_of(r, 3)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn gaps(&self, gateway: String) -> Result<Vec<StoredGap>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT gateway, epoch, first_seq, count, reason FROM gaps WHERE gateway = ?1
                 ORDER BY epoch, first_seq",
            )?;
            let mut rows = stmt.query([gateway])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(StoredGap {
                    gateway: r.get(0)?,
                    epoch: r.get(1)?,
                    first_seq: to_u64(r.get(2)?, "first_seq")?,
                    count: to_u64(r.get(3)?, "count")?,
                    reason: r.get(4)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, received_at, topic, payload, reason, detail FROM dead_letters
                 ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| {
                Ok(DeadLetter {
                    id: r.get(0)?,
                    received_at: r.get(1)?,
                    topic: r.get(2)?,
                    payload: r.get(3)?,
                    reason: r.get(4)?,
                    detail: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn quarantined(&self, limit: u32) -> Result<Vec<Quarantined>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, gateway, epoch, first_seq, count, payload, detail FROM quarantine
                 ORDER BY id DESC LIMIT ?1",
            )?;
            let mut rows = stmt.query([limit])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(Quarantined {
                    id: r.get(0)?,
                    gateway: r.get(1)?,
                    epoch: r.get(2)?,
                    first_seq: to_u64(r.get(3)?, "first_seq")?,
                    count: to_u64(r.get(4)?, "count")?,
                    payload: r.get(5)?,
                    detail: r.get(6)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn schema_version(&self) -> Result<u32, StoreError> {
        self.call(|conn| {
            Ok(conn
                .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
                    r.get::<_, Option<u32>>(0)
                })
                .optional()?
                .flatten()
                .unwrap_or(0))
        })
        .await
    }

    async fn sites(&self) -> Result<Vec<String>, StoreError> {
        self.call(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT site FROM streams UNION SELECT site FROM gateways ORDER BY 1",
            )?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn site_series(&self, site: String) -> Result<Vec<SeriesInfo>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT device, metric, COUNT(*), MIN(ts), MAX(ts) FROM readings
                 WHERE site = ?1 GROUP BY device, metric ORDER BY device, metric",
            )?;
            let mut rows = stmt.query([site])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(SeriesInfo {
                    device: r.get(0)?,
                    metric: r.get(1)?,
                    readings: to_u64(r.get(2)?, "count")?,
                    first_ts: r.get(3)?,
                    last_ts: r.get(4)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn series_points(&self, q: SeriesQuery) -> Result<Vec<Point>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT ts, value, quality FROM readings
                 WHERE site = ?1 AND device = ?2 AND metric = ?3 AND ts >= ?4 AND ts < ?5
                 ORDER BY ts LIMIT ?6",
            )?;
            let mut rows =
                stmt.query(params![q.site, q.device, q.metric, q.from, q.to, q.limit])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let quality: String = r.get(2)?;
                out.push(Point {
                    ts: r.get(0)?,
                    value: r.get(1)?,
                    error: quality == "error",
                });
            }
            Ok(out)
        })
        .await
    }

    async fn kpis_in_range(&self, q: KpiQuery) -> Result<Vec<StoredKpi>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT site, gateway, seq, kpi, window_start, window_end, period, tz, numerator,
                  denominator, value, unit, coverage, quality, tiers, factors, flags,
                  formula_version
                 FROM kpi_records
                 WHERE site = ?1 AND period = ?2 AND window_start >= ?3 AND window_end <= ?4
                 ORDER BY window_start, gateway, epoch, seq LIMIT ?5",
            )?;
            let mut rows = stmt.query(params![q.site, q.period.as_str(), q.from, q.to, q.limit])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(StoredKpi {
                    site: r.get(0)?,
                    gateway: r.get(1)?,
                    seq: to_u64(r.get(2)?, "seq")?,
                    record: kpi_of(r, 3)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn kpis_latest(&self, site: String) -> Result<Vec<StoredKpi>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT k.site, k.gateway, k.seq, k.kpi, k.window_start, k.window_end, k.period,
                  k.tz, k.numerator, k.denominator, k.value, k.unit, k.coverage, k.quality,
                  k.tiers, k.factors, k.flags, k.formula_version
                 FROM kpi_records k
                 JOIN (SELECT kpi, period, MAX(window_start) AS ws FROM kpi_records
                       WHERE site = ?1 GROUP BY kpi, period) m
                   ON k.kpi = m.kpi AND k.period = m.period AND k.window_start = m.ws
                 WHERE k.site = ?1
                 ORDER BY k.kpi, k.period, k.gateway, k.epoch, k.seq",
            )?;
            let mut rows = stmt.query([site])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(StoredKpi {
                    site: r.get(0)?,
                    gateway: r.get(1)?,
                    seq: to_u64(r.get(2)?, "seq")?,
                    record: kpi_of(r, 3)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn ranges_above(
        &self,
        gateway: String,
        epoch: String,
        above: u64,
        limit: u32,
    ) -> Result<Vec<SeqRange>, StoreError> {
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT first_seq, last_seq, 0 FROM ledger
                   WHERE gateway = ?1 AND epoch = ?2 AND last_seq > ?3
                 UNION ALL
                 SELECT first_seq, last_seq, 1 FROM gaps
                   WHERE gateway = ?1 AND epoch = ?2 AND last_seq > ?3
                 ORDER BY 1, 2 LIMIT ?4",
            )?;
            let mut rows = stmt.query(params![gateway, epoch, to_i64(above, "seq")?, limit])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(SeqRange {
                    first: to_u64(r.get(0)?, "first_seq")?,
                    last: to_u64(r.get(1)?, "last_seq")?,
                    gap: r.get::<_, i64>(2)? == 1,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn apply_retention(
        &self,
        readings_before: Option<i64>,
        kpis_before: Option<i64>,
    ) -> Result<Retained, StoreError> {
        self.call(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let readings = match readings_before {
                Some(t) => tx.execute("DELETE FROM readings WHERE ts < ?1", [t])?,
                None => 0,
            };
            let kpis = match kpis_before {
                Some(t) => tx.execute("DELETE FROM kpi_records WHERE window_end < ?1", [t])?,
                None => 0,
            };
            tx.commit()?;
            Ok(Retained {
                readings: readings as u64,
                kpis: kpis as u64,
            })
        })
        .await
    }
}
