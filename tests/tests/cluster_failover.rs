//! A cluster of three JobTrackers over one MongoDB database, elected and
//! registered in ZooKeeper, with TaskTrackers and the jobclient CLI finding
//! them there, while its nodes are killed and stopped: what an operator
//! checks after each failure (who is master, what the registry shows,
//! whether every job ran and how often).
//!
//! Needs the MongoDB server named by `LTS_TEST_MONGODB_URI` and the
//! ZooKeeper server named by `LTS_TEST_ZOOKEEPER` (`.ci/run` starts both);
//! the quorum-loss test starts a ZooKeeper of its own from the jars in
//! `LTS_TEST_ZOOKEEPER_JAR_DIR` (or Debian's `/usr/share/java`). Without
//! them the tests skip loudly, or fail under `CI=true`. Each test has a
//! cluster name and a database of its own. The failover times are printed
//! (run with `--nocapture`), not asserted.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use anyhow::{Context, Result};
use lts_tests::failover::{FailoverCluster, ListedJob, Servers};

const GROUP: &str = "work";

/// The cycle jobs of the repeat job `task_id`, by `jobclient list`, or the
/// failure as the state a poll reports.
fn cycles(c: &FailoverCluster, task_id: &str) -> std::result::Result<Vec<ListedJob>, String> {
    c.list(GROUP, &format!("{task_id}@"))
        .map_err(|e| format!("list failed: {e}"))
}

