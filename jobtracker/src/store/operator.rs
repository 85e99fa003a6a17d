//! The operator verbs' state machine: what suspend, resume, trigger,
//! update and delete do to a job, decided from the job as it is, with no
//! store in sight. A backend applies the [`Decision`] to its own records
//! and queues; so every backend that has operator verbs agrees on them.

use lts_common::{Job, JobState, LogEntry, LogKind, Schedule};

use super::{cycle_step, new_job, AdminAction};
use crate::error::{Error, Result};

/// What a verb does to a job.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The job as the verb leaves it. The store sets `updated_at_ms`.
    pub job: Job,
    /// A line for the job's execution log (its job id left empty).
    pub line: Option<LogEntry>,
    /// What the store does besides storing `job`.
    pub effect: Effect,
}

/// What a store does for a [`Decision`] besides storing the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing: the job keeps its place (or has none).
    Keep,
    /// The job leaves its queue. A cycle of a cron or repeat job made
    /// ahead of its point and not started yet is cancelled too, so
    /// nothing fires after a suspend.
    Park,
    /// The job leaves its queue and enters it again by its new priority
    /// and trigger time; its node group may have work now.
    Requeue,
    /// A cycle of the cron or repeat job fires now (the job itself stays
    /// as it is).
    FireCycle,
    /// The job and its execution log are deleted.
    Delete,
}

