//! Plain records of a turn's life, shared by the turn, the agent graph and the store: where a
//! thread stands under its lease, how a turn or segment ended, a paused turn's checkpoint and
//! approval, and the rows a commit writes. No behaviour beyond small conversions; no I/O.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::ids::ThreadId;
use shared::protocol::{HandoffState, Usage};
use shared::timeline::TimelineEvent;
use shared::turns::{InterruptId, InterruptStatus, TurnKind, TurnOutcome};
use uuid::Uuid;

use crate::llm::{ChatMessage, ToolCall};

/// This worker's hold on a thread. Only the holder of the current epoch can commit a turn.
#[derive(Debug, Clone)]
pub struct Lease {
    pub thread_id: ThreadId,
    pub epoch: i64,
    /// Stream sequence of the last client message whose turn committed.
    pub last_in_seq: u64,
    /// The last reply frame `seq` committed for the thread.
    pub last_seq: u64,
    /// The thread's status is `expired`.
    pub expired: bool,
    /// The thread's last activity (its last committed turn, or its creation).
    pub last_active_at: chrono::DateTime<chrono::Utc>,
    /// The approval the thread's last turn is waiting for.
    pub pending_interrupt: Option<InterruptId>,
    /// Who answers the thread's customer messages (SPEC §7).
    pub handoff: HandoffState,
    /// The thread's history as the acquire read it, in the same statement (the first turn under
    /// a lease need not ask again); `None` when it was not read or may be stale.
    pub history: Option<PrefetchedHistory>,
}

/// History read together with the lease: what the agents see, valid while the thread's
/// `last_in_seq` is still `after_in_seq`.
#[derive(Debug, Clone)]
pub struct PrefetchedHistory {
    pub after_in_seq: u64,
    pub messages: Vec<ChatMessage>,
}

#[derive(Debug, Clone)]
pub struct TurnRecord {
    pub in_seq: u64,
    pub turn_id: Uuid,
    pub message_id: String,
    pub kind: TurnKind,
    pub content: Option<String>,
    pub reply: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// The thread's status after this turn.
    pub status: ThreadStatus,
    /// How the turn ended.
    pub outcome: TurnOutcome,
    /// The approval the thread waits for after this turn.
    pub pending_interrupt: Option<InterruptId>,
    pub agents: Vec<String>,
    /// The turn's timeline events, as `turns.events` stores them ([`TimelineEvent::to_stored`]).
    pub events: serde_json::Value,
    /// Each agent's share of the turn, in order.
    pub shares: Vec<AgentShare>,
    /// A tool handed the conversation to a human.
    pub escalated: bool,
}

/// Where a conversation stands after a turn: a turn sets `resolved`, `awaiting_approval` or
/// `expired` (the commit keeps `escalated` once a turn handed the conversation to a human, unless
/// it waits for an approval or expired); `open` is a new thread's, `failed` a dead letter's.
pub use shared::turns::ThreadStatus;

/// A handoff message (SPEC §7), written once with the thread's new position and handoff state.
#[derive(Debug, Clone)]
pub struct HandoffRecord {
    pub in_seq: u64,
    pub turn_id: Uuid,
    pub message_id: String,
    pub kind: TurnKind,
    pub content: Option<String>,
    pub first_seq: u64,
    pub last_seq: u64,
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// The handoff state after it.
    pub next: HandoffState,
    /// The conversation is resolved.
    pub resolved: bool,
    /// `turns.outcome` of its row.
    pub outcome: TurnOutcome,
    /// Its timeline events, as `turns.events` stores them (each [`TimelineEvent::to_json`]).
    pub events: Vec<Value>,
    /// The approval it withdrew (a human was asked for or joined while it was pending): the
    /// thread no longer waits for it.
    pub withdrawn: Option<InterruptId>,
}

/// A message given up on, with what its last attempt published.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub in_seq: u64,
    pub kind: TurnKind,
    pub message_id: String,
    pub turn_id: Uuid,
    pub attempts: u32,
    pub reason: String,
    pub content: Option<String>,
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Whether the commit hands the lease back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterCommit {
    KeepLease,
    ReleaseLease,
}

/// Outcome of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    Yes,
    /// Another worker took the lease (a newer epoch): nothing was written.
    Fenced,
}

