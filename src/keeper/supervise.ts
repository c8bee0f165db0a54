// Restart policy for a live app process that exited on its own.
// The listening socket stays open in the keeper meanwhile, so connections
// wait in its accept queue instead of being reset.

export const CRASH_LOOP = { crashes: 5, windowMs: 60_000 } as const;
// REUSE_DEPLOY_RESTART_DELAY_MS tunes the first delay (documented in the README).
const FIRST_DELAY_MS = Number(process.env.REUSE_DEPLOY_RESTART_DELAY_MS) || 1_000;
const MAX_DELAY_MS = Math.max(30_000, FIRST_DELAY_MS);

/**
 * Records a crash at `now` in `history` (mutated) and returns how long to
 * wait before restarting: 1 s, 2 s, 4 s ... capped at 30 s, counted over the
 * recent crashes. Returns null for a crash loop (CRASH_LOOP.crashes within
 * CRASH_LOOP.windowMs): give up.
 */
export function nextRestartDelay(history: number[], now: number): number | null {
  history.push(now);
  while (history.length > 0 && history[0]! < now - CRASH_LOOP.windowMs) history.shift();
  if (history.length >= CRASH_LOOP.crashes) return null;
  return Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** (history.length - 1));
}
