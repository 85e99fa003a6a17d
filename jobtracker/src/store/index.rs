//! The embedded store's in-memory index: every job that is not final,
//! with a ready queue and a delayed queue per node group, the timers of
//! cron and repeat jobs, and the task ids taken. A claim works on this
//! alone; the disk only hears of the changes (see [`lts_common::durable`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use lts_common::{Job, JobSpec, JobState, LogEntry};
use serde::{Deserialize, Serialize};

use super::{quota_bytes, GroupUsage};

/// Ordering key of a ready job: priority, trigger time, submit order.
pub(super) type ReadyKey = (i32, i64, u64);
/// Ordering key of a job waiting for its trigger time.
pub(super) type DelayedKey = (i64, u64);

/// The pending jobs of one node group.
#[derive(Default)]
pub(super) struct Queues {
    /// Due now, in claim order.
    pub(super) ready: BTreeMap<ReadyKey, String>,
    /// Waiting for their trigger time, in trigger order.
    pub(super) delayed: BTreeMap<DelayedKey, String>,
    /// Ready jobs kept on disk while the index is over its memory budget
    /// (see [`super::paging`]).
    pub(super) disk: OnDisk,
}

/// The ready jobs of a node group that wait on disk, not in memory.
#[derive(Default)]
pub(super) struct OnDisk {
    /// How many.
    pub(super) jobs: u64,
    /// Their bytes by [`quota_bytes`], for the group's quota.
    pub(super) bytes: u64,
    /// No job on disk comes before this one in claim order (it may be one
    /// taken off since: the bound is kept low, never high).
    pub(super) head: Option<ReadyKey>,
    /// A chunk is being read ahead, off the index lock.
    pub(super) loading: bool,
}

impl Queues {
    /// Whether the next job in claim order is on disk: none in memory is
    /// ready, or the first one ready comes after the disk's first.
    pub(super) fn head_on_disk(&self) -> bool {
        self.disk.jobs > 0
            && !self.disk.loading
            && match (self.ready.first_key_value(), &self.disk.head) {
                (None, _) => true,
                (Some((first, _)), Some(head)) => head < first,
                (Some(_), None) => false,
            }
    }
}

/// A job with the transition lines of its execution log.
#[derive(Debug, Deserialize)]
pub(super) struct Record {
    /// The job.
    pub(super) job: Job,
    /// The transition lines of its execution log.
    #[serde(default)]
    pub(super) history: Vec<LogEntry>,
    /// For a cycle of a cron or repeat job: the job that fired it.
    #[serde(default)]
    pub(super) parent: Option<String>,
    /// For a cron or repeat job: the cycle it fired last.
    #[serde(default)]
    pub(super) last_child: Option<String>,
    /// The lowest attempt the job can have on disk after a crash: the
    /// attempt of its last flushed write (or of its first write, which is
    /// the only version a crash can leave). See the embedded store's `claim`.
    #[serde(skip)]
    pub(super) floor: u32,
    /// The attempt and write generation of a write not yet known flushed.
    #[serde(skip)]
    pub(super) unflushed: Option<(u32, u64)>,
    /// Set at a restart for a job that may have been running before it:
    /// the lowest and highest attempt such a run can have. While the job
    /// is pending and not handed out again, the outcome of such a run is
    /// applied (a TaskTracker's spool delivers it late), not refused.
    #[serde(skip)]
    pub(super) recovered: Option<(u32, u32)>,
    /// A run from before a restart that a TaskTracker reported going, and
    /// that the job took back as its current run: its attempt, which may be
    /// below the job's (numbers skipped at the restart stay skipped).
    #[serde(skip)]
    pub(super) adopted: Option<u32>,
}

/// [`Record`] for writing, without cloning.
#[derive(Serialize)]
pub(super) struct RecordRef<'a> {
    pub(super) job: &'a Job,
    pub(super) history: &'a [LogEntry],
    pub(super) parent: &'a Option<String>,
    pub(super) last_child: &'a Option<String>,
}

impl Record {
    /// A record of a job with no history yet.
    pub(super) fn new(job: Job) -> Record {
        Record {
            job,
            history: Vec::new(),
            parent: None,
            last_child: None,
            floor: 0,
            unflushed: None,
            recovered: None,
            adopted: None,
        }
    }

