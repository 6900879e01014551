-- Failed attempts at a turn, counted per stored message. Infrastructure failures (database, NATS)
-- are retried without being counted; failures of the turn itself (the model, a tool) are.
CREATE TABLE turn_attempts (
    thread_id   TEXT NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    in_seq      BIGINT NOT NULL,
    attempts    INT NOT NULL,
    -- [{"at": timestamp, "error": text}, ...], oldest first.
    history     JSONB NOT NULL DEFAULT '[]',
    PRIMARY KEY (thread_id, in_seq)
);

-- Messages given up on after TURN_MAX_ATTEMPTS failed attempts; `worker replay --dead-letters`
-- re-drives them.
CREATE TABLE dead_letters (
    id           UUID PRIMARY KEY,
    thread_id    TEXT NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    in_seq       BIGINT NOT NULL,
    message_id   TEXT NOT NULL,
    turn_id      UUID NOT NULL,
    attempts     INT NOT NULL,
    reason       TEXT NOT NULL,
    history      JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    replayed_at  TIMESTAMPTZ,
    -- Stream sequence of the re-driven copy in <PREFIX>_IN.
    replay_seq   BIGINT,
    UNIQUE (thread_id, in_seq)
);

CREATE INDEX dead_letters_created_at_idx ON dead_letters (created_at);

ALTER TABLE turns ADD COLUMN outcome TEXT NOT NULL DEFAULT 'completed';
