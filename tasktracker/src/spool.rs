//! Outcomes the JobTracker has not acknowledged yet.
//!
//! A finished run's outcome goes into the spool before it is sent, and
//! leaves it when the JobTracker acknowledges it. After a reconnect every
//! outcome still in the spool is sent again (the JobTracker drops
//! duplicates by attempt number). [`MemorySpool`] survives reconnects but
//! not a restart of the process; a disk-backed spool implements the same
//! trait.

use std::collections::HashMap;

use lts_proto::v1 as pb;

use crate::error::Result;

/// Where unacknowledged outcomes wait. Called from one task only, never
/// across an `.await`, so implementations may block briefly (a local disk
/// write) but should not wait on the network.
pub trait OutcomeSpool: Send + 'static {
    /// Keeps `report` until [`ack`](Self::ack) names its run.
    fn put(&mut self, report: &pb::OutcomeReport) -> Result<()>;
    /// Forgets the outcome of one run; unknown runs are ignored.
    fn ack(&mut self, job_id: &str, attempt: u32) -> Result<()>;
    /// Every outcome not acknowledged yet, oldest first.
    fn unacked(&self) -> Result<Vec<pb::OutcomeReport>>;
    /// Number of outcomes not acknowledged yet.
    fn len(&self) -> usize;
    /// Whether every outcome was acknowledged.
    fn is_empty(&self) -> bool {
        self.len() == 0
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
