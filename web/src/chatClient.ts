// The chat socket: connects, resumes after the last seen `seq`, reconnects with backoff.
import type { ClientFrame, Frame, OutgoingFrame } from './protocol';

export interface ChatClientEvents {
  onFrame(frame: Frame): void;
  onStatus(connected: boolean): void;
}

export class ChatClient {
  private socket: WebSocket | null = null;
  private closed = false;
  private attempts = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  /** Sockets opened so far (the first one included). */
  opened = 0;

  constructor(
    private readonly url: string,
    private readonly thread: { threadId: string; token: string },
    private readonly lastSeq: () => number,
    private readonly events: ChatClientEvents,
  ) {}

  connect(): void {
    if (this.closed) return;
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.onopen = () => {
      this.attempts = 0;
      this.opened += 1;
      socket.send(resumeFrame(this.thread, this.lastSeq()));
      this.events.onStatus(true);
    };
    socket.onmessage = (event) => {
      let frame: Frame;
      try {
        frame = JSON.parse(String(event.data)) as Frame;
      } catch {
        return; // Not JSON: ignore.
      }
      this.events.onFrame(frame);
      // The edge replays a bounded number of frames per resume: go on from where it stopped.
      if (frame.type === 'resume_partial' && frame.thread_id === this.thread.threadId) {
        socket.send(resumeFrame(this.thread, this.lastSeq()));
      }
    };
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.events.onStatus(false);
      this.schedule();
    };
  }

  private schedule(): void {
    if (this.closed) return;
    const delay = Math.min(5000, 250 * 2 ** this.attempts);
    this.attempts += 1;
    this.timer = setTimeout(() => this.connect(), delay);
  }

  send(frame: OutgoingFrame): boolean {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    const full: ClientFrame = { ...frame, thread_id: this.thread.threadId, token: this.thread.token };
    this.socket.send(JSON.stringify(full));
    return true;
  }

  /** Test hook: cut the connection as a network failure would. */
  drop(): void {
    this.socket?.close();
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    const socket = this.socket;
    this.socket = null;
    socket?.close();
  }
}

/** The `resume` frame of a thread, after the last `seq` the page has. */
export function resumeFrame(thread: { threadId: string; token: string }, afterSeq: number): string {
  const frame: ClientFrame = { type: 'resume', thread_id: thread.threadId, token: thread.token, after_seq: afterSeq };
  return JSON.stringify(frame);
}

export function socketUrl(): string {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws`;
}
