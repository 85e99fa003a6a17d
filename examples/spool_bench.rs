//! Benchmark of the JobClient spool: how fast jobs are spooled while no
//! JobTracker is reachable (single submits, one caller and many; batches of
//! 1,000) and replayed once one is, beside batched submits to a live
//! JobTracker (embedded default, a child process) in the same run.
//!
//! ```text
//! cargo build --release --bin jobtracker -p lts-jobtracker
//! cargo build --release -p lts-examples --example spool_bench
//! target/release/examples/spool_bench --jobs 100000 --single 5000
//! ```

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use clap::Parser;
use lts_common::JobSpec;
use lts_jobclient::{ClientOptions, JobClient, SpoolOptions, SpoolingClient, SubmitOutcome};

#[path = "support/mod.rs"]
mod support;
use support::start_tracker;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Jobs submitted in batches of --batch: to the live tracker, and to
    /// the spool.
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,
    /// Jobs spooled one per submit call (by one caller, then by --callers).
    #[arg(long, default_value_t = 5_000)]
    single: usize,
    /// Jobs per batch.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Jobs per replay request; default: the spool's default.
    #[arg(long)]
    replay_batch: Option<usize>,
    /// Concurrent callers for the second single-submit figure.
    #[arg(long, default_value_t = 64)]
    callers: usize,
    /// Path of the jobtracker binary; default: beside this program.
    #[arg(long)]
    jobtracker_bin: Option<std::path::PathBuf>,
}

/// Nothing listens on port 1 of localhost: connections are refused at once.
const DEAD_ADDRESS: &str = "127.0.0.1:1";

fn job(prefix: &str, i: usize) -> JobSpec {
    let mut spec = JobSpec::new(format!("{prefix}-{i}"), "spool-bench");
    spec.payload = format!(r#"{{"program": "/bin/true", "args": ["{i}"]}}"#).into_bytes();
    spec
}

fn rate(jobs: usize, took: Duration) -> f64 {
    jobs as f64 / took.as_secs_f64()
}

fn spool_options(replay_batch: Option<usize>) -> SpoolOptions {
    let defaults = SpoolOptions::default();
    SpoolOptions {
        submit_attempts: 1,
        background_replay: false,
        replay_batch: replay_batch.unwrap_or(defaults.replay_batch),
        ..defaults
    }
}

async fn spool_batches(
    spooling: &SpoolingClient,
    prefix: &str,
    jobs: usize,
    batch: usize,
) -> Result<Duration> {
    let start = Instant::now();
    let mut i = 0;
    while i < jobs {
        let n = batch.min(jobs - i);
        let specs: Vec<JobSpec> = (i..i + n).map(|k| job(prefix, k)).collect();
        let outcomes = spooling.submit(specs).await?;
        ensure!(
            outcomes
                .iter()
                .all(|o| matches!(o, SubmitOutcome::Spooled { .. })),
            "a job was not spooled"
        );
        i += n;
    }
    Ok(start.elapsed())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let tracker = start_tracker(args.jobtracker_bin.as_deref()).await?;
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    };

    // Batched submits to a live tracker.
    let live = JobClient::connect_with(vec![tracker.url.clone()], options.clone()).await?;
    let start = Instant::now();
    let mut i = 0;
    while i < args.jobs {
        let n = args.batch.min(args.jobs - i);
        let specs: Vec<JobSpec> = (i..i + n).map(|k| job("live", k)).collect();
        let outcomes = live.submit(specs).await?;
        ensure!(
            outcomes.iter().all(|o| o.is_accepted()),
            "a job was refused"
        );
        i += n;
    }
    let live_rate = rate(args.jobs, start.elapsed());
    println!(
        "live tracker, batches of {}: {:>9.0} jobs/s ({} jobs)",
        args.batch, live_rate, args.jobs
    );

    let dir = tempfile::tempdir()?;
    let spool_dir = dir.path().join("spool");
    let dead = JobClient::new(vec![DEAD_ADDRESS.into()], options.clone())?;
    let spooling = dead.with_spool(&spool_dir, spool_options(args.replay_batch))?;

    // Single submits, one caller: each returns once its job is on disk.
    let start = Instant::now();
    for k in 0..args.single {
        spooling.submit(vec![job("single", k)]).await?;
    }
    let single_rate = rate(args.single, start.elapsed());
    println!(
        "spool, single submits, 1 caller: {:>9.0} jobs/s ({} jobs)",
        single_rate, args.single
    );

    // Single submits, many callers: their flushes are shared.
    let start = Instant::now();
    let per = args.single / args.callers.max(1);
    let mut tasks = Vec::new();
    for c in 0..args.callers.max(1) {
        let spooling = spooling.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..per {
                spooling.submit(vec![job(&format!("multi{c}"), k)]).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let multi_jobs = per * args.callers.max(1);
    let multi_rate = rate(multi_jobs, start.elapsed());
    println!(
        "spool, single submits, {} callers: {:>9.0} jobs/s ({} jobs)",
        args.callers, multi_rate, multi_jobs
    );

    // Batches.
    let took = spool_batches(&spooling, "batch", args.jobs, args.batch).await?;
    let batch_rate = rate(args.jobs, took);
    println!(
        "spool, batches of {}: {:>9.0} jobs/s ({} jobs)",
        args.batch, batch_rate, args.jobs
    );
    let status = spooling.status();
    println!(
        "spool holds {} jobs, {} bytes of jobs, {} bytes on disk",
        status.entries, status.bytes, status.disk_bytes
    );
    spooling.close().await?;

    // Replay to the live tracker.
    let replayer = JobClient::connect_with(vec![tracker.url.clone()], options)
        .await?
        .with_spool(&spool_dir, spool_options(args.replay_batch))?;
    let held = replayer.depth() as usize;
    let start = Instant::now();
    let progress = replayer.replay().await?;
    let replay_rate = rate(held, start.elapsed());
    ensure!(
        progress.replayed as usize == held && progress.remaining == 0,
        "replay left jobs behind: {progress:?}"
    );
    println!(
        "replay to the live tracker, {} jobs a request: {:>9.0} jobs/s ({} jobs)",
        spool_options(args.replay_batch).replay_batch,
        replay_rate,
        held
    );
    replayer.close().await?;

    println!(
        "spooled batches / live batches: {:.2} (target >= 0.5); replay / live batches: {:.2} (target >= 1.0)",
        batch_rate / live_rate,
        replay_rate / live_rate
    );
    drop(tracker);
    Ok(())
}
