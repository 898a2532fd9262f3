//! RFC 3339 time, written and read, shared by the binaries (CRI logs, exit records,
//! runtime logs).

use std::time::{SystemTime, UNIX_EPOCH};

/// Format a time as RFC 3339 with nanoseconds, UTC (`2026-11-29T07:12:00.123456789Z`).
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (what [`rfc3339_nano`] writes) into
/// nanoseconds since the epoch.
pub fn parse_rfc3339_nano(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, b),
        None => (time, ""),
    };
    let mut t = hms.split(':');
    let (hh, mm, ss): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    let mut nanos: i64 = 0;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        nanos = format!("{digits:0<9}").parse().ok()?;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000_000) + nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_nano_utc() {
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_709_210_096, 5);
        assert_eq!(rfc3339_nano(t), "2024-02-29T12:34:56.000000005Z");
        let t = UNIX_EPOCH + Duration::new(4_102_444_799, 999_999_999);
        assert_eq!(rfc3339_nano(t), "2099-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn rfc3339_parses_to_nanos() {
        assert_eq!(parse_rfc3339_nano("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_nano("1970-01-02T00:00:01.5Z"),
            Some(86_401_500_000_000)
        );
        assert_eq!(
            parse_rfc3339_nano("2026-11-29T07:00:00.123456789Z"),
            Some(1_795_935_600_123_456_789)
        );
        assert_eq!(parse_rfc3339_nano("garbage"), None);
        let t = UNIX_EPOCH + Duration::new(4_102_444_799, 999_999_999);
        assert_eq!(
            parse_rfc3339_nano(&rfc3339_nano(t)),
            Some(4_102_444_799_999_999_999)
        );
    }
}
