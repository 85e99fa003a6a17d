//! The embedded store under a memory budget: the heads of the queues in
//! memory, the rest of a backlog on disk.
//!
//! Every job that is not final is kept in memory (see [`super::index`])
//! until the jobs there take the budget ([`Index::over_budget`],
//! `--memory-budget`). From then on a job submitted ready to run is
//! written as usual and, instead of joining the index, goes into a chunk:
//! the jobs of one node group that one submit call put on disk.
//!
//! | key | value |
//! |---|---|
//! | `q` node group (u32 BE length, bytes), the chunk's first claim order | per job: its claim order, its job id (u8 length, bytes) |
//! | `k` node group (u32 BE length, bytes) task id | its job id (dedup) |
//!
//! A claim order is priority, trigger time and submit order, each BE with
//! the sign bit flipped, so the chunks of a group sort by their first job.
//! A claim takes the next job from whichever holds it: when the disk's
//! first job comes before the first in memory ([`Queues::head_on_disk`]),
//! the group's first chunk is read into memory and its key deleted. Chunks
//! may overlap in claim order (a call with a higher priority after
//! another); a chunk is read in as soon as its first job is due, so the
//! order holds. One key per call, read and deleted whole, keeps the disk's
//! work per job small. Jobs with a later trigger time, cron and repeat jobs,
//! their cycles and suspended jobs always stay in memory.
//!
//! `q` keys are written and deleted in the tree directly under the index
//! lock, so a scan under the lock sees exactly the chunks on disk. A crash
//! can leave a chunk naming jobs whose records never reached the disk (the
//! submit was not acknowledged), or jobs read in and finished since; a job
//! is taken from a chunk only if its record is pending. A chunk may
//! outlive a crash after its jobs were handed out, so a job stored before
//! the restart skips one attempt number when it is read in, as the jobs in
//! memory do at the restart: an attempt number is never handed out twice.
//! At a restart the chunks are read once (their submit orders, kept as
//! ranges) to tell the jobs waiting on disk from those to load.
//!
//! A verb on a job waiting on disk (cancel, an operator's verb, a replace)
//! brings the job into memory first; its chunk still names it, and the
//! job is skipped when the chunk is read in.
//!
//! A (node group, task id) lives in one place: in memory
//! ([`super::task_index`]) or in a `k` key. A pair that went to disk stays
//! there (a job replacing its holder takes the key over). `k` keys go
//! through the write queue after their job's record, so a crash never
//! keeps one without its job.

use std::collections::HashMap;

use lts_common::durable::Writes;
use lts_common::{Job, JobState};

use super::index::{Index, ReadyKey, Record};
use super::sled::{sled_err, SledStore};
use crate::error::{Error, Result};

/// The index's budget unless `--memory-budget` says otherwise. With it
/// a million queued jobs of W4 keep the JobTracker under 500 MiB.
pub const DEFAULT_MEMORY_BUDGET: u64 = 192 * 1024 * 1024;

fn with_group(tag: u8, group: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + group.len() + 24);
    k.push(tag);
    k.extend_from_slice(&(group.len() as u32).to_be_bytes());
    k.extend_from_slice(group.as_bytes());
    k
}

/// The prefix of a node group's `q` keys.
fn queue_prefix(group: &str) -> Vec<u8> {
    with_group(b'q', group)
}

/// The claim order of a ready job.
pub(super) fn ready_key(job: &Job) -> ReadyKey {
    (job.spec.priority, job.trigger_at_ms, job.seq)
}

