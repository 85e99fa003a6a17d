//! Cron and repeat jobs: when their cycles fire.
//!
//! A cron or repeat job is a template; each cycle becomes a job of its own
//! with the task id `<task id>@<point in Unix ms>`, so a point fires once,
//! also across restarts. [`cycle_step`] decides, store-agnostic, what a
//! due point does under the job's misfire policy; the embedded store's
//! [`CycleStore`] implementation fires them from its timers.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use lts_common::{JobSpec, JobState, LogEntry, LogKind, Schedule};

use super::index::{Index, Record};
use super::sled::SledStore;
use super::{ms_to_i64, new_job, new_job_id, CycleStore, SubmitRefusal};
use crate::error::Result;
use lts_common::durable::Writes;

/// Lines a cron or repeat job keeps in its own execution log; older ones
/// go as new cycles fire, so a template firing every second for months
/// costs the same to write as a new one.
pub const TEMPLATE_HISTORY_LINES: usize = 100;

/// How long before its point a cron or repeat cycle is made: its job then
/// waits in the queue, and at the point only the dispatch remains to do.
pub const FIRE_AHEAD_MS: i64 = 800;

/// Cycles fired under one hold of the index lock.
const FIRE_CHUNK: usize = 256;

/// Cycles fired by one [`CycleStore::fire_due`] call at most.
const FIRE_MAX_PER_CALL: usize = 10_240;

/// What a backend without cycle firing cannot run: a cron schedule is
/// refused with a message naming `backend`, instead of being stored and
/// never fired.
pub fn unsupported(spec: &JobSpec, backend: &str) -> Option<SubmitRefusal> {
    match &spec.schedule {
        Schedule::Cron { .. } => Some(SubmitRefusal::Unsupported {
            field: "schedule.cron".into(),
            message: format!("the {backend} store does not fire cron schedules yet"),
        }),
        _ => None,
    }
}

/// A cycle point fired later than this after its time counts as missed,
/// and the job's misfire policy decides what happens to it.
pub const MISFIRE_GRACE_MS: i64 = 1_000;

/// Checks a cron job's expression and zone; the error names the field.
pub fn check_recurring(spec: &JobSpec, now_ms: i64) -> Result<(), lts_common::ValidationError> {
    if let Schedule::Cron {
        expression,
        time_zone,
        ..
    } = &spec.schedule
    {
        let cron = lts_common::cron::CronSchedule::parse(expression, time_zone).map_err(|e| {
            let field = if matches!(e, lts_common::cron::CronError::UnknownTimeZone(..)) {
                "schedule.cron.time_zone"
            } else {
                "schedule.cron.expression"
            };
            lts_common::ValidationError::new(field, e.to_string())
        })?;
        if cron.next_after_ms(now_ms).is_none() {
            return Err(lts_common::ValidationError::new(
                "schedule.cron.expression",
                format!("`{expression}` has no fire time after now"),
            ));
        }
    }
    Ok(())
}

/// What to do at a due cycle point of a cron or repeat job.
#[derive(Clone, Debug, PartialEq)]
pub struct CycleStep {
    /// Fire a run for this point.
    pub fire: bool,
    /// The point after it; `None` when there is none.
    pub next: Option<i64>,
}

/// Parsed cron expressions by (expression, zone): a cron job fires every
/// cycle, and parsing its expression each time cost more than the step.
fn parsed_cron(expression: &str, time_zone: &str) -> Option<Arc<lts_common::cron::CronSchedule>> {
    type Cache = HashMap<(String, String), Arc<lts_common::cron::CronSchedule>>;
    static CACHE: std::sync::OnceLock<std::sync::Mutex<Cache>> = std::sync::OnceLock::new();
    /// Distinct expressions kept; past it the cache starts over.
    const MAX_ENTRIES: usize = 4_096;
    let cache = CACHE.get_or_init(Default::default);
    let key = (expression.to_string(), time_zone.to_string());
    if let Some(c) = cache.lock().ok()?.get(&key) {
        return Some(c.clone());
    }
    let parsed = Arc::new(lts_common::cron::CronSchedule::parse(expression, time_zone).ok()?);
    let mut map = cache.lock().ok()?;
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
    map.insert(key, parsed.clone());
    Some(parsed)
}

