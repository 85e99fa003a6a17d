//! One suite of store cases, run against every backend.
//!
//! [`CASES`] is the one list: each case takes a [`Backend`] that opens a
//! store at a location and can reopen the same location (a restart), and
//! every backend runs every case (`every_case_on_the_*_store`; set
//! `LTS_CONFORMANCE_CASE` to a case's name to run only it). A case that
//! needs a capability a backend lacks checks that the backend refuses it
//! clearly instead; today every backend has every capability. The modules after
//! the list hold what only one backend has: sled's threads and files,
//! MongoDB's sharing between trackers.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use futures::FutureExt;

use lts_common::{JobSpec, JobState, LogKind, Outcome, RetryPlan, RetryStep, Schedule};
use lts_jobtracker::store::mongo::{MongoOptions, MongoStore};
use lts_jobtracker::store::sled::SledStore;
use lts_jobtracker::store::{
    CompleteResult, CycleStore, JobStore, ListFilter, LogFilter, OperatorStore, RunReport,
    SubmitRefusal, SubmitResult,
};

/// Opens stores of one backend at a location, again and again.
trait Backend {
    fn open(&self) -> Arc<dyn JobStore>;

    /// Whether the backend's server is absent and the case is skipped.
    fn skip(&self) -> bool {
        false
    }
}

struct Sled(tempfile::TempDir);

impl Backend for Sled {
    fn open(&self) -> Arc<dyn JobStore> {
        Arc::new(SledStore::open(self.0.path()).expect("open sled store"))
    }
}

fn sled() -> Sled {
    Sled(tempfile::tempdir().expect("temp dir"))
}

/// The sled store with no memory budget: every job submitted ready to run
/// waits on disk until a claim reads it in, so each case also runs
/// against the queue on disk.
struct SledOnDisk(tempfile::TempDir);

impl Backend for SledOnDisk {
    fn open(&self) -> Arc<dyn JobStore> {
        let store = SledStore::open(self.0.path()).expect("open sled store");
        store.set_memory_budget(0);
        Arc::new(store)
    }
}

/// The MongoDB server the Mongo cases use, from `LTS_TEST_MONGODB_URI`
/// (`.ci/run` starts one; a real MongoDB works unchanged). Without it the
/// cases skip loudly, or fail under `CI=true`.
fn mongo_uri() -> Option<String> {
    match std::env::var("LTS_TEST_MONGODB_URI") {
        Ok(uri) if !uri.is_empty() => Some(uri),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("LTS_TEST_MONGODB_URI is not set: CI must start a MongoDB server (see .ci/run) for the Mongo store tests");
            }
            eprintln!("\n*** skipping: LTS_TEST_MONGODB_URI not set; the MongoDB store is NOT tested ***\n");
            None
        }
    }
}

/// A fresh database per case on the server of `LTS_TEST_MONGODB_URI`;
/// every open is the same tracker instance, so a reopen is a restart.
struct Mongo {
    uri: Option<String>,
    database: String,
}

fn mongo_options(uri: &str, database: &str, instance: &str) -> MongoOptions {
    MongoOptions {
        uri: uri.to_string(),
        database: database.to_string(),
        log_retention: std::time::Duration::from_secs(7 * 24 * 3600),
        instance: instance.to_string(),
        lease: std::time::Duration::from_secs(30),
    }
}

impl Backend for Mongo {
    fn open(&self) -> Arc<dyn JobStore> {
        let uri = self.uri.as_deref().expect("skipped cases do not open");
        Arc::new(MongoStore::new(mongo_options(
            uri,
            &self.database,
            "conformance",
        )))
    }

    fn skip(&self) -> bool {
        self.uri.is_none()
    }
}

/// Drops the case's database, so a real MongoDB keeps no test leftovers.
/// On a thread of its own: the case's runtime is still on this one.
impl Drop for Mongo {
    fn drop(&mut self) {
        let Some(uri) = self.uri.clone() else { return };
        let database = self.database.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                MongoStore::new(mongo_options(&uri, &database, "cleanup"))
                    .drop_database()
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("cannot drop test database {}: {e}", self.database);
        }
    }
}

fn mongo() -> Mongo {
    Mongo {
        uri: mongo_uri(),
        database: format!("lts_test_{}", uuid::Uuid::now_v7().simple()),
    }
}

const NOW: i64 = 1_700_000_000_000;

/// The cycle firing of a store that has it.
fn cycles(s: &dyn JobStore) -> &dyn CycleStore {
    s.cycles().expect("this store fires cron and repeat cycles")
}

/// The operator verbs of a store that has them.
fn operator(s: &dyn JobStore) -> &dyn OperatorStore {
    s.operator().expect("this store has operator verbs")
}

fn spec(task: &str, group: &str) -> JobSpec {
    JobSpec::new(task, group)
}

async fn fresh(b: &dyn Backend) -> Arc<dyn JobStore> {
    let s = b.open();
    s.recover(NOW).await.expect("recover");
    s
}

fn created(r: &SubmitResult) -> String {
    match r {
        SubmitResult::Created(id) => id.clone(),
        other => panic!("expected a created job, got {other:?}"),
    }
}

/// Submits `specs` at `NOW`, every one accepted; returns their ids.
async fn submit_ids(s: &dyn JobStore, specs: Vec<JobSpec>) -> Vec<String> {
    s.submit(specs, NOW)
        .await
        .expect("submit")
        .iter()
        .map(created)
        .collect()
}

fn report(job_id: &str, attempt: u32, outcome: Outcome) -> RunReport {
    RunReport {
        job_id: job_id.into(),
        attempt,
        outcome,
        started_at_ms: NOW,
        finished_at_ms: NOW + 5,
        worker: "w1".into(),
    }
}

async fn claim_one(s: &dyn JobStore, group: &str, now: i64) -> Option<lts_common::Job> {
    let c = s
        .claim(group, &[("w1".to_string(), 1)], now)
        .await
        .expect("claim");
    c.per_grant.into_iter().flatten().next()
}

async fn submit_dedup_replace(b: &dyn Backend) {
    let s = fresh(b).await;
    let r = s
        .submit(
            vec![spec("a", "g"), spec("a", "g"), spec("a", "other")],
            NOW,
        )
        .await
        .expect("submit");
    let first = created(&r[0]);
    assert_eq!(
        r[1],
        SubmitResult::Refused(SubmitRefusal::AlreadyExists {
            job_id: first.clone()
        }),
        "a duplicate task id in the same batch is refused"
    );
    created(&r[2]);
    let r = s.submit(vec![spec("a", "g")], NOW).await.expect("submit");
    assert!(
        matches!(&r[0], SubmitResult::Refused(SubmitRefusal::AlreadyExists { job_id }) if *job_id == first)
    );
    let mut again = spec("a", "g");
    again.replace_on_exist = true;
    again.priority = 5;
    let r = s.submit(vec![again], NOW).await.expect("submit");
    let SubmitResult::Replaced { job_id, replaced } = &r[0] else {
        panic!("expected a replace, got {:?}", r[0]);
    };
    assert_eq!(replaced.job_id, first);
    let now_job = s.get_by_task("g", "a").await.expect("get").expect("exists");
    assert_eq!((&now_job.job_id, now_job.spec.priority), (job_id, 5));
    let old = s.get(&first).await.expect("get").expect("old kept");
    assert_eq!(old.state, JobState::Cancelled);
    // The replaced job is no longer in the queue: only the new one claims.
    let j = claim_one(&*s, "g", NOW).await.expect("one job");
    assert_eq!(&j.job_id, job_id);
    assert!(claim_one(&*s, "g", NOW).await.is_none());
}

async fn claim_order(b: &dyn Backend) {
    let s = fresh(b).await;
    let mut specs = Vec::new();
    for (task, prio, at) in [
        ("late-high", 1, NOW + 10),
        ("low", 200, NOW),
        ("first", 50, NOW),
        ("second", 50, NOW),
        ("earlier", 50, NOW - 10),
        ("future", 0, NOW + 60_000),
    ] {
        let mut sp = spec(task, "g");
        sp.priority = prio;
        sp.schedule = Schedule::At(at);
        specs.push(sp);
    }
    s.submit(specs, NOW - 100).await.expect("submit");
    let c = s
        .claim("g", &[("w1".into(), 10)], NOW + 20)
        .await
        .expect("claim");
    let order: Vec<&str> = c.per_grant[0]
        .iter()
        .map(|j| j.spec.task_id.as_str())
        .collect();
    assert_eq!(order, ["late-high", "earlier", "first", "second", "low"]);
    assert_eq!(c.next_ready_at_ms, Some(NOW + 60_000));
    assert!(c.per_grant[0]
        .iter()
        .all(|j| j.state == JobState::Running && j.attempt == 1 && j.worker == "w1"));
}

async fn claims_spread_over_grants(b: &dyn Backend) {
    let s = fresh(b).await;
    let specs = (0..6).map(|i| spec(&format!("t{i}"), "g")).collect();
    s.submit(specs, NOW).await.expect("submit");
    let c = s
        .claim("g", &[("busy".into(), 1), ("idle".into(), 4)], NOW)
        .await
        .expect("claim");
    assert_eq!(c.per_grant[0].len(), 1);
    assert_eq!(c.per_grant[1].len(), 4);
    assert!(c.per_grant[1].iter().all(|j| j.worker == "idle"));
}

async fn attempt_fencing(b: &dyn Backend) {
    let s = fresh(b).await;
    let id = created(&s.submit(vec![spec("a", "g")], NOW).await.expect("submit")[0]);
    let j = claim_one(&*s, "g", NOW).await.expect("claimed");
    assert_eq!(j.attempt, 1);
    // The TaskTracker is lost: the run goes back and runs again as attempt 2.
    assert_eq!(
        s.requeue(&[(id.clone(), 1)], "lost", NOW)
            .await
            .expect("requeue"),
        1
    );
    // Its outcome, arriving while the job waits to run again, is refused
    // with where the job really is.
    let r = s
        .complete(vec![report(&id, 1, Outcome::Success(String::new()))], NOW)
        .await
        .expect("complete");
    assert_eq!(r[0], CompleteResult::Stale { current_attempt: 1 });
    assert_eq!(
        last_stale_message(&*s, &id).await,
        "outcome success of attempt 1 refused: attempt 1 was put back and the job is pending, to run again as attempt 2"
    );
    let j = claim_one(&*s, "g", NOW).await.expect("claimed again");
    assert_eq!(j.attempt, 2);
    let r = s
        .complete(vec![report(&id, 1, Outcome::Success(String::new()))], NOW)
        .await
        .expect("complete");
    assert_eq!(r[0], CompleteResult::Stale { current_attempt: 2 });
    assert_eq!(
        last_stale_message(&*s, &id).await,
        "outcome success of attempt 1 refused: the job is running at attempt 2"
    );
    assert_eq!(
        s.get(&id).await.expect("get").expect("job").state,
        JobState::Running
    );
    let r = s
        .complete(vec![report(&id, 2, Outcome::Success("ok".into()))], NOW)
        .await
        .expect("complete");
    assert!(
        matches!(&r[0], CompleteResult::Applied { job, .. } if job.state == JobState::Succeeded)
    );
    // A second report of the same attempt is stale too: the job is final.
    let r = s
        .complete(vec![report(&id, 2, Outcome::Success("ok".into()))], NOW)
        .await
        .expect("complete");
    assert_eq!(r[0], CompleteResult::Stale { current_attempt: 2 });
    assert_eq!(
        last_stale_message(&*s, &id).await,
        "outcome success: ok of attempt 2 refused: the job is succeeded at attempt 2"
    );
    let (log, _) = s.logs(&id, 100, None).await.expect("logs");
    assert!(log
        .iter()
        .any(|e| e.kind == LogKind::StaleOutcome && e.attempt == 1));
}

