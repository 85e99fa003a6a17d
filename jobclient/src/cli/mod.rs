//! The `jobclient` command line tool. [`Cli`] holds its flags; [`run`]
//! carries out a parsed command and returns the process exit code.
//!
//! Exit codes: 0 all went well; 1 a job was refused (submit) or finished
//! without success (wait), or a cron expression never fires again (`cron
//! next`); 2 bad flags or input; 3 the JobTrackers could not
//! be reached or answered with an error; 4 a wait or feedback timed out.

mod args;
mod jobs;
mod local;
mod output;
mod parse;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use lts_common::Job;
use serde_json::Value;
use tokio::time::Instant;

pub use args::{
    CancelArgs, Cli, Command, CronArgs, CronCommand, CronExplainArgs, CronNextArgs, FeedbackArgs,
    GetArgs, JobRefArgs, ListArgs, LogsArgs, PlanArgs, PlanCheckArgs, PlanCommand, PlanSetArgs,
    ScheduleArgs, SpoolArgs, SpoolCommand, SpoolDirArgs, SpoolLimitArgs, SpoolPurgeArgs,
    SpoolReplayArgs, SubmitArgs, UpdateArgs, WaitArgs,
};
pub use jobs::{retry_plan_for, shell_payload, JobLine};
pub use local::{cron_next, dialect_name, next_fire_times, plan_decisions};
pub use output::{
    cron_next_json, cron_next_text, decision_text, feedback_json, feedback_text, fire_time,
    job_json, job_text, jobs_text, log_json, log_text, misfire_name, nodes_json, nodes_text,
    plan_check_json, plan_check_text, refusal_text, schedule_text, submit_json, submit_text, table,
};
pub use parse::{
    check_cron, parse_duration, parse_key_value, parse_kind, parse_misfire, parse_plan,
    parse_state, parse_time,
};

use crate::admin::{AdminClient, JobUpdate};
use crate::client::{ClientOptions, JobClient, JobFilter};
use crate::cluster::{cluster_view, ClusterOptions};
use crate::error::Error;
use crate::feedback::FeedbackSubscription;
use crate::spool::{AsideReason, SetAside, SpoolEvent, SpoolOptions, SpoolingClient};

/// Exit code: everything went well.
pub const EXIT_OK: u8 = 0;
/// Exit code: a job was refused, or finished without success; or `cron
/// next` found no time to come.
pub const EXIT_JOB_FAILED: u8 = 1;
/// Exit code: bad flags or input.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: no tracker reachable, or a tracker answered with an error.
pub const EXIT_TRACKER: u8 = 3;
/// Exit code: a wait or feedback read timed out.
pub const EXIT_TIMEOUT: u8 = 4;

/// Longest pause between two polls of `wait`.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Jobs `wait` looks up at the same time.
const POLL_CONCURRENCY: usize = 32;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad flags or input; the message names the flag or file.
    #[error("{0}")]
    Usage(String),
    /// The tracker could not be reached or refused.
    #[error(transparent)]
    Client(#[from] Error),
    /// A deadline passed.
    #[error("{0}")]
    Timeout(String),
    /// Writing the output failed (a closed pipe, say).
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Client(_) | CliError::Output(_) => EXIT_TRACKER,
            CliError::Timeout(_) => EXIT_TIMEOUT,
        }
    }
}

/// A bad --zookeeper or cluster name is a usage error; the rest is a
/// cluster that cannot be reached.
fn cluster_error(e: Error) -> CliError {
    match e {
        Error::Cluster(
            c @ (lts_cluster::ClusterError::BadConnectString { .. }
            | lts_cluster::ClusterError::BadName { .. }
            | lts_cluster::ClusterError::BadSessionTimeout(_)),
        ) => CliError::Usage(format!("--zookeeper: {c}")),
        other => CliError::Client(other),
    }
}

/// `nodes`: the cluster's registry, read once.
async fn nodes(cluster: &ClusterOptions, wait: Duration, json: bool) -> Result<u8, CliError> {
    let view = cluster_view(cluster, wait).await.map_err(cluster_error)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", nodes_json(&view))?;
    } else {
        write!(out, "{}", nodes_text(&view))?;
    }
    Ok(EXIT_OK)
}

