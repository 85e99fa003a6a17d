//! Conversions between wire messages and the domain model.
//!
//! `TryFrom<proto>` validates: a missing or bad field becomes a
//! [`ValidationError`] naming it. `From<domain>` builds wire messages.

use lts_proto::v1 as pb;

use crate::limits::*;
use crate::model::*;

/// A field of a message is missing or wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Path of the field, e.g. `jobs[3].task_id`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ValidationError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<ValidationError> for tonic::Status {
    fn from(e: ValidationError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

fn check(field: &str, r: Result<(), String>) -> Result<(), ValidationError> {
    r.map_err(|m| ValidationError::new(field, m))
}

fn check_delay(field: &str, ms: u64) -> Result<u64, ValidationError> {
    if ms > MAX_DELAY_MS {
        return Err(ValidationError::new(
            field,
            format!("{ms} ms is longer than the limit of {MAX_DELAY_MS} ms (365 days)"),
        ));
    }
    Ok(ms)
}

impl TryFrom<pb::JobSpec> for JobSpec {
    type Error = ValidationError;

    fn try_from(p: pb::JobSpec) -> Result<Self, ValidationError> {
        check("task_id", check_task_id(&p.task_id))?;
        check(
            "task_tracker_node_group",
            check_node_group(&p.task_tracker_node_group),
        )?;
        if !p.submit_node_group.is_empty() || p.need_feedback {
            check("submit_node_group", check_node_group(&p.submit_node_group))?;
        }
        if p.params.len() > MAX_PARAMS {
            return Err(ValidationError::new(
                "params",
                format!("has {} entries, the limit is {MAX_PARAMS}", p.params.len()),
            ));
        }
        let params_bytes: usize = p.params.iter().map(|(k, v)| k.len() + v.len()).sum();
        if params_bytes > MAX_PARAMS_BYTES {
            return Err(ValidationError::new(
                "params",
                format!("holds {params_bytes} bytes, the limit is {MAX_PARAMS_BYTES}"),
            ));
        }
        if p.params.keys().any(|k| k.is_empty()) {
            return Err(ValidationError::new("params", "has an empty key"));
        }
        if p.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(ValidationError::new(
                "payload",
                format!(
                    "is {} bytes, the limit is {MAX_PAYLOAD_BYTES}",
                    p.payload.len()
                ),
            ));
        }
        if p.timeout_ms > MAX_TIMEOUT_MS {
            return Err(ValidationError::new(
                "timeout_ms",
                format!(
                    "{} ms is longer than the limit of {MAX_TIMEOUT_MS} ms (7 days)",
                    p.timeout_ms
                ),
            ));
        }
        let schedule = match p.schedule.and_then(|s| s.kind) {
            None | Some(pb::schedule::Kind::Now(_)) => Schedule::Now,
            Some(pb::schedule::Kind::At(at)) => {
                if at.at_unix_ms < 0 {
                    return Err(ValidationError::new(
                        "schedule.at.at_unix_ms",
                        "is before 1970",
                    ));
                }
                Schedule::At(at.at_unix_ms)
            }
            Some(pb::schedule::Kind::Cron(c)) => {
                if c.expression.trim().is_empty() {
                    return Err(ValidationError::new("schedule.cron.expression", "is empty"));
                }
                Schedule::Cron {
                    expression: c.expression,
                    time_zone: c.time_zone,
                    misfire: match pb::MisfirePolicy::try_from(c.misfire) {
                        Ok(pb::MisfirePolicy::Unspecified) | Ok(pb::MisfirePolicy::FireOnce) => {
                            MisfirePolicy::FireOnce
                        }
                        Ok(pb::MisfirePolicy::Skip) => MisfirePolicy::Skip,
                        Ok(pb::MisfirePolicy::FireAll) => MisfirePolicy::FireAll,
                        Err(_) => {
                            return Err(ValidationError::new(
                                "schedule.cron.misfire",
                                format!("{} is not a misfire policy", c.misfire),
                            ))
                        }
                    },
                }
            }
            Some(pb::schedule::Kind::Repeat(r)) => {
                if r.interval_ms == 0 {
                    return Err(ValidationError::new(
                        "schedule.repeat.interval_ms",
                        "must be at least 1",
                    ));
                }
                Schedule::Repeat {
                    interval_ms: check_delay("schedule.repeat.interval_ms", r.interval_ms)?,
                    count: r.count,
                }
            }
        };
        let retry_plan = p.retry_plan.map(RetryPlan::try_from).transpose()?;
        Ok(JobSpec {
            task_id: p.task_id,
            task_tracker_node_group: p.task_tracker_node_group,
            submit_node_group: p.submit_node_group,
            priority: p.priority.unwrap_or(DEFAULT_PRIORITY),
            params: p.params.into_iter().collect(),
            payload: p.payload,
            schedule,
            need_feedback: p.need_feedback,
            replace_on_exist: p.replace_on_exist,
            rely_on_prev_cycle: p.rely_on_prev_cycle,
            retry_plan,
            timeout_ms: p.timeout_ms,
        })
    }
}

