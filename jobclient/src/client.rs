//! [`JobClient`]: submit, query and cancel jobs on any of several
//! JobTrackers.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lts_common::convert::job_state_from_wire;
use lts_common::endpoint::TrackerChannel as Channel;
pub use lts_common::endpoint::{ClientTls, Token};
use lts_common::endpoint::{EndpointOptions, JobTrackerEndpoint};
use lts_common::limits::{MAX_BATCH, MAX_MESSAGE_BYTES};
use lts_common::resolver::{Resolver, ResolverError, StaticResolver};
use lts_common::{Job, JobSpec, JobState, LogEntry, Outcome, ScheduleKind};
use lts_proto::v1 as pb;
use lts_proto::v1::admin_service_client::AdminServiceClient;
use lts_proto::v1::job_service_client::JobServiceClient;
use prost::Message;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::feedback::FeedbackSubscription;

/// The address the CLI and the examples use when none is given.
pub const DEFAULT_JOBTRACKER: &str = "http://127.0.0.1:7070";

/// Room left in a submit request for everything but the job specs.
const REQUEST_OVERHEAD_BYTES: usize = 64 * 1024;

/// Page size used when [`JobClient::log`] reads every page.
const LOG_PAGE_SIZE: u32 = 1000;

/// How a [`JobClient`] talks to its trackers.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Longest wait for a TCP + HTTP/2 connection to one tracker before the
    /// next one is tried.
    pub connect_timeout: Duration,
    /// Longest wait for the answer to one call (not the feedback stream).
    pub request_timeout: Duration,
    /// TLS to the trackers (a CA, and a client certificate for mutual
    /// TLS); with it every address is reached over TLS. `None`: plaintext,
    /// and an `https://` address is refused naming it.
    pub tls: Option<ClientTls>,
    /// Bearer token sent with every call, for trackers that run with a
    /// token file.
    pub token: Option<Token>,
    /// Small submits made at the same time share `SubmitJobs` calls
    /// (see [`crate::coalesce`]); each still returns once its own jobs are
    /// stored, with its own outcomes. On by default.
    pub coalesce_submits: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            tls: None,
            token: None,
            coalesce_submits: true,
        }
    }
}

/// What became of one submitted job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
// Callers must not assume these are all there is.
#[non_exhaustive]
pub enum SubmitOutcome {
    /// The tracker stored the job: it survives a crash of that tracker.
    Accepted {
        /// The caller's key.
        task_id: String,
        /// The id the tracker gave the job.
        job_id: String,
    },
    /// The tracker refused the job; nothing was stored for it.
    Refused(SubmitRefusal),
    /// No tracker accepted the job; a [`crate::SpoolingClient`] keeps it in
    /// its spool on disk and replays it later.
    Spooled {
        /// The caller's key (assigned by the spool when the job had none).
        task_id: String,
    },
}

/// Why a tracker refused a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SubmitRefusal {
    /// The caller's key.
    pub task_id: String,
    /// A gRPC status code name, e.g. `INVALID_ARGUMENT`, `ALREADY_EXISTS`.
    pub code: String,
    /// The offending field, when one is to blame; may be empty.
    pub field: String,
    /// What is wrong, for people.
    pub message: String,
    /// For `ALREADY_EXISTS`: the job that holds the task id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub existing_job_id: Option<String>,
}

impl SubmitOutcome {
    /// The caller's key of the job.
    pub fn task_id(&self) -> &str {
        match self {
            SubmitOutcome::Accepted { task_id, .. } => task_id,
            SubmitOutcome::Refused(r) => &r.task_id,
            SubmitOutcome::Spooled { task_id } => task_id,
        }
    }

    /// The job id, when the job was accepted.
    pub fn job_id(&self) -> Option<&str> {
        match self {
            SubmitOutcome::Accepted { job_id, .. } => Some(job_id),
            SubmitOutcome::Refused(_) | SubmitOutcome::Spooled { .. } => None,
        }
    }

