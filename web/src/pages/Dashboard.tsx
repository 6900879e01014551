import { useEffect, useRef, useState } from 'react';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { admin, formatCost } from '../api';

interface Bucket {
  start: string;
  end: string;
  conversations: number;
  messages: number;
  cost_usd: number;
}

interface AgentFigures {
  agent: string;
  turns: number;
  prompt_tokens: number;
  completion_tokens: number;
  cost_usd: number;
  tool_calls: number;
  avg_duration_ms: number;
  p95_duration_ms: number;
}

export interface Analytics {
  range: string;
  bucket: string;
  conversations: number;
  messages: number;
  conversations_with_messages: number;
  resolved: number;
  escalated: number;
  resolution_rate: number;
  escalation_rate: number;
  approvals: { approved: number; rejected: number; expired: number; superseded: number; cancelled?: number; pending: number };
  cancelled_turns?: number;
  tokens: { prompt: number; completion: number; total: number };
  cost_usd: number;
  latency_ms: { turns: number; p50: number; p95: number; p99: number };
  agents: AgentFigures[];
  series: Bucket[];
  // Humans in the conversation and feedback (SPEC §7; docs/handoff.md#analytics).
  ai_resolution_rate?: number;
  handoff_rate?: number;
  time_to_human_ms?: { handoffs: number; p50: number; p95: number };
  csat?: { ai: number; human: number; ai_responses: number; human_responses: number };
  thumbs_up_rate?: number;
  thumbs_up_rate_by_agent?: { agent: string; thumbs_up_rate: number; ratings: number }[];
}

/** An average CSAT with its number of answers ("—" without any). */
export function csatText(average: number, responses: number): string {
  return responses > 0 ? `${average.toFixed(1)} / 5 (${responses})` : '—';
}

/** An agent's thumbs-up rate and number of ratings ("—" without any). */
export function thumbsOf(data: Analytics, agent: string): string {
  const found = data.thumbs_up_rate_by_agent?.find((row) => row.agent === agent);
  return found && found.ratings > 0 ? `${pct(found.thumbs_up_rate)} (${found.ratings})` : '—';
}

export function HumansAndFeedback({ data }: { data: Analytics }) {
  if (data.csat === undefined) return null;
  const time = data.time_to_human_ms ?? { handoffs: 0, p50: 0, p95: 0 };
  const ratings = (data.thumbs_up_rate_by_agent ?? []).reduce((sum, agent) => sum + agent.ratings, 0);
  return (
    <>
      <h2>People and feedback</h2>
      <div className="metrics" data-testid="handoff-metrics">
        <Metric label="Resolved by the AI alone" value={pct(data.ai_resolution_rate ?? 0)} />
        <Metric label="Handed to a person" value={pct(data.handoff_rate ?? 0)} />
        <Metric
          label="Time to a person p50 / p95 (s)"
          value={time.handoffs > 0 ? `${Math.round(time.p50 / 1000)} / ${Math.round(time.p95 / 1000)}` : '—'}
        />
        <Metric label="CSAT, AI only" value={csatText(data.csat.ai, data.csat.ai_responses)} />
        <Metric label="CSAT, with a person" value={csatText(data.csat.human, data.csat.human_responses)} />
        <Metric label="Thumbs up" value={ratings > 0 || (data.thumbs_up_rate ?? 0) > 0 ? pct(data.thumbs_up_rate ?? 0) : '—'} />
      </div>
    </>
  );
}

function Chart({ series }: { series: Bucket[] }) {
  const ref = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const element = ref.current;
    if (!element) return;
    const width = Math.max(280, Math.min(900, element.clientWidth || 600));
    const data: uPlot.AlignedData = [
      series.map((b) => Date.parse(b.start) / 1000),
      series.map((b) => b.conversations),
      series.map((b) => b.messages),
    ];
    const plot = new uPlot(
      {
        width,
        height: 220,
        series: [
          {},
          { label: 'Conversations', stroke: '#1d4ed8', width: 2 },
          { label: 'Messages', stroke: '#b45309', width: 2 },
        ],
        axes: [{}, { label: 'count' }],
      },
      data,
      element,
    );
    return () => plot.destroy();
  }, [series]);
  return <div ref={ref} className="chart" role="img" aria-label="Conversations and messages over time" />;
}

