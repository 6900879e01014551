import { useEffect, useRef, useState } from 'react';
import { operator } from '../api';
import { formatWait, type InboxEntry } from '../consoleLogic';
import { conversationPath, follow } from '../router';

/** How often the inbox asks the server again (it is one indexed query). */
const POLL_MS = 2000;

/** The operator inbox: conversations waiting for a person (oldest first), then those held. Live. */
export function Inbox() {
  const [entries, setEntries] = useState<InboxEntry[] | null>(null);
  const [error, setError] = useState('');
  const [loadedAt, setLoadedAt] = useState<number>(0);
  const inFlight = useRef(false);

  useEffect(() => {
    let stopped = false;
    const load = async () => {
      if (inFlight.current || document.hidden) return;
      inFlight.current = true;
      try {
        const inbox = await operator<{ conversations: InboxEntry[] }>('/api/operator/inbox');
        if (stopped) return;
        setEntries(inbox.conversations);
        setLoadedAt(Date.now());
        setError('');
      } catch (e) {
        if (!stopped) setError((e as Error).message);
      } finally {
        inFlight.current = false;
      }
    };
    void load();
    const timer = setInterval(() => void load(), POLL_MS);
    const onVisible = () => void load();
    document.addEventListener('visibilitychange', onVisible);
    return () => {
      stopped = true;
      clearInterval(timer);
      document.removeEventListener('visibilitychange', onVisible);
    };
  }, []);

  return (
    <section aria-labelledby="inbox-title">
      <div className="row spread">
        <h1 id="inbox-title">Inbox</h1>
        <span className="muted small" aria-live="off">
          {loadedAt ? `Updated ${new Date(loadedAt).toLocaleTimeString()}` : 'Loading…'}
        </span>
      </div>
      {error && (
        <p className="notice error" role="alert">
          {error}
        </p>
      )}
      {entries && entries.length === 0 && <p className="muted">Nobody is waiting for a person.</p>}
      {entries && entries.length > 0 && (
        <div className="table-wrap">
          <table data-testid="inbox">
            <thead>
              <tr>
                <th scope="col">Conversation</th>
                <th scope="col">State</th>
                <th scope="col">Waiting</th>
                <th scope="col">Operator</th>
                <th scope="col">Last message</th>
              </tr>
            </thead>
            <tbody>
              {entries.map((entry) => (
                <tr key={entry.thread_id} data-thread={entry.thread_id} className={`inbox-${entry.state}`}>
                  <td>
                    <a href={conversationPath(entry.thread_id)} onClick={(e) => follow(e, conversationPath(entry.thread_id))}>
                      {entry.title ?? entry.thread_id}
                    </a>
                  </td>
                  <td>{entry.state === 'waiting' ? 'waiting' : 'with a person'}</td>
                  <td>{entry.state === 'waiting' ? formatWait(entry.waiting_ms) : ''}</td>
                  <td>{entry.operator?.name ?? '—'}</td>
                  <td className="last-message">{entry.last_message ?? ''}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
