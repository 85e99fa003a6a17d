//! What the CLI prints: text for people, JSON for scripts.

use chrono::{DateTime, FixedOffset, SecondsFormat};
use lts_common::{format_ms, Job, LogEntry, MisfirePolicy, RetryDecision, RetryPlan, Schedule};
use serde_json::{json, Value};

use crate::client::{Feedback, SubmitOutcome};

/// Longest payload preview in `get`.
const PAYLOAD_PREVIEW_CHARS: usize = 200;

/// One line per job: `accepted JOBID task T` or
/// `refused task T: CODE field: message`.
pub fn submit_text(outcomes: &[SubmitOutcome]) -> String {
    let mut out = String::new();
    for o in outcomes {
        match o {
            SubmitOutcome::Accepted { task_id, job_id } => {
                out.push_str(&format!("accepted {job_id} task {task_id}\n"));
            }
            SubmitOutcome::Refused(r) => {
                out.push_str(&format!(
                    "refused task {}: {}\n",
                    r.task_id,
                    refusal_text(&r.code, &r.field, &r.message, r.existing_job_id.as_deref())
                ));
            }
            SubmitOutcome::Spooled { task_id } => {
                out.push_str(&format!("spooled task {task_id}\n"));
            }
        }
    }
    out
}

/// Why a tracker refused a job, in one line: `CODE field: message`, with
/// the field and the existing job's id said once. The tracker's message
/// is complete on its own (`jobs[3].task_id: ...`), so the part that
/// repeats the field is left out here.
pub fn refusal_text(
    code: &str,
    field: &str,
    message: &str,
    existing_job_id: Option<&str>,
) -> String {
    let mut message = message.trim();
    if let Some(rest) = message.strip_prefix("jobs[") {
        if let Some((index, rest)) = rest.split_once("].") {
            if index.bytes().all(|b| b.is_ascii_digit()) {
                message = rest;
            }
        }
    }
    if !field.is_empty() {
        if let Some(rest) = message
            .strip_prefix(field)
            .and_then(|m| m.strip_prefix(':'))
        {
            message = rest.trim_start();
        }
    }
    let mut out = code.to_string();
    if !field.is_empty() {
        out.push_str(&format!(" {field}"));
    }
    out.push_str(&format!(": {message}"));
    if let Some(id) = existing_job_id {
        if !message.contains(id) {
            out.push_str(&format!(" (existing job {id})"));
        }
    }
    out
}

/// A JSON array with one object per job, tagged by `status`.
pub fn submit_json(outcomes: &[SubmitOutcome]) -> Value {
    serde_json::to_value(outcomes).unwrap_or(Value::Null)
}

/// How a schedule reads.
pub fn schedule_text(s: &Schedule) -> String {
    match s {
        Schedule::Now => "now".into(),
        Schedule::At(ms) => format!("at {}", format_ms(*ms)),
        Schedule::Cron {
            expression,
            time_zone,
            misfire,
        } => {
            let zone = if time_zone.is_empty() {
                "UTC"
            } else {
                time_zone
            };
            format!(
                "cron \"{expression}\" in {zone}, misfire {}",
                misfire_name(*misfire)
            )
        }
        Schedule::Repeat { interval_ms, count } => {
            let every = humantime::format_duration(std::time::Duration::from_millis(*interval_ms));
            if *count == 0 {
                format!("every {every}, forever")
            } else {
                format!("every {every}, {count} runs")
            }
        }
    }
}

/// A misfire policy as the `--misfire` flag names it.
pub fn misfire_name(m: MisfirePolicy) -> &'static str {
    match m {
        MisfirePolicy::FireOnce => "fire-once",
        MisfirePolicy::Skip => "skip",
        MisfirePolicy::FireAll => "fire-all",
    }
}

