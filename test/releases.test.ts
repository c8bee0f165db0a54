// Releases: snapshots that survive rebuilds, rollback, redeploy, pruning.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { collectGarbage, snapshot } from '../src/deploy/snapshot';
import { CLI, cleanup, fixture, freePort, get, remember, runCli, tempStateDir, waitUntil } from './helpers';

let stateDir: string;
let appDir: string;
let port: number;

/** Writes a real app whose code says `version`, as a build would. */
function build(version: string): void {
  fs.mkdirSync(path.join(appDir, 'lib'), { recursive: true });
  fs.writeFileSync(path.join(appDir, 'package.json'), JSON.stringify({ name: 'shop' }));
  fs.writeFileSync(path.join(appDir, 'lib', 'version.js'), `module.exports = ${JSON.stringify(version)};\n`);
  fs.copyFileSync(fixture('app.js'), path.join(appDir, 'server.js'));
  fs.writeFileSync(path.join(appDir, 'server.js'), fs.readFileSync(fixture('app.js'), 'utf8').replace("process.env.APP_VERSION || 'v1'", "require('./lib/version')"));
}

beforeEach(async () => {
  stateDir = tempStateDir();
  appDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rd-app-'));
  port = await freePort();
});
afterEach(async () => {
  await cleanup(stateDir);
  fs.rmSync(appDir, { recursive: true, force: true });
});

async function deploy(...extra: string[]) {
  const r = await runCli([path.join(appDir, 'server.js'), '--port', String(port), '--host', '127.0.0.1', '--state-dir', stateDir, ...extra]);
  remember(stateDir, 'shop');
  return r;
}

async function cli(...args: string[]) {
  const r = await runCli([...args, '--name', 'shop', '--state-dir', stateDir]);
  remember(stateDir, 'shop');
  return r;
}

async function version(): Promise<string> {
  return (await get(port, '/')).body.split(' ')[0]!;
}

describe('releases and rollback', () => {
  test('--previous after the app directory was overwritten by a new build: v1 serves', async () => {
    build('v1');
    assert.equal((await deploy()).code, 0);
    build('v2');
    assert.equal((await deploy()).code, 0);
    assert.equal(await version(), 'v2');
    build('v3'); // CI rebuilt ./ without deploying
    const r = await cli('--previous');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /deployed shop r1 .*replaced r2/);
    assert.equal(await version(), 'v1');
  });

  test('--release after the app directory was deleted: that release serves', async () => {
    build('v1');
    assert.equal((await deploy()).code, 0);
    build('v2');
    assert.equal((await deploy()).code, 0);
    build('v3');
    assert.equal((await deploy()).code, 0);
    fs.rmSync(appDir, { recursive: true, force: true });
    const r = await cli('--release', 'r2');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await version(), 'v2');
    const list = await cli('releases', '--json');
    const releases = JSON.parse(list.stdout).releases as { id: string; live: boolean; previous: boolean }[];
    assert.deepEqual(releases.find((x) => x.live)?.id, 'r2');
    assert.deepEqual(releases.find((x) => x.previous)?.id, 'r3');
  });

  test('a partial snapshot left by a killed CLI does not block the next deploy', async () => {
    build('v1');
    assert.equal((await deploy()).code, 0);
    // What a kill -9 during the snapshot of r2 leaves: files under r2, and
    // state.json still numbering the next release r2.
    const stray = path.join(stateDir, 'shop', 'releases', 'r2');
    fs.mkdirSync(stray, { recursive: true });
    fs.writeFileSync(path.join(stray, 'server.js'), 'half a file');
    build('v2');
    const r = await deploy();
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /deployed shop r2/);
    assert.equal(await version(), 'v2');
  });

  test('a failed rollback leaves the current version serving and exits 1', async () => {
    build('v1');
    assert.equal((await deploy()).code, 0);
    build('v2');
    assert.equal((await deploy()).code, 0);
    // Break r1's snapshot the way a vanished dependency would.
    const r1Server = path.join(stateDir, 'shop', 'releases', 'r1', 'server.js');
    fs.rmSync(r1Server);
    fs.writeFileSync(r1Server, 'throw new Error("r1 no longer boots")\n');
    const r = await cli('--previous', '--health-timeout', '3s');
    assert.equal(r.code, 1);
    assert.match(r.stderr, /RD_ERR_BOOT_CRASH/);
    assert.equal(await version(), 'v2');
  });

  test('--keep prunes old releases while the new one boots, never the live or the previous one', async () => {
    for (const v of ['v1', 'v2', 'v3']) {
      build(v);
      assert.equal((await deploy()).code, 0);
    }
    assert.equal((await cli('--release', 'r1')).code, 0); // live r1, previous r3
    // Releases that an instance still runs (r3, draining) are kept too: wait for it to finish.
    await waitUntil(async () => JSON.parse((await cli('status', '--json')).stdout).instances.length === 1, 15_000, 'r3 to finish draining');
    build('v4');
    const r = await deploy('--keep', '1');
    assert.equal(r.code, 0, r.stderr);
    // Pruning runs while r4 boots, against the releases as they are then:
    // r1 (live, now previous) and r3 (previous until r4 is live) stay; r2 goes.
    assert.match(r.stdout, /; pruned r2$/m);
    const ids = async () => (JSON.parse((await cli('releases', '--json')).stdout).releases as { id: string }[]).map((x) => x.id).sort();
    assert.deepEqual(await ids(), ['r1', 'r3', 'r4']);
    assert.ok(!fs.existsSync(path.join(stateDir, 'shop', 'releases', 'r2')));
    assert.equal(await version(), 'v4');
    // The next deploy prunes r3; r1 is the previous one while r5 boots.
    build('v5');
    await waitUntil(async () => JSON.parse((await cli('status', '--json')).stdout).instances.length === 1, 15_000, 'r1 to finish draining');
    const r5 = await deploy('--keep', '1');
    assert.equal(r5.code, 0, r5.stderr);
    assert.match(r5.stdout, /; pruned r3$/m);
    assert.deepEqual(await ids(), ['r1', 'r4', 'r5']);
    assert.equal(await version(), 'v5');
    const back = await cli('--previous');
    assert.equal(back.code, 0, back.stderr);
    assert.equal(await version(), 'v4');
  });
});

