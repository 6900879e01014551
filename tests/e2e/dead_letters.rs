//! SPEC §6.5–6: a message that keeps failing is dead-lettered without blocking anyone; after the
//! incident, `worker replay` re-drives it.

use e2e::ws::seqs;
use e2e::{StackOptions, TestApp};
use serde_json::Value;

fn stdout_json(output: &std::process::Output) -> Value {
    assert!(
        output.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

#[tokio::test]
async fn a_failing_message_is_dead_lettered_and_replay_redrives_it_after_the_outage() {
    let options = StackOptions::default()
        .with("SCRIPTED_FAIL_ON", "boom")
        .with("TURN_MAX_ATTEMPTS", "2");
    let mut app = TestApp::spawn(options).await;
    let failing = app.create_thread().await;
    let other = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let mut bystander = app.connect(0).await;

    ws.send(&failing.message_with_id("boom: hello there", "doomed"))
        .await;
    ws.expect_type("accepted").await;
    // Other threads keep flowing while this one waits between attempts.
    bystander.send(&other.message("hello")).await;
    bystander.expect_type("accepted").await;
    bystander.frames_until_type("message_complete").await;

    let frames = ws.frames_until_type("error").await;
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "user_message",
            "token",
            "token",
            "turn_reset",
            "user_message",
            "token",
            "token",
            "turn_reset",
            "error"
        ],
        "two attempts, each reset, then the failure: {frames:?}"
    );
    let failed = frames.last().unwrap();
    assert_eq!(failed["code"], "processing_failed");
    assert_eq!(failed["retryable"], false);
    assert_eq!(seqs(&frames), (1..=9).collect::<Vec<_>>());

    // The thread moves on.
    ws.send(&failing.message("and one more thing")).await;
    ws.expect_type("accepted").await;
    let next = ws.frames_until_type("message_complete").await;
    assert_eq!(next[0]["seq"], 10);

    // The operator's view.
    let listed = stdout_json(
        &app.run_command("worker", &["dead-letters", "list", "--json"], &[])
            .await,
    );
    let letters = listed.as_array().unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter["thread_id"], failing.thread_id.as_str());
    assert_eq!(letter["message_id"], "doomed");
    assert_eq!(letter["attempts"], 2);
    assert!(letter["reason"]
        .as_str()
        .unwrap()
        .contains("SCRIPTED_FAIL_ON"));
    let id = letter["id"].as_str().unwrap();
    let shown = stdout_json(
        &app.run_command("worker", &["dead-letters", "show", id], &[])
            .await,
    );
    assert_eq!(shown["history"].as_array().unwrap().len(), 2);
    let table = app
        .run_command("worker", &["dead-letters", "list"], &[])
        .await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(id) && table.contains("doomed"), "{table}");
    let unknown = app
        .run_command(
            "worker",
            &["dead-letters", "show", &uuid::Uuid::new_v4().to_string()],
            &[],
        )
        .await;
    assert!(!unknown.status.success(), "an unknown id is an error");

    // A dry run says what it would do and publishes nothing.
    let stored = app.stored_inbound().await;
    let dry = stdout_json(
        &app.run_command(
            "worker",
            &["replay", "--dead-letters", "--dry-run", "--json"],
            &[],
        )
        .await,
    );
    assert_eq!(dry["redriven"], 1);
    assert_eq!(dry["items"][0]["action"], "would_redrive");
    assert_eq!(app.stored_inbound().await, stored);

    // The outage ends: workers without the failure; replay re-drives the dead letter.
    app.workers[0].kill().await;
    app.env.remove("SCRIPTED_FAIL_ON");
    app.start_worker().await;
    let replayed = stdout_json(
        &app.run_command("worker", &["replay", "--dead-letters", "--json"], &[])
            .await,
    );
    assert_eq!(replayed["redriven"], 1, "{replayed}");
    assert_eq!(replayed["items"][0]["action"], "redriven");
    let answer = ws.frames_until_type("message_complete").await;
    assert_eq!(seqs(&answer), (17..=23).collect::<Vec<_>>());
    assert_ne!(answer[0]["turn_id"], frames[0]["turn_id"]);

    // Nothing left to re-drive; replaying the thread touches nothing already processed.
    let again = stdout_json(
        &app.run_command("worker", &["replay", "--dead-letters", "--json"], &[])
            .await,
    );
    assert_eq!(again["selected"], 0);
    let thread = app
        .run_command("worker", &["replay", "--thread", &failing.thread_id], &[])
        .await;
    assert!(thread.status.success());
    let said = String::from_utf8_lossy(&thread.stdout);
    assert!(
        said.contains("3 selected: re-drove 0, 3 already processed"),
        "{said}"
    );

    app.wait_for_turns(&failing.thread_id, 3).await;
    let outcomes: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM turns WHERE thread_id = $1 ORDER BY in_seq")
            .bind(&failing.thread_id)
            .fetch_all(&app.db().await)
            .await
            .unwrap();
    assert_eq!(outcomes, ["dead_lettered", "completed", "completed"]);
}

#[tokio::test]
async fn a_panic_in_a_turn_counts_as_an_attempt_and_ends_in_a_dead_letter() {
    // SCRIPTED_PANIC_ON: a drill of a bug inside a turn.
    let options = StackOptions::default()
        .with("SCRIPTED_PANIC_ON", "kaboom")
        .with("TURN_MAX_ATTEMPTS", "2");
    let app = TestApp::spawn(options).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;

    ws.send(&thread.message_with_id("kaboom, please", "buggy"))
        .await;
    ws.expect_type("accepted").await;
    let frames = ws.frames_until_type("error").await;
    let failed = frames.last().unwrap();
    assert_eq!(failed["code"], "processing_failed", "{frames:?}");
    // The dead letter is filed just after its error frame is sent.
    app.wait_for_turns(&thread.thread_id, 1).await;

    let listed = stdout_json(
        &app.run_command("worker", &["dead-letters", "list", "--json"], &[])
            .await,
    );
    let letter = &listed[0];
    assert_eq!(letter["message_id"], "buggy");
    assert_eq!(letter["attempts"], 2, "{listed}");
    let reason = letter["reason"].as_str().unwrap();
    assert!(reason.contains("panicked"), "{reason}");

    // The thread is not wedged, and the delivery gauge is back to zero.
    ws.send(&thread.message("hello")).await;
    ws.expect_type("accepted").await;
    ws.frames_until_type("message_complete").await;
    e2e::eventually("worker_deliveries_in_flight back to 0", || async {
        let metrics = app.worker_metrics(0).await;
        (e2e::metric(&metrics, "worker_deliveries_in_flight") == Some(0.0)).then_some(())
    })
    .await;
    let metrics = app.worker_metrics(0).await;
    assert_eq!(
        e2e::metric(&metrics, "worker_deliveries_total{result=\"failed\"}"),
        Some(1.0),
        "one counted failure before the dead letter"
    );
}
