//! JobTracker addresses from the cluster view, handed out the way
//! `StaticResolver` does.

use std::fmt;
use std::sync::Mutex;

use lts_common::endpoint::normalize_address;
use lts_common::resolver::Resolver;
use tokio::sync::watch;

/// A [`Resolver`] over the JobTrackers registered in ZooKeeper: the first
/// pick is random, a tracker that answered stays first until it fails or
/// leaves the cluster, then the next one is tried.
pub struct ClusterResolver {
    // std Mutex: held only to read or replace the list and two cursors,
    // never across an await.
    state: Mutex<State>,
    list: watch::Sender<Vec<String>>,
}

#[derive(Debug)]
struct State {
    /// Every known address, sorted.
    addresses: Vec<String>,
    /// The tracker in use, until it fails or leaves.
    current: Option<String>,
    /// Where the next round starts when none is in use.
    next: usize,
}

impl ClusterResolver {
    /// An empty resolver: [`Resolver::addresses`] is empty until
    /// [`ClusterResolver::update`] gives it JobTrackers.
    pub fn new() -> Self {
        ClusterResolver {
            state: Mutex::new(State {
                addresses: Vec::new(),
                current: None,
                next: rand::random_range(0..1024),
            }),
            list: watch::Sender::new(Vec::new()),
        }
    }

    /// Replaces the known addresses. Addresses that cannot be used are
    /// skipped with a warning; a tracker in use that left is dropped.
    pub fn update<I, S>(&self, addresses: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut normalized: Vec<String> = Vec::new();
        for address in addresses {
            let address = address.as_ref();
            if address.is_empty() {
                continue;
            }
            match normalize_address(address) {
                Ok(a) => normalized.push(a),
                Err(e) => tracing::warn!(address, error = %e, "skipping a JobTracker address"),
            }
        }
        normalized.sort();
        normalized.dedup();
        {
            let mut state = self.state();
            if state.addresses == normalized {
                return;
            }
            if let Some(current) = &state.current {
                if !normalized.contains(current) {
                    state.current = None;
                }
            }
            state.addresses = normalized.clone();
        }
        self.list.send_replace(normalized);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a list and two cursors, valid whatever a panicking
        // holder did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for ClusterResolver {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ClusterResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterResolver")
            .field("state", &*self.state())
            .finish()
    }
}

impl Resolver for ClusterResolver {
    fn addresses(&self) -> Vec<String> {
        let state = self.state();
        let n = state.addresses.len();
        if n == 0 {
            return Vec::new();
        }
        let start = state
            .current
            .as_ref()
            .and_then(|c| state.addresses.iter().position(|a| a == c))
            .unwrap_or(state.next % n);
        (0..n)
            .map(|k| state.addresses[(start + k) % n].clone())
            .collect()
    }

    fn connected(&self, address: &str) {
        let mut state = self.state();
        if state.addresses.iter().any(|a| a == address) {
            state.current = Some(address.to_string());
        }
    }

    fn failed(&self, address: &str) {
        let mut state = self.state();
        let Some(index) = state.addresses.iter().position(|a| a == address) else {
            return;
        };
        if state.current.as_deref() == Some(address) {
            state.current = None;
        }
        state.next = index + 1;
    }

    fn watch(&self) -> watch::Receiver<Vec<String>> {
        self.list.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_list_and_sticks_to_a_tracker_until_it_fails_or_leaves() {
        let r = ClusterResolver::new();
        let list = r.watch();
        assert!(r.addresses().is_empty());
        r.update(["b:2", "a:1", "", "ftp://bad:3"]);
        assert_eq!(*list.borrow(), ["http://a:1", "http://b:2"]);
        let first = r.addresses()[0].clone();
        r.connected(&first);
        r.update(["a:1", "b:2", "c:3"]);
        assert_eq!(r.addresses()[0], first, "a joining tracker moves no one");
        assert_eq!(r.addresses().len(), 3);
        r.failed(&first);
        assert_ne!(r.addresses()[0], first);
        let second = r.addresses()[0].clone();
        r.connected(&second);
        r.update(
            ["a:1", "b:2", "c:3"]
                .into_iter()
                .filter(|a| !second.ends_with(a)),
        );
        assert!(
            !r.addresses().contains(&second),
            "a tracker that left is dropped"
        );
        assert_eq!(r.addresses().len(), 2);
        r.update(Vec::<String>::new());
        assert!(r.addresses().is_empty());
        assert!(list.borrow().is_empty());
    }

    #[test]
    fn the_first_pick_is_spread_over_the_list() {
        let firsts: std::collections::HashSet<String> = (0..200)
            .map(|_| {
                let r = ClusterResolver::new();
                r.update(["a:1", "b:2", "c:3"]);
                r.addresses()[0].clone()
            })
            .collect();
        assert_eq!(firsts.len(), 3, "{firsts:?}");
    }
}
