//! The agent graph with the scripted model: the demo shop end to end, approvals and their
//! ledger, and the agents config.

use std::collections::BTreeSet;

use e2e::ws::{seqs, tokens_text, types, WsClient};
use e2e::{eventually, StackOptions, TestApp, Thread};
use serde_json::{json, Value};

/// The frames of one turn segment: up to `message_complete`, `interrupt` or a final `error`.
async fn segment(ws: &mut WsClient) -> Vec<Value> {
    ws.frames_until(|frame| {
        matches!(
            frame["type"].as_str(),
            Some("message_complete" | "interrupt")
        ) || (frame["type"] == "error" && frame["code"] == "processing_failed")
    })
    .await
}

/// Sends a frame, expects `accepted`, returns the segment that answers it. A customer message's
/// turn opens with its `user_message` (SPEC §7): checked here and left out of what is returned.
async fn turn(ws: &mut WsClient, frame: &Value) -> Vec<Value> {
    ws.send(frame).await;
    ws.expect_type("accepted").await;
    let mut frames = segment(ws).await;
    if frame["type"] == "message" {
        let opening = frames.remove(0);
        assert_eq!(opening["type"], "user_message", "{opening}");
        assert_eq!(opening["content"], frame["content"]);
    }
    frames
}

async fn order_status(app: &TestApp, order: i32) -> String {
    sqlx::query_scalar("SELECT status FROM demo_orders WHERE id = $1")
        .bind(order)
        .fetch_one(&app.db().await)
        .await
        .unwrap()
}

