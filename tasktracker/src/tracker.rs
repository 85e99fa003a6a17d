//! The TaskTracker: one stream to a JobTracker, runs in slots, reconnects.
//!
//! One task (the driver) owns all state: the runs in flight, the credit the
//! JobTracker holds, the jobs sent ahead of their time, the spool of
//! unacknowledged outcomes and the current stream. Runs talk to it through
//! one queue of events, and it talks to the JobTracker through the
//! coalescing queue of [`crate::outbound`]. Nothing is shared behind a
//! lock, so the hot path is a few queue operations per job.
//!
//! The driver starts runs only under a lease: the JobTracker gives up a
//! TaskTracker silent for three heartbeat intervals and hands its runs to
//! others, so once the JobTracker has not been heard for two intervals the
//! stream is given up and what it brought and has not started is dropped
//! unrun. The lease is looked at first on every wake, before a message,
//! an event or a timer is acted on, so a process resumed after a pause
//! cannot start held runs before it notices the pause.
//!
//! Jobs sent ahead of their time are made ready when they arrive: the job
//! read, its context built and its task spawned, waiting on a one-shot
//! signal. They wait in one map ordered by the instant they start at,
//! watched by one timer; when thousands fall due in the same second, the
//! release is a signal each, so the last starts a few milliseconds after the
//! first rather than after thousands of task spawns.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lts_common::convert::job_from_wire;
use lts_common::endpoint::{EndpointOptions, JobTrackerEndpoint};
use lts_common::limits::{clip_message, MAX_DELAY_MS, MAX_MESSAGE_BYTES};
use lts_common::resolver::Resolver;
use lts_common::Outcome;
use lts_proto::v1 as pb;
use pb::tracker_message::Kind as TrackerKind;
use pb::work_service_client::WorkServiceClient;
use prometheus::Registry;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::clock::{Clock, ClockSleep, SystemClock};
use crate::config::TaskTrackerConfig;
use crate::error::{Error, Result};
use crate::execute::execute;
use crate::outbound::{coalesced, Outgoing};
use crate::runner::{BizLogger, Event, JobContext, JobRunner};
use crate::spool::{MemorySpool, OutcomeSpool, Spooled};
use crate::starting::Starting;
use crate::stats::{Metrics, Recorder, TaskTrackerHandle};

/// Log lines queued for the JobTracker beyond this are dropped: a runner
/// that logs faster than the network carries must not eat the memory.
const MAX_QUEUED_LOG_LINES: usize = 100_000;
/// Events handled before credits are granted and counters published.
const EVENT_BURST: usize = 4096;
/// At most this many runs are told started in one item.
const STARTED_BATCH: usize = 1024;
/// How long the start of a run may wait to be told to the JobTracker: a
/// run that ends sooner has its start sent with its outcome, in one write
/// instead of two. The start's time is the TaskTracker's clock either way.
const STARTED_DELAY: Duration = Duration::from_millis(10);
/// Heartbeat period when the JobTracker names none.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// The lease, in heartbeat intervals: a TaskTracker that has heard nothing
/// from its JobTracker for longer starts nothing more on that stream. The
/// JobTracker gives a silent TaskTracker up after three intervals; the third
/// covers the TaskTracker's own heartbeat period (its last message may have
/// left up to one interval before it went quiet).
const LEASE_HEARTBEATS: u32 = 2;
/// How long to wait for the JobTracker to close its side after ours ended.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A TaskTracker ready to run: build it, take a [`handle`](Self::handle) or
/// the [`registry`](Self::registry) if you want them, then [`run`](Self::run)
/// it.
pub struct TaskTracker {
    config: TaskTrackerConfig,
    runner: Arc<dyn JobRunner>,
    spool: Box<dyn OutcomeSpool>,
    resolver: Arc<dyn Resolver>,
    clock: Arc<dyn Clock>,
    registry: Registry,
    recorder: Recorder,
}

impl std::fmt::Debug for TaskTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskTracker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TaskTracker {
    /// Validates `config` and registers the metrics in a registry of its own.
    pub fn new(config: TaskTrackerConfig, runner: Arc<dyn JobRunner>) -> Result<Self> {
        Self::with_registry(config, runner, Registry::new())
    }

    /// Validates `config` and registers the metrics in `registry`.
    pub fn with_registry(
        config: TaskTrackerConfig,
        runner: Arc<dyn JobRunner>,
        registry: Registry,
    ) -> Result<Self> {
        config.validate()?;
        let resolver = Arc::new(config.resolver()?);
        let metrics = Metrics::register(&registry)?;
        let recorder = Recorder::new(metrics, config.slots);
        let spool = Box::new(MemorySpool::with_capacity(config.slots as usize));
        Ok(TaskTracker {
            config,
            runner,
            spool,
            resolver,
            clock: Arc::new(SystemClock),
            registry,
            recorder,
        })
    }

