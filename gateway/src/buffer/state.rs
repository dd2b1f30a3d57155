//! The buffer's sans-IO core: sequence allocation, the pending window, acknowledgement
//! bookkeeping, eviction decisions and the figures. Pure, synchronous and deterministic: the
//! writer thread feeds it what the database said and does what it decides, and the unit tests
//! below drive it with no database at all.
//!
//! # Model
//!
//! The buffer holds one or more *streams* (an [`Epoch`] each, identified locally by a small
//! stream id in creation order); the last one is *current* and the only one that receives new
//! sequence numbers. For every stream the core knows:
//!
//! - `next_seq`: the next sequence number to hand out (sequences start at 1). It only moves
//!   forward, and only after the transaction that stores the rows has committed
//!   ([`State::on_appended`]); a failed transaction leaves it unchanged, so a rolled-back
//!   append leaves no hole (K2).
//! - `finished`: the sequences that will never be published again, as a [`RangeSet`]: the
//!   broker acknowledged them, the sink's watermark passed them, they were evicted (and a gap
//!   declared) or their rows were deleted. At open it is rebuilt as the complement of the rows
//!   present, so everything the broker acknowledged in `sink_ack` mode but the sink has not
//!   confirmed is published again after a restart (duplicates are deduplicated at the sink).
//! - `sink_seq`: the sink's watermark; never moves backwards.
//!
//! Invariants (checked by the unit tests and by the model test in `tests/buffer_model.rs`):
//!
//! 1. `finished ⊆ 1..next_seq`, and a sequence is live (its row present) or finished.
//! 2. `backlog = (next_seq − 1) − |finished|` for every stream: pairs of counters, never a
//!    gauge that drifts.
//! 3. [`State::pending_scan`] never starts inside a finished range, and the writer drops every
//!    finished sequence from what it returns ([`State::unfinished_within`]): nothing
//!    acknowledged is handed out again in the same process.
//! 4. Streams are drained oldest first: `pending` serves only the oldest stream that still has
//!    unfinished sequences. When the stream served changes, the caller's `after` (a sequence
//!    number of the previous stream) is ignored.
//! 5. A broker acknowledgement is applied to the oldest stream where the range was handed out
//!    by `pending` and is not yet finished; an acknowledgement matching nothing is ignored,
//!    never applied to an arbitrary row.
//! 6. Eviction takes the oldest reading rows first and KPI rows only when no reading row is
//!    left; every evicted row is covered by exactly one declared gap, written in the same
//!    transaction as the delete (K6).

use std::collections::BTreeSet;

use fivezero_model::topic::TopicKind;
use fivezero_model::wire::{Epoch, GapReason};

use super::ranges::RangeSet;
use super::{Counters, RetainUntil, Stats};
use crate::outbox::Lane;

/// Bytes counted for each row on top of its payload: the row's other columns, its record
/// header and its index entry (measured at about 50–60 bytes).
pub(crate) const ROW_OVERHEAD: u64 = 64;

/// How long appends are refused after a write failed with a full or failing disk, before the
/// next append probes again.
pub(crate) const PROBE_INTERVAL_MS: i64 = 10_000;

/// The share of `max_bytes` left free after an eviction (1/32, about 3 %), so a full buffer
/// evicts in steps rather than at every append.
const EVICTION_SLACK_DIVISOR: u64 = 32;

/// Time constant of the append-rate average, in seconds.
const RATE_TAU_S: f64 = 300.0;

/// What a row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// Readings of one poll cycle.
    Readings,
    /// KPI records.
    Kpi,
}

impl Kind {
    /// The code stored in `rows.kind`.
    pub(crate) fn code(self) -> i64 {
        match self {
            Self::Readings => 0,
            Self::Kpi => 1,
        }
    }

    /// The kind of a stored code.
    pub(crate) fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(Self::Readings),
            1 => Some(Self::Kpi),
            _ => None,
        }
    }

    /// The topic its messages go to.
    pub(crate) fn topic(self) -> TopicKind {
        match self {
            Self::Readings => TopicKind::Batches,
            Self::Kpi => TopicKind::Kpi,
        }
    }
}

/// The code stored in `gaps.reason`.
pub(crate) fn reason_code(reason: GapReason) -> i64 {
    match reason {
        GapReason::BufferFull => 0,
        GapReason::MaxAge => 1,
        GapReason::DiskFull => 2,
    }
}

/// The reason of a stored code.
pub(crate) fn reason_of(code: i64) -> Option<GapReason> {
    match code {
        0 => Some(GapReason::BufferFull),
        1 => Some(GapReason::MaxAge),
        2 => Some(GapReason::DiskFull),
        _ => None,
    }
}

/// A row without its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowHead {
    /// `rows.id`: insertion order, which is also (stream, sequence) order.
    pub(crate) id: i64,
    /// Local stream id.
    pub(crate) stream: i64,
    /// First sequence number.
    pub(crate) first_seq: u64,
    /// Last sequence number.
    pub(crate) last_seq: u64,
    /// Readings or KPI records.
    pub(crate) kind: Kind,
    /// Payload bytes.
    pub(crate) bytes: u64,
    /// When it was committed, UTC ms.
    pub(crate) created_ms: i64,
}

impl RowHead {
    /// Sequences in the row.
    pub(crate) fn count(&self) -> u64 {
        self.last_seq - self.first_seq + 1
    }

    /// Bytes it is counted for against the budget.
    pub(crate) fn charged(&self) -> u64 {
        self.bytes + ROW_OVERHEAD
    }
}

/// A range to declare as a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GapRange {
    /// Local stream id.
    pub(crate) stream: i64,
    /// First evicted sequence.
    pub(crate) first_seq: u64,
    /// Last evicted sequence.
    pub(crate) last_seq: u64,
    /// Why.
    pub(crate) reason: GapReason,
}

