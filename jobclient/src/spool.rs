//! [`SpoolingClient`]: a [`JobClient`] that keeps submissions in a local
//! spool directory while no JobTracker accepts them, and replays them in
//! submit order once one does.
//!
//! The spool is a sled database under the directory, written through the
//! durability engine of the JobTracker's embedded store
//! ([`lts_common::durable`]): a batch is spooled under one lock in submit
//! order, and [`SpoolingClient::submit`] answers [`SubmitOutcome::Spooled`]
//! only once it is flushed to disk.
//!
//! Replay sends the oldest entries first, in batches. The trackers dedup on
//! task id, so a batch sent again after a crash of the client does not
//! create its jobs twice: a job refused with `ALREADY_EXISTS` is looked up,
//! and when the stored job is the spooled one it counts as replayed. When
//! the task id belongs to a different job, or a tracker refuses a spooled
//! job for another reason, the entry is set aside in the spool (see
//! [`SpoolingClient::set_aside`]) and reported as a [`SpoolEvent`]: it is
//! never dropped without a trace.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use lts_common::durable::{check_not_in_use, wait_for_release, Engine, Writes};
use lts_common::JobSpec;
use lts_proto::v1 as pb;
use prost::Message;
use serde::Serialize;

use crate::client::{JobClient, SubmitOutcome, SubmitRefusal};
use crate::error::{Error, Result};

/// Key prefix of a spooled job: `q` + sequence (8 bytes, big endian).
const QUEUE: u8 = b'q';
/// Key prefix of a set-aside job: `x` + its sequence.
const ASIDE: u8 = b'x';
/// Key of the spool format version.
const VERSION_KEY: &[u8] = b"mversion";
const VERSION: u64 = 1;
/// Name of the sled database inside the spool directory.
const DB_DIR: &str = "spool.sled";
/// Lookups of `ALREADY_EXISTS` jobs in flight at once during a replay.
const LOOKUP_CONCURRENCY: usize = 32;

/// How a [`SpoolingClient`] spools and replays.
#[derive(Clone, Debug)]
pub struct SpoolOptions {
    /// Most jobs the spool holds; a submit that would pass it fails with
    /// [`Error::SpoolFull`]. Default 1,000,000.
    pub max_entries: u64,
    /// Most bytes of spooled jobs (encoded specs); a submit that would pass
    /// it fails with [`Error::SpoolFull`]. Default 1 GiB.
    pub max_bytes: u64,
    /// Submit attempts before a batch is spooled (each tries every
    /// tracker). Default 2.
    pub submit_attempts: u32,
    /// Pause between two submit attempts. Default 200 ms.
    pub retry_delay: Duration,
    /// How often the background replay looks for a reachable tracker while
    /// the spool holds jobs. Default 1 s.
    pub replay_interval: Duration,
    /// Jobs sent per replay request. Default 1,000.
    pub replay_batch: usize,
    /// Replay in the background. Off, jobs are replayed only by
    /// [`SpoolingClient::replay`]. Default on.
    pub background_replay: bool,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            max_entries: 1_000_000,
            max_bytes: 1 << 30,
            submit_attempts: 2,
            retry_delay: Duration::from_millis(200),
            replay_interval: Duration::from_secs(1),
            replay_batch: 1000,
            background_replay: true,
        }
    }
}

/// Why a spooled job was set aside instead of replayed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum AsideReason {
    /// Its task id belongs to a different job on the tracker.
    Conflict {
        /// The job that holds the task id.
        existing_job_id: String,
    },
    /// The tracker refused the job.
    Refused {
        /// A gRPC status code name, e.g. `INVALID_ARGUMENT`.
        code: String,
        /// The offending field; may be empty.
        field: String,
        /// What is wrong, for people.
        message: String,
    },
}

/// A spooled job that was not replayed, kept in the spool until a purge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SetAside {
    /// The job's task id.
    pub task_id: String,
    /// The job's node group.
    pub node_group: String,
    /// When it was spooled, ms since the epoch.
    pub spooled_at_ms: i64,
    /// Why it was not replayed.
    #[serde(flatten)]
    pub reason: AsideReason,
}

/// What happened to a spooled job during a replay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SpoolEvent {
    /// A tracker stored the job.
    Replayed {
        /// The job's task id.
        task_id: String,
        /// The id the tracker gave it.
        job_id: String,
    },
    /// The job was already stored (an earlier replay reached the tracker
    /// before the client stopped); it exists once.
    AlreadyStored {
        /// The job's task id.
        task_id: String,
        /// The stored job.
        job_id: String,
    },
    /// The job was set aside (see [`SpoolingClient::set_aside`]).
    SetAside(SetAside),
}

