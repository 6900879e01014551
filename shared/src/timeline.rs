//! What a turn recorded for its timeline: [`TimelineEvent`], one JSON object per event, stored as
//! a JSON array in `turns.events` (written by the worker with the turn's commit) and shown, in
//! order, by the replay timeline (`GET /api/admin/conversations/{id}/timeline`, which adds each
//! event's `turn_id` and `in_seq`).
//!
//! The JSON of each variant is the one stored since these events were first written (built with
//! `json!` until this type existed): the `type` tag, the fields named as here, and `at` (the time
//! it happened) on the events that carried it. Rows written by older or newer versions still
//! read: [`TimelineEvent::from_stored`] keeps any event that is not exactly a shape known here
//! (an unknown `type`, a field this version does not know or does not expect) as
//! [`TimelineEvent::Unknown`], as it was stored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::MessageId;
use crate::protocol::{ErrorCode, HandoffState};
use crate::turns::InterruptId;

/// One event of a turn's timeline, as stored in `turns.events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TimelineEvent {
    /// The supervisor routed the message: `result` is the classifier's answer
    /// (`{"intents": [{"agent", "confidence"}], "ambiguous", "clarification"}`).
    Classification {
        #[cfg_attr(test, ts(type = "unknown"))]
        result: Value,
        #[cfg_attr(test, ts(type = "string"))]
        at: DateTime<Utc>,
    },
    /// The classifier kept failing or named no agent: the turn went to the default `agent`.
    ClassificationFailed {
        error: String,
        agent: String,
        #[cfg_attr(test, ts(type = "string"))]
        at: DateTime<Utc>,
    },
    /// The message was ambiguous: the turn asked this question instead of answering.
    Clarification { message: String },
    /// An agent's tool call (`args` as the model gave them, or as checked).
    ToolCall {
        agent: String,
        tool: String,
        #[cfg_attr(test, ts(type = "Record<string, unknown>"))]
        args: Value,
        #[cfg_attr(test, ts(type = "string"))]
        at: DateTime<Utc>,
    },
    /// A tool call's result, as the model was given it.
    ToolResult {
        agent: String,
        tool: String,
        ok: bool,
        #[cfg_attr(test, ts(type = "unknown"))]
        result: Value,
        #[cfg_attr(test, ts(type = "string"))]
        at: DateTime<Utc>,
    },
    /// An approved call had run already (its ledger row held the outcome): not run again.
    ToolAlreadyRan {
        #[cfg_attr(test, ts(type = "string"))]
        interrupt_id: InterruptId,
    },
    /// The turn paused on a call that needs the user's approval.
    Interrupt {
        #[cfg_attr(test, ts(type = "string"))]
        interrupt_id: InterruptId,
        agent: String,
        action: String,
        #[cfg_attr(test, ts(type = "Record<string, unknown>"))]
        params: Value,
        #[cfg_attr(test, ts(type = "string"))]
        expires_at: DateTime<Utc>,
        #[cfg_attr(test, ts(type = "string"))]
        at: DateTime<Utc>,
    },
    /// The user's answer to an approval (`approved`, `rejected`), or `expired` when it came late.
    Decision {
        #[cfg_attr(test, ts(type = "string"))]
        interrupt_id: InterruptId,
        decision: ApprovalDecision,
        #[cfg_attr(test, ts(type = "string"))]
        at: DateTime<Utc>,
    },
    /// A tool handed the conversation to a human.
    Escalation {
        agent: String,
        reason: String,
        #[cfg_attr(test, ts(type = "string"))]
        at: DateTime<Utc>,
    },
    /// An agent reached the step limit: the turn ended with an apology.
    StepLimit { agent: String },
    /// The model answered with nothing (retried).
    ModelEmpty {
        agent: String,
        finish_reason: String,
        #[cfg_attr(test, ts(type = "string"))]
        at: DateTime<Utc>,
    },
    /// A model call failed before any of its output went out (retried).
    ModelRetry {
        agent: String,
        error: String,
        #[cfg_attr(test, ts(type = "string"))]
        at: DateTime<Utc>,
    },
    /// A model call failed after its output went out: the segment restarted (`turn_reset`).
    TurnReset { error: String },
    /// One agent's part of the turn: its text, usage, tool calls and time.
    AgentReply {
        agent: String,
        content: String,
        prompt_tokens: u64,
        completion_tokens: u64,
        cost_usd: f64,
        tool_calls: u32,
        duration_ms: u64,
        #[cfg_attr(test, ts(type = "string"))]
        at: DateTime<Utc>,
    },
    /// The turn was cancelled. A running turn's has only `at`; a cancel (or a handoff message,
    /// named by `by`) that withdrew a pending approval adds `interrupt_id` and
    /// `decision: "withdrawn"`; a turn cancelled before it ran has a `note`.
    Cancelled {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(test, ts(type = "string", optional))]
        interrupt_id: Option<InterruptId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(test, ts(optional))]
        decision: Option<ApprovalDecision>,
        /// The handoff message that withdrew the approval (`request_human`, `operator_join`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(test, ts(optional))]
        by: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(test, ts(optional))]
        note: Option<String>,
        #[cfg_attr(test, ts(type = "string"))]
        at: DateTime<Utc>,
    },
    /// The turn ended with an error frame (`session_expired`, `no_pending_interrupt`).
    Error {
        code: ErrorCode,
        #[cfg_attr(test, ts(type = "string"))]
        at: DateTime<Utc>,
    },
    /// The turn was committed from the frames an earlier attempt had published.
    Recovered {
        note: String,
        #[cfg_attr(test, ts(type = "string"))]
        at: DateTime<Utc>,
    },
    /// A customer message while a human is asked for or has joined (`state`): no model called.
    HeldForHuman {
        state: HandoffState,
        #[cfg_attr(test, ts(type = "string"))]
        at: DateTime<Utc>,
    },
    /// The customer asked for a human (`by: "customer"`).
    RequestHuman {
        by: String,
        from: HandoffState,
        to: HandoffState,
        #[cfg_attr(test, ts(type = "string"))]
        at: DateTime<Utc>,
    },
    /// An operator joined the conversation.
    OperatorJoin(OperatorChange),
    /// An operator left it to the AI again.
    OperatorLeave(OperatorChange),
    /// An operator resolved the conversation.
    OperatorResolve(OperatorChange),
    /// An operator's message to the customer.
    HumanMessage {
        #[cfg_attr(test, ts(type = "string"))]
        operator_id: uuid::Uuid,
        operator_name: String,
        message_id: MessageId,
        #[cfg_attr(test, ts(type = "string"))]
        at: DateTime<Utc>,
    },
    /// A message that changes nothing (not a handoff message, where one was expected).
    Ignored {
        #[cfg_attr(test, ts(type = "string"))]
        at: DateTime<Utc>,
    },
    /// Anything else, kept as stored: a kind or a shape this version does not know.
    #[serde(untagged)]
    #[cfg_attr(test, ts(skip))]
    Unknown(Value),
}

