//! A whole cluster as separate processes: JobTrackers over one MongoDB
//! database, elected and registered in ZooKeeper, TaskTrackers and the
//! jobclient CLI that find them there, and the failures an operator meets
//! (a tracker killed or stopped, a TaskTracker killed).
//!
//! [`FailoverCluster`] runs on the [`Cluster`] of this crate: one log file
//! per child, readiness read from the logs, every child reaped on drop.
//! Each cluster has a name and a database of its own, so tests can share
//! one ZooKeeper and one MongoDB server. Sessions are 2 s
//! ([`SESSION_TIMEOUT`]) and run leases 2 s, so a killed node is noticed
//! within seconds. [`Ledger`] is the program every job runs: it records
//! each run (task id, attempt, TaskTracker pid) in a file, which tells
//! whether a job ran, how often, and where.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{has_joined, joins, run_jobclient, sample, scrape, Cluster};

/// ZooKeeper session timeout of every node: the shortest a server with
/// `tickTime=500` allows, so a killed node's znodes go in about 2.5 s.
pub const SESSION_TIMEOUT: &str = "2s";

/// How long a run's lease lasts: runs of a killed tracker that nobody
/// completes are put back after it.
pub const LEASE: &str = "2s";

/// How long a failover, a rejoin or a batch may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(60);

/// How often the conditions that cost a jobclient process are looked at.
const POLL: Duration = Duration::from_millis(200);

/// The value of the environment variable `var`, which names a server the
/// test `test` needs (described by `what`). Without it the test skips, and
/// says so loudly; under `CI=true` it fails instead.
pub fn required_env(var: &str, what: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{var} is not set: CI must provide {what} for {test}");
            }
            eprintln!("\n*** skipping {test}: {var} not set; {what} is NOT tested ***\n");
            None
        }
    }
}

/// The servers a cluster runs on.
#[derive(Clone, Debug)]
pub struct Servers {
    /// MongoDB connection string.
    pub mongodb: String,
    /// ZooKeeper `host:port[,host:port…]`.
    pub zookeeper: String,
}

impl Servers {
    /// The servers named by `LTS_TEST_MONGODB_URI` and
    /// `LTS_TEST_ZOOKEEPER`; `None` (after a loud message) when one is not
    /// set outside CI. See [`required_env`].
    pub fn from_env(test: &str) -> Option<Servers> {
        let mongodb = required_env(
            "LTS_TEST_MONGODB_URI",
            "a MongoDB server (see .ci/run)",
            test,
        )?;
        let zookeeper = required_env(
            "LTS_TEST_ZOOKEEPER",
            "a ZooKeeper server (see .ci/run)",
            test,
        )?;
        Some(Servers { mongodb, zookeeper })
    }
}

/// A name unique to this run, for cluster names and databases.
pub fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}_{}", std::process::id())
}

/// One run recorded by the [`Ledger`] program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// The task id of the job.
    pub task_id: String,
    /// The attempt number the TaskTracker ran.
    pub attempt: u32,
    /// Process id of the TaskTracker that ran it.
    pub task_tracker_pid: u32,
}

/// A shell program for `--allow` that records each run in a file: a
/// `start` line when it starts, then, after sleeping as long as its second
/// argument says (if given), an `end` line. Each line is `<task id>
/// <attempt> <TaskTracker pid> start|end`.
pub struct Ledger {
    /// The program jobs run; the TaskTrackers allow it.
    pub program: PathBuf,
    /// The file it appends to; the program's first argument.
    pub file: PathBuf,
}

