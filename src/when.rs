//! Instants for `switchctl activate --at TIME` (issue 20): parsing what the operator types
//! (RFC 3339 UTC with fractions, or `+SECS` from now), the wire form between `switchctl` and
//! the daemon (Unix seconds with nanoseconds, `at=1796252400.250000000`), and the
//! microsecond form the answers and `status` print. Hand-written: the one format we accept
//! is small, and a date crate would bring time zones we refuse anyway.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Furthest ahead a switch may be scheduled: a fleet deploy schedules seconds ahead; an
/// hour bounds how long a forgotten pending switch can lie in wait.
pub const MAX_AHEAD: Duration = Duration::from_secs(3600);

/// `TIME` as given to `--at`: `2026-12-01T23:00:00.250Z` (UTC, `Z` or `+00:00`, fractions
/// to the nanosecond optional) or `+SECS` (fractions allowed), relative to `now`.
///
/// # Errors
/// One line saying what is wrong and what is expected.
pub fn parse_at(arg: &str, now: SystemTime) -> Result<SystemTime, String> {
    let expected = "expected RFC 3339 UTC like 2026-12-01T23:00:00.250Z, or +SECS";
    if let Some(rel) = arg.strip_prefix('+') {
        let secs = parse_decimal(rel)
            .ok_or_else(|| format!("bad --at {arg:?}: {expected} (e.g. +2.5)"))?;
        return now
            .checked_add(secs)
            .ok_or_else(|| format!("bad --at {arg:?}: too far ahead"));
    }
    parse_rfc3339(arg).map_err(|why| format!("bad --at {arg:?}: {why}; {expected}"))
}

/// Checks that `at` is neither past nor more than `MAX_AHEAD` after `now`.
///
/// # Errors
/// One line naming the time and by how much it misses.
pub fn check_window(at: SystemTime, now: SystemTime) -> Result<(), String> {
    match at.duration_since(now) {
        Err(e) => Err(format!(
            "the time {} is {:.3} s in the past",
            micros(at),
            e.duration().as_secs_f64()
        )),
        Ok(ahead) if ahead > MAX_AHEAD => Err(format!(
            "the time {} is more than {} s ahead",
            micros(at),
            MAX_AHEAD.as_secs()
        )),
        Ok(_) => Ok(()),
    }
}

/// A non-negative decimal number of seconds: `2`, `2.5`, `0.000250`.
fn parse_decimal(s: &str) -> Option<Duration> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(frac) || frac.len() > 9 || (s.contains('.') && frac.is_empty()) {
        return None;
    }
    let secs: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let nanos: u32 = format!("{frac:0<9}").parse().ok()?;
    Some(Duration::new(secs, nanos))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+00:00)`; other offsets are refused, not converted:
/// a fleet is given one instant in one zone.
fn parse_rfc3339(s: &str) -> Result<SystemTime, String> {
    let b = s.as_bytes();
    let body = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix('z'))
        .or_else(|| s.strip_suffix("+00:00"))
        .ok_or("not UTC (end it with Z)")?;
    if b.len() < 20 || !matches!(b[10], b'T' | b't' | b' ') {
        return Err("not a date and time".into());
    }
    let num = |from: usize, len: usize| -> Result<i64, String> {
        let part = body.get(from..from + len).ok_or("too short")?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(format!("{part:?} is not a number"));
        }
        part.parse::<i64>().map_err(|e| e.to_string())
    };
    let sep_ok = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')]
        .iter()
        .all(|&(i, c)| b[i] == c);
    if !sep_ok {
        return Err("not a date and time".into());
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, min, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err("no such date".into());
    }
    if hour > 23 || min > 59 || sec > 59 {
        return Err("no such time of day".into());
    }
    let nanos = match &body[19..] {
        "" => 0,
        frac => {
            let digits = frac.strip_prefix('.').ok_or("junk after the seconds")?;
            if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|c| c.is_ascii_digit())
            {
                return Err("the fraction must be 1 to 9 digits".into());
            }
            format!("{digits:0<9}")
                .parse::<u32>()
                .map_err(|e| e.to_string())?
        }
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec;
    let secs = u64::try_from(secs).map_err(|_| "before 1970")?;
    Ok(UNIX_EPOCH + Duration::new(secs, nanos))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm, as `json::iso8601`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `t` to the microsecond, `2026-12-01T23:00:00.250000Z`.
pub fn micros(t: SystemTime) -> String {
    let whole = crate::json::iso8601(t);
    let us = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_micros());
    format!("{}.{us:06}Z", whole.trim_end_matches('Z'))
}

/// The wire form: `SECS.NNNNNNNNN` since the Unix epoch.
pub fn to_wire(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// Undoes `to_wire`.
///
/// # Errors
/// Not `SECS.NNNNNNNNN`.
pub fn from_wire(s: &str) -> Result<SystemTime, String> {
    parse_decimal(s)
        .map(|d| UNIX_EPOCH + d)
        .ok_or_else(|| format!("expected at=SECS.NANOS (Unix time), got {s:?}"))
}

/// Signed `a - b` in seconds, for "how late".
pub fn seconds_after(a: SystemTime, b: SystemTime) -> f64 {
    match a.duration_since(b) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn rfc3339_utc_with_fractions() {
        let now = at(0, 0);
        assert_eq!(
            parse_at("2026-12-01T23:00:00.250Z", now),
            Ok(at(1_796_166_000, 250_000_000))
        );
        assert_eq!(
            parse_at("2026-12-01T23:00:00+00:00", now),
            Ok(at(1_796_166_000, 0))
        );
        assert_eq!(
            parse_at("2024-02-29T00:00:00.000000001Z", now),
            Ok(at(1_709_164_800, 1))
        );
        assert_eq!(
            micros(at(1_796_166_000, 250_000_999)),
            "2026-12-01T23:00:00.250000Z"
        );
    }

    #[test]
    fn relative_seconds() {
        let now = at(100, 0);
        assert_eq!(parse_at("+2.5", now), Ok(at(102, 500_000_000)));
        assert_eq!(parse_at("+0", now), Ok(now));
        assert_eq!(parse_at("+.25", now), Ok(at(100, 250_000_000)));
    }

    #[test]
    fn bad_times_are_one_line_errors() {
        let now = at(0, 0);
        for bad in [
            "",
            "+",
            "+-1",
            "+1.",
            "+1e3",
            "+1.0000000001",
            "tomorrow",
            "2026-12-01T23:00:00",
            "2026-12-01T23:00:00+01:00",
            "2026-13-01T23:00:00Z",
            "2026-02-30T23:00:00Z",
            "2026-12-01T24:00:00Z",
            "2026-12-01T23:00:00.Z",
            "2026-12-01T23:00:00.1234567890Z",
            "2026-12-01X23:00:00Z",
            "1969-12-31T23:59:59Z",
        ] {
            let e = parse_at(bad, now).expect_err(bad);
            assert!(!e.contains('\n') && e.contains("bad --at"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_window_is_future_and_at_most_an_hour() {
        let now = at(1000, 0);
        assert!(
            check_window(at(999, 0), now)
                .unwrap_err()
                .contains("in the past")
        );
        assert!(
            check_window(at(1000 + 3601, 0), now)
                .unwrap_err()
                .contains("ahead")
        );
        assert_eq!(check_window(at(1001, 0), now), Ok(()));
    }

    #[test]
    fn the_wire_form_round_trips() {
        let t = at(1_796_166_000, 250_000_001);
        assert_eq!(to_wire(t), "1796166000.250000001");
        assert_eq!(from_wire(&to_wire(t)), Ok(t));
        assert!(from_wire("x").is_err());
    }
}
