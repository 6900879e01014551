//! The hot path stays flat as the database grows: every statement run per turn reads the
//! thread's own rows, whatever the size of the tables and whichever plan PostgreSQL picks.
//!
//! A database seeded with 24,000 turns over 1,200 threads (the analytics indexes full of them) is
//! checked in two states: as a busy database is before autovacuum first analyzes it (no
//! statistics: the state in which the history query used to read the whole partial analytics
//! index on every turn, issue 10) and analyzed. In each state, under `plan_cache_mode` forced to
//! generic plans (what a prepared statement runs after a few executions) and to custom plans
//! (the grouped acquire and commit always run generic plans: their connections force them):
//!
//! - real turns through the real binaries: PostgreSQL's own counters show that the turns read no
//!   analytics index, scanned no hot table sequentially, and read few index entries per turn;
//! - `EXPLAIN (ANALYZE, FORMAT JSON)` of each per-turn statement (the worker's, and the edge's
//!   thread page): no analytics index, no sequential scan of a hot table, few rows read.

use std::fmt::Write as _;

use e2e::proxy::TcpProxy;
use e2e::{eventually, StackOptions, TestApp};
use futures_util::StreamExt as _;
use serde_json::Value;

/// Turns seeded, and the threads they are spread over (20 turns each, 50 threads at a time, as
/// `loadgen chat` makes them).
const SEEDED_TURNS: i64 = 24_000;
const SEEDED_THREADS: i64 = 1_200;
/// Turns of the threads the test talks to.
const TURNS: usize = 6;
/// Rows (index entries and heap rows) a statement may read for a thread of [`TURNS`] turns.
const MAX_ROWS_READ: f64 = 100.0;

/// Indexes that exist for the dashboard and the admin lists: no per-turn statement may read them.
const ANALYTICS_INDEXES: &[&str] = &[
    "turns_messages_received_idx",
    "turns_usage_idx",
    "turns_latency_idx",
    "turns_latency_order_idx",
    "turns_text_search_idx",
    "turn_agents_analytics_idx",
    "turn_agents_duration_idx",
    "threads_last_active_idx",
    "threads_status_last_active_idx",
    "threads_created_analytics_idx",
    "interrupts_created_at_idx",
    "dead_letters_created_at_idx",
];

/// Tables a turn touches: never scanned whole.
const HOT_TABLES: &[&str] = &[
    "turns",
    "threads",
    "turn_agents",
    "interrupts",
    "tool_executions",
    "turn_attempts",
];

const MODES: &[&str] = &["force_generic_plan", "force_custom_plan"];

/// Threads shaped like `loadgen chat`'s (each message through classification, a tool call and the
/// reply), with their turn rows, agent shares and an approval every thread.
const SEED: &[&str] = &[
    "INSERT INTO threads (id, status, last_in_seq, last_seq, messages)
     SELECT 'seed-' || lpad(g::text, 6, '0'), 'resolved', 0, 0, 20
       FROM generate_series(1, $2::bigint) AS g",
    "INSERT INTO turns (thread_id, in_seq, turn_id, message_id, kind, content, reply, first_seq,
                        last_seq, prompt_tokens, completion_tokens, cost_usd, received_at,
                        started_at, completed_at, outcome, agents, events)
     SELECT 'seed-' || lpad(((g - 1) % 50 + 1 + 50 * ((g - 1) / 1000))::text, 6, '0'), g,
            md5(g::text)::uuid, 'm' || g, 'message', 'Where is my order ' || (1001 + g % 10) || '?',
            'Order ' || (1001 + g % 10) || ' has shipped and should arrive by Friday.',
            g * 21 - 20, g * 21, 150, 25, 0.0001,
            now() - interval '1 day' + g * interval '1 second',
            now() - interval '1 day' + g * interval '1 second' + interval '5 ms',
            now() - interval '1 day' + g * interval '1 second' + interval '50 ms',
            'completed', ARRAY['orders'], '[{\"type\": \"classified\", \"agent\": \"orders\"}]'
       FROM generate_series(1, $1::bigint) AS g",
    "INSERT INTO turn_agents (thread_id, in_seq, position, agent, prompt_tokens,
                              completion_tokens, cost_usd, tool_calls, duration_ms, completed_at)
     SELECT thread_id, in_seq, 1, 'orders', 150, 25, 0.0001, 1, 40, completed_at FROM turns",
    "INSERT INTO interrupts (id, thread_id, turn_id, in_seq, agent, action, params, checkpoint,
                             created_at, expires_at, status, decided_at, decided_in_seq)
     SELECT md5('i' || g)::uuid, 'seed-' || lpad(g::text, 6, '0'), md5(g::text)::uuid, g,
            'orders', 'cancel_order', '{}', '{}', now() - interval '1 day', now(),
            'rejected', now(), g + 1
       FROM generate_series(1, $2::bigint) AS g",
    "INSERT INTO tool_executions (interrupt_id, thread_id, tool, args, ok, result)
     SELECT id, thread_id, 'cancel_order', '{}', true, '{}' FROM interrupts",
    "INSERT INTO turn_attempts (thread_id, in_seq, attempts, history)
     SELECT thread_id, in_seq, 1, '[]' FROM turns WHERE in_seq % 20 = 0",
];

