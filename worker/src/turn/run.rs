//! Running one stored client message as a turn and committing it: a customer message or an
//! answer to an approval runs the agent graph (after [`super::plan`] decided what it asks), a
//! `cancel` withdraws a paused turn, a turn cancelled before it ran only ends. Handoff messages
//! are turns of their own ([`crate::handoff`]); recovery from an earlier attempt is
//! [`super::recover`].

use std::time::Instant;

use async_nats::jetstream::{self, message::StreamMessage, stream};
use futures_util::future::BoxFuture;
use shared::ids::TurnId;
use shared::protocol::bus::{InboundKind, InboundMessage};
use shared::protocol::{ErrorCode, FrameBody, HandoffState, Usage};
use shared::subjects::Subjects;
use shared::timeline::{ApprovalDecision, TimelineEvent};
use shared::turns::{InterruptStatus, TurnKind, TurnOutcome};

use super::end::{Closing, Settled};
use super::plan::Plan;
use super::recover::{earlier_attempt, numbered_after, Earlier, Recovered};
use crate::agents::{Graph, TurnInfo};
use crate::error::TurnError;
use crate::metrics::WorkerMetrics;
use crate::publish::{self, FramePublisher};
use crate::records::{
    Advanced, AfterCommit, Commit, Committed, Decision, Ended, Lease, Outcome, PendingInterrupt,
    ThreadStatus, TurnRecord,
};
use crate::store::Store;

/// Everything a turn needs.
#[derive(Clone)]
pub struct TurnRunner {
    pub jetstream: jetstream::Context,
    pub inbound: stream::Stream,
    /// Whether `inbound` checks a message's condition with its store (one replica), kept current.
    pub inbound_conditions: shared::jetstream::StoreConditions,
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
    /// Where this worker's drains left threads' reply subjects.
    pub tails: publish::TailMemory,
    /// The threads this worker is draining.
    pub drains: crate::drain::LocalDrains,
}

