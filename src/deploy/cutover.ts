// The cutover state machine: one deploy of one release of one app.
//
//   locked -> spawned -> listening -> healthy -> live -> old-draining -> recorded
//      \________\___________\___________\________\
//                                                 `-> rolled-back (new instance stopped)
//
// Invariant: at every moment the app has at most one live, undraining
// instance, and the port never has fewer accepting listeners than before
// the deploy started:
// - the new instance joins the port (listen()) only after every one of its
//   app processes passed the health check on its private probe socket;
// - go-live (the keeper's, one call) steers new connections to the new
//   instance only after its app processes accept, and after the warm-up,
//   whose own connections alone are steered there meanwhile;
// - the old instance is told to drain only after the new one accepts and
//   new connections are steered to it;
// - any failure before go-live stops the new instance and nothing else: the
//   old one never learns a deploy was tried.
// state.json is written before each step that starts or stops a process, so
// that a crash at any line leaves a state the next command can repair.
// SIGINT, SIGTERM or SIGHUP before go-live is such a failure (rolled-back);
// from go-live on, the cutover finishes first (watchSignals).
import { setTimeout as sleep } from 'node:timers/promises';
import { DeployError } from '../errors';
import { handoffSocketPath, probeSocketPath, type KeeperStatus } from '../protocol';
import { isHealthy, probe, type HealthRule, type ProbeResult } from './health';
import { keeperDrain, keeperLive, keeperUnpark, keeperWait, tryKeeperStatus } from './keeper-client';
import { logTail, spawnKeeper, stopInstance, waitForKeeper, type Spawned } from './instances';
import { ciReaperEnvPresent } from './prestart';
import { runnerUnitWarning } from './runner-unit';
import type { AppPaths } from './paths';
import type { Progress } from './progress';
import { liveInstance, writeState, type AppState, type Instance, type Release } from './state';

export interface CutoverOptions {
  app: string;
  host: string;
  port: number;
  instances: number;
  health: string | null;
  healthTimeoutMs: number;
  drainTimeoutMs: number;
  /** Time for handshakes in flight to the old listener to complete before it closes. */
  handshakeGraceMs: number;
  handoff: boolean;
  /** Keep the old release up, closed to traffic, this long for an instant rollback (0: no parking). */
  parkMs: number;
  /** Requests of the health check per new app process at go-live, before new connections are steered to it (JIT warm-up; keeper/warm-up.ts). */
  warmUpRequests: number;
}

export interface CutoverResult {
  app: string;
  release: string;
  instance: string;
  pids: number[];
  port: number;
  host: string;
  previousRelease: string | null;
  msToHealthy: number;
  msTotal: number;
  steering: KeeperStatus['steering'];
}

const POLL_MS = 50;

function failure(spawned: Spawned, code: DeployError['code'], message: string, details: Record<string, unknown> = {}): DeployError {
  return new DeployError(code, message, { logTail: logTail(spawned.logFile, spawned.logOffset), details });
}

/** The keeper's own failure (an app process crashed, say), if it has one: it says more than a call that failed with it. */
async function keeperFailure(spawned: Spawned): Promise<DeployError | null> {
  const status = await tryKeeperStatus(spawned.instance.controlSocket, 1_000);
  return status?.phase === 'failed' && status.error ? failure(spawned, status.error.code as DeployError['code'], status.error.message) : null;
}

/** Waits until every app process has called listen() on the deploy port (phase 'gated'). */
async function waitListening(spawned: Spawned, port: number, deadline: number): Promise<KeeperStatus> {
  let last: KeeperStatus | null = null;
  for (;;) {
    const wait = Math.max(0, Math.min(5_000, deadline - Date.now()));
    last = (await keeperWait(spawned.instance.controlSocket, ['gated', 'failed'], wait).catch(() => null)) ?? last;
    if (last?.phase === 'failed' && last.error) throw failure(spawned, last.error.code as DeployError['code'], last.error.message);
    if (last?.phase === 'gated') return last;
    if (Date.now() > deadline) {
      const other = [...new Set(last?.apps.flatMap((a) => a.otherPorts) ?? [])];
      const hint = other.length
        ? ` It listened on port ${other.join(', ')} instead: pass --port ${other[0]}, or make the app listen on process.env.PORT.`
        : ' Make sure it calls listen() on process.env.PORT, or raise --health-timeout if it boots slowly.';
      throw failure(spawned, 'RD_ERR_NEVER_LISTENED', `The new version did not listen on port ${port} in time.${hint}`);
    }
    await sleep(POLL_MS);
  }
}

