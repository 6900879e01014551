//! One thread's turns, in stream order, under its lease. A delivery is only a prompt to look at
//! its thread: the lease holder reads the thread's unprocessed messages straight from the stream
//! (JetStream direct get), oldest first, up to the delivered one, and commits each with its
//! stream sequence. So turns run in accepted order however many workers pull.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::StreamMessage, stream};
use backon::{BackoffBuilder as _, ExponentialBuilder};
use futures_util::FutureExt as _;
use shared::ids::{ThreadId, TurnId};
use shared::protocol::bus::{InboundKind, InboundMessage};
use shared::protocol::{ErrorCode, FrameBody, HandoffState, Usage};
use shared::subjects::Subjects;

use crate::agents::{Graph, TurnInfo};
use crate::error::TurnError;
use crate::metrics::WorkerMetrics;
use crate::publish::{self, FramePublisher};
use crate::records::{
    AfterCommit, Committed, DeadLetter, Decision, Ended, Lease, Outcome, PendingInterrupt,
    ThreadStatus, TurnRecord,
};
use crate::store::Store;

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Its turn (and any earlier ones of the thread) committed.
    Processed,
    /// Already committed earlier: acknowledged without effect.
    Duplicate,
    /// Another worker holds the thread's lease; it will be offered again.
    Busy,
    /// The conversation was erased: dropped, nothing re-created.
    Erased,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Duplicate => "duplicate",
            Self::Busy => "busy",
            Self::Erased => "erased",
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
    pub graph: Graph,
    /// Failed attempts at a message before it is dead-lettered.
    pub max_attempts: u32,
    /// Cancelled when the shutdown grace period is over: turns still running hand their thread back.
    pub abandon: tokio_util::sync::CancellationToken,
    pub metrics: WorkerMetrics,
    /// Turns running here, stopped by cancel notices (SPEC §8).
    pub cancels: crate::cancels::Cancels,
    /// `DOUBLE_TEXT`: whether a newer customer message cancels the turn in progress.
    pub double_text: crate::cancels::DoubleText,
}

