import { ChangeEvent, FormEvent, useEffect, useState } from 'react';
import { admin, ApiError } from '../api';

export interface Tool {
  id: string;
  name: string;
  method: string;
  path: string;
  access: 'read' | 'write';
  requires_approval: boolean;
  enabled: boolean;
  reviewed: boolean;
  summary?: string | null;
}

function contentType(text: string): string {
  return text.trimStart().startsWith('{') ? 'application/json' : 'application/yaml';
}

export function Review() {
  const [tools, setTools] = useState<Tool[] | null>(null);
  const [error, setError] = useState('');
  const [spec, setSpec] = useState('');
  const [importMessage, setImportMessage] = useState('');
  const [importError, setImportError] = useState('');

  const refresh = () =>
    admin<{ tools: Tool[] }>('/api/admin/tools')
      .then((list) => setTools(list.tools))
      .catch((e: Error) => setError(e.message));

  useEffect(() => {
    void refresh();
  }, []);

  const patch = async (tool: Tool, change: Partial<Pick<Tool, 'access' | 'requires_approval' | 'enabled'>>) => {
    setError('');
    try {
      const body = { access: tool.access, requires_approval: tool.requires_approval, enabled: tool.enabled, ...change };
      const updated = await admin<Tool>(`/api/admin/tools/${encodeURIComponent(tool.id)}`, {
        method: 'PATCH',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
      });
      setTools((old) => old?.map((t) => (t.id === tool.id ? { ...t, ...body, ...(updated ?? {}), reviewed: true } : t)) ?? null);
    } catch (e) {
      setError(`Could not update ${tool.name}: ${(e as Error).message}`);
    }
  };

  const upload = async (event: ChangeEvent<HTMLInputElement>) => {
    const file = event.target.files?.[0];
    if (file) setSpec(await file.text());
  };

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setImportError('');
    setImportMessage('');
    try {
      const result = await admin<{ tools: Tool[] }>('/api/admin/openapi', {
        method: 'POST',
        headers: { 'Content-Type': contentType(spec) },
        body: spec,
      });
      setImportMessage(`Imported ${result.tools.length} tools. Review them below.`);
      void refresh();
    } catch (e) {
      const message = e instanceof ApiError ? `${e.message} (${e.code})` : (e as Error).message;
      setImportError(`Import refused: ${message}`);
    }
  };

  return (
    <section aria-labelledby="review-title">
      <h1 id="review-title">Review tools</h1>
      <form onSubmit={submit} className="card">
        <h2>Import an OpenAPI 3 document</h2>
        <label htmlFor="spec-file">File (JSON or YAML)</label>
        <input id="spec-file" type="file" accept=".json,.yaml,.yml,application/json,application/yaml" onChange={upload} />
        <label htmlFor="spec-text">Or paste it</label>
        <textarea id="spec-text" rows={8} value={spec} onChange={(e) => setSpec(e.target.value)} spellCheck={false} />
        <button type="submit" className="primary" disabled={!spec.trim()}>
          Import
        </button>
        {importMessage && <p className="notice info" role="status">{importMessage}</p>}
        {importError && <p className="notice error" role="alert">{importError}</p>}
      </form>
      {error && <p className="notice error" role="alert">{error}</p>}
      {tools && tools.length === 0 && <p className="muted">No imported tools yet.</p>}
      {tools && tools.length > 0 && (
        <div className="table-wrap">
          <table data-testid="tools">
            <thead>
              <tr>
                <th scope="col">Tool</th>
                <th scope="col">Endpoint</th>
                <th scope="col">Access</th>
                <th scope="col">Approval</th>
                <th scope="col">Enabled</th>
                <th scope="col">Reviewed</th>
              </tr>
            </thead>
            <tbody>
              {tools.map((tool) => (
                <tr key={tool.id} data-tool={tool.name}>
                  <td>{tool.name}</td>
                  <td>
                    <code>
                      {tool.method.toUpperCase()} {tool.path}
                    </code>
                  </td>
                  <td>
                    <select
                      aria-label={`Access of ${tool.name}`}
                      value={tool.access}
                      onChange={(e) => void patch(tool, { access: e.target.value as Tool['access'] })}
                    >
                      <option value="read">read</option>
                      <option value="write">write</option>
                    </select>
                  </td>
                  <td>
                    <input
                      type="checkbox"
                      aria-label={`${tool.name} requires approval`}
                      checked={tool.requires_approval}
                      onChange={(e) => void patch(tool, { requires_approval: e.target.checked })}
                    />
                  </td>
                  <td>
                    <input
                      type="checkbox"
                      aria-label={`${tool.name} enabled`}
                      checked={tool.enabled}
                      onChange={(e) => void patch(tool, { enabled: e.target.checked })}
                    />
                  </td>
                  <td>{tool.reviewed ? 'yes' : 'no'}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
