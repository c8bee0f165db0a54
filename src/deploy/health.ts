// Health probes over an app process's private probe socket. The runtime
// injects each probe connection into the app's own server, so the answer
// comes from the app's handler on that one process, before it takes any
// public traffic. TLS apps are probed with TLS over the same socket.
import { newClient } from './http-client';

export interface ProbeResult {
  status: number | null;
  /** First bytes of the body, for error messages. */
  bodyStart: string;
  error: string | null;
}

export interface HealthRule {
  /** Path given with --health (2xx needed), or null: GET / with any status below 500. */
  path: string | null;
  port: number;
}

export function isHealthy(rule: HealthRule, result: ProbeResult): boolean {
  if (result.status === null) return false;
  return rule.path ? result.status >= 200 && result.status < 300 : result.status < 500;
}

export async function probe(socketPath: string, tls: boolean, rule: HealthRule, timeoutMs: number): Promise<ProbeResult> {
  const origin = `${tls ? 'https' : 'http'}://localhost:${rule.port}`;
  const client = newClient(origin, {
    socketPath,
    connectTimeout: timeoutMs,
    // The probe checks the app, not its certificate; the socket is private.
    connect: tls ? { rejectUnauthorized: false } : undefined,
  });
  try {
    const res = await client.request({
      method: 'GET',
      path: rule.path ?? '/',
      headers: { 'user-agent': 'reuse-deploy-health', connection: 'close' },
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
    });
    const body = await res.body.text();
    return { status: res.statusCode, bodyStart: body.slice(0, 200), error: null };
  } catch (err) {
    const e = err as Error & { code?: string };
    return { status: null, bodyStart: '', error: e.code ? `${e.code}: ${e.message}` : e.message };
  } finally {
    await client.destroy().catch(() => undefined);
  }
}
