//! Hands ready jobs to connected TaskTrackers.
//!
//! Each node group with a TaskTracker connected has one dispatch loop. A
//! TaskTracker's credits (free slots) bound what it is sent; the loop
//! claims as many jobs as there are credits in the group, in one store
//! call, and the store gives each to the TaskTracker with the most credits
//! left. The loop sleeps until a submit, a credit, an outcome that
//! re-queued a job, or the next delayed job's trigger time.
//!
//! A TaskTracker that offers ahead slots also gets jobs up to [`AHEAD_MS`]
//! before their trigger time (cron cycles, jobs at a time, delayed
//! retries), marked with the instant they start at: thousands of jobs due
//! at the same instant then start at it, instead of queueing behind their
//! own claims and sends.
//!
//! A TaskTracker the tracker has heard nothing from for longer than
//! [`quiet_after`] (one and a half heartbeat intervals) is *quiet*: it may
//! be frozen or cut off, so while another TaskTracker of its group is not
//! quiet it gets no new assignments, due or ahead. When every TaskTracker
//! of the group is quiet, each is sent work as usual.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lts_proto::v1 as pb;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::outbound::{split_by_bytes, PeerSender, SendError, MESSAGE_BUDGET_BYTES};
use crate::store::JobStore;

/// Most jobs one claim asks for.
const MAX_CLAIM: usize = 1024;

/// How long before its trigger time a job may be sent to a TaskTracker with
/// ahead slots.
pub const AHEAD_MS: i64 = 1_000;

/// How long a TaskTracker may stay silent before it is quiet and gets no
/// new work while others of its group are heard: one heartbeat interval
/// (the TaskTracker sends something at least that often) plus half an
/// interval for scheduling and network delays. It is shorter than the
/// TaskTracker's own lease (two intervals), so a TaskTracker is not sent
/// work it would drop for having lost contact, and much shorter than the
/// give-up time (three intervals), so a frozen TaskTracker holds up new
/// work for at most one and a half intervals rather than three.
pub fn quiet_after(heartbeat_interval: Duration) -> Duration {
    heartbeat_interval + heartbeat_interval / 2
}

/// Most superseded runs remembered per lost stream, to cancel on the
/// TaskTracker's return.
const MAX_LOST_RUNS: usize = 100_000;

/// How long the runs of a lost stream are remembered for its TaskTracker's
/// return.
const LOST_RUNS_TTL: Duration = Duration::from_secs(600);

/// A run: a job id and its attempt.
pub type Run = (String, u32);

/// Runs of a TaskTracker's lost streams, with when the last was lost.
type LostRuns = (Instant, Vec<(String, u32)>);

/// Why a run of a lost stream is cancelled.
const SUPERSEDED: &str = "this run was put back when its TaskTracker's stream was lost; the job runs again under a new attempt";

/// The outbound half of a TaskTracker's stream.
///
/// Bounded by [`work_stream_capacity`]: a TaskTracker that reads its
/// stream never fills it, because every assignment message uses up at
/// least one of its credits. One that stops reading is disconnected when
/// its channel is full (`RESOURCE_EXHAUSTED`), its runs go back to the
/// queue, and the drop is counted.
pub type Outbound = PeerSender<pb::TrackerMessage>;

/// Messages a TaskTracker's stream holds unread: one per credit it may
/// have out (each assignment message carries at least one job), and room
/// for heartbeats, outcome acks and cancels.
pub fn work_stream_capacity(slots: u32, ahead_slots: u32) -> usize {
    slots as usize + ahead_slots as usize + 256
}

/// Queues `msg` for a TaskTracker; one that does not read its stream is
/// disconnected (see [`Outbound`]).
pub fn send_to_worker(tx: &Outbound, metrics: &Metrics, msg: pb::TrackerMessage) -> bool {
    match tx.try_send(msg) {
        Ok(()) => true,
        Err(SendError::Full) => {
            metrics
                .outbound_dropped
                .with_label_values(&["work", "peer_not_reading"])
                .inc();
            tx.close(tonic::Status::resource_exhausted(
                "the TaskTracker does not read its work stream: its unread messages reached the limit; its runs go to other TaskTrackers",
            ));
            false
        }
        Err(SendError::Closed) => false,
    }
}

