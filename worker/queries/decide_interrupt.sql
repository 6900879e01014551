-- Store::decide_interrupt: records what became of approval $1 ($2), by the message at $3.
-- Idempotent for that message; a decision by another one stands.
UPDATE interrupts SET status = $2, decided_at = COALESCE(decided_at, now()), decided_in_seq = $3
 WHERE id = $1 AND (status = 'pending' OR decided_in_seq = $3)