    /// Whether the job was stored.
    pub fn is_accepted(&self) -> bool {
        matches!(self, SubmitOutcome::Accepted { .. })
    }
}

/// Which jobs [`JobClient::list`] returns. The default is every job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs of this task tracker node group.
    pub node_group: Option<String>,
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs whose task id starts with this.
    pub task_id_prefix: Option<String>,
    /// Only jobs with this kind of schedule.
    pub kind: Option<ScheduleKind>,
    /// Not a filter: also return each job's payload and params, which
    /// pages leave out unless asked (a payload may be 1 MiB);
    /// [`JobClient::get`] always returns them.
    pub include_payload: bool,
}

/// Which execution log lines [`JobClient::query_logs`] returns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogQuery {
    /// Only this job.
    pub job_id: Option<String>,
    /// Only jobs with exactly this task id.
    pub task_id: Option<String>,
    /// Only jobs of this node group.
    pub node_group: Option<String>,
    /// Only lines at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Only lines before this time (Unix ms).
    pub until_ms: Option<i64>,
}

/// One page of [`JobClient::query_logs`].
#[derive(Clone, Debug, PartialEq)]
pub struct LogPage {
    /// The lines, job by job.
    pub entries: Vec<LogEntry>,
    /// Pass it to the next call for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// One page of [`JobClient::list`].
#[derive(Clone, Debug, PartialEq)]
pub struct JobPage {
    /// The jobs of this page.
    pub jobs: Vec<Job>,
    /// Pass it to the next call for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// One feedback item: the outcome of a job that asked for feedback.
#[derive(Clone, Debug, PartialEq)]
pub struct Feedback {
    /// Id to pass to [`FeedbackSubscription::ack`].
    pub feedback_id: String,
    /// The job.
    pub job_id: String,
    /// Its task id.
    pub task_id: String,
    /// Where it ran.
    pub task_tracker_node_group: String,
    /// The run that finished.
    pub attempt: u32,
    /// Final state of the job, or pending for one cycle of a recurring job;
    /// `None` when the tracker sent a state this client does not know.
    pub state: Option<JobState>,
    /// The run's outcome, when the tracker sent a readable one.
    pub outcome: Option<Outcome>,
    /// When the run finished (Unix milliseconds).
    pub finished_at_ms: i64,
}

impl From<pb::FeedbackItem> for Feedback {
    fn from(f: pb::FeedbackItem) -> Self {
        Feedback {
            feedback_id: f.feedback_id,
            job_id: f.job_id,
            task_id: f.task_id,
            task_tracker_node_group: f.task_tracker_node_group,
            attempt: f.attempt,
            state: job_state_from_wire(f.state),
            outcome: f.outcome.and_then(|o| Outcome::try_from(o).ok()),
            finished_at_ms: f.finished_at_unix_ms,
        }
    }
}

fn endpoint_options(options: &ClientOptions) -> EndpointOptions {
    EndpointOptions::default()
        .with_connect_timeout(options.connect_timeout)
        .with_request_timeout(options.request_timeout)
        .with_tls(options.tls.clone())
        .with_token(options.token.clone())
}

/// A client of the JobTrackers' `JobService`.
///
/// It holds several tracker addresses, picks one at random, and sticks to it
/// until it fails; then it tries the others in turn (a call fails with
/// [`Error::Unavailable`] only when none answers). Cloning is cheap and
/// clones share the connection.
///
/// A call that is cut off mid-way may be retried on another tracker. For a
/// submit this is safe because trackers dedup on the task id: a job the
/// first tracker did store comes back refused with `ALREADY_EXISTS` and its
/// [`SubmitRefusal::existing_job_id`].
#[derive(Clone, Debug)]
pub struct JobClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    // Which tracker to try, in which order; it also remembers the tracker
    // in use and the one that failed last.
    resolver: Arc<dyn Resolver>,
    endpoint_options: EndpointOptions,
    // std Mutex: only held to read or swap the sticky connection, never
    // across an await.
    current: Mutex<Option<Connected>>,
    // In cluster mode, the ZooKeeper session that keeps the resolver's
    // list current; it closes with the last clone of the client.
    cluster: Option<Arc<lts_cluster::Cluster>>,
    // Small submits waiting to share a call, when `coalesce_submits`.
    coalesce: bool,
    coalescer: crate::coalesce::Coalescer,
}

#[derive(Clone, Debug)]
struct Connected {
    address: String,
    // The channel, not a service client: `JobService` and `AdminService`
    // calls share one connection and one failover state.
    channel: Channel,
}

/// Whether a call failed in a way that lets the next tracker be tried.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Only when the tracker could not be reached (safe for every call).
    Unreachable,
    /// Also when the tracker did not answer in time (reads and cancels).
    UnreachableOrSlow,
}

