//! The JobTracker's Prometheus metrics.
//!
//! Counters whose labels take known values are created at 0 for each of
//! them, so a scrape shows `..._total{outcome="success"} 0` before the
//! first success (Prometheus' convention: a rate over a series that
//! appears late misses its first increments).

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry,
};

/// Every metric the tracker exports.
#[derive(Clone)]
pub struct Metrics {
    /// The registry they live in.
    pub registry: Registry,
    /// Ready jobs per node group, sampled every
    /// [`QUEUE_DEPTH_INTERVAL`].
    pub queue_depth: IntGaugeVec,
    /// Jobs stored by submits.
    pub submitted: IntCounter,
    /// Jobs handed to TaskTrackers.
    pub dispatched: IntCounter,
    /// Runs finished, by outcome kind.
    pub completed: IntCounterVec,
    /// Outcomes refused as stale.
    pub stale_outcomes: IntCounter,
    /// Connected TaskTrackers per node group.
    pub task_trackers: IntGaugeVec,
    /// From a job being ready (submitted, or its trigger time) to its start.
    pub submit_to_start: Histogram,
    /// Run time reported by TaskTrackers.
    pub run_time: Histogram,
    /// Messages to peers dropped, by stream and reason.
    pub outbound_dropped: IntCounterVec,
    /// TaskTrackers registered anywhere in the cluster, per node group.
    pub cluster_task_trackers: IntGaugeVec,
    /// JobTrackers registered in the cluster.
    pub cluster_job_trackers: prometheus::IntGauge,
    /// 1 while this tracker is the cluster's master (always, alone).
    pub master: prometheus::IntGauge,
    /// New-work notices between the trackers of a cluster, by direction.
    pub peer_notices: IntCounterVec,
}

/// How often `lts_jobtracker_queue_depth` is sampled from the store.
pub const QUEUE_DEPTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Every value the `outcome` label of `lts_jobtracker_jobs_completed_total`
/// takes.
pub const OUTCOME_KINDS: [&str; 4] = ["success", "failed", "later", "error"];

/// Every `(stream, reason)` of `lts_jobtracker_outbound_dropped_total`.
pub const DROP_REASONS: [(&str, &str); 2] = [
    ("work", "peer_not_reading"),
    ("feedback", "peer_not_reading"),
];

impl Metrics {
    /// Creates the metrics in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "lts_jobtracker_queue_depth",
                "Jobs ready to run, per node group; sampled from the store every second",
            ),
            &["node_group"],
        )
        .expect("valid metric");
        let submitted = IntCounter::new(
            "lts_jobtracker_jobs_submitted_total",
            "Jobs stored by submits",
        )
        .expect("valid metric");
        let dispatched = IntCounter::new(
            "lts_jobtracker_jobs_dispatched_total",
            "Runs handed to TaskTrackers",
        )
        .expect("valid metric");
        let completed = IntCounterVec::new(
            Opts::new(
                "lts_jobtracker_jobs_completed_total",
                "Runs finished, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let stale_outcomes = IntCounter::new(
            "lts_jobtracker_stale_outcomes_total",
            "Outcomes refused because their attempt was no longer current",
        )
        .expect("valid metric");
        let task_trackers = IntGaugeVec::new(
            Opts::new(
                "lts_jobtracker_task_trackers",
                "Connected TaskTrackers, per node group",
            ),
            &["node_group"],
        )
        .expect("valid metric");
        let outbound_dropped = IntCounterVec::new(
            Opts::new(
                "lts_jobtracker_outbound_dropped_total",
                "Messages to peers dropped, by stream (work, feedback) and reason; the stream was closed, and feedback dropped so comes back when its client reconnects",
            ),
            &["stream", "reason"],
        )
        .expect("valid metric");
        let cluster_task_trackers = IntGaugeVec::new(
            Opts::new(
                "lts_jobtracker_cluster_task_trackers",
                "TaskTrackers registered anywhere in the cluster, per node group (cluster mode)",
            ),
            &["node_group"],
        )
        .expect("valid metric");
        let cluster_job_trackers = prometheus::IntGauge::new(
            "lts_jobtracker_cluster_job_trackers",
            "JobTrackers registered in the cluster (cluster mode)",
        )
        .expect("valid metric");
        let master = prometheus::IntGauge::new(
            "lts_jobtracker_master",
            "1 while this tracker is the master: it fires cron and repeat cycles and sweeps expired leases",
        )
        .expect("valid metric");
        let peer_notices = IntCounterVec::new(
            Opts::new(
                "lts_jobtracker_peer_notices_total",
                "New-work notices between the JobTrackers of a cluster: sent (one per peer per round), received, failed (not delivered)",
            ),
            &["direction"],
        )
        .expect("valid metric");
        for direction in ["sent", "received", "failed"] {
            peer_notices.with_label_values(&[direction]);
        }
        for kind in OUTCOME_KINDS {
            completed.with_label_values(&[kind]);
        }
        for (stream, reason) in DROP_REASONS {
            outbound_dropped.with_label_values(&[stream, reason]);
        }
        let buckets = exponential_buckets(0.0005, 2.0, 20).expect("valid buckets");
        let submit_to_start = Histogram::with_opts(
            HistogramOpts::new(
                "lts_jobtracker_submit_to_start_seconds",
                "Time from a job being ready to run to its start on a TaskTracker",
            )
            .buckets(buckets.clone()),
        )
        .expect("valid metric");
        let run_time = Histogram::with_opts(
            HistogramOpts::new("lts_jobtracker_run_seconds", "Run time of jobs").buckets(buckets),
        )
        .expect("valid metric");
        for c in [
            Box::new(queue_depth.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(submitted.clone()),
            Box::new(dispatched.clone()),
            Box::new(completed.clone()),
            Box::new(stale_outcomes.clone()),
            Box::new(task_trackers.clone()),
            Box::new(submit_to_start.clone()),
            Box::new(run_time.clone()),
            Box::new(outbound_dropped.clone()),
            Box::new(cluster_task_trackers.clone()),
            Box::new(cluster_job_trackers.clone()),
            Box::new(master.clone()),
            Box::new(peer_notices.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            queue_depth,
            submitted,
            dispatched,
            completed,
            stale_outcomes,
            task_trackers,
            submit_to_start,
            run_time,
            outbound_dropped,
            cluster_task_trackers,
            cluster_job_trackers,
            master,
            peer_notices,
        }
    }

    /// The metrics in the Prometheus text format, as a scrape sees them.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_of_known_labels_start_at_zero() {
        let metrics = Metrics::new();
        let text = metrics.render();
        for kind in OUTCOME_KINDS {
            let line = format!("lts_jobtracker_jobs_completed_total{{outcome=\"{kind}\"}} 0");
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        for (stream, reason) in DROP_REASONS {
            let line = format!(
                "lts_jobtracker_outbound_dropped_total{{reason=\"{reason}\",stream=\"{stream}\"}} 0"
            );
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        assert!(
            text.contains("lts_jobtracker_jobs_submitted_total 0"),
            "{text}"
        );
        // A gauge per node group appears with its first sample; its help
        // says how current it is.
        metrics.queue_depth.with_label_values(&["g"]).set(3);
        let text = metrics.render();
        assert!(
            text.contains("queue_depth Jobs ready to run, per node group; sampled from the store every second"),
            "{text}"
        );
    }
}
