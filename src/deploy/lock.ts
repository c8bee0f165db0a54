// One reuse-deploy command at a time per app: flock(2) on the app's lock
// file. The kernel releases it when the holder exits, so a killed deploy
// never leaves it held.
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { DeployError } from '../errors';
import { flock } from '../native';

export interface Lock {
  release(): void;
}

/** The lock if it is free now, else null. */
export function tryLock(file: string): Lock | null {
  const fd = fs.openSync(file, 'a', 0o600);
  if (flock(fd, true, false)) return { release: () => fs.closeSync(fd) };
  fs.closeSync(fd);
  return null;
}

export async function acquireLock(file: string, name: string, wait: boolean, onWaiting?: () => void): Promise<Lock> {
  const fd = fs.openSync(file, 'a', 0o600);
  let warned = false;
  while (!flock(fd, true, false)) {
    if (!wait) {
      fs.closeSync(fd);
      throw new DeployError(
        'RD_ERR_LOCKED',
        `Another reuse-deploy command is working on "${name}" (lock ${file}). ` +
          'Wait for it to finish, or pass --wait to queue behind it.',
      );
    }
    if (!warned) onWaiting?.();
    warned = true;
    await sleep(100);
  }
  return {
    release() {
      fs.closeSync(fd);
    },
  };
}
