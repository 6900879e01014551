use e2e::{StackOptions, TestApp};

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_both_processes_exit_cleanly() {
    let mut app = TestApp::spawn(StackOptions::default().with("SHUTDOWN_GRACE_SECS", "1")).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send(&thread.message("hi")).await;
    ws.expect_type("accepted").await;
    ws.frames_until_type("message_complete").await;

    let worker = app.workers[0].terminate().await;
    assert!(worker.success(), "worker exit: {worker:?}");

    let edge = &mut app.edges[0];
    let (status, closed) = tokio::join!(edge.terminate(), async {
        loop {
            match ws.next_frame_or_close().await {
                Ok(_) => continue,
                Err(code) => return code,
            }
        }
    });
    assert!(status.success(), "edge exit: {status:?}");
    assert_eq!(closed, Some(1001));
}

#[tokio::test]
async fn clients_reconnect_after_an_edge_restart_and_resume_what_they_missed() {
    let mut app = TestApp::spawn(StackOptions::default().with("SHUTDOWN_GRACE_SECS", "0")).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send(&thread.message("hi")).await;
    ws.expect_type("accepted").await;
    let first = ws.frames_until_type("message_complete").await;
    assert_eq!(e2e::ws::seqs(&first), vec![1, 2, 3, 4, 5, 6, 7]);

    let status = app.edges[0].terminate().await;
    assert!(status.success());
    assert_eq!(ws.next_frame_or_close().await.err(), Some(Some(1001)));
    let restarted = app.start_edge().await;
    let mut again = app.connect(restarted).await;
    again.send(&thread.resume(3)).await;
    let missed = again.frames_until_type("message_complete").await;
    assert_eq!(e2e::ws::seqs(&missed), vec![4, 5, 6, 7]);
    again.send(&thread.message("still here?")).await;
    again.expect_type("accepted").await;
    let next = again.frames_until_type("message_complete").await;
    assert_eq!(next[0]["seq"], 8);
}

/// SIGTERM mid-turn: the worker hands the turn back at the end of its grace period (lease
/// released, message nak'ed), so another worker finishes it at once — long before the 60 s lease
/// or the 30 s ack wait would have let it.
#[tokio::test]
async fn a_worker_stopped_mid_turn_hands_it_back_to_another() {
    let options = StackOptions {
        workers: 1,
        ..StackOptions::default()
    }
    .with("SHUTDOWN_GRACE_SECS", "1")
    .with("LEASE_TTL_SECS", "60")
    .with("SCRIPTED_REPLY_TOKENS", "100")
    .with("SCRIPTED_TOKEN_DELAY_MS", "40");
    let mut app = TestApp::spawn(options).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send(&thread.message("a long answer, please")).await;
    ws.expect_type("accepted").await;
    ws.frames_until(|f| f["seq"].as_u64() >= Some(3)).await;

    // A second worker is ready; the first is told to stop while it streams.
    app.start_worker().await;
    let status = app.workers[0].terminate().await;
    assert!(status.success(), "worker exit: {status:?}");
    let rest = ws.frames_until_type("message_complete").await;
    assert!(
        rest.iter().any(|f| f["type"] == "turn_reset"),
        "the second attempt starts with turn_reset"
    );
    let seqs = e2e::ws::seqs(&rest);
    assert!(
        seqs.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "{seqs:?}"
    );
    app.wait_for_turns(&thread.thread_id, 1).await;
    let turns: i64 = sqlx::query_scalar("SELECT count(*) FROM turns WHERE thread_id = $1")
        .bind(&thread.thread_id)
        .fetch_one(&app.db().await)
        .await
        .unwrap();
    assert_eq!(turns, 1);
}

/// With NATS gone, SIGTERM still ends both processes within their grace period plus a bounded
/// flush: neither waits forever for a server that does not come back.
#[tokio::test]
async fn both_processes_stop_when_nats_is_gone() {
    let mut nats = e2e::nats::NatsServer::start_new().await;
    let mut app = TestApp::spawn_with_urls(
        StackOptions::default().with("SHUTDOWN_GRACE_SECS", "1"),
        nats.url(),
        None,
    )
    .await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send(&thread.message("hi")).await;
    ws.expect_type("accepted").await;
    ws.frames_until_type("message_complete").await;
    nats.stop().await;

    for (what, process) in [("worker", &mut app.workers[0]), ("edge", &mut app.edges[0])] {
        let asked = std::time::Instant::now();
        let status = process.terminate().await;
        let took = asked.elapsed();
        assert!(
            took < std::time::Duration::from_secs(20),
            "the {what} took {took:?} to stop after SIGTERM with NATS gone ({status:?})"
        );
    }
}
