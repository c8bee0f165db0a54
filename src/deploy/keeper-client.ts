// Talks to a keeper's control socket: HTTP/1.1 over a unix socket, JSON
// bodies, one request per connection (the server is node:http in
// src/keeper/control.ts, so curl --unix-socket works for debugging).
//
// The client side is a few lines over node:net rather than node:http: the
// CLI asks the live keeper for its status before it snapshots and starts
// the new release, and on Node 20 loading and first using node:http's
// client costs ~15-20 ms of CPU there, on the deploy's critical path. The
// server is ours: it sends a Content-Length and closes the connection
// (RFC 9112 section 9.6: the client's "Connection: close").
import net from 'node:net';
import type { KeeperStatus, WarmUpRequest } from '../protocol';

/** Status code and body of one complete HTTP/1.1 response, or an error saying what is wrong with it. */
function parseResponse(raw: Buffer): { status: number; body: string } {
  const head = raw.indexOf('\r\n\r\n');
  if (head < 0) throw new Error('the keeper closed the connection before a complete answer');
  const lines = raw.subarray(0, head).toString('latin1').split('\r\n');
  const status = /^HTTP\/1\.[01] (\d{3}) /.exec(`${lines[0]} `);
  if (!status) throw new Error(`the keeper answered something other than HTTP: ${JSON.stringify(lines[0]?.slice(0, 60))}`);
  const length = lines.find((l) => /^content-length:/i.test(l));
  const body = raw.subarray(head + 4);
  if (!length || Number(length.slice(15).trim()) !== body.length) throw new Error('the keeper closed the connection before the end of its answer');
  return { status: Number(status[1]), body: body.toString('utf8') };
}

function call<T>(socketPath: string, method: 'GET' | 'POST', path: string, body: unknown, timeoutMs: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const payload = body === undefined ? '' : JSON.stringify(body);
    const head = [`${method} ${path} HTTP/1.1`, 'host: keeper', 'connection: close'];
    if (method === 'POST') head.push('content-type: application/json', `content-length: ${Buffer.byteLength(payload)}`);
    const chunks: Buffer[] = [];
    // Not end(): node:http's server drops a request whose client half-closed
    // before the answer was ready (its httpAllowHalfOpen is false).
    const socket = net.connect(socketPath, () => socket.write(`${head.join('\r\n')}\r\n\r\n${payload}`));
    socket.setTimeout(timeoutMs, () => socket.destroy(new Error(`the keeper did not answer ${method} ${path} within ${timeoutMs} ms`)));
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', reject);
    socket.on('end', () => {
      try {
        const res = parseResponse(Buffer.concat(chunks));
        const json = JSON.parse(res.body) as T & { error?: string };
        if (res.status >= 400) reject(new Error(json.error ?? `keeper answered ${res.status}`));
        else resolve(json);
      } catch (err) {
        reject(err);
      }
    });
  });
}

/** With `stats`, the apps' connection counts are fresh (a round trip to each app; for `status`). */
export function keeperStatus(socketPath: string, timeoutMs = 2_000, stats = false): Promise<KeeperStatus> {
  return call(socketPath, 'GET', stats ? '/status?stats=1' : '/status', undefined, timeoutMs);
}

/** Resolves or rejects with null when nobody answers on the socket. */
export async function tryKeeperStatus(socketPath: string, timeoutMs = 2_000, stats = false): Promise<KeeperStatus | null> {
  try {
    return await keeperStatus(socketPath, timeoutMs, stats);
  } catch {
    return null;
  }
}

/** Long-polls until the keeper's phase is one of `phases` (or timeoutMs passed); returns its status then. */
export function keeperWait(socketPath: string, phases: string[], timeoutMs: number): Promise<KeeperStatus> {
  return call(socketPath, 'GET', `/wait?phases=${phases.join(',')}&timeoutMs=${timeoutMs}`, undefined, timeoutMs + 2_000);
}

/**
 * Longer than go-live's own budget (src/keeper/main.ts, goLive: up to 10 s
 * for the app processes to accept, then up to 5 s of warm-up): a keeper
 * still going live must answer, not be taken for a failed one and stopped
 * after it had joined the port.
 */
const GO_LIVE_ANSWER_MS = 25_000;

/** Go-live, with the warm-up first if `warmUp` asks for one (best effort, at most 5 s: the timeout allows for it). */
export function keeperLive(socketPath: string, knownPids: number[], warmUp: WarmUpRequest | null = null): Promise<KeeperStatus> {
  return call(socketPath, 'POST', '/live', { knownPids, warmUp }, GO_LIVE_ANSWER_MS);
}

export function keeperUnpark(socketPath: string, knownPids: number[]): Promise<KeeperStatus> {
  return call(socketPath, 'POST', '/unpark', { knownPids }, GO_LIVE_ANSWER_MS);
}

/**
 * Starts the drain; with parkMs, the release stays up (closed to traffic)
 * that long for an instant rollback. `handoff`: the new version's hand-over
 * sockets, which take the idle keep-alive connections.
 */
export function keeperDrain(socketPath: string, timeoutMs: number, graceMs: number, parkMs = 0, handoff: string[] = []): Promise<unknown> {
  return call(socketPath, 'POST', '/drain', { timeoutMs, graceMs, parkMs, handoff }, 5_000);
}

export function keeperStop(socketPath: string): Promise<unknown> {
  return call(socketPath, 'POST', '/stop', {}, 5_000);
}