/// Counts of one or more replays.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplayProgress {
    /// Jobs a tracker stored.
    pub replayed: u64,
    /// Jobs found already stored.
    pub already_stored: u64,
    /// Jobs set aside: a conflicting task id or a refusal.
    pub set_aside: u64,
    /// Jobs still spooled.
    pub remaining: u64,
    /// Why the last replay stopped early, when it did.
    pub last_error: Option<String>,
}

/// What a spool holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SpoolStatus {
    /// The spool directory.
    pub dir: PathBuf,
    /// Jobs waiting to be replayed.
    pub entries: u64,
    /// Bytes of those jobs (encoded specs).
    pub bytes: u64,
    /// When the oldest of them was spooled, ms since the epoch.
    pub oldest_ms: Option<i64>,
    /// Jobs set aside.
    pub set_aside: u64,
    /// Size of the spool directory on disk.
    pub disk_bytes: u64,
    /// Replays since the spool was opened.
    pub progress: ReplayProgress,
    /// Where a damaged spool found at open was moved.
    pub moved_aside: Option<PathBuf>,
}

/// The spool on disk and its in-memory accounting.
struct Store {
    dir: PathBuf,
    lock_file: PathBuf,
    engine: Engine,
    /// `None` once closed.
    tree: Mutex<Option<::sled::Tree>>,
    state: Mutex<State>,
    moved_aside: Option<PathBuf>,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    /// Spooled batches in order.
    queue: VecDeque<Spooled>,
    /// Jobs in `queue`.
    jobs: u64,
    bytes: u64,
    set_aside: u64,
    progress: ReplayProgress,
}

/// One spooled batch: a key of the spool.
struct Spooled {
    seq: u64,
    jobs: u64,
    bytes: u64,
    at_ms: i64,
}

/// Why a spool could not be opened: damaged (move it aside) or not.
enum OpenError {
    Damaged(String),
    Other(Error),
}

fn queue_key(seq: u64) -> [u8; 9] {
    let mut k = [QUEUE; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// A set-aside job: `x` + its batch's sequence + its place in the batch.
fn aside_key(seq: u64, pos: u32) -> [u8; 13] {
    let mut k = [ASIDE; 13];
    k[1..9].copy_from_slice(&seq.to_be_bytes());
    k[9..].copy_from_slice(&pos.to_be_bytes());
    k
}

fn seq_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}

/// A queue value, one submitted batch: spooled-at (8 bytes, big endian),
/// then each spec, length-delimited. One key per batch: a batch of 1,000
/// is one sled write, not 1,000.
fn encode_batch<'a>(at_ms: i64, specs: impl IntoIterator<Item = &'a pb::JobSpec>) -> Vec<u8> {
    let mut v = at_ms.to_be_bytes().to_vec();
    for spec in specs {
        spec.encode_length_delimited(&mut v)
            .expect("a Vec grows to fit the encoding");
    }
    v
}

fn decode_batch(v: &[u8]) -> std::result::Result<(i64, Vec<pb::JobSpec>), String> {
    let at: [u8; 8] = v
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("an entry of {} bytes", v.len()))?;
    let mut rest = &v[8..];
    let mut specs = Vec::new();
    while !rest.is_empty() {
        specs.push(
            pb::JobSpec::decode_length_delimited(&mut rest)
                .map_err(|e| format!("an unreadable job: {e}"))?,
        );
    }
    if specs.is_empty() {
        return Err("an empty entry".into());
    }
    Ok((i64::from_be_bytes(at), specs))
}

fn spool_error(dir: &Path, context: impl Into<String>, e: impl std::fmt::Display) -> Error {
    Error::Spool {
        dir: dir.to_path_buf(),
        context: context.into(),
        reason: e.to_string(),
    }
}

fn engine_error(dir: &Path, context: &str, e: lts_common::durable::Error) -> Error {
    match e {
        lts_common::durable::Error::InUse { .. } => Error::SpoolInUse {
            dir: dir.to_path_buf(),
        },
        e => spool_error(dir, context, crate::client::error_chain(&e)),
    }
}

/// Bytes of every file under `dir`.
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

