//! The demo shop's tools (SPEC §5, plus `escalate_to_human`), on the demo data that `worker seed`
//! loads (worker/src/demo_seed.sql): orders 1001–1010, their invoices, and an FAQ. Each result
//! carries a `summary` sentence for the user.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use sqlx::PgConnection;

use super::{Access, Tool, ToolContext, ToolError, ToolSpec};

#[derive(Debug, Clone, Copy)]
enum Kind {
    GetOrderStatus,
    CancelOrder,
    GetInvoice,
    RequestRefund,
    SearchFaq,
    EscalateToHuman,
}

struct DemoTool {
    spec: ToolSpec,
    kind: Kind,
}

fn order_id_schema() -> Value {
    json!({"type": "integer", "minimum": 1, "description": "The order number, e.g. 1003."})
}

/// The five demo tools.
pub fn tools() -> Vec<Arc<dyn Tool>> {
    let specs = [
        (
            Kind::GetOrderStatus,
            "get_order_status",
            "Look up an order: its status, items, total and expected delivery date.",
            json!({"type": "object", "properties": {"order_id": order_id_schema()},
                   "required": ["order_id"], "additionalProperties": false}),
            Access::Read,
            false,
        ),
        (
            Kind::CancelOrder,
            "cancel_order",
            "Cancel an order that has not shipped yet. Needs the customer's approval.",
            json!({"type": "object", "properties": {
                       "order_id": order_id_schema(),
                       "reason": {"type": "string", "maxLength": 500}},
                   "required": ["order_id"], "additionalProperties": false}),
            Access::Write,
            true,
        ),
        (
            Kind::GetInvoice,
            "get_invoice",
            "Look up the invoice of an order: amount, status and what was refunded.",
            json!({"type": "object", "properties": {"order_id": order_id_schema()},
                   "required": ["order_id"], "additionalProperties": false}),
            Access::Read,
            false,
        ),
        (
            Kind::RequestRefund,
            "request_refund",
            "Refund an order, fully or in part (amount in USD; omitted: whatever is left). Needs the customer's approval.",
            json!({"type": "object", "properties": {
                       "order_id": order_id_schema(),
                       "amount": {"type": "number", "exclusiveMinimum": 0},
                       "reason": {"type": "string", "minLength": 1, "maxLength": 500}},
                   "required": ["order_id", "reason"], "additionalProperties": false}),
            Access::Write,
            true,
        ),
        (
            Kind::SearchFaq,
            "search_faq",
            "Search the shop's FAQ (returns, shipping, support hours, passwords, warranty, payment).",
            json!({"type": "object", "properties": {"query": {"type": "string", "minLength": 1, "maxLength": 500}},
                   "required": ["query"], "additionalProperties": false}),
            Access::Read,
            false,
        ),
        (
            Kind::EscalateToHuman,
            "escalate_to_human",
            "Hand the conversation to a human colleague, when the customer asks for a person or you cannot help.",
            json!({"type": "object", "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 500}},
                   "required": ["reason"], "additionalProperties": false}),
            Access::Write,
            false,
        ),
    ];
    specs
        .into_iter()
        .map(
            |(kind, name, description, parameters, access, requires_approval)| {
                Arc::new(DemoTool {
                    spec: ToolSpec {
                        name: name.into(),
                        description: description.into(),
                        parameters,
                        access,
                        requires_approval,
                        escalates: matches!(kind, Kind::EscalateToHuman),
                    },
                    kind,
                }) as Arc<dyn Tool>
            },
        )
        .collect()
}

impl Tool for DemoTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(
        &'a self,
        args: &'a Value,
        context: ToolContext<'a>,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        Box::pin(async move {
            let db = context.db.ok_or_else(|| {
                ToolError::Unavailable("the tool was called without a database connection".into())
            })?;
            match self.kind {
                Kind::GetOrderStatus => get_order_status(order_id(args)?, db).await,
                Kind::CancelOrder => {
                    let reason = args["reason"].as_str().unwrap_or("customer request");
                    cancel_order(order_id(args)?, reason, db).await
                }
                Kind::GetInvoice => get_invoice(order_id(args)?, db).await,
                Kind::RequestRefund => {
                    let reason = args["reason"].as_str().unwrap_or("customer request");
                    request_refund(order_id(args)?, args["amount"].as_f64(), reason, db).await
                }
                Kind::SearchFaq => search_faq(args["query"].as_str().unwrap_or_default(), db).await,
                Kind::EscalateToHuman => Ok(json!({
                    "reason": args["reason"].as_str().unwrap_or_default(),
                    "summary": "I have passed this conversation to a colleague; they will get back to you by email within one business day."
                })),
            }
        })
    }
}

fn order_id(args: &Value) -> Result<i32, ToolError> {
    args["order_id"]
        .as_i64()
        .and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| ToolError::Refused("order_id must be an order number".into()))
}

fn no_such_order(id: i32) -> ToolError {
    ToolError::Refused(format!(
        "There is no order {id}; demo orders are numbered 1001 to 1010."
    ))
}

async fn get_order_status(id: i32, db: &mut PgConnection) -> Result<Value, ToolError> {
    let row = sqlx::query!(
        r#"SELECT id, status, items, total_usd::float8 AS "total!", placed_on, eta
             FROM demo_orders WHERE id = $1"#,
        id,
    )
    .fetch_optional(&mut *db)
    .await?
    .ok_or_else(|| no_such_order(id))?;
    let (id, status, items, total, placed_on, eta) = (
        row.id,
        row.status,
        row.items,
        row.total,
        row.placed_on,
        row.eta,
    );
    let summary = match (status.as_str(), eta) {
        ("delivered", Some(eta)) => format!("Order {id} ({items}) was delivered on {eta}."),
        ("shipped", Some(eta)) => {
            format!("Order {id} ({items}) has shipped and should arrive by {eta}.")
        }
        ("processing", Some(eta)) => {
            format!("Order {id} ({items}) is being prepared and should arrive by {eta}.")
        }
        ("cancelled", _) => format!("Order {id} ({items}) was cancelled."),
        (status, _) => format!("Order {id} ({items}) is {status}."),
    };
    Ok(
        json!({"order_id": id, "status": status, "items": items, "total_usd": total,
              "placed_on": placed_on, "eta": eta, "summary": summary}),
    )
}

