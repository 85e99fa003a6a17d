//! Registration, the cluster view, discovery and the master election,
//! against the real ZooKeeper named by `LTS_TEST_ZOOKEEPER` (`.ci/run`
//! starts one). Without it the tests skip loudly, or fail under `CI=true`.

use std::sync::Arc;
use std::time::Duration;

use lts_cluster::{Cluster, ClusterError, ClusterView, NodeInfo, Role, ZkConfig};
use tokio::sync::watch;

/// Bound on every wait for ZooKeeper to show a change.
const WAIT: Duration = Duration::from_secs(20);

fn zookeeper() -> Option<String> {
    match std::env::var("LTS_TEST_ZOOKEEPER") {
        Ok(hosts) if !hosts.is_empty() => Some(hosts),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "LTS_TEST_ZOOKEEPER is not set: CI must start a ZooKeeper server (see .ci/run)"
                );
            }
            eprintln!(
                "\n*** skipping: LTS_TEST_ZOOKEEPER not set; cluster mode is NOT tested ***\n"
            );
            None
        }
    }
}

/// A cluster name no other test run uses.
fn unique(what: &str) -> String {
    format!("{what}-{}-{:08x}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

async fn join(hosts: &str, cluster: &str) -> Arc<Cluster> {
    let config = ZkConfig::parse(hosts, cluster, Duration::from_secs(2)).expect("config");
    Cluster::connect(config).await.expect("connect")
}

fn node(role: Role, group: &str, identity: &str, address: &str) -> NodeInfo {
    NodeInfo {
        role,
        node_group: group.into(),
        identity: identity.into(),
        address: address.into(),
        slots: if role == Role::TaskTracker { 8 } else { 0 },
        version: "test".into(),
        started_at_ms: 1,
    }
}

async fn view_until(
    view: &mut watch::Receiver<ClusterView>,
    what: &str,
    check: impl FnMut(&ClusterView) -> bool,
) -> ClusterView {
    let seen = match tokio::time::timeout(WAIT, view.wait_for(check)).await {
        Ok(Ok(v)) => Some(v.clone()),
        Ok(Err(_)) => panic!("the view closed while waiting for {what}"),
        Err(_) => None,
    };
    seen.unwrap_or_else(|| panic!("timed out waiting for {what}: {:?}", *view.borrow()))
}

async fn term_until(
    leadership: &mut watch::Receiver<Option<u64>>,
    what: &str,
    check: impl FnMut(&Option<u64>) -> bool,
) -> Option<u64> {
    match tokio::time::timeout(WAIT, leadership.wait_for(check)).await {
        Ok(Ok(t)) => *t,
        Ok(Err(_)) => panic!("leadership closed while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

#[tokio::test]
async fn every_node_sees_the_others_by_role_and_group_and_a_leaver_goes_at_once() {
    let Some(hosts) = zookeeper() else { return };
    let name = unique("view");
    let a = join(&hosts, &name).await;
    let b = join(&hosts, &name).await;
    a.register(node(Role::JobTracker, "", "jt-a", "127.0.0.1:7001"))
        .await
        .expect("register");
    b.register(node(Role::TaskTracker, "reports", "tt-b", ""))
        .await
        .expect("register");
    b.register(node(Role::JobClient, "clients", "jc-b", ""))
        .await
        .expect("register");

    let mut seen_by_b = b.view();
    let v = view_until(&mut seen_by_b, "three nodes", |v| v.nodes.len() == 3).await;
    let roles: Vec<(Role, &str, &str)> = v
        .nodes
        .iter()
        .map(|n| (n.role, n.node_group.as_str(), n.identity.as_str()))
        .collect();
    assert!(roles.contains(&(Role::JobTracker, "", "jt-a")), "{roles:?}");
    assert!(
        roles.contains(&(Role::TaskTracker, "reports", "tt-b")),
        "{roles:?}"
    );
    assert!(
        roles.contains(&(Role::JobClient, "clients", "jc-b")),
        "{roles:?}"
    );
    let tt = v.nodes.iter().find(|n| n.identity == "tt-b").expect("tt");
    assert_eq!(tt.slots, 8, "the registration holds the slots");
    assert_eq!(v.task_tracker_groups().get("reports"), Some(&1));

    // The resolver of every node lists the registered JobTrackers.
    let mut list = b.resolver().watch();
    tokio::time::timeout(WAIT, list.wait_for(|l| !l.is_empty()))
        .await
        .expect("resolver filled")
        .expect("watch");
    assert_eq!(*list.borrow(), ["http://127.0.0.1:7001"]);

    // Closing removes the registration at once, not after the session.
    a.close().await;
    view_until(&mut seen_by_b, "the JobTracker to leave", |v| {
        v.job_trackers().is_empty()
    })
    .await;
    tokio::time::timeout(WAIT, list.wait_for(|l| l.is_empty()))
        .await
        .expect("resolver emptied")
        .expect("watch");
    b.close().await;
}

#[tokio::test]
async fn one_contender_leads_and_the_next_takes_over_with_a_larger_term() {
    let Some(hosts) = zookeeper() else { return };
    let name = unique("elect");
    let a = join(&hosts, &name).await;
    let b = join(&hosts, &name).await;
    let mut lead_a = a.elect("jt-a");
    let first = term_until(&mut lead_a, "a to lead", |t| t.is_some())
        .await
        .expect("term");
    assert!(first >= 1, "terms start at 1, got {first}");
    let mut lead_b = b.elect("jt-b");
    let mut view = b.view();
    view_until(&mut view, "the master in the view", |v| {
        v.master.as_deref() == Some("jt-a")
    })
    .await;
    assert_eq!(*lead_b.borrow(), None, "two leaders at once");

    a.close().await;
    assert_eq!(*lead_a.borrow(), None, "a closed contender does not lead");
    let second = term_until(&mut lead_b, "b to lead", |t| t.is_some())
        .await
        .expect("term");
    assert!(second > first, "term {second} after {first}");
    view_until(&mut view, "b as master", |v| {
        v.master.as_deref() == Some("jt-b")
    })
    .await;
    b.close().await;
}

#[tokio::test]
async fn after_a_lost_session_a_node_registers_again_and_leads_in_a_new_term() {
    let Some(hosts) = zookeeper() else { return };
    let name = unique("expiry");
    let a = join(&hosts, &name).await;
    let watcher = join(&hosts, &name).await;
    a.register(node(Role::JobTracker, "", "jt-a", "127.0.0.1:7002"))
        .await
        .expect("register");
    let mut lead = a.elect("jt-a");
    let first = term_until(&mut lead, "a to lead", |t| t.is_some())
        .await
        .expect("term");

    a.drop_session_for_test();
    // Leadership ends with the session, and comes back in a larger term.
    term_until(&mut lead, "leadership to end", |t| *t != Some(first)).await;
    let again = term_until(&mut lead, "a to lead again", |t| t.is_some())
        .await
        .expect("term");
    assert!(again > first, "term {again} after {first}");
    let mut view = watcher.view();
    view_until(&mut view, "a registered again", |v| {
        v.job_trackers().iter().any(|n| n.identity == "jt-a") && v.master.as_deref() == Some("jt-a")
    })
    .await;
    a.close().await;
    watcher.close().await;
}

#[tokio::test]
async fn bad_names_and_an_unreachable_zookeeper_are_named() {
    let e = ZkConfig::parse("127.0.0.1", "c", Duration::from_secs(2)).expect_err("no port");
    assert!(e.to_string().contains("no port"), "{e}");
    let e = ZkConfig::parse("127.0.0.1:2181", "a/b", Duration::from_secs(2)).expect_err("slash");
    assert!(e.to_string().contains("a/b"), "{e}");
    let e = ZkConfig::parse("127.0.0.1:2181", "c", Duration::from_millis(10)).expect_err("short");
    assert!(matches!(e, ClusterError::BadSessionTimeout(_)), "{e}");

    // Nothing listens on port 1 of loopback.
    let config = ZkConfig::parse("127.0.0.1:1", "c", Duration::from_secs(1)).expect("config");
    let e = Cluster::connect(config).await.expect_err("unreachable");
    assert!(matches!(e, ClusterError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("127.0.0.1:1"), "{e}");

    let Some(hosts) = zookeeper() else { return };
    let c = join(&hosts, &unique("names")).await;
    let e = c
        .register(node(Role::TaskTracker, "bad/group", "tt", ""))
        .await
        .expect_err("bad group");
    assert!(e.to_string().contains("bad/group"), "{e}");
    c.close().await;
    let e = c
        .register(node(Role::JobTracker, "", "late", ""))
        .await
        .expect_err("closed");
    assert!(matches!(e, ClusterError::Closed), "{e}");
}
