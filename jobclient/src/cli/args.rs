//! The command line: flags, their parsers, and how submit flags become jobs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};
use lts_common::cron::{CronError, CronSchedule};
use lts_common::{JobSpec, JobState, MisfirePolicy, RetryPlan, Schedule, ScheduleKind};
use serde::Deserialize;

use crate::admin::JobUpdate;
use crate::client::DEFAULT_JOBTRACKER;

/// Submit, inspect and cancel jobs on the scheduler's JobTrackers, and read
/// the feedback of finished jobs.
#[derive(Parser, Debug)]
#[command(name = "jobclient", version)]
pub struct Cli {
    /// JobTracker address, http://host:port or host:port. Repeat the flag
    /// (or separate with commas) to name several: one is picked at random
    /// and the others are tried when it fails.
    #[arg(
        long = "jobtracker",
        value_name = "ADDR",
        global = true,
        env = "JOBCLIENT_JOBTRACKER",
        value_delimiter = ',',
        default_value = DEFAULT_JOBTRACKER
    )]
    pub jobtrackers: Vec<String>,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// TOML file with defaults for --jobtracker, --json and
    /// --connect-timeout (keys are the long flag names, e.g.
    /// `jobtracker = ["a:7070", "b:7070"]`). Flags and env vars win.
    #[arg(long, value_name = "FILE", global = true, env = "JOBCLIENT_CONFIG")]
    pub config: Option<PathBuf>,

    /// How long to wait for a connection to one JobTracker before trying the
    /// next.
    #[arg(long, value_name = "DURATION", global = true, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Submit one job, or many in one batch (--count, --from-file).
    Submit(Box<SubmitArgs>),
    /// Show a job, by job id or by task id and node group.
    Get(GetArgs),
    /// List jobs, one page at a time.
    List(ListArgs),
    /// Execution log lines of many jobs: by node group, task id or job,
    /// within a time range, one page at a time.
    Logs(LogsArgs),
    /// Cancel a job.
    Cancel(CancelArgs),
    /// Wait until jobs have finished (succeeded, failed or cancelled).
    #[command(alias = "watch")]
    Wait(WaitArgs),
    /// Print, then acknowledge, the feedback of a submit node group.
    Feedback(FeedbackArgs),
    /// Park a pending job, or a cron or repeat job between cycles, until
    /// it is resumed.
    Suspend(JobRefArgs),
    /// Make a suspended job pending again.
    Resume(JobRefArgs),
    /// Run a pending job now, or fire one cycle of a cron or repeat job now.
    Trigger(JobRefArgs),
    /// Remove a job that is not running, with its execution log.
    Delete(JobRefArgs),
    /// Change a job's priority, params, schedule or retry plan.
    Update(Box<UpdateArgs>),
    /// Retry plans: set a job's plan, or check one locally.
    Plan(PlanArgs),
    /// Cron expressions, checked locally: the next fire times, or what an
    /// expression means. Needs no JobTracker.
    Cron(CronArgs),
}

/// Flags of `submit`.
#[derive(Args, Debug, Default)]
#[command(group(ArgGroup::new("which").required(true).args(["task_id", "task_id_prefix", "from_file"])))]
#[command(group(ArgGroup::new("body").args(["payload", "payload_file", "shell"])))]
pub struct SubmitArgs {
    /// Node group of the TaskTrackers that run the job.
    #[arg(long, short = 'g', value_name = "GROUP")]
    pub node_group: Option<String>,

    /// The job's key, unique within its node group.
    #[arg(long, short = 't', value_name = "ID")]
    pub task_id: Option<String>,

    /// Submit --count jobs with task ids PREFIX0, PREFIX1, ...
    #[arg(long, value_name = "PREFIX", requires = "count")]
    pub task_id_prefix: Option<String>,

    /// How many jobs to submit with --task-id-prefix.
    #[arg(long, value_name = "N", requires = "task_id_prefix")]
    pub count: Option<u32>,

    /// Submit the jobs of a JSON Lines file, one job object per line; the
    /// flags give defaults for what a line leaves out (see README).
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,

    /// Smaller runs first; the default is 100.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub priority: Option<i32>,

    /// A parameter for the runner; repeat for several.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub params: Vec<(String, String)>,

