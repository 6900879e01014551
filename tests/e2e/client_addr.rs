//! The client address behind a load balancer (`TRUSTED_PROXIES`): limits key on it.

use e2e::{StackOptions, TestApp, WsClient};

async fn create_thread_as(app: &TestApp, forwarded_for: &str) -> u16 {
    app.http
        .post(format!("{}/api/threads", app.http_url(0)))
        .header("x-forwarded-for", forwarded_for)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("POST /api/threads")
        .status()
        .as_u16()
}

#[tokio::test]
async fn clients_behind_a_trusted_proxy_get_their_own_buckets() {
    let options = StackOptions {
        workers: 0,
        ..StackOptions::default()
    }
    .with("TRUSTED_PROXIES", "127.0.0.0/8, ::1")
    .with("THREADS_PER_MINUTE", "2")
    .with("WS_MAX_SOCKETS_PER_ADDR", "1");
    let app = TestApp::spawn(options).await;
    // The spoofed left-most entry is ignored: the proxy appended the real client.
    let alice = "203.0.113.77, 198.51.100.1";
    let bob = "198.51.100.2";
    assert_eq!(create_thread_as(&app, alice).await, 201);
    assert_eq!(create_thread_as(&app, alice).await, 201);
    assert_eq!(create_thread_as(&app, alice).await, 429);
    assert_eq!(create_thread_as(&app, "198.51.100.1").await, 429);
    assert_eq!(create_thread_as(&app, bob).await, 201);

    let url = app.ws_url(0);
    let _alice_socket = WsClient::try_connect_with(&url, &[("x-forwarded-for", alice)])
        .await
        .unwrap();
    let refused = WsClient::try_connect_with(&url, &[("x-forwarded-for", alice)]).await;
    assert_eq!(refused.err(), Some(429));
    assert!(
        WsClient::try_connect_with(&url, &[("x-forwarded-for", bob)])
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn an_untrusted_peers_forwarded_for_is_ignored() {
    let options = StackOptions {
        workers: 0,
        ..StackOptions::default()
    }
    .with("TRUSTED_PROXIES", "10.0.0.0/8")
    .with("THREADS_PER_MINUTE", "2");
    let app = TestApp::spawn(options).await;
    assert_eq!(create_thread_as(&app, "198.51.100.1").await, 201);
    assert_eq!(create_thread_as(&app, "198.51.100.2").await, 201);
    assert_eq!(create_thread_as(&app, "198.51.100.3").await, 429);
}
