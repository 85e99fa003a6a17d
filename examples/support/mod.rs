//! What the benchmark programs share: the jobtracker as a child process,
//! its metrics, its CPU time and memory from /proc, and submitting many
//! jobs. Each program uses part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lts_common::JobSpec;
use lts_common::Outcome;
use lts_jobclient::JobClient;
use lts_tasktracker::{JobContext, JobRunner, TaskTrackerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The `jobtracker` binary running as a child process.
pub struct TrackerProcess {
    /// The process.
    pub child: std::process::Child,
    /// Its gRPC address.
    pub url: String,
    /// Its metrics address.
    pub metrics: String,
    /// Its data directory and log.
    pub dir: tempfile::TempDir,
}

impl Drop for TrackerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts the jobtracker (`bin`, or the one beside this program) with a
/// fresh data directory and metrics, and waits until it serves.
pub async fn start_tracker(bin: Option<&Path>) -> Result<TrackerProcess> {
    start_tracker_with(bin, &[]).await
}

/// [`start_tracker`] with more flags (a store, a cluster).
pub async fn start_tracker_with(bin: Option<&Path>, extra: &[String]) -> Result<TrackerProcess> {
    let bin = match bin {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .and_then(|p| p.parent())
            .context("no target directory")?
            .join("jobtracker"),
    };
    if !bin.exists() {
        bail!(
            "{} is missing: run `cargo build --release --bins` first",
            bin.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let mport = free_port()?;
    let log = std::fs::File::create(dir.path().join("jobtracker.log"))?;
    let child = std::process::Command::new(&bin)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{mport}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let t = TrackerProcess {
        child,
        url: format!("http://127.0.0.1:{port}"),
        metrics: format!("127.0.0.1:{mport}"),
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while scrape(&t.metrics).await.is_err() {
        if Instant::now() > deadline {
            bail!("the jobtracker did not come up within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(t)
}

/// Fetches /metrics with a bare HTTP/1.0 request.
pub async fn scrape(addr: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body)
}

/// The sum of a metric's samples in a scrape.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// (user + system CPU seconds, peak RSS bytes) of a process.
pub fn cpu_and_rss(pid: u32) -> Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit(')').next().context("stat format")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat are 11 and 12 after the command name.
    let field = |i: usize| -> Result<f64> {
        Ok(f.get(i).context("short /proc stat line")?.parse::<f64>()?)
    };
    let ticks = field(11)? + field(12)?;
    let tck = clock_ticks();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    Ok((ticks / tck, hwm_kb * 1024))
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Submits `all` in calls of `per_call` jobs, `in_flight` calls at once;
/// fails if any job is refused.
pub async fn submit_all(
    client: &JobClient,
    all: impl IntoIterator<Item = JobSpec>,
    per_call: usize,
    in_flight: usize,
) -> Result<()> {
    let sem = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut tasks = Vec::new();
    let mut all = all.into_iter().peekable();
    while all.peek().is_some() {
        let chunk: Vec<JobSpec> = all.by_ref().take(per_call).collect();
        let permit = sem.clone().acquire_owned().await?;
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let r = client.submit(chunk).await;
            drop(permit);
            r
        }));
    }
    for t in tasks {
        let results = t.await??;
        if let Some(bad) = results.iter().find(|r| !r.is_accepted()) {
            bail!("a job was refused: {bad:?}");
        }
    }
    Ok(())
}

/// The tracker's count of completed jobs, from its metrics at `addr`.
pub async fn completed(addr: &str) -> Result<f64> {
    Ok(metric(
        &scrape(addr).await?,
        "lts_jobtracker_jobs_completed_total",
    ))
}

/// Waits, polling the tracker's metrics at `addr`, until `target` jobs
/// completed, for at most `limit`.
pub async fn wait_completed(addr: &str, target: f64, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while completed(addr).await? < target {
        if Instant::now() > deadline {
            bail!("jobs did not complete within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Runs nothing; for a job whose `t` param holds microseconds since `base`
/// (stamped just before its submit), notes start minus stamp.
struct Probe {
    base: Instant,
    samples_us: Arc<Mutex<Vec<u64>>>,
    slowest: Arc<Mutex<Slowest>>,
}

/// The slowest start of each quarter second (by the wall clock at the
/// start): (submit-to-start in microseconds, job id, wall clock at the
/// start in ms).
#[derive(Default)]
pub struct Slowest(HashMap<i64, (u64, String, i64)>);

impl Slowest {
    fn note(&mut self, us: u64, job_id: &str) {
        let now = lts_common::now_ms();
        let slot = self.0.entry(now / 250).or_insert((0, String::new(), now));
        if us > slot.0 {
            *slot = (us, job_id.to_string(), now);
        }
    }
}

#[async_trait::async_trait]
impl JobRunner for Probe {
    async fn run(&self, ctx: JobContext) -> Outcome {
        let now = self.base.elapsed().as_micros() as u64;
        if let Some(stamp) = ctx
            .job
            .spec
            .params
            .get("t")
            .and_then(|t| t.parse::<u64>().ok())
        {
            let us = now.saturating_sub(stamp).max(1);
            if let Ok(mut s) = self.samples_us.lock() {
                s.push(us);
            }
            if let Ok(mut s) = self.slowest.lock() {
                s.note(us, &ctx.job.job_id);
            }
        }
        Outcome::Success(String::new())
    }
}

/// A TaskTracker in this process whose runner notes submit-to-start.
pub struct ProbeTracker {
    samples_us: Arc<Mutex<Vec<u64>>>,
    slowest: Arc<Mutex<Slowest>>,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl ProbeTracker {
    /// Connects to the tracker at `url` for `group` with `slots` slots;
    /// stamps are microseconds since `base`.
    pub fn start(url: &str, group: &str, slots: u32, base: Instant) -> ProbeTracker {
        let mut config = TaskTrackerConfig::new(url.to_string(), group);
        config.slots = slots;
        Self::start_with(config, base)
    }

    /// [`ProbeTracker::start`] with a config of the caller's (TLS, a
    /// token).
    pub fn start_with(config: TaskTrackerConfig, base: Instant) -> ProbeTracker {
        let samples_us = Arc::new(Mutex::new(Vec::new()));
        let slowest = Arc::new(Mutex::new(Slowest::default()));
        let stop = CancellationToken::new();
        let runner = Arc::new(Probe {
            base,
            samples_us: samples_us.clone(),
            slowest: slowest.clone(),
        });
        let done = stop.clone().cancelled_owned();
        let handle = tokio::spawn(async move {
            let _ = lts_tasktracker::run(config, runner, done).await;
        });
        ProbeTracker {
            samples_us,
            slowest,
            stop,
            handle,
        }
    }

    /// Submit-to-start of every stamped job so far, in microseconds.
    pub fn samples_us(&self) -> Result<Vec<u64>> {
        Ok(self
            .samples_us
            .lock()
            .map_err(|_| anyhow::anyhow!("samples lock"))?
            .clone())
    }

    /// The slowest start of each quarter second so far, slowest first:
    /// (submit-to-start in microseconds, job id, wall clock at the start
    /// in ms).
    pub fn slowest(&self) -> Result<Vec<(u64, String, i64)>> {
        let mut v: Vec<_> = self
            .slowest
            .lock()
            .map_err(|_| anyhow::anyhow!("slowest lock"))?
            .0
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.0));
        Ok(v)
    }

    /// Stops the TaskTracker and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.handle.await;
    }
}
