// The chat protocol's client state: server frames → view model, pure and testable.
// De-duplicates by `seq`, honours `turn_reset`, restores from the history API.
// The frames' types are generated from the Rust protocol types (docs/protocol.md).
import type { ClientFrame, HandoffState, OperatorRef, ServerFrame, ThreadFrame, Usage } from './generated/protocol';

export type { ClientFrame, ErrorCode, HandoffState, ServerFrame, ThreadFrame, Usage } from './generated/protocol';

export type Item =
  | { kind: 'user'; key: string; content: string; messageId?: string }
  | { kind: 'text'; key: string; turnId: string; agent: string; content: string; seq: number }
  | {
      kind: 'tool';
      key: string;
      turnId: string;
      agent: string;
      tool: string;
      args: unknown;
      ok: boolean | null;
      seq: number;
    }
  | {
      kind: 'approval';
      key: string;
      turnId: string;
      interruptId: string;
      action: string;
      params: unknown;
      expiresAt: string;
      status: 'pending' | 'approved' | 'rejected' | 'expired' | 'withdrawn';
      seq: number;
    }
  | { kind: 'notice'; key: string; turnId?: string; level: 'info' | 'error'; text: string; seq?: number }
  | { kind: 'usage'; key: string; turnId: string; usage: Usage; seq: number; cancelled?: boolean }
  /** A human operator's message (SPEC §7). */
  | { kind: 'human'; key: string; turnId: string; operator: string; content: string; seq?: number };

export interface ChatState {
  lastSeq: number;
  items: Item[];
  /** Turns in progress (accepted, not yet complete or paused). */
  busy: boolean;
  /** The handoff state, as the last `handoff` frame said (absent: `ai`). */
  handoff?: HandoffState;
  /** An operator resolved the conversation: the page may ask for a CSAT score. */
  resolved?: boolean;
  /** The name of the operator who joined, while the state is `human`. */
  operator?: string | null;
}

export const emptyChat: ChatState = { lastSeq: 0, items: [], busy: false };

/** What the customer is told when the handoff state changes. */
export function handoffText(state: HandoffState, operator: string | null, resolved: boolean): string {
  if (resolved) return 'This conversation has been resolved. Thank you!';
  switch (state) {
    case 'waiting':
      return 'We are finding a person to help you. You can keep writing in the meantime.';
    case 'human':
      return `${operator ?? 'A support agent'} has joined the conversation.`;
    case 'ai':
      return 'You are chatting with our assistant again.';
  }
}

/** A frame from the server: the edge's own (no `seq`) or a thread frame. */
export type Frame = ServerFrame | ThreadFrame;

/** A client frame as the page hands it to `ChatClient.send`, which adds `thread_id` and `token`. */
export type OutgoingFrame = ClientFrame extends infer F ? (F extends ClientFrame ? Omit<F, 'thread_id' | 'token'> : never) : never;

function keyOf(frame: Frame, suffix = ''): string {
  return `s${'seq' in frame ? frame.seq : 'x'}${suffix}`;
}

