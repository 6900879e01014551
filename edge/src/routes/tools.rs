//! `POST /api/admin/openapi`, `GET /api/admin/tools`, `PATCH /api/admin/tools/{id}` (SPEC §4):
//! import an OpenAPI document as proposed tools, and review them. The parsing and the queries live
//! in `shared::openapi`; these handlers extract, call and map.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use shared::openapi::{DocumentFormat, ImportError, ImportOptions, ToolRecord, ToolReview};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// The largest document the import accepts; larger bodies get 413 `payload_too_large`.
pub(super) const MAX_DOCUMENT_BYTES: usize = shared::openapi::MAX_DOCUMENT_BYTES;

#[derive(Debug, Deserialize)]
pub(super) struct ImportQuery {
    /// Resolves relative server URLs, and stands in for a document without `servers`.
    base_url: Option<String>,
}

/// `POST /api/admin/openapi`: the raw document (JSON or YAML) → `200 {"tools": [...], "skipped":
/// [...]}`, or `400 invalid_document` naming where the problem is.
pub(super) async fn import(
    State(state): State<AppState>,
    query: Result<Query<ImportQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!(
                "The document is larger than {MAX_DOCUMENT_BYTES} bytes."
            ))
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    })?;
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok());
    let options = ImportOptions {
        format: DocumentFormat::from_content_type(content_type),
        base_url: query.base_url,
    };
    let parsed = parse_off_the_io_threads(body, options).await?;
    let document = parsed.map_err(|error| match error {
        ImportError::Document(error) => ApiError::InvalidDocument(error.to_string()),
        ImportError::BaseUrl(_) => ApiError::BadRequest(error.to_string()),
    })?;
    let tools = shared::openapi::save_imported(&state.db, &document)
        .await
        .context("Failed to store the imported tools")
        .map_err(ApiError::Unavailable)?;
    tracing::info!(
        source = %document.source,
        tools = tools.len(),
        skipped = document.skipped.len(),
        "OpenAPI document imported."
    );
    Ok(Json(json!({"tools": tools, "skipped": document.skipped})))
}

/// Imports this edge parses at once. A parse is CPU work with bounded but real memory: the worst
/// 2 MiB document (YAML of a million one-letter nodes, whose parser events serde_yaml_ng holds
/// all at once) peaks near 180 MB before it is refused, besides `MAX_YAML_EXPANDED_BYTES` of
/// expansion and `MAX_DOCUMENT_SCHEMA_BYTES` of inlined schemas. So one runs at a time; others
/// wait their turn within the request's timeout. One count per edge process.
const CONCURRENT_IMPORTS: usize = 1;
static IMPORTS: Semaphore = Semaphore::const_new(CONCURRENT_IMPORTS);

/// Sets the flag when dropped: the request future is dropped when it times out or its client
/// leaves, and the parse on the blocking thread then stops at its next check.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Parses the document on a blocking thread, never more than [`CONCURRENT_IMPORTS`] at once, and
/// stops the parse when the request goes away. The serving threads only wait.
async fn parse_off_the_io_threads(
    body: Bytes,
    options: ImportOptions,
) -> Result<Result<shared::openapi::ImportedDocument, ImportError>, ApiError> {
    let permit = IMPORTS
        .acquire()
        .await
        .context("The import queue is closed")
        .map_err(ApiError::Unavailable)?;
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(Arc::clone(&stop));
    tokio::task::spawn_blocking(move || {
        // Held until the parse ends, even when the request has gone: the bound counts threads
        // at work, not requests waiting.
        let _permit = permit;
        shared::openapi::parse_document_until(&body, &options, &stop)
    })
    .await
    .context("The OpenAPI parsing task failed")
    .map_err(ApiError::Unavailable)
}

/// `GET /api/admin/tools`: every imported tool, by name.
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let tools = shared::openapi::list(&state.db)
        .await
        .context("Failed to read the imported tools")
        .map_err(ApiError::Unavailable)?;
    Ok(Json(json!({ "tools": tools })))
}

/// `PATCH /api/admin/tools/{id}` with any of `access`, `requires_approval`, `enabled`: applies
/// the decisions, marks the tool reviewed and answers it.
pub(super) async fn review(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<ToolReview>, JsonRejection>,
) -> Result<Json<ToolRecord>, ApiError> {
    // An id that is not a UUID names no tool.
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound)?;
    let Json(review) = body.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let tool = shared::openapi::review(&state.db, id, &review)
        .await
        .context("Failed to store the review")
        .map_err(ApiError::Unavailable)?
        .ok_or(ApiError::NotFound)?;
    tracing::info!(tool = %tool.name, access = tool.access.as_str(), requires_approval = tool.requires_approval, enabled = tool.enabled, "Imported tool reviewed.");
    Ok(Json(tool))
}
