//! The KPI window engine: readings in, closed windows of per-point sums out.
//!
//! Pure and synchronous: the caller feeds decoded readings ([`Engine::ingest`]), asks for
//! the windows that are due ([`Engine::close_due`]) on a timer, and saves the state
//! ([`Engine::save`]) to survive a restart ([`Engine::restore`]).
//!
//! # Invariants
//! - Each period (15 min, hour, local day) has a cursor: the start of its oldest window not
//!   yet closed. Windows are a chain from the cursor ([`Calendar::end_of`]); open windows are
//!   kept only when something was put in them.
//! - `close_due(now)` returns every window ending at or before `now`, oldest first, with an
//!   entry for every configured point (a silent point has coverage 0 and no value), and moves
//!   the cursors past them. A window is never returned twice.
//! - A reading older than the latest closed boundary is late: counted and ignored, it never
//!   re-opens a window. So is a reading not newer than the point's previous one.
//! - A sample counts in the window holding its timestamp. A counter's delta between two
//!   samples is spread evenly over the time between them, so a delta across a window
//!   boundary is split in proportion to time, and one across a gap longer than twice the
//!   poll interval is kept and marks the windows it lands in `estimated`. The part of a delta
//!   that falls in an already closed window is carried into the oldest open window of that
//!   period (`estimated`), so no energy is lost or counted twice.
//! - Rates and gauges are integrated by the trapezoid rule between consecutive samples at most
//!   twice the poll interval apart; a longer gap contributes nothing (and its missing samples
//!   lower the coverage). The part of a segment before the latest closed boundary is dropped;
//!   close windows with a grace of one poll interval so no segment straddles a closed
//!   boundary.
//! - The state (cursors, open windows, each point's last sample and counter baseline) is all
//!   there is: [`Engine::save`] then [`Engine::restore`] continues exactly as if there had
//!   been no restart.
//!
//! # Restart and replay
//! A restored engine ignores every reading not newer than its point's last sample
//! ([`Ingested::OutOfOrder`]), so after a crash the caller may restore the last saved state
//! and replay the readings buffered since it was saved: readings already counted are skipped
//! and the rest complete the windows exactly. Saving the state in the same transaction as
//! the KPI records of the windows just closed means a window is neither lost nor emitted twice.
//!
//! Readings more than [`MAX_AHEAD_MS`] past the latest closed boundary are refused, so
//! `close_due` must run regularly (every few minutes at least; [`Engine::next_due`] says when).

use std::collections::{BTreeMap, HashMap};

use fivezero_model::wire::{Period, Quality, Reading, Value, Window};
use serde::{Deserialize, Serialize};

use super::KpiError;
use super::accumulate::{Acc, PointSum, SPIKE_REBASE_AFTER, Step, classify};
use super::spec::{Accumulation, PointSpec};
use super::window::{Calendar, PERIODS};

/// Version of the saved state's layout.
pub const STATE_VERSION: u32 = 1;

/// How far past the latest closed boundary a reading may lie; later ones are refused (a
/// wrong clock would otherwise open windows years ahead).
pub const MAX_AHEAD_MS: i64 = 7 * 86_400_000;

/// How far back `close_due` still returns silent windows after a long stop; older windows
/// with nothing in them are skipped (and the skipped time counted).
pub const MAX_CATCH_UP_MS: i64 = 7 * 86_400_000;

/// Timestamps the engine accepts: 1970-01-01 to 9999-12-31 UTC, milliseconds.
pub const TS_RANGE: std::ops::RangeInclusive<i64> = 0..=253_402_300_799_999;

/// What became of one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Counted as a sample.
    Accepted,
    /// No point is configured for its device and metric.
    NotConfigured,
    /// Not good, or no finite number: a missing sample.
    Missing,
    /// Its timestamp lies in an already closed window.
    Late,
    /// Not newer than the point's previous sample.
    OutOfOrder,
    /// More than [`MAX_AHEAD_MS`] past the latest closed boundary.
    TooFarAhead,
    /// A timestamp outside [`TS_RANGE`].
    OutOfRange,
}

/// Counters of what the engine did with its input, kept across restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Readings counted as samples.
    pub accepted: u64,
    /// Readings of no configured point.
    pub not_configured: u64,
    /// Readings that were not good or had no number.
    pub missing: u64,
    /// Readings in an already closed window.
    pub late: u64,
    /// Readings not newer than their point's previous one.
    pub out_of_order: u64,
    /// Readings too far in the future.
    pub too_far_ahead: u64,
    /// Readings with a timestamp outside [`TS_RANGE`].
    pub out_of_range: u64,
    /// Time skipped by `close_due` after a stop longer than [`MAX_CATCH_UP_MS`], summed over
    /// the periods, milliseconds.
    pub skipped_ms: i64,
}

