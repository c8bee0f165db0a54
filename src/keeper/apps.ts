// One app process of a release: spawn, messages, exit, rss.
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import { ENV, handoffSocketPath, isAppMessage, probeSocketPath, type AppMessage, type AppStatus, type KeeperConfig, type KeeperMessage } from '../protocol';

/**
 * Node options every app process gets ahead of the release's own
 * (`--node-arg`, which come after them and so win: V8 applies its flags in
 * order).
 *
 * `--no-flush-bytecode` on Node 20 and 22. It was put here against V8's
 * bytecode flushing (V8 throws away the bytecode and feedback of functions
 * that have not run for a few major GCs, which an idle server gets from its
 * memory reducer); what it does that matters is to make Node reject its
 * built-in code cache (the last paragraph). Measured here on the
 * bench app, deployed, idle for 20 s, then loaded with wrk: one build served
 * 10-25% fewer requests than with the flag, in 11 of 11 runs on Node 20 and
 * 2 of 2 on Node 22, and stayed so for as long as it was loaded. `perf` put
 * 12-19% of its samples in Runtime_DefineKeyedOwnPropertyInLiteral, called
 * from process.nextTick, which builds each tick object as
 * `{ [async_id_symbol]: ..., [trigger_async_id_symbol]: ..., callback, args }`
 * (lib/internal/process/task_queues.js). %DebugPrint(process.nextTick) in
 * such a process showed three of the literal's four property slots
 * MEGAMORPHIC: its feedback had been flushed and rebuilt with mixed maps,
 * so TurboFan calls the runtime for every property of every tick object.
 * Whether a process fell into this hung on nothing we control: the same
 * preload fell in unbundled (2 of 2) and not bundled (0 of 4), and a small
 * change to the bundle flipped it. With the flag: 0 of 4 (Node 20 and 22).
 * Node 24 (V8 13) did not fall in without it (0 of 3) and keeps V8's
 * default. The cost is the bytecode of functions that ran once: about 1 MB
 * of RSS for the bench app. An app turns flushing back on with
 * `--node-arg=--flush-bytecode`.
 *
 * It also costs every start ~8 ms on Node 20: a V8 flag off its default
 * changes V8's flag hash, which code caches are checked against
 * (SerializedCodeData::SanityCheck), so Node's embedded code cache of its own
 * modules no longer matches and each one the app loads is compiled from
 * source (the bench app listened after 55.9 ms against 47.5, median of 15
 * starts). Setting the flag from the runtime instead, once the app listens
 * (v8.setFlagsFromString, which does stop flushing: no function flushed
 * under --stress-flush-code), saved that, 8-15 ms per deploy, but did not
 * prevent the slowdown: in one `npm run bench`, 4 of its 6 deployed
 * processes answered at +15..+19% CPU per request after idling (0 of 12 in
 * the two runs before, with the flag here). What decides is that code
 * cache, not flushing: with flushing left on and the cache rejected by
 * another flag off its default (`--stack-size=983`), six deployed processes
 * cost -13..+5% per request against bare ones beside them (CPU 1, wrk), and
 * +13..+28% with flushing on and the cache used (one six-set run each way).
 * The flag's ~8 ms are the price of that; it stays on the command line.
 *
 * `--no-memory-reducer` on Node 20 and 22, too. V8's memory reducer runs
 * full GCs in a process that has gone idle (from 8 s on,
 * --gc-memory-reducer-start-delay-ms), and on these two versions a process
 * that had served requests before it went idle came back from them slow for
 * good. Measured here (bench app, pinned to CPU 1 beside a bare process idle
 * since its start, wrk on CPU 0; the median of three 2 s windows, in each of
 * three trials): a bare app that served 200 requests, idled 25 s, then took
 * load cost +15, +17 and +24% CPU per request on Node 20, +25, +28 and +31%
 * on Node 22, and with this flag -9, -1 and -1% (Node 20; the reference
 * process had slow windows) and -1, -1 and +2% (Node 22); Node 24 did not
 * slow down (0, +2, +2%). So it is not ours: any app on those versions pays
 * it after a quiet spell. A deployed process meets it after its warm-up
 * (`--warm-up`), which is activity before the wait for traffic: +18, +21 and
 * +22% after 25 s idle, +1% loaded at once, and -4..0% with the flag. What
 * the reducer gives back is heap an idle process no longer needs; for the
 * bench app its RSS after 25 s idle was the same either way (54.7 against
 * 54.4 MB). An app turns it back on with `--node-arg=--memory-reducer`.
 */
