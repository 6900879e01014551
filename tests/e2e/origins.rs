//! `ALLOWED_ORIGINS` (SPEC §9): which browser pages may open sockets and call the API. Edge 0 runs
//! without the setting (its own origin and non-browser clients only), edge 1 with a list.

use e2e::ws::WsClient;
use e2e::{StackOptions, TestApp};
use reqwest::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
};
use reqwest::{Method, StatusCode};

const SHOP: &str = "https://shop.example";
const EVIL: &str = "https://evil.example";

/// Edge 0 without `ALLOWED_ORIGINS`, edge 1 with `https://shop.example` (and a second origin).
async fn two_edges() -> TestApp {
    let mut app = TestApp::spawn(StackOptions {
        edges: 1,
        workers: 0,
        ..StackOptions::default()
    })
    .await;
    app.env.insert(
        "ALLOWED_ORIGINS".into(),
        format!("{SHOP}, http://localhost:5173"),
    );
    app.start_edge().await;
    app
}

/// `http://ADDR`, the origin of the edge's own pages.
fn own_origin(app: &TestApp, edge: usize) -> String {
    app.http_url(edge)
}

#[tokio::test]
async fn sockets_from_origins_not_allowed_are_refused() {
    let app = two_edges().await;

    // Unset: the edge's own pages and clients without Origin only.
    let url = app.ws_url(0);
    assert!(WsClient::connect_from_origin(&url, &own_origin(&app, 0))
        .await
        .is_ok());
    WsClient::connect(&url).await; // no Origin: not a browser
    assert_eq!(
        WsClient::connect_from_origin(&url, SHOP).await.err(),
        Some(403)
    );
    let other_port = format!("http://127.0.0.1:{}", 1 + url_port(&app, 0));
    assert_eq!(
        WsClient::connect_from_origin(&url, &other_port).await.err(),
        Some(403)
    );

    // Listed: those origins too, and no other.
    let url = app.ws_url(1);
    let mut ws = WsClient::connect_from_origin(&url, SHOP).await.unwrap();
    assert!(WsClient::connect_from_origin(&url, "http://localhost:5173")
        .await
        .is_ok());
    assert!(WsClient::connect_from_origin(&url, &own_origin(&app, 1))
        .await
        .is_ok());
    assert_eq!(
        WsClient::connect_from_origin(&url, EVIL).await.err(),
        Some(403)
    );
    assert_eq!(
        WsClient::connect_from_origin(&url, "http://shop.example")
            .await
            .err(),
        Some(403)
    );
    assert_eq!(
        WsClient::connect_from_origin(&url, "null").await.err(),
        Some(403)
    );

    // The allowed socket works.
    let thread = app.create_thread_on(1).await;
    ws.send(&thread.message("Hello from the shop")).await;
    ws.expect_type("accepted").await;
}

fn url_port(app: &TestApp, edge: usize) -> u16 {
    let addr = app.edges[edge].addr.as_deref().unwrap();
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

async fn preflight(app: &TestApp, edge: usize, origin: &str) -> reqwest::Response {
    app.http
        .request(
            Method::OPTIONS,
            format!("{}/api/threads", app.http_url(edge)),
        )
        .header(ORIGIN, origin)
        .header(ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(ACCESS_CONTROL_REQUEST_HEADERS, "authorization,content-type")
        .send()
        .await
        .unwrap()
}

async fn create_thread_from(app: &TestApp, edge: usize, origin: &str) -> reqwest::Response {
    app.http
        .post(format!("{}/api/threads", app.http_url(edge)))
        .header(ORIGIN, origin)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
}

fn header<'r>(response: &'r reqwest::Response, name: &reqwest::header::HeaderName) -> &'r str {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().unwrap())
        .unwrap_or("")
}

#[tokio::test]
async fn cors_answers_allowed_origins_only() {
    let app = two_edges().await;

    let allowed = preflight(&app, 1, SHOP).await;
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(header(&allowed, &ACCESS_CONTROL_ALLOW_ORIGIN), SHOP);
    let methods = header(&allowed, &ACCESS_CONTROL_ALLOW_METHODS).to_ascii_uppercase();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    let headers = header(&allowed, &ACCESS_CONTROL_ALLOW_HEADERS).to_ascii_lowercase();
    assert!(
        headers.contains("authorization") && headers.contains("content-type"),
        "{headers}"
    );

    for (edge, origin) in [(1, EVIL), (0, SHOP)] {
        let refused = preflight(&app, edge, origin).await;
        assert!(
            refused.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none(),
            "edge {edge} must not allow {origin}: {:?}",
            refused.headers()
        );
        // A request sent anyway (no preflight for it, or a non-browser forging one) is refused.
        let response = create_thread_from(&app, edge, origin).await;
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "edge {edge}, {origin}"
        );
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "origin_not_allowed");
    }

    let created = create_thread_from(&app, 1, SHOP).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(header(&created, &ACCESS_CONTROL_ALLOW_ORIGIN), SHOP);
    // The edge's own pages are same-origin: no CORS needed, nothing refused.
    let own = create_thread_from(&app, 0, &own_origin(&app, 0)).await;
    assert_eq!(own.status(), StatusCode::CREATED);
}

/// A preflight of `DELETE /api/threads/{id}` (the customer erasing their conversation, with the
/// thread's token) from `origin`.
async fn preflight_delete(
    app: &TestApp,
    edge: usize,
    origin: &str,
    thread: &str,
) -> reqwest::Response {
    app.http
        .request(
            Method::OPTIONS,
            format!("{}/api/threads/{thread}", app.http_url(edge)),
        )
        .header(ORIGIN, origin)
        .header(ACCESS_CONTROL_REQUEST_METHOD, "DELETE")
        .header(ACCESS_CONTROL_REQUEST_HEADERS, "authorization")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_widget_on_a_listed_origin_may_erase_its_conversation() {
    let app = two_edges().await;
    let thread = app.create_thread_on(1).await;

    let allowed = preflight_delete(&app, 1, SHOP, &thread.thread_id).await;
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(header(&allowed, &ACCESS_CONTROL_ALLOW_ORIGIN), SHOP);
    let methods = header(&allowed, &ACCESS_CONTROL_ALLOW_METHODS).to_ascii_uppercase();
    assert!(methods.contains("DELETE"), "DELETE not allowed: {methods}");
    let headers = header(&allowed, &ACCESS_CONTROL_ALLOW_HEADERS).to_ascii_lowercase();
    assert!(headers.contains("authorization"), "{headers}");

    for (edge, origin) in [(1, EVIL), (0, SHOP)] {
        let refused = preflight_delete(&app, edge, origin, &thread.thread_id).await;
        assert!(
            refused.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none(),
            "edge {edge} must not allow {origin}: {:?}",
            refused.headers()
        );
        // Sent anyway, the erasure is refused and the conversation stays.
        let response = app
            .http
            .delete(format!(
                "{}/api/threads/{}",
                app.http_url(edge),
                thread.thread_id
            ))
            .header(ORIGIN, origin)
            .bearer_auth(&thread.token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "edge {edge}, {origin}"
        );
    }

    // The browser's actual request after the preflight: the conversation is erased.
    let erased = app
        .http
        .delete(format!(
            "{}/api/threads/{}",
            app.http_url(1),
            thread.thread_id
        ))
        .header(ORIGIN, SHOP)
        .bearer_auth(&thread.token)
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&erased, &ACCESS_CONTROL_ALLOW_ORIGIN), SHOP);
}
