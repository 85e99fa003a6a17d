//! A spool on disk: outcomes, log lines and starts of runs survive a crash
//! or restart of the TaskTracker (`tasktracker --spool-dir DIR`).
//!
//! Everything spooled is held in memory as well, and each change is
//! committed to the durability engine of [`lts_common::durable`] (the one
//! under the JobTracker's embedded store): a commit is a push onto its
//! write queue, applied by the engine's own thread, and made durable by its
//! group-commit flusher a few milliseconds later. So the driver never waits
//! on the disk. Opening and closing block: call them off the runtime
//! threads ([`DiskSpool::open`] through `spawn_blocking`, or before the
//! runtime starts).
//!
//! Layout of the sled tree (`DIR/spool.sled`): `mformat` holds the format
//! version; every other key is a kind byte and a sequence number (u64 big
//! endian), in the order things were spooled:
//!
//! | key | value |
//! |-----|-------|
//! | `s` seq | `Started` (protobuf): runs that began at one instant |
//! | `l` seq | `BizLog` (protobuf): one line of a run's execution log |
//! | `o` seq | `OutcomeReport` (protobuf): how a run ended |

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use lts_common::durable::{self, check_not_in_use, wait_for_release, Engine, Writes};
use lts_proto::v1 as pb;
use prost::Message;

use crate::error::{Error, Result};
use crate::spool::{OutcomeSpool, Spooled};

/// The format this version writes and reads.
const FORMAT_VERSION: u64 = 1;
const FORMAT_KEY: &[u8] = b"mformat";
/// sled's page cache: the spool is read once, at open.
const CACHE_BYTES: u64 = 16 << 20;

/// How much a [`DiskSpool`] holds before the TaskTracker stops taking work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoolLimits {
    /// Entries (outcomes, log lines, starts) at most. Default 100,000.
    pub max_entries: usize,
    /// Bytes of entries at most (keys and encoded values). Default 256 MiB.
    pub max_bytes: u64,
}

impl Default for SpoolLimits {
    fn default() -> Self {
        SpoolLimits {
            max_entries: 100_000,
            max_bytes: 256 << 20,
        }
    }
}

type RunKey = (String, u32);

/// A log line or a start: kept until an outcome spooled after it is
/// acknowledged.
enum Extra {
    Started(pb::Started),
    Log(pb::BizLog),
}

/// A spool in a directory on disk. See the module doc and
/// [`OutcomeSpool`] for what is durable when.
pub struct DiskSpool {
    dir: PathBuf,
    lock_file: PathBuf,
    limits: SpoolLimits,
    engine: Arc<Engine>,
    /// Outcomes by sequence, and the sequence of each run's outcome.
    outcomes: BTreeMap<u64, pb::OutcomeReport>,
    /// The engine's generation that wrote each outcome (by sequence) and is
    /// not known to be flushed yet; an outcome not here is on disk.
    outcome_generations: BTreeMap<u64, u64>,
    by_run: HashMap<RunKey, u64>,
    /// Starts and log lines by sequence.
    extras: BTreeMap<u64, Extra>,
    /// Bytes of each entry, by sequence.
    sizes: HashMap<u64, u64>,
    bytes: u64,
    next_seq: u64,
    closed: bool,
    /// A write failed (logged once).
    write_failed: bool,
}

impl std::fmt::Debug for DiskSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskSpool")
            .field("dir", &self.dir)
            .field("outcomes", &self.outcomes.len())
            .field("extras", &self.extras.len())
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// Why a spool directory could not be opened.
enum OpenError {
    /// Another process (or another spool in this one) holds it.
    InUse,
    /// Its content cannot be read: it is moved aside.
    Damaged(String),
}

