//! [`FeedbackSubscription`]: the outcomes of jobs that asked for feedback,
//! pushed by the trackers to the clients of a submit node group.

use std::time::Duration;

use lts_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{Feedback, JobClient, Retry};
use crate::error::{Error, Result};

/// Messages (acks, mostly) queued for the tracker before the sender waits.
const OUTBOUND_QUEUE: usize = 64;

/// Longest pause between two attempts to reopen a broken stream.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// A live subscription to the feedback of one submit node group.
///
/// Call [`next`](Self::next) for the next batch of items, handle them, then
/// [`ack`](Self::ack) their ids. The tracker pushes every unacked item of
/// the group **at least once**: an item comes again when it was not acked,
/// when the ack was lost with a broken stream, or when the tracker restarts,
/// and another client of the same group may get it instead. Handlers must be
/// idempotent (key them on [`Feedback::job_id`] and
/// [`Feedback::attempt`], or on [`Feedback::feedback_id`]).
///
/// When the stream breaks, `next` reopens it on the same or another
/// tracker and subscribes again; the tracker then sends whatever is still
/// unacked.
#[derive(Debug)]
pub struct FeedbackSubscription {
    client: JobClient,
    submit_node_group: String,
    client_id: String,
    stream: Option<OpenStream>,
    failures: u32,
    closed: bool,
}

#[derive(Debug)]
struct OpenStream {
    address: String,
    outbound: mpsc::Sender<pb::FeedbackClientMessage>,
    inbound: tonic::Streaming<pb::FeedbackServerMessage>,
}

impl FeedbackSubscription {
    pub(crate) async fn open(
        client: JobClient,
        submit_node_group: String,
        client_id: String,
    ) -> Result<Self> {
        let mut subscription = FeedbackSubscription {
            client,
            submit_node_group,
            client_id,
            stream: None,
            failures: 0,
            closed: false,
        };
        subscription.stream = Some(subscription.subscribe().await?);
        Ok(subscription)
    }

    /// The submit node group this subscription receives.
    pub fn submit_node_group(&self) -> &str {
        &self.submit_node_group
    }

    /// The identity this client gives the trackers.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The tracker the stream is open to, if it is open.
    pub fn current_address(&self) -> Option<&str> {
        self.stream.as_ref().map(|s| s.address.as_str())
    }

    /// Waits for the next non-empty batch of feedback.
    ///
    /// A broken stream is reopened here. When no tracker can be reached the
    /// error is returned; calling `next` again tries again, pausing a little
    /// longer each time (up to 5 s).
    pub async fn next(&mut self) -> Result<Vec<Feedback>> {
        if self.closed {
            return Err(Error::SubscriptionClosed);
        }
        loop {
            let stream = match &mut self.stream {
                Some(stream) => stream,
                None => {
                    if self.failures > 0 {
                        tokio::time::sleep(reconnect_delay(self.failures)).await;
                    }
                    match self.subscribe().await {
                        Ok(stream) => {
                            self.failures = 0;
                            self.stream.insert(stream)
                        }
                        Err(e) => {
                            self.failures = self.failures.saturating_add(1);
                            return Err(e);
                        }
                    }
                }
            };
            match stream.inbound.message().await {
                Ok(Some(message)) => {
                    if !message.items.is_empty() {
                        return Ok(message.items.into_iter().map(Feedback::from).collect());
                    }
                }
                Ok(None) => {
                    tracing::info!(
                        tracker = %stream.address,
                        "JobTracker closed the feedback stream; subscribing again"
                    );
                    // A tracker ends the stream when it shuts down: start
                    // the next subscription with another one.
                    self.client.forget(&stream.address);
                    self.stream = None;
                    self.failures = self.failures.saturating_add(1);
                }
                Err(status) => {
                    tracing::warn!(
                        tracker = %stream.address,
                        "feedback stream broke ({:?}: {}); subscribing again",
                        status.code(),
                        status.message()
                    );
                    let address = stream.address.clone();
                    self.stream = None;
                    self.failures = self.failures.saturating_add(1);
                    self.client.forget(&address);
                    if !matches!(
                        status.code(),
                        tonic::Code::Unavailable
                            | tonic::Code::Unknown
                            | tonic::Code::Cancelled
                            | tonic::Code::Internal
                            | tonic::Code::DeadlineExceeded
                            | tonic::Code::Aborted
                    ) {
                        // The tracker refused the subscription itself (a bad
                        // group name, say): trying again will not help.
                        return Err(Error::from_status(&address, status));
                    }
                }
            }
        }
    }

