// The published package: `npm pack`, install the tarball where no compiler is
// on PATH (so only the prebuild can serve), then a real deploy and stop with
// the installed CLI.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { freePort, isAlive, ROOT, runProcess, waitUntil } from './helpers';

const platform = `${process.platform}-${process.arch}`;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rd-pack-'));
const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rd-'));
const keepers = new Set<number>();

function rememberKeepers(name: string): void {
  try {
    const state = JSON.parse(fs.readFileSync(path.join(stateDir, name, 'state.json'), 'utf8')) as { instances?: { keeperPid?: number }[] };
    for (const i of state.instances ?? []) if (typeof i.keeperPid === 'number') keepers.add(i.keeperPid);
  } catch {
    // no state yet
  }
}

after(() => {
  rememberKeepers('packed');
  for (const pid of keepers) {
    try {
      process.kill(-pid, 'SIGKILL'); // the keeper's process group: keeper and app processes
    } catch {
      // gone
    }
  }
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.rmSync(stateDir, { recursive: true, force: true });
});

/** An executable on the test's own PATH. */
function which(name: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter).filter(Boolean)) {
    const file = path.join(dir, name);
    try {
      fs.accessSync(file, fs.constants.X_OK);
      return file;
    } catch {
      // not here
    }
  }
  return null;
}

/** The environment of a user with node and npm only: no compiler, and nothing from the `npm test` that runs this. */
function bareEnv(bin: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (/^npm_/i.test(key) || ['INIT_CWD', 'CC', 'CXX', 'PYTHON', 'REUSE_DEPLOY_ADDON', 'REUSE_DEPLOY_HOME', 'NODE_OPTIONS', 'NODE_TEST_CONTEXT'].includes(key)) continue;
    env[key] = value;
  }
  env.PATH = bin;
  env.CI = 'true';
  return env;
}

const run = runProcess;

