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
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { acceptQueue, attachSteeringBySource, closeFd, dup2Fd, ensureAddon, listenFd, setSlice, unlisten } from '../native';
import { BOOT_NICE, BOOT_NICE_SLOW, BOOT_RAISE_MS, HELPERS_YOUNG_MS, SERVING_SLICE_NS, type KeeperConfig, type KeeperPhase, type KeeperStatus, type WarmUpRequest } from '../protocol';
import { AppProcess } from './apps';
import { bindDeploySocket, isBindFailure } from './bind';
import { countPeers, giveBackToPeers, holdWhenAlone, steerToFirst, steerToSelf } from './steering';
import { pickWarmUpPorts, warmUpThroughPort } from './warm-up';
import { watchLogSize } from './logs';
import { CRASH_LOOP, nextRestartDelay } from './supervise';

(require('node:module') as { enableCompileCache?: () => unknown }).enableCompileCache?.(); // Node >= 22.1

// Set once the CLI has sent it (see readConfig).
let config!: KeeperConfig;

// Lines logged before the configuration (and the log file) arrived: written once it has.
const early: string[] = [];
function log(message: string): void {
  const line = `${new Date().toISOString()} [reuse-deploy ${config ? `${config.release}/${config.id}` : 'keeper'}] ${message}\n`;
  if (config) process.stdout.write(line);
  else early.push(line);
}

const status: KeeperStatus = {
  id: '',
  release: '',
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
let address = '';
let ownInode = 0;
let apps: AppProcess[] = [];
const crashTimes: number[][] = [];

function setPhase(phase: KeeperPhase): void {
  status.phase = phase;
  log(`phase ${phase}`);
  changes.emit('change');
}

function fail(code: string, message: string): void {
  if (status.phase === 'failed') return;
  status.error = { code, message };
  setPhase('failed');
  log(`${code}: ${message}`);
  for (const app of apps) app.kill('SIGKILL');
  // A go-live under way backs out itself once it sees the phase (goLive):
  // it first gives a lone peer its program back, which needs our socket.
  if (!inGoLive) closeListener();
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
    fail('RD_ERR_BOOT_CRASH', `The new version exited (${how}) ${inGoLive ? 'while going live, before it took traffic' : 'before it was ready'}.`);
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

/**
 * An app process asked for the deploy port through node:cluster, for its
 * workers (preload.ts): its connections would be served by processes the
 * runtime does not run in, which nothing could health-check one by one,
 * drain or hand over. Before go-live that fails the deploy; a process
 * restarted while live that does it (cluster.fork() only later) is logged,
 * and its workers never get the port.
 */
function refuseCluster(policy: 'round-robin' | 'none'): void {
  const how = policy === 'none' ? 'would hand the listening socket to' : 'would accept and pass connections to';
  const message =
    `The app serves port ${config.port} from node:cluster workers: its first process ${how} the processes it forks (cluster.fork()). ` +
    'reuse-deploy runs and replaces the app processes itself, and cannot health-check, drain or hand over what cluster workers serve. ' +
    'Start the server in the process itself, without cluster.fork(), and pass --instances <n> for n processes.';
  // One message per worker (SharedHandle asks again for each): after the
  // first, the phase is 'failed'.
  if (status.phase === 'booting' || status.phase === 'gated') fail('RD_ERR_CLUSTER', message);
  else if (status.phase === 'live') log(`warning: ${message}`);
}

/** Fired on every phase change and every message or exit of an app process: what waitFor re-checks on. */
const changes = new EventEmitter().setMaxListeners(0);

/** Resolves on the next change, or after `ms`. */
function nextChange(ms: number): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      changes.off('change', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    changes.on('change', done);
  });
}

/** Waits until `predicate` holds: checked on every change, and every `stepMs` for what is not one (queues, clocks). */
async function waitFor(predicate: () => boolean, timeoutMs: number, stepMs = 50): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) return false;
    await nextChange(Math.min(stepMs, Math.max(1, deadline - Date.now())));
  }
  return true;
}

/**
 * Joins the port: listen(), let the apps accept, warm them up if asked,
 * then steer new connections here. Also brings a parked release back
 * (`unpark`): its socket is still bound and its apps still run, so nothing
 * boots and nothing is warmed up.
 */
