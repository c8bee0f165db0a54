// The single loader and typed wrapper for the native addon (native/).
//
// Lookup order:
//   1. $REUSE_DEPLOY_ADDON, when set: that file and nothing else (an explicit
//      choice is never silently replaced by another build).
//   2. node-gyp-build's lookup in the package root: a source build in
//      build/Release/ (there only when `npm install` found no prebuild that
//      loads here, or was asked to --build-from-source), else the prebuild in
//      prebuilds/<platform>-<arch>/ that matches this runtime (Node-API, so one
//      file serves every Node version).
//   3. If that file does not load, the other of the two.
// Nothing found or loadable: RD_ERR_ADDON, naming every file tried, what is
// missing, and how to fix it.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DeployError } from './errors';
import { packageRoot } from './package-files';

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
  attachSteeringBySource(fd: number, portLo: number, portHi: number, matchIndex: number, otherIndex: number): void;
  detachSteering(fd: number): void;
  acceptQueue(fd: number): AcceptQueue;
  closeFd(fd: number): void;
  unlisten(fd: number): void;
  dup(fd: number): number;
  dup2(fd: number, target: number): void;
  flock(fd: number, exclusive: boolean, wait: boolean): boolean;
  peerCredentials(fd: number): PeerCredentials;
  sendFds(path: string, fds: number[]): number;
  recvFds(fd: number): ReceivedFds | null;
  tcpListeners(port: number): DiagListener[] | null;
  setSlice(tid: number, ns: number): number | null;
}

/** One message from recvFds: the descriptors it carried. */
export interface ReceivedFds {
  fds: number[];
  /** The sender closed its end (nothing more will come). */
  eof: boolean;
  /** The kernel dropped descriptors that did not fit (MSG_CTRUNC): more than 253 sent, or this process is out of descriptors. */
  truncated: boolean;
}

/** A listening TCP socket, from NETLINK_SOCK_DIAG. */
export interface DiagListener {
  family: 4 | 6;
  address: string;
  port: number;
  inode: number;
  uid: number;
  /** Connections waiting in its accept queue. */
  queued: number;
}

/** An OS error from the addon, with Node's usual `code` (EADDRINUSE, ...). */
export interface SystemError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

/** The parts of node-gyp-build (untyped, CommonJS) this loader uses. */
interface NodeGypBuild {
  /** The addon file node-gyp-build would load from `dir`; throws "No native build was found ..." if none. */
  path(dir: string): string;
}

const platformArch = `${process.platform}-${process.arch}`;
const sourceBuild = path.join(packageRoot, 'build', 'Release', 'reuse_deploy.node');
const prebuildDir = path.join(packageRoot, 'prebuilds', platformArch);

function listNodeFiles(dir: string): string[] {
  try {
    return fs
      .readdirSync(dir)
      .filter((f) => f.endsWith('.node'))
      .sort()
      .map((f) => path.join(dir, f));
  } catch {
    return [];
  }
}

function firstLine(err: unknown): string {
  return String((err as Error)?.message ?? err).split('\n')[0]!.trim();
}

/** Executables on PATH (no process is spawned). */
function onPath(names: string[]): boolean {
  const dirs = (process.env.PATH ?? '').split(path.delimiter).filter(Boolean);
  return names.some((name) =>
    path.isAbsolute(name)
      ? isExecutable(name)
      : dirs.some((dir) => isExecutable(path.join(dir, name))),
  );
}

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/** The build tools node-gyp needs that are not on PATH. */
function missingToolchain(): string[] {
  const cxx = process.env.CXX?.split(' ')[0];
  const tools: [string, string[]][] = [
    ['python3', [process.env.PYTHON ?? process.env.npm_config_python ?? 'python3', 'python3', 'python']],
    ['make', ['make']],
    ['g++', cxx ? [cxx] : ['g++', 'c++', 'clang++']],
  ];
  return tools.filter(([, names]) => !onPath(names)).map(([tool]) => tool);
}

interface Loaded {
  addon: Addon;
  file: string;
}

let cached: Loaded | undefined;

function tryLoad(file: string, tried: string[]): Addon | undefined {
  if (!fs.existsSync(file)) {
    tried.push(`${file}: missing`);
    return undefined;
  }
  try {
    // dlopen, not require: a file without the .node extension must not be run as JavaScript.
    const mod = { exports: {} as Addon };
    process.dlopen(mod, file);
    return mod.exports;
  } catch (err) {
    const message = firstLine(err);
    tried.push(`${file}: ${message.startsWith(`${file}: `) ? message.slice(file.length + 2) : message}`);
    return undefined;
  }
}

function addonError(summary: string, tried: string[], fix: string): DeployError {
  return new DeployError('RD_ERR_ADDON', `${summary}\nTried:\n  ${tried.join('\n  ')}\n${fix}`, {
    details: { tried },
  });
}

function rebuildCommand(): string {
  // Installed as a dependency: rebuild it by name. A checkout of this repository: run its install script.
  // Either way node-gyp-build builds from source when no prebuild loads here.
  return packageRoot.split(path.sep).includes('node_modules') ? 'npm rebuild reuse-deploy' : `cd ${packageRoot} && npm run install`;
}