/**
 * Probes every app process until all pass, or the deadline. The processes
 * of one round are probed at the same time: one after the other, each probe
 * added its round trip to the deploy (~13 ms each for 2 processes under the
 * bench's load).
 */
async function waitHealthy(spawned: Spawned, gated: KeeperStatus, rule: HealthRule, deadline: number, progress: Progress): Promise<void> {
  const pending = new Set(gated.apps.map((a) => a.slot));
  let last: ProbeResult | null = null;
  let attempts = 0;
  while (pending.size > 0) {
    const timeout = Math.max(100, Math.min(5_000, deadline - Date.now()));
    const round = gated.apps.filter((app) => pending.has(app.slot));
    const results = await Promise.all(
      round.map((app) => probe(probeSocketPath(spawned.instance.probeSocketPrefix, app.slot), { tls: app.tls, h2: app.h2 }, rule, timeout)),
    );
    round.forEach((app, i) => {
      if (isHealthy(rule, results[i])) pending.delete(app.slot);
    });
    // For the error message: a failing status says more than no answer, and either more than a pass.
    const failing = results.filter((r) => !isHealthy(rule, r));
    last = failing.find((r) => r.status !== null) ?? failing[0] ?? results[results.length - 1] ?? last;
    if (pending.size === 0) return;
    const failed = await keeperFailure(spawned);
    if (failed) throw failed;
    if (++attempts === 20) progress.info(`still waiting for health: last answer ${last?.status ?? last?.error ?? 'none'}`);
    if (Date.now() > deadline) break;
    await sleep(100);
  }
  const what = rule.path ? `GET ${rule.path} (2xx needed)` : 'GET / (any status below 500)';
  if (last?.status != null) {
    throw failure(
      spawned,
      'RD_ERR_HEALTH_STATUS',
      `The health check ${what} answered ${last.status}` +
        (last.bodyStart ? `: ${JSON.stringify(last.bodyStart.slice(0, 120))}` : '') +
        '. Fix the app, or point --health at an endpoint that reports readiness.',
      { status: last.status, body: last.bodyStart },
    );
  }
  throw failure(
    spawned,
    'RD_ERR_HEALTH_TIMEOUT',
    `The health check ${what} got no answer in time (${last?.error ?? 'no attempt finished'}). ` +
      'Raise --health-timeout if the app warms up slowly.',
  );
}

/**
 * Waits until the port has settled from the previous cutover: the instances
 * that are draining (or parked) have left the reuseport group, so that the
 * new listener's index is right, and the live instance has replaced its
 * steering program by the one that keeps new connections on it while it is
 * alone, so that a late replacement cannot override the new one's.
 */
async function waitPortSettled(state: AppState, progress: Progress): Promise<void> {
  const deadline = Date.now() + 15_000;
  const settled = async (i: Instance): Promise<boolean> => {
    const status = await tryKeeperStatus(i.controlSocket, 1_000);
    if (!status) return true;
    return i.role === 'live' ? status.steering === null : status.listener !== 'listening';
  };
  let said = false;
  for (const i of state.instances.filter((x) => x.role === 'draining' || x.role === 'parked' || x.role === 'live')) {
    while (!(await settled(i))) {
      // Seen after a deploy that ended less than the handshake grace ago
      // (1 s by default): without this line the wait showed as a slow health check.
      if (!said) {
        said = true;
        progress.phase(
          `waiting for the previous deploy to leave the port: ${i.release} ${i.role === 'live' ? 'still steers new connections while its predecessor leaves' : 'still holds its listener open (handshake grace)'}`,
        );
      }
      if (Date.now() > deadline) {
        progress.warn(`instance ${i.id} (${i.release}) has not settled after 15 s (${i.role === 'live' ? 'an older listener is still in the port' : 'listener still open'}); going on`);
        break;
      }
      await sleep(POLL_MS);
    }
  }
}

const CANCEL_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/**
 * Ctrl-C, a CI runner cancelling the step, a closed terminal. Until go-live
 * they cancel the deploy like a failure: the new instance is stopped and the
 * old one never learns. Without this, the new instance (a session of its
 * own) stayed up, gated, until the next command repaired it. From go-live
 * on, a signal waits for the cutover to finish: stopping between go-live and
 * the old version's drain would leave two live versions for the next
 * command to repair. A signal during the rollback waits for it too.
 */
