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

/// Parses a time: UTC milliseconds or RFC 3339 (`2026-01-01T00:00:00Z`, `…+08:00`).
///
/// # Errors
/// 400 `bad_query`.
pub fn time(name: &str, text: &str) -> Result<i64, ApiError> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<i64>()
            .ok()
            .filter(|ms| *ms <= 253_402_300_799_999)
            .ok_or_else(|| ApiError::bad_query(format!("{name}: {text:?} is out of range")));
    }
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| {
            ApiError::bad_query(format!(
                "{name}: {text:?} is neither RFC 3339 (2026-01-01T00:00:00Z) nor UTC milliseconds"
            ))
        })
}

/// Parses a duration (`1m`, `15m`, `1h`) into milliseconds, at least one second.
///
/// # Errors
/// 400 `bad_query`.
pub fn step(name: &str, text: &str) -> Result<i64, ApiError> {
    humantime::parse_duration(text)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .filter(|ms| *ms >= 1000)
        .ok_or_else(|| {
            ApiError::bad_query(format!(
                "{name}: {text:?} is not a duration of at least 1s (1m, 15m, 1h)"
            ))
        })
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
        assert!(time("from", "yesterday").is_err());
        assert!(time("from", "99999999999999999999").is_err());
    }

    #[test]
    fn steps_are_at_least_a_second() {
        assert_eq!(step("step", "15m").unwrap(), 900_000);
        assert!(step("step", "10ms").is_err());
        assert!(step("step", "fast").is_err());
    }
}
