//! Cron and repeat cycles on MongoDB, fenced by the master's term.
//!
//! A cron or repeat job is a template document in `jobs` marked
//! `template: true`; claims never take it. Its `trigger_at_ms` is its next
//! point. Firing follows the store-agnostic rule of `store/cycles.rs`
//! ([`cycle_step`], the misfire grace and policies, `rely_on_prev_cycle`)
//! exactly as the embedded store does; only how the writes reach the
//! database differs. One [`CycleStore::fire_due`] call fires every due
//! template in a few round trips, however many there are:
//!
//! 1. one `find` of the due templates;
//! 2. one unordered `insert_many` of their cycles: each cycle is a job
//!    with the task id `<task id>@<point>`, so the unique task-id index
//!    makes a point fire once even if two trackers fire it at once (the
//!    second insert is a duplicate and changes nothing);
//! 3. one `update` command with one statement per template, each a
//!    compare-and-set on the template's stored next point: no writer can
//!    move a schedule back, and of two racing writers one moves it;
//! 4. one `insert_many` of the execution-log lines.
//!
//! **Fencing.** Several trackers share the database; one of them, the
//! master, fires cycles, in a term that grows with each new master. On
//! the first call of a term the store raises `meta {_id: "master"}` to
//! that term (a conditional update that never lowers it) and refuses to
//! fire under a term older than the one recorded there. Every template
//! write also records its term in the template (`fence_term`) and only
//! matches templates whose `fence_term` is not newer. So a master that was
//! paused (GC, SIGSTOP, a partition) and has not noticed that another
//! replaced it cannot move a schedule the new master touched: its writes
//! do not match and the call returns [`Error::Fenced`]. It cannot double a
//! point in any case: the task-id index and the compare-and-set see to
//! that.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use futures::TryStreamExt;
use lts_common::{Job, JobState, LogEntry, LogKind, Schedule};
use mongodb::bson::{doc, Bson, Document};

use super::connection::store_err;
use super::{decode, final_states, id_of, state_bson, MongoStore, DUPLICATE_KEY};
use crate::election::Term;
use crate::error::{Error, Result};
use crate::store::cycles::{misfire_log, FIRE_AHEAD_MS, TEMPLATE_HISTORY_LINES};
use crate::store::{cycle_step, new_job, new_job_id, CycleStore, SubmitRefusal, SubmitResult};

/// Templates one call fires at most; the rest are due at once and the
/// next call takes them.
const TEMPLATES_PER_CALL: i64 = 500;

/// Cycles one call makes at most, so a backlog of missed points (fire-all
/// after a long outage) goes in bounded batches.
const CYCLES_PER_CALL: usize = 2_000;

/// The `meta` document recording the newest master term.
const MASTER: &str = "master";

/// A term as MongoDB stores it; terms past `i64::MAX` do not occur.
fn term_bson(term: Term) -> i64 {
    i64::try_from(term).unwrap_or(i64::MAX)
}

