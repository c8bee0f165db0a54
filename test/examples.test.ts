// End-to-end over the shipped examples: each framework's idiomatic startup is
// deployed as v1, replaced by v2 under a request loop with zero errors, then stopped.
import assert from 'node:assert/strict';
import path from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { cleanup, freePort, get, isAlive, processGroup, readAppState, remember, requestLoop, ROOT, runCli, tempStateDir, waitUntil } from './helpers';

const NAME = 'example';

let stateDir: string;
let port: number;

beforeEach(async () => {
  stateDir = tempStateDir();
  port = await freePort();
});
afterEach(async () => {
  await cleanup(stateDir);
});

function deploy(entry: string, version: string) {
  return runCli([
    path.join(ROOT, 'examples', entry),
    '--port', String(port),
    '--host', '127.0.0.1',
    '--name', NAME,
    '--state-dir', stateDir,
    '--env', `APP_VERSION=${version}`,
    '--health', '/healthz',
  ]);
}

/** Every pid of every recorded instance (keepers and their app processes). */
function appPids(): number[] {
  const state = readAppState(stateDir, NAME);
  return (state?.instances ?? []).flatMap((i) => processGroup(i.keeperPid));
}

const examples: { name: string; entry: string; tls?: boolean }[] = [
  { name: 'express', entry: 'express/server.js' },
  { name: 'fastify', entry: 'fastify/server.js' },
  { name: 'koa', entry: 'koa/server.js' },
  { name: 'https', entry: 'https/server.js', tls: true },
  { name: 'esm', entry: 'esm/server.mjs' },
];

describe('examples: deploy v1, cut over to v2 under load, stop', () => {
  for (const ex of examples) {
    test(ex.name, async () => {
      const tls = ex.tls ?? false;
      const tag = (v: string) => `${v} ${ex.name} `;

      const r1 = await deploy(ex.entry, 'v1');
      assert.equal(r1.code, 0, r1.stderr);
      remember(stateDir, NAME);
      const first = await get(port, '/', { tls });
      assert.equal(first.status, 200);
      assert.ok(first.body.startsWith(tag('v1')), first.body);
      assert.equal((await get(port, '/healthz', { tls })).status, 200);

      const loop = requestLoop(port, { tls });
      try {
        await waitUntil(() => loop.answers.length > 10 || loop.errors.length > 0, 10_000, 'v1 answers in the loop');
        const r2 = await deploy(ex.entry, 'v2');
        assert.equal(r2.code, 0, r2.stderr);
        assert.match(r2.stdout, /replaced r1/);
        remember(stateDir, NAME);
        await waitUntil(
          () => loop.answers.filter((a) => a.startsWith(tag('v2'))).length > 10 || loop.errors.length > 0,
          10_000,
          'v2 answers in the loop',
        );
      } finally {
        await loop.stop();
      }

      assert.deepEqual(loop.errors, []);
      assert.ok(loop.answers.every((a) => a.startsWith(tag('v1')) || a.startsWith(tag('v2'))), 'only v1 or v2 answers');
      assert.ok(loop.answers[0]!.startsWith(tag('v1')), `first answer: ${loop.answers[0]}`);
      const firstV2 = loop.answers.findIndex((a) => a.startsWith(tag('v2')));
      assert.ok(firstV2 > 0, 'v1 answered before v2');
      const backToV1 = loop.answers.slice(firstV2).findIndex((a) => a.startsWith(tag('v1')));
      assert.equal(backToV1, -1, `a v1 answer came ${backToV1} answers after the first v2 answer`);

      const pids = appPids();
      const stop = await runCli(['stop', '--name', NAME, '--state-dir', stateDir]);
      assert.equal(stop.code, 0, stop.stderr);
      await waitUntil(() => pids.every((pid) => !isAlive(pid)), 10_000, 'every process of the app to exit');
      await assert.rejects(get(port, '/', { tls, timeoutMs: 2_000 }), /ECONNREFUSED/);
    });
  }
});