/// What became of an approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum ApprovalDecision {
    Approved,
    Rejected,
    /// The answer came after the approval expired: nothing ran.
    Expired,
    /// A cancel or a handoff message withdrew it: nothing ran.
    Withdrawn,
}

impl ApprovalDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Withdrawn => "withdrawn",
        }
    }
}

/// An operator's join, leave or resolve: who, and the handoff state before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
pub struct OperatorChange {
    #[cfg_attr(test, ts(type = "string"))]
    pub operator_id: uuid::Uuid,
    pub operator_name: String,
    pub from: HandoffState,
    pub to: HandoffState,
    #[cfg_attr(test, ts(type = "string"))]
    pub at: DateTime<Utc>,
}

impl TimelineEvent {
    /// An event read back from `turns.events`: typed when the stored JSON is exactly the JSON
    /// of a known variant (it reads and writes back unchanged), otherwise [`Self::Unknown`] with
    /// the JSON as stored, so that nothing stored is lost or altered when it is shown again.
    pub fn from_stored(stored: Value) -> Self {
        match serde_json::from_value::<Self>(stored.clone()) {
            Ok(Self::Unknown(_)) | Err(_) => Self::Unknown(stored),
            Ok(event) if event.to_json() == stored => event,
            Ok(_) => Self::Unknown(stored),
        }
    }

