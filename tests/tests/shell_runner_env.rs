//! The environment a job passes to its program through the real binaries:
//! a variable off the TaskTracker's `--allow-env` list fails the job,
//! naming it, before the program runs; an allowed one reaches it.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{bail, Result};
use lts_common::{Job, JobSpec, JobState, Outcome};
use lts_jobclient::{JobClient, SubmitOutcome};
use lts_tests::{wait_until, Cluster};

/// Bound on every wait; a failure, not a measure of speed.
const WAIT: Duration = Duration::from_secs(30);
const GROUP: &str = "env";

async fn submit(client: &JobClient, task_id: &str, payload: serde_json::Value) -> Result<()> {
    let mut spec = JobSpec::new(task_id, GROUP);
    spec.payload = payload.to_string().into_bytes();
    match client.submit(vec![spec]).await?.as_slice() {
        [SubmitOutcome::Accepted { .. }] => Ok(()),
        other => bail!("not accepted: {other:?}"),
    }
}

async fn finished(client: &JobClient, task_id: &str) -> Result<Job> {
    wait_until(WAIT, &format!("job {task_id} to finish"), || async {
        let job = client.get_by_task(task_id, GROUP).await?;
        Ok(if job.state.is_final() {
            Ok(job)
        } else {
            Err(format!("{job:?}"))
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variable_off_the_allow_list_fails_the_job_and_runs_nothing() -> Result<()> {
    let mut cluster = Cluster::new()?;
    let dir = cluster.dir().to_path_buf();
    let script = dir.join("job.sh");
    std::fs::write(&script, "#!/bin/bash\necho \"greeting: $GREETING\"\n")?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let marker = dir.join("attacker-code-ran");
    let evil = dir.join("evil.sh");
    std::fs::write(&evil, format!("touch '{}'\n", marker.display()))?;
    cluster.start_tracker(&[])?;
    let allow = script.display().to_string();
    cluster.start_task_tracker_on(
        lts_tests::TRACKER,
        "tt",
        GROUP,
        2,
        &[&allow],
        &["--allow-env", "GREETING"],
    )?;
    let client = JobClient::connect(vec![cluster.tracker_url()?]).await?;

    submit(
        &client,
        "bash-env",
        serde_json::json!({"program": allow, "env": {"BASH_ENV": evil.display().to_string()}}),
    )
    .await?;
    let job = finished(&client, "bash-env").await?;
    assert_eq!(job.state, JobState::Failed, "{job:?}");
    match &job.last_outcome {
        Some(Outcome::Failed(m)) => {
            assert!(m.contains("BASH_ENV") && m.contains("--allow-env"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert!(!marker.exists(), "BASH_ENV ran the submitter's code");

    submit(
        &client,
        "greeting",
        serde_json::json!({"program": allow, "env": {"GREETING": "hi"}}),
    )
    .await?;
    let job = finished(&client, "greeting").await?;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    let lines: Vec<String> = client
        .log(&job.job_id)
        .await?
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert!(lines.iter().any(|l| l == "greeting: hi"), "{lines:?}");
    Ok(())
}
