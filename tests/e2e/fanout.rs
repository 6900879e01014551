//! Live frames reach every socket attached to their thread, and only those: across edges, and
//! within one edge through its live router (`LIVE_SUBSCRIPTION=edge`, the default) or through a
//! subscription per attached thread (`thread`).

use e2e::ws::{seqs, tokens_text};
use e2e::{eventually, StackOptions, TestApp, WsClient};
use serde_json::Value;

#[tokio::test]
async fn sockets_on_two_edges_attached_to_one_thread_both_receive_its_frames() {
    two_edges(StackOptions::default()).await;
}

#[tokio::test]
async fn sockets_on_two_edges_attached_to_one_thread_both_receive_its_frames_with_a_subscription_per_thread(
) {
    two_edges(StackOptions::default().with("LIVE_SUBSCRIPTION", "thread")).await;
}

async fn two_edges(options: StackOptions) {
    let options = StackOptions {
        edges: 2,
        workers: 2,
        ..options
    };
    let app = TestApp::spawn(options).await;
    let thread = app.create_thread_on(0).await;
    let mut sender = app.connect(0).await;
    let mut watcher = app.connect(1).await;

    // The watcher attaches with `resume`; a valid resume has no answer of its own, so prove it
    // took effect by the frames that follow.
    watcher.send(&thread.resume(0)).await;
    // A round trip on the watcher's socket: frames are handled in order, so once this error is
    // back, the resume before it has attached.
    watcher.send_text("{".into()).await;
    watcher.expect_error("invalid_json").await;

    for turn in 0..2u64 {
        sender.send(&thread.message("Hi there")).await;
        sender.expect_type("accepted").await;
        let sent = sender.frames_until_type("message_complete").await;
        let seen = watcher.frames_until_type("message_complete").await;
        // user_message, 5 tokens, message_complete.
        let expected: Vec<u64> = (turn * 7 + 1..=turn * 7 + 7).collect();
        assert_eq!(seqs(&sent), expected);
        assert_eq!(seqs(&seen), expected);
        assert_eq!(tokens_text(&sent), tokens_text(&seen));
    }
}

#[tokio::test]
async fn through_one_edge_two_sockets_on_a_thread_and_one_on_another_get_exactly_their_frames() {
    one_edge_three_sockets(StackOptions::default(), "edge").await;
}

#[tokio::test]
async fn through_one_edge_with_a_subscription_per_thread_each_socket_gets_exactly_its_frames() {
    one_edge_three_sockets(
        StackOptions::default().with("LIVE_SUBSCRIPTION", "thread"),
        "thread",
    )
    .await;
}

/// Attaches a socket with `resume` and proves it took effect: frames are handled in order, so
/// once the answer to an invalid frame is back, the resume before it has attached.
async fn attach(socket: &mut WsClient, thread: &e2e::Thread) {
    socket.send(&thread.resume(0)).await;
    socket.send_text("{".into()).await;
    socket.expect_error("invalid_json").await;
}

/// Every frame is of `thread`, and their seqs run from `first` without gap or duplicate.
fn only_of(frames: &[Value], thread: &e2e::Thread, first: u64) {
    assert!(
        frames
            .iter()
            .all(|frame| frame["thread_id"] == thread.thread_id.as_str()),
        "a frame of another thread: {frames:?}"
    );
    let seqs = seqs(frames);
    let last = first + seqs.len() as u64 - 1;
    assert_eq!(seqs, (first..=last).collect::<Vec<_>>());
}

async fn one_edge_three_sockets(options: StackOptions, mode: &str) {
    let app = TestApp::spawn(options).await;
    let [a, b] = [app.create_thread().await, app.create_thread().await];
    let mut sender = app.connect(0).await;
    let mut watcher = app.connect(0).await;
    let mut other = app.connect(0).await;
    attach(&mut watcher, &a).await;
    attach(&mut other, &b).await;

    let mut next = [1, 1];
    for _ in 0..2 {
        // Both threads' turns run at once.
        sender.send(&a.message("Hi there")).await;
        other.send(&b.message("Hello")).await;
        sender.expect_type("accepted").await;
        other.expect_type("accepted").await;
        let sent = sender.frames_until_type("message_complete").await;
        let seen = watcher.frames_until_type("message_complete").await;
        let elsewhere = other.frames_until_type("message_complete").await;
        only_of(&sent, &a, next[0]);
        only_of(&elsewhere, &b, next[1]);
        assert_eq!(seqs(&sent), seqs(&seen));
        assert_eq!(tokens_text(&sent), tokens_text(&seen));
        next = [
            next[0] + sent.len() as u64,
            next[1] + elsewhere.len() as u64,
        ];
    }
    // Nothing else is on its way to any of them.
    for socket in [&mut sender, &mut watcher, &mut other] {
        socket.send_text("{".into()).await;
        socket.expect_error("invalid_json").await;
    }
    assert_eq!(app.edge_metric(0, "edge_ws_subscriptions").await, Some(3.0));
    let routes = if mode == "edge" { 2.0 } else { 0.0 };
    assert_eq!(app.edge_metric(0, "edge_live_routes").await, Some(routes));

    // Closed sockets leave nothing behind: no relay, no entry in the router's map.
    drop((sender, watcher, other));
    eventually("closed sockets to leave the live router", || async {
        let relays = app.edge_metric(0, "edge_ws_subscriptions").await?;
        let routes = app.edge_metric(0, "edge_live_routes").await?;
        (relays == 0.0 && routes == 0.0).then_some(())
    })
    .await;
    assert_eq!(
        app.edge_metric(0, "edge_live_dropped_total").await,
        Some(0.0)
    );
}