impl TryFrom<pb::RetryPlan> for RetryPlan {
    type Error = ValidationError;

    fn try_from(p: pb::RetryPlan) -> Result<Self, ValidationError> {
        if p.steps.is_empty() {
            return Err(ValidationError::new("retry_plan.steps", "is empty"));
        }
        if p.steps.len() > MAX_RETRY_STEPS {
            return Err(ValidationError::new(
                "retry_plan.steps",
                format!(
                    "has {} steps, the limit is {MAX_RETRY_STEPS}",
                    p.steps.len()
                ),
            ));
        }
        let mut steps = Vec::with_capacity(p.steps.len());
        for (i, step) in p.steps.into_iter().enumerate() {
            let field = format!("retry_plan.steps[{i}]");
            use pb::retry_step::Step;
            steps.push(match step.step {
                None => return Err(ValidationError::new(field, "names no step")),
                Some(Step::Retry(_)) => RetryStep::Retry,
                Some(Step::RetryAfter(r)) => {
                    RetryStep::RetryAfter(check_delay(&field, r.delay_ms)?)
                }
                Some(Step::Backoff(b)) => {
                    if !(b.factor.is_finite() && b.factor >= 1.0) {
                        return Err(ValidationError::new(
                            format!("{field}.factor"),
                            format!("{} must be a number of at least 1", b.factor),
                        ));
                    }
                    if b.max_ms < b.base_ms {
                        return Err(ValidationError::new(
                            format!("{field}.max_ms"),
                            "is smaller than base_ms",
                        ));
                    }
                    RetryStep::Backoff {
                        base_ms: b.base_ms,
                        factor: b.factor,
                        max_ms: check_delay(&field, b.max_ms)?,
                    }
                }
                Some(Step::Suspend(_)) => RetryStep::Suspend,
                Some(Step::GiveUp(_)) => RetryStep::GiveUp,
            });
        }
        if !p.forever && p.count == 0 {
            return Err(ValidationError::new(
                "retry_plan.count",
                "is 0; say at least 1, or set forever",
            ));
        }
        Ok(RetryPlan {
            steps,
            count: p.count,
            forever: p.forever,
        })
    }
}

impl From<RetryPlan> for pb::RetryPlan {
    fn from(p: RetryPlan) -> Self {
        use pb::retry_step::Step;
        pb::RetryPlan {
            steps: p
                .steps
                .into_iter()
                .map(|s| pb::RetryStep {
                    step: Some(match s {
                        RetryStep::Retry => Step::Retry(pb::Retry {}),
                        RetryStep::RetryAfter(ms) => {
                            Step::RetryAfter(pb::RetryAfter { delay_ms: ms })
                        }
                        RetryStep::Backoff {
                            base_ms,
                            factor,
                            max_ms,
                        } => Step::Backoff(pb::Backoff {
                            base_ms,
                            factor,
                            max_ms,
                        }),
                        RetryStep::Suspend => Step::Suspend(pb::Suspend {}),
                        RetryStep::GiveUp => Step::GiveUp(pb::GiveUp {}),
                    }),
                })
                .collect(),
            count: p.count,
            forever: p.forever,
        }
    }
}

