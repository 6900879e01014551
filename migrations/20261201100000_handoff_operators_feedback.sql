-- Humans in the conversation (SPEC §7): operators, the handoff state of each thread, feedback.

-- Operators: people with their own identity. Only a keyed hash of the token is stored
-- (HMAC-SHA256 with AUTH_SECRET, hex): the token itself is shown once, at creation.
CREATE TABLE operators (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);

-- handoff_state: ai | waiting | human, changed in stream order by the worker that holds the
-- thread's lease (the frames follow it). operator_id: the operator who joined, claimed by the
-- edge at `join` (so a second join is refused at once) and cleared at `leave` / `resolve`.
ALTER TABLE threads ADD COLUMN handoff_state TEXT NOT NULL DEFAULT 'ai'
    CHECK (handoff_state IN ('ai', 'waiting', 'human'));
ALTER TABLE threads ADD COLUMN operator_id UUID REFERENCES operators (id);
-- When the current wait for a human began (null unless waiting or human).
ALTER TABLE threads ADD COLUMN waiting_since TIMESTAMPTZ;
-- The first time a human was asked for, and the first time one joined (analytics).
ALTER TABLE threads ADD COLUMN first_waiting_at TIMESTAMPTZ;
ALTER TABLE threads ADD COLUMN first_human_at TIMESTAMPTZ;
-- Milliseconds from `waiting` to `human`, once per conversation (the first join after a wait).
ALTER TABLE threads ADD COLUMN time_to_human_ms BIGINT;

CREATE INDEX threads_handoff_idx ON threads (handoff_state, waiting_since)
    WHERE handoff_state <> 'ai';

-- Feedback: thumbs on one reply (kind 'turn', turn_id set) and CSAT on the conversation (kind
-- 'csat', turn_id null). The last one of each kind counts: one row per (thread, kind, turn).
CREATE TABLE feedback (
    thread_id   TEXT NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('turn', 'csat')),
    turn_id     UUID,
    rating      TEXT CHECK (rating IN ('up', 'down')),
    score       SMALLINT CHECK (score BETWEEN 1 AND 5),
    comment     TEXT,
    -- The agents of the rated reply, for thumbs_up_rate per agent.
    agents      TEXT[] NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((kind = 'turn' AND turn_id IS NOT NULL AND rating IS NOT NULL)
        OR (kind = 'csat' AND turn_id IS NULL AND score IS NOT NULL))
);

CREATE UNIQUE INDEX feedback_turn_idx ON feedback (thread_id, turn_id) WHERE kind = 'turn';
CREATE UNIQUE INDEX feedback_csat_idx ON feedback (thread_id) WHERE kind = 'csat';
CREATE INDEX feedback_created_at_idx ON feedback (created_at);
