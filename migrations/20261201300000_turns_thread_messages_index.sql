-- The per-turn reads of a thread's last messages (the worker's history: `kind IN ('message',
-- 'human_message')`, the edge's thread page: `kind = 'message'`, which implies the index's
-- predicate; `... ORDER BY in_seq DESC LIMIT n`) walk this index backwards from the thread's newest
-- message and stop after n entries.
--
-- Without it, those statements matched the partial analytics index `turns_messages_received_idx`
-- (same predicate) and, as long as `turns` had no statistics or in their generic plans, PostgreSQL
-- ANDed the whole of that index with the primary key: every turn read an entry for every message
-- of every thread (issue 10; tests/e2e/hot_path.rs checks the plans on a seeded database).
CREATE INDEX IF NOT EXISTS turns_thread_messages_idx ON turns (thread_id, in_seq)
    WHERE kind IN ('message', 'human_message');
