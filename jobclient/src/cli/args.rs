//! The command line's clap definitions: the flags of every subcommand.
//! Their values are parsed in [`super::parse`]; the flags of `submit` and
//! `update` become jobs and updates in [`super::jobs`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};
use lts_common::{JobState, MisfirePolicy, RetryPlan, ScheduleKind};

use super::parse::{
    parse_duration, parse_key_value, parse_kind, parse_misfire, parse_plan, parse_state, parse_time,
};
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

    /// Cluster mode: find the JobTrackers through this ZooKeeper
    /// (`host:port[,host:port...][/chroot]`) instead of --jobtracker.
    #[arg(long, value_name = "HOSTS", global = true, env = "JOBCLIENT_ZOOKEEPER")]
    pub zookeeper: Option<String>,

    /// Name of the cluster in ZooKeeper (with --zookeeper).
    #[arg(
        long,
        value_name = "NAME",
        global = true,
        env = "JOBCLIENT_CLUSTER",
        default_value = "default"
    )]
    pub cluster: String,

    /// ZooKeeper session timeout (with --zookeeper), 1s to 60s.
    #[arg(
        long,
        value_name = "DURATION",
        global = true,
        env = "JOBCLIENT_ZK_SESSION_TIMEOUT",
        default_value = "4s",
        value_parser = parse_duration
    )]
    pub zk_session_timeout: Duration,

    /// Print machine-readable JSON instead of text. In the env var: 1, true,
    /// yes or on; 0, false, no or off.
    #[arg(
        long,
        global = true,
        env = "JOBCLIENT_JSON",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub json: bool,

    /// TOML file with defaults for --jobtracker, --json and
    /// --connect-timeout (keys are the long flag names, e.g.
    /// `jobtracker = ["a:7070", "b:7070"]`). Flags and env vars win.
    #[arg(long, value_name = "FILE", global = true, env = "JOBCLIENT_CONFIG")]
    pub config: Option<PathBuf>,

    /// How long to wait for a connection to one JobTracker before trying the
    /// next.
    #[arg(
        long,
        value_name = "DURATION",
        global = true,
        env = "JOBCLIENT_CONNECT_TIMEOUT",
        default_value = "5s",
        value_parser = parse_duration
    )]
    pub connect_timeout: Duration,

    /// PEM CA certificate(s) to check the JobTrackers' certificates with;
    /// with it every JobTracker is reached over TLS (also one written
    /// host:port). Without it an https:// address is refused.
    #[arg(long, value_name = "FILE", global = true, env = "JOBCLIENT_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate for mutual TLS (with --tls-key and --tls-ca).
    #[arg(long, value_name = "FILE", global = true, env = "JOBCLIENT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", global = true, env = "JOBCLIENT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// File holding the bearer token sent with every call, for
    /// JobTrackers that run with a token file.
    #[arg(long, value_name = "FILE", global = true, env = "JOBCLIENT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

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
    /// The nodes of the cluster, by role and node group, the master marked,
    /// as ZooKeeper shows them (needs --zookeeper).
    Nodes,
    /// A spool directory of `submit --spool`: status, replay now, purge.
    Spool(SpoolArgs),
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

    /// Working directory of the --shell program on the TaskTracker; the
    /// TaskTracker's own when not given.
    #[arg(long, value_name = "DIR", requires = "shell")]
    pub cwd: Option<PathBuf>,

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

    /// Spool directory: when no JobTracker accepts the jobs they are kept
    /// here and `spooled` is printed for each; what the spool holds is
    /// replayed before the new jobs are submitted.
    #[arg(long, value_name = "DIR", env = "JOBCLIENT_SPOOL")]
    pub spool: Option<PathBuf>,

    /// Limits of the --spool directory.
    #[command(flatten)]
    pub spool_limits: SpoolLimitArgs,

    /// With --spool: after printing the answers, keep running until the
    /// spool is empty, replaying it as soon as a JobTracker is reachable.
    #[arg(long, requires = "spool")]
    pub until_empty: bool,
}

