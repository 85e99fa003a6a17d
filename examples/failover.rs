//! Benchmark of failover in cluster mode: the real `jobtracker` and
//! `tasktracker` binaries as child processes on loopback, over a running
//! ZooKeeper and MongoDB. It prints figures and asserts nothing.
//!
//! Each scenario runs `--runs` times on a fresh cluster (its own cluster
//! name in ZooKeeper and its own database, dropped afterwards) and prints
//! the minimum, median and maximum in milliseconds:
//!
//! 1. `master-kill`: three JobTrackers; the master gets SIGKILL. Time from
//!    the kill to another tracker's "leading" log line. Bound by the
//!    ZooKeeper session timeout (`--session`).
//! 2. `master-term`: the same with SIGTERM: the master leaves the cluster
//!    before it drains, so another leads at once.
//! 3. `task-tracker-kill`: two JobTrackers, two TaskTrackers of one node
//!    group with one slot each, one long job running. The TaskTracker
//!    running it gets SIGKILL. Time from the kill to the job's start on the
//!    other TaskTracker, as the run itself writes it.
//! 4. `tracker-kill`: two JobTrackers and TaskTrackers until one is
//!    connected to the tracker that is not master. That tracker gets
//!    SIGKILL. Time from the kill to the last of its TaskTrackers
//!    connected to the other tracker (its "TaskTracker connected" line).
//!
//! Times on log lines are the lines' own timestamps, so the figures do
//! not depend on how often this program looks.
//!
//! ```text
//! cargo build --release -p lts-jobtracker -p lts-tasktracker -p lts-jobclient --bins
//! cargo run --release -p lts-examples --example failover -- --runs 5 \
//!     --zookeeper 127.0.0.1:2181 --mongodb mongodb://127.0.0.1:27017/
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use lts_common::shell_job::ShellJob;
use lts_common::{JobSpec, MisfirePolicy, Schedule};
use lts_jobclient::{ClientOptions, JobClient};
use lts_jobtracker::store::FIRE_AHEAD_MS;
use lts_tests::{joins, Cluster, READY_TIMEOUT};

/// The shell that runs the long job; the TaskTrackers allow it.
const SHELL: &str = "/bin/sh";

/// What a JobTracker logs when it becomes master.
const LEADING: &str = "leading: once-only work starts";

/// What a JobTracker logs once it is registered in the cluster.
const JOINED: &str = "joined the cluster";

/// How often this program looks at logs and the ledger again.
const POLL: Duration = Duration::from_millis(5);

/// The node group of the TaskTrackers.
const GROUP: &str = "failover";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// SIGKILL the master: time until another tracker leads.
    MasterKill,
    /// SIGTERM the master: time until another tracker leads.
    MasterTerm,
    /// SIGKILL the TaskTracker running a job: time until it starts again
    /// on the other TaskTracker.
    TaskTrackerKill,
    /// SIGKILL a JobTracker that is not master: time until its
    /// TaskTrackers are connected to another tracker.
    TrackerKill,
    /// SIGKILL the master while cron jobs fire and jobs run (the
    /// `--load-*` options; run only when named): every acked job runs, no
    /// cycle runs twice.
    MasterKillUnderLoad,
}

impl Scenario {
    fn title(self) -> &'static str {
        match self {
            Scenario::MasterKill => "kill -9 master -> another tracker leads",
            Scenario::MasterTerm => "SIGTERM master -> another tracker leads",
            Scenario::TaskTrackerKill => "kill -9 TaskTracker -> its job starts elsewhere",
            Scenario::TrackerKill => "kill -9 non-master JobTracker -> its TaskTracker reconnected",
            Scenario::MasterKillUnderLoad => {
                "kill -9 master under load -> every acked job ran, cycles fire again"
            }
        }
    }
}

