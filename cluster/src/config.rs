//! Where ZooKeeper is and which cluster to join.

use std::time::Duration;

use crate::error::{ClusterError, Result};

/// The default ZooKeeper session timeout: short, so a dead node is noticed
/// within seconds (ZooKeeper's own default is 30 s).
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(4);

/// How to reach ZooKeeper and which cluster's nodes to see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkConfig {
    /// `host:port[,host:port...][/chroot]`, as given.
    pub connect: String,
    /// The cluster name: nodes of one cluster live under `/lts/<cluster>`.
    pub cluster: String,
    /// The ZooKeeper session timeout to ask for: how long a node that
    /// stopped answering stays registered (and leading).
    pub session_timeout: Duration,
}

impl ZkConfig {
    /// Checks the connect string, the cluster name and the session timeout.
    pub fn parse(connect: &str, cluster: &str, session_timeout: Duration) -> Result<Self> {
        let config = ZkConfig {
            connect: connect.trim().to_string(),
            cluster: cluster.to_string(),
            session_timeout,
        };
        config.split_connect()?;
        check_cluster_name(cluster)?;
        if session_timeout < Duration::from_secs(1) || session_timeout > Duration::from_secs(60) {
            return Err(ClusterError::BadSessionTimeout(session_timeout));
        }
        Ok(config)
    }

    /// The hosts part of the connect string (`h1:2181,h2:2181`).
    pub fn hosts(&self) -> &str {
        match self.connect.find('/') {
            Some(i) => &self.connect[..i],
            None => &self.connect,
        }
    }

    /// The chroot (`/a/b`), or `""` when none was given.
    pub fn chroot(&self) -> &str {
        match self.connect.find('/') {
            Some(i) => &self.connect[i..],
            None => "",
        }
    }

    /// The znode under which this cluster's nodes live:
    /// `<chroot>/lts/<cluster>`.
    pub fn base_path(&self) -> String {
        format!("{}/lts/{}", self.chroot(), self.cluster)
    }

    fn split_connect(&self) -> Result<()> {
        let bad = |reason: String| ClusterError::BadConnectString {
            connect: self.connect.clone(),
            reason,
        };
        if self.connect.is_empty() {
            return Err(bad(
                "it is empty; expected host:port[,host:port...][/chroot]".into(),
            ));
        }
        for host in self.hosts().split(',') {
            let Some((name, port)) = host.rsplit_once(':') else {
                return Err(bad(format!("{host:?} has no port (host:port)")));
            };
            if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '@') {
                return Err(bad(format!("{host:?} has no usable host name")));
            }
            match port.parse::<u16>() {
                Ok(p) if p > 0 => {}
                _ => return Err(bad(format!("{host:?} has a bad port {port:?}"))),
            }
        }
        let chroot = self.chroot();
        if !chroot.is_empty() {
            if chroot == "/" || chroot.ends_with('/') {
                return Err(bad(format!("the chroot {chroot:?} must not end with '/'")));
            }
            for segment in chroot[1..].split('/') {
                if let Err(reason) = check_znode_name(segment) {
                    return Err(bad(format!(
                        "the chroot {chroot:?} has a bad part {segment:?}: {reason}"
                    )));
                }
            }
        }
        Ok(())
    }
}

fn check_cluster_name(name: &str) -> Result<()> {
    let bad = |reason| ClusterError::BadName {
        what: "cluster name",
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name == "." || name == ".." {
        return Err(bad("it must not be . or .."));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(bad("only letters, digits, '.', '_' and '-' are allowed"));
    }
    Ok(())
}

/// Whether `name` can be one znode name: not empty, not `.` or `..`, no
/// `/` and no control characters.
pub(crate) fn check_znode_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name == "." || name == ".." || name == "zookeeper" {
        return Err("it must not be ., .. or zookeeper");
    }
    if name.contains('/') {
        return Err("it must not contain '/'");
    }
    if name.chars().any(char::is_control) {
        return Err("it must not contain control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = DEFAULT_SESSION_TIMEOUT;

    #[test]
    fn hosts_and_chroot_are_split() {
        let c = ZkConfig::parse("a:2181,b:2182/x/y", "prod", T).unwrap();
        assert_eq!(c.hosts(), "a:2181,b:2182");
        assert_eq!(c.chroot(), "/x/y");
        assert_eq!(c.base_path(), "/x/y/lts/prod");
        let c = ZkConfig::parse("127.0.0.1:2181", "default", T).unwrap();
        assert_eq!(c.chroot(), "");
        assert_eq!(c.base_path(), "/lts/default");
    }

    #[test]
    fn bad_connect_strings_are_refused_naming_the_part() {
        for (connect, part) in [
            ("", "empty"),
            ("a", "no port"),
            ("a:x", "bad port"),
            ("a:2181,:2181", "no usable host"),
            ("a:2181/", "must not end"),
            ("a:2181/x//y", "bad part"),
        ] {
            let e = ZkConfig::parse(connect, "c", T).unwrap_err().to_string();
            assert!(e.contains(part), "{connect}: {e}");
            assert!(e.contains(&format!("{connect:?}")), "{e}");
        }
    }

    #[test]
    fn cluster_names_are_restricted() {
        for name in ["", "..", "a/b", "a b", "ü"] {
            let e = ZkConfig::parse("a:1", name, T).unwrap_err();
            assert!(matches!(e, ClusterError::BadName { .. }), "{name}: {e}");
            assert!(e.to_string().contains("cluster name"), "{e}");
        }
        ZkConfig::parse("a:1", "prod-1.eu_west", T).unwrap();
    }

    #[test]
    fn session_timeouts_are_bounded() {
        let e = ZkConfig::parse("a:1", "c", Duration::from_millis(10)).unwrap_err();
        assert!(e.to_string().contains("session timeout"), "{e}");
    }
}