/// A stored gap row, as far as merging needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GapRow {
    /// `gaps.id`.
    pub(crate) id: i64,
    /// Local stream id.
    pub(crate) stream: i64,
    /// First sequence.
    pub(crate) first_seq: u64,
    /// Number of sequences.
    pub(crate) count: u64,
    /// Why.
    pub(crate) reason: GapReason,
}

/// Rows to evict and the gaps that declare them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EvictPlan {
    /// The rows, in the order chosen.
    pub(crate) rows: Vec<RowHead>,
    /// Their ranges, merged where rows of one stream are contiguous, each at most `u32::MAX`
    /// long.
    pub(crate) gaps: Vec<GapRange>,
}

impl EvictPlan {
    /// Bytes freed against the budget.
    pub(crate) fn freed(&self) -> u64 {
        self.rows.iter().map(RowHead::charged).sum()
    }

    /// Whether nothing is evicted.
    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn declare(rows: Vec<RowHead>, reason: GapReason) -> Self {
        let mut sorted = rows.clone();
        sorted.sort_by_key(|r| (r.stream, r.first_seq));
        let mut gaps: Vec<GapRange> = Vec::new();
        for r in sorted {
            match gaps.last_mut() {
                Some(g)
                    if g.stream == r.stream
                        && g.last_seq.checked_add(1) == Some(r.first_seq)
                        && r.last_seq - g.first_seq < u64::from(u32::MAX) =>
                {
                    g.last_seq = r.last_seq;
                }
                _ => gaps.push(GapRange {
                    stream: r.stream,
                    first_seq: r.first_seq,
                    last_seq: r.last_seq,
                    reason,
                }),
            }
        }
        Self { rows, gaps }
    }
}

/// One stream of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stream {
    /// Local id (`streams.id`), increasing with creation.
    pub(crate) id: i64,
    /// The epoch.
    pub(crate) epoch: Epoch,
    /// Next sequence number to hand out.
    pub(crate) next_seq: u64,
    /// The sink's watermark.
    pub(crate) sink_seq: u64,
    /// Sequences never to be published again.
    finished: RangeSet,
    /// Highest sequence handed out by `pending` in this process.
    served_through: u64,
    /// Rows present.
    live_rows: u64,
}

impl Stream {
    fn new(id: i64, epoch: Epoch, next_seq: u64, sink_seq: u64, live: &[(u64, u64)]) -> Self {
        let committed = next_seq.saturating_sub(1);
        let mut finished = RangeSet::new();
        let mut at = 1;
        for &(first, last) in live {
            if first > at {
                finished.insert(at, first - 1);
            }
            at = at.max(last.saturating_add(1));
        }
        if at <= committed {
            finished.insert(at, committed);
        }
        // Rows at or below the sink's watermark may still be present (their deletion is
        // chunked): they are finished all the same.
        finished.insert(1, sink_seq.min(committed));
        Self {
            id,
            epoch,
            next_seq,
            sink_seq,
            finished,
            served_through: 0,
            live_rows: live.len() as u64,
        }
    }

    /// Highest committed sequence.
    pub(crate) fn committed(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// Sequences neither acknowledged nor evicted.
    pub(crate) fn backlog(&self) -> u64 {
        self.committed() - self.finished.count_in(1, self.committed())
    }

    /// Highest `h` such that every sequence up to `h` is finished.
    pub(crate) fn finished_through(&self) -> u64 {
        self.finished.next_missing_after(0) - 1
    }
}

/// A stream as read from the database at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoadedStream {
    /// `streams.id`.
    pub(crate) id: i64,
    /// Its epoch.
    pub(crate) epoch: Epoch,
    /// `streams.next_seq`.
    pub(crate) next_seq: u64,
    /// `streams.sink_seq`.
    pub(crate) sink_seq: u64,
    /// `(first_seq, last_seq)` of every row present, in order.
    pub(crate) live: Vec<(u64, u64)>,
}

/// Rows present, over all streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Rows.
    pub(crate) rows: u64,
    /// Sequences in them.
    pub(crate) seqs: u64,
    /// Payload bytes.
    pub(crate) payload_bytes: u64,
}

impl Totals {
    fn add(&mut self, row: &RowHead) {
        self.rows += 1;
        self.seqs += row.count();
        self.payload_bytes += row.bytes;
    }

    fn remove(&mut self, row: &RowHead) {
        self.rows = self.rows.saturating_sub(1);
        self.seqs = self.seqs.saturating_sub(row.count());
        self.payload_bytes = self.payload_bytes.saturating_sub(row.bytes);
    }

    /// Bytes charged against the budget.
    pub(crate) fn charged(&self) -> u64 {
        self.payload_bytes + self.rows * ROW_OVERHEAD
    }
}

/// The disk budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// Bytes.
    pub(crate) max_bytes: u64,
    /// Oldest row kept, ms.
    pub(crate) max_age_ms: i64,
}

/// Whether an append may touch the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Write (normally, or as the probe after a failure).
    Write,
    /// The disk failed less than [`PROBE_INTERVAL_MS`] ago: drop without trying.
    Refuse,
}

/// What a sink watermark means for the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SinkAck {
    /// Nothing to do: the epoch is unknown or the watermark did not move.
    Ignored(&'static str),
    /// Delete rows and gaps of `stream` up to `seq` and store the watermark.
    Advance {
        /// Local stream id.
        stream: i64,
        /// The new watermark (clamped to what was committed).
        seq: u64,
        /// The sink holds sequences of the current stream this buffer never committed
        /// (commits lost under `synchronous=NORMAL`, or storage that ignores fsync): start a
        /// new epoch so none is reused.
        rotate: bool,
    },
}

/// What `gap_published` means for a gap row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GapDone {
    /// Delete it (`broker_ack` mode).
    Delete,
    /// Keep it until the sink's watermark passes it (`sink_ack` mode).
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Rate {
    per_s: f64,
    at_ms: Option<i64>,
}

