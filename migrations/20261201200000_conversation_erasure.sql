-- Erased conversations (SPEC §8): the tombstone that keeps an erased thread's token refused and
-- the thread from being re-created by a message still in flight, and the audit log of erasures.
-- It holds no personal data: the thread id, who asked (`owner`: the thread's token, `admin`, or
-- `retention`: the RETENTION_DAYS sweep) and when.
CREATE TABLE erasures (
    thread_id  TEXT PRIMARY KEY,
    actor      TEXT NOT NULL CHECK (actor IN ('owner', 'admin', 'retention')),
    erased_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX erasures_erased_at_idx ON erasures (erased_at);

-- The retention sweep looks for the least recently active threads.
CREATE INDEX threads_last_active_at_idx ON threads (last_active_at);