/// Runs a parsed command, printing to stdout (and errors to stderr), and
/// returns the exit code.
pub async fn run(cli: Cli) -> u8 {
    match execute(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("jobclient: {e}");
            e.exit_code()
        }
    }
}

/// Runs a parsed command, printing results to stdout.
pub async fn execute(cli: Cli) -> Result<u8, CliError> {
    let json = cli.json;
    // These need no tracker, so a bad or unreachable --jobtracker must not
    // stop them.
    match &cli.command {
        Command::Cron(a) => return cron(a, json),
        Command::Plan(PlanArgs {
            command: PlanCommand::Check(a),
        }) => return plan_check(a, json),
        _ => {}
    }
    let cluster = cli.zookeeper.as_ref().map(|zookeeper| {
        let mut options = ClusterOptions::new(zookeeper.clone(), cli.cluster.clone());
        options.session_timeout = cli.zk_session_timeout;
        options
    });
    if let Command::Nodes = &cli.command {
        let Some(cluster) = &cluster else {
            return Err(CliError::Usage(
                "nodes: needs --zookeeper (the cluster's registry lives there)".into(),
            ));
        };
        return nodes(cluster, cli.connect_timeout, json).await;
    }
    let tls = match &cli.tls_ca {
        Some(ca) => Some(
            lts_common::endpoint::ClientTls::from_files(
                ca,
                cli.tls_cert.as_deref(),
                cli.tls_key.as_deref(),
            )
            .map_err(|e| CliError::Usage(e.to_string()))?,
        ),
        None if cli.tls_cert.is_some() || cli.tls_key.is_some() => return Err(CliError::Usage(
            "--tls-cert/--tls-key: need --tls-ca (the CA that signs the JobTrackers' certificates)"
                .into(),
        )),
        None => None,
    };
    let token = match &cli.token_file {
        Some(path) => Some(
            lts_common::endpoint::Token::from_file("--token-file", path)
                .map_err(|e| CliError::Usage(e.to_string()))?,
        ),
        None => None,
    };
    let options = ClientOptions {
        connect_timeout: cli.connect_timeout,
        tls,
        token,
        ..ClientOptions::default()
    };
    let client = match cluster {
        Some(cluster) => JobClient::connect_cluster(cluster, options)
            .await
            .map_err(cluster_error)?,
        None => JobClient::new(cli.jobtrackers.clone(), options).map_err(|e| match e {
            Error::InvalidAddress(_) | Error::NoAddresses => {
                CliError::Usage(format!("--jobtracker: {e}"))
            }
            other => CliError::Client(other),
        })?,
    };
    let admin = client.admin();
    match cli.command {
        Command::Submit(a) => match a.spool.clone() {
            Some(dir) => submit_spooled(&client, *a, &dir, json).await,
            None => submit(&client, *a, json).await,
        },
        Command::Spool(a) => spool(&client, a, json).await,
        Command::Get(a) => get(&client, a, json).await,
        Command::List(a) => list(&client, a, json).await,
        Command::Logs(a) => logs(&client, a, json).await,
        Command::Cancel(a) => {
            let job = client.cancel(&a.job_id).await?;
            if json {
                print_json(&job_json(&job))?;
            } else {
                print(&format!("job {} is {}\n\n", job.job_id, job.state.name()))?;
                print(&job_text(&job))?;
            }
            Ok(EXIT_OK)
        }
        Command::Wait(a) => wait(&client, a, json).await,
        Command::Feedback(a) => feedback(&client, a, json).await,
        Command::Suspend(a) => {
            let job = admin.suspend(&a.job_id).await?;
            print_job(
                &job,
                &format!("job {} is {}", job.job_id, job.state.name()),
                json,
            )
        }
        Command::Resume(a) => {
            let job = admin.resume(&a.job_id).await?;
            print_job(
                &job,
                &format!("job {} is {}", job.job_id, job.state.name()),
                json,
            )
        }
        Command::Trigger(a) => {
            let job = admin.trigger(&a.job_id).await?;
            let headline = format!("job {} triggered; it is {}", job.job_id, job.state.name());
            print_job(&job, &headline, json)
        }
        Command::Delete(a) => {
            admin.delete(&a.job_id).await?;
            if json {
                print_json(&serde_json::json!({"job_id": a.job_id, "deleted": true}))?;
            } else {
                print(&format!("deleted job {}\n", a.job_id))?;
            }
            Ok(EXIT_OK)
        }
        Command::Update(a) => {
            let update = a.update(lts_common::now_ms()).map_err(CliError::Usage)?;
            update_job(&admin, &a.job_id, update, json).await
        }
        Command::Plan(PlanArgs {
            command: PlanCommand::Set(a),
        }) => {
            let update = JobUpdate {
                retry_plan: Some(a.plan),
                ..JobUpdate::default()
            };
            update_job(&admin, &a.job_id, update, json).await
        }
        // Handled above, before a client was made.
        Command::Plan(PlanArgs {
            command: PlanCommand::Check(a),
        }) => plan_check(&a, json),
        Command::Cron(a) => cron(&a, json),
        // Answered above, before any tracker is needed.
        Command::Nodes => Ok(EXIT_OK),
    }
}

