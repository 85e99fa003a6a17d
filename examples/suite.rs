//! Our side of the benchmark suite (`bench/run`): one workload on the
//! embedded default, every process on this machine, figures as one JSON
//! object on the last line of stdout (the contract in `bench/README.md`).
//!
//! The JobTracker and, for the drain workloads, a TaskTracker with the
//! built-in no-op runner run as child processes (binaries beside this
//! program), so their CPU time and memory are their own. The latency
//! workload runs its TaskTracker in this process, with a runner that
//! notes when each job starts.
//!
//! ```text
//! cargo build --release --bins --example suite
//! target/release/examples/suite --workload w2 --jobs 50000
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use lts_common::JobSpec;
use lts_jobclient::JobClient;
use serde_json::json;

#[path = "support/mod.rs"]
mod support;
use support::{cpu_and_rss, submit_all, ProbeTracker, TrackerProcess};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Workload {
    /// Enqueue: jobs one per call (many calls in flight), then in batches.
    W1,
    /// Drain: pre-enqueued jobs run to completion.
    W2,
    /// Latency: a steady rate, enqueue-to-start.
    W3,
    /// Scale: a million queued jobs in one node group.
    W4,
    /// Backlog: W4's shape at ten million jobs, the tracker's memory
    /// budget at 256 MiB unless `--memory-budget` says otherwise.
    W5,
}

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum)]
    workload: Workload,
    /// Jobs (W1, W2, W4, W5).
    #[arg(long, default_value_t = 50_000)]
    jobs: usize,
    /// The tracker's `--memory-budget` (W5: 256MiB unless given; the
    /// others: the tracker's default unless given).
    #[arg(long)]
    memory_budget: Option<String>,
    /// Jobs per second (W3).
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Length in seconds (W3).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Jobs per submit call when batched.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Submit calls in flight when batched.
    #[arg(long, default_value_t = 4)]
    batch_in_flight: usize,
    /// Submit calls in flight when submitting one job per call.
    #[arg(long, default_value_t = 64)]
    single_in_flight: usize,
    /// TaskTracker slots.
    #[arg(long, default_value_t = 512)]
    slots: u32,
    /// Every submit makes its own call (the JobClient otherwise lets small
    /// submits made at the same time share calls).
    #[arg(long)]
    no_coalesce: bool,
    /// Directory of the jobtracker and tasktracker binaries; default: the
    /// target directory this program was built into.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

const DURABILITY: &str = "sled: a submit is fsynced (group commit) before its ack; an outcome is written at once and fsynced by the next group commit, milliseconds later, without waiting";

fn bin_dir(args: &Args) -> Result<PathBuf> {
    match &args.bin_dir {
        Some(d) => Ok(d.clone()),
        None => Ok(std::env::current_exe()?
            .parent()
            .and_then(|p| p.parent())
            .context("no target directory")?
            .to_path_buf()),
    }
}

/// The `tasktracker` binary with the no-op runner, as a child process.
struct TaskTrackerProcess(std::process::Child);

impl Drop for TaskTrackerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_tasktracker(
    dir: &Path,
    tracker: &TrackerProcess,
    group: &str,
    slots: u32,
) -> Result<TaskTrackerProcess> {
    let bin = dir.join("tasktracker");
    let log = std::fs::File::create(tracker.dir.path().join("tasktracker.log"))?;
    let child = std::process::Command::new(&bin)
        .args(["--jobtracker", &tracker.url, "--node-group", group])
        .args(["--slots", &slots.to_string(), "--runner", "noop"])
        .env("RUST_LOG", "warn")
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(TaskTrackerProcess(child))
}

