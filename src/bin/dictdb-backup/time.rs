//! Times on the command line and in reports, through `jiff`: `--until`
//! (RFC 3339, a date, unix seconds as in the file names, or a time relative
//! to now), `--keep-within` durations, and the one way times are printed
//! (RFC 3339 in UTC with microseconds, as precise as the file names).

use std::time::{Duration, SystemTime};

use dictdb::BackupName;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, ToSpan};

/// Times further ahead of now than this are refused as implausible (a
/// backup's name comes from a clock; a clock ten years ahead is a typo).
const FUTURE_YEARS: i64 = 10;

/// What every `--until` error ends with.
const ACCEPTED: &str = "accepted: RFC 3339 (2026-11-26T09:34:32.123456Z, \
     2026-11-26T11:34:32+02:00), a date (2026-11-26, the start of that day in UTC), \
     unix seconds as in the file names (1795682694.736609), or a time before now \
     (15m, -15m, 2h ago, 1d12h)";

/// RFC 3339 in UTC with microseconds: `2026-11-26T08:44:54.736609Z`.
pub(crate) fn format(t: Timestamp) -> String {
    jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%S%.6fZ", t).unwrap_or_else(|_| t.to_string())
}

/// The exact time in a backup file name.
pub(crate) fn of_name(name: &BackupName) -> Option<Timestamp> {
    let secs = i64::try_from(name.secs).ok()?;
    Timestamp::new(secs, i32::try_from(name.micros).ok()? * 1000).ok()
}

/// The time in the name of the file `file`, when it is a backup name.
pub(crate) fn of_file(file: &str) -> Option<Timestamp> {
    BackupName::parse(file).as_ref().and_then(of_name)
}

/// Seconds since the epoch, as [`BackupName::timestamp`] computes them.
pub(crate) fn unix(t: Timestamp) -> f64 {
    t.as_second() as f64 + f64::from(t.subsec_microsecond()) / 1e6
}

/// A time as the restore library takes it (times before 1970 are refused
/// when parsed; the epoch stands in for one).
pub(crate) fn system(t: Timestamp) -> SystemTime {
    let micros = u64::try_from(t.as_microsecond()).unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_micros(micros)
}

/// Parses `--until` relative to the current time.
pub(crate) fn parse_until(s: &str) -> Result<Timestamp, String> {
    parse_at(s, Timestamp::now())
}

/// Parses `--until` relative to `now`, refusing times before 1970 or more
/// than [`FUTURE_YEARS`] after `now`.
pub(crate) fn parse_at(s: &str, now: Timestamp) -> Result<Timestamp, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err(format!("empty time; {ACCEPTED}"));
    }
    let latest = now
        .to_zoned_datetime(TimeZone::UTC)
        .checked_add(FUTURE_YEARS.years())
        .map_or(Timestamp::MAX, |z| z.timestamp());
    if leap_second(s) {
        return Err(format!(
            "invalid time {s:?}: second 60 (a leap second) names no time a backup has; \
             give :59 or the next minute; {ACCEPTED}"
        ));
    }
    let t = if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        unix_seconds(s, latest)?
    } else if let Ok(t) = s.parse::<Timestamp>() {
        t
    } else if let (10, Ok(d)) = (s.len(), s.parse::<Date>()) {
        d.to_zoned_datetime(TimeZone::UTC)
            .map_err(|e| format!("invalid time {s:?}: {e}"))?
            .timestamp()
    } else if let Some(span) = relative(s) {
        before_now(s, span?, now)?
    } else {
        return Err(explain(s));
    };
    if t < Timestamp::UNIX_EPOCH {
        return Err(format!(
            "implausible time {s:?}: {} is before 1970, before any backup",
            format(t)
        ));
    }
    if t > latest {
        return Err(format!(
            "implausible time {s:?}: {} is more than {FUTURE_YEARS} years from now",
            format(t)
        ));
    }
    Ok(t)
}

