//! Humans in the conversation (SPEC §7), on the worker's side: the handoff messages a thread's
//! stream carries (`request_human`, an operator's join / leave / resolve, an operator's message)
//! run as turns of their own, under the thread's lease and in stream order with the customer's
//! messages, so they get `seq`, exactly-once and resume like every other frame.
//!
//! Such a turn publishes at most one frame (`handoff` or `human_message`), preceded, when the
//! state moves to `waiting` or `human` while an approval is pending, by the `message_complete`
//! that ends the withdrawn paused turn (one bundle). An attempt that published them and died
//! before committing is recognised by the thread's last stored frame (its `turn_id` is the
//! message's, or the paused turn's end) and committed without publishing again: delivered once.
//!
//! Who may do what is checked by the edge when it accepts the message (the operator's token, the
//! assignment of the conversation); the worker applies the messages in order.

use shared::ids::TurnId;
use shared::protocol::bus::{InboundKind, InboundMessage, OperatorId};
use shared::protocol::{FrameBody, HandoffState, OperatorRef, Usage};
use shared::timeline::{ApprovalDecision, OperatorChange, TimelineEvent};
use shared::turns::{InterruptStatus, TurnKind, TurnOutcome};

use crate::error::TurnError;
use crate::publish::{self, FramePublisher};
use crate::records::{
    Advanced, AfterCommit, Commit, Committed, Ended, HandoffRecord, Lease, Outcome,
};
use crate::turn::{approval_open_to, Closing, TurnRunner};

/// Whether the message is a handoff message rather than a customer turn.
pub(crate) fn is_control(kind: &InboundKind) -> bool {
    matches!(
        kind,
        InboundKind::RequestHuman
            | InboundKind::OperatorJoin { .. }
            | InboundKind::OperatorLeave { .. }
            | InboundKind::OperatorResolve { .. }
            | InboundKind::HumanMessage { .. }
    )
}

/// A customer message while a human is asked for or has joined: it was shown (`user_message`)
/// and is stored; no model is called.
pub(crate) async fn held_for_human(
    out: &mut FramePublisher,
    state: HandoffState,
) -> Result<Ended, TurnError> {
    Closing::HeldForHuman.send(out).await?;
    Ok(Ended {
        outcome: Outcome::Completed,
        reply: String::new(),
        usage: Usage::default(),
        agents: Vec::new(),
        events: vec![TimelineEvent::HeldForHuman {
            state,
            at: chrono::Utc::now(),
        }],
        shares: Vec::new(),
        escalated: false,
    })
}

/// What a handoff message does to the thread.
struct Control {
    /// The handoff state after it.
    next: HandoffState,
    /// The frame every socket of the thread gets (none when nothing changes).
    frame: Option<FrameBody>,
    /// The thread is resolved.
    resolved: bool,
    /// `turns.outcome` of its row.
    outcome: TurnOutcome,
    /// Its timeline event.
    event: TimelineEvent,
}

/// An operator's join, leave or resolve, for [`TimelineEvent::OperatorJoin`] and the like.
fn operator_change(operator: &OperatorId, from: HandoffState, to: HandoffState) -> OperatorChange {
    OperatorChange {
        operator_id: operator.id,
        operator_name: operator.name.clone(),
        from,
        to,
        at: chrono::Utc::now(),
    }
}

fn handoff_frame(state: HandoffState, operator: Option<&OperatorId>, resolved: bool) -> FrameBody {
    FrameBody::Handoff {
        state,
        operator: operator.map(|operator| OperatorRef {
            name: operator.name.clone(),
        }),
        resolved,
    }
}

fn control(current: HandoffState, message: &InboundMessage) -> Control {
    match &message.kind {
        InboundKind::RequestHuman => {
            let next = if current == HandoffState::Ai {
                HandoffState::Waiting
            } else {
                current
            };
            Control {
                next,
                frame: (next != current).then(|| handoff_frame(next, None, false)),
                resolved: false,
                outcome: TurnOutcome::Handoff,
                event: TimelineEvent::RequestHuman {
                    by: "customer".into(),
                    from: current,
                    to: next,
                    at: chrono::Utc::now(),
                },
            }
        }
        InboundKind::OperatorJoin { operator } => Control {
            next: HandoffState::Human,
            frame: Some(handoff_frame(HandoffState::Human, Some(operator), false)),
            resolved: false,
            outcome: TurnOutcome::Handoff,
            event: TimelineEvent::OperatorJoin(operator_change(
                operator,
                current,
                HandoffState::Human,
            )),
        },
        InboundKind::OperatorLeave { operator } => Control {
            next: HandoffState::Ai,
            frame: (current != HandoffState::Ai)
                .then(|| handoff_frame(HandoffState::Ai, None, false)),
            resolved: false,
            outcome: TurnOutcome::Handoff,
            event: TimelineEvent::OperatorLeave(operator_change(
                operator,
                current,
                HandoffState::Ai,
            )),
        },
        InboundKind::OperatorResolve { operator } => Control {
            next: HandoffState::Ai,
            // Always sent: the customer's page offers the CSAT prompt on it.
            frame: Some(handoff_frame(HandoffState::Ai, None, true)),
            resolved: true,
            outcome: TurnOutcome::Handoff,
            event: TimelineEvent::OperatorResolve(operator_change(
                operator,
                current,
                HandoffState::Ai,
            )),
        },
        InboundKind::HumanMessage { operator, content } => Control {
            next: current,
            frame: Some(FrameBody::HumanMessage {
                operator: OperatorRef {
                    name: operator.name.clone(),
                },
                message_id: message.message_id.clone(),
                content: content.as_str().to_owned(),
            }),
            resolved: false,
            outcome: TurnOutcome::Delivered,
            event: TimelineEvent::HumanMessage {
                operator_id: operator.id,
                operator_name: operator.name.clone(),
                message_id: message.message_id.clone(),
                at: chrono::Utc::now(),
            },
        },
        // Not handoff messages: nothing changes (never reached: see `is_control`).
        InboundKind::Message { .. }
        | InboundKind::InterruptResponse { .. }
        | InboundKind::Cancel { .. } => Control {
            next: current,
            frame: None,
            resolved: false,
            outcome: TurnOutcome::Handoff,
            event: TimelineEvent::Ignored {
                at: chrono::Utc::now(),
            },
        },
    }
}

