//! The worker against an OpenAI-compatible server: the fake in `e2e::fake_openai` speaks the
//! wire format (SSE chunks, split tool-call deltas, the usage chunk, `[DONE]`, error statuses).

use e2e::fake_openai::{FakeOpenAi, Reply};
use e2e::ws::{tokens_text, types};
use e2e::TestApp;
use serde_json::{json, Value};

async fn stack(fake: &FakeOpenAi, extra: &[(&str, &str)]) -> TestApp {
    let mut options = fake.stack_options().with("OPENAI_API_KEY", "sk-test");
    for (key, value) in extra {
        options = options.with(key, value);
    }
    TestApp::spawn(options).await
}

fn text(pieces: &[&str]) -> Reply {
    Reply::Text(pieces.iter().map(|piece| (*piece).to_owned()).collect())
}

fn route(agents: &[&str]) -> Reply {
    let intents: Vec<Value> = agents
        .iter()
        .map(|agent| json!({"agent": agent, "confidence": 0.9}))
        .collect();
    Reply::Classification(json!({"intents": intents, "ambiguous": false, "clarification": null}))
}

/// The chat requests (not the classification) the fake received.
fn chat_requests(fake: &FakeOpenAi) -> Vec<Value> {
    fake.requests()
        .into_iter()
        .filter(|request| request.get("response_format").is_none())
        .collect()
}

/// The tool result a chat request sent back to the model.
fn tool_message(request: &Value) -> Value {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .expect("a tool message")
        .clone()
}