struct Worker {
    identity: String,
    tx: Outbound,
    /// Most due runs it holds at once: the larger of its hello's `slots`
    /// and `total_slots`.
    slots: usize,
    /// Most runs ahead of their time it holds at once (`ahead_slots`).
    ahead_slots: usize,
    credits: usize,
    /// Assignments it can still hold ahead of their time.
    ahead_credits: usize,
    /// Runs in flight there, with the time each job became ready.
    running: HashMap<(String, u32), i64>,
    /// When its stream last carried a message, in ms since the
    /// dispatcher's `epoch`; written by its session.
    last_heard: Arc<AtomicU64>,
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
    tasks: TaskTracker,
    /// See [`quiet_after`].
    quiet_after: Duration,
    /// The zero of every `last_heard`.
    epoch: Instant,
    /// Runs of lost streams, by (node group, identity), with when the
    /// stream was lost: superseded, so cancelled when a stream of that
    /// TaskTracker opens again (it may have run on through a freeze).
    lost: Mutex<HashMap<(String, String), LostRuns>>,
    /// The other trackers of the cluster, told of every wake.
    peers: std::sync::OnceLock<Arc<crate::peers::Peers>>,
}

/// A TaskTracker's place in the dispatcher, held by its stream's session.
/// Dropping it removes the TaskTracker and puts the runs it had in flight
/// back in the queue (unless the JobTracker is shutting down: the next
/// start requeues them).
pub struct Registration {
    dispatcher: Arc<Dispatcher>,
    node_group: String,
    identity: String,
    conn: u64,
    last_heard: Arc<AtomicU64>,
    /// Why the TaskTracker left, for the log and the execution logs.
    pub reason: String,
}

impl Registration {
    /// The connection id.
    pub fn conn(&self) -> u64 {
        self.conn
    }