    /// Reads the time from `clock` instead of the system's: the times it
    /// reports and the instants jobs sent ahead start at.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Finds the JobTrackers through `resolver` instead of the config's
    /// fixed [`jobtrackers`](TaskTrackerConfig::jobtrackers) list.
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = resolver;
        self
    }

    /// Joins `cluster` (cluster mode): the JobTrackers are found through
    /// its registry instead of the config's fixed list, and this
    /// TaskTracker registers under its node group with its identity and
    /// slots, so JobTrackers and `jobclient nodes` see it. The caller
    /// closes the cluster after [`run`](Self::run) returns, which removes
    /// the registration at once.
    pub async fn join_cluster(mut self, cluster: &lts_cluster::Cluster) -> Result<Self> {
        cluster
            .register(lts_cluster::NodeInfo {
                role: lts_cluster::Role::TaskTracker,
                node_group: self.config.node_group.clone(),
                identity: self.config.identity.clone(),
                address: String::new(),
                slots: self.config.slots,
                version: env!("CARGO_PKG_VERSION").to_string(),
                started_at_ms: lts_common::now_ms(),
            })
            .await?;
        self.resolver = cluster.resolver();
        Ok(self)
    }

    /// Keeps unacknowledged outcomes in `spool` instead of memory.
    pub fn with_spool(mut self, spool: Box<dyn OutcomeSpool>) -> Self {
        self.spool = spool;
        self
    }

    /// Counters of this TaskTracker, usable while it runs.
    pub fn handle(&self) -> TaskTrackerHandle {
        self.recorder.handle()
    }

    /// The registry holding the metrics, to serve them.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Runs jobs until `shutdown` resolves, then stops taking work, gives
    /// running jobs [`shutdown_grace`](TaskTrackerConfig::shutdown_grace) to
    /// end, cancels the rest and flushes their outcomes.
    ///
    /// A broken stream is reopened with backoff and never ends the run; a
    /// refusal by the JobTracker (another protocol version, a bad hello)
    /// does, since retrying cannot help.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let stopper = {
            let events = events_tx.clone();
            let grace = self.config.shutdown_grace;
            AbortOnDrop(tokio::spawn(async move {
                shutdown.await;
                let _ = events.send(Event::Stop);
                tokio::time::sleep(grace).await;
                let _ = events.send(Event::GraceOver);
            }))
        };
        let slots = self.config.slots as usize;
        let mut driver = Driver {
            slots,
            endpoint_options: self.config.endpoint_options(),
            config: self.config,
            resolver: self.resolver,
            clock: self.clock,
            runner: self.runner,
            spool: self.spool,
            recorder: self.recorder,
            events_tx,
            events_rx,
            // Sized for every slot up front: growing it while thousands of
            // runs start at one instant would cost a rehash in the middle.
            running: HashMap::with_capacity(slots),
            waiting: VecDeque::new(),
            ahead: BTreeMap::new(),
            due_waiting: VecDeque::new(),
            ahead_seq: 0,
            shutting_down: Arc::new(AtomicBool::new(false)),
            started: Vec::new(),
            started_at: 0,
            started_due: None,
            starting: Arc::default(),
            stopping: false,
            queued_log_lines: Arc::new(AtomicUsize::new(0)),
            cut_off_since: Some(Instant::now()),
            stopped_working: false,
            stopped_runs: HashSet::new(),
            spool_full: false,
        };
        let result = driver.drive().await;
        // Runs still going after a refusal would run unobserved.
        driver.cancel_running();
        drop(stopper);
        if let Err(e) = driver.spool.close().await {
            tracing::error!("{e}");
        }
        // Letting go of a spool on disk waits for its files to be
        // released: off the runtime's threads.
        let spool = std::mem::replace(&mut driver.spool, Box::new(MemorySpool::new()));
        let _ = tokio::task::spawn_blocking(move || drop(spool)).await;
        result
    }
}

