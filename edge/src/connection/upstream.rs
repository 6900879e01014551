//! What a socket asks of NATS and PostgreSQL, behind one trait: the socket's logic
//! (`connection/session.rs`) is unit-tested against an in-memory [`Upstream`], and the edge runs it
//! against [`AppState`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::HeaderMap;
use backon::{ExponentialBuilder, Retryable as _};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt as _};
use shared::ids::{MessageId, ThreadId};
use shared::protocol::bus::{CancelNotice, InboundMessage};
use shared::protocol::{ClientFrame, ErrorCode, FeedbackTarget, FrameError};
use shared::retained::BundleReader;
use shared::subjects::Subjects;

pub use super::router::LiveEvent;
use super::router::Registration;
use crate::state::AppState;

/// One reply bundle (`shared::protocol::bus::bundle`): a NATS message's headers and payload.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub headers: Option<HeaderMap>,
    pub payload: bytes::Bytes,
}

/// The NATS and PostgreSQL operations of one socket.
pub trait Upstream: Send + Sync {
    /// A thread's live reply bundles, from the moment of the subscription, and word of bundles
    /// this socket missed.
    type Live: Stream<Item = LiveEvent> + Send + Unpin;

    /// Subscribes to a thread's live reply subject: once it returns, every bundle published on
    /// the subject reaches the stream (or, if dropped for a slow socket, a [`LiveEvent::Missed`]).
    fn subscribe(
        &self,
        thread: &ThreadId,
    ) -> impl Future<Output = Result<Self::Live, anyhow::Error>> + Send;

    /// The thread's retained bundles holding frames with `seq > after_seq`, in order, up to the
    /// thread's tail when it was called.
    fn retained(
        &self,
        thread: &ThreadId,
        after_seq: u64,
    ) -> impl Future<Output = anyhow::Result<BoxStream<'_, anyhow::Result<Bundle>>>> + Send;

    /// Stores a client message in `<PREFIX>_IN`; returns its stream sequence. `after`: the
    /// sequence of the thread's message this socket stored last. On a stream of one replica
    /// (`shared::jetstream::StoreConditions`) the message is stored on the condition
    /// that it still is the thread's last (`Nats-Expected-Last-Subject-Sequence`, checked by the
    /// stream and kept in the stored message's headers), which tells the worker that no message
    /// of the thread lies between the two; when one does (another socket or an operator stored
    /// it), it is stored without.
    fn store(
        &self,
        message: &InboundMessage,
        after: Option<u64>,
    ) -> impl Future<Output = Result<u64, FrameError>> + Send;

    /// Announces a stored `cancel` on the thread's cancel subject (best effort: the stored copy
    /// is announced again by the worker that takes it).
    fn announce_cancel(&self, notice: &CancelNotice) -> impl Future<Output = ()> + Send;

    /// Whether an operator token may watch the thread of `frame` (SPEC §7).
    fn authorize_watch(
        &self,
        frame: &ClientFrame,
        token: &str,
    ) -> impl Future<Output = Result<(), FrameError>> + Send;

    /// Whether an operator token is still valid; an error when it cannot be looked up.
    fn operator_token_valid(
        &self,
        token: &str,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;

    /// Stores a `feedback` frame; returns the id its `accepted` carries.
    fn feedback(
        &self,
        thread: &ThreadId,
        target: FeedbackTarget,
        comment: Option<String>,
    ) -> impl Future<Output = Result<MessageId, FrameError>> + Send;
}

/// A socket's live bundles of one thread: its registration in the edge's [`LiveRouter`]
/// (`LIVE_SUBSCRIPTION=edge`), or a NATS subscription of its own (`thread`).
pub enum LiveBundles {
    Routed(Registration),
    Subscribed(async_nats::Subscriber),
}

impl Stream for LiveBundles {
    type Item = LiveEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LiveEvent>> {
        match self.get_mut() {
            Self::Routed(registration) => registration.poll_next_unpin(cx),
            Self::Subscribed(subscriber) => subscriber.poll_next_unpin(cx).map(|message| {
                message.map(|message| {
                    LiveEvent::Bundle(Arc::new(Bundle {
                        headers: message.headers,
                        payload: message.payload,
                    }))
                })
            }),
        }
    }
}

/// A socket holds the edge's state behind one `Arc`: a clone of [`AppState`] (its stream infos
/// included) would cost every idle socket 3 KiB in its task and more on the heap.
impl Upstream for Arc<AppState> {
    type Live = LiveBundles;

    async fn subscribe(&self, thread: &ThreadId) -> Result<Self::Live, anyhow::Error> {
        match &self.live_router {
            // The edge's subscription to every live subject exists since start-up; the socket's
            // queue is in the router's map once this returns.
            Some(router) => Ok(LiveBundles::Routed(router.register(thread))),
            None => {
                let subscriber = self.nats.subscribe(self.subjects.live(thread)).await?;
                Ok(LiveBundles::Subscribed(subscriber))
            }
        }
    }

