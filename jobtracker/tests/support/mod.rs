//! A JobTracker on loopback and peers that speak its wire protocol by hand,
//! shared by the test files of this directory.
#![allow(dead_code)]

use std::time::Duration;

use lts_proto::v1 as pb;
use pb::job_service_client::JobServiceClient;
use pb::work_service_client::WorkServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// How long a test waits for anything before it fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// A JobTracker served on a port of its own until stopped.
pub struct TestTracker {
    pub addr: String,
    pub dir: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<lts_jobtracker::Result<()>>>,
}

/// The config tests run with: embedded in `dir`, short heartbeats.
pub fn test_config(dir: &std::path::Path) -> lts_jobtracker::TrackerConfig {
    let mut config = lts_jobtracker::TrackerConfig::embedded(dir);
    config.heartbeat_interval = Duration::from_millis(500);
    config.shutdown_timeout = Duration::from_secs(5);
    config
}

impl TestTracker {
    /// A tracker over a fresh data directory.
    pub async fn start() -> TestTracker {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = test_config(dir.path());
        let tracker = lts_jobtracker::create_tracker(config)
            .await
            .expect("create tracker");
        let mut t = Self::serve(tracker).await;
        t.dir = Some(dir);
        t
    }

    /// Serves an already built tracker.
    pub async fn serve(tracker: std::sync::Arc<lts_jobtracker::Tracker>) -> TestTracker {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(lts_jobtracker::serve_tracker(
            tracker,
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        TestTracker {
            addr,
            dir: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A JobClient connection that accepts messages up to the gRPC limit.
    pub async fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::connect(self.addr.clone())
            .await
            .expect("connect")
            .max_encoding_message_size(lts_common::limits::MAX_MESSAGE_BYTES)
    }

    /// Stops the tracker and waits until `serve` returned.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("tracker stops within the deadline")
                .expect("tracker task")
                .expect("tracker ran cleanly");
        }
    }
}

pub fn job(task: &str, group: &str) -> pb::JobSpec {
    pb::JobSpec {
        task_id: task.into(),
        task_tracker_node_group: group.into(),
        ..Default::default()
    }
}

pub fn job_id(r: &pb::SubmitResult) -> String {
    match &r.result {
        Some(pb::submit_result::Result::JobId(id)) => id.clone(),
        other => panic!("expected a job id, got {other:?}"),
    }
}

/// Submits jobs that must all be accepted; returns their ids in order.
pub async fn submit(c: &mut JobServiceClient<Channel>, jobs: Vec<pb::JobSpec>) -> Vec<String> {
    c.submit_jobs(pb::SubmitJobsRequest { jobs })
        .await
        .expect("submit")
        .into_inner()
        .results
        .iter()
        .map(job_id)
        .collect()
}

/// A TaskTracker peer speaking the work protocol by hand. It uses the
/// default gRPC receive limit (4 MiB), as a peer in another language does.
pub struct Peer {
    pub tx: mpsc::Sender<pb::WorkerMessage>,
    pub rx: tonic::Streaming<pb::TrackerMessage>,
}

pub fn hello(identity: &str, group: &str, slots: u32) -> pb::WorkerMessage {
    pb::WorkerMessage {
        kind: Some(pb::worker_message::Kind::Hello(pb::Hello {
            identity: identity.into(),
            node_group: group.into(),
            slots,
            protocol_version: lts_proto::PROTOCOL_VERSION,
            ahead_slots: 0,
            total_slots: 0,
        })),
    }
}

pub async fn open_work(addr: &str, first: pb::WorkerMessage) -> Result<Peer, tonic::Status> {
    let mut client = WorkServiceClient::connect(addr.to_string())
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(64);
    tx.send(first).await.expect("queue hello");
    let response = client.work(ReceiverStream::new(rx)).await?;
    Ok(Peer {
        tx,
        rx: response.into_inner(),
    })
}

impl Peer {
    /// The next message that is not a heartbeat (heartbeats are answered).
    pub async fn next(&mut self) -> Result<pb::tracker_message::Kind, tonic::Status> {
        loop {
            let m = tokio::time::timeout(WAIT, self.rx.message())
                .await
                .expect("a message within the wait")?
                .ok_or_else(|| tonic::Status::aborted("the stream ended"))?;
            match m.kind.expect("message kind") {
                pb::tracker_message::Kind::Heartbeat(_) => {
                    let beat = pb::Heartbeat {
                        at_unix_ms: lts_common::now_ms(),
                    };
                    let _ = self
                        .tx
                        .send(pb::WorkerMessage {
                            kind: Some(pb::worker_message::Kind::Heartbeat(beat)),
                        })
                        .await;
                }
                k => return Ok(k),
            }
        }
    }

    /// The assignments of the next `Assignments` message.
    pub async fn assignments(&mut self) -> Vec<pb::Assignment> {
        loop {
            match self.next().await.expect("stream ok") {
                pb::tracker_message::Kind::Assignments(a) => return a.assignments,
                _ => continue,
            }
        }
    }

    pub async fn send(&self, kind: pb::worker_message::Kind) {
        self.tx
            .send(pb::WorkerMessage { kind: Some(kind) })
            .await
            .expect("send");
    }

    /// Reports one run's outcome, started and finished now.
    pub async fn report(&self, job_id: &str, attempt: u32, outcome: pb::outcome::Kind) {
        let now = lts_common::now_ms();
        self.send(pb::worker_message::Kind::Outcomes(pb::Outcomes {
            reports: vec![pb::OutcomeReport {
                job_id: job_id.into(),
                attempt,
                outcome: Some(pb::Outcome {
                    kind: Some(outcome),
                }),
                started_at_unix_ms: now,
                finished_at_unix_ms: now,
            }],
        }))
        .await;
    }

    /// Reports successes for `runs`, with sane start and finish times.
    pub async fn succeed(&self, runs: &[(String, u32)]) {
        let now = lts_common::now_ms();
        self.send(pb::worker_message::Kind::Outcomes(pb::Outcomes {
            reports: runs
                .iter()
                .map(|(job_id, attempt)| pb::OutcomeReport {
                    job_id: job_id.clone(),
                    attempt: *attempt,
                    outcome: Some(pb::Outcome {
                        kind: Some(pb::outcome::Kind::Success(pb::Success {
                            message: "ok".into(),
                        })),
                    }),
                    started_at_unix_ms: now,
                    finished_at_unix_ms: now,
                })
                .collect(),
        }))
        .await;
    }
}

/// Polls `check` until it returns `Some`, failing after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The MongoDB server of `LTS_TEST_MONGODB_URI` (`.ci/run` starts one);
/// without it the test skips loudly, naming `what` goes untested, or fails
/// under `CI=true`.
pub fn mongo_uri(what: &str) -> Option<String> {
    match std::env::var("LTS_TEST_MONGODB_URI") {
        Ok(uri) if !uri.is_empty() => Some(uri),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "LTS_TEST_MONGODB_URI is not set: CI must start a MongoDB server (see .ci/run)"
                );
            }
            eprintln!("\n*** skipping: LTS_TEST_MONGODB_URI not set; {what} is NOT tested ***\n");
            None
        }
    }
}
