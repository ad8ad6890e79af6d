//! Timestamps: milliseconds since the Unix epoch, RFC 3339 text and protobuf `Timestamp`.

use chrono::{DateTime, SecondsFormat, Utc};

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// Formats as RFC 3339 UTC with milliseconds (`2024-07-24T00:41:10.309Z`).
pub fn format_rfc3339(ms: Millis) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses RFC 3339 text to milliseconds. The common fixed form
/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` takes a fast path; anything else goes through chrono.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    fast_parse(s.as_bytes()).or_else(|| DateTime::parse_from_rfc3339(s).ok().map(|d| d.timestamp_millis()))
}

fn fast_parse(b: &[u8]) -> Option<Millis> {
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in &b[r] {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_ms = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                frac_ms = frac_ms * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..3 {
            frac_ms *= 10;
        }
    }
    if i + 1 != b.len() || b[i] != b'Z' {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + frac_ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Converts to a protobuf timestamp.
pub fn to_timestamp(ms: Millis) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// Earliest time blockwatch represents: 0001-01-01T00:00:00Z.
pub const MIN: Millis = -62_135_596_800_000;
/// Latest time blockwatch represents: 9999-12-31T23:59:59.999Z.
pub const MAX: Millis = 253_402_300_799_999;

/// Converts from a protobuf timestamp (sub-millisecond precision is dropped). Out-of-range
/// timestamps (see [`checked_from_timestamp`]) clamp to [`MIN`]..=[`MAX`], so nothing read
/// back from a store can overflow.
pub fn from_timestamp(ts: &prost_types::Timestamp) -> Millis {
    checked_from_timestamp(ts).unwrap_or(if ts.seconds < 0 { MIN } else { MAX })
}

/// Converts from a protobuf timestamp, or `None` when it is not a valid time: `nanos`
/// outside `0..1e9`, or a moment outside years 1 to 9999 (RFC 3339's range).
pub fn checked_from_timestamp(ts: &prost_types::Timestamp) -> Option<Millis> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    let ms = ts.seconds.checked_mul(1000)?.checked_add(i64::from(ts.nanos) / 1_000_000)?;
    (MIN..=MAX).contains(&ms).then_some(ms)
}

/// The current wall-clock time.
pub fn now() -> Millis {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_path_agrees_with_chrono() {
        for s in [
            "2024-07-24T00:41:10.309Z",
            "1970-01-01T00:00:00Z",
            "2000-02-29T23:59:59.5Z",
            "2026-11-25T21:41:52.123456Z",
            "1999-12-31T23:59:59.999Z",
        ] {
            let want = DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis();
            assert_eq!(fast_parse(s.as_bytes()), Some(want), "{s}");
        }
    }

    #[test]
    fn offsets_and_garbage() {
        assert_eq!(parse_rfc3339("2024-07-24T02:41:10.309+02:00"), parse_rfc3339("2024-07-24T00:41:10.309Z"));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2024-13-24T00:41:10Z"), None);
    }

    #[test]
    fn round_trips() {
        let ms = 1_721_781_670_309;
        assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Some(ms));
        assert_eq!(from_timestamp(&to_timestamp(ms)), ms);
        assert_eq!(from_timestamp(&to_timestamp(-1)), -1);
        assert_eq!(format_rfc3339(MIN), "0001-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339(MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn out_of_range_timestamps_are_refused_not_wrapped() {
        let ts = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(checked_from_timestamp(&ts(1_700_000_000, 5_000_000)), Some(1_700_000_000_005));
        for bad in [ts(i64::MAX, 0), ts(i64::MIN, 0), ts(0, 1_000_000_000), ts(0, -1), ts(MAX / 1000 + 1, 0)] {
            assert_eq!(checked_from_timestamp(&bad), None, "{bad:?}");
        }
        assert_eq!(from_timestamp(&ts(i64::MAX, 0)), MAX);
        assert_eq!(from_timestamp(&ts(i64::MIN, 0)), MIN);
    }
}