/// The message of the job's latest `stale-outcome` log line.
async fn last_stale_message(s: &dyn JobStore, id: &str) -> String {
    let (log, _) = s.logs(id, 100, None).await.expect("logs");
    log.iter()
        .rev()
        .find(|e| e.kind == LogKind::StaleOutcome)
        .map(|e| e.message.clone())
        .expect("a stale-outcome line")
}

async fn retry_and_reschedule(b: &dyn Backend) {
    let s = fresh(b).await;
    let mut sp = spec("a", "g");
    sp.retry_plan = Some(RetryPlan {
        steps: vec![RetryStep::RetryAfter(1_000), RetryStep::Suspend],
        count: 1,
        forever: false,
    });
    let id = created(&s.submit(vec![sp], NOW).await.expect("submit")[0]);
    claim_one(&*s, "g", NOW).await.expect("claimed");
    s.complete(vec![report(&id, 1, Outcome::Error("boom".into()))], NOW)
        .await
        .expect("complete");
    // Not ready before its retry time, ready after.
    assert!(claim_one(&*s, "g", NOW + 999).await.is_none());
    let j = claim_one(&*s, "g", NOW + 1_000).await.expect("retried");
    assert_eq!((j.attempt, j.failures), (2, 1));
    s.complete(
        vec![report(&id, 2, Outcome::Error("boom".into()))],
        NOW + 1_000,
    )
    .await
    .expect("complete");
    assert_eq!(
        s.get(&id).await.expect("get").expect("job").state,
        JobState::Suspended
    );
    assert!(claim_one(&*s, "g", NOW + 100_000).await.is_none());

    let id2 = created(&s.submit(vec![spec("b", "g")], NOW).await.expect("submit")[0]);
    claim_one(&*s, "g", NOW).await.expect("claimed");
    let later = Outcome::Later {
        delay_ms: 500,
        message: "busy".into(),
    };
    s.complete(vec![report(&id2, 1, later)], NOW)
        .await
        .expect("complete");
    let j = s.get(&id2).await.expect("get").expect("job");
    assert_eq!(
        (j.state, j.failures, j.trigger_at_ms),
        (JobState::Pending, 0, NOW + 500)
    );
    let id3 = created(&s.submit(vec![spec("c", "g")], NOW).await.expect("submit")[0]);
    let j = claim_one(&*s, "g", NOW).await.expect("claimed");
    assert_eq!(j.job_id, id3);
    s.complete(vec![report(&id3, 1, Outcome::Failed("bad".into()))], NOW)
        .await
        .expect("complete");
    assert_eq!(
        s.get(&id3).await.expect("get").expect("job").state,
        JobState::Failed
    );
}

async fn feedback_queue(b: &dyn Backend) {
    let s = fresh(b).await;
    let mut sp = spec("a", "g");
    sp.need_feedback = true;
    sp.submit_node_group = "clients".into();
    let id = created(&s.submit(vec![sp], NOW).await.expect("submit")[0]);
    claim_one(&*s, "g", NOW).await.expect("claimed");
    let r = s
        .complete(vec![report(&id, 1, Outcome::Success("done".into()))], NOW)
        .await
        .expect("complete");
    let CompleteResult::Applied {
        feedback: Some(fb), ..
    } = &r[0]
    else {
        panic!("expected feedback, got {:?}", r[0]);
    };
    assert_eq!(
        (fb.job_id.as_str(), fb.submit_node_group.as_str()),
        (id.as_str(), "clients")
    );
    let pending = s.pending_feedback().await.expect("pending");
    assert_eq!(pending.len(), 1);
    s.ack_feedback(std::slice::from_ref(&fb.feedback_id))
        .await
        .expect("ack");
    assert!(s.pending_feedback().await.expect("pending").is_empty());
}