async function goLive(knownPids: number[], from: 'gated' | 'parked', warm: WarmUpRequest | null = null): Promise<KeeperStatus> {
  if (status.phase !== from) throw new Error(`cannot go live from phase ${status.phase}`);
  if (!apps.every((a) => a.running)) throw new Error('an app process of this release is no longer running');
  goLiveTried = true;
  const peers = countPeers(address, config.port, ownInode);
  // warmUpRequest() passes only a count above 0. Not beside listeners of no
  // known release: see below.
  const warmUpPorts = warm && peers <= 1 ? pickWarmUpPorts(warm, apps.length) : null;
  if (warm && !warmUpPorts) log(`warning: no warm-up: ${peers} other listeners on the port, of which some belong to no known release; their program stays in force until this release steers to itself`);
  listenFd(fd, 511);
  status.listener = 'listening';
  status.steering = null;
  // The parking time must not run out under the go-live (stopParked would
  // close the socket under it); it is over once this succeeds.
  clearTimeout(parkTimer);
  const backOut = (why: string): Error => {
    if (from === 'parked') {
      // Its apps were told to serve again: they close their servers first.
      void abandonUnpark(peers, why);
      return new Error(why);
    }
    // Leave the group again at once: nobody would accept what lands here.
    // A lone peer gets its `ret 0` back (we may have replaced it with the
    // warm-up's program).
    // After fail() (an app process crashed, or asked for cluster), close too.
    try {
      if (peers === 1 && fd >= 0) steerToFirst(fd);
    } finally {
      if (fd >= 0) unlisten(fd);
      status.listener = 'bound';
      if (status.phase === 'failed') closeListener();
    }
    return new Error(why);
  };
  const failed = (): boolean => status.phase === 'failed';
  const exited = (): boolean => !apps.every((a) => a.running);
  // fail() (a crash or a cluster refusal while gated), or an exit while
  // unparking, which onAppExit does not count as a failure.
  const backOutIfGone = (when: string): void => {
    if (failed()) throw backOut(status.error?.message ?? 'the release failed while going live');
    if (exited()) throw backOut(`an app process of this release exited ${when}`);
  };
  // Until the app processes accept on the socket (and are warmed up), new
  // connections keep going where they went: steered at once, they waited
  // in this socket's queue for the 'live' message to reach the apps and
  // their servers to start (p50 3.3 ms for those that arrived in that gap,
  // under the benchmark's load). With one peer, that is index 0 and we are
  // index 1, and the peer's own `ret 0` (attached below when it went live
  // alone, or by steering.ts holdWhenAlone once it was) already kept them
  // there from our listen() on; we attach the same, or the warm-up's
  // program, whose own connections come from source ports of ours. With
  // more peers (listeners of no known release), we attach nothing: the
  // group's program, if any, stays in force. Alone, `ret 0` is us, and it
  // stays, so that the next release's listen() is covered in turn.
  try {
    if (peers === 1 && warmUpPorts) attachSteeringBySource(fd, warmUpPorts.first, warmUpPorts.last, 1, 0);
    else if (peers <= 1) steerToFirst(fd);
  } catch (err) {
    if (peers === 1) throw backOut(`could not attach the steering program: ${(err as Error).message}`);
    // Alone there is nothing to protect yet: only the next deploy's go-live
    // may see a few connections hashed to it before its apps accept.
    if (peers === 0) log(`warning: could not attach the program that keeps new connections on this release: ${(err as Error).message}`);
  }
  for (const app of apps) app.send({ rd: from === 'gated' ? 'live' : 'unpark' });
  if (!(await waitFor(() => allApps('live') || failed() || exited(), 10_000))) throw backOut('the app processes did not start accepting within 10 s');
  backOutIfGone('while going live');
  if (warm && warmUpPorts) {
    const started = Date.now();
    let warmedUp = false;
    const warming = warmUpThroughPort(address, config.port, apps.map((a) => a.status), warm, warmUpPorts)
      .catch(() => 0)
      .finally(() => (warmedUp = true));
    // An app process that dies in the warm-up ends it (its other requests
    // would wait out the warm-up's 5 s in a queue nobody accepts from).
    await waitFor(() => warmedUp || failed() || exited(), 6_000);
    backOutIfGone('during the warm-up');
    const answered = await warming;
    const sent = warmUpPorts.last - warmUpPorts.first + 1;
    log(`warmed up through the port: ${answered} of ${sent} request(s) answered (${warm.count} per app process) in ${Date.now() - started} ms`);
    // An app process that died in the warm-up closed its connections before
    // its exit reaches us (SIGCHLD): give that a moment to arrive.
    if (answered < sent) await waitFor(() => failed() || exited(), 1_000);
    backOutIfGone('during the warm-up');
  }
  // Every app process accepts now: every new connection comes here.
  if (peers > 0) {
    try {
      status.steering = steerToSelf(fd, address, config.port, ownInode, peers, knownPids);
    } catch (err) {
      throw backOut(`could not steer new connections here: ${(err as Error).message}`);
    }
    log(`steering new connections to group index ${peers} of ${status.steering.groupSize}`);
    if (status.steering.unknown > 0) {
      log(`warning: ${status.steering.unknown} listener(s) on the port belong to no known release; they keep their share after the old release leaves`);
    }
    holdWhenAlone(fd, address, config.port, status.steering.groupSize, () => fd >= 0 && status.phase === 'live', log, () => (status.steering = null));
  }
  status.parkedUntil = null;
  drained.clear();
  status.liveAt = Date.now();
  setPhase('live');
  setBootPriority(false);
  for (const app of apps) shortenSlice(app);
  return status;
}