fn key(kind: u8, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(kind);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn sled_message(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

impl DiskSpool {
    /// Opens the spool in `dir`, creating it if needed, and reads what it
    /// holds. Blocks on the disk: not on a runtime thread.
    ///
    /// A spool whose files cannot be read (truncated, overwritten, written
    /// by a newer version) is reported with its path, moved aside to
    /// `DIR.damaged-<UTC time>`, and a fresh one is opened in its place, so
    /// a damaged spool never stops the TaskTracker from starting. A
    /// directory another process holds is an error naming it.
    pub fn open(dir: &Path, limits: SpoolLimits) -> Result<DiskSpool> {
        if limits.max_entries == 0 || limits.max_bytes == 0 {
            return Err(Error::Config {
                field: "--spool-max-entries/--spool-max-bytes",
                message: "must be above zero".into(),
            });
        }
        match Self::try_open(dir, limits) {
            Ok(spool) => Ok(spool),
            Err(OpenError::InUse) => Err(in_use(dir)),
            Err(OpenError::Damaged(why)) => {
                let aside = Self::move_aside(dir, &why)?;
                tracing::error!(
                    "the outcome spool {} cannot be read ({why}); moved it to {} and \
                     started with an empty spool: what it held is not delivered (the JobTracker runs those jobs again)",
                    dir.display(),
                    aside.display()
                );
                match Self::try_open(dir, limits) {
                    Ok(spool) => Ok(spool),
                    Err(OpenError::InUse) => Err(in_use(dir)),
                    Err(OpenError::Damaged(why)) => Err(Error::Spool(format!(
                        "cannot open a fresh spool in {}: {why}",
                        dir.display()
                    ))),
                }
            }
        }
    }

    /// Renames a damaged spool directory out of the way.
    fn move_aside(dir: &Path, why: &str) -> Result<PathBuf> {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let mut name = dir
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "spool".into());
        name.push(format!(".damaged-{stamp}"));
        let aside = dir.with_file_name(name);
        std::fs::rename(dir, &aside).map_err(|e| {
            Error::Spool(format!(
                "the spool {} cannot be read ({why}) and cannot be moved aside to {}: {e}; \
                 move or remove it by hand",
                dir.display(),
                aside.display()
            ))
        })?;
        Ok(aside)
    }

    fn try_open(dir: &Path, limits: SpoolLimits) -> Result<DiskSpool, OpenError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| OpenError::Damaged(format!("cannot create the directory: {e}")))?;
        let data = dir.join("spool.sled");
        let lock_file = data.join("db");
        match check_not_in_use(&lock_file, dir) {
            Ok(()) => {}
            Err(durable::Error::InUse { .. }) => return Err(OpenError::InUse),
            Err(e) => return Err(OpenError::Damaged(sled_message(&e))),
        }
        // A spool written before has sled's config file; one without its
        // format key then lost its content.
        let existed = data.join("conf").exists();
        // sled panics on some damaged files instead of returning an error.
        let opened = std::panic::catch_unwind(|| -> Result<_, OpenError> {
            let db = ::sled::Config::new()
                .path(&data)
                .mode(::sled::Mode::HighThroughput)
                .cache_capacity(CACHE_BYTES)
                // Flushes come from the engine's flush thread only.
                .flush_every_ms(None)
                .open()
                .map_err(|e| match e {
                    ::sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                        OpenError::InUse
                    }
                    e => OpenError::Damaged(sled_message(&e)),
                })?;
            let tree = db
                .open_tree("spool")
                .map_err(|e| OpenError::Damaged(sled_message(&e)))?;
            let loaded = load(&tree, existed)?;
            Ok((db, tree, loaded))
        });
        let (db, tree, loaded) = match opened {
            Ok(r) => r?,
            Err(_) => {
                return Err(OpenError::Damaged(
                    "the storage engine failed reading it".into(),
                ))
            }
        };
        let fresh = loaded.is_none();
        let loaded = loaded.unwrap_or_default();
        let engine = Engine::start(db, tree).map_err(|e| OpenError::Damaged(sled_message(&e)))?;
        let mut spool = DiskSpool {
            dir: dir.to_path_buf(),
            lock_file,
            limits,
            engine: Arc::new(engine),
            outcomes: loaded.outcomes,
            outcome_generations: BTreeMap::new(),
            by_run: HashMap::new(),
            extras: loaded.extras,
            sizes: loaded.sizes,
            bytes: 0,
            next_seq: loaded.next_seq,
            closed: false,
            write_failed: false,
        };
        spool.bytes = spool.sizes.values().sum();
        for (&seq, report) in &spool.outcomes {
            spool
                .by_run
                .insert((report.job_id.clone(), report.attempt), seq);
        }
        if fresh {
            let mut w = Writes::default();
            w.insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes()[..]);
            spool.commit(w);
        }
        if !spool.is_empty() || !spool.extras.is_empty() {
            tracing::info!(
                "the outcome spool {} holds {} outcomes and {} log lines and starts \
                 ({} bytes) to deliver",
                dir.display(),
                spool.outcomes.len(),
                spool.extras.len(),
                spool.bytes
            );
        }
        Ok(spool)
    }

    /// The directory of this spool.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Entries held: outcomes, log lines and starts.
    pub fn entries(&self) -> usize {
        self.outcomes.len() + self.extras.len()
    }

    /// Bytes held (keys and encoded values).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The limits this spool was opened with.
    pub fn limits(&self) -> SpoolLimits {
        self.limits
    }

    /// Queues `writes` and asks for a flush (see [`OutcomeSpool`]);
    /// `false` when they cannot reach the disk (closed, or a write failed).
    fn commit(&mut self, writes: Writes) -> bool {
        if self.closed {
            return false;
        }
        if let Err(e) = self.engine.commit(writes) {
            // Once is enough: the engine refuses every write after the
            // first failure.
            if !self.write_failed {
                self.write_failed = true;
                tracing::error!(
                    "cannot write to the outcome spool {}: {}; what is spooled from now on \
                     is kept in memory only",
                    self.dir.display(),
                    sled_message(&e)
                );
            }
            return false;
        }
        self.engine.wake_writer();
        self.engine.flush_soon();
        true
    }

    fn next(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Spools one entry; its sequence, and the engine's generation that
    /// writes it (`None` when it cannot reach the disk).
    fn add(&mut self, kind: u8, value: Vec<u8>) -> (u64, Option<u64>) {
        let seq = self.next();
        let size = value.len() as u64 + 9;
        self.bytes += size;
        self.sizes.insert(seq, size);
        let mut w = Writes::default();
        w.insert(key(kind, seq), value);
        let generation = self.engine.next_generation();
        (seq, self.commit(w).then_some(generation))
    }

    fn forget(&mut self, w: &mut Writes, kind: u8, seq: u64) {
        if let Some(size) = self.sizes.remove(&seq) {
            self.bytes -= size;
        }
        w.remove(key(kind, seq));
    }
}

