//! A fake OpenAI-compatible server for the end-to-end tests of `LLM_PROVIDER=openai`.
//!
//! It serves `POST /v1/chat/completions` in OpenAI's exact wire format, from two queues of
//! canned [`Reply`]s that the test fills:
//! - requests that carry `response_format` (the classification) take the next reply pushed with
//!   [`FakeOpenAi::push_classification`];
//! - every other request (the agents' chats) takes the next one pushed with
//!   [`FakeOpenAi::push_chat`].
//!
//! When a queue is empty the defaults answer: a classification routing to `general`
//! (`{"intents":[{"agent":"general","confidence":0.9}],"ambiguous":false,"clarification":null}`)
//! and the chat text `"Hello from the fake."` in four chunks.
//!
//! A request with `"stream": true` gets `text/event-stream`: one `data: {chunk}\n\n` per
//! `chat.completion.chunk` (the first carries `role`, then content pieces or tool-call deltas
//! whose first delta alone has `id`, `type` and `name` and whose arguments come in about three
//! pieces), a last chunk with `finish_reason`, then, if the request asked
//! `stream_options.include_usage`, a usage chunk with `choices: []`, then `data: [DONE]`.
//! Any other request gets one `chat.completion` object.
//!
//! Usage, so that tests can assert sums: `prompt_tokens` is always 10; `completion_tokens` is
//! the number of content chunks of a [`Reply::Text`], and 5 for tool calls and classifications.
//! Tool-call ids are `call_1`, `call_2`, … numbered across the whole fake, so they never repeat.
//!
//! Every request body is recorded, in the order the requests arrived ([`FakeOpenAi::requests`]),
//! with the time it arrived ([`FakeOpenAi::request_times`]).
//!
//! [`Reply::RawSse`] streams chunks exactly as the test wrote them, for servers that are only
//! OpenAI-compatible (no `id`, `created` or `object`, their own finish reasons…).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::Response;
use futures_util::stream;
use serde_json::{json, Value};

/// `prompt_tokens` of every reply.
pub const PROMPT_TOKENS: u64 = 10;
/// `completion_tokens` of a tool-call or classification reply.
pub const FIXED_COMPLETION_TOKENS: u64 = 5;

/// What the fake answers to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// These content chunks, then `finish_reason: "stop"`. Non-streaming: their concatenation.
    Text(Vec<String>),
    /// One tool call per `(name, arguments)`, then `finish_reason: "tool_calls"`. Streamed, the
    /// arguments' JSON text is split into about three pieces.
    ToolCalls(Vec<(String, Value)>),
    /// A message whose content is this JSON, serialized (streamed: as one content chunk).
    Classification(Value),
    /// An error answer: this status, `Retry-After: <seconds>` if given, this JSON body (such as
    /// `{"error":{"message":"Rate limit","type":"rate_limit_error"}}`).
    Status {
        status: u16,
        retry_after: Option<u64>,
        body: Value,
    },
    /// Accepts the request and never answers (the client gives up, or the test ends).
    Hang,
    /// Streamed: each of these values as one `data:` line, exactly as given, then `[DONE]`.
    /// Non-streaming: not content (a 500).
    RawSse(Vec<Value>),
    /// Streamed: these content chunks, then the response ends and the connection closes, with
    /// no `finish_reason`, no usage and no `[DONE]`. Non-streaming: the connection breaks
    /// before an answer.
    CutAfter(Vec<String>),
}

impl Reply {
    /// The default classification: route to `general`.
    pub fn default_classification() -> Self {
        Self::Classification(default_classification_json())
    }

    /// The default chat answer: "Hello from the fake." in four chunks.
    pub fn default_chat() -> Self {
        Self::Text(
            ["Hello", " from", " the", " fake."]
                .into_iter()
                .map(str::to_owned)
                .collect(),
        )
    }
}

/// Installs rustls' ring provider as the process default, unless one is installed already.
pub fn install_crypto_provider() {
    let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
}

