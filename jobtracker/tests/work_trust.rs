//! A TaskTracker stream may act only on the runs it was given: reports
//! about other runs are refused, a second stream under a connected
//! identity is refused, credit beyond the declared slots is not kept, and
//! oversized ids are refused before anything is stored.

mod support;

use std::sync::Arc;
use std::time::Duration;

use lts_proto::v1 as pb;
use pb::work_service_client::WorkServiceClient;
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A tracker served in-process, with its state at hand.
async fn tracker() -> (TestTracker, Arc<lts_jobtracker::Tracker>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let tracker = lts_jobtracker::create_tracker(test_config(dir.path()))
        .await
        .expect("create tracker");
    let mut t = TestTracker::serve(tracker.clone()).await;
    t.dir = Some(dir);
    (t, tracker)
}

/// Sends `kind` and waits until the tracker has handled it: an outcome
/// report for a job that does not exist follows it, and its
/// acknowledgement comes after both were handled (a stream's messages are
/// handled in order).
async fn send_and_settle(peer: &mut Peer, kind: pb::worker_message::Kind) {
    peer.send(kind).await;
    let marker = "settle-marker";
    peer.report(
        marker,
        1,
        pb::outcome::Kind::Success(pb::Success {
            message: String::new(),
        }),
    )
    .await;
    loop {
        if let pb::tracker_message::Kind::OutcomeAcks(a) = peer.next().await.expect("stream ok") {
            if a.runs.iter().any(|r| r.job_id == marker) {
                return;
            }
        }
    }
}

/// A TaskTracker "victim" of group g running the job just submitted:
/// its stream, a client, the job's id and the run's assignment.
async fn a_run_on_the_victim(
    t: &TestTracker,
) -> (
    Peer,
    pb::job_service_client::JobServiceClient<tonic::transport::Channel>,
    String,
    pb::Assignment,
) {
    let mut victim = open_work(&t.addr, hello("victim", "g", 1))
        .await
        .expect("work stream");
    let mut c = t.jobs().await;
    let id = submit(&mut c, vec![job("j", "g")]).await.remove(0);
    let a = victim.assignments().await.remove(0);
    (victim, c, id, a)
}

