//! Why an expression or a time zone was refused.

/// A cron expression or time zone that [`super::CronSchedule::parse`]
/// refused.
///
/// The `Display` text is written for people: it names the field by position
/// and name as the user wrote the expression, says what is wrong, and quotes
/// the field, so a CLI can print it as is, e.g.
/// ``field 3 (hour): 25 is outside 0-23 (in `1,25`)``.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// The expression is empty or only white space.
    #[error("empty cron expression: expected 5 fields (crontab), 6 or 7 (Quartz with seconds), or a macro such as @daily")]
    Empty,
    /// The expression has the wrong number of fields.
    #[error("expected 5 fields (crontab: minute hour day-of-month month day-of-week) or 6-7 (Quartz: second minute hour day-of-month month day-of-week [year]), found {found} in `{expression}`")]
    FieldCount {
        /// How many fields the expression has.
        found: usize,
        /// The expression as given.
        expression: String,
    },
    /// An `@` macro that is not known.
    #[error("unknown macro `{0}`: known are @yearly, @annually, @monthly, @weekly, @daily, @midnight and @hourly")]
    UnknownMacro(String),
    /// One field is malformed or out of range.
    #[error("field {position} ({name}): {problem} (in `{field}`)")]
    Field {
        /// 1-based position of the field as the user wrote the expression.
        position: usize,
        /// The field's name: `second`, `minute`, `hour`, `day-of-month`,
        /// `month`, `day-of-week` or `year`.
        name: &'static str,
        /// The whole field as written.
        field: String,
        /// What is wrong, naming the offending token.
        problem: String,
    },
    /// Day-of-month and day-of-week do not combine under the dialect's rule.
    #[error("fields {dom_position} (day-of-month) and {dow_position} (day-of-week): {problem}")]
    DayFields {
        /// Position of the day-of-month field.
        dom_position: usize,
        /// Position of the day-of-week field.
        dow_position: usize,
        /// What is wrong.
        problem: String,
    },
    /// The time zone is not an IANA zone name that chrono-tz knows.
    #[error("unknown time zone `{0}`: expected an IANA name such as `Europe/Berlin` or `UTC`, or empty for UTC")]
    UnknownTimeZone(String),
}