/// `SECS[.FRACTION]`, refusing milliseconds and microseconds given as
/// seconds, with the reading that was probably meant.
fn unix_seconds(s: &str, latest: Timestamp) -> Result<Timestamp, String> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || frac.contains('.') || (s.contains('.') && frac.is_empty()) {
        return Err(explain(s));
    }
    let secs: i64 = whole
        .parse()
        .map_err(|_| format!("implausible time {s:?}: too large for seconds; {ACCEPTED}"))?;
    // Digits past microseconds are dropped: a time never rounds up past
    // the file written after it.
    let micros: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
    let micros: i32 = micros.parse().map_err(|_| explain(s))?;
    if secs > latest.as_second() {
        let hint = [(1_000, "milliseconds"), (1_000_000, "microseconds")]
            .into_iter()
            .find(|(div, _)| secs / div <= latest.as_second())
            .map(|(div, unit)| {
                format!(
                    " (as {unit}, it would be {}.{:0width$}: give seconds)",
                    secs / div,
                    secs % div,
                    width = if div == 1_000 { 3 } else { 6 }
                )
            })
            .unwrap_or_default();
        return Err(format!(
            "implausible time {s:?}: as unix seconds it is more than {FUTURE_YEARS} years from now{hint}"
        ));
    }
    Timestamp::new(secs, micros * 1000).map_err(|e| format!("invalid time {s:?}: {e}"))
}

/// A time relative to now (`15m`, `-15m`, `2h ago`, `1 day ago`): `None`
/// when `s` does not look like one; `Some(Err)` for `+15m` (the future).
fn relative(s: &str) -> Option<Result<Span, String>> {
    let body = s.strip_suffix("ago").map_or(s, str::trim_end);
    if body.starts_with('+') {
        return Some(Err(format!(
            "invalid time {s:?}: a relative time counts back from now (15m, -15m, 15m ago)"
        )));
    }
    let span: Span = body.parse().ok()?;
    Some(Ok(span.abs()))
}

fn before_now(s: &str, span: Span, now: Timestamp) -> Result<Timestamp, String> {
    now.to_zoned_datetime(TimeZone::UTC)
        .checked_sub(span)
        .map(|z| z.timestamp())
        .map_err(|e| format!("implausible time {s:?}: {e}"))
}

/// Why `s` is not a time, with what would be.
/// Whether `s` is a date and time whose seconds are 60 (`…T08:51:60Z`),
/// which the parser would silently read as :59.
fn leap_second(s: &str) -> bool {
    let Some(i) = s.find(['T', 't', ' ']) else {
        return false;
    };
    let time = &s[i + 1..];
    let b = time.as_bytes();
    b.len() >= 8
        && b[2] == b':'
        && b[5] == b':'
        && &b[6..8] == b"60"
        && b.get(8).is_none_or(|c| b".,Zz+-".contains(c))
}

fn explain(s: &str) -> String {
    let why = if s.len() >= 19 && s.as_bytes().get(10).is_some_and(|b| b"Tt ".contains(b)) {
        match s.parse::<jiff::civil::DateTime>() {
            Ok(_) => "no time zone: add Z for UTC or an offset such as +02:00".to_string(),
            // The parser's own words name its internals ("parameter 'day'").
            Err(_) => "no such date or time of day (months 01-12, days as in the month, \
                       hours 00-23, minutes and seconds 00-59)"
                .to_string(),
        }
    } else if s.len() == 10 && s.as_bytes().get(4) == Some(&b'-') {
        match s.parse::<Date>() {
            Err(_) => "no such date (months 01-12, days as in the month)".into(),
            Ok(_) => "not a date".into(),
        }
    } else {
        "not a time".into()
    };
    format!("invalid time {s:?}: {why}; {ACCEPTED}")
}

/// Parses a `--keep-within` duration (`2d`, `12h`, `1w`, `1d12h`, `90m`,
/// `1 month`): years and months are counted back from `now` in UTC.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_duration_at(s, Timestamp::now())
}

