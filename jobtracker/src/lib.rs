//! The JobTracker: receives, stores and dispatches jobs, and routes their
//! results back to the clients that asked for feedback.
//!
//! Start reading at [`serve`]; it wires the parts together:
//! - [`store`]: the [`store::JobStore`] trait and its backends;
//! - [`service`]: the gRPC services for JobClients and TaskTrackers;
//! - [`dispatch`]: hands ready jobs to TaskTrackers by their credits;
//! - [`election`]: whether this tracker leads, for the work only one
//!   tracker of a cluster may do (cycles, sweeps of expired leases);
//! - [`cluster`]: cluster mode, registered in ZooKeeper; [`peers`]: how
//!   the trackers of a cluster tell each other of new work;
//! - [`feedback`]: pushes results to submit node groups until acked;
//! - [`outbound`]: how messages to peers are bounded;
//! - [`limits`]: connection, timeout and rate limits on peers; [`quota`]:
//!   jobs and bytes per node group;
//! - [`auth`]: credentials, roles and the audit log; TLS is set up in
//!   [`serve_tracker`] from [`ServerTls`];
//! - [`config`]: flags, env vars and the config file.
#![warn(missing_docs)]

pub mod auth;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod election;
pub mod error;
pub mod feedback;
pub mod limits;
pub mod metrics;
pub mod outbound;
pub mod peers;
pub mod quota;
pub mod service;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lts_common::limits::MAX_MESSAGE_BYTES;
use lts_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dispatch::Dispatcher;
use crate::election::{AlwaysLeader, Election, Term};
pub use crate::error::{Error, Result};
use crate::feedback::FeedbackRouter;
use crate::metrics::Metrics;
use crate::store::JobStore;

/// Which store holds the jobs.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreConfig {
    /// sled under a data directory: the embedded default.
    Sled {
        /// The directory.
        data_dir: PathBuf,
        /// sled's page cache, bytes (`--store-cache`).
        cache_bytes: u64,
        /// Memory for queued jobs, bytes (`--memory-budget`).
        memory_budget: u64,
    },
    /// MongoDB, shared by the trackers of a cluster.
    Mongo {
        /// Connection string.
        uri: store::mongo::MongoUri,
        /// Database holding the collections.
        database: String,
        /// How long execution logs are kept.
        log_retention: Duration,
        /// How long a run's lease lasts without renewal.
        lease: Duration,
        /// This tracker's stable name in the shared database.
        instance: String,
    },
}

/// How a tracker joins a cluster (see `docs/cluster.md`).
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSettings {
    /// The ZooKeeper ensemble, `host:port[,host:port…][/chroot]`.
    pub zookeeper: String,
    /// The cluster's name in ZooKeeper.
    pub name: String,
    /// The ZooKeeper session timeout.
    pub session_timeout: Duration,
    /// The address registered for others; `None`: the bound address.
    pub advertise: Option<String>,
    /// This tracker's name in the cluster: its store instance name.
    pub identity: String,
}

/// How long, by default, jobs that may have been running before a restart
/// wait for their TaskTrackers (which retry a connection at least every
/// second) to come back and report.
pub const DEFAULT_RECOVERY_GRACE: Duration = Duration::from_secs(3);
/// The listener's TLS settings: its certificate and key, and for mutual
/// TLS the CA that signs client certificates. PEM text, read once at
/// start.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// The certificate chain the tracker shows.
    pub cert_pem: Vec<u8>,
    /// Its private key.
    pub key_pem: Vec<u8>,
    /// With it, clients may show certificates signed by this CA (checked
    /// in the handshake; a certificate it did not sign fails the
    /// handshake), and the `WorkService` requires one.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("client_ca", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// TLS and credentials of one tracker (see `docs/security.md`).
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// TLS on the listener; `None`: plaintext.
    pub tls: Option<ServerTls>,
    /// The token file; `None`: auth off, every caller may do everything.
    pub token_file: Option<PathBuf>,
    /// How this tracker reaches the other trackers of its cluster (TLS
    /// with its CA and its own certificate).
    pub peers: lts_common::endpoint::EndpointOptions,
}

