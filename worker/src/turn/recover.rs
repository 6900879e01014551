//! Turns an earlier attempt left behind: one that published all of its frames and died before
//! committing is committed from those frames, never run again; a message given up on after its
//! last attempt is answered `processing_failed` and dead-lettered.

use async_nats::jetstream::message::StreamMessage;
use shared::ids::TurnId;
use shared::protocol::bus::InboundMessage;
use shared::protocol::{ErrorCode, Usage};
use shared::timeline::TimelineEvent;
use shared::turns::{InterruptId, TurnKind};

use super::end::{segment_usage, Closing, Settled};
use crate::error::TurnError;
use crate::publish;
use crate::records::{Advanced, AfterCommit, Commit, Committed, DeadLetter, Lease, TurnRecord};
use crate::turn::TurnRunner;

impl TurnRunner {
    /// Gives up on a message after its last allowed attempt: the client gets `processing_failed`
    /// (after a `turn_reset` if the attempt had sent part of the turn), the message goes to the
    /// dead letters with its attempt history, and the thread moves on.
    pub(crate) async fn dead_letter(
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
        Closing::GivenUp {
            reset: partial.is_some(),
        }
        .send(&mut out)
        .await?;
        out.flush().await?;
        let letter = DeadLetter {
            in_seq,
            kind: TurnKind::from(&message.kind),
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
                let commit = Commit::DeadLetter {
                    letter: &letter,
                    pending_interrupt: pending_after,
                };
                Ok(Advanced::after(lease, commit, out.subject_seq()))
            }
            Committed::Fenced => Err(TurnError::LeaseLost),
        }
    }

    /// Commits a turn whose frames an earlier attempt fully published, from those frames. If that
    /// attempt had given up on the message (`processing_failed`), files the dead letter instead.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn commit_published(
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
            TurnKind::from(&message.kind),
            message.kind.content().map(str::to_owned),
        );
        let (committed, advanced) =
            if end.code.as_deref() == Some(ErrorCode::ProcessingFailed.as_str()) {
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
                let commit = Commit::DeadLetter {
                    letter: &letter,
                    pending_interrupt: pending_after,
                };
                (
                    self.store
                        .dead_letter(lease, &letter, after, pending_after)
                        .await?,
                    Advanced::after(lease, commit, tail.stream_seq),
                )
            } else {
                // `message_complete` says the whole turn's usage; this row holds its segment's.
                let usage = segment_usage(end.usage.unwrap_or_default(), usage_before);
                let Settled {
                    pending_interrupt,
                    status,
                    outcome,
                } = Settled::from_published(end, pending_after, published.clarification);
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
                    events: TimelineEvent::to_stored(&[TimelineEvent::Recovered {
                        note: "committed from the frames an earlier attempt published".into(),
                        at: chrono::Utc::now(),
                    }]),
                    // What each agent spent is not in the frames: the turn's totals are.
                    shares: Vec::new(),
                    escalated: false,
                };
                (
                    self.store.commit(lease, &record, after).await?,
                    Advanced::after(lease, Commit::Turn(&record), tail.stream_seq),
                )
            };
        match committed {
            Committed::Yes => {
                tracing::info!(thread_id = %lease.thread_id, turn_id = %turn_id, in_seq, outcome = "recovered", "Turn committed.");
                self.metrics.turns.with_label_values(&["recovered"]).inc();
                Ok(advanced)
            }
            Committed::Fenced => Err(TurnError::LeaseLost),
        }
    }
}

/// What an earlier attempt at the message, which did not commit, left on the thread's reply
/// subject: the frames after the thread's committed position.
#[derive(Debug, Clone, Copy)]
pub(super) enum Earlier<'a> {
    /// Nothing: the message has not been tried, or its attempt published nothing.
    Nothing,
    /// Part of the turn: the turn runs again, after a `turn_reset`.
    Partial,
    /// The whole turn, up to the frame that ends (or pauses) it: its clients have it, so it is
    /// committed from those frames and not run again.
    Published(&'a publish::LastFrame),
}

/// What an earlier attempt left, read from where the reply subject stands (`tail`).
pub(super) fn earlier_attempt<'a>(lease: &Lease, tail: &'a publish::Tail) -> Earlier<'a> {
    match tail
        .frame
        .as_ref()
        .filter(|frame| frame.seq > lease.last_seq)
    {
        None => Earlier::Nothing,
        Some(end) if end.ends_turn() => Earlier::Published(end),
        Some(_) => Earlier::Partial,
    }
}

/// The `seq` a turn's frames are numbered after: the larger of the committed one and the last
/// stored frame (an attempt that died may have gone further).
pub(super) fn numbered_after(lease: &Lease, tail: &publish::Tail) -> u64 {
    tail.frame
        .as_ref()
        .map_or(lease.last_seq, |frame| frame.seq.max(lease.last_seq))
}

/// What a turn recovered from its published frames is committed with.
pub(super) struct Recovered {
    /// The turn the published frames belong to.
    pub(super) turn_id: TurnId,
    /// The approval the thread waits for after it, unless its frames raised a new one.
    pub(super) pending_after: Option<InterruptId>,
    /// Usage of the turn before this segment.
    pub(super) usage_before: Usage,
}
