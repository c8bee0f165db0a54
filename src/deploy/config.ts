// Per-app defaults for the deploy flags: reuse-deploy.config.json, or a
// "reuseDeploy" key in package.json, in the app directory. Flags override
// them; an unknown key is an error (a typo must not silently do nothing).
import fs from 'node:fs';
import path from 'node:path';
import { DeployError, usageError } from '../errors';
import { flagOf } from './options';

/** Config key -> the flag it stands for (cac's camelCase name). */
const KEYS = {
  name: 'name',
  port: 'port',
  host: 'host',
  health: 'health',
  healthTimeout: 'healthTimeout',
  drainTimeout: 'drainTimeout',
  handshakeGrace: 'handshakeGrace',
  handoff: 'handoff',
  warmUp: 'warmUp',
  instances: 'instances',
  env: 'env',
  nodeArgs: 'nodeArg',
  keep: 'keep',
  park: 'park',
} as const;

export interface LoadedConfig {
  file: string | null;
  /** Values keyed by flag name, in the shapes the flag parsers accept. */
  flags: Record<string, unknown>;
}

/**
 * A flag parser's complaint about a value that came from the config file
 * (`--park "true" is not a duration`) names the file and its key, so that
 * nobody goes looking for a flag they never typed. Other errors pass as
 * they are. `used`: the flags (cac's names) whose value the file gave.
 */
export function blameConfig(err: unknown, file: string | null, used: Iterable<string>): unknown {
  if (!file || !(err instanceof DeployError) || err.code !== 'RD_ERR_USAGE') return err;
  for (const flag of used) {
    const key = Object.entries(KEYS).find(([, f]) => f === flag)?.[0] ?? flag;
    if (err.message.startsWith(`${flagOf(flag)} `)) {
      return usageError(`${err.message} That value comes from ${file}, key "${key}": fix it there.`);
    }
  }
  return err;
}

function read(file: string): unknown {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw usageError(`${file} is not valid JSON: ${(err as Error).message}`);
  }
}

export function loadConfig(root: string): LoadedConfig {
  const own = path.join(root, 'reuse-deploy.config.json');
  const pkgFile = path.join(root, 'package.json');
  let file: string | null = null;
  let raw: unknown;
  if (fs.existsSync(own)) {
    file = own;
    raw = read(own);
  } else if (fs.existsSync(pkgFile)) {
    const pkg = read(pkgFile) as { reuseDeploy?: unknown };
    if (pkg && typeof pkg === 'object' && pkg.reuseDeploy !== undefined) {
      file = `${pkgFile} (reuseDeploy)`;
      raw = pkg.reuseDeploy;
    }
  }
  if (!file) return { file: null, flags: {} };
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw usageError(`${file} must hold an object, e.g. { "port": 8080, "health": "/healthz" }.`);
  const flags: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(raw as Record<string, unknown>)) {
    if (key === '$schema') continue;
    if (!(key in KEYS)) {
      throw usageError(`${file}: unknown key "${key}". Known keys: ${Object.keys(KEYS).join(', ')}.`);
    }
    if (key === 'env') {
      if (!value || typeof value !== 'object' || Array.isArray(value)) throw usageError(`${file}: "env" must be an object of strings, e.g. { "NODE_ENV": "production" }.`);
      flags.env = Object.entries(value as Record<string, unknown>).map(([k, v]) => `${k}=${String(v)}`);
    } else if (key === 'handoff') {
      if (typeof value !== 'boolean') throw usageError(`${file}: "handoff" must be true or false.`);
      flags.handoff = value;
    } else if (key === 'nodeArgs') {
      if (!Array.isArray(value)) throw usageError(`${file}: "nodeArgs" must be an array of strings.`);
      flags.nodeArg = value.map(String);
    } else {
      flags[KEYS[key as keyof typeof KEYS]] = value;
    }
  }
  return { file, flags };
}
