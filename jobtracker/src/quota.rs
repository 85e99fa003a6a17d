//! Quotas per TaskTracker node group: how many unfinished jobs a group may
//! hold (`--max-jobs-per-node-group`) and how many bytes of them
//! (`--max-bytes-per-node-group`, by [`quota_bytes`](crate::store::quota_bytes)).
//!
//! A submit is checked against a book kept here, never against the store
//! itself, so the check costs no store round trip: the book holds the
//! store's last count ([`JobStore::group_usage`], taken every
//! [`refresh_interval`]), plus what this tracker accepted since that count
//! began, plus what submits still in flight reserved. On a store of its
//! own (the embedded one) every job comes through this tracker, so a group
//! never passes its quota by submits; finished jobs free their room at the
//! next count. On a store several trackers share, each sees the others'
//! submits only at its next count: a group may pass its quota by what the
//! other trackers accept in one interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::store::{GroupUsage, JobStore};

/// How often the book is counted again on a store of the tracker's own:
/// the count is in memory there, without a scan.
pub const LOCAL_REFRESH: Duration = Duration::from_secs(1);

/// How often the book is counted again on a store several trackers share:
/// the count is an aggregation over the unfinished jobs in the database.
pub const SHARED_REFRESH: Duration = Duration::from_secs(5);

/// How often the quota book of a tracker over `store` is counted again.
pub fn refresh_interval(store: &dyn JobStore) -> Duration {
    match store.poll_interval() {
        Some(_) => SHARED_REFRESH,
        None => LOCAL_REFRESH,
    }
}

/// The quota a job would pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Over {
    /// The group holds `held` unfinished jobs, `max` at most.
    Jobs {
        /// Unfinished jobs in the group (as far as this tracker knows).
        held: u64,
        /// The quota.
        max: u64,
    },
    /// The group's unfinished jobs hold `held` bytes; with the job's
    /// `job` more they would pass `max`.
    Bytes {
        /// Bytes of the group's unfinished jobs.
        held: u64,
        /// The job's bytes.
        job: u64,
        /// The quota.
        max: u64,
    },
}

impl Over {
    /// The `limit` label of `lts_jobtracker_limited_total`.
    pub fn limit(&self) -> &'static str {
        match self {
            Over::Jobs { .. } => "node_group_jobs",
            Over::Bytes { .. } => "node_group_bytes",
        }
    }

    /// What the client is told for its job `jobs[i]` of node group `group`.
    pub fn message(&self, i: usize, group: &str) -> String {
        match self {
            Over::Jobs { held, max } => format!(
                "jobs[{i}]: node group {group} holds {held} unfinished jobs, its quota is {max} (--max-jobs-per-node-group); submit it again once some have finished"
            ),
            Over::Bytes { held, job, max } => format!(
                "jobs[{i}]: node group {group} holds {held} bytes of unfinished jobs; with this job's {job} bytes of payload and params it would pass its quota of {max} bytes (--max-bytes-per-node-group); submit it again once some have finished"
            ),
        }
    }
}

fn add(map: &mut HashMap<String, GroupUsage>, group: &str, u: GroupUsage) {
    // The group's name is copied only the first time it is seen.
    let e = match map.get_mut(group) {
        Some(e) => e,
        None => map.entry(group.to_string()).or_default(),
    };
    e.jobs = e.jobs.saturating_add(u.jobs);
    e.bytes = e.bytes.saturating_add(u.bytes);
}

fn sub(map: &mut HashMap<String, GroupUsage>, group: &str, u: GroupUsage) {
    if let Some(e) = map.get_mut(group) {
        e.jobs = e.jobs.saturating_sub(u.jobs);
        e.bytes = e.bytes.saturating_sub(u.bytes);
        if e.jobs == 0 && e.bytes == 0 {
            map.remove(group);
        }
    }
}

#[derive(Default)]
struct Book {
    /// The store's last count.
    counted: HashMap<String, GroupUsage>,
    /// Accepted here since that count began.
    since: HashMap<String, GroupUsage>,
    /// Accepted here since the count under way began; it becomes `since`
    /// when that count ends.
    next: Option<HashMap<String, GroupUsage>>,
    /// Reserved by submits that have not returned.
    in_flight: HashMap<String, GroupUsage>,
}

impl Book {
    fn held(&self, group: &str) -> GroupUsage {
        let mut u = GroupUsage::default();
        for m in [&self.counted, &self.since, &self.in_flight] {
            if let Some(x) = m.get(group) {
                u.jobs = u.jobs.saturating_add(x.jobs);
                u.bytes = u.bytes.saturating_add(x.bytes);
            }
        }
        u
    }
}

/// The quotas of one tracker and its book of what each group holds.
pub struct Quotas {
    max_jobs: u64,
    max_bytes: u64,
    /// A std mutex: never held across an await.
    book: Mutex<Book>,
}

