// The CLI's side of the keeper's control socket (src/deploy/keeper-client.ts,
// a few lines of HTTP/1.1 over node:net) against the keeper's real control
// server (src/keeper/control.ts), and against servers that answer badly.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import type http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { keeperDrain, keeperStatus, keeperWait, tryKeeperStatus } from '../src/deploy/keeper-client';
import { serveControl, type ControlHandlers } from '../src/keeper/control';
import type { KeeperStatus } from '../src/protocol';
import { rawServer as rawAnswerServer } from './helpers';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rd-ctl-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const status = (phase: string): KeeperStatus => ({ id: 'k1', release: 'r1', phase, apps: [] }) as unknown as KeeperStatus;

/** A raw server in this test's directory (helpers.ts). */
async function rawServer(name: string, answer: string | null): Promise<{ path: string; server: net.Server }> {
  const p = path.join(dir, name);
  return { path: p, server: await rawAnswerServer(p, answer) };
}

describe('keeper control client', () => {
  let control: http.Server;
  const socketPath = path.join(dir, 'control.sock');
  const drains: Record<string, unknown>[] = [];
  let phase = 'gated';

  before(async () => {
    const handlers: ControlHandlers = {
      status: async () => status(phase),
      wait: (phases, timeoutMs) =>
        new Promise((resolve) => {
          // The keeper answers once the phase changes: here, 150 ms after the call.
          setTimeout(() => {
            phase = 'live';
            resolve(status(phases.includes(phase) ? phase : 'gated'));
          }, Math.min(150, timeoutMs));
        }),
      live: async () => status('live'),
      unpark: async () => status('live'),
      drain: (body) => void drains.push(body),
      stop: () => undefined,
    };
    control = await serveControl(socketPath, handlers);
  });
  after(() => control.close());

  test('GET, a long poll and a POST body go through the real control server', async () => {
    assert.equal((await keeperStatus(socketPath)).phase, 'gated');
    const started = Date.now();
    assert.equal((await keeperWait(socketPath, ['live'], 5_000)).phase, 'live');
    assert.ok(Date.now() - started >= 140, 'the long poll waited for the change');
    await keeperDrain(socketPath, 30_000, 1_000, 0, ['/run/x/ab12-0-handoff.sock']);
    assert.deepEqual(drains, [{ timeoutMs: 30_000, graceMs: 1_000, parkMs: 0, handoff: ['/run/x/ab12-0-handoff.sock'] }]);
  });

  test('no keeper on the socket, or an error answer: rejected with the reason; tryKeeperStatus gives null', async () => {
    await assert.rejects(keeperStatus(path.join(dir, 'nobody.sock')), /ENOENT/);
    assert.equal(await tryKeeperStatus(path.join(dir, 'nobody.sock')), null);
    const error = JSON.stringify({ error: 'no such control call: GET /status' });
    const raw = await rawServer('404.sock', `HTTP/1.1 404 Not Found\r\ncontent-length: ${error.length}\r\n\r\n${error}`);
    await assert.rejects(keeperStatus(raw.path), /no such control call: GET \/status/);
    raw.server.close();
  });

  test('a truncated, chunked or non-HTTP answer is an error, not a half-read status', async () => {
    const body = JSON.stringify(status('live'));
    const cases: [string, string, RegExp][] = [
      ['short.sock', `HTTP/1.1 200 OK\r\ncontent-length: ${body.length + 10}\r\n\r\n${body}`, /before the end of its answer/],
      ['chunked.sock', `HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`, /before the end of its answer/],
      ['nohead.sock', 'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n', /before a complete answer/],
      ['garbage.sock', 'SSH-2.0-OpenSSH_9.6\r\n\r\n', /something other than HTTP/],
    ];
    for (const [name, answer, error] of cases) {
      const raw = await rawServer(name, answer);
      await assert.rejects(keeperStatus(raw.path), error, name);
      raw.server.close();
    }
    const good = await rawServer('good.sock', `HTTP/1.1 200 OK\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    assert.equal((await keeperStatus(good.path)).phase, 'live');
    good.server.close();
  });

  test('a keeper that never answers times out with a message', async () => {
    const raw = await rawServer('mute.sock', null);
    await assert.rejects(keeperStatus(raw.path, 200), /did not answer GET \/status within 200 ms/);
    raw.server.close();
  });
});
