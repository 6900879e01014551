use e2e::ws::{seqs, tokens_text};
use e2e::{StackOptions, TestApp};

#[tokio::test]
async fn sockets_on_two_edges_attached_to_one_thread_both_receive_its_frames() {
    let options = StackOptions {
        edges: 2,
        workers: 2,
        ..StackOptions::default()
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
