//! `loadgen seed`: fills an empty database with conversations shaped like the worker's, for the
//! admin API benchmark (`loadgen admin-bench`).
//!
//! The database is connected and migrated with `shared::db`, so the schema is the one the edge
//! and worker use. Everything is generated inside PostgreSQL (`generate_series`, one transaction
//! per batch of conversations), spread over the last `--days` days:
//!
//! - 4 % `open` threads that never got a message;
//! - 51 % questions only (1–5 turns: an order's status, an invoice, an FAQ) → `resolved`;
//! - 15 % an approval (`Cancel order N`): approved, rejected, answered too late (`expired`),
//!   withdrawn by a new message (`superseded`) or still pending → `resolved` / `awaiting_approval`;
//! - 10 % a clarification first (`help`), then 1–4 questions → `resolved`;
//! - 8 % handed to a person (`escalate_to_human`) → `escalated`;
//! - 12 % a session that expired → `expired`;
//! - 0.1 % a message dead-lettered (half of them replayed) → `failed`.
//!
//! Each turn row carries its events array (classification, tool calls and results, interrupts,
//! decisions, clarifications, escalations, agent replies, each with `at`), its usage and timings,
//! and one `turn_agents` row per agent. It refuses a database that already has threads.

use std::time::Instant;

use anyhow::Context as _;
use sqlx::PgPool;

/// Conversations per transaction.
const BATCH: i64 = 10_000;

