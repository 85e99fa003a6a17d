//! With a token file, what each credential may do against an in-process
//! JobTracker on loopback: a worker credential acts only under identities
//! of its own name, submit budgets are per credential, and operators,
//! submitters and non-administrators are refused what their role does not
//! give them, leaving the job as it was.

mod support;

use std::sync::Arc;

use lts_jobtracker::auth::hash_token;
use lts_proto::v1 as pb;
use pb::admin_service_client::AdminServiceClient;
use pb::job_service_client::JobServiceClient;
use pb::work_service_client::WorkServiceClient;
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const ADMIN: &str = "admin-token";
const WORKER_A1: &str = "worker-token-one-for-a";
const WORKER_A2: &str = "worker-token-two-for-a";
const OPERATE_A: &str = "operate-token-for-a";
const OPERATE_B: &str = "operate-token-for-b";
const SUBMIT_X: &str = "submit-token-for-x";
const SUBMIT_Y: &str = "submit-token-for-y";

fn tokens() -> String {
    [
        (ADMIN, "admin root"),
        (WORKER_A1, "worker:a rack-1"),
        (WORKER_A2, "worker:a rack-2"),
        (OPERATE_A, "operate:a alice"),
        (OPERATE_B, "operate:b bob"),
        (SUBMIT_X, "submit:x app-x"),
        (SUBMIT_Y, "submit:y app-y"),
    ]
    .iter()
    .map(|(token, rest)| format!("{} {rest}\n", hash_token(token)))
    .collect()
}

/// A tracker with auth on (the token file above), served in-process on
/// loopback, with its state at hand.
async fn tracker(max_submits_per_second: u32) -> (TestTracker, Arc<lts_jobtracker::Tracker>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let token_path = dir.path().join("tokens");
    std::fs::write(&token_path, tokens()).expect("write tokens");
    let mut config = test_config(&dir.path().join("data"));
    config.security.token_file = Some(token_path);
    config.limits.max_submits_per_second = max_submits_per_second;
    let tracker = lts_jobtracker::create_tracker(config)
        .await
        .expect("create tracker");
    let mut t = TestTracker::serve(tracker.clone()).await;
    t.dir = Some(dir);
    (t, tracker)
}

/// `message` with `token` as its bearer token.
fn with<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header value"),
    );
    r
}

async fn admin_client(t: &TestTracker) -> AdminServiceClient<tonic::transport::Channel> {
    AdminServiceClient::connect(t.addr.clone())
        .await
        .expect("connect")
}

async fn open_work_as(addr: &str, token: &str, identity: &str) -> Result<Peer, tonic::Status> {
    let mut client = WorkServiceClient::connect(addr.to_string())
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(64);
    tx.send(hello(identity, "a", 1)).await.expect("queue hello");
    let response = client.work(with(token, ReceiverStream::new(rx))).await?;
    Ok(Peer {
        tx,
        rx: response.into_inner(),
    })
}

async fn submit_as(
    c: &mut JobServiceClient<tonic::transport::Channel>,
    token: &str,
    spec: pb::JobSpec,
) -> Result<String, tonic::Status> {
    let r = c
        .submit_jobs(with(token, pb::SubmitJobsRequest { jobs: vec![spec] }))
        .await?
        .into_inner();
    Ok(job_id(&r.results[0]))
}

async fn get_as(
    c: &mut JobServiceClient<tonic::transport::Channel>,
    token: &str,
    job_id: &str,
) -> Result<pb::Job, tonic::Status> {
    Ok(c.get_job(with(
        token,
        pb::GetJobRequest {
            job_id: job_id.into(),
            ..Default::default()
        },
    ))
    .await?
    .into_inner()
    .job
    .expect("job"))
}