impl Store {
    /// Opens the spool under `dir`; a damaged one is moved aside with a
    /// timestamp and a fresh one opened.
    fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .map_err(|e| spool_error(dir, "cannot create the spool directory", e))?;
        let db_dir = dir.join(DB_DIR);
        let lock_file = db_dir.join("db");
        check_not_in_use(&lock_file, dir).map_err(|e| engine_error(dir, "locking", e))?;
        match Self::try_open(dir, &db_dir, &lock_file) {
            Ok(store) => Ok(store),
            Err(OpenError::Other(e)) => Err(e),
            Err(OpenError::Damaged(why)) => {
                let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
                let aside = dir.join(format!("{DB_DIR}.damaged-{stamp}"));
                tracing::error!(
                    spool = %db_dir.display(),
                    "the spool is damaged ({why}); moving it to {} and starting a fresh one",
                    aside.display()
                );
                std::fs::rename(&db_dir, &aside).map_err(|e| {
                    spool_error(
                        dir,
                        format!("the spool is damaged ({why}) and cannot be moved aside"),
                        e,
                    )
                })?;
                match Self::try_open(dir, &db_dir, &lock_file) {
                    Ok(mut store) => {
                        store.moved_aside = Some(aside);
                        Ok(store)
                    }
                    Err(OpenError::Other(e)) => Err(e),
                    Err(OpenError::Damaged(why)) => {
                        Err(spool_error(dir, "a fresh spool cannot be opened", why))
                    }
                }
            }
        }
    }

    fn try_open(
        dir: &Path,
        db_dir: &Path,
        lock_file: &Path,
    ) -> std::result::Result<Store, OpenError> {
        // A spool that was written has a format version; sled opens some
        // damaged files as an empty database, which must not pass for a
        // fresh spool.
        let existed = lock_file.exists();
        let config = ::sled::Config::new()
            .path(db_dir)
            .mode(::sled::Mode::HighThroughput)
            .cache_capacity(16 << 20)
            .flush_every_ms(None);
        // sled panics on some damaged files rather than answering an error.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let db = config.open()?;
            let tree = db.open_tree("spool")?;
            Ok::<_, ::sled::Error>((db, tree))
        }));
        let (db, tree) = match opened {
            Ok(Ok(x)) => x,
            Ok(Err(::sled::Error::Io(e)))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::WouldBlock
                ) =>
            {
                return Err(OpenError::Other(spool_error(
                    dir,
                    "cannot open the spool",
                    e,
                )))
            }
            Ok(Err(e)) => return Err(OpenError::Damaged(e.to_string())),
            Err(_) => return Err(OpenError::Damaged("sled could not read it".into())),
        };
        let damaged = |what: String| OpenError::Damaged(what);
        match tree.get(VERSION_KEY) {
            Ok(Some(v)) => {
                let version = <[u8; 8]>::try_from(v.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| damaged("an unreadable format version".into()))?;
                if version > VERSION {
                    return Err(OpenError::Other(spool_error(
                        dir,
                        format!("written in spool format {version}; this client reads {VERSION} and older"),
                        "use a newer client",
                    )));
                }
            }
            Ok(None) if existed => {
                return Err(damaged(
                    "its format version is missing: the files were overwritten or cut short".into(),
                ))
            }
            Ok(None) => {
                tree.insert(VERSION_KEY, &VERSION.to_be_bytes())
                    .map_err(|e| damaged(e.to_string()))?;
                tree.flush().map_err(|e| damaged(e.to_string()))?;
            }
            Err(e) => return Err(damaged(e.to_string())),
        }
        // Read every entry once: a damaged one is found now, not halfway
        // through a replay.
        let mut state = State::default();
        for item in tree.scan_prefix([QUEUE]) {
            let (k, v) = item.map_err(|e| damaged(e.to_string()))?;
            let seq = seq_of(&k).ok_or_else(|| damaged("a malformed key".into()))?;
            let (at_ms, specs) = decode_batch(&v).map_err(damaged)?;
            state.queue.push_back(Spooled {
                seq,
                jobs: specs.len() as u64,
                bytes: v.len() as u64,
                at_ms,
            });
            state.jobs += specs.len() as u64;
            state.bytes += v.len() as u64;
            state.next_seq = state.next_seq.max(seq + 1);
        }
        for item in tree.scan_prefix([ASIDE]) {
            let (k, _) = item.map_err(|e| damaged(e.to_string()))?;
            let seq = seq_of(&k).ok_or_else(|| damaged("a malformed key".into()))?;
            state.set_aside += 1;
            state.next_seq = state.next_seq.max(seq + 1);
        }
        state.progress.remaining = state.jobs;
        let engine = Engine::start(db, tree.clone())
            .map_err(|e| OpenError::Other(engine_error(dir, "starting the spool's writer", e)))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            lock_file: lock_file.to_path_buf(),
            engine,
            tree: Mutex::new(Some(tree)),
            state: Mutex::new(state),
            moved_aside: None,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tree(&self) -> Result<::sled::Tree> {
        self.tree
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| spool_error(&self.dir, "the spool is closed", "closed"))
    }

    fn depth(&self) -> u64 {
        self.state().jobs
    }

    /// Appends `specs` in order and returns once they are on disk. Refuses
    /// the whole batch when it would pass a limit.
    async fn append(&self, specs: &[pb::JobSpec], options: &SpoolOptions) -> Result<()> {
        if specs.is_empty() {
            return Ok(());
        }
        let now = lts_common::now_ms();
        let value = encode_batch(now, specs);
        let added = value.len() as u64;
        {
            let mut state = self.state();
            let jobs = state.jobs;
            if jobs + specs.len() as u64 > options.max_entries {
                return Err(Error::SpoolFull {
                    dir: self.dir.clone(),
                    limit: format!(
                        "{} entries; it holds {jobs}, {} more asked",
                        options.max_entries,
                        specs.len()
                    ),
                });
            }
            if state.bytes + added > options.max_bytes {
                return Err(Error::SpoolFull {
                    dir: self.dir.clone(),
                    limit: format!(
                        "{} bytes; it holds {}, {added} more asked",
                        options.max_bytes, state.bytes
                    ),
                });
            }
            let seq = state.next_seq;
            let mut writes = Writes::default();
            writes.insert(&queue_key(seq)[..], value);
            // Committed under the state lock: sequence order is disk order.
            self.engine
                .commit(writes)
                .map_err(|e| engine_error(&self.dir, "writing to the spool", e))?;
            state.queue.push_back(Spooled {
                seq,
                jobs: specs.len() as u64,
                bytes: added,
                at_ms: now,
            });
            state.next_seq += 1;
            state.jobs += specs.len() as u64;
            state.bytes += added;
            state.progress.remaining = state.jobs;
        }
        self.engine.wake_writer();
        self.engine
            .flush(true)
            .await
            .map_err(|e| engine_error(&self.dir, "flushing the spool", e))
    }

    /// The oldest spooled batches, at least one, until they hold `n` jobs.
    async fn head(&self, n: usize) -> Result<Vec<(u64, i64, Vec<pb::JobSpec>)>> {
        self.engine.settled().await;
        let tree = self.tree()?;
        let mut out = Vec::new();
        let mut jobs = 0;
        for item in tree.scan_prefix([QUEUE]) {
            let (k, v) = item.map_err(|e| spool_error(&self.dir, "reading the spool", e))?;
            let seq = seq_of(&k)
                .ok_or_else(|| spool_error(&self.dir, "reading the spool", "a malformed key"))?;
            let (at, specs) =
                decode_batch(&v).map_err(|e| spool_error(&self.dir, "reading the spool", e))?;
            jobs += specs.len();
            out.push((seq, at, specs));
            if jobs >= n {
                break;
            }
        }
        Ok(out)
    }

    /// Removes the first `done` jobs of `head` (the batches [`Store::head`]
    /// returned), keeping those set aside (by their place in `head`).
    async fn settle(
        &self,
        head: &[(u64, i64, Vec<pb::JobSpec>)],
        done: usize,
        aside: Vec<(usize, SetAside)>,
    ) -> Result<()> {
        if done == 0 {
            return Ok(());
        }
        {
            let mut state = self.state();
            let mut writes = Writes::default();
            // Set-aside jobs first: a crash between keeps them queued, and
            // the replay sets them aside again.
            let mut place = Vec::new();
            for (seq, _, specs) in head {
                for (pos, spec) in specs.iter().enumerate() {
                    place.push((*seq, pos, spec));
                }
            }
            let set_aside = aside.len() as u64;
            for (i, record) in aside {
                let Some((seq, pos, spec)) = place.get(i) else {
                    continue;
                };
                let record = serde_json::to_vec(&record)
                    .map_err(|e| spool_error(&self.dir, "recording a set-aside job", e))?;
                let mut v = Vec::with_capacity(4 + record.len() + spec.encoded_len());
                v.extend_from_slice(&(record.len() as u32).to_be_bytes());
                v.extend_from_slice(&record);
                spec.encode(&mut v)
                    .expect("a Vec grows to fit the encoding");
                writes.insert(&aside_key(*seq, *pos as u32)[..], v);
            }
            let mut left = done;
            let mut removed = Vec::new();
            let mut rest = None;
            for (seq, at, specs) in head {
                if left == 0 {
                    break;
                }
                if left >= specs.len() {
                    writes.remove(&queue_key(*seq)[..]);
                    removed.push(*seq);
                    left -= specs.len();
                } else {
                    // Part of a batch went: the rest stays under its key.
                    let value = encode_batch(*at, &specs[left..]);
                    rest = Some((*seq, (specs.len() - left) as u64, value.len() as u64));
                    writes.insert(&queue_key(*seq)[..], value);
                    left = 0;
                }
            }
            self.engine
                .commit(writes)
                .map_err(|e| engine_error(&self.dir, "writing to the spool", e))?;
            for seq in removed {
                if state.queue.front().is_some_and(|b| b.seq == seq) {
                    if let Some(b) = state.queue.pop_front() {
                        state.jobs -= b.jobs;
                        state.bytes -= b.bytes;
                    }
                }
            }
            if let Some((seq, jobs, bytes)) = rest {
                let (mut dj, mut db) = (0, 0);
                if let Some(b) = state.queue.front_mut().filter(|b| b.seq == seq) {
                    dj = b.jobs - jobs;
                    db = b.bytes - bytes;
                    b.jobs = jobs;
                    b.bytes = bytes;
                }
                state.jobs -= dj;
                state.bytes -= db;
            }
            state.set_aside += set_aside;
            state.progress.remaining = state.jobs;
        }
        self.engine.wake_writer();
        // A removal lost in a crash only sends the job again, which the
        // tracker's dedup answers: no need to wait for this flush.
        self.engine.flush_soon();
        Ok(())
    }

    fn set_aside(&self) -> Result<Vec<SetAside>> {
        let tree = self.tree()?;
        let mut out = Vec::new();
        for item in tree.scan_prefix([ASIDE]) {
            let (_, v) = item.map_err(|e| spool_error(&self.dir, "reading the spool", e))?;
            let len = v
                .get(..4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes)
                .unwrap_or(0) as usize;
            let record = v.get(4..4 + len).unwrap_or_default();
            out.push(
                read_aside(record).map_err(|e| spool_error(&self.dir, "reading the spool", e))?,
            );
        }
        Ok(out)
    }

    fn status(&self) -> SpoolStatus {
        let state = self.state();
        SpoolStatus {
            dir: self.dir.clone(),
            entries: state.jobs,
            bytes: state.bytes,
            oldest_ms: state.queue.front().map(|b| b.at_ms),
            set_aside: state.set_aside,
            disk_bytes: disk_usage(&self.dir),
            progress: state.progress.clone(),
            moved_aside: self.moved_aside.clone(),
        }
    }

    /// Drops every spooled and set-aside job. Returns how many jobs.
    async fn purge(&self) -> Result<u64> {
        self.engine.settled().await;
        let tree = self.tree()?;
        let n = {
            let mut state = self.state();
            let mut writes = Writes::default();
            let mut n = 0;
            for prefix in [QUEUE, ASIDE] {
                let mut keys = std::collections::BTreeSet::new();
                for k in tree.scan_prefix([prefix]).keys() {
                    keys.insert(k.map_err(|e| spool_error(&self.dir, "reading the spool", e))?);
                }
                // Appended since the scan began waiting, not in the tree yet.
                keys.extend(self.engine.unapplied_keys(&[prefix]));
                for k in keys {
                    writes.remove(k);
                }
            }
            n += state.jobs + state.set_aside;
            self.engine
                .commit(writes)
                .map_err(|e| engine_error(&self.dir, "writing to the spool", e))?;
            state.queue.clear();
            state.jobs = 0;
            state.bytes = 0;
            state.set_aside = 0;
            state.progress.remaining = 0;
            n
        };
        self.engine.wake_writer();
        self.engine
            .flush(true)
            .await
            .map_err(|e| engine_error(&self.dir, "flushing the spool", e))?;
        Ok(n)
    }

    async fn close(&self) -> Result<()> {
        let Some(tree) = self.tree.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Ok(());
        };
        let flushed = self.engine.close().await;
        let lock_file = self.lock_file.clone();
        tokio::task::spawn_blocking(move || {
            drop(tree);
            wait_for_release(&lock_file)
        })
        .await
        .map_err(|e| spool_error(&self.dir, "closing the spool", e))?
        .map_err(|e| engine_error(&self.dir, "closing the spool", e))?;
        flushed.map_err(|e| engine_error(&self.dir, "closing the spool", e))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let tree = self.tree.lock().unwrap_or_else(|p| p.into_inner()).take();
        if tree.is_some() {
            self.engine.stop();
            drop(tree);
            if let Err(e) = wait_for_release(&self.lock_file) {
                tracing::error!(spool = %self.dir.display(), "closing the spool: {e}");
            }
        }
    }
}

