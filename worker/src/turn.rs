//! One thread's turns, in stream order, under its lease. A delivery is only a prompt to look at
//! its thread: the lease holder reads the thread's unprocessed messages straight from the stream
//! (JetStream direct get), oldest first, up to the delivered one, and commits each with its
//! stream sequence. So turns run in accepted order however many workers pull.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::StreamMessage, stream};
use backon::{BackoffBuilder as _, ExponentialBuilder};
use shared::ids::{ThreadId, TurnId};
use shared::protocol::bus::{InboundKind, InboundMessage};
use shared::protocol::{ErrorCode, FrameBody, Usage};
use shared::subjects::Subjects;

use crate::error::TurnError;
use crate::llm::ScriptedModel;
use crate::metrics::WorkerMetrics;
use crate::publish::{self, FramePublisher};
use crate::store::{AfterCommit, Committed, DeadLetter, Lease, Store, ThreadStatus, TurnRecord};

/// The agent that labels the scripted model's general replies.
const GENERAL_AGENT: &str = "general";

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Its turn (and any earlier ones of the thread) committed.
    Processed,
    /// Already committed earlier: acknowledged without effect.
    Duplicate,
    /// Another worker holds the thread's lease; it will be offered again.
    Busy,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Duplicate => "duplicate",
            Self::Busy => "busy",
        }
    }
}

/// Everything a turn needs.
#[derive(Clone)]
pub struct TurnRunner {
    pub jetstream: jetstream::Context,
    pub inbound: stream::Stream,
    pub replies: stream::Stream,
    pub subjects: Subjects,
    pub store: Store,
    pub model: ScriptedModel,
    /// Failed attempts at a message before it is dead-lettered.
    pub max_attempts: u32,
    /// Cancelled when the shutdown grace period is over: turns still running hand their thread back.
    pub abandon: tokio_util::sync::CancellationToken,
    pub metrics: WorkerMetrics,
}

impl TurnRunner {
    /// Handles the delivery of the message stored at `delivered_seq` on `thread`'s subject.
    #[tracing::instrument(name = "delivery", skip(self), fields(thread_id = %thread))]
    pub async fn handle_delivery(
        &self,
        thread: &ThreadId,
        delivered_seq: u64,
    ) -> Result<DeliveryOutcome, TurnError> {
        let Some(mut lease) = self.acquire_soon(thread).await? else {
            return Ok(DeliveryOutcome::Busy);
        };
        if lease.last_in_seq >= delivered_seq {
            self.store.release(&lease).await?;
            return Ok(DeliveryOutcome::Duplicate);
        }
        let (thread_id, epoch) = (lease.thread_id.clone(), lease.epoch);
        let drained = tokio::select! {
            // A finished drain wins over a renewal that raced with its final commit.
            biased;
            drained = self.drain(&mut lease, delivered_seq) => drained,
            lost = self.keep_lease(&thread_id, epoch) => Err(lost),
            () = self.abandon.cancelled() => Err(TurnError::Abandoned),
        };
        if drained.is_err() {
            if let Err(error) = self.store.release(&lease).await {
                tracing::warn!(%error, "Cannot release a lease after a failed turn; it will expire.");
            }
        }
        drained
    }

