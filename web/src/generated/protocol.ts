// Generated from the Rust protocol types (shared/src/protocol/frames.rs, shared/src/ids.rs) and
// the replay timeline's event type (shared/src/timeline.rs) by ts-rs. Do not edit: change the
// Rust types, run scripts/gen-ts.sh and commit the result.
// `.ci/run` fails when this file is not what the types generate. The rules: docs/protocol.md.

/**
 * A thread (conversation) id: `^[a-zA-Z0-9_-]{1,128}$` (SPEC §3). Safe inside a NATS subject token.
 */
export type ThreadId = string;

/**
 * A client's idempotency key for one message: `^[a-zA-Z0-9_-]{1,64}$`.
 */
export type MessageId = string;

/**
 * Names the turn of one accepted message; the same on every attempt at it.
 */
export type TurnId = string;

/**
 * A client frame as a client writes it (SPEC §3, §7, §8): the shape of the wire, with the
 * thread's `token`. The edge never deserializes it (`validate` checks the raw JSON in the SPEC's
 * order); it is what the web app's TypeScript `ClientFrame` is generated from, and
 * [`ClientFrame::to_wire`] (checked against `validate` by a property test) keeps it true.
 */
export type ClientFrame = { "type": "message", thread_id: ThreadId, token: string, content: string,
/**
 * The client's idempotency key: sent again within 2 minutes, the message is
 * `accepted` again and processed once.
 */
message_id?: MessageId, }
  | { "type": "interrupt_response", thread_id: ThreadId, token: string, approved: boolean, interrupt_id?: string, }
  | { "type": "resume", thread_id: ThreadId, token: string, after_seq: number, }
  | { "type": "cancel", thread_id: ThreadId, token: string, turn_id?: TurnId, }
  | { "type": "request_human", thread_id: ThreadId, token: string, }
  | { "type": "feedback", thread_id: ThreadId, token: string, comment?: string, } & ({ turn_id: TurnId, rating: Rating, }
  | { score: number, });

/**
 * What a `feedback` frame rates, as written: `turn_id` + `rating`, or `score`.
 */
export type FeedbackTarget = { turn_id: TurnId, rating: Rating, }
  | { score: number, };

/**
 * Thumbs up or down.
 */
export type Rating = "up" | "down";

/**
 * A frame the edge itself writes to a socket (no `seq`).
 */
export type ServerFrame = { "type": "accepted", thread_id: ThreadId, message_id: MessageId, }
  | { "type": "error", code: ErrorCode, message: string, retryable: boolean, thread_id?: ThreadId, }
  | { "type": "resume_partial", thread_id: ThreadId, last_seq: number, };

/**
 * A frame a worker produced for a thread: `seq` numbers it within the thread (SPEC §3).
 */
export type ThreadFrame = { thread_id: ThreadId,
/**
 * 1, 2, 3, … across the thread's whole life: clients de-duplicate and detect gaps with it.
 */
seq: number,
/**
 * The turn of one accepted message; the same on every attempt at it.
 */
turn_id: TurnId, } & ({ "type": "token", agent: string, content: string, }
  | { "type": "tool_call", agent: string, tool: string, args: Record<string, unknown>, }
  | { "type": "tool_result", agent: string, tool: string, ok: boolean, }
  | { "type": "interrupt",
/**
 * The approval's id (a UUID), the one `interrupt_response` names.
 */
interrupt_id: string,
/**
 * The tool's name.
 */
action: string,
/**
 * The tool's arguments (a JSON object).
 */
params: Record<string, unknown>,
/**
 * RFC 3339.
 */
expires_at: string, }
  | { "type": "interrupt_expired", interrupt_id: string, action: string, message: string, }
  | { "type": "clarification", message: string, }
  | { "type": "turn_reset" }
  | { "type": "message_complete", usage: Usage,
/**
 * The turn was stopped by a `cancel` (or a newer message, with `DOUBLE_TEXT=interrupt`)
 * before it finished: `usage` is what it spent so far (SPEC §8). Absent otherwise.
 */
cancelled?: boolean, }
  | { "type": "error", code: ErrorCode, message: string, retryable: boolean, }
  | { "type": "user_message", message_id: MessageId, content: string, }
  | { "type": "handoff", state: HandoffState, operator: OperatorRef | null, resolved?: boolean, }
  | { "type": "human_message", operator: OperatorRef, message_id: MessageId, content: string, });

/**
 * What a thread frame says.
 */
