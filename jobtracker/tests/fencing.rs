//! A master whose term was superseded stops its once-only work.
//!
//! Needs MongoDB: `LTS_TEST_MONGODB_URI` (see `store_conformance.rs`).

mod support;

use std::sync::Arc;
use std::time::Duration;

use lts_common::{JobSpec, Schedule};
use lts_jobtracker::election::{Election, Term};
use lts_jobtracker::store::mongo::{MongoOptions, MongoStore, MongoUri};
use lts_jobtracker::store::{CycleStore, JobStore, ListFilter};
use lts_jobtracker::StoreConfig;
use support::*;
use tokio::sync::watch;

/// An election the test flips by hand.
struct Flip(watch::Sender<Option<Term>>);

impl Election for Flip {
    fn leadership(&self) -> watch::Receiver<Option<Term>> {
        self.0.subscribe()
    }
}

async fn cycles(store: &MongoStore) -> usize {
    let filter = ListFilter {
        task_id_prefix: Some("tick@".into()),
        ..Default::default()
    };
    store.list(&filter, 1000, None).await.expect("list").0.len()
}

/// Bounds a wait on a condition.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_master_stops_firing_until_it_leads_a_newer_term() {
    let Some(uri) = support::mongo_uri("fencing on MongoDB") else {
        return;
    };
    let database = format!("lts_test_{}", uuid::Uuid::now_v7().simple());
    let options = |instance: &str| MongoOptions {
        uri: uri.clone(),
        database: database.clone(),
        log_retention: Duration::from_secs(3600),
        instance: instance.into(),
        lease: Duration::from_secs(30),
    };
    // Another tracker already fired in term 6.
    let newer = MongoStore::new(options("newer"));
    let now = lts_common::now_ms();
    let mut spec = JobSpec::new("tick", "g");
    spec.schedule = Schedule::Repeat {
        interval_ms: 200,
        count: 0,
    };
    newer.submit(vec![spec], now).await.expect("submit");
    newer.fire_due(now, 6).await.expect("fire in term 6");
    // The cycles due within the next 800 ms are made at once.
    let fired = cycles(&newer).await;
    assert!(fired >= 1, "{fired}");

    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(dir.path());
    config.store = StoreConfig::Mongo {
        uri: MongoUri(uri.clone()),
        database: database.clone(),
        log_retention: Duration::from_secs(3600),
        lease: Duration::from_secs(30),
        instance: "older".into(),
    };
    // This tracker believes it leads in term 5.
    let election = Arc::new(Flip(watch::Sender::new(Some(5))));
    let tracker = lts_jobtracker::create_tracker_with_election(config, election.clone())
        .await
        .expect("create tracker");
    let mut work = tracker.leader_work.subscribe();
    let t = TestTracker::serve(tracker.clone()).await;

    // Its once-only work starts in term 5, is fenced off, and stops while
    // the election still says term 5.
    within("the work of term 5 to start", work.changed())
        .await
        .expect("watch");
    within("the work of term 5 to stop", work.wait_for(|t| t.is_none()))
        .await
        .expect("watch");
    assert_eq!(election.term(), Some(5));
    assert_eq!(cycles(&newer).await, fired, "term 5 fired nothing");

    // Leading in a newer term, it fires again.
    election.0.send_replace(Some(7));
    within("the work of term 7", work.wait_for(|t| *t == Some(7)))
        .await
        .expect("watch");
    within("a cycle fired in term 7", async {
        let mut interval = tokio::time::interval(Duration::from_millis(50));
        loop {
            interval.tick().await;
            if cycles(&newer).await > fired {
                return;
            }
        }
    })
    .await;

    drop(tracker);
    t.stop().await;
    newer.drop_database().await.expect("drop the test database");
}
