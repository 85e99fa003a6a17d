//! The embedded store's task-id index, in memory.
//!
//! Dedup on task id covers every job ever stored in a node group, so each
//! submit and each cron cycle asks "does (node group, task id) hold a job
//! already?". Keeping the answer in memory saves a key per job on disk and
//! a lookup in sled per submit; the index is rebuilt from the job records
//! when the store opens (they carry their node group and task id).
//!
//! An entry is a 64-bit hash of the pair and the job id as a number (job
//! ids are UUIDs): about 30 bytes per job. A pair whose hash another pair
//! holds already, or a job id that is not a UUID, goes to a small exact
//! map, so a hash collision never makes two tasks one.
//!
//! The entries are spread over [`SHARDS`] maps. One map of every job grows
//! by doubling, and each doubling moved all its entries at once under the
//! store's lock: `examples/bench` showed submit-to-start spikes of 50-110
//! ms at the same points of every run, 57,000 and 115,000 stored jobs,
//! which went away with the shards. A shard doubles at a 256th of the
//! size.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

/// Hashes with fixed keys: the same pair gives the same hash in every run.
#[derive(Clone, Copy, Default)]
struct FixedState;

impl BuildHasher for FixedState {
    type Hasher = std::hash::DefaultHasher;

    fn build_hasher(&self) -> Self::Hasher {
        std::hash::DefaultHasher::new()
    }
}

/// Hash keys are already well mixed: no second hashing for the map.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdentityState = std::hash::BuildHasherDefault<IdentityHasher>;

/// Maps the hashed entries are spread over.
const SHARDS: usize = 256;

type Shard = HashMap<u64, (u128, u64), IdentityState>;

/// The shard of `hash`: bits 32..40, which the map's own use of the hash
/// leaves alone (its bucket comes from the low bits, its tag from the top
/// seven), so the entries of a shard still spread over its buckets.
fn shard_of(hash: u64) -> usize {
    ((hash >> 32) as usize) % SHARDS
}

/// Which job holds each (node group, task id).
pub(super) struct TaskIndex {
    /// Pair hash -> the holding job's id as a number, and the pair's hash
    /// check (a second, independent hash) to tell two pairs apart; in
    /// [`SHARDS`] maps by [`shard_of`] the hash.
    by_hash: Vec<Shard>,
    /// Pairs that cannot live in `by_hash`: their hash is taken by another
    /// pair, or the job id is not a UUID.
    exact: HashMap<(String, String), String>,
}

impl Default for TaskIndex {
    fn default() -> Self {
        TaskIndex {
            by_hash: (0..SHARDS).map(|_| Shard::default()).collect(),
            exact: HashMap::new(),
        }
    }
}

fn hashes(node_group: &str, task_id: &str) -> (u64, u64) {
    let mut h = FixedState.build_hasher();
    h.write(node_group.as_bytes());
    h.write_u8(0);
    h.write(task_id.as_bytes());
    let first = h.finish();
    // The check mixes the pair the other way round.
    let mut h = FixedState.build_hasher();
    h.write(task_id.as_bytes());
    h.write_u8(0xff);
    h.write(node_group.as_bytes());
    (first, h.finish())
}

/// A job id as a number, if it is 32 lowercase hex digits (a UUID).
fn id_number(job_id: &str) -> Option<u128> {
    if job_id.len() != 32
        || !job_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u128::from_str_radix(job_id, 16).ok()
}

fn id_string(n: u128) -> String {
    format!("{n:032x}")
}

impl TaskIndex {
    /// The job holding (node group, task id), if any.
    pub(super) fn get(&self, node_group: &str, task_id: &str) -> Option<String> {
        if !self.exact.is_empty() {
            if let Some(id) = self
                .exact
                .get(&(node_group.to_string(), task_id.to_string()))
            {
                return Some(id.clone());
            }
        }
        let (hash, check) = hashes(node_group, task_id);
        match self.shard(hash).get(&hash) {
            Some((id, c)) if *c == check => Some(id_string(*id)),
            _ => None,
        }
    }

