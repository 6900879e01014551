//! SPEC §8: `cancel`, double texting, erasure and retention, on the real binaries.

use std::time::{Duration, Instant};

use e2e::ws::tokens_text;
use e2e::{eventually, metric, StackOptions, TestApp, Thread, WsClient};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-tests";

/// A stack whose general replies stream for about ten seconds (400 tokens, 25 ms apart).
fn long_turns() -> StackOptions {
    StackOptions::default()
        .with("SCRIPTED_REPLY_TOKENS", "400")
        .with("SCRIPTED_TOKEN_DELAY_MS", "25")
        .with("ADMIN_TOKEN", ADMIN)
}

/// Sends a long message and waits until its turn streams; returns the frames so far.
async fn start_long_turn(ws: &mut WsClient, thread: &Thread) -> Vec<Value> {
    ws.send(&thread.message("Tell me everything about your shop, please."))
        .await;
    let mut frames = ws.frames_until(|frame| frame["type"] == "token").await;
    frames.extend(ws.frames_until(|frame| frame["type"] == "token").await);
    assert_eq!(frames[0]["type"], "accepted", "{frames:?}");
    frames
}

/// Frames up to the `message_complete` of `turn_id`, skipping `accepted`.
async fn until_complete(ws: &mut WsClient, turn_id: &Value) -> Vec<Value> {
    ws.frames_until(|frame| frame["type"] == "message_complete" && frame["turn_id"] == *turn_id)
        .await
}

/// No frame of `turn_id` arrives within `wait`.
async fn nothing_more_of(ws: &mut WsClient, turn_id: &Value, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    while let Some(frame) = ws
        .next_frame_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        let frame = frame.expect("the socket stays open");
        assert_ne!(
            frame["turn_id"], *turn_id,
            "a frame of the cancelled turn after its end: {frame}"
        );
    }
}

async fn turn_rows(app: &TestApp, thread: &Thread) -> Vec<(String, String, String)> {
    sqlx::query_as("SELECT kind, outcome, reply FROM turns WHERE thread_id = $1 ORDER BY in_seq")
        .bind(&thread.thread_id)
        .fetch_all(&app.db().await)
        .await
        .unwrap()
}

/// Waits for the turn row of the message at position `index` to have an outcome.
async fn outcome_of(app: &TestApp, thread: &Thread, index: usize) -> (String, String, String) {
    eventually("the turn to be committed", || async {
        turn_rows(app, thread).await.get(index).cloned()
    })
    .await
}

