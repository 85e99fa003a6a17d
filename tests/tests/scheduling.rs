//! Cron, repeat, retry plans, timeouts and operator verbs, with the real
//! binaries as separate processes.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use lts_common::{JobSpec, JobState, MisfirePolicy, RetryPlan, RetryStep, Schedule};
use lts_jobclient::{JobClient, JobFilter};
use lts_proto::v1 as pb;
use lts_tests::{wait_until, Cluster};

/// A program for the shell runner: records each run, then sleeps and exits
/// as told by its arguments.
fn program(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("run.sh");
    std::fs::write(
        &path,
        "#!/bin/sh\n# $1 record file, $2 seconds to sleep, $3 exit status\necho \"$LTS_TASK_ID $LTS_ATTEMPT\" >> \"$1\"\nsleep \"$2\"\nexit \"$3\"\n",
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

fn shell(program: &Path, record: &Path, sleep: &str, status: &str) -> Vec<u8> {
    serde_json::json!({
        "program": program.display().to_string(),
        "args": [record.display().to_string(), sleep, status],
    })
    .to_string()
    .into_bytes()
}

/// Runs recorded: (task id, attempt) in order.
fn runs(record: &Path) -> Vec<(String, u32)> {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

struct Setup {
    cluster: Cluster,
    client: JobClient,
    program: PathBuf,
    record: PathBuf,
}

async fn setup() -> Result<Setup> {
    let mut cluster = Cluster::new()?;
    let program = program(cluster.dir())?;
    let record = cluster.dir().join("runs.txt");
    cluster.start_tracker(&[])?;
    let allow = program.display().to_string();
    cluster.start_task_tracker("tt", "g", 4, &[&allow])?;
    let client = JobClient::connect(vec![cluster.tracker_url()?]).await?;
    Ok(Setup {
        cluster,
        client,
        program,
        record,
    })
}

async fn admin(
    s: &Setup,
) -> Result<pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>> {
    Ok(pb::admin_service_client::AdminServiceClient::connect(s.cluster.tracker_url()?).await?)
}

async fn submit(s: &Setup, spec: JobSpec) -> Result<String> {
    let r = s.client.submit(vec![spec]).await?;
    r[0].job_id()
        .map(str::to_string)
        .with_context(|| format!("refused: {:?}", r[0]))
}

async fn state_of(s: &Setup, job_id: &str) -> Result<JobState> {
    Ok(s.client.get(job_id).await?.state)
}

/// Cycles of `task` listed by the tracker: point (ms) -> jobs.
async fn cycles(s: &Setup, task: &str) -> Result<BTreeMap<i64, Vec<lts_common::Job>>> {
    let filter = JobFilter {
        task_id_prefix: Some(format!("{task}@")),
        ..Default::default()
    };
    let mut out: BTreeMap<i64, Vec<lts_common::Job>> = BTreeMap::new();
    let mut token: Option<String> = None;
    loop {
        let page = s.client.list(&filter, 1000, token.as_deref()).await?;
        for j in page.jobs {
            let point: i64 = j
                .spec
                .task_id
                .rsplit('@')
                .next()
                .and_then(|p| p.parse().ok())
                .context("a cycle's task id ends in its point")?;
            out.entry(point).or_default().push(j);
        }
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => return Ok(out),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_job_fires_every_second_once_across_a_kill_9() -> Result<()> {
    let mut s = setup().await?;
    let mut spec = JobSpec::new("tick", "g");
    spec.schedule = Schedule::Cron {
        expression: "* * * * * ?".into(),
        time_zone: String::new(),
        misfire: MisfirePolicy::FireAll,
    };
    spec.payload = shell(&s.program, &s.record, "0", "0");
    submit(&s, spec).await?;
    let record = s.record.clone();
    wait_until(Duration::from_secs(20), "three cycles", || async {
        let n = runs(&record).len();
        Ok(if n >= 3 {
            Ok(())
        } else {
            Err(format!("{n} runs"))
        })
    })
    .await?;
    s.cluster.proc("jobtracker")?.kill9();
    s.cluster.start_tracker(&[])?;
    let client = JobClient::connect(vec![s.cluster.tracker_url()?]).await?;
    s.client = client;
    let got = wait_until(Duration::from_secs(40), "eleven cycles run", || async {
        let c = cycles(&s, "tick").await?;
        let ran: BTreeSet<String> = runs(&s.record).into_iter().map(|(t, _)| t).collect();
        let done = c
            .values()
            .flatten()
            .filter(|j| ran.contains(&j.spec.task_id))
            .count();
        Ok(if c.len() >= 11 && done >= 11 {
            Ok(c)
        } else {
            Err(format!("{} cycles, {done} run", c.len()))
        })
    })
    .await
    .with_context(|| s.cluster.logs())?;
    let points: Vec<i64> = got.keys().copied().collect();
    for pair in points.windows(2) {
        assert_eq!(pair[1] - pair[0], 1000, "no gap between cycles: {points:?}");
    }
    assert!(
        got.values().all(|jobs| jobs.len() == 1),
        "each point fired once: {got:?}"
    );
    let mut seen = BTreeSet::new();
    for run in runs(&s.record) {
        assert!(
            seen.insert(run.clone()),
            "a run was recorded twice: {run:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_job_with_count_5_runs_exactly_5_times() -> Result<()> {
    let s = setup().await?;
    let mut spec = JobSpec::new("five", "g");
    spec.schedule = Schedule::Repeat {
        interval_ms: 200,
        count: 5,
    };
    spec.payload = shell(&s.program, &s.record, "0", "0");
    let id = submit(&s, spec).await?;
    wait_until(
        Duration::from_secs(30),
        "the repeat job to finish",
        || async {
            let st = state_of(&s, &id).await?;
            let done = cycles(&s, "five")
                .await?
                .values()
                .flatten()
                .filter(|j| j.state == JobState::Succeeded)
                .count();
            Ok(if st == JobState::Succeeded && done == 5 {
                Ok(())
            } else {
                Err(format!("{st:?}, {done} cycles succeeded"))
            })
        },
    )
    .await
    .with_context(|| s.cluster.logs())?;
    assert_eq!(cycles(&s, "five").await?.len(), 5);
    assert_eq!(runs(&s.record).len(), 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_ending_in_suspend_parks_the_job_until_resumed() -> Result<()> {
    let s = setup().await?;
    let mut spec = JobSpec::new("flaky", "g");
    spec.retry_plan = Some(RetryPlan {
        steps: vec![
            RetryStep::RetryAfter(1_000),
            RetryStep::RetryAfter(1_000),
            RetryStep::Suspend,
        ],
        count: 1,
        forever: false,
    });
    spec.payload = shell(&s.program, &s.record, "0", "1");
    let id = submit(&s, spec).await?;
    wait_until(
        Duration::from_secs(30),
        "suspended after 3 runs",
        || async {
            let st = state_of(&s, &id).await?;
            let n = runs(&s.record).len();
            Ok(if st == JobState::Suspended {
                Ok(())
            } else {
                Err(format!("{st:?} after {n} runs"))
            })
        },
    )
    .await
    .with_context(|| s.cluster.logs())?;
    assert_eq!(runs(&s.record).len(), 3);
    admin(&s)
        .await?
        .resume_job(pb::JobRef { job_id: id.clone() })
        .await?;
    wait_until(Duration::from_secs(30), "a fourth run", || async {
        let n = runs(&s.record).len();
        let st = state_of(&s, &id).await?;
        // The plan ran through once: the next error gives up.
        Ok(if n == 4 && st == JobState::Failed {
            Ok(())
        } else {
            Err(format!("{st:?} after {n} runs"))
        })
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_timeout_is_cancelled_and_retried() -> Result<()> {
    let s = setup().await?;
    let mut spec = JobSpec::new("slow", "g");
    spec.timeout_ms = 500;
    spec.retry_plan = Some(RetryPlan {
        steps: vec![RetryStep::Retry],
        count: 1,
        forever: false,
    });
    spec.payload = shell(&s.program, &s.record, "30", "0");
    let id = submit(&s, spec).await?;
    wait_until(Duration::from_secs(30), "two timed-out runs", || async {
        let st = state_of(&s, &id).await?;
        Ok(if st == JobState::Failed {
            Ok(())
        } else {
            Err(format!("{st:?}"))
        })
    })
    .await
    .with_context(|| s.cluster.logs())?;
    let attempts: Vec<u32> = runs(&s.record).into_iter().map(|(_, a)| a).collect();
    assert_eq!(attempts, [1, 2], "the timed-out run was retried once");
    let log = s.client.log(&id).await?;
    assert!(
        log.iter().any(|e| e.message.contains("timed out")),
        "the log says it timed out: {log:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_cron_job_does_not_fire_until_resumed() -> Result<()> {
    let s = setup().await?;
    let mut spec = JobSpec::new("paused", "g");
    spec.schedule = Schedule::Cron {
        expression: "* * * * * ?".into(),
        time_zone: String::new(),
        misfire: MisfirePolicy::Skip,
    };
    spec.payload = shell(&s.program, &s.record, "0", "0");
    let id = submit(&s, spec).await?;
    let mut admin = admin(&s).await?;
    let job = admin
        .suspend_job(pb::JobRef { job_id: id.clone() })
        .await?
        .into_inner()
        .job
        .context("job")?;
    assert_eq!(job.state, pb::JobState::Suspended as i32);
    let before = cycles(&s, "paused").await?.len();
    // A control job on the same schedule: once the scheduler has fired
    // three of its cycles, it has passed at least two points where the
    // suspended job would have fired too.
    let mut control = JobSpec::new("control", "g");
    control.schedule = Schedule::Cron {
        expression: "* * * * * ?".into(),
        time_zone: String::new(),
        misfire: MisfirePolicy::Skip,
    };
    control.payload = shell(&s.program, &s.record, "0", "0");
    submit(&s, control).await?;
    wait_until(
        Duration::from_secs(10),
        "three cycles of the control job",
        || async {
            let n = cycles(&s, "control").await?.len();
            Ok(if n >= 3 {
                Ok(())
            } else {
                Err(format!("{n} cycles"))
            })
        },
    )
    .await
    .with_context(|| s.cluster.logs())?;
    let during = cycles(&s, "paused").await?;
    assert_eq!(
        during.len(),
        before,
        "a suspended cron job fired: {during:?}"
    );
    admin.resume_job(pb::JobRef { job_id: id.clone() }).await?;
    wait_until(Duration::from_secs(10), "a cycle after resume", || async {
        let n = cycles(&s, "paused").await?.len();
        Ok(if n > before {
            Ok(())
        } else {
            Err(format!("{n} cycles"))
        })
    })
    .await?;
    Ok(())
}