/// What a JobTracker needs to run.
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// Where jobs live.
    pub store: StoreConfig,
    /// The cluster this tracker joins; `None`: it runs alone.
    pub cluster: Option<ClusterSettings>,
    /// How often TaskTrackers and the tracker send heartbeats; a stream
    /// silent for three intervals is dropped.
    pub heartbeat_interval: Duration,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<SocketAddr>,
    /// How long shutdown waits for open streams.
    pub shutdown_timeout: Duration,
    /// Embedded store: after a restart, how long jobs that may have been
    /// running before it wait for their TaskTrackers to reconnect and
    /// report, before they are handed out again.
    pub recovery_grace: Duration,
    /// Limits on peers (connections, timeouts, rates).
    pub limits: limits::ServerLimits,
    /// TLS and credentials; the default is plaintext with auth off.
    pub security: Security,
}

impl TrackerConfig {
    /// The embedded default over `data_dir`.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        TrackerConfig {
            store: StoreConfig::Sled {
                data_dir: data_dir.into(),
                cache_bytes: store::sled::DEFAULT_CACHE_BYTES,
                memory_budget: store::sled::DEFAULT_MEMORY_BUDGET,
            },
            cluster: None,
            heartbeat_interval: Duration::from_secs(2),
            metrics_addr: None,
            shutdown_timeout: Duration::from_secs(10),
            recovery_grace: DEFAULT_RECOVERY_GRACE,
            limits: limits::ServerLimits::default(),
            security: Security::default(),
        }
    }
}

/// The state every service of one JobTracker shares.
pub struct Tracker {
    /// Where jobs live.
    pub store: Arc<dyn JobStore>,
    /// Connected TaskTrackers.
    pub dispatcher: Arc<Dispatcher>,
    /// Feedback not yet acked.
    pub feedback: Arc<FeedbackRouter>,
    /// Exported metrics.
    pub metrics: Metrics,
    /// The config it runs with.
    pub config: TrackerConfig,
    /// This process's identity, sent to TaskTrackers.
    pub tracker_id: String,
    /// Fires when the tracker shuts down.
    pub shutdown: CancellationToken,
    /// Every task the tracker spawns; [`serve_tracker`] returns only when
    /// all of them ended.
    pub tasks: TaskTracker,
    /// Wakes the cycle scheduler: a cron or repeat job came or changed.
    pub scheduler: tokio::sync::Notify,
    /// Wakes the reader of feedback another tracker stored (cluster mode).
    pub feedback_news: tokio::sync::Notify,
    /// The other trackers of the cluster; unset while alone.
    pub peers: std::sync::OnceLock<Arc<peers::Peers>>,
    /// Whether this tracker leads its cluster.
    pub election: Arc<dyn Election>,
    /// The term the once-only work (cycle scheduler, sweep of expired
    /// leases) runs in now; `None` while it does not run.
    pub leader_work: tokio::sync::watch::Sender<Option<Term>>,
    /// Submits per second per peer.
    pub submit_rate: limits::SubmitRate,
    /// Unfinished jobs and bytes per node group.
    pub quotas: Arc<quota::Quotas>,
    /// The credentials in force; `None`: auth is off.
    pub auth: Option<Arc<auth::Auth>>,
    /// The shared store whose run leases this tracker keeps, if any.
    leases: Option<(Arc<store::mongo::MongoStore>, Duration)>,
}

impl Tracker {
    /// `PERMISSION_DENIED` unless `caller` may do `need` on the job
    /// `job_id` (which is read for its node groups only when the caller is
    /// limited to some). The answer is the same whether the job exists or
    /// not.
    pub async fn check_job(
        &self,
        caller: &auth::Caller,
        need: auth::Need,
        job_id: &str,
        what: &str,
    ) -> std::result::Result<(), tonic::Status> {
        if caller.unlimited(need) {
            return Ok(());
        }
        let job = self.store.get(job_id).await?;
        caller.require_job(need, job.as_ref(), job_id, what)
    }

