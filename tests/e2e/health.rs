use e2e::proxy::TcpProxy;
use e2e::{eventually, postgres_url, StackOptions, TestApp};
use serde_json::Value;

async fn health(app: &TestApp) -> (u16, Value) {
    let response = app
        .http
        .get(format!("{}/api/health", app.http_url(0)))
        .send()
        .await
        .expect("GET /api/health");
    let status = response.status().as_u16();
    (status, response.json().await.expect("health JSON"))
}

async fn wait_for(app: &TestApp, what: &str, want: impl Fn(u16, &Value) -> bool) -> Value {
    eventually(what, || async {
        let (status, body) = health(app).await;
        want(status, &body).then_some(body)
    })
    .await
}

#[tokio::test]
async fn health_names_the_dependency_that_is_down() {
    let nats = TcpProxy::start("127.0.0.1:4222".parse().unwrap()).await;
    let postgres = TcpProxy::to_postgres().await;
    let options = StackOptions {
        workers: 0,
        ..StackOptions::default()
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let proxied_db = format!("postgres://postgres@{}/test_{id}", postgres.addr());
    let mut app =
        TestApp::spawn_with_urls(options, format!("nats://{}", nats.addr()), Some(proxied_db))
            .await;
    // The harness drops the database it named; point it at the one the edge created.
    app.database = format!("test_{id}");
    app.database_url = format!("{}/test_{id}", postgres_url());

    let (status, body) = health(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["checks"]["nats"], "ok");
    assert_eq!(body["checks"]["database"], "ok");
    assert!(body["version"].is_string());

    postgres.cut();
    let body = wait_for(&app, "503 naming the database", |status, body| {
        status == 503 && body["checks"]["database"] != "ok"
    })
    .await;
    assert_eq!(body["checks"]["nats"], "ok", "{body}");
    postgres.restore().await;
    wait_for(&app, "200 once PostgreSQL is back", |status, _| {
        status == 200
    })
    .await;

    nats.cut();
    let body = wait_for(&app, "503 naming NATS", |status, body| {
        status == 503 && body["checks"]["nats"] != "ok"
    })
    .await;
    assert_eq!(body["checks"]["database"], "ok", "{body}");
    nats.restore().await;
    wait_for(&app, "200 once NATS is back", |status, _| status == 200).await;
}

#[tokio::test]
async fn metrics_count_connections_frames_and_errors() {
    let app = TestApp::spawn(StackOptions::default()).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send_text("{".into()).await;
    ws.expect_error("invalid_json").await;
    ws.send(&thread.message("hi")).await;
    ws.expect_type("accepted").await;
    ws.frames_until_type("message_complete").await;

    let text = app
        .http
        .get(format!("{}/metrics", app.http_url(0)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "edge_ws_connections 1",
        "edge_errors_total{code=\"invalid_json\"} 1",
        "edge_frames_in_total{type=\"message\"} 1",
        "edge_frames_out_total{type=\"token\"} 5",
        "edge_frames_out_total{type=\"message_complete\"} 1",
        "edge_frames_out_total{type=\"accepted\"} 1",
        "edge_publish_duration_seconds_count 1",
        "edge_threads_created_total 1",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }

    let worker_metrics = format!(
        "http://{}/metrics",
        app.workers[0]
            .addr
            .as_deref()
            .expect("worker metrics address")
    );
    let expected = [
        "worker_deliveries_total{result=\"processed\"} 1",
        "worker_turns_total{outcome=\"completed\"} 1",
        "worker_frames_published_total{type=\"token\"} 5",
        "worker_frames_published_total{type=\"message_complete\"} 1",
        "worker_turn_duration_seconds_count 1",
    ];
    // The worker counts a delivery once it is committed, just after the client saw the turn end.
    eventually("the worker's metrics to count the turn", || async {
        let text = app
            .http
            .get(&worker_metrics)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        expected
            .iter()
            .all(|line| text.contains(line))
            .then_some(())
    })
    .await;
}
