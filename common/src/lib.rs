//! What the three roles share.
//!
//! Start with [`model`]: the job as the JobTracker stores it, the outcomes a
//! runner reports and the retry plans that decide what happens after an
//! error. [`convert`] turns wire messages into validated domain values and
//! back; [`plan`] reads retry plans in the text form people type;
//! [`limits`] lists the size limits every role enforces. The rest are
//! runtime helpers: [`config`] (flags, env vars and a TOML file),
//! [`runtime`] (tracing, shutdown signals) and [`metrics`].
//!
//! Every client of a JobTracker reaches it through [`endpoint`] (addresses,
//! timeouts, keep-alive; where TLS will plug in) and picks which tracker to
//! talk to through a [`resolver::Resolver`]. [`shell_job`] is the payload
//! of the TaskTracker's built-in shell runner, as the CLI writes it.
#![warn(missing_docs)]

pub mod config;
pub mod convert;
pub mod cron;
pub mod endpoint;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod resolver;
pub mod runtime;
pub mod shell_job;

pub use convert::ValidationError;
pub use model::*;

/// The durability engine over sled, for the embedded store and spools.
#[cfg(feature = "durable")]
pub mod durable;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Formats Unix milliseconds as RFC 3339 in UTC, for humans; `-` for none.
pub fn format_ms(ms: i64) -> String {
    if ms <= 0 {
        return "-".to_string();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_ms(1_000), "1970-01-01T00:00:01.000Z");
        assert_eq!(format_ms(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
        assert_eq!(format_ms(0), "-");
    }
}
