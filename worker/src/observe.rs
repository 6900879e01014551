//! The worker's spans and log lines (SPEC §9): a turn continues the trace its message carries;
//! each model call is a `chat <model>` span and each tool call an `execute_tool <tool>` span with
//! the OpenTelemetry GenAI semantic-convention attributes; every committed turn logs one line.
//! Spans carry ids, names and counts, never prompts, arguments or results.

use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use serde_json::Value;
use shared::ids::ThreadId;
use tracing::field::Empty;
use tracing::Span;

use crate::llm::TokenUsage;
use crate::records::TurnRecord;

/// The span of one stored message's turn: a child of the edge's span for that message when the
/// message carries a trace context.
pub fn turn_span(thread: &ThreadId, stored: &StreamMessage) -> Span {
    let span = tracing::info_span!(
        "turn",
        thread_id = %thread,
        in_seq = as_i64(stored.sequence),
        otel.kind = "consumer",
    );
    // A span no layer records (RUST_LOG above info) has no parent to find: the headers are
    // not read.
    if !span.is_disabled() {
        shared::telemetry::continue_trace(&span, &stored.headers);
    }
    span
}

/// One model call (a chat completion, streamed or not).
pub fn chat_span(model: &str, thread_id: &str) -> Span {
    tracing::info_span!(
        "chat",
        otel.name = %format_args!("chat {model}"),
        otel.kind = "client",
        gen_ai.operation.name = "chat",
        gen_ai.request.model = model,
        gen_ai.conversation.id = thread_id,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
    )
}

/// Records what a finished model call used on its span.
pub fn record_usage(span: &Span, usage: TokenUsage) {
    // Integers, not strings, in the exported attributes: the OpenTelemetry layer has no u64.
    span.record("gen_ai.usage.input_tokens", as_i64(usage.prompt_tokens));
    span.record(
        "gen_ai.usage.output_tokens",
        as_i64(usage.completion_tokens),
    );
}

fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// One tool call.
pub fn tool_span(tool: &str, call_id: &str, thread_id: &str) -> Span {
    tracing::info_span!(
        "execute_tool",
        otel.name = %format_args!("execute_tool {tool}"),
        otel.kind = "internal",
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = tool,
        gen_ai.tool.call.id = call_id,
        gen_ai.conversation.id = thread_id,
    )
}

/// The info line of a committed turn.
pub fn log_turn(thread: &ThreadId, record: &TurnRecord, elapsed: Duration) {
    // The timeline is read for the line only when the line is written.
    if !tracing::enabled!(tracing::Level::INFO) {
        return;
    }
    let approvals = Approvals::of(&record.events);
    tracing::info!(
        thread_id = %thread,
        turn_id = %record.turn_id,
        in_seq = record.in_seq,
        outcome = record.outcome.as_str(),
        duration_ms = elapsed.as_millis() as u64,
        prompt_tokens = record.prompt_tokens,
        completion_tokens = record.completion_tokens,
        cost_usd = record.cost_usd,
        approvals_raised = approvals.raised,
        approval_decision = approvals.decision,
        pending_approval = record.pending_interrupt.map(|id| id.to_string()),
        agents = ?record.agents,
        "Turn committed."
    );
}

/// What happened to approvals in a turn, from its timeline events.
#[derive(Debug, Default, PartialEq)]
struct Approvals<'a> {
    /// Approvals the turn asked for.
    raised: u64,
    /// How the approval the turn answered was decided (`approved`, `rejected`, `expired`).
    decision: Option<&'a str>,
}

impl<'a> Approvals<'a> {
    fn of(events: &'a Value) -> Self {
        let mut approvals = Self::default();
        for event in events.as_array().into_iter().flatten() {
            match event["type"].as_str() {
                Some("interrupt") => approvals.raised += 1,
                Some("decision") => approvals.decision = event["decision"].as_str(),
                _ => {}
            }
        }
        approvals
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn approvals_come_from_the_timeline() {
        let events = json!([
            {"type": "decision", "decision": "approved"},
            {"type": "tool_call"},
            {"type": "interrupt"},
        ]);
        assert_eq!(
            Approvals::of(&events),
            Approvals {
                raised: 1,
                decision: Some("approved")
            }
        );
        assert_eq!(Approvals::of(&json!([])), Approvals::default());
    }
}
