//! Operator verbs (suspend, resume, trigger, update, delete) on the
//! MongoDB store.
//!
//! What a verb does is decided by the store-agnostic
//! [`decide`](crate::store::operator::decide), exactly as on the embedded
//! store; this module applies the decision to the job document. Several
//! JobTrackers share the database, so each verb is a compare-and-set: the
//! write matches the job only as it was read (state, attempt, trigger
//! time, cycle count, last change and the `op_token` every tracker's write
//! renews). A verb that finds the job changed under it reads it again and
//! decides again, so concurrent verbs, claims and outcomes behave as if
//! they had run one after the other: two suspends of one pending job
//! suspend it once, and a suspend that loses to a claim is refused as a
//! suspend of a running job is.

use lts_common::{format_ms, Job, JobState, LogEntry, LogKind, Schedule};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::ReturnDocument;

use super::connection::store_err;
use super::{
    decode, group_field, mutable_fields, regex_escape, state_bson, to_doc, MongoStore, QUOTA_BYTES,
};
use crate::error::{Error, Result};
use crate::store::operator::{decide, Decision, Effect};
use crate::store::{
    new_job, new_job_id, quota_bytes, AdminAction, Admined, OperatorStore, SubmitResult,
};

/// How many times a verb reads and decides again when the job changed
/// under it before it gives up: each round lost means another tracker's
/// write landed in between, so running out takes a job changed
/// continuously, and the caller may simply try again.
const ROUNDS: usize = 5;

/// The compare-and-set filter of `job` as read: it matches only while no
/// other write changed the job since.
fn unchanged(job: &Job, op_token: &Option<Bson>) -> Document {
    let mut filter = doc! {
        "_id": &job.job_id,
        "state": state_bson(job.state),
        "attempt": job.attempt as i64,
        "trigger_at_ms": job.trigger_at_ms,
        "updated_at_ms": job.updated_at_ms,
        "cycles": job.cycles as i64,
    };
    match op_token {
        Some(token) => filter.insert("op_token", token.clone()),
        // Never written by a claim, an outcome or a verb yet.
        None => filter.insert("op_token", doc! { "$exists": false }),
    };
    filter
}

/// A line of `job_id`'s execution log written at `now_ms`, the time the
/// verb was asked for (as on the embedded store).
fn line_at(mut line: LogEntry, job_id: &str, now_ms: i64) -> LogEntry {
    line.job_id = job_id.to_string();
    line.at_ms = now_ms;
    line
}

impl MongoStore {
    /// Applies `decision`, taken on `before` as read with `op_token`.
    /// `None`: the job changed in between and nothing was written.
    async fn apply_decision(
        &self,
        before: Job,
        op_token: Option<Bson>,
        decision: Decision,
        now_ms: i64,
    ) -> Result<Option<Admined>> {
        let job_id = before.job_id.clone();
        let filter = unchanged(&before, &op_token);
        match decision.effect {
            Effect::Delete => {
                let r = self
                    .c()
                    .await?
                    .jobs
                    .delete_one(filter)
                    .await
                    .map_err(store_err("deleting a job"))?;
                if r.deleted_count == 0 {
                    return Ok(None);
                }
                // After the job: a failure in between leaves lines of a job
                // that is gone, which the log retention removes in time,
                // never a job whose log was deleted.
                self.c()
                    .await?
                    .logs
                    .delete_many(doc! { "job_id": &job_id })
                    .await
                    .map_err(store_err("deleting the execution log of a deleted job"))?;
                Ok(Some(Admined {
                    before,
                    after: None,
                    wake: Vec::new(),
                }))
            }
            Effect::FireCycle => self.fire_now(before, now_ms).await.map(Some),
            Effect::Keep | Effect::Park | Effect::Requeue => {
                let mut after = decision.job;
                after.updated_at_ms = now_ms;
                let mut set = mutable_fields(&after)?;
                set.insert("spec", to_doc(&after.spec)?);
                set.insert(QUOTA_BYTES, quota_bytes(&after.spec) as i64);
                set.insert("op_token", self.op_token());
                let r = self
                    .c()
                    .await?
                    .jobs
                    .update_one(filter, doc! { "$set": set })
                    .await
                    .map_err(store_err("changing a job"))?;
                if r.matched_count == 0 {
                    return Ok(None);
                }
                let mut logs: Vec<LogEntry> = decision
                    .line
                    .into_iter()
                    .map(|l| line_at(l, &job_id, now_ms))
                    .collect();
                if decision.effect == Effect::Park && before.spec.schedule.is_recurring() {
                    logs.extend(self.cancel_cycles_ahead(&before, now_ms).await?);
                }
                self.insert_logs(&logs).await?;
                let wake = match decision.effect {
                    Effect::Requeue => vec![after.spec.task_tracker_node_group.clone()],
                    _ => Vec::new(),
                };
                Ok(Some(Admined {
                    before,
                    after: Some(after),
                    wake,
                }))
            }
        }
    }

