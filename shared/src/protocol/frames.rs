//! Frames between browser and edge (SPEC §3). These enums are the only wire contract.

use serde::{Deserialize, Serialize};

use crate::ids::{MessageId, ThreadId, TurnId};
use crate::turns::InterruptId;

/// Content of a user message: 1–10,000 characters (Unicode scalar values), not blank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserText(String);

impl UserText {
    pub const MAX_CHARS: usize = 10_000;

    /// `missing_content` when blank, `content_too_long` past [`Self::MAX_CHARS`].
    pub fn parse(raw: String) -> Result<Self, ErrorCode> {
        if raw.trim().is_empty() {
            return Err(ErrorCode::MissingContent);
        }
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(ErrorCode::ContentTooLong);
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated client frame. Built only by [`crate::protocol::validate::parse_client_frame`].
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    Message {
        thread_id: ThreadId,
        content: UserText,
        message_id: Option<MessageId>,
    },
    InterruptResponse {
        thread_id: ThreadId,
        approved: bool,
        interrupt_id: Option<String>,
    },
    Resume {
        thread_id: ThreadId,
        after_seq: u64,
    },
    /// Stops the thread's turn in progress, or the one named (SPEC §8).
    Cancel {
        thread_id: ThreadId,
        turn_id: Option<crate::ids::TurnId>,
    },
    /// The customer asks for a human operator (SPEC §7).
    RequestHuman {
        thread_id: ThreadId,
    },
    /// Thumbs on one reply, or CSAT on the conversation (SPEC §7).
    Feedback {
        thread_id: ThreadId,
        target: FeedbackTarget,
        comment: Option<String>,
    },
}

/// A client frame as a client writes it (SPEC §3, §7, §8): the shape of the wire, with the
/// thread's `token`. The edge never deserializes it (`validate` checks the raw JSON in the SPEC's
/// order); it is what the web app's TypeScript `ClientFrame` is generated from, and
/// [`ClientFrame::to_wire`] (checked against `validate` by a property test) keeps it true.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(test, derive(ts_rs::TS), ts(rename = "ClientFrame"))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WireClientFrame {
    /// A customer message: a new turn. `content`: 1–10,000 characters, not blank.
    Message {
        thread_id: ThreadId,
        token: String,
        content: String,
        /// The client's idempotency key: sent again within 2 minutes, the message is
        /// `accepted` again and processed once.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[cfg_attr(test, ts(optional))]
        message_id: Option<MessageId>,
    },
    /// The answer to a pending approval (`interrupt`).
    InterruptResponse {
        thread_id: ThreadId,
        token: String,
        approved: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[cfg_attr(test, ts(optional))]
        interrupt_id: Option<String>,
    },
    /// (Re)attach this socket to the thread: the retained frames with `seq > after_seq`, then
    /// live ones. `token` may be an operator token (read only).
    Resume {
        thread_id: ThreadId,
        token: String,
        #[cfg_attr(test, ts(type = "number"))]
        after_seq: u64,
    },
    /// Stop the thread's turn in progress, or the one named.
    Cancel {
        thread_id: ThreadId,
        token: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[cfg_attr(test, ts(optional))]
        turn_id: Option<TurnId>,
    },
    /// Ask for a human operator.
    RequestHuman { thread_id: ThreadId, token: String },
    /// Thumbs on one reply, or CSAT (1–5) on the conversation; `comment`: at most 2,000
    /// characters.
    Feedback {
        thread_id: ThreadId,
        token: String,
        #[serde(flatten)]
        #[cfg_attr(test, ts(flatten))]
        target: WireFeedbackTarget,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[cfg_attr(test, ts(optional))]
        comment: Option<String>,
    },
}

/// What a `feedback` frame rates, as written: `turn_id` + `rating`, or `score`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(test, derive(ts_rs::TS), ts(rename = "FeedbackTarget"))]
#[serde(untagged)]
pub enum WireFeedbackTarget {
    /// A reply: the turn that produced it.
    Turn { turn_id: TurnId, rating: Rating },
    /// The conversation, 1–5.
    Csat { score: u8 },
}

