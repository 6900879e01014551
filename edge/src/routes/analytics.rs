//! `GET /api/admin/analytics?range=24h|7d|30d` (SPEC §4): the dashboard's figures, computed in
//! PostgreSQL over the window `[now − range, now]`.
//!
//! Definitions (each count is over rows whose time falls in the window):
//! - `conversations`: threads created in the window.
//! - `messages`: user messages (turn rows of kind `message`) received in the window.
//! - `resolution_rate` = `resolved` / `conversations_with_messages`, and `escalation_rate` =
//!   `escalated` / `conversations_with_messages`, where `conversations_with_messages` are the
//!   conversations created in the window with at least one user message processed,
//!   `resolved` those of them whose status is now `resolved` (the last turn was answered, nothing
//!   waits for approval, not handed to a person, not failed or expired), and `escalated` those of
//!   them handed to a person at least once (`escalated_at` set). Both are fractions in [0, 1];
//!   0 when there is no such conversation.
//! - `approvals`: approvals (interrupts) raised in the window, by their status now: `approved`,
//!   `rejected`, `expired` (answered too late, or still pending past `expires_at`), `superseded`
//!   (withdrawn by a new message) and `pending` (still answerable). Approvals raised by an
//!   attempt that failed (`abandoned`) were never shown and are not counted.
//! - `tokens` and `cost_usd`: the usage of every model call of the turn rows completed in the
//!   window (classification included), as summed on the clients' `message_complete`.
//! - `latency_ms`: percentiles (nearest rank: the time of an actual turn row, in milliseconds)
//!   of `completed_at − received_at` over the turn rows completed in the window, dead-lettered
//!   ones excepted; an answer to an approval is its own row, timed from the answer. Handoff
//!   messages (a `request_human`, an operator's join, leave, resolve or message) are turn rows
//!   too, and counted.
//! - `agents`: per agent, from `turn_agents` rows completed in the window: `turns` (turns it took
//!   part in: a turn paused for approval and continued by the answer counts once), the tokens,
//!   cost and tool calls of its model calls, and the average and 95th percentile (nearest rank)
//!   of its running time per turn row.
//! - `series`: the window cut into equal buckets (24 of an hour for `24h`, 7 or 30 of a day),
//!   oldest first, every bucket present: conversations created, messages received and cost of the
//!   turns completed in each. The totals above are the sums of the buckets.
//!
//! Humans in the conversation (SPEC §7; docs/handoff.md):
//! - `ai_resolution_rate` = conversations now `resolved` that no operator ever joined, and
//!   `handoff_rate` = conversations where a human was asked for or joined, each over the
//!   conversations created in the window that had a customer message or a handoff.
//! - `time_to_human_ms` {`p50`, `p95`, `handoffs`}: percentiles (nearest rank) of the time from
//!   `waiting` to `human` (the first join after the first wait) of the conversations created in
//!   the window.
//! - `csat` {`ai`, `human`, `ai_responses`, `human_responses`}: the average CSAT score (1–5) given
//!   in the window to conversations no operator joined / one did.
//! - `thumbs_up_rate`: thumbs up over all thumbs given in the window on replies;
//!   `thumbs_up_rate_by_agent`: the same per agent of the rated replies.

use std::time::Duration;

use anyhow::Context as _;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, SubsecRound as _, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::error::ApiError;
use crate::state::AppState;

/// The dashboard's windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Range {
    Day,
    Week,
    Month,
}

