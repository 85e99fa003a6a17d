//! `tasktracker`: runs the jobs of one node group, handed out by a JobTracker.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use lts_cluster::{Cluster, ZkConfig};
use lts_common::runtime::{init_tracing, shutdown_signal, LogFormat};
use lts_tasktracker::runners::{
    AllowList, EnvAllowList, JobGuard, NoopRunner, RunAs, RunningJobs, ShellRunner,
};
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
    /// in the env var): an absolute path, or a bare name looked up in PATH
    /// at start. Relative paths and programs that do not exist are errors.
    /// With none, every shell job is refused.
    #[arg(
        long = "allow",
        value_name = "PROGRAM",
        env = "TASKTRACKER_ALLOW",
        value_delimiter = ','
    )]
    allow: Vec<String>,
    /// A variable a shell job's `env` may set (repeat the flag, or
    /// comma-separate in the env var): a name, or a prefix ending in `*`.
    /// A job setting any other variable fails, naming it. Giving the flag
    /// replaces the default; give it empty to allow none.
    /// [default: LANG,LANGUAGE,LC_*,TZ]
    #[arg(
        long = "allow-env",
        value_name = "NAME",
        env = "TASKTRACKER_ALLOW_ENV",
        value_delimiter = ','
    )]
    allow_env: Option<Vec<String>>,
    /// Run shell jobs as this user (a name or a uid): its uid, its primary
    /// group only, its HOME. Needs the TaskTracker to run as root. Without
    /// it, jobs run as the TaskTracker's own user.
    #[arg(long, value_name = "USER", env = "TASKTRACKER_RUN_AS")]
    run_as: Option<String>,
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
    #[arg(long, env = "TASKTRACKER_SPOOL_MAX_BYTES", value_parser = lts_common::config::parse_bytes, default_value = "256MiB")]
    spool_max_bytes: u64,
    /// Cancel the runs going on once no JobTracker has been reachable for
    /// this long (e.g. 5m); each hands its job back. Off when not given.
    #[arg(long, env = "TASKTRACKER_STOP_WORKING_AFTER", value_parser = humantime::parse_duration)]
    stop_working_after: Option<Duration>,
    /// PEM CA certificate(s) to check the JobTrackers' certificates with;
    /// with it every JobTracker is reached over TLS. Without it an
    /// https:// address is refused.
    #[arg(long, env = "TASKTRACKER_TLS_CA", value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate for mutual TLS (with --tls-key and
    /// --tls-ca); JobTrackers with --tls-client-ca require one.
    #[arg(long, env = "TASKTRACKER_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TASKTRACKER_TLS_KEY", value_name = "FILE")]
    tls_key: Option<std::path::PathBuf>,
    /// File holding the bearer token (a `worker` credential) sent to the
    /// JobTrackers, for JobTrackers that run with a token file.
    #[arg(long, env = "TASKTRACKER_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Log format on stderr.
    #[arg(long, env = "TASKTRACKER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Check the options, print the resulting config and exit.
    #[arg(long)]
    check_config: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RunnerKind {
    Shell,
    Noop,
}