    /// The payload, as text.
    #[arg(long, value_name = "STRING")]
    pub payload: Option<String>,

    /// The payload, read from a file.
    #[arg(long, value_name = "FILE")]
    pub payload_file: Option<PathBuf>,

    /// Run a program with the TaskTracker's shell runner: the rest of the
    /// command line is the program and its arguments, so put it last.
    #[arg(long, value_name = "PROGRAM [ARGS]", num_args = 1.., allow_hyphen_values = true)]
    pub shell: Option<Vec<String>>,

    /// An environment variable for --shell; repeat for several.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_key_value, requires = "shell")]
    pub env: Vec<(String, String)>,

    /// Ask for the outcome to be pushed to --submit-node-group.
    #[arg(long)]
    pub feedback: bool,

    /// Node group of the clients that receive feedback.
    #[arg(long, value_name = "GROUP")]
    pub submit_node_group: Option<String>,

    /// Replace a job with the same task id instead of being refused.
    #[arg(long)]
    pub replace: bool,

    /// Retries after errors, with exponential backoff (1 s, 2 s, 4 s, ...
    /// at most 60 s); 0 fails the job at its first error. The default is 3.
    #[arg(long, value_name = "N")]
    pub max_retries: Option<u32>,

    /// The retry plan, e.g. '[retry_after 10s, backoff 1m x2 max 1h] x3'
    /// (see README); instead of --max-retries.
    #[arg(long, value_name = "PLAN", value_parser = parse_plan, conflicts_with = "max_retries")]
    pub plan: Option<RetryPlan>,

    /// Cancel a run that takes longer than this and count it as an error.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// When the job runs; now if not given.
    #[command(flatten)]
    pub when: ScheduleArgs,

    /// A cron or repeat cycle waits while the previous one still runs.
    #[arg(long)]
    pub rely_on_prev_cycle: bool,
}

/// When a job runs: the schedule flags of `submit` and `update`.
#[derive(Args, Debug, Default, Clone)]
// Not a derived group: that would hold every field, and --time-zone must
// go with --cron, not conflict with it.
#[group(skip)]
#[command(group(ArgGroup::new("when").args(["at", "delay", "cron", "repeat_every"])))]
pub struct ScheduleArgs {
    /// Run at this time, RFC 3339 (2030-01-02T03:04:05Z or with an offset
    /// like +02:00).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub at: Option<i64>,

    /// Run after this delay from now, e.g. 30s or 5m.
    #[arg(long = "in", value_name = "DURATION", value_parser = parse_duration)]
    pub delay: Option<Duration>,

    /// Run on a cron expression: Quartz (6-7 fields, with seconds) or
    /// crontab (5 fields). Checked here before it is sent; try
    /// `jobclient cron next EXPR`.
    #[arg(long, value_name = "EXPR")]
    pub cron: Option<String>,

    /// IANA time zone of --cron, e.g. Europe/Paris; UTC if not given.
    #[arg(long, visible_alias = "tz", value_name = "ZONE", requires = "cron")]
    pub time_zone: Option<String>,

    /// What a --cron job does with fire times missed while no JobTracker
    /// ran: fire-once (the default), skip or fire-all.
    #[arg(long, value_name = "POLICY", value_parser = parse_misfire, requires = "cron")]
    pub misfire: Option<MisfirePolicy>,

    /// Run repeatedly, this far apart.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub repeat_every: Option<Duration>,

    /// How many runs of --repeat-every in all; forever if not given.
    #[arg(long, value_name = "N", requires = "repeat_every")]
    pub repeat_count: Option<u32>,
}

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

/// Checks a cron expression and zone with the engine the tracker uses; the
/// message names the flag and, for the expression, the field at fault.
pub fn check_cron(expression: &str, time_zone: &str) -> Result<CronSchedule, String> {
    CronSchedule::parse(expression, time_zone).map_err(|e| match e {
        CronError::UnknownTimeZone(_) => format!("--time-zone: {e}"),
        _ => format!("--cron `{}`: {e}", expression.trim()),
    })
}

/// Flags of the verbs that take one job id.
#[derive(Args, Debug)]
pub struct JobRefArgs {
    /// The job id.
    pub job_id: String,
}

