// Release snapshots: a copy of the app that later builds cannot touch.
//
// Every regular file is stored once, read-only, in a content-addressed
// store (<app>/store/<hash>); a release is a tree of directories whose files
// are hard links into the store. Unchanged files therefore cost a directory
// entry per release, and a file whose size, mtime and inode are what the
// last snapshot saw is not even read again (the index in store/index.json).
// node_modules directories are stored once more as whole trees (see
// snapshot()), so that ten releases with the same dependencies share one
// tree of directories, not ten. A tree no kept release links to, and then a
// store file whose link count is 1, belong to no release and are removed by
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

interface TreeEntry {
  rel: string;
  kind: 'dir' | 'file' | 'link';
  /** Store key (file) or link target (link). */
  ref: string;
  src: string;
  size: number;
}

export interface SnapshotOptions {
  /** Directories to leave out wherever they are (the state dir, when it lies inside the app). */
  exclude?: string[];
}

const byName = (a: fs.Dirent, b: fs.Dirent): number => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

/**
 * Copies `root` into `releaseDir` through the store. A node_modules
 * directory becomes one symlink to a shared, content-addressed tree
 * (<store>/trees/<hash>/node_modules), so an unchanged dependency tree costs
 * a release neither files nor directories. The tree sits in a directory
 * named node_modules, so that Node's module resolution from a package's real
 * path still finds its siblings.
 */
