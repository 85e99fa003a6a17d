//! Benchmark of recovery from faults, with the real `jobtracker` and
//! `tasktracker` binaries as child processes on loopback. It prints
//! figures and asserts nothing.
//!
//! 1. Restarts: one JobTracker on a fixed data directory and address, two
//!    TaskTrackers of one node group, and a steady trickle of jobs (one
//!    submit every 20 ms). The JobTracker is killed with SIGKILL and started
//!    again at once, `--restarts` times. For each restart it prints the time
//!    from the kill to the first job started after the restart, and the
//!    time from the new process's start to its "listening" line (the part
//!    that is the JobTracker's own start-up).
//! 2. Frozen TaskTracker: three TaskTrackers of one group and `--cron-jobs`
//!    cron jobs firing every second. After a warm-up, one TaskTracker is
//!    stopped (SIGSTOP) for `--freeze` and then resumed (SIGCONT). It prints
//!    the start delay of the cycles (from a cycle's point to its run's
//!    start) p50/p99/max for the seconds before, during and after the
//!    freeze, and the cycles that ran twice.
//!
//! Every run is a shell job that appends `<task id> <start, Unix ms>` to a
//! ledger file, so starts are counted by what ran, independent of the
//! trackers' own records.
//!
//! ```text
//! cargo build --release --bins && cargo build --release -p lts-examples --example fault_bench
//! target/release/examples/fault_bench
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use lts_common::shell_job::ShellJob;
use lts_common::{JobSpec, MisfirePolicy, Schedule};
use lts_jobclient::{ClientOptions, JobClient};
use lts_tests::{Cluster, READY_TIMEOUT, TRACKER};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The shell that runs each job's one line; the TaskTrackers allow it.
const SHELL: &str = "/bin/sh";

/// What the JobTracker logs once it serves.
const LISTENING: &str = "jobtracker listening on ";

/// How often the program looks at a log or the ledger again: the
/// resolution of the restart figures.
const POLL: Duration = Duration::from_millis(5);

#[derive(Parser)]
#[command(
    about = "Kill-to-first-start over JobTracker restarts, and cron start delays \
                   around a frozen TaskTracker"
)]
struct Args {
    /// JobTracker restarts (kill -9, then start again at once).
    #[arg(long, default_value_t = 20)]
    restarts: u32,
    /// Time between two submits of the job trickle during the restarts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20ms")]
    submit_every: Duration,
    /// Steady running between one restart's first start and the next kill.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    settle: Duration,
    /// Cron jobs, each firing every second, for the frozen-TaskTracker part.
    #[arg(long, default_value_t = 20)]
    cron_jobs: usize,
    /// The JobTracker's heartbeat interval in the frozen-TaskTracker part
    /// (it gives a silent TaskTracker up after three).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    heartbeat_interval: Duration,
    /// Running before the freeze (the "before" figures).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    warm_up: Duration,
    /// How long the TaskTracker stays stopped.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "8s")]
    freeze: Duration,
    /// Running after the resume (the "after" figures).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    after: Duration,
    /// Slots of each TaskTracker.
    #[arg(long, default_value_t = 16)]
    slots: u32,
    /// Skip the restarts part.
    #[arg(long)]
    no_restarts: bool,
    /// Skip the frozen-TaskTracker part.
    #[arg(long)]
    no_freeze: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !args.no_restarts {
        anyhow::ensure!(args.restarts > 0, "--restarts must be at least 1");
        anyhow::ensure!(
            !args.submit_every.is_zero(),
            "--submit-every must be more than 0"
        );
        restarts(&args).await?;
    }
    if !args.no_freeze {
        anyhow::ensure!(args.cron_jobs > 0, "--cron-jobs must be at least 1");
        frozen_task_tracker(&args).await?;
    }
    Ok(())
}

/// A job payload: a shell line appending `<task id> <now, Unix ms>` to
/// `ledger`, written by the run itself as it starts.
fn ledger_payload(ledger: &Path) -> Result<Vec<u8>> {
    let job = ShellJob::new(
        SHELL,
        vec![
            "-c".to_string(),
            r#"echo "$LTS_TASK_ID $(date +%s%3N)" >> "$1""#.to_string(),
            "sh".to_string(),
            ledger.display().to_string(),
        ],
    );
    Ok(serde_json::to_vec(&job)?)
}

/// The ledger: (task id, start in Unix ms), one per run, in file order.
fn read_ledger(path: &Path) -> Vec<(String, i64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (task, at) = line.split_once(' ')?;
            Some((task.to_string(), at.trim().parse().ok()?))
        })
        .collect()
}

