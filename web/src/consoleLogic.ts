// Pure helpers of the operator console.

export interface InboxEntry {
  thread_id: string;
  state: 'waiting' | 'human' | 'ai';
  status: string;
  waiting_since: string | null;
  waiting_ms: number | null;
  operator: { id: string; name: string } | null;
  title: string | null;
  last_message: string | null;
  last_active_at: string;
}

/** 65_000 → "1 min 5 s"; 3_700_000 → "1 h 1 min". */
export function formatWait(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || ms < 0) return '';
  const seconds = Math.floor(ms / 1000);
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${seconds % 60} s`;
  const hours = Math.floor(minutes / 60);
  return `${hours} h ${minutes % 60} min`;
}

/** Which buttons an operator named `me` has on a conversation in `state` held by `holder`. */
export function operatorActions(state: 'ai' | 'waiting' | 'human', holder: string | null | undefined, me: string | null) {
  const mine = state === 'human' && !!me && holder === me;
  const othersHold = state === 'human' && !mine;
  return {
    join: !mine && !othersHold,
    reply: mine,
    leave: mine,
    resolve: !othersHold,
  };
}
