//! A ZooKeeper server of a test's own, for tests that stop ZooKeeper
//! itself (the shared one named by `LTS_TEST_ZOOKEEPER` must stay up for
//! the others).
//!
//! It runs the Java server from the jars in `LTS_TEST_ZOOKEEPER_JAR_DIR`
//! (`.ci/run` exports it), or in `/usr/share/java` where Debian's
//! `zookeeper` package puts them, with `tickTime=500`, so 2 s sessions are
//! allowed. [`ZooKeeperEnsemble`] runs three (or more) such servers as
//! one ensemble, tells which one leads, and kills one, for tests of what a
//! cluster does while its ZooKeeper elects a new leader.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a fresh server may take to answer `srvr` with its mode.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where Debian's `zookeeper` package puts its jars.
const DEBIAN_JARS: &str = "/usr/share/java";

/// The directory of the ZooKeeper jars: `LTS_TEST_ZOOKEEPER_JAR_DIR`, else
/// Debian's when its `zookeeper.jar` is there. Without either the caller's
/// test skips loudly, or fails under `CI=true`.
pub fn jar_dir(test: &str) -> Option<PathBuf> {
    if std::env::var_os("LTS_TEST_ZOOKEEPER_JAR_DIR").is_none()
        && Path::new(DEBIAN_JARS).join("zookeeper.jar").exists()
    {
        return Some(PathBuf::from(DEBIAN_JARS));
    }
    crate::failover::required_env(
        "LTS_TEST_ZOOKEEPER_JAR_DIR",
        "the directory of zookeeper.jar (see .ci/run)",
        test,
    )
    .map(PathBuf::from)
}

/// One standalone ZooKeeper server; killed on drop.
pub struct ZooKeeperServer {
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
}

impl ZooKeeperServer {
    /// Starts a server with its data and log under `dir`, and waits until
    /// it serves (`srvr` shows its mode).
    pub fn start(jars: &Path, dir: &Path) -> Result<ZooKeeperServer> {
        let port = free_port()?;
        let data = dir.join("zk-data");
        std::fs::create_dir_all(&data)?;
        let config = dir.join("zoo.cfg");
        std::fs::write(
            &config,
            format!(
                "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\n\
                 clientPortAddress=127.0.0.1\nadmin.enableServer=false\n\
                 4lw.commands.whitelist=ruok,srvr,stat,mntr,conf,cons\nmaxSessionTimeout=60000\n",
                data.display()
            ),
        )?;
        let log = dir.join("zookeeper.log");
        let child = spawn_java(jars, &config, &log)?;
        let mut server = ZooKeeperServer {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        };
        server.wait_serving()?;
        Ok(server)
    }

    /// `host:port` for `--zookeeper`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Kills the server (SIGKILL) and reaps it: the ensemble has lost its
    /// quorum.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn wait_serving(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if srvr(self.addr).is_some_and(|text| text.lines().any(|l| l.starts_with("Mode:"))) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "ZooKeeper exited with {status} before serving; log tail:\n{}",
                        self.log_tail(40)
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "ZooKeeper did not serve within {START_TIMEOUT:?}; log tail:\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ZooKeeperServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The answer to the `srvr` four-letter word, if the server gives one.
fn srvr(addr: SocketAddr) -> Option<String> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    conn.write_all(b"srvr").ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    Some(text)
}

/// Picks a free port on 127.0.0.1. ZooKeeper takes its ports from the
/// config, so they are picked here and bound by the server just after.
fn free_port() -> Result<u16> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(probe.local_addr()?.port())
}

/// Starts a ZooKeeper server from `jars` with `config`, its output in `log`.
fn spawn_java(jars: &Path, config: &Path, log: &Path) -> Result<Child> {
    let classpath = format!(
        "{}:{}",
        jars.join("zookeeper.jar").display(),
        jars.join("slf4j-simple.jar").display()
    );
    let file = std::fs::File::create(log)?;
    Command::new("java")
        .args(["-Xmx256m", "-cp", &classpath])
        .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .context("starting java for ZooKeeper")
}

/// One server of a [`ZooKeeperEnsemble`].
struct Peer {
    id: usize,
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
}

impl Peer {
    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The server's mode by `srvr` (`leader`, `follower`), if it serves.
    fn mode(&self) -> Option<String> {
        self.child.as_ref()?;
        srvr(self.addr)?
            .lines()
            .find_map(|l| l.strip_prefix("Mode:"))
            .map(|m| m.trim().to_string())
    }
}

