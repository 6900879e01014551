// Client-side navigation: the App listens to `popstate`; `navigate` pushes a path and tells it.
import type { MouseEvent } from 'react';

export function navigate(to: string, replace = false): void {
  if (replace) history.replaceState(null, '', to);
  else history.pushState(null, '', to);
  window.dispatchEvent(new PopStateEvent('popstate'));
}

/** A link's click handler that stays in the app (modified clicks open a tab as usual). */
export function follow(event: MouseEvent<HTMLAnchorElement>, to: string): void {
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  navigate(to);
}

/** The pages of the app, by path. */
export type Route =
  | { page: 'chat' }
  | { page: 'embed' }
  | { page: 'inbox' }
  | { page: 'conversation'; id: string }
  | { page: 'replay' | 'dashboard' | 'review' | 'operators' }
  /** An old path that moved under /console. */
  | { page: 'moved'; to: string };

export function route(path: string): Route {
  const clean = path.length > 1 ? path.replace(/\/+$/, '') : path;
  if (clean === '/embed') return { page: 'embed' };
  if (clean === '/replay' || clean === '/dashboard' || clean === '/review') return { page: 'moved', to: `/console${clean}` };
  if (clean === '/console' || clean === '/console/inbox') return { page: 'inbox' };
  const conversation = /^\/console\/conversations\/([^/]+)$/.exec(clean);
  if (conversation) return { page: 'conversation', id: decodeURIComponent(conversation[1]) };
  const admin = /^\/console\/(replay|dashboard|review|operators)$/.exec(clean);
  if (admin) return { page: admin[1] as 'replay' | 'dashboard' | 'review' | 'operators' };
  return { page: 'chat' };
}

export function conversationPath(id: string): string {
  return `/console/conversations/${encodeURIComponent(id)}`;
}
