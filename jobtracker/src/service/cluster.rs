//! `ClusterService`: what the other JobTrackers of a cluster tell this one.

use std::sync::Arc;

use lts_proto::v1 as pb;
use pb::cluster_service_server::ClusterService;
use tonic::{Request, Response, Status};

use crate::peers::MAX_GROUPS_PER_CALL;
use crate::Tracker;

/// The `ClusterService` implementation.
#[derive(Clone)]
pub struct ClusterApi {
    tracker: Arc<Tracker>,
}

impl ClusterApi {
    /// The service over a tracker's state.
    pub fn new(tracker: Arc<Tracker>) -> Self {
        ClusterApi { tracker }
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn notify_work(
        &self,
        request: Request<pb::NotifyWorkRequest>,
    ) -> Result<Response<pb::NotifyWorkResponse>, Status> {
        let r = request.into_inner();
        for (field, names) in [
            ("node_groups", &r.node_groups),
            ("feedback_groups", &r.feedback_groups),
        ] {
            if names.len() > MAX_GROUPS_PER_CALL {
                return Err(Status::invalid_argument(format!(
                    "{field}: {} names, at most {MAX_GROUPS_PER_CALL}",
                    names.len()
                )));
            }
        }
        self.tracker
            .metrics
            .peer_notices
            .with_label_values(&["received"])
            .inc();
        tracing::trace!(from = %r.from_tracker, groups = ?r.node_groups, "new work elsewhere");
        for g in &r.node_groups {
            // Only the local dispatcher: the sender told the others.
            self.tracker.dispatcher.wake_local(g);
        }
        let subscribed = self.tracker.feedback.subscribed_groups();
        if r.feedback_groups.iter().any(|g| subscribed.contains(g)) {
            self.tracker.feedback_news.notify_one();
        }
        Ok(Response::new(pb::NotifyWorkResponse {}))
    }
}
