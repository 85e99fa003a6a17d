//! A durability engine over sled: an ordered write queue applied by a
//! thread of its own, and a group-commit flusher. The JobTracker's
//! embedded store is built on it, and so can be a local spool (enable the
//! `durable` feature).
//!
//! A caller changes its own state under its own lock and, under the same
//! hold, [commits](crate::durable::Engine::commit) the writes that record the change as
//! one batch: batches take increasing generations and reach the disk in
//! that order, so a crash keeps a prefix of them. Until a batch is applied
//! its values are read from the queue ([`Engine::unapplied`](crate::durable::Engine::unapplied)); a scan of
//! the tree first waits for the batches committed before it
//! ([`Engine::settled`](crate::durable::Engine::settled)). [`Engine::flush`](crate::durable::Engine::flush) returns once every batch
//! committed before it is durable, one sled flush serving every caller
//! waiting (group commit). Nothing here knows about jobs: a local spool
//! over sled can use it as it is.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The cause of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong in the engine, classed by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// I/O on the data directory failed: the caller may retry later.
    #[error("{context}")]
    Io {
        /// What the engine was doing.
        context: String,
        /// What failed.
        #[source]
        source: BoxError,
    },
    /// A bug: a dead or panicked thread, a write sled refused for a reason
    /// other than I/O. Retrying will not help.
    #[error("{context}")]
    Internal {
        /// What the engine was doing.
        context: String,
        /// What failed, if anything did.
        #[source]
        source: Option<BoxError>,
    },
    /// The engine is closed: it takes no more writes.
    #[error("closed")]
    Closed,
    /// Another engine, in this process or another, holds the directory.
    #[error("{} is in use", dir.display())]
    InUse {
        /// The directory.
        dir: std::path::PathBuf,
    },
}

impl Error {
    fn io(context: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::Io {
            context: context.into(),
            source: source.into(),
        }
    }

    fn internal(context: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::Internal {
            context: context.into(),
            source: Some(source.into()),
        }
    }
}

