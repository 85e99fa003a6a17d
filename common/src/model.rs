//! The job model: what a caller asks for, what the tracker stores, and what
//! a runner reports.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Priority of a job that names none. Smaller runs first.
pub const DEFAULT_PRIORITY: i32 = 100;

/// A validated job as submitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Caller's key, unique within the task tracker node group.
    pub task_id: String,
    /// Where it runs.
    pub task_tracker_node_group: String,
    /// Who gets feedback.
    pub submit_node_group: String,
    /// Smaller runs first.
    pub priority: i32,
    /// Parameters for the runner.
    pub params: BTreeMap<String, String>,
    /// Opaque bytes for the runner.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// When it runs.
    pub schedule: Schedule,
    /// Push the outcome to the submit node group.
    pub need_feedback: bool,
    /// Replace a job with the same task id instead of refusing.
    pub replace_on_exist: bool,
    /// A cycle waits while the previous one runs.
    pub rely_on_prev_cycle: bool,
    /// What happens after an error; `None` is [`RetryPlan::default_plan`].
    pub retry_plan: Option<RetryPlan>,
    /// Longest run in milliseconds; 0 is none.
    pub timeout_ms: u64,
}

impl JobSpec {
    /// A job that runs now in `node_group`, with defaults for the rest.
    pub fn new(task_id: impl Into<String>, node_group: impl Into<String>) -> Self {
        JobSpec {
            task_id: task_id.into(),
            task_tracker_node_group: node_group.into(),
            submit_node_group: String::new(),
            priority: DEFAULT_PRIORITY,
            params: BTreeMap::new(),
            payload: Vec::new(),
            schedule: Schedule::Now,
            need_feedback: false,
            replace_on_exist: false,
            rely_on_prev_cycle: false,
            retry_plan: None,
            timeout_ms: 0,
        }
    }

    /// The plan that applies to this job.
    pub fn effective_retry_plan(&self) -> RetryPlan {
        self.retry_plan
            .clone()
            .unwrap_or_else(RetryPlan::default_plan)
    }
}

/// When a job runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Schedule {
    /// As soon as a slot is free.
    Now,
    /// At a time (Unix milliseconds), or as soon after as a slot is free.
    At(i64),
    /// On a cron expression in a time zone.
    Cron {
        /// The expression.
        expression: String,
        /// IANA zone name; empty is UTC.
        time_zone: String,
        /// What to do with points missed while no tracker ran.
        misfire: MisfirePolicy,
    },
    /// `count` runs (0 is forever), `interval_ms` apart.
    Repeat {
        /// Time between the starts of two cycles.
        interval_ms: u64,
        /// Runs in all; 0 is forever.
        count: u32,
    },
}

/// The kind of a [`Schedule`], for filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ScheduleKind {
    /// Runs once, as soon as possible.
    Now,
    /// Runs once, at a time.
    At,
    /// Fires cycles on a cron expression.
    Cron,
    /// Fires a number of cycles at an interval.
    Repeat,
}

impl ScheduleKind {
    /// Lower-case name, as the CLI prints and accepts it.
    pub fn name(self) -> &'static str {
        match self {
            ScheduleKind::Now => "now",
            ScheduleKind::At => "at",
            ScheduleKind::Cron => "cron",
            ScheduleKind::Repeat => "repeat",
        }
    }
}

impl Schedule {
    /// Its kind.
    pub fn kind(&self) -> ScheduleKind {
        match self {
            Schedule::Now => ScheduleKind::Now,
            Schedule::At(_) => ScheduleKind::At,
            Schedule::Cron { .. } => ScheduleKind::Cron,
            Schedule::Repeat { .. } => ScheduleKind::Repeat,
        }
    }

    /// Whether it fires cycles (cron, repeat) rather than running once.
    pub fn is_recurring(&self) -> bool {
        matches!(self, Schedule::Cron { .. } | Schedule::Repeat { .. })
    }
}

/// What to do with cron points missed while no tracker was running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum MisfirePolicy {
    /// Fire once now for all missed points, then go on.
    #[default]
    FireOnce,
    /// Skip to the next point.
    Skip,
    /// Fire every missed point.
    FireAll,
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting for its trigger time or a free slot.
    Pending,
    /// Handed to a TaskTracker.
    Running,
    /// Parked until an operator resumes it.
    Suspended,
    /// Finished with success.
    Succeeded,
    /// Finished with a permanent failure or an exhausted retry plan.
    Failed,
    /// Cancelled by a caller.
    Cancelled,
}

