// Where an app's state lives, and the checks that make that place trustworthy.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DeployError } from '../errors';

/** $REUSE_DEPLOY_HOME, else $XDG_STATE_HOME/reuse-deploy, ~/.local/state/reuse-deploy, or /var/lib/reuse-deploy as root. */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.REUSE_DEPLOY_HOME) return path.resolve(env.REUSE_DEPLOY_HOME);
  if (env.XDG_STATE_HOME) return path.join(path.resolve(env.XDG_STATE_HOME), 'reuse-deploy');
  if (process.getuid?.() === 0) return '/var/lib/reuse-deploy';
  return path.join(os.homedir(), '.local', 'state', 'reuse-deploy');
}

export interface AppPaths {
  dir: string;
  state: string;
  lock: string;
  run: string;
  logs: string;
  releases: string;
  store: string;
}

export function appPaths(stateDir: string, name: string): AppPaths {
  const dir = path.join(stateDir, name);
  return {
    dir,
    state: path.join(dir, 'state.json'),
    lock: path.join(dir, 'lock'),
    run: path.join(dir, 'run'),
    logs: path.join(dir, 'logs'),
    releases: path.join(dir, 'releases'),
    store: path.join(dir, 'store'),
  };
}

/**
 * Creates `dir` with mode 0700 if needed, and refuses one that another user
 * owns or that others may write to: whoever can write there can replace the
 * control sockets or the releases that get executed.
 */
export function ensurePrivateDir(dir: string): void {
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new DeployError(
      'RD_ERR_STATE_DIR',
      `Cannot create the state directory ${dir}: ${(err as Error).message}. ` +
        'Pass --state-dir (or set REUSE_DEPLOY_HOME) to a directory this user owns.',
      { cause: err },
    );
  }
  const st = fs.statSync(dir);
  const uid = process.getuid?.() ?? st.uid;
  if (st.uid !== uid) {
    throw new DeployError(
      'RD_ERR_STATE_DIR',
      `The state directory ${dir} belongs to uid ${st.uid}, not to this user (uid ${uid}). ` +
        'Run reuse-deploy as that user, or pass --state-dir to a directory of your own.',
    );
  }
  if ((st.mode & 0o022) !== 0) {
    throw new DeployError(
      'RD_ERR_STATE_DIR',
      `The state directory ${dir} is writable by group or others (mode ${(st.mode & 0o777).toString(8)}). ` +
        `Fix it with: chmod 700 ${dir}`,
    );
  }
  try {
    fs.accessSync(dir, fs.constants.W_OK);
  } catch (err) {
    throw new DeployError('RD_ERR_STATE_DIR', `The state directory ${dir} is not writable: ${(err as Error).message}.`, { cause: err });
  }
}

export function ensureAppDirs(p: AppPaths): void {
  for (const dir of [path.dirname(p.dir), p.dir, p.run, p.logs, p.releases, p.store]) ensurePrivateDir(dir);
}

// sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
const SUN_PATH_MAX = 107;

export function checkSocketPath(socketPath: string): void {
  if (Buffer.byteLength(socketPath) > SUN_PATH_MAX) {
    throw new DeployError(
      'RD_ERR_SOCKET_PATH',
      `The control socket path ${socketPath} is ${Buffer.byteLength(socketPath)} bytes; unix sockets allow ${SUN_PATH_MAX}. ` +
        'Use a shorter --state-dir (or REUSE_DEPLOY_HOME).',
    );
  }
}
