//! Routes job results to the JobClients of their submit node group.
//!
//! Feedback is stored before it is routed and deleted only when a client
//! acks it, so it survives a restart and is delivered at least once. Each
//! item goes to one subscriber of its group at a time; if that subscriber
//! leaves without acking, the item goes to the next one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lts_proto::v1 as pb;

use crate::metrics::Metrics;
use crate::outbound::{entry_len, PeerSender, SendError, MESSAGE_BUDGET_BYTES};
use crate::store::{Feedback, JobStore};

/// The outbound half of a client's feedback stream.
pub type FeedbackOutbound = PeerSender<pb::FeedbackServerMessage>;

/// Unread messages a feedback stream holds. Past them the router sends
/// that subscriber nothing more until gRPC takes some; a subscriber found
/// full twice with nothing taken in between does not read, and is dropped
/// (see [`FeedbackRouter`]).
pub const FEEDBACK_STREAM_CAPACITY: usize = 16;

/// Most items in one feedback message.
const MAX_ITEMS_PER_MESSAGE: usize = 1000;

/// Most items sent to one subscriber and not yet acked: past them it is
/// sent nothing more until it acks, and the group's other subscribers get
/// the rest. A client that reads and never acks holds at most this many.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;

struct Subscriber {
    id: u64,
    tx: FeedbackOutbound,
    /// Items sent to it and not acked.
    in_flight: usize,
    /// Whether it was last found at its cap of unacked items.
    capped: bool,
    /// What gRPC had taken from the stream when it was last found full.
    full_at: Option<u64>,
}

#[derive(Default)]
struct GroupFeedback {
    /// Not sent to anyone connected.
    waiting: VecDeque<Feedback>,
    subscribers: Vec<Subscriber>,
    /// Sent and not acked: feedback id -> (subscriber, item).
    in_flight: HashMap<String, (u64, Feedback)>,
    next: usize,
}

/// Feedback not yet acked, by submit node group.
///
/// Each stream to a client is bounded ([`FEEDBACK_STREAM_CAPACITY`]
/// messages of at most 1000 items and about 3 MiB). A client that stops
/// reading is dropped from its stream: the stream ends with
/// `RESOURCE_EXHAUSTED`, what it was sent and did not ack goes to the
/// group's other subscribers or, if none, waits for the next one (the same
/// client, reconnected), and `lts_jobtracker_outbound_dropped_total
/// {stream="feedback"}` counts it. So the tracker holds at most a few
/// messages for such a client.
pub struct FeedbackRouter {
    store: Arc<dyn JobStore>,
    metrics: Metrics,
    groups: Mutex<HashMap<String, GroupFeedback>>,
    next_sub: AtomicU64,
    /// See [`DEFAULT_MAX_IN_FLIGHT`].
    max_in_flight: usize,
}

/// A client's place among its group's subscribers; dropping it
/// unsubscribes, and what the client did not ack goes to the others.
pub struct Subscription {
    router: Arc<FeedbackRouter>,
    group: String,
    id: u64,
}

