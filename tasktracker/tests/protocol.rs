//! The TaskTracker against a scripted `WorkService` peer: each test plays
//! the JobTracker's side of the stream by hand, so it can break the stream,
//! withhold acks or refuse the hello exactly when it wants to.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lts_common::resolver::{Resolver, StaticResolver};
use lts_common::{JobSpec, Outcome};
use lts_proto::v1 as pb;
use lts_tasktracker::{
    Clock, DiskSpool, Error, JobContext, JobRunner, ManualClock, OutcomeSpool, SpoolLimits,
    SystemClock, TaskTracker, TaskTrackerConfig, TaskTrackerHandle,
};
use pb::tracker_message::Kind as ToWorker;
use pb::work_service_server::{WorkService, WorkServiceServer};
use pb::worker_message::Kind as FromWorker;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

/// Bound on every wait for the TaskTracker; a failure, never a sleep.
const WAIT: Duration = Duration::from_secs(10);

/// One stream the TaskTracker opened, for the test to drive.
struct Session {
    hello: pb::Hello,
    inbound: Streaming<pb::WorkerMessage>,
    tx: mpsc::UnboundedSender<Result<pb::TrackerMessage, Status>>,
}

impl Session {
    fn send(&self, kind: ToWorker) {
        self.tx
            .send(Ok(pb::TrackerMessage { kind: Some(kind) }))
            .expect("the stream is open");
    }

    fn welcome(&self, heartbeat_interval_ms: u64) {
        self.send(ToWorker::Welcome(pb::Welcome {
            tracker_id: "peer".into(),
            protocol_version: lts_proto::PROTOCOL_VERSION,
            heartbeat_interval_ms,
        }));
    }

    fn assign(&self, jobs: impl IntoIterator<Item = (String, &'static str)>) {
        let assignments = jobs
            .into_iter()
            .map(|(job_id, mode)| assignment(&job_id, mode))
            .collect();
        self.send(ToWorker::Assignments(pb::Assignments { assignments }));
    }

    /// Sends one job ahead of its time, to start at `not_before` (Unix ms).
    fn assign_ahead(&self, job_id: &str, mode: &str, not_before: i64) {
        let mut ahead = assignment(job_id, mode);
        ahead.not_before_unix_ms = not_before;
        self.send(ToWorker::Assignments(pb::Assignments {
            assignments: vec![ahead],
        }));
    }

    fn ack(&self, runs: &[(&str, u32)]) {
        let runs = runs
            .iter()
            .map(|(job_id, attempt)| pb::RunRef {
                job_id: job_id.to_string(),
                attempt: *attempt,
            })
            .collect();
        self.send(ToWorker::OutcomeAcks(pb::OutcomeAcks { runs }));
    }

    /// Breaks the stream the way a failing JobTracker would.
    fn break_stream(self) {
        let _ = self.tx.send(Err(Status::unavailable("peer going away")));
    }

    async fn next(&mut self) -> FromWorker {
        let message = tokio::time::timeout(WAIT, self.inbound.message())
            .await
            .expect("a message from the TaskTracker in time")
            .expect("no stream error")
            .expect("the stream is open");
        message.kind.expect("a message kind")
    }

    /// Reads, adding up what comes, until `done` says enough came.
    async fn read_until(&mut self, done: impl Fn(&Received) -> bool) -> Received {
        let mut got = Received::default();
        while !done(&got) {
            got.add(self.next().await);
        }
        got
    }

    /// Reads until `n` outcome reports arrived; also returns how many
    /// messages carried them and the credit granted meanwhile.
    async fn outcomes(&mut self, n: usize) -> Received {
        self.read_until(|got| got.reports.len() >= n).await
    }

    /// Reads until the ahead slots given back add up to `n`; also returns
    /// the slot credit and the runs started meanwhile.
    async fn ahead_credit(&mut self, n: u32) -> Received {
        let got = self.read_until(|got| got.ahead_credits >= n).await;
        assert_eq!(got.ahead_credits, n, "{got:?}");
        got
    }

    /// Reads until `n` runs were told started; also returns what else came
    /// meanwhile.
    async fn started(&mut self, n: usize) -> Received {
        self.read_until(|got| got.started >= n).await
    }

    /// Reads until the credit granted adds up to `n`.
    async fn credit(&mut self, n: u32) {
        let mut credits = 0;
        while credits < n {
            if let FromWorker::Credit(c) = self.next().await {
                credits += c.credits;
            }
        }
        assert_eq!(credits, n);
    }
}

#[derive(Default, Debug)]
struct Received {
    reports: Vec<pb::OutcomeReport>,
    outcome_messages: usize,
    credits: u32,
    ahead_credits: u32,
    started: usize,
    logs: Vec<String>,
}

impl Received {
    /// Adds one message from the TaskTracker to what was received.
    fn add(&mut self, message: FromWorker) {
        match message {
            FromWorker::Outcomes(o) => {
                self.outcome_messages += 1;
                self.reports.extend(o.reports);
            }
            FromWorker::Credit(c) => {
                self.credits += c.credits;
                self.ahead_credits += c.ahead_credits;
            }
            FromWorker::Started(s) => self.started += s.runs.len(),
            FromWorker::BizLogs(l) => self.logs.extend(l.lines.into_iter().map(|l| l.message)),
            FromWorker::Heartbeat(_) => {}
            FromWorker::Hello(_) => panic!("a second hello on one stream"),
        }
    }
}

fn outcome(report: &pb::OutcomeReport) -> Outcome {
    Outcome::try_from(report.outcome.clone().expect("an outcome")).expect("a valid outcome")
}

/// Sends `job_id` ahead of `not_before` and waits until the TaskTracker
/// holds it.
async fn hold_one_ahead(h: &Harness, s: &Session, job_id: &str, not_before: i64) {
    s.assign_ahead(job_id, "noop", not_before);
    tokio::time::timeout(WAIT, h.handle.wait_for(|s| s.ahead_held == 1))
        .await
        .unwrap();
}

fn assignment(job_id: &str, mode: &str) -> pb::Assignment {
    let mut spec = JobSpec::new(format!("task-{job_id}"), "workers");
    spec.params.insert("mode".into(), mode.into());
    pb::Assignment {
        job: Some(pb::Job {
            job_id: job_id.into(),
            spec: Some(spec.into()),
            attempt: 1,
            ..Default::default()
        }),
        attempt: 1,
        not_before_unix_ms: 0,
    }
}

/// The JobTracker's side: hands every new stream to the test, or refuses
/// the hello with a status when told to.
#[derive(Clone)]
struct Peer {
    sessions: mpsc::UnboundedSender<Session>,
    refuse_with: Arc<Mutex<Option<Status>>>,
    streams_opened: Arc<Mutex<u32>>,
}

#[async_trait]
impl WorkService for Peer {
    type WorkStream = UnboundedReceiverStream<Result<pb::TrackerMessage, Status>>;

