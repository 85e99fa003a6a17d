//! The job store: where jobs, execution logs and feedback live.
//!
//! [`JobStore`] is the one interface the rest of the tracker uses; it has
//! no backend dependencies. The embedded backend is [`sled::SledStore`];
//! the cluster backend, shared by several trackers, is [`mongo::MongoStore`].
//! The state machine a job goes through on an outcome is in
//! [`apply_outcome`], shared by every backend so that they agree.

mod cycles;
mod index;
pub mod mongo;
pub mod operator;
mod paging;
pub mod sled;
mod task_index;

use async_trait::async_trait;
use lts_common::{Job, JobSpec, JobState, LogEntry, LogKind, Outcome, RetryDecision, Schedule};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::election::Term;
use crate::error::Result;

pub use cycles::{
    check_recurring, cycle_step, CycleStep, Missed, FIRE_AHEAD_MS, MAX_COUNTED_MISSES,
    MISFIRE_GRACE_MS,
};

/// Why a job of a submitted batch was not stored.
#[derive(Clone, Debug, PartialEq)]
pub enum SubmitRefusal {
    /// A job with the same task id exists in the node group.
    AlreadyExists {
        /// The existing job.
        job_id: String,
    },
    /// The job names something this tracker does not do.
    Unsupported {
        /// The field.
        field: String,
        /// Why.
        message: String,
    },
}

/// Result of one job of a submitted batch.
#[derive(Clone, Debug, PartialEq)]
pub enum SubmitResult {
    /// Stored as a new job.
    Created(String),
    /// Replaced the job with the same task id (`replace_on_exist`).
    Replaced {
        /// The new job.
        job_id: String,
        /// The job it replaced; if it was running, its run is stale now.
        replaced: Box<Job>,
    },
    /// Not stored.
    Refused(SubmitRefusal),
}

/// A run's outcome as a TaskTracker reported it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunReport {
    /// The job.
    pub job_id: String,
    /// The run's fencing token.
    pub attempt: u32,
    /// What happened.
    pub outcome: Outcome,
    /// When the run started (TaskTracker clock).
    pub started_at_ms: i64,
    /// When it ended.
    pub finished_at_ms: i64,
    /// Who ran it.
    pub worker: String,
}

/// What became of one reported outcome.
#[derive(Clone, Debug, PartialEq)]
pub enum CompleteResult {
    /// Stored.
    Applied {
        /// The job as it is now.
        job: Box<Job>,
        /// Feedback queued by it, if the job asked for feedback.
        feedback: Option<Feedback>,
    },
    /// The attempt is not the job's current run (or the job is gone); the
    /// outcome was dropped and logged (see [`stale_outcome_log`]).
    Stale {
        /// The job's current attempt (also when it is final or pending
        /// again), 0 if the job is unknown.
        current_attempt: u32,
    },
}

/// The execution-log line of an outcome refused as stale. It names where
/// the job really is, `current` (its attempt and state; `None`: the job no
/// longer exists), so the reader sees why the run no longer counts.
pub fn stale_outcome_log(report: &RunReport, current: Option<(u32, JobState)>) -> LogEntry {
    let now = match current {
        None => "the job no longer exists".to_string(),
        Some((0, JobState::Pending)) => "the job is pending and has not run yet".to_string(),
        Some((attempt, JobState::Pending)) if attempt == report.attempt => format!(
            "attempt {attempt} was put back and the job is pending, to run again as attempt {}",
            attempt.saturating_add(1)
        ),
        Some((attempt, JobState::Pending)) => format!(
            "the job is pending after attempt {attempt}, to run again as attempt {}",
            attempt.saturating_add(1)
        ),
        Some((attempt, state)) => {
            format!("the job is {} at attempt {attempt}", state.name())
        }
    };
    LogEntry::new(
        &report.job_id,
        LogKind::StaleOutcome,
        report.attempt,
        format!(
            "outcome {} of attempt {} refused: {now}",
            report.outcome, report.attempt
        ),
    )
    .with_worker(&report.worker)
}