function Metric({ label, value }: { label: string; value: string | number }) {
  return (
    <div className="metric">
      <div className="metric-value">{value}</div>
      <div className="metric-label">{label}</div>
    </div>
  );
}

const pct = (rate: number) => `${(rate * 100).toFixed(1)}%`;

export function DashboardView({ data }: { data: Analytics }) {
  if (data.conversations === 0 && data.messages === 0) {
    return (
      <p className="card" data-testid="zero-state">
        No conversations in this range yet. Start one in the Chat page and come back.
      </p>
    );
  }
  return (
    <>
      <div className="metrics" data-testid="metrics">
        <Metric label="Conversations" value={data.conversations} />
        <Metric label="Messages" value={data.messages} />
        <Metric label="Resolution rate" value={pct(data.resolution_rate)} />
        <Metric label="Escalation rate" value={pct(data.escalation_rate)} />
        <Metric
          label="Approvals (approved / rejected / expired)"
          value={`${data.approvals.approved} / ${data.approvals.rejected} / ${data.approvals.expired}`}
        />
        <Metric label="Tokens" value={data.tokens.total} />
        <Metric label="Cost" value={formatCost(data.cost_usd)} />
        <Metric label="Latency p50 / p95 / p99 (ms)" value={`${Math.round(data.latency_ms.p50)} / ${Math.round(data.latency_ms.p95)} / ${Math.round(data.latency_ms.p99)}`} />
      </div>
      <HumansAndFeedback data={data} />
      <h2>Per {data.bucket}</h2>
      <Chart series={data.series} />
      <h2>Agents</h2>
      <div className="table-wrap">
        <table data-testid="agents">
          <thead>
            <tr>
              <th scope="col">Agent</th>
              <th scope="col">Turns</th>
              <th scope="col">Tool calls</th>
              <th scope="col">Tokens</th>
              <th scope="col">Cost</th>
              <th scope="col">Avg ms</th>
              <th scope="col">p95 ms</th>
              <th scope="col">Thumbs up</th>
            </tr>
          </thead>
          <tbody>
            {data.agents.map((agent) => (
              <tr key={agent.agent}>
                <td>{agent.agent}</td>
                <td>{agent.turns}</td>
                <td>{agent.tool_calls}</td>
                <td>{agent.prompt_tokens + agent.completion_tokens}</td>
                <td>{formatCost(agent.cost_usd)}</td>
                <td>{Math.round(agent.avg_duration_ms)}</td>
                <td>{Math.round(agent.p95_duration_ms)}</td>
                <td>{thumbsOf(data, agent.agent)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </>
  );
}

export function Dashboard() {
  const [range, setRange] = useState('24h');
  const [data, setData] = useState<Analytics | null>(null);
  const [error, setError] = useState('');
  useEffect(() => {
    setError('');
    admin<Analytics>(`/api/admin/analytics?range=${range}`)
      .then(setData)
      .catch((e: Error) => setError(e.message));
  }, [range]);
  return (
    <section aria-labelledby="dashboard-title">
      <div className="row spread">
        <h1 id="dashboard-title">Dashboard</h1>
        <label>
          Range{' '}
          <select value={range} onChange={(e) => setRange(e.target.value)}>
            <option value="24h">24 hours</option>
            <option value="7d">7 days</option>
            <option value="30d">30 days</option>
          </select>
        </label>
      </div>
      {error && <p className="notice error" role="alert">{error}</p>}
      {data ? <DashboardView data={data} /> : !error && <p className="muted">Loading…</p>}
    </section>
  );
}
