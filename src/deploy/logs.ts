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

export async function printLogs(file: string, options: LogsOptions, write: (text: string) => void): Promise<void> {
  const tail = logTail(file, 0, options.lines);
  if (tail) write(`${tail}\n`);
  if (!options.follow) return;
  let offset = fs.statSync(file).size;
  for (;;) {
    await sleep(250);
    let size: number;
    try {
      size = fs.statSync(file).size;
    } catch {
      continue;
    }
    if (size < offset) offset = 0; // rotated (copy-and-truncate)
    if (size === offset) continue;
    const fd = fs.openSync(file, 'r');
    const buf = Buffer.alloc(size - offset);
    fs.readSync(fd, buf, 0, buf.length, offset);
    fs.closeSync(fd);
    offset = size;
    write(buf.toString('utf8'));
  }
}