/// Reports a failure of `(job_id, attempt)` and waits for its
/// acknowledgement (a refused outcome is acknowledged too).
async fn report_failed(peer: &mut Peer, job_id: &str, attempt: u32) {
    peer.report(
        job_id,
        attempt,
        pb::outcome::Kind::Failed(pb::Failed {
            message: "forged".into(),
        }),
    )
    .await;
    loop {
        if let pb::tracker_message::Kind::OutcomeAcks(a) = peer.next().await.expect("stream ok") {
            if a.runs.iter().any(|r| r.job_id == job_id) {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_credential_acts_only_under_identities_of_its_own_name() {
    let (t, tracker) = tracker(0).await;
    let mut c = t.jobs().await;
    let mut first = open_work_as(&t.addr, WORKER_A1, "tt-1")
        .await
        .expect("work stream");
    let id = submit_as(&mut c, ADMIN, job("j", "a"))
        .await
        .expect("submit");
    let run = first.assignments().await.remove(0);
    let job = get_as(&mut c, ADMIN, &id).await.expect("get");
    assert_eq!(job.worker, "rack-1/tt-1", "{job:?}");

    // Another credential of the same node group, under the same hello
    // identity and under the first's full one: neither is the first.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    for identity in ["tt-1", "rack-1/tt-1"] {
        let mut other = open_work_as(&t.addr, WORKER_A2, identity)
            .await
            .expect("a stream under its own name");
        report_failed(&mut other, &id, run.attempt).await;
        let job = get_as(&mut c, ADMIN, &id).await.expect("get");
        assert_eq!(job.state, pb::JobState::Running as i32, "{job:?}");
        assert_eq!(job.worker, "rack-1/tt-1", "{job:?}");
        seen.lock().expect("lock").push(other);
    }
    assert_eq!(
        tracker
            .metrics
            .refused_runs
            .with_label_values(&["outcome"])
            .get(),
        2
    );
    // The first credential under the same identity is still refused while
    // its stream is heard from.
    let status = open_work_as(&t.addr, WORKER_A1, "tt-1")
        .await
        .err()
        .expect("a duplicate");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("rack-1/tt-1"), "{status:?}");

    // The run's own stream reports it: applied.
    first.succeed(&[(id.clone(), run.attempt)]).await;
    eventually("the real outcome applied", || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            let job = get_as(&mut c, ADMIN, &id).await.expect("get");
            (job.state == pb::JobState::Succeeded as i32).then_some(())
        }
    })
    .await;
    drop((first, seen));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_credential_has_its_own_submit_budget_from_one_address() {
    let (t, tracker) = tracker(5).await;
    let mut c = t.jobs().await;
    let mut exhausted = None;
    for i in 0..1000 {
        match submit_as(
            &mut c,
            SUBMIT_X,
            job_for_submit_group(&format!("x-{i}"), "x"),
        )
        .await
        {
            Ok(_) => continue,
            Err(status) => {
                exhausted = Some(status);
                break;
            }
        }
    }
    let status = exhausted.expect("app-x runs out of its budget");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("app-x") && status.message().contains("--max-submits-per-second"),
        "{status:?}"
    );
    // Another credential from the same loopback address is served.
    submit_as(&mut c, SUBMIT_Y, job_for_submit_group("y-0", "y"))
        .await
        .expect("app-y has its own budget");
    assert!(
        tracker
            .metrics
            .limited
            .with_label_values(&["submit_rate"])
            .get()
            >= 1
    );
    t.stop().await;
}