    /// Takes the thread's lease, retrying briefly while another turn holds it: a client that got
    /// `message_complete` often sends its next message while that turn is still committing, and
    /// the lease is free a moment later. `None` if it stays taken (a long turn elsewhere).
    async fn acquire_soon(&self, thread: &ThreadId) -> Result<Option<Lease>, TurnError> {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(1))
            .with_max_delay(Duration::from_millis(32))
            .with_max_times(7)
            .with_jitter()
            .build();
        loop {
            if let Some(lease) = self.store.acquire(thread).await? {
                return Ok(Some(lease));
            }
            match delays.next() {
                Some(delay) => tokio::time::sleep(delay).await,
                None => return Ok(None),
            }
        }
    }

    /// Gives up on a message after its last allowed attempt: the client gets `processing_failed`
    /// (after a `turn_reset` if the attempt had sent part of the turn), the message goes to the
    /// dead letters with its attempt history, and the thread moves on.
    async fn dead_letter(
        &self,
        lease: &Lease,
        stored: StreamMessage,
        attempts: u32,
        reason: &str,
        after: AfterCommit,
    ) -> Result<(u64, Option<u64>), TurnError> {
        let in_seq = stored.sequence;
        let message: InboundMessage = serde_json::from_slice(&stored.payload)
            .map_err(|error| TurnError::Turn(error.to_string()))?;
        let subject = self.subjects.replies(&lease.thread_id);
        let tail = publish::tail(&self.replies, &subject).await?;
        let mut out = self.publisher(lease, message.turn_id, &tail);
        if tail
            .frame
            .as_ref()
            .is_some_and(|frame| frame.turn_id == message.turn_id)
        {
            out.send(FrameBody::TurnReset).await?;
        }
        out.send(error_body(
            ErrorCode::ProcessingFailed,
            "We could not process this message. It has been set aside, and an operator can replay it.",
        ))
        .await?;
        out.flush().await?;
        let letter = DeadLetter {
            in_seq,
            kind: match &message.kind {
                InboundKind::Message { .. } => "message",
                InboundKind::InterruptResponse { .. } => "interrupt_response",
            },
            message_id: message.message_id.to_string(),
            turn_id: message.turn_id.as_uuid(),
            attempts,
            reason: reason.to_owned(),
            content: match &message.kind {
                InboundKind::Message { content } => Some(content.as_str().to_owned()),
                InboundKind::InterruptResponse { .. } => None,
            },
            received_at: message.received_at,
            first_seq: out.first_seq(),
            last_seq: out.last_seq(),
        };
        match self.store.dead_letter(lease, &letter, after).await? {
            Committed::Yes => {
                self.metrics
                    .turns
                    .with_label_values(&["dead_lettered"])
                    .inc();
                tracing::warn!(thread_id = %lease.thread_id, in_seq, attempts, reason, "Message dead-lettered.");
                Ok((out.last_seq(), out.subject_seq()))
            }
            Committed::Fenced => Err(TurnError::LeaseLost),
        }
    }

    /// Commits a turn whose frames an earlier attempt fully published, from those frames. If that
    /// attempt had given up on the message (`processing_failed`), files the dead letter instead.
    #[allow(clippy::too_many_arguments)]
    async fn commit_published(
        &self,
        lease: &Lease,
        message: InboundMessage,
        in_seq: u64,
        end: &publish::LastFrame,
        tail: &publish::Tail,
        started_at: chrono::DateTime<chrono::Utc>,
        after: AfterCommit,
    ) -> Result<(u64, Option<u64>), TurnError> {
        let subject = self.subjects.replies(&lease.thread_id);
        let published =
            publish::published_turn(&self.replies, &subject, message.turn_id, lease.last_seq)
                .await?;
        let first_seq = published.first_seq.unwrap_or(end.seq);
        let (kind, content) = match &message.kind {
            InboundKind::Message { content } => ("message", Some(content.as_str().to_owned())),
            InboundKind::InterruptResponse { .. } => ("interrupt_response", None),
        };
        let committed = if end.code.as_deref() == Some(ErrorCode::ProcessingFailed.as_str()) {
            let (attempts, reason) = self
                .store
                .failures(&lease.thread_id, in_seq)
                .await?
                .unwrap_or((self.max_attempts, "failed attempts".to_owned()));
            let letter = DeadLetter {
                in_seq,
                kind,
                message_id: message.message_id.to_string(),
                turn_id: message.turn_id.as_uuid(),
                attempts,
                reason,
                content,
                received_at: message.received_at,
                first_seq,
                last_seq: end.seq,
            };
            self.store.dead_letter(lease, &letter, after).await?
        } else {
            let usage = end.usage.unwrap_or_default();
            let status = if end.code.as_deref() == Some(ErrorCode::SessionExpired.as_str()) {
                ThreadStatus::Expired
            } else {
                ThreadStatus::Open
            };
            let record = TurnRecord {
                in_seq,
                turn_id: message.turn_id.as_uuid(),
                message_id: message.message_id.to_string(),
                kind,
                content,
                reply: published.reply,
                first_seq,
                last_seq: end.seq,
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                cost_usd: usage.cost_usd,
                received_at: message.received_at,
                started_at,
                status,
            };
            self.store.commit(lease, &record, after).await?
        };
        match committed {
            Committed::Yes => {
                self.metrics.turns.with_label_values(&["recovered"]).inc();
                Ok((end.seq, tail.stream_seq))
            }
            Committed::Fenced => Err(TurnError::LeaseLost),
        }
    }

    /// A publisher for `turn_id`'s frames, numbering after the thread's last `seq`: the larger of
    /// the committed one and the last stored frame (an attempt that died may have gone further).
    fn publisher(&self, lease: &Lease, turn_id: TurnId, tail: &publish::Tail) -> FramePublisher {
        let last_seq = tail
            .frame
            .as_ref()
            .map_or(lease.last_seq, |frame| frame.seq.max(lease.last_seq));
        FramePublisher::new(
            self.jetstream.clone(),
            self.metrics.clone(),
            self.subjects.replies(&lease.thread_id),
            lease.thread_id.clone(),
            turn_id,
            last_seq,
            tail.stream_seq,
        )
    }

    /// Renews the lease every third of its TTL while the turns run. Returns once the lease is
    /// lost to a newer epoch (this worker stalled past the TTL), or when renewals have failed for
    /// so long that the lease may have run out.
    async fn keep_lease(&self, thread_id: &ThreadId, epoch: i64) -> TurnError {
        let ttl = self.store.lease_ttl();
        let every = ttl / 3;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut renewed = tokio::time::Instant::now();
        loop {
            ticks.tick().await;
            match self.store.renew(thread_id, epoch).await {
                Ok(true) => renewed = tokio::time::Instant::now(),
                Ok(false) => return TurnError::LeaseLost,
                Err(error) if renewed.elapsed() >= ttl - every => {
                    return TurnError::Database(error)
                }
                Err(error) => tracing::warn!(%error, "Cannot renew a lease; trying again."),
            }
        }
    }

    /// Runs the thread's unprocessed messages in stream order, through `up_to`.
    async fn drain(&self, lease: &mut Lease, up_to: u64) -> Result<DeliveryOutcome, TurnError> {
        let subject = self.subjects.inbound(&lease.thread_id);
        // Only the first turn under a new lease can follow frames of an attempt that did not
        // commit; after that this worker published the thread's last frame itself. Both reads go
        // out together.
        let replies = self.subjects.replies(&lease.thread_id);
        let (first, tail) = tokio::join!(
            self.next_message(&subject, lease.last_in_seq),
            publish::tail(&self.replies, &replies)
        );
        let mut next = first?;
        let mut tail = tail?;
        loop {
            let Some(message) = next else {
                // The rest has aged out of the stream: nothing is left to run.
                self.store.release(lease).await?;
                return Ok(DeliveryOutcome::Processed);
            };
            let in_seq = message.sequence;
            let after = if in_seq >= up_to {
                AfterCommit::ReleaseLease
            } else {
                AfterCommit::KeepLease
            };
            let (last_seq, subject_seq) =
                match self.run_turn(lease, message.clone(), &tail, after).await {
                    Ok(position) => position,
                    Err(TurnError::Turn(reason)) => {
                        let attempts = self
                            .store
                            .record_failure(&lease.thread_id, in_seq, &reason)
                            .await?;
                        if attempts < self.max_attempts {
                            return Err(TurnError::AttemptFailed { attempts, reason });
                        }
                        self.dead_letter(lease, message, attempts, &reason, after)
                            .await?
                    }
                    Err(error) => return Err(error),
                };
            lease.last_in_seq = in_seq;
            lease.last_seq = last_seq;
            lease.last_active_at = chrono::Utc::now();
            // This worker published the subject's last bundle itself.
            tail = publish::Tail {
                stream_seq: subject_seq,
                frame: None,
            };
            if in_seq >= up_to {
                return Ok(DeliveryOutcome::Processed);
            }
            next = self.next_message(&subject, lease.last_in_seq).await?;
        }
    }

    /// The thread's first stored message after `after_seq`, if any.
    async fn next_message(
        &self,
        subject: &str,
        after_seq: u64,
    ) -> Result<Option<StreamMessage>, TurnError> {
        // From the stream leader: a replica that lags would answer "nothing" for a message that
        // exists, and the thread would skip it.
        let next = self
            .inbound
            .raw_message_builder()
            .sequence(after_seq + 1)
            .next_by_subject(subject)
            .send()
            .await;
        match next {
            Ok(message) => Ok(Some(message)),
            Err(error) if matches!(error.kind(), stream::RawMessageErrorKind::NoMessageFound) => {
                Ok(None)
            }
            Err(error) => Err(TurnError::nats(error)),
        }
    }

    /// Runs and commits the turn of one stored client message. `tail` is where the thread's reply
    /// subject stands (its last frame only when it may be newer than the lease says). Returns the
    /// thread's last `seq` and the stream sequence of its last bundle.
    async fn run_turn(
        &self,
        lease: &Lease,
        stored: StreamMessage,
        tail: &publish::Tail,
        after: AfterCommit,
    ) -> Result<(u64, Option<u64>), TurnError> {
        let started = Instant::now();
        let started_at = chrono::Utc::now();
        let in_seq = stored.sequence;
        let message: InboundMessage = match serde_json::from_slice(&stored.payload) {
            Ok(message) => message,
            Err(error) => {
                tracing::error!(%error, in_seq, "Skipping a stored message that does not decode.");
                return match self.store.skip(lease, in_seq, after).await? {
                    Committed::Yes => Ok((lease.last_seq, tail.stream_seq)),
                    Committed::Fenced => Err(TurnError::LeaseLost),
                };
            }
        };
        let previous = tail.frame.as_ref();
        let earlier_attempt = previous.filter(|frame| frame.turn_id == message.turn_id);
        if let Some(end) = earlier_attempt.filter(|frame| frame.ends_turn()) {
            // An earlier attempt published the whole turn and died before committing it: its
            // clients have the turn; commit what they saw instead of running it again.
            return self
                .commit_published(lease, message, in_seq, end, tail, started_at, after)
                .await;
        }
        let mut out = self.publisher(lease, message.turn_id, tail);
        if earlier_attempt.is_some() {
            // An earlier attempt at this turn published part of it and did not commit.
            out.send(FrameBody::TurnReset).await?;
        }

        let mut reply = String::new();
        let mut usage = Usage::default();
        let mut status = ThreadStatus::Open;
        let (kind, content) = match message.kind {
            InboundKind::Message { content } => ("message", Some(content)),
            InboundKind::InterruptResponse { .. } => ("interrupt_response", None),
        };
        if self.store.session_expired(lease, message.received_at) {
            status = ThreadStatus::Expired;
            out.send(error_body(
                ErrorCode::SessionExpired,
                "This conversation has expired; please start a new one.",
            ))
            .await?;
        } else if let Some(content) = &content {
            usage.prompt_tokens = self.model.prompt_tokens(content.as_str());
            let fails = self.model.fails_on(content.as_str());
            for (index, token) in self.model.reply_tokens().enumerate() {
                if fails && index == crate::llm::scripted::TOKENS_BEFORE_FAILURE {
                    // What a provider outage looks like mid-stream: some tokens went out.
                    out.flush().await?;
                    return Err(TurnError::Turn(
                        "the scripted model failed (SCRIPTED_FAIL_ON matched the message)".into(),
                    ));
                }
                if !self.model.token_delay.is_zero() {
                    out.flush().await?;
                    tokio::time::sleep(self.model.token_delay).await;
                }
                reply.push_str(&token);
                usage.completion_tokens += 1;
                out.send(FrameBody::Token {
                    agent: GENERAL_AGENT.into(),
                    content: token,
                })
                .await?;
            }
            out.send(FrameBody::MessageComplete { usage }).await?;
        } else {
            out.send(error_body(
                ErrorCode::NoPendingInterrupt,
                "There is no pending approval on this thread.",
            ))
            .await?;
            out.send(FrameBody::MessageComplete { usage }).await?;
        }
        out.flush().await?;

        let record = TurnRecord {
            in_seq,
            turn_id: message.turn_id.as_uuid(),
            message_id: message.message_id.to_string(),
            kind,
            content: content.map(|content| content.as_str().to_owned()),
            reply,
            first_seq: out.first_seq(),
            last_seq: out.last_seq(),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cost_usd: usage.cost_usd,
            received_at: message.received_at,
            started_at,
            status,
        };
        match self.store.commit(lease, &record, after).await? {
            Committed::Yes => {
                self.metrics
                    .turns
                    .with_label_values(&[match status {
                        ThreadStatus::Open => "completed",
                        ThreadStatus::Expired => "session_expired",
                    }])
                    .inc();
                self.metrics
                    .turn_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok((out.last_seq(), out.subject_seq()))
            }
            Committed::Fenced => Err(TurnError::LeaseLost),
        }
    }
}

fn error_body(code: ErrorCode, message: &str) -> FrameBody {
    FrameBody::Error {
        code,
        message: message.into(),
        retryable: code.retryable(),
    }
}
