//! The cluster store: MongoDB, shared by every JobTracker of a cluster.
//!
//! Nothing is cached in the tracker: the queue is the `jobs` collection,
//! so several trackers can submit, claim and complete over one database.
//! Collections (the operator's view is `docs/mongodb.md`):
//!
//! | collection | `_id` | holds |
//! |---|---|---|
//! | `jobs` | job id | the job (its serde fields) plus `dedup_slot`, `lease_owner`, `lease_until_ms`, `op_token` |
//! | `logs` | ObjectId | a log line (its serde fields) plus `seq` and `written_at` (TTL) |
//! | `feedback` | feedback id | a feedback not yet acked |
//! | `meta` | `"schema"` | `version` |
//!
//! Dedup: the unique index over (node group, task id, `dedup_slot`) lets
//! one job per task id have `dedup_slot: ""`; a replaced job's slot is its
//! own id, which frees the task id and keeps the old job readable.
//!
//! Batches: a submit is one `insert_many` (unordered; a duplicate key
//! becomes that job's `AlreadyExists`); a claim reads the candidates in
//! queue order and takes them with one `update` command holding one
//! conditional statement per job, so a job another tracker took first is
//! simply not in the result; outcomes and requeues are applied the same
//! way. Every command sent is counted ([`MongoStore::commands_sent`]).
//!
//! Runs are leased: a claim records this tracker's instance name and a
//! lease end; a background task renews the leases of this tracker's runs
//! and requeues runs whose lease expired (their tracker died). That is in
//! `leases`; reaching the database, its schema check and indexes, and how
//! driver errors reach callers are in `connection`. Operator verbs are
//! compare-and-sets on the job document, in `operator`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use lts_common::{Job, JobSpec, JobState, LogEntry, LogKind};
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::options::ReturnDocument;

mod connection;
mod cycles;
mod leases;
mod operator;

pub use connection::{redact_uri, ConnectError, MongoOptions, MongoUri, SCHEMA_VERSION};
use connection::{store_err, Conn};

use super::*;
use crate::error::{Error, Result};

/// How often the dispatcher looks for work other trackers made ready.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

const DUPLICATE_KEY: i32 = 11_000;

/// The MongoDB-backed [`JobStore`].
pub struct MongoStore {
    /// Set by the first successful [`MongoStore::connect`]; a call made
    /// before then connects first.
    conn: tokio::sync::OnceCell<Conn>,
    options: MongoOptions,
    commands: Arc<AtomicU64>,
    seq: AtomicU64,
    /// Node groups whose depth was reported, so an emptied queue reads 0.
    /// A std mutex: never held across an await.
    seen_groups: Mutex<HashSet<String>>,
    /// The master term this store recorded in `meta` (see `cycles`).
    fence: Mutex<Option<crate::election::Term>>,
    /// Templates the last `fire_due` found waiting for their previous
    /// cycle.
    waiting: Mutex<Vec<String>>,
}

fn to_doc<T: serde::Serialize>(v: &T) -> Result<Document> {
    bson::to_document(v).map_err(|e| Error::internal("encoding a record", e))
}

fn state_bson(s: JobState) -> Bson {
    // A unit variant always serializes; the name is the fallback anyway.
    bson::to_bson(&s).unwrap_or_else(|_| Bson::String(s.name().to_string()))
}

fn final_states() -> Vec<Bson> {
    [JobState::Succeeded, JobState::Failed, JobState::Cancelled]
        .into_iter()
        .map(state_bson)
        .collect()
}

fn id_of(d: &Document) -> String {
    match d.get("_id") {
        Some(Bson::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "(no _id)".into(),
    }
}

/// Decodes a stored record; one that does not decode is reported with its
/// id and skipped.
fn decode<T: serde::de::DeserializeOwned>(what: &str, d: Document) -> Option<T> {
    let id = id_of(&d);
    match bson::from_document(d) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!("skipping {what} {id}: stored record cannot be decoded: {e}");
            None
        }
    }
}

/// A job document's bytes for its node group's quota ([`quota_bytes`]),
/// kept beside the spec so the count sums a field.
pub(super) const QUOTA_BYTES: &str = "quota_bytes";

fn group_field() -> &'static str {
    "spec.task_tracker_node_group"
}

