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

/** Copies kept besides the one in use: the runtimes of releases deployed by earlier versions, still draining or parked. */
const KEEP_OLDER = 4;

/** The copied preload of this version, for `paths`' app: made if missing, and marked as just used. */
export function runtimePreload(paths: AppPaths): string {
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
  const runtimes = path.join(paths.store, 'runtime');
  const dir = path.join(runtimes, hash.digest('hex').slice(0, 16));
  const preload = path.join(dir, 'dist', 'src', 'runtime', 'preload.js');
  if (fs.existsSync(preload)) {
    const now = new Date();
    fs.utimesSync(dir, now, now);
    return preload;
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
    if (!fs.existsSync(preload)) throw err;
  }
  pruneRuntimes(runtimes, dir);
  return preload;
}

/**
 * Removes all but the most recently used copies (by the directory's mtime),
 * never `current`, and what a command killed while copying left.
 */
function pruneRuntimes(runtimes: string, current: string): void {
  const entries = fs.readdirSync(runtimes).map((name) => {
    const dir = path.join(runtimes, name);
    return { dir, partial: name.endsWith('.tmp'), used: fs.statSync(dir).mtimeMs };
  });
  const stale = entries.filter((e) => e.partial && e.used < Date.now() - 10 * 60_000);
  const older = entries.filter((e) => !e.partial && e.dir !== current).sort((a, b) => b.used - a.used);
  for (const { dir } of [...stale, ...older.slice(KEEP_OLDER)]) fs.rmSync(dir, { recursive: true, force: true });
}
