//! The read planner: which Modbus reads fetch the points due in one poll cycle.
//!
//! [`plan`] turns a set of due points into [`ReadRequest`]s; [`due_points`] says which points
//! are due in a cycle; [`minimum_requests`] is the yardstick the plan is tracked against.
//!
//! # Contract
//!
//! The poller relies on these invariants of [`plan`] (checked by `tests/plan.rs`, including
//! property tests over random profiles):
//!
//! 1. **Needed points.** The needed points are the due points (indices past the end of the
//!    profile are ignored, duplicates are harmless) plus, transitively, the point named by each
//!    one's `scale_factor`. Every needed point is listed in exactly one request, whose table is
//!    the point's table and whose range contains all of the point; no other point is listed.
//! 2. **Size.** A request reads at least one and at most `max_registers` registers (register
//!    tables) or `max_bits` bits (coil and discrete tables), limits clamped to the Modbus maxima
//!    125 and 2000, and `start + count <= 65536`: it never crosses address 65535.
//! 3. **Gaps.** A request's range is exactly the hull of its points (it starts at its first
//!    point and ends with its last). Inside it, no run of registers (or bits) covered by none of
//!    its points is longer than `max_gap`, except between a point and its scale-factor point:
//!    those two are kept in one request whenever the span from the first register of either to
//!    the last register of either fits in one request, and the registers between them may then
//!    be read whatever `max_gap` says. SunSpec needs this: a value and its `*_SF` must come from
//!    the same read, or a scale-factor change between two reads corrupts the value. When one
//!    scale factor serves dependants spread wider than one request, the dependants nearest to
//!    it (smallest span first, then lowest address) are kept with it until the request is
//!    full; the others read it from another request.
//! 4. **Single point.** With `single_point`, every needed point gets a request of its own,
//!    exactly its registers, and rule 3's pairing does not apply.
//! 5. **Fewest requests.** No plan keeping rules 1–4 has fewer requests (see below; when one
//!    scale factor serves too wide a spread: no plan keeping the same pairs together).
//! 6. **Order.** Requests are sorted by (table, start), then count and points; the points of a
//!    request are sorted by index. The same profile and due set always give the same plan.
//!
//! A validated profile has no point past 65535 or wider than one request. Should one get here
//! anyway, it is never merged: it gets a request of its own starting at its address, cut at
//! 65535 and possibly over the size limit, so the device's refusal or the codec's short-data
//! error surfaces for that point alone. Nothing here panics, whatever the profile holds.
//!
//! # Algorithm and why it is optimal
//!
//! Points bound to their scale factor (rule 3) are first joined into *units*, each read as one
//! interval (the hull of its members; the pairs' spans cover that hull, so it has no gap that
//! rule 3 forbids). Free points are units of one. Units are sorted by (table, start, end) and
//! taken greedily: a unit joins the open request if it is of the same table, the request's
//! hull including it fits the size limit, and the run from the request's end to the unit's
//! start is at most `max_gap`; otherwise the request is closed and the unit opens the next.
//!
//! Each request's end `M` lies past the end of every unit before it in this order (by
//! induction: a request opened for a gap starts past the previous `M`; one opened for size ends
//! more than one limit past the previous request's start). Call the unit that opens a request
//! its opener. Take two openers `a` before `b`, and the request `b` opens. If it was opened for
//! a gap, the registers from the previous `M` to `b`'s start belong to no unit at all and lie
//! between `a` and `b`: a request holding both would bridge an unread run longer than
//! `max_gap`. If it was opened for size, `b` ends more than one limit past the previous
//! opener's start, which is at or after `a`'s start: a request holding both would be too long.
//! So the openers are pairwise impossible to read together, every plan needs at least as many
//! requests as there are openers, and the greedy uses exactly that many. The argument holds
//! with overlapping points, and also with the looser reading of the gap rule (registers of
//! points served by another request do not count as unread), so the greedy is optimal in both.
//! [`minimum_requests`] runs the same greedy over single points with an unlimited gap, so it is
//! the true minimum under the size limits alone.

use std::time::Duration;

use crate::profile::{Point, Profile, Table};

