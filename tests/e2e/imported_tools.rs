//! Imported (OpenAPI) tools run by an agent as HTTP calls against a real test server: approval,
//! the Idempotency-Key, a worker killed mid-call, the SSRF guard and the response bound.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::Json;
use e2e::fake_openai::{FakeOpenAi, Reply};
use e2e::ws::tokens_text;
use e2e::{StackOptions, TestApp};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

const ADMIN: &str = "admin-secret";

/// A label request as the carrier saw it: its Idempotency-Key and body.
type LabelRequest = (Option<String>, Value);

/// A shipping carrier's API: creates labels (idempotently, by `Idempotency-Key`) and serves a
/// large tracking page.
#[derive(Clone, Default)]
struct Carrier {
    /// Every label request: its Idempotency-Key and body.
    requests: Arc<Mutex<Vec<LabelRequest>>>,
    /// Told when a label request arrives; the request is answered once `release` is notified.
    arrived: Option<mpsc::UnboundedSender<()>>,
    release: Arc<Notify>,
    hold_first: bool,
}

async fn create_label(
    State(carrier): State<Carrier>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    let key = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let first = {
        let mut requests = carrier.requests.lock().unwrap();
        requests.push((key.clone(), body));
        requests.len() == 1
    };
    if let Some(arrived) = &carrier.arrived {
        let _ = arrived.send(());
    }
    if first && carrier.hold_first {
        let _ = tokio::time::timeout(Duration::from_secs(30), carrier.release.notified()).await;
    }
    Json(json!({"label_id": format!("LBL-{}", key.unwrap_or_default()), "status": "created"}))
}

async fn tracking() -> String {
    "x".repeat(100_000)
}

async fn start_carrier(carrier: Carrier) -> String {
    let app = axum::Router::new()
        .route("/labels", post(create_label))
        .route("/tracking/{id}", get(tracking))
        .with_state(carrier);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("127.0.0.1:{}", addr.port())
}

fn carrier_spec(host: &str) -> String {
    format!(
        r#"openapi: 3.0.3
info: {{title: Carrier, version: "1.0"}}
servers:
  - url: http://{host}
paths:
  /labels:
    post:
      operationId: createLabel
      summary: Create a shipping label for an order.
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              required: [order_id]
              properties:
                order_id: {{type: integer}}
      responses:
        "200": {{description: the label}}
  /tracking/{{id}}:
    get:
      operationId: getTracking
      summary: The tracking page of a parcel.
      parameters:
        - {{name: id, in: path, required: true, schema: {{type: string}}}}
      responses:
        "200": {{description: the page}}
"#
    )
}

const AGENTS: &str = r#"default_agent: shipping
agents:
  - name: shipping
    description: Shipping labels and tracking.
    system_prompt: You create shipping labels and track parcels.
    imported_tools: [createLabel, getTracking]
prices:
  gpt-4o-mini: { prompt: 0.15, completion: 0.60 }
"#;

/// A stack on the fake model whose `shipping` agent may use the carrier's imported tools, with
/// the document imported and every tool reviewed.
async fn stack(
    fake: &FakeOpenAi,
    host: &str,
    extra: &[(&str, &str)],
) -> (TestApp, std::path::PathBuf) {
    let agents = std::env::temp_dir().join(format!("agents-{}.yaml", uuid::Uuid::new_v4()));
    std::fs::write(&agents, AGENTS).unwrap();
    let mut options = fake
        .stack_options()
        .with("ADMIN_TOKEN", ADMIN)
        .with("AGENTS_CONFIG", agents.to_str().unwrap());
    for (key, value) in extra {
        options = options.with(key, value);
    }
    let app = TestApp::spawn(options).await;
    import_and_review(&app, &carrier_spec(host), 2).await;
    (app, agents)
}

fn route_to_shipping() -> Reply {
    Reply::Classification(
        json!({"intents": [{"agent": "shipping", "confidence": 0.9}], "ambiguous": false, "clarification": null}),
    )
}

