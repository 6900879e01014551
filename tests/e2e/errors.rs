//! Every client-provokable error code of SPEC §3: each is answered with an `error` frame, the
//! socket stays usable (a valid message right after works), and nothing of a bad frame is stored.

use e2e::proxy::TcpProxy;
use e2e::{eventually, StackOptions, TestApp, Thread, WsClient};
use serde_json::{json, Value};

/// A valid message on a fresh thread, on the same socket, gets `accepted` and a whole turn.
async fn still_works(app: &TestApp, ws: &mut WsClient) {
    let thread = app.create_thread().await;
    ws.send(&thread.message("still there?")).await;
    ws.expect_type("accepted").await;
    let frames = ws.frames_until_type("message_complete").await;
    assert!(frames
        .iter()
        .all(|f| f["thread_id"] == thread.thread_id.as_str()));
}

/// A valid message with `fields` changed; a field set to the string "<absent>" is removed.
fn frame_for(thread: &Thread, fields: Value) -> Value {
    let mut frame = thread.message("hello");
    for (key, value) in fields.as_object().unwrap() {
        if value == "<absent>" {
            frame.as_object_mut().unwrap().remove(key);
        } else {
            frame[key] = value.clone();
        }
    }
    frame
}

#[tokio::test]
async fn every_bad_frame_gets_its_code_and_the_socket_keeps_working() {
    let options = StackOptions::default()
        .with("RATE_LIMIT_MESSAGES", "3")
        .with("RATE_LIMIT_WINDOW_SECS", "3600");
    let app = TestApp::spawn(options).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let mut accepted_messages = 0;

    // Raw text cases: (frame text, expected code).
    let too_large = "x".repeat(32 * 1024 + 1);
    let raw_cases: Vec<(String, &str)> = vec![
        (too_large, "message_too_large"),
        ("{not json".into(), "invalid_json"),
        ("[1,2,3]".into(), "invalid_frame"),
        ("\"message\"".into(), "invalid_frame"),
    ];
    for (text, code) in raw_cases {
        ws.send_text(text).await;
        let error = ws.expect_error(code).await;
        assert_eq!(error["retryable"], false);
        still_works(&app, &mut ws).await;
        accepted_messages += 1;
    }
    ws.send_binary(vec![0u8; 16]).await;
    ws.expect_error("invalid_frame").await;

    // Frame cases built from a valid message: (changes, expected code, error names the thread).
    let other = app.create_thread().await;
    let cases: Vec<(Value, &str, bool)> = vec![
        (json!({"type": "shout"}), "unknown_type", true),
        (json!({"type": null}), "invalid_frame", true),
        (json!({"type": "<absent>"}), "invalid_frame", true),
        (json!({"content": 42}), "invalid_frame", true),
        (json!({"message_id": "has spaces"}), "invalid_frame", true),
        (json!({"thread_id": "<absent>"}), "missing_thread_id", false),
        (json!({"thread_id": null}), "invalid_frame", false),
        (
            json!({"thread_id": "not valid!"}),
            "invalid_thread_id",
            false,
        ),
        (
            json!({"thread_id": "a".repeat(129)}),
            "invalid_thread_id",
            false,
        ),
        (json!({"token": "forged"}), "unauthorized", true),
        (json!({"token": "<absent>"}), "unauthorized", true),
        (json!({"token": null}), "unauthorized", true),
        (json!({"token": other.token}), "unauthorized", true),
        (json!({"content": "<absent>"}), "missing_content", true),
        (json!({"content": null}), "invalid_frame", true),
        (json!({"content": " \n\t "}), "missing_content", true),
        (
            json!({"content": "a".repeat(10_001)}),
            "content_too_long",
            true,
        ),
    ];
    for (changes, code, names_thread) in cases {
        ws.send(&frame_for(&thread, changes.clone())).await;
        let error = ws.expect_error(code).await;
        if names_thread {
            assert_eq!(error["thread_id"], thread.thread_id.as_str(), "{changes}");
        } else {
            assert!(error.get("thread_id").is_none(), "{changes}: {error}");
        }
        still_works(&app, &mut ws).await;
        accepted_messages += 1;
    }

    let approval = |approved: Value| json!({"type": "interrupt_response", "thread_id": thread.thread_id, "token": thread.token, "approved": approved});
    for bad in [json!("true"), json!(1), Value::Null] {
        ws.send(&approval(bad)).await;
        ws.expect_error("invalid_frame").await;
    }
    let resume = |after: Value| json!({"type": "resume", "thread_id": thread.thread_id, "token": thread.token, "after_seq": after});
    for bad in [json!(-1), json!(1.5), json!("3")] {
        ws.send(&resume(bad)).await;
        ws.expect_error("invalid_frame").await;
    }
    still_works(&app, &mut ws).await;
    accepted_messages += 1;

    // Content length counts characters: 10,000 × "é" (20,000 bytes) is accepted.
    ws.send(&thread.message(&"é".repeat(10_000))).await;
    ws.expect_type("accepted").await;
    ws.frames_until_type("message_complete").await;
    accepted_messages += 1;

    // Rate limit: 3 per thread here; one used above, two more pass, the next is refused.
    for _ in 0..2 {
        ws.send(&thread.message("again")).await;
        ws.expect_type("accepted").await;
        ws.frames_until_type("message_complete").await;
        accepted_messages += 1;
    }
    ws.send(&thread.message("one too many")).await;
    let limited = ws.expect_error("rate_limited").await;
    assert_eq!(limited["retryable"], true);
    assert_eq!(limited["thread_id"], thread.thread_id.as_str());
    still_works(&app, &mut ws).await;
    accepted_messages += 1;

    // No pending approval: accepted, then answered by the worker as a thread frame.
    ws.send(&approval(json!(true))).await;
    ws.expect_type("accepted").await;
    accepted_messages += 1;
    let error = ws.expect_error("no_pending_interrupt").await;
    assert!(error["seq"].is_u64());
    // Every turn ends with message_complete (SPEC §3).
    let complete = ws.expect_type("message_complete").await;
    assert_eq!(complete["usage"]["completion_tokens"], 0);
    still_works(&app, &mut ws).await;
    accepted_messages += 1;

    assert_eq!(
        app.stored_inbound().await,
        accepted_messages,
        "only accepted frames reached JetStream"
    );
}