impl From<Schedule> for pb::Schedule {
    fn from(s: Schedule) -> Self {
        use pb::schedule::Kind;
        pb::Schedule {
            kind: Some(match s {
                Schedule::Now => Kind::Now(pb::Now {}),
                Schedule::At(ms) => Kind::At(pb::At { at_unix_ms: ms }),
                Schedule::Cron {
                    expression,
                    time_zone,
                    misfire,
                } => Kind::Cron(pb::Cron {
                    expression,
                    time_zone,
                    misfire: match misfire {
                        MisfirePolicy::FireOnce => pb::MisfirePolicy::FireOnce,
                        MisfirePolicy::Skip => pb::MisfirePolicy::Skip,
                        MisfirePolicy::FireAll => pb::MisfirePolicy::FireAll,
                    } as i32,
                }),
                Schedule::Repeat { interval_ms, count } => {
                    Kind::Repeat(pb::Repeat { interval_ms, count })
                }
            }),
        }
    }
}

impl From<JobSpec> for pb::JobSpec {
    fn from(s: JobSpec) -> Self {
        pb::JobSpec {
            task_id: s.task_id,
            task_tracker_node_group: s.task_tracker_node_group,
            submit_node_group: s.submit_node_group,
            priority: Some(s.priority),
            params: s.params.into_iter().collect(),
            payload: s.payload,
            schedule: Some(s.schedule.into()),
            need_feedback: s.need_feedback,
            replace_on_exist: s.replace_on_exist,
            rely_on_prev_cycle: s.rely_on_prev_cycle,
            retry_plan: s.retry_plan.map(Into::into),
            timeout_ms: s.timeout_ms,
        }
    }
}

impl From<JobState> for pb::JobState {
    fn from(s: JobState) -> Self {
        match s {
            JobState::Pending => pb::JobState::Pending,
            JobState::Running => pb::JobState::Running,
            JobState::Suspended => pb::JobState::Suspended,
            JobState::Succeeded => pb::JobState::Succeeded,
            JobState::Failed => pb::JobState::Failed,
            JobState::Cancelled => pb::JobState::Cancelled,
        }
    }
}

impl From<ScheduleKind> for pb::ScheduleKind {
    fn from(k: ScheduleKind) -> Self {
        match k {
            ScheduleKind::Now => pb::ScheduleKind::Now,
            ScheduleKind::At => pb::ScheduleKind::At,
            ScheduleKind::Cron => pb::ScheduleKind::Cron,
            ScheduleKind::Repeat => pb::ScheduleKind::Repeat,
        }
    }
}

/// Reads a wire schedule kind; `None` for UNSPECIFIED or an unknown number.
pub fn schedule_kind_from_wire(v: i32) -> Option<ScheduleKind> {
    Some(match pb::ScheduleKind::try_from(v).ok()? {
        pb::ScheduleKind::Unspecified => return None,
        pb::ScheduleKind::Now => ScheduleKind::Now,
        pb::ScheduleKind::At => ScheduleKind::At,
        pb::ScheduleKind::Cron => ScheduleKind::Cron,
        pb::ScheduleKind::Repeat => ScheduleKind::Repeat,
    })
}

/// Reads a wire job state; `None` for UNSPECIFIED or an unknown number.
pub fn job_state_from_wire(v: i32) -> Option<JobState> {
    Some(match pb::JobState::try_from(v).ok()? {
        pb::JobState::Unspecified => return None,
        pb::JobState::Pending => JobState::Pending,
        pb::JobState::Running => JobState::Running,
        pb::JobState::Suspended => JobState::Suspended,
        pb::JobState::Succeeded => JobState::Succeeded,
        pb::JobState::Failed => JobState::Failed,
        pb::JobState::Cancelled => JobState::Cancelled,
    })
}

