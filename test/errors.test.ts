// Every catalogue entry (src/errors.ts) that the CLI can reach, through the
// real CLI: the code in stderr (and in the --json object on stdout), the
// documented exit code, and, where a live app could be hurt, that v1 keeps
// serving with the same keeper and app processes.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import { CATALOGUE, type ErrorCode } from '../src/errors';
import { listenersOn } from '../src/sys/proc-net';
import {
  cleanup,
  CLI,
  type CliResult,
  fixture,
  freePort,
  get,
  holdPortPlainly,
  processesUnder,
  processGroup,
  readAppState,
  remember,
  ROOT,
  runCli,
  runProcess,
  spawnInTty,
  tempStateDir,
  waitUntil,
} from './helpers';

const isRoot = process.getuid?.() === 0;
const NOBODY = 65534;

/** Child processes a test started itself (holders, background CLIs); killed by pid. */
const children: ChildProcess[] = [];
const extraPids: number[] = [];
const tempDirs: string[] = [];

function killOurs(): void {
  for (const pid of extraPids.splice(0)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  for (const child of children.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
}

after(() => {
  killOurs();
  for (const dir of tempDirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

interface JsonError {
  ok: false;
  error: { code: string; exitCode: number; message: string; logTail: string | null; [k: string]: unknown };
}

/**
 * Runs the CLI and checks the code and exit code. Text mode: "[CODE]" ends
 * the message on stderr and stdout stays empty. --json: exactly one JSON
 * object on stdout.
 */
async function expectError(args: string[], code: ErrorCode, options: { json?: boolean; message?: RegExp; env?: NodeJS.ProcessEnv; run?: (args: string[]) => Promise<CliResult> } = {}): Promise<{ r: CliResult; json: JsonError | null }> {
  const exit = CATALOGUE[code].exit;
  const full = options.json ? [...args, '--json'] : args;
  const r = await (options.run ?? ((a) => runCli(a, { env: options.env })))(full);
  const where = `reuse-deploy ${full.join(' ')}\n--- stdout ---\n${r.stdout}\n--- stderr ---\n${r.stderr}`;
  assert.equal(r.code, exit, `exit code of ${code}\n${where}`);
  if (!options.json) {
    assert.match(r.stderr, new RegExp(`\\[${code}\\]`), where);
    assert.equal(r.stdout, '', where);
    if (options.message) assert.match(r.stderr, options.message, where);
    return { r, json: null };
  }
  const lines = r.stdout.trim().split('\n');
  assert.equal(lines.length, 1, `one JSON line on stdout\n${where}`);
  const json = JSON.parse(lines[0]!) as JsonError;
  assert.equal(json.ok, false);
  assert.equal(json.error.code, code, where);
  assert.equal(json.error.exitCode, exit);
  assert.equal(typeof json.error.message, 'string');
  if (options.message) assert.match(json.error.message, options.message, where);
  return { r, json };
}

/** Both modes, one after the other. */
async function expectBoth(args: string[], code: ErrorCode, options: { message?: RegExp; env?: NodeJS.ProcessEnv } = {}): Promise<JsonError> {
  await expectError(args, code, options);
  return (await expectError(args, code, { ...options, json: true })).json!;
}

async function assertNothingRuns(stateDir: string, port: number): Promise<void> {
  await waitUntil(() => processesUnder(stateDir).length === 0, 5_000, `no process left running in ${stateDir}`);
  assert.deepEqual(listenersOn(port), [], `nobody listens on ${port}`);
  for (const name of fs.existsSync(stateDir) ? fs.readdirSync(stateDir) : []) {
    assert.deepEqual(readAppState(stateDir, name)?.instances ?? [], [], `no instance of ${name} recorded`);
  }
}

/** A v1 deployed and serving; tests check after each failure that it is untouched. */
class V1 {
  stateDir = tempStateDir();
  port = 0;
  keeper = 0;
  pids: number[] = [];

  async deploy(): Promise<void> {
    this.port = await freePort();
    const r = await runCli([fixture('app.js'), '--port', String(this.port), '--host', '127.0.0.1', '--name', 'app', '--state-dir', this.stateDir, '--env', 'APP_VERSION=v1']);
    assert.equal(r.code, 0, r.stderr);
    remember(this.stateDir, 'app');
    const state = readAppState(this.stateDir, 'app')!;
    this.keeper = state.instances[0]!.keeperPid;
    this.pids = processGroup(this.keeper).sort((a, b) => a - b);
    assert.equal(this.pids.length, 2, 'keeper and one app process');
  }

  /** Deploy arguments for the v1 app; a --port in `extra` replaces v1's (a repeated flag would become a list). */
  args(entry: string, ...extra: string[]): string[] {
    const port = extra.includes('--port') ? [] : ['--port', String(this.port)];
    return [fixture(entry), ...port, '--host', '127.0.0.1', '--name', 'app', '--state-dir', this.stateDir, ...extra];
  }

  async untouched(): Promise<void> {
    const state = readAppState(this.stateDir, 'app') as { instances: { keeperPid: number; role: string; release: string }[]; liveHistory: string[] };
    assert.deepEqual(
      state.instances.map((i) => [i.keeperPid, i.role, i.release]),
      [[this.keeper, 'live', 'r1']],
      'only v1 is recorded, live',
    );
    assert.deepEqual(state.liveHistory, ['r1']);
    assert.deepEqual(processGroup(this.keeper).sort((a, b) => a - b), this.pids, 'same keeper and app pids');
    // Nothing else of this app runs (a failed new keeper is gone), and v1 is the only listener.
    await waitUntil(() => processesUnder(this.stateDir).join() === this.pids.join(), 5_000, 'only v1 processes under the state dir');
    assert.equal(listenersOn(this.port).length, 1, 'one listener on the port');
    const answer = await get(this.port, '/');
    assert.equal(answer.status, 200);
    assert.match(answer.body, new RegExp(`^v1 ${this.pids[1]}$`));
  }
}

/** A v1 deployed before the suite's tests, and everything the suite started stopped after them. */
function v1ForSuite(): V1 {
  const v1 = new V1();
  before(() => v1.deploy());
  after(async () => {
    killOurs();
    await cleanup(v1.stateDir);
  });
  return v1;
}

describe('errors with v1 serving: the code, the exit code, and v1 untouched', () => {
  const v1 = new V1();
  before(() => v1.deploy());
  after(() => cleanup(v1.stateDir));

  test('RD_ERR_USAGE: bad --port', async () => {
    await expectBoth(v1.args('app.js', '--port', 'abc'), 'RD_ERR_USAGE', { message: /--port "abc" is not a TCP port/ });
    await expectError(v1.args('app.js', '--port', '70000'), 'RD_ERR_USAGE', { message: /--port "70000" is not a TCP port/ });
    await v1.untouched();
  });

  test('RD_ERR_USAGE: bad --health-timeout', async () => {
    await expectBoth(v1.args('app.js', '--health-timeout', 'soon'), 'RD_ERR_USAGE', { message: /--health-timeout "soon" is not a duration/ });
    await v1.untouched();
  });

  test('RD_ERR_USAGE: bad --env', async () => {
    await expectBoth(v1.args('app.js', '--env', 'NOEQUALS'), 'RD_ERR_USAGE', { message: /--env "NOEQUALS" is not KEY=VALUE/ });
    await expectError(v1.args('app.js', '--env', '1X=y'), 'RD_ERR_USAGE', { message: /--env "1X=y" is not KEY=VALUE/ });
    await v1.untouched();
  });

  test('RD_ERR_USAGE: durations of 0 where that means nothing, plain numbers of 1000 and more, and beyond what a timer holds', async () => {
    await expectBoth(v1.args('app.js', '--drain-timeout', '0'), 'RD_ERR_USAGE', { message: /--drain-timeout 0 leaves no time at all/ });
    await expectError(v1.args('app.js', '--health-timeout', '0ms'), 'RD_ERR_USAGE', { message: /--health-timeout 0ms leaves no time at all/ });
    await expectError(v1.args('app.js', '--drain-timeout', '30000'), 'RD_ERR_USAGE', { message: /would be 30000 seconds \(8\.3 h\)\. Give a unit .*30000ms or 30000s/ });
    await expectError(v1.args('app.js', '--park', '600h'), 'RD_ERR_USAGE', { message: /--park 600h is too long: durations go up to 596h/ });
    await expectError(v1.args('app.js', '--warm-up', '-1'), 'RD_ERR_USAGE', { message: /--warm-up -1 has a negative value.*Give --warm-up a value of 0 or more/ });
    await v1.untouched();
  });

  test('RD_ERR_USAGE: values are taken as typed (--port 0x50, --name 007), and --env cannot set PORT or REUSE_DEPLOY_*', async () => {
    await expectBoth(v1.args('app.js', '--port', '0x50'), 'RD_ERR_USAGE', { message: /--port "0x50" is not a TCP port/ });
    await expectError(['status', '--name', '007', '--state-dir', v1.stateDir], 'RD_ERR_NO_STATE', { message: /No app named "007"/ });
    await expectError(['status', '--name', '../app', '--state-dir', v1.stateDir], 'RD_ERR_USAGE', { message: /--name "\.\.\/app" is not a valid app name/ });
    await expectError(['status', 'app', '--state-dir', v1.stateDir], 'RD_ERR_USAGE', { message: /status takes no arguments; to name the app, write --name app/ });
    await expectBoth(v1.args('app.js', '--env', 'PORT=1'), 'RD_ERR_USAGE', { message: /the app gets PORT from --port/ });
    await expectError(v1.args('app.js', '--env', 'REUSE_DEPLOY_APP=x'), 'RD_ERR_USAGE', { message: /REUSE_DEPLOY_\* are set by reuse-deploy/ });
    await v1.untouched();
  });

  test('RD_ERR_USAGE: a --root that is not there, does not hold the entry, or is /; and nothing to deploy', async () => {
    await expectBoth(v1.args('app.js', '--root', path.join(ROOT, 'no-such-dir')), 'RD_ERR_USAGE', { message: /--root .*no-such-dir is not there/ });
    await expectError(v1.args('app.js', '--root', path.join(ROOT, 'src')), 'RD_ERR_USAGE', { message: /does not hold the entry/ });
    await expectError(v1.args('app.js', '--root', '/'), 'RD_ERR_USAGE', { message: /is the filesystem's root/ });
    await expectBoth(['--port', String(v1.port), '--name', 'app', '--state-dir', v1.stateDir], 'RD_ERR_USAGE', { message: /Nothing to deploy: give an entry file/ });
    await v1.untouched();
  });

  test('RD_ERR_USAGE: a bad value from the config file names the file and its key', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rd-config-'));
    try {
      fs.copyFileSync(fixture('app.js'), path.join(dir, 'server.js'));
      fs.writeFileSync(path.join(dir, 'reuse-deploy.config.json'), JSON.stringify({ park: true }));
      const args = [path.join(dir, 'server.js'), '--port', String(v1.port), '--host', '127.0.0.1', '--name', 'app', '--state-dir', v1.stateDir];
      await expectBoth(args, 'RD_ERR_USAGE', { message: /--park "true" is not a duration\..* That value comes from .*reuse-deploy\.config\.json, key "park": fix it there\./ });
      // The same value given as a flag is the flag's: no word of the file.
      const flag = await expectError([...args, '--park', 'soon'], 'RD_ERR_USAGE', { message: /--park "soon" is not a duration/ });
      assert.doesNotMatch(flag.r.stderr, /comes from/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    await v1.untouched();
  });

  test('RD_ERR_STATE_DIR: a state file with a field missing is reported, not a crash', async () => {
    const dir = tempStateDir();
    try {
      fs.mkdirSync(path.join(dir, 'z'), { mode: 0o700 });
      fs.writeFileSync(path.join(dir, 'z', 'state.json'), JSON.stringify({ version: 1, name: 'z' }), { mode: 0o600 });
      await expectBoth(['status', '--name', 'z', '--state-dir', dir], 'RD_ERR_STATE_DIR', { message: /state\.json is not a reuse-deploy state file \("host" is missing or not a string\)\. Move it away/ });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    await v1.untouched();
  });

  test('RD_ERR_USAGE: unknown option', async () => {
    await expectBoth(['status', '--name', 'app', '--state-dir', v1.stateDir, '--bogus'], 'RD_ERR_USAGE', { message: /Unknown option `--bogus`/ });
    await v1.untouched();
  });

  test(
    'RD_ERR_USAGE: unknown command',
    async () => {
      await expectBoth(['stauts', '--name', 'app', '--state-dir', v1.stateDir], 'RD_ERR_USAGE', { message: /Unknown command "stauts"/ });
      await expectError(['stauts', '--port', String(v1.port), '--name', 'app', '--state-dir', v1.stateDir], 'RD_ERR_USAGE', { message: /Unknown command "stauts"/ });
      await v1.untouched();
    },
  );

  test('RD_ERR_ENTRY_NOT_FOUND: a missing file, and a directory', async () => {
    await expectBoth(v1.args('nope.js'), 'RD_ERR_ENTRY_NOT_FOUND', { message: /The entry .*nope\.js does not exist/ });
    const dir = path.join(ROOT, 'test', 'fixtures');
    await expectBoth([dir, '--port', String(v1.port), '--host', '127.0.0.1', '--name', 'app', '--state-dir', v1.stateDir], 'RD_ERR_ENTRY_NOT_FOUND', {
      message: /is a directory, not a file/,
    });
    await v1.untouched();
  });

  test('RD_ERR_PORT_CHANGED: another port than the live one', async () => {
    const other = await freePort();
    const json = await expectBoth(v1.args('app.js', '--port', String(other)), 'RD_ERR_PORT_CHANGED', {
      message: new RegExp(`live on 127\\.0\\.0\\.1:${v1.port} \\(r1\\); this deploy asks for 127\\.0\\.0\\.1:${other}.*reuse-deploy stop --name app`),
    });
    assert.equal(json.error.logTail, null);
    assert.deepEqual(listenersOn(other), []);
    await v1.untouched();
  });

  test('RD_ERR_OTHER_APP: a deploy under another --name, or another state directory, than the release serving the port', async () => {
    const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
    const message = new RegExp(
      `Port ${v1.port} is served by "app" r1 \\(keeper pid ${v1.keeper}\\) of the state directory .*` +
        escape(`reuse-deploy stop --name app --state-dir ${fs.realpathSync(v1.stateDir)}.`),
    );
    const otherDir = tempStateDir();
    try {
      await expectBoth([fixture('app.js'), '--port', String(v1.port), '--host', '127.0.0.1', '--name', 'renamed', '--state-dir', v1.stateDir], 'RD_ERR_OTHER_APP', { message });
      await expectBoth([fixture('app.js'), '--port', String(v1.port), '--host', '127.0.0.1', '--name', 'app', '--state-dir', otherDir], 'RD_ERR_OTHER_APP', { message });
      for (const [dir, name] of [[v1.stateDir, 'renamed'], [otherDir, 'app']] as const) {
        const state = readAppState(dir, name) as { instances: unknown[]; releases: unknown[] } | null;
        assert.equal(state?.instances.length ?? 0, 0, `nothing started for ${name} in ${dir}`);
        assert.equal(state?.releases.length ?? 0, 0, `no release snapshotted for ${name} in ${dir}`);
      }
    } finally {
      // Only after a failure would anything run there (v1 is not under either).
      for (const pid of [...processesUnder(otherDir), ...processesUnder(path.join(v1.stateDir, 'renamed'))]) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
      fs.rmSync(otherDir, { recursive: true, force: true });
    }
    await v1.untouched();
  });

  test('RD_ERR_NO_STATE: status and stop of an unknown app', async () => {
    await expectBoth(['status', '--name', 'nope', '--state-dir', v1.stateDir], 'RD_ERR_NO_STATE', { message: /No app named "nope" has been deployed/ });
    await expectBoth(['stop', '--name', 'nope', '--state-dir', v1.stateDir], 'RD_ERR_NO_STATE', { message: /No app named "nope"/ });
    assert.equal(fs.existsSync(path.join(v1.stateDir, 'nope')), false, 'no folder made for the unknown app');
    await v1.untouched();
  });

  test('RD_ERR_NO_PREVIOUS: --previous with one release', async () => {
    await expectBoth(['--previous', '--name', 'app', '--state-dir', v1.stateDir], 'RD_ERR_NO_PREVIOUS', { message: /no other live release to go back to \(history: r1\)/ });
    await v1.untouched();
  });

  test('RD_ERR_RELEASE_NOT_FOUND: --release of a release that is not kept', async () => {
    await expectBoth(['--release', 'r99', '--name', 'app', '--state-dir', v1.stateDir], 'RD_ERR_RELEASE_NOT_FOUND', { message: /Release r99 of "app" is not kept.*Kept: r1/ });
    await v1.untouched();
  });

  test('RD_ERR_BOOT_CRASH: a throw at boot, and a syntax error', async () => {
    await expectError(v1.args('crash-on-boot.js'), 'RD_ERR_BOOT_CRASH', { message: /cannot connect to the database at boot/ });
    await v1.untouched();
    const { json } = await expectError(v1.args('e-syntax-error.js'), 'RD_ERR_BOOT_CRASH', { json: true, message: /exited \(exit code 1\) before it was ready/ });
    assert.match(json!.error.logTail ?? '', /SyntaxError: missing \) after argument list/);
    await expectError(v1.args('e-syntax-error.js'), 'RD_ERR_BOOT_CRASH', { message: /last lines of the new instance's log[\s\S]*SyntaxError/ });
    await v1.untouched();
  });

  test('RD_ERR_BOOT_CRASH: a second server on the deploy port gets an EADDRINUSE that says to listen once', async () => {
    await expectError(v1.args('app.js', '--env', `ADMIN_PORTS=${v1.port}@::1`), 'RD_ERR_BOOT_CRASH', {
      message: new RegExp(`EADDRINUSE: port ${v1.port} is already used by another server in this process\\. .*listen on the port once`),
    });
    await v1.untouched();
  });

  test('RD_ERR_NEVER_LISTENED', async () => {
    await expectBoth(v1.args('never-listens.js', '--health-timeout', '1500ms'), 'RD_ERR_NEVER_LISTENED', {
      message: new RegExp(`did not listen on port ${v1.port} in time.*process\\.env\\.PORT`),
    });
    await v1.untouched();
  });

  test('RD_ERR_CLUSTER: workers of node:cluster serve the port (round robin, and SCHED_NONE)', async () => {
    for (const sched of ['rr', 'none']) {
      await expectError(v1.args('e-cluster.js', '--env', `CLUSTER_SCHED=${sched}`), 'RD_ERR_CLUSTER', {
        message: sched === 'rr' ? /would accept and pass connections to the processes it forks \(cluster\.fork\(\)\).*--instances <n>/ : /would hand the listening socket to the processes it forks/,
      });
      await v1.untouched();
    }
  });

  test('RD_ERR_HEALTH_STATUS: shows the status and the first bytes of the body', async () => {
    const args = v1.args('app.js', '--env', 'APP_VERSION=v2', '--env', 'HEALTH_STATUS=503', '--health', '/healthz', '--health-timeout', '3s');
    await expectError(args, 'RD_ERR_HEALTH_STATUS', { message: /GET \/healthz \(2xx needed\) answered 503: "database unreachable"/ });
    await v1.untouched();
    const { json } = await expectError(args, 'RD_ERR_HEALTH_STATUS', { json: true, message: /answered 503/ });
    assert.equal(json!.error.status, 503);
    assert.equal(json!.error.body, 'database unreachable');
    await v1.untouched();
  });

  test('RD_ERR_HEALTH_TIMEOUT: /healthz never answers', async () => {
    await expectBoth(v1.args('e-slow.js', '--env', 'HEALTH_DELAY_MS=never', '--health', '/healthz', '--health-timeout', '3s'), 'RD_ERR_HEALTH_TIMEOUT', {
      message: /GET \/healthz \(2xx needed\) got no answer in time.*--health-timeout/,
    });
    await v1.untouched();
  });

  test('RD_ERR_STATE_DIR: the app folder became group-writable', async () => {
    const appDir = path.join(v1.stateDir, 'app');
    fs.chmodSync(appDir, 0o770);
    try {
      await expectBoth(v1.args('app.js', '--env', 'APP_VERSION=v2'), 'RD_ERR_STATE_DIR', { message: new RegExp(`${appDir} is writable by group or others \\(mode 770\\).*chmod 700 ${appDir}`) });
    } finally {
      fs.chmodSync(appDir, 0o700);
    }
    await v1.untouched();
  });

  test('RD_ERR_ADDON: REUSE_DEPLOY_ADDON naming a file that is not an addon', async () => {
    const bad = path.join(os.tmpdir(), `rd-not-an-addon-${process.pid}.node`);
    fs.writeFileSync(bad, 'this is text, not an ELF shared object\n');
    tempDirs.push(bad);
    const env = { REUSE_DEPLOY_ADDON: bad };
    const args = v1.args('app.js', '--env', 'APP_VERSION=v2');
    await expectBoth(args, 'RD_ERR_ADDON', { env, message: /native addon could not be loaded[\s\S]*rd-not-an-addon-\d+\.node/ });
    await expectError(['stop', '--name', 'app', '--state-dir', v1.stateDir], 'RD_ERR_ADDON', { env });
    await v1.untouched();
  });

  test('RD_ERR_ADDON: a copy of this package without its build or prebuilds', async () => {
    const pkg = fs.mkdtempSync(path.join(os.tmpdir(), 'rd-pkg-'));
    tempDirs.push(pkg);
    fs.mkdirSync(path.join(pkg, 'dist'));
    fs.cpSync(path.join(ROOT, 'dist', 'src'), path.join(pkg, 'dist', 'src'), { recursive: true });
    fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(pkg, 'package.json'));
    fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(pkg, 'node_modules'));
    const run = (args: string[]) => runCliAt(path.join(pkg, 'dist', 'src', 'cli.js'), args, { REUSE_DEPLOY_ADDON: '' });
    const args = v1.args('app.js', '--env', 'APP_VERSION=v2');
    const message = new RegExp(`native addon could not be loaded[\\s\\S]*Tried:[\\s\\S]*${pkg}/build/Release/reuse_deploy\\.node`);
    await expectError(args, 'RD_ERR_ADDON', { run, message });
    await expectError(args, 'RD_ERR_ADDON', { run, message, json: true });
    await v1.untouched();
  });
});

/** The CLI of another copy of the package. */
function runCliAt(cli: string, args: string[], env: NodeJS.ProcessEnv): Promise<CliResult> {
  return runProcess(process.execPath, [cli, ...args], { env: { ...process.env, CI: 'true', ...env }, onSpawn: (child) => children.push(child) });
}

/** A CLI run in the background, its stderr watched line by line. */
function startCli(args: string[]) {
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, CI: 'true' }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const done = new Promise<CliResult>((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
  return {
    child,
    done,
    stderr: () => stderr,
    until: (re: RegExp, timeoutMs = 20_000) => waitUntil(() => re.test(stderr), timeoutMs, `${re} in stderr of reuse-deploy ${args.join(' ')}\n${stderr}`),
  };
}

describe('RD_ERR_LOCKED', () => {
  const v1 = v1ForSuite();

  test('a second command fails while a deploy holds the lock; --wait queues behind it', async () => {
    const slow = startCli(v1.args('e-slow.js', '--env', 'APP_VERSION=v2', '--env', 'BOOT_DELAY_MS=8000', '--health-timeout', '40s'));
    await slow.until(/waiting for r2 to listen/);
    const message = /Another reuse-deploy command is working on "app" \(lock .*\/app\/lock\)\. .*--wait/;
    await expectBoth(v1.args('app.js', '--env', 'APP_VERSION=v3'), 'RD_ERR_LOCKED', { message });
    await expectError(['stop', '--name', 'app', '--state-dir', v1.stateDir], 'RD_ERR_LOCKED', { message });
    await expectError(['--previous', '--name', 'app', '--state-dir', v1.stateDir], 'RD_ERR_LOCKED', { message });
    // While the deploy is under way, v1 serves as before.
    assert.deepEqual(processGroup(v1.keeper).sort((a, b) => a - b), v1.pids);
    assert.match((await get(v1.port, '/')).body, /^v1 /);
    assert.equal(slow.child.exitCode, null, 'the slow deploy still holds the lock (raise BOOT_DELAY_MS if not)');

    const queued = startCli(v1.args('app.js', '--env', 'APP_VERSION=v3', '--wait'));
    await queued.until(/waiting for another reuse-deploy command on "app" to finish/);
    assert.equal(slow.child.exitCode, null, 'the queued deploy started while the slow one ran');
    let slowDone = false;
    const first = await slow.done.then((r) => ((slowDone = true), r));
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /deployed app r2 .*replaced r1/);
    const second = await queued.done;
    assert.ok(slowDone);
    assert.equal(second.code, 0, second.stderr);
    assert.match(second.stdout, /deployed app r3 .*replaced r2/);
    remember(v1.stateDir, 'app');
    assert.match((await get(v1.port, '/')).body, /^v3 /);
  });
});

describe('RD_ERR_CANCELLED', () => {
  const v1 = v1ForSuite();

  /** Runs the CLI, and sends it `signal` once its stderr matches `at`. */
  const signalledAt = (at: RegExp, signal: NodeJS.Signals) => async (args: string[]): Promise<CliResult> => {
    const cli = startCli(args);
    await cli.until(at);
    cli.child.kill(signal);
    return cli.done;
  };

  test('RD_ERR_CANCELLED: SIGINT while the new version boots, SIGTERM while its health is checked', async () => {
    const message = /Cancelled by SIGINT before the new version went live\. Whatever was live keeps serving/;
    await expectError(v1.args('e-slow.js', '--env', 'APP_VERSION=v2', '--env', 'BOOT_DELAY_MS=20000', '--health-timeout', '40s'), 'RD_ERR_CANCELLED', {
      message,
      run: signalledAt(/waiting for r2 to listen/, 'SIGINT'),
    });
    await v1.untouched(); // the new keeper and its app are gone
    await expectError(v1.args('e-slow.js', '--env', 'APP_VERSION=v2', '--env', 'HEALTH_DELAY_MS=never', '--health', '/healthz', '--health-timeout', '40s'), 'RD_ERR_CANCELLED', {
      message: /Cancelled by SIGTERM/,
      run: signalledAt(/checking health of r\d/, 'SIGTERM'),
    });
    await v1.untouched();
  });

  test('RD_ERR_CANCELLED: a closed terminal (SIGHUP, then EIO on every write) stops the new version too', async () => {
    const term = spawnInTty(v1.args('e-slow.js', '--env', 'APP_VERSION=v2', '--env', 'BOOT_DELAY_MS=20000', '--health-timeout', '40s'));
    children.push(term);
    let shown = '';
    term.stdout!.on('data', (d) => (shown += d));
    await waitUntil(() => /waiting for r\d+ to listen/.test(shown), 20_000, `the deploy to wait for its new version in\n${shown}`);
    // The terminal goes away: the kernel hangs up its session, and the
    // spinner's next write fails.
    term.kill('SIGKILL');
    await waitUntil(() => readAppState(v1.stateDir, 'app')!.instances.length === 1, 15_000, 'the new instance to be removed from state.json');
    await v1.untouched();
  });

  test('a signal after go-live has begun waits for the cutover, which completes', async () => {
    // The app blocks its event loop after its health answer, so that the
    // go-live call takes ~3 s: the signal lands inside it.
    const args = v1.args('e-slow.js', '--env', 'APP_VERSION=v3', '--env', 'BUSY_AFTER_HEALTH_MS=3000', '--health', '/healthz');
    const r = await signalledAt(/joining port/, 'SIGINT')(args);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /SIGINT: the new version is going live; the command ends once the cutover is done/);
    assert.match(r.stdout, /deployed app r\d+ .*replaced r1/);
    remember(v1.stateDir, 'app');
    assert.match((await get(v1.port, '/')).body, /^v3 /);
  });
});

describe('errors without a live app', () => {
  let stateDir: string;
  let port: number;
  const fresh = async () => {
    stateDir = tempStateDir();
    port = await freePort();
  };
  afterEach(async () => {
    killOurs();
    if (stateDir) await cleanup(stateDir);
  });
  const args = (entry: string, ...extra: string[]) => [entry, '--port', String(port), '--host', '127.0.0.1', '--name', 'app', '--state-dir', stateDir, ...extra];

  test('RD_ERR_PORT_TAKEN: a plain listener; the message names its pid', async () => {
    await fresh();
    const holder = await holdPortPlainly(port);
    children.push(holder);
    await expectBoth(args(fixture('app.js')), 'RD_ERR_PORT_TAKEN', { message: new RegExp(`Port ${port} is already in use by a socket without SO_REUSEPORT: pid ${holder.pid} \\(`) });
    holder.kill('SIGKILL');
    await waitUntil(() => listenersOn(port).length === 0, 5_000, 'the holder to go');
    await assertNothingRuns(stateDir, port);
  });

  test('RD_ERR_PORT_OTHER_USER: a listener of uid 65534; the message names the uid', { skip: isRoot ? false : 'needs root to run a holder as nobody' }, async () => {
    await fresh();
    const holder = spawn('runuser', ['-u', 'nobody', '--', process.execPath, '-e', `require('net').createServer().listen(${port}, '127.0.0.1', () => console.log(process.pid))`], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    children.push(holder);
    const pid = Number(
      await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('the holder (node as nobody) did not start within 10 s')), 10_000);
        holder.once('exit', (code) => reject(new Error(`the holder (node as nobody) exited with ${code}: can nobody run ${process.execPath}?`)));
        holder.stdout!.once('data', (d) => {
          clearTimeout(timer);
          resolve(String(d).trim());
        });
      }),
    );
    extraPids.push(pid);
    assert.equal(listenersOn(port)[0]?.uid, NOBODY);
    await expectBoth(args(fixture('app.js')), 'RD_ERR_PORT_OTHER_USER', {
      message: new RegExp(`Port ${port} is held by uid ${NOBODY}: pid ${pid} \\(.*Run reuse-deploy as uid ${NOBODY}, or stop that process first`),
    });
    process.kill(pid, 'SIGKILL');
    await waitUntil(() => listenersOn(port).length === 0, 5_000, 'the holder to go');
    await assertNothingRuns(stateDir, port);
  });

  /** An app directory and a state dir that user nobody can use, and the CLI run as nobody. */
  function asNobody(withSecret: boolean) {
    const appDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rd-app-'));
    tempDirs.push(appDir);
    fs.chmodSync(appDir, 0o755);
    fs.copyFileSync(fixture('app.js'), path.join(appDir, 'server.js'));
    fs.writeFileSync(path.join(appDir, 'package.json'), '{"name":"nobody-app","private":true}\n');
    for (const f of ['server.js', 'package.json']) fs.chmodSync(path.join(appDir, f), 0o644);
    if (withSecret) fs.writeFileSync(path.join(appDir, 'secret.env'), 'TOKEN=x\n', { mode: 0o600 }); // root's, unreadable for nobody
    fs.chmodSync(stateDir, 0o700);
    fs.chownSync(stateDir, NOBODY, NOBODY);
    const run = (a: string[]) =>
      runProcess('runuser', ['-u', 'nobody', '--', process.execPath, CLI, ...a], {
        env: { ...process.env, CI: 'true', HOME: '/nonexistent' },
        onSpawn: (child) => children.push(child),
      });
    return { entry: path.join(appDir, 'server.js'), run };
  }

  test('RD_ERR_PORT_PRIVILEGED: port 1023 as nobody', { skip: isRoot ? false : 'needs root to run the CLI as nobody' }, async () => {
    await fresh();
    const start = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8'));
    if (start <= 1023) return; // nothing is privileged here
    const { entry, run } = asNobody(false);
    port = 1023;
    const message = new RegExp(`Port 1023 is below net\\.ipv4\\.ip_unprivileged_port_start \\(${start}\\).*setcap cap_net_bind_service.*AmbientCapabilities=CAP_NET_BIND_SERVICE`);
    await expectError(args(entry), 'RD_ERR_PORT_PRIVILEGED', { run, message });
    await expectError(args(entry), 'RD_ERR_PORT_PRIVILEGED', { run, message, json: true });
    await assertNothingRuns(stateDir, port);
  });

  test('RD_ERR_SNAPSHOT: a file in the app directory this user cannot read', { skip: isRoot ? false : 'needs root to run the CLI as nobody' }, async () => {
    await fresh();
    const { entry, run } = asNobody(true);
    await expectError(args(entry), 'RD_ERR_SNAPSHOT', { run, message: /Could not snapshot .*secret\.env.*\.reusedeployignore/ });
    await assertNothingRuns(stateDir, port);
    assert.deepEqual(fs.readdirSync(path.join(stateDir, 'app', 'releases')), [], 'the half-made release is removed');
  });

  test('RD_ERR_STATE_DIR: owned by another user, and mode 0777', { skip: isRoot ? false : 'needs root to chown' }, async () => {
    await fresh();
    fs.chownSync(stateDir, NOBODY, NOBODY);
    await expectBoth(args(fixture('app.js')), 'RD_ERR_STATE_DIR', { message: new RegExp(`${stateDir} belongs to uid ${NOBODY}, not to this user \\(uid 0\\).*--state-dir`) });
    fs.chownSync(stateDir, 0, 0);
    fs.chmodSync(stateDir, 0o777);
    await expectBoth(args(fixture('app.js')), 'RD_ERR_STATE_DIR', { message: new RegExp(`writable by group or others \\(mode 777\\)\\. Fix it with: chmod 700 ${stateDir}`) });
    assert.deepEqual(fs.readdirSync(stateDir), [], 'nothing written into an untrusted state dir');
    await assertNothingRuns(stateDir, port);
  });

  test('RD_ERR_ADDRESS: an address that is not this machine\'s', async () => {
    await fresh();
    await expectBoth([fixture('app.js'), '--port', String(port), '--host', '192.0.2.1', '--name', 'app', '--state-dir', stateDir], 'RD_ERR_ADDRESS', {
      message: /Cannot bind 192\.0\.2\.1:\d+: .*Is 192\.0\.2\.1 an address of this machine\? Use --host/,
    });
    await assertNothingRuns(stateDir, port);
  });

  test('RD_ERR_SOCKET_PATH: a state dir too deep for a unix socket path', async () => {
    await fresh();
    const deep = path.join(stateDir, 'd'.repeat(90));
    await expectBoth([fixture('app.js'), '--port', String(port), '--host', '127.0.0.1', '--name', 'app', '--state-dir', deep], 'RD_ERR_SOCKET_PATH', { message: /unix sockets allow 107\. Use a shorter --state-dir/ });
    await assertNothingRuns(stateDir, port);
  });
});

describe('the catalogue', () => {
  test('every entry is tested here, or listed as not reachable from the CLI', () => {
    const source = fs.readFileSync(path.join(ROOT, 'test', 'errors.test.ts'), 'utf8');
    const notReachable = ['RD_ERR_GO_LIVE', 'RD_ERR_KEEPER', 'RD_ERR_INTERNAL'];
    for (const code of Object.keys(CATALOGUE)) {
      if (notReachable.includes(code)) continue;
      assert.ok(source.includes(`test('${code}`) || source.includes(`'${code}:`) || source.includes(`describe('${code}`), `${code} has a test`);
    }
  });

  test(
    'the README exit-code table lists every entry with its exit code',
    () => {
      const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
      const rows = new Map([...readme.matchAll(/^\| `(RD_ERR_[A-Z_]+)` \| (\d) \|/gm)].map((m) => [m[1]!, Number(m[2])]));
      for (const [code, entry] of Object.entries(CATALOGUE)) assert.equal(rows.get(code), entry.exit, `README row for ${code}`);
      for (const code of rows.keys()) assert.ok(code in CATALOGUE, `${code} in README is in the catalogue`);
    },
  );
});