/// Appends a claim order, so that the bytes sort as the orders do.
fn put_order(out: &mut Vec<u8>, (priority, trigger, seq): ReadyKey) {
    out.extend_from_slice(&((priority as u32) ^ (1 << 31)).to_be_bytes());
    out.extend_from_slice(&((trigger as u64) ^ (1 << 63)).to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
}

/// The bytes of a claim order.
const ORDER_BYTES: usize = 20;

/// The `q` key of a chunk whose first job has `first`.
fn chunk_key(group: &str, first: ReadyKey) -> Vec<u8> {
    let mut k = queue_prefix(group);
    put_order(&mut k, first);
    k
}

/// A chunk's value: its jobs in claim order.
fn chunk_value(jobs: &[(ReadyKey, String)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(jobs.iter().map(|(_, id)| ORDER_BYTES + 2 + id.len()).sum());
    for (order, id) in jobs {
        put_order(&mut v, *order);
        // Job ids are 32 characters (the store makes them).
        v.extend_from_slice(&(id.len() as u16).to_be_bytes());
        v.extend_from_slice(id.as_bytes());
    }
    v
}

/// The jobs of a chunk's value, or `None` if it is cut short.
fn chunk_jobs(value: &[u8]) -> Option<Vec<(ReadyKey, &str)>> {
    let mut out = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let order = key_order(rest.get(..ORDER_BYTES)?)?;
        let len = u16::from_be_bytes(rest.get(ORDER_BYTES..ORDER_BYTES + 2)?.try_into().ok()?);
        let end = ORDER_BYTES + 2 + usize::from(len);
        let id = rest.get(ORDER_BYTES + 2..end)?;
        out.push((order, std::str::from_utf8(id).ok()?));
        rest = &rest[end..];
    }
    Some(out)
}

/// The claim order a `q` key's tail (after its group's prefix) stands for.
fn key_order(tail: &[u8]) -> Option<ReadyKey> {
    let priority = u32::from_be_bytes(tail.get(0..4)?.try_into().ok()?) ^ (1 << 31);
    let trigger = u64::from_be_bytes(tail.get(4..12)?.try_into().ok()?) ^ (1 << 63);
    let seq = u64::from_be_bytes(tail.get(12..20)?.try_into().ok()?);
    Some((priority as i32, trigger as i64, seq))
}

/// The `k` key of a (node group, task id).
fn task_key(group: &str, task_id: &str) -> Vec<u8> {
    let mut k = with_group(b'k', group);
    k.extend_from_slice(task_id.as_bytes());
    k
}

/// Whether a job goes to disk rather than into the index when the index is
/// over its budget: a pending one-off job that is due.
pub(super) fn may_wait_on_disk(job: &Job, now_ms: i64) -> bool {
    job.state == JobState::Pending
        && !job.spec.schedule.is_recurring()
        && job.trigger_at_ms <= now_ms
}

fn not_utf8(key: &[u8]) -> Error {
    Error::corrupt(String::from_utf8_lossy(key), "a job id that is not UTF-8")
}

impl SledStore {
    /// Which job holds (`group`, `task_id`), and whether the pair is held
    /// on disk. `recent` holds the pairs put on disk by the caller's batch,
    /// not committed yet.
    pub(super) fn task_holder(
        &self,
        index: &Index,
        recent: &HashMap<Vec<u8>, String>,
        group: &str,
        task_id: &str,
    ) -> Result<Option<(String, bool)>> {
        if let Some(id) = index.tasks.get(group, task_id) {
            return Ok(Some((id, false)));
        }
        if !index.disk_tasks {
            return Ok(None);
        }
        let key = task_key(group, task_id);
        if let Some(id) = recent.get(&key) {
            return Ok(Some((id.clone(), true)));
        }
        let Some(id) = self.read_key(&key)? else {
            return Ok(None);
        };
        let id = String::from_utf8(id.to_vec()).map_err(|_| not_utf8(&key))?;
        Ok(Some((id, true)))
    }

    /// At a restart: whether (`group`, `task_id`) is held on disk.
    pub(super) fn task_on_disk(&self, group: &str, task_id: &str) -> Result<bool> {
        self.tree()?
            .contains_key(task_key(group, task_id))
            .map_err(sled_err("reading a task id"))
    }

    /// Records that `job_id` holds (`group`, `task_id`): in memory, or on
    /// disk through `batch` (after the job's record, so a crash never keeps
    /// the key without the record), noted in `recent` until committed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn set_task_holder(
        index: &mut Index,
        batch: &mut Writes,
        recent: &mut HashMap<Vec<u8>, String>,
        group: &str,
        task_id: &str,
        job_id: &str,
        on_disk: bool,
    ) {
        if !on_disk {
            index.tasks.set(group, task_id, job_id);
            return;
        }
        let key = task_key(group, task_id);
        batch.insert(key.clone(), job_id.as_bytes());
        recent.insert(key, job_id.to_string());
        index.disk_tasks = true;
    }

    /// Forgets that `job_id` holds (`group`, `task_id`), wherever it is.
    pub(super) fn remove_task_holder(
        &self,
        index: &mut Index,
        batch: &mut Writes,
        group: &str,
        task_id: &str,
        job_id: &str,
    ) -> Result<()> {
        index.tasks.remove(group, task_id, job_id);
        if index.disk_tasks {
            let key = task_key(group, task_id);
            let holds = self
                .read_key(&key)?
                .is_some_and(|id| id.as_ref() == job_id.as_bytes());
            if holds {
                batch.remove(key);
            }
        }
        Ok(())
    }

    /// Puts due jobs of `group` (already written) on disk, as one chunk,
    /// rather than in the index. `jobs`: claim order, job id, quota bytes.
    pub(super) fn spill(
        &self,
        index: &mut Index,
        group: &str,
        mut jobs: Vec<(ReadyKey, String, u64)>,
    ) -> Result<()> {
        jobs.sort_unstable_by_key(|(order, _, _)| *order);
        let Some(first) = jobs.first().map(|(order, _, _)| *order) else {
            return Ok(());
        };
        let entries: Vec<(ReadyKey, String)> =
            jobs.iter().map(|(o, id, _)| (*o, id.clone())).collect();
        self.tree()?
            .insert(chunk_key(group, first), chunk_value(&entries))
            .map_err(sled_err("queueing jobs on disk"))?;
        for (order, _, bytes) in jobs {
            Self::count_on_disk(index, group, order, bytes);
        }
        Ok(())
    }

    /// Counts a job waiting on disk.
    fn count_on_disk(index: &mut Index, group: &str, order: ReadyKey, bytes: u64) {
        let q = index.queues.entry(group.to_string()).or_default();
        q.disk.jobs += 1;
        q.disk.bytes += bytes;
        q.disk.head = Some(q.disk.head.map_or(order, |h| h.min(order)));
        index.on_disk += 1;
    }

    /// Uncounts a job no longer waiting on disk.
    fn uncount_on_disk(index: &mut Index, job: &Job) {
        if let Some(q) = index.queues.get_mut(&job.spec.task_tracker_node_group) {
            q.disk.jobs = q.disk.jobs.saturating_sub(1);
            q.disk.bytes = q.disk.bytes.saturating_sub(super::quota_bytes(&job.spec));
            if q.disk.jobs == 0 {
                q.disk.head = None;
            }
        }
        index.on_disk = index.on_disk.saturating_sub(1);
    }

    /// At a restart: the submit orders of the jobs the chunks on disk name.
    pub(super) fn chunked_jobs(&self) -> Result<OnDiskSeqs> {
        let mut ranges = Vec::new();
        for item in self.tree()?.scan_prefix(b"q") {
            let (key, value) = item.map_err(sled_err("reading the queue on disk"))?;
            let Some(jobs) = chunk_jobs(&value) else {
                tracing::error!(
                    "skipping a chunk of the queue on disk cut short: {}",
                    String::from_utf8_lossy(&key)
                );
                continue;
            };
            let mut seqs: Vec<u64> = jobs.iter().map(|((_, _, seq), _)| *seq).collect();
            seqs.sort_unstable();
            for seq in seqs {
                match ranges.last_mut() {
                    Some((_, end)) if *end + 1 == seq => *end = seq,
                    _ => ranges.push((seq, seq)),
                }
            }
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some((_, last)) if start <= *last + 1 => *last = (*last).max(end),
                _ => merged.push((start, end)),
            }
        }
        Ok(OnDiskSeqs(merged))
    }

    /// At a restart: counts `job` as waiting on disk if a chunk names it.
    pub(super) fn recover_on_disk(index: &mut Index, seqs: &OnDiskSeqs, job: &Job) -> bool {
        if !seqs.contains(job.seq) {
            return false;
        }
        Self::count_on_disk(
            index,
            &job.spec.task_tracker_node_group,
            ready_key(job),
            super::quota_bytes(&job.spec),
        );
        true
    }

    /// Brings a job that waits on disk into the index, so that a verb can
    /// change it as any job in memory. Nothing to do for any other job.
    pub(super) fn bring_in(&self, index: &mut Index, job_id: &str, now_ms: i64) -> Result<()> {
        if index.on_disk == 0 || index.live.get(job_id).is_some() {
            return Ok(());
        }
        let Some(r) = self.stored_record(job_id)? else {
            return Ok(());
        };
        // A pending one-off job not in memory waits on disk.
        if r.job.state != JobState::Pending || r.job.spec.schedule.is_recurring() {
            return Ok(());
        }
        Self::uncount_on_disk(index, &r.job);
        index.brought_in.insert(job_id.to_string());
        self.join_index(index, r, now_ms);
        Ok(())
    }

    fn join_index(&self, index: &mut Index, mut r: Record, now_ms: i64) {
        if r.job.seq < index.opened_seq {
            // What the restart did to the jobs in memory (see `recover`).
            r.floor = r.job.attempt;
            r.job.attempt += 1;
        }
        index.enqueue(&r.job, now_ms);
        index.live.insert(r.job.job_id.clone(), Box::new(r));
    }

    /// Reads the first chunk of `group` on disk into the index and deletes
    /// its key, under the index lock: for a claim whose next job is on
    /// disk while no chunk is being read ahead.
    pub(super) fn page_in(&self, index: &mut Index, group: &str, now_ms: i64) -> Result<()> {
        let tree = self.tree()?;
        match first_chunk(&tree, group)? {
            Some((key, value)) => {
                let records = self.read_chunk(&key, &value)?;
                self.take_in(index, &tree, group, &key, records, now_ms)
            }
            None => self.take_in(index, &tree, group, &[], Vec::new(), now_ms),
        }
    }

    /// Reads `group`'s next chunk into the index ahead of need, off the
    /// index lock, when fewer than [`LOW_WATER`] of its jobs are ready in
    /// memory and jobs wait on disk. The lock is held only to pick the
    /// chunk and to take its jobs in; the claim hook is told afterwards.
    pub(super) fn read_ahead(&self, group: &str, now_ms: i64) -> Result<()> {
        let tree = self.tree()?;
        let chunk = {
            let mut index = self.lock();
            let Some(q) = index.queues.get_mut(group) else {
                return Ok(());
            };
            if q.disk.jobs == 0 || q.disk.loading || q.ready.len() >= LOW_WATER {
                return Ok(());
            }
            let chunk = first_chunk(&tree, group)?;
            q.disk.loading = chunk.is_some();
            chunk
        };
        let Some((key, value)) = chunk else {
            return Ok(());
        };
        let records = self.read_chunk(&key, &value);
        let mut index = self.lock();
        if let Some(q) = index.queues.get_mut(group) {
            q.disk.loading = false;
        }
        self.take_in(&mut index, &tree, group, &key, records?, now_ms)?;
        drop(index);
        if let Some(hook) = self.claimable.get() {
            hook(group);
        }
        Ok(())
    }

    /// The jobs a chunk names, with their records as stored.
    fn read_chunk(&self, key: &[u8], value: &[u8]) -> Result<Vec<(String, Option<Record>)>> {
        let Some(jobs) = chunk_jobs(value) else {
            return Err(Error::corrupt(
                String::from_utf8_lossy(key),
                "a chunk of the queue on disk is cut short",
            ));
        };
        jobs.into_iter()
            .map(|(_, id)| Ok((id.to_string(), self.stored_record(id)?)))
            .collect()
    }

    /// Deletes the chunk `key` (none if empty) and takes its jobs into the
    /// index: those still pending and not brought in by a verb meanwhile.
    fn take_in(
        &self,
        index: &mut Index,
        tree: &::sled::Tree,
        group: &str,
        key: &[u8],
        records: Vec<(String, Option<Record>)>,
        now_ms: i64,
    ) -> Result<()> {
        if !key.is_empty() {
            tree.remove(key)
                .map_err(sled_err("taking jobs off the queue on disk"))?;
        }
        for (job_id, record) in records {
            if index.brought_in.remove(&job_id) {
                continue;
            }
            match record {
                Some(r)
                    if r.job.state == JobState::Pending && index.live.get(&job_id).is_none() =>
                {
                    Self::uncount_on_disk(index, &r.job);
                    self.join_index(index, r, now_ms);
                }
                // Submitted by a call a crash undid, or read in and
                // finished before a crash that kept the chunk.
                _ => {}
            }
        }
        let next = first_chunk(tree, group)?;
        let prefix = queue_prefix(group).len();
        if let Some(q) = index.queues.get_mut(group) {
            match next {
                Some((key, _)) if q.disk.jobs > 0 => q.disk.head = key_order(&key[prefix..]),
                Some(_) => q.disk.head = None,
                None => {
                    // Nothing is left on disk.
                    index.on_disk = index.on_disk.saturating_sub(q.disk.jobs);
                    q.disk.jobs = 0;
                    q.disk.bytes = 0;
                    q.disk.head = None;
                }
            }
        }
        Ok(())
    }
}

