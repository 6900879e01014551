//! Storage of imported tools (table `imported_tools`) and their review: a document's tools are
//! upserted keeping an operator's review unless the call changed, listed, reviewed, and loaded for
//! the agents (reviewed and enabled only).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

use super::classify::ImportedDocument;
use super::tool::{Access, ImportedTool, RequestMapping};

/// An imported tool as stored and reviewed: the JSON object of the admin API (SPEC §4).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolRecord {
    pub id: Uuid,
    pub name: String,
    pub method: String,
    pub path: String,
    pub base_url: String,
    pub description: String,
    /// The JSON Schema of the arguments.
    pub parameters: Value,
    /// Where each argument goes in the HTTP request.
    pub request: RequestMapping,
    pub access: Access,
    pub requires_approval: bool,
    pub enabled: bool,
    pub reviewed: bool,
    /// The document it came from: `info.title` and `info.version`.
    pub source: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub reviewed_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl ToolRecord {
    /// The tool as the worker uses it.
    pub fn into_tool(self) -> ImportedTool {
        ImportedTool {
            name: self.name,
            description: self.description,
            method: self.method,
            path: self.path,
            base_url: self.base_url,
            parameters: self.parameters,
            request: self.request,
            access: self.access,
            requires_approval: self.requires_approval,
        }
    }
}

/// The body of `PATCH /api/admin/tools/{id}`: any of the three decisions. Applying it marks the
/// tool reviewed, even when it changes nothing (that confirms the proposal).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolReview {
    pub access: Option<Access>,
    pub requires_approval: Option<bool>,
    pub enabled: Option<bool>,
}

/// Stores a parsed document's tools, in one transaction, and returns them as stored.
///
/// A tool whose name exists already is updated (method, path, base URL, description, schema,
/// request mapping, source) and keeps its review: `access`, `requires_approval`, `enabled`,
/// `reviewed`. Two exceptions, both on the safe side: a tool not reviewed yet takes the new
/// proposal; and a reviewed tool whose call changed — its method, path, base URL, arguments'
/// schema or request mapping — goes back to review (`reviewed: false`, so agents stop seeing it
/// until an operator reviews it again), with `access` and `requires_approval` raised to the new
/// proposal where that is stricter. `enabled` stays as the operator left it. A new description
/// alone keeps the review: it changes what the model reads, not what the call does.
pub async fn save_imported(
    db: &PgPool,
    document: &ImportedDocument,
) -> Result<Vec<ToolRecord>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let mut stored = Vec::with_capacity(document.tools.len());
    for tool in &document.tools {
        // The row comparison, written four times, asks whether the call the review was about is
        // the call the document now describes.
        let record = sqlx::query_as!(
            ToolRecord,
            r#"INSERT INTO imported_tools AS t (id, name, method, path, base_url, description,
                   parameters, request, access, requires_approval, source)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
               ON CONFLICT (name) DO UPDATE SET
                   access = CASE
                       WHEN NOT t.reviewed THEN EXCLUDED.access
                       WHEN (t.method, t.path, t.base_url, t.parameters, t.request)
                          = (EXCLUDED.method, EXCLUDED.path, EXCLUDED.base_url,
                             EXCLUDED.parameters, EXCLUDED.request) THEN t.access
                       WHEN 'write' IN (t.access, EXCLUDED.access) THEN 'write'
                       ELSE 'read' END,
                   requires_approval = CASE
                       WHEN NOT t.reviewed THEN EXCLUDED.requires_approval
                       WHEN (t.method, t.path, t.base_url, t.parameters, t.request)
                          = (EXCLUDED.method, EXCLUDED.path, EXCLUDED.base_url,
                             EXCLUDED.parameters, EXCLUDED.request) THEN t.requires_approval
                       ELSE t.requires_approval OR EXCLUDED.requires_approval END,
                   reviewed = t.reviewed
                       AND (t.method, t.path, t.base_url, t.parameters, t.request)
                         = (EXCLUDED.method, EXCLUDED.path, EXCLUDED.base_url,
                            EXCLUDED.parameters, EXCLUDED.request),
                   reviewed_at = CASE
                       WHEN (t.method, t.path, t.base_url, t.parameters, t.request)
                          = (EXCLUDED.method, EXCLUDED.path, EXCLUDED.base_url,
                             EXCLUDED.parameters, EXCLUDED.request) THEN t.reviewed_at END,
                   method = EXCLUDED.method,
                   path = EXCLUDED.path,
                   base_url = EXCLUDED.base_url,
                   description = EXCLUDED.description,
                   parameters = EXCLUDED.parameters,
                   request = EXCLUDED.request,
                   source = EXCLUDED.source,
                   updated_at = now()
               RETURNING id, name, method, path, base_url, description, parameters,
                  request AS "request: Json<RequestMapping>", access AS "access: Access",
                  requires_approval, enabled, reviewed, source, created_at, updated_at,
                  reviewed_at"#,
            Uuid::now_v7(),
            tool.name,
            tool.method,
            tool.path,
            tool.base_url,
            tool.description,
            tool.parameters,
            Json(&tool.request) as _,
            tool.access.as_str(),
            tool.requires_approval,
            document.source,
        )
        .fetch_one(&mut *tx)
        .await?;
        stored.push(record);
    }
    tx.commit().await?;
    Ok(stored)
}

/// Every imported tool, by name.
pub async fn list(db: &PgPool) -> Result<Vec<ToolRecord>, sqlx::Error> {
    sqlx::query_as!(
        ToolRecord,
        r#"SELECT id, name, method, path, base_url, description, parameters,
                  request AS "request: Json<RequestMapping>", access AS "access: Access",
                  requires_approval, enabled, reviewed, source, created_at, updated_at,
                  reviewed_at
             FROM imported_tools ORDER BY name"#
    )
    .fetch_all(db)
    .await
}

/// Applies a review to a tool and marks it reviewed; `None` if there is no such tool.
pub async fn review(
    db: &PgPool,
    id: Uuid,
    review: &ToolReview,
) -> Result<Option<ToolRecord>, sqlx::Error> {
    sqlx::query_as!(
        ToolRecord,
        r#"UPDATE imported_tools SET
               access = COALESCE($2, access),
               requires_approval = COALESCE($3, requires_approval),
               enabled = COALESCE($4, enabled),
               reviewed = true, reviewed_at = now(), updated_at = now()
            WHERE id = $1
           RETURNING id, name, method, path, base_url, description, parameters,
                  request AS "request: Json<RequestMapping>", access AS "access: Access",
                  requires_approval, enabled, reviewed, source, created_at, updated_at,
                  reviewed_at"#,
        id,
        review.access.map(Access::as_str),
        review.requires_approval,
        review.enabled,
    )
    .fetch_optional(db)
    .await
}

/// The tools agents may use: reviewed and enabled, by name.
pub async fn load_usable(db: &PgPool) -> Result<Vec<ImportedTool>, sqlx::Error> {
    let records = sqlx::query_as!(
        ToolRecord,
        r#"SELECT id, name, method, path, base_url, description, parameters,
                  request AS "request: Json<RequestMapping>", access AS "access: Access",
                  requires_approval, enabled, reviewed, source, created_at, updated_at,
                  reviewed_at
             FROM imported_tools WHERE reviewed AND enabled ORDER BY name"#
    )
    .fetch_all(db)
    .await?;
    Ok(records.into_iter().map(ToolRecord::into_tool).collect())
}
