//! The embedded store: sled under a data directory, with the queues
//! indexed in memory.
//!
//! One sled tree holds every record, under a one-byte prefix, so a batch
//! that touches a job, its task key and its log lines is one atomic write:
//!
//! | key | value |
//! |---|---|
//! | `j` job id | the job (MessagePack, named fields) |
//! | `t` node group `0x00` task id | job id |
//! | `l` job id `0x00` sequence (u64 BE) | a log line |
//! | `f` feedback id | a feedback |
//! | `m` name | store metadata (`schema_version`) |
//!
//! Jobs that are not final are also kept in memory with a ready queue per
//! node group, so a claim touches no disk but the write of the claimed
//! jobs. Every call that changes state ends with one flush (group commit).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use lts_common::{Job, JobSpec, JobState, LogEntry, LogKind};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::*;
use crate::error::{Error, Result};

const SCHEMA_VERSION: u64 = 1;

/// Ordering key of a ready job: priority, trigger time, submit order.
type ReadyKey = (i32, i64, u64);
/// Ordering key of a job waiting for its trigger time.
type DelayedKey = (i64, u64);

#[derive(Default)]
struct Queues {
    ready: BTreeMap<ReadyKey, String>,
    delayed: BTreeMap<DelayedKey, String>,
}

#[derive(Default)]
struct Index {
    /// Jobs that are not final.
    live: HashMap<String, Job>,
    /// Pending jobs per node group.
    queues: HashMap<String, Queues>,
    next_seq: u64,
}

impl Index {
    fn enqueue(&mut self, job: &Job, now_ms: i64) {
        if job.state != JobState::Pending {
            return;
        }
        let q = self
            .queues
            .entry(job.spec.task_tracker_node_group.clone())
            .or_default();
        if job.trigger_at_ms <= now_ms {
            q.ready.insert(
                (job.spec.priority, job.trigger_at_ms, job.seq),
                job.job_id.clone(),
            );
        } else {
            q.delayed
                .insert((job.trigger_at_ms, job.seq), job.job_id.clone());
        }
    }

    fn dequeue(&mut self, job: &Job) {
        if let Some(q) = self.queues.get_mut(&job.spec.task_tracker_node_group) {
            q.ready
                .remove(&(job.spec.priority, job.trigger_at_ms, job.seq));
            q.delayed.remove(&(job.trigger_at_ms, job.seq));
        }
    }

    /// Moves jobs whose time has come from delayed to ready.
    fn promote(&mut self, node_group: &str, now_ms: i64) {
        let Some(q) = self.queues.get_mut(node_group) else {
            return;
        };
        while let Some(entry) = q.delayed.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let ((_, seq), job_id) = entry.remove_entry();
            if let Some(job) = self.live.get(&job_id) {
                q.ready
                    .insert((job.spec.priority, job.trigger_at_ms, seq), job_id);
            }
        }
    }
}

/// The sled-backed [`JobStore`].
pub struct SledStore {
    db: ::sled::Db,
    tree: ::sled::Tree,
    index: Mutex<Index>,
    log_seq: AtomicU64,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(v).map_err(|e| Error::Store(format!("encoding a record: {e}")))
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

fn job_key(job_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + job_id.len());
    k.push(b'j');
    k.extend_from_slice(job_id.as_bytes());
    k
}