let parkTimer: NodeJS.Timeout | undefined;

/**
 * On a small host a booting Node process competes with the live one for
 * CPU, which shows in the live version's tail latency. Until go-live the
 * keeper's session runs at a lower priority, and at go-live it returns to 0.
 *
 * With CFS autogroup (kernel.sched_autogroup_enabled=1, the default on most
 * distributions) the scheduler shares CPU between sessions first, so a
 * per-process nice value does nothing against the live release, which is
 * another session: the session's own nice value in /proc/self/autogroup is
 * what counts (kernel/sched/autogroup.c, proc_sched_autogroup_set_nice).
 * Any user may set it to a value from 0 to 19, and back; without
 * CAP_SYS_ADMIN the kernel takes one such write per 100 ms host-wide and
 * answers EAGAIN to others, so a write is retried. Tasks in a cpu cgroup
 * other than the root one are not autogrouped; there the per-process nice
 * value counts, which only root may lower again, so only root sets it.
 */
let wantedNice = 0;
let raiseTimer: NodeJS.Timeout | undefined;
let helpersTimer: NodeJS.Timeout | undefined;
function setBootPriority(booting: boolean): void {
  clearTimeout(raiseTimer);
  clearInterval(starveTimer);
  clearTimeout(helpersTimer);
  if (booting) {
    setNice(BOOT_NICE);
    return;
  }
  // As root, the threads Node started in an app process before its code ran
  // (nodeThreads of AppMessage 'gated': not the main thread, nor threads the
  // app started, such as worker_threads or libuv's pool, which may serve
  // requests) stay at the boot value for the process's first
  // HELPERS_YOUNG_MS of traffic. In that time V8 compiles its hot code on
  // them: a ~3 s-old process of the benchmark spent 40% of its CPU there
  // (perf, 124 of 314 ms), in 2-3 ms bursts. Within the session the main
  // thread, which answers requests, then goes first (the session's share
  // against other sessions is unchanged); a helper that the main thread
  // waits for, as in a GC pause, runs anyway, as the main thread is then not
  // runnable; but the GC helpers that would work beside it wait too: with
  // 3,000 keep-alive connections handed over, a new process's median
  // scavenge took 1.51-2.21 ms against 1.15-2.08, and its scavenges 15% more
  // time in all. With the benchmark's 10 deploys 1.5 s apart (every process
  // young), median p99 with deploys: keep-alive 1.20 -> 1.03 ms, new
  // connection per request 2.24 -> 1.99 ms (two runs each way, for both).
  // Without root the threads stay as they are: a raised nice value could not
  // be lowered again.
  const helpers = process.getuid?.() === 0 ? wantedNice : 0;
  setNice(0, helpers);
  if (helpers !== 0 && apps.some((a) => a.status.pid)) {
    log(`the app processes' V8 threads (compiler, GC helpers) stay at nice ${helpers} for ${HELPERS_YOUNG_MS / 1000} s`);
    helpersTimer = setTimeout(() => setNice(0), HELPERS_YOUNG_MS);
    helpersTimer.unref();
  }
}

