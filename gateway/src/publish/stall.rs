//! When to replay messages the broker acknowledged but the sink never stored. Pure; the
//! caller passes the time.
//!
//! A broker's PUBACK is not proof (`reference/reliability.md`, B.6 item 8): a broker drops
//! queued messages when a subscriber's queue is full (1000 messages by default in Mosquitto
//! and EMQX) or when it restarts without persistence. With `retain_until = "sink_ack"` the
//! outbox keeps such messages until the sink's watermark passes them, and the publisher
//! republishes them after every reconnect. While the connection stays up, this watch decides
//! when to republish anyway: the sink's watermark (for the current epoch) is behind what the
//! broker acknowledged and has not moved for `timeout`. The timeout doubles after each
//! replay that does not move the watermark (up to `max`), so a sink that is down for hours
//! costs a replay every `max`, not a flood; any progress resets it.

use std::time::Duration;

use tokio::time::Instant;

/// Watches the sink's watermark against the broker's acknowledgements.
#[derive(Debug, Clone)]
pub struct StallWatch {
    min: Duration,
    max: Duration,
    timeout: Duration,
    /// The sink's watermark for the current epoch.
    sink: u64,
    /// Highest sequence the broker acknowledged.
    broker: u64,
    /// Since when the sink has been behind without moving.
    behind_since: Option<Instant>,
}

impl StallWatch {
    /// A watch that first replays after `min` without progress, doubling up to `max`.
    #[must_use]
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            timeout: min,
            sink: 0,
            broker: 0,
            behind_since: None,
        }
    }

    /// The sink's watermark for the current epoch arrived.
    pub fn sink_acked(&mut self, seq: u64, now: Instant) {
        if seq > self.sink {
            self.sink = seq;
            self.timeout = self.min;
            self.behind_since = (self.broker > self.sink).then_some(now);
        }
    }

    /// The broker acknowledged sequences up to `last_seq`.
    pub fn broker_acked(&mut self, last_seq: u64, now: Instant) {
        self.broker = self.broker.max(last_seq);
        if self.broker > self.sink && self.behind_since.is_none() {
            self.behind_since = Some(now);
        }
    }

    /// When a replay is due, if the sink is behind.
    #[must_use]
    pub fn due(&self) -> Option<Instant> {
        self.behind_since.map(|since| since + self.timeout)
    }

    /// True when a replay is due at `now`; the caller replays and calls
    /// [`StallWatch::replayed`].
    #[must_use]
    pub fn is_due(&self, now: Instant) -> bool {
        self.due().is_some_and(|at| now >= at)
    }

    /// A replay was started at `now`: wait twice as long before the next one.
    pub fn replayed(&mut self, now: Instant) {
        self.timeout = self.timeout.saturating_mul(2).min(self.max);
        if self.behind_since.is_some() {
            self.behind_since = Some(now);
        }
    }

    /// The sink's watermark as last seen.
    #[must_use]
    pub const fn sink(&self) -> u64 {
        self.sink
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);
    const MAX: Duration = Duration::from_secs(600);

    #[test]
    fn a_sink_that_keeps_up_never_triggers_a_replay() {
        let t0 = Instant::now();
        let mut s = StallWatch::new(MIN, MAX);
        for i in 1..100u64 {
            let now = t0 + Duration::from_secs(i * 10);
            s.broker_acked(i * 10, now);
            s.sink_acked(i * 10 - 5, now + Duration::from_millis(100));
            assert!(!s.is_due(now + Duration::from_secs(5)));
        }
    }

    #[test]
    fn a_watermark_stuck_behind_the_broker_triggers_a_replay_after_the_timeout() {
        let t0 = Instant::now();
        let mut s = StallWatch::new(MIN, MAX);
        s.sink_acked(100, t0);
        s.broker_acked(500, t0);
        assert_eq!(s.due(), Some(t0 + MIN));
        assert!(!s.is_due(t0 + MIN - Duration::from_millis(1)));
        assert!(s.is_due(t0 + MIN));
    }

    #[test]
    fn replays_without_progress_back_off_up_to_the_maximum() {
        let t0 = Instant::now();
        let mut s = StallWatch::new(MIN, MAX);
        s.broker_acked(10, t0);
        let mut now = t0;
        let mut gaps = Vec::new();
        for _ in 0..6 {
            let at = s.due().unwrap();
            gaps.push((at - now).as_secs());
            now = at;
            s.replayed(now);
        }
        assert_eq!(gaps, [60, 120, 240, 480, 600, 600]);
    }

    #[test]
    fn progress_resets_the_timeout() {
        let t0 = Instant::now();
        let mut s = StallWatch::new(MIN, MAX);
        s.broker_acked(10, t0);
        s.replayed(t0 + MIN);
        s.replayed(t0 + MIN * 3);
        let t1 = t0 + MIN * 4;
        s.sink_acked(5, t1);
        assert_eq!(s.due(), Some(t1 + MIN));
        s.sink_acked(10, t1);
        assert_eq!(s.due(), None, "caught up");
    }
}
