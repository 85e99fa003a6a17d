//! Counters for operators (Prometheus) and for tests and benchmarks
//! ([`TaskTrackerHandle`]).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use lts_proto::v1 as pb;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::Notify;

use crate::error::Result;

/// The Prometheus metrics of one TaskTracker.
#[derive(Clone)]
pub(crate) struct Metrics {
    slots_busy: IntGauge,
    slots_total: IntGauge,
    ahead_held: IntGauge,
    unacked: IntGauge,
    on_disk: IntGauge,
    // Resolved once: a label lookup per finished run would hash every time.
    runs: [IntCounter; 4],
}

impl Metrics {
    pub(crate) fn register(registry: &Registry) -> Result<Metrics> {
        let slots_busy = IntGauge::new(
            "lts_tasktracker_slots_busy",
            "Slots running a job right now.",
        )?;
        let slots_total = IntGauge::new(
            "lts_tasktracker_slots_total",
            "Slots this TaskTracker offers.",
        )?;
        let ahead_held = IntGauge::new(
            "lts_tasktracker_ahead_held",
            "Jobs sent ahead of their trigger time, held until it comes.",
        )?;
        let unacked = IntGauge::new(
            "lts_tasktracker_outcomes_unacked",
            "Outcomes kept in the spool until a JobTracker acknowledges them.",
        )?;
        let on_disk = IntGauge::new(
            "lts_tasktracker_outcomes_on_disk",
            "Outcomes kept in the spool that are on disk and survive a crash of the \
             TaskTracker (always 0 without --spool-dir).",
        )?;
        let runs_total = IntCounterVec::new(
            Opts::new(
                "lts_tasktracker_runs_total",
                "Finished runs by outcome: success, failed, later, error.",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(slots_busy.clone()))?;
        registry.register(Box::new(slots_total.clone()))?;
        registry.register(Box::new(ahead_held.clone()))?;
        registry.register(Box::new(runs_total.clone()))?;
        registry.register(Box::new(unacked.clone()))?;
        registry.register(Box::new(on_disk.clone()))?;
        let runs = OUTCOME_KINDS.map(|kind| runs_total.with_label_values(&[kind]));
        Ok(Metrics {
            slots_busy,
            slots_total,
            ahead_held,
            unacked,
            on_disk,
            runs,
        })
    }
}

const OUTCOME_KINDS: [&str; 4] = ["success", "failed", "later", "error"];

fn kind_index(outcome: Option<&pb::Outcome>) -> usize {
    use pb::outcome::Kind;
    match outcome.and_then(|o| o.kind.as_ref()) {
        Some(Kind::Success(_)) => 0,
        Some(Kind::Failed(_)) => 1,
        Some(Kind::Later(_)) => 2,
        Some(Kind::Error(_)) | None => 3,
    }
}

/// What a TaskTracker has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Runs that ended in success.
    pub succeeded: u64,
    /// Runs that ended in a permanent failure.
    pub failed: u64,
    /// Runs that asked to run again later (including runs handed back on
    /// shutdown).
    pub later: u64,
    /// Runs that ended in an error (including panics and timeouts).
    pub errors: u64,
    /// Jobs running now.
    pub busy: u64,
    /// Jobs sent ahead of their trigger time, held until it comes.
    pub ahead_held: u64,
    /// Whether the stream to a JobTracker is up (welcome received).
    pub connected: bool,
    /// Streams opened so far (welcome received).
    pub connections: u64,
    /// Outcomes the JobTracker has not acknowledged yet.
    pub unacked: u64,
    /// Of those, the outcomes on disk that survive a crash of the process
    /// (always 0 for a spool in memory).
    pub on_disk: u64,
    /// Log lines dropped because the JobTracker was unreachable or slow.
    pub dropped_log_lines: u64,
    /// When the TaskTracker last heard from its JobTracker (the hello it
    /// sent, then any message it read), Unix ms on its clock; 0 before the
    /// first stream.
    pub last_heard_ms: i64,
    /// Streams given up because the JobTracker was silent for longer than
    /// the lease (two heartbeat intervals): the runs held or queued on them
    /// were dropped unrun.
    pub lease_lapses: u64,
}

impl Stats {
    /// Runs that ended, whatever the outcome.
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.later + self.errors
    }
}

#[derive(Default)]
struct Counters {
    runs: [AtomicU64; 4],
    busy: AtomicU64,
    ahead_held: AtomicU64,
    connected: AtomicBool,
    connections: AtomicU64,
    unacked: AtomicU64,
    on_disk: AtomicU64,
    dropped_log_lines: AtomicU64,
    last_heard_ms: AtomicI64,
    lease_lapses: AtomicU64,
    changed: Notify,
}