/**
 * The main thread of a serving app process, which answers its requests,
 * gets the shortest time slice the kernel takes (SERVING_SLICE_NS, EEVDF
 * custom slices of kernel 6.12+). A thread that wakes with a shorter slice
 * than the running one's preempts it at once (PREEMPT_SHORT in
 * check_preempt_wakeup_fair, kernel/sched/fair.c), where it would otherwise
 * wait while the running one finishes its slice (RUN_TO_PARITY; 1.4 ms by
 * default on this 2-CPU host); a group's slice is its shortest member's
 * (cfs_rq_min_slice), so this holds against other sessions too. The work it
 * then goes ahead of is the next deploy: its CLI, keeper and app processes,
 * booting on the same CPUs. CPU shares stay what nice values and autogroups
 * make them. Threads the main thread starts later inherit the slice (clone
 * copies it). Any user may set it on their own processes. Benchmark, three
 * runs each way, alternating (1000 req/s, 10 deploys 1.5 s apart, rows with
 * one and two instances): median p99 with deploys 0.88 ms against 1.16 in
 * keep-alive rows, 1.65 against 1.96 with a new connection per request.
 * Older kernels keep their default.
 */
let sliceReported = false;
function shortenSlice(app: AppProcess): void {
  if (!app.status.pid) return;
  try {
    const slice = setSlice(app.status.pid, SERVING_SLICE_NS);
    if (!sliceReported && slice !== null) {
      sliceReported = true;
      log(slice > 0 ? `the app processes' main threads take a ${slice / 1e6} ms time slice: they preempt other work when a request arrives` : 'this kernel has no custom time slices (Linux 6.12+); the app processes keep the default one');
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') log(`could not shorten the time slice of app ${app.slot}: ${(err as Error).message}`);
  }
}

/**
 * Booting at nice 19 costs the boot little while the host has CPU to spare,
 * and keeps it from taking CPU from the live version. On a host whose CPUs
 * other work keeps busy (a saturating load generator, or the live version
 * at full tilt), it made the boot crawl: under `wrk -t2 -c50` on this 2-CPU
 * host, deploys took 333-1198 ms (median 518; 180-535, median 376, with
 * what follows), and the live version's p99 was no better for it. So the
 * keeper watches its own main thread and its app processes' while they
 * boot: their time on a CPU and their time runnable but waiting for one,
 * since each process started (/proc/<pid>/schedstat; sched_info in
 * kernel/sched/stats.h, zeroed by sched_fork). Once they have waited 1.5
 * times as long as they ran, the boot is being starved by other work, and
 * the session goes to nice 0 for the rest of it (go-live sets 0 anyway).
 * Under the saturating wrk that came within the keeper's own start-up (it
 * had waited 47-87 ms and run 19-24); under the benchmark's 1000 req/s,
 * with CPU to spare, a two-process boot once reached 63 ms of waiting
 * against 58 of running (88 deploys of one and two app processes), and
 * booting main threads ran 7-19 ms and waited 2-13 ms of each 20 ms. A boot
 * that is slow without being starved (it waits for I/O or a timer), or
 * where schedstat cannot be read, goes to BOOT_NICE_SLOW once its app
 * processes have been booting for BOOT_RAISE_MS (raiseBootPriorityLater).
 */
const STARVE_STEP_MS = 20;
let starveTimer: NodeJS.Timeout | undefined;
function raiseBootPriorityWhenStarved(): void {
  clearInterval(starveTimer);
  const check = (): void => {
    if (status.phase !== 'booting' && status.phase !== 'gated') return clearInterval(starveTimer);
    let run = 0;
    let wait = 0;
    for (const pid of [process.pid, ...apps.map((a) => a.status.pid)]) {
      const stat = pid ? schedstat(pid) : null;
      run += stat?.run ?? 0;
      wait += stat?.wait ?? 0;
    }
    // A boot that has wanted a CPU for a while, and had it less than 40% of
    // that time. Not just more waiting than running: two app processes and
    // the keeper booting on two CPUs wait for each other too.
    if (run + wait < 20e6 || wait <= 1.5 * run) return;
    clearInterval(starveTimer);
    clearTimeout(raiseTimer);
    log(`the host's CPUs are busy: the keeper and app processes waited ${Math.round(wait / 1e6)} ms for a CPU and ran ${Math.round(run / 1e6)} ms; the rest of the boot runs at nice 0`);
    setNice(0);
  };
  starveTimer = setInterval(check, STARVE_STEP_MS);
  starveTimer.unref();
  check();
}

/** Started with the apps: a boot still going after BOOT_RAISE_MS, and not raised already, goes to BOOT_NICE_SLOW. */
function raiseBootPriorityLater(): void {
  clearTimeout(raiseTimer);
  if (wantedNice <= BOOT_NICE_SLOW) return;
  raiseTimer = setTimeout(() => {
    log(`still booting after ${BOOT_RAISE_MS} ms: raising its CPU priority to nice ${BOOT_NICE_SLOW}`);
    setNice(BOOT_NICE_SLOW);
  }, BOOT_RAISE_MS);
  raiseTimer.unref();
}

/** A thread's time on a CPU and time runnable but waiting, in ns (/proc/<pid>/schedstat); null where unreadable. */
function schedstat(pid: number): { run: number; wait: number } | null {
  try {
    const [run, wait] = fs.readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ').map(Number);
    return Number.isFinite(run) && Number.isFinite(wait) ? { run, wait } : null;
  } catch {
    return null;
  }
}

/** The session's and, as root, every thread's nice value; the threads Node started in an app process before its code ran get `appHelpers`. */
function setNice(nice: number, appHelpers = nice): void {
  wantedNice = nice;
  setAutogroupNice(5);
  if (process.getuid?.() !== 0) return;
  try {
    reniceThreads(process.pid, wantedNice);
    for (const app of apps) if (app.status.pid) reniceThreads(app.status.pid, wantedNice, app.nodeThreads, appHelpers);
  } catch (err) {
    log(`could not set the priority to ${wantedNice}: ${(err as Error).message}`);
  }
}

/**
 * Sets the nice value of every thread of `pid`, `helpersNice` for those in
 * `helpers`. On Linux it is a per-thread attribute (setpriority(2), NOTES):
 * setPriority(pid) changes the main thread only, and a thread takes its
 * creator's value. An app started at boot priority creates its V8 threads
 * (and any it starts while booting) then; renicing only its main thread at
 * go-live once left them at nice 19 for good, behind every other thread of
 * the host.
 */
function reniceThreads(pid: number, nice: number, helpers: number[] = [], helpersNice = nice): void {
  let tids: string[];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    tids = [String(pid)];
  }
  for (const tid of tids) {
    try {
      os.setPriority(Number(tid), helpers.includes(Number(tid)) ? helpersNice : nice);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err; // a thread that just ended
    }
  }
}