fn in_use(dir: &Path) -> Error {
    Error::Spool(format!(
        "the spool directory {} is in use by another process; give each TaskTracker \
         its own --spool-dir",
        dir.display()
    ))
}

#[derive(Default)]
struct Loaded {
    outcomes: BTreeMap<u64, pb::OutcomeReport>,
    extras: BTreeMap<u64, Extra>,
    sizes: HashMap<u64, u64>,
    next_seq: u64,
}

/// Reads every entry of `tree`; `None` for a new spool. `existed`: the
/// directory held a spool before this open.
fn load(tree: &::sled::Tree, existed: bool) -> Result<Option<Loaded>, OpenError> {
    let damaged = |what: String| OpenError::Damaged(what);
    match tree
        .get(FORMAT_KEY)
        .map_err(|e| damaged(sled_message(&e)))?
    {
        None if tree.is_empty() && !existed => return Ok(None),
        None => return Err(damaged("its format version is missing".into())),
        Some(v) => {
            let version = <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| damaged("its format version is unreadable".into()))?;
            if version != FORMAT_VERSION {
                return Err(damaged(format!(
                    "it is in format {version}; this TaskTracker reads format {FORMAT_VERSION}"
                )));
            }
        }
    }
    let mut loaded = Loaded::default();
    for entry in tree.iter() {
        let (k, v) = entry.map_err(|e| damaged(sled_message(&e)))?;
        if k.as_ref() == FORMAT_KEY {
            continue;
        }
        let seq = match <[u8; 8]>::try_from(&k[1..]) {
            Ok(b) if k.len() == 9 => u64::from_be_bytes(b),
            _ => return Err(damaged(format!("an unknown key {:?}", k.as_ref()))),
        };
        let bad = |e: prost::DecodeError| damaged(format!("entry {seq} is unreadable: {e}"));
        match k[0] {
            b'o' => {
                loaded
                    .outcomes
                    .insert(seq, pb::OutcomeReport::decode(v.as_ref()).map_err(bad)?);
            }
            b's' => {
                loaded.extras.insert(
                    seq,
                    Extra::Started(pb::Started::decode(v.as_ref()).map_err(bad)?),
                );
            }
            b'l' => {
                loaded.extras.insert(
                    seq,
                    Extra::Log(pb::BizLog::decode(v.as_ref()).map_err(bad)?),
                );
            }
            _ => return Err(damaged(format!("an unknown key {:?}", k.as_ref()))),
        }
        loaded.sizes.insert(seq, v.len() as u64 + 9);
        loaded.next_seq = loaded.next_seq.max(seq);
    }
    Ok(Some(loaded))
}