/// Decides, for a cycle point `point` that is due at `now_ms`, whether it
/// fires and which point comes next, by the job's misfire policy:
/// - on time (within [`MISFIRE_GRACE_MS`]): fire, next is the point after;
/// - late, `FireOnce`: fire once for all the missed points, next is the
///   first point after now;
/// - late, `Skip`: do not fire, next is the first point after now;
/// - late, `FireAll`: fire, next is the point after (which may be due too).
///
/// Repeat jobs keep their cadence; a late repeat cycle fires once and the
/// next one is a full interval after now.
pub fn cycle_step(schedule: &Schedule, point: i64, now_ms: i64) -> CycleStep {
    let late = now_ms.saturating_sub(point) > MISFIRE_GRACE_MS;
    match schedule {
        Schedule::Cron {
            expression,
            time_zone,
            misfire,
        } => {
            let Some(cron) = parsed_cron(expression, time_zone) else {
                return CycleStep {
                    fire: false,
                    next: None,
                };
            };
            match (late, misfire) {
                (false, _) | (true, lts_common::MisfirePolicy::FireAll) => CycleStep {
                    fire: true,
                    next: cron.next_after_ms(point),
                },
                (true, lts_common::MisfirePolicy::FireOnce) => CycleStep {
                    fire: true,
                    next: cron.next_after_ms(now_ms),
                },
                (true, lts_common::MisfirePolicy::Skip) => CycleStep {
                    fire: false,
                    next: cron.next_after_ms(now_ms),
                },
            }
        }
        Schedule::Repeat { interval_ms, .. } => {
            let interval = ms_to_i64(*interval_ms);
            let next = if late {
                now_ms.saturating_add(interval)
            } else {
                point.saturating_add(interval)
            };
            CycleStep {
                fire: true,
                next: Some(next),
            }
        }
        Schedule::Now | Schedule::At(_) => CycleStep {
            fire: false,
            next: None,
        },
    }
}

impl SledStore {
    /// Creates the job of one cycle of the cron or repeat job `r`, due at
    /// `point`. Its task id carries the point, so a point fires once.
    pub(super) fn fire_cycle(
        &self,
        index: &mut Index,
        batch: &mut Writes,
        r: &mut Record,
        point: i64,
        now_ms: i64,
    ) -> Result<Option<String>> {
        let mut spec = r.job.spec.clone();
        spec.task_id = format!("{}@{point}", r.job.spec.task_id);
        spec.schedule = Schedule::Now;
        spec.replace_on_exist = false;
        spec.rely_on_prev_cycle = false;
        if index
            .tasks
            .get(&spec.task_tracker_node_group, &spec.task_id)
            .is_some()
        {
            // Fired before: a replaced template's cycle of the same point.
            return Ok(None);
        }
        let child_id = new_job_id();
        index
            .tasks
            .set(&spec.task_tracker_node_group, &spec.task_id, &child_id);
        let seq = index.next_seq;
        index.next_seq += 1;
        let mut job = new_job(child_id.clone(), spec, seq, now_ms);
        // A cycle made ahead of its point waits in the delayed queue until
        // then; the dispatcher wakes at that instant.
        job.trigger_at_ms = point;
        let mut child = Record::new(job);
        child.parent = Some(r.job.job_id.clone());
        child.log(
            LogEntry::new(
                "",
                LogKind::Received,
                0,
                format!(
                    "cycle due at {} of job {}",
                    lts_common::format_ms(point),
                    r.job.job_id
                ),
            ),
            now_ms,
        );
        self.put_record(batch, &mut child)?;
        index.enqueue(&child.job, now_ms);
        index.live.insert(child_id.clone(), Box::new(child));
        r.job.cycles += 1;
        if r.history.len() >= TEMPLATE_HISTORY_LINES {
            // The oldest lines after `received` go: each cycle is a job of
            // its own, listed by the task id prefix `<task id>@`.
            let excess = r.history.len() + 1 - TEMPLATE_HISTORY_LINES;
            r.history.drain(1..=excess);
        }
        r.log(
            LogEntry::new(
                "",
                LogKind::Dispatched,
                r.job.attempt,
                format!(
                    "fired cycle {} due at {} as job {child_id}",
                    r.job.cycles,
                    lts_common::format_ms(point)
                ),
            ),
            now_ms,
        );
        Ok(Some(child_id))
    }
}

