//! What agents' tools touch in the database: the approval ledger (`tool_executions`), keyed by
//! the interrupt id, that runs an approved call at most once; the connection a tool that works
//! in the database runs with; and the imported tools in use.

use std::sync::Arc;

use serde_json::{json, Value};
use shared::turns::InterruptId;

use super::{connections, storable_json, Store};
use crate::tools::http::HttpSettings;
use crate::tools::{imported, RegisteredTool, Tool, ToolContext, ToolError};

/// What became of an approved call of a tool that works in the database.
#[derive(Debug, Clone, PartialEq)]
pub enum ApprovedRun {
    /// An earlier attempt ran it: its recorded outcome, nothing ran now.
    AlreadyRan { ok: bool, result: Value },
    /// It ran now; its effect and its ledger row committed together.
    Ran { ok: bool, result: Value },
    /// The tool's backend failed: nothing was committed, the call may be tried again.
    Unavailable(String),
}

/// Where the ledger row of an approved call that calls out stands once claimed.
#[derive(Debug, Clone, PartialEq)]
pub enum RemoteClaim {
    /// No outcome is recorded: the call is (re)sent, with the interrupt id as its key.
    ToSend,
    /// The call ran and its outcome is recorded: it is never sent again.
    Finished { ok: bool, result: Value },
}

impl Store {
    /// Runs a tool call that needs no approval, with a connection only for a tool that works in
    /// the database: none is held while a tool calls out. The outer error is the pool's.
    pub async fn run_tool(
        &self,
        tool: &dyn Tool,
        args: &Value,
        idempotency_key: &str,
    ) -> Result<Result<Value, ToolError>, sqlx::Error> {
        if tool.needs_database() {
            let mut taken = connections::take(&self.tools).await?;
            let context = ToolContext {
                db: Some(&mut taken),
                idempotency_key,
            };
            let outcome =
                tokio::time::timeout(connections::STATEMENT_TIMEOUT, tool.call(args, context))
                    .await
                    .unwrap_or_else(|_| {
                        Err(ToolError::Unavailable(format!(
                            "the database did not answer in {:?}",
                            connections::STATEMENT_TIMEOUT
                        )))
                    });
            // What a tool makes of a database error (or of no answer): the connection may be
            // lost, or left in a transaction.
            taken.give_back(!matches!(outcome, Err(ToolError::Unavailable(_))));
            Ok(outcome)
        } else {
            let context = ToolContext {
                db: None,
                idempotency_key,
            };
            Ok(tool.call(args, context).await)
        }
    }

    /// Runs approval `interrupt`'s call of `tool` (one that works in the database) at most once:
    /// the ledger row keyed by the interrupt id commits in the same transaction as the tool's
    /// effect; a second run finds the row and returns its result. A refusal is recorded (the
    /// tool's own writes are rolled back); an unavailable backend leaves nothing behind.
    pub async fn run_approved_in_db(
        &self,
        interrupt: InterruptId,
        thread_id: &str,
        tool: &dyn Tool,
        args: &Value,
    ) -> Result<ApprovedRun, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let claimed = sqlx::query_file!(
            "queries/claim_tool_execution.sql",
            interrupt.as_uuid(),
            thread_id,
            tool.spec().name,
            &*storable_json(args),
        )
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !claimed {
            tx.rollback().await?;
            let (ok, result) = self.tool_execution(interrupt).await?;
            return Ok(ApprovedRun::AlreadyRan { ok, result });
        }
        let mut effect = sqlx::Connection::begin(&mut *tx).await?;
        let key = interrupt.to_string();
        let context = ToolContext {
            db: Some(&mut *effect),
            idempotency_key: &key,
        };
        let (ok, result) = match tool.call(args, context).await {
            Ok(result) => {
                effect.commit().await?;
                (true, result)
            }
            Err(ToolError::Refused(reason)) => {
                effect.rollback().await?;
                (false, json!({"error": reason}))
            }
            Err(ToolError::Unavailable(reason)) => {
                drop(effect);
                tx.rollback().await?;
                return Ok(ApprovedRun::Unavailable(reason));
            }
        };
        sqlx::query!(
            "UPDATE tool_executions SET ok = $2, result = $3, finished_at = now()
              WHERE interrupt_id = $1",
            interrupt.as_uuid(),
            ok,
            &*storable_json(&result),
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ApprovedRun::Ran { ok, result })
    }

    /// Claims the ledger row of approval `interrupt`'s call of a tool that calls out, in one
    /// short statement (no connection is held across the call).
    pub async fn claim_remote(
        &self,
        interrupt: InterruptId,
        thread_id: &str,
        tool: &str,
        args: &Value,
    ) -> Result<RemoteClaim, sqlx::Error> {
        let claimed = sqlx::query_file!(
            "queries/claim_tool_execution.sql",
            interrupt.as_uuid(),
            thread_id,
            tool,
            &*storable_json(args),
        )
        .execute(&self.db)
        .await?
        .rows_affected()
            == 1;
        if claimed {
            return Ok(RemoteClaim::ToSend);
        }
        let row = sqlx::query_file!("queries/tool_execution.sql", interrupt.as_uuid())
            .fetch_one(&self.db)
            .await?;
        Ok(if row.finished {
            RemoteClaim::Finished {
                ok: row.ok,
                result: row.result,
            }
        } else {
            RemoteClaim::ToSend
        })
    }

    /// Records the outcome of approval `interrupt`'s remote call. The first outcome recorded
    /// stands (a worker that lost the thread's lease may still be finishing the same call): the
    /// outcome returned is the one on the row.
    pub async fn record_remote(
        &self,
        interrupt: InterruptId,
        ok: bool,
        result: &Value,
    ) -> Result<(bool, Value), sqlx::Error> {
        let recorded = sqlx::query!(
            "UPDATE tool_executions SET ok = $2, result = $3, finished_at = now()
              WHERE interrupt_id = $1 AND finished_at IS NULL
             RETURNING ok, result",
            interrupt.as_uuid(),
            ok,
            &*storable_json(result),
        )
        .fetch_optional(&self.db)
        .await?;
        match recorded {
            Some(recorded) => Ok((recorded.ok, recorded.result)),
            None => self.tool_execution(interrupt).await,
        }
    }

    /// The outcome recorded on the ledger row of approval `interrupt`.
    async fn tool_execution(&self, interrupt: InterruptId) -> Result<(bool, Value), sqlx::Error> {
        let row = sqlx::query!(
            "SELECT ok, result FROM tool_executions WHERE interrupt_id = $1",
            interrupt.as_uuid(),
        )
        .fetch_one(&self.db)
        .await?;
        Ok((row.ok, row.result))
    }

    /// The imported tools among `names` that are reviewed and enabled now.
    pub async fn usable_imported(
        &self,
        names: &[String],
        http: &Arc<HttpSettings>,
    ) -> Result<Vec<RegisteredTool>, sqlx::Error> {
        imported::usable(&self.db, names, http).await
    }
}