    /// Acknowledges items so that the tracker stops delivering them.
    ///
    /// Fails with [`Error::AckLost`] when the stream has broken; the items
    /// will come again after [`next`](Self::next) reopens it.
    pub async fn ack<I, S>(&mut self, feedback_ids: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        if self.closed {
            return Err(Error::SubscriptionClosed);
        }
        let feedback_ids: Vec<String> = feedback_ids.into_iter().map(Into::into).collect();
        if feedback_ids.is_empty() {
            return Ok(());
        }
        let Some(stream) = &self.stream else {
            return Err(Error::AckLost {
                address: self.client.current_address().unwrap_or_default(),
            });
        };
        let message = pb::FeedbackClientMessage {
            kind: Some(pb::feedback_client_message::Kind::Ack(pb::FeedbackAck {
                feedback_ids,
            })),
        };
        if stream.outbound.send(message).await.is_err() {
            let address = stream.address.clone();
            self.stream = None;
            return Err(Error::AckLost { address });
        }
        Ok(())
    }

    /// Closes the stream at once. Unacked items go to other clients of the
    /// group, or to this group's next subscriber.
    ///
    /// Acks still queued may be lost with the stream (their items then come
    /// again); [`finish`](Self::finish) waits until the tracker has them.
    pub fn close(&mut self) {
        self.closed = true;
        self.stream = None;
    }

    /// Closes the stream after the tracker has handled every ack sent on it.
    ///
    /// The end of the stream goes after the queued acks, and the tracker
    /// ends its side only once it has handled every message before that
    /// end; this waits for it (at most the client's request timeout). Items
    /// that arrive meanwhile are not acked: they go to other clients of the
    /// group, or to its next subscriber.
    ///
    /// Fails with [`Error::AcksUnconfirmed`] when the stream broke or the
    /// tracker did not end it in time.
    pub async fn finish(&mut self) -> Result<()> {
        self.closed = true;
        let Some(OpenStream {
            address,
            outbound,
            mut inbound,
        }) = self.stream.take()
        else {
            return Ok(());
        };
        // The last sender: dropping it ends the request stream after the
        // queued acks.
        drop(outbound);
        let drained = tokio::time::timeout(self.client.request_timeout(), async {
            while inbound.message().await?.is_some() {}
            Ok::<(), tonic::Status>(())
        })
        .await;
        let reason = match drained {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
            Err(_) => format!(
                "the tracker did not end it within {}",
                humantime::format_duration(self.client.request_timeout())
            ),
        };
        Err(Error::AcksUnconfirmed { address, reason })
    }

    async fn subscribe(&self) -> Result<OpenStream> {
        let subscribe = pb::FeedbackClientMessage {
            kind: Some(pb::feedback_client_message::Kind::Subscribe(
                pb::Subscribe {
                    submit_node_group: self.submit_node_group.clone(),
                    client_id: self.client_id.clone(),
                },
            )),
        };
        let (address, (outbound, inbound)) = self
            .client
            .call(Retry::UnreachableOrSlow, |mut client, timeout| {
                let subscribe = subscribe.clone();
                async move {
                    let (outbound, rx) = mpsc::channel(OUTBOUND_QUEUE);
                    // The subscribe goes first, before the call, so a tracker
                    // that waits for it before answering sees it at once.
                    outbound
                        .try_send(subscribe)
                        .map_err(|_| tonic::Status::internal("feedback queue is full"))?;
                    // The stream lives on; only the wait for the tracker's
                    // answer is bounded.
                    let response =
                        tokio::time::timeout(timeout, client.feedback(ReceiverStream::new(rx)))
                            .await
                            .map_err(|_| {
                                tonic::Status::deadline_exceeded(
                                    "the JobTracker did not answer the feedback subscription",
                                )
                            })??;
                    Ok(response.map(|inbound| (outbound, inbound)))
                }
            })
            .await?;
        tracing::debug!(
            tracker = %address,
            group = %self.submit_node_group,
            "subscribed to feedback"
        );
        Ok(OpenStream {
            address,
            outbound,
            inbound,
        })
    }
}

fn reconnect_delay(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.min(16));
    Duration::from_millis(ms).min(MAX_RECONNECT_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_grows_and_caps() {
        assert_eq!(reconnect_delay(1), Duration::from_millis(200));
        assert!(reconnect_delay(2) > reconnect_delay(1));
        assert_eq!(reconnect_delay(40), MAX_RECONNECT_DELAY);
    }
}