impl Rate {
    fn decayed(&self, now_ms: i64) -> f64 {
        match self.at_ms {
            Some(at) if now_ms > at => {
                let dt = (now_ms - at) as f64 / 1000.0;
                self.per_s * (-dt / RATE_TAU_S).exp()
            }
            _ => self.per_s,
        }
    }

    fn add(&mut self, now_ms: i64, bytes: u64) {
        self.per_s = self.decayed(now_ms) + bytes as f64 / RATE_TAU_S;
        self.at_ms = Some(self.at_ms.map_or(now_ms, |at| at.max(now_ms)));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct DiskHealth {
    failing: bool,
    next_probe_ms: i64,
    last_log_ms: Option<i64>,
}

/// File sizes measured by the writer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FileUsage {
    /// Pages in use (page count less free pages) × page size.
    pub(crate) used: u64,
    /// Main file plus WAL on disk.
    pub(crate) on_disk: u64,
}

/// Why a new epoch must start when the database is opened, if it must.
///
/// A sequence number could be reused only if commits that were published got lost. Process
/// crashes lose no commit at any `synchronous` level; a power loss or OS crash can lose the
/// last commits under `NORMAL`. So the epoch rotates when the previous run used `NORMAL`, did
/// not stop cleanly, and the machine has booted since (the boot id differs, or cannot be
/// read then or now).
pub(crate) fn rotation_reason(
    created: bool,
    previous_normal: bool,
    clean: bool,
    stored_boot_id: Option<&str>,
    boot_id: Option<&str>,
) -> Option<&'static str> {
    if created {
        return None;
    }
    let rebooted = match (stored_boot_id, boot_id) {
        (Some(a), Some(b)) => a != b,
        _ => true,
    };
    (previous_normal && !clean && rebooted)
        .then_some("the machine rebooted after an unclean stop under synchronous=NORMAL")
}

/// The core.
#[derive(Debug, Clone)]
pub(crate) struct State {
    retain: RetainUntil,
    budget: Budget,
    old: Vec<Stream>,
    current: Stream,
    totals: Totals,
    oldest_created_ms: Option<i64>,
    counters: Counters,
    disk: DiskHealth,
    served_stream: Option<i64>,
    gaps_handed_out: BTreeSet<i64>,
    gaps_confirmed: BTreeSet<i64>,
    rate: Rate,
}

impl State {
    /// The core of a buffer whose database holds `streams` (in id order; the last is current)
    /// and rows adding up to `totals`.
    pub(crate) fn new(
        retain: RetainUntil,
        budget: Budget,
        current: LoadedStream,
        old: Vec<LoadedStream>,
        totals: Totals,
        oldest_created_ms: Option<i64>,
    ) -> Self {
        let make = |s: &LoadedStream| Stream::new(s.id, s.epoch, s.next_seq, s.sink_seq, &s.live);
        Self {
            retain,
            budget,
            old: old.iter().map(make).collect(),
            current: make(&current),
            totals,
            oldest_created_ms,
            counters: Counters::default(),
            disk: DiskHealth::default(),
            served_stream: None,
            gaps_handed_out: BTreeSet::new(),
            gaps_confirmed: BTreeSet::new(),
            rate: Rate {
                per_s: 0.0,
                at_ms: None,
            },
        }
    }

    /// Replaces everything the database knows, keeping the counters and the disk health.
    /// With `keep_acks` (after a failed write whose outcome is unsure) the broker's
    /// acknowledgements are kept; without (a replay) they are forgotten, so `pending` hands
    /// out everything the sink has not confirmed again.
    pub(crate) fn reload(
        &mut self,
        current: LoadedStream,
        old: Vec<LoadedStream>,
        totals: Totals,
        oldest_created_ms: Option<i64>,
        keep_acks: bool,
    ) {
        let mut fresh = Self::new(
            self.retain,
            self.budget,
            current,
            old,
            totals,
            oldest_created_ms,
        );
        for stream in fresh.streams_mut().filter(|_| keep_acks) {
            if let Some(before) = self.stream(stream.id) {
                for (a, b) in before.finished.iter() {
                    let b = b.min(stream.committed());
                    stream.finished.insert(a, b);
                }
                stream.served_through = before.served_through;
            }
        }
        fresh.counters = self.counters.clone();
        fresh.disk = self.disk;
        fresh.served_stream = if keep_acks { self.served_stream } else { None };
        fresh.gaps_handed_out = std::mem::take(&mut self.gaps_handed_out);
        // A replay forgets the broker's acknowledgements of gap notices too: a broker that lost
        // a notice it acknowledged gets it again, as it gets the rows again.
        fresh.gaps_confirmed = if keep_acks {
            std::mem::take(&mut self.gaps_confirmed)
        } else {
            BTreeSet::new()
        };
        fresh.rate = self.rate;
        *self = fresh;
    }

    /// The retention mode.
    pub(crate) fn retain(&self) -> RetainUntil {
        self.retain
    }

    /// The current stream.
    pub(crate) fn current(&self) -> &Stream {
        &self.current
    }

    /// Every stream, oldest first.
    pub(crate) fn streams(&self) -> impl Iterator<Item = &Stream> {
        self.old.iter().chain(std::iter::once(&self.current))
    }

    fn streams_mut(&mut self) -> impl Iterator<Item = &mut Stream> {
        self.old
            .iter_mut()
            .chain(std::iter::once(&mut self.current))
    }

    /// The stream with local id `id`.
    pub(crate) fn stream(&self, id: i64) -> Option<&Stream> {
        self.streams().find(|s| s.id == id)
    }

    fn stream_mut(&mut self, id: i64) -> Option<&mut Stream> {
        self.streams_mut().find(|s| s.id == id)
    }

    /// Rows present.
    pub(crate) fn totals(&self) -> Totals {
        self.totals
    }

    // --------------------------------------------------------------------------------------
    // Appending
    // --------------------------------------------------------------------------------------

