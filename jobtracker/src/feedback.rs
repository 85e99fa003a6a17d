//! Routes job results to the JobClients of their submit node group.
//!
//! Feedback is stored before it is routed and deleted only when a client
//! acks it, so it survives a restart and is delivered at least once. Each
//! item goes to one subscriber of its group at a time; if that subscriber
//! leaves without acking, the item goes to the next one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lts_proto::v1 as pb;
use tokio::sync::mpsc;

use crate::store::{Feedback, JobStore};

/// The outbound half of a client's feedback stream.
pub type FeedbackOutbound = mpsc::UnboundedSender<Result<pb::FeedbackServerMessage, tonic::Status>>;

#[derive(Default)]
struct GroupFeedback {
    /// Not sent to anyone connected.
    waiting: VecDeque<Feedback>,
    subscribers: Vec<(u64, FeedbackOutbound)>,
    /// Sent and not acked: feedback id -> (subscriber, item).
    in_flight: HashMap<String, (u64, Feedback)>,
    next: usize,
}

/// Feedback not yet acked, by submit node group.
pub struct FeedbackRouter {
    store: Arc<dyn JobStore>,
    groups: Mutex<HashMap<String, GroupFeedback>>,
    next_sub: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn to_wire(f: &Feedback) -> pb::FeedbackItem {
    pb::FeedbackItem {
        feedback_id: f.feedback_id.clone(),
        job_id: f.job_id.clone(),
        task_id: f.task_id.clone(),
        task_tracker_node_group: f.task_tracker_node_group.clone(),
        attempt: f.attempt,
        state: pb::JobState::from(f.state) as i32,
        outcome: f.outcome.clone().map(Into::into),
        finished_at_unix_ms: f.finished_at_ms,
    }
}

impl GroupFeedback {
    /// Sends waiting items round-robin to subscribers.
    fn pump(&mut self) {
        if self.subscribers.is_empty() || self.waiting.is_empty() {
            return;
        }
        let n = self.subscribers.len();
        let mut batches: Vec<Vec<Feedback>> = vec![Vec::new(); n];
        while let Some(item) = self.waiting.pop_front() {
            batches[self.next % n].push(item);
            self.next = self.next.wrapping_add(1);
        }
        let mut dead = Vec::new();
        for (i, batch) in batches.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let (sub, tx) = &self.subscribers[i];
            let msg = pb::FeedbackServerMessage {
                items: batch.iter().map(to_wire).collect(),
            };
            if tx.send(Ok(msg)).is_err() {
                dead.push(*sub);
                self.waiting.extend(batch);
            } else {
                for item in batch {
                    self.in_flight
                        .insert(item.feedback_id.clone(), (*sub, item));
                }
            }
        }
        for sub in dead {
            self.remove(sub);
        }
        if !self.waiting.is_empty() && !self.subscribers.is_empty() {
            self.pump();
        }
    }

    fn remove(&mut self, sub: u64) {
        self.subscribers.retain(|(s, _)| *s != sub);
        let back: Vec<String> = self
            .in_flight
            .iter()
            .filter(|(_, (s, _))| *s == sub)
            .map(|(id, _)| id.clone())
            .collect();
        for id in back {
            if let Some((_, item)) = self.in_flight.remove(&id) {
                self.waiting.push_back(item);
            }
        }
    }
}

impl FeedbackRouter {
    /// A router that deletes acked feedback from `store`.
    pub fn new(store: Arc<dyn JobStore>) -> Arc<Self> {
        Arc::new(FeedbackRouter {
            store,
            groups: Mutex::new(HashMap::new()),
            next_sub: AtomicU64::new(1),
        })
    }

    /// Queues stored feedback for delivery.
    pub fn push(&self, items: impl IntoIterator<Item = Feedback>) {
        let mut groups = lock(&self.groups);
        let mut touched = Vec::new();
        for item in items {
            let g = item.submit_node_group.clone();
            groups.entry(g.clone()).or_default().waiting.push_back(item);
            touched.push(g);
        }
        touched.dedup();
        for g in touched {
            if let Some(group) = groups.get_mut(&g) {
                group.pump();
            }
        }
    }

    /// Node groups with a subscriber connected here.
    pub fn subscribed_groups(&self) -> Vec<String> {
        lock(&self.groups)
            .iter()
            .filter(|(_, g)| !g.subscribers.is_empty())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Queues stored items this router does not hold yet: feedback that
    /// another tracker sharing the store created.
    pub fn push_unseen(&self, items: impl IntoIterator<Item = Feedback>) {
        let fresh: Vec<Feedback> = {
            let groups = lock(&self.groups);
            items
                .into_iter()
                .filter(|f| {
                    groups.get(&f.submit_node_group).is_none_or(|g| {
                        !g.in_flight.contains_key(&f.feedback_id)
                            && !g.waiting.iter().any(|w| w.feedback_id == f.feedback_id)
                    })
                })
                .collect()
        };
        if !fresh.is_empty() {
            self.push(fresh);
        }
    }

    /// Adds a subscriber to `group`; it is sent every waiting item.
    pub fn subscribe(&self, group: &str, tx: FeedbackOutbound) -> u64 {
        let sub = self.next_sub.fetch_add(1, Ordering::Relaxed);
        let mut groups = lock(&self.groups);
        let g = groups.entry(group.to_string()).or_default();
        g.subscribers.push((sub, tx));
        g.pump();
        sub
    }

    /// Removes a subscriber; what it did not ack goes to the others.
    pub fn unsubscribe(&self, group: &str, sub: u64) {
        let mut groups = lock(&self.groups);
        if let Some(g) = groups.get_mut(group) {
            g.remove(sub);
            g.pump();
        }
    }

    /// A client acked items: they are deleted from the store.
    pub async fn ack(&self, group: &str, ids: Vec<String>) -> crate::error::Result<()> {
        {
            let mut groups = lock(&self.groups);
            if let Some(g) = groups.get_mut(group) {
                for id in &ids {
                    g.in_flight.remove(id);
                }
            }
        }
        self.store.ack_feedback(&ids).await
    }

    /// Items waiting or in flight, for tests and metrics.
    pub fn unacked(&self) -> usize {
        lock(&self.groups)
            .values()
            .map(|g| g.waiting.len() + g.in_flight.len())
            .sum()
    }
}
