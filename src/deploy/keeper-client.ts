// Talks to a keeper's control socket (HTTP over a unix socket, with undici).
import { newClient } from './http-client';
import type { KeeperStatus } from '../protocol';

async function call<T>(socketPath: string, method: 'GET' | 'POST', path: string, body: unknown, timeoutMs: number): Promise<T> {
  const client = newClient('http://keeper', { socketPath, connectTimeout: timeoutMs });
  try {
    const res = await client.request({
      method,
      path,
      headers: { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
    });
    const json = (await res.body.json()) as T & { error?: string };
    if (res.statusCode >= 400) throw new Error(json.error ?? `keeper answered ${res.statusCode}`);
    return json;
  } finally {
    await client.close().catch(() => undefined);
  }
}

export function keeperStatus(socketPath: string, timeoutMs = 2_000): Promise<KeeperStatus> {
  return call(socketPath, 'GET', '/status', undefined, timeoutMs);
}

/** Resolves or rejects with null when nobody answers on the socket. */
export async function tryKeeperStatus(socketPath: string, timeoutMs = 2_000): Promise<KeeperStatus | null> {
  try {
    return await keeperStatus(socketPath, timeoutMs);
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