/// Runs jobs from the JobTracker named in `config` through `runner` until
/// `shutdown` resolves. See [`TaskTracker::run`].
pub async fn run(
    config: TaskTrackerConfig,
    runner: Arc<dyn JobRunner>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    TaskTracker::new(config, runner)?.run(shutdown).await
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type RunKey = (String, u32);

/// A run whose task is spawned and waits for the signal to start; dropping
/// it ends that task unrun.
struct Prepared {
    job_id: String,
    attempt: u32,
    /// The instant it starts at, for a run sent ahead; 0 otherwise.
    not_before: i64,
    cancel: CancellationToken,
    go: tokio::sync::oneshot::Sender<(i64, bool)>,
}

/// The state of the stream to the JobTracker.
enum Link {
    /// Waiting to reconnect.
    Down { retry_at: Instant },
    /// Opening a stream; resolves at the welcome.
    Connecting(Pin<Box<dyn Future<Output = Result<Box<Conn>, ConnectError>> + Send>>),
    /// Streaming.
    Up(Box<Conn>),
}

struct Conn {
    /// The JobTracker at the other end, as the resolver named it.
    address: String,
    out: mpsc::UnboundedSender<Outgoing>,
    inbound: tonic::Streaming<pb::TrackerMessage>,
    heartbeat: Interval,
    /// Assignments the JobTracker may still send on this stream.
    granted: usize,
    tracker_id: String,
    /// When the JobTracker was last heard from (Unix ms on the
    /// TaskTracker's clock): the hello's sending, then every message read.
    /// The JobTracker's silence count for this TaskTracker starts no
    /// earlier than the hello, so that is where the lease starts too.
    heard_ms: i64,
    /// How long the JobTracker may be silent before the runs of this
    /// stream can no longer be trusted to be this TaskTracker's.
    lease: Duration,
}

impl Conn {
    /// The instant (Unix ms) after which the lease has lapsed unless the
    /// JobTracker is heard from again.
    fn lease_end_ms(&self) -> i64 {
        self.heard_ms.saturating_add(duration_ms(self.lease))
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What woke the driver.
/// A wait on the spool's next flush.
type SpoolWait = Pin<Box<dyn Future<Output = Result<()>> + Send + 'static>>;

enum Wake {
    /// Every run released at an instant has begun, or the hold ran out.
    HoldOver,
    Event(Event),
    Link(LinkEvent),
    /// The earliest job held ahead is due.
    AheadDue,
    /// The lease may have lapsed.
    LeaseCheck,
    FlushDeadline,
    /// Runs started must now be told to the JobTracker.
    StartedDue,
    /// Cut off from every JobTracker for the whole stop-working limit.
    StopWorking,
    /// The spool flushed what it held when the wait began.
    SpoolFlushed(Result<()>),
}

enum ConnectError {
    /// Worth another try later.
    Retry(String),
    /// The JobTracker refused us; retrying cannot help.
    Permanent(Error),
}

enum LinkEvent {
    Retry,
    Connected(Result<Box<Conn>, ConnectError>),
    Message(Result<Option<pb::TrackerMessage>, tonic::Status>),
    Heartbeat,
}

struct Driver {
    config: TaskTrackerConfig,
    slots: usize,
    resolver: Arc<dyn Resolver>,
    endpoint_options: EndpointOptions,
    clock: Arc<dyn Clock>,
    runner: Arc<dyn JobRunner>,
    spool: Box<dyn OutcomeSpool>,
    recorder: Recorder,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    running: HashMap<RunKey, CancellationToken>,
    /// Assignments beyond the free slots (the JobTracker sent more than the
    /// credit, e.g. around a reconnect); they start as slots free up.
    waiting: VecDeque<pb::Assignment>,
    /// Runs sent ahead of their time, by the instant they start at (Unix
    /// ms) and then arrival order. They take an ahead slot, not a slot,
    /// until they are due.
    ahead: BTreeMap<(i64, u64), Prepared>,
    /// Runs sent ahead that are due, waiting for a free slot.
    due_waiting: VecDeque<Prepared>,
    /// Arrival counter: jobs due at the same instant start in the order the
    /// JobTracker sent them.
    ahead_seq: u64,
    /// Set when the shutdown grace is over: runs cut short by it hand their
    /// job back instead of spending a retry.
    shutting_down: Arc<AtomicBool>,
    /// Runs started and not yet told to the JobTracker, all at `started_at`.
    started: Vec<pb::RunRef>,
    started_at: i64,
    /// When `started` must be sent at the latest (see [`STARTED_DELAY`]).
    started_due: Option<Instant>,
    /// Runs released at their instant that have not begun: while any
    /// has not, events and outbound messages wait (boundedly).
    starting: Arc<Starting>,
    stopping: bool,
    queued_log_lines: Arc<AtomicUsize>,
    /// Since when no stream has been up; `None` while one is.
    cut_off_since: Option<Instant>,
    /// The stop-working limit ran out during the current cut-off.
    stopped_working: bool,
    /// Runs cancelled because this TaskTracker was cut off too long: their
    /// outcomes hand the job back.
    stopped_runs: HashSet<RunKey>,
    /// The spool was full at the last look (logged once per episode).
    spool_full: bool,
}

impl Driver {
    async fn drive(&mut self) -> Result<()> {
        // A spool on disk may hold outcomes from before a restart.
        self.recorder.set_unacked(self.spool.len());
        self.recorder.set_on_disk(self.spool.durable_len());
        self.recorder.notify();
        let mut link = self.connect();
        let mut backoff = Backoff::new(
            self.config.reconnect_backoff_min,
            self.config.reconnect_backoff_max,
        );
        let mut flush_deadline: Option<Instant> = None;
        // The wait for the earliest job held ahead, kept while that stays
        // the earliest: a timer is set once per instant, not per event.
        let mut ahead_wait: Option<(i64, ClockSleep)> = None;
        let mut lease_wait: Option<ClockSleep> = None;
        // The next flush of a spool on disk, awaited while some outcome in
        // it is not on disk yet, to keep the on-disk count current.
        let mut spool_flush: Option<SpoolWait> = None;
        let mut spool_flush_failed = false;
        loop {
            if spool_flush.is_none() && !spool_flush_failed && self.spool.awaits_flush() {
                spool_flush = Some(self.spool.flushed());
            }
            if self.stopping
                && self.running.is_empty()
                && self.waiting.is_empty()
                && self.due_waiting.is_empty()
                && self.ahead.is_empty()
            {
                let deadline = *flush_deadline
                    .get_or_insert_with(|| Instant::now() + self.config.flush_timeout);
                if self.spool.is_empty() || Instant::now() >= deadline {
                    break;
                }
            }
            let far = Instant::now() + Duration::from_secs(3600);
            let earliest_ahead = self.ahead.first_key_value().map(|(&(at, _), _)| at);
            if ahead_wait.as_ref().map(|(at, _)| *at) != earliest_ahead {
                ahead_wait = earliest_ahead.map(|at| (at, self.clock.sleep_until_ms(at)));
            }
            // The lease's timer, set once per lease rather than per message:
            // when it fires early (the JobTracker was heard since), it is
            // set again for the new end.
            match as_conn(&mut link) {
                Some(conn) if lease_wait.is_none() => {
                    lease_wait = Some(self.clock.sleep_until_ms(conn.lease_end_ms()));
                }
                Some(_) => {}
                None => lease_wait = None,
            }
            let stop_working_at = self.stop_working_at();
            let starting = self.starting.clone();
            let holding = starting.holding_until().is_some();
            let wake = tokio::select! {
                // Runs released at their instant begin before the outcomes
                // of those already done are reported.
                _ = starting.hold_over(), if holding => Wake::HoldOver,
                Some(event) = self.events_rx.recv(), if !holding => Wake::Event(event),
                event = next_link_event(&mut link) => Wake::Link(event),
                _ = async {
                    match ahead_wait.as_mut() {
                        Some((_, sleep)) => sleep.await,
                        None => std::future::pending().await,
                    }
                }, if ahead_wait.is_some() => {
                    ahead_wait = None;
                    Wake::AheadDue
                }
                _ = async {
                    match lease_wait.as_mut() {
                        Some(sleep) => sleep.await,
                        None => std::future::pending().await,
                    }
                }, if lease_wait.is_some() => {
                    lease_wait = None;
                    Wake::LeaseCheck
                }
                _ = tokio::time::sleep_until(flush_deadline.unwrap_or(far)), if flush_deadline.is_some() => Wake::FlushDeadline,
                _ = tokio::time::sleep_until(self.started_due.unwrap_or(far)), if self.started_due.is_some() => Wake::StartedDue,
                _ = tokio::time::sleep_until(stop_working_at.unwrap_or(far)), if stop_working_at.is_some() => Wake::StopWorking,
                flushed = async {
                    match spool_flush.as_mut() {
                        Some(flush) => flush.await,
                        None => std::future::pending().await,
                    }
                }, if spool_flush.is_some() => {
                    spool_flush = None;
                    Wake::SpoolFlushed(flushed)
                }
            };
            // Whatever woke the driver, the lease is looked at first: a
            // process resumed after a pause must not start what its timers
            // release, nor act on messages that waited in its socket, before
            // it knows the runs are still its own.
            if self.check_lease(&mut link, &mut backoff) {
                lease_wait = None;
                if matches!(wake, Wake::Link(_)) {
                    // Read from, or meant for, the stream just given up.
                    continue;
                }
            }
            match wake {
                Wake::HoldOver | Wake::LeaseCheck | Wake::FlushDeadline => {}
                Wake::StopWorking => self.stop_working(),
                Wake::SpoolFlushed(flushed) => {
                    if let Err(e) = flushed {
                        // The spool logged the failure; the count stays.
                        tracing::debug!("{e}");
                        spool_flush_failed = true;
                    }
                    self.recorder.set_on_disk(self.spool.durable_len());
                    self.recorder.notify();
                }
                Wake::Event(event) => {
                    let mut link_up = as_conn(&mut link);
                    self.on_event(event, &mut link_up);
                    for _ in 1..EVENT_BURST {
                        match self.events_rx.try_recv() {
                            Ok(event) => self.on_event(event, &mut link_up),
                            Err(_) => break,
                        }
                    }
                    self.settle(link_up);
                }
                Wake::Link(event) => match event {
                    LinkEvent::Retry => link = self.connect(),
                    LinkEvent::Connected(Ok(conn)) => {
                        backoff.reset();
                        self.cut_off_since = None;
                        self.stopped_working = false;
                        link = Link::Up(conn);
                        self.on_connected(as_conn(&mut link));
                    }
                    LinkEvent::Connected(Err(ConnectError::Permanent(e))) => return Err(e),
                    LinkEvent::Connected(Err(ConnectError::Retry(why))) => {
                        let wait = backoff.next_wait();
                        tracing::warn!(
                            "cannot reach a JobTracker ({why}); retrying in {} ms",
                            wait.as_millis()
                        );
                        link = Link::Down {
                            retry_at: Instant::now() + wait,
                        };
                    }
                    LinkEvent::Message(Ok(Some(message))) => {
                        let mut link_up = as_conn(&mut link);
                        if let Some(conn) = link_up.as_deref_mut() {
                            conn.heard_ms = self.clock.now_ms();
                            self.recorder.heard(conn.heard_ms);
                        }
                        self.on_message(message, &mut link_up);
                        self.settle(link_up);
                    }
                    LinkEvent::Message(end) => {
                        if let Some(conn) = as_conn(&mut link) {
                            // The next attempt starts with another tracker.
                            self.resolver.failed(&conn.address);
                        }
                        match end {
                            Ok(_) => {
                                tracing::warn!("the JobTracker closed the stream; reconnecting")
                            }
                            Err(status) => tracing::warn!(
                                "the stream to the JobTracker broke ({}: {}); reconnecting",
                                status.code(),
                                status.message()
                            ),
                        }
                        self.on_stream_end();
                        self.cut_off_since.get_or_insert_with(Instant::now);
                        self.recorder.set_connected(false);
                        self.recorder.notify();
                        link = Link::Down {
                            retry_at: Instant::now() + backoff.next_wait(),
                        };
                    }
                    LinkEvent::Heartbeat => {
                        if let Some(conn) = as_conn(&mut link) {
                            let _ = conn.out.send(Outgoing::Heartbeat(self.clock.now_ms()));
                        }
                    }
                },
                Wake::AheadDue => {
                    let mut link_up = as_conn(&mut link);
                    self.release_due_ahead(&mut link_up);
                    self.settle(link_up);
                }
                Wake::StartedDue => match as_conn(&mut link) {
                    Some(conn) => self.send_started(conn),
                    None => self.started_due = None,
                },
            }
        }
        if !self.spool.is_empty() {
            if self.spool.is_durable() {
                tracing::warn!(
                    "shutting down with {} outcomes the JobTracker has not acknowledged; \
                     they stay in the spool and are delivered after the next start",
                    self.spool.len()
                );
            } else {
                tracing::warn!(
                    "shutting down with {} outcomes the JobTracker has not acknowledged; \
                     it will run those jobs again",
                    self.spool.len()
                );
            }
        }
        if let Link::Up(mut conn) = link {
            self.recorder.set_connected(false);
            self.recorder.notify();
            // Ending our half lets the JobTracker see a clean close rather
            // than a reset; its answer is not needed.
            drop(conn.out);
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                while let Ok(Some(_)) = conn.inbound.message().await {}
            })
            .await;
        }
        tracing::info!("TaskTracker stopped");
        Ok(())
    }

    /// Starts opening a stream, announcing the free slots as credit.
    fn connect(&self) -> Link {
        let free = self
            .slots
            .saturating_sub(self.running.len() + self.waiting.len());
        // A full spool takes no new work; a hello offers one slot at least.
        let free = if self.spool.is_full() { 0 } else { free };
        let hello = pb::Hello {
            identity: self.config.identity.clone(),
            node_group: self.config.node_group.clone(),
            // A hello must offer at least one slot. With every slot busy, the
            // one assignment that may bring waits here for a free slot, and
            // the credit bookkeeping absorbs it.
            slots: free.max(1) as u32,
            protocol_version: lts_proto::PROTOCOL_VERSION,
            // Every ahead slot is free here: jobs held ahead are dropped
            // with the stream they came on.
            ahead_slots: self.config.ahead_slots,
            total_slots: self.slots as u32,
        };
        Link::Connecting(Box::pin(open_first(
            self.resolver.clone(),
            self.clock.clone(),
            self.endpoint_options.clone(),
            hello,
            self.queued_log_lines.clone(),
            self.starting.clone(),
            self.config.connect_timeout,
        )))
    }

    fn on_connected(&mut self, conn: Option<&mut Conn>) {
        let Some(conn) = conn else { return };
        self.recorder.set_connected(true);
        self.recorder.heard(conn.heard_ms);
        tracing::info!(
            "connected to JobTracker {} at {} as {} ({} slots, {} ahead slots, {} running, \
             {} outcomes to resend; lease {} ms)",
            conn.tracker_id,
            conn.address,
            self.config.identity,
            self.slots,
            self.config.ahead_slots,
            self.running.len(),
            self.spool.len(),
            conn.lease.as_millis()
        );
        // Everything spooled goes first, in the order it was spooled, so
        // an acknowledgement covers what was spooled before it.
        match self.spool.pending() {
            Ok(items) => {
                for item in items {
                    let out = match item {
                        Spooled::Started(runs, at) => Outgoing::Started(runs, at),
                        Spooled::Log(line) => {
                            self.queued_log_lines.fetch_add(1, Ordering::Relaxed);
                            Outgoing::Log(line)
                        }
                        Spooled::Outcome(report) => Outgoing::Outcome(report),
                    };
                    let _ = conn.out.send(out);
                }
            }
            Err(e) => tracing::error!("cannot read the outcome spool: {e}"),
        }
        // Runs that ended while the stream was being opened freed slots the
        // hello did not announce.
        self.settle(Some(conn));
    }

    fn on_event(&mut self, event: Event, conn: &mut Option<&mut Conn>) {
        match event {
            Event::Finished(report) => self.on_finished(report, conn),
            Event::Log(line) => match conn {
                Some(conn)
                    if self.queued_log_lines.load(Ordering::Relaxed) < MAX_QUEUED_LOG_LINES =>
                {
                    // A run's start goes out before its log lines.
                    self.send_started(conn);
                    self.spool_log(&line);
                    self.queued_log_lines.fetch_add(1, Ordering::Relaxed);
                    let _ = conn.out.send(Outgoing::Log(line));
                }
                Some(_) => self.recorder.log_line_dropped(),
                // Sent with the spool at the start of the next stream.
                None => {
                    if !self.spool_log(&line) {
                        self.recorder.log_line_dropped();
                    }
                }
            },
            Event::Stop => self.on_stop(conn),
            Event::GraceOver => self.cancel_running(),
        }
    }

    fn on_finished(&mut self, mut report: pb::OutcomeReport, conn: &mut Option<&mut Conn>) {
        // Borrow the id for the lookup instead of cloning it per run.
        let key = (std::mem::take(&mut report.job_id), report.attempt);
        self.running.remove(&key);
        if !self.stopped_runs.is_empty() && self.stopped_runs.remove(&key) {
            hand_back_stopped(&mut report, self.config.stop_working_after);
        }
        report.job_id = key.0;
        self.report(report, conn);
        while self.running.len() < self.slots {
            if let Some(run) = self.due_waiting.pop_front() {
                self.go(run, conn, false);
            } else if let Some(assignment) = self.waiting.pop_front() {
                self.start(assignment, conn);
            } else {
                break;
            }
        }
    }

    /// Spools an outcome and sends it.
    fn report(&mut self, report: pb::OutcomeReport, conn: &mut Option<&mut Conn>) {
        tracing::debug!(
            job_id = %report.job_id,
            attempt = report.attempt,
            "run finished"
        );
        self.recorder.run_finished(report.outcome.as_ref());
        if let Some(conn) = conn {
            // A run's start goes out (and into the spool) before its
            // outcome, so the outcome's acknowledgement covers it.
            self.send_started(conn);
        }
        if let Err(e) = self.spool.put(&report) {
            tracing::error!(
                "cannot spool the outcome of job {} attempt {}: {e}; \
                 it is lost if the stream breaks before the JobTracker stores it",
                report.job_id,
                report.attempt
            );
        }
        if let Some(conn) = conn {
            let _ = conn.out.send(Outgoing::Outcome(report));
        }
    }

    fn on_stop(&mut self, conn: &mut Option<&mut Conn>) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        tracing::info!(
            "shutting down: taking no new jobs; {} running get {} ms to finish; \
             {} waiting for a slot and {} held ahead of their time are handed back",
            self.running.len(),
            self.config.shutdown_grace.as_millis(),
            self.waiting.len() + self.due_waiting.len(),
            self.ahead.len()
        );
        while let Some(assignment) = self.waiting.pop_front() {
            self.hand_back(assignment, conn);
        }
        let prepared: Vec<Prepared> = self
            .due_waiting
            .drain(..)
            .chain(std::mem::take(&mut self.ahead).into_values())
            .collect();
        for run in prepared {
            // Dropping the run ends its task unrun.
            self.hand_back_run(run.job_id, run.attempt, run.not_before, conn);
        }
    }

    fn on_message(&mut self, message: pb::TrackerMessage, conn: &mut Option<&mut Conn>) {
        match message.kind {
            Some(TrackerKind::Assignments(batch)) => {
                let now = self.clock.now_ms();
                let mut due_ahead = 0u32;
                for assignment in batch.assignments {
                    let not_before = assignment.not_before_unix_ms;
                    if not_before == 0 {
                        if let Some(conn) = conn.as_deref_mut() {
                            conn.granted = conn.granted.saturating_sub(1);
                        }
                    }
                    if self.stopping {
                        self.hand_back(assignment, conn);
                    } else if not_before > now {
                        match self.prepare(assignment, conn) {
                            Some(run) => {
                                self.ahead_seq += 1;
                                self.ahead.insert((not_before, self.ahead_seq), run);
                            }
                            // Unreadable, reported: its ahead slot is free.
                            None => due_ahead += 1,
                        }
                    } else {
                        if not_before != 0 {
                            // Sent ahead but already due: its ahead slot is
                            // free again at once.
                            due_ahead += 1;
                        }
                        self.run_or_queue(assignment, conn);
                    }
                }
                self.return_ahead_slots(due_ahead, conn);
            }
            Some(TrackerKind::Cancel(cancel)) => self.on_cancel(cancel, conn),
            Some(TrackerKind::OutcomeAcks(acks)) => {
                for run in acks.runs {
                    if let Err(e) = self.spool.ack(&run.job_id, run.attempt) {
                        tracing::error!(
                            "cannot remove an acknowledged outcome from the spool: {e}"
                        );
                    }
                }
            }
            Some(TrackerKind::Welcome(_)) => {
                tracing::debug!("ignoring a second welcome from the JobTracker")
            }
            Some(TrackerKind::Heartbeat(_)) | None => {}
        }
    }

    fn on_cancel(&mut self, cancel: pb::CancelRun, conn: &mut Option<&mut Conn>) {
        let key = (cancel.job_id, cancel.attempt);
        if let Some(token) = self.running.get(&key) {
            tracing::debug!(job_id = %key.0, attempt = key.1, reason = %cancel.reason, "cancelling run");
            token.cancel();
            return;
        }
        let (job_id, attempt) = key;
        let is_run = |a: &pb::Assignment| {
            a.attempt == attempt && a.job.as_ref().is_some_and(|j| j.job_id == job_id)
        };
        let is_prepared = |r: &Prepared| r.attempt == attempt && r.job_id == job_id;
        // A prepared run that is removed is dropped: its task ends unrun.
        let removed = if let Some(position) = self.waiting.iter().position(is_run) {
            self.waiting.remove(position).is_some()
        } else if let Some(position) = self.due_waiting.iter().position(is_prepared) {
            self.due_waiting.remove(position).is_some()
        } else if let Some(held) = self
            .ahead
            .iter()
            .find(|(_, r)| is_prepared(r))
            .map(|(k, _)| *k)
        {
            self.ahead.remove(&held);
            self.return_ahead_slots(1, conn);
            true
        } else {
            false
        };
        if removed {
            let now = self.clock.now_ms();
            let outcome = Outcome::Error(clip_message(format!(
                "cancelled by the JobTracker before it started: {}",
                cancel.reason
            )));
            self.report(outcome_report(job_id, attempt, outcome, now, now), conn);
        }
    }

    /// Returns an assignment unrun: the JobTracker runs it again, on another
    /// TaskTracker if this one is gone.
    fn hand_back(&mut self, assignment: pb::Assignment, conn: &mut Option<&mut Conn>) {
        let Some(job) = assignment.job else { return };
        self.hand_back_run(
            job.job_id,
            assignment.attempt,
            assignment.not_before_unix_ms,
            conn,
        );
    }

    /// Returns a run unrun; one sent ahead goes back with the time left to
    /// its instant (`not_before`), so another TaskTracker does not run it
    /// early.
    fn hand_back_run(
        &mut self,
        job_id: String,
        attempt: u32,
        not_before: i64,
        conn: &mut Option<&mut Conn>,
    ) {
        let now = self.clock.now_ms();
        let delay_ms = u64::try_from(not_before.saturating_sub(now))
            .unwrap_or(0)
            .min(MAX_DELAY_MS);
        let outcome = Outcome::Later {
            delay_ms,
            message: "the TaskTracker is shutting down; handed back unrun".into(),
        };
        self.report(outcome_report(job_id, attempt, outcome, now, now), conn);
    }

    /// Starts a due assignment in a free slot, or queues it for the next one.
    fn run_or_queue(&mut self, assignment: pb::Assignment, conn: &mut Option<&mut Conn>) {
        if self.running.len() < self.slots {
            self.start(assignment, conn);
        } else {
            self.waiting.push_back(assignment);
        }
    }

    /// Starts (or queues for a slot) every held job whose instant has come,
    /// in one pass, and gives their ahead slots back in one credit.
    fn release_due_ahead(&mut self, conn: &mut Option<&mut Conn>) {
        let now = self.clock.now_ms();
        // Counted before any of them can begin (and without collecting
        // them: a burst allocating fresh memory costs page faults).
        let due = self.ahead.range(..=(now, u64::MAX)).count();
        let to_start = due.min(self.slots.saturating_sub(self.running.len()));
        self.starting.released(to_start);
        let mut released = 0u32;
        for n in 0..due {
            let Some(run) = self.ahead.pop_first().map(|(_, run)| run) else {
                break;
            };
            released += 1;
            if n < to_start {
                self.go(run, conn, true);
            } else {
                self.due_waiting.push_back(run);
            }
        }
        if released > 0 {
            tracing::debug!(
                released,
                still_held = self.ahead.len(),
                "jobs sent ahead of their time are due"
            );
        }
        self.return_ahead_slots(released, conn);
    }

    /// Keeps a log line in the spool; whether it was kept.
    fn spool_log(&mut self, line: &pb::BizLog) -> bool {
        match self.spool.put_log(line) {
            Ok(kept) => kept,
            Err(e) => {
                tracing::error!("cannot spool a log line of job {}: {e}", line.job_id);
                false
            }
        }
    }

    /// When the stop-working limit runs out, if it is set, runs are going
    /// and no stream is up.
    fn stop_working_at(&self) -> Option<Instant> {
        let limit = self.config.stop_working_after?;
        let since = self.cut_off_since?;
        if self.stopped_working || self.running.is_empty() {
            return None;
        }
        Some(since + limit)
    }

    /// Cut off from every JobTracker for the whole stop-working limit:
    /// cancels the runs going on. Each hands its job back (an outcome of
    /// `Later` with no delay, spooled like any other): by now the
    /// JobTracker has most likely given the run to another TaskTracker,
    /// and if it has not, the job runs again without spending a retry.
    fn stop_working(&mut self) {
        let Some(limit) = self.config.stop_working_after else {
            return;
        };
        if self.cut_off_since.is_none() || self.stopped_working {
            return;
        }
        self.stopped_working = true;
        if self.running.is_empty() {
            return;
        }
        tracing::warn!(
            "no JobTracker reached for {} ms (--stop-working-after): cancelling the {} runs \
             going on; each hands its job back",
            limit.as_millis(),
            self.running.len()
        );
        for (key, token) in &self.running {
            self.stopped_runs.insert(key.clone());
            token.cancel();
        }
        self.recorder.notify();
    }

    /// Cancels every run still going: the shutdown grace is over, or the
    /// TaskTracker stops for good.
    fn cancel_running(&mut self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        if !self.running.is_empty() {
            tracing::info!(
                "cancelling {} runs still going at shutdown",
                self.running.len()
            );
        }
        for token in self.running.values() {
            token.cancel();
        }
    }

    /// Tells the JobTracker that `n` ahead slots are free again.
    fn return_ahead_slots(&self, n: u32, conn: &mut Option<&mut Conn>) {
        if n == 0 {
            return;
        }
        if let Some(conn) = conn {
            let _ = conn.out.send(Outgoing::AheadCredit(n));
        }
    }

    /// Drops every run that has not started, unrun, when the stream it
    /// came on ends: the JobTracker hands the runs of an ended stream out
    /// again, so running them here as well would run them twice. Returns
    /// how many were held ahead of their time (or due and waiting for a
    /// slot) and how many were queued for a slot.
    fn drop_unstarted(&mut self) -> (usize, usize) {
        // Those held ahead but already due and waiting for a slot go too:
        // they have not started either.
        let held = self.ahead.len() + self.due_waiting.len();
        let queued = self.waiting.len();
        self.ahead.clear();
        self.due_waiting.clear();
        self.waiting.clear();
        self.recorder.set_ahead_held(0);
        (held, queued)
    }

    /// The stream ended: drops what it brought and has not started.
    fn on_stream_end(&mut self) {
        let (held, queued) = self.drop_unstarted();
        if held + queued > 0 {
            tracing::info!(
                "dropped {held} jobs sent ahead of their time and {queued} waiting for a slot, \
                 unrun: the stream they came on ended and the JobTracker hands them out again"
            );
        }
    }

    /// Gives the stream up if the JobTracker has been silent for the whole
    /// lease: what it brought and has not started is dropped
    /// unrun (the JobTracker hands it out again once the stream ends, if
    /// it has not already), runs going on finish and report, and the
    /// TaskTracker reconnects. Returns whether it gave the stream up.
    fn check_lease(&mut self, link: &mut Link, backoff: &mut Backoff) -> bool {
        let Some(conn) = as_conn(link) else {
            return false;
        };
        let silent_ms = self.clock.now_ms().saturating_sub(conn.heard_ms);
        // Its end is part of it: the timer that fires at the end finds it
        // lapsed rather than being set again for the same instant.
        if silent_ms < duration_ms(conn.lease) {
            return false;
        }
        // The silence may be the JobTracker's (hung, cut off): the next
        // attempt starts with another one.
        self.resolver.failed(&conn.address);
        let address = conn.address.clone();
        let lease_ms = conn.lease.as_millis();
        let (held, queued) = self.drop_unstarted();
        tracing::warn!(
            "no message from the JobTracker at {address} for {silent_ms} ms, the whole \
             lease of {lease_ms} ms (two heartbeat intervals): dropped {held} jobs sent ahead of \
             their time and {queued} waiting for a slot, unrun, since the JobTracker may have \
             handed them to another TaskTracker; {} running go on and report; reconnecting",
            self.running.len()
        );
        self.recorder.lease_lapsed();
        self.cut_off_since.get_or_insert_with(Instant::now);
        self.recorder.set_connected(false);
        self.recorder.notify();
        // Dropping the stream ends it, so a JobTracker that still counted
        // on this TaskTracker hands its runs out again now.
        *link = Link::Down {
            retry_at: Instant::now() + backoff.next_wait(),
        };
        true
    }

    fn start(&mut self, assignment: pb::Assignment, conn: &mut Option<&mut Conn>) {
        if let Some(run) = self.prepare(assignment, conn) {
            self.go(run, conn, false);
        }
    }

    /// Reads the job, builds its context and spawns its task, which waits
    /// for [`Self::go`]. An assignment that cannot be read is reported as an
    /// error at once and gives `None`.
    fn prepare(
        &mut self,
        assignment: pb::Assignment,
        conn: &mut Option<&mut Conn>,
    ) -> Option<Prepared> {
        let attempt = assignment.attempt;
        let not_before = assignment.not_before_unix_ms;
        let Some(wire_job) = assignment.job else {
            tracing::warn!("the JobTracker sent an assignment without a job; ignoring it");
            return None;
        };
        let job_id = wire_job.job_id.clone();
        let Some(job) = job_from_wire(wire_job) else {
            let now = self.clock.now_ms();
            let outcome = Outcome::Error(
                "the JobTracker sent a job this TaskTracker cannot read (its spec is missing \
                 or invalid); is the JobTracker a newer version?"
                    .into(),
            );
            self.report(outcome_report(job_id, attempt, outcome, now, now), conn);
            return None;
        };
        // A token of its own, not a child of a shared one: a child token
        // takes its parent's lock when made and when dropped, and thousands
        // of runs end at once.
        let cancel = CancellationToken::new();
        let ctx = JobContext {
            job,
            attempt,
            cancel: cancel.clone(),
            log: BizLogger::new(job_id.clone(), attempt, self.events_tx.clone()),
        };
        let runner = self.runner.clone();
        let events = self.events_tx.clone();
        let shutting_down = self.shutting_down.clone();
        let cancel_grace = self.config.cancel_grace;
        let (go, started) = tokio::sync::oneshot::channel::<(i64, bool)>();
        let starting = self.starting.clone();
        let clock = self.clock.clone();
        let run_id = job_id.clone();
        tokio::spawn(async move {
            // Dropped unrun (cancelled, handed back, its stream ended).
            let Ok((started_at, released)) = started.await else {
                return;
            };
            if released {
                starting.begun();
            }
            let mut outcome = execute(runner, ctx, cancel_grace).await;
            if shutting_down.load(Ordering::Relaxed) && !matches!(outcome, Outcome::Success(_)) {
                // Cut short by our own shutdown, not by the job: hand it back
                // instead of spending one of its retries.
                outcome = Outcome::Later {
                    delay_ms: 0,
                    message: format!(
                        "the TaskTracker shut down before the run finished ({outcome})"
                    ),
                };
            }
            let report = outcome_report(run_id, attempt, outcome, started_at, clock.now_ms());
            let _ = events.send(Event::Finished(report));
        });
        Some(Prepared {
            job_id,
            attempt,
            not_before,
            cancel,
            go,
        })
    }

    /// Starts a prepared run in a slot; `released` when it is one of the
    /// runs counted by [`Starting::released`].
    fn go(&mut self, run: Prepared, conn: &mut Option<&mut Conn>, released: bool) {
        let started_at = self.clock.now_ms();
        if run.go.send((started_at, released)).is_err() {
            if released {
                self.starting.begun();
            }
            // Its task is gone (the runtime is shutting down): nothing runs.
            tracing::warn!(job_id = %run.job_id, attempt = run.attempt, "a run's task ended before it started");
            return;
        }
        tracing::debug!(job_id = %run.job_id, attempt = run.attempt, "run started");
        if conn.is_none() {
            // Sent with the spool at the start of the next stream.
            let runs = [pb::RunRef {
                job_id: run.job_id.clone(),
                attempt: run.attempt,
            }];
            if let Err(e) = self.spool.put_started(&runs, started_at) {
                tracing::error!("cannot spool the start of job {}: {e}", run.job_id);
            }
        }
        if let Some(conn) = conn {
            if !self.started.is_empty()
                && (self.started_at != started_at || self.started.len() >= STARTED_BATCH)
            {
                self.send_started(conn);
            }
            self.started_at = started_at;
            if self.started.is_empty() {
                self.started_due = Some(Instant::now() + STARTED_DELAY);
            }
            self.started.push(pb::RunRef {
                job_id: run.job_id.clone(),
                attempt: run.attempt,
            });
        }
        self.running.insert((run.job_id, run.attempt), run.cancel);
    }

    /// Sends the runs started since the last call, as one item: thousands
    /// of runs released at one instant cost one send, not one each.
    fn send_started(&mut self, conn: &mut Conn) {
        self.started_due = None;
        if !self.started.is_empty() {
            let runs = std::mem::take(&mut self.started);
            if let Err(e) = self.spool.put_started(&runs, self.started_at) {
                tracing::error!("cannot spool the start of {} runs: {e}", runs.len());
            }
            let _ = conn.out.send(Outgoing::Started(runs, self.started_at));
        }
    }

    /// Grants credit for free slots and publishes the counters; once per
    /// burst of events.
    fn settle(&mut self, conn: Option<&mut Conn>) {
        let full = self.spool.is_full();
        if full != self.spool_full {
            self.spool_full = full;
            if full {
                tracing::warn!(
                    "the outcome spool is full ({}): taking no new jobs and keeping no more \
                     log lines until it has room",
                    self.spool.full_reason()
                );
            } else {
                tracing::info!("the outcome spool has room again: taking jobs");
            }
        }
        if let Some(conn) = conn {
            if !self.stopping && !full {
                let taken =
                    self.running.len() + self.waiting.len() + self.due_waiting.len() + conn.granted;
                let free = self.slots.saturating_sub(taken);
                if free > 0 {
                    conn.granted += free;
                    let _ = conn.out.send(Outgoing::Credit(free as u32));
                }
            }
        }
        self.recorder.set_busy(self.running.len());
        self.recorder.set_ahead_held(self.ahead.len());
        self.recorder.set_unacked(self.spool.len());
        self.recorder.set_on_disk(self.spool.durable_len());
        self.recorder.notify();
    }
}

