//! The spooling JobClient against a real in-process JobTracker (embedded
//! sled store, port 0): jobs spooled while no tracker is reachable reach
//! the tracker once it is, each once and in submit order; a new client on
//! the same directory replays what the last one left; the limits, a
//! damaged spool and a second client on one directory give clear errors.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lts_common::resolver::Resolver;
use lts_common::{JobSpec, Schedule};
use lts_jobclient::{
    AsideReason, ClientOptions, Error, JobClient, JobFilter, SpoolEvent, SpoolOptions,
    SpoolingClient, SubmitOutcome,
};
use tokio::sync::{oneshot, watch};

struct Tracker {
    address: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Tracker {
    async fn start() -> Tracker {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = format!("127.0.0.1:{}", listener.local_addr().expect("addr").port());
        let (stop, stopped) = oneshot::channel::<()>();
        let config = lts_jobtracker::TrackerConfig::embedded(dir.path().join("data"));
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = lts_jobtracker::serve(config, listener, shutdown).await {
                panic!("JobTracker failed: {e}");
            }
        });
        Tracker {
            address: format!("http://{address}"),
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), &mut self.task).await;
    }
}

/// Nothing listens on port 1 of localhost: connections are refused at once.
const DEAD_ADDRESS: &str = "http://127.0.0.1:1";

/// A resolver whose one address the test moves from a dead port to a
/// tracker that has started.
#[derive(Debug)]
struct Moving {
    address: Mutex<String>,
    watch: watch::Sender<Vec<String>>,
}

impl Moving {
    fn new(address: &str) -> Arc<Moving> {
        Arc::new(Moving {
            address: Mutex::new(address.to_string()),
            watch: watch::Sender::new(vec![address.to_string()]),
        })
    }

    fn point_at(&self, address: &str) {
        *self.address.lock().expect("lock") = address.to_string();
        self.watch.send_replace(vec![address.to_string()]);
    }
}

impl Resolver for Moving {
    fn addresses(&self) -> Vec<String> {
        vec![self.address.lock().expect("lock").clone()]
    }
    fn connected(&self, _: &str) {}
    fn failed(&self, _: &str) {}
    fn watch(&self) -> watch::Receiver<Vec<String>> {
        self.watch.subscribe()
    }
}

fn client(resolver: Arc<Moving>) -> JobClient {
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(30),
        ..ClientOptions::default()
    };
    JobClient::with_resolver(resolver, options)
}

fn options(background: bool) -> SpoolOptions {
    SpoolOptions {
        submit_attempts: 1,
        retry_delay: Duration::from_millis(10),
        replay_interval: Duration::from_millis(100),
        replay_batch: 7,
        background_replay: background,
        ..SpoolOptions::default()
    }
}

fn later_job(task_id: &str) -> JobSpec {
    let mut spec = JobSpec::new(task_id, "spool-workers");
    spec.payload = format!("payload of {task_id}").into_bytes();
    // Far enough ahead that nothing would run it during the test.
    spec.schedule = Schedule::At(lts_common::now_ms() + 3_600_000);
    spec
}

fn spooled_task_ids(outcomes: &[SubmitOutcome]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match o {
            SubmitOutcome::Spooled { task_id } => task_id.clone(),
            other => panic!("expected Spooled, got {other:?}"),
        })
        .collect()
}

/// Every job of the test's node group, by task id, in the tracker's
/// submit order.
async fn jobs_by_task(client: &JobClient) -> Vec<(String, u64)> {
    let filter = JobFilter {
        node_group: Some("spool-workers".into()),
        ..Default::default()
    };
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .list(&filter, 500, token.as_deref())
            .await
            .expect("list");
        out.extend(page.jobs.into_iter().map(|j| (j.spec.task_id, j.seq)));
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    out.sort_by_key(|(_, seq)| *seq);
    out
}

async fn wait_until_empty(spooling: &SpoolingClient) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while spooling.depth() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the spool still holds {} jobs: {:?}",
            spooling.depth(),
            spooling.status()
        )
    });
}