fn main() -> std::process::ExitCode {
    let cli: Cli = lts_common::config::parse_with_file();
    init_tracing(cli.log_format);
    // Forked while this process has one thread: before the runtime.
    let guard = match (cli.runner, cli.check_config) {
        (RunnerKind::Shell, false) => match JobGuard::start() {
            Ok(guard) => Some(Arc::new(guard)),
            Err(e) => {
                tracing::warn!(
                    "no job guard ({e}): if this TaskTracker is killed, its jobs' processes \
                     keep running"
                );
                None
            }
        },
        _ => None,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, guard)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, guard: Option<Arc<JobGuard>>) -> anyhow::Result<()> {
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
    config.tls = match &cli.tls_ca {
        Some(ca) => Some(
            lts_common::endpoint::ClientTls::from_files(
                ca,
                cli.tls_cert.as_deref(),
                cli.tls_key.as_deref(),
            )
            .context("invalid config")?,
        ),
        None if cli.tls_cert.is_some() || cli.tls_key.is_some() => anyhow::bail!(
            "invalid config: --tls-cert/--tls-key need --tls-ca (the CA that signs the JobTrackers' certificates)"
        ),
        None => None,
    };
    config.token = match &cli.token_file {
        Some(path) => Some(
            lts_common::endpoint::Token::from_file("--token-file", path)
                .context("invalid config")?,
        ),
        None => None,
    };
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
    let allow = AllowList::new(cli.allow.iter().filter(|p| !p.trim().is_empty()).cloned())
        .context("invalid config")?;
    let allow_env = match &cli.allow_env {
        None => EnvAllowList::default(),
        Some(names) => EnvAllowList::new(names.iter().filter(|n| !n.trim().is_empty()).cloned())
            .context("invalid config")?,
    };
    let run_as = match &cli.run_as {
        Some(user) => Some(RunAs::lookup(user).context("invalid config")?),
        None => None,
    };
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
        let programs: Vec<String> = allow
            .entries()
            .map(|(name, file)| {
                if Some(name) == file.to_str() {
                    name.to_string()
                } else {
                    format!("{name} ({})", file.display())
                }
            })
            .collect();
        if programs.is_empty() {
            println!("  allow:      none (every shell job is refused)");
        } else {
            println!("  allow:      {}", programs.join(", "));
        }
        match &run_as {
            Some(user) => {
                let (uid, gid) = user.ids();
                println!("  run as:     {} (uid {uid}, gid {gid})", user.name());
            }
            None => println!(
                "  run as:     the TaskTracker's user (uid {})",
                nix::unistd::geteuid()
            ),
        }
        if allow_env.entries().is_empty() {
            println!("  allow env:  none");
        } else {
            println!("  allow env:  {}", allow_env.entries().join(", "));
        }
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
    // Opened before the runner looks at the jobs a previous TaskTracker on
    // this spool left: the spool's lock says no other one uses it now.
    let spool = match cli.spool_dir.clone() {
        Some(dir) => {
            // Opening reads the whole spool: off the runtime's threads.
            let spool = tokio::task::spawn_blocking(move || DiskSpool::open(&dir, limits))
                .await
                .context("opening the spool")??;
            tracing::info!(
                "outcome spool at {} ({} outcomes to deliver)",
                spool.dir().display(),
                lts_tasktracker::OutcomeSpool::len(&spool)
            );
            Some(spool)
        }
        None => None,
    };
    let runner: Arc<dyn JobRunner> = match cli.runner {
        RunnerKind::Shell => {
            if allow.is_empty() {
                tracing::warn!("no --allow given: every shell job will fail as not allowed");
            }
            let allows_some = !allow.is_empty();
            let mut shell = ShellRunner::new(allow).with_allowed_env(allow_env);
            match run_as {
                Some(user) => {
                    tracing::info!("shell jobs run as user {}", user.name());
                    shell = shell.with_run_as(user);
                }
                None if nix::unistd::geteuid().is_root() && allows_some => {
                    tracing::warn!(
                        "shell jobs run as root, this TaskTracker's user; give --run-as USER \
                         to run them as another"
                    );
                }
                None => {}
            }
            if let Some(guard) = guard {
                guard.watch().context("watching the job guard")?;
                tracing::info!(
                    pid = guard.pid(),
                    "job guard started: jobs' processes end with this TaskTracker"
                );
                shell = shell.with_job_guard(guard);
            }
            if let Some(dir) = &cli.spool_dir {
                let running = RunningJobs::open(dir.join("running-jobs"))
                    .with_context(|| format!("cannot use {}", dir.display()))?;
                report_left_overs(&running)?;
                shell = shell.with_running_jobs(running);
            }
            Arc::new(shell)
        }
        RunnerKind::Noop => Arc::new(NoopRunner),
    };
    let mut tracker = TaskTracker::new(config, runner)?;
    if let Some(spool) = spool {
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

/// Says which jobs of a previous TaskTracker on this spool still run: they
/// may run beside the new attempts of their jobs.
fn report_left_overs(running: &RunningJobs) -> anyhow::Result<()> {
    let left = running
        .take_left_overs()
        .with_context(|| format!("cannot read {}", running.dir().display()))?;
    for job in &left {
        tracing::warn!(
            pgid = job.pgid,
            "a previous TaskTracker on this spool left a job running: {} (process group {}); \
             it may run beside the job's next attempt. Stop it with `kill -TERM -{}` if it \
             should not",
            job.job,
            job.pgid,
            job.pgid
        );
    }
    Ok(())
}