/// One batch: `$1`..=`$2` are the conversation numbers, `$3` the number of days to spread over.
/// Every statement runs in the batch's transaction; the temporary tables drop at its commit.
const BATCH_STATEMENTS: &[&str] = &[
    // Each conversation's plan: when it starts, what happens in it, the roles of its turns.
    r#"
CREATE TEMP TABLE seed_plan ON COMMIT DROP AS
WITH base AS (
    SELECT g,
           'seed-' || lpad(g::text, 7, '0') AS id,
           now() - interval '20 minutes' - random() * ($3::float8 * interval '1 day') AS created_at,
           floor(random() * 100)::int AS roll,
           floor(random() * 4)::int AS extra,
           floor(random() * 10)::int AS decision_roll,
           1001 + floor(random() * 9000)::int AS order_no
      FROM generate_series($1::bigint, $2::bigint) AS g
), kinds AS (
    SELECT *,
           CASE WHEN g % 1000 = 7 THEN 'failed'
                WHEN roll < 4 THEN 'open'
                WHEN roll < 55 THEN 'info'
                WHEN roll < 70 THEN 'approval'
                WHEN roll < 80 THEN 'clarify'
                WHEN roll < 88 THEN 'escalate'
                ELSE 'expire' END AS kind,
           CASE WHEN decision_roll < 5 THEN 'approved'
                WHEN decision_roll < 8 THEN 'rejected'
                WHEN decision_roll = 8 THEN 'expired'
                WHEN extra < 2 THEN 'pending'
                ELSE 'superseded' END AS decision
      FROM base
)
SELECT g, id, created_at, kind, decision, order_no,
       CASE kind
           WHEN 'open' THEN '{}'::text[]
           WHEN 'info' THEN array_fill('question'::text, ARRAY[1 + extra + (roll % 2)])
           WHEN 'approval' THEN array_fill('question'::text, ARRAY[extra % 2])
               || CASE decision WHEN 'pending' THEN ARRAY['cancel']
                                WHEN 'superseded' THEN ARRAY['cancel', 'question']
                                ELSE ARRAY['cancel', 'answer'] END
           WHEN 'clarify' THEN ARRAY['help'] || array_fill('question'::text, ARRAY[1 + extra])
           WHEN 'escalate' THEN array_fill('question'::text, ARRAY[extra % 3]) || ARRAY['escalate']
           WHEN 'expire' THEN array_fill('question'::text, ARRAY[1 + extra % 2]) || ARRAY['expired']
           ELSE array_fill('question'::text, ARRAY[extra % 2]) || ARRAY['dead']
       END AS roles,
       CASE kind WHEN 'open' THEN 'open'
                 WHEN 'approval' THEN CASE decision WHEN 'pending' THEN 'awaiting_approval'
                                                    ELSE 'resolved' END
                 WHEN 'info' THEN 'resolved'
                 WHEN 'clarify' THEN 'resolved'
                 WHEN 'escalate' THEN 'escalated'
                 WHEN 'expire' THEN 'expired'
                 ELSE 'failed' END AS status
  FROM kinds
"#,
    // Each turn's random draws.
    r#"
CREATE TEMP TABLE seed_draws ON COMMIT DROP AS
SELECT p.id AS thread_id, p.g, p.kind, p.decision, p.order_no, r.role, r.k::int AS k,
       p.created_at + (r.k - 1) * interval '90 seconds' + random() * interval '30 seconds'
           AS received_at,
       2 + random() * 40 AS queue_ms,
       300 + random() ^ 3 * 6000 AS work_ms,
       1001 + floor(random() * 9000)::int AS asked_order,
       floor(random() * 3)::int AS topic,
       1 + floor(random() * 6)::int AS faq,
       120 + floor(random() * 300)::bigint AS prompt,
       15 + floor(random() * 80)::bigint AS completion
  FROM seed_plan p, unnest(p.roles) WITH ORDINALITY AS r(role, k)
"#,
    // What each turn said and did.
    r#"
CREATE TEMP TABLE seed_turns ON COMMIT DROP AS
WITH shaped AS (
    SELECT d.*,
           d.received_at + d.queue_ms * interval '1 millisecond' AS started_at,
           d.received_at + (d.queue_ms + d.work_ms) * interval '1 millisecond' AS completed_at,
           md5(d.thread_id || ':' || CASE d.role WHEN 'answer' THEN d.k - 1 ELSE d.k END)::uuid
               AS turn_id,
           CASE WHEN d.role IN ('expired', 'dead') THEN 0 ELSE d.prompt END AS prompt_tokens,
           CASE WHEN d.role IN ('expired', 'dead') THEN 0 ELSE d.completion END AS completion_tokens,
           CASE d.role
               WHEN 'question' THEN (ARRAY['orders', 'billing', 'general'])[d.topic + 1]
               WHEN 'cancel' THEN 'orders'
               WHEN 'answer' THEN 'orders'
               WHEN 'escalate' THEN 'general'
           END AS agent,
           CASE d.role
               WHEN 'question' THEN CASE d.topic
                   WHEN 0 THEN 'Where is my order ' || d.asked_order || '?'
                   WHEN 1 THEN 'Send me the invoice of order ' || d.asked_order
                   ELSE (ARRAY['What is your return policy?', 'How long does shipping take?',
                               'When is support available?', 'How do I reset my password?',
                               'What does the warranty cover?',
                               'Which payment methods do you accept?'])[d.faq] END
               WHEN 'cancel' THEN 'Cancel order ' || d.order_no
               WHEN 'help' THEN 'help'
               WHEN 'escalate' THEN 'I would like to talk to a person about order ' || d.order_no
               WHEN 'expired' THEN 'Are you still there? About order ' || d.asked_order
               WHEN 'dead' THEN 'Where is my order ' || d.asked_order || ', again?'
           END AS content,
           CASE d.role
               WHEN 'question' THEN CASE d.topic
                   WHEN 0 THEN 'Order ' || d.asked_order || ' has shipped and should arrive on '
                               || to_char(d.received_at + interval '3 days', 'YYYY-MM-DD') || '.'
                   WHEN 1 THEN 'Invoice INV-' || d.asked_order || ' for order ' || d.asked_order
                               || ': ' || (20 + d.asked_order % 480) || '.00 USD, paid.'
                   ELSE (ARRAY['You can return any item within 30 days of delivery for a full refund.',
                               'Standard shipping takes 3 to 5 business days.',
                               'Our support team is available Monday to Friday, 9:00 to 18:00 CET.',
                               'Use "Forgot password" on the sign-in page.',
                               'Every product has a two-year warranty against manufacturing defects.',
                               'We accept credit and debit cards, PayPal and bank transfer.'])[d.faq]
                   END
               WHEN 'answer' THEN CASE d.decision
                   WHEN 'approved' THEN 'Order ' || d.order_no || ' is now cancelled.'
                   WHEN 'rejected' THEN 'All right, I left it as it is.'
                   ELSE 'That approval expired; nothing was changed. Ask again if you still want it.'
                   END
               WHEN 'help' THEN 'Can you tell me more? I can help with orders, invoices and refunds, or general questions.'
               WHEN 'escalate' THEN 'I have passed this conversation to a member of our team.'
               ELSE ''
           END AS reply
      FROM seed_draws d
)
SELECT s.*,
       s.prompt_tokens * 0.15e-6 + s.completion_tokens * 0.60e-6 AS cost_usd,
       s.g * 16 + s.k AS in_seq,
       CASE WHEN s.agent IS NULL THEN '{}'::text[] ELSE ARRAY[s.agent] END AS agents,
       CASE s.role
           WHEN 'expired' THEN 'session_expired'
           WHEN 'dead' THEN 'dead_lettered'
           WHEN 'help' THEN 'clarification'
           WHEN 'cancel' THEN 'interrupted'
           ELSE 'completed' END AS outcome,
       md5('interrupt:' || s.thread_id)::uuid AS interrupt_id
  FROM shaped s
"#,
    // The threads, with the totals the worker keeps.
    r#"
INSERT INTO threads (id, status, created_at, last_active_at, last_in_seq, last_seq, title, agents,
                     messages, prompt_tokens, completion_tokens, cost_usd, escalated_at,
                     pending_interrupt)
SELECT p.id, p.status, p.created_at, coalesce(a.last_active_at, p.created_at),
       coalesce(a.last_in_seq, 0), coalesce(a.last_seq, 0), a.title,
       coalesce(a.agents, '{}'), coalesce(a.messages, 0), coalesce(a.prompt_tokens, 0),
       coalesce(a.completion_tokens, 0), coalesce(a.cost_usd, 0),
       CASE WHEN p.kind = 'escalate' THEN a.last_active_at END,
       CASE WHEN p.status = 'awaiting_approval' THEN md5('interrupt:' || p.id)::uuid END
  FROM seed_plan p
  LEFT JOIN (
      SELECT thread_id, max(completed_at) AS last_active_at, max(in_seq) AS last_in_seq,
             max(k) * 20 + 10 AS last_seq,
             left((array_agg(content ORDER BY k) FILTER (WHERE role <> 'answer'))[1], 200) AS title,
             array_agg(DISTINCT agent) FILTER (WHERE agent IS NOT NULL) AS agents,
             count(*) FILTER (WHERE role <> 'answer')::int AS messages,
             sum(prompt_tokens)::bigint AS prompt_tokens,
             sum(completion_tokens)::bigint AS completion_tokens, sum(cost_usd) AS cost_usd
        FROM seed_turns GROUP BY thread_id
  ) a ON a.thread_id = p.id
"#,
    // The turns and their timeline events.
    r#"
INSERT INTO turns (thread_id, in_seq, turn_id, message_id, kind, content, reply, first_seq,
                   last_seq, prompt_tokens, completion_tokens, cost_usd, received_at, started_at,
                   completed_at, outcome, agents, events)
SELECT s.thread_id, s.in_seq, s.turn_id,
       CASE s.role WHEN 'answer' THEN 'answer-' ELSE 'message-' END || s.k,
       CASE s.role WHEN 'answer' THEN 'interrupt_response' ELSE 'message' END,
       CASE s.role WHEN 'answer' THEN NULL ELSE s.content END,
       s.reply, s.k * 20, s.k * 20 + 10, s.prompt_tokens, s.completion_tokens, s.cost_usd,
       s.received_at, s.started_at, s.completed_at, s.outcome, s.agents,
       CASE s.role
           WHEN 'question' THEN jsonb_build_array(
               jsonb_build_object('type', 'classification', 'at', s.started_at,
                   'result', jsonb_build_object(
                       'intents', jsonb_build_array(jsonb_build_object('agent', s.agent, 'confidence', 0.9)),
                       'ambiguous', false, 'clarification', NULL)),
               jsonb_build_object('type', 'tool_call', 'at', s.started_at + interval '40 ms',
                   'agent', s.agent,
                   'tool', (ARRAY['get_order_status', 'get_invoice', 'search_faq'])[s.topic + 1],
                   'args', CASE s.topic WHEN 2 THEN jsonb_build_object('query', s.content)
                                        ELSE jsonb_build_object('order_id', s.asked_order) END),
               jsonb_build_object('type', 'tool_result', 'at', s.started_at + interval '45 ms',
                   'agent', s.agent,
                   'tool', (ARRAY['get_order_status', 'get_invoice', 'search_faq'])[s.topic + 1],
                   'ok', true, 'result', jsonb_build_object('summary', s.reply)),
               jsonb_build_object('type', 'agent_reply', 'at', s.completed_at, 'agent', s.agent,
                   'content', s.reply, 'prompt_tokens', s.prompt_tokens,
                   'completion_tokens', s.completion_tokens, 'cost_usd', s.cost_usd,
                   'tool_calls', 1, 'duration_ms', round(s.work_ms * 0.9)))
           WHEN 'cancel' THEN jsonb_build_array(
               jsonb_build_object('type', 'classification', 'at', s.started_at,
                   'result', jsonb_build_object(
                       'intents', jsonb_build_array(jsonb_build_object('agent', 'orders', 'confidence', 0.9)),
                       'ambiguous', false, 'clarification', NULL)),
               jsonb_build_object('type', 'interrupt', 'at', s.completed_at,
                   'interrupt_id', s.interrupt_id, 'agent', 'orders', 'action', 'cancel_order',
                   'params', jsonb_build_object('order_id', s.order_no),
                   'expires_at', s.completed_at + interval '10 minutes'),
               jsonb_build_object('type', 'agent_reply', 'at', s.completed_at, 'agent', 'orders',
                   'content', '', 'prompt_tokens', s.prompt_tokens,
                   'completion_tokens', s.completion_tokens, 'cost_usd', s.cost_usd,
                   'tool_calls', 1, 'duration_ms', round(s.work_ms * 0.9)))
           WHEN 'answer' THEN
               jsonb_build_array(jsonb_build_object('type', 'decision', 'at', s.started_at,
                   'interrupt_id', s.interrupt_id, 'decision', s.decision))
               || CASE s.decision WHEN 'approved' THEN jsonb_build_array(
                      jsonb_build_object('type', 'tool_call', 'at', s.started_at + interval '5 ms',
                          'agent', 'orders', 'tool', 'cancel_order',
                          'args', jsonb_build_object('order_id', s.order_no)),
                      jsonb_build_object('type', 'tool_result', 'at', s.started_at + interval '30 ms',
                          'agent', 'orders', 'tool', 'cancel_order', 'ok', true,
                          'result', jsonb_build_object('summary', s.reply)))
                  ELSE '[]'::jsonb END
               || jsonb_build_array(jsonb_build_object('type', 'agent_reply', 'at', s.completed_at,
                   'agent', 'orders', 'content', s.reply, 'prompt_tokens', s.prompt_tokens,
                   'completion_tokens', s.completion_tokens, 'cost_usd', s.cost_usd,
                   'tool_calls', CASE s.decision WHEN 'approved' THEN 1 ELSE 0 END,
                   'duration_ms', round(s.work_ms * 0.9)))
           WHEN 'help' THEN jsonb_build_array(
               jsonb_build_object('type', 'classification', 'at', s.started_at,
                   'result', jsonb_build_object('intents', '[]'::jsonb, 'ambiguous', true,
                       'clarification', s.reply)),
               jsonb_build_object('type', 'clarification', 'at', s.completed_at, 'message', s.reply))
           WHEN 'escalate' THEN jsonb_build_array(
               jsonb_build_object('type', 'classification', 'at', s.started_at,
                   'result', jsonb_build_object(
                       'intents', jsonb_build_array(jsonb_build_object('agent', 'general', 'confidence', 0.8)),
                       'ambiguous', false, 'clarification', NULL)),
               jsonb_build_object('type', 'tool_call', 'at', s.started_at + interval '40 ms',
                   'agent', 'general', 'tool', 'escalate_to_human',
                   'args', jsonb_build_object('reason', s.content)),
               jsonb_build_object('type', 'tool_result', 'at', s.started_at + interval '45 ms',
                   'agent', 'general', 'tool', 'escalate_to_human', 'ok', true,
                   'result', jsonb_build_object('summary', s.reply, 'reason', s.content)),
               jsonb_build_object('type', 'escalation', 'at', s.started_at + interval '45 ms',
                   'agent', 'general', 'reason', s.content),
               jsonb_build_object('type', 'agent_reply', 'at', s.completed_at, 'agent', 'general',
                   'content', s.reply, 'prompt_tokens', s.prompt_tokens,
                   'completion_tokens', s.completion_tokens, 'cost_usd', s.cost_usd,
                   'tool_calls', 1, 'duration_ms', round(s.work_ms * 0.9)))
           WHEN 'expired' THEN jsonb_build_array(
               jsonb_build_object('type', 'error', 'at', s.started_at, 'code', 'session_expired',
                   'message', 'This conversation has expired; start a new one.'))
           ELSE '[]'::jsonb
       END
  FROM seed_turns s
"#,
    // Each agent's share of its turns.
    r#"
INSERT INTO turn_agents (thread_id, in_seq, position, agent, prompt_tokens, completion_tokens,
                         cost_usd, tool_calls, duration_ms, completed_at)
SELECT thread_id, in_seq, 1, agent, prompt_tokens, completion_tokens, cost_usd,
       CASE WHEN role = 'answer' AND decision <> 'approved' THEN 0 ELSE 1 END,
       round(work_ms * 0.9)::bigint, completed_at
  FROM seed_turns WHERE agent IS NOT NULL
"#,
    // The approvals.
    r#"
INSERT INTO interrupts (id, thread_id, turn_id, in_seq, agent, action, params, checkpoint,
                        created_at, expires_at, status, decided_at, decided_in_seq)
SELECT s.interrupt_id, s.thread_id, s.turn_id, s.in_seq, 'orders', 'cancel_order',
       jsonb_build_object('order_id', s.order_no), '{}'::jsonb, s.completed_at,
       s.completed_at + interval '10 minutes', s.decision,
       CASE WHEN s.decision <> 'pending' THEN next.received_at END,
       CASE WHEN s.decision <> 'pending' THEN next.in_seq END
  FROM seed_turns s
  LEFT JOIN seed_turns next ON next.thread_id = s.thread_id AND next.k = s.k + 1
 WHERE s.role = 'cancel'
"#,
    // The approved cancellations' ledger rows.
    r#"
INSERT INTO tool_executions (interrupt_id, thread_id, tool, args, ok, result, executed_at)
SELECT interrupt_id, thread_id, 'cancel_order', jsonb_build_object('order_id', order_no), true,
       jsonb_build_object('summary', reply), started_at + interval '30 ms'
  FROM seed_turns WHERE role = 'answer' AND decision = 'approved'
"#,
    // The dead letters; every other one was replayed.
    r#"
INSERT INTO dead_letters (id, thread_id, in_seq, message_id, turn_id, attempts, reason, history,
                          created_at, replayed_at)
SELECT md5('dead-letter:' || thread_id)::uuid, thread_id, in_seq, 'message-' || k, turn_id, 3,
       'model unavailable after 3 attempts',
       jsonb_build_array(jsonb_build_object('at', received_at, 'error', 'model unavailable')),
       completed_at, CASE WHEN (g / 1000) % 2 = 0 THEN completed_at + interval '1 hour' END
  FROM seed_turns WHERE role = 'dead'
"#,
];