#[tokio::test]
async fn per_turn_statements_read_only_the_threads_rows_on_a_database_with_history() {
    let mut app = TestApp::spawn(StackOptions::default()).await;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&app.database_url)
        .await
        .unwrap();
    // Autovacuum would analyze the seeded tables at a time of its choosing: the test chooses.
    for table in HOT_TABLES {
        sqlx::query(&format!(
            "ALTER TABLE {table} SET (autovacuum_enabled = false)"
        ))
        .execute(&db)
        .await
        .unwrap();
    }
    for statement in SEED {
        sqlx::query(statement)
            .bind(SEEDED_TURNS)
            .bind(SEEDED_THREADS)
            .execute(&db)
            .await
            .unwrap();
    }
    db.close().await;

    let mut failures = Vec::new();
    for state in ["no statistics", "analyzed"] {
        if state == "analyzed" {
            let db = app.db().await;
            sqlx::query("ANALYZE").execute(&db).await.unwrap();
            db.close().await;
        }
        let mut threads = Vec::new();
        for mode in MODES {
            let (thread, problems) = real_turns(&mut app, mode).await;
            failures.extend(
                problems
                    .into_iter()
                    .map(|p| format!("{state}, {mode}, real turns: {p}")),
            );
            threads.push(thread);
        }
        for mode in MODES {
            for problem in explain_all(&app, &threads[0], mode).await {
                failures.push(format!("{state}, {mode}, EXPLAIN: {problem}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "per-turn statements not bounded by the thread:\n{}",
        failures.join("\n")
    );
}

/// PostgreSQL's counters of the hot tables and their indexes, as far as every backend flushed.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    analytics_entries: i64,
    hot_seq_scans: i64,
    turns_index_entries: i64,
    turns_inserted: i64,
}

async fn counters(app: &TestApp) -> Counters {
    let db = app.db().await;
    let analytics: Vec<String> = ANALYTICS_INDEXES.iter().map(|s| (*s).to_owned()).collect();
    let hot: Vec<String> = HOT_TABLES.iter().map(|s| (*s).to_owned()).collect();
    let (analytics_entries, turns_index_entries): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(idx_tup_read) FILTER (WHERE indexrelname = ANY($1)), 0)::int8,
                coalesce(sum(idx_tup_read) FILTER (WHERE relname = 'turns'), 0)::int8
           FROM pg_stat_user_indexes",
    )
    .bind(&analytics)
    .fetch_one(&db)
    .await
    .unwrap();
    let (hot_seq_scans, turns_inserted): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(seq_scan), 0)::int8,
                coalesce(sum(n_tup_ins) FILTER (WHERE relname = 'turns'), 0)::int8
           FROM pg_stat_user_tables WHERE relname = ANY($1)",
    )
    .bind(&hot)
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    Counters {
        analytics_entries,
        hot_seq_scans,
        turns_index_entries,
        turns_inserted,
    }
}

