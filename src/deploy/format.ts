// Human-readable text for status.
import type { ReleaseRow, StatusOutcome } from './commands';

export function formatDuration(ms: number): string {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h`;
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  return rows.map((r) => r.map((cell, c) => cell.padEnd(widths[c]!)).join('  ').trimEnd()).join('\n');
}

export function formatStatus(s: StatusOutcome): string {
  const host = s.host.includes(':') ? `[${s.host}]` : s.host;
  const lines = [...s.repaired.map((n) => `repaired: ${n}`), `app ${s.app} on ${host}:${s.port}, live release: ${s.liveRelease ?? 'none'}`];
  if (s.instances.length === 0) return `${lines.join('\n')}\nno instances running (reuse-deploy start brings the live release back)`;
  const rows = [['RELEASE', 'INSTANCE', 'ROLE', 'PHASE', 'PID', 'STATE', 'UPTIME', 'RESTARTS', 'RSS', 'CONNS', 'INFLIGHT']];
  const now = Date.now();
  for (const i of s.instances) {
    if (!i.status) {
      rows.push([i.release, i.id, i.role, 'not answering', String(i.keeperPid), '-', '-', '-', '-', '-', '-']);
      continue;
    }
    for (const a of i.status.apps) {
      rows.push([
        i.release,
        i.id,
        i.role,
        i.status.phase,
        a.pid === null ? '-' : String(a.pid),
        a.state,
        formatDuration(now - a.startedAt),
        String(a.restarts),
        `${Math.round(a.rssBytes / 1048576)}M`,
        String(a.connections),
        String(a.inflight),
      ]);
    }
  }
  lines.push(table(rows));
  for (const i of s.instances) {
    if (i.status?.error) lines.push(`${i.release} (${i.id}): ${i.status.error.message} [${i.status.error.code}]`);
    if (i.logTail) lines.push(`--- last lines of ${i.release}'s log ---`, i.logTail, '---');
  }
  return lines.join('\n');
}

function formatBytes(n: number): string {
  if (n < 1024) return `${n}B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)}K`;
  return `${(n / 1048576).toFixed(1)}M`;
}

export function formatReleases(r: { app: string; releases: ReleaseRow[] }): string {
  if (r.releases.length === 0) return `no releases kept for ${r.app}`;
  const rows = [['RELEASE', 'CREATED', 'FILES', 'SIZE', '', 'ENTRY']];
  for (const x of [...r.releases].reverse()) {
    rows.push([x.id, new Date(x.createdAt).toISOString().replace('T', ' ').slice(0, 19), String(x.files), formatBytes(x.bytes), x.live ? 'live' : x.previous ? 'previous' : '', x.entry]);
  }
  return table(rows);
}