impl From<Outcome> for pb::Outcome {
    fn from(o: Outcome) -> Self {
        use pb::outcome::Kind;
        pb::Outcome {
            kind: Some(match o {
                Outcome::Success(message) => Kind::Success(pb::Success { message }),
                Outcome::Failed(message) => Kind::Failed(pb::Failed { message }),
                Outcome::Later { delay_ms, message } => {
                    Kind::Later(pb::Later { delay_ms, message })
                }
                Outcome::Error(message) => Kind::Error(pb::Error { message }),
            }),
        }
    }
}

impl TryFrom<pb::Outcome> for Outcome {
    type Error = ValidationError;

    fn try_from(o: pb::Outcome) -> Result<Self, ValidationError> {
        use pb::outcome::Kind;
        Ok(match o.kind {
            None => return Err(ValidationError::new("outcome", "names no kind")),
            Some(Kind::Success(s)) => Outcome::Success(clip_message(s.message)),
            Some(Kind::Failed(f)) => Outcome::Failed(clip_message(f.message)),
            Some(Kind::Later(l)) => Outcome::Later {
                delay_ms: check_delay("outcome.later.delay_ms", l.delay_ms)?,
                message: clip_message(l.message),
            },
            Some(Kind::Error(e)) => Outcome::Error(clip_message(e.message)),
        })
    }
}

impl From<Job> for pb::Job {
    fn from(j: Job) -> Self {
        pb::Job {
            job_id: j.job_id,
            spec: Some(j.spec.into()),
            state: pb::JobState::from(j.state) as i32,
            attempt: j.attempt,
            submitted_at_unix_ms: j.submitted_at_ms,
            trigger_at_unix_ms: j.trigger_at_ms,
            updated_at_unix_ms: j.updated_at_ms,
            worker: j.worker,
            last_outcome: j.last_outcome.map(Into::into),
            failures: j.failures,
        }
    }
}

impl From<LogLevel> for pb::LogLevel {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Debug => pb::LogLevel::Debug,
            LogLevel::Info => pb::LogLevel::Info,
            LogLevel::Warn => pb::LogLevel::Warn,
            LogLevel::Error => pb::LogLevel::Error,
        }
    }
}

/// Reads a wire log level; UNSPECIFIED and unknown numbers are info.
pub fn log_level_from_wire(v: i32) -> LogLevel {
    match pb::LogLevel::try_from(v) {
        Ok(pb::LogLevel::Debug) => LogLevel::Debug,
        Ok(pb::LogLevel::Warn) => LogLevel::Warn,
        Ok(pb::LogLevel::Error) => LogLevel::Error,
        _ => LogLevel::Info,
    }
}

impl From<LogKind> for pb::LogKind {
    fn from(k: LogKind) -> Self {
        match k {
            LogKind::Received => pb::LogKind::Received,
            LogKind::Dispatched => pb::LogKind::Dispatched,
            LogKind::Started => pb::LogKind::Started,
            LogKind::Biz => pb::LogKind::Biz,
            LogKind::Outcome => pb::LogKind::Outcome,
            LogKind::Retry => pb::LogKind::Retry,
            LogKind::Cancelled => pb::LogKind::Cancelled,
            LogKind::Requeued => pb::LogKind::Requeued,
            LogKind::Replaced => pb::LogKind::Replaced,
            LogKind::StaleOutcome => pb::LogKind::StaleOutcome,
            LogKind::Misfire => pb::LogKind::Misfire,
            LogKind::Suspended => pb::LogKind::Suspended,
            LogKind::Fired => pb::LogKind::Fired,
        }
    }
}

