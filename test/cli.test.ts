// The CLI as a user meets it: help, version, output modes, config file.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { CLI, fixture, freshAppPerTest, get, isAlive, readAppState, remember, runCli, runProcess, spawnInTty, waitUntil } from './helpers';
import { EXIT } from '../src/errors';
import { CI_MARKERS, serviceUnitOf, type ServiceUnit } from '../src/deploy/runner-unit';

const t = freshAppPerTest();

/** Runs the CLI under a pseudo-terminal to its end; its output as the terminal showed it. */
function runInTty(args: string[], env: NodeJS.ProcessEnv = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawnInTty(args, env);
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('close', () => resolve(out));
  });
}

const SYSTEMD_V1 = '/sys/fs/cgroup/systemd';

/** Why the cgroup test cannot run here, or false: it needs root and cgroup v1's name=systemd hierarchy with this process at its root (no systemd managing it). */
function cgroupV1Systemd(): string | false {
  if (process.getuid?.() !== 0) return 'needs root (it makes a cgroup)';
  const own = fs.readFileSync('/proc/self/cgroup', 'utf8');
  if (!/^\d+:name=systemd:\/$/m.test(own) || /^0::\/./m.test(own)) return 'needs cgroup v1\'s name=systemd hierarchy with this process at its root, and no cgroup v2 group of its own (no systemd managing it)';
  if (!fs.existsSync(path.join(SYSTEMD_V1, 'cgroup.procs'))) return `${SYSTEMD_V1} is not mounted`;
  return false;
}

const deployArgs = () => [fixture('app.js'), '--port', String(t.port), '--host', '127.0.0.1', '--name', 'app', '--state-dir', t.stateDir];

describe('help and version', () => {
  test('--help lists every command and shows examples', async () => {
    const r = await runCli(['--help']);
    assert.equal(r.code, 0);
    for (const word of ['status', 'stop', 'start', 'releases', 'logs', 'doctor', '--previous', '--park', 'Examples:']) assert.ok(r.stdout.includes(word), `help mentions ${word}`);
    for (const code of Object.values(EXIT)) assert.match(r.stdout, new RegExp(`^  ${code}  \\S`, 'm'), `help explains exit code ${code}`);
  });

  test('every command has --help with an example', async () => {
    for (const command of ['status', 'stop', 'start', 'releases', 'logs', 'doctor']) {
      const r = await runCli([command, '--help']);
      assert.equal(r.code, 0, command);
      assert.match(r.stdout, /Examples:\n\s*reuse-deploy /, `${command} --help has an example`);
    }
  });

  test('--version prints the package version', async () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8'));
    const r = await runCli(['--version']);
    assert.equal(r.code, 0);
    assert.ok(r.stdout.includes(pkg.version));
  });
});

