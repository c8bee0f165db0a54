// The single loader and typed wrapper for the native addon (native/).
// Lookup order: $REUSE_DEPLOY_ADDON, prebuilds/<platform>-<arch>/, build/Release/.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DeployError } from './errors';

export interface AcceptQueue {
  listening: boolean;
  /** Connections completed by the kernel and waiting for accept(). */
  queued: number;
  backlog: number;
}

export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
}

interface Addon {
  bindReusePort(address: string, port: number): number;
  listen(fd: number, backlog: number): void;
  attachSteering(fd: number, index: number): void;
  detachSteering(fd: number): void;
  acceptQueue(fd: number): AcceptQueue;
  closeFd(fd: number): void;
  flock(fd: number, exclusive: boolean, wait: boolean): boolean;
  peerCredentials(fd: number): PeerCredentials;
}

/** An OS error from the addon, with Node's usual `code` (EADDRINUSE, ...). */
export interface SystemError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

export const packageRoot = path.resolve(__dirname, '..', '..');

function candidates(): string[] {
  const list: string[] = [];
  if (process.env.REUSE_DEPLOY_ADDON) list.push(path.resolve(process.env.REUSE_DEPLOY_ADDON));
  const prebuilds = path.join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`);
  try {
    for (const f of fs.readdirSync(prebuilds)) if (f.endsWith('.node')) list.push(path.join(prebuilds, f));
  } catch {
    // no prebuilds for this platform
  }
  list.push(path.join(packageRoot, 'build', 'Release', 'reuse_deploy.node'));
  return list;
}

let cached: Addon | undefined;

function load(): Addon {
  if (cached) return cached;
  const tried: string[] = [];
  for (const file of candidates()) {
    if (!fs.existsSync(file)) {
      tried.push(`${file} (missing)`);
      continue;
    }
    try {
      cached = require(file) as Addon;
      return cached;
    } catch (err) {
      tried.push(`${file} (${(err as Error).message.split('\n')[0]})`);
    }
  }
  throw new DeployError(
    'RD_ERR_ADDON',
    `The native addon could not be loaded. Tried:\n  ${tried.join('\n  ')}\n` +
      'Rebuild it with `npm rebuild reuse-deploy` (needs python3, make and a C++ compiler), ' +
      'or set REUSE_DEPLOY_ADDON to a built reuse_deploy.node.',
  );
}

const errnoNames = new Map<number, string>(Object.entries(os.constants.errno).map(([name, n]) => [n, name]));

function systemError(err: unknown): unknown {
  const e = err as Partial<SystemError>;
  if (typeof e.errno === 'number') e.code = errnoNames.get(e.errno) ?? `ERRNO_${e.errno}`;
  return err;
}

function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw systemError(err);
  }
}

/** Throws RD_ERR_ADDON with a list of what was tried, if the addon is unusable. */
export function ensureAddon(): void {
  load();
}

export const bindReusePort = (address: string, port: number): number => call(() => load().bindReusePort(address, port));
export const listenFd = (fd: number, backlog: number): void => call(() => load().listen(fd, backlog));
export const attachSteering = (fd: number, index: number): void => call(() => load().attachSteering(fd, index));
export const detachSteering = (fd: number): void => call(() => load().detachSteering(fd));
export const acceptQueue = (fd: number): AcceptQueue => call(() => load().acceptQueue(fd));
export const closeFd = (fd: number): void => call(() => load().closeFd(fd));
export const flock = (fd: number, exclusive: boolean, wait: boolean): boolean =>
  call(() => load().flock(fd, exclusive, wait));
export const peerCredentials = (fd: number): PeerCredentials => call(() => load().peerCredentials(fd));