fn default_classification_json() -> Value {
    json!({"intents": [{"agent": "general", "confidence": 0.9}],
           "ambiguous": false, "clarification": null})
}

#[derive(Debug, Default)]
struct Queues {
    classification: VecDeque<Reply>,
    chat: VecDeque<Reply>,
    requests: Vec<Value>,
    /// When each request arrived.
    times: Vec<std::time::Instant>,
}

#[derive(Debug, Default)]
struct Shared {
    queues: Mutex<Queues>,
    next_call: AtomicU64,
    next_completion: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        // A test that panicked while holding the lock left consistent data behind.
        self.queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct Server {
    shared: Arc<Shared>,
    base_url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running fake; clones share it. It stops accepting connections when the last clone is
/// dropped (requests already hanging stay so until the runtime ends).
#[derive(Clone)]
pub struct FakeOpenAi {
    server: Arc<Server>,
}

impl std::fmt::Debug for FakeOpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeOpenAi")
            .field("base_url", &self.server.base_url)
            .finish_non_exhaustive()
    }
}

impl FakeOpenAi {
    /// Listens on 127.0.0.1 (a free port) and serves on the current tokio runtime.
    ///
    /// Also installs rustls' ring crypto provider for the test process: in a workspace build
    /// reqwest is compiled with the worker's `rustls-no-provider`, and then panics when a client
    /// is built with no provider installed.
    pub async fn start() -> Self {
        install_crypto_provider();
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(completions))
            .fallback(not_found)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the fake OpenAI server binds");
        let addr = listener.local_addr().expect("the fake's address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            server: Arc::new(Server {
                shared,
                base_url: format!("http://{addr}/v1"),
                task,
            }),
        }
    }

    /// `http://127.0.0.1:PORT/v1`: what `OPENAI_BASE_URL` takes.
    pub fn base_url(&self) -> String {
        self.server.base_url.clone()
    }

    /// A stack whose worker talks to this fake: `LLM_PROVIDER=openai`, `gpt-4o-mini`.
    pub fn stack_options(&self) -> crate::StackOptions {
        crate::StackOptions::default()
            .with("LLM_PROVIDER", "openai")
            .with("OPENAI_BASE_URL", &self.base_url())
            .with("LLM_MODEL", "gpt-4o-mini")
    }

    /// Queues the answer to the next request that carries `response_format`.
    pub fn push_classification(&self, reply: Reply) {
        self.server.shared.lock().classification.push_back(reply);
    }

    /// Queues the answer to the next request without `response_format`.
    pub fn push_chat(&self, reply: Reply) {
        self.server.shared.lock().chat.push_back(reply);
    }

    /// Every request body received, in order (`null` for a body that is not JSON).
    pub fn requests(&self) -> Vec<Value> {
        self.server.shared.lock().requests.clone()
    }

    /// When each request arrived, in order.
    pub fn request_times(&self) -> Vec<std::time::Instant> {
        self.server.shared.lock().times.clone()
    }

    pub fn request_count(&self) -> usize {
        self.server.shared.lock().requests.len()
    }

    /// Replies queued and not yet used: `(classification, chat)`.
    pub fn pending(&self) -> (usize, usize) {
        let queues = self.server.shared.lock();
        (queues.classification.len(), queues.chat.len())
    }
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "The fake serves POST /v1/chat/completions only.",
        "invalid_request_error",
    )
}

fn error_response(status: StatusCode, message: &str, kind: &str) -> Response {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": null, "code": null}}),
    )
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

