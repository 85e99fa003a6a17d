//! Benchmark of cron firing: many cron jobs firing every second on one
//! JobTracker (embedded default, a child process), with a no-op
//! TaskTracker in this process.
//!
//! It prints the fire delay (from a cycle's scheduled instant to its
//! runner's start) p50/p99/max, the cycles that were missed or fired twice,
//! and the tracker's CPU.
//!
//! ```text
//! cargo build --release --bins --examples && target/release/examples/cron_bench --jobs 10000 --seconds 10
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use hdrhistogram::Histogram;
use lts_common::{JobSpec, MisfirePolicy, Outcome, Schedule};
use lts_jobclient::JobClient;
use lts_tasktracker::{JobContext, JobRunner, TaskTrackerConfig};
use tokio_util::sync::CancellationToken;

#[path = "support/mod.rs"]
mod support;
use support::{cpu_and_rss, start_tracker};

// The allocator of the `jobtracker` and `tasktracker` binaries, for the
// TaskTracker and client running in this process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Cron jobs, each firing every second.
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Seconds to measure, after the first full second.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// TaskTracker slots; default: one per cron job (at most the limit of
    /// one TaskTracker), so a second's cycles can all run at their point.
    #[arg(long)]
    slots: Option<u32>,
    /// TaskTracker ahead slots (jobs held before their instant); default:
    /// one per cron job, so a whole second's cycles are sent ahead.
    #[arg(long)]
    ahead_slots: Option<u32>,
    /// Path of the jobtracker binary; default: beside this program.
    #[arg(long)]
    jobtracker_bin: Option<std::path::PathBuf>,
}

/// (cron job task id, point) -> (runs, first start - point in ms).
type Runs = HashMap<(String, i64), (u32, i64)>;

/// Records, per cycle, how often it ran and how late it first started.
struct Probe {
    runs: Arc<Mutex<Runs>>,
}

#[async_trait::async_trait]
impl JobRunner for Probe {
    async fn run(&self, ctx: JobContext) -> Outcome {
        let now = lts_common::now_ms();
        let task = &ctx.job.spec.task_id;
        if let Some((parent, point)) = task.rsplit_once('@') {
            if let Ok(point) = point.parse::<i64>() {
                if let Ok(mut r) = self.runs.lock() {
                    r.entry((parent.to_string(), point))
                        .or_insert((0, now - point))
                        .0 += 1;
                }
            }
        }
        Outcome::Success(String::new())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let tracker = start_tracker(args.jobtracker_bin.as_deref()).await?;
    let pid = tracker.child.id();
    let client = JobClient::connect(vec![tracker.url.clone()]).await?;
    // Sized for every cycle up front: growing it under its lock would hold
    // up every run of that second behind the rehash.
    let runs = Arc::new(Mutex::new(HashMap::with_capacity(
        args.jobs * (args.seconds as usize + 4),
    )));
    let stop = CancellationToken::new();
    let mut config = TaskTrackerConfig::new(tracker.url.clone(), "cron-bench");
    config.slots = args
        .slots
        .unwrap_or(args.jobs.clamp(1, lts_common::limits::MAX_SLOTS as usize) as u32);
    config.ahead_slots = args
        .ahead_slots
        .unwrap_or(args.jobs.min(lts_common::limits::MAX_AHEAD_SLOTS as usize) as u32);
    let task_tracker = tokio::spawn(lts_tasktracker::run(
        config,
        Arc::new(Probe { runs: runs.clone() }),
        stop.clone().cancelled_owned(),
    ));

    let specs: Vec<JobSpec> = (0..args.jobs)
        .map(|i| {
            let mut s = JobSpec::new(format!("cron-{i}"), "cron-bench");
            s.schedule = Schedule::Cron {
                expression: "* * * * * ?".into(),
                time_zone: String::new(),
                misfire: MisfirePolicy::FireAll,
            };
            s
        })
        .collect();
    let results = client.submit(specs).await?;
    anyhow::ensure!(
        results.iter().all(|r| r.is_accepted()),
        "the tracker refused cron jobs"
    );
    // Measure whole seconds, starting at the second after next.
    let start_s = lts_common::now_ms() / 1000 + 2;
    let end_s = start_s + args.seconds as i64;
    let wait = (end_s * 1000 + 1500 - lts_common::now_ms()).max(0) as u64;
    let (cpu0, _) = cpu_and_rss(pid)?;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let cpu = cpu_and_rss(pid)?.0 - cpu0;
    let wall = t.elapsed().as_secs_f64();
    stop.cancel();
    let _ = task_tracker.await;

    let runs = runs.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    // Only the points of the measured seconds count.
    let (mut missed, mut doubled, mut early) = (0usize, 0usize, 0usize);
    let mut h = Histogram::<u64>::new(3)?;
    let mut per_second = (start_s..end_s)
        .map(|_| Histogram::<u64>::new(3))
        .collect::<Result<Vec<_>, _>>()?;
    for i in 0..args.jobs {
        let task = format!("cron-{i}");
        for (s, second) in (start_s..end_s).zip(per_second.iter_mut()) {
            match runs.get(&(task.clone(), s * 1000)) {
                None => missed += 1,
                Some(&(n, delay)) => {
                    if n > 1 {
                        doubled += 1;
                    }
                    if delay < 0 {
                        early += 1;
                    }
                    h.record(delay.max(0) as u64)?;
                    second.record(delay.max(0) as u64)?;
                }
            }
        }
    }
    let expected = args.jobs * args.seconds as usize;
    println!(
        "{} cron jobs every second, {} s measured: {expected} cycles expected",
        args.jobs, args.seconds
    );
    println!(
        "fire delay (scheduled instant to runner start): p50 {} ms, p99 {} ms, max {} ms",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max()
    );
    let p99s: Vec<u64> = per_second
        .iter()
        .map(|h| h.value_at_quantile(0.99))
        .collect();
    println!("p99 of each measured second, ms: {p99s:?}");
    if let Some(worst) = per_second.iter().max_by_key(|h| h.value_at_quantile(0.99)) {
        println!(
            "worst second: min {} ms, p10 {} ms, p50 {} ms, p90 {} ms, max {} ms",
            worst.min(),
            worst.value_at_quantile(0.1),
            worst.value_at_quantile(0.5),
            worst.value_at_quantile(0.9),
            worst.max()
        );
    }
    println!(
        "cycles not run by the end of the window (late; each point still fires once): {missed}, cycles run twice: {doubled}, started before their point: {early}"
    );
    println!(
        "jobtracker CPU: {:.0}% of one core ({:.1} us per cycle)",
        cpu / wall * 100.0,
        cpu * 1e6 / expected.max(1) as f64
    );
    println!("target (2 cores): p99 <= 50 ms, no missed and no doubled cycle");
    Ok(())
}
