//! The gRPC services: [`job::JobApi`] for JobClients, [`admin::AdminApi`]
//! for operators, [`work::WorkApi`] for TaskTrackers and
//! [`cluster::ClusterApi`] for the other JobTrackers of a cluster.

pub mod admin;
pub mod cluster;
pub mod job;
pub mod work;
