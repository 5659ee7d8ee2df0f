//! Times on the command line and in output, through `jiff`: RFC 3339 in,
//! RFC 3339 with milliseconds in UTC out, as ms since the Unix epoch (the
//! broker's unit).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// Parses an RFC 3339 time with an offset (`2026-11-28T10:00:00Z`,
/// `…+02:00`) to ms since the Unix epoch; fractions past milliseconds are
/// truncated, and times before 1970 are refused (the broker has none).
pub fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let t: Timestamp =
        s.parse().map_err(|e| format!("{s:?} is not an RFC 3339 time like 2026-11-28T10:00:00Z: {e}"))?;
    u64::try_from(t.as_millisecond()).map_err(|_| format!("{s:?} is before 1970"))
}

/// `YYYY-MM-DDTHH:MM:SS.fffZ` for ms since the Unix epoch.
pub fn format_rfc3339(ms: u64) -> String {
    match i64::try_from(ms).ok().and_then(|ms| Timestamp::from_millisecond(ms).ok()) {
        Some(t) => format!("{t:.3}"),
        // Past the year 9999: no calendar date to show, so the number itself.
        None => format!("{ms} ms"),
    }
}

/// Parses a positive duration like `10s`, `500ms`, `1m30s` or `2h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: SignedDuration = s.parse().map_err(|_| format!("{s:?} is not a duration like 10s, 500ms, 5m or 1h30m"))?;
    let d = Duration::try_from(d).map_err(|_| format!("{s:?} is negative"))?;
    if d.is_zero() { Err(format!("{s:?} is zero")) } else { Ok(d) }
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    u64::try_from(Timestamp::now().as_millisecond()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses_to_epoch_ms() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2024-02-29T12:34:56.789Z"), Ok(1_709_210_096_789));
        assert_eq!(parse_rfc3339("2024-02-29T14:34:56.789+02:00"), Ok(1_709_210_096_789));
        assert_eq!(parse_rfc3339("2024-02-29T07:04:56.7891234-05:30"), Ok(1_709_210_096_789));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00.5z"), Ok(951_868_800_500));
        assert_eq!(parse_rfc3339("2038-01-19T03:14:08Z"), Ok(2_147_483_648_000));
        for bad in [
            "",
            "2024-02-30T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00+2:00",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00Zjunk",
            "1969-12-31T23:59:59Z",
            "2024-1-01T00:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn rfc3339_formats_what_it_parses() {
        for ms in [0, 951_868_800_500, 1_709_210_096_789, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Ok(ms));
        }
        assert_eq!(format_rfc3339(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "10", "soon", "0s", "-5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
