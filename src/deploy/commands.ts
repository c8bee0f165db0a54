// The CLI's commands, as functions that take validated input and return a
// result object (printed as one line, a table, or --json by src/cli.ts).
import fs from 'node:fs';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import path from 'node:path';
import { DeployError, usageError } from '../errors';
import { ensureAddon } from '../native';
import type { KeeperStatus } from '../protocol';
import { appName, resolveEntry, withApp, type ResolvedEntry } from './app';
import { cutover, unpark, type CutoverResult } from './cutover';
import { keeperDrain, keeperStop, tryKeeperStatus } from './keeper-client';
import { killKeeperGroup, logFileOf, logTail, otherReleasesOn, waitGone } from './instances';
import { tryLock } from './lock';
import { appPaths, type AppPaths } from './paths';
import { repairState } from './repair';
import type { Progress } from './progress';
import { collectGarbage, removeReleaseTree, snapshot, type SnapshotStats } from './snapshot';
import { emptyState, findRelease, liveInstance, previousRelease, readState, writeState, type AppState, type Instance, type Release } from './state';

/** Where the release to deploy comes from: a new snapshot of an entry, or a kept release. */
export type ReleaseSource =
  | { kind: 'entry'; entry: string; root?: string }
  | { kind: 'previous' }
  | { kind: 'release'; id: string }
  /** `start`: the recorded live release, after a reboot or `stop`. */
  | { kind: 'current' };

export interface DeployInput {
  source: ReleaseSource;
  name?: string;
  /** Undefined: the app's recorded address (or the default for a first deploy). */
  host?: string;
  port?: number;
  /** Settings left undefined come from the release (rollback) or the defaults. */
  instances?: number;
  health?: string | null;
  env?: Record<string, string>;
  args?: string[];
  nodeArgs?: string[];
  healthTimeoutMs: number;
  drainTimeoutMs: number;
  handshakeGraceMs: number;
  /** Idle keep-alive connections go to the new version (false: they are closed, and clients reconnect). */
  handoff: boolean;
  warmUpRequests: number;
  parkMs: number;
  keep: number;
  stateDir: string;
  wait: boolean;
  /**
   * For a kept release (--previous, --release, start): the settings above
   * as the config file kept in the release's snapshot gives them, under the
   * flags given now. Without it, the values above stand.
   */
  policyFromRelease?: (releaseRoot: string) => PolicyFromRelease;
}

export interface PolicyFromRelease {
  policy: DeployPolicy;
  file: string | null;
  /** Why a value of the file was left out (it does not parse). */
  ignored: string[];
}

/** The settings of one deploy, rather than of the release it runs. */
export type DeployPolicy = Pick<DeployInput, 'healthTimeoutMs' | 'drainTimeoutMs' | 'handshakeGraceMs' | 'handoff' | 'warmUpRequests' | 'parkMs' | 'keep'>;

/**
 * A rollback runs under the config file its release was deployed with
 * (its snapshot has it): a slow app's "healthTimeout": "90s" holds for
 * `--previous` too. Nothing there may stand in the way of a rollback: a
 * file that does not read at all (not JSON, or a key an older reuse-deploy
 * took) leaves the flags and defaults, and a value that does not parse is
 * left out alone; each with a warning.
 */
function policyOf(input: DeployInput, release: Release, progress: Progress): DeployPolicy {
  if (!input.policyFromRelease) return input;
  try {
    const { policy, file, ignored } = input.policyFromRelease(release.root);
    if (file) progress.info(`using settings from ${file}`);
    for (const why of ignored) progress.warn(`${why} Left out: ${release.id} goes on with the flag given or the default.`);
    return policy;
  } catch (err) {
    progress.warn(`the settings kept with ${release.id} could not be used (${(err as Error).message}); going on with the flags given and the defaults`);
    return input;
  }
}

export interface DeployOutcome extends CutoverResult {
  repaired: string[];
  snapshot: SnapshotStats | null;
  pruned: string[];
  /** `start` found the live release already running and did nothing. */
  alreadyRunning: boolean;
  /** A parked instance was brought back instead of booting the release. */
  unparked: boolean;
}