function setAutogroupNice(attempts: number): void {
  const nice = wantedNice;
  try {
    // "/autogroup-123 nice 10": the CLI may have set it already (src/deploy/prestart.ts).
    if (fs.readFileSync('/proc/self/autogroup', 'utf8').trim().endsWith(` nice ${nice}`)) return;
    fs.writeFileSync('/proc/self/autogroup', String(nice));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EAGAIN' && attempts > 1) {
      setTimeout(() => {
        if (wantedNice === nice) setAutogroupNice(attempts - 1);
      }, 110).unref();
    } else if (code !== 'ENOENT') {
      log(`could not set the session's priority to ${nice}: ${(err as Error).message}`);
    }
  }
}

/**
 * Leaves the group without resetting queued connections, then lets the apps
 * finish their requests. `graceMs` is the wait for handshakes already in
 * flight to this socket (SYN_RECV entries are not migrated on close without
 * net.ipv4.tcp_migrate_req, and get a RST when their final ACK arrives).
 */
async function drain(timeoutMs: number, graceMs: number, parkMs = 0, handoff: string[] = []): Promise<void> {
  if (status.phase === 'draining' || status.phase === 'closed' || status.phase === 'parked') return;
  const wasLive = status.phase === 'live';
  setPhase('draining');
  if (wasLive && fd >= 0) {
    await sleep(graceMs);
    // The apps are still accepting; wait until they have taken everything.
    const emptied = await waitFor(() => acceptQueue(fd).queued === 0, 5_000, 5);
    if (!emptied) log(`warning: accept queue still holds ${acceptQueue(fd).queued} connection(s); closing anyway`);
  }
  drainTimeout = timeoutMs;
  drainDeadline = Date.now() + timeoutMs;
  for (const app of apps) {
    // An app process restarted after a crash that has not reported back yet
    // serves nothing, and would go live after a drain message (preload.ts
    // gate()): it is stopped instead.
    if (app.running && app.status.state === 'starting') app.kill('SIGTERM');
    else app.send({ rd: 'drain', timeoutMs, handoff });
  }
  const serversClosed = await waitFor(() => apps.every((a) => !a.running || a.status.state === 'draining'), 5_000);
  // Parked only if every app process runs and closed its server (one still
  // accepting would get EINVAL from the unlisten below, and could not serve
  // again; one stopped above could not come back), and if no stop came
  // meanwhile (a stop during the drain closes instead).
  const running = apps.every((a) => a.running);
  const park = parkMs > 0 && wasLive && fd >= 0 && serversClosed && running && !stopAfterDrain;
  if (parkMs > 0 && wasLive && !park) {
    const why = stopAfterDrain ? 'a stop came during the drain' : !running ? 'an app process is not running' : 'an app process did not close its server';
    log(`not parking: ${why}; stopping instead`);
  }
  // The apps have closed their servers, but each still holds fd 4, the
  // socket it was started with (kept for a parked process's go-live), and a
  // child process an app started may hold it too (inherited). Closing our fd
  // would leave the socket listening and in the group, with nobody
  // accepting, until the last holder exits (inet_csk_listen_stop runs on the
  // last reference): a later deploy would count it as a member, and once a
  // member below it left, its steering index would point past the group's
  // end and the kernel's hash would send connections here. unlisten
  // (connect(AF_UNSPEC): tcp_disconnect) takes it out of the group now, for
  // every holder; its queue was emptied above, and nothing is steered here.
  // Not while an app still accepts on it: its next accept would fail with
  // EINVAL, which Node raises as an 'error' on its server.
  if (wasLive && fd >= 0 && serversClosed) unlisten(fd);
  else if (wasLive && fd >= 0) log('warning: an app process did not close its server within 5 s; the socket leaves the port when the app processes exit');
  if (park) {
    status.listener = 'bound';
    status.parkedUntil = Date.now() + parkMs;
    setPhase('parked');
    for (const app of apps) if (app.running) app.status.state = 'parked';
    armParkTimer(parkMs);
    return;
  }
  closeListener();
  status.listener = 'closed';
  setPhase('closed');
  await waitFor(() => apps.every((a) => !a.running || drained.has(a.slot)), timeoutMs + 2_000, 50);
  await stopApps();
  shutdown(0);
}

