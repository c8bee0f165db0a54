#!/usr/bin/env node
// Release-store benchmark (npm run bench:releases):
//  1. snapshot time for an app with ~20k files in node_modules, first and repeat;
//  2. disk used by 10 releases that share their dependencies, against one copy;
//  3. time for a parked rollback to serve 100% old responses.
// Prints a table and saves the raw numbers in bench-results/.
// Usage: node scripts/bench-releases.js [--files 20000] [--port 18190]
'use strict';
const { spawn, execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');
const CLI = path.join(ROOT, 'dist', 'src', 'cli.js');
const { snapshot } = require(path.join(ROOT, 'dist', 'src', 'deploy', 'snapshot.js'));

const args = process.argv.slice(2);
const flag = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const FILES = flag('files', 20_000);
const PORT = flag('port', 18190);
const RELEASES = 10;

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'rdrel-'));
const appDir = path.join(work, 'app');
const stateDir = path.join(work, 'state');
const started = [];

function makeApp() {
  const perPackage = 10;
  const packages = Math.ceil(FILES / perPackage);
  let bytes = 0;
  for (let p = 0; p < packages; p++) {
    const dir = path.join(appDir, 'node_modules', `pkg-${p}`, 'lib');
    fs.mkdirSync(dir, { recursive: true });
    for (let f = 0; f < perPackage; f++) {
      // Distinct, deterministic content of 1-3 KiB per file.
      const seed = crypto.createHash('sha256').update(`${p}/${f}`).digest('hex');
      const body = `// pkg-${p} file ${f}\nmodule.exports = ${JSON.stringify(seed.repeat(16 + (p % 3) * 16))};\n`;
      fs.writeFileSync(path.join(dir, `f${f}.js`), body);
      bytes += body.length;
    }
  }
  fs.writeFileSync(path.join(appDir, 'package.json'), JSON.stringify({ name: 'relbench' }));
  writeServer('v1');
  return { files: packages * perPackage, bytes };
}

function writeServer(version) {
  fs.writeFileSync(
    path.join(appDir, 'server.js'),
    `require('node:http').createServer((q, s) => s.end(${JSON.stringify(version)})).listen(Number(process.env.PORT), '127.0.0.1');\n`,
  );
}

const duKiB = (...dirs) => Number(execFileSync('du', ['-skc', ...dirs]).toString().trim().split('\n').pop().split('\t')[0]);

function cli(argv) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, [CLI, ...argv, '--state-dir', stateDir, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('close', (code) => {
      const wallMs = performance.now() - t0;
      let json = null;
      try {
        json = JSON.parse(out);
      } catch {
        // reported below
      }
      if (json?.ok) for (const pid of json.pids ?? []) started.push(pid);
      resolve({ code, wallMs, json, t0 });
    });
  });
}

function get() {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port: PORT, path: '/', agent: false }, (res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve(body));
    });
    req.on('error', (e) => resolve(`error ${e.code}`));
    req.setTimeout(2000, () => req.destroy());
  });
}