/** A new release from a snapshot of the entry's app directory. */
function newRelease(paths: AppPaths, state: AppState, resolved: ResolvedEntry, input: DeployInput, progress: Progress): { release: Release; stats: SnapshotStats } {
  const id = `r${state.nextRelease++}`;
  const dir = path.join(paths.releases, id);
  progress.phase(`snapshotting ${resolved.root} as ${id}`);
  let stats: SnapshotStats;
  try {
    // A CLI killed while snapshotting leaves a partial tree under the next
    // id before state.json counts it. No release owns it, and the lock is
    // held, so it goes.
    if (!state.releases.some((r) => r.root === dir)) removeReleaseTree(dir);
    stats = snapshot(resolved.root, dir, paths.store, { exclude: [path.dirname(paths.dir)] });
  } catch (err) {
    removeReleaseTree(dir);
    throw new DeployError('RD_ERR_SNAPSHOT', `Could not snapshot ${resolved.root}: ${(err as Error).message}. Check that this user can read every file there, or list what should stay out in .reusedeployignore.`, { cause: err });
  }
  if (stats.externalModules) {
    progress.warn(
      `${resolved.root} has no node_modules; the release links to ${stats.externalModules} instead of copying it, ` +
        'so a rollback uses whatever is installed there then. Pass --root with the directory that holds node_modules to include it.',
    );
  }
  const release: Release = {
    id,
    createdAt: Date.now(),
    entry: path.join(dir, path.relative(resolved.root, resolved.entry)),
    root: dir,
    sourceRoot: resolved.root,
    sourceEntry: resolved.entry,
    files: stats.files,
    bytes: stats.bytes,
    externalModules: stats.externalModules,
    args: input.args ?? [],
    nodeArgs: input.nodeArgs ?? [],
    env: input.env ?? {},
    health: input.health ?? null,
    instances: input.instances ?? 1,
  };
  return { release, stats };
}

/** A kept release, run with its recorded settings unless flags override them. */
function keptRelease(state: AppState, source: ReleaseSource, input: DeployInput): Release {
  let id: string;
  if (source.kind === 'previous') {
    const previous = previousRelease(state);
    if (!previous) throw new DeployError('RD_ERR_NO_PREVIOUS', `"${state.name}" has had no other live release to go back to (history: ${state.liveHistory.join(', ') || 'empty'}).`);
    id = previous;
  } else if (source.kind === 'current') {
    const current = state.liveHistory[state.liveHistory.length - 1];
    if (!current) throw new DeployError('RD_ERR_NO_STATE', `"${state.name}" has no release that was live; deploy one first.`);
    id = current;
  } else {
    id = (source as { id: string }).id;
  }
  const release = findRelease(state, id);
  if (!release || !fs.existsSync(release.entry)) {
    throw new DeployError('RD_ERR_RELEASE_NOT_FOUND', `Release ${id} of "${state.name}" is not kept${release ? ' (its snapshot is gone)' : ''}. Kept: ${state.releases.map((r) => r.id).join(', ') || 'none'}. See \`reuse-deploy releases\`.`);
  }
  return {
    ...release,
    args: input.args ?? release.args,
    nodeArgs: input.nodeArgs ?? release.nodeArgs,
    env: input.env ?? release.env,
    health: input.health === undefined ? release.health : input.health,
    instances: input.instances ?? release.instances,
  };
}