#[tokio::test]
async fn a_cancel_stops_a_streaming_turn_at_once_and_the_next_message_runs() {
    let app = TestApp::spawn(long_turns()).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let started = start_long_turn(&mut ws, &thread).await;
    let turn_id = started[1]["turn_id"].clone();

    let sent = Instant::now();
    ws.send(&thread.cancel()).await;
    let frames = until_complete(&mut ws, &turn_id).await;
    let took = sent.elapsed();
    let complete = frames.last().unwrap();
    assert_eq!(complete["cancelled"], true, "{complete}");
    assert!(
        took < Duration::from_secs(1),
        "the turn ended {took:?} after the cancel"
    );
    assert!(
        frames.iter().any(|frame| frame["type"] == "accepted"),
        "the cancel is answered `accepted`: {frames:?}"
    );
    assert!(
        complete["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "the usage spent so far: {complete}"
    );
    nothing_more_of(&mut ws, &turn_id, Duration::from_millis(500)).await;
    let all: Vec<Value> = started.iter().chain(&frames).cloned().collect();
    let streamed = tokens_text(&all);
    assert!(
        streamed.split_whitespace().count() < 200,
        "the turn stopped early"
    );

    // Stored as cancelled, with the partial reply the client saw.
    let (kind, outcome, reply) = outcome_of(&app, &thread, 0).await;
    assert_eq!((kind.as_str(), outcome.as_str()), ("message", "cancelled"));
    assert_eq!(reply, streamed);
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
    assert_eq!(history["messages"][1]["outcome"], "cancelled", "{history}");

    // The next message runs normally.
    ws.send(&thread.message("Where is my order 1002?")).await;
    let next = ws
        .frames_until(|frame| frame["type"] == "message_complete")
        .await;
    let complete = next.last().unwrap();
    assert!(complete.get("cancelled").is_none(), "{complete}");
    assert!(tokens_text(&next).contains("Order 1002"), "{next:?}");

    // With nothing in progress a cancel is accepted and changes nothing.
    app.wait_for_turns(&thread.thread_id, 2).await;
    ws.send(&thread.cancel()).await;
    ws.expect_type("accepted").await;
    assert!(
        ws.next_frame_within(Duration::from_millis(500))
            .await
            .is_none(),
        "nothing follows a cancel with nothing to stop"
    );
    // The thread's only stream in this test: its sequences are 1…4; the cancel is the 4th.
    let db = app.db().await;
    eventually("the cancel to be taken", || async {
        let last: i64 = sqlx::query_scalar("SELECT last_in_seq FROM threads WHERE id = $1")
            .bind(&thread.thread_id)
            .fetch_one(&db)
            .await
            .ok()?;
        (last == 4).then_some(())
    })
    .await;
    assert_eq!(
        turn_rows(&app, &thread).await.len(),
        2,
        "no turn row for it"
    );
    let metrics = app.worker_metrics(0).await;
    assert_eq!(
        metric(&metrics, "worker_turns_total{outcome=\"cancelled\"}"),
        Some(1.0)
    );
    let analytics = app
        .get_json(
            &format!("{}/api/admin/analytics?range=24h", app.http_url(0)),
            ADMIN,
        )
        .await;
    assert_eq!(analytics["cancelled_turns"], 1, "{analytics}");
}

#[tokio::test]
async fn a_cancel_sent_through_another_edge_stops_the_turn_on_whichever_worker_runs_it() {
    let app = TestApp::spawn(StackOptions {
        edges: 2,
        workers: 2,
        ..long_turns()
    })
    .await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let started = start_long_turn(&mut ws, &thread).await;
    let turn_id = started[1]["turn_id"].clone();

    let mut other = app.connect(1).await;
    // A cancel naming another turn changes nothing: the turn streams on.
    let mut wrong = thread.cancel();
    wrong["turn_id"] = json!(uuid::Uuid::now_v7().to_string());
    other.send(&wrong).await;
    other.expect_type("accepted").await;
    let until = tokio::time::Instant::now() + Duration::from_millis(400);
    let mut go_on = Vec::new();
    while let Some(frame) = ws
        .next_frame_within(until.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        go_on.push(frame.expect("the socket stays open"));
    }
    assert!(
        go_on
            .iter()
            .all(|frame| frame["type"] != "message_complete")
            && go_on
                .iter()
                .filter(|frame| frame["type"] == "token")
                .count()
                > 5,
        "the turn streams on: {go_on:?}"
    );
    let mut named = thread.cancel();
    named["turn_id"] = turn_id.clone();
    let sent = Instant::now();
    other.send(&named).await;
    // The first cancel attached this socket to the thread: it relays the turn's frames too.
    other
        .frames_until(|frame| frame["type"] == "accepted")
        .await;
    let frames = until_complete(&mut ws, &turn_id).await;
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(frames.last().unwrap()["cancelled"], true);
    nothing_more_of(&mut ws, &turn_id, Duration::from_millis(500)).await;
    assert_eq!(outcome_of(&app, &thread, 0).await.1, "cancelled");
}

#[tokio::test]
async fn a_cancel_withdraws_a_pending_approval_and_the_tool_never_runs() {
    let app = TestApp::spawn(StackOptions::default().with("ADMIN_TOKEN", ADMIN)).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send(&thread.message("Please refund order 1005")).await;
    let frames = ws.frames_until_type("interrupt").await;
    let interrupt = frames.last().unwrap().clone();
    assert_eq!(interrupt["action"], "request_refund");
    app.wait_for_turns(&thread.thread_id, 1).await;

    ws.send(&thread.cancel()).await;
    ws.expect_type("accepted").await;
    let complete = ws.expect_type("message_complete").await;
    assert_eq!(complete["cancelled"], true, "{complete}");
    assert_eq!(complete["turn_id"], interrupt["turn_id"]);

    // Approved afterwards: there is nothing to approve any more.
    ws.send(&thread.answer(true, interrupt["interrupt_id"].as_str()))
        .await;
    ws.expect_type("accepted").await;
    ws.expect_error("no_pending_interrupt").await;
    ws.expect_type("message_complete").await;
    app.wait_for_turns(&thread.thread_id, 3).await;
    let db = app.db().await;
    let refunds: i64 =
        sqlx::query_scalar("SELECT count(*) FROM demo_refunds WHERE order_id = 1005")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(refunds, 0, "the withdrawn tool never ran");
    let status: String = sqlx::query_scalar("SELECT status FROM interrupts WHERE id = $1::uuid")
        .bind(interrupt["interrupt_id"].as_str().unwrap())
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(status, "cancelled");
    assert_eq!(turn_rows(&app, &thread).await[1].1, "cancelled");
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
    assert_eq!(history["messages"][1]["outcome"], "cancelled", "{history}");
    assert!(history["pending_approval"].is_null(), "{history}");
    let timeline = app
        .get_json(
            &format!(
                "{}/api/admin/conversations/{}/timeline",
                app.http_url(0),
                thread.thread_id
            ),
            ADMIN,
        )
        .await;
    let events = timeline["events"].as_array().unwrap();
    assert!(
        events.iter().any(|event| event["type"] == "cancel_request"),
        "{timeline}"
    );
    assert!(
        events
            .iter()
            .any(|event| event["type"] == "turn_completed" && event["outcome"] == "cancelled"),
        "{timeline}"
    );
}

#[tokio::test]
async fn a_cancel_racing_the_death_of_the_worker_ends_the_turn_cancelled_once() {
    let options = long_turns()
        .with("LEASE_TTL_SECS", "2")
        .with("ACK_WAIT_SECS", "2");
    let mut app = TestApp::spawn(options).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let started = start_long_turn(&mut ws, &thread).await;
    let turn_id = started[1]["turn_id"].clone();

    // The worker running the turn dies; the cancel reaches no live worker.
    app.workers[0].kill().await;
    ws.send(&thread.cancel()).await;
    app.start_worker().await;
    let frames = until_complete(&mut ws, &turn_id).await;
    assert_eq!(frames.last().unwrap()["cancelled"], true, "{frames:?}");
    nothing_more_of(&mut ws, &turn_id, Duration::from_secs(2)).await;
    app.wait_for_turns(&thread.thread_id, 1).await;
    let rows = turn_rows(&app, &thread).await;
    assert_eq!(rows.len(), 1, "one turn, committed once: {rows:?}");
    assert_eq!(rows[0].1, "cancelled");

    ws.send(&thread.message("Where is my order 1002?")).await;
    let next = ws
        .frames_until(|frame| frame["type"] == "message_complete")
        .await;
    assert!(next.last().unwrap().get("cancelled").is_none());
}

#[tokio::test]
async fn double_texting_interrupt_cancels_the_turn_in_progress_then_runs_the_new_message() {
    let app = TestApp::spawn(long_turns().with("DOUBLE_TEXT", "interrupt")).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let started = start_long_turn(&mut ws, &thread).await;
    let first = started[1]["turn_id"].clone();
    let sent = Instant::now();
    ws.send(&thread.message("Where is my order 1002?")).await;
    let frames = until_complete(&mut ws, &first).await;
    assert_eq!(frames.last().unwrap()["cancelled"], true);
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "{:?}",
        sent.elapsed()
    );
    let next = ws
        .frames_until(|frame| frame["type"] == "message_complete")
        .await;
    assert_ne!(next.last().unwrap()["turn_id"], first);
    assert!(next.last().unwrap().get("cancelled").is_none());
    assert!(tokens_text(&next).contains("Order 1002"), "{next:?}");
    assert_eq!(outcome_of(&app, &thread, 0).await.1, "cancelled");
    assert_eq!(outcome_of(&app, &thread, 1).await.1, "completed");
}