async fn logs_and_listing(b: &dyn Backend) {
    let s = fresh(b).await;
    let specs = (0..5).map(|i| spec(&format!("job-{i}"), "g")).collect();
    let ids = submit_ids(&*s, specs).await;
    s.submit(vec![spec("x", "h")], NOW).await.expect("submit");
    let j = claim_one(&*s, "g", NOW).await.expect("claimed");
    s.started(&[(j.job_id.clone(), 1)], "w1", NOW + 1)
        .await
        .expect("started");
    let (log, next) = s.logs(&j.job_id, 2, None).await.expect("logs");
    assert_eq!(
        log.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [LogKind::Received, LogKind::Dispatched]
    );
    let (rest, _) = s.logs(&j.job_id, 10, next.as_deref()).await.expect("logs");
    assert_eq!(
        rest.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [LogKind::Started]
    );

    let filter = ListFilter {
        node_group: Some("g".into()),
        ..Default::default()
    };
    let (page1, token) = s.list(&filter, 3, None).await.expect("list");
    let (page2, token2) = s.list(&filter, 3, token.as_deref()).await.expect("list");
    assert_eq!((page1.len(), page2.len(), token2), (3, 2, None));
    let mut listed: Vec<String> = page1
        .iter()
        .chain(&page2)
        .map(|j| j.job_id.clone())
        .collect();
    listed.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(listed, want);
    let running = ListFilter {
        state: Some(JobState::Running),
        ..Default::default()
    };
    let (r, _) = s.list(&running, 10, None).await.expect("list");
    assert_eq!(r.len(), 1);
    let prefix = ListFilter {
        task_id_prefix: Some("job-".into()),
        ..Default::default()
    };
    assert_eq!(s.list(&prefix, 100, None).await.expect("list").0.len(), 5);

    let mut later = spec("later", "g");
    later.schedule = Schedule::At(NOW + 60_000);
    s.submit(vec![later], NOW).await.expect("submit");
    let at = ListFilter {
        kind: Some(lts_common::ScheduleKind::At),
        ..Default::default()
    };
    // Paged one by one, the filter still finds the one job of its kind.
    let mut found = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let (page, next) = s.list(&at, 1, token.as_deref()).await.expect("list");
        found.extend(page.into_iter().map(|j| j.spec.task_id));
        match next {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(found, ["later"]);
}

async fn log_queries(b: &dyn Backend) {
    let s = fresh(b).await;
    let r = s
        .submit(vec![spec("a", "g"), spec("b", "g"), spec("a", "h")], NOW)
        .await
        .expect("submit");
    let ids: Vec<String> = r.iter().map(created).collect();
    let by = |node_group: Option<&str>, task_id: Option<&str>| LogFilter {
        node_group: node_group.map(str::to_string),
        task_id: task_id.map(str::to_string),
        ..Default::default()
    };
    let jobs_of = |lines: &[lts_common::LogEntry]| {
        let mut j: Vec<String> = lines.iter().map(|e| e.job_id.clone()).collect();
        j.sort();
        j.dedup();
        j
    };
    let (lines, _) = s
        .query_logs(&by(Some("g"), None), 100, None)
        .await
        .expect("query");
    let mut want = vec![ids[0].clone(), ids[1].clone()];
    want.sort();
    assert_eq!(jobs_of(&lines), want, "only the node group's jobs");
    let (lines, _) = s
        .query_logs(&by(None, Some("a")), 100, None)
        .await
        .expect("query");
    let mut want = vec![ids[0].clone(), ids[2].clone()];
    want.sort();
    assert_eq!(jobs_of(&lines), want, "only that task id, in every group");
    let (lines, _) = s
        .query_logs(&by(Some("h"), Some("a")), 100, None)
        .await
        .expect("query");
    assert_eq!(jobs_of(&lines), [ids[2].clone()]);
    // Paged one line at a time: every line once, in the order one large
    // page gives them, and never more lines in a page than asked for.
    let (all, _) = s
        .query_logs(&by(Some("g"), None), 1000, None)
        .await
        .expect("query");
    let mut paged = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let (lines, next) = s
            .query_logs(&by(Some("g"), None), 1, token.as_deref())
            .await
            .expect("query");
        assert!(lines.len() <= 1, "{} lines in a page of 1", lines.len());
        paged.extend(lines);
        match next {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(paged, all);
    assert_eq!(jobs_of(&paged).len(), 2);
    let future = LogFilter {
        node_group: Some("g".into()),
        since_ms: Some(i64::MAX - 1),
        ..Default::default()
    };
    assert!(s
        .query_logs(&future, 100, None)
        .await
        .expect("query")
        .0
        .is_empty());
    let past = LogFilter {
        job_id: Some(ids[0].clone()),
        until_ms: Some(1),
        ..Default::default()
    };
    assert!(s
        .query_logs(&past, 100, None)
        .await
        .expect("query")
        .0
        .is_empty());
}

/// A job with more log lines than a page: pages stop inside its log, so a
/// job with many long lines never makes a page too large to send.
async fn a_long_log_is_paged_inside_the_job(b: &dyn Backend) {
    let s = fresh(b).await;
    let r = s
        .submit(vec![spec("long", "g"), spec("short", "g")], NOW)
        .await
        .expect("submit");
    let long = created(&r[0]);
    let lines: Vec<lts_common::LogEntry> = (0..250)
        .map(|i| lts_common::LogEntry::new(&long, lts_common::LogKind::Biz, 1, format!("line {i}")))
        .collect();
    s.append_logs(lines).await.expect("append");
    for filter in [
        LogFilter {
            job_id: Some(long.clone()),
            ..Default::default()
        },
        LogFilter {
            node_group: Some("g".into()),
            ..Default::default()
        },
    ] {
        let mut pages = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let (page, next) = s
                .query_logs(&filter, 100, token.as_deref())
                .await
                .expect("query");
            assert!(page.len() <= 100, "{} lines in a page of 100", page.len());
            pages.push(page);
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        let biz: Vec<String> = pages
            .iter()
            .flatten()
            .filter(|e| e.job_id == long && e.kind == lts_common::LogKind::Biz)
            .map(|e| e.message.clone())
            .collect();
        let want: Vec<String> = (0..250).map(|i| format!("line {i}")).collect();
        assert_eq!(biz, want, "every line once, in order ({filter:?})");
        assert!(pages.len() >= 3, "{} pages for 250 lines", pages.len());
    }
}

async fn cancel(b: &dyn Backend) {
    let s = fresh(b).await;
    let r = s
        .submit(vec![spec("a", "g"), spec("b", "g")], NOW)
        .await
        .expect("submit");
    let (a, bid) = (created(&r[0]), created(&r[1]));
    let c = s.cancel(&a, NOW).await.expect("cancel pending");
    assert_eq!(
        (c.before.state, c.after.state),
        (JobState::Pending, JobState::Cancelled)
    );
    let j = claim_one(&*s, "g", NOW).await.expect("claimed");
    assert_eq!(j.job_id, bid, "a cancelled job is not claimed");
    let c = s.cancel(&bid, NOW).await.expect("cancel running");
    assert_eq!((c.before.state, c.before.attempt), (JobState::Running, 1));
    let r = s
        .complete(vec![report(&bid, 1, Outcome::Success(String::new()))], NOW)
        .await
        .expect("complete");
    assert!(
        matches!(r[0], CompleteResult::Stale { .. }),
        "a cancelled run's outcome is stale"
    );
    let e = s.cancel(&bid, NOW).await.unwrap_err();
    assert!(e.to_string().contains("already cancelled"), "{e}");
    let e = s.cancel("nope", NOW).await.unwrap_err();
    assert!(e.to_string().contains("no job with id nope"), "{e}");
}

async fn restart_recovery(b: &dyn Backend) {
    let (pending, running, done);
    {
        let s = fresh(b).await;
        let r = s
            .submit(vec![spec("p", "g"), spec("r", "g"), spec("d", "g")], NOW)
            .await
            .expect("submit");
        pending = created(&r[0]);
        running = created(&r[1]);
        done = created(&r[2]);
        let c = s.claim("g", &[("w1".into(), 3)], NOW).await.expect("claim");
        let claimed: Vec<&str> = c.per_grant[0].iter().map(|j| j.job_id.as_str()).collect();
        assert_eq!(claimed, [pending.as_str(), running.as_str(), done.as_str()]);
        s.requeue(&[(pending.clone(), 1)], "lost", NOW)
            .await
            .expect("requeue");
        s.complete(vec![report(&done, 1, Outcome::Success(String::new()))], NOW)
            .await
            .expect("complete");
    }
    let s = b.open();
    let rec = s.recover(NOW + 1).await.expect("recover");
    // A store may keep a dispatch in memory until the job's next
    // transition (sled does): a job running at the restart then counts as
    // pending. Either way both are back.
    assert_eq!(rec.pending + rec.requeued, 2);
    let r = s.get(&running).await.expect("get").expect("job");
    assert_eq!(r.state, JobState::Pending);
    let c = s
        .claim("g", &[("w2".into(), 10)], NOW + 2)
        .await
        .expect("claim");
    let mut got: Vec<&str> = c.per_grant[0].iter().map(|j| j.job_id.as_str()).collect();
    got.sort();
    let mut want = vec![pending.as_str(), running.as_str()];
    want.sort();
    assert_eq!(got, want, "every unfinished job is back");
    for j in &c.per_grant[0] {
        // Attempt 1 of both was handed out before the restart; a number is
        // never handed out twice.
        assert!(j.attempt > 1, "job {} has attempt {}", j.job_id, j.attempt);
    }
    assert_eq!(
        s.get(&done).await.expect("get").expect("job").state,
        JobState::Succeeded
    );
    let again = c.per_grant[0]
        .iter()
        .find(|j| j.job_id == running)
        .expect("running job claimed")
        .attempt;
    let (log, _) = s.logs(&running, 100, None).await.expect("logs");
    assert!(
        log.iter()
            .any(|e| e.kind == LogKind::Dispatched && e.attempt == again && e.worker == "w2"),
        "{log:?}"
    );
}

/// Times and delays a TaskTracker sends are not checked by the store's
/// caller alone: the ends of the clock are stored, never a panic.
async fn run_times_at_the_ends_of_the_clock(b: &dyn Backend) {
    let s = fresh(b).await;
    let ids = submit_ids(&*s, vec![spec("a", "g"), spec("b", "g"), spec("c", "g")]).await;
    let c = s.claim("g", &[("w1".into(), 3)], NOW).await.expect("claim");
    assert_eq!(c.per_grant[0].len(), 3);
    s.started(&[(ids[0].clone(), 1)], "w1", i64::MIN)
        .await
        .expect("started at the start of the clock");
    let mut reports = Vec::new();
    for (id, (started, finished)) in ids.iter().zip([(i64::MIN, i64::MAX), (i64::MAX, i64::MIN)]) {
        let mut r = report(id, 1, Outcome::Success("ok".into()));
        r.started_at_ms = started;
        r.finished_at_ms = finished;
        reports.push(r);
    }
    reports.push(report(
        &ids[2],
        1,
        Outcome::Later {
            // The longest delay every backend can store (BSON has no
            // unsigned 64-bit integer).
            delay_ms: i64::MAX as u64,
            message: "much later".into(),
        },
    ));
    let results = s.complete(reports, NOW + 1).await.expect("complete");
    assert!(
        results
            .iter()
            .all(|r| matches!(r, CompleteResult::Applied { .. })),
        "{results:?}"
    );
    for id in &ids[..2] {
        let job = s.get(id).await.expect("get").expect("job");
        assert_eq!(job.state, JobState::Succeeded, "{id}");
        let (log, _) = s.logs(id, 100, None).await.expect("logs");
        assert!(log.iter().any(|e| e.kind == LogKind::Outcome), "{log:?}");
    }
    let later = s.get(&ids[2]).await.expect("get").expect("job");
    assert_eq!(later.state, JobState::Pending);
    assert!(
        later.trigger_at_ms > NOW + 1,
        "a huge delay is not a time in the past: {}",
        later.trigger_at_ms
    );
    assert!(
        claim_one(&*s, "g", NOW + 2).await.is_none(),
        "the job that waits is not claimed now"
    );
}

async fn claim_attempt(s: &dyn JobStore, now: i64) -> u32 {
    claim_one(s, "g", now).await.expect("claimed").attempt
}

async fn restarts_in_a_row_never_hand_out_an_attempt_twice(b: &dyn Backend) {
    let mut seen = Vec::new();
    {
        let s = fresh(b).await;
        s.submit(vec![spec("a", "g")], NOW).await.expect("submit");
        seen.push(claim_attempt(&*s, NOW).await);
        s.close().await.expect("close");
    }
    for round in 1..4 {
        let s = b.open();
        s.recover(NOW + round).await.expect("recover");
        seen.push(claim_attempt(&*s, NOW + round).await);
        s.close().await.expect("close");
    }
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "attempts {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "attempts {seen:?}");
}

async fn a_retry_right_after_an_error_gets_the_next_attempt_also_after_a_restart(b: &dyn Backend) {
    let before;
    {
        let s = fresh(b).await;
        let mut spec = spec("a", "g");
        spec.retry_plan = Some(RetryPlan {
            steps: vec![RetryStep::Retry],
            count: 1,
            forever: false,
        });
        let id = created(&s.submit(vec![spec], NOW).await.expect("submit")[0]);
        assert_eq!(claim_attempt(&*s, NOW).await, 1);
        s.complete(vec![report(&id, 1, Outcome::Error("boom".into()))], NOW)
            .await
            .expect("complete");
        before = claim_attempt(&*s, NOW).await;
        assert_eq!(before, 2);
        s.close().await.expect("close");
    }
    let s = b.open();
    s.recover(NOW + 1).await.expect("recover");
    assert!(claim_attempt(&*s, NOW + 1).await > before);
}

async fn after_a_restart_a_replaced_task_id_belongs_to_its_replacement(b: &dyn Backend) {
    let newer = {
        let s = fresh(b).await;
        created(&s.submit(vec![spec("a", "g")], NOW).await.expect("submit")[0]);
        let mut again = spec("a", "g");
        again.replace_on_exist = true;
        let newer = match &s.submit(vec![again], NOW + 1).await.expect("replace")[0] {
            SubmitResult::Replaced { job_id, .. } => job_id.clone(),
            other => panic!("expected a replacement, got {other:?}"),
        };
        s.close().await.expect("close");
        newer
    };
    let s = b.open();
    s.recover(NOW + 2).await.expect("recover");
    let holder = s.get_by_task("g", "a").await.expect("get").expect("found");
    assert_eq!(holder.job_id, newer);
    let r = s
        .submit(vec![spec("a", "g")], NOW + 2)
        .await
        .expect("submit");
    assert!(
        matches!(&r[0], SubmitResult::Refused(SubmitRefusal::AlreadyExists { job_id }) if *job_id == newer),
        "{r:?}"
    );
}

fn every_second(task: &str, misfire: lts_common::MisfirePolicy) -> JobSpec {
    let mut s = spec(task, "g");
    s.schedule = Schedule::Cron {
        expression: "* * * * * ?".into(),
        time_zone: String::new(),
        misfire,
    };
    s
}

async fn cycles_of(s: &dyn JobStore, task: &str) -> Vec<String> {
    let filter = ListFilter {
        task_id_prefix: Some(format!("{task}@")),
        ..Default::default()
    };
    let mut ids: Vec<String> = s
        .list(&filter, 1000, None)
        .await
        .expect("list")
        .0
        .into_iter()
        .map(|j| j.spec.task_id)
        .collect();
    ids.sort();
    ids
}

async fn missed_cron_points_follow_each_misfire_policy_after_a_restart(b: &dyn Backend) {
    use lts_common::MisfirePolicy::*;
    {
        let s = fresh(b).await;
        s.submit(
            vec![
                every_second("once", FireOnce),
                every_second("skip", Skip),
                every_second("all", FireAll),
            ],
            NOW,
        )
        .await
        .expect("submit");
        s.close().await.expect("close");
    }
    // The store comes back 5.5 s after the first point was due.
    let s = b.open();
    s.recover(NOW + 6_500).await.expect("recover");
    // A store may make a cycle a little ahead of its point.
    let next = cycles(&*s)
        .next_fire_at()
        .await
        .expect("next")
        .expect("due");
    assert!((NOW..=NOW + 1_000).contains(&next), "{next}");
    let groups = cycles(&*s).fire_due(NOW + 6_500, 1).await.expect("fire");
    assert_eq!(groups, ["g"]);
    // The points 1..=5 s are misfires; 6 s is 500 ms late, within the
    // grace, so it fires under every policy; 7 s is made ahead of time.
    // The fire-once catch-up stands for the latest missed point, 5 s.
    let on_time = [format!("@{}", NOW + 6_000), format!("@{}", NOW + 7_000)];
    assert_eq!(
        cycles_of(&*s, "once").await,
        [
            format!("once@{}", NOW + 5_000),
            format!("once{}", on_time[0]),
            format!("once{}", on_time[1]),
        ]
    );
    assert_eq!(
        cycles_of(&*s, "skip").await,
        [format!("skip{}", on_time[0]), format!("skip{}", on_time[1])]
    );
    // The templates' logs say which points were skipped or folded into
    // the catch-up, once per gap.
    for (task, what) in [
        ("skip", "skipped 5 points"),
        ("once", "one catch-up run for 5 points"),
    ] {
        let t = s
            .get_by_task("g", task)
            .await
            .expect("get")
            .expect("template");
        let (log, _) = s.logs(&t.job_id, 100, None).await.expect("logs");
        let misfires: Vec<&str> = log
            .iter()
            .filter(|e| e.kind == LogKind::Misfire)
            .map(|e| e.message.as_str())
            .collect();
        assert_eq!(misfires.len(), 1, "{task}: {misfires:?}");
        assert!(misfires[0].contains(what), "{task}: {}", misfires[0]);
        for point in [NOW + 1_000, NOW + 5_000] {
            let at = lts_common::format_ms(point);
            assert!(
                misfires[0].contains(&at),
                "{task}: {} lacks {at}",
                misfires[0]
            );
        }
        assert!(
            !log.iter().any(|e| e.kind == LogKind::Retry),
            "{task}: a misfire is not a retry"
        );
    }
    let all: Vec<String> = (1..=7)
        .map(|k| format!("all@{}", NOW + k * 1_000))
        .collect();
    assert_eq!(cycles_of(&*s, "all").await, all);
    // Firing again at the same instant fires nothing twice.
    cycles(&*s).fire_due(NOW + 6_500, 1).await.expect("fire");
    assert_eq!(cycles_of(&*s, "all").await.len(), 7);
    let next = cycles(&*s)
        .next_fire_at()
        .await
        .expect("next")
        .expect("due");
    assert!((NOW + 7_000..=NOW + 8_000).contains(&next), "{next}");
}

/// After a gap, the point just before the restart fires when it is at most
/// the misfire grace late, here exactly the grace, under every policy.
async fn the_point_the_grace_late_fires_after_a_gap_under_every_policy(b: &dyn Backend) {
    use lts_common::MisfirePolicy::*;
    use lts_jobtracker::store::MISFIRE_GRACE_MS;
    let s = fresh(b).await;
    let tasks = [("once", FireOnce), ("skip", Skip), ("all", FireAll)];
    s.submit(
        tasks.iter().map(|(t, p)| every_second(t, *p)).collect(),
        NOW,
    )
    .await
    .expect("submit");
    // Nothing fired until the point at 3 s was exactly the grace late.
    let now = NOW + 3_000 + MISFIRE_GRACE_MS;
    cycles(&*s).fire_due(now, 1).await.expect("fire");
    for (task, _) in tasks {
        let fired = cycles_of(&*s, task).await;
        let point = format!("{task}@{}", NOW + 3_000);
        assert!(fired.contains(&point), "{task}: {fired:?} lacks {point}");
    }
    // Firing again a millisecond later, when the point at 3 s would be a
    // misfire, fires nothing twice (the point at 4 s was made ahead).
    cycles(&*s).fire_due(now + 1, 1).await.expect("fire");
    assert_eq!(
        cycles_of(&*s, "skip").await,
        [
            format!("skip@{}", NOW + 3_000),
            format!("skip@{}", NOW + 4_000)
        ]
    );
}

async fn a_cycle_relying_on_the_previous_waits_for_it(b: &dyn Backend) {
    let s = fresh(b).await;
    let mut sp = every_second("relying", lts_common::MisfirePolicy::FireOnce);
    sp.rely_on_prev_cycle = true;
    s.submit(vec![sp], NOW).await.expect("submit");
    cycles(&*s).fire_due(NOW + 1_000, 1).await.expect("fire");
    let first = claim_one(&*s, "g", NOW + 1_000).await.expect("first cycle");
    cycles(&*s).fire_due(NOW + 2_000, 1).await.expect("fire");
    assert_eq!(cycles_of(&*s, "relying").await.len(), 1, "the second waits");
    s.complete(
        vec![report(&first.job_id, 1, Outcome::Success(String::new()))],
        NOW + 2_500,
    )
    .await
    .expect("complete");
    cycles(&*s).fire_due(NOW + 2_600, 1).await.expect("fire");
    assert_eq!(cycles_of(&*s, "relying").await.len(), 2, "then it fires");
}

/// Listing by schedule kind pages through the matching jobs only: no page
/// is empty while some are left, and the last page has no token.
async fn listing_by_kind_never_gives_an_empty_page_before_the_end(b: &dyn Backend) {
    let s = fresh(b).await;
    let at = |task: &str| {
        let mut sp = spec(task, "g");
        sp.schedule = Schedule::At(NOW + 60_000);
        sp
    };
    let repeat = |task: &str| {
        let mut sp = spec(task, "g");
        sp.schedule = Schedule::Repeat {
            interval_ms: 60_000,
            count: 2,
        };
        sp
    };
    // Jobs of other kinds before, between and after the repeat jobs.
    for specs in [
        vec![at("a1"), at("a2"), at("a3"), spec("n1", "g")],
        vec![repeat("r1")],
        vec![at("a4"), at("a5"), at("a6")],
        vec![repeat("r2")],
        vec![at("a7"), spec("n2", "g")],
    ] {
        submit_ids(&*s, specs).await;
    }
    for (kind, want) in [
        (lts_common::ScheduleKind::Repeat, vec!["r1", "r2"]),
        (lts_common::ScheduleKind::Now, vec!["n1", "n2"]),
    ] {
        let filter = ListFilter {
            kind: Some(kind),
            ..Default::default()
        };
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let (page, next) = s.list(&filter, 1, token.as_deref()).await.expect("list");
            assert!(
                !page.is_empty() || next.is_none(),
                "an empty {kind:?} page with a token, after {found:?}"
            );
            found.extend(page.into_iter().map(|j| j.spec.task_id));
            match next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(found, want, "{kind:?}");
    }
}

/// A repeat job fires its count of cycles, a full interval apart, then
/// finishes; the template itself is never claimed.
async fn repeat_jobs_fire_their_count_of_cycles_then_finish(b: &dyn Backend) {
    let s = fresh(b).await;
    let mut sp = spec("rep", "g");
    sp.schedule = Schedule::Repeat {
        interval_ms: 1_000,
        count: 3,
    };
    let id = created(&s.submit(vec![sp], NOW).await.expect("submit")[0]);
    assert!(
        claim_one(&*s, "g", NOW).await.is_none(),
        "a repeat job runs as its cycles, never itself"
    );
    for k in 0..3 {
        let groups = cycles(&*s)
            .fire_due(NOW + k * 1_000, 1)
            .await
            .expect("fire");
        assert_eq!(groups, ["g"], "cycle {k}");
    }
    let want: Vec<String> = (0..3).map(|k| format!("rep@{}", NOW + k * 1_000)).collect();
    assert_eq!(cycles_of(&*s, "rep").await, want);
    let t = s.get(&id).await.expect("get").expect("template");
    assert_eq!((t.state, t.cycles), (JobState::Succeeded, 3));
    let fired = cycles(&*s).fire_due(NOW + 10_000, 1).await.expect("fire");
    assert!(fired.is_empty(), "no cycles left: {fired:?}");
    assert_eq!(cycles_of(&*s, "rep").await.len(), 3);
    // The cycles run like any job, each at its point.
    let first = claim_one(&*s, "g", NOW).await.expect("the first cycle");
    assert_eq!(first.spec.task_id, format!("rep@{NOW}"));
}

/// Cron points follow the job's time zone, in the Quartz and the 5-field
/// form.
async fn cron_points_follow_the_time_zone_and_the_five_field_form(b: &dyn Backend) {
    let s = fresh(b).await;
    let cron = |task: &str, expression: &str, time_zone: &str| {
        let mut sp = spec(task, "g");
        sp.schedule = Schedule::Cron {
            expression: expression.into(),
            time_zone: time_zone.into(),
            misfire: lts_common::MisfirePolicy::Skip,
        };
        sp
    };
    // NOW is 2023-11-14T22:13:20Z: 09:30 in Tokyo (UTC+9) next comes at
    // 2023-11-15T00:30Z; every five minutes in New York at 22:15Z.
    let tokyo = 1_700_008_200_000;
    let new_york = 1_700_000_100_000;
    s.submit(
        vec![
            cron("tokyo", "0 30 9 * * ?", "Asia/Tokyo"),
            cron("ny", "*/5 * * * *", "America/New_York"),
        ],
        NOW,
    )
    .await
    .expect("submit");
    for (task, first) in [("tokyo", tokyo), ("ny", new_york)] {
        let t = s
            .get_by_task("g", task)
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(t.trigger_at_ms, first, "{task}");
    }
    cycles(&*s).fire_due(new_york, 1).await.expect("fire");
    assert_eq!(cycles_of(&*s, "ny").await, [format!("ny@{new_york}")]);
    assert!(cycles_of(&*s, "tokyo").await.is_empty());
    cycles(&*s).fire_due(tokyo, 1).await.expect("fire");
    assert_eq!(cycles_of(&*s, "tokyo").await, [format!("tokyo@{tokyo}")]);
    let t = s
        .get_by_task("g", "tokyo")
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(t.trigger_at_ms, tokyo + 86_400_000, "the next day");
}

async fn operator_verbs(b: &dyn Backend) {
    use lts_jobtracker::store::{AdminAction, JobUpdate};
    let s = fresh(b).await;
    let ids = submit_ids(&*s, vec![spec("a", "g"), spec("b", "g")]).await;
    let op = operator(&*s);
    let (a, bj) = (&ids[0], &ids[1]);
    let done = op
        .admin(a, AdminAction::Suspend, NOW)
        .await
        .expect("suspend");
    assert_eq!(done.after.expect("kept").state, JobState::Suspended);
    let j = claim_one(&*s, "g", NOW).await.expect("the other job runs");
    assert_eq!(&j.job_id, bj, "a suspended job is not claimed");
    let e = op
        .admin(bj, AdminAction::Suspend, NOW)
        .await
        .expect_err("a running job cannot be suspended");
    assert_eq!(
        tonic::Status::from(e).code(),
        tonic::Code::FailedPrecondition
    );
    op.admin(a, AdminAction::Resume, NOW).await.expect("resume");
    let update = AdminAction::Update(JobUpdate {
        priority: Some(7),
        ..Default::default()
    });
    let done = op.admin(a, update, NOW).await.expect("update");
    assert_eq!(done.after.expect("kept").spec.priority, 7);
    let lines: Vec<String> = s
        .logs(a, 100, None)
        .await
        .expect("logs")
        .0
        .into_iter()
        .map(|e| e.message)
        .collect();
    for want in [
        "suspended by an operator",
        "resumed by an operator",
        "updated by an operator: priority 7",
    ] {
        assert_eq!(
            lines.iter().filter(|l| *l == want).count(),
            1,
            "one line {want:?} in {lines:?}"
        );
    }
    op.admin(a, AdminAction::Delete, NOW).await.expect("delete");
    assert!(s.get(a).await.expect("get").is_none(), "deleted");
    assert!(
        s.logs(a, 100, None).await.expect("logs").0.is_empty(),
        "a deleted job's log goes with it"
    );
    let e = op
        .admin("nope", AdminAction::Resume, NOW)
        .await
        .expect_err("unknown job");
    assert_eq!(tonic::Status::from(e).code(), tonic::Code::NotFound);
}

/// Trigger runs a pending job now, and fires one cycle of a repeat job as
/// a job of its own named by the instant; a second trigger in the same
/// millisecond fires nothing more. A suspended job is never claimed.
async fn trigger_and_suspend(b: &dyn Backend) {
    use lts_jobtracker::store::AdminAction;
    let s = fresh(b).await;
    let op = operator(&*s);
    let mut later = spec("later", "g");
    later.schedule = Schedule::At(NOW + 60_000);
    let mut repeat = spec("every", "r");
    repeat.schedule = Schedule::Repeat {
        interval_ms: 3_600_000,
        count: 0,
    };
    let ids = submit_ids(&*s, vec![later, repeat]).await;
    let (later, repeat) = (&ids[0], &ids[1]);
    assert!(claim_one(&*s, "g", NOW + 10).await.is_none(), "not due yet");
    let done = op
        .admin(later, AdminAction::Trigger, NOW + 10)
        .await
        .expect("trigger");
    assert_eq!(done.wake, ["g"], "its node group has work now");
    let j = claim_one(&*s, "g", NOW + 10).await.expect("runs now");
    assert_eq!(&j.job_id, later);

    let at = NOW + 20;
    let done = op
        .admin(repeat, AdminAction::Trigger, at)
        .await
        .expect("trigger a repeat job");
    assert_eq!(done.wake, ["r"]);
    assert_eq!(done.after.as_ref().map(|j| j.cycles), Some(1));
    let cycle = s
        .get_by_task("r", &format!("every@{at}"))
        .await
        .expect("get")
        .expect("the cycle fired as a job of its own");
    assert_eq!(
        (
            cycle.state,
            cycle.spec.schedule.clone(),
            cycle.trigger_at_ms
        ),
        (JobState::Pending, Schedule::Now, at)
    );
    let again = op
        .admin(repeat, AdminAction::Trigger, at)
        .await
        .expect("trigger again");
    assert!(again.wake.is_empty(), "the same instant fires once");
    let (cycles, _) = s
        .list(
            &ListFilter {
                task_id_prefix: Some("every@".into()),
                ..Default::default()
            },
            100,
            None,
        )
        .await
        .expect("list");
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    let log = s.logs(repeat, 100, None).await.expect("logs").0;
    assert!(
        log.iter()
            .any(|e| e.kind == LogKind::Fired
                && e.message.contains(&format!("as job {}", cycle.job_id))),
        "{log:?}"
    );

    let ids = submit_ids(&*s, vec![spec("parked", "p")]).await;
    op.admin(&ids[0], AdminAction::Suspend, NOW)
        .await
        .expect("suspend");
    assert!(
        claim_one(&*s, "p", NOW + 100_000).await.is_none(),
        "a suspended job is not claimed"
    );
    let log = s.logs(&ids[0], 100, None).await.expect("logs").0;
    assert!(
        log.iter()
            .any(|e| e.kind == LogKind::Suspended && e.message == "suspended by an operator"),
        "a suspend is logged as one: {log:?}"
    );
    assert!(!log.iter().any(|e| e.kind == LogKind::Cancelled), "{log:?}");
    let e = op
        .admin(&ids[0], AdminAction::Trigger, NOW)
        .await
        .expect_err("a suspended one-off job cannot be triggered");
    assert!(e.to_string().contains("only a pending job"), "{e}");
    op.admin(&ids[0], AdminAction::Resume, NOW + 5)
        .await
        .expect("resume");
    let j = claim_one(&*s, "p", NOW + 5).await.expect("runs again");
    assert_eq!(j.job_id, ids[0]);
}

/// `plan set`: a new retry plan replaces the job's plan and restarts its
/// error counter; the next error follows the new plan.
async fn plan_set(b: &dyn Backend) {
    use lts_jobtracker::store::{AdminAction, JobUpdate};
    let s = fresh(b).await;
    let op = operator(&*s);
    let mut sp = spec("a", "g");
    sp.retry_plan = Some(RetryPlan {
        steps: vec![RetryStep::RetryAfter(30_000), RetryStep::GiveUp],
        count: 1,
        forever: false,
    });
    let id = created(&s.submit(vec![sp], NOW).await.expect("submit")[0]);
    claim_one(&*s, "g", NOW).await.expect("claimed");
    s.complete(vec![report(&id, 1, Outcome::Error("boom".into()))], NOW)
        .await
        .expect("complete");
    assert_eq!(s.get(&id).await.expect("get").expect("job").failures, 1);
    let plan = RetryPlan {
        steps: vec![RetryStep::RetryAfter(5_000), RetryStep::Suspend],
        count: 1,
        forever: false,
    };
    let done = op
        .admin(
            &id,
            AdminAction::Update(JobUpdate {
                retry_plan: Some(plan.clone()),
                ..Default::default()
            }),
            NOW + 1,
        )
        .await
        .expect("plan set");
    let after = done.after.expect("kept");
    assert_eq!(
        (after.spec.retry_plan.as_ref(), after.failures, after.state),
        (Some(&plan), 0, JobState::Pending)
    );
    let stored = s.get(&id).await.expect("get").expect("job");
    assert_eq!((stored.spec.retry_plan, stored.failures), (Some(plan), 0));
    let log = s.logs(&id, 100, None).await.expect("logs").0;
    assert!(
        log.iter()
            .any(|e| e.message.contains("retry plan")
                && e.message.contains("error counter restarted")),
        "{log:?}"
    );
    // The job waited 30 s under the old plan; the new plan applies at
    // once: its retry runs 5 s after the plan was set.
    assert_eq!(after.trigger_at_ms, NOW + 5_001);
    assert!(claim_one(&*s, "g", NOW + 5_000).await.is_none());
    // The old plan would give up now; the new one retries after 5 s.
    let j = claim_one(&*s, "g", NOW + 5_001).await.expect("retried");
    s.complete(
        vec![report(&id, j.attempt, Outcome::Error("boom".into()))],
        NOW + 5_001,
    )
    .await
    .expect("complete");
    let j = s.get(&id).await.expect("get").expect("job");
    assert_eq!(
        (j.state, j.failures, j.trigger_at_ms),
        (JobState::Pending, 1, NOW + 10_001)
    );
    let j = claim_one(&*s, "g", NOW + 10_001).await.expect("retried");
    s.complete(
        vec![report(&id, j.attempt, Outcome::Error("boom".into()))],
        NOW + 10_001,
    )
    .await
    .expect("complete");
    assert_eq!(
        s.get(&id).await.expect("get").expect("job").state,
        JobState::Suspended
    );
    let log = s.logs(&id, 100, None).await.expect("logs").0;
    assert_eq!(
        log.last()
            .map(|e| (e.kind, e.message.contains("retry plan"))),
        Some((LogKind::Suspended, true)),
        "the plan's suspend is logged as one: {log:?}"
    );
}

/// At-time jobs due within the horizon go to TaskTrackers ahead of their
/// time, in trigger order, each once; a job beyond it is claimed when due.
async fn at_time_jobs_are_claimed_ahead(b: &dyn Backend) {
    let s = fresh(b).await;
    let at = |task: &str, when: i64| {
        let mut sp = spec(task, "g");
        sp.schedule = Schedule::At(when);
        sp
    };
    s.submit(
        vec![
            at("late", NOW + 2_000),
            at("b", NOW + 500),
            at("a", NOW + 100),
        ],
        NOW,
    )
    .await
    .expect("submit");
    assert!(
        claim_one(&*s, "g", NOW).await.is_none(),
        "nothing is due yet"
    );
    let c = s
        .claim_ahead("g", &[("w1".to_string(), 10)], NOW, NOW + 1_000)
        .await
        .expect("claim ahead");
    let got: Vec<(String, i64, u32, JobState)> = c.per_grant[0]
        .iter()
        .map(|j| (j.spec.task_id.clone(), j.trigger_at_ms, j.attempt, j.state))
        .collect();
    assert_eq!(
        got,
        [
            ("a".to_string(), NOW + 100, 1, JobState::Running),
            ("b".to_string(), NOW + 500, 1, JobState::Running),
        ]
    );
    assert_eq!(c.next_ready_at_ms, Some(NOW + 2_000));
    let a = &c.per_grant[0][0];
    let stored = s.get(&a.job_id).await.expect("get").expect("job");
    assert_eq!(
        (stored.state, stored.attempt, stored.worker.as_str()),
        (JobState::Running, 1, "w1")
    );
    let log = s.logs(&a.job_id, 100, None).await.expect("logs").0;
    assert!(
        log.iter()
            .any(|e| e.kind == LogKind::Dispatched && e.message.contains("ahead of its time")),
        "{log:?}"
    );
    // Claimed once: neither a claim ahead nor a claim when due takes it again.
    assert!(s
        .claim_ahead("g", &[("w1".to_string(), 10)], NOW, NOW + 1_000)
        .await
        .expect("claim ahead")
        .per_grant[0]
        .is_empty());
    let late = claim_one(&*s, "g", NOW + 2_000).await.expect("due");
    assert_eq!(late.spec.task_id, "late");
    assert!(claim_one(&*s, "g", NOW + 3_000).await.is_none());
}

/// A running case.
type CaseRun<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// A case of the suite: it opens stores through the backend it is given.
struct Case {
    name: &'static str,
    run: for<'a> fn(&'a dyn Backend) -> CaseRun<'a>,
}

/// The one list of cases; every backend runs every case.
/// What a group holds by the store's count; a group it leaves out holds
/// nothing.
async fn usage_of(s: &dyn JobStore, group: &str) -> (u64, u64) {
    s.group_usage()
        .await
        .expect("group usage")
        .into_iter()
        .find(|(g, _)| g == group)
        .map_or((0, 0), |(_, u)| (u.jobs, u.bytes))
}

/// The quotas' figures: unfinished jobs and their payload and params bytes
/// per node group, following submits, outcomes, cancels, replaces,
/// updates, deletes and a restart.
async fn group_usage_counts_unfinished_jobs_and_their_bytes(b: &dyn Backend) {
    use lts_jobtracker::store::{AdminAction, JobUpdate};
    let s = fresh(b).await;
    let with = |task: &str, group: &str, payload: usize| {
        let mut j = spec(task, group);
        j.payload = vec![7; payload];
        j.params.insert("key".into(), "value".into()); // 8 bytes
        j
    };
    let ids = submit_ids(
        &*s,
        vec![with("a", "g", 100), with("b", "g", 10), with("c", "h", 0)],
    )
    .await;
    assert_eq!(usage_of(&*s, "g").await, (2, 126));
    assert_eq!(usage_of(&*s, "h").await, (1, 8));
    assert_eq!(usage_of(&*s, "nobody").await, (0, 0));

    // A run counts until its outcome ends the job.
    let j = claim_one(&*s, "g", NOW).await.expect("claimed");
    assert_eq!(usage_of(&*s, "g").await, (2, 126));
    s.complete(
        vec![report(
            &j.job_id,
            j.attempt,
            Outcome::Success(String::new()),
        )],
        NOW,
    )
    .await
    .expect("complete");
    let left = if j.job_id == ids[0] { 18 } else { 108 };
    assert_eq!(usage_of(&*s, "g").await, (1, left));
    let other = if j.job_id == ids[0] { &ids[1] } else { &ids[0] };
    s.cancel(other, NOW).await.expect("cancel");
    assert_eq!(usage_of(&*s, "g").await, (0, 0));

    // A replace leaves the new job's bytes; an update of the params
    // changes them; a delete frees the group.
    let mut again = with("c", "h", 50);
    again.replace_on_exist = true;
    let r = s.submit(vec![again], NOW).await.expect("replace");
    let replacement = match &r[0] {
        SubmitResult::Replaced { job_id, .. } => job_id.clone(),
        other => panic!("expected a replace, got {other:?}"),
    };
    assert_eq!(usage_of(&*s, "h").await, (1, 58));
    let update = AdminAction::Update(JobUpdate {
        params: Some([("k".to_string(), "v".repeat(99))].into_iter().collect()),
        ..Default::default()
    });
    operator(&*s)
        .admin(&replacement, update, NOW)
        .await
        .expect("update");
    assert_eq!(usage_of(&*s, "h").await, (1, 150));
    let kept = submit_ids(&*s, vec![with("d", "h", 1)]).await;
    operator(&*s)
        .admin(&replacement, AdminAction::Delete, NOW)
        .await
        .expect("delete");
    assert_eq!(usage_of(&*s, "h").await, (1, 9));

    // A restart counts the same.
    s.close().await.expect("close");
    drop(s);
    let s = b.open();
    s.recover(NOW).await.expect("recover");
    assert_eq!(usage_of(&*s, "h").await, (1, 9));
    assert!(s.get(&kept[0]).await.expect("get").is_some());
}

macro_rules! cases {
    ($($f:ident),* $(,)?) => {
        const CASES: &[Case] = &[$(Case {
            name: stringify!($f),
            run: {
                fn run(b: &dyn Backend) -> CaseRun<'_> {
                    Box::pin($f(b))
                }
                run
            },
        }),*];
    };
}

