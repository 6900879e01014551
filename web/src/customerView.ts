// What the customer sees of a conversation (SPEC §7): the protocol state (protocol.ts) keeps every
// frame for the operator console; this turns it into the customer's transcript, with no tool
// names, raw JSON, token counts, costs or agent internals. Pure and testable.
import type { ChatState, Item } from './protocol';

export type ApprovalStatus = Extract<Item, { kind: 'approval' }>['status'];

export type CustomerEntry =
  | { kind: 'you'; key: string; content: string }
  /** The assistant's words; `turnId` names the reply for thumbs once its turn is over. */
  | { kind: 'reply'; key: string; turnId: string; content: string; rateable: boolean }
  | { kind: 'person'; key: string; name: string; content: string }
  | { kind: 'confirm'; key: string; interruptId: string; question: string; status: ApprovalStatus }
  | { kind: 'info'; key: string; level: 'info' | 'error'; text: string }
  | { kind: 'stopped'; key: string };

/** "cancel_order" / "createShipment" → "Cancel order" / "Create shipment". */
export function humanize(name: string): string {
  const words = name
    .replace(/([a-z0-9])([A-Z])/g, '$1 $2')
    .split(/[\s_\-.]+/)
    .filter(Boolean)
    .map((word) => word.toLowerCase());
  if (words.length === 0) return 'Go ahead';
  const text = words.join(' ');
  return text[0].toUpperCase() + text.slice(1);
}

function field(params: unknown, name: string): string | null {
  if (!params || typeof params !== 'object') return null;
  const value = (params as Record<string, unknown>)[name];
  return typeof value === 'string' || typeof value === 'number' ? String(value) : null;
}

/** The question a customer is asked to confirm an action that needs approval. */
export function confirmQuestion(action: string, params: unknown): string {
  const order = field(params, 'order_id');
  switch (action) {
    case 'cancel_order':
      return order ? `Cancel order ${order}?` : 'Cancel this order?';
    case 'request_refund': {
      const amount = field(params, 'amount');
      const what = order ? `order ${order}` : 'this order';
      return amount ? `Refund $${amount} for ${what}?` : `Refund ${what}?`;
    }
    default:
      return `${humanize(action)}${order ? ` for order ${order}` : ''}?`;
  }
}

/** What an approval's status says to the customer once it is answered. */
export function confirmStatusText(status: ApprovalStatus): string {
  switch (status) {
    case 'pending':
      return '';
    case 'approved':
      return 'Confirmed.';
    case 'rejected':
      return 'Kept as it is.';
    case 'expired':
      return 'This request expired: ask again if you still want it.';
    case 'withdrawn':
      return 'Withdrawn.';
  }
}

/** An error notice (`code: message`) in the customer's words. */
export function customerErrorText(text: string): string {
  const code = /^([a-z_]+):/.exec(text)?.[1] ?? '';
  switch (code) {
    case 'rate_limited':
      return 'You are sending messages very quickly. Please wait a moment and try again.';
    case 'busy':
      return 'We could not take your message just now. Please try again.';
    case 'session_expired':
      return 'This conversation has expired. Please start a new one.';
    case 'content_too_long':
      return 'That message is too long. Please shorten it.';
    case 'processing_failed':
      return 'Sorry, we could not answer that message. Our team has been notified.';
    default:
      return 'Sorry, something went wrong. Please try again.';
  }
}

/** The customer's transcript of a conversation. */
export function customerEntries(state: ChatState): CustomerEntry[] {
  // Turns that are over (a `message_complete` arrived or the history says so): their replies
  // can be rated.
  const finished = new Set<string>();
  for (const item of state.items) if (item.kind === 'usage') finished.add(item.turnId);
  // The last text of each turn carries the thumbs.
  const lastText = new Map<string, string>();
  for (const item of state.items) if (item.kind === 'text' && item.content.trim()) lastText.set(item.turnId, item.key);

  const entries: CustomerEntry[] = [];
  for (const item of state.items) {
    switch (item.kind) {
      case 'user':
        entries.push({ kind: 'you', key: item.key, content: item.content });
        break;
      case 'text':
        if (!item.content.trim()) break;
        entries.push({
          kind: 'reply',
          key: item.key,
          turnId: item.turnId,
          content: item.content,
          rateable: finished.has(item.turnId) && lastText.get(item.turnId) === item.key,
        });
        break;
      case 'human':
        entries.push({ kind: 'person', key: item.key, name: item.operator, content: item.content });
        break;
      case 'approval':
        entries.push({
          kind: 'confirm',
          key: item.key,
          interruptId: item.interruptId,
          question: confirmQuestion(item.action, item.params),
          status: item.status,
        });
        break;
      case 'notice':
        entries.push({
          kind: 'info',
          key: item.key,
          level: item.level,
          text: item.level === 'error' ? customerErrorText(item.text) : item.text,
        });
        break;
      case 'usage':
        if (item.cancelled) entries.push({ kind: 'stopped', key: item.key });
        break;
      case 'tool':
        break; // Internals: the operator console shows them.
    }
  }
  return entries;
}

/** The line under the chat's title about who answers (SPEC §7 handoff state). */
export function handoffStatus(state: ChatState): string | null {
  if (state.resolved) return null;
  switch (state.handoff ?? 'ai') {
    case 'waiting':
      return 'Waiting for a person…';
    case 'human':
      return `${state.operator ?? 'A support agent'} joined`;
    default:
      return null;
  }
}