impl OutcomeSpool for DiskSpool {
    fn put(&mut self, report: &pb::OutcomeReport) -> Result<()> {
        let run = (report.job_id.clone(), report.attempt);
        let mut w = Writes::default();
        if let Some(old) = self.by_run.remove(&run) {
            self.outcomes.remove(&old);
            self.outcome_generations.remove(&old);
            self.forget(&mut w, b'o', old);
            self.commit(w);
        }
        let (seq, generation) = self.add(b'o', report.encode_to_vec());
        // One that cannot reach the disk is never counted as on it.
        self.outcome_generations
            .insert(seq, generation.unwrap_or(u64::MAX));
        self.outcomes.insert(seq, report.clone());
        self.by_run.insert(run, seq);
        Ok(())
    }

    fn put_log(&mut self, line: &pb::BizLog) -> Result<bool> {
        if self.is_full() {
            return Ok(false);
        }
        let (seq, _) = self.add(b'l', line.encode_to_vec());
        self.extras.insert(seq, Extra::Log(line.clone()));
        Ok(true)
    }

    fn put_started(&mut self, runs: &[pb::RunRef], at_unix_ms: i64) -> Result<()> {
        if runs.is_empty() || self.is_full() {
            return Ok(());
        }
        let started = pb::Started {
            runs: runs.to_vec(),
            at_unix_ms,
        };
        let (seq, _) = self.add(b's', started.encode_to_vec());
        self.extras.insert(seq, Extra::Started(started));
        Ok(())
    }

    fn ack(&mut self, job_id: &str, attempt: u32) -> Result<()> {
        let Some(seq) = self.by_run.remove(&(job_id.to_string(), attempt)) else {
            return Ok(());
        };
        let mut w = Writes::default();
        self.outcomes.remove(&seq);
        self.outcome_generations.remove(&seq);
        self.forget(&mut w, b'o', seq);
        // Everything spooled before this outcome was sent before it on the
        // stream that acknowledged it, and handled first.
        let confirmed: Vec<(u64, u8)> = self
            .extras
            .range(..seq)
            .map(|(&s, e)| {
                let kind = match e {
                    Extra::Started(_) => b's',
                    Extra::Log(_) => b'l',
                };
                (s, kind)
            })
            .collect();
        for (s, kind) in confirmed {
            self.extras.remove(&s);
            self.forget(&mut w, kind, s);
        }
        self.commit(w);
        Ok(())
    }

    fn unacked(&self) -> Result<Vec<pb::OutcomeReport>> {
        Ok(self.outcomes.values().cloned().collect())
    }