/// Starts the JobTracker [`TRACKER`] on `listen` with `data` and the
/// heartbeat `interval`, and waits until it serves.
fn start_tracker(
    cluster: &mut Cluster,
    listen: &str,
    data: &Path,
    interval: Duration,
) -> Result<()> {
    spawn_tracker(cluster, listen, data, interval)?;
    cluster.wait_healthy(TRACKER)
}

fn spawn_tracker(
    cluster: &mut Cluster,
    listen: &str,
    data: &Path,
    interval: Duration,
) -> Result<()> {
    let args = [
        "--listen".to_string(),
        listen.to_string(),
        "--data-dir".to_string(),
        data.display().to_string(),
        "--heartbeat-interval".to_string(),
        humantime::format_duration(interval).to_string(),
    ];
    cluster.spawn(TRACKER, "jobtracker", &args)
}

/// Starts TaskTrackers `names` of group `group`, allowing the shell.
fn start_task_trackers(
    cluster: &mut Cluster,
    names: &[&str],
    group: &str,
    slots: u32,
) -> Result<()> {
    for name in names {
        cluster.start_task_tracker(name, group, slots, &[SHELL])?;
    }
    Ok(())
}

fn now_ms() -> i64 {
    lts_common::now_ms()
}

/// Min, median and max of `values`, sorted in place.
fn min_median_max(values: &mut [i64]) -> Option<(i64, i64, i64)> {
    values.sort_unstable();
    let n = values.len();
    if n == 0 {
        return None;
    }
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2
    };
    Some((values[0], median, values[n - 1]))
}

/// The value at quantile `q` of sorted `values` (nearest rank).
fn quantile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Part 1: kill -9 and restart the JobTracker under a trickle of jobs.
async fn restarts(args: &Args) -> Result<()> {
    const GROUP: &str = "restarts";
    const TASK_TRACKERS: [&str; 2] = ["tt-1", "tt-2"];
    let mut cluster = Cluster::new()?;
    let data = cluster.dir().join("jobtracker-data");
    let ledger = cluster.dir().join("restarts-ledger.txt");
    // The default heartbeat interval: the restarts measure the defaults.
    let interval = Duration::from_secs(2);
    start_tracker(&mut cluster, "127.0.0.1:0", &data, interval)?;
    let url = cluster.tracker_url()?;
    let listen = url
        .strip_prefix("http://")
        .context("the JobTracker's address has no http:// prefix")?
        .to_string();
    start_task_trackers(&mut cluster, &TASK_TRACKERS, GROUP, args.slots)?;

    // Short timeouts: a submit that hits the dead tracker fails fast and
    // the trickle goes on; the jobs it acked before the kill are in the
    // store and run after the restart.
    let options = ClientOptions {
        connect_timeout: Duration::from_millis(200),
        request_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let client = JobClient::new(vec![url.clone()], options)?;
    let payload = ledger_payload(&ledger)?;
    let stop = CancellationToken::new();
    let trickle = tokio::spawn(trickle(
        client,
        payload,
        args.submit_every,
        GROUP,
        stop.clone(),
    ));
    // Guards the trickle: it stops when this part ends, also on an error.
    let _stop_trickle = stop.clone().drop_guard();

    wait_for_start_after(&ledger, now_ms(), "the first job of the trickle").await?;
    println!(
        "restarts: {} kill -9 of the JobTracker (heartbeat {}), 2 TaskTrackers, one job \
         submitted every {}",
        args.restarts,
        humantime::format_duration(interval),
        humantime::format_duration(args.submit_every)
    );
    println!("  #  kill-to-first-start  start-to-listening");
    let mut to_start = Vec::new();
    let mut to_listen = Vec::new();
    let mut kills = Vec::new();
    for round in 1..=args.restarts {
        tokio::time::sleep(args.settle).await;
        let killed = now_ms();
        kills.push(killed);
        cluster.proc(TRACKER)?.kill9();
        let spawned = now_ms();
        spawn_tracker(&mut cluster, &listen, &data, interval)?;
        let listening = wait_listening(&mut cluster).await?;
        cluster.wait_healthy(TRACKER)?;
        // A run the TaskTrackers began before the kill may write its line
        // after it; the new process starts nothing before it listens.
        let first =
            wait_for_start_after(&ledger, listening, "a job start after the restart").await?;
        println!(
            "{round:>3}  {:>16} ms  {:>15} ms",
            first - killed,
            listening - spawned
        );
        to_start.push(first - killed);
        to_listen.push(listening - spawned);
        for name in TASK_TRACKERS {
            cluster.wait_joined(TRACKER, name)?;
        }
    }
    stop.cancel();
    let submitted = trickle.await.context("the job trickle panicked")?;
    if let Some((min, median, max)) = min_median_max(&mut to_start) {
        println!("kill to first start: min {min} ms, median {median} ms, max {max} ms");
    }
    if let Some((min, median, max)) = min_median_max(&mut to_listen) {
        println!(
            "of which the JobTracker's own start (spawn to listening, polled every {} ms): \
             min {min} ms, median {median} ms, max {max} ms",
            POLL.as_millis()
        );
    }
    let runs = read_ledger(&ledger);
    let mut per_job: HashMap<&str, Vec<i64>> = HashMap::new();
    for (task, at) in &runs {
        per_job.entry(task.as_str()).or_default().push(*at);
    }
    let mut doubled: Vec<(&str, &Vec<i64>)> = per_job
        .iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(task, at)| (*task, at))
        .collect();
    doubled.sort_unstable_by_key(|(_, at)| at.first().copied());
    println!(
        "submits acked: {} (a submit whose answer the kill cut off is stored yet not counted), \
         jobs run: {}, runs: {}, jobs run more than once: {} (the last jobs acked may not have \
         run yet)",
        submitted.acked,
        per_job.len(),
        runs.len(),
        doubled.len()
    );
    for (task, at) in doubled.iter().take(10) {
        let first = at.first().copied().unwrap_or_default();
        let kill = kills.iter().copied().min_by_key(|&k| (k - first).abs());
        let since_kill = |t: i64| kill.map_or("-".to_string(), |k| format!("{:+} ms", t - k));
        let starts: Vec<String> = at.iter().map(|&t| since_kill(t)).collect();
        println!(
            "  {task}: started at {} from the nearest kill",
            starts.join(", ")
        );
    }
    Ok(())
}

