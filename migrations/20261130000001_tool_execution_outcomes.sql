-- An approved call of a tool that calls out (an imported HTTP tool) is no longer run inside a
-- transaction held open across the HTTP request: its ledger row is claimed first, the request is
-- sent with no connection held, and the outcome is recorded after. `finished_at` says the row
-- holds the call's outcome; a claimed row without one means an attempt may have sent the call and
-- died: the next attempt sends it again with the same Idempotency-Key (the interrupt id).
ALTER TABLE tool_executions ADD COLUMN finished_at TIMESTAMPTZ;
UPDATE tool_executions SET finished_at = executed_at;