impl JobClient {
    /// Checks the addresses (`http://host:port` or `host:port`) and makes a
    /// client that connects on its first call. Use it when trackers may be
    /// down at start-up. An `https://` address is refused unless
    /// [`ClientOptions::tls`] is set.
    pub fn new(addrs: Vec<String>, options: ClientOptions) -> Result<Self> {
        let resolver = StaticResolver::new(&addrs).map_err(|e| match e {
            ResolverError::NoAddresses => Error::NoAddresses,
            ResolverError::Address(e) => Error::InvalidAddress(e),
        })?;
        let endpoint_options = endpoint_options(&options);
        for address in &addrs {
            for one in address.split(',').filter(|a| !a.trim().is_empty()) {
                JobTrackerEndpoint::new(one, &endpoint_options)?;
            }
        }
        Ok(Self::with_resolver(Arc::new(resolver), options))
    }

    /// A client that asks `resolver` which trackers to try, for a list of
    /// trackers that changes while the client runs. It connects on its
    /// first call.
    pub fn with_resolver(resolver: Arc<dyn Resolver>, options: ClientOptions) -> Self {
        Self::build(resolver, options, None)
    }

    /// A client over `resolver` that holds `cluster` (the session feeding
    /// the resolver) for as long as it lives.
    pub(crate) fn in_cluster(
        resolver: Arc<dyn Resolver>,
        options: ClientOptions,
        cluster: Arc<lts_cluster::Cluster>,
    ) -> Self {
        Self::build(resolver, options, Some(cluster))
    }

    fn build(
        resolver: Arc<dyn Resolver>,
        options: ClientOptions,
        cluster: Option<Arc<lts_cluster::Cluster>>,
    ) -> Self {
        let endpoint_options = endpoint_options(&options);
        JobClient {
            inner: Arc::new(Inner {
                resolver,
                endpoint_options,
                current: Mutex::new(None),
                cluster,
                coalesce: options.coalesce_submits,
                coalescer: Default::default(),
            }),
        }
    }

    /// Connects to one of the trackers, chosen at random; fails with
    /// [`Error::Unavailable`] naming every address when none answers.
    pub async fn connect(addrs: Vec<String>) -> Result<Self> {
        Self::connect_with(addrs, ClientOptions::default()).await
    }

    /// [`JobClient::connect`] with options.
    pub async fn connect_with(addrs: Vec<String>, options: ClientOptions) -> Result<Self> {
        let client = Self::new(addrs, options)?;
        client.ensure_connected().await?;
        Ok(client)
    }

    /// The tracker addresses, normalized to `http://host:port`.
    pub fn addresses(&self) -> Vec<String> {
        self.inner.resolver.watch().borrow().clone()
    }