/// A ZooKeeper ensemble of servers on 127.0.0.1, each with client, peer
/// and election ports of its own; every server is killed on drop.
pub struct ZooKeeperEnsemble {
    peers: Vec<Peer>,
}

impl ZooKeeperEnsemble {
    /// Starts `size` servers with their data and logs under `dir` and waits
    /// until every one serves in the ensemble (one leads, the others
    /// follow).
    pub fn start(jars: &Path, dir: &Path, size: usize) -> Result<ZooKeeperEnsemble> {
        // Held together so no two picks are the same port.
        let mut probes = Vec::new();
        for _ in 0..size * 3 {
            probes.push(std::net::TcpListener::bind("127.0.0.1:0")?);
        }
        let mut ports = Vec::new();
        for p in &probes {
            ports.push(p.local_addr()?.port());
        }
        drop(probes);
        let servers: String = (0..size)
            .map(|i| {
                format!(
                    "server.{}=127.0.0.1:{}:{}\n",
                    i + 1,
                    ports[3 * i + 1],
                    ports[3 * i + 2]
                )
            })
            .collect();
        let mut ensemble = ZooKeeperEnsemble { peers: Vec::new() };
        for i in 0..size {
            let id = i + 1;
            let node = dir.join(format!("zk-{id}"));
            let data = node.join("data");
            std::fs::create_dir_all(&data)?;
            std::fs::write(data.join("myid"), format!("{id}\n"))?;
            let port = ports[3 * i];
            let config = node.join("zoo.cfg");
            std::fs::write(
                &config,
                format!(
                    "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\n\
                     clientPortAddress=127.0.0.1\nadmin.enableServer=false\n\
                     4lw.commands.whitelist=ruok,srvr,stat,mntr,conf,cons\n\
                     maxSessionTimeout=60000\n{servers}",
                    data.display()
                ),
            )?;
            let log = node.join("zookeeper.log");
            let child = spawn_java(jars, &config, &log)?;
            ensemble.peers.push(Peer {
                id,
                child: Some(child),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                log,
            });
        }
        ensemble.wait(START_TIMEOUT, "every server to serve", |e| {
            e.peers.iter().all(|p| p.mode().is_some())
        })?;
        Ok(ensemble)
    }

    /// `host:port,host:port,...` of every server, for `--zookeeper`.
    pub fn connect_string(&self) -> String {
        self.peers
            .iter()
            .map(|p| p.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The servers' modes by `srvr`, as `(server id, mode)`; a killed
    /// server or one not serving is left out.
    pub fn modes(&self) -> Vec<(usize, String)> {
        self.peers
            .iter()
            .filter_map(|p| Some((p.id, p.mode()?)))
            .collect()
    }

    /// The id of the server that says it leads, if exactly one does.
    pub fn leader(&self) -> Option<usize> {
        let leaders: Vec<usize> = self
            .modes()
            .into_iter()
            .filter(|(_, m)| m == "leader")
            .map(|(id, _)| id)
            .collect();
        match leaders.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// Waits up to `timeout` until one server leads; returns its id.
    pub fn wait_leader(&mut self, timeout: Duration) -> Result<usize> {
        self.wait(timeout, "a leader", |e| e.leader().is_some())?;
        self.leader().context("the leader went away at once")
    }

    /// Kills the server `id` with SIGKILL and reaps it.
    pub fn kill9(&mut self, id: usize) -> Result<()> {
        let peer = self
            .peers
            .iter_mut()
            .find(|p| p.id == id)
            .with_context(|| format!("no ZooKeeper server {id}"))?;
        if let Some(mut child) = peer.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// The log tails of every server, for failure messages.
    pub fn log_tails(&self, n: usize) -> String {
        let mut s = String::new();
        for p in &self.peers {
            s.push_str(&format!("--- zookeeper {} ---\n{}\n", p.id, p.log_tail(n)));
        }
        s
    }

    fn wait(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&ZooKeeperEnsemble) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return Ok(());
            }
            for p in &mut self.peers {
                if let Some(child) = p.child.as_mut() {
                    if let Some(status) = child.try_wait()? {
                        bail!(
                            "ZooKeeper server {} exited with {status}; log tail:\n{}",
                            p.id,
                            p.log_tail(40)
                        );
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no {what} within {timeout:?} (modes: {:?})\n{}",
                    self.modes(),
                    self.log_tails(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ZooKeeperEnsemble {
    fn drop(&mut self) {
        for p in &mut self.peers {
            if let Some(mut child) = p.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
