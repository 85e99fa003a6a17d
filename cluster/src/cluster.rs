//! One ZooKeeper session per process: registration, the view, election.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::select_all;
use lts_common::resolver::Resolver;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use zookeeper_client::{Acls, Client, CreateMode, CreateOptions, Error as ZkError, SessionState};

use crate::config::{check_znode_name, ZkConfig};
use crate::error::{zk, ClusterError, Result};
use crate::node::{ClusterView, NodeInfo, Role};
use crate::resolver::ClusterResolver;

const PERSISTENT: CreateOptions<'static> = CreateMode::Persistent.with_acls(Acls::anyone_all());
const EPHEMERAL: CreateOptions<'static> = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
const EPHEMERAL_SEQUENTIAL: CreateOptions<'static> =
    CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());

/// The prefix of election znodes: `election/n_<sequence>`.
const ELECTION_PREFIX: &str = "n_";

/// A process's membership of a cluster: one ZooKeeper session, re-created
/// when it expires.
///
/// Through it a node registers itself ([`Cluster::register`]), sees every
/// node ([`Cluster::view`]), finds JobTrackers ([`Cluster::resolver`]) and
/// takes part in the master election ([`Cluster::elect`]). When the session
/// expires, every registration and every election znode is made again on
/// a new session, with a new, larger term. [`Cluster::close`] removes them
/// at once, so others see the node leave in milliseconds.
pub struct Cluster {
    shared: Arc<Shared>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    config: ZkConfig,
    base: String,
    session: Mutex<Option<SessionHandle>>,
    registrations: Mutex<Vec<NodeInfo>>,
    contenders: Mutex<Vec<Arc<Contender>>>,
    view: watch::Sender<ClusterView>,
    resolver: Arc<ClusterResolver>,
    closed: AtomicBool,
    drop_session: Notify,
}

/// A live session and the tasks that work on it; dropping the tasks and the
/// client ends the session.
struct SessionHandle {
    client: Client,
    tasks: Vec<JoinHandle<()>>,
}

/// One identity taking part in the election.
struct Contender {
    identity: String,
    leadership: watch::Sender<Option<u64>>,
    /// The election znode of the current session, to delete on close.
    znode: Mutex<Option<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every value behind these locks is replaced whole, so it is valid
    // whatever a panicking holder did.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_connected(state: SessionState) -> bool {
    state == SessionState::SyncConnected
}

/// Waits until the session is connected (true) or over (false).
async fn wait_connected(state: &mut zookeeper_client::StateWatcher) -> bool {
    loop {
        let now = state.state();
        if is_connected(now) {
            return true;
        }
        if now.is_terminated() {
            return false;
        }
        state.changed().await;
    }
}

impl Cluster {
    /// Connects to ZooKeeper, waiting at most about the session timeout,
    /// and creates the cluster's znodes (and the chroot) if missing.
    pub async fn connect(config: ZkConfig) -> Result<Arc<Cluster>> {
        let base = config.base_path();
        let client = open_session(&config).await?;
        for dir in ["jobtrackers", "tasktrackers", "jobclients", "election"] {
            let path = format!("{base}/{dir}");
            client
                .mkdir(&path, &PERSISTENT)
                .await
                .map_err(zk("create", &path))?;
        }
        let shared = Arc::new(Shared {
            config,
            base,
            session: Mutex::new(None),
            registrations: Mutex::new(Vec::new()),
            contenders: Mutex::new(Vec::new()),
            view: watch::Sender::new(ClusterView::default()),
            resolver: Arc::new(ClusterResolver::new()),
            closed: AtomicBool::new(false),
            drop_session: Notify::new(),
        });
        let state = client.state_watcher();
        shared.install(client);
        let supervisor = tokio::spawn(supervise(shared.clone(), state));
        Ok(Arc::new(Cluster {
            shared,
            supervisor: Mutex::new(Some(supervisor)),
        }))
    }

    /// The configuration this cluster was joined with.
    pub fn config(&self) -> &ZkConfig {
        &self.shared.config
    }

