//! The TaskTracker of the scheduler: it connects to a JobTracker, runs the
//! jobs of one node group in a fixed number of slots, and reports their
//! outcomes.
//!
//! Start with [`JobRunner`]: implement it for your work, then hand it to
//! [`run`] (or build a [`TaskTracker`] to get a [`TaskTrackerHandle`] and
//! the metrics registry first). [`TaskTrackerConfig`] lists the knobs.
//! The JobTrackers are found through a [`Resolver`](lts_common::resolver::Resolver)
//! (the configured list unless [`TaskTracker::with_resolver`] says
//! otherwise), and the time is read from a [`Clock`] (the system's unless
//! [`TaskTracker::with_clock`] says otherwise, as tests of jobs sent ahead
//! of their time and of the lease do).
//! [`runners`] holds the runners the `tasktracker` binary offers without
//! writing Rust: `shell` (allow-listed programs) and `noop`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use lts_common::Outcome;
//! use lts_tasktracker::{JobContext, JobRunner, TaskTrackerConfig};
//!
//! struct Hello;
//!
//! #[async_trait::async_trait]
//! impl JobRunner for Hello {
//!     async fn run(&self, ctx: JobContext) -> Outcome {
//!         ctx.log.info(format!("running {}", ctx.job.spec.task_id));
//!         Outcome::Success(String::new())
//!     }
//! }
//!
//! # async fn example() -> Result<(), lts_tasktracker::Error> {
//! let config = TaskTrackerConfig::new("http://127.0.0.1:7070", "workers");
//! lts_tasktracker::run(config, Arc::new(Hello), async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```
//!
//! How it talks to the JobTracker: one `WorkService.Work` stream (see
//! `proto/lts/v1/work_service.proto`). Free slots are granted as credit;
//! outcomes stay in an [`OutcomeSpool`] until the JobTracker acknowledges
//! them and are sent again after a reconnect. Everything outbound is
//! coalesced, so a burst of finished runs costs a few messages.
#![warn(missing_docs)]

mod backoff;
pub mod clock;
mod config;
mod disk_spool;
mod error;
mod execute;
mod outbound;
mod runner;
pub mod runners;
mod spool;
mod starting;
mod stats;
mod tracker;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{default_identity, TaskTrackerConfig};
pub use disk_spool::{DiskSpool, SpoolLimits};
pub use error::{Error, Result};
pub use lts_common::endpoint::normalize_address;
pub use runner::{BizLogger, CapturedLogs, JobContext, JobRunner};
pub use spool::{MemorySpool, OutcomeSpool, Spooled};
pub use stats::{Stats, TaskTrackerHandle};
pub use tracker::{run, TaskTracker};

#[cfg(test)]
pub(crate) mod test_util {
    use lts_common::{Job, JobSpec, JobState};

    /// A running job `j-1` with the given timeout.
    pub(crate) fn job(timeout_ms: u64) -> Job {
        let mut spec = JobSpec::new("t-1", "workers");
        spec.timeout_ms = timeout_ms;
        Job {
            job_id: "j-1".into(),
            spec,
            state: JobState::Running,
            attempt: 1,
            seq: 0,
            submitted_at_ms: 0,
            trigger_at_ms: 0,
            updated_at_ms: 0,
            worker: String::new(),
            last_outcome: None,
            failures: 0,
            cycles: 0,
        }
    }
}

/// Compiles the examples in README.md.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
