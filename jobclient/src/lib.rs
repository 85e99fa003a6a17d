//! The JobClient of the scheduler: submit jobs to the JobTrackers, look
//! them up, cancel them, and receive the feedback of finished jobs.
//!
//! Start with [`JobClient`]: [`JobClient::connect`] takes the addresses of
//! one or more JobTrackers, then [`JobClient::submit`] sends a batch of
//! [`lts_common::JobSpec`]s and returns a [`SubmitOutcome`] per job. Jobs
//! that set `need_feedback` report their outcome to the clients of their
//! submit node group: subscribe with [`JobClient::feedback`] and read a
//! [`FeedbackSubscription`]. Feedback is delivered at least once, so the
//! code that handles it must be idempotent.
//!
//! Operators suspend, resume, trigger, delete and update jobs of every kind
//! with an [`AdminClient`], a view of the same client ([`JobClient::admin`]).
//!
//! Every error is an [`Error`]; [`Error::Unavailable`] means no tracker
//! answered and names the addresses tried.
//!
//! # Example
//!
//! ```no_run
//! use lts_common::JobSpec;
//! use lts_jobclient::{JobClient, SubmitOutcome};
//!
//! async fn demo() -> Result<(), lts_jobclient::Error> {
//!     let client = JobClient::connect(vec!["10.0.0.1:7070".into(), "10.0.0.2:7070".into()]).await?;
//!
//!     let mut job = JobSpec::new("order-42", "workers");
//!     job.payload = br#"{"program": "/usr/local/bin/ship", "args": ["42"]}"#.to_vec();
//!     job.need_feedback = true;
//!     job.submit_node_group = "shop".into();
//!     for outcome in client.submit(vec![job]).await? {
//!         match outcome {
//!             SubmitOutcome::Accepted { job_id, .. } => println!("stored as {job_id}"),
//!             SubmitOutcome::Refused(r) => println!("refused: {} {}: {}", r.code, r.field, r.message),
//!             _ => {}
//!         }
//!     }
//!
//!     let mut feedback = client.feedback("shop", "").await?;
//!     loop {
//!         let batch = feedback.next().await?;
//!         for item in &batch {
//!             // Must be idempotent: an item can come more than once.
//!             println!("{} finished: {:?}", item.task_id, item.outcome);
//!         }
//!         feedback.ack(batch.into_iter().map(|f| f.feedback_id)).await?;
//!     }
//! }
//! ```
//!
//! The [`cli`] module is the `jobclient` command line tool.
//!
//! # Spooling
//!
//! [`JobClient::with_spool`] makes a [`SpoolingClient`]: when no tracker
//! accepts a batch it writes it to a spool directory, flushes it, and
//! answers [`SubmitOutcome::Spooled`]; in the background it replays the
//! spool in submit order once a tracker is reachable. The trackers' dedup
//! on task id makes each job exist once however often it is replayed. See
//! `docs/spool.md`.
#![warn(missing_docs)]

mod admin;
pub mod cli;
mod client;
mod cluster;
pub mod coalesce;
mod error;
mod feedback;
mod spool;

pub use admin::{AdminClient, JobUpdate};
pub use client::{
    normalize_address, ClientOptions, Feedback, JobClient, JobFilter, JobPage, LogPage, LogQuery,
    SubmitOutcome, SubmitRefusal, DEFAULT_JOBTRACKER,
};
pub use cluster::{cluster_view, ClusterOptions};
pub use error::{Error, Result};
pub use feedback::FeedbackSubscription;
pub use lts_cluster::{ClusterView, NodeInfo, Role};
pub use spool::{
    AsideReason, ReplayProgress, SetAside, SpoolEvent, SpoolOptions, SpoolStatus, SpoolingClient,
};
