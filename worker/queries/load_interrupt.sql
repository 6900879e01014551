-- Store::load_interrupt: approval $1, with its checkpoint.
SELECT turn_id, agent, action, params, checkpoint, expires_at,
       status AS "status: InterruptStatus", decided_in_seq
  FROM interrupts WHERE id = $1
