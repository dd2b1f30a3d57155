//! Window boundaries in the site's time zone.
//!
//! Windows are aligned to the site's wall clock: a quarter hour starts at local :00, :15, :30
//! or :45, an hour at local :00, a day at local midnight (or at the first instant of the
//! local date when midnight does not exist). Across a daylight-saving change a day is 23 or 25
//! hours long; quarter hours and hours stay 15 and 60 minutes in every zone whose UTC offset
//! is a whole number of quarter hours (all current zones).
//!
//! Invariant: the engine walks windows as a chain, each window starting where the previous
//! one ended ([`Calendar::end_of`]); so a period's windows partition time without gap or
//! overlap even in a zone with an unusual transition.

use fivezero_model::wire::Period;
use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::KpiError;

/// The three window periods, shortest first (the order closed windows ending at the same
/// instant are returned in).
pub const PERIODS: [Period; 3] = [Period::FifteenMinutes, Period::Hour, Period::Day];

const DAY_MS: i64 = 86_400_000;

/// The site's time zone and the window arithmetic in it.
#[derive(Debug, Clone)]
pub struct Calendar {
    name: String,
    tz: TimeZone,
}

impl Calendar {
    /// The calendar of an IANA time zone such as `Asia/Shanghai`.
    ///
    /// # Errors
    /// [`KpiError::TimeZone`] when the zone is not in the time-zone database.
    pub fn new(name: &str) -> Result<Self, KpiError> {
        let tz = TimeZone::get(name).map_err(|e| KpiError::TimeZone {
            tz: name.to_owned(),
            why: e.to_string(),
        })?;
        Ok(Self {
            name: name.to_owned(),
            tz,
        })
    }

    /// The zone's IANA name, as given.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The UTC offset at `t_ms`, in milliseconds.
    fn offset_ms(&self, t_ms: i64) -> i64 {
        Timestamp::from_millisecond(t_ms)
            .map_or(0, |ts| i64::from(self.tz.to_offset(ts).seconds()) * 1_000)
    }

    /// The start of the `period` window holding instant `t_ms` (UTC milliseconds).
    #[must_use]
    pub fn start_of(&self, period: Period, t_ms: i64) -> i64 {
        match period {
            Period::FifteenMinutes | Period::Hour => {
                let len = period.length_ms().0;
                t_ms - (t_ms + self.offset_ms(t_ms)).rem_euclid(len)
            }
            Period::Day => Timestamp::from_millisecond(t_ms)
                .ok()
                .and_then(|ts| ts.to_zoned(self.tz.clone()).start_of_day().ok())
                .map_or_else(
                    || t_ms - t_ms.rem_euclid(DAY_MS),
                    |z| z.timestamp().as_millisecond(),
                ),
        }
    }

    /// The end (first instant after) of the `period` window that starts at `start_ms`.
    #[must_use]
    pub fn end_of(&self, period: Period, start_ms: i64) -> i64 {
        let end = match period {
            Period::FifteenMinutes | Period::Hour => {
                self.start_of(period, start_ms.saturating_add(period.length_ms().0))
            }
            Period::Day => Timestamp::from_millisecond(start_ms)
                .ok()
                .and_then(|ts| ts.to_zoned(self.tz.clone()).tomorrow().ok())
                .and_then(|z| z.start_of_day().ok())
                .map_or(i64::MIN, |z| z.timestamp().as_millisecond()),
        };
        if end > start_ms {
            end
        } else {
            start_ms.saturating_add(period.length_ms().0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().expect("timestamp").as_millisecond()
    }

    #[test]
    fn an_unknown_zone_is_refused() {
        assert!(matches!(
            Calendar::new("Mars/Olympus_Mons"),
            Err(KpiError::TimeZone { .. })
        ));
    }

    #[test]
    fn shanghai_days_start_at_local_midnight_which_is_16_00_utc() {
        let c = Calendar::new("Asia/Shanghai").expect("zone");
        let t = ms("2026-06-01T03:17:00Z"); // 11:17 local
        let s = c.start_of(Period::Day, t);
        assert_eq!(s, ms("2026-05-31T16:00:00Z"));
        assert_eq!(c.end_of(Period::Day, s) - s, 24 * H);
        assert_eq!(c.start_of(Period::Hour, t), ms("2026-06-01T03:00:00Z"));
        assert_eq!(
            c.start_of(Period::FifteenMinutes, t),
            ms("2026-06-01T03:15:00Z")
        );
    }

    #[test]
    fn berlin_dst_days_last_23_and_25_hours() {
        let c = Calendar::new("Europe/Berlin").expect("zone");
        let spring = c.start_of(Period::Day, ms("2026-03-29T12:00:00Z"));
        assert_eq!(spring, ms("2026-03-28T23:00:00Z"));
        assert_eq!(c.end_of(Period::Day, spring) - spring, 23 * H);
        let autumn = c.start_of(Period::Day, ms("2026-10-25T12:00:00Z"));
        assert_eq!(autumn, ms("2026-10-24T22:00:00Z"));
        assert_eq!(c.end_of(Period::Day, autumn) - autumn, 25 * H);
    }

    #[test]
    fn hours_stay_an_hour_long_across_the_berlin_autumn_change() {
        let c = Calendar::new("Europe/Berlin").expect("zone");
        // Local 02:00–03:00 happens twice on 2026-10-25: 00:00Z (CEST) and 01:00Z (CET).
        let mut s = ms("2026-10-24T23:00:00Z");
        for _ in 0..4 {
            let e = c.end_of(Period::Hour, s);
            assert_eq!(e - s, H);
            assert_eq!(c.start_of(Period::Hour, e - 1), s);
            s = e;
        }
    }

    #[test]
    fn half_hour_zones_align_hours_at_half_past_utc() {
        let c = Calendar::new("Asia/Kolkata").expect("zone");
        let t = ms("2026-01-10T10:10:00Z"); // 15:40 local
        assert_eq!(c.start_of(Period::Hour, t), ms("2026-01-10T09:30:00Z"));
        assert_eq!(
            c.start_of(Period::FifteenMinutes, t),
            ms("2026-01-10T10:00:00Z")
        );
        assert_eq!(c.start_of(Period::Day, t), ms("2026-01-09T18:30:00Z"));
    }

    #[test]
    fn chained_windows_partition_time_for_every_period() {
        let c = Calendar::new("Europe/Berlin").expect("zone");
        for p in PERIODS {
            let mut s = c.start_of(p, ms("2026-03-27T00:00:00Z"));
            for _ in 0..200 {
                let e = c.end_of(p, s);
                assert!(e > s);
                assert_eq!(c.start_of(p, s), s, "{p} {s}");
                assert_eq!(c.start_of(p, e - 1), s, "{p} {s}");
                s = e;
            }
        }
    }
}