    /// The TaskTracker was heard from just now (any message counts). One
    /// that was quiet may be sent work again, so its group's loop wakes.
    pub fn heard(&self) {
        let d = &self.dispatcher;
        let now = d.now_ms();
        let before = self.last_heard.swap(now, Ordering::Relaxed);
        if now.saturating_sub(before) > d.quiet_after.as_millis() as u64 {
            d.wake(&self.node_group);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let d = &self.dispatcher;
        let runs = d.unregister(&self.node_group, self.conn);
        tracing::info!(worker = %self.identity, node_group = %self.node_group, runs = runs.len(), "TaskTracker left: {}", self.reason);
        // Work it was kept from while quiet may go to the others now.
        d.wake(&self.node_group);
        if runs.is_empty() || d.shutdown.is_cancelled() {
            return;
        }
        let why = format!(
            "its TaskTracker {} was lost ({})",
            self.identity, self.reason
        );
        let dispatcher = d.clone();
        let group = self.node_group.clone();
        let identity = self.identity.clone();
        d.tasks.spawn(async move {
            match dispatcher
                .store
                .requeue(&runs, &why, lts_common::now_ms())
                .await
            {
                Ok(n) => {
                    tracing::info!(node_group = %group, "put back {n} runs of a lost TaskTracker");
                    dispatcher.wake(&group);
                    // Only now are their attempts superseded: a cancel
                    // sent earlier could have its outcome applied as the
                    // current attempt's.
                    dispatcher.cancel_superseded(&group, &identity, runs);
                }
                Err(e) => tracing::error!("cannot put back the runs of a lost TaskTracker: {e}"),
            }
        });
    }
}

fn cancel_msg(job_id: &str, attempt: u32, reason: &str) -> pb::TrackerMessage {
    pb::TrackerMessage {
        kind: Some(pb::tracker_message::Kind::Cancel(pb::CancelRun {
            job_id: job_id.to_string(),
            attempt,
            reason: reason.to_string(),
        })),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps stay consistent between statements; a panic elsewhere must
    // not stop dispatch for everyone.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Dispatcher {
    /// A dispatcher over `store`; its loops run on `tasks` and stop when
    /// `shutdown` fires. TaskTrackers are quiet after [`quiet_after`] of
    /// `heartbeat_interval`.
    pub fn new(
        store: Arc<dyn JobStore>,
        metrics: Metrics,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        heartbeat_interval: Duration,
    ) -> Arc<Self> {
        Arc::new(Dispatcher {
            store,
            metrics,
            groups: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            shutdown,
            tasks,
            quiet_after: quiet_after(heartbeat_interval),
            epoch: Instant::now(),
            lost: Mutex::new(HashMap::new()),
            peers: std::sync::OnceLock::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Identities of the TaskTrackers of `node_group` that are quiet now:
    /// heard from last longer ago than [`quiet_after`].
    pub fn quiet_task_trackers(&self, node_group: &str) -> Vec<String> {
        let Some(group) = lock(&self.groups).get(node_group).cloned() else {
            return Vec::new();
        };
        let now = self.now_ms();
        let mut quiet: Vec<String> = lock(&group.workers)
            .values()
            .filter(|w| self.is_quiet(w, now))
            .map(|w| w.identity.clone())
            .collect();
        quiet.sort();
        quiet
    }

    fn is_quiet(&self, w: &Worker, now_ms: u64) -> bool {
        now_ms.saturating_sub(w.last_heard.load(Ordering::Relaxed))
            > self.quiet_after.as_millis() as u64
    }

    /// Cancels runs a lost stream of `identity` had in flight, which were
    /// put back: on the TaskTracker's other stream if it has one already,
    /// else when it opens one.
    fn cancel_superseded(&self, node_group: &str, identity: &str, runs: Vec<(String, u32)>) {
        if let Some(group) = lock(&self.groups).get(node_group).cloned() {
            let workers = lock(&group.workers);
            if let Some(w) = workers.values().find(|w| w.identity == identity) {
                for (job_id, attempt) in &runs {
                    let msg = cancel_msg(job_id, *attempt, SUPERSEDED);
                    if !send_to_worker(&w.tx, &self.metrics, msg) {
                        break;
                    }
                }
                return;
            }
        }
        self.remember_lost(node_group, identity, &runs);
    }

    /// Keeps the runs a lost stream of `identity` had in flight, to cancel
    /// them when that TaskTracker opens a stream again.
    fn remember_lost(&self, node_group: &str, identity: &str, runs: &[(String, u32)]) {
        let mut lost = lock(&self.lost);
        // A TaskTracker that never comes back leaves its entry until it
        // is this old.
        lost.retain(|_, (at, _)| at.elapsed() < LOST_RUNS_TTL);
        let entry = lost
            .entry((node_group.to_string(), identity.to_string()))
            .or_insert_with(|| (Instant::now(), Vec::new()));
        entry.0 = Instant::now();
        let room = MAX_LOST_RUNS.saturating_sub(entry.1.len());
        entry.1.extend(runs.iter().take(room).cloned());
    }

    /// Runs that earlier streams of `identity` lost: their attempts were
    /// superseded when they were put back.
    fn take_lost(&self, node_group: &str, identity: &str) -> Vec<(String, u32)> {
        lock(&self.lost)
            .remove(&(node_group.to_string(), identity.to_string()))
            .map(|(_, runs)| runs)
            .unwrap_or_default()
    }

    /// Whether a new stream may be opened under `identity`: refused while
    /// another stream under it (in any node group) was heard from within
    /// [`quiet_after`]. One silent for longer may be a half-dead
    /// connection of the same TaskTracker, reconnecting after it lost
    /// contact: that stream is given up (closed, its runs put back) so the
    /// TaskTracker is not locked out by its own old stream.
    pub fn admit_identity(&self, identity: &str) -> Result<(), tonic::Status> {
        let groups: Vec<Arc<Group>> = lock(&self.groups).values().cloned().collect();
        let now = self.now_ms();
        for g in groups {
            for w in lock(&g.workers).values().filter(|w| w.identity == identity) {
                if w.tx.is_closed() {
                    continue;
                }
                if !self.is_quiet(w, now) {
                    self.metrics.limit_hit("duplicate_identity");
                    return Err(tonic::Status::already_exists(format!(
                        "a TaskTracker with the identity {identity:?} is connected (node group {}) and was heard from within the last {} ms; give each TaskTracker its own identity, or retry once the other stream is gone",
                        g.name,
                        self.quiet_after.as_millis()
                    )));
                }
                tracing::info!(worker = %identity, node_group = %g.name, "a new stream under this identity replaces its silent one");
                w.tx.close(tonic::Status::aborted(
                    "a new stream of this TaskTracker replaced this silent one",
                ));
            }
        }
        Ok(())
    }

    /// Adds a TaskTracker with `slots` credits (and room for the larger of
    /// `slots` and `total_slots` due runs); it stays until the returned
    /// registration is dropped.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        self: &Arc<Self>,
        node_group: &str,
        identity: &str,
        slots: u32,
        total_slots: u32,
        ahead_slots: u32,
        tx: Outbound,
    ) -> Registration {
        let last_heard = Arc::new(AtomicU64::new(self.now_ms()));
        // Runs an earlier stream of this TaskTracker lost were given out
        // again; any it still runs (it was frozen, or cut off) must stop,
        // so a run does not go on twice.
        for (job_id, attempt) in self.take_lost(node_group, identity) {
            let msg = cancel_msg(&job_id, attempt, SUPERSEDED);
            if !send_to_worker(&tx, &self.metrics, msg) {
                break;
            }
        }
        let conn = self.add(
            node_group,
            identity,
            (slots, total_slots.max(slots)),
            ahead_slots,
            tx,
            last_heard.clone(),
        );
        Registration {
            dispatcher: self.clone(),
            node_group: node_group.to_string(),
            identity: identity.to_string(),
            conn,
            last_heard,
            reason: "its session ended".into(),
        }
    }

    fn add(
        self: &Arc<Self>,
        node_group: &str,
        identity: &str,
        (slots, max_slots): (u32, u32),
        ahead_slots: u32,
        tx: Outbound,
        last_heard: Arc<AtomicU64>,
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
                    self.tasks.spawn(self.clone().run_group(g.clone()));
                    g
                }
            }
        };
        lock(&group.workers).insert(
            conn,
            Worker {
                identity: identity.to_string(),
                tx,
                slots: max_slots as usize,
                ahead_slots: ahead_slots as usize,
                credits: slots as usize,
                ahead_credits: ahead_slots as usize,
                running: HashMap::new(),
                last_heard,
            },
        );
        self.metrics
            .task_trackers
            .with_label_values(&[self.metrics.node_group_label(node_group)])
            .inc();
        group.wake.notify_one();
        conn
    }

    /// Removes a TaskTracker; returns the runs it had in flight.
    fn unregister(&self, node_group: &str, conn: u64) -> Vec<(String, u32)> {
        let Some(group) = lock(&self.groups).get(node_group).cloned() else {
            return Vec::new();
        };
        let worker = lock(&group.workers).remove(&conn);
        match worker {
            Some(w) => {
                self.metrics
                    .task_trackers
                    .with_label_values(&[self.metrics.node_group_label(node_group)])
                    .dec();
                w.running.into_keys().collect()
            }
            None => Vec::new(),
        }
    }

    /// A TaskTracker freed `n` slots and `ahead` ahead slots. Credit
    /// beyond its slots (and ahead slots) is not kept; returns whether some
    /// was cut.
    pub fn add_credits(&self, node_group: &str, conn: u64, n: u32, ahead: u32) -> bool {
        let mut cut = false;
        if let Some(group) = lock(&self.groups).get(node_group).cloned() {
            if let Some(w) = lock(&group.workers).get_mut(&conn) {
                let credits = w.credits.saturating_add(n as usize);
                let ahead_credits = w.ahead_credits.saturating_add(ahead as usize);
                w.credits = credits.min(w.slots);
                w.ahead_credits = ahead_credits.min(w.ahead_slots);
                cut = w.credits < credits || w.ahead_credits < ahead_credits;
            }
            group.wake.notify_one();
        }
        if cut {
            self.metrics.limit_hit("credit");
        }
        cut
    }

    /// Runs started on a TaskTracker: observes submit-to-start. Returns
    /// the runs that were not assigned on this stream (an earlier stream
    /// of the TaskTracker had them, or none did): they may be superseded.
    pub fn started(
        &self,
        node_group: &str,
        conn: u64,
        runs: &[(String, u32)],
        at_ms: i64,
    ) -> Vec<(String, u32)> {
        let mut unknown = Vec::new();
        let group = lock(&self.groups).get(node_group).cloned();
        let workers = group.as_ref().map(|g| lock(&g.workers));
        let worker = workers.as_ref().and_then(|ws| ws.get(&conn));
        for run in runs {
            match worker.and_then(|w| w.running.get(run)) {
                Some(ready_at) => {
                    let secs = (at_ms - ready_at).max(0) as f64 / 1000.0;
                    self.metrics.submit_to_start.observe(secs);
                }
                None => unknown.push(run.clone()),
            }
        }
        unknown
    }

    /// Runs the store took back on this stream (see
    /// [`JobStore::adopt`](crate::store::JobStore::adopt)): they are put
    /// back if the stream is lost, like runs assigned on it.
    pub fn adopt(&self, node_group: &str, conn: u64, runs: &[(String, u32)]) {
        if let Some(group) = lock(&self.groups).get(node_group).cloned() {
            if let Some(w) = lock(&group.workers).get_mut(&conn) {
                let now = lts_common::now_ms();
                for run in runs {
                    w.running.insert(run.clone(), now);
                }
            }
        }
    }

    /// Splits `runs` into those assigned on stream `conn` (still in flight
    /// there) and the others.
    pub fn partition_assigned(
        &self,
        node_group: &str,
        conn: u64,
        runs: Vec<(String, u32)>,
    ) -> (Vec<Run>, Vec<Run>) {
        let group = lock(&self.groups).get(node_group).cloned();
        let workers = group.as_ref().map(|g| lock(&g.workers));
        let worker = workers.as_ref().and_then(|ws| ws.get(&conn));
        runs.into_iter()
            .partition(|run| worker.is_some_and(|w| w.running.contains_key(run)))
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
        self.wake_local(node_group);
        if let Some(peers) = self.peers.get() {
            peers.announce(node_group);
        }
    }

    /// Wakes this tracker's dispatcher of `node_group` only: the news came
    /// from another tracker of the cluster, which told the rest itself.
    pub fn wake_local(&self, node_group: &str) {
        if let Some(group) = lock(&self.groups).get(node_group) {
            group.wake.notify_one();
        }
    }

    /// From now on every [`wake`](Self::wake) is also announced to the
    /// other trackers of the cluster; set once, when the tracker joins one.
    pub fn set_peers(&self, peers: Arc<crate::peers::Peers>) {
        if self.peers.set(peers).is_err() {
            tracing::warn!("the cluster's trackers were already set; keeping the first");
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
            send_to_worker(&w.tx, &self.metrics, cancel_msg(job_id, attempt, reason));
        }
    }

    /// Ends every TaskTracker stream with `status`.
    pub fn close_all(&self, status: tonic::Status) {
        let groups: Vec<Arc<Group>> = lock(&self.groups).values().cloned().collect();
        for g in groups {
            for w in lock(&g.workers).values() {
                w.tx.close(status.clone());
            }
        }
    }

    async fn run_group(self: Arc<Self>, group: Arc<Group>) {
        let mut store_errors = 0u32;
        // A quiet TaskTracker with credits was left out: look again once
        // the others may have gone quiet too.
        let mut passed_over;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let (grants, ahead_grants) = {
                let workers = lock(&group.workers);
                // Quiet TaskTrackers get nothing while another is heard.
                let now_ms = self.now_ms();
                let all_quiet = workers.values().all(|w| self.is_quiet(w, now_ms));
                let eligible = |w: &Worker| all_quiet || !self.is_quiet(w, now_ms);
                passed_over = workers
                    .values()
                    .any(|w| !eligible(w) && (w.credits > 0 || w.ahead_credits > 0));
                // Runs in flight never exceed its slots plus ahead slots,
                // whatever credit it granted.
                let mut grants = Vec::new();
                let mut ahead_grants = Vec::new();
                let mut conns: Vec<&u64> = workers.keys().collect();
                // Stable order so ties go the same way.
                conns.sort();
                for conn in conns {
                    let w = &workers[conn];
                    if !eligible(w) {
                        continue;
                    }
                    let room = (w.slots + w.ahead_slots).saturating_sub(w.running.len());
                    let due = w.credits.min(room).min(MAX_CLAIM);
                    let ahead = w.ahead_credits.min(room - due).min(MAX_CLAIM);
                    if due > 0 {
                        grants.push((*conn, w.identity.clone(), due));
                    }
                    if ahead > 0 {
                        ahead_grants.push((*conn, w.identity.clone(), ahead));
                    }
                }
                (grants, ahead_grants)
            };
            let recheck = if passed_over {
                self.quiet_after
            } else {
                Duration::MAX
            };
            if grants.is_empty() && ahead_grants.is_empty() {
                tokio::select! {
                    _ = group.wake.notified() => continue,
                    _ = tokio::time::sleep(recheck) => continue,
                    _ = self.shutdown.cancelled() => return,
                }
            }
            let now = lts_common::now_ms();
            let mut handed = 0usize;
            let mut next_ready_at_ms: Option<i64> = None;
            let mut failed = None;
            for ahead in [false, true] {
                let grants = if ahead { &ahead_grants } else { &grants };
                if grants.is_empty() {
                    continue;
                }
                let store_grants: Vec<(String, usize)> =
                    grants.iter().map(|(_, id, n)| (id.clone(), *n)).collect();
                let claimed = if ahead {
                    self.store
                        .claim_ahead(&group.name, &store_grants, now, now + AHEAD_MS)
                        .await
                } else {
                    self.store.claim(&group.name, &store_grants, now).await
                };
                let claimed = match claimed {
                    Ok(c) => c,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
                // When the loop has something to do next: the next delayed
                // job is due, or (from a store that sends ahead) may be sent.
                let next = claimed
                    .next_ready_at_ms
                    .map(|at| if ahead { at - AHEAD_MS } else { at });
                next_ready_at_ms = match (next_ready_at_ms, next) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                handed += self
                    .hand_out(&group, grants, claimed.per_grant, ahead)
                    .await;
            }
            if let Some(e) = failed {
                store_errors = store_errors.saturating_add(1);
                let backoff = Duration::from_millis(50u64 << store_errors.min(6));
                tracing::warn!(node_group = %group.name, "claim failed, retrying in {backoff:?}: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => continue,
                    _ = self.shutdown.cancelled() => return,
                }
            }
            store_errors = 0;
            if handed > 0 {
                continue;
            }
            // Nothing ready: sleep until woken or until the next delayed job
            // is due (or may be sent ahead).
            let sleep = match next_ready_at_ms {
                Some(at) => {
                    Duration::from_millis((at - lts_common::now_ms()).clamp(1, 60_000) as u64)
                }
                None => Duration::from_secs(60),
            };
            // Other trackers sharing the store do not wake this loop.
            let sleep = self.store.poll_interval().map_or(sleep, |p| sleep.min(p));
            let sleep = sleep.min(recheck);
            tokio::select! {
                _ = group.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Sends claimed jobs to their TaskTrackers (`ahead`: marked with the
    /// instant they start at); puts back those whose TaskTracker left.
    /// Returns how many were sent.
    async fn hand_out(
        &self,
        group: &Group,
        grants: &[(u64, String, usize)],
        per_grant: Vec<Vec<lts_common::Job>>,
        ahead: bool,
    ) -> usize {
        let mut handed = 0usize;
        let mut orphans: Vec<(String, u32)> = Vec::new();
        {
            let mut workers = lock(&group.workers);
            for ((conn, _, _), jobs) in grants.iter().zip(per_grant) {
                if jobs.is_empty() {
                    continue;
                }
                let Some(w) = workers.get_mut(conn) else {
                    orphans.extend(jobs.iter().map(|j| (j.job_id.clone(), j.attempt)));
                    continue;
                };
                if ahead {
                    w.ahead_credits = w.ahead_credits.saturating_sub(jobs.len());
                } else {
                    w.credits = w.credits.saturating_sub(jobs.len());
                }
                handed += jobs.len();
                let mut assignments = Vec::with_capacity(jobs.len());
                for job in jobs {
                    let ready_at = job.trigger_at_ms.max(job.submitted_at_ms);
                    w.running
                        .insert((job.job_id.clone(), job.attempt), ready_at);
                    let attempt = job.attempt;
                    // An instant of 0 means "now" on the wire; a trigger time
                    // never is 0 in practice, but keep the mark non-zero.
                    let not_before_unix_ms = if ahead { job.trigger_at_ms.max(1) } else { 0 };
                    assignments.push(pb::Assignment {
                        job: Some(job.into()),
                        attempt,
                        not_before_unix_ms,
                    });
                }
                // Split by bytes: jobs of large payloads would otherwise
                // make one message past the gRPC limit, which breaks the
                // stream and puts every run of it back, again and again.
                for assignments in split_by_bytes(assignments, MESSAGE_BUDGET_BYTES, usize::MAX) {
                    let msg = pb::TrackerMessage {
                        kind: Some(pb::tracker_message::Kind::Assignments(pb::Assignments {
                            assignments,
                        })),
                    };
                    if !send_to_worker(&w.tx, &self.metrics, msg) {
                        // The stream is gone; its session puts the runs
                        // back when it unregisters.
                        tracing::debug!(worker = %w.identity, "assignment to a closed stream");
                        break;
                    }
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
        handed
    }
}