impl Range {
    fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        match raw {
            Some("24h") => Ok(Self::Day),
            Some("7d") => Ok(Self::Week),
            Some("30d") => Ok(Self::Month),
            _ => Err(ApiError::BadRequest(
                "range must be one of 24h, 7d, 30d".into(),
            )),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Day => "24h",
            Self::Week => "7d",
            Self::Month => "30d",
        }
    }

    /// The bucket width and how many buckets fill the window.
    fn buckets(self) -> (Duration, i32) {
        const HOUR: Duration = Duration::from_secs(3600);
        const DAY: Duration = Duration::from_secs(86_400);
        match self {
            Self::Day => (HOUR, 24),
            Self::Week => (DAY, 7),
            Self::Month => (DAY, 30),
        }
    }

    fn bucket_name(self) -> &'static str {
        match self {
            Self::Day => "hour",
            Self::Week | Self::Month => "day",
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct AnalyticsQuery {
    range: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct Analytics {
    range: &'static str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// `hour` or `day`: the width of each `series` bucket.
    bucket: &'static str,
    conversations: i64,
    messages: i64,
    conversations_with_messages: i64,
    resolved: i64,
    escalated: i64,
    resolution_rate: f64,
    escalation_rate: f64,
    approvals: Approvals,
    /// Turns stopped by a `cancel` (or a newer message with `DOUBLE_TEXT=interrupt`), SPEC §8.
    cancelled_turns: i64,
    tokens: Tokens,
    cost_usd: f64,
    latency_ms: Latency,
    agents: Vec<AgentFigures>,
    series: Vec<Bucket>,
    ai_resolution_rate: f64,
    handoff_rate: f64,
    time_to_human_ms: TimeToHuman,
    csat: Csat,
    thumbs_up_rate: f64,
    thumbs_up_rate_by_agent: Vec<AgentThumbs>,
}

#[derive(Debug, Default, Serialize)]
struct TimeToHuman {
    handoffs: i64,
    p50: f64,
    p95: f64,
}

#[derive(Debug, Default, Serialize)]
struct Csat {
    ai: f64,
    human: f64,
    ai_responses: i64,
    human_responses: i64,
}

#[derive(Debug, Serialize)]
struct AgentThumbs {
    agent: String,
    thumbs_up_rate: f64,
    ratings: i64,
}

/// The figures of SPEC §7 (see the module's doc).
#[derive(Debug, Default)]
struct HumanFigures {
    ai_resolution_rate: f64,
    handoff_rate: f64,
    time_to_human_ms: TimeToHuman,
    csat: Csat,
    thumbs_up_rate: f64,
    by_agent: Vec<AgentThumbs>,
}

fn ratio(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

async fn human_figures(db: &PgPool, from: DateTime<Utc>) -> Result<HumanFigures, sqlx::Error> {
    let mut tx = analytics_transaction(db).await?;
    let threads = sqlx::query!(
        r#"SELECT count(*) FILTER (WHERE messages > 0 OR first_waiting_at IS NOT NULL
                                    OR first_human_at IS NOT NULL) AS "engaged!",
                  count(*) FILTER (WHERE status = 'resolved' AND first_human_at IS NULL
                                     AND (messages > 0 OR first_waiting_at IS NOT NULL))
                      AS "ai_resolved!",
                  count(*) FILTER (WHERE first_waiting_at IS NOT NULL OR first_human_at IS NOT NULL)
                      AS "handed!",
                  count(time_to_human_ms) AS "handoffs!",
                  percentile_disc(0.5) WITHIN GROUP (ORDER BY time_to_human_ms) AS "p50?",
                  percentile_disc(0.95) WITHIN GROUP (ORDER BY time_to_human_ms) AS "p95?"
             FROM threads WHERE created_at >= $1"#,
        from,
    )
    .fetch_one(&mut *tx)
    .await?;
    let csat = sqlx::query!(
        r#"SELECT coalesce(sum(f.score) FILTER (WHERE t.first_human_at IS NULL), 0)::bigint
                      AS "ai_sum!",
                  count(*) FILTER (WHERE t.first_human_at IS NULL) AS "ai_count!",
                  coalesce(sum(f.score) FILTER (WHERE t.first_human_at IS NOT NULL), 0)::bigint
                      AS "human_sum!",
                  count(*) FILTER (WHERE t.first_human_at IS NOT NULL) AS "human_count!"
             FROM feedback f JOIN threads t ON t.id = f.thread_id
            WHERE f.kind = 'csat' AND f.created_at >= $1"#,
        from,
    )
    .fetch_one(&mut *tx)
    .await?;
    let thumbs = sqlx::query!(
        r#"SELECT count(*) FILTER (WHERE rating = 'up') AS "up!", count(*) AS "rated!"
             FROM feedback WHERE kind = 'turn' AND created_at >= $1"#,
        from,
    )
    .fetch_one(&mut *tx)
    .await?;
    let agents = sqlx::query!(
        r#"SELECT a AS "agent!", count(*) FILTER (WHERE rating = 'up') AS "up!",
                  count(*) AS "ratings!"
             FROM feedback, unnest(agents) AS a
            WHERE kind = 'turn' AND created_at >= $1
            GROUP BY a ORDER BY a"#,
        from,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(HumanFigures {
        ai_resolution_rate: ratio(threads.ai_resolved, threads.engaged),
        handoff_rate: ratio(threads.handed, threads.engaged),
        time_to_human_ms: TimeToHuman {
            handoffs: threads.handoffs,
            p50: threads.p50.unwrap_or_default() as f64,
            p95: threads.p95.unwrap_or_default() as f64,
        },
        csat: Csat {
            ai: ratio(csat.ai_sum, csat.ai_count),
            human: ratio(csat.human_sum, csat.human_count),
            ai_responses: csat.ai_count,
            human_responses: csat.human_count,
        },
        thumbs_up_rate: ratio(thumbs.up, thumbs.rated),
        by_agent: agents
            .into_iter()
            .map(|row| AgentThumbs {
                agent: row.agent,
                thumbs_up_rate: ratio(row.up, row.ratings),
                ratings: row.ratings,
            })
            .collect(),
    })
}

#[derive(Debug, Serialize)]
struct Approvals {
    approved: i64,
    rejected: i64,
    expired: i64,
    superseded: i64,
    /// Withdrawn by a `cancel`.
    cancelled: i64,
    pending: i64,
}

#[derive(Debug, Serialize)]
struct Tokens {
    prompt: i64,
    completion: i64,
    total: i64,
}

#[derive(Debug, Serialize)]
struct Latency {
    /// Turn rows timed.
    turns: i64,
    p50: f64,
    p95: f64,
    p99: f64,
}

#[derive(Debug, Serialize)]
struct AgentFigures {
    agent: String,
    turns: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    cost_usd: f64,
    tool_calls: i64,
    avg_duration_ms: f64,
    p95_duration_ms: f64,
}

/// One bucket of the series: `[start, end)`.
#[derive(Debug, Serialize)]
struct Bucket {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    conversations: i64,
    messages: i64,
    cost_usd: f64,
}

/// `GET /api/admin/analytics?range=24h|7d|30d`; the figures are defined in this module's doc.
pub(super) async fn analytics(
    State(state): State<AppState>,
    query: Result<Query<AnalyticsQuery>, QueryRejection>,
) -> Result<Json<Analytics>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let range = Range::parse(query.range.as_deref())?;
    // PostgreSQL keeps microseconds: so do the window's bounds.
    let now = Utc::now().trunc_subsecs(6);
    let figures = compute(&state.db, range, now)
        .await
        .context("Failed to compute the analytics")
        .map_err(ApiError::Unavailable)?;
    Ok(Json(figures))
}

/// The window's figures. The queries run at once, each on its own connection, so the machine's
/// cores share the work; they share the window's bounds, not a snapshot.
async fn compute(db: &PgPool, range: Range, to: DateTime<Utc>) -> Result<Analytics, sqlx::Error> {
    let (step, count) = range.buckets();
    let step = chrono::Duration::from_std(step).unwrap_or(chrono::Duration::hours(1));
    let from = to - step * count;
    let starts: Vec<DateTime<Utc>> = (0..count).map(|i| from + step * i).collect();
    // Percentiles are read by walking an index ordered by the value to the rank, which needs
    // the count first: the usage and the agents' sums give it.
    let usage_then_latency = async {
        let usage = usage_sums(db, &starts).await?;
        let timed = usage.iter().map(|row| row.timed).sum();
        let latency = latency(db, from, timed).await?;
        Ok::<_, sqlx::Error>((usage, latency))
    };
    let (conversations, messages, (usage, latency_ms), approvals, agents) = tokio::try_join!(
        conversation_counts(db, &starts),
        message_counts(db, &starts),
        usage_then_latency,
        approvals(db, from, to),
        agents(db, from),
    )?;
    let human = human_figures(db, from).await?;
    let series: Vec<Bucket> = starts
        .iter()
        .enumerate()
        .map(|(i, start)| Bucket {
            start: *start,
            end: *start + step,
            conversations: conversations.get(i).map_or(0, |row| row.conversations),
            messages: messages.get(i).map_or(0, |row| row.messages),
            cost_usd: usage.get(i).map_or(0.0, |row| row.cost_usd),
        })
        .collect();
    let total = |field: fn(&ConversationCounts) -> i64| conversations.iter().map(field).sum();
    let conversations_with_messages = total(|row| row.with_messages);
    let resolved = total(|row| row.resolved);
    let escalated = total(|row| row.escalated);
    let rate = |part: i64| {
        if conversations_with_messages == 0 {
            0.0
        } else {
            part as f64 / conversations_with_messages as f64
        }
    };
    let prompt: i64 = usage.iter().map(|row| row.prompt_tokens).sum();
    let completion: i64 = usage.iter().map(|row| row.completion_tokens).sum();
    Ok(Analytics {
        range: range.as_str(),
        from,
        to,
        bucket: range.bucket_name(),
        conversations: total(|row| row.conversations),
        messages: messages.iter().map(|row| row.messages).sum(),
        conversations_with_messages,
        resolved,
        escalated,
        resolution_rate: rate(resolved),
        escalation_rate: rate(escalated),
        approvals,
        cancelled_turns: usage.iter().map(|row| row.cancelled).sum(),
        tokens: Tokens {
            prompt,
            completion,
            total: prompt + completion,
        },
        cost_usd: usage.iter().map(|row| row.cost_usd).sum(),
        latency_ms,
        agents,
        series,
        ai_resolution_rate: human.ai_resolution_rate,
        handoff_rate: human.handoff_rate,
        time_to_human_ms: human.time_to_human_ms,
        csat: human.csat,
        thumbs_up_rate: human.thumbs_up_rate,
        thumbs_up_rate_by_agent: human.by_agent,
    })
}

/// A short transaction for one analytics query: without JIT compilation (it costs more than
/// these scans), with room to sort in memory, costed for an SSD (so the covering indexes are read
/// index-only rather than the tables), and without parallel workers: the queries already run side
/// by side, and more processes than cores only add overhead.
async fn analytics_transaction(
    db: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query!("SET LOCAL jit = off")
        .execute(&mut *tx)
        .await?;
    sqlx::query!("SET LOCAL work_mem = '64MB'")
        .execute(&mut *tx)
        .await?;
    sqlx::query!("SET LOCAL random_page_cost = 1.1")
        .execute(&mut *tx)
        .await?;
    sqlx::query!("SET LOCAL max_parallel_workers_per_gather = 0")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

// The three queries per bucket below open with the same `buckets` (written out in each: the
// macros take a literal): the buckets of `$1` (their starts, oldest first), numbered from 1. Each
// one's range is `[start, next start)`, and the last one's is open-ended, so a row stamped after
// `to` (committed meanwhile) counts in it. Each bucket is then aggregated over its own index
// range, which costs less than grouping every row by its bucket.

/// Conversations created per bucket, with the counts behind the rates.
#[derive(Debug)]
struct ConversationCounts {
    conversations: i64,
    with_messages: i64,
    resolved: i64,
    escalated: i64,
}

async fn conversation_counts(
    db: &PgPool,
    starts: &[DateTime<Utc>],
) -> Result<Vec<ConversationCounts>, sqlx::Error> {
    let mut tx = analytics_transaction(db).await?;
    let rows = sqlx::query_as!(
        ConversationCounts,
        r#"WITH buckets AS (
               SELECT i, start, coalesce(($1::timestamptz[])[i + 1], 'infinity') AS finish
                 FROM unnest($1::timestamptz[]) WITH ORDINALITY AS b(start, i)
           )
           SELECT c.* FROM buckets b, LATERAL (
               SELECT count(*) AS "conversations!",
                      count(*) FILTER (WHERE messages > 0) AS "with_messages!",
                      count(*) FILTER (WHERE messages > 0 AND status = 'resolved') AS "resolved!",
                      count(*) FILTER (WHERE messages > 0 AND escalated_at IS NOT NULL)
                          AS "escalated!"
                 FROM threads WHERE created_at >= b.start AND created_at < b.finish) c
            ORDER BY b.i"#,
        starts,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// User messages received per bucket.
#[derive(Debug)]
struct MessageCounts {
    messages: i64,
}

async fn message_counts(
    db: &PgPool,
    starts: &[DateTime<Utc>],
) -> Result<Vec<MessageCounts>, sqlx::Error> {
    let mut tx = analytics_transaction(db).await?;
    let rows = sqlx::query_as!(
        MessageCounts,
        r#"WITH buckets AS (
               SELECT i, start, coalesce(($1::timestamptz[])[i + 1], 'infinity') AS finish
                 FROM unnest($1::timestamptz[]) WITH ORDINALITY AS b(start, i)
           )
           SELECT m.* FROM buckets b, LATERAL (
               SELECT count(*) AS "messages!" FROM turns
                WHERE kind = 'message' AND received_at >= b.start AND received_at < b.finish) m
            ORDER BY b.i"#,
        starts,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// Usage of the turn rows completed per bucket, and how many of them are timed (not
/// dead-lettered).
#[derive(Debug)]
struct UsageSums {
    timed: i64,
    cancelled: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    cost_usd: f64,
}

async fn usage_sums(db: &PgPool, starts: &[DateTime<Utc>]) -> Result<Vec<UsageSums>, sqlx::Error> {
    let mut tx = analytics_transaction(db).await?;
    let rows = sqlx::query_as!(
        UsageSums,
        r#"WITH buckets AS (
               SELECT i, start, coalesce(($1::timestamptz[])[i + 1], 'infinity') AS finish
                 FROM unnest($1::timestamptz[]) WITH ORDINALITY AS b(start, i)
           )
           SELECT u.* FROM buckets b, LATERAL (
               SELECT count(*) FILTER (WHERE outcome <> 'dead_lettered') AS "timed!",
                      count(*) FILTER (WHERE outcome = 'cancelled') AS "cancelled!",
                      coalesce(sum(prompt_tokens), 0)::bigint AS "prompt_tokens!",
                      coalesce(sum(completion_tokens), 0)::bigint AS "completion_tokens!",
                      coalesce(sum(cost_usd), 0) AS "cost_usd!"
                 FROM turns WHERE completed_at >= b.start AND completed_at < b.finish) u
            ORDER BY b.i"#,
        starts,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// Where the nearest-rank `quantile` of `count` ordered values is: how many to skip from the
/// smaller end (`true`) or from the larger end (`false`), whichever is fewer.
fn rank_walk(quantile: f64, count: i64) -> (bool, i64) {
    // The 1-based rank: the smallest that has at least `quantile` of the values at or below it.
    // (Less a hair: 0.95 × 20 must be 19, not the 19.000000000000004 of floating point.)
    let rank = ((quantile * count as f64 - 1e-9).ceil() as i64).clamp(1, count.max(1));
    let from_below = rank - 1;
    let from_above = count - rank;
    if from_below <= from_above {
        (true, from_below)
    } else {
        (false, from_above.max(0))
    }
}

/// The latency percentiles of the `timed` turn rows completed since `from`. Each is one walk of
/// `turns_latency_order_idx` to its rank from the nearer end (or, for a short window, a sort of
/// its rows: the planner picks), instead of sorting every row of a long window.
async fn latency(db: &PgPool, from: DateTime<Utc>, timed: i64) -> Result<Latency, sqlx::Error> {
    if timed == 0 {
        return Ok(Latency {
            turns: 0,
            p50: 0.0,
            p95: 0.0,
            p99: 0.0,
        });
    }
    let pick = |quantile: f64, param: usize| {
        let (ascending, _) = rank_walk(quantile, timed);
        let direction = if ascending { "ASC" } else { "DESC" };
        format!(
            "(SELECT date_part('epoch', completed_at - received_at) * 1000 FROM turns
               WHERE outcome <> 'dead_lettered' AND completed_at >= $1
               ORDER BY completed_at - received_at {direction} OFFSET ${param} LIMIT 1)"
        )
    };
    let sql = format!(
        "SELECT coalesce({}, 0) AS p50, coalesce({}, 0) AS p95, coalesce({}, 0) AS p99",
        pick(0.5, 2),
        pick(0.95, 3),
        pick(0.99, 4)
    );
    let mut tx = analytics_transaction(db).await?;
    // Runtime SQL: each percentile walks its index in the direction its rank decides.
    let (p50, p95, p99): (f64, f64, f64) = sqlx::query_as(&sql)
        .bind(from)
        .bind(rank_walk(0.5, timed).1)
        .bind(rank_walk(0.95, timed).1)
        .bind(rank_walk(0.99, timed).1)
        // Planned with the offsets: they decide between walking the index and sorting.
        .persistent(false)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    let round = |ms: f64| (ms * 1000.0).round() / 1000.0;
    Ok(Latency {
        turns: timed,
        p50: round(p50),
        p95: round(p95),
        p99: round(p99),
    })
}

async fn approvals(
    db: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Approvals, sqlx::Error> {
    sqlx::query_as!(
        Approvals,
        r#"SELECT count(*) FILTER (WHERE status = 'approved') AS "approved!",
                  count(*) FILTER (WHERE status = 'rejected') AS "rejected!",
                  count(*) FILTER (WHERE status = 'expired'
                                      OR (status = 'pending' AND expires_at <= $2)) AS "expired!",
                  count(*) FILTER (WHERE status = 'superseded') AS "superseded!",
                  count(*) FILTER (WHERE status = 'cancelled') AS "cancelled!",
                  count(*) FILTER (WHERE status = 'pending' AND expires_at > $2) AS "pending!"
             FROM interrupts WHERE created_at >= $1"#,
        from,
        to,
    )
    .fetch_one(db)
    .await
}

/// One agent's sums, before its percentile is read.
#[derive(Debug)]
struct AgentSums {
    agent: String,
    rows: i64,
    turns: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    cost_usd: f64,
    tool_calls: i64,
    avg_duration_ms: f64,
}

/// Per agent. An answer to an approval continues the turn it paused, and the agent that raised
/// it runs again in the answer's row (approved: the tool runs and it goes on; rejected: it is
/// told), so those rows are taken off its turn count. The 95th percentile of the running time
/// is then read, per agent, by walking `turn_agents_duration_idx` to its rank.
async fn agents(db: &PgPool, from: DateTime<Utc>) -> Result<Vec<AgentFigures>, sqlx::Error> {
    let mut tx = analytics_transaction(db).await?;
    let sums = sqlx::query_as!(
        AgentSums,
        r#"WITH shares AS (
               SELECT agent, count(*) AS rows,
                      sum(prompt_tokens)::bigint AS prompt_tokens,
                      sum(completion_tokens)::bigint AS completion_tokens,
                      sum(cost_usd) AS cost_usd, sum(tool_calls)::bigint AS tool_calls,
                      avg(duration_ms::float8) AS avg_duration_ms
                 FROM turn_agents WHERE completed_at >= $1 GROUP BY agent
           ), continued AS (
               SELECT agent, count(*) AS rows FROM interrupts
                WHERE status IN ('approved', 'rejected') AND decided_at >= $1
                GROUP BY agent
           )
           SELECT s.agent AS "agent!", s.rows AS "rows!",
                  greatest(s.rows - coalesce(c.rows, 0), 0) AS "turns!",
                  s.prompt_tokens AS "prompt_tokens!", s.completion_tokens AS "completion_tokens!",
                  s.cost_usd AS "cost_usd!", s.tool_calls AS "tool_calls!",
                  round(s.avg_duration_ms::numeric, 1)::float8 AS "avg_duration_ms!"
             FROM shares s LEFT JOIN continued c USING (agent)
            ORDER BY s.agent"#,
        from,
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut figures = Vec::with_capacity(sums.len());
    for agent in sums {
        let (ascending, skip) = rank_walk(0.95, agent.rows);
        // One statement per direction: the rank is walked from the nearer end of the index.
        let p95 = if ascending {
            sqlx::query_scalar!(
                "SELECT duration_ms FROM turn_agents WHERE agent = $1 AND completed_at >= $2
                  ORDER BY duration_ms ASC OFFSET $3 LIMIT 1",
                agent.agent,
                from,
                skip,
            )
            .persistent(false)
            .fetch_optional(&mut *tx)
            .await?
        } else {
            sqlx::query_scalar!(
                "SELECT duration_ms FROM turn_agents WHERE agent = $1 AND completed_at >= $2
                  ORDER BY duration_ms DESC OFFSET $3 LIMIT 1",
                agent.agent,
                from,
                skip,
            )
            .persistent(false)
            .fetch_optional(&mut *tx)
            .await?
        };
        figures.push(AgentFigures {
            agent: agent.agent,
            turns: agent.turns,
            prompt_tokens: agent.prompt_tokens,
            completion_tokens: agent.completion_tokens,
            cost_usd: agent.cost_usd,
            tool_calls: agent.tool_calls,
            avg_duration_ms: agent.avg_duration_ms,
            p95_duration_ms: p95.unwrap_or_default() as f64,
        });
    }
    tx.commit().await?;
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_three_ranges() {
        assert_eq!(Range::parse(Some("24h")).unwrap(), Range::Day);
        assert_eq!(Range::parse(Some("7d")).unwrap(), Range::Week);
        assert_eq!(Range::parse(Some("30d")).unwrap(), Range::Month);
        for bad in [None, Some(""), Some("1h"), Some("24H"), Some("30")] {
            assert!(
                matches!(Range::parse(bad), Err(ApiError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ranks_are_walked_from_the_nearer_end() {
        // Nearest rank of 0.5 among 10 values is the 5th: skip 4 from below.
        assert_eq!(rank_walk(0.5, 10), (true, 4));
        // 0.95 of 100 is the 95th: skip 5 from above.
        assert_eq!(rank_walk(0.95, 100), (false, 5));
        // 0.99 of 7 is the 7th, the largest.
        assert_eq!(rank_walk(0.99, 7), (false, 0));
        assert_eq!(rank_walk(0.5, 1), (true, 0));
        assert_eq!(rank_walk(0.95, 1), (true, 0));
    }

    #[test]
    fn buckets_fill_the_window() {
        for (range, hours) in [
            (Range::Day, 24),
            (Range::Week, 7 * 24),
            (Range::Month, 30 * 24),
        ] {
            let (step, count) = range.buckets();
            assert_eq!(step.as_secs() * u64::try_from(count).unwrap(), hours * 3600);
        }
    }
}
