//! What a TaskTracker needs to know before it starts.

use std::time::Duration;

use lts_common::endpoint::{ClientTls, EndpointOptions, JobTrackerEndpoint, Token};
use lts_common::limits::{check_node_group, MAX_AHEAD_SLOTS, MAX_SLOTS};
use lts_common::resolver::StaticResolver;

use crate::error::{Error, Result};

/// Config of one TaskTracker. Build it with [`TaskTrackerConfig::new`] and
/// change the fields that matter; [`TaskTrackerConfig::validate`] runs
/// before anything starts.
#[derive(Clone, Debug)]
pub struct TaskTrackerConfig {
    /// Addresses of the JobTrackers, each `http://host:port` or
    /// `host:port`. The TaskTracker streams from one at a time, sticks to it
    /// while it works and moves to the next when it cannot be reached or its
    /// stream breaks.
    pub jobtrackers: Vec<String>,
    /// The node group whose jobs this TaskTracker runs.
    pub node_group: String,
    /// Jobs run at the same time.
    pub slots: u32,
    /// Jobs sent ahead of their trigger time (cron cycles, jobs at a time)
    /// held at once, each started at its instant; they take no slot while
    /// held. 0: the JobTracker sends every job once it is due.
    pub ahead_slots: u32,
    /// Name of this process as the JobTracker shows it; unique per process.
    pub identity: String,
    /// First step of the wait before reconnecting after the stream to the
    /// JobTracker broke (or no JobTracker answered); the step doubles per
    /// failed round up to
    /// [`reconnect_backoff_max`](Self::reconnect_backoff_max). Each wait is
    /// a random time between half and all of its step, so TaskTrackers
    /// reconnecting after a JobTracker restart spread out. Default 100 ms.
    pub reconnect_backoff_min: Duration,
    /// Largest step of the reconnect wait: once there, the TaskTracker
    /// tries again every half to whole of it. Default 1 s, so a JobTracker
    /// back from a restart gets its TaskTrackers within about a second.
    pub reconnect_backoff_max: Duration,
    /// On shutdown, how long running jobs may go on before they are cancelled.
    pub shutdown_grace: Duration,
    /// How long a runner may take to return once its cancellation token has
    /// fired (cancel, timeout, shutdown) before its task is aborted.
    pub cancel_grace: Duration,
    /// On shutdown, how long to wait for the JobTracker to acknowledge the
    /// last outcomes once every job has ended.
    pub flush_timeout: Duration,
    /// Limit for opening a connection and getting the JobTracker's welcome.
    pub connect_timeout: Duration,
    /// Stop working: once no JobTracker has been reachable for this long,
    /// the runs going on are cancelled and hand their jobs back (their
    /// outcomes are spooled and delivered on reconnecting). `None` (the
    /// default): runs go on however long the TaskTracker is cut off.
    pub stop_working_after: Option<Duration>,
    /// TLS to the JobTrackers: their CA, and this TaskTracker's client
    /// certificate for mutual TLS. `None`: plaintext, and an `https://`
    /// address is refused.
    pub tls: Option<ClientTls>,
    /// Bearer token (a `worker` credential) sent with the stream, for
    /// JobTrackers that run with a token file.
    pub token: Option<Token>,
}

impl TaskTrackerConfig {
    /// A config for `node_group` talking to `jobtracker`, with 4 slots,
    /// 4096 ahead slots and defaults for the rest. Set
    /// [`jobtrackers`](Self::jobtrackers) to give several JobTrackers.
    pub fn new(jobtracker: impl Into<String>, node_group: impl Into<String>) -> Self {
        TaskTrackerConfig {
            jobtrackers: vec![jobtracker.into()],
            node_group: node_group.into(),
            slots: 4,
            ahead_slots: 4096,
            identity: default_identity(),
            reconnect_backoff_min: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            cancel_grace: Duration::from_secs(2),
            flush_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            stop_working_after: None,
            tls: None,
            token: None,
        }
    }

    /// Checks every field; the error names the option that is wrong.
    pub fn validate(&self) -> Result<()> {
        check_node_group(&self.node_group).map_err(|message| Error::Config {
            field: "--node-group",
            message: format!("`{}` {message}", self.node_group),
        })?;
        if self.slots == 0 || self.slots > MAX_SLOTS {
            return Err(Error::Config {
                field: "--slots",
                message: format!("{} is out of range; say 1 to {MAX_SLOTS}", self.slots),
            });
        }
        if self.ahead_slots > MAX_AHEAD_SLOTS {
            return Err(Error::Config {
                field: "--ahead-slots",
                message: format!(
                    "{} is out of range; say 0 (off) to {MAX_AHEAD_SLOTS}",
                    self.ahead_slots
                ),
            });
        }
        if self.identity.trim().is_empty() {
            return Err(Error::Config {
                field: "--identity",
                message: "is empty".into(),
            });
        }
        let options = self.endpoint_options();
        for address in self.jobtracker_addresses()? {
            JobTrackerEndpoint::new(&address, &options).map_err(|e| Error::Config {
                field: "--jobtracker",
                message: e.to_string(),
            })?;
        }
        if self.stop_working_after.is_some_and(|d| d.is_zero()) {
            return Err(Error::Config {
                field: "--stop-working-after",
                message: "must be above zero (leave it out to turn it off)".into(),
            });
        }
        if self.reconnect_backoff_min.is_zero()
            || self.reconnect_backoff_max < self.reconnect_backoff_min
        {
            return Err(Error::Config {
                field: "reconnect backoff",
                message: "the first wait must be above zero and at most the longest".into(),
            });
        }
        Ok(())
    }