/// `e` and every cause below it, joined by `: `, for logs.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Makes writes durable, one flush at a time.
///
/// sled's `flush_async` stalled for good here when several callers flushed
/// at once under load, so every flush goes through one thread. A caller
/// asks after its batch is queued; the thread drains every request that
/// is waiting, waits until the write thread has applied every batch queued
/// before them, flushes once, and answers them all (group commit).
///
/// A request is urgent (a submit's ack or a claim waits on it) or not (an
/// outcome's ack to its TaskTracker, which keeps the outcome until then,
/// or a write whose loss only repeats work). When only requests that are
/// not urgent wait, the thread lingers up to [`LINGER`] for an urgent one
/// and flushes once for all, since each flush costs sled a log write and
/// a sync: at 16,000 jobs/s in small calls the runtime threads went from
/// 0.93 to 0.76 of a core (`perf stat --per-thread`).
struct Flusher {
    /// `None` once the store is closed.
    requests: Mutex<Option<std::sync::mpsc::Sender<FlushRequest>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct FlushRequest {
    reply: tokio::sync::oneshot::Sender<Result<()>>,
    urgent: bool,
}

/// How long a flush nobody urgently waits for may wait for one somebody
/// does.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

impl Flusher {
    fn start(db: ::sled::Db, generations: Arc<Generations>) -> Result<Flusher> {
        let (tx, rx) = std::sync::mpsc::channel::<FlushRequest>();
        let thread = std::thread::Builder::new()
            .name("sled-flusher".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    if !waiting.iter().any(|w| w.urgent) {
                        let until = std::time::Instant::now() + LINGER;
                        while let Some(left) =
                            until.checked_duration_since(std::time::Instant::now())
                        {
                            match rx.recv_timeout(left) {
                                Ok(w) => {
                                    let urgent = w.urgent;
                                    waiting.push(w);
                                    if urgent {
                                        waiting.extend(rx.try_iter());
                                        break;
                                    }
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    // Every batch committed before these requests has a
                    // generation up to this one; the flush waits until the
                    // write thread has applied them, so it makes them
                    // durable.
                    let need = generations.assigned.load(Ordering::SeqCst);
                    generations.wait_written(need);
                    let result = match generations.failed.get() {
                        Some(f) => Err(f.clone()),
                        None => db
                            .flush()
                            .map(|_| ())
                            .map_err(|e| WriteFailure::sled("flushing the data directory", e)),
                    };
                    if result.is_ok() {
                        generations.flushed.fetch_max(need, Ordering::SeqCst);
                    }
                    for w in waiting {
                        let _ = w.reply.send(result.clone().map_err(|f| f.error()));
                    }
                }
            })
            .map_err(|e| Error::internal("starting the flush thread", e))?;
        Ok(Flusher {
            requests: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    fn send(&self, request: FlushRequest) -> Result<()> {
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        match requests.as_ref() {
            None => Err(Error::Closed),
            Some(r) => r.send(request).map_err(|_| flush_thread_gone()),
        }
    }

    /// Asks for a flush without waiting for it (not urgent).
    fn flush_soon(&self) {
        let (reply, _) = tokio::sync::oneshot::channel();
        // Closed: `close` flushed everything already.
        let _ = self.send(FlushRequest {
            reply,
            urgent: false,
        });
    }

    /// Returns once a flush that began after this call has ended.
    async fn flush(&self, urgent: bool) -> Result<()> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(FlushRequest { reply, urgent })?;
        rx.await.map_err(|_| flush_thread_gone())?
    }

    /// Refuses new requests; the thread ends, and with it its handle on
    /// the database. Returns the thread to join.
    fn begin_stop(&self) -> Option<std::thread::JoinHandle<()>> {
        // Closing the channel ends the thread's loop.
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.thread.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        join("flush", self.begin_stop());
    }
}

/// Writes to apply in order, one key at a time.
///
/// Not a `sled::Batch`: sled applies a batch under an exclusive lock that
/// its flush holds shared for the whole write and sync of the log, so every
/// batch waited out each flush, 3 to 30 ms here, and the batches behind it
/// (see [`Engine::commit`]). Single writes go on during a flush. A crash keeps a prefix
/// of the writes in order, so each caller puts a write that others depend
/// on first: a feedback item before the outcome that produced it, a cycle's
/// job before its template's move to the next point.
#[derive(Default)]
pub struct Writes(Vec<(::sled::IVec, Option<::sled::IVec>)>);

impl Writes {
    /// Writes `value` under `key`.
    pub fn insert<K: Into<::sled::IVec>, V: Into<::sled::IVec>>(&mut self, key: K, value: V) {
        self.0.push((key.into(), Some(value.into())));
    }

    /// Removes `key`.
    pub fn remove<K: Into<::sled::IVec>>(&mut self, key: K) {
        self.0.push((key.into(), None));
    }
}

/// Write generations: each batch of writes takes the next one under the
/// caller's lock (`assigned`, see [`Engine::commit`]), is applied in that order (`written`, after the
/// lock is released), and a flush makes every applied one durable.
#[derive(Default)]
struct Generations {
    assigned: AtomicU64,
    written: AtomicU64,
    flushed: AtomicU64,
    /// Set by the first write sled refused: the store is in error from
    /// then on (sled refuses writes after an I/O error).
    failed: std::sync::OnceLock<WriteFailure>,
    /// Signalled when `written` moves, for the flush thread.
    moved: (Mutex<()>, std::sync::Condvar),
}

impl Generations {
    /// Records that every batch up to `generation` is applied.
    fn written(&self, generation: u64) {
        let _guard = self.moved.0.lock().unwrap_or_else(|p| p.into_inner());
        self.written.store(generation, Ordering::SeqCst);
        self.moved.1.notify_all();
    }

    /// Blocks until every batch up to `generation` is applied (or the
    /// store failed). Only for the flush thread: never on the runtime.
    fn wait_written(&self, generation: u64) {
        let mut guard = self.moved.0.lock().unwrap_or_else(|p| p.into_inner());
        while self.written.load(Ordering::SeqCst) < generation && self.failed.get().is_none() {
            guard = self.moved.1.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Batches not applied yet, and the values they write: reads of a job that
/// is no longer in the index see its newest version here until it is in
/// the tree.
#[derive(Default)]
struct Pending {
    /// Key -> (generation of the batch, value; `None` for a removal).
    writes: HashMap<::sled::IVec, (u64, Option<::sled::IVec>)>,
    /// Batches waiting to be applied, by generation.
    queued: BTreeMap<u64, Writes>,
    /// Set when the store closes: the write thread applies what is queued
    /// and ends.
    closing: bool,
    /// Tests hold the write thread to force an order of events.
    /// Set by [`Engine::pause_writes`].
    paused: bool,
}

impl Pending {
    /// The next batch for the write thread to apply, if it may take one.
    fn take_next(&mut self) -> Option<(u64, Writes)> {
        if self.paused && !self.closing {
            return None;
        }
        self.queued.pop_first()
    }
}

/// Applies committed batches to the tree, in generation order, on a thread
/// of its own.
///
/// A runtime thread that applied them itself was a runtime thread blocked
/// for as long as sled took: microseconds mostly, but a sled insert takes
/// milliseconds at times (its log segment bookkeeping), and tasks that
/// thread had just woken, such as the dispatcher a submit wakes, waited
/// with it. Nothing on the runtime waits for a batch to be applied: its
/// values are read from [`Pending`] until then, scans wait without
/// blocking ([`Engine::settled`]), and a flush waits on its own thread.
struct Writer {
    pending: Mutex<Pending>,
    /// Signalled when a batch is queued or the store closes.
    work: std::sync::Condvar,
    /// Signalled when `generations.written` moves, for reads that scan the
    /// tree (see [`Engine::settled`]).
    applied: tokio::sync::Notify,
    generations: Arc<Generations>,
}

impl Writer {
    fn pending_lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The write thread: applies queued batches to `tree` until the store
    /// closes and nothing is left. The thread's handle on the tree ends
    /// with it.
    fn run(&self, tree: ::sled::Tree) {
        loop {
            let (generation, batch) = {
                let mut p = self.pending_lock();
                loop {
                    if let Some(next) = p.take_next() {
                        break next;
                    }
                    if p.closing {
                        return;
                    }
                    p = self.work.wait(p).unwrap_or_else(|p| p.into_inner());
                }
            };
            let keys: Vec<::sled::IVec> = batch.0.iter().map(|(k, _)| k.clone()).collect();
            if self.generations.failed.get().is_none() {
                let applied =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply(&tree, batch)));
                let failure = match applied {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(WriteFailure::sled("writing to the data directory", e)),
                    Err(_) => Some(WriteFailure {
                        retry: false,
                        context: "the write thread panicked; the store takes no more writes".into(),
                        source: None,
                    }),
                };
                if let Some(f) = failure {
                    tracing::error!("{}", chain(&f.error()));
                    let _ = self.generations.failed.set(f);
                }
            }
            {
                let mut p = self.pending_lock();
                for key in keys {
                    if p.writes.get(&key).is_some_and(|(g, _)| *g == generation) {
                        p.writes.remove(&key);
                    }
                }
                self.generations.written(generation);
            }
            self.applied.notify_waiters();
        }
    }
}

/// Applies `writes` to `tree` in order (see [`Writes`]).
fn apply(tree: &::sled::Tree, writes: Writes) -> std::result::Result<(), ::sled::Error> {
    for (key, value) in writes.0 {
        match value {
            Some(v) => {
                tree.insert(key, v)?;
            }
            None => {
                tree.remove(key)?;
            }
        }
    }
    Ok(())
}

/// The write thread of a store; stopping it applies what is queued first.
struct WriteThread {
    writer: Arc<Writer>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl WriteThread {
    fn start(writer: Arc<Writer>, tree: ::sled::Tree) -> Result<WriteThread> {
        let thread = std::thread::Builder::new()
            .name("sled-writer".into())
            .spawn({
                let writer = writer.clone();
                move || writer.run(tree)
            })
            .map_err(|e| Error::internal("starting the write thread", e))?;
        Ok(WriteThread {
            writer,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Refuses new batches; the thread applies the queued ones and ends.
    /// Returns the thread to join.
    fn begin_stop(&self) -> Option<std::thread::JoinHandle<()>> {
        self.writer.pending_lock().closing = true;
        self.writer.work.notify_one();
        self.thread.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Drop for WriteThread {
    fn drop(&mut self) {
        join("write", self.begin_stop());
    }
}

/// Waits for a store thread to end. Blocks: not on the runtime.
fn join(what: &str, thread: Option<std::thread::JoinHandle<()>>) {
    if let Some(t) = thread {
        if t.join().is_err() {
            tracing::error!("the {what} thread panicked");
        }
    }
}

/// What the write and flush threads remember of the first write that
/// failed: every later call gets the same error.
#[derive(Clone, Debug)]
struct WriteFailure {
    /// Whether the caller may retry later (an I/O error) or it is a bug.
    retry: bool,
    context: String,
    source: Option<Arc<::sled::Error>>,
}

impl WriteFailure {
    fn sled(context: &str, e: ::sled::Error) -> WriteFailure {
        WriteFailure {
            retry: matches!(e, ::sled::Error::Io(_)),
            context: context.to_string(),
            source: Some(Arc::new(e)),
        }
    }

    fn error(&self) -> Error {
        let source = self.source.clone().map(|e| -> BoxError { Box::new(e) });
        let context = self.context.clone();
        match source {
            Some(source) if self.retry => Error::Io { context, source },
            source => Error::Internal { context, source },
        }
    }
}

fn flush_thread_gone() -> Error {
    Error::Internal {
        context: "the flush thread has stopped".into(),
        source: None,
    }
}

/// Refuses a directory whose sled `lock_file` another engine holds, in
/// this process or another ([`Error::InUse`]). sled would refuse it too,
/// but in words about a lock file.
pub fn check_not_in_use(lock_file: &Path, dir: &Path) -> Result<()> {
    let file = match std::fs::File::open(lock_file) {
        Ok(f) => f,
        // A new store: sled creates the file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("cannot open {}", lock_file.display()), e)),
    };
    match file.try_lock() {
        // Dropping the file releases the lock before sled takes it.
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::InUse {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Error::io(format!("cannot lock {}", lock_file.display()), e))
        }
    }
}

/// Blocks until sled has let go of the directory's lock.
///
/// sled holds its lock file open as long as anything holds its
/// configuration: the store's handles, and each of sled's I/O pool jobs
/// still writing a log buffer for it, which end shortly after the store's
/// last handle is dropped. Taking the lock (a blocking `flock`, no timer)
/// returns once the last of them closed the file. Only after the store's
/// own handles are gone: not on the runtime.
pub fn wait_for_release(lock_file: &Path) -> Result<()> {
    let file = std::fs::File::open(lock_file)
        .map_err(|e| Error::io(format!("cannot open {}", lock_file.display()), e))?;
    file.lock()
        .map_err(|e| Error::io(format!("cannot lock {}", lock_file.display()), e))?;
    // Dropping the file releases the lock.
    Ok(())
}

/// An ordered write queue and a group-commit flusher over one sled tree.
pub struct Engine {
    generations: Arc<Generations>,
    /// Stopped before `flusher`: closing applies every queued batch before
    /// the last flush.
    writes: WriteThread,
    flusher: Flusher,
}

impl Engine {
    /// Starts the write thread over `tree` and the flush thread over `db`;
    /// each keeps its handle until it is stopped.
    pub fn start(db: ::sled::Db, tree: ::sled::Tree) -> Result<Engine> {
        let generations = Arc::new(Generations::default());
        let writer = Arc::new(Writer {
            pending: Mutex::new(Pending::default()),
            work: std::sync::Condvar::new(),
            applied: tokio::sync::Notify::new(),
            generations: generations.clone(),
        });
        Ok(Engine {
            writes: WriteThread::start(writer, tree)?,
            flusher: Flusher::start(db, generations.clone())?,
            generations,
        })
    }

    fn pending_lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.writes.writer.pending_lock()
    }

    /// The generation the next [`Engine::commit`] gets, while the caller
    /// holds the lock that orders its commits.
    pub fn next_generation(&self) -> u64 {
        self.generations.assigned.load(Ordering::SeqCst) + 1
    }

    /// Every batch up to this generation is durable.
    pub fn flushed(&self) -> u64 {
        self.generations.flushed.load(Ordering::SeqCst)
    }

    /// Queues `batch` with the next generation. The caller holds the lock
    /// under which it changed the state the batch records, so the order of
    /// commits is the order of its changes; it calls
    /// [`Engine::wake_writer`] once that lock is released.
    pub fn commit(&self, batch: Writes) -> Result<()> {
        if let Some(f) = self.generations.failed.get() {
            return Err(f.error());
        }
        let mut p = self.pending_lock();
        if p.closing {
            return Err(Error::Closed);
        }
        let generation = self.generations.assigned.fetch_add(1, Ordering::SeqCst) + 1;
        for (key, value) in &batch.0 {
            p.writes.insert(key.clone(), (generation, value.clone()));
        }
        p.queued.insert(generation, batch);
        Ok(())
    }

    /// Lets the write thread take what was committed.
    pub fn wake_writer(&self) {
        self.writes.writer.work.notify_one();
    }

    /// The newest value committed for `key` and not applied yet: `None`
    /// when the tree is current, `Some(None)` for a removal.
    pub fn unapplied(&self, key: &[u8]) -> Option<Option<::sled::IVec>> {
        self.pending_lock().writes.get(key).map(|(_, v)| v.clone())
    }

    /// Keys under `prefix` that a batch not applied yet writes a value to.
    pub fn unapplied_keys(&self, prefix: &[u8]) -> Vec<::sled::IVec> {
        self.pending_lock()
            .writes
            .iter()
            .filter(|(k, (_, v))| v.is_some() && k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Waits (without blocking the thread) until every batch committed
    /// before this call is applied to the tree, so a scan sees them.
    pub async fn settled(&self) {
        let need = self.generations.assigned.load(Ordering::SeqCst);
        loop {
            let applied = self.writes.writer.applied.notified();
            tokio::pin!(applied);
            applied.as_mut().enable();
            if self.generations.written.load(Ordering::SeqCst) >= need
                || self.generations.failed.get().is_some()
            {
                return;
            }
            applied.await;
        }
    }

    /// Returns once every batch committed before the call is durable.
    /// An urgent flush starts at once; one that is not lingers up to 2 ms
    /// for an urgent one, so that one sled flush serves both.
    pub async fn flush(&self, urgent: bool) -> Result<()> {
        self.flusher.flush(urgent).await
    }

    /// Asks for a flush without waiting for it (not urgent).
    pub fn flush_soon(&self) {
        self.flusher.flush_soon()
    }

    /// Refuses new batches, applies the queued ones, makes them durable
    /// and ends both threads, and with them their handles on sled.
    pub async fn close(&self) -> Result<()> {
        let write_thread = self.writes.begin_stop();
        tokio::task::spawn_blocking(move || join("write", write_thread))
            .await
            .map_err(|e| Error::internal("stopping the write thread", e))?;
        // Every batch is applied now: this flush makes them all durable.
        let flushed = self.flusher.flush(true).await;
        let flush_thread = self.flusher.begin_stop();
        tokio::task::spawn_blocking(move || join("flush", flush_thread))
            .await
            .map_err(|e| Error::internal("stopping the flush thread", e))?;
        flushed
    }

    /// [`Engine::close`] for a drop: blocks, and leaves the last flush to
    /// sled, which flushes as its last handle goes.
    pub fn stop(&self) {
        join("write", self.writes.begin_stop());
        join("flush", self.flusher.begin_stop());
    }

    /// Holds the write thread while `paused` (batches queue up; closing
    /// still applies them): for tests that force an order of events.
    pub fn pause_writes(&self, paused: bool) {
        self.pending_lock().paused = paused;
        self.wake_writer();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> (::sled::Db, ::sled::Tree) {
        let db = ::sled::Config::new()
            .path(dir.join("db.sled"))
            .flush_every_ms(None)
            .open()
            .expect("open sled");
        let tree = db.open_tree("t").expect("tree");
        (db, tree)
    }

    fn put(key: &str, value: &str) -> Writes {
        let mut w = Writes::default();
        w.insert(key.as_bytes(), value.as_bytes());
        w
    }

    #[tokio::test]
    async fn batches_reach_the_tree_in_commit_order_and_closing_refuses_more() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (db, tree) = open(dir.path());
        let engine = Engine::start(db, tree.clone()).expect("start");
        engine.pause_writes(true);
        engine.commit(put("k", "1")).expect("commit");
        let mut remove = Writes::default();
        remove.remove(&b"k"[..]);
        engine.commit(remove).expect("commit");
        engine.commit(put("k", "2")).expect("commit");
        // Nothing is applied yet; a read sees the newest committed value.
        assert_eq!(tree.get("k").expect("get"), None);
        assert_eq!(
            engine.unapplied(b"k"),
            Some(Some(::sled::IVec::from(&b"2"[..])))
        );
        engine.pause_writes(false);
        engine.flush(true).await.expect("flush");
        assert_eq!(engine.flushed(), 3);
        assert_eq!(
            tree.get("k").expect("get"),
            Some(::sled::IVec::from(&b"2"[..]))
        );
        assert_eq!(engine.unapplied(b"k"), None);
        engine.close().await.expect("close");
        assert!(matches!(engine.commit(put("k", "3")), Err(Error::Closed)));
        assert!(matches!(engine.flush(true).await, Err(Error::Closed)));
    }
}