async fn ledger_rows(app: &TestApp, thread: &Thread) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM tool_executions WHERE thread_id = $1")
        .bind(&thread.thread_id)
        .fetch_one(&app.db().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_scripted_demo_conversation_covers_every_frame_type() {
    let app = TestApp::spawn(
        StackOptions::default()
            .with("SCRIPTED_FAIL_ON", "outage")
            .with("TURN_MAX_ATTEMPTS", "2"),
    )
    .await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let mut seen: Vec<Value> = Vec::new();

    // An order question: the orders agent looks the order up, then answers from the result.
    let frames = turn(&mut ws, &thread.message("Where is my order 1002?")).await;
    assert_eq!(
        types(&frames)[..2],
        ["tool_call", "tool_result"],
        "{frames:?}"
    );
    assert_eq!(frames[0]["agent"], "orders");
    assert_eq!(frames[0]["tool"], "get_order_status");
    assert_eq!(frames[0]["args"], json!({"order_id": 1002}));
    assert_eq!(frames[1]["ok"], true);
    assert!(tokens_text(&frames).contains("Order 1002"), "{frames:?}");
    assert!(tokens_text(&frames).contains("has shipped"), "{frames:?}");
    assert_eq!(frames.last().unwrap()["type"], "message_complete");
    seen.extend(frames);

    // "help" alone is ambiguous: a clarifying question ends the turn.
    let frames = turn(&mut ws, &thread.message("help")).await;
    assert_eq!(types(&frames), ["clarification", "message_complete"]);
    assert!(frames[0]["message"].as_str().unwrap().contains("orders"));
    seen.extend(frames);

    // Two requests in one message: the orders agent, then the billing agent, each pausing for
    // approval; the same turn continues through both answers.
    let frames = turn(&mut ws, &thread.message("Cancel order 1003 and refund it")).await;
    let cancel = frames.last().unwrap().clone();
    assert_eq!(cancel["type"], "interrupt", "{frames:?}");
    assert_eq!(cancel["action"], "cancel_order");
    assert_eq!(cancel["params"]["order_id"], 1003);
    assert!(cancel["expires_at"].as_str().unwrap().contains('T'));
    let turn_id = cancel["turn_id"].clone();
    assert_eq!(
        order_status(&app, 1003).await,
        "processing",
        "nothing ran yet"
    );
    seen.extend(frames);

    let frames = turn(
        &mut ws,
        &thread.answer(true, cancel["interrupt_id"].as_str()),
    )
    .await;
    assert!(
        frames.iter().all(|f| f["turn_id"] == turn_id),
        "same turn: {frames:?}"
    );
    assert_eq!(
        types(&frames)[..2],
        ["tool_call", "tool_result"],
        "{frames:?}"
    );
    assert_eq!(frames[0]["tool"], "cancel_order");
    assert_eq!(frames[1]["ok"], true);
    assert!(tokens_text(&frames).contains("Order 1003 is now cancelled."));
    let refund = frames.last().unwrap().clone();
    assert_eq!(refund["type"], "interrupt", "a second approval: {frames:?}");
    assert_eq!(refund["action"], "request_refund");
    assert_ne!(refund["interrupt_id"], cancel["interrupt_id"]);
    let agents: BTreeSet<&str> = frames.iter().filter_map(|f| f["agent"].as_str()).collect();
    assert_eq!(agents, BTreeSet::from(["orders"]));
    assert_eq!(order_status(&app, 1003).await, "cancelled");
    seen.extend(frames);

    // Declined: the billing agent is told, and answers; nothing is refunded.
    let frames = turn(&mut ws, &thread.answer(false, None)).await;
    assert!(frames.iter().all(|f| f["turn_id"] == turn_id));
    assert_eq!(types(&frames).last(), Some(&"message_complete"));
    assert!(frames.iter().all(|f| f["type"] != "tool_call"));
    assert!(frames
        .iter()
        .filter(|f| f["type"] == "token")
        .all(|f| f["agent"] == "billing"));
    assert!(
        tokens_text(&frames).contains("left it as it is"),
        "{frames:?}"
    );
    let usage = &frames.last().unwrap()["usage"];
    assert!(usage["cost_usd"].as_f64().unwrap() > 0.0);
    seen.extend(frames);

    // The same approval again: nothing is pending any more, nothing runs twice.
    let frames = turn(
        &mut ws,
        &thread.answer(true, cancel["interrupt_id"].as_str()),
    )
    .await;
    assert_eq!(types(&frames), ["error", "message_complete"]);
    assert_eq!(frames[0]["code"], "no_pending_interrupt");
    seen.extend(frames);

    // A general question: the FAQ.
    let frames = turn(&mut ws, &thread.message("What is your return policy?")).await;
    assert_eq!(frames[0]["tool"], "search_faq");
    assert!(
        tokens_text(&frames).contains("within 30 days"),
        "{frames:?}"
    );
    seen.extend(frames);

    // A model outage mid-reply: the retry starts with turn_reset, and after the last attempt
    // the client gets processing_failed.
    let frames = turn(&mut ws, &thread.message("hello, outage ahead")).await;
    assert!(types(&frames).contains(&"turn_reset"), "{frames:?}");
    assert_eq!(frames.last().unwrap()["code"], "processing_failed");
    seen.extend(frames);

    let all: BTreeSet<&str> = seen.iter().filter_map(|f| f["type"].as_str()).collect();
    for kind in [
        "token",
        "tool_call",
        "tool_result",
        "interrupt",
        "clarification",
        "turn_reset",
        "message_complete",
        "error",
    ] {
        assert!(all.contains(kind), "{kind} missing from the demo: {all:?}");
    }
    // One seq per frame, the whole conversation long (with the `user_message` frames that
    // `turn` leaves out): a socket resuming from 0 gets them all.
    let numbers = seqs(&seen);
    assert!(
        numbers.windows(2).all(|pair| pair[0] < pair[1]),
        "{numbers:?}"
    );
    let last = *numbers.last().unwrap();
    let mut replay = app.connect(0).await;
    replay.send(&thread.resume(0)).await;
    let all_frames = replay.frames_until(|frame| frame["seq"] == last).await;
    assert_eq!(seqs(&all_frames), (1..=last).collect::<Vec<_>>());
    assert!(numbers.iter().all(|seq| all_frames[*seq as usize - 1]
        == seen.iter().find(|f| f["seq"] == *seq).cloned().unwrap()));

    app.wait_for_turns(&thread.thread_id, 8).await;
    assert_eq!(ledger_rows(&app, &thread).await, 1, "one approved run");
    let decisions: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, status FROM interrupts WHERE thread_id = $1 ORDER BY created_at",
    )
    .bind(&thread.thread_id)
    .fetch_all(&app.db().await)
    .await
    .unwrap();
    assert_eq!(
        decisions,
        [
            ("cancel_order".to_owned(), "approved".to_owned()),
            ("request_refund".to_owned(), "rejected".to_owned())
        ]
    );
    let (outcome, agents, cost): (String, Vec<String>, f64) = sqlx::query_as(
        "SELECT outcome, agents, cost_usd FROM turns WHERE thread_id = $1 AND in_seq = 3",
    )
    .bind(&thread.thread_id)
    .fetch_one(&app.db().await)
    .await
    .unwrap();
    assert_eq!(outcome, "interrupted");
    assert_eq!(agents, ["orders"]);
    assert!(cost > 0.0);
}

