//! The pure half of exactly-once storage: content hashes, the plan for one incoming message
//! against the ledger, and the watermark. Both backends run these inside their transaction;
//! nothing here touches a database.
//!
//! # Ledger
//!
//! A ledger row records one stored range of a stream: `(gateway, epoch, first_seq, last_seq,
//! kind, hash, item_hashes)`. Ranges in the ledger never overlap. `item_hashes` holds 8 bytes
//! per sequence (the start of the SHA-256 of the item's kind and canonical JSON) and `hash` is
//! the SHA-256 of `item_hashes`, the message's content hash.
//!
//! The gateway may cut the same sequences into messages differently on a replay (a message
//! built while only part of a poll cycle was committed, a lower packet limit after a
//! reconnect), so an incoming message is compared sequence by sequence with every ledger row
//! it overlaps ([`plan`]):
//! - no overlap: the whole message is stored;
//! - every sequence already stored with the same item hash: a duplicate, nothing changes;
//! - any overlapping sequence with a different item hash (or kind): a conflict, the message is
//!   quarantined and nothing else changes;
//! - otherwise the sequences not yet stored are stored (as one ledger row per contiguous run),
//!   and the rest count as duplicates.
//!
//! # Watermark
//!
//! The watermark of a stream is the highest sequence `w` such that every sequence `1..=w` is
//! in a ledger row or a declared gap ([`advance`]). It depends only on what is stored, never
//! on arrival order, and it never moves backwards.
//!
//! After a long outage the gateway replays old sequences while publishing fresh ones beside
//! them, so thousands of ledger rows can sit above a hole in the watermark. The backends
//! therefore read the ledger above the watermark in chunks of [`WATERMARK_CHUNK`] rows
//! ordered by `last_seq` (with every gap above the watermark, which are few) and let
//! [`scan_step`] decide after each chunk whether the next one can matter.

use fivezero_model::wire::{KpiRecord, Reading};
use sha2::{Digest, Sha256};

/// Bytes of item hash kept per sequence.
pub const ITEM_HASH_LEN: usize = 8;

/// What a ledger row holds: readings or KPI records (they share one sequence space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// Readings, from `…/batches`.
    Readings,
    /// KPI records, from `…/kpi`.
    Kpis,
}

impl ItemKind {
    /// The name stored in the ledger.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Readings => "readings",
            Self::Kpis => "kpis",
        }
    }

    /// The kind of a stored name.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "readings" => Some(Self::Readings),
            "kpis" => Some(Self::Kpis),
            _ => None,
        }
    }
}

fn item_hash(kind: ItemKind, json: &[u8]) -> [u8; ITEM_HASH_LEN] {
    let mut h = Sha256::new();
    h.update(kind.as_str().as_bytes());
    h.update([0]);
    h.update(json);
    let full = h.finalize();
    let mut out = [0; ITEM_HASH_LEN];
    out.copy_from_slice(&full[..ITEM_HASH_LEN]);
    out
}

fn hashes<T: serde::Serialize>(kind: ItemKind, items: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.len() * ITEM_HASH_LEN);
    for item in items {
        // Readings and records hold strings, numbers, options and plain enums: serde_json
        // cannot fail on them writing into a Vec. Should it, the empty text still hashes
        // deterministically.
        let json = serde_json::to_vec(item).unwrap_or_default();
        out.extend_from_slice(&item_hash(kind, &json));
    }
    out
}

/// The item hashes of readings, 8 bytes each, in sequence order.
#[must_use]
pub fn reading_hashes(readings: &[Reading]) -> Vec<u8> {
    hashes(ItemKind::Readings, readings)
}

/// The item hashes of KPI records, 8 bytes each, in sequence order.
#[must_use]
pub fn kpi_hashes(records: &[KpiRecord]) -> Vec<u8> {
    hashes(ItemKind::Kpis, records)
}

/// The content hash of a message or ledger row: SHA-256 of its item hashes.
#[must_use]
pub fn content_hash(item_hashes: &[u8]) -> Vec<u8> {
    Sha256::digest(item_hashes).to_vec()
}

/// One ledger row, as far as planning needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRange {
    /// First sequence.
    pub first: u64,
    /// Last sequence (inclusive).
    pub last: u64,
    /// Readings or KPI records.
    pub kind: ItemKind,
    /// 8 bytes per sequence.
    pub item_hashes: Vec<u8>,
}

/// What to do with an incoming message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Store these contiguous runs `(first, last)` (inclusive); `duplicates` sequences of the
    /// message were already stored with the same content.
    Insert {
        /// The runs to store.
        runs: Vec<(u64, u64)>,
        /// Sequences already stored, identical.
        duplicates: u64,
    },
    /// Every sequence is already stored with the same content.
    Duplicate,
    /// Some sequence is stored with different content.
    Conflict {
        /// Which sequence and how, for the quarantine row.
        detail: String,
    },
}