const drained = new Set<number>();
/** When the apps' drain times out: a parked release that is stopped waits for them until then. */
let drainDeadline = 0;
let drainTimeout = 30_000;
/** A go-live was tried: the gate timer leaves the outcome to the CLI. */
let goLiveTried = false;
/** A stop (or SIGTERM) that came while draining: the drain closes rather than parks, then the keeper exits. */
let stopAfterDrain = false;

function armParkTimer(ms: number): void {
  clearTimeout(parkTimer);
  parkTimer = setTimeout(() => {
    if (status.phase !== 'parked') return;
    log('parking time is over; stopping');
    stopParked();
  }, ms);
}

/**
 * A parked release that could not go live again stops: its apps, told to
 * serve again, drain first (an unlisten under one still accepting would make
 * its accept fail with EINVAL); a lone peer has its `ret 0` back, so nothing
 * new comes here meanwhile.
 */
async function abandonUnpark(peers: number, why: string): Promise<void> {
  log(`could not go live again (${why}); stopping`);
  try {
    if (peers === 1 && fd >= 0) steerToFirst(fd);
  } catch (err) {
    log(`could not give new connections back: ${(err as Error).message}`);
  }
  drainDeadline = Date.now() + drainTimeout;
  // Only those that went live again: the others still drain from the park.
  const again = apps.filter((a) => a.running && a.status.state === 'live');
  for (const app of again) {
    drained.delete(app.slot);
    app.send({ rd: 'drain', timeoutMs: drainTimeout, handoff: [] });
  }
  await waitFor(() => again.every((a) => !a.running || a.status.state === 'draining'), 5_000);
  if (fd >= 0) unlisten(fd);
  status.listener = 'bound';
  if (status.phase === 'parked') stopParked();
}

/**
 * Stops a parked release: it is out of the port already; its apps were told
 * to drain when it parked, and finish what they still serve (until the
 * drain's timeout) before they are stopped.
 */
function stopParked(): void {
  clearTimeout(parkTimer);
  closeListener();
  status.listener = 'closed';
  setPhase('closed');
  const left = Math.max(0, drainDeadline - Date.now()) + 2_000;
  void waitFor(() => apps.every((a) => !a.running || drained.has(a.slot)), left, 50)
    .then(() => stopApps())
    .then(() => shutdown(0));
}

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
  for (const app of apps) {
    app.kill('SIGKILL');
    app.removeSockets();
  }
  try {
    if (config) fs.unlinkSync(config.controlSocket); // none before the CLI sent the configuration
  } catch {
    // already gone
  }
  log(`keeper exits (${code})`);
  process.exit(code);
}

