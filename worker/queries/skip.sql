-- Store::skip: advances the thread ($1) past a message that cannot be a turn, with no row, only
-- if the lease ($2 epoch, $4 owner) is still the current one; $5 releases it.
UPDATE threads SET last_in_seq = $3,
       lease_owner = CASE WHEN $5 THEN NULL ELSE lease_owner END,
       lease_expires_at = CASE WHEN $5 THEN NULL ELSE lease_expires_at END
 WHERE id = $1 AND lease_epoch = $2 AND lease_owner = $4 AND last_in_seq < $3