/// Thumbs up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum Rating {
    Up,
    Down,
}

impl ClientFrame {
    /// The frame as a client writes it, with `token`: [`crate::protocol::validate`] reads it
    /// back to `self`.
    pub fn to_wire(&self, token: &str) -> WireClientFrame {
        let token = token.to_owned();
        match self.clone() {
            Self::Message {
                thread_id,
                content,
                message_id,
            } => WireClientFrame::Message {
                thread_id,
                token,
                content: content.as_str().to_owned(),
                message_id,
            },
            Self::InterruptResponse {
                thread_id,
                approved,
                interrupt_id,
            } => WireClientFrame::InterruptResponse {
                thread_id,
                token,
                approved,
                interrupt_id,
            },
            Self::Resume {
                thread_id,
                after_seq,
            } => WireClientFrame::Resume {
                thread_id,
                token,
                after_seq,
            },
            Self::Cancel { thread_id, turn_id } => WireClientFrame::Cancel {
                thread_id,
                token,
                turn_id,
            },
            Self::RequestHuman { thread_id } => WireClientFrame::RequestHuman { thread_id, token },
            Self::Feedback {
                thread_id,
                target,
                comment,
            } => WireClientFrame::Feedback {
                thread_id,
                token,
                target: match target {
                    FeedbackTarget::Turn { turn_id, up } => WireFeedbackTarget::Turn {
                        turn_id,
                        rating: if up { Rating::Up } else { Rating::Down },
                    },
                    FeedbackTarget::Csat { score } => WireFeedbackTarget::Csat { score },
                },
                comment,
            },
        }
    }
}

/// What a `feedback` frame rates.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedbackTarget {
    /// Thumbs up (`true`) or down on the reply of one turn.
    Turn { turn_id: TurnId, up: bool },
    /// CSAT of the conversation, 1–5.
    Csat { score: u8 },
}

/// The longest feedback comment, in characters.
pub const MAX_FEEDBACK_COMMENT_CHARS: usize = 2_000;

impl ClientFrame {
    pub fn thread_id(&self) -> &ThreadId {
        match self {
            Self::Message { thread_id, .. }
            | Self::InterruptResponse { thread_id, .. }
            | Self::Resume { thread_id, .. }
            | Self::Cancel { thread_id, .. }
            | Self::RequestHuman { thread_id }
            | Self::Feedback { thread_id, .. } => thread_id,
        }
    }

    /// The `type` of the frame, as metrics label it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Message { .. } => "message",
            Self::InterruptResponse { .. } => "interrupt_response",
            Self::Resume { .. } => "resume",
            Self::Cancel { .. } => "cancel",
            Self::RequestHuman { .. } => "request_human",
            Self::Feedback { .. } => "feedback",
        }
    }
}

/// A frame the edge itself writes to a socket (no `seq`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// JetStream stored the message (or the `interrupt_response`, `cancel`, `request_human`,
    /// `feedback`): from here on it will be processed.
    Accepted {
        thread_id: ThreadId,
        message_id: MessageId,
    },
    /// A refused client frame; the socket stays open and nothing of the frame was published.
    Error {
        code: ErrorCode,
        message: String,
        retryable: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(test, ts(optional))]
        thread_id: Option<ThreadId>,
    },
    /// A `resume` replayed `RESUME_MAX_FRAMES` frames and more are retained: the thread's live
    /// frames are held back until the client sends `resume` again with `after_seq` = `last_seq`.
    ResumePartial {
        thread_id: ThreadId,
        #[cfg_attr(test, ts(type = "number"))]
        last_seq: u64,
    },
}

impl From<FrameError> for ServerFrame {
    fn from(error: FrameError) -> Self {
        Self::Error {
            code: error.code,
            retryable: error.code.retryable(),
            message: error.message,
            thread_id: error.thread_id,
        }
    }
}

