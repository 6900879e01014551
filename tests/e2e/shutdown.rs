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
