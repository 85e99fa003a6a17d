//! Benchmark of one TaskTracker releasing many runs at one instant, with
//! no JobTracker in the way: a scripted `WorkService` peer in this process
//! sends a round of runs ahead of their time (all due at the same whole
//! second), acknowledges their outcomes, and sends the next round.
//!
//! It prints, over every round, the fire delay (from the runs' instant to
//! their runner's start) p50/p99/max and the time until the last outcome
//! of a round reached the peer.
//!
//! ```text
//! cargo build --release --examples && target/release/examples/release_bench --runs 10000 --rounds 5
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use lts_common::{now_ms, JobSpec, Outcome};
use lts_proto::v1 as pb;
use lts_tasktracker::{JobContext, JobRunner, TaskTrackerConfig};
use pb::tracker_message::Kind as ToWorker;
use pb::work_service_server::{WorkService, WorkServiceServer};
use pb::worker_message::Kind as FromWorker;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

#[path = "support/mod.rs"]
mod support;
use support::cpu_and_rss;

// The allocator of the `tasktracker` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Runs due at each round's instant.
    #[arg(long, default_value_t = 10_000)]
    runs: u32,
    /// Rounds, one a second.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
}

/// Records how late each run started after its instant.
struct Probe {
    delays: Arc<Mutex<Vec<i64>>>,
}

#[async_trait::async_trait]
impl JobRunner for Probe {
    async fn run(&self, ctx: JobContext) -> Outcome {
        let now = now_ms();
        let at = ctx
            .job
            .spec
            .params
            .get("at")
            .and_then(|at| at.parse::<i64>().ok());
        if let (Some(at), Ok(mut d)) = (at, self.delays.lock()) {
            d.push(now - at);
        }
        Outcome::Success(String::new())
    }
}

type Stream = (
    Streaming<pb::WorkerMessage>,
    mpsc::UnboundedSender<Result<pb::TrackerMessage, Status>>,
);

/// The JobTracker's side: hands the stream to the benchmark.
struct Peer {
    streams: mpsc::UnboundedSender<Stream>,
}

#[tonic::async_trait]
impl WorkService for Peer {
    type WorkStream = UnboundedReceiverStream<Result<pb::TrackerMessage, Status>>;

    async fn work(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let mut inbound = request.into_inner();
        match inbound.message().await? {
            Some(pb::WorkerMessage {
                kind: Some(FromWorker::Hello(_)),
            }) => {}
            _ => return Err(Status::invalid_argument("expected a hello")),
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Ok(pb::TrackerMessage {
            kind: Some(ToWorker::Welcome(pb::Welcome {
                tracker_id: "release-bench".into(),
                protocol_version: lts_proto::PROTOCOL_VERSION,
                heartbeat_interval_ms: 10_000,
            })),
        }));
        let _ = self.streams.send((inbound, tx));
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

fn assignment(round: u32, i: u32, at_ms: i64) -> pb::Assignment {
    let mut spec = JobSpec::new(format!("r{round}-{i}"), "release-bench");
    // The probe reads the instant from here.
    spec.params.insert("at".into(), at_ms.to_string());
    pb::Assignment {
        job: Some(pb::Job {
            job_id: format!("{round}-{i}"),
            spec: Some(spec.into()),
            attempt: 1,
            ..Default::default()
        }),
        attempt: 1,
        not_before_unix_ms: at_ms,
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (streams_tx, mut streams) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkServiceServer::new(Peer {
                streams: streams_tx,
            }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let delays = Arc::new(Mutex::new(Vec::with_capacity(
        args.runs as usize * args.rounds as usize,
    )));
    let mut config = TaskTrackerConfig::new(addr.to_string(), "release-bench");
    config.slots = args.runs.min(lts_common::limits::MAX_SLOTS);
    config.ahead_slots = args.runs;
    let stop = CancellationToken::new();
    let tracker = tokio::spawn(lts_tasktracker::run(
        config,
        Arc::new(Probe {
            delays: delays.clone(),
        }),
        stop.clone().cancelled_owned(),
    ));
    let (mut inbound, tx) = tokio::time::timeout(Duration::from_secs(10), streams.recv())
        .await
        .context("the TaskTracker did not connect within 10 s")?
        .context("the peer stopped")?;

    let mut to_last_outcome = Vec::new();
    let mut cpu_s = 0.0;
    for round in 0..args.rounds {
        // Sent about 700 ms ahead of the next whole second.
        let at_ms = (now_ms() / 1000 + 2) * 1000;
        let wait = (at_ms - 700 - now_ms()).max(0) as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let (cpu0, _) = cpu_and_rss(std::process::id())?;
        let assignments = (0..args.runs)
            .map(|i| assignment(round, i, at_ms))
            .collect::<Vec<_>>();
        for chunk in assignments.chunks(256) {
            tx.send(Ok(pb::TrackerMessage {
                kind: Some(ToWorker::Assignments(pb::Assignments {
                    assignments: chunk.to_vec(),
                })),
            }))
            .map_err(|_| anyhow::anyhow!("the stream closed"))?;
        }
        let mut outcomes = 0u32;
        while outcomes < args.runs {
            let message = tokio::time::timeout(Duration::from_secs(30), inbound.message())
                .await
                .context("no outcome within 30 s")??
                .context("the TaskTracker closed the stream")?;
            if let Some(FromWorker::Outcomes(o)) = message.kind {
                outcomes += o.reports.len() as u32;
                let runs = o
                    .reports
                    .into_iter()
                    .map(|r| pb::RunRef {
                        job_id: r.job_id,
                        attempt: r.attempt,
                    })
                    .collect();
                let _ = tx.send(Ok(pb::TrackerMessage {
                    kind: Some(ToWorker::OutcomeAcks(pb::OutcomeAcks { runs })),
                }));
            }
        }
        to_last_outcome.push(now_ms() - at_ms);
        cpu_s += cpu_and_rss(std::process::id())?.0 - cpu0;
    }
    stop.cancel();
    drop(tx);
    let _ = tracker.await;

    let delays = delays.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    let mut h = Histogram::<u64>::new(3)?;
    let early = delays.iter().filter(|&&d| d < 0).count();
    for d in &delays {
        h.record((*d).max(0) as u64)?;
    }
    println!(
        "{} runs due at one instant, {} rounds: {} runs started, {early} before their instant",
        args.runs,
        args.rounds,
        delays.len()
    );
    println!(
        "fire delay (instant to runner start): p50 {} ms, p99 {} ms, max {} ms",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max()
    );
    println!("instant to a round's last outcome at the peer, ms: {to_last_outcome:?}");
    println!(
        "CPU of this process (TaskTracker and peer) per run: {:.1} us",
        cpu_s * 1e6 / f64::from(args.runs * args.rounds)
    );
    Ok(())
}