/// How much a spool directory holds at most.
#[derive(Args, Debug, Clone)]
pub struct SpoolLimitArgs {
    /// Jobs the spool holds at most; a submit that would pass it fails,
    /// naming the spool, and keeps what the spool holds.
    #[arg(long, value_name = "N", env = "JOBCLIENT_SPOOL_MAX_ENTRIES", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub spool_max_entries: u64,

    /// Bytes of spooled jobs the spool holds at most (a number, or with
    /// KiB, MiB or GiB); as --spool-max-entries when passed.
    #[arg(long, value_name = "SIZE", env = "JOBCLIENT_SPOOL_MAX_BYTES", default_value = "1GiB", value_parser = lts_common::config::parse_bytes)]
    pub spool_max_bytes: u64,
}

impl Default for SpoolLimitArgs {
    fn default() -> Self {
        let options = crate::spool::SpoolOptions::default();
        SpoolLimitArgs {
            spool_max_entries: options.max_entries,
            spool_max_bytes: options.max_bytes,
        }
    }
}

/// Flags of `spool`.
#[derive(Args, Debug)]
pub struct SpoolArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: SpoolCommand,
}

/// The subcommands of `spool`.
#[derive(Subcommand, Debug)]
pub enum SpoolCommand {
    /// What the spool holds: jobs waiting, the oldest, size on disk, jobs
    /// set aside. Needs no JobTracker.
    Status(SpoolDirArgs),
    /// Send the spooled jobs to a JobTracker now, oldest first.
    Replay(SpoolReplayArgs),
    /// Drop every job in the spool (asks first).
    Purge(SpoolPurgeArgs),
}

/// The spool directory.
#[derive(Args, Debug)]
pub struct SpoolDirArgs {
    /// The spool directory.
    #[arg(long, value_name = "DIR", env = "JOBCLIENT_SPOOL")]
    pub spool: PathBuf,

    /// Limits of the spool directory.
    #[command(flatten)]
    pub spool_limits: SpoolLimitArgs,
}

/// Flags of `spool replay`.
#[derive(Args, Debug)]
pub struct SpoolReplayArgs {
    /// The spool directory.
    #[arg(long, value_name = "DIR", env = "JOBCLIENT_SPOOL")]
    pub spool: PathBuf,

    /// Limits of the spool directory.
    #[command(flatten)]
    pub spool_limits: SpoolLimitArgs,

    /// Keep running until the spool is empty, replaying it as soon as a
    /// JobTracker is reachable; without it the replay stops (exit 3) when
    /// none is.
    #[arg(long)]
    pub until_empty: bool,
}

/// Flags of `spool purge`.
#[derive(Args, Debug)]
pub struct SpoolPurgeArgs {
    /// The spool directory.
    #[arg(long, value_name = "DIR", env = "JOBCLIENT_SPOOL")]
    pub spool: PathBuf,
    /// Limits of the spool directory.
    #[command(flatten)]
    pub spool_limits: SpoolLimitArgs,
    /// Do not ask for confirmation (needed without a terminal).
    #[arg(long)]
    pub yes: bool,
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
    /// Also fetch each job's payload and params, shown with --json
    /// (left out otherwise: a payload may be 1 MiB; `get` always shows
    /// them).
    #[arg(long)]
    pub include_payload: bool,
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

/// Parsing helpers shared by the tests of the command line modules.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use clap::Parser;
    use lts_common::JobSpec;

    pub(crate) fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("jobclient").chain(args.iter().copied()))
    }

    pub(crate) fn submit_args(args: &[&str]) -> SubmitArgs {
        let mut full = vec!["submit"];
        full.extend_from_slice(args);
        match parse(&full).expect("valid arguments").command {
            Command::Submit(s) => *s,
            other => panic!("{other:?}"),
        }
    }

    pub(crate) fn one_job(args: &[&str]) -> JobSpec {
        let mut jobs = submit_args(args)
            .jobs(None, None, 1_000)
            .expect("valid job");
        assert_eq!(jobs.len(), 1);
        jobs.remove(0)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{parse, submit_args};
    use super::*;

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
