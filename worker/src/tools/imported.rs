//! Imported (OpenAPI) tools as agents' tools: each reviewed and enabled operation runs as an
//! HTTP call through [`super::http`], with its schema checked like any tool's.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;
use shared::openapi::ImportedTool;

use super::http::{self, HttpSettings, Outgoing};
use super::{RegisteredTool, Tool, ToolContext, ToolError, ToolSpec};

/// One imported operation.
pub struct HttpTool {
    spec: ToolSpec,
    tool: ImportedTool,
    http: Arc<HttpSettings>,
}

impl HttpTool {
    pub fn new(tool: ImportedTool, http: Arc<HttpSettings>) -> Self {
        let spec = ToolSpec {
            name: tool.name.clone(),
            description: tool.description.clone(),
            parameters: tool.parameters.clone(),
            access: tool.access,
            requires_approval: tool.requires_approval,
            escalates: false,
        };
        Self { spec, tool, http }
    }
}

impl Tool for HttpTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn needs_database(&self) -> bool {
        false
    }

    fn call<'a>(
        &'a self,
        args: &'a Value,
        context: ToolContext<'a>,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        let key = context.idempotency_key.to_owned();
        Box::pin(async move {
            let built = self.tool.build_request(args).map_err(ToolError::Refused)?;
            let request = Outgoing {
                method: built.method,
                url: built.url,
                headers: built.headers,
                json_body: built.json_body,
            };
            http::call(&self.http, &request, Some(&key)).await
        })
    }
}

/// The imported tools named in `names` that are reviewed and enabled now, ready for an agent.
/// One whose schema does not compile is left out with a warning.
pub async fn usable(
    db: &sqlx::PgPool,
    names: &[String],
    http: &Arc<HttpSettings>,
) -> Result<Vec<RegisteredTool>, sqlx::Error> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let tools = shared::openapi::load_usable(db).await?;
    Ok(tools
        .into_iter()
        .filter(|tool| names.contains(&tool.name))
        .filter_map(|tool| {
            let name = tool.name.clone();
            match RegisteredTool::new(Arc::new(HttpTool::new(tool, http.clone()))) {
                Ok(registered) => Some(registered),
                Err(error) => {
                    tracing::warn!(tool = %name, %error, "An imported tool's schema does not compile; leaving it out.");
                    None
                }
            }
        })
        .collect())
}