    /// Who sent `request` (see [`auth::Caller::of`]).
    pub fn caller<T>(
        &self,
        request: &tonic::Request<T>,
        what: &str,
    ) -> std::result::Result<auth::Caller, tonic::Status> {
        auth::Caller::of(self.auth.as_deref(), request, what)
    }

    /// [`Tracker::caller`] for a call about the job `job_id`.
    pub fn caller_for<T>(
        &self,
        request: &tonic::Request<T>,
        what: &str,
        job_id: &str,
    ) -> std::result::Result<auth::Caller, tonic::Status> {
        auth::Caller::of_for(self.auth.as_deref(), request, what, job_id)
    }

    /// Cancels a job; a running one's TaskTracker is told to stop it.
    pub async fn cancel_job(&self, job_id: &str) -> Result<lts_common::Job> {
        let c = self.store.cancel(job_id, lts_common::now_ms()).await?;
        if c.before.state == lts_common::JobState::Running {
            self.dispatcher.cancel_run(
                &c.before.spec.task_tracker_node_group,
                &c.before.worker,
                &c.before.job_id,
                c.before.attempt,
                "cancelled",
            );
        }
        if let Some(fb) = c.feedback {
            self.feedback.push([fb]);
        }
        Ok(c.after)
    }
}

/// Opens the configured store. A MongoDB store gets its own lease
/// maintenance task (a tracker built by [`create_tracker`] runs that work
/// itself instead, the sweep only while it leads).
pub async fn open_store(config: &StoreConfig) -> Result<Arc<dyn JobStore>> {
    let (store, mongo) = open_store_parts(config, Duration::ZERO).await?;
    if let Some(m) = mongo {
        m.spawn_maintenance();
    }
    Ok(store)
}

/// The MongoDB store of a cluster, beside the same store as a `JobStore`.
type SharedStore = Option<Arc<store::mongo::MongoStore>>;

async fn open_store_parts(
    config: &StoreConfig,
    recovery_grace: Duration,
) -> Result<(Arc<dyn JobStore>, SharedStore)> {
    Ok(match config {
        StoreConfig::Sled {
            data_dir,
            cache_bytes,
            memory_budget,
        } => {
            let dir = data_dir.clone();
            let cache_bytes = *cache_bytes;
            let sled = tokio::task::spawn_blocking(move || {
                store::sled::SledStore::open_with_cache(&dir, cache_bytes)
            })
            .await
            .map_err(|e| Error::internal("opening the store", e))??;
            sled.set_recovery_grace(recovery_grace);
            sled.set_memory_budget(*memory_budget);
            let store: Arc<dyn JobStore> = Arc::new(sled);
            (store, None)
        }
        StoreConfig::Mongo {
            uri,
            database,
            log_retention,
            lease,
            instance,
        } => {
            let store = Arc::new(store::mongo::MongoStore::new(store::mongo::MongoOptions {
                uri: uri.0.clone(),
                database: database.clone(),
                log_retention: *log_retention,
                instance: instance.clone(),
                lease: *lease,
            }));
            connect_mongo(&store, uri).await?;
            (store.clone() as Arc<dyn JobStore>, Some(store))
        }
    })
}