cases!(
    submit_dedup_replace,
    claim_order,
    claims_spread_over_grants,
    attempt_fencing,
    retry_and_reschedule,
    feedback_queue,
    logs_and_listing,
    log_queries,
    a_long_log_is_paged_inside_the_job,
    cancel,
    run_times_at_the_ends_of_the_clock,
    restart_recovery,
    restarts_in_a_row_never_hand_out_an_attempt_twice,
    a_retry_right_after_an_error_gets_the_next_attempt_also_after_a_restart,
    after_a_restart_a_replaced_task_id_belongs_to_its_replacement,
    missed_cron_points_follow_each_misfire_policy_after_a_restart,
    the_point_the_grace_late_fires_after_a_gap_under_every_policy,
    a_cycle_relying_on_the_previous_waits_for_it,
    repeat_jobs_fire_their_count_of_cycles_then_finish,
    listing_by_kind_never_gives_an_empty_page_before_the_end,
    cron_points_follow_the_time_zone_and_the_five_field_form,
    operator_verbs,
    trigger_and_suspend,
    plan_set,
    at_time_jobs_are_claimed_ahead,
    group_usage_counts_unfinished_jobs_and_their_bytes,
);

/// Runs every case (or the one `LTS_CONFORMANCE_CASE` names) on a fresh
/// backend each; reports every case that failed, by name.
async fn run_cases(backend: &str, make: impl Fn() -> Box<dyn Backend>) {
    let only = std::env::var("LTS_CONFORMANCE_CASE").ok();
    let mut failed = Vec::new();
    let mut ran = 0;
    for case in CASES {
        if only.as_deref().is_some_and(|o| o != case.name) {
            continue;
        }
        let b = make();
        if b.skip() {
            return;
        }
        eprintln!("--- {backend}: {}", case.name);
        let outcome = AssertUnwindSafe((case.run)(&*b)).catch_unwind().await;
        if outcome.is_err() {
            failed.push(case.name);
        }
        ran += 1;
    }
    assert!(ran > 0, "no case is named {only:?}");
    assert!(
        failed.is_empty(),
        "cases that failed on the {backend} store (their panics are above): {failed:?}"
    );
}