fn specs<'a>(prefix: &'a str, group: &'a str, n: usize) -> impl Iterator<Item = JobSpec> + 'a {
    (0..n).map(move |i| JobSpec::new(format!("{prefix}-{i}"), group))
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

const MIB: f64 = 1024.0 * 1024.0;

/// The JobClient of a workload.
async fn client(args: &Args, tracker: &TrackerProcess) -> Result<JobClient> {
    let options = lts_jobclient::ClientOptions {
        coalesce_submits: !args.no_coalesce,
        ..Default::default()
    };
    Ok(JobClient::connect_with(vec![tracker.url.clone()], options).await?)
}

async fn w1(args: &Args, tracker: &TrackerProcess) -> Result<serde_json::Value> {
    let client = client(args, tracker).await?;
    let t = Instant::now();
    submit_all(
        &client,
        specs("single", "w1-single", args.jobs),
        1,
        args.single_in_flight,
    )
    .await?;
    let single = args.jobs as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    submit_all(
        &client,
        specs("batched", "w1-batched", args.jobs),
        args.batch,
        args.batch_in_flight,
    )
    .await?;
    let batched = args.jobs as f64 / t.elapsed().as_secs_f64();
    Ok(json!({
        "jobs": args.jobs,
        "single_jobs_per_s": single,
        "batched_jobs_per_s": batched,
        "batch": args.batch,
        "in_flight": args.single_in_flight,
        "coalesce_submits": !args.no_coalesce,
    }))
}

/// Enqueues `jobs` (timed), then drains them with a TaskTracker process
/// (timed). Returns (submit jobs/s, drain jobs/s, figures of the processes).
async fn enqueue_then_drain(
    args: &Args,
    tracker: &TrackerProcess,
    group: &str,
) -> Result<(f64, f64, serde_json::Value)> {
    let pid = tracker.child.id();
    let client = client(args, tracker).await?;
    let (cpu0, _) = cpu_and_rss(pid)?;
    let t = Instant::now();
    submit_all(
        &client,
        specs(group, group, args.jobs),
        args.batch,
        args.batch_in_flight,
    )
    .await?;
    let submit_rate = args.jobs as f64 / t.elapsed().as_secs_f64();
    let disk = dir_bytes(tracker.dir.path()) as f64 / MIB;
    let (_, rss_queued) = cpu_and_rss(pid)?;
    let done0 = support::completed(&tracker.metrics).await?;
    let worker = start_tasktracker(&bin_dir(args)?, tracker, group, args.slots)?;
    let t = Instant::now();
    support::wait_completed(
        &tracker.metrics,
        done0 + args.jobs as f64,
        Duration::from_secs(1800),
    )
    .await?;
    let drain_rate = args.jobs as f64 / t.elapsed().as_secs_f64();
    let (cpu1, tracker_rss) = cpu_and_rss(pid)?;
    let (tt_cpu, tt_rss) = cpu_and_rss(worker.0.id())?;
    let per_job = |s: f64| s * 1e6 / args.jobs as f64;
    Ok((
        submit_rate,
        drain_rate,
        json!({
            "disk_mib": disk,
            "rss_queued_mib": rss_queued as f64 / MIB,
            "cpu_us_per_job": {"tracker": per_job(cpu1 - cpu0), "tasktracker": per_job(tt_cpu)},
            "peak_rss_mib": {"tracker": tracker_rss as f64 / MIB, "tasktracker": tt_rss as f64 / MIB},
        }),
    ))
}

async fn w2(args: &Args, tracker: &TrackerProcess) -> Result<serde_json::Value> {
    let (_, drain, procs) = enqueue_then_drain(args, tracker, "w2").await?;
    Ok(json!({
        "jobs": args.jobs,
        "seconds": args.jobs as f64 / drain,
        "jobs_per_s": drain,
        "cpu_us_per_job": procs["cpu_us_per_job"],
        "peak_rss_mib": procs["peak_rss_mib"],
    }))
}

async fn w3(args: &Args, tracker: &TrackerProcess) -> Result<serde_json::Value> {
    let client = client(args, tracker).await?;
    let base = Instant::now();
    let probe = ProbeTracker::start(&tracker.url, "w3", args.slots, base);
    let jobs = (f64::from(args.rate) * args.seconds).round() as usize;
    let done0 = support::completed(&tracker.metrics).await?;
    // One job per call, each sent at its own instant on a fixed schedule
    // (not after the previous call returned), so a slow call shows up as
    // latency of its job and does not thin the rate.
    let start = tokio::time::Instant::now();
    let every = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let mut calls = Vec::with_capacity(jobs);
    for i in 0..jobs {
        tokio::time::sleep_until(start + every * i as u32).await;
        let mut spec = JobSpec::new(format!("w3-{i}"), "w3");
        spec.params
            .insert("t".into(), base.elapsed().as_micros().to_string());
        let c = client.clone();
        calls.push(tokio::spawn(async move { c.submit(vec![spec]).await }));
    }
    for c in calls {
        let r = c.await??;
        if let Some(bad) = r.iter().find(|r| !r.is_accepted()) {
            bail!("a job was refused: {bad:?}");
        }
    }
    support::wait_completed(
        &tracker.metrics,
        done0 + jobs as f64,
        Duration::from_secs(120),
    )
    .await?;
    let mut s: Vec<f64> = probe
        .samples_us()?
        .into_iter()
        .map(|us| us as f64 / 1000.0)
        .collect();
    probe.stop().await;
    s.sort_by(f64::total_cmp);
    let q = |p: f64| s[((s.len() as f64 * p).ceil() as usize).clamp(1, s.len()) - 1];
    if s.is_empty() {
        bail!("no job started");
    }
    Ok(json!({
        "jobs": jobs,
        "rate": args.rate,
        "seconds": args.seconds,
        "p50_ms": q(0.50),
        "p99_ms": q(0.99),
        "max_ms": s[s.len() - 1],
        "samples_ms": s,
    }))
}

async fn w4(args: &Args, tracker: &TrackerProcess, group: &str) -> Result<serde_json::Value> {
    let (submit_rate, drain_rate, procs) = enqueue_then_drain(args, tracker, group).await?;
    Ok(json!({
        "jobs": args.jobs,
        "memory_budget": memory_budget(args),
        "submit_jobs_per_s": submit_rate,
        "drain_jobs_per_s": drain_rate,
        "rss_mib": procs["peak_rss_mib"]["tracker"],
        "rss_queued_mib": procs["rss_queued_mib"],
        "disk_mib": procs["disk_mib"],
        "cpu_us_per_job": procs["cpu_us_per_job"],
        "peak_rss_mib": procs["peak_rss_mib"],
    }))
}

/// The `--memory-budget` the tracker runs with, if the workload sets one.
fn memory_budget(args: &Args) -> Option<String> {
    match (&args.memory_budget, args.workload) {
        (Some(b), _) => Some(b.clone()),
        (None, Workload::W5) => Some("256MiB".into()),
        (None, _) => None,
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = bin_dir(&args)?;
    let mut extra: Vec<String> = match memory_budget(&args) {
        Some(b) => vec!["--memory-budget".into(), b],
        None => Vec::new(),
    };
    if matches!(args.workload, Workload::W5) {
        // The default quota of a node group is 10,000,000 unfinished jobs;
        // the backlog of W5 is one group's.
        extra.extend(["--max-jobs-per-node-group".into(), "0".into()]);
    }
    let tracker = support::start_tracker_with(Some(&dir.join("jobtracker")), &extra).await?;
    let result = match args.workload {
        Workload::W1 => w1(&args, &tracker).await,
        Workload::W2 => w2(&args, &tracker).await,
        Workload::W3 => w3(&args, &tracker).await,
        Workload::W4 => w4(&args, &tracker, "w4").await,
        Workload::W5 => w4(&args, &tracker, "w5").await,
    };
    let results = match result {
        Ok(r) => r,
        Err(e) => {
            let log = tracker.dir.path().join("jobtracker.log");
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            eprintln!("--- jobtracker log tail ---");
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
            return Err(e);
        }
    };
    let workload = format!("{:?}", args.workload).to_lowercase();
    let out = json!({
        "system": "lts-embedded",
        "version": env!("CARGO_PKG_VERSION"),
        "workload": workload,
        "durability": DURABILITY,
        "results": results,
        "notes": format!(
            "JobTracker and TaskTracker (no-op runner, {} slots) as child processes; the W3 TaskTracker runs in this process to note start times. Single: one job per call, {} calls in flight; batched: {} jobs per call, {} in flight.",
            args.slots, args.single_in_flight, args.batch, args.batch_in_flight
        ),
    });
    println!("{out}");
    Ok(())
}
