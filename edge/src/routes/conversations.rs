//! `GET /api/admin/conversations` and `GET /api/admin/conversations/{id}/timeline` (SPEC §4): the
//! replay list, with filters, text search and cursor pagination, and one conversation's ordered
//! events with their timings, tokens and cost.

use anyhow::Context as _;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use shared::ids::ThreadId;
use shared::protocol::HandoffState;
use shared::timeline::TimelineEvent;
use shared::turns::{ThreadStatus, TurnKind, TurnOutcome};
use sqlx::{Postgres, QueryBuilder};

use crate::error::ApiError;
use crate::state::AppState;

/// Conversations per page unless `limit` says otherwise.
const DEFAULT_LIMIT: i64 = 50;
/// The most conversations one page may hold.
const MAX_LIMIT: i64 = 200;
/// The longest `q` accepted, in characters.
const MAX_QUERY_CHARS: usize = 200;

/// The columns of a listed conversation, read from `threads t` with its pending approval `i`.
/// An approval counts as pending while it is undecided and has not expired. Written out again in
/// `read_timeline`, whose `query_as!` takes a literal only.
const CONVERSATION_COLUMNS: &str = "t.id, t.status, t.title, t.agents, t.messages, t.prompt_tokens,
       t.completion_tokens, t.cost_usd, t.created_at, t.last_active_at,
       coalesce(i.status = 'pending' AND i.expires_at > now(), false) AS pending_approval,
       t.handoff_state";

/// One conversation as the list and the timeline show it (its id is its thread id).
#[derive(Debug, Serialize, sqlx::FromRow)]
pub(super) struct Conversation {
    id: String,
    status: ThreadStatus,
    /// The first message, at most 200 characters; `null` before any.
    title: Option<String>,
    /// Every agent that ran in it, in the order they first ran.
    agents: Vec<String>,
    /// User messages processed (answers to approvals are not counted).
    messages: i32,
    prompt_tokens: i64,
    completion_tokens: i64,
    cost_usd: f64,
    created_at: DateTime<Utc>,
    last_active_at: DateTime<Utc>,
    /// The conversation waits for an approval that has not expired.
    pending_approval: bool,
    /// `ai`, `waiting` or `human` (docs/handoff.md).
    handoff_state: HandoffState,
}

/// The query string of the list, all optional; each is checked in [`Filters::parse`].
#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    status: Option<String>,
    agent: Option<String>,
    since: Option<String>,
    until: Option<String>,
    q: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// The list's checked parameters.
#[derive(Debug, PartialEq)]
struct Filters {
    status: Option<ThreadStatus>,
    agent: Option<String>,
    /// `last_active_at >= since`.
    since: Option<DateTime<Utc>>,
    /// `last_active_at < until`.
    until: Option<DateTime<Utc>>,
    /// A web-search style query (words, "a phrase", `or`, `-word`), matched as whole words.
    text: Option<String>,
    limit: i64,
    after: Option<Cursor>,
}

impl Filters {
    fn parse(query: ListQuery) -> Result<Self, ApiError> {
        let bad = |message: String| ApiError::BadRequest(message);
        let status = match query.status {
            Some(status) => match status.parse::<ThreadStatus>() {
                Ok(status) => Some(status),
                Err(_) => {
                    let known: Vec<&str> = ThreadStatus::ALL
                        .iter()
                        .map(|status| status.as_str())
                        .collect();
                    return Err(bad(format!(
                        "status {status:?} is not one of {}",
                        known.join(", ")
                    )));
                }
            },
            None => None,
        };
        let agent = match query.agent {
            Some(agent) if is_agent_name(&agent) => Some(agent),
            Some(agent) => {
                return Err(bad(format!(
                    "agent {agent:?} is not an agent name (letters, digits, _ and -, at most 64)"
                )))
            }
            None => None,
        };
        let since = query
            .since
            .map(|raw| timestamp("since", &raw))
            .transpose()?;
        let until = query
            .until
            .map(|raw| timestamp("until", &raw))
            .transpose()?;
        if let (Some(since), Some(until)) = (since, until) {
            if since > until {
                return Err(bad("since is after until".into()));
            }
        }
        let text = query
            .q
            .map(|q| q.trim().to_owned())
            .filter(|q| !q.is_empty());
        if text
            .as_ref()
            .is_some_and(|q| q.chars().count() > MAX_QUERY_CHARS)
        {
            return Err(bad(format!(
                "q is longer than {MAX_QUERY_CHARS} characters"
            )));
        }
        let limit = match query.limit {
            None => DEFAULT_LIMIT,
            Some(raw) => raw
                .parse::<i64>()
                .ok()
                .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                .ok_or_else(|| {
                    bad(format!(
                        "limit {raw:?} is not a whole number from 1 to {MAX_LIMIT}"
                    ))
                })?,
        };
        let after = query
            .cursor
            .map(|raw| {
                Cursor::decode(&raw)
                    .ok_or_else(|| bad("cursor is not one this API gave out".into()))
            })
            .transpose()?;
        Ok(Self {
            status,
            agent,
            since,
            until,
            text,
            limit,
            after,
        })
    }
}

