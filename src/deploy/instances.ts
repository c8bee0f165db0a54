// Starting, stopping and inspecting keepers (one per running release).
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { DeployError } from '../errors';
import { handoffSocketPath, type KeeperConfig, type KeeperStatus } from '../protocol';
import { keeperStop, tryKeeperStatus } from './keeper-client';
import { checkSocketPath, type AppPaths } from './paths';
import { KEEPER_MAIN } from '../package-files';
import { appOnlyEnv, takeKeeper } from './prestart';
import { appRuntime, type Runtime } from './runtime-copy';
import { groupMembers as listenerGroup, socketInodesOf } from '../sys/proc-net';
import type { Instance, Release } from './state';

export interface Spawned {
  instance: Instance;
  logFile: string;
  /** Log size before this keeper started: its own lines come after. */
  logOffset: number;
  exited: Promise<number | null>;
  runtime: Runtime;
}

export interface SpawnOptions {
  app: string;
  host: string;
  port: number;
  instances: number;
  gateTimeoutMs: number;
}

export function logFileOf(paths: AppPaths, release: string): string {
  return path.join(paths.logs, `${release}.log`);
}

/** Hands `release` to a keeper (detached in its own session), which logs to the release's log file. */
export function spawnKeeper(paths: AppPaths, release: Release, options: SpawnOptions): Spawned {
  const id = randomBytes(4).toString('hex');
  const controlSocket = path.join(paths.run, `${id}.sock`);
  const probeSocketPrefix = path.join(paths.run, `${id}-`);
  // The longest of the instance's socket paths.
  checkSocketPath(handoffSocketPath(probeSocketPrefix, Math.max(0, options.instances - 1)));
  const logFile = logFileOf(paths, release.id);
  const runtime = appRuntime(paths);
  // An addon named by REUSE_DEPLOY_ADDON is loaded from that path alone
  // (src/native.ts): the app processes get the copy's instead.
  const addonOverride: Record<string, string> = process.env.REUSE_DEPLOY_ADDON !== undefined && !runtime.notCopied ? { REUSE_DEPLOY_ADDON: runtime.addon } : {};
  const config: KeeperConfig = {
    id,
    app: options.app,
    release: release.id,
    entry: release.entry,
    cwd: release.root,
    args: release.args,
    nodeArgs: release.nodeArgs,
    host: options.host,
    port: options.port,
    instances: options.instances,
    env: { ...appOnlyEnv(), ...addonOverride, PORT: String(options.port), REUSE_DEPLOY_RELEASE: release.id, REUSE_DEPLOY_APP: options.app, ...release.env },
    controlSocket,
    probeSocketPrefix,
    gateTimeoutMs: options.gateTimeoutMs,
    preload: runtime.preload,
    logFile,
  };
  const logFd = fs.openSync(logFile, 'a', 0o600);
  const logOffset = fs.fstatSync(logFd).size;
  fs.closeSync(logFd);
  // Started when the CLI started (src/deploy/prestart.ts); it runs once it has this.
  const child = takeKeeper();
  child.stdin?.end(`${JSON.stringify(config)}\n`); // one line: the keeper starts on the newline (readConfig in src/keeper/main.ts)
  const exited = new Promise<number | null>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve(child.exitCode);
    child.once('exit', (code) => resolve(code));
    child.once('error', () => resolve(null));
  });
  return {
    instance: {
      id,
      release: release.id,
      keeperPid: child.pid ?? -1,
      controlSocket,
      probeSocketPrefix,
      instances: options.instances,
      startedAt: Date.now(),
      role: 'starting',
    },
    logFile,
    logOffset,
    exited,
    runtime,
  };
}

/** The last `lines` lines written to `file` after byte `offset`. */
export function logTail(file: string, offset = 0, lines = 20): string {
  try {
    const size = fs.statSync(file).size;
    const start = Math.max(offset, size - 16_384);
    const fd = fs.openSync(file, 'r');
    const buf = Buffer.alloc(size - start);
    fs.readSync(fd, buf, 0, buf.length, start);
    fs.closeSync(fd);
    return buf.toString('utf8').split('\n').filter(Boolean).slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/** Is `pid` a running process (not gone, not a zombie waiting to be reaped)? */
export function isAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/**
 * Live processes of the process group `pgid`: a keeper leads its own group
 * (it is started in a session of its own), and its app processes stay in
 * it after it dies. The kernel gives no new process a pid that is still a
 * group's id, so the group of a dead keeper holds only its orphans.
 */
export function groupMembers(pgid: number): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      // After "pid (comm) ": state, ppid, pgrp (proc(5)); comm may hold spaces and parentheses.
      const [state, , pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(pgrp) === pgid && state !== 'Z') pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids.sort((a, b) => a - b);
}

/** Is `pid` still one of our keepers (and not a recycled pid)? */
export function isKeeper(pid: number): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(KEEPER_MAIN);
  } catch {
    return false;
  }
}