    /// Longest wait for the answer to one call.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.endpoint_options.request_timeout
    }

    /// In cluster mode ([`JobClient::connect_cluster`]), every node
    /// registered in the cluster and the master, kept current; `None` for
    /// a client given addresses.
    pub fn cluster_nodes(&self) -> Option<tokio::sync::watch::Receiver<lts_cluster::ClusterView>> {
        self.inner.cluster.as_ref().map(|c| c.view())
    }

    /// The tracker this client sticks to now, if it has connected.
    pub fn current_address(&self) -> Option<String> {
        self.sticky().map(|c| c.address)
    }

    /// Submits jobs; one outcome per job, in order. Batches larger than
    /// [`MAX_BATCH`] jobs or the message size limit go as several requests.
    ///
    /// The tracker validates every job; a refused job does not stop the
    /// others. When a later request of a large batch fails, the error is
    /// [`Error::PartialSubmit`] with the outcomes of the jobs sent so far.
    pub async fn submit(&self, jobs: Vec<JobSpec>) -> Result<Vec<SubmitOutcome>> {
        self.submit_wire(jobs.into_iter().map(pb::JobSpec::from).collect())
            .await
    }

    /// The queue of small submits sharing calls.
    pub(crate) fn coalescer(&self) -> &crate::coalesce::Coalescer {
        &self.inner.coalescer
    }

    /// [`JobClient::submit`] of specs already in their wire form.
    pub(crate) async fn submit_wire(&self, wire: Vec<pb::JobSpec>) -> Result<Vec<SubmitOutcome>> {
        if self.inner.coalesce {
            if let Some(bytes) = crate::coalesce::coalescable(&wire) {
                return self.submit_coalesced(wire, bytes).await;
            }
        }
        let mut outcomes = Vec::with_capacity(wire.len());
        for chunk in split_batches(wire) {
            match self.submit_chunk(chunk).await {
                Ok(mut chunk_outcomes) => outcomes.append(&mut chunk_outcomes),
                Err(e) if outcomes.is_empty() => return Err(e),
                Err(e) => {
                    return Err(Error::PartialSubmit {
                        submitted: outcomes,
                        source: Box::new(e),
                    })
                }
            }
        }
        Ok(outcomes)
    }

    pub(crate) async fn submit_chunk(&self, chunk: Vec<pb::JobSpec>) -> Result<Vec<SubmitOutcome>> {
        let task_ids: Vec<String> = chunk.iter().map(|j| j.task_id.clone()).collect();
        let request = pb::SubmitJobsRequest { jobs: chunk };
        let (address, response) = self
            .call(Retry::Unreachable, |mut client, timeout| {
                let request = request.clone();
                async move { client.submit_jobs(with_timeout(request, timeout)).await }
            })
            .await?;
        let results = response.results;
        if results.len() != task_ids.len() {
            return Err(Error::InvalidResponse {
                address,
                reason: format!(
                    "{} results for {} submitted jobs",
                    results.len(),
                    task_ids.len()
                ),
            });
        }
        task_ids
            .into_iter()
            .zip(results)
            .map(|(task_id, r)| submit_outcome(&address, task_id, r))
            .collect()
    }

    /// The job with this id; [`Error::is_not_found`] when there is none.
    pub async fn get(&self, job_id: &str) -> Result<Job> {
        let request = pb::GetJobRequest {
            job_id: job_id.to_string(),
            ..Default::default()
        };
        self.get_job(request).await
    }

    /// The job with this task id in this task tracker node group.
    pub async fn get_by_task(&self, task_id: &str, node_group: &str) -> Result<Job> {
        let request = pb::GetJobRequest {
            task_id: task_id.to_string(),
            task_tracker_node_group: node_group.to_string(),
            ..Default::default()
        };
        self.get_job(request).await
    }

    async fn get_job(&self, request: pb::GetJobRequest) -> Result<Job> {
        let (address, response) = self
            .call(Retry::UnreachableOrSlow, |mut client, timeout| {
                let request = request.clone();
                async move { client.get_job(with_timeout(request, timeout)).await }
            })
            .await?;
        read_job(&address, response.job)
    }

    /// One page of jobs. `page_size` 0 lets the tracker choose (100); it
    /// caps it at 1000. `page_token` is `None` for the first page.
    pub async fn list(
        &self,
        filter: &JobFilter,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<JobPage> {
        let request = list_request(filter, page_size, page_token);
        let (address, response) = self
            .call(Retry::UnreachableOrSlow, |mut client, timeout| {
                let request = request.clone();
                async move { client.list_jobs(with_timeout(request, timeout)).await }
            })
            .await?;
        read_page(&address, filter, response)
    }

    /// Cancels a job and returns it as it is now. Cancelling a job that has
    /// already finished is up to the tracker (it reports it unchanged or
    /// refuses with `FAILED_PRECONDITION`).
    pub async fn cancel(&self, job_id: &str) -> Result<Job> {
        let request = pb::CancelJobRequest {
            job_id: job_id.to_string(),
        };
        // Cancelling twice has the effect of cancelling once, so a slow
        // tracker may be skipped like for reads.
        let (address, response) = self
            .call(Retry::UnreachableOrSlow, |mut client, timeout| {
                let request = request.clone();
                async move { client.cancel_job(with_timeout(request, timeout)).await }
            })
            .await?;
        read_job(&address, response.job)
    }

    /// The whole execution log of a job, oldest first (every page).
    pub async fn log(&self, job_id: &str) -> Result<Vec<LogEntry>> {
        let mut entries = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = pb::GetJobLogRequest {
                job_id: job_id.to_string(),
                page_size: LOG_PAGE_SIZE,
                page_token: page_token.clone(),
            };
            let (address, response) = self
                .call(Retry::UnreachableOrSlow, |mut client, timeout| {
                    let request = request.clone();
                    async move { client.get_job_log(with_timeout(request, timeout)).await }
                })
                .await?;
            entries.extend(response.entries.into_iter().map(LogEntry::from));
            if response.next_page_token.is_empty() {
                return Ok(entries);
            }
            if response.next_page_token == page_token {
                return Err(Error::InvalidResponse {
                    address,
                    reason: "the log's next page token repeats the last one".into(),
                });
            }
            page_token = response.next_page_token;
        }
    }

    /// One page of execution log lines of the jobs `query` selects, whole
    /// jobs per page (so a page may hold more lines than `page_size`).
    pub async fn query_logs(
        &self,
        query: &LogQuery,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<LogPage> {
        let request = pb::ListLogsRequest {
            job_id: query.job_id.clone().unwrap_or_default(),
            task_id: query.task_id.clone().unwrap_or_default(),
            task_tracker_node_group: query.node_group.clone().unwrap_or_default(),
            since_unix_ms: query.since_ms.unwrap_or(0),
            until_unix_ms: query.until_ms.unwrap_or(0),
            page_size,
            page_token: page_token.unwrap_or_default().to_string(),
        };
        let (_, response) = self
            .call(Retry::UnreachableOrSlow, |mut client, timeout| {
                let request = request.clone();
                async move { client.list_logs(with_timeout(request, timeout)).await }
            })
            .await?;
        Ok(LogPage {
            entries: response.entries.into_iter().map(LogEntry::from).collect(),
            next_page_token: Some(response.next_page_token).filter(|t| !t.is_empty()),
        })
    }

    /// Subscribes to the feedback of a submit node group. `client_id` names
    /// this client in the trackers' logs; empty picks a unique one.
    ///
    /// Feedback is delivered at least once: an item not acked (or whose ack
    /// was lost with a broken stream) comes again, maybe to another client
    /// of the same group. Handlers must be idempotent.
    pub async fn feedback(
        &self,
        submit_node_group: &str,
        client_id: &str,
    ) -> Result<FeedbackSubscription> {
        let client_id = if client_id.is_empty() {
            format!("jobclient-{}", uuid::Uuid::now_v7())
        } else {
            client_id.to_string()
        };
        FeedbackSubscription::open(self.clone(), submit_node_group.to_string(), client_id).await
    }

    /// Makes sure a tracker is connected, trying each address in turn.
    pub async fn ensure_connected(&self) -> Result<()> {
        if self.sticky().is_some() {
            return Ok(());
        }
        let mut tried = Vec::new();
        let mut last_error = String::from("no JobTracker address is known");
        for address in self.inner.resolver.addresses() {
            tried.push(address.clone());
            match self.connect_to(&address).await {
                Ok(_) => return Ok(()),
                Err(e) => last_error = e,
            }
        }
        Err(Error::Unavailable { tried, last_error })
    }

    /// Runs `f` on the `JobService` of the sticky tracker, or the next ones
    /// in turn when a tracker cannot be reached. Returns the address that
    /// answered.
    pub(crate) async fn call<T, F, Fut>(&self, retry: Retry, f: F) -> Result<(String, T)>
    where
        F: Fn(JobServiceClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_channel(retry, |channel, timeout| {
            let client = JobServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            f(client, timeout)
        })
        .await
    }

    /// [`JobClient::call`] on the `AdminService`.
    pub(crate) async fn admin_call<T, F, Fut>(&self, retry: Retry, f: F) -> Result<(String, T)>
    where
        F: Fn(AdminServiceClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_channel(retry, |channel, timeout| {
            let client = AdminServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            f(client, timeout)
        })
        .await
    }

    /// The failover loop under every call: `f` gets a channel to one
    /// tracker at a time, in the order the resolver gives.
    async fn call_channel<T, F, Fut>(&self, retry: Retry, f: F) -> Result<(String, T)>
    where
        F: Fn(Channel, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut tried = Vec::new();
        let mut last_error = String::from("no JobTracker address is known");
        for address in self.inner.resolver.addresses() {
            tried.push(address.clone());
            let channel = match self.sticky().filter(|c| c.address == address) {
                Some(c) => c.channel,
                None => match self.connect_to(&address).await {
                    Ok(channel) => channel,
                    Err(e) => {
                        last_error = e;
                        continue;
                    }
                },
            };
            match f(channel, self.request_timeout()).await {
                Ok(response) => return Ok((address, response.into_inner())),
                Err(status) => {
                    let unreachable = status.code() == tonic::Code::Unavailable;
                    let slow = status.code() == tonic::Code::DeadlineExceeded;
                    if unreachable || slow {
                        // Whatever this call does next, later calls should
                        // start with another tracker.
                        self.forget(&address);
                    }
                    if unreachable || (slow && retry == Retry::UnreachableOrSlow) {
                        tracing::warn!(
                            tracker = %address,
                            "JobTracker did not answer ({}); trying the next one",
                            status.message()
                        );
                        last_error = format!("{address}: {}", status_detail(&status));
                        continue;
                    }
                    return Err(Error::from_status(&address, status));
                }
            }
        }
        Err(Error::Unavailable { tried, last_error })
    }

    fn sticky(&self) -> Option<Connected> {
        self.inner
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `address` failed (unreachable, too slow, or its stream broke): drop
    /// its connection, and let the next call start with another tracker.
    pub(crate) fn forget(&self, address: &str) {
        {
            let mut current = self.inner.current.lock().unwrap_or_else(|e| e.into_inner());
            if current.as_ref().is_some_and(|c| c.address == address) {
                *current = None;
            }
        }
        self.inner.resolver.failed(address);
    }

    async fn connect_to(&self, address: &str) -> std::result::Result<Channel, String> {
        let connected = match JobTrackerEndpoint::new(address, &self.inner.endpoint_options) {
            Ok(endpoint) => endpoint.connect().await.map_err(|e| error_chain(&e)),
            // A resolver handed out an address this build cannot use.
            Err(e) => Err(e.to_string()),
        };
        match connected {
            Ok(channel) => {
                tracing::debug!(tracker = %address, "connected to JobTracker");
                *self.inner.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(Connected {
                    address: address.to_string(),
                    channel: channel.clone(),
                });
                self.inner.resolver.connected(address);
                Ok(channel)
            }
            Err(e) => {
                self.inner.resolver.failed(address);
                let reason = format!("{address}: {e}");
                tracing::debug!("cannot connect to JobTracker {reason}");
                Err(reason)
            }
        }
    }
}

/// A status's message with the chain of errors behind it, which for
/// transport failures holds the actual reason.
fn status_detail(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(source) => format!("{}: {}", status.message(), error_chain(source)),
        None => status.message().to_string(),
    }
}

