import { afterEach, describe, expect, it, vi } from 'vitest';
import { cleanup, fireEvent, render, screen } from '@testing-library/react';
import { applyFrame, emptyChat, type Frame } from '../protocol';
import { ChatView } from './ChatView';
import { DashboardView, HumansAndFeedback, thumbsOf, type Analytics } from './Dashboard';

afterEach(cleanup);

describe('ChatView', () => {
  it('shows operator messages and rates a reply with thumbs', () => {
    const frames: Frame[] = [
      { type: 'user_message', thread_id: 't', seq: 1, turn_id: 'a', message_id: 'm1', content: 'Where is 1002?' },
      { type: 'token', thread_id: 't', seq: 2, turn_id: 'a', agent: 'orders', content: 'Shipped.' },
      { type: 'message_complete', thread_id: 't', seq: 3, turn_id: 'a', usage: { prompt_tokens: 1, completion_tokens: 1, cost_usd: 0 } },
      { type: 'human_message', thread_id: 't', seq: 4, turn_id: 'b', message_id: 'op-1', operator: { name: 'Alice' }, content: 'Hello from Alice' },
    ];
    const state = frames.reduce(applyFrame, emptyChat);
    const onRate = vi.fn();
    render(<ChatView state={state} onAnswer={vi.fn()} onRate={onRate} />);
    expect(screen.getByTestId('human-message').textContent).toContain('Alice');
    expect(screen.getByTestId('human-message').textContent).toContain('Hello from Alice');
    fireEvent.click(screen.getByRole('button', { name: 'Good reply' }));
    expect(onRate).toHaveBeenCalledWith('a', true);
    fireEvent.click(screen.getByRole('button', { name: 'Bad reply' }));
    expect(onRate).toHaveBeenLastCalledWith('a', false);
  });

  it('renders an approval card whose buttons answer it', () => {
    const frames: Frame[] = [
      { type: 'tool_call', thread_id: 't', seq: 1, turn_id: 'a', agent: 'orders', tool: 'get_order_status', args: { order_id: '1003' } },
      { type: 'tool_result', thread_id: 't', seq: 2, turn_id: 'a', agent: 'orders', tool: 'get_order_status', ok: true },
      {
        type: 'interrupt',
        thread_id: 't',
        seq: 3,
        turn_id: 'a',
        interrupt_id: 'i9',
        action: 'cancel_order',
        params: { order_id: '1003' },
        expires_at: new Date(Date.now() + 90_000).toISOString(),
      },
    ];
    const state = frames.reduce(applyFrame, emptyChat);
    const onAnswer = vi.fn();
    render(<ChatView state={state} onAnswer={onAnswer} />);
    expect(screen.getByTestId('tool-card').textContent).toContain('get_order_status');
    expect(screen.getByTestId('tool-card').textContent).toContain('ok');
    const card = screen.getByRole('group', { name: 'Approval for cancel_order' });
    expect(card.textContent).toMatch(/1:(29|30) left/);
    fireEvent.click(screen.getByRole('button', { name: 'Approve' }));
    expect(onAnswer).toHaveBeenCalledWith('i9', true);
    fireEvent.click(screen.getByRole('button', { name: 'Reject' }));
    expect(onAnswer).toHaveBeenLastCalledWith('i9', false);
  });

  it('marks a stopped reply', () => {
    const state = ([
      { type: 'token', thread_id: 't', seq: 1, turn_id: 'a', agent: 'general', content: 'Our shop ' },
      { type: 'message_complete', thread_id: 't', seq: 2, turn_id: 'a', usage: { prompt_tokens: 3, completion_tokens: 2, cost_usd: 0 }, cancelled: true },
    ] satisfies Frame[]).reduce(applyFrame, emptyChat);
    render(<ChatView state={state} onAnswer={() => {}} />);
    expect(screen.getByTestId('stopped').textContent).toContain('Stopped');
    expect(screen.getByText('Our shop')).toBeTruthy();
  });

  it('labels streamed text by agent and shows errors as alerts', () => {
    const state = ([
      { type: 'token', thread_id: 't', seq: 1, turn_id: 'a', agent: 'billing', content: 'Invoice ' },
      { type: 'token', thread_id: 't', seq: 2, turn_id: 'a', agent: 'billing', content: 'sent.' },
      { type: 'error', code: 'busy', message: 'try again', retryable: true },
    ] satisfies Frame[]).reduce(applyFrame, emptyChat);
    render(<ChatView state={state} onAnswer={() => {}} />);
    expect(screen.getByText('billing')).toBeTruthy();
    expect(screen.getByText('Invoice sent.')).toBeTruthy();
    expect(screen.getByRole('alert').textContent).toBe('busy: try again');
  });
});

describe('DashboardView', () => {
  it('has a zero state', () => {
    const zero = {
      range: '24h', bucket: 'hour', conversations: 0, messages: 0, conversations_with_messages: 0, resolved: 0, escalated: 0,
      resolution_rate: 0, escalation_rate: 0, approvals: { approved: 0, rejected: 0, expired: 0, superseded: 0, pending: 0 },
      tokens: { prompt: 0, completion: 0, total: 0 }, cost_usd: 0, latency_ms: { turns: 0, p50: 0, p95: 0, p99: 0 }, agents: [], series: [],
    } satisfies Analytics;
    render(<DashboardView data={zero} />);
    expect(screen.getByTestId('zero-state')).toBeTruthy();
  });

  it('shows the handoff and feedback figures', () => {
    const data = {
      range: '24h', bucket: 'hour', conversations: 4, messages: 6, conversations_with_messages: 4, resolved: 2, escalated: 0,
      resolution_rate: 0.5, escalation_rate: 0, approvals: { approved: 0, rejected: 0, expired: 0, superseded: 0, pending: 0 },
      tokens: { prompt: 10, completion: 5, total: 15 }, cost_usd: 0.01, latency_ms: { turns: 6, p50: 100, p95: 200, p99: 300 },
      agents: [{ agent: 'orders', turns: 3, prompt_tokens: 5, completion_tokens: 2, cost_usd: 0.01, tool_calls: 2, avg_duration_ms: 90, p95_duration_ms: 150 }],
      series: [],
      ai_resolution_rate: 0.25, handoff_rate: 0.5, time_to_human_ms: { handoffs: 2, p50: 12_000, p95: 61_000 },
      csat: { ai: 0, human: 4, ai_responses: 0, human_responses: 1 }, thumbs_up_rate: 0.75,
      thumbs_up_rate_by_agent: [{ agent: 'orders', thumbs_up_rate: 0.75, ratings: 4 }],
    } satisfies Analytics;
    // (Not the whole DashboardView: its chart needs a canvas, which jsdom has not.)
    render(<HumansAndFeedback data={data} />);
    const figures = screen.getByTestId('handoff-metrics').textContent ?? '';
    expect(figures).toContain('25.0%Resolved by the AI alone');
    expect(figures).toContain('50.0%Handed to a person');
    expect(figures).toContain('12 / 61Time to a person');
    expect(figures).toContain('—CSAT, AI only');
    expect(figures).toContain('4.0 / 5 (1)CSAT, with a person');
    expect(figures).toContain('75.0%Thumbs up');
    expect(thumbsOf(data, 'orders')).toBe('75.0% (4)');
    expect(thumbsOf(data, 'billing')).toBe('—');
  });
});