/// Turns the outcome of a run cancelled by the stop-working limit into a
/// hand-back, unless the run succeeded anyway.
fn hand_back_stopped(report: &mut pb::OutcomeReport, limit: Option<Duration>) {
    let said = match report.outcome.clone().map(Outcome::try_from) {
        Some(Ok(Outcome::Success(_))) => return,
        Some(Ok(outcome)) => outcome.to_string(),
        _ => "no outcome".to_string(),
    };
    let limit_ms = limit.map(|l| l.as_millis()).unwrap_or(0);
    let outcome = Outcome::Later {
        delay_ms: 0,
        message: clip_message(format!(
            "cancelled: the TaskTracker was cut off from every JobTracker for {limit_ms} ms \
             (--stop-working-after); handed back ({said})"
        )),
    };
    report.outcome = Some(outcome.into());
}

fn as_conn(link: &mut Link) -> Option<&mut Conn> {
    match link {
        Link::Up(conn) => Some(conn),
        _ => None,
    }
}

async fn next_link_event(link: &mut Link) -> LinkEvent {
    match link {
        Link::Down { retry_at } => {
            tokio::time::sleep_until(*retry_at).await;
            LinkEvent::Retry
        }
        Link::Connecting(opening) => LinkEvent::Connected(opening.await),
        Link::Up(conn) => tokio::select! {
            message = conn.inbound.message() => LinkEvent::Message(message),
            _ = conn.heartbeat.tick() => LinkEvent::Heartbeat,
        },
    }
}

