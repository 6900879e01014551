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

-- Analytics: conversations created in a range, with what the rates need (index-only scans).
CREATE INDEX threads_created_at_idx ON threads (created_at)
    INCLUDE (messages, status, escalated_at);
-- Analytics: turns completed in a range, with their usage and timings (index-only scans).
CREATE INDEX turns_completed_analytics_idx ON turns (completed_at)
    INCLUDE (received_at, started_at, kind, outcome, prompt_tokens, completion_tokens, cost_usd);
-- Analytics: user messages received in a range.
CREATE INDEX turns_messages_received_idx ON turns (received_at) WHERE kind = 'message';
-- Analytics: each agent's share of the turns completed in a range.
CREATE INDEX turn_agents_completed_analytics_idx ON turn_agents (completed_at)
    INCLUDE (agent, in_seq, prompt_tokens, completion_tokens, cost_usd, duration_ms);