describe('output', () => {
  test('--json: one JSON object on stdout and nothing else', async () => {
    const r = await runCli([...deployArgs(), '--json']);
    remember(t.stateDir, 'app');
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.length, 1);
    const result = JSON.parse(lines[0]!);
    assert.equal(result.ok, true);
    assert.equal(result.release, 'r1');
    assert.equal(typeof result.msToHealthy, 'number');
    assert.equal(result.pids.length, 1);
  });

  test('--json failure: ok false with code and exit code', async () => {
    const r = await runCli([fixture('crash-on-boot.js'), '--port', String(t.port), '--host', '127.0.0.1', '--name', 'app', '--state-dir', t.stateDir, '--json']);
    assert.equal(r.code, 1);
    const result = JSON.parse(r.stdout);
    assert.equal(result.ok, false);
    assert.equal(result.error.code, 'RD_ERR_BOOT_CRASH');
    assert.equal(result.error.exitCode, 1);
    assert.match(result.error.logTail, /cannot connect to the database/);
  });

  test('without a TTY: plain timestamped progress lines on stderr, the summary on stdout', async () => {
    const r = await runCli(deployArgs());
    remember(t.stateDir, 'app');
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^deployed app r1 /);
    const lines = r.stderr.trim().split('\n');
    assert.ok(lines.length >= 3);
    for (const line of lines) assert.match(line, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z /);
    assert.ok(!r.stderr.includes('\u001b['), 'no escape sequences');
  });

  test('--quiet prints nothing but warnings on success', async () => {
    const r = await runCli([...deployArgs(), '--quiet']);
    remember(t.stateDir, 'app');
    assert.equal(r.code, 0);
    assert.equal(r.stdout, '');
    // test/fixtures has no node_modules of its own: that one warning remains
    for (const line of r.stderr.trim().split('\n').filter(Boolean)) assert.match(line, / warning: /);
  });

  test('a reader that goes away (EPIPE on every write) does not stop the deploy halfway', async () => {
    assert.equal((await runCli([...deployArgs(), '--env', 'APP_VERSION=v1'])).code, 0);
    remember(t.stateDir, 'app');
    // `reuse-deploy ... | head -0`: both pipes are closed before the CLI writes its first line.
    const child = spawn(process.execPath, [CLI, ...deployArgs(), '--env', 'APP_VERSION=v2'], { env: { ...process.env, CI: 'true' }, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.destroy();
    child.stderr!.destroy();
    const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    remember(t.stateDir, 'app');
    assert.equal(code, 0, 'the deploy went through');
    assert.match((await get(t.port, '/')).body, /^v2 /);
    const state = JSON.parse(fs.readFileSync(path.join(t.stateDir, 'app', 'state.json'), 'utf8')) as { instances: { release: string; role: string }[] };
    assert.deepEqual(state.instances.filter((i) => i.role === 'live').map((i) => i.release), ['r2']);
  });

  test('on a TTY: a spinner with phase names; NO_COLOR turns colour off', async () => {
    const colored = await runInTty(deployArgs(), { FORCE_COLOR: '1' });
    remember(t.stateDir, 'app');
    assert.match(colored, /checking health of r1/);
    assert.match(colored, /[✔√]/, 'finished phases are ticked');
    assert.match(colored, /\u001b\[32m/, 'green ticks by default');
    const plain = await runInTty(deployArgs(), { NO_COLOR: '1' });
    remember(t.stateDir, 'app');
    assert.match(plain, /deployed app r2/);
    assert.doesNotMatch(plain, /\u001b\[3\dm/, 'no colour with NO_COLOR');
  });
});

describe('logs', () => {
  const logsArgs = (...extra: string[]) => ['logs', '--name', 'app', '--state-dir', t.stateDir, ...extra];
  const deployVersion = async (version: string): Promise<void> => {
    const r = await runCli([...deployArgs(), '--env', `APP_VERSION=${version}`]);
    remember(t.stateDir, 'app');
    assert.equal(r.code, 0, r.stderr);
  };

  test("the live release's last lines; -n, --release; bad values exit 2 and say what to give", async () => {
    await deployVersion('v1');
    await deployVersion('v2');
    const live = await runCli(logsArgs());
    assert.equal(live.code, 0, live.stderr);
    assert.match(live.stdout, /\[reuse-deploy r2\/\w+\] phase live/);
    assert.doesNotMatch(live.stdout, /\[reuse-deploy r1\//);
    const two = await runCli(logsArgs('-n', '2'));
    assert.equal(two.stdout.trimEnd().split('\n').length, 2);
    assert.match((await runCli(logsArgs('--release', 'r1'))).stdout, /\[reuse-deploy r1\/\w+\] phase draining/);
    const missing = await runCli(logsArgs('--release', 'r9'));
    assert.equal(missing.code, EXIT.usage);
    assert.match(missing.stderr, /There is no log for release r9 .*RD_ERR_RELEASE_NOT_FOUND/s);
    const bad = await runCli(logsArgs('-n', 'many'));
    assert.equal(bad.code, EXIT.usage);
    assert.match(bad.stderr, /--lines "many" is not valid\. Use a whole number of lines/);
  });

  test('-f follows the app: after a deploy, the new live release\'s log from its boot; after a rollback, not the old release\'s whole past', async () => {
    await deployVersion('v1');
    const firstRun = /\[reuse-deploy (r1\/\w+)\]/.exec(fs.readFileSync(path.join(t.stateDir, 'app', 'logs', 'r1.log'), 'utf8'))![1]!;
    const child = spawn(process.execPath, [CLI, ...logsArgs('-f', '-n', '1')], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (err += d));
    try {
      await waitUntil(() => out.length > 0, 10_000, 'the last line of r1');
      await deployVersion('v2');
      await waitUntil(() => /\[reuse-deploy r2\/\w+\] phase live/.test(out), 10_000, "r2's log to follow");
      assert.match(out, /\[reuse-deploy r2\/\w+\] bound /, "r2's log from its start");
      assert.match(err, /--- another release is live: following .*r2\.log \(the one before goes on logging its drain in .*r1\.log\) ---/);
      const back = await runCli(['--previous', '--name', 'app', '--state-dir', t.stateDir]);
      assert.equal(back.code, 0, back.stderr);
      await waitUntil(() => new RegExp(`\\[reuse-deploy r1/(?!${firstRun.slice(3)})\\w+\\] phase live`).test(out), 10_000, "r1's second run to follow");
      assert.ok(!out.includes(`[reuse-deploy ${firstRun}] bound`), "r1's first run is not printed again");
      assert.equal(child.exitCode, null, 'still following');
    } finally {
      child.kill();
    }
  });
});

describe('as a command', () => {
  test('it starts Node without NODE_EXTRA_CA_CERTS, and the app still gets it', async () => {
    // Node 20 reads the file at every start-up and warns when it cannot;
    // Node 22 and later only on the first TLS use, which the CLI never makes.
    const extra = '/nonexistent/reuse-deploy-test-ca.pem';
    const r = await runProcess(CLI, [...deployArgs(), '--json'], { env: { ...process.env, CI: 'true', NODE_EXTRA_CA_CERTS: extra } });
    remember(t.stateDir, 'app');
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /extra certs/i, 'the CLI did not load it');
    assert.equal((await get(t.port, '/env/NODE_EXTRA_CA_CERTS')).body, extra);
    assert.equal((await get(t.port, '/env/REUSE_DEPLOY_CARRIED_CA_CERTS')).body, '(unset)');
    const plain = await runProcess(CLI, ['--version'], { env: { ...process.env, NODE_EXTRA_CA_CERTS: undefined } });
    assert.equal(plain.code, 0, plain.stderr);
  });

  test("run from a CI job, the release's processes do not carry the variables by which the runner kills the job's leftovers", async () => {
    // What a GitHub Actions or Azure Pipelines runner does when a job ends:
    // every process whose environment holds the job's value is killed.
    const job = `github_${process.pid}_${Date.now()}`;
    const carrying = (): number[] =>
      fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number).filter((pid) => {
        try {
          return fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').includes(`RUNNER_TRACKING_ID=${job}`);
        } catch {
          return false; // gone, or not ours
        }
      });
    const ciEnv = { RUNNER_TRACKING_ID: job, VSTS_PROCESS_LOOKUP_ID: 'vsts_1', JENKINS_NODE_COOKIE: 'c1', JENKINS_SERVER_COOKIE: 'c2', HUDSON_SERVER_COOKIE: 'c2', BUILD_ID: '42', RD_TEST_KEPT: 'kept' };
    const r = await runProcess(CLI, deployArgs(), { env: { ...process.env, CI: 'true', ...ciEnv } });
    remember(t.stateDir, 'app');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /r1's processes start without RUNNER_TRACKING_ID, VSTS_PROCESS_LOOKUP_ID, JENKINS_NODE_COOKIE, JENKINS_SERVER_COOKIE, HUDSON_SERVER_COOKIE: the CI runner would stop them by these when this job ends/);
    for (const name of ['RUNNER_TRACKING_ID', 'VSTS_PROCESS_LOOKUP_ID', 'JENKINS_NODE_COOKIE', 'JENKINS_SERVER_COOKIE', 'HUDSON_SERVER_COOKIE']) {
      assert.equal((await get(t.port, `/env/${name}`)).body, '(unset)', name);
    }
    assert.equal((await get(t.port, '/env/BUILD_ID')).body, '42', 'a build variable apps may read stays');
    assert.equal((await get(t.port, '/env/RD_TEST_KEPT')).body, 'kept');
    const keeper = readAppState(t.stateDir, 'app')!.instances[0]!.keeperPid;
    assert.ok(isAlive(keeper));
    assert.deepEqual(carrying(), [], 'no process left by the deploy carries the job\'s tracking id');
  });

  test('the systemd service of a /proc/<pid>/cgroup text, passing over delegated groups, scopes and slices', () => {
    const cases: [string, ServiceUnit | null][] = [
      ['0::/system.slice/gitlab-runner.service\n', { unit: 'gitlab-runner.service', user: false }],
      ['0::/system.slice/actions.runner.acme-web.box1.service/job-7\n', { unit: 'actions.runner.acme-web.box1.service', user: false }],
      ['0::/user.slice/user-1000.slice/user@1000.service/app.slice/ci.service\n', { unit: 'ci.service', user: true }],
      ['0::/user.slice/user-1000.slice/user@1000.service/init.scope\n', null],
      ['0::/user.slice/user-1000.slice/session-4.scope\n', null],
      ['0::/system.slice/run-r1f2.scope\n', null],
      ['0::/docker/0123abcd\n', null],
      ['0::/\n', null],
      ['12:pids:/\n1:name=systemd:/system.slice/jenkins.service\n0::/\n', { unit: 'jenkins.service', user: false }],
      ['1:name=systemd:/\n0::/\n', null],
    ];
    for (const [text, want] of cases) assert.deepEqual(serviceUnitOf(text), want, text);
  });

  test("run by a CI job inside a systemd service, it warns that stopping the service stops the release; not outside a CI job (CI=false)", { skip: cgroupV1Systemd() }, async () => {
    // The runner's service, as systemd would make it in cgroup v1's
    // name=systemd hierarchy (no systemd runs here, so its KillMode cannot
    // be asked, and the warning says when it would not apply).
    const unit = `rd-test-${process.pid}-runner.service`;
    const group = path.join(SYSTEMD_V1, unit);
    fs.mkdirSync(group);
    try {
      const inGroup = (env: NodeJS.ProcessEnv) => runProcess('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', group, CLI, ...deployArgs()], { env });
      const noCi = Object.fromEntries(Object.entries(process.env).filter(([name]) => !CI_MARKERS.includes(name)));
      const r1 = await inGroup({ ...noCi, GITLAB_CI: 'true' });
      remember(t.stateDir, 'app');
      assert.equal(r1.code, 0, r1.stderr);
      assert.ok(r1.stderr.includes(`r1's processes start in the control group of ${unit}, which runs this job: \`systemctl stop\` or \`restart\` of it stops them too, unless its KillMode is process or none.`), r1.stderr);
      assert.match(r1.stderr, /systemd-run --scope/);
      const keeper = readAppState(t.stateDir, 'app')!.instances[0]!.keeperPid;
      assert.match(fs.readFileSync(`/proc/${keeper}/cgroup`, 'utf8'), new RegExp(`name=systemd:/${unit.replace(/\./g, '\\.')}$`, 'm'), 'the premise: the keeper is in the service');
      const r2 = await inGroup({ ...noCi, CI: 'false' }); // turned off, as some set it
      assert.equal(r2.code, 0, r2.stderr);
      assert.doesNotMatch(r2.stderr, /control group/);
    } finally {
      // Back to the root, so that the group can go while the release runs on
      // (its processes are stopped with the test's state dir); again while a
      // fork lands in it meanwhile.
      for (let tries = 0; tries < 20; tries++) {
        const pids = fs.readFileSync(path.join(group, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean);
        for (const pid of pids) {
          try {
            fs.writeFileSync(path.join(SYSTEMD_V1, 'cgroup.procs'), pid);
          } catch {
            // gone meanwhile
          }
        }
        try {
          fs.rmdirSync(group);
          break;
        } catch {
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
      }
    }
  });
});

describe('config file', () => {
  let appDir: string;
  beforeEach(() => {
    appDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rd-cfg-'));
    fs.copyFileSync(fixture('app.js'), path.join(appDir, 'server.js'));
  });
  afterEach(() => fs.rmSync(appDir, { recursive: true, force: true }));

  test('reuse-deploy.config.json gives port, health, env; flags override it', async () => {
    fs.writeFileSync(path.join(appDir, 'package.json'), JSON.stringify({ name: 'cfg' }));
    fs.writeFileSync(
      path.join(appDir, 'reuse-deploy.config.json'),
      JSON.stringify({ port: t.port, host: '127.0.0.1', health: '/healthz', healthTimeout: '10s', env: { APP_VERSION: 'from-config' } }),
    );
    const r = await runCli([path.join(appDir, 'server.js'), '--state-dir', t.stateDir]);
    remember(t.stateDir, 'cfg');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /using settings from .*reuse-deploy\.config\.json/);
    assert.match((await get(t.port, '/')).body, /^from-config /);
    const r2 = await runCli([path.join(appDir, 'server.js'), '--state-dir', t.stateDir, '--env', 'APP_VERSION=from-flag']);
    remember(t.stateDir, 'cfg');
    assert.equal(r2.code, 0, r2.stderr);
    assert.match((await get(t.port, '/')).body, /^from-flag /);
  });

  test('a rollback runs under the config file kept with its release; flags given then win; a kept file that no longer reads only warns', async () => {
    const config = (drainTimeout: string): void =>
      fs.writeFileSync(path.join(appDir, 'reuse-deploy.config.json'), JSON.stringify({ port: t.port, host: '127.0.0.1', drainTimeout, healthTimeout: '20s' }));
    const deploy = async (args: string[], version: string): Promise<string> => {
      const r = await runCli([...args, '--state-dir', t.stateDir]);
      remember(t.stateDir, 'cfg');
      assert.equal(r.code, 0, r.stderr);
      assert.match((await get(t.port, '/')).body, new RegExp(`^${version} `));
      return r.stderr;
    };
    fs.writeFileSync(path.join(appDir, 'package.json'), JSON.stringify({ name: 'cfg' }));
    config('7s');
    await deploy([path.join(appDir, 'server.js'), '--env', 'APP_VERSION=one'], 'one');
    config('9s');
    assert.match(await deploy([path.join(appDir, 'server.js'), '--env', 'APP_VERSION=two'], 'two'), /draining r1 \(up to 9 s/);
    // Back to r1, under r1's own file, as a deploy runs under the new
    // release's: 7 s, not the source directory's 9 s nor the default 30 s.
    const back = await deploy(['--previous', '--name', 'cfg'], 'one');
    assert.match(back, /using settings from .*releases\/r1\/reuse-deploy\.config\.json/);
    assert.match(back, /draining r2 \(up to 7 s/);
    assert.match(await deploy(['--previous', '--name', 'cfg', '--drain-timeout', '4s'], 'two'), /draining r1 \(up to 4 s/);
    // r1's kept file turns unreadable (replaced, not written through: the snapshot's files may be shared with the store).
    const kept = path.join(t.stateDir, 'cfg', 'releases', 'r1', 'reuse-deploy.config.json');
    fs.rmSync(kept);
    fs.writeFileSync(kept, '{ not json');
    const warned = await deploy(['--release', 'r1', '--name', 'cfg'], 'one');
    assert.match(warned, /warning: the settings kept with r1 could not be used \(.*is not valid JSON.*\); going on with the flags given and the defaults/);
    assert.match(warned, /draining r2 \(up to 30 s/);
    // A value that does not parse is left out alone: the rest of the file holds.
    const keptR2 = path.join(t.stateDir, 'cfg', 'releases', 'r2', 'reuse-deploy.config.json');
    fs.rmSync(keptR2);
    fs.writeFileSync(keptR2, JSON.stringify({ port: t.port, drainTimeout: '6s', keep: 'all' }));
    const partly = await deploy(['--release', 'r2', '--name', 'cfg'], 'two');
    assert.match(partly, /warning: --keep "all" is not valid\..*key "keep".* Left out: r2 goes on with the flag given or the default\./);
    assert.match(partly, /draining r1 \(up to 6 s/);
  });

  test('a reuseDeploy key in package.json works too; unknown keys are errors', async () => {
    fs.writeFileSync(path.join(appDir, 'package.json'), JSON.stringify({ name: 'cfg', reuseDeploy: { port: t.port, host: '127.0.0.1', healthTimout: '5s' } }));
    const bad = await runCli([path.join(appDir, 'server.js'), '--state-dir', t.stateDir]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /unknown key "healthTimout"/);
    fs.writeFileSync(path.join(appDir, 'package.json'), JSON.stringify({ name: 'cfg', reuseDeploy: { port: t.port, host: '127.0.0.1' } }));
    const good = await runCli([path.join(appDir, 'server.js'), '--state-dir', t.stateDir]);
    remember(t.stateDir, 'cfg');
    assert.equal(good.code, 0, good.stderr);
    assert.equal((await get(t.port, '/')).status, 200);
  });
});