impl JobState {
    /// Whether the job will never run again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// Lower-case name, as the CLI prints it and accepts it.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Suspended => "suspended",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Parses [`JobState::name`].
    pub fn from_name(s: &str) -> Option<JobState> {
        Some(match s {
            "pending" => JobState::Pending,
            "running" => JobState::Running,
            "suspended" => JobState::Suspended,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }
}

/// What a runner reports at the end of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// Done.
    Success(String),
    /// Permanent failure; the retry plan is skipped.
    Failed(String),
    /// Run again after a delay; not a failure.
    Later {
        /// Milliseconds until the next run.
        delay_ms: u64,
        /// Why.
        message: String,
    },
    /// Counts against the retry plan.
    Error(String),
}

impl Outcome {
    /// Short name of the kind: success, failed, later, error.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Success(_) => "success",
            Outcome::Failed(_) => "failed",
            Outcome::Later { .. } => "later",
            Outcome::Error(_) => "error",
        }
    }

    /// The message carried by the outcome.
    pub fn message(&self) -> &str {
        match self {
            Outcome::Success(m) | Outcome::Failed(m) | Outcome::Error(m) => m,
            Outcome::Later { message, .. } => message,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Later { delay_ms, message } => {
                write!(f, "later({delay_ms} ms)")?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            other => {
                f.write_str(other.kind())?;
                if !other.message().is_empty() {
                    write!(f, ": {}", other.message())?;
                }
                Ok(())
            }
        }
    }
}

/// A list of steps, one per error outcome, the whole list run `count` times
/// (or forever); after that the job has failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPlan {
    /// The steps, taken in order.
    pub steps: Vec<RetryStep>,
    /// How many times the list runs.
    pub count: u32,
    /// The list runs forever; `count` is ignored.
    pub forever: bool,
}

/// One step of a retry plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RetryStep {
    /// Run again at once.
    Retry,
    /// Run again after a delay (ms).
    RetryAfter(u64),
    /// Run again after `base * factor^round`, at most `max` (ms), where
    /// round counts the times the plan has run through.
    Backoff {
        /// First delay.
        base_ms: u64,
        /// Growth per round.
        factor: f64,
        /// Largest delay.
        max_ms: u64,
    },
    /// Park the job until an operator resumes it.
    Suspend,
    /// Fail the job.
    GiveUp,
}

/// What the tracker does after an error outcome.
#[derive(Clone, Debug, PartialEq)]
pub enum RetryDecision {
    /// Run again after this many milliseconds.
    RetryAfter(u64),
    /// Park the job.
    Suspend,
    /// Fail the job.
    GiveUp,
}

impl RetryPlan {
    /// The plan of a job that names none: three retries, 1 s, 2 s and 4 s
    /// after the error, then the job fails.
    pub fn default_plan() -> RetryPlan {
        RetryPlan {
            steps: vec![RetryStep::Backoff {
                base_ms: 1_000,
                factor: 2.0,
                max_ms: 60_000,
            }],
            count: 3,
            forever: false,
        }
    }

    /// A plan that fails the job at its first error.
    pub fn no_retry() -> RetryPlan {
        RetryPlan {
            steps: vec![RetryStep::GiveUp],
            count: 1,
            forever: false,
        }
    }

    /// Decides what follows the `failures`-th error (counting from 1).
    pub fn decide(&self, failures: u32) -> RetryDecision {
        if self.steps.is_empty() || failures == 0 {
            return RetryDecision::GiveUp;
        }
        let index = (failures - 1) as usize;
        let round = index / self.steps.len();
        if !self.forever && round >= self.count as usize {
            return RetryDecision::GiveUp;
        }
        let step_index = index % self.steps.len();
        match &self.steps[step_index] {
            RetryStep::Retry => RetryDecision::RetryAfter(0),
            RetryStep::RetryAfter(ms) => RetryDecision::RetryAfter(*ms),
            RetryStep::Backoff {
                base_ms,
                factor,
                max_ms,
            } => {
                // Consecutive backoff steps in one round grow too, so a plan
                // of a single backoff step grows with every error.
                let exponent = (round * self.steps.len() + step_index) as i32;
                let delay = (*base_ms as f64) * factor.powi(exponent);
                let delay = if delay.is_finite() {
                    delay.min(*max_ms as f64)
                } else {
                    *max_ms as f64
                };
                RetryDecision::RetryAfter(delay.max(0.0) as u64)
            }
            RetryStep::Suspend => RetryDecision::Suspend,
            RetryStep::GiveUp => RetryDecision::GiveUp,
        }
    }
}

impl std::fmt::Display for RetryPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[")?;
        for (i, step) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match step {
                RetryStep::Retry => f.write_str("retry")?,
                RetryStep::RetryAfter(ms) => write!(f, "retry_after {ms}ms")?,
                RetryStep::Backoff {
                    base_ms,
                    factor,
                    max_ms,
                } => write!(f, "backoff {base_ms}ms x{factor} max {max_ms}ms")?,
                RetryStep::Suspend => f.write_str("suspend")?,
                RetryStep::GiveUp => f.write_str("give_up")?,
            }
        }
        f.write_str("]")?;
        if self.forever {
            f.write_str(" forever")
        } else {
            write!(f, " x{}", self.count)
        }
    }
}