    fn pending(&self) -> Result<Vec<Spooled>> {
        let mut all = Vec::with_capacity(self.entries());
        let mut outcomes = self.outcomes.iter().peekable();
        let mut extras = self.extras.iter().peekable();
        loop {
            let take_outcome = match (outcomes.peek(), extras.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((o, _)), Some((e, _))) => o < e,
            };
            if take_outcome {
                if let Some((_, r)) = outcomes.next() {
                    all.push(Spooled::Outcome(r.clone()));
                }
            } else if let Some((_, e)) = extras.next() {
                all.push(match e {
                    Extra::Started(s) => Spooled::Started(s.runs.clone(), s.at_unix_ms),
                    Extra::Log(l) => Spooled::Log(l.clone()),
                });
            }
        }
        Ok(all)
    }

    fn len(&self) -> usize {
        self.outcomes.len()
    }

    fn is_full(&self) -> bool {
        self.entries() >= self.limits.max_entries || self.bytes >= self.limits.max_bytes
    }

    fn full_reason(&self) -> String {
        let mut reasons = Vec::new();
        if self.entries() >= self.limits.max_entries {
            reasons.push(format!(
                "{} entries, at its limit of {} (raise it with --spool-max-entries or \
                 TASKTRACKER_SPOOL_MAX_ENTRIES)",
                self.entries(),
                self.limits.max_entries
            ));
        }
        if self.bytes >= self.limits.max_bytes {
            reasons.push(format!(
                "{} bytes, at its limit of {} bytes (raise it with --spool-max-bytes or \
                 TASKTRACKER_SPOOL_MAX_BYTES)",
                self.bytes, self.limits.max_bytes
            ));
        }
        format!(
            "the spool in {} holds {}; {} outcomes wait for the JobTracker's acknowledgement",
            self.dir.display(),
            reasons.join(" and "),
            self.outcomes.len()
        )
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn durable_len(&self) -> usize {
        let flushed = self.engine.flushed();
        // Generations grow with sequences: the outcomes not on disk yet are
        // the newest ones.
        let waiting = self
            .outcome_generations
            .values()
            .rev()
            .take_while(|&&g| g > flushed)
            .count();
        self.outcomes.len() - waiting
    }

    fn awaits_flush(&self) -> bool {
        let flushed = self.engine.flushed();
        self.outcome_generations
            .values()
            .rev()
            .take_while(|&&g| g > flushed)
            .any(|&g| g != u64::MAX)
    }

    fn flushed(&self) -> Pin<Box<dyn Future<Output = Result<()>> + Send + 'static>> {
        let engine = self.engine.clone();
        let dir = self.dir.clone();
        Box::pin(async move {
            engine.flush(false).await.map_err(|e| {
                Error::Spool(format!(
                    "cannot flush the spool {}: {}",
                    dir.display(),
                    sled_message(&e)
                ))
            })
        })
    }

    fn sync(&self) -> Pin<Box<dyn Future<Output = Result<()>> + Send + 'static>> {
        let engine = self.engine.clone();
        let dir = self.dir.clone();
        Box::pin(async move {
            engine.flush(true).await.map_err(|e| {
                Error::Spool(format!(
                    "cannot flush the spool {}: {}",
                    dir.display(),
                    sled_message(&e)
                ))
            })
        })
    }

    fn close(&mut self) -> Pin<Box<dyn Future<Output = Result<()>> + Send + 'static>> {
        self.closed = true;
        let engine = self.engine.clone();
        let dir = self.dir.clone();
        Box::pin(async move {
            engine.close().await.map_err(|e| {
                Error::Spool(format!(
                    "cannot close the spool {}: {}",
                    dir.display(),
                    sled_message(&e)
                ))
            })
        })
    }
}

