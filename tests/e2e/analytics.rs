//! The admin API's conversation list, timelines and analytics (SPEC §4), over conversations
//! driven through the WebSocket with the scripted model.

use std::collections::BTreeSet;

use e2e::ws::WsClient;
use e2e::{status_and_json, StackOptions, TestApp, Thread};
use serde_json::{json, Value};

const ADMIN: &str = "analytics-admin-token";
const RANGES: [(&str, usize); 3] = [("24h", 24), ("7d", 7), ("30d", 30)];

async fn spawn(options: StackOptions) -> TestApp {
    TestApp::spawn(options.with("ADMIN_TOKEN", ADMIN)).await
}

/// `GET path` with the admin token: the status and the JSON body.
async fn admin_get(app: &TestApp, path: &str) -> (u16, Value) {
    status_and_json(
        app.http
            .get(format!("{}{path}", app.http_url(0)))
            .bearer_auth(ADMIN),
    )
    .await
}

async fn ok(app: &TestApp, path: &str) -> Value {
    let (status, body) = admin_get(app, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// Sends a frame, expects `accepted`, returns the frames up to `message_complete` or `interrupt`.
async fn turn(ws: &mut WsClient, frame: &Value) -> Vec<Value> {
    ws.send(frame).await;
    ws.expect_type("accepted").await;
    ws.frames_until(|frame| {
        matches!(
            frame["type"].as_str(),
            Some("message_complete" | "interrupt")
        )
    })
    .await
}

/// What the client was told a turn cost, summed over every `message_complete`.
#[derive(Debug, Default, Clone, Copy)]
struct Spent {
    prompt: i64,
    completion: i64,
    cost: f64,
}

impl Spent {
    fn add(&mut self, frames: &[Value]) {
        for frame in frames.iter().filter(|f| f["type"] == "message_complete") {
            self.prompt += frame["usage"]["prompt_tokens"].as_i64().unwrap();
            self.completion += frame["usage"]["completion_tokens"].as_i64().unwrap();
            self.cost += frame["usage"]["cost_usd"].as_f64().unwrap();
        }
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test]
async fn a_fresh_stack_has_zero_analytics_and_no_conversations() {
    let app = spawn(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await;
    for (range, buckets) in RANGES {
        let figures = ok(&app, &format!("/api/admin/analytics?range={range}")).await;
        assert_eq!(figures["range"], range);
        for field in [
            "conversations",
            "messages",
            "conversations_with_messages",
            "resolved",
            "escalated",
        ] {
            assert_eq!(figures[field], 0, "{range} {field}: {figures}");
        }
        for field in ["resolution_rate", "escalation_rate", "cost_usd"] {
            assert_eq!(figures[field].as_f64(), Some(0.0), "{range} {field}");
        }
        assert_eq!(
            figures["approvals"],
            json!({"approved": 0, "rejected": 0, "expired": 0, "superseded": 0, "cancelled": 0, "pending": 0})
        );
        assert_eq!(
            figures["tokens"],
            json!({"prompt": 0, "completion": 0, "total": 0})
        );
        assert_eq!(figures["latency_ms"]["turns"], 0);
        for p in ["p50", "p95", "p99"] {
            assert_eq!(figures["latency_ms"][p].as_f64(), Some(0.0), "{range} {p}");
        }
        assert_eq!(figures["agents"], json!([]));
        let series = figures["series"].as_array().unwrap();
        assert_eq!(series.len(), buckets, "{range}");
        for bucket in series {
            assert_eq!(bucket["conversations"], 0);
            assert_eq!(bucket["messages"], 0);
            assert_eq!(bucket["cost_usd"].as_f64(), Some(0.0));
        }
        // The buckets tile the window, oldest first.
        assert_eq!(series[0]["start"], figures["from"]);
        assert_eq!(series[buckets - 1]["end"], figures["to"]);
        for pair in series.windows(2) {
            assert_eq!(pair[0]["end"], pair[1]["start"]);
        }
    }
    let list = ok(&app, "/api/admin/conversations").await;
    assert_eq!(list, json!({"conversations": [], "next_cursor": null}));

    for bad in [
        "/api/admin/analytics",
        "/api/admin/analytics?range=1h",
        "/api/admin/analytics?range=30",
        "/api/admin/conversations?limit=0",
        "/api/admin/conversations?limit=201",
        "/api/admin/conversations?status=closed",
        "/api/admin/conversations?since=yesterday",
        "/api/admin/conversations?cursor=zz",
        "/api/admin/conversations/not%20an%20id/timeline",
    ] {
        let (status, body) = admin_get(&app, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{bad}");
        assert!(body["error"]["message"].is_string());
    }
    let (status, body) = admin_get(&app, "/api/admin/conversations/nope/timeline").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");

    for path in [
        "/api/admin/analytics?range=24h",
        "/api/admin/conversations",
        "/api/admin/conversations/nope/timeline",
    ] {
        let url = format!("{}{path}", app.http_url(0));
        let missing = app.http.get(&url).send().await.unwrap();
        assert_eq!(missing.status(), 401, "{path}");
        let wrong = app
            .http
            .get(&url)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
    }
}

#[tokio::test]
async fn analytics_and_the_timeline_count_a_scripted_set_of_conversations_exactly() {
    let app = spawn(StackOptions::default()).await;
    let mut ws = app.connect(0).await;
    let mut spent = Spent::default();

    // A: an order question (orders, one tool call) → resolved.
    let question = app.create_thread().await;
    let frames = turn(&mut ws, &question.message("Where is my order 1002?")).await;
    assert_eq!(frames.last().unwrap()["type"], "message_complete");
    spent.add(&frames);

    // B: a cancellation, approved → resolved; the tool ran.
    let approved = app.create_thread().await;
    let paused = turn(&mut ws, &approved.message("Cancel order 1003")).await;
    assert_eq!(paused.last().unwrap()["type"], "interrupt", "{paused:?}");
    spent.add(&paused);
    let frames = turn(&mut ws, &approved.interrupt_response(true)).await;
    assert_eq!(frames.last().unwrap()["type"], "message_complete");
    let approved_usage = frames.last().unwrap()["usage"].clone();
    spent.add(&frames);

    // C: a cancellation, rejected → resolved; nothing ran.
    let rejected = app.create_thread().await;
    let paused = turn(&mut ws, &rejected.message("Cancel order 1006")).await;
    assert_eq!(paused.last().unwrap()["type"], "interrupt", "{paused:?}");
    let frames = turn(&mut ws, &rejected.interrupt_response(false)).await;
    assert_eq!(frames.last().unwrap()["type"], "message_complete");
    spent.add(&frames);

    // D: too vague → a clarification, no agent → resolved.
    let vague = app.create_thread().await;
    let frames = turn(&mut ws, &vague.message("help")).await;
    assert!(frames.iter().any(|f| f["type"] == "clarification"));
    spent.add(&frames);

    // E: asks for a person → the general agent escalates.
    let escalated = app.create_thread().await;
    let frames = turn(&mut ws, &escalated.message("I want to talk to a person")).await;
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "tool_call" && f["tool"] == "escalate_to_human"),
        "{frames:?}"
    );
    spent.add(&frames);

    // F: created, never written to → open.
    let silent = app.create_thread().await;

    for (thread, rows) in [
        (&question, 1),
        (&approved, 2),
        (&rejected, 2),
        (&vague, 1),
        (&escalated, 1),
    ] {
        app.wait_for_turns(&thread.thread_id, rows).await;
    }

    for (range, _) in RANGES {
        let figures = ok(&app, &format!("/api/admin/analytics?range={range}")).await;
        assert_eq!(figures["conversations"], 6, "{range}: {figures}");
        assert_eq!(figures["messages"], 5, "{range}");
        assert_eq!(figures["conversations_with_messages"], 5, "{range}");
        assert_eq!(figures["resolved"], 4, "{range}");
        assert_eq!(figures["escalated"], 1, "{range}");
        assert!(close(figures["resolution_rate"].as_f64().unwrap(), 0.8));
        assert!(close(figures["escalation_rate"].as_f64().unwrap(), 0.2));
        assert_eq!(
            figures["approvals"],
            json!({"approved": 1, "rejected": 1, "expired": 0, "superseded": 0, "cancelled": 0, "pending": 0}),
            "{range}"
        );
        assert_eq!(figures["tokens"]["prompt"], spent.prompt, "{range}");
        assert_eq!(figures["tokens"]["completion"], spent.completion, "{range}");
        assert_eq!(figures["tokens"]["total"], spent.prompt + spent.completion);
        assert!(
            close(figures["cost_usd"].as_f64().unwrap(), spent.cost),
            "{range}: {} vs {}",
            figures["cost_usd"],
            spent.cost
        );
        assert!(spent.cost > 0.0);
        // Seven turn rows: five messages and two answers to approvals.
        let latency = &figures["latency_ms"];
        assert_eq!(latency["turns"], 7, "{range}");
        let (p50, p95, p99) = (
            latency["p50"].as_f64().unwrap(),
            latency["p95"].as_f64().unwrap(),
            latency["p99"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p95 && p95 <= p99, "{latency}");
        // orders: A, B (paused and continued: one turn), C; general: E. The clarification ran
        // no agent.
        let agents: Vec<(String, i64)> = figures["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["agent"].as_str().unwrap().to_owned(),
                    a["turns"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            agents,
            [("general".to_owned(), 1), ("orders".to_owned(), 3)],
            "{range}"
        );
        for agent in figures["agents"].as_array().unwrap() {
            assert!(agent["prompt_tokens"].as_i64().unwrap() > 0, "{agent}");
            assert!(agent["avg_duration_ms"].as_f64().unwrap() >= 0.0);
            assert!(agent["p95_duration_ms"].as_f64().unwrap() >= 0.0);
        }
        // Everything happened in the last bucket; the buckets add up to the totals.
        let series = figures["series"].as_array().unwrap();
        let last = series.last().unwrap();
        assert_eq!(last["conversations"], 6, "{range}");
        assert_eq!(last["messages"], 5);
        assert!(close(last["cost_usd"].as_f64().unwrap(), spent.cost));
        let earlier: i64 = series[..series.len() - 1]
            .iter()
            .map(|b| b["conversations"].as_i64().unwrap() + b["messages"].as_i64().unwrap())
            .sum();
        assert_eq!(earlier, 0);
    }

    // The percentiles are PostgreSQL's own nearest-rank ones over the same rows.
    let db = app.db().await;
    let exact: Vec<f64> = sqlx::query_scalar(
        "SELECT percentile_disc(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
                (ORDER BY date_part('epoch', completed_at - received_at) * 1000)
           FROM turns WHERE outcome <> 'dead_lettered'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    let durations: Vec<(String, i64)> = sqlx::query_as(
        "SELECT agent, percentile_disc(0.95) WITHIN GROUP (ORDER BY duration_ms)
           FROM turn_agents GROUP BY agent ORDER BY agent",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let figures = ok(&app, "/api/admin/analytics?range=24h").await;
    for (p, exact) in ["p50", "p95", "p99"].iter().zip(&exact) {
        let reported = figures["latency_ms"][p].as_f64().unwrap();
        assert!(
            (reported - exact).abs() < 0.001,
            "{p}: {reported} vs {exact}"
        );
    }
    let reported: Vec<(String, i64)> = figures["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["agent"].as_str().unwrap().to_owned(),
                a["p95_duration_ms"].as_f64().unwrap() as i64,
            )
        })
        .collect();
    assert_eq!(reported, durations);

    // The list: the conversations' summaries, newest activity first.
    let list = ok(&app, "/api/admin/conversations").await;
    let listed = list["conversations"].as_array().unwrap();
    assert_eq!(listed.len(), 6);
    assert_eq!(list["next_cursor"], Value::Null);
    let by_id = |thread: &Thread| {
        listed
            .iter()
            .find(|c| c["id"] == thread.thread_id.as_str())
            .unwrap_or_else(|| panic!("{} is listed", thread.thread_id))
            .clone()
    };
    let b = by_id(&approved);
    assert_eq!(b["status"], "resolved");
    assert_eq!(b["title"], "Cancel order 1003");
    assert_eq!(b["agents"], json!(["orders"]));
    assert_eq!(b["messages"], 1);
    assert_eq!(b["pending_approval"], false);
    assert_eq!(b["prompt_tokens"], approved_usage["prompt_tokens"]);
    assert_eq!(b["completion_tokens"], approved_usage["completion_tokens"]);
    assert!(close(
        b["cost_usd"].as_f64().unwrap(),
        approved_usage["cost_usd"].as_f64().unwrap()
    ));
    assert_eq!(by_id(&escalated)["status"], "escalated");
    assert_eq!(by_id(&vague)["status"], "resolved");
    let f = by_id(&silent);
    assert_eq!(f["status"], "open");
    assert_eq!(f["messages"], 0);
    assert_eq!(f["title"], Value::Null);
    let times: Vec<&str> = listed
        .iter()
        .map(|c| c["last_active_at"].as_str().unwrap())
        .collect();
    let parsed: Vec<chrono::DateTime<chrono::FixedOffset>> = times
        .iter()
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap())
        .collect();
    assert!(parsed.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    for (status, expected) in [
        ("escalated", vec![&escalated]),
        ("open", vec![&silent]),
        ("awaiting_approval", vec![]),
    ] {
        let page = ok(&app, &format!("/api/admin/conversations?status={status}")).await;
        let ids: Vec<&str> = page["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        let wanted: Vec<&str> = expected.iter().map(|t| t.thread_id.as_str()).collect();
        assert_eq!(ids, wanted, "status={status}");
    }

    // The approved conversation's timeline: what came in, what the agent did, and how it ended.
    let timeline = ok(
        &app,
        &format!("/api/admin/conversations/{}/timeline", approved.thread_id),
    )
    .await;
    assert_eq!(timeline["conversation"]["id"], approved.thread_id.as_str());
    assert_eq!(timeline["conversation"]["status"], "resolved");
    let events = timeline["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let expected_order = [
        "user_message",
        "classification",
        "interrupt",
        "turn_completed",
        "approval_answer",
        "decision",
        "tool_call",
        "tool_result",
        "agent_reply",
        "turn_completed",
    ];
    let mut position = 0;
    for kind in &kinds {
        if position < expected_order.len() && *kind == expected_order[position] {
            position += 1;
        }
    }
    assert_eq!(position, expected_order.len(), "{kinds:?}");
    assert_eq!(kinds.first(), Some(&"user_message"));
    assert_eq!(kinds.last(), Some(&"turn_completed"));
    assert_eq!(events[0]["content"], "Cancel order 1003");
    let interrupt = events.iter().find(|e| e["type"] == "interrupt").unwrap();
    assert_eq!(interrupt["action"], "cancel_order");
    let decision = events.iter().find(|e| e["type"] == "decision").unwrap();
    assert_eq!(decision["decision"], "approved");
    assert_eq!(decision["interrupt_id"], interrupt["interrupt_id"]);
    let answer_event = events
        .iter()
        .find(|e| e["type"] == "approval_answer")
        .unwrap();
    assert_eq!(answer_event["decision"], "approved");
    let tool_call = events.iter().find(|e| e["type"] == "tool_call").unwrap();
    assert_eq!(tool_call["tool"], "cancel_order");
    assert_eq!(tool_call["args"]["order_id"], 1003);
    let reply = events
        .iter()
        .rev()
        .find(|e| e["type"] == "agent_reply")
        .unwrap();
    assert_eq!(reply["agent"], "orders");
    assert!(
        reply["content"]
            .as_str()
            .unwrap()
            .contains("Order 1003 is now cancelled"),
        "{reply}"
    );
    // One turn: both rows carry its id; their usage adds up to what the client was told.
    let turn_ids: BTreeSet<&str> = events
        .iter()
        .map(|e| e["turn_id"].as_str().unwrap())
        .collect();
    assert_eq!(turn_ids.len(), 1, "{events:?}");
    let completed: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "turn_completed")
        .collect();
    assert_eq!(completed.len(), 2);
    assert_eq!(completed[0]["outcome"], "interrupted");
    assert_eq!(completed[1]["outcome"], "completed");
    let rows_sum = |field: &str| {
        completed
            .iter()
            .map(|e| e[field].as_i64().unwrap())
            .sum::<i64>()
    };
    assert_eq!(
        rows_sum("prompt_tokens"),
        approved_usage["prompt_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        rows_sum("completion_tokens"),
        approved_usage["completion_tokens"].as_i64().unwrap()
    );
    for event in &completed {
        let latency = event["latency_ms"].as_i64().unwrap();
        let queue = event["queue_ms"].as_i64().unwrap();
        assert!(0 <= queue && queue <= latency, "{event}");
    }
    // Every event is stamped.
    for event in events {
        assert!(
            chrono::DateTime::parse_from_rfc3339(event["at"].as_str().unwrap()).is_ok(),
            "{event}"
        );
    }
}

#[tokio::test]
async fn the_list_filters_searches_and_pages_without_gaps_or_repeats() {
    let app = spawn(StackOptions::default()).await;
    let mut ws = app.connect(0).await;
    let started = chrono::Utc::now();
    let mut orders = Vec::new();
    let mut general = Vec::new();
    for i in 0..7 {
        let thread = app.create_thread().await;
        let message = if i % 2 == 0 {
            "Where is my order 1004?"
        } else {
            "What is your return policy?"
        };
        let frames = turn(&mut ws, &thread.message(message)).await;
        assert_eq!(frames.last().unwrap()["type"], "message_complete");
        app.wait_for_turns(&thread.thread_id, 1).await;
        if i % 2 == 0 {
            orders.push(thread.thread_id);
        } else {
            general.push(thread.thread_id);
        }
    }
    let all: BTreeSet<String> = orders.iter().chain(&general).cloned().collect();

    // Pages of three: 3 + 3 + 1, newest first, each conversation exactly once.
    let mut seen = Vec::new();
    let mut path = "/api/admin/conversations?limit=3".to_owned();
    let mut pages = 0;
    loop {
        let page = ok(&app, &path).await;
        pages += 1;
        let ids: Vec<String> = page["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(ids.len() <= 3);
        seen.extend(ids);
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/admin/conversations?limit=3&cursor={cursor}"),
            None => break,
        }
        assert!(pages < 10, "the cursor must end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), all);
    // Newest activity first: the last conversation written to comes first.
    assert_eq!(seen[0], orders[3]);
    assert_eq!(seen[6], orders[0]);

    let ids = |page: &Value| -> BTreeSet<String> {
        page["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let orders_set: BTreeSet<String> = orders.iter().cloned().collect();
    let general_set: BTreeSet<String> = general.iter().cloned().collect();
    assert_eq!(
        ids(&ok(&app, "/api/admin/conversations?agent=orders").await),
        orders_set
    );
    assert_eq!(
        ids(&ok(&app, "/api/admin/conversations?agent=general").await),
        general_set
    );
    assert!(ids(&ok(&app, "/api/admin/conversations?agent=billing").await).is_empty());
    // Text search over the user's messages and the replies.
    assert_eq!(
        ids(&ok(&app, "/api/admin/conversations?q=1004").await),
        orders_set
    );
    assert_eq!(
        ids(&ok(&app, "/api/admin/conversations?q=POLICY").await),
        general_set
    );
    // A word only the FAQ's answer has.
    assert_eq!(
        ids(&ok(&app, "/api/admin/conversations?q=within%2030%20days").await),
        general_set
    );
    assert!(ids(&ok(&app, "/api/admin/conversations?q=1005").await).is_empty());
    assert_eq!(
        ids(&ok(&app, "/api/admin/conversations?q=1004&agent=general").await),
        BTreeSet::new()
    );
    // Activity windows, RFC 3339.
    let since = (started - chrono::Duration::seconds(1)).to_rfc3339();
    let until = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let window = ok(
        &app,
        &format!(
            "/api/admin/conversations?since={}&until={}",
            encode(&since),
            encode(&until)
        ),
    )
    .await;
    assert_eq!(ids(&window), all);
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let later = ok(
        &app,
        &format!("/api/admin/conversations?since={}", encode(&future)),
    )
    .await;
    assert!(ids(&later).is_empty());
    let past = ok(
        &app,
        &format!("/api/admin/conversations?until={}", encode(&since)),
    )
    .await;
    assert!(ids(&past).is_empty());
    // A filtered list pages too.
    let first = ok(&app, "/api/admin/conversations?agent=orders&limit=2").await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let second = ok(
        &app,
        &format!("/api/admin/conversations?agent=orders&limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(second["next_cursor"], Value::Null);
    let both: BTreeSet<String> = ids(&first).union(&ids(&second)).cloned().collect();
    assert_eq!(both, orders_set);
}

/// `+` and `:` of an RFC 3339 time, escaped for a query string.
fn encode(raw: &str) -> String {
    raw.replace('+', "%2B").replace(':', "%3A")
}
