// The CLI's commands: cac wiring only: parse flags, call into src/deploy,
// print the result, exit with the documented code (src/errors.ts). Loaded by
// src/cli.ts once the keeper of a deploy is starting.
import fs from 'node:fs';
import path from 'node:path';
import { cac } from 'cac';
import { DeployError, EXIT, toDeployError, usageError } from './errors';
import { cpuCount, deployCommand, releasesCommand, statusCommand, stopCommand, type DeployOutcome, type DeployPolicy, type PolicyFromRelease, type StatusOutcome } from './deploy/commands';
import { flagOf, parseDuration, parseEnv, parseHealthPath, parseInstances, parseKeep, parsePort, parseWarmUp, resolveHost } from './deploy/options';
import { defaultStateDir } from './deploy/paths';
import { createProgress, type Progress } from './deploy/progress';
import { checkedAppName, resolveEntry } from './deploy/app';
import { blameConfig, loadConfig, type LoadedConfig } from './deploy/config';
import { formatReleases, formatStatus } from './deploy/format';
import { PACKAGE_JSON } from './package-files';

const pkg = JSON.parse(fs.readFileSync(PACKAGE_JSON, 'utf8')) as { version: string };

interface GlobalFlags {
  json?: boolean;
  quiet?: boolean;
  stateDir?: string;
  name?: string;
  wait?: boolean;
  drainTimeout?: string;
}

function stateDirOf(flags: GlobalFlags): string {
  return flags.stateDir ? path.resolve(flags.stateDir) : defaultStateDir();
}

/** --name, else the only app in the state dir, else the package.json name in the current directory. */
function nameOf(flags: GlobalFlags): string {
  if (flags.name) return checkedAppName(String(flags.name));
  const dir = stateDirOf(flags);
  let apps: string[] = [];
  try {
    apps = fs.readdirSync(dir).filter((d) => fs.existsSync(path.join(dir, d, 'state.json')));
  } catch {
    // no state dir yet
  }
  if (apps.length === 1) return apps[0]!;
  try {
    const name = (JSON.parse(fs.readFileSync('package.json', 'utf8')) as { name?: string }).name;
    if (name) return name.replace(/^@/, '').replace(/[^a-zA-Z0-9._-]+/g, '-');
  } catch {
    // no package.json here
  }
  throw usageError(
    apps.length === 0
      ? `No apps are deployed in ${dir}. Pass --state-dir if they were deployed with another one.`
      : `Several apps are deployed (${apps.join(', ')}). Say which with --name.`,
  );
}

function printResult(flags: GlobalFlags, result: unknown, line: string): void {
  if (flags.json) process.stdout.write(`${JSON.stringify({ ok: true, ...(result as object) })}\n`);
  else if (!flags.quiet) process.stdout.write(`${line}\n`);
}

function fail(flags: GlobalFlags, err: unknown, progress?: Progress): never {
  progress?.end(false);
  const e = toDeployError(err);
  if (flags.json) {
    process.stdout.write(`${JSON.stringify({ ok: false, error: { code: e.code, exitCode: e.exitCode, message: e.message, logTail: e.logTail ?? null, ...e.details } })}\n`);
  } else {
    let text = `reuse-deploy: ${e.message} [${e.code}]\n`;
    if (e.logTail) text += `--- last lines of the new instance's log ---\n${e.logTail}\n---\n`;
    if (e.code === 'RD_ERR_INTERNAL' && e.cause instanceof Error && e.cause.stack) text += `${e.cause.stack}\n`;
    process.stderr.write(text);
  }
  process.exit(e.exitCode);
}

async function run<T>(flags: GlobalFlags, fn: (progress: Progress) => Promise<T>, line: (result: T) => string): Promise<void> {
  const progress = await createProgress(flags);
  try {
    const result = await fn(progress);
    progress.end(true);
    printResult(flags, result, line(result));
    process.exit(EXIT.ok);
  } catch (err) {
    fail(flags, err, progress);
  }
}