async fn get_job(t: &TestTracker, job_id: &str) -> pb::Job {
    t.jobs()
        .await
        .get_job(pb::GetJobRequest {
            job_id: job_id.into(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .job
        .expect("job")
}

fn failed(message: &str) -> pb::outcome::Kind {
    pb::outcome::Kind::Failed(pb::Failed {
        message: message.into(),
    })
}

fn refused(tracker: &lts_jobtracker::Tracker, message: &str) -> u64 {
    tracker
        .metrics
        .refused_runs
        .with_label_values(&[message])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_outcome_for_another_streams_run_is_refused() {
    let (t, tracker) = tracker().await;
    let (victim, _, id, a) = a_run_on_the_victim(&t).await;

    // Streams of another node group and of the same one report the run
    // as failed.
    let mut other_group = open_work(&t.addr, hello("intruder", "h", 1))
        .await
        .expect("work stream");
    let mut same_group = open_work(&t.addr, hello("neighbour", "g", 1))
        .await
        .expect("work stream");
    for peer in [&mut other_group, &mut same_group] {
        let forged = pb::worker_message::Kind::Outcomes(pb::Outcomes {
            reports: vec![pb::OutcomeReport {
                job_id: id.clone(),
                attempt: a.attempt,
                outcome: Some(pb::Outcome {
                    kind: Some(failed("forged")),
                }),
                started_at_unix_ms: lts_common::now_ms(),
                finished_at_unix_ms: lts_common::now_ms(),
            }],
        });
        send_and_settle(peer, forged).await;
    }
    let job = get_job(&t, &id).await;
    assert_eq!(job.state, pb::JobState::Running as i32, "{job:?}");
    // The two forged reports, and the two markers (of no job).
    assert_eq!(refused(&tracker, "outcome"), 4);

    // The real run's outcome is applied.
    victim.succeed(&[(id.clone(), a.attempt)]).await;
    eventually("the real outcome applied", || async {
        (get_job(&t, &id).await.state == pb::JobState::Succeeded as i32).then_some(())
    })
    .await;
    drop((victim, other_group, same_group));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_log_lines_and_starts_for_another_streams_run_are_not_written() {
    let (t, tracker) = tracker().await;
    let (mut victim, mut c, id, a) = a_run_on_the_victim(&t).await;

    let mut intruder = open_work(&t.addr, hello("intruder", "g", 1))
        .await
        .expect("work stream");
    let line = |message: &str| pb::BizLog {
        job_id: id.clone(),
        attempt: a.attempt,
        level: pb::LogLevel::Info as i32,
        message: message.into(),
        at_unix_ms: lts_common::now_ms(),
    };
    intruder
        .send(pb::worker_message::Kind::Started(pb::Started {
            runs: vec![pb::RunRef {
                job_id: id.clone(),
                attempt: a.attempt,
            }],
            at_unix_ms: lts_common::now_ms(),
        }))
        .await;
    send_and_settle(
        &mut intruder,
        pb::worker_message::Kind::BizLogs(pb::BizLogs {
            lines: vec![line("FORGED line")],
        }),
    )
    .await;
    send_and_settle(
        &mut victim,
        pb::worker_message::Kind::BizLogs(pb::BizLogs {
            lines: vec![line("real line")],
        }),
    )
    .await;
    let log = c
        .get_job_log(pb::GetJobLogRequest {
            job_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("log")
        .into_inner()
        .entries;
    assert!(log.iter().any(|e| e.message == "real line"), "{log:?}");
    assert!(!log.iter().any(|e| e.message.contains("FORGED")), "{log:?}");
    assert!(
        !log.iter().any(|e| e.worker == "intruder"),
        "nothing of the intruder in the job's log: {log:?}"
    );
    assert_eq!(refused(&tracker, "biz_log"), 1);
    assert_eq!(refused(&tracker, "started"), 1);
    drop((victim, intruder));
    t.stop().await;
}

/// Reads `peer` in the background, answering heartbeats, and counts the
/// runs it was assigned.
fn keep_reading(mut peer: Peer) -> mpsc::UnboundedReceiver<pb::Assignment> {
    let (out, assigned) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                m = peer.rx.message() => match m {
                    Ok(Some(pb::TrackerMessage { kind: Some(pb::tracker_message::Kind::Assignments(a)) })) => {
                        for a in a.assignments {
                            if out.send(a).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return,
                },
                _ = beat.tick() => {
                    let beat = pb::Heartbeat { at_unix_ms: lts_common::now_ms() };
                    if peer.tx.send(pb::WorkerMessage {
                        kind: Some(pb::worker_message::Kind::Heartbeat(beat)),
                    }).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    assigned
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_beyond_the_declared_slots_brings_no_more_work() {
    const JOBS: usize = 5;
    let (t, tracker) = tracker().await;
    let mut greedy = open_work(&t.addr, hello("greedy", "g", 1))
        .await
        .expect("work stream");
    send_and_settle(
        &mut greedy,
        pb::worker_message::Kind::Credit(pb::Credit {
            credits: 100_000,
            ahead_credits: 100_000,
        }),
    )
    .await;
    assert_eq!(
        tracker.metrics.limited.with_label_values(&["credit"]).get(),
        1
    );
    let mut greedy_got = keep_reading(greedy);
    let mut c = t.jobs().await;
    let specs = (0..JOBS).map(|i| job(&format!("j{i}"), "g")).collect();
    submit(&mut c, specs).await;
    let first = tokio::time::timeout(WAIT, greedy_got.recv())
        .await
        .expect("an assignment within the wait")
        .expect("open");
    assert!(first.job.is_some());

    // A TaskTracker with room takes the rest.
    let modest = open_work(&t.addr, hello("modest", "g", JOBS as u32))
        .await
        .expect("work stream");
    let mut modest_got = keep_reading(modest);
    for _ in 1..JOBS {
        tokio::time::timeout(WAIT, modest_got.recv())
            .await
            .expect("an assignment within the wait")
            .expect("open");
    }
    // Every job runs, one of them on the greedy TaskTracker.
    let running = c
        .list_jobs(pb::ListJobsRequest {
            state: pb::JobState::Running as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .jobs;
    assert_eq!(running.len(), JOBS);
    let on_greedy = running.iter().filter(|j| j.worker == "greedy").count();
    assert_eq!(on_greedy, 1, "{running:?}");
    assert!(greedy_got.try_recv().is_err(), "no second run was sent");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stream_under_a_connected_identity_is_refused_until_the_first_goes_silent() {
    let (t, tracker) = tracker().await;
    let first = open_work(&t.addr, hello("tt-1", "g", 1))
        .await
        .expect("work stream");
    let _reading = keep_reading(first);
    for group in ["g", "h"] {
        let status = open_work(&t.addr, hello("tt-1", group, 1))
            .await
            .err()
            .expect("refused");
        assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
        assert!(status.message().contains("tt-1"), "{status:?}");
    }

    // A stream that went silent (its connection half dead) does not lock
    // its TaskTracker out: the new stream replaces it.
    let _silent = open_work(&t.addr, hello("tt-2", "k", 1))
        .await
        .expect("work stream");
    eventually("tt-2 to be quiet", || async {
        tracker
            .dispatcher
            .quiet_task_trackers("k")
            .contains(&"tt-2".to_string())
            .then_some(())
    })
    .await;
    let mut back = open_work(&t.addr, hello("tt-2", "k", 1))
        .await
        .expect("the reconnect is taken");
    let mut c = t.jobs().await;
    let id = submit(&mut c, vec![job("after", "k")]).await.remove(0);
    let got = back.assignments().await.remove(0);
    assert_eq!(got.job.map(|j| j.job_id), Some(id));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mib_job_id_in_biz_logs_is_refused_naming_the_field_and_never_stored() {
    let (t, tracker) = tracker().await;
    let mut client = WorkServiceClient::connect(t.addr.clone())
        .await
        .expect("connect")
        .max_encoding_message_size(lts_common::limits::MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello("big", "g", 1)).await.expect("queue");
    let mut inbound = client
        .work(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let huge = "x".repeat(50 * 1024 * 1024);
    tx.send(pb::WorkerMessage {
        kind: Some(pb::worker_message::Kind::BizLogs(pb::BizLogs {
            lines: vec![pb::BizLog {
                job_id: huge,
                attempt: 1,
                level: pb::LogLevel::Info as i32,
                message: "hello".into(),
                at_unix_ms: lts_common::now_ms(),
            }],
        })),
    })
    .await
    .expect("send");
    let status = loop {
        match tokio::time::timeout(WAIT, inbound.message())
            .await
            .expect("the stream ends within the wait")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("biz_logs.lines[0].job_id") && status.message().contains("128"),
        "{}",
        status.message()
    );
    let filter = lts_jobtracker::store::LogFilter::default();
    let (lines, _) = tracker
        .store
        .query_logs(&filter, 1000, None)
        .await
        .expect("logs");
    assert!(
        lines.iter().all(|l| l.job_id.len() <= 128),
        "a long job id was stored"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_of_attempts_a_job_never_had_write_at_most_a_bounded_number_of_log_lines() {
    let (t, tracker) = tracker().await;
    let (victim, mut c, id, a) = a_run_on_the_victim(&t).await;

    // A stream of the same node group reports 150 attempts the job never
    // had.
    let mut spammer = open_work(&t.addr, hello("spammer", "g", 1))
        .await
        .expect("work stream");
    let reports = (a.attempt + 1..=a.attempt + 150)
        .map(|attempt| pb::OutcomeReport {
            job_id: id.clone(),
            attempt,
            outcome: Some(pb::Outcome {
                kind: Some(failed("forged")),
            }),
            started_at_unix_ms: lts_common::now_ms(),
            finished_at_unix_ms: lts_common::now_ms(),
        })
        .collect();
    send_and_settle(
        &mut spammer,
        pb::worker_message::Kind::Outcomes(pb::Outcomes { reports }),
    )
    .await;
    let log = c
        .get_job_log(pb::GetJobLogRequest {
            job_id: id.clone(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("log")
        .into_inner()
        .entries;
    let stale = log
        .iter()
        .filter(|e| e.kind == pb::LogKind::StaleOutcome as i32)
        .count();
    assert_eq!(
        stale,
        lts_jobtracker::service::work::MAX_NEVER_RUN_OUTCOMES_PER_STREAM as usize,
        "{log:?}"
    );
    // The 50 beyond, and the marker (of no job).
    assert_eq!(refused(&tracker, "outcome"), 51);
    let job = get_job(&t, &id).await;
    assert_eq!(job.state, pb::JobState::Running as i32, "{job:?}");
    assert_eq!(job.attempt, a.attempt, "{job:?}");
    drop((victim, spammer));
    t.stop().await;
}
