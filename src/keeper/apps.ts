// One app process of a release: spawn, messages, exit, rss.
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import { ENV, handoffSocketPath, isAppMessage, probeSocketPath, type AppMessage, type AppStatus, type KeeperConfig, type KeeperMessage } from '../protocol';

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
    const child = spawn(process.execPath, [...c.nodeArgs, '--require', c.preload, c.entry, ...c.args], {
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
