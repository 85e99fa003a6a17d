//! `WorkService`: one bidirectional stream per TaskTracker.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use std::collections::HashMap;
use std::sync::Mutex;

use lts_common::limits::{
    check_count, check_len, check_node_group, MAX_AHEAD_SLOTS, MAX_IDENTITY_LEN,
    MAX_ITEMS_PER_MESSAGE, MAX_JOB_ID_LEN, MAX_SLOTS,
};
use lts_common::{Job, JobState, LogEntry, LogKind, Outcome};
use lts_proto::v1 as pb;
use lts_proto::PROTOCOL_VERSION;
use pb::work_service_server::WorkService;
use pb::worker_message::Kind;
use tonic::{Request, Response, Status, Streaming};

use crate::dispatch::{send_to_worker, work_stream_capacity, Outbound, Registration};
use crate::outbound::peer_channel;
use crate::store::{CompleteResult, RunReport};
use crate::Tracker;

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The `WorkService` implementation.
#[derive(Clone)]
pub struct WorkApi {
    tracker: Arc<Tracker>,
}

impl WorkApi {
    /// The service over a tracker's state.
    pub fn new(tracker: Arc<Tracker>) -> Self {
        WorkApi { tracker }
    }
}

/// Checks a hello; the error is what the TaskTracker is told.
pub fn check_hello(h: &pb::Hello) -> Result<(), Status> {
    if h.protocol_version != PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "protocol version mismatch: the TaskTracker speaks version {}, this JobTracker speaks version {PROTOCOL_VERSION}",
            h.protocol_version
        )));
    }
    if h.identity.is_empty() || h.identity.len() > MAX_IDENTITY_LEN {
        return Err(Status::invalid_argument(format!(
            "hello.identity: must be 1 to {MAX_IDENTITY_LEN} bytes"
        )));
    }
    check_node_group(&h.node_group)
        .map_err(|m| Status::invalid_argument(format!("hello.node_group: {m}")))?;
    if h.slots == 0 || h.slots > MAX_SLOTS {
        return Err(Status::invalid_argument(format!(
            "hello.slots: {} is outside 1..={MAX_SLOTS}",
            h.slots
        )));
    }
    if h.total_slots > MAX_SLOTS {
        return Err(Status::invalid_argument(format!(
            "hello.total_slots: {} is above {MAX_SLOTS}",
            h.total_slots
        )));
    }
    if h.ahead_slots > MAX_AHEAD_SLOTS {
        return Err(Status::invalid_argument(format!(
            "hello.ahead_slots: {} is above {MAX_AHEAD_SLOTS}",
            h.ahead_slots
        )));
    }
    Ok(())
}

