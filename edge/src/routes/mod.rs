//! The router: HTTP API, WebSocket and metrics.

mod admin;
mod analytics;
mod conversations;
mod health;
mod history;
mod metrics;
mod requests;
mod threads;
mod tools;
pub mod web;
mod ws;

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::patch;
use axum::routing::{get, post};
use axum::Router;
use tower_http::timeout::TimeoutLayer;

use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/health", get(health::health))
        .route("/livez", get(health::live))
        .route("/readyz", get(health::health))
        .route("/api/threads", post(threads::create_thread))
        .route("/api/threads/{id}/messages", get(history::messages))
        .route("/metrics", get(metrics::metrics))
        // Upgraded sockets are not requests any more, so the timeout only bounds plain HTTP.
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(15),
        ));
    let admin = Router::new()
        .route("/api/admin/dead-letters", get(admin::dead_letters))
        .route("/api/admin/replay", post(admin::replay))
        .route(
            "/api/admin/openapi",
            post(tools::import).layer(DefaultBodyLimit::max(tools::MAX_DOCUMENT_BYTES)),
        )
        .route("/api/admin/tools", get(tools::list))
        .route("/api/admin/tools/{id}", patch(tools::review))
        .route("/api/admin/conversations", get(conversations::list))
        .route(
            "/api/admin/conversations/{id}/timeline",
            get(conversations::timeline),
        )
        .route("/api/admin/analytics", get(analytics::analytics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::require_admin,
        ))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(120),
        ));
    let metrics = state.metrics.clone();
    let routes = Router::new()
        .route("/ws", get(ws::upgrade))
        .merge(api)
        .merge(admin)
        .fallback(web::serve);
    requests::instrument(routes, metrics).with_state(state)
}
