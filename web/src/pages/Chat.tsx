import { FormEvent, useCallback, useEffect, useRef, useState } from 'react';
import { request } from '../api';
import { safeStorage } from '../storage';
import { ChatClient, socketUrl } from '../chatClient';
import {
  addUserMessage,
  answerApproval,
  applyFrame,
  cancelFrame,
  emptyChat,
  fromHistory,
  type ChatState,
  type Frame,
  type History,
} from '../protocol';
import { CustomerView } from './CustomerView';
import { handoffStatus } from '../customerView';

const THREAD_KEY = 'chatThread';

interface Thread {
  threadId: string;
  token: string;
}

function loadThread(): Thread | null {
  try {
    const raw = safeStorage.get(THREAD_KEY);
    return raw ? (JSON.parse(raw) as Thread) : null;
  } catch {
    return null;
  }
}

function newId(): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, '0')).join('');
}

declare global {
  interface Window {
    __chat?: { dropSocket(): void; state(): ChatState; thread(): Thread | null; connections(): number };
  }
}

/** The customer chat (`/`, and `/embed` inside another site's iframe: `embedded`). */
export function Chat({ embedded = false }: { embedded?: boolean }) {
  const [thread, setThread] = useState<Thread | null>(loadThread);
  const [state, setState] = useState<ChatState>(emptyChat);
  const [connected, setConnected] = useState(false);
  const [everConnected, setEverConnected] = useState(false);
  const [problem, setProblem] = useState('');
  const [draft, setDraft] = useState('');
  const [rated, setRated] = useState<number | null>(null);
  const [notice, setNotice] = useState('');
  const stateRef = useRef(state);
  stateRef.current = state;
  const clientRef = useRef<ChatClient | null>(null);

  useEffect(() => {
    if (!thread) return;
    let cancelled = false;
    let client: ChatClient | null = null;
    (async () => {
      let initial = emptyChat;
      try {
        const history = await request<History>(`/api/threads/${encodeURIComponent(thread.threadId)}/messages`, {
          bearer: thread.token,
        });
        initial = fromHistory(history);
      } catch (error) {
        const status = (error as { status?: number }).status;
        if (status === 401 || status === 404) {
          safeStorage.remove(THREAD_KEY);
          if (!cancelled) setThread(null);
          return;
        }
        setProblem(`Could not load the history: ${(error as Error).message}`);
      }
      if (cancelled) return;
      stateRef.current = initial;
      setState(initial);
      client = new ChatClient(socketUrl(), thread, () => stateRef.current.lastSeq, {
        onFrame: (frame: Frame) => {
          // `accepted` also answers feedback and `request_human`, which start no reply: the page
          // marks itself busy when it sends a message or an answer instead.
          if (frame.type === 'accepted') return;
          const next = applyFrame(stateRef.current, frame);
          stateRef.current = next;
          setState(next);
        },
        onStatus: (up) => {
          setConnected(up);
          if (up) setEverConnected(true);
        },
      });
      clientRef.current = client;
      client.connect();
    })();
    window.__chat = {
      dropSocket: () => clientRef.current?.drop(),
      state: () => stateRef.current,
      thread: () => thread,
      connections: () => clientRef.current?.opened ?? 0,
    };
    return () => {
      cancelled = true;
      client?.close();
      clientRef.current = null;
    };
  }, [thread]);

  const start = useCallback(async () => {
    setProblem('');
    try {
      const created = await request<{ thread_id: string; token: string }>('/api/threads', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: '{}',
      });
      const next = { threadId: created.thread_id, token: created.token };
      safeStorage.set(THREAD_KEY, JSON.stringify(next));
      setState(emptyChat);
      setRated(null);
      setEverConnected(false);
      setNotice('');
      setThread(next);
    } catch (error) {
      setProblem(`Could not start a conversation: ${(error as Error).message}`);
    }
  }, []);

  const send = (event: FormEvent) => {
    event.preventDefault();
    const content = draft.trim();
    if (!content || !clientRef.current) return;
    const messageId = newId();
    if (!clientRef.current.send({ type: 'message', content, message_id: messageId })) return;
    const next = addUserMessage(stateRef.current, content, messageId);
    stateRef.current = next;
    setState(next);
    setDraft('');
  };

  const stop = () => {
    clientRef.current?.send(cancelFrame());
  };

  const erase = async () => {
    if (!thread) return;
    if (!window.confirm('Delete this conversation? Its messages are erased everywhere and cannot be restored.')) return;
    setProblem('');
    try {
      await request<null>(`/api/threads/${encodeURIComponent(thread.threadId)}`, { method: 'DELETE', bearer: thread.token });
    } catch (error) {
      const status = (error as { status?: number }).status;
      if (status !== 404 && status !== 401) {
        setProblem(`Could not delete the conversation: ${(error as Error).message}`);
        return;
      }
    }
    safeStorage.remove(THREAD_KEY);
    stateRef.current = emptyChat;
    setState(emptyChat);
    setThread(null);
    setProblem('');
    setNotice('The conversation was deleted.');
  };

  const rate = (turnId: string, up: boolean) =>
    clientRef.current?.send({ type: 'feedback', turn_id: turnId, rating: up ? 'up' : 'down' }) ?? false;

  const rateConversation = (score: number) => {
    if (clientRef.current?.send({ type: 'feedback', score })) setRated(score);
  };

  const askForPerson = () => {
    clientRef.current?.send({ type: 'request_human' });
  };

  const answer = (interruptId: string, approved: boolean) => {
    if (!clientRef.current?.send({ type: 'interrupt_response', interrupt_id: interruptId, approved })) return;
    const next = answerApproval(stateRef.current, interruptId, approved);
    stateRef.current = next;
    setState(next);
  };

  return (
    <section aria-labelledby="chat-title" className={embedded ? 'chat embedded' : 'chat'}>
      <div className="row spread">
        <h1 id="chat-title">{embedded ? 'Support' : 'Chat'}</h1>
        <button type="button" onClick={start}>
          {thread ? 'New conversation' : 'Start a conversation'}
        </button>
      </div>
      {notice && (
        <p className="notice info" role="status" data-testid="chat-notice">
          {notice}
        </p>
      )}
      {problem && (
        <p className="notice error" role="alert">
          {problem}
        </p>
      )}
      {thread && !connected && (
        <p className="banner" role="status" data-testid="offline-banner">
          {everConnected ? 'Connection lost — reconnecting…' : 'Connecting…'}
        </p>
      )}
      {thread ? (
        <>
          {handoffStatus(state) && (
            <p className="handoff-status" role="status" data-testid="handoff-status">
              {handoffStatus(state)}
            </p>
          )}
          <CustomerView state={state} onAnswer={answer} onRate={rate} />
          {state.resolved && (
            <div className="card csat" data-testid="csat" role="group" aria-label="Rate this conversation">
              {rated === null ? (
                <>
                  <span>How did we do? </span>
                  {[1, 2, 3, 4, 5].map((score) => (
                    <button key={score} type="button" aria-label={`${score} out of 5`} onClick={() => rateConversation(score)}>
                      {score}
                    </button>
                  ))}
                </>
              ) : (
                <span>Thank you for your feedback ({rated}/5).</span>
              )}
            </div>
          )}
          <form onSubmit={send} className="composer">
            <label htmlFor="chat-input" className="sr-only">
              Message
            </label>
            <input
              id="chat-input"
              value={draft}
              onChange={(event) => setDraft(event.target.value)}
              placeholder="Type a message"
              maxLength={10000}
              autoComplete="off"
            />
            {state.busy && (
              <button type="button" onClick={stop} disabled={!connected} data-testid="stop">
                Stop
              </button>
            )}
            <button type="submit" className="primary" disabled={!connected || !draft.trim()}>
              Send
            </button>
            <button
              type="button"
              onClick={askForPerson}
              disabled={!connected || (state.handoff ?? 'ai') !== 'ai'}
              data-testid="talk-to-person"
            >
              Talk to a person
            </button>
          </form>
          <div className="row end">
            <button type="button" className="link danger" onClick={() => void erase()} data-testid="delete-conversation">
              Delete this conversation
            </button>
          </div>
        </>
      ) : (
        <p>Start a conversation to talk to the support agents.</p>
      )}
    </section>
  );
}
