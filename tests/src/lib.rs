//! A harness for tests that run the real binaries as separate processes.
//!
//! [`Cluster`] owns a temporary directory and gives each child a log file.
//! Every server binds port 0 and the harness reads the address the kernel
//! gave it back from the server's log, so no port is picked, released and
//! bound again later (another process could take it in between). Readiness
//! checks print the log tails when a child does not come up; a TaskTracker
//! counts as started once its JobTracker logs that it joined, so tests can
//! assert who took work. SIGKILL simulates crashes, SIGSTOP and SIGCONT a
//! process that stalls and comes back, and every child is reaped on drop.
//! The binaries are the ones `cargo build --workspace --bins` puts beside
//! the test executable.
//!
//! [`failover::FailoverCluster`] builds a whole cluster on it: JobTrackers
//! elected and registered in ZooKeeper over one MongoDB database,
//! TaskTrackers and the jobclient CLI that find them there, and a ledger of
//! the runs; [`zk::ZooKeeperServer`] is a ZooKeeper of a test's own, for
//! tests that stop it.
#![warn(missing_docs)]

pub mod failover;
pub mod zk;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a server may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often readiness checks look again.
const POLL: Duration = Duration::from_millis(50);

/// Name of the JobTracker that [`Cluster::start_tracker`] starts.
pub const TRACKER: &str = "jobtracker";

/// What the JobTracker logs once it serves, followed by its address.
const LISTENING: &str = "jobtracker listening on ";

/// What the JobTracker logs when a TaskTracker's hello is accepted; the
/// line names it as `worker=<identity>`.
const JOINED: &str = "TaskTracker connected";

/// What the JobTracker logs when it gives a TaskTracker up and puts its
/// runs back; the line names it as `worker=<identity>`.
const LEFT: &str = "TaskTracker left";

/// Both servers log their metrics address as `http://<addr>/metrics`
/// (after "metrics on" or "metrics at").
const METRICS_PATH: &str = "/metrics";

/// Path of a workspace binary built beside the running test.
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target directory")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the binaries first (cargo build --workspace --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// One child process with its log file.
pub struct Proc {
    /// Name used in messages and the log file.
    pub name: String,
    child: Child,
    log: PathBuf,
    /// Where this life's output starts in the log: a restarted child
    /// appends to the log of its previous life.
    log_start: usize,
}

impl Proc {
    /// The last `n` lines of the child's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The whole log, of every life of the child.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log of the child's current life.
    pub fn current_log(&self) -> String {
        let text = self.log_text();
        text.get(self.log_start..).unwrap_or_default().to_string()
    }

