//! When a device's cycles run: on the boundaries of its interval, without drift.
//!
//! # Rules
//!
//! - **Aligned.** Cycle `k` belongs to the wall-clock instant `k × interval` (UTC, from the
//!   Unix epoch), so a 5 s device is read at :00, :05, :10, ... and two devices with the same
//!   interval are read in the same slots. The cycle number is that `k`, which is also what
//!   `plan::due_points` counts per-point intervals from, so a 15-minute point is read at
//!   :00, :15, :30 and :45.
//! - **No drift.** The boundary of cycle `k` is computed from one origin as
//!   `origin + (k − k₀) × interval` in integer nanoseconds, never by adding up sleeps.
//! - **Late cycles are skipped, never bunched.** A cycle may start up to half an interval
//!   after its boundary (time for the timer to fire and, on a shared bus, for the request
//!   in flight to finish). Later than that it is an *overrun*: it is skipped, counted, and
//!   the schedule waits for the next boundary. Cycles whose whole slot passed while the
//!   previous cycle ran are skipped and counted the same way. So two cycles never start
//!   less than half an interval apart, and a slow device loses cycles instead of running
//!   them back to back.
//!
//! The wall clock is read once, at creation, to find the phase; after that only the
//! monotonic clock counts, so a wall-clock step (NTP) never makes the schedule jump.

use std::time::Duration;

use tokio::time::Instant;

/// What the schedule says at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing to start before `until`; `skipped` cycles were just given up as overruns.
    Wait {
        /// The next boundary.
        until: Instant,
        /// Cycles skipped by this call.
        skipped: u64,
    },
    /// Start cycle `cycle` now; `skipped` earlier cycles were given up as overruns.
    Start {
        /// The cycle number (`boundary_ms / interval`).
        cycle: u64,
        /// Cycles skipped by this call.
        skipped: u64,
    },
}

/// The cycle schedule of one device. Pure: it is told the time, it never reads it.
#[derive(Debug, Clone)]
pub struct Schedule {
    interval: Duration,
    interval_ms: u64,
    origin: Instant,
    origin_cycle: u64,
    next: u64,
    overruns: u64,
}

