//! What one connection or socket may hold: header time, pings, sockets per address, threads per
//! socket.

use std::time::Duration;

use e2e::{eventually, StackOptions, TestApp, WsClient, WAIT};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

#[tokio::test]
async fn half_sent_requests_are_closed_after_the_header_timeout() {
    let options = StackOptions {
        workers: 0,
        ..StackOptions::default()
    }
    .with("HTTP_HEADER_TIMEOUT_SECS", "1");
    let app = TestApp::spawn(options).await;
    let addr = app.edges[0].addr.clone().unwrap();
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: edge\r\nX-Slow: ")
            .await
            .unwrap();
        held.push(tcp);
    }
    let started = tokio::time::Instant::now();
    for tcp in &mut held {
        let mut buffer = [0u8; 1024];
        // The server closes the connection (maybe after a 408): read until the end.
        loop {
            let read = tokio::time::timeout(WAIT, tcp.read(&mut buffer))
                .await
                .expect("a half-sent request is still held open");
            match read {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // Whole requests are still served.
    let metrics = app.edge_metric(0, "edge_ws_connections").await;
    assert_eq!(metrics, Some(0.0));
}

#[tokio::test]
async fn a_socket_that_never_answers_pings_is_closed_and_one_that_does_stays() {
    let options = StackOptions {
        workers: 0,
        ..StackOptions::default()
    }
    .with("WS_PING_SECS", "1");
    let app = TestApp::spawn(options).await;
    let mut alive = app.connect(0).await;
    // Never read: its client library never sees the pings, so it never answers them.
    let _dead = app.connect(0).await;
    eventually("both sockets to be open", || async {
        (app.edge_metric(0, "edge_ws_connections").await? == 2.0).then_some(())
    })
    .await;
    let started = tokio::time::Instant::now();
    loop {
        // Reading lets the live client answer the pings.
        assert!(alive
            .next_frame_within(Duration::from_millis(100))
            .await
            .is_none());
        if app.edge_metric(0, "edge_ws_connections").await == Some(1.0) {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "the silent socket was never closed"
        );
    }
    let closed = app
        .edge_metric(0, "edge_ws_closed_by_edge_total{reason=\"ping_timeout\"}")
        .await;
    assert_eq!(closed, Some(1.0));
    // The answering socket outlives several ping periods and still works.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        assert!(alive
            .next_frame_within(Duration::from_millis(100))
            .await
            .is_none());
    }
    alive.send(&serde_json::json!({"type": "nope"})).await;
    alive.expect_error("unknown_type").await;
    assert_eq!(app.edge_metric(0, "edge_ws_connections").await, Some(1.0));
}

