//! A ZooKeeper server of a test's own, for tests that stop ZooKeeper
//! itself (the shared one named by `LTS_TEST_ZOOKEEPER` must stay up for
//! the others).
//!
//! It runs the Java server from the jars in `LTS_TEST_ZOOKEEPER_JAR_DIR`
//! (`.ci/run` exports it), or in `/usr/share/java` where Debian's
//! `zookeeper` package puts them, with `tickTime=500`, so 2 s sessions are
//! allowed.

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
        let port = {
            // ZooKeeper takes its port from the config, so one is picked
            // here and bound by the server just after.
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?.port()
        };
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
        let classpath = format!(
            "{}:{}",
            jars.join("zookeeper.jar").display(),
            jars.join("slf4j-simple.jar").display()
        );
        let log = dir.join("zookeeper.log");
        let file = std::fs::File::create(&log)?;
        let child = Command::new("java")
            .args(["-Xmx256m", "-cp", &classpath])
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting java for ZooKeeper")?;
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
