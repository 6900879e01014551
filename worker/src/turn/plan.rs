//! What a stored message asks of its thread, decided before anything of the turn runs: given
//! the session and the approval the thread may be waiting for, a message starts a turn, an
//! answer resumes (or comes too late for) the paused one, or there is nothing to answer.

use std::future::Future;

use chrono::{DateTime, Utc};
use shared::ids::TurnId;
use shared::protocol::bus::{InboundKind, InboundMessage};
use shared::protocol::Usage;
use shared::turns::{InterruptId, InterruptStatus};

use crate::error::TurnError;
use crate::records::{Decision, Lease, PendingInterrupt};
use crate::store::Store;
use crate::turn::TurnRunner;

impl TurnRunner {
    /// What a message asks of the thread, given the approval it may be waiting for.
    pub(super) async fn plan(
        &self,
        lease: &Lease,
        message: &InboundMessage,
        in_seq: u64,
    ) -> Result<Plan, TurnError> {
        let expired = self.store.session_expired(lease, message.received_at);
        plan(&self.store, expired, lease, message, in_seq).await
    }
}

/// What a plan reads about the approval the thread waits for: the store, or a test's records.
pub(super) trait Approvals: Sync {
    /// When the approval was raised (`None`: there is no such approval).
    fn raised_at(
        &self,
        id: InterruptId,
    ) -> impl Future<Output = Result<Option<DateTime<Utc>>, TurnError>> + Send;

    /// The approval, with its checkpoint.
    fn load(
        &self,
        id: InterruptId,
    ) -> impl Future<Output = Result<Option<PendingInterrupt>, TurnError>> + Send;
}

impl Approvals for Store {
    async fn raised_at(&self, id: InterruptId) -> Result<Option<DateTime<Utc>>, TurnError> {
        self.interrupt_raised_at(id).await
    }

    async fn load(&self, id: InterruptId) -> Result<Option<PendingInterrupt>, TurnError> {
        self.load_interrupt(id).await
    }
}

/// What a message asks of the thread (`expired`: the session expired before it arrived), given
/// the approval the thread may be waiting for.
pub(super) async fn plan(
    approvals: &impl Approvals,
    expired: bool,
    lease: &Lease,
    message: &InboundMessage,
    in_seq: u64,
) -> Result<Plan, TurnError> {
    if expired {
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
                    let raised = approvals.raised_at(id).await?;
                    if raised.is_none_or(|raised| message.received_at <= raised) {
                        return Ok(Plan::NoPendingInterrupt);
                    }
                }
            }
            let Some(pending) = approvals.load(id).await? else {
                return Ok(Plan::NoPendingInterrupt);
            };
            // Decided already (by a message given up on, say): only that message, retried,
            // may go on with it.
            if !approval_open_to(&pending, in_seq) {
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

/// Whether the message stored at `in_seq` may still decide an approval: it is pending, or this
/// message decided it in an earlier attempt that did not commit.
pub(crate) fn approval_open_to(pending: &PendingInterrupt, in_seq: u64) -> bool {
    pending.status == InterruptStatus::Pending || pending.decided_in_seq == Some(in_seq)
}

/// What the turn of a message will do.
#[derive(Debug)]
pub(super) enum Plan {
    SessionExpired,
    Message {
        content: shared::protocol::frames::UserText,
        /// The approval this message withdraws.
        supersedes: Option<InterruptId>,
    },
    NoPendingInterrupt,
    /// An answer after the approval expired.
    LateAnswer(Box<PendingInterrupt>),
    Resume(Box<PendingInterrupt>, Decision),
}

impl Plan {
    /// The turn the frames belong to: an answer to an approval continues the paused turn.
    pub(super) fn turn_id(&self, own: TurnId) -> TurnId {
        match self {
            Self::LateAnswer(pending) | Self::Resume(pending, _) => TurnId::from(pending.turn_id),
            _ => own,
        }
    }

    /// The plan runs agents, which a cancel can stop.
    pub(super) fn cancellable(&self) -> bool {
        matches!(self, Self::Message { .. } | Self::Resume(..))
    }

    /// Usage of the turn before this segment (an answer continues a paused turn).
    pub(super) fn usage_before(&self) -> Usage {
        match self {
            Self::LateAnswer(pending) | Self::Resume(pending, _) => pending.checkpoint.usage,
            _ => Usage::default(),
        }
    }

    /// What the plan decides about an approval before anything of the turn runs: an answer
    /// approves or rejects it, a late answer finds it expired, a new message withdraws it.
    pub(super) fn decides(&self) -> Option<(InterruptId, InterruptStatus)> {
        match self {
            Self::Message {
                supersedes: Some(id),
                ..
            } => Some((*id, InterruptStatus::Superseded)),
            Self::LateAnswer(pending) => Some((pending.id, InterruptStatus::Expired)),
            Self::Resume(pending, Decision::Approved) => {
                Some((pending.id, InterruptStatus::Approved))
            }
            Self::Resume(pending, Decision::Rejected) => {
                Some((pending.id, InterruptStatus::Rejected))
            }
            Self::Message { .. } | Self::SessionExpired | Self::NoPendingInterrupt => None,
        }
    }

    /// What the plan decides about an approval when its turn was cancelled before it ran: a new
    /// message still withdraws the approval it supersedes; an answer's approval is cancelled.
    pub(super) fn decides_when_cancelled(&self) -> Option<(InterruptId, InterruptStatus)> {
        match self {
            Self::Resume(pending, _) => Some((pending.id, InterruptStatus::Cancelled)),
            _ => self.decides(),
        }
    }

    /// The approval the thread waits for after this turn, unless the turn raises a new one.
    pub(super) fn pending_after(&self, lease: &Lease) -> Option<InterruptId> {
        match self {
            Self::SessionExpired | Self::NoPendingInterrupt => lease.pending_interrupt,
            Self::Message { .. } | Self::LateAnswer(_) | Self::Resume(..) => None,
        }
    }
}
