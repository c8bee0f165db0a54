// The keeper: one small process per running release, started detached by
// the CLI. It binds the deploy socket, starts the app processes with that
// socket as fd 4, supervises them, and carries out go-live and drain when
// the CLI asks over its control socket.
//
// Invariant: the deploy socket joins the port's reuseport group (listen())
// only on POST /live, which the CLI sends after every app process passed its
// health check (or on POST /unpark, for a release that passed it before and
// was parked); and it leaves the group only after new connections are
// steered elsewhere (or there is nowhere else) and its accept queue is empty.
import fs from 'node:fs';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { acceptQueue, closeFd, detachSteering, listenFd, unlisten } from '../native';
import { KEEPER_CONFIG_ENV, type KeeperConfig, type KeeperPhase, type KeeperStatus } from '../protocol';
import { AppProcess } from './apps';
import { bindDeploySocket, isBindFailure } from './bind';
import { countPeers, detachWhenAlone, steerToSelf } from './steering';
import { watchLogSize } from './logs';
import { CRASH_LOOP, nextRestartDelay } from './supervise';

(require('node:module') as { enableCompileCache?: () => unknown }).enableCompileCache?.(); // Node >= 22.1

const config = JSON.parse(process.env[KEEPER_CONFIG_ENV] ?? 'null') as KeeperConfig | null;
if (!config) {
  process.stderr.write('reuse-deploy keeper: started without configuration; it is started by the reuse-deploy CLI only.\n');
  process.exit(2);
}
delete process.env[KEEPER_CONFIG_ENV];

function log(message: string): void {
  process.stdout.write(`${new Date().toISOString()} [reuse-deploy ${config!.release}/${config!.id}] ${message}\n`);
}

const status: KeeperStatus = {
  id: config.id,
  release: config.release,
  pid: process.pid,
  phase: 'booting',
  listener: 'closed',
  startedAt: Date.now(),
  liveAt: null,
  apps: [],
  error: null,
  steering: null,
  parkedUntil: null,
};

let fd = -1;
let address = config.host;
let ownInode = 0;
let apps: AppProcess[] = [];
const crashTimes: number[][] = [];

function setPhase(phase: KeeperPhase): void {
  status.phase = phase;
  log(`phase ${phase}`);
}

function fail(code: string, message: string): void {
  if (status.phase === 'failed') return;
  status.error = { code, message };
  setPhase('failed');
  log(`${code}: ${message}`);
  for (const app of apps) app.kill('SIGKILL');
  closeListener();
  // Linger so that the CLI can read why; then go.
  setTimeout(() => shutdown(1), 60_000).unref();
}

function closeListener(): void {
  if (fd < 0) return;
  closeFd(fd);
  fd = -1;
}

function allApps(state: string): boolean {
  return apps.length > 0 && apps.every((a) => a.status.state === state);
}

function onAppExit(app: AppProcess, code: number | null, signal: NodeJS.Signals | null): void {
  const how = signal ? `signal ${signal}` : `exit code ${code}`;
  if (status.phase === 'booting' || status.phase === 'gated') {
    fail('RD_ERR_BOOT_CRASH', `The new version exited (${how}) before it was ready.`);
    return;
  }
  if (status.phase !== 'live') return; // draining or stopping: expected
  log(`app ${app.slot} (pid ${app.status.pid ?? '?'}) exited with ${how} while live`);
  const delay = nextRestartDelay(crashTimes[app.slot]!, Date.now());
  if (delay === null) {
    app.status.state = 'failed';
    const message = `app process ${app.slot} is in a crash loop (${CRASH_LOOP.crashes} crashes within ${CRASH_LOOP.windowMs / 1000} s); not restarting it`;
    log(message);
    status.error = { code: 'RD_ERR_CRASH_LOOP', message };
    return;
  }
  log(`restarting app ${app.slot} in ${delay} ms; queued connections wait in the listening socket`);
  setTimeout(() => {
    if (status.phase !== 'live') return;
    app.status.restarts++;
    app.start(true);
  }, delay);
}

async function waitFor(predicate: () => boolean, timeoutMs: number, stepMs = 10): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) return false;
    await sleep(stepMs);
  }
  return true;
}

/**
 * Joins the port: listen(), steer new connections here, and let the apps
 * accept. Also brings a parked release back (`unpark`): its socket is still
 * bound and its apps still run, so nothing boots.
 */
