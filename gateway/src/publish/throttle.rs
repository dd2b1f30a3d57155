//! Rate-limited logging: at most one line per kind of trouble every [`EVERY`], with the
//! number of lines held back since the last one.

use std::time::Duration;

use tokio::time::Instant;

/// At most one line per kind every this long (STYLE.md item 8).
pub(crate) const EVERY: Duration = Duration::from_secs(10);

/// One kind of log line.
#[derive(Debug, Clone, Default)]
pub(crate) struct Throttle {
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    /// `Some(lines held back)` when a line may be written at `now`; `None` (and one more held
    /// back) otherwise.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < EVERY => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count_held_back() {
        let t0 = Instant::now();
        let mut t = Throttle::default();
        assert_eq!(t.allow(t0), Some(0));
        assert_eq!(t.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(9)), None);
        assert_eq!(t.allow(t0 + EVERY), Some(2));
        assert_eq!(t.allow(t0 + EVERY), None);
    }
}
