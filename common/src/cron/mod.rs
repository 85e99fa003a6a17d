//! Cron schedules: parse an expression once, then ask for the next fire
//! time after any instant.
//!
//! Start with [`CronSchedule::parse`] and [`CronSchedule::next_after`]. The
//! JobTracker keeps the last fire time of a job and asks for the next one
//! after it, so a schedule never fires twice (the next time is strictly
//! later), never skips (it is the earliest matching time after the instant)
//! and never drifts (times come from the calendar, not from adding
//! intervals).
//!
//! # Syntax
//!
//! Two dialects, told apart by the number of fields:
//!
//! * **Quartz**, 6 or 7 fields: `second minute hour day-of-month month
//!   day-of-week [year]`. Day-of-week is 1-7 with 1 = Sunday.
//! * **crontab**, 5 fields: `minute hour day-of-month month day-of-week`,
//!   second 0. Day-of-week is 0-7 with both 0 and 7 = Sunday.
//! * **Macros** stand for crontab expressions: `@yearly` (`@annually`),
//!   `@monthly`, `@weekly` (Sunday), `@daily` (`@midnight`), `@hourly`.
//!
//! Ranges: second and minute 0-59, hour 0-23, day-of-month 1-31, month 1-12
//! or `JAN`-`DEC`, day-of-week as above or `SUN`-`SAT`, year 1970-2399.
//! Names and letters are case-insensitive. In every field:
//!
//! | form | meaning |
//! | --- | --- |
//! | `*` | every value |
//! | `5` | one value |
//! | `1,15,30` | a list of any of these forms |
//! | `10-20` | a range; `22-2` or `FRI-MON` wraps around the end |
//! | `*/5`, `10-40/10`, `5/15` | a step over all values, a range, or from a value to the end |
//!
//! Day-of-month and day-of-week also take `?`: "no restriction here", and
//! these specials, which may be listed with other values:
//!
//! | field | form | meaning |
//! | --- | --- | --- |
//! | day-of-month | `L` | the last day of the month |
//! | day-of-month | `L-3` | three days before the last day (the 28th of a 31-day month) |
//! | day-of-month | `15W` | the weekday (Mon-Fri) nearest the 15th, within the month: a Saturday moves to Friday, a Sunday to Monday, but `1W` on a Saturday is Monday the 3rd and a Sunday last day moves back to Friday; nothing in a month without that day |
//! | day-of-month | `LW` | the last weekday of the month |
//! | day-of-week | `5L` | the last Thursday (Quartz numbering) of the month |
//! | day-of-week | `6#3` | the third Friday (Quartz numbering) of the month; `#5` skips months without a fifth |
//! | day-of-week | `L` | Saturday, the last day of the week |
//!
//! # Day-of-month and day-of-week
//!
//! Each dialect keeps its own rule:
//!
//! * **Quartz**: at most one of the two may restrict. One must be `?` or
//!   `*`; both restricted is a [`CronError::DayFields`], and so is `?` in
//!   both. (Real Quartz insists on `?`; `*` is accepted too.)
//! * **crontab** (Vixie cron, cronie): if both restrict, a day matches when
//!   **either** matches (`0 0 1,15 * MON` fires on the 1st, the 15th and
//!   every Monday). If either field starts with `*` (`*/2` too), a day must
//!   match both. `?` is taken as `*`.
//!
//! # Time zones and daylight saving
//!
//! Each schedule has an IANA zone (empty is UTC); fields are matched against
//! the wall clock in that zone. Where the wall clock is not one-to-one:
//!
//! * **Gap** (spring forward): a matching local time that does not exist
//!   fires **once, at the first instant after the gap**. `0 30 2 * * ?` in
//!   Europe/Berlin on the last Sunday of March fires at 03:00 CEST. All the
//!   matching times inside one gap collapse into that one firing (and into a
//!   firing scheduled for the end of the gap itself).
//! * **Overlap** (fall back): a local time that occurs twice fires **once,
//!   at its first occurrence**. `0 30 2 * * ?` in Europe/Berlin on the last
//!   Sunday of October fires at 02:30 CEST and not at 02:30 CET; an hourly
//!   or more frequent schedule is silent during the repeated hour, whose
//!   local times have all fired already.
//!
//! # Limits
//!
//! Fire times lie between 1970 and 2399 (local time): an expression that
//! cannot fire before 2400 (`0 0 0 30 2 ?`, `0 0 0 * * ? 2001`) has no next
//! time, and [`CronSchedule::next_after`] says so within microseconds. The
//! search jumps field by field (year, month, day, hour, minute, second) and
//! never scans second by second.

