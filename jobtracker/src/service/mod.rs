//! The gRPC services: [`job::JobApi`] for JobClients and
//! [`work::WorkApi`] for TaskTrackers.

pub mod job;
pub mod work;