#[tokio::test]
async fn every_case_on_the_sled_store() {
    run_cases("sled", || Box::new(sled())).await;
}

#[tokio::test]
async fn every_case_on_the_sled_store_with_the_queues_on_disk() {
    run_cases("sled (queues on disk)", || {
        Box::new(SledOnDisk(tempfile::tempdir().expect("temp dir")))
    })
    .await;
}

#[tokio::test]
async fn every_case_on_the_mongodb_store() {
    run_cases("MongoDB", || Box::new(mongo())).await;
}

/// Mongo only: stores that share one database, as several trackers do.
mod mongo_shared {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    fn shared(instance: &str, database: &str, uri: &str, lease: Duration) -> Arc<MongoStore> {
        let mut o = mongo_options(uri, database, instance);
        o.lease = lease;
        Arc::new(MongoStore::new(o))
    }

    /// Four claimers on two stores take 100 jobs: each exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_claims_hand_out_each_job_once() {
        let Some(uri) = mongo_uri() else { return };
        let db = format!("lts_test_{}", uuid::Uuid::now_v7().simple());
        let a = shared("tracker-a", &db, &uri, Duration::from_secs(30));
        let b = shared("tracker-b", &db, &uri, Duration::from_secs(30));
        a.recover(NOW).await.expect("recover");
        b.recover(NOW).await.expect("recover");
        let specs: Vec<JobSpec> = (0..100).map(|i| spec(&format!("t{i}"), "g")).collect();
        let r = a.submit(specs, NOW).await.expect("submit");
        assert!(r.iter().all(|r| matches!(r, SubmitResult::Created(_))));
        let mut tasks = Vec::new();
        for (i, store) in [a.clone(), b.clone(), a.clone(), b.clone()]
            .into_iter()
            .enumerate()
        {
            tasks.push(tokio::spawn(async move {
                let worker = format!("w{i}");
                let mut got = Vec::new();
                let deadline = std::time::Instant::now() + Duration::from_secs(120);
                loop {
                    let c = store
                        .claim("g", &[(worker.clone(), 7)], NOW)
                        .await
                        .expect("claim");
                    let jobs: Vec<_> = c.per_grant.into_iter().flatten().collect();
                    if jobs.is_empty() {
                        return got;
                    }
                    for j in jobs {
                        assert_eq!((j.attempt, j.worker.as_str()), (1, worker.as_str()));
                        got.push(j.job_id);
                    }
                    assert!(std::time::Instant::now() < deadline, "claims too slow");
                }
            }));
        }
        let mut all = Vec::new();
        let mut per_claimer = Vec::new();
        for t in tasks {
            let got = t.await.expect("claimer");
            per_claimer.push(got.len());
            all.extend(got);
        }
        let unique: HashSet<&String> = all.iter().collect();
        assert_eq!(
            (all.len(), unique.len()),
            (100, 100),
            "every job claimed exactly once; per claimer: {per_claimer:?}"
        );
        // The store agrees: every job runs, as attempt 1.
        let (running, _) = a
            .list(
                &ListFilter {
                    state: Some(JobState::Running),
                    ..Default::default()
                },
                1_000,
                None,
            )
            .await
            .expect("list");
        assert_eq!(running.len(), 100);
        assert!(running.iter().all(|j| j.attempt == 1));
        a.drop_database().await.expect("drop the test database");
    }

    /// The same task ids submitted through two stores at once: one job
    /// each, and every refusal names it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_submits_dedup_across_stores() {
        let Some(uri) = mongo_uri() else { return };
        let db = format!("lts_test_{}", uuid::Uuid::now_v7().simple());
        let a = shared("tracker-a", &db, &uri, Duration::from_secs(30));
        let b = shared("tracker-b", &db, &uri, Duration::from_secs(30));
        let batch = || {
            (0..20)
                .map(|i| spec(&format!("t{i}"), "g"))
                .collect::<Vec<_>>()
        };
        let (ra, rb) = tokio::join!(a.submit(batch(), NOW), b.submit(batch(), NOW));
        let (ra, rb) = (ra.expect("submit a"), rb.expect("submit b"));
        for (i, (x, y)) in ra.iter().zip(&rb).enumerate() {
            let holder = s_holder(&*a, &format!("t{i}")).await;
            let named = |r: &SubmitResult| match r {
                SubmitResult::Created(id) => id.clone(),
                SubmitResult::Refused(SubmitRefusal::AlreadyExists { job_id }) => job_id.clone(),
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!((named(x), named(y)), (holder.clone(), holder));
            assert!(
                matches!(x, SubmitResult::Created(_)) != matches!(y, SubmitResult::Created(_)),
                "exactly one of {x:?} and {y:?} created the job"
            );
        }
        a.drop_database().await.expect("drop the test database");
    }

    /// Two trackers suspend the same jobs at once, then resume them at
    /// once: each verb takes effect exactly once per job (one wins, the
    /// other finds it done), as if they had run one after the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_suspends_and_resumes_each_win_once() {
        use lts_jobtracker::store::{AdminAction, Admined};
        let Some(uri) = mongo_uri() else { return };
        let db = format!("lts_test_{}", uuid::Uuid::now_v7().simple());
        let a = shared("tracker-a", &db, &uri, Duration::from_secs(30));
        let b = shared("tracker-b", &db, &uri, Duration::from_secs(30));
        a.recover(NOW).await.expect("recover");
        b.recover(NOW).await.expect("recover");
        let specs = (0..10).map(|i| spec(&format!("t{i}"), "g")).collect();
        let ids = submit_ids(&*a, specs).await;
        let changed = |d: &Admined| d.after.as_ref().map(|j| j.state) != Some(d.before.state);
        for (verb, from, to, line) in [
            (
                AdminAction::Suspend,
                JobState::Pending,
                JobState::Suspended,
                "suspended by an operator",
            ),
            (
                AdminAction::Resume,
                JobState::Suspended,
                JobState::Pending,
                "resumed by an operator",
            ),
        ] {
            let at = NOW + 1;
            let runs = ids.iter().map(|id| {
                let (a, b, verb) = (a.clone(), b.clone(), verb.clone());
                let id = id.clone();
                async move {
                    let (x, y) = tokio::join!(
                        a.admin(&id, verb.clone(), at),
                        b.admin(&id, verb.clone(), at)
                    );
                    (id, x.expect("verb through a"), y.expect("verb through b"))
                }
            });
            for (id, x, y) in futures::future::join_all(runs).await {
                assert_eq!(
                    [changed(&x), changed(&y)].iter().filter(|c| **c).count(),
                    1,
                    "{verb:?} of {id} took effect once: {:?} / {:?}",
                    (x.before.state, x.after.as_ref().map(|j| j.state)),
                    (y.before.state, y.after.as_ref().map(|j| j.state)),
                );
                let winner = if changed(&x) { &x } else { &y };
                assert_eq!(winner.before.state, from);
                let job = a.get(&id).await.expect("get").expect("job");
                assert_eq!(job.state, to, "{id}");
                let lines = b
                    .logs(&id, 100, None)
                    .await
                    .expect("logs")
                    .0
                    .into_iter()
                    .filter(|e| e.message == line)
                    .count();
                assert_eq!(lines, 1, "one line {line:?} for {id}");
            }
        }
        a.drop_database().await.expect("drop the test database");
    }

    /// Feedback of an outcome stored through one tracker is read, and
    /// acked, through another: the queue is the shared database.
    #[tokio::test]
    async fn feedback_stored_through_one_tracker_is_delivered_through_another() {
        let Some(uri) = mongo_uri() else { return };
        let db = format!("lts_test_{}", uuid::Uuid::now_v7().simple());
        let a = shared("tracker-a", &db, &uri, Duration::from_secs(30));
        let b = shared("tracker-b", &db, &uri, Duration::from_secs(30));
        a.recover(NOW).await.expect("recover");
        b.recover(NOW).await.expect("recover");
        let mut sp = spec("fb", "g");
        sp.need_feedback = true;
        sp.submit_node_group = "clients".into();
        let id = submit_ids(&*b, vec![sp]).await.remove(0);
        let j = claim_one(&*a, "g", NOW).await.expect("claimed through a");
        a.complete(
            vec![report(&id, j.attempt, Outcome::Success("done".into()))],
            NOW + 1,
        )
        .await
        .expect("complete through a");
        let seen = b.pending_feedback().await.expect("feedback through b");
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(
            (
                seen[0].job_id.as_str(),
                seen[0].submit_node_group.as_str(),
                seen[0].state
            ),
            (id.as_str(), "clients", JobState::Succeeded)
        );
        b.ack_feedback(&[seen[0].feedback_id.clone()])
            .await
            .expect("ack through b");
        assert!(
            a.pending_feedback().await.expect("feedback").is_empty(),
            "acked through b, gone for a"
        );
        a.drop_database().await.expect("drop the test database");
    }

    async fn s_holder(s: &dyn JobStore, task: &str) -> String {
        s.get_by_task("g", task)
            .await
            .expect("get")
            .expect("stored")
            .job_id
    }

    /// A master replaced by a newer one (paused, then back without
    /// noticing) fires no more: its next fire is refused with `Fenced`, no
    /// point exists twice and no schedule moved back.
    #[tokio::test]
    async fn an_old_master_is_fenced_off_by_the_newer_term() {
        use lts_common::MisfirePolicy::*;
        use lts_jobtracker::Error;
        let Some(uri) = mongo_uri() else { return };
        let db = format!("lts_test_{}", uuid::Uuid::now_v7().simple());
        let a = shared("tracker-a", &db, &uri, Duration::from_secs(30));
        let b = shared("tracker-b", &db, &uri, Duration::from_secs(30));
        let tasks = [("once", FireOnce), ("skip", Skip), ("all", FireAll)];
        a.submit(
            tasks.iter().map(|(t, p)| every_second(t, *p)).collect(),
            NOW,
        )
        .await
        .expect("submit");
        a.fire_due(NOW + 1_000, 5).await.expect("a fires in term 5");
        b.fire_due(NOW + 2_000, 6).await.expect("b fires in term 6");
        // a comes back late, still believing it leads in term 5.
        for now in [NOW + 2_000, NOW + 3_000, NOW + 9_000] {
            match a.fire_due(now, 5).await {
                Err(Error::Fenced { term, current }) => assert_eq!((term, current), (5, 6)),
                Ok(groups) if now == NOW + 2_000 => {
                    assert!(groups.is_empty(), "nothing due yet: {groups:?}")
                }
                other => panic!("term 5 fired at {now} after term 6: {other:?}"),
            }
        }
        // A tracker that starts in an older term is refused at once.
        let c = shared("tracker-c", &db, &uri, Duration::from_secs(30));
        let e = c
            .fire_due(NOW + 3_000, 4)
            .await
            .expect_err("term 4 is older");
        assert!(
            matches!(
                e,
                Error::Fenced {
                    term: 4,
                    current: 6
                }
            ),
            "{e:?}"
        );
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::Aborted);
        for (task, _) in tasks {
            let fired = cycles_of(&*a, task).await;
            let want = [
                format!("{task}@{}", NOW + 1_000),
                format!("{task}@{}", NOW + 2_000),
            ];
            assert_eq!(fired, want, "{task}: each point once, none after");
            let t = s_holder_job(&*b, task).await;
            assert_eq!(
                t.trigger_at_ms,
                NOW + 3_000,
                "{task}: the schedule kept its place"
            );
        }
        // The new master goes on from where it was.
        b.fire_due(NOW + 3_000, 6).await.expect("b fires on");
        assert_eq!(cycles_of(&*b, "all").await.len(), 3);
        b.drop_database().await.expect("drop the test database");
    }

    /// Two trackers firing the same templates at the same instant (in one
    /// term, as two lone trackers on one database do): each point fires
    /// once, and each template moves on once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trackers_firing_at_once_fire_each_point_once() {
        use lts_common::MisfirePolicy::*;
        let Some(uri) = mongo_uri() else { return };
        let db = format!("lts_test_{}", uuid::Uuid::now_v7().simple());
        let a = shared("tracker-a", &db, &uri, Duration::from_secs(30));
        let b = shared("tracker-b", &db, &uri, Duration::from_secs(30));
        let tasks = [("once", FireOnce), ("skip", Skip), ("all", FireAll)];
        a.submit(
            tasks.iter().map(|(t, p)| every_second(t, *p)).collect(),
            NOW,
        )
        .await
        .expect("submit");
        for k in 1..=3 {
            let now = NOW + k * 1_000;
            let (ra, rb) = tokio::join!(a.fire_due(now, 1), b.fire_due(now, 1));
            ra.expect("a fires");
            rb.expect("b fires");
        }
        for (task, _) in tasks {
            let want: Vec<String> = (1..=3)
                .map(|k| format!("{task}@{}", NOW + k * 1_000))
                .collect();
            assert_eq!(cycles_of(&*a, task).await, want, "{task}");
            let t = s_holder_job(&*a, task).await;
            assert_eq!((t.trigger_at_ms, t.cycles), (NOW + 4_000, 3), "{task}");
        }
        a.drop_database().await.expect("drop the test database");
    }

    async fn s_holder_job(s: &dyn JobStore, task: &str) -> lts_common::Job {
        s.get_by_task("g", task)
            .await
            .expect("get")
            .expect("stored")
    }

    /// A tracker that stops renewing loses its runs to the others once the
    /// lease expires; its late outcome is stale. A live lease is left alone.
    #[tokio::test]
    async fn expired_leases_are_requeued_by_another_tracker() {
        let Some(uri) = mongo_uri() else { return };
        let db = format!("lts_test_{}", uuid::Uuid::now_v7().simple());
        let a = shared("tracker-a", &db, &uri, Duration::from_secs(10));
        let b = shared("tracker-b", &db, &uri, Duration::from_secs(10));
        let id = created(&a.submit(vec![spec("a", "g")], NOW).await.expect("submit")[0]);
        claim_one(&*a, "g", NOW).await.expect("claimed by a");
        let rec = b.recover(NOW + 1_000).await.expect("recover b");
        assert_eq!(rec.requeued, 0, "a live lease of another tracker is kept");
        assert_eq!(b.requeue_expired(NOW + 5_000).await.expect("sweep"), 0);
        assert_eq!(a.renew_leases(NOW + 8_000).await.expect("renew"), 1);
        assert_eq!(b.requeue_expired(NOW + 15_000).await.expect("sweep"), 0);
        // a stops renewing: its lease ends at NOW + 18 s.
        assert_eq!(b.requeue_expired(NOW + 18_001).await.expect("sweep"), 1);
        let j = claim_one(&*b, "g", NOW + 18_002)
            .await
            .expect("claimed by b");
        assert_eq!(j.attempt, 2);
        let r = a
            .complete(
                vec![report(&id, 1, Outcome::Success(String::new()))],
                NOW + 18_003,
            )
            .await
            .expect("complete");
        assert_eq!(r[0], CompleteResult::Stale { current_attempt: 2 });
        let (log, _) = b.logs(&id, 100, None).await.expect("logs");
        assert!(log
            .iter()
            .any(|e| e.kind == LogKind::Requeued && e.message.contains("tracker-a")));
        b.drop_database().await.expect("drop the test database");
    }
}

