-- Store::record_failure: counts a failed attempt at the message ($1 thread, $2 in_seq) with its
-- error ($3); returns the attempts so far.
INSERT INTO turn_attempts (thread_id, in_seq, attempts, history)
VALUES ($1, $2, 1, jsonb_build_array(jsonb_build_object('at', now(), 'error', $3::text)))
ON CONFLICT (thread_id, in_seq) DO UPDATE
   SET attempts = turn_attempts.attempts + 1,
       history = turn_attempts.history
                 || jsonb_build_object('at', now(), 'error', $3::text)
RETURNING attempts
