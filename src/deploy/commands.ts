// The CLI's commands, as functions that take validated input and return a
// result object (printed as one line, a table, or --json by src/cli.ts).
import os from 'node:os';
import { DeployError } from '../errors';
import { ensureAddon } from '../native';
import type { KeeperStatus } from '../protocol';
import { appName, resolveEntry, withApp } from './app';
import { cutover, type CutoverResult } from './cutover';
import { keeperDrain, tryKeeperStatus } from './keeper-client';
import { waitGone } from './instances';
import { appPaths } from './paths';
import type { Progress } from './progress';
import { emptyState, liveInstance, readState, writeState, type Instance } from './state';

export interface DeployInput {
  entry: string;
  root?: string;
  name?: string;
  host: string;
  port: number;
  instances: number;
  health: string | null;
  healthTimeoutMs: number;
  drainTimeoutMs: number;
  handshakeGraceMs: number;
  env: Record<string, string>;
  args: string[];
  nodeArgs: string[];
  stateDir: string;
  wait: boolean;
}

export interface DeployOutcome extends CutoverResult {
  repaired: string[];
}

export async function deployCommand(input: DeployInput, progress: Progress): Promise<DeployOutcome> {
  ensureAddon();
  const resolved = resolveEntry(input.entry, input.root);
  const name = appName(input.name, resolved);
  return withApp(input.stateDir, name, { wait: input.wait, drainTimeoutMs: input.drainTimeoutMs, progress }, async ({ paths, state: found, repair }) => {
    const state = found ?? emptyState(name, input.host, input.port);
    const live = liveInstance(state);
    if (live && (state.port !== input.port || state.host !== input.host)) {
      throw new DeployError(
        'RD_ERR_PORT_CHANGED',
        `"${name}" is live on ${state.host}:${state.port} (${live.release}); this deploy asks for ${input.host}:${input.port}. ` +
          `A cutover needs the same address and port. Run \`reuse-deploy stop --name ${name}\` first, or deploy under another --name.`,
      );
    }
    state.host = input.host;
    state.port = input.port;
    const release = {
      id: `r${state.nextRelease++}`,
      createdAt: Date.now(),
      entry: resolved.entry,
      root: resolved.root,
      args: input.args,
      nodeArgs: input.nodeArgs,
      env: input.env,
    };
    state.releases.push(release);
    const result = await cutover(paths, state, release, {
      app: name,
      host: input.host,
      port: input.port,
      instances: input.instances,
      health: input.health,
      healthTimeoutMs: input.healthTimeoutMs,
      drainTimeoutMs: input.drainTimeoutMs,
      handshakeGraceMs: input.handshakeGraceMs,
      env: {},
    }, progress);
    return { ...result, repaired: repair.notes };
  });
}

export interface StatusInstance {
  id: string;
  release: string;
  role: Instance['role'];
  keeperPid: number;
  answering: boolean;
  status: KeeperStatus | null;
}

export interface StatusOutcome {
  app: string;
  host: string;
  port: number;
  liveRelease: string | null;
  instances: StatusInstance[];
}

/** Reads state and asks every keeper; takes no lock and changes nothing. */
export async function statusCommand(stateDir: string, name: string): Promise<StatusOutcome> {
  const paths = appPaths(stateDir, name);
  const state = readState(paths.state);
  if (!state) throw noState(stateDir, name);
  const instances: StatusInstance[] = [];
  for (const i of state.instances) {
    const status = await tryKeeperStatus(i.controlSocket, 1_500);
    instances.push({ id: i.id, release: i.release, role: i.role, keeperPid: i.keeperPid, answering: status !== null, status });
  }
  return { app: state.name, host: state.host, port: state.port, liveRelease: liveInstance(state)?.release ?? null, instances };
}

export interface StopOutcome {
  app: string;
  stopped: string[];
  forced: string[];
}

/** Drains and stops every instance of the app. The release history is kept for `start`. */
export async function stopCommand(stateDir: string, name: string, drainTimeoutMs: number, wait: boolean, progress: Progress): Promise<StopOutcome> {
  ensureAddon();
  if (!readState(appPaths(stateDir, name).state)) throw noState(stateDir, name);
  return withApp(stateDir, name, { wait, drainTimeoutMs, progress }, async ({ paths, state }) => {
    const s = state!;
    const stopped: string[] = [];
    const forced: string[] = [];
    for (const i of s.instances) {
      progress.phase(`draining ${i.release} (instance ${i.id}, up to ${Math.round(drainTimeoutMs / 1000)} s)`);
      await keeperDrain(i.controlSocket, drainTimeoutMs, 0).catch(() => undefined);
    }
    for (const i of s.instances) {
      if (await waitGone(i, drainTimeoutMs + 10_000)) stopped.push(i.id);
      else forced.push(i.id);
    }
    s.instances = [];
    writeState(paths.state, s);
    return { app: name, stopped, forced };
  });
}

function noState(stateDir: string, name: string): DeployError {
  return new DeployError(
    'RD_ERR_NO_STATE',
    `No app named "${name}" has been deployed with state dir ${stateDir}. Check --name and --state-dir (or REUSE_DEPLOY_HOME).`,
  );
}

export function cpuCount(): number {
  return os.availableParallelism();
}
