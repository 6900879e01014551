-- Conversation lifecycle and per-conversation totals, kept up to date by the statement that
-- commits each turn (so nothing is lost or counted twice on redelivery).
--
-- threads.status: open (new, or a message is being answered) | awaiting_approval (the last turn
-- waits for an approval) | resolved (the last turn was answered) | escalated (handed to a human)
-- | expired (session expired: terminal) | failed (the last message was dead-lettered).
ALTER TABLE threads ADD COLUMN title TEXT;
ALTER TABLE threads ADD COLUMN agents TEXT[] NOT NULL DEFAULT '{}';
ALTER TABLE threads ADD COLUMN messages INT NOT NULL DEFAULT 0;
ALTER TABLE threads ADD COLUMN prompt_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE threads ADD COLUMN completion_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE threads ADD COLUMN cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE threads ADD COLUMN escalated_at TIMESTAMPTZ;

-- What each agent of a turn did: its share of the tokens and cost, its tool calls, its time.
-- Written in the same statement as the turn.
CREATE TABLE turn_agents (
    thread_id          TEXT NOT NULL,
    in_seq             BIGINT NOT NULL,
    position           SMALLINT NOT NULL,
    agent              TEXT NOT NULL,
    prompt_tokens      BIGINT NOT NULL,
    completion_tokens  BIGINT NOT NULL,
    cost_usd           DOUBLE PRECISION NOT NULL,
    tool_calls         INT NOT NULL,
    duration_ms        BIGINT NOT NULL,
    completed_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (thread_id, in_seq, position),
    FOREIGN KEY (thread_id, in_seq) REFERENCES turns (thread_id, in_seq) ON DELETE CASCADE
);
