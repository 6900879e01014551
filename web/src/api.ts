// HTTP helpers. The admin token lives in sessionStorage only (typed in by the user).

const ADMIN_KEY = 'adminToken';

export function getAdminToken(): string {
  return sessionStorage.getItem(ADMIN_KEY) ?? '';
}

export function setAdminToken(token: string): void {
  if (token) sessionStorage.setItem(ADMIN_KEY, token);
  else sessionStorage.removeItem(ADMIN_KEY);
}

export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
  ) {
    super(message);
  }
}

async function parse<T>(response: Response): Promise<T> {
  if (response.status === 204) return null as T;
  const text = await response.text();
  let body: unknown = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const error = (body as { error?: { code?: string; message?: string } } | null)?.error;
    throw new ApiError(response.status, error?.code ?? String(response.status), error?.message ?? (text || response.statusText));
  }
  return body as T;
}

export async function request<T>(path: string, init: RequestInit & { bearer?: string } = {}): Promise<T> {
  const headers = new Headers(init.headers);
  if (init.bearer) headers.set('Authorization', `Bearer ${init.bearer}`);
  const response = await fetch(path, { ...init, headers });
  return parse<T>(response);
}

export function admin<T>(path: string, init: RequestInit = {}): Promise<T> {
  return request<T>(path, { ...init, bearer: getAdminToken() });
}

export function formatCost(usd: number): string {
  return `$${usd < 0.01 ? usd.toFixed(6) : usd.toFixed(4)}`;
}

// The operator token (SPEC §7), also typed in by the user and kept for the tab only.
const OPERATOR_KEY = 'operatorToken';

export function getOperatorToken(): string {
  return sessionStorage.getItem(OPERATOR_KEY) ?? '';
}

export function setOperatorToken(token: string): void {
  if (token) sessionStorage.setItem(OPERATOR_KEY, token);
  else sessionStorage.removeItem(OPERATOR_KEY);
}

export function operator<T>(path: string, init: RequestInit = {}): Promise<T> {
  return request<T>(path, { ...init, bearer: getOperatorToken() });
}

/** A POST with a JSON body. */
export function jsonBody(body: unknown): RequestInit {
  return { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) };
}
