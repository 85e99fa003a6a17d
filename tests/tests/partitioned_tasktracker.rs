//! A TaskTracker cut off from its JobTracker by the network (not stopped,
//! not killed: it runs on, and so do its programs). The JobTracker gives
//! it up after three heartbeat intervals of silence and its runs run again
//! on another TaskTracker of the group under a new attempt; once the
//! network is back, the cut-off TaskTracker's outcomes for the old
//! attempts are refused and written to those jobs' execution logs, and
//! the jobs keep the results of the attempts that replaced them.
//!
//! TaskTracker A reaches the JobTracker through a [`Proxy`], B directly.
//! Every run appends `<task id> <attempt> <TaskTracker pid>` to a ledger.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use lts_common::{JobSpec, JobState, LogKind, Outcome};
use lts_jobclient::JobClient;
use lts_tests::proxy::Proxy;
use lts_tests::{departures, joins, wait_all_succeeded, wait_until, Cluster, TRACKER};

/// The TaskTracker behind the proxy, and the one connected directly.
const CUT: &str = "tt-cut";
const DIRECT: &str = "tt-direct";
const GROUP: &str = "g";
/// Bound on every wait for an effect.
const WAIT: Duration = Duration::from_secs(60);

/// A program for the shell runner: appends `<task id> <attempt> <pid of
/// the TaskTracker that started it>` to the ledger named by its first
/// argument, then sleeps for its second.
fn recorder(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("record.sh");
    std::fs::write(
        &path,
        "#!/bin/sh\n\
         # $1 ledger, $2 seconds to sleep\n\
         echo \"$LTS_TASK_ID $LTS_ATTEMPT $PPID\" >> \"$1\"\n\
         sleep \"$2\"\n",
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// One line of the ledger: one run.
#[derive(Clone, Debug)]
struct Run {
    task: String,
    attempt: u32,
    /// Pid of the TaskTracker that started it.
    by: u32,
}

fn ledger(path: &Path) -> Vec<Run> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            Some(Run {
                task: it.next()?.to_string(),
                attempt: it.next()?.parse().ok()?,
                by: it.next()?.parse().ok()?,
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_tracker_cut_off_has_its_runs_taken_over_and_its_late_outcomes_refused() -> Result<()>
{
    const JOBS: usize = 6;
    let mut cluster = Cluster::new()?;
    let program = recorder(cluster.dir())?;
    let ledger_path = cluster.dir().join("ledger.txt");
    // The harness starts the JobTracker with 500 ms heartbeats: it gives
    // a silent TaskTracker up after 1.5 s.
    cluster.start_tracker(&[])?;
    let tracker_addr: SocketAddr = cluster
        .tracker_url()?
        .trim_start_matches("http://")
        .parse()
        .context("the JobTracker's address")?;
    let proxy = Proxy::start(tracker_addr)?;
    let allow = program.display().to_string();
    let args: Vec<String> = [
        "--node-group",
        GROUP,
        "--jobtracker",
        &proxy.url(),
        "--slots",
        "3",
        "--identity",
        CUT,
        "--allow",
        &allow,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cluster.spawn(CUT, "tasktracker", &args)?;
    cluster.wait_joined(TRACKER, CUT)?;
    cluster.start_task_tracker(DIRECT, GROUP, 3, &[&allow])?;
    let cut_pid = cluster.proc(CUT)?.id();
    let direct_pid = cluster.proc(DIRECT)?.id();
    let client = JobClient::connect(vec![cluster.tracker_url()?]).await?;

    let specs = (0..JOBS)
        .map(|n| {
            let mut spec = JobSpec::new(format!("job-{n}"), GROUP);
            spec.payload = serde_json::json!({
                "program": allow,
                "args": [ledger_path.display().to_string(), "2"],
            })
            .to_string()
            .into_bytes();
            spec
        })
        .collect();
    for r in client.submit(specs).await? {
        r.job_id().with_context(|| format!("refused: {r:?}"))?;
    }

    // Cut the network once the TaskTracker behind the proxy runs some.
    let path = ledger_path.clone();
    wait_until(WAIT, "runs starting behind the proxy", || {
        let n = ledger(&path).iter().filter(|r| r.by == cut_pid).count();
        async move {
            Ok(if n >= 1 {
                Ok(())
            } else {
                Err(format!("{n} started there"))
            })
        }
    })
    .await
    .with_context(|| cluster.logs())?;
    proxy.cut();
    // What it had started by then (a run starts within the program's
    // first instant; one dispatched just before the cut may start later
    // and is counted with these when the test looks again below).
    let cut_off: BTreeMap<String, u32> = ledger(&ledger_path)
        .into_iter()
        .filter(|r| r.by == cut_pid)
        .map(|r| (r.task, r.attempt))
        .collect();
    assert!(!cut_off.is_empty());

    // Each of them runs again on the direct TaskTracker, under a later
    // attempt.
    let path = ledger_path.clone();
    let wanted = cut_off.clone();
    wait_until(WAIT, "the cut-off runs running again directly", || {
        let runs = ledger(&path);
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(task, attempt)| {
                !runs
                    .iter()
                    .any(|r| &&r.task == task && r.by == direct_pid && r.attempt > **attempt)
            })
            .map(|(task, _)| task.clone())
            .collect();
        async move {
            Ok(if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("not taken over yet: {missing:?}"))
            })
        }
    })
    .await
    .with_context(|| cluster.logs())?;

    let jobs = wait_all_succeeded(&client, GROUP, JOBS, WAIT)
        .await
        .with_context(|| cluster.logs())?;

    // Every run the cut-off TaskTracker started, including any begun
    // after the cut (it may have been sent just before).
    let cut_runs: BTreeMap<String, u32> = ledger(&ledger_path)
        .into_iter()
        .filter(|r| r.by == cut_pid)
        .map(|r| (r.task, r.attempt))
        .collect();
    let by_task: BTreeMap<&str, &lts_common::Job> =
        jobs.iter().map(|j| (j.spec.task_id.as_str(), j)).collect();

    // Heal the network: the cut-off TaskTracker connects again and reports
    // its late outcomes; each is refused and logged in its job's log.
    proxy.restore();
    for (task, attempt) in &cut_runs {
        let job = by_task
            .get(task.as_str())
            .with_context(|| format!("no job for task {task}"))?;
        let job_id = job.job_id.clone();
        let attempt = *attempt;
        let client = &client;
        let refusal = wait_until(
            WAIT,
            &format!("the late outcome of {task} attempt {attempt} being refused"),
            || {
                let job_id = job_id.clone();
                async move {
                    let log = client.log(&job_id).await?;
                    Ok(log
                        .iter()
                        .find(|e| {
                            e.kind == LogKind::StaleOutcome
                                && e.attempt == attempt
                                && e.worker == CUT
                        })
                        .map(|e| e.message.clone())
                        .ok_or_else(|| {
                            format!(
                                "log: {:?}",
                                log.iter()
                                    .map(|e| (e.kind, e.attempt, e.worker.clone()))
                                    .collect::<Vec<_>>()
                            )
                        }))
                }
            },
        )
        .await
        .with_context(|| cluster.logs())?;
        assert!(
            refusal.contains(&format!("of attempt {attempt} refused")),
            "{task}: {refusal}"
        );
        // The job keeps the result of the attempt that replaced the
        // cut-off one: the direct TaskTracker's.
        let now = client.get(&job_id).await?;
        assert_eq!(now.state, JobState::Succeeded, "{task}");
        assert!(now.attempt > attempt, "{task}: {now:?}");
        assert!(
            matches!(now.last_outcome, Some(Outcome::Success(_))),
            "{task}: {now:?}"
        );
        // The outcomes the job's log counts are the direct TaskTracker's,
        // for the current attempt; none is the cut-off one's.
        let log = client.log(&job_id).await?;
        let counted: Vec<(u32, &str)> = log
            .iter()
            .filter(|e| e.kind == LogKind::Outcome)
            .map(|e| (e.attempt, e.worker.as_str()))
            .collect();
        assert_eq!(counted, vec![(now.attempt, DIRECT)], "{task}: {log:?}");
    }
    // The JobTracker gave the cut-off TaskTracker up because it went
    // silent (the proxy closed nothing during the cut), and took it back
    // once the network was healed.
    let tracker_log = cluster.procs_log(TRACKER);
    let field = format!("worker={CUT}");
    let left: Vec<&str> = tracker_log
        .lines()
        .filter(|l| l.contains("TaskTracker left"))
        .filter(|l| l.split_whitespace().any(|w| w == field))
        .collect();
    assert!(
        left.first().is_some_and(|l| l.contains("silent for")),
        "the JobTracker did not give {CUT} up for its silence: {left:?}"
    );
    assert_eq!(departures(&tracker_log, DIRECT), 0, "{DIRECT} was given up");
    assert!(
        joins(&tracker_log, CUT) >= 2,
        "{CUT} did not join again after the network was healed"
    );
    eprintln!(
        "{} of {JOBS} jobs were running behind the proxy when it was cut: {cut_runs:?}; \
         the proxy accepted {} connections",
        cut_runs.len(),
        proxy.accepted()
    );
    Ok(())
}
