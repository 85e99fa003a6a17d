//! A JobTracker under abuse: how fast it serves a well-behaved client while
//! hostile peers do what `docs/security.md`'s threat model lists, and how
//! much memory that costs it.
//!
//! Starts the `jobtracker` binary (beside this program) with its default
//! limits and a fresh data directory, and a well-behaved JobClient and
//! TaskTracker in this process. It measures submit-to-start (from just
//! before the submit call to the runner's start) at a fixed rate twice:
//! quiet, then while these peers are held open:
//! - 1,000 TCP connections from four other loopback addresses, half of
//!   them idle, half sending only the HTTP/2 client preface;
//! - a connection sending garbage bytes;
//! - a TaskTracker stream sending a `BizLogs` line whose `job_id` is
//!   50 MB long;
//! - 200 feedback streams subscribed to a group whose jobs finish all the
//!   time, none of which ever reads;
//! - a TaskTracker of one slot crediting 100,000, with 10,000 jobs queued
//!   for its group.
//!
//! It prints the two latency figures side by side, the tracker's resident
//! memory (quiet, the highest sampled under abuse, and its peak), how long
//! the tracker took to close the hostile connections, and what each limit
//! counted.
//!
//! ```text
//! cargo build --release --bins && cargo run --release --example hostile_bench
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use lts_common::JobSpec;
use lts_jobclient::{ClientOptions, JobClient};
use lts_proto::v1 as pb;
use pb::job_service_client::JobServiceClient;
use pb::work_service_client::WorkServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[path = "support/mod.rs"]
mod support;
use support::{cpu_and_rss, scrape, start_tracker, ProbeTracker};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Clone)]
struct Args {
    /// Rate of the well-behaved client, jobs/s (one job per call).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Length of each latency phase, seconds.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Hostile TCP connections (spread over four loopback addresses).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Feedback streams that never read.
    #[arg(long, default_value_t = 200)]
    feedback_streams: usize,
    /// Length of the hostile `BizLogs.job_id`, MB.
    #[arg(long, default_value_t = 50)]
    job_id_mb: usize,
    /// Path of the jobtracker binary; default: beside this program.
    #[arg(long)]
    jobtracker_bin: Option<std::path::PathBuf>,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HOSTILE_ADDRESSES: [&str; 4] = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];

/// Current resident memory of a process, bytes.
fn rss_now(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One job per call at `rate` for `secs`; submit-to-start samples come
/// from the probe. Returns (p50, p99, max) in ms and the calls that failed.
async fn latency_phase(
    client: &JobClient,
    probe: &ProbeTracker,
    base: Instant,
    args: &Args,
    tag: &str,
) -> Result<(f64, f64, f64, usize)> {
    let before = probe.samples_us()?.len();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = Instant::now();
    let mut calls = Vec::new();
    let mut sent = 0usize;
    while start.elapsed() < Duration::from_secs(args.secs) {
        tick.tick().await;
        let mut spec = JobSpec::new(format!("{tag}-{sent}"), "bench");
        spec.params
            .insert("t".into(), base.elapsed().as_micros().to_string());
        sent += 1;
        let c = client.clone();
        calls.push(tokio::spawn(async move { c.submit(vec![spec]).await }));
    }
    let mut failed = 0;
    for c in calls {
        if !matches!(c.await, Ok(Ok(_))) {
            failed += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while probe.samples_us()?.len() < before + sent - failed {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{tag}: only {} of {} jobs started within 120 s",
            probe.samples_us()?.len() - before,
            sent - failed
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut h = Histogram::<u64>::new(3)?;
    for us in &probe.samples_us()?[before..] {
        h.record(*us)?;
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok((ms(0.5), ms(0.99), h.max() as f64 / 1000.0, failed))
}

/// Raw TCP connections from `source`, each sending `first` and then
/// nothing; those the tracker refuses at once may already be closed.
async fn hostile_connections(
    target: std::net::SocketAddr,
    source: &str,
    n: usize,
    first: &[u8],
) -> Result<Vec<TcpStream>> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = TcpSocket::new_v4()?;
        socket.bind(format!("{source}:0").parse()?)?;
        let mut s = socket.connect(target).await?;
        if !first.is_empty() {
            let _ = s.write_all(first).await;
        }
        conns.push(s);
    }
    Ok(conns)
}

/// Waits for every connection to be closed by the tracker and returns the
/// time until the last one was, or None if some are open after `limit`.
async fn all_closed(conns: Vec<TcpStream>, since: Instant, limit: Duration) -> Option<Duration> {
    let last = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for mut c in conns {
        let last = last.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                match tokio::time::timeout_at((since + limit).into(), c.read(&mut buf)).await {
                    Err(_) => return false,
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        last.fetch_max(since.elapsed().as_millis() as u64, Ordering::Relaxed);
                        return true;
                    }
                    Ok(Ok(_)) => continue,
                }
            }
        }));
    }
    let mut all = true;
    for t in tasks {
        all &= t.await.unwrap_or(false);
    }
    all.then(|| Duration::from_millis(last.load(Ordering::Relaxed)))
}

