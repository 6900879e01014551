import { FormEvent, useContext, useEffect, useRef, useState } from 'react';
import { getOperatorToken, jsonBody, operator } from '../api';
import { ChatClient, socketUrl } from '../chatClient';
import { operatorActions } from '../consoleLogic';
import { applyFrame, emptyChat, type ChatState, type Frame } from '../protocol';
import { follow } from '../router';
import { ChatView } from './ChatView';
import { OperatorContext } from './OperatorGate';

function newId(): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, '0')).join('');
}

const STATE_TEXT = { ai: 'The AI answers', waiting: 'Waiting for a person', human: 'With a person' } as const;

/**
 * One conversation, live, as an operator sees it: `resume` on /ws with the operator token (read
 * only) replays the retained frames, then live ones, internals included. Join, reply, leave and
 * resolve go through the operator API; their effects come back as frames.
 */
export function Conversation({ id }: { id: string }) {
  const me = useContext(OperatorContext);
  const [state, setState] = useState<ChatState>(emptyChat);
  const [connected, setConnected] = useState(false);
  const [problem, setProblem] = useState('');
  const [draft, setDraft] = useState('');
  const [pending, setPending] = useState(false);
  const stateRef = useRef(state);
  stateRef.current = state;

  useEffect(() => {
    stateRef.current = emptyChat;
    setState(emptyChat);
    const client = new ChatClient(socketUrl(), { threadId: id, token: getOperatorToken() }, () => stateRef.current.lastSeq, {
      onFrame: (frame: Frame) => {
        if (frame.type === 'error' && !('seq' in frame)) {
          // Not a thread frame: this socket's own problem (e.g. a revoked token).
          setProblem(`${frame.code}: ${frame.message}`);
          return;
        }
        const next = applyFrame(stateRef.current, frame);
        stateRef.current = next;
        setState(next);
      },
      onStatus: setConnected,
    });
    client.connect();
    return () => client.close();
  }, [id]);

  const handoff = state.handoff ?? 'ai';
  const actions = operatorActions(handoff, state.operator, me?.name ?? null);

  const act = async (what: 'join' | 'leave' | 'resolve') => {
    setProblem('');
    setPending(true);
    try {
      await operator(`/api/operator/conversations/${encodeURIComponent(id)}/${what}`, { method: 'POST' });
    } catch (e) {
      setProblem(`Could not ${what}: ${(e as Error).message}`);
    } finally {
      setPending(false);
    }
  };

  const reply = async (event: FormEvent) => {
    event.preventDefault();
    const content = draft.trim();
    if (!content) return;
    setProblem('');
    setPending(true);
    try {
      await operator(`/api/operator/conversations/${encodeURIComponent(id)}/messages`, jsonBody({ content, message_id: newId() }));
      setDraft('');
    } catch (e) {
      setProblem(`Could not send: ${(e as Error).message}`);
    } finally {
      setPending(false);
    }
  };

  return (
    <section aria-labelledby="conversation-title" className="chat">
      <p className="small">
        <a href="/console" onClick={(e) => follow(e, '/console')}>
          ← Inbox
        </a>
      </p>
      <div className="row spread">
        <h1 id="conversation-title">Conversation {id}</h1>
        <span className={`badge state-${handoff}`} data-testid="handoff-state" data-state={handoff}>
          {STATE_TEXT[handoff]}
          {handoff === 'human' && state.operator ? `: ${state.operator}` : ''}
          {state.resolved ? ' · resolved' : ''}
        </span>
      </div>
      {!connected && (
        <p className="banner" role="status">
          Connecting…
        </p>
      )}
      {problem && (
        <p className="notice error" role="alert">
          {problem}
        </p>
      )}
      <div className="row">
        {actions.join && (
          <button type="button" className="primary" disabled={pending} onClick={() => void act('join')}>
            Join
          </button>
        )}
        {actions.leave && (
          <button type="button" disabled={pending} onClick={() => void act('leave')}>
            Leave
          </button>
        )}
        {actions.resolve && (
          <button type="button" disabled={pending} onClick={() => void act('resolve')}>
            Resolve
          </button>
        )}
      </div>
      <ChatView state={state} />
      {actions.reply ? (
        <form onSubmit={reply} className="composer">
          <label htmlFor="operator-reply" className="sr-only">
            Reply
          </label>
          <input
            id="operator-reply"
            value={draft}
            onChange={(event) => setDraft(event.target.value)}
            placeholder="Reply to the customer"
            maxLength={10000}
            autoComplete="off"
          />
          <button type="submit" className="primary" disabled={pending || !draft.trim()}>
            Send reply
          </button>
        </form>
      ) : (
        <p className="muted small">Join the conversation to reply to the customer.</p>
      )}
    </section>
  );
}
