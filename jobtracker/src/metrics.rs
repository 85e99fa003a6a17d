//! The JobTracker's Prometheus metrics.

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry,
};

/// Every metric the tracker exports.
#[derive(Clone)]
pub struct Metrics {
    /// The registry they live in.
    pub registry: Registry,
    /// Ready jobs per node group.
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
}

impl Metrics {
    /// Creates the metrics in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "lts_jobtracker_queue_depth",
                "Jobs ready to run, per node group",
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
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
