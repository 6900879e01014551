//! The `openai` provider: any OpenAI-compatible server (`POST {base_url}/chat/completions`),
//! through async-openai.
//!
//! One call each, no retries: async-openai's default executor retries 429 and 5xx by itself
//! (and loses `Retry-After`), so the client here runs on our own HTTP service, which sends each
//! request once and turns a non-2xx answer into an [`HttpStatusError`] that keeps the status,
//! `Retry-After` and the server's error message. [`LlmError`] then says whether the runtime
//! should retry.
//!
//! - `classify` is one non-streaming completion whose `response_format` is the
//!   `intent_classification` JSON schema (SPEC §5); its content is parsed into a
//!   [`Classification`].
//! - `chat` is a streaming completion (`stream: true`, usage included) with the agent's tools in
//!   function-calling form; text deltas are yielded as they come, tool-call deltas are assembled
//!   by [`Assembler`], and the stream ends with one [`ChatEvent::Done`].
//!
//! Answers are decoded leniently (async-openai's `byot` calls, read as JSON and then as the
//! small [`wire`] types): only what the turn needs is required. OpenAI-compatible servers
//! (LiteLLM, vLLM, llama.cpp, minimal SSE servers) leave out `id`, `created` or `object`, send
//! usage without `total_tokens`, or finish for reasons of their own (`eos`): none of that
//! discards an answer. A finish reason outside OpenAI's five is mapped (`tool_calls` when the
//! answer called tools, else `stop`) and logged once per reason.
//!
//! Timeouts: `request_timeout` bounds the whole call from its start (opening the stream
//! included); `idle_timeout` bounds the wait for the stream's headers and each wait for the next
//! chunk. Both fail as transient.

use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls,
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestAssistantMessageContent,
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestSystemMessageContent, ChatCompletionRequestToolMessage,
    ChatCompletionRequestToolMessageContent, ChatCompletionRequestUserMessage,
    ChatCompletionRequestUserMessageContent, ChatCompletionStreamOptions, ChatCompletionTool,
    ChatCompletionTools, CreateChatCompletionRequest, FunctionCall, FunctionObject, ResponseFormat,
    ResponseFormatJsonSchema,
};
use async_openai::types::stream::StreamResponse;
use async_openai::Client;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt as _};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{
    AgentCard, ChatEvent, ChatMessage, ChatRequest, ChatStream, Classification, Classified,
    ClassifyRequest, Completion, LlmError, Model, TokenUsage, ToolCall, ToolDefinition,
};

/// How long opening a TCP (and TLS) connection to the model server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sent as the bearer token when no API key is configured (local servers ignore it).
const PLACEHOLDER_API_KEY: &str = "none";

/// The most of an error body kept in an error message (which is logged and may end up in a
/// dead letter's reason): an upstream's whole traceback is not.
const MAX_ERROR_BODY: usize = 500;

/// Settings of the `openai` provider.
#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    /// Includes `/v1`.
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
}

/// A model behind an OpenAI-compatible chat completions API.
pub struct OpenAiModel {
    settings: OpenAiSettings,
    client: Client<OpenAIConfig>,
}

impl std::fmt::Debug for OpenAiModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiModel")
            .field("base_url", &self.settings.base_url)
            .field("model", &self.settings.model)
            .finish_non_exhaustive()
    }
}

impl OpenAiModel {
    /// Builds the client; fails on a base URL that is not http(s) or an API key that cannot be
    /// sent in a header. Makes no request.
    pub fn new(settings: OpenAiSettings) -> anyhow::Result<Self> {
        // reqwest is built without a default rustls provider; an https base URL needs one. Another
        // part of the process may have installed one already, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();

        let base_url = settings.base_url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base_url)
            .map_err(|e| anyhow::anyhow!("OPENAI_BASE_URL {base_url:?} is not a URL: {e}"))?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https"),
            "OPENAI_BASE_URL {base_url:?} must be an http:// or https:// URL"
        );
        let api_key = settings
            .api_key
            .as_deref()
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .unwrap_or(PLACEHOLDER_API_KEY)
            .to_owned();
        // async-openai builds the Authorization header with `parse().unwrap()`: check it here.
        anyhow::ensure!(
            HeaderValue::from_str(&format!("Bearer {api_key}")).is_ok(),
            "OPENAI_API_KEY contains characters that cannot be sent in an HTTP header"
        );

        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| anyhow::anyhow!("building the model HTTP client: {e}"))?;
        // Organisation and project headers are left out on purpose: async-openai would read them
        // from the environment and unwrap their parsing.
        let config = OpenAIConfig::new()
            .with_api_base(base_url)
            .with_api_key(api_key)
            .with_org_id("")
            .with_project_id("");
        let service = {
            let http = http.clone();
            tower::service_fn(move |factory: HttpRequestFactory| {
                let http = http.clone();
                async move { send_once(&http, factory).await }
            })
        };
        let client = Client::build(http, config).with_http_service(service);
        Ok(Self { settings, client })
    }

    fn model_name<'a>(&'a self, requested: &'a str) -> &'a str {
        if requested.trim().is_empty() {
            &self.settings.model
        } else {
            requested
        }
    }

    async fn classify_once(&self, request: ClassifyRequest<'_>) -> Result<Classified, LlmError> {
        let body = classification_request(self.model_name(request.model), &request);
        let response: Value = tokio::time::timeout(
            self.settings.request_timeout,
            self.client.chat().create_byot(body),
        )
        .await
        .map_err(|_| {
            LlmError::transient(format!(
                "the model did not answer the classification within {:?}",
                self.settings.request_timeout
            ))
        })?
        .map_err(llm_error)?;
        let response = wire::Completion::decode(response)?;
        let usage = response.usage.map(wire::Usage::tokens).unwrap_or_default();
        // The call was answered: its usage counts even when the answer is not a classification.
        let classification = response
            .choices
            .unwrap_or_default()
            .into_iter()
            .next()
            .ok_or_else(|| "the classification answer has no choices".to_owned())
            .and_then(|choice| {
                let message = choice.message.unwrap_or_default();
                match (message.content, message.refusal) {
                    (Some(content), _) if !content.trim().is_empty() => Ok(content),
                    (_, Some(refusal)) => Err(format!(
                        "the model refused to classify: {}",
                        truncate(&refusal, MAX_ERROR_BODY)
                    )),
                    _ => Err("the classification answer has no content".to_owned()),
                }
            })
            .and_then(|content| parse_classification(&content).map_err(|e| e.to_string()));
        Ok(Classified {
            classification,
            usage,
        })
    }

    async fn open_chat(&self, request: ChatRequest<'_>) -> Result<ChatStream, LlmError> {
        let started = Instant::now();
        let deadline = started + self.settings.request_timeout;
        let body = chat_request(self.model_name(request.model), &request);
        // A streaming server answers with its headers at once: a silent one is idle.
        let opened = deadline.min(started + self.settings.idle_timeout);
        let inner = tokio::time::timeout_at(opened, self.client.chat().create_stream_byot(body))
            .await
            .map_err(|_| {
                LlmError::transient(format!(
                    "the model did not start answering within {:?}",
                    opened - started
                ))
            })?
            .map_err(llm_error)?;
        let reading = Reading {
            inner,
            assembler: Assembler::default(),
            deadline,
            request_timeout: self.settings.request_timeout,
            idle_timeout: self.settings.idle_timeout,
            finished: false,
        };
        Ok(stream::unfold(reading, |mut reading| async move {
            let event = reading.next_event().await?;
            Some((event, reading))
        })
        .boxed())
    }
}

