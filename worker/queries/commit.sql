-- Store::commit (grouped, worker/src/store/group.rs): advances each thread of the batch past
-- its turn and records the turn, with each agent's share, in one statement and one transaction,
-- a row only if its lease (thread, epoch, $7) is still the current one. Returns the threads
-- whose rows were written; a thread not returned was fenced. A thread appears at most once.
-- The parameters are arrays, one element a turn (`CommitRow`, worker/src/store/turns.rs), in
-- order, except $7 (this worker, the holder of every lease of the batch). It runs on connections
-- with sequential scans off (`GROUP_SETTINGS`): each row of the batch is one probe of
-- `threads_pkey`, whatever the size of the table (on a small one, a generic plan would
-- otherwise hash the batch with all of `threads`):
--  $1 thread_id  $2 epoch  $3 in_seq  $4 last_seq  $5 status  $6 release  $7 owner  $8 turn_id
--  $9 message_id  $10 kind  $11 content  $12 reply  $13 first_seq  $14 prompt_tokens
--  $15 completion_tokens  $16 cost_usd  $17 received_at  $18 started_at  $19 pending_interrupt
--  $20 outcome  $21 agents (each a JSON array of names)  $22 events (JSON)  $23 escalated;
--  the shares, flattened: $24 the turn's position in the batch (from 1), $25 the share's
--  position in its turn, $26..$31 its agent, prompt_tokens, completion_tokens, cost_usd,
--  tool_calls, duration_ms.
WITH r AS (
    SELECT *
      FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::text[], $6::bool[],
                  $8::uuid[], $9::text[], $10::text[], $11::text[], $12::text[], $13::int8[],
                  $14::int8[], $15::int8[], $16::float8[], $17::timestamptz[],
                  $18::timestamptz[], $19::uuid[], $20::text[], $21::text[], $22::text[],
                  $23::bool[])
           WITH ORDINALITY AS r(thread_id, epoch, in_seq, last_seq, status, release, turn_id,
                                message_id, kind, content, reply, first_seq, prompt_tokens,
                                completion_tokens, cost_usd, received_at, started_at,
                                pending_interrupt, outcome, agents, events, escalated, i)
),
advanced AS (
    UPDATE threads
       SET last_in_seq = r.in_seq,
           last_seq = GREATEST(threads.last_seq, r.last_seq),
           status = CASE WHEN r.status = 'resolved' AND (threads.escalated_at IS NOT NULL OR r.escalated)
                         THEN 'escalated' ELSE r.status END,
           last_active_at = CASE WHEN r.status <> 'expired' THEN now() ELSE threads.last_active_at END,
           lease_owner = CASE WHEN r.release THEN NULL ELSE threads.lease_owner END,
           lease_expires_at = CASE WHEN r.release THEN NULL ELSE threads.lease_expires_at END,
           pending_interrupt = r.pending_interrupt,
           title = COALESCE(threads.title, left(r.content, 200)),
           agents = threads.agents
                    || ARRAY(SELECT a FROM jsonb_array_elements_text(r.agents::jsonb)
                                           WITH ORDINALITY AS n(a, k)
                              WHERE a <> ALL(threads.agents) ORDER BY k),
           messages = threads.messages + CASE WHEN r.kind = 'message' THEN 1 ELSE 0 END,
           prompt_tokens = threads.prompt_tokens + r.prompt_tokens,
           completion_tokens = threads.completion_tokens + r.completion_tokens,
           cost_usd = threads.cost_usd + r.cost_usd,
           escalated_at = CASE WHEN r.escalated THEN COALESCE(threads.escalated_at, now())
                               ELSE threads.escalated_at END,
           -- escalate_to_human asks for a human, as `request_human` does (SPEC §7).
           handoff_state = CASE WHEN r.escalated AND threads.handoff_state = 'ai' THEN 'waiting'
                                ELSE threads.handoff_state END,
           waiting_since = CASE WHEN r.escalated AND threads.handoff_state = 'ai' THEN now()
                                ELSE threads.waiting_since END,
           first_waiting_at = CASE WHEN r.escalated THEN COALESCE(threads.first_waiting_at, now())
                                   ELSE threads.first_waiting_at END
      FROM r
     WHERE threads.id = r.thread_id AND threads.lease_epoch = r.epoch
       AND threads.lease_owner = $7 AND threads.last_in_seq < r.in_seq
 RETURNING r.i
),
turn AS (
    INSERT INTO turns (thread_id, in_seq, turn_id, message_id, kind, content, reply,
                       first_seq, last_seq, prompt_tokens, completion_tokens, cost_usd,
                       received_at, started_at, outcome, agents, events)
    SELECT r.thread_id, r.in_seq, r.turn_id, r.message_id, r.kind, r.content, r.reply,
           r.first_seq, r.last_seq, r.prompt_tokens, r.completion_tokens, r.cost_usd,
           r.received_at, r.started_at, r.outcome,
           ARRAY(SELECT a FROM jsonb_array_elements_text(r.agents::jsonb) WITH ORDINALITY AS n(a, k)
                  ORDER BY k),
           r.events::jsonb
      FROM r JOIN advanced USING (i)
 RETURNING thread_id
),
shares AS (
    INSERT INTO turn_agents (thread_id, in_seq, position, agent, prompt_tokens,
                             completion_tokens, cost_usd, tool_calls, duration_ms)
    SELECT r.thread_id, r.in_seq, s.position, s.agent, s.prompt, s.completion, s.cost, s.tools,
           s.ms
      FROM unnest($24::int8[], $25::int2[], $26::text[], $27::int8[], $28::int8[],
                  $29::float8[], $30::int4[], $31::int8[])
           AS s(i, position, agent, prompt, completion, cost, tools, ms)
      JOIN advanced USING (i)
      JOIN r USING (i)
)
SELECT thread_id AS "thread_id!" FROM turn
