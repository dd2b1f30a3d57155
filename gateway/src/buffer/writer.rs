//! The writer thread: the only owner of the SQLite connection. It takes commands from a
//! channel (bounded by a semaphore on the async side), runs each against the store, applies
//! the committed effects to the core, and publishes a snapshot of the figures after each.
//! Between commands it does the housekeeping: age eviction, chunked deletion of acknowledged
//! rows, dropping drained old streams, truncating the WAL after a drain.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use fivezero_model::wire::{Epoch, KpiRecord};
use rusqlite::Connection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tracing::{debug, error, info, warn};

use super::codec::{self, Interner, Names};
use super::state::{Admit, FileUsage, GapDone, Kind, SinkAck, State};
use super::store::{self, Damaged, NewRow, NewRows, StoreError};
use super::{AppendError, Appended, Clock, Shared};
use crate::outbox::{Lane, Limits, OutboxError, Outgoing, OutgoingGap};
use crate::poll::DeviceReadings;

/// How often the writer does its housekeeping when idle.
const TICK: Duration = Duration::from_secs(1);

/// The WAL is truncated after a drain when it is larger than this…
const WAL_TRUNCATE_BYTES: u64 = 4 * 1024 * 1024;
/// …at most this often.
const WAL_TRUNCATE_EVERY_MS: i64 = 60_000;

/// What to append, in one transaction.
#[derive(Debug)]
pub(crate) enum Item {
    /// Poll cycles, one row each.
    Readings(Vec<DeviceReadings>),
    /// KPI records (one row), and the KPI engine's state to store in the same transaction.
    Kpis(Vec<KpiRecord>, Option<Vec<u8>>),
}

impl Item {
    /// Sequences of each row.
    fn counts(&self) -> Vec<u32> {
        let n = |len: usize| u32::try_from(len).unwrap_or(u32::MAX);
        match self {
            Self::Readings(cycles) => cycles.iter().map(|c| n(c.readings.len())).collect(),
            Self::Kpis(k, _) => vec![n(k.len())],
        }
    }
}

type Reply<T> = oneshot::Sender<T>;

/// A request to the writer.
#[derive(Debug)]
pub(crate) enum Command {
    Append(Item, Reply<Result<Vec<Appended>, AppendError>>),
    Pending(Lane, Limits, Reply<Result<Vec<Outgoing>, OutboxError>>),
    BrokerAcked(Epoch, u64, u32, Reply<Result<(), OutboxError>>),
    SinkAcked(Epoch, u64, Reply<Result<(), OutboxError>>),
    PendingGaps(Reply<Result<Vec<OutgoingGap>, OutboxError>>),
    GapPublished(i64, Reply<Result<(), OutboxError>>),
    Maintain(Reply<()>),
    Replay(Reply<Result<(), OutboxError>>),
    Inventory(Reply<Result<store::Inventory, OutboxError>>),
    SaveKpiState(Vec<u8>, Reply<Result<(), OutboxError>>),
    LoadKpiState(Reply<Result<Option<Vec<u8>>, OutboxError>>),
    Close(Reply<()>),
}

/// A command with the permit that bounds the queue.
#[derive(Debug)]
pub(crate) struct Envelope {
    pub(crate) command: Command,
    pub(crate) permit: OwnedSemaphorePermit,
}

fn storage(e: &StoreError) -> OutboxError {
    OutboxError::Storage(e.to_string())
}