mod error;
mod explain;
mod parse;
mod spec;
#[cfg(test)]
mod tests;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

pub use error::CronError;
pub use spec::Dialect;
use spec::{Spec, MAX_YEAR, MIN_YEAR};

/// A parsed cron expression in a time zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronSchedule {
    expression: String,
    time_zone: Tz,
    spec: Spec,
}

impl CronSchedule {
    /// Parses `expression` (see the [module docs](self) for the syntax) in
    /// the IANA zone `time_zone`; an empty zone is UTC.
    pub fn parse(expression: &str, time_zone: &str) -> Result<CronSchedule, CronError> {
        let zone_name = time_zone.trim();
        let time_zone = if zone_name.is_empty() {
            Tz::UTC
        } else {
            zone_name
                .parse::<Tz>()
                .map_err(|_| CronError::UnknownTimeZone(zone_name.to_string()))?
        };
        let spec = parse::parse_expression(expression)?;
        Ok(CronSchedule {
            expression: expression.trim().to_string(),
            time_zone,
            spec,
        })
    }

    /// The expression as given, trimmed.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The zone the fields are matched in.
    pub fn time_zone(&self) -> Tz {
        self.time_zone
    }

    /// Which dialect the expression was written in.
    pub fn dialect(&self) -> Dialect {
        self.spec.dialect
    }

    /// The earliest fire time strictly after `instant`, or `None` if there
    /// is none before the year 2400.
    pub fn next_after(&self, instant: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = instant.with_timezone(&self.time_zone).naive_local();
        let mut from = local
            .with_nanosecond(0)?
            .checked_add_signed(Duration::seconds(1))?;
        // Every fire time is a whole-second local time mapped to an instant
        // by the gap and overlap rules; that map never decreases, so the
        // answer is the first matching local time after `local` whose
        // instant is after `instant`. Only the second pass through an
        // overlap yields instants that are not, and it is skipped whole.
        for _ in 0..16 {
            let candidate = self.next_local(from)?;
            let fires_at = match self.time_zone.from_local_datetime(&candidate) {
                LocalResult::Single(t) => t,
                LocalResult::Ambiguous(a, b) => {
                    let first = a.min(b);
                    if first <= instant {
                        from = self.first_local_where(candidate, |r| {
                            !matches!(r, LocalResult::Ambiguous(..))
                        })?;
                        continue;
                    }
                    first
                }
                LocalResult::None => {
                    let after_gap =
                        self.first_local_where(candidate, |r| !matches!(r, LocalResult::None))?;
                    self.time_zone.from_local_datetime(&after_gap).earliest()?
                }
            };
            if fires_at > instant {
                return Some(fires_at.with_timezone(&Utc));
            }
            from = candidate.checked_add_signed(Duration::seconds(1))?;
        }
        None
    }

    /// The schedule in plain English, e.g. `0 30 * * * ?` is "at second 0 of
    /// minute 30 of every hour, every day (UTC)".
    pub fn explain(&self) -> String {
        explain::explain(&self.spec, self.time_zone)
    }

    /// [`CronSchedule::next_after`] on Unix milliseconds.
    pub fn next_after_ms(&self, unix_ms: i64) -> Option<i64> {
        let instant = DateTime::from_timestamp_millis(unix_ms)?;
        self.next_after(instant).map(|t| t.timestamp_millis())
    }

    /// The fire times after `after`, in order; ends where
    /// [`CronSchedule::next_after`] finds none.
    pub fn upcoming(&self, after: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        std::iter::successors(self.next_after(after), move |t| self.next_after(*t))
    }