impl Ledger {
    /// Writes the program into `dir`.
    pub fn create(dir: &Path) -> Result<Ledger> {
        let program = dir.join("ledger.sh");
        std::fs::write(
            &program,
            "#!/bin/sh\n\
             # $1: the ledger file; $2: seconds to run (optional).\n\
             echo \"$LTS_TASK_ID $LTS_ATTEMPT $PPID start\" >> \"$1\"\n\
             if [ -n \"$2\" ]; then sleep \"$2\"; fi\n\
             echo \"$LTS_TASK_ID $LTS_ATTEMPT $PPID end\" >> \"$1\"\n",
        )?;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755))?;
        Ok(Ledger {
            program,
            file: dir.join("ledger.txt"),
        })
    }

    /// The shell command of a job: this program, recording in this ledger,
    /// running `seconds` (none: at once).
    pub fn command(&self, seconds: Option<&str>) -> Vec<String> {
        let mut command = vec![
            self.program.display().to_string(),
            self.file.display().to_string(),
        ];
        command.extend(seconds.map(str::to_string));
        command
    }

    fn lines(&self, kind: &str) -> Vec<Run> {
        std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let task_id = words.next()?.to_string();
                let attempt = words.next()?.parse().ok()?;
                let task_tracker_pid = words.next()?.parse().ok()?;
                (words.next()? == kind).then_some(Run {
                    task_id,
                    attempt,
                    task_tracker_pid,
                })
            })
            .collect()
    }

    /// Runs that started, in the order they did.
    pub fn started(&self) -> Vec<Run> {
        self.lines("start")
    }

    /// Runs that ran to their end, in the order they did.
    pub fn finished(&self) -> Vec<Run> {
        self.lines("end")
    }

    /// Task id -> the runs of it that ran to their end.
    pub fn finished_by_task(&self) -> HashMap<String, Vec<Run>> {
        let mut out: HashMap<String, Vec<Run>> = HashMap::new();
        for run in self.finished() {
            out.entry(run.task_id.clone()).or_default().push(run);
        }
        out
    }
}

/// A job as `jobclient list --json` shows it, with the fields the tests
/// look at.
#[derive(Clone, Debug)]
pub struct ListedJob {
    /// Job id.
    pub job_id: String,
    /// Task id.
    pub task_id: String,
    /// State name: pending, running, succeeded, ...
    pub state: String,
    /// Whether the state is final.
    pub is_final: bool,
    /// Attempt of the current or last run.
    pub attempt: u64,
    /// When the job is or was due, Unix milliseconds.
    pub trigger_at_ms: i64,
    /// The last outcome, as text, for failure messages.
    pub last_outcome: String,
}

impl ListedJob {
    fn from_json(v: &Value) -> Result<ListedJob> {
        let text = |field: &str| -> Result<String> {
            v.get(field)
                .and_then(Value::as_str)
                .map(str::to_string)
                .with_context(|| format!("no {field} in {v}"))
        };
        Ok(ListedJob {
            job_id: text("job_id")?,
            task_id: text("task_id")?,
            state: text("state")?,
            is_final: v.get("final").and_then(Value::as_bool).unwrap_or(false),
            attempt: v.get("attempt").and_then(Value::as_u64).unwrap_or(0),
            trigger_at_ms: v
                .get("trigger_at_unix_ms")
                .and_then(Value::as_i64)
                .unwrap_or(0),
            last_outcome: v
                .get("last_outcome")
                .map(Value::to_string)
                .unwrap_or_default(),
        })
    }
}

/// A node as `jobclient nodes --json` lists it.
#[derive(Clone, Debug)]
pub struct ListedNode {
    /// jobtracker, tasktracker or jobclient.
    pub role: String,
    /// Node group; empty for JobTrackers.
    pub node_group: String,
    /// The node's identity.
    pub identity: String,
    /// Where it serves; empty for nodes that serve nothing.
    pub address: String,
    /// Whether it is the master.
    pub master: bool,
}

/// What `jobclient nodes --json` shows.
#[derive(Clone, Debug)]
pub struct Nodes {
    /// Identity of the master, if there is one.
    pub master: Option<String>,
    /// Every registered node.
    pub nodes: Vec<ListedNode>,
}

impl Nodes {
    fn from_json(v: &Value) -> Result<Nodes> {
        let master = v.get("master").and_then(Value::as_str).map(str::to_string);
        let nodes = v
            .get("nodes")
            .and_then(Value::as_array)
            .with_context(|| format!("no nodes array in {v}"))?
            .iter()
            .map(|n| {
                let text = |field: &str| {
                    n.get(field)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                ListedNode {
                    role: text("role"),
                    node_group: text("node_group"),
                    identity: text("identity"),
                    address: text("address"),
                    master: n.get("master").and_then(Value::as_bool).unwrap_or(false),
                }
            })
            .collect();
        Ok(Nodes { master, nodes })
    }

    /// Identities of the nodes of `role`, sorted.
    pub fn of_role(&self, role: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.role == role)
            .map(|n| n.identity.clone())
            .collect();
        out.sort();
        out
    }
}