fn read_aside(record: &[u8]) -> std::result::Result<SetAside, String> {
    let v: serde_json::Value = serde_json::from_slice(record).map_err(|e| e.to_string())?;
    let s = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let reason = if s("reason") == "conflict" {
        AsideReason::Conflict {
            existing_job_id: s("existing_job_id"),
        }
    } else {
        AsideReason::Refused {
            code: s("code"),
            field: s("field"),
            message: s("message"),
        }
    };
    Ok(SetAside {
        task_id: s("task_id"),
        node_group: s("node_group"),
        spooled_at_ms: v.get("spooled_at_ms").and_then(|x| x.as_i64()).unwrap_or(0),
        reason,
    })
}

/// Whether the job a tracker holds under a task id is the spooled one.
fn same_job(stored: &JobSpec, spooled: &pb::JobSpec) -> bool {
    let stored = pb::JobSpec::from(stored.clone());
    stored.task_id == spooled.task_id
        && stored.task_tracker_node_group == spooled.task_tracker_node_group
        && stored.submit_node_group == spooled.submit_node_group
        && stored.priority == spooled.priority
        && stored.params == spooled.params
        && stored.payload == spooled.payload
        && stored.need_feedback == spooled.need_feedback
        && stored.timeout_ms == spooled.timeout_ms
}

