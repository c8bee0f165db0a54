// End-to-end: the real CLI deploys real apps, real clients send real HTTP.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, afterEach, beforeEach, describe, test } from 'node:test';
import { spawn, type ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { keeperStop } from '../src/deploy/keeper-client';
import { acceptQueue, bindReusePort, closeFd, listenFd, tcpListeners } from '../src/native';
import { BOOT_NICE, BOOT_NICE_SLOW, BOOT_RAISE_MS, HELPERS_YOUNG_MS, SERVING_SLICE_NS } from '../src/protocol';
import {
  cleanup,
  fixture,
  freePort,
  get,
  hasCustomSlices,
  holdPortPlainly,
  isAlive,
  processGroup,
  readAppState,
  remember,
  requestLoop,
  runCli,
  sliceOf,
  tempStateDir,
  waitUntil,
} from './helpers';

let stateDir: string;
let port: number;
const held: ChildProcess[] = [];

beforeEach(async () => {
  stateDir = tempStateDir();
  port = await freePort();
});
afterEach(async () => {
  for (const child of held.splice(0)) child.kill('SIGKILL');
  await cleanup(stateDir);
});
after(() => undefined);

function deploy(entry: string, ...extra: string[]) {
  return runCli([fixture(entry), '--port', String(port), '--host', '127.0.0.1', '--name', 'app', '--state-dir', stateDir, ...extra]);
}

function livePids(): number[] {
  const state = readAppState(stateDir, 'app') as { instances: { role: string; keeperPid: number }[] } | null;
  return (state?.instances ?? []).filter((i) => i.role === 'live').map((i) => i.keeperPid);
}

/**
 * Joins a plain listener to the port's reuseport group and opens connections:
 * with a release alone on the port (its `ret 0` in force), none may queue on
 * the joiner, which is what a newer release's listen() meets too.
 */
async function joinerGetsNothing(port: number, what: string): Promise<void> {
  const joiner = bindReusePort('127.0.0.1', port);
  try {
    listenFd(joiner, 64);
    for (let i = 0; i < 60; i++) {
      await new Promise<void>((resolve, reject) => {
        const socket = net.connect(port, '127.0.0.1', () => {
          socket.destroy();
          resolve();
        });
        socket.once('error', reject);
      });
    }
    assert.equal(acceptQueue(joiner).queued, 0, `${what}: connections queued on the listener that joined`);
    assert.match((await get(port, '/')).body, /^v\d /, what);
  } finally {
    closeFd(joiner);
  }
}

describe('deploy and cutover', () => {
  test('v1 then v2 under a request loop: every answer 200, answers switch, v1 exits', async () => {
    const first = await deploy('app.js', '--env', 'APP_VERSION=v1', '--health', '/healthz');
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /^deployed app r1 on 127\.0\.0\.1:\d+ \(pid \d+\): healthy in \d+ ms, total \d+ ms\n$/);
    remember(stateDir, 'app');
    const [v1Keeper] = livePids();
    const v1Pids = processGroup(v1Keeper!);
    assert.equal(v1Pids.length, 2, 'keeper and one app process');

    const loop = requestLoop(port);
    await waitUntil(() => loop.answers.length > 20, 10_000, 'v1 answers');
    const second = await deploy('app.js', '--env', 'APP_VERSION=v2', '--health', '/healthz');
    assert.equal(second.code, 0, second.stderr);
    assert.match(second.stdout, /replaced r1/);
    remember(stateDir, 'app');
    const seen = loop.answers.length;
    await waitUntil(() => loop.answers.length > seen + 20, 10_000, 'v2 answers');
    await loop.stop();

    assert.deepEqual(loop.errors, []);
    assert.ok(loop.answers[0]!.startsWith('v1 '));
    assert.ok(loop.answers[loop.answers.length - 1]!.startsWith('v2 '));
    const firstV2 = loop.answers.findIndex((a) => a.startsWith('v2 '));
    assert.ok(loop.answers.slice(firstV2).every((a) => a.startsWith('v2 ')), 'no v1 answer after the first v2 answer');
    await waitUntil(() => v1Pids.every((pid) => !isAlive(pid)), 15_000, 'v1 processes to exit');
  });

  test('a release alone on the port keeps every new connection, even from a listener that joins after it: first deploy, and after a replacement', async () => {
    // What a newer release's listen() meets: without a program in the group
    // from the start, the kernel's hash sent it connections between its
    // listen() and its own attach, before its apps accepted (seen in CI as a
    // v1 answer after a v2 answer under a request loop).
    assert.equal((await deploy('app.js', '--env', 'APP_VERSION=v1')).code, 0);
    remember(stateDir, 'app');
    await joinerGetsNothing(port, 'first deploy');
    const second = await deploy('app.js', '--env', 'APP_VERSION=v2', '--handshake-grace', '100ms');
    assert.equal(second.code, 0, second.stderr);
    remember(stateDir, 'app');
    const r2Log = path.join(stateDir, 'app', 'logs', 'r2.log');
    await waitUntil(() => fs.readFileSync(r2Log, 'utf8').includes('older listeners are gone'), 10_000, 'r2 alone on the port');
    await joinerGetsNothing(port, 'after a replacement');
  });

  test('a go-live that backs out (an app process crashed in the warm-up) gives every new connection back to the release before it', async () => {
    assert.equal((await deploy('app.js', '--env', 'APP_VERSION=v1')).code, 0);
    remember(stateDir, 'app');
    // The probe is the first /healthz, the warm-up's second request crashes v2.
    const failed = await deploy('app.js', '--env', 'APP_VERSION=v2', '--env', 'EXIT_AT_HEALTH=3', '--health', '/healthz', '--warm-up', '5');
    assert.equal(failed.code, 1, failed.stderr);
    // Before, the crash closed the socket under the go-live, which then failed on it: RD_ERR_GO_LIVE, "Bad file descriptor".
    assert.match(failed.stderr, /The new version exited \(exit code 1\) while going live, before it took traffic\. \[RD_ERR_BOOT_CRASH\]/);
    // The warm-up's program replaced v1's `ret 0`; backing out puts it back.
    await joinerGetsNothing(port, 'after a go-live that backed out');
    assert.match((await get(port, '/')).body, /^v1 /);
  });

  test('beside a listener of no known release, a deploy does no warm-up and takes no connection before it steers to itself', async () => {
    assert.equal((await deploy('app.js', '--env', 'APP_VERSION=v1')).code, 0);
    remember(stateDir, 'app');
    const stranger = bindReusePort('127.0.0.1', port);
    try {
      listenFd(stranger, 64);
      // v1's `ret 0` keeps everything: the stranger is index 1, v2 joins as 2.
      // v1 stays in the group for the grace, so that `ret 2` still points at v2 below.
      const second = await deploy('app.js', '--env', 'APP_VERSION=v2', '--health', '/healthz', '--warm-up', '3', '--handshake-grace', '3s');
      assert.equal(second.code, 0, second.stderr);
      remember(stateDir, 'app');
      const log = fs.readFileSync(path.join(stateDir, 'app', 'logs', 'r2.log'), 'utf8');
      assert.match(log, /warning: no warm-up: 2 other listeners on the port/);
      assert.match(log, /1 listener\(s\) on the port belong to no known release/);
      assert.doesNotMatch(log, /warmed up through the port/);
      assert.equal(acceptQueue(stranger).queued, 0, 'nothing queued on the stranger');
      assert.match((await get(port, '/')).body, /^v2 /);
    } finally {
      closeFd(stranger);
    }
  });

  test('a stop sent to a keeper that has gone live drains it: a request in flight is answered', async () => {
    // What the CLI sends when a go-live answer was lost after the keeper had joined the port.
    assert.equal((await deploy('app.js', '--env', 'SLOW_MS=1500')).code, 0);
    remember(stateDir, 'app');
    const state = readAppState(stateDir, 'app') as unknown as { instances: { controlSocket: string; keeperPid: number }[] };
    const [instance] = state.instances;
    const slow = get(port, '/slow', { timeoutMs: 10_000 });
    await sleep(300); // the request is in the app
    await keeperStop(instance!.controlSocket);
    const answer = await slow;
    assert.equal(answer.status, 200);
    assert.match(answer.body, / slow$/);
    await waitUntil(() => !isAlive(instance!.keeperPid), 15_000, 'the keeper to exit after its drain');
    const log = fs.readFileSync(path.join(stateDir, 'app', 'logs', 'r1.log'), 'utf8');
    assert.ok(log.indexOf('phase draining') > log.indexOf('phase live'), log);
  });

  test('a deploy right after another goes live only once the replaced listener has left the port, and says what it waits for', async () => {
    assert.equal((await deploy('app.js', '--env', 'APP_VERSION=v1')).code, 0);
    remember(stateDir, 'app');
    // r1 keeps its listener open for this grace after r2 goes live.
    const second = await deploy('app.js', '--env', 'APP_VERSION=v2', '--handshake-grace', '5s');
    assert.equal(second.code, 0, second.stderr);
    const third = await deploy('app.js', '--env', 'APP_VERSION=v3');
    assert.equal(third.code, 0, third.stderr);
    assert.match(third.stderr, /waiting for the previous deploy to leave the port: r1 still holds its listener open \(handshake grace\)/);
    const at = (release: string, text: string): number => {
      const line = fs.readFileSync(path.join(stateDir, 'app', 'logs', `${release}.log`), 'utf8').split('\n').find((l) => l.includes(text));
      assert.ok(line, `${release}: ${text}`);
      return Date.parse(line.slice(0, 24));
    };
    assert.ok(at('r1', 'phase closed') <= at('r3', 'phase live'), 'r3 joined the port after r1 closed its listener');
    assert.equal((await get(port, '/')).body.split(' ')[0], 'v3');
  });

  test("a replaced release leaves the port's reuseport group once its apps have closed their servers, not when they exit", async () => {
    assert.equal((await deploy('app.js', '--env', 'APP_VERSION=v1', '--env', 'SLOW_MS=8000')).code, 0);
    remember(stateDir, 'app');
    let slowDone = false;
    const slow = get(port, '/slow', { timeoutMs: 15_000 }).finally(() => (slowDone = true));
    await sleep(300); // the request is in v1's app, which lives until it is answered
    const second = await deploy('app.js', '--env', 'APP_VERSION=v2', '--handshake-grace', '300ms');
    assert.equal(second.code, 0, second.stderr);
    remember(stateDir, 'app');
    // Each app process still holds the socket it was started with (fd 4):
    // without unlisten, v1's socket stayed listening in the group, accepting
    // nothing, until its app exited.
    await waitUntil(() => tcpListeners(port)?.length === 1, 5_000, "v1's socket to leave the port");
    assert.equal(slowDone, false, "v1's app still serves its slow request");
    const answer = await slow;
    assert.equal(answer.status, 200);
    assert.equal(answer.body, 'v1 slow');
  });

  test('status and stop', async () => {
    assert.equal((await deploy('app.js')).code, 0);
    remember(stateDir, 'app');
    const status = await runCli(['status', '--name', 'app', '--state-dir', stateDir, '--json']);
    assert.equal(status.code, 0, status.stderr);
    const s = JSON.parse(status.stdout);
    assert.equal(s.ok, true);
    assert.equal(s.port, port);
    assert.equal(s.liveRelease, 'r1');
    assert.equal(s.instances.length, 1);
    assert.equal(s.instances[0].status.phase, 'live');
    assert.equal(s.instances[0].status.apps[0].state, 'live');
    const text = await runCli(['status', '--state-dir', stateDir]);
    assert.match(text.stdout, /live release: r1/);

    const pids = processGroup(livePids()[0]!);
    const stop = await runCli(['stop', '--name', 'app', '--state-dir', stateDir]);
    assert.equal(stop.code, 0, stop.stderr);
    assert.match(stop.stdout, /stopped app: 1 instance\(s\) drained/);
    await waitUntil(() => pids.every((pid) => !isAlive(pid)), 5_000, 'every process of the app to exit');
    await assert.rejects(get(port, '/'), /ECONNREFUSED/);
  });
});

