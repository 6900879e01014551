-- Two indexes that no query needs, written on every turn (issue 10; BENCHMARKS.md, "PostgreSQL per
-- turn: profile"):
-- - `turns_completed_at_idx (completed_at)`: every query with a `completed_at` range is served by
--   `turns_usage_idx (completed_at) INCLUDE (...)`, the same key, or by the latency indexes;
-- - `threads_last_active_at_idx (last_active_at)`: the retention sweep's `last_active_at < ...
--   ORDER BY last_active_at LIMIT n` walks `threads_last_active_idx (last_active_at DESC, id DESC)`
--   backwards. A turn's commit changes `last_active_at`, so it inserts into every index of
--   `threads`.
DROP INDEX IF EXISTS turns_completed_at_idx;
DROP INDEX IF EXISTS threads_last_active_at_idx;