/// The schedule point a cycle stands for: its task id is
/// `<task id>@<point in Unix ms>`.
fn point(cycle: &ListedJob) -> Result<i64> {
    cycle
        .task_id
        .rsplit_once('@')
        .and_then(|(_, p)| p.parse().ok())
        .with_context(|| format!("cycle {} names no point", cycle.task_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_another_leads_and_no_cycle_or_job_is_lost() -> Result<()> {
    const BATCH: usize = 100;
    const EVERY_MS: i64 = 300;
    let Some(servers) = Servers::from_env("master_killed") else {
        return Ok(());
    };
    let mut c = FailoverCluster::start(servers, "master-kill", 3)?;
    let mut on = HashMap::new();
    for tt in ["tt-1", "tt-2"] {
        on.insert(tt, c.start_task_tracker(tt, GROUP, 8)?);
    }
    let old = c.wait_master(None).await?;

    c.submit_repeat(GROUP, "tick", &format!("{EVERY_MS}ms"))?;
    c.poll("three cycles to run", || {
        let n = c
            .ledger()
            .finished()
            .iter()
            .filter(|r| r.task_id.starts_with("tick@"))
            .count();
        Ok(if n >= 3 {
            Ok(())
        } else {
            Err(format!("{n} cycles ran"))
        })
    })
    .await?;
    let ids = c.submit_batch(GROUP, "batch-", BATCH, Some("0.1"))?;
    anyhow::ensure!(ids.len() == BATCH, "{} acks for {BATCH} jobs", ids.len());
    c.poll("ten jobs of the batch to run", || {
        let n = c
            .ledger()
            .finished()
            .iter()
            .filter(|r| r.task_id.starts_with("batch-"))
            .count();
        Ok(if n >= 10 {
            Ok(())
        } else {
            Err(format!("{n} ran"))
        })
    })
    .await?;

    // The TaskTrackers the master served move to the other trackers.
    let movers: Vec<&str> = on
        .iter()
        .filter(|(_, t)| **t == old)
        .map(|(tt, _)| *tt)
        .collect();
    let before: HashMap<&str, HashMap<String, usize>> =
        movers.iter().map(|tt| (*tt, c.joins_of(tt))).collect();

    let done_at_kill = c.ledger().finished().len();
    let killed = Instant::now();
    c.kill9(&old)?;
    // TaskTrackers move at once; the election waits for the session.
    for tt in movers {
        let now_on = c.wait_joined_any(tt, &before[tt])?;
        eprintln!(
            "failover: {tt} moved from {old} to {now_on} {:?} after the kill",
            killed.elapsed()
        );
    }
    let new = c.wait_master(Some(&old)).await?;
    let led_at_ms = lts_common::now_ms();
    eprintln!(
        "failover: master {old} killed ({done_at_kill} runs done); {new} leads after {:?}",
        killed.elapsed()
    );

    // Cycles go on under the new master.
    c.poll(
        "three cycles due after the new master leads to succeed",
        || {
            let cycles = match cycles(&c, "tick") {
                Ok(c) => c,
                Err(state) => return Ok(Err(state)),
            };
            let n = cycles
                .iter()
                .filter(|j| j.trigger_at_ms > led_at_ms && j.state == "succeeded")
                .count();
            Ok(if n >= 3 {
                Ok(())
            } else {
                Err(format!("{n} cycles since"))
            })
        },
    )
    .await?;
    eprintln!(
        "failover: cycles fire again {:?} after the kill",
        killed.elapsed()
    );

    let batch = c.wait_succeeded(GROUP, "batch-", BATCH).await?;
    eprintln!(
        "failover: the batch done {:?} after the kill",
        killed.elapsed()
    );
    let listed: HashSet<&str> = batch.iter().map(|j| j.job_id.as_str()).collect();
    for id in &ids {
        assert!(listed.contains(id.as_str()), "acked job {id} was lost");
    }
    let runs = c.ledger().finished_by_task();
    for job in &batch {
        assert!(
            runs.contains_key(&job.task_id),
            "{} succeeded but never ran",
            job.task_id
        );
    }

    // No cycle fired twice: each schedule point has one cycle, and the
    // points are at least the interval apart (a second firing of a point
    // would sit closer to it).
    let mut cycles = cycles(&c, "tick").map_err(anyhow::Error::msg)?;
    cycles.sort_by_key(|j| j.trigger_at_ms);
    let points: Vec<i64> = cycles.iter().map(point).collect::<Result<_>>()?;
    let distinct: HashSet<i64> = points.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        points.len(),
        "a point fired twice: {points:?}"
    );
    let triggers: HashSet<i64> = cycles.iter().map(|j| j.trigger_at_ms).collect();
    assert_eq!(triggers.len(), cycles.len(), "two cycles at one time");
    for pair in points.windows(2) {
        assert!(
            pair[1] - pair[0] >= EVERY_MS,
            "cycles {} ms apart, closer than the interval: {points:?}",
            pair[1] - pair[0]
        );
    }
    // Cycles due once the new master led ran exactly once each.
    for cycle in cycles
        .iter()
        .filter(|j| j.trigger_at_ms > led_at_ms && j.state == "succeeded")
    {
        let n = runs.get(&cycle.task_id).map_or(0, Vec::len);
        assert_eq!(n, 1, "cycle {} ran {n} times", cycle.task_id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_stopped_hands_over_and_the_cli_still_submits() -> Result<()> {
    let Some(servers) = Servers::from_env("master_stopped") else {
        return Ok(());
    };
    let mut c = FailoverCluster::start(servers, "master-stop", 3)?;
    c.start_task_tracker("tt-1", GROUP, 4)?;
    let old = c.wait_master(None).await?;

    let stopped = Instant::now();
    c.terminate(&old)?;
    let new = c.wait_master(Some(&old)).await?;
    eprintln!(
        "failover: master {old} stopped (SIGTERM); {new} leads after {:?}",
        stopped.elapsed()
    );

    // The registry shows the new master, and the old one is gone.
    let nodes = c
        .poll("the registry to show the new master alone", || {
            let nodes = match c.nodes() {
                Ok(n) => n,
                Err(e) => return Ok(Err(format!("nodes failed: {e}"))),
            };
            let trackers = nodes.of_role("jobtracker");
            if nodes.master.as_deref() == Some(new.as_str()) && !trackers.contains(&old) {
                Ok(Ok(nodes))
            } else {
                Ok(Err(format!(
                    "master {:?}, trackers {trackers:?}",
                    nodes.master
                )))
            }
        })
        .await?;
    assert_eq!(nodes.of_role("jobtracker").len(), 2, "{nodes:?}");
    let flagged: Vec<&str> = nodes
        .nodes
        .iter()
        .filter(|n| n.master)
        .map(|n| n.identity.as_str())
        .collect();
    assert_eq!(flagged, vec![new.as_str()], "one node is marked master");

    // New submits through the CLI find a tracker in ZooKeeper and run.
    let ids = c.submit_batch(GROUP, "after-", 20, None)?;
    assert_eq!(ids.len(), 20);
    c.wait_succeeded(GROUP, "after-", 20).await?;
    let runs = c.ledger().finished_by_task();
    assert_eq!(
        runs.keys().filter(|t| t.starts_with("after-")).count(),
        20,
        "every job submitted after the stop ran"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_master_killed_its_task_trackers_move_and_new_work_runs() -> Result<()> {
    const BATCH: usize = 50;
    let Some(servers) = Servers::from_env("non_master_killed") else {
        return Ok(());
    };
    let mut c = FailoverCluster::start(servers, "follower-kill", 3)?;
    let master = c.wait_master(None).await?;
    // TaskTrackers pick a tracker at random: start them until one is on a
    // tracker that is not the master.
    let mut on: HashMap<String, String> = HashMap::new();
    for i in 1..=8 {
        let name = format!("tt-{i}");
        let tracker = c.start_task_tracker(&name, GROUP, 4)?;
        on.insert(name, tracker.clone());
        if tracker != master && i >= 2 {
            break;
        }
    }
    let victim = on
        .values()
        .find(|t| **t != master)
        .cloned()
        .context("no TaskTracker joined a tracker other than the master")?;
    let moved: Vec<String> = on
        .iter()
        .filter(|(_, t)| **t == victim)
        .map(|(tt, _)| tt.clone())
        .collect();
    let before: HashMap<String, HashMap<String, usize>> = moved
        .iter()
        .map(|tt| (tt.clone(), c.joins_of(tt)))
        .collect();

    let killed = Instant::now();
    c.kill9(&victim)?;
    for tt in &moved {
        let now_on = c.wait_joined_any(tt, &before[tt])?;
        assert_ne!(now_on, victim);
        eprintln!(
            "failover: tracker {victim} killed; {tt} joined {now_on} after {:?}",
            killed.elapsed()
        );
    }
    assert_eq!(
        c.masters(),
        vec![master.clone()],
        "the master stays master when another tracker dies"
    );

    // A batch submitted through the CLI right after the kill runs whole.
    let ids = c.submit_batch(GROUP, "after-", BATCH, None)?;
    assert_eq!(ids.len(), BATCH);
    c.wait_succeeded(GROUP, "after-", BATCH).await?;
    eprintln!(
        "failover: a batch submitted after the kill of {victim} done {:?} after it",
        killed.elapsed()
    );
    let runs = c.ledger().finished_by_task();
    assert_eq!(
        runs.keys().filter(|t| t.starts_with("after-")).count(),
        BATCH,
        "every job ran"
    );

    // The registry drops the dead tracker.
    c.poll("the registry to drop the killed tracker", || {
        let trackers = match c.nodes() {
            Ok(n) => n.of_role("jobtracker"),
            Err(e) => return Ok(Err(format!("nodes failed: {e}"))),
        };
        Ok(if trackers.len() == 2 && !trackers.contains(&victim) {
            Ok(())
        } else {
            Err(format!("trackers {trackers:?}"))
        })
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_tracker_killed_its_runs_run_again_elsewhere_once() -> Result<()> {
    const BATCH: usize = 8;
    let Some(servers) = Servers::from_env("task_tracker_killed") else {
        return Ok(());
    };
    let mut c = FailoverCluster::start(servers, "tasktracker-kill", 2)?;
    c.start_task_tracker("tt-1", GROUP, 4)?;
    c.start_task_tracker("tt-2", GROUP, 4)?;
    let victim = c.pid("tt-1")?;

    let ids = c.submit_batch(GROUP, "slow-", BATCH, Some("1"))?;
    assert_eq!(ids.len(), BATCH);
    // Kill tt-1 while it runs jobs: those that started there and have
    // not ended.
    let running = c
        .poll("tt-1 to run jobs", || {
            let ended: HashSet<String> = c
                .ledger()
                .finished()
                .into_iter()
                .filter(|r| r.task_tracker_pid == victim)
                .map(|r| r.task_id)
                .collect();
            let running: HashSet<String> = c
                .ledger()
                .started()
                .into_iter()
                .filter(|r| r.task_tracker_pid == victim && !ended.contains(&r.task_id))
                .map(|r| r.task_id)
                .collect();
            Ok(if running.is_empty() {
                Err("none running on tt-1".to_string())
            } else {
                Ok(running)
            })
        })
        .await?;
    let killed = Instant::now();
    c.kill9("tt-1")?;
    let survivor = c.pid("tt-2")?;
    c.poll("the killed TaskTracker's runs to start elsewhere", || {
        let again: HashSet<String> = c
            .ledger()
            .started()
            .into_iter()
            .filter(|r| r.task_tracker_pid == survivor && running.contains(&r.task_id))
            .map(|r| r.task_id)
            .collect();
        Ok(if again.len() == running.len() {
            Ok(())
        } else {
            Err(format!(
                "{} of {} started again",
                again.len(),
                running.len()
            ))
        })
    })
    .await?;
    eprintln!(
        "failover: TaskTracker tt-1 killed with {} runs; they started on tt-2 after {:?}",
        running.len(),
        killed.elapsed()
    );

    let jobs = c.wait_succeeded(GROUP, "slow-", BATCH).await?;
    let runs = c.ledger().finished_by_task();
    for job in &jobs {
        let on_survivor: Vec<_> = runs
            .get(&job.task_id)
            .map(|r| {
                r.iter()
                    .filter(|r| r.task_tracker_pid == survivor)
                    .collect()
            })
            .unwrap_or_default();
        if running.contains(&job.task_id) {
            assert!(
                job.attempt >= 2,
                "{} ran again with a new attempt: {job:?}",
                job.task_id
            );
            assert_eq!(
                on_survivor.len(),
                1,
                "{} ran once on tt-2: {on_survivor:?}",
                job.task_id
            );
            assert!(
                on_survivor[0].attempt >= 2,
                "{} ran again as attempt {}",
                job.task_id,
                on_survivor[0].attempt
            );
        } else {
            assert!(
                on_survivor.len() <= 1,
                "{} ran twice on tt-2: {on_survivor:?}",
                job.task_id
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_lists_trackers_master_and_task_trackers_by_group() -> Result<()> {
    let Some(servers) = Servers::from_env("registry_layout") else {
        return Ok(());
    };
    let mut c = FailoverCluster::start(servers, "registry", 3)?;
    c.start_task_tracker("tt-a1", "alpha", 2)?;
    c.start_task_tracker("tt-a2", "alpha", 2)?;
    c.start_task_tracker("tt-b1", "beta", 2)?;
    let master = c.wait_master(None).await?;

    let nodes = c
        .poll("the registry to list every node", || {
            let nodes = match c.nodes() {
                Ok(n) => n,
                Err(e) => return Ok(Err(format!("nodes failed: {e}"))),
            };
            let (t, tt) = (nodes.of_role("jobtracker"), nodes.of_role("tasktracker"));
            Ok(if t.len() == 3 && tt.len() == 3 && nodes.master.is_some() {
                Ok(nodes)
            } else {
                Err(format!("trackers {t:?}, task trackers {tt:?}"))
            })
        })
        .await?;
    assert_eq!(
        nodes.of_role("jobtracker"),
        vec!["jt-1".to_string(), "jt-2".into(), "jt-3".into()]
    );
    assert_eq!(nodes.master.as_deref(), Some(master.as_str()));
    let flagged: Vec<&str> = nodes
        .nodes
        .iter()
        .filter(|n| n.master)
        .map(|n| n.identity.as_str())
        .collect();
    assert_eq!(flagged, vec![master.as_str()], "exactly one master");
    for n in nodes.nodes.iter().filter(|n| n.role == "jobtracker") {
        let url = c.processes().tracker_url_of(&n.identity)?;
        assert_eq!(
            format!("http://{}", n.address),
            url,
            "{} registered where it listens",
            n.identity
        );
        assert!(n.node_group.is_empty(), "{n:?}");
    }
    let mut by_group: HashMap<&str, Vec<&str>> = HashMap::new();
    for n in nodes.nodes.iter().filter(|n| n.role == "tasktracker") {
        by_group
            .entry(n.node_group.as_str())
            .or_default()
            .push(n.identity.as_str());
    }
    for ids in by_group.values_mut() {
        ids.sort();
    }
    assert_eq!(
        by_group,
        HashMap::from([("alpha", vec!["tt-a1", "tt-a2"]), ("beta", vec!["tt-b1"])])
    );

    // The text form names every node and marks the master.
    let text = c.jobclient(&["nodes"])?;
    for id in [
        "jt-1", "jt-2", "jt-3", "tt-a1", "tt-a2", "tt-b1", "alpha", "beta",
    ] {
        assert!(text.contains(id), "{id} missing from:\n{text}");
    }
    let master_line = text
        .lines()
        .find(|l| l.contains(master.as_str()))
        .context("no line for the master")?;
    assert!(
        master_line.to_lowercase().contains("master"),
        "the master's line is marked: {master_line}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_quorum_lost_queued_jobs_still_run() -> Result<()> {
    const BATCH: usize = 20;
    let Some(servers) = Servers::from_env("zookeeper_quorum_lost") else {
        return Ok(());
    };
    let Some(jars) = lts_tests::zk::jar_dir("zookeeper_quorum_lost") else {
        return Ok(());
    };
    // A ZooKeeper of this test's own: the shared one stays up for the
    // other tests.
    let zk_dir = tempfile::tempdir()?;
    let mut zookeeper = lts_tests::zk::ZooKeeperServer::start(&jars, zk_dir.path())?;
    let servers = Servers {
        zookeeper: zookeeper.address(),
        ..servers
    };
    let mut c = FailoverCluster::start(servers, "quorum-lost", 2)?;
    c.start_task_tracker("tt-1", GROUP, 4)?;
    c.start_task_tracker("tt-2", GROUP, 4)?;
    c.wait_master(None).await?;

    // Queued now, due once ZooKeeper is gone.
    let ids = c.submit_batch_with(GROUP, "queued-", BATCH, None, &["--in", "4s"])?;
    assert_eq!(ids.len(), BATCH);
    let runs_before = c.ledger().started().len();
    zookeeper.kill();
    let killed = Instant::now();
    c.use_static_addresses()?;
    assert_eq!(
        runs_before, 0,
        "the queued jobs were not due before the kill"
    );

    c.wait_succeeded(GROUP, "queued-", BATCH).await?;
    eprintln!(
        "failover: ZooKeeper killed; {BATCH} queued jobs done {:?} after",
        killed.elapsed()
    );
    let runs = c.ledger().finished_by_task();
    assert_eq!(
        runs.keys().filter(|t| t.starts_with("queued-")).count(),
        BATCH,
        "every queued job ran"
    );
    // Without a quorum nobody may act as master.
    c.wait_no_master().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_paused_past_its_session_rejoins_as_a_follower_and_fires_nothing_twice() -> Result<()>
{
    const EVERY_MS: i64 = 300;
    let Some(servers) = Servers::from_env("master_paused") else {
        return Ok(());
    };
    let mut c = FailoverCluster::start(servers, "master-pause", 3)?;
    c.start_task_tracker("tt-1", GROUP, 4)?;
    c.start_task_tracker("tt-2", GROUP, 4)?;
    let old = c.wait_master(None).await?;
    c.submit_repeat(GROUP, "tick", &format!("{EVERY_MS}ms"))?;
    c.poll("three cycles to run", || {
        let n = c
            .ledger()
            .finished()
            .iter()
            .filter(|r| r.task_id.starts_with("tick@"))
            .count();
        Ok(if n >= 3 {
            Ok(())
        } else {
            Err(format!("{n} cycles ran"))
        })
    })
    .await?;

    // A pause (GC, swap, SIGSTOP) longer than the session: another
    // tracker leads while the old master does not know it.
    let paused = Instant::now();
    c.freeze(&old)?;
    let new = c.wait_master(Some(&old)).await?;
    eprintln!(
        "failover: master {old} paused; {new} leads after {:?}",
        paused.elapsed()
    );
    let old_log_len = c.processes_log(&old).len();
    c.thaw(&old)?;

    // Back, the old master learns its session is gone and stops its
    // once-only work; the new one stays the only master.
    c.poll("the old master to stop its once-only work", || {
        Ok(
            if c.processes_log(&old)
                .get(old_log_len..)
                .is_some_and(|l| l.contains("once-only work stopped"))
            {
                Ok(())
            } else {
                Err(format!("{old} has not said so"))
            },
        )
    })
    .await?;
    assert_eq!(
        c.wait_master(Some(&old)).await?,
        new,
        "the new master stays"
    );

    let since_ms = lts_common::now_ms();
    c.poll("three more cycles to succeed", || {
        let cycles = match cycles(&c, "tick") {
            Ok(c) => c,
            Err(state) => return Ok(Err(state)),
        };
        let n = cycles
            .iter()
            .filter(|j| j.trigger_at_ms > since_ms && j.state == "succeeded")
            .count();
        Ok(if n >= 3 {
            Ok(())
        } else {
            Err(format!("{n} cycles since"))
        })
    })
    .await?;
    // By point, not by trigger time: a cycle whose run was taken back
    // from the frozen tracker's streams ran again later, under a new
    // attempt, and its trigger time moved with it.
    let cycles = cycles(&c, "tick").map_err(anyhow::Error::msg)?;
    let mut points: Vec<i64> = cycles.iter().map(point).collect::<Result<_>>()?;
    points.sort_unstable();
    for pair in points.windows(2) {
        assert!(
            pair[1] - pair[0] >= EVERY_MS,
            "cycles {} ms apart, closer than the interval: {points:?}",
            pair[1] - pair[0]
        );
    }
    Ok(())
}

/// Integral seconds (Unix ms) in `(from, to)`.
fn seconds_between(from: i64, to: i64) -> Vec<i64> {
    let first = from / 1000 + 1;
    (first..)
        .map(|s| s * 1000)
        .take_while(|&p| p < to)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_master_for_seconds_cycles_of_the_gap_follow_each_jobs_misfire_policy() -> Result<()> {
    // Long enough that the gap holds points more than the 1 s grace late.
    const GAP_MS: i64 = 4_500;
    let Some(servers) = Servers::from_env("misfire_gap") else {
        return Ok(());
    };
    let mut c = FailoverCluster::start(servers, "misfire-gap", 2)?;
    c.start_task_tracker("tt-1", GROUP, 8)?;
    let old = c.wait_master(None).await?;
    let other = c
        .live_trackers()
        .into_iter()
        .find(|t| *t != old)
        .context("a second tracker")?;
    let policies = [
        ("cron-skip", "skip"),
        ("cron-once", "fire-once"),
        ("cron-all", "fire-all"),
    ];
    for (task, policy) in policies {
        let mut args = vec![
            "submit",
            "--node-group",
            GROUP,
            "--task-id",
            task,
            "--cron",
            "* * * * * ?",
            "--misfire",
            policy,
            "--shell",
        ];
        let command = c.ledger().command(None);
        args.extend(command.iter().map(String::as_str));
        c.jobclient(&args)?;
    }
    c.poll("two cycles of every cron job to run", || {
        let runs = c.ledger().finished_by_task();
        let short: Vec<&str> = policies
            .iter()
            .map(|(task, _)| *task)
            .filter(|task| {
                runs.keys()
                    .filter(|k| k.starts_with(&format!("{task}@")))
                    .count()
                    < 2
            })
            .collect();
        Ok(if short.is_empty() {
            Ok(())
        } else {
            Err(format!("fewer than two cycles of {short:?}"))
        })
    })
    .await?;

    // No tracker can fire for GAP_MS: the master dies, the other is frozen.
    c.freeze(&other)?;
    c.kill9(&old)?;
    let stopped_at = lts_common::now_ms();
    c.poll("the gap to pass", || {
        let left = stopped_at + GAP_MS - lts_common::now_ms();
        Ok(if left <= 0 {
            Ok(())
        } else {
            Err(format!("{left} ms of the gap left"))
        })
    })
    .await?;
    let thawed_at = lts_common::now_ms();
    c.thaw(&other)?;
    let new = c.wait_master(Some(&old)).await?;
    anyhow::ensure!(new == other, "{new} leads; only {other} is alive");
    let led_at = lts_common::now_ms();
    c.poll(
        "a cycle of every cron job due after the new master led to run",
        || {
            let mut late = Vec::new();
            for (task, _) in policies {
                let cycles = match cycles(&c, task) {
                    Ok(c) => c,
                    Err(state) => return Ok(Err(state)),
                };
                if !cycles
                    .iter()
                    .any(|j| j.trigger_at_ms > led_at + 1000 && j.state == "succeeded")
                {
                    late.push(task);
                }
            }
            Ok(if late.is_empty() {
                Ok(())
            } else {
                Err(format!("no cycle since of {late:?}"))
            })
        },
    )
    .await?;

    // The points of the gap: after the old master's last firing, before
    // any tracker could fire again. Those more than the grace before the
    // thaw were misfires whenever the new master looked at them.
    let gap = seconds_between(stopped_at + 500, thawed_at);
    let misfired = seconds_between(stopped_at + 500, thawed_at - 1000);
    anyhow::ensure!(misfired.len() >= 2, "a gap too short: {misfired:?}");
    let runs = c.ledger().finished_by_task();
    for (task, policy) in policies {
        let cycles = cycles(&c, task).map_err(anyhow::Error::msg)?;
        let points: Vec<i64> = cycles.iter().map(point).collect::<Result<_>>()?;
        let distinct: HashSet<i64> = points.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            points.len(),
            "{task}: a point fired twice: {points:?}"
        );
        // A point fires once (above). Its cycle may run again only as a
        // new attempt: the frozen tracker held runs whose leases (2 s)
        // ran out while it could not renew them, and a run whose lease
        // ran out runs again (execution is at least once). The same
        // attempt never runs twice.
        for cycle in &cycles {
            let attempts: Vec<u32> = runs
                .get(&cycle.task_id)
                .map(|rs| rs.iter().map(|r| r.attempt).collect())
                .unwrap_or_default();
            let distinct: HashSet<u32> = attempts.iter().copied().collect();
            assert_eq!(
                distinct.len(),
                attempts.len(),
                "cycle {} ran one attempt twice: attempts {attempts:?}",
                cycle.task_id
            );
            if attempts.len() > 1 {
                eprintln!(
                    "cycle {} ran again after its lease ran out during the freeze: attempts {attempts:?}",
                    cycle.task_id
                );
            }
        }
        let in_gap = |range: &[i64]| range.iter().filter(|p| distinct.contains(p)).count();
        match policy {
            "skip" => assert_eq!(
                in_gap(&misfired),
                0,
                "{task}: misfired points {misfired:?} ran: {points:?}"
            ),
            "fire-all" => assert_eq!(
                in_gap(&misfired),
                misfired.len(),
                "{task}: not every misfired point {misfired:?} ran: {points:?}"
            ),
            _ => {
                // One catch-up cycle stands for every misfire (it takes the
                // latest misfired point); a point still within the grace
                // at the new master's first look fires as usual.
                let n = in_gap(&gap);
                assert!(
                    (1..=2).contains(&n) && in_gap(&misfired) <= 1,
                    "{task}: {n} cycles for the gap {gap:?} (misfires {misfired:?}): {points:?}"
                );
            }
        }
    }
    Ok(())
}