pub(crate) fn parse_duration_at(s: &str, now: Timestamp) -> Result<Duration, String> {
    let usage = "a duration such as 2d, 12h, 1w, 1d12h, 90m or 1 month";
    let span: Span = s
        .trim()
        .parse()
        .map_err(|e| format!("invalid duration {s:?}: {e}; expected {usage}"))?;
    if span.is_negative() {
        return Err(format!(
            "invalid duration {s:?}: negative; expected {usage}"
        ));
    }
    let start = now
        .to_zoned_datetime(TimeZone::UTC)
        .checked_sub(span)
        .map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    Duration::try_from(now.duration_since(start.timestamp()))
        .map_err(|e| format!("invalid duration {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        // 2026-11-28T08:00:00Z
        Timestamp::new(1_795_852_800, 0).unwrap_or_else(|e| panic!("{e}"))
    }

    fn at(s: &str) -> String {
        parse_at(s, now()).map(format).unwrap_or_else(|e| e)
    }

    #[test]
    fn invalid_dates_and_leap_seconds_are_explained_in_plain_words() {
        for s in ["2026-02-30", "2026-11-28T24:00:00Z", "2026-13-01T00:00:00Z"] {
            let e = at(s);
            assert!(e.contains("no such date"), "{s}: {e}");
            assert!(
                !e.contains("parameter") && !e.contains("failed to parse"),
                "{s}: {e}"
            );
        }
        for s in [
            "2026-11-28T08:51:60Z",
            "2026-11-28T08:51:60.5+02:00",
            "2026-11-28 08:51:60Z",
        ] {
            assert!(at(s).contains("leap second"), "{s}: {}", at(s));
        }
        assert_eq!(at("2026-11-28T08:51:59Z"), "2026-11-28T08:51:59.000000Z");
    }

    #[test]
    fn absolute_times() {
        let name = "2026-11-26T08:44:54.736609Z";
        assert_eq!(at("1795682694.736609"), name);
        assert_eq!(at("2026-11-26T08:44:54.736609Z"), name);
        assert_eq!(at("2026-11-26T10:44:54.736609+02:00"), name);
        assert_eq!(at("2026-11-26 08:44:54.7366099Z"), name);
        assert_eq!(at("1795682694"), "2026-11-26T08:44:54.000000Z");
        assert_eq!(at("1795682694.5"), "2026-11-26T08:44:54.500000Z");
        assert_eq!(at("2026-11-26"), "2026-11-26T00:00:00.000000Z");
        assert_eq!(at("0"), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn relative_times_count_back_from_now() {
        assert_eq!(at("15m"), "2026-11-28T07:45:00.000000Z");
        assert_eq!(at("-15m"), "2026-11-28T07:45:00.000000Z");
        assert_eq!(at("2h ago"), "2026-11-28T06:00:00.000000Z");
        assert_eq!(at("2 hours ago"), "2026-11-28T06:00:00.000000Z");
        assert_eq!(at("1d12h"), "2026-11-26T20:00:00.000000Z");
        assert_eq!(at("1 month ago"), "2026-10-28T08:00:00.000000Z");
        assert!(at("+15m").contains("counts back"), "{}", at("+15m"));
    }

    #[test]
    fn implausible_and_malformed_times_are_refused_with_a_reason() {
        let ms = at("1795843611000");
        assert!(
            ms.contains("implausible") && ms.contains("milliseconds"),
            "{ms}"
        );
        assert!(ms.contains("1795843611.000"), "{ms}");
        let us = at("1795843611000000");
        assert!(us.contains("microseconds"), "{us}");
        assert!(at("99999999999999999999999").contains("implausible"));
        assert!(at("1969-12-31T23:59:59Z").contains("before 1970"));
        assert!(at("1960-01-01").contains("before 1970"));
        assert!(at("2062-11-26").contains("10 years"));
        assert!(at("100000d").contains("before 1970"), "{}", at("100000d"));
        let naive = at("2026-11-26T08:44:54");
        assert!(naive.contains("no time zone"), "{naive}");
        assert!(
            at("2026-02-30").contains("invalid time"),
            "{}",
            at("2026-02-30")
        );
        for bad in [
            "",
            "yesterday",
            "1.2.3",
            "1795682694.",
            ".5",
            "2026-13-01T00:00:00Z",
        ] {
            let e = at(bad);
            assert!(e.contains("RFC 3339") && e.contains("ago"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn durations() {
        let d = |s| parse_duration_at(s, now());
        assert_eq!(d("2d"), Ok(Duration::from_secs(2 * 86_400)));
        assert_eq!(d("1w"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(d("1d12h"), Ok(Duration::from_secs(36 * 3600)));
        assert_eq!(d("90m"), Ok(Duration::from_secs(5400)));
        // October 2026 has 31 days.
        assert_eq!(d("1 month"), Ok(Duration::from_secs(31 * 86_400)));
        assert!(d("-2d").is_err_and(|e| e.contains("negative")));
        assert!(d("soon").is_err_and(|e| e.contains("2d")));
    }

    #[test]
    fn name_times_are_exact() {
        let n = BackupName::parse("dictdb_delta_1795682694_736609.json");
        let t = n.as_ref().and_then(of_name);
        assert_eq!(
            t.map(format).as_deref(),
            Some("2026-11-26T08:44:54.736609Z")
        );
        assert_eq!(t.map(unix), n.map(|n| n.timestamp()));
    }
}
