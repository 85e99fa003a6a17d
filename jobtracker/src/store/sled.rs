//! The embedded store: sled under a data directory, with the queues
//! indexed in memory.
//!
//! One sled tree (`lts`) holds every record under a one-byte prefix:
//!
//! | key | value |
//! |---|---|
//! | `j` job id | the job and the transition lines of its execution log (MessagePack) |
//! | `l` job id `0x00` sequence (u64 BE) | a log line written apart from its job's record: a biz line, or a stale outcome of a job no longer in memory |
//! | `f` feedback id | a feedback item not yet acked |
//! | `m` `schema_version` | the store's schema (u64 BE) |
//!
//! Schema 1 also kept `t` node group `0x00` task id -> job id; the open of
//! such a store drops those keys (the task-id index is in memory now,
//! rebuilt from the job records).
//!
//! **Memory.** Jobs that are not final are kept in memory with a ready
//! queue per node group, so a claim touches no disk unless its attempt
//! must be made durable first (see [`SledStore::claim`]).
//!
//! **Writes.** A call changes the index under its lock and, under the same
//! hold, queues its writes as one batch with the next generation number.
//! One write thread applies the batches in generation order, key by key
//! (not as `sled::Batch`es, which wait out every flush), so the disk sees
//! changes in the order the index made them, and a crash keeps a prefix of
//! them. Until a batch is applied its values are read from the queue;
//! scans wait for the batches committed before them. Every write goes
//! through this queue. The queue and the flusher below are
//! [`lts_common::durable`]'s engine.
//!
//! **Flushes.** One flush thread makes writes durable for everybody (group
//! commit): it waits until the write thread has applied every batch
//! committed before the requests it serves, flushes sled once and answers
//! them all. `recover`, `submit`, `cancel`, the operator verbs, a claim
//! whose attempt must be durable and a `fire_due` that fired cycles wait
//! for a flush before they return. `complete`, `requeue`, `append_logs`
//! and `ack_feedback` only ask for one soon; they are durable after the
//! next [`JobStore::sync`] (see the trait's contract).
//!
//! **Close.** [`JobStore::close`] (or dropping the store) stops taking
//! writes, lets the write thread apply the queue, flushes, ends both
//! threads and returns once sled has released the directory's lock, so
//! the directory can be opened again at once. A directory another store
//! holds is refused at open, with no wait.
//!
//! The lines of a job's execution log that record its transitions live in
//! the job's own record: a transition rewrites the record anyway, and
//! sled's cost is per key written, so this halves the keys a job costs.
//! A `started` line is kept in memory and written with the job's next
//! transition; a crash before that loses only that line (the run is
//! requeued and logged as such).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use lts_common::{Job, JobSpec, JobState, LogEntry, LogKind};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::index::{Index, Record, RecordRef};
use super::operator::{self, Effect};
use super::paging::may_wait_on_disk;
use super::*;
use crate::error::{Error, Result};
use lts_common::durable::{check_not_in_use, wait_for_release, Engine, Writes};
use std::collections::HashMap;

/// 2: the task-id index lives in memory (rebuilt from the job records at
/// open); the `t` keys of schema 1 are no longer written or read.
const SCHEMA_VERSION: u64 = 2;

/// sled's page cache unless `--store-cache` says otherwise. Live jobs are
/// served from the in-memory index; the cache serves dedup lookups and
/// finished jobs. With 1,000,000 queued jobs, 16 MiB left the tracker
/// 87 MiB smaller than 64 MiB did, at the same submit and drain rates
/// (docs/benchmarks.md); sled's own default (1 GiB) made the tracker's
/// memory grow with the queue.
pub const DEFAULT_CACHE_BYTES: u64 = 16 * 1024 * 1024;

pub use super::cycles::{FIRE_AHEAD_MS, TEMPLATE_HISTORY_LINES};
pub use super::paging::DEFAULT_MEMORY_BUDGET;

/// At most this many outcomes are applied per hold of the index lock.
/// An outcome costs a few microseconds there (mostly encoding its record),
/// and a TaskTracker's message after a pause carries thousands: applied
/// in one hold, they would keep every claim and submit waiting for
/// milliseconds.
const COMPLETE_CHUNK: usize = 64;

/// The sled-backed [`JobStore`].
pub struct SledStore {
    pub(super) claimable: std::sync::OnceLock<ClaimableHook>,
    /// The write queue and the flusher.
    engine: Engine,
    /// `None` once the store is closed.
    tree: std::sync::RwLock<Option<::sled::Tree>>,
    /// The file sled locks (`jobs.sled/db`); closing waits until sled has
    /// let go of it.
    lock_file: PathBuf,
    index: Mutex<Index>,
    log_seq: AtomicU64,
    /// How long [`JobStore::recover`] holds jobs that may have been
    /// running before the restart (ms; 0: not at all).
    recovery_grace_ms: AtomicI64,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    // Struct fields as arrays, in declaration order: about half the bytes
    // of the named form, and sled's cost grows with the bytes it moves. A
    // field added later goes last, with a default; records in the named
    // form (written before) still read.
    rmp_serde::to_vec(v).map_err(|e| Error::internal("encoding a record", e))
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::corrupt(String::from_utf8_lossy(key), e))
}

/// A sled error while `what`: I/O is worth a retry later, corruption is
/// lost data, anything else is a bug (in sled or in how it is used).
fn sled_error(what: &str, e: ::sled::Error) -> Error {
    match e {
        ::sled::Error::Io(_) => Error::unavailable(format!("{what}: I/O error"), e),
        ::sled::Error::Corruption { .. } => Error::corrupt(format!("({what})"), e),
        _ => Error::internal(what.to_string(), e),
    }
}

/// [`sled_error`] for `map_err`.
pub(super) fn sled_err(what: &str) -> impl Fn(::sled::Error) -> Error + '_ {
    move |e| sled_error(what, e)
}

fn job_key(job_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + job_id.len());
    k.push(b'j');
    k.extend_from_slice(job_id.as_bytes());
    k
}

fn log_prefix(job_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + job_id.len());
    k.push(b'l');
    k.extend_from_slice(job_id.as_bytes());
    k.push(0);
    k
}

fn feedback_key(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(b'f');
    k.extend_from_slice(id.as_bytes());
    k
}

