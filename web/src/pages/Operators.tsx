import { FormEvent, useCallback, useEffect, useState } from 'react';
import { admin, jsonBody } from '../api';

interface OperatorRow {
  id: string;
  name: string;
  created_at: string;
  revoked: boolean;
  revoked_at: string | null;
}

/** Admin: create operators (the token is shown once), list them, revoke one. */
export function Operators() {
  const [rows, setRows] = useState<OperatorRow[] | null>(null);
  const [name, setName] = useState('');
  const [created, setCreated] = useState<{ name: string; token: string } | null>(null);
  const [error, setError] = useState('');

  const load = useCallback(async () => {
    try {
      const list = await admin<{ operators: OperatorRow[] }>('/api/admin/operators');
      setRows(list.operators);
    } catch (e) {
      setError((e as Error).message);
    }
  }, []);

  useEffect(() => {
    void load();
  }, [load]);

  const create = async (event: FormEvent) => {
    event.preventDefault();
    if (!name.trim()) return;
    setError('');
    try {
      const made = await admin<{ id: string; name: string; token: string }>('/api/admin/operators', jsonBody({ name: name.trim() }));
      setCreated({ name: made.name, token: made.token });
      setName('');
      await load();
    } catch (e) {
      setError((e as Error).message);
    }
  };

  const revoke = async (row: OperatorRow) => {
    if (!window.confirm(`Revoke ${row.name}? Their token stops working at once.`)) return;
    setError('');
    try {
      await admin<null>(`/api/admin/operators/${encodeURIComponent(row.id)}`, { method: 'DELETE' });
      await load();
    } catch (e) {
      setError((e as Error).message);
    }
  };

  return (
    <section aria-labelledby="operators-title">
      <h1 id="operators-title">Operators</h1>
      <form onSubmit={create} className="row">
        <label htmlFor="operator-name">Name</label>
        <input id="operator-name" value={name} onChange={(e) => setName(e.target.value)} maxLength={100} autoComplete="off" />
        <button type="submit" className="primary" disabled={!name.trim()}>
          Create operator
        </button>
      </form>
      {error && (
        <p className="notice error" role="alert">
          {error}
        </p>
      )}
      {created && (
        <div className="card" role="status" data-testid="new-operator">
          <p>
            Token of <strong>{created.name}</strong> — copy it now, it is not shown again:
          </p>
          <code className="token" data-testid="new-token">
            {created.token}
          </code>
          <p>
            <button type="button" className="link" onClick={() => setCreated(null)}>
              Done
            </button>
          </p>
        </div>
      )}
      {rows && rows.length === 0 && <p className="muted">No operators yet.</p>}
      {rows && rows.length > 0 && (
        <div className="table-wrap">
          <table data-testid="operators">
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Created</th>
                <th scope="col">Status</th>
                <th scope="col">
                  <span className="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {rows.map((row) => (
                <tr key={row.id} data-operator={row.name}>
                  <td>{row.name}</td>
                  <td>{new Date(row.created_at).toLocaleString()}</td>
                  <td>{row.revoked ? `revoked ${row.revoked_at ? new Date(row.revoked_at).toLocaleString() : ''}` : 'active'}</td>
                  <td>
                    {!row.revoked && (
                      <button type="button" className="link danger" onClick={() => void revoke(row)}>
                        Revoke {row.name}
                      </button>
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
