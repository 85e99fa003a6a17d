//! A job's processes end with the TaskTracker that runs them: after a
//! `kill -9` of the TaskTracker no process of the job is left running
//! beside the next attempt, and a TaskTracker starting where a previous one
//! did leave processes says so.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use lts_tests::{wait_until, Cluster, TRACKER};

/// Bound on every wait; a failure, not a measure of speed.
const WAIT: Duration = Duration::from_secs(30);
const GROUP: &str = "procs";

/// A job that starts a long `sleep` in the background, records its own
/// pid and the sleep's in the file `$1`, and waits.
fn program(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("long-job.sh");
    std::fs::write(
        &path,
        "#!/bin/sh\n\
         sleep 300 &\n\
         echo \"$$ $!\" > \"$1.tmp\" && mv \"$1.tmp\" \"$1\"\n\
         wait\n",
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Whether process `pid` is gone: no such process, or a zombie waiting to
/// be reaped (it runs no more code).
fn process_is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

struct Setup {
    cluster: Cluster,
    program: PathBuf,
    spool: PathBuf,
}

impl Setup {
    fn start() -> Result<Setup> {
        let mut cluster = Cluster::new()?;
        let program = program(cluster.dir())?;
        let spool = cluster.dir().join("tt-spool");
        cluster.start_tracker(&[])?;
        Ok(Setup {
            cluster,
            program,
            spool,
        })
    }

    fn task_tracker_args(&self) -> Result<Vec<String>> {
        Ok(vec![
            "--node-group".into(),
            GROUP.into(),
            "--jobtracker".into(),
            self.cluster.tracker_url()?,
            "--slots".into(),
            "1".into(),
            "--identity".into(),
            "tt".into(),
            "--allow".into(),
            self.program.display().to_string(),
            "--spool-dir".into(),
            self.spool.display().to_string(),
        ])
    }

    fn start_task_tracker(&mut self) -> Result<()> {
        let args = self.task_tracker_args()?;
        self.cluster.spawn("tt", "tasktracker", &args)?;
        self.cluster.wait_joined(TRACKER, "tt")
    }

    /// Submits the long job and returns the pids of its shell and of the
    /// shell's background `sleep`, once it has recorded them.
    async fn run_long_job(&mut self) -> Result<(i32, i32)> {
        let pids = self.cluster.dir().join("pids");
        self.cluster.jobclient(&[
            "submit",
            "-g",
            GROUP,
            "-t",
            "long-job",
            "--shell",
            &self.program.display().to_string(),
            &pids.display().to_string(),
        ])?;
        let cluster = &self.cluster;
        wait_until(WAIT, "the job to record its pids", || {
            let text = std::fs::read_to_string(&pids).unwrap_or_default();
            let mut words = text.split_whitespace().map(str::parse::<i32>);
            let found = match (words.next(), words.next()) {
                (Some(Ok(shell)), Some(Ok(sleep))) => Ok((shell, sleep)),
                // The processes' logs as they are now, to tell why not.
                _ => Err(format!("{text:?}\n{}", cluster.logs())),
            };
            async move { Ok(found) }
        })
        .await
    }

    fn log_of_tt(&mut self) -> Result<String> {
        Ok(self.cluster.proc("tt")?.log_text())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_tasktracker_ends_every_process_of_its_running_job() -> Result<()> {
    let mut s = Setup::start()?;
    s.start_task_tracker()?;
    let (shell, sleep) = s.run_long_job().await?;
    assert!(!process_is_gone(shell) && !process_is_gone(sleep));

    s.cluster.proc("tt")?.kill9();
    wait_until(WAIT, "the job's processes to end", || {
        let left: Vec<i32> = [shell, sleep]
            .into_iter()
            .filter(|&pid| !process_is_gone(pid))
            .collect();
        let state = if left.is_empty() {
            Ok(())
        } else {
            Err(format!("still running: {left:?}"))
        };
        async move { Ok(state) }
    })
    .await?;
    let log = s.log_of_tt()?;
    assert!(
        log.contains("killed the processes of 1 running job(s)"),
        "{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasktracker_says_when_a_previous_one_left_job_processes() -> Result<()> {
    let mut s = Setup::start()?;
    s.start_task_tracker()?;
    let (shell, sleep) = s.run_long_job().await?;
    // Without its guard (killed first), a killed TaskTracker leaves its
    // job running: what a host without the guard, or a guard killed by
    // hand, would see.
    let log = s.log_of_tt()?;
    let guard: i32 = log
        .lines()
        .filter(|l| l.contains("job guard started"))
        .flat_map(str::split_whitespace)
        .find_map(|w| w.strip_prefix("pid=")?.parse().ok())
        .with_context(|| format!("the TaskTracker names its job guard's pid:\n{log}"))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(guard),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    wait_until(WAIT, "the TaskTracker to say its guard ended", || {
        let said = s.cluster.procs_log("tt");
        let state = if said.contains("the job guard") && said.contains("ended") {
            Ok(())
        } else {
            Err(said)
        };
        async move { Ok(state) }
    })
    .await?;
    s.cluster.proc("tt")?.kill9();
    assert!(
        !process_is_gone(shell) && !process_is_gone(sleep),
        "the job runs on without a guard"
    );

    // The JobTracker's log already has `tt` joining: wait for what the new
    // TaskTracker says instead.
    let args = s.task_tracker_args()?;
    s.cluster.spawn("tt", "tasktracker", &args)?;
    // The job's id, its attempt, its program, its group.
    let expected = format!(
        " 1 {} (process group {shell})",
        std::fs::canonicalize(&s.program)?.display()
    );
    let result = wait_until(
        WAIT,
        "the new TaskTracker to report the job left running",
        || {
            let said = s
                .cluster
                .proc("tt")
                .map(|p| p.current_log())
                .unwrap_or_default();
            let state = if said.contains("left a job running: ") && said.contains(&expected) {
                Ok(())
            } else {
                Err(said)
            };
            async move { Ok(state) }
        },
    )
    .await;
    // Whatever the result, the job's processes go.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(shell),
        nix::sys::signal::Signal::SIGKILL,
    );
    result
}