    /// Registers `info` as an ephemeral znode (see [`NodeInfo`] for the
    /// path); it is made again after a session expiry and removed by
    /// [`Cluster::close`]. Registering the same role, group and identity
    /// again replaces the data. A znode left by an earlier process with the
    /// same identity is replaced.
    pub async fn register(&self, info: NodeInfo) -> Result<()> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(ClusterError::Closed);
        }
        check_name("identity", &info.identity)?;
        if info.role != Role::JobTracker {
            check_name("node group", &info.node_group)?;
        }
        let path = info.relative_path();
        {
            let mut registrations = lock(&self.shared.registrations);
            registrations.retain(|r| r.relative_path() != path);
            registrations.push(info.clone());
        }
        // Without a session (one is being re-created) the registration is
        // made with the next session.
        let Some(client) = self.shared.client() else {
            return Ok(());
        };
        let result = create_registration(&client, &self.shared.base, &info).await;
        if result.is_err() {
            lock(&self.shared.registrations).retain(|r| r.relative_path() != path);
        }
        result
    }

    /// Every registered node and the master, updated on every change.
    pub fn view(&self) -> watch::Receiver<ClusterView> {
        self.shared.view.subscribe()
    }

    /// The JobTracker addresses of the view, as a [`Resolver`].
    pub fn resolver(&self) -> Arc<dyn Resolver> {
        self.shared.resolver.clone()
    }

    /// Takes part in the master election as `identity`: the receiver holds
    /// `Some(term)` while this node leads, `None` otherwise. The term is
    /// the sequence number of this node's election znode plus one, so a
    /// later master always has a larger term, and the first is 1. Leadership ends as soon as the session is
    /// disconnected, before it can expire; after an expiry this node
    /// rejoins with a new znode and a new, larger term.
    pub fn elect(&self, identity: &str) -> watch::Receiver<Option<u64>> {
        let contender = Arc::new(Contender {
            identity: identity.to_string(),
            leadership: watch::Sender::new(None),
            znode: Mutex::new(None),
        });
        let receiver = contender.leadership.subscribe();
        if self.shared.closed.load(Ordering::SeqCst) {
            return receiver;
        }
        // The session lock is held while the contender is added so that a
        // session being installed at the same time starts it exactly once.
        let mut session = lock(&self.shared.session);
        lock(&self.shared.contenders).push(contender.clone());
        if let Some(session) = session.as_mut() {
            let task = tokio::spawn(contend(
                session.client.clone(),
                self.shared.base.clone(),
                contender,
            ));
            session.tasks.push(task);
        }
        receiver
    }

    /// Leaves the cluster: deletes this process's election znodes and
    /// registrations, then closes the session. Others see it leave (and a
    /// new master is elected) at once instead of after the session timeout.
    pub async fn close(&self) {
        if self.shared.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let supervisor = lock(&self.supervisor).take();
        if let Some(supervisor) = supervisor {
            supervisor.abort();
            let _ = supervisor.await;
        }
        let Some(client) = self.shared.teardown().await else {
            return;
        };
        let mut paths: Vec<String> = lock(&self.shared.contenders)
            .iter()
            .filter_map(|c| lock(&c.znode).take())
            .collect();
        paths.extend(
            lock(&self.shared.registrations)
                .iter()
                .map(|r| format!("{}/{}", self.shared.base, r.relative_path())),
        );
        let deletes = futures::future::join_all(paths.iter().map(|p| client.delete(p, None)));
        match tokio::time::timeout(self.shared.config.session_timeout, deletes).await {
            Ok(results) => {
                for (path, result) in paths.iter().zip(results) {
                    if let Err(e) = result {
                        if e != ZkError::NoNode {
                            tracing::warn!(path, error = %e, "could not delete a znode on close");
                        }
                    }
                }
            }
            Err(_) => tracing::warn!("ZooKeeper did not answer the deletes on close in time"),
        }
        let mut state = client.state_watcher();
        // Dropping the last client closes the session.
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while !state.state().is_terminated() {
                state.changed().await;
            }
        })
        .await;
        self.shared.view.send_replace(ClusterView::default());
        self.shared.resolver.update(Vec::<String>::new());
    }

    /// For tests: ends the current session as if it had expired; the
    /// cluster then does what it does after an expiry.
    #[doc(hidden)]
    pub fn drop_session_for_test(&self) {
        self.shared.drop_session.notify_one();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Some(supervisor) = lock(&self.supervisor).take() {
            supervisor.abort();
        }
        // Aborted tasks drop their clients; the session closes with the
        // last one.
        if let Some(session) = lock(&self.shared.session).take() {
            for task in session.tasks {
                task.abort();
            }
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn client(&self) -> Option<Client> {
        lock(&self.session).as_ref().map(|s| s.client.clone())
    }

    /// Makes `client` the current session and starts the view and every
    /// contender on it.
    fn install(self: &Arc<Self>, client: Client) {
        let mut session = lock(&self.session);
        let mut tasks = vec![tokio::spawn(follow_view(
            client.clone(),
            self.base.clone(),
            self.clone(),
        ))];
        for contender in lock(&self.contenders).iter() {
            tasks.push(tokio::spawn(contend(
                client.clone(),
                self.base.clone(),
                contender.clone(),
            )));
        }
        *session = Some(SessionHandle { client, tasks });
    }

    /// Stops the current session's tasks and ends every leadership;
    /// returns the session's client, the last one alive.
    async fn teardown(&self) -> Option<Client> {
        let session = lock(&self.session).take()?;
        for task in &session.tasks {
            task.abort();
        }
        for task in session.tasks {
            let _ = task.await;
        }
        for contender in lock(&self.contenders).iter() {
            contender.leadership.send_replace(None);
        }
        Some(session.client)
    }

    /// Makes every registration on a new session.
    async fn reregister(&self, client: &Client) -> Result<()> {
        for dir in ["jobtrackers", "tasktrackers", "jobclients", "election"] {
            let path = format!("{}/{dir}", self.base);
            client
                .mkdir(&path, &PERSISTENT)
                .await
                .map_err(zk("create", &path))?;
        }
        let registrations = lock(&self.registrations).clone();
        for info in &registrations {
            create_registration(client, &self.base, info).await?;
        }
        Ok(())
    }
}

fn check_name(what: &'static str, name: &str) -> Result<()> {
    check_znode_name(name).map_err(|reason| ClusterError::BadName {
        what,
        name: name.to_string(),
        reason,
    })
}

async fn open_session(config: &ZkConfig) -> Result<Client> {
    let timeout = config.session_timeout;
    let hosts = config.hosts();
    let unreachable = |reason: String| ClusterError::Unreachable {
        hosts: hosts.to_string(),
        timeout,
        reason,
    };
    let connecting = Client::connector()
        .with_session_timeout(timeout)
        .connect(hosts);
    // The client gives up after about the session timeout; the margin only
    // guards against it not doing so.
    match tokio::time::timeout(timeout + Duration::from_millis(500), connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable("no server answered".to_string())),
    }
}