/// JobTrackers, TaskTrackers and the jobclient CLI of one cluster, in
/// ZooKeeper and MongoDB; see the module doc.
pub struct FailoverCluster {
    cluster: Cluster,
    servers: Servers,
    name: String,
    database: String,
    /// Every JobTracker started, killed or not, in start order.
    trackers: Vec<String>,
    ledger: Ledger,
    /// `--jobtracker` flags the CLI uses instead of ZooKeeper, once set.
    static_flags: Option<Vec<String>>,
    /// Children stopped with SIGSTOP: they answer nothing until thawed.
    frozen: std::collections::HashSet<String>,
}

impl FailoverCluster {
    /// A cluster named after `test`, with `trackers` JobTrackers `jt-1`,
    /// `jt-2`, ... started and joined; no TaskTracker yet.
    pub fn start(servers: Servers, test: &str, trackers: usize) -> Result<FailoverCluster> {
        let suffix = unique_suffix();
        let cluster = Cluster::new()?;
        let ledger = Ledger::create(cluster.dir())?;
        let mut c = FailoverCluster {
            cluster,
            servers,
            name: format!("{test}-{suffix}"),
            database: format!("lts_{}_{suffix}", test.replace('-', "_")),
            trackers: Vec::new(),
            ledger,
            static_flags: None,
            frozen: Default::default(),
        };
        let names: Vec<String> = (1..=trackers).map(|i| format!("jt-{i}")).collect();
        // Spawned together, then waited for: they start in parallel.
        for name in &names {
            c.spawn_tracker(name)?;
        }
        for name in &names {
            c.wait_tracker(name)?;
        }
        Ok(c)
    }

    /// The cluster's name in ZooKeeper.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The program jobs run, and the record of their runs.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The processes, for what this type has no helper for.
    pub fn processes(&mut self) -> &mut Cluster {
        &mut self.cluster
    }

    /// The flags that put a node in this cluster.
    fn cluster_flags(&self) -> Vec<String> {
        vec![
            "--zookeeper".into(),
            self.servers.zookeeper.clone(),
            "--cluster".into(),
            self.name.clone(),
            "--zk-session-timeout".into(),
            SESSION_TIMEOUT.into(),
        ]
    }