/// The thread's state.
pub(crate) struct Writer {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
    pub(crate) state: State,
    pub(crate) names: Names,
    pub(crate) gateway: String,
    pub(crate) site: String,
    pub(crate) clock: Clock,
    pub(crate) shared: Arc<Shared>,
    /// More acknowledged rows to delete: go on at once.
    pub(crate) cleanup: bool,
    /// A deletion failed: try again at the next tick.
    pub(crate) retry: bool,
    pub(crate) last_tick_ms: i64,
    pub(crate) last_truncate_ms: i64,
    pub(crate) file: FileUsage,
    pub(crate) damaged: HashSet<i64>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("path", &self.path)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Writer {
    fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Runs until every sender is gone or [`Command::Close`].
    pub(crate) fn run(mut self, rx: Receiver<Envelope>, permits: Arc<Semaphore>) {
        self.publish();
        let closed = loop {
            let wait = if self.cleanup { Duration::ZERO } else { TICK };
            match rx.recv_timeout(wait) {
                Ok(Envelope { command, permit }) => {
                    drop(permit);
                    if let Command::Close(reply) = command {
                        self.close();
                        permits.close();
                        break Some(reply);
                    }
                    self.handle(command);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break None,
            }
            let now = self.now();
            if self.cleanup
                || now.saturating_sub(self.last_tick_ms) >= 1_000
                || now < self.last_tick_ms
            {
                self.housekeeping(now);
            }
            self.publish();
        };
        // Close the connection before answering, so a caller that reopens finds it free.
        drop(self);
        if let Some(reply) = closed {
            let _ = reply.send(());
        }
    }

    /// Publishes the figures, then answers: a caller that reads `stats()` after its call
    /// returned sees its effect.
    fn answer<T>(&mut self, reply: Reply<T>, value: T) {
        self.publish();
        let _ = reply.send(value);
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Append(item, reply) => {
                let v = self.append(item);
                self.answer(reply, v);
            }
            Command::Pending(lane, limits, reply) => {
                let v = self.pending(lane, limits);
                self.answer(reply, v);
            }
            Command::BrokerAcked(epoch, first, count, reply) => {
                let v = self.broker_acked(epoch, first, count);
                self.answer(reply, v);
            }
            Command::SinkAcked(epoch, seq, reply) => {
                let v = self.sink_acked(epoch, seq);
                self.answer(reply, v);
            }
            Command::PendingGaps(reply) => {
                let result =
                    store::pending_gaps(&self.conn, &self.state, &self.gateway, &self.site)
                        .map_err(|e| storage(&e));
                if let Ok(gaps) = &result {
                    let ids: Vec<i64> = gaps.iter().map(|g| g.id).collect();
                    self.state.on_gaps_listed(&ids);
                }
                self.answer(reply, result);
            }
            Command::GapPublished(id, reply) => {
                let v = self.gap_published(id);
                self.answer(reply, v);
            }
            Command::Maintain(reply) => {
                let now = self.now();
                self.housekeeping(now);
                while self.cleanup {
                    let before = self.state.totals();
                    self.housekeeping(now);
                    if self.state.totals() == before {
                        break;
                    }
                }
                self.answer(reply, ());
            }
            Command::Replay(reply) => {
                let v = self.replay();
                self.answer(reply, v);
            }
            Command::Inventory(reply) => {
                let v = store::inventory(&self.conn).map_err(|e| storage(&e));
                self.answer(reply, v);
            }
            Command::SaveKpiState(bytes, reply) => {
                let v = store::save_kpi_state(&mut self.conn, &bytes).map_err(|e| {
                    self.rollback();
                    OutboxError::Storage(e.to_string())
                });
                self.answer(reply, v);
            }
            Command::LoadKpiState(reply) => {
                let v = store::load_kpi_state(&mut self.conn)
                    .map_err(|e| OutboxError::Storage(e.to_string()));
                self.answer(reply, v);
            }
            Command::Close(reply) => {
                let _ = reply.send(());
            }
        }
    }

    // --------------------------------------------------------------------------------------
    // Appending
    // --------------------------------------------------------------------------------------

    fn append(&mut self, item: Item) -> Result<Vec<Appended>, AppendError> {
        let counts = item.counts();
        let count = counts.iter().fold(0u32, |a, &c| a.saturating_add(c));
        let now = self.now();
        if self.state.admit(now) == Admit::Refuse {
            self.state.on_append_refused(u64::from(count));
            return Err(AppendError::DiskFull {
                dropped: count,
                detail: "the disk was full at the last attempt; the next probe is within 10 s"
                    .into(),
            });
        }
        let (payloads, new_names) = {
            let mut interner = Interner::new(&self.names);
            let payloads: Vec<(Kind, Vec<u8>)> = match &item {
                Item::Readings(cycles) => cycles
                    .iter()
                    .map(|r| {
                        (
                            Kind::Readings,
                            codec::encode_readings(&r.device, &r.readings, &mut interner),
                        )
                    })
                    .collect(),
                Item::Kpis(k, _) => vec![(Kind::Kpi, codec::encode_kpis(k))],
            };
            (payloads, interner.into_new())
        };
        let rows: Vec<NewRow<'_>> = payloads
            .iter()
            .zip(&counts)
            .map(|((kind, payload), &count)| NewRow {
                kind: *kind,
                count,
                payload,
            })
            .collect();
        let new = NewRows {
            rows: &rows,
            new_names: &new_names,
            kpi_state: match &item {
                Item::Kpis(_, state) => state.as_deref(),
                Item::Readings(_) => None,
            },
        };
        let mut result = store::append(&mut self.conn, &self.state, &self.path, &new, now);
        if matches!(result, Err(StoreError::OutOfStep)) {
            warn!(path = %self.path.display(), "The buffer database is ahead of memory (a commit reported as failed landed); reloading.");
            match self.reload(true) {
                Ok(()) => {
                    result = store::append(&mut self.conn, &self.state, &self.path, &new, now);
                }
                Err(e) => result = Err(e),
            }
        }
        match result {
            Ok(done) => {
                if self.state.on_write_ok() {
                    info!(path = %self.path.display(), "Buffer appends resumed: the disk takes writes again.");
                }
                for (id, name) in new_names {
                    self.names.insert(id, &name);
                }
                let evicted = !done.evicted.is_empty();
                for plan in &done.evicted {
                    self.state.on_evicted(plan);
                    let seqs: u64 = plan.gaps.iter().map(|g| g.last_seq - g.first_seq + 1).sum();
                    debug!(
                        seqs,
                        rows = plan.rows.len(),
                        "Evicted the oldest rows under the byte budget."
                    );
                }
                let epoch = self.state.current().epoch;
                let mut appended = Vec::with_capacity(done.rows.len());
                for (row, &count) in done.rows.iter().zip(&counts) {
                    self.state.on_appended(row, u64::from(count), now);
                    appended.push(Appended {
                        epoch,
                        first_seq: row.first_seq,
                        count,
                    });
                }
                if evicted {
                    self.refresh_oldest();
                }
                self.shared
                    .committed
                    .send_replace(self.state.current().committed());
                Ok(appended)
            }
            Err(e) => {
                self.rollback();
                let disk = e.is_disk();
                if self.state.on_append_failed(now, disk, u64::from(count)) {
                    error!(
                        path = %self.path.display(),
                        error = %e,
                        dropped_total = self.state.stats(now, self.file, 0).counters.dropped_disk_full,
                        "Buffer append failed; readings dropped (reason disk_full when the disk is full or failing). Retrying at most every 10 s."
                    );
                }
                if disk {
                    // A full WAL can be emptied into free pages of the database.
                    let _ = store::checkpoint_truncate(&self.conn);
                    Err(AppendError::DiskFull {
                        dropped: count,
                        detail: e.to_string(),
                    })
                } else {
                    Err(AppendError::Storage {
                        dropped: count,
                        detail: e.to_string(),
                    })
                }
            }
        }
    }

    fn rollback(&self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    fn reload(&mut self, keep_acks: bool) -> Result<(), StoreError> {
        let loaded = store::load(&self.conn)?;
        self.names = store::load_names(&self.conn)?;
        self.state.reload(
            loaded.current,
            loaded.old,
            loaded.totals,
            loaded.oldest_created_ms,
            keep_acks,
        );
        Ok(())
    }

    fn refresh_oldest(&mut self) {
        match store::oldest(&self.conn) {
            Ok(oldest) => self.state.set_oldest(oldest),
            Err(e) => debug!(error = %e, "Could not read the oldest row's time."),
        }
    }

    // --------------------------------------------------------------------------------------
    // Publishing
    // --------------------------------------------------------------------------------------

    fn pending(&mut self, lane: Lane, limits: Limits) -> Result<Vec<Outgoing>, OutboxError> {
        let mut damaged = Damaged::default();
        let out = store::pending(
            &self.conn,
            &mut self.state,
            &self.names,
            &self.gateway,
            &self.site,
            lane,
            limits,
            &mut damaged,
        )
        .map_err(|e| storage(&e))?;
        for (id, e) in damaged.0 {
            if self.damaged.insert(id) {
                error!(row = id, error = %e, "A buffered row cannot be decoded and is skipped; it stays until evicted.");
            }
        }
        Ok(out)
    }

    fn broker_acked(&mut self, epoch: Epoch, first: u64, count: u32) -> Result<(), OutboxError> {
        let Some((stream, first, last)) = self.state.broker_acked(epoch, first, count) else {
            debug!(
                %epoch,
                first,
                count, "Ignored a broker acknowledgement that matches nothing in flight."
            );
            return Ok(());
        };
        if self.state.retain() == super::RetainUntil::BrokerAck {
            let rows = store::rows_overlapping(&self.conn, stream, first, last)
                .map_err(|e| storage(&e))?;
            let done: Vec<_> = rows
                .into_iter()
                .filter(|r| self.state.row_finished(r))
                .collect();
            if !done.is_empty() {
                match store::delete_rows(&mut self.conn, &done) {
                    Ok(()) => {
                        self.state.on_deleted(&done);
                        self.refresh_oldest();
                    }
                    Err(e) => {
                        self.rollback();
                        warn!(error = %e, "Could not delete acknowledged rows; will retry (no data lost).");
                        self.retry = true;
                    }
                }
            }
        }
        Ok(())
    }

    fn sink_acked(&mut self, epoch: Epoch, seq: u64) -> Result<(), OutboxError> {
        match self.state.sink_acked(epoch, seq) {
            SinkAck::Ignored(why) => {
                debug!(%epoch, seq, why, "Ignored a sink watermark.");
                Ok(())
            }
            SinkAck::Advance {
                stream,
                seq,
                rotate,
            } => {
                if rotate {
                    error!(
                        %epoch, seq,
                        "The sink holds sequence numbers this buffer never committed: commits were lost (power loss under synchronous=NORMAL, or storage that ignores fsync). Starting a new epoch so no sequence number is reused."
                    );
                }
                let now = self.now();
                match store::store_watermark(&mut self.conn, stream, seq, rotate, now) {
                    Ok(Some((id, fresh))) => {
                        self.state.rotate(id, fresh);
                        self.shared
                            .committed
                            .send_replace(self.state.current().committed());
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.rollback();
                        warn!(error = %e, "Could not store the sink watermark; will retry (no data lost).");
                    }
                }
                self.delete_acknowledged();
                Ok(())
            }
        }
    }

    fn delete_acknowledged(&mut self) {
        match store::delete_acknowledged(&mut self.conn, &self.state) {
            Ok((rows, gaps, more)) => {
                if !rows.is_empty() {
                    self.state.on_deleted(&rows);
                    self.refresh_oldest();
                }
                self.state.on_gaps_deleted(&gaps);
                self.cleanup = more;
                self.retry = false;
            }
            Err(e) => {
                self.rollback();
                warn!(error = %e, "Could not delete acknowledged rows; will retry (no data lost).");
                self.cleanup = false;
                self.retry = true;
            }
        }
    }

    fn gap_published(&mut self, id: i64) -> Result<(), OutboxError> {
        match self.state.on_gap_published(id) {
            GapDone::Keep => Ok(()),
            GapDone::Delete => {
                let result = store::delete_gap(&mut self.conn, id).map_err(|e| storage(&e));
                if result.is_ok() {
                    self.state.on_gaps_deleted(&[id]);
                }
                result
            }
        }
    }

    fn replay(&mut self) -> Result<(), OutboxError> {
        self.reload(false).map_err(|e| storage(&e))?;
        self.shared
            .committed
            .send_replace(self.state.current().committed());
        Ok(())
    }

    // --------------------------------------------------------------------------------------
    // Housekeeping
    // --------------------------------------------------------------------------------------

    fn housekeeping(&mut self, now: i64) {
        self.last_tick_ms = now;
        if let Some(cutoff) = self.state.age_cutoff(now) {
            match store::evict_old(&mut self.conn, &self.state, cutoff, now) {
                Ok(plan) if !plan.is_empty() => {
                    self.state.on_evicted(&plan);
                    self.refresh_oldest();
                    let seqs: u64 = plan.gaps.iter().map(|g| g.last_seq - g.first_seq + 1).sum();
                    debug!(seqs, "Evicted rows older than max_age.");
                    self.shared
                        .committed
                        .send_replace(self.state.current().committed());
                    if plan.rows.len() as i64 >= store::DELETE_CHUNK {
                        // More may be old: the next tick takes the next chunk.
                        self.last_tick_ms = now.saturating_sub(1_000);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.rollback();
                    warn!(error = %e, "Could not evict old rows; will retry.");
                }
            }
        }
        if self.cleanup || self.retry {
            self.delete_acknowledged();
        }
        for id in self.state.empty_old_streams() {
            match store::drop_stream(&mut self.conn, id) {
                Ok(true) => {
                    self.state.on_stream_dropped(id);
                    debug!(stream = id, "Dropped a drained old epoch.");
                }
                Ok(false) => {}
                Err(e) => debug!(error = %e, "Could not drop a drained old epoch."),
            }
        }
        if self.state.totals().rows == 0
            && now.saturating_sub(self.last_truncate_ms) >= WAL_TRUNCATE_EVERY_MS
            && std::fs::metadata(store::wal_path(&self.path))
                .is_ok_and(|m| m.len() > WAL_TRUNCATE_BYTES)
        {
            self.last_truncate_ms = now;
            if let Err(e) = store::checkpoint_truncate(&self.conn) {
                debug!(error = %e, "Could not truncate the WAL after a drain.");
            }
        }
    }

    fn close(&mut self) {
        if let Err(e) = store::mark_clean(&mut self.conn) {
            self.rollback();
            warn!(error = %e, "Could not mark the buffer's shutdown as clean.");
        }
        if let Err(e) = store::checkpoint_truncate(&self.conn) {
            warn!(error = %e, "Could not checkpoint the WAL at shutdown (no data lost: it is replayed at the next open).");
        }
        info!(path = %self.path.display(), "Buffer closed.");
    }

    fn publish(&mut self) {
        if let Ok(file) = store::file_usage(&self.conn, &self.path) {
            self.file = file;
        }
        let mut stats = self.state.stats(self.now(), self.file, self.names.len());
        stats.counters.dropped_invalid = self.shared.dropped_invalid.load(Ordering::Relaxed);
        stats.counters.dropped_closed = self.shared.dropped_closed.load(Ordering::Relaxed);
        *self
            .shared
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = stats;
    }
}