/// Where a turn continues from: written with an `interrupt`, read back by its answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The user's message that started the turn.
    pub user_message: String,
    /// Earlier turns of the thread, as the agents see them.
    pub history: Vec<ChatMessage>,
    /// Agents still to run, the current one first.
    pub agents: Vec<String>,
    /// The current agent's conversation (empty: it has not started).
    pub messages: Vec<ChatMessage>,
    /// Calls of the current agent's last answer not run yet; the first is the one waiting for
    /// approval.
    pub pending_calls: Vec<ToolCall>,
    /// Model calls the current agent has made.
    pub steps: u32,
    /// Usage of the turn before this point.
    pub usage: Usage,
    /// Agents that ran so far, in order.
    pub agents_run: Vec<String>,
}

/// How a segment of a turn ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `message_complete` was sent.
    Completed,
    /// `clarification` then `message_complete` were sent.
    Clarification,
    /// `interrupt` was sent: the turn is paused on this approval.
    Interrupted(InterruptId),
    /// The turn was stopped by a cancel; `message_complete` with `cancelled: true` was sent.
    Cancelled,
}

impl Outcome {
    /// The turn's stored outcome.
    pub fn turn_outcome(&self) -> TurnOutcome {
        match self {
            Self::Completed => TurnOutcome::Completed,
            Self::Clarification => TurnOutcome::Clarification,
            Self::Interrupted(_) => TurnOutcome::Interrupted,
            Self::Cancelled => TurnOutcome::Cancelled,
        }
    }
}

/// What a segment did, for the turn's record.
#[derive(Debug, Clone)]
pub struct Ended {
    pub outcome: Outcome,
    /// The agents' text.
    pub reply: String,
    /// Usage of this segment's model calls (the turn's total is on `message_complete`).
    pub usage: Usage,
    pub agents: Vec<String>,
    /// Classification, tool calls and results, interrupts, decisions, resets: the timeline.
    pub events: Vec<TimelineEvent>,
    /// Each agent's share of this segment.
    pub shares: Vec<AgentShare>,
    /// The conversation was handed to a human.
    pub escalated: bool,
}

/// The approval a turn waits for, as stored.
#[derive(Debug, Clone)]
pub struct PendingInterrupt {
    pub id: InterruptId,
    pub turn_id: Uuid,
    pub agent: String,
    pub action: String,
    pub params: Value,
    pub checkpoint: Checkpoint,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// `pending`, or what decided it.
    pub status: InterruptStatus,
    /// Stream sequence of the message that decided it.
    pub decided_in_seq: Option<u64>,
}

/// One agent's share of a segment.
#[derive(Debug, Clone, Default)]
pub struct AgentShare {
    pub agent: String,
    pub usage: Usage,
    pub tool_calls: u32,
    pub duration: Duration,
    /// The agent's text.
    pub reply: String,
}

/// What the user decided about a pending approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approved,
    Rejected,
}

