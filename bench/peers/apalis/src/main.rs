//! apalis (SQLite) peer of the lts-rs benchmark suite.
//!
//! One process holds the producer, the worker and SQLite itself (SQLite is
//! a library, so this process is also the "server" whose RSS W4 reports).
//! Prints one JSON object as its last stdout line; see bench/README.md.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apalis::prelude::*;
use apalis_sqlite::{Config, SqliteStorage};
use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqliteOperation, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::SqlitePool;

const APALIS_VERSION: &str = "apalis 1.0.0, apalis-sqlite 1.0.0, sqlx 0.9.0";
const DURABILITY: &str = "SQLite WAL, synchronous=FULL on every connection (apalis' own setup() \
     sets synchronous=OFF; it runs on a separate connection that is closed before the benchmark): \
     every push transaction and every ack batch is fsynced before it returns";
const QUEUE: &str = "bench";
const BATCH: usize = 1000;
const BATCH_IN_FLIGHT: usize = 4;

/// The job's only payload: when it was pushed, in µs since the epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    enqueued_us: u64,
}

/// What the handler records: how many ran, and (in W3) each enqueue-to-start.
struct Recorder {
    started: AtomicU64,
    latencies_ms: Mutex<Vec<f64>>,
    keep_latencies: bool,
}

static RECORDER: OnceLock<Recorder> = OnceLock::new();

async fn noop(job: Job) -> Result<(), BoxDynError> {
    let rec = RECORDER.get().expect("recorder set before workers start");
    if rec.keep_latencies {
        let ms = (now_us().saturating_sub(job.enqueued_us)) as f64 / 1000.0;
        rec.latencies_ms.lock().unwrap().push(ms);
    }
    rec.started.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

struct Args {
    workload: String,
    jobs: usize,
    rate: f64,
    seconds: f64,
    sqlite: PathBuf,
    in_flight: usize,
    concurrency: usize,
    fetch_batch: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        workload: String::new(),
        jobs: 1000,
        rate: 500.0,
        seconds: 10.0,
        sqlite: PathBuf::new(),
        in_flight: 64,
        concurrency: 64,
        fetch_batch: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| die(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--workload" => args.workload = value,
            "--jobs" => args.jobs = num(&flag, &value),
            "--rate" => args.rate = num(&flag, &value),
            "--seconds" => args.seconds = num(&flag, &value),
            "--sqlite" => args.sqlite = PathBuf::from(value),
            "--in-flight" => args.in_flight = num(&flag, &value),
            "--concurrency" => args.concurrency = num(&flag, &value),
            "--fetch-batch" => args.fetch_batch = num(&flag, &value),
            _ => die(&format!("unknown flag {flag}")),
        }
    }
    if !matches!(args.workload.as_str(), "w1" | "w2" | "w3" | "w4") {
        die("--workload must be w1, w2, w3 or w4");
    }
    if args.sqlite.as_os_str().is_empty() {
        die("--sqlite PATH is required");
    }
    args
}

fn num<T: FromStr>(flag: &str, value: &str) -> T {
    value
        .parse()
        .unwrap_or_else(|_| die(&format!("{flag}: not a number: {value}")))
}

fn die(msg: &str) -> ! {
    eprintln!("apalis peer: {msg}");
    std::process::exit(2)
}

/// Wakes the worker when a row is inserted into `Jobs` (SQLite update hook),
/// so it does not wait for its poll interval. The same idea as
/// apalis-sqlite's `connect_with_callback`, which cannot take our pragmas.
#[derive(Clone)]
struct InsertWakeups(Arc<Mutex<UnboundedReceiver<()>>>);

impl Stream for InsertWakeups {
    type Item = ();
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        self.0.lock().unwrap().poll_next_unpin(cx)
    }
}

fn connect_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30))
}

async fn open(path: &Path) -> (SqlitePool, InsertWakeups) {
    // apalis' setup() runs migrations and sets synchronous=OFF on whichever
    // connection it gets; give it a pool of its own and close it.
    let setup_pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(connect_options(path))
        .await
        .expect("open sqlite for setup");
    SqliteStorage::setup(&setup_pool)
        .await
        .expect("apalis-sqlite setup");
    setup_pool.close().await;

    let (tx, rx): (UnboundedSender<()>, UnboundedReceiver<()>) = unbounded();
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .after_connect(move |conn, _| {
            let tx = tx.clone();
            Box::pin(async move {
                let mut handle = conn.lock_handle().await?;
                handle.set_update_hook(move |ev| {
                    if ev.operation == SqliteOperation::Insert && ev.table == "Jobs" {
                        let _ = tx.unbounded_send(());
                    }
                });
                Ok(())
            })
        })
        .connect_with(connect_options(path))
        .await
        .expect("open sqlite");
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&pool)
        .await
        .expect("read pragma");
    assert_eq!(sync, 2, "synchronous must be FULL (2)");
    (pool, InsertWakeups(Arc::new(Mutex::new(rx))))
}