#[tokio::test]
async fn double_texting_enqueue_runs_both_messages_in_full() {
    let app = TestApp::spawn(
        StackOptions::default()
            .with("SCRIPTED_REPLY_TOKENS", "40")
            .with("SCRIPTED_TOKEN_DELAY_MS", "20"),
    )
    .await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send(&thread.message("Tell me about your shop")).await;
    ws.frames_until(|frame| frame["type"] == "token").await;
    ws.send(&thread.message("Where is my order 1002?")).await;
    let first = ws
        .frames_until(|frame| frame["type"] == "message_complete")
        .await;
    assert!(first.last().unwrap().get("cancelled").is_none());
    let second = ws
        .frames_until(|frame| frame["type"] == "message_complete")
        .await;
    assert!(second.last().unwrap().get("cancelled").is_none());
    assert!(tokens_text(&second).contains("Order 1002"));
    assert_eq!(outcome_of(&app, &thread, 1).await.1, "completed");
    assert_eq!(turn_rows(&app, &thread).await[0].1, "completed");
}

/// Messages of the thread left in `<PREFIX>_IN` and `<PREFIX>_OUT`, read back from NATS.
async fn stored_messages(app: &TestApp, thread: &Thread) -> usize {
    let js = app.jetstream().await;
    let subjects = app.subjects();
    let mut count = 0;
    for (stream, subject) in [
        (subjects.inbound_stream(), subjects.inbound(&thread.id())),
        (subjects.replies_stream(), subjects.replies(&thread.id())),
    ] {
        let stream = js.get_stream(stream).await.unwrap();
        let info = stream.info_with_subjects(subject.clone()).await.unwrap();
        use futures_util::StreamExt as _;
        let subjects: Vec<_> = info.collect().await;
        for entry in subjects {
            let (name, messages) = entry.unwrap();
            if name == subject {
                count += messages;
            }
        }
    }
    count
}

