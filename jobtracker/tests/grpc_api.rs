//! The JobTracker's gRPC API, driven over loopback by a JobClient and a
//! TaskTracker peer that speak the wire protocol directly.

use std::time::Duration;

mod support;

use lts_proto::v1 as pb;
use pb::job_service_client::JobServiceClient;
use support::{eventually, job, job_id, open_work, WAIT};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

struct TestTracker {
    addr: String,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<lts_jobtracker::Result<()>>>,
}

impl TestTracker {
    async fn start() -> TestTracker {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir).await
    }

    async fn start_in(dir: tempfile::TempDir) -> TestTracker {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = format!("http://{}", listener.local_addr().expect("addr"));
        let mut config = lts_jobtracker::TrackerConfig::embedded(dir.path());
        config.heartbeat_interval = Duration::from_millis(200);
        config.shutdown_timeout = Duration::from_secs(2);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(lts_jobtracker::serve(config, listener, async move {
            let _ = stopped.await;
        }));
        TestTracker {
            addr,
            _dir: dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::connect(self.addr.clone())
            .await
            .expect("connect")
    }

    async fn stop(mut self) -> tempfile::TempDir {
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
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self._dir, dir)
    }
}

/// Submits one job that must be accepted; returns its id.
async fn submit_one(c: &mut JobServiceClient<Channel>, spec: pb::JobSpec) -> String {
    job_id(
        &c.submit_jobs(pb::SubmitJobsRequest { jobs: vec![spec] })
            .await
            .expect("submit")
            .into_inner()
            .results[0],
    )
}

async fn job_log(c: &mut JobServiceClient<Channel>, job_id: &str) -> Vec<pb::LogEntry> {
    c.get_job_log(pb::GetJobLogRequest {
        job_id: job_id.into(),
        ..Default::default()
    })
    .await
    .expect("log")
    .into_inner()
    .entries
}

