//! How every gRPC client of the scheduler (the JobClient library, its CLI
//! and the TaskTracker) reaches a JobTracker: one place that reads an
//! address and sets the connection options.
//!
//! An address is `host:port`, `http://host:port` or `https://host:port`. A
//! missing port, an unknown scheme or a path is refused with an
//! [`EndpointError`] naming the address.
//!
//! TLS and credentials live in [`EndpointOptions`], so every client gets
//! them at once:
//! - with [`EndpointOptions::tls`] set (a CA certificate, and a client
//!   certificate for mutual TLS), every address is reached over TLS, also
//!   one written `host:port` or `http://host:port` (a JobTracker list from
//!   ZooKeeper names addresses that way);
//! - without it, an `https://` address is an error naming the address and
//!   the missing CA, never a plaintext connection in its place;
//! - with [`EndpointOptions::token`] set, every call carries it as
//!   `authorization: Bearer <token>` (see [`TrackerChannel`]).
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

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tonic::codegen::http::Uri;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A connection to a JobTracker that adds the client's credentials (if
/// any) to every call. Service clients are built on it like on a
/// [`Channel`].
pub type TrackerChannel = InterceptedService<Channel, Credentials>;

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
    /// The address asks for TLS, and no CA certificate is configured to
    /// check the JobTracker's certificate with.
    #[error(
        "the JobTracker address `{address}` asks for TLS (https://), but no CA certificate is \
         configured (--tls-ca); refusing to connect in plaintext instead"
    )]
    TlsNotConfigured {
        /// The address as given.
        address: String,
    },
    /// The TLS settings could not be applied to the address.
    #[error("the JobTracker address `{address}`: TLS settings: {reason}")]
    Tls {
        /// The address as given.
        address: String,
        /// What tonic said.
        reason: String,
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
            | EndpointError::TlsNotConfigured { address }
            | EndpointError::Tls { address, .. } => address,
        }
    }
}

/// How a client checks a JobTracker's certificate, and which certificate
/// it shows for mutual TLS. Read from PEM files once, by
/// [`ClientTls::from_files`].
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("client_certificate", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// A TLS file that cannot be read; names the flag and the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {path}: {reason}")]
pub struct TlsFileError {
    /// The option that named the file.
    pub flag: &'static str,
    /// The file.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// Reads a PEM file named by `flag`; it must hold at least one PEM block.
pub fn read_pem(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    let error = |reason: String| TlsFileError {
        flag,
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(error("holds no PEM block (-----BEGIN ...)".into()));
    }
    Ok(bytes)
}

impl ClientTls {
    /// Trusts the CA certificates in the PEM file `ca` (flag `--tls-ca`)
    /// and, for mutual TLS, shows the certificate chain `cert` with its
    /// private key `key` (flags `--tls-cert` and `--tls-key`). A certificate
    /// without its key, or the other way round, is an error naming both.
    pub fn from_files(
        ca: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, TlsFileError> {
        let ca_pem = read_pem("--tls-ca", ca)?;
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => {
                Some((read_pem("--tls-cert", cert)?, read_pem("--tls-key", key)?))
            }
            (None, None) => None,
            (Some(cert), None) => {
                return Err(TlsFileError {
                    flag: "--tls-key",
                    path: cert.display().to_string(),
                    reason: "--tls-cert needs --tls-key (the certificate's private key)".into(),
                })
            }
            (None, Some(key)) => {
                return Err(TlsFileError {
                    flag: "--tls-cert",
                    path: key.display().to_string(),
                    reason: "--tls-key needs --tls-cert (the certificate it belongs to)".into(),
                })
            }
        };
        Ok(ClientTls {
            ca_pem,
            identity,
            domain: None,
        })
    }

    /// From PEM text already in memory: the CA, and optionally a
    /// certificate chain and its key for mutual TLS.
    pub fn from_pem(ca: impl Into<Vec<u8>>, identity: Option<(Vec<u8>, Vec<u8>)>) -> Self {
        ClientTls {
            ca_pem: ca.into(),
            identity,
            domain: None,
        }
    }

    /// Checks the JobTracker's certificate against this name instead of
    /// the host of the address (for trackers reached by IP address whose
    /// certificates name a host).
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    fn config(&self) -> ClientTlsConfig {
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.ca_pem.clone()));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert.clone(), key.clone()));
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        config
    }
}

/// A bearer token a client sends with every call. Its `Debug` does not
/// show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Arc<str>);