fn outcome_report(
    job_id: String,
    attempt: u32,
    outcome: Outcome,
    started_at: i64,
    finished_at: i64,
) -> pb::OutcomeReport {
    let outcome = match outcome {
        Outcome::Success(m) => Outcome::Success(clip_message(m)),
        Outcome::Failed(m) => Outcome::Failed(clip_message(m)),
        Outcome::Later { delay_ms, message } => Outcome::Later {
            delay_ms,
            message: clip_message(message),
        },
        Outcome::Error(m) => Outcome::Error(clip_message(m)),
    };
    pb::OutcomeReport {
        job_id,
        attempt,
        outcome: Some(outcome.into()),
        started_at_unix_ms: started_at,
        finished_at_unix_ms: finished_at,
    }
}

/// Opens a stream to the first JobTracker of the resolver's list that
/// welcomes this TaskTracker, trying each once and telling the resolver
/// which failed and which answered. A refusal ends the search: every
/// JobTracker of a cluster would refuse the same hello.
async fn open_first(
    resolver: Arc<dyn Resolver>,
    clock: Arc<dyn Clock>,
    options: EndpointOptions,
    hello: pb::Hello,
    queued_log_lines: Arc<AtomicUsize>,
    starting: Arc<Starting>,
    welcome_timeout: Duration,
) -> Result<Box<Conn>, ConnectError> {
    let addresses = resolver.addresses();
    if addresses.is_empty() {
        return Err(ConnectError::Retry("no JobTracker address is known".into()));
    }
    let mut failures = Vec::with_capacity(addresses.len());
    for address in addresses {
        let endpoint = match JobTrackerEndpoint::new(&address, &options) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                // Only a resolver that found the address somewhere else than
                // the checked config gets here.
                resolver.failed(&address);
                failures.push(e.to_string());
                continue;
            }
        };
        let opened = open_stream(
            address.clone(),
            clock.as_ref(),
            endpoint,
            hello.clone(),
            queued_log_lines.clone(),
            starting.clone(),
            welcome_timeout,
        )
        .await;
        match opened {
            Ok(conn) => {
                resolver.connected(&address);
                return Ok(conn);
            }
            Err(ConnectError::Retry(why)) => {
                tracing::debug!("cannot reach the JobTracker at {address}: {why}");
                resolver.failed(&address);
                failures.push(format!("{address}: {why}"));
            }
            Err(permanent) => return Err(permanent),
        }
    }
    Err(ConnectError::Retry(failures.join("; ")))
}

