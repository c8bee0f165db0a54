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
 * Warm-up: `count` more requests of the health check. A process that has
 * served nothing yet runs its request path in V8's interpreter (and
 * allocates its first pools); measured under load, the first ~60 ms after
 * go-live then answered 5-10x slower than usual.
 *
 * The requests go `lanes` connections at a time (new connections, like
 * the first public ones), pipelined on each (RFC 9112 section 9.3.2): all
 * written at once, the last with `Connection: close`, so that the lane ends
 * when the server has answered them all and closes. Node's server answers
 * pipelined requests one after the other. A request on a connection of its
 * own cost the app ~0.6 ms here, a pipelined one ~0.1 ms: more warm-up for
 * the same wait. Answers are not read: the health check has passed. An
 * HTTP/2-only app gets the same count as streams, one session per lane.
 * Best effort: a lane that has not finished after WARM_UP_LIMIT_MS is
 * dropped. Opt-in: DEFAULT_WARM_UP in options.ts says what it costs.
 */
export async function warmUp(socketPath: string, target: ProbeTarget, rule: HealthRule, count: number, lanes = 4): Promise<void> {
  const n = Math.min(lanes, count);
  const sizes = Array.from({ length: n }, (_, i) => Math.floor(count / n) + (i < count % n ? 1 : 0));
  if (target.h2) {
    await Promise.all(sizes.map((size) => streams(socketPath, target.tls, rule, size)));
    return;
  }
  const connect = connectProbe(socketPath, target.tls, ['http/1.1']);
  await Promise.all(sizes.map((size) => pipelined(connect, rule, size)));
}

const WARM_UP_LIMIT_MS = 5_000;

/** `count` requests at once, as streams of one HTTP/2 session. */
async function streams(socketPath: string, tls: boolean, rule: HealthRule, count: number): Promise<void> {
  const session = h2Session(socketPath, tls, rule);
  session.on('error', () => undefined); // the streams close with it
  const timer = setTimeout(() => session.destroy(), WARM_UP_LIMIT_MS);
  try {
    await Promise.all(
      Array.from({ length: count }, () => {
        const req = session.request({ ':path': rule.path ?? '/', 'user-agent': 'reuse-deploy-warm-up' });
        req.on('error', () => undefined); // seen as 'close'
        req.resume();
        req.end();
        return new Promise<void>((resolve) => req.on('close', resolve));
      }),
    );
  } finally {
    clearTimeout(timer);
    session.destroy();
  }
}

function pipelined(connect: () => Duplex, rule: HealthRule, count: number): Promise<void> {
  const request = (close: boolean): string =>
    `GET ${rule.path ?? '/'} HTTP/1.1\r\nhost: localhost:${rule.port}\r\nuser-agent: reuse-deploy-warm-up\r\n${close ? 'connection: close\r\n' : ''}\r\n`;
  return new Promise<void>((resolve) => {
    const socket = connect();
    const timer = setTimeout(() => socket.destroy(), WARM_UP_LIMIT_MS);
    socket.on('error', () => undefined); // seen as 'close'
    socket.on('close', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.resume(); // the answers are not needed; reading them lets the server go on
    // write, not end(): a server may take a half-closed connection for a
    // client that has gone, before it has answered every request on it.
    socket.write(request(false).repeat(count - 1) + request(true));
  });
}

function failed(err: unknown): ProbeResult {
  const e = err as Error & { code?: string };
  return { status: null, bodyStart: '', error: e.code ? `${e.code}: ${e.message}` : e.message };
}

/** An HTTP/2 session to the probe socket. */
function h2Session(socketPath: string, tls: boolean, rule: HealthRule): import('node:http2').ClientHttp2Session {
  const http2 = require('node:http2') as typeof import('node:http2');
  return http2.connect(`${tls ? 'https' : 'http'}://localhost:${rule.port}`, { createConnection: connectProbe(socketPath, tls, ['h2']) });
}

async function probeH2(socketPath: string, tls: boolean, rule: HealthRule, timeoutMs: number): Promise<ProbeResult> {
  const session = h2Session(socketPath, tls, rule);
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
