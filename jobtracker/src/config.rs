//! The `jobtracker` command line: flags, env vars and a TOML file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use lts_common::runtime::LogFormat;

use crate::{ClusterSettings, Error, Security, ServerTls, StoreConfig, TrackerConfig};

/// Receives, stores and dispatches jobs. With no other store configured it
/// runs embedded: jobs live in sled under --data-dir.
///
/// `jobtracker hash-token` reads a token on stdin and prints the line
/// hash to put in the --token-file.
#[derive(Parser, Debug, Clone)]
#[command(name = "jobtracker", version)]
pub struct Cli {
    /// TOML file with any of these options; keys are the long flag names.
    /// Flags and env vars win over the file.
    #[arg(long, env = "JOBTRACKER_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address the gRPC services listen on.
    #[arg(long, env = "JOBTRACKER_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,

    /// Directory of the embedded store.
    #[arg(
        long,
        env = "JOBTRACKER_DATA_DIR",
        default_value = "lts-data/jobtracker"
    )]
    pub data_dir: PathBuf,

    /// Page cache of the embedded store (a number of bytes, or with KiB,
    /// MiB, GiB); jobs that are not final are in memory anyway, so the
    /// cache serves lookups of finished jobs and task ids.
    #[arg(
        long,
        env = "JOBTRACKER_STORE_CACHE",
        default_value = "16MiB",
        value_parser = lts_common::config::parse_bytes
    )]
    pub store_cache: u64,

    /// Memory the embedded store keeps queued jobs in (a number of bytes,
    /// or with KiB, MiB, GiB). Past it, ready jobs wait on disk and are
    /// read back as the queues drain; the JobTracker's RSS is about this
    /// plus 150 MiB.
    #[arg(
        long,
        env = "JOBTRACKER_MEMORY_BUDGET",
        default_value = "192MiB",
        value_parser = lts_common::config::parse_bytes
    )]
    pub memory_budget: u64,

    /// Keep jobs, feedback and execution logs in MongoDB instead of the
    /// embedded store, e.g. `mongodb://db1:27017,db2:27017/?replicaSet=rs0`.
    /// Several JobTrackers may share one database.
    #[arg(long, env = "JOBTRACKER_MONGODB", value_name = "URI")]
    pub mongodb: Option<String>,

    /// MongoDB database holding the collections (see docs/mongodb.md).
    #[arg(long, env = "JOBTRACKER_MONGODB_DATABASE", default_value = "lts")]
    pub mongodb_database: String,

    /// This tracker's stable name in the shared database: its runs are
    /// leased under it, and a restart under the same name requeues the runs
    /// its previous life left at once. Default: host name and listen port.
    #[arg(long, env = "JOBTRACKER_MONGODB_INSTANCE")]
    pub mongodb_instance: Option<String>,

    /// How long a run's lease lasts; a tracker renews its runs' leases every
    /// third of it, and runs of a tracker that stopped renewing are run
    /// again after it. 1s..=10m. MongoDB store only.
    #[arg(long, env = "JOBTRACKER_MONGODB_LEASE", default_value = "15s", value_parser = humantime::parse_duration)]
    pub mongodb_lease: Duration,

    /// How long execution logs are kept (a TTL index). At least 1m.
    /// MongoDB store only.
    #[arg(long, env = "JOBTRACKER_LOG_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub log_retention: Duration,

    /// Join the cluster registered in this ZooKeeper ensemble,
    /// `host:port[,host:port…][/chroot]`: the tracker registers itself,
    /// TaskTrackers and JobClients find it there, and the trackers elect
    /// the master that fires cron and repeat cycles. Needs --mongodb (the
    /// trackers of a cluster share one store). See docs/cluster.md.
    #[arg(long, env = "JOBTRACKER_ZOOKEEPER", value_name = "HOSTS")]
    pub zookeeper: Option<String>,

    /// Name of the cluster in ZooKeeper; trackers, TaskTrackers and
    /// JobClients of one cluster give the same name.
    #[arg(long, env = "JOBTRACKER_CLUSTER", default_value = "default")]
    pub cluster: String,

    /// ZooKeeper session timeout: how long after this tracker stops
    /// answering its registration and mastership go to others. The server
    /// clamps it to 2..=20 of its ticks. 1s..=60s.
    #[arg(long, env = "JOBTRACKER_ZK_SESSION_TIMEOUT", default_value = "4s", value_parser = humantime::parse_duration)]
    pub zk_session_timeout: Duration,

    /// Address registered for TaskTrackers, JobClients and the other
    /// trackers to reach this one. Default: the bound listen address (the
    /// host name when listening on every interface).
    #[arg(long, env = "JOBTRACKER_ADVERTISE", value_name = "HOST:PORT")]
    pub advertise: Option<String>,

    /// Serve Prometheus metrics on this address (GET /metrics). Off when
    /// not given.
    #[arg(long, env = "JOBTRACKER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Heartbeat interval on TaskTracker streams; a stream silent for three
    /// intervals is dropped and its runs are given to others. 100ms..=60s.
    #[arg(long, env = "JOBTRACKER_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// Embedded store: after a restart, how long jobs that may have been
    /// running before it wait for their TaskTrackers to reconnect and
    /// deliver what they ran meanwhile, before they are handed out again.
    /// 0s hands them out at once. At most 10m.
    #[arg(long, env = "JOBTRACKER_RECOVERY_GRACE", default_value = "3s", value_parser = humantime::parse_duration)]
    pub recovery_grace: Duration,

    /// How long shutdown waits for open streams.
    #[arg(long, env = "JOBTRACKER_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Most open connections in total; more are closed as soon as they
    /// are accepted. Keep it below the process's file-descriptor limit.
    #[arg(long, env = "JOBTRACKER_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Most open connections from one IP address; more are closed as soon
    /// as they are accepted.
    #[arg(
        long,
        env = "JOBTRACKER_MAX_CONNECTIONS_PER_PEER",
        default_value_t = 256
    )]
    pub max_connections_per_peer: usize,

    /// A connection that has not begun to speak HTTP/2 (preface and first
    /// frame) within this is closed. 100ms..=5m.
    #[arg(long, env = "JOBTRACKER_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// A connection that sent nothing for this long is closed; the tracker
    /// pings quiet peers every third of it, and live ones answer. At least
    /// 1s, and more than three heartbeat intervals.
    #[arg(long, env = "JOBTRACKER_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Most concurrent calls (HTTP/2 streams) on one connection.
    #[arg(
        long,
        env = "JOBTRACKER_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 1024
    )]
    pub max_streams_per_connection: u32,

    /// Most `SubmitJobs` calls per second per credential (with
    /// --token-file) or from one IP address (without), with a burst of as
    /// many; more get RESOURCE_EXHAUSTED. 0: no limit.
    #[arg(
        long,
        env = "JOBTRACKER_MAX_SUBMITS_PER_SECOND",
        default_value_t = 100_000
    )]
    pub max_submits_per_second: u32,

    /// Most distinct node groups the jobs of one submit may name; the jobs
    /// naming further groups are refused (RESOURCE_EXHAUSTED), the others
    /// stored.
    #[arg(
        long,
        env = "JOBTRACKER_MAX_NODE_GROUPS_PER_SUBMIT",
        default_value_t = 100
    )]
    pub max_node_groups_per_submit: usize,

    /// Most feedback items sent to one subscriber and not yet acked; past
    /// them it is sent more only as it acks.
    #[arg(
        long,
        env = "JOBTRACKER_MAX_FEEDBACK_IN_FLIGHT",
        default_value_t = 10_000
    )]
    pub max_feedback_in_flight: usize,

    /// Most unfinished jobs (pending, running, suspended, cron and repeat)
    /// one TaskTracker node group may hold; a submitted job beyond is
    /// refused (RESOURCE_EXHAUSTED), the others stored. 0: no quota.
    #[arg(
        long,
        env = "JOBTRACKER_MAX_JOBS_PER_NODE_GROUP",
        default_value_t = crate::limits::DEFAULT_MAX_JOBS_PER_NODE_GROUP
    )]
    pub max_jobs_per_node_group: u64,

    /// Most bytes of payload and params the unfinished jobs of one node
    /// group may hold (a number, or with KiB, MiB, GiB or TiB); a job that
    /// would pass it is refused (RESOURCE_EXHAUSTED). 0: no quota.
    #[arg(
        long,
        env = "JOBTRACKER_MAX_BYTES_PER_NODE_GROUP",
        default_value = "16GiB",
        value_parser = lts_common::config::parse_size
    )]
    pub max_bytes_per_node_group: u64,

    /// PEM certificate chain the gRPC listener shows: with --tls-key, it
    /// serves TLS only. Without it the listener is plaintext (a listener
    /// off loopback then logs a warning at start).
    #[arg(long, env = "JOBTRACKER_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "JOBTRACKER_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s) that sign client certificates (mutual TLS):
    /// a client certificate it did not sign fails the handshake, and the
    /// WorkService (TaskTrackers) requires a certificate it signed.
    /// JobClients may connect without one and use a token. Needs
    /// --tls-cert.
    #[arg(long, env = "JOBTRACKER_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// PEM CA certificate(s) to check the other JobTrackers of a cluster
    /// with; with it this tracker reaches them over TLS, showing
    /// --tls-cert as its client certificate. Default: --tls-client-ca.
    #[arg(long, env = "JOBTRACKER_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// File of credentials and their roles, one `HASH ROLE[:GROUPS] NAME`
    /// a line (see docs/security.md); read again when it changes. With it
    /// every call needs a credential; without it auth is off.
    #[arg(long, env = "JOBTRACKER_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "JOBTRACKER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Check the configuration, print it, and exit.
    #[arg(long)]
    pub check_config: bool,
}