impl TurnRunner {
    /// Handles the delivery of the message stored at `delivered_seq` on `thread`'s subject.
    #[tracing::instrument(name = "delivery", skip(self), fields(thread_id = %thread))]
    pub async fn handle_delivery(
        &self,
        thread: &ThreadId,
        delivered_seq: u64,
    ) -> Result<DeliveryOutcome, TurnError> {
        let mut lease = match self.acquire_soon(thread).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return Ok(DeliveryOutcome::Busy),
            Err(TurnError::Erased) => return Ok(DeliveryOutcome::Erased),
            Err(error) => return Err(error),
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
        match drained {
            Err(TurnError::Erased) => Ok(DeliveryOutcome::Erased),
            // A turn whose thread was erased under it finds its lease gone.
            Err(TurnError::LeaseLost) if self.store.is_erased(thread).await? => {
                Ok(DeliveryOutcome::Erased)
            }
            drained => drained,
        }
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
        let mut first = true;
        loop {
            if let Some(lease) = self.store.acquire(thread).await? {
                return Ok(Some(lease));
            }
            // An erased conversation is never re-created: its leftover deliveries are dropped.
            if std::mem::take(&mut first) && self.store.is_erased(thread).await? {
                return Err(TurnError::Erased);
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
    ) -> Result<Advanced, TurnError> {
        let in_seq = stored.sequence;
        let message: InboundMessage = serde_json::from_slice(&stored.payload)
            .map_err(|error| TurnError::Turn(error.to_string()))?;
        let subject = self.subjects.replies(&lease.thread_id);
        let tail = publish::tail(&self.replies, &subject).await?;
        // Frames after the committed position are this message's failed attempt (for an answer
        // to an approval, under the paused turn's id).
        let partial = tail
            .frame
            .as_ref()
            .filter(|frame| frame.seq > lease.last_seq)
            .map(|frame| frame.turn_id);
        // The answer to an approval belongs to the paused turn even when it published nothing.
        let plan = self.plan(lease, &message, in_seq).await.ok();
        let turn_id = partial.unwrap_or_else(|| {
            plan.as_ref()
                .map_or(message.turn_id, |plan| plan.turn_id(message.turn_id))
        });
        // A message given up on still decided what it decided: a withdrawn approval stays
        // withdrawn, an answered one answered (its tool, if it ran, is in the ledger).
        let pending_after = plan.as_ref().and_then(|plan| plan.pending_after(lease));
        let mut out = self.publisher(lease, turn_id, &tail);
        if partial.is_some() {
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
            kind: message.kind.as_str(),
            message_id: message.message_id.to_string(),
            turn_id: turn_id.as_uuid(),
            attempts,
            reason: reason.to_owned(),
            content: message.kind.content().map(str::to_owned),
            received_at: message.received_at,
            first_seq: out.first_seq(),
            last_seq: out.last_seq(),
        };
        match self
            .store
            .dead_letter(lease, &letter, after, pending_after)
            .await?
        {
            Committed::Yes => {
                self.metrics
                    .turns
                    .with_label_values(&["dead_lettered"])
                    .inc();
                tracing::warn!(thread_id = %lease.thread_id, in_seq, attempts, reason, "Message dead-lettered.");
                Ok(Advanced {
                    last_seq: out.last_seq(),
                    subject_seq: out.subject_seq(),
                    pending_interrupt: pending_after,
                    expired: false,
                    handoff: lease.handoff,
                })
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
        recovered: Recovered,
    ) -> Result<Advanced, TurnError> {
        let Recovered {
            turn_id,
            pending_after,
            usage_before,
        } = recovered;
        let subject = self.subjects.replies(&lease.thread_id);
        let published =
            publish::published_turn(&self.replies, &subject, turn_id, lease.last_seq).await?;
        let first_seq = published.first_seq.unwrap_or(end.seq);
        let (kind, content) = (
            message.kind.as_str(),
            message.kind.content().map(str::to_owned),
        );
        let mut after_turn = (pending_after, false);
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
                turn_id: turn_id.as_uuid(),
                attempts,
                reason,
                content,
                received_at: message.received_at,
                first_seq,
                last_seq: end.seq,
            };
            self.store
                .dead_letter(lease, &letter, after, pending_after)
                .await?
        } else {
            // `message_complete` says the whole turn's usage; this row holds its segment's.
            let total = end.usage.unwrap_or_default();
            let usage = Usage {
                prompt_tokens: total
                    .prompt_tokens
                    .saturating_sub(usage_before.prompt_tokens),
                completion_tokens: total
                    .completion_tokens
                    .saturating_sub(usage_before.completion_tokens),
                cost_usd: (total.cost_usd - usage_before.cost_usd).max(0.0),
            };
            let raised = end
                .interrupt_id
                .as_deref()
                .filter(|_| end.kind == "interrupt")
                .and_then(|id| uuid::Uuid::parse_str(id).ok());
            let pending_interrupt = raised.or(pending_after);
            let status = if end.code.as_deref() == Some(ErrorCode::SessionExpired.as_str()) {
                ThreadStatus::Expired
            } else if pending_interrupt.is_some() {
                ThreadStatus::AwaitingApproval
            } else {
                ThreadStatus::Resolved
            };
            let outcome = if raised.is_some() {
                "interrupted"
            } else if end.cancelled {
                "cancelled"
            } else if status == ThreadStatus::Expired {
                "session_expired"
            } else if published.clarification {
                "clarification"
            } else {
                "completed"
            };
            let record = TurnRecord {
                in_seq,
                turn_id: turn_id.as_uuid(),
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
                outcome,
                pending_interrupt,
                agents: published.agents,
                events: serde_json::json!([{"type": "recovered", "at": chrono::Utc::now(),
                    "note": "committed from the frames an earlier attempt published"}]),
                // What each agent spent is not in the frames: the turn's totals are.
                shares: Vec::new(),
                escalated: false,
            };
            after_turn = (record.pending_interrupt, status == ThreadStatus::Expired);
            self.store.commit(lease, &record, after).await?
        };
        match committed {
            Committed::Yes => {
                tracing::info!(thread_id = %lease.thread_id, turn_id = %turn_id, in_seq, outcome = "recovered", "Turn committed.");
                self.metrics.turns.with_label_values(&["recovered"]).inc();
                Ok(Advanced {
                    last_seq: end.seq,
                    subject_seq: tail.stream_seq,
                    pending_interrupt: after_turn.0,
                    expired: after_turn.1,
                    handoff: lease.handoff,
                })
            }
            Committed::Fenced => Err(TurnError::LeaseLost),
        }
    }

    /// A publisher for `turn_id`'s frames, numbering after the thread's last `seq`: the larger of
    /// the committed one and the last stored frame (an attempt that died may have gone further).
    pub(crate) fn publisher(
        &self,
        lease: &Lease,
        turn_id: TurnId,
        tail: &publish::Tail,
    ) -> FramePublisher {
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
            // A panic inside the turn (a bug) is a failed attempt like any other: caught here, it
            // is counted, and the message is dead-lettered in the end instead of redelivered for
            // ever with its thread wedged.
            let turn = self.run_turn(lease, message.clone(), &tail, after);
            let span = crate::observe::turn_span(&lease.thread_id, &message);
            let ran = AssertUnwindSafe(tracing::Instrument::instrument(turn, span))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    let reason = format!("the turn panicked: {}", panic_message(&panic));
                    tracing::error!(thread_id = %lease.thread_id, in_seq, %reason, "A turn panicked; counting a failed attempt.");
                    Err(TurnError::Turn(reason))
                });
            let advanced = match ran {
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
                // Every attempt would be refused the same way: given up on at once.
                Err(TurnError::Rejected(reason)) => {
                    let attempts = self
                        .store
                        .record_failure(&lease.thread_id, in_seq, &reason)
                        .await?;
                    self.dead_letter(lease, message, attempts, &reason, after)
                        .await?
                }
                Err(error) => return Err(error),
            };
            // The lease follows what the commit wrote, for the next message of this drain.
            lease.last_in_seq = in_seq;
            lease.last_seq = advanced.last_seq;
            lease.pending_interrupt = advanced.pending_interrupt;
            lease.handoff = advanced.handoff;
            if advanced.expired {
                lease.expired = true;
            } else {
                lease.last_active_at = chrono::Utc::now();
            }
            // This worker published the subject's last bundle itself.
            tail = publish::Tail {
                stream_seq: advanced.subject_seq,
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
    ) -> Result<Advanced, TurnError> {
        let started = Instant::now();
        let started_at = chrono::Utc::now();
        let in_seq = stored.sequence;
        let message: InboundMessage = match serde_json::from_slice(&stored.payload) {
            Ok(message) => message,
            Err(error) => {
                tracing::error!(%error, in_seq, "Skipping a stored message that does not decode.");
                return match self.store.skip(lease, in_seq, after).await? {
                    Committed::Yes => Ok(Advanced {
                        last_seq: lease.last_seq,
                        subject_seq: tail.stream_seq,
                        pending_interrupt: lease.pending_interrupt,
                        expired: lease.expired,
                        handoff: lease.handoff,
                    }),
                    Committed::Fenced => Err(TurnError::LeaseLost),
                };
            }
        };
        if let InboundKind::Cancel { turn_id } = &message.kind {
            let named = *turn_id;
            return self
                .run_cancel(lease, &message, in_seq, named, tail, after, started_at)
                .await;
        }
        if crate::handoff::is_control(&message.kind) {
            return self
                .run_control(lease, message, in_seq, tail, after, started_at)
                .await;
        }
        let plan = self.plan(lease, &message, in_seq).await;
        // Frames after the committed position are an earlier attempt at this message that did
        // not commit.
        let earlier_attempt = tail
            .frame
            .as_ref()
            .filter(|frame| frame.seq > lease.last_seq);
        if let Some(end) = earlier_attempt.filter(|frame| frame.ends_turn()) {
            // An earlier attempt published the whole turn and died before committing it: its
            // clients have the turn; commit what they saw instead of running it again (even if
            // the turn could not be planned now: that may be why it was given up on).
            let plan = plan.ok();
            let recovered = Recovered {
                turn_id: end.turn_id,
                pending_after: plan.as_ref().and_then(|plan| plan.pending_after(lease)),
                usage_before: plan.as_ref().map(Plan::usage_before).unwrap_or_default(),
            };
            return self
                .commit_published(
                    lease, message, in_seq, end, tail, started_at, after, recovered,
                )
                .await;
        }
        let plan = plan?;
        let turn_id = plan.turn_id(message.turn_id);
        // Registered before anything of the turn runs: a cancel heard from now on stops it, and
        // one heard before makes it start cancelled.
        let guard = self.cancels.enter(&lease.thread_id, in_seq, turn_id);
        if guard.is_cancelled() && plan.cancellable() {
            return self
                .end_cancelled_early(
                    lease, message, in_seq, &plan, turn_id, tail, after, started_at, &guard,
                )
                .await;
        }
        let mut out = self.publisher(lease, turn_id, tail);
        if earlier_attempt.is_some() {
            // An earlier attempt at this turn published part of it and did not commit.
            out.send(FrameBody::TurnReset).await?;
        }
        let info = TurnInfo {
            thread_id: lease.thread_id.as_str(),
            turn_id: turn_id.as_uuid(),
            in_seq,
            cancel: guard.token(),
        };
        let mut expired = false;
        let pending_after = plan.pending_after(lease);
        let answered = match &plan {
            Plan::Resume(pending, Decision::Approved) => Some(pending.id),
            _ => None,
        };
        let ended = match plan {
            Plan::SessionExpired => {
                expired = true;
                out.send(error_body(
                    ErrorCode::SessionExpired,
                    "This conversation has expired; please start a new one.",
                ))
                .await?;
                simple_end(vec![
                    serde_json::json!({"type": "error", "code": "session_expired",
                                                   "at": chrono::Utc::now()}),
                ])
            }
            Plan::NoPendingInterrupt => {
                out.send(error_body(
                    ErrorCode::NoPendingInterrupt,
                    "There is no pending approval on this thread.",
                ))
                .await?;
                out.send(FrameBody::MessageComplete {
                    usage: Usage::default(),
                    cancelled: false,
                })
                .await?;
                simple_end(vec![
                    serde_json::json!({"type": "error", "code": "no_pending_interrupt",
                                                   "at": chrono::Utc::now()}),
                ])
            }
            Plan::LateAnswer(pending) => {
                self.store
                    .decide_interrupt(pending.id, "expired", in_seq)
                    .await?;
                self.metrics
                    .interrupts
                    .with_label_values(&["expired"])
                    .inc();
                out.send(FrameBody::InterruptExpired {
                    interrupt_id: pending.id.to_string(),
                    action: pending.action.clone(),
                    message: format!(
                        "This approval ({}) expired before your answer arrived, so nothing was done. Ask again if you still want it.",
                        pending.action
                    ),
                })
                .await?;
                out.send(FrameBody::MessageComplete {
                    usage: pending.checkpoint.usage,
                    cancelled: false,
                })
                .await?;
                simple_end(vec![
                    serde_json::json!({"type": "decision", "interrupt_id": pending.id,
                                       "decision": "expired", "at": chrono::Utc::now()}),
                ])
            }
            Plan::Resume(pending, decision) => {
                let label = match decision {
                    Decision::Approved => "approved",
                    Decision::Rejected => "rejected",
                };
                self.store
                    .decide_interrupt(pending.id, label, in_seq)
                    .await?;
                self.metrics.interrupts.with_label_values(&[label]).inc();
                self.graph
                    .resume(&mut out, info, &pending, decision)
                    .await?
            }
            Plan::Message {
                content,
                supersedes,
            } => {
                if let Some(pending) = supersedes {
                    // A new message while an approval waits withdraws it: nothing of it runs.
                    self.store
                        .decide_interrupt(pending, "superseded", in_seq)
                        .await?;
                    self.metrics
                        .interrupts
                        .with_label_values(&["superseded"])
                        .inc();
                }
                // Every socket of the thread sees the customer's message first (SPEC §7).
                out.send(FrameBody::UserMessage {
                    message_id: message.message_id.clone(),
                    content: content.as_str().to_owned(),
                })
                .await?;
                if lease.handoff != HandoffState::Ai {
                    // A human was asked for or has joined: stored and shown, no model called.
                    crate::handoff::held_for_human(&mut out, lease.handoff).await?
                } else {
                    let history = if lease.last_in_seq > 0 {
                        self.store.history(&lease.thread_id, HISTORY_TURNS).await?
                    } else {
                        Vec::new()
                    };
                    self.graph
                        .run_message(&mut out, info, content.as_str(), history)
                        .await?
                }
            }
        };
        if guard.erased() {
            // The conversation is being erased: nothing more of it is published or stored.
            return Err(TurnError::Erased);
        }
        if let Some(id) = answered.filter(|_| ended.outcome == Outcome::Cancelled) {
            // Approved, then cancelled before its tool ran: the approval counts as withdrawn.
            self.store.withdraw_unexecuted(id).await?;
        }
        out.flush().await?;

        let (kind, content) = (
            message.kind.as_str(),
            message.kind.content().map(str::to_owned),
        );
        let pending_interrupt = match ended.outcome {
            Outcome::Interrupted(id) => Some(id),
            _ => pending_after,
        };
        let outcome = match ended.outcome {
            Outcome::Completed if expired => "session_expired",
            ref outcome => outcome.as_str(),
        };

        let status = if expired {
            ThreadStatus::Expired
        } else if pending_interrupt.is_some() {
            ThreadStatus::AwaitingApproval
        } else {
            ThreadStatus::Resolved
        };
        let record = TurnRecord {
            in_seq,
            turn_id: turn_id.as_uuid(),
            message_id: message.message_id.to_string(),
            kind,
            content,
            reply: ended.reply,
            first_seq: out.first_seq(),
            last_seq: out.last_seq(),
            prompt_tokens: ended.usage.prompt_tokens,
            completion_tokens: ended.usage.completion_tokens,
            cost_usd: ended.usage.cost_usd,
            received_at: message.received_at,
            started_at,
            status,
            outcome,
            pending_interrupt,
            agents: ended.agents,
            events: serde_json::Value::Array(ended.events),
            shares: ended.shares,
            escalated: ended.escalated,
        };
        match self.store.commit(lease, &record, after).await? {
            Committed::Yes => {
                crate::observe::log_turn(&lease.thread_id, &record, started.elapsed());
                self.metrics.turns.with_label_values(&[outcome]).inc();
                self.metrics
                    .turn_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok(Advanced {
                    last_seq: out.last_seq(),
                    subject_seq: out.subject_seq(),
                    pending_interrupt: record.pending_interrupt,
                    expired: record.status == ThreadStatus::Expired,
                    handoff: if record.escalated && lease.handoff == HandoffState::Ai {
                        HandoffState::Waiting
                    } else {
                        lease.handoff
                    },
                })
            }
            Committed::Fenced => Err(TurnError::LeaseLost),
        }
    }

    /// The turn of a stored `cancel`, taken in order. A turn it stopped has ended already (its
    /// notice reached it while it ran); what is left to do is a turn paused on an approval: the
    /// approval is withdrawn and the turn ends `cancelled`. Otherwise the cancel changes nothing.
    #[allow(clippy::too_many_arguments)]
    async fn run_cancel(
        &self,
        lease: &Lease,
        message: &InboundMessage,
        in_seq: u64,
        named: Option<TurnId>,
        tail: &publish::Tail,
        after: AfterCommit,
        started_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Advanced, TurnError> {
        let paused = match lease.pending_interrupt {
            Some(id) => self
                .store
                .load_interrupt(id)
                .await?
                .filter(|pending| named.is_none_or(|turn| turn.as_uuid() == pending.turn_id)),
            None => None,
        };
        let Some(pending) = paused else {
            return match self.store.skip(lease, in_seq, after).await? {
                Committed::Yes => Ok(Advanced {
                    last_seq: lease.last_seq,
                    subject_seq: tail.stream_seq,
                    pending_interrupt: lease.pending_interrupt,
                    expired: lease.expired,
                    handoff: lease.handoff,
                }),
                Committed::Fenced => Err(TurnError::LeaseLost),
            };
        };
        self.store
            .decide_interrupt(pending.id, "cancelled", in_seq)
            .await?;
        self.metrics
            .interrupts
            .with_label_values(&["cancelled"])
            .inc();
        let turn_id = TurnId::from(pending.turn_id);
        let earlier_end = tail
            .frame
            .as_ref()
            .filter(|frame| frame.seq > lease.last_seq && frame.ends_turn());
        let mut out = self.publisher(lease, turn_id, tail);
        let (first_seq, last_seq, subject_seq) = match earlier_end {
            // An earlier attempt at this cancel published its end and did not commit.
            Some(end) => (end.seq, end.seq, tail.stream_seq),
            None => {
                out.send(FrameBody::MessageComplete {
                    usage: pending.checkpoint.usage,
                    cancelled: true,
                })
                .await?;
                out.flush().await?;
                (out.first_seq(), out.last_seq(), out.subject_seq())
            }
        };
        let record = TurnRecord {
            in_seq,
            turn_id: turn_id.as_uuid(),
            message_id: message.message_id.to_string(),
            kind: "cancel",
            content: None,
            reply: String::new(),
            first_seq,
            last_seq,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_usd: 0.0,
            received_at: message.received_at,
            started_at,
            status: ThreadStatus::Resolved,
            outcome: "cancelled",
            pending_interrupt: None,
            agents: Vec::new(),
            events: serde_json::json!([{"type": "cancelled", "interrupt_id": pending.id,
                "decision": "withdrawn", "at": chrono::Utc::now()}]),
            shares: Vec::new(),
            escalated: false,
        };
        match self.store.commit(lease, &record, after).await? {
            Committed::Yes => {
                self.metrics.turns.with_label_values(&["cancelled"]).inc();
                tracing::info!(thread_id = %lease.thread_id, turn_id = %turn_id, in_seq, "A paused turn was cancelled.");
                Ok(Advanced {
                    last_seq,
                    subject_seq,
                    pending_interrupt: None,
                    expired: false,
                    handoff: lease.handoff,
                })
            }
            Committed::Fenced => Err(TurnError::LeaseLost),
        }
    }

    /// Ends a turn that was cancelled before it ran (the cancel was heard first, or it reached
    /// a worker that then died and this one runs the turn again): whatever an earlier attempt
    /// published stays, a `message_complete` with `cancelled: true` follows, and nothing runs.
    #[allow(clippy::too_many_arguments)]
    async fn end_cancelled_early(
        &self,
        lease: &Lease,
        message: InboundMessage,
        in_seq: u64,
        plan: &Plan,
        turn_id: TurnId,
        tail: &publish::Tail,
        after: AfterCommit,
        started_at: chrono::DateTime<chrono::Utc>,
        guard: &crate::cancels::TurnGuard,
    ) -> Result<Advanced, TurnError> {
        if guard.erased() {
            return Err(TurnError::Erased);
        }
        match plan {
            Plan::Message {
                supersedes: Some(pending),
                ..
            } => {
                self.store
                    .decide_interrupt(*pending, "superseded", in_seq)
                    .await?;
            }
            Plan::Resume(pending, _) => {
                self.store
                    .decide_interrupt(pending.id, "cancelled", in_seq)
                    .await?;
                self.metrics
                    .interrupts
                    .with_label_values(&["cancelled"])
                    .inc();
            }
            _ => {}
        }
        let partial = tail
            .frame
            .as_ref()
            .is_some_and(|frame| frame.seq > lease.last_seq);
        let published = if partial {
            let subject = self.subjects.replies(&lease.thread_id);
            publish::published_turn(&self.replies, &subject, turn_id, lease.last_seq).await?
        } else {
            publish::PublishedTurn::default()
        };
        let mut out = self.publisher(lease, turn_id, tail);
        out.send(FrameBody::MessageComplete {
            usage: plan.usage_before(),
            cancelled: true,
        })
        .await?;
        out.flush().await?;
        let (kind, content) = (
            message.kind.as_str(),
            message.kind.content().map(str::to_owned),
        );
        let record = TurnRecord {
            in_seq,
            turn_id: turn_id.as_uuid(),
            message_id: message.message_id.to_string(),
            kind,
            content,
            reply: published.reply,
            first_seq: published.first_seq.unwrap_or(out.first_seq()),
            last_seq: out.last_seq(),
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_usd: 0.0,
            received_at: message.received_at,
            started_at,
            status: ThreadStatus::Resolved,
            outcome: "cancelled",
            pending_interrupt: None,
            agents: published.agents,
            events: serde_json::json!([{"type": "cancelled", "at": chrono::Utc::now(),
                "note": "cancelled before this attempt ran"}]),
            shares: Vec::new(),
            escalated: false,
        };
        match self.store.commit(lease, &record, after).await? {
            Committed::Yes => {
                self.metrics.turns.with_label_values(&["cancelled"]).inc();
                tracing::info!(thread_id = %lease.thread_id, turn_id = %turn_id, in_seq, "A turn was cancelled before it ran.");
                Ok(Advanced {
                    last_seq: out.last_seq(),
                    subject_seq: out.subject_seq(),
                    pending_interrupt: None,
                    expired: false,
                    handoff: lease.handoff,
                })
            }
            Committed::Fenced => Err(TurnError::LeaseLost),
        }
    }

    /// What a message asks of the thread, given the approval it may be waiting for.
    async fn plan(
        &self,
        lease: &Lease,
        message: &InboundMessage,
        in_seq: u64,
    ) -> Result<Plan, TurnError> {
        if self.store.session_expired(lease, message.received_at) {
            return Ok(Plan::SessionExpired);
        }
        match &message.kind {
            InboundKind::Message { content } => Ok(Plan::Message {
                content: content.clone(),
                supersedes: lease.pending_interrupt,
            }),
            InboundKind::Cancel { .. } => {
                Err(TurnError::Turn("a cancel is not planned as a turn".into()))
            }
            // Handled by `run_control` before any plan is made.
            InboundKind::RequestHuman
            | InboundKind::OperatorJoin { .. }
            | InboundKind::OperatorLeave { .. }
            | InboundKind::OperatorResolve { .. }
            | InboundKind::HumanMessage { .. } => Err(TurnError::Rejected(
                "a handoff message has no plan".to_owned(),
            )),
            InboundKind::InterruptResponse {
                approved,
                interrupt_id,
            } => {
                let Some(id) = lease.pending_interrupt else {
                    return Ok(Plan::NoPendingInterrupt);
                };
                match interrupt_id {
                    Some(answered) if *answered != id.to_string() => {
                        return Ok(Plan::NoPendingInterrupt)
                    }
                    Some(_) => {}
                    // Without an id, the answer is for the approval the client was shown: one
                    // raised before the edge accepted the answer, never a later one (docs/agents.md).
                    None => {
                        let raised = self.store.interrupt_raised_at(id).await?;
                        if raised.is_none_or(|raised| message.received_at <= raised) {
                            return Ok(Plan::NoPendingInterrupt);
                        }
                    }
                }
                let Some(pending) = self.store.load_interrupt(id).await? else {
                    return Ok(Plan::NoPendingInterrupt);
                };
                // Decided already (by a message given up on, say): only that message, retried,
                // may go on with it.
                if pending.status != "pending" && pending.decided_in_seq != Some(in_seq) {
                    return Ok(Plan::NoPendingInterrupt);
                }
                if message.received_at > pending.expires_at {
                    return Ok(Plan::LateAnswer(Box::new(pending)));
                }
                let decision = if *approved {
                    Decision::Approved
                } else {
                    Decision::Rejected
                };
                Ok(Plan::Resume(Box::new(pending), decision))
            }
        }
    }
}

/// The thread's exchanges the agents see as history.
pub(crate) const HISTORY_TURNS: i64 = 5;

/// What the turn of a message will do.
enum Plan {
    SessionExpired,
    Message {
        content: shared::protocol::frames::UserText,
        /// The approval this message withdraws.
        supersedes: Option<uuid::Uuid>,
    },
    NoPendingInterrupt,
    /// An answer after the approval expired.
    LateAnswer(Box<PendingInterrupt>),
    Resume(Box<PendingInterrupt>, Decision),
}

impl Plan {
    /// The turn the frames belong to: an answer to an approval continues the paused turn.
    fn turn_id(&self, own: TurnId) -> TurnId {
        match self {
            Self::LateAnswer(pending) | Self::Resume(pending, _) => TurnId::from(pending.turn_id),
            _ => own,
        }
    }

    /// The plan runs agents, which a cancel can stop.
    fn cancellable(&self) -> bool {
        matches!(self, Self::Message { .. } | Self::Resume(..))
    }

    /// Usage of the turn before this segment (an answer continues a paused turn).
    fn usage_before(&self) -> Usage {
        match self {
            Self::LateAnswer(pending) | Self::Resume(pending, _) => pending.checkpoint.usage,
            _ => Usage::default(),
        }
    }

    /// The approval the thread waits for after this turn, unless the turn raises a new one.
    fn pending_after(&self, lease: &Lease) -> Option<uuid::Uuid> {
        match self {
            Self::SessionExpired | Self::NoPendingInterrupt => lease.pending_interrupt,
            Self::Message { .. } | Self::LateAnswer(_) | Self::Resume(..) => None,
        }
    }
}

/// Where a committed turn left the thread.
pub(crate) struct Advanced {
    /// The thread's last `seq`.
    pub(crate) last_seq: u64,
    /// Stream sequence of the reply subject's last bundle.
    pub(crate) subject_seq: Option<u64>,
    /// The approval the thread now waits for.
    pub(crate) pending_interrupt: Option<uuid::Uuid>,
    /// The session expired with this turn.
    pub(crate) expired: bool,
    /// The thread's handoff state after this turn.
    pub(crate) handoff: HandoffState,
}

/// What a turn recovered from its published frames is committed with.
struct Recovered {
    turn_id: TurnId,
    pending_after: Option<uuid::Uuid>,
    usage_before: Usage,
}

/// The record of a turn that ran no agent.
pub(crate) fn simple_end(events: Vec<serde_json::Value>) -> Ended {
    Ended {
        outcome: Outcome::Completed,
        reply: String::new(),
        usage: Usage::default(),
        agents: Vec::new(),
        events,
        shares: Vec::new(),
        escalated: false,
    }
}

fn error_body(code: ErrorCode, message: &str) -> FrameBody {
    FrameBody::Error {
        code,
        message: message.into(),
        retryable: code.retryable(),
    }
}

/// The message a panic was raised with, cut to a bound.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    match text.char_indices().nth(500) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}
