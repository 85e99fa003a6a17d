//! Values a TaskTracker sends are checked where they enter the tracker.

mod support;

use lts_proto::v1 as pb;
use support::*;

async fn last_outcome(t: &TestTracker, job_id: &str) -> Option<pb::outcome::Kind> {
    let mut c = t.jobs().await;
    c.get_job(pb::GetJobRequest {
        job_id: job_id.into(),
        ..Default::default()
    })
    .await
    .expect("get")
    .into_inner()
    .job
    .and_then(|j| j.last_outcome)
    .and_then(|o| o.kind)
}

#[tokio::test]
async fn outcome_reports_with_absurd_times_are_refused_naming_the_field() {
    let t = TestTracker::start().await;
    let mut c = t.jobs().await;
    let ids = submit(&mut c, vec![job("min", "g"), job("backwards", "g")]).await;
    let mut peer = open_work(&t.addr, hello("w", "g", 2))
        .await
        .expect("work stream");
    let mut sent = Vec::new();
    while sent.len() < 2 {
        sent.extend(peer.assignments().await);
    }
    let attempt_of = |id: &str| {
        sent.iter()
            .find(|a| a.job.as_ref().is_some_and(|j| j.job_id == id))
            .map(|a| a.attempt)
            .expect("assigned")
    };
    let now = lts_common::now_ms();
    let report = |job_id: &str, started: i64, finished: i64| pb::OutcomeReport {
        job_id: job_id.into(),
        attempt: attempt_of(job_id),
        outcome: Some(pb::Outcome {
            kind: Some(pb::outcome::Kind::Success(pb::Success {
                message: "done".into(),
            })),
        }),
        started_at_unix_ms: started,
        finished_at_unix_ms: finished,
    };
    peer.send(pb::worker_message::Kind::Started(pb::Started {
        runs: vec![pb::RunRef {
            job_id: ids[0].clone(),
            attempt: attempt_of(&ids[0]),
        }],
        at_unix_ms: i64::MIN,
    }))
    .await;
    peer.send(pb::worker_message::Kind::Outcomes(pb::Outcomes {
        reports: vec![
            report(&ids[0], i64::MIN, now),
            report(&ids[1], now, now - 3_600_000),
        ],
    }))
    .await;

    // The reports are acknowledged: the TaskTracker does not send them again.
    let acked = loop {
        if let pb::tracker_message::Kind::OutcomeAcks(a) = peer.next().await.expect("stream ok") {
            break a.runs;
        }
    };
    assert_eq!(acked.len(), 2);

    for (id, field) in [
        (&ids[0], "started_at_unix_ms"),
        (&ids[1], "finished_at_unix_ms"),
    ] {
        match last_outcome(&t, id).await {
            Some(pb::outcome::Kind::Error(e)) => {
                assert!(e.message.contains(field), "{field}: {}", e.message)
            }
            other => panic!("{id}: expected an error outcome naming {field}, got {other:?}"),
        }
    }
    // The stream goes on.
    peer.send(pb::worker_message::Kind::Heartbeat(pb::Heartbeat {
        at_unix_ms: now,
    }))
    .await;
    let id = submit(&mut c, vec![job("after", "g")]).await.remove(0);
    peer.send(pb::worker_message::Kind::Credit(pb::Credit {
        credits: 2,
        ahead_credits: 0,
    }))
    .await;
    let mut seen = Vec::new();
    while !seen.contains(&id) {
        seen.extend(
            peer.assignments()
                .await
                .into_iter()
                .filter_map(|a| a.job.map(|j| j.job_id)),
        );
    }
    drop(peer);
    t.stop().await;
}