/// Mongo only: documents the tracker cannot read.
mod mongo_bad_documents {
    use super::*;
    use mongodb::bson::{doc, Document};

    #[tokio::test]
    async fn a_document_that_cannot_be_decoded_is_skipped_not_a_crash() {
        let Some(uri) = mongo_uri() else { return };
        let db = format!("lts_test_{}", uuid::Uuid::now_v7().simple());
        let s = Arc::new(MongoStore::new(mongo_options(&uri, &db, "bad-documents")));
        s.recover(NOW).await.expect("recover");
        let good = created(
            &s.submit(vec![spec("good", "g")], NOW)
                .await
                .expect("submit")[0],
        );
        // Written by hand, or by a newer version: not a job this tracker reads.
        let client = mongodb::Client::with_uri_str(&uri).await.expect("client");
        client
            .database(&db)
            .collection::<Document>("jobs")
            .insert_one(doc! { "_id": "0-written-by-hand", "spec": "not a spec", "state": 42 })
            .await
            .expect("insert");
        let (jobs, _) = s
            .list(&ListFilter::default(), 100, None)
            .await
            .expect("listing works with a bad document present");
        let ids: Vec<&str> = jobs.iter().map(|j| j.job_id.as_str()).collect();
        assert_eq!(ids, [good.as_str()], "the bad document is skipped");
        assert!(
            !matches!(s.get("0-written-by-hand").await, Ok(Some(_))),
            "a bad document is not reported as a job"
        );
        let j = claim_one(&*s, "g", NOW)
            .await
            .expect("the good job still runs");
        assert_eq!(j.job_id, good);
        let _ = client.database(&db).drop().await;
    }
}

