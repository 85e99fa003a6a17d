//! How the flags of `submit` and `update` become jobs and updates:
//! schedules, retry plans, the shell runner's payload and `--from-file`
//! lines. Errors name the flag or file line at fault.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use lts_common::shell_job::ShellJob;
use lts_common::{JobSpec, RetryPlan, Schedule};
use serde::Deserialize;

use super::args::{Cli, ScheduleArgs, SubmitArgs, UpdateArgs};
use super::parse::{check_cron, parse_duration, parse_plan, parse_time};
use crate::admin::JobUpdate;

impl ScheduleArgs {
    /// The schedule these flags name, `None` when they name none. A cron
    /// expression and zone are checked with the cron engine, so a typo is
    /// reported here, naming the field, rather than by the tracker.
    pub fn schedule(&self, now_ms: i64) -> Result<Option<Schedule>, String> {
        Ok(Some(if let Some(at) = self.at {
            Schedule::At(at)
        } else if let Some(delay) = self.delay {
            Schedule::At(now_ms.saturating_add(duration_ms(delay, "--in")? as i64))
        } else if let Some(expression) = &self.cron {
            let time_zone = self.time_zone.clone().unwrap_or_default();
            check_cron(expression, &time_zone)?;
            Schedule::Cron {
                expression: expression.trim().to_string(),
                time_zone,
                misfire: self.misfire.unwrap_or_default(),
            }
        } else if let Some(every) = self.repeat_every {
            let interval_ms = duration_ms(every, "--repeat-every")?;
            if interval_ms == 0 {
                return Err("--repeat-every: must be at least 1ms".into());
            }
            Schedule::Repeat {
                interval_ms,
                count: self.repeat_count.unwrap_or(0),
            }
        } else {
            return Ok(None);
        }))
    }
}

impl UpdateArgs {
    /// The change these flags ask for; an error when they ask for none.
    pub fn update(&self, now_ms: i64) -> Result<JobUpdate, String> {
        let update = JobUpdate {
            params: if self.clear_params {
                Some(BTreeMap::new())
            } else if self.params.is_empty() {
                None
            } else {
                Some(self.params.iter().cloned().collect())
            },
            priority: self.priority,
            schedule: self.when.schedule(now_ms)?,
            retry_plan: self
                .plan
                .clone()
                .or_else(|| self.max_retries.map(retry_plan_for)),
        };
        if update.is_empty() {
            return Err(
                "nothing to change: say --priority, --param, --clear-params, a schedule \
                        (--cron, --repeat-every, --at, --in) or --plan"
                    .into(),
            );
        }
        Ok(update)
    }
}

/// The JSON payload read by the TaskTracker's built-in shell runner,
/// checked as the runner checks it.
pub fn shell_payload(
    command: &[String],
    env: &[(String, String)],
    cwd: Option<&Path>,
) -> Result<Vec<u8>, String> {
    let Some((program, args)) = command.split_first() else {
        return Err("--shell needs a program".into());
    };
    let job = ShellJob {
        program: program.clone(),
        args: args.to_vec(),
        env: env.iter().cloned().collect(),
        cwd: cwd.map(Path::to_path_buf),
    };
    job.validate().map_err(|e| format!("--shell: {e}"))?;
    job.to_payload().map_err(|e| format!("--shell: {e}"))
}

/// `--shell` takes the rest of the command line, so a jobclient flag after
/// it would silently become an argument of the program; refuse that.
fn check_shell_command(command: &[String]) -> Result<(), String> {
    use clap::CommandFactory;
    let cli = Cli::command();
    let mut own: Vec<String> = cli
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    if let Some(submit) = cli.find_subcommand("submit") {
        own.extend(
            submit
                .get_arguments()
                .filter_map(|a| a.get_long().map(|l| format!("--{l}"))),
        );
    }
    for arg in command.iter().skip(1) {
        let name = arg.split('=').next().unwrap_or_default();
        if own.iter().any(|o| o == name) {
            return Err(format!(
                "--shell: `{name}` comes after --shell, which takes the rest of the line as \
                 the program and its arguments; put jobclient's flags before --shell \
                 (a program that needs `{name}` can be submitted with --from-file)"
            ));
        }
    }
    Ok(())
}

/// The retry plan of `--max-retries N`: the default backoff, N times.
pub fn retry_plan_for(max_retries: u32) -> RetryPlan {
    if max_retries == 0 {
        return RetryPlan::no_retry();
    }
    RetryPlan {
        count: max_retries,
        ..RetryPlan::default_plan()
    }
}

