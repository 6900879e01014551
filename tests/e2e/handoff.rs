//! Humans in the conversation (SPEC §7): operators and their tokens, the handoff state of a
//! thread, operator messages, live watching, feedback and its analytics.

use e2e::fake_openai::FakeOpenAi;
use e2e::ws::{seqs, types, WsClient};
use e2e::{status_and_json, StackOptions, TestApp, Thread};
use serde_json::{json, Value};

const ADMIN: &str = "handoff-admin-token";

fn options() -> StackOptions {
    StackOptions::default().with("ADMIN_TOKEN", ADMIN)
}

async fn openai_stack(fake: &FakeOpenAi, edges: usize) -> TestApp {
    let mut options = fake
        .stack_options()
        .with("ADMIN_TOKEN", ADMIN)
        .with("ACK_WAIT_SECS", "2")
        .with("LEASE_TTL_SECS", "2")
        .with("OPENAI_API_KEY", "sk-test");
    options.edges = edges;
    TestApp::spawn(options).await
}

/// `method url` with a bearer token and an optional JSON body: the status and the body (JSON,
/// or null when there is none).
async fn call(
    app: &TestApp,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app.http.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    status_and_json(request).await
}

async fn create_operator(app: &TestApp, name: &str) -> (String, String) {
    let url = format!("{}/api/admin/operators", app.http_url(0));
    let (status, body) = call(
        app,
        reqwest::Method::POST,
        &url,
        ADMIN,
        Some(json!({"name": name})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], name);
    (
        body["id"].as_str().unwrap().to_owned(),
        body["token"].as_str().unwrap().to_owned(),
    )
}

/// `POST /api/operator/conversations/{thread}/{action}` on `edge`.
async fn act(
    app: &TestApp,
    edge: usize,
    token: &str,
    thread: &Thread,
    action: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!(
        "{}/api/operator/conversations/{}/{action}",
        app.http_url(edge),
        thread.thread_id
    );
    call(
        app,
        reqwest::Method::POST,
        &url,
        token,
        Some(body.unwrap_or(json!({}))),
    )
    .await
}

async fn inbox(app: &TestApp, edge: usize, token: &str) -> Vec<Value> {
    let url = format!("{}/api/operator/inbox", app.http_url(edge));
    let (status, body) = call(app, reqwest::Method::GET, &url, token, None).await;
    assert_eq!(status, 200, "{body}");
    body["conversations"].as_array().unwrap().clone()
}

/// The inbox once `check` holds for it (a change is committed just after its frame is sent).
async fn inbox_when(app: &TestApp, token: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    e2e::eventually("the inbox to change", || async {
        let listed = inbox(app, 0, token).await;
        check(&listed).then_some(listed)
    })
    .await
}

/// A customer's socket on one thread: every thread frame it got, to check `seq` at the end.
/// Frames of the thread that arrive before an `accepted` (an operator's message, say) are kept
/// for the next [`Customer::until`].
struct Customer {
    ws: WsClient,
    seen: Vec<Value>,
    early: std::collections::VecDeque<Value>,
}

impl Customer {
    fn new(ws: WsClient) -> Self {
        Self {
            ws,
            seen: Vec::new(),
            early: std::collections::VecDeque::new(),
        }
    }

    /// Frames up to and including the first of type `kind`.
    async fn until(&mut self, kind: &str) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let frame = match self.early.pop_front() {
                Some(frame) => frame,
                None => self.ws.next_frame().await,
            };
            let done = frame["type"] == kind;
            if frame.get("seq").is_some() {
                self.seen.push(frame.clone());
            }
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }

    async fn send(&mut self, frame: &Value) {
        self.ws.send(frame).await;
        loop {
            let frame = self.ws.next_frame().await;
            if frame["type"] == "accepted" {
                return;
            }
            assert!(frame.get("seq").is_some(), "unexpected frame: {frame}");
            self.early.push_back(frame);
        }
    }

    /// Every `seq` from 1 to the last, once each, in order.
    fn assert_contiguous(&self) {
        let seqs = seqs(&self.seen);
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "{:#?}", self.seen);
    }
}

