//! Time windows in a parameter: daily local-time windows (`"06:00-14:00"`, `"22:00-06:00"`
//! wraps past midnight) and absolute ones (`"2026-06-21T13:00:00+08:00/2026-06-21T14:30:00+08:00"`).

use super::site::Env;

const DAY_MS: i64 = 86_400_000;

/// A set of windows; a time is inside when any window holds it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Schedule {
    /// Local milliseconds since midnight, `[start, end)`; `start > end` wraps past midnight.
    daily: Vec<(i64, i64)>,
    /// UTC milliseconds, `[start, end)`.
    absolute: Vec<(i64, i64)>,
}

impl Schedule {
    /// Parses the windows; the error says which item is wrong and what the format is.
    pub(crate) fn parse(items: &[&str]) -> Result<Self, String> {
        let mut s = Self::default();
        for item in items {
            let item = item.trim();
            if let Some((a, b)) = item.split_once('/') {
                let parse = |x: &str| {
                    x.trim()
                        .parse::<jiff::Timestamp>()
                        .map(jiff::Timestamp::as_millisecond)
                        .map_err(|e| format!("{item:?}: {x:?} is not an RFC 3339 time: {e}"))
                };
                let (start, end) = (parse(a)?, parse(b)?);
                if end <= start {
                    return Err(format!("{item:?}: the window ends before it starts"));
                }
                s.absolute.push((start, end));
            } else if let Some((a, b)) = item.split_once('-') {
                let (start, end) = (clock(a, item)?, clock(b, item)?);
                if start == end || (start == 0 && end == DAY_MS) {
                    s.daily.push((0, DAY_MS));
                } else {
                    s.daily.push((start % DAY_MS, end));
                }
            } else {
                return Err(format!(
                    "{item:?} is neither a daily window \"HH:MM-HH:MM\" nor an absolute one \"<RFC 3339>/<RFC 3339>\""
                ));
            }
        }
        Ok(s)
    }

    /// Whether the schedule has no window at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.daily.is_empty() && self.absolute.is_empty()
    }

    /// Whether the time of `env` is inside a window.
    pub(crate) fn contains(&self, env: &Env) -> bool {
        let t = env.local_ms;
        self.daily.iter().any(|&(a, b)| {
            if a < b {
                t >= a && t < b
            } else {
                t >= a || t < b
            }
        }) || self
            .absolute
            .iter()
            .any(|&(a, b)| env.t_ms >= a && env.t_ms < b)
    }
}

fn clock(text: &str, item: &str) -> Result<i64, String> {
    let bad = || format!("{item:?}: {text:?} is not a time of day HH:MM (00:00 to 24:00)");
    let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
    let h: i64 = h.parse().map_err(|_| bad())?;
    let m: i64 = m.parse().map_err(|_| bad())?;
    if !(0..=24).contains(&h) || !(0..60).contains(&m) || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok((h * 60 + m) * 60_000)
}