#[tokio::test]
async fn a_ping_flood_closes_the_socket_with_1008() {
    let options = StackOptions {
        workers: 0,
        ..StackOptions::default()
    };
    let app = TestApp::spawn(options).await;
    let mut calm = app.connect(0).await;
    for _ in 0..3 {
        assert!(calm.send_ping().await);
    }
    calm.send(&serde_json::json!({"type": "nope"})).await;
    calm.expect_error("unknown_type").await;

    let mut flood = app.connect(0).await;
    for _ in 0..200 {
        if !flood.send_ping().await {
            break;
        }
    }
    assert_eq!(flood.next_frame_or_close().await, Err(Some(1008)));
    assert_eq!(
        app.edge_metric(0, "edge_ws_closed_by_edge_total{reason=\"ping_flood\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn the_socket_cap_per_address_refuses_the_next_upgrade_with_429() {
    let options = StackOptions {
        workers: 0,
        ..StackOptions::default()
    }
    .with("WS_MAX_SOCKETS_PER_ADDR", "2");
    let app = TestApp::spawn(options).await;
    let url = app.ws_url(0);
    let first = WsClient::try_connect_with(&url, &[]).await.unwrap();
    let _second = WsClient::try_connect_with(&url, &[]).await.unwrap();
    // An untrusted peer's X-Forwarded-For does not make it someone else.
    let refused = WsClient::try_connect_with(&url, &[("x-forwarded-for", "198.51.100.1")]).await;
    assert_eq!(refused.err(), Some(429));
    assert_eq!(
        app.edge_metric(0, "edge_ws_refused_total{reason=\"address_full\"}")
            .await,
        Some(1.0)
    );
    // A closed socket gives its place back.
    drop(first);
    eventually("the closed socket's slot to come back", || async {
        WsClient::try_connect_with(&url, &[]).await.ok()
    })
    .await;
}

#[tokio::test]
async fn a_socket_cycling_through_threads_keeps_a_bounded_number_attached() {
    let options = StackOptions::default().with("WS_MAX_THREADS_PER_SOCKET", "3");
    let app = TestApp::spawn(options).await;
    let mut ws = app.connect(0).await;
    let mut threads = Vec::new();
    for _ in 0..8 {
        let thread = app.create_thread().await;
        ws.send(&thread.resume(0)).await;
        threads.push(thread);
    }
    // Frames are handled in order: once this is answered, every resume above has attached.
    ws.send(&serde_json::json!({"type": "nope"})).await;
    ws.expect_error("unknown_type").await;
    eventually("detached threads to drop their subscriptions", || async {
        (app.edge_metric(0, "edge_ws_subscriptions").await? == 3.0).then_some(())
    })
    .await;
    // The current thread is still relayed, and so is an old one the socket comes back to.
    for thread in [&threads[7], &threads[0]] {
        ws.send(&thread.message("hello")).await;
        ws.expect_type("accepted").await;
        let frames = ws.frames_until_type("message_complete").await;
        assert!(frames
            .iter()
            .all(|f| f["thread_id"] == thread.thread_id.as_str()));
    }
    assert_eq!(app.edge_metric(0, "edge_ws_subscriptions").await, Some(3.0));
    drop(ws);
    eventually("a closed socket's subscriptions to go", || async {
        (app.edge_metric(0, "edge_ws_subscriptions").await? == 0.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn live_frames_past_a_gap_are_not_relayed_blindly_and_the_socket_resyncs() {
    let app = TestApp::spawn(StackOptions::default()).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send(&thread.message("hello")).await;
    ws.expect_type("accepted").await;
    let first = ws.frames_until_type("message_complete").await;
    let last = first.last().unwrap()["seq"].as_u64().unwrap();

    // A live bundle that skips seqs, as the socket sees one when the NATS client dropped the
    // bundles before it (a slow consumer): its frames must not reach the socket over the gap.
    let nats = e2e::nats_client(&app.nats_url).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        shared::protocol::bus::bundle::FIRST_SEQ_HEADER,
        (last + 3).to_string().as_str(),
    );
    headers.insert(shared::protocol::bus::bundle::FRAME_TYPES_HEADER, "token");
    let stray = serde_json::json!({"type": "token", "thread_id": thread.thread_id, "seq": last + 3,
        "turn_id": uuid::Uuid::new_v4().to_string(), "agent": "stray", "content": "STRAY"});
    nats.publish_with_headers(
        app.subjects().live(&thread.id()),
        headers,
        format!("{stray}\n").into(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
    eventually("the gap to be noticed", || async {
        (app.edge_metric(0, "edge_relay_gaps_total").await? >= 1.0).then_some(())
    })
    .await;

    // The next turn reaches the socket whole, from the seq after the last one it had.
    ws.send(&thread.message("again")).await;
    ws.expect_type("accepted").await;
    let next = ws.frames_until_type("message_complete").await;
    assert!(next.iter().all(|f| f["agent"] != "stray"), "{next:?}");
    let end = next.last().unwrap()["seq"].as_u64().unwrap();
    assert_eq!(e2e::ws::seqs(&next), (last + 1..=end).collect::<Vec<_>>());
}

/// The edge reads a socket through a small buffer (an idle socket holds it for ever), so larger
/// frames are read in several pieces: the longest valid message, and the largest frame the
/// WebSocket layer takes (8 × 32 KiB, answered `message_too_large`), both still arrive whole.
#[tokio::test]
async fn frames_up_to_the_websocket_limit_are_read_whole_through_the_small_read_buffer() {
    let options = StackOptions {
        workers: 0,
        ..StackOptions::default()
    };
    let app = TestApp::spawn(options).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    // 10,000 characters of 3 bytes: the longest content, 30,000 bytes of a frame under 32 KiB.
    let longest = thread.message(&"€".repeat(10_000));
    assert!(longest.to_string().len() <= 32 * 1024);
    ws.send(&longest).await;
    let accepted = ws.expect_type("accepted").await;
    assert_eq!(accepted["thread_id"], thread.thread_id.as_str());
    ws.send_text("x".repeat(8 * 32 * 1024)).await;
    ws.expect_error("message_too_large").await;
    ws.send(&thread.message("still there?")).await;
    ws.expect_type("accepted").await;
}
