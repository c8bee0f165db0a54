// state.json of one app: what runs, what was released. Written atomically
// (temp file, fsync, rename, fsync of the directory), so that a crash at any
// line leaves either the old or the new file, never half of one.
import fs from 'node:fs';
import path from 'node:path';
import { DeployError } from '../errors';

/** How a release is run; recorded so that a rollback runs it the same way. */
export interface RunSettings {
  args: string[];
  nodeArgs: string[];
  env: Record<string, string>;
  health: string | null;
  instances: number;
}

export interface Release extends RunSettings {
  id: string;
  createdAt: number;
  /** Entry file inside the snapshot, absolute. */
  entry: string;
  /** The snapshot: working directory of the app processes. */
  root: string;
  /** Where the snapshot was taken from. */
  sourceRoot: string;
  sourceEntry: string;
  files: number;
  bytes: number;
  /** A node_modules outside the app root that the snapshot links to instead of copying. */
  externalModules: string | null;
}

export type InstanceRole = 'starting' | 'live' | 'draining' | 'parked';

export interface Instance {
  id: string;
  release: string;
  keeperPid: number;
  controlSocket: string;
  probeSocketPrefix: string;
  instances: number;
  startedAt: number;
  role: InstanceRole;
}

export interface AppState {
  version: 1;
  name: string;
  host: string;
  port: number;
  nextRelease: number;
  releases: Release[];
  instances: Instance[];
  /** Release ids in the order they went live, newest last. */
  liveHistory: string[];
}

export function emptyState(name: string, host: string, port: number): AppState {
  return { version: 1, name, host, port, nextRelease: 1, releases: [], instances: [], liveHistory: [] };
}

export function readState(file: string): AppState | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new DeployError('RD_ERR_STATE_DIR', `Cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const state = JSON.parse(text) as AppState;
    if (state?.version !== 1) throw new Error(`unknown state version ${String(state?.version)}`);
    const broken = shapeError(state);
    if (broken) throw new Error(broken);
    return state;
  } catch (err) {
    throw new DeployError(
      'RD_ERR_STATE_DIR',
      `${file} is not a reuse-deploy state file (${(err as Error).message}). Move it away to start this app's state afresh.`,
      { cause: err },
    );
  }
}

/** What is missing or of the wrong type in a parsed state file (a hand edit, a truncated copy), else null. */
function shapeError(state: AppState): string | null {
  const is = (v: unknown, type: string): boolean => (type === 'array' ? Array.isArray(v) : typeof v === type);
  const fields = (what: string, o: unknown, spec: Record<string, string>): string | null => {
    if (!o || typeof o !== 'object') return `${what || 'it'} is not an object`;
    for (const [key, type] of Object.entries(spec)) if (!is((o as Record<string, unknown>)[key], type)) return `"${what}${what ? '.' : ''}${key}" is missing or not a${type === 'array' ? 'n' : ''} ${type}`;
    return null;
  };
  return (
    fields('', state, { name: 'string', host: 'string', port: 'number', nextRelease: 'number', releases: 'array', instances: 'array', liveHistory: 'array' }) ??
    state.releases.map((r, i) => fields(`releases[${i}]`, r, { id: 'string', entry: 'string', root: 'string' })).find(Boolean) ??
    state.instances.map((r, i) => fields(`instances[${i}]`, r, { id: 'string', release: 'string', keeperPid: 'number', controlSocket: 'string', role: 'string' })).find(Boolean) ??
    (state.liveHistory.every((id) => typeof id === 'string') ? null : 'liveHistory holds something other than release ids')
  );
}

export function writeState(file: string, state: AppState): void {
  const tmp = `${file}.${process.pid}.tmp`;
  const fd = fs.openSync(tmp, 'w', 0o600);
  try {
    fs.writeSync(fd, `${JSON.stringify(state, null, 2)}\n`);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  const dirFd = fs.openSync(path.dirname(file), 'r');
  try {
    fs.fsyncSync(dirFd);
  } finally {
    fs.closeSync(dirFd);
  }
}

export function liveInstance(state: AppState): Instance | undefined {
  return state.instances.find((i) => i.role === 'live');
}

export function findRelease(state: AppState, id: string): Release | undefined {
  return state.releases.find((r) => r.id === id);
}

/** The release that was live before the current one (the target of --previous). */
export function previousRelease(state: AppState): string | null {
  const current = state.liveHistory[state.liveHistory.length - 1];
  for (let i = state.liveHistory.length - 2; i >= 0; i--) {
    if (state.liveHistory[i] !== current) return state.liveHistory[i]!;
  }
  return null;
}
