use e2e::ws::{seqs, tokens_text};
use e2e::{StackOptions, TestApp};

#[tokio::test]
async fn resume_on_a_second_edge_mid_turn_continues_without_gap_or_duplicate() {
    let options = StackOptions {
        edges: 2,
        ..StackOptions::default()
    }
    .with("SCRIPTED_REPLY_TOKENS", "30")
    .with("SCRIPTED_TOKEN_DELAY_MS", "30");
    let app = TestApp::spawn(options).await;
    let thread = app.create_thread().await;

    // Each turn: the customer's `user_message`, 30 tokens, `message_complete`.
    let mut first = app.connect(0).await;
    first
        .send(&thread.message("Hello, a long reply please"))
        .await;
    first.expect_type("accepted").await;
    let before = first
        .frames_until(|frame| frame["seq"].as_u64() >= Some(5))
        .await;
    assert_eq!(seqs(&before), vec![1, 2, 3, 4, 5]);
    drop(first); // the connection drops mid-turn

    let mut second = app.connect(1).await;
    second.send(&thread.resume(5)).await;
    let after = second.frames_until_type("message_complete").await;
    assert_eq!(seqs(&after), (6..=32).collect::<Vec<_>>(), "{after:?}");
    let turn_id = &before[0]["turn_id"];
    assert!(after.iter().all(|f| &f["turn_id"] == turn_id));

    app.wait_for_turns(&thread.thread_id, 1).await;
    let reply: String = sqlx::query_scalar("SELECT reply FROM turns WHERE thread_id = $1")
        .bind(&thread.thread_id)
        .fetch_one(&app.db().await)
        .await
        .unwrap();
    assert_eq!(
        format!("{}{}", tokens_text(&before), tokens_text(&after)),
        reply
    );

    // A new socket resuming from 0 gets the whole retained history, then live frames.
    let mut third = app.connect(0).await;
    third.send(&thread.resume(0)).await;
    let history = third.frames_until_type("message_complete").await;
    assert_eq!(seqs(&history), (1..=32).collect::<Vec<_>>());
    third.send(&thread.message("And one more thing")).await;
    third.expect_type("accepted").await;
    let next = third.frames_until_type("message_complete").await;
    assert_eq!(seqs(&next), (33..=64).collect::<Vec<_>>());

    // The second socket stayed attached and saw the new turn live, once.
    let live = second.frames_until_type("message_complete").await;
    assert_eq!(seqs(&live), (33..=64).collect::<Vec<_>>());

    // Resuming from the middle of a long history starts exactly after the given seq.
    for after in [1, 30, 31, 40, 61] {
        let mut late = app.connect(1).await;
        late.send(&thread.resume(after)).await;
        let rest = late.frames_until(|f| f["seq"] == 64).await;
        assert_eq!(
            seqs(&rest),
            (after + 1..=64).collect::<Vec<_>>(),
            "after {after}"
        );
    }
}

#[tokio::test]
async fn resume_after_the_last_frame_replays_nothing_and_relays_live_frames() {
    let app = TestApp::spawn(StackOptions::default()).await;
    let thread = app.create_thread().await;
    let mut sender = app.connect(0).await;
    sender.send(&thread.message("hi")).await;
    sender.expect_type("accepted").await;
    sender.frames_until_type("message_complete").await;

    let mut watcher = app.connect(0).await;
    watcher.send(&thread.resume(7)).await;
    sender.send(&thread.message("again")).await;
    sender.expect_type("accepted").await;
    sender.frames_until_type("message_complete").await;
    let live = watcher.frames_until_type("message_complete").await;
    assert_eq!(seqs(&live), (8..=14).collect::<Vec<_>>());
}