    async fn retained(
        &self,
        thread: &ThreadId,
        after_seq: u64,
    ) -> anyhow::Result<BoxStream<'_, anyhow::Result<Bundle>>> {
        let subject = self.subjects.replies(thread);
        let reader = BundleReader::after(&self.replies, &subject, after_seq).await?;
        // `None` ends the stream; an error is its last item.
        let bundles = futures_util::stream::unfold(Some(reader), |reader| async move {
            let mut reader = reader?;
            match reader.next().await {
                Ok(Some(stored)) => Some((
                    Ok(Bundle {
                        headers: Some(stored.headers),
                        payload: stored.payload,
                    }),
                    Some(reader),
                )),
                Ok(None) => None,
                Err(error) => Some((Err(error.into()), None)),
            }
        });
        Ok(bundles.boxed())
    }

    async fn store(&self, message: &InboundMessage, after: Option<u64>) -> Result<u64, FrameError> {
        let thread = &message.thread_id;
        let busy = || {
            FrameError::new(
                ErrorCode::Busy,
                "the message queue is unavailable; nothing was stored, send it again",
            )
            .on_thread(thread)
        };
        // While disconnected the client would buffer the publish and send it after reconnecting,
        // possibly after the client was told `busy`: refuse it here instead.
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            return Err(busy());
        }
        let payload = message.to_bytes().map_err(|error| {
            tracing::error!(%error, "Cannot encode an inbound message.");
            FrameError::new(ErrorCode::Internal, "internal error").on_thread(thread)
        })?;
        let dedup_id = Subjects::message_dedup_id(thread, &message.message_id);
        let started = Instant::now();
        let trace_context = shared::telemetry::trace_headers();
        // A failure after the message left may hide a stored message: send the same message id
        // again (JetStream stores it once) before telling the client it was not stored. Sent
        // again on the condition of `after`, a stored message is answered as a duplicate, or
        // (by a server that checks the condition first) refused and sent without it: a
        // duplicate then.
        let after = after.filter(|_| self.inbound_conditions.checked_with_store());
        let publish = |after| {
            let subject = self.subjects.inbound(thread);
            publish_inbound(self, subject, &payload, &dedup_id, &trace_context, after)
        };
        let stored = match publish(after).await {
            // Another message of the thread came between: stored without the condition.
            Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                publish(None).await
            }
            stored => stored,
        };
        match stored {
            Ok(ack) => {
                self.metrics
                    .publish_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok(ack.sequence)
            }
            Err(error) => {
                tracing::warn!(%error, thread_id = %thread, "JetStream did not store a client message.");
                Err(busy())
            }
        }
    }

    async fn announce_cancel(&self, notice: &CancelNotice) {
        match serde_json::to_vec(notice) {
            Ok(payload) => {
                let subject = self.subjects.cancels(&notice.thread_id);
                if let Err(error) = self.nats.publish(subject, payload.into()).await {
                    // The stored cancel is announced again by the worker that takes its delivery.
                    tracing::warn!(%error, "Cannot announce a cancel; its stored copy will be.");
                }
            }
            Err(error) => tracing::error!(%error, "Cannot encode a cancel notice."),
        }
    }

    async fn authorize_watch(&self, frame: &ClientFrame, token: &str) -> Result<(), FrameError> {
        crate::routes::operator::authorize_watch(self, frame, token).await
    }

    async fn operator_token_valid(&self, token: &str) -> Result<bool, sqlx::Error> {
        crate::routes::operator::authenticate(self, token)
            .await
            .map(|operator| operator.is_some())
    }

    async fn feedback(
        &self,
        thread: &ThreadId,
        target: FeedbackTarget,
        comment: Option<String>,
    ) -> Result<MessageId, FrameError> {
        crate::routes::operator::feedback(self, thread, target, comment).await
    }
}

/// Publishes an inbound message to `subject`, following `after` if given (see
/// [`Upstream::store`]); sent again on a lost connection or a missing ack, with the same message
/// id, so that it is stored once. Also the operators' messages' (`routes/operator.rs`).
pub(crate) async fn publish_inbound(
    state: &AppState,
    subject: String,
    payload: &bytes::Bytes,
    dedup_id: &str,
    trace_context: &HeaderMap,
    after: Option<u64>,
) -> Result<PublishAck, PublishError> {
    (|| async {
        let mut publish = async_nats::jetstream::message::PublishMessage::build()
            .headers(trace_context.clone())
            .payload(payload.clone())
            .message_id(dedup_id);
        if let Some(after) = after {
            publish = publish.expected_last_subject_sequence(after);
        }
        state
            .jetstream
            .send_publish(subject.clone(), publish)
            .await?
            .await
    })
    .retry(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_times(2),
    )
    .when(|error| {
        matches!(
            error.kind(),
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::Other
        )
    })
    .await
}