impl TurnRunner {
    /// A publisher for `turn_id`'s frames, numbering after the thread's last `seq`: the larger of
    /// the committed one and the last stored frame (an attempt that died may have gone further).
    pub(crate) fn publisher(
        &self,
        lease: &Lease,
        turn_id: TurnId,
        tail: &publish::Tail,
    ) -> FramePublisher {
        let last_seq = numbered_after(lease, tail);
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

    /// Runs and commits the turn of one stored client message. `tail` is where the thread's reply
    /// subject stands (its last frame only when it may be newer than the lease says). Returns the
    /// thread's last `seq` and the stream sequence of its last bundle.
    ///
    /// The turn's future (the agent graph, the frames, the commit: several kilobytes) is on the
    /// heap, allocated once: inline, it made every delivery task that large, and tokio copies a
    /// task's future when it is spawned, stored and finished (the profile in BENCHMARKS.md:
    /// copies were a sixth of the worker's instructions per turn).
    pub(crate) fn run_turn<'a>(
        &'a self,
        lease: &'a Lease,
        stored: StreamMessage,
        tail: &'a publish::Tail,
        after: AfterCommit,
    ) -> BoxFuture<'a, Result<Advanced, TurnError>> {
        Box::pin(self.run_turn_inline(lease, stored, tail, after))
    }

    async fn run_turn_inline(
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
                    Committed::Yes => Ok(Advanced::after(lease, Commit::Skipped, tail.stream_seq)),
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
        let earlier = earlier_attempt(lease, tail);
        if let Earlier::Published(end) = earlier {
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
        if let Earlier::Partial = earlier {
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
        // Decided before anything of the turn runs: an answer approves, rejects or comes too
        // late for its approval; a new message while an approval waits withdraws it (nothing of
        // it runs).
        if let Some((id, status)) = plan.decides() {
            self.store.decide_interrupt(id, status, in_seq).await?;
            self.metrics
                .interrupts
                .with_label_values(&[status.as_str()])
                .inc();
        }
        let ended = match plan {
            Plan::SessionExpired => {
                expired = true;
                Closing::SessionExpired.send(&mut out).await?;
                simple_end(vec![TimelineEvent::Error {
                    code: ErrorCode::SessionExpired,
                    at: chrono::Utc::now(),
                }])
            }
            Plan::NoPendingInterrupt => {
                Closing::NoPendingInterrupt.send(&mut out).await?;
                simple_end(vec![TimelineEvent::Error {
                    code: ErrorCode::NoPendingInterrupt,
                    at: chrono::Utc::now(),
                }])
            }
            Plan::LateAnswer(pending) => {
                Closing::LateAnswer(&pending).send(&mut out).await?;
                simple_end(vec![TimelineEvent::Decision {
                    interrupt_id: pending.id,
                    decision: ApprovalDecision::Expired,
                    at: chrono::Utc::now(),
                }])
            }
            Plan::Resume(pending, decision) => {
                self.graph
                    .resume(&mut out, info, &pending, decision)
                    .await?
            }
            Plan::Message { content, .. } => {
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
                        self.store.history(lease).await?
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
            TurnKind::from(&message.kind),
            message.kind.content().map(str::to_owned),
        );
        let Settled {
            pending_interrupt,
            status,
            outcome,
        } = Settled::after_run(&ended.outcome, expired, pending_after);
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
            events: TimelineEvent::to_stored(&ended.events),
            shares: ended.shares,
            escalated: ended.escalated,
        };
        match self.store.commit(lease, &record, after).await? {
            Committed::Yes => {
                crate::observe::log_turn(&lease.thread_id, &record, started.elapsed());
                self.metrics
                    .turns
                    .with_label_values(&[outcome.as_str()])
                    .inc();
                self.metrics
                    .turn_seconds
                    .observe(started.elapsed().as_secs_f64());
                Ok(Advanced::after(
                    lease,
                    Commit::Turn(&record),
                    out.subject_seq(),
                ))
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
                .filter(|pending| cancel_withdraws(named, pending)),
            None => None,
        };
        let Some(pending) = paused else {
            return match self.store.skip(lease, in_seq, after).await? {
                Committed::Yes => Ok(Advanced::after(lease, Commit::Skipped, tail.stream_seq)),
                Committed::Fenced => Err(TurnError::LeaseLost),
            };
        };
        self.store
            .decide_interrupt(pending.id, InterruptStatus::Cancelled, in_seq)
            .await?;
        self.metrics
            .interrupts
            .with_label_values(&["cancelled"])
            .inc();
        let turn_id = TurnId::from(pending.turn_id);
        let earlier_end = match earlier_attempt(lease, tail) {
            Earlier::Published(end) => Some(end),
            Earlier::Nothing | Earlier::Partial => None,
        };
        let mut out = self.publisher(lease, turn_id, tail);
        let (first_seq, last_seq, subject_seq) = match earlier_end {
            // An earlier attempt at this cancel published its end and did not commit.
            Some(end) => (end.seq, end.seq, tail.stream_seq),
            None => {
                Closing::Cancelled(pending.checkpoint.usage)
                    .send(&mut out)
                    .await?;
                out.flush().await?;
                (out.first_seq(), out.last_seq(), out.subject_seq())
            }
        };
        let record = TurnRecord {
            in_seq,
            turn_id: turn_id.as_uuid(),
            message_id: message.message_id.to_string(),
            kind: TurnKind::Cancel,
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
            outcome: TurnOutcome::Cancelled,
            pending_interrupt: None,
            agents: Vec::new(),
            events: TimelineEvent::to_stored(&[TimelineEvent::Cancelled {
                interrupt_id: Some(pending.id),
                decision: Some(ApprovalDecision::Withdrawn),
                by: None,
                note: None,
                at: chrono::Utc::now(),
            }]),
            shares: Vec::new(),
            escalated: false,
        };
        match self.store.commit(lease, &record, after).await? {
            Committed::Yes => {
                self.metrics.turns.with_label_values(&["cancelled"]).inc();
                tracing::info!(thread_id = %lease.thread_id, turn_id = %turn_id, in_seq, "A paused turn was cancelled.");
                Ok(Advanced::after(lease, Commit::Turn(&record), subject_seq))
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
        if let Some((id, status)) = plan.decides_when_cancelled() {
            self.store.decide_interrupt(id, status, in_seq).await?;
            self.metrics
                .interrupts
                .with_label_values(&[status.as_str()])
                .inc();
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
        Closing::Cancelled(plan.usage_before())
            .send(&mut out)
            .await?;
        out.flush().await?;
        let (kind, content) = (
            TurnKind::from(&message.kind),
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
            outcome: TurnOutcome::Cancelled,
            pending_interrupt: None,
            agents: published.agents,
            events: TimelineEvent::to_stored(&[TimelineEvent::Cancelled {
                interrupt_id: None,
                decision: None,
                by: None,
                note: Some("cancelled before this attempt ran".into()),
                at: chrono::Utc::now(),
            }]),
            shares: Vec::new(),
            escalated: false,
        };
        match self.store.commit(lease, &record, after).await? {
            Committed::Yes => {
                self.metrics.turns.with_label_values(&["cancelled"]).inc();
                tracing::info!(thread_id = %lease.thread_id, turn_id = %turn_id, in_seq, "A turn was cancelled before it ran.");
                Ok(Advanced::after(
                    lease,
                    Commit::Turn(&record),
                    out.subject_seq(),
                ))
            }
            Committed::Fenced => Err(TurnError::LeaseLost),
        }
    }
}

/// Whether a stored `cancel` (naming `named`, or no turn) withdraws the approval the thread's
/// paused turn waits for: one naming another turn does not.
pub(super) fn cancel_withdraws(named: Option<TurnId>, paused: &PendingInterrupt) -> bool {
    named.is_none_or(|turn| turn.as_uuid() == paused.turn_id)
}

/// The record of a turn that ran no agent.
fn simple_end(events: Vec<TimelineEvent>) -> Ended {
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
