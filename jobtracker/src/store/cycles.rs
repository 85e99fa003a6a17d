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
use super::{ms_to_i64, new_job, new_job_id, CycleStore};
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

/// A cycle point at most this late fires as it would have on time,
/// whatever the job's misfire policy; a point later than this is a misfire
/// and the policy decides what becomes of it (see `docs/scheduling.md`).
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
    /// The point whose run fires now: its task id is `<task id>@<point>`.
    /// `None`: no run fires.
    pub fire: Option<i64>,
    /// The misfired points this step stands for (skipped, or folded into
    /// the one catch-up run of `fire`); `None` when the point was on time.
    pub missed: Option<Missed>,
    /// The point after it; `None` when there is none.
    pub next: Option<i64>,
}

/// A run of consecutive misfired points of a cron job.
#[derive(Clone, Debug, PartialEq)]
pub struct Missed {
    /// The first of them.
    pub first: i64,
    /// The last of them.
    pub last: i64,
    /// How many there were; `None` past [`MAX_COUNTED_MISSES`], where
    /// counting would hold the store's lock for long.
    pub count: Option<u64>,
}

/// Missed points counted one by one at most; past it a gap is told by its
/// first and last point only.
pub const MAX_COUNTED_MISSES: u64 = 10_000;

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
/// fires and which point comes next. One rule, for every policy: a point at
/// most [`MISFIRE_GRACE_MS`] late fires; the points more than that late (a
/// misfire) go by the job's misfire policy:
/// - `FireOnce`: one catch-up run for all of them, under the task id of the
///   latest (the point the run stands for);
/// - `Skip`: no run;
/// - `FireAll`: a run for each, oldest first.
///
/// Under `FireOnce` and `Skip`, `next` is the first point at most the grace
/// late: after a gap, the last point before now may be only a few
/// milliseconds late, and it fires on time at the next step.
///
/// Repeat jobs keep their cadence; a late repeat cycle fires once and the
/// next one is a full interval after now.
pub fn cycle_step(schedule: &Schedule, point: i64, now_ms: i64) -> CycleStep {
    let late = now_ms.saturating_sub(point) > MISFIRE_GRACE_MS;
    let none = CycleStep {
        fire: None,
        missed: None,
        next: None,
    };
    match schedule {
        Schedule::Cron {
            expression,
            time_zone,
            misfire,
        } => {
            let Some(cron) = parsed_cron(expression, time_zone) else {
                return none;
            };
            if !late || *misfire == lts_common::MisfirePolicy::FireAll {
                return CycleStep {
                    fire: Some(point),
                    missed: None,
                    next: cron.next_after_ms(point),
                };
            }
            // Points before `on_time_from` are misfires; from it on they
            // are at most the grace late, or still to come.
            let on_time_from = now_ms.saturating_sub(MISFIRE_GRACE_MS);
            let last = last_point_before(&cron, point, on_time_from);
            let missed = Missed {
                first: point,
                last,
                count: count_points(&cron, point, last),
            };
            let next = cron.next_after_ms(last);
            let fire = match misfire {
                lts_common::MisfirePolicy::Skip => None,
                _ => Some(last),
            };
            CycleStep {
                fire,
                missed: Some(missed),
                next,
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
                fire: Some(point),
                missed: None,
                next: Some(next),
            }
        }
        Schedule::Now | Schedule::At(_) => none,
    }
}

/// The last point of `cron` before `before`, given `first`, a point before
/// it. Searched backwards from `before` in windows that double, so a long
/// gap costs a few dozen steps, not one per missed point.
fn last_point_before(cron: &lts_common::cron::CronSchedule, first: i64, before: i64) -> i64 {
    let mut window: i64 = 1_000;
    loop {
        let from = before.saturating_sub(window).max(first);
        // The first point at or after `from`: `first` itself when the
        // window reaches it, so the search ends.
        let found = if from == first {
            Some(first)
        } else {
            cron.next_after_ms(from.saturating_sub(1))
        };
        if let Some(mut last) = found.filter(|p| *p < before) {
            while let Some(p) = cron.next_after_ms(last).filter(|p| *p < before) {
                last = p;
            }
            return last;
        }
        window = window.saturating_mul(2);
    }
}

/// Points of `cron` from `first` to `last`, both included; `None` past
/// [`MAX_COUNTED_MISSES`].
fn count_points(cron: &lts_common::cron::CronSchedule, first: i64, last: i64) -> Option<u64> {
    let mut count = 1;
    let mut p = first;
    while p < last {
        if count >= MAX_COUNTED_MISSES {
            return None;
        }
        p = cron.next_after_ms(p)?;
        count += 1;
    }
    Some(count)
}

