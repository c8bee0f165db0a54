// Supervision: crash restarts without losing queued connections, crash
// loops, stop/start, and several app processes per release.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { addonPath, tcpListeners } from '../src/native';
import { SERVING_SLICE_NS } from '../src/protocol';
import { cleanup, fixture, freshAppPerTest, get, hasCustomSlices, isAlive, processGroup, readAppState, remember, ROOT, runCli, runProcess, sliceOf, waitUntil } from './helpers';

const t = freshAppPerTest();

const common = () => ['--port', String(t.port), '--host', '127.0.0.1', '--name', 'app', '--state-dir', t.stateDir];

interface AppStatusJson {
  pid: number | null;
  state: string;
  restarts: number;
}

async function appStatuses(): Promise<AppStatusJson[]> {
  const r = await runCli(['status', '--name', 'app', '--state-dir', t.stateDir, '--json']);
  assert.equal(r.code, 0, r.stderr);
  const live = JSON.parse(r.stdout).instances.find((i: { role: string }) => i.role === 'live');
  return live?.status?.apps ?? [];
}

describe('supervision', () => {
  test('kill -9 of the live app: queued requests wait, none fails, a new pid serves', async () => {
    const d = await runCli([fixture('app.js'), ...common(), '--health', '/healthz']);
    assert.equal(d.code, 0, d.stderr);
    remember(t.stateDir, 'app');
    const [before] = await appStatuses();
    const oldPid = before!.pid!;

    // A steady client loop; the kill lands between two requests, so that no
    // request is inside the process at that instant (those would die with it).
    const errors: string[] = [];
    const pids = new Set<string>();
    for (let i = 0; i < 60; i++) {
      if (i === 20) process.kill(oldPid, 'SIGKILL');
      try {
        const answer = await get(t.port, '/', { timeoutMs: 10_000 });
        if (answer.status !== 200) errors.push(`status ${answer.status}`);
        pids.add(answer.body.split(' ')[1]!);
      } catch (err) {
        errors.push(String(err));
      }
    }
    assert.deepEqual(errors, []);
    assert.ok(!isAlive(oldPid));
    const [after] = await appStatuses();
    assert.notEqual(after!.pid, oldPid);
    assert.equal(after!.state, 'live');
    assert.equal(after!.restarts, 1);
    assert.ok(pids.has(String(after!.pid)), 'the new process answered');
    if (hasCustomSlices) assert.equal(sliceOf(after!.pid!), SERVING_SLICE_NS, 'the restarted process serves on the short time slice too');
  });

  test("a crashed app process starts again after the reuse-deploy that deployed it is deleted (npm ci, a cleaned CI workspace)", async () => {
    // An install of the package of its own: what `npm pack` ships, less what the CLI does not load.
    const install = fs.mkdtempSync(path.join(os.tmpdir(), 'rd-install-'));
    try {
      for (const part of ['package.json', 'binding.gyp', 'prebuilds', path.join('dist', 'src')]) {
        fs.cpSync(path.join(ROOT, part), path.join(install, part), { recursive: true });
      }
      if (fs.existsSync(path.join(ROOT, 'build', 'Release'))) fs.cpSync(path.join(ROOT, 'build', 'Release'), path.join(install, 'build', 'Release'), { recursive: true });
      // The addon named by REUSE_DEPLOY_ADDON, in the install: the app processes get the copy's path instead.
      const addon = path.join(install, path.relative(ROOT, addonPath()));
      const d = await runProcess(process.execPath, [path.join(install, 'dist', 'src', 'cli.js'), fixture('app.js'), ...common()], {
        env: { ...process.env, REUSE_DEPLOY_RESTART_DELAY_MS: '100', REUSE_DEPLOY_ADDON: addon },
      });
      remember(t.stateDir, 'app');
      assert.equal(d.code, 0, d.stderr);
      const [before] = await appStatuses();
      const cmdline = fs.readFileSync(`/proc/${before!.pid}/cmdline`, 'utf8').split('\0');
      const preload = cmdline[cmdline.indexOf('--require') + 1]!;
      assert.ok(preload.startsWith(path.join(fs.realpathSync(t.stateDir), 'app', 'store', 'runtime') + path.sep), `the app loads the runtime from the state dir: ${preload}`);
      assert.ok((await get(t.port, '/env/REUSE_DEPLOY_ADDON')).body.startsWith(path.dirname(path.dirname(path.dirname(path.dirname(preload))))), 'REUSE_DEPLOY_ADDON names the copy');
      fs.rmSync(install, { recursive: true, force: true });
      process.kill(before!.pid!, 'SIGKILL');
      await waitUntil(async () => (await appStatuses())[0]?.state === 'live', 10_000, 'the app process to start again');
      const [after] = await appStatuses();
      assert.equal(after!.restarts, 1);
      assert.match((await get(t.port, '/')).body, new RegExp(` ${after!.pid}$`), 'the new process answers');
    } finally {
      fs.rmSync(install, { recursive: true, force: true });
    }
  });

  test('a state dir on a noexec mount: the app processes load the installed runtime, and the deploy says so', { skip: process.getuid?.() !== 0 && 'mounting a noexec tmpfs needs root' }, async () => {
    const mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'rd-noexec-'));
    const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'noexec,mode=700', 'tmpfs', mnt]).status === 0;
    try {
      if (!mounted) return assert.fail('mount -t tmpfs -o noexec failed');
      const stateDir = path.join(mnt, 'state');
      const d = await runCli([fixture('app.js'), '--port', String(t.port), '--host', '127.0.0.1', '--name', 'nx', '--state-dir', stateDir]);
      remember(stateDir, 'nx');
      assert.equal(d.code, 0, d.stderr);
      assert.match(d.stderr, /store\/runtime is on a noexec mount: r1's app processes load reuse-deploy's runtime from .*dist\/src\/runtime\/preload\.js, which must stay in place/);
      assert.equal((await get(t.port, '/')).status, 200);
      assert.equal((await runCli(['stop', '--name', 'nx', '--state-dir', stateDir])).code, 0);
    } finally {
      await cleanup(path.join(mnt, 'state'));
      if (mounted) spawnSync('umount', ['-l', mnt]);
      fs.rmSync(mnt, { recursive: true, force: true });
    }
  });

  test('a release replaced with --park while its app process restarts after a crash: that process is stopped, and the release does not park', async () => {
    const mark = path.join(t.stateDir, 'crashed');
    const env = { REUSE_DEPLOY_RESTART_DELAY_MS: '100' };
    const d = await runCli([fixture('app.js'), ...common(), '--env', 'APP_VERSION=v1', '--env', `SLOW_RESTART_MARK=${mark}`, '--env', 'SLOW_RESTART_MS=20000'], { env });
    assert.equal(d.code, 0, d.stderr);
    remember(t.stateDir, 'app');
    const [before] = await appStatuses();
    fs.writeFileSync(mark, '');
    process.kill(before!.pid!, 'SIGKILL');
    await waitUntil(async () => {
      const [app] = await appStatuses();
      return app?.restarts === 1 && app.state === 'starting';
    }, 5_000, 'the restarted process to boot (20 s late)');
    const d2 = await runCli([fixture('app.js'), ...common(), '--env', 'APP_VERSION=v2', '--park', '1m', '--handshake-grace', '100ms'], { env });
    assert.equal(d2.code, 0, d2.stderr);
    remember(t.stateDir, 'app');
    const log = path.join(t.stateDir, 'app', 'logs', 'r1.log');
    await waitUntil(() => fs.readFileSync(log, 'utf8').includes('not parking: an app process is not running; stopping instead'), 10_000, 'r1 to stop instead of parking');
    // Before, the drain message reached the booting process, which went live
    // when it listened, after r1 had parked (seen with a 3 s delay): its
    // socket was back in the port's group, under a release recorded as parked.
    await waitUntil(() => fs.readFileSync(log, 'utf8').includes('keeper exits'), 15_000, "r1's keeper to exit");
    assert.equal(tcpListeners(t.port)?.length, 1, 'only v2 is in the port group');
    assert.match((await get(t.port, '/')).body, /^v2 /);
  });

  test('a crash loop gives up, and status says so', async () => {
    const d = await runCli([fixture('crash-after-live.js'), ...common()], { env: { REUSE_DEPLOY_RESTART_DELAY_MS: '100' } });
    assert.equal(d.code, 0, d.stderr);
    remember(t.stateDir, 'app');
    await waitUntil(async () => (await appStatuses())[0]?.state === 'failed', 20_000, 'the crash loop to be given up');
    const [app] = await appStatuses();
    assert.ok(app!.restarts >= 3, `restarts counted: ${app!.restarts}`);
    const text = await runCli(['status', '--name', 'app', '--state-dir', t.stateDir]);
    assert.match(text.stdout, /failed/);
    assert.match(text.stdout, /crash loop/);
    assert.match(text.stdout, /crashed after going live/, 'the last lines of the log are shown');
    // The crashed process left its hand-over socket file; the keeper removes it when it stops.
    const run = path.join(t.stateDir, 'app', 'run');
    const sockets = () => fs.readdirSync(run).filter((f) => f.endsWith('.sock'));
    assert.ok(sockets().some((f) => f.endsWith('-handoff.sock')), `left by the crash: ${sockets().join(', ')}`);
    assert.equal((await runCli(['stop', '--name', 'app', '--state-dir', t.stateDir])).code, 0);
    await waitUntil(() => sockets().length === 0, 5_000, `no socket file left behind (${sockets().join(', ')})`);
  });

  test('stop, then start: the same release serves again', async () => {
    assert.equal((await runCli([fixture('app.js'), ...common(), '--env', 'APP_VERSION=v7'])).code, 0);
    remember(t.stateDir, 'app');
    assert.equal((await runCli(['stop', '--name', 'app', '--state-dir', t.stateDir])).code, 0);
    await assert.rejects(get(t.port, '/'));
    const start = await runCli(['start', '--name', 'app', '--state-dir', t.stateDir]);
    assert.equal(start.code, 0, start.stderr);
    assert.match(start.stdout, /deployed app r1/);
    remember(t.stateDir, 'app');
    assert.match((await get(t.port, '/')).body, /^v7 /);
    const again = await runCli(['start', '--name', 'app', '--state-dir', t.stateDir]);
    assert.equal(again.code, 0);
    assert.match(again.stdout, /already running/);
  });

  test('--instances 2: two processes share the socket and cut over together', async () => {
    const d1 = await runCli([fixture('app.js'), ...common(), '--instances', '2', '--env', 'APP_VERSION=v1']);
    assert.equal(d1.code, 0, d1.stderr);
    remember(t.stateDir, 'app');
    const first = await appStatuses();
    assert.equal(first.length, 2);
    assert.equal(first.filter((a) => a.state === 'live').length, 2);
    const keeper = (readAppState(t.stateDir, 'app')!.instances[0] as { keeperPid: number }).keeperPid;
    assert.equal(processGroup(keeper).length, 3, 'one keeper, two app processes');

    const seen = new Set<string>();
    for (let i = 0; i < 60 && seen.size < 2; i++) seen.add((await get(t.port, '/')).body.split(' ')[1]!);
    assert.equal(seen.size, 2, 'both processes answer');

    const d2 = await runCli([fixture('app.js'), ...common(), '--instances', '2', '--env', 'APP_VERSION=v2']);
    assert.equal(d2.code, 0, d2.stderr);
    remember(t.stateDir, 'app');
    assert.match(d2.stdout, /\(pid \d+, \d+, replaced r1\)/);
    for (let i = 0; i < 10; i++) assert.match((await get(t.port, '/')).body, /^v2 /);
    await sleep(100);
  });

  test('--instances 2 with one unhealthy process: the deploy fails and both old processes keep serving', async () => {
    const d1 = await runCli([fixture('app.js'), ...common(), '--instances', '2', '--env', 'APP_VERSION=v1']);
    assert.equal(d1.code, 0, d1.stderr);
    remember(t.stateDir, 'app');
    const before = (await appStatuses()).map((a) => a.pid);

    const marker = path.join(t.stateDir, 'unhealthy-pid');
    const d2 = await runCli([
      fixture('app.js'),
      ...common(),
      '--instances',
      '2',
      '--health',
      '/healthz',
      '--health-timeout',
      '5s',
      '--env',
      'APP_VERSION=v2',
      '--env',
      `HEALTH_FAIL_ONE=${marker}`,
    ]);
    assert.equal(d2.code, 1, d2.stderr);
    assert.match(d2.stderr, /RD_ERR_HEALTH_STATUS/);
    assert.match(d2.stderr, /answered 503: "database unreachable"/, 'the error names the failing answer, not the passing one');
    const unhealthy = Number(fs.readFileSync(marker, 'utf8'));
    await waitUntil(() => !isAlive(unhealthy), 5_000, 'the unhealthy process to be stopped');
    assert.deepEqual((await appStatuses()).map((a) => a.pid), before, 'the old processes are untouched');
    for (let i = 0; i < 10; i++) assert.match((await get(t.port, '/')).body, /^v1 /);
  });
});
