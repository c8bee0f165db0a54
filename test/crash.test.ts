// kill -9 of the deploy command at each phase of a cutover; the next command
// (status, deploy or stop) must repair the state and say so: one release
// live and answering, nothing stray running or listening.
//
// The CLI prints a timestamped line on stderr when it enters each phase (CI
// mode). A kill is timed on those lines; where the window after a line is a
// few milliseconds wide, the CLI is first frozen with SIGSTOP inside the
// stderr handler (so that the moment is pinned), then killed with SIGKILL.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { tryKeeperStatus } from '../src/deploy/keeper-client';
import { listenersOn } from '../src/sys/proc-net';
import { CLI, cleanup, fixture, freePort, get, isAlive, processGroup, processesUnder, readAppState, remember, requestLoop, runCli, tempStateDir, waitUntil, type CliResult } from './helpers';

interface InstanceShape {
  id: string;
  release: string;
  role: string;
  keeperPid: number;
  controlSocket: string;
}

let stateDir: string;
let port: number;
const clis: ChildProcess[] = [];

beforeEach(async () => {
  stateDir = tempStateDir();
  port = await freePort();
});
afterEach(async () => {
  for (const child of clis.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  await cleanup(stateDir);
});

const deployArgs = (entry: string, ...extra: string[]) => [fixture(entry), '--port', String(port), '--host', '127.0.0.1', '--name', 'app', '--state-dir', stateDir, ...extra];

function instances(): InstanceShape[] {
  return ((readAppState(stateDir, 'app') as { instances?: InstanceShape[] } | null)?.instances ?? []).map((i) => ({ ...i }));
}

/** A deploy run in the background; `on(re, fn)` runs fn synchronously in the stderr handler when a line matches. */
function startDeploy(args: string[]) {
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, CI: 'true' }, stdio: ['ignore', 'pipe', 'pipe'] });
  clis.push(child);
  let stderr = '';
  const hooks: { re: RegExp; fn: () => void; done: boolean }[] = [];
  child.stderr.on('data', (d) => {
    stderr += d;
    for (const h of hooks) {
      if (!h.done && h.re.test(stderr)) {
        h.done = true;
        h.fn();
      }
    }
  });
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  return {
    child,
    stderr: () => stderr,
    on(re: RegExp, fn: () => void) {
      hooks.push({ re, fn, done: false });
    },
    until: (re: RegExp, timeoutMs = 30_000) => waitUntil(() => re.test(stderr) || child.exitCode !== null, timeoutMs, `${re} in\n${stderr}`).then(() => {
      assert.match(stderr, re, `the deploy exited (${child.exitCode}) before ${re}`);
    }),
    async kill9() {
      child.kill('SIGKILL');
      await exited;
    },
  };
}

async function deployV1(): Promise<{ keeper: number; pids: number[] }> {
  const r = await runCli(deployArgs('app.js', '--env', 'APP_VERSION=v1'));
  assert.equal(r.code, 0, r.stderr);
  remember(stateDir, 'app');
  const [v1] = instances();
  return { keeper: v1!.keeperPid, pids: processGroup(v1!.keeperPid).sort((a, b) => a - b) };
}

/** Every pid of every keeper group recorded in state.json now (keepers and their apps). */
function recordedPids(): Map<number, number[]> {
  remember(stateDir, 'app');
  return new Map(instances().map((i) => [i.keeperPid, processGroup(i.keeperPid)]));
}

/**
 * After the repairing command: exactly one live instance, of `release`,
 * answering; every process recorded before the kill that does not belong to
 * it has exited; only its socket listens on the port.
 */
async function assertOneLive(release: string, version: string, before: Map<number, number[]>): Promise<void> {
  await waitUntil(() => instances().filter((i) => i.role === 'live').length === 1, 5_000, 'one live instance in state.json');
  const live = instances().find((i) => i.role === 'live')!;
  assert.equal(live.release, release);
  const livePids = processGroup(live.keeperPid).sort((a, b) => a - b);
  assert.ok(livePids.length >= 2, 'the live keeper and its app run');
  const stray = () => [...before.values()].flat().filter((pid) => !livePids.includes(pid) && isAlive(pid));
  await waitUntil(() => stray().length === 0, 20_000, `processes recorded before the kill to exit (left: ${stray().join(', ')})`);
  await waitUntil(() => processesUnder(stateDir).join() === livePids.join(), 5_000, `only the live instance under the state dir (${processesUnder(stateDir).join(', ')} vs ${livePids.join(', ')})`);
  await waitUntil(() => listenersOn(port).length === 1, 5_000, `one listener on ${port} (${listenersOn(port).length})`);
  const answer = await get(port, '/');
  assert.equal(answer.status, 200);
  assert.match(answer.body, new RegExp(`^${version} `));
  // Once the drained instances are gone, the next look at the state finds nothing more to repair.
  const again = await runCli(['status', '--name', 'app', '--state-dir', stateDir, '--json']);
  assert.equal(again.code, 0, again.stderr);
  const s = JSON.parse(again.stdout) as { liveRelease: string; instances: { release: string; role: string; answering: boolean }[]; repaired: string[] };
  assert.equal(s.liveRelease, release);
  assert.deepEqual(
    s.instances.map((i) => [i.release, i.role, i.answering]),
    [[release, 'live', true]],
  );
}