    /// The first local time at or after `from` (which fails `accept`) that
    /// `accept` takes, found by doubling and then bisecting: gaps and
    /// overlaps are short and far apart, so the boundary found is the end of
    /// the one `from` is in.
    fn first_local_where(
        &self,
        from: NaiveDateTime,
        accept: impl Fn(LocalResult<DateTime<Tz>>) -> bool,
    ) -> Option<NaiveDateTime> {
        let ok = |t: NaiveDateTime| accept(self.time_zone.from_local_datetime(&t));
        let mut rejected = from;
        let mut step = Duration::minutes(1);
        let mut accepted = loop {
            let probe = from.checked_add_signed(step)?;
            if ok(probe) {
                break probe;
            }
            rejected = probe;
            step = step * 2;
            if step > Duration::days(8) {
                return None;
            }
        };
        while accepted - rejected > Duration::seconds(1) {
            let half = (accepted - rejected).num_seconds() / 2;
            let mid = rejected + Duration::seconds(half);
            if ok(mid) {
                accepted = mid;
            } else {
                rejected = mid;
            }
        }
        Some(accepted)
    }

    /// The first local time at or after `from` that the fields match.
    fn next_local(&self, from: NaiveDateTime) -> Option<NaiveDateTime> {
        let spec = &self.spec;
        let (mut year, mut month, mut day) = (from.year(), from.month(), from.day());
        let (mut hour, mut minute, mut second) = (from.hour(), from.minute(), from.second());
        if from.date() < NaiveDate::from_ymd_opt(MIN_YEAR, 1, 1)? {
            (year, month, day, hour, minute, second) = (MIN_YEAR, 1, 1, 0, 0, 0);
        }
        let mut days_cache: Option<(i32, u32, u32)> = None;
        loop {
            if year > MAX_YEAR {
                return None;
            }
            let offset = (year - MIN_YEAR) as u32;
            match spec.years.next_from(offset) {
                None => return None,
                Some(next) if next != offset => {
                    (year, month, day, hour, minute, second) =
                        (MIN_YEAR + next as i32, 1, 1, 0, 0, 0);
                    continue;
                }
                Some(_) => {}
            }
            match spec.months.next_from(month) {
                Some(next) if next <= 12 => {
                    if next != month {
                        (month, day, hour, minute, second) = (next, 1, 0, 0, 0);
                    }
                }
                _ => {
                    (year, month, day, hour, minute, second) = (year + 1, 1, 1, 0, 0, 0);
                    continue;
                }
            }
            let days = match days_cache {
                Some((y, m, mask)) if y == year && m == month => mask,
                _ => {
                    let mask = spec.days_mask(year, month);
                    days_cache = Some((year, month, mask));
                    mask
                }
            };
            match next_bit(days, day) {
                Some(next) => {
                    if next != day {
                        (day, hour, minute, second) = (next, 0, 0, 0);
                    }
                }
                None => {
                    (month, day, hour, minute, second) = (month + 1, 1, 0, 0, 0);
                    continue;
                }
            }
            match spec.hours.next_from(hour) {
                Some(next) if next < 24 => {
                    if next != hour {
                        (hour, minute, second) = (next, 0, 0);
                    }
                }
                _ => {
                    (day, hour, minute, second) = (day + 1, 0, 0, 0);
                    continue;
                }
            }
            match spec.minutes.next_from(minute) {
                Some(next) if next < 60 => {
                    if next != minute {
                        (minute, second) = (next, 0);
                    }
                }
                _ => {
                    (hour, minute, second) = (hour + 1, 0, 0);
                    continue;
                }
            }
            match spec.seconds.next_from(second) {
                Some(next) if next < 60 => second = next,
                _ => {
                    (minute, second) = (minute + 1, 0);
                    continue;
                }
            }
            return NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(hour, minute, second);
        }
    }
}

impl std::fmt::Display for CronSchedule {
    /// The expression and, unless UTC, the zone: `0 30 9 ? * MON-FRI
    /// (Europe/Berlin)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.time_zone == Tz::UTC {
            f.write_str(&self.expression)
        } else {
            write!(f, "{} ({})", self.expression, self.time_zone.name())
        }
    }
}

/// The smallest set bit of `mask` at or above `from`.
fn next_bit(mask: u32, from: u32) -> Option<u32> {
    if from >= 32 {
        return None;
    }
    let rest = mask & (u32::MAX << from);
    (rest != 0).then(|| rest.trailing_zeros())
}
