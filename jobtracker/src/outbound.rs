//! What the tracker sends to its peers (TaskTrackers and JobClients):
//! messages bounded by encoded bytes as well as by count.
//!
//! A message is built whole in memory and must fit the gRPC message limit
//! ([`MAX_MESSAGE_BYTES`](lts_common::limits::MAX_MESSAGE_BYTES)). Jobs
//! carry payloads of up to 1 MiB, so a count alone does not bound a
//! message: 100 assignments of such jobs are 100 MiB. Every message that
//! carries a list of items (assignments, feedback items, job pages) is
//! therefore cut by [`split_by_bytes`] or built up to [`MESSAGE_BUDGET_BYTES`].
//!
//! Every stream to a peer goes through a bounded [`peer_channel`], so a
//! peer that stops reading holds at most its channel's capacity of
//! messages in the tracker's memory. What happens when a channel is full is
//! decided by its user (see `dispatch` and `feedback`): the stream is
//! closed with a status that says why, and what was dropped is counted in
//! `lts_jobtracker_outbound_dropped_total`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::{
    CancellationToken, WaitForCancellationFuture, WaitForCancellationFutureOwned,
};

/// Most encoded bytes of the items of one outbound message, unless a
/// single item is larger (it then goes alone).
///
/// Well under the 64 MiB limit, and under 4 MiB: that is gRPC's usual
/// default receive limit, so a peer written in another language that
/// never raised its limit still reads every message.
pub const MESSAGE_BUDGET_BYTES: usize = 3 * 1024 * 1024;

/// Bytes `item` adds to a message as one entry of a repeated field: the
/// item, its length prefix and its field tag.
pub fn entry_len<T: prost::Message>(item: &T) -> usize {
    let len = item.encoded_len();
    len + prost::length_delimiter_len(len) + 1
}