fn is_agent_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn timestamp(name: &str, raw: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "{name} {raw:?} is not an RFC 3339 timestamp (e.g. 2026-11-24T08:00:00Z)"
            ))
        })
}

/// Where a page ends: the last conversation's `(last_active_at, id)`, the list's sort key. The
/// next page starts strictly after it, so ties on `last_active_at` are neither repeated nor
/// skipped. On the wire: hex of `<microseconds since the epoch>:<id>`.
#[derive(Debug, Clone, PartialEq)]
struct Cursor {
    last_active_at: DateTime<Utc>,
    id: String,
}

impl Cursor {
    fn encode(&self) -> String {
        let plain = format!("{}:{}", self.last_active_at.timestamp_micros(), self.id);
        plain.bytes().map(|byte| format!("{byte:02x}")).collect()
    }

    fn decode(raw: &str) -> Option<Self> {
        if !raw.len().is_multiple_of(2) || raw.len() > 2 * 160 {
            return None;
        }
        let bytes = (0..raw.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(raw.get(at..at + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let plain = String::from_utf8(bytes).ok()?;
        let (micros, id) = plain.split_once(':')?;
        let last_active_at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
        let id = ThreadId::parse(id).ok()?;
        Some(Self {
            last_active_at,
            id: id.as_str().to_owned(),
        })
    }
}

/// `200 {"conversations": [...], "next_cursor": string | null}`.
#[derive(Debug, Serialize)]
pub(super) struct ConversationPage {
    conversations: Vec<Conversation>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// `GET /api/admin/conversations`: newest activity first (`last_active_at`, then id, both
/// descending), filtered by `status`, `agent` (ran in it), `since` / `until` (on
/// `last_active_at`, RFC 3339, `since` inclusive, `until` exclusive) and `q` (full-text search of
/// its user messages and replies), `limit` (1–200, default 50) per page, `cursor` from the
/// previous page.
pub(super) async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ConversationPage>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let filters = Filters::parse(query)?;
    let page = list_page(&state.db, &filters)
        .await
        .context("Failed to list the conversations")
        .map_err(ApiError::Unavailable)?;
    Ok(Json(page))
}

async fn list_page(db: &sqlx::PgPool, filters: &Filters) -> Result<ConversationPage, sqlx::Error> {
    // Runtime SQL: the filters present decide the statement (QueryBuilder).
    let mut sql: QueryBuilder<'_, Postgres> = QueryBuilder::new(format!(
        "SELECT {CONVERSATION_COLUMNS}
           FROM threads t LEFT JOIN interrupts i ON i.id = t.pending_interrupt
          WHERE true"
    ));
    if let Some(status) = &filters.status {
        sql.push(" AND t.status = ").push_bind(*status);
    }
    if let Some(agent) = &filters.agent {
        sql.push(" AND ")
            .push_bind(agent.clone())
            .push(" = ANY (t.agents)");
    }
    if let Some(since) = filters.since {
        sql.push(" AND t.last_active_at >= ").push_bind(since);
    }
    if let Some(until) = filters.until {
        sql.push(" AND t.last_active_at < ").push_bind(until);
    }
    if let Some(after) = &filters.after {
        sql.push(" AND (t.last_active_at, t.id) < (")
            .push_bind(after.last_active_at)
            .push(", ")
            .push_bind(after.id.clone())
            .push(")");
    }
    if let Some(text) = &filters.text {
        // The expression of the index turns_text_search_idx, so the search is index-backed.
        sql.push(
            " AND t.id IN (SELECT u.thread_id FROM turns u
                 WHERE to_tsvector('simple', coalesce(u.content, '') || ' ' || u.reply)
                       @@ websearch_to_tsquery('simple', ",
        )
        .push_bind(text.clone())
        .push("))");
    }
    // One more than the page, to know whether another page follows.
    sql.push(" ORDER BY t.last_active_at DESC, t.id DESC LIMIT ")
        .push_bind(filters.limit + 1);
    // Unnamed statements: each is planned with its values (how selective `q` or a status is)
    // rather than with a generic plan cached for the connection.
    let mut conversations: Vec<Conversation> =
        sql.build_query_as().persistent(false).fetch_all(db).await?;
    let limit = usize::try_from(filters.limit).unwrap_or(usize::MAX);
    let next_cursor = if conversations.len() > limit {
        conversations.truncate(limit);
        conversations.last().map(|last| {
            Cursor {
                last_active_at: last.last_active_at,
                id: last.id.clone(),
            }
            .encode()
        })
    } else {
        None
    };
    Ok(ConversationPage {
        conversations,
        next_cursor,
    })
}

/// `200 {"conversation": {...}, "events": [...]}`.
#[derive(Debug, Serialize)]
pub(super) struct Timeline {
    conversation: Conversation,
    events: Vec<Value>,
}

#[derive(Debug, sqlx::FromRow)]
struct TurnRow {
    in_seq: i64,
    turn_id: uuid::Uuid,
    message_id: String,
    kind: TurnKind,
    content: Option<String>,
    reply: String,
    outcome: TurnOutcome,
    agents: Vec<String>,
    events: Value,
    prompt_tokens: i64,
    completion_tokens: i64,
    cost_usd: f64,
    received_at: DateTime<Utc>,
    started_at: DateTime<Utc>,
    completed_at: DateTime<Utc>,
}

#[derive(Debug, sqlx::FromRow)]
struct DeadLetterRow {
    in_seq: i64,
    turn_id: uuid::Uuid,
    message_id: String,
    attempts: i32,
    reason: String,
    created_at: DateTime<Utc>,
    replayed_at: Option<DateTime<Utc>>,
    replay_seq: Option<i64>,
}

/// `GET /api/admin/conversations/{id}/timeline`: for each processed message, in stream order, a
/// `user_message` (or `approval_answer` for an answer to an approval), then the events the
/// worker recorded for it (classification, tool calls and results, interrupts, decisions,
/// clarifications, escalations, errors, agent replies with their usage and duration), each with
/// `turn_id` and `in_seq`, then `turn_completed` with its outcome, usage, `latency_ms`
/// (completed − received) and `queue_ms` (started − received). A dead-lettered message adds
/// `dead_lettered` after its row, and `replayed` before the row of its re-driven copy.
pub(super) async fn timeline(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Timeline>, ApiError> {
    let id =
        ThreadId::parse(id).map_err(|error| ApiError::BadRequest(format!("thread id {error}")))?;
    let read = read_timeline(&state.db, &id)
        .await
        .context("Failed to read the conversation's timeline")
        .map_err(ApiError::Unavailable)?;
    let Some((conversation, turns, letters)) = read else {
        return Err(ApiError::NotFound);
    };
    Ok(Json(Timeline {
        conversation,
        events: timeline_events(turns, letters),
    }))
}

type TimelineRows = (Conversation, Vec<TurnRow>, Vec<DeadLetterRow>);

/// The conversation, its turns and its dead letters, from one snapshot.
async fn read_timeline(
    db: &sqlx::PgPool,
    id: &ThreadId,
) -> Result<Option<TimelineRows>, sqlx::Error> {
    let mut snapshot = db.begin().await?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *snapshot)
        .await?;
    // CONVERSATION_COLUMNS, written out (the macro needs a literal).
    let conversation = sqlx::query_as!(
        Conversation,
        r#"SELECT t.id, t.status AS "status: ThreadStatus", t.title, t.agents, t.messages, t.prompt_tokens,
                  t.completion_tokens, t.cost_usd, t.created_at, t.last_active_at,
                  coalesce(i.status = 'pending' AND i.expires_at > now(), false)
                      AS "pending_approval!",
                  t.handoff_state AS "handoff_state: HandoffState"
             FROM threads t LEFT JOIN interrupts i ON i.id = t.pending_interrupt
            WHERE t.id = $1"#,
        id.as_str(),
    )
    .fetch_optional(&mut *snapshot)
    .await?;
    let Some(conversation) = conversation else {
        return Ok(None);
    };
    let turns = sqlx::query_as!(
        TurnRow,
        r#"SELECT in_seq, turn_id, message_id, kind AS "kind: TurnKind", content, reply,
                  outcome AS "outcome: TurnOutcome", agents, events, prompt_tokens, completion_tokens, cost_usd, received_at,
                  started_at, completed_at
             FROM turns WHERE thread_id = $1 ORDER BY in_seq"#,
        id.as_str(),
    )
    .fetch_all(&mut *snapshot)
    .await?;
    let letters = sqlx::query_as!(
        DeadLetterRow,
        "SELECT in_seq, turn_id, message_id, attempts, reason, created_at, replayed_at, replay_seq
           FROM dead_letters WHERE thread_id = $1 ORDER BY in_seq",
        id.as_str(),
    )
    .fetch_all(&mut *snapshot)
    .await?;
    snapshot.commit().await?;
    Ok(Some((conversation, turns, letters)))
}

/// Where a group of events sits in the timeline: by stream sequence, then this rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    /// `replayed`: before the turn of the re-driven copy.
    BeforeTurn,
    Turn,
    /// `dead_lettered` (and `replayed` without a known copy): after the failed message's row.
    AfterTurn,
}

/// A row the edge adds to the replay timeline around the events the worker recorded
/// ([`TimelineEvent`], shown as stored with `turn_id` and `in_seq`): what came in, how the turn
/// ended, and what happened to a dead letter (docs/admin-api.md).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum EdgeRow<'a> {
    /// A customer's message.
    UserMessage {
        turn_id: uuid::Uuid,
        in_seq: i64,
        message_id: &'a str,
        content: Option<&'a str>,
        at: DateTime<Utc>,
    },
    /// An answer to an approval, with the decision the worker recorded (as stored).
    ApprovalAnswer {
        turn_id: uuid::Uuid,
        in_seq: i64,
        message_id: &'a str,
        decision: Value,
        at: DateTime<Utc>,
    },
    /// A stored `cancel` that ended a turn paused on an approval (SPEC §8).
    CancelRequest {
        turn_id: uuid::Uuid,
        in_seq: i64,
        message_id: &'a str,
        at: DateTime<Utc>,
    },
    /// How the turn ended: its outcome, usage and timings.
    TurnCompleted {
        turn_id: uuid::Uuid,
        in_seq: i64,
        outcome: &'static str,
        agents: &'a [String],
        reply: &'a str,
        prompt_tokens: i64,
        completion_tokens: i64,
        cost_usd: f64,
        latency_ms: i64,
        queue_ms: i64,
        at: DateTime<Utc>,
    },
    /// The message was given up on after `attempts` failures.
    DeadLettered {
        turn_id: uuid::Uuid,
        in_seq: i64,
        message_id: &'a str,
        attempts: i32,
        reason: &'a str,
        at: DateTime<Utc>,
    },
    /// An operator re-drove the dead letter (`replay_seq`: the copy's stream sequence).
    Replayed {
        turn_id: uuid::Uuid,
        in_seq: i64,
        message_id: &'a str,
        replay_seq: Option<i64>,
        at: DateTime<Utc>,
    },
}