/// The most registers one Modbus read may return (functions 3 and 4).
const MODBUS_MAX_REGISTERS: u16 = 125;
/// The most coils or discrete inputs one Modbus read may return (functions 1 and 2).
const MODBUS_MAX_BITS: u16 = 2000;
/// One past the highest Modbus address.
const ADDRESS_SPACE: u32 = 65_536;

/// One Modbus read: the function follows from the table (coil 1, discrete 2, holding 3,
/// input 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// The table read.
    pub table: Table,
    /// 0-based address of the first register or bit.
    pub start: u16,
    /// Registers or bits read (at least 1; `start + count <= 65536`).
    pub count: u16,
    /// Indices into `Profile::points` of the points this read serves, sorted.
    pub points: Vec<usize>,
}

impl ReadRequest {
    /// One past the last register or bit read.
    #[must_use]
    pub fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
}

/// The requests that read the points `due` (indices into `profile.points`) in one cycle.
///
/// Scale-factor points of due points are added; see the [module documentation](self) for the
/// rules the result keeps.
#[must_use]
pub fn plan(profile: &Profile, due: &[usize]) -> Vec<ReadRequest> {
    let needed = needed(profile, due);
    let mut out = Vec::with_capacity(needed.len());
    let mut readable = Vec::with_capacity(needed.len());
    for &i in &needed {
        if profile.limits.single_point || !is_readable(profile, i) {
            out.push(own_request(profile, i));
        } else {
            readable.push(i);
        }
    }
    let units = units(profile, &readable);
    let gap = u32::from(profile.limits.max_gap);
    out.extend(
        greedy(profile, units, gap)
            .into_iter()
            .map(Group::into_request),
    );
    out.sort_by(|a, b| {
        (a.table, a.start, a.count, &a.points).cmp(&(b.table, b.start, b.count, &b.points))
    });
    out
}

/// The requests that read every point of the profile: a full cycle.
#[must_use]
pub fn plan_all(profile: &Profile) -> Vec<ReadRequest> {
    let all: Vec<usize> = (0..profile.points.len()).collect();
    plan(profile, &all)
}

/// The fewest requests any planner could use for the points `due` and their scale factors,
/// given only the device's size limits: as if `max_gap` were unlimited, `single_point` false
/// and scale factors free to come from any read.
///
/// `plan(profile, due).len()` is never below this; the project tracks the ratio.
#[must_use]
pub fn minimum_requests(profile: &Profile, due: &[usize]) -> usize {
    let needed = needed(profile, due);
    let mut unreadable = 0;
    let mut singles = Vec::with_capacity(needed.len());
    for i in needed {
        if is_readable(profile, i) {
            singles.push(Unit::of(profile, i));
        } else {
            unreadable += 1;
        }
    }
    unreadable + greedy(profile, singles, u32::MAX).len()
}

/// The points due in cycle number `cycle` (0-based; cycle `k` covers the time from
/// `k × device_interval` to `(k + 1) × device_interval`), sorted by index.
///
/// A point that reports a reading (metric set) is due
/// - in every cycle when it has no interval of its own, or one no longer than the device's;
/// - otherwise when a multiple of its interval (0, `interval`, `2 × interval`, ...) falls within
///   the cycle. An interval `n` times the device's is thus due every `n`-th cycle, starting with
///   cycle 0; 25 s on a 10 s device is due in cycles 0, 2, 5, 7, 10, ... Every multiple falls in
///   exactly one cycle, so no point waits more than `⌈interval / device_interval⌉` cycles.
///
/// Helper points (no metric) are never due on their own: they are listed exactly when a due
/// point uses them (transitively) as its scale factor, whatever their own interval. A device
/// interval of zero makes every point due, and so does, for the point concerned, time
/// arithmetic past `u128` nanoseconds (cycle numbers no poller reaches).
#[must_use]
pub fn due_points(profile: &Profile, device_interval: Duration, cycle: u64) -> Vec<usize> {
    let due: Vec<usize> = profile
        .points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.metric.is_some() && is_due(p.interval, device_interval, cycle))
        .map(|(i, _)| i)
        .collect();
    needed(profile, &due)
}

