-- Threads: one row per conversation, created by the edge, advanced by the worker that holds its lease.
CREATE TABLE threads (
    id                TEXT PRIMARY KEY,
    status            TEXT NOT NULL DEFAULT 'open',
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_active_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Stream sequence (in <PREFIX>_IN) of the last client message whose turn committed.
    last_in_seq       BIGINT NOT NULL DEFAULT 0,
    -- The last reply frame `seq` a committed turn produced.
    last_seq          BIGINT NOT NULL DEFAULT 0,
    -- Per-thread lease: the worker that may run this thread's turns, fenced by the epoch.
    lease_owner       UUID,
    lease_epoch       BIGINT NOT NULL DEFAULT 0,
    lease_expires_at  TIMESTAMPTZ
);

-- Turns: one row per processed client message, written once, in the same statement that advances
-- the thread.
CREATE TABLE turns (
    thread_id          TEXT NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    in_seq             BIGINT NOT NULL,
    turn_id            UUID NOT NULL,
    message_id         TEXT NOT NULL,
    kind               TEXT NOT NULL,
    content            TEXT,
    reply              TEXT NOT NULL DEFAULT '',
    first_seq          BIGINT NOT NULL,
    last_seq           BIGINT NOT NULL,
    prompt_tokens      BIGINT NOT NULL DEFAULT 0,
    completion_tokens  BIGINT NOT NULL DEFAULT 0,
    cost_usd           DOUBLE PRECISION NOT NULL DEFAULT 0,
    received_at        TIMESTAMPTZ NOT NULL,
    started_at         TIMESTAMPTZ NOT NULL,
    completed_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (thread_id, in_seq)
);

CREATE INDEX turns_completed_at_idx ON turns (completed_at);