impl TryFrom<&Cli> for TrackerConfig {
    type Error = Error;

    fn try_from(cli: &Cli) -> Result<Self, Error> {
        if cli.heartbeat_interval < Duration::from_millis(100)
            || cli.heartbeat_interval > Duration::from_secs(60)
        {
            return Err(Error::Config(format!(
                "--heartbeat-interval: {} is outside 100ms..=60s",
                humantime::format_duration(cli.heartbeat_interval)
            )));
        }
        if cli.recovery_grace > Duration::from_secs(600) {
            return Err(Error::Config(format!(
                "--recovery-grace: {} is over 10m",
                humantime::format_duration(cli.recovery_grace)
            )));
        }
        if cli.data_dir.as_os_str().is_empty() {
            return Err(Error::Config("--data-dir: is empty".into()));
        }
        let store = match &cli.mongodb {
            Some(uri) => mongo_store(cli, uri)?,
            None => StoreConfig::Sled {
                data_dir: cli.data_dir.clone(),
                cache_bytes: cli.store_cache,
                memory_budget: cli.memory_budget,
            },
        };
        let cluster = match &cli.zookeeper {
            None => None,
            Some(zookeeper) => {
                let StoreConfig::Mongo { instance, .. } = &store else {
                    return Err(Error::Config(
                        "--zookeeper: needs --mongodb; the JobTrackers of a cluster share one store"
                            .into(),
                    ));
                };
                if zookeeper.trim().is_empty() {
                    return Err(Error::Config("--zookeeper: is empty".into()));
                }
                if cli.zk_session_timeout < Duration::from_secs(1)
                    || cli.zk_session_timeout > Duration::from_secs(60)
                {
                    return Err(Error::Config(format!(
                        "--zk-session-timeout: {} is outside 1s..=60s",
                        humantime::format_duration(cli.zk_session_timeout)
                    )));
                }
                if let Some(a) = &cli.advertise {
                    lts_common::endpoint::normalize_address(a)
                        .map_err(|e| Error::Config(format!("--advertise: {e}")))?;
                }
                Some(ClusterSettings {
                    zookeeper: zookeeper.trim().to_string(),
                    name: cli.cluster.clone(),
                    session_timeout: cli.zk_session_timeout,
                    advertise: cli.advertise.clone(),
                    identity: instance.clone(),
                })
            }
        };
        Ok(TrackerConfig {
            store,
            cluster,
            heartbeat_interval: cli.heartbeat_interval,
            metrics_addr: cli.metrics_addr,
            shutdown_timeout: cli.shutdown_timeout,
            recovery_grace: cli.recovery_grace,
            limits: server_limits(cli)?,
            security: security(cli)?,
        })
    }
}