#[tokio::test]
async fn an_approved_write_reaches_the_server_once_by_its_idempotency_key_across_a_worker_kill() {
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let carrier = Carrier {
        arrived: Some(arrived_tx),
        hold_first: true,
        ..Carrier::default()
    };
    let host = start_carrier(carrier.clone()).await;
    let fake = FakeOpenAi::start().await;
    fake.push_classification(route_to_shipping());
    fake.push_chat(Reply::ToolCalls(vec![(
        "createLabel".into(),
        json!({"body": {"order_id": 1002}}),
    )]));
    fake.push_chat(Reply::Text(vec!["Your label ".into(), "is ready.".into()]));
    let (mut app, agents) = stack(
        &fake,
        &host,
        &[
            ("TOOL_HOSTS_ALLOW", host.as_str()),
            ("ACK_WAIT_SECS", "2"),
            ("LEASE_TTL_SECS", "2"),
        ],
    )
    .await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;

    let frames = ws.ask(&thread, "Make a label for order 1002").await;
    let interrupt = frames.last().unwrap().clone();
    assert_eq!(
        interrupt["type"], "interrupt",
        "a write needs approval: {frames:?}"
    );
    assert_eq!(interrupt["action"], "createLabel");
    assert!(
        carrier.requests.lock().unwrap().is_empty(),
        "nothing sent before approval"
    );

    ws.send(&thread.interrupt_response(true)).await;
    ws.expect_type("accepted").await;
    // The worker is killed while the carrier holds the label request.
    tokio::time::timeout(Duration::from_secs(30), arrived.recv())
        .await
        .expect("the label request arrives")
        .unwrap();
    app.workers[0].kill().await;
    carrier.release.notify_waiters();
    app.start_worker().await;

    let rest = ws.frames_until_type("message_complete").await;
    let after_reset: Vec<Value> = match rest.iter().rposition(|f| f["type"] == "turn_reset") {
        Some(reset) => rest[reset + 1..].to_vec(),
        None => rest.clone(),
    };
    assert_eq!(after_reset[0]["type"], "tool_call", "{rest:?}");
    assert_eq!(after_reset[1]["ok"], true, "{rest:?}");
    assert_eq!(tokens_text(&after_reset), "Your label is ready.");

    let requests = carrier.requests.lock().unwrap().clone();
    let keys: BTreeSet<Option<String>> = requests.iter().map(|(key, _)| key.clone()).collect();
    assert_eq!(
        keys,
        BTreeSet::from([interrupt["interrupt_id"].as_str().map(str::to_owned)]),
        "every attempt carries the interrupt id as its Idempotency-Key: {requests:?}"
    );
    assert!(requests
        .iter()
        .all(|(_, body)| body == &json!({"order_id": 1002})));
    app.wait_for_turns(&thread.thread_id, 2).await;
    let ledger: i64 = sqlx::query_scalar("SELECT count(*) FROM tool_executions WHERE ok")
        .fetch_one(&app.db().await)
        .await
        .unwrap();
    assert_eq!(ledger, 1);
    let _ = std::fs::remove_file(agents);
}

#[tokio::test]
async fn a_private_address_is_refused_and_responses_are_bounded() {
    let carrier = Carrier::default();
    let host = start_carrier(carrier.clone()).await;
    let fake = FakeOpenAi::start().await;
    // Without TOOL_HOSTS_ALLOW the loopback carrier is out of bounds.
    fake.push_classification(route_to_shipping());
    fake.push_chat(Reply::ToolCalls(vec![(
        "getTracking".into(),
        json!({"id": "PARCEL-1"}),
    )]));
    fake.push_chat(Reply::Text(vec!["Sorry.".into()]));
    let (app, agents) = stack(&fake, &host, &[]).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let frames = ws.ask(&thread, "Where is parcel PARCEL-1?").await;
    assert_eq!(
        frames[0]["type"], "tool_call",
        "a read runs without approval: {frames:?}"
    );
    assert_eq!(frames[1]["ok"], false);
    let told = fake.requests().last().unwrap().to_string();
    assert!(
        told.contains("non-public address"),
        "the model is told why: {told}"
    );
    let _ = std::fs::remove_file(&agents);
    drop(app);

    // Allowed, the read goes through and its 100 kB answer is cut to the bound.
    fake.push_classification(route_to_shipping());
    fake.push_chat(Reply::ToolCalls(vec![(
        "getTracking".into(),
        json!({"id": "PARCEL-1"}),
    )]));
    fake.push_chat(Reply::Text(vec!["Here it is.".into()]));
    let (app, agents) = stack(
        &fake,
        &host,
        &[
            ("TOOL_HOSTS_ALLOW", host.as_str()),
            ("TOOL_RESPONSE_MAX_BYTES", "1000"),
        ],
    )
    .await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let frames = ws.ask(&thread, "Where is parcel PARCEL-1?").await;
    assert_eq!(frames[1]["ok"], true, "{frames:?}");
    let request = fake.requests().last().unwrap().clone();
    let result = request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "tool")
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let result: Value = serde_json::from_str(&result).unwrap();
    assert_eq!(result["truncated"], true);
    assert_eq!(result["body"].as_str().unwrap().len(), 1000);
    let _ = std::fs::remove_file(agents);
}