#[tokio::test]
async fn a_message_to_an_expired_session_gets_session_expired() {
    let app = TestApp::spawn(StackOptions::default()).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send(&thread.message("hi")).await;
    ws.expect_type("accepted").await;
    ws.frames_until_type("message_complete").await;

    // Age the session past SESSION_TTL_SECS instead of waiting for it.
    // (Once the turn has committed, or its commit would mark the thread active again.)
    app.wait_for_turns(&thread.thread_id, 1).await;
    sqlx::query("UPDATE threads SET last_active_at = now() - interval '2 hours' WHERE id = $1")
        .bind(&thread.thread_id)
        .execute(&app.db().await)
        .await
        .unwrap();
    ws.send(&thread.message("are you there?")).await;
    ws.expect_type("accepted").await;
    let expired = ws.expect_error("session_expired").await;
    assert_eq!(expired["seq"], 8);
    assert_eq!(expired["thread_id"], thread.thread_id.as_str());
    still_works(&app, &mut ws).await;
}

#[tokio::test]
async fn a_message_the_queue_cannot_store_gets_busy_and_nothing_is_stored() {
    let nats = TcpProxy::start("127.0.0.1:4222".parse().unwrap()).await;
    let options = StackOptions::default();
    let app = TestApp::spawn_with_urls(options, format!("nats://{}", nats.addr()), None).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send(&thread.message("first")).await;
    ws.expect_type("accepted").await;
    ws.frames_until_type("message_complete").await;

    nats.cut();
    let health = format!("{}/api/health", app.http_url(0));
    eventually("the edge to notice NATS is gone", || async {
        let response = app.http.get(&health).send().await.ok()?;
        (response.status() == 503).then_some(())
    })
    .await;
    ws.send(&thread.message_with_id("while down", "m-down"))
        .await;
    let busy = ws.expect_error("busy").await;
    assert_eq!(busy["retryable"], true);
    assert_eq!(busy["thread_id"], thread.thread_id.as_str());

    nats.restore().await;
    eventually("the edge to reconnect to NATS", || async {
        let response = app.http.get(&health).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    // The client sends the refused message again, with the same id: now it is accepted.
    ws.send(&thread.message_with_id("while down", "m-down"))
        .await;
    ws.expect_type("accepted").await;
    let frames = ws.frames_until_type("message_complete").await;
    assert_eq!(frames.first().unwrap()["seq"], 8);
    assert_eq!(app.stored_inbound().await, 2);
}
