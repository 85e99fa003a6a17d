//! Generated code for the `lts.v1` gRPC API.
//!
//! The `.proto` files beside this crate are the public API: JobClients,
//! TaskTrackers and tools in other languages generate their code from them.
//! Start with `lts/v1/job.proto` (the job model), then the two services:
//! `JobService` (clients) and `WorkService` (TaskTrackers).
#![warn(missing_docs)]

/// The `lts.v1` package.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("lts.v1");

    /// Encoded file descriptor set of the API, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lts_v1_descriptor");
}

/// Version of the TaskTracker protocol spoken on `WorkService`. A TaskTracker
/// that says another version in its hello is refused.
pub const PROTOCOL_VERSION: u32 = 1;

pub use tonic;