#[tokio::test]
async fn jobs_spooled_while_no_tracker_is_up_reach_it_once_in_submit_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let resolver = Moving::new(DEAD_ADDRESS);
    let spooling = client(resolver.clone())
        .with_spool(dir.path(), options(true))
        .expect("open the spool");

    let mut expected = Vec::new();
    let first: Vec<JobSpec> = (0..10).map(|i| later_job(&format!("a-{i}"))).collect();
    expected.extend(spooled_task_ids(
        &spooling.submit(first).await.expect("submit"),
    ));
    // A job without a task id gets one, so its replay is idempotent.
    let mut anonymous = later_job("");
    anonymous.task_id.clear();
    let second = vec![later_job("b-0"), anonymous, later_job("b-2")];
    let second_ids = spooled_task_ids(&spooling.submit(second).await.expect("submit"));
    assert!(!second_ids[1].is_empty(), "a task id was assigned");
    expected.extend(second_ids);
    assert_eq!(spooling.depth(), 13);
    let status = spooling.status();
    assert_eq!(status.entries, 13);
    assert!(
        status.oldest_ms.is_some() && status.disk_bytes > 0,
        "{status:?}"
    );

    let mut events = spooling.events();
    let tracker = Tracker::start().await;
    resolver.point_at(&tracker.address);
    wait_until_empty(&spooling).await;

    let stored = jobs_by_task(spooling.client()).await;
    let stored_ids: Vec<String> = stored.into_iter().map(|(t, _)| t).collect();
    assert_eq!(stored_ids, expected, "each job once, in submit order");
    let progress = spooling.status().progress;
    assert_eq!(progress.replayed, 13, "{progress:?}");
    assert_eq!(progress.remaining, 0);
    let mut replayed = 0;
    while let Ok(e) = events.try_recv() {
        assert!(matches!(e, SpoolEvent::Replayed { .. }), "{e:?}");
        replayed += 1;
    }
    assert_eq!(replayed, 13);

    // With the spool empty and a tracker up, a submit goes straight to it.
    let direct = spooling
        .submit(vec![later_job("c-0")])
        .await
        .expect("submit");
    assert!(direct[0].is_accepted(), "{direct:?}");

    spooling.close().await.expect("close");
    tracker.stop().await;
}

#[tokio::test]
async fn a_new_client_replays_what_the_last_one_left_and_reports_a_taken_task_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let resolver = Moving::new(DEAD_ADDRESS);
    let first = client(resolver.clone())
        .with_spool(dir.path(), options(false))
        .expect("open the spool");
    let jobs: Vec<JobSpec> = (0..5).map(|i| later_job(&format!("r-{i}"))).collect();
    spooled_task_ids(&first.submit(jobs.clone()).await.expect("submit"));
    first.close().await.expect("close");

    let tracker = Tracker::start().await;
    resolver.point_at(&tracker.address);
    let plain = client(resolver.clone());
    // r-1 reached the tracker before the last client stopped (as when it
    // dies mid-replay); r-3's task id was taken by a different job.
    let mut other = later_job("r-3");
    other.payload = b"another job".to_vec();
    let direct = plain
        .submit(vec![jobs[1].clone(), other])
        .await
        .expect("submit");
    let taken_by = direct[1].job_id().expect("accepted").to_string();

    let second = client(resolver.clone())
        .with_spool(dir.path(), options(false))
        .expect("reopen the spool");
    assert_eq!(second.depth(), 5, "the spool survived the client");
    let mut events = second.events();
    let mut batches = 0;
    let progress = second.replay_with(|_| batches += 1).await.expect("replay");
    assert!(batches >= 1);
    assert_eq!(
        (
            progress.replayed,
            progress.already_stored,
            progress.set_aside
        ),
        (3, 1, 1),
        "{progress:?}"
    );
    assert_eq!(second.depth(), 0);

    let stored = jobs_by_task(&plain).await;
    let mut count: HashMap<String, usize> = HashMap::new();
    for (t, _) in &stored {
        *count.entry(t.clone()).or_default() += 1;
    }
    for i in 0..5 {
        assert_eq!(count.get(&format!("r-{i}")), Some(&1), "{stored:?}");
    }

    let aside = second.set_aside().expect("set aside");
    assert_eq!(aside.len(), 1);
    assert_eq!(aside[0].task_id, "r-3");
    assert_eq!(
        aside[0].reason,
        AsideReason::Conflict {
            existing_job_id: taken_by.clone()
        }
    );
    let mut reported = false;
    while let Ok(e) = events.try_recv() {
        if let SpoolEvent::SetAside(a) = e {
            reported = a.task_id == "r-3";
        }
    }
    assert!(reported, "the conflict was reported as an event");
    second.close().await.expect("close");

    // The set-aside job stays in the spool until a purge.
    let third = client(resolver)
        .with_spool(dir.path(), options(false))
        .expect("reopen the spool");
    assert_eq!(third.status().set_aside, 1);
    assert_eq!(third.purge().await.expect("purge"), 1);
    assert!(third.set_aside().expect("set aside").is_empty());
    third.close().await.expect("close");
    tracker.stop().await;
}