function watchSignals(progress: Progress, goingLive = 'the new version is going live; the command ends once the cutover is done') {
  let received: NodeJS.Signals | null = null;
  let stage: 'booting' | 'going-live' | 'rolling-back' = 'booting';
  let cancel: (err: DeployError) => void = () => undefined;
  const cancelled = new Promise<never>((_, reject) => (cancel = reject));
  cancelled.catch(() => undefined); // raced below; never unhandled
  const onSignal = (signal: NodeJS.Signals): void => {
    // After a hangup every write fails with EIO; src/cli.ts keeps that from
    // ending the command before the rollback.
    if (stage === 'going-live') progress.warn(`${signal}: ${goingLive}`);
    else if (stage === 'rolling-back') progress.warn(`${signal}: stopping the new instance; the command ends once it is stopped`);
    else if (received === null) {
      received = signal;
      cancel(new DeployError('RD_ERR_CANCELLED', `Cancelled by ${signal} before the new version went live. Whatever was live keeps serving; deploy again when ready.`));
    }
  };
  for (const signal of CANCEL_SIGNALS) process.on(signal, onSignal);
  const unlessCancelled = (say: (text: string) => void) => (text: string): void => {
    if (received === null) say(text);
  };
  return {
    /** For the raced steps: silent after a cancel, so that a step still under way does not print over the rollback. */
    progress: { ...progress, phase: unlessCancelled(progress.phase), info: unlessCancelled(progress.info), warn: unlessCancelled(progress.warn) } satisfies Progress,
    /** `steps`, unless a signal comes first. The steps left running only probe and wait. */
    race<T>(steps: Promise<T>): Promise<T> {
      steps.catch(() => undefined); // a step failing after the cancel is moot
      return Promise.race([steps, cancelled]);
    },
    /** From here on a signal waits. Rejects if one came already. */
    goLive(): Promise<void> {
      if (received !== null) return cancelled;
      stage = 'going-live';
      return Promise.resolve();
    },
    rollingBack(): void {
      stage = 'rolling-back';
    },
    dispose(): void {
      for (const signal of CANCEL_SIGNALS) process.removeListener(signal, onSignal);
    },
  };
}

/**
 * Runs one deploy of `release`. The caller holds the app's lock and has
 * repaired `state`. `whileBooting` runs once the new instance is starting:
 * housekeeping that would otherwise add to the command's wall time.
 */
export async function cutover(
  paths: AppPaths,
  state: AppState,
  release: Release,
  options: CutoverOptions,
  progress: Progress,
  whileBooting: () => void = () => undefined,
): Promise<CutoverResult> {
  const started = Date.now();
  const deadline = started + options.healthTimeoutMs;
  const old = liveInstance(state);

  progress.phase(`starting ${options.app} ${release.id}`);
  const untracked = ciReaperEnvPresent();
  if (untracked.length) progress.info(`${release.id}'s processes start without ${untracked.join(', ')}: the CI runner would stop them by ${untracked.length > 1 ? 'these' : 'it'} when this job ends`);
  const spawned = spawnKeeper(paths, release, {
    app: options.app,
    host: options.host,
    port: options.port,
    instances: options.instances,
    gateTimeoutMs: options.healthTimeoutMs + 30_000,
  });
  state.instances.push(spawned.instance);
  writeState(paths.state, state);
  if (spawned.runtime.notCopied) {
    progress.warn(`${spawned.runtime.notCopied}: ${release.id}'s app processes load reuse-deploy's runtime from ${spawned.runtime.preload}, which must stay in place while ${release.id} runs (a crashed process is started again with it)`);
  }

  const signals = watchSignals(progress);
  try {
    let live: KeeperStatus;
    let msToHealthy = 0;
    try {
      // Asks systemd (for a CI job inside a service only) while the release boots.
      const inRunner = runnerUnitWarning(release.id);
      await signals.race(
        (async () => {
          const say = signals.progress;
          whileBooting();
          await waitForKeeper(spawned, 10_000);
          say.phase(`waiting for ${release.id} to listen on port ${options.port}`);
          const gated = await waitListening(spawned, options.port, deadline);
          const warning = await inRunner;
          if (warning) say.warn(warning);
          say.phase(`checking health of ${release.id} (${options.health ?? 'GET /'}) on its private socket`);
          const rule = { path: options.health, port: options.port };
          await waitHealthy(spawned, gated, rule, deadline, say);
          msToHealthy = Date.now() - started;
          await waitPortSettled(state, say);
        })(),
      );
      await signals.goLive();
      const warm = options.warmUpRequests > 0 ? { count: options.warmUpRequests, path: options.health } : null;
      progress.phase(`${release.id} is healthy; joining port ${options.port}${warm ? ` (warming it up with ${warm.count} request(s) per process first)` : ''}`);
      try {
        live = await keeperLive(spawned.instance.controlSocket, old ? [old.keeperPid] : [], warm);
      } catch (err) {
        throw (await keeperFailure(spawned)) ?? failure(spawned, 'RD_ERR_GO_LIVE', `The new version passed health but could not go live: ${(err as Error).message}`);
      }
    } catch (err) {
      signals.rollingBack();
      progress.phase(`stopping the new instance; ${old ? `${old.release} keeps serving` : 'nothing else was running'}`);
      await stopInstance(spawned.instance);
      state.instances = state.instances.filter((i) => i.id !== spawned.instance.id);
      writeState(paths.state, state);
      throw err;
    }
    return await handOver(paths, state, spawned.instance.id, old, live, options, progress, { started, msToHealthy });
  } finally {
    signals.dispose();
  }
}

