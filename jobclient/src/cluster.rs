//! A JobClient of a cluster: the JobTrackers are found through ZooKeeper
//! instead of a typed list of addresses.
//!
//! [`JobClient::connect_cluster`] opens one ZooKeeper session, follows the
//! JobTrackers registered there (a client spreads over them and moves to
//! another when its tracker fails or leaves the cluster) and, when a submit
//! node group is given, registers the client under it so operators see it
//! in `jobclient nodes`. [`cluster_view`] reads the registry once, for
//! listing the nodes.

use std::sync::Arc;
use std::time::Duration;

use lts_cluster::{Cluster, ClusterView, NodeInfo, Role, ZkConfig, DEFAULT_SESSION_TIMEOUT};

use crate::client::{ClientOptions, JobClient};
use crate::error::{Error, Result};

/// Where a cluster's ZooKeeper is and how this client appears there.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `host:port[,host:port...][/chroot]`.
    pub zookeeper: String,
    /// The cluster name every node of the cluster gives.
    pub cluster: String,
    /// The ZooKeeper session timeout (1 s to 60 s).
    pub session_timeout: Duration,
    /// The submit node group to register this client under, if any. A
    /// client that only submits and queries need not register.
    pub node_group: Option<String>,
    /// This client's name in the registry (when it registers).
    pub identity: String,
}

impl ClusterOptions {
    /// Options for cluster `cluster` at `zookeeper`, with the default
    /// session timeout, not registering.
    pub fn new(zookeeper: impl Into<String>, cluster: impl Into<String>) -> Self {
        ClusterOptions {
            zookeeper: zookeeper.into(),
            cluster: cluster.into(),
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            node_group: None,
            identity: default_identity(),
        }
    }

    fn zk_config(&self) -> Result<ZkConfig> {
        Ok(ZkConfig::parse(
            &self.zookeeper,
            &self.cluster,
            self.session_timeout,
        )?)
    }
}

/// `host:pid`, readable in `jobclient nodes`.
fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "jobclient".to_string());
    format!("{host}:{}", std::process::id())
}

impl JobClient {
    /// Joins the cluster `cluster` names and waits, at most
    /// `options.connect_timeout`, until ZooKeeper lists a JobTracker; fails
    /// with [`Error::Cluster`] when ZooKeeper cannot be reached and
    /// [`Error::Unavailable`] when no JobTracker is registered. The client
    /// then connects on its first call, like [`JobClient::new`].
    pub async fn connect_cluster(cluster: ClusterOptions, options: ClientOptions) -> Result<Self> {
        let zk = cluster.zk_config()?;
        let joined = Cluster::connect(zk).await?;
        if let Some(group) = &cluster.node_group {
            let info = NodeInfo {
                role: Role::JobClient,
                node_group: group.clone(),
                identity: cluster.identity.clone(),
                address: String::new(),
                slots: 0,
                version: env!("CARGO_PKG_VERSION").to_string(),
                started_at_ms: lts_common::now_ms(),
            };
            if let Err(e) = joined.register(info).await {
                joined.close().await;
                return Err(e.into());
            }
        }
        let resolver = joined.resolver();
        let mut list = resolver.watch();
        let known = tokio::time::timeout(
            options.connect_timeout,
            list.wait_for(|addresses| !addresses.is_empty()),
        )
        .await;
        if !matches!(known, Ok(Ok(_))) {
            joined.close().await;
            return Err(Error::Unavailable {
                tried: Vec::new(),
                last_error: format!(
                    "no JobTracker is registered in cluster {} at ZooKeeper {} (waited {:?})",
                    cluster.cluster, cluster.zookeeper, options.connect_timeout
                ),
            });
        }
        Ok(JobClient::in_cluster(resolver, options, joined))
    }
}

/// Every node registered in the cluster `cluster` names, and the master,
/// as ZooKeeper shows them now. Waits at most `timeout` for the first view.
pub async fn cluster_view(cluster: &ClusterOptions, timeout: Duration) -> Result<ClusterView> {
    let joined: Arc<Cluster> = Cluster::connect(cluster.zk_config()?).await?;
    let mut view = joined.view();
    // The first view arrives once the registry has been read; a cluster
    // with no JobTracker yet shows what there is when the wait ends.
    let _ = tokio::time::timeout(
        timeout,
        view.wait_for(|v| !v.nodes.is_empty() && v.master.is_some()),
    )
    .await;
    let seen = view.borrow().clone();
    joined.close().await;
    Ok(seen)
}