impl Token {
    /// A token from its text; surrounding blanks (a file's last newline)
    /// are dropped. Empty, or with characters a header cannot carry, it is
    /// refused.
    pub fn new(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the token is empty".into());
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token holds characters other than printable ASCII".into());
        }
        Ok(Token(text.into()))
    }

    /// Reads a token from the file named by `flag`.
    pub fn from_file(flag: &'static str, path: &Path) -> Result<Self, TlsFileError> {
        let error = |reason: String| TlsFileError {
            flag,
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        Token::new(&text).map_err(error)
    }

    /// The token's text.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Clone, Debug, Default)]
pub struct Credentials(Option<MetadataValue<Ascii>>);

impl Credentials {
    /// Credentials sending `token`, or none.
    pub fn new(token: Option<&Token>) -> Self {
        Credentials(token.and_then(|t| {
            format!("Bearer {}", t.secret())
                .parse::<MetadataValue<Ascii>>()
                .ok()
        }))
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Connection settings shared by every client of a JobTracker. Start from
/// [`EndpointOptions::default`] and change what matters; fields are added
/// as the product grows, so build it that way rather than field by field.
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
    /// TLS to every JobTracker; `None`: plaintext, and `https://`
    /// addresses are refused.
    pub tls: Option<ClientTls>,
    /// The bearer token sent with every call; `None`: no credential
    /// beyond a client certificate.
    pub token: Option<Token>,
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
            tls: None,
            token: None,
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

    /// These options with TLS to every JobTracker (or none).
    pub fn with_tls(mut self, tls: Option<ClientTls>) -> Self {
        self.tls = tls;
        self
    }

    /// These options with a bearer token on every call (or none).
    pub fn with_token(mut self, token: Option<Token>) -> Self {
        self.token = token;
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
    credentials: Credentials,
}

impl JobTrackerEndpoint {
    /// Reads `address` (see [`normalize_address`]) and applies `options`.
    pub fn new(address: &str, options: &EndpointOptions) -> Result<Self, EndpointError> {
        let mut normalized = normalize_address(address)?;
        let https = normalized.starts_with("https://");
        if https && options.tls.is_none() {
            return Err(EndpointError::TlsNotConfigured {
                address: address.to_string(),
            });
        }
        if !https && options.tls.is_some() {
            // TLS configured: never plaintext, whatever the address says.
            normalized = normalized.replacen("http://", "https://", 1);
        }
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
        let endpoint = match &options.tls {
            Some(tls) => endpoint
                .tls_config(tls.config())
                .map_err(|e| EndpointError::Tls {
                    address: address.to_string(),
                    reason: error_chain(&e),
                })?,
            None => endpoint,
        };
        Ok(JobTrackerEndpoint {
            address: normalized,
            endpoint,
            request_timeout: options.request_timeout,
            credentials: Credentials::new(options.token.as_ref()),
        })
    }

    /// The address as `http://host:port`, or `https://host:port` over TLS.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The tonic endpoint, for callers that manage channels themselves.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Opens a connection.
    pub async fn connect(&self) -> Result<TrackerChannel, tonic::transport::Error> {
        let channel = self.endpoint.connect().await?;
        Ok(InterceptedService::new(channel, self.credentials.clone()))
    }

    /// A connection opened on its first call.
    pub fn connect_lazy(&self) -> TrackerChannel {
        InterceptedService::new(self.endpoint.connect_lazy(), self.credentials.clone())
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

/// An error with its sources, `outer: inner: ...`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Turns `host:port` or `http://host:port` (surrounding blanks and a
/// trailing `/` allowed) into `http://host:port`, and `https://host:port`
/// into itself; refuses everything else, naming the address and what is
/// wrong.
pub fn normalize_address(address: &str) -> Result<String, EndpointError> {
    let trimmed = address.trim();
    if trimmed.is_empty() {
        return Err(EndpointError::Empty {
            address: address.to_string(),
        });
    }
    let (scheme, rest) = trimmed.split_once("://").unwrap_or(("http", trimmed));
    let https = scheme.eq_ignore_ascii_case("https");
    if !https && !scheme.eq_ignore_ascii_case("http") {
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
    let scheme = if https { "https" } else { "http" };
    Ok(format!("{scheme}://{authority}"))
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
    fn https_without_a_ca_is_refused_naming_the_address_and_the_flag() {
        assert_eq!(
            normalize_address("HTTPS://tracker-1:7070/").as_deref(),
            Ok("https://tracker-1:7070")
        );
        let e = JobTrackerEndpoint::new("https://tracker-1:7070", &EndpointOptions::default())
            .unwrap_err();
        assert_eq!(e.address(), "https://tracker-1:7070");
        assert!(matches!(e, EndpointError::TlsNotConfigured { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("no CA certificate"), "{text}");
        assert!(text.contains("--tls-ca"), "{text}");
        assert!(text.contains("`https://tracker-1:7070`"), "{text}");
    }

    #[test]
    fn with_tls_configured_every_address_is_reached_over_tls() {
        let options = EndpointOptions::default().with_tls(Some(ClientTls::from_pem(
            b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".to_vec(),
            None,
        )));
        for given in [
            "tracker-1:7070",
            "http://tracker-1:7070",
            "https://tracker-1:7070",
        ] {
            let tracker = JobTrackerEndpoint::new(given, &options).expect("endpoint");
            assert_eq!(tracker.address(), "https://tracker-1:7070", "{given}");
        }
    }

    #[test]
    fn a_token_is_never_shown() {
        let token = Token::new(" s3cret\n").expect("token");
        assert_eq!(token.secret(), "s3cret");
        let shown = format!("{:?}", EndpointOptions::default().with_token(Some(token)));
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(Token::new("  ").is_err());
        assert!(Token::new("a b").is_err());
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
