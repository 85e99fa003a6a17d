//! The JobClient spool with the real binaries as separate processes: jobs
//! submitted with `jobclient submit --spool` while the JobTracker is down
//! are spooled; a client process killed with SIGKILL while it holds the
//! spool loses nothing; once the tracker is back, `jobclient spool
//! replay` stores every job once and a TaskTracker runs them all.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lts_jobclient::JobClient;
use lts_tests::{binary, wait_all_succeeded, Cluster, TRACKER};

const JOBS: usize = 500;
const GROUP: &str = "spooled";

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

#[tokio::test]
async fn jobs_spooled_while_the_tracker_is_down_exist_once_and_run_after_a_client_is_killed(
) -> Result<()> {
    let mut cluster = Cluster::new()?;
    // The tracker's address is fixed by its first start; it then goes down.
    cluster.start_tracker(&[])?;
    let tracker = cluster.tracker_url()?;
    cluster.proc(TRACKER)?.terminate(Duration::from_secs(20))?;

    let spool = cluster.dir().join("client-spool");
    let spool_arg = spool.display().to_string();
    let count = JOBS.to_string();
    let (ok, out, err) = jobclient(
        &tracker,
        &[
            "submit",
            "--spool",
            &spool_arg,
            "-g",
            GROUP,
            "--task-id-prefix",
            "s-",
            "--count",
            &count,
            "--payload",
            "spooled job",
        ],
    )?;
    anyhow::ensure!(ok, "submit --spool failed: {err}");
    let spooled = out.lines().filter(|l| l.starts_with("spooled ")).count();
    assert_eq!(spooled, JOBS, "every job spooled: {out}{err}");
    assert!(err.contains(&format!("the spool holds {JOBS}")), "{err}");
    let status = spool_status(&tracker, &spool)?;
    assert_eq!(status["entries"], JOBS, "{status}");

    // The tracker comes back but stalls: a replay connects and waits while
    // it holds the spool, and is killed with SIGKILL there.
    cluster.spawn_tracker(TRACKER, &[])?;
    cluster.wait_healthy(TRACKER)?;
    cluster.proc(TRACKER)?.freeze()?;
    let replayer_args = [
        "--jobtracker".to_string(),
        tracker.clone(),
        "--connect-timeout".into(),
        "60s".into(),
        "spool".into(),
        "replay".into(),
        "--spool".into(),
        spool_arg.clone(),
    ];
    cluster.spawn("replayer", "jobclient", &replayer_args)?;
    // Once the replayer says what the spool holds it holds the spool (it
    // opened it first); a second process on the same spool is refused,
    // naming it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !cluster.procs_log("replayer").contains("jobs in the spool") {
        anyhow::ensure!(
            cluster.proc("replayer")?.exited().is_none(),
            "the replayer exited before it held the spool; its log:\n{}",
            cluster.procs_log("replayer")
        );
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the replayer never held the spool; its log:\n{}",
            cluster.procs_log("replayer")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, _, refusal) = jobclient(&tracker, &["spool", "status", "--spool", &spool_arg])?;
    assert!(!ok && refusal.contains("in use"), "{refusal}");
    assert!(refusal.contains(&spool_arg), "{refusal}");
    cluster.proc("replayer")?.kill9();
    cluster.proc(TRACKER)?.thaw()?;

    cluster.start_task_tracker_on(TRACKER, "tt", GROUP, 16, &[], &["--runner", "noop"])?;
    let (ok, out, err) = jobclient(&tracker, &["spool", "replay", "--spool", &spool_arg])?;
    anyhow::ensure!(ok, "spool replay failed: {err}{out}\n{}", cluster.logs());
    assert!(out.contains("replay done"), "{out}");
    assert!(!out.contains("set aside task"), "{out}");
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
