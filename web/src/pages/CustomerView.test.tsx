import { afterEach, describe, expect, it, vi } from 'vitest';
import { cleanup, fireEvent, render, screen } from '@testing-library/react';
import { applyFrame, emptyChat, type Frame } from '../protocol';
import { CustomerView } from './CustomerView';

afterEach(cleanup);

describe('CustomerView', () => {
  it('shows a confirmation instead of the tool card, and no internals', () => {
    const frames: Frame[] = [
      { type: 'user_message', thread_id: 't', seq: 1, turn_id: 'a', message_id: 'm1', content: 'Cancel order 1003' },
      { type: 'tool_call', thread_id: 't', seq: 2, turn_id: 'a', agent: 'orders', tool: 'get_order_status', args: { order_id: '1003' } },
      { type: 'tool_result', thread_id: 't', seq: 3, turn_id: 'a', agent: 'orders', tool: 'get_order_status', ok: true },
      {
        type: 'interrupt',
        thread_id: 't',
        seq: 4,
        turn_id: 'a',
        interrupt_id: 'i9',
        action: 'cancel_order',
        params: { order_id: '1003' },
        expires_at: new Date(Date.now() + 90_000).toISOString(),
      },
    ];
    const state = frames.reduce(applyFrame, emptyChat);
    const onAnswer = vi.fn();
    const { container } = render(<CustomerView state={state} onAnswer={onAnswer} onRate={vi.fn()} />);
    const card = screen.getByRole('group', { name: 'Cancel order 1003?' });
    expect(card).toBeTruthy();
    expect(container.textContent).not.toContain('cancel_order');
    expect(container.textContent).not.toContain('get_order_status');
    expect(container.textContent).not.toContain('{');
    fireEvent.click(screen.getByRole('button', { name: 'Keep it' }));
    expect(onAnswer).toHaveBeenCalledWith('i9', false);
    fireEvent.click(screen.getByRole('button', { name: 'Confirm' }));
    expect(onAnswer).toHaveBeenLastCalledWith('i9', true);
  });

  it('rates a finished reply with thumbs and shows operators by name', () => {
    const frames: Frame[] = [
      { type: 'token', thread_id: 't', seq: 1, turn_id: 'a', agent: 'orders', content: 'Shipped.' },
      { type: 'message_complete', thread_id: 't', seq: 2, turn_id: 'a', usage: { prompt_tokens: 11, completion_tokens: 7, cost_usd: 0.5 } },
      { type: 'human_message', thread_id: 't', seq: 3, turn_id: 'b', message_id: 'op-1', operator: { name: 'Alice' }, content: 'Hello from Alice' },
    ];
    const state = frames.reduce(applyFrame, emptyChat);
    const onRate = vi.fn(() => true);
    const { container } = render(<CustomerView state={state} onAnswer={vi.fn()} onRate={onRate} />);
    expect(screen.getByTestId('human-message').textContent).toContain('Alice');
    expect(container.textContent).not.toMatch(/\$|tokens|orders/);
    fireEvent.click(screen.getByRole('button', { name: 'Good reply' }));
    expect(onRate).toHaveBeenCalledWith('a', true);
    expect(screen.getByText(/Thanks for the feedback/)).toBeTruthy();
  });
});
