//! The crate's error type.

/// What can stop a TaskTracker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config value is wrong; nothing was started.
    #[error("{field}: {message}")]
    Config {
        /// The option, named as the command line spells it.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The JobTracker speaks another protocol version. Retrying cannot help:
    /// upgrade the older side.
    #[error("the JobTracker refused this TaskTracker: {0}")]
    ProtocolMismatch(String),
    /// The JobTracker refused the hello (bad node group, slots or identity).
    /// Retrying cannot help: fix the config.
    #[error("the JobTracker refused this TaskTracker: {0}")]
    Refused(String),
    /// The metrics could not be registered (a name is taken in the registry).
    #[error("cannot register TaskTracker metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The cluster could not be joined (ZooKeeper unreachable, a bad
    /// name, the registration refused).
    #[error("cluster: {0}")]
    Cluster(#[from] lts_cluster::ClusterError),
    /// The outcome spool failed.
    #[error("outcome spool: {0}")]
    Spool(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
