//! Round trips per job of the MongoDB store.
//!
//! Round trips, not timings, bound the MongoDB backend's throughput on a
//! real deployment, so this program counts them: it runs no-op jobs through
//! a `MongoStore` the way a JobTracker does at steady state (submit a
//! batch, claim it for a TaskTracker, note the starts, complete the batch)
//! and counts every command the driver sends with its command monitoring.
//!
//! ```text
//! cargo run --release --example mongo_round_trips -- \
//!     --uri mongodb://127.0.0.1:27017 --jobs 1000 --batch 1 --batch 10 --batch 100
//! ```
//!
//! Each run uses a fresh database named `lts_bench_<id>` and drops it at
//! the end.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use lts_common::{JobSpec, Outcome};
use lts_jobtracker::store::mongo::{MongoOptions, MongoStore};
use lts_jobtracker::store::{JobStore, RunReport, SubmitResult};

#[derive(Parser)]
struct Args {
    /// MongoDB to measure against.
    #[arg(
        long,
        env = "LTS_TEST_MONGODB_URI",
        default_value = "mongodb://127.0.0.1:27017"
    )]
    uri: String,
    /// Jobs per measured run.
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    /// Jobs per submit, claim and complete call; repeat for several runs.
    #[arg(long, default_values_t = [1usize, 10, 100])]
    batch: Vec<usize>,
}

/// Commands sent per phase of one run.
#[derive(Default)]
struct Counts {
    submit: u64,
    claim: u64,
    started: u64,
    complete: u64,
}

async fn run(uri: &str, jobs: usize, batch: usize) -> Result<(Counts, Duration)> {
    let database = format!("lts_bench_{}", lts_jobtracker::store::new_job_id());
    let store = MongoStore::new(MongoOptions {
        uri: uri.to_string(),
        database,
        log_retention: Duration::from_secs(3600),
        instance: "bench".into(),
        lease: Duration::from_secs(60),
    });
    store
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the store at {uri}: {e:?}"))?;
    store.recover(lts_common::now_ms()).await?;
    let mut counts = Counts::default();
    let measure = |slot: &mut u64, before: u64| *slot += store.commands_sent() - before;
    let started = Instant::now();
    let mut done = 0;
    while done < jobs {
        let n = batch.min(jobs - done);
        let specs: Vec<JobSpec> = (done..done + n)
            .map(|i| JobSpec::new(format!("noop-{i}"), "bench"))
            .collect();
        let now = lts_common::now_ms();
        let before = store.commands_sent();
        let results = store.submit(specs, now).await?;
        measure(&mut counts.submit, before);
        if !results
            .iter()
            .all(|r| matches!(r, SubmitResult::Created(_)))
        {
            bail!("a submit was refused: {results:?}");
        }

        let before = store.commands_sent();
        let claimed = store
            .claim("bench", &[("worker-1".to_string(), n)], now)
            .await?;
        measure(&mut counts.claim, before);
        let runs: Vec<(String, u32)> = claimed
            .per_grant
            .iter()
            .flatten()
            .map(|j| (j.job_id.clone(), j.attempt))
            .collect();
        if runs.len() != n {
            bail!("claimed {} of {n} jobs", runs.len());
        }

        let before = store.commands_sent();
        store.started(&runs, "worker-1", now).await?;
        measure(&mut counts.started, before);

        let reports = runs
            .iter()
            .map(|(job_id, attempt)| RunReport {
                job_id: job_id.clone(),
                attempt: *attempt,
                outcome: Outcome::Success(String::new()),
                started_at_ms: now,
                finished_at_ms: now,
                worker: "worker-1".into(),
            })
            .collect();
        let before = store.commands_sent();
        store.complete(reports, now).await?;
        measure(&mut counts.complete, before);
        done += n;
    }
    let took = started.elapsed();
    store.drop_database().await?;
    Ok((counts, took))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    println!(
        "no-op jobs through MongoStore at {} ({} jobs per run); round trips = commands counted by the driver's command monitoring",
        lts_jobtracker::store::mongo::redact_uri(&args.uri),
        args.jobs
    );
    println!(
        "{:>6} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "batch", "per job", "submit", "claim", "started", "complete", "seconds"
    );
    for &batch in &args.batch {
        if batch == 0 {
            bail!("--batch must be at least 1");
        }
        let (c, took) = run(&args.uri, args.jobs, batch)
            .await
            .with_context(|| format!("run with batch {batch}"))?;
        let per = |n: u64| n as f64 / args.jobs as f64;
        let total = c.submit + c.claim + c.started + c.complete;
        println!(
            "{batch:>6} {:>9.3} {:>8.3} {:>8.3} {:>8.3} {:>9.3} {:>9.1}",
            per(total),
            per(c.submit),
            per(c.claim),
            per(c.started),
            per(c.complete),
            took.as_secs_f64()
        );
    }
    Ok(())
}
