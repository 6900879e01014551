//! Grouped statements (`worker/src/store/group.rs`): the leases of threads whose deliveries come
//! together are taken by one statement, and the turns that end together are written by one, each
//! row still fenced by its own lease; a turn whose row PostgreSQL refuses fails alone; a turn that
//! ends alone is written at once.

use std::time::Duration;

use futures_util::future::join_all;
use shared::ids::ThreadId;
use shared::protocol::Usage;
use shared::turns::{ThreadStatus, TurnKind, TurnOutcome};
use worker::llm::ChatMessage;
use worker::records::{AfterCommit, AgentShare, Committed, Lease, TurnRecord};
use worker::store::{Acquired, Store};

use e2e::{StackOptions, TestApp};

/// Threads whose turns commit.
const WRITTEN: usize = 8;

fn turn(in_seq: u64, text: &str) -> TurnRecord {
    let now = chrono::Utc::now();
    TurnRecord {
        in_seq,
        turn_id: uuid::Uuid::now_v7(),
        message_id: format!("m-{text}"),
        kind: TurnKind::Message,
        content: Some(format!("question {text}")),
        reply: format!("answer {text}"),
        first_seq: 1,
        last_seq: 3,
        prompt_tokens: 150,
        completion_tokens: 25,
        cost_usd: 0.0001,
        received_at: now,
        started_at: now,
        status: ThreadStatus::Resolved,
        outcome: TurnOutcome::Completed,
        pending_interrupt: None,
        agents: vec!["triage".to_owned(), "orders".to_owned()],
        events: serde_json::json!([{"type": "message", "text": text}]),
        shares: ["triage", "orders"]
            .into_iter()
            .enumerate()
            .map(|(i, agent)| AgentShare {
                agent: agent.to_owned(),
                usage: Usage {
                    prompt_tokens: 100 + i as u64,
                    completion_tokens: 10,
                    cost_usd: 0.00005,
                },
                tool_calls: u32::try_from(i).unwrap(),
                duration: Duration::from_millis(40),
                reply: String::new(),
            })
            .collect(),
        escalated: false,
    }
}

fn leased(acquired: Result<Acquired, sqlx::Error>) -> Lease {
    match acquired {
        Ok(Acquired::Lease(lease)) => lease,
        other => panic!("the lease is free: {other:?}"),
    }
}