describe('a failed deploy leaves v1 serving, untouched', () => {
  async function deployV1(): Promise<{ pids: number[] }> {
    const r = await deploy('app.js', '--env', 'APP_VERSION=v1');
    assert.equal(r.code, 0, r.stderr);
    remember(stateDir, 'app');
    return { pids: processGroup(livePids()[0]!) };
  }

  async function assertV1Untouched(v1: { pids: number[] }): Promise<void> {
    const answer = await get(port, '/');
    assert.equal(answer.status, 200);
    assert.match(answer.body, /^v1 /);
    assert.ok(v1.pids.every(isAlive), 'v1 processes still run');
    const state = readAppState(stateDir, 'app') as { instances: { keeperPid: number }[] };
    assert.equal(state.instances.length, 1, 'only v1 is recorded');
    assert.deepEqual(processGroup(state.instances[0]!.keeperPid).sort(), [...v1.pids].sort(), 'no new process left');
  }

  test('health check answering 500 exits 1 with the status and body', async () => {
    const v1 = await deployV1();
    const r = await deploy('app.js', '--env', 'APP_VERSION=v2', '--env', 'HEALTH_STATUS=500', '--health', '/healthz', '--health-timeout', '2s');
    assert.equal(r.code, 1);
    assert.match(r.stderr, /answered 500: "database unreachable"/);
    assert.match(r.stderr, /RD_ERR_HEALTH_STATUS/);
    assert.match(r.stderr, /app v2 listening|last lines/);
    await assertV1Untouched(v1);
  });

  test('crash on boot exits 1 and shows the log', async () => {
    const v1 = await deployV1();
    const r = await deploy('crash-on-boot.js');
    assert.equal(r.code, 1);
    assert.match(r.stderr, /RD_ERR_BOOT_CRASH/);
    assert.match(r.stderr, /cannot connect to the database at boot/);
    await assertV1Untouched(v1);
  });

  test('an app that never listens exits 1', async () => {
    const v1 = await deployV1();
    const r = await deploy('never-listens.js', '--health-timeout', '1500ms');
    assert.equal(r.code, 1);
    assert.match(r.stderr, /RD_ERR_NEVER_LISTENED/);
    assert.match(r.stderr, /did not listen on port \d+ in time/);
    await assertV1Untouched(v1);
  });

  test('an app listening on another port is told which one', async () => {
    const other = await freePort();
    const r = await deploy('wrong-port.js', '--env', `WRONG_PORT=${other}`, '--health-timeout', '3s');
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`listened on port ${other} instead: pass --port ${other}`));
  });

  test('a port held without SO_REUSEPORT exits 1 naming the holder', async () => {
    const holder = await holdPortPlainly(port);
    held.push(holder);
    const r = await deploy('app.js');
    assert.equal(r.code, 1);
    assert.match(r.stderr, /RD_ERR_PORT_TAKEN/);
    assert.match(r.stderr, new RegExp(`pid ${holder.pid}`));
    const state = readAppState(stateDir, 'app') as { instances: unknown[] };
    assert.equal(state.instances.length, 0, 'nothing left running');
  });

  test('usage errors exit 2', async () => {
    const noPort = await runCli([fixture('app.js'), '--state-dir', stateDir]);
    assert.equal(noPort.code, 2);
    assert.match(noPort.stderr, /--port is required/);
    const badPort = await deploy('app.js', '--port', '70000');
    assert.equal(badPort.code, 2);
    const missing = await runCli([fixture('nope.js'), '--port', String(port), '--state-dir', stateDir]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /RD_ERR_ENTRY_NOT_FOUND/);
    const spaced = await deploy('app.js', '--node-arg', '--max-old-space-size=512');
    assert.equal(spaced.code, 2);
    assert.match(spaced.stderr, /To pass --max-old-space-size=512 to node, write --node-arg=--max-old-space-size=512/);
  });
});