    /// Whether the child has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// The child's process id: the parent pid of every program a
    /// TaskTracker's shell runner starts, so a run can say where it ran.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGSTOP: the process stays alive but does nothing (no
    /// heartbeat, no timer, no read) until [`Proc::thaw`], as a process
    /// stalled by swapping or a debugger would. The programs it started
    /// run on. A frozen child is still killed and reaped on drop.
    pub fn freeze(&self) -> Result<()> {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGSTOP)
            .with_context(|| format!("sending SIGSTOP to {}", self.name))
    }

    /// Sends SIGCONT: a process stopped by [`Proc::freeze`] goes on.
    pub fn thaw(&self) -> Result<()> {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGCONT)
            .with_context(|| format!("sending SIGCONT to {}", self.name))
    }

    /// Sends SIGKILL and reaps the child: a crash.
    pub fn kill9(&mut self) {
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to `within` for a clean exit.
    pub fn terminate(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill9();
                bail!(
                    "{} did not exit within {within:?} of SIGTERM; log tail:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls this life's log until `find` returns `Some`; fails when the
    /// child exits first or after [`READY_TIMEOUT`], with the log tail.
    fn wait_for_log<T>(&mut self, what: &str, find: impl Fn(&str) -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(found) = find(&self.current_log()) {
                return Ok(found);
            }
            if let Some(status) = self.exited() {
                // It may have logged the line just before it exited.
                if let Some(found) = find(&self.current_log()) {
                    return Ok(found);
                }
                bail!(
                    "{} exited with {status} before {what}; log tail:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not log {what} within {READY_TIMEOUT:?}; log tail:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill9();
        }
    }
}

/// The address in a JobTracker's "listening on" line, if it logged one.
fn listening_addr(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter_map(|line| line.split_once(LISTENING))
        .find_map(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
}

/// The metrics address a server logged, if it serves metrics.
fn metrics_addr(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|line| line.contains("metrics"))
        .flat_map(str::split_whitespace)
        .filter_map(|word| word.strip_prefix("http://")?.strip_suffix(METRICS_PATH))
        .find_map(|addr| addr.parse().ok())
}

/// Whether a JobTracker's log says TaskTracker `identity` joined it.
fn has_joined(log: &str, identity: &str) -> bool {
    joins(log, identity) > 0
}

/// How many times a JobTracker's log says TaskTracker `identity` joined it.
pub fn joins(log: &str, identity: &str) -> usize {
    worker_lines(log, JOINED, identity)
}

/// How many times a JobTracker's log says it gave TaskTracker `identity`
/// up (its stream ended or stayed silent) and put its runs back.
pub fn departures(log: &str, identity: &str) -> usize {
    worker_lines(log, LEFT, identity)
}

/// Lines of a JobTracker's log holding `message` about the TaskTracker
/// `identity` (the field `worker=<identity>`, exactly).
fn worker_lines(log: &str, message: &str, identity: &str) -> usize {
    let field = format!("worker={identity}");
    log.lines()
        .filter(|line| line.contains(message))
        .filter(|line| line.split_whitespace().any(|word| word == field))
        .count()
}

/// A set of processes sharing a temporary directory.
pub struct Cluster {
    dir: tempfile::TempDir,
    procs: HashMap<String, Proc>,
    /// JobTracker name -> the address it listens on, once it said so.
    trackers: HashMap<String, SocketAddr>,
}

impl Cluster {
    /// An empty cluster; nothing runs yet.
    pub fn new() -> Result<Cluster> {
        Ok(Cluster {
            dir: tempfile::tempdir()?,
            procs: HashMap::new(),
            trackers: HashMap::new(),
        })
    }

    /// The shared directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://` address of the JobTracker [`TRACKER`].
    pub fn tracker_url(&self) -> Result<String> {
        self.tracker_url_of(TRACKER)
    }

    /// `http://` address of the JobTracker `name`, once it has logged it.
    pub fn tracker_url_of(&self, name: &str) -> Result<String> {
        let addr = self
            .trackers
            .get(name)
            .with_context(|| format!("JobTracker {name} has not said where it listens yet"))?;
        Ok(format!("http://{addr}"))
    }

    /// Starts a child named `name` running binary `bin` with `args`.
    pub fn spawn(&mut self, name: &str, bin: &str, args: &[String]) -> Result<()> {
        let log = self.dir.path().join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let log_start = usize::try_from(file.metadata()?.len())?;
        let child = Command::new(binary(bin)?)
            .args(args)
            .env("RUST_LOG", "info")
            // Plain lines: the harness reads addresses and joins from them.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.procs.insert(
            name.to_string(),
            Proc {
                name: name.to_string(),
                child,
                log,
                log_start,
            },
        );
        Ok(())
    }

    /// Starts the JobTracker [`TRACKER`] with its data directory under the
    /// cluster's directory, and waits until it serves. See
    /// [`Cluster::start_tracker_named`].
    pub fn start_tracker(&mut self, extra: &[&str]) -> Result<()> {
        self.start_tracker_named(TRACKER, extra).map(|_| ())
    }

    /// Starts the JobTracker `name` (another one shares the store when
    /// `extra` names a shared one) and waits until it serves; returns its
    /// `http://` address. See [`Cluster::spawn_tracker`].
    pub fn start_tracker_named(&mut self, name: &str, extra: &[&str]) -> Result<String> {
        self.spawn_tracker(name, extra)?;
        self.wait_healthy(name)?;
        self.tracker_url_of(name)
    }

    /// Starts the JobTracker `name` with a data directory of its own and
    /// `extra` arguments, without waiting for it. Its first start listens
    /// on port 0 (the kernel picks a free port); a restart listens on the
    /// address the first start got, as a restarted server keeps its
    /// address and its TaskTrackers find it there again.
    pub fn spawn_tracker(&mut self, name: &str, extra: &[&str]) -> Result<()> {
        let listen = match self.trackers.get(name) {
            Some(addr) => addr.to_string(),
            None => "127.0.0.1:0".to_string(),
        };
        let data = self.dir.path().join(format!("{name}-data"));
        let mut args = vec![
            "--listen".to_string(),
            listen,
            "--data-dir".to_string(),
            data.display().to_string(),
            "--heartbeat-interval".to_string(),
            "500ms".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn(name, "jobtracker", &args)
    }

    /// Starts a TaskTracker `name` of `group` with `slots`, allowing
    /// `allow`, on the JobTracker [`TRACKER`]. See
    /// [`Cluster::start_task_tracker_on`].
    pub fn start_task_tracker(
        &mut self,
        name: &str,
        group: &str,
        slots: u32,
        allow: &[&str],
    ) -> Result<()> {
        self.start_task_tracker_on(TRACKER, name, group, slots, allow, &[])
    }

    /// Starts a TaskTracker `name` of `group` with `slots`, allowing
    /// `allow`, with `extra` arguments, connected to the JobTracker
    /// `tracker`; returns once that JobTracker has accepted its hello, so
    /// the jobs submitted next can go to it.
    pub fn start_task_tracker_on(
        &mut self,
        tracker: &str,
        name: &str,
        group: &str,
        slots: u32,
        allow: &[&str],
        extra: &[&str],
    ) -> Result<()> {
        let mut args = vec![
            "--node-group".to_string(),
            group.to_string(),
            "--jobtracker".to_string(),
            self.tracker_url_of(tracker)?,
            "--slots".to_string(),
            slots.to_string(),
            "--identity".to_string(),
            name.to_string(),
        ];
        for a in allow {
            args.push("--allow".to_string());
            args.push(a.to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn(name, "tasktracker", &args)?;
        self.wait_joined(tracker, name)
    }

    /// Waits until the JobTracker `tracker` has logged, in its current
    /// life, that the TaskTracker `name` joined it.
    pub fn wait_joined(&mut self, tracker: &str, name: &str) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if has_joined(&self.proc(tracker)?.current_log(), name) {
                return Ok(());
            }
            for who in [name, tracker] {
                let p = self.proc(who)?;
                if let Some(status) = p.exited() {
                    bail!(
                        "{who} exited with {status} before TaskTracker {name} joined \
                         JobTracker {tracker}; log tail:\n{}",
                        p.log_tail(40)
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "TaskTracker {name} did not join JobTracker {tracker} within \
                     {READY_TIMEOUT:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// The `http://<addr>/metrics` address of the child `name`, started
    /// with `--metrics-addr 127.0.0.1:0`, once it has logged it.
    pub fn metrics_url(&mut self, name: &str) -> Result<String> {
        let addr = self
            .proc(name)?
            .wait_for_log("its metrics address", metrics_addr)?;
        Ok(format!("http://{addr}{METRICS_PATH}"))
    }

    /// A child by name.
    pub fn proc(&mut self, name: &str) -> Result<&mut Proc> {
        self.procs
            .get_mut(name)
            .with_context(|| format!("no process named {name}"))
    }

    /// Waits until the JobTracker `name` has logged the address it listens
    /// on and answers its health check there.
    pub fn wait_healthy(&mut self, name: &str) -> Result<()> {
        let addr = self
            .proc(name)?
            .wait_for_log("the address it listens on", listening_addr)?;
        if let Some(before) = self.trackers.insert(name.to_string(), addr) {
            anyhow::ensure!(
                before == addr,
                "JobTracker {name} came back on {addr}, not on {before}"
            );
        }
        let url = format!("http://{addr}");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            // The probe runs on a thread of its own: a test may call this
            // from inside its async runtime, where blocking on another
            // runtime is refused.
            let probe = || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    let Ok(ch) = tonic::transport::Endpoint::from_shared(url.clone())?
                        .connect_timeout(Duration::from_millis(500))
                        .connect()
                        .await
                    else {
                        return Ok::<bool, anyhow::Error>(false);
                    };
                    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
                    let r = h
                        .check(tonic_health::pb::HealthCheckRequest {
                            service: "lts.v1.JobService".into(),
                        })
                        .await;
                    Ok(matches!(r, Ok(r) if r.get_ref().status == 1))
                })
            };
            let ok = std::thread::scope(|s| s.spawn(probe).join())
                .map_err(|_| anyhow::anyhow!("the health probe of {name} panicked"))??;
            if ok {
                return Ok(());
            }
            let p = self.proc(name)?;
            if let Some(status) = p.exited() {
                bail!(
                    "{name} exited with {status} before it was ready; log tail:\n{}",
                    p.log_tail(40)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} not ready within {READY_TIMEOUT:?}; log tail:\n{}",
                    p.log_tail(40)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Runs the `jobclient` binary against the JobTracker [`TRACKER`];
    /// returns stdout, or an error with stderr.
    pub fn jobclient(&self, args: &[&str]) -> Result<String> {
        let global = ["--jobtracker".to_string(), self.tracker_url()?];
        run_jobclient(&global, args)
    }

    /// The whole log of the child `name` (empty if there is none).
    pub fn procs_log(&self, name: &str) -> String {
        self.procs.get(name).map(Proc::log_text).unwrap_or_default()
    }

    /// Log tails of every child, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for p in self.procs.values() {
            s.push_str(&format!("--- {} ---\n{}\n", p.name, p.log_tail(30)));
        }
        s
    }
}

/// Runs the `jobclient` binary with the `global` flags that say how it
/// finds JobTrackers, then `args`; returns stdout, or an error with
/// stderr.
pub fn run_jobclient(global: &[String], args: &[&str]) -> Result<String> {
    let out = Command::new(binary("jobclient")?)
        .args(global)
        .args(args)
        .output()
        .context("running jobclient")?;
    if !out.status.success() {
        bail!(
            "jobclient {args:?} exited with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with
/// the last state it described.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<T, String>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await? {
            Ok(v) => return Ok(v),
            Err(state) => state,
        };
        if Instant::now() > deadline {
            bail!("{what} did not happen within {timeout:?}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The text of a Prometheus endpoint at `http://<addr>/metrics`.
pub fn scrape(url: &str) -> Result<String> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url} is not an http:// address"))?;
    let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut conn =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {url}"))?;
    conn.set_read_timeout(Some(READY_TIMEOUT))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .with_context(|| format!("reading {url}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("{url} answered no HTTP response: {response:?}"))?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "{url} answered {}",
        head.lines().next().unwrap_or_default()
    );
    Ok(body.to_string())
}

/// The value of the sample `series` (a metric name with its labels, as
/// the text format writes them) in a scrape, if it is there.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
}

/// Task id -> number of runs, from a file where each run appended a line
/// starting with its task id.
pub fn runs_by_task(record: &Path) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for line in std::fs::read_to_string(record).unwrap_or_default().lines() {
        if let Some(task) = line.split_whitespace().next() {
            *out.entry(task.to_string()).or_insert(0) += 1;
        }
    }
    out
}

/// Every job of `group`, paging through the list.
pub async fn all_jobs(
    client: &lts_jobclient::JobClient,
    group: &str,
) -> Result<Vec<lts_common::Job>> {
    let mut jobs = Vec::new();
    let mut token: Option<String> = None;
    let filter = lts_jobclient::JobFilter {
        node_group: Some(group.to_string()),
        ..Default::default()
    };
    loop {
        let page = client.list(&filter, 1000, token.as_deref()).await?;
        jobs.extend(page.jobs);
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => return Ok(jobs),
        }
    }
}

/// Waits until `group` holds exactly `n` jobs, all succeeded; fails at once
/// when one ends any other way, naming it.
pub async fn wait_all_succeeded(
    client: &lts_jobclient::JobClient,
    group: &str,
    n: usize,
    timeout: Duration,
) -> Result<Vec<lts_common::Job>> {
    use lts_common::JobState;
    wait_until(timeout, "every job succeeding", || async {
        let jobs = match all_jobs(client, group).await {
            Ok(j) => j,
            Err(e) => return Ok(Err(format!("list failed: {e}"))),
        };
        let done = jobs
            .iter()
            .filter(|j| j.state == JobState::Succeeded)
            .count();
        let failed: Vec<_> = jobs
            .iter()
            .filter(|j| j.state.is_final() && j.state != JobState::Succeeded)
            .map(|j| format!("{} {:?} {:?}", j.spec.task_id, j.state, j.last_outcome))
            .take(5)
            .collect();
        anyhow::ensure!(failed.is_empty(), "jobs ended badly: {failed:?}");
        if jobs.len() == n && done == n {
            Ok(Ok(jobs))
        } else {
            Ok(Err(format!("{} jobs listed, {done} succeeded", jobs.len())))
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listening_address_from_a_plain_log_line() {
        let log = "2026-12-04T15:00:00Z  INFO lts_jobtracker: job store recovered pending=0\n\
                   2026-12-04T15:00:00Z  INFO lts_jobtracker: jobtracker listening on 127.0.0.1:41234\n";
        assert_eq!(
            listening_addr(log),
            Some("127.0.0.1:41234".parse().unwrap())
        );
        assert_eq!(
            listening_addr("INFO lts_jobtracker: job store recovered"),
            None
        );
    }

    #[test]
    fn reads_the_metrics_address_of_either_server() {
        let want: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let tracker = "INFO lts_jobtracker: metrics on http://127.0.0.1:40001/metrics";
        let task_tracker = "INFO tasktracker: metrics at http://127.0.0.1:40001/metrics";
        assert_eq!(metrics_addr(tracker), Some(want));
        assert_eq!(metrics_addr(task_tracker), Some(want));
        assert_eq!(
            metrics_addr("INFO jobtracker listening on 127.0.0.1:1"),
            None
        );
    }

    #[test]
    fn reads_a_sample_by_its_whole_series() {
        let text = "# TYPE lts_jobtracker_task_trackers gauge\n\
                    lts_jobtracker_task_trackers{node_group=\"work\"} 2\n\
                    lts_jobtracker_task_trackers{node_group=\"work-2\"} 1\n";
        assert_eq!(
            sample(text, r#"lts_jobtracker_task_trackers{node_group="work"}"#),
            Some(2.0)
        );
        assert_eq!(
            sample(text, r#"lts_jobtracker_task_trackers{node_group="other"}"#),
            None
        );
    }

    #[test]
    fn a_join_names_the_task_tracker_exactly() {
        let log = "INFO lts_jobtracker::service::work: TaskTracker connected worker=tt-10 \
                   node_group=work slots=8 ahead_slots=4096\n";
        assert!(has_joined(log, "tt-10"));
        assert!(!has_joined(log, "tt-1"), "tt-1 is not tt-10");
        assert!(!has_joined(
            "INFO TaskTracker left: silent worker=tt-2",
            "tt-2"
        ));
    }

    #[test]
    fn counts_the_departures_of_one_task_tracker() {
        let log = "INFO lts_jobtracker::service::work: TaskTracker left: silent for 1500 ms \
                   worker=tt-1 node_group=g runs=3\n\
                   INFO lts_jobtracker::service::work: TaskTracker connected worker=tt-1\n\
                   INFO lts_jobtracker::service::work: TaskTracker left: stream closed \
                   worker=tt-10 node_group=g runs=0\n";
        assert_eq!(departures(log, "tt-1"), 1);
        assert_eq!(departures(log, "tt-10"), 1);
        assert_eq!(departures(log, "tt-2"), 0);
        assert_eq!(joins(log, "tt-1"), 1);
    }
}