    /// Whether an append may write now.
    pub(crate) fn admit(&self, now_ms: i64) -> Admit {
        if self.disk.failing && now_ms < self.disk.next_probe_ms {
            Admit::Refuse
        } else {
            Admit::Write
        }
    }

    /// The first sequence of `count` new ones in the current stream; `None` if the stream
    /// would overflow `u64` (never in practice).
    pub(crate) fn next_range(&self, count: u32) -> Option<u64> {
        let first = self.current.next_seq;
        first.checked_add(u64::from(count))?;
        Some(first)
    }

    /// A row of the current stream committed.
    pub(crate) fn on_appended(&mut self, row: &RowHead, records: u64, now_ms: i64) {
        self.current.next_seq = self.current.next_seq.max(row.last_seq + 1);
        self.current.live_rows += 1;
        self.totals.add(row);
        if self.oldest_created_ms.is_none() {
            self.oldest_created_ms = Some(row.created_ms);
        }
        self.rate.add(now_ms, row.charged());
        self.counters.appended_rows += 1;
        match row.kind {
            Kind::Readings => self.counters.appended_readings += records,
            Kind::Kpi => self.counters.appended_kpis += records,
        }
    }

    /// A write succeeded; returns whether it ended a disk failure.
    pub(crate) fn on_write_ok(&mut self) -> bool {
        std::mem::replace(&mut self.disk.failing, false)
    }

