//! A JobTracker in cluster mode: registered in ZooKeeper, elected master
//! or not, telling the other trackers of new work.
//!
//! [`serve_in_cluster`] wraps [`crate::serve_tracker`]: before serving it
//! joins the cluster (one ZooKeeper session), takes part in the master
//! election (its [`Election`] follows the ZooKeeper one, so the once-only
//! work runs only on the master, see [`crate::election`]), registers this
//! tracker for TaskTrackers and JobClients to find, and starts
//! [`Peers`], which tells the other trackers of work stored here. On a
//! graceful stop it leaves the cluster first: its mastership and
//! registration go at once, not when the session expires, and the others
//! take over while this one drains. `docs/cluster.md` is the operator's
//! view.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use lts_cluster::{Cluster, ClusterView, NodeInfo, Role, ZkConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::election::{Election, Term};
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::{ClusterSettings, Error, Result, TrackerConfig};

/// The election of a tracker in a ZooKeeper cluster: leading, in the term
/// ZooKeeper gave, while its election znode is the lowest and its session
/// is connected.
pub struct ZooKeeperElection {
    leadership: watch::Receiver<Option<Term>>,
}

impl Election for ZooKeeperElection {
    fn leadership(&self) -> watch::Receiver<Option<Term>> {
        self.leadership.clone()
    }
}

/// The address others reach a tracker at: `advertise` if given, else the
/// bound address, with the host name in place of an unspecified IP.
pub fn advertised_address(advertise: Option<&str>, bound: SocketAddr) -> String {
    match advertise {
        Some(a) => a.to_string(),
        None if bound.ip().is_unspecified() => {
            format!("{}:{}", crate::config::host_name(), bound.port())
        }
        None => bound.to_string(),
    }
}

/// Runs a tracker that joins the cluster `settings` names, until
/// `shutdown` resolves; see the module doc.
pub async fn serve_in_cluster(
    config: TrackerConfig,
    settings: ClusterSettings,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let zk = ZkConfig::parse(
        &settings.zookeeper,
        &settings.name,
        settings.session_timeout,
    )
    .map_err(|e| Error::Config(format!("--zookeeper: {e}")))?;
    let cluster = Cluster::connect(zk)
        .await
        .map_err(|e| Error::Config(format!("--zookeeper: {e}")))?;
    let election = Arc::new(ZooKeeperElection {
        leadership: cluster.elect(&settings.identity),
    });
    let tracker = match crate::create_tracker_with_election(config, election).await {
        Ok(t) => t,
        Err(e) => {
            cluster.close().await;
            return Err(e);
        }
    };
    let address = advertised_address(settings.advertise.as_deref(), listener.local_addr()?);
    let info = NodeInfo {
        role: Role::JobTracker,
        node_group: String::new(),
        identity: settings.identity.clone(),
        address: address.clone(),
        slots: 0,
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at_ms: lts_common::now_ms(),
    };
    if let Err(e) = cluster.register(info).await {
        cluster.close().await;
        return Err(Error::Config(format!(
            "cannot register in cluster {}: {e}",
            settings.name
        )));
    }
    tracing::info!(
        cluster = %settings.name,
        identity = %settings.identity,
        %address,
        "joined the cluster"
    );

    let peers = Peers::with_options(
        settings.identity.clone(),
        tracker.metrics.clone(),
        tracker.config.security.peers.clone(),
    );
    tracker.dispatcher.set_peers(peers.clone());
    if tracker.peers.set(peers.clone()).is_err() {
        tracing::warn!("the cluster's trackers were already set; keeping the first");
    }
    let (peer_tx, peer_rx) = watch::channel(Vec::new());
    tracker.tasks.spawn(follow_view(
        cluster.view(),
        settings.identity.clone(),
        peer_tx,
        tracker.metrics.clone(),
        tracker.shutdown.clone(),
    ));
    tracker
        .tasks
        .spawn(peers.run(peer_rx, tracker.shutdown.clone()));

    // A graceful stop leaves the cluster before draining: leadership ends
    // here first (the once-only work stops), then the election znode and
    // registration go, so another tracker leads within milliseconds and
    // clients move on; only then does the tracker drain. The token is left
    // to `serve_tracker`: cancelling it here would drop this future
    // halfway through leaving.
    let stop = {
        let cluster = cluster.clone();
        let token = tracker.shutdown.clone();
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = token.cancelled() => {}
            }
            cluster.close().await;
            tracing::info!("left the cluster");
        }
    };
    let served = crate::serve_tracker(tracker, listener, stop).await;
    // Also when serving failed: leave, so nobody waits for the session.
    cluster.close().await;
    served
}

/// Keeps the peer list (every other tracker's address) and the cluster
/// gauges current from the registry.
async fn follow_view(
    mut view: watch::Receiver<ClusterView>,
    identity: String,
    peers: watch::Sender<Vec<String>>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut shown: std::collections::HashSet<String> = Default::default();
    loop {
        {
            let v = view.borrow_and_update();
            let others: Vec<String> = v
                .job_trackers()
                .into_iter()
                .filter(|n| n.identity != identity && !n.address.is_empty())
                .map(|n| n.address.clone())
                .collect();
            peers.send_if_modified(|p| {
                if *p == others {
                    return false;
                }
                *p = others;
                true
            });
            metrics
                .cluster_job_trackers
                .set(v.job_trackers().len() as i64);
            let groups = v.task_tracker_groups();
            metrics.set_per_group(
                &metrics.cluster_task_trackers,
                &mut shown,
                groups.into_iter().map(|(g, n)| (g, n as i64)),
            );
        }
        tokio::select! {
            r = view.changed() => if r.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_address_is_reachable_by_others() {
        let bound: SocketAddr = "127.0.0.1:7070".parse().expect("addr");
        assert_eq!(advertised_address(None, bound), "127.0.0.1:7070");
        assert_eq!(
            advertised_address(Some("jt1.example:7070"), bound),
            "jt1.example:7070"
        );
        let any: SocketAddr = "0.0.0.0:7071".parse().expect("addr");
        let shown = advertised_address(None, any);
        assert!(
            shown.ends_with(":7071") && !shown.starts_with("0.0.0.0"),
            "{shown}"
        );
    }
}
