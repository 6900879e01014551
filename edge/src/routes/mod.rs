//! The router: HTTP API, WebSocket and metrics.

mod admin;
mod analytics;
mod conversations;
pub mod erasure;
mod health;
mod history;
mod metrics;
pub mod operator;
mod requests;
mod threads;
mod tools;
pub mod web;
mod ws;

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::handler::Handler as _;
use axum::routing::patch;
use axum::routing::{delete, get, post};
use axum::Router;
use tower_http::compression::CompressionLayer;
use tower_http::timeout::TimeoutLayer;

use crate::origins::refuse_foreign_origins;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/health", get(health::health))
        .route("/livez", get(health::live))
        .route("/readyz", get(health::health))
        .route("/api/threads", post(threads::create_thread))
        .route("/api/threads/{id}/messages", get(history::messages))
        .route("/api/threads/{id}", delete(erasure::delete_own))
        .route("/metrics", get(metrics::metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refuse_foreign_origins,
        ))
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
            "/api/admin/conversations/{id}",
            delete(erasure::delete_admin),
        )
        .route(
            "/api/admin/conversations/{id}/timeline",
            get(conversations::timeline),
        )
        .route("/api/admin/analytics", get(analytics::analytics))
        .route(
            "/api/admin/operators",
            get(operator::list).post(operator::create),
        )
        .route("/api/admin/operators/{id}", delete(operator::revoke))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::require_admin,
        ))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(120),
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refuse_foreign_origins,
        ));
    // Operator routes (SPEC §7): an operator token, looked up on every request.
    let operators = Router::new()
        .route("/api/operator/me", get(operator::me))
        .route("/api/operator/inbox", get(operator::inbox))
        .route(
            "/api/operator/conversations/{id}/join",
            post(operator::join),
        )
        .route(
            "/api/operator/conversations/{id}/leave",
            post(operator::leave),
        )
        .route(
            "/api/operator/conversations/{id}/resolve",
            post(operator::resolve),
        )
        .route(
            "/api/operator/conversations/{id}/messages",
            post(operator::message),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            operator::require_operator,
        ))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(15),
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refuse_foreign_origins,
        ));
    // Outermost on the API, so that preflights are answered before any other layer runs.
    let cors = state.origins.cors_layer();
    let metrics = state.metrics.clone();
    let routes = Router::new()
        .route("/ws", get(ws::upgrade))
        .merge(api.merge(admin).merge(operators).layer(cors))
        // Only the web app's files are compressed: API answers are small, and a compression
        // layer must not touch WebSocket upgrades.
        .fallback(web::serve.layer(CompressionLayer::new()));
    requests::instrument(routes, metrics).with_state(state)
}