function assertRepaired(r: CliResult, ...notes: RegExp[]): void {
  const text = `${r.stdout}\n${r.stderr}`;
  assert.match(text, /repaired: /, `says what it repaired\n${text}`);
  for (const note of notes) assert.match(text, note, text);
}

/**
 * Starts the v2 deploy and freezes the CLI (SIGSTOP) once r2's socket has
 * joined the port, so that it cannot record r2 as live. r2's socket joins
 * (listen) before the keeper answers the CLI's go-live request, which waits
 * until the app process takes the socket over; the fixture keeps the app
 * busy for 1.5 s after its health answer to hold that window open.
 */
async function deployFrozenAtGoLive() {
  const d = startDeploy(deployArgs('e-slow.js', '--env', 'APP_VERSION=v2', '--env', 'BUSY_AFTER_HEALTH_MS=1500', '--health', '/healthz'));
  let froze = false;
  d.on(/is healthy; joining port/, () => {
    const deadline = Date.now() + 10_000;
    while (listenersOn(port).length < 2 && Date.now() < deadline) {
      // spin: the window is a few milliseconds
    }
    froze = d.child.kill('SIGSTOP');
  });
  await d.until(/is healthy; joining port/);
  await waitUntil(() => froze, 12_000, 'the CLI to be frozen');
  const r2 = instances().find((i) => i.release === 'r2')!;
  assert.equal(r2.role, 'starting', 'frozen before it recorded the go-live');
  await waitUntil(async () => (await tryKeeperStatus(r2.controlSocket))?.phase === 'live', 10_000, 'r2 to finish going live');
  return { d, r2 };
}

