//! The PostgreSQL store, for a group of parks: several sinks in one shared subscription
//! writing to one database. tokio-postgres behind a deadpool pool, no TLS to the database
//! (run it on the same host or a private network).
//!
//! Transactions run at READ COMMITTED. Each begins by upserting its stream's `streams` row,
//! which locks it until commit: a second sink writing the same stream waits there, and its
//! following statements see what the first committed, so the ledger plan and the watermark
//! are computed over everything stored. A group of batches ([`Store::store_batches`]) is one
//! transaction (one WAL flush) that first locks every stream of the group in (gateway,
//! epoch) order, so two sinks storing groups over the same streams wait for each other
//! instead of deadlocking. The statements of the ingest path are prepared once per pooled
//! connection (deadpool's statement cache) rather than on every call. Migrations take a
//! transaction-scoped advisory lock, so sinks starting together migrate once.
//!
//! `readings` has no unique index (dedupe is the ledger's job), so it can be turned into a
//! TimescaleDB hypertable on `ts` (integer milliseconds) where the extension is installed.

use std::sync::Arc;

use deadpool_postgres::Transaction;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use fivezero_model::wire::{
    Batch, Gap, KpiBatch, KpiRecord, Reading, Status, StreamAck, Value, Window,
};
use tokio_postgres::{NoTls, Row, Statement};

use super::ledger::{self, ItemKind, LedgerRange, Plan};
use super::{
    Commit, DeadLetter, GatewayInfo, HashedBatch, KpiQuery, MAX_ACK_STREAMS, Outcome, Point,
    Quarantined, RawMessage, ReadingsQuery, Retained, SeqRange, SeriesInfo, SeriesQuery, Store,
    StoreError, StoredGap, StoredKpi, StoredReading, StreamInfo, enum_name, enum_of, from_json,
    json_text, mask_password, quality_name, run_indices, run_len, to_i64, to_u64,
};
use crate::validate::RejectReason;

/// Advisory lock key held while migrating ("fivezero" in ASCII).
const MIGRATION_LOCK: i64 = 0x6669_7665_7a65_726f;

/// Schema versions, applied in order; never edit one that shipped, add the next.
const MIGRATIONS: &[(u32, &str)] = &[
    (
        1,
        "CREATE TABLE streams (
        gateway TEXT NOT NULL, epoch TEXT NOT NULL, site TEXT NOT NULL,
        watermark BIGINT NOT NULL DEFAULT 0,
        first_seen BIGINT NOT NULL, last_seen BIGINT NOT NULL,
        PRIMARY KEY (gateway, epoch));
     CREATE TABLE ledger (
        gateway TEXT NOT NULL, epoch TEXT NOT NULL,
        first_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL, count BIGINT NOT NULL,
        kind TEXT NOT NULL, hash BYTEA NOT NULL, item_hashes BYTEA NOT NULL,
        received_at BIGINT NOT NULL,
        PRIMARY KEY (gateway, epoch, first_seq));
     CREATE INDEX ledger_last ON ledger (gateway, epoch, last_seq);
     CREATE TABLE readings (
        site TEXT NOT NULL, gateway TEXT NOT NULL, epoch TEXT NOT NULL, seq BIGINT NOT NULL,
        ts BIGINT NOT NULL, device TEXT NOT NULL, metric TEXT NOT NULL,
        value DOUBLE PRECISION, value_text TEXT, quality TEXT NOT NULL, reason TEXT);
     CREATE INDEX readings_series ON readings (site, device, metric, ts);
     CREATE INDEX readings_metric ON readings (site, metric, ts);
     CREATE INDEX readings_stream ON readings (gateway, epoch, seq);
     CREATE TABLE kpi_records (
        site TEXT NOT NULL, gateway TEXT NOT NULL, epoch TEXT NOT NULL, seq BIGINT NOT NULL,
        kpi TEXT NOT NULL, window_start BIGINT NOT NULL, window_end BIGINT NOT NULL,
        period TEXT NOT NULL, tz TEXT NOT NULL,
        numerator DOUBLE PRECISION, denominator DOUBLE PRECISION, value DOUBLE PRECISION,
        unit TEXT NOT NULL, coverage DOUBLE PRECISION NOT NULL, quality TEXT NOT NULL,
        tiers TEXT NOT NULL, factors TEXT NOT NULL, flags TEXT NOT NULL,
        formula_version BIGINT NOT NULL);
     CREATE INDEX kpi_window ON kpi_records (site, kpi, period, window_start);
     CREATE INDEX kpi_stream ON kpi_records (gateway, epoch, seq);
     CREATE TABLE gaps (
        gateway TEXT NOT NULL, epoch TEXT NOT NULL, site TEXT NOT NULL,
        first_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL, count BIGINT NOT NULL,
        reason TEXT NOT NULL, declared_at BIGINT NOT NULL, received_at BIGINT NOT NULL,
        PRIMARY KEY (gateway, epoch, first_seq, count));
     CREATE INDEX gaps_last ON gaps (gateway, epoch, last_seq);
     CREATE TABLE dead_letters (
        id BIGSERIAL PRIMARY KEY, received_at BIGINT NOT NULL,
        topic TEXT NOT NULL, payload BYTEA NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL);
     CREATE INDEX dead_letters_reason ON dead_letters (reason, received_at);
     CREATE TABLE quarantine (
        id BIGSERIAL PRIMARY KEY, received_at BIGINT NOT NULL,
        topic TEXT NOT NULL, gateway TEXT NOT NULL, epoch TEXT NOT NULL,
        first_seq BIGINT NOT NULL, count BIGINT NOT NULL, kind TEXT NOT NULL,
        hash BYTEA NOT NULL, payload BYTEA NOT NULL, detail TEXT NOT NULL);
     CREATE TABLE gateways (
        gateway TEXT PRIMARY KEY, site TEXT NOT NULL, state TEXT NOT NULL,
        status_ts BIGINT NOT NULL, last_seen BIGINT NOT NULL, version TEXT NOT NULL,
        epoch TEXT, profiles TEXT NOT NULL, committed_seq BIGINT, sink_acked_seq BIGINT,
        buffer_bytes BIGINT, oldest_unsent_ts BIGINT);",
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

/// The PostgreSQL store; clones share the pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    url: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("url", &self.url).finish()
    }
}

