//! `JobService`: submit, query, cancel and feedback for JobClients.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use lts_common::convert::job_state_from_wire;
use lts_common::limits::{check_node_group, MAX_BATCH, MAX_LOG_MESSAGE_BYTES};
use lts_common::{JobSpec, JobState, ValidationError};
use lts_proto::v1 as pb;
use pb::job_service_server::JobService;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Need;
use crate::error::Error;
use crate::feedback::FEEDBACK_STREAM_CAPACITY;
use crate::outbound::{entry_len, peer_channel, MESSAGE_BUDGET_BYTES};
use crate::store::{ListFilter, SubmitRefusal, SubmitResult};
use crate::Tracker;

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// The `JobService` implementation.
#[derive(Clone)]
pub struct JobApi {
    tracker: Arc<Tracker>,
}

impl JobApi {
    /// The service over a tracker's state.
    pub fn new(tracker: Arc<Tracker>) -> Self {
        JobApi { tracker }
    }
}

fn page_size(n: u32) -> usize {
    match n as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

/// Most encoded bytes of one log entry: its message is cut at
/// [`MAX_LOG_MESSAGE_BYTES`]; ids, worker identity (at most 256 bytes),
/// times and tags take the rest.
const MAX_LOG_ENTRY_BYTES: usize = MAX_LOG_MESSAGE_BYTES + 512;

/// Most entries of a log page: as many of the largest entries as fit
/// [`MESSAGE_BUDGET_BYTES`] (about 350), so a page of long lines stays
/// under the message limit; a reader follows the page token for the rest.
const MAX_LOG_PAGE: usize = MESSAGE_BUDGET_BYTES / MAX_LOG_ENTRY_BYTES;

fn log_page_size(n: u32) -> usize {
    page_size(n).min(MAX_LOG_PAGE)
}

fn refused(code: &str, field: &str, message: String) -> pb::SubmitResult {
    pb::SubmitResult {
        result: Some(pb::submit_result::Result::Error(pb::SubmitError {
            code: code.into(),
            field: field.into(),
            message,
            existing_job_id: String::new(),
        })),
    }
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl JobService for JobApi {
    async fn submit_jobs(
        &self,
        request: Request<pb::SubmitJobsRequest>,
    ) -> Result<Response<pb::SubmitJobsResponse>, Status> {
        let caller = self.tracker.caller(&request, "submit")?;
        // With auth on the budget is the credential's, wherever its calls
        // come from; with auth off, the peer address's.
        let key = match &caller.principal {
            Some(p) => crate::limits::RateKey::Credential(p.name.clone()),
            None => crate::limits::RateKey::Peer(request.remote_addr().map(|a| a.ip())),
        };
        if let Err(wait) = self.tracker.submit_rate.take(&key) {
            self.tracker.metrics.limit_hit("submit_rate");
            return Err(Status::resource_exhausted(format!(
                "too many submits from {key}: at most {} calls per second (--max-submits-per-second); retry in {} ms",
                self.tracker.config.limits.max_submits_per_second,
                wait.as_millis().max(1)
            )));
        }
        let jobs = request.into_inner().jobs;
        if !caller.unlimited(Need::Submit) {
            for (i, job) in jobs.iter().enumerate() {
                caller.require(
                    Need::Submit,
                    &job.submit_node_group,
                    &format!("submit (jobs[{i}].submit_node_group)"),
                )?;
            }
        }
        if jobs.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "jobs: a batch holds at most {MAX_BATCH} jobs, this one {}",
                jobs.len()
            )));
        }
        let mut results: Vec<Option<pb::SubmitResult>> = vec![None; jobs.len()];
        let mut valid: Vec<JobSpec> = Vec::with_capacity(jobs.len());
        let mut valid_at = Vec::with_capacity(jobs.len());
        let now = lts_common::now_ms();
        let max_groups = self.tracker.config.limits.max_node_groups_per_submit;
        let mut named: std::collections::HashSet<String> = Default::default();
        let mut over_groups = 0u64;
        for (i, job) in jobs.into_iter().enumerate() {
            match JobSpec::try_from(job)
                .and_then(|spec| crate::store::check_recurring(&spec, now).map(|_| spec))
            {
                Ok(spec)
                    if !named.contains(&spec.task_tracker_node_group)
                        && named.len() >= max_groups =>
                {
                    over_groups += 1;
                    results[i] = Some(refused(
                        "RESOURCE_EXHAUSTED",
                        "task_tracker_node_group",
                        format!(
                            "jobs[{i}].task_tracker_node_group: this submit names more than {max_groups} node groups (--max-node-groups-per-submit); submit the jobs of further groups in other calls"
                        ),
                    ));
                }
                Ok(spec) => {
                    named.insert(spec.task_tracker_node_group.clone());
                    valid.push(spec);
                    valid_at.push(i);
                }
                Err(ValidationError { field, message }) => {
                    results[i] = Some(refused(
                        "INVALID_ARGUMENT",
                        &field,
                        format!("jobs[{i}].{field}: {message}"),
                    ));
                }
            }
        }
        if over_groups > 0 {
            self.tracker
                .metrics
                .limited
                .with_label_values(&["node_groups_per_call"])
                .inc_by(over_groups);
        }
        // Quotas per node group: a job the group has no room for is
        // refused alone; the room the others take is held until the store
        // answers (see `crate::quota`).
        let reservation = if self.tracker.quotas.is_on() {
            let wanted: Vec<(&str, u64)> = valid
                .iter()
                .map(|s| {
                    (
                        s.task_tracker_node_group.as_str(),
                        crate::store::quota_bytes(s),
                    )
                })
                .collect();
            let (verdicts, reservation) = self.tracker.quotas.reserve(&wanted);
            drop(wanted);
            if verdicts.iter().any(Option::is_some) {
                let mut kept = Vec::with_capacity(valid.len());
                let mut kept_at = Vec::with_capacity(valid.len());
                for ((spec, i), over) in valid.into_iter().zip(valid_at).zip(verdicts) {
                    match over {
                        None => {
                            kept.push(spec);
                            kept_at.push(i);
                        }
                        Some(over) => {
                            self.tracker.metrics.limit_hit(over.limit());
                            results[i] = Some(refused(
                                "RESOURCE_EXHAUSTED",
                                "task_tracker_node_group",
                                over.message(i, &spec.task_tracker_node_group),
                            ));
                        }
                    }
                }
                valid = kept;
                valid_at = kept_at;
            }
            Some(reservation)
        } else {
            None
        };
        let groups: Vec<String> = {
            let mut g: Vec<String> = valid
                .iter()
                .map(|s| s.task_tracker_node_group.clone())
                .collect();
            g.sort();
            g.dedup();
            g
        };
        // Only cron and repeat jobs give the cycle scheduler work.
        let recurring = valid.iter().any(|s| s.schedule.is_recurring());
        let stored = self
            .tracker
            .store
            .submit(valid, lts_common::now_ms())
            .await
            .map_err(Status::from)?;
        if let Some(reservation) = reservation {
            reservation.settle(|i| !matches!(stored.get(i), Some(SubmitResult::Refused(_))));
        }
        let mut created = 0u64;
        for (i, result) in valid_at.into_iter().zip(stored) {
            results[i] = Some(match result {
                SubmitResult::Created(job_id) => {
                    created += 1;
                    pb::SubmitResult {
                        result: Some(pb::submit_result::Result::JobId(job_id)),
                    }
                }
                SubmitResult::Replaced { job_id, replaced } => {
                    created += 1;
                    if replaced.state == JobState::Running {
                        self.tracker.dispatcher.cancel_run(
                            &replaced.spec.task_tracker_node_group,
                            &replaced.worker,
                            &replaced.job_id,
                            replaced.attempt,
                            "replaced by a new submit with the same task id",
                        );
                    }
                    pb::SubmitResult {
                        result: Some(pb::submit_result::Result::JobId(job_id)),
                    }
                }
                SubmitResult::Refused(SubmitRefusal::AlreadyExists { job_id }) => {
                    pb::SubmitResult {
                        result: Some(pb::submit_result::Result::Error(pb::SubmitError {
                            code: "ALREADY_EXISTS".into(),
                            field: "task_id".into(),
                            message: format!(
                                "jobs[{i}].task_id: a job with this task id exists in the node group ({job_id}); set replace_on_exist to replace it"
                            ),
                            existing_job_id: job_id,
                        })),
                    }
                }
                SubmitResult::Refused(SubmitRefusal::Unsupported { field, message }) => {
                    refused("UNIMPLEMENTED", &field, format!("jobs[{i}].{field}: {message}"))
                }
            });
        }
        self.tracker.metrics.submitted.inc_by(created);
        if recurring {
            self.tracker.scheduler.notify_one();
        }
        // A store that can says earlier, as soon as the jobs can be claimed
        // (before they are durable); see `JobStore::on_claimable`.
        for g in &groups {
            self.tracker.dispatcher.wake(g);
        }
        Ok(Response::new(pb::SubmitJobsResponse {
            results: results.into_iter().map(|r| r.unwrap_or_default()).collect(),
        }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let caller = self
            .tracker
            .caller_for(&request, "get-job", &request.get_ref().job_id)?;
        let r = request.into_inner();
        let store = &self.tracker.store;
        let job = if !r.job_id.is_empty() {
            store.get(&r.job_id).await?
        } else if !r.task_id.is_empty() {
            check_node_group(&r.task_tracker_node_group)
                .map_err(|m| ValidationError::new("task_tracker_node_group", m))?;
            store
                .get_by_task(&r.task_tracker_node_group, &r.task_id)
                .await?
        } else {
            return Err(Status::invalid_argument(
                "job_id: give a job id, or a task id with its node group",
            ));
        };
        let named = if r.job_id.is_empty() {
            format!("{}/{}", r.task_tracker_node_group, r.task_id)
        } else {
            r.job_id.clone()
        };
        caller.require_job(Need::Read, job.as_ref(), &named, "get-job")?;
        match job {
            Some(job) => Ok(Response::new(pb::GetJobResponse {
                job: Some(job.into()),
            })),
            None if !r.job_id.is_empty() => Err(Error::NotFound(r.job_id).into()),
            None => Err(Status::not_found(format!(
                "no job with task id {} in node group {}",
                r.task_id, r.task_tracker_node_group
            ))),
        }
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = self.tracker.caller(&request, "list-jobs")?;
        let r = request.into_inner();
        if !caller.unlimited(Need::Operate) {
            caller.require(Need::Operate, &r.task_tracker_node_group, "list-jobs")?;
        }
        Ok(Response::new(list_jobs(&self.tracker, r).await?))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let caller = self
            .tracker
            .caller_for(&request, "cancel", &request.get_ref().job_id)?;
        let job_id = request.into_inner().job_id;
        if job_id.is_empty() {
            return Err(Status::invalid_argument("job_id: is empty"));
        }
        self.tracker
            .check_job(&caller, Need::Operate, &job_id, "cancel")
            .await?;
        let job = self.tracker.cancel_job(&job_id).await?;
        caller.audit("cancel", &job_id);
        Ok(Response::new(pb::CancelJobResponse {
            job: Some(job.into()),
        }))
    }

    async fn get_job_log(
        &self,
        request: Request<pb::GetJobLogRequest>,
    ) -> Result<Response<pb::GetJobLogResponse>, Status> {
        let caller = self
            .tracker
            .caller_for(&request, "get-job-log", &request.get_ref().job_id)?;
        let r = request.into_inner();
        if r.job_id.is_empty() {
            return Err(Status::invalid_argument("job_id: is empty"));
        }
        self.tracker
            .check_job(&caller, Need::Read, &r.job_id, "get-job-log")
            .await?;
        let (entries, next) = self
            .tracker
            .store
            .logs(
                &r.job_id,
                log_page_size(r.page_size),
                opt(r.page_token).as_deref(),
            )
            .await?;
        if entries.is_empty() && self.tracker.store.get(&r.job_id).await?.is_none() {
            return Err(Error::NotFound(r.job_id).into());
        }
        Ok(Response::new(pb::GetJobLogResponse {
            entries: entries.into_iter().map(Into::into).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn list_logs(
        &self,
        request: Request<pb::ListLogsRequest>,
    ) -> Result<Response<pb::ListLogsResponse>, Status> {
        let caller = self.tracker.caller(&request, "list-logs")?;
        let r = request.into_inner();
        if !caller.unlimited(Need::Operate) {
            caller.require(Need::Operate, &r.task_tracker_node_group, "list-logs")?;
        }
        if !r.task_tracker_node_group.is_empty() {
            check_node_group(&r.task_tracker_node_group)
                .map_err(|m| ValidationError::new("task_tracker_node_group", m))?;
        }
        if r.since_unix_ms > 0 && r.until_unix_ms > 0 && r.until_unix_ms <= r.since_unix_ms {
            return Err(Status::invalid_argument(
                "until_unix_ms: is not after since_unix_ms",
            ));
        }
        if !caller.unlimited(Need::Operate) {
            // The store reads the log of a job named by `job_id`, or inside
            // which a page token goes on, without looking at its node
            // group: such a job must be one of the caller's (the same
            // answer for another group's job as for none).
            let inside = r.page_token.split_once('/').map(|(job, _)| job);
            for job_id in [Some(r.job_id.as_str()), inside].into_iter().flatten() {
                if !job_id.is_empty() {
                    self.tracker
                        .check_job(&caller, Need::Operate, job_id, "list-logs")
                        .await?;
                }
            }
        }
        let filter = crate::store::LogFilter {
            job_id: opt(r.job_id),
            task_id: opt(r.task_id),
            node_group: opt(r.task_tracker_node_group),
            since_ms: (r.since_unix_ms > 0).then_some(r.since_unix_ms),
            until_ms: (r.until_unix_ms > 0).then_some(r.until_unix_ms),
        };
        let (entries, next) = self
            .tracker
            .store
            .query_logs(
                &filter,
                log_page_size(r.page_size),
                opt(r.page_token).as_deref(),
            )
            .await?;
        Ok(Response::new(pb::ListLogsResponse {
            entries: entries.into_iter().map(Into::into).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    type FeedbackStream =
        Pin<Box<dyn Stream<Item = Result<pb::FeedbackServerMessage, Status>> + Send + 'static>>;

    async fn feedback(
        &self,
        request: Request<Streaming<pb::FeedbackClientMessage>>,
    ) -> Result<Response<Self::FeedbackStream>, Status> {
        let caller = self.tracker.caller(&request, "feedback")?;
        let mut inbound = request.into_inner();
        let first = inbound.message().await?;
        let subscribe = match first.and_then(|m| m.kind) {
            Some(pb::feedback_client_message::Kind::Subscribe(s)) => s,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a feedback stream must be a subscribe",
                ))
            }
        };
        let group = subscribe.submit_node_group;
        check_node_group(&group)
            .map_err(|m| ValidationError::new("subscribe.submit_node_group", m))?;
        caller.require(Need::Feedback, &group, "feedback")?;
        let (tx, rx) = peer_channel(FEEDBACK_STREAM_CAPACITY);
        let router = self.tracker.feedback.clone();
        lts_common::limits::check_len(
            "subscribe.client_id",
            &subscribe.client_id,
            lts_common::limits::MAX_IDENTITY_LEN,
        )
        .map_err(|m| {
            self.tracker.metrics.limit_hit("field_length");
            Status::invalid_argument(m)
        })?;
        let subscription = router.subscribe(&group, tx.clone());
        let sub = subscription.id();
        let client = subscribe.client_id;
        let metrics = self.tracker.metrics.clone();
        tracing::debug!(%group, %client, "feedback subscriber joined");
        let shutdown = self.tracker.shutdown.clone();
        self.tracker.tasks.spawn(async move {
            let mut warned_foreign_acks = false;
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = tx.closed() => {
                        tracing::info!(%group, %client, "feedback stream closed: the client did not read it");
                        break;
                    }
                    _ = shutdown.cancelled() => {
                        tx.close(Status::unavailable("the JobTracker is shutting down"));
                        break;
                    }
                };
                match msg {
                    Ok(Some(pb::FeedbackClientMessage {
                        kind: Some(pb::feedback_client_message::Kind::Ack(ack)),
                    })) => {
                        if let Err(why) = check_ack(&ack) {
                            metrics.limit_hit("field_length");
                            tracing::warn!(%group, %client, "refused a feedback ack: {why}");
                            tx.close(Status::invalid_argument(why));
                            break;
                        }
                        match router.ack(&group, sub, ack.feedback_ids).await {
                            Ok(0) => {}
                            Ok(n) => {
                                if !warned_foreign_acks {
                                    warned_foreign_acks = true;
                                    tracing::warn!(%group, %client, "ignored acks of {n} feedback items this stream was not sent (logged once per stream)");
                                }
                            }
                            Err(e) => tracing::warn!(%group, "cannot store a feedback ack: {e}"),
                        }
                    }
                    Ok(Some(_)) => {
                        tracing::debug!(%group, %client, "ignoring a second subscribe on a feedback stream");
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(%group, %client, "feedback stream ended: {e}");
                        break;
                    }
                }
            }
            drop(subscription);
        });
        Ok(Response::new(Box::pin(rx)))
    }
}

/// Checks the ids of a feedback ack before any is looked at.
fn check_ack(ack: &pb::FeedbackAck) -> Result<(), String> {
    use lts_common::limits::{check_count, check_len, MAX_ITEMS_PER_MESSAGE, MAX_JOB_ID_LEN};
    check_count(
        "ack.feedback_ids",
        ack.feedback_ids.len(),
        MAX_ITEMS_PER_MESSAGE,
    )?;
    for (i, id) in ack.feedback_ids.iter().enumerate() {
        check_len(&format!("ack.feedback_ids[{i}]"), id, MAX_JOB_ID_LEN)?;
    }
    Ok(())
}

/// Lists jobs by the filters of a request; shared by the job and admin
/// services.
pub async fn list_jobs(
    tracker: &Tracker,
    r: pb::ListJobsRequest,
) -> Result<pb::ListJobsResponse, Status> {
    let state =
        match r.state {
            0 => None,
            v => Some(job_state_from_wire(v).ok_or_else(|| {
                Status::invalid_argument(format!("state: {v} is not a job state"))
            })?),
        };
    let filter = ListFilter {
        node_group: opt(r.task_tracker_node_group),
        state,
        task_id_prefix: opt(r.task_id_prefix),
        kind: match r.kind {
            0 => None,
            v => Some(
                lts_common::convert::schedule_kind_from_wire(v).ok_or_else(|| {
                    Status::invalid_argument(format!("kind: {v} is not a schedule kind"))
                })?,
            ),
        },
    };
    let page = list_page(
        tracker,
        &filter,
        page_size(r.page_size),
        opt(r.page_token),
        r.include_payload,
    )
    .await?;
    Ok(page)
}

/// Jobs asked of the store by the first call while a page is built; later
/// calls ask for as many as [`LIST_CHUNK_BYTES`] of jobs like the ones seen.
const LIST_FIRST_CHUNK: usize = 32;

/// About how many bytes of stored jobs (payloads included) one store call
/// of a listing loads: four listings of 1000 jobs of 1 MiB each once held
/// gigabytes.
const LIST_CHUNK_BYTES: usize = 16 * 1024 * 1024;

/// Room kept in a page for everything but its jobs (the page token).
const PAGE_OVERHEAD_BYTES: usize = 1024;

/// Builds a page of at most `page_size` jobs and at most
/// [`MESSAGE_BUDGET_BYTES`] (one job more only when a single job is larger),
/// asking the store for a few jobs at a time so that a listing never holds
/// more than a chunk of stored jobs besides its page. The page token is
/// the last job id of the page, as the stores give it.
async fn list_page(
    tracker: &Tracker,
    filter: &ListFilter,
    page_size: usize,
    mut token: Option<String>,
    include_payload: bool,
) -> Result<pb::ListJobsResponse, Status> {
    let budget = MESSAGE_BUDGET_BYTES - PAGE_OVERHEAD_BYTES;
    let mut jobs: Vec<pb::Job> = Vec::new();
    let mut bytes = 0usize;
    let mut seen = 0usize;
    let mut seen_bytes = 0usize;
    loop {
        let left = page_size - jobs.len();
        let ask = match seen_bytes.checked_div(seen) {
            None => left.min(LIST_FIRST_CHUNK),
            Some(per_job) => left.min((LIST_CHUNK_BYTES / per_job.max(1)).max(1)),
        };
        let (chunk, next) = tracker.store.list(filter, ask, token.as_deref()).await?;
        if chunk.is_empty() {
            // Nothing more matched (a store gives no token then); a
            // token anyway is the store's to continue from.
            return Ok(pb::ListJobsResponse {
                jobs,
                next_page_token: next.unwrap_or_default(),
            });
        }
        for job in chunk {
            let job_id = job.job_id.clone();
            let mut wire = pb::Job::from(job);
            seen += 1;
            seen_bytes += entry_len(&wire);
            if !include_payload {
                if let Some(spec) = wire.spec.as_mut() {
                    spec.payload = Vec::new();
                    spec.params.clear();
                }
            }
            let len = entry_len(&wire);
            if !jobs.is_empty() && bytes + len > budget {
                // Full by bytes: the next page starts at this job.
                return Ok(pb::ListJobsResponse {
                    jobs,
                    next_page_token: token.unwrap_or_default(),
                });
            }
            bytes += len;
            jobs.push(wire);
            token = Some(job_id);
        }
        if next.is_none() {
            return Ok(pb::ListJobsResponse {
                jobs,
                next_page_token: String::new(),
            });
        }
        if jobs.len() >= page_size {
            return Ok(pb::ListJobsResponse {
                jobs,
                next_page_token: token.unwrap_or_default(),
            });
        }
    }
}