/// Connects, retrying with backoff while MongoDB cannot be reached: a
/// cluster may start its trackers before its database.
async fn connect_mongo(
    store: &store::mongo::MongoStore,
    uri: &store::mongo::MongoUri,
) -> Result<()> {
    let mut backoff = Duration::from_millis(500);
    loop {
        match store.connect().await {
            Ok(()) => {
                tracing::info!(
                    "job store: MongoDB at {uri:?}, database {}, instance {}",
                    store.database(),
                    store.instance()
                );
                return Ok(());
            }
            Err(store::mongo::ConnectError::Unreachable(why)) => {
                tracing::warn!("cannot reach MongoDB at {uri:?} ({why}); retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(store::mongo::ConnectError::Fatal(e)) => return Err(e),
        }
    }
}

/// Builds a tracker: opens and recovers the store, loads feedback. It
/// always leads ([`AlwaysLeader`]).
pub async fn create_tracker(config: TrackerConfig) -> Result<Arc<Tracker>> {
    create_tracker_with_election(config, AlwaysLeader::new()).await
}

/// Builds a tracker whose once-only work follows `election`.
pub async fn create_tracker_with_election(
    config: TrackerConfig,
    election: Arc<dyn Election>,
) -> Result<Arc<Tracker>> {
    let auth = match &config.security.token_file {
        Some(path) => Some(auth::Auth::load(path).map_err(Error::Config)?),
        None => None,
    };
    let (store, shared) = open_store_parts(&config.store, config.recovery_grace).await?;
    let leases = match (&config.store, shared) {
        (StoreConfig::Mongo { lease, .. }, Some(m)) => Some((m, *lease)),
        _ => None,
    };
    let recovery = store.recover(lts_common::now_ms()).await?;
    tracing::info!(
        pending = recovery.pending,
        requeued = recovery.requeued,
        held = recovery.held,
        feedback = recovery.feedback,
        corrupt = recovery.corrupt,
        "job store recovered"
    );
    if let Some(missing) = store::missing_capabilities(&*store) {
        tracing::warn!("{missing}");
    }
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let dispatcher = Dispatcher::new(
        store.clone(),
        metrics.clone(),
        shutdown.clone(),
        tasks.clone(),
        config.heartbeat_interval,
    );
    let wake = Arc::downgrade(&dispatcher);
    store.on_claimable(Arc::new(move |group: &str| {
        if let Some(d) = wake.upgrade() {
            // Before the jobs are durable: the other trackers of a
            // cluster hear of them from the wake after the submit.
            d.wake_local(group);
        }
    }));
    let submit_rate = limits::SubmitRate::new(config.limits.max_submits_per_second);
    let quotas = quota::Quotas::new(
        config.limits.max_jobs_per_node_group,
        config.limits.max_bytes_per_node_group,
    );
    if quotas.is_on() {
        // Before the first submit: the groups' jobs from before a restart
        // count at once.
        if let Err(e) = quotas.refresh(&*store).await {
            tracing::warn!("cannot count the node groups' jobs for their quotas: {e}");
        }
    }
    let feedback = FeedbackRouter::with_max_in_flight(
        store.clone(),
        metrics.clone(),
        config.limits.max_feedback_in_flight,
    );
    feedback.push(store.pending_feedback().await?);
    Ok(Arc::new(Tracker {
        store,
        dispatcher,
        feedback,
        metrics,
        config,
        tracker_id: format!("jobtracker-{}", uuid::Uuid::now_v7().simple()),
        shutdown,
        tasks,
        scheduler: tokio::sync::Notify::new(),
        feedback_news: tokio::sync::Notify::new(),
        peers: std::sync::OnceLock::new(),
        election,
        leader_work: tokio::sync::watch::Sender::new(None),
        submit_rate,
        quotas,
        auth,
        leases,
    }))
}

/// Runs a JobTracker on `listener` until `shutdown` resolves. Returns when
/// every task it spawned has ended and its store is closed, so a new
/// JobTracker may open the same data directory at once.
pub async fn serve(
    config: TrackerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if let Some(settings) = config.cluster.clone() {
        return cluster::serve_in_cluster(config, settings, listener, shutdown).await;
    }
    let tracker = create_tracker(config).await?;
    serve_tracker(tracker, listener, shutdown).await
}

/// Serves an already built tracker (see [`create_tracker`]) until
/// `shutdown` resolves or the tracker's own token fires. Shutdown goes in
/// order: stop accepting, end every TaskTracker and feedback stream, wait
/// for the open calls (up to `shutdown_timeout`), wait for every task of
/// [`Tracker::tasks`], then close the store (everything durable, its
/// threads ended, the data directory free for the next open).
pub async fn serve_tracker(
    tracker: Arc<Tracker>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let served = serve_until_stopped(&tracker, listener, shutdown).await;
    // Whatever ended the server, every task stops now.
    tracker.shutdown.cancel();
    tracker.tasks.close();
    let deadline = tracker.config.shutdown_timeout;
    if tokio::time::timeout(deadline, tracker.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "{} tasks still running {deadline:?} after shutdown began; waiting for them",
            tracker.tasks.len()
        );
        tracker.tasks.wait().await;
    }
    let closed = tracker.store.close().await;
    tracing::info!("jobtracker stopped");
    served?;
    closed
}

async fn serve_until_stopped(
    tracker: &Arc<Tracker>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let token = tracker.shutdown.clone();
    tracker.tasks.spawn({
        let token = token.clone();
        async move {
            tokio::select! {
                _ = shutdown => token.cancel(),
                _ = token.cancelled() => {}
            }
        }
    });

    if let Some(addr) = tracker.config.metrics_addr {
        let metrics_listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Config(format!("--metrics-addr {addr}: {e}")))?;
        tracing::info!(
            "metrics on http://{}/metrics",
            metrics_listener.local_addr()?
        );
        let registry = tracker.metrics.registry.clone();
        let stop = token.clone().cancelled_owned();
        tracker.tasks.spawn(async move {
            if let Err(e) =
                lts_common::metrics::serve_metrics(metrics_listener, registry, stop).await
            {
                tracing::error!("metrics server: {e}");
            }
        });
    }
    tracker.tasks.spawn(update_queue_depths(tracker.clone()));
    if tracker.quotas.is_on() {
        tracker.tasks.spawn(count_for_quotas(tracker.clone()));
    }
    if let Some(auth) = &tracker.auth {
        tracker.tasks.spawn(auth.clone().watch(token.clone()));
    }
    tracker.tasks.spawn(show_mastership(tracker.clone()));
    if let Some((store, lease)) = &tracker.leases {
        tracker
            .tasks
            .spawn(renew_leases(tracker.clone(), store.clone(), *lease));
    }
    tracker.tasks.spawn(election::while_leading(
        tracker.election.clone(),
        token.clone(),
        tracker.leader_work.clone(),
        {
            let tracker = tracker.clone();
            move |term| {
                let tracker = tracker.clone();
                async move {
                    let sweep = async {
                        match &tracker.leases {
                            Some((store, lease)) => {
                                sweep_expired_leases(&tracker, store, *lease).await
                            }
                            // No leases to sweep (the embedded store): this
                            // arm must not end the scheduler's term.
                            None => std::future::pending::<()>().await,
                        }
                    };
                    let scheduler = async {
                        if run_scheduler(tracker.clone(), term).await.is_ok() {
                            // No cycles to fire here: the sweep goes on.
                            std::future::pending::<()>().await;
                        }
                    };
                    // A fenced term ends all of this term's once-only work;
                    // it starts again when this tracker leads a new term.
                    tokio::select! {
                        _ = scheduler => {}
                        _ = sweep => {}
                    }
                }
            }
        },
    ));
    if let Some(every) = tracker.store.poll_interval() {
        tracker
            .tasks
            .spawn(poll_shared_feedback(tracker.clone(), every * 4));
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::job_service_server::JobServiceServer<service::job::JobApi>>()
        .await;
    health_reporter
        .set_serving::<pb::work_service_server::WorkServiceServer<service::work::WorkApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Config(format!("gRPC reflection: {e}")))?;
    // The older reflection package, still the only one many tools speak
    // (grpcio-reflection clients, older grpcurl, Postman).
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::Config(format!("gRPC reflection (v1alpha): {e}")))?;
    let jobs =
        pb::job_service_server::JobServiceServer::new(service::job::JobApi::new(tracker.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let admin = pb::admin_service_server::AdminServiceServer::new(service::admin::AdminApi::new(
        tracker.clone(),
    ));
    health_reporter
        .set_serving::<pb::admin_service_server::AdminServiceServer<service::admin::AdminApi>>()
        .await;
    let work = pb::work_service_server::WorkServiceServer::new(service::work::WorkApi::new(
        tracker.clone(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // The TaskTracker's credential is checked before its stream is opened
    // and handed to the service in the request's extensions.
    let work = tonic::service::interceptor::InterceptedService::new(
        work,
        auth::caller_interceptor(tracker.auth.clone(), "work"),
    );
    let cluster = pb::cluster_service_server::ClusterServiceServer::new(
        service::cluster::ClusterApi::new(tracker.clone()),
    );

    let bound = listener.local_addr()?;
    let tls = &tracker.config.security.tls;
    if tls.is_none() && !bound.ip().is_loopback() {
        tracing::warn!(
            "the gRPC listener {bound} is not on loopback and has NO TLS: anyone on the network can read jobs, \
             tokens and payloads on the wire; give --tls-cert and --tls-key (docs/security.md)"
        );
    }
    if tracker.auth.is_none() && !bound.ip().is_loopback() {
        tracing::warn!(
            "the gRPC listener {bound} is not on loopback and has NO AUTH: anyone who reaches it may submit, \
             cancel and take jobs; give --token-file (docs/security.md)"
        );
    }
    tracing::info!(
        tls = tls.is_some(),
        mutual_tls = tls.as_ref().is_some_and(|t| t.client_ca_pem.is_some()),
        auth = tracker.auth.is_some(),
        "jobtracker listening on {bound}"
    );
    let limits = tracker.config.limits.clone();
    let keepalive = limits.idle_timeout / 3;
    let incoming = limits::limit_connections(listener, limits.clone(), tracker.metrics.clone());
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_streams_per_connection)
        // A quiet peer is pinged well within the idle timeout; one that
        // does not answer is dropped.
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive.min(Duration::from_secs(20))));
    if let Some(tls) = tls {
        let mut config = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &tls.cert_pem,
                &tls.key_pem,
            ))
            // A handshake that does not finish in time frees its
            // connection.
            .timeout(limits.handshake_timeout);
        if let Some(ca) = &tls.client_ca_pem {
            // Optional in the handshake so JobClients may come with a
            // token alone; the WorkService requires a certificate.
            config = config
                .client_ca_root(tonic::transport::Certificate::from_pem(ca))
                .client_auth_optional(true);
        }
        builder = builder
            .tls_config(config)
            .map_err(|e| Error::Config(format!("--tls-cert/--tls-key: {e}")))?;
    }
    let server = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(jobs)
        .add_service(admin)
        .add_service(work)
        .add_service(cluster)
        .serve_with_incoming_shutdown(incoming, token.clone().cancelled_owned());
    tokio::pin!(server);
    let deadline = tracker.config.shutdown_timeout;
    tokio::select! {
        r = &mut server => r?,
        _ = async {
            token.cancelled().await;
            tracker.dispatcher.close_all(tonic::Status::unavailable("the JobTracker is shutting down"));
            tokio::time::sleep(deadline).await;
        } => tracing::warn!("calls still open {deadline:?} after shutdown began; closing anyway"),
    }
    Ok(())
}