describe('speed and priority', () => {
  test('warm-up: the health check is sent --warm-up more times at go-live, through the port, and not by default', async () => {
    const plain = await deploy('app.js', '--health', '/healthz');
    assert.equal(plain.code, 0, plain.stderr);
    remember(stateDir, 'app');
    assert.equal((await get(port, '/healthz-count')).body, '1', 'one probe, no warm-up');
    const r = await deploy('app.js', '--health', '/healthz', '--warm-up', '7');
    assert.equal(r.code, 0, r.stderr);
    remember(stateDir, 'app');
    // One probe passed (the app is healthy at once), then seven warm-up requests.
    assert.equal((await get(port, '/healthz-count')).body, '8');
    // The warm-up came through the app's listener (the probe's private
    // socket gives no remote port), from source ports steered to it.
    const ports = JSON.parse((await get(port, '/healthz-ports')).body) as number[];
    assert.equal(ports.length, 8);
    assert.equal(ports[0], 0, 'the probe: a unix socket');
    assert.ok(ports.slice(1).every((p) => p >= 20_000 && p < 30_000), `warm-up source ports: ${ports.join(' ')}`);
    assert.match(fs.readFileSync(path.join(stateDir, 'app', 'logs', 'r2.log'), 'utf8'), /warmed up through the port: 7 of 7 request\(s\) answered/);
    // One connection per request, 8 at a time: every request is answered.
    const many = await deploy('app.js', '--health', '/healthz', '--warm-up', '301');
    assert.equal(many.code, 0, many.stderr);
    assert.equal((await get(port, '/healthz-count')).body, '302');
    const none = await deploy('app.js', '--health', '/healthz', '--warm-up', '0');
    assert.equal(none.code, 0, none.stderr);
    assert.equal((await get(port, '/healthz-count')).body, '1');
    const bad = await deploy('app.js', '--warm-up', 'lots');
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--warm-up "lots" is not valid/);
  });

  test("a booting release's session runs at nice 19, at 10 once its boot is slow, and at 0 from go-live; as root, its V8 threads 10 s later", { skip: !fs.existsSync('/proc/self/autogroup') && 'no CFS autogroup in this kernel' }, async (t) => {
    const niceOf = (pid: number): number => Number(/nice (-?\d+)/.exec(fs.readFileSync(`/proc/${pid}/autogroup`, 'utf8'))![1]);
    const v1 = await deploy('app.js');
    assert.equal(v1.code, 0, v1.stderr);
    remember(stateDir, 'app');
    const [liveKeeper] = livePids();
    assert.equal(niceOf(liveKeeper!), 0);
    const slow = deploy('app.js', '--env', `LISTEN_AFTER_MS=${BOOT_RAISE_MS + 1_000}`);
    let booting = 0;
    await waitUntil(() => {
      const state = readAppState(stateDir, 'app') as { instances: { role: string; keeperPid: number }[] } | null;
      booting = state?.instances.find((i) => i.role === 'starting')?.keeperPid ?? 0;
      return booting > 0;
    }, 10_000, 'the new release to be recorded as starting');
    const [app] = processGroup(booting).filter((pid) => pid !== booting);
    // On a host whose CPUs other work keeps busy the boot runs at 0 (the next
    // test); this one needs CPU to spare, and says so rather than fail.
    const bootLog = (): string => {
      try {
        return fs.readFileSync(path.join(stateDir, 'app', 'logs', 'r2.log'), 'utf8');
      } catch {
        return '';
      }
    };
    const busy = (): boolean => bootLog().includes("the host's CPUs are busy");
    const skipBusy = async (): Promise<void> => {
      t.diagnostic(`the host was busy, so the boot ran at nice 0: ${bootLog().split('\n').find((l) => l.includes('CPUs are busy'))}`);
      t.skip('the host was too busy for a boot at nice 19');
      await slow;
    };
    await waitUntil(() => bootLog().includes(' bound '), 10_000, 'the keeper to log its bind');
    if (busy()) return skipBusy();
    assert.equal(niceOf(booting), BOOT_NICE, 'the booting keeper session');
    if (app) assert.equal(niceOf(app), BOOT_NICE, 'its app shares the session');
    assert.equal(niceOf(liveKeeper!), 0, 'the live release is left alone');
    await waitUntil(() => niceOf(booting) === BOOT_NICE_SLOW || busy(), BOOT_RAISE_MS + 2_000, `the session at nice ${BOOT_NICE_SLOW} once the boot took ${BOOT_RAISE_MS} ms`);
    if (busy()) return skipBusy();
    const r = await slow;
    assert.equal(r.code, 0, r.stderr);
    remember(stateDir, 'app');
    await waitUntil(() => niceOf(booting) === 0, 5_000, 'the session to be back at nice 0 after go-live');
    // The CLI lowers its own priority only after it started the keeper:
    // without root, a process could not return from an inherited nice value.
    // Every thread: nice is per thread on Linux, and an app's threads were
    // created while it booted. As root, the ones Node started before the
    // app's code ran (V8's) stay at the boot value for HELPERS_YOUNG_MS (V8
    // compiles the new code there), then return to 0; the app's own (here
    // libuv's pool, started while it booted) are at 0 from go-live on.
    const appThreads = JSON.parse((await get(port, '/threads')).body) as { node: number[]; app: number[] };
    assert.ok(appThreads.node.length > 0 && appThreads.app.length > 0, JSON.stringify(appThreads));
    const threads = (): { tid: number; main: boolean; keeper: boolean; nice: number }[] =>
      processGroup(booting).flatMap((pid) =>
        fs.readdirSync(`/proc/${pid}/task`).map((tid) => ({ tid: Number(tid), main: Number(tid) === pid, keeper: pid === booting, nice: os.getPriority(Number(tid)) })),
      );
    const root = process.getuid?.() === 0;
    for (const t of threads()) {
      const want = root && appThreads.node.includes(t.tid) ? BOOT_NICE_SLOW : 0;
      const kind = t.keeper ? 'the keeper' : t.main ? 'the app (main)' : appThreads.node.includes(t.tid) ? "the app (Node's own)" : 'the app (its own)';
      assert.equal(t.nice, want, `thread ${t.tid} of ${kind}`);
    }
    if (root) {
      await waitUntil(() => threads().every((t) => t.nice === 0), HELPERS_YOUNG_MS + 3_000, 'every thread at nice 0 once the app is no longer young');
    }
    const logs = path.join(stateDir, 'app', 'logs');
    const said = fs.readdirSync(logs).some((f) => fs.readFileSync(path.join(logs, f), 'utf8').includes(`raising its CPU priority to nice ${BOOT_NICE_SLOW}`));
    assert.ok(said, 'the keeper logs the raise');
  });

  test('a boot that other work starves of CPU goes on at nice 0 before go-live', { skip: !fs.existsSync('/proc/self/schedstat') && 'no schedstat in /proc' }, async () => {
    const v1 = await deploy('app.js');
    assert.equal(v1.code, 0, v1.stderr);
    remember(stateDir, 'app');
    // One busy process per CPU and one more, each in a session of its own (so
    // that they weigh against the booting release's session, not against the
    // CLI's), bounded in time, and killed by pid after the test.
    for (let i = 0; i <= os.availableParallelism(); i++) {
      held.push(spawn(process.execPath, ['-e', 'const end = Date.now() + 30000; while (Date.now() < end);'], { detached: true, stdio: 'ignore' }));
    }
    await sleep(200);
    const v2 = await deploy('app.js');
    for (const child of held.splice(0)) child.kill('SIGKILL');
    assert.equal(v2.code, 0, v2.stderr);
    remember(stateDir, 'app');
    const log = fs.readFileSync(path.join(stateDir, 'app', 'logs', 'r2.log'), 'utf8');
    const busy = log.indexOf("the host's CPUs are busy");
    assert.ok(busy >= 0, `the keeper says it raised the boot's priority:\n${log}`);
    assert.match(log, /the keeper and app processes waited \d+ ms for a CPU and ran \d+ ms; the rest of the boot runs at nice 0/);
    assert.ok(busy < log.indexOf('phase live'), 'before go-live');
    assert.doesNotMatch(log, /raising its CPU priority to nice/, 'not the slow-boot fallback');
  });

  test("a serving app process's main thread takes the shortest time slice; Node's other threads and the keeper keep theirs", { skip: !hasCustomSlices && 'no custom time slices before Linux 6.12' }, async () => {
    const before = sliceOf(process.pid);
    assert.notEqual(before, SERVING_SLICE_NS, 'the default slice differs from the one the keeper sets');
    const v1 = await deploy('app.js');
    assert.equal(v1.code, 0, v1.stderr);
    remember(stateDir, 'app');
    const [keeper] = livePids();
    const [app] = processGroup(keeper!).filter((pid) => pid !== keeper);
    assert.ok(app, 'the app process');
    assert.equal(sliceOf(app), SERVING_SLICE_NS, 'the main thread, which answers requests');
    const { node } = JSON.parse((await get(port, '/threads')).body) as { node: number[] };
    for (const tid of node) assert.equal(sliceOf(app, tid), before, `Node's thread ${tid}`);
    assert.equal(sliceOf(keeper!), before, 'the keeper');
    const log = fs.readFileSync(path.join(stateDir, 'app', 'logs', 'r1.log'), 'utf8');
    assert.match(log, /main threads take a 0\.1 ms time slice/);
  });

  test('a command that ends before starting a release leaves no keeper behind', async () => {
    const keepers = (): number[] =>
      fs.readdirSync('/proc').filter((e) => /^\d+$/.test(e)).map(Number).filter((pid) => {
        try {
          return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(path.join('keeper', 'main.js')) && isAlive(pid);
        } catch {
          return false;
        }
      });
    const before = new Set(keepers());
    const results = await Promise.all([
      deploy('app.js', '--port', 'nope'), // usage error
      deploy('nope.js'), // no such entry
      runCli(['--previous', '--name', 'app', '--state-dir', stateDir]), // no such app
    ]);
    assert.deepEqual(results.map((r) => r.code), [2, 2, 2]);
    assert.match(results[2]!.stderr, /RD_ERR_NO_STATE/);
    await waitUntil(() => keepers().every((pid) => before.has(pid)), 5_000, 'keepers started ahead to exit');
  });
});