#[tokio::test]
async fn an_approval_answered_twice_at_once_runs_the_tool_once_on_another_worker() {
    let mut app = TestApp::spawn(StackOptions::default()).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let frames = turn(&mut ws, &thread.message("Please refund order 1005")).await;
    let interrupt = frames.last().unwrap().clone();
    assert_eq!(interrupt["type"], "interrupt", "{frames:?}");
    assert_eq!(interrupt["action"], "request_refund");
    app.wait_for_turns(&thread.thread_id, 1).await;
    let history_url = format!(
        "{}/api/threads/{}/messages",
        app.http_url(0),
        thread.thread_id
    );
    let history = app.get_json(&history_url, &thread.token).await;
    assert_eq!(
        history["pending_approval"]["action"], "request_refund",
        "{history}"
    );
    assert_eq!(
        history["pending_approval"]["interrupt_id"],
        interrupt["interrupt_id"]
    );
    assert_eq!(history["messages"][1]["outcome"], "interrupted");

    // The worker that raised it dies; a new one takes the answers.
    app.workers[0].kill().await;
    app.start_worker().await;
    let id = interrupt["interrupt_id"].as_str();
    ws.send(&thread.answer(true, id)).await;
    ws.send(&thread.answer(true, id)).await;
    ws.expect_type("accepted").await;
    ws.expect_type("accepted").await;
    let first = segment(&mut ws).await;
    assert_eq!(first[0]["type"], "tool_call", "{first:?}");
    assert_eq!(first[0]["turn_id"], interrupt["turn_id"]);
    assert!(
        tokens_text(&first).contains("refund of $42.75 for order 1005"),
        "{first:?}"
    );
    let second = segment(&mut ws).await;
    assert_eq!(types(&second), ["error", "message_complete"]);
    assert_eq!(second[0]["code"], "no_pending_interrupt");

    app.wait_for_turns(&thread.thread_id, 3).await;
    let refunds: i64 =
        sqlx::query_scalar("SELECT count(*) FROM demo_refunds WHERE order_id = 1005")
            .fetch_one(&app.db().await)
            .await
            .unwrap();
    assert_eq!(refunds, 1);
    assert_eq!(ledger_rows(&app, &thread).await, 1);

    // The history shows one exchange: the approved continuation belongs to the paused turn.
    let history = app.get_json(&history_url, &thread.token).await;
    assert!(history["pending_approval"].is_null(), "{history}");
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{history}");
    assert_eq!(messages[1]["outcome"], "completed");
    assert_eq!(messages[1]["content"], tokens_text(&first).as_str());
}