/// A frame a worker produced for a thread: `seq` numbers it within the thread (SPEC §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
pub struct ThreadFrame {
    pub thread_id: ThreadId,
    /// 1, 2, 3, … across the thread's whole life: clients de-duplicate and detect gaps with it.
    #[cfg_attr(test, ts(type = "number"))]
    pub seq: u64,
    /// The turn of one accepted message; the same on every attempt at it.
    pub turn_id: TurnId,
    #[serde(flatten)]
    pub body: FrameBody,
}

/// What a thread frame says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FrameBody {
    /// Streamed reply text of `agent`.
    Token { agent: String, content: String },
    /// A tool is being called; `args` is a JSON object.
    ToolCall {
        agent: String,
        tool: String,
        #[cfg_attr(test, ts(type = "Record<string, unknown>"))]
        args: serde_json::Value,
    },
    /// A tool finished.
    ToolResult {
        agent: String,
        tool: String,
        ok: bool,
    },
    /// A sensitive action waits for the customer's approval: the turn is paused.
    Interrupt {
        /// The approval's id (a UUID), the one `interrupt_response` names.
        #[cfg_attr(test, ts(type = "string"))]
        interrupt_id: InterruptId,
        /// The tool's name.
        action: String,
        /// The tool's arguments (a JSON object).
        #[cfg_attr(test, ts(type = "Record<string, unknown>"))]
        params: serde_json::Value,
        /// RFC 3339.
        #[cfg_attr(test, ts(type = "string"))]
        expires_at: chrono::DateTime<chrono::Utc>,
    },
    /// An approval came after `expires_at`: nothing was executed.
    InterruptExpired {
        #[cfg_attr(test, ts(type = "string"))]
        interrupt_id: InterruptId,
        action: String,
        message: String,
    },
    /// The request was ambiguous; the turn ends here (a `message_complete` follows).
    Clarification { message: String },
    /// A failed attempt is being retried: discard the partial output of `turn_id`.
    TurnReset,
    /// The turn is over.
    MessageComplete {
        usage: Usage,
        /// The turn was stopped by a `cancel` (or a newer message, with `DOUBLE_TEXT=interrupt`)
        /// before it finished: `usage` is what it spent so far (SPEC §8). Absent otherwise.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        #[cfg_attr(test, ts(as = "Option<bool>", optional))]
        cancelled: bool,
    },
    /// The turn failed (`processing_failed`) or its message was refused by the worker
    /// (`session_expired`).
    Error {
        code: ErrorCode,
        message: String,
        retryable: bool,
    },
    /// An accepted customer message, first frame of its turn (SPEC §7).
    UserMessage {
        message_id: MessageId,
        content: String,
    },
    /// The thread's handoff state changed (SPEC §7). `resolved` is set (and only then sent) when
    /// an operator resolved the conversation.
    Handoff {
        state: HandoffState,
        operator: Option<OperatorRef>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        #[cfg_attr(test, ts(as = "Option<bool>", optional))]
        resolved: bool,
    },
    /// A message of the human operator who joined the thread (SPEC §7).
    HumanMessage {
        operator: OperatorRef,
        message_id: MessageId,
        content: String,
    },
}

/// Who answers a thread's customer messages (SPEC §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum HandoffState {
    /// The AI agents (the default).
    Ai,
    /// A human was asked for; none has joined yet. The AI does not answer.
    Waiting,
    /// An operator has joined; the AI does not answer.
    Human,
}

impl HandoffState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ai => "ai",
            Self::Waiting => "waiting",
            Self::Human => "human",
        }
    }
}

/// An operator as customers see them: their name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
pub struct OperatorRef {
    pub name: String,
}