/// What the trickle did.
struct Trickle {
    acked: u64,
}

/// Submits one job every `every` until `stop`, each its own task so that a
/// submit waiting on a dead tracker does not hold up the next.
async fn trickle(
    client: JobClient,
    payload: Vec<u8>,
    every: Duration,
    group: &'static str,
    stop: CancellationToken,
) -> Trickle {
    // Bounds the submits in flight while the tracker is down.
    let in_flight = Arc::new(Semaphore::new(64));
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            continue;
        };
        n += 1;
        let mut spec = JobSpec::new(format!("trickle-{n}"), group);
        spec.payload = payload.clone();
        let client = client.clone();
        let acked = acked.clone();
        tokio::spawn(async move {
            if let Ok(results) = client.submit(vec![spec]).await {
                let ok = results.iter().filter(|r| r.is_accepted()).count() as u64;
                acked.fetch_add(ok, std::sync::atomic::Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    // Let the submits under way finish, so the count is final.
    let _ = in_flight.acquire_many(64).await;
    Trickle {
        acked: acked.load(std::sync::atomic::Ordering::Relaxed),
    }
}

/// Waits for the JobTracker's "listening" line in its current life and
/// returns when this program saw it, Unix ms.
async fn wait_listening(cluster: &mut Cluster) -> Result<i64> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let p = cluster.proc(TRACKER)?;
        if p.current_log().contains(LISTENING) {
            return Ok(now_ms());
        }
        if let Some(status) = p.exited() {
            bail!(
                "the JobTracker exited with {status} before it listened; log tail:\n{}",
                p.log_tail(40)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the JobTracker did not listen within {READY_TIMEOUT:?}; log tail:\n{}",
                p.log_tail(40)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the ledger holds a start at or after `since` (Unix ms) and
/// returns the earliest such start.
async fn wait_for_start_after(ledger: &Path, since: i64, what: &str) -> Result<i64> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(first) = read_ledger(ledger)
            .into_iter()
            .map(|(_, at)| at)
            .filter(|&at| at >= since)
            .min()
        {
            return Ok(first);
        }
        if Instant::now() > deadline {
            bail!("no {what} within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Part 2: cron jobs on three TaskTrackers, one of them frozen a while.
async fn frozen_task_tracker(args: &Args) -> Result<()> {
    const GROUP: &str = "freeze";
    const TASK_TRACKERS: [&str; 3] = ["tt-a", "tt-b", "tt-c"];
    const FROZEN: &str = "tt-c";
    let mut cluster = Cluster::new()?;
    let data = cluster.dir().join("jobtracker-data");
    let ledger = cluster.dir().join("cron-ledger.txt");
    start_tracker(&mut cluster, "127.0.0.1:0", &data, args.heartbeat_interval)?;
    start_task_trackers(&mut cluster, &TASK_TRACKERS, GROUP, args.slots)?;
    let client = JobClient::connect(vec![cluster.tracker_url()?]).await?;
    let payload = ledger_payload(&ledger)?;
    let specs: Vec<JobSpec> = (0..args.cron_jobs)
        .map(|i| {
            let mut s = JobSpec::new(format!("cron-{i}"), GROUP);
            s.payload = payload.clone();
            // Fire-all: every point runs, late or not, so each one has a
            // start delay to measure.
            s.schedule = Schedule::Cron {
                expression: "* * * * * ?".into(),
                time_zone: String::new(),
                misfire: MisfirePolicy::FireAll,
            };
            s
        })
        .collect();
    let results = client.submit(specs).await?;
    if let Some(refused) = results.iter().find(|r| !r.is_accepted()) {
        bail!("the JobTracker refused cron job {}", refused.task_id());
    }
    // Points from the second after next on count: the first ones may be
    // due before the jobs were stored.
    let first_point = (now_ms() / 1000 + 2) * 1000;
    tokio::time::sleep(Duration::from_millis((first_point - now_ms()).max(0) as u64)).await;
    tokio::time::sleep(args.warm_up).await;
    // Freeze half-way between two points: frozen at a point, the
    // TaskTracker would hold that point's runs unstarted, and cycles due
    // before the freeze would count its delay.
    let mid_second = (now_ms() / 1000) * 1000 + 500;
    let until_mid = (mid_second - now_ms()).rem_euclid(1000) as u64;
    tokio::time::sleep(Duration::from_millis(until_mid)).await;

    let frozen_at = now_ms();
    cluster.proc(FROZEN)?.freeze()?;
    tokio::time::sleep(args.freeze).await;
    cluster.proc(FROZEN)?.thaw()?;
    let thawed_at = now_ms();
    tokio::time::sleep(args.after).await;
    // Points after this one may not have run yet when the ledger is read.
    let last_point = (now_ms() / 1000 - 2) * 1000;
    // Lets the runs of the last counted points finish their line.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let runs = read_ledger(&ledger);
    let mut starts: HashMap<String, Vec<i64>> = HashMap::new();
    for (task, at) in &runs {
        starts.entry(task.clone()).or_default().push(*at);
    }
    // Phase -> start delays of its cycles (first run of each).
    let mut phases: BTreeMap<u8, Vec<i64>> = BTreeMap::new();
    let (mut twice, mut missing) = (0usize, 0usize);
    for i in 0..args.cron_jobs {
        let mut point = first_point;
        while point <= last_point {
            let task = format!("cron-{i}@{point}");
            match starts.get(&task) {
                None => missing += 1,
                Some(at) => {
                    if at.len() > 1 {
                        twice += 1;
                    }
                    let first = at.iter().copied().min().unwrap_or(point);
                    let phase = if point < frozen_at {
                        0
                    } else if point < thawed_at {
                        1
                    } else {
                        2
                    };
                    phases.entry(phase).or_default().push(first - point);
                }
            }
            point += 1000;
        }
    }
    println!(
        "frozen TaskTracker: {} cron jobs every second on 3 TaskTrackers (heartbeat {}), \
         one stopped for {} after {} of warm-up",
        args.cron_jobs,
        humantime::format_duration(args.heartbeat_interval),
        humantime::format_duration(args.freeze),
        humantime::format_duration(args.warm_up)
    );
    println!("start delay (cycle point to run start):");
    let every: Vec<i64> = phases.values().flatten().copied().collect();
    phases.insert(3, every);
    for (phase, name) in [(0u8, "before"), (1, "during"), (2, "after"), (3, "all")] {
        let mut delays = phases.remove(&phase).unwrap_or_default();
        delays.sort_unstable();
        println!(
            "  {name:<6}  {:>4} cycles  p50 {:>5} ms  p99 {:>5} ms  max {:>5} ms",
            delays.len(),
            quantile(&delays, 0.5),
            quantile(&delays, 0.99),
            delays.last().copied().unwrap_or_default()
        );
    }
    println!("cycles that ran twice: {twice} (must be 0)");
    println!("cycles not run by the end: {missing}");
    Ok(())
}