/// Stops the stack's processes and waits until their database sessions ended: a session's
/// counters reach the statistics when it ends, before it leaves `pg_stat_activity`.
async fn stop_stack(app: &mut TestApp) {
    for mut process in app.edges.drain(..).chain(app.workers.drain(..)) {
        process.terminate().await;
    }
    let db = app.db().await;
    eventually("the stack's database sessions to end", || async {
        let sessions: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND backend_type = 'client backend'
                AND pid <> pg_backend_pid()",
        )
        .fetch_one(&db)
        .await
        .ok()?;
        (sessions == 0).then_some(())
    })
    .await;
    db.close().await;
}

/// Turns measured by [`a_turn_makes_one_round_trip_to_postgres_a_statement`].
const COUNTED_TURNS: usize = 10;

/// A turn through the demo agents (classification, the tool's read, the reply) asks PostgreSQL
/// for its statements and nothing more: the acquire, the tool's read and the commit, one round
/// trip each (turns one after the other: nothing to group). sqlx's pool would add two to each,
/// testing the connection when handing it out and again when taking it back (9 a turn).
/// Counted by a proxy between the worker and PostgreSQL.
#[tokio::test]
async fn a_turn_makes_one_round_trip_to_postgres_a_statement() {
    let mut app = TestApp::spawn(StackOptions {
        workers: 0,
        ..StackOptions::default().with("RATE_LIMIT_MESSAGES", "1000")
    })
    .await;
    let postgres = TcpProxy::to_postgres().await;
    let proxied = format!("postgres://postgres@{}/{}", postgres.addr(), app.database);
    app.env.insert("DATABASE_URL".into(), proxied);
    app.start_worker().await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let db = app.db().await;
    let mut sends = 0;
    // The first turn opens the connections and prepares the statements on them.
    for turn in 0..=COUNTED_TURNS {
        if turn == 1 {
            sends = postgres.sends();
        }
        ws.send(&thread.message(&format!("Where is my order {}?", 1001 + turn % 10)))
            .await;
        ws.expect_type("accepted").await;
        ws.frames_until_type("message_complete").await;
        wait_for_committed(&db, &thread.thread_id, turn + 1).await;
    }
    let per_turn = (postgres.sends() - sends) as f64 / COUNTED_TURNS as f64;
    eprintln!("{per_turn:.1} round trips to PostgreSQL a turn");
    assert!(
        per_turn <= 3.5,
        "{per_turn:.1} round trips to PostgreSQL a turn, for 3 statements"
    );
    assert!(
        per_turn >= 2.5,
        "{per_turn:.1}: the proxy missed statements"
    );
    db.close().await;
}

/// A delivery that follows its thread's last committed message is run as delivered, not read
/// again from the stream: a socket's next message on a thread is stored on the condition that
/// it follows the one the socket stored last, which the stream checks. A message stored behind
/// the socket's back (by a second socket on the thread) breaks the condition: the socket's next
/// message is stored without it and read again, and the turns run in the order stored.
/// Counted from the `STREAM.MSG.GET` requests on `<PREFIX>_IN` (a subscription sees them).
#[tokio::test]
async fn a_delivery_that_follows_the_last_turn_is_not_read_again() {
    let app = TestApp::spawn(StackOptions::default().with("RATE_LIMIT_MESSAGES", "1000")).await;
    let mut reads = InboundReads::watch(&app).await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    let db = app.db().await;
    let mut sent = Vec::new();
    for turn in 0..TURNS {
        let content = format!("Where is my order {}?", 1001 + turn);
        ws.send(&thread.message(&content)).await;
        ws.expect_type("accepted").await;
        ws.frames_until_type("message_complete").await;
        sent.push(content);
    }
    wait_for_committed(&db, &thread.thread_id, TURNS).await;
    let first = reads.since_last().await;
    // The socket's first message on the thread follows nothing it knows of (a retried delivery
    // of it may read it again); the rest follow the one before.
    assert!(
        (1..=2).contains(&first),
        "{first} reads of the inbound stream for {TURNS} turns of one socket"
    );

    let mut other = app.connect(0).await;
    let content = format!("Where is my order {}?", 1001 + sent.len());
    other.send(&thread.message(&content)).await;
    other.expect_type("accepted").await;
    other.frames_until_type("message_complete").await;
    // Relayed to the first socket too.
    ws.frames_until_type("message_complete").await;
    sent.push(content);
    let content = format!("Where is my order {}?", 1001 + sent.len());
    ws.send(&thread.message(&content)).await;
    ws.expect_type("accepted").await;
    ws.frames_until_type("message_complete").await;
    sent.push(content);
    wait_for_committed(&db, &thread.thread_id, sent.len()).await;
    let behind = reads.since_last().await;
    // Each is read (a retried delivery may read it again).
    assert!(
        (2..=4).contains(&behind),
        "{behind} reads for a message of a second socket and the first's next"
    );
    let run: Vec<String> = sqlx::query_scalar(
        "SELECT content FROM turns WHERE thread_id = $1 AND kind = 'message' ORDER BY in_seq",
    )
    .bind(&thread.thread_id)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        run, sent,
        "the turns ran in the order their messages were stored"
    );
    db.close().await;
}