    /// Cancels the cycles of the cron or repeat job `template` made ahead
    /// of their point and not started yet, so nothing fires after a
    /// suspend. A cycle's task id is `<task id>@<point>` (see
    /// `store/cycles.rs`). Returns their log lines.
    async fn cancel_cycles_ahead(&self, template: &Job, now_ms: i64) -> Result<Vec<LogEntry>> {
        let ahead = doc! {
            group_field(): &template.spec.task_tracker_node_group,
            "spec.task_id": {
                "$regex": format!("^{}@-?[0-9]+$", regex_escape(&template.spec.task_id)),
            },
            "dedup_slot": "",
            "state": state_bson(JobState::Pending),
            "trigger_at_ms": { "$gt": now_ms },
        };
        let found = self.find_jobs(ahead.clone()).await?;
        if found.is_empty() {
            return Ok(Vec::new());
        }
        let token = self.op_token();
        let ids: Vec<&str> = found.iter().map(|j| j.job_id.as_str()).collect();
        let mut filter = ahead;
        filter.insert("_id", doc! { "$in": &ids });
        let r = self
            .c()
            .await?
            .jobs
            .update_many(
                filter,
                doc! { "$set": {
                    "state": state_bson(JobState::Cancelled),
                    "updated_at_ms": now_ms,
                    "op_token": &token,
                } },
            )
            .await
            .map_err(store_err("cancelling the cycles of a suspended job"))?;
        let cancelled: Vec<Job> = if r.modified_count as usize == found.len() {
            found
        } else {
            // Some started or changed in between: only ours get a line.
            self.find_jobs(doc! { "op_token": &token }).await?
        };
        Ok(cancelled
            .iter()
            .map(|c| {
                line_at(
                    LogEntry::new(
                        "",
                        LogKind::Cancelled,
                        c.attempt,
                        "its cron or repeat job was suspended before this cycle's point",
                    ),
                    &c.job_id,
                    now_ms,
                )
            })
            .collect())
    }

    /// Fires one cycle of the cron or repeat job `template` now, as a job
    /// of its own with the task id `<task id>@<now>`: a second trigger in
    /// the same millisecond (or a cycle fired for the same point) finds
    /// the task id taken and fires nothing more.
    async fn fire_now(&self, template: Job, now_ms: i64) -> Result<Admined> {
        let mut spec = template.spec.clone();
        spec.task_id = format!("{}@{now_ms}", template.spec.task_id);
        spec.schedule = Schedule::Now;
        spec.replace_on_exist = false;
        spec.rely_on_prev_cycle = false;
        let cycle = new_job(new_job_id(), spec, self.next_seq(), now_ms);
        let cycle_id = cycle.job_id.clone();
        let fired = matches!(
            self.insert_jobs(vec![(0, cycle)]).await?.first(),
            Some((_, SubmitResult::Created(_)))
        );
        if !fired {
            return Ok(Admined {
                after: Some(template.clone()),
                before: template,
                wake: Vec::new(),
            });
        }
        // Counted on the template whatever else changed it meanwhile: the
        // cycle exists, so the trigger happened.
        let counted = self
            .c()
            .await?
            .jobs
            .find_one_and_update(
                doc! { "_id": &template.job_id },
                doc! {
                    "$inc": { "cycles": 1 },
                    "$set": { "updated_at_ms": now_ms, "op_token": self.op_token() },
                },
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(store_err("counting a fired cycle"))?;
        let after = counted.and_then(|d| decode::<Job>("job", d));
        let count = after
            .as_ref()
            .map_or(template.cycles.saturating_add(1), |j| j.cycles);
        let at = format_ms(now_ms);
        self.insert_logs(&[
            line_at(
                LogEntry::new(
                    "",
                    LogKind::Received,
                    0,
                    format!("cycle due at {at} of job {}", template.job_id),
                ),
                &cycle_id,
                now_ms,
            ),
            line_at(
                LogEntry::new(
                    "",
                    LogKind::Fired,
                    template.attempt,
                    format!("fired cycle {count} due at {at} as job {cycle_id}"),
                ),
                &template.job_id,
                now_ms,
            ),
        ])
        .await?;
        Ok(Admined {
            wake: vec![template.spec.task_tracker_node_group.clone()],
            after,
            before: template,
        })
    }
}

#[async_trait::async_trait]
impl OperatorStore for MongoStore {
    async fn admin(&self, job_id: &str, action: AdminAction, now_ms: i64) -> Result<Admined> {
        for _ in 0..ROUNDS {
            let Some(mut d) = self
                .c()
                .await?
                .jobs
                .find_one(doc! { "_id": job_id })
                .await
                .map_err(store_err("reading a job"))?
            else {
                return Err(Error::NotFound(job_id.to_string()));
            };
            let op_token = d.remove("op_token");
            let before: Job = mongodb::bson::from_document(d)
                .map_err(|e| Error::corrupt(format!("jobs {job_id}"), e))?;
            let decision = decide(&before, &action, now_ms)?;
            if let Some(done) = self
                .apply_decision(before, op_token, decision, now_ms)
                .await?
            {
                return Ok(done);
            }
            tracing::debug!("job {job_id} changed under an operator verb; deciding again");
        }
        Err(Error::Unavailable {
            context: format!(
                "job {job_id} kept changing under other JobTrackers' writes; try the operator verb again"
            ),
            source: None,
        })
    }
}
