-- Store::run_approved_in_db and Store::claim_remote: claims the ledger row of approval $1's call
-- ($2 thread, $3 tool, $4 arguments); no row is written if one is there.
INSERT INTO tool_executions (interrupt_id, thread_id, tool, args, ok, result)
VALUES ($1, $2, $3, $4, false, 'null') ON CONFLICT (interrupt_id) DO NOTHING
