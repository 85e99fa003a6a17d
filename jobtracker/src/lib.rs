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
//! - [`config`]: flags, env vars and the config file.
#![warn(missing_docs)]

pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod election;
pub mod error;
pub mod feedback;
pub mod metrics;
pub mod outbound;
pub mod peers;
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
}

impl TrackerConfig {
    /// The embedded default over `data_dir`.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        TrackerConfig {
            store: StoreConfig::Sled {
                data_dir: data_dir.into(),
            },
            cluster: None,
            heartbeat_interval: Duration::from_secs(2),
            metrics_addr: None,
            shutdown_timeout: Duration::from_secs(10),
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
    /// The shared store whose run leases this tracker keeps, if any.
    leases: Option<(Arc<store::mongo::MongoStore>, Duration)>,
}

impl Tracker {
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
    let (store, mongo) = open_store_parts(config).await?;
    if let Some(m) = mongo {
        m.spawn_maintenance();
    }
    Ok(store)
}

/// The MongoDB store of a cluster, beside the same store as a `JobStore`.
type SharedStore = Option<Arc<store::mongo::MongoStore>>;

async fn open_store_parts(config: &StoreConfig) -> Result<(Arc<dyn JobStore>, SharedStore)> {
    Ok(match config {
        StoreConfig::Sled { data_dir } => {
            let dir = data_dir.clone();
            let store: Arc<dyn JobStore> = Arc::new(
                tokio::task::spawn_blocking(move || store::sled::SledStore::open(&dir))
                    .await
                    .map_err(|e| Error::internal("opening the store", e))??,
            );
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
    let (store, shared) = open_store_parts(&config.store).await?;
    let leases = match (&config.store, shared) {
        (StoreConfig::Mongo { lease, .. }, Some(m)) => Some((m, *lease)),
        _ => None,
    };
    let recovery = store.recover(lts_common::now_ms()).await?;
    tracing::info!(
        pending = recovery.pending,
        requeued = recovery.requeued,
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
    let feedback = FeedbackRouter::new(store.clone(), metrics.clone());
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
    let cluster = pb::cluster_service_server::ClusterServiceServer::new(
        service::cluster::ClusterApi::new(tracker.clone()),
    );

    tracing::info!("jobtracker listening on {}", listener.local_addr()?);
    // `Server::tcp_nodelay` covers only listeners tonic binds itself: set
    // it on each accepted connection, or Nagle's algorithm holds small
    // messages (an assignment, an ack) back for tens of milliseconds.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            conn.inspect(|s| {
                if let Err(e) = s.set_nodelay(true) {
                    tracing::debug!("cannot set TCP_NODELAY: {e}");
                }
            })
        },
    );
    let server = tonic::transport::Server::builder()
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
            Ok(depths) => {
                let mut now_shown = std::collections::HashSet::new();
                for (group, n) in depths {
                    tracker
                        .metrics
                        .queue_depth
                        .with_label_values(&[group.as_str()])
                        .set(n as i64);
                    now_shown.insert(group);
                }
                for gone in shown.difference(&now_shown) {
                    tracker
                        .metrics
                        .queue_depth
                        .with_label_values(&[gone.as_str()])
                        .set(0);
                }
                shown.extend(now_shown);
            }
            Err(e) => tracing::warn!("cannot read queue depths: {e}"),
        }
    }
}