export interface OtherRelease {
  pid: number;
  stateDir: string;
  app: string;
  release: string;
}

/**
 * Releases of another app, or of another state directory, that serve
 * host:port: keepers (of any reuse-deploy install) holding a socket of the
 * port's reuseport group. A keeper's fd 1 is its release's log,
 * <state dir>/<app>/logs/<release>.log (src/keeper/main.ts, redirectOutput),
 * which names them. Such a release shares the port with this app's and
 * nothing of this app would ever drain it: a lost or changed state
 * directory (HOME, XDG_STATE_HOME, REUSE_DEPLOY_HOME differing between CI
 * jobs) or a changed --name. Every process is looked at only when the
 * group has a socket that none of this app's keepers holds.
 */
export function otherReleasesOn(host: string, port: number, known: Instance[], stateDir: string, app: string): OtherRelease[] {
  // '::' falls back to 0.0.0.0 where IPv6 is off (keeper/bind.ts).
  let members = listenerGroup(host, port);
  if (members.length === 0 && host === '::') members = listenerGroup('0.0.0.0', port);
  const group = new Set(members.map((l) => l.inode));
  const knownPids = new Set(known.filter((i) => isAlive(i.keeperPid)).map((i) => i.keeperPid));
  const held = new Set([...knownPids].flatMap((pid) => [...socketInodesOf(pid)]));
  if ([...group].every((inode) => held.has(inode))) return [];
  let ownDir: string;
  try {
    ownDir = fs.realpathSync(stateDir);
  } catch {
    ownDir = path.resolve(stateDir);
  }
  const keeperScript = path.join(path.sep, 'dist', 'src', 'keeper', 'main.js');
  const others: OtherRelease[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || knownPids.has(Number(entry))) continue;
    const pid = Number(entry);
    let log: string;
    try {
      if (!fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').some((arg) => arg.endsWith(keeperScript))) continue;
      if (![...socketInodesOf(pid)].some((inode) => group.has(inode))) continue;
      log = fs.readlinkSync(`/proc/${pid}/fd/1`);
    } catch {
      continue; // gone meanwhile, or not this user's
    }
    const m = /^(.+)\/([^/]+)\/logs\/([^/]+)\.log$/.exec(log);
    if (!m) continue;
    if (m[1] === ownDir && m[2] === app) continue; // this app's own, e.g. a release still draining
    others.push({ pid, stateDir: m[1]!, app: m[2]!, release: m[3]! });
  }
  return others;
}

/** Waits until the keeper answers on its control socket, or fails if it exits first. */
export async function waitForKeeper(spawned: Spawned, timeoutMs: number): Promise<KeeperStatus> {
  const deadline = Date.now() + timeoutMs;
  let exitCode: number | null | undefined;
  void spawned.exited.then((code) => (exitCode = code));
  for (;;) {
    // Watching for the socket file costs a stat; a refused HTTP request costs far more CPU,
    // which the keeper and the app need while they boot.
    const status = fs.existsSync(spawned.instance.controlSocket) ? await tryKeeperStatus(spawned.instance.controlSocket, 1_000) : null;
    if (status) return status;
    if (exitCode !== undefined || Date.now() > deadline) {
      throw new DeployError(
        'RD_ERR_KEEPER',
        exitCode !== undefined
          ? `The instance supervisor exited (code ${exitCode}) before it answered.`
          : 'The instance supervisor did not answer on its control socket.',
        { logTail: logTail(spawned.logFile, spawned.logOffset) },
      );
    }
    await sleep(10);
  }
}

/** Stops a keeper and its apps at once (no drain): for instances that never went live. */
export async function stopInstance(instance: Instance): Promise<void> {
  await keeperStop(instance.controlSocket).catch(() => undefined);
  const deadline = Date.now() + 8_000;
  while (isAlive(instance.keeperPid) && isKeeper(instance.keeperPid) && Date.now() < deadline) await sleep(25);
  killKeeperGroup(instance.keeperPid);
}

/** SIGKILL to the keeper's process group (it is a session leader: pgid = pid), if it is still ours. */
export function killKeeperGroup(pid: number): void {
  if (pid <= 0 || !isKeeper(pid)) return;
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

/** Waits until the keeper process is gone. */
export async function waitGone(instance: Instance, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (isAlive(instance.keeperPid) && isKeeper(instance.keeperPid)) {
    if (Date.now() > deadline) return false;
    await sleep(50);
  }
  return true;
}
