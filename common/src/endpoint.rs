//! How every gRPC client of the scheduler (the JobClient library, its CLI
//! and the TaskTracker) reaches a JobTracker: one place that reads an
//! address and sets the connection options.
//!
//! An address is `host:port` or `http://host:port`; both mean the same
//! plaintext connection. A missing port, an unknown scheme or a path is
//! refused with an [`EndpointError`] naming the address. `https://` is
//! refused too: TLS is not configured in this build, and running such an
//! address in plaintext would hide that from the operator. TLS settings and
//! credentials belong in [`EndpointOptions`] when they exist, so that every
//! client gets them at once.
//!
//! Per call: [`JobTrackerEndpoint::request`] sets the default deadline of a
//! unary call, and a service client built on the channel takes
//! [`MAX_MESSAGE_BYTES`](crate::limits::MAX_MESSAGE_BYTES) as its encoding
//! and decoding limit, the limit every role enforces.
//!
//! ```
//! use lts_common::endpoint::{EndpointOptions, JobTrackerEndpoint};
//!
//! let tracker = JobTrackerEndpoint::new("10.0.0.7:7070", &EndpointOptions::default())?;
//! assert_eq!(tracker.address(), "http://10.0.0.7:7070");
//! # Ok::<(), lts_common::endpoint::EndpointError>(())
//! ```

use std::time::Duration;

use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

/// Why an address cannot be used to reach a JobTracker. Each variant names
/// the address as it was given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The address is empty or blank.
    #[error("the JobTracker address `{address}` is empty; say host:port")]
    Empty {
        /// The address as given.
        address: String,
    },
    /// The address is not a URI at all.
    #[error("`{address}` is not a JobTracker address ({reason}); say host:port")]
    Invalid {
        /// The address as given.
        address: String,
        /// What the URI parser said.
        reason: String,
    },
    /// The address has no port; there is no default port to assume.
    #[error("the JobTracker address `{address}` names no port; say host:port")]
    MissingPort {
        /// The address as given.
        address: String,
    },
    /// The address names a path or a query; a JobTracker is a host and a
    /// port.
    #[error("the JobTracker address `{address}` has a path or query; say host:port")]
    HasPath {
        /// The address as given.
        address: String,
    },
    /// The scheme is neither `http` nor `https`.
    #[error(
        "the JobTracker address `{address}` has the unknown scheme `{scheme}`; \
         say http://host:port or host:port"
    )]
    UnknownScheme {
        /// The address as given.
        address: String,
        /// The scheme it names.
        scheme: String,
    },
    /// The address asks for TLS, which is not configured.
    #[error(
        "the JobTracker address `{address}` asks for TLS (https://), but TLS is not configured; \
         refusing to connect in plaintext instead: say http://host:port or host:port"
    )]
    TlsNotConfigured {
        /// The address as given.
        address: String,
    },
}

impl EndpointError {
    /// The address as it was given.
    pub fn address(&self) -> &str {
        match self {
            EndpointError::Empty { address }
            | EndpointError::Invalid { address, .. }
            | EndpointError::MissingPort { address }
            | EndpointError::HasPath { address }
            | EndpointError::UnknownScheme { address, .. }
            | EndpointError::TlsNotConfigured { address } => address,
        }
    }
}

/// Connection settings shared by every client of a JobTracker. Start from
/// [`EndpointOptions::default`] and change what matters; fields are added
/// as the product grows (TLS, credentials), so build it that way rather
/// than field by field.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointOptions {
    /// Longest wait for a TCP + HTTP/2 connection before the attempt fails
    /// (and a client with several addresses tries the next).
    pub connect_timeout: Duration,
    /// Default deadline of one unary call, sent to the JobTracker with the
    /// call; streams have none (see [`JobTrackerEndpoint::request`]).
    pub request_timeout: Duration,
    /// Interval of HTTP/2 pings on an open connection.
    pub keep_alive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keep_alive_timeout: Duration,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        EndpointOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            // A half-open TCP connection would otherwise hold a stream (and
            // whatever waits on it) until the kernel gives up, which takes
            // many minutes.
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(20),
        }
    }
}

impl EndpointOptions {
    /// These options with another connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// These options with another default deadline for unary calls.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// These options with other keep-alive settings.
    pub fn with_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keep_alive_interval = interval;
        self.keep_alive_timeout = timeout;
        self
    }
}

/// One JobTracker, ready to connect to: its normalised address and the
/// tonic endpoint built from it with the shared options.
#[derive(Clone, Debug)]
pub struct JobTrackerEndpoint {
    address: String,
    endpoint: Endpoint,
    request_timeout: Duration,
}

impl JobTrackerEndpoint {
    /// Reads `address` (see [`normalize_address`]) and applies `options`.
    pub fn new(address: &str, options: &EndpointOptions) -> Result<Self, EndpointError> {
        let normalized = normalize_address(address)?;
        let endpoint =
            Endpoint::from_shared(normalized.clone()).map_err(|e| EndpointError::Invalid {
                address: address.to_string(),
                reason: e.to_string(),
            })?;
        let endpoint = endpoint
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(options.keep_alive_interval)
            .keep_alive_timeout(options.keep_alive_timeout)
            .keep_alive_while_idle(true);
        Ok(JobTrackerEndpoint {
            address: normalized,
            endpoint,
            request_timeout: options.request_timeout,
        })
    }

    /// The address as `http://host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The tonic endpoint, for callers that manage channels themselves.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Opens a connection.
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        self.endpoint.connect().await
    }

    /// A unary request carrying the default deadline of
    /// [`EndpointOptions::request_timeout`]. Streams are built with
    /// `tonic::Request::new` instead: they live as long as their work.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.request_timeout);
        request
    }
}

