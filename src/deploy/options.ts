// Validation of flag values. Each failure says what arrived and what is expected.
import dns from 'node:dns/promises';
import net from 'node:net';
import { usageError } from '../errors';

/** The flag as typed, from cac's camelCase key: healthTimeout -> --health-timeout. */
export function flagOf(key: string): string {
  return `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}

/** Node's timers hold at most 2^31 - 1 ms; a longer one fires after 1 ms (lib/internal/timers.js). */
const MAX_DURATION_MS = 2 ** 31 - 1;

/**
 * "30s", "500ms", "2m", "1h", or a plain number of seconds (below 1000: a
 * plain 30000 is more likely meant as milliseconds, so it needs a unit).
 * `allowZero`: whether 0 means something (no grace, no parking) rather
 * than a mistake (a health check or a drain with no time at all).
 */
export function parseDuration(flag: string, value: unknown, fallbackMs: number, allowZero = true): number {
  if (value === undefined || value === null || value === '') return fallbackMs;
  const text = String(value).trim();
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text);
  if (!m) throw usageError(`--${flag} ${JSON.stringify(String(value))} is not a duration. Use e.g. 30s, 500ms, 2m, or a number of seconds.`);
  const n = Number(m[1]);
  if (m[2] === undefined && n >= 1000) {
    throw usageError(`--${flag} ${text} would be ${text} seconds (${(n / 3600).toFixed(1)} h). Give a unit to say which you mean: ${text}ms or ${text}s.`);
  }
  const ms = Math.round(n * { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }[m[2] ?? 's']!);
  if (ms === 0 && !allowZero) throw usageError(`--${flag} ${text} leaves no time at all. Give it a duration above 0, e.g. 30s (the default).`);
  if (ms > MAX_DURATION_MS) throw usageError(`--${flag} ${text} is too long: durations go up to 596h (24 days, the longest timer Node has).`);
  return ms;
}

/** Decimal digits only (Number() would also take 0x50, 1e3 and " "), else NaN. */
function wholeNumber(value: unknown): number {
  const text = String(value).trim();
  return /^\d+$/.test(text) ? Number(text) : NaN;
}

export function parsePort(value: unknown): number {
  if (value === undefined || value === true) throw usageError('--port is required: the TCP port the app serves on, e.g. --port 8080.');
  const n = wholeNumber(value);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw usageError(`--port ${JSON.stringify(String(value))} is not a TCP port. Use a whole number from 1 to 65535.`);
  return n;
}

export function parseInstances(value: unknown, cpus: number): number {
  if (value === undefined) return 1;
  if (value === 'max') return cpus;
  const n = wholeNumber(value);
  if (!Number.isInteger(n) || n < 1 || n > 256) throw usageError(`--instances ${JSON.stringify(String(value))} is not valid. Use a whole number from 1 to 256, or "max" for one per CPU.`);
  return n;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Repeatable --env KEY=VALUE. The value is passed as is: no shell ever sees it. */
export function parseEnv(value: unknown): Record<string, string> {
  const list = value === undefined ? [] : Array.isArray(value) ? value : [value];
  const env: Record<string, string> = {};
  for (const item of list) {
    const text = String(item);
    const eq = text.indexOf('=');
    const key = eq > 0 ? text.slice(0, eq) : '';
    if (!ENV_NAME.test(key)) throw usageError(`--env ${JSON.stringify(text)} is not KEY=VALUE with a valid variable name (letters, digits, _; not starting with a digit).`);
    if (key === 'PORT') throw usageError(`--env ${JSON.stringify(text)}: the app gets PORT from --port (the port it must listen on). Change --port instead.`);
    if (key.startsWith('REUSE_DEPLOY_')) throw usageError(`--env ${JSON.stringify(text)}: variables named REUSE_DEPLOY_* are set by reuse-deploy for the app. Use another name.`);
    env[key] = text.slice(eq + 1);
  }
  return env;
}

export function parseHealthPath(value: unknown): string | null {
  if (value === undefined) return null;
  const text = String(value);
  if (!text.startsWith('/') || /\s/.test(text)) throw usageError(`--health ${JSON.stringify(text)} is not a URL path. Use e.g. --health /healthz.`);
  return text;
}

/** A numeric address to bind. Names are resolved once, here. Default: '::' (dual-stack), as Node's listen(port). */
export async function resolveHost(value: unknown): Promise<string> {
  if (value === undefined) return '::';
  const text = String(value).replace(/^\[(.*)\]$/, '$1');
  if (net.isIP(text)) return text;
  try {
    return (await dns.lookup(text)).address;
  } catch {
    throw usageError(`--host ${JSON.stringify(text)} is neither an IP address nor a name this machine can resolve. Use e.g. --host 127.0.0.1 or --host ::.`);
  }
}

/**
 * Warm-up requests per app process at go-live, before new connections are
 * steered to it (keeper/warm-up.ts). None by default: it buys little for
 * the wait it adds. Under the benchmark's load (1000 req/s, a new
 * connection per request, 20 deploys each), requests over 2 ms in the
 * first 40 ms after go-live, per deploy: 1.6 without a warm-up, 1.3 with
 * 10, 0.2 with 25, 0.1 with 50, out of ~17 per deploy that p99 allows; and
 * go-live took 13, 19 and 26 ms against 4 with one instance, 21, 30 and 46
 * against ~6 with two. In a full `npm run bench` with 25, the 2-instance
 * rows' deploys took 144-189 ms beyond the app's boot (117-151 without),
 * and deploys under a saturating load 239 (165-171).
 */
export const DEFAULT_WARM_UP = 0;

export function parseWarmUp(value: unknown): number {
  if (value === undefined) return DEFAULT_WARM_UP;
  const n = wholeNumber(value);
  if (!Number.isInteger(n) || n < 0 || n > 10_000) throw usageError(`--warm-up ${JSON.stringify(String(value))} is not valid. Use a whole number of requests from 0 (none) to 10000.`);
  return n;
}

export function parseKeep(value: unknown): number {
  if (value === undefined) return 5;
  const n = wholeNumber(value);
  if (!Number.isInteger(n) || n < 1) throw usageError(`--keep ${JSON.stringify(String(value))} is not valid. Use a whole number of releases, at least 1.`);
  return n;
}