impl FrameBody {
    /// The `type` of the frame, as metrics label it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Token { .. } => "token",
            Self::ToolCall { .. } => "tool_call",
            Self::ToolResult { .. } => "tool_result",
            Self::Interrupt { .. } => "interrupt",
            Self::InterruptExpired { .. } => "interrupt_expired",
            Self::Clarification { .. } => "clarification",
            Self::TurnReset => "turn_reset",
            Self::MessageComplete { .. } => "message_complete",
            Self::Error { .. } => "error",
            Self::UserMessage { .. } => "user_message",
            Self::Handoff { .. } => "handoff",
            Self::HumanMessage { .. } => "human_message",
        }
    }
}

/// Model usage of one turn, summed over every model call in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
pub struct Usage {
    #[cfg_attr(test, ts(type = "number"))]
    pub prompt_tokens: u64,
    #[cfg_attr(test, ts(type = "number"))]
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

/// The error codes of SPEC §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MessageTooLarge,
    InvalidJson,
    InvalidFrame,
    UnknownType,
    MissingThreadId,
    InvalidThreadId,
    Unauthorized,
    MissingContent,
    ContentTooLong,
    RateLimited,
    Busy,
    SessionExpired,
    NoPendingInterrupt,
    ProcessingFailed,
    Internal,
}

impl ErrorCode {
    /// Only `rate_limited` and `busy` invite the client to send the same frame again.
    pub fn retryable(self) -> bool {
        matches!(self, Self::RateLimited | Self::Busy)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MessageTooLarge => "message_too_large",
            Self::InvalidJson => "invalid_json",
            Self::InvalidFrame => "invalid_frame",
            Self::UnknownType => "unknown_type",
            Self::MissingThreadId => "missing_thread_id",
            Self::InvalidThreadId => "invalid_thread_id",
            Self::Unauthorized => "unauthorized",
            Self::MissingContent => "missing_content",
            Self::ContentTooLong => "content_too_long",
            Self::RateLimited => "rate_limited",
            Self::Busy => "busy",
            Self::SessionExpired => "session_expired",
            Self::NoPendingInterrupt => "no_pending_interrupt",
            Self::ProcessingFailed => "processing_failed",
            Self::Internal => "internal",
        }
    }
}

/// A refused client frame: answered with an `error` frame, the socket stays open.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    /// Set whenever the frame named a valid thread id.
    pub thread_id: Option<ThreadId>,
}

impl FrameError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            thread_id: None,
        }
    }

    pub fn on_thread(mut self, thread_id: &ThreadId) -> Self {
        self.thread_id = Some(thread_id.clone());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_frames_serialize_flat() {
        let frame = ThreadFrame {
            thread_id: ThreadId::parse("t1").unwrap(),
            seq: 3,
            turn_id: TurnId::from(uuid::Uuid::nil()),
            body: FrameBody::Token {
                agent: "general".into(),
                content: "Hi".into(),
            },
        };
        let json = serde_json::to_value(&frame).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"thread_id": "t1", "seq": 3, "turn_id": uuid::Uuid::nil(),
                               "type": "token", "agent": "general", "content": "Hi"})
        );
        let back: ThreadFrame = serde_json::from_value(json).unwrap();
        assert_eq!(back, frame);
    }

    #[test]
    fn only_rate_limited_and_busy_are_retryable() {
        assert!(ErrorCode::RateLimited.retryable());
        assert!(ErrorCode::Busy.retryable());
        assert!(!ErrorCode::Unauthorized.retryable());
        assert_eq!(
            serde_json::to_value(ErrorCode::ContentTooLong).unwrap(),
            "content_too_long"
        );
        assert_eq!(ErrorCode::ContentTooLong.as_str(), "content_too_long");
    }

    #[test]
    fn user_text_counts_characters_not_bytes() {
        assert!(UserText::parse("é".repeat(10_000)).is_ok());
        assert_eq!(
            UserText::parse("é".repeat(10_001)),
            Err(ErrorCode::ContentTooLong)
        );
        assert_eq!(
            UserText::parse(" \n\t ".into()),
            Err(ErrorCode::MissingContent)
        );
    }
}
