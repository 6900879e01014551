// Generated from the Rust protocol types (shared/src/protocol/frames.rs, shared/src/ids.rs) by
// ts-rs. Do not edit: change the Rust types, run scripts/gen-ts.sh and commit the result.
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
  | { "type": "interrupt", interrupt_id: string,
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
  | { "type": "interrupt", interrupt_id: string,
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
