// Size-based rotation of a release's log. The keeper and its app processes
// all write to the file through inherited O_APPEND descriptors, so the file
// is rotated by copy-and-truncate: writers simply continue at the new end.
import fs from 'node:fs';

export const LOG_MAX_BYTES = 10 * 1024 * 1024;
export const LOG_KEEP = 3;

/** Rotates `file` to file.1 ... file.N when it is larger than maxBytes. */
export function rotateIfLarge(file: string, maxBytes = LOG_MAX_BYTES, keep = LOG_KEEP): boolean {
  let size: number;
  try {
    size = fs.statSync(file).size;
  } catch {
    return false;
  }
  if (size <= maxBytes) return false;
  for (let i = keep - 1; i >= 1; i--) {
    try {
      fs.renameSync(`${file}.${i}`, `${file}.${i + 1}`);
    } catch {
      // that generation does not exist yet
    }
  }
  fs.copyFileSync(file, `${file}.1`);
  fs.truncateSync(file, 0);
  return true;
}

export function watchLogSize(file: string, everyMs = 5_000): void {
  setInterval(() => rotateIfLarge(file), everyMs).unref();
}