/// Reads a wire log kind; unknown numbers are biz lines.
pub fn log_kind_from_wire(v: i32) -> LogKind {
    match pb::LogKind::try_from(v) {
        Ok(pb::LogKind::Received) => LogKind::Received,
        Ok(pb::LogKind::Dispatched) => LogKind::Dispatched,
        Ok(pb::LogKind::Started) => LogKind::Started,
        Ok(pb::LogKind::Outcome) => LogKind::Outcome,
        Ok(pb::LogKind::Retry) => LogKind::Retry,
        Ok(pb::LogKind::Cancelled) => LogKind::Cancelled,
        Ok(pb::LogKind::Requeued) => LogKind::Requeued,
        Ok(pb::LogKind::Replaced) => LogKind::Replaced,
        Ok(pb::LogKind::StaleOutcome) => LogKind::StaleOutcome,
        Ok(pb::LogKind::Misfire) => LogKind::Misfire,
        Ok(pb::LogKind::Suspended) => LogKind::Suspended,
        Ok(pb::LogKind::Fired) => LogKind::Fired,
        _ => LogKind::Biz,
    }
}

impl From<LogEntry> for pb::LogEntry {
    fn from(e: LogEntry) -> Self {
        pb::LogEntry {
            job_id: e.job_id,
            at_unix_ms: e.at_ms,
            kind: pb::LogKind::from(e.kind) as i32,
            attempt: e.attempt,
            level: pb::LogLevel::from(e.level) as i32,
            message: e.message,
            worker: e.worker,
        }
    }
}

/// A log line as the tracker reports it. A kind or level this build does
/// not know reads as a biz line or an info line, so a newer tracker's log
/// stays readable.
impl From<pb::LogEntry> for LogEntry {
    fn from(e: pb::LogEntry) -> Self {
        LogEntry {
            job_id: e.job_id,
            at_ms: e.at_unix_ms,
            kind: log_kind_from_wire(e.kind),
            attempt: e.attempt,
            level: log_level_from_wire(e.level),
            message: e.message,
            worker: e.worker,
        }
    }
}

/// A job as the tracker reports it. Its spec must be there and validate
/// (the error names the field under `spec.`); an unknown state reads as
/// pending and an unreadable last outcome as none. The store's own
/// counters (`seq`, `cycles`) are not on the wire and read as 0.
impl TryFrom<pb::Job> for Job {
    type Error = ValidationError;

    fn try_from(j: pb::Job) -> Result<Self, ValidationError> {
        let spec = j
            .spec
            .ok_or_else(|| ValidationError::new("spec", "is missing"))?;
        let spec = JobSpec::try_from(spec)
            .map_err(|e| ValidationError::new(format!("spec.{}", e.field), e.message))?;
        Ok(Job {
            job_id: j.job_id,
            spec,
            state: job_state_from_wire(j.state).unwrap_or(JobState::Pending),
            attempt: j.attempt,
            seq: 0,
            submitted_at_ms: j.submitted_at_unix_ms,
            trigger_at_ms: j.trigger_at_unix_ms,
            updated_at_ms: j.updated_at_unix_ms,
            worker: j.worker,
            last_outcome: j.last_outcome.and_then(|o| Outcome::try_from(o).ok()),
            failures: j.failures,
            cycles: 0,
        })
    }
}

