//! `WorkService`: one bidirectional stream per TaskTracker.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use lts_common::limits::{check_node_group, MAX_AHEAD_SLOTS, MAX_SLOTS};
use lts_common::{LogEntry, LogKind, Outcome};
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
    if h.identity.is_empty() || h.identity.len() > 256 {
        return Err(Status::invalid_argument(
            "hello.identity: must be 1 to 256 bytes",
        ));
    }
    check_node_group(&h.node_group)
        .map_err(|m| Status::invalid_argument(format!("hello.node_group: {m}")))?;
    if h.slots == 0 || h.slots > MAX_SLOTS {
        return Err(Status::invalid_argument(format!(
            "hello.slots: {} is outside 1..={MAX_SLOTS}",
            h.slots
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
            &hello.node_group,
            &hello.identity,
            hello.slots,
            hello.ahead_slots,
            tx.clone(),
        );
        tracing::info!(
            worker = %hello.identity,
            node_group = %hello.node_group,
            slots = hello.slots,
            ahead_slots = hello.ahead_slots,
            "TaskTracker connected"
        );
        let session = Session {
            tracker: self.tracker.clone(),
            group: hello.node_group,
            identity: hello.identity,
            conn: registration.conn(),
            tx,
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
        let shutdown = self.tracker.shutdown.clone();
        let t = self.tracker.clone();
        let reason = loop {
            tokio::select! {
                m = inbound.message() => match m {
                    Ok(Some(m)) => {
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
                    if last_heard.elapsed() > silence_limit {
                        self.tx.close(Status::deadline_exceeded(format!(
                            "no message from this TaskTracker for {} ms",
                            silence_limit.as_millis()
                        )));
                        break format!("silent for {} ms", silence_limit.as_millis());
                    }
                    send_to_worker(&self.tx, &t.metrics, msg(pb::tracker_message::Kind::Heartbeat(pb::Heartbeat {
                        at_unix_ms: lts_common::now_ms(),
                    })));
                }
                _ = self.tx.closed() => break "its stream was closed".to_string(),
                _ = shutdown.cancelled() => break "the JobTracker is shutting down".to_string(),
            }
        };
        registration.reason = reason;
    }

    async fn handle(&self, m: pb::WorkerMessage) -> crate::error::Result<()> {
        let t = &self.tracker;
        match m.kind {
            Some(Kind::Credit(c)) => {
                t.dispatcher
                    .add_credits(&self.group, self.conn, c.credits, c.ahead_credits)
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
                t.store.started(&runs, &self.identity, at).await?;
                self.cancel_superseded(unknown).await?;
            }
            Some(Kind::Outcomes(o)) => self.outcomes(o.reports).await?,
            Some(Kind::BizLogs(b)) => {
                let entries = b
                    .lines
                    .into_iter()
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
                t.store.append_logs(entries).await?;
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
        let mut acks = Vec::with_capacity(reports.len());
        let mut runs = Vec::with_capacity(reports.len());
        let mut valid = Vec::with_capacity(reports.len());
        for r in reports {
            acks.push(pb::RunRef {
                job_id: r.job_id.clone(),
                attempt: r.attempt,
            });
            runs.push((r.job_id.clone(), r.attempt));
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
        let kinds: Vec<&'static str> = valid.iter().map(|r| r.outcome.kind()).collect();
        let results = t.store.complete(valid, lts_common::now_ms()).await?;
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