fn job_for_submit_group(task_id: &str, group: &str) -> pb::JobSpec {
    let mut spec = job(task_id, "a");
    spec.submit_node_group = group.into();
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_of_another_group_and_non_administrators_leave_a_job_as_it_was() {
    let (t, _tracker) = tracker(0).await;
    let mut c = t.jobs().await;
    let mut admin = admin_client(&t).await;
    let mut spec = job_for_submit_group("cron", "x");
    spec.params.insert("arg".into(), "original".into());
    spec.schedule = Some(pb::Schedule {
        kind: Some(pb::schedule::Kind::Cron(pb::Cron {
            expression: "0 0 3 * * ?".into(),
            ..Default::default()
        })),
    });
    let id = submit_as(&mut c, ADMIN, spec).await.expect("submit");
    let before = get_as(&mut c, ADMIN, &id).await.expect("get");
    let missing = "0000000000000000000000000000dead";

    let job_ref = |job_id: &str| pb::JobRef {
        job_id: job_id.into(),
    };
    let mut refusals: Vec<(&str, tonic::Status)> = Vec::new();
    let mut params = std::collections::HashMap::new();
    params.insert("arg".to_string(), "attacker".to_string());
    let e = admin
        .update_job(with(
            OPERATE_B,
            pb::UpdateJobRequest {
                job_id: id.clone(),
                set_params: true,
                params,
                ..Default::default()
            },
        ))
        .await
        .expect_err("update params");
    refusals.push(("update params", e));
    let e = admin
        .update_job(with(
            OPERATE_B,
            pb::UpdateJobRequest {
                job_id: id.clone(),
                schedule: Some(pb::Schedule {
                    kind: Some(pb::schedule::Kind::Cron(pb::Cron {
                        expression: "* * * * * ?".into(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            },
        ))
        .await
        .expect_err("update cron");
    refusals.push(("update cron", e));
    let e = admin
        .suspend_job(with(OPERATE_B, job_ref(&id)))
        .await
        .expect_err("suspend");
    refusals.push(("suspend", e));
    let e = admin
        .cancel_job(with(OPERATE_B, job_ref(&id)))
        .await
        .expect_err("cancel");
    refusals.push(("admin cancel", e));
    let e = c
        .cancel_job(with(OPERATE_B, pb::CancelJobRequest { job_id: id.clone() }))
        .await
        .expect_err("cancel");
    refusals.push(("cancel", e));
    let e = admin
        .trigger_job(with(OPERATE_B, job_ref(&id)))
        .await
        .expect_err("trigger");
    refusals.push(("trigger", e));
    // Deleting takes an administrator, even for the job's own operator.
    let e = admin
        .delete_job(with(OPERATE_A, job_ref(&id)))
        .await
        .expect_err("delete");
    refusals.push(("delete by its operator", e));
    let e = admin
        .delete_job(with(SUBMIT_X, job_ref(&id)))
        .await
        .expect_err("delete");
    refusals.push(("delete by its submitter", e));
    for (what, e) in &refusals {
        assert_eq!(e.code(), Code::PermissionDenied, "{what}: {e:?}");
    }
    let after = get_as(&mut c, ADMIN, &id).await.expect("get");
    assert_eq!(before, after, "the job changed");

    // Listings: group b's operator is refused a's jobs and every group's.
    for group in ["a", ""] {
        let e = c
            .list_jobs(with(
                OPERATE_B,
                pb::ListJobsRequest {
                    task_tracker_node_group: group.into(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("list");
        assert_eq!(e.code(), Code::PermissionDenied, "group {group:?}: {e:?}");
    }
    let own = c
        .list_jobs(with(
            OPERATE_B,
            pb::ListJobsRequest {
                task_tracker_node_group: "b".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("its own group")
        .into_inner();
    assert!(own.jobs.iter().all(|j| j.job_id != id), "{own:?}");

    // The log of a's job: the same answer as for a job that does not
    // exist.
    let log = |job_id: &str| pb::GetJobLogRequest {
        job_id: job_id.into(),
        ..Default::default()
    };
    let real = c
        .get_job_log(with(OPERATE_B, log(&id)))
        .await
        .expect_err("log");
    let none = c
        .get_job_log(with(OPERATE_B, log(missing)))
        .await
        .expect_err("log");
    assert_eq!(real.code(), Code::PermissionDenied, "{real:?}");
    assert_eq!(none.code(), Code::PermissionDenied, "{none:?}");
    assert_eq!(
        real.message().replace(&id, "ID"),
        none.message().replace(missing, "ID")
    );
    // ListLogs naming a's job, under b or a, or a page token going on
    // inside a's job: refused like a job that does not exist.
    for (job_id, group, page_token) in [
        (id.clone(), "b", String::new()),
        (id.clone(), "a", String::new()),
        (String::new(), "b", format!("{id}/0")),
    ] {
        let e = c
            .list_logs(with(
                OPERATE_B,
                pb::ListLogsRequest {
                    job_id,
                    task_tracker_node_group: group.into(),
                    page_token,
                    ..Default::default()
                },
            ))
            .await
            .expect_err("list logs");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
    // Its own group's lines it reads.
    c.list_logs(with(
        OPERATE_B,
        pb::ListLogsRequest {
            task_tracker_node_group: "b".into(),
            ..Default::default()
        },
    ))
    .await
    .expect("its own group");
    t.stop().await;
}

/// Opens a feedback stream for `group` with `token`: the status of the
/// call.
async fn subscribe(
    c: &mut JobServiceClient<tonic::transport::Channel>,
    token: &str,
    group: &str,
) -> Result<(), tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::FeedbackClientMessage {
        kind: Some(pb::feedback_client_message::Kind::Subscribe(
            pb::Subscribe {
                submit_node_group: group.into(),
                client_id: "test".into(),
            },
        )),
    })
    .await
    .expect("queue subscribe");
    let stream = c.feedback(with(token, ReceiverStream::new(rx))).await?;
    drop((stream, tx));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitter_reads_and_hears_only_its_own_submit_group() {
    let (t, _tracker) = tracker(0).await;
    let mut c = t.jobs().await;
    let mut mine = job_for_submit_group("mine", "x");
    mine.need_feedback = true;
    let mine = submit_as(&mut c, SUBMIT_X, mine).await.expect("submit x");
    let mut theirs = job_for_submit_group("theirs", "y");
    theirs.need_feedback = true;
    let theirs = submit_as(&mut c, SUBMIT_Y, theirs).await.expect("submit y");

    assert_eq!(
        get_as(&mut c, SUBMIT_X, &mine)
            .await
            .expect("its own")
            .job_id,
        mine
    );
    let e = get_as(&mut c, SUBMIT_X, &theirs)
        .await
        .expect_err("another group's job");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = c
        .get_job_log(with(
            SUBMIT_X,
            pb::GetJobLogRequest {
                job_id: theirs.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("another group's log");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    subscribe(&mut c, SUBMIT_X, "x")
        .await
        .expect("its own feedback");
    let e = subscribe(&mut c, SUBMIT_X, "y")
        .await
        .expect_err("another group's feedback");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_tracker_reconnecting_under_its_own_credential_gets_its_work_back() {
    let (t, _tracker) = tracker(0).await;
    let mut c = t.jobs().await;
    let mut first = open_work_as(&t.addr, WORKER_A1, "tt-1")
        .await
        .expect("work stream");
    let id = submit_as(&mut c, ADMIN, job("j", "a"))
        .await
        .expect("submit");
    let run = first.assignments().await.remove(0);
    // Its connection goes; the same credential and identity come back.
    drop(first);
    let mut again = eventually(
        "a stream under the same credential and identity",
        || async { open_work_as(&t.addr, WORKER_A1, "tt-1").await.ok() },
    )
    .await;
    // The run went back to the queue with the stream, and comes to the
    // reconnected TaskTracker as a new attempt, which it completes.
    let rerun = again.assignments().await.remove(0);
    assert_eq!(
        rerun.job.as_ref().map(|j| j.job_id.clone()),
        Some(id.clone())
    );
    assert!(rerun.attempt > run.attempt, "{rerun:?} after {run:?}");
    let job = get_as(&mut c, ADMIN, &id).await.expect("get");
    assert_eq!(job.worker, "rack-1/tt-1", "{job:?}");
    again.succeed(&[(id.clone(), rerun.attempt)]).await;
    eventually("the reconnected run's outcome applied", || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            let job = get_as(&mut c, ADMIN, &id).await.expect("get");
            (job.state == pb::JobState::Succeeded as i32 && job.attempt == rerun.attempt)
                .then_some(())
        }
    })
    .await;
    drop(again);
    t.stop().await;
}