impl Quotas {
    /// Quotas of `max_jobs` unfinished jobs and `max_bytes` bytes per node
    /// group; 0 turns one off.
    pub fn new(max_jobs: u64, max_bytes: u64) -> Arc<Self> {
        Arc::new(Quotas {
            max_jobs,
            max_bytes,
            book: Mutex::new(Book::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any quota is set.
    pub fn is_on(&self) -> bool {
        self.max_jobs > 0 || self.max_bytes > 0
    }

    /// What group `group` holds as far as this tracker knows.
    pub fn held(&self, group: &str) -> GroupUsage {
        self.lock().held(group)
    }

    /// Takes room, in order, for jobs given as (node group, bytes): each
    /// gets `None` (room taken) or the quota it would pass. The room is
    /// held by the returned reservation until it is settled.
    pub fn reserve(self: &Arc<Self>, jobs: &[(&str, u64)]) -> (Vec<Option<Over>>, Reservation) {
        let mut verdicts = Vec::with_capacity(jobs.len());
        let mut reserved = Vec::with_capacity(jobs.len());
        let mut groups: Vec<String> = Vec::new();
        let mut slot_of: HashMap<&str, usize> = HashMap::new();
        let mut book = self.lock();
        for &(group, bytes) in jobs {
            let held = book.held(group);
            let over = if self.max_jobs > 0 && held.jobs >= self.max_jobs {
                Some(Over::Jobs {
                    held: held.jobs,
                    max: self.max_jobs,
                })
            } else if self.max_bytes > 0 && held.bytes.saturating_add(bytes) > self.max_bytes {
                Some(Over::Bytes {
                    held: held.bytes,
                    job: bytes,
                    max: self.max_bytes,
                })
            } else {
                None
            };
            if over.is_none() {
                let u = GroupUsage { jobs: 1, bytes };
                add(&mut book.in_flight, group, u);
                let slot = *slot_of.entry(group).or_insert_with(|| {
                    groups.push(group.to_string());
                    groups.len() - 1
                });
                reserved.push((slot, bytes));
            }
            verdicts.push(over);
        }
        drop(book);
        let reservation = Reservation {
            quotas: self.clone(),
            groups,
            jobs: reserved,
            settled: false,
        };
        (verdicts, reservation)
    }

    fn settle(&self, r: &Reservation, stored: &dyn Fn(usize) -> bool) {
        let mut book = self.lock();
        for (i, &(slot, bytes)) in r.jobs.iter().enumerate() {
            let group = &r.groups[slot];
            let u = GroupUsage { jobs: 1, bytes };
            sub(&mut book.in_flight, group, u);
            if stored(i) {
                add(&mut book.since, group, u);
                if let Some(next) = &mut book.next {
                    add(next, group, u);
                }
            }
        }
    }

    /// Counts what each group holds in `store` again. Submits that return
    /// while the count is under way are counted in the book as well as,
    /// perhaps, in the count: a group is never thought to hold less than
    /// it does.
    pub async fn refresh(&self, store: &dyn JobStore) -> crate::Result<()> {
        self.lock().next = Some(HashMap::new());
        let counted = store.group_usage().await;
        let mut book = self.lock();
        let next = book.next.take().unwrap_or_default();
        book.counted = counted?.into_iter().collect();
        book.since = next;
        Ok(())
    }
}

/// Room a submit took in its groups' quotas, until it returns. Dropped
/// without [`settle`](Self::settle) (a submit that failed or was cancelled
/// midway), every job counts as stored until the next count.
pub struct Reservation {
    quotas: Arc<Quotas>,
    /// The node groups of the jobs.
    groups: Vec<String>,
    /// Each job that got room: its group's place in `groups`, its bytes.
    jobs: Vec<(usize, u64)>,
    settled: bool,
}

impl Reservation {
    /// The submit returned; `stored(i)` says whether the `i`-th job that
    /// got room was stored.
    pub fn settle(mut self, stored: impl Fn(usize) -> bool) {
        self.settled = true;
        self.quotas.clone().settle(&self, &stored);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.quotas.clone().settle(self, &|_| true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_over_a_quota_are_refused_and_room_comes_back_when_not_stored() {
        let q = Quotas::new(2, 100);
        let (v, r) = q.reserve(&[("a", 10), ("a", 10), ("a", 10), ("b", 95), ("b", 10)]);
        assert_eq!(v[0], None);
        assert_eq!(v[1], None);
        assert_eq!(v[2], Some(Over::Jobs { held: 2, max: 2 }));
        assert_eq!(v[3], None);
        assert_eq!(
            v[4],
            Some(Over::Bytes {
                held: 95,
                job: 10,
                max: 100
            })
        );
        // The second job of `a` was refused by the store (a duplicate).
        r.settle(|i| i != 1);
        assert_eq!(q.held("a"), GroupUsage { jobs: 1, bytes: 10 });
        assert_eq!(q.held("b"), GroupUsage { jobs: 1, bytes: 95 });
        // A submit dropped midway counts as stored.
        let (v, r) = q.reserve(&[("a", 1)]);
        assert_eq!(v, vec![None]);
        drop(r);
        assert_eq!(q.held("a"), GroupUsage { jobs: 2, bytes: 11 });
        assert!(!Quotas::new(0, 0).is_on());
    }
}
