import { describe, expect, it } from 'vitest';
import { applyFrame, emptyChat, fromHistory, type Frame } from './protocol';
import { confirmQuestion, customerEntries, customerErrorText, handoffStatus, humanize } from './customerView';
import { formatWait, operatorActions } from './consoleLogic';
import { route } from './router';

const usage = { prompt_tokens: 120, completion_tokens: 45, cost_usd: 0.0123 };

function play(frames: Frame[]) {
  return frames.reduce(applyFrame, emptyChat);
}

describe('customer view', () => {
  it('keeps replies and drops tools, raw arguments, token counts and costs', () => {
    const state = play([
      { type: 'user_message', thread_id: 't', seq: 1, turn_id: 't1', message_id: 'm1', content: 'Where is my order 1002?' },
      { type: 'tool_call', thread_id: 't', seq: 2, turn_id: 't1', agent: 'orders', tool: 'get_order_status', args: { order_id: '1002' } },
      { type: 'tool_result', thread_id: 't', seq: 3, turn_id: 't1', agent: 'orders', tool: 'get_order_status', ok: true },
      { type: 'token', thread_id: 't', seq: 4, turn_id: 't1', agent: 'orders', content: 'Order 1002 has shipped.' },
      { type: 'message_complete', thread_id: 't', seq: 5, turn_id: 't1', usage },
    ]);
    const entries = customerEntries(state);
    expect(entries.map((e) => e.kind)).toEqual(['you', 'reply']);
    const text = JSON.stringify(entries);
    for (const internal of ['get_order_status', 'orders', '120', '0.0123', 'order_id', 'tokens']) {
      expect(text).not.toContain(internal);
    }
    expect(entries[1]).toMatchObject({ kind: 'reply', turnId: 't1', content: 'Order 1002 has shipped.', rateable: true });
  });

  it('offers thumbs only once a turn is over, on its last reply', () => {
    const streaming = play([
      { type: 'token', thread_id: 't', seq: 1, turn_id: 't1', agent: 'orders', content: 'Part one.' },
      { type: 'token', thread_id: 't', seq: 2, turn_id: 't1', agent: 'billing', content: 'Part two.' },
    ]);
    expect(customerEntries(streaming).map((e) => e.kind === 'reply' && e.rateable)).toEqual([false, false]);
    const done = applyFrame(streaming, { type: 'message_complete', thread_id: 't', seq: 3, turn_id: 't1', usage });
    expect(customerEntries(done).map((e) => e.kind === 'reply' && e.rateable)).toEqual([false, true]);
  });

  it('asks a friendly question for an approval and says how it ended', () => {
    const state = play([
      {
        type: 'interrupt',
        thread_id: 't',
        seq: 1,
        turn_id: 't1',
        interrupt_id: 'i1',
        action: 'cancel_order',
        params: { order_id: '1003', reason: 'x' },
        expires_at: new Date(Date.now() + 60_000).toISOString(),
      },
    ]);
    expect(customerEntries(state)).toEqual([
      { kind: 'confirm', key: 'ii1', interruptId: 'i1', question: 'Cancel order 1003?', status: 'pending' },
    ]);
    expect(confirmQuestion('request_refund', { order_id: 1005, amount: 20 })).toBe('Refund $20 for order 1005?');
    expect(confirmQuestion('request_refund', { order_id: '1005' })).toBe('Refund order 1005?');
    expect(confirmQuestion('createShipment', { order_id: '7' })).toBe('Create shipment for order 7?');
    expect(humanize('delete_user-account')).toBe('Delete user account');
  });

  it('shows operators by name, the handoff state and a stopped turn', () => {
    let state = play([
      { type: 'handoff', thread_id: 't', seq: 1, turn_id: 'h1', state: 'waiting', operator: null },
    ]);
    expect(handoffStatus(state)).toBe('Waiting for a person…');
    state = applyFrame(state, { type: 'handoff', thread_id: 't', seq: 2, turn_id: 'h2', state: 'human', operator: { name: 'Alice' } });
    expect(state.operator).toBe('Alice');
    expect(handoffStatus(state)).toBe('Alice joined');
    state = applyFrame(state, { type: 'human_message', thread_id: 't', seq: 3, turn_id: 'h3', message_id: 'o1', operator: { name: 'Alice' }, content: 'Hi, I am Alice.' });
    state = applyFrame(state, { type: 'handoff', thread_id: 't', seq: 4, turn_id: 'h4', state: 'ai', operator: null, resolved: true });
    expect(state.resolved).toBe(true);
    expect(state.operator).toBeNull();
    expect(handoffStatus(state)).toBeNull();
    state = applyFrame(state, { type: 'token', thread_id: 't', seq: 5, turn_id: 't9', agent: 'general', content: 'Our shop…' });
    state = applyFrame(state, { type: 'message_complete', thread_id: 't', seq: 6, turn_id: 't9', usage, cancelled: true });
    const kinds = customerEntries(state).map((e) => e.kind);
    expect(kinds).toEqual(['info', 'info', 'person', 'info', 'reply', 'stopped']);
    expect(customerEntries(state)[2]).toMatchObject({ kind: 'person', name: 'Alice', content: 'Hi, I am Alice.' });
  });

  it('words errors for customers, without codes', () => {
    const state = play([{ type: 'error', thread_id: 't', seq: 1, turn_id: 't1', code: 'processing_failed', message: 'dead-lettered after 3 attempts: boom', retryable: false }]);
    const [entry] = customerEntries(state);
    expect(entry).toMatchObject({ kind: 'info', level: 'error' });
    expect(JSON.stringify(entry)).not.toContain('processing_failed');
    expect(JSON.stringify(entry)).not.toContain('boom');
    expect(customerErrorText('rate_limited: slow down')).toContain('wait a moment');
    expect(customerErrorText('whatever')).toBe('Sorry, something went wrong. Please try again.');
  });

  it('restored history has rateable replies and no usage figures', () => {
    const state = fromHistory({
      thread_id: 'th',
      status: 'open',
      last_seq: 4,
      messages: [
        { role: 'user', message_id: 'm1', turn_id: 't1', content: 'hi', at: '' },
        { role: 'assistant', turn_id: 't1', content: 'Hello!', outcome: 'completed', last_seq: 4, usage, at: '' },
      ],
      pending_approval: null,
    });
    expect(customerEntries(state)).toEqual([
      { kind: 'you', key: 'h0', content: 'hi' },
      { kind: 'reply', key: 'h1', turnId: 't1', content: 'Hello!', rateable: true },
    ]);
  });

  it('a reloaded page restores the handoff state, operator names and the CSAT prompt', () => {
    const base = {
      thread_id: 'th',
      status: 'escalated',
      last_seq: 9,
      messages: [
        { role: 'user' as const, message_id: 'm1', turn_id: 't1', content: 'a person please', at: '' },
        { role: 'operator' as const, message_id: 'op-1', turn_id: 't2', content: 'Hi, I am Alice.', operator: { name: 'Alice' }, last_seq: 9, at: '' },
      ],
      pending_approval: null,
    };
    const human = fromHistory({ ...base, handoff: { state: 'human', operator: { name: 'Alice' }, resolved: false } });
    expect(human.handoff).toBe('human');
    expect(human.operator).toBe('Alice');
    expect(handoffStatus(human)).toBe('Alice joined');
    expect(human.resolved).toBe(false);
    expect(customerEntries(human)).toContainEqual({ kind: 'person', key: 'h1', name: 'Alice', content: 'Hi, I am Alice.' });

    const waiting = fromHistory({ ...base, messages: base.messages.slice(0, 1), handoff: { state: 'waiting', operator: null, resolved: false } });
    expect(handoffStatus(waiting)).toBe('Waiting for a person…');

    const resolved = fromHistory({ ...base, status: 'resolved', handoff: { state: 'ai', operator: null, resolved: true } });
    expect(resolved.resolved).toBe(true);
    expect(handoffStatus(resolved)).toBeNull();
    // The names stay on the messages after the operator left.
    expect(customerEntries(resolved)).toContainEqual({ kind: 'person', key: 'h1', name: 'Alice', content: 'Hi, I am Alice.' });

    // An older edge (no `handoff`, no names): as before, the next `handoff` frame tells.
    const legacy = fromHistory({ ...base, messages: [{ ...base.messages[1], operator: undefined }] });
    expect(legacy.handoff).toBeUndefined();
    expect(handoffStatus(legacy)).toBeNull();
    expect(customerEntries(legacy)[0]).toMatchObject({ kind: 'person', name: 'Support' });
    // A live frame after the restore still applies on top (seq after `last_seq`).
    const next = applyFrame(human, { type: 'handoff', thread_id: 'th', turn_id: 't3', seq: 10, state: 'ai', operator: null, resolved: true } as Frame);
    expect(next.resolved).toBe(true);
    expect(handoffStatus(next)).toBeNull();
  });
});

