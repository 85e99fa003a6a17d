//! The gRPC services: [`job::JobApi`] for JobClients, [`admin::AdminApi`]
//! for operators and [`work::WorkApi`] for TaskTrackers.

pub mod admin;
pub mod job;
pub mod work;