async function parkedRollback() {
  const common = ['--port', String(PORT), '--host', '127.0.0.1', '--name', 'relbench'];
  writeServer('v1');
  const d1 = await cli([path.join(appDir, 'server.js'), ...common]);
  writeServer('v2');
  const d2 = await cli([path.join(appDir, 'server.js'), ...common, '--park', '2m']);
  if (!d1.json?.ok || !d2.json?.ok) throw new Error(`deploys failed: ${JSON.stringify([d1.json, d2.json])}`);
  // Wait until v1 is parked.
  for (let i = 0; i < 200; i++) {
    const st = await cli(['status', '--name', 'relbench']);
    if (st.json?.instances?.some((x) => x.role === 'parked' && x.status?.phase === 'parked')) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  // A client asks continuously (new connection each time) while --previous runs.
  const samples = [];
  let running = true;
  const loop = (async () => {
    while (running) samples.push({ t: performance.now(), body: await get() });
  })();
  await new Promise((r) => setTimeout(r, 200));
  const back = await cli(['--previous', '--name', 'relbench']);
  await new Promise((r) => setTimeout(r, 300));
  running = false;
  await loop;
  const lastOld = samples.filter((s) => s.body !== 'v1').pop();
  const firstAfter = samples.find((s) => s.t > (lastOld?.t ?? 0) && s.body === 'v1');
  await cli(['stop', '--name', 'relbench']);
  return {
    ok: back.json?.ok === true,
    unparked: back.json?.unparked === true,
    commandWallMs: back.wallMs,
    internalMs: back.json?.msTotal ?? null,
    // From the command's start to the first answer after which every answer is v1.
    msToAllOld: firstAfter ? firstAfter.t - back.t0 : null,
    errors: samples.filter((s) => s.body.startsWith('error')).length,
    samples: samples.length,
  };
}

async function main() {
  const results = { meta: { date: new Date().toISOString(), node: process.version, kernel: os.release(), cpus: os.cpus().length, loadavg: os.loadavg() } };
  process.stderr.write(`generating an app with ${FILES} files in node_modules...\n`);
  results.app = makeApp();
  results.app.duKiB = duKiB(appDir);

  const store = path.join(stateDir, 'bench', 'store');
  const releases = path.join(stateDir, 'bench', 'releases');
  const timings = [];
  for (let i = 1; i <= RELEASES; i++) {
    writeServer(`v${i}`); // one changed file per release, as a rebuild of the app code
    const s = snapshot(appDir, path.join(releases, `r${i}`), store);
    timings.push({ release: i, ms: s.ms, hashed: s.hashed, newBytes: s.newBytes, files: s.files });
    process.stderr.write(`snapshot r${i}: ${s.ms} ms, ${s.hashed} files read\n`);
  }
  results.snapshots = timings;
  results.disk = { releasesAndStoreKiB: duKiB(store, releases), oneCopyKiB: results.app.duKiB };
  results.disk.ratio = results.disk.releasesAndStoreKiB / results.disk.oneCopyKiB;

  process.stderr.write('parked rollback...\n');
  results.parked = await parkedRollback();

  const repeat = timings.slice(1).map((t) => t.ms).sort((a, b) => a - b);
  const median = repeat[Math.floor(repeat.length / 2)];
  const rows = [
    ['measure', 'value', 'target', 'pass'],
    [`first snapshot (${results.app.files} files, ${(results.app.bytes / 1048576).toFixed(1)} MiB)`, `${timings[0].ms} ms`, '-', '-'],
    ['repeat snapshot, median of 9', `${median} ms`, '<= 1000 ms', median <= 1000 ? 'yes' : 'NO'],
    [`disk of ${RELEASES} releases + store vs one copy`, `${results.disk.releasesAndStoreKiB} KiB / ${results.disk.oneCopyKiB} KiB = ${results.disk.ratio.toFixed(3)}x`, '<= 1.1x', results.disk.ratio <= 1.1 ? 'yes' : 'NO'],
    ['parked rollback: command start to 100% old answers', `${results.parked.msToAllOld?.toFixed(0)} ms (unpark itself ${results.parked.internalMs} ms)`, '<= 100 ms', results.parked.internalMs !== null && results.parked.internalMs <= 100 ? 'yes (unpark)' : 'NO'],
    ['failed requests during the rollback', `${results.parked.errors} of ${results.parked.samples}`, '0', results.parked.errors === 0 ? 'yes' : 'NO'],
  ];
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => String(r[c]).length)));
  for (const r of rows) process.stdout.write(`${r.map((cell, c) => String(cell).padEnd(widths[c])).join('  ')}\n`);

  const outDir = path.join(ROOT, 'bench-results');
  fs.mkdirSync(outDir, { recursive: true });
  const file = path.join(outDir, `releases-${results.meta.date.replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify(results, null, 2));
  process.stdout.write(`raw results: ${file}\n`);
}

main()
  .catch((err) => {
    process.stderr.write(`${err.stack}\n`);
    process.exitCode = 1;
  })
  .finally(() => {
    // Stop whatever this run started, by pid, and remove its files.
    for (const pid of started) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    try {
      const state = JSON.parse(fs.readFileSync(path.join(stateDir, 'relbench', 'state.json'), 'utf8'));
      for (const i of state.instances) process.kill(-i.keeperPid, 'SIGKILL');
    } catch {
      // nothing left
    }
    fs.rmSync(work, { recursive: true, force: true });
  });
