//! Bounded property tests of the tracker's gRPC surface under hostile
//! input: job specs with arbitrary fields through the submit path, and
//! arbitrary sequences of worker messages on the WorkService. Each runs in
//! the normal test suite against a tracker served in-process.

mod support;

use lts_proto::v1 as pb;
use pb::worker_message::Kind;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use support::*;

/// A bounded run of `n` cases whose failures are reported, not saved.
fn cases(n: u32) -> Config {
    Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    }
}

/// A runtime for a test whose cases block on it one by one.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn text(max_long: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9_-]{1,12}",
        1 => Just(String::new()),
        2 => "\\PC{0,30}",
        1 => (60usize..max_long).prop_map(|n| "z".repeat(n)),
    ]
}

fn wire_spec() -> impl Strategy<Value = pb::JobSpec> {
    use pb::schedule::Kind as S;
    let schedule = prop_oneof![
        Just(None),
        any::<i64>().prop_map(|at_unix_ms| Some(S::At(pb::At { at_unix_ms }))),
        (
            prop_oneof![
                "\\PC{0,30}",
                Just("0 0 * * *".to_string()),
                Just("0 0 0 1 1 ? 1999".to_string()),
                Just("*/5 * * * * ?".to_string()),
            ],
            prop_oneof![Just(String::new()), "\\PC{0,12}"],
            any::<i32>()
        )
            .prop_map(|(expression, time_zone, misfire)| Some(S::Cron(pb::Cron {
                expression,
                time_zone,
                misfire: misfire.rem_euclid(5),
            }))),
        (any::<u64>(), any::<u32>())
            .prop_map(|(interval_ms, count)| Some(S::Repeat(pb::Repeat { interval_ms, count }))),
    ];
    let plan = proptest::option::of(
        (
            proptest::collection::vec(
                prop_oneof![
                    Just(None),
                    Just(Some(pb::retry_step::Step::Retry(pb::Retry {}))),
                    (any::<u64>(), any::<f64>(), any::<u64>()).prop_map(
                        |(base_ms, factor, max_ms)| {
                            Some(pb::retry_step::Step::Backoff(pb::Backoff {
                                base_ms,
                                factor,
                                max_ms,
                            }))
                        }
                    ),
                ]
                .prop_map(|step| pb::RetryStep { step }),
                0..40,
            ),
            any::<u32>(),
            any::<bool>(),
        )
            .prop_map(|(steps, count, forever)| pb::RetryPlan {
                steps,
                count,
                forever,
            }),
    );
    (
        (text(300), text(100), text(100)),
        (
            proptest::option::of(any::<i32>()),
            proptest::collection::hash_map("\\PC{0,8}", "\\PC{0,8}", 0..4),
        ),
        (schedule, plan, any::<u64>(), any::<[bool; 3]>()),
        proptest::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(
            |(
                (task_id, group, submit_group),
                (priority, params),
                (schedule, retry_plan, timeout_ms, flags),
                payload,
            )| {
                pb::JobSpec {
                    task_id,
                    task_tracker_node_group: group,
                    submit_node_group: submit_group,
                    priority,
                    params,
                    payload,
                    schedule: schedule.map(|kind| pb::Schedule { kind: Some(kind) }),
                    need_feedback: flags[0],
                    replace_on_exist: flags[1],
                    rely_on_prev_cycle: flags[2],
                    retry_plan,
                    timeout_ms: timeout_ms % (8 * 24 * 3600 * 1000),
                }
            },
        )
}

/// Batches of arbitrary specs through `SubmitJobs`: each result is a job
/// id of a job that reads back with its task id, or a refusal naming the
/// job's index and field; the call itself never fails and the tracker
/// keeps serving.
#[test]
fn submitted_specs_with_arbitrary_fields_are_stored_or_refused_naming_the_field() {
    let rt = runtime();
    let t = rt.block_on(TestTracker::start());
    let mut c = rt.block_on(t.jobs());
    let mut runner = TestRunner::new(cases(128));
    let result = runner.run(&proptest::collection::vec(wire_spec(), 1..8), |jobs| {
        let mut c = c.clone();
        rt.block_on(async {
            let sent = jobs.clone();
            let results = c
                .submit_jobs(pb::SubmitJobsRequest { jobs })
                .await
                .map_err(|s| TestCaseError::fail(format!("the call failed: {s:?}")))?
                .into_inner()
                .results;
            prop_assert_eq!(results.len(), sent.len());
            for (i, (r, spec)) in results.iter().zip(&sent).enumerate() {
                match &r.result {
                    Some(pb::submit_result::Result::JobId(id)) => {
                        let job = c
                            .get_job(pb::GetJobRequest {
                                job_id: id.clone(),
                                ..Default::default()
                            })
                            .await
                            .map_err(|s| TestCaseError::fail(format!("{s:?}")))?
                            .into_inner()
                            .job;
                        let stored = job.and_then(|j| j.spec).map(|s| s.task_id);
                        prop_assert_eq!(stored.as_deref(), Some(spec.task_id.as_str()));
                    }
                    Some(pb::submit_result::Result::Error(e)) => {
                        prop_assert!(!e.field.is_empty(), "{:?}", e);
                        prop_assert!(
                            e.message.starts_with(&format!("jobs[{i}].{}", e.field)),
                            "{:?}",
                            e
                        );
                        prop_assert!(
                            ["INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"].contains(&e.code.as_str()),
                            "{:?}",
                            e
                        );
                    }
                    None => prop_assert!(false, "an empty result for jobs[{}]", i),
                }
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(async {
        let id = submit(&mut c, vec![job("after", "g")]).await.remove(0);
        assert!(!id.is_empty());
        t.stop().await;
    });
}

/// A job id a hostile stream names: the victim's, one it was given, a
/// made-up one, an empty one or an oversized one.
#[derive(Clone, Debug)]
enum Target {
    Victim,
    Own,
    Made(String),
    Huge(usize),
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        3 => Just(Target::Victim),
        2 => Just(Target::Own),
        2 => "\\PC{0,20}".prop_map(Target::Made),
        1 => (129usize..300_000).prop_map(Target::Huge),
    ]
}

#[derive(Clone, Debug)]
enum Step {
    Started(Vec<(Target, u32)>, i64),
    Outcomes(Vec<(Target, u32, u8)>, i64, i64),
    BizLogs(Vec<(Target, u32, i32, usize)>, i64),
    Credit(u32, u32),
    Heartbeat(i64),
    Hello(u32),
}

fn attempt() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..4, any::<u32>()]
}

fn step() -> impl Strategy<Value = Step> {
    let ms = || prop_oneof![Just(0i64), any::<i64>(), Just(lts_common::now_ms())];
    prop_oneof![
        (proptest::collection::vec((target(), attempt()), 0..4), ms())
            .prop_map(|(runs, at)| Step::Started(runs, at)),
        (
            proptest::collection::vec((target(), attempt(), 0u8..5), 0..4),
            ms(),
            ms()
        )
            .prop_map(|(r, s, f)| Step::Outcomes(r, s, f)),
        (
            proptest::collection::vec((target(), attempt(), any::<i32>(), 0usize..20_000), 0..4),
            ms()
        )
            .prop_map(|(l, at)| Step::BizLogs(l, at)),
        (any::<u32>(), any::<u32>()).prop_map(|(c, a)| Step::Credit(c, a)),
        ms().prop_map(Step::Heartbeat),
        any::<u32>().prop_map(Step::Hello),
    ]
}

fn job_id_of(t: &Target, victim: &str, own: &[String]) -> String {
    match t {
        Target::Victim => victim.to_string(),
        Target::Own => own.first().cloned().unwrap_or_default(),
        Target::Made(s) => s.clone(),
        Target::Huge(n) => "j".repeat(*n),
    }
}

fn outcome(kind: u8) -> Option<pb::Outcome> {
    use pb::outcome::Kind as O;
    let kind = match kind {
        0 => return None,
        1 => O::Success(pb::Success {
            message: "forged".into(),
        }),
        2 => O::Failed(pb::Failed {
            message: "forged".into(),
        }),
        3 => O::Later(pb::Later {
            delay_ms: 0,
            message: "forged".into(),
        }),
        _ => O::Error(pb::Error {
            message: "forged".into(),
        }),
    };
    Some(pb::Outcome { kind: Some(kind) })
}

fn message(s: &Step, victim: &str, own: &[String]) -> pb::WorkerMessage {
    let id = |t: &Target| job_id_of(t, victim, own);
    let kind = match s {
        Step::Started(runs, at) => Kind::Started(pb::Started {
            runs: runs
                .iter()
                .map(|(t, attempt)| pb::RunRef {
                    job_id: id(t),
                    attempt: *attempt,
                })
                .collect(),
            at_unix_ms: *at,
        }),
        Step::Outcomes(reports, started, finished) => Kind::Outcomes(pb::Outcomes {
            reports: reports
                .iter()
                .map(|(t, attempt, o)| pb::OutcomeReport {
                    job_id: id(t),
                    attempt: *attempt,
                    outcome: outcome(*o),
                    started_at_unix_ms: *started,
                    finished_at_unix_ms: *finished,
                })
                .collect(),
        }),
        Step::BizLogs(lines, at) => Kind::BizLogs(pb::BizLogs {
            lines: lines
                .iter()
                .map(|(t, attempt, level, len)| pb::BizLog {
                    job_id: id(t),
                    attempt: *attempt,
                    level: *level,
                    message: "m".repeat(*len),
                    at_unix_ms: *at,
                })
                .collect(),
        }),
        Step::Credit(credits, ahead_credits) => Kind::Credit(pb::Credit {
            credits: *credits,
            ahead_credits: *ahead_credits,
        }),
        Step::Heartbeat(at) => Kind::Heartbeat(pb::Heartbeat { at_unix_ms: *at }),
        Step::Hello(slots) => return hello("again", "g", *slots),
    };
    pb::WorkerMessage { kind: Some(kind) }
}

/// What a user sees of a job: its record and its execution log.
async fn observe(
    c: &mut pb::job_service_client::JobServiceClient<tonic::transport::Channel>,
    id: &str,
) -> (pb::Job, usize) {
    let job = c
        .get_job(pb::GetJobRequest {
            job_id: id.into(),
            ..Default::default()
        })
        .await
        .expect("get job")
        .into_inner()
        .job
        .expect("the job exists");
    let lines = c
        .get_job_log(pb::GetJobLogRequest {
            job_id: id.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("job log")
        .into_inner()
        .entries
        .len();
    (job, lines)
}

/// Arbitrary sequences of worker messages from TaskTrackers of the same
/// node group (arbitrary ids, attempts, times, lengths, credit and
/// slots) never end the tracker, never change the run a well-behaved
/// TaskTracker holds nor its log, and that TaskTracker still finishes it
/// afterwards, while a new job is served as usual.
#[test]
fn arbitrary_worker_messages_change_no_run_the_stream_was_not_given() {
    let rt = runtime();
    let t = rt.block_on(TestTracker::start());
    let (mut c, good, victim, attempt) = rt.block_on(async {
        let mut c = t.jobs().await;
        let id = submit(&mut c, vec![job("victim", "g")]).await.remove(0);
        let mut good = open_work(&t.addr, hello("good", "g", 1))
            .await
            .expect("work");
        let a = good.assignments().await.remove(0);
        (c, good, id, a.attempt)
    });
    let before = rt.block_on(observe(&mut c, &victim));
    let good = rt.block_on(async {
        // Answers heartbeats so the well-behaved TaskTracker stays.
        let tx = good.tx.clone();
        (
            tx,
            tokio::spawn(async move {
                let mut good = good;
                while let Ok(Some(m)) = good.rx.message().await {
                    if let Some(pb::tracker_message::Kind::Heartbeat(_)) = m.kind {
                        let beat = pb::Heartbeat {
                            at_unix_ms: lts_common::now_ms(),
                        };
                        if good
                            .tx
                            .send(pb::WorkerMessage {
                                kind: Some(Kind::Heartbeat(beat)),
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }),
        )
    });
    let mut runner = TestRunner::new(cases(128));
    let cases = std::sync::atomic::AtomicU32::new(0);
    let strategy = (
        0u32..4,
        proptest::collection::vec(step(), 0..24),
        any::<bool>(),
        proptest::sample::select(vec!["g", "h"]),
    );
    let result = runner.run(&strategy, |(slots, steps, own_job, group)| {
        let case = cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        rt.block_on(async {
            let mut c = t.jobs().await;
            let (_, lines_before) = observe(&mut c, &victim).await;
            let mut own = Vec::new();
            if own_job {
                own = submit(&mut c, vec![job(&format!("own-{case}"), "h")]).await;
            }
            let opened = open_work(&t.addr, hello(&format!("hostile-{case}"), group, slots)).await;
            let Ok(mut peer) = opened else {
                // A refused hello (say slots 0) is an answer too.
                return Ok(());
            };
            for s in &steps {
                if peer.tx.send(message(s, &victim, &own)).await.is_err() {
                    break;
                }
            }
            drop(peer.tx);
            // The tracker answers until it has handled the messages and
            // then ends the stream (or ended it early, refusing one).
            let end = tokio::time::timeout(WAIT, async {
                while let Ok(Some(_)) = peer.rx.message().await {}
            })
            .await;
            prop_assert!(end.is_ok(), "the stream did not end within the wait");
            let (job, lines) = observe(&mut c, &victim).await;
            prop_assert_eq!(&job, &before.0, "the victim's run changed");
            // A stream of the victim's own node group may leave lines about
            // attempts the job never had (refused as stale) in its log; one
            // of another group leaves none.
            if group != "g" {
                prop_assert_eq!(lines, lines_before, "lines in the victim's log");
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(async {
        // The well-behaved TaskTracker finishes its run as if nothing
        // happened, and a new job of its group goes to it.
        let (tx, reader) = good;
        let now = lts_common::now_ms();
        tx.send(pb::WorkerMessage {
            kind: Some(Kind::Outcomes(pb::Outcomes {
                reports: vec![pb::OutcomeReport {
                    job_id: victim.clone(),
                    attempt,
                    outcome: outcome(1),
                    started_at_unix_ms: now,
                    finished_at_unix_ms: now,
                }],
            })),
        })
        .await
        .expect("send");
        eventually("the victim's run to succeed", || {
            let mut c = c.clone();
            let id = victim.clone();
            async move {
                let job = c
                    .get_job(pb::GetJobRequest {
                        job_id: id,
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .job?;
                (job.state == pb::JobState::Succeeded as i32).then_some(())
            }
        })
        .await;
        reader.abort();
        let mut worker = open_work(&t.addr, hello("after", "g", 1))
            .await
            .expect("work");
        let id = submit(&mut c, vec![job("after", "g")]).await.remove(0);
        let a = worker.assignments().await.remove(0);
        assert_eq!(a.job.map(|j| j.job_id), Some(id));
        t.stop().await;
    });
}