function deploySummary(r: DeployOutcome): string {
  if (r.alreadyRunning) return `${r.app} ${r.release} is already running (pid ${r.pids.join(', ')})`;
  if (r.unparked) return `brought parked ${r.app} ${r.release} back on port ${r.port} (pid ${r.pids.join(', ')}, replaced ${r.previousRelease ?? 'nothing'}) in ${r.msTotal} ms`;
  const replaced = r.previousRelease ? `, replaced ${r.previousRelease}` : '';
  const pruned = r.pruned.length ? `; pruned ${r.pruned.join(', ')}` : '';
  return `deployed ${r.app} ${r.release} on ${r.host.includes(':') ? `[${r.host}]` : r.host}:${r.port} (pid ${r.pids.join(', ')}${replaced}): healthy in ${r.msToHealthy} ms, total ${r.msTotal} ms${pruned}`;
}

/** The deploy's own settings from the flags (as merged with a config file), with their defaults. */
function policyOf(flags: Record<string, unknown>): DeployPolicy {
  return {
    healthTimeoutMs: parseDuration('health-timeout', flags.healthTimeout, 30_000, false),
    drainTimeoutMs: parseDuration('drain-timeout', flags.drainTimeout, 30_000, false),
    handshakeGraceMs: parseDuration('handshake-grace', flags.handshakeGrace, 1_000),
    handoff: flags.handoff !== false,
    warmUpRequests: parseWarmUp(flags.warmUp),
    parkMs: parseDuration('park', flags.park, 0),
    keep: parseKeep(flags.keep),
  };
}

/** `start` boots the live release with nothing to drain, and never prunes. */
const neverPrune = (policy: DeployPolicy): DeployPolicy => ({ ...policy, keep: Number.MAX_SAFE_INTEGER });

/**
 * Puts the config file's values into `flags` where no flag was given, and
 * returns the flags (cac's names) whose value the file gave. `only`: just
 * these.
 */
function underFlags(flags: Record<string, unknown>, config: LoadedConfig, only?: readonly string[]): string[] {
  const used: string[] = [];
  for (const [key, value] of Object.entries(config.flags)) {
    if (only && !only.includes(key)) continue;
    if (flags[key] !== undefined) continue;
    flags[key] = value;
    used.push(key);
  }
  return used;
}

/**
 * A kept release's deploy settings: the flags given now over the config
 * file in its snapshot (what it was deployed with). Its run settings (env,
 * instances, health path, node and app arguments) are recorded with the
 * release instead (deploy/commands.ts, keptRelease). A value there that
 * does not parse is left out, and said in `ignored`, rather than failing a
 * rollback: it can have been valid under an older reuse-deploy, or hidden
 * at deploy time by a flag given then. The flags are checked already.
 */
function policyFromConfig(flags: Record<string, unknown>, root: string): PolicyFromRelease {
  const config = loadConfig(root);
  const merged = { ...flags };
  const ignored: string[] = [];
  for (const key of underFlags(merged, config, ['healthTimeout', 'drainTimeout', 'handshakeGrace', 'handoff', 'warmUp', 'park', 'keep'])) {
    try {
      policyOf({ ...flags, [key]: merged[key] });
    } catch (err) {
      ignored.push((blameConfig(err, config.file, [key]) as Error).message);
      merged[key] = undefined;
    }
  }
  return { policy: policyOf(merged), file: config.file, ignored };
}

const cli = cac('reuse-deploy');