/// Whether a point with this own interval is due in cycle `cycle`.
fn is_due(interval: Option<Duration>, device_interval: Duration, cycle: u64) -> bool {
    let Some(interval) = interval else {
        return true;
    };
    let d = device_interval.as_nanos();
    let i = interval.as_nanos();
    if d == 0 || i <= d {
        return true;
    }
    let k = u128::from(cycle);
    if i % d == 0 {
        return k % (i / d) == 0;
    }
    // The first multiple of `i` at or after the cycle's start lies before the cycle's end.
    let Some(start) = k.checked_mul(d) else {
        return true;
    };
    let Some(end) = start.checked_add(d) else {
        return true;
    };
    match start.div_ceil(i).checked_mul(i) {
        Some(boundary) => boundary < end,
        None => true,
    }
}

/// The due points that exist, plus their scale-factor points (transitively), sorted.
fn needed(profile: &Profile, due: &[usize]) -> Vec<usize> {
    let n = profile.points.len();
    let mut mark = vec![false; n];
    let mut stack: Vec<usize> = due.iter().copied().filter(|&i| i < n).collect();
    while let Some(i) = stack.pop() {
        let Some(seen) = mark.get_mut(i) else {
            continue;
        };
        if *seen {
            continue;
        }
        *seen = true;
        let sf = profile.points.get(i).and_then(|p| p.scale_factor);
        stack.extend(sf.filter(|&sf| sf < n));
    }
    mark.iter()
        .enumerate()
        .filter(|(_, m)| **m)
        .map(|(i, _)| i)
        .collect()
}

/// The request size limit of a table, clamped to what Modbus allows.
fn limit(profile: &Profile, table: Table) -> u32 {
    let l = &profile.limits;
    let v = if table.is_bits() {
        l.max_bits.clamp(1, MODBUS_MAX_BITS)
    } else {
        l.max_registers.clamp(1, MODBUS_MAX_REGISTERS)
    };
    u32::from(v)
}

/// The registers (or bits) a point occupies, `[start, end)`; a zero width counts as one.
fn span(point: &Point) -> (u32, u32) {
    let start = u32::from(point.address);
    (start, point.end().max(start + 1))
}

/// True when the point fits one request and the address space (always, once validated).
fn is_readable(profile: &Profile, i: usize) -> bool {
    profile.points.get(i).is_some_and(|p| {
        let (start, end) = span(p);
        end <= ADDRESS_SPACE && end - start <= limit(profile, p.table)
    })
}

/// A request for one point alone: exactly its registers, cut at 65535.
fn own_request(profile: &Profile, i: usize) -> ReadRequest {
    let (table, start, end) = profile.points.get(i).map_or((Table::Holding, 0, 1), |p| {
        let (s, e) = span(p);
        (p.table, s, e.min(ADDRESS_SPACE))
    });
    ReadRequest {
        table,
        start: u16::try_from(start).unwrap_or(u16::MAX),
        count: u16::try_from(end.saturating_sub(start).max(1)).unwrap_or(u16::MAX),
        points: vec![i],
    }
}

/// Points read as one interval: a point alone, or points bound to their scale factors.
#[derive(Debug)]
struct Unit {
    table: Table,
    start: u32,
    end: u32,
    points: Vec<usize>,
}

impl Unit {
    /// The unit of one point (which must exist).
    fn of(profile: &Profile, i: usize) -> Self {
        let (table, start, end) = profile.points.get(i).map_or((Table::Holding, 0, 1), |p| {
            let (s, e) = span(p);
            (p.table, s, e)
        });
        Self {
            table,
            start,
            end,
            points: vec![i],
        }
    }
}

