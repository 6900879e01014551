-- Store::failures: the failed attempts counted for a message ($1 thread, $2 in_seq), and the
-- last error.
SELECT attempts, history -> -1 ->> 'error' AS error FROM turn_attempts
 WHERE thread_id = $1 AND in_seq = $2