fn task_key(node_group: &str, task_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + node_group.len() + task_id.len());
    k.push(b't');
    k.extend_from_slice(node_group.as_bytes());
    k.push(0);
    k.extend_from_slice(task_id.as_bytes());
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
    /// Opens (or creates) the store under `dir`. Refuses a store written by
    /// a newer version.
    pub fn open(dir: &Path) -> Result<SledStore> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Store(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let db = ::sled::Config::new()
            .path(dir.join("jobs.sled"))
            .mode(::sled::Mode::HighThroughput)
            .open()
            .map_err(|e| Error::Store(format!("cannot open {}: {e}", dir.display())))?;
        let tree = db.open_tree("lts")?;
        match tree.get(b"mschema_version")? {
            Some(v) => {
                let version =
                    u64::from_be_bytes(v.as_ref().try_into().map_err(|_| Error::Corrupt {
                        key: "mschema_version".into(),
                        message: format!("{} bytes, 8 expected", v.len()),
                    })?);
                if version > SCHEMA_VERSION {
                    return Err(Error::Store(format!(
                        "{} was written with store schema {version}; this JobTracker reads schema {SCHEMA_VERSION} and older. Run a newer JobTracker.",
                        dir.display()
                    )));
                }
            }
            None => {
                tree.insert(b"mschema_version", &SCHEMA_VERSION.to_be_bytes())?;
            }
        }
        let start = (lts_common::now_ms().max(0) as u64) << 20;
        Ok(SledStore {
            db,
            tree,
            index: Mutex::new(Index::default()),
            log_seq: AtomicU64::new(start),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        // A panic while holding the lock leaves the index as consistent as
        // the last completed statement; keep serving rather than poison
        // every later call.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put_logs(&self, batch: &mut ::sled::Batch, entries: &[LogEntry]) -> Result<()> {
        for e in entries {
            let mut key = log_prefix(&e.job_id);
            key.extend_from_slice(&self.log_seq.fetch_add(1, Ordering::Relaxed).to_be_bytes());
            batch.insert(key, encode(e)?);
        }
        Ok(())
    }

    fn put_job(batch: &mut ::sled::Batch, job: &Job) -> Result<()> {
        batch.insert(job_key(&job.job_id), encode(job)?);
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }

    fn stored_job(&self, job_id: &str) -> Result<Option<Job>> {
        let key = job_key(job_id);
        match self.tree.get(&key)? {
            Some(bytes) => Ok(Some(decode(&key, &bytes)?)),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl JobStore for SledStore {
    async fn recover(&self, now_ms: i64) -> Result<Recovery> {
        let mut rec = Recovery::default();
        let mut batch = ::sled::Batch::default();
        let mut requeue_logs = Vec::new();
        {
            let mut index = self.lock();
            let mut max_seq = 0;
            for item in self.tree.scan_prefix(b"j") {
                let (key, bytes) = item?;
                let mut job: Job = match decode(&key, &bytes) {
                    Ok(j) => j,
                    Err(e) => {
                        tracing::error!("skipping a job record: {e}");
                        rec.corrupt += 1;
                        continue;
                    }
                };
                max_seq = max_seq.max(job.seq);
                if job.state.is_final() {
                    continue;
                }
                if job.state == JobState::Running {
                    requeue_logs.push(
                        LogEntry::new(
                            &job.job_id,
                            LogKind::Requeued,
                            job.attempt,
                            format!(
                                "the JobTracker restarted while attempt {} ran on {}; it runs again with a new attempt",
                                job.attempt, job.worker
                            ),
                        )
                        .with_worker(&job.worker),
                    );
                    job.state = JobState::Pending;
                    job.worker.clear();
                    job.trigger_at_ms = job.trigger_at_ms.min(now_ms);
                    job.updated_at_ms = now_ms;
                    Self::put_job(&mut batch, &job)?;
                    rec.requeued += 1;
                } else {
                    rec.pending += 1;
                }
                index.enqueue(&job, now_ms);
                index.live.insert(job.job_id.clone(), job);
            }
            index.next_seq = max_seq + 1;
            rec.feedback = self.tree.scan_prefix(b"f").count();
            self.put_logs(&mut batch, &requeue_logs)?;
            self.tree.apply_batch(batch)?;
        }
        self.flush().await?;
        Ok(rec)
    }

    async fn submit(&self, jobs: Vec<JobSpec>, now_ms: i64) -> Result<Vec<SubmitResult>> {
        let mut results = Vec::with_capacity(jobs.len());
        {
            let mut index = self.lock();
            let mut batch = ::sled::Batch::default();
            let mut logs = Vec::with_capacity(jobs.len());
            // Task ids taken earlier in this same batch.
            let mut in_batch: HashMap<Vec<u8>, String> = HashMap::new();
            for spec in jobs {
                if let Some(refusal) = unsupported(&spec) {
                    results.push(SubmitResult::Refused(refusal));
                    continue;
                }
                let tkey = task_key(&spec.task_tracker_node_group, &spec.task_id);
                let existing = match in_batch.get(&tkey) {
                    Some(id) => Some(id.clone()),
                    None => self
                        .tree
                        .get(&tkey)?
                        .map(|v| String::from_utf8_lossy(&v).into_owned()),
                };
                let mut replaced = None;
                if let Some(existing_id) = existing {
                    if !spec.replace_on_exist {
                        results.push(SubmitResult::Refused(SubmitRefusal::AlreadyExists {
                            job_id: existing_id,
                        }));
                        continue;
                    }
                    let old = match index.live.remove(&existing_id) {
                        Some(old) => Some(old),
                        None => self.stored_job(&existing_id)?,
                    };
                    if let Some(mut old) = old {
                        index.dequeue(&old);
                        let before = old.clone();
                        if !old.state.is_final() {
                            old.state = JobState::Cancelled;
                            old.updated_at_ms = now_ms;
                            Self::put_job(&mut batch, &old)?;
                        }
                        replaced = Some(before);
                    }
                }
                let job_id = new_job_id();
                let seq = index.next_seq;
                index.next_seq += 1;
                let job = new_job(job_id.clone(), spec, seq, now_ms);
                Self::put_job(&mut batch, &job)?;
                batch.insert(tkey.clone(), job_id.as_bytes());
                in_batch.insert(tkey, job_id.clone());
                logs.push(LogEntry::new(&job_id, LogKind::Received, 0, ""));
                if let Some(old) = &replaced {
                    logs.push(LogEntry::new(
                        &old.job_id,
                        LogKind::Replaced,
                        old.attempt,
                        format!("replaced by job {job_id} (replace_on_exist)"),
                    ));
                }
                index.enqueue(&job, now_ms);
                index.live.insert(job_id.clone(), job);
                results.push(match replaced {
                    Some(replaced) => SubmitResult::Replaced {
                        job_id,
                        replaced: Box::new(replaced),
                    },
                    None => SubmitResult::Created(job_id),
                });
            }
            self.put_logs(&mut batch, &logs)?;
            self.tree.apply_batch(batch)?;
        }
        self.flush().await?;
        Ok(results)
    }

    async fn claim(
        &self,
        node_group: &str,
        grants: &[(String, usize)],
        now_ms: i64,
    ) -> Result<Claimed> {
        let mut claimed = Claimed::default();
        let mut any = false;
        {
            let mut index = self.lock();
            index.promote(node_group, now_ms);
            let mut batch = ::sled::Batch::default();
            let mut logs = Vec::new();
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
                let Some(job_id) = index
                    .queues
                    .get_mut(node_group)
                    .and_then(|q| q.ready.pop_first())
                    .map(|(_, id)| id)
                else {
                    break;
                };
                let Some(job) = index.live.get_mut(&job_id) else {
                    continue;
                };
                let worker = &grants[i].0;
                job.state = JobState::Running;
                job.attempt += 1;
                job.worker.clone_from(worker);
                job.updated_at_ms = now_ms;
                Self::put_job(&mut batch, job)?;
                logs.push(
                    LogEntry::new(
                        &job.job_id,
                        LogKind::Dispatched,
                        job.attempt,
                        format!("to {worker}"),
                    )
                    .with_worker(worker),
                );
                claimed.per_grant[i].push(job.clone());
                remaining[i] -= 1;
                any = true;
            }
            claimed.next_ready_at_ms = index
                .queues
                .get(node_group)
                .and_then(|q| q.delayed.first_key_value())
                .map(|((at, _), _)| *at);
            if any {
                self.put_logs(&mut batch, &logs)?;
                self.tree.apply_batch(batch)?;
            }
        }
        if any {
            self.flush().await?;
        }
        Ok(claimed)
    }

    async fn started(&self, runs: &[(String, u32)], worker: &str, at_ms: i64) -> Result<()> {
        let entries: Vec<LogEntry> = runs
            .iter()
            .map(|(job_id, attempt)| {
                let mut e =
                    LogEntry::new(job_id, LogKind::Started, *attempt, "").with_worker(worker);
                e.at_ms = at_ms;
                e
            })
            .collect();
        let mut batch = ::sled::Batch::default();
        self.put_logs(&mut batch, &entries)?;
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    async fn complete(&self, reports: Vec<RunReport>, now_ms: i64) -> Result<Vec<CompleteResult>> {
        let mut results = Vec::with_capacity(reports.len());
        {
            let mut index = self.lock();
            let mut batch = ::sled::Batch::default();
            let mut logs = Vec::with_capacity(reports.len() * 2);
            for report in reports {
                let current = index.live.get(&report.job_id).map(|j| (j.attempt, j.state));
                match current {
                    Some((attempt, JobState::Running)) if attempt == report.attempt => {}
                    other => {
                        let current_attempt = other.map(|(a, _)| a).unwrap_or(0);
                        logs.push(
                            LogEntry::new(
                                &report.job_id,
                                LogKind::StaleOutcome,
                                report.attempt,
                                format!(
                                    "refused {} for attempt {}: the current attempt is {current_attempt}",
                                    report.outcome, report.attempt
                                ),
                            )
                            .with_worker(&report.worker),
                        );
                        results.push(CompleteResult::Stale { current_attempt });
                        continue;
                    }
                }
                let Some(mut job) = index.live.remove(&report.job_id) else {
                    continue;
                };
                let t = apply_outcome(&mut job, &report, now_ms);
                logs.extend(t.logs);
                if let Some(fb) = &t.feedback {
                    batch.insert(feedback_key(&fb.feedback_id), encode(fb)?);
                }
                let feedback = t.feedback;
                Self::put_job(&mut batch, &job)?;
                if !job.state.is_final() {
                    index.enqueue(&job, now_ms);
                    index.live.insert(job.job_id.clone(), job.clone());
                }
                results.push(CompleteResult::Applied {
                    job: Box::new(job),
                    feedback,
                });
            }
            self.put_logs(&mut batch, &logs)?;
            self.tree.apply_batch(batch)?;
        }
        self.flush().await?;
        Ok(results)
    }

    async fn requeue(&self, runs: &[(String, u32)], reason: &str, now_ms: i64) -> Result<usize> {
        let mut n = 0;
        {
            let mut index = self.lock();
            let mut batch = ::sled::Batch::default();
            let mut logs = Vec::new();
            for (job_id, attempt) in runs {
                let Some(job) = index.live.get_mut(job_id) else {
                    continue;
                };
                if job.state != JobState::Running || job.attempt != *attempt {
                    continue;
                }
                logs.push(
                    LogEntry::new(job_id, LogKind::Requeued, *attempt, reason)
                        .with_worker(&job.worker),
                );
                job.state = JobState::Pending;
                job.worker.clear();
                job.trigger_at_ms = job.trigger_at_ms.min(now_ms);
                job.updated_at_ms = now_ms;
                Self::put_job(&mut batch, job)?;
                let job = job.clone();
                index.enqueue(&job, now_ms);
                n += 1;
            }
            self.put_logs(&mut batch, &logs)?;
            self.tree.apply_batch(batch)?;
        }
        self.flush().await?;
        Ok(n)
    }

    async fn cancel(&self, job_id: &str, now_ms: i64) -> Result<Cancelled> {
        let cancelled = {
            let mut index = self.lock();
            let Some(mut job) = index.live.remove(job_id) else {
                return match self.stored_job(job_id)? {
                    Some(job) => Err(Error::WrongState(format!(
                        "job {job_id} is already {}",
                        job.state.name()
                    ))),
                    None => Err(Error::NotFound(job_id.to_string())),
                };
            };
            index.dequeue(&job);
            let before = job.clone();
            job.state = JobState::Cancelled;
            job.updated_at_ms = now_ms;
            job.worker.clear();
            let mut batch = ::sled::Batch::default();
            Self::put_job(&mut batch, &job)?;
            self.put_logs(
                &mut batch,
                &[LogEntry::new(
                    job_id,
                    LogKind::Cancelled,
                    job.attempt,
                    format!("cancelled while {}", before.state.name()),
                )],
            )?;
            let feedback = job
                .spec
                .need_feedback
                .then(|| feedback_for(&job, None, now_ms));
            if let Some(fb) = &feedback {
                batch.insert(feedback_key(&fb.feedback_id), encode(fb)?);
            }
            self.tree.apply_batch(batch)?;
            Cancelled {
                before,
                after: job,
                feedback,
            }
        };
        self.flush().await?;
        Ok(cancelled)
    }

    async fn get(&self, job_id: &str) -> Result<Option<Job>> {
        if let Some(job) = self.lock().live.get(job_id) {
            return Ok(Some(job.clone()));
        }
        self.stored_job(job_id)
    }

    async fn get_by_task(&self, node_group: &str, task_id: &str) -> Result<Option<Job>> {
        match self.tree.get(task_key(node_group, task_id))? {
            Some(id) => self.get(&String::from_utf8_lossy(&id)).await,
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
        for item in self.tree.range(start..b"k".to_vec()) {
            let (key, bytes) = item?;
            let stored: Job = match decode(&key, &bytes) {
                Ok(j) => j,
                Err(e) => {
                    tracing::error!("skipping a job record: {e}");
                    continue;
                }
            };
            // The in-memory copy of a live job is the newest.
            let job = match self.lock().live.get(&stored.job_id) {
                Some(live) => live.clone(),
                None => stored,
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
        let mut batch = ::sled::Batch::default();
        self.put_logs(&mut batch, &entries)?;
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    async fn logs(
        &self,
        job_id: &str,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<(Vec<LogEntry>, Option<String>)> {
        let prefix = log_prefix(job_id);
        let after: Option<u64> = match page_token {
            Some(t) => Some(t.parse().map_err(|_| {
                Error::Invalid(lts_common::ValidationError::new(
                    "page_token",
                    "is not a token this tracker gave out",
                ))
            })?),
            None => None,
        };
        let start = match after {
            Some(seq) => {
                let mut k = prefix.clone();
                k.extend_from_slice(&(seq + 1).to_be_bytes());
                k
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        let mut last_seq = 0;
        for item in self.tree.range(start..) {
            let (key, bytes) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            if out.len() == page_size {
                return Ok((out, Some(last_seq.to_string())));
            }
            let seq_bytes: [u8; 8] =
                key[prefix.len()..].try_into().map_err(|_| Error::Corrupt {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    message: "log key without a sequence number".into(),
                })?;
            last_seq = u64::from_be_bytes(seq_bytes);
            match decode::<LogEntry>(&key, &bytes) {
                Ok(e) => out.push(e),
                Err(e) => tracing::error!("skipping a log record: {e}"),
            }
        }
        Ok((out, None))
    }

    async fn pending_feedback(&self) -> Result<Vec<Feedback>> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(b"f") {
            let (key, bytes) = item?;
            match decode(&key, &bytes) {
                Ok(f) => out.push(f),
                Err(e) => tracing::error!("skipping a feedback record: {e}"),
            }
        }
        Ok(out)
    }

    async fn ack_feedback(&self, feedback_ids: &[String]) -> Result<()> {
        let mut batch = ::sled::Batch::default();
        for id in feedback_ids {
            batch.remove(feedback_key(id));
        }
        self.tree.apply_batch(batch)?;
        self.flush().await
    }

    async fn queue_depths(&self, now_ms: i64) -> Result<Vec<(String, usize)>> {
        let mut index = self.lock();
        let groups: Vec<String> = index.queues.keys().cloned().collect();
        let mut out = Vec::with_capacity(groups.len());
        for g in groups {
            index.promote(&g, now_ms);
            out.push((g.clone(), index.queues.get(&g).map_or(0, |q| q.ready.len())));
        }
        Ok(out)
    }

    async fn node_groups(&self) -> Result<Vec<String>> {
        Ok(self
            .lock()
            .queues
            .iter()
            .filter(|(_, q)| !q.ready.is_empty() || !q.delayed.is_empty())
            .map(|(g, _)| g.clone())
            .collect())
    }
}
