//! The cost of TLS and tokens on the hot path: the same runs against a
//! plaintext JobTracker with auth off, and against one with TLS, mutual
//! TLS for the TaskTracker and a token file, in one program.
//!
//! Each round starts the `jobtracker` binary (beside this program) twice,
//! each with a fresh data directory: plain, then secure. Against each it
//! drives a JobClient (with a `submit` token over TLS when secure) and a
//! TaskTracker whose runner does nothing (with a client certificate mapped
//! to the `worker` role when secure), and measures:
//! - end to end: no-op jobs/s from the first submit to the last outcome
//!   stored by the tracker;
//! - submit-to-start p50/p99 at a fixed rate (the same for both), from
//!   just before the submit call to the runner's start.
//!
//! The CA and certificates are made in memory at start.
//!
//! ```text
//! cargo build --release --bins && cargo run --release --example secure_bench
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use hdrhistogram::Histogram;
use lts_common::endpoint::{ClientTls, Token};
use lts_common::JobSpec;
use lts_jobclient::{ClientOptions, JobClient};
use lts_tasktracker::TaskTrackerConfig;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

#[path = "support/mod.rs"]
mod support;
use support::{metric, scrape, start_tracker_with, submit_all, wait_completed, ProbeTracker};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Clone)]
struct Args {
    /// Jobs of the end-to-end phase, per run.
    #[arg(long, default_value_t = 50_000)]
    e2e_jobs: usize,
    /// Jobs per submit call.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Submit calls in flight at once.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// TaskTracker slots.
    #[arg(long, default_value_t = 512)]
    slots: u32,
    /// Rate of the latency phase, jobs/s, the same for both runs.
    #[arg(long, default_value_t = 5000.0)]
    latency_rate: f64,
    /// Length of the latency phase, seconds.
    #[arg(long, default_value_t = 5)]
    latency_secs: u64,
    /// Rounds of (plain, secure); the figures are the median per mode.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Path of the jobtracker binary; default: beside this program.
    #[arg(long)]
    jobtracker_bin: Option<std::path::PathBuf>,
}

const SUBMIT_TOKEN: &str = "bench-submit-token-0123456789abcdef";

/// Files and settings of the secure mode.
struct Secure {
    dir: tempfile::TempDir,
    ca: String,
    worker: (Vec<u8>, Vec<u8>),
}

