//! Cluster mode through the libraries: two JobTrackers on one MongoDB
//! database found through a real ZooKeeper, a TaskTracker and a JobClient
//! that were given no JobTracker address. Needs `LTS_TEST_ZOOKEEPER` and
//! `LTS_TEST_MONGODB_URI` (`.ci/run` starts both); without them the test
//! skips loudly, or fails under `CI=true`.

use std::sync::Arc;
use std::time::Duration;

use lts_common::{JobSpec, JobState};
use lts_jobclient::{ClientOptions, ClusterOptions, Error, JobClient, Role};
use lts_tasktracker::runners::NoopRunner;
use lts_tasktracker::{TaskTracker, TaskTrackerConfig};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(30);

fn server(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{var} is not set: CI must start {what} (see .ci/run)");
            }
            eprintln!("\n*** skipping: {var} not set; cluster mode is NOT tested ***\n");
            None
        }
    }
}

fn unique(what: &str) -> String {
    format!("{what}_{}_{}", std::process::id(), lts_common::now_ms())
}

struct Tracker {
    identity: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Tracker {
    async fn start(identity: &str, zookeeper: &str, cluster: &str, mongo: &str) -> Tracker {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut config = lts_jobtracker::TrackerConfig::embedded(dir.path().join("data"));
        config.store = lts_jobtracker::StoreConfig::Mongo {
            uri: lts_jobtracker::store::mongo::MongoUri(mongo.to_string()),
            database: cluster.to_string(),
            log_retention: Duration::from_secs(3600),
            lease: Duration::from_secs(2),
            instance: identity.to_string(),
        };
        config.shutdown_timeout = Duration::from_secs(5);
        let settings = lts_jobtracker::ClusterSettings {
            zookeeper: zookeeper.to_string(),
            name: cluster.to_string(),
            session_timeout: Duration::from_secs(2),
            advertise: None,
            identity: identity.to_string(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) =
                lts_jobtracker::cluster::serve_in_cluster(config, settings, listener, shutdown)
                    .await
            {
                panic!("JobTracker failed: {e}");
            }
        });
        Tracker {
            identity: identity.to_string(),
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(WAIT, &mut self.task).await;
    }
}

async fn wait_succeeded(client: &JobClient, job_ids: &[String]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    for id in job_ids {
        loop {
            let state = client.get(id).await.map(|j| j.state);
            if matches!(state, Ok(JobState::Succeeded)) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} did not succeed: {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn submit(client: &JobClient, prefix: &str, n: usize) -> Vec<String> {
    let jobs = (0..n)
        .map(|i| JobSpec::new(format!("{prefix}{i}"), "workers"))
        .collect();
    client
        .submit(jobs)
        .await
        .expect("submit")
        .iter()
        .map(|o| o.job_id().expect("accepted").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_task_trackers_find_the_trackers_through_zookeeper_and_move_on() {
    let Some(zookeeper) = server("LTS_TEST_ZOOKEEPER", "a ZooKeeper server") else {
        return;
    };
    let Some(mongo) = server("LTS_TEST_MONGODB_URI", "a MongoDB server") else {
        return;
    };
    let cluster = unique("libcluster");
    let a = Tracker::start("jt-a", &zookeeper, &cluster, &mongo).await;
    let b = Tracker::start("jt-b", &zookeeper, &cluster, &mongo).await;

    // No JobTracker address anywhere: the TaskTracker's list is unused.
    let mut config = TaskTrackerConfig::new("127.0.0.1:1", "workers");
    config.identity = "tt-1".into();
    let zk = lts_cluster::ZkConfig::parse(&zookeeper, &cluster, Duration::from_secs(2))
        .expect("zk config");
    let tt_cluster = lts_cluster::Cluster::connect(zk).await.expect("join");
    let tt = TaskTracker::new(config, Arc::new(NoopRunner))
        .expect("task tracker")
        .join_cluster(&tt_cluster)
        .await
        .expect("register");
    let (stop_tt, tt_stopped) = oneshot::channel::<()>();
    let tt_task = tokio::spawn(tt.run(async move {
        let _ = tt_stopped.await;
    }));

    let mut options = ClusterOptions::new(zookeeper.clone(), cluster.clone());
    options.session_timeout = Duration::from_secs(2);
    options.node_group = Some("clients".into());
    options.identity = "jc-1".into();
    let client = JobClient::connect_cluster(options, ClientOptions::default())
        .await
        .expect("connect through ZooKeeper");

    // The registry shows every node by role and group, and one master.
    let mut nodes = client.cluster_nodes().expect("cluster mode");
    let view = tokio::time::timeout(
        WAIT,
        nodes.wait_for(|v| {
            v.job_trackers().len() == 2
                && v.master.is_some()
                && v.nodes.iter().any(|n| n.role == Role::TaskTracker)
                && v.nodes.iter().any(|n| n.role == Role::JobClient)
        }),
    )
    .await
    .expect("the whole cluster registered")
    .expect("view")
    .clone();
    let tt_node = view
        .nodes
        .iter()
        .find(|n| n.role == Role::TaskTracker)
        .expect("task tracker");
    assert_eq!(
        (tt_node.node_group.as_str(), tt_node.identity.as_str()),
        ("workers", "tt-1")
    );
    assert_eq!(tt_node.slots, 4);
    let jc = view
        .nodes
        .iter()
        .find(|n| n.role == Role::JobClient)
        .expect("client");
    assert_eq!(
        (jc.node_group.as_str(), jc.identity.as_str()),
        ("clients", "jc-1")
    );

    let first = submit(&client, "before-", 10).await;
    wait_succeeded(&client, &first).await;

    // The tracker this client uses stops: the client moves to the other.
    let used = client.current_address().expect("connected");
    let (gone, kept) = if tokio::time::timeout(WAIT, async {
        loop {
            let v = nodes.borrow_and_update().clone();
            if let Some(n) = v.job_trackers().iter().find(|n| used.ends_with(&n.address)) {
                return n.identity.clone();
            }
            if nodes.changed().await.is_err() {
                return String::new();
            }
        }
    })
    .await
    .expect("the tracker in use is registered")
        == a.identity
    {
        (a, b)
    } else {
        (b, a)
    };
    gone.stop().await;
    let after = submit(&client, "after-", 10).await;
    assert_ne!(client.current_address().as_deref(), Some(used.as_str()));
    wait_succeeded(&client, &after).await;

    let _ = stop_tt.send(());
    tokio::time::timeout(WAIT, tt_task)
        .await
        .expect("TaskTracker stops")
        .expect("join")
        .expect("TaskTracker ran");
    tt_cluster.close().await;
    kept.stop().await;
}

#[tokio::test]
async fn a_cluster_without_trackers_and_a_bad_connect_string_are_named() {
    let mut options = ClusterOptions::new("zk-without-port", "c");
    let e = JobClient::connect_cluster(options.clone(), ClientOptions::default())
        .await
        .expect_err("bad connect string");
    assert!(matches!(e, Error::Cluster(_)), "{e}");
    assert!(e.to_string().contains("zk-without-port"), "{e}");

    let Some(zookeeper) = server("LTS_TEST_ZOOKEEPER", "a ZooKeeper server") else {
        return;
    };
    options.zookeeper = zookeeper;
    options.cluster = unique("empty");
    let client_options = ClientOptions {
        connect_timeout: Duration::from_millis(500),
        ..ClientOptions::default()
    };
    let e = JobClient::connect_cluster(options.clone(), client_options)
        .await
        .expect_err("no trackers");
    assert!(matches!(e, Error::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains(&options.cluster), "{e}");
}