describe('operator console logic', () => {
  it('formats waiting times', () => {
    expect(formatWait(null)).toBe('');
    expect(formatWait(4_200)).toBe('4 s');
    expect(formatWait(65_000)).toBe('1 min 5 s');
    expect(formatWait(3_700_000)).toBe('1 h 1 min');
  });

  it('offers the buttons that fit the state', () => {
    expect(operatorActions('waiting', null, 'Alice')).toEqual({ join: true, reply: false, leave: false, resolve: true });
    expect(operatorActions('human', 'Alice', 'Alice')).toEqual({ join: false, reply: true, leave: true, resolve: true });
    expect(operatorActions('human', 'Bob', 'Alice')).toEqual({ join: false, reply: false, leave: false, resolve: false });
    expect(operatorActions('ai', null, 'Alice')).toEqual({ join: true, reply: false, leave: false, resolve: true });
  });

  it('routes the customer chat, the embed page and the console', () => {
    expect(route('/')).toEqual({ page: 'chat' });
    expect(route('/embed')).toEqual({ page: 'embed' });
    expect(route('/console')).toEqual({ page: 'inbox' });
    expect(route('/console/')).toEqual({ page: 'inbox' });
    expect(route('/console/conversations/abc-1')).toEqual({ page: 'conversation', id: 'abc-1' });
    expect(route('/console/operators')).toEqual({ page: 'operators' });
    expect(route('/replay')).toEqual({ page: 'moved', to: '/console/replay' });
    expect(route('/anything')).toEqual({ page: 'chat' });
  });
});