    /// An append of `dropped` sequences failed (`disk`: full or failing disk, refused until
    /// the next probe); returns whether to log it now (at most once per 10 s).
    pub(crate) fn on_append_failed(&mut self, now_ms: i64, disk: bool, dropped: u64) -> bool {
        if disk {
            self.counters.dropped_disk_full += dropped;
            if !self.disk.failing || now_ms >= self.disk.next_probe_ms {
                self.disk.next_probe_ms = now_ms.saturating_add(PROBE_INTERVAL_MS);
            }
            self.disk.failing = true;
        } else {
            self.counters.dropped_storage += dropped;
        }
        let log = self
            .disk
            .last_log_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= PROBE_INTERVAL_MS);
        if log {
            self.disk.last_log_ms = Some(now_ms);
        }
        log
    }

    /// An append was refused without trying ([`Admit::Refuse`]).
    pub(crate) fn on_append_refused(&mut self, dropped: u64) {
        self.counters.dropped_disk_full += dropped;
    }

    // --------------------------------------------------------------------------------------
    // Eviction
    // --------------------------------------------------------------------------------------

    /// Bytes (counted as [`RowHead::charged`]) to evict before storing `incoming` more, given
    /// the pages in use; 0 when within budget. Over budget it asks for enough to get about
    /// 3 % below it.
    /// `freed` is what this transaction already evicted.
    pub(crate) fn eviction_need(&self, incoming: u64, file_used: u64, freed: u64) -> u64 {
        let max = self.budget.max_bytes;
        let charged = self.totals.charged().saturating_sub(freed);
        let logical = charged + incoming;
        let file = file_used + incoming;
        if logical <= max && file <= max {
            return 0;
        }
        let target = max - max / EVICTION_SLACK_DIVISOR;
        let by_logical = logical.saturating_sub(target);
        // Pages do not shrink byte for byte with the rows: scale the file's excess to row
        // bytes by the current ratio.
        let by_file = if file > target && file > 0 {
            let excess = u128::from(file - target) * u128::from(logical.max(1)) / u128::from(file);
            u64::try_from(excess).unwrap_or(u64::MAX).max(1)
        } else {
            0
        };
        by_logical.max(by_file).min(charged)
    }

    /// Which rows to evict to free `need` bytes: oldest reading rows first, KPI rows only once
    /// no reading row is left. `readings` and `kpis` are the oldest rows of each kind, oldest
    /// first.
    pub(crate) fn plan_budget_eviction(
        readings: &[RowHead],
        kpis: &[RowHead],
        need: u64,
    ) -> EvictPlan {
        let mut chosen = Vec::new();
        let mut freed = 0;
        for row in readings.iter().chain(kpis) {
            if freed >= need {
                break;
            }
            freed += row.charged();
            chosen.push(*row);
        }
        EvictPlan::declare(chosen, GapReason::BufferFull)
    }

    /// The creation time before which rows are too old, when the oldest row is.
    pub(crate) fn age_cutoff(&self, now_ms: i64) -> Option<i64> {
        let cutoff = now_ms.saturating_sub(self.budget.max_age_ms);
        self.oldest_created_ms
            .filter(|&oldest| oldest < cutoff)
            .map(|_| cutoff)
    }

    /// The leading rows of `candidates` (oldest first) created before `cutoff`.
    pub(crate) fn plan_age_eviction(candidates: &[RowHead], cutoff: i64) -> EvictPlan {
        let old = candidates
            .iter()
            .take_while(|r| r.created_ms < cutoff)
            .copied()
            .collect();
        EvictPlan::declare(old, GapReason::MaxAge)
    }

    /// The gap row that `range` extends, if any: the stream's last gap, same reason, directly
    /// before it, never handed out for publishing, and still short enough.
    pub(crate) fn gap_to_extend(&self, last: Option<&GapRow>, range: &GapRange) -> Option<i64> {
        let last = last?;
        let adjacent = last.stream == range.stream
            && last.reason == range.reason
            && last.first_seq.checked_add(last.count) == Some(range.first_seq);
        let fits = last.count + (range.last_seq - range.first_seq + 1) <= u64::from(u32::MAX);
        let untouched =
            !self.gaps_handed_out.contains(&last.id) && !self.gaps_confirmed.contains(&last.id);
        (adjacent && fits && untouched).then_some(last.id)
    }

    /// An eviction committed.
    pub(crate) fn on_evicted(&mut self, plan: &EvictPlan) {
        for row in &plan.rows {
            self.totals.remove(row);
            if let Some(stream) = self.stream_mut(row.stream) {
                stream.live_rows = stream.live_rows.saturating_sub(1);
            }
        }
        for gap in &plan.gaps {
            let seqs = gap.last_seq - gap.first_seq + 1;
            match gap.reason {
                GapReason::BufferFull => self.counters.evicted_buffer_full += seqs,
                GapReason::MaxAge => self.counters.evicted_max_age += seqs,
                GapReason::DiskFull => self.counters.evicted_disk_full += seqs,
            }
            self.counters.gaps_declared += 1;
            if let Some(stream) = self.stream_mut(gap.stream) {
                stream.finished.insert(gap.first_seq, gap.last_seq);
            }
        }
    }

    /// The oldest row's creation time, re-read after deletions.
    pub(crate) fn set_oldest(&mut self, oldest_created_ms: Option<i64>) {
        self.oldest_created_ms = oldest_created_ms;
    }

    // --------------------------------------------------------------------------------------
    // Publishing
    // --------------------------------------------------------------------------------------

    /// Where `pending(lane)` reads: the stream, its epoch, the first unfinished sequence to
    /// hand out and the last sequence the lane may reach. On the backlog lane that is the
    /// oldest stream with unfinished sequences, from its first unfinished sequence above
    /// `after` (or above 0 when the stream served changed), up to the live lane's split; on
    /// the live lane, the stream of its epoch above `after` (the stream served is left
    /// alone). `None` when there is nothing to hand out.
    pub(crate) fn pending_scan(&mut self, lane: Lane) -> Option<(i64, Epoch, u64, u64)> {
        match lane {
            Lane::Backlog { after, through } => {
                let stream = self.streams().find(|s| s.backlog() > 0)?;
                let (id, epoch) = (stream.id, stream.epoch);
                let after = if self.served_stream == Some(id) {
                    after
                } else {
                    0
                };
                let from = stream.finished.next_missing_after(after);
                let last = match through {
                    Some((split_epoch, split)) if split_epoch == epoch => {
                        stream.committed().min(split)
                    }
                    _ => stream.committed(),
                };
                self.served_stream = Some(id);
                (from <= last).then_some((id, epoch, from, last))
            }
            Lane::Live { epoch, after } => {
                let stream = self.streams().find(|s| s.epoch == epoch)?;
                let from = stream.finished.next_missing_after(after);
                let last = stream.committed();
                (from <= last).then_some((stream.id, epoch, from, last))
            }
        }
    }

    /// The unfinished runs of `stream` within `first..=last`.
    pub(crate) fn unfinished_within(&self, stream: i64, first: u64, last: u64) -> Vec<(u64, u64)> {
        self.stream(stream)
            .map(|s| s.finished.missing_within(first, last.min(s.committed())))
            .unwrap_or_default()
    }

    /// `pending` handed out sequences of `stream` up to `last`.
    pub(crate) fn on_served(&mut self, stream: i64, last: u64) {
        if let Some(s) = self.stream_mut(stream) {
            s.served_through = s.served_through.max(last);
        }
    }

    /// The broker acknowledged `first..first + count` of stream `epoch`. Returns the stream it
    /// applies to and the range, or `None` when it matches nothing handed out and unfinished
    /// (a stale or duplicate acknowledgement, or one of an epoch no longer held).
    pub(crate) fn broker_acked(
        &mut self,
        epoch: Epoch,
        first: u64,
        count: u32,
    ) -> Option<(i64, u64, u64)> {
        if count == 0 || first == 0 {
            return None;
        }
        let last = first.checked_add(u64::from(count) - 1)?;
        let stream = self.streams_mut().find(|s| {
            s.epoch == epoch
                && last <= s.committed()
                && last <= s.served_through
                && !s.finished.covers(first, last)
        })?;
        let new = stream.finished.insert(first, last);
        let id = stream.id;
        self.counters.broker_acked += new;
        Some((id, first, last))
    }

    /// Whether a row of `stream` can be deleted because all its sequences are finished
    /// (`broker_ack` mode).
    pub(crate) fn row_finished(&self, row: &RowHead) -> bool {
        self.stream(row.stream)
            .is_some_and(|s| s.finished.covers(row.first_seq, row.last_seq))
    }

    /// The ranges of `stream` whose rows are to be deleted: up to the sink's watermark, and in
    /// `broker_ack` mode everything finished.
    pub(crate) fn deletable_ranges(&self, stream: &Stream) -> Vec<(u64, u64)> {
        match self.retain {
            RetainUntil::SinkAck if stream.sink_seq > 0 => vec![(1, stream.sink_seq)],
            RetainUntil::SinkAck => Vec::new(),
            RetainUntil::BrokerAck => stream.finished.iter().collect(),
        }
    }

    /// Rows deleted because they were acknowledged.
    pub(crate) fn on_deleted(&mut self, rows: &[RowHead]) {
        for row in rows {
            self.totals.remove(row);
            if let Some(stream) = self.stream_mut(row.stream) {
                stream.live_rows = stream.live_rows.saturating_sub(1);
                // Deleted rows are finished whatever the reason.
                stream.finished.insert(row.first_seq, row.last_seq);
            }
        }
    }

    /// The sink's watermark for `epoch` is `seq`.
    pub(crate) fn sink_acked(&mut self, epoch: Epoch, seq: u64) -> SinkAck {
        let current = self.current.id;
        let Some(stream) = self.streams_mut().find(|s| s.epoch == epoch) else {
            return SinkAck::Ignored("unknown epoch");
        };
        if seq <= stream.sink_seq {
            return SinkAck::Ignored("watermark did not move");
        }
        let committed = stream.committed();
        let rotate = seq > committed && stream.id == current;
        let seq = seq.min(committed);
        if seq <= stream.sink_seq {
            return SinkAck::Ignored("watermark did not move");
        }
        stream.finished.insert(stream.sink_seq + 1, seq);
        let passed = seq - stream.sink_seq;
        stream.sink_seq = seq;
        let id = stream.id;
        self.counters.sink_acked += passed;
        SinkAck::Advance {
            stream: id,
            seq,
            rotate,
        }
    }

    /// A new current stream was stored.
    pub(crate) fn rotate(&mut self, id: i64, epoch: Epoch) {
        let fresh = Stream::new(id, epoch, 1, 0, &[]);
        let old = std::mem::replace(&mut self.current, fresh);
        self.old.push(old);
    }

    /// Old streams with no rows left and no gaps to publish: their ids.
    pub(crate) fn empty_old_streams(&self) -> Vec<i64> {
        self.old
            .iter()
            .filter(|s| s.live_rows == 0)
            .map(|s| s.id)
            .collect()
    }

    /// An old stream's row was deleted from the database.
    pub(crate) fn on_stream_dropped(&mut self, id: i64) {
        self.old.retain(|s| s.id != id);
    }

    // --------------------------------------------------------------------------------------
    // Gaps
    // --------------------------------------------------------------------------------------

    /// Whether a gap row was already confirmed by the broker in this process.
    pub(crate) fn gap_confirmed(&self, id: i64) -> bool {
        self.gaps_confirmed.contains(&id)
    }

    /// Gap rows handed out by `pending_gaps`: they are never extended again.
    pub(crate) fn on_gaps_listed(&mut self, ids: &[i64]) {
        self.gaps_handed_out.extend(ids.iter().copied());
    }

    /// The broker acknowledged a gap notice.
    pub(crate) fn on_gap_published(&mut self, id: i64) -> GapDone {
        self.counters.gaps_published += 1;
        match self.retain {
            RetainUntil::BrokerAck => GapDone::Delete,
            RetainUntil::SinkAck => {
                self.gaps_confirmed.insert(id);
                GapDone::Keep
            }
        }
    }

    /// Gap rows deleted.
    pub(crate) fn on_gaps_deleted(&mut self, ids: &[i64]) {
        for id in ids {
            self.gaps_handed_out.remove(id);
            self.gaps_confirmed.remove(id);
        }
    }

    // --------------------------------------------------------------------------------------
    // Figures
    // --------------------------------------------------------------------------------------

    /// The figures at `now_ms`.
    pub(crate) fn stats(&self, now_ms: i64, file: FileUsage, names: usize) -> Stats {
        let c = &self.current;
        let rate = self.rate.decayed(now_ms);
        let used = self.totals.charged().max(file.used);
        let free = self.budget.max_bytes.saturating_sub(used);
        let headroom_hours = (rate > 1e-9).then(|| free as f64 / rate / 3600.0);
        Stats {
            epoch: c.epoch,
            committed_seq: c.committed(),
            published_seq: c.served_through,
            broker_acked_seq: c.finished_through(),
            sink_acked_seq: c.sink_seq,
            backlog: self.streams().map(Stream::backlog).sum(),
            retained_seqs: self.totals.seqs,
            rows: self.totals.rows,
            payload_bytes: self.totals.payload_bytes,
            charged_bytes: self.totals.charged(),
            used_bytes: file.used,
            file_bytes: file.on_disk,
            max_bytes: self.budget.max_bytes,
            oldest_unsent_ms: self.oldest_created_ms,
            oldest_unsent_age_ms: self
                .oldest_created_ms
                .map(|t| now_ms.saturating_sub(t).max(0)),
            append_bytes_per_s: rate,
            headroom_hours,
            disk_failing: self.disk.failing,
            epochs: self.old.len() + 1,
            names,
            counters: self.counters.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E1: Epoch = Epoch(0x1111);
    const E2: Epoch = Epoch(0x2222);

    fn loaded(id: i64, epoch: Epoch, next_seq: u64, live: &[(u64, u64)]) -> LoadedStream {
        LoadedStream {
            id,
            epoch,
            next_seq,
            sink_seq: 0,
            live: live.to_vec(),
        }
    }

    fn state(retain: RetainUntil) -> State {
        State::new(
            retain,
            Budget {
                max_bytes: 10_000,
                max_age_ms: 1_000,
            },
            loaded(1, E1, 1, &[]),
            Vec::new(),
            Totals::default(),
            None,
        )
    }

    fn row(id: i64, stream: i64, first: u64, last: u64, kind: Kind, bytes: u64) -> RowHead {
        RowHead {
            id,
            stream,
            first_seq: first,
            last_seq: last,
            kind,
            bytes,
            created_ms: id * 100,
        }
    }

    fn append(s: &mut State, id: i64, count: u32, kind: Kind) -> RowHead {
        let first = s.next_range(count).expect("range");
        let r = row(
            id,
            s.current().id,
            first,
            first + u64::from(count) - 1,
            kind,
            100,
        );
        s.on_appended(&r, u64::from(count), 0);
        r
    }

    #[test]
    fn the_epoch_rotates_only_after_a_reboot_following_an_unclean_normal_run() {
        let (a, b) = (Some("boot-a"), Some("boot-b"));
        assert!(rotation_reason(false, true, false, a, b).is_some());
        assert!(rotation_reason(false, true, false, a, None).is_some());
        assert!(
            rotation_reason(false, true, false, a, a).is_none(),
            "a process crash"
        );
        assert!(
            rotation_reason(false, true, true, a, b).is_none(),
            "a clean stop"
        );
        assert!(
            rotation_reason(false, false, false, a, b).is_none(),
            "FULL loses nothing"
        );
        assert!(
            rotation_reason(true, true, false, a, b).is_none(),
            "a new database"
        );
    }

    #[test]
    fn sequences_start_at_one_and_stay_contiguous() {
        let mut s = state(RetainUntil::SinkAck);
        let a = append(&mut s, 1, 3, Kind::Readings);
        let b = append(&mut s, 2, 2, Kind::Kpi);
        assert_eq!(
            (a.first_seq, a.last_seq, b.first_seq, b.last_seq),
            (1, 3, 4, 5)
        );
        assert_eq!(s.current().committed(), 5);
        assert_eq!(s.current().backlog(), 5);
    }

    #[test]
    fn a_failed_append_moves_nothing() {
        let mut s = state(RetainUntil::SinkAck);
        append(&mut s, 1, 3, Kind::Readings);
        assert!(s.on_append_failed(1_000, true, 7));
        assert_eq!(s.next_range(1), Some(4));
        assert_eq!(s.admit(1_500), Admit::Refuse);
        assert_eq!(s.admit(11_000), Admit::Write);
        assert!(
            !s.on_append_failed(1_200, true, 1),
            "logged at most every 10 s"
        );
        assert_eq!(s.counters.dropped_disk_full, 8);
        assert!(s.on_write_ok());
        assert_eq!(s.admit(1_600), Admit::Write);
    }

    #[test]
    fn acknowledged_sequences_are_never_scanned_again() {
        let mut s = state(RetainUntil::BrokerAck);
        append(&mut s, 1, 3, Kind::Readings);
        append(&mut s, 2, 3, Kind::Readings);
        assert_eq!(s.pending_scan(Lane::backlog(0)), Some((1, E1, 1, 6)));
        s.on_served(1, 6);
        assert_eq!(s.broker_acked(E1, 1, 3), Some((1, 1, 3)));
        assert_eq!(
            s.broker_acked(E1, 1, 3),
            None,
            "a duplicate acknowledgement is ignored"
        );
        assert_eq!(s.pending_scan(Lane::backlog(0)), Some((1, E1, 4, 6)));
        assert_eq!(s.pending_scan(Lane::backlog(6)), None);
        assert_eq!(s.current().finished_through(), 3);
        assert_eq!(s.current().backlog(), 3);
    }

    #[test]
    fn an_acknowledgement_of_something_never_handed_out_is_ignored() {
        let mut s = state(RetainUntil::BrokerAck);
        append(&mut s, 1, 3, Kind::Readings);
        assert_eq!(s.broker_acked(E1, 1, 3), None);
        assert_eq!(s.broker_acked(E1, 0, 3), None);
        assert_eq!(s.broker_acked(E1, u64::MAX, 3), None);
        assert_eq!(s.broker_acked(E1, 1, 0), None);
    }

    /// An old stream (E1) with 10 sequences in two rows, and a new, empty current one (E2).
    fn old_stream_of_ten_and_a_new_one() -> State {
        State::new(
            RetainUntil::BrokerAck,
            Budget {
                max_bytes: 10_000,
                max_age_ms: 1_000,
            },
            loaded(2, E2, 1, &[]),
            vec![loaded(1, E1, 11, &[(1, 5), (6, 10)])],
            Totals::default(),
            None,
        )
    }

    #[test]
    fn old_streams_are_drained_first_and_after_restarts_with_the_next_stream() {
        let mut s = old_stream_of_ten_and_a_new_one();
        append(&mut s, 3, 4, Kind::Readings);
        assert_eq!(s.pending_scan(Lane::backlog(0)), Some((1, E1, 1, 10)));
        s.on_served(1, 10);
        assert_eq!(
            s.pending_scan(Lane::backlog(10)),
            None,
            "everything of the old stream is in flight"
        );
        assert_eq!(s.broker_acked(E1, 1, 5), Some((1, 1, 5)));
        assert_eq!(s.broker_acked(E1, 6, 5), Some((1, 6, 10)));
        assert_eq!(
            s.pending_scan(Lane::backlog(10)),
            Some((2, E2, 1, 4)),
            "`after` belonged to the old stream"
        );
        s.on_served(2, 4);
        assert_eq!(
            s.broker_acked(E1, 1, 4),
            None,
            "a late duplicate acknowledgement of the old stream never finishes the new one"
        );
        assert_eq!(s.broker_acked(E2, 1, 4), Some((2, 1, 4)));
    }

    #[test]
    fn the_live_lane_reads_the_current_stream_while_the_backlog_drains_an_old_one() {
        let mut s = old_stream_of_ten_and_a_new_one();
        append(&mut s, 3, 8, Kind::Readings);
        let split = Some((E2, 5));
        // The live lane reads the current stream above the split, whatever older streams hold
        assert_eq!(
            s.pending_scan(Lane::Live {
                epoch: E2,
                after: 5
            }),
            Some((2, E2, 6, 8))
        );
        // and does not disturb the backlog lane, which drains the old stream unbounded
        assert_eq!(
            s.pending_scan(Lane::Backlog {
                after: 0,
                through: split
            }),
            Some((1, E1, 1, 10))
        );
        s.on_served(1, 10);
        s.on_served(2, 8);
        assert_eq!(
            s.pending_scan(Lane::Backlog {
                after: 4,
                through: split
            }),
            Some((1, E1, 5, 10)),
            "the live lane left the backlog lane's stream alone"
        );
        assert_eq!(s.broker_acked(E1, 1, 10), Some((1, 1, 10)));
        // Then the backlog lane reads the current stream up to the split only
        assert_eq!(
            s.pending_scan(Lane::Backlog {
                after: 10,
                through: split
            }),
            Some((2, E2, 1, 5))
        );
        assert_eq!(
            s.pending_scan(Lane::Backlog {
                after: 5,
                through: split
            }),
            None,
            "nothing left below the split"
        );
        assert_eq!(
            s.pending_scan(Lane::Live {
                epoch: E1,
                after: 0
            }),
            None
        );
        assert_eq!(
            s.pending_scan(Lane::Live {
                epoch: Epoch(0x9999),
                after: 0
            }),
            None
        );
    }

    #[test]
    fn a_restart_rebuilds_finished_as_the_complement_of_the_rows() {
        let s = Stream::new(1, E1, 21, 0, &[(4, 6), (10, 12), (13, 15)]);
        assert_eq!(
            s.finished.iter().collect::<Vec<_>>(),
            vec![(1, 3), (7, 9), (16, 20)]
        );
        assert_eq!(s.backlog(), 9);
        assert_eq!(s.finished_through(), 3);
    }

    #[test]
    fn the_sink_watermark_moves_forward_only_and_ignores_foreign_epochs() {
        let mut s = state(RetainUntil::SinkAck);
        append(&mut s, 1, 10, Kind::Readings);
        assert_eq!(s.sink_acked(E2, 5), SinkAck::Ignored("unknown epoch"));
        assert_eq!(
            s.sink_acked(E1, 5),
            SinkAck::Advance {
                stream: 1,
                seq: 5,
                rotate: false
            }
        );
        assert!(matches!(s.sink_acked(E1, 4), SinkAck::Ignored(_)));
        assert_eq!(
            s.sink_acked(E1, 50),
            SinkAck::Advance {
                stream: 1,
                seq: 10,
                rotate: true
            },
            "a watermark beyond the commits means commits were lost"
        );
        assert_eq!(s.current().backlog(), 0);
    }

    #[test]
    fn eviction_takes_readings_before_kpis_and_merges_contiguous_rows() {
        let readings = [
            row(1, 1, 1, 10, Kind::Readings, 100),
            row(3, 1, 12, 20, Kind::Readings, 100),
            row(4, 1, 21, 30, Kind::Readings, 100),
        ];
        let kpis = [row(2, 1, 11, 11, Kind::Kpi, 100)];
        let plan = State::plan_budget_eviction(&readings, &kpis, 1);
        assert_eq!(plan.rows.len(), 1);
        let plan = State::plan_budget_eviction(&readings, &kpis, 3 * (100 + ROW_OVERHEAD));
        assert_eq!(plan.rows.len(), 3);
        assert_eq!(
            plan.gaps
                .iter()
                .map(|g| (g.first_seq, g.last_seq))
                .collect::<Vec<_>>(),
            vec![(1, 10), (12, 30)]
        );
        let plan = State::plan_budget_eviction(&readings, &kpis, u64::MAX);
        assert_eq!(plan.gaps.len(), 1, "with the KPI row gone the ranges join");
    }

    #[test]
    fn eviction_need_counts_rows_and_pages() {
        let mut s = state(RetainUntil::SinkAck);
        for id in 1..=50 {
            append(&mut s, id, 10, Kind::Readings);
        }
        // 50 rows × 164 = 8200 charged.
        assert_eq!(s.eviction_need(100, 0, 0), 0);
        assert!(s.eviction_need(2_000, 0, 0) > 0);
        assert_eq!(s.eviction_need(2_000, 0, 2_000), 0, "what was freed counts");
        assert!(
            s.eviction_need(100, 20_000, 0) > 0,
            "a full file evicts too"
        );
        assert!(s.eviction_need(100, 1_000_000, 0) <= s.totals.charged());
    }

    #[test]
    fn only_untouched_adjacent_gaps_are_extended() {
        let mut s = state(RetainUntil::SinkAck);
        let last = GapRow {
            id: 7,
            stream: 1,
            first_seq: 1,
            count: 10,
            reason: GapReason::BufferFull,
        };
        let next = GapRange {
            stream: 1,
            first_seq: 11,
            last_seq: 20,
            reason: GapReason::BufferFull,
        };
        assert_eq!(s.gap_to_extend(Some(&last), &next), Some(7));
        let apart = GapRange {
            first_seq: 12,
            ..next
        };
        assert_eq!(s.gap_to_extend(Some(&last), &apart), None);
        let aged = GapRange {
            reason: GapReason::MaxAge,
            ..next
        };
        assert_eq!(s.gap_to_extend(Some(&last), &aged), None);
        s.on_gaps_listed(&[7]);
        assert_eq!(s.gap_to_extend(Some(&last), &next), None);
    }

    #[test]
    fn age_eviction_takes_the_leading_old_rows() {
        let rows = [
            row(1, 1, 1, 1, Kind::Readings, 1),
            row(2, 1, 2, 2, Kind::Kpi, 1),
            row(9, 1, 3, 3, Kind::Readings, 1),
        ];
        let plan = State::plan_age_eviction(&rows, 250);
        assert_eq!(plan.rows.len(), 2);
        assert_eq!(plan.gaps.len(), 1);
        assert_eq!(plan.gaps[0].reason, GapReason::MaxAge);
    }

    #[test]
    fn a_replay_forgets_broker_acknowledgements_but_not_the_sink_watermark() {
        let mut s = state(RetainUntil::SinkAck);
        append(&mut s, 1, 5, Kind::Readings);
        append(&mut s, 2, 5, Kind::Readings);
        assert!(s.pending_scan(Lane::backlog(0)).is_some());
        s.on_served(1, 10);
        s.broker_acked(E1, 1, 5);
        s.broker_acked(E1, 6, 5);
        let _ = s.sink_acked(E1, 3);
        assert_eq!(s.current().backlog(), 0);
        let mut live = loaded(1, E1, 11, &[(1, 10)]);
        live.sink_seq = 3;
        s.reload(live, Vec::new(), s.totals(), None, false);
        assert_eq!(s.current().backlog(), 7);
        assert_eq!(s.pending_scan(Lane::backlog(0)), Some((1, E1, 4, 10)));
    }

    #[test]
    fn a_replay_forgets_the_brokers_acknowledgements_of_gap_notices() {
        let mut s = state(RetainUntil::SinkAck);
        assert_eq!(s.on_gap_published(7), GapDone::Keep);
        assert!(s.gap_confirmed(7));
        let live = loaded(1, E1, 1, &[]);
        s.reload(live.clone(), Vec::new(), s.totals(), None, true);
        assert!(
            s.gap_confirmed(7),
            "a reload after an unsure write keeps it"
        );
        s.reload(live, Vec::new(), s.totals(), None, false);
        assert!(
            !s.gap_confirmed(7),
            "a replay sends the notice again, as a broker may have lost it"
        );
    }
}
