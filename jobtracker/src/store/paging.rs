//! The embedded store under a memory budget: the heads of the queues in
//! memory, the rest of a backlog on disk.
//!
//! Every job that is not final is kept in memory (see [`super::index`])
//! until the jobs there take the budget ([`Index::over_budget`],
//! `--memory-budget`). From then on a job submitted ready to run is
//! written as usual and, instead of joining the index, gets two keys of
//! its own:
//!
//! | key | value |
//! |---|---|
//! | `q` node group (u32 BE length, bytes) priority, trigger time, submit order (BE, sign bit flipped) | its job id |
//! | `k` node group (u32 BE length, bytes) task id | its job id (dedup) |
//!
//! so the `q` keys of a group sort in claim order, the order of the
//! group's ready queue in memory. A claim takes the next job from whichever
//! holds it: when the disk holds it ([`Queues::head_on_disk`]), a page of
//! the group's first `q` keys is read into memory ([`PAGE`] jobs), their
//! keys deleted. Jobs with a later trigger time, cron and repeat jobs,
//! their cycles and suspended jobs always stay in memory.
//!
//! `q` keys are written to the tree directly under the index lock, not
//! through the write queue, so a scan under the lock sees exactly the jobs
//! on disk. A crash can leave a `q` key whose record never reached
//! the disk (the submit was not acknowledged); it is dropped when paged.
//! The deletion of a paged job's `q` key may not be durable when the job
//! is handed out; a crash can bring the key back with the job's record as
//! it was. So a job stored before the restart skips one attempt number when
//! it is paged in, as the jobs in memory do at the restart: an attempt
//! number is never handed out twice.
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

/// How many jobs a claim reads from disk at a time, under the index lock
/// (a few milliseconds).
pub(super) const PAGE: usize = 1024;

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

/// A ready job's `q` key.
fn queue_key(job: &Job) -> Vec<u8> {
    let (priority, trigger, seq) = ready_key(job);
    let mut k = queue_prefix(&job.spec.task_tracker_node_group);
    k.extend_from_slice(&((priority as u32) ^ (1 << 31)).to_be_bytes());
    k.extend_from_slice(&((trigger as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
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

    /// Puts a due job (already written) on disk rather than in the index.
    pub(super) fn spill(&self, index: &mut Index, job: &Job) -> Result<()> {
        self.tree()?
            .insert(queue_key(job), job.job_id.as_bytes())
            .map_err(sled_err("queueing a job on disk"))?;
        self.count_on_disk(index, job);
        Ok(())
    }

    /// Counts a job whose `q` key is on disk.
    fn count_on_disk(&self, index: &mut Index, job: &Job) {
        let q = index
            .queues
            .entry(job.spec.task_tracker_node_group.clone())
            .or_default();
        q.disk.jobs += 1;
        q.disk.bytes += super::quota_bytes(&job.spec);
        let key = ready_key(job);
        q.disk.head = Some(q.disk.head.map_or(key, |h| h.min(key)));
        let before_cursor = q
            .disk
            .cursor
            .as_ref()
            .and_then(|c| key_order(&c[c.len().saturating_sub(20)..]))
            .is_some_and(|c| key < c);
        if before_cursor {
            q.disk.cursor = None;
        }
        index.on_disk += 1;
    }

    /// Uncounts a job whose `q` key was taken off the disk.
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

    /// At a restart: whether `job`'s `q` key is on disk (then it is counted
    /// and stays there).
    pub(super) fn recover_on_disk(&self, index: &mut Index, job: &Job) -> Result<bool> {
        let present = self
            .tree()?
            .contains_key(queue_key(job))
            .map_err(sled_err("reading the queue on disk"))?;
        if present {
            self.count_on_disk(index, job);
        }
        Ok(present)
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
        if r.job.state != JobState::Pending || r.job.spec.schedule.is_recurring() {
            return Ok(());
        }
        let taken = self
            .tree()?
            .remove(queue_key(&r.job))
            .map_err(sled_err("taking a job off the queue on disk"))?;
        if taken.is_some() {
            Self::uncount_on_disk(index, &r.job);
            self.join_index(index, r, now_ms);
        }
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

    /// Reads the next [`PAGE`] jobs of `group` on disk into the index, in
    /// claim order.
    ///
    /// The keys read are deleted through `batch` (off the lock); until the
    /// write thread has applied that, a scan skips them, and the next scan
    /// starts after the last key read unless a job was put on disk before
    /// it since.
    pub(super) fn page_in(
        &self,
        index: &mut Index,
        batch: &mut Writes,
        group: &str,
        now_ms: i64,
    ) -> Result<()> {
        let tree = self.tree()?;
        let prefix = queue_prefix(group);
        let start = index
            .queues
            .get_mut(group)
            .and_then(|q| q.disk.cursor.take())
            .unwrap_or_else(|| prefix.clone());
        let mut next = None;
        let mut taken = 0;
        let mut last = None;
        let range = tree.range::<&[u8], _>((
            std::ops::Bound::Included(&start[..]),
            std::ops::Bound::Unbounded,
        ));
        for item in range {
            let (key, id) = item.map_err(sled_err("reading the queue on disk"))?;
            if !key.starts_with(&prefix) {
                break;
            }
            // Read in already (the last page's last key among them).
            if self.removal_queued(&key) {
                continue;
            }
            if taken == PAGE {
                next = key_order(&key[prefix.len()..]);
                break;
            }
            taken += 1;
            batch.remove(key.clone());
            last = Some(key.to_vec());
            let job_id = std::str::from_utf8(&id).map_err(|_| not_utf8(&key))?;
            match self.stored_record(job_id)? {
                Some(r) if r.job.state == JobState::Pending => {
                    Self::uncount_on_disk(index, &r.job);
                    self.join_index(index, r, now_ms);
                }
                // A key whose submit a crash undid.
                _ => tracing::warn!("dropping the queue entry of job {job_id}: no pending record"),
            }
        }
        if let Some(q) = index.queues.get_mut(group) {
            q.disk.cursor = last;
            q.disk.head = if q.disk.jobs == 0 { None } else { next };
            if next.is_none() {
                // The scan found the end: nothing is left on disk.
                index.on_disk = index.on_disk.saturating_sub(q.disk.jobs);
                q.disk.jobs = 0;
                q.disk.bytes = 0;
            }
        }
        Ok(())
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
        // Several pages' worth, with a budget of a few dozen jobs.
        let n = 2 * PAGE + 300;
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

    #[test]
    fn queue_keys_sort_in_claim_order() {
        let job = |priority: i32, trigger: i64, seq: u64| {
            let mut j =
                crate::store::new_job("j".into(), lts_common::JobSpec::new("t", "g"), seq, trigger);
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
            assert!(ready_key(&pair[0]) < ready_key(&pair[1]));
            assert!(
                queue_key(&pair[0]) < queue_key(&pair[1]),
                "{:?}",
                ready_key(&pair[0])
            );
        }
        let prefix = queue_prefix("g").len();
        for j in &jobs {
            assert_eq!(key_order(&queue_key(j)[prefix..]), Some(ready_key(j)));
        }
    }
}
