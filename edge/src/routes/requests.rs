//! Every HTTP request gets a request id (`x-request-id`: the client's, or a new UUID; echoed in the
//! response), a span carrying it (exported as the request's trace span when tracing is on), one log
//! line when answered, and its place in `edge_http_*` metrics. The path is logged without its query
//! string, which may hold tokens. A WebSocket is one request: its frames are not logged here.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, Response};
use axum::middleware::Next;
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::metrics::EdgeMetrics;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The route label of requests no route matched (the web app, unknown paths): one value, so the
/// label stays bounded.
const FALLBACK_ROUTE: &str = "fallback";

/// Wraps every route of `router` (and its fallback).
pub(super) fn instrument<S>(router: Router<S>, metrics: EdgeMetrics) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router
        .layer(axum::middleware::from_fn_with_state(metrics, log_and_count))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(())
                .on_body_chunk(())
                .on_eos(())
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

fn route_of<B>(request: &axum::http::Request<B>) -> &str {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or(FALLBACK_ROUTE, MatchedPath::as_str)
}

fn request_id_of<B>(request: &axum::http::Request<B>) -> &str {
    request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|id| id.to_str().ok())
        .unwrap_or_default()
}

fn request_span(request: &axum::http::Request<Body>) -> tracing::Span {
    let route = route_of(request);
    tracing::info_span!(
        "http_request",
        otel.name = %format_args!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = route,
        request_id = request_id_of(request),
    )
}

/// The request's log line and metrics. Probes and scrapes log at debug: they come every few
/// seconds from every replica's kubelet and Prometheus.
async fn log_and_count(
    State(metrics): State<EdgeMetrics>,
    request: Request,
    next: Next,
) -> Response<Body> {
    let started = Instant::now();
    let route = route_of(&request).to_owned();
    let request_id = request_id_of(&request).to_owned();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status();
    metrics
        .http_requests
        .with_label_values(&[route.as_str(), status.as_str()])
        .inc();
    metrics
        .http_seconds
        .with_label_values(&[route.as_str(), status.as_str()])
        .observe(elapsed.as_secs_f64());
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    if matches!(route.as_str(), "/livez" | "/readyz" | "/metrics") {
        tracing::debug!(%request_id, %method, %path, status = status.as_u16(), latency_ms, "HTTP request.");
    } else {
        tracing::info!(%request_id, %method, %path, status = status.as_u16(), latency_ms, "HTTP request.");
    }
    response
}