#[tokio::test]
async fn a_full_spool_refuses_the_batch_naming_its_directory_and_keeps_what_it_holds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let resolver = Moving::new(DEAD_ADDRESS);
    let spooling = client(resolver.clone())
        .with_spool(
            dir.path(),
            SpoolOptions {
                max_entries: 3,
                ..options(false)
            },
        )
        .expect("open the spool");
    spooling
        .submit(vec![later_job("f-0"), later_job("f-1")])
        .await
        .expect("submit");
    let full = spooling
        .submit(vec![later_job("f-2"), later_job("f-3")])
        .await
        .unwrap_err();
    assert!(matches!(full, Error::SpoolFull { .. }), "{full}");
    let message = full.to_string();
    assert!(
        message.contains(&dir.path().display().to_string()) && message.contains("3 entries"),
        "{message}"
    );
    assert_eq!(spooling.depth(), 2, "what was spooled is kept");
    spooling.close().await.expect("close");

    let by_bytes = client(resolver)
        .with_spool(
            dir.path(),
            SpoolOptions {
                max_bytes: 100,
                ..options(false)
            },
        )
        .expect("reopen the spool");
    assert_eq!(by_bytes.depth(), 2);
    let full = by_bytes.submit(vec![later_job("f-4")]).await.unwrap_err();
    assert!(full.to_string().contains("100 bytes"), "{full}");
    assert_eq!(by_bytes.depth(), 2);
    by_bytes.close().await.expect("close");
}

/// Spools two jobs under `dir` and closes the spool.
async fn spool_two(dir: &Path) {
    let spooling = client(Moving::new(DEAD_ADDRESS))
        .with_spool(dir, options(false))
        .expect("open the spool");
    spooling
        .submit(vec![later_job("d-0"), later_job("d-1")])
        .await
        .expect("submit");
    spooling.close().await.expect("close");
}

fn damaged_copies(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("spool.sled.damaged-"))
        .collect()
}

