// Every failure the CLI reports, with a stable code and a documented exit
// code. The README's "Exit codes" table lists the same codes, written by
// hand (test/errors.test.ts checks that they agree).

export const EXIT = {
  ok: 0,
  /** The deploy (or rollback, stop, start) did not happen; whatever was live keeps serving. */
  failed: 1,
  /** Bad flags or input; nothing was started. */
  usage: 2,
  /** Another reuse-deploy command holds the app's lock. */
  locked: 3,
  /** The host cannot run deploys: state dir, addon, permissions. */
  environment: 4,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

interface CatalogueEntry {
  exit: ExitCode;
  summary: string;
}

export const CATALOGUE = {
  RD_ERR_USAGE: { exit: EXIT.usage, summary: 'A flag or argument has an invalid value.' },
  RD_ERR_ENTRY_NOT_FOUND: { exit: EXIT.usage, summary: 'The entry file does not exist or is not a file.' },
  RD_ERR_PORT_CHANGED: { exit: EXIT.usage, summary: 'The app is live on another host:port than this deploy asks for.' },
  RD_ERR_OTHER_APP: { exit: EXIT.usage, summary: 'The port is served by a release of another app name or state directory; deploy under that one, or stop it.' },
  RD_ERR_NO_STATE: { exit: EXIT.usage, summary: 'No deploy has been recorded under this app name.' },
  RD_ERR_NO_PREVIOUS: { exit: EXIT.usage, summary: '--previous was asked for, but no other release has been live.' },
  RD_ERR_RELEASE_NOT_FOUND: { exit: EXIT.usage, summary: 'The release named with --release is not kept, or `logs` found no log for it (see `reuse-deploy releases`).' },
  RD_ERR_SNAPSHOT: { exit: EXIT.failed, summary: 'The app directory could not be copied into the release store.' },
  RD_ERR_BOOT_CRASH: { exit: EXIT.failed, summary: 'The new version exited before it took traffic (syntax error, crash on boot or while going live).' },
  RD_ERR_NEVER_LISTENED: { exit: EXIT.failed, summary: 'The new version did not listen on the deploy port in time.' },
  RD_ERR_HEALTH_STATUS: { exit: EXIT.failed, summary: 'The health check kept answering with a failing status.' },
  RD_ERR_HEALTH_TIMEOUT: { exit: EXIT.failed, summary: 'The health check got no answer in time.' },
  RD_ERR_PORT_TAKEN: { exit: EXIT.failed, summary: 'The port is held by a socket without SO_REUSEPORT.' },
  RD_ERR_PORT_OTHER_USER: { exit: EXIT.failed, summary: 'The port is held by a socket of another user.' },
  RD_ERR_PORT_PRIVILEGED: { exit: EXIT.failed, summary: 'The port is privileged and this user may not bind it.' },
  RD_ERR_ADDRESS: { exit: EXIT.failed, summary: 'The host address cannot be bound on this machine.' },
  RD_ERR_CLUSTER: { exit: EXIT.failed, summary: 'The app serves the deploy port from node:cluster workers; run the server in the process itself and use --instances.' },
  RD_ERR_GO_LIVE: { exit: EXIT.failed, summary: 'The new version passed health but could not start accepting.' },
  RD_ERR_CANCELLED: { exit: EXIT.failed, summary: 'SIGINT, SIGTERM or SIGHUP came before the new version went live; it was stopped.' },
  RD_ERR_KEEPER: { exit: EXIT.failed, summary: 'The instance supervisor did not start, or did not answer within 10 s of starting.' },
  RD_ERR_LOCKED: { exit: EXIT.locked, summary: 'Another reuse-deploy command is working on this app.' },
  RD_ERR_STATE_DIR: { exit: EXIT.environment, summary: 'The state directory cannot be created, written or trusted.' },
  RD_ERR_ADDON: { exit: EXIT.environment, summary: 'The native addon cannot be loaded.' },
  RD_ERR_SOCKET_PATH: { exit: EXIT.environment, summary: 'A control socket path would be longer than a unix socket allows.' },
  RD_ERR_INTERNAL: { exit: EXIT.failed, summary: 'An unexpected error; the message has the details.' },
} as const satisfies Record<string, CatalogueEntry>;

export type ErrorCode = keyof typeof CATALOGUE;

export interface DeployErrorOptions {
  cause?: unknown;
  /** Last lines of the new instance's log, shown under the message. */
  logTail?: string;
  /** Extra structured facts for --json output. */
  details?: Record<string, unknown>;
}

/** The one error type the CLI reports. `message` says what was wrong and what to do. */
export class DeployError extends Error {
  readonly code: ErrorCode;
  readonly exitCode: ExitCode;
  readonly logTail: string | undefined;
  readonly details: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, options: DeployErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'DeployError';
    this.code = code;
    this.exitCode = CATALOGUE[code].exit;
    this.logTail = options.logTail;
    this.details = options.details ?? {};
  }
}

export function usageError(message: string): DeployError {
  return new DeployError('RD_ERR_USAGE', message);
}

/** Wraps anything thrown into a DeployError, keeping DeployErrors as they are. */
export function toDeployError(err: unknown): DeployError {
  if (err instanceof DeployError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new DeployError('RD_ERR_INTERNAL', message, { cause: err });
}