function httpGet(port: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/', agent: false, timeout: 5_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

const NETWORK = /\b(ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH)\b/;

test('npm pack, install without a compiler, deploy with the installed CLI, stop', { timeout: 150_000 }, async (t) => {
  const npmPath = which('npm');
  if (!npmPath) return t.skip('npm pack is impossible here: npm is not on PATH');
  const npmCli = fs.realpathSync(npmPath); // npm-cli.js (#!/usr/bin/env node)
  const npxPath = which('npx');
  const npxCli = npxPath ? fs.realpathSync(npxPath) : path.join(path.dirname(npmCli), 'npx-cli.js');
  const started = Date.now();
  const phase = (what: string) => t.diagnostic(`${what}: ${((Date.now() - started) / 1000).toFixed(1)} s`);

  // 1. The tarball, exactly as `npm publish` would make it (dist/ is built by pretest).
  const packDir = path.join(tmp, 'pack');
  fs.mkdirSync(packDir);
  const packEnv: NodeJS.ProcessEnv = { ...process.env };
  for (const key of Object.keys(packEnv)) if (/^npm_/i.test(key)) delete packEnv[key];
  const pack = spawnSync(process.execPath, [npmCli, 'pack', '--ignore-scripts', '--json', '--pack-destination', packDir], {
    cwd: ROOT,
    env: packEnv,
    encoding: 'utf8',
    timeout: 60_000,
  });
  if (pack.error) return t.skip(`npm pack is impossible here: ${pack.error.message}`);
  assert.equal(pack.status, 0, `npm pack failed:\n${pack.stderr}`);
  const [info] = JSON.parse(pack.stdout) as { filename: string; files: { path: string }[] }[];
  const files = info!.files.map((f) => f.path);
  const prebuild = files.find((f) => f.startsWith(`prebuilds/${platform}/`) && f.endsWith('.node'));
  assert.ok(prebuild, `the package ships no prebuild for ${platform}: ${files.filter((f) => f.startsWith('prebuilds')).join(', ')}`);
  assert.ok(files.includes('dist/src/cli.js') && files.includes('binding.gyp') && files.some((f) => f.startsWith('native/')), 'CLI and the source-build fallback are packed');
  assert.deepEqual(files.filter((f) => /^(build|test|dist\/test|node_modules)\//.test(f)), [], 'no build output, tests or dependencies in the package');
  const tarball = path.join(packDir, path.basename(info!.filename));
  phase('packed');

  // 2. A user's machine: node, npm and sh on PATH, no compiler.
  const bin = path.join(tmp, 'bin');
  fs.mkdirSync(bin);
  fs.symlinkSync(process.execPath, path.join(bin, 'node'));
  fs.symlinkSync(npmCli, path.join(bin, 'npm'));
  fs.symlinkSync(npxCli, path.join(bin, 'npx'));
  fs.symlinkSync(fs.realpathSync('/bin/sh'), path.join(bin, 'sh')); // npm runs lifecycle scripts with `sh`
  const env = bareEnv(bin);
  for (const tool of ['g++', 'gcc', 'c++', 'cc', 'make', 'python3', 'python']) {
    const found = spawnSync('/bin/sh', ['-c', `command -v ${tool}`], { env, encoding: 'utf8' });
    assert.notEqual(found.status, 0, `${tool} is on the bare PATH: ${found.stdout}`);
  }
  if (fs.existsSync('/usr/bin/which')) assert.notEqual(spawnSync('/usr/bin/which', ['g++'], { env }).status, 0, '`which g++` finds a compiler');
  const nodeVersion = spawnSync(path.join(bin, 'node'), ['--version'], { env, encoding: 'utf8' }).stdout.trim();
  assert.equal(nodeVersion, process.version);

  const app = path.join(tmp, 'app');
  fs.mkdirSync(app);
  // allowScripts: npm 11.19+ skips dependencies' install scripts unless approved; approve ours, so that
  // `node-gyp-build` runs as with older npm, and must pick the prebuild instead of compiling.
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'packed', version: '1.0.0', private: true, allowScripts: { 'reuse-deploy': true } }));
  fs.writeFileSync(
    path.join(app, 'server.js'),
    "require('node:http').createServer((req, res) => res.end('packed ok ' + process.version)).listen(process.env.PORT);\n",
  );
  const install = await run(
    path.join(bin, 'npm'),
    ['install', '--no-audit', '--no-fund', '--prefer-offline', '--foreground-scripts', tarball],
    { cwd: app, env, timeoutMs: 90_000 },
  );
  if (install.code !== 0 && NETWORK.test(install.stderr)) return t.skip(`the npm registry is unreachable: ${install.stderr.match(NETWORK)![0]}`);
  assert.equal(install.code, 0, `npm install of the tarball failed without a compiler:\n${install.stderr}`);
  const installed = path.join(app, 'node_modules', 'reuse-deploy');
  assert.ok(fs.existsSync(path.join(installed, prebuild!)), 'the prebuild is installed');
  assert.match(install.stdout + install.stderr, /node-gyp-build/, 'the install script ran');
  assert.equal(fs.existsSync(path.join(installed, 'build')), false, 'no source build was attempted');
  phase('installed');

  // 3. The installed CLI.
  const npx = (args: string[], timeoutMs = 60_000) => run(path.join(bin, 'npx'), ['--no-install', 'reuse-deploy', ...args], { cwd: app, env, timeoutMs });
  const version = await npx(['--version']);
  assert.equal(version.code, 0, version.stderr);
  assert.match(version.stdout, new RegExp(JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version.replace(/\./g, '\\.')));

  const addon = spawnSync(path.join(bin, 'node'), ['-p', "require('reuse-deploy/dist/src/native.js').addonPath()"], { cwd: app, env, encoding: 'utf8' });
  assert.equal(addon.stdout.trim(), path.join(fs.realpathSync(installed), prebuild!), addon.stderr);

  const port = await freePort();
  const deploy = await npx(['server.js', '--port', String(port), '--host', '127.0.0.1', '--state-dir', stateDir, '--health-timeout', '20s']);
  rememberKeepers('packed');
  assert.equal(deploy.code, 0, `deploy failed:\n${deploy.stdout}\n${deploy.stderr}`);
  assert.match(deploy.stdout, /deployed packed r1 on 127\.0\.0\.1:\d+/);
  assert.ok(keepers.size > 0, 'state.json names the keeper');
  const answer = await httpGet(port);
  assert.equal(answer.status, 200);
  assert.equal(answer.body, `packed ok ${process.version}`);
  phase('deployed');

  const stop = await npx(['stop', '--name', 'packed', '--state-dir', stateDir]);
  assert.equal(stop.code, 0, `stop failed:\n${stop.stdout}\n${stop.stderr}`);
  await waitUntil(() => [...keepers].every((pid) => !isAlive(pid)), 15_000, 'the keeper to exit after stop');
  await assert.rejects(httpGet(port), 'nothing listens after stop');
  phase('stopped');
});