/// What a commit wrote for the message at hand, for [`Advanced::after`].
#[derive(Debug, Clone, Copy)]
pub enum Commit<'a> {
    /// The thread moved past the message and nothing else changed (it did not decode, or a
    /// cancel found nothing to withdraw).
    Skipped,
    /// A turn's row.
    Turn(&'a TurnRecord),
    /// A dead letter; the thread then waits for `pending_interrupt`.
    DeadLetter {
        letter: &'a DeadLetter,
        pending_interrupt: Option<InterruptId>,
    },
    /// A handoff message's row.
    Handoff(&'a HandoffRecord),
}

/// Where a committed message left the thread: the lease follows it for the next message of
/// the same drain.
#[derive(Debug, Clone, PartialEq)]
pub struct Advanced {
    /// The thread's last `seq`.
    pub last_seq: u64,
    /// Stream sequence of the reply subject's last bundle.
    pub subject_seq: Option<u64>,
    /// The approval the thread now waits for.
    pub pending_interrupt: Option<InterruptId>,
    /// The session expired with this turn.
    pub expired: bool,
    /// The thread's handoff state after this turn.
    pub handoff: HandoffState,
}

impl Advanced {
    /// Where `commit` left the thread held by `lease`, whose reply subject's last bundle is now
    /// at `subject_seq`.
    pub fn after(lease: &Lease, commit: Commit<'_>, subject_seq: Option<u64>) -> Self {
        let unchanged = Self {
            last_seq: lease.last_seq,
            subject_seq,
            pending_interrupt: lease.pending_interrupt,
            expired: lease.expired,
            handoff: lease.handoff,
        };
        match commit {
            Commit::Skipped => unchanged,
            Commit::Turn(turn) => Self {
                last_seq: turn.last_seq,
                pending_interrupt: turn.pending_interrupt,
                expired: turn.status == ThreadStatus::Expired,
                // A tool that escalated asked for a human, as `request_human` does.
                handoff: if turn.escalated && lease.handoff == HandoffState::Ai {
                    HandoffState::Waiting
                } else {
                    lease.handoff
                },
                ..unchanged
            },
            Commit::DeadLetter {
                letter,
                pending_interrupt,
            } => Self {
                last_seq: letter.last_seq,
                pending_interrupt,
                expired: false,
                ..unchanged
            },
            Commit::Handoff(handoff) => Self {
                last_seq: handoff.last_seq.max(lease.last_seq),
                handoff: handoff.next,
                pending_interrupt: lease
                    .pending_interrupt
                    .filter(|&id| handoff.withdrawn != Some(id)),
                ..unchanged
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> Lease {
        Lease {
            thread_id: ThreadId::parse("t").unwrap(),
            epoch: 1,
            last_in_seq: 4,
            last_seq: 10,
            expired: false,
            last_active_at: chrono::Utc::now(),
            pending_interrupt: Some(InterruptId::from(Uuid::nil())),
            handoff: HandoffState::Ai,
            history: None,
        }
    }

    fn turn(status: ThreadStatus, escalated: bool) -> TurnRecord {
        TurnRecord {
            in_seq: 5,
            turn_id: Uuid::nil(),
            message_id: "m".into(),
            kind: TurnKind::Message,
            content: None,
            reply: String::new(),
            first_seq: 11,
            last_seq: 14,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_usd: 0.0,
            received_at: chrono::Utc::now(),
            started_at: chrono::Utc::now(),
            status,
            outcome: TurnOutcome::Completed,
            pending_interrupt: None,
            agents: Vec::new(),
            events: Value::Array(Vec::new()),
            shares: Vec::new(),
            escalated,
        }
    }

    #[test]
    fn a_skipped_message_leaves_the_thread_as_the_lease_says() {
        let lease = lease();
        let advanced = Advanced::after(&lease, Commit::Skipped, Some(7));
        assert_eq!(advanced.last_seq, 10);
        assert_eq!(advanced.subject_seq, Some(7));
        assert_eq!(
            advanced.pending_interrupt,
            Some(InterruptId::from(Uuid::nil()))
        );
        assert_eq!(advanced.handoff, HandoffState::Ai);
    }

    #[test]
    fn a_turn_moves_the_thread_and_an_escalation_asks_for_a_human() {
        let lease = lease();
        let resolved = turn(ThreadStatus::Resolved, false);
        let advanced = Advanced::after(&lease, Commit::Turn(&resolved), None);
        assert_eq!((advanced.last_seq, advanced.pending_interrupt), (14, None));
        assert!(!advanced.expired);
        assert_eq!(advanced.handoff, HandoffState::Ai);
        let escalated = turn(ThreadStatus::Resolved, true);
        let advanced = Advanced::after(&lease, Commit::Turn(&escalated), None);
        assert_eq!(advanced.handoff, HandoffState::Waiting);
        let expired = turn(ThreadStatus::Expired, false);
        assert!(Advanced::after(&lease, Commit::Turn(&expired), None).expired);
    }

    #[test]
    fn a_handoff_never_moves_last_seq_back() {
        let lease = lease();
        let handoff = HandoffRecord {
            in_seq: 5,
            turn_id: Uuid::nil(),
            message_id: "m".into(),
            kind: TurnKind::OperatorJoin,
            content: None,
            first_seq: 3,
            last_seq: 3,
            received_at: chrono::Utc::now(),
            started_at: chrono::Utc::now(),
            next: HandoffState::Human,
            resolved: false,
            outcome: TurnOutcome::Handoff,
            events: Vec::new(),
            withdrawn: None,
        };
        let commit = Commit::Handoff(&handoff);
        let advanced = Advanced::after(&lease, commit, None);
        assert_eq!(advanced.last_seq, 10);
        assert_eq!(advanced.handoff, HandoffState::Human);
        assert_eq!(
            advanced.pending_interrupt,
            Some(InterruptId::from(Uuid::nil()))
        );
        // One that withdrew the pending approval leaves nothing pending.
        let withdrew = HandoffRecord {
            withdrawn: Some(InterruptId::from(Uuid::nil())),
            ..handoff
        };
        let advanced = Advanced::after(&lease, Commit::Handoff(&withdrew), None);
        assert_eq!(advanced.pending_interrupt, None);
    }
}