impl Subscription {
    /// The subscriber's id, for its acks.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.router.unsubscribe(&self.group, self.id);
    }
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
    /// Sends waiting items to subscribers, spread evenly, in messages
    /// bounded by count and bytes, as far as their streams have room and
    /// they are under `max_in_flight` unacked items.
    fn pump(&mut self, metrics: &Metrics, max_in_flight: usize) {
        // Found full in this call: gRPC had no chance to take anything
        // since, so they are not looked at again until the next call.
        let mut full: Vec<u64> = Vec::new();
        loop {
            let n = self.subscribers.len();
            if n == 0 || self.waiting.is_empty() {
                return;
            }
            let share = self.waiting.len().div_ceil(n).min(MAX_ITEMS_PER_MESSAGE);
            let mut sent = false;
            let mut dead = Vec::new();
            for _ in 0..n {
                if self.waiting.is_empty() {
                    break;
                }
                let i = self.next % n;
                self.next = self.next.wrapping_add(1);
                let sub = &mut self.subscribers[i];
                if full.contains(&sub.id) {
                    continue;
                }
                let room = max_in_flight.saturating_sub(sub.in_flight);
                if room == 0 {
                    if !sub.capped {
                        sub.capped = true;
                        metrics
                            .limited
                            .with_label_values(&["feedback_in_flight"])
                            .inc();
                    }
                    continue;
                }
                sub.capped = false;
                if sub.tx.is_closed() {
                    dead.push(sub.id);
                    continue;
                }
                if sub.tx.capacity() == 0 {
                    let taken = sub.tx.taken();
                    if sub.full_at == Some(taken) {
                        metrics
                            .outbound_dropped
                            .with_label_values(&["feedback", "peer_not_reading"])
                            .inc();
                        sub.tx.close(tonic::Status::resource_exhausted(format!(
                            "this client did not read its feedback stream ({FEEDBACK_STREAM_CAPACITY} messages unread); its unacked feedback is sent again when it reconnects"
                        )));
                        dead.push(sub.id);
                    } else {
                        sub.full_at = Some(taken);
                        full.push(sub.id);
                    }
                    continue;
                }
                let mut items = Vec::new();
                let mut wire = Vec::new();
                let mut bytes = 0usize;
                while items.len() < share.min(room) {
                    let Some(item) = self.waiting.pop_front() else {
                        break;
                    };
                    let w = to_wire(&item);
                    let len = entry_len(&w);
                    if !items.is_empty() && bytes + len > MESSAGE_BUDGET_BYTES {
                        self.waiting.push_front(item);
                        break;
                    }
                    bytes += len;
                    wire.push(w);
                    items.push(item);
                }
                match sub.tx.try_send(pb::FeedbackServerMessage { items: wire }) {
                    Ok(()) => {
                        sent = true;
                        sub.in_flight += items.len();
                        for item in items {
                            self.in_flight
                                .insert(item.feedback_id.clone(), (sub.id, item));
                        }
                    }
                    Err(e) => {
                        for item in items.into_iter().rev() {
                            self.waiting.push_front(item);
                        }
                        if e == SendError::Closed {
                            dead.push(sub.id);
                        }
                    }
                }
            }
            for sub in &dead {
                self.remove(*sub);
            }
            if !sent && dead.is_empty() {
                return;
            }
        }
    }

    fn remove(&mut self, sub: u64) {
        self.subscribers.retain(|s| s.id != sub);
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
    /// A router that deletes acked feedback from `store`, with at most
    /// [`DEFAULT_MAX_IN_FLIGHT`] unacked items per subscriber.
    pub fn new(store: Arc<dyn JobStore>, metrics: Metrics) -> Arc<Self> {
        Self::with_max_in_flight(store, metrics, DEFAULT_MAX_IN_FLIGHT)
    }

    /// A router with at most `max_in_flight` unacked items per subscriber.
    pub fn with_max_in_flight(
        store: Arc<dyn JobStore>,
        metrics: Metrics,
        max_in_flight: usize,
    ) -> Arc<Self> {
        Arc::new(FeedbackRouter {
            store,
            metrics,
            groups: Mutex::new(HashMap::new()),
            next_sub: AtomicU64::new(1),
            max_in_flight: max_in_flight.max(1),
        })
    }

    /// Queues stored feedback for delivery.
    pub fn push(&self, items: impl IntoIterator<Item = Feedback>) {
        let max = self.max_in_flight;
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
                group.pump(&self.metrics, max);
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

    /// Ids of the items waiting here for a subscriber (not those in
    /// flight to one).
    pub fn waiting_ids(&self) -> HashSet<String> {
        lock(&self.groups)
            .values()
            .flat_map(|g| g.waiting.iter().map(|f| f.feedback_id.clone()))
            .collect()
    }

    /// Forgets waiting items whose ids are in `acked`: with a store shared
    /// by several trackers, a client connected to another tracker acked
    /// them. Without this a tracker would hold every item of a group whose
    /// clients connect elsewhere, and send them all again to the first
    /// client of the group that connects to it.
    pub fn forget_acked_elsewhere(&self, acked: &HashSet<String>) {
        if acked.is_empty() {
            return;
        }
        for g in lock(&self.groups).values_mut() {
            g.waiting.retain(|f| !acked.contains(&f.feedback_id));
        }
    }

    /// Adds a subscriber to `group`; it is sent every waiting item, and
    /// stays until the returned subscription is dropped.
    pub fn subscribe(self: &Arc<Self>, group: &str, tx: FeedbackOutbound) -> Subscription {
        let id = self.next_sub.fetch_add(1, Ordering::Relaxed);
        let mut groups = lock(&self.groups);
        let g = groups.entry(group.to_string()).or_default();
        g.subscribers.push(Subscriber {
            id,
            tx,
            in_flight: 0,
            capped: false,
            full_at: None,
        });
        g.pump(&self.metrics, self.max_in_flight);
        Subscription {
            router: self.clone(),
            group: group.to_string(),
            id,
        }
    }

    /// Removes a subscriber; what it did not ack goes to the others.
    fn unsubscribe(&self, group: &str, sub: u64) {
        let mut groups = lock(&self.groups);
        if let Some(g) = groups.get_mut(group) {
            g.remove(sub);
            g.pump(&self.metrics, self.max_in_flight);
        }
    }

    /// Subscriber `sub` of `group` acked items: those in flight to it are
    /// deleted from the store. Ids of items it was not sent (another
    /// subscriber's, another group's, unknown ones) are ignored; returns
    /// how many of them there were.
    pub async fn ack(
        &self,
        group: &str,
        sub: u64,
        ids: Vec<String>,
    ) -> crate::error::Result<usize> {
        let (acked, ignored) = {
            let mut groups = lock(&self.groups);
            let Some(g) = groups.get_mut(group) else {
                return Ok(ids.len());
            };
            let mut acked = Vec::with_capacity(ids.len());
            for id in ids.iter() {
                if g.in_flight.get(id).is_some_and(|(s, _)| *s == sub) {
                    g.in_flight.remove(id);
                    acked.push(id.clone());
                }
            }
            if let Some(s) = g.subscribers.iter_mut().find(|s| s.id == sub) {
                s.in_flight = s.in_flight.saturating_sub(acked.len());
            }
            // Room may have come free on a stream that was full.
            g.pump(&self.metrics, self.max_in_flight);
            let ignored = ids.len() - acked.len();
            (acked, ignored)
        };
        if !acked.is_empty() {
            self.store.ack_feedback(&acked).await?;
        }
        Ok(ignored)
    }

    /// Items waiting or in flight, for tests and metrics.
    pub fn unacked(&self) -> usize {
        lock(&self.groups)
            .values()
            .map(|g| g.waiting.len() + g.in_flight.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::peer_channel;
    use futures::StreamExt;

    fn item(n: usize) -> Feedback {
        Feedback {
            feedback_id: format!("f{n}"),
            submit_node_group: "clients".into(),
            job_id: format!("j{n}"),
            task_id: format!("t{n}"),
            task_tracker_node_group: "g".into(),
            attempt: 1,
            state: lts_common::JobState::Succeeded,
            outcome: None,
            finished_at_ms: 0,
        }
    }

    fn router() -> (Arc<FeedbackRouter>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::store::sled::SledStore::open(dir.path()).expect("store");
        (FeedbackRouter::new(Arc::new(store), Metrics::new()), dir)
    }

    fn dropped(r: &FeedbackRouter) -> u64 {
        r.metrics
            .outbound_dropped
            .with_label_values(&["feedback", "peer_not_reading"])
            .get()
    }

    #[tokio::test]
    async fn a_client_that_reads_slowly_keeps_its_stream_and_gets_everything() {
        let (r, _dir) = router();
        let (tx, mut rx) = peer_channel(FEEDBACK_STREAM_CAPACITY);
        let sub = r.subscribe("clients", tx);
        let total = FEEDBACK_STREAM_CAPACITY * 3;
        let mut got = 0;
        for n in 0..total {
            r.push([item(n)]);
            // One message read per item pushed: the stream fills up, but
            // something is taken between pushes.
            if n >= FEEDBACK_STREAM_CAPACITY {
                got += rx.next().await.expect("open").expect("ok").items.len();
            }
        }
        assert_eq!(dropped(&r), 0);
        while got < total {
            let m = rx.next().await.expect("open").expect("ok");
            got += m.items.len();
            let ids = m.items.into_iter().map(|i| i.feedback_id).collect();
            r.ack("clients", sub.id(), ids).await.expect("ack");
        }
        assert_eq!(got, total);
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_is_dropped_and_its_items_wait_for_the_next() {
        let (r, _dir) = router();
        let (tx, mut rx) = peer_channel(FEEDBACK_STREAM_CAPACITY);
        let sub = r.subscribe("clients", tx);
        let total = FEEDBACK_STREAM_CAPACITY + 2;
        for n in 0..total {
            r.push([item(n)]);
        }
        assert_eq!(dropped(&r), 1);
        assert!(r.subscribed_groups().is_empty());
        let status = loop {
            match rx.next().await.expect("a status ends the stream") {
                Ok(_) => continue,
                Err(s) => break s,
            }
        };
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        drop(sub);

        let (tx, mut rx) = peer_channel(FEEDBACK_STREAM_CAPACITY);
        let _sub = r.subscribe("clients", tx);
        let m = rx.next().await.expect("open").expect("ok");
        assert_eq!(m.items.len(), total, "everything, in one message");
    }

    #[tokio::test]
    async fn a_subscriber_gets_no_more_than_its_cap_unacked_and_foreign_acks_are_ignored() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::store::sled::SledStore::open(dir.path()).expect("store");
        let r = FeedbackRouter::with_max_in_flight(Arc::new(store), Metrics::new(), 5);
        let (tx, mut rx) = peer_channel(FEEDBACK_STREAM_CAPACITY);
        let sub = r.subscribe("clients", tx);
        r.push((0..20).map(item));
        let m = rx.next().await.expect("open").expect("ok");
        assert_eq!(m.items.len(), 5, "only the cap is in flight");
        let ids: Vec<String> = m.items.into_iter().map(|i| i.feedback_id).collect();
        // An ack from another subscriber, or of another group, removes
        // nothing and sends nothing more.
        assert_eq!(
            r.ack("clients", sub.id() + 1, ids.clone())
                .await
                .expect("ack"),
            5
        );
        assert_eq!(
            r.ack("others", sub.id(), ids.clone()).await.expect("ack"),
            5
        );
        assert_eq!(r.unacked(), 20);
        assert_eq!(r.ack("clients", sub.id(), ids).await.expect("ack"), 0);
        assert_eq!(r.unacked(), 15);
        let m = rx.next().await.expect("open").expect("ok");
        assert_eq!(m.items.len(), 5, "acks make room for as many more");
    }
}