#[tokio::test]
async fn a_damaged_spool_is_moved_aside_and_a_fresh_one_used() {
    for damage in ["garbage", "truncated"] {
        let dir = tempfile::tempdir().expect("temp dir");
        spool_two(dir.path()).await;
        let db = dir.path().join("spool.sled");
        match damage {
            "garbage" => {
                for name in ["conf", "db"] {
                    std::fs::write(db.join(name), b"\x00\xffnot a sled file\x13\x37")
                        .expect("overwrite");
                }
            }
            _ => {
                let file = std::fs::File::options()
                    .write(true)
                    .open(db.join("db"))
                    .expect("open");
                file.set_len(64).expect("truncate");
            }
        }
        let spooling = client(Moving::new(DEAD_ADDRESS))
            .with_spool(dir.path(), options(false))
            .unwrap_or_else(|e| panic!("{damage}: a damaged spool stops the client: {e}"));
        let moved = spooling
            .status()
            .moved_aside
            .unwrap_or_else(|| panic!("{damage}: not moved aside, depth {}", spooling.depth()));
        assert!(moved.exists(), "{damage}: {moved:?}");
        assert_eq!(damaged_copies(dir.path()), vec![moved]);
        assert_eq!(spooling.depth(), 0, "{damage}: a fresh spool");
        let outcomes = spooling
            .submit(vec![later_job("d-2")])
            .await
            .expect("submit");
        spooled_task_ids(&outcomes);
        spooling.close().await.expect("close");

        // No crash loop: the next open finds the fresh spool and its job.
        let again = client(Moving::new(DEAD_ADDRESS))
            .with_spool(dir.path(), options(false))
            .expect("reopen");
        assert_eq!(again.depth(), 1, "{damage}");
        assert!(again.status().moved_aside.is_none());
        again.close().await.expect("close");
    }
}

#[tokio::test]
async fn a_second_client_on_one_directory_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = client(Moving::new(DEAD_ADDRESS))
        .with_spool(dir.path(), options(false))
        .expect("open the spool");
    let second = client(Moving::new(DEAD_ADDRESS))
        .with_spool(dir.path(), options(false))
        .unwrap_err();
    assert!(matches!(second, Error::SpoolInUse { .. }), "{second}");
    assert!(
        second
            .to_string()
            .contains(&dir.path().display().to_string()),
        "{second}"
    );
    first.close().await.expect("close");
    let third = client(Moving::new(DEAD_ADDRESS))
        .with_spool(dir.path(), options(false))
        .expect("free once the first is closed");
    third.close().await.expect("close");
}

/// Runs the `jobclient` binary; returns (exit code, stdout, stderr).
fn jobclient(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobclient"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .env_remove("JOBCLIENT_SPOOL")
        .output()
        .expect("run jobclient");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// The binary runs while this test waits for it: the tracker serves from
// the other worker threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_spool_commands_of_the_binary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = dir.path().join("spool");
    let spool = spool.to_str().expect("utf-8 path");
    let submit = |tracker: &str, prefix: &str| {
        jobclient(&[
            "--jobtracker",
            tracker,
            "submit",
            "--spool",
            spool,
            "-g",
            "spool-workers",
            "--task-id-prefix",
            prefix,
            "--count",
            "3",
            "--payload",
            "x",
        ])
    };
    let (code, out, err) = submit(DEAD_ADDRESS, "cli-");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("spooled task cli-"))
            .count(),
        3,
        "{out}"
    );
    assert!(err.contains("the spool holds 3"), "{err}");

    let (code, out, err) = jobclient(&["spool", "status", "--spool", spool]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("entries: 3") && out.contains("size on disk"),
        "{out}"
    );

    // Without a terminal and without --yes, purge refuses and names the
    // directory.
    let (code, _, err) = jobclient(&["spool", "purge", "--spool", spool]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(spool) && err.contains("--yes"), "{err}");

    let tracker = Tracker::start().await;
    let (code, out, err) = jobclient(&[
        "--jobtracker",
        &tracker.address,
        "spool",
        "replay",
        "--spool",
        spool,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("replay done: 3 replayed"), "{out}");
    let (_, out, _) = jobclient(&["spool", "status", "--spool", spool, "--json"]);
    let status: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(status["entries"], 0, "{status}");

    // A tracker up: submit --spool stores the jobs directly.
    let (code, out, err) = submit(&tracker.address, "live-");
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("accepted ")).count(),
        3,
        "{out}"
    );

    // Spool again while down, then purge with --yes.
    let (code, _, err) = submit(DEAD_ADDRESS, "gone-");
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = jobclient(&["spool", "purge", "--spool", spool, "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("purged 3 jobs"), "{out}");
    tracker.stop().await;
}