/// One line of a `--from-file` JSON Lines file. Fields left out take the
/// value of the matching flag.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct JobLine {
    task_id: String,
    node_group: Option<String>,
    priority: Option<i32>,
    #[serde(default)]
    params: BTreeMap<String, String>,
    payload: Option<String>,
    shell: Option<ShellJob>,
    feedback: Option<bool>,
    submit_node_group: Option<String>,
    replace: Option<bool>,
    max_retries: Option<u32>,
    plan: Option<String>,
    timeout: Option<String>,
    at: Option<String>,
}

impl SubmitArgs {
    /// The jobs these flags describe; `payload_file` and `from_file` are
    /// passed already read. Errors name the flag (or file line) at fault.
    pub fn jobs(
        &self,
        payload_file: Option<Vec<u8>>,
        from_file: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<JobSpec>, String> {
        let template = self.template(payload_file, now_ms)?;
        if let Some(task_id) = &self.task_id {
            return Ok(vec![self.finish(
                template,
                task_id.clone(),
                "--node-group",
            )?]);
        }
        if let Some(prefix) = &self.task_id_prefix {
            let count = self.count.unwrap_or(1);
            if count == 0 {
                return Err("--count: must be at least 1".into());
            }
            return (0..count)
                .map(|i| self.finish(template.clone(), format!("{prefix}{i}"), "--node-group"))
                .collect();
        }
        let Some(text) = from_file else {
            return Err("say --task-id, --task-id-prefix with --count, or --from-file".into());
        };
        let path = self
            .from_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut jobs = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = format!("--from-file {path} line {}", n + 1);
            let parsed: JobLine = serde_json::from_str(line).map_err(|e| format!("{at}: {e}"))?;
            jobs.push(self.job_from_line(&template, parsed, &at)?);
        }
        if jobs.is_empty() {
            return Err(format!("--from-file {path}: holds no jobs"));
        }
        Ok(jobs)
    }

    fn template(&self, payload_file: Option<Vec<u8>>, now_ms: i64) -> Result<JobSpec, String> {
        let mut spec = JobSpec::new(String::new(), self.node_group.clone().unwrap_or_default());
        if let Some(p) = self.priority {
            spec.priority = p;
        }
        spec.params = self.params.iter().cloned().collect();
        spec.payload = match (&self.payload, payload_file, &self.shell) {
            (Some(text), _, _) => text.clone().into_bytes(),
            (_, Some(bytes), _) => bytes,
            (_, _, Some(command)) => {
                check_shell_command(command)?;
                shell_payload(command, &self.env, self.cwd.as_deref())?
            }
            _ => Vec::new(),
        };
        spec.need_feedback = self.feedback;
        spec.submit_node_group = self.submit_node_group.clone().unwrap_or_default();
        spec.replace_on_exist = self.replace;
        spec.rely_on_prev_cycle = self.rely_on_prev_cycle;
        spec.retry_plan = self
            .plan
            .clone()
            .or_else(|| self.max_retries.map(retry_plan_for));
        if let Some(t) = self.timeout {
            spec.timeout_ms = duration_ms(t, "--timeout")?;
        }
        spec.schedule = self.when.schedule(now_ms)?.unwrap_or(Schedule::Now);
        Ok(spec)
    }

    fn finish(
        &self,
        mut spec: JobSpec,
        task_id: String,
        group_flag: &str,
    ) -> Result<JobSpec, String> {
        if spec.task_tracker_node_group.is_empty() {
            return Err(format!(
                "{group_flag}: is required: say which node group runs the job"
            ));
        }
        if spec.need_feedback && spec.submit_node_group.is_empty() {
            return Err(
                "--feedback needs --submit-node-group: say which clients get the feedback".into(),
            );
        }
        spec.task_id = task_id;
        Ok(spec)
    }

