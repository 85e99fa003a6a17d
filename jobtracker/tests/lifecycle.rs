//! Shutdown and slow peers: a stopped JobTracker has ended every task and
//! released its store, and a client that does not read its feedback costs
//! the tracker a bounded amount of memory and loses nothing.

mod support;

use std::sync::Arc;

use lts_proto::v1 as pb;
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Opens a feedback stream for `group`; the caller decides whether to read.
async fn subscribe(
    addr: &str,
    group: &str,
) -> (
    mpsc::Sender<pb::FeedbackClientMessage>,
    tonic::Streaming<pb::FeedbackServerMessage>,
) {
    let mut c = pb::job_service_client::JobServiceClient::connect(addr.to_string())
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(16);
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
    let stream = c
        .feedback(ReceiverStream::new(rx))
        .await
        .expect("feedback stream")
        .into_inner();
    (tx, stream)
}

async fn subscribed(tracker: &lts_jobtracker::Tracker, group: &str, yes: bool) {
    eventually("the subscription to change", || async {
        (tracker
            .feedback
            .subscribed_groups()
            .iter()
            .any(|g| g == group)
            == yes)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracker_restarted_twenty_times_on_one_directory_serves_each_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    for round in 0..20 {
        let tracker = lts_jobtracker::create_tracker(test_config(dir.path()))
            .await
            .unwrap_or_else(|e| panic!("start {round}: {e}"));
        let store = Arc::downgrade(&tracker.store);
        let t = TestTracker::serve(tracker.clone()).await;
        // Streams of both kinds are open when the stop comes.
        // A group per round: the job of the round before, never finished,
        // is pending again in its own group.
        let group = format!("g{round}");
        let mut peer = open_work(&t.addr, hello("w", &group, 4))
            .await
            .expect("work stream");
        let (_fb_tx, _fb_rx) = subscribe(&t.addr, "clients").await;
        subscribed(&tracker, "clients", true).await;
        drop(tracker);

        let mut c = t.jobs().await;
        let mut spec = job(&format!("round-{round}"), &group);
        spec.need_feedback = true;
        spec.submit_node_group = "clients".into();
        let id = submit(&mut c, vec![spec]).await.remove(0);
        let sent = peer.assignments().await;
        assert_eq!(
            sent[0].job.as_ref().map(|j| j.job_id.clone()),
            Some(id.clone()),
            "round {round}"
        );
        // Its outcome comes in as the stop begins: the tracker is still
        // storing it, syncing it and routing its feedback.
        peer.succeed(&[(id, sent[0].attempt)]).await;

        t.stop().await;
        assert_eq!(
            store.strong_count(),
            0,
            "round {round}: the store is released when serve returns"
        );
    }
}

#[tokio::test]
async fn a_client_that_does_not_read_its_feedback_is_dropped_and_gets_it_all_on_reconnect() {
    const JOBS: usize = 1500;
    const BATCH: usize = 25;
    let dir = tempfile::tempdir().expect("temp dir");
    let tracker = lts_jobtracker::create_tracker(test_config(dir.path()))
        .await
        .expect("create tracker");
    let t = TestTracker::serve(tracker.clone()).await;

    let (_idle_tx, mut idle_rx) = subscribe(&t.addr, "clients").await;
    subscribed(&tracker, "clients", true).await;

    let mut c = t.jobs().await;
    let specs: Vec<pb::JobSpec> = (0..JOBS)
        .map(|i| {
            let mut spec = job(&format!("fb-{i}"), "g");
            spec.need_feedback = true;
            spec.submit_node_group = "clients".into();
            spec
        })
        .collect();
    let mut ids = submit(&mut c, specs).await;
    ids.sort();

    // A worker runs them all; each outcome carries a long message, so the
    // feedback adds up to megabytes.
    let mut peer = open_work(&t.addr, hello("w", "g", BATCH as u32))
        .await
        .expect("work stream");
    let long = "x".repeat(8000);
    let mut done = 0;
    while done < JOBS {
        let mut batch = Vec::new();
        while batch.len() < BATCH {
            batch.extend(
                peer.assignments()
                    .await
                    .into_iter()
                    .map(|a| (a.job.expect("job").job_id, a.attempt)),
            );
        }
        let now = lts_common::now_ms();
        peer.send(pb::worker_message::Kind::Outcomes(pb::Outcomes {
            reports: batch
                .iter()
                .map(|(job_id, attempt)| pb::OutcomeReport {
                    job_id: job_id.clone(),
                    attempt: *attempt,
                    outcome: Some(pb::Outcome {
                        kind: Some(pb::outcome::Kind::Success(pb::Success {
                            message: long.clone(),
                        })),
                    }),
                    started_at_unix_ms: now,
                    finished_at_unix_ms: now,
                })
                .collect(),
        }))
        .await;
        peer.send(pb::worker_message::Kind::Credit(pb::Credit {
            credits: batch.len() as u32,
            ahead_credits: 0,
        }))
        .await;
        done += batch.len();
    }

    // The idle client is dropped from its stream, and counted.
    subscribed(&tracker, "clients", false).await;
    let dropped = tracker
        .metrics
        .outbound_dropped
        .with_label_values(&["feedback", "peer_not_reading"])
        .get();
    assert_eq!(dropped, 1);
    // Its stream ends with a status that says why, after what it held.
    let status = loop {
        match idle_rx.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert!(status.message().contains("did not read"), "{status}");
    // Nothing was lost: every item waits for the next subscriber.
    assert_eq!(tracker.feedback.unacked(), JOBS);

    // Reconnected, the client gets every job's feedback and acks it.
    let (ack_tx, mut rx) = subscribe(&t.addr, "clients").await;
    let mut got = std::collections::BTreeSet::new();
    while got.len() < JOBS {
        let m = tokio::time::timeout(WAIT, rx.message())
            .await
            .expect("feedback within the wait")
            .expect("stream ok")
            .expect("stream open");
        let acks: Vec<String> = m.items.iter().map(|i| i.feedback_id.clone()).collect();
        got.extend(m.items.into_iter().map(|i| i.job_id));
        ack_tx
            .send(pb::FeedbackClientMessage {
                kind: Some(pb::feedback_client_message::Kind::Ack(pb::FeedbackAck {
                    feedback_ids: acks,
                })),
            })
            .await
            .expect("ack");
    }
    assert_eq!(got.into_iter().collect::<Vec<_>>(), ids);
    eventually("every ack is applied", || async {
        (tracker.feedback.unacked() == 0).then_some(())
    })
    .await;
    drop(tracker);
    t.stop().await;
}

#[tokio::test]
async fn a_tracker_over_mongodb_runs_a_job_and_stops_with_every_task_ended() {
    let Some(uri) = support::mongo_uri("the tracker over MongoDB") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(dir.path());
    config.store = lts_jobtracker::StoreConfig::Mongo {
        uri: lts_jobtracker::store::mongo::MongoUri(uri),
        database: format!("lts_lifecycle_{}", lts_jobtracker::store::new_job_id()),
        log_retention: std::time::Duration::from_secs(3600),
        lease: std::time::Duration::from_secs(3),
        instance: "lifecycle".into(),
    };
    let tracker = lts_jobtracker::create_tracker(config)
        .await
        .expect("create tracker");
    let store = Arc::downgrade(&tracker.store);
    let mut leading = tracker.leader_work.subscribe();
    let t = TestTracker::serve(tracker).await;
    // The once-only work (cycles, the sweep of expired leases) runs: a
    // lone tracker leads.
    leading
        .wait_for(|term| *term == Some(1))
        .await
        .expect("watch");

    let mut c = t.jobs().await;
    let id = submit(&mut c, vec![job("over-mongo", "g")]).await.remove(0);
    let mut peer = open_work(&t.addr, hello("w", "g", 1))
        .await
        .expect("work stream");
    let a = peer.assignments().await.remove(0);
    assert_eq!(a.job.map(|j| j.job_id), Some(id.clone()));
    peer.succeed(&[(id.clone(), a.attempt)]).await;
    eventually("the job succeeded", || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            let job = c
                .get_job(pb::GetJobRequest {
                    job_id: id,
                    ..Default::default()
                })
                .await
                .expect("get")
                .into_inner()
                .job?;
            (job.state == pb::JobState::Succeeded as i32).then_some(())
        }
    })
    .await;

    t.stop().await;
    assert_eq!(*leading.borrow(), None, "the once-only work ended");
    assert_eq!(store.strong_count(), 0, "the store is released");
}
