import { useEffect, useState } from 'react';
import type { ChatState, Item } from '../protocol';
import { formatCost } from '../api';

function Countdown({ expiresAt }: { expiresAt: string }) {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(timer);
  }, []);
  const left = Math.max(0, Math.round((Date.parse(expiresAt) - now) / 1000));
  const text = left > 0 ? `${Math.floor(left / 60)}:${String(left % 60).padStart(2, '0')} left` : 'expired';
  return (
    <span className="countdown" aria-live="off">
      {text}
    </span>
  );
}

function ItemView({
  item,
  onAnswer,
  onRate,
}: {
  item: Item;
  onAnswer?: (interruptId: string, approved: boolean) => void;
  onRate?: (turnId: string, up: boolean) => void;
}) {
  switch (item.kind) {
    case 'user':
      return (
        <div className="msg user">
          <span className="who">You</span>
          <p>{item.content}</p>
        </div>
      );
    case 'text':
      return (
        <div className="msg assistant" data-turn={item.turnId}>
          <span className="who">{item.agent}</span>
          <p>{item.content}</p>
        </div>
      );
    case 'tool':
      return (
        <div className="card tool" data-testid="tool-card">
          <strong>{item.tool}</strong> <code>{JSON.stringify(item.args)}</code>{' '}
          <span className={item.ok === null ? 'muted' : item.ok ? 'ok' : 'bad'}>
            {item.ok === null ? 'running…' : item.ok ? '✓ ok' : '✗ failed'}
          </span>
          <span className="muted"> · {item.agent}</span>
        </div>
      );
    case 'approval': {
      const pending = item.status === 'pending';
      return (
        <div className="card approval" data-testid="approval-card" role="group" aria-label={`Approval for ${item.action}`}>
          <div>
            <strong>Approval needed: {item.action}</strong>{' '}
            {pending ? <Countdown expiresAt={item.expiresAt} /> : <span className="muted">{item.status}</span>}
          </div>
          <pre>{JSON.stringify(item.params, null, 2)}</pre>
          {pending && onAnswer && (
            <div className="row">
              <button type="button" className="primary" onClick={() => onAnswer(item.interruptId, true)}>
                Approve
              </button>
              <button type="button" onClick={() => onAnswer(item.interruptId, false)}>
                Reject
              </button>
            </div>
          )}
        </div>
      );
    }
    case 'notice':
      return (
        <div className={`notice ${item.level}`} role={item.level === 'error' ? 'alert' : undefined}>
          {item.text}
        </div>
      );
    case 'human':
      return (
        <div className="msg assistant human" data-testid="human-message">
          <span className="who">{item.operator}</span>
          <p>{item.content}</p>
        </div>
      );
    case 'usage':
      return (
        <div className="usage muted" data-testid="usage">
          {item.cancelled && <strong data-testid="stopped">Stopped · </strong>}
          {item.usage.prompt_tokens} + {item.usage.completion_tokens} tokens · {formatCost(item.usage.cost_usd)}
          {onRate && (
            <span className="rate">
              {' '}
              <button type="button" aria-label="Good reply" onClick={() => onRate(item.turnId, true)}>
                👍
              </button>
              <button type="button" aria-label="Bad reply" onClick={() => onRate(item.turnId, false)}>
                👎
              </button>
            </span>
          )}
        </div>
      );
  }
}

export function ChatView({
  state,
  onAnswer,
  onRate,
}: {
  state: ChatState;
  /** Answers an approval card; without it (an operator watching) the cards have no buttons. */
  onAnswer?: (interruptId: string, approved: boolean) => void;
  /** Thumbs on a reply (SPEC §7): shown only when given. */
  onRate?: (turnId: string, up: boolean) => void;
}) {
  return (
    <div className="transcript" aria-live="polite" data-testid="transcript">
      {state.items.length === 0 && <p className="muted">Ask about an order, an invoice or our policies.</p>}
      {state.items.map((item) => (
        <ItemView key={item.key} item={item} onAnswer={onAnswer} onRate={onRate} />
      ))}
      {state.busy && <p className="muted typing">…</p>}
    </div>
  );
}