/// The fields of `job` an outcome or a requeue may change: everything but
/// its identity and spec.
fn mutable_fields(job: &Job) -> Result<Document> {
    let mut d = to_doc(job)?;
    for k in ["job_id", "spec", "seq", "submitted_at_ms"] {
        d.remove(k);
    }
    Ok(d)
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Counts of an `update` command.
struct UpdateCounts {
    modified: u64,
}

impl MongoStore {
    /// Next sequence number: the wall clock in ms shifted left 20 bits plus
    /// a counter, so it grows within a tracker and, as far as their clocks
    /// agree, across trackers, without a round trip.
    fn next_seq(&self) -> u64 {
        let base = (lts_common::now_ms().max(0) as u64) << 20;
        self.seq.fetch_max(base, Ordering::Relaxed);
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn op_token(&self) -> String {
        uuid::Uuid::now_v7().simple().to_string()
    }

    fn job_doc(&self, job: &Job) -> Result<Document> {
        let mut d = to_doc(job)?;
        d.insert("_id", job.job_id.clone());
        d.insert("dedup_slot", "");
        d.insert(QUOTA_BYTES, quota_bytes(&job.spec) as i64);
        if cycles::is_template(job) {
            d.insert("template", true);
        }
        Ok(d)
    }

    async fn insert_logs(&self, entries: &[LogEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let written_at = bson::DateTime::now();
        let mut docs = Vec::with_capacity(entries.len());
        for e in entries {
            let mut d = to_doc(e)?;
            d.insert("seq", self.next_seq() as i64);
            d.insert("written_at", written_at);
            docs.push(d);
        }
        self.c()
            .await?
            .logs
            .insert_many(docs)
            .ordered(false)
            .await
            .map_err(store_err("writing execution logs"))?;
        Ok(())
    }

    async fn insert_feedback(&self, items: &[Feedback]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut docs = Vec::with_capacity(items.len());
        for f in items {
            let mut d = to_doc(f)?;
            d.insert("_id", f.feedback_id.clone());
            docs.push(d);
        }
        self.c()
            .await?
            .feedback
            .insert_many(docs)
            .ordered(false)
            .await
            .map_err(store_err("writing feedback"))?;
        Ok(())
    }

    /// Runs one `update` command with one statement per `(filter, update)`:
    /// one round trip for a batch whose documents each change differently.
    async fn update_each(&self, statements: Vec<(Document, Document)>) -> Result<UpdateCounts> {
        if statements.is_empty() {
            return Ok(UpdateCounts { modified: 0 });
        }
        let updates: Vec<Bson> = statements
            .into_iter()
            .map(|(q, u)| Bson::Document(doc! { "q": q, "u": u, "multi": false }))
            .collect();
        let reply = self
            .c()
            .await?
            .db
            .run_command(doc! { "update": "jobs", "updates": updates, "ordered": false })
            .await
            .map_err(store_err("updating jobs"))?;
        if let Ok(errors) = reply.get_array("writeErrors") {
            if let Some(Bson::Document(first)) = errors.first() {
                return Err(Error::internal(
                    format!("MongoDB refused {} job update(s)", errors.len()),
                    first.get_str("errmsg").unwrap_or("no message").to_string(),
                ));
            }
        }
        if let Ok(wce) = reply.get_document("writeConcernError") {
            return Err(Error::unavailable(
                "MongoDB did not satisfy the write concern of a job update; try again later",
                wce.get_str("errmsg").unwrap_or("no message").to_string(),
            ));
        }
        let modified = match reply.get("nModified") {
            Some(Bson::Int32(n)) => *n as u64,
            Some(Bson::Int64(n)) => *n as u64,
            _ => 0,
        };
        Ok(UpdateCounts { modified })
    }

    async fn find_jobs(&self, filter: Document) -> Result<Vec<Job>> {
        let docs: Vec<Document> = self
            .c()
            .await?
            .jobs
            .find(filter)
            .await
            .map_err(store_err("reading jobs"))?
            .try_collect()
            .await
            .map_err(store_err("reading jobs"))?;
        Ok(docs.into_iter().filter_map(|d| decode("job", d)).collect())
    }

    /// Inserts new jobs in one unordered write; a duplicate task id becomes
    /// that job's refusal with the id of the job holding the task id.
    async fn insert_jobs(&self, jobs: Vec<(usize, Job)>) -> Result<Vec<(usize, SubmitResult)>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let docs = jobs
            .iter()
            .map(|(_, j)| self.job_doc(j))
            .collect::<Result<Vec<_>>>()?;
        let mut duplicates = HashSet::new();
        if let Err(e) = self.c().await?.jobs.insert_many(docs).ordered(false).await {
            let mongodb::error::ErrorKind::InsertMany(ref failure) = *e.kind else {
                return Err(store_err("storing jobs")(e));
            };
            if failure.write_concern_error.is_some() {
                return Err(store_err("storing jobs")(e));
            }
            for w in failure.write_errors.iter().flatten() {
                if w.code != DUPLICATE_KEY {
                    return Err(Error::internal(
                        format!(
                            "MongoDB refused job {}",
                            jobs.get(w.index).map_or("?", |(_, j)| j.job_id.as_str())
                        ),
                        w.message.clone(),
                    ));
                }
                duplicates.insert(w.index);
            }
        }
        let mut holders = HashMap::new();
        if !duplicates.is_empty() {
            let keys: Vec<Bson> = duplicates
                .iter()
                .filter_map(|i| jobs.get(*i))
                .map(|(_, j)| {
                    Bson::Document(doc! {
                        group_field(): &j.spec.task_tracker_node_group,
                        "spec.task_id": &j.spec.task_id,
                        "dedup_slot": "",
                    })
                })
                .collect();
            let found: Vec<Document> = self
                .c()
                .await?
                .jobs
                .find(doc! { "$or": keys })
                .projection(doc! { "_id": 1, group_field(): 1, "spec.task_id": 1 })
                .await
                .map_err(store_err("reading duplicate task ids"))?
                .try_collect()
                .await
                .map_err(store_err("reading duplicate task ids"))?;
            for d in found {
                let spec = d.get_document("spec").ok();
                let g = spec.and_then(|s| s.get_str("task_tracker_node_group").ok());
                let t = spec.and_then(|s| s.get_str("task_id").ok());
                if let (Some(g), Some(t)) = (g, t) {
                    holders.insert((g.to_string(), t.to_string()), id_of(&d));
                }
            }
        }
        let mut out = Vec::with_capacity(jobs.len());
        for (i, (slot, job)) in jobs.into_iter().enumerate() {
            if !duplicates.contains(&i) {
                out.push((slot, SubmitResult::Created(job.job_id)));
                continue;
            }
            let key = (job.spec.task_tracker_node_group, job.spec.task_id);
            let Some(existing) = holders.get(&key) else {
                // A race with another submit, not a fault: retrying settles it.
                return Err(Error::Unavailable {
                    context: format!(
                        "task id {} of node group {} was taken and released by a concurrent submit; submit again",
                        key.1, key.0
                    ),
                    source: None,
                });
            };
            out.push((
                slot,
                SubmitResult::Refused(SubmitRefusal::AlreadyExists {
                    job_id: existing.clone(),
                }),
            ));
        }
        Ok(out)
    }

    /// Stores `spec` in place of the job holding its task id, if any
    /// (`replace_on_exist`). Retries when a concurrent submit moves the
    /// task id in between.
    async fn replace(
        &self,
        spec: JobSpec,
        now_ms: i64,
        logs: &mut Vec<LogEntry>,
    ) -> Result<SubmitResult> {
        let g = spec.task_tracker_node_group.clone();
        let t = spec.task_id.clone();
        let job = new_job(new_job_id(), spec, self.next_seq(), now_ms);
        for _ in 0..8 {
            let holder = self
                .c()
                .await?
                .jobs
                .find_one(doc! { group_field(): &g, "spec.task_id": &t, "dedup_slot": "" })
                .await
                .map_err(store_err("reading the job to replace"))?;
            let mut replaced = None;
            if let Some(d) = holder {
                let old_id = id_of(&d);
                let Some(old) = decode::<Job>("job", d) else {
                    return Err(Error::corrupt(
                        old_id,
                        "the job holding this task id cannot be decoded",
                    ));
                };
                let mut set = doc! { "dedup_slot": &old.job_id };
                if !old.state.is_final() {
                    set.insert("state", state_bson(JobState::Cancelled));
                    set.insert("updated_at_ms", now_ms);
                }
                let r = self
                    .c()
                    .await?
                    .jobs
                    .update_one(
                        doc! {
                            "_id": &old.job_id,
                            "dedup_slot": "",
                            "state": state_bson(old.state),
                            "attempt": old.attempt as i64,
                        },
                        doc! { "$set": set },
                    )
                    .await
                    .map_err(store_err("replacing a job"))?;
                if r.modified_count == 0 {
                    continue;
                }
                replaced = Some(old);
            }
            match self.insert_jobs(vec![(0, job.clone())]).await? {
                r if matches!(r.first(), Some((_, SubmitResult::Created(_)))) => {}
                _ => continue,
            }
            logs.push(LogEntry::new(&job.job_id, LogKind::Received, 0, ""));
            return Ok(match replaced {
                Some(old) => {
                    logs.push(LogEntry::new(
                        &old.job_id,
                        LogKind::Replaced,
                        old.attempt,
                        format!("replaced by job {} (replace_on_exist)", job.job_id),
                    ));
                    SubmitResult::Replaced {
                        job_id: job.job_id,
                        replaced: Box::new(old),
                    }
                }
                None => SubmitResult::Created(job.job_id),
            });
        }
        Err(Error::Unavailable {
            context: format!(
                "task id {t} of node group {g} keeps changing under concurrent submits; submit again"
            ),
            source: None,
        })
    }

    /// Puts running jobs back in the queue, each with the reason `why`
    /// gives, if they are still the run `(id, attempt)`. Returns how many.
    async fn requeue_jobs(
        &self,
        jobs: Vec<Job>,
        now_ms: i64,
        why: impl Fn(&Job) -> String,
    ) -> Result<usize> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let token = self.op_token();
        let statements = jobs
            .iter()
            .map(|j| {
                (
                    doc! {
                        "_id": &j.job_id,
                        "state": state_bson(JobState::Running),
                        "attempt": j.attempt as i64,
                    },
                    doc! {
                        "$set": {
                            "state": state_bson(JobState::Pending),
                            "worker": "",
                            "updated_at_ms": now_ms,
                            "op_token": &token,
                        },
                        "$min": { "trigger_at_ms": now_ms },
                        "$unset": { "lease_owner": "", "lease_until_ms": "" },
                    },
                )
            })
            .collect();
        let counts = self.update_each(statements).await?;
        let done: Vec<&Job> = if counts.modified as usize == jobs.len() {
            jobs.iter().collect()
        } else {
            let ids: HashSet<String> = self
                .find_jobs(doc! { "op_token": &token })
                .await?
                .into_iter()
                .map(|j| j.job_id)
                .collect();
            jobs.iter().filter(|j| ids.contains(&j.job_id)).collect()
        };
        let logs: Vec<LogEntry> = done
            .iter()
            .map(|j| {
                LogEntry::new(&j.job_id, LogKind::Requeued, j.attempt, why(j))
                    .with_worker(&j.worker)
            })
            .collect();
        self.insert_logs(&logs).await?;
        Ok(done.len())
    }

    /// Claims ready jobs of `node_group`, or with `until_ms` pending jobs
    /// due after now and by then, sent ahead to start at their trigger
    /// time: one read of the candidates in order, then one `update`
    /// command with a conditional statement per job, so a job another
    /// tracker took first is simply not in the result.
    async fn claim_from(
        &self,
        node_group: &str,
        grants: &[(String, usize)],
        now_ms: i64,
        until_ms: Option<i64>,
    ) -> Result<Claimed> {
        let mut claimed = Claimed {
            per_grant: grants.iter().map(|(_, n)| Vec::with_capacity(*n)).collect(),
            next_ready_at_ms: None,
        };
        let wanted: usize = grants.iter().map(|(_, n)| *n).sum();
        let (queue, order) = match until_ms {
            None => (
                doc! {
                    group_field(): node_group,
                    "state": state_bson(JobState::Pending),
                    "trigger_at_ms": { "$lte": now_ms },
                    // Cron and repeat templates never run themselves.
                    "template": { "$ne": true },
                },
                doc! { "spec.priority": 1, "trigger_at_ms": 1, "seq": 1 },
            ),
            // In trigger order: priority orders jobs of the same instant
            // only once they are due. Cron and repeat jobs are never sent
            // ahead themselves, as on the embedded store.
            Some(until) => (
                doc! {
                    group_field(): node_group,
                    "state": state_bson(JobState::Pending),
                    "trigger_at_ms": { "$gt": now_ms, "$lte": until },
                    "spec.schedule.Cron": { "$exists": false },
                    "spec.schedule.Repeat": { "$exists": false },
                },
                doc! { "trigger_at_ms": 1, "seq": 1 },
            ),
        };
        let mut candidates = Vec::new();
        if wanted > 0 {
            let docs: Vec<Document> = self
                .c()
                .await?
                .jobs
                .find(queue)
                .sort(order)
                .limit(wanted as i64)
                .await
                .map_err(store_err("reading the queue"))?
                .try_collect()
                .await
                .map_err(store_err("reading the queue"))?;
            candidates = docs
                .into_iter()
                .filter_map(|d| decode::<Job>("job", d))
                .collect();
        }
        // Each job goes to the grant with the most room left, so work
        // spreads over the idlest TaskTrackers first.
        let mut remaining: Vec<usize> = grants.iter().map(|(_, n)| *n).collect();
        let mut assigned: Vec<(usize, Job)> = Vec::with_capacity(candidates.len());
        for job in candidates {
            let Some((i, _)) = remaining
                .iter()
                .enumerate()
                .filter(|(_, r)| **r > 0)
                .max_by_key(|(i, r)| (**r, std::cmp::Reverse(*i)))
            else {
                break;
            };
            remaining[i] -= 1;
            assigned.push((i, job));
        }
        let token = self.op_token();
        let lease_until = now_ms + self.options.lease.as_millis() as i64;
        let statements = assigned
            .iter()
            .map(|(i, j)| {
                (
                    // Still the job we read: nobody claimed or changed it.
                    doc! {
                        "_id": &j.job_id,
                        "state": state_bson(JobState::Pending),
                        "attempt": j.attempt as i64,
                        "updated_at_ms": j.updated_at_ms,
                    },
                    doc! {
                        "$set": {
                            "state": state_bson(JobState::Running),
                            "worker": &grants[*i].0,
                            "updated_at_ms": now_ms,
                            "lease_owner": &self.options.instance,
                            "lease_until_ms": lease_until,
                            "op_token": &token,
                        },
                        "$inc": { "attempt": 1 },
                    },
                )
            })
            .collect();
        let counts = self.update_each(statements).await?;
        if counts.modified as usize != assigned.len() {
            // Another tracker took some first: keep what is ours.
            let ours: HashSet<String> = self
                .find_jobs(doc! { "op_token": &token })
                .await?
                .into_iter()
                .map(|j| j.job_id)
                .collect();
            assigned.retain(|(_, j)| ours.contains(&j.job_id));
        }
        let mut logs = Vec::with_capacity(assigned.len());
        for (i, mut job) in assigned {
            let worker = &grants[i].0;
            job.state = JobState::Running;
            job.attempt += 1;
            job.worker.clone_from(worker);
            job.updated_at_ms = now_ms;
            let line = match until_ms {
                None => format!("to {worker}"),
                Some(_) => format!(
                    "to {worker}, ahead of its time: it starts at {}",
                    lts_common::format_ms(job.trigger_at_ms)
                ),
            };
            logs.push(
                LogEntry::new(&job.job_id, LogKind::Dispatched, job.attempt, line)
                    .with_worker(worker),
            );
            claimed.per_grant[i].push(job);
        }
        self.insert_logs(&logs).await?;
        if logs.len() < wanted {
            // The queue ran dry: say when the next delayed job is due (for
            // a claim ahead, the next one beyond its horizon).
            let next = self
                .c()
                .await?
                .jobs
                .find_one(doc! {
                    group_field(): node_group,
                    "state": state_bson(JobState::Pending),
                    "trigger_at_ms": { "$gt": until_ms.unwrap_or(now_ms) },
                    "template": { "$ne": true },
                })
                .sort(doc! { "trigger_at_ms": 1 })
                .projection(doc! { "trigger_at_ms": 1 })
                .await
                .map_err(store_err("reading the next trigger time"))?;
            claimed.next_ready_at_ms = next.and_then(|d| d.get_i64("trigger_at_ms").ok());
        }
        Ok(claimed)
    }
}

#[async_trait]
impl JobStore for MongoStore {
    async fn recover(&self, now_ms: i64) -> Result<Recovery> {
        let pending = self
            .c()
            .await?
            .jobs
            .count_documents(doc! {
                "state": { "$in": [state_bson(JobState::Pending), state_bson(JobState::Suspended)] }
            })
            .await
            .map_err(store_err("counting pending jobs"))? as usize;
        // Runs leased under this instance name were started by this
        // tracker's previous life: they are dead now. Other trackers' runs
        // are left to their leases.
        let own = self
            .find_jobs(doc! {
                "state": state_bson(JobState::Running),
                "lease_owner": &self.options.instance,
            })
            .await?;
        let requeued = self
            .requeue_jobs(own, now_ms, |j| {
                format!(
                    "the JobTracker restarted while attempt {} ran on {}; it runs again with a new attempt",
                    j.attempt, j.worker
                )
            })
            .await?
            + self.requeue_expired(now_ms).await?;
        let feedback = self
            .c()
            .await?
            .feedback
            .count_documents(doc! {})
            .await
            .map_err(store_err("counting feedback"))? as usize;
        Ok(Recovery {
            pending,
            requeued,
            held: 0,
            feedback,
            corrupt: 0,
        })
    }

    async fn submit(&self, jobs: Vec<JobSpec>, now_ms: i64) -> Result<Vec<SubmitResult>> {
        let mut results: Vec<Option<SubmitResult>> = vec![None; jobs.len()];
        let mut logs = Vec::with_capacity(jobs.len());
        // Holder of each task id seen in this batch, so a duplicate within
        // the batch is refused without asking the database.
        let mut holders: HashMap<(String, String), String> = HashMap::new();
        let mut inserts: Vec<(usize, Job)> = Vec::new();
        for (slot, spec) in jobs.into_iter().enumerate() {
            let key = (spec.task_tracker_node_group.clone(), spec.task_id.clone());
            if spec.replace_on_exist {
                // Replaces run in batch order, after what precedes them.
                for (s, r) in self.insert_jobs(std::mem::take(&mut inserts)).await? {
                    results[s] = Some(r);
                }
                let r = self.replace(spec, now_ms, &mut logs).await?;
                if let SubmitResult::Created(id) | SubmitResult::Replaced { job_id: id, .. } = &r {
                    holders.insert(key, id.clone());
                }
                results[slot] = Some(r);
                continue;
            }
            if let Some(id) = holders.get(&key) {
                results[slot] = Some(SubmitResult::Refused(SubmitRefusal::AlreadyExists {
                    job_id: id.clone(),
                }));
                continue;
            }
            let job = new_job(new_job_id(), spec, self.next_seq(), now_ms);
            holders.insert(key, job.job_id.clone());
            inserts.push((slot, job));
        }
        let pre_ids: HashMap<usize, String> = inserts
            .iter()
            .map(|(slot, j)| (*slot, j.job_id.clone()))
            .collect();
        // A job of this batch refused for a stored task id: who holds it.
        let mut lost_to: HashMap<String, String> = HashMap::new();
        for (s, r) in self.insert_jobs(inserts).await? {
            match &r {
                SubmitResult::Created(id) => {
                    logs.push(LogEntry::new(id, LogKind::Received, 0, ""));
                }
                SubmitResult::Refused(SubmitRefusal::AlreadyExists { job_id }) => {
                    if let Some(pre) = pre_ids.get(&s) {
                        lost_to.insert(pre.clone(), job_id.clone());
                    }
                }
                _ => {}
            }
            results[s] = Some(r);
        }
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            out.push(match r {
                // An in-batch duplicate names the job it lost to, or, if
                // that one lost to a stored job, the stored one.
                Some(SubmitResult::Refused(SubmitRefusal::AlreadyExists { job_id })) => {
                    SubmitResult::Refused(SubmitRefusal::AlreadyExists {
                        job_id: lost_to.get(&job_id).cloned().unwrap_or(job_id),
                    })
                }
                Some(other) => other,
                None => {
                    return Err(Error::Internal {
                        context: "a job of the batch got no result".into(),
                        source: None,
                    })
                }
            });
        }
        self.insert_logs(&logs).await?;
        Ok(out)
    }

    async fn claim(
        &self,
        node_group: &str,
        grants: &[(String, usize)],
        now_ms: i64,
    ) -> Result<Claimed> {
        self.claim_from(node_group, grants, now_ms, None).await
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
        self.insert_logs(&entries).await
    }

    async fn complete(&self, reports: Vec<RunReport>, now_ms: i64) -> Result<Vec<CompleteResult>> {
        let ids: Vec<&str> = reports.iter().map(|r| r.job_id.as_str()).collect();
        let mut current: HashMap<String, Job> = self
            .find_jobs(doc! { "_id": { "$in": ids } })
            .await?
            .into_iter()
            .map(|j| (j.job_id.clone(), j))
            .collect();
        let token = self.op_token();
        let mut results = Vec::with_capacity(reports.len());
        let mut logs = Vec::with_capacity(reports.len() * 2);
        let mut statements = Vec::new();
        // Per applied result: its index, its job id, its run's attempt.
        let mut applied: Vec<(usize, String, u32, Vec<LogEntry>)> = Vec::new();
        let mut feedback = Vec::new();
        for report in reports {
            let state = current.get(&report.job_id).map(|j| (j.attempt, j.state));
            match state {
                Some((attempt, JobState::Running)) if attempt == report.attempt => {}
                other => {
                    let current_attempt = other.map(|(a, _)| a).unwrap_or(0);
                    logs.push(stale_outcome_log(&report, other));
                    results.push(CompleteResult::Stale { current_attempt });
                    continue;
                }
            }
            let Some(job) = current.get_mut(&report.job_id) else {
                continue;
            };
            let t = apply_outcome(job, &report, now_ms);
            let mut set = mutable_fields(job)?;
            set.insert("op_token", &token);
            statements.push((
                doc! {
                    "_id": &job.job_id,
                    "state": state_bson(JobState::Running),
                    "attempt": report.attempt as i64,
                },
                doc! { "$set": set, "$unset": { "lease_owner": "", "lease_until_ms": "" } },
            ));
            if let Some(fb) = &t.feedback {
                feedback.push(fb.clone());
            }
            applied.push((results.len(), job.job_id.clone(), report.attempt, t.logs));
            results.push(CompleteResult::Applied {
                job: Box::new(job.clone()),
                feedback: t.feedback,
            });
        }
        // Feedback first: a crash after it and before the job update runs
        // the job again and feeds back twice (at least once), never zero.
        self.insert_feedback(&feedback).await?;
        let counts = self.update_each(statements).await?;
        if counts.modified as usize != applied.len() {
            // Another tracker moved some of these jobs on in between.
            let ids: Vec<&str> = applied.iter().map(|(_, id, _, _)| id.as_str()).collect();
            let now: HashMap<String, Job> = self
                .find_jobs(doc! { "_id": { "$in": ids } })
                .await?
                .into_iter()
                .map(|j| (j.job_id.clone(), j))
                .collect();
            let ours: HashSet<String> = self
                .find_jobs(doc! { "op_token": &token })
                .await?
                .into_iter()
                .map(|j| j.job_id)
                .collect();
            let mut dropped_feedback = Vec::new();
            for (i, id, attempt, _) in &applied {
                if ours.contains(id) {
                    continue;
                }
                let current_attempt = now.get(id).map_or(0, |j| j.attempt);
                if let CompleteResult::Applied {
                    feedback: Some(fb), ..
                } = &results[*i]
                {
                    dropped_feedback.push(Bson::String(fb.feedback_id.clone()));
                }
                tracing::info!(
                    "outcome of job {id} attempt {attempt} lost a race; refused as stale"
                );
                results[*i] = CompleteResult::Stale { current_attempt };
            }
            applied.retain(|(_, id, _, _)| ours.contains(id));
            if !dropped_feedback.is_empty() {
                self.c()
                    .await?
                    .feedback
                    .delete_many(doc! { "_id": { "$in": dropped_feedback } })
                    .await
                    .map_err(store_err("dropping feedback of a stale outcome"))?;
            }
        }
        for (_, _, _, l) in applied {
            logs.extend(l);
        }
        self.insert_logs(&logs).await?;
        Ok(results)
    }

    async fn requeue(&self, runs: &[(String, u32)], reason: &str, now_ms: i64) -> Result<usize> {
        if runs.is_empty() {
            return Ok(0);
        }
        let wanted: HashSet<(&str, u32)> = runs.iter().map(|(id, a)| (id.as_str(), *a)).collect();
        let ids: Vec<&str> = runs.iter().map(|(id, _)| id.as_str()).collect();
        let jobs: Vec<Job> = self
            .find_jobs(doc! { "_id": { "$in": ids }, "state": state_bson(JobState::Running) })
            .await?
            .into_iter()
            .filter(|j| wanted.contains(&(j.job_id.as_str(), j.attempt)))
            .collect();
        self.requeue_jobs(jobs, now_ms, |_| reason.to_string())
            .await
    }

    async fn cancel(&self, job_id: &str, now_ms: i64) -> Result<Cancelled> {
        let before = self
            .c()
            .await?
            .jobs
            .find_one_and_update(
                doc! { "_id": job_id, "state": { "$nin": final_states() } },
                doc! {
                    "$set": {
                        "state": state_bson(JobState::Cancelled),
                        "updated_at_ms": now_ms,
                        "worker": "",
                    },
                    "$unset": { "lease_owner": "", "lease_until_ms": "" },
                },
            )
            .return_document(ReturnDocument::Before)
            .await
            .map_err(store_err("cancelling a job"))?;
        let Some(d) = before else {
            return match self.get(job_id).await? {
                Some(job) => Err(Error::WrongState(format!(
                    "job {job_id} is already {}",
                    job.state.name()
                ))),
                None => Err(Error::NotFound(job_id.to_string())),
            };
        };
        let Some(before) = decode::<Job>("job", d) else {
            return Err(Error::corrupt(
                job_id,
                "cancelled, but the stored job cannot be decoded",
            ));
        };
        let mut job = before.clone();
        job.state = JobState::Cancelled;
        job.updated_at_ms = now_ms;
        job.worker.clear();
        let feedback = job
            .spec
            .need_feedback
            .then(|| feedback_for(&job, None, now_ms));
        if let Some(fb) = &feedback {
            self.insert_feedback(std::slice::from_ref(fb)).await?;
        }
        self.insert_logs(&[LogEntry::new(
            job_id,
            LogKind::Cancelled,
            job.attempt,
            format!("cancelled while {}", before.state.name()),
        )])
        .await?;
        Ok(Cancelled {
            before,
            after: job,
            feedback,
        })
    }

    async fn get(&self, job_id: &str) -> Result<Option<Job>> {
        let found = self
            .c()
            .await?
            .jobs
            .find_one(doc! { "_id": job_id })
            .await
            .map_err(store_err("reading a job"))?;
        match found {
            Some(d) => bson::from_document(d)
                .map(Some)
                .map_err(|e| Error::corrupt(format!("jobs {job_id}"), e)),
            None => Ok(None),
        }
    }

    async fn get_by_task(&self, node_group: &str, task_id: &str) -> Result<Option<Job>> {
        let found = self
            .c()
            .await?
            .jobs
            .find_one(doc! { group_field(): node_group, "spec.task_id": task_id, "dedup_slot": "" })
            .await
            .map_err(store_err("reading a job by task id"))?;
        match found {
            Some(d) => {
                let id = id_of(&d);
                bson::from_document(d)
                    .map(Some)
                    .map_err(|e| Error::corrupt(format!("jobs {id}"), e))
            }
            None => Ok(None),
        }
    }

    async fn list(
        &self,
        filter: &ListFilter,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<(Vec<Job>, Option<String>)> {
        let mut q = Document::new();
        if let Some(g) = &filter.node_group {
            q.insert(group_field(), g);
        }
        if let Some(s) = filter.state {
            q.insert("state", state_bson(s));
        }
        if let Some(p) = &filter.task_id_prefix {
            q.insert(
                "spec.task_id",
                doc! { "$regex": format!("^{}", regex_escape(p)) },
            );
        }
        if let Some(kind) = filter.kind {
            // The schedule is stored externally tagged: `"Now"`, or an
            // object under `At`, `Cron` or `Repeat`.
            match kind {
                lts_common::ScheduleKind::Now => {
                    q.insert("spec.schedule", "Now");
                }
                lts_common::ScheduleKind::At => {
                    q.insert("spec.schedule.At", doc! { "$exists": true });
                }
                lts_common::ScheduleKind::Cron => {
                    q.insert("spec.schedule.Cron", doc! { "$exists": true });
                }
                lts_common::ScheduleKind::Repeat => {
                    q.insert("spec.schedule.Repeat", doc! { "$exists": true });
                }
            }
        }
        if let Some(t) = page_token {
            q.insert("_id", doc! { "$gt": t });
        }
        let docs: Vec<Document> = self
            .c()
            .await?
            .jobs
            .find(q)
            .sort(doc! { "_id": 1 })
            .limit(page_size as i64 + 1)
            .await
            .map_err(store_err("listing jobs"))?
            .try_collect()
            .await
            .map_err(store_err("listing jobs"))?;
        let more = docs.len() > page_size;
        let page: Vec<Document> = docs.into_iter().take(page_size).collect();
        // The token is the last document read, kept or not, so the next page
        // starts after everything this one looked at.
        let last_id = page
            .last()
            .and_then(|d| d.get_str("_id").ok())
            .map(str::to_string);
        let jobs: Vec<Job> = page
            .into_iter()
            .filter_map(|d| decode("job", d))
            // Every filter is in the query; this only guards against a
            // document the query matched loosely.
            .filter(|j: &Job| filter.matches(j))
            .collect();
        let token = if more { last_id } else { None };
        Ok((jobs, token))
    }

    async fn append_logs(&self, entries: Vec<LogEntry>) -> Result<()> {
        self.insert_logs(&entries).await
    }

    async fn logs(
        &self,
        job_id: &str,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<(Vec<LogEntry>, Option<String>)> {
        let mut q = doc! { "job_id": job_id };
        if let Some(t) = page_token {
            let after: i64 = t.parse().map_err(|_| {
                Error::Invalid(lts_common::ValidationError::new(
                    "page_token",
                    "is not a token this tracker gave out",
                ))
            })?;
            q.insert("seq", doc! { "$gt": after });
        }
        let docs: Vec<Document> = self
            .c()
            .await?
            .logs
            .find(q)
            .sort(doc! { "seq": 1 })
            .limit(page_size as i64 + 1)
            .await
            .map_err(store_err("reading execution logs"))?
            .try_collect()
            .await
            .map_err(store_err("reading execution logs"))?;
        let more = docs.len() > page_size;
        let mut out = Vec::with_capacity(page_size.min(docs.len()));
        let mut last_seq = 0;
        for d in docs.into_iter().take(page_size) {
            last_seq = d.get_i64("seq").unwrap_or(last_seq);
            if let Some(e) = decode("log line", d) {
                out.push(e);
            }
        }
        Ok((out, more.then(|| last_seq.to_string())))
    }

    async fn pending_feedback(&self) -> Result<Vec<Feedback>> {
        let docs: Vec<Document> = self
            .c()
            .await?
            .feedback
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .await
            .map_err(store_err("reading feedback"))?
            .try_collect()
            .await
            .map_err(store_err("reading feedback"))?;
        Ok(docs
            .into_iter()
            .filter_map(|d| decode("feedback", d))
            .collect())
    }

    async fn ack_feedback(&self, feedback_ids: &[String]) -> Result<()> {
        if feedback_ids.is_empty() {
            return Ok(());
        }
        self.c()
            .await?
            .feedback
            .delete_many(doc! { "_id": { "$in": feedback_ids } })
            .await
            .map_err(store_err("deleting acked feedback"))?;
        Ok(())
    }

    async fn queue_depths(&self, now_ms: i64) -> Result<Vec<(String, usize)>> {
        let counts = self
            .group_counts(doc! {
                "state": state_bson(JobState::Pending),
                "trigger_at_ms": { "$lte": now_ms },
                "template": { "$ne": true },
            })
            .await?;
        let mut seen = self.seen_groups.lock().unwrap_or_else(|p| p.into_inner());
        seen.extend(counts.keys().cloned());
        Ok(seen
            .iter()
            .map(|g| (g.clone(), counts.get(g).copied().unwrap_or(0)))
            .collect())
    }

    async fn group_usage(&self) -> Result<Vec<(String, GroupUsage)>> {
        let unfinished: Vec<Bson> = [JobState::Pending, JobState::Running, JobState::Suspended]
            .into_iter()
            .map(state_bson)
            .collect();
        let what = "counting unfinished jobs per node group";
        let docs: Vec<Document> = self
            .c()
            .await?
            .jobs
            .aggregate([
                doc! { "$match": { "state": { "$in": unfinished } } },
                doc! { "$group": {
                    "_id": format!("${}", group_field()),
                    "n": { "$sum": 1 },
                    // Jobs stored before the field was written count 0.
                    "bytes": { "$sum": format!("${QUOTA_BYTES}") },
                } },
            ])
            .await
            .map_err(store_err(what))?
            .try_collect()
            .await
            .map_err(store_err(what))?;
        let number = |v: Option<&Bson>| match v {
            Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
            Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
            Some(Bson::Double(n)) if *n > 0.0 => *n as u64,
            _ => 0,
        };
        Ok(docs
            .into_iter()
            .filter_map(|d| {
                let g = d.get_str("_id").ok()?.to_string();
                let usage = GroupUsage {
                    jobs: number(d.get("n")),
                    bytes: number(d.get("bytes")),
                };
                Some((g, usage))
            })
            .collect())
    }

    async fn node_groups(&self) -> Result<Vec<String>> {
        Ok(self
            .group_counts(doc! { "state": state_bson(JobState::Pending) })
            .await?
            .into_keys()
            .collect())
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(POLL_INTERVAL)
    }

    fn backend(&self) -> &'static str {
        "MongoDB"
    }

    fn on_claimable(&self, hook: ClaimableHook) {
        // Jobs become claimable in the database, possibly through another
        // tracker: this one cannot tell when. Its dispatchers are woken
        // after each submit here, and poll for the others' work
        // (`poll_interval`).
        drop(hook);
    }

    async fn sync(&self) -> Result<()> {
        // Every write is acknowledged by the database under its write
        // concern before its call returns: nothing is left to wait for.
        Ok(())
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

    async fn query_logs(
        &self,
        filter: &LogFilter,
        page_size: usize,
        page_token: Option<&str>,
    ) -> Result<(Vec<LogEntry>, Option<String>)> {
        query_logs_by_job(self, filter, page_size, page_token).await
    }

    fn cycles(&self) -> Option<&dyn CycleStore> {
        Some(self)
    }

    fn operator(&self) -> Option<&dyn OperatorStore> {
        Some(self)
    }

    async fn close(&self) -> Result<()> {
        // Nothing buffered (see `sync`); the lease task ends when the store
        // is dropped, and the driver closes its connections then. Leases
        // of runs still running stay until they expire or a restart under
        // the same instance name requeues them.
        Ok(())
    }
}

impl MongoStore {
    async fn group_counts(&self, filter: Document) -> Result<HashMap<String, usize>> {
        let docs: Vec<Document> = self
            .c()
            .await?
            .jobs
            .aggregate([
                doc! { "$match": filter },
                doc! { "$group": { "_id": format!("${}", group_field()), "n": { "$sum": 1 } } },
            ])
            .await
            .map_err(store_err("counting jobs per node group"))?
            .try_collect()
            .await
            .map_err(store_err("counting jobs per node group"))?;
        Ok(docs
            .into_iter()
            .filter_map(|d| {
                let g = d.get_str("_id").ok()?.to_string();
                let n = match d.get("n") {
                    Some(Bson::Int32(n)) => *n as usize,
                    Some(Bson::Int64(n)) => *n as usize,
                    _ => 0,
                };
                Some((g, n))
            })
            .collect())
    }
}