/// Checks the lengths and counts of a message from a TaskTracker before
/// anything of it is looked at or stored. A message that fails ends the
/// stream with `INVALID_ARGUMENT` naming the field and the limit: the
/// reference TaskTracker never sends one (it only echoes the tracker's
/// ids).
pub fn check_worker_message(m: &pb::WorkerMessage) -> Result<(), Status> {
    let refuse = |why: String| Err(Status::invalid_argument(why));
    match &m.kind {
        Some(Kind::Started(s)) => {
            if let Err(why) = check_count("started.runs", s.runs.len(), MAX_ITEMS_PER_MESSAGE) {
                return refuse(why);
            }
            for (i, r) in s.runs.iter().enumerate() {
                if let Err(why) = check_len(
                    &format!("started.runs[{i}].job_id"),
                    &r.job_id,
                    MAX_JOB_ID_LEN,
                ) {
                    return refuse(why);
                }
            }
        }
        Some(Kind::Outcomes(o)) => {
            if let Err(why) =
                check_count("outcomes.reports", o.reports.len(), MAX_ITEMS_PER_MESSAGE)
            {
                return refuse(why);
            }
            for (i, r) in o.reports.iter().enumerate() {
                if let Err(why) = check_len(
                    &format!("outcomes.reports[{i}].job_id"),
                    &r.job_id,
                    MAX_JOB_ID_LEN,
                ) {
                    return refuse(why);
                }
            }
        }
        Some(Kind::BizLogs(b)) => {
            if let Err(why) = check_count("biz_logs.lines", b.lines.len(), MAX_ITEMS_PER_MESSAGE) {
                return refuse(why);
            }
            for (i, l) in b.lines.iter().enumerate() {
                if let Err(why) = check_len(
                    &format!("biz_logs.lines[{i}].job_id"),
                    &l.job_id,
                    MAX_JOB_ID_LEN,
                ) {
                    return refuse(why);
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Whose a run is, for a report about it on a stream that was not given
/// it (see [`classify_run`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOwner {
    /// The job runs this attempt on this TaskTracker (same identity and
    /// node group), handed out on an earlier stream or by another tracker
    /// of the cluster: its reports are applied.
    Earlier,
    /// A run of this node group whose attempt is an earlier one of the
    /// job (or its current one, no longer running). Unless the job's
    /// execution log says that attempt was handed to another TaskTracker
    /// (then it is [`RunOwner::Foreign`]), its log lines are kept, its
    /// outcome is refused as stale by the store and its start is answered
    /// with a cancel: a spooled report, sent again after a reconnect or a
    /// restart of the tracker. (A tracker killed before its store wrote the
    /// dispatch line leaves no record of whom the attempt went to: such an
    /// attempt is taken as this TaskTracker's.)
    Superseded,
    /// An attempt the job never had (0, or beyond its current one): an
    /// outcome is refused as stale by the store (and logged there), a
    /// start is answered with a cancel, log lines are refused.
    NeverRun,
    /// Not this stream's to report: an unknown job, a job of another node
    /// group, or a run another TaskTracker holds. Refused and counted.
    Foreign(&'static str),
}

/// Decides whose the run `(job, attempt)` is, for a stream of `identity`
/// in `node_group` that was not given it. The identity is the one the
/// stream is allowed to use (see [`stream_identity`]).
pub fn classify_run(job: Option<&Job>, node_group: &str, identity: &str, attempt: u32) -> RunOwner {
    let Some(job) = job else {
        return RunOwner::Foreign("the job is not known");
    };
    if job.spec.task_tracker_node_group != node_group {
        return RunOwner::Foreign("the job belongs to another node group");
    }
    if attempt == 0 || attempt > job.attempt {
        return RunOwner::NeverRun;
    }
    if job.state == JobState::Running && job.attempt == attempt {
        if job.worker == identity {
            return RunOwner::Earlier;
        }
        return RunOwner::Foreign("the run is assigned to another TaskTracker");
    }
    RunOwner::Superseded
}

/// The identity and node group a stream may act as. With auth off they
/// are the ones its hello names. With auth on the identity is the
/// credential's name (its `NAME` in the token file, for a token or a
/// client certificate alike), a `/`, and the hello's identity: a
/// credential can only ever act as identities under its own name, so the
/// holder of one worker credential cannot connect as, or report the runs
/// of, a TaskTracker of another credential of the same node group. (Names
/// in the token file hold no `/`, so no two credentials share a prefix.)
/// Every check of what a stream may report goes by this answer: the
/// dispatcher's registration, the refusal of a second stream under a
/// connected identity, whose runs a report is about, runs taken back after
/// a restart of the tracker, and the `worker` of jobs and log lines.
pub fn stream_identity(h: &pb::Hello, caller: &crate::auth::Caller) -> (String, String) {
    let identity = match &caller.principal {
        None => h.identity.clone(),
        Some(p) => format!("{}/{}", p.name, h.identity),
    };
    (identity, h.node_group.clone())
}

/// How often refusals of a stream are logged at most; the others in
/// between are counted and told with the next line.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Logs refused reports of one stream once per burst.
#[derive(Default)]
struct RefusalLog {
    last: Option<tokio::time::Instant>,
    quiet: u64,
    /// Outcomes of attempts their jobs never had, passed to the store
    /// (which writes a `stale-outcome` line for each) on this stream.
    never_run_outcomes: u32,
}

/// How many outcomes of attempts their jobs never had one stream may have
/// written to its jobs' execution logs as `stale-outcome` lines. A
/// TaskTracker sends such an outcome only after its tracker lost the
/// record of a dispatch (a crash before it was stored), a handful at most;
/// beyond this the stream is forging, and its further ones are refused
/// without a line, so it cannot fill a job's log.
pub const MAX_NEVER_RUN_OUTCOMES_PER_STREAM: u32 = 100;

/// The latest instant a TaskTracker may report: the end of the year 9999
/// in Unix ms. Times between 0 and it can be subtracted without overflow.
pub const MAX_REPORTED_UNIX_MS: i64 = 253_402_300_799_999;

/// How far a run's finish may precede its start (the TaskTracker's clock
/// stepped back during the run) before its report is refused.
pub const MAX_CLOCK_STEP_BACK_MS: i64 = 60_000;

fn check_instant(field: &str, v: i64) -> Result<(), String> {
    if (0..=MAX_REPORTED_UNIX_MS).contains(&v) {
        Ok(())
    } else {
        Err(format!(
            "{field}: {v} is not an instant between 1970 and 9999 in Unix ms"
        ))
    }
}

/// Checks the times of an outcome report. A report that fails is refused:
/// the run is recorded as an `error` outcome whose message names the
/// field, at the tracker's clock, and acknowledged like any other.
pub fn check_run_times(started_at_unix_ms: i64, finished_at_unix_ms: i64) -> Result<(), String> {
    check_instant("started_at_unix_ms", started_at_unix_ms)?;
    check_instant("finished_at_unix_ms", finished_at_unix_ms)?;
    if finished_at_unix_ms < started_at_unix_ms - MAX_CLOCK_STEP_BACK_MS {
        return Err(format!(
            "finished_at_unix_ms: {finished_at_unix_ms} is {} ms before started_at_unix_ms; at most {MAX_CLOCK_STEP_BACK_MS} ms is allowed for a clock that stepped back",
            started_at_unix_ms - finished_at_unix_ms
        ));
    }
    Ok(())
}

fn msg(kind: pb::tracker_message::Kind) -> pb::TrackerMessage {
    pb::TrackerMessage { kind: Some(kind) }
}

#[tonic::async_trait]
impl WorkService for WorkApi {
    type WorkStream =
        Pin<Box<dyn Stream<Item = Result<pb::TrackerMessage, Status>> + Send + 'static>>;

    async fn work(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let caller = match request.extensions().get::<crate::auth::Caller>() {
            Some(caller) => caller.clone(),
            None => self.tracker.caller(&request, "work")?,
        };
        let mutual_tls =
            (self.tracker.config.security.tls.as_ref()).is_some_and(|t| t.client_ca_pem.is_some());
        if mutual_tls && request.peer_certs().is_none() {
            tracing::warn!(
                target: "audit",
                who = caller.name(),
                what = "work",
                from = %caller.from,
                outcome = "unauthenticated",
                "a TaskTracker came without a client certificate"
            );
            return Err(Status::unauthenticated(
                "the WorkService needs a client certificate signed by the JobTracker's --tls-client-ca",
            ));
        }
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "no hello within 10 s of opening the work stream",
                ))
            }
            Ok(m) => match m?.and_then(|m| m.kind) {
                Some(Kind::Hello(h)) => h,
                _ => {
                    return Err(Status::invalid_argument(
                        "the first message of a work stream must be a hello",
                    ))
                }
            },
        };
        check_hello(&hello)?;
        // A worker credential names the node groups it may take jobs of;
        // the hello's node group must be one of them.
        caller.require(crate::auth::Need::Work, &hello.node_group, "work")?;
        let (identity, group) = stream_identity(&hello, &caller);
        self.tracker.dispatcher.admit_identity(&identity)?;
        let (tx, rx) = peer_channel(work_stream_capacity(hello.slots, hello.ahead_slots));
        let interval = self.tracker.config.heartbeat_interval;
        send_to_worker(
            &tx,
            &self.tracker.metrics,
            msg(pb::tracker_message::Kind::Welcome(pb::Welcome {
                tracker_id: self.tracker.tracker_id.clone(),
                protocol_version: PROTOCOL_VERSION,
                heartbeat_interval_ms: interval.as_millis() as u64,
            })),
        );
        let registration = self.tracker.dispatcher.register(
            &group,
            &identity,
            hello.slots,
            hello.total_slots,
            hello.ahead_slots,
            tx.clone(),
        );
        tracing::info!(
            worker = %identity,
            node_group = %group,
            slots = hello.slots,
            ahead_slots = hello.ahead_slots,
            "TaskTracker connected"
        );
        let session = Session {
            tracker: self.tracker.clone(),
            group,
            identity,
            conn: registration.conn(),
            tx,
            refusals: Mutex::new(RefusalLog::default()),
        };
        self.tracker
            .tasks
            .spawn(session.run(inbound, interval, registration));
        Ok(Response::new(Box::pin(rx)))
    }
}

struct Session {
    tracker: Arc<Tracker>,
    group: String,
    identity: String,
    conn: u64,
    tx: Outbound,
    refusals: Mutex<RefusalLog>,
}

impl Session {
    /// Serves the stream until it ends; dropping `registration` at the end
    /// takes the TaskTracker out of dispatch and puts its runs back.
    async fn run(
        self,
        mut inbound: Streaming<pb::WorkerMessage>,
        interval: Duration,
        mut registration: Registration,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let silence_limit = interval * 3;
        let mut last_heard = tokio::time::Instant::now();
        // What gRPC had taken from the outbound channel, and since when it
        // has taken nothing while messages waited there.
        let mut taken = self.tx.taken();
        let mut stalled_since: Option<tokio::time::Instant> = None;
        let shutdown = self.tracker.shutdown.clone();
        let t = self.tracker.clone();
        // Heartbeats go out from a task of their own: handling a message
        // waits on the store, which under load can take longer than the
        // TaskTracker's lease, and a TaskTracker must not give up a stream
        // whose tracker is alive and holds its runs.
        let heartbeats = tokio::spawn({
            let tx = self.tx.clone();
            let metrics = t.metrics.clone();
            async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    if tx.is_closed() {
                        break;
                    }
                    send_to_worker(
                        &tx,
                        &metrics,
                        msg(pb::tracker_message::Kind::Heartbeat(pb::Heartbeat {
                            at_unix_ms: lts_common::now_ms(),
                        })),
                    );
                }
            }
        });
        let reason = loop {
            tokio::select! {
                m = inbound.message() => match m {
                    Ok(Some(m)) => {
                        if let Err(status) = check_worker_message(&m) {
                            t.metrics.limit_hit("field_length");
                            tracing::warn!(worker = %self.identity, node_group = %self.group, "refused a message: {}", status.message());
                            let reason = format!("refused a message: {}", status.message());
                            self.tx.close(status);
                            break reason;
                        }
                        if let Err(e) = self.handle(m).await {
                            // Store trouble: end the stream so the TaskTracker
                            // reconnects and resends what was not acked.
                            self.tx.close(Status::unavailable(e.to_string()));
                            break format!("store error: {e}");
                        }
                        // Heard now, after handling: time spent here (a large
                        // batch of outcomes) is not the TaskTracker's silence,
                        // its next messages wait unread meanwhile.
                        last_heard = tokio::time::Instant::now();
                        registration.heard();
                    }
                    Ok(None) => break "the TaskTracker closed its stream".to_string(),
                    Err(e) => break format!("stream error: {e}"),
                },
                _ = ticker.tick() => {
                    // A TaskTracker that stops reading its stream while it
                    // goes on sending holds its runs: once nothing was taken
                    // from its channel for three intervals, with messages
                    // waiting (its HTTP/2 window is full), it is dropped and
                    // its runs go to others.
                    let now_taken = self.tx.taken();
                    if now_taken != taken || self.tx.unread() == 0 {
                        taken = now_taken;
                        stalled_since = None;
                    } else if stalled_since.get_or_insert_with(tokio::time::Instant::now).elapsed() > silence_limit {
                        t.metrics.limit_hit("work_not_read");
                        t.metrics.outbound_dropped.with_label_values(&["work", "peer_not_reading"]).inc();
                        let why = format!(
                            "the TaskTracker read nothing of its work stream for {} ms while messages waited; its runs go to other TaskTrackers",
                            silence_limit.as_millis()
                        );
                        self.tx.close(Status::resource_exhausted(why.clone()));
                        break why;
                    }
                    if last_heard.elapsed() > silence_limit {
                        self.tx.close(Status::deadline_exceeded(format!(
                            "no message from this TaskTracker for {} ms",
                            silence_limit.as_millis()
                        )));
                        break format!("silent for {} ms", silence_limit.as_millis());
                    }
                }
                _ = self.tx.closed() => break "its stream was closed".to_string(),
                _ = shutdown.cancelled() => break "the JobTracker is shutting down".to_string(),
            }
        };
        heartbeats.abort();
        registration.reason = reason;
    }

    async fn handle(&self, m: pb::WorkerMessage) -> crate::error::Result<()> {
        let t = &self.tracker;
        match m.kind {
            Some(Kind::Credit(c)) => {
                if t.dispatcher
                    .add_credits(&self.group, self.conn, c.credits, c.ahead_credits)
                {
                    self.refused_credit(c.credits, c.ahead_credits);
                }
            }
            Some(Kind::Started(s)) => {
                let runs: Vec<(String, u32)> =
                    s.runs.into_iter().map(|r| (r.job_id, r.attempt)).collect();
                // A start is a log line; an absurd time is replaced by the
                // tracker's clock rather than refused.
                let at = match check_instant("started.at_unix_ms", s.at_unix_ms) {
                    Ok(()) => s.at_unix_ms,
                    Err(why) => {
                        tracing::warn!(worker = %self.identity, "{why}; using the JobTracker's clock");
                        lts_common::now_ms()
                    }
                };
                let unknown = t.dispatcher.started(&self.group, self.conn, &runs, at);
                let owners = self.owners(&unknown).await?;
                let mut superseded = Vec::new();
                let mut refused = 0;
                let accepted: Vec<(String, u32)> = runs
                    .into_iter()
                    .filter(|run| match owners.get(run) {
                        None | Some(RunOwner::Earlier) => true,
                        Some(RunOwner::Superseded) | Some(RunOwner::NeverRun) => {
                            superseded.push(run.clone());
                            false
                        }
                        Some(RunOwner::Foreign(why)) => {
                            refused += 1;
                            self.refused("started", run, why);
                            // A job it runs that is not known here must stop.
                            if *why == "the job is not known" {
                                superseded.push(run.clone());
                            }
                            false
                        }
                    })
                    .collect();
                self.count_refused("started", refused);
                let mut accepted = accepted;
                if !superseded.is_empty() {
                    // Runs going since before a restart of this tracker
                    // are taken back rather than cancelled.
                    let adopted = t
                        .store
                        .adopt(&superseded, &self.identity, lts_common::now_ms())
                        .await?;
                    if !adopted.is_empty() {
                        t.dispatcher.adopt(&self.group, self.conn, &adopted);
                        superseded.retain(|run| !adopted.contains(run));
                        accepted.extend(adopted);
                    }
                }
                if !accepted.is_empty() {
                    t.store.started(&accepted, &self.identity, at).await?;
                }
                self.cancel_superseded(superseded).await?;
            }
            Some(Kind::Outcomes(o)) => self.outcomes(o.reports).await?,
            Some(Kind::BizLogs(b)) => {
                let runs: Vec<(String, u32)> = b
                    .lines
                    .iter()
                    .map(|l| (l.job_id.clone(), l.attempt))
                    .collect();
                let (_, others) = t
                    .dispatcher
                    .partition_assigned(&self.group, self.conn, runs);
                let owners = self.owners(&others).await?;
                let mut refused = 0;
                let entries: Vec<LogEntry> = b
                    .lines
                    .into_iter()
                    .filter(|l| match owners.get(&(l.job_id.clone(), l.attempt)) {
                        None | Some(RunOwner::Earlier) | Some(RunOwner::Superseded) => true,
                        Some(RunOwner::NeverRun) => {
                            refused += 1;
                            self.refused(
                                "biz_log",
                                &(l.job_id.clone(), l.attempt),
                                "the job never had this attempt",
                            );
                            false
                        }
                        Some(RunOwner::Foreign(why)) => {
                            refused += 1;
                            self.refused("biz_log", &(l.job_id.clone(), l.attempt), why);
                            false
                        }
                    })
                    .map(|l| LogEntry {
                        job_id: l.job_id,
                        at_ms: l.at_unix_ms,
                        kind: LogKind::Biz,
                        attempt: l.attempt,
                        level: lts_common::convert::log_level_from_wire(l.level),
                        message: lts_common::limits::clip_message(l.message),
                        worker: self.identity.clone(),
                    })
                    .collect();
                self.count_refused("biz_log", refused);
                if !entries.is_empty() {
                    t.store.append_logs(entries).await?;
                }
            }
            Some(Kind::Heartbeat(_)) => {}
            Some(Kind::Hello(_)) => {
                tracing::warn!(worker = %self.identity, "ignoring a second hello on a work stream");
            }
            None => {
                tracing::warn!(worker = %self.identity, "ignoring an empty message on a work stream");
            }
        }
        Ok(())
    }

    /// Whose each of `runs` is: runs not assigned on this stream, looked up
    /// in the store once each.
    async fn owners(
        &self,
        runs: &[(String, u32)],
    ) -> crate::error::Result<HashMap<(String, u32), RunOwner>> {
        let mut owners = HashMap::new();
        let mut jobs: HashMap<String, Option<Job>> = HashMap::new();
        for (job_id, attempt) in runs {
            if owners.contains_key(&(job_id.clone(), *attempt)) {
                continue;
            }
            if !jobs.contains_key(job_id) {
                let job = self.tracker.store.get(job_id).await?;
                jobs.insert(job_id.clone(), job);
            }
            let job = jobs.get(job_id).and_then(Option::as_ref);
            let mut owner = classify_run(job, &self.group, &self.identity, *attempt);
            if owner == RunOwner::Superseded && self.handed_to_another(job_id, *attempt).await? {
                owner = RunOwner::Foreign("the run was handed to another TaskTracker");
            }
            owners.insert((job_id.clone(), *attempt), owner);
        }
        Ok(owners)
    }

    /// Whether the execution log of `job_id` says attempt `attempt` was
    /// handed to a TaskTracker other than this one.
    async fn handed_to_another(&self, job_id: &str, attempt: u32) -> crate::error::Result<bool> {
        /// Pages of a job's log looked through at most.
        const MAX_PAGES: usize = 20;
        let filter = crate::store::LogFilter {
            job_id: Some(job_id.to_string()),
            ..Default::default()
        };
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let (lines, next) = self
                .tracker
                .store
                .query_logs(&filter, 1000, token.as_deref())
                .await?;
            if let Some(l) = lines
                .iter()
                .find(|l| l.kind == LogKind::Dispatched && l.attempt == attempt)
            {
                return Ok(l.worker != self.identity);
            }
            match next {
                Some(n) => token = Some(n),
                None => break,
            }
        }
        Ok(false)
    }

    /// Counts an outcome of an attempt its job never had; false once the
    /// stream has sent [`MAX_NEVER_RUN_OUTCOMES_PER_STREAM`] of them.
    fn may_log_never_run_outcome(&self) -> bool {
        let mut log = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if log.never_run_outcomes >= MAX_NEVER_RUN_OUTCOMES_PER_STREAM {
            return false;
        }
        log.never_run_outcomes += 1;
        true
    }

    /// Logs a refused report, at most once per [`REFUSAL_LOG_EVERY`] per
    /// stream; the ones in between are told as a count with the next line.
    fn refused(&self, message: &str, run: &(String, u32), why: &str) {
        let mut log = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        if log
            .last
            .is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_EVERY)
        {
            log.quiet += 1;
            return;
        }
        let quiet = std::mem::take(&mut log.quiet);
        log.last = Some(now);
        tracing::warn!(
            worker = %self.identity,
            node_group = %self.group,
            job_id = %run.0,
            attempt = run.1,
            refused_since_last_line = quiet,
            "refused a {message} report for a run this stream was not given: {why}"
        );
    }

    /// Logs credit beyond the stream's slots, once per burst like refused
    /// reports.
    fn refused_credit(&self, credits: u32, ahead_credits: u32) {
        let mut log = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        if log
            .last
            .is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_EVERY)
        {
            log.quiet += 1;
            return;
        }
        log.last = Some(now);
        tracing::warn!(
            worker = %self.identity,
            node_group = %self.group,
            credits,
            ahead_credits,
            "credit beyond the slots this stream declared is not kept"
        );
    }

    fn count_refused(&self, message: &str, n: u64) {
        if n > 0 {
            self.tracker
                .metrics
                .refused_runs
                .with_label_values(&[message])
                .inc_by(n);
        }
    }

    /// Of runs a TaskTracker started that were not assigned on this
    /// stream, cancels those whose attempt is no longer the job's current
    /// one (the job was put back and given out again, or cancelled): it
    /// was frozen or cut off, and the run must not go on twice.
    async fn cancel_superseded(&self, runs: Vec<(String, u32)>) -> crate::error::Result<()> {
        for (job_id, attempt) in runs {
            let reason = match self.tracker.store.get(&job_id).await? {
                None => "the job is not known to this JobTracker".to_string(),
                Some(job) if job.attempt != attempt => format!(
                    "attempt {attempt} was superseded: the job is {} at attempt {}",
                    job.state.name(),
                    job.attempt
                ),
                Some(job) if job.state != lts_common::JobState::Running => {
                    format!("the job is {} and no longer runs", job.state.name())
                }
                // Still current: assigned on a stream that is still being
                // taken down; its runs are cancelled once put back.
                Some(_) => continue,
            };
            tracing::info!(worker = %self.identity, %job_id, attempt, "cancelling a superseded run: {reason}");
            send_to_worker(
                &self.tx,
                &self.tracker.metrics,
                msg(pb::tracker_message::Kind::Cancel(pb::CancelRun {
                    job_id,
                    attempt,
                    reason,
                })),
            );
        }
        Ok(())
    }

    async fn outcomes(&self, reports: Vec<pb::OutcomeReport>) -> crate::error::Result<()> {
        let t = &self.tracker;
        let all: Vec<(String, u32)> = reports
            .iter()
            .map(|r| (r.job_id.clone(), r.attempt))
            .collect();
        let (_, others) = t.dispatcher.partition_assigned(&self.group, self.conn, all);
        let owners = self.owners(&others).await?;
        let mut acks = Vec::with_capacity(reports.len());
        let mut runs = Vec::with_capacity(reports.len());
        let mut valid = Vec::with_capacity(reports.len());
        let mut refused = 0;
        for r in reports {
            // Acknowledged either way: a refused outcome can never be
            // applied for this stream, so the TaskTracker need not keep it.
            acks.push(pb::RunRef {
                job_id: r.job_id.clone(),
                attempt: r.attempt,
            });
            let run = (r.job_id.clone(), r.attempt);
            match owners.get(&run) {
                Some(RunOwner::Foreign(why)) => {
                    refused += 1;
                    self.refused("outcome", &run, why);
                    continue;
                }
                Some(RunOwner::NeverRun) if !self.may_log_never_run_outcome() => {
                    refused += 1;
                    self.refused(
                        "outcome",
                        &run,
                        "the job never had this attempt, and this stream sent more such outcomes than are logged",
                    );
                    continue;
                }
                _ => {}
            }
            runs.push(run);
            let mut outcome = match r.outcome.map(Outcome::try_from) {
                Some(Ok(o)) => o,
                Some(Err(e)) => Outcome::Error(format!("the TaskTracker sent a bad outcome: {e}")),
                None => Outcome::Error("the TaskTracker sent no outcome".into()),
            };
            let (mut started_at_ms, mut finished_at_ms) =
                (r.started_at_unix_ms, r.finished_at_unix_ms);
            match check_run_times(started_at_ms, finished_at_ms) {
                Ok(()) => {
                    let run_ms = (finished_at_ms - started_at_ms).max(0);
                    t.metrics.run_time.observe(run_ms as f64 / 1000.0);
                }
                Err(why) => {
                    tracing::warn!(worker = %self.identity, job_id = %r.job_id, "refused an outcome report: {why}");
                    outcome =
                        Outcome::Error(format!("the TaskTracker sent a bad outcome report: {why}"));
                    let now = lts_common::now_ms();
                    (started_at_ms, finished_at_ms) = (now, now);
                }
            }
            valid.push(RunReport {
                job_id: r.job_id,
                attempt: r.attempt,
                outcome,
                started_at_ms,
                finished_at_ms,
                worker: self.identity.clone(),
            });
        }
        self.count_refused("outcome", refused);
        let kinds: Vec<&'static str> = valid.iter().map(|r| r.outcome.kind()).collect();
        let results = if valid.is_empty() {
            Vec::new()
        } else {
            t.store.complete(valid, lts_common::now_ms()).await?
        };
        t.dispatcher.finished(&self.group, self.conn, &runs);
        let mut feedback = Vec::new();
        let mut requeued = false;
        for (result, kind) in results.into_iter().zip(kinds) {
            match result {
                CompleteResult::Applied { job, feedback: fb } => {
                    t.metrics.completed.with_label_values(&[kind]).inc();
                    requeued |= job.state == lts_common::JobState::Pending;
                    feedback.extend(fb);
                }
                CompleteResult::Stale { current_attempt } => {
                    t.metrics.stale_outcomes.inc();
                    tracing::info!(
                        worker = %self.identity,
                        current_attempt,
                        "refused a stale outcome"
                    );
                }
            }
        }
        if !feedback.is_empty() {
            if let Some(peers) = t.peers.get() {
                let mut groups: Vec<&str> = feedback
                    .iter()
                    .map(|f| f.submit_node_group.as_str())
                    .collect();
                groups.sort_unstable();
                groups.dedup();
                for g in groups {
                    peers.announce_feedback(g);
                }
            }
            t.feedback.push(feedback);
        }
        if requeued {
            t.dispatcher.wake(&self.group);
        }
        // Acknowledged once durable, so the TaskTracker keeps (and resends)
        // an outcome a crash could lose; the stream goes on meanwhile.
        let tx = self.tx.clone();
        let store = t.store.clone();
        let metrics = t.metrics.clone();
        let worker = self.identity.clone();
        t.tasks.spawn(async move {
            match store.sync().await {
                Ok(()) => {
                    send_to_worker(
                        &tx,
                        &metrics,
                        msg(pb::tracker_message::Kind::OutcomeAcks(pb::OutcomeAcks {
                            runs: acks,
                        })),
                    );
                }
                Err(e) => tracing::warn!(
                    worker = %worker,
                    "outcomes not acknowledged: they are not durable ({e}); the TaskTracker keeps them and sends them again when it reconnects"
                ),
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(group: &str, worker: &str, attempt: u32) -> Job {
        Job {
            job_id: "j".into(),
            spec: lts_common::JobSpec::new("t", group),
            state: JobState::Running,
            attempt,
            seq: 1,
            submitted_at_ms: 0,
            trigger_at_ms: 0,
            updated_at_ms: 0,
            worker: worker.into(),
            last_outcome: None,
            failures: 0,
            cycles: 0,
        }
    }

    #[test]
    fn a_run_is_this_streams_only_when_its_identity_and_group_hold_it() {
        let job = running("g", "tt-1", 3);
        assert_eq!(classify_run(Some(&job), "g", "tt-1", 3), RunOwner::Earlier);
        assert!(matches!(
            classify_run(Some(&job), "g", "tt-2", 3),
            RunOwner::Foreign(_)
        ));
        assert!(matches!(
            classify_run(Some(&job), "h", "tt-1", 3),
            RunOwner::Foreign(_)
        ));
        assert!(matches!(
            classify_run(None, "g", "tt-1", 3),
            RunOwner::Foreign(_)
        ));
        assert_eq!(
            classify_run(Some(&job), "g", "tt-2", 2),
            RunOwner::Superseded
        );
        for attempt in [0, 4] {
            assert_eq!(
                classify_run(Some(&job), "g", "tt-1", attempt),
                RunOwner::NeverRun
            );
        }
    }

    #[test]
    fn oversized_ids_are_refused_naming_the_field_and_the_limit() {
        let m = pb::WorkerMessage {
            kind: Some(Kind::Outcomes(pb::Outcomes {
                reports: vec![
                    pb::OutcomeReport::default(),
                    pb::OutcomeReport {
                        job_id: "x".repeat(MAX_JOB_ID_LEN + 1),
                        ..Default::default()
                    },
                ],
            })),
        };
        let e = check_worker_message(&m).expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().starts_with("outcomes.reports[1].job_id") && e.message().contains("128"),
            "{}",
            e.message()
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any mix of job id lengths: a message passes exactly when every
        /// id is within the limit, and a refusal names the first long one.
        #[test]
        fn message_checks_accept_exactly_the_messages_within_the_limits(
            lens in proptest::collection::vec(0usize..300, 0..20),
            kind in 0u8..3,
        ) {
            let ids: Vec<String> = lens.iter().map(|n| "x".repeat(*n)).collect();
            let m = pb::WorkerMessage {
                kind: Some(match kind {
                    0 => Kind::Started(pb::Started {
                        runs: ids.iter().map(|id| pb::RunRef { job_id: id.clone(), attempt: 1 }).collect(),
                        at_unix_ms: 0,
                    }),
                    1 => Kind::Outcomes(pb::Outcomes {
                        reports: ids.iter().map(|id| pb::OutcomeReport { job_id: id.clone(), ..Default::default() }).collect(),
                    }),
                    _ => Kind::BizLogs(pb::BizLogs {
                        lines: ids.iter().map(|id| pb::BizLog { job_id: id.clone(), ..Default::default() }).collect(),
                    }),
                }),
            };
            match lens.iter().position(|n| *n > MAX_JOB_ID_LEN) {
                None => proptest::prop_assert!(check_worker_message(&m).is_ok()),
                Some(i) => {
                    let e = check_worker_message(&m).expect_err("refused");
                    proptest::prop_assert!(e.message().contains(&format!("[{i}].job_id")), "{}", e.message());
                }
            }
        }

        /// A report is the stream's own (`Earlier`) only for the running
        /// attempt of a job of its group held by its identity.
        #[test]
        fn only_the_holder_of_a_running_attempt_owns_it(
            same_group in proptest::bool::ANY,
            same_worker in proptest::bool::ANY,
            is_running in proptest::bool::ANY,
            job_attempt in 0u32..4,
            attempt in 0u32..5,
        ) {
            let mut job = running(if same_group { "g" } else { "h" }, if same_worker { "me" } else { "other" }, job_attempt);
            if !is_running {
                job.state = JobState::Pending;
            }
            let owner = classify_run(Some(&job), "g", "me", attempt);
            let own = same_group && same_worker && is_running && attempt == job_attempt && attempt > 0;
            proptest::prop_assert_eq!(owner == RunOwner::Earlier, own);
            if !same_group {
                proptest::prop_assert!(matches!(owner, RunOwner::Foreign(_)));
            }
        }
    }

    #[test]
    fn absurd_run_times_are_refused_naming_the_field() {
        let now = 1_700_000_000_000;
        assert_eq!(check_run_times(now, now + 5), Ok(()));
        // A clock that stepped back a little is tolerated.
        assert_eq!(check_run_times(now, now - 1_000), Ok(()));
        for (started, finished, field) in [
            (i64::MIN, now, "started_at_unix_ms"),
            (now, i64::MIN, "finished_at_unix_ms"),
            (now, i64::MAX, "finished_at_unix_ms"),
            (-1, now, "started_at_unix_ms"),
            (now, now - 3_600_000, "finished_at_unix_ms"),
        ] {
            let e = check_run_times(started, finished).expect_err("refused");
            assert!(e.starts_with(field), "{e}");
        }
    }
}
