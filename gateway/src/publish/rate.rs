//! The replay rate limit: a token bucket over messages. Pure; the caller passes the time.
//!
//! A full bucket holds `burst` tokens and refills at `rate` tokens a second; each message
//! published takes one. Live traffic (a few messages a second) never notices it; a backlog
//! after an outage drains at `rate` messages a second, oldest first, so the uplink and the
//! sink are not flooded and fresh commits keep getting their turn.

use std::num::NonZeroU32;
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilling at `rate` tokens a second.
    #[must_use]
    pub fn new(rate: NonZeroU32, burst: NonZeroU32, now: Instant) -> Self {
        let burst = f64::from(burst.get());
        Self {
            rate: f64::from(rate.get()),
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = self.at.max(now);
    }

    /// Whole tokens available at `now`.
    pub fn available(&mut self, now: Instant) -> u32 {
        self.refill(now);
        // Bounded by `burst`, a u32.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let whole = self.tokens.floor().max(0.0) as u32;
        whole
    }

    /// Takes `n` tokens at `now` (the bucket may go below zero if more were taken than
    /// available; later messages then wait longer).
    pub fn take(&mut self, n: u32, now: Instant) {
        self.refill(now);
        self.tokens -= f64::from(n);
    }

    /// When the next whole token is available (`now` if one already is).
    pub fn next_token(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= 1.0 {
            return now;
        }
        let wait = (1.0 - self.tokens) / self.rate;
        now + Duration::from_secs_f64(wait.min(86_400.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn a_fresh_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(nz(200), nz(32), t0);
        assert_eq!(b.available(t0), 32);
        b.take(32, t0);
        assert_eq!(b.available(t0), 0);
        assert_eq!(b.next_token(t0), t0 + Duration::from_millis(5));
        assert_eq!(b.available(t0 + Duration::from_millis(50)), 10);
    }

    #[test]
    fn a_sustained_backlog_drains_at_the_configured_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(nz(200), nz(32), t0);
        let mut sent = 0u32;
        let mut now = t0;
        // Ten seconds of "publish whatever the bucket allows", in 1 ms steps.
        while now < t0 + Duration::from_secs(10) {
            let n = b.available(now);
            b.take(n, now);
            sent += n;
            now += Duration::from_millis(1);
        }
        assert!((2000..=2032 + 1).contains(&sent), "sent {sent}");
    }

    #[test]
    fn the_bucket_never_fills_above_its_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(nz(1000), nz(8), t0);
        assert_eq!(b.available(t0 + Duration::from_secs(3600)), 8);
    }

    #[test]
    fn overdrawing_delays_the_next_token() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(nz(10), nz(1), t0);
        b.take(3, t0); // -2 tokens
        assert_eq!(b.next_token(t0), t0 + Duration::from_millis(300));
    }
}