/// Thirteen deliveries come at once (the test's runtime runs one task at a time, so all are
/// queued before the statement starts): one statement takes the eleven free leases, finds the
/// erased thread erased and the leased one busy. Then nine turns end at once: one statement
/// writes the eight whose leases are current and tells the fenced one so. A turn whose row
/// PostgreSQL refuses fails alone, without taking the turn it came with. The eight threads come
/// back together, each lease with its own history; a turn that ends alone goes out at once.
#[tokio::test(flavor = "current_thread")]
async fn threads_coming_together_share_a_statement_each_fenced_by_its_own_lease() {
    let app = TestApp::spawn(StackOptions::default()).await;
    let db = app.db().await;
    let minute = Duration::from_secs(60);
    let metrics = worker::metrics::WorkerMetrics::new().unwrap();
    let store = Store::new(
        db.clone(),
        db.clone(),
        uuid::Uuid::now_v7(),
        minute,
        60 * minute,
        60 * minute,
    )
    .with_group_sizes(metrics.group_statement_threads.clone());
    let sizes = |statement: &str| {
        let sizes = metrics
            .group_statement_threads
            .with_label_values(&[statement]);
        (sizes.get_sample_count(), sizes.get_sample_sum())
    };

    sqlx::query("INSERT INTO erasures (thread_id, actor) VALUES ('group-erased', 'owner')")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO threads (id, lease_owner, lease_epoch, lease_expires_at)
         VALUES ('group-busy', gen_random_uuid(), 1, now() + interval '1 hour')",
    )
    .execute(&db)
    .await
    .unwrap();
    let threads: Vec<ThreadId> = (0..WRITTEN)
        .map(|i| format!("group-{i}"))
        .chain(
            ["fenced", "companion", "refused", "erased", "busy"]
                .map(|name| format!("group-{name}")),
        )
        .map(|id| ThreadId::parse(&id).unwrap())
        .collect();
    let mut acquired = join_all(threads.iter().map(|thread| store.acquire(thread))).await;
    assert_eq!(
        sizes("acquire"),
        (1, threads.len() as f64),
        "the thirteen acquires were gathered into one statement"
    );
    assert!(
        matches!(acquired.pop(), Some(Ok(Acquired::Busy))),
        "leased by another worker"
    );
    assert!(matches!(acquired.pop(), Some(Ok(Acquired::Erased))));
    let mut leases: Vec<Lease> = acquired.into_iter().map(leased).collect();
    for lease in &leases {
        assert_eq!((lease.epoch, lease.last_in_seq), (1, 0), "{lease:?}");
    }
    let refused = leases.pop().unwrap();
    let companion = leases.pop().unwrap();
    let fenced = leases.pop().unwrap();
    // Another worker took this one's lease since.
    sqlx::query("UPDATE threads SET lease_epoch = lease_epoch + 1 WHERE id = 'group-fenced'")
        .execute(&db)
        .await
        .unwrap();
    // This one's row cannot be written: a turn at its sequence exists already.
    sqlx::query(
        "INSERT INTO turns (thread_id, in_seq, turn_id, message_id, kind, content, first_seq,
                            last_seq, received_at, started_at, outcome)
         VALUES ('group-refused', 1, gen_random_uuid(), 'm-there', 'message', 'there', 1, 1,
                 now(), now(), 'completed')",
    )
    .execute(&db)
    .await
    .unwrap();

    // Nine turns end at once: one statement writes the eight whose leases are current, and
    // tells the fenced one so.
    let records: Vec<TurnRecord> = (0..=WRITTEN).map(|i| turn(1, &i.to_string())).collect();
    let results = join_all(
        leases
            .iter()
            .chain([&fenced])
            .zip(&records)
            .map(|(lease, record)| store.commit(lease, record, AfterCommit::ReleaseLease)),
    )
    .await;
    assert_eq!(
        sizes("commit"),
        (1, (WRITTEN + 1) as f64),
        "the nine turns were gathered into one statement"
    );
    for (i, result) in results.iter().take(WRITTEN).enumerate() {
        assert!(
            matches!(result, Ok(Committed::Yes)),
            "group-{i}: {result:?}"
        );
    }
    assert!(
        matches!(results[WRITTEN], Ok(Committed::Fenced)),
        "{:?}",
        results[WRITTEN]
    );

    // Each written row is its own turn's, with its own shares, and each thread moved on.
    let rows: Vec<(String, String, String, Vec<String>, i64, i64)> = sqlx::query_as(
        "SELECT t.thread_id, t.content, t.reply, t.agents,
                (SELECT count(*) FROM turn_agents a WHERE a.thread_id = t.thread_id),
                (SELECT sum(a.prompt_tokens) FROM turn_agents a WHERE a.thread_id = t.thread_id)::int8
           FROM turns t WHERE t.thread_id ~ '^group-[0-9]+$' OR t.thread_id = 'group-fenced'
          ORDER BY t.thread_id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(rows.len(), WRITTEN, "{rows:?}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(
            row,
            &(
                format!("group-{i}"),
                format!("question {i}"),
                format!("answer {i}"),
                vec!["triage".to_owned(), "orders".to_owned()],
                2,
                201,
            )
        );
    }
    let positions: Vec<(String, i64, bool, i64, Vec<String>)> = sqlx::query_as(
        "SELECT id, last_in_seq, lease_owner IS NULL, messages::int8, agents FROM threads
          WHERE id ~ '^group-[0-9]+$' OR id = 'group-fenced' ORDER BY id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(positions.len(), WRITTEN + 1);
    for (id, last_in_seq, released, messages, agents) in &positions {
        let written = id != "group-fenced";
        assert_eq!(
            (*last_in_seq, *released, *messages),
            if written { (1, true, 1) } else { (0, false, 0) },
            "{id}"
        );
        if written {
            assert_eq!(agents, &["triage".to_owned(), "orders".to_owned()]);
        }
    }

    // A turn whose row PostgreSQL refuses ends with another: the statement fails, each runs again
    // alone, and only the refused one fails, with its own error.
    let (refused_turn, companion_turn) = (turn(1, "refused"), turn(1, "companion"));
    let (refusal, written) = tokio::join!(
        store.commit(&refused, &refused_turn, AfterCommit::ReleaseLease),
        store.commit(&companion, &companion_turn, AfterCommit::ReleaseLease),
    );
    assert_eq!(sizes("commit"), (2, (WRITTEN + 3) as f64));
    assert_eq!(written.unwrap(), Committed::Yes);
    let refusal = refusal.unwrap_err();
    assert_eq!(
        refusal
            .as_database_error()
            .and_then(|e| e.code())
            .as_deref(),
        Some("23505"),
        "the refused turn gets its own error: {refusal}"
    );

    // The eight come back together: each lease comes with its own thread's history.
    let again = join_all(
        threads[..WRITTEN]
            .iter()
            .map(|thread| store.acquire(thread)),
    )
    .await;
    assert_eq!(sizes("acquire"), (2, (threads.len() + WRITTEN) as f64));
    let again: Vec<Lease> = again.into_iter().map(leased).collect();
    for (i, lease) in again.iter().enumerate() {
        assert_eq!((lease.epoch, lease.last_in_seq), (2, 1));
        let history = lease.history.as_ref().expect("read with the lease");
        assert_eq!(history.after_in_seq, 1);
        assert_eq!(
            history.messages,
            [
                ChatMessage::User {
                    content: format!("question {i}")
                },
                ChatMessage::Assistant {
                    content: format!("answer {i}"),
                    tool_calls: Vec::new(),
                },
            ],
            "group-{i}"
        );
    }

    // A turn that ends alone is written at once, in a statement of its own.
    let result = store
        .commit(&again[0], &turn(2, "alone"), AfterCommit::KeepLease)
        .await
        .unwrap();
    assert_eq!(result, Committed::Yes);
    assert_eq!(sizes("commit"), (3, (WRITTEN + 4) as f64));
    let held: bool = sqlx::query_scalar(
        "SELECT lease_owner IS NOT NULL AND last_in_seq = 2 FROM threads WHERE id = 'group-0'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(held, "committed, the lease kept");
}
