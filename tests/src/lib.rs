//! A harness for tests that run the real binaries as separate processes.
//!
//! [`Cluster`] owns a temporary directory, picks a free loopback port per
//! server, gives each child a log file, waits for readiness (printing the
//! log tails when a child does not come up), kills with SIGKILL to
//! simulate crashes, and reaps every child on drop. The binaries are the
//! ones `cargo build --workspace --bins` puts beside the test executable.
#![warn(missing_docs)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a server may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

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

/// A free port on 127.0.0.1 (bound and released; the caller binds it next).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
    Ok(l.local_addr()?.port())
}

/// One child process with its log file.
pub struct Proc {
    /// Name used in messages and the log file.
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// The last `n` lines of the child's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the child has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
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
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill9();
        }
    }
}

/// A set of processes sharing a temporary directory.
pub struct Cluster {
    dir: tempfile::TempDir,
    procs: HashMap<String, Proc>,
    /// Address of the JobTracker, `127.0.0.1:PORT`.
    pub tracker_addr: String,
}

impl Cluster {
    /// A cluster with a port chosen for its JobTracker; nothing runs yet.
    pub fn new() -> Result<Cluster> {
        Ok(Cluster {
            dir: tempfile::tempdir()?,
            procs: HashMap::new(),
            tracker_addr: format!("127.0.0.1:{}", free_port()?),
        })
    }

    /// The shared directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `http://` address of the JobTracker.
    pub fn tracker_url(&self) -> String {
        format!("http://{}", self.tracker_addr)
    }

    /// Starts a child named `name` running binary `bin` with `args`.
    pub fn spawn(&mut self, name: &str, bin: &str, args: &[String]) -> Result<()> {
        let log = self.dir.path().join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(binary(bin)?)
            .args(args)
            .env("RUST_LOG", "info")
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
            },
        );
        Ok(())
    }

    /// Starts the JobTracker on its port with its data directory under the
    /// cluster's directory, and waits until its health service says SERVING.
    pub fn start_tracker(&mut self, extra: &[&str]) -> Result<()> {
        let data = self.dir.path().join("tracker-data");
        let mut args = vec![
            "--listen".to_string(),
            self.tracker_addr.clone(),
            "--data-dir".to_string(),
            data.display().to_string(),
            "--heartbeat-interval".to_string(),
            "500ms".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn("jobtracker", "jobtracker", &args)?;
        self.wait_healthy("jobtracker")
    }

    /// Starts another JobTracker named `name` on a port and data directory
    /// of its own (a second tracker over a shared store), and waits until
    /// it is healthy. Returns its `http://` address.
    pub fn start_extra_tracker(&mut self, name: &str, extra: &[&str]) -> Result<String> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let data = self.dir.path().join(format!("{name}-data"));
        let mut args = vec![
            "--listen".to_string(),
            addr.clone(),
            "--data-dir".to_string(),
            data.display().to_string(),
            "--heartbeat-interval".to_string(),
            "500ms".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn(name, "jobtracker", &args)?;
        let url = format!("http://{addr}");
        self.wait_healthy_at(name, &url)?;
        Ok(url)
    }

    /// Starts a TaskTracker of `group` with `slots`, allowing `allow`.
    pub fn start_task_tracker(
        &mut self,
        name: &str,
        group: &str,
        slots: u32,
        allow: &[&str],
    ) -> Result<()> {
        let url = self.tracker_url();
        self.start_task_tracker_for(name, group, slots, allow, &url, &[])
    }

    /// [`Cluster::start_task_tracker`] connected to the tracker at
    /// `tracker_url`, with `extra` arguments.
    pub fn start_task_tracker_for(
        &mut self,
        name: &str,
        group: &str,
        slots: u32,
        allow: &[&str],
        tracker_url: &str,
        extra: &[&str],
    ) -> Result<()> {
        let mut args = vec![
            "--node-group".to_string(),
            group.to_string(),
            "--jobtracker".to_string(),
            tracker_url.to_string(),
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
        self.spawn(name, "tasktracker", &args)
    }

    /// A child by name.
    pub fn proc(&mut self, name: &str) -> Result<&mut Proc> {
        self.procs
            .get_mut(name)
            .with_context(|| format!("no process named {name}"))
    }

    /// Waits until `name` (a JobTracker) answers its health check.
    pub fn wait_healthy(&mut self, name: &str) -> Result<()> {
        let url = self.tracker_url();
        self.wait_healthy_at(name, &url)
    }

    /// Waits until `name`, a JobTracker at `url`, answers its health check.
    pub fn wait_healthy_at(&mut self, name: &str, url: &str) -> Result<()> {
        let url = url.to_string();
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
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the `jobclient` binary against the tracker; returns stdout, or
    /// an error with stderr.
    pub fn jobclient(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(binary("jobclient")?)
            .arg("--jobtracker")
            .arg(self.tracker_url())
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