/// Flags of `update`.
#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The job id.
    pub job_id: String,

    /// The new priority; smaller runs first.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub priority: Option<i32>,

    /// Replace the job's params with these; repeat for several.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub params: Vec<(String, String)>,

    /// Remove all of the job's params.
    #[arg(long, conflicts_with = "params")]
    pub clear_params: bool,

    /// The new schedule.
    #[command(flatten)]
    pub when: ScheduleArgs,

    /// The new retry plan (see `jobclient plan set`); the job's error
    /// counter restarts.
    #[arg(long, value_name = "PLAN", value_parser = parse_plan)]
    pub plan: Option<RetryPlan>,

    /// A new retry plan of N retries with the default backoff; the job's
    /// error counter restarts.
    #[arg(long, value_name = "N", conflicts_with = "plan")]
    pub max_retries: Option<u32>,
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

/// Flags of `plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: PlanCommand,
}

/// The subcommands of `plan`.
#[derive(Subcommand, Debug)]
pub enum PlanCommand {
    /// Give a job a new retry plan; its error counter restarts.
    Set(PlanSetArgs),
    /// Check a plan locally and show what happens after each error.
    Check(PlanCheckArgs),
}

/// Flags of `plan set`.
#[derive(Args, Debug)]
pub struct PlanSetArgs {
    /// The job id.
    pub job_id: String,
    /// The plan, e.g. '[retry, retry_after 1s, backoff 1s x2 max 1m,
    /// suspend, give_up] x3' or '[backoff 1s x2 max 1h] forever'.
    #[arg(value_name = "PLAN", value_parser = parse_plan)]
    pub plan: RetryPlan,
}

/// Flags of `plan check`.
#[derive(Args, Debug)]
pub struct PlanCheckArgs {
    /// The plan, as for `plan set`.
    #[arg(value_name = "PLAN", value_parser = parse_plan)]
    pub plan: RetryPlan,
    /// Show the decisions for this many errors at most.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub errors: u32,
}

/// Flags of `cron`.
#[derive(Args, Debug)]
pub struct CronArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: CronCommand,
}

/// The subcommands of `cron`.
#[derive(Subcommand, Debug)]
pub enum CronCommand {
    /// Print the next fire times, one per line, in the zone's local time
    /// with its offset.
    Next(CronNextArgs),
    /// Say in words when an expression fires.
    Explain(CronExplainArgs),
}

/// Flags of `cron next`.
#[derive(Args, Debug)]
pub struct CronNextArgs {
    /// The expression: Quartz (6-7 fields, with seconds), crontab (5
    /// fields) or a macro such as @daily. Quote it.
    #[arg(value_name = "EXPR")]
    pub expression: String,
    /// IANA time zone, e.g. Europe/Paris; UTC if not given.
    #[arg(
        long,
        visible_alias = "time-zone",
        value_name = "ZONE",
        default_value = ""
    )]
    pub tz: String,
    /// Fire times strictly after this RFC 3339 time; now if not given.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub after: Option<i64>,
    /// How many fire times.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub count: u32,
}

/// Flags of `cron explain`.
#[derive(Args, Debug)]
pub struct CronExplainArgs {
    /// The expression, as for `cron next`.
    #[arg(value_name = "EXPR")]
    pub expression: String,
    /// IANA time zone, e.g. Europe/Paris; UTC if not given.
    #[arg(
        long,
        visible_alias = "time-zone",
        value_name = "ZONE",
        default_value = ""
    )]
    pub tz: String,
}

/// Flags of `get`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("which").required(true).args(["job_id", "task_id"])))]
pub struct GetArgs {
    /// The job id.
    pub job_id: Option<String>,
    /// Look the job up by task id instead (with --node-group).
    #[arg(long, short = 't', value_name = "ID", requires = "node_group")]
    pub task_id: Option<String>,
    /// Node group of --task-id.
    #[arg(long, short = 'g', value_name = "GROUP")]
    pub node_group: Option<String>,
    /// Also print the job's execution log.
    #[arg(long)]
    pub log: bool,
}