describe('kill -9 of a deploy, then the next command repairs', () => {
  test('after spawn (r2 booting): status stops r2, r1 keeps serving', async () => {
    const v1 = await deployV1();
    const d = startDeploy(deployArgs('e-slow.js', '--env', 'APP_VERSION=v2', '--env', 'BOOT_DELAY_MS=8000', '--health-timeout', '60s'));
    await d.until(/waiting for r2 to listen/);
    const r2 = instances().find((i) => i.release === 'r2')!;
    assert.equal(r2.role, 'starting');
    assert.equal((await tryKeeperStatus(r2.controlSocket))?.phase, 'booting');
    const before = recordedPids();
    await d.kill9();

    const status = await runCli(['status', '--name', 'app', '--state-dir', stateDir]);
    assert.equal(status.code, 0, status.stderr);
    assertRepaired(status, new RegExp(`repaired: stopped instance ${r2.id} \\(r2\\), left half-started by an interrupted deploy`));
    assert.match(status.stdout, /live release: r1/);
    await assertOneLive('r1', 'v1', before);
    assert.deepEqual(processGroup(v1.keeper).sort((a, b) => a - b), v1.pids, 'r1 is the same keeper and app');
  });

  test('during health (r2 gated): a new deploy repairs, then cuts over to r3', async () => {
    await deployV1();
    const d = startDeploy(deployArgs('e-slow.js', '--env', 'APP_VERSION=v2', '--env', 'HEALTH_DELAY_MS=20000', '--health', '/healthz', '--health-timeout', '60s'));
    await d.until(/checking health of r2/);
    const r2 = instances().find((i) => i.release === 'r2')!;
    assert.equal((await tryKeeperStatus(r2.controlSocket))?.phase, 'gated');
    const before = recordedPids();
    await d.kill9();

    const r3 = await runCli(deployArgs('app.js', '--env', 'APP_VERSION=v3', '--drain-timeout', '5s'));
    assert.equal(r3.code, 0, r3.stderr);
    remember(stateDir, 'app');
    assertRepaired(r3, new RegExp(`repaired: stopped instance ${r2.id} \\(r2\\)`));
    assert.match(r3.stdout, /deployed app r3 .*replaced r1/);
    await assertOneLive('r3', 'v3', before);
  });

  test('during health: stop repairs and stops everything', async () => {
    await deployV1();
    const d = startDeploy(deployArgs('e-slow.js', '--env', 'APP_VERSION=v2', '--env', 'HEALTH_DELAY_MS=20000', '--health', '/healthz', '--health-timeout', '60s'));
    await d.until(/checking health of r2/);
    const r2 = instances().find((i) => i.release === 'r2')!;
    const before = recordedPids();
    await d.kill9();

    const stop = await runCli(['stop', '--name', 'app', '--state-dir', stateDir, '--drain-timeout', '5s']);
    assert.equal(stop.code, 0, stop.stderr);
    assertRepaired(stop, new RegExp(`repaired: stopped instance ${r2.id} \\(r2\\)`));
    assert.match(stop.stdout, /stopped app: 1 instance\(s\) drained/);
    await waitUntil(() => [...before.values()].flat().every((pid) => !isAlive(pid)), 15_000, 'every recorded process to exit');
    assert.deepEqual(processesUnder(stateDir), []);
    assert.deepEqual(listenersOn(port), []);
    assert.deepEqual(instances(), []);
    await assert.rejects(get(port, '/'), /ECONNREFUSED/);
  });

  test('a keeper killed with kill -9: its app process serves on, and the next command names it and how to stop it', async () => {
    const v1 = await deployV1();
    const [app] = v1.pids.filter((pid) => pid !== v1.keeper);
    process.kill(v1.keeper, 'SIGKILL');
    await waitUntil(() => !isAlive(v1.keeper), 5_000, 'the keeper to die');
    assert.ok(isAlive(app!), 'the app process outlives its keeper');
    assert.match((await get(port, '/')).body, /^v1 /, 'and still answers');

    const status = await runCli(['status', '--name', 'app', '--state-dir', stateDir]);
    assertRepaired(
      status,
      new RegExp(`repaired: instance \\w+ \\(r1, live\\) lost its keeper \\(pid ${v1.keeper}\\), but its app process\\(es\\) ${app} still run without it, still taking connections on the port\\. .*kill ${app}`),
    );
  });

  test('while r2 is going live: the repairing command waits for the go-live, then drains r2; r1 serves on', async () => {
    await deployV1();
    const loop = requestLoop(port);
    await waitUntil(() => loop.answers.length > 10, 10_000, 'v1 answers');
    // The app blocks its loop for 3 s after its health answer, so r2's go-live waits for it that long.
    const d = startDeploy(deployArgs('e-slow.js', '--env', 'APP_VERSION=v2', '--env', 'BUSY_AFTER_HEALTH_MS=3000', '--health', '/healthz'));
    await d.until(/is healthy; joining port/);
    // The go-live has begun once r2's socket joined the port (the line above
    // comes just before the CLI's call); it lasts while the app is busy.
    await waitUntil(() => listenersOn(port).length === 2, 5_000, "r2's socket to join the port");
    await d.kill9();
    const r2 = instances().find((i) => i.release === 'r2')!;
    assert.equal((await tryKeeperStatus(r2.controlSocket))?.phase, 'gated', 'r2 is still going live');

    const status = await runCli(['status', '--name', 'app', '--state-dir', stateDir]);
    assertRepaired(status, new RegExp(`repaired: stopped instance ${r2.id} \\(r2\\), left half-started`));
    assert.match(status.stdout, /live release: r1/);
    await waitUntil(() => !isAlive(r2.keeperPid), 15_000, 'r2 to exit');
    const log = fs.readFileSync(`${stateDir}/app/logs/r2.log`, 'utf8');
    assert.ok(log.indexOf('phase draining') > log.indexOf('phase live') && log.indexOf('phase live') > 0, `r2 went live, then drained, not closed under its go-live:\n${log}`);
    await loop.stop();
    assert.deepEqual(loop.errors, []);
    assert.match((await get(port, '/')).body, /^v1 /);
  });

  test('after go-live, before it was recorded: status records r2 as live and drains r1', async () => {
    await deployV1();
    const { d, r2 } = await deployFrozenAtGoLive();
    const before = recordedPids();
    await d.kill9();

    const status = await runCli(['status', '--name', 'app', '--state-dir', stateDir]);
    assert.equal(status.code, 0, status.stderr);
    assertRepaired(
      status,
      new RegExp(`repaired: instance ${r2.id} \\(r2\\) had gone live before its deploy was interrupted`),
      /repaired: instance \w+ \(r1\) was still live next to a newer one; draining it/,
    );
    assert.match(status.stdout, /live release: r2/);
    await assertOneLive('r2', 'v2', before);
  });

  test(
    'between recording go-live and telling r1 to drain: status tells r1 to drain',
    async () => {
      // The window is one line of cutover.ts (writeState, then keeperDrain); a kill
      // on the "draining r1" line lands in it only sometimes. So: freeze the CLI
      // once r2 listens (as above), write state.json exactly as handOver() writes
      // it next, and kill the CLI before it can send the drain.
      await deployV1();
      const { d } = await deployFrozenAtGoLive();
      const file = `${stateDir}/app/state.json`;
      const state = JSON.parse(fs.readFileSync(file, 'utf8')) as { instances: InstanceShape[]; liveHistory: string[] };
      for (const i of state.instances) i.role = i.release === 'r2' ? 'live' : 'draining';
      state.liveHistory.push('r2');
      fs.writeFileSync(file, `${JSON.stringify(state, null, 2)}\n`);
      const before = recordedPids();
      await d.kill9();
      const r1 = instances().find((i) => i.release === 'r1')!;
      assert.equal((await tryKeeperStatus(r1.controlSocket))?.phase, 'live', 'r1 was never told to drain');

      const status = await runCli(['status', '--name', 'app', '--state-dir', stateDir]);
      assert.equal(status.code, 0, status.stderr);
      assertRepaired(status, new RegExp(`repaired: .*${r1.id} \\(r1\\).*drain`));
      await assertOneLive('r2', 'v2', before);
    },
  );

  test('kill -9 of a stop while the release drains: start takes it for leaving, not running, and brings the release up again', async () => {
    const r = await runCli(deployArgs('app.js', '--env', 'APP_VERSION=v1', '--env', 'SLOW_MS=5000'));
    assert.equal(r.code, 0, r.stderr);
    remember(stateDir, 'app');
    const [v1] = instances();
    const oldPids = processGroup(v1!.keeperPid);
    const slow = get(port, '/slow', { timeoutMs: 15_000 });
    await sleep(200); // the request is in the app
    const stop = spawn(process.execPath, [CLI, 'stop', '--name', 'app', '--state-dir', stateDir, '--drain-timeout', '20s'], { stdio: 'ignore' });
    clis.push(stop);
    await waitUntil(async () => ['draining', 'closed'].includes((await tryKeeperStatus(v1!.controlSocket, 1_000))?.phase ?? ''), 5_000, 'the release to drain');
    stop.kill('SIGKILL');
    const start = await runCli(['start', '--name', 'app', '--state-dir', stateDir]);
    assert.equal(start.code, 0, start.stderr);
    assert.doesNotMatch(start.stdout, /already running/);
    assert.match(start.stderr, new RegExp(`instance ${v1!.id} \\(r1\\) was recorded as live but is leaving the port; it is now recorded as draining`));
    assert.equal((await slow).body, 'v1 slow', 'the request in flight is answered');
    await waitUntil(() => !isAlive(v1!.keeperPid), 15_000, 'the stopped keeper to exit');
    const answer = await get(port, '/');
    assert.equal(answer.status, 200);
    assert.ok(!oldPids.includes(Number(answer.body.split(' ')[1])), `a new process serves: ${answer.body}`);
    const live = instances().filter((i) => i.role === 'live');
    assert.deepEqual(live.map((i) => i.release), ['r1']);
    assert.notEqual(live[0]!.id, v1!.id, 'a new instance of r1');
  });

  test('during drain: stop stops both releases', async () => {
    await deployV1();
    const d = startDeploy(deployArgs('app.js', '--env', 'APP_VERSION=v2'));
    d.on(/draining r1/, () => void d.child.kill('SIGKILL'));
    await d.until(/draining r1/);
    await waitUntil(() => d.child.exitCode !== null || d.child.signalCode !== null, 5_000, 'the CLI to exit');
    const before = recordedPids();
    assert.equal(before.size, 2);
    const stop = await runCli(['stop', '--name', 'app', '--state-dir', stateDir, '--drain-timeout', '5s']);
    assert.equal(stop.code, 0, stop.stderr);
    await waitUntil(() => [...before.values()].flat().every((pid) => !isAlive(pid)), 15_000, 'every recorded process to exit');
    assert.deepEqual(processesUnder(stateDir), []);
    assert.deepEqual(listenersOn(port), []);
    assert.deepEqual(instances(), []);
  });
});