export async function deployCommand(input: DeployInput, progress: Progress): Promise<DeployOutcome> {
  ensureAddon();
  const { source } = input;
  const resolved = source.kind === 'entry' ? resolveEntry(source.entry, source.root) : null;
  const name = resolved ? appName(input.name, resolved) : input.name!;
  if (!resolved && !readState(appPaths(input.stateDir, name).state)) throw noState(input.stateDir, name);

  // A repair (of what a killed command left) comes before the release is
  // known, so a rollback's drains it with the flag given or the default.
  return withApp(input.stateDir, name, { wait: input.wait, drainTimeoutMs: input.drainTimeoutMs, progress }, async ({ paths, state: found, repair }) => {
    const state = found ?? emptyState(name, input.host ?? '::', input.port ?? 0);
    const host = input.host ?? state.host;
    const port = input.port ?? state.port;
    if (!port) throw usageError('--port is required for the first deploy of an app: the TCP port it serves on, e.g. --port 8080.');
    const live = liveInstance(state);
    if (live && (state.port !== port || state.host !== host)) {
      throw new DeployError(
        'RD_ERR_PORT_CHANGED',
        `"${name}" is live on ${state.host}:${state.port} (${live.release}); this deploy asks for ${host}:${port}. ` +
          `A cutover needs the same address and port. Run \`reuse-deploy stop --name ${name}\` first, or deploy under another --name.`,
      );
    }
    state.host = host;
    state.port = port;
    if (source.kind === 'current' && live) {
      const status = await tryKeeperStatus(live.controlSocket);
      return {
        app: name,
        release: live.release,
        instance: live.id,
        pids: status?.apps.map((a) => a.pid ?? -1) ?? [],
        port,
        host,
        previousRelease: null,
        msToHealthy: 0,
        msTotal: 0,
        steering: null,
        repaired: repair.notes,
        snapshot: null,
        pruned: [],
        alreadyRunning: true,
        unparked: false,
      };
    }

    const other = otherReleasesOn(host, port, state.instances, input.stateDir, name)[0];
    if (other) {
      const its = `--name ${other.app} --state-dir ${other.stateDir}`;
      throw new DeployError(
        'RD_ERR_OTHER_APP',
        `Port ${port} is served by "${other.app}" ${other.release} (keeper pid ${other.pid}) of the state directory ${other.stateDir}, which this command ` +
          `("${name}" in ${input.stateDir}) does not know: nothing would ever drain it, and the two would share the port. ` +
          `Deploy it under its own name and state directory (${its}), or stop it first: reuse-deploy stop ${its}.`,
      );
    }

    let release: Release;
    let stats: SnapshotStats | null = null;
    let policy: DeployPolicy = input;
    if (resolved) {
      ({ release, stats } = newRelease(paths, state, resolved, input, progress));
      state.releases.push(release);
    } else {
      release = keptRelease(state, source, input);
      policy = policyOf(input, release, progress);
    }
    writeState(paths.state, state);

    const parked = resolved ? undefined : await parkedInstanceOf(state, release.id);
    const cutoverOptions = {
      app: name,
      host,
      port,
      instances: release.instances,
      health: release.health,
      healthTimeoutMs: policy.healthTimeoutMs,
      drainTimeoutMs: policy.drainTimeoutMs,
      handshakeGraceMs: policy.handshakeGraceMs,
      handoff: policy.handoff,
      warmUpRequests: policy.warmUpRequests,
      parkMs: policy.parkMs,
    };
    if (parked) {
      const ignored = [
        input.env && '--env',
        input.instances !== undefined && '--instances',
        input.health !== undefined && '--health',
        input.nodeArgs && '--node-arg',
        input.args && 'app arguments',
      ].filter((x): x is string => typeof x === 'string');
      if (ignored.length > 0) {
        progress.warn(`${release.id} is parked: its processes come back as they ran, and ${ignored.join(', ')} given now cannot change them. That takes a boot: \`reuse-deploy --release ${release.id}\` once its parking time is over.`);
      }
      const result = await unpark(paths, state, parked, cutoverOptions, progress);
      return { ...result, repaired: repair.notes, snapshot: null, pruned: [], alreadyRunning: false, unparked: true };
    }

    let result: CutoverResult;
    let pruned: string[] = [];
    // Old releases go while the new one boots, when the CLI only waits. The
    // new release and the live one run, so they are protected like the
    // previous one; a failed deploy removes its release, one fewer is kept.
    const prune = (): void => {
      try {
        pruned = pruneReleases(paths, state, policy.keep);
      } catch (err) {
        progress.warn(`could not remove old releases: ${(err as Error).message}`);
      }
    };
    try {
      result = await cutover(paths, state, release, cutoverOptions, progress, prune);
    } catch (err) {
      // A new release that never went live is not worth keeping.
      if (resolved) {
        state.releases = state.releases.filter((r) => r.id !== release.id);
        writeState(paths.state, state);
        removeReleaseTree(release.root);
      }
      throw err;
    }
    return { ...result, repaired: repair.notes, snapshot: stats, pruned, alreadyRunning: false, unparked: false };
  });
}

/** A parked instance of `release`, once it has finished parking (it may still be draining its last requests). */
async function parkedInstanceOf(state: AppState, release: string): Promise<Instance | undefined> {
  const candidate = state.instances.find((i) => i.role === 'parked' && i.release === release);
  if (!candidate) return undefined;
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const phase = (await tryKeeperStatus(candidate.controlSocket, 1_000))?.phase;
    if (phase === 'parked') return candidate;
    if (phase !== 'draining') return undefined;
    await sleep(50);
  }
  return undefined;
}

