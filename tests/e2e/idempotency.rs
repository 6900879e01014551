use e2e::ws::seqs;
use e2e::{StackOptions, TestApp};

#[tokio::test]
async fn a_message_id_sent_twice_is_accepted_twice_and_answered_once() {
    let app = TestApp::spawn(StackOptions::default()).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;

    ws.send(&thread.message_with_id("Hello again", "client-1"))
        .await;
    let accepted = ws.expect_type("accepted").await;
    assert_eq!(accepted["message_id"], "client-1");
    let first = ws.frames_until_type("message_complete").await;
    assert_eq!(seqs(&first), vec![1, 2, 3, 4, 5, 6, 7]);

    ws.send(&thread.message_with_id("Hello again", "client-1"))
        .await;
    let again = ws.expect_type("accepted").await;
    assert_eq!(again["message_id"], "client-1");

    // A later message is answered next: nothing was produced for the duplicate.
    ws.send(&thread.message_with_id("Thanks", "client-2")).await;
    ws.expect_type("accepted").await;
    let next = ws.frames_until_type("message_complete").await;
    assert_eq!(seqs(&next), vec![8, 9, 10, 11, 12, 13, 14]);
    assert_ne!(next[0]["turn_id"], first[0]["turn_id"]);

    app.wait_for_turns(&thread.thread_id, 2).await;
    assert_eq!(
        app.stored_inbound().await,
        2,
        "JetStream stored the duplicate once"
    );
    let turns: i64 = sqlx::query_scalar("SELECT count(*) FROM turns WHERE thread_id = $1")
        .bind(&thread.thread_id)
        .fetch_one(&app.db().await)
        .await
        .unwrap();
    assert_eq!(turns, 2);
}
