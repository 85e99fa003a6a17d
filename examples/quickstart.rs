//! The quickstart: a whole cluster on the embedded default, in one process.
//!
//! It starts a JobTracker (sled in a temporary data directory, no
//! ZooKeeper, no MongoDB), a TaskTracker with a small Rust runner, and a
//! JobClient; submits a batch of jobs of which some fail; shows progress
//! while their feedback arrives; and prints a summary.
//!
//! ```text
//! cargo run --release --example quickstart [-- --jobs 5000 --slots 64]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use lts_common::{JobSpec, JobState, Outcome, RetryPlan, RetryStep};
use lts_jobclient::JobClient;
use lts_tasktracker::{JobContext, JobRunner, TaskTrackerConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// How many jobs to submit.
    #[arg(long, default_value_t = 2000)]
    jobs: usize,
    /// Slots of the TaskTracker.
    #[arg(long, default_value_t = 64)]
    slots: u32,
    /// Keep the data here instead of a temporary directory.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
}

/// The work of the example: every 10th job fails for good, every 7th errors
/// on its first attempt and succeeds when retried.
struct ExampleRunner;

#[async_trait::async_trait]
impl JobRunner for ExampleRunner {
    async fn run(&self, ctx: JobContext) -> Outcome {
        let n: u64 = ctx
            .job
            .spec
            .params
            .get("n")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if n.is_multiple_of(10) {
            ctx.log
                .warn(format!("job {n}: refusing, multiples of ten always fail"));
            return Outcome::Failed(format!("job {n} is a multiple of ten"));
        }
        if n.is_multiple_of(7) && ctx.attempt == 1 {
            return Outcome::Error(format!("job {n}: a passing error, try again"));
        }
        Outcome::Success(format!("job {n} done"))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let shutdown = CancellationToken::new();

    // 1. The JobTracker, on a free loopback port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    let tracker = tokio::spawn(lts_jobtracker::serve(
        lts_jobtracker::TrackerConfig::embedded(&data_dir),
        listener,
        shutdown.clone().cancelled_owned(),
    ));

    // 2. A TaskTracker of node group "quickstart".
    let mut config = TaskTrackerConfig::new(addr.clone(), "quickstart");
    config.slots = args.slots;
    let task_tracker = tokio::spawn(lts_tasktracker::run(
        config,
        Arc::new(ExampleRunner),
        shutdown.clone().cancelled_owned(),
    ));

    // 3. A JobClient: subscribe to feedback first, then submit.
    let client = JobClient::connect(vec![addr.clone()]).await?;
    let mut feedback = client.feedback("quickstart-client", "quickstart").await?;
    let retry_once = RetryPlan {
        steps: vec![RetryStep::RetryAfter(50)],
        count: 1,
        forever: false,
    };
    let jobs: Vec<JobSpec> = (1..=args.jobs)
        .map(|n| {
            let mut spec = JobSpec::new(format!("quickstart-{n}"), "quickstart");
            spec.params.insert("n".into(), n.to_string());
            spec.need_feedback = true;
            spec.submit_node_group = "quickstart-client".into();
            spec.retry_plan = Some(retry_once.clone());
            spec
        })
        .collect();
    println!("JobTracker on {addr}, data in {}", data_dir.display());
    println!("submitting {} jobs to node group `quickstart`", args.jobs);
    let start = Instant::now();
    let results = client.submit(jobs).await?;
    let refused: Vec<_> = results.iter().filter(|r| !r.is_accepted()).collect();
    anyhow::ensure!(refused.is_empty(), "the tracker refused jobs: {refused:?}");

    let bar = indicatif::ProgressBar::new(args.jobs as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} jobs {per_sec} {msg}")
            .context("progress template")?,
    );
    let (mut succeeded, mut failed) = (0usize, 0usize);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < args.jobs {
        let batch = tokio::time::timeout(Duration::from_secs(60), feedback.next())
            .await
            .context("no feedback for 60 s")??;
        let ids: Vec<String> = batch.iter().map(|f| f.feedback_id.clone()).collect();
        for item in batch {
            // Feedback is at least once: count each job once.
            if seen.insert(item.job_id.clone()) {
                match item.state {
                    Some(JobState::Succeeded) => succeeded += 1,
                    _ => failed += 1,
                }
                bar.inc(1);
            }
        }
        feedback.ack(ids).await?;
        bar.set_message(format!("{succeeded} succeeded, {failed} failed"));
    }
    bar.finish();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "jobs: {}, succeeded: {succeeded}, failed: {failed}, seconds: {secs:.2}, jobs/s: {:.0}",
        args.jobs,
        args.jobs as f64 / secs
    );

    shutdown.cancel();
    task_tracker.await??;
    tracker.await??;
    Ok(())
}
