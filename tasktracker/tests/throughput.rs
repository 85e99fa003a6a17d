//! How many no-op jobs per second pass through a TaskTracker, against a
//! peer that hands out a job for every credit and acknowledges every
//! outcome; and how close to their instant 10,000 jobs sent ahead of the
//! same instant start. The peer shares the process, so the figures are
//! bounds.
//!
//! `cargo test -p lts-tasktracker --release --test throughput -- --nocapture`
//! (`LTS_BENCH_JOBS` sets the number of jobs, default 20000; `LTS_BENCH_MIN_RATE`
//! makes a rate below it a failure; `LTS_BENCH_AHEAD_MAX_LATE_MS` makes a
//! job sent ahead starting later than that after its instant a failure;
//! without them both print their figures only).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lts_common::{now_ms, JobSpec, Outcome};
use lts_proto::v1 as pb;
use lts_tasktracker::runners::NoopRunner;
use lts_tasktracker::{
    DiskSpool, JobContext, JobRunner, OutcomeSpool, SpoolLimits, TaskTracker, TaskTrackerConfig,
};
use pb::tracker_message::Kind as ToWorker;
use pb::work_service_server::{WorkService, WorkServiceServer};
use pb::worker_message::Kind as FromWorker;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone)]
struct Feeder {
    total: usize,
    done: mpsc::UnboundedSender<Duration>,
}

fn message(kind: ToWorker) -> Result<pb::TrackerMessage, Status> {
    Ok(pb::TrackerMessage { kind: Some(kind) })
}

type Outbound = mpsc::UnboundedSender<Result<pb::TrackerMessage, Status>>;
type OutboundRx = mpsc::UnboundedReceiver<Result<pb::TrackerMessage, Status>>;

/// Acknowledges every outcome of `o`; returns how many there were.
fn ack_all(tx: &Outbound, o: pb::Outcomes) -> usize {
    let n = o.reports.len();
    let runs = o
        .reports
        .into_iter()
        .map(|r| pb::RunRef {
            job_id: r.job_id,
            attempt: r.attempt,
        })
        .collect();
    let _ = tx.send(message(ToWorker::OutcomeAcks(pb::OutcomeAcks { runs })));
    n
}

/// Reads the TaskTracker's hello and queues the welcome.
async fn handshake(
    request: Request<Streaming<pb::WorkerMessage>>,
) -> Result<
    (
        pb::Hello,
        Streaming<pb::WorkerMessage>,
        Outbound,
        OutboundRx,
    ),
    Status,
