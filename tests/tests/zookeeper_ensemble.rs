//! A cluster over a three-server ZooKeeper ensemble whose leader is killed
//! while jobs run: what an operator checks afterwards (the batch done, one
//! master, the repeat job still firing).
//!
//! Needs the MongoDB server named by `LTS_TEST_MONGODB_URI` and the
//! ZooKeeper jars in `LTS_TEST_ZOOKEEPER_JAR_DIR` (or Debian's
//! `/usr/share/java`); the test starts its ensemble itself. Without them it
//! skips loudly, or fails under `CI=true`. The times are printed (run with
//! `--nocapture`), not asserted.

use std::time::Instant;

use anyhow::Result;
use lts_tests::failover::{required_env, FailoverCluster, Servers, WAIT};
use lts_tests::zk::{jar_dir, ZooKeeperEnsemble};

const GROUP: &str = "work";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_leader_killed_jobs_run_on_and_one_master_remains() -> Result<()> {
    const TEST: &str = "zookeeper_leader_killed";
    const BATCH: usize = 24;
    let Some(mongodb) = required_env(
        "LTS_TEST_MONGODB_URI",
        "a MongoDB server (see .ci/run)",
        TEST,
    ) else {
        return Ok(());
    };
    let Some(jars) = jar_dir(TEST) else {
        return Ok(());
    };
    let zk_dir = tempfile::tempdir()?;
    let mut ensemble = ZooKeeperEnsemble::start(&jars, zk_dir.path(), 3)?;
    let zk_leader = ensemble.wait_leader(WAIT)?;
    let servers = Servers {
        mongodb,
        zookeeper: ensemble.connect_string(),
    };
    let mut c = FailoverCluster::start(servers, "zk-ensemble", 2)?;
    c.start_task_tracker("tt-1", GROUP, 8)?;
    c.wait_master(None).await?;

    c.submit_repeat(GROUP, "tick", "300ms")?;
    let ids = c.submit_batch(GROUP, "batch-", BATCH, Some("0.5"))?;
    assert_eq!(ids.len(), BATCH);
    // The leader goes while the batch runs.
    c.poll("the batch to start running", || {
        let n = c
            .ledger()
            .started()
            .iter()
            .filter(|r| r.task_id.starts_with("batch-"))
            .count();
        Ok(if n > 0 {
            Ok(())
        } else {
            Err("no batch job started".to_string())
        })
    })
    .await?;
    ensemble.kill9(zk_leader)?;
    let killed = Instant::now();
    let since_ms = lts_common::now_ms();
    // The batch needs three rounds of half a second on eight slots, so
    // it was under way, not done, when the leader went.
    let done_at_kill = c
        .ledger()
        .finished()
        .iter()
        .filter(|r| r.task_id.starts_with("batch-"))
        .count();
    assert!(
        done_at_kill < BATCH,
        "the batch was done before the leader was killed"
    );

    let new_leader = ensemble.wait_leader(WAIT)?;
    assert_ne!(new_leader, zk_leader, "a killed server does not lead");
    eprintln!(
        "ensemble: leader {zk_leader} killed; {new_leader} leads after {:?}",
        killed.elapsed()
    );

    c.wait_succeeded(GROUP, "batch-", BATCH).await?;
    eprintln!(
        "ensemble: the batch of {BATCH} done {:?} after the kill",
        killed.elapsed()
    );
    let runs = c.ledger().finished_by_task();
    assert_eq!(
        runs.keys().filter(|t| t.starts_with("batch-")).count(),
        BATCH,
        "every job of the batch ran to its end"
    );

    let master = c.wait_master(None).await?;
    assert_eq!(c.masters(), vec![master.clone()], "exactly one master");
    eprintln!(
        "ensemble: {master} is the master {:?} after the kill",
        killed.elapsed()
    );

    // The registry, read by a new client through the surviving servers,
    // still lists every node and names the master.
    c.poll("the registry to list every node with the master", || {
        let nodes = match c.nodes() {
            Ok(n) => n,
            Err(e) => return Ok(Err(format!("nodes failed: {e}"))),
        };
        let trackers = nodes.of_role("jobtracker");
        let task_trackers = nodes.of_role("tasktracker");
        Ok(
            if trackers == ["jt-1", "jt-2"]
                && task_trackers == ["tt-1"]
                && nodes.master.as_deref() == Some(master.as_str())
            {
                Ok(())
            } else {
                Err(format!(
                    "jobtrackers {trackers:?}, tasktrackers {task_trackers:?}, master {:?}",
                    nodes.master
                ))
            },
        )
    })
    .await?;

    c.poll("three cycles after the kill to succeed", || {
        let cycles = match c.list(GROUP, "tick@") {
            Ok(j) => j,
            Err(e) => return Ok(Err(format!("list failed: {e}"))),
        };
        let n = cycles
            .iter()
            .filter(|j| j.trigger_at_ms > since_ms && j.state == "succeeded")
            .count();
        Ok(if n >= 3 {
            Ok(())
        } else {
            Err(format!("{n} cycles since the kill"))
        })
    })
    .await?;
    eprintln!(
        "ensemble: three cycles since the kill by {:?}",
        killed.elapsed()
    );
    Ok(())
}