pub(crate) fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Accepts `http://host:port` or `host:port` and returns
/// `http://host:port`; refuses `https://` (TLS is not configured in this
/// build) and anything else, naming the address. The same reading as every
/// other client of the JobTrackers.
pub fn normalize_address(raw: &str) -> Result<String> {
    Ok(lts_common::endpoint::normalize_address(raw)?)
}

/// Cuts specs into requests of at most [`MAX_BATCH`] jobs and at most the
/// message size limit, keeping their order.
/// Bytes `job` takes in a `SubmitJobsRequest`: its encoding, and the field
/// tag and length prefix of its repeated entry.
pub(crate) fn entry_bytes(job: &pb::JobSpec) -> usize {
    job.encoded_len() + 10
}

fn split_batches(jobs: Vec<pb::JobSpec>) -> Vec<Vec<pb::JobSpec>> {
    let budget = MAX_MESSAGE_BYTES - REQUEST_OVERHEAD_BYTES;
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0usize;
    for job in jobs {
        let size = entry_bytes(&job);
        if !current.is_empty() && (current.len() == MAX_BATCH || bytes + size > budget) {
            batches.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(job);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

fn submit_outcome(address: &str, task_id: String, r: pb::SubmitResult) -> Result<SubmitOutcome> {
    match r.result {
        Some(pb::submit_result::Result::JobId(job_id)) => {
            Ok(SubmitOutcome::Accepted { task_id, job_id })
        }
        Some(pb::submit_result::Result::Error(e)) => Ok(SubmitOutcome::Refused(SubmitRefusal {
            task_id,
            code: e.code,
            field: e.field,
            message: e.message,
            existing_job_id: Some(e.existing_job_id).filter(|id| !id.is_empty()),
        })),
        None => Err(Error::InvalidResponse {
            address: address.to_string(),
            reason: format!("the result for task {task_id} is empty"),
        }),
    }
}

pub(crate) fn read_job(address: &str, job: Option<pb::Job>) -> Result<Job> {
    let job = job.ok_or_else(|| Error::InvalidResponse {
        address: address.to_string(),
        reason: "the reply holds no job".into(),
    })?;
    let job_id = job.job_id.clone();
    Job::try_from(job).map_err(|e| Error::InvalidResponse {
        address: address.to_string(),
        reason: format!("job {job_id}: {e}"),
    })
}

pub(crate) fn list_request(
    filter: &JobFilter,
    page_size: u32,
    page_token: Option<&str>,
) -> pb::ListJobsRequest {
    pb::ListJobsRequest {
        task_tracker_node_group: filter.node_group.clone().unwrap_or_default(),
        state: filter
            .state
            .map(|s| pb::JobState::from(s) as i32)
            .unwrap_or_default(),
        task_id_prefix: filter.task_id_prefix.clone().unwrap_or_default(),
        page_size,
        page_token: page_token.unwrap_or_default().to_string(),
        kind: filter
            .kind
            .map(|k| pb::ScheduleKind::from(k) as i32)
            .unwrap_or_default(),
        include_payload: filter.include_payload,
    }
}

pub(crate) fn read_page(
    address: &str,
    filter: &JobFilter,
    response: pb::ListJobsResponse,
) -> Result<JobPage> {
    let jobs = response
        .jobs
        .into_iter()
        .map(|j| read_job(address, Some(j)))
        .collect::<Result<Vec<_>>>()?;
    // A tracker older than the `kind` field drops it unread and lists every
    // kind; say so rather than show a list that looks filtered but is not.
    if let Some(kind) = filter.kind {
        if let Some(other) = jobs.iter().find(|j| j.spec.schedule.kind() != kind) {
            return Err(Error::InvalidResponse {
                address: address.to_string(),
                reason: format!(
                    "asked for {} jobs, got job {} of kind {}; the tracker may be too old \
                     to filter by kind",
                    kind.name(),
                    other.job_id,
                    other.spec.schedule.kind().name()
                ),
            });
        }
    }
    Ok(JobPage {
        jobs,
        next_page_token: Some(response.next_page_token).filter(|t| !t.is_empty()),
    })
}

/// An error with its causes, since transport errors say little on their own.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_a_scheme_and_need_a_port() {
        assert_eq!(
            normalize_address("127.0.0.1:7070").expect("valid"),
            "http://127.0.0.1:7070"
        );
        assert_eq!(
            normalize_address("http://tracker-1:7070/").expect("valid"),
            "http://tracker-1:7070"
        );
        let e = normalize_address("tracker-1").unwrap_err().to_string();
        assert!(e.contains("`tracker-1`") && e.contains("port"), "{e}");
        let e = normalize_address("ftp://x:1").unwrap_err().to_string();
        assert!(e.contains("http://host:port"), "{e}");
        assert_eq!(
            normalize_address("https://tracker-1:7070").expect("valid"),
            "https://tracker-1:7070"
        );
        let e = JobClient::new(
            vec!["https://tracker-1:7070".into()],
            ClientOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`https://tracker-1:7070`") && e.contains("no CA certificate"),
            "{e}"
        );
        assert!(normalize_address(" ").is_err());
    }

    #[test]
    fn batches_split_by_count_and_size_in_order() {
        let jobs: Vec<pb::JobSpec> = (0..MAX_BATCH + 5)
            .map(|i| pb::JobSpec {
                task_id: format!("t{i}"),
                ..Default::default()
            })
            .collect();
        let batches = split_batches(jobs);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].len(), MAX_BATCH);
        assert_eq!(batches[1][0].task_id, format!("t{MAX_BATCH}"));

        let big = pb::JobSpec {
            payload: vec![0; 1024 * 1024],
            ..Default::default()
        };
        let batches = split_batches(vec![big; 100]);
        assert!(batches.len() >= 2, "{}", batches.len());
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 100);
        for b in &batches {
            let bytes: usize = b.iter().map(|j| j.encoded_len() + 10).sum();
            assert!(bytes <= MAX_MESSAGE_BYTES - REQUEST_OVERHEAD_BYTES);
        }
    }

    #[test]
    fn submit_results_map_to_outcomes() {
        let ok = pb::SubmitResult {
            result: Some(pb::submit_result::Result::JobId("j1".into())),
        };
        assert_eq!(
            submit_outcome("a", "t".into(), ok).expect("readable"),
            SubmitOutcome::Accepted {
                task_id: "t".into(),
                job_id: "j1".into()
            }
        );
        let refused = pb::SubmitResult {
            result: Some(pb::submit_result::Result::Error(pb::SubmitError {
                code: "ALREADY_EXISTS".into(),
                field: "task_id".into(),
                message: "exists".into(),
                existing_job_id: "j0".into(),
            })),
        };
        let o = submit_outcome("a", "t".into(), refused).expect("readable");
        assert!(!o.is_accepted());
        match o {
            SubmitOutcome::Refused(r) => assert_eq!(r.existing_job_id.as_deref(), Some("j0")),
            other => panic!("{other:?}"),
        }
        assert!(submit_outcome("a", "t".into(), pb::SubmitResult { result: None }).is_err());
    }

    #[tokio::test]
    async fn unreachable_trackers_are_all_named() {
        // Port 1 on localhost refuses connections at once.
        let client = JobClient::new(
            vec!["127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            ClientOptions::default(),
        )
        .expect("valid addresses");
        let e = client.get("j").await.unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("http://127.0.0.1:1") && text.contains("http://127.0.0.1:2"),
            "{text}"
        );
    }
}
