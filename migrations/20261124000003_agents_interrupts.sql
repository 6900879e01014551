-- The agent graph: approvals (interrupts) with their checkpoints, the ledger of approved tool
-- runs, and what each turn did. (As first released, this migration also loaded the demo shop;
-- `worker seed` loads it now: worker/src/demo_seed.sql. shared::db keeps databases that applied
-- the first version working.)

-- An approval a turn is waiting for. Written before its `interrupt` frame is published; the
-- thread points at it (threads.pending_interrupt) once the turn that raised it commits.
CREATE TABLE interrupts (
    id             UUID PRIMARY KEY,
    thread_id      TEXT NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    -- The paused turn: its answer continues the same turn id.
    turn_id        UUID NOT NULL,
    -- Stream sequence of the client message whose turn raised it.
    in_seq         BIGINT NOT NULL,
    agent          TEXT NOT NULL,
    action         TEXT NOT NULL,
    params         JSONB NOT NULL,
    -- Everything needed to continue the turn on any worker (the agent's conversation so far,
    -- the calls still to run, the agents still to run, usage so far).
    checkpoint     JSONB NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at     TIMESTAMPTZ NOT NULL,
    -- pending | approved | rejected | expired | superseded
    status         TEXT NOT NULL DEFAULT 'pending',
    decided_at     TIMESTAMPTZ,
    -- Stream sequence of the message that decided it.
    decided_in_seq BIGINT
);

CREATE INDEX interrupts_thread_idx ON interrupts (thread_id, created_at);
CREATE INDEX interrupts_created_at_idx ON interrupts (created_at);

ALTER TABLE threads ADD COLUMN pending_interrupt UUID;

-- Approved tool runs, keyed by the interrupt id: an approved action runs at most once, whatever
-- crashes or redeliveries happen. Built-in tools write their effect in the same transaction.
CREATE TABLE tool_executions (
    interrupt_id  UUID PRIMARY KEY REFERENCES interrupts (id) ON DELETE CASCADE,
    thread_id     TEXT NOT NULL,
    tool          TEXT NOT NULL,
    args          JSONB NOT NULL,
    ok            BOOLEAN NOT NULL,
    result        JSONB NOT NULL,
    executed_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- What a turn did: the agents that ran, in order, and its events (tool calls and results,
-- interrupts and decisions, clarifications) for the replay timeline.
ALTER TABLE turns ADD COLUMN agents TEXT[] NOT NULL DEFAULT '{}';
ALTER TABLE turns ADD COLUMN events JSONB NOT NULL DEFAULT '[]';
-- turns.outcome (from the previous migration) is now one of: completed | interrupted |
-- clarification | session_expired | dead_lettered.