/// Decides what `action` does to `job` at `now_ms`, or why it is refused
/// (the job's state does not allow it).
pub fn decide(job: &Job, action: &AdminAction, now_ms: i64) -> Result<Decision> {
    let state = job.state;
    let refuse = |what: &str| {
        Err(Error::WrongState(format!(
            "job {} is {}: {what}",
            job.job_id,
            state.name()
        )))
    };
    let mut next = job.clone();
    let line = |message: String| Some(LogEntry::new("", LogKind::Requeued, job.attempt, message));
    let keep = |next: Job| {
        Ok(Decision {
            job: next,
            line: None,
            effect: Effect::Keep,
        })
    };
    match action {
        AdminAction::Suspend => match state {
            JobState::Pending => {
                next.state = JobState::Suspended;
                Ok(Decision {
                    job: next,
                    line: Some(LogEntry::new(
                        "",
                        LogKind::Suspended,
                        job.attempt,
                        "suspended by an operator",
                    )),
                    effect: Effect::Park,
                })
            }
            JobState::Suspended => keep(next),
            JobState::Running => refuse(
                "a running job cannot be suspended; cancel it, or suspend it when it is pending again",
            ),
            _ => refuse("a finished job cannot be suspended"),
        },
        AdminAction::Resume => match state {
            JobState::Suspended => {
                next.state = JobState::Pending;
                next.trigger_at_ms = match &job.spec.schedule {
                    Schedule::Cron { .. } => cycle_step(&job.spec.schedule, now_ms, now_ms)
                        .next
                        .unwrap_or(i64::MAX),
                    _ => now_ms,
                };
                Ok(Decision {
                    job: next,
                    line: line("resumed by an operator".into()),
                    effect: Effect::Requeue,
                })
            }
            JobState::Pending | JobState::Running => keep(next),
            _ => refuse("a finished job cannot be resumed"),
        },
        AdminAction::Trigger => {
            if job.spec.schedule.is_recurring() {
                if state.is_final() {
                    return refuse("a finished job cannot fire");
                }
                Ok(Decision {
                    job: next,
                    line: None,
                    effect: Effect::FireCycle,
                })
            } else if state == JobState::Pending {
                next.trigger_at_ms = now_ms;
                Ok(Decision {
                    job: next,
                    line: line("triggered by an operator".into()),
                    effect: Effect::Requeue,
                })
            } else {
                refuse("only a pending job, or a cron or repeat job, can be triggered")
            }
        }
        AdminAction::Delete => {
            if state == JobState::Running {
                return refuse("a running job cannot be deleted; cancel it first");
            }
            Ok(Decision {
                job: next,
                line: None,
                effect: Effect::Delete,
            })
        }
        AdminAction::Update(u) => {
            if u.schedule.is_some() && state == JobState::Running {
                return refuse(
                    "the schedule of a running job cannot change; wait until it is pending",
                );
            }
            if state.is_final() {
                return refuse("a finished job cannot change");
            }
            let mut changed = Vec::new();
            if let Some(p) = &u.params {
                next.spec.params = p.clone();
                changed.push("params".to_string());
            }
            if let Some(p) = u.priority {
                next.spec.priority = p;
                changed.push(format!("priority {p}"));
            }
            if let Some(sch) = &u.schedule {
                next.spec.schedule = sch.clone();
                next.trigger_at_ms = new_job(String::new(), next.spec.clone(), 0, now_ms).trigger_at_ms;
                changed.push(format!("schedule {:?}", sch.kind()));
            }
            let mut retry_moved = false;
            if let Some(plan) = &u.retry_plan {
                next.spec.retry_plan = Some(plan.clone());
                next.failures = 0;
                changed.push(format!("retry plan {plan} (error counter restarted)"));
                // A job waiting for its retry waits as the new plan says, not
                // as the old one did: the new plan's delay for an error, from
                // now. A plan whose first answer is not a retry lets the
                // waiting run go at once.
                let waiting_for_retry = state == JobState::Pending
                    && job.failures > 0
                    && u.schedule.is_none()
                    && next.trigger_at_ms > now_ms;
                if waiting_for_retry {
                    next.trigger_at_ms = match plan.decide(1) {
                        lts_common::RetryDecision::RetryAfter(delay) => now_ms
                            .saturating_add(i64::try_from(delay).unwrap_or(i64::MAX)),
                        _ => now_ms,
                    };
                    retry_moved = true;
                    changed.push(format!(
                        "the waiting retry now runs at {}",
                        lts_common::format_ms(next.trigger_at_ms)
                    ));
                }
            }
            let reschedule = u.schedule.is_some() || u.priority.is_some() || retry_moved;
            Ok(Decision {
                job: next,
                line: line(format!("updated by an operator: {}", changed.join(", "))),
                effect: if reschedule {
                    Effect::Requeue
                } else {
                    Effect::Keep
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::JobUpdate;
    use lts_common::JobSpec;

    fn job(state: JobState) -> Job {
        let mut j = new_job("j1".into(), JobSpec::new("t", "g"), 1, 1_000);
        j.state = state;
        j
    }

    fn refused(state: JobState, action: AdminAction) -> String {
        match decide(&job(state), &action, 2_000) {
            Err(Error::WrongState(m)) => m,
            other => panic!("{action:?} on a {state:?} job: {other:?}"),
        }
    }

    #[test]
    fn suspend_and_resume_park_and_requeue_a_pending_job() {
        let d = decide(&job(JobState::Pending), &AdminAction::Suspend, 2_000).expect("suspend");
        assert_eq!((d.job.state, d.effect), (JobState::Suspended, Effect::Park));
        let d = decide(&d.job, &AdminAction::Resume, 3_000).expect("resume");
        assert_eq!(
            (d.job.state, d.job.trigger_at_ms, d.effect),
            (JobState::Pending, 3_000, Effect::Requeue)
        );
        let d = decide(&job(JobState::Suspended), &AdminAction::Suspend, 2_000).expect("again");
        assert_eq!((d.effect, d.line), (Effect::Keep, None));
    }

    #[test]
    fn verbs_a_state_does_not_allow_are_refused_with_the_reason() {
        assert!(refused(JobState::Running, AdminAction::Suspend).contains("cancel it"));
        assert!(refused(JobState::Succeeded, AdminAction::Resume).contains("finished"));
        assert!(refused(JobState::Running, AdminAction::Delete).contains("cancel it first"));
        assert!(refused(JobState::Failed, AdminAction::Trigger).contains("only a pending job"));
        let m = refused(
            JobState::Running,
            AdminAction::Update(JobUpdate {
                schedule: Some(Schedule::Now),
                ..Default::default()
            }),
        );
        assert!(m.starts_with("job j1 is running:"), "{m}");
    }

    #[test]
    fn an_update_requeues_only_when_the_order_changes() {
        let params = AdminAction::Update(JobUpdate {
            params: Some(Default::default()),
            ..Default::default()
        });
        let d = decide(&job(JobState::Pending), &params, 2_000).expect("update");
        assert_eq!(d.effect, Effect::Keep);
        let priority = AdminAction::Update(JobUpdate {
            priority: Some(3),
            ..Default::default()
        });
        let d = decide(&job(JobState::Pending), &priority, 2_000).expect("update");
        assert_eq!((d.job.spec.priority, d.effect), (3, Effect::Requeue));
    }
}
