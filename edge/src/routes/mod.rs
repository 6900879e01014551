//! The router: HTTP API, WebSocket and metrics.

mod health;
mod metrics;
mod threads;
mod ws;

use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use tower_http::timeout::TimeoutLayer;

use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/health", get(health::health))
        .route("/api/threads", post(threads::create_thread))
        .route("/metrics", get(metrics::metrics))
        // Upgraded sockets are not requests any more, so the timeout only bounds plain HTTP.
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(15),
        ));
    Router::new()
        .route("/ws", get(ws::upgrade))
        .merge(api)
        .with_state(state)
}
