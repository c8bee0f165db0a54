// Talks to a keeper's control socket: HTTP over a unix socket, JSON bodies.
// node:http, as for the health probes (see src/deploy/health.ts for why not undici).
import http from 'node:http';
import net from 'node:net';
import type { KeeperStatus } from '../protocol';

function call<T>(socketPath: string, method: 'GET' | 'POST', path: string, body: unknown, timeoutMs: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request(
      {
        // A connection of its own, without an Agent: an Agent works out a TLS
        // server name for every request, and its first isIP() call compiles
        // a large regular expression (~10 ms) on the deploy's critical path.
        createConnection: () => net.connect(socketPath),
        method,
        path,
        headers: payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {},
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => {
          try {
            const json = JSON.parse(text) as T & { error?: string };
            if ((res.statusCode ?? 500) >= 400) reject(new Error(json.error ?? `keeper answered ${res.statusCode}`));
            else resolve(json);
          } catch (err) {
            reject(err);
          }
        });
        res.on('error', reject);
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`the keeper did not answer ${method} ${path} within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(payload);
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

export function keeperLive(socketPath: string, knownPids: number[]): Promise<KeeperStatus> {
  return call(socketPath, 'POST', '/live', { knownPids }, 15_000);
}

export function keeperUnpark(socketPath: string, knownPids: number[]): Promise<KeeperStatus> {
  return call(socketPath, 'POST', '/unpark', { knownPids }, 15_000);
}

/** Starts the drain; with parkMs, the release stays up (closed to traffic) that long for an instant rollback. */
export function keeperDrain(socketPath: string, timeoutMs: number, graceMs: number, parkMs = 0): Promise<unknown> {
  return call(socketPath, 'POST', '/drain', { timeoutMs, graceMs, parkMs }, 5_000);
}

export function keeperStop(socketPath: string): Promise<unknown> {
  return call(socketPath, 'POST', '/stop', {}, 5_000);
}