#[async_trait]
impl CycleStore for SledStore {
    async fn fire_due(&self, now_ms: i64) -> Result<Vec<String>> {
        let mut groups = Vec::new();
        // Bounded so a backlog of missed points (fire-all after a long
        // outage) cannot hold the call for long; the rest fire next call.
        // The lock is taken per chunk, so claims and outcomes go on
        // between chunks while many jobs fire at the same instant.
        let mut chunks = FIRE_MAX_PER_CALL / FIRE_CHUNK;
        let mut more = true;
        while more && chunks > 0 {
            chunks -= 1;
            more = false;
            {
                let mut index = self.lock();
                let mut batch = Writes::default();
                let mut wrote = false;
                for n in 0..=FIRE_CHUNK {
                    if n == FIRE_CHUNK {
                        more = true;
                        break;
                    }
                    let Some((&(at, seq), _)) = index.timers.first_key_value() else {
                        break;
                    };
                    if at > now_ms.saturating_add(FIRE_AHEAD_MS) {
                        break;
                    }
                    let Some(id) = index.timers.remove(&(at, seq)) else {
                        break;
                    };
                    let Some(mut r) = index.live.remove(&id) else {
                        continue;
                    };
                    if r.job.state != JobState::Pending || !r.job.spec.schedule.is_recurring() {
                        index.live.insert(id, r);
                        continue;
                    }
                    if r.job.spec.rely_on_prev_cycle {
                        if let Some(prev) = r.last_child.clone() {
                            let running = index
                                .live
                                .get(&prev)
                                .is_some_and(|c| !c.job.state.is_final());
                            if running {
                                // Parked until `prev` ends (see `complete`).
                                index.waiting.insert(prev, id.clone());
                                index.live.insert(id, r);
                                continue;
                            }
                        }
                    }
                    let point = r.job.trigger_at_ms;
                    let step = cycle_step(&r.job.spec.schedule, point, now_ms);
                    wrote = true;
                    if step.fire {
                        if let Some(child) =
                            self.fire_cycle(&mut index, &mut batch, &mut r, point, now_ms)?
                        {
                            r.last_child = Some(child);
                            groups.push(r.job.spec.task_tracker_node_group.clone());
                        }
                    } else {
                        let missed_by = now_ms.saturating_sub(point);
                        r.log(
                        LogEntry::new(
                            "",
                            LogKind::Retry,
                            r.job.attempt,
                            format!(
                                "skipped the cycle due at {}: missed by {missed_by} ms (misfire policy: skip)",
                                lts_common::format_ms(point)
                            ),
                        ),
                        now_ms,
                    );
                    }
                    let exhausted = matches!(
                        r.job.spec.schedule,
                        Schedule::Repeat { count, .. } if count > 0 && r.job.cycles >= count
                    );
                    match step.next {
                        Some(next) if !exhausted => r.job.trigger_at_ms = next,
                        _ => {
                            r.job.state = JobState::Succeeded;
                            r.log(
                                LogEntry::new(
                                    "",
                                    LogKind::Outcome,
                                    r.job.attempt,
                                    "no cycles left",
                                ),
                                now_ms,
                            );
                        }
                    }
                    r.job.updated_at_ms = now_ms;
                    self.put_record(&mut batch, &mut r)?;
                    if r.job.state == JobState::Pending {
                        index.enqueue(&r.job, now_ms);
                        index.live.insert(id, r);
                    }
                }
                if wrote {
                    self.commit(index, batch)?;
                }
            }
            if more {
                tokio::task::yield_now().await;
            }
        }
        if !groups.is_empty() {
            // Cycles are durable before they can run: a point fires once.
            self.flush().await?;
        }
        groups.sort();
        groups.dedup();
        Ok(groups)
    }

    async fn next_fire_at(&self) -> Result<Option<i64>> {
        Ok(self
            .lock()
            .timers
            .first_key_value()
            .map(|((at, _), _)| at.saturating_sub(FIRE_AHEAD_MS)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(misfire: lts_common::MisfirePolicy) -> Schedule {
        Schedule::Cron {
            expression: "* * * * * ?".into(),
            time_zone: String::new(),
            misfire,
        }
    }

    #[test]
    fn on_time_points_fire_and_step_to_the_next() {
        let step = cycle_step(&cron(lts_common::MisfirePolicy::Skip), 10_000, 10_020);
        assert_eq!(
            step,
            CycleStep {
                fire: true,
                next: Some(11_000)
            }
        );
    }

    #[test]
    fn late_points_follow_the_misfire_policy() {
        use lts_common::MisfirePolicy::*;
        // The point 10 s was missed by 5.5 s.
        let now = 15_500;
        assert_eq!(
            cycle_step(&cron(FireOnce), 10_000, now),
            CycleStep {
                fire: true,
                next: Some(16_000)
            }
        );
        assert_eq!(
            cycle_step(&cron(Skip), 10_000, now),
            CycleStep {
                fire: false,
                next: Some(16_000)
            }
        );
        assert_eq!(
            cycle_step(&cron(FireAll), 10_000, now),
            CycleStep {
                fire: true,
                next: Some(11_000)
            }
        );
        let repeat = Schedule::Repeat {
            interval_ms: 1_000,
            count: 0,
        };
        assert_eq!(
            cycle_step(&repeat, 10_000, now),
            CycleStep {
                fire: true,
                next: Some(16_500)
            }
        );
    }

    #[test]
    fn bad_cron_fields_are_named() {
        let mut spec = JobSpec::new("t", "g");
        spec.schedule = Schedule::Cron {
            expression: "0 61 * * * ?".into(),
            time_zone: String::new(),
            misfire: lts_common::MisfirePolicy::FireOnce,
        };
        let e = check_recurring(&spec, 0).unwrap_err();
        assert_eq!(e.field, "schedule.cron.expression");
        assert!(e.message.contains("minute"), "{}", e.message);
    }
}
