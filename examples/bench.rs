//! Benchmark of the embedded default, every process on this machine.
//!
//! It starts the `jobtracker` binary (release build, beside this program)
//! as a child process with a fresh data directory, and drives it from this
//! process with a JobClient and a TaskTracker whose runner does nothing.
//! It prints:
//! - one job per call with one call in flight: each call's latency p50/p99
//!   and jobs/s, beside the fsync latency of the disk under the tracker's
//!   data directory (a 4 KiB write and `fdatasync`, the same way);
//! - batched submit: jobs/s stored (durable on ack) in batches;
//! - end to end: no-op jobs/s from the first submit to the last outcome
//!   stored by the tracker;
//! - submit-to-start latency p50/p99/max at half the end-to-end rate, from
//!   just before the submit call to the runner's start;
//! - the JobTracker's CPU time per job and its peak RSS.
//!
//! ```text
//! cargo build --release --bins && cargo run --release --example bench
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use hdrhistogram::Histogram;
use lts_common::{JobSpec, LogKind};
use lts_jobclient::JobClient;

#[path = "support/mod.rs"]
mod support;
use support::{
    cpu_and_rss, metric, scrape, start_tracker, submit_all, wait_completed, ProbeTracker,
    TrackerProcess,
};

// The allocator of the `jobtracker` and `tasktracker` binaries, for the
// TaskTracker and client running in this process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Clone)]
struct Args {
    /// Jobs for the batched submit phase.
    #[arg(long, default_value_t = 50_000)]
    submit_jobs: usize,
    /// Jobs for the end-to-end phase. Its rate is the peak the latency
    /// phase takes half of, so the phase must last seconds: the first half
    /// second runs faster than the rate the tracker keeps up (on 2 cores,
    /// a median of 85,000 jobs/s over nine runs of 50,000 jobs, 70,000
    /// over eight runs of 200,000).
    #[arg(long, default_value_t = 200_000)]
    e2e_jobs: usize,
    /// Jobs per submit call.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Submit calls in flight at once.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// TaskTracker slots.
    #[arg(long, default_value_t = 512)]
    slots: u32,
    /// Length of the latency phase.
    #[arg(long, default_value = "5s", value_parser = humantime_parse)]
    latency_for: Duration,
    /// Rate of the latency phase in jobs/s; default: half the end-to-end rate.
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Milliseconds between submit calls in the latency phase.
    #[arg(long, default_value_t = 1)]
    tick_ms: u64,
    /// Calls of the one-job-per-call phase (one call in flight); 0 skips it.
    #[arg(long, default_value_t = 2000)]
    single_calls: usize,
    /// Path of the jobtracker binary; default: beside this program.
    #[arg(long)]
    jobtracker_bin: Option<std::path::PathBuf>,
    /// Print figures as one JSON object too.
    #[arg(long)]
    json: bool,
}

fn humantime_parse(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s}: not a duration like 5s"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        _ => Err(format!("{s}: use s or ms")),
    }
}

fn jobs(prefix: &str, group: &str, n: usize, base: Option<Instant>) -> Vec<JobSpec> {
    (0..n)
        .map(|i| {
            let mut s = JobSpec::new(format!("{prefix}-{i}"), group);
            if let Some(base) = base {
                s.params
                    .insert("t".into(), base.elapsed().as_micros().to_string());
            }
            s
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let tracker = start_tracker(args.jobtracker_bin.as_deref()).await?;
    let log = tracker.dir.path().join("jobtracker.log");
    let result = run(&args, &tracker).await;
    if result.is_err() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        eprintln!("--- jobtracker log tail ---");
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
    }
    result
}

/// p50 and p99 of samples in microseconds, as ms.
fn p50_p99_ms(samples: &[u64]) -> Result<(f64, f64)> {
    let mut h = Histogram::<u64>::new(3)?;
    for &us in samples {
        h.record(us.max(1))?;
    }
    Ok((
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
    ))
}

/// Latency of a 4 KiB write and `fdatasync` in `dir`, `n` times, in
/// microseconds: what one durable submit cannot go below.
fn fsync_samples(dir: &std::path::Path, n: usize) -> Result<Vec<u64>> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        samples.push(t.elapsed().as_micros() as u64);
    }
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(samples)
}