/// The `STREAM.MSG.GET` requests on the stack's `<PREFIX>_IN`, as a subscription sees them.
struct InboundReads {
    nats: async_nats::Client,
    requests: async_nats::Subscriber,
    inbound: String,
    markers: String,
    marked: usize,
}

impl InboundReads {
    const GETS: &str = "$JS.API.STREAM.MSG.GET";

    async fn watch(app: &TestApp) -> Self {
        let nats = e2e::nats_client(&app.nats_url).await.unwrap();
        let requests = nats.subscribe(format!("{}.>", Self::GETS)).await.unwrap();
        nats.flush().await.unwrap();
        let stream = app.subjects().inbound_stream();
        Self {
            nats,
            requests,
            inbound: format!("{}.{stream}", Self::GETS),
            markers: format!("{}.{stream}_MARK", Self::GETS),
            marked: 0,
        }
    }

    /// The reads since the last call: the requests up to a marker of this connection's, which
    /// the server relays behind every request it handled before it (for a stream that does
    /// not exist: nothing answers it).
    async fn since_last(&mut self) -> usize {
        self.marked += 1;
        let marker = format!("{}{}", self.markers, self.marked);
        self.nats.publish(marker.clone(), "".into()).await.unwrap();
        let mut reads = 0;
        tokio::time::timeout(e2e::WAIT, async {
            while let Some(request) = self.requests.next().await {
                if request.subject.as_str() == marker {
                    return;
                }
                reads += usize::from(request.subject.as_str() == self.inbound);
            }
        })
        .await
        .expect("the marker to come back");
        reads
    }
}

/// Runs [`TURNS`] turns on a new thread through a stack whose sessions plan as `mode` says;
/// returns the thread and what the counters found wrong.
async fn real_turns(app: &mut TestApp, mode: &str) -> (String, Vec<String>) {
    stop_stack(app).await;
    let db = app.db().await;
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" SET plan_cache_mode = {mode}",
        app.database
    ))
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
    let before = counters(app).await;
    app.start_edge().await;
    app.start_worker().await;
    let thread = app.create_thread().await;
    let mut ws = app.connect(0).await;
    for i in 0..TURNS {
        ws.send(&thread.message(&format!("Where is my order {}?", 1001 + i)))
            .await;
        ws.expect_type("accepted").await;
        ws.frames_until_type("message_complete").await;
    }
    let db = app.db().await;
    wait_for_committed(&db, &thread.thread_id, TURNS).await;
    db.close().await;
    drop(ws);
    stop_stack(app).await;
    let after = counters(app).await;
    let mut problems = Vec::new();
    let inserted = after.turns_inserted - before.turns_inserted;
    if inserted != TURNS as i64 {
        problems.push(format!(
            "the counters show {inserted} turn rows inserted, not {TURNS}"
        ));
    }
    let analytics = after.analytics_entries - before.analytics_entries;
    if analytics != 0 {
        problems.push(format!(
            "{analytics} analytics index entries read in {TURNS} turns"
        ));
    }
    let seq_scans = after.hot_seq_scans - before.hot_seq_scans;
    if seq_scans != 0 {
        problems.push(format!("{seq_scans} sequential scans of hot tables"));
    }
    let per_turn = (after.turns_index_entries - before.turns_index_entries) as f64 / TURNS as f64;
    if per_turn >= MAX_ROWS_READ {
        problems.push(format!(
            "{per_turn:.0} index entries of turns read per turn"
        ));
    }
    (thread.thread_id, problems)
}