/// What is left of the thread in PostgreSQL: rows of every table keyed by it.
async fn rows_left(app: &TestApp, thread: &Thread) -> i64 {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM threads WHERE id = $1)
              + (SELECT count(*) FROM turns WHERE thread_id = $1)
              + (SELECT count(*) FROM interrupts WHERE thread_id = $1)
              + (SELECT count(*) FROM tool_executions WHERE thread_id = $1)
              + (SELECT count(*) FROM turn_attempts WHERE thread_id = $1)
              + (SELECT count(*) FROM dead_letters WHERE thread_id = $1)
              + (SELECT count(*) FROM turn_agents WHERE thread_id = $1)",
    )
    .bind(&thread.thread_id)
    .fetch_one(&app.db().await)
    .await
    .unwrap()
}

/// Everything a client or an operator could read of an erased thread is gone.
async fn assert_erased(app: &TestApp, thread: &Thread, actor: &str) {
    let base = app.http_url(0);
    let history = app
        .http
        .get(format!("{base}/api/threads/{}/messages", thread.thread_id))
        .bearer_auth(&thread.token)
        .send()
        .await
        .unwrap();
    assert_eq!(history.status(), 404, "history of an erased thread");
    let timeline = app
        .http
        .get(format!(
            "{base}/api/admin/conversations/{}/timeline",
            thread.thread_id
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(timeline.status(), 404, "timeline of an erased thread");
    let mut ws = app.connect(0).await;
    ws.send(&thread.resume(0)).await;
    ws.expect_error("unauthorized").await;
    ws.send(&thread.message("hello again")).await;
    ws.expect_error("unauthorized").await;
    assert!(
        ws.next_frame_within(Duration::from_millis(300))
            .await
            .is_none(),
        "a resume replays nothing"
    );
    eventually("the streams to hold nothing of the thread", || async {
        (stored_messages(app, thread).await == 0).then_some(())
    })
    .await;
    assert_eq!(rows_left(app, thread).await, 0);
    let audit: (String, String) =
        sqlx::query_as("SELECT thread_id, actor FROM erasures WHERE thread_id = $1")
            .bind(&thread.thread_id)
            .fetch_one(&app.db().await)
            .await
            .unwrap();
    assert_eq!(audit.1, actor);
}

/// A thread with a committed turn, an approval and frames in both streams.
async fn a_conversation(app: &TestApp) -> Thread {
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send(&thread.message("Where is my order 1002?")).await;
    ws.frames_until(|frame| frame["type"] == "message_complete")
        .await;
    ws.send(&thread.message("Please refund order 1005")).await;
    ws.frames_until_type("interrupt").await;
    app.wait_for_turns(&thread.thread_id, 2).await;
    assert!(stored_messages(app, &thread).await > 0);
    thread
}

#[tokio::test]
async fn the_owner_erases_a_conversation_everywhere() {
    let app = TestApp::spawn(StackOptions::default().with("ADMIN_TOKEN", ADMIN)).await;
    let thread = a_conversation(&app).await;
    let other = a_conversation(&app).await;
    let url = format!("{}/api/threads/{}", app.http_url(0), thread.thread_id);
    let refused = app
        .http
        .delete(&url)
        .bearer_auth(&other.token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "another thread's token");
    let erased = app
        .http
        .delete(&url)
        .bearer_auth(&thread.token)
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 204);
    assert_erased(&app, &thread, "owner").await;
    let again = app
        .http
        .delete(&url)
        .bearer_auth(&thread.token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404, "gone already");
    assert!(rows_left(&app, &other).await > 0, "other threads are kept");
    assert!(stored_messages(&app, &other).await > 0);
}

#[tokio::test]
async fn an_admin_erases_a_conversation_even_while_a_turn_of_it_runs() {
    let app = TestApp::spawn(long_turns()).await;
    let thread = a_conversation(&app).await;
    let mut ws = app.connect(0).await;
    start_long_turn(&mut ws, &thread).await;
    let url = format!(
        "{}/api/admin/conversations/{}",
        app.http_url(0),
        thread.thread_id
    );
    let unauthorized = app.http.delete(&url).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    let erased = app
        .http
        .delete(&url)
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 204);
    // The turn in progress stops, publishing and storing nothing more.
    eventually("the running turn to be dropped", || async {
        let metrics = app.worker_metrics(0).await;
        metric(&metrics, "worker_deliveries_total{result=\"erased\"}").filter(|n| *n >= 1.0)
    })
    .await;
    assert_erased(&app, &thread, "admin").await;
    let unknown = app
        .http
        .delete(format!("{}/api/admin/conversations/nope", app.http_url(0)))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn retention_erases_inactive_conversations() {
    let app = TestApp::spawn(
        StackOptions::default()
            .with("ADMIN_TOKEN", ADMIN)
            .with("RETENTION_DAYS", "3")
            .with("RETENTION_UNIT_SECS", "1")
            .with("RETENTION_SWEEP_SECS", "1")
            .with("RETENTION_BATCH", "1"),
    )
    .await;
    let old = a_conversation(&app).await;
    let older = a_conversation(&app).await;
    eventually("the retention sweep to erase both", || async {
        let metrics = app.worker_metrics(0).await;
        metric(&metrics, "worker_retention_deleted_conversations_total").filter(|n| *n >= 2.0)
    })
    .await;
    assert_erased(&app, &old, "retention").await;
    assert_erased(&app, &older, "retention").await;
    // A conversation active within the window is kept.
    let recent = a_conversation(&app).await;
    assert!(rows_left(&app, &recent).await > 0);
}