    /// The events of a stored `turns.events` value; anything but an array holds none.
    pub fn all_from_stored(stored: Value) -> Vec<Self> {
        match stored {
            Value::Array(events) => events.into_iter().map(Self::from_stored).collect(),
            _ => Vec::new(),
        }
    }

    /// The event's JSON, as stored.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Unknown(stored) => stored.clone(),
            // Every field is a string, number, bool, timestamp or JSON value: this cannot fail.
            event => serde_json::to_value(event).unwrap_or(Value::Null),
        }
    }

    /// The JSON array of a turn's events, as `turns.events` stores it.
    pub fn to_stored(events: &[Self]) -> Value {
        Value::Array(events.iter().map(Self::to_json).collect())
    }

    /// The `type` of the event (`None` for an unknown one without a string `type`).
    pub fn kind(&self) -> Option<&str> {
        let kind = match self {
            Self::Classification { .. } => "classification",
            Self::ClassificationFailed { .. } => "classification_failed",
            Self::Clarification { .. } => "clarification",
            Self::ToolCall { .. } => "tool_call",
            Self::ToolResult { .. } => "tool_result",
            Self::ToolAlreadyRan { .. } => "tool_already_ran",
            Self::Interrupt { .. } => "interrupt",
            Self::Decision { .. } => "decision",
            Self::Escalation { .. } => "escalation",
            Self::StepLimit { .. } => "step_limit",
            Self::ModelEmpty { .. } => "model_empty",
            Self::ModelRetry { .. } => "model_retry",
            Self::TurnReset { .. } => "turn_reset",
            Self::AgentReply { .. } => "agent_reply",
            Self::Cancelled { .. } => "cancelled",
            Self::Error { .. } => "error",
            Self::Recovered { .. } => "recovered",
            Self::HeldForHuman { .. } => "held_for_human",
            Self::RequestHuman { .. } => "request_human",
            Self::OperatorJoin { .. } => "operator_join",
            Self::OperatorLeave { .. } => "operator_leave",
            Self::OperatorResolve { .. } => "operator_resolve",
            Self::HumanMessage { .. } => "human_message",
            Self::Ignored { .. } => "ignored",
            Self::Unknown(stored) => return stored.get("type").and_then(Value::as_str),
        };
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const AT: &str = "2026-11-24T10:00:00.123456789Z";
    const ID: &str = "0b3f5a4e-8a0b-4c1e-9f7e-2d6c1a9b7e10";
    const OPERATOR: &str = "7d1c2b3a-4e5f-4a6b-8c9d-0e1f2a3b4c5d";

    /// One sample of every kind, as the worker stores it today (and did before this type).
    fn samples() -> Vec<(&'static str, Value)> {
        vec![
            (
                "classification",
                json!({"type": "classification", "at": AT,
                "result": {"intents": [{"agent": "orders", "confidence": 0.9}],
                           "ambiguous": false, "clarification": null}}),
            ),
            (
                "classification_failed",
                json!({"type": "classification_failed",
                "error": "the model failed", "agent": "general", "at": AT}),
            ),
            (
                "clarification",
                json!({"type": "clarification", "message": "Which order?"}),
            ),
            (
                "tool_call",
                json!({"type": "tool_call", "agent": "orders", "tool": "lookup_order",
                "args": {"order_id": 1003}, "at": AT}),
            ),
            (
                "tool_result",
                json!({"type": "tool_result", "agent": "orders",
                "tool": "lookup_order", "ok": true, "result": {"status": "shipped"}, "at": AT}),
            ),
            (
                "tool_already_ran",
                json!({"type": "tool_already_ran", "interrupt_id": ID}),
            ),
            (
                "interrupt",
                json!({"type": "interrupt", "interrupt_id": ID, "agent": "billing",
                "action": "issue_refund", "params": {"order_id": 1003, "amount": 5.5},
                "expires_at": "2026-11-24T10:15:00Z", "at": AT}),
            ),
            (
                "decision",
                json!({"type": "decision", "interrupt_id": ID, "decision": "approved",
                "at": AT}),
            ),
            (
                "decision",
                json!({"type": "decision", "interrupt_id": ID, "decision": "rejected",
                "at": AT}),
            ),
            (
                "decision",
                json!({"type": "decision", "interrupt_id": ID, "decision": "expired",
                "at": AT}),
            ),
            (
                "escalation",
                json!({"type": "escalation", "agent": "general",
                "reason": "wants a person", "at": AT}),
            ),
            (
                "step_limit",
                json!({"type": "step_limit", "agent": "orders"}),
            ),
            (
                "model_empty",
                json!({"type": "model_empty", "agent": "orders",
                "finish_reason": "length", "at": AT}),
            ),
            (
                "model_retry",
                json!({"type": "model_retry", "agent": "orders",
                "error": "the model server is unavailable: 503", "at": AT}),
            ),
            (
                "turn_reset",
                json!({"type": "turn_reset", "error": "the stream broke"}),
            ),
            (
                "agent_reply",
                json!({"type": "agent_reply", "agent": "orders",
                "content": "It shipped.", "prompt_tokens": 120, "completion_tokens": 8,
                "cost_usd": 0.000342, "tool_calls": 1, "duration_ms": 812, "at": AT}),
            ),
            ("cancelled", json!({"type": "cancelled", "at": AT})),
            (
                "cancelled",
                json!({"type": "cancelled", "interrupt_id": ID,
                "decision": "withdrawn", "at": AT}),
            ),
            (
                "cancelled",
                json!({"type": "cancelled", "interrupt_id": ID,
                "decision": "withdrawn", "by": "operator_join", "at": AT}),
            ),
            (
                "cancelled",
                json!({"type": "cancelled", "at": AT,
                "note": "cancelled before this attempt ran"}),
            ),
            (
                "error",
                json!({"type": "error", "code": "session_expired", "at": AT}),
            ),
            (
                "error",
                json!({"type": "error", "code": "no_pending_interrupt", "at": AT}),
            ),
            (
                "recovered",
                json!({"type": "recovered", "at": AT,
                "note": "committed from the frames an earlier attempt published"}),
            ),
            (
                "held_for_human",
                json!({"type": "held_for_human", "state": "waiting", "at": AT}),
            ),
            (
                "request_human",
                json!({"type": "request_human", "by": "customer", "from": "ai",
                "to": "waiting", "at": AT}),
            ),
            (
                "operator_join",
                json!({"type": "operator_join", "operator_id": OPERATOR,
                "operator_name": "Ada", "from": "waiting", "to": "human", "at": AT}),
            ),
            (
                "operator_leave",
                json!({"type": "operator_leave", "operator_id": OPERATOR,
                "operator_name": "Ada", "from": "human", "to": "ai", "at": AT}),
            ),
            (
                "operator_resolve",
                json!({"type": "operator_resolve", "operator_id": OPERATOR,
                "operator_name": "Ada", "from": "human", "to": "ai", "at": AT}),
            ),
            (
                "human_message",
                json!({"type": "human_message", "operator_id": OPERATOR,
                "operator_name": "Ada", "message_id": "op-1", "at": AT}),
            ),
            ("ignored", json!({"type": "ignored", "at": AT})),
        ]
    }

    #[test]
    fn every_stored_shape_reads_typed_and_writes_back_unchanged() {
        for (kind, stored) in samples() {
            let event = TimelineEvent::from_stored(stored.clone());
            assert!(
                !matches!(event, TimelineEvent::Unknown(_)),
                "{kind} did not read typed: {stored}"
            );
            assert_eq!(event.kind(), Some(kind));
            assert_eq!(event.to_json(), stored, "{kind}");
            // What the worker writes is the same JSON (serde, not only `to_json`).
            assert_eq!(serde_json::to_value(&event).unwrap(), stored, "{kind}");
        }
    }

    #[test]
    fn every_variant_has_a_sample() {
        let kinds: std::collections::BTreeSet<_> =
            samples().into_iter().map(|(kind, _)| kind).collect();
        // Counted by hand from the enum: a new variant needs its sample above.
        assert_eq!(kinds.len(), 24);
    }

    #[test]
    fn built_events_have_the_stored_shape() {
        let at: DateTime<Utc> = AT.parse().unwrap();
        let interrupt_id: InterruptId = serde_json::from_value(json!(ID)).unwrap();
        let event = TimelineEvent::Cancelled {
            interrupt_id: Some(interrupt_id),
            decision: Some(ApprovalDecision::Withdrawn),
            by: None,
            note: None,
            at,
        };
        assert_eq!(
            TimelineEvent::to_stored(&[event]),
            json!([{"type": "cancelled", "interrupt_id": ID, "decision": "withdrawn", "at": AT}])
        );
        let join = TimelineEvent::OperatorJoin(OperatorChange {
            operator_id: OPERATOR.parse().unwrap(),
            operator_name: "Ada".into(),
            from: HandoffState::Waiting,
            to: HandoffState::Human,
            at,
        });
        let stored = samples()
            .into_iter()
            .find(|(kind, _)| *kind == "operator_join");
        assert_eq!(Some(join.to_json()), stored.map(|(_, json)| json));
    }

    #[test]
    fn unknown_kinds_and_shapes_are_kept_as_stored() {
        for stored in [
            // A kind this version does not know (older or newer).
            json!({"type": "brand_new", "detail": {"x": 1}, "at": AT}),
            // A known kind with a field it does not know, or without one it needs.
            json!({"type": "tool_call", "agent": "a", "tool": "t", "args": {}, "at": AT,
                   "extra": true}),
            json!({"type": "tool_call", "tool": "search_faq"}),
            json!({"type": "decision", "decision": "approved"}),
            // A field of another type, a value it does not know.
            json!({"type": "error", "code": "melted", "at": AT}),
            json!({"type": "agent_reply", "agent": "a", "content": "", "prompt_tokens": 1,
                   "completion_tokens": 1, "cost_usd": 1, "tool_calls": 0, "duration_ms": 3,
                   "at": AT}),
            // Not an event object at all.
            json!({"no_type": 1}),
            json!("text"),
            json!(null),
        ] {
            let event = TimelineEvent::from_stored(stored.clone());
            assert_eq!(event, TimelineEvent::Unknown(stored.clone()), "{stored}");
            assert_eq!(event.to_json(), stored);
        }
        assert_eq!(
            TimelineEvent::from_stored(json!({"type": "brand_new"})).kind(),
            Some("brand_new")
        );
        assert_eq!(TimelineEvent::from_stored(json!(5)).kind(), None);
    }

    #[test]
    fn a_stored_value_that_is_not_an_array_holds_no_events() {
        assert!(TimelineEvent::all_from_stored(json!({"type": "cancelled"})).is_empty());
        let stored = json!([{"type": "ignored", "at": AT}, 7]);
        let events = TimelineEvent::all_from_stored(stored.clone());
        assert_eq!(events.len(), 2);
        assert_eq!(TimelineEvent::to_stored(&events), stored);
    }
}