const deploy = cli
  .command('[entry] [...args]', 'Deploy a new version of a Node.js server with zero downtime')
  .option('--port <port>', 'TCP port the app serves on (required)')
  .option('--host <address>', 'Address to bind (default: the recorded one; for a first deploy :: dual-stack, as Node\'s listen(port))')
  .option('--name <name>', 'App name (default: nearest package.json name, else the directory name)')
  .option('--root <dir>', 'App directory (default: the directory of the nearest package.json above the entry)')
  .option('--health <path>', 'Health endpoint; needs a 2xx (default: GET / with any status below 500)')
  .option('--health-timeout <duration>', 'Time to boot, listen and pass health (default: 30s)')
  .option('--drain-timeout <duration>', 'Time the old version gets to finish its requests (default: 30s)')
  .option('--handshake-grace <duration>', 'Wait for handshakes in flight to the old listener before it closes (default: 1s)')
  .option('--no-handoff', 'Close the old version\'s idle keep-alive connections (clients reconnect) instead of handing them to the new one, as it does by default (--handoff: hand them over even if the config file says "handoff": false)')
  .option('--warm-up <n>', 'Requests of the health check sent to each new app process at go-live, before it takes traffic, to warm up its JIT (default: 0, none)')
  .option('--instances <n>', 'App processes per release, or "max" for one per CPU (default: 1)')
  .option('--env <KEY=VALUE>', 'Environment variable for the app (repeatable)')
  .option('--node-arg <arg>', 'Extra argument for node, e.g. --node-arg=--max-old-space-size=512 (repeatable)')
  .option('--state-dir <dir>', 'State directory (default: $REUSE_DEPLOY_HOME, $XDG_STATE_HOME/reuse-deploy, ~/.local/state/reuse-deploy, /var/lib/reuse-deploy as root)')
  .option('--previous', 'Roll back: redeploy the release that was live before the current one, through the health gate')
  .option('--release <id>', 'Redeploy a kept release (see `reuse-deploy releases`)')
  .option('--park <duration>', 'Keep the replaced version running, closed to traffic, this long; --previous then brings it back at once')
  .option('--keep <n>', 'Releases to keep; the live and the previous one are always kept (default: 5)')
  .option('--wait', 'Queue behind another command working on the same app instead of failing')
  .option('--json', 'Print one JSON object on stdout and nothing else there')
  .option('--quiet', 'Print nothing but warnings and errors')
  .example('reuse-deploy ./dist/server.js --port 8080 --host 127.0.0.1')
  .example('reuse-deploy ./dist/server.js --port 443 --health /healthz --env NODE_ENV=production')
  .example('reuse-deploy --previous --name hello              # roll back')
  .example('reuse-deploy --release r3 --name hello            # redeploy a kept release')
  .example('reuse-deploy ./dist/server.js --port 8080 --park 10m   # keep the old version parked for instant rollback')
  .example('reuse-deploy ./server.js --port 3000 -- --config prod.json   # args after -- go to the app')
  .action(async (entry: string | undefined, args: string[], flags: GlobalFlags & Record<string, unknown>) => {
    const sources = [entry !== undefined, Boolean(flags.previous), flags.release !== undefined].filter(Boolean).length;
    if (sources === 0 && process.argv.length <= 2) {
      cli.outputHelp();
      process.exit(EXIT.usage);
    }
    await run(
      flags,
      async (progress) => {
        if (sources > 1) throw usageError('Give one of: an entry file, --previous, or --release <id>.');
        if (sources === 0) {
          throw usageError('Nothing to deploy: give an entry file (reuse-deploy ./dist/server.js --port 8080), --previous to roll back, or --release <id>. Run reuse-deploy --help for more.');
        }
        if (entry !== undefined && !/[./]/.test(entry) && !fs.existsSync(entry)) {
          throw usageError(
            `Unknown command "${entry}". Commands: status, stop, start, logs, releases, doctor; or pass an entry file such as ./server.js. Run reuse-deploy --help.`,
          );
        }
        for (const [flag, value] of Object.entries(flags)) {
          if (Array.isArray(value) && !['env', 'nodeArg', '--'].includes(flag)) {
            throw usageError(`${flagOf(flag)} was given more than once (${value.join(', ')}); give it once.`);
          }
        }
        let configFile: string | null = null;
        let fromConfig: string[] = [];
        if (entry !== undefined) {
          // Defaults from the app's config file; flags given on the command line win.
          const config = loadConfig(resolveEntry(entry, flags.root === undefined ? undefined : String(flags.root)).root);
          fromConfig = underFlags(flags, config);
          configFile = config.file;
          if (config.file) progress.info(`using settings from ${config.file}`);
        }
        const list = (v: unknown): string[] | undefined => (v === undefined ? undefined : ([] as unknown[]).concat(v).map(String));
        const appArgs = [...args, ...((flags['--'] as string[] | undefined) ?? [])].map(String);
        try {
          return await deployCommand(
            {
              source:
                entry !== undefined
                  ? { kind: 'entry', entry, root: flags.root === undefined ? undefined : String(flags.root) }
                  : flags.previous
                    ? { kind: 'previous' }
                    : { kind: 'release', id: String(flags.release) },
              name: entry !== undefined ? (flags.name === undefined ? undefined : String(flags.name)) : nameOf(flags),
              host: flags.host === undefined ? undefined : await resolveHost(flags.host),
              port: flags.port === undefined && entry === undefined ? undefined : parsePort(flags.port),
              instances: flags.instances === undefined ? undefined : parseInstances(flags.instances, cpuCount()),
              health: flags.health === undefined ? undefined : parseHealthPath(flags.health),
              env: flags.env === undefined ? undefined : parseEnv(flags.env),
              args: appArgs.length > 0 || entry !== undefined ? appArgs : undefined,
              nodeArgs: list(flags.nodeArg),
              ...policyOf(flags),
              stateDir: stateDirOf(flags),
              wait: Boolean(flags.wait),
              policyFromRelease: entry === undefined ? (root) => policyFromConfig(flags, root) : undefined,
            },
            progress,
          );
        } catch (err) {
          throw blameConfig(err, configFile, fromConfig);
        }
      },
      deploySummary,
    );
  });