async fn run(args: &Args, tracker: &TrackerProcess) -> Result<()> {
    let pid = tracker.child.id();
    let client = JobClient::connect(vec![tracker.url.clone()]).await?;
    let mut figures: HashMap<&str, f64> = HashMap::new();
    println!("benchmark of the embedded default (sled), every process on this machine");

    // 0. One job per call, one call in flight, into a node group nobody
    // serves; then the disk's own fsync latency on the same filesystem.
    if args.single_calls > 0 {
        let mut samples = Vec::with_capacity(args.single_calls);
        let t = Instant::now();
        for i in 0..args.single_calls {
            let spec = JobSpec::new(format!("one-{i}"), "bench-single");
            let call = Instant::now();
            client.submit(vec![spec]).await?;
            samples.push(call.elapsed().as_micros() as u64);
        }
        let rate = args.single_calls as f64 / t.elapsed().as_secs_f64();
        let (p50, p99) = p50_p99_ms(&samples)?;
        let (f50, f99) = p50_p99_ms(&fsync_samples(tracker.dir.path(), 500)?)?;
        println!(
            "one job per call:    {rate:>10.0} jobs/s  (one call in flight; per call p50 {p50:.2} ms, p99 {p99:.2} ms; {} calls)",
            args.single_calls
        );
        println!("  this disk's fsync (4 KiB write + fdatasync): p50 {f50:.2} ms, p99 {f99:.2} ms");
        figures.insert("single_call_jobs_per_s", rate);
        figures.insert("single_call_p50_ms", p50);
        figures.insert("single_call_p99_ms", p99);
        figures.insert("fsync_p50_ms", f50);
        figures.insert("fsync_p99_ms", f99);
    }

    // 1. Batched submit into a node group nobody serves.
    let specs = jobs("s", "bench-submit", args.submit_jobs, None);
    let t = Instant::now();
    submit_all(&client, specs, args.batch, args.in_flight).await?;
    let submit_rate = args.submit_jobs as f64 / t.elapsed().as_secs_f64();
    println!(
        "batched submit:      {submit_rate:>10.0} jobs/s  ({} jobs, batches of {}, {} in flight)",
        args.submit_jobs, args.batch, args.in_flight
    );
    figures.insert("batched_submit_jobs_per_s", submit_rate);

    // 2. End to end with a no-op TaskTracker.
    let base = Instant::now();
    let probe = ProbeTracker::start(&tracker.url, "bench", args.slots, base);
    let (cpu0, _) = cpu_and_rss(pid)?;
    let done0 = metric(
        &scrape(&tracker.metrics).await?,
        "lts_jobtracker_jobs_completed_total",
    );
    let specs = jobs("e", "bench", args.e2e_jobs, None);
    let t = Instant::now();
    submit_all(&client, specs, args.batch, args.in_flight).await?;
    wait_completed(
        &tracker.metrics,
        done0 + args.e2e_jobs as f64,
        Duration::from_secs(600),
    )
    .await?;
    let e2e_secs = t.elapsed().as_secs_f64();
    let e2e_rate = args.e2e_jobs as f64 / e2e_secs;
    let (cpu1, _) = cpu_and_rss(pid)?;
    let cpu_us = (cpu1 - cpu0) * 1e6 / args.e2e_jobs as f64;
    println!(
        "end to end (no-op):  {e2e_rate:>10.0} jobs/s  ({} jobs in {e2e_secs:.2} s, {} slots)",
        args.e2e_jobs, args.slots
    );
    println!("jobtracker CPU:      {cpu_us:>10.1} us/job (submit, dispatch, outcome, logs)");
    figures.insert("e2e_jobs_per_s", e2e_rate);
    figures.insert("tracker_cpu_us_per_job", cpu_us);

    // 3. Latency at half the end-to-end rate (or the rate asked for), one
    // submit call every `--tick-ms` milliseconds.
    let rate = args.latency_rate.unwrap_or(e2e_rate / 2.0).max(1.0);
    let per_tick = rate * args.tick_ms.max(1) as f64 / 1000.0;
    let done_before = metric(
        &scrape(&tracker.metrics).await?,
        "lts_jobtracker_jobs_completed_total",
    );
    let mut tick = tokio::time::interval(Duration::from_millis(args.tick_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut owed = 0.0f64;
    let mut sent = 0usize;
    let mut inflight = Vec::new();
    // Bounded so a slow tracker shows up as latency, not as a pile of
    // requests the connection refuses.
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    let (tracker_cpu0, _) = cpu_and_rss(pid)?;
    let (own_cpu0, _) = cpu_and_rss(std::process::id())?;
    while start.elapsed() < args.latency_for {
        tick.tick().await;
        owed += per_tick;
        let n = owed.floor() as usize;
        if n == 0 {
            continue;
        }
        owed -= n as f64;
        let batch: Vec<JobSpec> = (0..n)
            .map(|i| {
                let mut s = JobSpec::new(format!("l-{}", sent + i), "bench");
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
    for t in inflight {
        t.await??;
    }
    wait_completed(
        &tracker.metrics,
        done_before + sent as f64,
        Duration::from_secs(600),
    )
    .await?;
    let (tracker_cpu1, _) = cpu_and_rss(pid)?;
    let (own_cpu1, _) = cpu_and_rss(std::process::id())?;
    let mut h = Histogram::<u64>::new(3)?;
    let samples = probe.samples_us()?;
    for &us in &samples {
        h.record(us)?;
    }
    // In start order, a quarter second of jobs at a time: shows whether
    // the tail is spread out or a few stalls.
    let quarter = ((rate / 4.0) as usize).max(1);
    let windows: Vec<String> = samples
        .chunks(quarter)
        .map(|c| {
            let mut c = c.to_vec();
            c.sort_unstable();
            format!(
                "{:.1}",
                c[(c.len() * 99 / 100).min(c.len() - 1)] as f64 / 1000.0
            )
        })
        .collect();
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "submit-to-start at {rate:.0} jobs/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} jobs)",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
        h.len()
    );
    let per_job = |cpu: f64| cpu * 1e6 / sent.max(1) as f64;
    println!(
        "  CPU per job at this rate: jobtracker {:.1} us, this process (JobClient and TaskTracker) {:.1} us",
        per_job(tracker_cpu1 - tracker_cpu0),
        per_job(own_cpu1 - own_cpu0)
    );
    figures.insert(
        "latency_tracker_cpu_us_per_job",
        per_job(tracker_cpu1 - tracker_cpu0),
    );
    figures.insert("latency_bench_cpu_us_per_job", per_job(own_cpu1 - own_cpu0));
    println!("  p99 of each quarter second, ms: {}", windows.join(" "));
    // Where the slowest jobs spent their time, from their execution logs
    // (the tracker's and TaskTracker's clocks are this machine's).
    println!("  slowest job of the 8 slowest quarter seconds, ms from submit: received / dispatched / started (TaskTracker) / run began");
    for (us, job_id, began_ms) in probe.slowest()?.into_iter().take(8) {
        let submitted = began_ms as f64 - us as f64 / 1000.0;
        let lines = client.log(&job_id).await?;
        let at = |kind: LogKind| -> String {
            lines
                .iter()
                .find(|l| l.kind == kind)
                .map(|l| format!("{:.0}", l.at_ms as f64 - submitted))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "    {:>7.1}: {:>5} / {:>5} / {:>5} / {:>5.0}  (started at {began_ms})",
            us as f64 / 1000.0,
            at(LogKind::Received),
            at(LogKind::Dispatched),
            at(LogKind::Started),
            began_ms as f64 - submitted
        );
    }
    figures.insert("latency_rate_jobs_per_s", rate);
    figures.insert("latency_p50_ms", ms(h.value_at_quantile(0.5)));
    figures.insert("latency_p99_ms", ms(h.value_at_quantile(0.99)));
    figures.insert("latency_max_ms", ms(h.max()));

    let (_, rss) = cpu_and_rss(pid)?;
    println!(
        "jobtracker peak RSS: {:>10.1} MiB",
        rss as f64 / (1024.0 * 1024.0)
    );
    figures.insert("tracker_peak_rss_mib", rss as f64 / (1024.0 * 1024.0));
    println!("targets (2 cores): e2e >= 10000 jobs/s, batched submit >= 50000 jobs/s, p99 < 10 ms");
    if args.json {
        let body: Vec<String> = figures
            .iter()
            .map(|(k, v)| format!("\"{k}\": {v:.3}"))
            .collect();
        println!("{{{}}}", body.join(", "));
    }
    probe.stop().await;
    Ok(())
}