#[tokio::test]
async fn an_answer_after_the_approval_expired_runs_nothing() {
    let app = TestApp::spawn(StackOptions::default().with("INTERRUPT_TTL_SECS", "1")).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let frames = turn(&mut ws, &thread.message("Cancel order 1006")).await;
    let interrupt = frames.last().unwrap().clone();
    assert_eq!(interrupt["type"], "interrupt", "{frames:?}");
    let expires_at: chrono::DateTime<chrono::Utc> =
        interrupt["expires_at"].as_str().unwrap().parse().unwrap();
    // Wait for the deadline the frame names to pass.
    eventually("the approval to expire", || async {
        (chrono::Utc::now() > expires_at + chrono::Duration::milliseconds(100)).then_some(())
    })
    .await;

    let frames = turn(&mut ws, &thread.answer(true, None)).await;
    assert_eq!(types(&frames), ["interrupt_expired", "message_complete"]);
    assert_eq!(frames[0]["interrupt_id"], interrupt["interrupt_id"]);
    assert_eq!(frames[0]["action"], "cancel_order");
    assert!(frames[0]["message"]
        .as_str()
        .unwrap()
        .contains("nothing was done"));
    assert!(frames.iter().all(|f| f["turn_id"] == interrupt["turn_id"]));
    app.wait_for_turns(&thread.thread_id, 2).await;
    assert_eq!(order_status(&app, 1006).await, "processing");
    assert_eq!(ledger_rows(&app, &thread).await, 0);
}

#[tokio::test]
async fn a_new_message_withdraws_a_pending_approval() {
    let app = TestApp::spawn(StackOptions::default()).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let frames = turn(&mut ws, &thread.message("Cancel order 1009")).await;
    assert_eq!(frames.last().unwrap()["type"], "interrupt");

    let frames = turn(&mut ws, &thread.message("Where is order 1009?")).await;
    assert_eq!(frames[0]["tool"], "get_order_status", "{frames:?}");
    assert!(tokens_text(&frames).contains("being prepared"));
    let frames = turn(&mut ws, &thread.answer(true, None)).await;
    assert_eq!(frames[0]["code"], "no_pending_interrupt");

    app.wait_for_turns(&thread.thread_id, 3).await;
    assert_eq!(order_status(&app, 1009).await, "processing");
    let status: String = sqlx::query_scalar("SELECT status FROM interrupts WHERE thread_id = $1")
        .bind(&thread.thread_id)
        .fetch_one(&app.db().await)
        .await
        .unwrap();
    assert_eq!(status, "superseded");
}

#[tokio::test]
async fn an_invalid_agents_config_is_refused_naming_the_file_the_agent_and_the_field() {
    let app = TestApp::spawn(StackOptions {
        edges: 0,
        workers: 0,
        ..StackOptions::default()
    })
    .await;
    let path = std::env::temp_dir().join(format!("agents-{}.yaml", app.prefix));
    std::fs::write(
        &path,
        "agents:\n  - name: orders\n    description: Orders.\n    system_prompt: Help.\n    tools: [get_order_status]\n  - name: billing\n    description: Money.\n    tools: [get_invoice]\n",
    )
    .unwrap();
    let output = app
        .run_to_exit(
            "worker",
            &[
                ("METRICS_ADDR", "127.0.0.1:0"),
                ("AGENTS_CONFIG", path.to_str().unwrap()),
            ],
        )
        .await;
    let _ = std::fs::remove_file(&path);
    assert!(!output.status.success(), "the worker must not start");
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(
        logs.contains(path.to_str().unwrap()),
        "names the file: {logs}"
    );
    assert!(
        logs.contains("agent \\\"billing\\\"") || logs.contains("agent \"billing\""),
        "names the agent: {logs}"
    );
    assert!(logs.contains("system_prompt"), "names the field: {logs}");
}

#[tokio::test]
async fn a_tool_that_refuses_tells_the_model_and_the_turn_goes_on() {
    let app = TestApp::spawn(StackOptions::default()).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let frames = turn(&mut ws, &thread.message("Cancel order 1004 please")).await;
    assert_eq!(frames.last().unwrap()["type"], "interrupt", "{frames:?}");
    let frames = turn(&mut ws, &thread.answer(true, None)).await;
    assert_eq!(
        types(&frames)[..2],
        ["tool_call", "tool_result"],
        "{frames:?}"
    );
    assert_eq!(frames[1]["ok"], false);
    assert!(
        tokens_text(&frames).contains("Order 1004 is shipped and can no longer be cancelled"),
        "the model was told why: {frames:?}"
    );
    assert_eq!(frames.last().unwrap()["type"], "message_complete");
    app.wait_for_turns(&thread.thread_id, 2).await;
    assert_eq!(order_status(&app, 1004).await, "shipped");
    let ok: bool = sqlx::query_scalar("SELECT ok FROM tool_executions WHERE thread_id = $1")
        .bind(&thread.thread_id)
        .fetch_one(&app.db().await)
        .await
        .unwrap();
    assert!(
        !ok,
        "the refusal is in the ledger: the call is not run again"
    );
}

