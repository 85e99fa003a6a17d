//! The JobClient spool with the real binaries as separate processes: a
//! `jobclient submit --spool --until-empty` process that spooled its jobs
//! while the JobTracker is down is killed with SIGKILL while it holds the
//! spool; a replay killed while the tracker stalls loses nothing either;
//! the client started again replays once the tracker serves, every job
//! exists once and a TaskTracker runs them all.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lts_jobclient::JobClient;
use lts_tests::{binary, wait_all_succeeded, Cluster, TRACKER};

const JOBS: usize = 500;
const GROUP: &str = "spooled";
/// How long a client process may take to reach a point it logs.
const LOG_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `jobclient` against `tracker`; returns (success, stdout, stderr).
fn jobclient(tracker: &str, args: &[&str]) -> Result<(bool, String, String)> {
    let out = Command::new(binary("jobclient")?)
        .arg("--jobtracker")
        .arg(tracker)
        .args(args)
        .output()
        .context("running jobclient")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn spool_status(tracker: &str, spool: &Path) -> Result<serde_json::Value> {
    let spool = spool.display().to_string();
    let (ok, out, err) = jobclient(tracker, &["spool", "status", "--spool", &spool, "--json"])?;
    if !ok {
        bail!("jobclient spool status failed: {err}");
    }
    Ok(serde_json::from_str(&out)?)
}

/// Waits until the log of the client process `name` satisfies `done`,
/// while the process runs.
async fn wait_for_client_log(
    cluster: &mut Cluster,
    name: &str,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + LOG_TIMEOUT;
    loop {
        let log = cluster.procs_log(name);
        if done(&log) {
            return Ok(());
        }
        anyhow::ensure!(
            cluster.proc(name)?.exited().is_none(),
            "{name} exited before {what}; its log:\n{log}"
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name}: never {what}; its log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A second process on the spool is refused, naming it: the one running
/// holds it.
fn assert_spool_held(tracker: &str, spool: &str) -> Result<()> {
    let (ok, _, refusal) = jobclient(tracker, &["spool", "status", "--spool", spool])?;
    assert!(!ok && refusal.contains("in use"), "{refusal}");
    assert!(refusal.contains(spool), "{refusal}");
    Ok(())
}

#[tokio::test]
async fn jobs_spooled_while_the_tracker_is_down_exist_once_and_run_after_the_client_is_killed(
) -> Result<()> {
    let mut cluster = Cluster::new()?;
    // The tracker's address is fixed by its first start; it then goes down.
    cluster.start_tracker(&[])?;
    let tracker = cluster.tracker_url()?;
    cluster.proc(TRACKER)?.terminate(Duration::from_secs(20))?;

    // A client process submits while no tracker is up: every job is
    // spooled, and the process stays to replay them.
    let spool = cluster.dir().join("client-spool");
    let spool_arg = spool.display().to_string();
    let count = JOBS.to_string();
    let submitter_args: Vec<String> = [
        "--jobtracker",
        tracker.as_str(),
        "submit",
        "--spool",
        spool_arg.as_str(),
        "--until-empty",
        "-g",
        GROUP,
        "--task-id-prefix",
        "s-",
        "--count",
        count.as_str(),
        "--payload",
        "spooled job",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    cluster.spawn("submitter", "jobclient", &submitter_args)?;
    let holds_all = format!("the spool holds {JOBS}");
    wait_for_client_log(&mut cluster, "submitter", "spooled its jobs", |log| {
        log.contains(&holds_all)
    })
    .await?;
    let log = cluster.procs_log("submitter");
    let spooled = log.lines().filter(|l| l.starts_with("spooled ")).count();
    assert_eq!(spooled, JOBS, "every job spooled: {log}");
    // The submitter runs on, holding the spool; it is killed there.
    assert_spool_held(&tracker, &spool_arg)?;
    anyhow::ensure!(
        cluster.proc("submitter")?.exited().is_none(),
        "the submitter exited with its jobs spooled; its log:\n{log}"
    );
    cluster.proc("submitter")?.kill9();
    let status = spool_status(&tracker, &spool)?;
    assert_eq!(status["entries"], JOBS, "{status}");

    // The tracker comes back but stalls: a replay connects and waits while
    // it holds the spool, and is killed with SIGKILL there.
    cluster.spawn_tracker(TRACKER, &[])?;
    cluster.wait_healthy(TRACKER)?;
    cluster.proc(TRACKER)?.freeze()?;
    let replay_args = |until_empty: bool| {
        let mut args = vec![
            "--jobtracker".to_string(),
            tracker.clone(),
            "--connect-timeout".into(),
            "60s".into(),
            "spool".into(),
            "replay".into(),
            "--spool".into(),
            spool_arg.clone(),
        ];
        if until_empty {
            args.push("--until-empty".into());
        }
        args
    };
    cluster.spawn("replayer", "jobclient", &replay_args(false))?;
    // Once the replayer says what the spool holds it holds the spool (it
    // opened it first).
    wait_for_client_log(&mut cluster, "replayer", "held the spool", |log| {
        log.contains("jobs in the spool")
    })
    .await?;
    assert_spool_held(&tracker, &spool_arg)?;
    cluster.proc("replayer")?.kill9();

    // The client starts again while the tracker still stalls, then the
    // tracker serves: the client replays until its spool is empty.
    cluster.spawn("client-again", "jobclient", &replay_args(true))?;
    wait_for_client_log(&mut cluster, "client-again", "held the spool", |log| {
        log.contains("jobs in the spool")
    })
    .await?;
    cluster.proc(TRACKER)?.thaw()?;
    cluster.start_task_tracker_on(TRACKER, "tt", GROUP, 16, &[], &["--runner", "noop"])?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let exit = loop {
        if let Some(status) = cluster.proc("client-again")?.exited() {
            break status;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the client never emptied its spool; its log:\n{}\n{}",
            cluster.procs_log("client-again"),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = cluster.procs_log("client-again");
    assert!(exit.success(), "{exit}: {log}");
    assert!(log.contains("replay done"), "{log}");
    assert!(!log.contains("set aside task"), "{log}");
    let status = spool_status(&tracker, &spool)?;
    assert_eq!(status["entries"], 0, "{status}");

    let client = JobClient::connect(vec![tracker.clone()]).await?;
    let jobs = wait_all_succeeded(&client, GROUP, JOBS, Duration::from_secs(120)).await?;
    let mut task_ids: Vec<&str> = jobs.iter().map(|j| j.spec.task_id.as_str()).collect();
    task_ids.sort_unstable();
    task_ids.dedup();
    assert_eq!(task_ids.len(), JOBS, "each job exists once");
    Ok(())
}
