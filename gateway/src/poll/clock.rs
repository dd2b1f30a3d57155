//! Wall-clock time for reading timestamps, injectable so tests are deterministic.
//!
//! Scheduling runs on tokio's monotonic [`Instant`]; only timestamps (UTC milliseconds) and
//! the alignment of cycles to wall-clock boundaries come from a [`Clock`].

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A source of UTC time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, in UTC milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system's real-time clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            // A clock set before 1970: negative milliseconds, never a panic.
            Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
        }
    }
}

/// UTC time that follows tokio's clock from a fixed start: `start_ms` plus the time elapsed
/// on tokio's [`Instant`] since creation. Under `tokio::time::pause()` it advances exactly
/// with the paused clock, so timestamps in tests are reproducible.
#[derive(Debug, Clone, Copy)]
pub struct InstantClock {
    start_ms: i64,
    start: Instant,
}

impl InstantClock {
    /// A clock reading `start_ms` now.
    #[must_use]
    pub fn starting_at(start_ms: i64) -> Self {
        Self {
            start_ms,
            start: Instant::now(),
        }
    }
}

impl Clock for InstantClock {
    fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.start_ms.saturating_add(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_instant_clock_advances_with_paused_tokio_time() {
        let clock = InstantClock::starting_at(1_000);
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(clock.now_ms(), 3_500);
    }

    #[test]
    fn the_system_clock_is_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }
}
