//! Humans in the conversation (SPEC §7), on the worker's side: the handoff messages a thread's
//! stream carries (`request_human`, an operator's join / leave / resolve, an operator's message)
//! run as turns of their own, under the thread's lease and in stream order with the customer's
//! messages, so they get `seq`, exactly-once and resume like every other frame.
//!
//! Such a turn publishes at most one frame (`handoff` or `human_message`). An attempt that
//! published it and died before committing is recognised by the thread's last stored frame (its
//! `turn_id` is the message's) and committed without publishing it again: delivered once.
//!
//! Who may do what is checked by the edge when it accepts the message (the operator's token, the
//! assignment of the conversation); the worker applies the messages in order.

use serde_json::json;
use shared::protocol::bus::{InboundKind, InboundMessage, OperatorId};
use shared::protocol::{FrameBody, HandoffState, OperatorRef, Usage};

use crate::error::TurnError;
use crate::publish::{self, FramePublisher};
use crate::records::{Advanced, AfterCommit, Commit, Ended, Lease, Outcome};
use crate::store::storable_json;
use crate::turn::TurnRunner;

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
    out.send(FrameBody::MessageComplete {
        usage: Usage::default(),
        cancelled: false,
    })
    .await?;
    Ok(Ended {
        outcome: Outcome::Completed,
        reply: String::new(),
        usage: Usage::default(),
        agents: Vec::new(),
        events: vec![json!({"type": "held_for_human", "state": state.as_str(),
                            "at": chrono::Utc::now()})],
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
    outcome: &'static str,
    /// Its timeline event.
    event: serde_json::Value,
}

fn operator_event(
    kind: &str,
    operator: &OperatorId,
    from: HandoffState,
    to: HandoffState,
) -> serde_json::Value {
    json!({"type": kind, "operator_id": operator.id, "operator_name": operator.name,
           "from": from.as_str(), "to": to.as_str(), "at": chrono::Utc::now()})
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
                outcome: "handoff",
                event: json!({"type": "request_human", "by": "customer", "from": current.as_str(),
                              "to": next.as_str(), "at": chrono::Utc::now()}),
            }
        }
        InboundKind::OperatorJoin { operator } => Control {
            next: HandoffState::Human,
            frame: Some(handoff_frame(HandoffState::Human, Some(operator), false)),
            resolved: false,
            outcome: "handoff",
            event: operator_event("operator_join", operator, current, HandoffState::Human),
        },
        InboundKind::OperatorLeave { operator } => Control {
            next: HandoffState::Ai,
            frame: (current != HandoffState::Ai)
                .then(|| handoff_frame(HandoffState::Ai, None, false)),
            resolved: false,
            outcome: "handoff",
            event: operator_event("operator_leave", operator, current, HandoffState::Ai),
        },
        InboundKind::OperatorResolve { operator } => Control {
            next: HandoffState::Ai,
            // Always sent: the customer's page offers the CSAT prompt on it.
            frame: Some(handoff_frame(HandoffState::Ai, None, true)),
            resolved: true,
            outcome: "handoff",
            event: operator_event("operator_resolve", operator, current, HandoffState::Ai),
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
            outcome: "delivered",
            event: json!({"type": "human_message", "operator_id": operator.id,
                          "operator_name": operator.name, "message_id": message.message_id,
                          "at": chrono::Utc::now()}),
        },
        // Not handoff messages: nothing changes (never reached: see `is_control`).
        InboundKind::Message { .. }
        | InboundKind::InterruptResponse { .. }
        | InboundKind::Cancel { .. } => Control {
            next: current,
            frame: None,
            resolved: false,
            outcome: "handoff",
            event: json!({"type": "ignored", "at": chrono::Utc::now()}),
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
        let earlier = tail
            .frame
            .as_ref()
            .filter(|frame| frame.seq > lease.last_seq);
        let (first_seq, last_seq, subject_seq) = match (earlier, control.frame.clone()) {
            // An earlier attempt published this message's frame: it is not sent twice.
            (Some(end), _) if end.turn_id == message.turn_id => (end.seq, end.seq, tail.stream_seq),
            (earlier, Some(frame)) => {
                let mut out = self.publisher(lease, message.turn_id, tail);
                if earlier.is_some() {
                    out.send(FrameBody::TurnReset).await?;
                }
                out.send(frame).await?;
                out.flush().await?;
                (out.last_seq(), out.last_seq(), out.subject_seq())
            }
            (earlier, None) => {
                let last = earlier.map_or(lease.last_seq, |end| end.seq);
                (last, last, tail.stream_seq)
            }
        };
        let committed = self
            .commit_control(
                lease, &message, in_seq, &control, first_seq, last_seq, after, started_at,
            )
            .await?;
        if !committed {
            return Err(TurnError::LeaseLost);
        }
        tracing::info!(thread_id = %lease.thread_id, turn_id = %message.turn_id, in_seq,
            kind = message.kind.as_str(), state = control.next.as_str(), "Handoff message committed.");
        self.metrics
            .turns
            .with_label_values(&[control.outcome])
            .inc();
        let commit = Commit::Handoff {
            last_seq,
            handoff: control.next,
        };
        Ok(Advanced::after(lease, commit, subject_seq))
    }

    /// Advances the thread past the message, applies its handoff state and records it on the
    /// timeline, in one statement, only if this lease is still the current one.
    #[allow(clippy::too_many_arguments)]
    async fn commit_control(
        &self,
        lease: &Lease,
        message: &InboundMessage,
        in_seq: u64,
        control: &Control,
        first_seq: u64,
        last_seq: u64,
        after: AfterCommit,
        started_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, TurnError> {
        let events = serde_json::Value::Array(vec![control.event.clone()]);
        let content = message
            .kind
            .content()
            .map(|text| text.replace('\0', "\u{FFFD}"));
        let committed: i64 = sqlx::query_scalar(
            "WITH advanced AS (
                UPDATE threads
                   SET last_in_seq = $3,
                       last_seq = GREATEST(last_seq, $4),
                       lease_owner = CASE WHEN $5 THEN NULL ELSE lease_owner END,
                       lease_expires_at = CASE WHEN $5 THEN NULL ELSE lease_expires_at END,
                       last_active_at = CASE WHEN status = 'expired' THEN last_active_at ELSE now() END,
                       handoff_state = $6,
                       waiting_since = CASE WHEN $6 = 'ai' THEN NULL
                                            WHEN handoff_state = 'ai' THEN $8
                                            ELSE COALESCE(waiting_since, $8) END,
                       first_waiting_at = CASE WHEN $6 <> 'ai' THEN COALESCE(first_waiting_at, $8)
                                               ELSE first_waiting_at END,
                       first_human_at = CASE WHEN $6 = 'human' THEN COALESCE(first_human_at, $8)
                                             ELSE first_human_at END,
                       time_to_human_ms = CASE
                           WHEN $6 = 'human' AND handoff_state = 'waiting' AND time_to_human_ms IS NULL
                                AND waiting_since IS NOT NULL
                           THEN GREATEST(0, (extract(epoch FROM ($8 - waiting_since)) * 1000)::bigint)
                           ELSE time_to_human_ms END,
                       escalated_at = CASE WHEN $6 <> 'ai' THEN COALESCE(escalated_at, $8)
                                           ELSE escalated_at END,
                       status = CASE WHEN status = 'expired' THEN status
                                     WHEN $9 THEN 'resolved'
                                     WHEN $6 <> 'ai' AND status NOT IN ('expired', 'awaiting_approval')
                                     THEN 'escalated'
                                     ELSE status END
                 WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $7 AND last_in_seq < $3
             RETURNING id
             ),
             turn AS (
                INSERT INTO turns (thread_id, in_seq, turn_id, message_id, kind, content, reply,
                                   first_seq, last_seq, received_at, started_at, outcome, events)
                SELECT id, $3, $10, $11, $12, $13, '', $14, $4, $8, $15, $16, $17 FROM advanced
             RETURNING 1
             )
             SELECT count(*) FROM turn",
        )
        .bind(lease.thread_id.as_str())
        .bind(lease.epoch)
        .bind(i64::try_from(in_seq).unwrap_or(i64::MAX))
        .bind(i64::try_from(last_seq).unwrap_or(i64::MAX))
        .bind(after == AfterCommit::ReleaseLease)
        .bind(control.next.as_str())
        .bind(self.store.worker_id())
        .bind(message.received_at)
        .bind(control.resolved)
        .bind(message.turn_id.as_uuid())
        .bind(message.message_id.as_str())
        .bind(message.kind.as_str())
        .bind(content)
        .bind(i64::try_from(first_seq).unwrap_or(i64::MAX))
        .bind(started_at)
        .bind(control.outcome)
        .bind(storable_json(&events).as_ref())
        .fetch_one(self.store.pool())
        .await?;
        Ok(committed == 1)
    }
}