impl Model for OpenAiModel {
    fn default_model(&self) -> &str {
        &self.settings.model
    }

    fn classify<'a>(
        &'a self,
        request: ClassifyRequest<'a>,
    ) -> BoxFuture<'a, Result<Classified, LlmError>> {
        Box::pin(self.classify_once(request))
    }

    fn chat<'a>(&'a self, request: ChatRequest<'a>) -> BoxFuture<'a, Result<ChatStream, LlmError>> {
        Box::pin(self.open_chat(request))
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP: one attempt, non-2xx answers as errors that keep what the runtime needs.

/// A non-2xx answer of the model server.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the model server answered {status}: {}", self.detail())]
struct HttpStatusError {
    status: u16,
    /// From `retry-after-ms` or `Retry-After` (seconds or an HTTP date).
    retry_after: Option<Duration>,
    /// The body as text, cut to [`MAX_ERROR_BODY`] bytes.
    body: String,
    /// `error.message` of an OpenAI error body.
    message: Option<String>,
    /// `error.type` or, failing that, `error.code` of an OpenAI error body.
    kind: Option<String>,
}

impl HttpStatusError {
    fn new(status: u16, headers: &HeaderMap, body: &[u8]) -> Self {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let error = parsed.as_ref().map(|value| &value["error"]);
        let message = error
            .and_then(|error| error["message"].as_str())
            .map(str::to_owned);
        let kind = error
            .and_then(|error| error["type"].as_str().or_else(|| error["code"].as_str()))
            .map(str::to_owned);
        Self {
            status,
            retry_after: retry_after(headers),
            body: truncate(&String::from_utf8_lossy(body), MAX_ERROR_BODY),
            message,
            kind,
        }
    }

    fn detail(&self) -> &str {
        match &self.message {
            Some(message) => message,
            None if self.body.trim().is_empty() => "(no body)",
            None => self.body.trim(),
        }
    }

    /// 429 (but an exhausted quota), 408 and 5xx are transient. The other 4xx are permanent;
    /// of those, the ones that refuse this very request (400, 413, 422…) are `Rejected`: every
    /// attempt would be refused alike, so the message is dead-lettered at once. The ones about
    /// the provider itself — a bad key (401, 403), an unknown model or URL (404), a quota — are
    /// left to the usual attempts, which may outlast the operator's fix.
    fn to_llm_error(&self) -> LlmError {
        let quota = self.kind.as_deref() == Some("insufficient_quota");
        if (self.status == 429 && !quota) || self.status == 408 || self.status >= 500 {
            LlmError::Transient {
                reason: self.to_string(),
                retry_after: self.retry_after,
            }
        } else if quota || matches!(self.status, 401 | 402 | 403 | 404 | 429) {
            LlmError::Permanent(self.to_string())
        } else {
            LlmError::Rejected(self.to_string())
        }
    }
}

/// Sends the request once; a non-2xx answer becomes an [`HttpStatusError`].
async fn send_once(
    http: &reqwest::Client,
    factory: HttpRequestFactory,
) -> Result<reqwest::Response, OpenAIError> {
    let request = factory.build().await?;
    let response = http.execute(request).await.map_err(OpenAIError::Reqwest)?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let headers = response.headers().clone();
    // The body only adds detail: a body that cannot be read leaves the status to speak.
    let body = response.bytes().await.unwrap_or_default();
    Err(OpenAIError::Boxed(Box::new(HttpStatusError::new(
        status.as_u16(),
        &headers,
        &body,
    ))))
}

/// The delay a 429 or 503 asks for: `retry-after-ms` (Azure and OpenAI send it), else
/// `Retry-After` as seconds or as an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
    };
    if let Some(millis) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if let Ok(delay) = Duration::try_from_secs_f64(millis / 1000.0) {
            return Some(delay);
        }
    }
    parse_retry_after(header("retry-after")?)
}

/// `Retry-After`: delay-seconds (fractions tolerated) or an HTTP date (RFC 9110 §10.2.3).
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    if let Ok(seconds) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delay = date.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delay.to_std().unwrap_or(Duration::ZERO))
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// How a failed call should be treated.
fn llm_error(error: OpenAIError) -> LlmError {
    match error {
        OpenAIError::Boxed(error) => match error.downcast::<HttpStatusError>() {
            Ok(status) => status.to_llm_error(),
            Err(error) => match error.downcast::<reqwest::Error>() {
                Ok(error) => reqwest_error(&error),
                Err(error) => LlmError::transient(format!("the model call failed: {error}")),
            },
        },
        OpenAIError::Reqwest(error) => reqwest_error(&error),
        // Not produced by our HTTP service, which turns every non-2xx answer into an
        // `HttpStatusError`; kept for completeness.
        OpenAIError::ApiError(error) => {
            let status = error.status_code.as_u16();
            HttpStatusError {
                status,
                retry_after: None,
                body: String::new(),
                message: Some(error.api_error.message.clone()),
                kind: error.api_error.r#type.clone(),
            }
            .to_llm_error()
        }
        OpenAIError::JSONDeserialize(error, content) => {
            // An error object in place of a chunk: the server failed mid-answer.
            let server_error = serde_json::from_str::<Value>(&content)
                .ok()
                .filter(|value| value.get("error").is_some());
            match server_error {
                Some(value) => LlmError::transient(format!(
                    "the model server reported an error: {}",
                    truncate(
                        value["error"]["message"].as_str().unwrap_or(&content),
                        MAX_ERROR_BODY
                    )
                )),
                None => LlmError::Permanent(format!(
                    "the model's answer does not parse ({error}): {}",
                    truncate(&content, MAX_ERROR_BODY)
                )),
            }
        }
        OpenAIError::StreamError(error) => {
            LlmError::transient(format!("the model's stream failed: {error}"))
        }
        OpenAIError::InvalidArgument(message) => {
            LlmError::Permanent(format!("invalid model request: {message}"))
        }
        other => LlmError::Permanent(format!("the model call failed: {other}")),
    }
}