/// The sled store's own threads: its flush thread lets a flush that only
/// outcome acks wait for linger for one a submit waits for, and must still
/// end on its own; its write thread applies what was queued before the
/// store closes.
mod sled_flushes {
    use super::*;

    #[tokio::test]
    async fn an_outcome_sync_with_nothing_else_behind_it_returns_and_is_kept() {
        let b = sled();
        let id;
        {
            let s = fresh(&b).await;
            id = created(&s.submit(vec![spec("a", "g")], NOW).await.expect("submit")[0]);
            let job = claim_one(&*s, "g", NOW).await.expect("claimed");
            s.complete(
                vec![report(&id, job.attempt, Outcome::Success("ok".into()))],
                NOW,
            )
            .await
            .expect("complete");
            tokio::time::timeout(std::time::Duration::from_secs(10), s.sync())
                .await
                .expect("a sync nothing urgent follows still returns")
                .expect("sync");
        }
        let s = b.open();
        s.recover(NOW + 1).await.expect("recover");
        let job = s.get(&id).await.expect("get").expect("the job is kept");
        assert_eq!(job.state, JobState::Succeeded);
    }

    #[tokio::test]
    async fn outcomes_never_synced_survive_a_close() {
        let b = sled();
        let specs: Vec<JobSpec> = (0..300).map(|i| spec(&format!("q{i}"), "g")).collect();
        let mut ids = Vec::new();
        {
            let s = fresh(&b).await;
            for r in s.submit(specs, NOW).await.expect("submit") {
                ids.push(created(&r));
            }
            // Outcomes one call each, none synced; some may still be queued
            // for the store's write thread when it closes (that a close
            // applies the queue is checked deterministically by the store's
            // unit test).
            for _ in 0..ids.len() {
                let job = claim_one(&*s, "g", NOW).await.expect("claimed");
                s.complete(
                    vec![report(
                        &job.job_id,
                        job.attempt,
                        Outcome::Success("ok".into()),
                    )],
                    NOW,
                )
                .await
                .expect("complete");
            }
        }
        let s = b.open();
        s.recover(NOW + 1).await.expect("recover");
        for id in &ids {
            let job = s.get(id).await.expect("get").expect("the job is kept");
            assert_eq!(job.state, JobState::Succeeded, "{id}");
        }
    }
}