describe('node arguments', () => {
  const major = Number(process.versions.node.split('.')[0]);

  test('app processes get --no-flush-bytecode and --no-memory-reducer on Node < 24, ahead of the release\'s own --node-arg', async () => {
    const r = await deploy('app.js', '--node-arg=--max-http-header-size=20000', '--node-arg=--flush-bytecode');
    assert.equal(r.code, 0, r.stderr);
    remember(stateDir, 'app');
    const execArgv = JSON.parse((await get(port, '/execargv')).body) as string[];
    const own = execArgv.slice(0, execArgv.indexOf('--require'));
    // The app's own come last, so its --flush-bytecode wins (V8 applies flags in order).
    assert.deepEqual(own, [...(major < 24 ? ['--no-flush-bytecode', '--no-memory-reducer'] : []), '--max-http-header-size=20000', '--flush-bytecode']);
  });

  // What the flag does (src/keeper/apps.ts). --stress-flush-code makes V8
  // flush every function's bytecode at each full GC where flushing is on:
  // 94-97% of it went in a plain script on Node 20, 22 and 24, and 4-29%
  // with flushing off.
  const stress = ['--node-arg=--expose-gc', '--node-arg=--stress-flush-code'];
  const keptShare = async (...args: string[]): Promise<number> => {
    const r = await deploy('app.js', ...stress, ...args);
    assert.equal(r.code, 0, r.stderr);
    remember(stateDir, 'app');
    const { before, after } = JSON.parse((await get(port, '/bytecode-gc')).body) as { before: number; after: number };
    return after / before;
  };

  test(`in a deployed app, V8's bytecode flushing is ${major < 24 ? 'off (Node < 24)' : "V8's default (Node >= 24)"}`, async () => {
    const kept = await keptShare();
    if (major < 24) assert.ok(kept > 0.5, `flushing is off: ${(kept * 100).toFixed(0)}% of the bytecode kept across three GCs`);
    else assert.ok(kept < 0.3, `flushing is on: ${(kept * 100).toFixed(0)}% of the bytecode kept across three GCs`);
    // A process the app forks starts with it on its command line.
    const forked = JSON.parse((await get(port, '/fork-execargv')).body) as string[];
    assert.equal(forked.includes('--no-flush-bytecode'), major < 24, JSON.stringify(forked));
  });

  test('--node-arg=--flush-bytecode keeps V8 flushing', async () => {
    const kept = await keptShare('--node-arg=--flush-bytecode');
    assert.ok(kept < 0.3, `flushing is on: ${(kept * 100).toFixed(0)}% of the bytecode kept across three GCs`);
  });
});