/// What the unfinished jobs of one node group hold: what counts against
/// its quota (`--max-jobs-per-node-group`, `--max-bytes-per-node-group`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupUsage {
    /// Jobs that are not final: pending, running, suspended, and cron and
    /// repeat jobs that fire further cycles.
    pub jobs: u64,
    /// Their bytes, by [`quota_bytes`].
    pub bytes: u64,
}

/// The bytes a job counts for in its node group's quota: its payload and
/// its params' keys and values, the parts whose size the client chooses
/// (the rest of a job is a few hundred bytes at most).
pub fn quota_bytes(spec: &JobSpec) -> u64 {
    let params: usize = spec.params.iter().map(|(k, v)| k.len() + v.len()).sum();
    (spec.payload.len() + params) as u64
}

/// A result queued for a submit node group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    /// Unique id, acked by clients.
    pub feedback_id: String,
    /// Who receives it.
    pub submit_node_group: String,
    /// The job.
    pub job_id: String,
    /// Its task id.
    pub task_id: String,
    /// Its node group.
    pub task_tracker_node_group: String,
    /// The run.
    pub attempt: u32,
    /// The job's state after the run.
    pub state: JobState,
    /// The run's outcome (none for a cancel).
    pub outcome: Option<Outcome>,
    /// When.
    pub finished_at_ms: i64,
}

/// Filter of [`JobStore::list`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListFilter {
    /// Only this node group.
    pub node_group: Option<String>,
    /// Only this state.
    pub state: Option<JobState>,
    /// Only task ids with this prefix.
    pub task_id_prefix: Option<String>,
    /// Only this kind of schedule.
    pub kind: Option<lts_common::ScheduleKind>,
}

impl ListFilter {
    /// Whether `job` passes.
    pub fn matches(&self, job: &Job) -> bool {
        self.node_group
            .as_deref()
            .is_none_or(|g| job.spec.task_tracker_node_group == g)
            && self.state.is_none_or(|s| job.state == s)
            && self
                .task_id_prefix
                .as_deref()
                .is_none_or(|p| job.spec.task_id.starts_with(p))
            && self.kind.is_none_or(|k| job.spec.schedule.kind() == k)
    }
}

/// Filter of [`JobStore::query_logs`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogFilter {
    /// Only this job.
    pub job_id: Option<String>,
    /// Only jobs with exactly this task id.
    pub task_id: Option<String>,
    /// Only jobs of this node group.
    pub node_group: Option<String>,
    /// Only lines at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Only lines before this time (Unix ms).
    pub until_ms: Option<i64>,
}

/// Jobs handed out by one claim, per grant.
#[derive(Debug, Default)]
pub struct Claimed {
    /// For each `(worker, n)` grant, in order, the jobs now running there.
    pub per_grant: Vec<Vec<Job>>,
    /// When the next pending job of the group becomes ready, if one waits
    /// for a future time.
    pub next_ready_at_ms: Option<i64>,
}

/// What an operator does to a job (cancel has its own call).
#[derive(Clone, Debug, PartialEq)]
pub enum AdminAction {
    /// Park a pending job, or a cron/repeat job between cycles.
    Suspend,
    /// Make a suspended job pending again.
    Resume,
    /// Run a pending job now, or fire one cycle of a cron/repeat job now.
    Trigger,
    /// Remove a job that is not running.
    Delete,
    /// Change fields of a job.
    Update(JobUpdate),
}

/// Fields an operator may change; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobUpdate {
    /// New params (replacing all).
    pub params: Option<std::collections::BTreeMap<String, String>>,
    /// New priority.
    pub priority: Option<i32>,
    /// New schedule.
    pub schedule: Option<Schedule>,
    /// New retry plan; restarts the job's error counter.
    pub retry_plan: Option<lts_common::RetryPlan>,
}

/// What an operator verb did.
#[derive(Clone, Debug, PartialEq)]
pub struct Admined {
    /// The job before.
    pub before: Job,
    /// The job after; `None` when it was deleted.
    pub after: Option<Job>,
    /// Node groups that got work (a trigger).
    pub wake: Vec<String>,
}

