//! `tasktracker`: runs the jobs of one node group, handed out by a JobTracker.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use lts_cluster::{Cluster, ZkConfig};
use lts_common::runtime::{init_tracing, shutdown_signal, LogFormat};
use lts_tasktracker::runners::{AllowList, NoopRunner, ShellRunner};
use lts_tasktracker::{DiskSpool, JobRunner, SpoolLimits, TaskTracker, TaskTrackerConfig};

// Thousands of runs starting at one instant allocate and free their
// contexts, outcomes and message buffers in a burst; glibc's allocator
// spent about a quarter of the TaskTracker's CPU there, mimalloc far less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs jobs of one node group handed out by a JobTracker.
#[derive(Parser, Debug)]
#[command(name = "tasktracker", version)]
struct Cli {
    /// TOML file with any of these options (keys are the long flag names).
    #[arg(long, env = "TASKTRACKER_CONFIG")]
    config: Option<PathBuf>,
    /// Node group whose jobs this TaskTracker runs (required).
    // Optional to clap so that it may come from the --config file, which is
    // merged after the first parse.
    #[arg(long, env = "TASKTRACKER_NODE_GROUP")]
    node_group: Option<String>,
    /// JobTracker to connect to: http://host:port or host:port. Repeat the
    /// flag or comma-separate to give several: one is used at a time, and
    /// the next when it cannot be reached or its stream breaks.
    #[arg(
        long,
        value_name = "ADDR",
        env = "TASKTRACKER_JOBTRACKER",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7070"
    )]
    jobtracker: Vec<String>,
    /// Cluster mode: find the JobTrackers through this ZooKeeper
    /// (`host:port[,host:port...][/chroot]`) instead of --jobtracker, and
    /// register this TaskTracker there under its node group.
    #[arg(
        long,
        env = "TASKTRACKER_ZOOKEEPER",
        value_name = "HOSTS",
        conflicts_with = "jobtracker"
    )]
    zookeeper: Option<String>,
    /// Name of the cluster in ZooKeeper (with --zookeeper); every node of
    /// one cluster gives the same name.
    #[arg(long, env = "TASKTRACKER_CLUSTER", default_value = "default")]
    cluster: String,
    /// ZooKeeper session timeout (with --zookeeper): how long after this
    /// TaskTracker stops answering its registration goes. 1s to 60s.
    #[arg(long, env = "TASKTRACKER_ZK_SESSION_TIMEOUT", value_parser = humantime::parse_duration, default_value = "4s")]
    zk_session_timeout: Duration,
    /// Jobs run at the same time (1 to 10000).
    #[arg(long, env = "TASKTRACKER_SLOTS", default_value_t = 4)]
    slots: u32,
    /// Jobs with a trigger time (cron cycles, jobs at a time, delayed
    /// retries) the JobTracker may send up to a second early, held here and
    /// started each at its instant: many jobs due in the same second then
    /// start on time. Held jobs take no slot. 0 turns it off (0 to 100000).
    #[arg(long, env = "TASKTRACKER_AHEAD_SLOTS", default_value_t = 4096)]
    ahead_slots: u32,
    /// Name of this process in the JobTracker's worker list [default: host:pid:random].
    #[arg(long, env = "TASKTRACKER_IDENTITY")]
    identity: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics; off when not given.
    #[arg(long, env = "TASKTRACKER_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// A program the shell runner may run (repeat the flag, or comma-separate
    /// in the env var). With none, every shell job is refused.
    #[arg(
        long = "allow",
        value_name = "PROGRAM",
        env = "TASKTRACKER_ALLOW",
        value_delimiter = ','
    )]
    allow: Vec<String>,
    /// How jobs run: `shell` runs allow-listed programs named in the job's
    /// payload; `noop` succeeds at once (benchmarks).
    #[arg(long, env = "TASKTRACKER_RUNNER", value_enum, default_value_t = RunnerKind::Shell)]
    runner: RunnerKind,
    /// On SIGTERM/Ctrl-C, how long running jobs may go on before they are cancelled.
    #[arg(long, env = "TASKTRACKER_SHUTDOWN_GRACE", value_parser = humantime::parse_duration, default_value = "10s")]
    shutdown_grace: Duration,
    /// Keep outcomes, log lines and starts of runs in a spool in this
    /// directory until a JobTracker acknowledges them, so they survive a
    /// crash or restart of this process and are delivered after it (to
    /// any JobTracker). Without it they are kept in memory only. One
    /// directory per TaskTracker.
    #[arg(long, env = "TASKTRACKER_SPOOL_DIR", value_name = "DIR")]
    spool_dir: Option<PathBuf>,
    /// Entries (outcomes, log lines, starts) the spool holds at most; when
    /// full, this TaskTracker takes no new jobs until the JobTracker
    /// acknowledges what it holds.
    #[arg(long, env = "TASKTRACKER_SPOOL_MAX_ENTRIES", default_value_t = SpoolLimits::default().max_entries)]
    spool_max_entries: usize,
    /// Bytes the spool holds at most (a number, or with KiB, MiB or GiB);
    /// when full, as --spool-max-entries.
    #[arg(long, env = "TASKTRACKER_SPOOL_MAX_BYTES", value_parser = parse_bytes, default_value = "256MiB")]
    spool_max_bytes: u64,
    /// Cancel the runs going on once no JobTracker has been reachable for
    /// this long (e.g. 5m); each hands its job back. Off when not given.
    #[arg(long, env = "TASKTRACKER_STOP_WORKING_AFTER", value_parser = humantime::parse_duration)]
    stop_working_after: Option<Duration>,
    /// Log format on stderr.
    #[arg(long, env = "TASKTRACKER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Check the options, print the resulting config and exit.
    #[arg(long)]
    check_config: bool,
}

