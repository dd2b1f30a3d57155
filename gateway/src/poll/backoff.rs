//! Exponential backoff with full jitter, the one the gateway uses everywhere it retries.
//!
//! After the `n`-th consecutive failure (counting from 0) the wait is drawn uniformly from
//! `0 ..= min(max, min × 2ⁿ)` ("full jitter": spreads reconnects of many devices over the
//! whole window instead of synchronising them). A success resets the count. The wait never
//! exceeds `max`, and its ceiling never shrinks while failures continue.
//!
//! tokio-modbus has no reconnect policy of its own (`reference/reliability.md`, B.6), so this
//! is ours to own: the poller keeps one per link (reconnects) and one per unit (a unit that
//! does not answer).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// Exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
    until: Option<Instant>,
    rng: StdRng,
}

impl Backoff {
    /// A backoff from `min` to `max` (`max` below `min` is taken as `min`), drawing its
    /// jitter from a generator seeded with `seed`.
    #[must_use]
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        Self {
            min,
            max: max.max(min),
            failures: 0,
            until: None,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The most the next failure can make us wait: `min(max, min × 2^failures)`.
    #[must_use]
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.min
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// Records a failure at `now`; returns the wait drawn, after which [`Backoff::until`] is
    /// `now + wait`.
    pub fn fail(&mut self, now: Instant) -> Duration {
        let ceiling = u64::try_from(self.ceiling().as_nanos()).unwrap_or(u64::MAX);
        let wait = Duration::from_nanos(self.rng.random_range(0..=ceiling));
        self.failures = self.failures.saturating_add(1);
        self.until = Some(now.checked_add(wait).unwrap_or(now));
        wait
    }

    /// Records a success: the next failure starts from `min` again.
    pub fn reset(&mut self) {
        self.failures = 0;
        self.until = None;
    }

    /// Consecutive failures since the last success.
    #[must_use]
    pub const fn failures(&self) -> u32 {
        self.failures
    }

    /// When the current wait ends, if one was drawn.
    #[must_use]
    pub const fn until(&self) -> Option<Instant> {
        self.until
    }

    /// True while the wait drawn by the last failure has not ended at `now`.
    #[must_use]
    pub fn is_waiting(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }

    /// Sleeps until the current wait ends (at once if there is none).
    pub async fn wait(&self) {
        if let Some(until) = self.until {
            tokio::time::sleep_until(until).await;
        }
    }
}

/// Runs `fut` with a time limit: `None` when it did not finish within `limit`.
pub async fn deadline<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    tokio::time::timeout(limit, fut).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);

    #[test]
    fn the_ceiling_doubles_from_min_and_stops_at_max() {
        let mut b = Backoff::new(MIN, MAX, 1);
        let now = Instant::now();
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling().as_secs());
            b.fail(now);
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
    }

    #[test]
    fn every_wait_lies_within_zero_and_the_ceiling() {
        let mut b = Backoff::new(MIN, MAX, 7);
        let now = Instant::now();
        for _ in 0..1000 {
            let ceiling = b.ceiling();
            let wait = b.fail(now);
            assert!(wait <= ceiling, "{wait:?} > {ceiling:?}");
            assert_eq!(b.until(), Some(now + wait));
        }
    }

    #[test]
    fn the_jitter_spreads_over_the_whole_window() {
        // Full jitter: waits at the ceiling of 60 s cover both the low and the high end.
        let mut b = Backoff::new(MIN, MAX, 42);
        let now = Instant::now();
        for _ in 0..10 {
            b.fail(now);
        }
        let waits: Vec<Duration> = (0..200).map(|_| b.fail(now)).collect();
        assert!(waits.iter().any(|w| *w < Duration::from_secs(15)));
        assert!(waits.iter().any(|w| *w > Duration::from_secs(45)));
        assert!(waits.iter().all(|w| *w <= MAX));
    }

    #[test]
    fn the_same_seed_draws_the_same_waits() {
        let now = Instant::now();
        let draw = |seed| {
            let mut b = Backoff::new(MIN, MAX, seed);
            (0..8).map(|_| b.fail(now)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn a_success_resets_the_ceiling() {
        let mut b = Backoff::new(MIN, MAX, 1);
        let now = Instant::now();
        for _ in 0..5 {
            b.fail(now);
        }
        b.reset();
        assert_eq!(b.ceiling(), MIN);
        assert_eq!(b.failures(), 0);
        assert!(!b.is_waiting(now));
    }

    #[test]
    fn a_huge_failure_count_never_overflows() {
        let mut b = Backoff::new(Duration::from_secs(u64::MAX / 4), Duration::MAX, 1);
        let now = Instant::now();
        for _ in 0..100 {
            b.fail(now);
        }
        assert!(b.ceiling() <= Duration::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_takes_exactly_the_drawn_time_on_paused_tokio_time() {
        let mut b = Backoff::new(MIN, MAX, 9);
        for _ in 0..4 {
            let start = Instant::now();
            let wait = b.fail(start);
            assert!(b.is_waiting(start) || wait.is_zero());
            b.wait().await;
            // tokio's timer fires on the next whole millisecond.
            let slept = start.elapsed();
            assert!(
                slept >= wait && slept - wait < Duration::from_millis(1),
                "{slept:?} for {wait:?}"
            );
            assert!(!b.is_waiting(Instant::now()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_gives_up_after_its_limit() {
        let start = Instant::now();
        let out = deadline(MIN, std::future::pending::<()>()).await;
        assert_eq!(out, None);
        assert_eq!(start.elapsed(), MIN);
        assert_eq!(deadline(MIN, async { 5 }).await, Some(5));
    }
}