#[tokio::test]
async fn an_answer_given_up_on_still_ends_its_approval_in_the_paused_turn() {
    let app = TestApp::spawn(
        StackOptions::default()
            .with("SCRIPTED_FAIL_ON", "outage")
            .with("TURN_MAX_ATTEMPTS", "1"),
    )
    .await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    // The model fails only once it speaks: after the approved tool ran.
    let frames = turn(&mut ws, &thread.message("Cancel order 1003, outage or not")).await;
    let interrupt = frames.last().unwrap().clone();
    assert_eq!(interrupt["type"], "interrupt", "{frames:?}");

    let frames = turn(&mut ws, &thread.answer(true, None)).await;
    assert_eq!(
        frames.last().unwrap()["code"],
        "processing_failed",
        "{frames:?}"
    );
    assert!(
        frames.iter().all(|f| f["turn_id"] == interrupt["turn_id"]),
        "the failure belongs to the paused turn: {frames:?}"
    );
    app.wait_for_turns(&thread.thread_id, 2).await;
    assert_eq!(order_status(&app, 1003).await, "cancelled");

    // The approval was answered: a second answer finds nothing pending, and cannot claim the
    // user declined what already ran.
    let frames = turn(&mut ws, &thread.answer(false, None)).await;
    assert_eq!(frames[0]["code"], "no_pending_interrupt", "{frames:?}");
    let history = app
        .get_json(
            &format!(
                "{}/api/threads/{}/messages",
                app.http_url(0),
                thread.thread_id
            ),
            &thread.token,
        )
        .await;
    assert!(history["pending_approval"].is_null(), "{history}");
    assert_eq!(ledger_rows(&app, &thread).await, 1);
}