    /// Whether handing out the next attempt needs the record flushed first:
    /// a crash must never leave a version of the job whose attempt is lower
    /// than the last one handed out minus one (recovery skips one number,
    /// so the next attempt after a restart is always new).
    pub(super) fn claim_needs_flush(&mut self, flushed_gen: u64) -> bool {
        if let Some((attempt, generation)) = self.unflushed {
            if generation <= flushed_gen {
                self.floor = attempt;
                self.unflushed = None;
            }
        }
        self.job.attempt > self.floor
    }

    /// Whether `attempt` is the job's current run.
    pub(super) fn runs(&self, attempt: u32) -> bool {
        self.job.state == JobState::Running
            && (self.job.attempt == attempt || self.adopted == Some(attempt))
    }

    /// Whether `attempt` is a run that may have been going before a
    /// restart, the job pending since and not handed out again.
    pub(super) fn ran_before_the_restart(&self, attempt: u32) -> bool {
        self.job.state == JobState::Pending
            && self
                .recovered
                .is_some_and(|(low, high)| (low..=high).contains(&attempt))
    }

    /// Appends a transition line at `at_ms` (the store's clock, so that
    /// lines sort with the job's times); the job id is implied.
    pub(super) fn log(&mut self, mut entry: LogEntry, at_ms: i64) {
        // Freed, not cleared: a queued job keeps its record in memory.
        entry.job_id = String::new();
        entry.at_ms = at_ms;
        // A queued job has one line (its receipt): room for exactly one,
        // not the four a first push makes room for.
        if self.history.capacity() == 0 {
            self.history.reserve_exact(1);
        }
        self.history.push(entry);
    }
}

/// The jobs that are not final, by id, and what they hold per node group
/// (the quota's figures, [`JobStore::group_usage`](super::JobStore::group_usage)),
/// kept exact as jobs come and go.
#[derive(Default)]
pub(super) struct Live {
    jobs: HashMap<String, Box<Record>>,
    usage: HashMap<String, GroupUsage>,
    /// The memory the jobs take, by [`resident_bytes`].
    resident: u64,
}

/// About the memory a job kept in the index takes: its record, its ids,
/// payload and params, and its entries in the maps and queues. W4 (a
/// million queued jobs with small payloads) measured about 1 KiB per job
/// in all (docs/benchmarks.md).
pub(super) fn resident_bytes(spec: &JobSpec) -> u64 {
    900 + quota_bytes(spec) + spec.task_id.len() as u64
}

impl Live {
    /// A job by id.
    pub(super) fn get(&self, job_id: &str) -> Option<&Record> {
        self.jobs.get(job_id).map(|r| &**r)
    }

    /// A job by id, to change. The change must leave its node group,
    /// payload and params as they are (they are counted): take the job out
    /// with [`remove`](Self::remove) and put it back to change those.
    pub(super) fn get_mut(&mut self, job_id: &str) -> Option<&mut Record> {
        self.jobs.get_mut(job_id).map(|r| &mut **r)
    }

    /// Adds (or replaces) a job.
    pub(super) fn insert(&mut self, job_id: String, r: Box<Record>) {
        self.count(&r.job.spec, true);
        if let Some(old) = self.jobs.insert(job_id, r) {
            self.count(&old.job.spec, false);
        }
    }

    /// Takes a job out.
    pub(super) fn remove(&mut self, job_id: &str) -> Option<Box<Record>> {
        let r = self.jobs.remove(job_id)?;
        self.count(&r.job.spec, false);
        Some(r)
    }

    /// The memory the jobs take, by [`resident_bytes`].
    pub(super) fn resident(&self) -> u64 {
        self.resident
    }

    /// Unfinished jobs and their bytes per node group, for the groups
    /// that hold any.
    pub(super) fn usage(&self) -> impl Iterator<Item = (&String, &GroupUsage)> {
        self.usage.iter()
    }

    fn count(&mut self, spec: &JobSpec, added: bool) {
        let bytes = quota_bytes(spec);
        let resident = resident_bytes(spec);
        if added {
            self.resident += resident;
            let u = self
                .usage
                .entry(spec.task_tracker_node_group.clone())
                .or_default();
            u.jobs += 1;
            u.bytes += bytes;
        } else if let Some(u) = self.usage.get_mut(&spec.task_tracker_node_group) {
            self.resident = self.resident.saturating_sub(resident);
            u.jobs = u.jobs.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(bytes);
            if u.jobs == 0 {
                self.usage.remove(&spec.task_tracker_node_group);
            }
        }
    }
}