/// Orders the turns' and dead letters' events into one timeline.
fn timeline_events(turns: Vec<TurnRow>, letters: Vec<DeadLetterRow>) -> Vec<Value> {
    let mut groups: Vec<((i64, Rank), Vec<Value>)> = Vec::with_capacity(turns.len() + 2);
    for turn in turns {
        groups.push(((turn.in_seq, Rank::Turn), turn_events(turn)));
    }
    for letter in letters {
        groups.push((
            (letter.in_seq, Rank::AfterTurn),
            vec![json!(EdgeRow::DeadLettered {
                turn_id: letter.turn_id,
                in_seq: letter.in_seq,
                message_id: &letter.message_id,
                attempts: letter.attempts,
                reason: &letter.reason,
                at: letter.created_at,
            })],
        ));
        if let Some(replayed_at) = letter.replayed_at {
            let key = match letter.replay_seq {
                Some(seq) => (seq, Rank::BeforeTurn),
                None => (letter.in_seq, Rank::AfterTurn),
            };
            groups.push((
                key,
                vec![json!(EdgeRow::Replayed {
                    turn_id: letter.turn_id,
                    in_seq: letter.in_seq,
                    message_id: &letter.message_id,
                    replay_seq: letter.replay_seq,
                    at: replayed_at,
                })],
            ));
        }
    }
    // Stable: a dead letter's `dead_lettered` stays before its `replayed`.
    groups.sort_by_key(|(key, _)| *key);
    groups.into_iter().flat_map(|(_, events)| events).collect()
}