/// A job a cancel stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct Cancelled {
    /// As it was: a running job's worker and attempt are to be stopped.
    pub before: Job,
    /// As it is now.
    pub after: Job,
    /// Feedback queued by it, if the job asked for feedback.
    pub feedback: Option<Feedback>,
}

/// Counts found by [`JobStore::recover`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recovery {
    /// Jobs pending or suspended.
    pub pending: usize,
    /// Jobs that were running and are pending again, with a new attempt to
    /// come.
    pub requeued: usize,
    /// Of the pending and requeued jobs, those that may have been running
    /// before the restart, held for the recovery grace.
    pub held: usize,
    /// Feedback not yet acked.
    pub feedback: usize,
    /// Records that could not be decoded and were skipped.
    pub corrupt: usize,
}

/// See [`JobStore::on_claimable`].
pub type ClaimableHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Where jobs live.
///
/// # Contract
///
/// **Visibility.** A change is seen by every read of the same store once
/// the call that made it returned, durable or not.
///
/// **Durability.** A change is *durable* once a crash of the tracker's
/// process or machine (`kill -9`, power loss) cannot undo it. Each method
/// says when its changes are durable; [`JobStore::sync`] makes every change
/// of the calls that returned before it durable. What is said here holds
/// for every backend; a backend may be durable sooner (the MongoDB store's
/// writes are durable when their call returns, by the database's write
/// concern), never later. The embedded store keeps most changes in memory
/// until its next flush, which callers ask for through `sync` or which a
/// call says it waits for.
///
/// **Capabilities.** Firing cron and repeat cycles ([`JobStore::cycles`])
/// and operator verbs ([`JobStore::operator`]) are capabilities: a backend
/// without one returns `None`, the tracker says so when it starts, and a
/// user who asks for one gets [`Error::Unsupported`](crate::Error::Unsupported)
/// naming the backend. Every other method does what it says on every
/// backend.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// The backend's name for messages: `embedded (sled)`, `MongoDB`.
    fn backend(&self) -> &'static str;

    /// Loads the queues after a start; jobs that were running are pending
    /// again, and will run with an attempt number no run had before. Call
    /// once, before anything else. Durable when it returns.
    async fn recover(&self, now_ms: i64) -> Result<Recovery>;

    /// Stores a validated batch: dedup on (node group, task id), one result
    /// per job, in order. Durable when it returns: a submit is acknowledged
    /// to its client only then.
    async fn submit(&self, jobs: Vec<JobSpec>, now_ms: i64) -> Result<Vec<SubmitResult>>;

    /// Registers `hook`, called with a node group as soon as submitted jobs
    /// of it can be claimed, which may be before they are durable (a claim
    /// of them then waits for the submit's durability). A backend that
    /// cannot tell never calls it; the caller wakes its dispatchers after
    /// `submit` returns anyway.
    fn on_claimable(&self, hook: ClaimableHook);

    /// Returns once every change made by calls that returned before this
    /// one is durable.
    async fn sync(&self) -> Result<()>;

    /// Claims, for each `(worker, n)` grant, up to `n` ready jobs of
    /// `node_group` in order (priority, trigger time, submit order): each
    /// becomes running with its attempt incremented.
    ///
    /// The attempt is a fencing token: it is never handed out twice, also
    /// across a crash. The claim itself may be lost in a crash (the job is
    /// then pending again after [`JobStore::recover`]); it is durable after
    /// the next `sync`.
    async fn claim(
        &self,
        node_group: &str,
        grants: &[(String, usize)],
        now_ms: i64,
    ) -> Result<Claimed>;

    /// Like [`JobStore::claim`], for pending jobs of `node_group` whose
    /// trigger time is after now and at or before `until_ms`: they go to
    /// TaskTrackers ahead of their time and start at it (see
    /// `Assignment.not_before_unix_ms`). Claimed in trigger order. A backend
    /// that does not send jobs ahead claims nothing here; its jobs are
    /// claimed by `claim` once due.
    async fn claim_ahead(
        &self,
        node_group: &str,
        grants: &[(String, usize)],
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Claimed>;

    /// Notes that runs started (execution log only). May be lost in a
    /// crash; durable after the job's next transition has been synced.
    async fn started(&self, runs: &[(String, u32)], worker: &str, at_ms: i64) -> Result<()>;

    /// Of `runs` a TaskTracker reports started that no stream of this
    /// tracker was given, takes back those that were going before a restart
    /// of the tracker and whose job was not handed out since: the job is
    /// running them again, on `worker`. Returns the runs taken back. A store
    /// whose claims outlive a restart (leases) has nothing to take back.
    async fn adopt(
        &self,
        _runs: &[(String, u32)],
        _worker: &str,
        _now_ms: i64,
    ) -> Result<Vec<(String, u32)>> {
        Ok(Vec::new())
    }

    /// Applies outcomes whose attempt is current; refuses the others.
    /// Durable after the next `sync`: the caller acknowledges the outcomes
    /// to their TaskTracker (which keeps them until then) only after it.
    /// A feedback item an outcome queues is durable no later than the
    /// outcome.
    async fn complete(&self, reports: Vec<RunReport>, now_ms: i64) -> Result<Vec<CompleteResult>>;

    /// Puts running jobs back in the queue (their TaskTracker was lost).
    /// Runs whose attempt moved on are left alone. Durable after the next
    /// `sync`; a requeue lost in a crash changes nothing, as recovery
    /// requeues every running job.
    async fn requeue(&self, runs: &[(String, u32)], reason: &str, now_ms: i64) -> Result<usize>;

    /// Cancels a job that is not final. Durable when it returns.
    async fn cancel(&self, job_id: &str, now_ms: i64) -> Result<Cancelled>;

    /// A job by id.
    async fn get(&self, job_id: &str) -> Result<Option<Job>>;

    /// A job by task id.
    async fn get_by_task(&self, node_group: &str, task_id: &str) -> Result<Option<Job>>;

    /// A page of jobs in job id order, after `page_token`.
    async fn list(
        &self,
        filter: &ListFilter,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<(Vec<Job>, Option<String>)>;

    /// Appends lines to execution logs. Durable after the next `sync`.
    async fn append_logs(&self, entries: Vec<LogEntry>) -> Result<()>;

    /// A page of a job's execution log, oldest first.
    async fn logs(
        &self,
        job_id: &str,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<(Vec<LogEntry>, Option<String>)>;

    /// Log lines of the jobs `filter` selects, job by job in job id order,
    /// oldest line first within a job, at most `page_size` lines a page (a
    /// page may end inside a job's log: a job with many long lines never
    /// makes one page too large to send). [`query_logs_by_job`] does it
    /// with `list` and `logs`.
    async fn query_logs(
        &self,
        filter: &LogFilter,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<(Vec<LogEntry>, Option<String>)>;

    /// Every feedback not yet acked.
    async fn pending_feedback(&self) -> Result<Vec<Feedback>>;

    /// Drops acked feedback. Durable after the next `sync`; an ack lost in
    /// a crash only means the items are delivered again (at least once).
    /// Never undone by a write queued before it: an acked item does not
    /// come back.
    async fn ack_feedback(&self, feedback_ids: &[String]) -> Result<()>;

    /// Ready-to-run job counts per node group (pending, trigger time passed).
    async fn queue_depths(&self, now_ms: i64) -> Result<Vec<(String, usize)>>;

    /// Node groups that have pending jobs.
    async fn node_groups(&self) -> Result<Vec<String>>;

    /// What the unfinished jobs of each node group hold (the quotas'
    /// figures); groups that hold none may be left out. Sees every change
    /// of the calls that returned before it; on a store several trackers
    /// share it is a read of the database, so callers ask at an interval,
    /// not per submit.
    async fn group_usage(&self) -> Result<Vec<(String, GroupUsage)>>;

    /// How often to look for work and feedback that other JobTrackers
    /// sharing this store produced; `None` when this tracker sees every
    /// change itself (a store of its own).
    fn poll_interval(&self) -> Option<std::time::Duration>;

    /// Cron and repeat cycle firing, if this backend does it.
    fn cycles(&self) -> Option<&dyn CycleStore>;

    /// Operator verbs (suspend, resume, trigger, update, delete), if this
    /// backend does them.
    fn operator(&self) -> Option<&dyn OperatorStore>;

    /// Closes the store: every change made before is durable, the store's
    /// threads and connections have ended and its resources (the embedded
    /// store's directory lock) are released when it returns, so the same
    /// store can be opened again at once. Calls after it fail with
    /// [`Error::ShuttingDown`](crate::Error::ShuttingDown). Closing twice
    /// is harmless.
    async fn close(&self) -> Result<()>;
}

/// Cron and repeat cycle firing: a capability of a [`JobStore`].
#[async_trait]
pub trait CycleStore: Send + Sync {
    /// Fires the cron and repeat cycles whose time has come: each cycle
    /// becomes a job of its own, with the task id `<task id>@<point in
    /// Unix ms>`, so a point fires once even across a restart. Returns the
    /// node groups that got work. The cycles fired are durable when it
    /// returns; a skipped point (misfire policy) after the next `sync`.
    ///
    /// `term` is the master term the caller fires under (see
    /// [`crate::election`]). A store shared by several trackers fences
    /// with it: once a newer term has fired, a call under an older term
    /// moves no schedule and returns [`Error::Fenced`](crate::Error::Fenced);
    /// the caller then stops firing until it leads in a newer term. A
    /// store of one tracker ignores it.
    async fn fire_due(&self, now_ms: i64, term: Term) -> Result<Vec<String>>;

    /// When [`CycleStore::fire_due`] next has work: the next cycle's point,
    /// less however early the store makes cycles.
    async fn next_fire_at(&self) -> Result<Option<i64>>;
}

/// Operator verbs on one job: a capability of a [`JobStore`].
#[async_trait]
pub trait OperatorStore: Send + Sync {
    /// An operator verb on one job. Durable when it returns.
    async fn admin(&self, job_id: &str, action: AdminAction, now_ms: i64) -> Result<Admined>;
}

/// `store`'s operator verbs, or the refusal a user gets when it has none.
pub fn operator(store: &dyn JobStore) -> Result<&dyn OperatorStore> {
    store
        .operator()
        .ok_or_else(|| crate::error::Error::Unsupported {
            backend: store.backend(),
            feature: "operator verbs (suspend, resume, trigger, update, delete) yet".into(),
        })
}

/// What `store` lacks, in a line for the tracker's start; `None` when it
/// has every capability.
pub fn missing_capabilities(store: &dyn JobStore) -> Option<String> {
    let mut missing = Vec::new();
    if store.cycles().is_none() {
        missing.push("cron schedules are refused");
    }
    if store.operator().is_none() {
        missing.push("operator verbs (suspend, resume, trigger, update, delete) are refused");
    }
    (!missing.is_empty()).then(|| {
        format!(
            "the {} job store lacks capabilities: {}",
            store.backend(),
            missing.join("; ")
        )
    })
}

/// [`JobStore::query_logs`] through `list` and `logs`: for a backend with
/// no better way to select lines by job.
///
/// The page token is `<job id>` when the page ended with that job's last
/// line (the next page starts with the job after it), or `<job id>/<token
/// of that job's log>` when it ended inside the job's log. Job ids hold no
/// `/`.
pub async fn query_logs_by_job<S: JobStore + ?Sized>(
    store: &S,
    filter: &LogFilter,
    page_size: usize,
    page_token: Option<&str>,
) -> Result<(Vec<LogEntry>, Option<String>)> {
    let page_size = page_size.max(1);
    let mut out: Vec<LogEntry> = Vec::new();
    // Where the previous page stopped: after a whole job, or inside one.
    let (mut after_job, inside) = match page_token.map(|t| t.split_once('/')) {
        None => (None, None),
        Some(None) => (page_token.map(str::to_string), None),
        Some(Some((job, log))) => (Some(job.to_string()), Some((job, log))),
    };
    if let Some(job_id) = &filter.job_id {
        let from = inside
            .filter(|(job, _)| job == job_id)
            .map(|(_, log)| log.to_string());
        let next = read_job_logs(store, filter, job_id, from, page_size, &mut out).await?;
        return Ok((out, next.map(|log| format!("{job_id}/{log}"))));
    }
    if let Some((job, log)) = inside {
        if let Some(next) = read_job_logs(
            store,
            filter,
            job,
            Some(log.to_string()),
            page_size,
            &mut out,
        )
        .await?
        {
            return Ok((out, Some(format!("{job}/{next}"))));
        }
        if out.len() >= page_size {
            return Ok((out, Some(job.to_string())));
        }
    }
    let jobs = ListFilter {
        node_group: filter.node_group.clone(),
        task_id_prefix: filter.task_id.clone(),
        ..Default::default()
    };
    loop {
        let (page, next) = store.list(&jobs, 100, after_job.as_deref()).await?;
        for job in page {
            if filter
                .task_id
                .as_ref()
                .is_some_and(|t| *t != job.spec.task_id)
            {
                continue;
            }
            if let Some(log) =
                read_job_logs(store, filter, &job.job_id, None, page_size, &mut out).await?
            {
                return Ok((out, Some(format!("{}/{log}", job.job_id))));
            }
            if out.len() >= page_size {
                return Ok((out, Some(job.job_id)));
            }
        }
        match next {
            Some(t) => after_job = Some(t),
            None => return Ok((out, None)),
        }
    }
}

/// Appends the lines of `job_id`'s log that pass `filter`'s time range to
/// `out`, from the log token `from`, until `out` holds `page_size` lines.
/// Returns the log token to go on from when it stopped inside the log.
async fn read_job_logs<S: JobStore + ?Sized>(
    store: &S,
    filter: &LogFilter,
    job_id: &str,
    from: Option<String>,
    page_size: usize,
    out: &mut Vec<LogEntry>,
) -> Result<Option<String>> {
    let in_range = |e: &LogEntry| {
        filter.since_ms.is_none_or(|s| e.at_ms >= s) && filter.until_ms.is_none_or(|u| e.at_ms < u)
    };
    let mut token = from;
    loop {
        // Never more lines in memory than the page may hold.
        let room = page_size.saturating_sub(out.len()).clamp(1, 1000);
        let (lines, next) = store.logs(job_id, room, token.as_deref()).await?;
        out.extend(lines.into_iter().filter(|e| in_range(e)));
        match next {
            Some(t) if out.len() >= page_size => return Ok(Some(t)),
            Some(t) => token = Some(t),
            None => return Ok(None),
        }
    }
}

/// A new job for a validated spec.
pub fn new_job(job_id: String, spec: JobSpec, seq: u64, now_ms: i64) -> Job {
    let trigger_at_ms = match &spec.schedule {
        Schedule::At(at) => *at,
        // The first cycle of a cron job is its first point after now; one
        // whose expression has no future point gets none (and is refused
        // before it is stored, see `check_recurring`).
        Schedule::Cron {
            expression,
            time_zone,
            ..
        } => lts_common::cron::CronSchedule::parse(expression, time_zone)
            .ok()
            .and_then(|c| c.next_after_ms(now_ms))
            .unwrap_or(i64::MAX),
        _ => now_ms,
    };
    Job {
        job_id,
        spec,
        state: JobState::Pending,
        attempt: 0,
        seq,
        submitted_at_ms: now_ms,
        trigger_at_ms,
        updated_at_ms: now_ms,
        worker: String::new(),
        last_outcome: None,
        failures: 0,
        cycles: 0,
    }
}

/// A fresh job id: time-ordered, unique across trackers.
pub fn new_job_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// A duration in ms as a signed offset; one beyond `i64::MAX` is capped
/// there (a time that never comes) rather than wrapping negative.
pub(crate) fn ms_to_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// What an applied outcome produced besides the new job state.
#[derive(Debug, Default)]
pub struct Transition {
    /// Lines for the execution log.
    pub logs: Vec<LogEntry>,
    /// Feedback to queue.
    pub feedback: Option<Feedback>,
}

/// Applies a current run's outcome to `job` (whose attempt the caller has
/// checked): completes, retries by plan, reschedules, or fails it.
pub fn apply_outcome(job: &mut Job, report: &RunReport, now_ms: i64) -> Transition {
    let mut t = Transition::default();
    let attempt = report.attempt;
    t.logs.push(
        LogEntry::new(
            &job.job_id,
            LogKind::Outcome,
            attempt,
            format!(
                "{} (ran {} ms)",
                report.outcome,
                // Both times come from the TaskTracker's clock, unchecked.
                report
                    .finished_at_ms
                    .saturating_sub(report.started_at_ms)
                    .max(0)
            ),
        )
        .with_worker(&report.worker),
    );
    job.worker.clear();
    job.updated_at_ms = now_ms;
    let mut cycle_done = false;
    match &report.outcome {
        Outcome::Success(_) => {
            job.failures = 0;
            match job.spec.schedule {
                Schedule::Repeat { interval_ms, count } if count == 0 || job.cycles + 1 < count => {
                    job.cycles += 1;
                    job.state = JobState::Pending;
                    // Cycles keep their cadence; a cycle that ran past the
                    // next point starts at once rather than piling up.
                    job.trigger_at_ms = job
                        .trigger_at_ms
                        .saturating_add(ms_to_i64(interval_ms))
                        .max(now_ms);
                    cycle_done = true;
                }
                Schedule::Repeat { .. } => {
                    job.cycles += 1;
                    job.state = JobState::Succeeded;
                }
                _ => job.state = JobState::Succeeded,
            }
        }
        Outcome::Failed(_) => job.state = JobState::Failed,
        Outcome::Later { delay_ms, .. } => {
            job.state = JobState::Pending;
            // A TaskTracker's delay, unchecked: a huge one means never
            // (until an operator triggers the job), not a wrap into the past.
            job.trigger_at_ms = now_ms.saturating_add(ms_to_i64(*delay_ms));
        }
        Outcome::Error(_) => {
            job.failures += 1;
            match job.spec.effective_retry_plan().decide(job.failures) {
                RetryDecision::RetryAfter(delay) => {
                    job.state = JobState::Pending;
                    job.trigger_at_ms = now_ms.saturating_add(ms_to_i64(delay));
                    t.logs.push(LogEntry::new(
                        &job.job_id,
                        LogKind::Retry,
                        attempt,
                        format!(
                            "error {} of the retry plan; next run in {delay} ms",
                            job.failures
                        ),
                    ));
                }
                RetryDecision::Suspend => {
                    job.state = JobState::Suspended;
                    t.logs.push(LogEntry::new(
                        &job.job_id,
                        LogKind::Suspended,
                        attempt,
                        format!(
                            "error {} of the retry plan; suspended until an operator resumes it",
                            job.failures
                        ),
                    ));
                }
                RetryDecision::GiveUp => {
                    job.state = JobState::Failed;
                    t.logs.push(LogEntry::new(
                        &job.job_id,
                        LogKind::Retry,
                        attempt,
                        format!("error {}: the retry plan gives up", job.failures),
                    ));
                }
            }
        }
    }
    job.last_outcome = Some(report.outcome.clone());
    if job.spec.need_feedback && (job.state.is_final() || cycle_done) {
        t.feedback = Some(feedback_for(job, Some(report.outcome.clone()), now_ms));
    }
    t
}

/// Feedback describing `job` as it is now.
pub fn feedback_for(job: &Job, outcome: Option<Outcome>, now_ms: i64) -> Feedback {
    Feedback {
        feedback_id: uuid::Uuid::now_v7().simple().to_string(),
        submit_node_group: job.spec.submit_node_group.clone(),
        job_id: job.job_id.clone(),
        task_id: job.spec.task_id.clone(),
        task_tracker_node_group: job.spec.task_tracker_node_group.clone(),
        attempt: job.attempt,
        state: job.state,
        outcome,
        finished_at_ms: now_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lts_common::{RetryPlan, RetryStep};

    fn running(spec: JobSpec) -> Job {
        let mut j = new_job("j1".into(), spec, 1, 1_000);
        j.state = JobState::Running;
        j.attempt = 1;
        j
    }

    fn report(outcome: Outcome) -> RunReport {
        RunReport {
            job_id: "j1".into(),
            attempt: 1,
            outcome,
            started_at_ms: 1_000,
            finished_at_ms: 1_010,
            worker: "w".into(),
        }
    }

    #[test]
    fn success_finishes_and_feeds_back() {
        let mut spec = JobSpec::new("t", "g");
        spec.need_feedback = true;
        spec.submit_node_group = "clients".into();
        let mut job = running(spec);
        let t = apply_outcome(&mut job, &report(Outcome::Success("ok".into())), 2_000);
        assert_eq!(job.state, JobState::Succeeded);
        let fb = t.feedback.expect("feedback");
        assert_eq!(fb.state, JobState::Succeeded);
        assert_eq!(fb.submit_node_group, "clients");
    }

    #[test]
    fn errors_follow_the_plan() {
        let mut spec = JobSpec::new("t", "g");
        spec.retry_plan = Some(RetryPlan {
            steps: vec![RetryStep::RetryAfter(500), RetryStep::Suspend],
            count: 1,
            forever: false,
        });
        let mut job = running(spec);
        apply_outcome(&mut job, &report(Outcome::Error("e".into())), 2_000);
        assert_eq!((job.state, job.trigger_at_ms), (JobState::Pending, 2_500));
        job.state = JobState::Running;
        apply_outcome(&mut job, &report(Outcome::Error("e".into())), 3_000);
        assert_eq!(job.state, JobState::Suspended);
    }

    #[test]
    fn failed_skips_the_plan_and_later_does_not_count() {
        let mut job = running(JobSpec::new("t", "g"));
        apply_outcome(
            &mut job,
            &report(Outcome::Later {
                delay_ms: 100,
                message: String::new(),
            }),
            2_000,
        );
        assert_eq!(
            (job.state, job.failures, job.trigger_at_ms),
            (JobState::Pending, 0, 2_100)
        );
        job.state = JobState::Running;
        apply_outcome(
            &mut job,
            &report(Outcome::Failed("bad input".into())),
            3_000,
        );
        assert_eq!(job.state, JobState::Failed);
    }

    #[test]
    fn repeat_runs_count_times() {
        let mut spec = JobSpec::new("t", "g");
        spec.schedule = Schedule::Repeat {
            interval_ms: 1_000,
            count: 2,
        };
        let mut job = running(spec);
        apply_outcome(&mut job, &report(Outcome::Success(String::new())), 1_500);
        assert_eq!((job.state, job.trigger_at_ms), (JobState::Pending, 2_000));
        job.state = JobState::Running;
        apply_outcome(&mut job, &report(Outcome::Success(String::new())), 2_500);
        assert_eq!((job.state, job.cycles), (JobState::Succeeded, 2));
    }

    #[test]
    fn run_times_at_the_ends_of_the_clock_do_not_panic() {
        for (started, finished) in [
            (i64::MIN, i64::MAX),
            (i64::MAX, i64::MIN),
            (i64::MIN, i64::MIN),
            (0, i64::MIN),
        ] {
            let mut job = running(JobSpec::new("t", "g"));
            let mut r = report(Outcome::Success("ok".into()));
            r.started_at_ms = started;
            r.finished_at_ms = finished;
            let t = apply_outcome(&mut job, &r, 2_000);
            assert_eq!(job.state, JobState::Succeeded);
            assert!(
                t.logs.iter().any(|l| l.kind == LogKind::Outcome),
                "{:?}",
                t.logs
            );
        }
    }

    #[test]
    fn a_delay_beyond_the_clock_waits_rather_than_running_at_once() {
        let mut job = running(JobSpec::new("t", "g"));
        let r = report(Outcome::Later {
            delay_ms: u64::MAX,
            message: String::new(),
        });
        apply_outcome(&mut job, &r, 2_000);
        assert_eq!(
            (job.state, job.trigger_at_ms),
            (JobState::Pending, i64::MAX)
        );
        let repeat = Schedule::Repeat {
            interval_ms: u64::MAX,
            count: 0,
        };
        assert_eq!(cycle_step(&repeat, i64::MIN, i64::MAX).next, Some(i64::MAX));
        assert_eq!(cycle_step(&repeat, i64::MAX, i64::MIN).next, Some(i64::MAX));
    }
}