describe('app shapes', () => {
  test('the other ports an app opens (by address, by host name, by port alone) are shared by old and new during the cutover', async () => {
    const [byAddress, byName, byPort] = [await freePort(), await freePort(), await freePort()];
    const admin = `ADMIN_PORTS=${byAddress}@127.0.0.1,${byName}@localhost,${byPort}`;
    const first = await deploy('app.js', '--env', 'APP_VERSION=v1', '--env', admin);
    assert.equal(first.code, 0, first.stderr);
    remember(stateDir, 'app');
    for (const p of [byAddress, byName, byPort]) assert.equal((await get(p, '/', { host: p === byName ? 'localhost' : '127.0.0.1' })).body, 'admin v1');
    // v2 binds the same three ports while v1 still holds them: with SO_REUSEPORT on both sides.
    const second = await deploy('app.js', '--env', 'APP_VERSION=v2', '--env', admin);
    assert.equal(second.code, 0, second.stderr);
    remember(stateDir, 'app');
    for (const p of [byAddress, byName, byPort]) {
      const host = p === byName ? 'localhost' : '127.0.0.1';
      // Until v1 exits, the kernel spreads these ports' connections over both;
      // one queued in v1's listener as it closes is reset (these ports get no
      // steering), so an error here only means "ask again".
      await waitUntil(async () => (await get(p, '/', { host }).catch(() => null))?.body === 'admin v2', 10_000, `admin v2 on port ${p}`);
    }
  });

  test('an HTTPS app is probed over TLS and cuts over', async () => {
    const r1 = await deploy('https-app.js', '--env', 'APP_VERSION=v1', '--health', '/healthz');
    assert.equal(r1.code, 0, r1.stderr);
    remember(stateDir, 'app');
    assert.equal((await get(port, '/', { tls: true })).body, 'v1 tls');
    const loop = requestLoop(port, { tls: true });
    const r2 = await deploy('https-app.js', '--env', 'APP_VERSION=v2', '--health', '/healthz');
    assert.equal(r2.code, 0, r2.stderr);
    remember(stateDir, 'app');
    await waitUntil(() => loop.answers.includes('v2 tls'), 10_000, 'v2 answers');
    await loop.stop();
    assert.deepEqual(loop.errors, []);
  });

  test('an ESM app (top-level await on listen) deploys and cuts over', async () => {
    const r1 = await deploy('esm-app.mjs', '--env', 'APP_VERSION=v1', '--health', '/healthz');
    assert.equal(r1.code, 0, r1.stderr);
    remember(stateDir, 'app');
    assert.equal((await get(port, '/')).body, 'v1 esm');
    const r2 = await deploy('esm-app.mjs', '--env', 'APP_VERSION=v2');
    assert.equal(r2.code, 0, r2.stderr);
    remember(stateDir, 'app');
    assert.equal((await get(port, '/')).body, 'v2 esm');
  });

  test('an app whose first process forks node:cluster workers but serves the port itself deploys (only workers serving it are refused)', async () => {
    const r1 = await deploy('e-cluster.js', '--env', 'PRIMARY_SERVES=1', '--env', 'APP_VERSION=v1');
    assert.equal(r1.code, 0, r1.stderr);
    remember(stateDir, 'app');
    const worker1 = Number(/^primary v1 (\d+)$/.exec((await get(port, '/')).body)?.[1]);
    assert.ok(worker1 > 0);
    const r2 = await deploy('e-cluster.js', '--env', 'PRIMARY_SERVES=1', '--env', 'APP_VERSION=v2');
    assert.equal(r2.code, 0, r2.stderr);
    remember(stateDir, 'app');
    assert.match((await get(port, '/')).body, /^primary v2 \d+$/);
    // v1's worker ends with its first process (cluster workers exit when the IPC channel closes).
    await waitUntil(() => !isAlive(worker1), 10_000, `v1's worker ${worker1} exits`);
  });

  test('cluster workers that serve another port share it between old and new, with either scheduling policy', async () => {
    for (const sched of ['rr', 'none']) {
      const side = await freePort();
      const env = ['--env', 'PRIMARY_SERVES=1', '--env', `CLUSTER_SCHED=${sched}`, '--env', `SIDE_PORT=${side}`];
      for (const version of ['v1', 'v2']) {
        const r = await deploy('e-cluster.js', ...env, '--env', `APP_VERSION=${version}`);
        assert.equal(r.code, 0, r.stderr);
        remember(stateDir, 'app');
        // The worker starts after the deploy: the side port is not health-gated.
        // Until v1 exits, the kernel spreads the side port's connections over both.
        await waitUntil(async () => (await get(side, '/').catch(() => null))?.body === `side ${version}`, 10_000, `side ${version} on port ${side} (${sched})`);
      }
      // v2's worker holds the port alone once v1 is gone (a plain bind under SCHED_NONE failed with EADDRINUSE while v1 held it).
      await waitUntil(() => tcpListeners(side)?.length === 1, 10_000, `one listener left on ${side}`);
      assert.equal((await get(side, '/')).body, 'side v2');
      const stopped = await runCli(['stop', '--name', 'app', '--state-dir', stateDir]);
      assert.equal(stopped.code, 0, stopped.stderr);
    }
  });
});
