//! A TaskTracker frozen (SIGSTOP) past the JobTracker's give-up time and
//! then resumed (SIGCONT) must not start the work it held: by then the
//! JobTracker has put that work back and a healthy TaskTracker of the same
//! node group runs it under a new attempt. Every run appends a line to a
//! ledger when it starts, so the tests count runs, not stored outcomes.
//!
//! The one double run a TaskTracker cannot prevent is a run it had already
//! started before it froze (its program runs on, unfrozen, and the
//! JobTracker cannot know it ran). Such a pair is counted apart and
//! printed; every other second run of a task fails the test.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use lts_common::{JobSpec, MisfirePolicy, Schedule};
use lts_jobclient::JobClient;
use lts_tests::{
    departures, joins, sample, scrape, wait_all_succeeded, wait_until, Cluster, TRACKER,
};

/// The TaskTracker that is frozen, and the one that stays healthy.
const FROZEN: &str = "tt-frozen";
const HEALTHY: &str = "tt-healthy";

/// How long a freeze lasts past the moment the JobTracker gave the frozen
/// TaskTracker up: long enough for its runs to be handed to the healthy
/// one, so a run started on resume is a second run.
const PAST_GIVE_UP: Duration = Duration::from_secs(1);

/// Bound on every wait for an effect.
const WAIT: Duration = Duration::from_secs(20);

