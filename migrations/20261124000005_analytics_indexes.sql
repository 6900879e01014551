-- Indexes for the admin API (SPEC §4): the conversation list, its text search, and the
-- analytics dashboard. Measured on 100,000 seeded conversations (BENCHMARKS.md, "Admin API").

-- The conversation list: newest activity first, ties broken by id; a cursor seeks into it.
CREATE INDEX threads_last_active_idx ON threads (last_active_at DESC, id DESC);
-- The same order within one status (`status=` filter).
CREATE INDEX threads_status_last_active_idx ON threads (status, last_active_at DESC, id DESC);

-- `q=`: full-text search over a conversation's user messages and replies. The 'simple'
-- configuration lowercases words and neither stems nor drops stop words, so it works the same
-- for every language and finds order numbers and ids as whole words. Queries must repeat this
-- expression exactly to use the index.
CREATE INDEX turns_text_search_idx ON turns
    USING GIN (to_tsvector('simple', coalesce(content, '') || ' ' || reply));

-- Analytics reads these covering indexes only (index-only scans), one range per bucket.
-- Conversations created, with what the rates need.
CREATE INDEX threads_created_analytics_idx ON threads (created_at)
    INCLUDE (messages, status, escalated_at);
-- User messages received.
CREATE INDEX turns_messages_received_idx ON turns (received_at) WHERE kind = 'message';
-- Usage of the turn rows completed (and how many are timed: not dead-lettered).
CREATE INDEX turns_usage_idx ON turns (completed_at)
    INCLUDE (outcome, prompt_tokens, completion_tokens, cost_usd);
-- Latency of the turn rows completed in a short window: its rows, sorted.
CREATE INDEX turns_latency_idx ON turns (completed_at)
    INCLUDE (received_at) WHERE outcome <> 'dead_lettered';
-- Latency in a long window: each percentile is one walk of this order to its rank, from the
-- nearer end, instead of a sort of every row.
CREATE INDEX turns_latency_order_idx ON turns ((completed_at - received_at))
    INCLUDE (completed_at, received_at) WHERE outcome <> 'dead_lettered';
-- Each agent's share of the turn rows completed.
CREATE INDEX turn_agents_analytics_idx ON turn_agents (completed_at)
    INCLUDE (agent, prompt_tokens, completion_tokens, cost_usd, tool_calls, duration_ms);
-- Each agent's running times in order: its 95th percentile is one walk to the rank.
CREATE INDEX turn_agents_duration_idx ON turn_agents (agent, duration_ms) INCLUDE (completed_at);
