//! Telling the other JobTrackers of a cluster that a node group has work.
//!
//! Trackers of a cluster share one store; each dispatches only to the
//! TaskTrackers connected to it. When this tracker stores work for a node
//! group (a submit, a cycle fired, a run put back), the TaskTrackers of
//! that group may be connected to another tracker, which would otherwise
//! find the work at its next poll of the store. [`Peers`] sends the group
//! names to every other tracker (`ClusterService.NotifyWork`), and their
//! dispatchers claim at once.
//!
//! Names are coalesced: while one round of calls is out, new names wait
//! and go together in the next round, so a burst of submits costs one call
//! per peer per round trip, not one per submit. A lost call costs a poll
//! interval of delay, never work: the store holds the jobs.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lts_common::endpoint::{EndpointOptions, TrackerChannel as Channel};
use lts_proto::v1 as pb;
use pb::cluster_service_client::ClusterServiceClient;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// Node group names sent in one call at most (the API's limit).
pub const MAX_GROUPS_PER_CALL: usize = 1_024;

/// How long one call to a peer may take before it is given up.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// The other trackers of this one's cluster, and the node groups to tell
/// them about.
pub struct Peers {
    /// This tracker's identity, sent so the receivers' logs name it.
    identity: String,
    metrics: crate::metrics::Metrics,
    // std Mutex: held to add or take names, never across an await.
    pending: Mutex<Pending>,
    wake: Notify,
    /// How the other trackers are reached (TLS, credentials).
    options: EndpointOptions,
}

impl Peers {
    /// Peers of the tracker named `identity`, counted in `metrics`.
    pub fn new(identity: impl Into<String>, metrics: crate::metrics::Metrics) -> Arc<Self> {
        Self::with_options(identity, metrics, EndpointOptions::default())
    }

    /// [`Peers::new`] reaching the other trackers with `options` (their
    /// TLS settings and credentials; the timeouts are this module's).
    pub fn with_options(
        identity: impl Into<String>,
        metrics: crate::metrics::Metrics,
        options: EndpointOptions,
    ) -> Arc<Self> {
        Arc::new(Peers {
            identity: identity.into(),
            metrics,
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            options: options
                .with_connect_timeout(CALL_TIMEOUT)
                .with_request_timeout(CALL_TIMEOUT),
        })
    }

    /// `node_group` has new work: the other trackers hear of it in the
    /// next round.
    pub fn announce(&self, node_group: &str) {
        add(&mut lock(&self.pending).work, node_group);
        self.wake.notify_one();
    }

    /// Feedback for JobClients of `submit_node_group` was stored: the
    /// other trackers hear of it in the next round.
    pub fn announce_feedback(&self, submit_node_group: &str) {
        add(&mut lock(&self.pending).feedback, submit_node_group);
        self.wake.notify_one();
    }

    /// The next round's names: work groups, feedback groups.
    fn take(&self) -> (Vec<String>, Vec<String>) {
        let mut pending = lock(&self.pending);
        (
            take_some(&mut pending.work),
            take_some(&mut pending.feedback),
        )
    }

    /// Sends announced names to the trackers `addresses` lists (every
    /// other tracker of the cluster, kept current by the registry) until
    /// `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        mut addresses: watch::Receiver<Vec<String>>,
        shutdown: CancellationToken,
    ) {
        let mut clients: HashMap<String, ClusterServiceClient<Channel>> = HashMap::new();
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = shutdown.cancelled() => return,
            }
            loop {
                let (groups, feedback_groups) = self.take();
                if groups.is_empty() && feedback_groups.is_empty() {
                    break;
                }
                let current = addresses.borrow_and_update().clone();
                clients.retain(|a, _| current.contains(a));
                let mut calls = Vec::with_capacity(current.len());
                for address in &current {
                    let client = match clients.get(address) {
                        Some(c) => c.clone(),
                        None => match connect_lazy(address, &self.options) {
                            Some(c) => {
                                clients.insert(address.clone(), c.clone());
                                c
                            }
                            None => continue,
                        },
                    };
                    let request = pb::NotifyWorkRequest {
                        node_groups: groups.clone(),
                        from_tracker: self.identity.clone(),
                        feedback_groups: feedback_groups.clone(),
                    };
                    calls.push(notify(
                        client,
                        address.clone(),
                        request,
                        self.metrics.clone(),
                    ));
                }
                tokio::select! {
                    _ = futures::future::join_all(calls) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// Names waiting for the next round.
#[derive(Default)]
struct Pending {
    work: BTreeSet<String>,
    feedback: BTreeSet<String>,
}

fn add(set: &mut BTreeSet<String>, name: &str) {
    if !set.contains(name) {
        set.insert(name.to_string());
    }
}

fn take_some(set: &mut BTreeSet<String>) -> Vec<String> {
    let mut taken = Vec::new();
    while taken.len() < MAX_GROUPS_PER_CALL {
        match set.pop_first() {
            Some(g) => taken.push(g),
            None => break,
        }
    }
    taken
}

fn connect_lazy(address: &str, options: &EndpointOptions) -> Option<ClusterServiceClient<Channel>> {
    match lts_common::endpoint::JobTrackerEndpoint::new(address, options) {
        Ok(e) => Some(ClusterServiceClient::new(e.connect_lazy())),
        Err(e) => {
            tracing::warn!("peer tracker {address}: {e}");
            None
        }
    }
}

async fn notify(
    mut client: ClusterServiceClient<Channel>,
    address: String,
    request: pb::NotifyWorkRequest,
    metrics: crate::metrics::Metrics,
) {
    let failed = match tokio::time::timeout(CALL_TIMEOUT, client.notify_work(request)).await {
        Ok(Ok(_)) => false,
        Ok(Err(status)) => {
            tracing::debug!("peer tracker {address} did not take new-work news: {status}");
            true
        }
        Err(_) => {
            tracing::debug!("peer tracker {address} did not answer new-work news in time");
            true
        }
    };
    let direction = if failed { "failed" } else { "sent" };
    metrics.peer_notices.with_label_values(&[direction]).inc();
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
