//! A TCP proxy that a test puts between a client and a server to cut the
//! network between them and heal it again.
//!
//! [`Proxy::start`] listens on a port the kernel picks on 127.0.0.1 and
//! forwards every connection it accepts to its target, one thread per
//! direction. [`Proxy::cut`] is a partition: every byte sent either way
//! on an open connection is dropped, neither end is told (no FIN, no
//! reset: the connection goes silent, as when a cable is pulled), and new
//! connections are accepted and held without being forwarded (the peer
//! waits, as for a host that does not answer). [`Proxy::restore`] heals
//! it: the connections that lived through the cut are closed (their bytes
//! are gone, so a peer must connect again) and new ones are forwarded.
//! Dropping the proxy closes every connection and stops its threads.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use anyhow::{Context, Result};

/// State shared by the proxy and its threads.
#[derive(Default)]
struct Shared {
    /// Whether the network is cut.
    cut: AtomicBool,
    /// Set on drop: the accept loop ends.
    stop: AtomicBool,
    /// Every socket open on either side (forwarded or held), to close
    /// them on restore and on drop.
    sockets: Mutex<Vec<TcpStream>>,
    /// Connections accepted, forwarded or not.
    accepted: AtomicUsize,
}

impl Shared {
    fn keep(&self, s: &TcpStream) {
        if let Ok(clone) = s.try_clone() {
            self.sockets
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(clone);
        }
    }

    /// Closes every socket kept so far, both ways.
    fn close_all(&self) {
        let sockets =
            std::mem::take(&mut *self.sockets.lock().unwrap_or_else(PoisonError::into_inner));
        for s in sockets {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// A TCP proxy to one target; see the module documentation.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on 127.0.0.1, port 0, and forwards to `target`.
    pub fn start(target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the proxy")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accept = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("proxy-{addr}"))
                .spawn(move || accept_loop(listener, target, shared))?
        };
        Ok(Proxy {
            addr,
            target,
            shared,
            accept: Some(accept),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` and [`Proxy::addr`].
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Connections accepted so far, forwarded or held.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Whether the network is cut now.
    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Cuts the network: open connections go silent both ways and new ones
    /// are held unanswered, until [`Proxy::restore`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
    }

    /// Heals a cut: closes every connection open now (those that went
    /// silent and those held) and forwards new ones again.
    pub fn restore(&self) {
        // Clear the flag first: a connection accepted from here on is
        // forwarded, and one accepted before is closed below.
        self.shared.cut.store(false, Ordering::SeqCst);
        self.shared.close_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop, blocked in accept().
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        self.shared.close_all();
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = conn else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_nodelay(true);
        shared.keep(&client);
        if shared.cut.load(Ordering::SeqCst) {
            // A black hole: accepted (and kept, to be closed on restore),
            // never forwarded.
            continue;
        }
        let Ok(server) = TcpStream::connect(target) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = server.set_nodelay(true);
        shared.keep(&server);
        let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            continue;
        };
        for (from, to) in [(client, s2), (server, c2)] {
            let shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name("proxy-pipe".into())
                .spawn(move || pipe(from, to, &shared));
            if spawned.is_err() {
                return;
            }
        }
    }
}

/// Copies `from` to `to` until either ends; while the network is cut the
/// bytes read are dropped. An end seen while cut is not passed on (the
/// other side must not learn of it); otherwise both sides are closed.
fn pipe(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if shared.cut.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    if !shared.cut.load(Ordering::SeqCst) {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut r = c.try_clone().unwrap();
                    let mut w = c;
                    let _ = std::io::copy(&mut r, &mut w);
                });
            }
        });
        addr
    }

    fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn forwards_goes_silent_when_cut_and_forwards_again_when_restored() {
        let proxy = Proxy::start(echo_server()).unwrap();
        let mut a = TcpStream::connect(proxy.addr()).unwrap();
        a.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert_eq!(round_trip(&mut a, b"hello").unwrap(), b"hello");

        proxy.cut();
        // Silent, not closed: the read times out.
        let e = round_trip(&mut a, b"lost").unwrap_err();
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e:?}"
        );
        // A new connection is accepted and held.
        let mut b = TcpStream::connect(proxy.addr()).unwrap();
        b.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(round_trip(&mut b, b"held").is_err());

        proxy.restore();
        // The connections of the cut are closed; a new one is forwarded.
        let mut rest = Vec::new();
        assert_eq!(a.read_to_end(&mut rest).unwrap_or_default(), 0);
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(round_trip(&mut c, b"again").unwrap(), b"again");
        assert_eq!(proxy.accepted(), 3);
    }
}
