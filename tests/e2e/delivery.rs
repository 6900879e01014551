//! SPEC §6 under real failures: workers SIGKILLed mid-turn, many workers, per-thread order.

use std::collections::HashMap;
use std::time::Duration;

use e2e::ws::seqs;
use e2e::{StackOptions, TestApp, Thread, WsClient};
use serde_json::Value;

/// What one client saw: per message, the frames of its turn (all attempts).
struct Conversation {
    thread: Thread,
    turns: Vec<Vec<Value>>,
}

/// Sends `messages` messages one after another, each once its previous turn has completed.
async fn converse(mut ws: WsClient, thread: Thread, messages: usize) -> Conversation {
    let mut turns = Vec::with_capacity(messages);
    for i in 0..messages {
        ws.send(&thread.message_with_id(&format!("message {i}"), &format!("m{i}")))
            .await;
        let accepted = ws.expect_type("accepted").await;
        assert_eq!(accepted["message_id"], format!("m{i}"));
        turns.push(ws.frames_until_type("message_complete").await);
    }
    Conversation { thread, turns }
}

/// The text a client keeps for a turn: tokens after the last `turn_reset`.
fn kept_text(frames: &[Value]) -> String {
    let mut text = String::new();
    for frame in frames {
        match frame["type"].as_str() {
            Some("turn_reset") => text.clear(),
            Some("token") => text.push_str(frame["content"].as_str().unwrap_or_default()),
            _ => {}
        }
    }
    text
}

/// Checks one conversation against its frames and the database.
async fn check(app: &TestApp, conversation: &Conversation, messages: usize) -> usize {
    let frames: Vec<Value> = conversation.turns.iter().flatten().cloned().collect();
    let seen = seqs(&frames);
    assert_eq!(
        seen,
        (1..=seen.len() as u64).collect::<Vec<_>>(),
        "thread {}: seq must be 1, 2, 3 … with no gap and no duplicate",
        conversation.thread.thread_id
    );
    app.wait_for_turns(&conversation.thread.thread_id, messages as i64)
        .await;
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT message_id, reply, last_seq FROM turns WHERE thread_id = $1 ORDER BY in_seq",
    )
    .bind(&conversation.thread.thread_id)
    .fetch_all(&app.db().await)
    .await
    .unwrap();
    assert_eq!(
        rows.len(),
        messages,
        "one committed turn per accepted message"
    );
    let mut resets = 0;
    for (i, (turn, row)) in conversation.turns.iter().zip(&rows).enumerate() {
        assert_eq!(row.0, format!("m{i}"), "turns run in the order accepted");
        let completes = turn
            .iter()
            .filter(|f| f["type"] == "message_complete")
            .count();
        assert_eq!(
            completes, 1,
            "exactly one message_complete per turn: {turn:?}"
        );
        let turn_ids: std::collections::HashSet<_> =
            turn.iter().map(|f| f["turn_id"].to_string()).collect();
        assert_eq!(turn_ids.len(), 1, "every attempt keeps the turn id");
        assert_eq!(
            kept_text(turn),
            row.1,
            "the client's text is the committed reply"
        );
        assert_eq!(turn.last().unwrap()["seq"], row.2);
        resets += turn.iter().filter(|f| f["type"] == "turn_reset").count();
    }
    resets
}

