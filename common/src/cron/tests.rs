//! Unit tests per syntax feature and error, daylight-saving cases, and
//! property tests against an independent matcher, a brute-force oracle and
//! the `cron` crate.

use std::str::FromStr;
use std::time::Instant;

use chrono::{DateTime, Datelike, Duration, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;

use super::*;

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn schedule(expr: &str, tz: &str) -> CronSchedule {
    CronSchedule::parse(expr, tz).unwrap_or_else(|e| panic!("{expr}: {e}"))
}

/// The next `n` fire times after `after` (RFC 3339), as local RFC 3339.
fn next_n(expr: &str, tz: &str, after: &str, n: usize) -> Vec<String> {
    let s = schedule(expr, tz);
    let zone = s.time_zone();
    s.upcoming(utc(after))
        .take(n)
        .map(|t| t.with_timezone(&zone).to_rfc3339())
        .collect()
}

fn next1(expr: &str, tz: &str, after: &str) -> String {
    next_n(expr, tz, after, 1)
        .pop()
        .unwrap_or_else(|| "none".to_string())
}

fn error(expr: &str) -> String {
    CronSchedule::parse(expr, "")
        .map(|s| format!("parsed: {s:?}"))
        .unwrap_or_else(|e| e.to_string())
}

// ---- syntax ------------------------------------------------------------

#[test]
fn every_second_is_strictly_after_the_instant() {
    assert_eq!(
        next_n("* * * * * ?", "", "2024-05-01T10:00:00.500Z", 3),
        [
            "2024-05-01T10:00:01+00:00",
            "2024-05-01T10:00:02+00:00",
            "2024-05-01T10:00:03+00:00"
        ]
    );
    assert_eq!(
        next1("* * * * * ?", "", "2024-05-01T10:00:00Z"),
        "2024-05-01T10:00:01+00:00"
    );
}

#[test]
fn fixed_time_rolls_over_year_end() {
    assert_eq!(
        next_n("15 30 9 * * ?", "", "2024-12-31T09:30:15Z", 2),
        ["2025-01-01T09:30:15+00:00", "2025-01-02T09:30:15+00:00"]
    );
}

#[test]
fn lists_ranges_and_steps() {
    assert_eq!(
        next_n("0 0,20,40 8-9 * * ?", "", "2024-01-01T00:00:00Z", 7),
        [
            "2024-01-01T08:00:00+00:00",
            "2024-01-01T08:20:00+00:00",
            "2024-01-01T08:40:00+00:00",
            "2024-01-01T09:00:00+00:00",
            "2024-01-01T09:20:00+00:00",
            "2024-01-01T09:40:00+00:00",
            "2024-01-02T08:00:00+00:00",
        ]
    );
    // */5 from the start of the range.
    assert_eq!(
        next_n("*/20 * * * * ?", "", "2024-01-01T00:00:41Z", 3),
        [
            "2024-01-01T00:01:00+00:00",
            "2024-01-01T00:01:20+00:00",
            "2024-01-01T00:01:40+00:00"
        ]
    );
    // a-b/n within a range.
    assert_eq!(
        next_n("0 10-40/10 12 * * ?", "", "2024-01-01T12:10:00Z", 4),
        [
            "2024-01-01T12:20:00+00:00",
            "2024-01-01T12:30:00+00:00",
            "2024-01-01T12:40:00+00:00",
            "2024-01-02T12:10:00+00:00"
        ]
    );
    // a/n from a value to the end.
    assert_eq!(
        next_n("0 5/15 12 * * ?", "", "2024-01-01T00:00:00Z", 5),
        [
            "2024-01-01T12:05:00+00:00",
            "2024-01-01T12:20:00+00:00",
            "2024-01-01T12:35:00+00:00",
            "2024-01-01T12:50:00+00:00",
            "2024-01-02T12:05:00+00:00"
        ]
    );
}

#[test]
fn ranges_wrap_around() {
    assert_eq!(
        next_n("0 0 22-1 * * ?", "", "2024-01-01T12:00:00Z", 4),
        [
            "2024-01-01T22:00:00+00:00",
            "2024-01-01T23:00:00+00:00",
            "2024-01-02T00:00:00+00:00",
            "2024-01-02T01:00:00+00:00"
        ]
    );
    // FRI-MON: 2024-01-05 is a Friday.
    assert_eq!(
        next_n("0 0 0 ? * FRI-MON", "", "2024-01-03T00:00:00Z", 5),
        [
            "2024-01-05T00:00:00+00:00",
            "2024-01-06T00:00:00+00:00",
            "2024-01-07T00:00:00+00:00",
            "2024-01-08T00:00:00+00:00",
            "2024-01-12T00:00:00+00:00"
        ]
    );
    // A stepped wrapping range keeps counting across the end.
    let s = schedule("0 0 22-3/2 * * ?", "");
    let hours: Vec<u32> = s.spec.hours.iter().collect();
    assert_eq!(hours, [0, 2, 22]);
}

#[test]
fn month_and_day_names_any_case() {
    assert_eq!(
        next_n("0 0 0 1 jan,Jul ?", "", "2024-02-01T00:00:00Z", 2),
        ["2024-07-01T00:00:00+00:00", "2025-01-01T00:00:00+00:00"]
    );
    assert_eq!(
        schedule("0 0 0 ? * MON-FRI", "").spec,
        schedule("0 0 0 ? * 2-6", "").spec
    );
    assert_eq!(
        schedule("0 0 0 ? JAN-MAR *", "").spec,
        schedule("0 0 0 ? 1-3 *", "").spec
    );
}

#[test]
fn quartz_day_of_week_one_is_sunday() {
    // 2024-01-07 is a Sunday.
    assert_eq!(
        next1("0 0 12 ? * 1", "", "2024-01-01T00:00:00Z"),
        "2024-01-07T12:00:00+00:00"
    );
    assert_eq!(
        next1("0 0 12 ? * 7", "", "2024-01-01T00:00:00Z"),
        "2024-01-06T12:00:00+00:00"
    );
}

#[test]
fn crontab_five_fields_have_second_zero_and_sunday_zero_or_seven() {
    let s = schedule("30 9 * * 1-5", "");
    assert_eq!(s.dialect(), Dialect::Crontab);
    assert_eq!(
        next_n("30 9 * * 1-5", "", "2024-01-05T10:00:00Z", 2),
        ["2024-01-08T09:30:00+00:00", "2024-01-09T09:30:00+00:00"]
    );
    for sunday in ["0 12 * * 0", "0 12 * * 7", "0 12 * * SUN"] {
        assert_eq!(
            next1(sunday, "", "2024-01-01T00:00:00Z"),
            "2024-01-07T12:00:00+00:00",
            "{sunday}"
        );
    }
}

#[test]
fn crontab_ors_restricted_day_fields_and_ands_a_star() {
    // The 1st, the 15th and every Monday (2024-01-01 is a Monday).
    assert_eq!(
        next_n("0 0 1,15 * MON", "", "2024-01-01T00:00:00Z", 5),
        [
            "2024-01-08T00:00:00+00:00",
            "2024-01-15T00:00:00+00:00",
            "2024-01-22T00:00:00+00:00",
            "2024-01-29T00:00:00+00:00",
            "2024-02-01T00:00:00+00:00"
        ]
    );
    // `*/2` in day-of-month makes it "and": odd days that are Mondays.
    assert_eq!(
        next_n("0 0 */2 * 1", "", "2024-01-01T00:00:00Z", 2),
        ["2024-01-15T00:00:00+00:00", "2024-01-29T00:00:00+00:00"]
    );
    // `?` is `*` in crontab.
    assert_eq!(
        schedule("0 0 ? * 1", "").spec,
        schedule("0 0 * * 1", "").spec
    );
}

#[test]
fn quartz_takes_star_for_the_unrestricted_day_field() {
    assert_eq!(
        schedule("0 0 0 * * MON", "").spec,
        schedule("0 0 0 ? * MON", "").spec
    );
    assert_eq!(
        schedule("0 0 0 1 * *", "").spec,
        schedule("0 0 0 1 * ?", "").spec
    );
}

#[test]
fn last_day_and_offsets() {
    assert_eq!(
        next_n("0 0 0 L * ?", "", "2024-01-31T00:00:00Z", 3),
        [
            "2024-02-29T00:00:00+00:00",
            "2024-03-31T00:00:00+00:00",
            "2024-04-30T00:00:00+00:00"
        ]
    );
    assert_eq!(
        next_n("0 0 0 L-3 * ?", "", "2024-01-01T00:00:00Z", 2),
        ["2024-01-28T00:00:00+00:00", "2024-02-26T00:00:00+00:00"]
    );
    // L-30 exists only in 31-day months.
    assert_eq!(
        next1("0 0 0 L-30 * ?", "", "2024-02-01T00:00:00Z"),
        "2024-03-01T00:00:00+00:00"
    );
    // Listed with a plain day.
    assert_eq!(
        next_n("0 0 0 1,L * ?", "", "2024-04-01T00:00:00Z", 2),
        ["2024-04-30T00:00:00+00:00", "2024-05-01T00:00:00+00:00"]
    );
}

#[test]
fn nearest_weekday() {
    // 2024-06-15 is a Saturday: Friday the 14th.
    assert_eq!(
        next1("0 0 0 15W * ?", "", "2024-06-01T00:00:00Z"),
        "2024-06-14T00:00:00+00:00"
    );
    // 2024-09-15 is a Sunday: Monday the 16th.
    assert_eq!(
        next1("0 0 0 15W * ?", "", "2024-09-01T00:00:00Z"),
        "2024-09-16T00:00:00+00:00"
    );
    // 2024-05-15 is a Wednesday.
    assert_eq!(
        next1("0 0 0 15W * ?", "", "2024-05-01T00:00:00Z"),
        "2024-05-15T00:00:00+00:00"
    );
    // 2024-06-01 is a Saturday: not back into May but Monday the 3rd.
    assert_eq!(
        next1("0 0 0 1W * ?", "", "2024-05-31T00:00:00Z"),
        "2024-06-03T00:00:00+00:00"
    );
    // 2024-03-31 is a Sunday and the last day: Friday the 29th.
    assert_eq!(
        next1("0 0 0 31W * ?", "", "2024-03-01T00:00:00Z"),
        "2024-03-29T00:00:00+00:00"
    );
    // 31W never fires in a 30-day month: from April straight to May.
    assert_eq!(
        next1("0 0 0 31W * ?", "", "2024-04-01T00:00:00Z"),
        "2024-05-31T00:00:00+00:00"
    );
    // LW: 2024-08-31 is a Saturday.
    assert_eq!(
        next_n("0 0 0 LW * ?", "", "2024-08-01T00:00:00Z", 2),
        ["2024-08-30T00:00:00+00:00", "2024-09-30T00:00:00+00:00"]
    );
}

#[test]
fn last_and_nth_weekday_of_month() {
    // 5L: last Thursday.
    assert_eq!(
        next_n("0 0 0 ? * 5L", "", "2024-01-01T00:00:00Z", 2),
        ["2024-01-25T00:00:00+00:00", "2024-02-29T00:00:00+00:00"]
    );
    assert_eq!(
        schedule("0 0 0 ? * THUL", "").spec,
        schedule("0 0 0 ? * 5L", "").spec
    );
    // 6#3: third Friday.
    assert_eq!(
        next_n("0 0 0 ? * 6#3", "", "2024-01-01T00:00:00Z", 2),
        ["2024-01-19T00:00:00+00:00", "2024-02-16T00:00:00+00:00"]
    );
    assert_eq!(
        schedule("0 0 0 ? * FRI#3", "").spec,
        schedule("0 0 0 ? * 6#3", "").spec
    );
    // A fifth Monday: 2024 has them in January, April, July, September, December.
    assert_eq!(
        next_n("0 0 0 ? * 2#5", "", "2024-01-01T00:00:00Z", 3),
        [
            "2024-01-29T00:00:00+00:00",
            "2024-04-29T00:00:00+00:00",
            "2024-07-29T00:00:00+00:00"
        ]
    );
    // A lone L in day-of-week is Saturday.
    assert_eq!(
        next1("0 0 0 ? * L", "", "2024-01-01T00:00:00Z"),
        "2024-01-06T00:00:00+00:00"
    );
    // In crontab numbering 5L is the last Friday.
    assert_eq!(
        next1("0 0 * * 5L", "", "2024-01-01T00:00:00Z"),
        "2024-01-26T00:00:00+00:00"
    );
}

#[test]
fn year_field_and_leap_days() {
    assert_eq!(
        next_n("0 0 0 1 1 ? 2030,2032-2033", "", "2024-01-01T00:00:00Z", 4),
        [
            "2030-01-01T00:00:00+00:00",
            "2032-01-01T00:00:00+00:00",
            "2033-01-01T00:00:00+00:00"
        ]
    );
    assert_eq!(
        next_n("0 0 0 29 2 ?", "", "2024-03-01T00:00:00Z", 2),
        ["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"]
    );
    // 2100 is not a leap year.
    assert_eq!(
        next1("0 0 0 29 2 ?", "", "2096-03-01T00:00:00Z"),
        "2104-02-29T00:00:00+00:00"
    );
}

#[test]
fn impossible_and_past_expressions_end_fast() {
    let started = Instant::now();
    for expr in [
        "0 0 0 30 2 ?",
        "0 0 0 31 4,6,9,11 ?",
        "0 0 0 * * ? 2001",
        "0 0 0 ? 2 2#5 2026-2027",
    ] {
        let s = schedule(expr, "Europe/Berlin");
        assert_eq!(s.next_after(utc("2024-01-01T00:00:00Z")), None, "{expr}");
    }
    // Nothing after 2399.
    assert_eq!(
        schedule("* * * * * ?", "").next_after(utc("2399-12-31T23:59:59Z")),
        None
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn yearly_next_time_is_a_jump_not_a_scan() {
    let s = schedule("0 0 0 1 1 ?", "America/New_York");
    let started = Instant::now();
    let mut t = utc("2000-06-01T00:00:00Z");
    for _ in 0..300 {
        t = s.next_after(t).unwrap();
    }
    assert_eq!(t.with_timezone(&s.time_zone()).year(), 2300);
    // 300 years in a debug build: a second-by-second scan would take hours.
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn macros() {
    for (name, crontab) in [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@DAILY", "0 0 * * *"),
    ] {
        assert_eq!(
            schedule(name, "").spec,
            schedule(crontab, "").spec,
            "{name}"
        );
    }
    assert_eq!(
        next1("@weekly", "", "2024-01-01T00:00:00Z"),
        "2024-01-07T00:00:00+00:00"
    );
}

#[test]
fn millisecond_convenience_and_accessors() {
    let s = schedule(" 0 0 * * * ? ", "Asia/Tokyo");
    assert_eq!(s.expression(), "0 0 * * * ?");
    assert_eq!(s.time_zone(), chrono_tz::Asia::Tokyo);
    assert_eq!(s.to_string(), "0 0 * * * ? (Asia/Tokyo)");
    // 2024-01-01T00:00:00.001Z -> the next whole hour.
    assert_eq!(s.next_after_ms(1_704_067_200_001), Some(1_704_070_800_000));
    assert_eq!(schedule("0 0 * * * ?", "").time_zone(), Tz::UTC);
}

// ---- errors ------------------------------------------------------------

#[test]
fn errors_name_the_field_and_the_token() {
    let cases = [
        ("", "empty cron expression: expected 5 fields (crontab), 6 or 7 (Quartz with seconds), or a macro such as @daily"),
        ("* * *", "expected 5 fields (crontab: minute hour day-of-month month day-of-week) or 6-7 (Quartz: second minute hour day-of-month month day-of-week [year]), found 3 in `* * *`"),
        ("0 0 25 * * ?", "field 3 (hour): 25 is outside 0-23 (in `25`)"),
        ("0 1,25 * * *", "field 2 (hour): 25 is outside 0-23 (in `1,25`)"),
        ("60 * * * * ?", "field 1 (second): 60 is outside 0-59 (in `60`)"),
        ("0 0 0 0 * ?", "field 4 (day-of-month): 0 is outside 1-31 (in `0`)"),
        ("0 0 0 ? 13 *", "field 5 (month): 13 is outside 1-12 (in `13`)"),
        ("0 0 0 ? * 0", "field 6 (day-of-week): 0 is outside 1-7 (in `0`)"),
        ("0 0 * * 8", "field 5 (day-of-week): 8 is outside 0-7 (in `8`)"),
        ("0 0 0 1 * ? 1969", "field 7 (year): 1969 is outside 1970-2399 (in `1969`)"),
        ("0 0 0 ? FOO *", "field 5 (month): `FOO` is not a number or a month name (JAN-DEC) (in `FOO`)"),
        ("0 0 0 ? * FUN", "field 6 (day-of-week): `FUN` is not a number or a day name (SUN-SAT) (in `FUN`)"),
        ("0 x * * * ?", "field 2 (minute): `X` is not a number (in `x`)"),
        ("*/0 * * * * ?", "field 1 (second): step 0 in `*/0`: a step must be at least 1 (in `*/0`)"),
        ("0 */61 * * * ?", "field 2 (minute): step `61` must be a number in 1-60 (in `*/61`)"),
        ("0 1,,2 * * * ?", "field 2 (minute): empty list item (in `1,,2`)"),
        ("0 ? * * * ?", "field 2 (minute): `?` is only allowed in day-of-month and day-of-week (in `?`)"),
        ("0 0 0 ?,1 * ?", "field 4 (day-of-month): `?` must be the whole field (in `?,1`)"),
        ("0 0 L * * ?", "field 3 (hour): `L`: L, W and # are only allowed in day-of-month and day-of-week (in `L`)"),
        ("0 0 0 ? * 6#6", "field 6 (day-of-week): occurrence after # `6` must be a number in 1-5 (in `6#6`)"),
        ("0 0 0 ? * 5W", "field 6 (day-of-week): `5W` is not a number or a day name (SUN-SAT) (in `5W`)"),
        ("0 0 0 32W * ?", "field 4 (day-of-month): day before W `32` must be a number in 1-31 (in `32W`)"),
        ("0 0 0 L-31 * ?", "field 4 (day-of-month): offset from the last day `31` must be a number in 0-30 (in `L-31`)"),
        ("0 0 0 L/2 * ?", "field 4 (day-of-month): `L/2`: a step cannot follow L, W or # (in `L/2`)"),
        ("0 0 0 1 * MON", "fields 4 (day-of-month) and 6 (day-of-week): both restrict the day; Quartz syntax needs `?` in one of them (the 5-field crontab form ORs them instead)"),
        ("0 0 0 ? * ?", "fields 4 (day-of-month) and 6 (day-of-week): only one of them may be `?`; put `*` in the other"),
        ("@fortnightly", "unknown macro `@fortnightly`: known are @yearly, @annually, @monthly, @weekly, @daily, @midnight and @hourly"),
    ];
    for (expr, want) in cases {
        assert_eq!(error(expr), want, "{expr}");
    }
    assert_eq!(
        CronSchedule::parse("0 0 * * *", "Mars/Olympus").unwrap_err(),
        CronError::UnknownTimeZone("Mars/Olympus".to_string())
    );
    assert_eq!(
        CronSchedule::parse("0 0 * * *", "Mars/Olympus")
            .unwrap_err()
            .to_string(),
        "unknown time zone `Mars/Olympus`: expected an IANA name such as `Europe/Berlin` or `UTC`, or empty for UTC"
    );
    assert!(matches!(
        CronSchedule::parse("0 0 25 * * ?", ""),
        Err(CronError::Field {
            position: 3,
            name: "hour",
            ..
        })
    ));
}

// ---- explain -------------------------------------------------------------

#[test]
fn explains_in_plain_english() {
    let cases = [
        ("0 30 * * * ?", "", "at second 0 of minute 30 of every hour, every day (UTC)"),
        ("0 30 9 ? * MON-FRI", "Europe/Berlin", "at 09:30, on weekdays (Monday through Friday) (Europe/Berlin time)"),
        ("* * * * * ?", "", "every second, every day (UTC)"),
        ("*/15 * * * * ?", "", "every 15 seconds, every day (UTC)"),
        ("0 * * * * ?", "", "at second 0 of every minute, every day (UTC)"),
        ("0 10-40/10 8-17 * * ?", "", "at second 0 of minutes 10, 20, 30 and 40 of hours 8 through 17, every day (UTC)"),
        ("0 0 12 L * ?", "", "at 12:00, on the last day of the month (UTC)"),
        ("0 0 12 15W,LW * ?", "", "at 12:00, on the weekday nearest the 15th or the last weekday of the month (UTC)"),
        ("0 0 12 ? * 6#3", "", "at 12:00, on the third Friday of the month (UTC)"),
        ("0 0 12 ? * 5L", "", "at 12:00, on the last Thursday of the month (UTC)"),
        ("0 0 1,15 JAN-MAR MON", "", "at 00:00, on the 1st and the 15th of the month or on Monday, in January through March (UTC)"),
        ("0 0 0 29 2 ? 2028", "", "at 00:00, on the 29th of the month, in February, in 2028 (UTC)"),
        ("15 5 4 * * ?", "", "at 04:05:15, every day (UTC)"),
        ("0 5/15 * * * ?", "", "at second 0 of every 15 minutes from 5 through 50 of every hour, every day (UTC)"),
        ("0 0 */2 * * ?", "", "at second 0 of minute 0 of every 2 hours, every day (UTC)"),
        ("0 0 0 */2 * ?", "", "at 00:00, on every 2nd day of the month from the 1st through the 31st (UTC)"),
    ];
    for (expr, tz, want) in cases {
        assert_eq!(schedule(expr, tz).explain(), want, "{expr}");
    }
}

// ---- daylight saving -------------------------------------------------------

#[test]
fn berlin_spring_forward_fires_once_at_the_end_of_the_gap() {
    // 2024-03-31: 02:00 CET becomes 03:00 CEST.
    assert_eq!(
        next_n("0 30 2 * * ?", "Europe/Berlin", "2024-03-30T12:00:00Z", 2),
        ["2024-03-31T03:00:00+02:00", "2024-04-01T02:30:00+02:00"]
    );
    // Every quarter hour: 02:00-02:45 do not exist and collapse with 03:00.
    assert_eq!(
        next_n("0 */15 * * * ?", "Europe/Berlin", "2024-03-31T00:40:00Z", 3),
        [
            "2024-03-31T01:45:00+01:00",
            "2024-03-31T03:00:00+02:00",
            "2024-03-31T03:15:00+02:00"
        ]
    );
}

#[test]
fn berlin_fall_back_fires_once_at_the_first_occurrence() {
    // 2024-10-27: 03:00 CEST becomes 02:00 CET; 02:00-02:59 happens twice.
    assert_eq!(
        next_n("0 30 2 * * ?", "Europe/Berlin", "2024-10-26T12:00:00Z", 2),
        ["2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"]
    );
    assert_eq!(
        next_n("0 */20 * * * ?", "Europe/Berlin", "2024-10-26T23:30:00Z", 6),
        [
            "2024-10-27T01:40:00+02:00",
            "2024-10-27T02:00:00+02:00",
            "2024-10-27T02:20:00+02:00",
            "2024-10-27T02:40:00+02:00",
            "2024-10-27T03:00:00+01:00",
            "2024-10-27T03:20:00+01:00"
        ]
    );
    // Asked from inside the repeated hour, the answer is after it.
    assert_eq!(
        next1("0 */20 * * * ?", "Europe/Berlin", "2024-10-27T01:05:00Z"),
        "2024-10-27T03:00:00+01:00"
    );
}

#[test]
fn new_york_gap_and_overlap() {
    // 2024-03-10: 02:00 EST becomes 03:00 EDT.
    assert_eq!(
        next_n(
            "0 30 2 * * ?",
            "America/New_York",
            "2024-03-09T12:00:00Z",
            2
        ),
        ["2024-03-10T03:00:00-04:00", "2024-03-11T02:30:00-04:00"]
    );
    // 2024-11-03: 02:00 EDT becomes 01:00 EST; 01:00-01:59 happens twice.
    assert_eq!(
        next_n(
            "0 30 1 * * ?",
            "America/New_York",
            "2024-11-02T12:00:00Z",
            2
        ),
        ["2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"]
    );
    // Crontab form, same rules.
    assert_eq!(
        next1("30 2 * * *", "America/New_York", "2024-03-09T12:00:00Z"),
        "2024-03-10T03:00:00-04:00"
    );
}

#[test]
fn sydney_gap_and_overlap() {
    // 2024-10-06: 02:00 AEST becomes 03:00 AEDT.
    assert_eq!(
        next_n(
            "0 30 2 * * ?",
            "Australia/Sydney",
            "2024-10-05T00:00:00Z",
            2
        ),
        ["2024-10-06T03:00:00+11:00", "2024-10-07T02:30:00+11:00"]
    );
    // 2024-04-07: 03:00 AEDT becomes 02:00 AEST.
    assert_eq!(
        next_n(
            "0 30 2 * * ?",
            "Australia/Sydney",
            "2024-04-06T00:00:00Z",
            2
        ),
        ["2024-04-07T02:30:00+11:00", "2024-04-08T02:30:00+10:00"]
    );
}

#[test]
fn lord_howe_half_hour_shift() {
    // 2024-10-06: 02:00 +10:30 becomes 02:30 +11:00.
    assert_eq!(
        next_n(
            "0 15 2 * * ?",
            "Australia/Lord_Howe",
            "2024-10-05T00:00:00Z",
            2
        ),
        ["2024-10-06T02:30:00+11:00", "2024-10-07T02:15:00+11:00"]
    );
}

// ---- property tests --------------------------------------------------------

/// One list item as the generator builds it; evaluated by [`Item::matches`]
/// without the engine's parser or sets.
#[derive(Clone, Debug)]
enum Item {
    All,
    Value(u32),
    Range(u32, u32),
    /// `*/s`, `a/s` or `a-b/s`.
    Step(Option<(u32, Option<u32>)>, u32),
    /// Day-of-month `L-n` (`L` for 0).
    Last(u32),
    /// Day-of-month `nW`.
    NearestWeekday(u32),
    /// Day-of-month `LW`.
    LastWeekday,
    /// Day-of-week `nL`.
    LastOf(u32),
    /// Day-of-week `n#k`.
    Nth(u32, u32),
}

impl Item {
    fn render(&self) -> String {
        match *self {
            Item::All => "*".into(),
            Item::Value(v) => v.to_string(),
            Item::Range(a, b) => format!("{a}-{b}"),
            Item::Step(None, s) => format!("*/{s}"),
            Item::Step(Some((a, None)), s) => format!("{a}/{s}"),
            Item::Step(Some((a, Some(b))), s) => format!("{a}-{b}/{s}"),
            Item::Last(0) => "L".into(),
            Item::Last(n) => format!("L-{n}"),
            Item::NearestWeekday(n) => format!("{n}W"),
            Item::LastWeekday => "LW".into(),
            Item::LastOf(d) => format!("{d}L"),
            Item::Nth(d, k) => format!("{d}#{k}"),
        }
    }

    /// Whether value `v` of a field ranging `lo..=hi` matches a plain item.
    fn matches_value(&self, v: u32, lo: u32, hi: u32) -> bool {
        let n = hi - lo + 1;
        let in_wrapping = |a: u32, b: u32, step: u32| {
            let offset = (v + n - a) % n;
            let span = (b + n - a) % n;
            offset <= span && offset.is_multiple_of(step)
        };
        match *self {
            Item::All => true,
            Item::Value(a) => v == a,
            Item::Range(a, b) => in_wrapping(a, b, 1),
            Item::Step(None, s) => (v - lo).is_multiple_of(s),
            Item::Step(Some((a, None)), s) => v >= a && (v - a).is_multiple_of(s),
            Item::Step(Some((a, Some(b))), s) => in_wrapping(a, b, s),
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
struct Expr {
    crontab: bool,
    seconds: Vec<Item>,
    minutes: Vec<Item>,
    hours: Vec<Item>,
    /// Empty: unrestricted (`?` or `*`).
    dom: Vec<Item>,
    months: Vec<Item>,
    dow: Vec<Item>,
    years: Option<Vec<Item>>,
    /// Quartz: which unrestricted day field gets `?`.
    question_in_dom: bool,
}

fn render_list(items: &[Item]) -> String {
    items.iter().map(Item::render).collect::<Vec<_>>().join(",")
}

impl Expr {
    fn render(&self) -> String {
        let day = |items: &[Item], question: bool| {
            if items.is_empty() {
                if question && !self.crontab { "?" } else { "*" }.to_string()
            } else {
                render_list(items)
            }
        };
        let dom = day(&self.dom, self.question_in_dom);
        let dow = day(&self.dow, !self.question_in_dom || !self.dom.is_empty());
        let dom = if self.dom.is_empty() && !self.dow.is_empty() && !self.crontab {
            "?".to_string()
        } else {
            dom
        };
        let mut fields = vec![];
        if !self.crontab {
            fields.push(render_list(&self.seconds));
        }
        fields.extend([
            render_list(&self.minutes),
            render_list(&self.hours),
            dom,
            render_list(&self.months),
            dow,
        ]);
        if let Some(years) = &self.years {
            fields.push(render_list(years));
        }
        fields.join(" ")
    }

    fn any(items: &[Item], v: u32, lo: u32, hi: u32) -> bool {
        items.iter().any(|i| i.matches_value(v, lo, hi))
    }

    fn time_matches(&self, t: NaiveDateTime) -> bool {
        let second_ok = if self.crontab {
            t.second() == 0
        } else {
            Self::any(&self.seconds, t.second(), 0, 59)
        };
        second_ok
            && Self::any(&self.minutes, t.minute(), 0, 59)
            && Self::any(&self.hours, t.hour(), 0, 23)
    }

    fn day_matches(&self, date: chrono::NaiveDate) -> bool {
        let (day, month, year) = (date.day(), date.month(), date.year());
        let dim = spec::days_in_month(year, month);
        let weekday = |d: u32| date.with_day(d).unwrap().weekday().num_days_from_sunday();
        let is_workday = |d: u32| (1..=5).contains(&weekday(d));
        let wd = date.weekday().num_days_from_sunday();
        let dom_ok = self.dom.iter().any(|item| match *item {
            Item::Last(n) => dim > n && day == dim - n,
            Item::NearestWeekday(n) => {
                n <= dim
                    && (1..=dim)
                        .filter(|&d| is_workday(d))
                        .min_by_key(|&d| d.abs_diff(n))
                        == Some(day)
            }
            Item::LastWeekday => (1..=dim).filter(|&d| is_workday(d)).max() == Some(day),
            ref plain => plain.matches_value(day, 1, 31),
        });
        // Day-of-week items in the user's numbering.
        let (dow_lo, dow_hi) = if self.crontab { (0, 7) } else { (1, 7) };
        let user_days: Vec<u32> = if self.crontab {
            if wd == 0 {
                vec![0, 7]
            } else {
                vec![wd]
            }
        } else {
            vec![wd + 1]
        };
        let to_internal = |d: u32| if self.crontab { d % 7 } else { d - 1 };
        let dow_ok = self.dow.iter().any(|item| match *item {
            Item::LastOf(d) => to_internal(d) == wd && day + 7 > dim,
            Item::Nth(d, k) => to_internal(d) == wd && (day - 1) / 7 + 1 == k,
            ref plain => user_days
                .iter()
                .any(|&u| plain.matches_value(u, dow_lo, dow_hi)),
        });
        let dom_star = self.dom.is_empty() || matches!(self.dom[..], [Item::All]);
        let dow_star = self.dow.is_empty() || matches!(self.dow[..], [Item::All]);
        let days_ok = match (dom_star, dow_star) {
            (true, true) => true,
            (false, true) => dom_ok,
            (true, false) => dow_ok,
            (false, false) if self.crontab => {
                let starts_with_star =
                    |items: &[Item]| matches!(items.first(), Some(Item::All | Item::Step(None, _)));
                if starts_with_star(&self.dom) || starts_with_star(&self.dow) {
                    dom_ok && dow_ok
                } else {
                    dom_ok || dow_ok
                }
            }
            (false, false) => unreachable!("the generator restricts one day field in Quartz"),
        };
        let year_ok = match &self.years {
            None => (1970..=2399).contains(&year),
            Some(items) => Self::any(items, year as u32, 1970, 2399),
        };
        days_ok && Self::any(&self.months, month, 1, 12) && year_ok
    }

    fn matches(&self, t: NaiveDateTime) -> bool {
        self.day_matches(t.date()) && self.time_matches(t)
    }
}

/// The next fire time by brute force over days, from the rules in the
/// module docs: the first matching local time after the instant's local
/// time whose instant (first occurrence; end of the gap for a missing one)
/// is after the instant. `None` if nothing within `horizon_days`.
fn oracle(expr: &Expr, zone: Tz, after: DateTime<Utc>, horizon_days: i64) -> Option<DateTime<Utc>> {
    let local_after = after.with_timezone(&zone).naive_local();
    let values =
        |hi: u32, ok: &dyn Fn(u32) -> bool| (0..=hi).filter(|&v| ok(v)).collect::<Vec<_>>();
    let seconds = if expr.crontab {
        vec![0]
    } else {
        values(59, &|v| Expr::any(&expr.seconds, v, 0, 59))
    };
    let minutes = values(59, &|v| Expr::any(&expr.minutes, v, 0, 59));
    let hours = values(23, &|v| Expr::any(&expr.hours, v, 0, 23));
    let resolve = |t: NaiveDateTime| -> DateTime<Utc> {
        let mut probe = t;
        loop {
            if let Some(first) = zone.from_local_datetime(&probe).earliest() {
                return first.with_timezone(&Utc);
            }
            probe += Duration::seconds(1);
        }
    };
    let mut date = local_after.date();
    for _ in 0..horizon_days {
        if expr.day_matches(date) {
            for &h in &hours {
                if date.and_hms_opt(h, 59, 59).unwrap() <= local_after {
                    continue;
                }
                for &m in &minutes {
                    if date.and_hms_opt(h, m, 59).unwrap() <= local_after {
                        continue;
                    }
                    for &s in &seconds {
                        let t = date.and_hms_opt(h, m, s).unwrap();
                        if t <= local_after {
                            continue;
                        }
                        let fires = resolve(t);
                        if fires > after {
                            return Some(fires);
                        }
                    }
                }
            }
        }
        date = date.succ_opt()?;
    }
    None
}

/// A plain item over `lo..=hi`; wrapping ranges only if `wrap`.
fn plain_item(lo: u32, hi: u32, wrap: bool) -> BoxedStrategy<Item> {
    let value = lo..=hi;
    let max_step = hi - lo;
    prop_oneof![
        3 => value.clone().prop_map(Item::Value),
        2 => (value.clone(), value.clone())
            .prop_filter("ordered unless wrapping", move |(a, b)| wrap || a <= b)
            .prop_map(|(a, b)| Item::Range(a, b)),
        1 => (1..=max_step).prop_map(|s| Item::Step(None, s)),
        1 => (value.clone(), 1..=max_step).prop_map(|(a, s)| Item::Step(Some((a, None)), s)),
        1 => (value.clone(), value, 1..=max_step)
            .prop_filter("ordered unless wrapping", move |(a, b, _)| wrap || a <= b)
            .prop_map(|(a, b, s)| Item::Step(Some((a, Some(b))), s)),
    ]
    .boxed()
}

/// A field: `*` or a list of one to three items.
fn field(lo: u32, hi: u32, wrap: bool) -> BoxedStrategy<Vec<Item>> {
    prop_oneof![
        1 => Just(vec![Item::All]),
        4 => prop::collection::vec(plain_item(lo, hi, wrap), 1..=3),
    ]
    .boxed()
}

fn dom_field(specials: bool) -> BoxedStrategy<Vec<Item>> {
    if !specials {
        return prop::collection::vec(plain_item(1, 31, false), 1..=3).boxed();
    }
    let item = prop_oneof![
        4 => plain_item(1, 31, true),
        1 => (0u32..=5).prop_map(Item::Last),
        1 => (1u32..=31).prop_map(Item::NearestWeekday),
        1 => Just(Item::LastWeekday),
    ];
    prop::collection::vec(item, 1..=3).boxed()
}

fn dow_field(crontab: bool, specials: bool) -> BoxedStrategy<Vec<Item>> {
    let (lo, hi) = if crontab { (0, 7) } else { (1, 7) };
    if !specials {
        return prop::collection::vec(plain_item(lo, hi, false), 1..=3).boxed();
    }
    let item = prop_oneof![
        4 => plain_item(lo, hi, true),
        1 => (lo..=hi).prop_map(Item::LastOf),
        1 => (lo..=hi, 1u32..=5).prop_map(|(d, k)| Item::Nth(d, k)),
    ];
    prop::collection::vec(item, 1..=3).boxed()
}

/// Any expression the engine accepts; `specials` adds L, W, # and
/// wrapping ranges.
fn expression(specials: bool, crontab_allowed: bool) -> impl Strategy<Value = Expr> {
    let years = prop_oneof![
        3 => Just(None),
        1 => prop::collection::vec(plain_item(2000, 2090, false), 1..=2).prop_map(Some),
    ];
    (
        any::<bool>(),
        field(0, 59, specials),
        field(0, 59, specials),
        field(0, 23, specials),
        field(1, 12, specials),
        years,
        0..3u8,
        any::<bool>(),
        dom_field(specials),
    )
        .prop_flat_map(
            move |(crontab, seconds, minutes, hours, months, years, days, question, dom)| {
                let crontab = crontab && crontab_allowed;
                let dow = dow_field(crontab, specials);
                (
                    Just((
                        crontab, seconds, minutes, hours, months, years, days, question, dom,
                    )),
                    dow,
                )
            },
        )
        .prop_map(
            |((crontab, seconds, minutes, hours, months, years, days, question, dom), dow)| {
                // days: 0 = neither restricts, 1 = day-of-month, 2 = day-of-week;
                // crontab may restrict both (then they OR).
                let (dom, dow) = match days {
                    0 => (vec![], vec![]),
                    1 if crontab => (dom, dow),
                    1 => (dom, vec![]),
                    _ => (vec![], dow),
                };
                Expr {
                    crontab,
                    seconds,
                    minutes,
                    hours,
                    dom,
                    months,
                    dow,
                    years: if crontab { None } else { years },
                    question_in_dom: question,
                }
            },
        )
}

fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    // 2000-01-01 .. 2060-01-01, with milliseconds now and then.
    (
        946_684_800i64..2_840_140_800i64,
        prop_oneof![3 => Just(0i64), 1 => 0i64..1000],
    )
        .prop_map(|(s, ms)| DateTime::from_timestamp_millis(s * 1000 + ms).unwrap())
}

static ZONES: [Tz; 6] = [
    Tz::UTC,
    chrono_tz::Europe::Berlin,
    chrono_tz::America::New_York,
    chrono_tz::Australia::Sydney,
    chrono_tz::Australia::Lord_Howe,
    chrono_tz::Asia::Kolkata,
];

/// Whether the engine may fire at `t`: the local time matches, or `t` ends
/// a gap that holds a matching local time.
fn fires_legitimately(expr: &Expr, zone: Tz, t: DateTime<Utc>) -> bool {
    let local = t.with_timezone(&zone).naive_local();
    if expr.matches(local) {
        return true;
    }
    let before = (t - Duration::seconds(1))
        .with_timezone(&zone)
        .naive_local();
    let mut gap = before + Duration::seconds(1);
    while gap < local {
        if expr.matches(gap) {
            return true;
        }
        gap += Duration::seconds(1);
    }
    false
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Every time matches, times strictly increase, and each is the one the
    /// brute-force oracle finds: nothing is skipped.
    #[test]
    fn next_times_match_increase_and_agree_with_brute_force(
        expr in expression(true, true),
        zone in prop::sample::select(&ZONES[..]),
        start in instant(),
    ) {
        let text = expr.render();
        let schedule = CronSchedule::parse(&text, zone.name())
            .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let horizon_days = 3 * 366;
        let mut after = start;
        for _ in 0..3 {
            let got = schedule.next_after(after);
            let want = oracle(&expr, zone, after, horizon_days);
            match (got, want) {
                (Some(got), Some(want)) => prop_assert_eq!(got, want, "{} in {} after {}", text, zone, after),
                (got, None) => {
                    // Nothing within the horizon: the engine may only find later times.
                    if let Some(got) = got {
                        prop_assert!(got > after + Duration::days(horizon_days - 2), "{} after {}: {}", text, after, got);
                    }
                    break;
                }
                (None, Some(want)) => prop_assert!(false, "{} after {}: engine none, oracle {}", text, after, want),
            }
            let got = got.unwrap();
            prop_assert!(got > after);
            prop_assert!(fires_legitimately(&expr, zone, got), "{} fired at {}", text, got);
            after = got;
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// In UTC the `cron` crate must agree, on the syntax both speak.
    #[test]
    fn agrees_with_the_cron_crate_in_utc(
        expr in expression(false, false),
        start in instant(),
    ) {
        let text = expr.render();
        let ours = CronSchedule::parse(&text, "")
            .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let theirs = cron::Schedule::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("cron crate refused {text}: {e}")))?;
        // The crate stops at 2100.
        let end = utc("2100-01-01T00:00:00Z");
        let got: Vec<_> = ours.upcoming(start).take_while(|t| *t < end).take(5).collect();
        let want: Vec<_> = theirs.after(&start).take_while(|t| *t < end).take(5).collect();
        prop_assert_eq!(got, want, "{}", text);
    }
}

/// The offset changes of `zone` in `year`, found by stepping days and
/// bisecting to the second.
fn transitions(zone: Tz, year: i32) -> Vec<DateTime<Utc>> {
    use chrono::Offset;
    let offset = |t: DateTime<Utc>| t.with_timezone(&zone).offset().fix();
    let mut found = Vec::new();
    let mut day = Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0).unwrap();
    while day.year() == year {
        let next = day + Duration::days(1);
        if offset(day) != offset(next) {
            let (mut lo, mut hi) = (day, next);
            while hi - lo > Duration::seconds(1) {
                let mid = lo + (hi - lo) / 2;
                if offset(mid) == offset(lo) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            found.push(hi);
        }
        day = next;
    }
    found
}

/// Expressions that fire often within an hour or two, so that they hit
/// the gap and the overlap.
fn dense_expression() -> impl Strategy<Value = Expr> {
    let pick = |options: Vec<Vec<Item>>| prop::sample::select(options);
    (
        pick(vec![
            vec![Item::Value(0)],
            vec![Item::Step(None, 30)],
            vec![Item::Step(Some((10, None)), 20)],
        ]),
        pick(vec![
            vec![Item::All],
            vec![Item::Step(None, 5)],
            vec![Item::Step(None, 15)],
            vec![Item::Value(30)],
            vec![Item::Value(0), Item::Value(45)],
            vec![Item::Step(Some((7, None)), 13)],
        ]),
        pick(vec![
            vec![Item::All],
            vec![Item::Range(1, 3)],
            vec![Item::Value(2)],
            vec![Item::Step(None, 2)],
            vec![Item::Range(0, 4), Item::Value(23)],
        ]),
        any::<bool>(),
    )
        .prop_map(|(seconds, minutes, hours, crontab)| Expr {
            crontab,
            seconds,
            minutes,
            hours,
            dom: vec![],
            months: vec![Item::All],
            dow: vec![],
            years: None,
            question_in_dom: true,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    /// Around real offset changes, fire times follow the gap and overlap
    /// rules exactly as the brute-force oracle applies them.
    #[test]
    fn agrees_with_brute_force_around_offset_changes(
        expr in dense_expression(),
        zone in prop::sample::select(&ZONES[1..5]),
        year in 2000i32..2060,
        which in any::<prop::sample::Index>(),
        delta in -3 * 3600i64..3 * 3600,
    ) {
        let changes = transitions(zone, year);
        prop_assert!(!changes.is_empty(), "{} has no offset change in {}", zone, year);
        let start = *which.get(&changes) + Duration::seconds(delta);
        let text = expr.render();
        let schedule = CronSchedule::parse(&text, zone.name())
            .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let mut after = start;
        for _ in 0..8 {
            let got = schedule.next_after(after);
            prop_assert_eq!(got, oracle(&expr, zone, after, 3), "{} in {} after {}", text, zone, after);
            let got = got.unwrap();
            prop_assert!(fires_legitimately(&expr, zone, got), "{} fired at {}", text, got);
            after = got;
        }
    }
}

// ---- hostile text ------------------------------------------------------

/// Text that is mostly near the grammar: fields built from the tokens the
/// parser knows (numbers of any size, names, `*`, `?`, `L`, `W`, `#`, `/`,
/// `-`, `,`) glued in any order, with now and then a stray character.
fn cron_soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        4 => (0u64..100).prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => "[0-9]{20,30}",
        2 => prop::sample::select(vec![
            "*", "?", "L", "W", "#", "/", "-", ",", "LW", "L-", "JAN", "dec", "MON", "sun",
            "@daily", "@hourly", "@yearly", "@", "1970", "2399", "2400", "-1", "+1",
        ])
        .prop_map(str::to_string),
        1 => "\\PC{1,3}",
    ];
    let field = prop::collection::vec(token, 1..6).prop_map(|t| t.concat());
    let separator = prop_oneof![8 => Just(" "), 1 => Just("  "), 1 => Just("\t")];
    prop::collection::vec((field, separator), 0..9).prop_map(|fields| {
        fields
            .into_iter()
            .map(|(f, s)| format!("{f}{s}"))
            .collect::<String>()
    })
}

/// Time zones: valid names, near misses and arbitrary text.
fn zone_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["", "UTC", "Europe/Berlin", "Australia/Lord_Howe", "Pacific/Apia"])
            .prop_map(str::to_string),
        1 => prop::sample::select(vec!["utc", "Europe/", "../etc/passwd", "Mars/Olympus", " UTC"])
            .prop_map(str::to_string),
        1 => "\\PC{0,40}",
    ]
}

/// Fire-time lookups on a parsed schedule from extreme and ordinary
/// instants, each answered (or `None`) without a panic; what is found is
/// after the start and fires again later or ends.
fn lookups_terminate(schedule: &CronSchedule) -> Result<(), TestCaseError> {
    for ms in [
        i64::MIN,
        -62_135_596_800_000, // year 1
        -1,
        0,
        1_704_067_200_000,
        13_569_465_600_000,  // 2400
        253_402_300_799_999, // 9999
        i64::MAX,
    ] {
        if let Some(next) = schedule.next_after_ms(ms) {
            prop_assert!(
                next > ms,
                "{} after {}: {}",
                schedule.expression(),
                ms,
                next
            );
        }
    }
    let start = utc("2024-01-01T00:00:00Z");
    let mut last = start;
    for t in schedule.upcoming(start).take(5) {
        prop_assert!(t > last, "{}: {} then {}", schedule.expression(), last, t);
        last = t;
    }
    Ok(())
}

/// What a refusal says: a field error names the field by its position
/// within the expression and quotes text that is in it.
fn error_names_what_is_wrong(text: &str, zone: &str, e: &CronError) -> Result<(), TestCaseError> {
    let fields = text.split_whitespace().count();
    let message = e.to_string();
    prop_assert!(!message.is_empty());
    match e {
        CronError::Empty => prop_assert_eq!(fields, 0, "{:?}", text),
        CronError::FieldCount { found, expression } => {
            prop_assert_eq!(*found, fields, "{:?}", text);
            prop_assert!(!(5..=7).contains(found), "{:?}: {}", text, message);
            prop_assert!(text.contains(expression.trim()), "{:?}: {}", text, message);
        }
        CronError::UnknownMacro(name) => {
            prop_assert!(
                name.starts_with('@') && text.contains(name.as_str()),
                "{:?}: {}",
                text,
                message
            )
        }
        CronError::Field {
            position,
            name,
            field,
            problem,
        } => {
            prop_assert!((1..=fields).contains(position), "{:?}: {}", text, message);
            prop_assert!(
                !name.is_empty() && !problem.is_empty(),
                "{:?}: {}",
                text,
                message
            );
            prop_assert_eq!(
                text.split_whitespace().nth(position - 1),
                Some(field.as_str()),
                "{:?}: {}",
                text,
                message
            );
        }
        CronError::DayFields {
            dom_position,
            dow_position,
            problem,
        } => {
            prop_assert!(
                *dom_position <= fields && *dow_position <= fields,
                "{:?}: {}",
                text,
                message
            );
            prop_assert!(!problem.is_empty());
        }
        // The zone is named as given, less surrounding white space.
        CronError::UnknownTimeZone(z) => prop_assert_eq!(z.as_str(), zone.trim()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any text near the grammar, in any zone, parses or is refused with
    /// an error naming the field; a schedule that parses answers every
    /// fire-time lookup, including from the ends of time.
    #[test]
    fn near_grammar_text_parses_or_names_the_field(text in cron_soup(), zone in zone_text()) {
        match CronSchedule::parse(&text, &zone) {
            Ok(schedule) => {
                lookups_terminate(&schedule)?;
                prop_assert!(!schedule.explain().is_empty());
            }
            Err(e) => error_names_what_is_wrong(&text, &zone, &e)?,
        }
    }

    /// Arbitrary printable text, long or short, never panics the parser.
    #[test]
    fn arbitrary_text_parses_or_is_refused(text in "\\PC{0,200}", zone in zone_text()) {
        match CronSchedule::parse(&text, &zone) {
            Ok(schedule) => lookups_terminate(&schedule)?,
            Err(e) => error_names_what_is_wrong(&text, &zone, &e)?,
        }
    }
}
