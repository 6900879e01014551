import { useState } from 'react';
import type { ChatState } from '../protocol';
import { confirmStatusText, customerEntries, type CustomerEntry } from '../customerView';

function Thumbs({ turnId, onRate }: { turnId: string; onRate: (turnId: string, up: boolean) => boolean }) {
  const [given, setGiven] = useState<'up' | 'down' | null>(null);
  const rate = (up: boolean) => {
    if (onRate(turnId, up)) setGiven(up ? 'up' : 'down');
  };
  return (
    <span className="rate" data-testid="thumbs">
      <button type="button" aria-label="Good reply" aria-pressed={given === 'up'} onClick={() => rate(true)}>
        👍
      </button>
      <button type="button" aria-label="Bad reply" aria-pressed={given === 'down'} onClick={() => rate(false)}>
        👎
      </button>
      {given && <span className="muted small"> Thanks for the feedback</span>}
    </span>
  );
}

function EntryView({
  entry,
  onAnswer,
  onRate,
}: {
  entry: CustomerEntry;
  onAnswer: (interruptId: string, approved: boolean) => void;
  onRate: (turnId: string, up: boolean) => boolean;
}) {
  switch (entry.kind) {
    case 'you':
      return (
        <div className="msg user">
          <span className="who">You</span>
          <p>{entry.content}</p>
        </div>
      );
    case 'reply':
      return (
        <div className="msg assistant" data-turn={entry.turnId}>
          <span className="who">Assistant</span>
          <p>{entry.content}</p>
          {entry.rateable && <Thumbs turnId={entry.turnId} onRate={onRate} />}
        </div>
      );
    case 'person':
      return (
        <div className="msg assistant human" data-testid="human-message">
          <span className="who">{entry.name}</span>
          <p>{entry.content}</p>
        </div>
      );
    case 'confirm': {
      const pending = entry.status === 'pending';
      return (
        <div className="card approval" data-testid="confirm-card" role="group" aria-label={entry.question}>
          <p>
            <strong>{entry.question}</strong>
          </p>
          {pending ? (
            <div className="row">
              <button type="button" className="primary" onClick={() => onAnswer(entry.interruptId, true)}>
                Confirm
              </button>
              <button type="button" onClick={() => onAnswer(entry.interruptId, false)}>
                Keep it
              </button>
            </div>
          ) : (
            <span className="muted">{confirmStatusText(entry.status)}</span>
          )}
        </div>
      );
    }
    case 'info':
      return (
        <div className={`notice ${entry.level}`} role={entry.level === 'error' ? 'alert' : undefined}>
          {entry.text}
        </div>
      );
    case 'stopped':
      return (
        <div className="muted small" data-testid="stopped">
          Stopped
        </div>
      );
  }
}

/** The customer's transcript: replies, confirmations, people; no internals. */
export function CustomerView({
  state,
  onAnswer,
  onRate,
}: {
  state: ChatState;
  onAnswer: (interruptId: string, approved: boolean) => void;
  /** Thumbs on a reply; answers whether the feedback was sent. */
  onRate: (turnId: string, up: boolean) => boolean;
}) {
  const entries = customerEntries(state);
  return (
    <div className="transcript" aria-live="polite" data-testid="transcript">
      {entries.length === 0 && <p className="muted">Ask about an order, an invoice or our policies.</p>}
      {entries.map((entry) => (
        <EntryView key={entry.key} entry={entry} onAnswer={onAnswer} onRate={onRate} />
      ))}
      {state.busy && <p className="muted typing">…</p>}
    </div>
  );
}
