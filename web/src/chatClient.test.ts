import { afterEach, describe, expect, it, vi } from 'vitest';
import { ChatClient } from './chatClient';
import type { Frame } from './protocol';

/** A WebSocket the test drives by hand. */
class FakeSocket {
  static last: FakeSocket | null = null;
  static OPEN = 1;
  readyState = 1;
  sent: Array<Record<string, unknown>> = [];
  onopen: (() => void) | null = null;
  onmessage: ((event: { data: string }) => void) | null = null;
  onclose: (() => void) | null = null;
  constructor(public url: string) {
    FakeSocket.last = this;
  }
  send(text: string) {
    this.sent.push(JSON.parse(text));
  }
  close() {}
  receive(frame: Frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
}

afterEach(() => vi.unstubAllGlobals());

describe('chat client', () => {
  it('resumes again from the last seq after a resume_partial', () => {
    vi.stubGlobal('WebSocket', FakeSocket);
    let lastSeq = 7;
    const frames: Frame[] = [];
    const client = new ChatClient('ws://edge/ws', { threadId: 't', token: 'k' }, () => lastSeq, {
      onFrame: (frame) => {
        frames.push(frame);
        if ('seq' in frame) lastSeq = frame.seq;
      },
      onStatus: () => {},
    });
    client.connect();
    const socket = FakeSocket.last!;
    socket.onopen?.();
    expect(socket.sent).toEqual([{ type: 'resume', thread_id: 't', token: 'k', after_seq: 7 }]);
    socket.receive({ type: 'token', thread_id: 't', seq: 8, turn_id: 'u', agent: 'a', content: 'x' });
    socket.receive({ type: 'resume_partial', thread_id: 't', last_seq: 8 });
    expect(socket.sent[1]).toEqual({ type: 'resume', thread_id: 't', token: 'k', after_seq: 8 });
    // Another thread's partial is not this client's business.
    socket.receive({ type: 'resume_partial', thread_id: 'other', last_seq: 3 });
    expect(socket.sent).toHaveLength(2);
    expect(frames).toHaveLength(3);
    client.close();
  });
});
