//! Which JobTracker to talk to: the discovery seam shared by the JobClient
//! and the TaskTracker.
//!
//! A [`Resolver`] knows the JobTracker addresses and hands them out in the
//! order to try them. A client sticks to the tracker that answered until it
//! fails, then moves on to the next; the first pick is random so that many
//! clients given the same list spread over the trackers. [`StaticResolver`]
//! serves a fixed list (the `--jobtracker` flags); a discovery service
//! implements the same trait with a list that changes, published through
//! [`Resolver::watch`].

use std::fmt;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::endpoint::{normalize_address, EndpointError};

/// Where the JobTrackers are, and which to try next.
///
/// Callers try [`addresses`](Resolver::addresses) in order, report the one
/// that answered with [`connected`](Resolver::connected) and each one that
/// failed (could not be reached, or its stream broke) with
/// [`failed`](Resolver::failed).
pub trait Resolver: Send + Sync + fmt::Debug {
    /// The addresses to try now, each once, in order: the tracker in use
    /// first; after a failure, the one after the tracker that failed last.
    /// Empty while none is known.
    fn addresses(&self) -> Vec<String>;

    /// `address` answered: it comes first until it fails.
    fn connected(&self, address: &str);

    /// `address` failed: the next [`addresses`](Resolver::addresses)
    /// starts after it.
    fn failed(&self, address: &str);

    /// Every known address, in a fixed order, updated whenever the set
    /// changes; a caller waits on it when the list is empty or to drop a
    /// connection to a tracker that left.
    fn watch(&self) -> watch::Receiver<Vec<String>>;
}

/// Why a resolver cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolverError {
    /// No address was given.
    #[error("no JobTracker address given")]
    NoAddresses,
    /// One of the addresses cannot be used.
    #[error(transparent)]
    Address(#[from] EndpointError),
}

/// A fixed list of JobTracker addresses.
pub struct StaticResolver {
    addresses: Vec<String>,
    // std Mutex: held only to read or update two numbers, never across an
    // await.
    state: Mutex<Pick>,
    list: watch::Sender<Vec<String>>,
}

#[derive(Debug)]
struct Pick {
    /// Index of the tracker in use, until it fails.
    current: Option<usize>,
    /// Where the next round starts when none is in use.
    next: usize,
}

impl StaticResolver {
    /// Normalises every address (see [`normalize_address`]), drops
    /// duplicates and starts at a random one.
    pub fn new<I, S>(addresses: I) -> Result<Self, ResolverError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let resolver = Self::starting_at(addresses, 0)?;
        let start = rand::random_range(0..resolver.addresses.len());
        resolver.state().next = start;
        Ok(resolver)
    }

    /// Like [`StaticResolver::new`], but the first round starts at the
    /// address at `start` (modulo their number): for callers that need a
    /// known order.
    pub fn starting_at<I, S>(addresses: I, start: usize) -> Result<Self, ResolverError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut normalized: Vec<String> = Vec::new();
        for address in addresses {
            let address = normalize_address(address.as_ref())?;
            if !normalized.contains(&address) {
                normalized.push(address);
            }
        }
        if normalized.is_empty() {
            return Err(ResolverError::NoAddresses);
        }
        let next = start % normalized.len();
        let (list, _) = watch::channel(normalized.clone());
        Ok(StaticResolver {
            addresses: normalized,
            state: Mutex::new(Pick {
                current: None,
                next,
            }),
            list,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Pick> {
        // The state is two indexes, valid whatever a panicking holder did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn index_of(&self, address: &str) -> Option<usize> {
        self.addresses.iter().position(|a| a == address)
    }
}

impl fmt::Debug for StaticResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticResolver")
            .field("addresses", &self.addresses)
            .field("state", &*self.state())
            .finish()
    }
}

impl Resolver for StaticResolver {
    fn addresses(&self) -> Vec<String> {
        let start = {
            let state = self.state();
            state.current.unwrap_or(state.next)
        };
        let n = self.addresses.len();
        (0..n)
            .map(|k| self.addresses[(start + k) % n].clone())
            .collect()
    }

    fn connected(&self, address: &str) {
        if let Some(index) = self.index_of(address) {
            self.state().current = Some(index);
        }
    }

    fn failed(&self, address: &str) {
        let Some(index) = self.index_of(address) else {
            return;
        };
        let mut state = self.state();
        if state.current == Some(index) {
            state.current = None;
        }
        state.next = (index + 1) % self.addresses.len();
    }

    fn watch(&self) -> watch::Receiver<Vec<String>> {
        self.list.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(start: usize) -> StaticResolver {
        StaticResolver::starting_at(["a:1", "http://b:2", "c:3"], start).unwrap()
    }

    #[test]
    fn addresses_are_normalised_and_each_tried_once_from_the_start() {
        let r = resolver(1);
        assert_eq!(r.addresses(), ["http://b:2", "http://c:3", "http://a:1"]);
        let r = resolver(4);
        assert_eq!(r.addresses(), ["http://b:2", "http://c:3", "http://a:1"]);
        let r = StaticResolver::starting_at(["a:1", "http://a:1/"], 0).unwrap();
        assert_eq!(r.addresses(), ["http://a:1"], "duplicates are dropped");
    }

    #[test]
    fn a_tracker_that_answers_is_sticky_until_it_fails() {
        let r = resolver(0);
        r.failed("http://a:1");
        r.connected("http://b:2");
        // A failure of another tracker does not move a client off a
        // working one.
        r.failed("http://c:3");
        assert_eq!(r.addresses()[0], "http://b:2");
        assert_eq!(r.addresses()[0], "http://b:2");
        r.failed("http://b:2");
        assert_eq!(r.addresses(), ["http://c:3", "http://a:1", "http://b:2"]);
        r.failed("http://c:3");
        r.failed("http://a:1");
        assert_eq!(r.addresses()[0], "http://b:2", "round and round");
        r.failed("http://nowhere:9");
        assert_eq!(
            r.addresses()[0],
            "http://b:2",
            "unknown addresses change nothing"
        );
    }

    #[test]
    fn the_first_pick_is_spread_over_the_list() {
        let firsts: std::collections::HashSet<String> = (0..200)
            .map(|_| {
                StaticResolver::new(["a:1", "b:2", "c:3"])
                    .unwrap()
                    .addresses()[0]
                    .clone()
            })
            .collect();
        // Each of three starts has a 1 in 3 chance; missing one in 200 draws
        // happens with probability under 1e-34.
        assert_eq!(firsts.len(), 3, "{firsts:?}");
    }

    #[test]
    fn bad_or_missing_addresses_are_refused() {
        assert_eq!(
            StaticResolver::new(Vec::<String>::new()).unwrap_err(),
            ResolverError::NoAddresses
        );
        // The scheme is kept: whether TLS is configured for it is the
        // endpoint builder's to check.
        let r = StaticResolver::new(["a:1", "https://b:2"]).expect("valid");
        assert!(r.addresses().contains(&"https://b:2".to_string()));
        let e = StaticResolver::new(["b"]).unwrap_err();
        assert!(matches!(
            e,
            ResolverError::Address(EndpointError::MissingPort { .. })
        ));
    }

    #[test]
    fn the_watched_list_holds_every_address() {
        let r = resolver(2);
        let list = r.watch();
        assert_eq!(*list.borrow(), ["http://a:1", "http://b:2", "http://c:3"]);
        r.failed("http://a:1");
        assert!(!list.has_changed().unwrap(), "a static list never changes");
    }
}
