// The keeper of a deploy, started before the CLI loads anything else.
//
// A deploy runs three Node processes one after the other: the CLI, the
// release's keeper and the app. Node takes tens of milliseconds to start on
// a small host, so the CLI starts the keeper first thing (src/cli.ts), and the
// keeper starts up while the CLI loads, takes the app's lock and snapshots
// the release. The keeper then waits for its configuration on stdin
// (src/keeper/main.ts). A command that ends without sending one (a usage
// error, a busy lock, a release that is already running or parked) just
// exits; the pipe closes, and the keeper exits too, having done nothing.
//
// This module loads only node:child_process, node:fs and node:path, so that
// the keeper starts as early as possible.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import type net from 'node:net';
import { KEEPER_MAIN } from '../package-files';
import { BOOT_NICE } from '../protocol';

/** Commands that never start a release (anything else may be a deploy or `start`). */
const NO_RELEASE = new Set(['status', 'stop', 'logs', 'releases', 'doctor', '--help', '-h', '--version', '-v']);

/**
 * Variables that change how any Node process starts, which the keeper does
 * not need but the app may: the keeper starts without them and hands them to
 * the app. NODE_EXTRA_CA_CERTS alone costs Node 20 about 30 ms per start
 * here (it parses the bundle at start-up; Node 22 reads it on first TLS
 * use), and the keeper makes no TLS connections. NODE_OPTIONS could make the
 * keeper load an app's --require hooks.
 */
const APP_ONLY_ENV = ['NODE_EXTRA_CA_CERTS', 'NODE_OPTIONS'];

/**
 * Variables by which CI runners find the processes a job left behind, to
 * kill them when the job ends: every process whose environment holds the
 * job's value. A release started from a job on the host it deploys to must
 * outlive the job, so its keeper and app processes start without them.
 * - RUNNER_TRACKING_ID: GitHub Actions self-hosted runners ("Cleaning up
 *   orphan processes", Runner.Worker's JobExtension);
 * - VSTS_PROCESS_LOOKUP_ID: Azure Pipelines agents (the same cleanup);
 * - JENKINS_NODE_COOKIE: Jenkins Pipeline steps; JENKINS_SERVER_COOKIE and
 *   HUDSON_SERVER_COOKIE: Jenkins freestyle builds. Jenkins' ProcessTree
 *   kills a process only when every one of a build's characteristic
 *   variables matches (hasMatchingEnvVars), so leaving out the cookie is
 *   enough and BUILD_ID, which apps may read, stays.
 * An `--env` that sets one of them puts it back: that is asked for.
 */
export const CI_REAPER_ENV = ['RUNNER_TRACKING_ID', 'VSTS_PROCESS_LOOKUP_ID', 'JENKINS_NODE_COOKIE', 'JENKINS_SERVER_COOKIE', 'HUDSON_SERVER_COOKIE'];

/** The CI runner variables of this command's environment that the release's processes start without. */
export function ciReaperEnvPresent(): string[] {
  return CI_REAPER_ENV.filter((name) => process.env[name] !== undefined);
}

/** What the keeper's environment leaves out and the app's must put back. */
export function appOnlyEnv(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of APP_ONLY_ENV) if (process.env[name] !== undefined) out[name] = process.env[name];
  return out;
}

function startKeeper(): ChildProcess {
  const env = { ...process.env };
  for (const name of [...APP_ONLY_ENV, ...CI_REAPER_ENV]) delete env[name];
  const child = spawn(process.execPath, [KEEPER_MAIN], {
    cwd: '/', // it must not keep any app directory busy; every path it gets is absolute
    detached: true, // setsid: outlives the CLI, and is not hit by its terminal's signals
    // stdout and stderr move to the release's log file once the keeper knows it.
    stdio: ['pipe', 'ignore', 'ignore'],
    env,
  });
  // Its session exists once spawn() returns (setsid runs before exec): lower
  // the session's priority now, so that the keeper's own start-up already
  // yields to the live version (the keeper sets it again, and resets it at go-live).
  try {
    fs.writeFileSync(`/proc/${child.pid}/autogroup`, String(BOOT_NICE));
  } catch {
    // no autogroup, or the 100 ms rate limit: the keeper sets it itself
  }
  child.on('error', () => undefined); // seen by the caller as an early exit
  child.stdin?.on('error', () => undefined); // EPIPE: it exited; seen the same way
  child.unref();
  (child.stdin as net.Socket | null)?.unref(); // the pipe must not keep the CLI running
  return child;
}

let waiting: ChildProcess | null = null;

/** Starts a keeper at once when `argv` may be a command that starts a release. */
export function prestartKeeper(argv: string[]): void {
  if (argv.some((a) => NO_RELEASE.has(a))) return;
  waiting = startKeeper();
}

/** The keeper started ahead, or a new one: it waits for its configuration on stdin. */
export function takeKeeper(): ChildProcess {
  const child = waiting && waiting.exitCode === null && waiting.signalCode === null ? waiting : startKeeper();
  waiting = null;
  return child;
}
