-- Store::claim_remote, when the row was there: the ledger row of approval $1 and whether its
-- call finished.
SELECT ok, result, finished_at IS NOT NULL AS "finished!" FROM tool_executions
 WHERE interrupt_id = $1