fn server_limits(cli: &Cli) -> Result<crate::limits::ServerLimits, Error> {
    let at_least_one = [
        ("--max-connections", cli.max_connections),
        ("--max-connections-per-peer", cli.max_connections_per_peer),
        (
            "--max-streams-per-connection",
            cli.max_streams_per_connection as usize,
        ),
        (
            "--max-node-groups-per-submit",
            cli.max_node_groups_per_submit,
        ),
        ("--max-feedback-in-flight", cli.max_feedback_in_flight),
    ];
    for (flag, v) in at_least_one {
        if v == 0 {
            return Err(Error::Config(format!("{flag}: must be at least 1")));
        }
    }
    if cli.handshake_timeout < Duration::from_millis(100)
        || cli.handshake_timeout > Duration::from_secs(300)
    {
        return Err(Error::Config(format!(
            "--handshake-timeout: {} is outside 100ms..=5m",
            humantime::format_duration(cli.handshake_timeout)
        )));
    }
    if cli.idle_timeout < Duration::from_secs(1) || cli.idle_timeout <= cli.heartbeat_interval * 3 {
        return Err(Error::Config(format!(
            "--idle-timeout: {} must be at least 1s and more than three --heartbeat-interval ({})",
            humantime::format_duration(cli.idle_timeout),
            humantime::format_duration(cli.heartbeat_interval * 3)
        )));
    }
    Ok(crate::limits::ServerLimits {
        max_connections: cli.max_connections,
        max_connections_per_peer: cli.max_connections_per_peer,
        handshake_timeout: cli.handshake_timeout,
        idle_timeout: cli.idle_timeout,
        max_streams_per_connection: cli.max_streams_per_connection,
        max_submits_per_second: cli.max_submits_per_second,
        max_node_groups_per_submit: cli.max_node_groups_per_submit,
        max_feedback_in_flight: cli.max_feedback_in_flight,
        max_jobs_per_node_group: cli.max_jobs_per_node_group,
        max_bytes_per_node_group: cli.max_bytes_per_node_group,
    })
}