impl Drop for DiskSpool {
    /// Applies what is queued, lets sled flush as its last handle goes, and
    /// waits until the directory's lock is released, so the directory can
    /// be opened again at once. Blocks.
    fn drop(&mut self) {
        self.engine.stop();
        if Arc::strong_count(&self.engine) == 1 {
            if let Err(e) = wait_for_release(&self.lock_file) {
                tracing::error!(
                    "closing the spool {}: {}",
                    self.dir.display(),
                    sled_message(&e)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(job_id: &str, attempt: u32, finished: i64) -> pb::OutcomeReport {
        pb::OutcomeReport {
            job_id: job_id.into(),
            attempt,
            finished_at_unix_ms: finished,
            ..Default::default()
        }
    }

    fn line(job_id: &str, message: &str) -> pb::BizLog {
        pb::BizLog {
            job_id: job_id.into(),
            attempt: 1,
            message: message.into(),
            ..Default::default()
        }
    }

    fn run(job_id: &str) -> pb::RunRef {
        pb::RunRef {
            job_id: job_id.into(),
            attempt: 1,
        }
    }

    fn open(dir: &Path) -> DiskSpool {
        DiskSpool::open(dir, SpoolLimits::default()).expect("open the spool")
    }

    /// Closes the spool as the TaskTracker does, then lets it go.
    async fn close(mut spool: DiskSpool) {
        spool.close().await.expect("close");
        tokio::task::spawn_blocking(move || drop(spool))
            .await
            .expect("drop");
    }

    #[tokio::test]
    async fn counts_an_outcome_on_disk_only_once_a_flush_wrote_it() {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let mut spool = open(&tmp.path().join("spool"));
        spool.engine.pause_writes(true);
        spool.put(&report("a", 1, 10)).expect("put");
        spool.put(&report("b", 1, 11)).expect("put");
        assert_eq!((spool.len(), spool.durable_len()), (2, 0));
        assert!(spool.awaits_flush());
        spool.engine.pause_writes(false);
        spool.flushed().await.expect("flush");
        assert_eq!(spool.durable_len(), 2);
        // A new outcome is not on disk until the next flush; one
        // acknowledged leaves both counts.
        spool.engine.pause_writes(true);
        spool.put(&report("c", 1, 12)).expect("put");
        spool.ack("a", 1).expect("ack");
        assert_eq!((spool.len(), spool.durable_len()), (2, 1));
        spool.engine.pause_writes(false);
        spool.flushed().await.expect("flush");
        assert_eq!(spool.durable_len(), 2);
        assert!(!spool.awaits_flush());
        // Once closed, an outcome cannot reach the disk: it is never counted
        // as on it, and no flush is awaited for it.
        spool.close().await.expect("close");
        spool.put(&report("d", 1, 13)).expect("put");
        assert_eq!((spool.len(), spool.durable_len()), (3, 2));
        assert!(!spool.awaits_flush());
        tokio::task::spawn_blocking(move || drop(spool))
            .await
            .expect("drop");
    }

    #[tokio::test]
    async fn keeps_everything_across_a_reopen_in_order_until_acknowledged() {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let dir = tmp.path().join("spool");
        let mut spool = open(&dir);
        spool.put_started(&[run("a")], 5).expect("started");
        assert!(spool.put_log(&line("a", "hello")).expect("log"));
        spool.put(&report("a", 1, 10)).expect("put");
        spool.put_started(&[run("b")], 11).expect("started");
        assert!(spool.put_log(&line("b", "from b")).expect("log"));
        spool.put(&report("b", 1, 20)).expect("put");
        // The same run again replaces its outcome.
        spool.put(&report("b", 1, 21)).expect("put");
        spool.sync().await.expect("sync");
        close(spool).await;

        let mut spool = open(&dir);
        assert_eq!(spool.len(), 2);
        assert_eq!(spool.entries(), 6);
        assert_eq!(
            spool.pending().expect("pending"),
            vec![
                Spooled::Started(vec![run("a")], 5),
                Spooled::Log(line("a", "hello")),
                Spooled::Outcome(report("a", 1, 10)),
                Spooled::Started(vec![run("b")], 11),
                Spooled::Log(line("b", "from b")),
                Spooled::Outcome(report("b", 1, 21)),
            ]
        );
        // An acknowledgement covers what was spooled before its outcome,
        // not what came after.
        spool.ack("a", 1).expect("ack");
        spool.ack("unknown", 3).expect("ack");
        assert_eq!(
            spool.pending().expect("pending"),
            vec![
                Spooled::Started(vec![run("b")], 11),
                Spooled::Log(line("b", "from b")),
                Spooled::Outcome(report("b", 1, 21)),
            ]
        );
        close(spool).await;

        let mut spool = open(&dir);
        assert_eq!(spool.unacked().expect("unacked"), vec![report("b", 1, 21)]);
        spool.ack("b", 1).expect("ack");
        assert!(spool.is_empty());
        assert_eq!(spool.entries(), 0);
        assert_eq!(spool.bytes(), 0);
        close(spool).await;
        let spool = open(&dir);
        assert!(spool.pending().expect("pending").is_empty());
        close(spool).await;
    }

    #[tokio::test]
    async fn a_full_spool_keeps_outcomes_but_no_more_log_lines() {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let limits = SpoolLimits {
            max_entries: 3,
            max_bytes: 1 << 20,
        };
        let mut spool = DiskSpool::open(tmp.path(), limits).expect("open");
        assert!(spool.put_log(&line("a", "1")).expect("log"));
        assert!(spool.put_log(&line("a", "2")).expect("log"));
        assert!(!spool.is_full());
        spool.put(&report("a", 1, 10)).expect("put");
        assert!(spool.is_full());
        assert!(!spool.put_log(&line("a", "3")).expect("log"));
        let reason = spool.full_reason();
        let dir = tmp.path().display().to_string();
        assert!(reason.contains(&dir), "{reason}");
        assert!(reason.contains("limit of 3"), "{reason}");
        assert!(reason.contains("--spool-max-entries"), "{reason}");
        spool.put_started(&[run("c")], 1).expect("started");
        // An outcome is kept past the limit: its run already holds a slot.
        spool.put(&report("b", 1, 11)).expect("put");
        assert_eq!(spool.entries(), 4);
        spool.ack("a", 1).expect("ack");
        assert!(!spool.is_full());
        assert_eq!(spool.unacked().expect("unacked"), vec![report("b", 1, 11)]);
        close(spool).await;

        let tmp = tempfile::tempdir().expect("temporary directory");
        let limits = SpoolLimits {
            max_entries: 1000,
            max_bytes: 100,
        };
        let mut spool = DiskSpool::open(tmp.path(), limits).expect("open");
        assert!(spool.put_log(&line("a", &"x".repeat(120))).expect("log"));
        assert!(spool.is_full());
        assert!(!spool.put_log(&line("a", "more")).expect("log"));
        let reason = spool.full_reason();
        assert!(
            reason.contains(&tmp.path().display().to_string()),
            "{reason}"
        );
        assert!(reason.contains("limit of 100 bytes"), "{reason}");
        assert!(reason.contains("--spool-max-bytes"), "{reason}");
        assert!(!reason.contains("--spool-max-entries"), "{reason}");
        close(spool).await;
    }

    #[tokio::test]
    async fn a_second_opener_is_refused_with_the_directory_named() {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let dir = tmp.path().join("spool");
        let mut first = open(&dir);
        first.put(&report("a", 1, 10)).expect("put");
        let error = DiskSpool::open(&dir, SpoolLimits::default())
            .expect_err("a second opener is refused")
            .to_string();
        assert!(error.contains(&dir.display().to_string()), "{error}");
        assert!(error.contains("in use"), "{error}");
        close(first).await;
        // Nothing was moved aside, and the outcome is still there.
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("spool")]);
        let spool = open(&dir);
        assert_eq!(spool.len(), 1);
        close(spool).await;
    }

    /// Damages the spool in `dir` with `damage` (given sled's data file),
    /// opens it again and returns the spool and what was moved aside.
    async fn reopen_damaged(damage: impl FnOnce(&Path)) -> (DiskSpool, Vec<PathBuf>) {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let dir = tmp.path().join("spool");
        let mut spool = open(&dir);
        for n in 0..50 {
            spool.put(&report(&format!("job-{n}"), 1, n)).expect("put");
        }
        spool.sync().await.expect("sync");
        close(spool).await;
        damage(&dir.join("spool.sled").join("db"));
        let spool = tokio::task::spawn_blocking(move || open(&dir))
            .await
            .expect("open");
        let aside: Vec<PathBuf> = std::fs::read_dir(tmp.path())
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.to_string_lossy().contains(".damaged-"))
            .collect();
        // Keep the directory alive while the caller looks.
        std::mem::forget(tmp);
        (spool, aside)
    }

    #[tokio::test]
    async fn a_spool_overwritten_with_garbage_is_moved_aside_and_a_fresh_one_opened() {
        let (mut spool, aside) = reopen_damaged(|db| {
            let len = std::fs::metadata(db).expect("metadata").len() as usize;
            let garbage: Vec<u8> = (0..len.max(4096)).map(|i| (i * 7 + 13) as u8).collect();
            std::fs::write(db, garbage).expect("overwrite");
        })
        .await;
        assert_eq!(aside.len(), 1, "moved aside: {aside:?}");
        assert!(aside[0].join("spool.sled").join("db").exists());
        assert!(spool.is_empty());
        // The fresh spool works.
        spool.put(&report("new", 1, 1)).expect("put");
        assert_eq!(spool.len(), 1);
        close(spool).await;
    }

    #[tokio::test]
    async fn a_truncated_spool_is_moved_aside_and_a_fresh_one_opened() {
        let (spool, aside) = reopen_damaged(|db| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(db)
                .expect("open")
                .set_len(0)
                .expect("truncate");
        })
        .await;
        assert_eq!(aside.len(), 1, "moved aside: {aside:?}");
        assert!(spool.is_empty());
        close(spool).await;
    }

    #[tokio::test]
    async fn an_entry_that_does_not_decode_moves_the_spool_aside() {
        let (spool, aside) = reopen_damaged(|db| {
            let data = db.parent().expect("the data directory");
            let sled = ::sled::Config::new().path(data).open().expect("open sled");
            let tree = sled.open_tree("spool").expect("tree");
            tree.insert(key(b'o', 1), &[0xff, 0xff, 0xff, 0xff][..])
                .expect("insert");
            sled.flush().expect("flush");
            drop(tree);
            drop(sled);
            wait_for_release(db).expect("sled lets go of the directory");
        })
        .await;
        assert_eq!(aside.len(), 1, "moved aside: {aside:?}");
        assert!(spool.is_empty());
        close(spool).await;
    }

    #[test]
    fn limits_of_zero_are_refused() {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let limits = SpoolLimits {
            max_entries: 0,
            max_bytes: 1,
        };
        assert!(DiskSpool::open(tmp.path(), limits).is_err());
    }
}