#[tokio::test]
async fn the_conversation_lifecycle_and_totals_follow_its_turns() {
    let app = TestApp::spawn(StackOptions::default()).await;
    let thread = app.create_thread().await;
    let db = app.db().await;
    let status = || async {
        sqlx::query_scalar::<_, String>("SELECT status FROM threads WHERE id = $1")
            .bind(&thread.thread_id)
            .fetch_one(&db)
            .await
            .unwrap()
    };
    assert_eq!(status().await, "open");
    let mut ws = app.connect(0).await;
    let mut usages = Vec::new();

    let frames = turn(&mut ws, &thread.message("Cancel order 1006")).await;
    assert_eq!(frames.last().unwrap()["type"], "interrupt");
    app.wait_for_turns(&thread.thread_id, 1).await;
    assert_eq!(status().await, "awaiting_approval");

    let frames = turn(&mut ws, &thread.answer(true, None)).await;
    usages.push(frames.last().unwrap()["usage"].clone());
    app.wait_for_turns(&thread.thread_id, 2).await;
    assert_eq!(status().await, "resolved");

    let frames = turn(&mut ws, &thread.message("I want to talk to a human")).await;
    assert_eq!(frames[0]["tool"], "escalate_to_human", "{frames:?}");
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "handoff" && f["state"] == "waiting"),
        "{frames:?}"
    );
    usages.push(frames.last().unwrap()["usage"].clone());
    app.wait_for_turns(&thread.thread_id, 3).await;
    assert_eq!(status().await, "escalated");

    // Escalation sticks; while a human is awaited the model is not called (SPEC §7): the
    // message is stored and its turn completes with zero usage.
    let frames = turn(&mut ws, &thread.message("Where is my order 1002?")).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["usage"]["prompt_tokens"], 0);
    usages.push(frames.last().unwrap()["usage"].clone());
    app.wait_for_turns(&thread.thread_id, 4).await;
    assert_eq!(status().await, "escalated");

    let (title, agents, messages, prompt, completion, cost): (
        String,
        Vec<String>,
        i32,
        i64,
        i64,
        f64,
    ) = sqlx::query_as(
        "SELECT title, agents, messages, prompt_tokens, completion_tokens, cost_usd
               FROM threads WHERE id = $1",
    )
    .bind(&thread.thread_id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(title, "Cancel order 1006");
    assert_eq!(agents, ["orders", "general"]);
    assert_eq!(
        messages, 3,
        "user messages; the approval's answer is not one"
    );
    // The client's usages: the approval's message_complete covers the whole paused turn.
    let sum = |key: &str| {
        usages
            .iter()
            .map(|u| u[key].as_u64().unwrap() as i64)
            .sum::<i64>()
    };
    assert_eq!(prompt, sum("prompt_tokens"));
    assert_eq!(completion, sum("completion_tokens"));
    let client_cost: f64 = usages.iter().map(|u| u["cost_usd"].as_f64().unwrap()).sum();
    assert!(
        (cost - client_cost).abs() < 1e-12,
        "{cost} vs {client_cost}"
    );

    // Each agent's share of each turn: the orders agent made the approved call.
    let shares: Vec<(i64, String, i32)> = sqlx::query_as(
        "SELECT in_seq, agent, tool_calls FROM turn_agents WHERE thread_id = $1 ORDER BY in_seq, position",
    )
    .bind(&thread.thread_id)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        shares,
        [
            (1, "orders".to_owned(), 0),
            (2, "orders".to_owned(), 1),
            (3, "general".to_owned(), 1),
        ],
        "no agent ran while a human is awaited"
    );
    let escalation: Value = sqlx::query_scalar(
        "SELECT e FROM turns, jsonb_array_elements(events) e
          WHERE thread_id = $1 AND e->>'type' = 'escalation'",
    )
    .bind(&thread.thread_id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(escalation["agent"], "general");
    assert!(escalation["at"].is_string());
}

#[tokio::test]
async fn an_answer_without_an_id_cannot_approve_an_approval_raised_after_it() {
    // Tokens take a while, so the second approval is raised well after both answers arrive.
    let app = TestApp::spawn(StackOptions::default().with("SCRIPTED_TOKEN_DELAY_MS", "60")).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let frames = turn(&mut ws, &thread.message("Cancel order 1003 and refund it")).await;
    let cancel = frames.last().unwrap().clone();
    assert_eq!(cancel["action"], "cancel_order", "{frames:?}");

    // A double-clicked "approve" without ids: both answers are sent while only the cancel is
    // pending. The first approves it; the second must not approve the refund, which the user
    // has not seen.
    ws.send(&thread.answer(true, None)).await;
    ws.send(&thread.answer(true, None)).await;
    let frames = ws
        .frames_until(|f| f["type"] == "interrupt" || f["type"] == "error")
        .await;
    let accepted = frames.iter().filter(|f| f["type"] == "accepted").count();
    assert_eq!(
        accepted, 2,
        "both answers were accepted before the refund was raised: {frames:?}"
    );
    let call = frames.iter().find(|f| f["type"] == "tool_call").unwrap();
    assert_eq!(call["tool"], "cancel_order", "{frames:?}");
    let refund = frames.last().unwrap().clone();
    assert_eq!(refund["type"], "interrupt", "{frames:?}");
    assert_eq!(refund["action"], "request_refund");

    let frames = segment(&mut ws).await;
    assert_eq!(types(&frames), ["error", "message_complete"], "{frames:?}");
    assert_eq!(frames[0]["code"], "no_pending_interrupt");
    app.wait_for_turns(&thread.thread_id, 3).await;
    let status: String = sqlx::query_scalar("SELECT status FROM interrupts WHERE id = $1::uuid")
        .bind(refund["interrupt_id"].as_str().unwrap())
        .fetch_one(&app.db().await)
        .await
        .unwrap();
    assert_eq!(
        status, "pending",
        "the refund still waits for its own answer"
    );

    // Once seen, the refund is answered, with or without its id.
    let frames = turn(&mut ws, &thread.answer(false, None)).await;
    assert_eq!(
        types(&frames).last(),
        Some(&"message_complete"),
        "{frames:?}"
    );
    assert!(frames.iter().all(|f| f["type"] != "error"), "{frames:?}");
    assert!(
        tokens_text(&frames).contains("left it as it is"),
        "{frames:?}"
    );
    let refunds: i64 =
        sqlx::query_scalar("SELECT count(*) FROM demo_refunds WHERE order_id = 1003")
            .fetch_one(&app.db().await)
            .await
            .unwrap();
    assert_eq!(refunds, 0);
}