export function defaultNodeArgs(nodeVersion: string = process.versions.node): string[] {
  return Number(nodeVersion.split('.')[0]) < 24 ? ['--no-flush-bytecode', '--no-memory-reducer'] : [];
}

export interface AppEvents {
  message: [AppMessage];
  exit: [number | null, NodeJS.Signals | null];
}

export class AppProcess extends EventEmitter<AppEvents> {
  readonly status: AppStatus;
  private child: ChildProcess | null = null;
  /** When the last stats answer arrived. */
  statsAt = 0;
  /** The threads Node started before the app's code ran (AppMessage 'gated'). */
  nodeThreads: number[] = [];

  constructor(
    readonly slot: number,
    private readonly config: KeeperConfig,
    private readonly listenFd: number,
  ) {
    super();
    this.status = {
      slot,
      pid: null,
      state: 'starting',
      tls: false,
      h2: false,
      startedAt: Date.now(),
      exitCode: null,
      signal: null,
      restarts: 0,
      otherPorts: [],
      connections: 0,
      inflight: 0,
      rssBytes: 0,
    };
  }

  probeSocket(): string {
    return probeSocketPath(this.config.probeSocketPrefix, this.slot);
  }

  handoffSocket(): string {
    return handoffSocketPath(this.config.probeSocketPrefix, this.slot);
  }

  /**
   * Removes the process's socket files (health probe, hand-over). Its server
   * unlinks one when it closes it; a process killed or crashed leaves it.
   */
  removeSockets(): void {
    for (const file of [this.probeSocket(), this.handoffSocket()]) {
      try {
        fs.unlinkSync(file);
      } catch {
        // not there: fine
      }
    }
  }

  /** Starts the process; with `live`, it listens at once (a restart after a crash). */
  start(live: boolean): void {
    const c = this.config;
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      ...c.env,
      [ENV.keeperPid]: String(process.pid),
      [ENV.port]: String(c.port),
      [ENV.probe]: this.probeSocket(),
      [ENV.handoff]: this.handoffSocket(),
      [ENV.live]: live ? '1' : '0',
    };
    const child = spawn(process.execPath, [...defaultNodeArgs(), ...c.nodeArgs, '--require', c.preload, c.entry, ...c.args], {
      cwd: c.cwd,
      env,
      // stdout/stderr go where the keeper's go: the release's log file.
      // Index 4 of stdio is fd 4 in the child: APP_LISTEN_FD, the deploy socket.
      stdio: ['ignore', 'inherit', 'inherit', 'ipc', this.listenFd],
    });
    this.child = child;
    Object.assign(this.status, {
      pid: child.pid ?? null,
      state: 'starting',
      startedAt: Date.now(),
      exitCode: null,
      signal: null,
      otherPorts: [],
      connections: 0,
      inflight: 0,
    });
    child.on('message', (m: unknown) => {
      if (!isAppMessage(m)) return;
      if (m.rd === 'gated') {
        Object.assign(this.status, { state: 'gated', tls: m.tls, h2: m.h2 });
        this.nodeThreads = Array.isArray(m.nodeThreads) ? m.nodeThreads.filter((tid) => Number.isInteger(tid)) : [];
      } else if (m.rd === 'live') this.status.state = 'live';
      else if (m.rd === 'other-port') this.status.otherPorts.push(m.port);
      else if (m.rd === 'stats') {
        Object.assign(this.status, { connections: m.connections, inflight: m.inflight });
        this.statsAt = Date.now();
      }
      this.emit('message', m);
    });
    child.on('error', () => undefined); // reported through 'exit'
    child.on('exit', (code, signal) => {
      if (this.child !== child) return;
      this.child = null;
      Object.assign(this.status, { state: 'exited', exitCode: code, signal, pid: null });
      this.emit('exit', code, signal);
    });
  }

  get running(): boolean {
    return this.child !== null;
  }

  send(message: KeeperMessage): void {
    if (this.child?.connected) this.child.send(message);
  }

  kill(signal: NodeJS.Signals): void {
    this.child?.kill(signal);
  }

  /** Resolves once the process has exited (at once if it is not running). */
  async exited(): Promise<void> {
    if (!this.child) return;
    await new Promise<void>((resolve) => this.once('exit', () => resolve()));
  }

  /** Resident memory from /proc, for status. */
  readRss(): void {
    if (!this.status.pid) return;
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${this.status.pid}/status`, 'utf8'));
      if (m) this.status.rssBytes = Number(m[1]) * 1024;
    } catch {
      // exited meanwhile
    }
  }
}
