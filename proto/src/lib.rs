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

/// Version of the TaskTracker protocol spoken on `WorkService`: the number
/// of `PROTOCOL_VERSION_CURRENT` in `work_service.proto`, so clients in
/// other languages read the same value from their generated code. A
/// TaskTracker that says another version in its hello is refused.
pub const PROTOCOL_VERSION: u32 = v1::ProtocolVersion::Current as u32;

pub use tonic;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_version_is_the_one_the_proto_files_publish() {
        assert_eq!(PROTOCOL_VERSION, v1::ProtocolVersion::Current as u32);
        // The value sent in every hello so far: changing it refuses every
        // TaskTracker built before, so it changes only with the protocol.
        assert_eq!(PROTOCOL_VERSION, 1);
        assert_eq!(
            v1::ProtocolVersion::try_from(PROTOCOL_VERSION as i32),
            Ok(v1::ProtocolVersion::Current)
        );
        assert_eq!(
            v1::ProtocolVersion::Current.as_str_name(),
            "PROTOCOL_VERSION_CURRENT"
        );
    }
}
