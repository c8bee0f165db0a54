// Health probes over an app process's private probe socket. The runtime
// injects each probe connection into the app's own server, so the answer
// comes from the app's handler on that one process, before it takes any
// public traffic. TLS apps are probed with TLS over the same socket.
import { loadUndici, newClient } from './http-client';

/** Loads undici ahead of the first probe, while the CLI only waits for the app to boot. */
export const warmUpProbes = loadUndici;

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

export interface ProbeTarget {
  tls: boolean;
  /** The server speaks only HTTP/2: probe with node:http2 (undici has no cleartext HTTP/2). */
  h2: boolean;
}

export async function probe(socketPath: string, target: ProbeTarget, rule: HealthRule, timeoutMs: number): Promise<ProbeResult> {
  if (target.h2) return probeH2(socketPath, target.tls, rule, timeoutMs);
  const origin = `${target.tls ? 'https' : 'http'}://localhost:${rule.port}`;
  const client = newClient(origin, {
    socketPath,
    connectTimeout: timeoutMs,
    // The probe checks the app, not its certificate; the socket is private.
    connect: target.tls ? { rejectUnauthorized: false } : undefined,
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
    return failed(err);
  } finally {
    await client.destroy().catch(() => undefined);
  }
}

function failed(err: unknown): ProbeResult {
  const e = err as Error & { code?: string };
  return { status: null, bodyStart: '', error: e.code ? `${e.code}: ${e.message}` : e.message };
}

async function probeH2(socketPath: string, tls: boolean, rule: HealthRule, timeoutMs: number): Promise<ProbeResult> {
  const http2 = await import('node:http2');
  const net = await import('node:net');
  const tlsModule = await import('node:tls');
  const authority = `${tls ? 'https' : 'http'}://localhost:${rule.port}`;
  const session = http2.connect(authority, {
    createConnection: () =>
      tls
        ? tlsModule.connect({ path: socketPath, ALPNProtocols: ['h2'], servername: 'localhost', rejectUnauthorized: false })
        : net.connect(socketPath),
  });
  try {
    return await new Promise<ProbeResult>((resolve) => {
      const timer = setTimeout(() => resolve(failed(new Error(`no answer within ${timeoutMs} ms`))), timeoutMs);
      session.once('error', (err) => {
        clearTimeout(timer);
        resolve(failed(err));
      });
      const req = session.request({ ':path': rule.path ?? '/', 'user-agent': 'reuse-deploy-health' });
      let status: number | null = null;
      let body = '';
      req.setEncoding('utf8');
      req.once('response', (headers) => (status = Number(headers[':status'])));
      req.on('data', (chunk: string) => (body += chunk));
      req.once('end', () => {
        clearTimeout(timer);
        resolve({ status, bodyStart: body.slice(0, 200), error: null });
      });
      req.once('error', (err) => {
        clearTimeout(timer);
        resolve(failed(err));
      });
      req.end();
    });
  } finally {
    session.destroy();
  }
}
