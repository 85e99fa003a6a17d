//! Cluster mode over ZooKeeper: how the nodes of a cluster find each other
//! and which JobTracker is the master.
//!
//! Start with [`Cluster`]: [`Cluster::connect`] opens one ZooKeeper session
//! for the process (from a [`ZkConfig`]); a node then
//! [registers](Cluster::register) itself as an ephemeral znode holding its
//! [`NodeInfo`], follows every node through [`Cluster::view`], finds
//! JobTrackers through [`Cluster::resolver`] (a
//! [`lts_common::resolver::Resolver`]) and, on a JobTracker, takes part in
//! the master election with [`Cluster::elect`].
//!
//! The znodes of cluster `C` live under `<chroot>/lts/C/`:
//! `jobtrackers/<identity>`, `tasktrackers/<node group>/<identity>`,
//! `jobclients/<node group>/<identity>` (each holding [`NodeInfo`] as JSON)
//! and `election/n_<sequence>` (holding the contender's identity). The
//! contender with the lowest sequence number leads, and that number plus
//! one is its term.
#![warn(missing_docs)]

mod cluster;
mod config;
mod error;
mod node;
mod resolver;

pub use cluster::Cluster;
pub use config::{ZkConfig, DEFAULT_SESSION_TIMEOUT};
pub use error::{ClusterError, Result};
pub use node::{ClusterView, NodeInfo, Role};
pub use resolver::ClusterResolver;
