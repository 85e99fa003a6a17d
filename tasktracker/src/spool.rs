//! Outcomes the JobTracker has not acknowledged yet.
//!
//! A finished run's outcome goes into the spool before it is sent, and
//! leaves it when the JobTracker acknowledges it. After a reconnect every
//! outcome still in the spool is sent again (the JobTracker drops
//! duplicates by attempt number, and refuses, acknowledges and logs an
//! outcome whose attempt is no longer the job's current one, so a refused
//! outcome leaves the spool too). [`MemorySpool`] survives reconnects but
//! not a restart of the process; [`DiskSpool`](crate::DiskSpool) keeps
//! outcomes, log lines and starts on disk.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use lts_proto::v1 as pb;

use crate::error::Result;

/// A spooled item to send again at the start of a stream, in the order it
/// was spooled.
#[derive(Clone, Debug, PartialEq)]
pub enum Spooled {
    /// Runs that began at one instant (Unix ms).
    Started(Vec<pb::RunRef>, i64),
    /// A line of a run's execution log.
    Log(pb::BizLog),
    /// How a run ended.
    Outcome(pb::OutcomeReport),
}

/// Where unacknowledged outcomes wait, and, in a spool that keeps them,
/// the log lines and starts of runs until the JobTracker has them.
///
/// Called from the TaskTracker's driver task only, never across an
/// `.await`: no call may wait on the disk or the network. A write is
/// queued when the call returns; what is durable then:
/// - [`MemorySpool`]: nothing survives the process.
/// - [`DiskSpool`](crate::DiskSpool): every call has queued its change
///   for the disk and asked for a flush, which ends a few milliseconds
///   later; once the future of [`sync`](Self::sync) resolves, every change
///   made before the call is on disk and survives a `kill -9` or a power
///   loss. Changes reach the disk in the order they were made, so a crash
///   keeps a prefix of them.
///
/// The driver keeps this contract on its side: it sends spooled items in
/// the order they were spooled, and at the start of each stream it sends
/// everything [`pending`](Self::pending) returns before anything new. So
/// when the JobTracker acknowledges an outcome, it has handled every item
/// spooled before it.
pub trait OutcomeSpool: Send + Sync + 'static {
    /// Keeps `report` until [`ack`](Self::ack) names its run. A report for
    /// a run already spooled replaces it. An outcome is kept even when the
    /// spool is [full](Self::is_full): it is the last thing of a run that
    /// already holds a slot.
    fn put(&mut self, report: &pb::OutcomeReport) -> Result<()>;
    /// Keeps a line of a run's execution log until an outcome spooled
    /// after it is acknowledged; `false` when it is not kept (the spool
    /// keeps no log lines, or is full).
    fn put_log(&mut self, _line: &pb::BizLog) -> Result<bool> {
        Ok(false)
    }
    /// Keeps the start of `runs` at `at_unix_ms` until an outcome spooled
    /// after it is acknowledged (not kept when the spool is full or keeps
    /// no starts).
    fn put_started(&mut self, _runs: &[pb::RunRef], _at_unix_ms: i64) -> Result<()> {
        Ok(())
    }
    /// The JobTracker acknowledged the outcome of one run (stored or
    /// refused as stale): forgets it, and every log line and start spooled
    /// before it. Unknown runs are ignored.
    fn ack(&mut self, job_id: &str, attempt: u32) -> Result<()>;
    /// Every outcome not acknowledged yet, oldest first.
    fn unacked(&self) -> Result<Vec<pb::OutcomeReport>>;
    /// Everything to send again at the start of a stream, in the order it
    /// was spooled.
    fn pending(&self) -> Result<Vec<Spooled>> {
        Ok(self.unacked()?.into_iter().map(Spooled::Outcome).collect())
    }
    /// Number of outcomes not acknowledged yet.
    fn len(&self) -> usize;
    /// Whether every outcome was acknowledged.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// At or over its limits: the TaskTracker takes no new work until
    /// acknowledgements make room, and log lines are no longer kept.
    fn is_full(&self) -> bool {
        false
    }
    /// Why the spool is [full](Self::is_full), for the operator: where it
    /// is, what it holds, its limit and the setting that raises it.
    fn full_reason(&self) -> String {
        format!("{} outcomes waiting", self.len())
    }
    /// Whether what it holds survives a restart of the process.
    fn is_durable(&self) -> bool {
        false
    }
    /// Outcomes among [`len`](Self::len) that are on disk now and survive
    /// a `kill -9` (none for a spool in memory).
    fn durable_len(&self) -> usize {
        0
    }
    /// Whether an outcome not on disk yet will be once the spool flushes.
    fn awaits_flush(&self) -> bool {
        false
    }
    /// Resolves once every change made before the call is durable, riding
    /// on the next flush rather than asking for one of its own: what the
    /// driver awaits, while [`awaits_flush`](Self::awaits_flush), to keep
    /// [`durable_len`](Self::durable_len) current.
    fn flushed(&self) -> Pin<Box<dyn Future<Output = Result<()>> + Send + 'static>> {
        Box::pin(async { Ok(()) })
    }
    /// Resolves once every change made before the call is durable (at
    /// once for a spool in memory). The future borrows nothing, so the
    /// driver can await it elsewhere.
    fn sync(&self) -> Pin<Box<dyn Future<Output = Result<()>> + Send + 'static>> {
        Box::pin(async { Ok(()) })
    }
    /// Makes everything durable and takes no more changes; the TaskTracker
    /// calls it once as it stops.
    fn close(&mut self) -> Pin<Box<dyn Future<Output = Result<()>> + Send + 'static>> {
        self.sync()
    }
}

