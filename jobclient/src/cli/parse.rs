//! Value parsers of the command line's flags: durations, times, states,
//! schedule kinds, misfire policies, retry plans, `KEY=VALUE` pairs and
//! cron expressions. Each error says what was expected.

use std::time::Duration;

use lts_common::cron::{CronError, CronSchedule};
use lts_common::{JobState, MisfirePolicy, RetryPlan, ScheduleKind};

/// Checks a cron expression and zone with the engine the tracker uses; the
/// message names the flag and, for the expression, the field at fault.
pub fn check_cron(expression: &str, time_zone: &str) -> Result<CronSchedule, String> {
    CronSchedule::parse(expression, time_zone).map_err(|e| match e {
        CronError::UnknownTimeZone(_) => format!("--time-zone: {e}"),
        _ => format!("--cron `{}`: {e}", expression.trim()),
    })
}

/// Parses `KEY=VALUE`; the value may be empty or hold `=`.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some(("", _)) => Err("the key before `=` is empty".into()),
        Some((key, value)) => Ok((key.to_string(), value.to_string())),
        None => Err("expected KEY=VALUE".into()),
    }
}

/// Parses a duration like `30s`, `5m`, `1h 30m` or `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{e}; expected a duration like 30s, 5m or 250ms"))
}

/// Parses an RFC 3339 time (`Z` or a `+HH:MM` offset; no offset means
/// UTC) into Unix milliseconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let expected = "expected an RFC 3339 time like 2030-01-02T03:04:05Z";
    let trimmed = s.trim();
    let (base, offset_ms) = split_offset(trimmed).ok_or_else(|| expected.to_string())?;
    let t = humantime::parse_rfc3339_weak(base).map_err(|e| format!("{e}; {expected}"))?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "is before 1970".to_string())?
        .as_millis() as i64;
    let ms = ms - offset_ms;
    if ms < 0 {
        return Err("is before 1970".into());
    }
    Ok(ms)
}

/// Splits a trailing `Z` or `±HH:MM` off a time; returns the offset east of
/// UTC in milliseconds. `None` for a malformed offset.
fn split_offset(s: &str) -> Option<(&str, i64)> {
    if let Some(base) = s.strip_suffix(['Z', 'z']) {
        return Some((base, 0));
    }
    let bytes = s.as_bytes();
    // An offset only follows a time of day, so the date's own `-` never
    // counts.
    let time_at = s.find(['T', 't', ' '])?;
    if s.len() >= 6 && s.len() - 6 > time_at {
        let sign = bytes[s.len() - 6];
        if (sign == b'+' || sign == b'-') && bytes[s.len() - 3] == b':' {
            let hours: i64 = s[s.len() - 5..s.len() - 3].parse().ok()?;
            let minutes: i64 = s[s.len() - 2..].parse().ok()?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = (hours * 60 + minutes) * 60_000;
            let offset = if sign == b'-' { -offset } else { offset };
            return Some((&s[..s.len() - 6], offset));
        }
    }
    Some((s, 0))
}

/// Parses a job state name as [`JobState::name`] prints it.
pub fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::from_name(&s.to_ascii_lowercase()).ok_or_else(|| {
        "expected one of pending, running, suspended, succeeded, failed, cancelled".into()
    })
}

/// Parses a schedule kind name as [`ScheduleKind::name`] prints it.
pub fn parse_kind(s: &str) -> Result<ScheduleKind, String> {
    let kinds = [
        ScheduleKind::Now,
        ScheduleKind::At,
        ScheduleKind::Cron,
        ScheduleKind::Repeat,
    ];
    kinds
        .into_iter()
        .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
        .ok_or_else(|| "expected one of now, at, cron, repeat".into())
}

/// Parses a misfire policy: `fire-once`, `skip` or `fire-all`.
pub fn parse_misfire(s: &str) -> Result<MisfirePolicy, String> {
    match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
        "fire-once" => Ok(MisfirePolicy::FireOnce),
        "skip" => Ok(MisfirePolicy::Skip),
        "fire-all" => Ok(MisfirePolicy::FireAll),
        _ => Err("expected one of fire-once, skip, fire-all".into()),
    }
}

/// Parses a retry plan (see [`lts_common::plan`]); the message quotes the
/// offending token and its position.
pub fn parse_plan(s: &str) -> Result<RetryPlan, String> {
    s.parse::<RetryPlan>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::testing::{one_job, parse};
    use lts_common::Schedule;

    #[test]
    fn params_split_at_the_first_equals() {
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_key_value("a="), Ok(("a".into(), String::new())));
        assert!(parse_key_value("=b").is_err());
        assert!(parse_key_value("ab").is_err());
        let job = one_job(&["-g", "w", "-t", "t1", "--param", "x=1", "--param", "y=a=b"]);
        assert_eq!(job.params.get("x").map(String::as_str), Some("1"));
        assert_eq!(job.params.get("y").map(String::as_str), Some("a=b"));
    }

    #[test]
    fn times_parse_with_zone_or_offset() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Ok(1_000));
        assert_eq!(
            parse_time("2024-02-29T12:34:56.789Z"),
            Ok(1_709_210_096_789)
        );
        assert_eq!(
            parse_time("2024-02-29T14:34:56.789+02:00"),
            Ok(1_709_210_096_789)
        );
        assert_eq!(
            parse_time("2024-02-29T10:34:56.789-02:00"),
            Ok(1_709_210_096_789)
        );
        assert_eq!(parse_time("2024-02-29 12:34:56.789"), Ok(1_709_210_096_789));
        assert!(parse_time("2024-02-29").is_err());
        assert!(parse_time("2024-02-29T12:34:56+25:00").is_err());
        assert!(parse_time("next tuesday").unwrap_err().contains("RFC 3339"));
        let job = one_job(&["-g", "w", "-t", "t", "--at", "1970-01-01T00:00:02Z"]);
        assert_eq!(job.schedule, Schedule::At(2_000));
        let job = one_job(&["-g", "w", "-t", "t", "--in", "5s"]);
        assert_eq!(job.schedule, Schedule::At(6_000));
        assert!(parse(&[
            "submit",
            "-g",
            "w",
            "-t",
            "t",
            "--at",
            "1970-01-01T00:00:02Z",
            "--in",
            "1s"
        ])
        .is_err());
    }
}