/// The sled store applies a large batch of outcomes a few dozen at a time
/// (claims go on between them); the batch still comes out whole.
mod sled_outcomes {
    use super::*;

    #[tokio::test]
    async fn a_batch_of_many_outcomes_is_applied_whole_and_in_order() {
        let b = sled();
        let s = fresh(&b).await;
        let specs: Vec<JobSpec> = (0..300).map(|i| spec(&format!("o{i}"), "g")).collect();
        submit_ids(&*s, specs).await;
        let claimed = s
            .claim("g", &[("w1".to_string(), 300)], NOW)
            .await
            .expect("claim");
        let jobs: Vec<lts_common::Job> = claimed.per_grant.into_iter().flatten().collect();
        assert_eq!(jobs.len(), 300);
        let mut reports: Vec<RunReport> = jobs
            .iter()
            .map(|j| report(&j.job_id, j.attempt, Outcome::Success("ok".into())))
            .collect();
        // One stale outcome in the middle, one repeated at the end.
        let stale_at = 150;
        reports.insert(
            stale_at,
            report(
                &jobs[0].job_id,
                jobs[0].attempt + 1,
                Outcome::Success("x".into()),
            ),
        );
        reports.push(report(
            &jobs[299].job_id,
            jobs[299].attempt,
            Outcome::Success("again".into()),
        ));
        let results = s.complete(reports, NOW + 1).await.expect("complete");
        assert_eq!(results.len(), 302, "one result per report");
        for (i, r) in results.iter().enumerate() {
            match r {
                CompleteResult::Stale { .. } => {
                    assert!(i == stale_at || i == 301, "report {i} was refused");
                }
                CompleteResult::Applied { job, .. } => {
                    assert!(i != stale_at && i != 301, "report {i} was applied");
                    assert_eq!(job.state, JobState::Succeeded);
                }
            }
        }
        for j in &jobs {
            let job = s.get(&j.job_id).await.expect("get").expect("kept");
            assert_eq!(job.state, JobState::Succeeded, "{}", j.job_id);
        }
    }
}

/// The sled store keeps a dispatch in memory; these cases check that an
/// attempt number still never comes back, across restarts and retries.
mod sled_attempts {
    use super::*;

    #[tokio::test]
    async fn a_directory_in_use_is_refused_and_reopens_once_released() {
        let b = sled();
        let s = fresh(&b).await;
        s.submit(vec![spec("a", "g")], NOW).await.expect("submit");
        let err = match SledStore::open(b.0.path()) {
            Ok(_) => panic!("a second store opened a directory in use"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("in use by another JobTracker"), "{err}");
        assert!(err.contains(&b.0.path().display().to_string()), "{err}");
        drop(s);
        // Closing and reopening in a row, with writes in between, never
        // trips over the previous store's lock.
        for round in 1..20 {
            let s = b.open();
            s.recover(NOW + round).await.expect("recover");
            s.submit(vec![spec(&format!("r{round}"), "g")], NOW + round)
                .await
                .expect("submit");
        }
        let s = b.open();
        s.recover(NOW + 20).await.expect("recover");
        let (jobs, _) = s
            .list(&ListFilter::default(), 100, None)
            .await
            .expect("list");
        assert_eq!(jobs.len(), 20, "every job submitted across the reopens");
    }

    #[tokio::test]
    async fn a_schema_1_store_opens_with_its_task_ids_still_taken() {
        let b = sled();
        let id = {
            let s = fresh(&b).await;
            created(&s.submit(vec![spec("a", "g")], NOW).await.expect("submit")[0])
        };
        // Make it look like schema 1: the version, and a task-id key.
        {
            let db = sled::open(b.0.path().join("jobs.sled")).expect("raw open");
            let tree = db.open_tree("lts").expect("tree");
            tree.insert(b"mschema_version", &1u64.to_be_bytes())
                .expect("version");
            tree.insert(b"tg\0a", id.as_bytes()).expect("task key");
            db.flush().expect("flush");
        }
        let s = b.open();
        s.recover(NOW + 1).await.expect("recover");
        let r = s
            .submit(vec![spec("a", "g"), spec("b", "g")], NOW + 1)
            .await
            .expect("submit");
        assert!(
            matches!(&r[0], SubmitResult::Refused(SubmitRefusal::AlreadyExists { job_id }) if *job_id == id),
            "{r:?}"
        );
        created(&r[1]);
        let by_task = s.get_by_task("g", "a").await.expect("get").expect("found");
        assert_eq!(by_task.job_id, id);
        drop(s);
        let db = sled::open(b.0.path().join("jobs.sled")).expect("raw open");
        let tree = db.open_tree("lts").expect("tree");
        assert_eq!(
            tree.scan_prefix(b"t").count(),
            0,
            "schema 1 task keys dropped"
        );
        assert_eq!(
            tree.get(b"mschema_version")
                .expect("get")
                .map(|v| v.to_vec()),
            Some(2u64.to_be_bytes().to_vec())
        );
    }

    /// Operator changes racing with outcomes never bring a finished job
    /// back: a change either lands before the outcome or sees the job
    /// finished (also while the outcome's write is still being applied).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn changes_racing_with_outcomes_never_undo_them() {
        use lts_jobtracker::store::{AdminAction, JobUpdate};
        let b = sled();
        let s = fresh(&b).await;
        let n = 400;
        let specs = (0..n).map(|i| spec(&format!("t{i}"), "g")).collect();
        let ids = submit_ids(&*s, specs).await;
        let claimed = s
            .claim("g", &[("w1".to_string(), n)], NOW)
            .await
            .expect("claim");
        assert_eq!(claimed.per_grant[0].len(), n);
        let completer = {
            let s = s.clone();
            let ids = ids.clone();
            tokio::spawn(async move {
                for chunk in ids.chunks(8) {
                    let reports = chunk
                        .iter()
                        .map(|id| report(id, 1, Outcome::Success(String::new())))
                        .collect();
                    s.complete(reports, NOW + 1).await.expect("complete");
                }
            })
        };
        let changer = {
            let s = s.clone();
            let ids = ids.clone();
            tokio::spawn(async move {
                for id in ids.iter().rev() {
                    let mut params = std::collections::BTreeMap::new();
                    params.insert("k".to_string(), "v".to_string());
                    let update = AdminAction::Update(JobUpdate {
                        params: Some(params),
                        ..Default::default()
                    });
                    // Refused once finished; either answer is fine here.
                    let _ = operator(&*s).admin(id, update, NOW + 1).await;
                }
            })
        };
        completer.await.expect("completer");
        changer.await.expect("changer");
        for id in &ids {
            let job = s.get(id).await.expect("get").expect("found");
            assert_eq!(job.state, JobState::Succeeded, "job {id}");
        }
        drop(s);
        let s = b.open();
        s.recover(NOW + 2).await.expect("recover");
        for id in &ids {
            let job = s.get(id).await.expect("get").expect("found");
            assert_eq!(job.state, JobState::Succeeded, "job {id} after a restart");
        }
    }
}