/// With a store shared by several trackers, feedback created on another
/// tracker reaches the clients connected here by this poll (at once when
/// that tracker says so, `ClusterService.NotifyWork`), and feedback created
/// here and acked through another tracker is forgotten here.
async fn poll_shared_feedback(tracker: Arc<Tracker>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tracker.feedback_news.notified() => {}
            _ = tracker.shutdown.cancelled() => return,
        }
        let groups = tracker.feedback.subscribed_groups();
        // Taken before the read: each of these was stored before it was
        // queued here, so one the read does not find was acked since.
        let mut held = tracker.feedback.waiting_ids();
        if groups.is_empty() && held.is_empty() {
            continue;
        }
        match tracker.store.pending_feedback().await {
            Ok(items) => {
                for f in &items {
                    held.remove(&f.feedback_id);
                }
                tracker.feedback.forget_acked_elsewhere(&held);
                tracker.feedback.push_unseen(
                    items
                        .into_iter()
                        .filter(|f| groups.contains(&f.submit_node_group)),
                );
            }
            Err(e) => tracing::warn!("cannot read feedback from the store: {e}"),
        }
    }
}

/// How often run leases are renewed (and expired ones swept): three times
/// per lease, so a lease survives two missed renewals.
fn lease_tick(lease: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval((lease / 3).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Every tracker of a cluster renews the leases of the runs it handed out.
async fn renew_leases(
    tracker: Arc<Tracker>,
    store: Arc<store::mongo::MongoStore>,
    lease: Duration,
) {
    let mut tick = lease_tick(lease);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tracker.shutdown.cancelled() => return,
        }
        if let Err(e) = store.renew_leases(lts_common::now_ms()).await {
            tracing::warn!("cannot renew run leases: {e}");
        }
    }
}