export type FrameBody = { "type": "token", agent: string, content: string, }
  | { "type": "tool_call", agent: string, tool: string, args: Record<string, unknown>, }
  | { "type": "tool_result", agent: string, tool: string, ok: boolean, }
  | { "type": "interrupt",
/**
 * The approval's id (a UUID), the one `interrupt_response` names.
 */
interrupt_id: string,
/**
 * The tool's name.
 */
action: string,
/**
 * The tool's arguments (a JSON object).
 */
params: Record<string, unknown>,
/**
 * RFC 3339.
 */
expires_at: string, }
  | { "type": "interrupt_expired", interrupt_id: string, action: string, message: string, }
  | { "type": "clarification", message: string, }
  | { "type": "turn_reset" }
  | { "type": "message_complete", usage: Usage,
/**
 * The turn was stopped by a `cancel` (or a newer message, with `DOUBLE_TEXT=interrupt`)
 * before it finished: `usage` is what it spent so far (SPEC §8). Absent otherwise.
 */
cancelled?: boolean, }
  | { "type": "error", code: ErrorCode, message: string, retryable: boolean, }
  | { "type": "user_message", message_id: MessageId, content: string, }
  | { "type": "handoff", state: HandoffState, operator: OperatorRef | null, resolved?: boolean, }
  | { "type": "human_message", operator: OperatorRef, message_id: MessageId, content: string, };

/**
 * Who answers a thread's customer messages (SPEC §7).
 */
export type HandoffState = "ai" | "waiting" | "human";

/**
 * An operator as customers see them: their name.
 */
export type OperatorRef = { name: string, };

/**
 * Model usage of one turn, summed over every model call in it.
 */
export type Usage = { prompt_tokens: number, completion_tokens: number, cost_usd: number, };

/**
 * The error codes of SPEC §3.
 */
export type ErrorCode = "message_too_large" | "invalid_json" | "invalid_frame" | "unknown_type" | "missing_thread_id" | "invalid_thread_id" | "unauthorized" | "missing_content" | "content_too_long" | "rate_limited" | "busy" | "session_expired" | "no_pending_interrupt" | "processing_failed" | "internal";

/**
 * One event of a turn's timeline, as stored in `turns.events`.
 */
export type TimelineEvent = { "type": "classification", result: unknown, at: string, }
  | { "type": "classification_failed", error: string, agent: string, at: string, }
  | { "type": "clarification", message: string, }
  | { "type": "tool_call", agent: string, tool: string, args: Record<string, unknown>, at: string, }
  | { "type": "tool_result", agent: string, tool: string, ok: boolean, result: unknown, at: string, }
  | { "type": "tool_already_ran", interrupt_id: string, }
  | { "type": "interrupt", interrupt_id: string, agent: string, action: string, params: Record<string, unknown>, expires_at: string, at: string, }
  | { "type": "decision", interrupt_id: string, decision: ApprovalDecision, at: string, }
  | { "type": "escalation", agent: string, reason: string, at: string, }
  | { "type": "step_limit", agent: string, }
  | { "type": "model_empty", agent: string, finish_reason: string, at: string, }
  | { "type": "model_retry", agent: string, error: string, at: string, }
  | { "type": "turn_reset", error: string, }
  | { "type": "agent_reply", agent: string, content: string, prompt_tokens: number, completion_tokens: number, cost_usd: number, tool_calls: number, duration_ms: number, at: string, }
  | { "type": "cancelled", interrupt_id?: string, decision?: ApprovalDecision,
/**
 * The handoff message that withdrew the approval (`request_human`, `operator_join`).
 */
by?: string, note?: string, at: string, }
  | { "type": "error", code: ErrorCode, at: string, }
  | { "type": "recovered", note: string, at: string, }
  | { "type": "held_for_human", state: HandoffState, at: string, }
  | { "type": "request_human", by: string, from: HandoffState, to: HandoffState, at: string, }
  | { "type": "operator_join" } & OperatorChange | { "type": "operator_leave" } & OperatorChange | { "type": "operator_resolve" } & OperatorChange | { "type": "human_message", operator_id: string, operator_name: string, message_id: MessageId, at: string, }
  | { "type": "ignored", at: string, };

/**
 * What became of an approval.
 */
export type ApprovalDecision = "approved" | "rejected" | "expired" | "withdrawn";

/**
 * An operator's join, leave or resolve: who, and the handoff state before and after.
 */
export type OperatorChange = { operator_id: string, operator_name: string, from: HandoffState, to: HandoffState, at: string, };