async function goLive(knownPids: number[], from: 'gated' | 'parked'): Promise<KeeperStatus> {
  if (status.phase !== from) throw new Error(`cannot go live from phase ${status.phase}`);
  if (!apps.every((a) => a.running)) throw new Error('an app process of this release is no longer running');
  const peers = countPeers(address, config!.port, ownInode);
  listenFd(fd, 511);
  status.listener = 'listening';
  // Steer at once, so that the switch is clean: from here on every new
  // connection queues on this socket, and waits the few milliseconds until
  // the app processes take over the fd.
  status.steering = null;
  if (peers > 0) {
    status.steering = steerToSelf(fd, address, config!.port, ownInode, peers, knownPids);
    log(`steering new connections to group index ${peers} of ${status.steering.groupSize}`);
    if (status.steering.unknown > 0) {
      log(`warning: ${status.steering.unknown} listener(s) on the port belong to no known release; they keep their share after the old release leaves`);
    }
  }
  for (const app of apps) app.send({ rd: from === 'gated' ? 'live' : 'unpark' });
  if (!(await waitFor(() => allApps('live'), 10_000))) {
    // Leave the group again at once: nobody would accept what lands here.
    if (status.steering) detachSteering(fd);
    unlisten(fd);
    status.listener = 'bound';
    status.steering = null;
    throw new Error('the app processes did not start accepting within 10 s');
  }
  if (status.steering) {
    detachWhenAlone(fd, address, config!.port, status.steering.groupSize, () => fd >= 0, log, () => (status.steering = null));
  }
  clearTimeout(parkTimer);
  status.parkedUntil = null;
  drained.clear();
  status.liveAt = Date.now();
  setPhase('live');
  setBootPriority(false);
  return status;
}

let parkTimer: NodeJS.Timeout | undefined;

/**
 * On a small host a booting Node process competes with the live one for
 * CPU, which shows in the live version's tail latency. Until go-live the
 * keeper and its apps run at nice 10; at go-live they return to 0. Only
 * root may lower a nice value again, so others leave priorities alone.
 */
const RENICE = process.getuid?.() === 0;
function setBootPriority(booting: boolean): void {
  if (!RENICE) return;
  const nice = booting ? 10 : 0;
  try {
    os.setPriority(process.pid, nice);
    for (const app of apps) if (app.status.pid) os.setPriority(app.status.pid, nice);
  } catch (err) {
    log(`could not set the priority to ${nice}: ${(err as Error).message}`);
  }
}

/**
 * Leaves the group without resetting queued connections, then lets the apps
 * finish their requests. `graceMs` is the wait for handshakes already in
 * flight to this socket (SYN_RECV entries are not migrated on close without
 * net.ipv4.tcp_migrate_req, and get a RST when their final ACK arrives).
 */
async function drain(timeoutMs: number, graceMs: number, parkMs = 0): Promise<void> {
  if (status.phase === 'draining' || status.phase === 'closed' || status.phase === 'parked') return;
  const wasLive = status.phase === 'live';
  setPhase('draining');
  if (wasLive && fd >= 0) {
    await sleep(graceMs);
    // The apps are still accepting; wait until they have taken everything.
    const emptied = await waitFor(() => acceptQueue(fd).queued === 0, 5_000, 5);
    if (!emptied) log(`warning: accept queue still holds ${acceptQueue(fd).queued} connection(s); closing anyway`);
  }
  const park = parkMs > 0 && wasLive && fd >= 0;
  // Without parking our fd goes first, and the apps' close of theirs is the
  // one that removes the socket from the group (inet_csk_listen_stop runs on
  // the last reference). Parking keeps our fd: the apps close theirs, then
  // the socket leaves the group but stays bound (unlisten).
  if (!park) closeListener();
  for (const app of apps) app.send({ rd: 'drain', timeoutMs });
  await waitFor(() => apps.every((a) => !a.running || a.status.state === 'draining'), 5_000);
  if (park) {
    unlisten(fd);
    status.listener = 'bound';
    status.parkedUntil = Date.now() + parkMs;
    setPhase('parked');
    for (const app of apps) if (app.running) app.status.state = 'parked';
    parkTimer = setTimeout(() => {
      if (status.phase !== 'parked') return;
      log('parking time is over; stopping');
      stopNow();
    }, parkMs);
    return;
  }
  status.listener = 'closed';
  setPhase('closed');
  await waitFor(() => apps.every((a) => !a.running || drained.has(a.slot)), timeoutMs + 2_000, 50);
  await stopApps();
  shutdown(0);
}

