//! The outbound half of the stream to the JobTracker.
//!
//! Everything bound for the JobTracker goes through one unbounded queue of
//! [`Outgoing`] items. gRPC pulls from [`coalesced`] only when it can send,
//! and each pull drains whatever queued up meanwhile into at most one
//! message of each kind, up to 1,024 items: a burst of ten thousand
//! finished runs leaves as about ten messages, not ten thousand.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::Stream;
use lts_proto::v1 as pb;
use pb::worker_message::Kind;
use tokio::sync::mpsc;

use crate::starting::Starting;

/// A batch stops growing past this many bytes (roughly counted), well below
/// the gRPC message limit.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// A batch stops growing past this many items, so one pull never holds the
/// queue for long.
const MAX_BATCH_ITEMS: usize = 1024;

/// One thing to tell the JobTracker.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// Runs began at the given Unix milliseconds.
    Started(Vec<pb::RunRef>, i64),
    /// A run ended.
    Outcome(pb::OutcomeReport),
    /// Slots freed up.
    Credit(u32),
    /// Ahead slots freed up: jobs sent ahead of their time became due or
    /// were cancelled.
    AheadCredit(u32),
    /// A line of a run's execution log.
    Log(pb::BizLog),
    /// Still alive.
    Heartbeat(i64),
}

/// Items drained in one pull, merged per kind.
#[derive(Default)]
pub(crate) struct Batch {
    started: Vec<pb::RunRef>,
    started_at: i64,
    logs: Vec<pb::BizLog>,
    reports: Vec<pb::OutcomeReport>,
    credits: u32,
    ahead_credits: u32,
    heartbeat_at: Option<i64>,
    items: usize,
    bytes: usize,
}