struct Shared {
    client: JobClient,
    store: Store,
    options: SpoolOptions,
    /// One replay at a time, in order.
    replaying: tokio::sync::Mutex<()>,
    wake: Arc<tokio::sync::Notify>,
    events: tokio::sync::broadcast::Sender<SpoolEvent>,
    replayer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(task) = self
            .replayer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

/// A [`JobClient`] with a spool directory: a batch no tracker accepts is
/// kept on disk and replayed, in submit order, once a tracker is
/// reachable. Clones share the spool; it closes with the last one (or
/// [`SpoolingClient::close`]).
#[derive(Clone)]
pub struct SpoolingClient {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SpoolingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolingClient")
            .field("dir", &self.shared.store.dir)
            .finish()
    }
}

impl JobClient {
    /// This client with a spool under `dir` (created if missing). Jobs the
    /// spool holds from an earlier run are replayed in the background
    /// (unless [`SpoolOptions::background_replay`] is off). Fails with
    /// [`Error::SpoolInUse`] when another client holds `dir`. A damaged
    /// spool is moved aside (see [`SpoolStatus::moved_aside`]) and a fresh
    /// one used. Must be called within a Tokio runtime, where the
    /// background replay runs.
    pub fn with_spool(
        self,
        dir: impl AsRef<Path>,
        options: SpoolOptions,
    ) -> Result<SpoolingClient> {
        SpoolingClient::open(self, dir.as_ref(), options)
    }
}

