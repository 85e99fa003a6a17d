//! The TaskTracker's spool on disk (`--spool-dir`), with the real binaries
//! as separate processes: runs that end while the JobTracker is down, a
//! TaskTracker killed with SIGKILL before it could deliver them, and what
//! reaches the JobTracker's execution logs after both come back.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use lts_common::{JobSpec, JobState, LogKind};
use lts_jobclient::JobClient;
use lts_tests::{sample, scrape, wait_all_succeeded, wait_until, Cluster, TRACKER};

/// Bound on every wait.
const WAIT: Duration = Duration::from_secs(60);
/// The runs of these tests take this long: long enough to kill the
/// JobTracker while every one of them is going.
const RUN_SECONDS: &str = "1.5";
const GROUP: &str = "spooled";
const UNACKED: &str = "lts_tasktracker_outcomes_unacked";
const ON_DISK: &str = "lts_tasktracker_outcomes_on_disk";

/// A program for the shell runner: records that it began, sleeps, logs a
/// line (a biz log line of the run) and records that it ended.
fn program(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("run.sh");
    std::fs::write(
        &path,
        "#!/bin/sh\n# $1 start record, $2 end record, $3 seconds to sleep\n\
         echo \"$LTS_TASK_ID $LTS_ATTEMPT\" >> \"$1\"\n\
         sleep \"$3\"\n\
         echo \"finished $LTS_TASK_ID attempt $LTS_ATTEMPT\"\n\
         echo \"$LTS_TASK_ID $LTS_ATTEMPT\" >> \"$2\"\n",
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

struct Setup {
    cluster: Cluster,
    program: PathBuf,
    started: PathBuf,
    ended: PathBuf,
    spool: PathBuf,
}

impl Setup {
    /// A JobTracker and a TaskTracker `tt-a` with a spool on disk.
    fn start() -> Result<Setup> {
        let mut cluster = Cluster::new()?;
        let program = program(cluster.dir())?;
        let started = cluster.dir().join("started.txt");
        let ended = cluster.dir().join("ended.txt");
        let spool = cluster.dir().join("tt-a-spool");
        cluster.start_tracker(&[])?;
        let mut setup = Setup {
            cluster,
            program,
            started,
            ended,
            spool,
        };
        let args = setup.spool_args();
        let allow = setup.program.display().to_string();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        setup
            .cluster
            .start_task_tracker_on(TRACKER, "tt-a", GROUP, 8, &[&allow], &args)?;
        Ok(setup)
    }

    fn spool_args(&self) -> Vec<String> {
        vec![
            "--spool-dir".into(),
            self.spool.display().to_string(),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
        ]
    }

    /// Starts `tt-a` again on its spool, without waiting for a JobTracker.
    fn restart_tt_a(&mut self) -> Result<()> {
        let mut args = vec![
            "--node-group".to_string(),
            GROUP.to_string(),
            "--jobtracker".to_string(),
            self.cluster.tracker_url()?,
            "--slots".to_string(),
            "8".to_string(),
            "--identity".to_string(),
            "tt-a".to_string(),
            "--allow".to_string(),
            self.program.display().to_string(),
        ];
        args.extend(self.spool_args());
        self.cluster.spawn("tt-a", "tasktracker", &args)
    }

    fn spec(&self, task_id: &str) -> JobSpec {
        let mut spec = JobSpec::new(task_id, GROUP);
        spec.payload = serde_json::json!({
            "program": self.program.display().to_string(),
            "args": [
                self.started.display().to_string(),
                self.ended.display().to_string(),
                RUN_SECONDS,
            ],
        })
        .to_string()
        .into_bytes();
        spec
    }

    /// A gauge of `tt-a`'s spool.
    fn gauge(&mut self, name: &str) -> Result<f64> {
        self.gauge_of("tt-a", name)
    }

    /// A gauge of TaskTracker `tt`.
    fn gauge_of(&mut self, tt: &str, name: &str) -> Result<f64> {
        let url = self.cluster.metrics_url(tt)?;
        sample(&scrape(&url)?, name).with_context(|| format!("no {name} at {url}"))
    }

    /// Waits until `tt-a`'s gauge `name` reads `n`.
    async fn wait_gauge(&mut self, name: &str, n: f64) -> Result<()> {
        wait_until(WAIT, &format!("tt-a's {name} at {n}"), || {
            let seen = self.gauge(name);
            async move {
                let seen = seen?;
                Ok(if seen == n {
                    Ok(())
                } else {
                    Err(format!("{name} {seen}"))
                })
            }
        })
        .await
    }

    /// Waits until `tt-a` keeps `n` outcomes unacknowledged.
    async fn wait_unacked(&mut self, n: f64) -> Result<()> {
        self.wait_gauge(UNACKED, n).await
    }
}

/// Lines in `record` (one per run that got there).
fn lines(record: &Path) -> usize {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .count()
}

async fn wait_lines(record: &Path, n: usize, what: &str) -> Result<()> {
    wait_until(WAIT, what, || async {
        let seen = lines(record);
        Ok(if seen >= n {
            Ok(())
        } else {
            Err(format!("{seen} of {n}"))
        })
    })
    .await
}

/// Submits `n` jobs, waits until every run began, kills the JobTracker,
/// waits until every run ended and `tt-a` has its outcome on disk, then
/// kills `tt-a`. Returns the job ids by task id.
async fn runs_end_while_the_jobtracker_is_down(
    s: &mut Setup,
    n: usize,
) -> Result<Vec<(String, String)>> {
    let client = JobClient::connect(vec![s.cluster.tracker_url()?]).await?;
    let specs: Vec<JobSpec> = (0..n).map(|i| s.spec(&format!("t-{i}"))).collect();
    let mut jobs = Vec::new();
    for (r, spec) in client.submit(specs.clone()).await?.iter().zip(&specs) {
        let id = r
            .job_id()
            .with_context(|| format!("submit refused: {r:?}"))?;
        jobs.push((spec.task_id.clone(), id.to_string()));
    }
    wait_lines(&s.started, n, "every run beginning").await?;
    s.cluster.proc(TRACKER)?.kill9();
    wait_lines(&s.ended, n, "every run ending while the JobTracker is down").await?;
    s.wait_unacked(n as f64).await?;
    // An outcome is spooled at once and on disk a flush later: only what
    // is on disk survives the kill.
    s.wait_gauge(ON_DISK, n as f64).await?;
    s.cluster.proc("tt-a")?.kill9();
    Ok(jobs)
}

fn restart_tracker(s: &mut Setup) -> Result<()> {
    s.cluster.spawn_tracker(TRACKER, &[])?;
    s.cluster.wait_healthy(TRACKER)
}

/// Whether `log` holds the biz line of attempt 1 of `task` and the record
/// of that attempt's outcome: applied when `applied`, refused as stale
/// otherwise; `Err` says what is missing.
fn attempt_one_delivered(
    task: &str,
    log: &[lts_common::LogEntry],
    applied: bool,
) -> Result<(), String> {
    let biz = log.iter().any(|e| {
        e.kind == LogKind::Biz
            && e.attempt == 1
            && e.message.contains(&format!("finished {task} attempt 1"))
            && e.worker == "tt-a"
    });
    let kind = if applied {
        LogKind::Outcome
    } else {
        LogKind::StaleOutcome
    };
    let outcome = log.iter().any(|e| e.attempt == 1 && e.kind == kind);
    match (biz, outcome) {
        (true, true) => Ok(()),
        _ => Err(format!(
            "{task}: biz line of attempt 1 {biz}, {} of attempt 1 {outcome}; log: {:?}",
            kind.name(),
            log.iter()
                .map(|e| format!("{}#{} {}", e.kind.name(), e.attempt, e.message))
                .collect::<Vec<_>>()
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_and_log_lines_of_runs_ended_while_the_jobtracker_was_down_survive_a_kill_9(
) -> Result<()> {
    const JOBS: usize = 4;
    let mut s = Setup::start()?;
    let jobs = runs_end_while_the_jobtracker_is_down(&mut s, JOBS).await?;

    // The TaskTracker comes back first, then the JobTracker on its data.
    s.restart_tt_a()?;
    restart_tracker(&mut s)?;
    s.cluster.wait_joined(TRACKER, "tt-a")?;
    let client = JobClient::connect(vec![s.cluster.tracker_url()?]).await?;
    wait_until(
        WAIT,
        "every run's log line and outcome in its log",
        || async {
            for (task, job_id) in &jobs {
                let log = client.log(job_id).await?;
                if let Err(missing) = attempt_one_delivered(task, &log, true) {
                    return Ok(Err(missing));
                }
            }
            Ok(Ok(()))
        },
    )
    .await
    .with_context(|| s.cluster.logs())?;
    // Every job ends succeeded by the run that ended while the JobTracker
    // was down: none ran again, and the spool is empty.
    wait_all_succeeded(&client, GROUP, JOBS, WAIT).await?;
    s.wait_unacked(0.0).await?;
    assert_eq!(lines(&s.started), JOBS, "a job ran again");
    for (_, job_id) in &jobs {
        let log = client.log(job_id).await?;
        assert!(
            !log.iter()
                .any(|e| e.kind == LogKind::Dispatched && e.attempt > 1),
            "{job_id} was handed out again: {log:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooled_outcome_of_an_attempt_run_again_elsewhere_is_refused_logged_and_dropped(
) -> Result<()> {
    const JOBS: usize = 2;
    let mut s = Setup::start()?;
    let jobs = runs_end_while_the_jobtracker_is_down(&mut s, JOBS).await?;

    // The JobTracker comes back and another TaskTracker runs the jobs
    // again before tt-a returns.
    restart_tracker(&mut s)?;
    let allow = s.program.display().to_string();
    s.cluster
        .start_task_tracker_on(TRACKER, "tt-b", GROUP, 4, &[&allow], &[])?;
    let client = JobClient::connect(vec![s.cluster.tracker_url()?]).await?;
    let done = wait_all_succeeded(&client, GROUP, JOBS, WAIT).await?;
    for job in &done {
        assert!(job.attempt > 1, "{job:?}");
    }

    s.restart_tt_a()?;
    s.cluster.wait_joined(TRACKER, "tt-a")?;
    wait_until(WAIT, "the stale outcomes refused and logged", || async {
        for (task, job_id) in &jobs {
            let log = client.log(job_id).await?;
            let refused = log
                .iter()
                .any(|e| e.kind == LogKind::StaleOutcome && e.attempt == 1);
            if !refused {
                return Ok(Err(format!("{task}: no refused outcome of attempt 1 yet")));
            }
            if let Err(missing) = attempt_one_delivered(task, &log, false) {
                return Ok(Err(missing));
            }
        }
        Ok(Ok(()))
    })
    .await
    .with_context(|| s.cluster.logs())?;
    // Refused outcomes leave the spool, and change nothing.
    s.wait_unacked(0.0).await?;
    for before in &done {
        let job = client.get(&before.job_id).await?;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        assert_eq!(job.attempt, before.attempt, "{job:?}");
        assert_eq!(job.last_outcome, before.last_outcome, "{job:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_tasktracker_on_one_spool_is_refused_and_a_damaged_spool_is_moved_aside(
) -> Result<()> {
    let mut s = Setup::start()?;
    // A second process on tt-a's spool directory exits with an error
    // naming it; tt-a goes on.
    let mut args = vec![
        "--node-group".to_string(),
        GROUP.to_string(),
        "--jobtracker".to_string(),
        s.cluster.tracker_url()?,
        "--identity".to_string(),
        "tt-second".to_string(),
    ];
    args.extend(s.spool_args());
    s.cluster.spawn("tt-second", "tasktracker", &args)?;
    let status = wait_until(WAIT, "the second TaskTracker exiting", || {
        let exited = s.cluster.proc("tt-second").map(|p| p.exited());
        async move {
            Ok(match exited? {
                Some(status) => Ok(status),
                None => Err("still running".to_string()),
            })
        }
    })
    .await?;
    assert!(!status.success(), "{status}");
    let said = s.cluster.procs_log("tt-second");
    assert!(
        said.contains("is in use") && said.contains(&s.spool.display().to_string()),
        "{said}"
    );
    assert!(s.cluster.proc("tt-a")?.exited().is_none());

    // Garbage over the spool's data: tt-a starts again with a fresh spool
    // and says where the damaged one went.
    s.cluster.proc("tt-a")?.kill9();
    let data = s.spool.join("spool.sled").join("db");
    let len = std::fs::metadata(&data)?.len().max(4096) as usize;
    std::fs::write(
        &data,
        (0..len).map(|i| (i * 7 + 13) as u8).collect::<Vec<u8>>(),
    )?;
    s.restart_tt_a()?;
    // The JobTracker saw tt-a join before: its own log says when it is back.
    let said = wait_until(WAIT, "tt-a connecting again", || {
        let log = s.cluster.proc("tt-a").map(|p| p.current_log());
        async move {
            let log = log?;
            Ok(if log.contains("connected to JobTracker") {
                Ok(log)
            } else {
                Err(log)
            })
        }
    })
    .await?;
    assert!(said.contains("cannot be read"), "{said}");
    let aside: Vec<_> = std::fs::read_dir(s.cluster.dir())?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("tt-a-spool.damaged-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the damaged spool is kept aside once");
    // It works with the fresh spool.
    let client = JobClient::connect(vec![s.cluster.tracker_url()?]).await?;
    let mut spec = s.spec("after-the-damage");
    spec.payload = serde_json::json!({
        "program": s.program.display().to_string(),
        "args": [s.started.display().to_string(), s.ended.display().to_string(), "0"],
    })
    .to_string()
    .into_bytes();
    client.submit(vec![spec]).await?;
    wait_all_succeeded(&client, GROUP, 1, WAIT).await?;
    Ok(())
}

/// Two TaskTrackers with spools finish their runs while the JobTracker is
/// down; one is killed with SIGKILL and started again before the
/// JobTracker returns. Every run counts once, its log lines reach the
/// job's log, and the feedback of every job reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_spooling_tasktrackers_one_killed_deliver_every_outcome_log_line_and_feedback(
) -> Result<()> {
    const JOBS: usize = 8;
    const CLIENTS: &str = "spool-clients";
    let mut s = Setup::start()?;
    let allow = s.program.display().to_string();
    let spool_b = s.cluster.dir().join("tt-b-spool").display().to_string();
    s.cluster.start_task_tracker_on(
        TRACKER,
        "tt-b",
        GROUP,
        4,
        &[&allow],
        &["--spool-dir", &spool_b, "--metrics-addr", "127.0.0.1:0"],
    )?;
    let client = JobClient::connect(vec![s.cluster.tracker_url()?]).await?;
    let specs: Vec<JobSpec> = (0..JOBS)
        .map(|i| {
            let mut spec = s.spec(&format!("fb-{i}"));
            spec.need_feedback = true;
            spec.submit_node_group = CLIENTS.into();
            spec
        })
        .collect();
    let mut jobs = Vec::new();
    for (r, spec) in client.submit(specs.clone()).await?.iter().zip(&specs) {
        let id = r
            .job_id()
            .with_context(|| format!("submit refused: {r:?}"))?;
        jobs.push((spec.task_id.clone(), id.to_string()));
    }
    wait_lines(&s.started, JOBS, "every run beginning").await?;
    s.cluster.proc(TRACKER)?.kill9();
    wait_lines(
        &s.ended,
        JOBS,
        "every run ending while the JobTracker is down",
    )
    .await?;
    wait_until(WAIT, "every outcome on disk in the two spools", || {
        let a = s.gauge_of("tt-a", ON_DISK);
        let b = s.gauge_of("tt-b", ON_DISK);
        async move {
            let on_disk = a? + b?;
            Ok(if on_disk == JOBS as f64 {
                Ok(())
            } else {
                Err(format!("{on_disk} on disk"))
            })
        }
    })
    .await?;
    s.cluster.proc("tt-a")?.kill9();
    s.restart_tt_a()?;
    restart_tracker(&mut s)?;
    let client = JobClient::connect(vec![s.cluster.tracker_url()?]).await?;
    let mut feedback = client.feedback(CLIENTS, "spool-test").await?;
    let mut succeeded = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while succeeded.len() < JOBS {
        let batch = tokio::time::timeout_at(deadline, feedback.next())
            .await
            .with_context(|| {
                format!(
                    "feedback of {} of {JOBS} jobs within {WAIT:?}\n{}",
                    succeeded.len(),
                    s.cluster.logs()
                )
            })??;
        for f in batch {
            assert_eq!(f.state, Some(JobState::Succeeded), "{f:?}");
            succeeded.insert(f.job_id);
        }
    }
    for (task, job_id) in &jobs {
        assert!(succeeded.contains(job_id), "no feedback for {task}");
        let log = client.log(job_id).await?;
        let biz = log.iter().any(|e| {
            e.kind == LogKind::Biz
                && e.attempt == 1
                && e.message.contains(&format!("finished {task} attempt 1"))
        });
        let applied = log
            .iter()
            .any(|e| e.kind == LogKind::Outcome && e.attempt == 1);
        assert!(
            biz && applied,
            "{task}: biz {biz}, outcome {applied}: {log:?}"
        );
    }
    assert_eq!(lines(&s.started), JOBS, "a job ran again");
    Ok(())
}