#[tokio::test]
async fn a_proxy_in_the_environment_is_not_used_for_tool_calls() {
    // A "proxy" that only counts the connections it gets.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let proxied = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&proxied);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = proxy.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = tokio::io::AsyncWriteExt::write_all(
                &mut socket,
                b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n",
            )
            .await;
        }
    });
    let carrier = Carrier::default();
    let port = start_carrier(carrier.clone())
        .await
        .replace("127.0.0.1:", "");
    // The tools call `localhost`; the model is on 127.0.0.1, which NO_PROXY keeps off the proxy.
    let host = format!("localhost:{port}");
    let fake = FakeOpenAi::start().await;
    fake.push_classification(route_to_shipping());
    fake.push_chat(Reply::ToolCalls(vec![(
        "getTracking".into(),
        json!({"id": "PARCEL-1"}),
    )]));
    fake.push_chat(Reply::Text(vec!["Here it is.".into()]));
    let mut extra = vec![
        ("TOOL_HOSTS_ALLOW", host.as_str()),
        ("NO_PROXY", "127.0.0.1"),
    ];
    for variable in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
    ] {
        extra.push((variable, proxy_url.as_str()));
    }
    let (app, agents) = stack(&fake, &host, &extra).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let frames = ws.ask(&thread, "Where is parcel PARCEL-1?").await;
    assert_eq!(frames[0]["type"], "tool_call", "{frames:?}");
    assert_eq!(frames[1]["ok"], true, "the carrier answered: {frames:?}");
    assert_eq!(
        proxied.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing went through the proxy"
    );
    let _ = std::fs::remove_file(agents);
}

/// A shop's order API: `GET /orders/{order_id}` answers a summary. With `hold`, every request
/// waits until `release` is notified (at most 30 s): a slow vendor.
#[derive(Clone, Default)]
struct Shop {
    arrived: Arc<AtomicUsize>,
    release: Arc<Notify>,
    hold: bool,
}

async fn order(State(shop): State<Shop>, Path(order_id): Path<String>) -> Json<Value> {
    shop.arrived.fetch_add(1, Ordering::SeqCst);
    if shop.hold {
        let _ = tokio::time::timeout(Duration::from_secs(30), shop.release.notified()).await;
    }
    Json(json!({"summary": format!("Order {order_id} is on its way (from the shop's API).")}))
}

async fn start_shop(shop: Shop) -> String {
    let app = axum::Router::new()
        .route("/orders/{order_id}", get(order))
        .with_state(shop);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("127.0.0.1:{}", addr.port())
}

fn shop_spec(host: &str) -> String {
    format!(
        r#"openapi: 3.0.3
info: {{title: Shop, version: "1.0"}}
servers:
  - url: http://{host}
paths:
  /orders/{{order_id}}:
    get:
      operationId: get_order_status
      summary: Look an order up.
      parameters:
        - {{name: order_id, in: path, required: true, schema: {{type: integer}}}}
      responses:
        "200": {{description: the order}}
"#
    )
}

/// The scripted model's `orders` agent, with the shop's imported `get_order_status` in place of
/// the built-in one: the scripted model calls it for an order question.
const SHOP_AGENTS: &str = r#"default_agent: orders
agents:
  - name: orders
    description: Orders and deliveries.
    system_prompt: You look orders up.
    imported_tools: [get_order_status]
"#;

/// A stack on the scripted model whose `orders` agent uses the shop's imported tool.
async fn scripted_shop_stack(host: &str, extra: &[(&str, &str)]) -> (TestApp, std::path::PathBuf) {
    let agents = std::env::temp_dir().join(format!("agents-{}.yaml", uuid::Uuid::new_v4()));
    std::fs::write(&agents, SHOP_AGENTS).unwrap();
    let mut options = StackOptions::default()
        .with("LLM_PROVIDER", "scripted")
        .with("ADMIN_TOKEN", ADMIN)
        .with("AGENTS_CONFIG", agents.to_str().unwrap())
        .with("TOOL_HOSTS_ALLOW", host);
    for (key, value) in extra {
        options = options.with(key, value);
    }
    let app = TestApp::spawn(options).await;
    import_and_review(&app, &shop_spec(host), 1).await;
    (app, agents)
}