    /// The JobTracker addresses, normalised to `http://host:port`, without
    /// duplicates, in the order given.
    pub fn jobtracker_addresses(&self) -> Result<Vec<String>> {
        let resolver = self.resolver()?;
        Ok(lts_common::resolver::Resolver::watch(&resolver)
            .borrow()
            .clone())
    }

    /// A resolver over the configured addresses; the error names the bad
    /// one.
    pub(crate) fn resolver(&self) -> Result<StaticResolver> {
        StaticResolver::new(&self.jobtrackers).map_err(|e| Error::Config {
            field: "--jobtracker",
            message: e.to_string(),
        })
    }

    /// How connections to a JobTracker are made.
    pub(crate) fn endpoint_options(&self) -> EndpointOptions {
        EndpointOptions::default()
            .with_connect_timeout(self.connect_timeout)
            .with_tls(self.tls.clone())
            .with_token(self.token.clone())
    }
}

/// `host:pid:random`, unique per process and readable in the JobTracker's
/// list of workers.
pub fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_string());
    format!(
        "{host}:{}:{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let c = TaskTrackerConfig::new("127.0.0.1:7070", "workers");
        c.validate().unwrap();
        assert_eq!(c.jobtracker_addresses().unwrap(), ["http://127.0.0.1:7070"]);
        assert_eq!(c.identity.split(':').count(), 3, "{}", c.identity);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let mut c = TaskTrackerConfig::new("http://127.0.0.1:7070", "workers");
        c.slots = 0;
        assert!(c.validate().unwrap_err().to_string().contains("--slots"));
        c.slots = MAX_SLOTS + 1;
        assert!(c.validate().unwrap_err().to_string().contains("--slots"));
        c.slots = 1;
        c.node_group = "a b".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--node-group"));
        c.node_group = "ok".into();
        c.jobtrackers = vec!["ftp://x:1".into()];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--jobtracker"));
        c.jobtrackers = vec!["http://".into()];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--jobtracker"));
    }

    #[test]
    fn several_jobtrackers_are_checked_and_the_bad_one_named() {
        let mut c = TaskTrackerConfig::new("10.0.0.1:7070", "workers");
        c.jobtrackers.push("http://10.0.0.2:7070/".into());
        c.jobtrackers.push("10.0.0.1:7070".into());
        c.validate().unwrap();
        assert_eq!(
            c.jobtracker_addresses().unwrap(),
            ["http://10.0.0.1:7070", "http://10.0.0.2:7070"],
            "normalised, in order, without duplicates"
        );
        c.jobtrackers.push("10.0.0.3".into());
        let message = c.validate().unwrap_err().to_string();
        assert!(message.starts_with("--jobtracker:"), "{message}");
        assert!(message.contains("`10.0.0.3`"), "{message}");
        assert!(message.contains("port"), "{message}");
        c.jobtrackers.clear();
        let message = c.validate().unwrap_err().to_string();
        assert!(message.contains("--jobtracker"), "{message}");
    }

    #[test]
    fn an_https_jobtracker_is_refused_without_a_ca() {
        let mut c = TaskTrackerConfig::new("10.0.0.1:7070", "workers");
        c.jobtrackers.push("https://10.0.0.2:7070".into());
        let message = c.validate().unwrap_err().to_string();
        assert!(message.starts_with("--jobtracker:"), "{message}");
        assert!(message.contains("no CA certificate"), "{message}");
        assert!(message.contains("`https://10.0.0.2:7070`"), "{message}");
    }

    #[test]
    fn reconnect_waits_default_to_quick_retries_and_are_checked() {
        let mut c = TaskTrackerConfig::new("http://127.0.0.1:7070", "workers");
        assert_eq!(c.reconnect_backoff_min, Duration::from_millis(100));
        assert_eq!(c.reconnect_backoff_max, Duration::from_secs(1));
        c.reconnect_backoff_min = Duration::ZERO;
        let message = c.validate().unwrap_err().to_string();
        assert!(message.contains("reconnect backoff"), "{message}");
        c.reconnect_backoff_min = Duration::from_secs(2);
        let message = c.validate().unwrap_err().to_string();
        assert!(message.contains("at most the longest"), "{message}");
    }

    #[test]
    fn ahead_slots_are_bounded_and_zero_turns_them_off() {
        let mut c = TaskTrackerConfig::new("http://127.0.0.1:7070", "workers");
        assert_eq!(c.ahead_slots, 4096);
        c.ahead_slots = 0;
        c.validate().unwrap();
        c.ahead_slots = MAX_AHEAD_SLOTS;
        c.validate().unwrap();
        c.ahead_slots = MAX_AHEAD_SLOTS + 1;
        let message = c.validate().unwrap_err().to_string();
        assert!(message.contains("--ahead-slots"), "{message}");
        assert!(message.contains(&MAX_AHEAD_SLOTS.to_string()), "{message}");
    }
}