impl SledStore {
    /// Opens (or creates) the store under `dir` with the default page
    /// cache. Refuses a store written by a newer version.
    pub fn open(dir: &Path) -> Result<SledStore> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// [`SledStore::open`] with a page cache of `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<SledStore> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::unavailable(format!("creating data directory {}", dir.display()), e)
        })?;
        let config = ::sled::Config::new()
            .path(dir.join("jobs.sled"))
            .mode(::sled::Mode::HighThroughput)
            .cache_capacity(cache_bytes)
            // Flushes come from the store's own flush thread only.
            .flush_every_ms(None);
        let lock_file = dir.join("jobs.sled").join("db");
        check_not_in_use(&lock_file, dir)?;
        let db = config
            .open()
            .map_err(sled_err(&format!("opening {}", dir.display())))?;
        let tree = db
            .open_tree("lts")
            .map_err(sled_err("opening the job tree"))?;
        match tree
            .get(b"mschema_version")
            .map_err(sled_err("reading the schema version"))?
        {
            Some(v) => {
                let version = u64::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                    Error::corrupt("mschema_version", format!("{} bytes, 8 expected", v.len()))
                })?);
                if version > SCHEMA_VERSION {
                    return Err(Error::Incompatible(format!(
                        "{} was written with store schema {version}; this JobTracker reads schema {SCHEMA_VERSION} and older. Run a newer JobTracker.",
                        dir.display()
                    )));
                }
                if version < 2 {
                    // Schema 1 kept a key per job for its task id; the index
                    // is in memory now. Dropping the keys and raising the
                    // version go in one batch, so an older JobTracker never
                    // opens a store without them.
                    let mut batch = ::sled::Batch::default();
                    for key in tree.scan_prefix(b"t").keys() {
                        batch.remove(key.map_err(sled_err("reading schema 1 task keys"))?);
                    }
                    batch.insert(&b"mschema_version"[..], &SCHEMA_VERSION.to_be_bytes()[..]);
                    tree.apply_batch(batch)
                        .map_err(sled_err("upgrading the store to schema 2"))?;
                    tree.flush()
                        .map_err(sled_err("flushing the schema upgrade"))?;
                }
            }
            None => {
                tree.insert(b"mschema_version", &SCHEMA_VERSION.to_be_bytes())
                    .map_err(sled_err("recording the schema version"))?;
            }
        }
        let start = (lts_common::now_ms().max(0) as u64) << 20;
        Ok(SledStore {
            claimable: std::sync::OnceLock::new(),
            engine: Engine::start(db, tree.clone())?,
            tree: std::sync::RwLock::new(Some(tree)),
            lock_file,
            index: Mutex::new(Index::default()),
            log_seq: AtomicU64::new(start),
            recovery_grace_ms: AtomicI64::new(0),
        })
    }

    /// After a restart, jobs that may have been running before it wait
    /// `grace` before they are handed out again, so that TaskTrackers
    /// reconnecting deliver their outcomes first (an outcome such a run
    /// reports is applied whenever it comes, as long as the job was not
    /// handed out again). Set before [`JobStore::recover`]; zero (the
    /// default) hands them out at once.
    pub fn set_recovery_grace(&self, grace: std::time::Duration) {
        let ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        self.recovery_grace_ms.store(ms, Ordering::Relaxed);
    }

    /// Past `bytes` of jobs in memory, ready jobs submitted wait on disk
    /// and are read back as the queues' heads drain (see
    /// [`super::paging`]). Set before [`JobStore::recover`]; unbounded by
    /// default.
    pub fn set_memory_budget(&self, bytes: u64) {
        self.lock().budget = bytes;
    }

    /// The tree, while the store is open.
    pub(super) fn tree(&self) -> Result<::sled::Tree> {
        self.tree
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(Error::ShuttingDown)
    }

    /// Takes the store's own handle on the tree: the first caller closes.
    fn take_tree(&self) -> Option<::sled::Tree> {
        self.tree.write().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        // A panic while holding the lock leaves the index as consistent as
        // the last completed statement; keep serving rather than poison
        // every later call.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put_logs(&self, batch: &mut Writes, entries: &[LogEntry]) -> Result<()> {
        for e in entries {
            let mut key = log_prefix(&e.job_id);
            key.extend_from_slice(&self.log_seq.fetch_add(1, Ordering::Relaxed).to_be_bytes());
            batch.insert(key, encode(e)?);
        }
        Ok(())
    }

    /// Puts `r` into `batch`, which the caller applies with [`Self::commit`]
    /// under the same hold of the index lock.
    pub(super) fn put_record(&self, batch: &mut Writes, r: &mut Record) -> Result<()> {
        let value = encode(&RecordRef {
            job: &r.job,
            history: &r.history,
            parent: &r.parent,
            last_child: &r.last_child,
        })?;
        batch.insert(job_key(&r.job.job_id), value);
        // The generation `commit` gives this batch (under the same hold of
        // the index lock).
        let generation = self.engine.next_generation();
        r.unflushed = Some((r.job.attempt, generation));
        Ok(())
    }

    /// Gives `batch` the next generation, queues it for the write thread
    /// ([`Engine::commit`]) and releases the index lock.
    ///
    /// The index lock is not held while sled writes: a claim, which works
    /// on the index alone, never waits for an outcome's or a submit's
    /// writes. Until a batch is applied its values are readable through
    /// [`Self::stored_record`]; reads that scan the tree first wait for it
    /// ([`Self::settled`]), and a flush first waits for every batch
    /// committed before it.
    pub(super) fn commit(
        &self,
        index: std::sync::MutexGuard<'_, Index>,
        batch: Writes,
    ) -> Result<()> {
        self.engine.commit(batch)?;
        drop(index);
        self.engine.wake_writer();
        Ok(())
    }

    /// Waits (without blocking the thread) until every batch committed
    /// before this call is applied to the tree, so a scan sees them.
    async fn settled(&self) {
        self.engine.settled().await
    }

    pub(super) async fn flush(&self) -> Result<()> {
        Ok(self.engine.flush(true).await?)
    }

    /// Claims ready jobs, or with `until_ms` delayed ones due by then
    /// (sent ahead, to start at their trigger time).
    async fn claim_from(
        &self,
        node_group: &str,
        grants: &[(String, usize)],
        now_ms: i64,
        until_ms: Option<i64>,
    ) -> Result<Claimed> {
        if until_ms.is_none() {
            self.read_ahead(node_group, now_ms)?;
        }
        let mut claimed = Claimed::default();
        let mut write = false;
        let flushed = self.engine.flushed();
        {
            let mut index = self.lock();
            index.release_held(now_ms);
            index.promote(node_group, now_ms);
            let mut batch = Writes::default();
            claimed.per_grant = grants.iter().map(|(_, n)| Vec::with_capacity(*n)).collect();
            let mut remaining: Vec<usize> = grants.iter().map(|(_, n)| *n).collect();
            // Each job goes to the grant with the most room left, so work
            // spreads over the idlest TaskTrackers first.
            while let Some((i, _)) = remaining
                .iter()
                .enumerate()
                .filter(|(_, r)| **r > 0)
                .max_by_key(|(i, r)| (**r, std::cmp::Reverse(*i)))
            {
                if until_ms.is_none()
                    && index
                        .queues
                        .get(node_group)
                        .is_some_and(|q| q.head_on_disk())
                {
                    self.page_in(&mut index, node_group, now_ms)?;
                }
                let Some(job_id) = index
                    .queues
                    .get_mut(node_group)
                    .and_then(|q| match until_ms {
                        None => q.ready.pop_first().map(|(_, id)| id),
                        Some(until) => {
                            // Sent ahead, in trigger order (priority orders
                            // jobs of the same instant only once they are due).
                            let entry = q.delayed.first_entry()?;
                            if entry.key().0 > until {
                                return None;
                            }
                            Some(entry.remove())
                        }
                    })
                else {
                    break;
                };
                let Some(r) = index.live.get_mut(&job_id) else {
                    continue;
                };
                let worker = &grants[i].0;
                let must_write = r.claim_needs_flush(flushed);
                r.recovered = None;
                r.adopted = None;
                r.job.state = JobState::Running;
                r.job.attempt += 1;
                r.job.worker.clone_from(worker);
                r.job.updated_at_ms = now_ms;
                let attempt = r.job.attempt;
                let line = match until_ms {
                    None => format!("to {worker}"),
                    Some(_) => format!(
                        "to {worker}, ahead of its time: it starts at {}",
                        lts_common::format_ms(r.job.trigger_at_ms)
                    ),
                };
                r.log(
                    LogEntry::new("", LogKind::Dispatched, attempt, line).with_worker(worker),
                    now_ms,
                );
                if must_write {
                    self.put_record(&mut batch, r)?;
                    write = true;
                }
                claimed.per_grant[i].push(r.job.clone());
                remaining[i] -= 1;
            }
            let next_delayed = index
                .queues
                .get(node_group)
                .and_then(|q| q.delayed.first_key_value())
                .map(|((at, _), _)| *at);
            // Held jobs join the queues when their hold ends.
            claimed.next_ready_at_ms = match (next_delayed, index.held_until()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if write {
                self.commit(index, batch)?;
            }
        }
        if write {
            // An attempt number is never handed out twice, also across a
            // crash: a claim is kept in memory (its lines are written with
            // the job's next transition) as long as what a crash can leave
            // on disk is at most one attempt behind; recovery skips one
            // number. Otherwise the claim is durable before it leaves.
            self.flush().await?;
        }
        Ok(claimed)
    }

    /// A key's value, from the write queue while a write to it waits there.
    pub(super) fn read_key(&self, key: &[u8]) -> Result<Option<::sled::IVec>> {
        match self.engine.unapplied(key) {
            Some(value) => Ok(value),
            None => self.tree()?.get(key).map_err(sled_err("reading a key")),
        }
    }

    pub(super) fn stored_record(&self, job_id: &str) -> Result<Option<Record>> {
        let key = job_key(job_id);
        match self.read_key(&key)? {
            Some(bytes) => Ok(Some(decode(&key, &bytes)?)),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl JobStore for SledStore {
    async fn recover(&self, now_ms: i64) -> Result<Recovery> {
        let mut rec = Recovery::default();
        let mut batch = Writes::default();
        let grace_ms = self.recovery_grace_ms.load(Ordering::Relaxed);
        {
            let mut index = self.lock();
            index.hold_until_ms = now_ms.saturating_add(grace_ms);
            let mut max_seq = 0;
            let tree = self.tree()?;
            // Jobs wait on disk, and tasks are held there, only once the
            // index went over its budget: most stores have neither.
            let on_disk = self.chunked_jobs()?;
            index.disk_tasks = tree.scan_prefix(b"k").next().is_some();
            for item in tree.scan_prefix(b"j") {
                let (key, bytes) = item.map_err(sled_err("reading job records"))?;
                let mut r: Record = match decode(&key, &bytes) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("skipping a job record: {e}");
                        rec.corrupt += 1;
                        continue;
                    }
                };
                max_seq = max_seq.max(r.job.seq);
                // A replaced job gave its task id to the job that replaced
                // it; every other job holds its own.
                let replaced = r.history.iter().any(|e| e.kind == LogKind::Replaced);
                let (group, task) = (&r.job.spec.task_tracker_node_group, &r.job.spec.task_id);
                let held_on_disk = index.disk_tasks && self.task_on_disk(group, task)?;
                if !held_on_disk && (!replaced || index.tasks.get(group, task).is_none()) {
                    index.tasks.set(group, task, &r.job.job_id);
                }
                if r.job.state.is_final() {
                    continue;
                }
                // A job waiting on disk was never handed out: it stays
                // there as it is.
                if may_wait_on_disk(&r.job, i64::MAX)
                    && Self::recover_on_disk(&mut index, &on_disk, &r.job)
                {
                    rec.pending += 1;
                    continue;
                }
                if r.job.state == JobState::Running {
                    let job = &mut r.job;
                    let entry = LogEntry::new(
                        &job.job_id,
                        LogKind::Requeued,
                        job.attempt,
                        format!(
                            "the JobTracker restarted while attempt {} ran on {}; it runs again with a new attempt",
                            job.attempt, job.worker
                        ),
                    )
                    .with_worker(&job.worker);
                    job.state = JobState::Pending;
                    job.worker.clear();
                    job.trigger_at_ms = job.trigger_at_ms.min(now_ms);
                    job.updated_at_ms = now_ms;
                    r.log(entry, now_ms);
                    self.put_record(&mut batch, &mut r)?;
                    rec.requeued += 1;
                    // The run that was going, or one handed out after it.
                    r.recovered = Some((r.job.attempt.max(1), r.job.attempt + 1));
                } else {
                    rec.pending += 1;
                    // A pending job that was due may have been handed out
                    // by a claim that did not reach the disk.
                    if r.job.state == JobState::Pending
                        && !r.job.spec.schedule.is_recurring()
                        && r.job.trigger_at_ms <= now_ms
                    {
                        r.recovered = Some((r.job.attempt + 1, r.job.attempt + 1));
                    }
                }
                // A claim before the restart may have handed out the next
                // attempt without writing it: that number is skipped.
                r.floor = r.job.attempt;
                r.unflushed = None;
                r.job.attempt += 1;
                if r.recovered.is_some() && grace_ms > 0 {
                    index.hold(&r.job.job_id);
                    rec.held += 1;
                } else {
                    index.enqueue(&r.job, now_ms);
                }
                index.live.insert(r.job.job_id.clone(), Box::new(r));
            }
            index.next_seq = max_seq + 1;
            index.opened_seq = index.next_seq;
            rec.feedback = self.tree()?.scan_prefix(b"f").count();
            self.commit(index, batch)?;
        }
        self.flush().await?;
        Ok(rec)
    }

    async fn submit(&self, jobs: Vec<JobSpec>, now_ms: i64) -> Result<Vec<SubmitResult>> {
        let mut results = Vec::with_capacity(jobs.len());
        let mut ready_groups: Vec<String> = Vec::new();
        {
            let mut index = self.lock();
            let mut batch = Writes::default();
            let mut recent_tasks = HashMap::new();
            let mut to_disk_by_group: HashMap<String, Vec<_>> = HashMap::new();
            for spec in jobs {
                let existing = self.task_holder(
                    &index,
                    &recent_tasks,
                    &spec.task_tracker_node_group,
                    &spec.task_id,
                )?;
                let job_id = new_job_id();
                let mut replaced = None;
                let mut task_on_disk = false;
                if let Some((existing_id, on_disk)) = existing {
                    if !spec.replace_on_exist {
                        results.push(SubmitResult::Refused(SubmitRefusal::AlreadyExists {
                            job_id: existing_id,
                        }));
                        continue;
                    }
                    task_on_disk = on_disk;
                    self.bring_in(&mut index, &existing_id, now_ms)?;
                    let old = match index.live.remove(&existing_id) {
                        Some(old) => Some(old),
                        None => self.stored_record(&existing_id)?.map(Box::new),
                    };
                    if let Some(mut old) = old {
                        index.dequeue(&old.job);
                        let before = old.job.clone();
                        if !old.job.state.is_final() {
                            old.job.state = JobState::Cancelled;
                            old.job.updated_at_ms = now_ms;
                        }
                        let attempt = old.job.attempt;
                        old.log(
                            LogEntry::new(
                                "",
                                LogKind::Replaced,
                                attempt,
                                format!("replaced by job {job_id} (replace_on_exist)"),
                            ),
                            now_ms,
                        );
                        self.put_record(&mut batch, &mut old)?;
                        replaced = Some(before);
                    }
                }
                let seq = index.next_seq;
                index.next_seq += 1;
                let mut r = Record::new(new_job(job_id.clone(), spec, seq, now_ms));
                r.log(LogEntry::new("", LogKind::Received, 0, ""), now_ms);
                self.put_record(&mut batch, &mut r)?;
                let due = may_wait_on_disk(&r.job, now_ms);
                let to_disk = due && index.over_budget();
                Self::set_task_holder(
                    &mut index,
                    &mut batch,
                    &mut recent_tasks,
                    &r.job.spec.task_tracker_node_group,
                    &r.job.spec.task_id,
                    &job_id,
                    to_disk || task_on_disk,
                );
                if due && !ready_groups.contains(&r.job.spec.task_tracker_node_group) {
                    ready_groups.push(r.job.spec.task_tracker_node_group.clone());
                }
                if to_disk {
                    to_disk_by_group
                        .entry(r.job.spec.task_tracker_node_group.clone())
                        .or_default()
                        .push((
                            super::paging::ready_key(&r.job),
                            job_id.clone(),
                            super::quota_bytes(&r.job.spec),
                        ));
                } else {
                    index.enqueue(&r.job, now_ms);
                    index.live.insert(job_id.clone(), Box::new(r));
                }
                results.push(match replaced {
                    Some(replaced) => SubmitResult::Replaced {
                        job_id,
                        replaced: Box::new(replaced),
                    },
                    None => SubmitResult::Created(job_id),
                });
            }
            for (group, jobs) in to_disk_by_group {
                self.spill(&mut index, &group, jobs)?;
            }
            self.commit(index, batch)?;
        }
        // Claimable now; durable after the flush. A claim meanwhile joins
        // the same flush if it needs one.
        if let Some(hook) = self.claimable.get() {
            for g in &ready_groups {
                hook(g);
            }
        }
        self.flush().await?;
        Ok(results)
    }

    fn on_claimable(&self, hook: ClaimableHook) {
        let _ = self.claimable.set(hook);
    }

    async fn sync(&self) -> Result<()> {
        // Its callers acknowledge outcomes to TaskTrackers, which keep them
        // until then: a flush that lingers a little serves them all.
        Ok(self.engine.flush(false).await?)
    }

    async fn claim(
        &self,
        node_group: &str,
        grants: &[(String, usize)],
        now_ms: i64,
    ) -> Result<Claimed> {
        self.claim_from(node_group, grants, now_ms, None).await
    }

    async fn claim_ahead(
        &self,
        node_group: &str,
        grants: &[(String, usize)],
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Claimed> {
        self.claim_from(node_group, grants, now_ms, Some(until_ms))
            .await
    }

    async fn started(&self, runs: &[(String, u32)], worker: &str, at_ms: i64) -> Result<()> {
        // Kept in memory and written with the job's next transition.
        let mut index = self.lock();
        for (job_id, attempt) in runs {
            if let Some(r) = index.live.get_mut(job_id) {
                if r.runs(*attempt) {
                    let e = LogEntry::new("", LogKind::Started, *attempt, "").with_worker(worker);
                    r.log(e, at_ms);
                }
            }
        }
        Ok(())
    }

    async fn adopt(
        &self,
        runs: &[(String, u32)],
        worker: &str,
        now_ms: i64,
    ) -> Result<Vec<(String, u32)>> {
        let mut adopted = Vec::new();
        let mut index = self.lock();
        let mut batch = Writes::default();
        for (job_id, attempt) in runs {
            let Some(r) = index.live.get(job_id) else {
                continue;
            };
            if !r.ran_before_the_restart(*attempt) {
                continue;
            }
            let job = r.job.clone();
            index.dequeue(&job);
            let Some(r) = index.live.get_mut(job_id) else {
                continue;
            };
            r.recovered = None;
            r.adopted = Some(*attempt);
            r.job.state = JobState::Running;
            r.job.worker = worker.to_string();
            r.job.updated_at_ms = now_ms;
            let e = LogEntry::new(
                "",
                LogKind::Dispatched,
                *attempt,
                format!("taken back from {worker}: it ran the job across the JobTracker's restart"),
            )
            .with_worker(worker);
            r.log(e, now_ms);
            self.put_record(&mut batch, r)?;
            adopted.push((job_id.clone(), *attempt));
        }
        self.commit(index, batch)?;
        self.engine.flush_soon();
        Ok(adopted)
    }

    async fn complete(&self, reports: Vec<RunReport>, now_ms: i64) -> Result<Vec<CompleteResult>> {
        let mut results = Vec::with_capacity(reports.len());
        let mut reports = reports.into_iter().peekable();
        // A few dozen outcomes per hold of the index lock: claims and
        // submits go on between them (see [`COMPLETE_CHUNK`]).
        while reports.peek().is_some() {
            let mut index = self.lock();
            let mut batch = Writes::default();
            let mut loose_logs = Vec::new();
            for report in reports.by_ref().take(COMPLETE_CHUNK) {
                let runs_it = index
                    .live
                    .get(&report.job_id)
                    .is_some_and(|r| r.runs(report.attempt));
                let current = index
                    .live
                    .get(&report.job_id)
                    .map(|r| (r.job.attempt, r.job.state));
                let late_but_current = index
                    .live
                    .get(&report.job_id)
                    .is_some_and(|r| r.ran_before_the_restart(report.attempt));
                match current {
                    _ if runs_it => {}
                    _ if late_but_current => {
                        // Its run ended while the JobTracker was down and
                        // the job was not handed out since: the outcome is
                        // the job's latest.
                        if let Some(r) = index.live.get(&report.job_id) {
                            let job = r.job.clone();
                            index.dequeue(&job);
                        }
                        if let Some(r) = index.live.get_mut(&report.job_id) {
                            r.recovered = None;
                            r.adopted = None;
                            r.job.state = JobState::Running;
                        }
                    }
                    other => {
                        let other = match other {
                            Some(live) => Some(live),
                            // A final job leaves the index; its record
                            // tells the attempt and state it ended at.
                            None => self
                                .stored_record(&report.job_id)?
                                .map(|r| (r.job.attempt, r.job.state)),
                        };
                        let current_attempt = other.map(|(a, _)| a).unwrap_or(0);
                        let entry = stale_outcome_log(&report, other);
                        match index.live.get_mut(&report.job_id) {
                            Some(r) => r.log(entry, now_ms),
                            None => loose_logs.push(entry),
                        }
                        results.push(CompleteResult::Stale { current_attempt });
                        continue;
                    }
                }
                let Some(mut r) = index.live.remove(&report.job_id) else {
                    continue;
                };
                let has_started = r
                    .history
                    .iter()
                    .any(|e| e.kind == LogKind::Started && e.attempt == report.attempt);
                if !has_started {
                    let e = LogEntry::new("", LogKind::Started, report.attempt, "")
                        .with_worker(&report.worker);
                    r.log(e, report.started_at_ms.min(now_ms));
                }
                let t = apply_outcome(&mut r.job, &report, now_ms);
                for entry in t.logs {
                    r.log(entry, now_ms);
                }
                if let Some(fb) = &t.feedback {
                    batch.insert(feedback_key(&fb.feedback_id), encode(fb)?);
                }
                let feedback = t.feedback;
                self.put_record(&mut batch, &mut r)?;
                let job = r.job.clone();
                if r.job.state.is_final() {
                    if let Some(parent) = index.waiting.remove(&r.job.job_id) {
                        // The next cycle waited for this one; it may go now.
                        if let Some(p) = index.live.get(&parent) {
                            let p = p.job.clone();
                            index.enqueue(&p, now_ms);
                        }
                    }
                } else {
                    index.enqueue(&r.job, now_ms);
                    index.live.insert(r.job.job_id.clone(), r);
                }
                results.push(CompleteResult::Applied {
                    job: Box::new(job),
                    feedback,
                });
            }
            self.put_logs(&mut batch, &loose_logs)?;
            self.commit(index, batch)?;
        }
        // Not waited for here: the caller acknowledges the outcomes to their
        // TaskTracker after `sync`, so the stream goes on meanwhile.
        self.engine.flush_soon();
        Ok(results)
    }

    async fn requeue(&self, runs: &[(String, u32)], reason: &str, now_ms: i64) -> Result<usize> {
        let mut n = 0;
        {
            let mut index = self.lock();
            let mut batch = Writes::default();
            for (job_id, attempt) in runs {
                let Some(r) = index.live.get_mut(job_id) else {
                    continue;
                };
                if !r.runs(*attempt) {
                    continue;
                }
                r.adopted = None;
                let entry = LogEntry::new("", LogKind::Requeued, *attempt, reason)
                    .with_worker(&r.job.worker);
                r.log(entry, now_ms);
                r.job.state = JobState::Pending;
                r.job.worker.clear();
                r.job.trigger_at_ms = r.job.trigger_at_ms.min(now_ms);
                r.job.updated_at_ms = now_ms;
                self.put_record(&mut batch, r)?;
                let job = r.job.clone();
                index.enqueue(&job, now_ms);
                n += 1;
            }
            self.commit(index, batch)?;
        }
        self.engine.flush_soon();
        Ok(n)
    }

    async fn cancel(&self, job_id: &str, now_ms: i64) -> Result<Cancelled> {
        let cancelled = {
            let mut index = self.lock();
            self.bring_in(&mut index, job_id, now_ms)?;
            let Some(mut r) = index.live.remove(job_id) else {
                return match self.stored_record(job_id)? {
                    Some(r) => Err(Error::WrongState(format!(
                        "job {job_id} is already {}",
                        r.job.state.name()
                    ))),
                    None => Err(Error::NotFound(job_id.to_string())),
                };
            };
            index.dequeue(&r.job);
            let before = r.job.clone();
            r.job.state = JobState::Cancelled;
            r.job.updated_at_ms = now_ms;
            r.job.worker.clear();
            let attempt = r.job.attempt;
            r.log(
                LogEntry::new(
                    "",
                    LogKind::Cancelled,
                    attempt,
                    format!("cancelled while {}", before.state.name()),
                ),
                now_ms,
            );
            let mut batch = Writes::default();
            self.put_record(&mut batch, &mut r)?;
            let feedback = r
                .job
                .spec
                .need_feedback
                .then(|| feedback_for(&r.job, None, now_ms));
            if let Some(fb) = &feedback {
                batch.insert(feedback_key(&fb.feedback_id), encode(fb)?);
            }
            self.commit(index, batch)?;
            Cancelled {
                before,
                after: r.job,
                feedback,
            }
        };
        self.flush().await?;
        Ok(cancelled)
    }

    fn backend(&self) -> &'static str {
        "embedded (sled)"
    }

    async fn get(&self, job_id: &str) -> Result<Option<Job>> {
        if let Some(r) = self.lock().live.get(job_id) {
            return Ok(Some(r.job.clone()));
        }
        Ok(self.stored_record(job_id)?.map(|r| r.job))
    }

    async fn get_by_task(&self, node_group: &str, task_id: &str) -> Result<Option<Job>> {
        let holder = {
            let index = self.lock();
            self.task_holder(&index, &HashMap::new(), node_group, task_id)?
        };
        match holder {
            Some((id, _)) => self.get(&id).await,
            None => Ok(None),
        }
    }

    async fn list(
        &self,
        filter: &ListFilter,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<(Vec<Job>, Option<String>)> {
        let start = match page_token {
            Some(t) => {
                let mut k = job_key(t);
                k.push(0);
                k
            }
            None => b"j".to_vec(),
        };
        let mut jobs = Vec::new();
        self.settled().await;
        for item in self.tree()?.range(start..b"k".to_vec()) {
            let (key, bytes) = item.map_err(sled_err("listing jobs"))?;
            let stored: Record = match decode(&key, &bytes) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("skipping a job record: {e}");
                    continue;
                }
            };
            // The in-memory copy of a live job is the newest.
            let job = match self.lock().live.get(&stored.job.job_id) {
                Some(live) => live.job.clone(),
                None => stored.job,
            };
            if filter.matches(&job) {
                if jobs.len() == page_size {
                    let token = jobs.last().map(|j: &Job| j.job_id.clone());
                    return Ok((jobs, token));
                }
                jobs.push(job);
            }
        }
        Ok((jobs, None))
    }

    async fn append_logs(&self, entries: Vec<LogEntry>) -> Result<()> {
        // Through the queue like every write, so the disk sees the lines
        // in order with the job's other changes (a deletion queued before
        // them is applied before them).
        let index = self.lock();
        let mut batch = Writes::default();
        self.put_logs(&mut batch, &entries)?;
        self.commit(index, batch)?;
        // A line lost to a crash costs no correctness: it rides on the
        // next flush.
        self.engine.flush_soon();
        Ok(())
    }

    async fn logs(
        &self,
        job_id: &str,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<(Vec<LogEntry>, Option<String>)> {
        let skip: usize = match page_token {
            Some(t) => t.parse().map_err(|_| {
                Error::Invalid(lts_common::ValidationError::new(
                    "page_token",
                    "is not a token this tracker gave out",
                ))
            })?,
            None => 0,
        };
        self.settled().await;
        let history = self.lock().live.get(job_id).map(|r| r.history.clone());
        let history = match history {
            Some(h) => h,
            None => self
                .stored_record(job_id)?
                .map(|r| r.history)
                .unwrap_or_default(),
        };
        let mut all: Vec<LogEntry> = history
            .into_iter()
            .map(|mut e| {
                e.job_id = job_id.to_string();
                e
            })
            .collect();
        for item in self.tree()?.scan_prefix(log_prefix(job_id)) {
            let (key, bytes) = item.map_err(sled_err("reading execution logs"))?;
            match decode::<LogEntry>(&key, &bytes) {
                Ok(e) => all.push(e),
                Err(e) => tracing::error!("skipping a log record: {e}"),
            }
        }
        // Transitions and biz lines interleave by time; the sort is stable,
        // so lines of one instant keep the order they were written in.
        all.sort_by_key(|e| e.at_ms);
        let page: Vec<LogEntry> = all.iter().skip(skip).take(page_size).cloned().collect();
        let next = (skip + page.len() < all.len()).then(|| (skip + page.len()).to_string());
        Ok((page, next))
    }

    async fn pending_feedback(&self) -> Result<Vec<Feedback>> {
        let mut out = Vec::new();
        self.settled().await;
        for item in self.tree()?.scan_prefix(b"f") {
            let (key, bytes) = item.map_err(sled_err("reading feedback"))?;
            match decode(&key, &bytes) {
                Ok(f) => out.push(f),
                Err(e) => tracing::error!("skipping a feedback record: {e}"),
            }
        }
        Ok(out)
    }

    async fn ack_feedback(&self, feedback_ids: &[String]) -> Result<()> {
        // Through the queue like every write: an item's insert was queued
        // before the item could be delivered, so its deletion is applied
        // after it. Applied to the tree at once, the deletion could come
        // first and the acked item come back after a restart.
        let index = self.lock();
        let mut batch = Writes::default();
        for id in feedback_ids {
            batch.remove(feedback_key(id));
        }
        self.commit(index, batch)?;
        // A lost ack only means the feedback is delivered again.
        self.engine.flush_soon();
        Ok(())
    }

    async fn queue_depths(&self, now_ms: i64) -> Result<Vec<(String, usize)>> {
        let mut index = self.lock();
        let groups: Vec<String> = index.queues.keys().cloned().collect();
        let mut out = Vec::with_capacity(groups.len());
        for g in groups {
            index.promote(&g, now_ms);
            let depth = index
                .queues
                .get(&g)
                .map_or(0, |q| q.ready.len() + q.disk.jobs as usize);
            out.push((g.clone(), depth));
        }
        Ok(out)
    }

    async fn group_usage(&self) -> Result<Vec<(String, GroupUsage)>> {
        // Kept exact by the index as jobs come and go: no scan.
        let index = self.lock();
        let mut usage: HashMap<String, GroupUsage> =
            index.live.usage().map(|(g, u)| (g.clone(), *u)).collect();
        for (g, q) in index.queues.iter().filter(|(_, q)| q.disk.jobs > 0) {
            let u = usage.entry(g.clone()).or_default();
            u.jobs += q.disk.jobs;
            u.bytes += q.disk.bytes;
        }
        Ok(usage.into_iter().collect())
    }

    async fn node_groups(&self) -> Result<Vec<String>> {
        Ok(self
            .lock()
            .queues
            .iter()
            .filter(|(_, q)| !q.ready.is_empty() || !q.delayed.is_empty() || q.disk.jobs > 0)
            .map(|(g, _)| g.clone())
            .collect())
    }

    async fn query_logs(
        &self,
        filter: &LogFilter,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<(Vec<LogEntry>, Option<String>)> {
        query_logs_by_job(self, filter, page_size, page_token).await
    }

    fn poll_interval(&self) -> Option<std::time::Duration> {
        // Nobody else writes to this directory: every change is this
        // tracker's own, and wakes whom it concerns.
        None
    }

    fn cycles(&self) -> Option<&dyn CycleStore> {
        Some(self)
    }

    fn operator(&self) -> Option<&dyn OperatorStore> {
        Some(self)
    }

    async fn close(&self) -> Result<()> {
        // Reads fail from here on; closing twice finds nothing to do.
        let Some(tree) = self.take_tree() else {
            return Ok(());
        };
        let flushed = self.engine.close().await;
        let lock_file = self.lock_file.clone();
        tokio::task::spawn_blocking(move || {
            drop(tree);
            wait_for_release(&lock_file)
        })
        .await
        .map_err(|e| Error::internal("closing the data directory", e))??;
        Ok(flushed?)
    }
}

#[async_trait]
impl OperatorStore for SledStore {
    async fn admin(&self, job_id: &str, action: AdminAction, now_ms: i64) -> Result<Admined> {
        let admined = {
            let mut index = self.lock();
            let mut batch = Writes::default();
            self.bring_in(&mut index, job_id, now_ms)?;
            let (mut r, live) = match index.live.remove(job_id) {
                Some(r) => (r, true),
                None => match self.stored_record(job_id)? {
                    Some(r) => (Box::new(r), false),
                    None => return Err(Error::NotFound(job_id.to_string())),
                },
            };
            let restore = |index: &mut Index, mut r: Box<Record>| {
                // A write put into the batch is not applied: forget its
                // stamp (the job's next claim flushes if it needs to).
                r.unflushed = None;
                if live {
                    index.live.insert(r.job.job_id.clone(), r);
                }
            };
            let decision = match operator::decide(&r.job, &action, now_ms) {
                Ok(d) => d,
                Err(e) => {
                    restore(&mut index, r);
                    return Err(e);
                }
            };
            let before = std::mem::replace(&mut r.job, decision.job);
            if let Some(line) = decision.line {
                r.log(line, now_ms);
            }
            let mut wake = Vec::new();
            let mut deleted = false;
            let result: Result<()> = (|| {
                match decision.effect {
                    Effect::Keep => {}
                    Effect::Park => {
                        index.dequeue(&before);
                        // A cycle made ahead of its point has not started
                        // yet: it goes too, so nothing fires after this.
                        if let Some(child_id) = r.last_child.clone() {
                            let ahead = index.live.get(&child_id).is_some_and(|c| {
                                c.job.state == JobState::Pending && c.job.trigger_at_ms > now_ms
                            });
                            if ahead {
                                if let Some(mut c) = index.live.remove(&child_id) {
                                    index.dequeue(&c.job);
                                    c.job.state = JobState::Cancelled;
                                    c.job.updated_at_ms = now_ms;
                                    c.log(LogEntry::new("", LogKind::Cancelled, 0, "its cron or repeat job was suspended before this cycle's point"), now_ms);
                                    self.put_record(&mut batch, &mut c)?;
                                }
                            }
                        }
                    }
                    Effect::Requeue => {
                        index.dequeue(&before);
                        index.enqueue(&r.job, now_ms);
                        wake.push(r.job.spec.task_tracker_node_group.clone());
                    }
                    Effect::FireCycle => {
                        if let Some(child) =
                            self.fire_cycle(&mut index, &mut batch, &mut r, now_ms, now_ms)?
                        {
                            r.last_child = Some(child);
                            wake.push(r.job.spec.task_tracker_node_group.clone());
                        }
                    }
                    Effect::Delete => {
                        index.dequeue(&r.job);
                        // Its log lines first: a crash in between leaves
                        // the job, not lines of a job that is gone.
                        for item in self.tree()?.scan_prefix(log_prefix(job_id)).keys() {
                            batch.remove(
                                item.map_err(sled_err("reading the log lines of a deleted job"))?,
                            );
                        }
                        // And lines still queued to be written before this.
                        let prefix = log_prefix(job_id);
                        for key in self.engine.unapplied_keys(&prefix) {
                            batch.remove(key);
                        }
                        batch.remove(job_key(job_id));
                        self.remove_task_holder(
                            &mut index,
                            &mut batch,
                            &r.job.spec.task_tracker_node_group,
                            &r.job.spec.task_id,
                            job_id,
                        )?;
                        deleted = true;
                    }
                }
                Ok(())
            })();
            if let Err(e) = result {
                r.job = before;
                restore(&mut index, r);
                return Err(e);
            }
            if deleted {
                self.commit(index, batch)?;
                Admined {
                    before,
                    after: None,
                    wake,
                }
            } else {
                r.job.updated_at_ms = now_ms;
                self.put_record(&mut batch, &mut r)?;
                let after = r.job.clone();
                if !r.job.state.is_final() {
                    index.live.insert(r.job.job_id.clone(), r);
                }
                self.commit(index, batch)?;
                Admined {
                    before,
                    after: Some(after),
                    wake,
                }
            }
        };
        self.flush().await?;
        Ok(admined)
    }
}

impl Drop for SledStore {
    /// A store dropped without [`JobStore::close`] closes here, with the
    /// same guarantee, blocking the dropping thread: queued batches are
    /// applied, sled flushes as its last handle goes, and the directory's
    /// lock is released when this returns.
    fn drop(&mut self) {
        let Some(tree) = self.take_tree() else {
            return;
        };
        self.engine.stop();
        drop(tree);
        if let Err(e) = wait_for_release(&self.lock_file) {
            tracing::error!("closing the store: {}", Error::from(e).chain());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds the store's write thread: batches queue up until released.
    fn hold_writes(store: &SledStore, held: bool) {
        store.engine.pause_writes(held);
    }

    const NOW: i64 = 1_700_000_000_000;

    #[tokio::test]
    async fn acked_feedback_never_returns_after_a_restart_whatever_was_queued() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let acked = {
            let store = SledStore::open(dir.path()).expect("open");
            store.recover(NOW).await.expect("recover");
            let mut spec = JobSpec::new("t", "g");
            spec.need_feedback = true;
            spec.submit_node_group = "clients".into();
            store.submit(vec![spec], NOW).await.expect("submit");
            let claimed = store
                .claim("g", &[("w".to_string(), 1)], NOW)
                .await
                .expect("claim");
            let job = claimed.per_grant[0][0].clone();
            // The outcome's writes, its feedback among them, are still
            // queued when the client acks the feedback.
            hold_writes(&store, true);
            let report = RunReport {
                job_id: job.job_id.clone(),
                attempt: job.attempt,
                outcome: lts_common::Outcome::Success("ok".into()),
                started_at_ms: NOW,
                finished_at_ms: NOW + 1,
                worker: "w".into(),
            };
            let results = store
                .complete(vec![report], NOW + 1)
                .await
                .expect("complete");
            let Some(CompleteResult::Applied {
                feedback: Some(fb), ..
            }) = results.into_iter().next()
            else {
                panic!("the outcome was applied with feedback");
            };
            store
                .ack_feedback(std::slice::from_ref(&fb.feedback_id))
                .await
                .expect("ack");
            store
                .append_logs(vec![LogEntry::new(&job.job_id, LogKind::Biz, 1, "line")])
                .await
                .expect("log");
            hold_writes(&store, false);
            fb.feedback_id
        };
        let store = SledStore::open(dir.path()).expect("reopen");
        let recovery = store.recover(NOW + 2).await.expect("recover");
        let left = store.pending_feedback().await.expect("feedback");
        assert!(
            left.iter().all(|f| f.feedback_id != acked),
            "acked feedback {acked} came back: {left:?}"
        );
        assert_eq!(recovery.feedback, 0);
    }

    fn report(job_id: &str, attempt: u32, worker: &str, at: i64) -> RunReport {
        RunReport {
            job_id: job_id.into(),
            attempt,
            outcome: lts_common::Outcome::Success("ok".into()),
            started_at_ms: at - 1,
            finished_at_ms: at,
            worker: worker.into(),
        }
    }

    /// Submits jobs `t0..tn` and hands them all to `w` (attempt 1), then
    /// lets the store go as a crash would find it (what reached the disk).
    async fn runs_going_when_the_tracker_stops(dir: &Path, n: usize) -> Vec<String> {
        let store = SledStore::open(dir).expect("open");
        store.recover(NOW).await.expect("recover");
        let specs = (0..n).map(|i| JobSpec::new(format!("t{i}"), "g")).collect();
        store.submit(specs, NOW).await.expect("submit");
        let claimed = store
            .claim("g", &[("w".to_string(), n)], NOW)
            .await
            .expect("claim");
        let ids: Vec<String> = claimed.per_grant[0]
            .iter()
            .map(|j| j.job_id.clone())
            .collect();
        assert_eq!(ids.len(), n);
        assert!(claimed.per_grant[0].iter().all(|j| j.attempt == 1));
        tokio::task::spawn_blocking(move || drop(store))
            .await
            .expect("drop");
        ids
    }

    async fn reopen_with_grace(dir: &Path, at: i64) -> (SledStore, Recovery) {
        let store = SledStore::open(dir).expect("reopen");
        store.set_recovery_grace(std::time::Duration::from_secs(3));
        let recovery = store.recover(at).await.expect("recover");
        (store, recovery)
    }

    #[tokio::test]
    async fn after_a_restart_runs_from_before_it_report_before_their_jobs_go_out_again() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ids = runs_going_when_the_tracker_stops(dir.path(), 3).await;
        let restart = NOW + 10;
        let (store, recovery) = reopen_with_grace(dir.path(), restart).await;
        assert_eq!(recovery.held, 3, "{recovery:?}");
        // Held through the grace: nothing is handed out, and the dispatcher
        // is told when to look again.
        let claimed = store
            .claim("g", &[("w2".to_string(), 3)], restart + 1)
            .await
            .expect("claim");
        assert!(claimed.per_grant[0].is_empty());
        assert_eq!(claimed.next_ready_at_ms, Some(restart + 3000));

        // The outcome of one run arrives late: it is the job's outcome.
        let results = store
            .complete(vec![report(&ids[0], 1, "w", restart + 2)], restart + 2)
            .await
            .expect("complete");
        assert!(
            matches!(results[0], CompleteResult::Applied { .. }),
            "{results:?}"
        );
        let job = store.get(&ids[0]).await.expect("get").expect("job");
        assert_eq!(job.state, JobState::Succeeded);

        // Another run is still going on a TaskTracker that reconnected:
        // the job takes it back instead of cancelling it.
        let adopted = store
            .adopt(&[(ids[1].clone(), 1)], "w", restart + 3)
            .await
            .expect("adopt");
        assert_eq!(adopted, vec![(ids[1].clone(), 1)]);
        let job = store.get(&ids[1]).await.expect("get").expect("job");
        assert_eq!((job.state, job.worker.as_str()), (JobState::Running, "w"));

        // After the grace only the job nobody reported goes out, with a
        // new attempt.
        let claimed = store
            .claim("g", &[("w2".to_string(), 3)], restart + 3000)
            .await
            .expect("claim");
        let out: Vec<(String, u32)> = claimed.per_grant[0]
            .iter()
            .map(|j| (j.job_id.clone(), j.attempt))
            .collect();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].0, ids[2]);
        assert!(out[0].1 > 1, "{out:?}");

        // The taken-back run ends: its outcome applies. The first attempt
        // of the job handed out again is stale now, and stays refused.
        let results = store
            .complete(
                vec![
                    report(&ids[1], 1, "w", restart + 3001),
                    report(&ids[2], 1, "w", restart + 3001),
                ],
                restart + 3001,
            )
            .await
            .expect("complete");
        assert!(
            matches!(results[0], CompleteResult::Applied { .. }),
            "{results:?}"
        );
        assert!(
            matches!(results[1], CompleteResult::Stale { .. }),
            "{results:?}"
        );
        let job = store.get(&ids[1]).await.expect("get").expect("job");
        assert_eq!(job.state, JobState::Succeeded);
        let job = store.get(&ids[2]).await.expect("get").expect("job");
        assert_eq!(job.state, JobState::Running);
    }

    #[tokio::test]
    async fn a_taken_back_run_whose_stream_is_lost_is_put_back_with_a_new_attempt() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ids = runs_going_when_the_tracker_stops(dir.path(), 1).await;
        let restart = NOW + 10;
        let (store, _) = reopen_with_grace(dir.path(), restart).await;
        let run = (ids[0].clone(), 1);
        let adopted = store
            .adopt(std::slice::from_ref(&run), "w", restart)
            .await
            .expect("adopt");
        assert_eq!(adopted, vec![run.clone()]);
        // Taken back once only.
        let again = store
            .adopt(std::slice::from_ref(&run), "w", restart)
            .await
            .expect("adopt");
        assert!(again.is_empty());
        let n = store
            .requeue(std::slice::from_ref(&run), "stream lost", restart + 1)
            .await
            .expect("requeue");
        assert_eq!(n, 1);
        let claimed = store
            .claim("g", &[("w2".to_string(), 1)], restart + 3000)
            .await
            .expect("claim");
        let job = &claimed.per_grant[0][0];
        assert!(job.attempt > 1, "{job:?}");
        let results = store
            .complete(
                vec![report(&ids[0], 1, "w", restart + 3001)],
                restart + 3001,
            )
            .await
            .expect("complete");
        assert!(
            matches!(results[0], CompleteResult::Stale { .. }),
            "{results:?}"
        );
    }

    #[tokio::test]
    async fn without_a_grace_the_jobs_go_out_at_once_and_late_outcomes_still_apply_until_then() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ids = runs_going_when_the_tracker_stops(dir.path(), 2).await;
        let store = SledStore::open(dir.path()).expect("reopen");
        let recovery = store.recover(NOW + 10).await.expect("recover");
        assert_eq!(recovery.held, 0);
        let results = store
            .complete(vec![report(&ids[0], 1, "w", NOW + 11)], NOW + 11)
            .await
            .expect("complete");
        assert!(
            matches!(results[0], CompleteResult::Applied { .. }),
            "{results:?}"
        );
        let claimed = store
            .claim("g", &[("w2".to_string(), 2)], NOW + 12)
            .await
            .expect("claim");
        assert_eq!(claimed.per_grant[0].len(), 1);
        assert_eq!(claimed.per_grant[0][0].job_id, ids[1]);
    }

    #[tokio::test]
    async fn a_closed_store_reopens_at_once_twenty_times_in_a_row() {
        let dir = tempfile::tempdir().expect("temporary directory");
        for round in 0..20 {
            // Opened right after the previous close returned: no retry, no
            // wait on a timer.
            let store = SledStore::open(dir.path())
                .unwrap_or_else(|e| panic!("round {round}: reopening after close: {}", e.chain()));
            store.recover(NOW + round).await.expect("recover");
            store
                .submit(vec![JobSpec::new(format!("t{round}"), "g")], NOW + round)
                .await
                .expect("submit");
            store
                .append_logs(vec![LogEntry::new("x", LogKind::Biz, 1, "line")])
                .await
                .expect("log");
            store.close().await.expect("close");
            let e = store.get("x").await.map(|_| ()).unwrap_err();
            assert!(matches!(e, Error::ShuttingDown), "{e}");
            let e = store.submit(vec![JobSpec::new("late", "g")], NOW).await;
            assert!(matches!(e, Err(Error::ShuttingDown)), "{e:?}");
            store.close().await.expect("closing twice is harmless");
        }
        let store = SledStore::open(dir.path()).expect("open");
        store.recover(NOW + 20).await.expect("recover");
        let (jobs, _) = store
            .list(&ListFilter::default(), 100, None)
            .await
            .expect("list");
        assert_eq!(jobs.len(), 20, "every round's job was kept");
    }

    #[test]
    fn a_dropped_store_releases_its_directory_before_the_drop_returns() {
        let dir = tempfile::tempdir().expect("temporary directory");
        for round in 0..20 {
            let store = SledStore::open(dir.path())
                .unwrap_or_else(|e| panic!("round {round}: reopening after a drop: {}", e.chain()));
            let mut batch = Writes::default();
            batch.insert(job_key(&format!("k{round}")), b"v".to_vec());
            store.commit(store.lock(), batch).expect("commit");
            drop(store);
        }
    }

    #[test]
    fn a_closing_store_applies_every_batch_queued_before_it_closed() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let keys: Vec<Vec<u8>> = (0..50u32).map(|i| job_key(&format!("k{i}"))).collect();
        {
            let store = SledStore::open(dir.path()).expect("open");
            // The write thread takes nothing while held: the batches are
            // all still queued when the store closes.
            hold_writes(&store, true);
            for key in &keys {
                let mut batch = Writes::default();
                batch.insert(key.clone(), b"v".to_vec());
                store.commit(store.lock(), batch).expect("commit");
            }
            drop(store);
        }
        let store = SledStore::open(dir.path()).expect("reopen");
        for key in &keys {
            assert!(
                store
                    .tree()
                    .expect("open")
                    .get(key)
                    .expect("read")
                    .is_some(),
                "{key:?} was written"
            );
        }
    }
}