async fn create_registration(client: &Client, base: &str, info: &NodeInfo) -> Result<()> {
    let path = format!("{base}/{}", info.relative_path());
    let data = serde_json::to_vec(info).map_err(|source| ClusterError::Encode {
        identity: info.identity.clone(),
        source,
    })?;
    if let Some((parent, _)) = path.rsplit_once('/') {
        client
            .mkdir(parent, &PERSISTENT)
            .await
            .map_err(zk("create", parent))?;
    }
    loop {
        match client.create(&path, &data, &EPHEMERAL).await {
            Ok(_) => return Ok(()),
            Err(ZkError::NodeExists) => {}
            Err(e) => return Err(zk("create", &path)(e)),
        }
        match client.check_stat(&path).await.map_err(zk("stat", &path))? {
            None => continue,
            Some(stat) if stat.ephemeral_owner == client.session_id().0 => {
                client
                    .set_data(&path, &data, None)
                    .await
                    .map_err(zk("set", &path))?;
                return Ok(());
            }
            Some(_) => {
                // Most likely this node's previous process, killed before
                // its session expired.
                tracing::warn!(path, "replacing a registration left by another session");
                match client.delete(&path, None).await {
                    Ok(()) | Err(ZkError::NoNode) => {}
                    Err(e) => return Err(zk("delete", &path)(e)),
                }
            }
        }
    }
}

