import { createContext, FormEvent, ReactNode, useEffect, useState } from 'react';
import { ApiError, getOperatorToken, request, setOperatorToken } from '../api';

/** The signed-in operator, for the pages inside the gate. */
export const OperatorContext = createContext<{ id: string; name: string } | null>(null);

/**
 * Asks for an operator token (kept in sessionStorage, like the admin token), checks it with
 * `GET /api/operator/me`, then shows the operator page with the operator's name.
 */
export function OperatorGate({ children }: { children: ReactNode }) {
  const [token, setToken] = useState(getOperatorToken);
  const [me, setMe] = useState<{ id: string; name: string } | null>(null);
  const [draft, setDraft] = useState('');
  const [problem, setProblem] = useState('');

  useEffect(() => {
    if (!token) return;
    let cancelled = false;
    setMe(null);
    request<{ id: string; name: string }>('/api/operator/me', { bearer: token })
      .then((found) => {
        if (!cancelled) setMe({ id: found.id, name: found.name });
      })
      .catch((error: Error) => {
        if (cancelled) return;
        if (error instanceof ApiError && error.status === 401) {
          setOperatorToken('');
          setToken('');
          setProblem('That operator token is not valid (revoked, or mistyped).');
        } else {
          setProblem(`Could not check the token: ${error.message}`);
        }
      });
    return () => {
      cancelled = true;
    };
  }, [token]);

  if (!token) {
    const submit = (event: FormEvent) => {
      event.preventDefault();
      if (!draft.trim()) return;
      setProblem('');
      setOperatorToken(draft.trim());
      setToken(draft.trim());
      setDraft('');
    };
    return (
      <form onSubmit={submit} className="card admin-gate">
        <h1>Operator sign-in</h1>
        <p>The inbox and conversations use your operator token (an admin creates it on the Operators page). It is kept for this browser tab only.</p>
        {problem && (
          <p className="notice error" role="alert">
            {problem}
          </p>
        )}
        <label htmlFor="operator-token">Operator token</label>
        <div className="row">
          <input id="operator-token" type="password" value={draft} onChange={(e) => setDraft(e.target.value)} autoComplete="off" />
          <button type="submit" className="primary">
            Sign in
          </button>
        </div>
      </form>
    );
  }
  if (me === null) {
    return problem ? (
      <p className="notice error" role="alert">
        {problem}
      </p>
    ) : (
      <p className="muted">Checking the operator token…</p>
    );
  }
  return (
    <>
      <p className="small muted signed-in" data-testid="signed-in">
        Signed in as <strong>{me.name}</strong> ·{' '}
        <button
          type="button"
          className="link"
          onClick={() => {
            setOperatorToken('');
            setToken('');
            setMe(null);
          }}
        >
          Sign out
        </button>
      </p>
      <OperatorContext.Provider value={me}>{children}</OperatorContext.Provider>
    </>
  );
}