/// Flags of `list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only jobs of this node group.
    #[arg(long, short = 'g', value_name = "GROUP")]
    pub node_group: Option<String>,
    /// Only jobs in this state: pending, running, suspended, succeeded,
    /// failed or cancelled.
    #[arg(long, value_name = "STATE", value_parser = parse_state)]
    pub state: Option<JobState>,
    /// Only jobs whose task id starts with this.
    #[arg(long, value_name = "PREFIX")]
    pub task_id_prefix: Option<String>,
    /// Jobs per page, at most 1000.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// The token printed by the previous page.
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
    /// Only jobs with this kind of schedule: now, at, cron or repeat.
    #[arg(long, value_name = "KIND", value_parser = parse_kind)]
    pub kind: Option<ScheduleKind>,
}

/// Flags of `logs`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Only this job.
    #[arg(long = "job", value_name = "JOB")]
    pub job_id: Option<String>,
    /// Only jobs with exactly this task id.
    #[arg(long, short = 't', value_name = "ID")]
    pub task_id: Option<String>,
    /// Only jobs of this node group.
    #[arg(long, short = 'g', value_name = "GROUP")]
    pub node_group: Option<String>,
    /// Only lines at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<i64>,
    /// Only lines before this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<i64>,
    /// About this many lines per page (whole jobs), at most 1000.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// The token printed by the previous page.
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
}

/// Flags of `cancel`.
#[derive(Args, Debug)]
pub struct CancelArgs {
    /// The job id.
    pub job_id: String,
}

/// Flags of `wait`.
#[derive(Args, Debug)]
pub struct WaitArgs {
    /// Job ids; `-` reads them from standard input, separated by white space.
    #[arg(required = true, value_name = "JOB")]
    pub job_ids: Vec<String>,
    /// Give up after this long.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Flags of `feedback`.
#[derive(Args, Debug)]
pub struct FeedbackArgs {
    /// The submit node group whose feedback to read.
    #[arg(long, value_name = "GROUP")]
    pub submit_node_group: String,
    /// Stop after this many distinct items; 0 reads until interrupted.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub count: u64,
    /// Give up after this long.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// How this client names itself to the trackers.
    #[arg(long, value_name = "ID", default_value = "")]
    pub client_id: String,
}

/// Parses `KEY=VALUE`; the value may be empty or hold `=`.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some(("", _)) => Err("the key before `=` is empty".into()),
        Some((key, value)) => Ok((key.to_string(), value.to_string())),
        None => Err("expected KEY=VALUE".into()),
    }
}

/// Parses a duration like `30s`, `5m`, `1h 30m` or `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{e}; expected a duration like 30s, 5m or 250ms"))
}

/// Parses an RFC 3339 time (`Z` or a `+HH:MM` offset; no offset means
/// UTC) into Unix milliseconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let expected = "expected an RFC 3339 time like 2030-01-02T03:04:05Z";
    let trimmed = s.trim();
    let (base, offset_ms) = split_offset(trimmed).ok_or_else(|| expected.to_string())?;
    let t = humantime::parse_rfc3339_weak(base).map_err(|e| format!("{e}; {expected}"))?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "is before 1970".to_string())?
        .as_millis() as i64;
    let ms = ms - offset_ms;
    if ms < 0 {
        return Err("is before 1970".into());
    }
    Ok(ms)
}

/// Splits a trailing `Z` or `±HH:MM` off a time; returns the offset east of
/// UTC in milliseconds. `None` for a malformed offset.
fn split_offset(s: &str) -> Option<(&str, i64)> {
    if let Some(base) = s.strip_suffix(['Z', 'z']) {
        return Some((base, 0));
    }
    let bytes = s.as_bytes();
    // An offset only follows a time of day, so the date's own `-` never
    // counts.
    let time_at = s.find(['T', 't', ' '])?;
    if s.len() >= 6 && s.len() - 6 > time_at {
        let sign = bytes[s.len() - 6];
        if (sign == b'+' || sign == b'-') && bytes[s.len() - 3] == b':' {
            let hours: i64 = s[s.len() - 5..s.len() - 3].parse().ok()?;
            let minutes: i64 = s[s.len() - 2..].parse().ok()?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = (hours * 60 + minutes) * 60_000;
            let offset = if sign == b'-' { -offset } else { offset };
            return Some((&s[..s.len() - 6], offset));
        }
    }
    Some((s, 0))
}