async fn update_job(
    admin: &AdminClient,
    job_id: &str,
    update: JobUpdate,
    json: bool,
) -> Result<u8, CliError> {
    let new_plan = update.retry_plan.is_some();
    let job = admin.update(job_id, update).await?;
    let mut headline = format!("job {} updated", job.job_id);
    if new_plan {
        headline.push_str(&format!(
            "; retry plan {}; its error counter restarts from 0",
            job.spec.effective_retry_plan()
        ));
    }
    print_job(&job, &headline, json)
}

/// A headline, then the job; or the job as JSON.
fn print_job(job: &Job, headline: &str, json: bool) -> Result<u8, CliError> {
    if json {
        print_json(&job_json(job))?;
    } else {
        print(&format!("{headline}\n\n{}", job_text(job)))?;
    }
    Ok(EXIT_OK)
}

fn cron(a: &CronArgs, json: bool) -> Result<u8, CliError> {
    let (expression, tz) = match &a.command {
        CronCommand::Next(n) => (&n.expression, &n.tz),
        CronCommand::Explain(e) => (&e.expression, &e.tz),
    };
    let schedule = lts_common::cron::CronSchedule::parse(expression, tz).map_err(|e| match e {
        lts_common::cron::CronError::UnknownTimeZone(_) => CliError::Usage(format!("--tz: {e}")),
        _ => CliError::Usage(format!("cron expression `{}`: {e}", expression.trim())),
    })?;
    let zone = schedule.time_zone().name().to_string();
    let dialect = dialect_name(schedule.dialect());
    match &a.command {
        CronCommand::Next(n) => {
            let after_ms = n.after.unwrap_or_else(lts_common::now_ms);
            let after = chrono::DateTime::from_timestamp_millis(after_ms)
                .ok_or_else(|| CliError::Usage("--after: is out of range".into()))?;
            let times = next_fire_times(&schedule, after, n.count as usize);
            if times.is_empty() {
                eprintln!(
                    "jobclient: `{}` never fires after {} (no time up to the year 2400 matches)",
                    schedule.expression(),
                    lts_common::format_ms(after_ms)
                );
                return Ok(EXIT_JOB_FAILED);
            }
            if json {
                print_json(&cron_next_json(
                    schedule.expression(),
                    &zone,
                    dialect,
                    &times,
                ))?;
            } else {
                print(&cron_next_text(&times))?;
            }
            if times.len() < n.count as usize {
                eprintln!(
                    "jobclient: `{}` fires {} times after {} and then no more before the year 2400",
                    schedule.expression(),
                    times.len(),
                    lts_common::format_ms(after_ms)
                );
            }
        }
        CronCommand::Explain(_) => {
            let explanation = schedule.explain();
            if json {
                print_json(&serde_json::json!({
                    "expression": schedule.expression(),
                    "time_zone": zone,
                    "dialect": dialect,
                    "explanation": explanation,
                }))?;
            } else {
                print(&format!("{explanation}\n"))?;
            }
        }
    }
    Ok(EXIT_OK)
}

fn plan_check(a: &PlanCheckArgs, json: bool) -> Result<u8, CliError> {
    let decisions = plan_decisions(&a.plan, a.errors);
    if json {
        print_json(&plan_check_json(&a.plan, &decisions))?;
    } else {
        print(&plan_check_text(&a.plan, &decisions))?;
    }
    Ok(EXIT_OK)
}

