import { FormEvent, useCallback, useEffect, useRef, useState } from 'react';
import { admin, formatCost } from '../api';

interface Conversation {
  id: string;
  status: string;
  title: string | null;
  agents: string[];
  messages: number;
  prompt_tokens: number;
  completion_tokens: number;
  cost_usd: number;
  created_at: string;
  last_active_at: string;
  pending_approval: boolean;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type TimelineEvent = { type: string; [field: string]: any };

function describe(event: TimelineEvent): string {
  switch (event.type) {
    case 'user_message':
      return `User: ${event.content ?? '(no content)'}`;
    case 'approval_answer':
      return `Approval answer: ${JSON.stringify(event.decision)}`;
    case 'tool_call':
      return `Tool call ${event.tool ?? ''} ${JSON.stringify(event.args ?? {})}${event.agent ? ` by ${event.agent}` : ''}`;
    case 'tool_result':
      return `Tool result ${event.tool ?? ''}: ${event.ok === false ? 'failed' : 'ok'}${event.result?.summary ? ` — ${event.result.summary}` : ''}`;
    case 'interrupt':
      return `Approval requested: ${event.action ?? ''} ${JSON.stringify(event.params ?? {})}`;
    case 'classification': {
      const result = event.result ?? {};
      if (result.ambiguous) return `Classified as ambiguous${result.clarification ? `: ${result.clarification}` : ''}`;
      const intents = (result.intents ?? []) as { agent: string; confidence?: number }[];
      return `Classified: ${intents.map((i) => `${i.agent}${i.confidence !== undefined ? ` (${i.confidence})` : ''}`).join(', ') || 'none'}`;
    }
    case 'agent_reply':
      return `${event.agent} replied${event.tool_calls ? ` after ${event.tool_calls} tool call(s)` : ''}: ${event.content || '(no text)'}`;
    case 'error':
      return `Error ${event.code ?? ''}${event.message ? `: ${event.message}` : ''}`;
    case 'escalation':
      return `Escalated by ${event.agent}: ${event.reason}`;
    case 'decision':
      return `Decision: ${JSON.stringify(event.decision)}`;
    case 'turn_completed':
      return `Turn ${event.outcome}: ${event.reply ?? ''}`;
    case 'dead_lettered':
      return `Dead-lettered after ${event.attempts} attempts: ${event.reason}`;
    case 'replayed':
      return `Replayed (seq ${event.replay_seq ?? '?'})`;
    case 'cancel_request':
      return 'The user stopped the turn';
    case 'cancelled':
      return event.interrupt_id ? 'Cancelled: the pending approval was withdrawn' : 'Cancelled: the turn stopped here';
    default: {
      const { type, turn_id: _t, in_seq: _s, ...rest } = event;
      return `${type} ${JSON.stringify(rest)}`;
    }
  }
}

function Timeline({ id, onClose, onDeleted }: { id: string; onClose: () => void; onDeleted: (id: string) => void }) {
  const [events, setEvents] = useState<TimelineEvent[] | null>(null);
  const [error, setError] = useState('');
  const [current, setCurrent] = useState(0);
  useEffect(() => {
    setEvents(null);
    setCurrent(0);
    admin<{ events: TimelineEvent[] }>(`/api/admin/conversations/${encodeURIComponent(id)}/timeline`)
      .then((timeline) => setEvents(timeline.events))
      .catch((e: Error) => setError(e.message));
  }, [id]);
  useEffect(() => {
    document.getElementById(`event-${current}`)?.scrollIntoView?.({ block: 'nearest' });
  }, [current]);
  if (error) return <p className="notice error" role="alert">{error}</p>;
  if (!events) return <p className="muted">Loading the timeline…</p>;
  return (
    <section className="card" aria-labelledby="timeline-title">
      <div className="row spread">
        <h2 id="timeline-title">Timeline of {id}</h2>
        <div className="row">
          <button
            type="button"
            className="danger"
            data-testid="delete-conversation"
            onClick={() => {
              if (!window.confirm(`Delete conversation ${id} everywhere? This cannot be undone.`)) return;
              admin<null>(`/api/admin/conversations/${encodeURIComponent(id)}`, { method: 'DELETE' })
                .then(() => onDeleted(id))
                .catch((e: Error) => setError(e.message));
            }}
          >
            Delete conversation
          </button>
          <button type="button" onClick={onClose}>
            Close
          </button>
        </div>
      </div>
      <div className="row">
        <button type="button" onClick={() => setCurrent((c) => Math.max(0, c - 1))} disabled={current === 0}>
          ◀ Prev
        </button>
        <span aria-live="polite">
          Event {events.length ? current + 1 : 0} of {events.length}
        </span>
        <button type="button" onClick={() => setCurrent((c) => Math.min(events.length - 1, c + 1))} disabled={current >= events.length - 1}>
          Next ▶
        </button>
      </div>
      <ol className="timeline" data-testid="timeline">
        {events.map((event, index) => (
          <li
            key={index}
            id={`event-${index}`}
            className={`${index === current ? 'current' : ''} ev-${event.type}`}
            aria-current={index === current ? 'step' : undefined}
            onClick={() => setCurrent(index)}
          >
            <span className="tag">{event.type}</span> {describe(event)}
            <div className="muted small">
              {event.at ? new Date(event.at).toLocaleString() : ''}
              {event.latency_ms !== undefined && ` · ${event.latency_ms} ms (queue ${event.queue_ms} ms)`}
              {event.prompt_tokens !== undefined && ` · ${event.prompt_tokens}+${event.completion_tokens} tokens`}
              {event.cost_usd !== undefined && ` · ${formatCost(event.cost_usd)}`}
              {event.duration_ms !== undefined && ` · ${event.duration_ms} ms`}
            </div>
          </li>
        ))}
      </ol>
    </section>
  );
}

export function Replay() {
  const [status, setStatus] = useState('');
  const [agent, setAgent] = useState('');
  const [q, setQ] = useState('');
  const [rows, setRows] = useState<Conversation[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [error, setError] = useState('');
  const [loading, setLoading] = useState(false);
  const [selected, setSelected] = useState<string | null>(null);
  const [deleted, setDeleted] = useState<string | null>(null);
  // The search words the rows answer (`data-query` on the table: tests wait for it).
  const [shown, setShown] = useState('');
  // Only the latest request may set the rows: an earlier one answering late (the page's first,
  // unfiltered load after a filter was submitted) must not replace them.
  const latest = useRef(0);

  const load = useCallback(
    async (after: string | null) => {
      const ticket = ++latest.current;
      setLoading(true);
      setError('');
      const params = new URLSearchParams();
      if (status) params.set('status', status);
      if (agent) params.set('agent', agent);
      if (q.trim()) params.set('q', q.trim());
      if (after) params.set('cursor', after);
      params.set('limit', '25');
      try {
        const page = await admin<{ conversations: Conversation[]; next_cursor: string | null }>(`/api/admin/conversations?${params}`);
        if (ticket !== latest.current) return;
        setRows((old) => (after ? [...old, ...page.conversations] : page.conversations));
        setCursor(page.next_cursor);
        setShown(q.trim());
      } catch (e) {
        if (ticket === latest.current) setError((e as Error).message);
      } finally {
        if (ticket === latest.current) setLoading(false);
      }
    },
    [status, agent, q],
  );

  useEffect(() => {
    void load(null);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  const submit = (event: FormEvent) => {
    event.preventDefault();
    void load(null);
  };

  return (
    <section aria-labelledby="replay-title">
      <h1 id="replay-title">Replay</h1>
      <form onSubmit={submit} className="filters">
        <label>
          Status
          <select value={status} onChange={(e) => setStatus(e.target.value)}>
            <option value="">any</option>
            <option value="open">open</option>
            <option value="awaiting_approval">awaiting approval</option>
            <option value="resolved">resolved</option>
            <option value="escalated">escalated</option>
            <option value="expired">expired</option>
            <option value="failed">failed</option>
          </select>
        </label>
        <label>
          Agent
          <select value={agent} onChange={(e) => setAgent(e.target.value)}>
            <option value="">any</option>
            <option value="orders">orders</option>
            <option value="billing">billing</option>
            <option value="general">general</option>
          </select>
        </label>
        <label>
          Search
          <input value={q} onChange={(e) => setQ(e.target.value)} placeholder='words, "a phrase", -word' />
        </label>
        <button type="submit" className="primary">
          Filter
        </button>
      </form>
      {error && <p className="notice error" role="alert">{error}</p>}
      {deleted && (
        <p className="notice info" role="status" data-testid="deleted-notice">
          Conversation {deleted} was deleted.
        </p>
      )}
      {selected && (
        <Timeline
          id={selected}
          onClose={() => setSelected(null)}
          onDeleted={(id) => {
            setSelected(null);
            setDeleted(id);
            setRows((current) => current.filter((row) => row.id !== id));
          }}
        />
      )}
      {rows.length === 0 && !loading && !error ? (
        <p className="muted">No conversations match.</p>
      ) : (
        <div className="table-wrap">
          <table data-testid="conversations" data-query={shown} aria-busy={loading}>
            <thead>
              <tr>
                <th scope="col">Conversation</th>
                <th scope="col">Status</th>
                <th scope="col">Agents</th>
                <th scope="col">Msgs</th>
                <th scope="col">Cost</th>
                <th scope="col">Last active</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((row) => (
                <tr key={row.id} className={row.id === selected ? 'current' : ''}>
                  <td>
                    <button type="button" className="link" onClick={() => setSelected(row.id)}>
                      {row.title ?? row.id}
                    </button>
                  </td>
                  <td>
                    {row.status}
                    {row.pending_approval ? ' ⏳' : ''}
                  </td>
                  <td>{row.agents.join(', ')}</td>
                  <td>{row.messages}</td>
                  <td>{formatCost(row.cost_usd)}</td>
                  <td>{new Date(row.last_active_at).toLocaleString()}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {cursor && (
        <button type="button" onClick={() => void load(cursor)} disabled={loading}>
          Load more
        </button>
      )}
      {loading && <p className="muted">Loading…</p>}
    </section>
  );
}