/// Seeds `conversations` conversations over `days` days into the database of `database`.
pub(crate) async fn run(
    database: &shared::config::DatabaseSettings,
    conversations: i64,
    days: f64,
) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(conversations > 0, "--conversations must be positive");
    anyhow::ensure!(days > 0.0 && days <= 365.0, "--days must be in (0, 365]");
    let pool = shared::db::connect_and_migrate(database).await?;
    let populated = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM threads) AS "populated!""#)
        .fetch_one(&pool)
        .await
        .context("Failed to look at the threads table")?;
    anyhow::ensure!(
        !populated,
        "the database already has threads: seed an empty database (drop it, or name another one)"
    );
    let started = Instant::now();
    let mut first = 1;
    while first <= conversations {
        let last = (first + BATCH - 1).min(conversations);
        seed_batch(&pool, first, last, days)
            .await
            .with_context(|| format!("Failed to seed conversations {first}..={last}"))?;
        eprintln!(
            "seeded {last} / {conversations} conversations ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
        first = last + 1;
    }
    // Fresh statistics for the planner and visibility maps for index-only scans, as autovacuum
    // would eventually give a real database.
    for table in [
        "threads",
        "turns",
        "turn_agents",
        "interrupts",
        "tool_executions",
        "dead_letters",
    ] {
        // Runtime SQL: the table's name is part of the statement.
        sqlx::query(&format!("VACUUM (ANALYZE) {table}"))
            .execute(&pool)
            .await
            .with_context(|| format!("Failed to vacuum {table}"))?;
    }
    let summary = summarize(&pool).await?;
    pool.close().await;
    Ok(serde_json::json!({
        "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "days": days,
        "rows": summary,
    }))
}

