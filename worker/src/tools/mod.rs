//! Tools the agents call. A tool declares its JSON Schema (what the model sees, and what the
//! runtime checks arguments against before anything runs) and whether it needs a human's
//! approval; the runtime, not the prompt, enforces that.

pub mod demo;
pub mod http;
pub mod imported;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;
use sqlx::PgConnection;

use crate::llm::ToolDefinition;

/// Whether a tool only reads or also changes something: one vocabulary for built-in and imported
/// tools.
pub use shared::openapi::Access;

/// What the model and the runtime know of a tool.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
    pub access: Access,
    /// Never runs before the user approves it (an `interrupt`).
    pub requires_approval: bool,
    /// Running it hands the conversation to a human (the conversation becomes `escalated`).
    pub escalates: bool,
}

/// How a tool call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ToolError {
    /// The request cannot be done (no such order, already shipped…): the model is told why.
    #[error("{0}")]
    Refused(String),
    /// The tool's backend failed; the call may be retried.
    #[error("{0}")]
    Unavailable(String),
}

impl From<sqlx::Error> for ToolError {
    fn from(error: sqlx::Error) -> Self {
        Self::Unavailable(format!("the database failed: {error}"))
    }
}

/// What a tool call runs with.
pub struct ToolContext<'a> {
    /// A database connection, for a tool that [needs one](Tool::needs_database) (none for the
    /// others: no pooled connection is held across external I/O). For an approved call, a
    /// transaction that also records the call in the approval ledger, so its effect and the
    /// ledger entry commit together.
    pub db: Option<&'a mut PgConnection>,
    /// Names this call, whatever attempt makes it: the interrupt id for an approved call,
    /// otherwise the thread, message and model call ids. Sent as `Idempotency-Key` by HTTP tools.
    pub idempotency_key: &'a str,
}

/// A tool. `call` gets arguments already checked against the tool's schema.
pub trait Tool: Send + Sync {
    fn spec(&self) -> &ToolSpec;

    /// Whether the tool works in this database (its effect commits with the approval ledger)
    /// and gets a connection. A tool that calls out (HTTP) must not: it would hold a pooled
    /// connection for as long as the remote server takes.
    fn needs_database(&self) -> bool {
        true
    }

    fn call<'a>(
        &'a self,
        args: &'a Value,
        context: ToolContext<'a>,
    ) -> BoxFuture<'a, Result<Value, ToolError>>;
}

/// A tool and the compiled validator of its arguments.
#[derive(Clone)]
pub struct RegisteredTool {
    pub tool: Arc<dyn Tool>,
    validator: Arc<jsonschema::Validator>,
}

impl RegisteredTool {
    /// A tool with its argument validator; fails when the tool's schema is not a valid schema.
    pub fn new(tool: Arc<dyn Tool>) -> anyhow::Result<Self> {
        let validator = jsonschema::validator_for(&tool.spec().parameters).map_err(|error| {
            anyhow::anyhow!(
                "the schema of tool {:?} is invalid: {error}",
                tool.spec().name
            )
        })?;
        Ok(Self {
            tool,
            validator: Arc::new(validator),
        })
    }

    pub fn spec(&self) -> &ToolSpec {
        self.tool.spec()
    }

    /// Parses the model's argument text and checks it against the tool's schema.
    pub fn parse_args(&self, raw: &str) -> Result<Value, String> {
        let raw = if raw.trim().is_empty() { "{}" } else { raw };
        let args: Value = serde_json::from_str(raw)
            .map_err(|error| format!("the arguments are not JSON: {error}"))?;
        let problems: Vec<String> = self
            .validator
            .iter_errors(&args)
            .map(|error| {
                let path = error.instance_path().to_string();
                if path.is_empty() {
                    error.to_string()
                } else {
                    format!("{path}: {error}")
                }
            })
            .collect();
        if problems.is_empty() {
            Ok(args)
        } else {
            Err(format!("invalid arguments: {}", problems.join("; ")))
        }
    }

    pub fn definition(&self) -> ToolDefinition {
        let spec = self.spec();
        ToolDefinition {
            name: spec.name.clone(),
            description: spec.description.clone(),
            parameters: spec.parameters.clone(),
        }
    }
}

/// Every tool agents may use, by name.
#[derive(Clone, Default)]
pub struct Toolbox {
    tools: BTreeMap<String, RegisteredTool>,
}

impl Toolbox {
    /// The demo shop's tools.
    pub fn demo() -> anyhow::Result<Self> {
        let mut toolbox = Self::default();
        for tool in demo::tools() {
            toolbox.register(tool)?;
        }
        Ok(toolbox)
    }

    pub fn register(&mut self, tool: Arc<dyn Tool>) -> anyhow::Result<()> {
        let registered = RegisteredTool::new(tool)?;
        self.tools
            .insert(registered.spec().name.clone(), registered);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&RegisteredTool> {
        self.tools.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_checked_against_the_schema() {
        let toolbox = Toolbox::demo().unwrap();
        let cancel = toolbox.get("cancel_order").unwrap();
        assert!(cancel.spec().requires_approval);
        assert_eq!(
            cancel.parse_args(r#"{"order_id": 1003}"#).unwrap()["order_id"],
            1003
        );
        let wrong_type = cancel.parse_args(r#"{"order_id": "soon"}"#).unwrap_err();
        assert!(wrong_type.contains("/order_id"), "{wrong_type}");
        let missing = cancel.parse_args("{}").unwrap_err();
        assert!(missing.contains("order_id"), "{missing}");
        assert!(cancel.parse_args("{not json").is_err());
        let extra = cancel.parse_args(r#"{"order_id": 1, "x": 2}"#).unwrap_err();
        assert!(extra.contains('x'), "{extra}");
        assert!(
            !toolbox
                .get("get_order_status")
                .unwrap()
                .spec()
                .requires_approval
        );
    }
}