/// A spool in memory: outcomes survive a broken stream, not a crash.
#[derive(Debug, Default)]
pub struct MemorySpool {
    // Keyed by job id first so an ack can look up by `&str`; a job rarely
    // has more than one unacknowledged attempt.
    by_job: HashMap<String, Vec<pb::OutcomeReport>>,
    len: usize,
}

impl MemorySpool {
    /// An empty spool.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty spool with room for `runs` outcomes before it grows: a
    /// TaskTracker sizes it for its slots, so a burst of runs ending at
    /// once does not rehash it halfway.
    pub fn with_capacity(runs: usize) -> Self {
        MemorySpool {
            by_job: HashMap::with_capacity(runs),
            len: 0,
        }
    }
}

impl OutcomeSpool for MemorySpool {
    fn put(&mut self, report: &pb::OutcomeReport) -> Result<()> {
        let attempts = self.by_job.entry(report.job_id.clone()).or_default();
        if let Some(old) = attempts.iter_mut().find(|r| r.attempt == report.attempt) {
            *old = report.clone();
        } else {
            attempts.push(report.clone());
            self.len += 1;
        }
        Ok(())
    }

    fn ack(&mut self, job_id: &str, attempt: u32) -> Result<()> {
        if let Some(attempts) = self.by_job.get_mut(job_id) {
            let before = attempts.len();
            attempts.retain(|r| r.attempt != attempt);
            self.len -= before - attempts.len();
            if attempts.is_empty() {
                self.by_job.remove(job_id);
            }
        }
        Ok(())
    }

    fn unacked(&self) -> Result<Vec<pb::OutcomeReport>> {
        let mut all: Vec<_> = self.by_job.values().flatten().cloned().collect();
        all.sort_by_key(|r| r.finished_at_unix_ms);
        Ok(all)
    }

    fn len(&self) -> usize {
        self.len
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

    #[test]
    fn keeps_until_acked_oldest_first() {
        let mut spool = MemorySpool::new();
        spool.put(&report("b", 1, 20)).unwrap();
        spool.put(&report("a", 1, 10)).unwrap();
        spool.put(&report("a", 2, 30)).unwrap();
        spool.put(&report("a", 2, 30)).unwrap();
        assert_eq!(spool.len(), 3);
        let order: Vec<_> = spool
            .unacked()
            .unwrap()
            .into_iter()
            .map(|r| (r.job_id, r.attempt))
            .collect();
        assert_eq!(
            order,
            vec![("a".into(), 1), ("b".into(), 1), ("a".into(), 2)]
        );
        spool.ack("a", 1).unwrap();
        spool.ack("nope", 1).unwrap();
        spool.ack("b", 9).unwrap();
        assert_eq!(spool.len(), 2);
        spool.ack("a", 2).unwrap();
        spool.ack("b", 1).unwrap();
        assert!(spool.is_empty());
        assert!(spool.unacked().unwrap().is_empty());
    }
}
