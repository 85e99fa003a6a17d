//! Small submits made at the same time through one [`JobClient`] share
//! `SubmitJobs` calls.
//!
//! A submit of a few jobs (a web handler's one job per request) costs the
//! tracker a call, an HTTP/2 stream and a share of a disk flush; a batch of
//! a thousand costs about the same per call. When several small submits are
//! under way at once, the first goes out alone at once, and those that
//! arrive while calls are in flight wait in a queue that the next call
//! takes whole. Each submit still returns only when the tracker has stored
//! (and flushed) its jobs, with one outcome per job of its own, in order:
//! what each caller sees is what it would see alone, only sooner under load.
//! A submit with no other under way goes out at once, so one call in flight
//! waits for nothing.
//!
//! At most [`MAX_CALLS_IN_FLIGHT`] shared calls are in flight; each takes up
//! to [`MAX_JOBS_PER_CALL`] jobs and [`MAX_BYTES_PER_CALL`] encoded bytes
//! from the queue, whole submits only. A submit of more than
//! [`MAX_COALESCED_JOBS`] jobs or [`MAX_COALESCED_BYTES`] bytes goes alone,
//! as before.

use std::collections::VecDeque;
use std::sync::Mutex;

use lts_proto::v1 as pb;
use tokio::sync::oneshot;

use crate::client::{JobClient, SubmitOutcome};
use crate::error::{Error, Result};

/// Jobs of one submit that may share a call; larger submits go alone.
pub const MAX_COALESCED_JOBS: usize = 64;
/// Encoded bytes of one submit that may share a call.
pub const MAX_COALESCED_BYTES: usize = 1 << 20;
/// Jobs one shared call takes at most.
pub const MAX_JOBS_PER_CALL: usize = 1000;
/// Encoded bytes one shared call takes at most (well under the message
/// limit, so a shared call is always one request).
pub const MAX_BYTES_PER_CALL: usize = 4 << 20;
/// Shared calls in flight at once.
pub const MAX_CALLS_IN_FLIGHT: usize = 4;

/// One submit waiting for a shared call.
struct Waiter {
    jobs: Vec<pb::JobSpec>,
    bytes: usize,
    reply: oneshot::Sender<Result<Vec<SubmitOutcome>>>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Waiter>,
    /// Shared calls in flight (each a task draining the queue).
    callers: usize,
}

/// The queue of small submits of one client.
#[derive(Default)]
pub(crate) struct Coalescer {
    state: Mutex<State>,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("Coalescer")
            .field("queued", &s.queue.len())
            .field("calls_in_flight", &s.callers)
            .finish()
    }
}

impl Coalescer {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The submits the next shared call takes, or `None` when the queue
    /// is empty (the caller then stops: it was counted in `callers`).
    fn next_call(&self) -> Option<Vec<Waiter>> {
        let mut s = self.lock();
        if s.queue.is_empty() {
            s.callers -= 1;
            return None;
        }
        let (mut jobs, mut bytes) = (0, 0);
        let mut taken = Vec::new();
        while let Some(w) = s.queue.front() {
            if !taken.is_empty()
                && (jobs + w.jobs.len() > MAX_JOBS_PER_CALL || bytes + w.bytes > MAX_BYTES_PER_CALL)
            {
                break;
            }
            jobs += w.jobs.len();
            bytes += w.bytes;
            taken.extend(s.queue.pop_front());
        }
        Some(taken)
    }
}

/// Encoded size of `jobs` in a request, or `None` when the submit is too
/// large to share a call.
pub(crate) fn coalescable(jobs: &[pb::JobSpec]) -> Option<usize> {
    if jobs.is_empty() || jobs.len() > MAX_COALESCED_JOBS {
        return None;
    }
    let bytes: usize = jobs.iter().map(crate::client::entry_bytes).sum();
    (bytes <= MAX_COALESCED_BYTES).then_some(bytes)
}

impl JobClient {
    /// Submits `jobs` (of `bytes` encoded) in a call shared with the other
    /// small submits under way.
    pub(crate) async fn submit_coalesced(
        &self,
        jobs: Vec<pb::JobSpec>,
        bytes: usize,
    ) -> Result<Vec<SubmitOutcome>> {
        let (reply, answer) = oneshot::channel();
        let start_caller = {
            let mut s = self.coalescer().lock();
            s.queue.push_back(Waiter { jobs, bytes, reply });
            let start = s.callers < MAX_CALLS_IN_FLIGHT;
            if start {
                s.callers += 1;
            }
            start
        };
        if start_caller {
            // A task of its own: the shared call must go on (and answer the
            // others) even if this submit's caller stops waiting.
            let client = self.clone();
            tokio::spawn(async move { client.drain_submits().await });
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error::Unavailable {
                tried: Vec::new(),
                last_error: "the shared submit call stopped before it answered (the runtime is shutting down)".into(),
            })
        })
    }

    /// Sends the queued submits, a shared call at a time, until the queue
    /// is empty.
    async fn drain_submits(self) {
        while let Some(waiters) = self.coalescer().next_call() {
            let counts: Vec<usize> = waiters.iter().map(|w| w.jobs.len()).collect();
            let mut replies = Vec::with_capacity(waiters.len());
            let mut jobs = Vec::with_capacity(counts.iter().sum());
            for w in waiters {
                jobs.extend(w.jobs);
                replies.push(w.reply);
            }
            match self.submit_chunk(jobs).await {
                Ok(outcomes) => {
                    let mut outcomes = outcomes.into_iter();
                    for (reply, n) in replies.into_iter().zip(counts) {
                        let _ = reply.send(Ok(outcomes.by_ref().take(n).collect()));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.for_each_caller()));
                    }
                }
            }
        }
    }
}