fn storage(pool: &SqlitePool, fetch_batch: usize) -> SqliteStorage<Job> {
    SqliteStorage::new(pool).with_config(Config::default().queue(QUEUE).batch_size(fetch_batch))
}

fn start_worker(args: &Args, pool: &SqlitePool, wakeups: InsertWakeups) {
    let backend = storage(pool, args.fetch_batch).poll_with_strategy(
        Strategy::new()
            .stream(wakeups)
            .interval(Duration::from_millis(50)),
    );
    let worker = WorkerBuilder::new("bench-worker")
        .backend(backend)
        .concurrency(args.concurrency)
        .build(noop);
    tokio::spawn(async move {
        if let Err(e) = worker.run().await {
            eprintln!("apalis peer: worker stopped: {e}");
        }
    });
}

fn job() -> Job {
    Job {
        enqueued_us: now_us(),
    }
}

/// Pushes `n` jobs one `push` call each, `in_flight` callers at a time.
async fn push_single(pool: &SqlitePool, n: usize, in_flight: usize) {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let mut s = storage(pool, 1);
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n as u64 {
                s.push(job()).await.expect("push");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Pushes `n` jobs in `push_bulk` calls of `BATCH` (one transaction each),
/// `BATCH_IN_FLIGHT` calls at a time.
async fn push_batched(pool: &SqlitePool, n: usize) {
    let batches = Arc::new(Mutex::new(
        (0..n)
            .step_by(BATCH)
            .map(|start| BATCH.min(n - start))
            .collect::<VecDeque<_>>(),
    ));
    let mut tasks = Vec::new();
    for _ in 0..BATCH_IN_FLIGHT {
        let mut s = storage(pool, 1);
        let batches = batches.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(size) = batches.lock().unwrap().pop_front() else {
                    break;
                };
                // A transaction that began reading and then writes gets
                // SQLITE_BUSY at once (no busy timeout) when another writer
                // committed in between; it was rolled back, so a user would
                // send it again, and so do we.
                let mut tries = 0;
                loop {
                    let jobs = (0..size).map(|_| job()).collect::<Vec<_>>();
                    match s.push_bulk(jobs).await {
                        Ok(_) => break,
                        Err(e) if tries < 20 && format!("{e:?}").contains("database is locked") => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("push_bulk: {e:?}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Gives the query planner statistics. Without them apalis' ack query
/// (`UPDATE Jobs ... FROM json_each(?) WHERE lock_by = ?`) walks every row
/// the worker ever locked for each ack batch, and the drain slows down
/// quadratically (5,000 jobs drained at about 300/s here); with them it
/// looks each acked id up by its unique index. SQLite's own advice is to
/// run `ANALYZE`/`PRAGMA optimize` once tables hold data.
async fn analyze(pool: &SqlitePool) {
    sqlx::query("ANALYZE").execute(pool).await.expect("ANALYZE");
}

async fn count_done(pool: &SqlitePool) -> u64 {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM Jobs WHERE status = 'Done'")
        .fetch_one(pool)
        .await
        .expect("count done") as u64
}

/// Waits until `n` jobs have started, then until all `n` are recorded
/// `Done` in the database (the ack is what makes a completion durable).
async fn wait_done(pool: &SqlitePool, n: usize, limit: Duration) {
    let rec = RECORDER.get().unwrap();
    let deadline = Instant::now() + limit;
    while rec.started.load(Ordering::Relaxed) < n as u64 {
        if Instant::now() > deadline {
            die("jobs did not all start in time");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let all_started = Instant::now();
    while count_done(pool).await < n as u64 {
        if Instant::now() > deadline {
            die("jobs were not all recorded done in time");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "apalis peer: last ack recorded {:.0} ms after the last job started",
        all_started.elapsed().as_secs_f64() * 1000.0
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn disk_mib(db: &Path) -> f64 {
    let mut total = 0u64;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        total += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
    }
    total as f64 / (1024.0 * 1024.0)
}

fn self_rss_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Files of a previous run would skew every figure.
fn fresh_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(&p);
    }
}

async fn w1(args: &Args) -> Value {
    let n = args.jobs;
    fresh_db(&args.sqlite);
    let (pool, _) = open(&args.sqlite).await;
    let t = Instant::now();
    push_single(&pool, n, args.in_flight).await;
    let single = n as f64 / t.elapsed().as_secs_f64();
    pool.close().await;

    fresh_db(&args.sqlite);
    let (pool, _) = open(&args.sqlite).await;
    let t = Instant::now();
    push_batched(&pool, n).await;
    let batched = n as f64 / t.elapsed().as_secs_f64();
    json!({"jobs": n, "single_jobs_per_s": single, "batched_jobs_per_s": batched,
           "batch": BATCH, "in_flight": args.in_flight})
}

async fn w2(args: &Args) -> Value {
    let n = args.jobs;
    fresh_db(&args.sqlite);
    let (pool, wakeups) = open(&args.sqlite).await;
    push_batched(&pool, n).await;
    analyze(&pool).await;
    let t = Instant::now();
    start_worker(args, &pool, wakeups);
    wait_done(&pool, n, Duration::from_secs(3600)).await;
    let s = t.elapsed().as_secs_f64();
    json!({"jobs": n, "seconds": s, "jobs_per_s": n as f64 / s})
}

async fn w3(args: &Args) -> Value {
    let n = (args.rate * args.seconds).round() as usize;
    fresh_db(&args.sqlite);
    let (pool, wakeups) = open(&args.sqlite).await;
    start_worker(args, &pool, wakeups);
    // The table starts empty, so a one-off ANALYZE cannot help here; keep
    // the statistics fresh as a long-running deployment's would be.
    let analyzer_pool = pool.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            analyze(&analyzer_pool).await;
        }
    });
    // Let the worker register and reach its first empty poll.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = tokio::time::Instant::now();
    let mut pushes = Vec::with_capacity(n);
    for i in 0..n {
        // Scheduled by target time, so a slow push does not shift the rest.
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / args.rate)).await;
        let mut s = storage(&pool, 1);
        pushes.push(tokio::spawn(async move { s.push(job()).await.expect("push") }));
    }
    for p in pushes {
        p.await.unwrap();
    }
    wait_done(&pool, n, Duration::from_secs(600)).await;
    let mut samples = RECORDER.get().unwrap().latencies_ms.lock().unwrap().clone();
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    json!({"jobs": n, "rate": args.rate, "seconds": args.seconds,
           "p50_ms": percentile(&samples, 50.0), "p99_ms": percentile(&samples, 99.0),
           "max_ms": samples.last().copied().unwrap_or(f64::NAN), "samples_ms": samples})
}

async fn w4(args: &Args) -> Value {
    let n = args.jobs;
    fresh_db(&args.sqlite);
    let (pool, wakeups) = open(&args.sqlite).await;
    let t = Instant::now();
    push_batched(&pool, n).await;
    let submit = n as f64 / t.elapsed().as_secs_f64();
    let disk = disk_mib(&args.sqlite);
    analyze(&pool).await;
    let t = Instant::now();
    start_worker(args, &pool, wakeups);
    wait_done(&pool, n, Duration::from_secs(7200)).await;
    let drain = n as f64 / t.elapsed().as_secs_f64();
    json!({"jobs": n, "submit_jobs_per_s": submit, "drain_jobs_per_s": drain,
           "rss_mib": self_rss_mib("VmHWM:"), "disk_mib": disk})
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    RECORDER
        .set(Recorder {
            started: AtomicU64::new(0),
            latencies_ms: Mutex::new(Vec::new()),
            keep_latencies: args.workload == "w3",
        })
        .ok();
    let results = match args.workload.as_str() {
        "w1" => w1(&args).await,
        "w2" => w2(&args).await,
        "w3" => w3(&args).await,
        _ => w4(&args).await,
    };
    let out = json!({
        "system": "apalis",
        "version": APALIS_VERSION,
        "workload": args.workload,
        "durability": DURABILITY,
        "results": results,
        "notes": format!(
            "one process: producer, worker and SQLite (W4 RSS is this process's VmHWM). \
             single = TaskSink::push, one job per call, {} callers in flight; \
             batched = TaskSink::push_bulk of {BATCH} (one transaction), {BATCH_IN_FLIGHT} in flight; \
             worker: one WorkerBuilder, concurrency {}, fetch batch {}, woken by an SQLite \
             insert hook plus a 50 ms poll; done = status 'Done' in the Jobs table",
            args.in_flight, args.concurrency, args.fetch_batch
        ),
    });
    println!("{out}");
    // Workers are left running; the process exit ends them.
    std::process::exit(0);
}