describe('parked rollback', () => {
  test('--park keeps the old version up, closed to traffic; --previous brings it back without a boot', async () => {
    build('v1');
    assert.equal((await deploy()).code, 0);
    build('v2');
    const d2 = await deploy('--park', '1m');
    assert.equal(d2.code, 0, d2.stderr);
    const parkedStatus = async () => JSON.parse((await cli('status', '--json')).stdout).instances.find((i: { role: string }) => i.role === 'parked');
    await waitUntil(async () => (await parkedStatus())?.status?.phase === 'parked', 10_000, 'r1 to be parked');
    const parked = await parkedStatus();
    assert.equal(parked.release, 'r1');
    assert.equal(parked.status.listener, 'bound', 'out of the port group, but still bound');
    const parkedPid = parked.status.apps[0].pid;
    for (let i = 0; i < 10; i++) assert.equal(await version(), 'v2', 'a parked release takes no traffic');

    const back = await cli('--previous', '--env', 'EXTRA=1');
    assert.equal(back.code, 0, back.stderr);
    assert.match(back.stdout, /brought parked shop r1 back/);
    assert.match(back.stderr, /warning: r1 is parked: its processes come back as they ran, and --env given now cannot change them/);
    for (let i = 0; i < 10; i++) {
      const answer = await get(port, '/');
      assert.equal(answer.body, `v1 ${parkedPid}`, 'the very same process answers again');
    }
  });
});