impl Schedule {
    /// A schedule for `interval` (rounded down to whole milliseconds, at least 1 ms) whose
    /// first cycle is the first boundary at or after `now_ms`; `now` is the monotonic
    /// instant of the same moment.
    #[must_use]
    pub fn new(interval: Duration, now: Instant, now_ms: i64) -> Self {
        let interval_ms = u64::try_from(interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let now_ms = u64::try_from(now_ms).unwrap_or(0);
        let origin_cycle = now_ms.div_ceil(interval_ms);
        let wait_ms = origin_cycle
            .saturating_mul(interval_ms)
            .saturating_sub(now_ms);
        Self {
            interval: Duration::from_millis(interval_ms),
            interval_ms,
            origin: now + Duration::from_millis(wait_ms),
            origin_cycle,
            next: origin_cycle,
            overruns: 0,
        }
    }

    /// The interval, in whole milliseconds.
    #[must_use]
    pub const fn interval(&self) -> Duration {
        self.interval
    }

    /// The next cycle number the schedule will start.
    #[must_use]
    pub const fn next_cycle(&self) -> u64 {
        self.next
    }

    /// Cycles skipped so far.
    #[must_use]
    pub const fn overruns(&self) -> u64 {
        self.overruns
    }

    /// The monotonic boundary of cycle `cycle` (cycles before the first one map to the
    /// first one's boundary).
    #[must_use]
    pub fn boundary(&self, cycle: u64) -> Instant {
        let n = u128::from(cycle.saturating_sub(self.origin_cycle));
        let nanos = n * u128::from(self.interval_ms) * 1_000_000;
        let offset = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        self.origin.checked_add(offset).unwrap_or(self.origin)
    }

    /// The wall-clock boundary of cycle `cycle`, UTC milliseconds.
    #[must_use]
    pub fn boundary_ms(&self, cycle: u64) -> i64 {
        i64::try_from(cycle.saturating_mul(self.interval_ms)).unwrap_or(i64::MAX)
    }

    /// The boundary of the next cycle.
    #[must_use]
    pub fn next_due(&self) -> Instant {
        self.boundary(self.next)
    }

    /// What to do at `now`: wait, or start a cycle (skipping the late ones; see the module
    /// documentation).
    pub fn poll(&mut self, now: Instant) -> Due {
        let due = self.boundary(self.next);
        if now < due {
            return Due::Wait {
                until: due,
                skipped: 0,
            };
        }
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        let step = u128::from(self.interval_ms) * 1_000_000;
        let k = self
            .origin_cycle
            .saturating_add(u64::try_from(elapsed / step).unwrap_or(u64::MAX))
            .max(self.next);
        let late = now.saturating_duration_since(self.boundary(k));
        let mut skipped = k - self.next;
        self.next = k.saturating_add(1);
        if late <= self.interval / 2 {
            self.overruns += skipped;
            Due::Start { cycle: k, skipped }
        } else {
            skipped += 1;
            self.overruns += skipped;
            Due::Wait {
                until: self.boundary(self.next),
                skipped,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_cycle_is_the_next_wall_clock_boundary() {
        let t0 = Instant::now();
        let s = Schedule::new(5 * S, t0, 1_000_002_300);
        assert_eq!(s.next_cycle(), 200_001);
        assert_eq!(s.next_due(), t0 + Duration::from_millis(2_700));
        assert_eq!(s.boundary_ms(200_001), 1_000_005_000);
    }

    #[test]
    fn a_clock_exactly_on_a_boundary_starts_at_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new(S, t0, 7_000);
        assert_eq!(
            s.poll(t0),
            Due::Start {
                cycle: 7,
                skipped: 0
            }
        );
    }

    #[test]
    fn a_thousand_cycles_keep_their_boundaries_without_drift() {
        let t0 = Instant::now();
        let interval = Duration::from_millis(333);
        let mut s = Schedule::new(interval, t0, 0);
        for k in 0..1000u64 {
            // Wake a little late each time; the boundaries must not move.
            let now = s.next_due() + Duration::from_millis(7);
            assert_eq!(
                s.poll(now),
                Due::Start {
                    cycle: k,
                    skipped: 0
                }
            );
            assert_eq!(s.boundary(k), t0 + interval * u32::try_from(k).unwrap());
        }
        assert_eq!(s.next_due(), t0 + interval * 1000);
        assert_eq!(s.overruns(), 0);
    }

    #[test]
    fn a_cycle_later_than_half_an_interval_is_skipped_and_counted() {
        let t0 = Instant::now();
        let mut s = Schedule::new(S, t0, 0);
        assert_eq!(
            s.poll(t0),
            Due::Start {
                cycle: 0,
                skipped: 0
            }
        );
        // Cycle 0 ran until 1.6 s: cycle 1 is 0.6 s late.
        let now = t0 + Duration::from_millis(1_600);
        assert_eq!(
            s.poll(now),
            Due::Wait {
                until: t0 + 2 * S,
                skipped: 1
            }
        );
        assert_eq!(
            s.poll(t0 + 2 * S),
            Due::Start {
                cycle: 2,
                skipped: 0
            }
        );
        assert_eq!(s.overruns(), 1);
    }

    #[test]
    fn a_slightly_late_cycle_still_runs() {
        let t0 = Instant::now();
        let mut s = Schedule::new(S, t0, 0);
        let _ = s.poll(t0);
        let now = t0 + Duration::from_millis(1_400);
        assert_eq!(
            s.poll(now),
            Due::Start {
                cycle: 1,
                skipped: 0
            }
        );
    }

    #[test]
    fn slots_that_passed_entirely_are_skipped_not_run_back_to_back() {
        let t0 = Instant::now();
        let mut s = Schedule::new(S, t0, 0);
        let _ = s.poll(t0);
        // Cycle 0 ran for 3.2 s: cycles 1 and 2 never started; cycle 3 is 0.2 s late.
        let now = t0 + Duration::from_millis(3_200);
        assert_eq!(
            s.poll(now),
            Due::Start {
                cycle: 3,
                skipped: 2
            }
        );
        assert_eq!(s.next_due(), t0 + 4 * S);
        assert_eq!(s.overruns(), 2);
    }

    proptest::proptest! {
        /// Whatever the interval, the cycle lengths and the timer's lateness, every boundary
        /// is either started once or counted once as an overrun, starts are never more than
        /// half an interval late, and two starts are never closer than half an interval.
        #[test]
        fn every_boundary_is_started_or_counted_and_starts_never_bunch(
            interval_ms in 100u64..5_000,
            steps in proptest::collection::vec((0u64..3_000, 0u64..1_000), 1..200),
            phase_ms in 0i64..10_000_000,
        ) {
            let interval = Duration::from_millis(interval_ms);
            let t0 = Instant::now();
            let mut s = Schedule::new(interval, t0, phase_ms);
            let first = s.next_cycle();
            let mut now = s.next_due();
            let mut started: Vec<(u64, Instant)> = Vec::new();
            for (run_permille, jitter_permille) in steps {
                match s.poll(now) {
                    Due::Start { cycle, .. } => {
                        let late = now.duration_since(s.boundary(cycle));
                        proptest::prop_assert!(late <= interval / 2);
                        if let Some(&(last, at)) = started.last() {
                            proptest::prop_assert!(cycle > last);
                            proptest::prop_assert!(now.duration_since(at) >= interval / 2);
                        }
                        started.push((cycle, now));
                        // The cycle runs for up to three intervals.
                        now += interval * u32::try_from(run_permille).unwrap() / 1000;
                    }
                    Due::Wait { until, .. } => {
                        proptest::prop_assert!(until > now);
                        // The timer fires up to a whole interval late.
                        now = until + interval * u32::try_from(jitter_permille).unwrap() / 1000;
                    }
                }
            }
            let accounted = u64::try_from(started.len()).unwrap() + s.overruns();
            proptest::prop_assert_eq!(accounted, s.next_cycle() - first);
        }
    }

    #[test]
    fn a_clock_before_1970_starts_at_cycle_zero() {
        let t0 = Instant::now();
        let s = Schedule::new(S, t0, -5_000);
        assert_eq!(s.next_cycle(), 0);
        assert_eq!(s.next_due(), t0);
    }
}
