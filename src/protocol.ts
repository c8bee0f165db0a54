// What the three roles say to each other.
//
//   CLI (src/deploy) --HTTP over a unix socket--> keeper (src/keeper)
//   keeper --Node IPC channel (fd 3)--> each app process (src/runtime)
//   CLI --health probe, unix socket--> app process, injected into the app's own server
//
// The keeper is one small process per running release. It binds the deploy
// socket, holds the fd for as long as the release serves, and passes it to
// its app processes as fd 4. Because the keeper keeps the socket open, an
// app process may crash and be restarted without the listening socket (and
// the connections queued in it) going away.

/** Environment variables the keeper gives each app process; the runtime removes them after reading. */
export const ENV = {
  keeperPid: 'REUSE_DEPLOY_KEEPER_PID',
  port: 'REUSE_DEPLOY_PORT',
  probe: 'REUSE_DEPLOY_PROBE_SOCKET',
  handoff: 'REUSE_DEPLOY_HANDOFF_SOCKET',
  live: 'REUSE_DEPLOY_LIVE',
} as const;

/** The fd number of the deploy socket inside every app process. */
export const APP_LISTEN_FD = 4;

/** keeper -> app */
export type KeeperMessage =
  | { rd: 'live' }
  /** Listen again on fd 4 after a drain: the process was parked. */
  | { rd: 'unpark' }
  /** `handoff`: the new version's hand-over sockets, for idle keep-alive connections (src/runtime/handoff.ts). */
  | { rd: 'drain'; timeoutMs: number; handoff: string[] }
  | { rd: 'stats' };

/** app -> keeper */
export type AppMessage =
  /**
   * nodeThreads: the threads Node had started before the app's code ran
   * (V8's compiler and GC helpers and the like; /proc/self/task when the
   * preload loaded, main thread excluded), for the keeper's priorities.
   */
  | { rd: 'gated'; tls: boolean; h2: boolean; nodeThreads?: number[] }
  | { rd: 'live' }
  | { rd: 'listen-error'; message: string; code?: string }
  | { rd: 'other-port'; port: number }
  /** The deploy port was asked for by node:cluster on behalf of workers (preload.ts, refuseCluster). */
  | { rd: 'cluster'; policy: 'round-robin' | 'none' }
  | { rd: 'listener-closed' }
  | { rd: 'drained'; forced: number; handedOver: number }
  | { rd: 'stats'; connections: number; inflight: number };

export function isAppMessage(m: unknown): m is AppMessage {
  return typeof m === 'object' && m !== null && typeof (m as { rd?: unknown }).rd === 'string';
}

/** Everything a keeper needs: one line of JSON the CLI writes to its stdin (deploy/prestart.ts). */
export interface KeeperConfig {
  id: string;
  app: string;
  release: string;
  entry: string;
  cwd: string;
  args: string[];
  nodeArgs: string[];
  host: string;
  port: number;
  instances: number;
  env: Record<string, string>;
  controlSocket: string;
  probeSocketPrefix: string;
  /** The release's log file, which is also the keeper's stdout and stderr. */
  logFile: string;
  /** The keeper stops itself if nobody makes it live within this time. */
  gateTimeoutMs: number;
  preload: string;
}

/**
 * The nice value of a booting release's session (its CFS autogroup) until
 * go-live; see setBootPriority in src/keeper/main.ts. A release still booting
 * after BOOT_RAISE_MS goes to BOOT_NICE_SLOW: at 19 its session's weight is
 * 15 against the live session's 1024, which on a host whose CPUs the live
 * version keeps busy leaves the boot ~1.5% of a CPU; at 10 it gets ~10%.
 */
export const BOOT_NICE = 19;
export const BOOT_NICE_SLOW = 10;
export const BOOT_RAISE_MS = 2_000;

/**
 * As root, the threads Node started in an app process before the app's code
 * ran (V8's JIT compiler and GC helpers) keep the boot nice value this long
 * after go-live; see setBootPriority in src/keeper/main.ts.
 */
export const HELPERS_YOUNG_MS = 10_000;

/**
 * The scheduler time slice an app process's main thread gets once it
 * serves: the shortest the kernel takes (0.1 ms; kernel 6.12+). See
 * shortenSlice in src/keeper/main.ts.
 */
export const SERVING_SLICE_NS = 100_000;

/**
 * The CLI's own nice value, once it has started the keeper (src/cli.ts). It
 * serves no traffic, and may share a session with processes that do.
 */
export const CLI_NICE = 19;

/** The private probe socket of app process `slot` of an instance (KeeperConfig.probeSocketPrefix). */
export function probeSocketPath(prefix: string, slot: number): string {
  return `${prefix}${slot}.sock`;
}

/**
 * Where app process `slot` of an instance takes keep-alive connections
 * handed over by the version it replaces (src/runtime/handoff.ts), once live.
 */
export function handoffSocketPath(prefix: string, slot: number): string {
  return `${prefix}${slot}-handoff.sock`;
}

export type AppState = 'starting' | 'gated' | 'live' | 'draining' | 'parked' | 'exited' | 'failed';

export interface AppStatus {
  slot: number;
  pid: number | null;
  state: AppState;
  tls: boolean;
  /** An HTTP/2-only server (http2.createServer / createSecureServer without allowHTTP1). */
  h2: boolean;
  startedAt: number;
  exitCode: number | null;
  signal: string | null;
  restarts: number;
  otherPorts: number[];
  connections: number;
  inflight: number;
  rssBytes: number;
}

/** CLI -> keeper, with go-live: warm the app processes up first (`--warm-up`; keeper/warm-up.ts). */
export interface WarmUpRequest {
  /** Requests of the health check per app process, one per connection. */
  count: number;
  /** The health check's path (--health), or null for GET /. */
  path: string | null;
}

export type KeeperPhase = 'booting' | 'gated' | 'live' | 'draining' | 'parked' | 'closed' | 'failed';

export interface KeeperStatus {
  id: string;
  release: string;
  pid: number;
  phase: KeeperPhase;
  /** Is the deploy socket still open (in the reuseport group once listening)? */
  listener: 'bound' | 'listening' | 'closed';
  startedAt: number;
  liveAt: number | null;
  apps: AppStatus[];
  error: { code: string; message: string } | null;
  /** Set while this release's steering program is attached (until the older listeners are gone). */
  steering: { index: number; groupSize: number; unknown: number } | null;
  /** While parked: when the keeper stops the release for good. */
  parkedUntil: number | null;
}