async fn completions(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: Option<Value> = serde_json::from_slice(&body).ok();
    let reply = {
        let mut queues = shared.lock();
        queues.requests.push(request.clone().unwrap_or(Value::Null));
        queues.times.push(std::time::Instant::now());
        match &request {
            None => None,
            Some(request) if request.get("response_format").is_some() => Some(
                queues
                    .classification
                    .pop_front()
                    .unwrap_or_else(Reply::default_classification),
            ),
            Some(_) => Some(queues.chat.pop_front().unwrap_or_else(Reply::default_chat)),
        }
    };
    let (Some(request), Some(reply)) = (request, reply) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "The body is not JSON.",
            "invalid_request_error",
        );
    };
    let answer = Answer {
        shared: &shared,
        id: format!(
            "chatcmpl-fake{}",
            shared.next_completion.fetch_add(1, Ordering::Relaxed) + 1
        ),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_secs())
            .unwrap_or_default(),
        model: request["model"].as_str().unwrap_or("fake").to_owned(),
        include_usage: request["stream_options"]["include_usage"] == true,
    };
    match reply {
        Reply::Status {
            status,
            retry_after,
            body,
        } => {
            let mut response = json_response(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                &body,
            );
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
            }
            response
        }
        Reply::Hang => std::future::pending().await,
        Reply::RawSse(chunks) if request["stream"] == true => raw_sse(chunks),
        reply if request["stream"] == true => answer.stream(reply),
        reply => answer.complete(reply),
    }
}