impl TurnRunner {
    /// Runs and commits one handoff message (see the module's doc).
    pub(crate) async fn run_control(
        &self,
        lease: &Lease,
        message: InboundMessage,
        in_seq: u64,
        tail: &publish::Tail,
        after: AfterCommit,
        started_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Advanced, TurnError> {
        let control = control(lease.handoff, &message);
        // While a human is asked for or in charge the AI does not answer (SPEC §7): the approval
        // the thread waits for is withdrawn as a `cancel` withdraws it, and its turn ends.
        let withdrawn = lease
            .pending_interrupt
            .filter(|_| control.next != HandoffState::Ai);
        let paused = match withdrawn {
            Some(id) => self.store.load_interrupt(id).await?.filter(|pending| {
                // One decided by another message (given up on) has nothing left to end.
                approval_open_to(pending, in_seq)
            }),
            None => None,
        };
        let mut events = Vec::with_capacity(2);
        if let Some(pending) = &paused {
            self.store
                .decide_interrupt(pending.id, InterruptStatus::Cancelled, in_seq)
                .await?;
            self.metrics
                .interrupts
                .with_label_values(&["cancelled"])
                .inc();
            events.push(TimelineEvent::Cancelled {
                interrupt_id: Some(pending.id),
                decision: Some(ApprovalDecision::Withdrawn),
                by: Some(message.kind.as_str().to_owned()),
                note: None,
                at: chrono::Utc::now(),
            });
        }
        events.push(control.event);
        let paused_turn = paused.as_ref().map(|pending| TurnId::from(pending.turn_id));
        let earlier = tail
            .frame
            .as_ref()
            .filter(|frame| frame.seq > lease.last_seq);
        let (first_seq, last_seq, subject_seq) = match earlier {
            // An earlier attempt published this message's frames (one bundle, whose last frame
            // is its own, or the paused turn's end when it has none): not sent twice.
            Some(end)
                if end.turn_id == message.turn_id
                    || (Some(end.turn_id) == paused_turn && end.ends_turn()) =>
            {
                (end.seq, end.seq, tail.stream_seq)
            }
            earlier if control.frame.is_none() && paused.is_none() => {
                let last = earlier.map_or(lease.last_seq, |end| end.seq);
                (last, last, tail.stream_seq)
            }
            earlier => {
                let mut out = self.publisher(lease, message.turn_id, tail);
                if earlier.is_some() {
                    out.send(FrameBody::TurnReset).await?;
                }
                if let Some(pending) = &paused {
                    // The paused turn ends as a cancelled one does.
                    out.set_turn(TurnId::from(pending.turn_id));
                    Closing::Cancelled(pending.checkpoint.usage)
                        .send(&mut out)
                        .await?;
                    out.set_turn(message.turn_id);
                }
                if let Some(frame) = control.frame.clone() {
                    out.send(frame).await?;
                }
                out.flush().await?;
                (out.last_seq(), out.last_seq(), out.subject_seq())
            }
        };
        let record = HandoffRecord {
            in_seq,
            turn_id: message.turn_id.as_uuid(),
            message_id: message.message_id.to_string(),
            kind: TurnKind::from(&message.kind),
            content: message.kind.content().map(str::to_owned),
            first_seq,
            last_seq,
            received_at: message.received_at,
            started_at,
            next: control.next,
            resolved: control.resolved,
            outcome: control.outcome,
            events: events.iter().map(TimelineEvent::to_json).collect(),
            withdrawn,
        };
        if self.store.commit_handoff(lease, &record, after).await? == Committed::Fenced {
            return Err(TurnError::LeaseLost);
        }
        tracing::info!(thread_id = %lease.thread_id, turn_id = %message.turn_id, in_seq,
            kind = message.kind.as_str(), state = control.next.as_str(), "Handoff message committed.");
        self.metrics
            .turns
            .with_label_values(&[control.outcome.as_str()])
            .inc();
        Ok(Advanced::after(
            lease,
            Commit::Handoff(&record),
            subject_seq,
        ))
    }
}