/// Opens the stream, says hello and waits for the welcome.
async fn open_stream(
    address: String,
    clock: &dyn Clock,
    endpoint: JobTrackerEndpoint,
    hello: pb::Hello,
    queued_log_lines: Arc<AtomicUsize>,
    starting: Arc<Starting>,
    welcome_timeout: Duration,
) -> Result<Box<Conn>, ConnectError> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| ConnectError::Retry(error_chain(&e)))?;
    let mut client = WorkServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let granted = hello.slots as usize;
    let (out, queue) = mpsc::unbounded_channel();
    let hello = pb::WorkerMessage {
        kind: Some(pb::worker_message::Kind::Hello(hello)),
    };
    let hello_ms = clock.now_ms();
    let opening = async {
        let mut inbound = client
            .work(coalesced(hello, queue, queued_log_lines, starting))
            .await
            .map_err(refusal)?
            .into_inner();
        match inbound.message().await {
            Ok(Some(pb::TrackerMessage {
                kind: Some(TrackerKind::Welcome(welcome)),
            })) => Ok((inbound, welcome)),
            Ok(Some(_)) => Err(ConnectError::Retry(
                "the JobTracker sent something else before its welcome".into(),
            )),
            Ok(None) => Err(ConnectError::Retry(
                "the JobTracker closed the stream before its welcome".into(),
            )),
            Err(status) => Err(refusal(status)),
        }
    };
    let (inbound, welcome) = tokio::time::timeout(welcome_timeout, opening)
        .await
        .map_err(|_| {
            ConnectError::Retry(format!(
                "no welcome within {} ms",
                welcome_timeout.as_millis()
            ))
        })??;
    let period = match welcome.heartbeat_interval_ms {
        0 => DEFAULT_HEARTBEAT,
        ms => Duration::from_millis(ms),
    };
    let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    Ok(Box::new(Conn {
        address,
        out,
        inbound,
        heartbeat,
        granted,
        tracker_id: welcome.tracker_id,
        heard_ms: hello_ms,
        lease: period * LEASE_HEARTBEATS,
    }))
}

/// Sorts a status ending the handshake into retry or give up.
fn refusal(status: tonic::Status) -> ConnectError {
    match status.code() {
        tonic::Code::FailedPrecondition => {
            ConnectError::Permanent(Error::ProtocolMismatch(format!(
                "{} (this TaskTracker speaks protocol version {})",
                status.message(),
                lts_proto::PROTOCOL_VERSION
            )))
        }
        tonic::Code::InvalidArgument => {
            ConnectError::Permanent(Error::Refused(status.message().to_string()))
        }
        code => ConnectError::Retry(format!("{code}: {}", status.message())),
    }
}

/// The error and its sources, since tonic's transport errors say little at
/// the top ("transport error").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
