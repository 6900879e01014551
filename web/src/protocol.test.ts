import { describe, expect, it } from 'vitest';
import { addUserMessage, applyFrame, emptyChat, fromHistory, replyText, type ChatState, type Frame } from './protocol';

const T = 'turn-1';
const run = (frames: Frame[], state: ChatState = emptyChat) => frames.reduce(applyFrame, state);
const tok = (seq: number, content: string, agent = 'orders', turn_id = T): Frame => ({ type: 'token', thread_id: 't', seq, turn_id, agent, content });

describe('protocol state', () => {
  it('streams tokens into one bubble per agent and turn', () => {
    const state = run([{ type: 'accepted', thread_id: 't', message_id: 'm' }, tok(1, 'Hello '), tok(2, 'there'), tok(3, '!', 'billing')]);
    expect(state.items.map((i) => i.kind)).toEqual(['text', 'text']);
    expect(replyText(state, T)).toBe('Hello there!');
    expect(state.lastSeq).toBe(3);
    expect(state.busy).toBe(true);
  });

  it('ends a cancelled turn as stopped and withdraws its pending approval', () => {
    const state = run([
      { type: 'interrupt', thread_id: 't', seq: 1, turn_id: T, interrupt_id: 'i1', action: 'request_refund', params: {}, expires_at: '2030-01-01T00:00:00Z' },
      { type: 'message_complete', thread_id: 't', seq: 2, turn_id: T, usage: { prompt_tokens: 1, completion_tokens: 2, cost_usd: 0 }, cancelled: true },
    ]);
    expect(state.busy).toBe(false);
    expect(state.items[0]).toMatchObject({ kind: 'approval', status: 'withdrawn' });
    expect(state.items[1]).toMatchObject({ kind: 'usage', cancelled: true });
    const normal = run([{ type: 'message_complete', thread_id: 't', seq: 1, turn_id: T, usage: { prompt_tokens: 1, completion_tokens: 2, cost_usd: 0 } }]);
    expect(normal.items[0]).toMatchObject({ kind: 'usage', cancelled: undefined });
  });

  it('drops frames already seen (replays after a resume)', () => {
    const once = run([tok(1, 'a '), tok(2, 'b ')]);
    const again = run([tok(1, 'a '), tok(2, 'b '), tok(3, 'c')], once);
    expect(replyText(again, T)).toBe('a b c');
  });

  it('pairs tool results with their call', () => {
    const state = run([
      { type: 'tool_call', thread_id: 't', seq: 1, turn_id: T, agent: 'orders', tool: 'get_order_status', args: { order_id: '1002' } },
      { type: 'tool_result', thread_id: 't', seq: 2, turn_id: T, agent: 'orders', tool: 'get_order_status', ok: true },
    ]);
    expect(state.items).toHaveLength(1);
    expect(state.items[0]).toMatchObject({ kind: 'tool', ok: true, args: { order_id: '1002' } });
  });

  it('turn_reset discards only the segment after the last interrupt', () => {
    const state = run([
      tok(1, 'Checking. '),
      { type: 'interrupt', thread_id: 't', seq: 2, turn_id: T, interrupt_id: 'i1', action: 'cancel_order', params: { order_id: '1003' }, expires_at: '2030-01-01T00:00:00Z' },
      tok(3, 'Cancel'),
      { type: 'tool_call', thread_id: 't', seq: 4, turn_id: T, agent: 'orders', tool: 'cancel_order', args: {} },
      tok(5, 'other turn', 'general', 'turn-0'),
      { type: 'turn_reset', thread_id: 't', seq: 6, turn_id: T },
      tok(7, 'Order 1003 is now cancelled.'),
      { type: 'message_complete', thread_id: 't', seq: 8, turn_id: T, usage: { prompt_tokens: 3, completion_tokens: 5, cost_usd: 0.001 } },
    ]);
    expect(state.items.map((i) => i.kind)).toEqual(['text', 'approval', 'text', 'text', 'usage']);
    expect(replyText(state, T)).toBe('Checking. Order 1003 is now cancelled.');
    expect(replyText(state, 'turn-0')).toBe('other turn');
    expect(state.busy).toBe(false);
  });

  it('turn_reset without an interrupt clears the whole turn', () => {
    const state = run([tok(1, 'par'), tok(2, 'tial'), { type: 'turn_reset', thread_id: 't', seq: 3, turn_id: T }, tok(4, 'whole')]);
    expect(replyText(state, T)).toBe('whole');
  });

  it('shows errors and expired approvals plainly', () => {
    const state = run([
      { type: 'interrupt', thread_id: 't', seq: 1, turn_id: T, interrupt_id: 'i1', action: 'cancel_order', params: {}, expires_at: '2000-01-01T00:00:00Z' },
      { type: 'interrupt_expired', thread_id: 't', seq: 2, turn_id: T, interrupt_id: 'i1', action: 'cancel_order', message: 'Please ask again.' },
      { type: 'error', code: 'rate_limited', message: 'slow down', retryable: true },
    ]);
    expect(state.items[0]).toMatchObject({ kind: 'approval', status: 'expired' });
    expect(state.items.slice(1).map((i) => (i.kind === 'notice' ? i.text : ''))).toEqual(['Please ask again.', 'rate_limited: slow down']);
    expect(state.lastSeq).toBe(2);
  });

  it('restores from the history API with the pending approval', () => {
    const state = fromHistory({
      thread_id: 't',
      status: 'awaiting_approval',
      last_seq: 9,
      messages: [
        { role: 'user', message_id: 'm', turn_id: T, content: 'Cancel order 1003', at: '' },
        { role: 'assistant', turn_id: T, content: 'I need your approval.', outcome: 'interrupted', last_seq: 9, usage: { prompt_tokens: 1, completion_tokens: 1, cost_usd: 0 }, at: '' },
      ],
      pending_approval: { interrupt_id: 'i1', turn_id: T, action: 'cancel_order', params: { order_id: '1003' }, expires_at: '2030-01-01T00:00:00Z' },
    });
    expect(state.lastSeq).toBe(9);
    expect(state.items.map((i) => i.kind)).toEqual(['user', 'text', 'approval']);
    // Frames up to last_seq replayed by resume are ignored.
    expect(applyFrame(state, tok(9, 'dup'))).toBe(state);
  });

  it('shows customer messages from other devices once, operators and handoff changes', () => {
    const mine = addUserMessage(emptyChat, 'Hello', 'm1');
    const state = run(
      [
        { type: 'user_message', thread_id: 't', seq: 1, turn_id: T, message_id: 'm1', content: 'Hello' },
        { type: 'user_message', thread_id: 't', seq: 2, turn_id: 'u2', message_id: 'm2', content: 'From my phone' },
        { type: 'handoff', thread_id: 't', seq: 3, turn_id: 'u3', state: 'waiting', operator: null },
        { type: 'handoff', thread_id: 't', seq: 4, turn_id: 'u4', state: 'human', operator: { name: 'Alice' } },
        { type: 'human_message', thread_id: 't', seq: 5, turn_id: 'u5', message_id: 'op-1', operator: { name: 'Alice' }, content: 'Hi, Alice here.' },
      ],
      mine,
    );
    expect(state.items.map((i) => i.kind)).toEqual(['user', 'user', 'notice', 'notice', 'human']);
    expect(state.items[1]).toMatchObject({ kind: 'user', content: 'From my phone' });
    expect(state.items[3]).toMatchObject({ kind: 'notice', text: 'Alice has joined the conversation.' });
    expect(state.items[4]).toMatchObject({ kind: 'human', operator: 'Alice', content: 'Hi, Alice here.' });
    expect(state.handoff).toBe('human');
    const resolved = applyFrame(state, { type: 'handoff', thread_id: 't', seq: 6, turn_id: 'u6', state: 'ai', operator: null, resolved: true });
    expect(resolved.handoff).toBe('ai');
    expect(resolved.resolved).toBe(true);
  });
});