    fn spawn_tracker(&mut self, name: &str) -> Result<()> {
        let mut args = vec![
            "--mongodb".to_string(),
            self.servers.mongodb.clone(),
            "--mongodb-database".into(),
            self.database.clone(),
            "--mongodb-lease".into(),
            LEASE.into(),
            // The tracker's identity in the registry and the election.
            "--mongodb-instance".into(),
            name.into(),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(self.cluster_flags());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cluster.spawn_tracker(name, &args)?;
        if !self.trackers.iter().any(|t| t == name) {
            self.trackers.push(name.to_string());
        }
        Ok(())
    }

    /// Waits until the JobTracker `name` serves and has joined the cluster.
    fn wait_tracker(&mut self, name: &str) -> Result<()> {
        self.cluster.wait_healthy(name)?;
        let deadline = Instant::now() + WAIT;
        loop {
            let p = self.cluster.proc(name)?;
            if p.current_log().contains("joined the cluster") {
                return Ok(());
            }
            if let Some(status) = p.exited() {
                bail!(
                    "{name} exited with {status} before joining the cluster; log tail:\n{}",
                    p.log_tail(40)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not join the cluster within {WAIT:?}; log tail:\n{}",
                    p.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts one more JobTracker `name` and waits until it has joined.
    pub fn start_tracker(&mut self, name: &str) -> Result<()> {
        self.spawn_tracker(name)?;
        self.wait_tracker(name)
    }

    /// The JobTrackers still running.
    pub fn live_trackers(&mut self) -> Vec<String> {
        let names = self.trackers.clone();
        names
            .into_iter()
            .filter(|n| self.cluster.proc(n).is_ok_and(|p| p.exited().is_none()))
            .collect()
    }

    /// Starts a TaskTracker `name` of `group` with `slots` that finds the
    /// JobTrackers through ZooKeeper and may run the [`Ledger`] program;
    /// returns the JobTracker it joined, once one has logged it.
    pub fn start_task_tracker(&mut self, name: &str, group: &str, slots: u32) -> Result<String> {
        let mut args = vec![
            "--node-group".to_string(),
            group.into(),
            "--slots".into(),
            slots.to_string(),
            "--identity".into(),
            name.into(),
            "--allow".into(),
            self.ledger.program.display().to_string(),
        ];
        args.extend(self.cluster_flags());
        self.cluster.spawn(name, "tasktracker", &args)?;
        self.wait_joined_any(name, &HashMap::new())
    }

    /// The process id of the child `name`.
    pub fn pid(&mut self, name: &str) -> Result<u32> {
        Ok(self.cluster.proc(name)?.id())
    }

    /// JobTracker -> how often it logged, in its current life, that the
    /// TaskTracker `task_tracker` joined it.
    pub fn joins_of(&mut self, task_tracker: &str) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for t in self.live_trackers() {
            if let Ok(p) = self.cluster.proc(&t) {
                out.insert(t, joins(&p.current_log(), task_tracker));
            }
        }
        out
    }

    /// Waits until a live JobTracker logs a join of `task_tracker` beyond
    /// the counts in `before` (see [`FailoverCluster::joins_of`]); returns
    /// that tracker.
    pub fn wait_joined_any(
        &mut self,
        task_tracker: &str,
        before: &HashMap<String, usize>,
    ) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            for t in self.live_trackers() {
                let log = self.cluster.proc(&t)?.current_log();
                let seen = before.get(&t).copied().unwrap_or(0);
                if has_joined(&log, task_tracker) && joins(&log, task_tracker) > seen {
                    return Ok(t);
                }
            }
            let p = self.cluster.proc(task_tracker)?;
            if let Some(status) = p.exited() {
                bail!(
                    "{task_tracker} exited with {status} before joining a JobTracker; log tail:\n{}",
                    p.log_tail(40)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "TaskTracker {task_tracker} joined no JobTracker within {WAIT:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the jobclient CLI in this cluster (it finds the JobTrackers
    /// through ZooKeeper, unless [`FailoverCluster::use_static_addresses`]
    /// was called); returns stdout.
    pub fn jobclient(&self, args: &[&str]) -> Result<String> {
        match &self.static_flags {
            Some(flags) => run_jobclient(flags, args),
            None => run_jobclient(&self.cluster_flags(), args),
        }
    }

    /// From now on the CLI names the live JobTrackers' addresses
    /// (`--jobtracker`) instead of finding them through ZooKeeper, as an
    /// operator does while ZooKeeper is down.
    pub fn use_static_addresses(&mut self) -> Result<()> {
        let mut urls = Vec::new();
        for t in self.live_trackers() {
            urls.push(self.cluster.tracker_url_of(&t)?);
        }
        self.static_flags = Some(vec!["--jobtracker".to_string(), urls.join(",")]);
        Ok(())
    }

    /// What `jobclient nodes --json` shows.
    pub fn nodes(&self) -> Result<Nodes> {
        let out = self.jobclient(&["nodes", "--json"])?;
        let v: Value = serde_json::from_str(&out)
            .with_context(|| format!("jobclient nodes --json printed {out:?}"))?;
        Nodes::from_json(&v)
    }

    /// The live JobTrackers whose metrics say they are the master; a
    /// frozen one cannot answer and is left out.
    pub fn masters(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for t in self.live_trackers() {
            if self.frozen.contains(&t) {
                continue;
            }
            let Ok(url) = self.cluster.metrics_url(&t) else {
                continue;
            };
            // A tracker going down may not answer: it is not the master.
            if let Ok(text) = scrape(&url) {
                if sample(&text, "lts_jobtracker_master") == Some(1.0) {
                    out.push(t);
                }
            }
        }
        out
    }

    /// Waits until exactly one live JobTracker, not `not`, is the master
    /// by its metrics and leads (it logged that its once-only work
    /// started); returns it.
    pub async fn wait_master(&mut self, not: Option<&str>) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let masters = self.masters();
            if let [one] = masters.as_slice() {
                if Some(one.as_str()) != not && self.leads(one)? {
                    return Ok(one.clone());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no single new master within {WAIT:?} (masters by metrics: {masters:?})\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until no live JobTracker's metrics say it is the master.
    pub async fn wait_no_master(&mut self) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let masters = self.masters();
            if masters.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{masters:?} still master after {WAIT:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the JobTracker `name` logged, in this life, that it leads.
    fn leads(&mut self, name: &str) -> Result<bool> {
        Ok(self
            .cluster
            .proc(name)?
            .current_log()
            .contains("leading: once-only work starts"))
    }

    /// Kills the child `name` with SIGKILL: a crash.
    pub fn kill9(&mut self, name: &str) -> Result<()> {
        self.cluster.proc(name)?.kill9();
        Ok(())
    }

    /// Stops the child `name` with SIGSTOP: alive but silent, as a process
    /// stalled by a long pause, until [`FailoverCluster::thaw`].
    pub fn freeze(&mut self, name: &str) -> Result<()> {
        self.cluster.proc(name)?.freeze()?;
        self.frozen.insert(name.to_string());
        Ok(())
    }

    /// Lets a child stopped by [`FailoverCluster::freeze`] go on.
    pub fn thaw(&mut self, name: &str) -> Result<()> {
        self.cluster.proc(name)?.thaw()?;
        self.frozen.remove(name);
        Ok(())
    }

    /// Stops the child `name` with SIGTERM and waits for it to exit.
    pub fn terminate(&mut self, name: &str) -> Result<()> {
        let status = self
            .cluster
            .proc(name)?
            .terminate(Duration::from_secs(30))?;
        anyhow::ensure!(status.success(), "{name} exited with {status} on SIGTERM");
        Ok(())
    }

    /// Submits `count` jobs `<prefix>0`, `<prefix>1`, ... to `group`
    /// through the CLI in one batch, each running the [`Ledger`] program
    /// for `seconds`; returns their job ids.
    pub fn submit_batch(
        &self,
        group: &str,
        prefix: &str,
        count: usize,
        seconds: Option<&str>,
    ) -> Result<Vec<String>> {
        self.submit_batch_with(group, prefix, count, seconds, &[])
    }

    /// As [`FailoverCluster::submit_batch`], with more `submit` flags
    /// (e.g. `--in 3s`).
    pub fn submit_batch_with(
        &self,
        group: &str,
        prefix: &str,
        count: usize,
        seconds: Option<&str>,
        flags: &[&str],
    ) -> Result<Vec<String>> {
        let count = count.to_string();
        let mut args = vec![
            "--json",
            "submit",
            "--node-group",
            group,
            "--task-id-prefix",
            prefix,
            "--count",
            &count,
        ];
        args.extend(flags);
        // --shell takes the rest of the line.
        args.push("--shell");
        let command = self.ledger.command(seconds);
        args.extend(command.iter().map(String::as_str));
        let out = self.jobclient(&args)?;
        job_ids(&out)
    }

    /// Submits a repeat job `task_id` to `group` firing every `every`
    /// (e.g. `300ms`), whose cycles run the [`Ledger`] program; returns its
    /// job id.
    pub fn submit_repeat(&self, group: &str, task_id: &str, every: &str) -> Result<String> {
        let mut args = vec![
            "--json",
            "submit",
            "--node-group",
            group,
            "--task-id",
            task_id,
            "--repeat-every",
            every,
            "--shell",
        ];
        let command = self.ledger.command(None);
        args.extend(command.iter().map(String::as_str));
        let out = self.jobclient(&args)?;
        job_ids(&out)?
            .into_iter()
            .next()
            .context("no job id for the repeat job")
    }

    /// Every job of `group` whose task id starts with `prefix`, through
    /// `jobclient list --json`, page by page.
    pub fn list(&self, group: &str, prefix: &str) -> Result<Vec<ListedJob>> {
        let mut jobs = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut args = vec![
                "--json",
                "list",
                "--node-group",
                group,
                "--task-id-prefix",
                prefix,
                "--limit",
                "1000",
            ];
            if let Some(t) = &token {
                args.extend(["--page-token", t.as_str()]);
            }
            let out = self.jobclient(&args)?;
            let v: Value = serde_json::from_str(&out)
                .with_context(|| format!("jobclient list --json printed {out:?}"))?;
            for j in v
                .get("jobs")
                .and_then(Value::as_array)
                .with_context(|| format!("no jobs array in {v}"))?
            {
                jobs.push(ListedJob::from_json(j)?);
            }
            match v.get("next_page_token").and_then(Value::as_str) {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(jobs),
            }
        }
    }

    /// Waits until the `count` jobs of `group` with task ids starting with
    /// `prefix` have all succeeded; fails at once when one ends any other
    /// way, naming it.
    pub async fn wait_succeeded(
        &self,
        group: &str,
        prefix: &str,
        count: usize,
    ) -> Result<Vec<ListedJob>> {
        let what = format!("the {count} jobs {prefix}* of {group} succeeding");
        self.poll(&what, || {
            let jobs = match self.list(group, prefix) {
                Ok(j) => j,
                // A client may meet a tracker that is going away.
                Err(e) => return Ok(Err(format!("list failed: {e}"))),
            };
            let bad: Vec<String> = jobs
                .iter()
                .filter(|j| j.is_final && j.state != "succeeded")
                .take(5)
                .map(|j| format!("{} {} {}", j.task_id, j.state, j.last_outcome))
                .collect();
            anyhow::ensure!(bad.is_empty(), "jobs ended badly: {bad:?}");
            let done = jobs.iter().filter(|j| j.state == "succeeded").count();
            if jobs.len() == count && done == count {
                Ok(Ok(jobs))
            } else {
                Ok(Err(format!("{} jobs listed, {done} succeeded", jobs.len())))
            }
        })
        .await
    }

    /// Polls `check` every 200 ms until it gives `Ok`, for at most
    /// [`WAIT`]; fails with the last state it described and the logs.
    pub async fn poll<T>(
        &self,
        what: &str,
        mut check: impl FnMut() -> Result<std::result::Result<T, String>>,
    ) -> Result<T> {
        let deadline = Instant::now() + WAIT;
        loop {
            let last = match check()? {
                Ok(v) => return Ok(v),
                Err(state) => state,
            };
            if Instant::now() > deadline {
                bail!(
                    "{what} did not happen within {WAIT:?}; last seen: {last}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The whole log of the child `name`, of every life.
    pub fn processes_log(&self, name: &str) -> String {
        self.cluster.procs_log(name)
    }

    /// Log tails of every child, for failure messages.
    pub fn logs(&self) -> String {
        self.cluster.logs()
    }
}

/// The job ids of `jobclient --json submit`'s output; a refused job is an
/// error naming it.
fn job_ids(out: &str) -> Result<Vec<String>> {
    let results: Value = serde_json::from_str(out)
        .with_context(|| format!("jobclient --json submit printed {out:?}"))?;
    results
        .as_array()
        .context("a JSON array of results")?
        .iter()
        .map(|r| {
            r.get("job_id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .with_context(|| format!("refused: {r}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_program_records_start_and_end_of_each_run() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::create(dir.path()).unwrap();
        let command = ledger.command(Some("0"));
        let status = std::process::Command::new(&command[0])
            .args(&command[1..])
            .env("LTS_TASK_ID", "job-7")
            .env("LTS_ATTEMPT", "2")
            .status()
            .unwrap();
        assert!(status.success());
        let me = std::process::id();
        let run = Run {
            task_id: "job-7".into(),
            attempt: 2,
            task_tracker_pid: me,
        };
        assert_eq!(ledger.started(), vec![run.clone()]);
        assert_eq!(ledger.finished(), vec![run.clone()]);
        assert_eq!(ledger.finished_by_task()["job-7"], vec![run]);
    }

    #[test]
    fn reads_the_nodes_a_cluster_lists() {
        let v = serde_json::json!({
            "master": "jt-2",
            "nodes": [
                {"role": "jobtracker", "node_group": "", "identity": "jt-2",
                 "address": "127.0.0.1:1", "slots": 0, "version": "0.1.0",
                 "started_at_ms": 1, "master": true},
                {"role": "tasktracker", "node_group": "work", "identity": "tt-1",
                 "address": "", "slots": 4, "version": "0.1.0",
                 "started_at_ms": 1, "master": false},
            ]
        });
        let nodes = Nodes::from_json(&v).unwrap();
        assert_eq!(nodes.master.as_deref(), Some("jt-2"));
        assert_eq!(nodes.of_role("jobtracker"), vec!["jt-2".to_string()]);
        assert_eq!(nodes.of_role("tasktracker"), vec!["tt-1".to_string()]);
        assert!(nodes.nodes[0].master && !nodes.nodes[1].master);
    }

    #[test]
    fn submit_output_gives_job_ids_or_names_the_refused_job() {
        let ok = r#"[{"status":"accepted","task_id":"a","job_id":"j1"}]"#;
        assert_eq!(job_ids(ok).unwrap(), vec!["j1".to_string()]);
        let refused = r#"[{"status":"refused","task_id":"b","error":"bad"}]"#;
        let e = job_ids(refused).unwrap_err().to_string();
        assert!(e.contains("refused"), "{e}");
    }
}