export function snapshot(root: string, releaseDir: string, storeDir: string, options: SnapshotOptions = {}): SnapshotStats {
  const started = Date.now();
  const indexFile = path.join(storeDir, 'index.json');
  fs.mkdirSync(path.join(storeDir, 'trees'), { recursive: true, mode: 0o700 });
  const old = readIndex(indexFile, root);
  const next: StoreIndex = { root, entries: {} };
  const ignore: Ignore = loadIgnore(root);
  const excluded = new Set((options.exclude ?? []).map(realpathOr));
  const stats: SnapshotStats = { files: 0, bytes: 0, newBytes: 0, hashed: 0, ms: 0, externalModules: null };

  const skipDir = (relPath: string, src: string): boolean => ignore(relPath, true) || (excluded.size > 0 && excluded.has(realpathOr(src)));

  /** A file's store key: from the index when size, mtime and inode are unchanged, else by hashing it. */
  const fileKey = (relPath: string, src: string): { key: string; size: number } => {
    const st = fs.statSync(src);
    const seen = old.entries[relPath];
    let key: string;
    if (seen && seen.size === st.size && seen.mtimeMs === st.mtimeMs && seen.ino === st.ino) {
      key = seen.key;
    } else {
      key = `${hashFile(src)}${(st.mode & 0o111) !== 0 ? 'x' : ''}`;
      stats.hashed++;
    }
    next.entries[relPath] = { size: st.size, mtimeMs: st.mtimeMs, ino: st.ino, key };
    stats.files++;
    stats.bytes += st.size;
    return { key, size: st.size };
  };

  const linkFile = (key: string, src: string, size: number, dest: string): void => {
    const stored = storePath(storeDir, key);
    if (!fs.existsSync(stored)) {
      addToStore(src, stored, key.endsWith('x'));
      stats.newBytes += size;
    }
    fs.linkSync(stored, dest);
  };

  /** Every entry below root/base/sub, in a stable order, with file keys. */
  const scan = (base: string, sub: string, out: TreeEntry[]): void => {
    const dir = path.join(root, base, sub);
    for (const entry of fs.readdirSync(dir, { withFileTypes: true }).sort(byName)) {
      const rel = sub ? `${sub}/${entry.name}` : entry.name;
      const full = `${base}/${rel}`;
      const src = path.join(dir, entry.name);
      if (entry.isDirectory()) {
        if (skipDir(full, src)) continue;
        out.push({ rel, kind: 'dir', ref: '', src, size: 0 });
        scan(base, rel, out);
      } else if (entry.isSymbolicLink()) {
        if (!ignore(full, false)) out.push({ rel, kind: 'link', ref: fs.readlinkSync(src), src, size: 0 });
      } else if (entry.isFile() && !ignore(full, false)) {
        const { key, size } = fileKey(full, src);
        out.push({ rel, kind: 'file', ref: key, src, size });
      }
    }
  };

  const materialize = (entries: TreeEntry[], into: string): void => {
    fs.mkdirSync(into, { recursive: true, mode: 0o755 });
    for (const e of entries) {
      const out = path.join(into, e.rel);
      if (e.kind === 'dir') fs.mkdirSync(out, { mode: 0o755 });
      else if (e.kind === 'link') fs.symlinkSync(e.ref, out);
      else linkFile(e.ref, e.src, e.size, out);
    }
  };

  const linkModules = (relPath: string, dest: string): void => {
    const entries: TreeEntry[] = [];
    scan(relPath, '', entries);
    // npm workspaces link their packages into node_modules with relative
    // links out of it (node_modules/@acme/lib -> ../../packages/lib). From a
    // shared tree in the store those would point into the store; such a
    // node_modules is laid out in the release itself, where they resolve to
    // the release's own copy of the packages.
    const modulesDir = path.join(root, relPath);
    const leaves = entries.some((e) => {
      if (e.kind !== 'link' || path.isAbsolute(e.ref)) return false;
      const target = path.resolve(path.dirname(path.join(modulesDir, e.rel)), e.ref);
      const rel = path.relative(modulesDir, target);
      return rel === '..' || rel.startsWith(`..${path.sep}`);
    });
    if (leaves) {
      materialize(entries, dest);
      return;
    }
    const hash = createHash('sha256');
    for (const e of entries) hash.update(`${e.kind}\0${e.rel}\0${e.ref}\n`);
    const treeRoot = path.join(storeDir, 'trees', hash.digest('hex'));
    const tree = path.join(treeRoot, 'node_modules');
    if (!fs.existsSync(tree)) {
      const tmp = `${treeRoot}.${process.pid}.tmp`;
      fs.rmSync(tmp, { recursive: true, force: true });
      materialize(entries, path.join(tmp, 'node_modules'));
      fs.renameSync(tmp, treeRoot);
    }
    fs.symlinkSync(tree, dest);
  };

  const walk = (rel: string): void => {
    const srcDir = path.join(root, rel);
    fs.mkdirSync(path.join(releaseDir, rel), { recursive: true, mode: 0o755 });
    for (const entry of fs.readdirSync(srcDir, { withFileTypes: true })) {
      const relPath = rel ? `${rel}/${entry.name}` : entry.name;
      const src = path.join(srcDir, entry.name);
      const dest = path.join(releaseDir, relPath);
      if (entry.isDirectory()) {
        if (skipDir(relPath, src)) continue;
        if (entry.name === 'node_modules') linkModules(relPath, dest);
        else walk(relPath);
      } else if (entry.isSymbolicLink()) {
        if (!ignore(relPath, false)) fs.symlinkSync(fs.readlinkSync(src), dest);
      } else if (entry.isFile() && !ignore(relPath, false)) {
        const { key, size } = fileKey(relPath, src);
        linkFile(key, src, size, dest);
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

function realpathOr(p: string): string {
  try {
    return fs.realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

/** The names of the trees in `treesDir` that the kept releases link to. */
function treesInUse(releaseRoots: string[], treesDir: string): Set<string> {
  const used = new Set<string>();
  const visit = (dir: string): void => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const full = path.join(dir, e.name);
      if (e.isSymbolicLink()) {
        const target = fs.readlinkSync(full);
        if (target.startsWith(`${treesDir}${path.sep}`)) used.add(target.slice(treesDir.length + 1).split(path.sep)[0]!);
      } else if (e.isDirectory()) {
        visit(full);
      }
    }
  };
  for (const r of releaseRoots) visit(r);
  return used;
}

/**
 * Removes the dependency trees that no kept release links to, then the
 * store files that nothing links to any more. Returns the bytes freed.
 */
export function collectGarbage(storeDir: string, keptReleaseRoots: string[]): number {
  const treesDir = path.join(storeDir, 'trees');
  const used = treesInUse(keptReleaseRoots, treesDir);
  let trees: string[] = [];
  try {
    trees = fs.readdirSync(treesDir);
  } catch {
    // no trees yet
  }
  for (const t of trees) if (!used.has(t)) fs.rmSync(path.join(treesDir, t), { recursive: true, force: true });

  let freed = 0;
  for (const shard of fs.readdirSync(storeDir)) {
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
