//! The interface between a TaskTracker and the code that does the work.

use async_trait::async_trait;
use lts_common::limits::clip_message;
use lts_common::{now_ms, Job, LogLevel, Outcome};
use lts_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Runs jobs. One value serves every slot, so runs of many jobs call it at
/// the same time.
///
/// Runs are at least once: a job whose TaskTracker is lost, or whose run
/// outlives its lease, runs again elsewhere. Make runners idempotent.
///
/// ```
/// use lts_common::Outcome;
/// use lts_tasktracker::{JobContext, JobRunner};
///
/// struct Greeter;
///
/// #[async_trait::async_trait]
/// impl JobRunner for Greeter {
///     async fn run(&self, ctx: JobContext) -> Outcome {
///         let who = ctx.job.spec.params.get("who").map(String::as_str).unwrap_or("world");
///         ctx.log.info(format!("greeting {who}"));
///         tokio::select! {
///             _ = ctx.cancel.cancelled() => Outcome::Error("cancelled".into()),
///             _ = tokio::time::sleep(std::time::Duration::from_millis(1)) => {
///                 Outcome::Success(format!("hello, {who}"))
///             }
///         }
///     }
/// }
/// ```
#[async_trait]
pub trait JobRunner: Send + Sync + 'static {
    /// Runs one job to its end. Return soon after `ctx.cancel` fires: the
    /// TaskTracker aborts a run that goes on past its
    /// [`cancel_grace`](crate::TaskTrackerConfig::cancel_grace). A panic is
    /// reported as an error outcome.
    async fn run(&self, ctx: JobContext) -> Outcome;
}

/// Everything a runner gets for one run.
#[derive(Debug)]
pub struct JobContext {
    /// The job as the JobTracker stored it.
    pub job: Job,
    /// Number of this run, from 1. The JobTracker ignores outcomes of runs
    /// that are no longer current, so there is no need to check it.
    pub attempt: u32,
    /// Fires when the JobTracker cancels the run, when the job's timeout
    /// passes, and when the TaskTracker shuts down.
    pub cancel: CancellationToken,
    /// Lines written here reach the job's execution log.
    pub log: BizLogger,
}

impl JobContext {
    /// A context outside any TaskTracker, for testing runners: the returned
    /// [`CapturedLogs`] receives what the runner logs.
    pub fn standalone(job: Job, attempt: u32) -> (JobContext, CapturedLogs) {
        let (tx, rx) = mpsc::unbounded_channel();
        let log = BizLogger::new(job.job_id.clone(), attempt, tx);
        let ctx = JobContext {
            job,
            attempt,
            cancel: CancellationToken::new(),
            log,
        };
        (ctx, CapturedLogs { rx })
    }
}

/// What a run sends to the part of the TaskTracker that talks to the
/// JobTracker.
#[derive(Debug)]
pub(crate) enum Event {
    Log(pb::BizLog),
    Finished(pb::OutcomeReport),
    /// The shutdown signal arrived.
    Stop,
    /// The shutdown grace is over: the runs still going are cancelled.
    GraceOver,
}

/// Writes lines to the execution log of one run. The lines travel to the
/// JobTracker in batches; while it is unreachable they are dropped (the
/// outcome is kept and sent later).
#[derive(Clone, Debug)]
pub struct BizLogger {
    job_id: String,
    attempt: u32,
    events: mpsc::UnboundedSender<Event>,
}

impl BizLogger {
    pub(crate) fn new(job_id: String, attempt: u32, events: mpsc::UnboundedSender<Event>) -> Self {
        BizLogger {
            job_id,
            attempt,
            events,
        }
    }

    /// Writes a line at `level`. Lines longer than
    /// [`MAX_LOG_MESSAGE_BYTES`](lts_common::limits::MAX_LOG_MESSAGE_BYTES)
    /// are cut.
    pub fn log(&self, level: LogLevel, message: impl Into<String>) {
        let line = pb::BizLog {
            job_id: self.job_id.clone(),
            attempt: self.attempt,
            level: pb::LogLevel::from(level) as i32,
            message: clip_message(message.into()),
            at_unix_ms: now_ms(),
        };
        // The TaskTracker is gone only when it is shutting down; the line has
        // nowhere to go then.
        let _ = self.events.send(Event::Log(line));
    }

    /// Writes a debug line.
    pub fn debug(&self, message: impl Into<String>) {
        self.log(LogLevel::Debug, message)
    }

    /// Writes an info line.
    pub fn info(&self, message: impl Into<String>) {
        self.log(LogLevel::Info, message)
    }

    /// Writes a warning.
    pub fn warn(&self, message: impl Into<String>) {
        self.log(LogLevel::Warn, message)
    }

    /// Writes an error line.
    pub fn error(&self, message: impl Into<String>) {
        self.log(LogLevel::Error, message)
    }
}

/// Lines logged through a [`JobContext::standalone`] context.
#[derive(Debug)]
pub struct CapturedLogs {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl CapturedLogs {
    /// The lines logged so far, oldest first.
    pub fn lines(&mut self) -> Vec<(LogLevel, String)> {
        let mut lines = Vec::new();
        while let Ok(event) = self.rx.try_recv() {
            if let Event::Log(line) = event {
                lines.push((
                    lts_common::convert::log_level_from_wire(line.level),
                    line.message,
                ));
            }
        }
        lines
    }

    /// Waits for the next line; `None` once the run's context is gone.
    pub async fn next(&mut self) -> Option<(LogLevel, String)> {
        while let Some(event) = self.rx.recv().await {
            if let Event::Log(line) = event {
                return Some((
                    lts_common::convert::log_level_from_wire(line.level),
                    line.message,
                ));
            }
        }
        None
    }
}