/// A job as the tracker stores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Assigned by the tracker.
    pub job_id: String,
    /// What was submitted.
    pub spec: JobSpec,
    /// Where it is in its life.
    pub state: JobState,
    /// Number of the current or last run, from 1; 0 before the first. The
    /// fencing token of a run.
    pub attempt: u32,
    /// Submit order within the tracker's store.
    pub seq: u64,
    /// When it was stored.
    pub submitted_at_ms: i64,
    /// When it may run next.
    pub trigger_at_ms: i64,
    /// Last change.
    pub updated_at_ms: i64,
    /// TaskTracker running it.
    pub worker: String,
    /// Outcome of the last finished run.
    pub last_outcome: Option<Outcome>,
    /// Error outcomes counted against the retry plan.
    pub failures: u32,
    /// Finished cycles of a repeat job.
    pub cycles: u32,
}

/// The kind of a line in a job's execution log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogKind {
    /// Stored on submit.
    Received,
    /// Handed to a TaskTracker.
    Dispatched,
    /// A runner started it.
    Started,
    /// A line the runner logged.
    Biz,
    /// A run finished.
    Outcome,
    /// Scheduled to run again after an error.
    Retry,
    /// Cancelled by a caller.
    Cancelled,
    /// Put back in the queue (tracker restart, lost TaskTracker).
    Requeued,
    /// Replaced by a submit with the same task id.
    Replaced,
    /// An outcome for an attempt that is no longer current was refused.
    StaleOutcome,
    /// Cycle points of a cron job missed by more than the misfire grace,
    /// and what its misfire policy made of them.
    Misfire,
    /// Suspended, by an operator or by the retry plan, until resumed.
    Suspended,
    /// A cron or repeat job fired a cycle (a job of its own).
    Fired,
}

impl LogKind {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            LogKind::Received => "received",
            LogKind::Dispatched => "dispatched",
            LogKind::Started => "started",
            LogKind::Biz => "biz",
            LogKind::Outcome => "outcome",
            LogKind::Retry => "retry",
            LogKind::Cancelled => "cancelled",
            LogKind::Requeued => "requeued",
            LogKind::Replaced => "replaced",
            LogKind::StaleOutcome => "stale-outcome",
            LogKind::Misfire => "misfire",
            LogKind::Suspended => "suspended",
            LogKind::Fired => "fired",
        }
    }
}

/// Severity of a biz log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    /// Detail.
    Debug,
    /// Normal.
    Info,
    /// Something odd.
    Warn,
    /// Something failed.
    Error,
}

impl LogLevel {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// One line of a job's execution log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The job.
    pub job_id: String,
    /// When.
    pub at_ms: i64,
    /// What happened.
    pub kind: LogKind,
    /// The run it belongs to.
    pub attempt: u32,
    /// Severity.
    pub level: LogLevel,
    /// Details.
    pub message: String,
    /// The TaskTracker involved, if any.
    pub worker: String,
}

impl LogEntry {
    /// An info line of `kind` for `job_id`, now.
    pub fn new(job_id: &str, kind: LogKind, attempt: u32, message: impl Into<String>) -> Self {
        LogEntry {
            job_id: job_id.to_string(),
            at_ms: crate::now_ms(),
            kind,
            attempt,
            level: LogLevel::Info,
            message: message.into(),
            worker: String::new(),
        }
    }

    /// The same line naming a TaskTracker.
    pub fn with_worker(mut self, worker: &str) -> Self {
        self.worker = worker.to_string();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plan_backs_off_then_gives_up() {
        let plan = RetryPlan::default_plan();
        assert_eq!(plan.decide(1), RetryDecision::RetryAfter(1_000));
        assert_eq!(plan.decide(2), RetryDecision::RetryAfter(2_000));
        assert_eq!(plan.decide(3), RetryDecision::RetryAfter(4_000));
        assert_eq!(plan.decide(4), RetryDecision::GiveUp);
    }

    #[test]
    fn plan_steps_run_in_order_count_times() {
        let plan = RetryPlan {
            steps: vec![RetryStep::RetryAfter(1_000), RetryStep::Suspend],
            count: 2,
            forever: false,
        };
        assert_eq!(plan.decide(1), RetryDecision::RetryAfter(1_000));
        assert_eq!(plan.decide(2), RetryDecision::Suspend);
        assert_eq!(plan.decide(3), RetryDecision::RetryAfter(1_000));
        assert_eq!(plan.decide(4), RetryDecision::Suspend);
        assert_eq!(plan.decide(5), RetryDecision::GiveUp);
    }

    #[test]
    fn forever_plans_never_give_up_and_backoff_caps() {
        let plan = RetryPlan {
            steps: vec![RetryStep::Backoff {
                base_ms: 10,
                factor: 10.0,
                max_ms: 5_000,
            }],
            count: 0,
            forever: true,
        };
        assert_eq!(plan.decide(1), RetryDecision::RetryAfter(10));
        assert_eq!(plan.decide(3), RetryDecision::RetryAfter(1_000));
        assert_eq!(plan.decide(500), RetryDecision::RetryAfter(5_000));
    }

    #[test]
    fn outcome_display_names_kind_and_message() {
        assert_eq!(Outcome::Error("boom".into()).to_string(), "error: boom");
        assert_eq!(Outcome::Success(String::new()).to_string(), "success");
        let later = Outcome::Later {
            delay_ms: 50,
            message: "busy".into(),
        };
        assert_eq!(later.to_string(), "later(50 ms): busy");
    }
}
