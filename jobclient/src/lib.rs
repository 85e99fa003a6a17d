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
//! Every error is an [`Error`]; [`Error::Unavailable`] means no tracker
//! answered and names the addresses tried.
//!
//! The [`cli`] module is the `jobclient` command line tool.
//!
//! # Spooling
//!
//! A client that keeps submissions in a local store while no tracker is
//! reachable is planned, not written. It will wrap [`JobClient`]: on an
//! error for which [`Error::is_unavailable`] holds it stores the batch and
//! answers with a `Spooled` outcome ([`SubmitOutcome`] is
//! `#[non_exhaustive]` for this reason), and replays the store in order
//! later; the trackers' dedup on task id makes the replay safe.
#![warn(missing_docs)]

pub mod cli;
mod client;
mod error;
mod feedback;

pub use client::{
    normalize_address, ClientOptions, Feedback, JobClient, JobFilter, JobPage, SubmitOutcome,
    SubmitRefusal, DEFAULT_JOBTRACKER,
};
pub use error::{Error, Result};
pub use feedback::FeedbackSubscription;
