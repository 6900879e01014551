-- Store::raise_interrupt, first: an approval an earlier attempt at the message ($1 thread,
-- $2 in_seq) raised and then failed was never the thread's pending approval.
UPDATE interrupts SET status = 'abandoned' WHERE thread_id = $1 AND in_seq = $2 AND status = 'pending'