/// Parses a job state name as [`JobState::name`] prints it.
pub fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::from_name(&s.to_ascii_lowercase()).ok_or_else(|| {
        "expected one of pending, running, suspended, succeeded, failed, cancelled".into()
    })
}

/// Parses a schedule kind name as [`ScheduleKind::name`] prints it.
pub fn parse_kind(s: &str) -> Result<ScheduleKind, String> {
    let kinds = [
        ScheduleKind::Now,
        ScheduleKind::At,
        ScheduleKind::Cron,
        ScheduleKind::Repeat,
    ];
    kinds
        .into_iter()
        .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
        .ok_or_else(|| "expected one of now, at, cron, repeat".into())
}

/// Parses a misfire policy: `fire-once`, `skip` or `fire-all`.
pub fn parse_misfire(s: &str) -> Result<MisfirePolicy, String> {
    match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
        "fire-once" => Ok(MisfirePolicy::FireOnce),
        "skip" => Ok(MisfirePolicy::Skip),
        "fire-all" => Ok(MisfirePolicy::FireAll),
        _ => Err("expected one of fire-once, skip, fire-all".into()),
    }
}

/// Parses a retry plan (see [`lts_common::plan`]); the message quotes the
/// offending token and its position.
pub fn parse_plan(s: &str) -> Result<RetryPlan, String> {
    s.parse::<RetryPlan>().map_err(|e| e.to_string())
}

/// The JSON payload read by the TaskTracker's built-in shell runner.
pub fn shell_payload(command: &[String], env: &[(String, String)]) -> Result<Vec<u8>, String> {
    let Some((program, args)) = command.split_first() else {
        return Err("--shell needs a program".into());
    };
    let payload = ShellPayload {
        program: program.clone(),
        args: args.to_vec(),
        env: env.iter().cloned().collect(),
    };
    serde_json::to_vec(&payload).map_err(|e| format!("--shell: {e}"))
}

