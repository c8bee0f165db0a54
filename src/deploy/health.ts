// Health probes over an app process's private probe socket. The runtime
// injects each probe connection into the app's own server, so the answer
// comes from the app's handler on that one process, before it takes any
// public traffic. TLS apps are probed with TLS over the same socket.
//
// A probe is one GET with `Connection: close`, written and read here over
// node:net (or node:tls) rather than with a client library. Not undici: on
// this class of host, loading it cost the CLI ~300 ms of CPU while the new
// version booted beside the live one, and V8's background tier-up of its
// llhttp WebAssembly held process exit another ~250 ms (platform worker
// threads are joined at exit). Not node:http either: its first request in
// a process costs ~2 ms more than this one (4.6-8.1 ms against 2.7-3.1 over
// a unix socket on an idle host, 4 runs each), on the deploy's critical
// path, and loading it ~1 ms more of CPU while the new version boots.
// HTTP/2-only apps are probed with node:http2.
import net from 'node:net';

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
  /** The server speaks only HTTP/2: probe with node:http2 (node:http speaks HTTP/1.1 only). */
  h2: boolean;
}

/**
 * Where a probe or a warm-up connects: an app process's private probe
 * socket (a path), or a TCP address: the keeper warms a release up through
 * its own listener, from source ports it steers to itself (keeper/main.ts).
 */
export type Endpoint = string | { host: string; port: number; localPort: number };

/**
 * A connection to `endpoint`: TLS for a TLS app, else plain. The
 * certificate is not checked: the probe checks the app, over a private
 * socket, and a warm-up connection is steered to the new release's own
 * listener.
 */
function connectTo(endpoint: Endpoint, tls: boolean, alpn: string[]): () => net.Socket {
  const where = typeof endpoint === 'string' ? { path: endpoint } : endpoint;
  if (!tls) return () => net.connect(where);
  const tlsModule = require('node:tls') as typeof import('node:tls'); // on use: most apps are plain HTTP
  return () => tlsModule.connect({ ...where, ALPNProtocols: alpn, servername: 'localhost', rejectUnauthorized: false });
}

export async function probe(socketPath: string, target: ProbeTarget, rule: HealthRule, timeoutMs: number): Promise<ProbeResult> {
  if (target.h2) return probeH2(socketPath, target.tls, rule, timeoutMs);
  const socket = connectTo(socketPath, target.tls, ['http/1.1'])();
  return new Promise<ProbeResult>((resolve) => {
    const chunks: Buffer[] = [];
    const finish = (result: ProbeResult): void => {
      socket.destroy();
      resolve(result);
    };
    socket.setTimeout(timeoutMs, () => finish(failed(Object.assign(new Error(`no answer within ${timeoutMs} ms`), { code: 'ETIMEDOUT' }))));
    socket.on('error', (err) => finish(failed(err)));
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      const answer = readAnswer(Buffer.concat(chunks), false);
      if (answer) finish(answer);
    });
    socket.on('end', () => finish(readAnswer(Buffer.concat(chunks), true) ?? failed(new Error('the app closed the connection before a complete answer'))));
    // Written at once: node:net and node:tls hold it until the connection
    // (and the TLS handshake) is up. Not end(): node:http's server drops a
    // request whose client half-closed before the answer was ready.
    socket.write(getRequest(rule, 'reuse-deploy-health', true));
  });
}

/** One GET of the health check's path, as written on the wire (RFC 9112 section 3). */
function getRequest(rule: HealthRule, userAgent: string, close: boolean): string {
  return `GET ${rule.path ?? '/'} HTTP/1.1\r\nhost: localhost:${rule.port}\r\nuser-agent: ${userAgent}\r\n${close ? 'connection: close\r\n' : ''}\r\n`;
}

/**
 * The answer to a probe, once `raw` holds all of it (RFC 9112 section 6.3):
 * interim 1xx answers skipped, the body framed by Content-Length, chunked
 * coding, or the end of the connection (`closed`); null while more is to
 * come. A `bodyStart` of at most 200 characters is all a probe keeps.
 */
function readAnswer(raw: Buffer, closed: boolean): ProbeResult | null {
  let start = 0;
  for (;;) {
    const headEnd = raw.indexOf('\r\n\r\n', start);
    // The first bytes may already rule HTTP out (a server speaking another protocol).
    if (!'HTTP/'.startsWith(raw.subarray(start, start + 5).toString('latin1'))) return notHttp(raw.subarray(start));
    if (headEnd < 0) return null;
    const lines = raw.subarray(start, headEnd).toString('latin1').split('\r\n');
    const statusLine = /^HTTP\/1\.[01] (\d{3})(?: |$)/.exec(lines[0] ?? '');
    if (!statusLine) return notHttp(raw.subarray(start));
    const status = Number(statusLine[1]);
    start = headEnd + 4;
    if (status >= 100 && status < 200) continue; // 100 Continue, 103 Early Hints: the answer follows
    const header = (name: string): string | undefined => lines.find((l) => l.toLowerCase().startsWith(`${name}:`))?.slice(name.length + 1).trim();
    const body = raw.subarray(start);
    const answer = (bytes: Buffer): ProbeResult => ({ status, bodyStart: bytes.toString('utf8').slice(0, 200), error: null });
    if (status === 204 || status === 304) return answer(Buffer.alloc(0)); // never a body (RFC 9112 section 6.3)
    if (/chunked/i.test(header('transfer-encoding') ?? '')) {
      const decoded = dechunk(body);
      if (decoded instanceof Error) return failed(decoded);
      return decoded ? answer(decoded) : closed ? failed(new Error('the app closed the connection in the middle of a chunked answer')) : null;
    }
    const length = header('content-length');
    if (length !== undefined) {
      if (body.length >= Number(length)) return answer(body.subarray(0, Number(length)));
      return closed ? failed(new Error(`the app closed the connection after ${body.length} of ${length} bytes of its answer`)) : null;
    }
    return closed ? answer(body) : null; // framed by the end of the connection
  }
}