#[derive(Parser)]
#[command(about = "Failover times of a cluster: master loss, TaskTracker loss, JobTracker loss")]
struct Args {
    /// Runs per scenario.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// ZooKeeper, host:port[,host:port...]; its tickTime must allow
    /// `--session`.
    #[arg(long, env = "LTS_TEST_ZOOKEEPER")]
    zookeeper: String,
    /// MongoDB connection string; each run uses a database of its own and
    /// drops it.
    #[arg(long, env = "LTS_TEST_MONGODB_URI")]
    mongodb: String,
    /// ZooKeeper session timeout of every node.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    session: Duration,
    /// The JobTrackers' heartbeat interval on TaskTracker streams.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    heartbeat_interval: Duration,
    /// The scenarios to run; all when not given.
    #[arg(long, value_enum, value_delimiter = ',')]
    scenario: Vec<Scenario>,
    /// Keep the logs of every run slower than this many milliseconds (and
    /// of failed runs) in a directory under the system's temp directory,
    /// and print where.
    #[arg(long, value_name = "MS")]
    keep_logs_slower_than: Option<i64>,
    /// master-kill-under-load: cron jobs firing every second.
    #[arg(long, default_value_t = 1000)]
    load_cron_jobs: usize,
    /// master-kill-under-load: jobs submitted and running when the master
    /// is killed (each runs --load-job-seconds).
    #[arg(long, default_value_t = 5000)]
    load_jobs: usize,
    #[arg(long, default_value = "0.5")]
    load_job_seconds: String,
    /// master-kill-under-load: slots of each of its two TaskTrackers.
    #[arg(long, default_value_t = 256)]
    load_slots: u32,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    let scenarios = if args.scenario.is_empty() {
        vec![
            Scenario::MasterKill,
            Scenario::MasterTerm,
            Scenario::TaskTrackerKill,
            Scenario::TrackerKill,
        ]
    } else {
        args.scenario.clone()
    };
    println!(
        "failover: {} runs per scenario, ZooKeeper session {}, heartbeat interval {}, {} cores",
        args.runs,
        humantime::format_duration(args.session),
        humantime::format_duration(args.heartbeat_interval),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let mongo = mongodb::Client::with_uri_str(&args.mongodb)
        .await
        .with_context(|| format!("connecting to {}", args.mongodb))?;
    // Figures by title, in the order they first came.
    let mut results: Vec<(&'static str, Vec<i64>)> = Vec::new();
    for scenario in scenarios {
        for run in 0..args.runs {
            let name = format!("failover-{}-{}-{run}", std::process::id(), now_ms());
            let database = name.replace('-', "_");
            let outcome = measure(scenario, &args, &name, &database).await;
            if let Err(e) = mongo.database(&database).drop().await {
                eprintln!("could not drop database {database}: {e}");
            }
            let figures = outcome.with_context(|| format!("{scenario:?} run {run}"))?;
            for (title, ms) in figures {
                println!("  {title:<66} run {run}: {ms} ms");
                match results.iter_mut().find(|(t, _)| *t == title) {
                    Some((_, times)) => times.push(ms),
                    None => results.push((title, vec![ms])),
                }
            }
        }
    }
    println!();
    println!("| scenario | runs | min ms | median ms | max ms |");
    println!("|---|---|---|---|---|");
    for (title, mut times) in results {
        if let Some((min, median, max)) = min_median_max(&mut times) {
            println!("| {title} | {} | {min} | {median} | {max} |", times.len());
        }
    }
    Ok(())
}

/// The figures of one run of `scenario`, by title.
async fn measure(
    scenario: Scenario,
    args: &Args,
    name: &str,
    database: &str,
) -> Result<Vec<(&'static str, i64)>> {
    let mut run = Run::new(args, name, database)?;
    let result = match scenario {
        Scenario::MasterKill => master_loss(&mut run, false)
            .await
            .map(|(led, fired, late)| {
                vec![
                    (scenario.title(), led),
                    (
                        "kill -9 master -> first cron cycle fired by the new master starts",
                        fired,
                    ),
                    ("kill -9 master: that cycle's start after its point", late),
                ]
            }),
        Scenario::MasterTerm => master_loss(&mut run, true).await.map(|(led, fired, late)| {
            vec![
                (scenario.title(), led),
                (
                    "SIGTERM master -> first cron cycle fired by the new master starts",
                    fired,
                ),
                ("SIGTERM master: that cycle's start after its point", late),
            ]
        }),
        Scenario::TaskTrackerKill => task_tracker_loss(&mut run)
            .await
            .map(|ms| vec![(scenario.title(), ms)]),
        Scenario::TrackerKill => tracker_loss(&mut run)
            .await
            .map(|ms| vec![(scenario.title(), ms)]),
        Scenario::MasterKillUnderLoad => master_loss_under_load(&mut run, args).await,
    };
    if result.is_err() {
        eprintln!("{}", run.cluster.logs());
    }
    run.stop();
    let slow = match (&result, args.keep_logs_slower_than) {
        (Ok(figures), Some(limit)) => figures.iter().any(|(_, ms)| *ms > limit),
        (Err(_), Some(_)) => true,
        _ => false,
    };
    if slow {
        match keep_logs(run.cluster.dir(), name) {
            Ok(kept) => println!("  logs of {name} kept in {}", kept.display()),
            Err(e) => eprintln!("could not keep the logs of {name}: {e}"),
        }
    }
    result
}

/// One cluster: its processes and how they reach ZooKeeper and MongoDB.
struct Run {
    cluster: Cluster,
    name: String,
    database: String,
    zookeeper: String,
    mongodb: String,
    session: String,
    heartbeat: String,
    /// JobTracker names in start order.
    trackers: Vec<String>,
    /// TaskTracker names in start order.
    task_trackers: Vec<String>,
}

impl Run {
    fn new(args: &Args, name: &str, database: &str) -> Result<Run> {
        Ok(Run {
            cluster: Cluster::new()?,
            name: name.to_string(),
            database: database.to_string(),
            zookeeper: args.zookeeper.clone(),
            mongodb: args.mongodb.clone(),
            session: humantime::format_duration(args.session).to_string(),
            heartbeat: humantime::format_duration(args.heartbeat_interval).to_string(),
            trackers: Vec::new(),
            task_trackers: Vec::new(),
        })
    }

    fn cluster_flags(&self) -> Vec<String> {
        vec![
            "--zookeeper".into(),
            self.zookeeper.clone(),
            "--cluster".into(),
            self.name.clone(),
            "--zk-session-timeout".into(),
            self.session.clone(),
        ]
    }

    /// Starts the JobTracker `name` without waiting for it.
    fn spawn_tracker(&mut self, name: &str) -> Result<()> {
        let data = self.cluster.dir().join(format!("{name}-data"));
        let mut args: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--mongodb".into(),
            self.mongodb.clone(),
            "--mongodb-database".into(),
            self.database.clone(),
            "--mongodb-instance".into(),
            name.into(),
            "--heartbeat-interval".into(),
            self.heartbeat.clone(),
        ];
        args.extend(self.cluster_flags());
        self.cluster.spawn(name, "jobtracker", &args)?;
        self.trackers.push(name.to_string());
        Ok(())
    }

    /// Waits until the JobTracker `name` serves and is in the cluster.
    async fn wait_tracker(&mut self, name: &str) -> Result<()> {
        self.cluster.wait_healthy(name)?;
        self.wait_log(name, JOINED).await.map(|_| ())
    }

    /// Starts the JobTrackers `names`: the first becomes master before the
    /// others start, so the master is known.
    async fn start_trackers(&mut self, names: &[&str]) -> Result<()> {
        let (first, rest) = names.split_first().context("no JobTracker to start")?;
        self.spawn_tracker(first)?;
        self.wait_tracker(first).await?;
        self.wait_log(first, LEADING).await?;
        for name in rest {
            self.spawn_tracker(name)?;
        }
        for name in rest {
            self.wait_tracker(name).await?;
        }
        Ok(())
    }

    /// Starts the TaskTracker `name` (one slot, the shell allowed), which
    /// finds a JobTracker through ZooKeeper; returns the JobTracker it
    /// connected to.
    async fn start_task_tracker(&mut self, name: &str) -> Result<String> {
        self.start_task_tracker_with(name, 1).await
    }

    /// Starts a TaskTracker of `slots` slots; returns the tracker it joined.
    async fn start_task_tracker_with(&mut self, name: &str, slots: u32) -> Result<String> {
        let mut args: Vec<String> = vec![
            "--node-group".into(),
            GROUP.into(),
            "--slots".into(),
            slots.to_string(),
            "--identity".into(),
            name.into(),
            "--allow".into(),
            SHELL.into(),
        ];
        args.extend(self.cluster_flags());
        self.cluster.spawn(name, "tasktracker", &args)?;
        self.task_trackers.push(name.to_string());
        self.wait_joined(name, &[])
            .await
            .map(|(tracker, _)| tracker)
    }

    /// Waits until a JobTracker other than `except` logs, in its current
    /// life, more joins of TaskTracker `name` than `before` says it had;
    /// returns that tracker and the join line's time (Unix ms).
    async fn wait_joined(&mut self, name: &str, except: &[&str]) -> Result<(String, i64)> {
        let before = self.join_counts(name)?;
        self.wait_joined_since(name, except, &before).await
    }

    fn join_counts(&mut self, name: &str) -> Result<HashMap<String, usize>> {
        let mut counts = HashMap::new();
        for t in self.trackers.clone() {
            counts.insert(
                t.clone(),
                joins(&self.cluster.proc(&t)?.current_log(), name),
            );
        }
        Ok(counts)
    }

    async fn wait_joined_since(
        &mut self,
        name: &str,
        except: &[&str],
        before: &HashMap<String, usize>,
    ) -> Result<(String, i64)> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for t in self.trackers.clone() {
                if except.contains(&t.as_str()) {
                    continue;
                }
                let log = self.cluster.proc(&t)?.current_log();
                let had = before.get(&t).copied().unwrap_or(0);
                if joins(&log, name) > had {
                    let at = nth_join_time(&log, name, had).unwrap_or_else(now_ms);
                    return Ok((t, at));
                }
            }
            if let Some(status) = self.cluster.proc(name)?.exited() {
                bail!("TaskTracker {name} exited with {status}");
            }
            if Instant::now() > deadline {
                bail!("TaskTracker {name} did not connect within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the current life of `name` has logged `line`; returns
    /// the time of the first such line.
    async fn wait_log(&mut self, name: &str, line: &str) -> Result<i64> {
        self.wait_new_line(name, line, 0).await
    }

    /// Waits until the current life of `name` has logged `line` more than
    /// `before` times; returns the time of the new line.
    async fn wait_new_line(&mut self, name: &str, line: &str, before: usize) -> Result<i64> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let p = self.cluster.proc(name)?;
            let log = p.current_log();
            if let Some(found) = log.lines().filter(|l| l.contains(line)).nth(before) {
                return Ok(line_time(found).unwrap_or_else(now_ms));
            }
            if let Some(status) = p.exited() {
                bail!("{name} exited with {status} before it logged {line:?}");
            }
            if Instant::now() > deadline {
                bail!("{name} did not log {line:?} within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn count_lines(&mut self, name: &str, line: &str) -> Result<usize> {
        Ok(self
            .cluster
            .proc(name)?
            .current_log()
            .lines()
            .filter(|l| l.contains(line))
            .count())
    }

    async fn wait_any_line_since(
        &mut self,
        names: &[String],
        line: &str,
        before: &HashMap<String, usize>,
    ) -> Result<i64> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for n in names {
                let log = self.cluster.proc(n)?.current_log();
                let had = before.get(n).copied().unwrap_or(0);
                if let Some(found) = log.lines().filter(|l| l.contains(line)).nth(had) {
                    return Ok(line_time(found).unwrap_or_else(now_ms));
                }
            }
            if Instant::now() > deadline {
                bail!("none of {names:?} logged {line:?} within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A client over every JobTracker started.
    fn client(&self) -> Result<JobClient> {
        let urls = self
            .trackers
            .iter()
            .map(|t| self.cluster.tracker_url_of(t))
            .collect::<Result<Vec<_>>>()?;
        Ok(JobClient::new(urls, ClientOptions::default())?)
    }

    /// Stops every process still running, TaskTrackers first; a graceful
    /// stop removes their registrations from ZooKeeper at once.
    fn stop(&mut self) {
        let names: Vec<String> = self
            .task_trackers
            .iter()
            .chain(self.trackers.iter())
            .cloned()
            .collect();
        for name in names {
            if let Ok(p) = self.cluster.proc(&name) {
                if p.exited().is_none() {
                    let _ = p.terminate(Duration::from_secs(10));
                }
            }
        }
    }
}

/// Scenarios 1 and 2: the master gets SIGKILL (or SIGTERM) while a cron
/// job fires every second. Returns the time from the signal to another
/// tracker's lead, and to the start of the first cycle the new master
/// fired (the first cycle whose point is more than the firing horizon
/// after the signal: the old master made cycles up to that far ahead, never
/// further), and how late that cycle started after its point.
async fn master_loss(run: &mut Run, graceful: bool) -> Result<(i64, i64, i64)> {
    run.start_trackers(&["jt1", "jt2", "jt3"]).await?;
    run.start_task_tracker("tt-1").await?;
    let ledger = run.cluster.dir().join("ledger.txt");
    let mut spec = JobSpec::new("every-second", GROUP);
    spec.schedule = Schedule::Cron {
        expression: "* * * * * ?".into(),
        time_zone: String::new(),
        misfire: MisfirePolicy::FireOnce,
    };
    spec.payload = cycle_payload(&ledger)?;
    let client = run.client()?;
    let submitted = client.submit(vec![spec]).await?;
    anyhow::ensure!(
        submitted.iter().all(|s| s.is_accepted()),
        "the cron job was refused: {submitted:?}"
    );
    // A cycle ran: the cron job fires on the master.
    wait_ledger(&ledger, 1).await?;
    let survivors = vec!["jt2".to_string(), "jt3".to_string()];
    let mut before = HashMap::new();
    for n in &survivors {
        before.insert(n.clone(), run.count_lines(n, LEADING)?);
    }
    let master = run.cluster.proc("jt1")?;
    let killed_at = now_ms();
    if graceful {
        signal(master.id(), nix::sys::signal::Signal::SIGTERM)?;
    } else {
        master.kill9();
    }
    let led_at = run
        .wait_any_line_since(&survivors, LEADING, &before)
        .await?;
    let (fired_at, point) = wait_cycle_after(&ledger, killed_at + FIRE_AHEAD_MS).await?;
    Ok((led_at - killed_at, fired_at - killed_at, fired_at - point))
}

/// A cycle that appends `<task id> <start, Unix ms> <parent pid>` to
/// `ledger`, like [`long_job_payload`], and ends.
fn cycle_payload(ledger: &Path) -> Result<Vec<u8>> {
    ledger_payload(ledger, &[])
}

/// Waits for the start of a cycle whose point (the `@<ms>` of its task id)
/// is after `after_ms`; returns its start and its point (Unix ms).
async fn wait_cycle_after(ledger: &Path, after_ms: i64) -> Result<(i64, i64)> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(ledger).unwrap_or_default();
        let started = text.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            let point: i64 = words.next()?.rsplit_once('@')?.1.parse().ok()?;
            let at: i64 = words.next()?.parse().ok()?;
            (point > after_ms).then_some((at, point))
        });
        if let Some(at) = started {
            return Ok(at);
        }
        if Instant::now() > deadline {
            bail!("no cycle with a point after {after_ms} in the ledger within {READY_TIMEOUT:?}: {text:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The issue-scale check, at the scale given: cron jobs firing every
/// second and realtime jobs running when the master gets SIGKILL. Fails
/// when an acked job never runs or a cycle runs twice; returns the time to
/// a new master, to the first cycle it fired, and to the last acked job's
/// run.
async fn master_loss_under_load(run: &mut Run, args: &Args) -> Result<Vec<(&'static str, i64)>> {
    run.start_trackers(&["jt1", "jt2", "jt3"]).await?;
    run.start_task_tracker_with("tt-1", args.load_slots).await?;
    run.start_task_tracker_with("tt-2", args.load_slots).await?;
    let ledger = run.cluster.dir().join("ledger.txt");
    let client = run.client()?;
    let cron: Vec<JobSpec> = (0..args.load_cron_jobs)
        .map(|i| {
            let mut spec = JobSpec::new(format!("cron-{i}"), GROUP);
            spec.schedule = Schedule::Cron {
                expression: "* * * * * ?".into(),
                time_zone: String::new(),
                misfire: MisfirePolicy::FireOnce,
            };
            spec.payload = cycle_payload(&ledger)?;
            Ok(spec)
        })
        .collect::<Result<_>>()?;
    for chunk in cron.chunks(1000) {
        let done = client.submit(chunk.to_vec()).await?;
        anyhow::ensure!(done.iter().all(|s| s.is_accepted()), "cron jobs refused");
    }
    // Cycles run before the kill.
    wait_ledger(&ledger, args.load_cron_jobs.max(1)).await?;
    let payload = ledger_payload(&ledger, &[&args.load_job_seconds])?;
    let mut acked = Vec::new();
    let specs: Vec<JobSpec> = (0..args.load_jobs)
        .map(|i| {
            let mut spec = JobSpec::new(format!("job-{i}"), GROUP);
            spec.payload = payload.clone();
            spec
        })
        .collect();
    for chunk in specs.chunks(1000) {
        for (r, spec) in client.submit(chunk.to_vec()).await?.iter().zip(chunk) {
            if r.is_accepted() {
                acked.push(spec.task_id.clone());
            }
        }
    }
    let survivors = vec!["jt2".to_string(), "jt3".to_string()];
    let mut before = HashMap::new();
    for n in &survivors {
        before.insert(n.clone(), run.count_lines(n, LEADING)?);
    }
    let killed_at = now_ms();
    run.cluster.proc("jt1")?.kill9();
    let led_at = run
        .wait_any_line_since(&survivors, LEADING, &before)
        .await?;
    let (fired_at, _) = wait_cycle_after(&ledger, killed_at + FIRE_AHEAD_MS).await?;
    // Every acked job runs; then the ledger is read for doubles.
    let deadline = Instant::now() + READY_TIMEOUT * 10;
    let last_job_at = loop {
        let text = std::fs::read_to_string(&ledger).unwrap_or_default();
        let mut starts: HashMap<&str, i64> = HashMap::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if let (Some(task), Some(at)) = (words.next(), words.next()) {
                if let Ok(at) = at.parse::<i64>() {
                    starts.entry(task).or_insert(at);
                }
            }
        }
        let missing = acked
            .iter()
            .filter(|t| !starts.contains_key(t.as_str()))
            .count();
        if missing == 0 {
            break acked
                .iter()
                .filter_map(|t| starts.get(t.as_str()))
                .max()
                .copied();
        }
        if Instant::now() > deadline {
            bail!("{missing} of {} acked jobs never ran", acked.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = std::fs::read_to_string(&ledger).unwrap_or_default();
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for line in text.lines() {
        if let Some(task) = line.split_whitespace().next() {
            *runs.entry(task).or_default() += 1;
        }
    }
    let twice: Vec<&&str> = runs
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(t, _)| t)
        .collect();
    let cycles = runs.keys().filter(|t| t.contains('@')).count();
    println!(
        "  under load: {} cron jobs, {} jobs acked, {cycles} cycles run, runs twice: {}",
        args.load_cron_jobs,
        acked.len(),
        twice.len()
    );
    anyhow::ensure!(twice.is_empty(), "ran more than once: {twice:?}");
    Ok(vec![
        (
            "under load: kill -9 master -> another tracker leads",
            led_at - killed_at,
        ),
        (
            "under load: kill -9 master -> first cycle of the new master starts",
            fired_at - killed_at,
        ),
        (
            "under load: kill -9 master -> the last acked job starts",
            last_job_at.unwrap_or(killed_at) - killed_at,
        ),
    ])
}

/// Scenario 3: the TaskTracker running a long job gets SIGKILL.
async fn task_tracker_loss(run: &mut Run) -> Result<i64> {
    run.start_trackers(&["jt1", "jt2"]).await?;
    run.start_task_tracker("tt-1").await?;
    run.start_task_tracker("tt-2").await?;
    let ledger = run.cluster.dir().join("ledger.txt");
    let mut spec = JobSpec::new("long-job", GROUP);
    spec.payload = long_job_payload(&ledger)?;
    let client = run.client()?;
    let submitted = client.submit(vec![spec]).await?;
    anyhow::ensure!(
        submitted.iter().all(|s| s.is_accepted()),
        "the job was refused: {submitted:?}"
    );
    let (_, first_pid) = wait_ledger(&ledger, 1).await?;
    let mut running_on = None;
    for name in ["tt-1", "tt-2"] {
        if run.cluster.proc(name)?.id() == first_pid {
            running_on = Some(name);
        }
    }
    let running_on = running_on
        .with_context(|| format!("the job ran under pid {first_pid}, not a TaskTracker"))?;
    let killed_at = now_ms();
    run.cluster.proc(running_on)?.kill9();
    let (started_at, _) = wait_ledger(&ledger, 2).await?;
    Ok(started_at - killed_at)
}

/// Scenario 4: a JobTracker that is not master, with a TaskTracker
/// connected, gets SIGKILL.
async fn tracker_loss(run: &mut Run) -> Result<i64> {
    const MAX_TASK_TRACKERS: usize = 8;
    run.start_trackers(&["jt1", "jt2"]).await?;
    // TaskTrackers pick a tracker at random: start them until one is on
    // jt2.
    let mut on_jt2 = Vec::new();
    for i in 1..=MAX_TASK_TRACKERS {
        let name = format!("tt-{i}");
        if run.start_task_tracker(&name).await? == "jt2" {
            on_jt2.push(name);
            break;
        }
    }
    anyhow::ensure!(
        !on_jt2.is_empty(),
        "none of {MAX_TASK_TRACKERS} TaskTrackers connected to jt2"
    );
    let mut before = HashMap::new();
    for name in &on_jt2 {
        before.insert(name.clone(), run.join_counts(name)?);
    }
    let killed_at = now_ms();
    run.cluster.proc("jt2")?.kill9();
    let mut last = killed_at;
    for name in &on_jt2 {
        let (_, at) = run.wait_joined_since(name, &["jt2"], &before[name]).await?;
        last = last.max(at);
    }
    Ok(last - killed_at)
}

/// A job that appends `<task id> <start, Unix ms> <parent pid>` to
/// `ledger` as it starts (the parent is the TaskTracker), then runs long
/// enough to be running when its TaskTracker is killed.
fn long_job_payload(ledger: &Path) -> Result<Vec<u8>> {
    ledger_payload(ledger, &["20"])
}

/// A job that appends `<task id> <start, Unix ms> <parent pid>` to
/// `ledger` as it starts, then sleeps the seconds `sleep` names, if any.
fn ledger_payload(ledger: &Path, sleep: &[&str]) -> Result<Vec<u8>> {
    let mut args = vec![
        "-c".to_string(),
        r#"echo "$LTS_TASK_ID $(date +%s%3N) $PPID" >> "$1"; [ -z "$2" ] || exec sleep "$2""#
            .to_string(),
        "sh".to_string(),
        ledger.display().to_string(),
    ];
    args.extend(sleep.iter().map(|s| s.to_string()));
    Ok(serde_json::to_vec(&ShellJob::new(SHELL, args))?)
}

/// Waits until the ledger holds `n` starts; returns the `n`th start (Unix
/// ms) and the pid of the TaskTracker that ran it.
async fn wait_ledger(ledger: &Path, n: usize) -> Result<(i64, u32)> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(ledger).unwrap_or_default();
        if let Some(line) = text.lines().nth(n - 1) {
            let mut words = line.split_whitespace().skip(1);
            let at = words.next().and_then(|w| w.parse().ok());
            let pid = words.next().and_then(|w| w.parse().ok());
            if let (Some(at), Some(pid)) = (at, pid) {
                return Ok((at, pid));
            }
        }
        if Instant::now() > deadline {
            bail!("start {n} of the job not in the ledger within {READY_TIMEOUT:?}: {text:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Copies the logs (and the ledger) of a run out of its temporary
/// directory, which goes when the run ends.
fn keep_logs(dir: &Path, name: &str) -> Result<std::path::PathBuf> {
    let kept = std::env::temp_dir().join(name);
    std::fs::create_dir_all(&kept)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log" || e == "txt") {
            if let Some(file) = path.file_name() {
                std::fs::copy(&path, kept.join(file))?;
            }
        }
    }
    Ok(kept)
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) -> Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
    nix::sys::signal::kill(pid, signal).with_context(|| format!("sending {signal} to {pid}"))
}

/// The time of a log line, from the timestamp it starts with.
fn line_time(line: &str) -> Option<i64> {
    let stamp = line.split_whitespace().next()?;
    let at = humantime::parse_rfc3339(stamp).ok()?;
    i64::try_from(at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()
}

/// The time of the `n`th (from 0) join line of TaskTracker `name`.
fn nth_join_time(log: &str, name: &str, n: usize) -> Option<i64> {
    let field = format!("worker={name}");
    log.lines()
        .filter(|l| l.contains("TaskTracker connected"))
        .filter(|l| l.split_whitespace().any(|w| w == field))
        .nth(n)
        .and_then(line_time)
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