/// The leader puts back the runs whose lease expired (their tracker is
/// gone); once-only work, see [`election`].
async fn sweep_expired_leases(
    tracker: &Tracker,
    store: &store::mongo::MongoStore,
    lease: Duration,
) {
    let mut tick = lease_tick(lease);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tracker.shutdown.cancelled() => return,
        }
        // It logs what it put back; dispatch loops over a shared store
        // poll, so they find those runs without a wake.
        if let Err(e) = store.requeue_expired(lts_common::now_ms()).await {
            tracing::warn!("cannot requeue runs with expired leases: {e}");
        }
    }
}

/// Fires cron and repeat cycles when they are due; once-only work, run
/// while this tracker leads (see [`election`]), in master term `term`.
///
/// Returns `Ok` at shutdown or at once when the store fires no cycles;
/// returns [`Error::Fenced`] when the store says a newer master took over:
/// this term's once-only work must stop then.
pub async fn run_scheduler(tracker: Arc<Tracker>, term: Term) -> Result<()> {
    // Also woken by submits and operator verbs; the cap bounds how late a
    // cycle that waited for its previous one starts after that one ends.
    const MAX_SLEEP_MS: i64 = 200;
    // A store without cycle firing refuses cron jobs (said at start).
    let Some(cycles) = tracker.store.cycles() else {
        return Ok(());
    };
    loop {
        match cycles.fire_due(lts_common::now_ms(), term).await {
            Ok(groups) => {
                for g in groups {
                    tracker.dispatcher.wake(&g);
                }
            }
            Err(e @ Error::Fenced { .. }) => {
                tracing::warn!(term, "cycle firing stops: {e}");
                return Err(e);
            }
            Err(e) => tracing::warn!("cannot fire due cycles: {e}"),
        }
        let next = cycles.next_fire_at().await.ok().flatten();
        let sleep_ms = match next {
            Some(at) => (at - lts_common::now_ms()).clamp(0, MAX_SLEEP_MS),
            None => MAX_SLEEP_MS,
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms as u64)) => {}
            _ = tracker.scheduler.notified() => {}
            _ = tracker.shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Keeps `lts_jobtracker_master` at 1 while the once-only work runs here.
async fn show_mastership(tracker: Arc<Tracker>) {
    let mut running = tracker.leader_work.subscribe();
    loop {
        let leading = running.borrow_and_update().is_some();
        tracker.metrics.master.set(i64::from(leading));
        tokio::select! {
            r = running.changed() => if r.is_err() { return },
            _ = tracker.shutdown.cancelled() => return,
        }
    }
}

/// Samples `lts_jobtracker_queue_depth` every
/// [`metrics::QUEUE_DEPTH_INTERVAL`]; a group whose queue emptied reads 0.
async fn update_queue_depths(tracker: Arc<Tracker>) {
    let mut tick = tokio::time::interval(metrics::QUEUE_DEPTH_INTERVAL);
    let mut shown: std::collections::HashSet<String> = Default::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tracker.shutdown.cancelled() => return,
        }
        match tracker.store.queue_depths(lts_common::now_ms()).await {
            Ok(depths) => tracker.metrics.set_per_group(
                &tracker.metrics.queue_depth,
                &mut shown,
                depths.into_iter().map(|(g, n)| (g, n as i64)),
            ),
            Err(e) => tracing::warn!("cannot read queue depths: {e}"),
        }
    }
}

/// Counts the node groups' unfinished jobs for their quotas every
/// [`quota::refresh_interval`].
async fn count_for_quotas(tracker: Arc<Tracker>) {
    let mut tick = tokio::time::interval(quota::refresh_interval(&*tracker.store));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tracker.shutdown.cancelled() => return,
        }
        if let Err(e) = tracker.quotas.refresh(&*tracker.store).await {
            tracing::warn!("cannot count the node groups' jobs for their quotas: {e}");
        }
    }
}