/// Imports `spec` through the admin API and reviews its `count` tools.
async fn import_and_review(app: &TestApp, spec: &str, count: usize) {
    let imported: Value = app
        .http
        .post(format!("{}/api/admin/openapi", app.http_url(0)))
        .bearer_auth(ADMIN)
        .header("content-type", "application/yaml")
        .body(spec.to_owned())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tools = imported["tools"]
        .as_array()
        .expect("imported tools")
        .clone();
    assert_eq!(tools.len(), count, "{imported}");
    for tool in &tools {
        let reviewed: Value = app
            .http
            .patch(format!(
                "{}/api/admin/tools/{}",
                app.http_url(0),
                tool["id"].as_str().unwrap()
            ))
            .bearer_auth(ADMIN)
            .json(&json!({"enabled": true}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(reviewed["reviewed"], true, "{reviewed}");
    }
}

#[tokio::test]
async fn the_scripted_model_calls_an_imported_tool_over_http() {
    let shop = Shop::default();
    let host = start_shop(shop.clone()).await;
    let (app, agents) = scripted_shop_stack(&host, &[]).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;

    let frames = ws.ask(&thread, "Where is my order 1002?").await;
    assert_eq!(frames[0]["type"], "tool_call", "{frames:?}");
    assert_eq!(frames[0]["tool"], "get_order_status");
    assert_eq!(frames[1]["ok"], true, "{frames:?}");
    assert_eq!(
        tokens_text(&frames),
        "Order 1002 is on its way (from the shop's API)."
    );
    assert_eq!(frames.last().unwrap()["type"], "message_complete");
    assert_eq!(shop.arrived.load(Ordering::SeqCst), 1);
    let _ = std::fs::remove_file(agents);
}

#[tokio::test]
async fn a_tool_name_the_model_made_up_is_not_a_metric_label() {
    let host = start_carrier(Carrier::default()).await;
    let fake = FakeOpenAi::start().await;
    fake.push_classification(route_to_shipping());
    fake.push_chat(Reply::ToolCalls(vec![
        ("made_up_tool_7f3a".into(), json!({})),
        ("getTracking".into(), json!({})),
    ]));
    fake.push_chat(Reply::Text(vec!["Sorry.".into()]));
    let (app, agents) = stack(&fake, &host, &[]).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let frames = ws.ask(&thread, "Track it").await;
    assert_eq!(frames[0]["tool"], "made_up_tool_7f3a", "{frames:?}");
    assert_eq!(frames[1]["ok"], false);

    let url = format!(
        "http://{}/metrics",
        app.workers[0]
            .addr
            .as_deref()
            .expect("worker metrics address")
    );
    let text = e2e::eventually("the worker to count both calls", || async {
        let text = app.http.get(&url).send().await.ok()?.text().await.ok()?;
        (text.contains("worker_tool_calls_total{result=\"invalid\",tool=\"unknown\"} 1")
            && text.contains("worker_tool_calls_total{result=\"invalid\",tool=\"getTracking\"} 1"))
        .then_some(text)
    })
    .await;
    assert!(!text.contains("made_up_tool"), "{text}");
    let _ = std::fs::remove_file(agents);
}

#[tokio::test]
async fn a_slow_tool_server_holds_no_database_connection_and_stalls_no_other_thread() {
    let shop = Shop {
        hold: true,
        ..Shop::default()
    };
    let host = start_shop(shop.clone()).await;
    // Three turns wait on the slow server at once, one more than the pool has connections.
    let (app, agents) = scripted_shop_stack(&host, &[("DATABASE_MAX_CONNECTIONS", "2")]).await;
    let mut slow = Vec::new();
    for _ in 0..3 {
        let thread = app.create_thread().await;
        let mut ws = app.connect(0).await;
        ws.send(&thread.message("Where is my order 1003?")).await;
        ws.expect_type("accepted").await;
        slow.push(ws);
    }
    e2e::eventually("three calls waiting on the slow server", || async {
        (shop.arrived.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await;

    // Other threads' turns run while those wait.
    for _ in 0..2 {
        let thread = app.create_thread().await;
        let mut ws = app.connect(0).await;
        let frames = tokio::time::timeout(Duration::from_secs(10), ws.ask(&thread, "hello there"))
            .await
            .expect("another thread's turn completes while the slow calls wait");
        assert_eq!(frames.last().unwrap()["type"], "message_complete");
    }
    assert!(
        shop.arrived.load(Ordering::SeqCst) == 3,
        "the slow calls were still waiting"
    );

    shop.release.notify_waiters();
    for ws in &mut slow {
        let frames = ws.frames_until_type("message_complete").await;
        assert!(tokens_text(&frames).contains("on its way"), "{frames:?}");
    }
    let _ = std::fs::remove_file(agents);
}
