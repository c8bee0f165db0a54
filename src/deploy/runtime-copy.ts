// The runtime a release's app processes load (dist/src/runtime/preload.js
// and the native addon), copied into the app's state directory.
//
// A keeper starts its app processes again after a crash, for as long as the
// release runs, with `--require <preload>`. Loaded from where reuse-deploy is
// installed, that file is often in the CI job's workspace or the app's own
// node_modules: `npm ci` deletes node_modules before it installs again, a
// workspace clean deletes it for good, and an upgrade puts another
// version's runtime under the same path, beside a keeper of the old one.
// Each copy is named by the hash of its content, so every keeper keeps the
// runtime of its own version. The copy has the package's layout
// (binding.gyp, dist/src/runtime/, build/Release/), so the preload finds its
// addon there as it does in the package (src/package-files.ts, src/native.ts).
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { addonPath } from '../native';
import { packageRoot, PRELOAD } from '../package-files';
import type { AppPaths } from './paths';

/** Copies not in use kept besides the current one: the runtimes of the versions deployed last. */
const KEEP_OLDER = 4;

export interface Runtime {
  preload: string;
  addon: string;
  /** Why the app processes load the installed files instead of a copy, if they do. */
  notCopied: string | null;
}

/** The runtime of this version for `paths`' app: its copy, made if missing and marked as just used. */
export function appRuntime(paths: AppPaths): Runtime {
  const runtimes = path.join(paths.store, 'runtime');
  fs.mkdirSync(runtimes, { recursive: true, mode: 0o700 });
  // dlopen(3) of a file on a noexec mount fails: the addon must stay where it is.
  if (isNoexec(runtimes)) {
    return { preload: PRELOAD, addon: addonPath(), notCopied: `${runtimes} is on a noexec mount` };
  }
  const files: [string, string][] = [
    [path.join(packageRoot, 'binding.gyp'), 'binding.gyp'],
    [PRELOAD, path.join('dist', 'src', 'runtime', 'preload.js')],
    [addonPath(), path.join('build', 'Release', 'reuse_deploy.node')],
  ];
  const hash = createHash('sha256');
  const contents = files.map(([from, to]) => {
    const data = fs.readFileSync(from);
    hash.update(`${to}\0${data.length}\0`).update(data);
    return { to, data };
  });
  const dir = path.join(runtimes, hash.digest('hex').slice(0, 16));
  const runtime = { preload: path.join(dir, files[1]![1]), addon: path.join(dir, files[2]![1]), notCopied: null };
  if (fs.existsSync(runtime.preload)) {
    const now = new Date();
    fs.utimesSync(dir, now, now);
    return runtime;
  }
  const tmp = `${dir}.${process.pid}.tmp`;
  fs.rmSync(tmp, { recursive: true, force: true });
  for (const { to, data } of contents) {
    fs.mkdirSync(path.dirname(path.join(tmp, to)), { recursive: true, mode: 0o700 });
    fs.writeFileSync(path.join(tmp, to), data, { mode: to.endsWith('.node') ? 0o500 : 0o400 });
  }
  try {
    fs.renameSync(tmp, dir);
  } catch (err) {
    // Another command made the same copy meanwhile (rename(2): ENOTEMPTY or EEXIST onto a directory that has entries).
    fs.rmSync(tmp, { recursive: true, force: true });
    if (!fs.existsSync(runtime.preload)) throw err;
  }
  pruneRuntimes(runtimes, dir);
  return runtime;
}

/** Is `dir` on a mount with the noexec option (/proc/self/mountinfo, the longest mount point above it)? */
function isNoexec(dir: string): boolean {
  let info: string;
  let real: string;
  try {
    info = fs.readFileSync('/proc/self/mountinfo', 'utf8');
    real = fs.realpathSync(dir);
  } catch {
    return false;
  }
  let best = '';
  let noexec = false;
  for (const line of info.split('\n')) {
    // id parent major:minor root mount-point options ... (proc(5)); spaces in paths are \040.
    const fields = line.split(' ');
    if (fields.length < 6) continue;
    const mountPoint = fields[4]!.replace(/\\040/g, ' ');
    const inside = mountPoint === '/' || real === mountPoint || real.startsWith(`${mountPoint}/`);
    if (inside && mountPoint.length >= best.length) {
      best = mountPoint;
      noexec = fields[5]!.split(',').includes('noexec');
    }
  }
  return noexec;
}

/** The copies whose addon a running process has mapped (/proc/<pid>/maps, this user's processes). */
function copiesInUse(runtimes: string): Set<string> {
  const used = new Set<string>();
  const prefix = `${runtimes}${path.sep}`;
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let maps: string;
    try {
      maps = fs.readFileSync(`/proc/${entry}/maps`, 'utf8');
    } catch {
      continue; // gone, or another user's
    }
    for (let at = maps.indexOf(prefix); at >= 0; at = maps.indexOf(prefix, at + 1)) {
      used.add(maps.slice(at + prefix.length).split(path.sep)[0]!);
    }
  }
  return used;
}

/**
 * Removes the copies that no running process uses, but the most recently
 * used ones (by the directory's mtime); never `current`. Also what a command
 * killed while copying left. Runs when a new copy was made: once per version.
 */
function pruneRuntimes(runtimes: string, current: string): void {
  const entries = fs.readdirSync(runtimes).map((name) => {
    const dir = path.join(runtimes, name);
    return { name, dir, partial: name.endsWith('.tmp'), used: fs.statSync(dir).mtimeMs };
  });
  const stale = entries.filter((e) => e.partial && e.used < Date.now() - 10 * 60_000);
  const inUse = copiesInUse(fs.realpathSync(runtimes));
  const older = entries.filter((e) => !e.partial && e.dir !== current).sort((a, b) => b.used - a.used);
  const doomed = older.slice(KEEP_OLDER).filter((e) => !inUse.has(e.name));
  for (const { dir } of [...stale, ...doomed]) fs.rmSync(dir, { recursive: true, force: true });
}