#[derive(serde::Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ShellPayload {
    program: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
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
    shell: Option<ShellLine>,
    feedback: Option<bool>,
    submit_node_group: Option<String>,
    replace: Option<bool>,
    max_retries: Option<u32>,
    plan: Option<String>,
    timeout: Option<String>,
    at: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ShellLine {
    program: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
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
                shell_payload(command, &self.env)?
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
            let payload = ShellPayload {
                program: shell.program,
                args: shell.args,
                env: shell.env,
            };
            spec.payload = serde_json::to_vec(&payload).map_err(|e| format!("{at}: shell: {e}"))?;
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
    use clap::Parser;
    use lts_common::RetryStep;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("jobclient").chain(args.iter().copied()))
    }

    fn submit_args(args: &[&str]) -> SubmitArgs {
        let mut full = vec!["submit"];
        full.extend_from_slice(args);
        match parse(&full).expect("valid arguments").command {
            Command::Submit(s) => *s,
            other => panic!("{other:?}"),
        }
    }

    fn one_job(args: &[&str]) -> JobSpec {
        let mut jobs = submit_args(args)
            .jobs(None, None, 1_000)
            .expect("valid job");
        assert_eq!(jobs.len(), 1);
        jobs.remove(0)
    }

    #[test]
    fn params_split_at_the_first_equals() {
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_key_value("a="), Ok(("a".into(), String::new())));
        assert!(parse_key_value("=b").is_err());
        assert!(parse_key_value("ab").is_err());
        let job = one_job(&["-g", "w", "-t", "t1", "--param", "x=1", "--param", "y=a=b"]);
        assert_eq!(job.params.get("x").map(String::as_str), Some("1"));
        assert_eq!(job.params.get("y").map(String::as_str), Some("a=b"));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = parse(&["submit", "-g", "w", "-t", "t", "--param", "nokey"]).unwrap_err();
        assert!(e.to_string().contains("--param"), "{e}");
        let e = parse(&["submit", "-g", "w", "-t", "t", "--timeout", "soon"]).unwrap_err();
        assert!(e.to_string().contains("--timeout"), "{e}");
        let e = parse(&["submit", "-g", "w", "-t", "t", "--at", "tomorrow"]).unwrap_err();
        assert!(e.to_string().contains("--at"), "{e}");
        let e = parse(&["submit", "-g", "w", "-t", "t", "--priority", "high"]).unwrap_err();
        assert!(e.to_string().contains("--priority"), "{e}");
        let e = parse(&["list", "--state", "done"]).unwrap_err();
        assert!(
            e.to_string().contains("--state") && e.to_string().contains("pending"),
            "{e}"
        );
        let e = parse(&["list", "--limit", "5000"]).unwrap_err();
        assert!(e.to_string().contains("--limit"), "{e}");
        // Payload sources exclude each other.
        let e = parse(&["submit", "-t", "t", "--payload", "x", "--payload-file", "f"]).unwrap_err();
        assert!(e.to_string().contains("--payload"), "{e}");
        // A job needs a node group; the message names the flag.
        let e = submit_args(&["-t", "t"]).jobs(None, None, 0).unwrap_err();
        assert!(e.contains("--node-group"), "{e}");
        let e = submit_args(&["-g", "w", "-t", "t", "--feedback"])
            .jobs(None, None, 0)
            .unwrap_err();
        assert!(e.contains("--submit-node-group"), "{e}");
    }

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
    fn times_parse_with_zone_or_offset() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Ok(1_000));
        assert_eq!(
            parse_time("2024-02-29T12:34:56.789Z"),
            Ok(1_709_210_096_789)
        );
        assert_eq!(
            parse_time("2024-02-29T14:34:56.789+02:00"),
            Ok(1_709_210_096_789)
        );
        assert_eq!(
            parse_time("2024-02-29T10:34:56.789-02:00"),
            Ok(1_709_210_096_789)
        );
        assert_eq!(parse_time("2024-02-29 12:34:56.789"), Ok(1_709_210_096_789));
        assert!(parse_time("2024-02-29").is_err());
        assert!(parse_time("2024-02-29T12:34:56+25:00").is_err());
        assert!(parse_time("next tuesday").unwrap_err().contains("RFC 3339"));
        let job = one_job(&["-g", "w", "-t", "t", "--at", "1970-01-01T00:00:02Z"]);
        assert_eq!(job.schedule, Schedule::At(2_000));
        let job = one_job(&["-g", "w", "-t", "t", "--in", "5s"]);
        assert_eq!(job.schedule, Schedule::At(6_000));
        assert!(parse(&[
            "submit",
            "-g",
            "w",
            "-t",
            "t",
            "--at",
            "1970-01-01T00:00:02Z",
            "--in",
            "1s"
        ])
        .is_err());
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

    #[test]
    fn admin_verbs_cron_and_kind_filters_parse() {
        for verb in ["suspend", "resume", "trigger", "delete"] {
            assert!(parse(&[verb, "j1"]).is_ok(), "{verb}");
            assert!(parse(&[verb]).is_err(), "{verb}");
        }
        match parse(&["list", "--kind", "CRON"]).expect("valid").command {
            Command::List(l) => assert_eq!(l.kind, Some(ScheduleKind::Cron)),
            other => panic!("{other:?}"),
        }
        let e = parse(&["list", "--kind", "daily"]).unwrap_err();
        assert!(e.to_string().contains("now, at, cron, repeat"), "{e}");
        match parse(&["plan", "set", "j1", "[retry] forever"])
            .expect("valid")
            .command
        {
            Command::Plan(PlanArgs {
                command: PlanCommand::Set(s),
            }) => assert!(s.plan.forever),
            other => panic!("{other:?}"),
        }
        match parse(&[
            "cron",
            "next",
            "*/5 * * * *",
            "--time-zone",
            "Asia/Tokyo",
            "--count",
            "2",
        ])
        .expect("valid")
        .command
        {
            Command::Cron(CronArgs {
                command: CronCommand::Next(n),
            }) => assert_eq!((n.tz.as_str(), n.count, n.after), ("Asia/Tokyo", 2, None)),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["cron", "next", "@daily", "--count", "0"]).is_err());
    }

    #[test]
    fn jobtrackers_repeat_or_split_on_commas() {
        let cli =
            parse(&["--jobtracker", "a:1", "--jobtracker", "b:2,c:3", "list"]).expect("valid");
        assert_eq!(cli.jobtrackers, ["a:1", "b:2", "c:3"]);
        let cli = parse(&["list", "--json"]).expect("valid");
        assert!(cli.json);
    }
}