// cac gives a --no-x option the default true, and prints "(default: true)"
// beside "--no-handoff", which reads as the opposite. Without it, handoff is
// undefined unless --no-handoff (false) or --handoff (true) was given, so a
// config file's "handoff" applies only when neither was.
for (const option of deploy.options) if (option.negated) option.config.default = undefined;

cli
  .command('start', 'Start the recorded live release again, e.g. after a reboot or `stop` (a no-op if it runs)')
  .option('--name <name>', 'App name')
  .option('--state-dir <dir>', 'State directory')
  .option('--health-timeout <duration>', 'Time to boot, listen and pass health (default: 30s)')
  .option('--wait', 'Queue behind another command working on the same app')
  .option('--json', 'Print one JSON object')
  .option('--quiet', 'Print nothing but warnings and errors')
  .example('reuse-deploy start --name hello')
  .action(async (flags: GlobalFlags & Record<string, unknown>) => {
    await run(
      flags,
      (progress) =>
        deployCommand(
          {
            source: { kind: 'current' },
            name: nameOf(flags),
            ...neverPrune(policyOf({ healthTimeout: flags.healthTimeout })),
            stateDir: stateDirOf(flags),
            wait: Boolean(flags.wait),
            policyFromRelease: (root) => {
              const found = policyFromConfig({ healthTimeout: flags.healthTimeout }, root);
              return { ...found, policy: neverPrune(found.policy) };
            },
          },
          progress,
        ),
      deploySummary,
    );
  });