const drained = new Set<number>();

async function stopApps(): Promise<void> {
  for (const app of apps) app.kill('SIGTERM');
  const exited = Promise.all(apps.map((a) => a.exited()));
  const timedOut = await Promise.race([exited.then(() => false), sleep(5_000).then(() => true)]);
  if (timedOut) {
    for (const app of apps) app.kill('SIGKILL');
    await exited;
  }
}

let shuttingDown = false;
function shutdown(code: number): void {
  if (shuttingDown) return;
  shuttingDown = true;
  for (const app of apps) app.kill('SIGKILL');
  try {
    fs.unlinkSync(config!.controlSocket);
  } catch {
    // already gone
  }
  log(`keeper exits (${code})`);
  process.exit(code);
}

function startApps(c: KeeperConfig): void {
  setBootPriority(true); // the app processes inherit it
  apps = Array.from({ length: c.instances }, (_, slot) => new AppProcess(slot, c, fd));
  for (const app of apps) {
    crashTimes[app.slot] = [];
    app.on('exit', (code, signal) => onAppExit(app, code, signal));
    app.on('message', (m) => {
      if (m.rd === 'gated' && status.phase === 'booting' && allApps('gated')) setPhase('gated');
      else if (m.rd === 'listener-closed') app.status.state = 'draining';
      else if (m.rd === 'drained') drained.add(app.slot);
      else if (m.rd === 'listen-error') log(`app ${app.slot} could not listen: ${m.message}`);
    });
    app.start(false);
  }
}

async function main(): Promise<void> {
  const c = config!;
  // Bind and start the apps first, and only then load and open the control
  // socket: the apps boot while the keeper finishes its own start-up.
  const bound = bindDeploySocket(c.host, c.port);
  if (isBindFailure(bound)) {
    fail(bound.code, bound.message);
  } else {
    fd = bound.fd;
    address = bound.address;
    ownInode = fs.fstatSync(fd).ino;
    status.listener = 'bound';
    log(`bound ${address}:${c.port} (not listening yet); starting ${c.instances} app process(es)`);
    startApps(c);
  }

  const { serveControl } = require('./control') as typeof import('./control');
  await serveControl(c.controlSocket, {
    status: async () => {
      const asked = Date.now();
      for (const app of apps) {
        app.readRss();
        app.send({ rd: 'stats' });
      }
      // Fresh connection counts, if the apps answer quickly.
      await waitFor(() => apps.every((a) => !a.running || a.statsAt >= asked), 250, 5);
      status.apps = apps.map((a) => ({ ...a.status }));
      return status;
    },
    wait: async (phases, timeoutMs) => {
      await waitFor(() => phases.includes(status.phase), timeoutMs, 5);
      status.apps = apps.map((a) => ({ ...a.status }));
      return status;
    },
    live: (body) => goLive(Array.isArray(body.knownPids) ? body.knownPids.map(Number) : [], 'gated'),
    unpark: (body) => goLive(Array.isArray(body.knownPids) ? body.knownPids.map(Number) : [], 'parked'),
    drain: (body) => {
      void drain(Number(body.timeoutMs ?? 30_000), Number(body.graceMs ?? 0), Number(body.parkMs ?? 0)).catch((err) => {
        log(`drain failed: ${(err as Error).message}`);
        shutdown(1);
      });
    },
    stop: stopNow,
  });
  watchLogSize(c.logFile);
  setTimeout(() => {
    if (status.phase === 'booting' || status.phase === 'gated') {
      log('nobody made this release live in time; stopping');
      fail('RD_ERR_NEVER_LISTENED', 'The keeper was not made live in time.');
      void stopApps().then(() => shutdown(1));
    }
  }, c.gateTimeoutMs).unref();
}

/** SIGTERM/SIGINT (systemd, a person): a live release drains; one that serves nothing just stops. */
function onSignal(): void {
  if (status.phase === 'live') {
    void drain(30_000, 0);
  } else if (status.phase !== 'draining' && status.phase !== 'closed') {
    stopNow();
  }
}

/** Stops at once, without a drain: for a release that takes no traffic (or when asked to). */
function stopNow(): void {
  setPhase('closed');
  closeListener();
  void stopApps().then(() => shutdown(0));
}
process.on('SIGTERM', onSignal);
process.on('SIGINT', onSignal);
process.on('SIGHUP', () => undefined);
main().catch((err) => {
  log(`keeper failed: ${(err as Error).stack ?? String(err)}`);
  shutdown(1);
});