fn pool_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Pool(e.to_string())
}

/// Whether a name is safe as an unquoted schema identifier.
fn plain_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

impl PgStore {
    /// Connects to `url` (a pool of up to 8 connections) and applies the missing migrations.
    /// With `schema`, every connection works in that schema (created when missing); it must
    /// be lowercase letters, digits and `_`. The test suites use this to keep runs apart.
    ///
    /// # Errors
    /// A bad URL or schema name, an unreachable server, or a failed migration.
    pub async fn open(url: &str, schema: Option<&str>) -> Result<Self, StoreError> {
        let masked = mask_password(url);
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Url {
            url: masked.clone(),
            problem: format!("{e}"),
        })?;
        if let Some(schema) = schema {
            if !plain_identifier(schema) {
                return Err(StoreError::Url {
                    url: masked,
                    problem: format!("schema {schema:?} is not a plain lowercase identifier"),
                });
            }
            let (client, conn) = config.connect(NoTls).await?;
            let driver = tokio::spawn(conn);
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await?;
            drop(client);
            let _ = driver.await;
            config.options(format!("-c search_path={schema}"));
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(8)
            .build()
            .map_err(pool_error)?;
        let store = Self { pool, url: masked };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await?;
        let current: i64 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )
            .await?
            .get(0);
        let latest = MIGRATIONS.last().map_or(0, |m| m.0);
        if current > i64::from(latest) {
            return Err(StoreError::Schema(format!(
                "the database is at schema version {current}, newer than this build's {latest}"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|m| i64::from(m.0) > current) {
            tx.batch_execute(sql)
                .await
                .map_err(|e| StoreError::Schema(format!("migration {version}: {e}")))?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                &[&i64::from(*version), &now_ms()],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Drops a schema and everything in it (test clean-up).
    ///
    /// # Errors
    /// The server refuses, or the name is not a plain identifier.
    pub async fn drop_schema(url: &str, schema: &str) -> Result<(), StoreError> {
        if !plain_identifier(schema) {
            return Err(StoreError::Schema(format!(
                "{schema:?} is not a plain identifier"
            )));
        }
        let config: tokio_postgres::Config = url.parse()?;
        let (client, conn) = config.connect(NoTls).await?;
        let driver = tokio::spawn(conn);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await?;
        drop(client);
        let _ = driver.await;
        Ok(())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn lock_stream(
    tx: &Transaction<'_>,
    site: &str,
    gateway: &str,
    epoch: &str,
    at: i64,
) -> Result<u64, StoreError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO streams (gateway, epoch, site, watermark, first_seen, last_seen)
             VALUES ($1, $2, $3, 0, $4, $4)
             ON CONFLICT (gateway, epoch) DO UPDATE SET last_seen = excluded.last_seen
             RETURNING watermark",
        )
        .await?;
    let row = tx.query_one(&stmt, &[&gateway, &epoch, &site, &at]).await?;
    to_u64(row.get(0), "watermark")
}

/// Reads `(first_seq, last_seq)` pairs, the first two columns of `rows`.
fn seq_ranges(rows: &[Row]) -> Result<Vec<(u64, u64)>, StoreError> {
    rows.iter()
        .map(|r| {
            Ok((
                to_u64(r.get(0), "first_seq")?,
                to_u64(r.get(1), "last_seq")?,
            ))
        })
        .collect()
}

/// Recomputes the stream's watermark from the ledger and the gaps, stores it if higher.
///
/// Reads every gap above the watermark but the ledger only in chunks of
/// [`ledger::WATERMARK_CHUNK`] rows in `last_seq` order, stopping at the first hole
/// ([`ledger::scan_step`]), so rows stored far above a hole are not read again by every
/// message.
async fn update_watermark(
    tx: &Transaction<'_>,
    gateway: &str,
    epoch: &str,
    current: u64,
) -> Result<(), StoreError> {
    let cur = to_i64(current, "watermark")?;
    let gaps = tx
        .prepare_cached(
            "SELECT first_seq, last_seq FROM gaps
               WHERE gateway = $1 AND epoch = $2 AND last_seq > $3",
        )
        .await?;
    let gaps = seq_ranges(&tx.query(&gaps, &[&gateway, &epoch, &cur]).await?)?;
    let chunk_stmt = tx
        .prepare_cached(
            "SELECT first_seq, last_seq FROM ledger
               WHERE gateway = $1 AND epoch = $2 AND last_seq > $3
             ORDER BY last_seq LIMIT $4",
        )
        .await?;
    let limit = i64::try_from(ledger::WATERMARK_CHUNK).unwrap_or(i64::MAX);
    let mut w = current;
    loop {
        let above = to_i64(w, "watermark")?;
        let rows = tx
            .query(&chunk_stmt, &[&gateway, &epoch, &above, &limit])
            .await?;
        let chunk = seq_ranges(&rows)?;
        let step = ledger::scan_step(w, &chunk, chunk.len() >= ledger::WATERMARK_CHUNK, &gaps);
        w = step.watermark;
        if !step.more {
            break;
        }
    }
    if w > current {
        let w = to_i64(w, "watermark")?;
        let update = tx
            .prepare_cached(
                "UPDATE streams SET watermark = $3
                 WHERE gateway = $1 AND epoch = $2 AND watermark < $3",
            )
            .await?;
        tx.execute(&update, &[&gateway, &epoch, &w]).await?;
    }
    Ok(())
}

/// The gateway's watermarks, newest epochs first (see [`MAX_ACK_STREAMS`]).
const ACKS_SQL: &str = "SELECT epoch, watermark FROM streams WHERE gateway = $1
     ORDER BY last_seen DESC, epoch LIMIT $2";

async fn acks_of(
    client: &impl tokio_postgres::GenericClient,
    stmt: &Statement,
    gateway: &str,
) -> Result<Vec<StreamAck>, StoreError> {
    let limit = MAX_ACK_STREAMS as i64;
    let rows = client.query(stmt, &[&gateway, &limit]).await?;
    rows.iter()
        .map(|r| {
            let epoch: String = r.get(0);
            Ok(StreamAck {
                epoch: epoch
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("epoch {epoch:?}: {e}")))?,
                seq: to_u64(r.get(1), "watermark")?,
            })
        })
        .collect()
}

/// Inserts the index ranges of a message's entries: readings or KPI records.
#[derive(Clone, Copy)]
enum Entries<'a> {
    Readings(&'a Batch),
    Kpis(&'a KpiBatch),
}

async fn insert_readings(
    tx: &Transaction<'_>,
    b: &Batch,
    epoch: &str,
    range: std::ops::Range<usize>,
    first_seq: i64,
) -> Result<(), StoreError> {
    let rs: &[Reading] = b.readings.get(range).unwrap_or_default();
    let n = rs.len();
    let mut seqs = Vec::with_capacity(n);
    let (mut ts, mut devices, mut metrics) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut numbers, mut texts, mut qualities, mut reasons) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (i, r) in rs.iter().enumerate() {
        seqs.push(first_seq + i64::try_from(i).unwrap_or(i64::MAX));
        ts.push(r.ts);
        devices.push(r.device.as_str());
        metrics.push(r.metric.as_str());
        let (n, t) = match &r.value {
            Some(Value::Number(x)) => (Some(*x), None),
            Some(Value::Text(t)) => (None, Some(t.as_str())),
            None => (None, None),
        };
        numbers.push(n);
        texts.push(t);
        qualities.push(quality_name(r.quality));
        reasons.push(r.reason.as_deref());
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO readings (site, gateway, epoch, seq, ts, device, metric, value,
               value_text, quality, reason)
             SELECT $1, $2, $3, * FROM UNNEST($4::bigint[], $5::bigint[], $6::text[],
               $7::text[], $8::float8[], $9::text[], $10::text[], $11::text[])",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &b.site, &b.gateway, &epoch, &seqs, &ts, &devices, &metrics, &numbers, &texts,
            &qualities, &reasons,
        ],
    )
    .await?;
    Ok(())
}

async fn insert_kpis(
    tx: &Transaction<'_>,
    k: &KpiBatch,
    epoch: &str,
    range: std::ops::Range<usize>,
    first_seq: i64,
) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO kpi_records (site, gateway, epoch, seq, kpi, window_start, window_end,
             period, tz, numerator, denominator, value, unit, coverage, quality, tiers, factors,
             flags, formula_version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
             $17, $18, $19)",
        )
        .await?;
    for (i, r) in k.records.get(range).unwrap_or_default().iter().enumerate() {
        let seq = first_seq + i64::try_from(i).unwrap_or(i64::MAX);
        tx.execute(
            &stmt,
            &[
                &k.site,
                &k.gateway,
                &epoch,
                &seq,
                &r.kpi,
                &r.window.start,
                &r.window.end,
                &r.window.period.as_str(),
                &r.window.tz,
                &r.numerator,
                &r.denominator,
                &r.value,
                &r.unit,
                &r.coverage,
                &enum_name(&r.quality),
                &json_text(&r.tiers),
                &json_text(&r.factors),
                &json_text(&r.flags),
                &i64::from(r.formula_version),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Stores one message's readings or KPI records inside `tx` (which the caller commits):
/// lock the stream, plan against the ledger, write what is new, recompute the watermark.
async fn store_entries_in(
    tx: &Transaction<'_>,
    entries: Entries<'_>,
    item_hashes: &[u8],
    raw: &RawMessage,
) -> Result<Commit, StoreError> {
    let (site, gateway, epoch, first_seq, count, kind) = match entries {
        Entries::Readings(b) => (
            &b.site,
            &b.gateway,
            b.epoch,
            b.first_seq,
            b.count,
            ItemKind::Readings,
        ),
        Entries::Kpis(k) => (
            &k.site,
            &k.gateway,
            k.epoch,
            k.first_seq,
            k.count,
            ItemKind::Kpis,
        ),
    };
    let epoch = epoch.to_string();
    let last = first_seq + u64::from(count) - 1;
    let (first_i, last_i) = (to_i64(first_seq, "first_seq")?, to_i64(last, "last_seq")?);
    let watermark = lock_stream(tx, site, gateway, &epoch, raw.received_at).await?;
    let overlapping = tx
        .prepare_cached(
            "SELECT first_seq, last_seq, kind, item_hashes FROM ledger
             WHERE gateway = $1 AND epoch = $2 AND last_seq >= $3 AND first_seq <= $4",
        )
        .await?;
    let rows = tx
        .query(&overlapping, &[gateway, &epoch, &first_i, &last_i])
        .await?;
    let mut existing = Vec::with_capacity(rows.len());
    for r in &rows {
        let kind_name: String = r.get(2);
        existing.push(LedgerRange {
            first: to_u64(r.get(0), "first_seq")?,
            last: to_u64(r.get(1), "last_seq")?,
            kind: ItemKind::from_name(&kind_name)
                .ok_or_else(|| StoreError::Corrupt(format!("ledger kind {kind_name:?}")))?,
            item_hashes: r.get(3),
        });
    }
    let outcome = match ledger::plan(first_seq, last, kind, item_hashes, &existing) {
        Plan::Duplicate => Outcome::Duplicate {
            items: u64::from(count),
        },
        Plan::Conflict { detail } => {
            tx.execute(
                "INSERT INTO quarantine (received_at, topic, gateway, epoch, first_seq, count,
                 kind, hash, payload, detail)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                &[
                    &raw.received_at,
                    &raw.topic,
                    gateway,
                    &epoch,
                    &first_i,
                    &i64::from(count),
                    &kind.as_str(),
                    &ledger::content_hash(item_hashes),
                    &raw.payload,
                    &detail,
                ],
            )
            .await?;
            Outcome::Conflict { detail }
        }
        Plan::Insert { runs, duplicates } => {
            let insert = tx
                .prepare_cached(
                    "INSERT INTO ledger (gateway, epoch, first_seq, last_seq, count, kind,
                     hash, item_hashes, received_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .await?;
            for (range, &(a, b)) in run_indices(first_seq, &runs).into_iter().zip(&runs) {
                let hashes = item_hashes
                    .get(range.start * ledger::ITEM_HASH_LEN..range.end * ledger::ITEM_HASH_LEN)
                    .unwrap_or_default();
                let (a_i, b_i) = (to_i64(a, "first_seq")?, to_i64(b, "last_seq")?);
                tx.execute(
                    &insert,
                    &[
                        gateway,
                        &epoch,
                        &a_i,
                        &b_i,
                        &(b_i - a_i + 1),
                        &kind.as_str(),
                        &ledger::content_hash(hashes),
                        &hashes,
                        &raw.received_at,
                    ],
                )
                .await?;
                match entries {
                    Entries::Readings(b) => insert_readings(tx, b, &epoch, range, a_i).await?,
                    Entries::Kpis(k) => insert_kpis(tx, k, &epoch, range, a_i).await?,
                }
            }
            update_watermark(tx, gateway, &epoch, watermark).await?;
            Outcome::Stored {
                items: run_len(&runs),
                duplicates,
            }
        }
    };
    let acks = tx.prepare_cached(ACKS_SQL).await?;
    let acks = acks_of(&**tx, &acks, gateway).await?;
    Ok(Commit { outcome, acks })
}

fn kpi_of(r: &Row, at: usize) -> Result<KpiRecord, StoreError> {
    let period: String = r.get(at + 3);
    let quality: String = r.get(at + 10);
    let version: i64 = r.get(at + 14);
    Ok(KpiRecord {
        kpi: r.get(at),
        window: Window {
            start: r.get(at + 1),
            end: r.get(at + 2),
            period: enum_of(&period)?,
            tz: r.get(at + 4),
        },
        numerator: r.get(at + 5),
        denominator: r.get(at + 6),
        value: r.get(at + 7),
        unit: r.get(at + 8),
        coverage: r.get(at + 9),
        quality: enum_of(&quality)?,
        tiers: from_json(r.get(at + 11))?,
        factors: from_json(r.get(at + 12))?,
        flags: from_json(r.get(at + 13))?,
        formula_version: u32::try_from(version)
            .map_err(|_| StoreError::Corrupt(format!("formula_version {version}")))?,
    })
}

impl Store for PgStore {
    /// All in one transaction: one commit (one WAL flush) for the lot. The group's streams
    /// are locked first, in (gateway, epoch) order, so two sinks storing groups over the same
    /// streams wait for each other instead of deadlocking.
    async fn store_batches(
        &self,
        batches: Vec<Arc<HashedBatch>>,
    ) -> Result<Vec<Commit>, StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await?;
        if batches.len() > 1 {
            let mut streams: Vec<(&str, String, &str, i64)> = batches
                .iter()
                .map(|h| {
                    let b = h.batch();
                    (
                        b.gateway.as_str(),
                        b.epoch.to_string(),
                        b.site.as_str(),
                        h.raw().received_at,
                    )
                })
                .collect();
            streams.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            streams.dedup_by(|a, b| (a.0, &a.1) == (b.0, &b.1));
            for (gateway, epoch, site, at) in &streams {
                lock_stream(&tx, site, gateway, epoch, *at).await?;
            }
        }
        let mut commits = Vec::with_capacity(batches.len());
        for h in &batches {
            commits.push(
                store_entries_in(&tx, Entries::Readings(h.batch()), h.item_hashes(), h.raw())
                    .await?,
            );
        }
        tx.commit().await?;
        Ok(commits)
    }

    async fn store_kpis(&self, kpis: KpiBatch, raw: RawMessage) -> Result<Commit, StoreError> {
        let item_hashes = ledger::kpi_hashes(&kpis.records);
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await?;
        let commit = store_entries_in(&tx, Entries::Kpis(&kpis), &item_hashes, &raw).await?;
        tx.commit().await?;
        Ok(commit)
    }

    async fn store_gap(&self, gap: Gap, received_at: i64) -> Result<Commit, StoreError> {
        let epoch = gap.epoch.to_string();
        let last = gap.first_seq + u64::from(gap.count) - 1;
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await?;
        let watermark = lock_stream(&tx, &gap.site, &gap.gateway, &epoch, received_at).await?;
        let n = tx
            .execute(
                "INSERT INTO gaps (gateway, epoch, site, first_seq, last_seq, count, reason,
                 declared_at, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT DO NOTHING",
                &[
                    &gap.gateway,
                    &epoch,
                    &gap.site,
                    &to_i64(gap.first_seq, "first_seq")?,
                    &to_i64(last, "last_seq")?,
                    &i64::from(gap.count),
                    &enum_name(&gap.reason),
                    &gap.declared_at,
                    &received_at,
                ],
            )
            .await?;
        let outcome = if n == 1 {
            update_watermark(&tx, &gap.gateway, &epoch, watermark).await?;
            Outcome::Stored {
                items: u64::from(gap.count),
                duplicates: 0,
            }
        } else {
            Outcome::Duplicate {
                items: u64::from(gap.count),
            }
        };
        let acks = tx.prepare_cached(ACKS_SQL).await?;
        let acks = acks_of(&*tx, &acks, &gap.gateway).await?;
        tx.commit().await?;
        Ok(Commit { outcome, acks })
    }

    async fn store_status(&self, status: Status, received_at: i64) -> Result<(), StoreError> {
        let b = status.buffer.as_ref();
        let opt = |v: Option<u64>, what: &str| v.map(|v| to_i64(v, what)).transpose();
        let client = self.pool.get().await.map_err(pool_error)?;
        client
            .execute(
                "INSERT INTO gateways (gateway, site, state, status_ts, last_seen, version, epoch,
                 profiles, committed_seq, sink_acked_seq, buffer_bytes, oldest_unsent_ts)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (gateway) DO UPDATE SET site = excluded.site,
                 state = excluded.state, status_ts = excluded.status_ts,
                 last_seen = excluded.last_seen, version = excluded.version,
                 epoch = COALESCE(excluded.epoch, gateways.epoch),
                 profiles = excluded.profiles,
                 committed_seq = COALESCE(excluded.committed_seq, gateways.committed_seq),
                 sink_acked_seq = COALESCE(excluded.sink_acked_seq, gateways.sink_acked_seq),
                 buffer_bytes = COALESCE(excluded.buffer_bytes, gateways.buffer_bytes),
                 oldest_unsent_ts = excluded.oldest_unsent_ts",
                &[
                    &status.gateway,
                    &status.site,
                    &enum_name(&status.state),
                    &status.ts,
                    &received_at,
                    &status.version,
                    &status.epoch.map(|e| e.to_string()),
                    &json_text(&status.profiles),
                    &opt(b.map(|b| b.committed_seq), "committed_seq")?,
                    &opt(b.map(|b| b.sink_acked_seq), "sink_acked_seq")?,
                    &opt(b.map(|b| b.bytes), "bytes")?,
                    &b.and_then(|b| b.oldest_unsent_ts),
                ],
            )
            .await?;
        Ok(())
    }

    async fn dead_letter(
        &self,
        raw: RawMessage,
        reason: RejectReason,
        detail: String,
    ) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client
            .execute(
                "INSERT INTO dead_letters (received_at, topic, payload, reason, detail)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &raw.received_at,
                    &raw.topic,
                    &raw.payload,
                    &reason.as_str(),
                    &detail,
                ],
            )
            .await?;
        Ok(())
    }

    async fn watermarks(&self, gateway: String) -> Result<Vec<StreamAck>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let stmt = client.prepare_cached(ACKS_SQL).await?;
        acks_of(&**client, &stmt, &gateway).await
    }

    async fn streams(&self) -> Result<Vec<StreamInfo>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                "SELECT s.site, s.gateway, s.epoch, s.watermark, s.first_seen, s.last_seen,
                  (SELECT COALESCE(SUM(count), 0)::BIGINT FROM ledger l WHERE l.gateway = s.gateway
                     AND l.epoch = s.epoch AND l.kind = 'readings'),
                  (SELECT COALESCE(SUM(count), 0)::BIGINT FROM ledger l WHERE l.gateway = s.gateway
                     AND l.epoch = s.epoch AND l.kind = 'kpis'),
                  (SELECT COALESCE(SUM(count), 0)::BIGINT FROM gaps g WHERE g.gateway = s.gateway
                     AND g.epoch = s.epoch)
                 FROM streams s ORDER BY s.gateway, s.epoch",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StreamInfo {
                    site: r.get(0),
                    gateway: r.get(1),
                    epoch: r.get(2),
                    watermark: to_u64(r.get(3), "watermark")?,
                    first_seen: r.get(4),
                    last_seen: r.get(5),
                    readings: to_u64(r.get(6), "count")?,
                    kpis: to_u64(r.get(7), "count")?,
                    gap_seqs: to_u64(r.get(8), "count")?,
                })
            })
            .collect()
    }

    async fn gateways(&self) -> Result<Vec<GatewayInfo>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                "SELECT g.gateway, g.site, g.state, g.last_seen, g.version, g.epoch,
                  g.committed_seq - g.sink_acked_seq, s.watermark
                 FROM gateways g LEFT JOIN streams s ON s.gateway = g.gateway AND s.epoch = g.epoch
                 ORDER BY g.site, g.gateway",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(GatewayInfo {
                    gateway: r.get(0),
                    site: r.get(1),
                    state: r.get(2),
                    last_seen: r.get(3),
                    version: r.get(4),
                    epoch: r.get(5),
                    backlog: r
                        .get::<_, Option<i64>>(6)
                        .map(|v| u64::try_from(v).unwrap_or(0)),
                    watermark: r
                        .get::<_, Option<i64>>(7)
                        .map(|v| to_u64(v, "watermark"))
                        .transpose()?,
                })
            })
            .collect()
    }

    async fn readings(&self, q: ReadingsQuery) -> Result<Vec<StoredReading>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let limit = i64::from(q.limit);
        let rows = client
            .query(
                "SELECT gateway, epoch, seq, ts, device, metric, value, value_text, quality, reason
                 FROM readings
                 WHERE ($1::text IS NULL OR site = $1) AND ($2::text IS NULL OR gateway = $2)
                   AND ($3::text IS NULL OR device = $3) AND ($4::text IS NULL OR metric = $4)
                   AND ($5::bigint IS NULL OR ts >= $5) AND ($6::bigint IS NULL OR ts < $6)
                 ORDER BY ts, gateway, epoch, seq LIMIT $7",
                &[
                    &q.site, &q.gateway, &q.device, &q.metric, &q.from, &q.to, &limit,
                ],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let number: Option<f64> = r.get(6);
                let text: Option<String> = r.get(7);
                let quality: String = r.get(8);
                Ok(StoredReading {
                    gateway: r.get(0),
                    epoch: r.get(1),
                    seq: to_u64(r.get(2), "seq")?,
                    reading: Reading {
                        ts: r.get(3),
                        device: r.get(4),
                        metric: r.get(5),
                        value: number.map(Value::Number).or(text.map(Value::Text)),
                        quality: enum_of(&quality)?,
                        reason: r.get(9),
                    },
                })
            })
            .collect()
    }

    async fn kpi_records(&self, gateway: String) -> Result<Vec<StoredKpi>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                "SELECT site, gateway, seq, kpi, window_start, window_end, period, tz, numerator,
                  denominator, value, unit, coverage, quality, tiers, factors, flags,
                  formula_version
                 FROM kpi_records WHERE gateway = $1 ORDER BY epoch, seq",
                &[&gateway],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredKpi {
                    site: r.get(0),
                    gateway: r.get(1),
                    seq: to_u64(r.get(2), "seq")?,
                    record: kpi_of(r, 3)?,
                })
            })
            .collect()
    }

    async fn gaps(&self, gateway: String) -> Result<Vec<StoredGap>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                "SELECT gateway, epoch, first_seq, count, reason FROM gaps WHERE gateway = $1
                 ORDER BY epoch, first_seq",
                &[&gateway],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredGap {
                    gateway: r.get(0),
                    epoch: r.get(1),
                    first_seq: to_u64(r.get(2), "first_seq")?,
                    count: to_u64(r.get(3), "count")?,
                    reason: r.get(4),
                })
            })
            .collect()
    }

    async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                "SELECT id, received_at, topic, payload, reason, detail FROM dead_letters
                 ORDER BY id DESC LIMIT $1",
                &[&i64::from(limit)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| DeadLetter {
                id: r.get(0),
                received_at: r.get(1),
                topic: r.get(2),
                payload: r.get(3),
                reason: r.get(4),
                detail: r.get(5),
            })
            .collect())
    }

    async fn quarantined(&self, limit: u32) -> Result<Vec<Quarantined>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                "SELECT id, gateway, epoch, first_seq, count, payload, detail FROM quarantine
                 ORDER BY id DESC LIMIT $1",
                &[&i64::from(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Quarantined {
                    id: r.get(0),
                    gateway: r.get(1),
                    epoch: r.get(2),
                    first_seq: to_u64(r.get(3), "first_seq")?,
                    count: to_u64(r.get(4), "count")?,
                    payload: r.get(5),
                    detail: r.get(6),
                })
            })
            .collect()
    }

    async fn schema_version(&self) -> Result<u32, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let v: Option<i64> = client
            .query_one("SELECT MAX(version) FROM schema_migrations", &[])
            .await?
            .get(0);
        let v = v.unwrap_or(0);
        u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("schema version {v}")))
    }

    async fn sites(&self) -> Result<Vec<String>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                "SELECT site FROM streams UNION SELECT site FROM gateways ORDER BY 1",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn site_series(&self, site: String) -> Result<Vec<SeriesInfo>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                "SELECT device, metric, COUNT(*), MIN(ts), MAX(ts) FROM readings
                 WHERE site = $1 GROUP BY device, metric ORDER BY device, metric",
                &[&site],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SeriesInfo {
                    device: r.get(0),
                    metric: r.get(1),
                    readings: to_u64(r.get(2), "count")?,
                    first_ts: r.get(3),
                    last_ts: r.get(4),
                })
            })
            .collect()
    }

    async fn series_points(&self, q: SeriesQuery) -> Result<Vec<Point>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let limit = i64::from(q.limit);
        let rows = client
            .query(
                "SELECT ts, value, quality FROM readings
                 WHERE site = $1 AND device = $2 AND metric = $3 AND ts >= $4 AND ts < $5
                 ORDER BY ts LIMIT $6",
                &[&q.site, &q.device, &q.metric, &q.from, &q.to, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Point {
                ts: r.get(0),
                value: r.get(1),
                error: r.get::<_, &str>(2) == "error",
            })
            .collect())
    }

    async fn kpis_in_range(&self, q: KpiQuery) -> Result<Vec<StoredKpi>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let limit = i64::from(q.limit);
        let rows = client
            .query(
                "SELECT site, gateway, seq, kpi, window_start, window_end, period, tz, numerator,
                  denominator, value, unit, coverage, quality, tiers, factors, flags,
                  formula_version
                 FROM kpi_records
                 WHERE site = $1 AND period = $2 AND window_start >= $3 AND window_end <= $4
                 ORDER BY window_start, gateway, epoch, seq LIMIT $5",
                &[&q.site, &q.period.as_str(), &q.from, &q.to, &limit],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredKpi {
                    site: r.get(0),
                    gateway: r.get(1),
                    seq: to_u64(r.get(2), "seq")?,
                    record: kpi_of(r, 3)?,
                })
            })
            .collect()
    }

    async fn kpis_latest(&self, site: String) -> Result<Vec<StoredKpi>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                "SELECT k.site, k.gateway, k.seq, k.kpi, k.window_start, k.window_end, k.period,
                  k.tz, k.numerator, k.denominator, k.value, k.unit, k.coverage, k.quality,
                  k.tiers, k.factors, k.flags, k.formula_version
                 FROM kpi_records k
                 JOIN (SELECT kpi, period, MAX(window_start) AS ws FROM kpi_records
                       WHERE site = $1 GROUP BY kpi, period) m
                   ON k.kpi = m.kpi AND k.period = m.period AND k.window_start = m.ws
                 WHERE k.site = $1
                 ORDER BY k.kpi, k.period, k.gateway, k.epoch, k.seq",
                &[&site],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredKpi {
                    site: r.get(0),
                    gateway: r.get(1),
                    seq: to_u64(r.get(2), "seq")?,
                    record: kpi_of(r, 3)?,
                })
            })
            .collect()
    }

    async fn ranges_above(
        &self,
        gateway: String,
        epoch: String,
        above: u64,
        limit: u32,
    ) -> Result<Vec<SeqRange>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let above = to_i64(above, "seq")?;
        let limit = i64::from(limit);
        let rows = client
            .query(
                "SELECT first_seq, last_seq, false FROM ledger
                   WHERE gateway = $1 AND epoch = $2 AND last_seq > $3
                 UNION ALL
                 SELECT first_seq, last_seq, true FROM gaps
                   WHERE gateway = $1 AND epoch = $2 AND last_seq > $3
                 ORDER BY 1, 2 LIMIT $4",
                &[&gateway, &epoch, &above, &limit],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SeqRange {
                    first: to_u64(r.get(0), "first_seq")?,
                    last: to_u64(r.get(1), "last_seq")?,
                    gap: r.get(2),
                })
            })
            .collect()
    }

    async fn apply_retention(
        &self,
        readings_before: Option<i64>,
        kpis_before: Option<i64>,
    ) -> Result<Retained, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let readings = match readings_before {
            Some(t) => {
                client
                    .execute("DELETE FROM readings WHERE ts < $1", &[&t])
                    .await?
            }
            None => 0,
        };
        let kpis = match kpis_before {
            Some(t) => {
                client
                    .execute("DELETE FROM kpi_records WHERE window_end < $1", &[&t])
                    .await?
            }
            None => 0,
        };
        Ok(Retained { readings, kpis })
    }
}