/// A fire time as RFC 3339 with the zone's offset, even for UTC
/// (`+00:00`), so every line has the same shape.
pub fn fire_time(t: &DateTime<FixedOffset>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// One fire time per line.
pub fn cron_next_text(times: &[DateTime<FixedOffset>]) -> String {
    times
        .iter()
        .map(|t| format!("{}\n", fire_time(t)))
        .collect()
}

/// The fire times with the expression, zone and dialect they came from.
pub fn cron_next_json(
    expression: &str,
    time_zone: &str,
    dialect: &str,
    times: &[DateTime<FixedOffset>],
) -> Value {
    json!({
        "expression": expression,
        "time_zone": time_zone,
        "dialect": dialect,
        "next": times.iter().map(|t| json!({
            "at": fire_time(t),
            "unix_ms": t.timestamp_millis(),
        })).collect::<Vec<_>>(),
    })
}

/// What one retry decision does, for people.
pub fn decision_text(d: &RetryDecision) -> String {
    match d {
        RetryDecision::RetryAfter(0) => "retry at once".into(),
        RetryDecision::RetryAfter(ms) => format!(
            "retry after {}",
            humantime::format_duration(std::time::Duration::from_millis(*ms))
        ),
        RetryDecision::Suspend => "suspend until an operator resumes the job".into(),
        RetryDecision::GiveUp => "give up: the job fails".into(),
    }
}

/// A plan in its canonical form, then what follows each error.
pub fn plan_check_text(plan: &RetryPlan, decisions: &[RetryDecision]) -> String {
    let mut out = format!("plan {plan}\n");
    for (i, d) in decisions.iter().enumerate() {
        out.push_str(&format!("error {}: {}\n", i + 1, decision_text(d)));
    }
    if decisions.last() != Some(&RetryDecision::GiveUp) {
        out.push_str("...\n");
    }
    out
}

/// [`plan_check_text`] for scripts.
pub fn plan_check_json(plan: &RetryPlan, decisions: &[RetryDecision]) -> Value {
    json!({
        "plan": plan.to_string(),
        "forever": plan.forever,
        "count": plan.count,
        "steps": plan.steps.len(),
        "decisions": decisions.iter().enumerate().map(|(i, d)| {
            let mut v = json!({"error": i + 1});
            match d {
                RetryDecision::RetryAfter(ms) => {
                    v["decision"] = "retry".into();
                    v["delay_ms"] = (*ms).into();
                }
                RetryDecision::Suspend => v["decision"] = "suspend".into(),
                RetryDecision::GiveUp => v["decision"] = "give_up".into(),
            }
            v
        }).collect::<Vec<_>>(),
    })
}

/// A job as labelled lines.
pub fn job_text(job: &Job) -> String {
    let spec = &job.spec;
    let mut rows: Vec<(&str, String)> = vec![
        ("job", job.job_id.clone()),
        (
            "task",
            format!(
                "{} in node group {}",
                spec.task_id, spec.task_tracker_node_group
            ),
        ),
        ("state", state_text(job)),
        (
            "attempt",
            format!("{} ({} errors counted)", job.attempt, job.failures),
        ),
        ("priority", spec.priority.to_string()),
        ("schedule", schedule_text(&spec.schedule)),
        ("submitted", format_ms(job.submitted_at_ms)),
        ("trigger at", format_ms(job.trigger_at_ms)),
        ("updated", format_ms(job.updated_at_ms)),
    ];
    if !job.worker.is_empty() {
        rows.push(("worker", job.worker.clone()));
    }
    if spec.schedule.is_recurring() {
        // A template never runs itself: its results are its cycles'.
        rows.push((
            "cycles",
            format!(
                "{} created; their runs: jobclient list -g {} --task-id-prefix '{}'",
                job.cycles,
                spec.task_tracker_node_group,
                cycle_task_id_prefix(job)
            ),
        ));
    } else {
        rows.push((
            "last outcome",
            job.last_outcome
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "-".into()),
        ));
    }
    rows.push(("retry plan", spec.effective_retry_plan().to_string()));
    if spec.timeout_ms > 0 {
        rows.push((
            "timeout",
            humantime::format_duration(std::time::Duration::from_millis(spec.timeout_ms))
                .to_string(),
        ));
    }
    if spec.need_feedback {
        rows.push(("feedback to", spec.submit_node_group.clone()));
    }
    if !spec.params.is_empty() {
        let params: Vec<String> = spec
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        rows.push(("params", params.join(" ")));
    }
    if !spec.payload.is_empty() {
        rows.push(("payload", payload_preview(&spec.payload)));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

fn payload_preview(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(text) => {
            let mut preview: String = text.chars().take(PAYLOAD_PREVIEW_CHARS).collect();
            if preview.len() < text.len() {
                preview.push_str("...");
            }
            format!("{} bytes: {}", payload.len(), preview.escape_debug())
        }
        Err(_) => format!("{} bytes (binary)", payload.len()),
    }
}

/// A job's state as people read it. A cron or repeat job is a template
/// that creates cycles: `succeeded` there means it is done creating them,
/// not that a run succeeded (its cycles run, each a job of its own).
pub fn state_text(job: &Job) -> String {
    if !job.spec.schedule.is_recurring() {
        return job.state.name().to_string();
    }
    match job.state {
        lts_common::JobState::Succeeded => "done creating cycles".to_string(),
        lts_common::JobState::Pending => "creating cycles".to_string(),
        other => format!("{} (creates cycles)", other.name()),
    }
}

/// The task id prefix of a cron or repeat job's cycles (`<task id>@`).
fn cycle_task_id_prefix(job: &Job) -> String {
    format!("{}@", job.spec.task_id)
}

/// A job as a JSON object: times both as Unix milliseconds and RFC 3339.
pub fn job_json(job: &Job) -> Value {
    let spec = &job.spec;
    json!({
        "job_id": job.job_id,
        "task_id": spec.task_id,
        "node_group": spec.task_tracker_node_group,
        "state": job.state.name(),
        "state_text": state_text(job),
        "done_creating_cycles": job.spec.schedule.is_recurring()
            && job.state == lts_common::JobState::Succeeded,
        "cycles_created": job.cycles,
        "cycle_task_id_prefix": job.spec.schedule.is_recurring().then(|| cycle_task_id_prefix(job)),
        "final": job.state.is_final(),
        "attempt": job.attempt,
        "failures": job.failures,
        "priority": spec.priority,
        "schedule": schedule_text(&spec.schedule),
        "submitted_at_unix_ms": job.submitted_at_ms,
        "submitted_at": format_ms(job.submitted_at_ms),
        "trigger_at_unix_ms": job.trigger_at_ms,
        "trigger_at": format_ms(job.trigger_at_ms),
        "updated_at_unix_ms": job.updated_at_ms,
        "updated_at": format_ms(job.updated_at_ms),
        "worker": job.worker,
        "last_outcome": job.last_outcome.as_ref().map(|o| json!({
            "kind": o.kind(),
            "message": o.message(),
        })),
        "need_feedback": spec.need_feedback,
        "submit_node_group": spec.submit_node_group,
        "params": spec.params,
        "payload": String::from_utf8_lossy(&spec.payload),
        "payload_bytes": spec.payload.len(),
        "timeout_ms": spec.timeout_ms,
        "retry_plan": spec.effective_retry_plan().to_string(),
    })
}

/// The execution log as a table.
pub fn log_text(entries: &[LogEntry]) -> String {
    let rows = entries
        .iter()
        .map(|e| {
            vec![
                format_ms(e.at_ms),
                e.kind.name().to_string(),
                e.attempt.to_string(),
                e.level.name().to_string(),
                dash(&e.worker),
                e.message.clone(),
            ]
        })
        .collect();
    table(
        &["TIME", "KIND", "ATTEMPT", "LEVEL", "WORKER", "MESSAGE"],
        rows,
    )
}

/// The execution log as a JSON array.
pub fn log_json(entries: &[LogEntry]) -> Value {
    entries
        .iter()
        .map(|e| {
            json!({
                "at_unix_ms": e.at_ms,
                "at": format_ms(e.at_ms),
                "kind": e.kind.name(),
                "attempt": e.attempt,
                "level": e.level.name(),
                "worker": e.worker,
                "message": e.message,
            })
        })
        .collect()
}

/// Jobs as a table, one row each.
pub fn jobs_text(jobs: &[Job]) -> String {
    let rows = jobs
        .iter()
        .map(|j| {
            vec![
                j.job_id.clone(),
                j.spec.task_id.clone(),
                j.spec.task_tracker_node_group.clone(),
                state_text(j),
                // A template does not run: its cycles do.
                if j.spec.schedule.is_recurring() {
                    "-".to_string()
                } else {
                    j.attempt.to_string()
                },
                j.spec.priority.to_string(),
                format_ms(j.trigger_at_ms),
                j.last_outcome
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "JOB",
            "TASK",
            "NODE_GROUP",
            "STATE",
            "ATTEMPT",
            "PRIORITY",
            "TRIGGER_AT",
            "LAST_OUTCOME",
        ],
        rows,
    )
}

/// One line for a feedback item.
pub fn feedback_text(f: &Feedback) -> String {
    format!(
        "feedback {} job {} task {} attempt {} state {} outcome {} finished {}",
        f.feedback_id,
        f.job_id,
        f.task_id,
        f.attempt,
        f.state.map(|s| s.name()).unwrap_or("unknown"),
        f.outcome
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "-".into()),
        format_ms(f.finished_at_ms),
    )
}

/// A feedback item as a JSON object (printed one per line).
pub fn feedback_json(f: &Feedback) -> Value {
    json!({
        "feedback_id": f.feedback_id,
        "job_id": f.job_id,
        "task_id": f.task_id,
        "node_group": f.task_tracker_node_group,
        "attempt": f.attempt,
        "state": f.state.map(|s| s.name()),
        "outcome": f.outcome.as_ref().map(|o| json!({
            "kind": o.kind(),
            "message": o.message(),
        })),
        "finished_at_unix_ms": f.finished_at_ms,
        "finished_at": format_ms(f.finished_at_ms),
    })
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// The cluster's nodes as JSON: the master's identity and one object per
/// node, `master` true on the master.
pub fn nodes_json(view: &lts_cluster::ClusterView) -> Value {
    let nodes: Vec<Value> = view
        .nodes
        .iter()
        .map(|n| {
            json!({
                "role": n.role.to_string(),
                "node_group": n.node_group,
                "identity": n.identity,
                "address": n.address,
                "slots": n.slots,
                "version": n.version,
                "started_at_ms": n.started_at_ms,
                "master": n.role == lts_cluster::Role::JobTracker
                    && view.master.as_deref() == Some(n.identity.as_str()),
            })
        })
        .collect();
    json!({ "master": view.master, "nodes": nodes })
}

/// The cluster's nodes as a table, by role and node group, the master
/// marked; a line says when there is no master.
pub fn nodes_text(view: &lts_cluster::ClusterView) -> String {
    let rows = view
        .nodes
        .iter()
        .map(|n| {
            let master = n.role == lts_cluster::Role::JobTracker
                && view.master.as_deref() == Some(n.identity.as_str());
            let started = format_ms(n.started_at_ms);
            vec![
                n.role.to_string(),
                if n.node_group.is_empty() {
                    "-".into()
                } else {
                    n.node_group.clone()
                },
                if master {
                    format!("{} (master)", n.identity)
                } else {
                    n.identity.clone()
                },
                if n.address.is_empty() {
                    "-".into()
                } else {
                    n.address.clone()
                },
                if n.role == lts_cluster::Role::TaskTracker {
                    n.slots.to_string()
                } else {
                    "-".into()
                },
                n.version.clone(),
                started,
            ]
        })
        .collect();
    let mut out = table(
        &[
            "ROLE",
            "NODE GROUP",
            "IDENTITY",
            "ADDRESS",
            "SLOTS",
            "VERSION",
            "STARTED",
        ],
        rows,
    );
    if view.master.is_none() {
        out.push_str("no master is elected\n");
    }
    out
}

/// Left-aligned columns two spaces apart; the last column is not padded so
/// long messages do not drag trailing spaces.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i == last {
                s.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                s.push_str(cell);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(headers.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::SubmitRefusal;
    use lts_common::{JobSpec, JobState, LogKind, LogLevel, Outcome};

    fn job() -> Job {
        let mut spec = JobSpec::new("t-1", "workers");
        spec.payload = br#"{"program":"true"}"#.to_vec();
        spec.params.insert("k".into(), "v".into());
        Job {
            job_id: "j-1".into(),
            spec,
            state: JobState::Succeeded,
            attempt: 2,
            seq: 0,
            submitted_at_ms: 1_000,
            trigger_at_ms: 2_000,
            updated_at_ms: 3_000,
            worker: "tt-a".into(),
            last_outcome: Some(Outcome::Success("done".into())),
            failures: 1,
            cycles: 0,
        }
    }

    #[test]
    fn a_finished_repeat_template_says_it_is_done_creating_cycles_and_where_they_are() {
        let mut t = job();
        t.spec.schedule = lts_common::Schedule::Repeat {
            interval_ms: 1_000,
            count: 3,
        };
        t.cycles = 3;
        t.attempt = 0;
        t.last_outcome = None;
        let text = job_text(&t);
        let row = |text: &str, key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
                .unwrap_or_default()
        };
        assert_eq!(row(&text, "state "), "done creating cycles", "{text}");
        assert!(
            text.contains(
                "3 created; their runs: jobclient list -g workers --task-id-prefix 't-1@'"
            ),
            "{text}"
        );
        assert!(!text.contains("last outcome"), "{text}");
        assert!(!text.contains("succeeded"), "{text}");
        let v = job_json(&t);
        assert_eq!(v["state_text"], "done creating cycles");
        assert_eq!(v["done_creating_cycles"], true);
        assert_eq!(v["state"], "succeeded", "kept for scripts");
        assert_eq!(v["cycle_task_id_prefix"], "t-1@");
        assert_eq!(job_json(&job())["done_creating_cycles"], false);
        // `list` shows the template as `get` does.
        let list = jobs_text(&[t.clone(), job()]);
        let lines: Vec<&str> = list.lines().collect();
        assert!(lines[1].contains(" done creating cycles "), "{list}");
        assert!(!lines[1].contains("succeeded"), "{list}");
        let attempt = lines[0].find("ATTEMPT").expect("an ATTEMPT column");
        assert!(
            lines[1][attempt..].starts_with("- "),
            "no attempt for a template: {list}"
        );
        assert!(lines[2][attempt..].starts_with("2 "), "{list}");
        assert!(lines[2].contains(" succeeded "), "{list}");
        // A one-off job reads as before.
        assert_eq!(row(&job_text(&job()), "state "), "succeeded");
    }

    #[test]
    fn submit_lines_say_accepted_or_refused() {
        let outcomes = vec![
            SubmitOutcome::Accepted {
                task_id: "a".into(),
                job_id: "j1".into(),
            },
            SubmitOutcome::Refused(SubmitRefusal {
                task_id: "b".into(),
                code: "INVALID_ARGUMENT".into(),
                field: "task_tracker_node_group".into(),
                message: "is empty".into(),
                existing_job_id: None,
            }),
            SubmitOutcome::Refused(SubmitRefusal {
                task_id: "c".into(),
                code: "ALREADY_EXISTS".into(),
                field: String::new(),
                message: "task id exists".into(),
                existing_job_id: Some("j0".into()),
            }),
        ];
        assert_eq!(
            submit_text(&outcomes),
            "accepted j1 task a\n\
             refused task b: INVALID_ARGUMENT task_tracker_node_group: is empty\n\
             refused task c: ALREADY_EXISTS: task id exists (existing job j0)\n"
        );
        let v = submit_json(&outcomes);
        assert_eq!(
            v[0],
            json!({"status": "accepted", "task_id": "a", "job_id": "j1"})
        );
        assert_eq!(v[1]["status"], "refused");
        assert_eq!(v[1]["field"], "task_tracker_node_group");
        assert!(v[1].get("existing_job_id").is_none());
        assert_eq!(v[2]["existing_job_id"], "j0");
    }

    #[test]
    fn job_text_shows_state_times_and_outcome() {
        let text = job_text(&job());
        assert!(text.contains("state         succeeded\n"), "{text}");
        assert!(
            text.contains("attempt       2 (1 errors counted)"),
            "{text}"
        );
        assert!(
            text.contains("submitted     1970-01-01T00:00:01.000Z"),
            "{text}"
        );
        assert!(text.contains("last outcome  success: done"), "{text}");
        assert!(text.contains("worker        tt-a"), "{text}");
        assert!(
            text.contains(r#"payload       18 bytes: {\"program\":\"true\"}"#),
            "{text}"
        );
        let v = job_json(&job());
        assert_eq!(v["state"], "succeeded");
        assert_eq!(v["final"], true);
        assert_eq!(v["last_outcome"]["kind"], "success");
        assert_eq!(v["params"]["k"], "v");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "LONG"], vec![vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONG\nxyz  1\n");
        let text = jobs_text(&[job()]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("JOB  TASK  NODE_GROUP  STATE"),
            "{text}"
        );
        assert!(
            lines[1].contains("succeeded") && lines[1].ends_with("success: done"),
            "{text}"
        );
        let entry = LogEntry {
            job_id: "j-1".into(),
            at_ms: 1_000,
            kind: LogKind::Dispatched,
            attempt: 1,
            level: LogLevel::Info,
            message: "to tt-a".into(),
            worker: String::new(),
        };
        let text = log_text(std::slice::from_ref(&entry));
        assert!(
            text.lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("1970-01-01T00:00:01.000Z  dispatched  1")),
            "{text}"
        );
        assert_eq!(log_json(&[entry])[0]["kind"], "dispatched");
    }

    #[test]
    fn fire_times_print_with_their_offset() {
        let times: Vec<DateTime<FixedOffset>> = [
            "2026-03-28T02:30:00+01:00",
            "2026-03-29T03:00:00+02:00",
            "2026-01-01T00:00:00Z",
        ]
        .iter()
        .map(|t| DateTime::parse_from_rfc3339(t).expect("valid"))
        .collect();
        assert_eq!(
            cron_next_text(&times),
            "2026-03-28T02:30:00+01:00\n2026-03-29T03:00:00+02:00\n2026-01-01T00:00:00+00:00\n"
        );
        let v = cron_next_json("0 30 2 * * ?", "Europe/Berlin", "quartz", &times);
        assert_eq!(v["next"][1]["at"], "2026-03-29T03:00:00+02:00");
        assert_eq!(v["next"][1]["unix_ms"], 1_774_746_000_000i64);
        assert_eq!(v["dialect"], "quartz");
    }

    #[test]
    fn plan_checks_list_each_error() {
        let plan: RetryPlan = "[retry, retry_after 90s, suspend] x1"
            .parse()
            .expect("valid");
        let decisions = [
            RetryDecision::RetryAfter(0),
            RetryDecision::RetryAfter(90_000),
            RetryDecision::Suspend,
            RetryDecision::GiveUp,
        ];
        assert_eq!(
            plan_check_text(&plan, &decisions),
            "plan [retry, retry_after 90000ms, suspend] x1\n\
             error 1: retry at once\n\
             error 2: retry after 1m 30s\n\
             error 3: suspend until an operator resumes the job\n\
             error 4: give up: the job fails\n"
        );
        assert!(plan_check_text(&plan, &decisions[..2]).ends_with("...\n"));
        let v = plan_check_json(&plan, &decisions);
        assert_eq!(
            v["decisions"][1],
            json!({"error": 2, "decision": "retry", "delay_ms": 90_000})
        );
        assert_eq!(v["decisions"][3]["decision"], "give_up");
    }

    #[test]
    fn schedules_read_well() {
        assert_eq!(schedule_text(&Schedule::Now), "now");
        assert_eq!(
            schedule_text(&Schedule::Cron {
                expression: "0 0 3 * * ?".into(),
                time_zone: String::new(),
                misfire: MisfirePolicy::FireAll,
            }),
            "cron \"0 0 3 * * ?\" in UTC, misfire fire-all"
        );
        assert_eq!(
            schedule_text(&Schedule::Repeat {
                interval_ms: 90_000,
                count: 0
            }),
            "every 1m 30s, forever"
        );
    }

    #[test]
    fn feedback_lines_name_job_and_outcome() {
        let f = Feedback {
            feedback_id: "f1".into(),
            job_id: "j1".into(),
            task_id: "t1".into(),
            task_tracker_node_group: "w".into(),
            attempt: 1,
            state: Some(JobState::Failed),
            outcome: Some(Outcome::Failed("exit 3".into())),
            finished_at_ms: 1_000,
        };
        assert_eq!(
            feedback_text(&f),
            "feedback f1 job j1 task t1 attempt 1 state failed outcome failed: exit 3 finished 1970-01-01T00:00:01.000Z"
        );
        assert_eq!(feedback_json(&f)["outcome"]["message"], "exit 3");
    }
}
