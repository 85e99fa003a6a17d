//! The JobClient against a real in-process JobTracker (embedded sled store,
//! port 0). No TaskTracker runs here: jobs stay pending unless cancelled,
//! which is enough to cover submit, queries, cancel, the log and feedback
//! (a cancelled job that asked for feedback reports it), and the operator
//! verbs of `AdminService`, through the library and the `jobclient` binary.

use std::sync::Arc;
use std::time::Duration;

use lts_common::{JobSpec, JobState, MisfirePolicy, RetryPlan, Schedule, ScheduleKind};
use lts_jobclient::{ClientOptions, Error, JobClient, JobFilter, JobUpdate, SubmitOutcome};
use tokio::sync::oneshot;

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
            address,
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

/// An address nothing listens on: port 1 on localhost refuses connections
/// at once. A port bound and released here could be taken by another test
/// before it is used.
const DEAD_ADDRESS: &str = "127.0.0.1:1";

fn later_job(task_id: &str) -> JobSpec {
    let mut spec = JobSpec::new(task_id, "workers");
    // Far enough ahead that nothing would run it during the test.
    spec.schedule = Schedule::At(lts_common::now_ms() + 3_600_000);
    spec
}

#[tokio::test]
async fn submit_query_cancel_and_log() {
    let tracker = Tracker::start().await;
    let client = JobClient::connect(vec![tracker.address.clone()])
        .await
        .expect("connect");

    let mut bad = later_job("t-bad");
    bad.task_tracker_node_group = "no spaces".into();
    let outcomes = client
        .submit(vec![later_job("t-1"), bad, later_job("t-2")])
        .await
        .expect("submit");
    assert_eq!(outcomes.len(), 3);
    assert!(outcomes[0].is_accepted() && outcomes[2].is_accepted());
    match &outcomes[1] {
        SubmitOutcome::Refused(r) => {
            assert_eq!(r.task_id, "t-bad");
            assert_eq!(r.code, "INVALID_ARGUMENT");
            assert!(r.field.contains("task_tracker_node_group"), "{r:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let job_id = outcomes[0].job_id().expect("accepted").to_string();

    // The same task id again is refused and names the job that holds it.
    let again = client.submit(vec![later_job("t-1")]).await.expect("submit");
    match &again[0] {
        SubmitOutcome::Refused(r) => {
            assert_eq!(r.code, "ALREADY_EXISTS");
            assert_eq!(r.existing_job_id.as_deref(), Some(job_id.as_str()));
        }
        other => panic!("expected ALREADY_EXISTS, got {other:?}"),
    }

    let job = client.get(&job_id).await.expect("get");
    assert_eq!(job.spec.task_id, "t-1");
    assert_eq!(job.state, JobState::Pending);
    let by_task = client.get_by_task("t-1", "workers").await.expect("get");
    assert_eq!(by_task.job_id, job_id);
    let missing = client.get("no-such-job").await.unwrap_err();
    assert!(missing.is_not_found(), "{missing}");

    let filter = JobFilter {
        node_group: Some("workers".into()),
        task_id_prefix: Some("t-".into()),
        ..Default::default()
    };
    let first = client.list(&filter, 1, None).await.expect("list");
    assert_eq!(first.jobs.len(), 1);
    let token = first.next_page_token.expect("a second page");
    let second = client.list(&filter, 1, Some(&token)).await.expect("list");
    assert_eq!(second.jobs.len(), 1);
    assert_ne!(first.jobs[0].job_id, second.jobs[0].job_id);

    let cancelled = client.cancel(&job_id).await.expect("cancel");
    assert_eq!(cancelled.state, JobState::Cancelled);
    let pending = JobFilter {
        state: Some(JobState::Pending),
        ..Default::default()
    };
    let page = client.list(&pending, 100, None).await.expect("list");
    assert!(page.jobs.iter().all(|j| j.job_id != job_id));

    let log = client.log(&job_id).await.expect("log");
    let kinds: Vec<&str> = log.iter().map(|e| e.kind.name()).collect();
    assert_eq!(kinds.first(), Some(&"received"), "{kinds:?}");
    assert!(kinds.contains(&"cancelled"), "{kinds:?}");

    tracker.stop().await;
}

#[tokio::test]
async fn fails_over_to_a_live_tracker_and_names_dead_ones() {
    let tracker = Tracker::start().await;
    let dead = DEAD_ADDRESS.to_string();
    let client = JobClient::connect(vec![dead.clone(), tracker.address.clone()])
        .await
        .expect("one tracker is alive");
    // Whichever the random pick, every call lands on the live tracker.
    for i in 0..5 {
        let outcomes = client
            .submit(vec![later_job(&format!("f-{i}"))])
            .await
            .expect("submit");
        assert!(outcomes[0].is_accepted());
        assert_eq!(
            client.current_address().as_deref(),
            Some(format!("http://{}", tracker.address).as_str())
        );
    }
    tracker.stop().await;

    let options = ClientOptions {
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let e = JobClient::connect_with(vec![dead.clone()], options)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains(&dead), "{e}");
}

#[tokio::test]
async fn failover_follows_the_resolver_and_tells_it_who_answered() {
    use lts_common::resolver::{Resolver, StaticResolver};

    let tracker = Tracker::start().await;
    // The dead address comes first in the order.
    let resolver = Arc::new(
        StaticResolver::starting_at([DEAD_ADDRESS, tracker.address.as_str()], 0)
            .expect("valid addresses"),
    );
    let client = JobClient::with_resolver(resolver.clone(), ClientOptions::default());
    let outcomes = client.submit(vec![later_job("r-1")]).await.expect("submit");
    assert!(outcomes[0].is_accepted());
    let live = format!("http://{}", tracker.address);
    assert_eq!(client.current_address(), Some(live.clone()));
    // The resolver now puts the tracker that answered first, so the next
    // client of the same resolver (or the next round) starts there.
    assert_eq!(
        resolver.addresses(),
        [live.clone(), "http://127.0.0.1:1".into()]
    );
    tracker.stop().await;
}

#[tokio::test]
async fn feedback_is_redelivered_until_acked() {
    let tracker = Tracker::start().await;
    let client = JobClient::connect(vec![tracker.address.clone()])
        .await
        .expect("connect");
    let mut spec = later_job("fb-1");
    spec.need_feedback = true;
    spec.submit_node_group = "clients".into();
    let outcomes = client.submit(vec![spec]).await.expect("submit");
    let job_id = outcomes[0].job_id().expect("accepted").to_string();

    let mut first = client
        .feedback("clients", "first")
        .await
        .expect("subscribe");
    client.cancel(&job_id).await.expect("cancel");
    let batch = tokio::time::timeout(Duration::from_secs(10), first.next())
        .await
        .expect("feedback in time")
        .expect("feedback");
    let item = batch
        .iter()
        .find(|f| f.job_id == job_id)
        .expect("the cancelled job's feedback");
    assert_eq!(item.state, Some(JobState::Cancelled));
    assert_eq!(item.task_id, "fb-1");

    // Not acked: a new subscriber of the group gets it again.
    first.close();
    drop(first);
    let mut second = client
        .feedback("clients", "second")
        .await
        .expect("subscribe");
    let again = tokio::time::timeout(Duration::from_secs(10), second.next())
        .await
        .expect("redelivery in time")
        .expect("feedback");
    let redelivered = again
        .iter()
        .find(|f| f.job_id == job_id)
        .expect("redelivered");
    second
        .ack([redelivered.feedback_id.clone()])
        .await
        .expect("ack");

    // Acked, and the tracker confirmed it by ending the stream after the
    // ack: a third subscriber gets nothing for that job. It is sent every
    // unacked item as it joins, so reading until the feedback of a job
    // cancelled after it joined covers everything it could get.
    second.finish().await.expect("the ack confirmed");
    let mut third = client
        .feedback("clients", "third")
        .await
        .expect("subscribe");
    let mut sentinel = later_job("fb-sentinel");
    sentinel.need_feedback = true;
    sentinel.submit_node_group = "clients".into();
    let outcomes = client.submit(vec![sentinel]).await.expect("submit");
    let sentinel_id = outcomes[0].job_id().expect("accepted").to_string();
    client.cancel(&sentinel_id).await.expect("cancel");
    loop {
        let batch = tokio::time::timeout(Duration::from_secs(10), third.next())
            .await
            .expect("the sentinel's feedback in time")
            .expect("feedback");
        assert!(
            batch.iter().all(|f| f.job_id != job_id),
            "acked feedback came again: {batch:?}"
        );
        if batch.iter().any(|f| f.job_id == sentinel_id) {
            break;
        }
    }

    tracker.stop().await;
}

#[tokio::test]
async fn admin_verbs_suspend_resume_trigger_update_and_delete() {
    let tracker = Tracker::start().await;
    let client = JobClient::connect(vec![tracker.address.clone()])
        .await
        .expect("connect");
    let admin = client.admin();
    let outcomes = client.submit(vec![later_job("a-1")]).await.expect("submit");
    let job_id = outcomes[0].job_id().expect("accepted").to_string();

    let job = admin.suspend(&job_id).await.expect("suspend");
    assert_eq!(job.state, JobState::Suspended);
    let job = admin.resume(&job_id).await.expect("resume");
    assert_eq!(job.state, JobState::Pending);

    // Due in an hour; a trigger makes it due now.
    let before = lts_common::now_ms();
    let job = admin.trigger(&job_id).await.expect("trigger");
    assert!(
        job.trigger_at_ms >= before && job.trigger_at_ms < before + 60_000,
        "{job:?}"
    );

    let plan: RetryPlan = "[retry_after 1s, suspend] x2".parse().expect("valid plan");
    let update = JobUpdate {
        params: Some([("day".to_string(), "monday".to_string())].into()),
        priority: Some(7),
        retry_plan: Some(plan.clone()),
        ..JobUpdate::default()
    };
    let job = admin.update(&job_id, update).await.expect("update");
    assert_eq!(job.spec.priority, 7);
    assert_eq!(
        job.spec.params.get("day").map(String::as_str),
        Some("monday")
    );
    assert_eq!(job.spec.retry_plan, Some(plan));
    assert_eq!(job.failures, 0);

    // The tracker validates an update too, naming the field.
    let bad = JobUpdate {
        schedule: Some(Schedule::Repeat {
            interval_ms: 0,
            count: 1,
        }),
        ..JobUpdate::default()
    };
    let e = admin.update(&job_id, bad).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::InvalidArgument), "{e}");
    assert!(e.to_string().contains("interval_ms"), "{e}");

    admin.delete(&job_id).await.expect("delete");
    let e = client.get(&job_id).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    let e = admin.suspend("no-such-job").await.unwrap_err();
    assert!(e.is_not_found(), "{e}");

    tracker.stop().await;
}

#[tokio::test]
async fn lists_filter_by_schedule_kind() {
    let tracker = Tracker::start().await;
    let client = JobClient::connect(vec![tracker.address.clone()])
        .await
        .expect("connect");
    let mut nightly = JobSpec::new("k-cron", "workers");
    nightly.schedule = Schedule::Cron {
        expression: "0 0 3 * * ?".into(),
        time_zone: "Europe/Paris".into(),
        misfire: MisfirePolicy::Skip,
    };
    let outcomes = client
        .submit(vec![nightly, later_job("k-at")])
        .await
        .expect("submit");
    assert!(outcomes.iter().all(|o| o.is_accepted()), "{outcomes:?}");

    let cron = JobFilter {
        kind: Some(ScheduleKind::Cron),
        ..Default::default()
    };
    let page = client.admin().list(&cron, 100, None).await.expect("list");
    let tasks: Vec<&str> = page.jobs.iter().map(|j| j.spec.task_id.as_str()).collect();
    assert_eq!(tasks, ["k-cron"]);
    let at = JobFilter {
        kind: Some(ScheduleKind::At),
        ..Default::default()
    };
    let page = client.list(&at, 100, None).await.expect("list");
    let tasks: Vec<&str> = page.jobs.iter().map(|j| j.spec.task_id.as_str()).collect();
    assert_eq!(tasks, ["k-at"]);

    tracker.stop().await;
}

#[tokio::test]
async fn cli_list_brings_params_and_payload_back_only_when_asked() {
    let tracker = Tracker::start().await;
    let client = JobClient::connect(vec![tracker.address.clone()])
        .await
        .expect("connect");
    let mut spec = later_job("with-params");
    spec.params = [("day".to_string(), "monday".to_string())].into();
    spec.payload = b"the payload".to_vec();
    let outcomes = client.submit(vec![spec]).await.expect("submit");
    assert!(outcomes.iter().all(|o| o.is_accepted()), "{outcomes:?}");

    let listed = |include: bool| {
        let addr = tracker.address.clone();
        async move {
            let mut args = vec!["--json", "list", "-g", "workers"];
            if include {
                args.push("--include-payload");
            }
            let (code, out, err) = jobclient(&addr, &args).await;
            assert_eq!(code, Some(0), "{err}");
            let page: serde_json::Value = serde_json::from_str(&out).expect("json page");
            let job = page["jobs"][0].clone();
            assert_eq!(job["task_id"], "with-params", "{out}");
            job
        }
    };
    let with = listed(true).await;
    assert_eq!(with["params"]["day"], "monday", "{with}");
    assert_eq!(with["payload"], "the payload", "{with}");
    let without = listed(false).await;
    assert_eq!(without["params"].get("day"), None, "{without}");
    assert_eq!(without["payload_bytes"], 0, "{without}");

    tracker.stop().await;
}

/// Runs the `jobclient` binary against `address`; the tracker keeps
/// serving on this test's runtime meanwhile.
async fn jobclient(address: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobclient"))
        .args(["--jobtracker", address])
        .args(args)
        .env_remove("JOBCLIENT_CONFIG")
        .env_remove("JOBCLIENT_JOBTRACKER")
        .output()
        .await
        .expect("run jobclient");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn cli_refusals_name_the_field_and_the_existing_job_once() {
    let tracker = Tracker::start().await;
    let addr = tracker.address.as_str();
    // A valid expression whose times are all past: the tracker refuses it.
    let (code, out, err) = jobclient(
        addr,
        &[
            "submit",
            "-g",
            "workers",
            "-t",
            "old",
            "--cron",
            "0 0 0 1 1 ? 2020",
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(out.matches("schedule.cron.expression").count(), 1, "{out}");
    assert!(
        out.starts_with("refused task old: INVALID_ARGUMENT schedule.cron.expression: "),
        "{out}"
    );

    let (code, out, err) = jobclient(
        addr,
        &["submit", "-g", "workers", "-t", "dup", "--in", "1h"],
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    let job_id = out
        .split_whitespace()
        .nth(1)
        .expect("accepted JOBID")
        .to_string();
    let (code, out, err) = jobclient(
        addr,
        &["submit", "-g", "workers", "-t", "dup", "--in", "1h"],
    )
    .await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(out.matches(&job_id).count(), 1, "{out}");
    assert_eq!(out.matches("task_id").count(), 1, "{out}");
    tracker.stop().await;
}

#[tokio::test]
async fn cli_admin_verbs_against_a_tracker() {
    let tracker = Tracker::start().await;
    let addr = tracker.address.as_str();

    let (code, out, err) = jobclient(
        addr,
        &[
            "submit",
            "-g",
            "workers",
            "-t",
            "cli-cron",
            "--cron",
            "0 0 3 * *",
            "--tz",
            "Europe/Paris",
            "--misfire",
            "skip",
            "--plan",
            "[backoff 1s x2 max 1m] x5",
            "--shell",
            "true",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    let job_id = out
        .split_whitespace()
        .nth(1)
        .expect("accepted JOBID task T")
        .to_string();

    let (code, out, err) = jobclient(addr, &["get", &job_id]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("cron \"0 0 3 * *\" in Europe/Paris, misfire skip"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("retry plan ")
                && l.ends_with(" [backoff 1000ms x2 max 60000ms] x5")),
        "{out}"
    );

    let (code, out, err) = jobclient(addr, &["plan", "set", &job_id, "[suspend]"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("retry plan [suspend] x1; its error counter restarts from 0"),
        "{out}"
    );

    let (code, out, err) = jobclient(addr, &["suspend", &job_id]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with(&format!("job {job_id} is suspended")),
        "{out}"
    );

    let (code, out, err) = jobclient(addr, &["--json", "list", "--kind", "cron"]).await;
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["jobs"][0]["job_id"], job_id.as_str());
    assert_eq!(v["jobs"][0]["state"], "suspended");

    let (code, out, err) = jobclient(
        addr,
        &["update", &job_id, "--priority", "5", "--param", "a=1"],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("priority ") && l.ends_with(" 5")),
        "{out}"
    );

    // A bad expression never reaches the tracker: exit 2 naming the field.
    let (code, _, err) = jobclient(addr, &["update", &job_id, "--cron", "0 0 3 * * MOON"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("field 6 (day-of-week)"), "{err}");

    let (code, out, err) = jobclient(addr, &["delete", &job_id]).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, format!("deleted job {job_id}\n"));
    let (code, _, err) = jobclient(addr, &["resume", &job_id]).await;
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("NotFound"), "{err}");

    tracker.stop().await;
}

#[tokio::test]
async fn logs_of_many_jobs_by_node_group_task_id_and_time() {
    let tracker = Tracker::start().await;
    let client = JobClient::connect(vec![tracker.address.clone()])
        .await
        .expect("connect");
    let mut other = later_job("log-a");
    other.task_tracker_node_group = "others".into();
    let results = client
        .submit(vec![later_job("log-a"), later_job("log-b"), other])
        .await
        .expect("submit");
    let ids: Vec<String> = results
        .iter()
        .map(|r| r.job_id().expect("accepted").to_string())
        .collect();

    let by_group = lts_jobclient::LogQuery {
        node_group: Some("workers".into()),
        ..Default::default()
    };
    let page = client.query_logs(&by_group, 100, None).await.expect("logs");
    let mut jobs: Vec<&str> = page.entries.iter().map(|e| e.job_id.as_str()).collect();
    jobs.sort();
    jobs.dedup();
    let mut want = vec![ids[0].as_str(), ids[1].as_str()];
    want.sort();
    assert_eq!(jobs, want, "the group's jobs, and only those");

    let by_task = lts_jobclient::LogQuery {
        task_id: Some("log-a".into()),
        node_group: Some("others".into()),
        ..Default::default()
    };
    let page = client.query_logs(&by_task, 100, None).await.expect("logs");
    assert!(!page.entries.is_empty());
    assert!(page.entries.iter().all(|e| e.job_id == ids[2]));

    // Through the CLI: a time range that ends before the jobs existed.
    let (code, out, err) = jobclient(
        &tracker.address,
        &["logs", "-g", "workers", "--until", "2001-01-01T00:00:00Z"],
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("no log lines match"), "{out}");
    let (code, out, err) = jobclient(
        &tracker.address,
        &[
            "--json",
            "logs",
            "-g",
            "workers",
            "--since",
            "2001-01-01T00:00:00Z",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let entries = v["entries"].as_array().expect("entries");
    assert!(
        entries.iter().any(|e| e["job_id"] == ids[0].as_str()),
        "{out}"
    );
    assert!(
        entries.iter().all(|e| e["job_id"] != ids[2].as_str()),
        "{out}"
    );
    // Text: one table per job under its job id and task id, a footer of the
    // same form as `list`'s, and a trailing newline.
    let (code, out, err) =
        jobclient(&tracker.address, &["logs", "-g", "workers", "--limit", "1"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.ends_with('\n'), "{out:?}");
    let first_job = out.lines().next().expect("a header");
    assert!(
        first_job == format!("job {} (task log-a, node group workers)", ids[0])
            || first_job == format!("job {} (task log-b, node group workers)", ids[1]),
        "{out}"
    );
    let footer = out.lines().last().expect("a footer");
    assert!(
        footer.starts_with("next page: jobclient logs --page-token "),
        "{out}"
    );
    let (code, listed, err) =
        jobclient(&tracker.address, &["list", "-g", "workers", "--limit", "1"]).await;
    assert_eq!(code, Some(0), "{listed}{err}");
    assert!(listed.ends_with('\n'), "{listed:?}");
    let footer = listed.lines().last().expect("a footer");
    assert!(
        footer.starts_with("next page: jobclient list --page-token ")
            && footer.ends_with(" (with the same filters)"),
        "{listed}"
    );
    let (code, _, err) = jobclient(&tracker.address, &["logs", "--since", "yesterday"]).await;
    assert_eq!(code, Some(2), "a bad time is a usage error: {err}");
    assert!(err.contains("--since"), "{err}");
    tracker.stop().await;
}

#[tokio::test]
async fn cli_feedback_count_prints_that_many_and_acks_them_before_exiting() {
    let tracker = Tracker::start().await;
    let client = JobClient::connect(vec![tracker.address.clone()])
        .await
        .expect("connect");
    let specs: Vec<JobSpec> = (1..=3)
        .map(|i| {
            let mut spec = later_job(&format!("cf-{i}"));
            spec.need_feedback = true;
            spec.submit_node_group = "cli-clients".into();
            spec
        })
        .collect();
    let outcomes = client.submit(specs).await.expect("submit");
    let mut job_ids: Vec<String> = outcomes
        .iter()
        .map(|o| o.job_id().expect("accepted").to_string())
        .collect();
    // A cancelled job that asked for feedback reports it, like a finished run.
    for id in &job_ids {
        client.cancel(id).await.expect("cancel");
    }

    let mut printed = Vec::new();
    for run in 1..=3 {
        let (code, out, err) = jobclient(
            &tracker.address,
            &[
                "--json",
                "feedback",
                "--submit-node-group",
                "cli-clients",
                "--count",
                "1",
                "--timeout",
                "20s",
            ],
        )
        .await;
        assert_eq!(code, Some(0), "run {run}: {out}{err}");
        let items: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON item a line"))
            .collect();
        assert_eq!(items.len(), 1, "run {run} printed: {out}");
        printed.push(items[0]["job_id"].as_str().expect("job_id").to_string());
    }
    printed.sort();
    job_ids.sort();
    assert_eq!(printed, job_ids, "each run printed another job's feedback");

    // Nothing of those three is left unacked. A new subscriber is sent
    // every unacked item of its group as it joins, so whatever it receives
    // before the feedback of a job cancelled after it joined would be a
    // lost ack.
    let mut reader = client
        .feedback("cli-clients", "after-the-cli")
        .await
        .expect("subscribe");
    let mut sentinel = later_job("cf-sentinel");
    sentinel.need_feedback = true;
    sentinel.submit_node_group = "cli-clients".into();
    let outcomes = client.submit(vec![sentinel]).await.expect("submit");
    let sentinel_id = outcomes[0].job_id().expect("accepted").to_string();
    client.cancel(&sentinel_id).await.expect("cancel");
    loop {
        let batch = tokio::time::timeout(Duration::from_secs(20), reader.next())
            .await
            .expect("the sentinel's feedback in time")
            .expect("feedback");
        let stale: Vec<&str> = batch
            .iter()
            .filter(|f| job_ids.contains(&f.job_id))
            .map(|f| f.task_id.as_str())
            .collect();
        assert!(
            stale.is_empty(),
            "acked by the CLI, yet delivered again: {stale:?}"
        );
        if batch.iter().any(|f| f.job_id == sentinel_id) {
            break;
        }
    }

    tracker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_submits_at_the_same_time_each_get_their_own_outcomes() {
    let tracker = Tracker::start().await;
    let client = JobClient::connect(vec![tracker.address.clone()])
        .await
        .expect("connect");
    let taken = client
        .submit(vec![later_job("taken")])
        .await
        .expect("submit")
        .remove(0);
    let SubmitOutcome::Accepted {
        job_id: taken_id, ..
    } = taken
    else {
        panic!("{taken:?}")
    };
    // 300 submits at once, one or two jobs each: every tenth reuses a task
    // id already stored, every fifteenth names an impossible node group.
    let calls: Vec<_> = (0..300)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut jobs = vec![later_job(&format!("c-{i}"))];
                if i % 10 == 0 {
                    jobs.push(later_job("taken"));
                }
                if i % 15 == 0 {
                    let mut bad = later_job(&format!("bad-{i}"));
                    bad.task_tracker_node_group = "no spaces allowed".into();
                    jobs.push(bad);
                }
                (i, client.submit(jobs).await)
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for call in calls {
        let (i, outcomes) = call.await.expect("task");
        let outcomes = outcomes.expect("submit");
        let expected = 1 + usize::from(i % 10 == 0) + usize::from(i % 15 == 0);
        assert_eq!(outcomes.len(), expected, "call {i}: {outcomes:?}");
        match &outcomes[0] {
            SubmitOutcome::Accepted { task_id, job_id } => {
                assert_eq!(task_id, &format!("c-{i}"));
                assert!(ids.insert(job_id.clone()), "job id {job_id} given twice");
                let job = client.get(job_id).await.expect("get");
                assert_eq!(job.spec.task_id, format!("c-{i}"));
            }
            other => panic!("call {i}: {other:?}"),
        }
        for extra in &outcomes[1..] {
            let SubmitOutcome::Refused(r) = extra else {
                panic!("call {i}: {extra:?}")
            };
            if r.task_id == "taken" {
                assert_eq!(r.code, "ALREADY_EXISTS", "{r:?}");
                assert_eq!(r.existing_job_id.as_deref(), Some(taken_id.as_str()));
            } else {
                assert_eq!(r.task_id, format!("bad-{i}"));
                assert_eq!(r.field, "task_tracker_node_group", "{r:?}");
            }
        }
    }
    assert_eq!(ids.len(), 300);
    tracker.stop().await;

    // With no tracker, each of the submits that shared a call gets the
    // error, naming the address.
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let client = JobClient::new(vec![DEAD_ADDRESS.to_string()], options).expect("client");
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.submit(vec![later_job(&format!("d-{i}"))]).await })
        })
        .collect();
    for call in calls {
        let e = call.await.expect("task").unwrap_err();
        assert!(matches!(e, Error::Unavailable { .. }), "{e}");
        assert!(e.to_string().contains(DEAD_ADDRESS), "{e}");
    }
}
