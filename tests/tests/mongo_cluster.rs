//! Two JobTrackers sharing one MongoDB database, as separate processes.
//!
//! Needs the MongoDB server named by `LTS_TEST_MONGODB_URI` (`.ci/run`
//! starts one; a real MongoDB works unchanged). Without it the test skips
//! loudly, or fails under `CI=true`.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use lts_common::JobState;
use lts_jobclient::JobClient;
use lts_tests::{runs_by_task, wait_all_succeeded, wait_until, Cluster, TRACKER};

const JOBS: usize = 500;
/// Slots of the TaskTracker of the tracker that is killed: at most this
/// many runs can be in flight there, and so run twice.
const KILLED_SLOTS: usize = 4;

fn mongo_uri() -> Option<String> {
    match std::env::var("LTS_TEST_MONGODB_URI") {
        Ok(uri) if !uri.is_empty() => Some(uri),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("LTS_TEST_MONGODB_URI is not set: CI must start a MongoDB server (see .ci/run) for the MongoDB cluster test");
            }
            eprintln!("\n*** skipping: LTS_TEST_MONGODB_URI not set; the MongoDB cluster is NOT tested ***\n");
            None
        }
    }
}

/// A program for the shell runner that records each run it makes.
fn recorder(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("record.sh");
    std::fs::write(&path, "#!/bin/sh\nsleep 0.05\necho \"$2\" >> \"$1\"\n")?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_trackers_share_mongodb_and_lose_nothing_to_a_kill_9() -> Result<()> {
    let Some(uri) = mongo_uri() else {
        return Ok(());
    };
    let database = format!("lts_cluster_{}", uuid_like());
    let store_args = [
        "--mongodb",
        uri.as_str(),
        "--mongodb-database",
        database.as_str(),
        "--mongodb-lease",
        "2s",
    ];
    let mut cluster = Cluster::new()?;
    let program = recorder(cluster.dir())?;
    let record = cluster.dir().join("runs.txt");
    let allow = program.display().to_string();
    let mut a_args = store_args.to_vec();
    a_args.extend(["--mongodb-instance", "tracker-a"]);
    cluster.start_tracker(&a_args)?;
    let mut b_args = store_args.to_vec();
    b_args.extend(["--mongodb-instance", "tracker-b"]);
    let b_url = cluster.start_tracker_named("jobtracker-b", &b_args)?;
    cluster.start_task_tracker_on(TRACKER, "tt-a", "work", KILLED_SLOTS as u32, &[&allow], &[])?;
    cluster.start_task_tracker_on("jobtracker-b", "tt-b", "work", 8, &[&allow], &[])?;

    // Every job goes in through tracker A; both trackers claim from the
    // shared queue.
    // One line per job so each run records its own task id.
    let lines: Vec<String> = (0..JOBS)
        .map(|i| {
            serde_json::json!({
                "task_id": format!("job-{i}"),
                "shell": {
                    "program": allow,
                    "args": [record.display().to_string(), format!("job-{i}")],
                },
            })
            .to_string()
        })
        .collect();
    let jobs_file = cluster.dir().join("jobs.jsonl");
    std::fs::write(&jobs_file, lines.join("\n") + "\n")?;
    let out = cluster.jobclient(&[
        "--json",
        "submit",
        "--node-group",
        "work",
        "--from-file",
        &jobs_file.display().to_string(),
    ])?;
    let results: serde_json::Value =
        serde_json::from_str(&out).context("jobclient --json output")?;
    let ids: Vec<String> = results
        .as_array()
        .context("a JSON array of results")?
        .iter()
        .map(|r| {
            r.get("job_id")
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .with_context(|| format!("refused: {r}"))
        })
        .collect::<Result<_>>()?;
    anyhow::ensure!(ids.len() == JOBS, "{} acks for {JOBS} jobs", ids.len());

    let seen = wait_until(Duration::from_secs(120), "a hundred runs", || async {
        let n = runs_by_task(&record).len();
        Ok(if n >= 100 {
            Ok(n)
        } else {
            Err(format!("{n} runs"))
        })
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", cluster.logs()))?;
    cluster.proc(TRACKER)?.kill9();
    assert!(seen < JOBS, "the kill came in the middle of the run");

    let client = JobClient::connect(vec![b_url.clone()]).await?;
    let jobs = wait_all_succeeded(&client, "work", JOBS, Duration::from_secs(240))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", cluster.logs()))?;

    let by_id: HashMap<&str, &lts_common::Job> =
        jobs.iter().map(|j| (j.job_id.as_str(), j)).collect();
    for id in &ids {
        let job = by_id
            .get(id.as_str())
            .with_context(|| format!("acked job {id} was lost"))?;
        assert_eq!(job.state, JobState::Succeeded);
    }
    let runs = runs_by_task(&record);
    assert_eq!(runs.len(), JOBS, "every job ran");
    let twice: Vec<(&String, &usize)> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.len() <= KILLED_SLOTS,
        "only runs in flight on the killed tracker's TaskTracker may run again: {twice:?}"
    );
    let again = jobs.iter().filter(|j| j.attempt > 1).count();
    assert!(
        again <= KILLED_SLOTS,
        "{again} jobs needed a second attempt; at most {KILLED_SLOTS} were in flight on the killed tracker"
    );
    Ok(())
}

/// A database name suffix unique to this run.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}_{}", std::process::id())
}