/// Reads a job as the tracker reports it. `None` when its spec is missing
/// or does not validate; `Job::try_from` says which field.
pub fn job_from_wire(j: pb::Job) -> Option<Job> {
    Job::try_from(j).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> pb::JobSpec {
        pb::JobSpec {
            task_id: "t-1".into(),
            task_tracker_node_group: "workers".into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_fill_in() {
        let s = JobSpec::try_from(spec()).expect("valid");
        assert_eq!(s.priority, DEFAULT_PRIORITY);
        assert_eq!(s.schedule, Schedule::Now);
        assert!(s.retry_plan.is_none());
    }

    #[test]
    fn bad_fields_are_named() {
        let mut p = spec();
        p.task_id.clear();
        assert_eq!(JobSpec::try_from(p).unwrap_err().field, "task_id");

        let mut p = spec();
        p.task_tracker_node_group = "no/slash".into();
        assert_eq!(
            JobSpec::try_from(p).unwrap_err().field,
            "task_tracker_node_group"
        );

        let mut p = spec();
        p.payload = vec![0; MAX_PAYLOAD_BYTES + 1];
        let e = JobSpec::try_from(p).unwrap_err();
        assert_eq!(e.field, "payload");
        assert!(e.message.contains("limit"));

        let mut p = spec();
        p.need_feedback = true;
        assert_eq!(JobSpec::try_from(p).unwrap_err().field, "submit_node_group");

        let mut p = spec();
        p.params.insert("k".into(), "v".repeat(MAX_PARAMS_BYTES));
        assert_eq!(JobSpec::try_from(p).unwrap_err().field, "params");

        let mut p = spec();
        p.retry_plan = Some(pb::RetryPlan {
            steps: vec![pb::RetryStep {
                step: Some(pb::retry_step::Step::Backoff(pb::Backoff {
                    base_ms: 10,
                    factor: 0.5,
                    max_ms: 100,
                })),
            }],
            count: 1,
            forever: false,
        });
        assert_eq!(
            JobSpec::try_from(p).unwrap_err().field,
            "retry_plan.steps[0].factor"
        );
    }

    #[test]
    fn spec_round_trips() {
        let mut s = JobSpec::new("a", "g");
        s.retry_plan = Some(RetryPlan::default_plan());
        s.schedule = Schedule::Repeat {
            interval_ms: 1000,
            count: 5,
        };
        s.params.insert("k".into(), "v".into());
        let back = JobSpec::try_from(pb::JobSpec::from(s.clone())).expect("valid");
        assert_eq!(back, s);
    }

    #[test]
    fn outcomes_round_trip() {
        for o in [
            Outcome::Success("ok".into()),
            Outcome::Failed("no".into()),
            Outcome::Later {
                delay_ms: 5,
                message: "m".into(),
            },
            Outcome::Error("e".into()),
        ] {
            assert_eq!(Outcome::try_from(pb::Outcome::from(o.clone())), Ok(o));
        }
        assert!(Outcome::try_from(pb::Outcome { kind: None }).is_err());
    }

    #[test]
    fn schedule_kinds_round_trip() {
        for k in [
            ScheduleKind::Now,
            ScheduleKind::At,
            ScheduleKind::Cron,
            ScheduleKind::Repeat,
        ] {
            let wire = pb::ScheduleKind::from(k) as i32;
            assert_eq!(schedule_kind_from_wire(wire), Some(k));
        }
        assert_eq!(
            schedule_kind_from_wire(pb::ScheduleKind::Unspecified as i32),
            None
        );
        assert_eq!(schedule_kind_from_wire(99), None);
    }

    #[test]
    fn log_entries_round_trip_and_unknown_values_stay_readable() {
        let entry = LogEntry {
            job_id: "j".into(),
            at_ms: 1_000,
            kind: LogKind::StaleOutcome,
            attempt: 3,
            level: LogLevel::Warn,
            message: "m".into(),
            worker: "tt-1".into(),
        };
        assert_eq!(LogEntry::from(pb::LogEntry::from(entry.clone())), entry);
        let newer = pb::LogEntry {
            job_id: "j".into(),
            kind: 99,
            level: 99,
            ..Default::default()
        };
        let read = LogEntry::from(newer);
        assert_eq!((read.kind, read.level), (LogKind::Biz, LogLevel::Info));
        // Every kind is read back as itself, not as a biz line.
        for kind in [
            LogKind::Received,
            LogKind::Dispatched,
            LogKind::Started,
            LogKind::Biz,
            LogKind::Outcome,
            LogKind::Retry,
            LogKind::Cancelled,
            LogKind::Requeued,
            LogKind::Replaced,
            LogKind::StaleOutcome,
            LogKind::Misfire,
            LogKind::Suspended,
            LogKind::Fired,
        ] {
            assert_eq!(log_kind_from_wire(pb::LogKind::from(kind) as i32), kind);
        }
    }

    #[test]
    fn jobs_round_trip_and_a_bad_spec_is_named() {
        let mut spec = JobSpec::new("t-1", "workers");
        spec.priority = 3;
        let job = Job {
            job_id: "j1".into(),
            spec,
            state: JobState::Failed,
            attempt: 2,
            seq: 0,
            submitted_at_ms: 10,
            trigger_at_ms: 20,
            updated_at_ms: 30,
            worker: "tt-1".into(),
            last_outcome: Some(Outcome::Error("boom".into())),
            failures: 1,
            cycles: 0,
        };
        assert_eq!(Job::try_from(pb::Job::from(job.clone())), Ok(job.clone()));

        let mut missing = pb::Job::from(job.clone());
        missing.spec = None;
        assert_eq!(
            Job::try_from(missing).unwrap_err().field,
            "spec",
            "a job without its spec"
        );
        let mut bad = pb::Job::from(job);
        if let Some(s) = bad.spec.as_mut() {
            s.task_id.clear();
        }
        let e = Job::try_from(bad.clone()).unwrap_err();
        assert_eq!(e.field, "spec.task_id", "{e}");
        assert!(job_from_wire(bad).is_none());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Names: valid ones, the empty one, oversized ones and arbitrary text.
        fn name(max: usize) -> impl Strategy<Value = String> {
            prop_oneof![
                4 => "[a-z0-9_-]{1,20}",
                1 => Just(String::new()),
                1 => (max - 1..max + 3).prop_map(|n| "a".repeat(n)),
                1 => (1usize..200_000).prop_map(|n| "x".repeat(n)),
                2 => "\\PC{0,40}",
            ]
        }

        fn params() -> impl Strategy<Value = std::collections::HashMap<String, String>> {
            prop_oneof![
                4 => proptest::collection::hash_map("\\PC{0,10}", "\\PC{0,20}", 0..8),
                1 => proptest::collection::hash_map("[a-z]{1,6}", Just(String::new()), 60..70),
                1 => (0usize..40_000).prop_map(|n| [("k".to_string(), "v".repeat(n))].into()),
            ]
        }

        fn payload() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                4 => proptest::collection::vec(any::<u8>(), 0..16),
                1 => (MAX_PAYLOAD_BYTES - 1..MAX_PAYLOAD_BYTES + 2).prop_map(|n| vec![0u8; n]),
            ]
        }

        fn schedule() -> impl Strategy<Value = Option<pb::Schedule>> {
            use pb::schedule::Kind;
            let kind = prop_oneof![
                Just(Kind::Now(pb::Now {})),
                any::<i64>().prop_map(|at_unix_ms| Kind::At(pb::At { at_unix_ms })),
                (
                    prop_oneof![
                        "\\PC{0,40}",
                        Just("0 0 * * *".to_string()),
                        Just("  ".to_string())
                    ],
                    "\\PC{0,20}",
                    any::<i32>(),
                    0i32..4,
                    any::<bool>(),
                )
                    .prop_map(
                        |(expression, time_zone, any_misfire, known, wild)| {
                            Kind::Cron(pb::Cron {
                                expression,
                                time_zone,
                                misfire: if wild { any_misfire } else { known },
                            })
                        }
                    ),
                (
                    prop_oneof![Just(0u64), 1..=MAX_DELAY_MS + 1, any::<u64>()],
                    any::<u32>()
                )
                    .prop_map(|(interval_ms, count)| Kind::Repeat(pb::Repeat {
                        interval_ms,
                        count
                    })),
            ];
            proptest::option::of(proptest::option::of(kind).prop_map(|kind| pb::Schedule { kind }))
        }

        fn retry_plan() -> impl Strategy<Value = Option<pb::RetryPlan>> {
            use pb::retry_step::Step;
            let delay = || prop_oneof![0..=MAX_DELAY_MS + 1, any::<u64>()];
            let step = prop_oneof![
                Just(None),
                Just(Some(Step::Retry(pb::Retry {}))),
                delay().prop_map(|delay_ms| Some(Step::RetryAfter(pb::RetryAfter { delay_ms }))),
                (delay(), any::<f64>(), delay()).prop_map(|(base_ms, factor, max_ms)| {
                    Some(Step::Backoff(pb::Backoff {
                        base_ms,
                        factor,
                        max_ms,
                    }))
                }),
                Just(Some(Step::Suspend(pb::Suspend {}))),
                Just(Some(Step::GiveUp(pb::GiveUp {}))),
            ]
            .prop_map(|step| pb::RetryStep { step });
            proptest::option::of(
                (
                    proptest::collection::vec(step, 0..MAX_RETRY_STEPS + 3),
                    prop_oneof![Just(0u32), any::<u32>()],
                    any::<bool>(),
                )
                    .prop_map(|(steps, count, forever)| pb::RetryPlan {
                        steps,
                        count,
                        forever,
                    }),
            )
        }

        fn wire_spec() -> impl Strategy<Value = pb::JobSpec> {
            (
                (
                    name(MAX_TASK_ID_LEN),
                    name(MAX_NODE_GROUP_LEN),
                    name(MAX_NODE_GROUP_LEN),
                ),
                (proptest::option::of(any::<i32>()), params(), payload()),
                (schedule(), retry_plan()),
                (any::<u64>(), 0..=MAX_TIMEOUT_MS + 1),
                proptest::array::uniform4(any::<bool>()),
            )
                .prop_map(
                    |(
                        (task_id, task_tracker_node_group, submit_node_group),
                        (priority, params, payload),
                        (schedule, retry_plan),
                        (any_timeout, timeout),
                        [need_feedback, replace_on_exist, rely_on_prev_cycle, wild_timeout],
                    )| pb::JobSpec {
                        task_id,
                        task_tracker_node_group,
                        submit_node_group,
                        priority,
                        params,
                        payload,
                        schedule,
                        need_feedback,
                        replace_on_exist,
                        rely_on_prev_cycle,
                        retry_plan,
                        timeout_ms: if wild_timeout { any_timeout } else { timeout },
                    },
                )
        }

        /// The fields a refusal may name (a retry step adds its index).
        fn known_field(field: &str) -> bool {
            const FIELDS: [&str; 12] = [
                "task_id",
                "task_tracker_node_group",
                "submit_node_group",
                "params",
                "payload",
                "timeout_ms",
                "schedule.at.at_unix_ms",
                "schedule.cron.expression",
                "schedule.cron.misfire",
                "schedule.repeat.interval_ms",
                "retry_plan.steps",
                "retry_plan.count",
            ];
            FIELDS.contains(&field)
                || field
                    .strip_prefix("retry_plan.steps[")
                    .and_then(|rest| rest.split_once(']'))
                    .is_some_and(|(i, rest)| {
                        i.parse::<usize>().is_ok_and(|i| i < MAX_RETRY_STEPS)
                            && ["", ".factor", ".max_ms"].contains(&rest)
                    })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            /// Any wire spec becomes a job spec within every limit, which
            /// converts back and validates again to itself, or is refused
            /// naming one of its fields.
            #[test]
            fn any_wire_spec_is_valid_or_names_a_field(p in wire_spec()) {
                match JobSpec::try_from(p.clone()) {
                    Ok(s) => {
                        prop_assert!(check_task_id(&s.task_id).is_ok());
                        prop_assert!(check_node_group(&s.task_tracker_node_group).is_ok());
                        prop_assert!(s.params.len() <= MAX_PARAMS);
                        prop_assert!(s.payload.len() <= MAX_PAYLOAD_BYTES);
                        prop_assert!(s.timeout_ms <= MAX_TIMEOUT_MS);
                        if let Some(plan) = &s.retry_plan {
                            prop_assert!(!plan.steps.is_empty() && plan.steps.len() <= MAX_RETRY_STEPS);
                        }
                        let again = JobSpec::try_from(pb::JobSpec::from(s.clone()));
                        prop_assert_eq!(again, Ok(s));
                    }
                    Err(e) => {
                        prop_assert!(known_field(&e.field), "unknown field in {}", e);
                        prop_assert!(!e.message.is_empty(), "{}", e);
                        let status = tonic::Status::from(e.clone());
                        prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
                        prop_assert!(status.message().starts_with(&e.field));
                    }
                }
            }
        }
    }
}