function startApps(c: KeeperConfig): void {
  apps = Array.from({ length: c.instances }, (_, slot) => new AppProcess(slot, c, fd));
  for (const app of apps) {
    crashTimes[app.slot] = [];
    app.on('exit', (code, signal) => {
      onAppExit(app, code, signal);
      changes.emit('change');
    });
    app.on('message', (m) => {
      if (m.rd === 'gated' && status.phase === 'booting' && allApps('gated')) setPhase('gated');
      else if (m.rd === 'live' && status.phase === 'live') shortenSlice(app); // restarted after a crash
      else if (m.rd === 'listener-closed') app.status.state = 'draining';
      else if (m.rd === 'drained') {
        drained.add(app.slot);
        if (m.handedOver > 0) log(`app ${app.slot} handed ${m.handedOver} idle keep-alive connection(s) to the new version`);
      }
      else if (m.rd === 'listen-error') log(`app ${app.slot} could not listen: ${m.message}`);
      else if (m.rd === 'cluster') refuseCluster(m.policy);
      changes.emit('change');
    });
    app.start(false);
  }
}

/**
 * The configuration the CLI writes to stdin, one line of JSON; null when it
 * closes the pipe without one. The line ends it, not the pipe's EOF: the
 * CLI's end() only closes the pipe once its event loop runs again, which can
 * be tens of milliseconds of synchronous work later (state.json's fsync,
 * pruning), all of it on the deploy's critical path.
 */
function readConfig(): Promise<KeeperConfig | null> {
  return new Promise((resolve) => {
    let text = '';
    const done = (config: KeeperConfig | null): void => {
      process.stdin.removeAllListeners().on('error', () => undefined);
      process.stdin.destroy();
      resolve(config);
    };
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', (chunk: string) => {
      text += chunk;
      const end = text.indexOf('\n');
      if (end < 0) return;
      try {
        done(JSON.parse(text.slice(0, end)) as KeeperConfig);
      } catch {
        done(null);
      }
    });
    process.stdin.on('end', () => done(null));
    process.stdin.on('error', () => done(null));
  });
}

/** From here on the keeper's output, and its apps' (they inherit fds 1 and 2), go to the release's log. */
function redirectOutput(logFile: string): void {
  const logFd = fs.openSync(logFile, 'a', 0o600);
  dup2Fd(logFd, 1);
  dup2Fd(logFd, 2);
  fs.closeSync(logFd);
  for (const line of early.splice(0)) process.stdout.write(line);
}

