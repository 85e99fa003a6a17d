//! The cycle scheduler runs only while the tracker leads.

mod support;

use std::sync::Arc;

use lts_jobtracker::election::{Election, Term};
use lts_proto::v1 as pb;
use support::*;
use tokio::sync::watch;

/// An election the test flips by hand.
struct Flip(watch::Sender<Option<Term>>);

impl Election for Flip {
    fn leadership(&self) -> watch::Receiver<Option<Term>> {
        self.0.subscribe()
    }
}

async fn cycles(t: &TestTracker) -> usize {
    let mut c = t.jobs().await;
    c.list_jobs(pb::ListJobsRequest {
        task_id_prefix: "tick@".into(),
        page_size: 1000,
        ..Default::default()
    })
    .await
    .expect("list")
    .into_inner()
    .jobs
    .len()
}

/// Checks, for `window_ms` of the schedule's own clock (during which a
/// running scheduler fires several 50 ms cycles), that no cycle fires.
async fn none_fire_for(t: &TestTracker, window_ms: i64, expected: usize) {
    let until = lts_common::now_ms() + window_ms;
    while lts_common::now_ms() < until {
        assert_eq!(cycles(t).await, expected, "a cycle fired while not leading");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn cycles_fire_only_while_the_tracker_leads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let election = Arc::new(Flip(watch::Sender::new(None)));
    let tracker =
        lts_jobtracker::create_tracker_with_election(test_config(dir.path()), election.clone())
            .await
            .expect("create tracker");
    let mut work = tracker.leader_work.subscribe();
    let t = TestTracker::serve(tracker.clone()).await;

    let mut c = t.jobs().await;
    let mut spec = job("tick", "g");
    spec.schedule = Some(pb::Schedule {
        kind: Some(pb::schedule::Kind::Repeat(pb::Repeat {
            interval_ms: 50,
            count: 0,
        })),
    });
    submit(&mut c, vec![spec]).await;

    // Not leading: the scheduler does not run, so no cycle fires.
    assert_eq!(*work.borrow_and_update(), None);
    none_fire_for(&t, 500, 0).await;

    election.0.send_replace(Some(1));
    work.wait_for(|t| *t == Some(1)).await.expect("watch");
    let fired = eventually("cycles to fire while leading", || async {
        let n = cycles(&t).await;
        (n >= 2).then_some(n)
    })
    .await;
    assert!(fired >= 2);

    // Leadership ends: the scheduler stops at once, and what fired stays.
    election.0.send_replace(None);
    work.wait_for(|t| t.is_none()).await.expect("watch");
    let stopped = cycles(&t).await;
    assert!(stopped >= fired);
    // Submits and operator verbs wake the scheduler; a stopped one stays
    // stopped.
    tracker.scheduler.notify_one();
    assert_eq!(*work.borrow(), None);
    none_fire_for(&t, 500, stopped).await;

    // Leading again in a new term, it fires again.
    election.0.send_replace(Some(2));
    work.wait_for(|t| *t == Some(2)).await.expect("watch");
    eventually("cycles to fire again", || async {
        (cycles(&t).await > stopped).then_some(())
    })
    .await;

    drop(tracker);
    t.stop().await;
}
