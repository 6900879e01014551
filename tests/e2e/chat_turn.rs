use e2e::ws::{seqs, tokens_text};
use e2e::{StackOptions, TestApp};

#[tokio::test]
async fn a_message_streams_tokens_then_completes_and_seq_continues_across_turns() {
    let app = TestApp::spawn(StackOptions::default()).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;

    ws.send(&thread.message("Hi there, anybody home")).await;
    let accepted = ws.expect_type("accepted").await;
    assert_eq!(accepted["thread_id"], thread.thread_id.as_str());
    assert!(accepted["message_id"].is_string());
    assert!(accepted.get("seq").is_none(), "accepted has no seq");
    let first = ws.frames_until_type("message_complete").await;
    assert_eq!(
        first.len(),
        7,
        "user_message, 5 tokens then message_complete: {first:?}"
    );
    assert_eq!(seqs(&first), vec![1, 2, 3, 4, 5, 6, 7]);
    // The customer's message opens its turn (SPEC §7), so every socket of the thread sees it.
    assert_eq!(first[0]["type"], "user_message");
    assert_eq!(first[0]["content"], "Hi there, anybody home");
    assert_eq!(first[0]["message_id"], accepted["message_id"]);
    assert!(first[1..6]
        .iter()
        .all(|f| f["type"] == "token" && f["agent"] == "general"));
    let turn_id = first[0]["turn_id"].clone();
    assert!(first
        .iter()
        .all(|f| f["turn_id"] == turn_id && f["thread_id"] == thread.thread_id.as_str()));
    // Usage sums the classification and the agent's call; the scripted model is priced like
    // gpt-4o-mini in the demo config ($0.15 / $0.60 per million tokens).
    let usage = &first[6]["usage"];
    let prompt = usage["prompt_tokens"].as_f64().unwrap();
    let completion = usage["completion_tokens"].as_f64().unwrap();
    assert!(prompt > 4.0, "the classifier's prompt counts too: {usage}");
    assert_eq!(
        completion,
        5.0 + 10.0,
        "5 tokens + the classification: {usage}"
    );
    let cost = usage["cost_usd"].as_f64().unwrap();
    assert!(
        (cost - (prompt * 0.15 + completion * 0.60) / 1e6).abs() < 1e-12,
        "{usage}"
    );

    ws.send(&thread.message("Thanks a lot")).await;
    ws.expect_type("accepted").await;
    let second = ws.frames_until_type("message_complete").await;
    assert_eq!(seqs(&second), vec![8, 9, 10, 11, 12, 13, 14]);
    assert_ne!(
        second[0]["turn_id"], turn_id,
        "each message is its own turn"
    );

    // The thread's state and both turns are in PostgreSQL, with the reply the client saw.
    app.wait_for_turns(&thread.thread_id, 2).await;
    let db = app.db().await;
    let (last_seq, last_in_seq): (i64, i64) =
        sqlx::query_as("SELECT last_seq, last_in_seq FROM threads WHERE id = $1")
            .bind(&thread.thread_id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(last_seq, 14);
    assert_eq!(last_in_seq, 2);
    let turns: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT content, reply, first_seq, last_seq FROM turns WHERE thread_id = $1 ORDER BY in_seq",
    )
    .bind(&thread.thread_id)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[0].0, "Hi there, anybody home");
    assert_eq!(turns[0].1, tokens_text(&first));
    assert_eq!((turns[0].2, turns[0].3), (1, 7));
    assert_eq!((turns[1].2, turns[1].3), (8, 14));
}

#[tokio::test]
async fn threads_are_numbered_independently_and_run_concurrently() {
    let app = TestApp::spawn(StackOptions::default().with("SCRIPTED_TOKEN_DELAY_MS", "20")).await;
    let mut sockets = Vec::new();
    for _ in 0..5 {
        let thread = app.create_thread().await;
        let mut ws = app.connect(0).await;
        ws.send(&thread.message("hello")).await;
        ws.expect_type("accepted").await;
        sockets.push(ws);
    }
    for ws in &mut sockets {
        let frames = ws.frames_until_type("message_complete").await;
        assert_eq!(seqs(&frames), vec![1, 2, 3, 4, 5, 6, 7]);
    }
}

#[tokio::test]
async fn content_the_database_cannot_store_as_is_does_not_block_the_thread() {
    let app = TestApp::spawn(StackOptions::default()).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send(&thread.message("nul \u{0} inside")).await;
    ws.expect_type("accepted").await;
    ws.frames_until_type("message_complete").await;
    ws.send(&thread.message("next")).await;
    ws.expect_type("accepted").await;
    let next = ws.frames_until_type("message_complete").await;
    assert_eq!(next[0]["seq"], 8);
    app.wait_for_turns(&thread.thread_id, 2).await;
    let stored: String = sqlx::query_scalar(
        "SELECT content FROM turns WHERE thread_id = $1 ORDER BY in_seq LIMIT 1",
    )
    .bind(&thread.thread_id)
    .fetch_one(&app.db().await)
    .await
    .unwrap();
    assert_eq!(stored, "nul \u{FFFD} inside");
}