/// The jobs `submit`'s flags describe.
fn submit_jobs(a: &SubmitArgs) -> Result<Vec<lts_common::JobSpec>, CliError> {
    let payload_file = match &a.payload_file {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| CliError::Usage(format!("--payload-file {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let from_file = match &a.from_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| CliError::Usage(format!("--from-file {}: {e}", path.display())))?,
        ),
        None => None,
    };
    a.jobs(payload_file, from_file.as_deref(), lts_common::now_ms())
        .map_err(CliError::Usage)
}

async fn submit(client: &JobClient, a: SubmitArgs, json: bool) -> Result<u8, CliError> {
    let jobs = submit_jobs(&a)?;
    let outcomes = match client.submit(jobs).await {
        Ok(outcomes) => outcomes,
        Err(Error::PartialSubmit { submitted, source }) => {
            // Say what did get stored before failing, so it is not lost.
            if json {
                print_json(&submit_json(&submitted))?;
            } else {
                print(&submit_text(&submitted))?;
            }
            return Err(Error::PartialSubmit { submitted, source }.into());
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        print_json(&submit_json(&outcomes))?;
    } else {
        print(&submit_text(&outcomes))?;
    }
    let refused = outcomes.iter().filter(|o| !o.is_accepted()).count();
    if refused > 0 {
        if outcomes.len() > 1 {
            eprintln!(
                "jobclient: {refused} of {} jobs were refused",
                outcomes.len()
            );
        }
        return Ok(EXIT_JOB_FAILED);
    }
    Ok(EXIT_OK)
}

/// Opens the spool under `dir` for one command (no background replay) and
/// says so when a damaged spool was moved aside.
fn open_spool(
    client: &JobClient,
    dir: &std::path::Path,
    limits: &SpoolLimitArgs,
) -> Result<SpoolingClient, CliError> {
    let options = SpoolOptions {
        max_entries: limits.spool_max_entries,
        max_bytes: limits.spool_max_bytes,
        background_replay: false,
        ..SpoolOptions::default()
    };
    let spooling = client.clone().with_spool(dir, options)?;
    if let Some(aside) = spooling.status().moved_aside {
        eprintln!(
            "jobclient: the spool in {} was damaged; it was moved to {} and a fresh one started",
            dir.display(),
            aside.display()
        );
    }
    Ok(spooling)
}

fn aside_text(a: &SetAside) -> String {
    match &a.reason {
        AsideReason::Conflict { existing_job_id } => format!(
            "set aside task {} (node group {}): the task id belongs to another job, {existing_job_id}",
            a.task_id, a.node_group
        ),
        AsideReason::Refused {
            code,
            field,
            message,
        } => format!(
            "set aside task {} (node group {}): refused {}",
            a.task_id,
            a.node_group,
            refusal_text(code, field, message, None)
        ),
    }
}

/// Replays what the spool holds, printing progress (to stderr when `quiet`
/// keeps stdout for other output) and the jobs set aside. Returns whether
/// the spool is empty now.
async fn replay_spool(spooling: &SpoolingClient, quiet: bool) -> Result<bool, CliError> {
    let before = spooling.depth();
    if before == 0 {
        return Ok(true);
    }
    let mut events = spooling.events();
    let say = move |line: String| {
        if quiet {
            eprintln!("jobclient: {line}");
        } else {
            println!("{line}");
        }
    };
    say(format!("replay: {before} jobs in the spool"));
    let result = spooling
        .replay_with(|p| {
            say(format!(
                "replay: {} replayed, {} already stored, {} set aside, {} left",
                p.replayed, p.already_stored, p.set_aside, p.remaining
            ))
        })
        .await;
    while let Ok(event) = events.try_recv() {
        if let SpoolEvent::SetAside(a) = event {
            say(aside_text(&a));
        }
    }
    match result {
        Ok(p) => {
            say(format!(
                "replay done: {} replayed, {} already stored, {} set aside; the spool holds {}",
                p.replayed, p.already_stored, p.set_aside, p.remaining
            ));
            Ok(true)
        }
        Err(e) if e.is_unavailable() => {
            say(format!(
                "replay stopped, the spool holds {}: {e}",
                spooling.depth()
            ));
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Replays until the spool is empty: again every `interval` while no
/// JobTracker is reachable.
async fn replay_until_empty(
    spooling: &SpoolingClient,
    quiet: bool,
    interval: Duration,
) -> Result<(), CliError> {
    let mut said = false;
    while !replay_spool(spooling, quiet).await? {
        if !said {
            eprintln!(
                "jobclient: no JobTracker reachable; replaying again every {} until the spool is empty",
                humantime::format_duration(interval)
            );
            said = true;
        }
        tokio::time::sleep(interval).await;
    }
    Ok(())
}

/// `submit --spool DIR`: replays the spool, then submits; jobs no tracker
/// accepts are spooled. With `--until-empty`, then replays until the spool
/// is empty.
async fn submit_spooled(
    client: &JobClient,
    a: SubmitArgs,
    dir: &std::path::Path,
    json: bool,
) -> Result<u8, CliError> {
    let jobs = submit_jobs(&a)?;
    let spooling = open_spool(client, dir, &a.spool_limits)?;
    let result = async {
        replay_spool(&spooling, true).await?;
        let outcomes = match spooling.submit(jobs).await {
            Ok(outcomes) => outcomes,
            Err(e @ Error::SpoolFull { .. }) => {
                eprintln!(
                    "jobclient: a larger spool takes --spool-max-entries or --spool-max-bytes \
                     (JOBCLIENT_SPOOL_MAX_ENTRIES, JOBCLIENT_SPOOL_MAX_BYTES)"
                );
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        if json {
            print_json(&submit_json(&outcomes))?;
        } else {
            print(&submit_text(&outcomes))?;
        }
        let spooled = outcomes
            .iter()
            .filter(|o| matches!(o, crate::SubmitOutcome::Spooled { .. }))
            .count();
        if spooled > 0 {
            eprintln!(
                "jobclient: {spooled} jobs spooled in {}; the spool holds {}",
                dir.display(),
                spooling.depth()
            );
        }
        let refused = outcomes
            .iter()
            .filter(|o| matches!(o, crate::SubmitOutcome::Refused(_)))
            .count();
        if refused > 0 {
            eprintln!(
                "jobclient: {refused} of {} jobs were refused",
                outcomes.len()
            );
            return Ok(EXIT_JOB_FAILED);
        }
        if a.until_empty {
            replay_until_empty(&spooling, true, SpoolOptions::default().replay_interval).await?;
        }
        Ok(EXIT_OK)
    }
    .await;
    spooling.close().await?;
    result
}

/// `spool status|replay|purge`.
async fn spool(client: &JobClient, a: SpoolArgs, json: bool) -> Result<u8, CliError> {
    match a.command {
        SpoolCommand::Status(SpoolDirArgs {
            spool: dir,
            spool_limits,
        }) => {
            let spooling = open_spool(client, &dir, &spool_limits)?;
            let status = spooling.status();
            let aside = spooling.set_aside()?;
            spooling.close().await?;
            if json {
                let mut v = serde_json::to_value(&status).unwrap_or(Value::Null);
                if let Value::Object(map) = &mut v {
                    map.insert(
                        "set_aside_jobs".into(),
                        serde_json::to_value(&aside).unwrap_or(Value::Null),
                    );
                }
                print_json(&v)?;
            } else {
                let oldest = status
                    .oldest_ms
                    .map(lts_common::format_ms)
                    .unwrap_or_else(|| "-".into());
                let mut out = format!(
                    "spool {}\nentries: {}\noldest: {oldest}\nsize on disk: {} bytes\nset aside: {}\n",
                    dir.display(),
                    status.entries,
                    status.disk_bytes,
                    status.set_aside
                );
                for a in &aside {
                    out.push_str(&aside_text(a));
                    out.push('\n');
                }
                print(&out)?;
            }
            Ok(EXIT_OK)
        }
        SpoolCommand::Replay(SpoolReplayArgs {
            spool: dir,
            spool_limits,
            until_empty,
        }) => {
            let spooling = open_spool(client, &dir, &spool_limits)?;
            let emptied = if until_empty {
                replay_until_empty(&spooling, json, SpoolOptions::default().replay_interval)
                    .await
                    .map(|()| true)
            } else {
                replay_spool(&spooling, json).await
            };
            let status = spooling.status();
            spooling.close().await?;
            let emptied = emptied?;
            if json {
                print_json(&serde_json::to_value(&status.progress).unwrap_or(Value::Null))?;
            }
            Ok(if emptied { EXIT_OK } else { EXIT_TRACKER })
        }
        SpoolCommand::Purge(SpoolPurgeArgs {
            spool: dir,
            spool_limits,
            yes,
        }) => {
            if !yes {
                use std::io::IsTerminal;
                if !std::io::stdin().is_terminal() {
                    return Err(CliError::Usage(format!(
                        "spool purge: refusing to purge {} without confirmation; pass --yes",
                        dir.display()
                    )));
                }
            }
            let spooling = open_spool(client, &dir, &spool_limits)?;
            if !yes {
                let status = spooling.status();
                eprint!(
                    "purge {} spooled and {} set-aside jobs from {}? [y/N] ",
                    status.entries,
                    status.set_aside,
                    dir.display()
                );
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    spooling.close().await?;
                    print("nothing purged\n")?;
                    return Ok(EXIT_OK);
                }
            }
            let purged = spooling.purge().await;
            spooling.close().await?;
            print(&format!("purged {} jobs from {}\n", purged?, dir.display()))?;
            Ok(EXIT_OK)
        }
    }
}

async fn get(client: &JobClient, a: GetArgs, json: bool) -> Result<u8, CliError> {
    let job = match (&a.job_id, &a.task_id, &a.node_group) {
        (Some(id), _, _) => client.get(id).await?,
        (None, Some(task_id), Some(group)) => client.get_by_task(task_id, group).await?,
        _ => {
            return Err(CliError::Usage(
                "say a job id, or --task-id with --node-group".into(),
            ))
        }
    };
    let log = if a.log {
        Some(client.log(&job.job_id).await?)
    } else {
        None
    };
    if json {
        let mut v = job_json(&job);
        if let (Some(log), Value::Object(map)) = (&log, &mut v) {
            map.insert("log".into(), log_json(log));
        }
        print_json(&v)?;
    } else {
        print(&job_text(&job))?;
        if let Some(log) = &log {
            print(&format!("\n{}", log_text(log)))?;
        }
    }
    Ok(EXIT_OK)
}

async fn logs(client: &JobClient, a: LogsArgs, json: bool) -> Result<u8, CliError> {
    let query = crate::LogQuery {
        job_id: a.job_id,
        task_id: a.task_id,
        node_group: a.node_group,
        since_ms: a.since,
        until_ms: a.until,
    };
    let page = client
        .query_logs(&query, a.limit, a.page_token.as_deref())
        .await?;
    if json {
        let mut lines = log_json(&page.entries);
        if let Value::Array(items) = &mut lines {
            for (item, e) in items.iter_mut().zip(&page.entries) {
                if let Value::Object(map) = item {
                    map.insert("job_id".into(), Value::String(e.job_id.clone()));
                }
            }
        }
        print_json(&serde_json::json!({
            "entries": lines,
            "next_page_token": page.next_page_token,
        }))?;
    } else {
        let headers = log_headers(client, &page.entries).await;
        let mut text = String::new();
        let mut start = 0;
        // One table per job, under its id and task id.
        while start < page.entries.len() {
            let job = &page.entries[start].job_id;
            let end = page.entries[start..]
                .iter()
                .position(|e| &e.job_id != job)
                .map_or(page.entries.len(), |n| start + n);
            let header = headers
                .get(job)
                .cloned()
                .unwrap_or_else(|| format!("job {job}"));
            text.push_str(&format!(
                "{header}\n{}\n",
                log_text(&page.entries[start..end])
            ));
            start = end;
        }
        if page.entries.is_empty() {
            text.push_str("no log lines match\n");
        }
        let mut text = text.trim_end().to_string();
        text.push('\n');
        if let Some(t) = &page.next_page_token {
            text.push_str(&next_page_footer("logs", t));
        }
        print(&text)?;
    }
    Ok(EXIT_OK)
}

/// The header of each job's table in `logs`: its job id, task id and node
/// group. A job that cannot be read (deleted since) keeps only its id.
async fn log_headers(
    client: &JobClient,
    entries: &[lts_common::LogEntry],
) -> HashMap<String, String> {
    let mut ids: Vec<String> = entries.iter().map(|e| e.job_id.clone()).collect();
    ids.dedup();
    stream::iter(ids)
        .map(|id| async move {
            let header = match client.get(&id).await {
                Ok(job) => format!(
                    "job {id} (task {}, node group {})",
                    job.spec.task_id, job.spec.task_tracker_node_group
                ),
                Err(_) => format!("job {id}"),
            };
            (id, header)
        })
        .buffer_unordered(POLL_CONCURRENCY)
        .collect()
        .await
}

/// The line under a page that has a next one; the same form for every
/// paged command.
fn next_page_footer(command: &str, token: &str) -> String {
    format!("next page: jobclient {command} --page-token {token} (with the same filters)\n")
}

async fn list(client: &JobClient, a: ListArgs, json: bool) -> Result<u8, CliError> {
    let filter = JobFilter {
        node_group: a.node_group,
        state: a.state,
        task_id_prefix: a.task_id_prefix,
        kind: a.kind,
        include_payload: a.include_payload,
    };
    let page = client
        .list(&filter, a.limit, a.page_token.as_deref())
        .await?;
    if json {
        print_json(&serde_json::json!({
            "jobs": page.jobs.iter().map(job_json).collect::<Vec<_>>(),
            "next_page_token": page.next_page_token,
        }))?;
    } else {
        print(&jobs_text(&page.jobs))?;
        if let Some(token) = &page.next_page_token {
            print(&next_page_footer("list", token))?;
        }
    }
    Ok(EXIT_OK)
}

async fn wait(client: &JobClient, a: WaitArgs, json: bool) -> Result<u8, CliError> {
    let job_ids = read_job_ids(a.job_ids)?;
    let deadline = Instant::now() + a.timeout;
    let mut finished: HashMap<String, Job> = HashMap::new();
    let mut pending: Vec<String> = job_ids.clone();
    let mut interval = Duration::from_millis(100);
    let mut last_state: HashMap<String, &'static str> = HashMap::new();
    loop {
        let results: Vec<(String, Result<Job, Error>)> = stream::iter(pending.clone())
            .map(|id| async move {
                let r = client.get(&id).await;
                (id, r)
            })
            .buffer_unordered(POLL_CONCURRENCY)
            .collect()
            .await;
        for (id, result) in results {
            match result {
                Ok(job) if job.state.is_final() => {
                    finished.insert(id, job);
                }
                Ok(job) => {
                    last_state.insert(id, job.state.name());
                }
                // Keep waiting through a tracker failover; give up only at
                // the deadline.
                Err(e) if e.is_unavailable() => {
                    tracing::warn!("{e}; still waiting");
                }
                Err(e) => return Err(e.into()),
            }
        }
        pending.retain(|id| !finished.contains_key(id));
        if pending.is_empty() {
            break;
        }
        if Instant::now() + interval > deadline {
            let waiting: Vec<String> = pending
                .iter()
                .take(10)
                .map(|id| {
                    format!(
                        "{id} ({})",
                        last_state.get(id).copied().unwrap_or("unknown")
                    )
                })
                .collect();
            let more = if pending.len() > 10 {
                format!(" and {} more", pending.len() - 10)
            } else {
                String::new()
            };
            return Err(CliError::Timeout(format!(
                "timed out after {}: {} of {} jobs not finished: {}{more}",
                humantime::format_duration(a.timeout),
                pending.len(),
                job_ids.len(),
                waiting.join(", ")
            )));
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(MAX_POLL_INTERVAL);
    }
    let jobs: Vec<&Job> = job_ids.iter().filter_map(|id| finished.get(id)).collect();
    if json {
        print_json(&Value::Array(jobs.iter().map(|j| job_json(j)).collect()))?;
    } else {
        let mut out = String::new();
        for j in &jobs {
            out.push_str(&format!(
                "{} {} attempt {}: {}\n",
                j.job_id,
                j.state.name(),
                j.attempt,
                j.last_outcome
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "-".into())
            ));
        }
        print(&out)?;
    }
    let all_succeeded = jobs
        .iter()
        .all(|j| j.state == lts_common::JobState::Succeeded);
    Ok(if all_succeeded {
        EXIT_OK
    } else {
        EXIT_JOB_FAILED
    })
}

/// Job ids from arguments; a lone `-` reads them from stdin.
fn read_job_ids(args: Vec<String>) -> Result<Vec<String>, CliError> {
    let mut ids = Vec::new();
    for arg in args {
        if arg == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| CliError::Usage(format!("cannot read job ids from stdin: {e}")))?;
            ids.extend(text.split_whitespace().map(str::to_string));
        } else {
            ids.push(arg);
        }
    }
    if ids.is_empty() {
        return Err(CliError::Usage("no job ids to wait for".into()));
    }
    Ok(ids)
}

async fn feedback(client: &JobClient, a: FeedbackArgs, json: bool) -> Result<u8, CliError> {
    let deadline = a.timeout.map(|t| Instant::now() + t);
    let until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_deadline);
    let timed_out = |seen: usize| {
        CliError::Timeout(format!(
            "timed out after {}: {seen} of {} feedback items received",
            humantime::format_duration(a.timeout.unwrap_or_default()),
            a.count
        ))
    };
    let mut subscription = loop {
        tokio::select! {
            r = client.feedback(&a.submit_node_group, &a.client_id) => match r {
                Ok(s) => break s,
                Err(e) if e.is_unavailable() && deadline.is_some() => {
                    tracing::warn!("{e}; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e.into()),
            },
            _ = &mut until_deadline => return Err(timed_out(0)),
        }
    };
    let mut seen: HashSet<String> = HashSet::new();
    let read = read_feedback(
        &mut subscription,
        &a,
        json,
        &mut seen,
        until_deadline.as_mut(),
    )
    .await;
    // Whatever ended the read, the acks of what was printed must reach the
    // tracker before the process exits, or the same items come back on the
    // next run.
    let finished = subscription.finish().await;
    match (read, finished) {
        (Ok(()), Ok(())) => Ok(EXIT_OK),
        (Ok(()), Err(e)) => Err(e.into()),
        (Err(ReadEnd::TimedOut), finished) => {
            if let Err(e) = finished {
                eprintln!("jobclient: {e}");
            }
            Err(timed_out(seen.len()))
        }
        (Err(ReadEnd::Failed(e)), finished) => {
            if let Err(f) = finished {
                eprintln!("jobclient: {f}");
            }
            Err(e)
        }
    }
}

/// Why [`read_feedback`] stopped before its count.
enum ReadEnd {
    TimedOut,
    Failed(CliError),
}

/// Prints and acks feedback until `a.count` distinct items were printed.
/// Items past the count are not acked, so they stay for the next reader.
async fn read_feedback(
    subscription: &mut FeedbackSubscription,
    a: &FeedbackArgs,
    json: bool,
    seen: &mut HashSet<String>,
    mut until_deadline: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<(), ReadEnd> {
    let wanted = |seen: &HashSet<String>| a.count == 0 || (seen.len() as u64) < a.count;
    while wanted(seen) {
        let batch = tokio::select! {
            r = subscription.next() => r,
            _ = until_deadline.as_mut() => return Err(ReadEnd::TimedOut),
        };
        let batch = match batch {
            Ok(batch) => batch,
            // The subscription reconnects on the next call; a tracker
            // failover should not end a long read.
            Err(e) if e.is_unavailable() => {
                tracing::warn!("{e}; trying again");
                continue;
            }
            Err(e) => return Err(ReadEnd::Failed(e.into())),
        };
        let mut out = String::new();
        let mut ids = Vec::with_capacity(batch.len());
        for item in batch {
            if seen.contains(&item.feedback_id) {
                // Redelivered: acked again but printed once.
                ids.push(item.feedback_id);
                continue;
            }
            if !wanted(seen) {
                continue;
            }
            if json {
                out.push_str(&feedback_json(&item).to_string());
            } else {
                out.push_str(&feedback_text(&item));
            }
            out.push('\n');
            seen.insert(item.feedback_id.clone());
            ids.push(item.feedback_id);
        }
        print(&out).map_err(ReadEnd::Failed)?;
        if let Err(e) = subscription.ack(ids).await {
            tracing::warn!("{e}");
        }
    }
    Ok(())
}

fn print(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn print_json(v: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(v).map_err(std::io::Error::other)?;
    print(&format!("{text}\n"))
}