/// Fewer jobs of a group ready in memory than this, and a claim reads the
/// group's next chunk ahead ([`SledStore::read_ahead`]).
const LOW_WATER: usize = 2048;

/// The first chunk of `group` on disk.
fn first_chunk(tree: &::sled::Tree, group: &str) -> Result<Option<(::sled::IVec, ::sled::IVec)>> {
    tree.scan_prefix(queue_prefix(group))
        .next()
        .transpose()
        .map_err(sled_err("reading the queue on disk"))
}

/// The submit orders of jobs waiting on disk at a restart, as sorted,
/// disjoint ranges (a chunk's jobs came from one call: mostly one range).
pub(super) struct OnDiskSeqs(Vec<(u64, u64)>);

impl OnDiskSeqs {
    fn contains(&self, seq: u64) -> bool {
        let i = self.0.partition_point(|(start, _)| *start <= seq);
        i > 0 && self.0[i - 1].1 >= seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{JobStore, SubmitRefusal, SubmitResult};
    use lts_common::JobSpec;

    const NOW: i64 = 1_700_000_000_000;

    fn spec(task: &str, priority: i32) -> JobSpec {
        let mut s = JobSpec::new(task, "g");
        s.priority = priority;
        s
    }

    async fn open(dir: &std::path::Path, budget: u64) -> SledStore {
        let store = SledStore::open(dir).expect("open");
        store.set_memory_budget(budget);
        store.recover(NOW).await.expect("recover");
        store
    }

    /// Claims one job at a time until none is left: the task ids in the
    /// order they came out.
    async fn drain(store: &SledStore, now: i64) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let c = store
                .claim("g", &[("w".to_string(), 1)], now)
                .await
                .expect("claim");
            match c.per_grant.into_iter().flatten().next() {
                Some(job) => out.push(job.spec.task_id),
                None => return out,
            }
        }
    }

    fn depth(depths: Vec<(String, usize)>) -> usize {
        depths
            .into_iter()
            .find(|(g, _)| g == "g")
            .map_or(0, |(_, n)| n)
    }

    #[tokio::test]
    async fn jobs_in_memory_and_on_disk_are_claimed_in_one_priority_order() {
        let dir = tempfile::tempdir().expect("temporary directory");
        // Room for three jobs: the first three stay in memory.
        let store = open(
            dir.path(),
            3 * crate::store::index::resident_bytes(&spec("m0", 5)),
        )
        .await;
        let mut specs: Vec<JobSpec> = (0..3).map(|i| spec(&format!("m{i}"), 5)).collect();
        specs.extend((0..3).map(|i| spec(&format!("hi{i}"), 1)));
        specs.extend((0..3).map(|i| spec(&format!("lo{i}"), 9)));
        store.submit(specs, NOW).await.expect("submit");
        assert_eq!(store.lock().on_disk, 6, "six jobs wait on disk");
        assert_eq!(depth(store.queue_depths(NOW).await.expect("depths")), 9);
        let usage = store.group_usage().await.expect("usage");
        assert_eq!(
            usage.iter().find(|(g, _)| g == "g").map(|(_, u)| u.jobs),
            Some(9)
        );
        assert_eq!(
            drain(&store, NOW).await,
            ["hi0", "hi1", "hi2", "m0", "m1", "m2", "lo0", "lo1", "lo2"]
        );
        assert_eq!(store.lock().on_disk, 0);
    }

    #[tokio::test]
    async fn a_backlog_on_disk_survives_restarts_whole_in_order_and_deduplicated() {
        let dir = tempfile::tempdir().expect("temporary directory");
        // Several chunks, with a budget of a few dozen jobs.
        let n = 2_300;
        let budget = 40 * crate::store::index::resident_bytes(&spec("t00000", 0));
        {
            let store = open(dir.path(), budget).await;
            for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
                let specs = chunk.iter().map(|i| spec(&format!("t{i:05}"), 0)).collect();
                store.submit(specs, NOW).await.expect("submit");
            }
            assert!(store.lock().on_disk as usize >= n - 40);
            // Part of the backlog goes before the restart.
            let first = store
                .claim("g", &[("w".to_string(), 100)], NOW)
                .await
                .expect("claim");
            let ids: Vec<String> = first.per_grant[0]
                .iter()
                .map(|j| j.spec.task_id.clone())
                .collect();
            let expected: Vec<String> = (0..100).map(|i| format!("t{i:05}")).collect();
            assert_eq!(ids, expected);
            store.close().await.expect("close");
        }
        let store = open(dir.path(), budget).await;
        // The 100 claimed jobs were running: they are pending again.
        assert_eq!(depth(store.queue_depths(NOW).await.expect("depths")), n);
        // Dedup still sees every task id, on disk or in memory.
        let again = store
            .submit(
                vec![spec("t00007", 0), spec(&format!("t{:05}", n - 1), 0)],
                NOW,
            )
            .await
            .expect("submit");
        for r in &again {
            assert!(
                matches!(
                    r,
                    SubmitResult::Refused(SubmitRefusal::AlreadyExists { .. })
                ),
                "{r:?}"
            );
        }
        let order = drain(&store, NOW).await;
        let expected: Vec<String> = (0..n).map(|i| format!("t{i:05}")).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, expected, "every job comes out once");
        // The jobs requeued at the restart kept their place; the rest
        // come out in submit order.
        assert_eq!(order[100..], expected[100..]);
    }

    #[tokio::test]
    async fn verbs_reach_a_job_waiting_on_disk() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = open(dir.path(), 0).await;
        let ids: Vec<String> = store
            .submit(vec![spec("a", 0), spec("b", 0), spec("c", 0)], NOW)
            .await
            .expect("submit")
            .into_iter()
            .map(|r| match r {
                SubmitResult::Created(id) => id,
                other => panic!("{other:?}"),
            })
            .collect();
        store.cancel(&ids[0], NOW).await.expect("cancel");
        let mut replace = spec("b", 0);
        replace.replace_on_exist = true;
        replace.payload = b"new".to_vec();
        let r = store.submit(vec![replace], NOW).await.expect("replace");
        assert!(matches!(r[0], SubmitResult::Replaced { .. }), "{r:?}");
        assert_eq!(depth(store.queue_depths(NOW).await.expect("depths")), 2);
        let out = store
            .claim("g", &[("w".to_string(), 10)], NOW)
            .await
            .expect("claim");
        let got: Vec<(String, String)> = out.per_grant[0]
            .iter()
            .map(|j| {
                (
                    j.spec.task_id.clone(),
                    String::from_utf8_lossy(&j.spec.payload).to_string(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("c".to_string(), String::new()),
                ("b".to_string(), "new".to_string())
            ]
        );
        assert_eq!(
            store.get(&ids[0]).await.expect("get").map(|j| j.state),
            Some(JobState::Cancelled)
        );
    }

    #[tokio::test]
    async fn a_chunk_that_outlives_its_jobs_hands_nothing_out_twice() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = open(dir.path(), 0).await;
        store
            .submit(vec![spec("a", 0), spec("b", 0), spec("c", 0)], NOW)
            .await
            .expect("submit");
        let chunk: Vec<(::sled::IVec, ::sled::IVec)> = store
            .tree()
            .expect("tree")
            .scan_prefix(b"q")
            .map(|i| i.expect("read"))
            .collect();
        assert_eq!(chunk.len(), 1, "one call, one chunk");
        let out = store
            .claim("g", &[("w".to_string(), 3)], NOW)
            .await
            .expect("claim");
        let jobs = &out.per_grant[0];
        assert_eq!(jobs.len(), 3);
        let report = crate::store::RunReport {
            job_id: jobs[0].job_id.clone(),
            attempt: jobs[0].attempt,
            outcome: lts_common::Outcome::Success("ok".into()),
            started_at_ms: NOW,
            finished_at_ms: NOW,
            worker: "w".into(),
        };
        store.complete(vec![report], NOW).await.expect("complete");
        store.sync().await.expect("sync");
        // A crash that lost the chunk's deletion: the chunk is back.
        for (k, v) in &chunk {
            store.tree().expect("tree").insert(k, v).expect("insert");
        }
        store.close().await.expect("close");
        drop(store);
        let store = open(dir.path(), 0).await;
        let out = store
            .claim("g", &[("w".to_string(), 10)], NOW + 1)
            .await
            .expect("claim");
        let mut again: Vec<(String, u32)> = out.per_grant[0]
            .iter()
            .map(|j| (j.spec.task_id.clone(), j.attempt))
            .collect();
        again.sort();
        // The finished job stays finished; the two that were running run
        // again with attempts never handed out before.
        assert_eq!(again.len(), 2, "{again:?}");
        assert_eq!(again[0].0, "b");
        assert_eq!(again[1].0, "c");
        assert!(again.iter().all(|(_, attempt)| *attempt > 1), "{again:?}");
        assert!(store
            .claim("g", &[("w".to_string(), 10)], NOW + 1)
            .await
            .expect("claim")
            .per_grant[0]
            .is_empty());
    }

    #[test]
    fn chunks_sort_by_their_first_claim_order_and_read_back_whole() {
        let job = |priority: i32, trigger: i64, seq: u64| {
            let mut j = crate::store::new_job(
                format!("{seq:032x}"),
                lts_common::JobSpec::new("t", "g"),
                seq,
                trigger,
            );
            j.spec.priority = priority;
            j.trigger_at_ms = trigger;
            j
        };
        let jobs = [
            job(-5, -10, 3),
            job(-5, 7, 1),
            job(0, -1, 9),
            job(0, 0, 2),
            job(0, 0, 3),
            job(3, i64::MIN, 0),
            job(i32::MAX, i64::MAX, u64::MAX),
        ];
        for pair in jobs.windows(2) {
            let (a, b) = (ready_key(&pair[0]), ready_key(&pair[1]));
            assert!(a < b);
            assert!(chunk_key("g", a) < chunk_key("g", b), "{a:?}");
        }
        let prefix = queue_prefix("g").len();
        let entries: Vec<(ReadyKey, String)> = jobs
            .iter()
            .map(|j| (ready_key(j), j.job_id.clone()))
            .collect();
        for (order, _) in &entries {
            assert_eq!(key_order(&chunk_key("g", *order)[prefix..]), Some(*order));
        }
        let value = chunk_value(&entries);
        let back: Vec<(ReadyKey, String)> = chunk_jobs(&value)
            .expect("whole")
            .into_iter()
            .map(|(o, id)| (o, id.to_string()))
            .collect();
        assert_eq!(back, entries);
        assert!(chunk_jobs(&value[..value.len() - 1]).is_none());
        let seqs = OnDiskSeqs(vec![(0, 3), (7, 7), (10, 20)]);
        let inside: Vec<u64> = (0..25).filter(|s| seqs.contains(*s)).collect();
        assert_eq!(
            inside,
            [0, 1, 2, 3, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]
        );
    }
}