/// `chunks` as they are, one `data:` line each, then `[DONE]`.
fn raw_sse(chunks: Vec<Value>) -> Response {
    let mut events: Vec<Result<Bytes, Infallible>> = chunks
        .iter()
        .map(|chunk| Ok(Bytes::from(format!("data: {chunk}\n\n"))))
        .collect();
    events.push(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
    let mut response = Response::new(Body::from_stream(stream::iter(events)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    response
}

/// For `Status` and `Hang`, which are answered before a content reply is written.
fn not_content() -> Response {
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The fake has no content for this reply.",
        "server_error",
    )
}

/// Splits `text` into at most `parts` non-empty pieces of about equal length.
fn split(text: &str, parts: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    let size = chars.len().div_ceil(parts.max(1));
    chars
        .chunks(size)
        .map(|piece| piece.iter().collect())
        .collect()
}

/// One answer being written.
struct Answer<'a> {
    shared: &'a Shared,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl Answer<'_> {
    fn call_id(&self) -> String {
        format!(
            "call_{}",
            self.shared.next_call.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    fn usage(completion_tokens: u64) -> Value {
        json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion_tokens,
               "total_tokens": PROMPT_TOKENS + completion_tokens})
    }

    /// A `chat.completion` object.
    fn complete(&self, reply: Reply) -> Response {
        let (message, finish_reason, completion_tokens) = match reply {
            Reply::Text(chunks) => (
                json!({"role": "assistant", "content": chunks.concat(), "refusal": null}),
                "stop",
                chunks.len() as u64,
            ),
            Reply::Classification(value) => (
                json!({"role": "assistant", "content": value.to_string(), "refusal": null}),
                "stop",
                FIXED_COMPLETION_TOKENS,
            ),
            Reply::ToolCalls(calls) => {
                let calls: Vec<Value> = calls
                    .into_iter()
                    .map(|(name, arguments)| {
                        json!({"id": self.call_id(), "type": "function",
                               "function": {"name": name, "arguments": arguments.to_string()}})
                    })
                    .collect();
                (
                    json!({"role": "assistant", "content": null, "refusal": null,
                           "tool_calls": calls}),
                    "tool_calls",
                    FIXED_COMPLETION_TOKENS,
                )
            }
            Reply::CutAfter(_) => {
                // Headers, a piece of the body, then a broken connection.
                let partial = Ok::<_, std::io::Error>(Bytes::from(format!(
                    "{{\"id\":\"{}\",\"object\":\"chat.completion\",",
                    self.id
                )));
                let broken = Err(std::io::Error::other("the fake cut the connection"));
                let mut response =
                    Response::new(Body::from_stream(stream::iter([partial, broken])));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                return response;
            }
            Reply::Status { .. } | Reply::Hang | Reply::RawSse(_) => return not_content(),
        };
        json_response(
            StatusCode::OK,
            &json!({
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "message": message, "logprobs": null,
                             "finish_reason": finish_reason}],
                "usage": Self::usage(completion_tokens),
                "system_fingerprint": null,
            }),
        )
    }

    /// A `chat.completion.chunk` with one choice.
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null,
                         "finish_reason": finish_reason}],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// The SSE answer.
    fn stream(&self, reply: Reply) -> Response {
        let mut chunks: Vec<Value> = Vec::new();
        let cut = matches!(reply, Reply::CutAfter(_));
        let (finish_reason, completion_tokens) = match reply {
            Reply::Text(pieces) | Reply::CutAfter(pieces) => {
                chunks.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
                for piece in &pieces {
                    chunks.push(self.chunk(json!({"content": piece}), None));
                }
                ("stop", pieces.len() as u64)
            }
            Reply::Classification(value) => {
                chunks.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
                chunks.push(self.chunk(json!({"content": value.to_string()}), None));
                ("stop", FIXED_COMPLETION_TOKENS)
            }
            Reply::ToolCalls(calls) => {
                chunks.push(self.chunk(json!({"role": "assistant", "content": null}), None));
                for (index, (name, arguments)) in calls.into_iter().enumerate() {
                    chunks.push(self.chunk(
                        json!({"tool_calls": [{"index": index, "id": self.call_id(),
                                               "type": "function",
                                               "function": {"name": name, "arguments": ""}}]}),
                        None,
                    ));
                    for piece in split(&arguments.to_string(), 3) {
                        chunks.push(self.chunk(
                            json!({"tool_calls": [{"index": index,
                                                   "function": {"arguments": piece}}]}),
                            None,
                        ));
                    }
                }
                ("tool_calls", FIXED_COMPLETION_TOKENS)
            }
            Reply::Status { .. } | Reply::Hang | Reply::RawSse(_) => return not_content(),
        };
        if !cut {
            chunks.push(self.chunk(json!({}), Some(finish_reason)));
            if self.include_usage {
                chunks.push(json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "system_fingerprint": null,
                    "choices": [],
                    "usage": Self::usage(completion_tokens),
                }));
            }
        }
        let mut events: Vec<Result<Bytes, Infallible>> = chunks
            .iter()
            .map(|chunk| Ok(Bytes::from(format!("data: {chunk}\n\n"))))
            .collect();
        if !cut {
            events.push(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
        }
        let mut response = Response::new(Body::from_stream(stream::iter(events)));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-cache"),
        );
        if cut {
            // The response ends early and the connection goes with it.
            headers.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_makes_up_to_three_nonempty_pieces() {
        assert_eq!(
            split("{\"order_id\":1002}", 3).concat(),
            "{\"order_id\":1002}"
        );
        assert_eq!(split("{\"order_id\":1002}", 3).len(), 3);
        assert_eq!(split("{}", 3), ["{", "}"]);
        assert_eq!(split("", 3), [""]);
    }

    async fn post(fake: &FakeOpenAi, body: Value) -> reqwest::Response {
        install_crypto_provider();
        reqwest::Client::new()
            .post(format!("{}/chat/completions", fake.base_url()))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    fn data_lines(body: &str) -> Vec<String> {
        body.split("\n\n")
            .filter(|event| !event.is_empty())
            .map(|event| event.strip_prefix("data: ").unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn streams_split_tool_calls_then_usage_then_done() {
        let fake = FakeOpenAi::start().await;
        fake.push_chat(Reply::ToolCalls(vec![
            ("get_order_status".into(), json!({"order_id": "1002"})),
            ("search_faq".into(), json!({"query": "returns"})),
        ]));
        let response = post(
            &fake,
            json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
                   "messages": []}),
        )
        .await;
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let lines = data_lines(&response.text().await.unwrap());
        assert_eq!(lines.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = lines[..lines.len() - 1]
            .iter()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let mut arguments = [String::new(), String::new()];
        let mut pieces = [0, 0];
        for chunk in &chunks {
            for call in chunk["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let index = call["index"].as_u64().unwrap() as usize;
                if let Some(id) = call["id"].as_str() {
                    assert_eq!(id, format!("call_{}", index + 1));
                }
                let piece = call["function"]["arguments"].as_str().unwrap();
                if !piece.is_empty() {
                    pieces[index] += 1;
                }
                arguments[index].push_str(piece);
            }
        }
        assert_eq!(arguments[0], r#"{"order_id":"1002"}"#);
        assert_eq!(arguments[1], r#"{"query":"returns"}"#);
        assert_eq!(pieces, [3, 3]);
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
        let usage = &chunks[chunks.len() - 1];
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["prompt_tokens"], 10);
        assert_eq!(usage["usage"]["completion_tokens"], 5);
        assert_eq!(fake.request_count(), 1);
    }

    #[tokio::test]
    async fn classifies_without_streaming_and_falls_back_to_defaults() {
        let fake = FakeOpenAi::start().await;
        let classification = json!({"intents": [], "ambiguous": true, "clarification": "What?"});
        fake.push_classification(Reply::Classification(classification.clone()));
        for expected in [classification, default_classification_json()] {
            let response = post(
                &fake,
                json!({"model": "m", "messages": [],
                       "response_format": {"type": "json_schema"}}),
            )
            .await
            .json::<Value>()
            .await
            .unwrap();
            assert_eq!(response["object"], "chat.completion");
            let content = response["choices"][0]["message"]["content"]
                .as_str()
                .unwrap();
            assert_eq!(serde_json::from_str::<Value>(content).unwrap(), expected);
            assert_eq!(response["usage"]["completion_tokens"], 5);
        }
        // The default chat, streamed without usage: role, four pieces, finish, [DONE].
        let body = post(&fake, json!({"model": "m", "stream": true, "messages": []}))
            .await
            .text()
            .await
            .unwrap();
        let lines = data_lines(&body);
        assert_eq!(lines.len(), 7);
        let text: String = lines[1..5]
            .iter()
            .map(|line| {
                let chunk: Value = serde_json::from_str(line).unwrap();
                assert!(chunk.get("usage").is_none());
                chunk["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(text, "Hello from the fake.");
        assert_eq!(fake.request_count(), 3);
        assert_eq!(fake.requests()[2]["stream"], true);
    }

    #[tokio::test]
    async fn errors_hangs_and_cuts() {
        let fake = FakeOpenAi::start().await;
        fake.push_chat(Reply::Hang);
        fake.push_chat(Reply::Status {
            status: 429,
            retry_after: Some(2),
            body: json!({"error": {"message": "Rate limit", "type": "rate_limit_error"}}),
        });
        fake.push_chat(Reply::CutAfter(vec!["Par".into(), "tial".into()]));
        let hanging = {
            let fake = fake.clone();
            tokio::spawn(async move { post(&fake, json!({"model": "m", "messages": []})).await })
        };
        // The hanging request does not block the next ones.
        crate::eventually("the hanging request to arrive", || async {
            (fake.request_count() == 1).then_some(())
        })
        .await;
        let limited = post(&fake, json!({"model": "m", "messages": []})).await;
        assert_eq!(limited.status(), 429);
        assert_eq!(limited.headers()["retry-after"], "2");
        let body: Value = limited.json().await.unwrap();
        assert_eq!(body["error"]["message"], "Rate limit");

        let cut = post(&fake, json!({"model": "m", "stream": true, "messages": []})).await;
        let lines = data_lines(&cut.text().await.unwrap());
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines
            .iter()
            .all(|line| !line.contains("finish_reason\":\"") && line != "[DONE]"));
        assert!(!hanging.is_finished());
        hanging.abort();
    }
}
