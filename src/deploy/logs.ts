// `reuse-deploy logs`: the last lines of a release's log, optionally followed.
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { DeployError } from '../errors';
import { logFileOf, logTail } from './instances';
import { appPaths } from './paths';
import { liveInstance, readState } from './state';

export interface LogsOptions {
  release?: string;
  lines: number;
  follow: boolean;
}

/** The log of `release`, else of the live release, else of the newest one. */
export function logFileFor(stateDir: string, name: string, release?: string): string {
  const paths = appPaths(stateDir, name);
  const state = readState(paths.state);
  if (!state) throw new DeployError('RD_ERR_NO_STATE', `No app named "${name}" has been deployed with state dir ${stateDir}.`);
  const id = release ?? liveInstance(state)?.release ?? state.liveHistory[state.liveHistory.length - 1] ?? state.releases[state.releases.length - 1]?.id;
  const file = id ? logFileOf(paths, id) : '';
  if (!id || !fs.existsSync(file)) {
    throw new DeployError('RD_ERR_RELEASE_NOT_FOUND', `There is no log for ${id ? `release ${id}` : 'any release'} of "${name}". See \`reuse-deploy releases\`.`);
  }
  return file;
}

/**
 * The log of the release that is live now, while `logs -f` follows the app
 * (no --release): null while none is, or if it cannot be told.
 */
export function liveLogFile(stateDir: string, name: string): string | null {
  try {
    const paths = appPaths(stateDir, name);
    const state = readState(paths.state);
    const id = state ? liveInstance(state)?.release : undefined;
    const file = id ? logFileOf(paths, id) : null;
    return file && fs.existsSync(file) ? file : null;
  } catch {
    return null;
  }
}

/** Writes what `file` has past `offset`; returns the new offset. */
function copyNew(file: string, offset: number, write: (text: string) => void): number {
  let size: number;
  try {
    size = fs.statSync(file).size;
  } catch {
    return offset;
  }
  if (size < offset) offset = 0; // rotated (copy-and-truncate)
  if (size === offset) return offset;
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(size - offset);
    const n = fs.readSync(fd, buf, 0, buf.length, offset);
    write(buf.subarray(0, n).toString('utf8'));
    return offset + n;
  } finally {
    fs.closeSync(fd);
  }
}

export interface Follow {
  /** The live release's log (liveLogFile); a deploy while following switches to the new release's. */
  live?: () => string | null;
  /** Where to say so (stderr: stdout has the log lines alone). */
  note: (text: string) => void;
}

export async function printLogs(file: string, options: LogsOptions, write: (text: string) => void, follow?: Follow): Promise<void> {
  const tail = logTail(file, 0, options.lines);
  if (tail) write(`${tail}\n`);
  if (!options.follow) return;
  let offset = fs.statSync(file).size;
  for (let tick = 1; ; tick++) {
    await sleep(250);
    offset = copyNew(file, offset, write);
    if (!follow?.live || tick % 4 !== 0) continue;
    const next = follow.live();
    if (!next || next === file) continue;
    // The old release's last lines (its drain goes on in that file), then the new one's from its start: its boot.
    copyNew(file, offset, write);
    follow.note(`--- a new release is live: following ${next} ---`);
    file = next;
    offset = copyNew(file, 0, write);
  }
}