async fn cancel_order(id: i32, reason: &str, db: &mut PgConnection) -> Result<Value, ToolError> {
    let status = sqlx::query_scalar!(
        "SELECT status FROM demo_orders WHERE id = $1 FOR UPDATE",
        id
    )
    .fetch_optional(&mut *db)
    .await?;
    match status.ok_or_else(|| no_such_order(id))?.as_str() {
        "processing" => {}
        "cancelled" => {
            return Err(ToolError::Refused(format!(
                "Order {id} is already cancelled."
            )))
        }
        status => {
            return Err(ToolError::Refused(format!(
            "Order {id} is {status} and can no longer be cancelled; a return is possible instead."
        )))
        }
    }
    sqlx::query!(
        "UPDATE demo_orders SET status = 'cancelled', cancel_reason = $2 WHERE id = $1",
        id,
        reason,
    )
    .execute(&mut *db)
    .await?;
    Ok(json!({"order_id": id, "status": "cancelled",
              "summary": format!("Order {id} is now cancelled.")}))
}

async fn get_invoice(id: i32, db: &mut PgConnection) -> Result<Value, ToolError> {
    let row = sqlx::query!(
        r#"SELECT id, amount_usd::float8 AS "amount!", status, issued_on,
                  refunded_usd::float8 AS "refunded!"
             FROM demo_invoices WHERE order_id = $1"#,
        id,
    )
    .fetch_optional(&mut *db)
    .await?
    .ok_or_else(|| no_such_order(id))?;
    let (invoice, amount, status, issued_on, refunded) =
        (row.id, row.amount, row.status, row.issued_on, row.refunded);
    let summary = if refunded > 0.0 {
        format!("Invoice {invoice} for order {id}: ${amount:.2}, issued {issued_on}, ${refunded:.2} refunded ({status}).")
    } else {
        format!("Invoice {invoice} for order {id}: ${amount:.2}, issued {issued_on}, {status}.")
    };
    Ok(
        json!({"invoice_id": invoice, "order_id": id, "amount_usd": amount, "status": status,
              "issued_on": issued_on, "refunded_usd": refunded, "summary": summary}),
    )
}

async fn request_refund(
    id: i32,
    amount: Option<f64>,
    reason: &str,
    db: &mut PgConnection,
) -> Result<Value, ToolError> {
    let row = sqlx::query!(
        r#"SELECT amount_usd::float8 AS "invoiced!", refunded_usd::float8 AS "refunded!"
             FROM demo_invoices WHERE order_id = $1 FOR UPDATE"#,
        id,
    )
    .fetch_optional(&mut *db)
    .await?
    .ok_or_else(|| no_such_order(id))?;
    let (invoiced, refunded) = (row.invoiced, row.refunded);
    let left = ((invoiced - refunded) * 100.0).round() / 100.0;
    if left <= 0.0 {
        return Err(ToolError::Refused(format!(
            "Order {id} has already been refunded in full."
        )));
    }
    let amount = amount.unwrap_or(left);
    if amount > left + 0.001 {
        return Err(ToolError::Refused(format!(
            "At most ${left:.2} of order {id} can still be refunded."
        )));
    }
    sqlx::query!(
        "INSERT INTO demo_refunds (order_id, amount_usd, reason) VALUES ($1, $2::float8::numeric, $3)",
        id,
        amount,
        reason,
    )
    .execute(&mut *db)
    .await?;
    sqlx::query!(
        "UPDATE demo_invoices SET refunded_usd = refunded_usd + $2::float8::numeric,
                status = CASE WHEN refunded_usd + $2::float8::numeric >= amount_usd
                              THEN 'refunded' ELSE 'partially_refunded' END
          WHERE order_id = $1",
        id,
        amount,
    )
    .execute(&mut *db)
    .await?;
    Ok(json!({"order_id": id, "refunded_usd": amount,
              "summary": format!("A refund of ${amount:.2} for order {id} is on its way; it takes 3 to 5 business days.")}))
}

async fn search_faq(query: &str, db: &mut PgConnection) -> Result<Value, ToolError> {
    let entries = sqlx::query!("SELECT question, answer, keywords FROM demo_faq ORDER BY id")
        .fetch_all(&mut *db)
        .await?;
    let words: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| word.len() > 2)
        .map(str::to_lowercase)
        .collect();
    let best = entries
        .into_iter()
        .map(|entry| {
            let (question, answer) = (entry.question, entry.answer);
            let haystack = format!("{question} {}", entry.keywords).to_lowercase();
            let score = words
                .iter()
                .filter(|word| haystack.contains(word.as_str()))
                .count();
            (score, question, answer)
        })
        .filter(|(score, ..)| *score > 0)
        // The first entry among the best scores.
        .rev()
        .max_by_key(|(score, ..)| *score);
    Ok(match best {
        Some((_, question, answer)) => {
            json!({"found": true, "question": question, "answer": answer, "summary": answer})
        }
        None => json!({"found": false,
                       "summary": "I found nothing about that in our FAQ; a colleague can help by email at support@example.com."}),
    })
}