/** Apply one server frame. Frames with a `seq` already seen are ignored. */
export function applyFrame(state: ChatState, frame: Frame): ChatState {
  const seq: number | undefined = 'seq' in frame && typeof frame.seq === 'number' ? frame.seq : undefined;
  if (seq !== undefined && seq <= state.lastSeq) return state;
  const lastSeq = seq ?? state.lastSeq;
  const turnId: string = ('turn_id' in frame ? frame.turn_id : undefined) ?? '';
  let items = state.items;
  let busy = state.busy;
  let handoff = state.handoff;
  let resolved = state.resolved;
  let operator = state.operator;
  switch (frame.type) {
    case 'user_message':
      // This device shows its own messages at once; other devices learn them from this frame.
      if (!items.some((item) => item.kind === 'user' && item.messageId === frame.message_id)) {
        items = [...items, { kind: 'user', key: keyOf(frame), content: frame.content ?? '', messageId: frame.message_id }];
      }
      break;
    case 'human_message':
      items = [
        ...items,
        { kind: 'human', key: keyOf(frame), turnId, operator: frame.operator?.name ?? 'Support', content: frame.content ?? '', seq },
      ];
      break;
    case 'handoff': {
      const next: HandoffState = frame.state === 'waiting' || frame.state === 'human' ? frame.state : 'ai';
      handoff = next;
      resolved = !!frame.resolved;
      operator = next === 'human' ? (frame.operator?.name ?? null) : null;
      items = [
        ...items,
        { kind: 'notice', key: keyOf(frame), turnId, level: 'info', text: handoffText(next, frame.operator?.name ?? null, resolved), seq },
      ];
      break;
    }
    case 'accepted':
      busy = true;
      break;
    case 'token': {
      const last = items[items.length - 1];
      if (last && last.kind === 'text' && last.turnId === turnId && last.agent === frame.agent) {
        items = [...items.slice(0, -1), { ...last, content: last.content + frame.content, seq: seq ?? last.seq }];
      } else {
        items = [
          ...items,
          { kind: 'text', key: keyOf(frame), turnId, agent: frame.agent ?? '', content: frame.content ?? '', seq: seq ?? 0 },
        ];
      }
      break;
    }
    case 'tool_call':
      items = [
        ...items,
        { kind: 'tool', key: keyOf(frame), turnId, agent: frame.agent ?? '', tool: frame.tool, args: frame.args, ok: null, seq: seq ?? 0 },
      ];
      break;
    case 'tool_result': {
      // The latest unfinished card of this tool in this turn.
      let index = -1;
      for (let i = items.length - 1; i >= 0; i--) {
        const item = items[i];
        if (item.kind === 'tool' && item.turnId === turnId && item.tool === frame.tool && item.ok === null) {
          index = i;
          break;
        }
      }
      if (index >= 0) {
        const card = items[index] as Extract<Item, { kind: 'tool' }>;
        items = [...items.slice(0, index), { ...card, ok: !!frame.ok }, ...items.slice(index + 1)];
      }
      break;
    }
    case 'interrupt':
      busy = false;
      items = [
        ...items,
        {
          kind: 'approval',
          key: `i${frame.interrupt_id}`,
          turnId,
          interruptId: frame.interrupt_id,
          action: frame.action,
          params: frame.params,
          expiresAt: frame.expires_at,
          status: 'pending',
          seq: seq ?? 0,
        },
      ];
      break;
    case 'interrupt_expired':
      items = items.map((item) =>
        item.kind === 'approval' && item.interruptId === frame.interrupt_id ? { ...item, status: 'expired' as const } : item,
      );
      items = [...items, { kind: 'notice', key: keyOf(frame), turnId, level: 'info', text: frame.message ?? 'The approval expired.', seq }];
      break;
    case 'clarification':
      items = [...items, { kind: 'notice', key: keyOf(frame), turnId, level: 'info', text: frame.message ?? '', seq }];
      break;
    case 'turn_reset':
      items = resetTurn(items, turnId);
      break;
    case 'message_complete':
      busy = false;
      if (frame.cancelled === true) {
        // A cancelled turn's pending approval is withdrawn (SPEC §8).
        items = items.map((item) =>
          item.kind === 'approval' && item.turnId === turnId && item.status === 'pending' ? { ...item, status: 'withdrawn' as const } : item,
        );
      }
      items = [
        ...items,
        { kind: 'usage', key: keyOf(frame), turnId, usage: frame.usage, seq: seq ?? 0, cancelled: frame.cancelled === true || undefined },
      ];
      break;
    case 'error':
      busy = false;
      items = [
        ...items,
        {
          kind: 'notice',
          key: seq !== undefined ? keyOf(frame) : `e${items.length}-${frame.code}`,
          turnId: turnId || undefined,
          level: 'error',
          text: `${frame.code}: ${frame.message}`,
          seq,
        },
      ];
      break;
    default:
      break;
  }
  return { lastSeq, items, busy, handoff, resolved, operator };
}

/** Drop the current segment of `turnId`: its items after the turn's last approval card. */
export function resetTurn(items: Item[], turnId: string): Item[] {
  let cut = -1;
  for (let i = items.length - 1; i >= 0; i--) {
    const item = items[i];
    if (item.kind === 'approval' && item.turnId === turnId) {
      cut = i;
      break;
    }
  }
  return items.filter((item, index) => index <= cut || item.kind === 'user' || item.turnId !== turnId);
}