/// A size in bytes: a number, optionally followed by KiB, MiB or GiB.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "kib" | "k" => 10,
        "mib" | "m" => 20,
        "gib" | "g" => 30,
        other => return Err(format!("unknown unit `{other}`; say KiB, MiB or GiB")),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 256MiB"))?;
    n.checked_mul(1u64 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("`{text}` is out of range"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RunnerKind {
    Shell,
    Noop,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli: Cli = lts_common::config::parse_with_file();
    init_tracing(cli.log_format);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let node_group = cli
        .node_group
        .clone()
        .context("--node-group is required (or node_group in the --config file)")?;
    let mut config = TaskTrackerConfig::new(String::new(), node_group);
    config.jobtrackers = cli.jobtracker.clone();
    config.slots = cli.slots;
    config.ahead_slots = cli.ahead_slots;
    config.shutdown_grace = cli.shutdown_grace;
    config.stop_working_after = cli.stop_working_after;
    let limits = SpoolLimits {
        max_entries: cli.spool_max_entries,
        max_bytes: cli.spool_max_bytes,
    };
    if limits.max_entries == 0 {
        anyhow::bail!("invalid config: --spool-max-entries must be above zero");
    }
    if let Some(identity) = &cli.identity {
        config.identity = identity.clone();
    }
    config.validate().context("invalid config")?;
    let zookeeper = match &cli.zookeeper {
        Some(connect) => Some(
            ZkConfig::parse(connect, &cli.cluster, cli.zk_session_timeout)
                .context("invalid config: --zookeeper")?,
        ),
        None => None,
    };
    let allow = AllowList::new(cli.allow.iter().filter(|p| !p.trim().is_empty()).cloned());
    if cli.check_config {
        println!("config is valid");
        match &zookeeper {
            Some(zk) => println!(
                "  jobtracker: found through ZooKeeper {} (cluster {})",
                zk.connect, zk.cluster
            ),
            None => println!(
                "  jobtracker: {}",
                config.jobtracker_addresses()?.join(", ")
            ),
        }
        println!("  node group: {}", config.node_group);
        println!("  slots:      {}", config.slots);
        println!("  ahead:      {}", config.ahead_slots);
        println!("  identity:   {}", config.identity);
        println!("  runner:     {:?}", cli.runner);
        println!("  allow:      {}", allow.names().join(", "));
        match &cli.spool_dir {
            Some(dir) => println!(
                "  spool:      {} (at most {} entries, {} bytes)",
                dir.display(),
                limits.max_entries,
                limits.max_bytes
            ),
            None => println!("  spool:      in memory (lost when the process ends)"),
        }
        match cli.stop_working_after {
            Some(d) => println!("  stop working after: {}", humantime::format_duration(d)),
            None => println!("  stop working after: off"),
        }
        let settings = lts_common::config::effective_settings::<Cli, _>(std::env::args_os())?;
        print!(
            "effective settings:\n{}",
            lts_common::config::settings_text(&settings)
        );
        return Ok(());
    }
    let runner: Arc<dyn JobRunner> = match cli.runner {
        RunnerKind::Shell => {
            if allow.is_empty() {
                tracing::warn!("no --allow given: every shell job will fail as not allowed");
            }
            Arc::new(ShellRunner::new(allow))
        }
        RunnerKind::Noop => Arc::new(NoopRunner),
    };
    let mut tracker = TaskTracker::new(config, runner)?;
    if let Some(dir) = cli.spool_dir.clone() {
        // Opening reads the whole spool: off the runtime's threads.
        let spool = tokio::task::spawn_blocking(move || DiskSpool::open(&dir, limits))
            .await
            .context("opening the spool")??;
        tracing::info!(
            "outcome spool at {} ({} outcomes to deliver)",
            spool.dir().display(),
            lts_tasktracker::OutcomeSpool::len(&spool)
        );
        tracker = tracker.with_spool(Box::new(spool));
    }
    let cluster = match zookeeper {
        Some(zk) => {
            let name = zk.cluster.clone();
            let cluster = Cluster::connect(zk)
                .await
                .context("cannot join the cluster through --zookeeper")?;
            tracker = match tracker.join_cluster(&cluster).await {
                Ok(t) => t,
                Err(e) => {
                    cluster.close().await;
                    return Err(e).context("cannot register in the cluster");
                }
            };
            tracing::info!(cluster = %name, "joined the cluster: JobTrackers are found through ZooKeeper");
            Some(cluster)
        }
        None => None,
    };
    let stop_metrics = tokio_util::sync::CancellationToken::new();
    if let Some(addr) = cli.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
        tracing::info!("metrics at http://{}/metrics", listener.local_addr()?);
        let registry = tracker.registry().clone();
        let stop = stop_metrics.clone().cancelled_owned();
        tokio::spawn(async move {
            if let Err(e) = lts_common::metrics::serve_metrics(listener, registry, stop).await {
                tracing::error!("metrics server failed: {e}");
            }
        });
    }
    let result = tracker.run(shutdown_signal()).await;
    stop_metrics.cancel();
    if let Some(cluster) = cluster {
        // Leaves at once rather than when the session expires.
        cluster.close().await;
    }
    result.context("TaskTracker stopped")
}
