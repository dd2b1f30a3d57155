//! Strict parsing of query strings: unknown or repeated parameters are refused, times are
//! RFC 3339 or UTC milliseconds, durations humantime (`1m`, `15m`).

use serde::de::DeserializeOwned;

use super::ApiError;

/// Parses a query string into `T` (whose serde attributes deny unknown fields).
///
/// # Errors
/// 400 `bad_query` naming the parameter at fault.
pub fn parse<T: DeserializeOwned>(raw: Option<&str>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|e| ApiError::bad_query(e.to_string()))
}

/// What a time parameter must look like (the OpenAPI document's `pattern` for `from`, `to`):
/// UTC milliseconds (1 to 15 digits), or RFC 3339 with seconds, an optional fraction of up
/// to nine digits, and `Z` or a `±hh:mm` offset.
pub const TIME_PATTERN: &str = "^([0-9]{1,15}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2}))$";

/// What a duration parameter must look like (the document's `pattern` for `step`): a whole
/// number of seconds, minutes, hours or days.
pub const STEP_PATTERN: &str = "^[1-9][0-9]{0,5}[smhd]$";

/// The latest time accepted: 9999-12-31T23:59:59.999Z.
const MAX_MS: i64 = 253_402_300_799_999;

/// `text` has the RFC 3339 shape of [`TIME_PATTERN`] (the calendar is checked later).
fn rfc3339_shape(text: &str) -> bool {
    let b = text.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(digits(0..4) && at(4, b'-') && digits(5..7) && at(7, b'-') && digits(8..10))
        || !(at(10, b'T') && digits(11..13) && at(13, b':') && digits(14..16) && at(16, b':'))
        || !digits(17..19)
    {
        return false;
    }
    let mut i = 19;
    if at(i, b'.') {
        let n = b[i + 1..].iter().take_while(|d| d.is_ascii_digit()).count();
        if !(1..=9).contains(&n) {
            return false;
        }
        i += 1 + n;
    }
    match b.get(i) {
        Some(b'Z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            i + 6 == b.len() && digits(i + 1..i + 3) && at(i + 3, b':') && digits(i + 4..i + 6)
        }
        _ => false,
    }
}

/// Parses a time: UTC milliseconds or RFC 3339 (`2026-01-01T00:00:00Z`, `…+08:00`), as
/// [`TIME_PATTERN`] says, up to the end of year 9999.
///
/// # Errors
/// 400 `bad_query`.
pub fn time(name: &str, text: &str) -> Result<i64, ApiError> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return (text.len() <= 15)
            .then(|| text.parse::<i64>().ok())
            .flatten()
            .filter(|ms| *ms <= MAX_MS)
            .ok_or_else(|| ApiError::bad_query(format!("{name}: {text:?} is out of range")));
    }
    rfc3339_shape(text)
        .then(|| text.parse::<jiff::Timestamp>().ok())
        .flatten()
        .map(|t| t.as_millisecond())
        .ok_or_else(|| {
            ApiError::bad_query(format!(
                "{name}: {text:?} is neither RFC 3339 (2026-01-01T00:00:00Z) nor UTC milliseconds"
            ))
        })
}

/// Parses a duration (`1m`, `15m`, `1h`, `1d`; as [`STEP_PATTERN`] says) into milliseconds.
///
/// # Errors
/// 400 `bad_query`.
pub fn step(name: &str, text: &str) -> Result<i64, ApiError> {
    let refuse = || {
        ApiError::bad_query(format!(
            "{name}: {text:?} is not a whole number of s, m, h or d (1m, 15m, 1h)"
        ))
    };
    let unit_ms = match text.as_bytes().last() {
        Some(b's') => 1_000,
        Some(b'm') => 60_000,
        Some(b'h') => 3_600_000,
        Some(b'd') => 86_400_000,
        _ => return Err(refuse()),
    };
    // The last byte is ASCII, so this is a character boundary.
    let number = &text[..text.len() - 1];
    if number.is_empty()
        || number.len() > 6
        || number.starts_with('0')
        || !number.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(refuse());
    }
    number
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .ok_or_else(refuse)
}

/// Checks `from < to` and the range limit.
///
/// # Errors
/// 400 `bad_query` or `range_too_long`.
pub fn range(from: i64, to: i64, max: std::time::Duration) -> Result<(), ApiError> {
    if from >= to {
        return Err(ApiError::bad_query("from must be before to".to_owned()));
    }
    let max_ms = i64::try_from(max.as_millis()).unwrap_or(i64::MAX);
    if to.saturating_sub(from) > max_ms {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "range_too_long",
            format!(
                "to - from is longer than the limit of {}",
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_take_rfc3339_or_milliseconds() {
        assert_eq!(time("from", "1000").unwrap(), 1000);
        assert_eq!(
            time("from", "2026-01-01T08:00:00+08:00").unwrap(),
            time("from", "2026-01-01T00:00:00Z").unwrap()
        );
        assert_eq!(
            time("from", "2026-01-01T00:00:00.5Z").unwrap(),
            time("from", "2026-01-01T00:00:00Z").unwrap() + 500
        );
        assert_eq!(time("from", "253402300799999").unwrap(), MAX_MS);
        assert!(time("from", "yesterday").is_err());
        assert!(time("from", "99999999999999999999").is_err());
        assert!(time("from", "253402300800000").is_err());
    }

    #[test]
    fn times_outside_the_documented_pattern_are_refused() {
        // Forms jiff alone would take, which the document does not promise.
        for text in [
            "2026-01-01 00:00:00Z",
            "2026-01-01t00:00:00z",
            "2026-01-01T00:00Z",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00+0800",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00.1234567890Z",
            "2026-01-01T00:00:00Z[Asia/Shanghai]",
            "2026-01-01T00:00:00+08:00[Asia/Shanghai]",
            "+002026-01-01T00:00:00Z",
            "",
            "-1",
            "1e3",
            "０",
        ] {
            assert!(time("from", text).is_err(), "{text:?} was taken");
        }
        // The shape is right but the calendar is not.
        assert!(time("from", "2026-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn steps_are_whole_seconds_minutes_hours_or_days() {
        assert_eq!(step("step", "15m").unwrap(), 900_000);
        assert_eq!(step("step", "1s").unwrap(), 1_000);
        assert_eq!(step("step", "999999d").unwrap(), 999_999 * 86_400_000);
        for text in [
            "10ms",
            "fast",
            "0m",
            "01m",
            "1h30m",
            "1 h",
            "1hour",
            "m",
            "",
            "-1m",
            "1000000d",
            "é",
            "1é",
            "１m",
            "1\u{301}m",
        ] {
            assert!(step("step", text).is_err(), "{text:?} was taken");
        }
    }
}