/// A closed window with one entry per configured point, in configuration order.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedWindow {
    /// The window, in the site's time zone.
    pub window: Window,
    /// Every point's sum.
    pub points: Vec<PointSum>,
}

impl ClosedWindow {
    /// The sum of one point, if configured.
    #[must_use]
    pub fn point(&self, device: &str, metric: &str) -> Option<&PointSum> {
        self.points
            .iter()
            .find(|p| p.device == device && p.metric == metric)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Sample {
    ts: i64,
    value: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct PointState {
    /// Timestamp of the newest accepted sample.
    last_ts: Option<i64>,
    /// Counters: the baseline deltas are taken from; others: the previous sample.
    base: Option<Sample>,
    /// Counters: spikes rejected in a row.
    rejects: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OpenWindow {
    end: i64,
    accs: Vec<Acc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PeriodState {
    period: Period,
    cursor: Option<i64>,
    open: BTreeMap<i64, OpenWindow>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedPoint {
    device: String,
    metric: String,
    accumulation: Accumulation,
    state: PointState,
}

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    version: u32,
    tz: String,
    points: Vec<SavedPoint>,
    periods: Vec<PeriodState>,
    stats: Stats,
}

/// The KPI window engine of one site. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Engine {
    calendar: Calendar,
    specs: Vec<PointSpec>,
    index: HashMap<String, HashMap<String, usize>>,
    points: Vec<PointState>,
    periods: Vec<PeriodState>,
    stats: Stats,
}

impl Engine {
    /// An engine for the site's IANA time zone `tz` and its points, with no history.
    ///
    /// # Errors
    /// [`KpiError::TimeZone`] for an unknown zone, [`KpiError::BadSpec`] for an invalid point,
    /// [`KpiError::DuplicatePoint`] when two specs share a device and metric.
    pub fn new(tz: &str, specs: Vec<PointSpec>) -> Result<Self, KpiError> {
        let calendar = Calendar::new(tz)?;
        let mut index: HashMap<String, HashMap<String, usize>> = HashMap::new();
        for (i, s) in specs.iter().enumerate() {
            s.validate()?;
            let by_metric = index.entry(s.device.clone()).or_default();
            if by_metric.insert(s.metric.clone(), i).is_some() {
                return Err(KpiError::DuplicatePoint {
                    device: s.device.clone(),
                    metric: s.metric.clone(),
                });
            }
        }
        Ok(Self {
            calendar,
            points: vec![PointState::default(); specs.len()],
            periods: PERIODS
                .iter()
                .map(|&period| PeriodState {
                    period,
                    cursor: None,
                    open: BTreeMap::new(),
                })
                .collect(),
            specs,
            index,
            stats: Stats::default(),
        })
    }

    /// An engine continuing from a state saved by [`Engine::save`], with possibly changed
    /// specs: points are matched by device and metric; a new point starts without history,
    /// a removed one is forgotten, a point whose accumulation changed starts afresh, and any
    /// other change of a spec (interval, wrap, rating) applies from now on.
    ///
    /// # Errors
    /// As [`Engine::new`], and [`KpiError::State`] when the bytes are not a saved state of
    /// this version or were saved for another time zone.
    pub fn restore(tz: &str, specs: Vec<PointSpec>, bytes: &[u8]) -> Result<Self, KpiError> {
        let mut engine = Self::new(tz, specs)?;
        let saved: Saved = serde_json::from_slice(bytes).map_err(|e| KpiError::State {
            why: format!("not a saved KPI engine state: {e}"),
        })?;
        if saved.version != STATE_VERSION {
            return Err(KpiError::State {
                why: format!(
                    "saved state has version {}, this gateway reads {STATE_VERSION}",
                    saved.version
                ),
            });
        }
        if saved.tz != tz {
            return Err(KpiError::State {
                why: format!("saved state is for time zone {}, not {tz}", saved.tz),
            });
        }
        // A point whose accumulation changed keeps nothing: a counter baseline is not a gauge
        // sample.
        let map: Vec<Option<usize>> = saved
            .points
            .iter()
            .map(|p| {
                engine
                    .lookup(&p.device, &p.metric)
                    .filter(|&i| engine.specs[i].accumulation == p.accumulation)
            })
            .collect();
        for (p, new) in saved.points.into_iter().zip(&map) {
            if let Some(i) = *new {
                engine.points[i] = p.state;
            }
        }
        let n = engine.specs.len();
        for saved_period in saved.periods {
            let Some(slot) = engine
                .periods
                .iter_mut()
                .find(|p| p.period == saved_period.period)
            else {
                continue;
            };
            slot.cursor = saved_period.cursor;
            for (start, w) in saved_period.open {
                if w.accs.len() != map.len() || w.end <= start {
                    return Err(KpiError::State {
                        why: format!("open window at {start} is inconsistent"),
                    });
                }
                let mut accs = vec![Acc::default(); n];
                for (acc, new) in w.accs.into_iter().zip(&map) {
                    if let Some(i) = *new {
                        accs[i] = acc;
                    }
                }
                slot.open.insert(start, OpenWindow { end: w.end, accs });
            }
        }
        engine.stats = saved.stats;
        Ok(engine)
    }

    /// The whole state as bytes (JSON), for [`Engine::restore`].
    ///
    /// # Errors
    /// [`KpiError::State`] if serialisation fails (it does not for states built from finite
    /// readings).
    pub fn save(&self) -> Result<Vec<u8>, KpiError> {
        let saved = Saved {
            version: STATE_VERSION,
            tz: self.calendar.name().to_owned(),
            points: self
                .specs
                .iter()
                .zip(&self.points)
                .map(|(s, p)| SavedPoint {
                    device: s.device.clone(),
                    metric: s.metric.clone(),
                    accumulation: s.accumulation,
                    state: p.clone(),
                })
                .collect(),
            periods: self.periods.clone(),
            stats: self.stats,
        };
        serde_json::to_vec(&saved).map_err(|e| KpiError::State {
            why: format!("cannot serialise the KPI engine state: {e}"),
        })
    }

    /// The configured points, in the order closed windows list them.
    #[must_use]
    pub fn specs(&self) -> &[PointSpec] {
        &self.specs
    }

    /// The site's time zone.
    #[must_use]
    pub fn time_zone(&self) -> &str {
        self.calendar.name()
    }

    /// What the engine did with its input so far.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The earliest instant at which a window will be due, once the engine has seen a reading
    /// or a `close_due` call; schedule the next [`Engine::close_due`] for then (plus grace).
    #[must_use]
    pub fn next_due(&self) -> Option<i64> {
        self.periods
            .iter()
            .filter_map(|p| {
                let c = p.cursor?;
                Some(
                    p.open
                        .get(&c)
                        .map_or_else(|| self.calendar.end_of(p.period, c), |w| w.end),
                )
            })
            .min()
    }

    fn lookup(&self, device: &str, metric: &str) -> Option<usize> {
        self.index.get(device)?.get(metric).copied()
    }

    /// The latest closed boundary: readings before it are late.
    fn watermark(&self) -> Option<i64> {
        self.periods.iter().filter_map(|p| p.cursor).max()
    }

    fn init_cursors(&mut self, t: i64) {
        for p in &mut self.periods {
            if p.cursor.is_none() {
                p.cursor = Some(self.calendar.start_of(p.period, t));
            }
        }
    }

    /// Feeds every reading of a batch, in order.
    pub fn ingest_all<'a>(&mut self, readings: impl IntoIterator<Item = &'a Reading>) {
        for r in readings {
            self.ingest(r);
        }
    }

    /// Feeds one decoded reading.
    pub fn ingest(&mut self, r: &Reading) -> Ingested {
        let outcome = self.ingest_inner(r);
        let s = &mut self.stats;
        match outcome {
            Ingested::Accepted => s.accepted += 1,
            Ingested::NotConfigured => s.not_configured += 1,
            Ingested::Missing => s.missing += 1,
            Ingested::Late => s.late += 1,
            Ingested::OutOfOrder => s.out_of_order += 1,
            Ingested::TooFarAhead => s.too_far_ahead += 1,
            Ingested::OutOfRange => s.out_of_range += 1,
        }
        outcome
    }

    fn ingest_inner(&mut self, r: &Reading) -> Ingested {
        let Some(i) = self.lookup(&r.device, &r.metric) else {
            return Ingested::NotConfigured;
        };
        let value = match (&r.quality, &r.value) {
            (Quality::Good, Some(Value::Number(v))) if v.is_finite() => *v,
            _ => return Ingested::Missing,
        };
        let ts = r.ts;
        if !TS_RANGE.contains(&ts) {
            return Ingested::OutOfRange;
        }
        self.init_cursors(ts);
        let watermark = self.watermark().unwrap_or(ts);
        if ts < watermark {
            return Ingested::Late;
        }
        if ts > watermark.saturating_add(MAX_AHEAD_MS) {
            return Ingested::TooFarAhead;
        }
        if self.points[i].last_ts.is_some_and(|last| ts <= last) {
            return Ingested::OutOfOrder;
        }
        self.points[i].last_ts = Some(ts);
        self.mark(i, ts, |a| {
            a.samples += 1;
            a.sample_sum += value;
        });
        let now = Sample { ts, value };
        let Some(base) = self.points[i].base else {
            self.points[i].base = Some(now);
            return Ingested::Accepted;
        };
        let spec = &self.specs[i];
        let dt = ts - base.ts;
        let gap = dt > spec.interval_ms.saturating_mul(2);
        match spec.accumulation {
            Accumulation::Counter => {
                let step = classify(spec, base.value, value, dt);
                let state = &mut self.points[i];
                match step {
                    Step::Delta { delta, wrapped } => {
                        state.base = Some(now);
                        state.rejects = 0;
                        self.spread(i, base.ts, ts, delta, gap);
                        if wrapped {
                            self.mark(i, ts, |a| a.wraps += 1);
                        }
                    }
                    Step::Jitter => {
                        state.base = Some(Sample {
                            ts,
                            value: base.value,
                        });
                        state.rejects = 0;
                        self.spread(i, base.ts, ts, 0.0, gap);
                    }
                    Step::Reset { delta } => {
                        state.base = Some(now);
                        state.rejects = 0;
                        self.spread(i, base.ts, ts, delta, gap);
                        self.mark(i, ts, |a| {
                            a.resets += 1;
                            a.fault = true;
                        });
                    }
                    Step::Spike => {
                        state.rejects += 1;
                        if state.rejects >= SPIKE_REBASE_AFTER {
                            state.base = Some(now);
                            state.rejects = 0;
                        }
                        self.mark(i, ts, |a| {
                            a.spikes += 1;
                            a.fault = true;
                        });
                    }
                }
            }
            Accumulation::Integral { .. } | Accumulation::Mean => {
                self.points[i].base = Some(now);
                if gap {
                    self.mark(i, ts, |a| a.gaps += 1);
                } else {
                    self.integrate(i, base, now);
                }
            }
        }
        Ingested::Accepted
    }

    /// The window of `period` (index `p`) holding `t`, which must not be before the cursor.
    fn locate(&self, p: usize, t: i64) -> (i64, i64) {
        let period = &self.periods[p];
        let cursor = period.cursor.unwrap_or(t);
        let mut start = cursor;
        if let Some((&s, w)) = period.open.range(..=t).next_back() {
            if w.end > t {
                return (s, w.end);
            }
            start = start.max(w.end);
        }
        loop {
            let end = self.calendar.end_of(period.period, start);
            if t < end {
                return (start, end);
            }
            start = end;
        }
    }

    fn acc(&mut self, p: usize, window: (i64, i64), i: usize) -> &mut Acc {
        let n = self.specs.len();
        let w = self.periods[p]
            .open
            .entry(window.0)
            .or_insert_with(|| OpenWindow {
                end: window.1,
                accs: vec![Acc::default(); n],
            });
        &mut w.accs[i]
    }

    /// Applies `f` to point `i`'s accumulator in the window holding `t`, in every period.
    fn mark(&mut self, i: usize, t: i64, f: impl Fn(&mut Acc)) {
        for p in 0..self.periods.len() {
            let w = self.locate(p, t);
            f(self.acc(p, w, i));
        }
    }

    /// Spreads a counter delta evenly over `(t0, t1]`, per period.
    fn spread(&mut self, i: usize, t0: i64, t1: i64, delta: f64, gap: bool) {
        let span = (t1 - t0) as f64;
        for p in 0..self.periods.len() {
            let Some(cursor) = self.periods[p].cursor else {
                continue;
            };
            let mut pieces: Vec<((i64, i64), i64, bool)> = Vec::new();
            let mut from = t0;
            if t0 < cursor {
                let w = self.locate(p, cursor);
                pieces.push((w, cursor.min(t1) - t0, true));
                from = cursor;
            }
            while from < t1 {
                let w = self.locate(p, from);
                let to = w.1.min(t1);
                pieces.push((w, to - from, false));
                from = to;
            }
            let mut left = delta;
            let last = pieces.len().saturating_sub(1);
            for (k, (w, ms, carried)) in pieces.into_iter().enumerate() {
                let part = if k == last {
                    left
                } else {
                    delta * (ms as f64 / span)
                };
                left -= part;
                let acc = self.acc(p, w, i);
                acc.total += part;
                acc.credited = true;
                if gap || carried {
                    acc.estimated = true;
                }
            }
            if gap {
                let w = self.locate(p, t1);
                self.acc(p, w, i).gaps += 1;
            }
        }
    }

    /// Integrates the segment `a → b` by the trapezoid rule, per period, leaving out what lies
    /// before the period's cursor.
    fn integrate(&mut self, i: usize, a: Sample, b: Sample) {
        let span = (b.ts - a.ts) as f64;
        let at = |t: i64| a.value + (b.value - a.value) * ((t - a.ts) as f64 / span);
        for p in 0..self.periods.len() {
            let Some(cursor) = self.periods[p].cursor else {
                continue;
            };
            let mut from = a.ts.max(cursor);
            while from < b.ts {
                let w = self.locate(p, from);
                let to = w.1.min(b.ts);
                let (v0, v1) = (at(from), at(to));
                let ms = (to - from) as f64;
                let acc = self.acc(p, w, i);
                acc.total += (v0 + v1) / 2.0 * ms;
                acc.covered_ms += ms;
                from = to;
            }
        }
    }

    /// Closes every window that ends at or before `now_ms` (UTC milliseconds) and returns
    /// them, ordered by end and, for equal ends, shortest period first. Pass the current time
    /// minus a grace of about one poll interval, so the samples just after a boundary are in
    /// before the window before it closes.
    ///
    /// The first call of a fresh engine that has seen no reading starts the windows at the
    /// ones holding `now_ms` and returns nothing.
    pub fn close_due(&mut self, now_ms: i64) -> Vec<ClosedWindow> {
        if !TS_RANGE.contains(&now_ms) {
            return Vec::new();
        }
        self.init_cursors(now_ms);
        let mut closed: Vec<(i64, usize, ClosedWindow)> = Vec::new();
        for p in 0..self.periods.len() {
            let period = self.periods[p].period;
            let Some(mut cursor) = self.periods[p].cursor else {
                continue;
            };
            let oldest_kept = now_ms.saturating_sub(MAX_CATCH_UP_MS);
            let first_open = self.periods[p].open.keys().next().copied();
            if cursor < oldest_kept && first_open.is_none_or(|s| s > oldest_kept) {
                let jump = self.calendar.start_of(period, oldest_kept);
                if jump > cursor {
                    self.stats.skipped_ms = self.stats.skipped_ms.saturating_add(jump - cursor);
                    cursor = jump;
                }
            }
            loop {
                let end = self.periods[p]
                    .open
                    .get(&cursor)
                    .map_or_else(|| self.calendar.end_of(period, cursor), |w| w.end);
                if end > now_ms {
                    break;
                }
                let accs = self.periods[p]
                    .open
                    .remove(&cursor)
                    .map(|w| w.accs)
                    .unwrap_or_else(|| vec![Acc::default(); self.specs.len()]);
                let points = self
                    .specs
                    .iter()
                    .zip(&accs)
                    .map(|(s, a)| PointSum::from_acc(s, a, end - cursor))
                    .collect();
                let window = Window {
                    start: cursor,
                    end,
                    period,
                    tz: self.calendar.name().to_owned(),
                };
                closed.push((end, p, ClosedWindow { window, points }));
                cursor = end;
            }
            self.periods[p].cursor = Some(cursor);
        }
        closed.sort_by_key(|(end, p, _)| (*end, *p));
        closed.into_iter().map(|(_, _, w)| w).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const T0: i64 = 1_780_000_200_000; // 2026-05-28T20:30:00Z, a quarter-hour boundary.

    fn reading(ts: i64, device: &str, metric: &str, value: f64) -> Reading {
        Reading {
            ts,
            device: device.into(),
            metric: metric.into(),
            value: Some(Value::Number(value)),
            quality: Quality::Good,
            reason: None,
        }
    }

    fn counter_engine() -> Engine {
        Engine::new(
            "Asia/Shanghai",
            vec![PointSpec::new(
                "m",
                "electricity.import_energy",
                Accumulation::Counter,
                Duration::from_secs(5),
            )],
        )
        .expect("engine")
    }

    #[test]
    fn t0_is_a_quarter_hour_boundary() {
        assert_eq!(T0 % 900_000, 0);
    }

    #[test]
    fn a_fresh_engine_closes_nothing_on_its_first_call() {
        let mut e = counter_engine();
        assert!(e.close_due(T0 + 1).is_empty());
        assert_eq!(e.next_due(), Some(T0 + 900_000));
    }

    #[test]
    fn a_counter_delta_across_a_boundary_is_split_in_proportion_to_time() {
        let mut e = counter_engine();
        let m = |ts, v| reading(ts, "m", "electricity.import_energy", v);
        e.ingest(&m(T0 + 895_000, 100.0));
        // 10 s later, 5 s of them in the next window: 4 kWh split 2 + 2.
        e.ingest(&m(T0 + 900_000 + 5_000, 104.0));
        let closed = e.close_due(T0 + 900_000);
        let q = closed.first().expect("quarter closed");
        assert_eq!(q.window.period, Period::FifteenMinutes);
        let s = q.point("m", "electricity.import_energy").expect("point");
        assert!((s.sum.value - 2.0).abs() < 1e-9, "{}", s.sum.value);
        assert!(!s.sum.estimated);
    }

    #[test]
    fn a_counter_delta_over_a_gap_is_kept_and_marked_estimated() {
        let mut e = counter_engine();
        let m = |ts, v| reading(ts, "m", "electricity.import_energy", v);
        e.ingest(&m(T0, 100.0));
        e.ingest(&m(T0 + 5_000, 101.0));
        e.ingest(&m(T0 + 605_000, 131.0)); // ten minutes silent
        let closed = e.close_due(T0 + 900_000);
        let s = closed[0]
            .point("m", "electricity.import_energy")
            .expect("point");
        assert!((s.sum.value - 31.0).abs() < 1e-9);
        assert!(s.sum.estimated);
        assert_eq!(s.gaps, 1);
        assert_eq!(s.flags(), vec!["gap_bridged"]);
    }

    #[test]
    fn a_counter_delta_reaching_into_a_closed_window_is_carried_into_the_open_one() {
        // Given a meter that falls silent at minute 10 while its quarter hour closes.
        let mut e = counter_engine();
        let m = |ts, v| reading(ts, "m", "electricity.import_energy", v);
        e.ingest(&m(T0, 100.0));
        e.ingest(&m(T0 + 600_000, 110.0));
        let first = e.close_due(T0 + 900_000);
        let s = first[0]
            .point("m", "electricity.import_energy")
            .expect("point");
        assert!((s.sum.value - 10.0).abs() < 1e-9);
        // When it answers again at minute 20 having counted 10 kWh more.
        e.ingest(&m(T0 + 1_200_000, 120.0));
        let second = e.close_due(T0 + 1_800_000);
        // Then the open quarter hour gets all of it, estimated; nothing is lost.
        let s = second[0]
            .point("m", "electricity.import_energy")
            .expect("point");
        assert!((s.sum.value - 10.0).abs() < 1e-9, "{}", s.sum.value);
        assert!(s.sum.estimated);
        // And the hour, still open at the first close, has both deltas where they belong.
        let h = second
            .iter()
            .find(|w| w.window.period == Period::Hour)
            .expect("hour");
        assert_eq!(h.window.end, T0 + 1_800_000);
        let hs = h.point("m", "electricity.import_energy").expect("point");
        assert!((hs.sum.value - 20.0).abs() < 1e-9, "{}", hs.sum.value);
    }

    #[test]
    fn next_due_follows_the_closed_windows() {
        let mut e = counter_engine();
        e.close_due(T0 + 1);
        assert_eq!(e.next_due(), Some(T0 + 900_000));
        e.close_due(T0 + 900_000);
        assert_eq!(e.next_due(), Some(T0 + 1_800_000));
    }

    #[test]
    fn a_late_reading_is_counted_and_does_not_reopen_the_window() {
        let mut e = counter_engine();
        let m = |ts, v| reading(ts, "m", "electricity.import_energy", v);
        e.ingest(&m(T0, 100.0));
        let first = e.close_due(T0 + 900_000);
        assert_eq!(first.len(), 1);
        assert_eq!(e.ingest(&m(T0 + 10_000, 101.0)), Ingested::Late);
        assert_eq!(e.stats().late, 1);
        assert!(e.close_due(T0 + 900_000).is_empty());
    }

    #[test]
    fn readings_that_are_not_good_or_unknown_or_repeated_are_not_samples() {
        let mut e = counter_engine();
        let mut bad = reading(T0, "m", "electricity.import_energy", 1.0);
        bad.quality = Quality::Error;
        assert_eq!(e.ingest(&bad), Ingested::Missing);
        let mut none = reading(T0, "m", "electricity.import_energy", 1.0);
        none.value = None;
        assert_eq!(e.ingest(&none), Ingested::Missing);
        assert_eq!(
            e.ingest(&reading(T0, "x", "electricity.import_energy", 1.0)),
            Ingested::NotConfigured
        );
        let ok = reading(T0, "m", "electricity.import_energy", 1.0);
        assert_eq!(e.ingest(&ok), Ingested::Accepted);
        assert_eq!(e.ingest(&ok), Ingested::OutOfOrder);
        let far = reading(
            T0 + MAX_AHEAD_MS + 900_000,
            "m",
            "electricity.import_energy",
            2.0,
        );
        assert_eq!(e.ingest(&far), Ingested::TooFarAhead);
        let odd = reading(-5, "m", "electricity.import_energy", 2.0);
        assert_eq!(e.ingest(&odd), Ingested::OutOfRange);
        assert_eq!(e.stats().out_of_range, 1);
    }

    #[test]
    fn a_single_spike_is_rejected_and_the_next_reading_counts_from_the_old_baseline() {
        let mut e = Engine::new(
            "Asia/Shanghai",
            vec![
                PointSpec::new(
                    "m",
                    "electricity.import_energy",
                    Accumulation::Counter,
                    Duration::from_secs(5),
                )
                .with_max_rate_per_hour(Some(360.0)), // 0.1 kWh per 1 s
            ],
        )
        .expect("engine");
        let m = |ts, v| reading(ts, "m", "electricity.import_energy", v);
        e.ingest(&m(T0, 10.0));
        e.ingest(&m(T0 + 5_000, 10.5));
        e.ingest(&m(T0 + 10_000, 9_999.0)); // glitch
        e.ingest(&m(T0 + 15_000, 11.5));
        let closed = e.close_due(T0 + 900_000);
        let s = closed[0]
            .point("m", "electricity.import_energy")
            .expect("point");
        assert!((s.sum.value - 1.5).abs() < 1e-9, "{}", s.sum.value);
        assert!(s.sum.fault);
        assert_eq!(s.spikes, 1);
        assert_eq!(s.flags(), vec!["spike_rejected"]);
    }

    #[test]
    fn a_meter_that_keeps_jumping_is_rebased_after_three_rejections() {
        let mut e = Engine::new(
            "Asia/Shanghai",
            vec![
                PointSpec::new(
                    "m",
                    "electricity.import_energy",
                    Accumulation::Counter,
                    Duration::from_secs(5),
                )
                .with_max_rate_per_hour(Some(360.0)),
            ],
        )
        .expect("engine");
        let m = |ts, v| reading(ts, "m", "electricity.import_energy", v);
        e.ingest(&m(T0, 10.0));
        for k in 1..=3 {
            e.ingest(&m(T0 + k * 5_000, 5_000.0 + k as f64 * 0.1));
        }
        e.ingest(&m(T0 + 20_000, 5_000.5));
        let closed = e.close_due(T0 + 900_000);
        let s = closed[0]
            .point("m", "electricity.import_energy")
            .expect("point");
        assert!((s.sum.value - 0.2).abs() < 1e-9, "{}", s.sum.value);
        assert_eq!(s.spikes, 3);
    }

    #[test]
    fn a_gauge_is_time_weighted_not_sample_averaged() {
        let mut e = Engine::new(
            "Asia/Shanghai",
            vec![PointSpec::new(
                "b",
                "stack.flue_gas_temperature",
                Accumulation::Mean,
                Duration::from_secs(300),
            )],
        )
        .expect("engine");
        let g = |ts, v| reading(ts, "b", "stack.flue_gas_temperature", v);
        // 40 °C for 10 minutes, then a ramp 40 → 100 over 5 minutes.
        e.ingest(&g(T0, 40.0));
        e.ingest(&g(T0 + 300_000, 40.0));
        e.ingest(&g(T0 + 600_000, 40.0));
        e.ingest(&g(T0 + 900_000, 100.0));
        let closed = e.close_due(T0 + 900_000);
        let s = closed[0]
            .point("b", "stack.flue_gas_temperature")
            .expect("point");
        // (40·600 + 70·300) / 900 = 50.
        assert!((s.sum.value - 50.0).abs() < 1e-9, "{}", s.sum.value);
        assert_eq!(s.sum.coverage, 1.0);
    }

    #[test]
    fn windows_of_all_periods_close_in_order_with_an_entry_for_a_silent_point() {
        let mut e = counter_engine();
        e.close_due(T0);
        let closed = e.close_due(T0 + 3_600_000 * 24);
        let quarters = closed
            .iter()
            .filter(|w| w.window.period == Period::FifteenMinutes)
            .count();
        let hours = closed
            .iter()
            .filter(|w| w.window.period == Period::Hour)
            .count();
        assert_eq!(quarters, 96);
        assert_eq!(hours, 24);
        assert!(
            closed
                .windows(2)
                .all(|p| p[0].window.end <= p[1].window.end)
        );
        for w in &closed {
            let s = &w.points[0];
            assert!(!s.has_value);
            assert_eq!(s.sum.coverage, 0.0);
            assert_eq!(s.input(), None);
        }
    }

    #[test]
    fn a_long_stop_returns_at_most_a_week_of_silent_windows() {
        let mut e = counter_engine();
        e.close_due(T0);
        let closed = e.close_due(T0 + 30 * 86_400_000);
        let quarters = closed
            .iter()
            .filter(|w| w.window.period == Period::FifteenMinutes)
            .count();
        assert!(quarters <= 7 * 96 + 1, "{quarters}");
        assert!(e.stats().skipped_ms > 0);
    }

    #[test]
    fn a_restored_state_for_another_zone_or_garbage_is_refused() {
        let e = counter_engine();
        let bytes = e.save().expect("save");
        let specs = e.specs().to_vec();
        assert!(matches!(
            Engine::restore("Europe/Berlin", specs.clone(), &bytes),
            Err(KpiError::State { .. })
        ));
        assert!(matches!(
            Engine::restore("Asia/Shanghai", specs, b"{nope"),
            Err(KpiError::State { .. })
        ));
    }

    #[test]
    fn a_point_added_after_a_restart_starts_fresh_and_old_ones_keep_their_history() {
        let mut e = counter_engine();
        let m = |ts, v| reading(ts, "m", "electricity.import_energy", v);
        e.ingest(&m(T0, 100.0));
        let bytes = e.save().expect("save");
        let mut specs = vec![PointSpec::new(
            "b",
            "stack.o2",
            Accumulation::Mean,
            Duration::from_secs(5),
        )];
        specs.extend(e.specs().iter().cloned());
        let mut r = Engine::restore("Asia/Shanghai", specs, &bytes).expect("restore");
        r.ingest(&m(T0 + 5_000, 101.0));
        let closed = r.close_due(T0 + 900_000);
        let s = closed[0]
            .point("m", "electricity.import_energy")
            .expect("point");
        assert!((s.sum.value - 1.0).abs() < 1e-12);
        assert_eq!(s.samples, 2);
        assert!(!closed[0].point("b", "stack.o2").expect("point").has_value);
    }

    #[test]
    fn a_point_whose_accumulation_changed_starts_afresh_after_a_restart() {
        let mut e = counter_engine();
        let m = |ts, v| reading(ts, "m", "electricity.import_energy", v);
        e.ingest(&m(T0, 100.0));
        let bytes = e.save().expect("save");
        let specs = vec![PointSpec::new(
            "m",
            "electricity.import_energy",
            Accumulation::Mean,
            Duration::from_secs(5),
        )];
        let mut r = Engine::restore("Asia/Shanghai", specs, &bytes).expect("restore");
        r.ingest(&m(T0 + 5_000, 101.0));
        let closed = r.close_due(T0 + 900_000);
        let s = closed[0]
            .point("m", "electricity.import_energy")
            .expect("point");
        assert_eq!(s.samples, 1);
        assert_eq!(s.sum.value, 101.0);
    }

    #[test]
    fn duplicate_points_are_refused() {
        let s = PointSpec::new(
            "m",
            "pv.energy",
            Accumulation::Counter,
            Duration::from_secs(5),
        );
        assert!(matches!(
            Engine::new("UTC", vec![s.clone(), s]),
            Err(KpiError::DuplicatePoint { .. })
        ));
    }
}
