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