/**
 * After the new instance accepts: record it as live, and drain (or park)
 * the one it replaced. Shared by a cutover and an unpark.
 */
async function handOver(
  paths: AppPaths,
  state: AppState,
  instanceId: string,
  old: Instance | undefined,
  live: KeeperStatus,
  options: CutoverOptions,
  progress: Progress,
  timing: { started: number; msToHealthy: number },
): Promise<CutoverResult> {
  if (live.steering && live.steering.unknown > 0) {
    progress.warn(
      `${live.steering.unknown} other listener(s) on port ${options.port} belong to no reuse-deploy instance of "${options.app}". ` +
        'They keep receiving their share of connections.',
    );
  }
  const instance = state.instances.find((i) => i.id === instanceId) as Instance;
  instance.role = 'live';
  if (old) old.role = options.parkMs > 0 ? 'parked' : 'draining';
  state.liveHistory.push(instance.release);
  writeState(paths.state, state);

  if (old) {
    progress.phase(
      options.parkMs > 0
        ? `parking ${old.release} for ${Math.round(options.parkMs / 1000)} s (closed to traffic; \`--previous\` brings it back at once)`
        : `draining ${old.release} (up to ${Math.round(options.drainTimeoutMs / 1000)} s, in the background)`,
    );
    // Idle keep-alive connections move to the new version's processes
    // (src/runtime/handoff.ts); a process that cannot take them has no socket there.
    const handoff = options.handoff ? Array.from({ length: instance.instances }, (_, slot) => handoffSocketPath(instance.probeSocketPrefix, slot)) : [];
    await keeperDrain(old.controlSocket, options.drainTimeoutMs, options.handshakeGraceMs, options.parkMs, handoff).catch((err) =>
      progress.warn(`could not reach the old instance ${old.id} to drain it: ${(err as Error).message}`),
    );
  }
  return {
    app: options.app,
    release: instance.release,
    instance: instance.id,
    pids: live.apps.map((a) => a.pid ?? -1),
    port: options.port,
    host: options.host,
    previousRelease: old?.release ?? null,
    msToHealthy: timing.msToHealthy,
    msTotal: Date.now() - timing.started,
    steering: live.steering,
  };
}

/** Instant rollback: a parked instance listens again (no boot, no health check), and the live one drains. */
export async function unpark(paths: AppPaths, state: AppState, parked: Instance, options: CutoverOptions, progress: Progress): Promise<CutoverResult> {
  const started = Date.now();
  const old = liveInstance(state);
  await waitPortSettled({ ...state, instances: state.instances.filter((i) => i.id !== parked.id) }, progress);
  // It listens again from the unpark on: a signal waits for the hand-over,
  // as in a cutover's go-live. Killed between the two, the next command's
  // repair would take it for a parked release that listens, and drain it.
  // Watched before the line that says so goes out.
  const signals = watchSignals(progress, `${parked.release} is coming back; the command ends once it has taken over`);
  await signals.goLive();
  progress.phase(`bringing parked ${parked.release} back on port ${options.port}`);
  try {
    let live: KeeperStatus;
    try {
      live = await keeperUnpark(parked.controlSocket, old ? [old.keeperPid] : []);
    } catch (err) {
      throw new DeployError('RD_ERR_GO_LIVE', `The parked instance ${parked.id} (${parked.release}) could not listen again: ${(err as Error).message}. ${old ? `${old.release} keeps serving.` : ''}`);
    }
    return await handOver(paths, state, parked.id, old, live, options, progress, { started, msToHealthy: 0 });
  } finally {
    signals.dispose();
  }
}