fn hash_at(hashes: &[u8], index: u64) -> Option<&[u8]> {
    let start = usize::try_from(index).ok()?.checked_mul(ITEM_HASH_LEN)?;
    hashes.get(start..start.checked_add(ITEM_HASH_LEN)?)
}

/// Plans an incoming message covering `first..=last` of `kind` with `item_hashes` against the
/// ledger rows it overlaps (`existing`, any order).
#[must_use]
pub fn plan(
    first: u64,
    last: u64,
    kind: ItemKind,
    item_hashes: &[u8],
    existing: &[LedgerRange],
) -> Plan {
    let mut covered: Vec<(u64, u64)> = Vec::with_capacity(existing.len());
    let mut duplicates = 0;
    for row in existing {
        let (a, b) = (row.first.max(first), row.last.min(last));
        if a > b {
            continue;
        }
        if row.kind != kind {
            return Plan::Conflict {
                detail: format!(
                    "sequences {a}..={b} are stored as {}, this message carries {}",
                    row.kind.as_str(),
                    kind.as_str()
                ),
            };
        }
        for seq in a..=b {
            let stored = hash_at(&row.item_hashes, seq - row.first);
            let incoming = hash_at(item_hashes, seq - first);
            if stored.is_none() || stored != incoming {
                return Plan::Conflict {
                    detail: format!(
                        "sequence {seq} is stored with different content (ledger row {}..={})",
                        row.first, row.last
                    ),
                };
            }
        }
        duplicates += b - a + 1;
        covered.push((a, b));
    }
    if covered.is_empty() {
        return Plan::Insert {
            runs: vec![(first, last)],
            duplicates: 0,
        };
    }
    covered.sort_unstable();
    let mut runs = Vec::new();
    let mut next = first;
    for (a, b) in covered {
        if a > next {
            runs.push((next, a - 1));
        }
        next = next.max(b.saturating_add(1));
    }
    if next <= last {
        runs.push((next, last));
    }
    if runs.is_empty() {
        Plan::Duplicate
    } else {
        Plan::Insert { runs, duplicates }
    }
}

/// Advances a watermark over covered ranges `(first, last)` (ledger rows and gaps, any order,
/// possibly overlapping): the highest `w >= current` such that `current + 1 ..= w` is covered.
#[must_use]
pub fn advance(current: u64, ranges: &mut [(u64, u64)]) -> u64 {
    ranges.sort_unstable();
    let mut w = current;
    for &(a, b) in ranges.iter() {
        if a > w.saturating_add(1) {
            break;
        }
        w = w.max(b);
    }
    w
}

/// Ledger rows read per chunk while recomputing a watermark.
pub const WATERMARK_CHUNK: usize = 256;

/// What [`scan_step`] decided about one chunk of ledger rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanStep {
    /// The watermark after this chunk (never below the one it started from).
    pub watermark: u64,
    /// Whether the next chunk (ledger rows with `last_seq > watermark`) may advance it
    /// further.
    pub more: bool,
}