    async fn work(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        *self.streams_opened.lock().unwrap() += 1;
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::WorkerMessage {
                kind: Some(FromWorker::Hello(hello)),
            }) => hello,
            other => return Err(Status::invalid_argument(format!("not a hello: {other:?}"))),
        };
        if let Some(status) = self.refuse_with.lock().unwrap().clone() {
            return Err(status);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.sessions.send(Session { hello, inbound, tx });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

/// A scripted JobTracker on a port of its own.
struct ScriptedTracker {
    /// `host:port`, as a TaskTracker is told it.
    address: String,
    sessions: mpsc::UnboundedReceiver<Session>,
    peer: Peer,
    server: tokio::task::JoinHandle<()>,
}

impl ScriptedTracker {
    async fn start(refuse_with: Option<Status>) -> ScriptedTracker {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (sessions_tx, sessions) = mpsc::unbounded_channel();
        let peer = Peer {
            sessions: sessions_tx,
            refuse_with: Arc::new(Mutex::new(refuse_with)),
            streams_opened: Arc::default(),
        };
        let service = WorkServiceServer::new(peer.clone());
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        ScriptedTracker {
            address,
            sessions,
            peer,
            server,
        }
    }

    async fn session(&mut self) -> Session {
        tokio::time::timeout(WAIT, self.sessions.recv())
            .await
            .expect("the TaskTracker connects in time")
            .expect("the peer is running")
    }

    fn streams_opened(&self) -> u32 {
        *self.peer.streams_opened.lock().unwrap()
    }
}

impl Drop for ScriptedTracker {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A config for node group `workers` that reconnects quickly.
fn quick_config(jobtrackers: &[&str]) -> TaskTrackerConfig {
    let mut config = TaskTrackerConfig::new(jobtrackers[0], "workers");
    config.jobtrackers = jobtrackers.iter().map(|a| a.to_string()).collect();
    config.reconnect_backoff_min = Duration::from_millis(20);
    config.reconnect_backoff_max = Duration::from_millis(100);
    config.flush_timeout = Duration::from_millis(300);
    config
}

/// A TaskTracker running in a task of its own, until told to stop.
struct RunningTaskTracker {
    handle: TaskTrackerHandle,
    stop: oneshot::Sender<()>,
    tracker: tokio::task::JoinHandle<Result<(), Error>>,
}

impl RunningTaskTracker {
    /// Runs a TaskTracker with `config`, finding JobTrackers through
    /// `resolver` when one is given.
    fn start(
        config: TaskTrackerConfig,
        resolver: Option<Arc<dyn Resolver>>,
        runner: Arc<dyn JobRunner>,
    ) -> RunningTaskTracker {
        Self::start_on(config, resolver, None, runner)
    }

    /// [`RunningTaskTracker::start`] keeping outcomes in `spool`.
    fn start_with_spool(
        config: TaskTrackerConfig,
        runner: Arc<dyn JobRunner>,
        spool: Box<dyn OutcomeSpool>,
    ) -> RunningTaskTracker {
        let tracker = TaskTracker::new(config, runner).unwrap().with_spool(spool);
        let handle = tracker.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let tracker = tokio::spawn(tracker.run(async move {
            let _ = stopped.await;
        }));
        RunningTaskTracker {
            handle,
            stop,
            tracker,
        }
    }

    /// [`RunningTaskTracker::start`] on `clock` when one is given.
    fn start_on(
        config: TaskTrackerConfig,
        resolver: Option<Arc<dyn Resolver>>,
        clock: Option<Arc<ManualClock>>,
        runner: Arc<dyn JobRunner>,
    ) -> RunningTaskTracker {
        let mut tracker = TaskTracker::new(config, runner).unwrap();
        if let Some(resolver) = resolver {
            tracker = tracker.with_resolver(resolver);
        }
        if let Some(clock) = clock {
            tracker = tracker.with_clock(clock);
        }
        let handle = tracker.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let tracker = tokio::spawn(tracker.run(async move {
            let _ = stopped.await;
        }));
        RunningTaskTracker {
            handle,
            stop,
            tracker,
        }
    }

    async fn finish(self) -> Result<(), Error> {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.tracker)
            .await
            .expect("the TaskTracker stops in time")
            .expect("the TaskTracker does not panic")
    }
}

/// What each test runs against.
struct Harness {
    peer: ScriptedTracker,
    handle: TaskTrackerHandle,
    stop: Option<oneshot::Sender<()>>,
    tracker: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Harness {
    async fn start(slots: u32, runner: Arc<dyn JobRunner>) -> Harness {
        Self::start_with(slots, runner, |_| {}).await
    }

    async fn start_refusing(slots: u32, runner: Arc<dyn JobRunner>, status: Status) -> Harness {
        Self::start_inner(slots, runner, |_| {}, Some(status), None).await
    }

    async fn start_with(
        slots: u32,
        runner: Arc<dyn JobRunner>,
        tune: impl FnOnce(&mut TaskTrackerConfig),
    ) -> Harness {
        Self::start_inner(slots, runner, tune, None, None).await
    }

    /// A TaskTracker whose time is `clock`: jobs held ahead start when the
    /// test moves it to their instant.
    async fn start_on_clock(
        slots: u32,
        runner: Arc<dyn JobRunner>,
        clock: Arc<ManualClock>,
        tune: impl FnOnce(&mut TaskTrackerConfig),
    ) -> Harness {
        Self::start_inner(slots, runner, tune, None, Some(clock)).await
    }

    async fn start_inner(
        slots: u32,
        runner: Arc<dyn JobRunner>,
        tune: impl FnOnce(&mut TaskTrackerConfig),
        refuse_with: Option<Status>,
        clock: Option<Arc<ManualClock>>,
    ) -> Harness {
        let peer = ScriptedTracker::start(refuse_with).await;
        let mut config = quick_config(&[&peer.address]);
        config.slots = slots;
        tune(&mut config);
        let running = RunningTaskTracker::start_on(config, None, clock, runner);
        Harness {
            peer,
            handle: running.handle,
            stop: Some(running.stop),
            tracker: running.tracker,
        }
    }

    async fn session(&mut self) -> Session {
        self.peer.session().await
    }

    async fn finish(mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, self.tracker)
            .await
            .expect("the TaskTracker stops in time")
            .expect("the TaskTracker does not panic")
    }
}

/// Behaves by the job's `mode` param and records when each run began.
struct Scripted {
    gate: Arc<Semaphore>,
    runs: Mutex<Vec<(String, i64)>>,
    clock: Arc<dyn Clock>,
}

impl Scripted {
    fn new() -> (Arc<Self>, Arc<Semaphore>) {
        Self::on_clock(Arc::new(SystemClock))
    }

    /// A runner that reads the time when a run begins from `clock`.
    fn on_clock(clock: Arc<dyn Clock>) -> (Arc<Self>, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        let runner = Scripted {
            gate: gate.clone(),
            runs: Mutex::default(),
            clock,
        };
        (Arc::new(runner), gate)
    }

    /// The jobs run so far, in the order they began.
    fn ran(&self) -> Vec<String> {
        let runs = self.runs.lock().unwrap();
        runs.iter().map(|(job_id, _)| job_id.clone()).collect()
    }

    /// When the runner began `job_id` (Unix ms), if it did.
    fn began_at(&self, job_id: &str) -> Option<i64> {
        let runs = self.runs.lock().unwrap();
        runs.iter().find(|(id, _)| id == job_id).map(|(_, at)| *at)
    }
}

#[async_trait]
impl JobRunner for Scripted {
    async fn run(&self, ctx: JobContext) -> Outcome {
        self.runs
            .lock()
            .unwrap()
            .push((ctx.job.job_id.clone(), self.clock.now_ms()));
        match ctx.job.spec.params.get("mode").map(String::as_str) {
            Some("gate") => {
                self.gate.acquire().await.expect("gate open").forget();
                Outcome::Success("gate passed".into())
            }
            Some("gate-or-cancel") => {
                tokio::select! {
                    // A cancel that came first wins, whatever the gate does.
                    biased;
                    _ = ctx.cancel.cancelled() => Outcome::Error("stopped on cancel".into()),
                    permit = self.gate.acquire() => {
                        permit.expect("gate open").forget();
                        Outcome::Success("gate passed".into())
                    }
                }
            }
            Some("until-cancelled") => {
                ctx.cancel.cancelled().await;
                Outcome::Error("stopped on cancel".into())
            }
            Some("log") => {
                ctx.log.info("first line");
                ctx.log.warn("second line");
                Outcome::Success(String::new())
            }
            Some("gate-then-log") => {
                self.gate.acquire().await.expect("gate open").forget();
                ctx.log.info("past the gate");
                Outcome::Success(String::new())
            }
            Some("log-then-gate") => {
                ctx.log.info("waiting for the gate");
                self.gate.acquire().await.expect("gate open").forget();
                Outcome::Success(String::new())
            }
            Some("panic") => panic!("scripted panic"),
            _ => Outcome::Success(String::new()),
        }
    }
}

fn ids(prefix: &str, n: usize, mode: &'static str) -> Vec<(String, &'static str)> {
    (0..n).map(|i| (format!("{prefix}{i}"), mode)).collect()
}

#[tokio::test]
async fn hello_runs_and_a_burst_of_outcomes_is_coalesced() {
    let (runner, _gate) = Scripted::new();
    let mut h = Harness::start(1000, runner).await;
    let mut s = h.session().await;
    assert_eq!(s.hello.slots, 1000);
    assert_eq!(s.hello.node_group, "workers");
    assert_eq!(s.hello.protocol_version, lts_proto::PROTOCOL_VERSION);
    s.welcome(10_000);
    s.assign(ids("j", 1000, "noop"));
    let got = s.outcomes(1000).await;
    assert!(got
        .reports
        .iter()
        .all(|r| outcome(r) == Outcome::Success(String::new())));
    // One message each would be 1000; a burst must leave in a handful.
    assert!(
        got.outcome_messages <= 20,
        "{} messages",
        got.outcome_messages
    );
    let mut credits = got.credits;
    while credits < 1000 {
        if let FromWorker::Credit(c) = s.next().await {
            credits += c.credits;
        }
    }
    assert_eq!(credits, 1000, "every freed slot is granted once");
    let stats = h.handle.wait_for(|s| s.succeeded == 1000).await;
    assert_eq!(stats.busy, 0);
    s.ack(
        &got.reports
            .iter()
            .map(|r| (r.job_id.as_str(), r.attempt))
            .collect::<Vec<_>>(),
    );
    tokio::time::timeout(WAIT, h.handle.wait_for(|s| s.unacked == 0))
        .await
        .unwrap();
    h.finish().await.unwrap();
}

#[tokio::test]
async fn a_start_is_told_before_the_outcome_and_the_log_lines_of_its_run() {
    let (runner, gate) = Scripted::new();
    let mut h = Harness::start(4, runner).await;
    let mut s = h.session().await;
    s.welcome(10_000);
    // "talker" logs a line, then waits for the gate; "quiet", sent once
    // the talker's line is in, ends at once, so its start may ride with
    // its outcome.
    s.assign(vec![("talker".to_string(), "log-then-gate")]);
    // What reached the JobTracker, in order: (kind, job id).
    let mut seen: Vec<(&str, String)> = Vec::new();
    let record = |message: FromWorker, seen: &mut Vec<(&str, String)>| match message {
        FromWorker::Started(started) => {
            assert!(
                started.at_unix_ms > 0,
                "a start carries the TaskTracker's clock"
            );
            seen.extend(started.runs.into_iter().map(|r| ("started", r.job_id)));
        }
        FromWorker::BizLogs(l) => seen.extend(l.lines.into_iter().map(|l| ("log", l.job_id))),
        FromWorker::Outcomes(o) => {
            seen.extend(o.reports.into_iter().map(|r| ("outcome", r.job_id)))
        }
        _ => {}
    };
    let has = |seen: &[(&str, String)], kind: &str, job: &str| {
        seen.iter().position(|(k, j)| *k == kind && j == job)
    };
    // The talker's line leaves while it runs, and its start before it.
    while has(&seen, "log", "talker").is_none() {
        let message = s.next().await;
        record(message, &mut seen);
    }
    let talker_started = has(&seen, "started", "talker");
    assert!(
        talker_started.is_some_and(|i| Some(i) < has(&seen, "log", "talker")),
        "{seen:?}"
    );
    s.assign(vec![("quiet".to_string(), "noop")]);
    gate.add_permits(1);
    while has(&seen, "outcome", "talker").is_none() || has(&seen, "outcome", "quiet").is_none() {
        let message = s.next().await;
        record(message, &mut seen);
    }
    for job in ["quiet", "talker"] {
        assert!(
            has(&seen, "started", job) < has(&seen, "outcome", job),
            "{job}: {seen:?}"
        );
        let starts = seen.iter().filter(|(k, j)| *k == "started" && j == job);
        assert_eq!(starts.count(), 1, "{job} is told started once: {seen:?}");
    }
    h.finish().await.unwrap();
}

#[tokio::test]
async fn unacked_outcomes_are_resent_after_a_reconnect() {
    let (runner, _gate) = Scripted::new();
    let mut h = Harness::start(2, runner).await;
    let mut s = h.session().await;
    s.welcome(10_000);
    s.assign(vec![("a".to_string(), "noop"), ("b".to_string(), "noop")]);
    let got = s.outcomes(2).await;
    assert_eq!(got.reports.len(), 2);
    s.ack(&[("a", 1)]);
    tokio::time::timeout(WAIT, h.handle.wait_for(|s| s.unacked == 1))
        .await
        .unwrap();
    s.break_stream();

    let mut s = h.session().await;
    assert_eq!(s.hello.slots, 2);
    s.welcome(10_000);
    let resent = s.outcomes(1).await;
    assert_eq!(resent.reports.len(), 1);
    assert_eq!(resent.reports[0].job_id, "b");
    s.ack(&[("b", 1)]);
    let stats = tokio::time::timeout(WAIT, h.handle.wait_for(|s| s.unacked == 0))
        .await
        .unwrap();
    assert_eq!(stats.connections, 2);
    h.finish().await.unwrap();
}

#[tokio::test]
async fn running_jobs_survive_a_reconnect_and_busy_slots_are_not_offered() {
    let (runner, gate) = Scripted::new();
    let mut h = Harness::start(2, runner).await;
    let mut s = h.session().await;
    s.welcome(10_000);
    s.assign(vec![("long".to_string(), "gate")]);
    match s.next().await {
        FromWorker::Started(started) => assert_eq!(started.runs[0].job_id, "long"),
        other => panic!("expected started, got {other:?}"),
    }
    s.break_stream();

    let mut s = h.session().await;
    assert_eq!(s.hello.slots, 1, "one of two slots is still busy");
    s.welcome(10_000);
    tokio::time::timeout(
        WAIT,
        h.handle.wait_for(|s| s.connected && s.connections == 2),
    )
    .await
    .unwrap();
    gate.add_permits(1);
    let got = s.outcomes(1).await;
    assert_eq!(got.reports[0].job_id, "long");
    assert_eq!(
        outcome(&got.reports[0]),
        Outcome::Success("gate passed".into())
    );
    // Slots: 2, hello offered 1, the run ended: one more slot to grant.
    assert!(got.credits <= 1, "{got:?}");
    if got.credits == 0 {
        s.credit(1).await;
    }
    h.finish().await.unwrap();
}

#[tokio::test]
async fn a_protocol_version_mismatch_is_permanent() {
    let (runner, _gate) = Scripted::new();
    let h = Harness::start_refusing(
        1,
        runner,
        Status::failed_precondition(
            "protocol version mismatch: the TaskTracker speaks version 1, this JobTracker speaks version 2",
        ),
    )
    .await;
    let result = tokio::time::timeout(WAIT, h.tracker)
        .await
        .expect("run returns without retrying")
        .unwrap();
    match result {
        Err(Error::ProtocolMismatch(message)) => {
            assert!(message.contains("version 1"), "{message}");
            assert!(message.contains("version 2"), "{message}");
        }
        other => panic!("expected a protocol mismatch, got {other:?}"),
    }
    assert_eq!(h.peer.streams_opened(), 1, "no retry loop");
}

#[tokio::test]
async fn a_refused_hello_on_the_stream_is_permanent_too() {
    let (runner, _gate) = Scripted::new();
    let mut h = Harness::start(1, runner).await;
    let s = h.session().await;
    s.tx.send(Err(Status::invalid_argument(
        "hello.node_group: is not served here",
    )))
    .unwrap();
    let result = tokio::time::timeout(WAIT, h.tracker)
        .await
        .unwrap()
        .unwrap();
    match result {
        Err(e @ Error::Refused(_)) => {
            assert!(e.to_string().contains("is not served here"), "{e}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn cancel_run_fires_the_token_and_logs_and_panics_are_reported() {
    let (runner, _gate) = Scripted::new();
    let mut h = Harness::start(3, runner).await;
    let mut s = h.session().await;
    s.welcome(10_000);
    s.assign(vec![
        ("c".to_string(), "until-cancelled"),
        ("l".to_string(), "log"),
        ("p".to_string(), "panic"),
    ]);
    let first = s.outcomes(2).await;
    s.send(ToWorker::Cancel(pb::CancelRun {
        job_id: "c".into(),
        attempt: 1,
        reason: "cancelled by a test".into(),
    }));
    let last = s.outcomes(1).await;
    let mut by_id: Vec<_> = first
        .reports
        .iter()
        .chain(&last.reports)
        .map(|r| (r.job_id.as_str(), outcome(r)))
        .collect();
    by_id.sort_by_key(|(id, _)| *id);
    assert_eq!(
        by_id,
        vec![
            ("c", Outcome::Error("stopped on cancel".into())),
            ("l", Outcome::Success(String::new())),
            (
                "p",
                Outcome::Error("runner panicked: scripted panic".into())
            ),
        ]
    );
    assert_eq!(first.logs, vec!["first line", "second line"]);
    h.finish().await.unwrap();
}

#[tokio::test]
async fn heartbeats_follow_the_welcome_interval() {
    // The TaskTracker's clock stands still, so its lease (two intervals of
    // silence from this peer, which sends nothing) never runs out here:
    // the test watches the heartbeats alone.
    let (clock, runner, _gate) = frozen_clock();
    let mut h = Harness::start_on_clock(1, runner, clock, |_| {}).await;
    let mut s = h.session().await;
    let period = Duration::from_millis(20);
    let welcomed = tokio::time::Instant::now();
    s.welcome(period.as_millis() as u64);
    tokio::time::timeout(WAIT, h.handle.wait_for(|s| s.connected))
        .await
        .unwrap();
    // From here the runtime's time moves only when every task waits for a
    // timer, so the heartbeats set the pace (the next other timer is
    // seconds away), whatever the load of the machine.
    tokio::time::pause();
    let paused = tokio::time::Instant::now();
    for k in 1..=10 {
        loop {
            if let FromWorker::Heartbeat(hb) = s.next().await {
                assert!(hb.at_unix_ms > 0);
                break;
            }
        }
        // Never early: the k-th comes k periods after the welcome at the
        // soonest.
        let since_welcome = welcomed.elapsed();
        assert!(
            since_welcome >= period * k,
            "heartbeat {k} came {since_welcome:?} after a welcome asking for one each {period:?}"
        );
        // And at the welcome's pace, not at the default of seconds: each
        // wait is one period, and a delivery can slip by another at most.
        let since_pause = paused.elapsed();
        assert!(
            since_pause <= period * 2 * k,
            "heartbeat {k} came {since_pause:?} after the pause; asked for one each {period:?}"
        );
    }
    tokio::time::resume();
    h.finish().await.unwrap();
}

#[tokio::test]
async fn shutdown_waits_then_cancels_hands_back_and_flushes() {
    let (runner, _gate) = Scripted::new();
    let mut h = Harness::start_with(4, runner, |c| {
        c.shutdown_grace = Duration::from_millis(200);
    })
    .await;
    let mut s = h.session().await;
    s.welcome(10_000);
    s.assign(vec![("slow".to_string(), "until-cancelled")]);
    assert!(matches!(s.next().await, FromWorker::Started(_)));
    let _ = h.stop.take().unwrap().send(());
    // After the 200 ms grace the run is cancelled and handed back.
    let got = s.outcomes(1).await;
    assert_eq!(got.reports[0].job_id, "slow");
    match outcome(&got.reports[0]) {
        Outcome::Later {
            delay_ms: 0,
            message,
        } => {
            assert!(message.contains("shut down"), "{message}")
        }
        other => panic!("expected the run handed back, got {other:?}"),
    }
    assert_eq!(got.credits, 0, "no credit while shutting down");
    s.assign(vec![("late".to_string(), "noop")]);
    let late = s.outcomes(1).await;
    assert_eq!(late.reports[0].job_id, "late");
    assert!(matches!(outcome(&late.reports[0]), Outcome::Later { .. }));
    assert_eq!(late.started, 0, "a job handed back never starts");
    s.ack(&[("slow", 1), ("late", 1)]);
    let result = tokio::time::timeout(WAIT, h.tracker)
        .await
        .unwrap()
        .unwrap();
    result.unwrap();
    // The TaskTracker ended its half of the stream, so it ends here.
    tokio::time::timeout(WAIT, async {
        while let Ok(Some(_)) = s.inbound.message().await {}
    })
    .await
    .expect("the stream ends");
}

/// A manual clock at a fixed, realistic Unix time, and a runner reading it.
fn frozen_clock() -> (Arc<ManualClock>, Arc<Scripted>, Arc<Semaphore>) {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let (runner, gate) = Scripted::on_clock(clock.clone());
    (clock, runner, gate)
}

#[tokio::test]
async fn a_job_sent_ahead_starts_at_its_instant_and_takes_no_slot() {
    let (clock, runner, gate) = frozen_clock();
    let mut h =
        Harness::start_on_clock(2, runner.clone(), clock.clone(), |c| c.ahead_slots = 8).await;
    let mut s = h.session().await;
    assert_eq!(s.hello.slots, 2);
    assert_eq!(s.hello.ahead_slots, 8);
    s.welcome(10_000);
    let not_before = clock.now_ms() + 300;
    s.assign_ahead("ahead", "noop", not_before);
    // Both slots are still the JobTracker's to fill while the job is held.
    s.assign(ids("g", 2, "gate"));
    let before = s.started(2).await;
    let stats = tokio::time::timeout(WAIT, h.handle.wait_for(|s| s.busy == 2))
        .await
        .unwrap();
    assert_eq!(
        stats.ahead_held, 1,
        "both due jobs run alongside the held one"
    );
    assert_eq!(runner.ran(), vec!["g0", "g1"], "held until its instant");

    clock.set(not_before);
    let after = s.ahead_credit(1).await;
    assert_eq!(after.started, 0, "no slot is free for the held job");
    for got in [&before, &after] {
        assert_eq!(
            got.credits, 0,
            "the held job took no slot, so no slot was granted back: {got:?}"
        );
        assert!(got.reports.is_empty(), "{got:?}");
    }
    // Due now, but both slots are busy: it waits for one.
    let stats = tokio::time::timeout(WAIT, h.handle.wait_for(|s| s.ahead_held == 0))
        .await
        .unwrap();
    assert_eq!(stats.busy, 2);
    assert_eq!(runner.ran(), vec!["g0", "g1"]);

    gate.add_permits(2);
    let done = s.outcomes(3).await;
    let ahead = done
        .reports
        .iter()
        .find(|r| r.job_id == "ahead")
        .expect("the held job ran once a slot was free");
    assert_eq!(outcome(ahead), Outcome::Success(String::new()));
    assert_eq!(ahead.started_at_unix_ms, not_before, "{ahead:?}");
    assert_eq!(runner.began_at("ahead"), Some(not_before));
    h.finish().await.unwrap();
}

#[tokio::test]
async fn a_burst_due_at_one_instant_all_begin_then_every_outcome_is_reported_once() {
    let (clock, runner, _gate) = frozen_clock();
    let mut h =
        Harness::start_on_clock(500, runner.clone(), clock.clone(), |c| c.ahead_slots = 500).await;
    let mut s = h.session().await;
    s.welcome(10_000);
    let not_before = clock.now_ms() + 300;
    let assignments = (0..500)
        .map(|i| {
            let mut a = assignment(&format!("b{i}"), "noop");
            a.not_before_unix_ms = not_before;
            a
        })
        .collect();
    s.send(ToWorker::Assignments(pb::Assignments { assignments }));
    tokio::time::timeout(WAIT, h.handle.wait_for(|s| s.ahead_held == 500))
        .await
        .unwrap();
    assert!(runner.ran().is_empty(), "none runs before the instant");

    clock.set(not_before);
    let got = s.outcomes(500).await;
    let mut reported: Vec<_> = got.reports.iter().map(|r| r.job_id.clone()).collect();
    reported.sort();
    reported.dedup();
    assert_eq!(reported.len(), 500, "each run reported once: {got:?}");
    assert_eq!(got.started, 500, "every start is told to the JobTracker");
    let began: Vec<i64> = (0..500)
        .map(|i| runner.began_at(&format!("b{i}")).expect("every run began"))
        .collect();
    assert!(began.iter().all(|&at| at == not_before), "{began:?}");
    assert!(got
        .reports
        .iter()
        .all(|r| r.started_at_unix_ms == not_before));
    let ahead = s.ahead_credit(500 - got.ahead_credits).await;
    assert_eq!(got.ahead_credits + ahead.ahead_credits, 500);
    h.finish().await.unwrap();
}

#[tokio::test]
async fn a_job_sent_ahead_whose_instant_has_passed_runs_at_once() {
    let (clock, runner, _gate) = frozen_clock();
    let mut h = Harness::start_on_clock(1, runner.clone(), clock.clone(), |_| {}).await;
    let mut s = h.session().await;
    s.welcome(10_000);
    // The clock never moves in this test: only an instant already passed
    // lets the job run.
    s.assign_ahead("late", "noop", clock.now_ms() - 1_000);
    let mut got = s.outcomes(1).await;
    assert_eq!(got.reports[0].job_id, "late");
    assert_eq!(outcome(&got.reports[0]), Outcome::Success(String::new()));
    if got.ahead_credits == 0 {
        got = s.ahead_credit(1).await;
    }
    assert_eq!(got.ahead_credits, 1, "its ahead slot is given back");
    assert_eq!(runner.ran(), vec!["late"]);
    h.finish().await.unwrap();
}

#[tokio::test]
async fn cancelling_a_job_held_ahead_reports_it_and_it_never_runs() {
    let (clock, runner, _gate) = frozen_clock();
    let mut h = Harness::start_on_clock(1, runner.clone(), clock.clone(), |_| {}).await;
    let mut s = h.session().await;
    s.welcome(10_000);
    let not_before = clock.now_ms() + 300;
    hold_one_ahead(&h, &s, "held", not_before).await;
    s.send(ToWorker::Cancel(pb::CancelRun {
        job_id: "held".into(),
        attempt: 1,
        reason: "cancelled by a test".into(),
    }));
    let mut got = s.outcomes(1).await;
    assert_eq!(got.reports[0].job_id, "held");
    assert_eq!(
        outcome(&got.reports[0]),
        Outcome::Error("cancelled by the JobTracker before it started: cancelled by a test".into())
    );
    assert_eq!(got.started, 0);
    if got.ahead_credits == 0 {
        got = s.ahead_credit(1).await;
    }
    assert_eq!(got.ahead_credits, 1, "its ahead slot is given back");
    assert_eq!(h.handle.stats().ahead_held, 0);

    // Jobs held ahead start in the order of their instants: once a job due
    // after the cancelled one has run, the cancelled one would have run too.
    hold_one_ahead(&h, &s, "after", not_before + 50).await;
    clock.set(not_before + 50);
    let got = s.outcomes(1).await;
    assert_eq!(got.reports[0].job_id, "after");
    assert_eq!(runner.ran(), vec!["after"], "the cancelled job never ran");
    h.finish().await.unwrap();
}

#[tokio::test]
async fn jobs_held_ahead_are_dropped_unrun_when_the_stream_breaks() {
    let (clock, runner, _gate) = frozen_clock();
    let mut h =
        Harness::start_on_clock(2, runner.clone(), clock.clone(), |c| c.ahead_slots = 16).await;
    let s = h.session().await;
    s.welcome(10_000);
    let not_before = clock.now_ms() + 300;
    hold_one_ahead(&h, &s, "held", not_before).await;
    s.break_stream();

    let mut s = h.session().await;
    assert_eq!(s.hello.ahead_slots, 16, "every ahead slot is offered again");
    assert_eq!(s.hello.slots, 2);
    s.welcome(10_000);
    let stats = tokio::time::timeout(
        WAIT,
        h.handle.wait_for(|s| s.connected && s.connections == 2),
    )
    .await
    .unwrap();
    assert_eq!(stats.ahead_held, 0);
    // The JobTracker hands the dropped job out again; a job due after it,
    // sent on the new stream, marks that its instant has passed.
    hold_one_ahead(&h, &s, "after", not_before + 100).await;
    clock.set(not_before + 100);
    let got = s.outcomes(1).await;
    assert_eq!(got.reports[0].job_id, "after");
    assert_eq!(runner.ran(), vec!["after"], "the dropped job never ran");
    assert_eq!(h.handle.stats().succeeded, 1);
    h.finish().await.unwrap();
}

#[tokio::test]
async fn a_job_sent_ahead_that_is_due_but_waits_for_a_slot_is_dropped_when_the_stream_breaks() {
    let (clock, runner, gate) = frozen_clock();
    let mut h =
        Harness::start_on_clock(1, runner.clone(), clock.clone(), |c| c.ahead_slots = 4).await;
    let mut s = h.session().await;
    s.welcome(10_000);
    // The one slot is busy until the gate opens.
    s.assign(ids("g", 1, "gate"));
    let not_before = clock.now_ms() + 100;
    hold_one_ahead(&h, &s, "due", not_before).await;
    // Its instant passes; with no free slot it waits.
    clock.set(not_before);
    s.ahead_credit(1).await;
    assert_eq!(runner.ran(), vec!["g0"]);
    s.break_stream();

    let mut s = h.session().await;
    s.welcome(10_000);
    gate.add_permits(1);
    // The gated run ends and its outcome is resent on the new stream; a job
    // due now, sent after, runs in the freed slot; the dropped one never.
    s.assign(ids("n", 1, "noop"));
    let got = s.outcomes(2).await;
    let mut done: Vec<&str> = got.reports.iter().map(|r| r.job_id.as_str()).collect();
    done.sort_unstable();
    assert_eq!(done, ["g0", "n0"]);
    assert_eq!(runner.ran(), vec!["g0", "n0"], "the dropped job never ran");
    h.finish().await.unwrap();
}

#[tokio::test]
async fn shutdown_hands_back_jobs_held_ahead_with_the_time_left_to_their_instant() {
    let (clock, runner, _gate) = frozen_clock();
    let mut h = Harness::start_on_clock(1, runner.clone(), clock.clone(), |_| {}).await;
    let mut s = h.session().await;
    s.welcome(10_000);
    let not_before = clock.now_ms() + 60_000;
    hold_one_ahead(&h, &s, "held", not_before).await;
    let _ = h.stop.take().unwrap().send(());
    let got = s.outcomes(1).await;
    assert_eq!(got.reports[0].job_id, "held");
    match outcome(&got.reports[0]) {
        Outcome::Later { delay_ms, message } => {
            assert!(message.contains("shutting down"), "{message}");
            // Not run early elsewhere: it is due again at its own instant.
            assert_eq!(delay_ms, 60_000);
            assert_eq!(got.reports[0].finished_at_unix_ms, clock.now_ms());
        }
        other => panic!("expected the job handed back, got {other:?}"),
    }
    assert_eq!(got.ahead_credits, 0, "no ahead slot offered while stopping");
    s.ack(&[("held", 1)]);
    // Nothing held is left, so the TaskTracker stops without waiting for it.
    tokio::time::timeout(WAIT, h.tracker)
        .await
        .expect("the TaskTracker stops in time")
        .unwrap()
        .unwrap();
    assert!(runner.ran().is_empty());
}

/// A port that takes TCP connections and closes each at once, as a
/// JobTracker going down does; counts the connections it took.
async fn closing_port() -> (String, Arc<std::sync::atomic::AtomicU32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(socket);
        }
    });
    (address, accepted)
}

#[tokio::test]
async fn a_jobtracker_that_closes_connections_is_passed_over_for_the_next() {
    let (closing, accepted) = closing_port().await;
    let mut good = ScriptedTracker::start(None).await;
    let addresses = [closing.as_str(), good.address.as_str()];
    // The first pick is random; start at the closing port so that the
    // TaskTracker has to move on.
    let resolver = Arc::new(StaticResolver::starting_at(addresses, 0).unwrap());
    let (runner, _gate) = Scripted::new();
    let tt = RunningTaskTracker::start(quick_config(&addresses), Some(resolver), runner);
    let mut s = good.session().await;
    s.welcome(10_000);
    tokio::time::timeout(WAIT, tt.handle.wait_for(|s| s.connected))
        .await
        .unwrap();
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the closing port was tried first"
    );
    s.assign(ids("j", 1, "noop"));
    let got = s.outcomes(1).await;
    assert_eq!(got.reports[0].job_id, "j0");
    assert_eq!(good.streams_opened(), 1);
    tt.finish().await.unwrap();
}

#[tokio::test]
async fn several_jobtrackers_in_the_config_work_whichever_comes_first() {
    let (closing, _accepted) = closing_port().await;
    let mut good = ScriptedTracker::start(None).await;
    let (runner, _gate) = Scripted::new();
    let config = quick_config(&[&closing, &good.address]);
    let tt = RunningTaskTracker::start(config, None, runner);
    let s = good.session().await;
    s.welcome(10_000);
    tokio::time::timeout(WAIT, tt.handle.wait_for(|s| s.connected))
        .await
        .unwrap();
    tt.finish().await.unwrap();
}

#[tokio::test]
async fn a_broken_stream_moves_the_tasktracker_to_the_next_jobtracker_and_it_sticks() {
    let mut first = ScriptedTracker::start(None).await;
    let mut second = ScriptedTracker::start(None).await;
    let addresses = [first.address.as_str(), second.address.as_str()];
    let resolver = Arc::new(StaticResolver::starting_at(addresses, 0).unwrap());
    let (runner, _gate) = Scripted::new();
    let tt = RunningTaskTracker::start(quick_config(&addresses), Some(resolver), runner);
    let s = first.session().await;
    s.welcome(10_000);
    tokio::time::timeout(WAIT, tt.handle.wait_for(|s| s.connected))
        .await
        .unwrap();
    s.break_stream();

    // The first JobTracker still accepts streams, but the TaskTracker
    // moves on to the second after the break.
    let mut s = second.session().await;
    s.welcome(10_000);
    tokio::time::timeout(
        WAIT,
        tt.handle.wait_for(|s| s.connected && s.connections == 2),
    )
    .await
    .unwrap();
    // While the second works, the TaskTracker stays with it.
    s.assign(ids("j", 3, "noop"));
    let got = s.outcomes(3).await;
    assert_eq!(got.reports.len(), 3);
    assert_eq!(first.streams_opened(), 1, "no stream to the first again");
    assert_eq!(second.streams_opened(), 1);

    // Round the list: when the second breaks, the first is next again.
    s.break_stream();
    let s = first.session().await;
    s.welcome(10_000);
    tokio::time::timeout(
        WAIT,
        tt.handle.wait_for(|s| s.connected && s.connections == 3),
    )
    .await
    .unwrap();
    assert_eq!(second.streams_opened(), 1);
    tt.finish().await.unwrap();
}

#[tokio::test]
async fn an_https_jobtracker_is_refused_before_anything_starts() {
    let (runner, _gate) = Scripted::new();
    let config = quick_config(&["127.0.0.1:7070", "https://127.0.0.1:7071"]);
    let e = TaskTracker::new(config, runner).unwrap_err();
    match &e {
        Error::Config { field, message } => {
            assert_eq!(*field, "--jobtracker");
            assert!(message.contains("no CA certificate"), "{message}");
            assert!(message.contains("https://127.0.0.1:7071"), "{message}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

/// Reads what the TaskTracker still sends on a stream it gave up, until
/// the stream ends.
async fn rest_of_stream(s: &mut Session) -> Received {
    let mut got = Received::default();
    tokio::time::timeout(WAIT, async {
        while let Ok(Some(message)) = s.inbound.message().await {
            match message.kind {
                Some(FromWorker::Started(started)) => got.started += started.runs.len(),
                Some(FromWorker::Outcomes(o)) => got.reports.extend(o.reports),
                Some(FromWorker::Credit(c)) => {
                    got.credits += c.credits;
                    got.ahead_credits += c.ahead_credits;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the TaskTracker ends the stream it gave up");
    got
}

/// The lease on the welcome of these tests: two intervals of 10 s.
const LEASE_MS: i64 = 20_000;

#[tokio::test]
async fn a_process_resumed_past_its_lease_starts_none_of_the_jobs_it_held_ahead() {
    let (clock, runner, _gate) = frozen_clock();
    let mut h =
        Harness::start_on_clock(4, runner.clone(), clock.clone(), |c| c.ahead_slots = 8).await;
    let mut s = h.session().await;
    s.welcome(10_000);
    // Both are due after the lease ends; the tracker goes silent.
    let not_before = clock.now_ms() + LEASE_MS + 5_000;
    s.assign_ahead("held-1", "noop", not_before);
    s.assign_ahead("held-2", "noop", not_before + 10);
    tokio::time::timeout(WAIT, h.handle.wait_for(|s| s.ahead_held == 2))
        .await
        .unwrap();

    // As after a SIGSTOP: when the process runs again, its clock is past
    // the lease and past the instants at once, so the release timer and
    // the lease are due together.
    clock.set(not_before + 10);
    let old = rest_of_stream(&mut s).await;
    assert_eq!(old.started, 0, "nothing started on the old stream: {old:?}");
    assert!(old.reports.is_empty(), "nothing reported: {old:?}");

    let s = h.session().await;
    s.welcome(10_000);
    let stats = tokio::time::timeout(
        WAIT,
        h.handle.wait_for(|s| s.connected && s.connections == 2),
    )
    .await
    .unwrap();
    assert_eq!(stats.lease_lapses, 1);
    assert_eq!(stats.ahead_held, 0);
    // A job sent on the new stream, due after the dropped ones, marks that
    // their instants have passed.
    hold_one_ahead(&h, &s, "after", not_before + 100).await;
    clock.set(not_before + 100);
    let mut s = s;
    let got = s.outcomes(1).await;
    assert_eq!(got.reports[0].job_id, "after");
    assert_eq!(runner.ran(), vec!["after"], "the held jobs never ran");
    h.finish().await.unwrap();
}

#[tokio::test]
async fn past_its_lease_a_tasktracker_drops_queued_runs_and_running_ones_finish_and_report() {
    let (clock, runner, gate) = frozen_clock();
    let mut h = Harness::start_on_clock(1, runner.clone(), clock.clone(), |_| {}).await;
    let mut s = h.session().await;
    s.welcome(10_000);
    // One slot: "g0" runs, the other two are queued for it.
    s.assign(vec![
        ("g0".to_string(), "gate"),
        ("q0".to_string(), "noop"),
        ("q1".to_string(), "noop"),
    ]);
    s.started(1).await;
    assert_eq!(runner.ran(), vec!["g0"]);

    // The tracker goes silent until the lease runs out, to the
    // millisecond.
    clock.advance(Duration::from_millis(LEASE_MS as u64));
    let old = rest_of_stream(&mut s).await;
    assert!(old.reports.is_empty(), "{old:?}");
    let mut s = h.session().await;
    s.welcome(10_000);
    let stats = tokio::time::timeout(
        WAIT,
        h.handle.wait_for(|s| s.connected && s.connections == 2),
    )
    .await
    .unwrap();
    assert_eq!(stats.lease_lapses, 1);
    assert_eq!(stats.busy, 1, "the started run goes on");

    // The run that had started goes on; its outcome comes on the new
    // stream, and its slot goes to a job sent there, not to the dropped.
    gate.add_permits(1);
    let got = s.outcomes(1).await;
    assert_eq!(got.reports[0].job_id, "g0");
    assert_eq!(
        outcome(&got.reports[0]),
        Outcome::Success("gate passed".into())
    );
    s.assign(ids("n", 1, "noop"));
    let got = s.outcomes(1).await;
    assert_eq!(got.reports[0].job_id, "n0");
    assert_eq!(runner.ran(), vec!["g0", "n0"], "the queued runs never ran");
    h.finish().await.unwrap();
}

#[tokio::test]
async fn while_the_jobtracker_keeps_talking_held_jobs_start_at_their_instant() {
    let (clock, runner, _gate) = frozen_clock();
    let mut h =
        Harness::start_on_clock(2, runner.clone(), clock.clone(), |c| c.ahead_slots = 8).await;
    let mut s = h.session().await;
    s.welcome(10_000);
    // Due well after one lease from the hello.
    let not_before = clock.now_ms() + 3 * LEASE_MS;
    hold_one_ahead(&h, &s, "held", not_before).await;
    // The clock moves three quarters of a lease at a time; before each
    // move the tracker says something and the TaskTracker has read it.
    let mut talks = 0;
    while clock.now_ms() < not_before {
        let now = clock.now_ms();
        if talks % 2 == 0 {
            s.send(ToWorker::Heartbeat(pb::Heartbeat { at_unix_ms: now }));
        } else {
            s.ack(&[]);
        }
        talks += 1;
        tokio::time::timeout(WAIT, h.handle.wait_for(|s| s.last_heard_ms == now))
            .await
            .expect("the TaskTracker reads what the tracker says");
        clock.set((now + LEASE_MS * 3 / 4).min(not_before));
    }
    let got = s.outcomes(1).await;
    assert_eq!(got.reports[0].job_id, "held");
    assert_eq!(got.reports[0].started_at_unix_ms, not_before);
    let stats = h.handle.stats();
    assert_eq!(stats.lease_lapses, 0);
    assert_eq!(stats.connections, 1, "the stream was never given up");
    h.finish().await.unwrap();
}

fn cancel(job_id: &str, attempt: u32) -> ToWorker {
    ToWorker::Cancel(pb::CancelRun {
        job_id: job_id.into(),
        attempt,
        reason: "superseded".into(),
    })
}

#[tokio::test]
async fn cancel_run_drops_queued_and_due_runs_unrun_and_spares_another_attempt() {
    let (clock, runner, gate) = frozen_clock();
    let mut h =
        Harness::start_on_clock(1, runner.clone(), clock.clone(), |c| c.ahead_slots = 4).await;
    let mut s = h.session().await;
    s.welcome(10_000);
    // "g0" holds the one slot; "q0" is queued for it; "due" was held ahead
    // and its instant passed, so it waits for the slot too.
    s.assign(vec![
        ("g0".to_string(), "gate-or-cancel"),
        ("q0".to_string(), "noop"),
    ]);
    s.started(1).await;
    let not_before = clock.now_ms() + 100;
    hold_one_ahead(&h, &s, "due", not_before).await;
    clock.set(not_before);
    s.ahead_credit(1).await;

    // Attempt 2 of "g0" is not the run here: it goes on.
    s.send(cancel("g0", 2));
    s.send(cancel("q0", 1));
    s.send(cancel("due", 1));
    let got = s.outcomes(2).await;
    let mut dropped: Vec<(&str, Outcome)> = got
        .reports
        .iter()
        .map(|r| (r.job_id.as_str(), outcome(r)))
        .collect();
    dropped.sort_by_key(|(id, _)| *id);
    let before_start =
        || Outcome::Error("cancelled by the JobTracker before it started: superseded".into());
    assert_eq!(
        dropped,
        vec![("due", before_start()), ("q0", before_start())]
    );
    assert_eq!(got.started, 0, "{got:?}");

    gate.add_permits(1);
    let got = s.outcomes(1).await;
    assert_eq!(got.reports[0].job_id, "g0");
    assert_eq!(
        outcome(&got.reports[0]),
        Outcome::Success("gate passed".into()),
        "a cancel for another attempt left the run alone"
    );
    // The freed slot goes to a job sent now, not to a cancelled one.
    s.assign(ids("n", 1, "noop"));
    let got = s.outcomes(1).await;
    assert_eq!(got.reports[0].job_id, "n0");
    assert_eq!(
        runner.ran(),
        vec!["g0", "n0"],
        "the cancelled runs never ran"
    );
    h.finish().await.unwrap();
}

#[tokio::test]
async fn runs_queued_for_a_slot_are_dropped_unrun_when_the_stream_breaks() {
    let (runner, gate) = Scripted::new();
    let mut h = Harness::start(1, runner.clone()).await;
    let mut s = h.session().await;
    s.welcome(10_000);
    s.assign(vec![("g0".to_string(), "gate"), ("q0".to_string(), "noop")]);
    s.started(1).await;
    s.break_stream();

    // The JobTracker hands "q0" out again; here it must not run as well.
    let mut s = h.session().await;
    assert_eq!(s.hello.slots, 1, "the queued run is gone from the count");
    s.welcome(10_000);
    gate.add_permits(1);
    let got = s.outcomes(1).await;
    assert_eq!(got.reports[0].job_id, "g0");
    s.assign(ids("n", 1, "noop"));
    let got = s.outcomes(1).await;
    assert_eq!(got.reports[0].job_id, "n0");
    assert_eq!(runner.ran(), vec!["g0", "n0"], "the queued run never ran");
    h.finish().await.unwrap();
}

/// Makes every JobTracker at `peer` unreachable (`true`) or reachable again.
fn cut_off(peer: &ScriptedTracker, unreachable: bool) {
    *peer.peer.refuse_with.lock().unwrap() =
        unreachable.then(|| Status::unavailable("the JobTracker is down"));
}

#[tokio::test]
async fn cut_off_past_the_stop_working_limit_runs_are_cancelled_and_hand_their_jobs_back() {
    let (runner, _gate) = Scripted::new();
    let mut h = Harness::start_with(2, runner, |c| {
        c.stop_working_after = Some(Duration::from_millis(300));
    })
    .await;
    let mut s = h.session().await;
    s.welcome(10_000);
    s.assign(vec![("long".to_string(), "until-cancelled")]);
    s.started(1).await;
    cut_off(&h.peer, true);
    s.break_stream();
    // Nothing else cancels the run: only the limit can.
    let stats = tokio::time::timeout(WAIT, h.handle.wait_for(|s| s.busy == 0 && s.unacked == 1))
        .await
        .expect("the run is cancelled once the limit runs out");
    assert!(!stats.connected);
    cut_off(&h.peer, false);
    let mut s = h.session().await;
    s.welcome(10_000);
    let got = s.outcomes(1).await;
    assert_eq!(got.reports[0].job_id, "long");
    match outcome(&got.reports[0]) {
        Outcome::Later {
            delay_ms: 0,
            message,
        } => assert!(message.contains("--stop-working-after"), "{message}"),
        other => panic!("expected the job handed back, got {other:?}"),
    }
    s.ack(&[("long", 1)]);
    tokio::time::timeout(WAIT, h.handle.wait_for(|s| s.unacked == 0))
        .await
        .unwrap();
    h.finish().await.unwrap();
}

#[tokio::test]
async fn without_the_stop_working_limit_a_run_cut_off_goes_on_and_reports() {
    let (runner, gate) = Scripted::new();
    let mut h = Harness::start(2, runner).await;
    let mut s = h.session().await;
    s.welcome(10_000);
    s.assign(vec![("long".to_string(), "gate")]);
    s.started(1).await;
    cut_off(&h.peer, true);
    s.break_stream();
    tokio::time::timeout(WAIT, h.handle.wait_for(|s| !s.connected))
        .await
        .unwrap();
    gate.add_permits(1);
    cut_off(&h.peer, false);
    let mut s = h.session().await;
    s.welcome(10_000);
    let got = s.outcomes(1).await;
    assert_eq!(
        outcome(&got.reports[0]),
        Outcome::Success("gate passed".into())
    );
    h.finish().await.unwrap();
}

async fn open_spool(dir: &std::path::Path, limits: SpoolLimits) -> DiskSpool {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || DiskSpool::open(&dir, limits))
        .await
        .unwrap()
        .expect("open the spool")
}

#[tokio::test]
async fn a_disk_spool_delivers_what_runs_did_while_cut_off_after_a_restart_to_another_jobtracker() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let (runner, gate) = Scripted::new();
    let mut first = ScriptedTracker::start(None).await;
    let spool = open_spool(&dir, SpoolLimits::default()).await;
    let tt = RunningTaskTracker::start_with_spool(
        quick_config(&[&first.address]),
        runner.clone(),
        Box::new(spool),
    );
    let mut s = first.session().await;
    s.welcome(10_000);
    s.assign(ids("j", 2, "gate-then-log"));
    s.started(2).await;
    cut_off(&first, true);
    s.break_stream();
    tokio::time::timeout(WAIT, tt.handle.wait_for(|s| !s.connected))
        .await
        .unwrap();
    // The runs end and log while no JobTracker is reachable.
    gate.add_permits(2);
    tokio::time::timeout(WAIT, tt.handle.wait_for(|s| s.busy == 0 && s.unacked == 2))
        .await
        .unwrap();
    tt.finish().await.unwrap();
    drop(first);

    // A new process on the same spool, and another JobTracker.
    let mut second = ScriptedTracker::start(None).await;
    let spool = open_spool(&dir, SpoolLimits::default()).await;
    assert_eq!(spool.len(), 2);
    let tt = RunningTaskTracker::start_with_spool(
        quick_config(&[&second.address]),
        runner,
        Box::new(spool),
    );
    let mut s = second.session().await;
    s.welcome(10_000);
    let got = s
        .read_until(|g| g.reports.len() >= 2 && g.logs.len() >= 2)
        .await;
    let mut jobs: Vec<_> = got.reports.iter().map(|r| r.job_id.clone()).collect();
    jobs.sort();
    assert_eq!(jobs, vec!["j0", "j1"]);
    for report in &got.reports {
        assert_eq!(outcome(report), Outcome::Success(String::new()));
    }
    assert_eq!(got.logs, vec!["past the gate", "past the gate"]);
    assert_eq!(got.started, 2, "the starts are delivered too: {got:?}");
    s.ack(&[("j0", 1), ("j1", 1)]);
    tokio::time::timeout(WAIT, tt.handle.wait_for(|s| s.unacked == 0))
        .await
        .unwrap();
    tt.finish().await.unwrap();
    // Everything acknowledged has left the spool.
    let spool = open_spool(&dir, SpoolLimits::default()).await;
    assert_eq!(spool.entries(), 0);
    tokio::task::spawn_blocking(move || drop(spool))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_full_spool_takes_no_new_work_until_acknowledgements_make_room() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = SpoolLimits {
        max_entries: 2,
        max_bytes: 1 << 20,
    };
    let spool = open_spool(tmp.path(), limits).await;
    let (runner, _gate) = Scripted::new();
    let mut peer = ScriptedTracker::start(None).await;
    let mut config = quick_config(&[&peer.address]);
    config.slots = 2;
    let tt = RunningTaskTracker::start_with_spool(config, runner, Box::new(spool));
    let mut s = peer.session().await;
    s.welcome(10_000);
    s.assign(ids("f", 2, "noop"));
    // Two outcomes fill the spool: no slot is offered again for them.
    let mut got = s.outcomes(2).await;
    // A job that cannot be read is reported at once: whatever was queued
    // before its outcome has arrived once it has.
    let mut unreadable = assignment("marker", "noop");
    if let Some(job) = unreadable.job.as_mut() {
        job.spec = None;
    }
    s.send(ToWorker::Assignments(pb::Assignments {
        assignments: vec![unreadable],
    }));
    while !got.reports.iter().any(|r| r.job_id == "marker") {
        got.add(s.next().await);
    }
    assert_eq!(got.credits, 0, "no slot offered while full: {got:?}");
    s.ack(&[("f0", 1), ("f1", 1), ("marker", 1)]);
    s.credit(2).await;
    tt.finish().await.unwrap();
}
