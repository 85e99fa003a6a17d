//! Trackers of a cluster tell each other of new work
//! (`ClusterService.NotifyWork`), coalesced, and refuse malformed notices.

mod support;

use std::sync::Arc;

use lts_jobtracker::peers::{Peers, MAX_GROUPS_PER_CALL};
use lts_proto::v1 as pb;
use pb::cluster_service_client::ClusterServiceClient;
use support::*;

fn counted(tracker: &lts_jobtracker::Tracker, direction: &str) -> u64 {
    tracker
        .metrics
        .peer_notices
        .with_label_values(&[direction])
        .get()
}

async fn tracker() -> (Arc<lts_jobtracker::Tracker>, TestTracker) {
    let dir = tempfile::tempdir().expect("temp dir");
    let t = lts_jobtracker::create_tracker(test_config(dir.path()))
        .await
        .expect("create tracker");
    let mut served = TestTracker::serve(t.clone()).await;
    served.dir = Some(dir);
    (t, served)
}

#[tokio::test]
async fn work_stored_on_one_tracker_is_announced_to_the_others() {
    let (a, served_a) = tracker().await;
    let (b, served_b) = tracker().await;
    let peers = Peers::new("tracker-a", a.metrics.clone());
    a.dispatcher.set_peers(peers.clone());
    let (_list, addresses) = tokio::sync::watch::channel(vec![served_b.addr.clone()]);
    tokio::spawn(peers.run(addresses, a.shutdown.clone()));

    let mut jobs = served_a.jobs().await;
    submit(&mut jobs, vec![job("t1", "reports")]).await;
    eventually("tracker A's notice was answered", || async {
        (counted(&a, "sent") >= 1).then_some(())
    })
    .await;
    assert!(counted(&b, "received") >= 1, "tracker B heard nothing");
    assert_eq!(counted(&a, "failed"), 0);
    // A tracker alone in its process is master: its gauge says so.
    eventually("tracker A shows it is master", || async {
        (a.metrics.master.get() == 1).then_some(())
    })
    .await;

    served_a.stop().await;
    served_b.stop().await;
}

#[tokio::test]
async fn a_burst_of_work_is_one_notice_per_peer() {
    let (a, served_a) = tracker().await;
    let (b, served_b) = tracker().await;
    let peers = Peers::new("tracker-a", a.metrics.clone());
    // A thousand wakes before the sender runs: one round, one call.
    for i in 0..1_000 {
        peers.announce(&format!("g{}", i % 7));
        peers.announce_feedback(&format!("clients{}", i % 3));
    }
    let (_list, addresses) = tokio::sync::watch::channel(vec![served_b.addr.clone()]);
    tokio::spawn(peers.run(addresses, a.shutdown.clone()));
    eventually("tracker A's call was answered", || async {
        (counted(&a, "sent") >= 1).then_some(())
    })
    .await;
    assert_eq!(counted(&a, "sent"), 1);
    assert_eq!(counted(&b, "received"), 1);
    served_a.stop().await;
    served_b.stop().await;
}

#[tokio::test]
async fn a_notice_naming_too_many_groups_is_refused() {
    let (_b, served_b) = tracker().await;
    let mut client = ClusterServiceClient::connect(served_b.addr.clone())
        .await
        .expect("connect");
    let e = client
        .notify_work(pb::NotifyWorkRequest {
            node_groups: (0..=MAX_GROUPS_PER_CALL).map(|i| format!("g{i}")).collect(),
            from_tracker: "elsewhere".into(),
            feedback_groups: Vec::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("node_groups"), "{}", e.message());
    let e = client
        .notify_work(pb::NotifyWorkRequest {
            node_groups: Vec::new(),
            from_tracker: "elsewhere".into(),
            feedback_groups: (0..=MAX_GROUPS_PER_CALL).map(|i| format!("c{i}")).collect(),
        })
        .await
        .expect_err("refused");
    assert!(e.message().contains("feedback_groups"), "{}", e.message());
    // A good one is taken.
    client
        .notify_work(pb::NotifyWorkRequest {
            node_groups: vec!["reports".into()],
            from_tracker: "elsewhere".into(),
            feedback_groups: vec!["clients".into()],
        })
        .await
        .expect("taken");
    served_b.stop().await;
}