fn error(r: &pb::SubmitResult) -> pb::SubmitError {
    match &r.result {
        Some(pb::submit_result::Result::Error(e)) => e.clone(),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn hello(group: &str, slots: u32, version: u32) -> pb::WorkerMessage {
    hello_ahead(group, slots, version, 0)
}

fn hello_ahead(group: &str, slots: u32, version: u32, ahead_slots: u32) -> pb::WorkerMessage {
    pb::WorkerMessage {
        kind: Some(pb::worker_message::Kind::Hello(pb::Hello {
            identity: format!("peer-{group}-{slots}"),
            node_group: group.into(),
            slots,
            protocol_version: version,
            ahead_slots,
            total_slots: 0,
        })),
    }
}

fn at(task: &str, group: &str, at_unix_ms: i64) -> pb::JobSpec {
    pb::JobSpec {
        schedule: Some(pb::Schedule {
            kind: Some(pb::schedule::Kind::At(pb::At { at_unix_ms })),
        }),
        ..job(task, group)
    }
}

async fn wait_for_state(
    client: &mut JobServiceClient<Channel>,
    job_id: &str,
    state: pb::JobState,
) -> pb::Job {
    let what = format!("job {job_id} to reach {state:?}");
    eventually(&what, || {
        let mut client = client.clone();
        async move {
            let job = client
                .get_job(pb::GetJobRequest {
                    job_id: job_id.into(),
                    ..Default::default()
                })
                .await
                .expect("get")
                .into_inner()
                .job
                .expect("job");
            (job.state == state as i32).then_some(job)
        }
    })
    .await
}

#[tokio::test]
async fn bad_input_gets_errors_naming_the_field_and_good_jobs_still_land() {
    let t = TestTracker::start().await;
    let mut c = t.jobs().await;
    let mut big = job("big", "g");
    big.payload = vec![0; lts_common::limits::MAX_PAYLOAD_BYTES + 1];
    let batch = vec![
        job("", "g"),
        job(&"x".repeat(129), "g"),
        job("ok-1", "bad group!"),
        big,
        job("ok-1", "g"),
        job("ok-1", "g"),
        job("queued", "nobody-serves-this-group"),
    ];
    let r = c
        .submit_jobs(pb::SubmitJobsRequest { jobs: batch })
        .await
        .expect("submit")
        .into_inner()
        .results;
    assert_eq!(r.len(), 7);
    let e = error(&r[0]);
    assert_eq!(
        (e.code.as_str(), e.field.as_str()),
        ("INVALID_ARGUMENT", "task_id")
    );
    assert!(e.message.contains("empty"), "{}", e.message);
    assert!(error(&r[1]).message.contains("129"));
    assert_eq!(error(&r[2]).field, "task_tracker_node_group");
    let e = error(&r[3]);
    assert_eq!(e.field, "payload");
    assert!(e.message.contains("limit"), "{}", e.message);
    let first = job_id(&r[4]);
    let dup = error(&r[5]);
    assert_eq!(
        (dup.code.as_str(), dup.existing_job_id.as_str()),
        ("ALREADY_EXISTS", first.as_str())
    );
    let queued = job_id(&r[6]);
    let j = wait_for_state(&mut c, &queued, pb::JobState::Pending).await;
    assert_eq!(j.spec.expect("spec").task_id, "queued");

    let cron = |task: &str, expression: &str, time_zone: &str| pb::JobSpec {
        schedule: Some(pb::Schedule {
            kind: Some(pb::schedule::Kind::Cron(pb::Cron {
                expression: expression.into(),
                time_zone: time_zone.into(),
                ..Default::default()
            })),
        }),
        ..job(task, "g")
    };
    let r = c
        .submit_jobs(pb::SubmitJobsRequest {
            jobs: vec![
                cron("bad-hour", "0 0 25 * * ?", ""),
                cron("bad-zone", "0 0 1 * * ?", "Mars/Olympus"),
                cron("never", "0 0 0 30 2 ?", ""),
                cron("ok", "0 0 1 * * ?", "Europe/Berlin"),
            ],
        })
        .await
        .expect("submit")
        .into_inner()
        .results;
    let e = error(&r[0]);
    assert_eq!(
        (e.code.as_str(), e.field.as_str()),
        ("INVALID_ARGUMENT", "schedule.cron.expression")
    );
    assert!(e.message.contains("hour"), "{}", e.message);
    assert_eq!(error(&r[1]).field, "schedule.cron.time_zone");
    assert!(
        error(&r[2]).message.contains("no fire time"),
        "{}",
        error(&r[2]).message
    );
    job_id(&r[3]);

    let too_many = (0..=lts_common::limits::MAX_BATCH)
        .map(|i| job(&format!("t{i}"), "g"))
        .collect();
    let e = c
        .submit_jobs(pb::SubmitJobsRequest { jobs: too_many })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = c
        .get_job(pb::GetJobRequest {
            job_id: "no-such-job".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    t.stop().await;
}

#[tokio::test]
async fn task_trackers_with_a_bad_hello_are_refused_with_a_reason() {
    let t = TestTracker::start().await;
    let e = open_work(&t.addr, hello("g", 4, lts_proto::PROTOCOL_VERSION + 1))
        .await
        .err()
        .expect("refused");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    let want_a = format!("version {}", lts_proto::PROTOCOL_VERSION + 1);
    let want_b = format!("version {}", lts_proto::PROTOCOL_VERSION);
    assert!(
        e.message().contains(&want_a) && e.message().contains(&want_b),
        "{}",
        e.message()
    );
    let e = open_work(&t.addr, hello("g", 0, lts_proto::PROTOCOL_VERSION))
        .await
        .err()
        .expect("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("slots"), "{}", e.message());
    // The tracker still serves others.
    let mut c = t.jobs().await;
    let r = c
        .submit_jobs(pb::SubmitJobsRequest {
            jobs: vec![job("a", "g")],
        })
        .await
        .expect("submit")
        .into_inner();
    job_id(&r.results[0]);
    t.stop().await;
}

#[tokio::test]
async fn a_job_runs_reports_and_feeds_back_once_acked() {
    let t = TestTracker::start().await;
    let mut c = t.jobs().await;

    let (fb_tx, fb_rx) = mpsc::channel(8);
    fb_tx
        .send(pb::FeedbackClientMessage {
            kind: Some(pb::feedback_client_message::Kind::Subscribe(
                pb::Subscribe {
                    submit_node_group: "clients".into(),
                    client_id: "test".into(),
                },
            )),
        })
        .await
        .expect("subscribe");
    let mut feedback = c
        .feedback(ReceiverStream::new(fb_rx))
        .await
        .expect("feedback stream")
        .into_inner();

    let spec = pb::JobSpec {
        need_feedback: true,
        submit_node_group: "clients".into(),
        ..job("t1", "workers")
    };
    let id = job_id(
        &c.submit_jobs(pb::SubmitJobsRequest { jobs: vec![spec] })
            .await
            .expect("submit")
            .into_inner()
            .results[0],
    );
    let mut peer = open_work(&t.addr, hello("workers", 2, lts_proto::PROTOCOL_VERSION))
        .await
        .expect("accepted");
    assert!(matches!(
        peer.next().await.expect("stream ok"),
        pb::tracker_message::Kind::Welcome(_)
    ));
    let a = peer.assignments().await;
    assert_eq!(a.len(), 1);
    assert_eq!(
        (
            a[0].job.as_ref().expect("job").job_id.as_str(),
            a[0].attempt
        ),
        (id.as_str(), 1)
    );
    wait_for_state(&mut c, &id, pb::JobState::Running).await;

    // A stale outcome is refused: the job keeps running.
    peer.report(&id, 7, pb::outcome::Kind::Success(pb::Success::default()))
        .await;
    assert!(matches!(
        peer.next().await.expect("stream ok"),
        pb::tracker_message::Kind::OutcomeAcks(_)
    ));
    wait_for_state(&mut c, &id, pb::JobState::Running).await;

    peer.send(pb::worker_message::Kind::BizLogs(pb::BizLogs {
        lines: vec![pb::BizLog {
            job_id: id.clone(),
            attempt: 1,
            level: pb::LogLevel::Info as i32,
            message: "hello from the runner".into(),
            at_unix_ms: lts_common::now_ms(),
        }],
    }))
    .await;
    peer.report(
        &id,
        1,
        pb::outcome::Kind::Success(pb::Success {
            message: "done".into(),
        }),
    )
    .await;
    let acks = loop {
        if let pb::tracker_message::Kind::OutcomeAcks(a) = peer.next().await.expect("stream ok") {
            break a;
        }
    };
    assert_eq!(acks.runs[0].job_id, id);
    let job = wait_for_state(&mut c, &id, pb::JobState::Succeeded).await;
    assert_eq!(job.attempt, 1);

    let items = tokio::time::timeout(WAIT, feedback.message())
        .await
        .expect("feedback in time")
        .expect("stream ok")
        .expect("open")
        .items;
    assert_eq!(items.len(), 1);
    assert_eq!(
        (items[0].job_id.as_str(), items[0].state),
        (id.as_str(), pb::JobState::Succeeded as i32)
    );
    fb_tx
        .send(pb::FeedbackClientMessage {
            kind: Some(pb::feedback_client_message::Kind::Ack(pb::FeedbackAck {
                feedback_ids: vec![items[0].feedback_id.clone()],
            })),
        })
        .await
        .expect("ack");

    let log = job_log(&mut c, &id).await;
    let kinds: Vec<i32> = log.iter().map(|e| e.kind).collect();
    for want in [
        pb::LogKind::Received,
        pb::LogKind::Dispatched,
        pb::LogKind::Biz,
        pb::LogKind::StaleOutcome,
        pb::LogKind::Outcome,
    ] {
        assert!(
            kinds.contains(&(want as i32)),
            "log lacks {want:?}: {log:?}"
        );
    }
    assert!(log.iter().any(|e| e.message == "hello from the runner"));
    t.stop().await;
}

#[tokio::test]
async fn runs_of_a_lost_task_tracker_go_to_another_with_a_new_attempt() {
    let t = TestTracker::start().await;
    let mut c = t.jobs().await;
    let id = job_id(
        &c.submit_jobs(pb::SubmitJobsRequest {
            jobs: vec![job("t", "g")],
        })
        .await
        .expect("submit")
        .into_inner()
        .results[0],
    );
    let mut first = open_work(&t.addr, hello("g", 1, lts_proto::PROTOCOL_VERSION))
        .await
        .expect("accepted");
    assert_eq!(first.assignments().await[0].attempt, 1);
    // The first TaskTracker disconnects in the middle of its run.
    drop(first);
    let mut second = open_work(&t.addr, hello("g", 1, lts_proto::PROTOCOL_VERSION))
        .await
        .expect("accepted");
    let a = second.assignments().await;
    assert_eq!(
        (
            a[0].job.as_ref().expect("job").job_id.as_str(),
            a[0].attempt
        ),
        (id.as_str(), 2)
    );
    t.stop().await;
}

#[tokio::test]
async fn acked_jobs_survive_a_restart_and_run_with_a_new_attempt() {
    let t = TestTracker::start().await;
    let mut c = t.jobs().await;
    let ids: Vec<String> = c
        .submit_jobs(pb::SubmitJobsRequest {
            jobs: (0..3).map(|i| job(&format!("t{i}"), "g")).collect(),
        })
        .await
        .expect("submit")
        .into_inner()
        .results
        .iter()
        .map(job_id)
        .collect();
    let mut peer = open_work(&t.addr, hello("g", 1, lts_proto::PROTOCOL_VERSION))
        .await
        .expect("accepted");
    let running = peer.assignments().await;
    assert_eq!(running[0].attempt, 1);
    let dir = t.stop().await;
    drop(peer);

    let t = TestTracker::start_in(dir).await;
    let mut peer = open_work(&t.addr, hello("g", 3, lts_proto::PROTOCOL_VERSION))
        .await
        .expect("accepted");
    let mut got = Vec::new();
    while got.len() < 3 {
        for a in peer.assignments().await {
            got.push((a.job.expect("job").job_id, a.attempt));
        }
    }
    got.sort();
    let running_id = running[0].job.as_ref().expect("job").job_id.clone();
    for id in &ids {
        let attempt = got
            .iter()
            .find(|(j, _)| j == id)
            .expect("every job is back")
            .1;
        // A restart skips one attempt number of every job that was not
        // finished (a dispatch may have left without being written), so
        // the run that was going on before is never confused with a new one.
        assert_eq!(
            attempt,
            2,
            "job {id} (running before: {})",
            *id == running_id
        );
    }
    t.stop().await;
}

#[tokio::test]
async fn health_and_cancel() {
    let t = TestTracker::start().await;
    let channel = Channel::from_shared(t.addr.clone())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "lts.v1.JobService".into(),
        })
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let mut c = t.jobs().await;
    let id = job_id(
        &c.submit_jobs(pb::SubmitJobsRequest {
            jobs: vec![job("t", "g")],
        })
        .await
        .expect("submit")
        .into_inner()
        .results[0],
    );
    let mut peer = open_work(&t.addr, hello("g", 1, lts_proto::PROTOCOL_VERSION))
        .await
        .expect("accepted");
    peer.assignments().await;
    let job = c
        .cancel_job(pb::CancelJobRequest { job_id: id.clone() })
        .await
        .expect("cancel")
        .into_inner()
        .job
        .expect("job");
    assert_eq!(job.state, pb::JobState::Cancelled as i32);
    match peer.next().await.expect("stream ok") {
        pb::tracker_message::Kind::Cancel(cancel) => {
            assert_eq!((cancel.job_id.as_str(), cancel.attempt), (id.as_str(), 1))
        }
        other => panic!("expected a cancel, got {other:?}"),
    }
    let e = c
        .cancel_job(pb::CancelJobRequest { job_id: id })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    t.stop().await;
}

#[tokio::test]
async fn jobs_due_soon_go_ahead_to_task_trackers_with_ahead_slots_only() {
    let t = TestTracker::start().await;
    let mut c = t.jobs().await;
    // Far enough ahead that a slow machine still submits before the time.
    let due = lts_common::now_ms() + 3_000;
    let early = submit_one(&mut c, at("early", "ahead", due)).await;
    let plain = submit_one(&mut c, at("plain", "plain", due)).await;

    // A TaskTracker with ahead slots gets the job before its time, marked
    // with the instant it starts at, on an ahead slot.
    let mut peer = open_work(
        &t.addr,
        hello_ahead("ahead", 1, lts_proto::PROTOCOL_VERSION, 8),
    )
    .await
    .expect("accepted");
    let a = peer.assignments().await;
    let received_at = lts_common::now_ms();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].job.as_ref().expect("job").job_id, early);
    assert_eq!(a[0].not_before_unix_ms, due);
    assert!(received_at < due, "sent at {received_at}, due at {due}");
    let running = wait_for_state(&mut c, &early, pb::JobState::Running).await;
    assert_eq!(running.attempt, 1);
    // Its one slot is still free: a job due now goes there at once.
    let now_id = submit_one(&mut c, job("now", "ahead")).await;
    let b = peer.assignments().await;
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].job.as_ref().expect("job").job_id, now_id);
    assert_eq!(b[0].not_before_unix_ms, 0);
    // The execution log says when the ahead run starts.
    let log = job_log(&mut c, &early).await;
    assert!(
        log.iter().any(|l| l.message.contains("ahead of its time")),
        "{log:?}"
    );
    peer.report(
        &early,
        1,
        pb::outcome::Kind::Success(pb::Success::default()),
    )
    .await;
    wait_for_state(&mut c, &early, pb::JobState::Succeeded).await;

    // One without ahead slots gets it only once it is due.
    let mut old = open_work(&t.addr, hello("plain", 1, lts_proto::PROTOCOL_VERSION))
        .await
        .expect("accepted");
    let a = old.assignments().await;
    let received_at = lts_common::now_ms();
    assert_eq!(a[0].job.as_ref().expect("job").job_id, plain);
    assert_eq!(a[0].not_before_unix_ms, 0);
    assert!(received_at >= due, "sent at {received_at}, due at {due}");
    t.stop().await;
}
