//! `/api/admin/*`: off without ADMIN_TOKEN, bearer-protected with it; dead letters and replay
//! through HTTP are the same operations as the CLI.

use e2e::{eventually, StackOptions, TestApp};
use serde_json::{json, Value};

#[tokio::test]
async fn admin_routes_are_off_without_a_token() {
    let app = TestApp::spawn(StackOptions {
        workers: 0,
        ..StackOptions::default()
    })
    .await;
    let url = format!("{}/api/admin/dead-letters", app.http_url(0));
    let response = app
        .http
        .get(&url)
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn admin_routes_want_the_bearer_token_and_expose_dead_letters_and_replay() {
    let options = StackOptions::default()
        .with("ADMIN_TOKEN", "s3cret-admin")
        .with("SCRIPTED_FAIL_ON", "boom")
        .with("TURN_MAX_ATTEMPTS", "1");
    let app = TestApp::spawn(options).await;
    let base = app.http_url(0);
    let letters_url = format!("{base}/api/admin/dead-letters");

    let missing = app.http.get(&letters_url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    for wrong in ["s3cret-admi", "s3cret-admin2", "S3CRET-ADMIN", ""] {
        let response = app
            .http
            .get(&letters_url)
            .bearer_auth(wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "token {wrong:?}");
    }
    let empty = app.get_json(&letters_url, "s3cret-admin").await;
    assert_eq!(empty, json!({"dead_letters": []}));

    // One message fails its only attempt and is dead-lettered.
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    ws.send(&thread.message_with_id("boom", "bad-one")).await;
    ws.expect_type("accepted").await;
    ws.frames_until(|f| f["type"] == "error" && f["code"] == "processing_failed")
        .await;
    // The client hears processing_failed just before the dead letter is committed.
    let letters = eventually("the dead letter to be listed", || async {
        let listed: Value = app
            .http
            .get(&letters_url)
            .bearer_auth("s3cret-admin")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let letters = listed["dead_letters"].as_array()?.clone();
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["message_id"], "bad-one");
    assert_eq!(letters[0]["attempts"], 1);

    let replay_url = format!("{base}/api/admin/replay");
    let post = |body: Value| {
        app.http
            .post(&replay_url)
            .bearer_auth("s3cret-admin")
            .json(&body)
            .send()
    };
    let bad = post(json!({"thread_id": thread.thread_id, "dead_letters": true}))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let bad = post(json!({"thread_id": "not a thread"})).await.unwrap();
    assert_eq!(bad.status(), 400);
    let dry: Value = post(json!({"dead_letters": true, "dry_run": true}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dry["redriven"], 1);
    assert_eq!(dry["dry_run"], true);
    let by_thread: Value = post(json!({"thread_id": thread.thread_id, "dry_run": true}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(by_thread["selected"], 1);
    assert_eq!(by_thread["items"][0]["state"], "dead_letter");
    let unauthorized = app
        .http
        .post(&replay_url)
        .json(&json!({"dead_letters": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
}