/// A program for the shell runner: appends `<task id> <attempt> <pid of
/// the TaskTracker that started it> <start, Unix ms>` to the ledger named
/// by its first argument, then sleeps for its second.
fn recorder(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("record.sh");
    std::fs::write(
        &path,
        "#!/bin/sh\n\
         # $1 ledger, $2 seconds to sleep\n\
         echo \"$LTS_TASK_ID $LTS_ATTEMPT $PPID $(date +%s%3N)\" >> \"$1\"\n\
         sleep \"$2\"\n",
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

fn shell(program: &Path, ledger: &Path, sleep: &str) -> Vec<u8> {
    serde_json::json!({
        "program": program.display().to_string(),
        "args": [ledger.display().to_string(), sleep],
    })
    .to_string()
    .into_bytes()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// One line of the ledger: one run.
#[derive(Clone, Debug)]
struct Run {
    task: String,
    attempt: u32,
    /// Pid of the TaskTracker that started it.
    by: u32,
    /// When its program began, Unix ms.
    at: i64,
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
                at: it.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// One freeze: when SIGSTOP was sent, when SIGCONT was, and when the
/// test saw the JobTracker log that the resumed TaskTracker joined again.
#[derive(Clone, Copy, Debug)]
struct Freeze {
    stopped_at: i64,
    resumed_at: i64,
    rejoined_at: i64,
}

/// A freeze under way: when SIGSTOP was sent, and how many departures and
/// joins of the frozen TaskTracker the JobTracker had logged before it.
struct Frozen {
    stopped_at: i64,
    left_before: usize,
    joined_before: usize,
}

/// Whether `run` is one the frozen TaskTracker (`frozen_pid`) had begun
/// before a freeze, while connected: it recorded its start before that
/// freeze ended (a stopped process starts nothing, so a line written
/// during the freeze comes from a program started before it) and after
/// the TaskTracker had joined again following the freeze before (a run it
/// started between a resume and its rejoin is exactly what must not be).
fn started_before_a_freeze(run: &Run, frozen_pid: u32, freezes: &[Freeze]) -> bool {
    let mut connected_since = 0;
    for f in freezes {
        if run.by == frozen_pid && run.at >= connected_since && run.at < f.resumed_at {
            return true;
        }
        connected_since = f.rejoined_at;
    }
    false
}

/// Tasks that ran more than once, split into those explained by a run
/// started before a freeze (one such run and one of another attempt) and
/// the rest.
fn doubles(runs: &[Run], frozen_pid: u32, freezes: &[Freeze]) -> (Vec<Vec<Run>>, Vec<Vec<Run>>) {
    let mut by_task: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    for run in runs {
        by_task.entry(&run.task).or_default().push(run.clone());
    }
    let mut forbidden = Vec::new();
    let mut window = Vec::new();
    for (_, runs) in by_task {
        if runs.len() < 2 {
            continue;
        }
        let before = runs
            .iter()
            .filter(|r| started_before_a_freeze(r, frozen_pid, freezes))
            .count();
        // The run begun before the freeze and the one that took over from
        // it, under a later attempt.
        if runs.len() == 2 && before == 1 && runs[0].attempt != runs[1].attempt {
            window.push(runs);
        } else {
            forbidden.push(runs);
        }
    }
    (forbidden, window)
}

/// A cluster of one JobTracker (heartbeats every 500 ms, so it gives a
/// silent TaskTracker up after 1.5 s) and two TaskTrackers of group `g`.
struct Setup {
    cluster: Cluster,
    client: JobClient,
    program: PathBuf,
    ledger: PathBuf,
    frozen_pid: u32,
    healthy_pid: u32,
    /// Metrics of the TaskTracker to freeze.
    frozen_metrics: String,
}

async fn setup(frozen_slots: u32, healthy_slots: u32) -> Result<Setup> {
    let mut cluster = Cluster::new()?;
    let program = recorder(cluster.dir())?;
    let ledger = cluster.dir().join("ledger.txt");
    cluster.start_tracker(&[])?;
    let allow = program.display().to_string();
    cluster.start_task_tracker_on(
        TRACKER,
        FROZEN,
        "g",
        frozen_slots,
        &[&allow],
        &["--metrics-addr", "127.0.0.1:0"],
    )?;
    let frozen_metrics = cluster.metrics_url(FROZEN)?;
    cluster.start_task_tracker(HEALTHY, "g", healthy_slots, &[&allow])?;
    let client = JobClient::connect(vec![cluster.tracker_url()?]).await?;
    let frozen_pid = cluster.proc(FROZEN)?.id();
    let healthy_pid = cluster.proc(HEALTHY)?.id();
    Ok(Setup {
        cluster,
        client,
        program,
        ledger,
        frozen_pid,
        healthy_pid,
        frozen_metrics,
    })
}

impl Setup {
    /// Freezes the frozen TaskTracker until the JobTracker has given it up
    /// and [`PAST_GIVE_UP`] more, then resumes it; waits until it has
    /// joined again.
    async fn freeze_past_give_up(&mut self) -> Result<Freeze> {
        let frozen = self.freeze()?;
        self.resume_past_give_up(frozen).await
    }

    /// Freezes the frozen TaskTracker; see [`Setup::resume_past_give_up`].
    fn freeze(&mut self) -> Result<Frozen> {
        let tracker_log = self.cluster.proc(TRACKER)?.current_log();
        let left_before = departures(&tracker_log, FROZEN);
        let joined_before = joins(&tracker_log, FROZEN);
        let stopped_at = now_ms();
        self.cluster.proc(FROZEN)?.freeze()?;
        Ok(Frozen {
            stopped_at,
            left_before,
            joined_before,
        })
    }

    /// Waits until the JobTracker has given the frozen TaskTracker up, keeps
    /// it frozen [`PAST_GIVE_UP`] more, resumes it and waits until it has
    /// joined again.
    async fn resume_past_give_up(&mut self, frozen: Frozen) -> Result<Freeze> {
        let gave_up = self
            .wait_tracker_log(
                "giving the frozen TaskTracker up",
                departures,
                frozen.left_before,
            )
            .await;
        if let Err(e) = gave_up {
            self.cluster.proc(FROZEN)?.thaw()?;
            return Err(e);
        }
        // The fault itself: the process stays stopped a while longer.
        tokio::time::sleep(PAST_GIVE_UP).await;
        let resumed_at = now_ms();
        self.cluster.proc(FROZEN)?.thaw()?;
        self.wait_tracker_log(
            "the resumed TaskTracker joining again",
            joins,
            frozen.joined_before,
        )
        .await?;
        Ok(Freeze {
            stopped_at: frozen.stopped_at,
            resumed_at,
            rejoined_at: now_ms(),
        })
    }

    /// Waits until the JobTracker's log holds more than `before` lines
    /// about the frozen TaskTracker that `count` counts.
    async fn wait_tracker_log(
        &mut self,
        what: &str,
        count: fn(&str, &str) -> usize,
        before: usize,
    ) -> Result<()> {
        let cluster = &mut self.cluster;
        wait_until(WAIT, what, || {
            let log = cluster
                .proc(TRACKER)
                .map(|p| p.current_log())
                .unwrap_or_default();
            async move {
                let n = count(&log, FROZEN);
                Ok(if n > before {
                    Ok(())
                } else {
                    Err(format!("{n} such lines in the JobTracker's log"))
                })
            }
        })
        .await
        .with_context(|| self.cluster.logs())
    }

    /// Fails naming every task that ran twice other than by a run started
    /// before a freeze; prints those. Fails too when no work the frozen
    /// TaskTracker was given ran on the healthy one (the freezes caught
    /// nothing, so the test would prove nothing).
    fn assert_no_double_runs(&self, freezes: &[Freeze]) -> Result<Vec<Run>> {
        let runs = ledger(&self.ledger);
        let taken_over = runs
            .iter()
            .filter(|r| r.by == self.healthy_pid && r.attempt > 1)
            .count();
        anyhow::ensure!(
            taken_over > 0,
            "the healthy TaskTracker ran no work put back from the frozen one"
        );
        let (forbidden, window) = doubles(&runs, self.frozen_pid, freezes);
        eprintln!(
            "{} runs of {} tasks; {} tasks ran twice because a run had begun before a \
             freeze: {window:?}",
            runs.len(),
            runs.iter()
                .map(|r| r.task.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            window.len()
        );
        // A healthy TaskTracker given up too (a machine too loaded for it
        // to heartbeat in time) would explain a double of its own runs.
        let healthy_lost = departures(&self.cluster.procs_log(TRACKER), HEALTHY);
        anyhow::ensure!(
            forbidden.is_empty(),
            "{} tasks ran under two attempts (frozen TaskTracker pid {}, healthy {} given \
             up {healthy_lost} times, freezes {freezes:?}):\n{}",
            forbidden.len(),
            self.frozen_pid,
            self.healthy_pid,
            forbidden
                .iter()
                .map(|runs| format!("{runs:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        Ok(runs)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_cycles_held_by_a_frozen_task_tracker_never_run_twice() -> Result<()> {
    const CRON_JOBS: usize = 5;
    const FREEZES: usize = 3;
    let mut s = setup(8, 8).await?;
    for n in 0..CRON_JOBS {
        let mut spec = JobSpec::new(format!("tick-{n}"), "g");
        spec.schedule = Schedule::Cron {
            expression: "* * * * * ?".into(),
            time_zone: String::new(),
            misfire: MisfirePolicy::FireAll,
        };
        spec.payload = shell(&s.program, &s.ledger, "0");
        let r = s.client.submit(vec![spec]).await?;
        r[0].job_id()
            .with_context(|| format!("refused: {:?}", r[0]))?;
    }

    let mut freezes = Vec::new();
    for _ in 0..FREEZES {
        // Freeze only once the TaskTracker to freeze is running cycles, so
        // it holds the next ones, sent ahead of their point.
        let (ledger_path, frozen_pid) = (s.ledger.clone(), s.frozen_pid);
        let since = freezes.last().map_or(0, |f: &Freeze| f.rejoined_at);
        wait_until(WAIT, "cycles on the TaskTracker to freeze", || {
            let ledger_path = ledger_path.clone();
            async move {
                let n = ledger(&ledger_path)
                    .iter()
                    .filter(|r| r.by == frozen_pid && r.at > since)
                    .count();
                Ok(if n >= 2 {
                    Ok(())
                } else {
                    Err(format!("{n} cycles ran there"))
                })
            }
        })
        .await
        .with_context(|| s.cluster.logs())?;
        // And once it holds cycles sent ahead while running none: the
        // freeze then catches work it was given and had not begun.
        let metrics = s.frozen_metrics.clone();
        wait_until(WAIT, "cycles held ahead, none running", || {
            let text = scrape(&metrics);
            async move {
                let text = text?;
                let held = sample(&text, "lts_tasktracker_ahead_held").unwrap_or_default();
                let busy = sample(&text, "lts_tasktracker_slots_busy").unwrap_or_default();
                Ok(if held > 0.0 && busy == 0.0 {
                    Ok(())
                } else {
                    Err(format!("{held} held, {busy} running"))
                })
            }
        })
        .await
        .with_context(|| s.cluster.logs())?;
        freezes.push(s.freeze_past_give_up().await?);
    }

    let runs = s.assert_no_double_runs(&freezes)?;
    // The cycles went on: the healthy TaskTracker ran some during every
    // freeze, and cycles of every job ran.
    for f in &freezes {
        let during = runs
            .iter()
            .filter(|r| r.by == s.healthy_pid && r.at >= f.stopped_at && r.at < f.resumed_at)
            .count();
        assert!(
            during > 0,
            "the healthy TaskTracker ran no cycle during the freeze {f:?}"
        );
    }
    for n in 0..CRON_JOBS {
        let prefix = format!("tick-{n}@");
        let cycles = runs.iter().filter(|r| r.task.starts_with(&prefix)).count();
        assert!(cycles >= 3, "only {cycles} cycles of tick-{n} ran");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_queued_in_a_frozen_task_tracker_never_run_twice() -> Result<()> {
    const FREEZES: usize = 3;
    // More jobs due at one instant than the frozen TaskTracker has slots:
    // it starts two and queues the rest behind them.
    const JOBS_PER_ROUND: usize = 16;
    let mut s = setup(2, 8).await?;
    let mut freezes = Vec::new();
    for round in 0..FREEZES {
        let at = now_ms() + 1_500;
        let specs = (0..JOBS_PER_ROUND)
            .map(|n| {
                let mut spec = JobSpec::new(format!("r{round}-{n}"), "g");
                spec.schedule = Schedule::At(at);
                spec.payload = shell(&s.program, &s.ledger, "1");
                spec
            })
            .collect();
        for r in s.client.submit(specs).await? {
            r.job_id().with_context(|| format!("refused: {r:?}"))?;
        }
        let (ledger_path, frozen_pid) = (s.ledger.clone(), s.frozen_pid);
        let prefix = format!("r{round}-");
        wait_until(
            WAIT,
            "the round's jobs starting on the TaskTracker to freeze",
            || {
                let (ledger_path, prefix) = (ledger_path.clone(), prefix.clone());
                async move {
                    let n = ledger(&ledger_path)
                        .iter()
                        .filter(|r| r.by == frozen_pid && r.task.starts_with(&prefix))
                        .count();
                    Ok(if n >= 1 {
                        Ok(())
                    } else {
                        Err(format!("{n} started there"))
                    })
                }
            },
        )
        .await
        .with_context(|| s.cluster.logs())?;
        freezes.push(s.freeze_past_give_up().await?);
    }
    let total = FREEZES * JOBS_PER_ROUND;
    let jobs = wait_all_succeeded(&s.client, "g", total, Duration::from_secs(60))
        .await
        .with_context(|| s.cluster.logs())?;
    let runs = s.assert_no_double_runs(&freezes)?;
    // Each round gave the frozen TaskTracker more jobs than it has slots,
    // so some waited in it when it froze.
    let first_sent_to_frozen = first_sent_to_frozen_by_round(&s.client, &jobs).await?;
    for round in 0..FREEZES {
        let n = first_sent_to_frozen
            .get(&format!("r{round}"))
            .copied()
            .unwrap_or_default();
        assert!(
            n > 2,
            "round {round} sent {n} jobs to the frozen TaskTracker: none waited for a slot"
        );
    }
    let distinct = runs
        .iter()
        .map(|r| r.task.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert_eq!(distinct, total, "every job ran");
    Ok(())
}

/// Round (the task id up to its `-`) -> jobs whose first attempt the
/// JobTracker sent to the frozen TaskTracker.
async fn first_sent_to_frozen_by_round(
    client: &JobClient,
    jobs: &[lts_common::Job],
) -> Result<BTreeMap<String, usize>> {
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
    for job in jobs {
        let log = client.log(&job.job_id).await?;
        let to_frozen = log.iter().any(|e| {
            e.kind == lts_common::LogKind::Dispatched && e.attempt == 1 && e.worker == FROZEN
        });
        if to_frozen {
            let round = job.spec.task_id.split('-').next().unwrap_or_default();
            *out.entry(round.to_string()).or_default() += 1;
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_sent_to_a_frozen_task_tracker_never_run_twice() -> Result<()> {
    const FREEZES: usize = 3;
    const JOBS_PER_ROUND: usize = 8;
    // Both idle with four free slots each: the JobTracker spreads the jobs
    // submitted during the freeze over both, so some are sent to the frozen
    // one and wait unread in its connection until it resumes.
    let mut s = setup(4, 4).await?;
    let mut freezes = Vec::new();
    for round in 0..FREEZES {
        let frozen = s.freeze()?;
        let specs = (0..JOBS_PER_ROUND)
            .map(|n| {
                let mut spec = JobSpec::new(format!("n{round}-{n}"), "g");
                spec.payload = shell(&s.program, &s.ledger, "0");
                spec
            })
            .collect();
        let submitted = s.client.submit(specs).await;
        let resumed = s.resume_past_give_up(frozen).await;
        for r in submitted? {
            r.job_id().with_context(|| format!("refused: {r:?}"))?;
        }
        freezes.push(resumed?);
    }
    let total = FREEZES * JOBS_PER_ROUND;
    let jobs = wait_all_succeeded(&s.client, "g", total, Duration::from_secs(60))
        .await
        .with_context(|| s.cluster.logs())?;
    let runs = s.assert_no_double_runs(&freezes)?;
    let sent = first_sent_to_frozen_by_round(&s.client, &jobs).await?;
    assert!(
        sent.values().sum::<usize>() > 0,
        "no job was sent to the frozen TaskTracker: {sent:?}"
    );
    let distinct = runs
        .iter()
        .map(|r| r.task.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert_eq!(distinct, total, "every job ran");
    Ok(())
}
