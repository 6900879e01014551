//! Operating it (SPEC §9): liveness and readiness on both processes, request ids and log lines,
//! one trace per customer message across the NATS hop with GenAI spans, and the metrics.

use std::collections::{BTreeSet, HashSet};

use e2e::otlp::{CollectedSpan, Collector};
use e2e::proxy::TcpProxy;
use e2e::{eventually, postgres_url, StackOptions, TestApp};
use serde_json::Value;

async fn get(app: &TestApp, url: &str) -> (u16, Value) {
    let response = app.http.get(url).send().await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

fn worker_url(app: &TestApp, path: &str) -> String {
    let addr = app.workers[0].addr.as_deref().expect("worker address");
    format!("http://{addr}{path}")
}

/// Waits until `/readyz` of both processes answers as `want` says, and `/livez` stays 200.
async fn wait_for_readiness(app: &TestApp, what: &str, want: impl Fn(u16, &Value) -> bool) {
    let urls = [
        (
            format!("{}/readyz", app.http_url(0)),
            format!("{}/livez", app.http_url(0)),
        ),
        (worker_url(app, "/readyz"), worker_url(app, "/livez")),
    ];
    for (ready, live) in &urls {
        let body = eventually(what, || async {
            let (status, body) = get(app, ready).await;
            want(status, &body).then_some(body)
        })
        .await;
        let (status, live_body) = get(app, live).await;
        assert_eq!(status, 200, "{live} while {what}: {live_body}");
        assert!(body["version"].is_string(), "{body}");
    }
}

#[tokio::test]
async fn readiness_names_the_dependency_that_is_cut_and_liveness_stays_up() {
    let nats = TcpProxy::start("127.0.0.1:4222".parse().unwrap()).await;
    let postgres = TcpProxy::to_postgres().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let proxied_db = format!("postgres://postgres@{}/test_{id}", postgres.addr());
    let mut app = TestApp::spawn_with_urls(
        StackOptions::default(),
        format!("nats://{}", nats.addr()),
        Some(proxied_db),
    )
    .await;
    app.database = format!("test_{id}");
    app.database_url = format!("{}/test_{id}", postgres_url());

    let (status, body) = get(&app, &format!("{}/readyz", app.http_url(0))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["service"], "edge");
    assert_eq!(body["checks"]["nats"], "ok");
    assert_eq!(body["checks"]["database"], "ok");
    let (status, body) = get(&app, &worker_url(&app, "/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["service"], "worker");
    assert_eq!(body["checks"]["database"], "ok");

    postgres.cut();
    wait_for_readiness(&app, "503 naming the database", |status, body| {
        status == 503 && body["checks"]["database"] != "ok" && body["checks"]["nats"] == "ok"
    })
    .await;
    postgres.restore().await;
    wait_for_readiness(&app, "200 once PostgreSQL is back", |status, _| {
        status == 200
    })
    .await;

    nats.cut();
    wait_for_readiness(&app, "503 naming NATS", |status, body| {
        status == 503 && body["checks"]["nats"] != "ok" && body["checks"]["database"] == "ok"
    })
    .await;
    nats.restore().await;
    wait_for_readiness(&app, "200 once NATS is back", |status, _| status == 200).await;
}

#[tokio::test]
async fn http_requests_get_a_request_id_a_log_line_and_metrics() {
    let app = TestApp::spawn(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await;
    let base = app.http_url(0);

    // None sent: one is made, echoed, and logged with the path but not the query string.
    let response = app
        .http
        .get(format!("{base}/api/health?token=sekrit-in-query"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let generated = response
        .headers()
        .get("x-request-id")
        .expect("x-request-id in the response")
        .to_str()
        .unwrap()
        .to_owned();
    uuid::Uuid::parse_str(&generated).expect("a generated request id is a UUID");
    let line = app.edges[0]
        .wait_for_log("the request's log line", |line| {
            line["message"] == "HTTP request." && line["request_id"] == generated.as_str()
        })
        .await;
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["path"], "/api/health", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert!(line["latency_ms"].is_number(), "{line}");
    assert!(!line.to_string().contains("sekrit"), "{line}");

    // The client's own id is kept.
    let response = app
        .http
        .post(format!("{base}/api/threads"))
        .header("x-request-id", "client-chosen-42")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-request-id"], "client-chosen-42");
    let line = app.edges[0]
        .wait_for_log("the client's request id in the log", |line| {
            line["message"] == "HTTP request." && line["request_id"] == "client-chosen-42"
        })
        .await;
    assert_eq!(line["method"], "POST", "{line}");
    assert_eq!(line["path"], "/api/threads", "{line}");
    assert_eq!(line["status"], 201, "{line}");

    // Unknown paths share one route label.
    let response = app
        .http
        .get(format!("{base}/no/such/{}", uuid::Uuid::new_v4()))
        .send()
        .await
        .unwrap();
    let unknown_status = response.status().as_u16().to_string();

    let text = app
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (name, labels) in [
        (
            "edge_http_requests_total",
            vec![("route", "/api/health"), ("status", "200")],
        ),
        (
            "edge_http_requests_total",
            vec![("route", "/api/threads"), ("status", "201")],
        ),
        (
            "edge_http_requests_total",
            vec![("route", "fallback"), ("status", unknown_status.as_str())],
        ),
        (
            "edge_http_request_duration_seconds_count",
            vec![("route", "/api/health"), ("status", "200")],
        ),
    ] {
        let value = sample(&text, name, &labels).unwrap_or_else(|| {
            panic!("missing {name} {labels:?} in:\n{text}");
        });
        assert!(value >= 1.0, "{name} {labels:?} = {value}");
    }
    assert!(
        !text.contains(&generated),
        "request ids must not be metric labels"
    );
}

#[tokio::test]
async fn a_message_is_one_trace_across_edge_and_worker_with_genai_spans() {
    let collector = Collector::start().await;
    // Spans would wait a minute in the exporters' buffers: they reach the collector only because
    // the processes flush them when they stop.
    let mut app = TestApp::spawn(
        StackOptions::default()
            .with("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint())
            .with("OTEL_BSP_SCHEDULE_DELAY", "60000"),
    )
    .await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    for content in ["Where is my order 1002?", "Where is my order 1004?"] {
        ws.send(&thread.message(content)).await;
        ws.expect_type("accepted").await;
        ws.frames_until_type("message_complete").await;
    }
    app.wait_for_turns(&thread.thread_id, 2).await;
    let committed = app.workers[0]
        .wait_for_log("the turn's log line in a trace", |line| {
            line["message"] == "Turn committed."
                && line["thread_id"] == thread.thread_id.as_str()
                && line["in_seq"] == 1
        })
        .await;
    drop(ws);
    assert!(app.workers[0].terminate().await.success());
    assert!(app.edges[0].terminate().await.success());

    let spans = collector.spans();
    let of_thread = |name: &str| -> Vec<&CollectedSpan> {
        spans
            .iter()
            .filter(|span| span.name.starts_with(name))
            .filter(|span| {
                span.attribute("gen_ai.conversation.id") == thread.thread_id.as_str()
                    || span.attribute("thread_id") == thread.thread_id.as_str()
            })
            .collect()
    };
    let turns = of_thread("turn");
    assert_eq!(turns.len(), 2, "one turn span per message: {spans:#?}");
    let traces: HashSet<&str> = turns.iter().map(|span| span.trace_id.as_str()).collect();
    assert_eq!(traces.len(), 2, "each message is a trace of its own");

    for turn in &turns {
        let trace: Vec<&CollectedSpan> = spans
            .iter()
            .filter(|span| span.trace_id == turn.trace_id)
            .collect();
        let services: BTreeSet<&str> = trace.iter().map(|span| span.service.as_str()).collect();
        assert_eq!(services, BTreeSet::from(["edge", "worker"]), "{trace:#?}");
        let edge_span = trace
            .iter()
            .find(|span| span.service == "edge" && span.name == "client_message")
            .expect("the edge's span for the message");
        assert!(
            edge_span.parent_span_id.is_empty(),
            "a message starts a trace"
        );
        assert_eq!(
            turn.parent_span_id, edge_span.span_id,
            "the worker's turn continues the edge's span across NATS"
        );

        let chats: Vec<&&CollectedSpan> = trace
            .iter()
            .filter(|span| span.name.starts_with("chat "))
            .collect();
        assert!(!chats.is_empty(), "model calls in the trace: {trace:#?}");
        for chat in chats {
            assert_eq!(chat.service, "worker");
            assert_eq!(chat.name, "chat scripted");
            assert_eq!(chat.attribute("gen_ai.operation.name"), "chat");
            assert_eq!(chat.attribute("gen_ai.request.model"), "scripted");
            assert_eq!(
                chat.attribute("gen_ai.conversation.id"),
                thread.thread_id.as_str()
            );
            for tokens in ["gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"] {
                assert!(
                    chat.attribute(tokens).as_i64().is_some_and(|n| n > 0),
                    "{tokens} on {chat:#?}"
                );
            }
        }
        let tool = trace
            .iter()
            .find(|span| span.name == "execute_tool get_order_status")
            .unwrap_or_else(|| panic!("the tool call's span: {trace:#?}"));
        assert_eq!(tool.attribute("gen_ai.tool.name"), "get_order_status");
        assert_eq!(tool.attribute("gen_ai.operation.name"), "execute_tool");
    }

    // The turn's log line names its trace.
    let first_turn = turns
        .iter()
        .find(|span| span.attribute("in_seq") == 1)
        .expect("the first message's turn");
    assert_eq!(
        committed["trace_id"], first_turn.trace_id,
        "log line: {committed}"
    );
    for key in [
        "turn_id",
        "outcome",
        "duration_ms",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "approvals_raised",
    ] {
        assert!(!committed[key].is_null(), "{key} in {committed}");
    }
    assert_eq!(committed["outcome"], "completed");

    // No secret in any span.
    for span in &spans {
        for value in span.attributes.values() {
            let value = value.to_string();
            assert!(
                !value.contains(&thread.token) && !value.contains("test-secret"),
                "a secret in {span:#?}"
            );
        }
    }
}

#[tokio::test]
async fn a_turn_feeds_model_token_cost_process_and_build_metrics() {
    let app = TestApp::spawn(StackOptions::default()).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send(&thread.message("Where is my order 1002?")).await;
    ws.expect_type("accepted").await;
    ws.frames_until_type("message_complete").await;
    app.wait_for_turns(&thread.thread_id, 1).await;

    let version = env!("CARGO_PKG_VERSION");
    let worker_expected: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "worker_model_call_duration_seconds_count",
            vec![("model", "scripted"), ("kind", "chat")],
        ),
        (
            "worker_model_call_duration_seconds_count",
            vec![("model", "scripted"), ("kind", "classify")],
        ),
        (
            "worker_model_time_to_first_token_seconds_count",
            vec![("model", "scripted")],
        ),
        (
            "worker_tokens_total",
            vec![
                ("model", "scripted"),
                ("agent", "orders"),
                ("type", "prompt"),
            ],
        ),
        (
            "worker_tokens_total",
            vec![
                ("model", "scripted"),
                ("agent", "orders"),
                ("type", "completion"),
            ],
        ),
        (
            "worker_tokens_total",
            vec![
                ("model", "scripted"),
                ("agent", "classifier"),
                ("type", "prompt"),
            ],
        ),
        (
            "worker_cost_usd_total",
            vec![("model", "scripted"), ("agent", "orders")],
        ),
        ("worker_build_info", vec![("version", version)]),
        ("worker_process_resident_memory_bytes", vec![]),
        // The buckets reach past a model call's timeout, for turns of several calls.
        ("worker_turn_duration_seconds_bucket", vec![("le", "300")]),
        (
            "worker_model_call_duration_seconds_bucket",
            vec![("model", "scripted"), ("kind", "chat"), ("le", "120")],
        ),
    ];
    let worker_metrics = worker_url(&app, "/metrics");
    let text = eventually("the worker's metrics to count the turn", || async {
        let text = app
            .http
            .get(&worker_metrics)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains("worker_turn_duration_seconds_count 1")
            .then_some(text)
    })
    .await;
    // Whole seconds: 0 for a young process, but there.
    assert!(
        sample(&text, "worker_process_cpu_seconds_total", &[]).is_some(),
        "{text}"
    );
    for (name, labels) in &worker_expected {
        assert!(
            sample(&text, name, labels).is_some_and(|value| value > 0.0),
            "missing {name} {labels:?} in:\n{text}"
        );
    }

    let text = app
        .http
        .get(format!("{}/metrics", app.http_url(0)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (name, labels) in [
        ("edge_build_info", vec![("version", version)]),
        ("edge_process_resident_memory_bytes", vec![]),
        ("edge_process_open_fds", vec![]),
    ] {
        assert!(
            sample(&text, name, &labels).is_some_and(|value| value > 0.0),
            "missing {name} {labels:?} in:\n{text}"
        );
    }
}

/// The value of the first sample of `name` that has all `labels`, from Prometheus text.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(key, want)| label_text.contains(&format!("{key}=\"{want}\"")))
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}