fn security(cli: &Cli) -> Result<Security, Error> {
    use lts_common::endpoint::{read_pem, ClientTls, EndpointOptions};
    let pem = |flag, path: &std::path::Path| {
        read_pem(flag, path).map_err(|e| Error::Config(e.to_string()))
    };
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(ServerTls {
            cert_pem: pem("--tls-cert", cert)?,
            key_pem: pem("--tls-key", key)?,
            client_ca_pem: match &cli.tls_client_ca {
                Some(ca) => Some(pem("--tls-client-ca", ca)?),
                None => None,
            },
        }),
        (None, None) => {
            if cli.tls_client_ca.is_some() {
                return Err(Error::Config(
                    "--tls-client-ca: needs --tls-cert and --tls-key (mutual TLS is TLS first)"
                        .into(),
                ));
            }
            None
        }
        (Some(_), None) => {
            return Err(Error::Config(
                "--tls-cert: needs --tls-key (the certificate's private key)".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(Error::Config(
                "--tls-key: needs --tls-cert (the certificate it belongs to)".into(),
            ))
        }
    };
    let peers = match cli.tls_ca.as_ref().or(cli.tls_client_ca.as_ref()) {
        Some(ca) => Some(
            ClientTls::from_files(ca, cli.tls_cert.as_deref(), cli.tls_key.as_deref())
                .map_err(|e| Error::Config(e.to_string()))?,
        ),
        None => None,
    };
    if let Some(path) = &cli.token_file {
        crate::auth::Auth::load(path).map_err(Error::Config)?;
    }
    Ok(Security {
        tls,
        token_file: cli.token_file.clone(),
        peers: EndpointOptions::default().with_tls(peers),
    })
}

fn mongo_store(cli: &Cli, uri: &str) -> Result<StoreConfig, Error> {
    if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
        return Err(Error::Config(
            "--mongodb: expected a connection string starting with mongodb:// or mongodb+srv://"
                .into(),
        ));
    }
    let db = &cli.mongodb_database;
    if db.is_empty() || db.len() > 63 || db.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
        return Err(Error::Config(format!(
            "--mongodb-database: {db:?} is not a MongoDB database name (1..=63 characters, none of / \\ . space \" $)"
        )));
    }
    if cli.mongodb_lease < Duration::from_secs(1) || cli.mongodb_lease > Duration::from_secs(600) {
        return Err(Error::Config(format!(
            "--mongodb-lease: {} is outside 1s..=10m",
            humantime::format_duration(cli.mongodb_lease)
        )));
    }
    if cli.log_retention < Duration::from_secs(60) || cli.log_retention.as_secs() > i32::MAX as u64
    {
        return Err(Error::Config(format!(
            "--log-retention: {} is outside 1m..=68years",
            humantime::format_duration(cli.log_retention)
        )));
    }
    let instance = match &cli.mongodb_instance {
        Some(name) if name.trim().is_empty() => {
            return Err(Error::Config("--mongodb-instance: is empty".into()))
        }
        Some(name) => name.clone(),
        // With port 0 the bound port is known only once listening; the
        // binary sets it then (see `default_instance`).
        None => default_instance(cli.listen.port()),
    };
    Ok(StoreConfig::Mongo {
        uri: crate::store::mongo::MongoUri(uri.to_string()),
        database: db.clone(),
        log_retention: cli.log_retention,
        lease: cli.mongodb_lease,
        instance,
    })
}

