//! What can go wrong in cluster mode.

use std::time::Duration;

/// Why a cluster operation failed; every variant names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The ZooKeeper connect string cannot be used.
    #[error("bad ZooKeeper connect string {connect:?}: {reason}")]
    BadConnectString {
        /// The string as given.
        connect: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A cluster name, node group or identity cannot be used as a znode name.
    #[error("bad {what} {name:?}: {reason}")]
    BadName {
        /// Which kind of name (`cluster name`, `node group`, `identity`).
        what: &'static str,
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The ZooKeeper session timeout is out of range.
    #[error("bad ZooKeeper session timeout {0:?}: it must be between 1 s and 60 s")]
    BadSessionTimeout(Duration),
    /// No ZooKeeper server of the list answered in time.
    #[error("cannot reach ZooKeeper at {hosts} within {timeout:?}: {reason}")]
    Unreachable {
        /// The hosts that were tried.
        hosts: String,
        /// How long connecting was tried.
        timeout: Duration,
        /// The last error seen.
        reason: String,
    },
    /// A ZooKeeper request failed.
    #[error("ZooKeeper {op} {path} failed: {source}")]
    ZooKeeper {
        /// The request (`create`, `delete`, ...).
        op: &'static str,
        /// The znode it was about.
        path: String,
        /// The error ZooKeeper or the client returned.
        #[source]
        source: zookeeper_client::Error,
    },
    /// Node data could not be encoded.
    #[error("cannot encode the data of node {identity}: {source}")]
    Encode {
        /// The node's identity.
        identity: String,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// The cluster handle was closed.
    #[error("the cluster connection is closed")]
    Closed,
}

/// Results of this crate.
pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

pub(crate) fn zk(
    op: &'static str,
    path: &str,
) -> impl FnOnce(zookeeper_client::Error) -> ClusterError {
    let path = path.to_string();
    move |source| ClusterError::ZooKeeper { op, path, source }
}
