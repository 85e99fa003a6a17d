//! Limits that keep a JobTracker serving well-behaved peers while others
//! misbehave: connections per peer and in total, the HTTP/2 handshake and
//! idle timeouts, streams per connection, submits per second per credential
//! (per peer with auth off), node groups per submit, and the settings of the
//! quotas per node group ([`crate::quota`]). docs/limits.md lists them with
//! their settings.
//!
//! Connections are counted by a wrapper around the listener
//! ([`limit_connections`]): one over a cap is closed as soon as it is
//! accepted, before any byte is read, so it costs a file descriptor for
//! microseconds. Each accepted connection is a [`LimitedConn`] that closes
//! itself when its peer has not completed the HTTP/2 preface within the
//! handshake timeout, or has sent nothing for the idle timeout (the
//! server pings idle peers well within it, and any live HTTP/2 peer
//! answers).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;

/// The limits a JobTracker enforces on its peers.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerLimits {
    /// Open connections in total; more are closed at once.
    pub max_connections: usize,
    /// Open connections from one IP address; more are closed at once.
    pub max_connections_per_peer: usize,
    /// A connection that has not sent the HTTP/2 preface and its first
    /// frame within this is closed.
    pub handshake_timeout: Duration,
    /// A connection that has sent nothing for this long is closed; the
    /// server pings a quiet peer every third of it.
    pub idle_timeout: Duration,
    /// Concurrent streams (calls) on one connection.
    pub max_streams_per_connection: u32,
    /// `SubmitJobs` calls per second per credential with auth on, per IP
    /// address with auth off (a burst of as many is allowed); 0: no limit.
    pub max_submits_per_second: u32,
    /// Distinct node groups the jobs of one submit may name; jobs naming
    /// more are refused alone.
    pub max_node_groups_per_submit: usize,
    /// Feedback items sent to one subscriber and not acked.
    pub max_feedback_in_flight: usize,
    /// Unfinished jobs one TaskTracker node group may hold; jobs beyond
    /// are refused alone (see [`crate::quota`]). 0: no quota.
    pub max_jobs_per_node_group: u64,
    /// Bytes of payload and params the unfinished jobs of one node group
    /// may hold ([`crate::store::quota_bytes`]). 0: no quota.
    pub max_bytes_per_node_group: u64,
}

/// Default of [`ServerLimits::max_jobs_per_node_group`].
pub const DEFAULT_MAX_JOBS_PER_NODE_GROUP: u64 = 10_000_000;
/// Default of [`ServerLimits::max_bytes_per_node_group`]: 16 GiB.
pub const DEFAULT_MAX_BYTES_PER_NODE_GROUP: u64 = 16 << 30;

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 4096,
            max_connections_per_peer: 256,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_streams_per_connection: 1024,
            max_submits_per_second: 100_000,
            max_node_groups_per_submit: 100,
            max_feedback_in_flight: crate::feedback::DEFAULT_MAX_IN_FLIGHT,
            max_jobs_per_node_group: DEFAULT_MAX_JOBS_PER_NODE_GROUP,
            max_bytes_per_node_group: DEFAULT_MAX_BYTES_PER_NODE_GROUP,
        }
    }
}

/// Bytes of the HTTP/2 client preface and a frame header: a peer that
/// sent fewer has not begun to speak HTTP/2.
const HANDSHAKE_BYTES: usize = 24 + 9;

/// How often refused connections are logged at most.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Counts {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
    last_log: Option<Instant>,
    unlogged: u64,
}

/// Open connections, shared by the accept loop and the connections.
struct Registry {
    counts: Mutex<Counts>,
    limits: ServerLimits,
    metrics: Metrics,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for a connection from `peer`, or says which cap is
    /// reached.
    fn admit(&self, peer: IpAddr) -> Result<(), &'static str> {
        let mut c = self.lock();
        if c.total >= self.limits.max_connections {
            return Err("connections_total");
        }
        let n = c.per_peer.entry(peer).or_default();
        if *n >= self.limits.max_connections_per_peer {
            return Err("connections_per_peer");
        }
        *n += 1;
        c.total += 1;
        Ok(())
    }

    fn release(&self, peer: IpAddr) {
        let mut c = self.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                c.per_peer.remove(&peer);
            }
        }
    }

    fn refused(&self, peer: SocketAddr, limit: &'static str) {
        self.metrics.limit_hit(limit);
        let mut c = self.lock();
        let now = Instant::now();
        if c.last_log
            .is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_EVERY)
        {
            c.unlogged += 1;
            return;
        }
        c.last_log = Some(now);
        let unlogged = std::mem::take(&mut c.unlogged);
        let (cap, flag) = match limit {
            "connections_total" => (self.limits.max_connections, "--max-connections"),
            _ => (
                self.limits.max_connections_per_peer,
                "--max-connections-per-peer",
            ),
        };
        tracing::warn!(
            %peer,
            refused_since_last_line = unlogged,
            "closed a new connection: {cap} are open ({flag})"
        );
    }
}

/// A connection's place in the counts, given back when it closes.
struct Slot {
    registry: Arc<Registry>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.release(self.peer);
    }
}

/// An accepted connection that closes itself when its peer does not
/// complete the handshake in time or goes idle (see the module doc).
pub struct LimitedConn {
    inner: TcpStream,
    deadline: Pin<Box<Sleep>>,
    read: usize,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    _slot: Slot,
}

