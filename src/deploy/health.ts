// Health probes over an app process's private probe socket. The runtime
// injects each probe connection into the app's own server, so the answer
// comes from the app's handler on that one process, before it takes any
// public traffic. TLS apps are probed with TLS over the same socket.
// node:http, not undici: on this class of host, loading undici cost the CLI
// ~300 ms of CPU while the new version booted beside the live one, and V8's
// background tier-up of its llhttp WebAssembly held process exit another
// ~250 ms (platform worker threads are joined at exit). A probe is one GET.
import type { RequestOptions } from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';

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

/**
 * node:http, loaded on first use: a deploy loads it while the new version
 * boots (cutover calls this then), not before the release starts, where
 * every millisecond adds to the deploy (~8 ms on Node 20).
 */
export function loadProber(): typeof import('node:http') {
  return require('node:http') as typeof import('node:http');
}

export function isHealthy(rule: HealthRule, result: ProbeResult): boolean {
  if (result.status === null) return false;
  return rule.path ? result.status >= 200 && result.status < 300 : result.status < 500;
}

export interface ProbeTarget {
  tls: boolean;
  /** The server speaks only HTTP/2: probe with node:http2 (node:http speaks HTTP/1.1 only). */
  h2: boolean;
}

/**
 * A connection to the probe socket: TLS for a TLS app (the probe checks the
 * app, not its certificate; the socket is private), else plain.
 */
function connectProbe(socketPath: string, tls: boolean, alpn: string[]): () => Duplex {
  if (!tls) return () => net.connect(socketPath);
  const tlsModule = require('node:tls') as typeof import('node:tls'); // on use: most apps are plain HTTP
  return () => tlsModule.connect({ path: socketPath, ALPNProtocols: alpn, servername: 'localhost', rejectUnauthorized: false });
}

export async function probe(socketPath: string, target: ProbeTarget, rule: HealthRule, timeoutMs: number): Promise<ProbeResult> {
  if (target.h2) return probeH2(socketPath, target.tls, rule, timeoutMs);
  const connect = connectProbe(socketPath, target.tls, ['http/1.1']);
  return new Promise<ProbeResult>((resolve) => {
    const options: RequestOptions = {
      // A connection of its own, without an Agent: an Agent works out a TLS
      // server name for every request, and its first isIP() call compiles a
      // large regular expression (~10 ms).
      createConnection: connect,
      method: 'GET',
      path: rule.path ?? '/',
      headers: { host: `localhost:${rule.port}`, 'user-agent': 'reuse-deploy-health', connection: 'close' },
    };
    const req = loadProber().request(options, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        if (body.length < 200) body += chunk;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? null, bodyStart: body.slice(0, 200), error: null }));
      res.on('error', (err) => resolve(failed(err)));
    });
    req.setTimeout(timeoutMs, () => req.destroy(Object.assign(new Error(`no answer within ${timeoutMs} ms`), { code: 'ETIMEDOUT' })));
    req.on('error', (err) => resolve(failed(err)));
    req.end();
  });
}

/**
 * Warm-up: `count` more requests of the health check, `concurrency` at a
 * time, each on a new connection, like the first public ones. A process
 * that has served nothing yet runs its request path in V8's interpreter
 * (and allocates its first pools); measured under load, the first ~60 ms
 * after go-live then answered 5-10x slower than usual. Answers are not
 * checked: the health check has passed.
 */
export async function warmUp(socketPath: string, target: ProbeTarget, rule: HealthRule, count: number, concurrency = 4): Promise<void> {
  let left = count;
  const loop = async (): Promise<void> => {
    while (left-- > 0) await probe(socketPath, target, rule, 2_000);
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, loop));
}

function failed(err: unknown): ProbeResult {
  const e = err as Error & { code?: string };
  return { status: null, bodyStart: '', error: e.code ? `${e.code}: ${e.message}` : e.message };
}

async function probeH2(socketPath: string, tls: boolean, rule: HealthRule, timeoutMs: number): Promise<ProbeResult> {
  const http2 = require('node:http2') as typeof import('node:http2');
  const authority = `${tls ? 'https' : 'http'}://localhost:${rule.port}`;
  const session = http2.connect(authority, { createConnection: connectProbe(socketPath, tls, ['h2']) });
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