#[tokio::test]
async fn workers_killed_mid_turn_lose_nothing_and_duplicate_nothing() {
    const THREADS: usize = 25;
    const MESSAGES: usize = 20;
    let options = StackOptions {
        workers: 2,
        ..StackOptions::default()
    }
    .with("SCRIPTED_REPLY_TOKENS", "10")
    .with("SCRIPTED_TOKEN_DELAY_MS", "20")
    .with("ACK_WAIT_SECS", "2")
    .with("LEASE_TTL_SECS", "2")
    .with("RATE_LIMIT_MESSAGES", "1000");
    let mut app = TestApp::spawn(options).await;

    let mut clients = Vec::new();
    for _ in 0..THREADS {
        let thread = app.create_thread().await;
        let ws = app.connect(0).await;
        clients.push(tokio::spawn(converse(ws, thread, MESSAGES)));
    }

    // Kill a worker every 1.5 s, at whatever point of a turn it is, and start another.
    let mut kills = 0usize;
    let mut victim = 0usize;
    while !clients.iter().all(|client| client.is_finished()) {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        app.workers[victim].kill().await;
        kills += 1;
        let replacement = app.start_worker().await;
        app.workers.swap(victim, replacement);
        app.workers.pop();
        victim = (victim + 1) % 2;
    }
    assert!(kills >= 2, "the run was too short to kill anything");

    let mut resets = 0;
    let mut conversations = HashMap::new();
    for client in clients {
        let conversation = client.await.expect("client task");
        resets += check(&app, &conversation, MESSAGES).await;
        conversations.insert(conversation.thread.thread_id.clone(), conversation);
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM turns")
        .fetch_one(&app.db().await)
        .await
        .unwrap();
    assert_eq!(total, (THREADS * MESSAGES) as i64);
    eprintln!("{kills} workers killed, {resets} turn resets, {total} turns committed once each");
}

#[tokio::test]
async fn three_workers_keep_per_thread_order_for_messages_sent_back_to_back() {
    const THREADS: usize = 100;
    const MESSAGES: usize = 5;
    let options = StackOptions {
        workers: 3,
        ..StackOptions::default()
    }
    .with("THREADS_PER_MINUTE", "0");
    let app = TestApp::spawn(options).await;

    let mut clients = Vec::new();
    for _ in 0..THREADS {
        let thread = app.create_thread().await;
        let mut ws = app.connect(0).await;
        clients.push(tokio::spawn(async move {
            // All five go out before any answer: order is the accepted order.
            for i in 0..MESSAGES {
                ws.send(&thread.message_with_id(&format!("message {i}"), &format!("m{i}")))
                    .await;
            }
            let mut frames = Vec::new();
            let mut completes = 0;
            while completes < MESSAGES {
                let frame = ws.next_frame().await;
                if frame["type"] == "message_complete" {
                    completes += 1;
                }
                frames.push(frame);
            }
            (thread, frames)
        }));
    }
    let db = app.db().await;
    for client in clients {
        let (thread, frames) = client.await.expect("client task");
        let accepted: Vec<&Value> = frames.iter().filter(|f| f["type"] == "accepted").collect();
        let ids: Vec<String> = accepted
            .iter()
            .map(|f| f["message_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            ids,
            (0..MESSAGES).map(|i| format!("m{i}")).collect::<Vec<_>>()
        );
        let thread_frames: Vec<Value> = frames.into_iter().filter(|f| f["seq"].is_u64()).collect();
        assert_eq!(
            seqs(&thread_frames),
            // user_message, 5 tokens, message_complete per message.
            (1..=(MESSAGES as u64 * 7)).collect::<Vec<_>>()
        );
        app.wait_for_turns(&thread.thread_id, MESSAGES as i64).await;
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT message_id FROM turns WHERE thread_id = $1 ORDER BY in_seq")
                .bind(&thread.thread_id)
                .fetch_all(&db)
                .await
                .unwrap();
        assert_eq!(rows, ids, "committed once each, in the accepted order");
        // Frames of turn k all come before those of turn k + 1.
        let turn_order: Vec<String> = thread_frames
            .chunks(7)
            .map(|turn| {
                assert!(turn.iter().all(|f| f["turn_id"] == turn[0]["turn_id"]));
                turn[0]["turn_id"].to_string()
            })
            .collect();
        assert_eq!(turn_order.len(), MESSAGES);
    }
}

/// The fence the workers rely on (docs/architecture.md): on this NATS server, a publish that
/// expects the subject's last sequence to be 0 (empty) or N fails once anyone else published.
#[tokio::test]
async fn the_nats_server_enforces_expected_last_subject_sequence() {
    use async_nats::jetstream::context::PublishErrorKind;
    use async_nats::jetstream::message::PublishMessage;

    let app = TestApp::spawn(StackOptions {
        edges: 1,
        workers: 0,
        ..StackOptions::default()
    })
    .await;
    let js = app.jetstream().await;
    let subject = app
        .subjects()
        .replies(&shared::ids::ThreadId::parse("fence").unwrap());
    let publish = |expected: u64| {
        let js = js.clone();
        let subject = subject.clone();
        async move {
            js.send_publish(
                subject,
                PublishMessage::build()
                    .payload("x".into())
                    .expected_last_subject_sequence(expected),
            )
            .await?
            .await
        }
    };
    let first = publish(0)
        .await
        .expect("an empty subject accepts expected 0");
    let stale = publish(0)
        .await
        .expect_err("expected 0 fails once the subject has a message");
    assert_eq!(stale.kind(), PublishErrorKind::WrongLastSequence);
    publish(first.sequence)
        .await
        .expect("the right last sequence is accepted");
    let stale = publish(first.sequence)
        .await
        .expect_err("a stale last sequence fails");
    assert_eq!(stale.kind(), PublishErrorKind::WrongLastSequence);
}

/// A worker never pulls more than it can run: with WORKER_CONCURRENCY=2 and 8 slow turns waiting,
/// the backlog stays in JetStream. (JetStream's count of unacknowledged deliveries can exceed 2 for
/// a moment: an ack is processed by the server after the worker has freed the slot and pulled
/// again; it can never reach the 8 that would mean the worker took everything.)
#[tokio::test]
async fn a_worker_never_pulls_more_than_its_concurrency() {
    let options = StackOptions::default()
        .with("WORKER_CONCURRENCY", "2")
        .with("SCRIPTED_TOKEN_DELAY_MS", "30");
    let app = TestApp::spawn(options).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        let thread = app.create_thread().await;
        let mut ws = app.connect(0).await;
        clients.push(tokio::spawn(async move {
            ws.send(&thread.message("hello")).await;
            ws.expect_type("accepted").await;
            ws.frames_until_type("message_complete").await;
        }));
    }
    let js = app.jetstream().await;
    let stream = js
        .get_stream(app.subjects().inbound_stream())
        .await
        .unwrap();
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer(&app.subjects().workers_consumer())
        .await
        .unwrap();
    let (mut most_in_flight, mut most_waiting) = (0, 0);
    while !clients.iter().all(|client| client.is_finished()) {
        let info = consumer.info().await.unwrap();
        most_in_flight = most_in_flight.max(info.num_ack_pending);
        most_waiting = most_waiting.max(info.num_pending);
        assert!(
            info.num_ack_pending <= 4,
            "{} delivered at once to a worker that runs 2",
            info.num_ack_pending
        );
    }
    for client in clients {
        client.await.unwrap();
    }
    assert!(most_in_flight >= 1, "the check saw the worker busy");
    assert!(
        most_waiting >= 1,
        "the backlog waited in JetStream, not in the worker"
    );
}

/// A worker remembers where its drain of a thread left the reply subject and, when it takes the
/// thread's next lease with no other lease in between, does not read the tail again
/// (`worker::publish::TailMemory`). Frames published behind its back all the same (here by the
/// test, as a fenced-out worker that read the tail late would) make what it remembers stale: the
/// turn's first publish, fenced on it, is refused, the delivery is retried, the tail read, and the
/// stray frames are reset. No `seq` is ever used twice.
#[tokio::test]
async fn frames_published_behind_a_workers_back_are_reset_never_numbered_over() {
    use async_nats::jetstream::message::PublishMessage;
    use shared::ids::{ThreadId, TurnId};
    use shared::protocol::bus::bundle;
    use shared::protocol::{FrameBody, ThreadFrame};

    let app = TestApp::spawn(StackOptions::default()).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send(&thread.message("first")).await;
    ws.expect_type("accepted").await;
    let first = ws.frames_until_type("message_complete").await;
    let last = *seqs(&first).last().unwrap();
    app.wait_for_turns(&thread.thread_id, 1).await;

    // A stray frame after the committed position, fenced on the subject's last bundle.
    let thread_id = ThreadId::parse(&thread.thread_id).unwrap();
    let subject = app.subjects().replies(&thread_id);
    let js = app.jetstream().await;
    let replies = js
        .get_stream(app.subjects().replies_stream())
        .await
        .unwrap();
    let tail = replies
        .get_last_raw_message_by_subject(&subject)
        .await
        .unwrap();
    let stray = ThreadFrame {
        thread_id,
        seq: last + 1,
        turn_id: TurnId::generate(),
        body: FrameBody::Token {
            agent: "general".into(),
            content: "stray".into(),
        },
    };
    let mut payload = Vec::new();
    bundle::push(&mut payload, &stray).unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(bundle::FRAME_TYPES_HEADER, "token");
    headers.insert(bundle::FIRST_SEQ_HEADER, (last + 1).to_string().as_str());
    js.send_publish(
        subject,
        PublishMessage::build()
            .payload(payload.into())
            .headers(headers)
            .expected_last_subject_sequence(tail.sequence),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    // The socket, attached to the thread, sees it live.
    let seen = ws.next_frame().await;
    assert_eq!(
        (seen["seq"].as_u64(), &seen["content"]),
        (Some(last + 1), &"stray".into())
    );

    ws.send(&thread.message("second")).await;
    ws.expect_type("accepted").await;
    let second = ws.frames_until_type("message_complete").await;
    assert_eq!(
        seqs(&second),
        ((last + 2)..=(last + 1 + second.len() as u64)).collect::<Vec<_>>(),
        "every seq once, in order: {second:?}"
    );
    assert_eq!(second[0]["type"], "turn_reset", "{second:?}");
    assert_eq!(second[1]["type"], "user_message", "{second:?}");
    app.wait_for_turns(&thread.thread_id, 2).await;
}