cli
  .command('logs', 'Show the log of the live release (or --release), with -f to follow it')
  .option('--name <name>', 'App name')
  .option('--state-dir <dir>', 'State directory')
  .option('--release <id>', 'Show this release\'s log instead')
  .option('-n, --lines <n>', 'Lines to show (default: 50)')
  .option('-f, --follow', 'Keep printing new lines until interrupted; without --release, a deploy meanwhile moves it to the new release\'s log')
  .example('reuse-deploy logs --name hello -f')
  .action(async (flags: GlobalFlags & Record<string, unknown>) => {
    try {
      const lines = flags.lines === undefined ? 50 : Number(flags.lines);
      if (!Number.isInteger(lines) || lines < 0) throw usageError(`--lines ${JSON.stringify(String(flags.lines))} is not valid. Use a whole number of lines, e.g. -n 200.`);
      const { liveLogFile, logFileFor, printLogs } = require('./deploy/logs') as typeof import('./deploy/logs'); // loaded on use, like doctor
      const [stateDir, name] = [stateDirOf(flags), nameOf(flags)];
      const release = flags.release === undefined ? undefined : String(flags.release);
      const file = logFileFor(stateDir, name, release);
      // Without --release, -f follows the app: a deploy meanwhile moves it to the new release's log.
      const follow = { live: release === undefined ? () => liveLogFile(stateDir, name) : undefined, note: (text: string) => process.stderr.write(`${text}\n`) };
      await printLogs(file, { lines, follow: Boolean(flags.follow) }, (text) => process.stdout.write(text), follow);
    } catch (err) {
      fail(flags, err);
    }
  });

cli
  .command('releases', 'List the kept releases of an app')
  .option('--name <name>', 'App name')
  .option('--state-dir <dir>', 'State directory')
  .option('--json', 'Print one JSON object')
  .example('reuse-deploy releases --name hello')
  .action(async (flags: GlobalFlags) => {
    await run(flags, async () => releasesCommand(stateDirOf(flags), nameOf(flags)), formatReleases);
  });

cli
  .command('status', 'Show the app, its port, the live release and every instance')
  .option('--name <name>', 'App name (default: the only deployed app, or the package.json name here)')
  .option('--state-dir <dir>', 'State directory')
  .option('--json', 'Print one JSON object')
  .example('reuse-deploy status --name hello --json')
  .action(async (flags: GlobalFlags) => {
    await run(flags, async () => statusCommand(stateDirOf(flags), nameOf(flags), 30_000), (r: StatusOutcome) => formatStatus(r));
  });

cli
  .command('stop', 'Drain and stop every instance of the app (its releases stay recorded)')
  .option('--name <name>', 'App name')
  .option('--state-dir <dir>', 'State directory')
  .option('--drain-timeout <duration>', 'Time the app gets to finish its requests (default: 30s)')
  .option('--wait', 'Queue behind another command working on the same app')
  .option('--json', 'Print one JSON object')
  .option('--quiet', 'Print nothing but warnings and errors')
  .example('reuse-deploy stop --name hello')
  .action(async (flags: GlobalFlags) => {
    await run(
      flags,
      (progress) => stopCommand(stateDirOf(flags), nameOf(flags), parseDuration('drain-timeout', flags.drainTimeout, 30_000, false), Boolean(flags.wait), progress),
      (r) => `stopped ${r.app}: ${r.stopped.length} instance(s) drained${r.forced.length ? `, ${r.forced.length} killed after the timeout` : ''}`,
    );
  });

cli
  .command('doctor', 'Check that this host can run zero-downtime deploys, and say how to fix what is missing')
  .option('--port <port>', 'Also check that this port may be bound')
  .option('--state-dir <dir>', 'State directory')
  .option('--json', 'Print one JSON object')
  .example('reuse-deploy doctor --port 443')
  .action(async (flags: GlobalFlags & Record<string, unknown>) => {
    try {
      // Loaded on use: a deploy should not pay for what it does not run.
      const { doctorCommand, formatDoctor } = require('./deploy/doctor') as typeof import('./deploy/doctor');
      const report = await doctorCommand({ stateDir: stateDirOf(flags), port: flags.port === undefined ? undefined : parsePort(flags.port) });
      if (flags.json) process.stdout.write(`${JSON.stringify(report)}\n`);
      else process.stdout.write(`${formatDoctor(report)}\n`);
      process.exit(report.ok ? EXIT.ok : EXIT.environment);
    } catch (err) {
      fail(flags, err);
    }
  });