/**
 * Keeps the newest `keep` releases, and always the live one, the previous
 * one and any that an instance still runs. Store files no release links to
 * any more are deleted.
 */
export function pruneReleases(paths: AppPaths, state: AppState, keep: number): string[] {
  const protectedIds = new Set<string>([...state.instances.map((i) => i.release), previousRelease(state) ?? '', state.liveHistory[state.liveHistory.length - 1] ?? '']);
  const byAge = [...state.releases].sort((a, b) => b.createdAt - a.createdAt);
  const doomed = byAge.slice(keep).filter((r) => !protectedIds.has(r.id));
  if (doomed.length === 0) return [];
  state.releases = state.releases.filter((r) => !doomed.includes(r));
  writeState(paths.state, state);
  for (const r of doomed) removeReleaseTree(r.root);
  collectGarbage(paths.store, state.releases.map((r) => r.root));
  return doomed.map((r) => r.id);
}

export interface ReleaseRow {
  id: string;
  createdAt: number;
  entry: string;
  files: number;
  bytes: number;
  live: boolean;
  previous: boolean;
}

export function releasesCommand(stateDir: string, name: string): { app: string; releases: ReleaseRow[] } {
  const state = readState(appPaths(stateDir, name).state);
  if (!state) throw noState(stateDir, name);
  const live = liveInstance(state)?.release ?? null;
  const previous = previousRelease(state);
  return {
    app: name,
    releases: state.releases.map((r) => ({
      id: r.id,
      createdAt: r.createdAt,
      entry: r.sourceEntry,
      files: r.files,
      bytes: r.bytes,
      live: r.id === live,
      previous: r.id === previous,
    })),
  };
}

export interface StatusInstance {
  id: string;
  release: string;
  role: Instance['role'];
  keeperPid: number;
  answering: boolean;
  status: KeeperStatus | null;
  /** The release log's last lines, when something is wrong with the instance. */
  logTail: string | null;
}

export interface StatusOutcome {
  app: string;
  host: string;
  port: number;
  liveRelease: string | null;
  instances: StatusInstance[];
  repaired: string[];
}

/**
 * Reads state and asks every keeper. When no other command holds the app's
 * lock, it first repairs what an interrupted command left behind; it never
 * waits for the lock.
 */
export async function statusCommand(stateDir: string, name: string, drainTimeoutMs: number): Promise<StatusOutcome> {
  const paths = appPaths(stateDir, name);
  const state = readState(paths.state);
  if (!state) throw noState(stateDir, name);
  let repaired: string[] = [];
  let statuses = new Map<string, KeeperStatus>();
  const lock = fs.existsSync(paths.lock) ? tryLock(paths.lock) : null;
  if (lock) {
    try {
      ({ notes: repaired, statuses } = await repairState(paths.state, state, drainTimeoutMs, true));
    } finally {
      lock.release();
    }
  }
  const instances: StatusInstance[] = [];
  for (const i of state.instances) {
    const status = statuses.get(i.id) ?? (await tryKeeperStatus(i.controlSocket, 1_500, true));
    const troubled = status?.error || status?.apps.some((a) => a.state === 'failed');
    const logTailText = troubled ? logTail(logFileOf(paths, i.release), 0, 10) : null;
    instances.push({ id: i.id, release: i.release, role: i.role, keeperPid: i.keeperPid, answering: status !== null, status, logTail: logTailText });
  }
  return { app: state.name, host: state.host, port: state.port, liveRelease: liveInstance(state)?.release ?? null, instances, repaired };
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
      if (i.role === 'parked') {
        await keeperStop(i.controlSocket).catch(() => undefined);
        continue;
      }
      progress.phase(`draining ${i.release} (instance ${i.id}, up to ${Math.round(drainTimeoutMs / 1000)} s)`);
      await keeperDrain(i.controlSocket, drainTimeoutMs, 0).catch(() => undefined);
    }
    for (const i of s.instances) {
      if (await waitGone(i, drainTimeoutMs + 10_000)) {
        stopped.push(i.id);
      } else {
        killKeeperGroup(i.keeperPid);
        forced.push(i.id);
      }
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