#[tokio::test]
async fn a_tool_turn_streams_assembled_calls_and_sums_usage_and_cost() {
    let fake = FakeOpenAi::start().await;
    fake.push_classification(route(&["orders"]));
    fake.push_chat(Reply::ToolCalls(vec![(
        "get_order_status".into(),
        json!({"order_id": 1002}),
    )]));
    fake.push_chat(text(&["Your order ", "1002 has ", "shipped."]));
    let app = stack(&fake, &[]).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;

    let frames = ws.ask(&thread, "Where is 1002?").await;
    assert_eq!(
        types(&frames),
        [
            "tool_call",
            "tool_result",
            "token",
            "token",
            "token",
            "message_complete"
        ],
        "{frames:?}"
    );
    assert_eq!(frames[0]["agent"], "orders");
    assert_eq!(frames[0]["args"], json!({"order_id": 1002}));
    assert_eq!(frames[1]["ok"], true);
    assert_eq!(tokens_text(&frames), "Your order 1002 has shipped.");

    // The classification: one completion with the intent_classification JSON schema.
    let requests = fake.requests();
    let classification = &requests[0];
    assert_eq!(classification["response_format"]["type"], "json_schema");
    assert_eq!(
        classification["response_format"]["json_schema"]["name"],
        "intent_classification"
    );
    assert_eq!(classification["model"], "gpt-4o-mini");
    // The agent's calls: streamed, usage included, its tools as functions; the second one
    // carries the assembled call and its result.
    let chats = chat_requests(&fake);
    assert_eq!(chats.len(), 2);
    assert_eq!(chats[0]["stream"], true);
    assert_eq!(chats[0]["stream_options"]["include_usage"], true);
    let tools: Vec<&str> = chats[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|tool| tool["function"]["name"].as_str())
        .collect();
    assert_eq!(tools, ["get_order_status", "cancel_order"]);
    let messages = chats[1]["messages"].as_array().unwrap();
    let call = messages
        .iter()
        .find(|m| m["role"] == "assistant")
        .expect("the assistant's tool call is sent back");
    assert_eq!(
        call["tool_calls"][0]["function"]["name"],
        "get_order_status"
    );
    let args: Value = serde_json::from_str(
        call["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(args, json!({"order_id": 1002}));
    let result = tool_message(&chats[1]);
    assert_eq!(result["tool_call_id"], call["tool_calls"][0]["id"]);
    assert!(result["content"].as_str().unwrap().contains("shipped"));

    // Usage sums the three calls (the fake reports 10 prompt tokens each; 5 completion tokens
    // for the classification and the tool call, one per chunk for text); priced as gpt-4o-mini.
    let usage = &frames.last().unwrap()["usage"];
    assert_eq!(usage["prompt_tokens"], 30, "{usage}");
    assert_eq!(usage["completion_tokens"], 5 + 5 + 3, "{usage}");
    let cost = (30.0 * 0.15 + 13.0 * 0.60) / 1e6;
    assert!(
        (usage["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12,
        "{usage}"
    );
    app.wait_for_turns(&thread.thread_id, 1).await;
    let (prompt, completion, stored_cost): (i64, i64, f64) = sqlx::query_as(
        "SELECT prompt_tokens, completion_tokens, cost_usd FROM turns WHERE thread_id = $1",
    )
    .bind(&thread.thread_id)
    .fetch_one(&app.db().await)
    .await
    .unwrap();
    assert_eq!((prompt, completion), (30, 13));
    assert!((stored_cost - cost).abs() < 1e-12);
}

#[tokio::test]
async fn two_intents_run_two_agents_in_order_and_a_bad_classifier_falls_back() {
    let fake = FakeOpenAi::start().await;
    fake.push_classification(route(&["orders", "billing"]));
    fake.push_chat(text(&["About ", "your order."]));
    fake.push_chat(text(&["About ", "your invoice."]));
    // Then a classifier that names an agent nobody configured, and one that fails for good.
    fake.push_classification(route(&["astrology"]));
    fake.push_chat(text(&["Hello ", "from general."]));
    fake.push_classification(Reply::Status {
        status: 400,
        retry_after: None,
        body: json!({"error": {"message": "response_format is not supported", "type": "invalid_request_error"}}),
    });
    fake.push_chat(text(&["Still ", "here."]));
    let app = stack(&fake, &[]).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;

    let frames = ws.ask(&thread, "Where is my order, and my invoice?").await;
    let agents: Vec<&str> = frames
        .iter()
        .filter(|f| f["type"] == "token")
        .filter_map(|f| f["agent"].as_str())
        .collect();
    assert_eq!(
        agents,
        ["orders", "orders", "billing", "billing"],
        "{frames:?}"
    );
    let chats = chat_requests(&fake);
    assert!(chats[0]["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("orders specialist"));
    assert!(chats[1]["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("billing specialist"));

    let frames = ws.ask(&thread, "What is my horoscope?").await;
    assert!(frames
        .iter()
        .filter(|f| f["type"] == "token")
        .all(|f| f["agent"] == "general"));
    let frames = ws.ask(&thread, "Anything").await;
    assert_eq!(tokens_text(&frames), "Still here.");
    assert!(frames
        .iter()
        .filter(|f| f["type"] == "token")
        .all(|f| f["agent"] == "general"));
}

#[tokio::test]
async fn tool_arguments_that_break_the_schema_never_run_and_go_back_to_the_model() {
    let fake = FakeOpenAi::start().await;
    fake.push_classification(route(&["orders"]));
    fake.push_chat(Reply::ToolCalls(vec![(
        "cancel_order".into(),
        json!({"order_id": "the blue one"}),
    )]));
    fake.push_chat(text(&["Which ", "order number?"]));
    let app = stack(&fake, &[]).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;

    let frames = ws.ask(&thread, "Cancel the blue one").await;
    assert_eq!(
        types(&frames),
        [
            "tool_call",
            "tool_result",
            "token",
            "token",
            "message_complete"
        ],
        "no interrupt for a call that cannot run: {frames:?}"
    );
    assert_eq!(frames[1]["ok"], false);
    let chats = chat_requests(&fake);
    let result = tool_message(&chats[1]);
    assert!(
        result["content"].as_str().unwrap().contains("order_id"),
        "the model is told what was wrong: {result}"
    );
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_and_server_errors_are_retried() {
    let fake = FakeOpenAi::start().await;
    fake.push_classification(route(&["general"]));
    fake.push_chat(Reply::Status {
        status: 429,
        retry_after: Some(2),
        body: json!({"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}),
    });
    fake.push_chat(text(&["After ", "the limit."]));
    fake.push_classification(route(&["general"]));
    for _ in 0..3 {
        fake.push_chat(Reply::Status {
            status: 500,
            retry_after: None,
            body: json!({"error": {"message": "The server had an error", "type": "server_error"}}),
        });
    }
    fake.push_chat(text(&["After ", "the errors."]));
    let app = stack(&fake, &[]).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;

    let sent = std::time::Instant::now();
    let frames = ws.ask(&thread, "hello").await;
    assert!(
        sent.elapsed() >= std::time::Duration::from_secs(2),
        "Retry-After: 2 was honoured"
    );
    assert_eq!(types(&frames), ["token", "token", "message_complete"]);
    assert_eq!(tokens_text(&frames), "After the limit.");
    assert_eq!(
        chat_requests(&fake).len(),
        2,
        "one retry: async-openai retried nothing itself"
    );

    let frames = ws.ask(&thread, "hello again").await;
    assert_eq!(types(&frames), ["token", "token", "message_complete"]);
    assert_eq!(tokens_text(&frames), "After the errors.");
    assert_eq!(
        chat_requests(&fake).len(),
        2 + 4,
        "three 500s, then success"
    );
}

#[tokio::test]
async fn a_hanging_model_is_timed_out_and_retried() {
    let fake = FakeOpenAi::start().await;
    fake.push_classification(route(&["general"]));
    fake.push_chat(Reply::Hang);
    fake.push_chat(text(&["Awake ", "again."]));
    let app = stack(
        &fake,
        &[("LLM_TIMEOUT_SECS", "2"), ("LLM_IDLE_TIMEOUT_SECS", "1")],
    )
    .await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let frames = ws.ask(&thread, "hello").await;
    assert_eq!(types(&frames), ["token", "token", "message_complete"]);
    assert_eq!(tokens_text(&frames), "Awake again.");
    assert_eq!(chat_requests(&fake).len(), 2);
}

#[tokio::test]
async fn a_stream_cut_after_tokens_is_reset_then_answered_in_full() {
    let fake = FakeOpenAi::start().await;
    fake.push_classification(route(&["general"]));
    fake.push_chat(Reply::CutAfter(vec!["Partial ".into(), "answ".into()]));
    fake.push_classification(route(&["general"]));
    fake.push_chat(text(&["The ", "whole ", "answer."]));
    let app = stack(&fake, &[]).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;

    let frames = ws.ask(&thread, "hello").await;
    assert_eq!(
        types(&frames),
        [
            "token",
            "token",
            "turn_reset",
            "token",
            "token",
            "token",
            "message_complete"
        ],
        "{frames:?}"
    );
    let after_reset = &frames[3..];
    assert_eq!(tokens_text(after_reset), "The whole answer.");
    // Every call the turn made counts, the discarded attempt's classification included.
    let usage = &frames.last().unwrap()["usage"];
    assert_eq!(usage["prompt_tokens"], 10 + 10 + 10, "{usage}");
    assert_eq!(usage["completion_tokens"], 5 + 5 + 3, "{usage}");
    assert!(frames.iter().all(|f| f["turn_id"] == frames[0]["turn_id"]));
    app.wait_for_turns(&thread.thread_id, 1).await;
    let reply: String = sqlx::query_scalar("SELECT reply FROM turns WHERE thread_id = $1")
        .bind(&thread.thread_id)
        .fetch_one(&app.db().await)
        .await
        .unwrap();
    assert_eq!(reply, "The whole answer.");
}

#[tokio::test]
async fn an_approval_continues_the_model_conversation_with_the_tool_result() {
    let fake = FakeOpenAi::start().await;
    fake.push_classification(route(&["orders"]));
    fake.push_chat(Reply::ToolCalls(vec![(
        "cancel_order".into(),
        json!({"order_id": 1003, "reason": "changed my mind"}),
    )]));
    fake.push_chat(text(&["Order 1003 ", "is cancelled."]));
    let app = stack(&fake, &[]).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;

    let frames = ws.ask(&thread, "Cancel 1003").await;
    let interrupt = frames.last().unwrap().clone();
    assert_eq!(interrupt["type"], "interrupt", "{frames:?}");
    assert_eq!(
        interrupt["params"],
        json!({"order_id": 1003, "reason": "changed my mind"})
    );
    ws.send(&thread.interrupt_response(true)).await;
    ws.expect_type("accepted").await;
    let frames = ws.frames_until_type("message_complete").await;
    assert_eq!(
        types(&frames),
        [
            "tool_call",
            "tool_result",
            "token",
            "token",
            "message_complete"
        ]
    );
    assert!(frames.iter().all(|f| f["turn_id"] == interrupt["turn_id"]));
    let chats = chat_requests(&fake);
    let result = tool_message(&chats[1]);
    assert!(
        result["content"].as_str().unwrap().contains("cancelled"),
        "{result}"
    );
    // usage on the final message_complete covers the whole turn: both segments.
    let usage = &frames.last().unwrap()["usage"];
    assert_eq!(usage["prompt_tokens"], 30, "{usage}");
}

#[tokio::test]
async fn a_compatible_server_s_lenient_stream_reaches_the_client_once_and_every_call_counts() {
    let fake = FakeOpenAi::start().await;
    // A classifier that answers, but not with the classification JSON: the turn goes to the
    // default agent, and the call's tokens still count.
    fake.push_classification(text(&["not ", "json"]));
    // Chunks as minimal servers send them: no id, created or object, a choice without index,
    // a finish reason of the server's own, usage without total_tokens.
    fake.push_chat(Reply::RawSse(vec![
        json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi "}}]}),
        json!({"choices": [{"delta": {"content": "there."}, "finish_reason": null}]}),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "eos"}]}),
        json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}),
    ]));
    // Then an empty answer: a failure of its own, retried, never stored as the reply.
    fake.push_classification(route(&["general"]));
    fake.push_chat(Reply::RawSse(vec![
        json!({"choices": [{"delta": {"role": "assistant"}, "finish_reason": "stop"}]}),
        json!({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 0}}),
    ]));
    fake.push_chat(text(&["Second ", "try."]));
    let app = stack(&fake, &[]).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;

    let frames = ws.ask(&thread, "hello").await;
    assert_eq!(
        types(&frames),
        ["token", "token", "message_complete"],
        "once, with no turn_reset: {frames:?}"
    );
    assert_eq!(tokens_text(&frames), "Hi there.");
    let usage = &frames.last().unwrap()["usage"];
    // The classification (10 prompt, 2 completion: one per chunk) and the chat (7 + 2).
    assert_eq!(usage["prompt_tokens"], 10 + 7, "{usage}");
    assert_eq!(usage["completion_tokens"], 2 + 2, "{usage}");

    let frames = ws.ask(&thread, "and again").await;
    assert_eq!(types(&frames), ["token", "token", "message_complete"]);
    assert_eq!(tokens_text(&frames), "Second try.");
    let usage = &frames.last().unwrap()["usage"];
    assert_eq!(usage["prompt_tokens"], 10 + 4 + 10, "{usage}");
    assert_eq!(usage["completion_tokens"], 5 + 2, "{usage}");
    assert_eq!(
        chat_requests(&fake).len(),
        3,
        "the empty answer was asked again"
    );
    app.wait_for_turns(&thread.thread_id, 2).await;
    let replies: Vec<String> =
        sqlx::query_scalar("SELECT reply FROM turns WHERE thread_id = $1 ORDER BY in_seq")
            .bind(&thread.thread_id)
            .fetch_all(&app.db().await)
            .await
            .unwrap();
    assert_eq!(replies, ["Hi there.", "Second try."]);
}

#[tokio::test]
async fn a_request_the_server_refuses_is_dead_lettered_after_one_attempt() {
    let fake = FakeOpenAi::start().await;
    fake.push_classification(route(&["general"]));
    fake.push_chat(Reply::Status {
        status: 400,
        retry_after: None,
        body: json!({"error": {"message": "Invalid 'tools': unsupported", "type": "invalid_request_error"}}),
    });
    let app = stack(&fake, &[("TURN_MAX_ATTEMPTS", "5")]).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;

    ws.send(&thread.message("hello")).await;
    ws.expect_type("accepted").await;
    let frames = ws.frames_until_type("error").await;
    assert_eq!(types(&frames), ["error"], "{frames:?}");
    assert_eq!(frames[0]["code"], "processing_failed");
    app.wait_for_turns(&thread.thread_id, 1).await;

    let listed = app
        .run_command("worker", &["dead-letters", "list", "--json"], &[])
        .await;
    assert!(listed.status.success());
    let letters: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let letter = &letters[0];
    assert_eq!(letter["attempts"], 1, "{letters}");
    let reason = letter["reason"].as_str().unwrap();
    assert!(
        reason.contains("400") && reason.contains("unsupported"),
        "{reason}"
    );
    assert_eq!(chat_requests(&fake).len(), 1, "one attempt, one request");
}

#[tokio::test]
async fn a_429_holds_every_model_call_of_the_worker_until_its_retry_after() {
    let fake = FakeOpenAi::start().await;
    fake.push_classification(route(&["general"]));
    fake.push_chat(Reply::Status {
        status: 429,
        retry_after: Some(2),
        body: json!({"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}),
    });
    let app = stack(&fake, &[]).await;
    let first = app.create_thread().await;
    let second = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let mut other = app.connect(0).await;

    ws.send(&first.message("hello")).await;
    ws.expect_type("accepted").await;
    // The first thread's chat call is answered 429 (Retry-After: 2)…
    e2e::eventually("the rate-limited call", || async {
        (fake.request_count() >= 2).then_some(())
    })
    .await;
    let limited_at = fake.request_times()[1];
    // … then another thread's turn starts: its classification waits for the gate too.
    other.send(&second.message("hi")).await;
    other.expect_type("accepted").await;
    let frames = other.frames_until_type("message_complete").await;
    assert_eq!(tokens_text(&frames), "Hello from the fake.");
    let frames = ws.frames_until_type("message_complete").await;
    assert_eq!(tokens_text(&frames), "Hello from the fake.");

    let times = fake.request_times();
    assert_eq!(times.len(), 5, "{:?}", fake.requests());
    for (n, at) in times.iter().enumerate().skip(2) {
        let after = at.duration_since(limited_at);
        assert!(
            after >= std::time::Duration::from_millis(1900),
            "request {n} went {after:?} after the 429, inside its Retry-After"
        );
    }
    let metrics = app.worker_metrics(0).await;
    assert_eq!(
        e2e::metric(&metrics, "worker_provider_gate_openings_total"),
        Some(1.0)
    );
}