/// One turn row: what came in, what the worker recorded, how it ended.
fn turn_events(turn: TurnRow) -> Vec<Value> {
    // Each recorded event is shown as stored (an unknown one too), with `turn_id` and `in_seq`.
    let recorded = TimelineEvent::all_from_stored(turn.events);
    let mut events = Vec::with_capacity(recorded.len() + 2);
    // Handoff messages (SPEC §7): their own events, each with the operator's id (if by one).
    if turn.kind.is_handoff() {
        for event in &recorded {
            if let Value::Object(mut event) = event.to_json() {
                event.insert("turn_id".into(), json!(turn.turn_id));
                event.insert("in_seq".into(), json!(turn.in_seq));
                if turn.kind == TurnKind::HumanMessage {
                    event.insert("content".into(), json!(turn.content));
                }
                events.push(Value::Object(event));
            }
        }
        return events;
    }
    if turn.kind == TurnKind::InterruptResponse {
        let decision = recorded
            .iter()
            .find_map(|event| match event {
                TimelineEvent::Decision { decision, .. } => Some(json!(decision)),
                // One of an unexpected shape: its `decision` as stored.
                TimelineEvent::Unknown(stored) if event.kind() == Some("decision") => {
                    Some(stored["decision"].clone())
                }
                _ => None,
            })
            .unwrap_or(Value::Null);
        events.push(json!(EdgeRow::ApprovalAnswer {
            turn_id: turn.turn_id,
            in_seq: turn.in_seq,
            message_id: &turn.message_id,
            decision,
            at: turn.received_at,
        }));
    } else if turn.kind == TurnKind::Cancel {
        // A stored `cancel` that ended a turn paused on an approval (SPEC §8).
        events.push(json!(EdgeRow::CancelRequest {
            turn_id: turn.turn_id,
            in_seq: turn.in_seq,
            message_id: &turn.message_id,
            at: turn.received_at,
        }));
    } else {
        events.push(json!(EdgeRow::UserMessage {
            turn_id: turn.turn_id,
            in_seq: turn.in_seq,
            message_id: &turn.message_id,
            content: turn.content.as_deref(),
            at: turn.received_at,
        }));
    }
    for event in &recorded {
        let mut event = match event.to_json() {
            Value::Object(fields) => fields,
            other => {
                let mut wrapped = Map::new();
                wrapped.insert("type".into(), "unknown".into());
                wrapped.insert("value".into(), other);
                wrapped
            }
        };
        event.insert("turn_id".into(), json!(turn.turn_id));
        event.insert("in_seq".into(), json!(turn.in_seq));
        events.push(Value::Object(event));
    }
    let latency_ms = (turn.completed_at - turn.received_at).num_milliseconds();
    let queue_ms = (turn.started_at - turn.received_at).num_milliseconds();
    events.push(json!(EdgeRow::TurnCompleted {
        turn_id: turn.turn_id,
        in_seq: turn.in_seq,
        outcome: turn.outcome.as_str(),
        agents: &turn.agents,
        reply: &turn.reply,
        prompt_tokens: turn.prompt_tokens,
        completion_tokens: turn.completion_tokens,
        cost_usd: turn.cost_usd,
        latency_ms,
        queue_ms,
        at: turn.completed_at,
    }));
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> ListQuery {
        let mut query = ListQuery::default();
        for (key, value) in pairs {
            let value = Some((*value).to_owned());
            match *key {
                "status" => query.status = value,
                "agent" => query.agent = value,
                "since" => query.since = value,
                "until" => query.until = value,
                "q" => query.q = value,
                "limit" => query.limit = value,
                "cursor" => query.cursor = value,
                _ => panic!("unknown key {key}"),
            }
        }
        query
    }

    #[test]
    fn a_cursor_round_trips_and_stays_opaque() {
        let cursor = Cursor {
            last_active_at: DateTime::from_timestamp_micros(1_795_000_000_123_456).unwrap(),
            id: "seed-0000042".into(),
        };
        let encoded = cursor.encode();
        assert!(encoded.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(Cursor::decode(&encoded), Some(cursor));
    }

    #[test]
    fn broken_cursors_are_refused() {
        for raw in [
            "",
            "zz",
            "abc",
            "3a",
            "313a",
            "31323a2f2f",
            &"00".repeat(200),
        ] {
            assert_eq!(Cursor::decode(raw), None, "{raw}");
        }
        let bad = Filters::parse(query(&[("cursor", "not-hex")]));
        assert!(matches!(bad, Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn defaults_and_limits() {
        let filters = Filters::parse(ListQuery::default()).unwrap();
        assert_eq!(filters.limit, DEFAULT_LIMIT);
        assert_eq!(filters.text, None);
        assert_eq!(
            Filters::parse(query(&[("limit", "200")])).unwrap().limit,
            200
        );
        for limit in ["0", "201", "-1", "ten", "1.5"] {
            assert!(
                matches!(
                    Filters::parse(query(&[("limit", limit)])),
                    Err(ApiError::BadRequest(_))
                ),
                "{limit}"
            );
        }
        // A blank search is no search.
        assert_eq!(Filters::parse(query(&[("q", "  ")])).unwrap().text, None);
    }

    #[test]
    fn bad_filters_are_refused() {
        for pairs in [
            [("status", "closed")],
            [("agent", "no spaces")],
            [("since", "yesterday")],
            [("until", "2026-11-24")],
        ] {
            assert!(
                matches!(Filters::parse(query(&pairs)), Err(ApiError::BadRequest(_))),
                "{pairs:?}"
            );
        }
        let backwards = query(&[
            ("since", "2026-11-24T10:00:00Z"),
            ("until", "2026-11-24T09:00:00Z"),
        ]);
        assert!(matches!(
            Filters::parse(backwards),
            Err(ApiError::BadRequest(_))
        ));
        let window = Filters::parse(query(&[
            ("since", "2026-11-24T09:00:00+01:00"),
            ("status", "awaiting_approval"),
        ]))
        .unwrap();
        assert_eq!(
            window.since,
            Some(
                DateTime::parse_from_rfc3339("2026-11-24T08:00:00Z")
                    .unwrap()
                    .into()
            )
        );
    }

    fn turn(in_seq: i64, kind: TurnKind, events: Value) -> TurnRow {
        let at = DateTime::from_timestamp_micros(1_795_000_000_000_000).unwrap();
        TurnRow {
            in_seq,
            turn_id: uuid::Uuid::nil(),
            message_id: format!("m{in_seq}"),
            kind,
            content: (kind == TurnKind::Message).then(|| "hi".into()),
            reply: "hello".into(),
            outcome: TurnOutcome::Completed,
            agents: vec!["general".into()],
            events,
            prompt_tokens: 3,
            completion_tokens: 4,
            cost_usd: 0.5,
            received_at: at,
            started_at: at + chrono::Duration::milliseconds(7),
            completed_at: at + chrono::Duration::milliseconds(250),
        }
    }

    #[test]
    fn the_timeline_orders_turns_and_dead_letters() {
        let turns = vec![
            turn(
                3,
                TurnKind::Message,
                json!([{"type": "tool_call", "tool": "search_faq"}]),
            ),
            turn(
                5,
                TurnKind::InterruptResponse,
                json!([{"type": "decision", "decision": "approved"}]),
            ),
            turn(9, TurnKind::Message, json!([])),
        ];
        let at = DateTime::from_timestamp_micros(1_795_000_100_000_000).unwrap();
        let letters = vec![DeadLetterRow {
            in_seq: 5,
            turn_id: uuid::Uuid::nil(),
            message_id: "m5".into(),
            attempts: 3,
            reason: "boom".into(),
            created_at: at,
            replayed_at: Some(at),
            replay_seq: Some(9),
        }];
        let events = timeline_events(turns, letters);
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
        assert_eq!(
            kinds,
            [
                "user_message",
                "tool_call",
                "turn_completed",
                "approval_answer",
                "decision",
                "turn_completed",
                "dead_lettered",
                "replayed",
                "user_message",
                "turn_completed",
            ]
        );
        assert_eq!(events[1]["in_seq"], 3);
        assert_eq!(events[2]["latency_ms"], 250);
        assert_eq!(events[2]["queue_ms"], 7);
        assert_eq!(events[3]["decision"], "approved");
    }

    #[test]
    fn the_edge_rows_keep_their_json_shape() {
        let at = DateTime::from_timestamp_micros(1_795_000_100_000_000).unwrap();
        let letters = vec![DeadLetterRow {
            in_seq: 5,
            turn_id: uuid::Uuid::nil(),
            message_id: "m5".into(),
            attempts: 3,
            reason: "boom".into(),
            created_at: at,
            replayed_at: Some(at),
            replay_seq: None,
        }];
        let events = timeline_events(vec![turn(3, TurnKind::Message, json!([]))], letters);
        let nil = uuid::Uuid::nil();
        let message = &events[0];
        assert_eq!(
            message,
            &json!({"type": "user_message", "turn_id": message["turn_id"], "in_seq": 3,
                    "message_id": message["message_id"], "content": message["content"],
                    "at": message["at"]})
        );
        let completed = &events[1];
        let keys: Vec<&str> = completed
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = [
            "type",
            "turn_id",
            "in_seq",
            "outcome",
            "agents",
            "reply",
            "prompt_tokens",
            "completion_tokens",
            "cost_usd",
            "latency_ms",
            "queue_ms",
            "at",
        ];
        expected.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(completed["outcome"], "completed");
        assert_eq!(
            events[2],
            json!({"type": "dead_lettered", "turn_id": nil, "in_seq": 5, "message_id": "m5",
                   "attempts": 3, "reason": "boom", "at": at})
        );
        assert_eq!(
            events[3],
            json!({"type": "replayed", "turn_id": nil, "in_seq": 5, "message_id": "m5",
                   "replay_seq": null, "at": at})
        );
    }

    #[test]
    fn recorded_events_are_shown_as_stored_typed_or_not() {
        let at = "2026-11-24T10:00:00.5Z";
        let id = "0b3f5a4e-8a0b-4c1e-9f7e-2d6c1a9b7e10";
        let decision = json!({"type": "decision", "interrupt_id": id, "decision": "rejected",
                              "at": at});
        let newer = json!({"type": "from_the_future", "at": at, "extra": [1, 2]});
        let odd = json!({"type": "decision", "decision": {"maybe": true}, "note": "old"});
        let turns = vec![turn(
            4,
            TurnKind::InterruptResponse,
            json!([decision, newer, odd, "loose text"]),
        )];
        let events = timeline_events(turns, Vec::new());
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
        assert_eq!(
            kinds,
            [
                "approval_answer",
                "decision",
                "from_the_future",
                "decision",
                "unknown",
                "turn_completed",
            ]
        );
        // The typed decision names the answer.
        assert_eq!(events[0]["decision"], "rejected");
        let with_turn = |mut stored: Value| {
            stored["turn_id"] = json!(uuid::Uuid::nil());
            stored["in_seq"] = json!(4);
            stored
        };
        assert_eq!(events[1], with_turn(decision));
        assert_eq!(events[2], with_turn(newer));
        assert_eq!(events[3], with_turn(odd));
        assert_eq!(
            events[4],
            with_turn(json!({"type": "unknown", "value": "loose text"}))
        );
        // A handoff message's events, the same way.
        let join = json!({"type": "operator_join", "operator_id": id, "operator_name": "Ada",
                          "from": "waiting", "to": "human", "at": at});
        let events = timeline_events(
            vec![turn(6, TurnKind::OperatorJoin, json!([join, 3]))],
            Vec::new(),
        );
        let mut expected = join.clone();
        expected["turn_id"] = json!(uuid::Uuid::nil());
        expected["in_seq"] = json!(6);
        assert_eq!(events, [expected]);
    }
}