function load(): Loaded {
  if (cached) return cached;
  const tried: string[] = [];

  const override = process.env.REUSE_DEPLOY_ADDON;
  if (override) {
    const file = path.resolve(override);
    const addon = tryLoad(file, tried);
    if (addon) return (cached = { addon, file });
    throw addonError(
      `The native addon could not be loaded from REUSE_DEPLOY_ADDON=${override}.`,
      tried,
      'Point REUSE_DEPLOY_ADDON at a built reuse_deploy.node, or unset it to use the addon that comes with the package.',
    );
  }

  const files: string[] = [];
  let gypBuild: NodeGypBuild | undefined;
  try {
    gypBuild = require('node-gyp-build') as NodeGypBuild;
  } catch (err) {
    tried.push(`node-gyp-build: ${firstLine(err)} (reinstall reuse-deploy's dependencies)`);
  }
  if (gypBuild) {
    try {
      files.push(gypBuild.path(packageRoot));
    } catch {
      // none of its candidates exists; the list below names them
    }
  }
  const prebuilds = listNodeFiles(prebuildDir);
  for (const file of [sourceBuild, ...prebuilds]) if (!files.includes(file)) files.push(file);

  for (const file of files) {
    if (file === sourceBuild && !fs.existsSync(file)) continue; // reported below, as "no source build"
    const addon = tryLoad(file, tried);
    if (addon) return (cached = { addon, file });
  }

  // What is missing, and what would fix it (in node-gyp-build's order: source build, then prebuild).
  const problems: string[] = [];
  if (!fs.existsSync(sourceBuild)) {
    tried.unshift(`${sourceBuild}: missing (no source build)`);
    problems.push('no source build');
  } else {
    problems.push('the source build does not load');
  }
  if (prebuilds.length === 0) {
    const others = listDirs(path.join(packageRoot, 'prebuilds'));
    tried.push(`${prebuildDir}${path.sep}: no prebuild for ${platformArch}${others.length ? ` (prebuilds exist for ${others.join(', ')})` : ''}`);
    problems.unshift(`no prebuild for ${platformArch}`);
  } else {
    problems.unshift(`the prebuild for ${platformArch} does not load here`);
  }
  const missing = missingToolchain();
  const rebuild = rebuildCommand();
  let fix: string;
  if (missing.length > 0) {
    problems.push(`no compiler (${missing.join(', ')} not on PATH)`);
    fix = `Install python3, make and g++, then run \`${rebuild}\`; or set REUSE_DEPLOY_ADDON to a built reuse_deploy.node.`;
  } else {
    fix = `Build it from source with \`${rebuild}\` (python3, make and g++ are on PATH); or set REUSE_DEPLOY_ADDON to a built reuse_deploy.node.`;
  }
  throw addonError(`The native addon could not be loaded: ${joinProblems(problems)}.`, tried, fix);
}

function listDirs(dir: string): string[] {
  try {
    return fs.readdirSync(dir).filter((f) => fs.statSync(path.join(dir, f)).isDirectory()).sort();
  } catch {
    return [];
  }
}

function joinProblems(list: string[]): string {
  return list.length <= 1 ? list.join('') : `${list.slice(0, -1).join(', ')} and ${list[list.length - 1]}`;
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

/** The addon file in use (loading it if needed); throws RD_ERR_ADDON like every other call. */
export function addonPath(): string {
  return load().file;
}

export const bindReusePort = (address: string, port: number): number => call(() => load().addon.bindReusePort(address, port));
export const listenFd = (fd: number, backlog: number): void => call(() => load().addon.listen(fd, backlog));
export const attachSteering = (fd: number, index: number): void => call(() => load().addon.attachSteering(fd, index));
/** Connections from a TCP source port in [portLo, portHi] to `matchIndex`, the others to `otherIndex` (keep it 0: a failed packet load returns 0). */
export const attachSteeringBySource = (fd: number, portLo: number, portHi: number, matchIndex: number, otherIndex: number): void =>
  call(() => load().addon.attachSteeringBySource(fd, portLo, portHi, matchIndex, otherIndex));
export const detachSteering = (fd: number): void => call(() => load().addon.detachSteering(fd));
export const acceptQueue = (fd: number): AcceptQueue => call(() => load().addon.acceptQueue(fd));
export const closeFd = (fd: number): void => call(() => load().addon.closeFd(fd));
export const unlisten = (fd: number): void => call(() => load().addon.unlisten(fd));
export const dupFd = (fd: number): number => call(() => load().addon.dup(fd));
export const dup2Fd = (fd: number, target: number): void => call(() => load().addon.dup2(fd, target));
export const flock = (fd: number, exclusive: boolean, wait: boolean): boolean =>
  call(() => load().addon.flock(fd, exclusive, wait));
export const peerCredentials = (fd: number): PeerCredentials => call(() => load().addon.peerCredentials(fd));
/** Sends descriptors over a new connection to the unix socket at `path` (SCM_RIGHTS), at most 253; returns that connection. */
export const sendFds = (path: string, fds: number[]): number => call(() => load().addon.sendFds(path, fds));
/** One message of descriptors from a unix socket, without waiting: null if none has arrived yet. */
export const recvFds = (fd: number): ReceivedFds | null => call(() => load().addon.recvFds(fd));
/** Listening sockets on `port` in this network namespace; null where netlink is refused. */
export const tcpListeners = (port: number): DiagListener[] | null => call(() => load().addon.tcpListeners(port));
/**
 * Asks for a scheduler time slice of `ns` for thread `tid` (EEVDF, kernel
 * 6.12+; native/reuse_deploy.cc). Returns the slice the kernel reports
 * afterwards: 0 where it has none, null for a thread under a policy other
 * than SCHED_OTHER or SCHED_BATCH (left alone).
 */
export const setSlice = (tid: number, ns: number): number | null => call(() => load().addon.setSlice(tid, ns));