impl Secure {
    fn new() -> Result<Secure> {
        let dir = tempfile::tempdir()?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "bench CA");
        let ca = ca_params.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let issue = |names: Vec<String>| -> Result<(String, String)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(names.clone())?;
            params
                .distinguished_name
                .push(DnType::CommonName, names[0].as_str());
            Ok((params.signed_by(&key, &issuer)?.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = issue(vec!["localhost".into(), "127.0.0.1".into()])?;
        let (worker_cert, worker_key) = issue(vec!["bench-worker".into()])?;
        std::fs::write(dir.path().join("ca.pem"), &ca)?;
        std::fs::write(dir.path().join("server.pem"), server_cert)?;
        std::fs::write(dir.path().join("server.key"), server_key)?;
        std::fs::write(
            dir.path().join("tokens"),
            format!(
                "{} submit bench-client\ncert:bench-worker worker:bench bench-worker\n",
                lts_jobtracker::auth::hash_token(SUBMIT_TOKEN)
            ),
        )?;
        Ok(Secure {
            dir,
            ca,
            worker: (worker_cert.into_bytes(), worker_key.into_bytes()),
        })
    }

    fn tracker_flags(&self) -> Vec<String> {
        let p = |name: &str| self.dir.path().join(name).display().to_string();
        vec![
            "--tls-cert".into(),
            p("server.pem"),
            "--tls-key".into(),
            p("server.key"),
            "--tls-client-ca".into(),
            p("ca.pem"),
            "--token-file".into(),
            p("tokens"),
        ]
    }
}

struct Figures {
    e2e: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn one_run(args: &Args, secure: Option<&Secure>) -> Result<Figures> {
    let flags = secure.map(Secure::tracker_flags).unwrap_or_default();
    let tracker = start_tracker_with(args.jobtracker_bin.as_deref(), &flags).await?;
    let mut options = ClientOptions::default();
    let mut tt = TaskTrackerConfig::new(tracker.url.clone(), "bench");
    tt.slots = args.slots;
    if let Some(s) = secure {
        options.tls = Some(ClientTls::from_pem(s.ca.clone(), None));
        options.token = Some(Token::new(SUBMIT_TOKEN).map_err(anyhow::Error::msg)?);
        tt.tls = Some(ClientTls::from_pem(s.ca.clone(), Some(s.worker.clone())));
    }
    let client = JobClient::new(vec![tracker.url.clone()], options)?;
    let base = Instant::now();
    let probe = ProbeTracker::start_with(tt, base);

    // End to end.
    let done0 = metric(
        &scrape(&tracker.metrics).await?,
        "lts_jobtracker_jobs_completed_total",
    );
    let specs: Vec<JobSpec> = (0..args.e2e_jobs)
        .map(|i| JobSpec::new(format!("e-{i}"), "bench"))
        .collect();
    let t = Instant::now();
    submit_all(&client, specs, args.batch, args.in_flight).await?;
    wait_completed(
        &tracker.metrics,
        done0 + args.e2e_jobs as f64,
        Duration::from_secs(600),
    )
    .await?;
    let e2e = args.e2e_jobs as f64 / t.elapsed().as_secs_f64();

    // Submit-to-start at a fixed rate, one submit call a millisecond.
    let done1 = metric(
        &scrape(&tracker.metrics).await?,
        "lts_jobtracker_jobs_completed_total",
    );
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    let start = Instant::now();
    let (mut owed, mut sent, mut calls) = (0.0f64, 0usize, Vec::new());
    while start.elapsed() < Duration::from_secs(args.latency_secs) {
        tick.tick().await;
        owed += args.latency_rate / 1000.0;
        let n = owed.floor() as usize;
        if n == 0 {
            continue;
        }
        owed -= n as f64;
        let batch: Vec<JobSpec> = (0..n)
            .map(|i| {
                let mut s = JobSpec::new(format!("l-{}", sent + i), "bench");
                s.params
                    .insert("t".into(), base.elapsed().as_micros().to_string());
                s
            })
            .collect();
        sent += n;
        let c = client.clone();
        let permit = permits.clone().acquire_owned().await?;
        calls.push(tokio::spawn(async move {
            let r = c.submit(batch).await;
            drop(permit);
            r
        }));
    }
    for c in calls {
        c.await??;
    }
    wait_completed(
        &tracker.metrics,
        done1 + sent as f64,
        Duration::from_secs(600),
    )
    .await?;
    let mut h = Histogram::<u64>::new(3)?;
    for us in probe.samples_us()? {
        h.record(us)?;
    }
    probe.stop().await;
    Ok(Figures {
        e2e,
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let secure = Secure::new()?;
    let mut plain = Vec::new();
    let mut tls = Vec::new();
    println!(
        "TLS + tokens on vs off: {} end-to-end no-op jobs, then submit-to-start at {:.0} jobs/s for {} s, per run",
        args.e2e_jobs, args.latency_rate, args.latency_secs
    );
    for round in 1..=args.rounds.max(1) {
        for (name, mode, out) in [
            ("plain", None, &mut plain),
            ("tls+tokens", Some(&secure), &mut tls),
        ] {
            let f = one_run(&args, mode).await?;
            println!(
                "round {round} {name:<11} end to end {:>8.0} jobs/s   submit-to-start p50 {:>6.2} ms  p99 {:>6.2} ms",
                f.e2e, f.p50_ms, f.p99_ms
            );
            out.push(f);
        }
    }
    let summary = |v: &[Figures]| {
        (
            median(v.iter().map(|f| f.e2e).collect()),
            median(v.iter().map(|f| f.p50_ms).collect()),
            median(v.iter().map(|f| f.p99_ms).collect()),
        )
    };
    let (pe, p50, p99) = summary(&plain);
    let (te, t50, t99) = summary(&tls);
    println!("median plain:      {pe:>8.0} jobs/s, p50 {p50:.2} ms, p99 {p99:.2} ms");
    println!("median tls+tokens: {te:>8.0} jobs/s, p50 {t50:.2} ms, p99 {t99:.2} ms");
    println!(
        "tls+tokens vs plain: end to end {:+.1}%, p99 {:+.1}% (target: within 15%)",
        (te / pe - 1.0) * 100.0,
        (t99 / p99 - 1.0) * 100.0
    );
    Ok(())
}