/// Follows the session: after an expiry (or a dropped session) makes a new
/// one, registers again and restarts the view and the election.
async fn supervise(shared: Arc<Shared>, mut state: zookeeper_client::StateWatcher) {
    loop {
        loop {
            tokio::select! {
                now = state.changed() => {
                    if now.is_terminated() {
                        tracing::warn!(state = %now, "ZooKeeper session ended; starting a new one");
                        break;
                    }
                }
                _ = shared.drop_session.notified() => {
                    tracing::warn!("dropping the ZooKeeper session");
                    break;
                }
            }
        }
        if let Some(client) = shared.teardown().await {
            drop(client);
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            if shared.closed.load(Ordering::SeqCst) {
                return;
            }
            match open_session(&shared.config).await {
                Ok(client) => match shared.reregister(&client).await {
                    Ok(()) => {
                        state = client.state_watcher();
                        tracing::info!(session = %client.session_id(), "new ZooKeeper session");
                        shared.install(client);
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "could not register on a new session"),
                },
                Err(e) => tracing::warn!(error = %e, "could not open a new ZooKeeper session"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

/// The sequence number in an election znode's name.
fn election_sequence(name: &str) -> Option<u64> {
    name.strip_prefix(ELECTION_PREFIX)?.parse().ok()
}

/// Makes this contender's election znode on this session and reports
/// leadership until the session ends.
async fn contend(client: Client, base: String, contender: Arc<Contender>) {
    let dir = format!("{base}/election");
    let mut state = client.state_watcher();
    let Some((path, term)) = create_election_znode(&client, &dir, &contender, &mut state).await
    else {
        return;
    };
    *lock(&contender.znode) = Some(path.clone());
    let own = format!("{ELECTION_PREFIX}{term:010}");
    let lead = |leading: Option<u64>| {
        contender.leadership.send_if_modified(|now| {
            let changed = *now != leading;
            *now = leading;
            changed
        });
    };
    loop {
        if !is_connected(state.state()) {
            lead(None);
            if !wait_connected(&mut state).await {
                lead(None);
                return;
            }
        }
        let children = match client.list_children(&dir).await {
            Ok(children) => children,
            Err(_) => {
                lead(None);
                if !wait_connected(&mut state).await {
                    return;
                }
                continue;
            }
        };
        let mut queue: Vec<(u64, String)> = children
            .into_iter()
            .filter_map(|name| election_sequence(&name).map(|seq| (seq, name)))
            .collect();
        queue.sort();
        let Some(position) = queue.iter().position(|(seq, _)| *seq == term) else {
            // The znode is gone while the session lives (deleted by hand):
            // this contender cannot lead on this session any more.
            tracing::error!(
                znode = own,
                "election znode deleted; not leading until a new session"
            );
            lead(None);
            return;
        };
        // Leading: watch the own znode; following: watch the one just
        // before it, so a master's departure wakes one contender only.
        let watched = if position == 0 {
            path.clone()
        } else {
            format!("{dir}/{}", queue[position - 1].1)
        };
        let watcher = match client.check_and_watch_stat(&watched).await {
            Ok((None, _)) => continue,
            Ok((Some(_), watcher)) => watcher,
            Err(_) => continue,
        };
        if position == 0 && is_connected(state.state()) {
            // Terms start at 1: ZooKeeper numbers the first znode 0, and 0
            // is below every term a store may have recorded.
            lead(Some(term + 1));
        } else {
            lead(None);
        }
        tokio::select! {
            _ = watcher.changed() => {}
            now = state.changed() => {
                if !is_connected(now) {
                    lead(None);
                }
            }
        }
    }
}

async fn create_election_znode(
    client: &Client,
    dir: &str,
    contender: &Contender,
    state: &mut zookeeper_client::StateWatcher,
) -> Option<(String, u64)> {
    let prefix = format!("{dir}/{ELECTION_PREFIX}");
    loop {
        match client
            .create(
                &prefix,
                contender.identity.as_bytes(),
                &EPHEMERAL_SEQUENTIAL,
            )
            .await
        {
            Ok((_, sequence)) => {
                let term = u64::try_from(sequence.into_i64()).ok()?;
                return Some((format!("{prefix}{sequence}"), term));
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not create the election znode");
                if !wait_connected(state).await {
                    return None;
                }
                // A create cut off by a lost connection may have succeeded:
                // adopt a znode of this session rather than leave it to
                // block the election until the session ends.
                if let Some(found) = find_own_election_znode(client, dir, contender).await {
                    return Some(found);
                }
            }
        }
    }
}

async fn find_own_election_znode(
    client: &Client,
    dir: &str,
    contender: &Contender,
) -> Option<(String, u64)> {
    let children = client.list_children(dir).await.ok()?;
    for name in children {
        let Some(term) = election_sequence(&name) else {
            continue;
        };
        let path = format!("{dir}/{name}");
        if let Ok((data, stat)) = client.get_data(&path).await {
            if stat.ephemeral_owner == client.session_id().0
                && data == contender.identity.as_bytes()
            {
                return Some((path, term));
            }
        }
    }
    None
}

/// Keeps the view (and the resolver) current on this session: reads every
/// node, arms child watches, and reads again on any change or reconnect.
async fn follow_view(client: Client, base: String, shared: Arc<Shared>) {
    let mut state = client.state_watcher();
    loop {
        match read_view(&client, &base).await {
            Ok((view, watchers)) => {
                shared.resolver.update(
                    view.job_trackers()
                        .into_iter()
                        .map(|node| node.address.as_str()),
                );
                shared.view.send_if_modified(|now| {
                    let changed = *now != view;
                    *now = view;
                    changed
                });
                let changes = select_all(watchers.into_iter().map(|w| Box::pin(w.changed())));
                tokio::select! {
                    _ = changes => {}
                    now = state.changed() => {
                        if now.is_terminated() {
                            return;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not read the cluster view");
                if !wait_connected(&mut state).await {
                    return;
                }
            }
        }
    }
}

async fn read_view(
    client: &Client,
    base: &str,
) -> Result<(ClusterView, Vec<zookeeper_client::OneshotWatcher>)> {
    let mut watchers = Vec::new();
    let mut nodes = Vec::new();
    for role in [Role::JobTracker, Role::TaskTracker, Role::JobClient] {
        let dir = format!("{base}/{}", role.dir());
        let (children, watcher) = client
            .list_and_watch_children(&dir)
            .await
            .map_err(zk("list", &dir))?;
        watchers.push(watcher);
        let mut node_dirs = Vec::new();
        if role == Role::JobTracker {
            node_dirs.push((dir, children));
        } else {
            for group in children {
                let group_dir = format!("{dir}/{group}");
                match client.list_and_watch_children(&group_dir).await {
                    Ok((members, watcher)) => {
                        watchers.push(watcher);
                        node_dirs.push((group_dir, members));
                    }
                    Err(ZkError::NoNode) => {}
                    Err(e) => return Err(zk("list", &group_dir)(e)),
                }
            }
        }
        for (node_dir, members) in node_dirs {
            for member in members {
                let path = format!("{node_dir}/{member}");
                let data = match client.get_data(&path).await {
                    Ok((data, _)) => data,
                    Err(ZkError::NoNode) => continue,
                    Err(e) => return Err(zk("get", &path)(e)),
                };
                match serde_json::from_slice::<NodeInfo>(&data) {
                    Ok(info) if info.role == role => nodes.push(info),
                    Ok(info) => {
                        tracing::warn!(path, role = %info.role, "skipping a node registered under another role's directory")
                    }
                    Err(e) => {
                        tracing::warn!(path, error = %e, "skipping a node with malformed data")
                    }
                }
            }
        }
    }
    nodes.sort_by(|a, b| {
        (a.role, &a.node_group, &a.identity).cmp(&(b.role, &b.node_group, &b.identity))
    });
    let election = format!("{base}/election");
    let (children, watcher) = client
        .list_and_watch_children(&election)
        .await
        .map_err(zk("list", &election))?;
    watchers.push(watcher);
    let mut queue: Vec<(u64, String)> = children
        .into_iter()
        .filter_map(|name| election_sequence(&name).map(|seq| (seq, name)))
        .collect();
    queue.sort();
    let mut master = None;
    for (_, name) in queue {
        let path = format!("{election}/{name}");
        match client.get_data(&path).await {
            Ok((data, _)) => {
                master = Some(String::from_utf8_lossy(&data).into_owned());
                break;
            }
            // The lowest left between the listing and the read: the next
            // one is the master.
            Err(ZkError::NoNode) => continue,
            Err(e) => return Err(zk("get", &path)(e)),
        }
    }
    Ok((ClusterView { nodes, master }, watchers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn election_znodes_are_ordered_by_their_sequence() {
        assert_eq!(election_sequence("n_0000000012"), Some(12));
        assert_eq!(election_sequence("n_x"), None);
        assert_eq!(election_sequence("lock-1"), None);
    }
}