    fn job_from_line(
        &self,
        template: &JobSpec,
        line: JobLine,
        at: &str,
    ) -> Result<JobSpec, String> {
        let mut spec = template.clone();
        if let Some(g) = line.node_group {
            spec.task_tracker_node_group = g;
        }
        if let Some(p) = line.priority {
            spec.priority = p;
        }
        spec.params.extend(line.params);
        if let Some(payload) = line.payload {
            spec.payload = payload.into_bytes();
        }
        if let Some(shell) = line.shell {
            shell.validate().map_err(|e| format!("{at}: shell: {e}"))?;
            spec.payload = shell
                .to_payload()
                .map_err(|e| format!("{at}: shell: {e}"))?;
        }
        if let Some(f) = line.feedback {
            spec.need_feedback = f;
        }
        if let Some(s) = line.submit_node_group {
            spec.submit_node_group = s;
        }
        if let Some(r) = line.replace {
            spec.replace_on_exist = r;
        }
        match (line.max_retries, line.plan) {
            (Some(_), Some(_)) => {
                return Err(format!("{at}: say max_retries or plan, not both"));
            }
            (Some(n), None) => spec.retry_plan = Some(retry_plan_for(n)),
            (None, Some(text)) => {
                spec.retry_plan = Some(parse_plan(&text).map_err(|e| format!("{at}: plan: {e}"))?)
            }
            (None, None) => {}
        }
        if let Some(t) = line.timeout {
            let d = parse_duration(&t).map_err(|e| format!("{at}: timeout: {e}"))?;
            spec.timeout_ms = duration_ms(d, "timeout").map_err(|e| format!("{at}: {e}"))?;
        }
        if let Some(t) = line.at {
            spec.schedule = Schedule::At(parse_time(&t).map_err(|e| format!("{at}: at: {e}"))?);
        }
        if line.task_id.is_empty() {
            return Err(format!("{at}: task_id is empty"));
        }
        self.finish(
            spec,
            line.task_id,
            &format!("{at}: node_group (or --node-group)"),
        )
    }
}