impl Batch {
    pub(crate) fn push(&mut self, item: Outgoing) {
        self.items += 1;
        match item {
            Outgoing::Started(runs, at) => {
                if self.started.is_empty() {
                    self.started_at = at;
                }
                self.items += runs.len().saturating_sub(1);
                self.bytes += runs.iter().map(|r| r.job_id.len() + 8).sum::<usize>();
                if self.started.is_empty() {
                    self.started = runs;
                } else {
                    self.started.extend(runs);
                }
            }
            Outgoing::Outcome(report) => {
                self.bytes += report.job_id.len() + 48 + outcome_len(&report);
                self.reports.push(report);
            }
            Outgoing::Credit(n) => self.credits = self.credits.saturating_add(n),
            Outgoing::AheadCredit(n) => self.ahead_credits = self.ahead_credits.saturating_add(n),
            Outgoing::Log(line) => {
                self.bytes += line.job_id.len() + line.message.len() + 24;
                self.logs.push(line);
            }
            Outgoing::Heartbeat(at) => self.heartbeat_at = Some(at),
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.bytes >= MAX_BATCH_BYTES || self.items >= MAX_BATCH_ITEMS
    }

    /// Number of log lines in the batch.
    fn log_lines(&self) -> usize {
        self.logs.len()
    }

    /// The messages, in an order the JobTracker can rely on: a run's start
    /// and its log lines come before its outcome, and freed slots are
    /// granted only after the outcomes that freed them.
    pub(crate) fn into_messages(self, out: &mut VecDeque<pb::WorkerMessage>) {
        let mut put = |kind: Kind| out.push_back(pb::WorkerMessage { kind: Some(kind) });
        if !self.started.is_empty() {
            put(Kind::Started(pb::Started {
                runs: self.started,
                at_unix_ms: self.started_at,
            }));
        }
        if !self.logs.is_empty() {
            put(Kind::BizLogs(pb::BizLogs { lines: self.logs }));
        }
        if !self.reports.is_empty() {
            put(Kind::Outcomes(pb::Outcomes {
                reports: self.reports,
            }));
        }
        if self.credits > 0 || self.ahead_credits > 0 {
            put(Kind::Credit(pb::Credit {
                credits: self.credits,
                ahead_credits: self.ahead_credits,
            }));
        }
        if let Some(at_unix_ms) = self.heartbeat_at {
            put(Kind::Heartbeat(pb::Heartbeat { at_unix_ms }));
        }
    }
}

fn outcome_len(report: &pb::OutcomeReport) -> usize {
    use pb::outcome::Kind;
    match report.outcome.as_ref().and_then(|o| o.kind.as_ref()) {
        Some(Kind::Success(m)) => m.message.len(),
        Some(Kind::Failed(m)) => m.message.len(),
        Some(Kind::Later(m)) => m.message.len(),
        Some(Kind::Error(m)) => m.message.len(),
        None => 0,
    }
}

/// The stream gRPC sends: `first` (the hello), then the queue, coalesced.
/// It ends when every sender of the queue is gone. `queued_log_lines` is
/// lowered by the number of log lines taken off the queue, so producers
/// can drop lines instead of queueing without bound. Nothing is taken off
/// the queue while `starting` holds (runs released at their instant have
/// not all begun).
pub(crate) fn coalesced(
    first: pb::WorkerMessage,
    queue: mpsc::UnboundedReceiver<Outgoing>,
    queued_log_lines: Arc<AtomicUsize>,
    starting: Arc<Starting>,
) -> impl Stream<Item = pb::WorkerMessage> + Send + 'static {
    let mut ready = VecDeque::with_capacity(4);
    ready.push_back(first);
    futures::stream::unfold(
        (queue, ready, queued_log_lines, starting),
        |(mut queue, mut ready, queued_log_lines, starting)| async move {
            if let Some(message) = ready.pop_front() {
                return Some((message, (queue, ready, queued_log_lines, starting)));
            }
            let first = queue.recv().await?;
            starting.hold_over().await;
            let mut batch = Batch::default();
            batch.push(first);
            while !batch.is_full() {
                match queue.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            queued_log_lines.fetch_sub(batch.log_lines(), Ordering::Relaxed);
            batch.into_messages(&mut ready);
            let message = ready.pop_front()?;
            Some((message, (queue, ready, queued_log_lines, starting)))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn report(i: usize) -> pb::OutcomeReport {
        pb::OutcomeReport {
            job_id: format!("j-{i}"),
            attempt: 1,
            outcome: Some(lts_common::Outcome::Success(String::new()).into()),
            started_at_unix_ms: 1,
            finished_at_unix_ms: 2,
        }
    }

    fn kind(m: &pb::WorkerMessage) -> &Kind {
        m.kind.as_ref().unwrap()
    }

    #[tokio::test]
    async fn a_burst_leaves_as_one_message_per_kind_in_order() {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued_logs = Arc::new(AtomicUsize::new(0));
        for i in 0..200 {
            tx.send(Outgoing::Started(
                vec![pb::RunRef {
                    job_id: format!("j-{i}"),
                    attempt: 1,
                }],
                100 + i as i64,
            ))
            .unwrap();
            tx.send(Outgoing::Log(pb::BizLog {
                job_id: format!("j-{i}"),
                message: "line".into(),
                ..Default::default()
            }))
            .unwrap();
            queued_logs.fetch_add(1, Ordering::Relaxed);
            tx.send(Outgoing::Outcome(report(i))).unwrap();
            tx.send(Outgoing::Credit(1)).unwrap();
            if i % 2 == 0 {
                tx.send(Outgoing::AheadCredit(1)).unwrap();
            }
        }
        tx.send(Outgoing::Heartbeat(7)).unwrap();
        drop(tx);
        let hello = pb::WorkerMessage {
            kind: Some(Kind::Hello(pb::Hello::default())),
        };
        let sent: Vec<_> = coalesced(hello, rx, queued_logs.clone(), Arc::default())
            .collect()
            .await;
        assert_eq!(
            sent.len(),
            6,
            "{:?}",
            sent.iter().map(kind).collect::<Vec<_>>()
        );
        assert!(matches!(kind(&sent[0]), Kind::Hello(_)));
        match kind(&sent[1]) {
            Kind::Started(s) => {
                assert_eq!(s.runs.len(), 200);
                assert_eq!(s.at_unix_ms, 100);
            }
            other => panic!("expected started, got {other:?}"),
        }
        assert!(matches!(kind(&sent[2]), Kind::BizLogs(l) if l.lines.len() == 200));
        match kind(&sent[3]) {
            Kind::Outcomes(o) => {
                let ids: Vec<_> = o.reports.iter().map(|r| r.job_id.as_str()).collect();
                assert_eq!(ids[0], "j-0");
                assert_eq!(ids[199], "j-199");
            }
            other => panic!("expected outcomes, got {other:?}"),
        }
        // Slot and ahead credits share one message.
        assert!(matches!(
            kind(&sent[4]),
            Kind::Credit(c) if c.credits == 200 && c.ahead_credits == 100
        ));
        assert!(matches!(kind(&sent[5]), Kind::Heartbeat(h) if h.at_unix_ms == 7));
        assert_eq!(queued_logs.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn ahead_credits_alone_still_leave_as_a_credit() {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(Outgoing::AheadCredit(3)).unwrap();
        tx.send(Outgoing::AheadCredit(4)).unwrap();
        drop(tx);
        let hello = pb::WorkerMessage {
            kind: Some(Kind::Hello(pb::Hello::default())),
        };
        let sent: Vec<_> = coalesced(hello, rx, Arc::default(), Arc::default())
            .skip(1)
            .collect()
            .await;
        assert_eq!(sent.len(), 1);
        assert!(matches!(
            kind(&sent[0]),
            Kind::Credit(c) if c.credits == 0 && c.ahead_credits == 7
        ));
    }

    #[tokio::test]
    async fn a_batch_is_capped_and_the_rest_follows() {
        let (tx, rx) = mpsc::unbounded_channel();
        let total = MAX_BATCH_ITEMS + 10;
        for i in 0..total {
            tx.send(Outgoing::Outcome(report(i))).unwrap();
        }
        drop(tx);
        let hello = pb::WorkerMessage {
            kind: Some(Kind::Heartbeat(pb::Heartbeat::default())),
        };
        let sent: Vec<_> = coalesced(hello, rx, Arc::default(), Arc::default())
            .skip(1)
            .collect()
            .await;
        let sizes: Vec<_> = sent
            .iter()
            .map(|m| match kind(m) {
                Kind::Outcomes(o) => o.reports.len(),
                other => panic!("expected outcomes, got {other:?}"),
            })
            .collect();
        assert_eq!(sizes, vec![MAX_BATCH_ITEMS, 10]);
    }
}