impl SpoolingClient {
    fn open(client: JobClient, dir: &Path, options: SpoolOptions) -> Result<SpoolingClient> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| spool_error(dir, "opening the spool needs a Tokio runtime", e))?;
        let store = Store::open(dir)?;
        let (events, _) = tokio::sync::broadcast::channel(4096);
        let shared = Arc::new(Shared {
            client,
            store,
            options,
            replaying: tokio::sync::Mutex::new(()),
            wake: Arc::new(tokio::sync::Notify::new()),
            events,
            replayer: Mutex::new(None),
        });
        if shared.options.background_replay {
            let task = runtime.spawn(background_replay(
                Arc::downgrade(&shared),
                shared.wake.clone(),
                shared.options.replay_interval,
            ));
            *shared.replayer.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
            shared.wake.notify_one();
        }
        Ok(SpoolingClient { shared })
    }

    /// The client underneath, for every call but submit.
    pub fn client(&self) -> &JobClient {
        &self.shared.client
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.shared.store.dir
    }

    /// Jobs waiting to be replayed.
    pub fn depth(&self) -> u64 {
        self.shared.store.depth()
    }

    /// What the spool holds and what replays did so far.
    pub fn status(&self) -> SpoolStatus {
        self.shared.store.status()
    }

    /// Events of every replay from now on: each job replayed, found
    /// already stored, or set aside. A receiver that falls behind by more
    /// than 4,096 events misses the oldest; [`SpoolingClient::set_aside`]
    /// keeps the set-aside ones.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<SpoolEvent> {
        self.shared.events.subscribe()
    }

    /// The jobs set aside, oldest first: their task id belonged to another
    /// job, or a tracker refused them. They stay until a purge.
    pub fn set_aside(&self) -> Result<Vec<SetAside>> {
        self.shared.store.set_aside()
    }

    /// Submits jobs, one outcome per job, in order. A job without a task id
    /// gets one (a UUID), so that sending it again cannot create it twice.
    ///
    /// While the spool holds jobs, new ones are spooled behind them, so
    /// jobs reach the trackers in submit order. Otherwise the batch goes
    /// to the trackers, [`SpoolOptions::submit_attempts`] times at most;
    /// when none is reachable it is spooled, flushed, and every job
    /// answers [`SubmitOutcome::Spooled`]. A full spool fails with
    /// [`Error::SpoolFull`] and keeps what it holds.
    pub async fn submit(&self, mut jobs: Vec<JobSpec>) -> Result<Vec<SubmitOutcome>> {
        for job in &mut jobs {
            if job.task_id.is_empty() {
                job.task_id = uuid::Uuid::now_v7().to_string();
            }
        }
        let wire: Vec<pb::JobSpec> = jobs.into_iter().map(pb::JobSpec::from).collect();
        if self.depth() > 0 {
            return self.spool(wire, Vec::new()).await;
        }
        let options = &self.shared.options;
        let mut attempt = 1;
        loop {
            match self.shared.client.submit_wire(wire.clone()).await {
                Ok(outcomes) => return Ok(outcomes),
                Err(Error::PartialSubmit { submitted, source }) if source.is_unavailable() => {
                    let rest = wire[submitted.len()..].to_vec();
                    return self.spool(rest, submitted).await;
                }
                Err(e) if e.is_unavailable() && attempt < options.submit_attempts.max(1) => {
                    attempt += 1;
                    tokio::time::sleep(options.retry_delay).await;
                }
                Err(e) if e.is_unavailable() => return self.spool(wire, Vec::new()).await,
                Err(e) => return Err(e),
            }
        }
    }

    async fn spool(
        &self,
        wire: Vec<pb::JobSpec>,
        mut outcomes: Vec<SubmitOutcome>,
    ) -> Result<Vec<SubmitOutcome>> {
        self.shared
            .store
            .append(&wire, &self.shared.options)
            .await?;
        self.shared.wake.notify_one();
        outcomes.extend(
            wire.into_iter()
                .map(|s| SubmitOutcome::Spooled { task_id: s.task_id }),
        );
        Ok(outcomes)
    }

    /// Replays the spool now, oldest first, until it is empty or no tracker
    /// is reachable (then the error says why; what was replayed stays
    /// replayed). `on_batch` sees the counts after each batch.
    pub async fn replay_with(
        &self,
        mut on_batch: impl FnMut(&ReplayProgress) + Send,
    ) -> Result<ReplayProgress> {
        replay(&self.shared, &mut on_batch).await
    }

    /// [`SpoolingClient::replay_with`] without a progress callback.
    pub async fn replay(&self) -> Result<ReplayProgress> {
        self.replay_with(|_| {}).await
    }

    /// Drops every job in the spool, spooled or set aside; returns how
    /// many.
    pub async fn purge(&self) -> Result<u64> {
        let _replaying = self.shared.replaying.lock().await;
        self.shared.store.purge().await
    }

    /// Stops the background replay, flushes the spool and releases its
    /// directory; what is spooled stays for the next client.
    pub async fn close(self) -> Result<()> {
        let task = self
            .shared
            .replayer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        let _replaying = self.shared.replaying.lock().await;
        self.shared.store.close().await
    }
}