describe('parked rollback and signals', () => {
  test('a SIGTERM while a parked release comes back waits for the hand-over: r1 is recorded live, r2 leaves', async () => {
    build('v1');
    assert.equal((await deploy()).code, 0);
    build('v2');
    assert.equal((await deploy('--park', '1m')).code, 0);
    await waitUntil(async () => JSON.parse((await cli('status', '--json')).stdout).instances.some((i: { status?: { phase: string } }) => i.status?.phase === 'parked'), 10_000, 'r1 to be parked');
    // r1's app process frozen: the keeper's unpark waits for it to accept
    // again, so the command waits inside the unpark, and the signal surely
    // comes between the unpark and its record.
    const parked = (JSON.parse((await cli('status', '--json')).stdout).instances as { role: string; status: { apps: { pid: number }[] } }[]).find((i) => i.role === 'parked')!;
    const appPid = parked.status.apps[0]!.pid;
    process.kill(appPid, 'SIGSTOP');
    const child = spawn(process.execPath, [CLI, '--previous', '--name', 'shop', '--state-dir', stateDir], { env: { ...process.env, CI: 'true' }, stdio: ['ignore', 'ignore', 'pipe'] });
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    let stderr = '';
    try {
      child.stderr.on('data', (d) => (stderr += d));
      await waitUntil(() => /bringing parked r1 back/.test(stderr), 10_000, 'the unpark to begin');
      await sleep(100); // the command waits for the keeper's answer
      child.kill('SIGTERM');
      await sleep(100);
    } finally {
      process.kill(appPid, 'SIGCONT');
    }
    const code = await exited;
    assert.equal(code, 0, `${child.signalCode ?? ''} ${stderr}`);
    assert.match(stderr, /bringing parked r1 back/);
    assert.match(stderr, /SIGTERM: r1 is coming back; the command ends once it has taken over/);
    const state = JSON.parse((await cli('status', '--json')).stdout) as { instances: { release: string; role: string }[] };
    assert.deepEqual(state.instances.filter((i) => i.role === 'live').map((i) => i.release), ['r1']);
    assert.equal(await version(), 'v1');
  });
});

describe('stopping a release that parks', () => {
  // Before, both stopped the app processes at once (SIGTERM), and the request in flight was cut.
  test('stop while the replaced release still drains on its way to parking: it closes instead, and its request in flight is answered', async () => {
    build('v1');
    assert.equal((await deploy('--env', 'SLOW_MS=8000')).code, 0);
    let slowDone = false;
    const slow = get(port, '/slow', { timeoutMs: 20_000 }).finally(() => (slowDone = true));
    await sleep(300); // the request is in v1
    build('v2');
    const d2 = await deploy('--park', '1m', '--handshake-grace', '5s');
    assert.equal(d2.code, 0, d2.stderr);
    assert.equal(slowDone, false, 'the request is still in flight');
    const stopped = await cli('stop'); // v1 is recorded as parked, and still waits out its grace
    assert.equal(stopped.code, 0, stopped.stderr);
    const answer = await slow;
    assert.equal(answer.status, 200);
    assert.equal(answer.body, 'v1 slow');
    assert.match(fs.readFileSync(path.join(stateDir, 'shop', 'logs', 'r1.log'), 'utf8'), /not parking: a stop came during the drain; stopping instead/);
  });

  test('stop of a parked release lets its app processes finish the requests they still serve', async () => {
    build('v1');
    assert.equal((await deploy('--env', 'SLOW_MS=8000')).code, 0);
    let slowDone = false;
    const slow = get(port, '/slow', { timeoutMs: 20_000 }).finally(() => (slowDone = true));
    await sleep(300);
    build('v2');
    assert.equal((await deploy('--park', '1m', '--handshake-grace', '100ms')).code, 0);
    const phase = async () => JSON.parse((await cli('status', '--json')).stdout).instances.find((i: { release: string }) => i.release === 'r1')?.status?.phase;
    await waitUntil(async () => (await phase()) === 'parked', 5_000, 'r1 to be parked');
    assert.equal(slowDone, false, 'the request is still in flight');
    const stopped = await cli('stop');
    assert.equal(stopped.code, 0, stopped.stderr);
    const answer = await slow;
    assert.equal(answer.status, 200);
    assert.equal(answer.body, 'v1 slow');
  });
});