/// What the worker stores in `turns.events` reads back as `shared::timeline::TimelineEvent`
/// variants (none falls back to `Unknown`), and the timeline shows each as stored, in order,
/// with the turn's `turn_id` and `in_seq`.
#[tokio::test]
async fn stored_timeline_events_read_back_typed_and_the_timeline_shows_them_as_stored() {
    use shared::timeline::TimelineEvent;
    const ADMIN: &str = "timeline-admin-token";
    let app = TestApp::spawn(StackOptions::default().with("ADMIN_TOKEN", ADMIN)).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;

    turn(&mut ws, &thread.message("Where is my order 1002?")).await;
    turn(&mut ws, &thread.message("help")).await;
    let frames = turn(&mut ws, &thread.message("Cancel order 1003 and refund it")).await;
    assert_eq!(frames.last().unwrap()["type"], "interrupt", "{frames:?}");
    let frames = turn(&mut ws, &thread.answer(true, None)).await;
    assert_eq!(frames.last().unwrap()["type"], "interrupt", "{frames:?}");
    turn(&mut ws, &thread.answer(false, None)).await;
    turn(&mut ws, &thread.answer(true, None)).await;
    ws.send(&thread.request_human()).await;
    ws.expect_type("accepted").await;
    ws.frames_until(|frame| frame["type"] == "handoff").await;
    turn(&mut ws, &thread.message("Anyone there?")).await;

    // A turn commits after its frames went out: wait for all eight rows.
    let db = app.db().await;
    let rows: Vec<(i64, uuid::Uuid, Value)> = eventually("the eight turns to commit", || async {
        let rows: Vec<(i64, uuid::Uuid, Value)> = sqlx::query_as(
            "SELECT in_seq, turn_id, events FROM turns WHERE thread_id = $1 ORDER BY in_seq",
        )
        .bind(&thread.thread_id)
        .fetch_all(&db)
        .await
        .unwrap();
        (rows.len() == 8).then_some(rows)
    })
    .await;
    let mut stored = Vec::new();
    let mut kinds = BTreeSet::new();
    for (in_seq, turn_id, events) in rows {
        for raw in events.as_array().unwrap() {
            let event = TimelineEvent::from_stored(raw.clone());
            assert!(
                !matches!(event, TimelineEvent::Unknown(_)),
                "not a known shape: {raw}"
            );
            kinds.insert(event.kind().unwrap().to_owned());
            let mut shown = raw.clone();
            shown["turn_id"] = json!(turn_id);
            shown["in_seq"] = json!(in_seq);
            stored.push(shown);
        }
    }
    for kind in [
        "classification",
        "tool_call",
        "tool_result",
        "agent_reply",
        "clarification",
        "interrupt",
        "decision",
        "error",
        "request_human",
        "held_for_human",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }

    let url = format!(
        "{}/api/admin/conversations/{}/timeline",
        app.http_url(0),
        thread.thread_id
    );
    let timeline = app.get_json(&url, ADMIN).await;
    // The edge's own rows aside, the timeline is the stored events, in order.
    let edge_rows = ["user_message", "approval_answer", "turn_completed"];
    let shown: Vec<Value> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| !edge_rows.contains(&event["type"].as_str().unwrap_or_default()))
        .cloned()
        .collect();
    assert_eq!(shown, stored);
}
