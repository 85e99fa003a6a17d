//! Commands that run here, without a JobTracker: `cron next`, `cron
//! explain` and `plan check`. They use the same cron engine and plan parser
//! as the tracker, so what they print is what the tracker will do.

use chrono::{DateTime, FixedOffset, Utc};
use lts_common::cron::{CronError, CronSchedule, Dialect};
use lts_common::{RetryDecision, RetryPlan};

/// The next `count` fire times of `expression` in `time_zone` (empty is
/// UTC) strictly after `after`, each in the zone's local time with its
/// offset. Fewer when the schedule ends before the year 2400.
pub fn cron_next(
    expression: &str,
    time_zone: &str,
    after: DateTime<Utc>,
    count: usize,
) -> Result<Vec<DateTime<FixedOffset>>, CronError> {
    let schedule = CronSchedule::parse(expression, time_zone)?;
    Ok(next_fire_times(&schedule, after, count))
}

/// [`cron_next`] for a schedule already parsed.
pub fn next_fire_times(
    schedule: &CronSchedule,
    after: DateTime<Utc>,
    count: usize,
) -> Vec<DateTime<FixedOffset>> {
    let zone = schedule.time_zone();
    schedule
        .upcoming(after)
        .take(count)
        .map(|t| t.with_timezone(&zone).fixed_offset())
        .collect()
}

/// The name of a dialect as the CLI prints it.
pub fn dialect_name(d: Dialect) -> &'static str {
    match d {
        Dialect::Quartz => "quartz",
        Dialect::Crontab => "crontab",
    }
}

/// What a plan decides after each of the first `errors` errors, stopping
/// after the first `give up`.
pub fn plan_decisions(plan: &RetryPlan, errors: u32) -> Vec<RetryDecision> {
    let mut decisions = Vec::new();
    for failures in 1..=errors {
        let d = plan.decide(failures);
        let last = d == RetryDecision::GiveUp;
        decisions.push(d);
        if last {
            break;
        }
    }
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("valid time")
            .with_timezone(&Utc)
    }

    fn next(expression: &str, zone: &str, after: &str, count: usize) -> Vec<String> {
        cron_next(expression, zone, at(after), count)
            .expect("valid expression")
            .iter()
            .map(|t| t.to_rfc3339())
            .collect()
    }

    #[test]
    fn fire_times_carry_the_zone_offset_across_dst() {
        // Daily at 02:30 in Berlin: the spring-forward gap moves the 29
        // March 2026 firing to 03:00 CEST, and the offset changes after it.
        assert_eq!(
            next("0 30 2 * * ?", "Europe/Berlin", "2026-03-27T12:00:00Z", 4),
            [
                "2026-03-28T02:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00",
                "2026-03-31T02:30:00+02:00",
            ]
        );
        assert_eq!(
            next("*/15 * * * *", "", "2026-01-01T00:07:00Z", 2),
            ["2026-01-01T00:15:00+00:00", "2026-01-01T00:30:00+00:00"]
        );
    }

    #[test]
    fn schedules_that_end_give_fewer_times() {
        assert_eq!(
            next("0 0 0 1 1 ? 2030", "", "2026-01-01T00:00:00Z", 5),
            ["2030-01-01T00:00:00+00:00"]
        );
        assert!(next("0 0 0 30 2 ?", "", "2026-01-01T00:00:00Z", 5).is_empty());
    }

    #[test]
    fn bad_expressions_and_zones_are_errors() {
        let e = cron_next("0 0 25 * * ?", "", Utc::now(), 1).unwrap_err();
        assert!(e.to_string().contains("field 3 (hour)"), "{e}");
        let e = cron_next("0 0 * * * ?", "Mars/Olympus", Utc::now(), 1).unwrap_err();
        assert_eq!(e, CronError::UnknownTimeZone("Mars/Olympus".into()));
    }

    #[test]
    fn decisions_stop_at_give_up() {
        let plan: RetryPlan = "[retry_after 1s, suspend] x2".parse().expect("valid");
        assert_eq!(
            plan_decisions(&plan, 10),
            [
                RetryDecision::RetryAfter(1_000),
                RetryDecision::Suspend,
                RetryDecision::RetryAfter(1_000),
                RetryDecision::Suspend,
                RetryDecision::GiveUp,
            ]
        );
        let forever: RetryPlan = "[retry] forever".parse().expect("valid");
        assert_eq!(plan_decisions(&forever, 3).len(), 3);
    }
}
