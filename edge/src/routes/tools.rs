//! `POST /api/admin/openapi`, `GET /api/admin/tools`, `PATCH /api/admin/tools/{id}` (SPEC §4):
//! import an OpenAPI document as proposed tools, and review them. The parsing and the queries live
//! in `shared::openapi`; these handlers extract, call and map.

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
    // Up to 2 MiB of YAML and the $ref expansion are CPU work: keep them off the I/O threads.
    let parsed =
        tokio::task::spawn_blocking(move || shared::openapi::parse_document(&body, &options))
            .await
            .context("The OpenAPI parsing task failed")
            .map_err(ApiError::Unavailable)?;
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