/// Waits until `thread` has `turns` messages committed, read on `threads` (whose index reads the
/// counters do not count), not on `turns`.
async fn wait_for_committed(db: &sqlx::PgPool, thread: &str, turns: usize) {
    eventually("the turns to be committed", || async {
        let messages: i32 = sqlx::query_scalar("SELECT messages FROM threads WHERE id = $1")
            .bind(thread)
            .fetch_one(db)
            .await
            .ok()?;
        (usize::try_from(messages) == Ok(turns)).then_some(())
    })
    .await;
}

/// One per-turn statement: its text, and its arguments as SQL literals.
struct Statement {
    name: &'static str,
    sql: String,
    args: Vec<String>,
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Every statement the worker runs for a turn (`worker/src/store/`), and
/// the edge's thread page. The history, the acquire and the `worker/queries/` files are the
/// worker's own text; the rest of the lease's and the edge's are copies.
fn statements(thread: &str) -> Vec<Statement> {
    let thread = literal(thread);
    let owner = literal("00000000-0000-0000-0000-00000000beef");
    let interrupt = literal("00000000-0000-0000-0000-0000000000aa");
    let big = i64::MAX.to_string();
    let s = |name, sql: &str, args: &[&str]| Statement {
        name,
        sql: sql.to_owned(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
    };
    vec![
        s("history", worker::store::HISTORY_SQL, &[&thread, "5"]),
        s(
            "acquire",
            worker::store::ACQUIRE_SQL,
            &[&format!("ARRAY[{thread}]"), "5", &owner, "30.0"],
        ),
        s(
            "commit",
            query("commit"),
            &[
                &format!("ARRAY[{thread}]"),
                "ARRAY[7]::int8[]",
                "ARRAY[1000000]::int8[]",
                "ARRAY[1000021]::int8[]",
                "ARRAY['resolved']",
                "ARRAY[true]",
                &owner,
                "ARRAY['00000000-0000-0000-0000-0000000000cc']::uuid[]",
                "ARRAY['m-explain']",
                "ARRAY['message']",
                "ARRAY['Where is my order 1001?']",
                "ARRAY['It has shipped.']",
                "ARRAY[1000001]::int8[]",
                "ARRAY[150]::int8[]",
                "ARRAY[25]::int8[]",
                "ARRAY[0.0001]::float8[]",
                "ARRAY[now()]",
                "ARRAY[now()]",
                "ARRAY[NULL]::uuid[]",
                "ARRAY['completed']",
                "ARRAY['[\"orders\"]']",
                "ARRAY['[]']",
                "ARRAY[false]",
                "ARRAY[1]::int8[]",
                "ARRAY[1]::int2[]",
                "ARRAY['orders']",
                "ARRAY[150]::int8[]",
                "ARRAY[25]::int8[]",
                "ARRAY[0.0001]::float8[]",
                "ARRAY[1]",
                "ARRAY[40]::int8[]",
            ],
        ),
        s(
            "renew",
            "UPDATE threads SET lease_expires_at = now() + make_interval(secs => $3)
              WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $4",
            &[&thread, "7", "30.0", &owner],
        ),
        s(
            "release",
            "UPDATE threads SET lease_owner = NULL, lease_expires_at = NULL
              WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $3",
            &[&thread, "7", &owner],
        ),
        s(
            "skip",
            query("skip"),
            &[&thread, "7", "1000000", &owner, "true"],
        ),
        s(
            "record_failure",
            query("record_failure"),
            &[&thread, "1000000", "'boom'"],
        ),
        s("failures", query("failures"), &[&thread, "1000000"]),
        s(
            "interrupt_raised_at",
            query("interrupt_raised_at"),
            &[&interrupt],
        ),
        s("load_interrupt", query("load_interrupt"), &[&interrupt]),
        s(
            "decide_interrupt",
            query("decide_interrupt"),
            &[&interrupt, "'approved'", "1000000"],
        ),
        s(
            "abandon_interrupts",
            query("abandon_interrupts"),
            &[&thread, "1000000"],
        ),
        s("tool_execution", query("tool_execution"), &[&interrupt]),
        s(
            "edge_thread_page_thread",
            "SELECT t.status, t.last_seq, i.id, i.turn_id, i.action, i.params, i.expires_at
               FROM threads t LEFT JOIN interrupts i ON i.id = t.pending_interrupt
              WHERE t.id = $1",
            &[&thread],
        ),
        s(
            "edge_thread_page_starts",
            "SELECT in_seq FROM turns
              WHERE thread_id = $1 AND kind = 'message' AND in_seq < $2
              ORDER BY in_seq DESC LIMIT $3",
            &[&thread, &big, "51"],
        ),
        s(
            "edge_thread_page_rows",
            "SELECT kind, message_id, turn_id, content, reply, outcome, last_seq, prompt_tokens,
                    completion_tokens, cost_usd, received_at, completed_at
               FROM turns WHERE thread_id = $1 AND in_seq >= $2 AND in_seq < $3 ORDER BY in_seq",
            &[&thread, "0", &big],
        ),
    ]
}

/// A per-turn statement of the worker, as it runs it (`sqlx::query_file!`).
fn query(name: &str) -> &'static str {
    match name {
        "commit" => include_str!("../../worker/queries/commit.sql"),
        "skip" => include_str!("../../worker/queries/skip.sql"),
        "record_failure" => include_str!("../../worker/queries/record_failure.sql"),
        "failures" => include_str!("../../worker/queries/failures.sql"),
        "interrupt_raised_at" => include_str!("../../worker/queries/interrupt_raised_at.sql"),
        "load_interrupt" => include_str!("../../worker/queries/load_interrupt.sql"),
        "decide_interrupt" => include_str!("../../worker/queries/decide_interrupt.sql"),
        "abandon_interrupts" => include_str!("../../worker/queries/abandon_interrupts.sql"),
        "tool_execution" => include_str!("../../worker/queries/tool_execution.sql"),
        other => panic!("no worker/queries/{other}.sql"),
    }
}

/// Types of the commit's parameters, as the worker binds them (one array element a turn).
const COMMIT_TYPES: &str = "text[], int8[], int8[], int8[], text[], bool[], uuid, uuid[], \
     text[], text[], text[], text[], int8[], int8[], int8[], float8[], timestamptz[], \
     timestamptz[], uuid[], text[], text[], text[], bool[], int8[], int2[], text[], int8[], \
     int8[], float8[], int[], int8[]";

/// `EXPLAIN (ANALYZE, FORMAT JSON)` of every statement under `mode`, each in a transaction rolled
/// back (the lease of the commit is set up in it); what was wrong with the plans.
async fn explain_all(app: &TestApp, thread: &str, mode: &str) -> Vec<String> {
    let db = app.db().await;
    let mut conn = db.acquire().await.unwrap();
    sqlx::query(&format!("SET plan_cache_mode = {mode}"))
        .execute(&mut *conn)
        .await
        .unwrap();
    let mut problems = Vec::new();
    for statement in statements(thread) {
        // The grouped statements run on connections of their own, with settings of their own.
        let settings = match statement.name {
            "commit" | "acquire" => worker::store::GROUP_SETTINGS,
            _ => &[],
        };
        let types = if statement.name == "commit" {
            format!(" ({COMMIT_TYPES})")
        } else {
            String::new()
        };
        for (name, value) in settings {
            sqlx::query(&format!("SET {name} = '{value}'"))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
        sqlx::query(
            "UPDATE threads SET lease_owner = '00000000-0000-0000-0000-00000000beef', lease_epoch = 7
              WHERE id = $1",
        )
        .bind(thread)
        .execute(&mut *conn)
        .await
        .unwrap();
        sqlx::query(&format!("PREPARE hot{types} AS {}", statement.sql))
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("PREPARE {}: {e}", statement.name));
        let plan: Value = sqlx::query_scalar(&format!(
            "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE hot({})",
            statement.args.join(", ")
        ))
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("EXPLAIN {}: {e}", statement.name));
        sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
        // The grouped statements run their generic plan, made once per connection, whatever
        // `mode` (their settings force it; `group.rs` tests that its connections carry them).
        let generic_plans: i64 = sqlx::query_scalar(
            "SELECT generic_plans FROM pg_prepared_statements WHERE name = 'hot'",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        if !settings.is_empty() && generic_plans != 1 {
            problems.push(format!("{}: ran a custom plan", statement.name));
        }
        sqlx::query("DEALLOCATE hot")
            .execute(&mut *conn)
            .await
            .unwrap();
        for (name, _) in settings {
            sqlx::query(&format!("RESET {name}"))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        sqlx::query(&format!("SET plan_cache_mode = {mode}"))
            .execute(&mut *conn)
            .await
            .unwrap();
        let mut found = Found::default();
        walk(&plan[0]["Plan"], &mut found);
        if statement.name == "history" && mode == "force_generic_plan" && !found.generic {
            problems.push(format!("{}: the plan is not generic", statement.name));
        }
        for index in &found.analytics {
            problems.push(format!("{}: reads {index}", statement.name));
        }
        for table in &found.seq_scans {
            problems.push(format!("{}: Seq Scan on {table}", statement.name));
        }
        if found.rows_read >= MAX_ROWS_READ {
            let mut outline = String::new();
            outline_plan(&plan[0]["Plan"], 0, &mut outline);
            problems.push(format!(
                "{}: {:.0} rows read\n{outline}",
                statement.name, found.rows_read
            ));
        }
    }
    problems
}

#[derive(Debug, Default)]
struct Found {
    analytics: Vec<String>,
    seq_scans: Vec<String>,
    rows_read: f64,
    /// A `$n` in a condition: the plan did not see the arguments.
    generic: bool,
}

fn walk(node: &Value, found: &mut Found) {
    let kind = node["Node Type"].as_str().unwrap_or_default();
    let relation = node["Relation Name"].as_str();
    let index = node["Index Name"].as_str();
    if let Some(index) = index {
        if ANALYTICS_INDEXES.contains(&index) {
            found.analytics.push(index.to_owned());
        }
    }
    if kind == "Seq Scan" {
        if let Some(table) = relation.filter(|table| HOT_TABLES.contains(table)) {
            found.seq_scans.push(table.to_owned());
        }
    }
    if kind.ends_with("Scan") && (relation.is_some() || index.is_some()) {
        let number = |key: &str| node[key].as_f64().unwrap_or_default();
        found.rows_read += (number("Actual Rows")
            + number("Rows Removed by Filter")
            + number("Rows Removed by Index Recheck"))
            * number("Actual Loops");
    }
    for key in ["Index Cond", "Recheck Cond", "Filter", "Hash Cond"] {
        if node[key].as_str().is_some_and(|cond| cond.contains('$')) {
            found.generic = true;
        }
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        walk(child, found);
    }
}

/// The plan's nodes, one a line, for the failure message.
fn outline_plan(node: &Value, depth: usize, out: &mut String) {
    let _ = writeln!(
        out,
        "{:width$}{} {} {} rows={} loops={}",
        "",
        node["Node Type"].as_str().unwrap_or("?"),
        node["Relation Name"].as_str().unwrap_or(""),
        node["Index Name"].as_str().unwrap_or(""),
        node["Actual Rows"],
        node["Actual Loops"],
        width = depth * 2
    );
    for child in node["Plans"].as_array().into_iter().flatten() {
        outline_plan(child, depth + 1, out);
    }
}

/// The acquire reads the history of the lease's first turn in the same statement
/// (`worker::store::ACQUIRE_SQL`). When it had to wait for the previous holder's commit, its
/// snapshot predates that commit and misses the turn it wrote: that history must not be used.
#[tokio::test]
async fn the_history_read_with_the_lease_counts_only_when_it_is_current() {
    use std::time::Duration;
    use worker::llm::ChatMessage;
    use worker::store::{Acquired, Store};

    let app = TestApp::spawn(StackOptions::default()).await;
    let db = app.db().await;
    let minute = Duration::from_secs(60);
    let worker_id = uuid::Uuid::now_v7();
    let store = Store::new(
        db.clone(),
        db.clone(),
        worker_id,
        minute,
        60 * minute,
        60 * minute,
    );
    let thread = shared::ids::ThreadId::parse("history-race").unwrap();
    let turn = |in_seq: i64, question: &str, answer: &str| {
        format!(
            "INSERT INTO turns (thread_id, in_seq, turn_id, message_id, kind, content, reply,
                                first_seq, last_seq, received_at, started_at, outcome)
             VALUES ('history-race', {in_seq}, gen_random_uuid(), 'm{in_seq}', 'message',
                     '{question}', '{answer}', {in_seq}, {in_seq}, now(), now(), 'completed')"
        )
    };
    let exchange = |question: &str, answer: &str| {
        vec![
            ChatMessage::User {
                content: question.to_owned(),
            },
            ChatMessage::Assistant {
                content: answer.to_owned(),
                tool_calls: Vec::new(),
            },
        ]
    };
    sqlx::query("INSERT INTO threads (id, last_in_seq, last_seq) VALUES ('history-race', 1, 1)")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query(&turn(1, "first question", "first answer"))
        .execute(&db)
        .await
        .unwrap();

    // Free lease: the history comes with it, current.
    let Acquired::Lease(lease) = store.acquire(&thread).await.unwrap() else {
        panic!("the lease is free");
    };
    let first = exchange("first question", "first answer");
    let prefetched = lease.history.as_ref().expect("read with the lease");
    assert_eq!(prefetched.after_in_seq, 1);
    assert_eq!(prefetched.messages, first);
    assert_eq!(store.history(&lease).await.unwrap(), first);
    // Taken: busy, and the history is not read.
    assert!(matches!(
        store.acquire(&thread).await.unwrap(),
        Acquired::Busy
    ));

    // The holder commits its next turn (and releases the lease) while another acquire waits for
    // the thread's row.
    let mut commit = db.begin().await.unwrap();
    sqlx::query(
        "UPDATE threads SET last_in_seq = 2, last_seq = 2, lease_owner = NULL,
                            lease_expires_at = NULL
          WHERE id = 'history-race'",
    )
    .execute(&mut *commit)
    .await
    .unwrap();
    sqlx::query(&turn(2, "second question", "second answer"))
        .execute(&mut *commit)
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let store = store.clone();
        let thread = thread.clone();
        async move { store.acquire(&thread).await }
    });
    eventually(
        "the acquire waits for the committing turn's row lock",
        || {
            let db = db.clone();
            async move {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'
                    AND query LIKE 'WITH r AS MATERIALIZED%'",
                )
                .fetch_one(&db)
                .await
                .unwrap();
                (waiting == 1).then_some(())
            }
        },
    )
    .await;
    commit.commit().await.unwrap();
    let Acquired::Lease(lease) = waiting.await.unwrap().unwrap() else {
        panic!("the lease was released");
    };
    assert_eq!(lease.last_in_seq, 2);
    assert!(
        lease.history.is_none(),
        "read before the commit it waited for: {:?}",
        lease.history
    );
    let mut both = first;
    both.extend(exchange("second question", "second answer"));
    assert_eq!(store.history(&lease).await.unwrap(), both);

    // An erased thread: nothing is re-created.
    sqlx::query("INSERT INTO erasures (thread_id, actor) VALUES ('history-erased', 'owner')")
        .execute(&db)
        .await
        .unwrap();
    let erased = shared::ids::ThreadId::parse("history-erased").unwrap();
    assert!(matches!(
        store.acquire(&erased).await.unwrap(),
        Acquired::Erased
    ));
}
