//! The JobTracker's Prometheus metrics.
//!
//! Counters whose labels take known values are created at 0 for each of
//! them, so a scrape shows `..._total{outcome="success"} 0` before the
//! first success (Prometheus' convention: a rate over a series that
//! appears late misses its first increments).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

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
    /// Node groups shown under their own name; see
    /// [`Metrics::node_group_label`].
    node_group_labels: Arc<Mutex<HashSet<String>>>,
    /// Reports of runs a TaskTracker stream was not given, refused, by
    /// message (`started`, `outcome`, `biz_log`).
    pub refused_runs: IntCounterVec,
    /// Requests, streams, connections or values refused or cut by a limit,
    /// by limit (see docs/limits.md).
    pub limited: IntCounterVec,
}

/// Every value the `message` label of `lts_jobtracker_refused_runs_total`
/// takes.
pub const REFUSED_RUN_MESSAGES: [&str; 3] = ["started", "outcome", "biz_log"];

/// Every value the `direction` label of `lts_jobtracker_peer_notices_total`
/// takes.
pub const PEER_NOTICE_DIRECTIONS: [&str; 3] = ["sent", "received", "failed"];

/// Every value the `limit` label of `lts_jobtracker_limited_total` takes.
pub const LIMITS: [&str; 11] = [
    "field_length",
    "duplicate_identity",
    "credit",
    "work_not_read",
    "feedback_in_flight",
    "node_groups_per_call",
    "node_group_jobs",
    "node_group_bytes",
    "submit_rate",
    "connections_per_peer",
    "connections_total",
];

/// Node-group label values a metric shows at most; the groups beyond show
/// under [`OTHER_NODE_GROUPS`].
pub const MAX_NODE_GROUP_LABELS: usize = 200;

/// The label value of the node groups beyond [`MAX_NODE_GROUP_LABELS`].
/// A node group really named `_other` shares its series with them.
pub const OTHER_NODE_GROUPS: &str = "_other";

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
        let refused_runs = IntCounterVec::new(
            Opts::new(
                "lts_jobtracker_refused_runs_total",
                "Reports from a TaskTracker stream about runs it was not given (another stream's, another node group's, or unknown jobs), refused, by message",
            ),
            &["message"],
        )
        .expect("valid metric");
        for m in REFUSED_RUN_MESSAGES {
            refused_runs.with_label_values(&[m]);
        }
        let limited = IntCounterVec::new(
            Opts::new(
                "lts_jobtracker_limited_total",
                "Requests, streams, connections or values refused or cut by a limit, by limit (see docs/limits.md)",
            ),
            &["limit"],
        )
        .expect("valid metric");
        for l in LIMITS {
            limited.with_label_values(&[l]);
        }
        for direction in PEER_NOTICE_DIRECTIONS {
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
            Box::new(refused_runs.clone()),
            Box::new(limited.clone()),
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
            refused_runs,
            limited,
            node_group_labels: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Counts one refusal by `limit` (one of [`LIMITS`]).
    pub fn limit_hit(&self, limit: &str) {
        self.limited.with_label_values(&[limit]).inc();
    }

    /// Sets a per-node-group gauge from a full sample: groups beyond the
    /// label cap add up under [`OTHER_NODE_GROUPS`], and label values of
    /// an earlier sample (`shown`) that are not in this one read 0.
    pub fn set_per_group(
        &self,
        gauge: &IntGaugeVec,
        shown: &mut HashSet<String>,
        sample: impl IntoIterator<Item = (String, i64)>,
    ) {
        let mut sums: std::collections::HashMap<String, i64> = Default::default();
        for (group, n) in sample {
            let label = self.node_group_label(&group).to_string();
            *sums.entry(label).or_default() += n;
        }
        for gone in shown.iter().filter(|g| !sums.contains_key(*g)) {
            gauge.with_label_values(&[gone.as_str()]).set(0);
        }
        for (label, n) in &sums {
            gauge.with_label_values(&[label.as_str()]).set(*n);
        }
        shown.extend(sums.into_keys());
    }

    /// The label value `node_group` shows under: itself for the first
    /// [`MAX_NODE_GROUP_LABELS`] groups seen, [`OTHER_NODE_GROUPS`] for the
    /// rest, so a flood of node groups cannot grow a scrape without bound.
    pub fn node_group_label<'a>(&self, node_group: &'a str) -> &'a str {
        let mut seen = self
            .node_group_labels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if seen.contains(node_group) {
            return node_group;
        }
        if seen.len() < MAX_NODE_GROUP_LABELS {
            seen.insert(node_group.to_string());
            return node_group;
        }
        OTHER_NODE_GROUPS
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
        let labelled = [
            ("limited", "limit", &LIMITS[..]),
            ("refused_runs", "message", &REFUSED_RUN_MESSAGES[..]),
            ("peer_notices", "direction", &PEER_NOTICE_DIRECTIONS[..]),
        ];
        for (name, label, values) in labelled {
            for value in values {
                let line = format!("lts_jobtracker_{name}_total{{{label}=\"{value}\"}} 0");
                assert!(
                    text.lines().any(|l| l == line),
                    "{line} missing in:\n{text}"
                );
            }
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

    #[test]
    fn node_groups_beyond_the_label_cap_add_up_under_one_value() {
        let metrics = Metrics::new();
        let mut shown = HashSet::new();
        let groups = (0..MAX_NODE_GROUP_LABELS + 50).map(|i| (format!("g{i}"), 1));
        metrics.set_per_group(&metrics.queue_depth, &mut shown, groups);
        let text = metrics.render();
        let lines = text
            .lines()
            .filter(|l| l.starts_with("lts_jobtracker_queue_depth{"))
            .count();
        assert_eq!(lines, MAX_NODE_GROUP_LABELS + 1, "{text}");
        assert!(
            text.contains("lts_jobtracker_queue_depth{node_group=\"_other\"} 50"),
            "{text}"
        );
        // The first groups keep their own series.
        assert_eq!(metrics.node_group_label("g0"), "g0");
    }
}