/// Replays batches until the spool is empty or a batch fails.
async fn replay(
    shared: &Shared,
    on_batch: &mut (dyn FnMut(&ReplayProgress) + Send),
) -> Result<ReplayProgress> {
    let _replaying = shared.replaying.lock().await;
    let start = shared.store.state().progress.clone();
    let result = loop {
        match replay_batch(shared).await {
            Ok(true) => {
                let p = shared.store.state().progress.clone();
                on_batch(&since(&start, &p));
            }
            Ok(false) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let mut state = shared.store.state();
    state.progress.last_error = result.as_ref().err().map(|e| e.to_string());
    let p = since(&start, &state.progress);
    drop(state);
    result.map(|_| p)
}

fn since(start: &ReplayProgress, now: &ReplayProgress) -> ReplayProgress {
    ReplayProgress {
        replayed: now.replayed - start.replayed,
        already_stored: now.already_stored - start.already_stored,
        set_aside: now.set_aside - start.set_aside,
        remaining: now.remaining,
        last_error: now.last_error.clone(),
    }
}

/// Sends the oldest batch. `Ok(false)` when the spool is empty.
async fn replay_batch(shared: &Shared) -> Result<bool> {
    let head = shared
        .store
        .head(shared.options.replay_batch.max(1))
        .await?;
    if head.is_empty() {
        return Ok(false);
    }
    let jobs: Vec<(i64, &pb::JobSpec)> = head
        .iter()
        .flat_map(|(_, at, specs)| specs.iter().map(move |s| (*at, s)))
        .collect();
    let specs: Vec<pb::JobSpec> = jobs.iter().map(|(_, s)| (*s).clone()).collect();
    let (outcomes, failure) = match shared.client.submit_wire(specs).await {
        Ok(o) => (o, None),
        Err(Error::PartialSubmit { submitted, source }) => (submitted, Some(*source)),
        Err(e) => return Err(e),
    };
    // Lookups of task ids the tracker already holds: is it this job?
    let existing: Vec<Option<String>> = outcomes
        .iter()
        .map(|o| match o {
            SubmitOutcome::Refused(SubmitRefusal {
                code,
                existing_job_id: Some(id),
                ..
            }) if code == "ALREADY_EXISTS" => Some(id.clone()),
            _ => None,
        })
        .collect();
    let lookups: Vec<Option<lts_common::Job>> = stream::iter(existing)
        .map(|id| {
            let client = shared.client.clone();
            async move {
                match id {
                    Some(id) => client.get(&id).await.map(Some),
                    None => Ok(None),
                }
            }
        })
        .buffered(LOOKUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        // A failed lookup ends the batch there: the rest is sent again later.
        .map_while(|r: Result<Option<lts_common::Job>>| r.ok())
        .collect();
    let mut done = 0;
    let mut set_aside = Vec::new();
    let mut events = Vec::new();
    let (mut replayed, mut already) = (0u64, 0u64);
    for (((at, spec), outcome), lookup) in jobs.iter().copied().zip(outcomes).zip(lookups) {
        let aside = |reason: AsideReason| SetAside {
            task_id: spec.task_id.clone(),
            node_group: spec.task_tracker_node_group.clone(),
            spooled_at_ms: at,
            reason,
        };
        match (outcome, lookup) {
            (SubmitOutcome::Accepted { task_id, job_id }, _) => {
                replayed += 1;
                events.push(SpoolEvent::Replayed { task_id, job_id });
            }
            (SubmitOutcome::Refused(r), Some(stored)) => {
                if same_job(&stored.spec, spec) {
                    already += 1;
                    events.push(SpoolEvent::AlreadyStored {
                        task_id: r.task_id,
                        job_id: stored.job_id,
                    });
                } else {
                    let record = aside(AsideReason::Conflict {
                        existing_job_id: stored.job_id,
                    });
                    tracing::warn!(
                        task = %record.task_id,
                        "a spooled job's task id belongs to another job; it is set aside in the spool"
                    );
                    events.push(SpoolEvent::SetAside(record.clone()));
                    set_aside.push((done, record));
                }
            }
            (SubmitOutcome::Refused(r), None) if r.code == "ALREADY_EXISTS" => break,
            (SubmitOutcome::Refused(r), None) => {
                let record = aside(AsideReason::Refused {
                    code: r.code,
                    field: r.field,
                    message: r.message,
                });
                tracing::warn!(
                    task = %record.task_id,
                    "a tracker refused a spooled job; it is set aside in the spool"
                );
                events.push(SpoolEvent::SetAside(record.clone()));
                set_aside.push((done, record));
            }
            (SubmitOutcome::Spooled { .. }, _) => break,
        }
        done += 1;
    }
    let progressed = done > 0;
    let aside_count = set_aside.len() as u64;
    shared.store.settle(&head, done, set_aside).await?;
    {
        let mut state = shared.store.state();
        state.progress.replayed += replayed;
        state.progress.already_stored += already;
        state.progress.set_aside += aside_count;
    }
    for e in events {
        let _ = shared.events.send(e);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if !progressed {
        return Err(spool_error(
            &shared.store.dir,
            "replay",
            "a job's task id is held by a job that could not be looked up; will retry",
        ));
    }
    Ok(true)
}

/// The background replay: on each wake-up or interval, replays while the
/// spool holds jobs and a tracker is reachable.
async fn background_replay(
    shared: Weak<Shared>,
    wake: Arc<tokio::sync::Notify>,
    interval: Duration,
) {
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.store.depth() == 0 {
            continue;
        }
        match replay(&shared, &mut |_| {}).await {
            Ok(p) => tracing::info!(
                replayed = p.replayed,
                already_stored = p.already_stored,
                set_aside = p.set_aside,
                "spool replayed"
            ),
            Err(e) if e.is_unavailable() => {
                tracing::debug!("spool replay waits for a JobTracker: {e}")
            }
            Err(e) => tracing::warn!("spool replay stopped: {e}"),
        }
    }
}