fn reqwest_error(error: &reqwest::Error) -> LlmError {
    if error.is_builder() {
        return LlmError::Permanent(format!("invalid model request: {error}"));
    }
    let what = if error.is_connect() {
        "cannot connect to the model server"
    } else if error.is_timeout() {
        "the model server timed out"
    } else {
        "the model call failed"
    };
    // `Display` of a reqwest error hides its cause (such as "connection refused").
    let mut reason = format!("{what}: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        reason.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    LlmError::transient(reason)
}

// ---------------------------------------------------------------------------------------------
// Classification.

/// The `response_format` schema of a classification (SPEC §5).
fn classification_schema(agents: &[AgentCard]) -> Value {
    let mut agent = json!({"type": "string", "description": "The name of an agent."});
    if !agents.is_empty() {
        agent["enum"] = agents.iter().map(|card| card.name.clone()).collect();
    }
    json!({
        "type": "object",
        "properties": {
            "intents": {
                "type": "array",
                "description": "Every agent the message needs, in the order the user asked.",
                "items": {
                    "type": "object",
                    "properties": {
                        "agent": agent,
                        "confidence": {
                            "type": "number",
                            "description": "How sure you are, from 0 to 1."
                        }
                    },
                    "required": ["agent", "confidence"],
                    "additionalProperties": false
                }
            },
            "ambiguous": {
                "type": "boolean",
                "description": "True when the message is too vague to route."
            },
            "clarification": {
                "type": ["string", "null"],
                "description": "When ambiguous: one short question to ask the user; else null."
            }
        },
        "required": ["intents", "ambiguous", "clarification"],
        "additionalProperties": false
    })
}

fn classification_prompt(agents: &[AgentCard]) -> String {
    let mut prompt =
        String::from("You route customer-support messages to specialist agents. The agents:\n");
    for card in agents {
        prompt.push_str(&format!("- {}: {}\n", card.name, card.description.trim()));
    }
    prompt.push_str(
        "\nRead the user's message and answer with the intent_classification JSON object only.\n\
         - intents: every agent the message needs, each once, in the order the user asked for \
         them, with your confidence from 0 to 1. A message with two requests names two agents.\n\
         - ambiguous: true only when the message is too vague to route to any agent (such as a \
         bare \"help\"); then leave intents empty and write in clarification one short, \
         friendly question asking what the user needs.\n\
         - clarification: null unless ambiguous.\n",
    );
    prompt
}

fn classification_request(
    model: &str,
    request: &ClassifyRequest<'_>,
) -> CreateChatCompletionRequest {
    CreateChatCompletionRequest {
        model: model.to_owned(),
        messages: vec![
            system_message(classification_prompt(request.agents)),
            user_message(request.message.to_owned()),
        ],
        response_format: Some(ResponseFormat::JsonSchema {
            json_schema: ResponseFormatJsonSchema {
                description: Some("Which agents should handle the user's message.".into()),
                name: "intent_classification".into(),
                schema: classification_schema(request.agents),
                strict: Some(true),
            },
        }),
        ..Default::default()
    }
}

/// The classification in a message's content. Tolerates a Markdown code fence around the JSON,
/// which some compatible servers add.
fn parse_classification(content: &str) -> Result<Classification, LlmError> {
    let trimmed = content.trim();
    let unfenced = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|rest| rest.strip_suffix("```"))
        .unwrap_or(trimmed);
    serde_json::from_str(unfenced.trim()).map_err(|e| {
        LlmError::Permanent(format!(
            "the classification is not the expected JSON ({e}): {}",
            truncate(content, MAX_ERROR_BODY)
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// Chat.

fn system_message(content: String) -> ChatCompletionRequestMessage {
    ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage {
        content: ChatCompletionRequestSystemMessageContent::Text(content),
        name: None,
    })
}

fn user_message(content: String) -> ChatCompletionRequestMessage {
    ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
        content: ChatCompletionRequestUserMessageContent::Text(content),
        name: None,
    })
}

fn wire_message(message: &ChatMessage) -> ChatCompletionRequestMessage {
    match message {
        ChatMessage::System { content } => system_message(content.clone()),
        ChatMessage::User { content } => user_message(content.clone()),
        ChatMessage::Assistant {
            content,
            tool_calls,
        } => {
            let tool_calls: Vec<ChatCompletionMessageToolCalls> = tool_calls
                .iter()
                .map(|call| {
                    ChatCompletionMessageToolCalls::Function(ChatCompletionMessageToolCall {
                        id: call.id.clone(),
                        function: FunctionCall {
                            name: call.name.clone(),
                            arguments: call.arguments.clone(),
                        },
                    })
                })
                .collect();
            // Content is optional when the message calls tools.
            let content = (!content.is_empty() || tool_calls.is_empty())
                .then(|| ChatCompletionRequestAssistantMessageContent::Text(content.clone()));
            ChatCompletionRequestMessage::Assistant(ChatCompletionRequestAssistantMessage {
                content,
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                ..Default::default()
            })
        }
        ChatMessage::Tool {
            tool_call_id,
            content,
        } => ChatCompletionRequestMessage::Tool(ChatCompletionRequestToolMessage {
            content: ChatCompletionRequestToolMessageContent::Text(content.clone()),
            tool_call_id: tool_call_id.clone(),
        }),
    }
}

fn wire_tool(tool: &ToolDefinition) -> ChatCompletionTools {
    ChatCompletionTools::Function(ChatCompletionTool {
        function: FunctionObject {
            name: tool.name.clone(),
            description: (!tool.description.is_empty()).then(|| tool.description.clone()),
            parameters: Some(tool.parameters.clone()),
            strict: None,
        },
    })
}

fn chat_request(model: &str, request: &ChatRequest<'_>) -> CreateChatCompletionRequest {
    let tools: Vec<ChatCompletionTools> = request.tools.iter().map(wire_tool).collect();
    CreateChatCompletionRequest {
        model: model.to_owned(),
        messages: request.messages.iter().map(wire_message).collect(),
        stream: Some(true),
        stream_options: Some(ChatCompletionStreamOptions {
            include_usage: Some(true),
            include_obfuscation: None,
        }),
        tools: (!tools.is_empty()).then_some(tools),
        ..Default::default()
    }
}

/// OpenAI's finish reasons.
const FINISH_REASONS: [&str; 5] = [
    "stop",
    "length",
    "tool_calls",
    "content_filter",
    "function_call",
];

/// The finish reason as the turn reads it: one of OpenAI's, or, for a server's own (`eos`,
/// `end_turn`…), `tool_calls` when the answer called tools and `stop` otherwise. Each unknown
/// reason is logged once per process (a bounded number of them).
fn finish_reason(raw: &str, called_tools: bool) -> String {
    if FINISH_REASONS.contains(&raw) {
        return raw.to_owned();
    }
    let mapped = if called_tools { "tool_calls" } else { "stop" };
    static SEEN: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let first = {
        let mut seen = SEEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.len() < 32 && seen.insert(truncate(raw, 64))
    };
    if first {
        tracing::warn!(
            finish_reason = %truncate(raw, 64),
            mapped,
            "The model server sent a finish_reason outside OpenAI's; reading it as {mapped} (logged once)."
        );
    }
    mapped.to_owned()
}

/// The parts of OpenAI's answers the turn reads, every field optional: the lenient decoding of
/// compatible servers' answers. Unknown fields are ignored.
mod wire {
    use serde::Deserialize;
    use serde_json::Value;

    use super::{truncate, LlmError, MAX_ERROR_BODY};
    use crate::llm::TokenUsage;

    /// A `chat.completion` or a `chat.completion.chunk`, or an error object in their place.
    #[derive(Debug, Default, Deserialize)]
    pub(super) struct Completion {
        pub(super) choices: Option<Vec<Choice>>,
        pub(super) usage: Option<Usage>,
    }

    impl Completion {
        /// Reads an answer; an error object in its place is a transient failure (the server
        /// failed mid-answer), anything else that does not fit is permanent. Both carry a
        /// bounded part of what the server sent.
        pub(super) fn decode(value: Value) -> Result<Self, LlmError> {
            if let Some(error) = value.get("error").filter(|error| !error.is_null()) {
                let message = error["message"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| error.to_string());
                return Err(LlmError::transient(format!(
                    "the model server reported an error: {}",
                    truncate(&message, MAX_ERROR_BODY)
                )));
            }
            Self::deserialize(&value).map_err(|error| {
                LlmError::Permanent(format!(
                    "the model's answer does not parse ({error}): {}",
                    truncate(&value.to_string(), MAX_ERROR_BODY)
                ))
            })
        }
    }

    #[derive(Debug, Default, Deserialize)]
    pub(super) struct Choice {
        pub(super) index: Option<u32>,
        /// A complete answer's message.
        pub(super) message: Option<Message>,
        /// A chunk's delta.
        pub(super) delta: Option<Message>,
        pub(super) finish_reason: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    pub(super) struct Message {
        pub(super) content: Option<String>,
        pub(super) refusal: Option<String>,
        pub(super) tool_calls: Option<Vec<CallDelta>>,
    }

    #[derive(Debug, Default, Deserialize)]
    pub(super) struct CallDelta {
        pub(super) index: Option<u32>,
        pub(super) id: Option<String>,
        pub(super) function: Option<FunctionDelta>,
    }

    #[derive(Debug, Default, Deserialize)]
    pub(super) struct FunctionDelta {
        pub(super) name: Option<String>,
        pub(super) arguments: Option<String>,
    }

    /// `total_tokens` and the details are not needed.
    #[derive(Debug, Default, Deserialize)]
    pub(super) struct Usage {
        pub(super) prompt_tokens: Option<u64>,
        pub(super) completion_tokens: Option<u64>,
    }

    impl Usage {
        pub(super) fn tokens(self) -> TokenUsage {
            TokenUsage {
                prompt_tokens: self.prompt_tokens.unwrap_or_default(),
                completion_tokens: self.completion_tokens.unwrap_or_default(),
            }
        }
    }
}

/// A tool call being assembled from its deltas.
#[derive(Debug, Default)]
struct PartialCall {
    index: u32,
    id: String,
    name: String,
    arguments: String,
}

/// Assembles a streamed chat completion: text deltas pass through, tool-call deltas are joined
/// by their `index` (the id and name come in a call's first delta, the arguments in pieces),
/// and the finish reason and usage are kept for the end.
#[derive(Debug, Default)]
struct Assembler {
    calls: Vec<PartialCall>,
    finish_reason: Option<String>,
    usage: Option<TokenUsage>,
}

impl Assembler {
    /// Takes one chunk; returns the text it carries, if any.
    fn push(&mut self, chunk: wire::Completion) -> Option<String> {
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage.tokens());
        }
        let mut text = String::new();
        // One choice is asked for (`n` unset); others, if a server sent any, are ignored.
        for choice in chunk
            .choices
            .unwrap_or_default()
            .into_iter()
            .filter(|choice| choice.index.unwrap_or_default() == 0)
        {
            let delta = choice.delta.or(choice.message).unwrap_or_default();
            if let Some(content) = delta.content {
                text.push_str(&content);
            }
            if let Some(refusal) = delta.refusal {
                text.push_str(&refusal);
            }
            for call in delta.tool_calls.unwrap_or_default() {
                let call_index = call.index.unwrap_or_default();
                let id = call.id.filter(|id| !id.is_empty());
                let (name, arguments) = call
                    .function
                    .map(|function| (function.name, function.arguments))
                    .unwrap_or_default();
                // A delta with a new id at a known index starts another call (servers that
                // number every call 0); otherwise it continues the call at its index.
                let existing = self.calls.iter().rposition(|partial| {
                    partial.index == call_index
                        && match &id {
                            Some(id) => partial.id.is_empty() || partial.id == *id,
                            None => true,
                        }
                });
                let partial = match existing {
                    Some(position) => &mut self.calls[position],
                    None => {
                        self.calls.push(PartialCall {
                            index: call_index,
                            ..PartialCall::default()
                        });
                        let last = self.calls.len() - 1;
                        &mut self.calls[last]
                    }
                };
                if let Some(id) = id {
                    partial.id = id;
                }
                if let Some(name) = name.filter(|name| !name.is_empty()) {
                    partial.name = name;
                }
                if let Some(arguments) = arguments {
                    partial.arguments.push_str(&arguments);
                }
            }
            if let Some(reason) = choice.finish_reason.filter(|reason| !reason.is_empty()) {
                self.finish_reason = Some(reason);
            }
        }
        (!text.is_empty()).then_some(text)
    }

    /// The completion, once the stream has ended.
    fn finish(self) -> Result<Completion, LlmError> {
        let Some(raw_reason) = self.finish_reason else {
            return Err(LlmError::transient(
                "the model's stream ended without a finish_reason",
            ));
        };
        let finish_reason = finish_reason(&raw_reason, !self.calls.is_empty());
        let mut tool_calls = Vec::with_capacity(self.calls.len());
        for (n, call) in self.calls.into_iter().enumerate() {
            if call.name.is_empty() {
                return Err(LlmError::Permanent(format!(
                    "the model called a tool without a name (call {})",
                    call.index
                )));
            }
            tool_calls.push(ToolCall {
                id: if call.id.is_empty() {
                    format!("call_{}", n + 1)
                } else {
                    call.id
                },
                name: call.name,
                // A call of a tool without parameters may come with no arguments at all.
                arguments: if call.arguments.trim().is_empty() {
                    "{}".into()
                } else {
                    call.arguments
                },
            });
        }
        Ok(Completion {
            tool_calls,
            usage: self.usage.unwrap_or_default(),
            finish_reason,
        })
    }
}

/// A chat stream being read, with its timeouts.
struct Reading {
    inner: StreamResponse<Value>,
    assembler: Assembler,
    deadline: Instant,
    request_timeout: Duration,
    idle_timeout: Duration,
    finished: bool,
}

impl Reading {
    /// The next event; `None` after `Done` or an error.
    async fn next_event(&mut self) -> Option<Result<ChatEvent, LlmError>> {
        if self.finished {
            return None;
        }
        loop {
            let idle_limit = Instant::now() + self.idle_timeout;
            let whole_request = self.deadline <= idle_limit;
            let limit = if whole_request {
                self.deadline
            } else {
                idle_limit
            };
            let item = match tokio::time::timeout_at(limit, self.inner.next()).await {
                Ok(item) => item,
                Err(_) => {
                    self.finished = true;
                    let reason = if whole_request {
                        format!(
                            "the model did not finish its answer within {:?}",
                            self.request_timeout
                        )
                    } else {
                        format!(
                            "the model sent nothing for {:?} (idle timeout)",
                            self.idle_timeout
                        )
                    };
                    return Some(Err(LlmError::transient(reason)));
                }
            };
            match item {
                Some(Ok(chunk)) => match wire::Completion::decode(chunk) {
                    Ok(chunk) => {
                        if let Some(text) = self.assembler.push(chunk) {
                            return Some(Ok(ChatEvent::Text(text)));
                        }
                    }
                    Err(error) => {
                        self.finished = true;
                        return Some(Err(error));
                    }
                },
                Some(Err(error)) => {
                    self.finished = true;
                    return Some(Err(llm_error(error)));
                }
                None => {
                    self.finished = true;
                    let assembler = std::mem::take(&mut self.assembler);
                    return Some(assembler.finish().map(ChatEvent::Done));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use axum::body::Body;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::response::Response;
    use bytes::Bytes;

    use super::*;

    /// Every test is bounded.
    const LIMIT: Duration = Duration::from_secs(10);

    // --- the assembler -------------------------------------------------------------------------

    fn chunk(value: Value) -> wire::Completion {
        let mut chunk = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
                               "created": 1, "model": "m", "choices": []});
        for (key, value) in value.as_object().expect("an object") {
            chunk[key] = value.clone();
        }
        serde_json::from_value(chunk).expect("a chunk")
    }

    fn delta(delta: Value, finish_reason: Option<&str>) -> wire::Completion {
        chunk(json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}))
    }

    fn call_delta(index: u32, id: Option<&str>, name: Option<&str>, args: &str) -> Value {
        let mut call = json!({"index": index, "function": {"arguments": args}});
        if let Some(id) = id {
            call["id"] = id.into();
            call["type"] = "function".into();
        }
        if let Some(name) = name {
            call["function"]["name"] = name.into();
        }
        json!({"tool_calls": [call]})
    }

    #[test]
    fn assembler_passes_text_and_joins_split_arguments() {
        let mut assembler = Assembler::default();
        assert_eq!(
            assembler.push(delta(json!({"role": "assistant", "content": ""}), None)),
            None
        );
        assert_eq!(
            assembler.push(delta(json!({"content": "Let me"}), None)),
            Some("Let me".into())
        );
        assembler.push(delta(
            call_delta(0, Some("call_a"), Some("get_order_status"), ""),
            None,
        ));
        for piece in ["{\"order", "_id\": \"10", "04\"}"] {
            assert_eq!(
                assembler.push(delta(call_delta(0, None, None, piece), None)),
                None
            );
        }
        assembler.push(delta(json!({}), Some("tool_calls")));
        let completion = assembler.finish().expect("a completion");
        assert_eq!(completion.finish_reason, "tool_calls");
        assert_eq!(
            completion.tool_calls,
            vec![ToolCall {
                id: "call_a".into(),
                name: "get_order_status".into(),
                arguments: r#"{"order_id": "1004"}"#.into(),
            }]
        );
        assert_eq!(completion.usage, TokenUsage::default());
    }

    #[test]
    fn assembler_keeps_two_calls_apart_by_index() {
        let mut assembler = Assembler::default();
        assembler.push(delta(
            call_delta(0, Some("call_1"), Some("first"), "{\"a\""),
            None,
        ));
        assembler.push(delta(
            call_delta(1, Some("call_2"), Some("second"), "{\"b\""),
            None,
        ));
        assembler.push(delta(call_delta(0, None, None, ": 1}"), None));
        assembler.push(delta(call_delta(1, None, None, ": 2}"), None));
        // A tool without parameters, called with no arguments at all.
        assembler.push(delta(
            call_delta(2, Some("call_3"), Some("third"), ""),
            None,
        ));
        assembler.push(delta(json!({}), Some("tool_calls")));
        let calls = assembler.finish().expect("a completion").tool_calls;
        let summary: Vec<(&str, &str, &str)> = calls
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("call_1", "first", "{\"a\": 1}"),
                ("call_2", "second", "{\"b\": 2}"),
                ("call_3", "third", "{}"),
            ]
        );
    }

    #[test]
    fn assembler_separates_calls_that_share_index_zero() {
        let mut assembler = Assembler::default();
        assembler.push(delta(call_delta(0, Some("x"), Some("one"), "{}"), None));
        assembler.push(delta(call_delta(0, Some("y"), Some("two"), "{}"), None));
        assembler.push(delta(json!({}), Some("tool_calls")));
        let calls = assembler.finish().expect("a completion").tool_calls;
        assert_eq!(calls.len(), 2);
        assert_eq!((calls[0].id.as_str(), calls[1].id.as_str()), ("x", "y"));
    }

    #[test]
    fn assembler_takes_usage_from_the_last_chunk() {
        let mut assembler = Assembler::default();
        assembler.push(delta(json!({"content": "Hi"}), None));
        assembler.push(delta(json!({}), Some("stop")));
        assembler.push(chunk(json!({"choices": [], "usage": {
            "prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}})));
        let completion = assembler.finish().expect("a completion");
        assert_eq!(completion.finish_reason, "stop");
        assert!(completion.tool_calls.is_empty());
        assert_eq!(
            completion.usage,
            TokenUsage {
                prompt_tokens: 12,
                completion_tokens: 3
            }
        );
    }

    #[test]
    fn chunks_of_compatible_servers_need_only_what_the_turn_reads() {
        let mut assembler = Assembler::default();
        let bare = |value: Value| wire::Completion::decode(value).expect("decodes");
        assert_eq!(
            assembler.push(bare(json!({"choices": [{"delta": {"content": "Hi"}}]}))),
            Some("Hi".into())
        );
        assembler.push(bare(
            json!({"choices": [{"delta": {}, "finish_reason": "eos"}],
                                   "usage": {"prompt_tokens": 3, "completion_tokens": 1}}),
        ));
        let completion = assembler.finish().expect("a completion");
        assert_eq!(completion.finish_reason, "stop", "eos read as stop");
        assert_eq!(completion.usage.prompt_tokens, 3);
        assert_eq!(finish_reason("end_turn", true), "tool_calls");
        assert_eq!(finish_reason("length", false), "length");
        let error = wire::Completion::decode(
            json!({"error": {"message": format!("Traceback {}", "x".repeat(5000))}}),
        )
        .expect_err("an error in place of a chunk");
        assert!(error.is_transient());
        assert!(error.to_string().len() < 700, "bounded: {error}");
    }

    #[test]
    fn a_stream_without_finish_reason_was_cut() {
        let mut assembler = Assembler::default();
        assembler.push(delta(json!({"content": "Hi"}), None));
        let error = assembler.finish().expect_err("cut");
        assert!(error.is_transient());
        assert_eq!(
            error.to_string(),
            "the model's stream ended without a finish_reason"
        );
    }

    #[test]
    fn a_call_without_a_name_is_permanent() {
        let mut assembler = Assembler::default();
        assembler.push(delta(call_delta(0, Some("c"), None, "{}"), None));
        assembler.push(delta(json!({}), Some("tool_calls")));
        assert!(!assembler.finish().expect_err("no name").is_transient());
    }

    // --- Retry-After and error classification --------------------------------------------------

    #[test]
    fn retry_after_parses_seconds_dates_and_milliseconds() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        let delay = parse_retry_after(&later).expect("a date");
        assert!(
            delay > Duration::from_secs(100) && delay <= Duration::from_secs(120),
            "{delay:?}"
        );

        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));
    }

    fn status_error(status: u16, retry_after: Option<&str>, body: &str) -> LlmError {
        let mut headers = HeaderMap::new();
        if let Some(value) = retry_after {
            headers.insert("retry-after", HeaderValue::from_str(value).expect("header"));
        }
        let error = HttpStatusError::new(status, &headers, body.as_bytes());
        // Through the same path as a real call: boxed by the HTTP service, then mapped.
        llm_error(OpenAIError::Boxed(Box::new(error)))
    }

    #[test]
    fn statuses_map_to_transient_or_permanent() {
        let rate_limited = status_error(
            429,
            Some("2"),
            r#"{"error":{"message":"Rate limit reached","type":"rate_limit_error"}}"#,
        );
        assert!(rate_limited.is_transient());
        assert_eq!(rate_limited.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(
            rate_limited.to_string(),
            "the model server answered 429: Rate limit reached"
        );

        let server = status_error(500, None, "upstream exploded");
        assert!(server.is_transient());
        assert_eq!(server.retry_after(), None);
        assert!(server.to_string().contains("upstream exploded"), "{server}");
        assert!(status_error(503, Some("1"), "").is_transient());
        assert!(status_error(408, None, "").is_transient());

        let bad = status_error(
            400,
            None,
            r#"{"error":{"message":"Invalid schema","type":"invalid_request_error"}}"#,
        );
        assert!(!bad.is_transient());
        assert_eq!(
            bad.to_string(),
            "the model server answered 400: Invalid schema"
        );
        assert!(!status_error(401, None, "").is_transient());
        assert!(!status_error(404, None, "").is_transient());
        // Out of quota: retrying will not help.
        let quota = status_error(
            429,
            None,
            r#"{"error":{"message":"You exceeded your quota","type":"insufficient_quota"}}"#,
        );
        assert!(!quota.is_transient());
    }

    #[test]
    fn other_failures_map_by_kind() {
        let stream = OpenAIError::StreamError(Box::new(
            async_openai::error::StreamError::EventStream("reset".into()),
        ));
        assert!(llm_error(stream).is_transient());
        let bad_json = serde_json::from_str::<Value>("{").expect_err("bad");
        assert!(!llm_error(OpenAIError::JSONDeserialize(bad_json, "{".into())).is_transient());
        let in_stream = serde_json::from_str::<Value>("x").expect_err("bad");
        let error = llm_error(OpenAIError::JSONDeserialize(
            in_stream,
            r#"{"error":{"message":"overloaded"}}"#.into(),
        ));
        assert!(error.is_transient());
        assert!(error.to_string().contains("overloaded"));
    }

    #[test]
    fn classification_content_parses_or_is_permanent() {
        let parsed = parse_classification(
            "```json\n{\"intents\":[{\"agent\":\"orders\",\"confidence\":0.8}],\
             \"ambiguous\":false,\"clarification\":null}\n```",
        )
        .expect("parses");
        assert_eq!(parsed.intents[0].agent, "orders");
        assert!(!parse_classification("orders")
            .expect_err("not JSON")
            .is_transient());
        assert!(!parse_classification(r#"{"intents": "orders"}"#)
            .expect_err("wrong shape")
            .is_transient());
    }

    // --- against a canned HTTP server ----------------------------------------------------------

    /// What the canned server answers to one request.
    enum Canned {
        /// 200 `text/event-stream` with these `data:` payloads, each followed by a blank line.
        Sse(Vec<String>),
        /// 200 `text/event-stream`: these payloads, then the connection stays open and silent.
        SseThenSilence(Vec<String>),
        /// 200 `text/event-stream`: one payload every `every`, forever.
        SseForever(Duration),
        /// 200 `text/event-stream`: these payloads, then the connection is aborted once the
        /// test says so.
        SseThenAbort(Vec<String>, Arc<tokio::sync::Notify>),
        Json(Value),
        Status(u16, Option<&'static str>, &'static str),
        /// Never answers.
        Hang,
    }

    #[derive(Clone, Default)]
    struct Canner {
        answers: Arc<Mutex<VecDeque<Canned>>>,
        requests: Arc<Mutex<Vec<Value>>>,
    }

    impl Canner {
        fn requests(&self) -> Vec<Value> {
            self.requests.lock().expect("lock").clone()
        }
    }

    fn sse(payloads: &[String]) -> String {
        payloads.iter().map(|p| format!("data: {p}\n\n")).collect()
    }

    fn event_stream(body: Body) -> Response {
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .expect("a response")
    }

    async fn answer(State(canner): State<Canner>, body: Bytes) -> Response {
        let request = serde_json::from_slice(&body).unwrap_or(Value::Null);
        canner.requests.lock().expect("lock").push(request);
        let canned = canner.answers.lock().expect("lock").pop_front();
        match canned.expect("a canned answer for every request") {
            Canned::Sse(payloads) => event_stream(Body::from(sse(&payloads))),
            Canned::SseThenSilence(payloads) => {
                let first = Ok::<_, Infallible>(Bytes::from(sse(&payloads)));
                event_stream(Body::from_stream(
                    stream::once(async move { first }).chain(stream::pending()),
                ))
            }
            Canned::SseForever(every) => {
                let ticks = stream::unfold((), move |()| async move {
                    tokio::time::sleep(every).await;
                    let payload = delta_json(json!({"content": "."}), None);
                    Some((Ok::<_, Infallible>(Bytes::from(sse(&[payload]))), ()))
                });
                event_stream(Body::from_stream(ticks))
            }
            Canned::SseThenAbort(payloads, abort) => {
                let first = Ok::<_, std::io::Error>(Bytes::from(sse(&payloads)));
                let abort = async move {
                    abort.notified().await;
                    Err(std::io::Error::other("abort"))
                };
                event_stream(Body::from_stream(
                    stream::once(async move { first }).chain(stream::once(abort)),
                ))
            }
            Canned::Json(value) => Response::builder()
                .header("content-type", "application/json")
                .body(Body::from(value.to_string()))
                .expect("a response"),
            Canned::Status(status, retry_after, body) => {
                let mut response = Response::builder()
                    .status(StatusCode::from_u16(status).expect("a status"))
                    .header("content-type", "application/json");
                if let Some(value) = retry_after {
                    response = response.header("retry-after", value);
                }
                response.body(Body::from(body)).expect("a response")
            }
            Canned::Hang => std::future::pending().await,
        }
    }

    /// Serves `answers` in order; returns the base URL (with `/v1`) and the recorder.
    async fn serve(answers: Vec<Canned>) -> (String, Canner) {
        let canner = Canner::default();
        canner.answers.lock().expect("lock").extend(answers);
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(answer))
            .with_state(canner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/v1"), canner)
    }

    fn model(base_url: &str, request_timeout: Duration, idle_timeout: Duration) -> OpenAiModel {
        OpenAiModel::new(OpenAiSettings {
            base_url: base_url.into(),
            api_key: None,
            model: "test-model".into(),
            request_timeout,
            idle_timeout,
        })
        .expect("a model")
    }

    fn quick(base_url: &str) -> OpenAiModel {
        model(base_url, Duration::from_secs(5), Duration::from_secs(5))
    }

    fn delta_json(delta: Value, finish_reason: Option<&str>) -> String {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
               "model": "test-model",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})
        .to_string()
    }

    fn usage_json(prompt: u32, completion: u32) -> String {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
               "model": "test-model", "choices": [],
               "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                         "total_tokens": prompt + completion}})
        .to_string()
    }

    fn tools() -> Vec<ToolDefinition> {
        vec![ToolDefinition {
            name: "get_order_status".into(),
            description: "Look up an order.".into(),
            parameters: json!({"type": "object", "properties": {"order_id": {"type": "string"}},
                               "required": ["order_id"]}),
        }]
    }

    /// Runs a chat and collects what its stream yields, up to and including the first error.
    async fn chat(
        model: &OpenAiModel,
        messages: &[ChatMessage],
        tools: &[ToolDefinition],
    ) -> Result<Vec<Result<ChatEvent, LlmError>>, LlmError> {
        let request = ChatRequest {
            model: "",
            agent: "orders",
            messages,
            tools,
        };
        let run = async {
            let mut stream = model.chat(request).await?;
            let mut events = Vec::new();
            while let Some(event) = stream.next().await {
                events.push(event);
            }
            Ok(events)
        };
        tokio::time::timeout(LIMIT, run).await.expect("in time")
    }

    fn user(content: &str) -> Vec<ChatMessage> {
        vec![
            ChatMessage::System {
                content: "You help.".into(),
            },
            ChatMessage::User {
                content: content.into(),
            },
        ]
    }

    #[tokio::test]
    async fn a_chat_streams_text_then_assembled_tool_calls() {
        let stream = vec![
            delta_json(json!({"role": "assistant", "content": ""}), None),
            delta_json(json!({"content": "Checking"}), None),
            delta_json(json!({"content": " now."}), None),
            delta_json(
                call_delta(0, Some("call_1"), Some("get_order_status"), "{\"ord"),
                None,
            ),
            delta_json(call_delta(0, None, None, "er_id\":\"10"), None),
            delta_json(call_delta(0, None, None, "04\"}"), None),
            delta_json(json!({}), Some("tool_calls")),
            usage_json(10, 7),
            "[DONE]".into(),
        ];
        let (url, canner) = serve(vec![Canned::Sse(stream)]).await;
        let events = chat(&quick(&url), &user("Where is order 1004?"), &tools())
            .await
            .expect("opens");
        assert_eq!(
            events,
            vec![
                Ok(ChatEvent::Text("Checking".into())),
                Ok(ChatEvent::Text(" now.".into())),
                Ok(ChatEvent::Done(Completion {
                    tool_calls: vec![ToolCall {
                        id: "call_1".into(),
                        name: "get_order_status".into(),
                        arguments: r#"{"order_id":"1004"}"#.into(),
                    }],
                    usage: TokenUsage {
                        prompt_tokens: 10,
                        completion_tokens: 7
                    },
                    finish_reason: "tool_calls".into(),
                })),
            ]
        );
        let request = &canner.requests()[0];
        assert_eq!(request["model"], "test-model");
        assert_eq!(request["stream"], true);
        assert_eq!(request["stream_options"]["include_usage"], true);
        assert_eq!(request["tools"][0]["type"], "function");
        assert_eq!(request["tools"][0]["function"]["name"], "get_order_status");
        assert_eq!(
            request["tools"][0]["function"]["parameters"]["required"][0],
            "order_id"
        );
        assert_eq!(request["messages"][0]["role"], "system");
        assert_eq!(request["messages"][1]["content"], "Where is order 1004?");
        assert!(request.get("response_format").is_none());
    }

    #[tokio::test]
    async fn a_chat_sends_tool_calls_and_results_in_function_calling_form() {
        let stream = vec![
            delta_json(json!({"role": "assistant", "content": "Shipped."}), None),
            delta_json(json!({}), Some("stop")),
            "[DONE]".into(),
        ];
        let (url, canner) = serve(vec![Canned::Sse(stream)]).await;
        let mut messages = user("Where is order 1004?");
        messages.push(ChatMessage::Assistant {
            content: String::new(),
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                name: "get_order_status".into(),
                arguments: r#"{"order_id":"1004"}"#.into(),
            }],
        });
        messages.push(ChatMessage::Tool {
            tool_call_id: "call_1".into(),
            content: r#"{"status":"shipped"}"#.into(),
        });
        messages.push(ChatMessage::Assistant {
            content: "Earlier answer.".into(),
            tool_calls: Vec::new(),
        });
        let events = chat(&quick(&url), &messages, &[]).await.expect("opens");
        assert_eq!(events[0], Ok(ChatEvent::Text("Shipped.".into())));
        // No usage chunk: zeros.
        assert_eq!(
            events[1],
            Ok(ChatEvent::Done(Completion {
                tool_calls: Vec::new(),
                usage: TokenUsage::default(),
                finish_reason: "stop".into(),
            }))
        );
        let request = &canner.requests()[0];
        assert!(request.get("tools").is_none(), "no tools, no `tools`");
        let assistant = &request["messages"][2];
        assert_eq!(assistant["role"], "assistant");
        assert!(assistant.get("content").is_none());
        assert_eq!(
            assistant["tool_calls"],
            json!([{"id": "call_1", "type": "function",
                    "function": {"name": "get_order_status", "arguments": "{\"order_id\":\"1004\"}"}}])
        );
        assert_eq!(
            request["messages"][3],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "{\"status\":\"shipped\"}"})
        );
        assert_eq!(
            request["messages"][4],
            json!({"role": "assistant", "content": "Earlier answer."})
        );
    }

    #[tokio::test]
    async fn rate_limits_and_server_errors_are_transient_client_errors_permanent() {
        let (url, canner) = serve(vec![
            Canned::Status(
                429,
                Some("2"),
                r#"{"error":{"message":"Rate limit","type":"rate_limit_error"}}"#,
            ),
            Canned::Status(500, None, "oops"),
            Canned::Status(
                400,
                None,
                r#"{"error":{"message":"Bad tools","type":"invalid_request_error"}}"#,
            ),
        ])
        .await;
        let model = quick(&url);
        let limited = chat(&model, &user("hi"), &[]).await.expect_err("429");
        assert_eq!(
            limited,
            LlmError::Transient {
                reason: "the model server answered 429: Rate limit".into(),
                retry_after: Some(Duration::from_secs(2)),
            }
        );
        let failed = chat(&model, &user("hi"), &[]).await.expect_err("500");
        assert!(failed.is_transient());
        assert!(failed.to_string().contains("500"), "{failed}");
        let bad = chat(&model, &user("hi"), &[]).await.expect_err("400");
        assert_eq!(
            bad,
            LlmError::Rejected("the model server answered 400: Bad tools".into())
        );
        // One request each: no retries inside the provider.
        assert_eq!(canner.requests().len(), 3);
    }

    #[tokio::test]
    async fn a_cut_stream_is_transient() {
        let text = delta_json(json!({"content": "Half"}), None);
        let abort = Arc::new(tokio::sync::Notify::new());
        let (url, _canner) = serve(vec![
            Canned::Sse(vec![text.clone()]),
            Canned::SseThenAbort(vec![text], abort.clone()),
        ])
        .await;
        let model = quick(&url);
        // The body ends cleanly, without a finish_reason or [DONE].
        let events = chat(&model, &user("hi"), &[]).await.expect("opens");
        assert_eq!(
            events,
            vec![
                Ok(ChatEvent::Text("Half".into())),
                Err(LlmError::transient(
                    "the model's stream ended without a finish_reason"
                )),
            ]
        );
        // The connection breaks mid-body.
        let messages = user("hi");
        let request = ChatRequest {
            model: "",
            agent: "orders",
            messages: &messages,
            tools: &[],
        };
        let run = async {
            let mut stream = model.chat(request).await.expect("opens");
            assert_eq!(
                stream.next().await,
                Some(Ok(ChatEvent::Text("Half".into())))
            );
            abort.notify_one();
            let error = stream.next().await.expect("an event").expect_err("cut");
            assert!(error.is_transient(), "{error}");
            assert_eq!(stream.next().await, None);
        };
        tokio::time::timeout(LIMIT, run).await.expect("in time");
    }

    #[tokio::test]
    async fn a_silent_stream_hits_the_idle_timeout() {
        let text = delta_json(json!({"content": "Hmm"}), None);
        let (url, _canner) = serve(vec![Canned::SseThenSilence(vec![text])]).await;
        let model = model(&url, Duration::from_secs(30), Duration::from_millis(300));
        let events = chat(&model, &user("hi"), &[]).await.expect("opens");
        assert_eq!(events[0], Ok(ChatEvent::Text("Hmm".into())));
        let error = events[1].clone().expect_err("idle");
        assert!(error.is_transient());
        assert!(error.to_string().contains("idle timeout"), "{error}");
        assert_eq!(events.len(), 2);
    }

    #[tokio::test]
    async fn a_slow_endless_stream_hits_the_request_deadline() {
        let (url, _canner) = serve(vec![Canned::SseForever(Duration::from_millis(50))]).await;
        let model = model(&url, Duration::from_millis(500), Duration::from_secs(5));
        let events = chat(&model, &user("hi"), &[]).await.expect("opens");
        let error = events
            .last()
            .cloned()
            .expect("events")
            .expect_err("deadline");
        assert!(error.is_transient());
        assert!(error.to_string().contains("did not finish"), "{error}");
        assert!(events.len() > 2, "text came before the deadline");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_hits_the_request_deadline() {
        let (url, _canner) = serve(vec![Canned::Hang, Canned::Hang]).await;
        let model = model(&url, Duration::from_millis(300), Duration::from_millis(200));
        let error = chat(&model, &user("hi"), &[]).await.expect_err("hangs");
        assert!(error.is_transient());
        assert!(error.to_string().contains("did not start"), "{error}");
        let classify = ClassifyRequest {
            model: "",
            message: "hi",
            agents: &[],
        };
        let error = tokio::time::timeout(LIMIT, model.classify(classify))
            .await
            .expect("in time")
            .expect_err("hangs");
        assert!(error.is_transient());
    }

    #[tokio::test]
    async fn an_unreachable_server_is_transient() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        drop(listener);
        let model = quick(&format!("http://{addr}/v1"));
        let error = chat(&model, &user("hi"), &[]).await.expect_err("refused");
        assert!(error.is_transient(), "{error}");
    }

    fn agents() -> Vec<AgentCard> {
        ["orders", "billing", "general"]
            .into_iter()
            .map(|name| AgentCard {
                name: name.into(),
                description: format!("The {name} desk."),
            })
            .collect()
    }

    fn completion_json(content: &str) -> Value {
        json!({"id": "chatcmpl-2", "object": "chat.completion", "created": 1,
               "model": "test-model",
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": content}}],
               "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}})
    }

    #[tokio::test]
    async fn classify_sends_the_schema_and_parses_the_answer() {
        let content = json!({"intents": [{"agent": "orders", "confidence": 0.9},
                                         {"agent": "billing", "confidence": 0.7}],
                             "ambiguous": false, "clarification": null})
        .to_string();
        let (url, canner) = serve(vec![
            Canned::Json(completion_json(&content)),
            Canned::Json(completion_json("I think orders")),
            Canned::Status(429, Some("1"), r#"{"error":{"message":"slow down"}}"#),
        ])
        .await;
        let model = quick(&url);
        let agents = agents();
        let request = ClassifyRequest {
            model: "classifier-model",
            message: "Where is order 1004, and send me its invoice",
            agents: &agents,
        };
        let classified = tokio::time::timeout(LIMIT, model.classify(request))
            .await
            .expect("in time")
            .expect("classified");
        let classification = classified
            .classification
            .as_ref()
            .expect("a classification");
        let agents_named: Vec<&str> = classification
            .intents
            .iter()
            .map(|intent| intent.agent.as_str())
            .collect();
        assert_eq!(agents_named, ["orders", "billing"]);
        assert!(!classification.ambiguous);
        assert_eq!(
            classified.usage,
            TokenUsage {
                prompt_tokens: 40,
                completion_tokens: 9
            }
        );

        let sent = &canner.requests()[0];
        assert_eq!(sent["model"], "classifier-model");
        assert!(sent.get("stream").is_none());
        let format = &sent["response_format"];
        assert_eq!(format["type"], "json_schema");
        assert_eq!(format["json_schema"]["name"], "intent_classification");
        assert_eq!(format["json_schema"]["strict"], true);
        let schema = &format["json_schema"]["schema"];
        assert_eq!(
            schema["required"],
            json!(["intents", "ambiguous", "clarification"])
        );
        assert_eq!(
            schema["properties"]["intents"]["items"]["properties"]["agent"]["enum"],
            json!(["orders", "billing", "general"])
        );
        let system = sent["messages"][0]["content"].as_str().expect("a prompt");
        assert!(system.contains("- billing: The billing desk."), "{system}");
        assert_eq!(
            sent["messages"][1]["content"],
            "Where is order 1004, and send me its invoice"
        );

        // An answer that is not the classification still reports what it cost.
        let invalid = tokio::time::timeout(LIMIT, model.classify(request))
            .await
            .expect("in time")
            .expect("answered");
        let reason = invalid.classification.expect_err("not JSON");
        assert!(reason.contains("not the expected JSON"), "{reason}");
        assert_eq!(invalid.usage.prompt_tokens, 40);
        let limited = tokio::time::timeout(LIMIT, model.classify(request))
            .await
            .expect("in time")
            .expect_err("429");
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn bad_settings_are_refused() {
        let settings = |base_url: &str, api_key: Option<&str>| OpenAiSettings {
            base_url: base_url.into(),
            api_key: api_key.map(str::to_owned),
            model: "m".into(),
            request_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        };
        assert!(OpenAiModel::new(settings("https://api.openai.com/v1", Some("sk-x"))).is_ok());
        assert!(OpenAiModel::new(settings("not a url", None)).is_err());
        assert!(OpenAiModel::new(settings("ftp://example.com/v1", None)).is_err());
        assert!(OpenAiModel::new(settings("http://x/v1", Some("bad\nkey"))).is_err());
    }
}