fn duration_ms(d: Duration, flag: &str) -> Result<u64, String> {
    u64::try_from(d.as_millis()).map_err(|_| format!("{flag}: is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::testing::one_job;
    use crate::cli::args::testing::{parse, submit_args};
    use crate::cli::args::Command;
    use lts_common::{MisfirePolicy, RetryStep};

    #[test]
    fn shell_builds_the_runner_payload() {
        let job = one_job(&[
            "-g", "w", "-t", "t", "--env", "A=1", "--shell", "sh", "-c", "exit 3",
        ]);
        let payload: serde_json::Value = serde_json::from_slice(&job.payload).expect("json");
        assert_eq!(
            payload,
            serde_json::json!({"program": "sh", "args": ["-c", "exit 3"], "env": {"A": "1"}})
        );
        let job = one_job(&["-g", "w", "-t", "t", "--shell", "true"]);
        let payload: serde_json::Value = serde_json::from_slice(&job.payload).expect("json");
        assert_eq!(
            payload,
            serde_json::json!({"program": "true", "args": [], "env": {}})
        );
        let e = submit_args(&[
            "-g", "w", "-t", "t", "--shell", "echo", "hi", "--env", "A=1",
        ])
        .jobs(None, None, 0)
        .unwrap_err();
        assert!(e.contains("`--env`") && e.contains("before --shell"), "{e}");
        // --env without --shell is refused.
        assert!(parse(&["submit", "-g", "w", "-t", "t", "--env", "A=1"]).is_err());
    }

    #[test]
    fn shell_jobs_carry_their_working_directory() {
        let job = one_job(&[
            "-g",
            "w",
            "-t",
            "t",
            "--cwd",
            "/srv/work",
            "--shell",
            "make",
            "all",
        ]);
        // Read back as the TaskTracker's runner reads it.
        let shell = ShellJob::from_payload(&job.payload).expect("a shell job");
        assert_eq!(shell.cwd.as_deref(), Some(Path::new("/srv/work")));
        assert_eq!(
            (shell.program.as_str(), shell.args.as_slice()),
            ("make", &["all".to_string()][..])
        );
        // --cwd goes with --shell only, and before it.
        assert!(parse(&["submit", "-g", "w", "-t", "t", "--cwd", "/tmp"]).is_err());
        let e = submit_args(&["-g", "w", "-t", "t", "--shell", "ls", "--cwd", "/tmp"])
            .jobs(None, None, 0)
            .unwrap_err();
        assert!(e.contains("`--cwd`") && e.contains("before --shell"), "{e}");

        let args = submit_args(&["-g", "w", "--from-file", "jobs.jsonl"]);
        let jobs = args
            .jobs(
                None,
                Some(r#"{"task_id": "a", "shell": {"program": "ls", "cwd": "/var/log"}}"#),
                0,
            )
            .expect("valid");
        let shell = ShellJob::from_payload(&jobs[0].payload).expect("a shell job");
        assert_eq!(shell.cwd.as_deref(), Some(Path::new("/var/log")));
    }

    #[test]
    fn shell_jobs_the_runner_would_refuse_are_refused_here() {
        let e = submit_args(&[
            "-g",
            "w",
            "-t",
            "t",
            "--env",
            "LD_PRELOAD=x",
            "--shell",
            "ls",
        ])
        .jobs(None, None, 0)
        .unwrap_err();
        assert!(e.starts_with("--shell: `env.LD_PRELOAD`"), "{e}");
        let e = submit_args(&["-g", "w", "--from-file", "f"])
            .jobs(
                None,
                Some(r#"{"task_id": "a", "shell": {"program": " "}}"#),
                0,
            )
            .unwrap_err();
        assert!(e.contains("line 1: shell: `program` is empty"), "{e}");
    }

    #[test]
    fn submit_flags_fill_the_spec() {
        let job = one_job(&[
            "-g",
            "w",
            "-t",
            "t",
            "--priority",
            "-5",
            "--payload",
            "hi",
            "--feedback",
            "--submit-node-group",
            "s",
            "--replace",
            "--max-retries",
            "0",
            "--timeout",
            "30s",
        ]);
        assert_eq!(job.priority, -5);
        assert_eq!(job.payload, b"hi");
        assert!(job.need_feedback && job.replace_on_exist);
        assert_eq!(job.submit_node_group, "s");
        assert_eq!(job.retry_plan, Some(RetryPlan::no_retry()));
        assert_eq!(job.timeout_ms, 30_000);
        assert_eq!(retry_plan_for(5).count, 5);

        let job = one_job(&[
            "-g",
            "w",
            "-t",
            "t",
            "--repeat-every",
            "1m",
            "--repeat-count",
            "3",
        ]);
        assert_eq!(
            job.schedule,
            Schedule::Repeat {
                interval_ms: 60_000,
                count: 3
            }
        );
        let job = one_job(&[
            "-g",
            "w",
            "-t",
            "t",
            "--cron",
            "0 * * * * *",
            "--time-zone",
            "Europe/Paris",
        ]);
        assert!(
            matches!(job.schedule, Schedule::Cron { ref time_zone, .. } if time_zone == "Europe/Paris")
        );
    }

    #[test]
    fn count_makes_numbered_jobs() {
        let jobs = submit_args(&[
            "-g",
            "w",
            "--task-id-prefix",
            "load-",
            "--count",
            "3",
            "--payload",
            "p",
        ])
        .jobs(None, None, 0)
        .expect("valid");
        let ids: Vec<&str> = jobs.iter().map(|j| j.task_id.as_str()).collect();
        assert_eq!(ids, ["load-0", "load-1", "load-2"]);
        assert!(jobs.iter().all(|j| j.payload == b"p"));
        assert!(parse(&["submit", "-g", "w", "--count", "3"]).is_err());
        assert!(parse(&[
            "submit",
            "-g",
            "w",
            "-t",
            "x",
            "--task-id-prefix",
            "p",
            "--count",
            "2"
        ])
        .is_err());
    }

    #[test]
    fn lines_override_flags_and_errors_name_the_line() {
        let args = submit_args(&["-g", "w", "--from-file", "jobs.jsonl", "--priority", "7"]);
        let text = r#"{"task_id": "a"}

{"task_id": "b", "node_group": "other", "priority": 1, "shell": {"program": "echo", "args": ["x"]}, "at": "1970-01-01T00:00:01Z"}"#;
        let jobs = args.jobs(None, Some(text), 0).expect("valid");
        assert_eq!(jobs.len(), 2);
        assert_eq!(
            (jobs[0].task_tracker_node_group.as_str(), jobs[0].priority),
            ("w", 7)
        );
        assert_eq!(
            (jobs[1].task_tracker_node_group.as_str(), jobs[1].priority),
            ("other", 1)
        );
        assert_eq!(jobs[1].schedule, Schedule::At(1_000));
        let payload: serde_json::Value = serde_json::from_slice(&jobs[1].payload).expect("json");
        assert_eq!(payload["program"], "echo");

        let e = args
            .jobs(None, Some("{\"task_id\": \"a\"}\n{\"taskid\": \"b\"}"), 0)
            .unwrap_err();
        assert!(
            e.contains("jobs.jsonl line 2") && e.contains("taskid"),
            "{e}"
        );
        let e = args
            .jobs(None, Some("{\"task_id\": \"a\", \"timeout\": \"x\"}"), 0)
            .unwrap_err();
        assert!(e.contains("line 1: timeout"), "{e}");
        assert!(args
            .jobs(None, Some("\n"), 0)
            .unwrap_err()
            .contains("no jobs"));
    }

    #[test]
    fn plans_parse_locally_and_exclude_max_retries() {
        let job = one_job(&[
            "-g",
            "w",
            "-t",
            "t",
            "--plan",
            "[retry_after 1s, suspend] x2",
        ]);
        let plan = job.retry_plan.expect("a plan");
        assert_eq!(
            plan.steps,
            [RetryStep::RetryAfter(1_000), RetryStep::Suspend]
        );
        assert_eq!(plan.count, 2);
        let e = parse(&["submit", "-g", "w", "-t", "t", "--plan", "[retri]"]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("--plan") && text.contains("position 2") && text.contains("`retri`"),
            "{text}"
        );
        let e = parse(&[
            "submit",
            "-g",
            "w",
            "-t",
            "t",
            "--plan",
            "[retry]",
            "--max-retries",
            "2",
        ])
        .unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{e}");

        let args = submit_args(&["-g", "w", "--from-file", "f"]);
        let jobs = args
            .jobs(None, Some(r#"{"task_id": "a", "plan": "[give_up]"}"#), 0)
            .expect("valid");
        assert_eq!(jobs[0].retry_plan, Some(RetryPlan::no_retry()));
        let e = args
            .jobs(None, Some(r#"{"task_id": "a", "plan": "[give_up] x0"}"#), 0)
            .unwrap_err();
        assert!(e.contains("line 1: plan: at position 11 (`x0`)"), "{e}");
    }

    #[test]
    fn cron_flags_are_checked_locally() {
        let job = one_job(&[
            "-g",
            "w",
            "-t",
            "t",
            "--cron",
            "0 0 3 * *",
            "--tz",
            "Europe/Paris",
            "--misfire",
            "skip",
        ]);
        assert_eq!(
            job.schedule,
            Schedule::Cron {
                expression: "0 0 3 * *".into(),
                time_zone: "Europe/Paris".into(),
                misfire: MisfirePolicy::Skip
            }
        );
        let e = submit_args(&["-g", "w", "-t", "t", "--cron", "0 0 25 * * ?"])
            .jobs(None, None, 0)
            .unwrap_err();
        assert!(
            e.starts_with("--cron `0 0 25 * * ?`: field 3 (hour)"),
            "{e}"
        );
        let e = submit_args(&[
            "-g",
            "w",
            "-t",
            "t",
            "--cron",
            "0 0 3 * *",
            "--time-zone",
            "Paris",
        ])
        .jobs(None, None, 0)
        .unwrap_err();
        assert!(
            e.starts_with("--time-zone: unknown time zone `Paris`"),
            "{e}"
        );
        // --misfire and --time-zone only go with --cron; schedules exclude
        // each other.
        assert!(parse(&["submit", "-g", "w", "-t", "t", "--misfire", "skip"]).is_err());
        assert!(parse(&["submit", "-g", "w", "-t", "t", "--tz", "UTC"]).is_err());
        let e = parse(&[
            "submit",
            "-g",
            "w",
            "-t",
            "t",
            "--cron",
            "@daily",
            "--misfire",
            "never",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("fire-once, skip, fire-all"), "{e}");
        let e = parse(&[
            "submit",
            "-g",
            "w",
            "-t",
            "t",
            "--cron",
            "@daily",
            "--repeat-every",
            "1m",
        ])
        .unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{e}");
    }

    #[test]
    fn update_flags_make_an_update() {
        let update = |args: &[&str]| {
            let mut full = vec!["update", "j1"];
            full.extend_from_slice(args);
            match parse(&full).expect("valid arguments").command {
                Command::Update(u) => u.update(1_000),
                other => panic!("{other:?}"),
            }
        };
        let u = update(&["--priority", "-3", "--param", "a=1", "--param", "b=2"]).expect("valid");
        assert_eq!(u.priority, Some(-3));
        assert_eq!(u.params.map(|p| p.len()), Some(2));
        assert!(u.schedule.is_none() && u.retry_plan.is_none());
        let u = update(&["--clear-params"]).expect("valid");
        assert_eq!(u.params, Some(BTreeMap::new()));
        let u = update(&["--repeat-every", "5m", "--repeat-count", "3"]).expect("valid");
        assert_eq!(
            u.schedule,
            Some(Schedule::Repeat {
                interval_ms: 300_000,
                count: 3
            })
        );
        let u = update(&["--in", "1s", "--plan", "[give_up]"]).expect("valid");
        assert_eq!(u.schedule, Some(Schedule::At(2_000)));
        assert_eq!(u.retry_plan, Some(RetryPlan::no_retry()));
        let e = update(&["--cron", "61 * * * *"]).unwrap_err();
        assert!(e.contains("field 1 (minute)"), "{e}");
        let e = update(&[]).unwrap_err();
        assert!(e.starts_with("nothing to change"), "{e}");
        assert!(parse(&["update", "j1", "--clear-params", "--param", "a=1"]).is_err());
        assert!(parse(&["update", "j1", "--plan", "[retry]", "--max-retries", "1"]).is_err());
        assert!(parse(&["update", "--priority", "1"]).is_err());
    }
}