async fn seed_batch(pool: &PgPool, first: i64, last: i64, days: f64) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for statement in BATCH_STATEMENTS {
        // Only the plan reads the parameters; the other statements read the temporary tables.
        // Runtime SQL: those tables exist only inside this transaction, so no statement that
        // reads them can be described at compile time.
        let query = if statement.contains("$1") {
            sqlx::query(statement).bind(first).bind(last).bind(days)
        } else {
            sqlx::query(statement)
        };
        query.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn summarize(pool: &PgPool) -> anyhow::Result<serde_json::Value> {
    let rows = sqlx::query!(
        r#"SELECT (SELECT count(*) FROM threads) AS "threads!",
                  (SELECT count(*) FROM turns) AS "turns!",
                  (SELECT coalesce(sum(jsonb_array_length(events)), 0)::bigint FROM turns)
                      AS "events!",
                  (SELECT count(*) FROM turn_agents) AS "turn_agents!",
                  (SELECT count(*) FROM interrupts) AS "interrupts!",
                  (SELECT count(*) FROM dead_letters) AS "dead_letters!""#,
    )
    .fetch_one(pool)
    .await
    .context("Failed to count the seeded rows")?;
    Ok(serde_json::json!({
        "threads": rows.threads,
        "turns": rows.turns,
        "events": rows.events,
        "turn_agents": rows.turn_agents,
        "interrupts": rows.interrupts,
        "dead_letters": rows.dead_letters,
    }))
}