/** The user's own message, shown at once. */
export function addUserMessage(state: ChatState, content: string, messageId: string): ChatState {
  return { ...state, busy: true, items: [...state.items, { kind: 'user', key: `u${messageId}`, content, messageId }] };
}

/** The user pressed Stop: the turn in progress ends with a cancelled `message_complete`. */
export function cancelFrame(): OutgoingFrame {
  return { type: 'cancel' };
}

/** The user's answer to an approval card. */
export function answerApproval(state: ChatState, interruptId: string, approved: boolean): ChatState {
  return {
    ...state,
    busy: true,
    items: state.items.map((item) =>
      item.kind === 'approval' && item.interruptId === interruptId
        ? { ...item, status: approved ? ('approved' as const) : ('rejected' as const) }
        : item,
    ),
  };
}

export interface HistoryEntry {
  role: 'user' | 'assistant' | 'operator';
  message_id?: string;
  turn_id: string;
  content: string | null;
  /** On operator entries: who wrote it (absent from older edges). */
  operator?: OperatorRef | null;
  outcome?: string;
  last_seq?: number;
  usage?: Usage;
  at: string;
}

export interface History {
  thread_id: string;
  status: string;
  last_seq: number;
  messages: HistoryEntry[];
  pending_approval: {
    interrupt_id: string;
    turn_id: string;
    action: string;
    params: unknown;
    expires_at: string;
  } | null;
  /** The fields of the thread's last `handoff` frame (absent from older edges: `ai`). */
  handoff?: { state: HandoffState; operator: OperatorRef | null; resolved: boolean };
}

/** The state a restored page starts from; then it resumes after `last_seq`. */
export function fromHistory(history: History): ChatState {
  const items: Item[] = [];
  history.messages.forEach((entry, index) => {
    if (entry.role === 'user') {
      items.push({ kind: 'user', key: `h${index}`, content: entry.content ?? '', messageId: entry.message_id });
    } else if (entry.role === 'operator') {
      items.push({
        kind: 'human',
        key: `h${index}`,
        turnId: entry.turn_id,
        operator: entry.operator?.name ?? 'Support',
        content: entry.content ?? '',
      });
    } else {
      if (entry.content) {
        items.push({ kind: 'text', key: `h${index}`, turnId: entry.turn_id, agent: 'assistant', content: entry.content, seq: entry.last_seq ?? 0 });
      }
      if (entry.outcome === 'dead_lettered') {
        items.push({ kind: 'notice', key: `h${index}n`, turnId: entry.turn_id, level: 'error', text: 'This message could not be processed.' });
      }
      if (entry.usage && entry.outcome !== 'interrupted') {
        const cancelled = entry.outcome === 'cancelled' || undefined;
        items.push({ kind: 'usage', key: `h${index}u`, turnId: entry.turn_id, usage: entry.usage, seq: entry.last_seq ?? 0, cancelled });
      }
    }
  });
  const pending = history.pending_approval;
  if (pending) {
    items.push({
      kind: 'approval',
      key: `i${pending.interrupt_id}`,
      turnId: pending.turn_id,
      interruptId: pending.interrupt_id,
      action: pending.action,
      params: pending.params,
      expiresAt: pending.expires_at,
      status: 'pending',
      seq: history.last_seq,
    });
  }
  const restored: ChatState = { lastSeq: history.last_seq, items, busy: false };
  const handoff = history.handoff;
  if (handoff) {
    // What the last `handoff` frame set (applyFrame), without its notice: the page's status line
    // and CSAT prompt come back after a reload.
    const state: HandoffState = handoff.state === 'waiting' || handoff.state === 'human' ? handoff.state : 'ai';
    restored.handoff = state;
    restored.resolved = !!handoff.resolved;
    restored.operator = state === 'human' ? (handoff.operator?.name ?? null) : null;
  }
  return restored;
}

/** The text the assistant said in a turn, as the history API reports it. */
export function replyText(state: ChatState, turnId: string): string {
  return state.items
    .filter((item): item is Extract<Item, { kind: 'text' }> => item.kind === 'text' && item.turnId === turnId)
    .map((item) => item.content)
    .join('');
}
