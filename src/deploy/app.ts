// Naming an app from its entry, and running a command on it under its lock
// with its state repaired first.
import fs from 'node:fs';
import path from 'node:path';
import { DeployError, usageError } from '../errors';
import { acquireLock } from './lock';
import { appPaths, ensureAppDirs, type AppPaths } from './paths';
import type { Progress } from './progress';
import { repairState, type Repair } from './repair';
import { readState, type AppState } from './state';

export interface ResolvedEntry {
  entry: string;
  root: string;
  packageName: string | null;
}

/** The entry file, and the app root: the directory of the nearest package.json above it. */
export function resolveEntry(entryArg: string, rootArg?: string): ResolvedEntry {
  const entry = path.resolve(entryArg);
  let st: fs.Stats;
  try {
    st = fs.statSync(entry);
  } catch {
    throw new DeployError('RD_ERR_ENTRY_NOT_FOUND', `The entry ${entryArg} does not exist (looked at ${entry}). Pass the path of the server's main file, e.g. ./dist/server.js.`);
  }
  if (!st.isFile()) {
    throw new DeployError('RD_ERR_ENTRY_NOT_FOUND', `The entry ${entryArg} is a ${st.isDirectory() ? 'directory' : 'special file'}, not a file. Pass the server's main file, e.g. ${path.join(entryArg, 'server.js')}.`);
  }
  let dir = path.dirname(entry);
  for (;;) {
    const pkg = path.join(dir, 'package.json');
    if (fs.existsSync(pkg)) {
      let name: string | null = null;
      try {
        name = (JSON.parse(fs.readFileSync(pkg, 'utf8')) as { name?: string }).name ?? null;
      } catch {
        // unreadable package.json: no name from it
      }
      return { entry, root: rootArg ? checkedRoot(rootArg, entry) : dir, packageName: name };
    }
    const parent = path.dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  return { entry, root: rootArg ? checkedRoot(rootArg, entry) : path.dirname(entry), packageName: null };
}

/** --root: an existing directory that holds the entry (the release is a snapshot of it, and runs the entry's copy in it). */
function checkedRoot(rootArg: string, entry: string): string {
  const root = path.resolve(rootArg);
  let st: fs.Stats | null = null;
  try {
    st = fs.statSync(root);
  } catch {
    // reported below
  }
  if (!st?.isDirectory()) {
    throw usageError(`--root ${rootArg} is ${st ? 'not a directory' : 'not there'} (looked at ${root}). Pass the app's directory, the one that holds the entry and its package.json, or leave --root out.`);
  }
  if (path.dirname(root) === root) throw usageError(`--root ${rootArg} is the filesystem's root; a release would copy all of it. Pass the app's directory.`);
  const inside = path.relative(root, entry);
  if (inside.startsWith('..') || path.isAbsolute(inside)) {
    throw usageError(`--root ${rootArg} does not hold the entry ${entry}: a release copies the root and runs the entry's copy in it. Pass the directory that holds both, or leave --root out.`);
  }
  return root;
}

const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$/;

/** --name as given, if it is a valid app name (it becomes a directory of the state dir: no '/', no '..'). */
export function checkedAppName(explicit: string): string {
  if (!NAME_RE.test(explicit)) {
    throw new DeployError('RD_ERR_USAGE', `--name ${JSON.stringify(explicit)} is not a valid app name: use letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit).`);
  }
  return explicit;
}

/** A file-system-safe app name: --name, else the package name, else the app directory's name. */
export function appName(explicit: string | undefined, resolved: ResolvedEntry): string {
  if (explicit !== undefined) return checkedAppName(explicit);
  const raw = resolved.packageName ?? path.basename(resolved.root);
  const name = raw.replace(/^@/, '').replace(/[^a-zA-Z0-9._-]+/g, '-').replace(/^[._-]+/, '').slice(0, 64);
  return name || 'app';
}

export interface AppSession {
  paths: AppPaths;
  state: AppState | null;
  repair: Repair;
}

/** Runs `fn` with the app's lock held and its state repaired. */
export async function withApp<T>(
  stateDir: string,
  name: string,
  options: { wait: boolean; drainTimeoutMs: number; progress: Progress },
  fn: (session: AppSession) => Promise<T>,
): Promise<T> {
  const paths = appPaths(stateDir, name);
  ensureAppDirs(paths);
  const lock = await acquireLock(paths.lock, name, options.wait, () => options.progress.info(`waiting for another reuse-deploy command on "${name}" to finish`));
  try {
    const state = readState(paths.state);
    const repair = state ? await repairState(paths.state, state, options.drainTimeoutMs) : { notes: [], statuses: new Map() };
    for (const note of repair.notes) options.progress.warn(`repaired: ${note}`);
    return await fn({ paths, state, repair });
  } finally {
    lock.release();
  }
}