/// Every job that is not final, and the queues over them.
pub(super) struct Index {
    /// Jobs that are not final, with their count and bytes per node group.
    pub(super) live: Live,
    /// Pending jobs per node group.
    pub(super) queues: HashMap<String, Queues>,
    /// Cron and repeat jobs by the time of their next cycle.
    pub(super) timers: BTreeMap<DelayedKey, String>,
    /// Cron and repeat jobs that rely on their previous cycle, by the cycle
    /// they wait for.
    pub(super) waiting: HashMap<String, String>,
    /// Which job holds each (node group, task id), for dedup.
    pub(super) tasks: super::task_index::TaskIndex,
    /// The submit order of the next job.
    pub(super) next_seq: u64,
    /// Jobs that may have been running before a restart, kept out of the
    /// queues until `hold_until_ms` so that TaskTrackers reconnecting can
    /// deliver their outcomes before the jobs are handed out again.
    pub(super) held: HashSet<String>,
    pub(super) hold_until_ms: i64,
    /// Past this many [`resident_bytes`], ready jobs submitted wait on disk
    /// (see [`super::paging`]).
    pub(super) budget: u64,
    /// Ready jobs on disk, over all node groups.
    pub(super) on_disk: u64,
    /// The submit order of the first job stored since the store opened:
    /// a job before it that waits on disk was stored before the restart.
    pub(super) opened_seq: u64,
    /// Jobs a verb brought into memory from a chunk on disk that still
    /// names them (see [`super::paging`]).
    pub(super) brought_in: HashSet<String>,
    /// Whether any (node group, task id) is held on disk rather than in
    /// [`tasks`](Self::tasks).
    pub(super) disk_tasks: bool,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            live: Live::default(),
            queues: HashMap::new(),
            timers: BTreeMap::new(),
            waiting: HashMap::new(),
            tasks: Default::default(),
            next_seq: 0,
            held: HashSet::new(),
            hold_until_ms: 0,
            budget: u64::MAX,
            on_disk: 0,
            opened_seq: 0,
            brought_in: HashSet::new(),
            disk_tasks: false,
        }
    }
}

impl Index {
    /// Whether the jobs in memory take the budget or more.
    pub(super) fn over_budget(&self) -> bool {
        self.live.resident() >= self.budget
    }

    /// Puts a pending job in its queue (or a cron or repeat job among the
    /// timers); any other job is left out.
    pub(super) fn enqueue(&mut self, job: &Job, now_ms: i64) {
        // An operator's verb on a held job ends its hold.
        if !self.held.is_empty() {
            self.held.remove(&job.job_id);
        }
        if job.state != JobState::Pending {
            return;
        }
        if job.spec.schedule.is_recurring() {
            self.timers
                .insert((job.trigger_at_ms, job.seq), job.job_id.clone());
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

    /// Takes a job out of whichever queue holds it.
    pub(super) fn dequeue(&mut self, job: &Job) {
        if !self.held.is_empty() {
            self.held.remove(&job.job_id);
        }
        self.timers.remove(&(job.trigger_at_ms, job.seq));
        if let Some(q) = self.queues.get_mut(&job.spec.task_tracker_node_group) {
            q.ready
                .remove(&(job.spec.priority, job.trigger_at_ms, job.seq));
            q.delayed.remove(&(job.trigger_at_ms, job.seq));
        }
    }

    /// Keeps a job that may have been running before a restart out of the
    /// queues until [`release_held`](Self::release_held).
    pub(super) fn hold(&mut self, job_id: &str) {
        self.held.insert(job_id.to_string());
    }

    /// Queues the held jobs once their hold is over.
    pub(super) fn release_held(&mut self, now_ms: i64) {
        if self.held.is_empty() || now_ms < self.hold_until_ms {
            return;
        }
        for job_id in std::mem::take(&mut self.held) {
            if let Some(r) = self.live.get(&job_id) {
                let job = r.job.clone();
                self.enqueue(&job, now_ms);
            }
        }
    }

    /// When held jobs join the queues, if any are held.
    pub(super) fn held_until(&self) -> Option<i64> {
        (!self.held.is_empty()).then_some(self.hold_until_ms)
    }

    /// Moves jobs whose time has come from delayed to ready.
    pub(super) fn promote(&mut self, node_group: &str, now_ms: i64) {
        let Some(q) = self.queues.get_mut(node_group) else {
            return;
        };
        while let Some(entry) = q.delayed.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let ((_, seq), job_id) = entry.remove_entry();
            if let Some(r) = self.live.get(&job_id) {
                q.ready
                    .insert((r.job.spec.priority, r.job.trigger_at_ms, seq), job_id);
            }
        }
    }
}
