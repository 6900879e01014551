//! Floods a client can send on a socket: answered `rate_limited`, bounded in what they cost.

use std::collections::HashSet;

use e2e::{StackOptions, TestApp, WsClient};
use serde_json::Value;

/// A frame the edge answers at once with `unknown_type`: frames are handled in order, so its
/// answer marks the end of the answers to everything sent before it.
fn sentinel() -> Value {
    serde_json::json!({"type": "sentinel"})
}

/// Frames up to (not including) the sentinel's answer.
async fn until_sentinel(ws: &mut WsClient) -> Vec<Value> {
    let mut frames = ws.frames_until(|f| f["code"] == "unknown_type").await;
    frames.pop();
    frames
}

fn count(frames: &[Value], predicate: impl Fn(&Value) -> bool) -> usize {
    frames.iter().filter(|f| predicate(f)).count()
}

#[tokio::test]
async fn a_burst_of_interrupt_responses_is_rate_limited_and_stores_at_most_the_budget() {
    // No worker: whatever the edge accepts stays in <PREFIX>_IN, to be counted.
    let options = StackOptions {
        workers: 0,
        ..StackOptions::default()
    }
    .with("RATE_LIMIT_MESSAGES", "3")
    .with("RATE_LIMIT_WINDOW_SECS", "60");
    let app = TestApp::spawn(options).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    for _ in 0..40 {
        ws.send(&thread.interrupt_response(true)).await;
    }
    ws.send(&sentinel()).await;
    let answers = until_sentinel(&mut ws).await;
    assert_eq!(answers.len(), 40, "one answer per frame: {answers:?}");
    let accepted = count(&answers, |f| f["type"] == "accepted");
    let limited = count(&answers, |f| f["code"] == "rate_limited");
    assert_eq!(accepted, 3, "{answers:?}");
    assert_eq!(limited, 37);
    assert!(answers
        .iter()
        .filter(|f| f["code"] == "rate_limited")
        .all(|f| f["retryable"] == true && f["thread_id"] == thread.thread_id.as_str()));
    assert_eq!(
        app.stored_inbound().await,
        3,
        "only accepted answers are stored"
    );
}

#[tokio::test]
async fn one_address_messaging_many_threads_runs_out_of_its_own_budget() {
    let options = StackOptions {
        workers: 0,
        ..StackOptions::default()
    }
    .with("MESSAGES_PER_ADDR_PER_MINUTE", "4");
    let app = TestApp::spawn(options).await;
    let mut ws = app.connect(0).await;
    let mut answers = Vec::new();
    for _ in 0..6 {
        let thread = app.create_thread().await;
        ws.send(&thread.message("hello")).await;
        answers.push(ws.next_frame().await);
    }
    let kinds: Vec<&str> = answers
        .iter()
        .map(|f| f["code"].as_str().or(f["type"].as_str()).unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        [
            "accepted",
            "accepted",
            "accepted",
            "accepted",
            "rate_limited",
            "rate_limited"
        ]
    );
    assert_eq!(app.stored_inbound().await, 4);
}

#[tokio::test]
async fn resumes_are_rate_limited_and_each_replays_a_bounded_number_of_frames() {
    let options = StackOptions::default()
        .with("RESUME_MAX_FRAMES", "5")
        .with("RESUMES_PER_MINUTE", "10");
    let app = TestApp::spawn(options).await;
    let thread = app.create_thread().await;
    let mut writer = app.connect(0).await;
    let mut total = 0;
    for text in ["hello", "and again"] {
        writer.send(&thread.message(text)).await;
        let frames = writer.frames_until_type("message_complete").await;
        total = frames.last().unwrap()["seq"].as_u64().unwrap();
    }
    assert!(total > 10, "the thread needs more than two pages: {total}");

    // A resume from 0 stops after 5 frames and says where to go on from; the client does.
    let mut reader = app.connect(0).await;
    let mut after = 0;
    let mut got = Vec::new();
    let mut resumes = 0;
    loop {
        reader.send(&thread.resume(after)).await;
        resumes += 1;
        reader.send(&sentinel()).await;
        let frames = until_sentinel(&mut reader).await;
        let seqs = e2e::ws::seqs(&frames);
        assert!(seqs.len() <= 5, "one resume replays at most 5: {frames:?}");
        got.extend(seqs);
        match frames.last() {
            Some(last) if last["type"] == "resume_partial" => {
                assert_eq!(last["thread_id"], thread.thread_id.as_str());
                after = last["last_seq"].as_u64().unwrap();
                assert_eq!(Some(&after), got.last());
            }
            _ => break,
        }
    }
    assert_eq!(got, (1..=total).collect::<Vec<_>>());
    assert_eq!(resumes, total.div_ceil(5));

    // 200 resumes from 0 on one socket: the socket gets each frame once at most, and the rest
    // of the resumes are refused.
    let mut flooder = app.connect(0).await;
    for _ in 0..200 {
        flooder.send(&thread.resume(0)).await;
    }
    flooder.send(&sentinel()).await;
    let frames = until_sentinel(&mut flooder).await;
    let seqs = e2e::ws::seqs(&frames);
    let unique: HashSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), seqs.len(), "no frame twice on one socket");
    assert!(seqs.len() as u64 <= total);
    let limited = count(&frames, |f| f["code"] == "rate_limited");
    assert!(
        limited >= 200 - 10,
        "{limited} resumes refused of 200: {frames:?}"
    );
}
