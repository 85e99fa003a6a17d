//! Feedback across two JobTrackers sharing one MongoDB database: an
//! outcome stored through one reaches the JobClients of its submit node
//! group connected to the other, and once they ack it neither tracker
//! holds it any more.
//!
//! Needs the MongoDB server named by `LTS_TEST_MONGODB_URI`; without it
//! the test skips loudly, or fails under `CI=true`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use lts_proto::v1 as pb;
use support::{eventually, hello, job, open_work, submit, test_config, TestTracker, WAIT};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

async fn tracker(
    uri: &str,
    database: &str,
    instance: &str,
    dir: &std::path::Path,
) -> Arc<lts_jobtracker::Tracker> {
    let mut config = test_config(dir);
    config.store = lts_jobtracker::StoreConfig::Mongo {
        uri: lts_jobtracker::store::mongo::MongoUri(uri.to_string()),
        database: database.to_string(),
        log_retention: Duration::from_secs(3600),
        lease: Duration::from_secs(30),
        instance: instance.into(),
    };
    lts_jobtracker::create_tracker(config)
        .await
        .expect("create tracker")
}

#[tokio::test]
async fn feedback_stored_by_one_tracker_reaches_a_client_of_another_and_is_then_forgotten() {
    let Some(uri) = support::mongo_uri("feedback across trackers over MongoDB") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let database = format!("lts_feedback_{}", lts_jobtracker::store::new_job_id());
    let a = tracker(&uri, &database, "tracker-a", dir.path()).await;
    let b = tracker(&uri, &database, "tracker-b", dir.path()).await;
    let (router_a, router_b) = (a.feedback.clone(), b.feedback.clone());
    let store = a.store.clone();
    let (ta, tb) = (TestTracker::serve(a).await, TestTracker::serve(b).await);

    // The client of `clients` is connected to B only.
    let (fb_tx, fb_rx) = mpsc::channel(8);
    fb_tx
        .send(pb::FeedbackClientMessage {
            kind: Some(pb::feedback_client_message::Kind::Subscribe(
                pb::Subscribe {
                    submit_node_group: "clients".into(),
                    client_id: "client-on-b".into(),
                },
            )),
        })
        .await
        .expect("subscribe");
    let mut feedback = tb
        .jobs()
        .await
        .feedback(ReceiverStream::new(fb_rx))
        .await
        .expect("feedback stream")
        .into_inner();

    // The job is submitted, run and completed through A.
    let spec = pb::JobSpec {
        need_feedback: true,
        submit_node_group: "clients".into(),
        ..job("fb", "workers")
    };
    let id = submit(&mut ta.jobs().await, vec![spec]).await.remove(0);
    let mut peer = open_work(&ta.addr, hello("w", "workers", 1))
        .await
        .expect("work stream");
    let run = peer.assignments().await.remove(0);
    peer.succeed(&[(id.clone(), run.attempt)]).await;

    let items = tokio::time::timeout(WAIT, feedback.message())
        .await
        .expect("feedback within the wait")
        .expect("feedback stream ok")
        .expect("a feedback message")
        .items;
    assert_eq!(items.len(), 1, "{items:?}");
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

    eventually("the ack through B reached the store", || {
        let store = store.clone();
        async move {
            store
                .pending_feedback()
                .await
                .ok()?
                .is_empty()
                .then_some(())
        }
    })
    .await;
    // A queued the item when it stored the outcome; acked elsewhere, it
    // must not stay there to be sent again to the next client of the group
    // that connects to A.
    eventually("neither tracker holds the acked item", || {
        let held = router_a.unacked() + router_b.unacked();
        async move { (held == 0).then_some(()) }
    })
    .await;

    drop(fb_tx);
    drop(peer);
    ta.stop().await;
    tb.stop().await;
    if let Some(m) =
        lts_jobtracker::store::mongo::MongoStore::new(lts_jobtracker::store::mongo::MongoOptions {
            uri,
            database,
            log_retention: Duration::from_secs(3600),
            instance: "cleanup".into(),
            lease: Duration::from_secs(30),
        })
        .drop_database()
        .await
        .err()
    {
        eprintln!("cannot drop the test database: {m}");
    }
}