/// Shared by the TaskTracker and its handles.
#[derive(Clone)]
pub(crate) struct Recorder {
    counters: Arc<Counters>,
    metrics: Metrics,
}

impl Recorder {
    pub(crate) fn new(metrics: Metrics, slots: u32) -> Self {
        metrics.slots_total.set(i64::from(slots));
        Recorder {
            counters: Arc::default(),
            metrics,
        }
    }

    pub(crate) fn handle(&self) -> TaskTrackerHandle {
        TaskTrackerHandle {
            counters: self.counters.clone(),
        }
    }

    pub(crate) fn run_finished(&self, outcome: Option<&pb::Outcome>) {
        let i = kind_index(outcome);
        self.counters.runs[i].fetch_add(1, Ordering::Relaxed);
        self.metrics.runs[i].inc();
    }

    pub(crate) fn set_busy(&self, busy: usize) {
        self.counters.busy.store(busy as u64, Ordering::Relaxed);
        self.metrics.slots_busy.set(busy as i64);
    }

    pub(crate) fn set_ahead_held(&self, held: usize) {
        self.counters
            .ahead_held
            .store(held as u64, Ordering::Relaxed);
        self.metrics.ahead_held.set(held as i64);
    }

    pub(crate) fn set_unacked(&self, unacked: usize) {
        self.counters
            .unacked
            .store(unacked as u64, Ordering::Relaxed);
        self.metrics.unacked.set(unacked as i64);
    }

    pub(crate) fn set_on_disk(&self, on_disk: usize) {
        self.counters
            .on_disk
            .store(on_disk as u64, Ordering::Relaxed);
        self.metrics.on_disk.set(on_disk as i64);
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        if connected {
            self.counters.connections.fetch_add(1, Ordering::Relaxed);
        }
        self.counters.connected.store(connected, Ordering::Relaxed);
    }

    pub(crate) fn log_line_dropped(&self) {
        self.counters
            .dropped_log_lines
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn heard(&self, at_ms: i64) {
        self.counters.last_heard_ms.store(at_ms, Ordering::Relaxed);
    }

    pub(crate) fn lease_lapsed(&self) {
        self.counters.lease_lapses.fetch_add(1, Ordering::Relaxed);
    }

    /// Wakes [`TaskTrackerHandle::wait_for`]; called once per batch of
    /// changes, not per counter.
    pub(crate) fn notify(&self) {
        self.counters.changed.notify_waiters();
    }
}

/// A view of a running TaskTracker, for tests, benchmarks and embedding
/// programs.
#[derive(Clone)]
pub struct TaskTrackerHandle {
    counters: Arc<Counters>,
}

impl TaskTrackerHandle {
    /// The counters now.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let runs = |i: usize| c.runs[i].load(Ordering::Relaxed);
        Stats {
            succeeded: runs(0),
            failed: runs(1),
            later: runs(2),
            errors: runs(3),
            busy: c.busy.load(Ordering::Relaxed),
            ahead_held: c.ahead_held.load(Ordering::Relaxed),
            connected: c.connected.load(Ordering::Relaxed),
            connections: c.connections.load(Ordering::Relaxed),
            unacked: c.unacked.load(Ordering::Relaxed),
            on_disk: c.on_disk.load(Ordering::Relaxed),
            dropped_log_lines: c.dropped_log_lines.load(Ordering::Relaxed),
            last_heard_ms: c.last_heard_ms.load(Ordering::Relaxed),
            lease_lapses: c.lease_lapses.load(Ordering::Relaxed),
        }
    }

    /// Waits until `condition` holds for the counters. Put a timeout around
    /// it: it waits forever if the condition never holds.
    pub async fn wait_for(&self, condition: impl Fn(&Stats) -> bool) -> Stats {
        loop {
            let changed = self.counters.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let stats = self.stats();
            if condition(&stats) {
                return stats;
            }
            changed.await;
        }
    }
}

impl std::fmt::Debug for TaskTrackerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TaskTrackerHandle")
            .field(&self.stats())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_total_of_every_outcome_starts_at_zero() {
        let registry = Registry::new();
        Metrics::register(&registry).expect("register");
        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut text)
            .expect("encode");
        for kind in OUTCOME_KINDS {
            let line = format!("lts_tasktracker_runs_total{{outcome=\"{kind}\"}} 0");
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }
}
