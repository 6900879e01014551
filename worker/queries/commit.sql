-- Store::commit: advances the thread past the turn and records it, with each agent's share, in
-- one statement, only if the lease ($1, $2, $7) is still the current one. Returns 1 if it wrote,
-- 0 if fenced. The parameters are the fields of `CommitRow` (worker/src/store/turns.rs), in order:
--  $1 thread_id  $2 epoch  $3 in_seq  $4 last_seq  $5 status  $6 release  $7 owner  $8 turn_id
--  $9 message_id  $10 kind  $11 content  $12 reply  $13 first_seq  $14 prompt_tokens
--  $15 completion_tokens  $16 cost_usd  $17 received_at  $18 started_at  $19 pending_interrupt
--  $20 outcome  $21 agents  $22 events  $23 escalated  $24..$29 the shares' agent,
--  prompt_tokens, completion_tokens, cost_usd, tool_calls, duration_ms.
WITH advanced AS (
    UPDATE threads
       SET last_in_seq = $3,
           last_seq = GREATEST(last_seq, $4),
           status = CASE WHEN $5 = 'resolved' AND (escalated_at IS NOT NULL OR $23)
                         THEN 'escalated' ELSE $5 END,
           last_active_at = CASE WHEN $5 <> 'expired' THEN now() ELSE last_active_at END,
           lease_owner = CASE WHEN $6 THEN NULL ELSE lease_owner END,
           lease_expires_at = CASE WHEN $6 THEN NULL ELSE lease_expires_at END,
           pending_interrupt = $19,
           title = COALESCE(title, left($11, 200)),
           agents = agents || ARRAY(SELECT a FROM unnest($21::text[]) WITH ORDINALITY AS n(a, i)
                                     WHERE a <> ALL(threads.agents) ORDER BY i),
           messages = messages + CASE WHEN $10 = 'message' THEN 1 ELSE 0 END,
           prompt_tokens = prompt_tokens + $14,
           completion_tokens = completion_tokens + $15,
           cost_usd = cost_usd + $16,
           escalated_at = CASE WHEN $23 THEN COALESCE(escalated_at, now()) ELSE escalated_at END,
           -- escalate_to_human asks for a human, as `request_human` does (SPEC §7).
           handoff_state = CASE WHEN $23 AND handoff_state = 'ai' THEN 'waiting' ELSE handoff_state END,
           waiting_since = CASE WHEN $23 AND handoff_state = 'ai' THEN now() ELSE waiting_since END,
           first_waiting_at = CASE WHEN $23 THEN COALESCE(first_waiting_at, now()) ELSE first_waiting_at END
     WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $7 AND last_in_seq < $3
 RETURNING id
),
turn AS (
    INSERT INTO turns (thread_id, in_seq, turn_id, message_id, kind, content, reply,
                       first_seq, last_seq, prompt_tokens, completion_tokens, cost_usd,
                       received_at, started_at, outcome, agents, events)
    SELECT id, $3, $8, $9, $10, $11, $12, $13, $4, $14, $15, $16, $17, $18, $20, $21, $22
      FROM advanced
 RETURNING thread_id, in_seq
),
shares AS (
    INSERT INTO turn_agents (thread_id, in_seq, position, agent, prompt_tokens,
                             completion_tokens, cost_usd, tool_calls, duration_ms)
    SELECT turn.thread_id, turn.in_seq, s.position, s.agent, s.prompt, s.completion,
           s.cost, s.tools, s.ms
      FROM turn,
           unnest($24::text[], $25::bigint[], $26::bigint[], $27::float8[], $28::int[],
                  $29::bigint[])
           WITH ORDINALITY AS s(agent, prompt, completion, cost, tools, ms, position)
)
SELECT count(*) AS "committed!" FROM turn
