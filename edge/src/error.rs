//! HTTP API errors: `{"error": {"code", "message"}}` with a fitting status (SPEC §4).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("too many requests")]
    RateLimited,
    #[error("a dependency is unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid document: {0}")]
    InvalidDocument(String),
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    #[error("origin not allowed")]
    ForbiddenOrigin,
    #[error("too many open sockets from this address")]
    TooManySockets,
    #[error("the edge holds as many sockets as it may")]
    EdgeFull,
    /// Too many operator actions; `Retry-After` says when the next one fits.
    #[error("too many operator actions")]
    OperatorRateLimited { retry_after: std::time::Duration },
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            Self::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many new threads from this address; try again in a minute.".into(),
            ),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "The service is temporarily unavailable; try again shortly.".into(),
            ),
            Self::BadRequest(message) => (StatusCode::BAD_REQUEST, "bad_request", message.clone()),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "A valid bearer token is required.".into(),
            ),
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                "No such resource.".into(),
            ),
            Self::Conflict(message) => (StatusCode::CONFLICT, "conflict", message.clone()),
            Self::InvalidDocument(message) => {
                (StatusCode::BAD_REQUEST, "invalid_document", message.clone())
            }
            Self::ForbiddenOrigin => (
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "Pages of this origin may not use this service (ALLOWED_ORIGINS).".into(),
            ),
            Self::TooManySockets => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many open sockets from this address; close one and connect again.".into(),
            ),
            Self::EdgeFull => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "This server holds as many sockets as it may; connect again shortly.".into(),
            ),
            Self::OperatorRateLimited { retry_after } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "Too many actions from this operator; try again in {} s.",
                    retry_secs(*retry_after)
                ),
            ),
            Self::PayloadTooLarge(message) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                message.clone(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        if let Self::Unavailable(error) = &self {
            tracing::error!(error = format!("{error:#}"), "Request failed.");
        }
        let body = serde_json::json!({"error": {"code": code, "message": message}});
        let mut response = (status, Json(body)).into_response();
        if let Self::OperatorRateLimited { retry_after } = &self {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(retry_secs(*retry_after)),
            );
        }
        response
    }
}

/// Whole seconds to wait, rounded up (`Retry-After` has no fractions), at least 1.
fn retry_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0))
        .max(1)
}
