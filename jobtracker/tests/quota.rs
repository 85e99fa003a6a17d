//! Quotas per node group (`--max-jobs-per-node-group`,
//! `--max-bytes-per-node-group`), over the embedded store and over
//! MongoDB: a group at its quota refuses further jobs one by one, naming
//! the group and the quota, while other groups are served; once its jobs
//! finish or are cancelled it accepts again.

mod support;

use std::sync::Arc;

use lts_jobtracker::limits::ServerLimits;
use lts_jobtracker::StoreConfig;
use lts_proto::v1 as pb;
use support::{eventually, hello, job, open_work, test_config, TestTracker};

const MAX_JOBS: u64 = 3;
const MAX_BYTES: u64 = 1000;

fn limits() -> ServerLimits {
    ServerLimits {
        max_jobs_per_node_group: MAX_JOBS,
        max_bytes_per_node_group: MAX_BYTES,
        ..ServerLimits::default()
    }
}

fn limited(tracker: &lts_jobtracker::Tracker, limit: &str) -> u64 {
    tracker.metrics.limited.with_label_values(&[limit]).get()
}

fn error_of(r: &pb::SubmitResult) -> Option<&pb::SubmitError> {
    match &r.result {
        Some(pb::submit_result::Result::Error(e)) => Some(e),
        _ => None,
    }
}

fn id_of(r: &pb::SubmitResult) -> Option<String> {
    match &r.result {
        Some(pb::submit_result::Result::JobId(id)) => Some(id.clone()),
        _ => None,
    }
}

fn with_payload(task: &str, group: &str, bytes: usize) -> pb::JobSpec {
    pb::JobSpec {
        payload: vec![1; bytes],
        ..job(task, group)
    }
}

async fn submit(
    c: &mut pb::job_service_client::JobServiceClient<tonic::transport::Channel>,
    jobs: Vec<pb::JobSpec>,
) -> Vec<pb::SubmitResult> {
    c.submit_jobs(pb::SubmitJobsRequest { jobs })
        .await
        .expect("submit call")
        .into_inner()
        .results
}

/// The whole story on one tracker over `store`.
async fn a_group_at_its_quota_refuses_then_accepts_again(store: Option<StoreConfig>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(dir.path());
    config.limits = limits();
    if let Some(store) = store {
        config.store = store;
    }
    let tracker = lts_jobtracker::create_tracker(config)
        .await
        .expect("create tracker");
    let t = TestTracker::serve(tracker.clone()).await;
    let mut c = t.jobs().await;

    // One batch: three jobs of `q` fit, the fourth does not; `other` is
    // served all the same.
    let r = submit(
        &mut c,
        vec![
            job("q-1", "q"),
            job("q-2", "q"),
            job("q-3", "q"),
            job("q-4", "q"),
            job("o-1", "other"),
        ],
    )
    .await;
    let accepted: Vec<String> = r[..3].iter().filter_map(id_of).collect();
    assert_eq!(accepted.len(), 3, "{r:?}");
    let e = error_of(&r[3]).expect("the fourth job of q is refused");
    assert_eq!(e.code, "RESOURCE_EXHAUSTED");
    assert_eq!(e.field, "task_tracker_node_group");
    assert!(
        e.message
            .starts_with("jobs[3]: node group q holds 3 unfinished jobs")
            && e.message
                .contains("its quota is 3 (--max-jobs-per-node-group)"),
        "{}",
        e.message
    );
    assert!(id_of(&r[4]).is_some(), "another group is served: {r:?}");
    // Nothing accepted was lost.
    for id in &accepted {
        let j = c
            .get_job(pb::GetJobRequest {
                job_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("an accepted job is stored");
        assert!(j.into_inner().job.is_some());
    }
    // A later submit is refused as well, and counted.
    let r = submit(&mut c, vec![job("q-5", "q")]).await;
    assert_eq!(
        error_of(&r[0]).map(|e| e.code.as_str()),
        Some("RESOURCE_EXHAUSTED")
    );
    assert_eq!(limited(&tracker, "node_group_jobs"), 2);

    // Bytes: 600 fit, 600 more would pass 1000.
    let r = submit(
        &mut c,
        vec![
            with_payload("b-1", "big", 600),
            with_payload("b-2", "big", 600),
        ],
    )
    .await;
    assert!(id_of(&r[0]).is_some(), "{r:?}");
    let e = error_of(&r[1]).expect("the second 600 bytes are refused");
    assert_eq!(e.code, "RESOURCE_EXHAUSTED");
    assert!(
        e.message.contains("node group big holds 600 bytes")
            && e.message
                .contains("quota of 1000 bytes (--max-bytes-per-node-group)"),
        "{}",
        e.message
    );
    assert_eq!(limited(&tracker, "node_group_bytes"), 1);

    // One job of q runs and succeeds, another is cancelled: room for two.
    let mut peer = open_work(&t.addr, hello("w", "q", 1))
        .await
        .expect("work stream");
    let a = peer.assignments().await.remove(0);
    let ran = a.job.expect("assigned job").job_id;
    peer.succeed(&[(ran.clone(), a.attempt)]).await;
    let cancelled = accepted
        .iter()
        .find(|id| **id != ran)
        .expect("another job of q")
        .clone();
    c.cancel_job(pb::CancelJobRequest { job_id: cancelled })
        .await
        .expect("cancel");
    let mut n = 0;
    let fits = |what: &'static str| {
        let c = c.clone();
        move || {
            n += 1;
            let mut c = c.clone();
            let task = format!("q-again-{what}-{n}");
            async move { id_of(&submit(&mut c, vec![job(&task, "q")]).await[0]) }
        }
    };
    eventually("q accepts a job once two have ended", fits("a")).await;
    eventually("q accepts a second one", fits("b")).await;
    let r = submit(&mut c, vec![job("q-full-again", "q")]).await;
    assert!(
        error_of(&r[0]).is_some_and(|e| e.message.contains("node group q holds 3")),
        "{r:?}"
    );
    drop(peer);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_at_its_quota_refuses_then_accepts_again_over_the_embedded_store() {
    a_group_at_its_quota_refuses_then_accepts_again(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_at_its_quota_refuses_then_accepts_again_over_mongodb() {
    let Some(uri) = support::mongo_uri("the quotas over MongoDB") else {
        return;
    };
    let database = format!("lts_quota_{}", lts_jobtracker::store::new_job_id());
    let store = StoreConfig::Mongo {
        uri: lts_jobtracker::store::mongo::MongoUri(uri.clone()),
        database: database.clone(),
        log_retention: std::time::Duration::from_secs(3600),
        lease: std::time::Duration::from_secs(3),
        instance: "quota".into(),
    };
    a_group_at_its_quota_refuses_then_accepts_again(Some(store)).await;
    let cleanup =
        lts_jobtracker::store::mongo::MongoStore::new(lts_jobtracker::store::mongo::MongoOptions {
            uri,
            database,
            log_retention: std::time::Duration::from_secs(3600),
            instance: "cleanup".into(),
            lease: std::time::Duration::from_secs(3),
        });
    let cleanup = Arc::new(cleanup);
    if let Err(e) = cleanup.drop_database().await {
        eprintln!("cannot drop the test database: {e}");
    }
}