    /// Makes `job_id` the holder of (node group, task id).
    pub(super) fn set(&mut self, node_group: &str, task_id: &str, job_id: &str) {
        let pair = || (node_group.to_string(), task_id.to_string());
        if !self.exact.is_empty() {
            if let Some(holder) = self.exact.get_mut(&pair()) {
                *holder = job_id.to_string();
                return;
            }
        }
        let (hash, check) = hashes(node_group, task_id);
        let Some(id) = id_number(job_id) else {
            self.remove_hashed(hash, check);
            self.exact.insert(pair(), job_id.to_string());
            return;
        };
        match self.shard_mut(hash).get_mut(&hash) {
            Some(entry) if entry.1 == check => entry.0 = id,
            Some(_) => {
                // Another pair has this hash.
                self.exact.insert(pair(), job_id.to_string());
            }
            None => {
                self.shard_mut(hash).insert(hash, (id, check));
            }
        }
    }

    /// Forgets (node group, task id) if `job_id` holds it.
    pub(super) fn remove(&mut self, node_group: &str, task_id: &str, job_id: &str) {
        if !self.exact.is_empty() {
            let pair = (node_group.to_string(), task_id.to_string());
            if self.exact.get(&pair).is_some_and(|id| id == job_id) {
                self.exact.remove(&pair);
                return;
            }
        }
        let (hash, check) = hashes(node_group, task_id);
        let shard = self.shard_mut(hash);
        if let Some((id, c)) = shard.get(&hash) {
            if *c == check && Some(*id) == id_number(job_id) {
                shard.remove(&hash);
            }
        }
    }

    fn remove_hashed(&mut self, hash: u64, check: u64) {
        let shard = self.shard_mut(hash);
        if shard.get(&hash).is_some_and(|(_, c)| *c == check) {
            shard.remove(&hash);
        }
    }

    fn shard(&self, hash: u64) -> &Shard {
        &self.by_hash[shard_of(hash)]
    }

    fn shard_mut(&mut self, hash: u64) -> &mut Shard {
        &mut self.by_hash[shard_of(hash)]
    }

    /// Pairs held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_hash.iter().map(HashMap::len).sum::<usize>() + self.exact.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0190aaaa0000700080000000000000a1";
    const B: &str = "0190aaaa0000700080000000000000b2";

    #[test]
    fn holds_replaces_and_forgets() {
        let mut t = TaskIndex::default();
        assert_eq!(t.get("g", "x"), None);
        t.set("g", "x", A);
        assert_eq!(t.get("g", "x").as_deref(), Some(A));
        assert_eq!(t.get("h", "x"), None, "node groups are separate");
        assert_eq!(t.get("g", "y"), None);
        t.set("g", "x", B);
        assert_eq!(t.get("g", "x").as_deref(), Some(B));
        t.remove("g", "x", A);
        assert_eq!(t.get("g", "x").as_deref(), Some(B), "A no longer holds it");
        t.remove("g", "x", B);
        assert_eq!(t.get("g", "x"), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn many_pairs_spread_over_the_shards() {
        let mut t = TaskIndex::default();
        let id = |i: u32| format!("0190aaaa00007000800000{i:010x}");
        for i in 0..20_000u32 {
            t.set("g", &format!("task-{i}"), &id(i));
        }
        assert_eq!(t.len(), 20_000);
        let used = t.by_hash.iter().filter(|s| !s.is_empty()).count();
        assert_eq!(used, SHARDS, "every shard holds some of 20,000 pairs");
        for i in 0..20_000u32 {
            assert_eq!(t.get("g", &format!("task-{i}")), Some(id(i)));
            assert_eq!(t.get("h", &format!("task-{i}")), None);
        }
        for i in 0..20_000u32 {
            t.remove("g", &format!("task-{i}"), &id(i));
        }
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn ids_that_are_not_uuids_are_kept_exactly() {
        let mut t = TaskIndex::default();
        t.set("g", "x", "legacy-id");
        assert_eq!(t.get("g", "x").as_deref(), Some("legacy-id"));
        t.set("g", "x", A);
        assert_eq!(t.get("g", "x").as_deref(), Some(A));
        t.remove("g", "x", A);
        assert_eq!(t.get("g", "x"), None);
    }

    #[test]
    fn a_pair_whose_hash_is_taken_is_kept_apart() {
        let mut t = TaskIndex::default();
        t.set("g", "x", A);
        // Force a collision: put another pair's entry under x's hash.
        let (hash, _) = hashes("g", "x");
        let (_, other_check) = hashes("g", "other");
        t.shard_mut(hash)
            .insert(hash, (id_number(A).unwrap_or_default(), other_check));
        assert_eq!(t.get("g", "x"), None, "the check tells the pairs apart");
        t.set("g", "x", B);
        assert_eq!(t.get("g", "x").as_deref(), Some(B));
        assert_eq!(t.exact.len(), 1);
    }
}