/// One step of the chunked watermark scan: advances `current` over `chunk` (ledger rows
/// `(first, last)` with `last > current`, the first ones in `last` order) and `gaps` (the
/// declared gaps, any order, any overlap), and says whether to read the next chunk.
///
/// Ledger rows never overlap, so every row not yet read starts after the chunk's highest
/// `last`. When the watermark stops below it, the sequence after the watermark is in no row
/// and no gap: nothing later can fill it. When `chunk_full` is false the chunk held every row
/// above `current`, so there is nothing more to read either.
#[must_use]
pub fn scan_step(
    current: u64,
    chunk: &[(u64, u64)],
    chunk_full: bool,
    gaps: &[(u64, u64)],
) -> ScanStep {
    let mut ranges = Vec::with_capacity(chunk.len() + gaps.len());
    ranges.extend_from_slice(chunk);
    ranges.extend_from_slice(gaps);
    let watermark = advance(current, &mut ranges);
    let more = chunk_full
        && chunk
            .iter()
            .map(|&(_, last)| last)
            .max()
            .is_some_and(|end| watermark >= end);
    ScanStep { watermark, more }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(values: &[u8]) -> Vec<u8> {
        values.iter().flat_map(|v| [*v; ITEM_HASH_LEN]).collect()
    }

    fn row(first: u64, values: &[u8]) -> LedgerRange {
        LedgerRange {
            first,
            last: first + values.len() as u64 - 1,
            kind: ItemKind::Readings,
            item_hashes: h(values),
        }
    }

    #[test]
    fn a_message_over_nothing_is_stored_whole() {
        let p = plan(5, 7, ItemKind::Readings, &h(&[1, 2, 3]), &[]);
        assert_eq!(
            p,
            Plan::Insert {
                runs: vec![(5, 7)],
                duplicates: 0
            }
        );
    }

    #[test]
    fn the_same_message_again_is_a_duplicate() {
        let p = plan(
            5,
            7,
            ItemKind::Readings,
            &h(&[1, 2, 3]),
            &[row(5, &[1, 2, 3])],
        );
        assert_eq!(p, Plan::Duplicate);
    }

    #[test]
    fn a_differently_cut_replay_stores_only_the_new_sequences() {
        // Given 5..=6 and 9..=9 stored, when 4..=10 arrives with the same content there
        let existing = [row(5, &[2, 3]), row(9, &[6])];
        let p = plan(
            4,
            10,
            ItemKind::Readings,
            &h(&[1, 2, 3, 4, 5, 6, 7]),
            &existing,
        );
        assert_eq!(
            p,
            Plan::Insert {
                runs: vec![(4, 4), (7, 8), (10, 10)],
                duplicates: 3
            }
        );
    }

    #[test]
    fn a_different_item_at_a_stored_sequence_is_a_conflict() {
        let p = plan(
            5,
            7,
            ItemKind::Readings,
            &h(&[1, 9, 3]),
            &[row(5, &[1, 2, 3])],
        );
        assert!(matches!(p, Plan::Conflict { detail } if detail.contains("sequence 6")));
    }

    #[test]
    fn kpi_records_over_stored_readings_are_a_conflict() {
        let p = plan(5, 5, ItemKind::Kpis, &h(&[1]), &[row(5, &[1])]);
        assert!(matches!(p, Plan::Conflict { .. }));
    }

    #[test]
    fn the_watermark_passes_contiguous_ranges_and_gaps_only() {
        assert_eq!(advance(0, &mut []), 0);
        assert_eq!(advance(0, &mut [(2, 5)]), 0, "1 is missing");
        assert_eq!(advance(0, &mut [(6, 9), (1, 3), (4, 5)]), 9);
        assert_eq!(advance(0, &mut [(1, 3), (5, 9)]), 3);
        assert_eq!(advance(0, &mut [(1, 10), (3, 4), (11, 11)]), 11, "overlaps");
        assert_eq!(advance(20, &mut [(1, 3)]), 20, "never backwards");
    }

    fn step(watermark: u64, more: bool) -> ScanStep {
        ScanStep { watermark, more }
    }

    #[test]
    fn an_empty_chunk_advances_over_gaps_only_and_stops() {
        assert_eq!(scan_step(4, &[], false, &[]), step(4, false));
        assert_eq!(
            scan_step(4, &[], false, &[(5, 9), (12, 13)]),
            step(9, false)
        );
    }

    #[test]
    fn a_hole_right_after_the_watermark_stops_at_once() {
        // 11 is missing; whatever the next chunk holds starts after 30
        let chunk = [(12, 20), (21, 30)];
        assert_eq!(scan_step(10, &chunk, true, &[]), step(10, false));
        assert_eq!(scan_step(10, &chunk, true, &[(40, 50)]), step(10, false));
    }

    #[test]
    fn a_full_contiguous_chunk_asks_for_the_next() {
        let chunk: Vec<(u64, u64)> = (0..WATERMARK_CHUNK as u64)
            .map(|i| (11 + 2 * i, 12 + 2 * i))
            .collect();
        let end = 10 + 2 * WATERMARK_CHUNK as u64;
        assert_eq!(scan_step(10, &chunk, true, &[]), step(end, true));
        assert_eq!(
            scan_step(10, &chunk, false, &[]),
            step(end, false),
            "a short chunk"
        );
    }

    #[test]
    fn a_hole_inside_a_full_chunk_stops_there() {
        let chunk = [(1, 3), (4, 6), (8, 9)];
        assert_eq!(scan_step(0, &chunk, true, &[]), step(6, false));
        assert_eq!(
            scan_step(0, &chunk, true, &[(7, 7)]),
            step(9, true),
            "a gap fills it"
        );
    }

    #[test]
    fn gaps_overlapping_ledger_rows_count_once() {
        // a gap declared over sequences that later arrived anyway, and one inside a row
        let chunk = [(1, 5), (9, 12)];
        let gaps = [(4, 9), (10, 11)];
        assert_eq!(scan_step(0, &chunk, true, &gaps), step(12, true));
        assert_eq!(scan_step(0, &chunk, false, &gaps), step(12, false));
        // a row straddling the watermark
        assert_eq!(scan_step(3, &[(1, 5)], false, &[]), step(5, false));
    }

    #[test]
    fn a_gap_bridging_two_chunks_carries_the_scan_on() {
        // chunk 1 ends at 10, the gap covers 11..=25, the next rows start at 26
        let gaps = [(11, 25)];
        let first = scan_step(0, &[(1, 4), (5, 10)], true, &gaps);
        assert_eq!(
            first,
            step(25, true),
            "past the chunk's end, so read on from 25"
        );
        let second = scan_step(first.watermark, &[(26, 30), (32, 40)], true, &gaps);
        assert_eq!(second, step(30, false));
        // a gap reaching into the middle of the next chunk's first row
        let first = scan_step(0, &[(1, 10)], true, &[(11, 27)]);
        assert_eq!(first, step(27, true));
        assert_eq!(
            scan_step(27, &[(26, 30)], false, &[(11, 27)]),
            step(30, false)
        );
    }

    #[test]
    fn the_scan_never_moves_backwards() {
        assert_eq!(scan_step(20, &[(21, 22)], true, &[(1, 3)]), step(22, true));
        assert_eq!(scan_step(20, &[(25, 30)], true, &[(1, 3)]), step(20, false));
    }

    /// Runs the scan the way the backends do, over `rows` sorted by `last`, `size` rows per
    /// chunk; returns the watermark and how many chunks were read.
    fn chunked(
        current: u64,
        rows: &[(u64, u64)],
        gaps: &[(u64, u64)],
        size: usize,
    ) -> (u64, usize) {
        let mut w = current;
        let mut reads = 0;
        loop {
            let chunk: Vec<_> = rows
                .iter()
                .copied()
                .filter(|r| r.1 > w)
                .take(size)
                .collect();
            reads += 1;
            let s = scan_step(w, &chunk, chunk.len() == size, gaps);
            assert!(s.watermark >= w);
            assert!(
                !s.more || s.watermark > w,
                "a step asking for more has advanced"
            );
            w = s.watermark;
            if !s.more {
                return (w, reads);
            }
        }
    }

    #[test]
    fn the_chunked_scan_agrees_with_one_advance_over_everything() {
        // every layout of 1..=12 cut into rows (bit i set: a row ends at i + 1), with each
        // of a few holes left out and some gaps declared, read in chunks of 1, 2 and 3 rows
        for cuts in 0u32..(1 << 11) {
            let mut rows = Vec::new();
            let mut first = 1;
            for last in 1..=12u64 {
                if last == 12 || cuts & (1 << (last - 1)) != 0 {
                    rows.push((first, last));
                    first = last + 1;
                }
            }
            for drop in [None, Some(0), Some(rows.len() / 2), Some(rows.len() - 1)] {
                let kept: Vec<_> = rows
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| Some(i) != drop)
                    .map(|(_, r)| *r)
                    .collect();
                for gaps in [&[][..], &[(3, 7)], &[(1, 1), (9, 12)], &[(2, 14)]] {
                    for current in [0, 4] {
                        let mut all: Vec<_> = kept.iter().chain(gaps).copied().collect();
                        let want = advance(current, &mut all);
                        for size in 1..=3 {
                            let (got, _) = chunked(current, &kept, gaps, size);
                            assert_eq!(got, want, "rows {kept:?} gaps {gaps:?} from {current}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn many_rows_above_a_hole_read_one_chunk() {
        let rows: Vec<(u64, u64)> = (2..=5000).map(|s| (s, s)).collect();
        assert_eq!(chunked(0, &rows, &[], WATERMARK_CHUNK), (0, 1));
        let mut filled = vec![(1, 1)];
        filled.extend_from_slice(&rows);
        // 5000 is no multiple of the chunk size: the last chunk is short and ends the scan
        let reads = 5000usize.div_ceil(WATERMARK_CHUNK);
        assert_eq!(chunked(0, &filled, &[], WATERMARK_CHUNK), (5000, reads));
    }

    #[test]
    fn item_hashes_depend_on_content_and_kind() {
        use fivezero_model::wire::{Quality, Value};
        let r = Reading {
            ts: 1,
            device: "d".into(),
            metric: "m".into(),
            value: Some(Value::Number(1.0)),
            quality: Quality::Good,
            reason: None,
        };
        let mut r2 = r.clone();
        r2.value = Some(Value::Number(1.000_000_000_000_000_2));
        let a = reading_hashes(std::slice::from_ref(&r));
        assert_eq!(a.len(), ITEM_HASH_LEN);
        assert_eq!(a, reading_hashes(std::slice::from_ref(&r)));
        assert_ne!(a, reading_hashes(&[r2]));
        assert_eq!(content_hash(&a).len(), 32);
    }
}
