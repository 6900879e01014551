//! Model providers behind one trait: [`Model`]. `scripted` is offline and deterministic (the
//! default); `openai` talks to any OpenAI-compatible server. A provider makes one call and says
//! how it failed; retrying (with `backon`) is the agent runtime's job, because only the runtime
//! knows whether output already reached the client.

pub mod gate;
pub mod openai;
pub mod scripted;

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

pub use gate::GatedModel;
pub use openai::OpenAiModel;
pub use scripted::ScriptedModel;

/// One message of a chat completion request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum ChatMessage {
    System {
        content: String,
    },
    User {
        content: String,
    },
    Assistant {
        content: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    Tool {
        tool_call_id: String,
        content: String,
    },
}

/// A function call the model asked for, assembled from its streamed deltas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as the model wrote them: JSON text, not yet validated.
    pub arguments: String,
}

/// A tool as the model sees it (function calling).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDefinition {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
}

/// Tokens one model call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl std::ops::AddAssign for TokenUsage {
    fn add_assign(&mut self, other: Self) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
}

/// A streaming chat completion for one agent step.
#[derive(Debug, Clone, Copy)]
pub struct ChatRequest<'a> {
    pub model: &'a str,
    /// The agent that asks (the scripted model answers by agent).
    pub agent: &'a str,
    pub messages: &'a [ChatMessage],
    pub tools: &'a [ToolDefinition],
}

/// What a chat stream yields: text as it comes, then one `Done`.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    Text(String),
    Done(Completion),
}

/// The end of a chat completion.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    /// Every tool call of the answer, in the order the model gave them.
    pub tool_calls: Vec<ToolCall>,
    pub usage: TokenUsage,
    pub finish_reason: String,
}

/// A chat stream. It ends after `Done`; a stream that ends without it was cut, and says so
/// with an error.
pub type ChatStream = BoxStream<'static, Result<ChatEvent, LlmError>>;

/// An agent as the classifier sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentCard {
    pub name: String,
    pub description: String,
}

/// Classify one user message among the agents.
#[derive(Debug, Clone, Copy)]
pub struct ClassifyRequest<'a> {
    pub model: &'a str,
    pub message: &'a str,
    pub agents: &'a [AgentCard],
}

/// The classifier's answer (SPEC §5): the JSON object the `intent_classification` schema describes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    pub intents: Vec<Intent>,
    pub ambiguous: bool,
    pub clarification: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    pub agent: String,
    pub confidence: f64,
}

/// A classifier's answer and what it cost. The call counts in the turn's usage even when its
/// answer is not a usable classification.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    /// The classification, or why the answer is not one (not the expected JSON, a refusal…).
    pub classification: Result<Classification, String>,
    pub usage: TokenUsage,
}

/// How a model call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// Worth retrying: a timeout, a connection error, 429, 5xx, a stream cut short.
    #[error("{reason}")]
    Transient {
        reason: String,
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// Retrying at once would fail the same way (an answer that does not parse, an empty one
    /// after its retries, a provider-wide refusal such as a bad key or an exhausted quota): not
    /// retried within the attempt, but a later attempt at the message may succeed.
    #[error("{0}")]
    Permanent(String),
    /// The provider refused this very request (400, 413, 422…): every attempt would be refused
    /// the same way, so the message is dead-lettered at once, with this reason.
    #[error("{0}")]
    Rejected(String),
}

impl LlmError {
    pub fn transient(reason: impl Into<String>) -> Self {
        Self::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            Self::Permanent(_) | Self::Rejected(_) => None,
        }
    }
}

/// A model provider: one call each, no retries.
pub trait Model: Send + Sync {
    /// The model name used when an agent names none (the price table's key).
    fn default_model(&self) -> &str;

    /// One chat completion whose content is the [`Classification`] JSON.
    fn classify<'a>(
        &'a self,
        request: ClassifyRequest<'a>,
    ) -> BoxFuture<'a, Result<Classified, LlmError>>;

    /// A streaming chat completion with tools. The returned stream enforces the idle and
    /// whole-request timeouts itself.
    fn chat<'a>(&'a self, request: ChatRequest<'a>) -> BoxFuture<'a, Result<ChatStream, LlmError>>;
}