/// Cuts `items` into groups, in order, each of at most `max_items` items
/// and at most `budget` encoded bytes (an item larger than `budget` forms a
/// group of its own).
pub fn split_by_bytes<T: prost::Message>(
    items: Vec<T>,
    budget: usize,
    max_items: usize,
) -> Vec<Vec<T>> {
    let max_items = max_items.max(1);
    let mut groups = Vec::new();
    let mut group: Vec<T> = Vec::new();
    let mut bytes = 0usize;
    for item in items {
        let len = entry_len(&item);
        if !group.is_empty() && (bytes + len > budget || group.len() >= max_items) {
            groups.push(std::mem::take(&mut group));
            bytes = 0;
        }
        bytes += len;
        group.push(item);
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

struct Shared {
    closed: CancellationToken,
    /// Why the stream was closed; taken by the stream when it ends.
    status: Mutex<Option<tonic::Status>>,
    /// Messages the stream has handed to gRPC so far.
    taken: AtomicU64,
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The channel holds its capacity of unread messages.
    Full,
    /// The stream was closed or its peer is gone.
    Closed,
}

/// The sending half of a stream to a peer: bounded, and closable with a
/// status that ends the stream at once (messages still queued are dropped).
pub struct PeerSender<T> {
    tx: mpsc::Sender<T>,
    shared: Arc<Shared>,
}

impl<T> Clone for PeerSender<T> {
    fn clone(&self) -> Self {
        PeerSender {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<T> PeerSender<T> {
    /// Queues `msg` without waiting.
    pub fn try_send(&self, msg: T) -> Result<(), SendError> {
        if self.shared.closed.is_cancelled() {
            return Err(SendError::Closed);
        }
        self.tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })
    }

    /// Ends the stream with `status` (the first close wins).
    pub fn close(&self, status: tonic::Status) {
        let mut slot = self.shared.status.lock().unwrap_or_else(|p| p.into_inner());
        if !self.shared.closed.is_cancelled() {
            *slot = Some(status);
            self.shared.closed.cancel();
        }
    }

    /// Resolves when [`PeerSender::close`] was called.
    pub fn closed(&self) -> WaitForCancellationFuture<'_> {
        self.shared.closed.cancelled()
    }

    /// Whether nothing sent now can reach the peer any more.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled() || self.tx.is_closed()
    }

    /// Room left in the channel, in messages.
    pub fn capacity(&self) -> usize {
        self.tx.capacity()
    }

    /// Messages queued and not yet taken by gRPC.
    pub fn unread(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// How many messages gRPC has taken from the channel so far: it stops
    /// taking them when the peer stops reading.
    pub fn taken(&self) -> u64 {
        self.shared.taken.load(Ordering::Relaxed)
    }
}

/// The receiving half, the response stream of a gRPC call.
pub struct PeerStream<T> {
    rx: mpsc::Receiver<T>,
    shared: Arc<Shared>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    done: bool,
}

impl<T> Stream for PeerStream<T> {
    type Item = Result<T, tonic::Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.closed.as_mut().poll(cx).is_ready() {
            this.done = true;
            let status = this
                .shared
                .status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .unwrap_or_else(|| tonic::Status::unavailable("the stream was closed"));
            return Poll::Ready(Some(Err(status)));
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(m)) => {
                this.shared.taken.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Some(Ok(m)))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A stream to a peer holding at most `capacity` unread messages.
pub fn peer_channel<T>(capacity: usize) -> (PeerSender<T>, PeerStream<T>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let closed = CancellationToken::new();
    let shared = Arc::new(Shared {
        closed: closed.clone(),
        status: Mutex::new(None),
        taken: AtomicU64::new(0),
    });
    (
        PeerSender {
            tx,
            shared: shared.clone(),
        },
        PeerStream {
            rx,
            shared,
            closed: Box::pin(closed.cancelled_owned()),
            done: false,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use lts_proto::v1 as pb;

    fn item(id: &str, payload: usize) -> pb::Assignment {
        pb::Assignment {
            job: Some(pb::Job {
                job_id: id.into(),
                spec: Some(pb::JobSpec {
                    payload: vec![7; payload],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            attempt: 1,
            not_before_unix_ms: 0,
        }
    }

    #[test]
    fn groups_stay_within_the_budget_and_keep_the_order() {
        let items: Vec<pb::Assignment> = (0..10).map(|i| item(&i.to_string(), 1000)).collect();
        let one = entry_len(&items[0]);
        let groups = split_by_bytes(items, one * 3, 100);
        assert_eq!(
            groups.iter().map(Vec::len).collect::<Vec<_>>(),
            [3, 3, 3, 1]
        );
        let ids: Vec<String> = groups
            .iter()
            .flatten()
            .map(|a| a.job.as_ref().map(|j| j.job_id.clone()).unwrap_or_default())
            .collect();
        assert_eq!(ids, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
        for g in &groups {
            let msg = pb::Assignments {
                assignments: g.clone(),
            };
            assert!(prost::Message::encoded_len(&msg) <= one * 3);
        }
    }

    #[tokio::test]
    async fn a_closed_channel_ends_its_stream_with_the_status_first() {
        use futures::StreamExt;
        let (tx, mut rx) = peer_channel::<u32>(2);
        tx.try_send(1).expect("room");
        tx.try_send(2).expect("room");
        assert_eq!(tx.try_send(3), Err(SendError::Full));
        assert_eq!(rx.next().await.map(|m| m.ok()), Some(Some(1)));
        assert_eq!(tx.taken(), 1);
        tx.close(tonic::Status::resource_exhausted("not reading"));
        tx.close(tonic::Status::internal("second close is ignored"));
        let status = rx.next().await.expect("an item").expect_err("the status");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(rx.next().await.is_none());
        assert_eq!(tx.try_send(4), Err(SendError::Closed));
    }

    #[test]
    fn counts_bound_groups_and_oversized_items_go_alone() {
        let items: Vec<pb::Assignment> = (0..5).map(|i| item(&i.to_string(), 10)).collect();
        assert_eq!(split_by_bytes(items, usize::MAX, 2).len(), 3);
        let items = vec![item("a", 10), item("big", 5000), item("b", 10)];
        let groups = split_by_bytes(items, 1000, 100);
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1]);
        assert!(split_by_bytes(Vec::<pb::Assignment>::new(), 10, 10).is_empty());
    }
}
