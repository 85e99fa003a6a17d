//! A TaskTracker that goes silent: it gets no new work while another of
//! its group is heard, and runs it had before its stream was lost are
//! cancelled when it comes back, so no job runs on under two attempts.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use lts_proto::v1 as pb;
use support::*;
use tokio::sync::mpsc;

/// A tracker whose heartbeat interval is `interval`.
async fn tracker_with_interval(interval: Duration) -> TestTracker {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(dir.path());
    config.heartbeat_interval = interval;
    let tracker = lts_jobtracker::create_tracker(config)
        .await
        .expect("create tracker");
    let mut t = TestTracker::serve(tracker).await;
    t.dir = Some(dir);
    t
}

/// Keeps `peer` heard (a heartbeat every 100 ms, as a live TaskTracker
/// does at its interval) and forwards every assignment it receives.
fn keep_alive(mut peer: Peer) -> mpsc::UnboundedReceiver<pb::Assignment> {
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

/// Waits for the quiet TaskTrackers of `group` to be exactly `expected`.
async fn quiet_ones_are(tracker: &lts_jobtracker::Tracker, group: &str, expected: &[&str]) {
    eventually("the quiet TaskTrackers to be as expected", || async {
        (tracker.dispatcher.quiet_task_trackers(group) == expected).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_submitted_while_a_task_tracker_is_silent_all_go_to_the_one_that_is_heard() {
    const JOBS: usize = 6;
    // Long enough that the silent TaskTracker is quiet well before it is
    // given up (three intervals), so the jobs below meet it still
    // connected.
    let interval = Duration::from_secs(3);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(dir.path());
    config.heartbeat_interval = interval;
    let tracker = lts_jobtracker::create_tracker(config)
        .await
        .expect("create tracker");
    let t = TestTracker::serve(tracker.clone()).await;

    // The silent one keeps its stream open but sends and reads nothing.
    let _silent = open_work(&t.addr, hello("silent", "g", JOBS as u32))
        .await
        .expect("work stream");
    let heard = open_work(&t.addr, hello("heard", "g", JOBS as u32))
        .await
        .expect("work stream");
    let mut assigned = keep_alive(heard);
    quiet_ones_are(&tracker, "g", &["silent"]).await;

    let mut c = t.jobs().await;
    let specs = (0..JOBS).map(|i| job(&format!("j{i}"), "g")).collect();
    let ids: BTreeSet<String> = submit(&mut c, specs).await.into_iter().collect();

    let mut got = BTreeSet::new();
    while got.len() < JOBS {
        let a = tokio::time::timeout(WAIT, assigned.recv())
            .await
            .expect("an assignment within the wait")
            .expect("the heard TaskTracker's stream is open");
        let job = a.job.expect("assignment carries its job");
        // Attempt 1: the job was handed out once, straight to the heard
        // TaskTracker, not first to the silent one and put back when it
        // was given up.
        assert_eq!(a.attempt, 1, "job {} went elsewhere first", job.job_id);
        got.insert(job.job_id);
    }
    assert_eq!(got, ids);
    // The silent TaskTracker was still connected (only quiet) the whole
    // time: it was passed over, not given up.
    assert_eq!(
        tracker.dispatcher.quiet_task_trackers("g"),
        vec!["silent".to_string()]
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_task_tracker_is_quiet_they_still_get_work() {
    let interval = Duration::from_millis(200);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(dir.path());
    config.heartbeat_interval = interval;
    let tracker = lts_jobtracker::create_tracker(config)
        .await
        .expect("create tracker");
    let t = TestTracker::serve(tracker.clone()).await;
    let mut only = open_work(&t.addr, hello("only", "g", 1))
        .await
        .expect("work stream");
    quiet_ones_are(&tracker, "g", &["only"]).await;
    let mut c = t.jobs().await;
    let id = submit(&mut c, vec![job("j", "g")]).await.remove(0);
    // Reading answers the tracker's heartbeats, so it stays connected.
    let sent = only.assignments().await;
    assert_eq!(sent[0].job.as_ref().map(|j| j.job_id.clone()), Some(id));
    t.stop().await;
}

/// The next `CancelRun` on `peer`'s stream, skipping everything else;
/// fails after [`WAIT`] (heartbeats alone keep coming meanwhile).
async fn next_cancel(peer: &mut Peer) -> pb::CancelRun {
    let wait = async {
        loop {
            match peer.next().await.expect("stream ok") {
                pb::tracker_message::Kind::Cancel(c) => return c,
                _ => continue,
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("a CancelRun within the wait")
}

/// Gives a job to `first`, lets `first` go silent until it is given up,
/// and returns the job id and the attempt `first` had, once `second` got
/// the job again.
async fn superseded_run(t: &TestTracker) -> (String, u32) {
    let mut first = open_work(&t.addr, hello("first", "g", 1))
        .await
        .expect("work stream");
    let mut c = t.jobs().await;
    let id = submit(&mut c, vec![job("j", "g")]).await.remove(0);
    let old = first.assignments().await.remove(0);
    assert_eq!(old.job.as_ref().map(|j| j.job_id.clone()), Some(id.clone()));
    // `first` now reads and sends nothing: frozen.
    let second = open_work(&t.addr, hello("second", "g", 1))
        .await
        .expect("work stream");
    let mut assigned = keep_alive(second);
    let again = tokio::time::timeout(WAIT, assigned.recv())
        .await
        .expect("the job is given out again within the wait")
        .expect("the second TaskTracker's stream is open");
    assert_eq!(
        again.job.as_ref().map(|j| j.job_id.clone()),
        Some(id.clone())
    );
    assert!(again.attempt > old.attempt);
    drop(first);
    (id, old.attempt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_tracker_that_comes_back_is_told_to_cancel_the_runs_it_lost() {
    let t = tracker_with_interval(Duration::from_millis(300)).await;
    let (id, attempt) = superseded_run(&t).await;

    let mut back = open_work(&t.addr, hello("first", "g", 1))
        .await
        .expect("work stream");
    let cancel = next_cancel(&mut back).await;
    assert_eq!((cancel.job_id, cancel.attempt), (id, attempt));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_reported_for_a_superseded_attempt_is_answered_with_a_cancel() {
    let t = tracker_with_interval(Duration::from_millis(300)).await;
    let (id, attempt) = superseded_run(&t).await;

    let mut back = open_work(&t.addr, hello("first", "g", 1))
        .await
        .expect("work stream");
    // The cancel for the run its lost stream had comes first.
    let cancel = next_cancel(&mut back).await;
    assert_eq!(
        (cancel.job_id.clone(), cancel.attempt),
        (id.clone(), attempt)
    );
    // It had missed that and starts the old attempt: told again.
    back.send(pb::worker_message::Kind::Started(pb::Started {
        runs: vec![pb::RunRef {
            job_id: id.clone(),
            attempt,
        }],
        at_unix_ms: lts_common::now_ms(),
    }))
    .await;
    let cancel = next_cancel(&mut back).await;
    assert_eq!((cancel.job_id, cancel.attempt), (id, attempt));
    assert!(
        cancel.reason.contains("superseded"),
        "the reason says why: {}",
        cancel.reason
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_reported_for_the_current_attempt_is_not_cancelled() {
    let t = tracker_with_interval(Duration::from_millis(300)).await;
    let mut w = open_work(&t.addr, hello("w", "g", 1))
        .await
        .expect("work stream");
    let mut c = t.jobs().await;
    let id = submit(&mut c, vec![job("j", "g")]).await.remove(0);
    let a = w.assignments().await.remove(0);
    w.send(pb::worker_message::Kind::Started(pb::Started {
        runs: vec![pb::RunRef {
            job_id: id.clone(),
            attempt: a.attempt,
        }],
        at_unix_ms: lts_common::now_ms(),
    }))
    .await;
    w.succeed(&[(id.clone(), a.attempt)]).await;
    // The acknowledgement of the outcome comes after anything the start
    // caused; no cancel came before it.
    let acked = async {
        loop {
            match w.next().await.expect("stream ok") {
                pb::tracker_message::Kind::OutcomeAcks(_) => break,
                pb::tracker_message::Kind::Cancel(c) => {
                    panic!("a current run was cancelled: {c:?}")
                }
                _ => continue,
            }
        }
    };
    tokio::time::timeout(WAIT, acked)
        .await
        .expect("the outcome is acknowledged within the wait");
    t.stop().await;
}
