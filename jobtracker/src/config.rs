//! The `jobtracker` command line: flags, env vars and a TOML file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use lts_common::runtime::LogFormat;

use crate::{Error, StoreConfig, TrackerConfig};

/// Receives, stores and dispatches jobs. With no other store configured it
/// runs embedded: jobs live in sled under --data-dir.
#[derive(Parser, Debug, Clone)]
#[command(name = "jobtracker", version)]
pub struct Cli {
    /// TOML file with any of these options; keys are the long flag names.
    /// Flags and env vars win over the file.
    #[arg(long, env = "JOBTRACKER_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address the gRPC services listen on.
    #[arg(long, env = "JOBTRACKER_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,

    /// Directory of the embedded store.
    #[arg(
        long,
        env = "JOBTRACKER_DATA_DIR",
        default_value = "lts-data/jobtracker"
    )]
    pub data_dir: PathBuf,

    /// Serve Prometheus metrics on this address (GET /metrics). Off when
    /// not given.
    #[arg(long, env = "JOBTRACKER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Heartbeat interval on TaskTracker streams; a stream silent for three
    /// intervals is dropped and its runs are given to others. 100ms..=60s.
    #[arg(long, env = "JOBTRACKER_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// How long shutdown waits for open streams.
    #[arg(long, env = "JOBTRACKER_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Log format.
    #[arg(long, env = "JOBTRACKER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Check the configuration, print it, and exit.
    #[arg(long)]
    pub check_config: bool,
}

impl TryFrom<&Cli> for TrackerConfig {
    type Error = Error;

    fn try_from(cli: &Cli) -> Result<Self, Error> {
        if cli.heartbeat_interval < Duration::from_millis(100)
            || cli.heartbeat_interval > Duration::from_secs(60)
        {
            return Err(Error::Config(format!(
                "--heartbeat-interval: {} is outside 100ms..=60s",
                humantime::format_duration(cli.heartbeat_interval)
            )));
        }
        if cli.data_dir.as_os_str().is_empty() {
            return Err(Error::Config("--data-dir: is empty".into()));
        }
        Ok(TrackerConfig {
            store: StoreConfig::Sled {
                data_dir: cli.data_dir.clone(),
            },
            heartbeat_interval: cli.heartbeat_interval,
            metrics_addr: cli.metrics_addr,
            shutdown_timeout: cli.shutdown_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_embedded_on_loopback() {
        let cli = Cli::try_parse_from(["jobtracker"]).expect("parse");
        assert_eq!(cli.listen.ip().to_string(), "127.0.0.1");
        let config = TrackerConfig::try_from(&cli).expect("valid");
        assert!(matches!(config.store, StoreConfig::Sled { .. }));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = Cli::try_parse_from(["jobtracker", "--listen", "nowhere"]).unwrap_err();
        assert!(e.to_string().contains("--listen"), "{e}");
        let cli =
            Cli::try_parse_from(["jobtracker", "--heartbeat-interval", "5ms"]).expect("parse");
        let e = TrackerConfig::try_from(&cli).unwrap_err();
        assert!(e.to_string().contains("--heartbeat-interval"), "{e}");
    }
}
