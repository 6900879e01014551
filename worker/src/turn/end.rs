//! How a turn ends on the wire, written once: the frames that close a turn that does not end in
//! the agent graph (an answer that needs no model, a customer message held for a human, a
//! cancelled or withdrawn paused turn, a message given up on). Clients and `resume` read these
//! frames, so every way of ending sends exactly the same ones, in the same order.

use shared::protocol::{ErrorCode, FrameBody, Usage};
use shared::turns::{InterruptId, TurnOutcome};

use crate::agents::FrameSink;
use crate::error::TurnError;
use crate::publish::LastFrame;
use crate::records::{Outcome, PendingInterrupt, ThreadStatus};

/// Why a turn ends without the agent graph ending it, and so which frames close it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Closing<'a> {
    /// The session expired: an `error` answers the message; no `message_complete` follows.
    SessionExpired,
    /// An answer with no approval waiting for it: an `error`, then `message_complete`.
    NoPendingInterrupt,
    /// An answer after the approval expired: `interrupt_expired`, then `message_complete` with
    /// the paused turn's usage.
    LateAnswer(&'a PendingInterrupt),
    /// A customer message shown while a human is asked for or has joined: `message_complete`.
    HeldForHuman,
    /// A turn stopped before it ran, or a paused turn withdrawn (a `cancel`, a human asked for):
    /// `message_complete` with `cancelled: true` and the turn's usage so far.
    Cancelled(Usage),
    /// A message given up on after its last attempt: `turn_reset` when that attempt had
    /// published part of the turn, then a `processing_failed` error.
    GivenUp {
        /// Frames of the failed attempt were published.
        reset: bool,
    },
}

impl Closing<'_> {
    /// The frames that close the turn, in order.
    pub(crate) fn frames(&self) -> Vec<FrameBody> {
        match self {
            Self::SessionExpired => vec![error_body(
                ErrorCode::SessionExpired,
                "This conversation has expired; please start a new one.",
            )],
            Self::NoPendingInterrupt => vec![
                error_body(
                    ErrorCode::NoPendingInterrupt,
                    "There is no pending approval on this thread.",
                ),
                complete(Usage::default(), false),
            ],
            Self::LateAnswer(pending) => vec![
                FrameBody::InterruptExpired {
                    interrupt_id: pending.id,
                    action: pending.action.clone(),
                    message: format!(
                        "This approval ({}) expired before your answer arrived, so nothing was done. Ask again if you still want it.",
                        pending.action
                    ),
                },
                complete(pending.checkpoint.usage, false),
            ],
            Self::HeldForHuman => vec![complete(Usage::default(), false)],
            Self::Cancelled(usage) => vec![complete(*usage, true)],
            Self::GivenUp { reset } => {
                let mut frames = Vec::with_capacity(2);
                if *reset {
                    frames.push(FrameBody::TurnReset);
                }
                frames.push(error_body(
                    ErrorCode::ProcessingFailed,
                    "We could not process this message. It has been set aside, and an operator can replay it.",
                ));
                frames
            }
        }
    }

    /// Queues the closing frames on `out`. The caller flushes them, with whatever else its
    /// bundle holds.
    pub(crate) async fn send(&self, out: &mut impl FrameSink) -> Result<(), TurnError> {
        for frame in self.frames() {
            out.send(frame).await?;
        }
        Ok(())
    }
}

/// Where the thread stands once a turn is over: what its row records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Settled {
    /// The approval the thread waits for.
    pub(super) pending_interrupt: Option<InterruptId>,
    pub(super) status: ThreadStatus,
    pub(super) outcome: TurnOutcome,
}

impl Settled {
    /// After a turn this worker ran: a turn that raised an approval waits for it; otherwise the
    /// thread waits for what the plan left pending (`pending_after`). An expired session ends
    /// the thread.
    pub(super) fn after_run(
        ended: &Outcome,
        expired: bool,
        pending_after: Option<InterruptId>,
    ) -> Self {
        let pending_interrupt = match ended {
            Outcome::Interrupted(id) => Some(*id),
            _ => pending_after,
        };
        let outcome = match ended {
            Outcome::Completed if expired => TurnOutcome::SessionExpired,
            outcome => outcome.turn_outcome(),
        };
        Self {
            pending_interrupt,
            status: status(expired, pending_interrupt),
            outcome,
        }
    }

    /// After a turn an earlier attempt published in full, read from its last frame (`end`):
    /// an `interrupt` raised an approval, a cancelled `message_complete` was a cancel, a
    /// `session_expired` error an expired session; `clarification` says the published frames
    /// asked the customer a question.
    pub(super) fn from_published(
        end: &LastFrame,
        pending_after: Option<InterruptId>,
        clarification: bool,
    ) -> Self {
        let raised = end
            .interrupt_id
            .as_deref()
            .filter(|_| end.kind == "interrupt")
            .and_then(|id| id.parse::<InterruptId>().ok());
        let pending_interrupt = raised.or(pending_after);
        let expired = end.code.as_deref() == Some(ErrorCode::SessionExpired.as_str());
        let status = status(expired, pending_interrupt);
        let outcome = if raised.is_some() {
            TurnOutcome::Interrupted
        } else if end.cancelled {
            TurnOutcome::Cancelled
        } else if status == ThreadStatus::Expired {
            TurnOutcome::SessionExpired
        } else if clarification {
            TurnOutcome::Clarification
        } else {
            TurnOutcome::Completed
        };
        Self {
            pending_interrupt,
            status,
            outcome,
        }
    }
}

fn status(expired: bool, pending_interrupt: Option<InterruptId>) -> ThreadStatus {
    if expired {
        ThreadStatus::Expired
    } else if pending_interrupt.is_some() {
        ThreadStatus::AwaitingApproval
    } else {
        ThreadStatus::Resolved
    }
}

/// The usage of a turn's segment: the turn's total (`message_complete` says it) less what the
/// turn had used before the segment (an answer continues a paused turn).
pub(super) fn segment_usage(total: Usage, before: Usage) -> Usage {
    Usage {
        prompt_tokens: total.prompt_tokens.saturating_sub(before.prompt_tokens),
        completion_tokens: total
            .completion_tokens
            .saturating_sub(before.completion_tokens),
        cost_usd: (total.cost_usd - before.cost_usd).max(0.0),
    }
}

fn complete(usage: Usage, cancelled: bool) -> FrameBody {
    FrameBody::MessageComplete { usage, cancelled }
}

fn error_body(code: ErrorCode, message: &str) -> FrameBody {
    FrameBody::Error {
        code,
        message: message.into(),
        retryable: code.retryable(),
    }
}