#[tokio::test]
async fn operators_are_created_listed_and_revoked_at_once_on_every_edge() {
    let mut options = options();
    options.edges = 2;
    let app = TestApp::spawn(options).await;
    let (id, token) = create_operator(&app, "Alice").await;
    assert!(token.starts_with("op_"), "{token}");

    // The list never shows a token.
    let url = format!("{}/api/admin/operators", app.http_url(1));
    let (status, list) = call(&app, reqwest::Method::GET, &url, ADMIN, None).await;
    assert_eq!(status, 200);
    let operators = list["operators"].as_array().unwrap();
    assert_eq!(operators.len(), 1);
    assert_eq!(operators[0]["id"], id.as_str());
    assert_eq!(operators[0]["name"], "Alice");
    assert_eq!(operators[0]["revoked"], false);
    assert!(operators[0].get("token").is_none(), "{list}");
    assert!(!list.to_string().contains(&token));
    // Only a hash is stored.
    let db = app.db().await;
    let stored: String = sqlx::query_scalar("SELECT token_hash FROM operators")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_ne!(stored, token);
    assert!(!stored.contains(&token[3..]));

    // The operator token works on both edges; the admin token is not an operator token, and an
    // operator token is not an admin token.
    for edge in 0..2 {
        let inbox_url = format!("{}/api/operator/inbox", app.http_url(edge));
        assert_eq!(
            call(&app, reqwest::Method::GET, &inbox_url, &token, None)
                .await
                .0,
            200
        );
        assert_eq!(
            call(&app, reqwest::Method::GET, &inbox_url, ADMIN, None)
                .await
                .0,
            401
        );
        assert_eq!(
            call(&app, reqwest::Method::GET, &inbox_url, "", None)
                .await
                .0,
            401
        );
        assert_eq!(
            call(&app, reqwest::Method::GET, &inbox_url, "op_forged", None)
                .await
                .0,
            401
        );
        let admin_url = format!("{}/api/admin/operators", app.http_url(edge));
        assert_eq!(
            call(&app, reqwest::Method::GET, &admin_url, &token, None)
                .await
                .0,
            401
        );
    }
    // Bad names.
    let create = format!("{}/api/admin/operators", app.http_url(0));
    for body in [
        json!({"name": "  "}),
        json!({}),
        json!({"name": "x".repeat(101)}),
    ] {
        let (status, _) = call(&app, reqwest::Method::POST, &create, ADMIN, Some(body)).await;
        assert!(status == 400 || status == 422, "{status}");
    }

    // Revoked on edge 0: refused at once on edge 1.
    let revoke = format!("{}/api/admin/operators/{id}", app.http_url(0));
    assert_eq!(
        call(&app, reqwest::Method::DELETE, &revoke, ADMIN, None)
            .await
            .0,
        204
    );
    let inbox_url = format!("{}/api/operator/inbox", app.http_url(1));
    let (status, body) = call(&app, reqwest::Method::GET, &inbox_url, &token, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let (_, list) = call(&app, reqwest::Method::GET, &url, ADMIN, None).await;
    assert_eq!(list["operators"][0]["revoked"], true);
    // And on a socket of edge 1: a revoked token cannot watch.
    let thread = app.create_thread_on(1).await;
    let mut ws = app.connect(1).await;
    ws.send(
        &json!({"type": "resume", "thread_id": thread.thread_id, "token": token, "after_seq": 0}),
    )
    .await;
    ws.expect_error("unauthorized").await;
    // Unknown ids.
    let unknown = format!(
        "{}/api/admin/operators/{}",
        app.http_url(0),
        uuid::Uuid::new_v4()
    );
    assert_eq!(
        call(&app, reqwest::Method::DELETE, &unknown, ADMIN, None)
            .await
            .0,
        404
    );
}

/// The whole handoff, with the fake OpenAI server counting model calls. With `kill_worker`, the
/// worker is SIGKILLed between the join and the operator's message, and another one takes over.
async fn full_handoff(kill_worker: bool) {
    let fake = FakeOpenAi::start().await;
    let mut app = openai_stack(&fake, 1).await;
    let (alice_id, alice) = create_operator(&app, "Alice").await;
    let (_, bob) = create_operator(&app, "Bob").await;
    let thread = app.create_thread().await;
    let mut customer = Customer::new(app.connect(0).await);

    // An AI turn: the customer's message comes first, as a frame every socket sees.
    customer
        .send(&thread.message_with_id("Hello there", "m-1"))
        .await;
    let frames = customer.until("message_complete").await;
    assert_eq!(frames[0]["type"], "user_message", "{frames:?}");
    assert_eq!(frames[0]["message_id"], "m-1");
    assert_eq!(frames[0]["content"], "Hello there");
    assert!(types(&frames).contains(&"token"));
    let calls = fake.requests().len();
    assert_eq!(calls, 2, "a classification and a chat completion");

    // The customer asks for a person: `waiting`, and the conversation is in the inbox.
    customer.send(&thread.request_human()).await;
    let frames = customer.until("handoff").await;
    assert_eq!(types(&frames), ["handoff"]);
    assert_eq!(frames[0]["state"], "waiting");
    assert_eq!(frames[0]["operator"], Value::Null);
    let listed = inbox_when(&app, &alice, |listed| !listed.is_empty()).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["thread_id"], thread.thread_id.as_str());
    assert_eq!(listed[0]["state"], "waiting");
    assert_eq!(listed[0]["operator"], Value::Null);
    assert!(listed[0]["waiting_since"].is_string());
    assert!(listed[0]["waiting_ms"].as_i64().unwrap() >= 0);
    assert_eq!(listed[0]["title"], "Hello there");

    // While waiting, a customer message is shown and stored, and no model is called.
    customer.send(&thread.message("Is anybody there?")).await;
    let frames = customer.until("message_complete").await;
    assert_eq!(
        types(&frames),
        ["user_message", "message_complete"],
        "{frames:?}"
    );
    assert_eq!(frames[1]["usage"]["prompt_tokens"], 0);
    assert_eq!(frames[1]["usage"]["completion_tokens"], 0);
    assert_eq!(fake.requests().len(), calls, "no model call while waiting");

    // Alice joins: `human` with her name; Bob's join is refused, and so are his messages.
    let (status, body) = act(&app, 0, &alice, &thread, "join", None).await;
    assert_eq!(status, 200, "{body}");
    let frames = customer.until("handoff").await;
    assert_eq!(frames[0]["state"], "human");
    assert_eq!(frames[0]["operator"]["name"], "Alice");
    let (status, body) = act(&app, 0, &bob, &thread, "join", None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");
    let (status, _) = act(
        &app,
        0,
        &bob,
        &thread,
        "messages",
        Some(json!({"content": "Bob here"})),
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = act(&app, 0, &bob, &thread, "leave", None).await;
    assert_eq!(status, 409);
    let listed = inbox_when(&app, &bob, |listed| {
        listed.first().is_some_and(|c| c["state"] == "human")
    })
    .await;
    assert_eq!(listed[0]["state"], "human");
    assert_eq!(listed[0]["operator"]["name"], "Alice");

    if kill_worker {
        app.workers[0].kill().await;
    }
    // Alice writes, and her client retries the same message: delivered once.
    let reply =
        json!({"content": "Hi, I am Alice. Your refund is on its way.", "message_id": "op-1"});
    for _ in 0..2 {
        let (status, body) = act(&app, 0, &alice, &thread, "messages", Some(reply.clone())).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["message_id"], "op-1");
    }
    // Bad operator messages.
    for bad in [
        json!({"content": "  "}),
        json!({"content": "x".repeat(10_001)}),
        json!({"content": 5}),
        json!({"content": "ok", "message_id": "bad id!"}),
    ] {
        let (status, _) = act(&app, 0, &alice, &thread, "messages", Some(bad)).await;
        assert_eq!(status, 400);
    }
    if kill_worker {
        app.start_worker().await;
    }
    // A customer message while a human holds the conversation: no model call.
    customer.send(&thread.message("Thank you Alice")).await;
    let (status, _) = act(&app, 0, &alice, &thread, "leave", None).await;
    assert_eq!(status, 200);
    let frames = customer.until("handoff").await;
    assert_eq!(
        types(&frames),
        [
            "human_message",
            "user_message",
            "message_complete",
            "handoff"
        ],
        "{frames:?}"
    );
    assert_eq!(frames[0]["operator"]["name"], "Alice");
    assert_eq!(frames[0]["message_id"], "op-1");
    assert_eq!(frames[0]["content"], reply["content"]);
    assert_eq!(frames[3]["state"], "ai");
    assert_eq!(
        fake.requests().len(),
        calls,
        "no model call while a human holds it"
    );
    inbox_when(&app, &alice, <[Value]>::is_empty).await;

    // Back with the AI: it answers, with Alice's message in its history.
    customer.send(&thread.message("One more question")).await;
    let frames = customer.until("message_complete").await;
    assert_eq!(frames[0]["type"], "user_message");
    assert!(types(&frames).contains(&"token"), "{frames:?}");
    let requests = fake.requests();
    assert_eq!(requests.len(), calls + 2);
    let chat = requests.last().unwrap();
    let history = chat["messages"].to_string();
    assert!(history.contains("Your refund is on its way."), "{history}");
    assert!(history.contains("Is anybody there?"), "{history}");
    customer.assert_contiguous();

    // The timeline names the operator of each action.
    let url = format!(
        "{}/api/admin/conversations/{}/timeline",
        app.http_url(0),
        thread.thread_id
    );
    let timeline = app.get_json(&url, ADMIN).await;
    let events = timeline["events"].as_array().expect("events").clone();
    for kind in [
        "request_human",
        "operator_join",
        "human_message",
        "operator_leave",
    ] {
        let event = events
            .iter()
            .find(|event| event["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {events:#?}"));
        if kind != "request_human" {
            assert_eq!(event["operator_id"], alice_id.as_str(), "{event}");
        }
    }
    let db = app.db().await;
    let delivered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM turns WHERE thread_id = $1 AND kind = 'human_message'",
    )
    .bind(&thread.thread_id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(delivered, 1);
}

#[tokio::test]
async fn a_human_takes_over_and_hands_back_with_seq_contiguous() {
    full_handoff(false).await;
}

#[tokio::test]
async fn a_handoff_survives_a_worker_killed_between_join_and_reply() {
    full_handoff(true).await;
}

#[tokio::test]
async fn operators_watch_live_on_another_edge_read_only() {
    let mut options = options();
    options.edges = 2;
    let app = TestApp::spawn(options).await;
    let (_, alice) = create_operator(&app, "Alice").await;
    let thread = app.create_thread_on(0).await;
    let mut customer = app.connect(0).await;
    customer
        .send(&thread.message("Where is my order 1002?"))
        .await;
    customer.expect_type("accepted").await;
    let first = customer.frames_until_type("message_complete").await;

    // The operator's socket on the other edge resumes with the operator token: the past, then live.
    let mut watcher = app.connect(1).await;
    watcher
        .send(&json!({"type": "resume", "thread_id": thread.thread_id, "token": alice, "after_seq": 0}))
        .await;
    let replayed = watcher.frames_until_type("message_complete").await;
    assert_eq!(seqs(&replayed), seqs(&first));
    assert_eq!(replayed[0]["type"], "user_message");
    customer.send(&thread.message("And order 1003?")).await;
    customer.expect_type("accepted").await;
    let live = watcher.frames_until_type("message_complete").await;
    assert_eq!(live[0]["type"], "user_message");
    assert_eq!(live[0]["content"], "And order 1003?");
    assert_eq!(live[0]["seq"].as_u64().unwrap(), first.len() as u64 + 1);
    customer.frames_until_type("message_complete").await;

    // Read only: the operator token does not send messages, answers, handoff requests or feedback.
    for frame in [
        json!({"type": "message", "thread_id": thread.thread_id, "token": alice, "content": "hi"}),
        json!({"type": "interrupt_response", "thread_id": thread.thread_id, "token": alice, "approved": true}),
        json!({"type": "request_human", "thread_id": thread.thread_id, "token": alice}),
        json!({"type": "feedback", "thread_id": thread.thread_id, "token": alice, "score": 5}),
    ] {
        watcher.send(&frame).await;
        let error = watcher.expect_error("unauthorized").await;
        assert_eq!(error["thread_id"], thread.thread_id.as_str());
    }
    // Revoked: the watching socket on the other edge stops relaying the thread, with
    // `unauthorized`, at the next frame of the thread.
    let (id, _) = {
        let url = format!("{}/api/admin/operators", app.http_url(0));
        let (_, list) = call(&app, reqwest::Method::GET, &url, ADMIN, None).await;
        (list["operators"][0]["id"].as_str().unwrap().to_owned(), ())
    };
    let revoke = format!("{}/api/admin/operators/{id}", app.http_url(0));
    assert_eq!(
        call(&app, reqwest::Method::DELETE, &revoke, ADMIN, None)
            .await
            .0,
        204
    );
    // (The token is looked up again at most every half second: poll with new messages.)
    let mut cut_off = false;
    for _ in 0..50 {
        customer.send(&thread.message("Anyone watching?")).await;
        customer.expect_type("accepted").await;
        customer.frames_until_type("message_complete").await;
        let frame = watcher
            .frames_until(|f| f["type"] == "error" || f["type"] == "message_complete")
            .await
            .pop()
            .unwrap();
        if frame["type"] == "error" {
            assert_eq!(frame["code"], "unauthorized", "{frame}");
            assert_eq!(frame["thread_id"], thread.thread_id.as_str());
            cut_off = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(cut_off, "the revoked operator's socket was not cut off");
    customer.send(&thread.message("Still there?")).await;
    customer.expect_type("accepted").await;
    customer.frames_until_type("message_complete").await;
    assert!(
        watcher
            .next_frame_within(std::time::Duration::from_millis(1500))
            .await
            .is_none(),
        "nothing more is relayed to a revoked operator"
    );

    // A thread token of another thread, or a made-up operator token, watches nothing.
    watcher
        .send(&json!({"type": "resume", "thread_id": thread.thread_id, "token": "op_0000", "after_seq": 0}))
        .await;
    watcher.expect_error("unauthorized").await;
}

#[tokio::test]
async fn escalate_to_human_puts_the_conversation_in_the_inbox() {
    let app = TestApp::spawn(options()).await;
    let (_, alice) = create_operator(&app, "Alice").await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send(&thread.message("I want to talk to a person")).await;
    ws.expect_type("accepted").await;
    let frames = ws.frames_until_type("message_complete").await;
    let kinds = types(&frames);
    let handoff = frames
        .iter()
        .position(|f| f["type"] == "handoff")
        .unwrap_or_else(|| panic!("no handoff frame: {kinds:?}"));
    assert_eq!(frames[handoff]["state"], "waiting");
    assert!(kinds.contains(&"tool_call"), "{kinds:?}");
    let listed = inbox_when(&app, &alice, |listed| !listed.is_empty()).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["thread_id"], thread.thread_id.as_str());
    assert_eq!(listed[0]["state"], "waiting");

    // The AI does not answer any more.
    ws.send(&thread.message("Where is my order 1002?")).await;
    ws.expect_type("accepted").await;
    let frames = ws.frames_until_type("message_complete").await;
    assert_eq!(types(&frames), ["user_message", "message_complete"]);
    // Asking again changes nothing and sends nothing; the next frames are the next message's.
    ws.send(&thread.request_human()).await;
    ws.expect_type("accepted").await;
    ws.send(&thread.message("Hello?")).await;
    ws.expect_type("accepted").await;
    let frames = ws.frames_until_type("message_complete").await;
    assert_eq!(types(&frames), ["user_message", "message_complete"]);
    assert_eq!(frames[0]["content"], "Hello?");
}

#[tokio::test]
async fn feedback_is_validated_stored_and_counted_exactly() {
    let app = TestApp::spawn(options()).await;
    let (_, alice) = create_operator(&app, "Alice").await;
    let db = app.db().await;

    // Conversation A: AI only; a reply rated up then down (the last counts), CSAT 4.
    let a = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send(&a.message("Where is my order 1002?")).await;
    ws.expect_type("accepted").await;
    let frames = ws.frames_until_type("message_complete").await;
    let turn_a = frames[0]["turn_id"].as_str().unwrap().to_owned();
    app.wait_for_turns(&a.thread_id, 1).await;
    let feedback = |thread: &Thread, extra: Value| {
        let mut frame =
            json!({"type": "feedback", "thread_id": thread.thread_id, "token": thread.token});
        frame
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        frame
    };
    for rating in ["up", "down"] {
        ws.send(&feedback(&a, json!({"turn_id": turn_a, "rating": rating})))
            .await;
        ws.expect_type("accepted").await;
    }
    ws.send(&feedback(&a, json!({"score": 4, "comment": "fine"})))
        .await;
    ws.expect_type("accepted").await;

    // Invalid feedback: unknown turn, ratings and scores out of range, both kinds at once.
    for bad in [
        json!({"turn_id": uuid::Uuid::new_v4(), "rating": "up"}),
        json!({"turn_id": "not-a-uuid", "rating": "up"}),
        json!({"turn_id": turn_a, "rating": "meh"}),
        json!({"turn_id": turn_a}),
        json!({"score": 0}),
        json!({"score": 6}),
        json!({"score": 4.5}),
        json!({"score": "5"}),
        json!({"score": 5, "turn_id": turn_a, "rating": "up"}),
        json!({}),
        json!({"score": 5, "comment": "x".repeat(2001)}),
    ] {
        ws.send(&feedback(&a, bad.clone())).await;
        let error = ws.expect_error("invalid_frame").await;
        assert_eq!(error["thread_id"], a.thread_id.as_str(), "{bad}");
    }
    // Another thread's turn is unknown to this one.
    let b = app.create_thread().await;
    ws.send(&feedback(&b, json!({"turn_id": turn_a, "rating": "up"})))
        .await;
    ws.expect_error("invalid_frame").await;

    // Conversation B: a human joins (after a wait) and resolves it; a reply rated up, CSAT 2.
    ws.send(&b.message("Where is my order 1003?")).await;
    ws.expect_type("accepted").await;
    let frames = ws.frames_until_type("message_complete").await;
    let turn_b = frames[0]["turn_id"].as_str().unwrap().to_owned();
    app.wait_for_turns(&b.thread_id, 1).await;
    ws.send(&feedback(&b, json!({"turn_id": turn_b, "rating": "up"})))
        .await;
    ws.expect_type("accepted").await;
    ws.send(&b.request_human()).await;
    ws.expect_type("accepted").await;
    ws.frames_until_type("handoff").await;
    assert_eq!(act(&app, 0, &alice, &b, "join", None).await.0, 200);
    ws.frames_until_type("handoff").await;
    assert_eq!(act(&app, 0, &alice, &b, "resolve", None).await.0, 200);
    let resolved = ws.frames_until_type("handoff").await;
    assert_eq!(resolved.last().unwrap()["resolved"], true);
    assert_eq!(resolved.last().unwrap()["state"], "ai");
    ws.send(&feedback(&b, json!({"score": 2}))).await;
    ws.expect_type("accepted").await;

    // Conversation C: AI only, no feedback, still resolved by the AI.
    let c = app.create_thread().await;
    ws.send(&c.message("Hi there, anybody home")).await;
    ws.expect_type("accepted").await;
    ws.frames_until_type("message_complete").await;
    app.wait_for_turns(&c.thread_id, 1).await;
    app.wait_for_turns(&b.thread_id, 4).await;

    let stored: Vec<(String, Option<String>, Option<i16>)> = sqlx::query_as(
        "SELECT kind, rating, score FROM feedback WHERE thread_id = $1 ORDER BY kind",
    )
    .bind(&a.thread_id)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        stored,
        vec![
            ("csat".into(), None, Some(4)),
            ("turn".into(), Some("down".into()), None)
        ]
    );
    let waited: i64 = sqlx::query_scalar("SELECT time_to_human_ms FROM threads WHERE id = $1")
        .bind(&b.thread_id)
        .fetch_one(&db)
        .await
        .unwrap();

    let url = format!("{}/api/admin/analytics?range=24h", app.http_url(0));
    let figures = app.get_json(&url, ADMIN).await;
    // A and C resolved by the AI, B by a human: 2 of 3; one of three handed over.
    assert_eq!(
        figures["ai_resolution_rate"].as_f64().unwrap(),
        2.0 / 3.0,
        "{figures}"
    );
    assert_eq!(figures["handoff_rate"].as_f64().unwrap(), 1.0 / 3.0);
    assert_eq!(figures["time_to_human_ms"]["handoffs"], 1);
    assert_eq!(
        figures["time_to_human_ms"]["p50"].as_f64().unwrap(),
        waited as f64
    );
    assert_eq!(
        figures["time_to_human_ms"]["p95"].as_f64().unwrap(),
        waited as f64
    );
    assert_eq!(figures["csat"]["ai"].as_f64().unwrap(), 4.0);
    assert_eq!(figures["csat"]["human"].as_f64().unwrap(), 2.0);
    assert_eq!(figures["csat"]["ai_responses"], 1);
    assert_eq!(figures["csat"]["human_responses"], 1);
    assert_eq!(figures["thumbs_up_rate"].as_f64().unwrap(), 0.5);
    let by_agent = figures["thumbs_up_rate_by_agent"].as_array().unwrap();
    assert_eq!(by_agent.len(), 1, "{by_agent:?}");
    assert_eq!(by_agent[0]["agent"], "orders");
    assert_eq!(by_agent[0]["ratings"], 2);
    assert_eq!(by_agent[0]["thumbs_up_rate"].as_f64().unwrap(), 0.5);

    // Zero-filled on an empty stack.
    let empty = TestApp::spawn(options()).await;
    let url = format!("{}/api/admin/analytics?range=7d", empty.http_url(0));
    let figures = empty.get_json(&url, ADMIN).await;
    assert_eq!(figures["ai_resolution_rate"], 0.0);
    assert_eq!(figures["handoff_rate"], 0.0);
    assert_eq!(
        figures["time_to_human_ms"],
        json!({"handoffs": 0, "p50": 0.0, "p95": 0.0})
    );
    assert_eq!(
        figures["csat"],
        json!({"ai": 0.0, "human": 0.0, "ai_responses": 0, "human_responses": 0})
    );
    assert_eq!(figures["thumbs_up_rate"], 0.0);
    assert_eq!(figures["thumbs_up_rate_by_agent"], json!([]));
}

/// The thread's history (`GET /api/threads/{id}/messages`) once it has committed `seq`: a change
/// is committed just after its frame is sent.
async fn history_at(app: &TestApp, thread: &Thread, seq: u64) -> Value {
    let url = format!(
        "{}/api/threads/{}/messages",
        app.http_url(0),
        thread.thread_id
    );
    e2e::eventually("the history to catch up", || async {
        let history = app.get_json(&url, &thread.token).await;
        (history["last_seq"].as_u64() >= Some(seq)).then_some(history)
    })
    .await
}

fn seq_of(frames: &[Value]) -> u64 {
    frames.last().and_then(|f| f["seq"].as_u64()).expect("seq")
}

#[tokio::test]
async fn the_history_tells_a_reloaded_page_the_handoff_state() {
    let app = TestApp::spawn(options()).await;
    let (_, alice) = create_operator(&app, "Alice").await;
    let thread = app.create_thread().await;
    let mut customer = Customer::new(app.connect(0).await);

    customer.send(&thread.message("Hello there")).await;
    let seq = seq_of(&customer.until("message_complete").await);
    let history = history_at(&app, &thread, seq).await;
    assert_eq!(
        history["handoff"],
        json!({"state": "ai", "operator": null, "resolved": false}),
        "{history}"
    );

    customer.send(&thread.request_human()).await;
    let seq = seq_of(&customer.until("handoff").await);
    let history = history_at(&app, &thread, seq).await;
    assert_eq!(
        history["handoff"],
        json!({"state": "waiting", "operator": null, "resolved": false}),
        "{history}"
    );

    let (status, body) = act(&app, 0, &alice, &thread, "join", None).await;
    assert_eq!(status, 200, "{body}");
    customer.until("handoff").await;
    let (status, body) = act(
        &app,
        0,
        &alice,
        &thread,
        "messages",
        Some(json!({"content": "Hi, I am Alice.", "message_id": "op-1"})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let seq = seq_of(&customer.until("human_message").await);
    let history = history_at(&app, &thread, seq).await;
    assert_eq!(
        history["handoff"],
        json!({"state": "human", "operator": {"name": "Alice"}, "resolved": false}),
        "{history}"
    );
    let messages = history["messages"].as_array().unwrap();
    let operator = messages
        .iter()
        .find(|entry| entry["role"] == "operator")
        .unwrap_or_else(|| panic!("no operator entry: {history}"));
    assert_eq!(operator["operator"], json!({"name": "Alice"}), "{operator}");
    assert_eq!(operator["content"], "Hi, I am Alice.");
    assert_eq!(operator["message_id"], "op-1");

    // Resolved: back with the AI, and the page may ask for a CSAT score.
    let (status, body) = act(&app, 0, &alice, &thread, "resolve", None).await;
    assert_eq!(status, 200, "{body}");
    let seq = seq_of(&customer.until("handoff").await);
    let history = history_at(&app, &thread, seq).await;
    assert_eq!(
        history["handoff"],
        json!({"state": "ai", "operator": null, "resolved": true}),
        "{history}"
    );
    // A customer message after it does not take the prompt away (nor does the live page).
    customer.send(&thread.message("Thanks!")).await;
    let seq = seq_of(&customer.until("message_complete").await);
    let history = history_at(&app, &thread, seq).await;
    assert_eq!(history["handoff"]["resolved"], true, "{history}");
    // Asking for a person again: a new wait, not resolved any more.
    customer.send(&thread.request_human()).await;
    let seq = seq_of(&customer.until("handoff").await);
    let history = history_at(&app, &thread, seq).await;
    assert_eq!(
        history["handoff"],
        json!({"state": "waiting", "operator": null, "resolved": false}),
        "{history}"
    );
    customer.assert_contiguous();
}

#[tokio::test]
async fn operator_actions_are_rate_limited_per_operator() {
    let app = TestApp::spawn(options().with("OPERATOR_ACTIONS_PER_MINUTE", "3")).await;
    let (_, alice) = create_operator(&app, "Alice").await;
    let (_, bob) = create_operator(&app, "Bob").await;
    let thread = app.create_thread().await;
    let mut customer = Customer::new(app.connect(0).await);
    customer.send(&thread.request_human()).await;
    customer.until("handoff").await;

    // Three actions: a join and two messages.
    let (status, body) = act(&app, 0, &alice, &thread, "join", None).await;
    assert_eq!(status, 200, "{body}");
    for n in 1..=2 {
        let message = json!({"content": format!("Message {n}"), "message_id": format!("op-{n}")});
        let (status, body) = act(&app, 0, &alice, &thread, "messages", Some(message)).await;
        assert_eq!(status, 202, "{body}");
    }
    // The fourth is refused with a JSON error and `Retry-After`, and is not delivered.
    let url = format!(
        "{}/api/operator/conversations/{}/messages",
        app.http_url(0),
        thread.thread_id
    );
    let response = app
        .http
        .post(&url)
        .bearer_auth(&alice)
        .json(&json!({"content": "Message 3", "message_id": "op-3"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=20).contains(&retry_after),
        "one action comes back every 20 s: {retry_after}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("operator"),
        "{body}"
    );
    // Leave and resolve are actions too.
    for action in ["leave", "resolve"] {
        let (status, body) = act(&app, 0, &alice, &thread, action, None).await;
        assert_eq!(status, 429, "{action}: {body}");
    }
    // Reading is not an action, and the budget is Alice's alone: Bob's join is answered (409:
    // Alice holds the conversation), not rate limited.
    assert_eq!(inbox(&app, 0, &alice).await.len(), 1);
    let (status, body) = act(&app, 0, &bob, &thread, "join", None).await;
    assert_eq!(status, 409, "{body}");

    // Only the two accepted messages reached the customer.
    let mut delivered = Vec::new();
    while delivered.len() < 2 {
        let frames = customer.until("human_message").await;
        delivered.push(frames.last().unwrap()["content"].clone());
    }
    assert_eq!(delivered, ["Message 1", "Message 2"]);
    // A customer message published after the refusals: once its turn is committed, a refused
    // action would have been too (one thread's messages are applied in order).
    customer.send(&thread.message("Still there?")).await;
    customer.until("message_complete").await;
    app.wait_for_turns(&thread.thread_id, 5).await;
    let db = app.db().await;
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT message_id FROM turns WHERE thread_id = $1 AND kind = 'human_message' ORDER BY in_seq",
    )
    .bind(&thread.thread_id)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(stored, ["op-1", "op-2"]);
}

/// Model calls the worker made so far, of every kind and result.
fn model_calls(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with("worker_model_calls_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn asking_for_a_human_withdraws_a_pending_approval() {
    let app = TestApp::spawn(options()).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send(&thread.message("Cancel order 1003")).await;
    let frames = ws.frames_until_type("interrupt").await;
    let interrupt = frames.last().unwrap().clone();
    assert_eq!(interrupt["action"], "cancel_order", "{frames:?}");
    app.wait_for_turns(&thread.thread_id, 1).await;
    let calls = model_calls(&app.worker_metrics(0).await);

    // A human is asked for: the paused turn ends as a cancelled one, then the state changes.
    ws.send(&thread.request_human()).await;
    ws.expect_type("accepted").await;
    let frames = ws.frames_until_type("handoff").await;
    assert_eq!(
        types(&frames),
        ["message_complete", "handoff"],
        "{frames:?}"
    );
    assert_eq!(frames[0]["turn_id"], interrupt["turn_id"]);
    assert_eq!(frames[0]["cancelled"], true, "{frames:?}");
    assert_eq!(frames[1]["state"], "waiting");
    assert_eq!(seqs(&frames)[1], seqs(&frames)[0] + 1);

    // Approved afterwards: there is nothing to approve any more, and nothing runs.
    ws.send(&thread.answer(true, interrupt["interrupt_id"].as_str()))
        .await;
    ws.expect_type("accepted").await;
    let frames = ws.frames_until_type("message_complete").await;
    assert_eq!(types(&frames), ["error", "message_complete"], "{frames:?}");
    assert_eq!(frames[0]["code"], "no_pending_interrupt");
    app.wait_for_turns(&thread.thread_id, 3).await;
    let db = app.db().await;
    let status: String = sqlx::query_scalar("SELECT status FROM demo_orders WHERE id = 1003")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(status, "processing", "the withdrawn tool never ran");
    let ledger: i64 =
        sqlx::query_scalar("SELECT count(*) FROM tool_executions WHERE thread_id = $1")
            .bind(&thread.thread_id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(ledger, 0);
    let decided: String = sqlx::query_scalar("SELECT status FROM interrupts WHERE id = $1::uuid")
        .bind(interrupt["interrupt_id"].as_str().unwrap())
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(decided, "cancelled");
    let (pending, state): (Option<uuid::Uuid>, String) =
        sqlx::query_as("SELECT pending_interrupt, handoff_state FROM threads WHERE id = $1")
            .bind(&thread.thread_id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!((pending, state.as_str()), (None, "waiting"));
    assert_eq!(
        model_calls(&app.worker_metrics(0).await),
        calls,
        "no model call"
    );
    let timeline = app
        .get_json(
            &format!(
                "{}/api/admin/conversations/{}/timeline",
                app.http_url(0),
                thread.thread_id
            ),
            ADMIN,
        )
        .await;
    assert!(
        timeline["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|event| event["type"] == "cancelled" && event["decision"] == "withdrawn"),
        "{timeline}"
    );
}
