import { FormEvent, ReactNode, useState } from 'react';
import { getAdminToken, setAdminToken } from '../api';

/** Asks once for the admin token (kept in sessionStorage), then shows the admin page. */
export function AdminGate({ children }: { children: ReactNode }) {
  const [token, setToken] = useState(getAdminToken);
  const [draft, setDraft] = useState('');
  if (!token) {
    const submit = (event: FormEvent) => {
      event.preventDefault();
      if (!draft.trim()) return;
      setAdminToken(draft.trim());
      setToken(draft.trim());
    };
    return (
      <form onSubmit={submit} className="card admin-gate">
        <h1>Admin token</h1>
        <p>Replay, Dashboard, Review and Operators use the admin API. The token is kept for this browser tab only.</p>
        <label htmlFor="admin-token">Admin token</label>
        <div className="row">
          <input id="admin-token" type="password" value={draft} onChange={(e) => setDraft(e.target.value)} autoComplete="off" />
          <button type="submit" className="primary">
            Continue
          </button>
        </div>
      </form>
    );
  }
  return (
    <>
      {children}
      <p className="small">
        <button
          type="button"
          className="link"
          onClick={() => {
            setAdminToken('');
            setToken('');
          }}
        >
          Forget the admin token
        </button>
      </p>
    </>
  );
}