/// Joins each readable needed point to its scale-factor point when their span fits one
/// request, nearest pairs first, as long as the joined hull still fits.
fn units(profile: &Profile, readable: &[usize]) -> Vec<Unit> {
    let n = profile.points.len();
    // Slot of each readable point in `readable`, for the union-find.
    let mut slot = vec![usize::MAX; n];
    for (k, &i) in readable.iter().enumerate() {
        if let Some(s) = slot.get_mut(i) {
            *s = k;
        }
    }
    let mut parent: Vec<usize> = (0..readable.len()).collect();
    let mut hull: Vec<(u32, u32)> = readable
        .iter()
        .map(|&i| profile.points.get(i).map_or((0, 1), span))
        .collect();

    // Candidate pairs (span, address of the dependant, dependant slot, scale-factor slot).
    let mut pairs = Vec::new();
    for (k, &i) in readable.iter().enumerate() {
        let Some(p) = profile.points.get(i) else {
            continue;
        };
        let Some(sf) = p.scale_factor else { continue };
        let Some(&j) = slot.get(sf) else { continue };
        let Some(q) = profile.points.get(sf) else {
            continue;
        };
        if j == usize::MAX || sf == i || q.table != p.table {
            continue;
        }
        let (ps, pe) = span(p);
        let (qs, qe) = span(q);
        let width = pe.max(qe) - ps.min(qs);
        if width <= limit(profile, p.table) {
            pairs.push((width, ps, k, j));
        }
    }
    pairs.sort_unstable();

    for (_, _, a, b) in pairs {
        let ra = find(&mut parent, a);
        let rb = find(&mut parent, b);
        if ra == rb {
            continue;
        }
        let (Some(&(sa, ea)), Some(&(sb, eb))) = (hull.get(ra), hull.get(rb)) else {
            continue;
        };
        let table = readable
            .get(a)
            .and_then(|&i| profile.points.get(i))
            .map_or(Table::Holding, |p| p.table);
        let merged = (sa.min(sb), ea.max(eb));
        if merged.1 - merged.0 <= limit(profile, table) {
            if let Some(pr) = parent.get_mut(rb) {
                *pr = ra;
            }
            if let Some(h) = hull.get_mut(ra) {
                *h = merged;
            }
        }
    }

    let mut by_root: Vec<Option<Unit>> = (0..readable.len()).map(|_| None).collect();
    for (k, &i) in readable.iter().enumerate() {
        let r = find(&mut parent, k);
        let (start, end) = hull.get(r).copied().unwrap_or((0, 1));
        let Some(entry) = by_root.get_mut(r) else {
            continue;
        };
        match entry {
            Some(unit) => unit.points.push(i),
            None => {
                let mut unit = Unit::of(profile, i);
                unit.start = start;
                unit.end = end;
                *entry = Some(unit);
            }
        }
    }
    by_root.into_iter().flatten().collect()
}

/// Union-find root with path halving; out-of-range slots are their own root.
fn find(parent: &mut [usize], mut x: usize) -> usize {
    loop {
        let Some(&p) = parent.get(x) else { return x };
        if p == x {
            return x;
        }
        let gp = parent.get(p).copied().unwrap_or(p);
        if let Some(slot) = parent.get_mut(x) {
            *slot = gp;
        }
        x = gp;
    }
}

/// An open request while planning.
#[derive(Debug)]
struct Group {
    table: Table,
    start: u32,
    end: u32,
    points: Vec<usize>,
}

impl Group {
    fn into_request(mut self) -> ReadRequest {
        self.points.sort_unstable();
        self.points.dedup();
        ReadRequest {
            table: self.table,
            start: u16::try_from(self.start).unwrap_or(u16::MAX),
            count: u16::try_from(self.end.saturating_sub(self.start).max(1)).unwrap_or(u16::MAX),
            points: self.points,
        }
    }
}

/// The greedy over units sorted by (table, start, end): fewest groups (see module docs).
fn greedy(profile: &Profile, mut units: Vec<Unit>, max_gap: u32) -> Vec<Group> {
    units.sort_unstable_by(|a, b| {
        (a.table, a.start, a.end, a.points.first()).cmp(&(
            b.table,
            b.start,
            b.end,
            b.points.first(),
        ))
    });
    let mut groups: Vec<Group> = Vec::new();
    for unit in units {
        let open = groups.last_mut().filter(|g| {
            g.table == unit.table
                && unit.end.max(g.end).saturating_sub(g.start) <= limit(profile, unit.table)
                && unit.start.saturating_sub(g.end) <= max_gap
        });
        if let Some(g) = open {
            g.end = g.end.max(unit.end);
            g.points.extend(unit.points);
            continue;
        }
        groups.push(Group {
            table: unit.table,
            start: unit.start,
            end: unit.end,
            points: unit.points,
        });
    }
    groups
}
