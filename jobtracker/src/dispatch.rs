//! Hands ready jobs to connected TaskTrackers.
//!
//! Each node group with a TaskTracker connected has one dispatch loop. A
//! TaskTracker's credits (free slots) bound what it is sent; the loop
//! claims as many jobs as there are credits in the group, in one store
//! call, and the store gives each to the TaskTracker with the most credits
//! left. The loop sleeps until a submit, a credit, an outcome that
//! re-queued a job, or the next delayed job's trigger time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lts_proto::v1 as pb;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::JobStore;

/// Most jobs one claim asks for.
const MAX_CLAIM: usize = 1024;

/// The outbound half of a TaskTracker's stream.
pub type Outbound = mpsc::UnboundedSender<Result<pb::TrackerMessage, tonic::Status>>;

struct Worker {
    identity: String,
    tx: Outbound,
    credits: usize,
    /// Runs in flight there, with the time each job became ready.
    running: HashMap<(String, u32), i64>,
}

struct Group {
    name: String,
    wake: Notify,
    workers: Mutex<HashMap<u64, Worker>>,
}

/// Connected TaskTrackers and their dispatch loops.
pub struct Dispatcher {
    store: Arc<dyn JobStore>,
    metrics: Metrics,
    groups: Mutex<HashMap<String, Arc<Group>>>,
    next_conn: AtomicU64,
    shutdown: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps stay consistent between statements; a panic elsewhere must
    // not stop dispatch for everyone.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Dispatcher {
    /// A dispatcher over `store`; its loops stop when `shutdown` fires.
    pub fn new(
        store: Arc<dyn JobStore>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Dispatcher {
            store,
            metrics,
            groups: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            shutdown,
        })
    }

    /// Adds a TaskTracker with `slots` credits; returns its connection id.
    pub fn register(
        self: &Arc<Self>,
        node_group: &str,
        identity: &str,
        slots: u32,
        tx: Outbound,
    ) -> u64 {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let group = {
            let mut groups = lock(&self.groups);
            match groups.get(node_group) {
                Some(g) => g.clone(),
                None => {
                    let g = Arc::new(Group {
                        name: node_group.to_string(),
                        wake: Notify::new(),
                        workers: Mutex::new(HashMap::new()),
                    });
                    groups.insert(node_group.to_string(), g.clone());
                    tokio::spawn(self.clone().run_group(g.clone()));
                    g
                }
            }
        };
        lock(&group.workers).insert(
            conn,
            Worker {
                identity: identity.to_string(),
                tx,
                credits: slots as usize,
                running: HashMap::new(),
            },
        );
        self.metrics
            .task_trackers
            .with_label_values(&[node_group])
            .inc();
        group.wake.notify_one();
        conn
    }

    /// Removes a TaskTracker; returns the runs it had in flight.
    pub fn unregister(&self, node_group: &str, conn: u64) -> Vec<(String, u32)> {
        let Some(group) = lock(&self.groups).get(node_group).cloned() else {
            return Vec::new();
        };
        let worker = lock(&group.workers).remove(&conn);
        match worker {
            Some(w) => {
                self.metrics
                    .task_trackers
                    .with_label_values(&[node_group])
                    .dec();
                w.running.into_keys().collect()
            }
            None => Vec::new(),
        }
    }

    /// A TaskTracker freed `n` slots.
    pub fn add_credits(&self, node_group: &str, conn: u64, n: u32) {
        if let Some(group) = lock(&self.groups).get(node_group).cloned() {
            if let Some(w) = lock(&group.workers).get_mut(&conn) {
                w.credits = w.credits.saturating_add(n as usize);
            }
            group.wake.notify_one();
        }
    }

    /// Runs started on a TaskTracker: observes submit-to-start.
    pub fn started(&self, node_group: &str, conn: u64, runs: &[(String, u32)], at_ms: i64) {
        if let Some(group) = lock(&self.groups).get(node_group).cloned() {
            if let Some(w) = lock(&group.workers).get(&conn) {
                for run in runs {
                    if let Some(ready_at) = w.running.get(run) {
                        let secs = (at_ms - ready_at).max(0) as f64 / 1000.0;
                        self.metrics.submit_to_start.observe(secs);
                    }
                }
            }
        }
    }

    /// Runs that ended on a TaskTracker.
    pub fn finished(&self, node_group: &str, conn: u64, runs: &[(String, u32)]) {
        if let Some(group) = lock(&self.groups).get(node_group).cloned() {
            if let Some(w) = lock(&group.workers).get_mut(&conn) {
                for run in runs {
                    w.running.remove(run);
                }
            }
        }
    }

    /// Pending jobs may have appeared in `node_group`.
    pub fn wake(&self, node_group: &str) {
        if let Some(group) = lock(&self.groups).get(node_group) {
            group.wake.notify_one();
        }
    }

    /// Tells the TaskTracker running `(job_id, attempt)` to stop it.
    pub fn cancel_run(
        &self,
        node_group: &str,
        worker: &str,
        job_id: &str,
        attempt: u32,
        reason: &str,
    ) {
        let Some(group) = lock(&self.groups).get(node_group).cloned() else {
            return;
        };
        let workers = lock(&group.workers);
        for w in workers.values().filter(|w| w.identity == worker) {
            let _ = w.tx.send(Ok(pb::TrackerMessage {
                kind: Some(pb::tracker_message::Kind::Cancel(pb::CancelRun {
                    job_id: job_id.to_string(),
                    attempt,
                    reason: reason.to_string(),
                })),
            }));
        }
    }

    /// Ends every TaskTracker stream with `status`.
    pub fn close_all(&self, status: tonic::Status) {
        let groups: Vec<Arc<Group>> = lock(&self.groups).values().cloned().collect();
        for g in groups {
            for (_, w) in lock(&g.workers).drain() {
                let _ = w.tx.send(Err(status.clone()));
            }
        }
    }

    async fn run_group(self: Arc<Self>, group: Arc<Group>) {
        let mut store_errors = 0u32;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let grants: Vec<(u64, String, usize)> = {
                let workers = lock(&group.workers);
                let mut grants: Vec<(u64, String, usize)> = workers
                    .iter()
                    .filter(|(_, w)| w.credits > 0)
                    .map(|(conn, w)| (*conn, w.identity.clone(), w.credits.min(MAX_CLAIM)))
                    .collect();
                // Stable order so ties go the same way.
                grants.sort_by_key(|g| g.0);
                grants
            };
            if grants.is_empty() {
                tokio::select! {
                    _ = group.wake.notified() => continue,
                    _ = self.shutdown.cancelled() => return,
                }
            }
            let store_grants: Vec<(String, usize)> =
                grants.iter().map(|(_, id, n)| (id.clone(), *n)).collect();
            let claimed = match self
                .store
                .claim(&group.name, &store_grants, lts_common::now_ms())
                .await
            {
                Ok(c) => {
                    store_errors = 0;
                    c
                }
                Err(e) => {
                    store_errors = store_errors.saturating_add(1);
                    let backoff = Duration::from_millis(50u64 << store_errors.min(6));
                    tracing::warn!(node_group = %group.name, "claim failed, retrying in {backoff:?}: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => continue,
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            };
            let mut handed = 0usize;
            let mut orphans: Vec<(String, u32)> = Vec::new();
            {
                let mut workers = lock(&group.workers);
                for ((conn, _, _), jobs) in grants.iter().zip(claimed.per_grant) {
                    if jobs.is_empty() {
                        continue;
                    }
                    let Some(w) = workers.get_mut(conn) else {
                        orphans.extend(jobs.iter().map(|j| (j.job_id.clone(), j.attempt)));
                        continue;
                    };
                    w.credits = w.credits.saturating_sub(jobs.len());
                    handed += jobs.len();
                    let mut assignments = Vec::with_capacity(jobs.len());
                    for job in jobs {
                        let ready_at = job.trigger_at_ms.max(job.submitted_at_ms);
                        w.running
                            .insert((job.job_id.clone(), job.attempt), ready_at);
                        let attempt = job.attempt;
                        assignments.push(pb::Assignment {
                            job: Some(job.into()),
                            attempt,
                        });
                    }
                    let msg = pb::TrackerMessage {
                        kind: Some(pb::tracker_message::Kind::Assignments(pb::Assignments {
                            assignments,
                        })),
                    };
                    if w.tx.send(Ok(msg)).is_err() {
                        // The stream is gone; its session puts the runs
                        // back when it unregisters.
                        tracing::debug!(worker = %w.identity, "assignment to a closed stream");
                    }
                }
            }
            self.metrics.dispatched.inc_by(handed as u64);
            if !orphans.is_empty() {
                if let Err(e) = self
                    .store
                    .requeue(
                        &orphans,
                        "its TaskTracker left before the run was sent",
                        lts_common::now_ms(),
                    )
                    .await
                {
                    tracing::error!("cannot put back {} runs: {e}", orphans.len());
                }
            }
            if handed > 0 {
                continue;
            }
            // Nothing ready: sleep until woken or until the next delayed job.
            let sleep = match claimed.next_ready_at_ms {
                Some(at) => {
                    Duration::from_millis((at - lts_common::now_ms()).clamp(1, 60_000) as u64)
                }
                None => Duration::from_secs(60),
            };
            // Other trackers sharing the store do not wake this loop.
            let sleep = self.store.poll_interval().map_or(sleep, |p| sleep.min(p));
            tokio::select! {
                _ = group.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }
}