/// The instance name of a tracker that listens on `port` and was given
/// none: host name and port.
pub fn default_instance(port: u16) -> String {
    format!("{}:{port}", host_name())
}

/// This machine's name, for the default instance name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_embedded_on_loopback() {
        let cli = Cli::try_parse_from(["jobtracker"]).expect("parse");
        assert_eq!(cli.listen.ip().to_string(), "127.0.0.1");
        let config = TrackerConfig::try_from(&cli).expect("valid");
        assert!(matches!(config.store, StoreConfig::Sled { .. }));
        assert_eq!(config.limits, crate::limits::ServerLimits::default());
    }

    /// The embedded store's (cache, memory budget) from `args`, or the
    /// parse error.
    fn sled_sizes(args: &[&str]) -> Result<(u64, u64), String> {
        let cli = Cli::try_parse_from(std::iter::once("jobtracker").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        match TrackerConfig::try_from(&cli).expect("valid").store {
            StoreConfig::Sled {
                cache_bytes,
                memory_budget,
                ..
            } => Ok((cache_bytes, memory_budget)),
            _ => Err("not the embedded store".to_string()),
        }
    }

    #[test]
    fn the_store_cache_is_a_size_above_zero() {
        let cache = |args: &[&str]| sled_sizes(args).map(|(c, _)| c);
        assert_eq!(cache(&[]), Ok(16 << 20));
        assert_eq!(cache(&["--store-cache", "256MiB"]), Ok(256 << 20));
        for bad in ["0", "lots"] {
            let e = cache(&["--store-cache", bad]).unwrap_err();
            assert!(e.contains("--store-cache"), "{e}");
        }
    }

    #[test]
    fn the_memory_budget_is_a_size_above_zero() {
        let budget = |args: &[&str]| sled_sizes(args).map(|(_, b)| b);
        assert_eq!(budget(&[]), Ok(crate::store::sled::DEFAULT_MEMORY_BUDGET));
        assert_eq!(budget(&["--memory-budget", "1GiB"]), Ok(1 << 30));
        for bad in ["0", "much"] {
            let e = budget(&["--memory-budget", bad]).unwrap_err();
            assert!(e.contains("--memory-budget"), "{e}");
        }
    }

    #[test]
    fn limits_are_set_by_flags_and_bad_ones_name_the_flag() {
        let cli = Cli::try_parse_from([
            "jobtracker",
            "--max-connections-per-peer",
            "8",
            "--idle-timeout",
            "1m",
        ])
        .expect("parse");
        let config = TrackerConfig::try_from(&cli).expect("valid");
        assert_eq!(config.limits.max_connections_per_peer, 8);
        assert_eq!(config.limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.limits.max_bytes_per_node_group, 16 << 30);
        let cli = Cli::try_parse_from([
            "jobtracker",
            "--max-jobs-per-node-group",
            "0",
            "--max-bytes-per-node-group",
            "512MiB",
        ])
        .expect("parse");
        let config = TrackerConfig::try_from(&cli).expect("valid");
        assert_eq!(config.limits.max_jobs_per_node_group, 0);
        assert_eq!(config.limits.max_bytes_per_node_group, 512 << 20);
        let e = Cli::try_parse_from(["jobtracker", "--max-bytes-per-node-group", "3 parsecs"])
            .unwrap_err();
        assert!(e.to_string().contains("--max-bytes-per-node-group"), "{e}");
        for (args, flag) in [
            (vec!["--max-connections", "0"], "--max-connections"),
            (vec!["--idle-timeout", "3s"], "--idle-timeout"),
            (vec!["--handshake-timeout", "1h"], "--handshake-timeout"),
        ] {
            let cli =
                Cli::try_parse_from(std::iter::once("jobtracker").chain(args)).expect("parse");
            let e = TrackerConfig::try_from(&cli).unwrap_err();
            assert!(e.to_string().contains(flag), "{e}");
        }
    }

    #[test]
    fn mongodb_flags_choose_the_cluster_store() {
        let cli = Cli::try_parse_from([
            "jobtracker",
            "--mongodb",
            "mongodb://u:secret@db:27017/?replicaSet=rs0",
            "--listen",
            "127.0.0.1:7071",
        ])
        .expect("parse");
        let config = TrackerConfig::try_from(&cli).expect("valid");
        let StoreConfig::Mongo {
            database,
            log_retention,
            instance,
            ..
        } = &config.store
        else {
            panic!("expected the MongoDB store, got {:?}", config.store);
        };
        assert_eq!(database, "lts");
        assert_eq!(*log_retention, Duration::from_secs(7 * 24 * 3600));
        assert!(instance.ends_with(":7071"), "{instance}");
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("secret") && shown.contains("u:***@db"),
            "{shown}"
        );

        for (args, flag) in [
            (vec!["--mongodb", "db:27017"], "--mongodb"),
            (
                vec!["--mongodb", "mongodb://db", "--mongodb-database", "a.b"],
                "--mongodb-database",
            ),
            (
                vec!["--mongodb", "mongodb://db", "--log-retention", "5s"],
                "--log-retention",
            ),
            (
                vec!["--mongodb", "mongodb://db", "--mongodb-lease", "1h"],
                "--mongodb-lease",
            ),
        ] {
            let cli =
                Cli::try_parse_from(std::iter::once("jobtracker").chain(args)).expect("parse");
            let e = TrackerConfig::try_from(&cli).unwrap_err();
            assert!(e.to_string().contains(flag), "{e}");
        }
    }

    #[test]
    fn zookeeper_joins_a_cluster_over_mongodb_only() {
        let cli = Cli::try_parse_from([
            "jobtracker",
            "--mongodb",
            "mongodb://db",
            "--zookeeper",
            "zk1:2181,zk2:2181/lts",
            "--cluster",
            "prod",
            "--listen",
            "127.0.0.1:7072",
        ])
        .expect("parse");
        let config = TrackerConfig::try_from(&cli).expect("valid");
        let cluster = config.cluster.expect("joins a cluster");
        assert_eq!(cluster.zookeeper, "zk1:2181,zk2:2181/lts");
        assert_eq!(cluster.name, "prod");
        assert_eq!(cluster.session_timeout, Duration::from_secs(4));
        assert!(cluster.identity.ends_with(":7072"), "{}", cluster.identity);

        for (args, flag) in [
            (vec!["--zookeeper", "zk:2181"], "needs --mongodb"),
            (
                vec![
                    "--mongodb",
                    "mongodb://db",
                    "--zookeeper",
                    "zk:2181",
                    "--zk-session-timeout",
                    "100ms",
                ],
                "--zk-session-timeout",
            ),
            (
                vec!["--mongodb", "mongodb://db", "--zookeeper", " "],
                "--zookeeper",
            ),
        ] {
            let cli =
                Cli::try_parse_from(std::iter::once("jobtracker").chain(args)).expect("parse");
            let e = TrackerConfig::try_from(&cli).unwrap_err();
            assert!(e.to_string().contains(flag), "{e}");
        }
    }

    #[test]
    fn tls_and_token_flags_are_checked_naming_the_flag() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pem = dir.path().join("x.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let not_pem = dir.path().join("x.txt");
        std::fs::write(&not_pem, "hello").expect("write");
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "nonsense admin root\n").expect("write");
        let pem = pem.display().to_string();
        let not_pem = not_pem.display().to_string();
        let tokens = tokens.display().to_string();
        for (args, says) in [
            (vec!["--tls-cert", &pem], "--tls-cert: needs --tls-key"),
            (vec!["--tls-key", &pem], "--tls-key: needs --tls-cert"),
            (
                vec!["--tls-client-ca", &pem],
                "--tls-client-ca: needs --tls-cert",
            ),
            (
                vec!["--tls-cert", &not_pem, "--tls-key", &pem],
                "--tls-cert",
            ),
            (
                vec!["--tls-cert", &pem, "--tls-key", "/nonexistent"],
                "--tls-key",
            ),
            (vec!["--token-file", &tokens], "line 1"),
            (vec!["--token-file", "/nonexistent"], "--token-file"),
        ] {
            let cli =
                Cli::try_parse_from(std::iter::once("jobtracker").chain(args)).expect("parse");
            let e = TrackerConfig::try_from(&cli).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        let cli = Cli::try_parse_from([
            "jobtracker",
            "--tls-cert",
            &pem,
            "--tls-key",
            &pem,
            "--tls-client-ca",
            &pem,
        ])
        .expect("parse");
        let config = TrackerConfig::try_from(&cli).expect("valid");
        let tls = config.security.tls.expect("TLS on");
        assert!(tls.client_ca_pem.is_some());
        assert!(config.security.peers.tls.is_some());
        assert!(config.security.token_file.is_none());
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = Cli::try_parse_from(["jobtracker", "--listen", "nowhere"]).unwrap_err();
        assert!(e.to_string().contains("--listen"), "{e}");
        let cli =
            Cli::try_parse_from(["jobtracker", "--heartbeat-interval", "5ms"]).expect("parse");
        let e = TrackerConfig::try_from(&cli).unwrap_err();
        assert!(e.to_string().contains("--heartbeat-interval"), "{e}");
    }
}
