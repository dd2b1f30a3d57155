//! A set of `u64` kept as disjoint, non-adjacent inclusive ranges.
//!
//! The buffer keeps, per stream, the sequence numbers that will never be published again
//! (acknowledged, evicted or deleted) in one of these. The set is small in practice: it is one
//! range `1..=h` plus a few ranges above `h` left by out-of-order acknowledgements.

use std::collections::BTreeMap;

/// Disjoint, non-adjacent inclusive ranges of `u64`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RangeSet {
    /// `start → end`, both inclusive; no two ranges overlap or touch.
    ranges: BTreeMap<u64, u64>,
    /// Number of members.
    len: u64,
}

impl RangeSet {
    /// An empty set.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Number of members.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The ranges, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }

    /// Adds `start..=end`; returns how many members were new. An empty range (`start > end`)
    /// adds nothing.
    pub(crate) fn insert(&mut self, start: u64, end: u64) -> u64 {
        if start > end {
            return 0;
        }
        let before = self.count_in(start, end);
        let mut lo = start;
        let mut hi = end;
        // A range starting at or before `start` that reaches `start - 1` or beyond merges.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back()
            && e.saturating_add(1) >= start
        {
            lo = s;
            hi = hi.max(e);
            self.ranges.remove(&s);
            self.len -= e - s + 1;
        }
        // Every range starting within `lo..=hi + 1` merges.
        loop {
            let next = self
                .ranges
                .range(lo..=hi.saturating_add(1))
                .next()
                .map(|(&s, &e)| (s, e));
            let Some((s, e)) = next else { break };
            hi = hi.max(e);
            self.ranges.remove(&s);
            self.len -= e - s + 1;
        }
        self.ranges.insert(lo, hi);
        self.len += hi - lo + 1;
        (end - start + 1) - before
    }

    /// Whether `x` is a member.
    #[cfg(test)]
    pub(crate) fn contains(&self, x: u64) -> bool {
        self.ranges
            .range(..=x)
            .next_back()
            .is_some_and(|(_, &e)| e >= x)
    }

    /// Number of members within `start..=end`.
    pub(crate) fn count_in(&self, start: u64, end: u64) -> u64 {
        if start > end {
            return 0;
        }
        let mut n = 0;
        let first = self
            .ranges
            .range(..=start)
            .next_back()
            .map_or(start, |(&s, _)| s);
        for (&s, &e) in self.ranges.range(first..=end) {
            let a = s.max(start);
            let b = e.min(end);
            if a <= b {
                n += b - a + 1;
            }
        }
        n
    }

    /// Whether every member of `start..=end` is in the set.
    pub(crate) fn covers(&self, start: u64, end: u64) -> bool {
        start > end
            || self
                .ranges
                .range(..=start)
                .next_back()
                .is_some_and(|(_, &e)| e >= end)
    }

    /// The smallest `y > x` that is not a member (saturating at `u64::MAX`).
    pub(crate) fn next_missing_after(&self, x: u64) -> u64 {
        let y = x.saturating_add(1);
        match self.ranges.range(..=y).next_back() {
            Some((_, &e)) if e >= y => e.saturating_add(1),
            _ => y,
        }
    }

    /// The ranges of non-members within `start..=end`, in order.
    pub(crate) fn missing_within(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = start;
        while at <= end {
            if let Some((_, &e)) = self.ranges.range(..=at).next_back()
                && e >= at
            {
                // `at` is a member: skip its range.
                if e >= end {
                    break;
                }
                at = e + 1;
                continue;
            }
            // `at` is missing; the hole runs up to the next member (which starts above `at`).
            let to = self
                .ranges
                .range(at..)
                .next()
                .map_or(end, |(&s, _)| (s - 1).min(end));
            out.push((at, to));
            if to >= end {
                break;
            }
            at = to + 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserting_merges_overlapping_and_touching_ranges() {
        let mut set = RangeSet::new();
        assert_eq!(set.insert(5, 7), 3);
        assert_eq!(set.insert(1, 2), 2);
        assert_eq!(set.insert(3, 4), 2);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![(1, 7)]);
        assert_eq!(set.insert(6, 10), 3);
        assert_eq!(set.len(), 10);
        assert_eq!(set.insert(20, 19), 0);
    }

    #[test]
    fn membership_counts_and_holes_agree() {
        let mut set = RangeSet::new();
        set.insert(1, 3);
        set.insert(7, 9);
        assert!(set.contains(2) && !set.contains(5) && set.contains(9));
        assert_eq!(set.count_in(2, 8), 4);
        assert!(set.covers(7, 9) && !set.covers(3, 7));
        assert_eq!(set.next_missing_after(0), 4);
        assert_eq!(set.next_missing_after(4), 5);
        assert_eq!(set.next_missing_after(6), 10);
        assert_eq!(set.missing_within(1, 12), vec![(4, 6), (10, 12)]);
        assert_eq!(set.missing_within(2, 3), vec![]);
        assert_eq!(set.len(), 6);
    }

    #[test]
    fn a_set_matches_a_plain_bitmap_on_random_inserts() {
        let mut seed = 0x1234_5678_u64;
        let mut rnd = move |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % n
        };
        for _ in 0..200 {
            let mut set = RangeSet::new();
            let mut bits = [false; 80];
            for _ in 0..10 {
                let a = 1 + rnd(60);
                let b = a + rnd(5);
                let new = set.insert(a, b);
                let mut expect = 0;
                for x in a..=b {
                    let slot = &mut bits[usize::try_from(x).unwrap_or(0)];
                    if !*slot {
                        expect += 1;
                        *slot = true;
                    }
                }
                assert_eq!(new, expect);
            }
            for x in 0..80_u64 {
                assert_eq!(set.contains(x), bits[usize::try_from(x).unwrap_or(0)]);
            }
            let missing: u64 = set
                .missing_within(1, 63)
                .iter()
                .map(|(a, b)| b - a + 1)
                .sum();
            assert_eq!(missing + set.count_in(1, 63), 63);
        }
    }
}