/** The body of a complete chunked message (RFC 9112 section 7.1), null while its last chunk has not arrived, or what is wrong with it. */
function dechunk(body: Buffer): Buffer | null | Error {
  const parts: Buffer[] = [];
  let at = 0;
  for (;;) {
    const lineEnd = body.indexOf('\r\n', at);
    if (lineEnd < 0) return null;
    const sizeLine = body.subarray(at, lineEnd).toString('latin1');
    const size = /^[0-9a-f]+/i.test(sizeLine) ? parseInt(sizeLine, 16) : NaN; // a chunk extension (";name=value") may follow
    if (Number.isNaN(size)) return new Error(`the app's chunked answer has a malformed chunk size: ${JSON.stringify(sizeLine.slice(0, 40))}`);
    if (size === 0) return Buffer.concat(parts);
    if (body.length < lineEnd + 2 + size + 2) return null;
    parts.push(body.subarray(lineEnd + 2, lineEnd + 2 + size));
    at = lineEnd + 2 + size + 2;
  }
}

function notHttp(raw: Buffer): ProbeResult {
  return failed(new Error(`the app answered something other than HTTP/1.1: ${JSON.stringify(raw.subarray(0, 60).toString('latin1'))}`));
}

/**
 * Warm-up: one request of the health check per endpoint, each on a
 * connection of its own (`Connection: close`), `inFlight` at a time. A
 * process that has served nothing yet runs its request path in V8's
 * interpreter (and allocates its first pools); measured under load, the
 * first ~40 ms after go-live then answered several times slower than usual.
 *
 * One request per connection, not several pipelined on one (RFC 9112
 * section 9.3.2), which would cost the server less per request: a process
 * warmed up with pipelined requests kept answering keep-alive traffic at
 * ~+1% CPU per request (the benchmark's overhead measure, 8 sets: sets
 * -0.1..+2.0%, median +1.0%, against -0.1% with one request per
 * connection), presumably tuned to a pattern its clients do not send.
 * Answers are read and dropped: the health check has passed. An
 * HTTP/2-only app gets one stream per session. Best effort: what has not
 * finished WARM_UP_LIMIT_MS after the start is dropped, and a failed
 * request is not retried. Returns how many were answered.
 */
export async function warmUp(endpoints: Endpoint[], target: ProbeTarget, rule: HealthRule, inFlight: number): Promise<number> {
  const deadline = Date.now() + WARM_UP_LIMIT_MS;
  let next = 0;
  let answered = 0;
  const lane = async (): Promise<void> => {
    while (next < endpoints.length && Date.now() < deadline) {
      const endpoint = endpoints[next++];
      const left = deadline - Date.now();
      const ok = target.h2 ? await h2Once(endpoint, target.tls, rule, left) : await once(connectTo(endpoint, target.tls, ['http/1.1']), rule, left);
      if (ok) answered++;
    }
  };
  await Promise.all(Array.from({ length: Math.min(inFlight, endpoints.length) }, lane));
  return answered;
}

const WARM_UP_LIMIT_MS = 5_000;

/** One request as a stream of an HTTP/2 session of its own; true once an answer came. */
async function h2Once(endpoint: Endpoint, tls: boolean, rule: HealthRule, limitMs: number): Promise<boolean> {
  const session = h2Session(endpoint, tls, rule);
  session.on('error', () => undefined); // the stream closes with it
  const timer = setTimeout(() => session.destroy(), limitMs);
  try {
    const req = session.request({ ':path': rule.path ?? '/', 'user-agent': 'reuse-deploy-warm-up' });
    req.on('error', () => undefined); // seen as 'close'
    let answered = false;
    req.once('response', () => (answered = true));
    req.resume();
    req.end();
    await new Promise<void>((resolve) => req.on('close', resolve));
    return answered;
  } finally {
    clearTimeout(timer);
    session.destroy();
  }
}

/** One request with `Connection: close`: done when the server has closed; true if it answered first. */
function once(connect: () => net.Socket, rule: HealthRule, limitMs: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const socket = connect();
    const timer = setTimeout(() => socket.destroy(), limitMs);
    let answered = false;
    socket.once('data', () => (answered = true));
    socket.on('error', () => undefined); // seen as 'close'
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(answered);
    });
    socket.resume(); // the answer is not needed; reading it lets the server go on
    // write, not end(): a server may take a half-closed connection for a
    // client that has gone, before it has answered.
    socket.write(getRequest(rule, 'reuse-deploy-warm-up', true));
  });
}

function failed(err: unknown): ProbeResult {
  const e = err as Error & { code?: string };
  return { status: null, bodyStart: '', error: e.code ? `${e.code}: ${e.message}` : e.message };
}

/** An HTTP/2 session to the probe socket. */
function h2Session(endpoint: Endpoint, tls: boolean, rule: HealthRule): import('node:http2').ClientHttp2Session {
  const http2 = require('node:http2') as typeof import('node:http2');
  return http2.connect(`${tls ? 'https' : 'http'}://localhost:${rule.port}`, { createConnection: connectTo(endpoint, tls, ['h2']) });
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
