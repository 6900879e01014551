//! `GET /api/threads/{id}/messages`: the chat page's history, behind the thread token.

use e2e::ws::tokens_text;
use e2e::{eventually, StackOptions, TestApp};
use serde_json::Value;

#[tokio::test]
async fn a_thread_history_lists_each_message_and_its_reply() {
    let app = TestApp::spawn(StackOptions::default()).await;
    let thread = app.create_thread().await;
    let other = app.create_thread().await;
    let url = format!(
        "{}/api/threads/{}/messages",
        app.http_url(0),
        thread.thread_id
    );

    let empty = app.get_json(&url, &thread.token).await;
    assert_eq!(empty["messages"], serde_json::json!([]));
    assert_eq!(empty["status"], "open");

    let mut ws = app.connect(0).await;
    let mut replies = Vec::new();
    for content in ["Hi, is anybody there", "Thanks!"] {
        ws.send(&thread.message(content)).await;
        ws.expect_type("accepted").await;
        replies.push(tokens_text(&ws.frames_until_type("message_complete").await));
    }
    // The history is what is committed, just after the client saw each turn end.
    let history: Value = eventually("both turns in the history", || async {
        let history: Value = app
            .http
            .get(&url)
            .bearer_auth(&thread.token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (history["messages"].as_array()?.len() == 4).then_some(history)
    })
    .await;
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "user");
    assert_eq!(messages[0]["content"], "Hi, is anybody there");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"], replies[0].as_str());
    assert_eq!(messages[1]["last_seq"], 7);
    assert_eq!(messages[1]["usage"]["completion_tokens"], 15);
    assert_eq!(messages[2]["content"], "Thanks!");
    assert_eq!(messages[3]["content"], replies[1].as_str());
    assert_eq!(history["last_seq"], 14);

    for token in ["", "forged", other.token.as_str()] {
        let refused = app.http.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(refused.status(), 401, "token {token:?}");
    }
    let unauthenticated = app.http.get(&url).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let bad = app
        .http
        .get(format!(
            "{}/api/threads/not%20valid/messages",
            app.http_url(0)
        ))
        .bearer_auth(&thread.token)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // A well-signed token for a thread that does not exist (the harness' AUTH_SECRET).
    let ghost = shared::ids::ThreadId::parse("no-such-thread").unwrap();
    let token = shared::auth::ThreadTokens::new(e2e::TEST_AUTH_SECRET.as_bytes())
        .unwrap()
        .sign(&ghost);
    let missing = app
        .http
        .get(format!("{}/api/threads/{ghost}/messages", app.http_url(0)))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test]
async fn the_history_is_paginated_from_the_newest_turn_back() {
    let app = TestApp::spawn(StackOptions::default()).await;
    let thread = app.create_thread().await;
    let url = format!(
        "{}/api/threads/{}/messages",
        app.http_url(0),
        thread.thread_id
    );
    let mut ws = app.connect(0).await;
    for content in ["first", "second", "third"] {
        ws.send(&thread.message(content)).await;
        ws.expect_type("accepted").await;
        ws.frames_until_type("message_complete").await;
    }
    app.wait_for_turns(&thread.thread_id, 3).await;
    let users = |page: &Value| -> Vec<String> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|entry| entry["role"] == "user")
            .map(|entry| entry["content"].as_str().unwrap().to_owned())
            .collect()
    };

    let all = app.get_json(&url, &thread.token).await;
    assert_eq!(users(&all), ["first", "second", "third"]);
    assert_eq!(all["next_cursor"], Value::Null);

    let newest = app.get_json(&format!("{url}?limit=2"), &thread.token).await;
    assert_eq!(users(&newest), ["second", "third"]);
    assert_eq!(newest["messages"].as_array().unwrap().len(), 4);
    assert_eq!(
        newest["last_seq"], 21,
        "the thread's position, whatever the page"
    );
    let cursor = newest["next_cursor"].as_str().expect("older turns exist");
    let older = app
        .get_json(&format!("{url}?limit=2&before={cursor}"), &thread.token)
        .await;
    assert_eq!(users(&older), ["first"]);
    assert_eq!(older["messages"][1]["role"], "assistant");
    assert_eq!(older["next_cursor"], Value::Null);

    for bad in ["limit=0", "limit=201", "before=abc", "before=-1"] {
        let refused = app
            .http
            .get(format!("{url}?{bad}"))
            .bearer_auth(&thread.token)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400, "{bad}");
    }
}
