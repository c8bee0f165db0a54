// Release snapshots: a copy of the app that later builds cannot touch.
//
// Every regular file is stored once, read-only, in a content-addressed
// store (<app>/store/<hash>); a release is a tree of directories whose files
// are hard links into the store. Unchanged files therefore cost a directory
// entry per release, and a file whose size, mtime and inode are what the
// last snapshot saw is not even read again (the index in store/index.json).
// A store file whose link count is 1 belongs to no release and is removed by
// pruning.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { loadIgnore, type Ignore } from './ignore';

interface IndexEntry {
  size: number;
  mtimeMs: number;
  ino: number;
  key: string;
}

interface StoreIndex {
  root: string;
  entries: Record<string, IndexEntry>;
}

export interface SnapshotStats {
  files: number;
  /** Apparent size of the release. */
  bytes: number;
  /** Bytes newly added to the store by this snapshot. */
  newBytes: number;
  /** Files whose content was read and hashed (the rest came from the index). */
  hashed: number;
  ms: number;
  /** A node_modules outside the app root that the release links to, if any. */
  externalModules: string | null;
}

const HASH_CHUNK = 1 << 20;

function hashFile(file: string): string {
  const hash = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(HASH_CHUNK);
    for (;;) {
      const n = fs.readSync(fd, buf, 0, HASH_CHUNK, null);
      if (n === 0) break;
      hash.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return hash.digest('hex');
}

function readIndex(file: string, root: string): StoreIndex {
  try {
    const index = JSON.parse(fs.readFileSync(file, 'utf8')) as StoreIndex;
    if (index.root === root) return index;
  } catch {
    // first snapshot, or unreadable: start afresh
  }
  return { root, entries: {} };
}

/** The store key: content hash, plus whether the file is executable (links share one mode). */
function storePath(storeDir: string, key: string): string {
  return path.join(storeDir, key.slice(0, 2), key);
}

function addToStore(src: string, dest: string, executable: boolean): void {
  fs.mkdirSync(path.dirname(dest), { recursive: true });
  const tmp = `${dest}.${process.pid}.tmp`;
  // A reflink where the file system offers one, else a plain copy.
  fs.copyFileSync(src, tmp, fs.constants.COPYFILE_FICLONE);
  fs.chmodSync(tmp, executable ? 0o555 : 0o444);
  fs.renameSync(tmp, dest);
}

/** Nearest node_modules above `root`, for apps whose dependencies are hoisted (workspaces). */
function hoistedModules(root: string): string | null {
  if (fs.existsSync(path.join(root, 'node_modules'))) return null;
  for (let dir = path.dirname(root); ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'node_modules');
    if (fs.existsSync(candidate)) return candidate;
    if (path.dirname(dir) === dir) return null;
  }
}

/** Copies `root` into `releaseDir` through the store. */
export function snapshot(root: string, releaseDir: string, storeDir: string): SnapshotStats {
  const started = Date.now();
  const indexFile = path.join(storeDir, 'index.json');
  fs.mkdirSync(storeDir, { recursive: true, mode: 0o700 });
  const old = readIndex(indexFile, root);
  const next: StoreIndex = { root, entries: {} };
  const ignore: Ignore = loadIgnore(root);
  const stats: SnapshotStats = { files: 0, bytes: 0, newBytes: 0, hashed: 0, ms: 0, externalModules: null };

  const walk = (rel: string): void => {
    const srcDir = path.join(root, rel);
    fs.mkdirSync(path.join(releaseDir, rel), { recursive: true, mode: 0o755 });
    for (const entry of fs.readdirSync(srcDir, { withFileTypes: true })) {
      const relPath = rel ? `${rel}/${entry.name}` : entry.name;
      const src = path.join(srcDir, entry.name);
      const dest = path.join(releaseDir, relPath);
      if (entry.isDirectory()) {
        if (!ignore(relPath, true)) walk(relPath);
      } else if (entry.isSymbolicLink()) {
        if (!ignore(relPath, false)) fs.symlinkSync(fs.readlinkSync(src), dest);
      } else if (entry.isFile() && !ignore(relPath, false)) {
        const st = fs.statSync(src);
        const executable = (st.mode & 0o111) !== 0;
        const seen = old.entries[relPath];
        let key: string;
        if (seen && seen.size === st.size && seen.mtimeMs === st.mtimeMs && seen.ino === st.ino && fs.existsSync(storePath(storeDir, seen.key))) {
          key = seen.key;
        } else {
          key = `${hashFile(src)}${executable ? 'x' : ''}`;
          stats.hashed++;
        }
        const stored = storePath(storeDir, key);
        if (!fs.existsSync(stored)) {
          addToStore(src, stored, executable);
          stats.newBytes += st.size;
        }
        fs.linkSync(stored, dest);
        next.entries[relPath] = { size: st.size, mtimeMs: st.mtimeMs, ino: st.ino, key };
        stats.files++;
        stats.bytes += st.size;
      }
    }
  };

  fs.mkdirSync(releaseDir, { recursive: true, mode: 0o755 });
  walk('');
  const hoisted = hoistedModules(root);
  if (hoisted) {
    fs.symlinkSync(hoisted, path.join(releaseDir, 'node_modules'));
    stats.externalModules = hoisted;
  }
  const tmp = `${indexFile}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(next));
  fs.renameSync(tmp, indexFile);
  stats.ms = Date.now() - started;
  return stats;
}

/** Removes store files that no release links to any more. Returns the bytes freed. */
export function collectGarbage(storeDir: string): number {
  let freed = 0;
  let shards: string[];
  try {
    shards = fs.readdirSync(storeDir);
  } catch {
    return 0;
  }
  for (const shard of shards) {
    const dir = path.join(storeDir, shard);
    if (shard.length !== 2 || !fs.statSync(dir).isDirectory()) continue;
    for (const name of fs.readdirSync(dir)) {
      const file = path.join(dir, name);
      const st = fs.statSync(file);
      if (st.nlink === 1) {
        fs.unlinkSync(file);
        freed += st.size;
      }
    }
  }
  return freed;
}

/** Deletes a release tree (its files are read-only links; the directories are ours). */
export function removeReleaseTree(releaseDir: string): void {
  fs.rmSync(releaseDir, { recursive: true, force: true });
}