/// The template's log line for a run of misfired points: which points, and
/// what the policy made of them.
pub(super) fn misfire_log(schedule: &Schedule, missed: &Missed, now_ms: i64) -> String {
    let points = match missed.count {
        Some(1) => format!("the point {}", lts_common::format_ms(missed.first)),
        Some(n) => format!(
            "{n} points {}\u{2013}{}",
            lts_common::format_ms(missed.first),
            lts_common::format_ms(missed.last)
        ),
        None => format!(
            "more than {MAX_COUNTED_MISSES} points {}\u{2013}{}",
            lts_common::format_ms(missed.first),
            lts_common::format_ms(missed.last)
        ),
    };
    let by = if missed.first == missed.last {
        format!("missed by {} ms", now_ms.saturating_sub(missed.first))
    } else {
        format!("missed by more than {MISFIRE_GRACE_MS} ms")
    };
    match schedule {
        Schedule::Cron {
            misfire: lts_common::MisfirePolicy::Skip,
            ..
        } => format!("skipped {points} ({by}; misfire policy: skip)"),
        _ => format!(
            "one catch-up run for {points} ({by}; misfire policy: fire_once), as the cycle due at {}",
            lts_common::format_ms(missed.last)
        ),
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
                LogKind::Fired,
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
    async fn fire_due(&self, now_ms: i64, _term: crate::election::Term) -> Result<Vec<String>> {
        // One tracker owns the directory: there is no other master to fence.
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
                    if let Some(missed) = &step.missed {
                        let e = misfire_log(&r.job.spec.schedule, missed, now_ms);
                        r.log(
                            LogEntry::new("", LogKind::Misfire, r.job.attempt, e),
                            now_ms,
                        );
                    }
                    if let Some(fire_point) = step.fire {
                        if let Some(child) =
                            self.fire_cycle(&mut index, &mut batch, &mut r, fire_point, now_ms)?
                        {
                            r.last_child = Some(child);
                            groups.push(r.job.spec.task_tracker_node_group.clone());
                        }
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

    use lts_common::MisfirePolicy::{FireAll, FireOnce, Skip};

    fn step(fire: Option<i64>, missed: Option<(i64, i64, u64)>, next: i64) -> CycleStep {
        CycleStep {
            fire,
            missed: missed.map(|(first, last, count)| Missed {
                first,
                last,
                count: Some(count),
            }),
            next: Some(next),
        }
    }

    #[test]
    fn on_time_points_fire_and_step_to_the_next() {
        assert_eq!(
            cycle_step(&cron(Skip), 10_000, 10_020),
            step(Some(10_000), None, 11_000)
        );
    }

    #[test]
    fn a_point_at_most_the_grace_late_fires_whatever_the_policy() {
        for policy in [FireOnce, Skip, FireAll] {
            for late in [MISFIRE_GRACE_MS - 1, MISFIRE_GRACE_MS] {
                assert_eq!(
                    cycle_step(&cron(policy), 10_000, 10_000 + late),
                    step(Some(10_000), None, 11_000),
                    "{policy:?}, {late} ms late"
                );
            }
        }
    }

    #[test]
    fn a_point_just_past_the_grace_is_a_misfire_and_the_next_fires_on_time() {
        // Now is 11.001 s: the point 10 s is 1001 ms late (a misfire), the
        // point 11 s 1 ms late (on time: it fires at the next step).
        let now = 10_000 + MISFIRE_GRACE_MS + 1;
        assert_eq!(
            cycle_step(&cron(FireOnce), 10_000, now),
            step(Some(10_000), Some((10_000, 10_000, 1)), 11_000)
        );
        assert_eq!(
            cycle_step(&cron(Skip), 10_000, now),
            step(None, Some((10_000, 10_000, 1)), 11_000)
        );
        assert_eq!(
            cycle_step(&cron(FireAll), 10_000, now),
            step(Some(10_000), None, 11_000)
        );
        for policy in [FireOnce, Skip, FireAll] {
            assert_eq!(
                cycle_step(&cron(policy), 11_000, now).fire,
                Some(11_000),
                "{policy:?}"
            );
        }
    }

    #[test]
    fn after_a_gap_the_missed_points_go_by_the_policy_and_the_recent_one_fires() {
        // Down from 49.2 s to 53.16 s: 50, 51 and 52 s are misfires; 53 s
        // is 160 ms late and fires on time, under every policy.
        let now = 53_160;
        assert_eq!(
            cycle_step(&cron(FireOnce), 50_000, now),
            step(Some(52_000), Some((50_000, 52_000, 3)), 53_000)
        );
        assert_eq!(
            cycle_step(&cron(Skip), 50_000, now),
            step(None, Some((50_000, 52_000, 3)), 53_000)
        );
        assert_eq!(
            cycle_step(&cron(FireAll), 50_000, now),
            step(Some(50_000), None, 51_000)
        );
        for policy in [FireOnce, Skip, FireAll] {
            assert_eq!(
                cycle_step(&cron(policy), 53_000, now),
                step(Some(53_000), None, 54_000),
                "{policy:?}"
            );
        }
        // The point before now exactly the grace late still fires.
        assert_eq!(
            cycle_step(&cron(Skip), 50_000, 53_000 + MISFIRE_GRACE_MS),
            step(None, Some((50_000, 52_000, 3)), 53_000)
        );
        // One millisecond more and it is a misfire too.
        assert_eq!(
            cycle_step(&cron(Skip), 50_000, 53_001 + MISFIRE_GRACE_MS),
            step(None, Some((50_000, 53_000, 4)), 54_000)
        );
    }

    #[test]
    fn a_long_gap_is_told_by_its_ends() {
        // Ten days of a cron firing every second: too many to count.
        let now = 10 * 86_400_000 + 500;
        let s = cycle_step(&cron(FireOnce), 1_000, now);
        let last = 10 * 86_400_000 - 1_000;
        assert_eq!(s.fire, Some(last));
        assert_eq!(
            s.missed,
            Some(Missed {
                first: 1_000,
                last,
                count: None
            })
        );
        assert_eq!(s.next, Some(last + 1_000));
    }

    #[test]
    fn late_repeat_cycles_fire_and_keep_their_cadence() {
        let repeat = Schedule::Repeat {
            interval_ms: 1_000,
            count: 0,
        };
        assert_eq!(
            cycle_step(&repeat, 10_000, 15_500),
            step(Some(10_000), None, 16_500)
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