fn hello(identity: &str, group: &str, slots: u32) -> pb::WorkerMessage {
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

/// A worker stream: its sender and the tracker's replies.
async fn open_work(
    url: &str,
    first: pb::WorkerMessage,
) -> Result<(
    mpsc::Sender<pb::WorkerMessage>,
    tonic::Streaming<pb::TrackerMessage>,
)> {
    let mut client = WorkServiceClient::connect(url.to_string())
        .await?
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await?;
    let replies = client.work(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, replies))
}

fn limited(scrape: &str) -> Vec<(String, f64)> {
    scrape
        .lines()
        .filter(|l| {
            l.starts_with("lts_jobtracker_limited_total")
                || l.starts_with("lts_jobtracker_refused_runs_total")
                || l.starts_with("lts_jobtracker_outbound_dropped_total")
        })
        .filter_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            let v: f64 = v.parse().ok()?;
            (v > 0.0).then(|| (name.to_string(), v))
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let tracker = start_tracker(args.jobtracker_bin.as_deref()).await?;
    let pid = tracker.child.id();
    let target: std::net::SocketAddr = tracker
        .url
        .trim_start_matches("http://")
        .parse()
        .context("tracker address")?;
    let base = Instant::now();
    let probe = ProbeTracker::start(&tracker.url, "bench", 64, base);
    let client = JobClient::new(vec![tracker.url.clone()], ClientOptions::default())?;
    println!(
        "hostile peers: one job per call at {:.0} jobs/s for {} s, quiet and then under abuse",
        args.rate, args.secs
    );
    // Warm up the connections and the store.
    latency_phase(
        &client,
        &probe,
        base,
        &Args {
            secs: 1,
            ..args.clone()
        },
        "warm",
    )
    .await?;
    let quiet = latency_phase(&client, &probe, base, &args, "quiet").await?;
    let rss_quiet = rss_now(pid);

    // The abuse.
    let abuse_start = Instant::now();
    let per_address = args.connections / HOSTILE_ADDRESSES.len();
    let mut conns = Vec::new();
    for (i, a) in HOSTILE_ADDRESSES.iter().enumerate() {
        let first = if i % 2 == 0 { &b""[..] } else { PREFACE };
        conns.extend(hostile_connections(target, a, per_address, first).await?);
    }
    conns.extend(hostile_connections(target, "127.0.0.6", 1, &[0xff; 65536]).await?);
    let opened = conns.len();

    // A line with a 50 MB job id on a stream of its own.
    let (big_tx, mut big_rx) = open_work(&tracker.url, hello("big-id", "hostile", 1)).await?;
    let huge = pb::WorkerMessage {
        kind: Some(pb::worker_message::Kind::BizLogs(pb::BizLogs {
            lines: vec![pb::BizLog {
                job_id: "x".repeat(args.job_id_mb * 1_000_000),
                attempt: 1,
                level: pb::LogLevel::Info as i32,
                message: "hostile".into(),
                at_unix_ms: lts_common::now_ms(),
            }],
        })),
    };
    big_tx.send(huge).await?;
    let big_answer = tokio::spawn(async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(60), big_rx.message()).await {
                Err(_) => return "no answer within 60 s".to_string(),
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return "the stream ended with no status".to_string(),
                Ok(Err(s)) => return format!("{:?}: {}", s.code(), s.message()),
            }
        }
    });

    // Feedback streams that never read, for a group that gets feedback
    // all the time (its jobs run on a TaskTracker of their own).
    let feedback_probe = ProbeTracker::start(&tracker.url, "fb-work", 64, base);
    let fb = JobServiceClient::connect(tracker.url.clone()).await?;
    let mut deaf = Vec::new();
    for i in 0..args.feedback_streams {
        let (tx, rx) = mpsc::channel(1);
        tx.send(pb::FeedbackClientMessage {
            kind: Some(pb::feedback_client_message::Kind::Subscribe(
                pb::Subscribe {
                    submit_node_group: "deaf".into(),
                    client_id: format!("deaf-{i}"),
                },
            )),
        })
        .await?;
        let mut c = fb.clone();
        let stream = c.feedback(ReceiverStream::new(rx)).await?;
        deaf.push((tx, stream));
    }
    let feedback_jobs: Vec<JobSpec> = (0..20_000)
        .map(|i| {
            let mut s = JobSpec::new(format!("fb-{i}"), "fb-work");
            s.need_feedback = true;
            s.submit_node_group = "deaf".into();
            s
        })
        .collect();
    for chunk in feedback_jobs.chunks(1000) {
        client.submit(chunk.to_vec()).await?;
    }

    // One slot, credit for 100,000, and 10,000 jobs queued for it.
    let (greedy_tx, mut greedy_rx) = open_work(&tracker.url, hello("greedy", "flood", 1)).await?;
    greedy_tx
        .send(pb::WorkerMessage {
            kind: Some(pb::worker_message::Kind::Credit(pb::Credit {
                credits: 100_000,
                ahead_credits: 100_000,
            })),
        })
        .await?;
    let flood: Vec<JobSpec> = (0..10_000)
        .map(|i| JobSpec::new(format!("flood-{i}"), "flood"))
        .collect();
    for chunk in flood.chunks(1000) {
        client.submit(chunk.to_vec()).await?;
    }
    let greedy_runs = Arc::new(AtomicU64::new(0));
    let greedy_counter = greedy_runs.clone();
    let greedy = tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                m = greedy_rx.message() => match m {
                    Ok(Some(pb::TrackerMessage { kind: Some(pb::tracker_message::Kind::Assignments(a)) })) => {
                        greedy_counter.fetch_add(a.assignments.len() as u64, Ordering::Relaxed);
                    }
                    Ok(Some(_)) => {}
                    _ => return,
                },
                _ = beat.tick() => {
                    let m = pb::WorkerMessage {
                        kind: Some(pb::worker_message::Kind::Heartbeat(pb::Heartbeat { at_unix_ms: lts_common::now_ms() })),
                    };
                    if greedy_tx.send(m).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let setup = abuse_start.elapsed();

    // Sample the tracker's memory while the well-behaved client works.
    let peak_sampled = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak = peak_sampled.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_now(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let abused = latency_phase(&client, &probe, base, &args, "abused").await?;
    let closed = all_closed(conns, abuse_start, Duration::from_secs(60)).await;
    sampler.abort();
    let big_status = big_answer.await.unwrap_or_else(|e| e.to_string());
    let (_, rss_peak) = cpu_and_rss(pid)?;
    let rss_end = rss_now(pid);
    let metrics = scrape(&tracker.metrics).await?;
    greedy.abort();
    drop(deaf);
    feedback_probe.stop().await;
    probe.stop().await;

    println!("abuse set up in {:.1} s", setup.as_secs_f64());
    println!(
        "submit-to-start quiet:       p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  failed calls {}",
        quiet.0, quiet.1, quiet.2, quiet.3
    );
    println!(
        "submit-to-start under abuse: p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  failed calls {}",
        abused.0, abused.1, abused.2, abused.3
    );
    println!(
        "jobtracker RSS: quiet {:.0} MiB, highest sampled under abuse {:.0} MiB, at the end {:.0} MiB, peak (VmHWM) {:.0} MiB",
        mib(rss_quiet),
        mib(peak_sampled.load(Ordering::Relaxed)),
        mib(rss_end),
        mib(rss_peak)
    );
    match closed {
        Some(t) => println!(
            "hostile connections: {opened} opened, all closed by the tracker, the last {:.1} s after the abuse began",
            t.as_secs_f64()
        ),
        None => println!("hostile connections: {opened} opened, SOME STILL OPEN after 60 s"),
    }
    println!("{} MB job_id stream: {big_status}", args.job_id_mb);
    println!(
        "greedy TaskTracker (1 slot, credit 100,000): {} runs handed to it",
        greedy_runs.load(Ordering::Relaxed)
    );
    for (name, v) in limited(&metrics) {
        println!("  {name} {v}");
    }
    Ok(())
}