/// Turns `host:port` or `http://host:port` (surrounding blanks and a
/// trailing `/` allowed) into `http://host:port`; refuses everything else,
/// naming the address and what is wrong.
pub fn normalize_address(address: &str) -> Result<String, EndpointError> {
    let trimmed = address.trim();
    if trimmed.is_empty() {
        return Err(EndpointError::Empty {
            address: address.to_string(),
        });
    }
    let (scheme, rest) = trimmed.split_once("://").unwrap_or(("http", trimmed));
    if scheme.eq_ignore_ascii_case("https") {
        return Err(EndpointError::TlsNotConfigured {
            address: address.to_string(),
        });
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(EndpointError::UnknownScheme {
            address: address.to_string(),
            scheme: scheme.to_string(),
        });
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let uri: Uri = format!("http://{rest}")
        .parse()
        .map_err(|e| EndpointError::Invalid {
            address: address.to_string(),
            reason: format!("{e}"),
        })?;
    let Some(authority) = uri.authority() else {
        return Err(EndpointError::Invalid {
            address: address.to_string(),
            reason: "it names no host".into(),
        });
    };
    if authority.host().is_empty() {
        return Err(EndpointError::Invalid {
            address: address.to_string(),
            reason: "it names no host".into(),
        });
    }
    if authority.as_str().contains('@') {
        return Err(EndpointError::Invalid {
            address: address.to_string(),
            reason: "credentials do not belong in the address".into(),
        });
    }
    if authority.port_u16().is_none() {
        return Err(EndpointError::MissingPort {
            address: address.to_string(),
        });
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(EndpointError::HasPath {
            address: address.to_string(),
        });
    }
    Ok(format!("http://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised_to_http_host_port() {
        for (given, expected) in [
            ("127.0.0.1:7070", "http://127.0.0.1:7070"),
            ("  tracker-1:7070 ", "http://tracker-1:7070"),
            ("http://tracker-1:7070", "http://tracker-1:7070"),
            ("http://tracker-1:7070/", "http://tracker-1:7070"),
            ("[::1]:7070", "http://[::1]:7070"),
            ("HTTP://Tracker:1", "http://Tracker:1"),
        ] {
            assert_eq!(normalize_address(given).as_deref(), Ok(expected), "{given}");
        }
    }

    #[test]
    fn a_missing_port_is_refused_naming_the_address() {
        for given in ["tracker-1", "http://tracker-1", "http://tracker-1/"] {
            let e = normalize_address(given).unwrap_err();
            assert_eq!(
                e,
                EndpointError::MissingPort {
                    address: given.into()
                }
            );
            let text = e.to_string();
            assert!(
                text.contains(&format!("`{given}`")) && text.contains("port"),
                "{text}"
            );
        }
    }

    #[test]
    fn https_is_refused_because_tls_is_not_configured() {
        let e = normalize_address("https://tracker-1:7070").unwrap_err();
        assert_eq!(e.address(), "https://tracker-1:7070");
        assert!(matches!(e, EndpointError::TlsNotConfigured { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("TLS is not configured"), "{text}");
        assert!(text.contains("`https://tracker-1:7070`"), "{text}");
        // Refused when building the endpoint as well: nothing connects.
        let e = JobTrackerEndpoint::new("https://tracker-1:7070", &EndpointOptions::default())
            .unwrap_err();
        assert!(matches!(e, EndpointError::TlsNotConfigured { .. }), "{e:?}");
    }

    #[test]
    fn unknown_schemes_and_other_garbage_are_refused() {
        let e = normalize_address("ftp://tracker-1:21").unwrap_err();
        assert_eq!(
            e,
            EndpointError::UnknownScheme {
                address: "ftp://tracker-1:21".into(),
                scheme: "ftp".into()
            }
        );
        assert!(e.to_string().contains("http://host:port"), "{e}");
        assert!(matches!(
            normalize_address(" "),
            Err(EndpointError::Empty { .. })
        ));
        assert!(matches!(
            normalize_address("http://"),
            Err(EndpointError::Invalid { .. })
        ));
        assert!(matches!(
            normalize_address("tracker 1:7070"),
            Err(EndpointError::Invalid { .. })
        ));
        assert!(matches!(
            normalize_address("tracker-1:7070/jobs"),
            Err(EndpointError::HasPath { .. })
        ));
        assert!(matches!(
            normalize_address("tracker-1:99999"),
            Err(EndpointError::Invalid { .. }) | Err(EndpointError::MissingPort { .. })
        ));
        assert!(matches!(
            normalize_address("user:secret@tracker-1:7070"),
            Err(EndpointError::Invalid { .. })
        ));
    }

    #[tokio::test]
    async fn an_endpoint_carries_the_options() {
        let options = EndpointOptions::default()
            .with_connect_timeout(Duration::from_millis(250))
            .with_request_timeout(Duration::from_secs(3));
        let tracker = JobTrackerEndpoint::new("127.0.0.1:7070", &options).unwrap();
        assert_eq!(tracker.address(), "http://127.0.0.1:7070");
        assert_eq!(
            tracker.endpoint().uri().to_string(),
            "http://127.0.0.1:7070/"
        );
        let request = tracker.request(());
        assert_eq!(
            request
                .metadata()
                .get("grpc-timeout")
                .map(|v| v.to_str().unwrap_or_default().to_string()),
            Some("3000000u".to_string())
        );
    }
}