impl LimitedConn {
    fn timed_out(&self) -> io::Error {
        let why = if self.read < HANDSHAKE_BYTES {
            format!(
                "no HTTP/2 handshake within {} ms",
                self.handshake_timeout.as_millis()
            )
        } else {
            format!("nothing received for {} ms", self.idle_timeout.as_millis())
        };
        io::Error::new(io::ErrorKind::TimedOut, why)
    }
}

impl AsyncRead for LimitedConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    this.read = this.read.saturating_add(n);
                    if this.read >= HANDSHAKE_BYTES {
                        let at = Instant::now() + this.idle_timeout;
                        this.deadline.as_mut().reset(at);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    let e = this.timed_out();
                    tracing::debug!(peer = ?this.inner.peer_addr().ok(), "closing a connection: {e}");
                    return Poll::Ready(Err(e));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for LimitedConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for LimitedConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The connections `listener` accepts, within `limits`: those over a cap
/// are closed at once (counted in `lts_jobtracker_limited_total`), the
/// others have `TCP_NODELAY` set and the timeouts of [`LimitedConn`].
pub fn limit_connections(
    listener: TcpListener,
    limits: ServerLimits,
    metrics: Metrics,
) -> impl Stream<Item = io::Result<LimitedConn>> {
    let registry = Arc::new(Registry {
        counts: Mutex::new(Counts::default()),
        limits,
        metrics,
    });
    futures::stream::unfold((listener, registry), |(listener, registry)| async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait a
                    // little rather than spin; open connections close
                    // meanwhile.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(limit) = registry.admit(peer.ip()) {
                drop(stream);
                registry.refused(peer, limit);
                continue;
            }
            // `Server::tcp_nodelay` covers only listeners tonic binds
            // itself: without it Nagle's algorithm holds small messages
            // (an assignment, an ack) back for tens of milliseconds.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY: {e}");
            }
            let conn = LimitedConn {
                inner: stream,
                deadline: Box::pin(tokio::time::sleep(registry.limits.handshake_timeout)),
                read: 0,
                handshake_timeout: registry.limits.handshake_timeout,
                idle_timeout: registry.limits.idle_timeout,
                _slot: Slot {
                    registry: registry.clone(),
                    peer: peer.ip(),
                },
            };
            return Some((Ok(conn), (listener, registry)));
        }
    })
}

/// Submits per second per peer, as a token bucket per IP address.
pub struct SubmitRate {
    per_second: u32,
    buckets: Mutex<HashMap<RateKey, (f64, Instant)>>,
}

/// Whose budget a submit is taken from: the credential's name with auth
/// on, the peer's IP address with auth off.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// A peer's address (unknown peers share one bucket).
    Peer(Option<IpAddr>),
    /// A credential's name in the token file.
    Credential(String),
}

impl std::fmt::Display for RateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateKey::Peer(Some(ip)) => write!(f, "{ip}"),
            RateKey::Peer(None) => f.write_str("this peer"),
            RateKey::Credential(name) => write!(f, "credential `{name}`"),
        }
    }
}

/// Most peers whose buckets are remembered; full buckets are forgotten
/// first when there are more.
const MAX_RATE_PEERS: usize = 10_000;

impl SubmitRate {
    /// `per_second` calls per second per key, with a burst of as many; 0:
    /// no limit.
    pub fn new(per_second: u32) -> Self {
        SubmitRate {
            per_second,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one call from the budget of `key`; `Err` with the time until
    /// the next call would be allowed.
    pub fn take(&self, key: &RateKey) -> Result<(), Duration> {
        if self.per_second == 0 {
            return Ok(());
        }
        let rate = f64::from(self.per_second);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_RATE_PEERS && !buckets.contains_key(key) {
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < rate
            });
        }
        let (tokens, at) = buckets.entry(key.clone()).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn submits_beyond_the_rate_wait_for_the_bucket_to_refill() {
        let rate = SubmitRate::new(10);
        let peer = &RateKey::Peer(Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)));
        for _ in 0..10 {
            rate.take(peer).expect("within the burst");
        }
        let wait = rate.take(peer).expect_err("over the rate");
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        // Another peer, and a credential, have their own buckets.
        rate.take(&RateKey::Peer(Some(IpAddr::V4(std::net::Ipv4Addr::new(
            10, 0, 0, 1,
        )))))
        .expect("own bucket");
        rate.take(&RateKey::Credential("alice".into()))
            .expect("own bucket");
        tokio::time::advance(Duration::from_millis(100)).await;
        rate.take(peer).expect("refilled");
        assert!(SubmitRate::new(0).take(peer).is_ok());
    }

    #[test]
    fn the_caps_count_per_peer_and_in_total() {
        let registry = Registry {
            counts: Mutex::new(Counts::default()),
            limits: ServerLimits {
                max_connections: 3,
                max_connections_per_peer: 2,
                ..ServerLimits::default()
            },
            metrics: Metrics::new(),
        };
        let a = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(registry.admit(a), Ok(()));
        assert_eq!(registry.admit(a), Ok(()));
        assert_eq!(registry.admit(a), Err("connections_per_peer"));
        assert_eq!(registry.admit(b), Ok(()));
        assert_eq!(registry.admit(b), Err("connections_total"));
        registry.release(a);
        assert_eq!(registry.admit(b), Ok(()));
    }
}
