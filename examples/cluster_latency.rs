//! Submit-to-start latency in cluster mode: a job submitted through one
//! JobTracker, started by a TaskTracker connected to another, beside the
//! same figure on one tracker, in one run.
//!
//! It starts two `jobtracker` processes (release build, beside this
//! program) in one cluster over the MongoDB and ZooKeeper it is given, and
//! drives them from this process: a JobClient submitting to tracker A at a
//! steady rate, and TaskTrackers whose runner notes the time from just
//! before the submit call to the run's start. Phase "one tracker": the
//! TaskTracker is connected to A. Phase "across trackers": it is connected
//! to B, so every job reaches it through B, woken by A's notice.
//!
//! ```text
//! cargo build --release --bins
//! cargo run --release -p lts-examples --example cluster_latency -- \
//!     --zookeeper 127.0.0.1:2181 --mongodb mongodb://127.0.0.1:27017/
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use hdrhistogram::Histogram;
use lts_common::JobSpec;
use lts_jobclient::JobClient;

#[path = "support/mod.rs"]
mod support;
use support::{start_tracker_with, wait_completed, ProbeTracker, TrackerProcess};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// ZooKeeper of the cluster.
    #[arg(long, env = "LTS_BENCH_ZOOKEEPER", default_value = "127.0.0.1:2181")]
    zookeeper: String,
    /// MongoDB both trackers share (a fresh database per run).
    #[arg(
        long,
        env = "LTS_BENCH_MONGODB_URI",
        default_value = "mongodb://127.0.0.1:27017/"
    )]
    mongodb: String,
    /// Jobs per second submitted in each phase.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Length of each phase.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    phase: Duration,
    /// Milliseconds between submit calls.
    #[arg(long, default_value_t = 10)]
    tick_ms: u64,
    /// TaskTracker slots.
    #[arg(long, default_value_t = 256)]
    slots: u32,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let name = format!("latency{}", lts_common::now_ms());
    let tracker = |identity: &str| {
        [
            "--mongodb",
            &args.mongodb,
            "--mongodb-database",
            &name,
            "--mongodb-instance",
            identity,
            "--zookeeper",
            &args.zookeeper,
            "--cluster",
            &name,
            "--zk-session-timeout",
            "2s",
        ]
        .map(String::from)
    };
    let a = start_tracker_with(None, &tracker("jt-a")).await?;
    let b = start_tracker_with(None, &tracker("jt-b")).await?;
    println!(
        "submit-to-start in cluster mode: two JobTrackers over MongoDB ({}), {:.0} jobs/s for {:?} per phase",
        args.mongodb, args.rate, args.phase
    );
    let result = async {
        phase(&args, "one tracker", &a, &a, "one").await?;
        phase(&args, "across trackers", &a, &b, "cross").await
    }
    .await;
    if result.is_err() {
        for t in [&a, &b] {
            let text =
                std::fs::read_to_string(t.dir.path().join("jobtracker.log")).unwrap_or_default();
            eprintln!("--- log tail of the tracker at {} ---", t.url);
            let lines: Vec<&str> = text.lines().collect();
            for line in &lines[lines.len().saturating_sub(20)..] {
                eprintln!("{line}");
            }
        }
    }
    result
}

/// Submits to `submit_to` at the rate for the phase's length while a
/// TaskTracker of `group` is connected to `run_on`; prints the figures.
async fn phase(
    args: &Args,
    label: &str,
    submit_to: &TrackerProcess,
    run_on: &TrackerProcess,
    group: &str,
) -> Result<()> {
    let base = Instant::now();
    let probe = ProbeTracker::start(&run_on.url, group, args.slots, base);
    let client = JobClient::connect(vec![submit_to.url.clone()]).await?;
    // A first job, unstamped, so the TaskTracker is connected and the
    // path warm before the clock runs.
    let before_warm = support::completed(&run_on.metrics).await?;
    client
        .submit(vec![JobSpec::new(format!("{group}-warm"), group)])
        .await?;
    wait_completed(&run_on.metrics, before_warm + 1.0, Duration::from_secs(30)).await?;
    let done_before = before_warm + 1.0;

    let per_tick = args.rate * args.tick_ms.max(1) as f64 / 1000.0;
    let mut tick = tokio::time::interval(Duration::from_millis(args.tick_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    let start = Instant::now();
    let (mut owed, mut sent) = (0.0f64, 0usize);
    let mut inflight = Vec::new();
    while start.elapsed() < args.phase {
        tick.tick().await;
        owed += per_tick;
        let n = owed.floor() as usize;
        if n == 0 {
            continue;
        }
        owed -= n as f64;
        let batch: Vec<JobSpec> = (0..n)
            .map(|i| {
                let mut s = JobSpec::new(format!("{group}-{}", sent + i), group);
                s.params
                    .insert("t".into(), base.elapsed().as_micros().to_string());
                s
            })
            .collect();
        sent += n;
        let c = client.clone();
        let permit = permits.clone().acquire_owned().await?;
        inflight.push(tokio::spawn(async move {
            let r = c.submit(batch).await;
            drop(permit);
            r
        }));
    }
    let submitted_in = start.elapsed();
    for t in inflight {
        t.await??;
    }
    // Completions are counted by the tracker that stored the outcome: the
    // one the TaskTracker is connected to.
    wait_completed(
        &run_on.metrics,
        done_before + sent as f64,
        Duration::from_secs(600),
    )
    .await?;
    let mut h = Histogram::<u64>::new(3)?;
    let samples = probe.samples_us()?;
    for &us in &samples {
        h.record(us)?;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "{label:>16}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} jobs at {:.0} jobs/s)",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
        h.len(),
        sent as f64 / submitted_in.as_secs_f64()
    );
    probe.stop().await;
    Ok(())
}
