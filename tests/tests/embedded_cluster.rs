//! The three binaries as separate processes on the embedded default.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use lts_common::JobState;
use lts_jobclient::JobClient;
use lts_tests::{runs_by_task, sample, scrape, wait_all_succeeded, wait_until, Cluster, TRACKER};

const JOBS: usize = 1000;

/// A program for the shell runner that records each run it makes.
fn recorder(dir: &Path, pause: &str) -> Result<PathBuf> {
    let path = dir.join("record.sh");
    std::fs::write(
        &path,
        format!("#!/bin/sh\n{pause}\necho \"$LTS_TASK_ID $LTS_ATTEMPT\" >> \"$1\"\n"),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

fn submit_through_cli(
    cluster: &Cluster,
    group: &str,
    program: &Path,
    record: &Path,
) -> Result<Vec<String>> {
    let out = cluster.jobclient(&[
        "--json",
        "submit",
        "--node-group",
        group,
        "--count",
        &JOBS.to_string(),
        "--task-id-prefix",
        "job-",
        "--shell",
        &program.display().to_string(),
        &record.display().to_string(),
    ])?;
    let results: serde_json::Value =
        serde_json::from_str(&out).context("jobclient --json output")?;
    let results = results.as_array().context("a JSON array of results")?;
    anyhow::ensure!(
        results.len() == JOBS,
        "{} results for {JOBS} jobs",
        results.len()
    );
    let mut ids = Vec::new();
    for r in results {
        let id = r
            .get("job_id")
            .and_then(|v| v.as_str())
            .with_context(|| format!("refused: {r}"))?;
        ids.push(id.to_string());
    }
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_jobs_submitted_through_the_cli_run_once_each() -> Result<()> {
    let mut cluster = Cluster::new()?;
    let program = recorder(cluster.dir(), "")?;
    let record = cluster.dir().join("runs.txt");
    cluster.start_tracker(&["--metrics-addr", "127.0.0.1:0"])?;
    let allow = program.display().to_string();
    cluster.start_task_tracker("tt-1", "work", 8, &[&allow])?;
    cluster.start_task_tracker("tt-2", "work", 8, &[&allow])?;
    // The tracker's own count agrees that both joined before any work.
    let metrics = scrape(&cluster.metrics_url(TRACKER)?)?;
    assert_eq!(
        sample(
            &metrics,
            r#"lts_jobtracker_task_trackers{node_group="work"}"#
        ),
        Some(2.0),
        "{metrics}"
    );

    let ids = submit_through_cli(&cluster, "work", &program, &record)?;
    let client = JobClient::connect(vec![cluster.tracker_url()?]).await?;
    let jobs = match wait_all_succeeded(&client, "work", JOBS, Duration::from_secs(120)).await {
        Ok(j) => j,
        Err(e) => anyhow::bail!("{e}\n{}", cluster.logs()),
    };
    let mut listed: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
    listed.sort();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(listed, want, "the listed jobs are the submitted ones");
    assert!(
        jobs.iter().all(|j| j.attempt == 1),
        "no job needed a second attempt"
    );
    let runs = runs_by_task(&record);
    assert_eq!(runs.len(), JOBS, "every job ran");
    assert!(runs.values().all(|n| *n == 1), "no job ran twice");
    // Both TaskTrackers took work.
    let mut workers = std::collections::HashSet::new();
    for job in &jobs {
        for entry in client.log(&job.job_id).await? {
            if entry.kind == lts_common::LogKind::Dispatched {
                workers.insert(entry.worker);
            }
        }
        if workers.len() == 2 {
            break;
        }
    }
    assert_eq!(
        workers.len(),
        2,
        "work went to both TaskTrackers: {workers:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_job_completes_across_a_kill_9_of_the_tracker() -> Result<()> {
    let mut cluster = Cluster::new()?;
    let program = recorder(cluster.dir(), "sleep 0.02")?;
    let record = cluster.dir().join("runs.txt");
    cluster.start_tracker(&[])?;
    let allow = program.display().to_string();
    cluster.start_task_tracker("tt-1", "work", 8, &[&allow])?;
    cluster.start_task_tracker("tt-2", "work", 8, &[&allow])?;

    let ids = submit_through_cli(&cluster, "work", &program, &record)?;
    // Kill the tracker in the middle of the run.
    let seen = wait_until(Duration::from_secs(60), "a few hundred runs", || async {
        let n = runs_by_task(&record).len();
        Ok(if n >= 200 {
            Ok(n)
        } else {
            Err(format!("{n} runs"))
        })
    })
    .await?;
    cluster.proc("jobtracker")?.kill9();
    assert!(seen < JOBS, "the kill came in the middle of the run");
    cluster.start_tracker(&[])?;

    let client = JobClient::connect(vec![cluster.tracker_url()?]).await?;
    let jobs = match wait_all_succeeded(&client, "work", JOBS, Duration::from_secs(120)).await {
        Ok(j) => j,
        Err(e) => anyhow::bail!("{e}\n{}", cluster.logs()),
    };
    let by_id: HashMap<&str, &lts_common::Job> =
        jobs.iter().map(|j| (j.job_id.as_str(), j)).collect();
    for id in &ids {
        let job = by_id
            .get(id.as_str())
            .with_context(|| format!("acked job {id} was lost"))?;
        assert_eq!(job.state, JobState::Succeeded);
    }
    let runs = runs_by_task(&record);
    assert_eq!(runs.len(), JOBS, "every job ran at least once");
    Ok(())
}