fn stored_term(d: &Document, field: &str) -> Option<Term> {
    match d.get(field) {
        Some(Bson::Int64(n)) => u64::try_from(*n).ok(),
        Some(Bson::Int32(n)) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// Matches a template no newer term has written.
fn not_newer_than(term: Term) -> Document {
    doc! { "$or": [
        { "fence_term": { "$lte": term_bson(term) } },
        { "fence_term": { "$exists": false } },
    ] }
}

/// Whether the jobs collection keeps `job` as a template (never claimed).
pub(super) fn is_template(job: &Job) -> bool {
    job.spec.schedule.is_recurring()
}

/// A due template as read.
struct Due {
    job: Job,
    /// The stored next point: the compare-and-set's old value.
    point: i64,
    last_child: Option<String>,
    /// Lines of the template's log older than this were trimmed.
    history_from_ms: Option<i64>,
}

/// A line of a template's log, written once its cycles are stored (a
/// cycle's job id is the holder's when its point had fired before).
enum Line {
    Misfire(String),
    Fired {
        cycle: u32,
        point: i64,
        child: usize,
    },
    Done,
}

/// What one call does to one template.
struct Moved {
    due: Due,
    lines: Vec<Line>,
    /// Its cycles of this call, as indexes into the batch of cycles.
    children: Vec<usize>,
}

impl MongoStore {
    /// Raises the recorded master term to `term` on the first call of a
    /// term; refuses a term older than the recorded one.
    async fn raise_term(&self, term: Term, now_ms: i64) -> Result<()> {
        let known = *self.fence.lock().unwrap_or_else(|p| p.into_inner());
        match known {
            Some(k) if k == term => return Ok(()),
            Some(k) if k > term => return Err(Error::Fenced { term, current: k }),
            _ => {}
        }
        let meta = self.c().await?.db.collection::<Document>("meta");
        let raised = meta
            .update_one(
                doc! {
                    "_id": MASTER,
                    "$or": [
                        { "term": { "$lte": term_bson(term) } },
                        { "term": { "$exists": false } },
                    ],
                },
                doc! { "$set": {
                    "term": term_bson(term),
                    "identity": self.instance(),
                    "at_ms": now_ms,
                } },
            )
            .upsert(true)
            .await;
        match raised {
            Ok(_) => {}
            // A newer term is recorded: the filter missed it, and the
            // upsert collided with it.
            Err(e) if is_duplicate(&e) => {
                let current = meta
                    .find_one(doc! { "_id": MASTER })
                    .await
                    .map_err(store_err("reading the master term"))?
                    .and_then(|d| stored_term(&d, "term"))
                    .unwrap_or(term);
                tracing::info!(
                    term,
                    current,
                    "a newer master term is recorded in {}.meta; if this cluster's ZooKeeper data was reset, delete the meta document {{_id: \"master\"}} so terms count from zero again",
                    self.database()
                );
                return Err(Error::Fenced { term, current });
            }
            Err(e) => return Err(store_err("recording the master term")(e)),
        }
        *self.fence.lock().unwrap_or_else(|p| p.into_inner()) = Some(term);
        tracing::info!(term, identity = self.instance(), "master term recorded");
        Ok(())
    }

    /// The due templates, oldest point first.
    async fn due_templates(&self, now_ms: i64, term: Term) -> Result<Vec<Due>> {
        let docs: Vec<Document> = self
            .c()
            .await?
            .jobs
            .find(doc! {
                "template": true,
                "state": state_bson(JobState::Pending),
                "trigger_at_ms": { "$lte": now_ms.saturating_add(FIRE_AHEAD_MS) },
            })
            .sort(doc! { "trigger_at_ms": 1 })
            .limit(TEMPLATES_PER_CALL)
            .await
            .map_err(store_err("reading due cron and repeat jobs"))?
            .try_collect()
            .await
            .map_err(store_err("reading due cron and repeat jobs"))?;
        let mut due = Vec::with_capacity(docs.len());
        for d in docs {
            if let Some(current) = stored_term(&d, "fence_term").filter(|c| *c > term) {
                return Err(Error::Fenced { term, current });
            }
            let last_child = d.get_str("last_child").ok().map(str::to_string);
            let history_from_ms = d.get_i64("history_from_ms").ok();
            let Some(job) = decode::<Job>("job", d) else {
                continue;
            };
            due.push(Due {
                point: job.trigger_at_ms,
                job,
                last_child,
                history_from_ms,
            });
        }
        Ok(due)
    }

    /// The previous cycles among `ids` that are not final yet.
    async fn unfinished(&self, ids: Vec<&str>) -> Result<HashSet<String>> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let docs: Vec<Document> = self
            .c()
            .await?
            .jobs
            .find(doc! { "_id": { "$in": ids }, "state": { "$nin": final_states() } })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(store_err("reading previous cycles"))?
            .try_collect()
            .await
            .map_err(store_err("reading previous cycles"))?;
        Ok(docs.iter().map(id_of).collect())
    }

    /// Steps `due` through its due points (up to `room` cycles), adding
    /// their cycles to `children`.
    fn step_template(
        &self,
        mut due: Due,
        now_ms: i64,
        room: usize,
        children: &mut Vec<Job>,
    ) -> Moved {
        let mut lines = Vec::new();
        let mut mine = Vec::new();
        let template = due.job.clone();
        let job = &mut due.job;
        while job.trigger_at_ms <= now_ms.saturating_add(FIRE_AHEAD_MS) && mine.len() < room {
            let step = cycle_step(&job.spec.schedule, job.trigger_at_ms, now_ms);
            if let Some(missed) = &step.missed {
                lines.push(Line::Misfire(misfire_log(
                    &job.spec.schedule,
                    missed,
                    now_ms,
                )));
            }
            if let Some(point) = step.fire {
                let mut spec = template.spec.clone();
                spec.task_id = format!("{}@{point}", template.spec.task_id);
                spec.schedule = Schedule::Now;
                spec.replace_on_exist = false;
                spec.rely_on_prev_cycle = false;
                let mut child = new_job(new_job_id(), spec, self.next_seq(), now_ms);
                // Made ahead of its point, it waits in the queue until then.
                child.trigger_at_ms = point;
                job.cycles += 1;
                lines.push(Line::Fired {
                    cycle: job.cycles,
                    point,
                    child: children.len(),
                });
                mine.push(children.len());
                children.push(child);
            }
            let exhausted = matches!(
                job.spec.schedule,
                Schedule::Repeat { count, .. } if count > 0 && job.cycles >= count
            );
            match step.next {
                Some(next) if !exhausted => job.trigger_at_ms = next,
                _ => {
                    job.state = JobState::Succeeded;
                    lines.push(Line::Done);
                    break;
                }
            }
            if step.fire.is_some() && job.spec.rely_on_prev_cycle {
                // The next point waits until this cycle's job is final.
                break;
            }
        }
        job.updated_at_ms = now_ms;
        Moved {
            due,
            lines,
            children: mine,
        }
    }
}

fn is_duplicate(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

#[async_trait]
impl CycleStore for MongoStore {
    async fn fire_due(&self, now_ms: i64, term: Term) -> Result<Vec<String>> {
        self.raise_term(term, now_ms).await?;
        let due = self.due_templates(now_ms, term).await?;
        let relying: Vec<&str> = due
            .iter()
            .filter(|d| d.job.spec.rely_on_prev_cycle)
            .filter_map(|d| d.last_child.as_deref())
            .collect();
        let unfinished = self.unfinished(relying).await?;
        let mut waiting = Vec::new();
        let mut children: Vec<Job> = Vec::new();
        let mut moved: Vec<Moved> = Vec::new();
        for d in due {
            let waits = d.job.spec.rely_on_prev_cycle
                && d.last_child
                    .as_ref()
                    .is_some_and(|c| unfinished.contains(c));
            if waits {
                waiting.push(d.job.job_id.clone());
                continue;
            }
            let room = CYCLES_PER_CALL.saturating_sub(children.len());
            if room == 0 {
                break;
            }
            moved.push(self.step_template(d, now_ms, room, &mut children));
        }
        *self.waiting.lock().unwrap_or_else(|p| p.into_inner()) = waiting;
        if moved.is_empty() {
            return Ok(Vec::new());
        }

        // The cycles first: a crash before the templates move leaves them
        // due, and firing them again finds their points taken.
        let ids: Vec<String> = children.iter().map(|c| c.job_id.clone()).collect();
        let mut groups = Vec::new();
        let mut holder: Vec<String> = ids.clone();
        let mut created = vec![false; children.len()];
        let batch: Vec<(usize, Job)> = children.iter().cloned().enumerate().collect();
        for (i, r) in self.insert_jobs(batch).await? {
            match r {
                SubmitResult::Created(_) => {
                    created[i] = true;
                    groups.push(children[i].spec.task_tracker_node_group.clone());
                }
                // Fired before: by a tracker that crashed before moving the
                // template on, or by another master racing this one.
                SubmitResult::Refused(SubmitRefusal::AlreadyExists { job_id }) => {
                    holder[i] = job_id;
                }
                other => {
                    return Err(Error::Internal {
                        context: format!("storing a cron or repeat cycle: {other:?}"),
                        source: None,
                    })
                }
            }
        }

        let token = self.op_token();
        let mut statements = Vec::with_capacity(moved.len());
        let mut trims = Vec::new();
        for m in &moved {
            let job = &m.due.job;
            let mut set = doc! {
                "state": state_bson(job.state),
                "trigger_at_ms": job.trigger_at_ms,
                "cycles": i64::from(job.cycles),
                "updated_at_ms": now_ms,
                "fence_term": term_bson(term),
                "op_token": &token,
            };
            if let Some(&last) = m.children.last() {
                set.insert("last_child", &holder[last]);
            }
            let before = job.cycles as usize - m.children.len();
            if job.cycles as usize / TEMPLATE_HISTORY_LINES > before / TEMPLATE_HISTORY_LINES {
                // Every hundredth cycle the lines before the previous trim
                // go, so a template's log holds its last 100 to 200 lines.
                if let Some(from) = m.due.history_from_ms {
                    trims.push(Bson::Document(doc! {
                        "job_id": &job.job_id,
                        "kind": { "$ne": "Received" },
                        "at_ms": { "$lt": from },
                    }));
                }
                set.insert("history_from_ms", now_ms);
            }
            let mut filter = doc! {
                "_id": &job.job_id,
                "template": true,
                "state": state_bson(JobState::Pending),
                "trigger_at_ms": m.due.point,
            };
            filter.extend(not_newer_than(term));
            statements.push((filter, doc! { "$set": set }));
        }
        let n = statements.len();
        let counts = self.update_each(statements).await?;
        let mut fenced = None;
        let mut lost = HashSet::new();
        if counts.modified as usize != n {
            // Some template changed in between: an operator verb, another
            // tracker of the same term, or a newer master.
            let ids: Vec<&str> = moved.iter().map(|m| m.due.job.job_id.as_str()).collect();
            let docs: Vec<Document> = self
                .c()
                .await?
                .jobs
                .find(doc! { "_id": { "$in": ids } })
                .projection(doc! { "_id": 1, "op_token": 1, "fence_term": 1 })
                .await
                .map_err(store_err("reading back cron and repeat jobs"))?
                .try_collect()
                .await
                .map_err(store_err("reading back cron and repeat jobs"))?;
            let ours: HashMap<String, &Document> = docs.iter().map(|d| (id_of(d), d)).collect();
            for m in &moved {
                let id = &m.due.job.job_id;
                let d = ours.get(id);
                if d.and_then(|d| d.get_str("op_token").ok()) == Some(token.as_str()) {
                    continue;
                }
                lost.insert(id.clone());
                if let Some(current) = d
                    .and_then(|d| stored_term(d, "fence_term"))
                    .filter(|c| *c > term)
                {
                    fenced = Some(fenced.map_or(current, |f: Term| f.max(current)));
                }
            }
        }

        let mut logs = Vec::new();
        for (i, child) in children.iter().enumerate() {
            if created[i] {
                let parent = moved
                    .iter()
                    .find(|m| m.children.contains(&i))
                    .map_or("?", |m| m.due.job.job_id.as_str());
                logs.push(line(
                    &child.job_id,
                    LogKind::Received,
                    0,
                    format!(
                        "cycle due at {} of job {parent}",
                        lts_common::format_ms(child.trigger_at_ms)
                    ),
                    now_ms,
                ));
            }
        }
        for m in moved.iter().filter(|m| !lost.contains(&m.due.job.job_id)) {
            let job = &m.due.job;
            for l in &m.lines {
                let (kind, message) = match l {
                    Line::Misfire(message) => (LogKind::Misfire, message.clone()),
                    Line::Fired {
                        cycle,
                        point,
                        child,
                    } => (
                        LogKind::Fired,
                        format!(
                            "fired cycle {cycle} due at {} as job {}",
                            lts_common::format_ms(*point),
                            holder[*child]
                        ),
                    ),
                    Line::Done => (LogKind::Outcome, "no cycles left".to_string()),
                };
                logs.push(line(&job.job_id, kind, job.attempt, message, now_ms));
            }
        }
        self.insert_logs(&logs).await?;
        if !trims.is_empty() {
            self.c()
                .await?
                .logs
                .delete_many(doc! { "$or": trims })
                .await
                .map_err(store_err("trimming the logs of cron and repeat jobs"))?;
        }
        if let Some(current) = fenced {
            return Err(Error::Fenced { term, current });
        }
        groups.sort();
        groups.dedup();
        Ok(groups)
    }

    async fn next_fire_at(&self) -> Result<Option<i64>> {
        // Templates waiting for their previous cycle are due but cannot
        // fire yet: counting them would have the scheduler spin. It looks
        // at them again on its next round.
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let next = self
            .c()
            .await?
            .jobs
            .find_one(doc! {
                "template": true,
                "state": state_bson(JobState::Pending),
                "_id": { "$nin": waiting },
            })
            .sort(doc! { "trigger_at_ms": 1 })
            .projection(doc! { "trigger_at_ms": 1 })
            .await
            .map_err(store_err("reading the next cycle point"))?;
        Ok(next
            .and_then(|d| d.get_i64("trigger_at_ms").ok())
            .map(|at| at.saturating_sub(FIRE_AHEAD_MS)))
    }
}

/// A log line of `job_id` at `at_ms`, the instant the fire happened.
fn line(job_id: &str, kind: LogKind, attempt: u32, message: String, at_ms: i64) -> LogEntry {
    let mut e = LogEntry::new(job_id, kind, attempt, message);
    e.at_ms = at_ms;
    e
}