async function main(): Promise<void> {
  if (process.stdin.isTTY) {
    process.stderr.write('reuse-deploy keeper: it is started by the reuse-deploy CLI only.\n');
    process.exit(2);
  }
  setBootPriority(true); // the app processes inherit it
  raiseBootPriorityWhenStarved();
  // Started when the CLI started (src/deploy/prestart.ts): load the addon
  // while the CLI prepares the release; the bind needs it first thing.
  ensureAddon();
  const c = await readConfig();
  if (!c) process.exit(0); // the command ended without starting a release
  config = c;
  // Started in / (it did not know its release yet); now it belongs to the release like its apps.
  process.chdir(c.cwd);
  status.id = c.id;
  status.release = c.release;
  address = c.host;
  redirectOutput(c.logFile);
  const inherited = os.getPriority();
  if (inherited > 0 && process.getuid?.() !== 0) {
    log(`the keeper and its apps run at nice ${inherited}, inherited from the command that started them (only root could lower it)`);
  }
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
    raiseBootPriorityLater();
  }

  const { serveControl } = require('./control') as typeof import('./control');
  await serveControl(c.controlSocket, {
    status: async (stats) => {
      if (stats) {
        const asked = Date.now();
        for (const app of apps) {
          app.readRss();
          app.send({ rd: 'stats' });
        }
        // Fresh connection counts, if the apps answer quickly.
        await waitFor(() => apps.every((a) => !a.running || a.statsAt >= asked), 250);
      }
      status.apps = apps.map((a) => ({ ...a.status }));
      return status;
    },
    wait: async (phases, timeoutMs) => {
      await waitFor(() => phases.includes(status.phase), timeoutMs);
      status.apps = apps.map((a) => ({ ...a.status }));
      return status;
    },
    live: (body) => goingLive(goLive(knownPidsOf(body), 'gated', warmUpRequest(body.warmUp))),
    unpark: (body) => goingLive(goLive(knownPidsOf(body), 'parked')),
    drain: (body) =>
      startDrain(Number(body.timeoutMs ?? 30_000), Number(body.graceMs ?? 0), Number(body.parkMs ?? 0), Array.isArray(body.handoff) ? body.handoff.map(String) : []),
    // The CLI stops a release that never took traffic. One that went live
    // all the same (its go-live answer was lost, say) may hold connections
    // in its accept queue, which a plain close would reset: it drains, and
    // first gives new connections back to the release before it, which
    // still serves (nobody told it to drain).
    stop: () =>
      void afterGoLive().then(() => {
        if (stopUnlessLive()) return;
        if (status.steering && fd >= 0) {
          const how = giveBackToPeers(fd, address, config.port, status.steering);
          log(how === 'peer' ? 'stopped after go-live: new connections go back to the release before this one' : 'warning: stopped after go-live with several older listeners on the port; steering removed, so the kernel spreads new connections over all of them, this one too, until it leaves');
          status.steering = null;
        }
        startDrain(30_000, 1_000, 0);
      }),
  });
  watchLogSize(c.logFile);
  setTimeout(() => {
    // A go-live under way ends first (it is bounded: 10 s, then a 5 s warm-up).
    void afterGoLive().then(() => {
      if (status.phase !== 'booting' && status.phase !== 'gated') return;
      if (goLiveTried) {
        // It backed out, and the CLI (which reports why) did not stop it.
        log('a go-live was tried and backed out, and nobody stopped this release; stopping');
      } else {
        log('nobody made this release live in time; stopping');
        fail('RD_ERR_NEVER_LISTENED', 'The keeper was not made live in time.');
      }
      void stopApps().then(() => shutdown(1));
    });
  }, c.gateTimeoutMs).unref();
}

/** The go-live call's `warmUp`, if it asks for one. */
function warmUpRequest(value: unknown): WarmUpRequest | null {
  const w = value as Partial<WarmUpRequest> | null | undefined;
  const count = Number(w?.count);
  if (!w || !Number.isInteger(count) || count <= 0) return null;
  return { count, path: typeof w.path === 'string' ? w.path : null };
}

function startDrain(timeoutMs: number, graceMs: number, parkMs: number, handoff: string[] = []): void {
  void drain(timeoutMs, graceMs, parkMs, handoff).catch((err) => {
    log(`drain failed: ${(err as Error).message}`);
    shutdown(1);
  });
}

/** The pids of the releases the CLI knows on the port, from a go-live request (steering.ts counts the others as unknown). */
function knownPidsOf(body: Record<string, unknown>): number[] {
  return Array.isArray(body.knownPids) ? body.knownPids.map(Number) : [];
}

/**
 * A go-live in progress, if any. A stop (or a signal) that comes meanwhile,
 * from a command that repairs after the deploying one was killed, waits for
 * it: stopping halfway would close the socket under a go-live that goes on
 * (steering through a closed fd, apps restarted on it) after it joined the
 * port. Once it is over, a live release drains and any other stops.
 */
let inGoLive: Promise<unknown> | null = null;
function goingLive<T>(p: Promise<T>): Promise<T> {
  const tracked = p.finally(() => {
    if (inGoLive === tracked) inGoLive = null;
  });
  inGoLive = tracked;
  return tracked;
}
function afterGoLive(): Promise<void> {
  return (inGoLive ?? Promise.resolve()).then(
    () => undefined,
    () => undefined,
  );
}

/**
 * A stop (the control call, or a signal) of a release that is not live: a
 * draining one closes rather than parks, a parked one lets its apps finish,
 * a closed one is on its way out already, and one that serves nothing just
 * stops. False for a live release, which the caller drains.
 */
function stopUnlessLive(): boolean {
  if (status.phase === 'live') return false;
  if (status.phase === 'draining') stopAfterDrain = true;
  else if (status.phase === 'parked') stopParked();
  else if (status.phase !== 'closed') stopNow();
  return true;
}

/** SIGTERM/SIGINT (systemd, a person): a live release drains; any other stops (stopUnlessLive). */
function onSignal(): void {
  void afterGoLive().then(() => {
    if (!stopUnlessLive()) startDrain(30_000, 0, 0);
  });
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