> {
    let mut inbound = request.into_inner();
    let Some(pb::WorkerMessage {
        kind: Some(FromWorker::Hello(hello)),
    }) = inbound.message().await?
    else {
        return Err(Status::invalid_argument("expected a hello"));
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(message(ToWorker::Welcome(pb::Welcome {
        tracker_id: "feeder".into(),
        protocol_version: lts_proto::PROTOCOL_VERSION,
        heartbeat_interval_ms: 5_000,
    })));
    Ok((hello, inbound, tx, rx))
}

#[async_trait]
impl WorkService for Feeder {
    type WorkStream = UnboundedReceiverStream<Result<pb::TrackerMessage, Status>>;

    async fn work(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let (hello, mut inbound, tx, rx) = handshake(request).await?;
        let spec: pb::JobSpec = JobSpec::new("task", "bench").into();
        let total = self.total;
        let done = self.done.clone();
        tokio::spawn(async move {
            let mut sent = 0usize;
            let mut finished = 0usize;
            let started = Instant::now();
            let hand_out = |n: usize, sent: &mut usize| {
                let n = n.min(total - *sent);
                let assignments = (0..n)
                    .map(|i| pb::Assignment {
                        job: Some(pb::Job {
                            job_id: format!("job-{}", *sent + i),
                            spec: Some(spec.clone()),
                            attempt: 1,
                            ..Default::default()
                        }),
                        attempt: 1,
                        not_before_unix_ms: 0,
                    })
                    .collect();
                *sent += n;
                let _ = tx.send(message(ToWorker::Assignments(pb::Assignments {
                    assignments,
                })));
            };
            hand_out(hello.slots as usize, &mut sent);
            while let Ok(Some(m)) = inbound.message().await {
                match m.kind {
                    Some(FromWorker::Credit(c)) => hand_out(c.credits as usize, &mut sent),
                    Some(FromWorker::Outcomes(o)) => {
                        finished += ack_all(&tx, o);
                        if finished == total {
                            let _ = done.send(started.elapsed());
                        }
                    }
                    _ => {}
                }
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noop_jobs_per_second() {
    noop_jobs_per_second_with(None, "in memory").await;
}

/// The same with every outcome, start and acknowledgement written to a
/// spool on disk (`--spool-dir`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noop_jobs_per_second_with_a_disk_spool() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let spool = tokio::task::spawn_blocking(move || DiskSpool::open(&path, SpoolLimits::default()))
        .await
        .unwrap()
        .unwrap();
    noop_jobs_per_second_with(Some(Box::new(spool)), "with a spool on disk").await;
}

async fn noop_jobs_per_second_with(spool: Option<Box<dyn OutcomeSpool>>, what: &str) {
    let total: usize = std::env::var("LTS_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let feeder = Feeder {
        total,
        done: done_tx,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkServiceServer::new(feeder))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let mut config = TaskTrackerConfig::new(addr.to_string(), "bench");
    config.slots = 1_000;
    let mut tracker = TaskTracker::new(config, Arc::new(NoopRunner)).unwrap();
    if let Some(spool) = spool {
        tracker = tracker.with_spool(spool);
    }
    let handle = tracker.handle();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(tracker.run(async move {
        let _ = stop_rx.await;
    }));
    let took = tokio::time::timeout(Duration::from_secs(120), done.recv())
        .await
        .expect("every job finishes in time")
        .unwrap();
    let rate = total as f64 / took.as_secs_f64();
    println!(
        "{total} no-op jobs {what} in {} ms: {rate:.0} jobs/s",
        took.as_millis()
    );
    assert_eq!(handle.stats().succeeded, total as u64);
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    if let Some(min) = std::env::var("LTS_BENCH_MIN_RATE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
    {
        assert!(rate >= min, "{rate:.0} jobs/s is below {min}");
    }
}

/// Sends `total` jobs ahead of one instant as soon as the TaskTracker says
/// hello, and acknowledges their outcomes.
#[derive(Clone)]
struct AheadFeeder {
    total: usize,
    not_before: i64,
    done: mpsc::UnboundedSender<()>,
}

#[async_trait]
impl WorkService for AheadFeeder {
    type WorkStream = UnboundedReceiverStream<Result<pb::TrackerMessage, Status>>;

    async fn work(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let (hello, mut inbound, tx, rx) = handshake(request).await?;
        if (hello.ahead_slots as usize) < self.total {
            return Err(Status::invalid_argument("too few ahead slots for the test"));
        }
        let spec: pb::JobSpec = JobSpec::new("cron", "bench").into();
        for chunk in (0..self.total).collect::<Vec<_>>().chunks(1_000) {
            let assignments = chunk
                .iter()
                .map(|i| pb::Assignment {
                    job: Some(pb::Job {
                        job_id: format!("cycle-{i}"),
                        spec: Some(spec.clone()),
                        attempt: 1,
                        ..Default::default()
                    }),
                    attempt: 1,
                    not_before_unix_ms: self.not_before,
                })
                .collect();
            let _ = tx.send(message(ToWorker::Assignments(pb::Assignments {
                assignments,
            })));
        }
        let total = self.total;
        let done = self.done.clone();
        tokio::spawn(async move {
            let mut finished = 0usize;
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(FromWorker::Outcomes(o)) = m.kind {
                    finished += ack_all(&tx, o);
                    if finished == total {
                        let _ = done.send(());
                    }
                }
            }
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

/// Notes when each run began.
#[derive(Default)]
struct BeganAt(Mutex<Vec<i64>>);

#[async_trait]
impl JobRunner for BeganAt {
    async fn run(&self, _ctx: JobContext) -> Outcome {
        self.0.lock().unwrap().push(now_ms());
        Outcome::Success(String::new())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_sent_ahead_of_one_instant_start_at_it() {
    let total = 10_000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    // A second is what the JobTracker sends ahead by; the jobs arrive well
    // within it.
    let not_before = now_ms() + 1_000;
    let feeder = AheadFeeder {
        total,
        not_before,
        done: done_tx,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkServiceServer::new(feeder))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let mut config = TaskTrackerConfig::new(addr.to_string(), "bench");
    config.slots = total as u32;
    config.ahead_slots = total as u32;
    let runner = Arc::new(BeganAt::default());
    let tracker = TaskTracker::new(config, runner.clone()).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(tracker.run(async move {
        let _ = stop_rx.await;
    }));
    tokio::time::timeout(Duration::from_secs(60), done.recv())
        .await
        .expect("every job finishes in time")
        .unwrap();
    let mut began = runner.0.lock().unwrap().clone();
    began.sort_unstable();
    assert_eq!(began.len(), total);
    assert!(
        began[0] >= not_before,
        "a job began {} ms before its instant",
        not_before - began[0]
    );
    let late = |q: f64| began[((total - 1) as f64 * q) as usize] - not_before;
    println!(
        "{total} jobs sent ahead of one instant began after it by: p50 {} ms, p99 {} ms, max {} ms",
        late(0.5),
        late(0.99),
        late(1.0)
    );
    // A figure, not a check, unless asked for: the machine is shared.
    if let Some(max_late) = std::env::var("LTS_BENCH_AHEAD_MAX_LATE_MS")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
    {
        assert!(
            late(1.0) <= max_late,
            "the last job began {} ms after its instant (limit {max_late} ms)",
            late(1.0)
        );
    }
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Outcomes per second a spool on disk takes (put, then made durable) and
/// lets go (acknowledged, then made durable), without a TaskTracker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_spool_outcomes_per_second() {
    let total: usize = std::env::var("LTS_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool");
    let mut spool =
        tokio::task::spawn_blocking(move || DiskSpool::open(&path, SpoolLimits::default()))
            .await
            .unwrap()
            .unwrap();
    let reports: Vec<pb::OutcomeReport> = (0..total)
        .map(|i| pb::OutcomeReport {
            job_id: format!("{i:032x}"),
            attempt: 1,
            outcome: Some(Outcome::Success("exit status 0".into()).into()),
            started_at_unix_ms: now_ms(),
            finished_at_unix_ms: now_ms(),
        })
        .collect();
    let start = Instant::now();
    for report in &reports {
        spool.put(report).unwrap();
    }
    let queued = start.elapsed();
    spool.sync().await.unwrap();
    let put = start.elapsed();
    let start = Instant::now();
    for report in &reports {
        spool.ack(&report.job_id, report.attempt).unwrap();
    }
    spool.sync().await.unwrap();
    let acked = start.elapsed();
    println!(
        "disk spool: {total} outcomes queued in {} ms, put and flushed in {} ms ({:.0}/s), \
         acknowledged and flushed in {} ms ({:.0}/s)",
        queued.as_millis(),
        put.as_millis(),
        total as f64 / put.as_secs_f64(),
        acked.as_millis(),
        total as f64 / acked.as_secs_f64()
    );
    assert!(spool.is_empty());
    spool.close().await.unwrap();
    tokio::task::spawn_blocking(move || drop(spool))
        .await
        .unwrap();
}