// The same meanings as the README's "Exit codes" table; a CI step can branch on them.
const EXIT_CODES = [
  [EXIT.ok, 'done'],
  [EXIT.failed, 'the deploy (or rollback, stop, start) failed, or SIGINT/SIGTERM/SIGHUP came before go-live; whatever was live keeps serving'],
  [EXIT.usage, 'invalid flags or input; nothing was started'],
  [EXIT.locked, "another reuse-deploy command holds the app's lock (--wait queues behind it)"],
  [EXIT.environment, 'the host cannot run deploys (state dir, native addon); `reuse-deploy doctor` says why'],
] as const;

cli.help((sections) => [
  ...sections,
  { title: 'Exit codes', body: EXIT_CODES.map(([code, meaning]) => `  ${code}  ${meaning}`).join('\n') + '\n  Every error names its RD_ERR_ code and what to do; the README lists them all.' },
]);
cli.version(pkg.version);

/**
 * cac reads a value that starts with '-' as an option: `--node-arg --inspect`
 * needs the '=' form, and `--warm-up -1` comes out as "Unknown option `-1`".
 */
function unknownOptionHint(argv: string[]): string {
  const i = argv.findIndex((a, k) => a === '--node-arg' && argv[k + 1]?.startsWith('-'));
  if (i >= 0) return `. To pass ${argv[i + 1]} to node, write --node-arg=${argv[i + 1]} (with "=").`;
  const k = argv.findIndex((a, n) => n > 0 && /^-\d/.test(a) && argv[n - 1]!.startsWith('-'));
  return k < 0 ? '' : `: ${argv[k - 1]} ${argv[k]} has a negative value, which no option takes. Give ${argv[k - 1]} a value of 0 or more.`;
}

/**
 * mri (cac's parser) turns a value that looks like a number into one:
 * `--name 007` would deploy app "7", `--root 2024` a directory "2024" only
 * by luck, and `--port 0x50` would be port 80. Every such value is read
 * again as typed; the flags' own parsers then judge the text.
 */
function keepTyped(options: Record<string, unknown>, argv: string[]): void {
  const end = argv.indexOf('--') < 0 ? argv.length : argv.indexOf('--');
  for (const [key, value] of Object.entries(options)) {
    if (typeof value !== 'number') continue;
    const flag = flagOf(key);
    const typed: string[] = [];
    for (let i = 2; i < end; i++) {
      if (argv[i] === flag && i + 1 < end) typed.push(argv[i + 1]!);
      else if (argv[i]!.startsWith(`${flag}=`)) typed.push(argv[i]!.slice(flag.length + 1));
    }
    if (typed.length === 1) options[key] = typed[0];
  }
}

try {
  cli.parse(process.argv, { run: false });
  keepTyped(cli.options, process.argv);
  if (cli.matchedCommand === undefined && !cli.options.help && !cli.options.version) {
    const unknown = cli.args[0];
    throw usageError(`Unknown command ${JSON.stringify(unknown)}. Run reuse-deploy --help.`);
  }
  void Promise.resolve(cli.runMatchedCommand()).catch((err: unknown) => fail(cli.options as GlobalFlags, err));
} catch (err) {
  const message = (err as Error).message;
  const hint = message.startsWith('Unknown option')
    ? unknownOptionHint(process.argv)
    : message.startsWith('Unused args') && cli.matchedCommand?.name
      ? `. ${cli.matchedCommand.name} takes no arguments; to name the app, write --name ${String(cli.args[0])}`
      : '';
  const e = err instanceof DeployError ? err : usageError(message + hint);
  fail(cli.options as GlobalFlags, e);
}