describe('snapshots', () => {
  test('unchanged files are shared and not read again; .git and .reusedeployignore stay out', () => {
    build('v1');
    fs.mkdirSync(path.join(appDir, '.git'));
    fs.writeFileSync(path.join(appDir, '.git', 'HEAD'), 'ref: main\n');
    fs.mkdirSync(path.join(appDir, 'coverage'));
    fs.writeFileSync(path.join(appDir, 'coverage', 'lcov.info'), 'x');
    fs.writeFileSync(path.join(appDir, 'debug.log'), 'x');
    fs.writeFileSync(path.join(appDir, '.reusedeployignore'), '# not deployed\ncoverage/\n*.log\n');
    const store = path.join(stateDir, 'store');
    const first = snapshot(appDir, path.join(stateDir, 'r1'), store);
    assert.equal(first.files, 4); // package.json, lib/version.js, server.js, .reusedeployignore
    assert.equal(first.hashed, 4);
    assert.ok(!fs.existsSync(path.join(stateDir, 'r1', '.git')));
    assert.ok(!fs.existsSync(path.join(stateDir, 'r1', 'coverage')));
    assert.ok(!fs.existsSync(path.join(stateDir, 'r1', 'debug.log')));

    fs.writeFileSync(path.join(appDir, 'lib', 'version.js'), 'module.exports = "v2";\n');
    const second = snapshot(appDir, path.join(stateDir, 'r2'), store);
    assert.equal(second.hashed, 1, 'only the changed file is read');
    assert.equal(second.newBytes, fs.statSync(path.join(appDir, 'lib', 'version.js')).size);
    const a = fs.statSync(path.join(stateDir, 'r1', 'server.js'));
    const b = fs.statSync(path.join(stateDir, 'r2', 'server.js'));
    assert.equal(a.ino, b.ino, 'one inode shared by both releases');
    assert.equal(a.mode & 0o222, 0, 'store files are read-only');

    fs.rmSync(path.join(stateDir, 'r1'), { recursive: true });
    const freed = collectGarbage(store, [path.join(stateDir, 'r2')]);
    assert.equal(freed, 'module.exports = "v1";\n'.length, 'only r1\'s own version.js is freed');
    assert.equal(fs.readFileSync(path.join(stateDir, 'r2', 'server.js'), 'utf8'), fs.readFileSync(path.join(appDir, 'server.js'), 'utf8'));
  });

  test("npm workspaces: a node_modules whose links lead out of it is laid out in the release, so they reach the release's own packages", () => {
    // --root at the repository root: apps/web requires @acme/lib, which npm links to packages/lib.
    const repo = fs.mkdtempSync(path.join(os.tmpdir(), 'rd-ws-'));
    try {
      const write = (rel: string, text: string): void => {
        fs.mkdirSync(path.dirname(path.join(repo, rel)), { recursive: true });
        fs.writeFileSync(path.join(repo, rel), text);
      };
      write('package.json', JSON.stringify({ name: 'acme', private: true, workspaces: ['apps/*', 'packages/*'] }));
      write('packages/lib/package.json', JSON.stringify({ name: '@acme/lib', main: 'index.js' }));
      write('packages/lib/index.js', 'module.exports = `lib at ${__dirname}`;\n');
      write('apps/web/package.json', JSON.stringify({ name: 'web' }));
      write('node_modules/left-pad/package.json', JSON.stringify({ name: 'left-pad', main: 'index.js' }));
      write('node_modules/left-pad/index.js', 'module.exports = 1;\n');
      fs.mkdirSync(path.join(repo, 'node_modules', '@acme'));
      fs.symlinkSync('../../packages/lib', path.join(repo, 'node_modules', '@acme', 'lib'));
      const store = path.join(stateDir, 'store');
      const release = path.join(stateDir, 'r1');
      snapshot(repo, release, store);
      assert.ok(!fs.lstatSync(path.join(release, 'node_modules')).isSymbolicLink(), 'node_modules is laid out in the release');
      const loaded = spawnSync(process.execPath, ['-p', "require('@acme/lib')"], { cwd: path.join(release, 'apps', 'web'), encoding: 'utf8' });
      assert.equal(loaded.stdout.trim(), `lib at ${fs.realpathSync(path.join(release, 'packages', 'lib'))}`, loaded.stderr);

      // Without such links, node_modules stays one shared tree in the store.
      fs.rmSync(path.join(repo, 'node_modules', '@acme'), { recursive: true });
      snapshot(repo, path.join(stateDir, 'r2'), store);
      assert.ok(fs.readlinkSync(path.join(stateDir, 'r2', 'node_modules')).startsWith(path.join(store, 'trees')));
    } finally {
      fs.rmSync(repo, { recursive: true, force: true });
    }
  });
});
