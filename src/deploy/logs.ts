// `reuse-deploy logs`: the last lines of a release's log, optionally followed.
import fs from 'node:fs';
import path from 'node:path';
import { StringDecoder } from 'node:string_decoder';
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

/**
 * Where following has got to in each log file of the app. A file that
 * already exists when following starts is taken from its end then: a
 * rollback to an older release shows what it logged since, not its whole
 * past (every run of a release appends to its one file). A file that
 * appears later, a new release's, is read from its first line: its boot.
 */
class Followed {
  private readonly at = new Map<string, number>();
  private readonly decoders = new Map<string, StringDecoder>();
  private endsLine = true;

  constructor(
    dir: string,
    private readonly write: (text: string) => void,
  ) {
    let names: string[] = [];
    try {
      names = fs.readdirSync(dir);
    } catch {
      // none yet
    }
    for (const name of names) {
      try {
        this.at.set(path.join(dir, name), fs.statSync(path.join(dir, name)).size);
      } catch {
        // gone meanwhile
      }
    }
  }

  /** Writes what `file` has gained since it was last read. */
  copy(file: string): void {
    let size: number;
    try {
      size = fs.statSync(file).size;
    } catch {
      return;
    }
    let offset = this.at.get(file) ?? 0;
    if (size < offset) offset = 0; // rotated (copy-and-truncate)
    if (size === offset) return;
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch {
      return; // removed since the stat: nothing more to read there
    }
    try {
      const buf = Buffer.alloc(size - offset);
      const n = fs.readSync(fd, buf, 0, buf.length, offset);
      this.at.set(file, offset + n);
      // A read may end inside a UTF-8 character: the decoder keeps its first bytes for the next.
      let decoder = this.decoders.get(file);
      if (!decoder) this.decoders.set(file, (decoder = new StringDecoder('utf8')));
      const text = decoder.write(buf.subarray(0, n));
      if (text) {
        this.write(text);
        this.endsLine = text.endsWith('\n');
      }
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Ends a line cut short, so that another file's first line does not run on from it. */
  endLine(): void {
    if (!this.endsLine) this.write('\n');
    this.endsLine = true;
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
  const followed = new Followed(path.dirname(file), write);
  for (let tick = 1; ; tick++) {
    await sleep(250);
    followed.copy(file);
    if (!follow?.live || tick % 4 !== 0) continue;
    const next = follow.live();
    if (!next || next === file) continue;
    followed.endLine();
    follow.note(`--- another release is live: following ${next} (the one before goes on logging its drain in ${file}) ---`);
    file = next;
    followed.copy(file);
  }
}
