'use strict';
// Deploy benchmark: `npm run bench [-- --quick] [-- --deploys N]`.
//
// Sustained HTTP load (scripts/load.js, 32 connections) against
// scripts/bench-app.js while the app is redeployed N times, for:
//   plain      SIGTERM the running app, then start the new version
//   pm2        `pm2 reload` in cluster mode, 2 instances (PM2_HOME in a temp dir)
//   rd-mig0    reuse-deploy, net.ipv4.tcp_migrate_req=0 (netns rdbench-0 when root)
//   rd-mig1    reuse-deploy, net.ipv4.tcp_migrate_req=1 (netns rdbench-1, root only)
//   rd-cur     (not root) reuse-deploy in the current namespace, as it is
//   rd-mig0-n2, rd-mig1-n2 (rd-cur-n2 when not root)
//              the same with `--instances 2`: two app processes per release
//              on the release's one socket
// each in two load modes: keep-alive (ka) and a new connection per request
// (close). A row: 5 s of load not counted (the load generator's warm-up),
// 10 s at rest, the deploys, 2.5 s for the last one's drain, 10 s at rest
// again, then the bare app's boot under the same load (as many processes
// at once as the row's release runs: the reference of the row's "wall -
// boot"); "p99 at rest" pools the two rest windows. Also: the app's bare
// boot time on the idle host (one process; and two spawned at once), and the
// runtime preload's overhead: the app bare (twice: the second is a
// control), with an inert `--require dist/src/runtime/preload.js`, and
// deployed by reuse-deploy, loaded side by side on CPU 1 with their load
// generators on CPU 0 (each
// app process's CPU time per request, against the bare one's in the same
// window). The overhead's load generator is wrk where it is installed
// (`apt install wrk`), which saturates the app; else scripts/load.js,
// which does not, and the figures are noisier. Where wrk
// is installed, also: reuse-deploy (one instance) deployed 8 times under a
// load that saturates the host (wrk -t2 -c50, closed loop), against the
// bare app's boot time under the same load.
//
// Prints one table on stdout, then the deploy phases of reuse-deploy, the
// keep-alive rows' latency split by new and reused connections (each
// version change makes every keep-alive client reconnect once), and the
// overhead; writes raw results (JSON) and a picture (SVG) to
// bench-results/. Every process it starts is stopped by pid, and every
// namespace it creates is deleted, also on failure and on Ctrl-C.
//
// Flags: --quick (3 deploys, short windows), --deploys N, --rate R (req/s,
// total, default 1000), --conns C (default 32), --configs a,b,... ,
// --modes ka,close, --gap-ms, --rest-ms, --keep-tmp, --rd-arg A (an extra
// argument for every reuse-deploy deploy, repeatable: `--rd-arg=--warm-up=0`),
// --overhead-sets N and --overhead-rounds N (sets of processes, default 10,
// and windows per set, default 3, for the preload overhead; 0 skips it), --saturated-deploys
// N (default 8; 0 skips the saturated section). --configs takes
// the keys above, e.g. `--configs rd-mig0-n2,rd-mig1-n2`.
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { performance } = require('node:perf_hooks');

const ROOT = path.resolve(__dirname, '..');
const CLI = path.join(ROOT, 'dist', 'src', 'cli.js');
const PRELOAD = path.join(ROOT, 'dist', 'src', 'runtime', 'preload.js');
const APP = path.join(__dirname, 'bench-app.js');
const LOAD = path.join(__dirname, 'load.js');
const PM2 = path.join(ROOT, 'node_modules', '.bin', 'pm2');
const RESULTS = path.join(ROOT, 'bench-results');
const NS_PORT = 18080;
// Deploys run the `reuse-deploy` command as users do (dist/src/cli.js is it:
// a /bin/sh line that execs `node`), with this Node first on the PATH.
const COMMAND_ENV = { ...process.env, PATH: `${path.dirname(process.execPath)}${path.delimiter}${process.env.PATH ?? ''}` };
const KINDS = ['ok', 'connect', 'reset', 'timeout', 'non2xx', 'other'];

const now = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (msg) => process.stderr.write(`[bench ${((now() - T_START) / 1000).toFixed(1).padStart(5)}s] ${msg}\n`);
const T_START = now();

// ---------------------------------------------------------------- options

function parseArgs(argv) {
  const o = { quick: false, saturatedDeploys: null, deploys: null, rate: 1000, conns: 32, configs: null, modes: ['ka', 'close'], gapMs: null, restMs: null, keepTmp: false, rdArgs: [], overheadRounds: null, overheadSets: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const val = () => (inline !== undefined ? inline : argv[++i]);
    switch (flag) {
      case '--quick': o.quick = true; break;
      case '--deploys': o.deploys = Number(val()); break;
      case '--rate': o.rate = Number(val()); break;
      case '--conns': o.conns = Number(val()); break;
      case '--configs': o.configs = val().split(','); break;
      case '--modes': o.modes = val().split(','); break;
      case '--gap-ms': o.gapMs = Number(val()); break;
      case '--rest-ms': o.restMs = Number(val()); break;
      case '--keep-tmp': o.keepTmp = true; break;
      case '--rd-arg': o.rdArgs.push(val()); break;
      case '--overhead-rounds': o.overheadRounds = Number(val()); break;
      case '--overhead-sets': o.overheadSets = Number(val()); break;
      case '--saturated-deploys': o.saturatedDeploys = Number(val()); break;
      case '--help':
      case '-h':
        process.stdout.write(fs.readFileSync(__filename, 'utf8').split('\n').filter((l) => l.startsWith('//')).map((l) => l.slice(3)).join('\n') + '\n');
        process.exit(0);
        break;
      default:
        process.stderr.write(`bench: unknown flag ${a} (see --help)\n`);
        process.exit(2);
    }
  }
  if (o.deploys === null) o.deploys = o.quick ? 3 : 10;
  if (o.gapMs === null) o.gapMs = o.quick ? 600 : 1500;
  // p99 of a 3 s window is the 30th slowest of 3000 requests, and it varied
  // 2-3x between rows of one run; 10 s makes the baseline worth comparing to.
  // The rest windows are two, one before the first deploy and one after the
  // last (A-B-A), pooled: one window alone set the baseline by what the host
  // happened to do in it (the rest p99 of one run's rows spanned 0.42-1.29
  // ms), and the two show any drift over the row.
  if (o.restMs === null) o.restMs = o.quick ? 1000 : 10_000;
  // Load before the first rest window, not counted: the load generator's
  // own warm-up. A fresh scripts/load.js against an app that had already
  // served 8 or 16 s answered with a p99 of 7-10 ms in its first second,
  // 1.6-2.4 in the second, 0.7-1.3 in the third and 0.3-0.6 from the
  // fifth on (keep-alive; with a new connection per request 5.7-6.2, 2.5-3.9,
  // 1.9-2.5, then ~1). With 500 ms here, the first rest window's p99 was
  // largely the generator's warm-up, and the ratio to it flattered the deploys.
  o.warmupMs = o.quick ? 2000 : 5000;
  // After the last deploy, before the second rest window: the old release's
  // drain (reuse-deploy: 1 s handshake grace, then the hand-over; PM2: its
  // kill timeout) still counts as deploy time.
  o.settleMs = o.quick ? 1500 : 2500;
  o.bootSamples = o.quick ? 5 : 10;
  if (o.overheadRounds === null) o.overheadRounds = o.quick ? 2 : 3;
  // Ten sets: a process differs from another of the same build by up to
  // ~2% (the control's sets ranged -1.3..+2.4% in one run), and the
  // median of six sets moved past the 1% that the control must resolve.
  if (o.overheadSets === null) o.overheadSets = o.quick ? 2 : 10;
  if (o.saturatedDeploys === null) o.saturatedDeploys = o.quick ? 3 : 8;
  o.overheadWindowMs = o.quick ? 1500 : 2000;
  o.timeoutMs = 2000;
  if (!(o.deploys >= 1) || !(o.rate >= 1) || !(o.conns >= 1)) {
    process.stderr.write('bench: --deploys, --rate and --conns must be positive\n');
    process.exit(2);
  }
  for (const m of o.modes) if (!['ka', 'close'].includes(m)) throw new Error(`bench: unknown mode ${m}`);
  return o;
}

const opts = parseArgs(process.argv.slice(2));
const IS_ROOT = typeof process.getuid === 'function' && process.getuid() === 0;

// ---------------------------------------------------------------- processes and cleanup

const children = new Set();
const cleanups = [];
let cleaning = null;
let finalKill = false;

function onCleanup(name, fn) {
  cleanups.push({ name, fn });
}

function spawnTracked(cmd, args, options) {
  if (finalKill) throw new Error('cleaning up: not starting anything new');
  const child = spawn(cmd, args, options);
  children.add(child);
  child.once('exit', () => children.delete(child));
  child.once('error', () => children.delete(child));
  return child;
}

function killPid(pid, signal) {
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}

function isAlive(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat[stat.lastIndexOf(')') + 2] !== 'Z';
  } catch {
    return false;
  }
}

function cmdlineOf(pid) {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
  } catch {
    return '';
  }
}

async function withTimeout(promise, ms) {
  let t;
  const r = await Promise.race([promise.then(() => true, () => true), new Promise((res) => (t = setTimeout(() => res(false), ms)))]);
  clearTimeout(t);
  return r;
}

/** Runs every registered cleanup (last first), then kills our remaining children by pid. */
function cleanupAll() {
  if (cleaning) return cleaning;
  cleaning = (async () => {
    while (cleanups.length) {
      const { name, fn } = cleanups.pop();
      try {
        if (!(await withTimeout(Promise.resolve().then(fn), 20_000))) log(`cleanup "${name}" timed out`);
      } catch (err) {
        log(`cleanup "${name}" failed: ${err.message}`);
      }
    }
    finalKill = true;
    for (const child of children) if (child.pid) killPid(child.pid, 'SIGKILL');
  })();
  return cleaning;
}

let interrupted = false;
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    if (interrupted) return;
    interrupted = true;
    log(`${sig}: cleaning up`);
    void cleanupAll().finally(() => process.exit(130));
  });
}

function nsWrap(ns, cmd, args) {
  return ns ? ['ip', ['netns', 'exec', ns, cmd, ...args]] : [cmd, args];
}

/** Runs a command to completion (bounded by timeoutMs); stderr lines are timestamped as they arrive. */
function run(cmd, args, { ns = null, env = process.env, timeoutMs = 60_000, cwd = ROOT } = {}) {
  const [c, a] = nsWrap(ns, cmd, args);
  return new Promise((resolve) => {
    const t0 = now();
    let out = '';
    let errBuf = '';
    const errLines = [];
    let settled = false;
    let timedOut = false;
    const child = spawnTracked(c, a, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => {
      errBuf += d;
      let i;
      while ((i = errBuf.indexOf('\n')) >= 0) {
        errLines.push({ at: now(), line: errBuf.slice(0, i) });
        errBuf = errBuf.slice(i + 1);
      }
    });
    const timer = setTimeout(() => {
      timedOut = true;
      if (child.pid) killPid(child.pid, 'SIGKILL');
    }, timeoutMs);
    const done = (code, signal, t1) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (errBuf) errLines.push({ at: now(), line: errBuf });
      resolve({ code, signal, out, err: errLines.map((l) => l.line).join('\n'), errLines, t0, t1, ms: t1 - t0, timedOut });
    };
    child.once('error', (e) => done(-1, null, now(), (out += String(e))));
    child.once('exit', (code, signal) => {
      const t1 = now();
      // A detached grandchild may hold our pipes: do not wait for them long.
      const wait = setTimeout(() => done(code, signal, t1), 300);
      child.once('close', () => {
        clearTimeout(wait);
        done(code, signal, t1);
      });
    });
  });
}

function mustRun(r, what) {
  if (r.code !== 0) {
    const text = `${r.out}\n${r.err}`.trim();
    const first = text.split('\n').find((l) => l.trim()) || '';
    throw new Error(`${what} failed (exit ${r.code}${r.signal ? `, ${r.signal}` : ''}${r.timedOut ? ', timed out' : ''}): ${first}\n${text}`);
  }
  return r;
}

// ---------------------------------------------------------------- http helpers (current namespace)

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function getOnce(port, timeoutMs = 500) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/', agent: false, headers: { connection: 'close' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body }));
      res.on('error', () => resolve(null));
    });
    req.setTimeout(timeoutMs, () => req.destroy());
    req.on('error', () => resolve(null));
  });
}

/** Polls every 2 ms until GET / answers 2xx (optionally with `body`); returns the time of that answer. */
async function waitHttp(port, timeoutMs = 15_000, body = null) {
  const deadline = now() + timeoutMs;
  for (;;) {
    const r = await getOnce(port);
    if (r && r.status >= 200 && r.status < 300 && (body === null || r.body.trim() === body)) return now();
    if (now() > deadline) throw new Error(`nothing answered 2xx${body ? ` with ${body}` : ''} on 127.0.0.1:${port} within ${timeoutMs} ms`);
    await sleep(2);
  }
}

// ---------------------------------------------------------------- bare app

function startBare(port, version, { preload = false } = {}) {
  const args = preload ? ['--require', PRELOAD, APP] : [APP];
  const child = spawnTracked(process.execPath, args, {
    cwd: ROOT,
    env: { ...process.env, PORT: String(port), VERSION: version, HOST: '127.0.0.1' },
    stdio: ['ignore', 'ignore', 'inherit'],
    // A session of its own, as a reuse-deploy keeper's app and a PM2 worker
    // have: with CFS autogroup, each session is scheduled as one group.
    detached: true,
  });
  const exited = new Promise((r) => child.once('exit', () => r()));
  return { child, pid: child.pid, exited };
}

async function stopBare(app, signal = 'SIGTERM') {
  if (!app || !isAlive(app.pid)) return;
  killPid(app.pid, signal);
  if (!(await withTimeout(app.exited, 3_000))) {
    killPid(app.pid, 'SIGKILL');
    await withTimeout(app.exited, 3_000);
  }
}

/**
 * The bare app's boot time, n samples: spawn to first 2xx. With `instances`
 * > 1, that many bare apps are spawned at once (each on a port of its own)
 * and a sample ends when the last of them answers: the boot of an app that
 * runs as that many processes, which on a 2-CPU host share the CPUs while
 * they start, as a release's instances do.
 */
async function measureBoot(n, instances = 1) {
  const samples = [];
  for (let i = 0; i < n; i++) {
    const ports = [];
    for (let k = 0; k < instances; k++) ports.push(await freePort());
    const t0 = now();
    const apps = ports.map((port) => startBare(port, 'boot'));
    try {
      samples.push(Math.max(...(await Promise.all(ports.map((port) => waitHttp(port))))) - t0);
    } finally {
      await Promise.all(apps.map((app) => stopBare(app, 'SIGKILL')));
    }
  }
  return samples;
}

// ---------------------------------------------------------------- load generator

function startLoad({ ns, port, mode, rate, durationMs, maxRequests, outFile, cpu = null }) {
  const args = [LOAD, '--port', String(port), '--host', '127.0.0.1', '--mode', mode, '--conns', String(opts.conns), '--rate', String(rate),
    '--duration-ms', String(Math.round(durationMs)), '--max-requests', String(Math.round(maxRequests)), '--timeout-ms', String(opts.timeoutMs), '--out', outFile];
  const [c, a] = cpu === null ? nsWrap(ns, process.execPath, args) : nsWrap(ns, 'taskset', ['-c', String(cpu), process.execPath, ...args]);
  // Its own session (scheduling autogroup), like the apps it loads.
  const child = spawnTracked(c, a, { cwd: ROOT, stdio: ['pipe', 'ignore', 'pipe'], detached: true });
  let errText = '';
  const started = new Promise((resolve, reject) => {
    child.stderr.on('data', (d) => {
      errText += d;
      if (errText.includes('started')) resolve(now());
    });
    child.once('exit', () => reject(new Error(`load generator exited before it started: ${errText.trim()}`)));
  });
  started.catch(() => undefined);
  const exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  child.stdin.on('error', () => undefined);
  return {
    child,
    started,
    async stop(waitMs = opts.timeoutMs + 10_000) {
      child.stdin.end('stop\n');
      return this.result(waitMs);
    },
    async result(waitMs = durationMs + opts.timeoutMs + 10_000) {
      if (!(await withTimeout(exited, waitMs))) {
        killPid(child.pid, 'SIGKILL');
        throw new Error('load generator did not stop in time');
      }
      const code = await exited;
      if (code !== 0) throw new Error(`load generator failed (exit ${code}): ${errText.trim()}`);
      return JSON.parse(fs.readFileSync(outFile, 'utf8'));
    },
  };
}

// ---------------------------------------------------------------- reuse-deploy

const ISO_LINE = /^(\d{4}-\d\d-\d\dT[\d:.]+Z) (.*)$/;

/**
 * Where the wall time of one reuse-deploy deploy went: the CLI's timestamped
 * progress lines (stderr) and the new keeper's log lines, in one timeline.
 */
function deployTimeline(r, stateDir, name) {
  const marks = [];
  for (const { line } of r.errLines) {
    const m = ISO_LINE.exec(line);
    if (m) marks.push({ at: Date.parse(m[1]), src: 'cli', text: m[2] });
  }
  const release = (/deployed \S+ (r\d+)/.exec(r.out) || [])[1];
  if (release) {
    try {
      for (const line of fs.readFileSync(path.join(stateDir, name, 'logs', `${release}.log`), 'utf8').split('\n')) {
        const m = /^(\d{4}-\d\d-\d\dT[\d:.]+Z) \[reuse-deploy [^\]]*\] (.*)$/.exec(line);
        if (m && Date.parse(m[1]) >= r.t0 - 5) marks.push({ at: Date.parse(m[1]), src: 'keeper', text: m[2] });
      }
    } catch {
      // no log: CLI marks only
    }
  }
  marks.sort((a, b) => a.at - b.at);
  const find = (src, re) => (marks.find((m) => m.src === src && re.test(m.text)) || {}).at;
  const t = {
    spawn: r.t0,
    cli: marks.length && marks[0].src === 'cli' ? marks[0].at : find('cli', /./),
    snapshot: find('cli', /^snapshotting /),
    starting: find('cli', /^starting /),
    bound: find('keeper', /^bound /),
    gated: find('keeper', /^phase gated/),
    health: find('cli', /^checking health/),
    joining: find('cli', /is healthy; joining/),
    live: find('keeper', /^phase live/),
    exit: r.t1,
  };
  const span = (a, b) => (t[a] !== undefined && t[b] !== undefined ? Math.round(t[b] - t[a]) : undefined);
  const phases = {
    'cli boot': span('spawn', 'cli'),
    'snapshot': t.snapshot !== undefined ? span('snapshot', 'starting') : undefined,
    'keeper boot': span('starting', 'bound'),
    'app boot': span('bound', 'gated'),
    'gate seen': span('gated', 'health'),
    'health': span('health', 'joining'),
    'go-live': span('joining', 'live'),
    'to exit': span('live', 'exit'),
  };
  for (const k of Object.keys(phases)) if (phases[k] === undefined) delete phases[k];
  const total = /healthy in (\d+) ms, total (\d+) ms/.exec(r.out);
  return {
    release: release || null,
    phases,
    timeline: marks.map((m) => ({ ms: Math.round(m.at - r.t0), src: m.src, text: m.text })),
    msToHealthy: total ? Number(total[1]) : null,
    msTotal: total ? Number(total[2]) : null,
  };
}

/** The app pids in the CLI's summary line: "... (pid 123, 456, replaced r1): ...". */
function appPidsOf(out) {
  const m = /\(pid ([\d, ]+)/.exec(out);
  return m ? (m[1].match(/\d+/g) || []).map(Number) : [];
}

function reuseDeploy(ns, port, stateDir, appEntry, instances = 1) {
  const name = 'rdbench';
  const deploy = (version) =>
    run(CLI, [appEntry, '--port', String(port), '--host', '127.0.0.1', '--name', name, '--state-dir', stateDir, '--env', `VERSION=${version}`, '--env', 'HOST=127.0.0.1', ...(instances > 1 ? ['--instances', String(instances)] : []), ...opts.rdArgs], {
      ns,
      env: COMMAND_ENV,
      timeoutMs: 90_000,
    });
  const keeperPids = () => {
    try {
      return JSON.parse(fs.readFileSync(path.join(stateDir, name, 'state.json'), 'utf8')).instances.map((i) => i.keeperPid);
    } catch {
      return [];
    }
  };
  const liveKeeper = () => {
    try {
      const live = JSON.parse(fs.readFileSync(path.join(stateDir, name, 'state.json'), 'utf8')).instances.find((i) => i.role === 'live');
      return live ? live.keeperPid : null;
    } catch {
      return null;
    }
  };
  // CPU time a release's keeper has used by the time the next deploy starts
  // (its boot, go-live, and whatever it does while the old release drains).
  let pending = null;
  const settleKeeperCpu = () => {
    if (!pending) return;
    const ns = cpuNs(pending.pid);
    if (Number.isFinite(ns) && cmdlineOf(pending.pid).includes(path.join('keeper', 'main.js'))) pending.record.keeperCpuMs = Math.round(ns / 1e6);
    pending = null;
  };
  const seen = new Set();
  const killLeftovers = () => {
    for (const pid of [...seen, ...keeperPids()]) {
      // Keepers are session leaders: their process group holds their apps.
      if (pid > 0 && cmdlineOf(pid).includes(path.join('keeper', 'main.js'))) killPid(-pid, 'SIGKILL');
    }
  };
  return {
    name,
    async start(version) {
      const r = mustRun(await deploy(version), `reuse-deploy of ${version}`);
      for (const p of keeperPids()) seen.add(p);
      const pids = appPidsOf(r.out).length;
      if (pids !== instances) throw new Error(`reuse-deploy of ${version} reported ${pids} app process(es), expected ${instances}: ${r.out.trim()}`);
    },
    async deploy(version) {
      settleKeeperCpu();
      const r = await deploy(version);
      for (const p of keeperPids()) seen.add(p);
      const parsed = deployTimeline(r, stateDir, name);
      const appPids = appPidsOf(r.out);
      const ok = r.code === 0 && appPids.length === instances;
      const error = r.code !== 0 ? `${r.out}\n${r.err}`.trim().slice(-2000) : ok ? null : `exit 0, but ${appPids.length} app process(es) reported, expected ${instances}: ${r.out.trim()}`;
      const record = { ok, t0: r.t0, t1: r.t1, wallMs: r.ms, ...parsed, appPids, error };
      const kp = liveKeeper();
      if (record.ok && kp) pending = { record, pid: kp };
      return record;
    },
    async stop() {
      settleKeeperCpu();
      const r = await run(process.execPath, [CLI, 'stop', '--name', name, '--state-dir', stateDir, '--drain-timeout', '5s'], { ns, timeoutMs: 30_000 });
      if (r.code !== 0) log(`reuse-deploy stop exited ${r.code}: ${r.err.trim().split('\n').slice(-3).join(' | ')}`);
      killLeftovers();
    },
    killLeftovers,
    appPid() {
      try {
        const st = JSON.parse(fs.readFileSync(path.join(stateDir, name, 'state.json'), 'utf8'));
        const live = st.instances.find((i) => i.role === 'live');
        if (!live) return null;
        // the app process is the keeper's child
        const kids = fs.readFileSync(`/proc/${live.keeperPid}/task/${live.keeperPid}/children`, 'utf8').trim().split(/\s+/).map(Number);
        return kids.find((k) => cmdlineOf(k).includes('bench-app.js')) ?? null;
      } catch {
        return null;
      }
    },
  };
}

// ---------------------------------------------------------------- network namespaces

function nsExists(name) {
  const r = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.split('\n').some((l) => l.split(' ')[0] === name);
}

async function killNsPids(name) {
  const list = () => {
    const r = spawnSync('ip', ['netns', 'pids', name], { encoding: 'utf8' });
    return r.status === 0 ? r.stdout.split(/\s+/).filter(Boolean).map(Number).filter((p) => p !== process.pid) : [];
  };
  // Every process in this namespace was started by this benchmark.
  let pids = list();
  for (const pid of pids) killPid(pid, 'SIGTERM');
  for (let i = 0; i < 20 && (pids = list()).length; i++) await sleep(50);
  for (const pid of pids) killPid(pid, 'SIGKILL');
}

async function createNs(name, migrate) {
  if (nsExists(name)) {
    throw new Error(`network namespace ${name} already exists (left by an earlier run?). Check what runs in it (ip netns pids ${name}), then remove it: ip netns del ${name}`);
  }
  mustRun(await run('ip', ['netns', 'add', name]), `ip netns add ${name}`);
  onCleanup(`netns ${name}`, async () => {
    await killNsPids(name);
    const r = await run('ip', ['netns', 'del', name]);
    if (r.code !== 0) log(`ip netns del ${name} failed: ${r.err.trim()}`);
  });
  mustRun(await run('ip', ['link', 'set', 'lo', 'up'], { ns: name }), `ip link set lo up in ${name}`);
  mustRun(await run('sysctl', ['-w', `net.ipv4.tcp_migrate_req=${migrate}`], { ns: name }), `sysctl in ${name}`);
  const got = (await run('cat', ['/proc/sys/net/ipv4/tcp_migrate_req'], { ns: name })).out.trim();
  if (got !== String(migrate)) throw new Error(`tcp_migrate_req in ${name} is ${got}, expected ${migrate}`);
}

/** Busy and total jiffies of the whole machine, from /proc/stat. */
function hostCpu() {
  try {
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const total = f.reduce((a, b) => a + b, 0);
    return { busy: total - f[3] - (f[4] || 0), total };
  } catch {
    return { busy: NaN, total: NaN };
  }
}

function busyPct(a, b) {
  return ((b.busy - a.busy) / Math.max(1, b.total - a.total)) * 100;
}

function currentMigrate() {
  try {
    return fs.readFileSync('/proc/sys/net/ipv4/tcp_migrate_req', 'utf8').trim();
  } catch {
    return 'unavailable';
  }
}

// ---------------------------------------------------------------- statistics

function percentile(sorted, p) {
  if (!sorted.length) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

function median(xs) {
  const s = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return null;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/**
 * Latency at rest (before the first deploy, after the warm-up; and from
 * `restAfterAt` to `restAfterUntil`, after the last deploy has settled) and
 * in the deploy window between the two, with failures counted per 100 ms
 * for the picture.
 */
function analyze(load, deploys, loadStartedAt, restAfterAt = Infinity, restAfterUntil = Infinity) {
  const firstDeploy = deploys.length ? deploys[0].t0 - load.t0 : Infinity;
  const restFrom = loadStartedAt - load.t0 + opts.warmupMs;
  const restAfterFrom = restAfterAt - load.t0;
  const restAfterTo = restAfterUntil - load.t0;
  const restBefore = [];
  const restAfter = [];
  const dep = [];
  // In the deploy window: requests that opened a new connection, and the others.
  const depFresh = [];
  const depReused = [];
  // Keep-alive: a connection's first request answered by a newer version
  // than its previous one on the same connection (it was handed over), by
  // the load generator's connection slot (load.js `wid`). The first
  // release answers v0, recorded as 0.
  const depMoved = [];
  const lastVersion = new Map();
  const failed = Object.fromEntries(KINDS.slice(1).map((k) => [k, 0]));
  const failedAtRest = { ...failed };
  const bucketMs = 100;
  const nb = Math.max(1, Math.ceil((load.end - load.t0) / bucketMs) + 1);
  const okB = new Array(nb).fill(0);
  const failB = new Array(nb).fill(0);
  for (let i = 0; i < load.requests; i++) {
    const s = load.start[i];
    const k = load.kind[i];
    const b = Math.min(nb - 1, Math.floor((s + load.lat[i]) / bucketMs)); // bucket of completion
    if (k === 0) {
      okB[b]++;
      if (s >= restFrom && s < firstDeploy) restBefore.push(load.lat[i]);
      else if (s >= restAfterFrom) {
        // After the second rest window the bare app boots under the load (not counted).
        if (s < restAfterTo) restAfter.push(load.lat[i]);
      } else if (s >= firstDeploy) {
        dep.push(load.lat[i]);
        (load.fresh && load.fresh[i] ? depFresh : depReused).push(load.lat[i]);
        const before = load.wid ? lastVersion.get(load.wid[i]) : undefined;
        if (before !== undefined && load.ver[i] > before && !load.fresh[i]) depMoved.push(load.lat[i]);
      }
      if (load.wid) lastVersion.set(load.wid[i], load.ver[i]);
    } else {
      failB[b]++;
      failed[KINDS[k]]++;
      if (s < firstDeploy || (s >= restAfterFrom && s < restAfterTo)) failedAtRest[KINDS[k]]++;
    }
  }
  const rest = [...restBefore, ...restAfter];
  for (const xs of [rest, restBefore, restAfter, dep, depFresh, depReused, depMoved]) xs.sort((a, b) => a - b);
  const stats = (xs) => ({ n: xs.length, p50: percentile(xs, 50), p99: percentile(xs, 99) });
  const overRest = (xs) => {
    const threshold = 1.5 * percentile(rest, 99);
    return xs.filter((x) => x > threshold).length;
  };
  const totalFailed = Object.values(failed).reduce((a, b) => a + b, 0);
  return {
    requests: load.requests,
    failed: totalFailed,
    byKind: failed,
    failedAtRest,
    errors: load.errors,
    versions: load.versions,
    rest: stats(rest),
    restBefore: stats(restBefore),
    restAfter: stats(restAfter),
    withDeploys: stats(dep),
    newConnections: stats(depFresh),
    reusedConnections: stats(depReused),
    movedConnections: load.wid && rest.length ? { ...stats(depMoved), over: overRest(depMoved), slow: overRest(dep) } : null,
    buckets: { ms: bucketMs, ok: okB, failed: failB },
    markers: deploys.map((d) => ({ from: d.t0 - load.t0, to: d.t1 - load.t0, ok: d.ok })),
    restAfterFrom: Number.isFinite(restAfterFrom) ? restAfterFrom : null,
    loadMs: load.end - load.t0,
  };
}

/**
 * Where in the deploy cycle a reuse-deploy row's requests over 1.5x the rest
 * p99 started: p99 with deploys stays within 1.5x exactly when fewer than
 * 1% of the deploy window's requests are over it, so the last column adds
 * up to that budget. Parts are cut at each deploy's start, its "phase live"
 * (the keeper's log) and 1 s after it, when the old release's drain begins
 * (the default handshake grace). A deploy without a live mark (a failed
 * one) starts no cycle: its requests count in the previous deploy's last part.
 */
function cycleParts(s) {
  const raw = s.raw;
  const limit = 1.5 * s.summary.rest.p99;
  const end = s.summary.restAfterFrom ?? Infinity;
  const cycles = s.deploys
    .map((d) => {
      const live = (d.timeline || []).find((m) => m.src === 'keeper' && /^phase live/.test(m.text));
      return live ? { t0: d.t0 - raw.t0, live: d.t0 + live.ms - raw.t0 } : null;
    })
    .filter(Boolean);
  if (!cycles.length || !limit) return null;
  const parts = [
    ['boot: start to go-live', (c) => c.t0, (c) => c.live],
    ['go-live to +200 ms', (c) => c.live, (c) => c.live + 200],
    ['+200 ms to +1 s', (c) => c.live + 200, (c) => c.live + 1000],
    ['+1 s to +1.5 s (drain starts)', (c) => c.live + 1000, (c) => c.live + 1500],
    ['+1.5 s to the next deploy', (c) => c.live + 1500, (c, next) => (next ? next.t0 : end)],
  ].map(([name, from, to]) => ({ name, from, to, n: 0, over: 0 }));
  let total = 0;
  for (let i = 0; i < raw.start.length; i++) {
    const t = raw.start[i];
    if (t < cycles[0].t0 || t >= end || raw.kind[i] !== 0) continue;
    total++;
    let k = 0;
    while (k + 1 < cycles.length && cycles[k + 1].t0 <= t) k++;
    const part = parts.find((p) => t >= p.from(cycles[k]) && t < p.to(cycles[k], cycles[k + 1]));
    if (!part) continue;
    part.n++;
    if (raw.lat[i] > limit) part.over++;
  }
  return { limit, total, parts };
}

// ---------------------------------------------------------------- scenarios

async function scenario(config, mode, impl, tmp) {
  const label = `${config.label} / ${mode}`;
  log(`${label}: starting v0`);
  await impl.start('v0');
  const deploys = [];
  let load = null;
  try {
    const undeployedMs = opts.warmupMs + 2 * opts.restMs + opts.settleMs;
    const budget = undeployedMs + opts.deploys * (opts.gapMs + 20_000) + 30_000;
    load = startLoad({
      ns: config.ns,
      port: config.port,
      mode,
      rate: opts.rate,
      durationMs: budget,
      maxRequests: Math.ceil((opts.rate * (undeployedMs + opts.deploys * (opts.gapMs + 10_000) + 10_000)) / 1000) + 1000,
      outFile: path.join(tmp, `load-${config.key}-${mode}.json`),
    });
    const loadStartedAt = await load.started;
    const cpu0 = hostCpu();
    await sleep(opts.warmupMs + opts.restMs);
    for (let i = 1; i <= opts.deploys && !interrupted; i++) {
      const d = await impl.deploy(`v${i}`);
      d.version = `v${i}`;
      deploys.push(d);
      log(`${label}: deploy ${i}/${opts.deploys} ${d.ok ? 'ok' : 'FAILED'} in ${Math.round(d.wallMs)} ms${d.phases ? ` (${Object.entries(d.phases).map(([k, v]) => `${k} ${v}`).join(', ')})` : ''}`);
      if (!d.ok && d.error) log(`  ${d.error.split('\n').slice(-4).join('\n  ')}`);
      if (i < opts.deploys) await sleep(opts.gapMs);
    }
    await sleep(opts.settleMs);
    const restAfterAt = now();
    if (!interrupted) await sleep(opts.restMs);
    const restAfterUntil = now();
    const cpu1 = hostCpu(); // the row's CPU, without the boots below
    // The app's boot time under this same load, the reference of this row's
    // "wall - boot" (as in the saturated section): a deploy's boot shares the
    // CPUs with the live version and the load generator, a bare boot on an
    // idle host does not. Bare apps on ports of their own, after the rest
    // window, so that their boots are not in its latencies.
    const bootsLoadedMs = interrupted ? [] : await measureBoot(opts.bootSamples, config.instances || 1);
    const result = await load.stop();
    load = null;
    const summary = analyze(result, deploys, loadStartedAt, restAfterAt, restAfterUntil);
    summary.bootLoadedMs = bootsLoadedMs.length ? median(bootsLoadedMs) : null;
    summary.hostCpuPct = busyPct(cpu0, cpu1);
    summary.loadavg = os.loadavg()[0];
    if (deploys.length && result.end < deploys[deploys.length - 1].t1) summary.warning = 'the load generator stopped (time or request bound) before the last deploy ended';
    const lastVersion = `v${opts.deploys}`;
    log(`${label}: ${summary.requests} requests, ${summary.failed} failed ${JSON.stringify(summary.byKind)}; versions seen ${Object.keys(summary.versions).length}${summary.versions[lastVersion] ? '' : ` (never saw ${lastVersion}!)`}`);
    return { config: config.key, label: config.label, mode, ns: config.ns, instances: config.instances || 1, port: config.port, deploys, bootsLoadedMs, summary, raw: { t0: result.t0, end: result.end, start: result.start, lat: result.lat, kind: result.kind, fresh: result.fresh, ver: result.ver, wid: result.wid, truncated: result.truncated } };
  } finally {
    if (load) {
      load.child.stdin.end();
      await load.result(opts.timeoutMs + 5_000).catch(() => undefined);
    }
    log(`${label}: stopping`);
    await impl.stop();
  }
}

function plainImpl(port) {
  let app = null;
  return {
    async start(version) {
      app = startBare(port, version);
      await waitHttp(port, 15_000, version);
    },
    async deploy(version) {
      const t0 = now();
      await stopBare(app, 'SIGTERM');
      const tExit = now();
      app = startBare(port, version);
      try {
        const t1 = await waitHttp(port, 15_000, version);
        return { ok: true, t0, t1, wallMs: t1 - t0, phases: { 'old exit': Math.round(tExit - t0), 'new boot': Math.round(t1 - tExit) } };
      } catch (err) {
        return { ok: false, t0, t1: now(), wallMs: now() - t0, error: err.message };
      }
    },
    async stop() {
      await stopBare(app, 'SIGTERM');
    },
  };
}

function pm2Impl(port, pm2Home) {
  const name = 'rdbench-app';
  const env = (version) => ({ ...process.env, FORCE_COLOR: '0', NO_COLOR: '1', PM2_HOME: pm2Home, PORT: String(port), HOST: '127.0.0.1', VERSION: version });
  const pm2 = (args, version, timeoutMs = 60_000) => run(PM2, args, { env: env(version), timeoutMs });
  return {
    async start(version) {
      mustRun(await pm2(['start', APP, '-i', '2', '--name', name, '--kill-timeout', '1600'], version), 'pm2 start');
      await waitHttp(port, 15_000, version);
    },
    async deploy(version) {
      const r = await pm2(['reload', name, '--update-env'], version);
      const ok = r.code === 0;
      return { ok, t0: r.t0, t1: r.t1, wallMs: r.ms, error: ok ? null : `${r.out}\n${r.err}`.trim().slice(-2000) };
    },
    async stop() {
      await pm2(['delete', name], 'v0', 30_000);
    },
  };
}

async function pm2Kill(pm2Home) {
  if (!fs.existsSync(pm2Home)) return;
  const r = await run(PM2, ['kill'], { env: { ...process.env, PM2_HOME: pm2Home }, timeoutMs: 30_000 });
  if (r.code !== 0) log(`pm2 kill exited ${r.code}`);
  // Belt and braces: the daemon we started, by its pid file.
  try {
    const pid = Number(fs.readFileSync(path.join(pm2Home, 'pm2.pid'), 'utf8'));
    if (pid > 0 && isAlive(pid) && cmdlineOf(pid).includes('PM2')) killPid(pid, 'SIGKILL');
  } catch {
    // no pid file: the daemon is gone
  }
}

// ---------------------------------------------------------------- preload overhead

/** The nice value of this process's session (CFS autogroup), null where autogroups are off or absent. */
function autogroupNice() {
  try {
    if (fs.readFileSync('/proc/sys/kernel/sched_autogroup_enabled', 'utf8').trim() !== '1') return null;
    return Number(/nice (-?\d+)/.exec(fs.readFileSync('/proc/self/autogroup', 'utf8'))[1]);
  } catch {
    return null;
  }
}

/** CPU time (ns) used so far by every thread of `pid`, from /proc/<pid>/task/<tid>/schedstat. */
function cpuNs(pid) {
  let total = 0;
  try {
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      try {
        total += Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
      } catch {
        // thread gone meanwhile
      }
    }
  } catch {
    return NaN;
  }
  return total;
}

/** wrk, when installed (the Debian package): the preload overhead is measured with it. */
const WRK = ['/usr/bin/wrk', '/usr/local/bin/wrk'].find((f) => fs.existsSync(f)) || null;

/** wrk's latency figure ("532.00us", "5.54ms", "1.02s") in ms. */
function wrkMs(text) {
  const m = /^([\d.]+)(us|ms|s)$/.exec(text || '');
  return m ? Number(m[1]) * { us: 0.001, ms: 1, s: 1000 }[m[2]] : null;
}

/**
 * One closed-loop wrk run (keep-alive connections, or with `close` a new
 * connection per request, each sending its next request as soon as its
 * answer arrives), on CPU 0 when pinned: throughput,
 * failures by kind, and p50/p99 of the run (`--latency`).
 */
async function wrk(port, ms, { pinned = false, threads = 1, conns = opts.conns, close = false } = {}) {
  const args = [`-t${threads}`, `-c${conns}`, `-d${Math.max(1, Math.round(ms / 1000))}s`, '--timeout', '2s', '--latency', ...(close ? ['-H', 'Connection: close'] : []), `http://127.0.0.1:${port}/`];
  const r = pinned ? await run('taskset', ['-c', '0', WRK, ...args], { timeoutMs: ms + 30_000 }) : await run(WRK, args, { timeoutMs: ms + 30_000 });
  const text = r.out || '';
  const rps = Number((/Requests\/sec:\s+([\d.]+)/.exec(text) || [])[1]);
  const requests = Number((/(\d+) requests in/.exec(text) || [])[1]);
  if (!(rps > 0) || !(requests > 0)) throw new Error(`wrk gave no result: ${text.trim().split('\n').slice(-3).join(' / ') || r.err}`);
  const non2xx = Number((/Non-2xx or 3xx responses:\s+(\d+)/.exec(text) || [])[1] || 0);
  const [connect, read, write, timeout] = (/Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text) || [0, 0, 0, 0, 0]).slice(1).map(Number);
  const p = (q) => wrkMs((new RegExp(`^\\s+${q}%\\s+(\\S+)`, 'm').exec(text) || [])[1]);
  return { rps, requests, failed: non2xx + connect + read + write + timeout, byKind: { connect, read, write, timeout, non2xx }, p50: p(50), p99: p(99), text };
}

/** Pins every thread of `pid` to one CPU (taskset); false where that is not possible. */
function pin(pid, cpu) {
  return spawnSync('taskset', ['-a', '-p', '-c', String(cpu), String(pid)], { stdio: 'ignore' }).status === 0;
}

/**
 * The runtime preload's cost per request: the app bare, with the inert
 * preload, and deployed by reuse-deploy (preload active, behind a keeper),
 * measured side by side. One process of each variant, plus a second bare
 * one as a control, all pinned to CPU 1 in sessions of their own (so that
 * CFS autogroup gives each an equal share) and with the same time slice
 * (see equalizeSlices below), are loaded at the same time, each by its
 * own closed-loop load generator pinned to CPU 0, in keep-alive windows
 * and in windows of a new connection per request. Per window, each
 * process's CPU time per request (its threads' run time,
 * /proc/<pid>/task/<tid>/schedstat, over the requests it answered) is
 * compared with the mean of the two bare ones' in the same window. Side
 * by side, the host's speed is the same for all of them: loaded one after the other,
 * as an earlier version did, throughput moved 15-20% between seconds (the
 * host switches between a fast and a slow mode), and the per-round
 * difference spanned -9..+4%. What is left is each process's own luck
 * (its JIT decisions, its heap): of two bare processes side by side, one
 * cost 0.7-1.2% more than the other in seven of eight 4 s windows. So the
 * measure is repeated over opts.overheadSets sets of processes, all
 * started before the first is measured, each set first loaded untimed
 * (OVERHEAD_WARMUP_MS); a set's figure is the median of its windows,
 * the variant's the median over the sets. The control's figure is the
 * method's own noise. Throughput is given per CPU-second (1 s / CPU time
 * per request): a process's own requests per second depend on the share
 * of CPU 1 it got in a window.
 */
// Keep-alive; half of it for a new connection per request. A version that
// started each set's processes just before measuring them saw their first
// windows differ by up to 39% (V8's tier-up, the young generation's growth,
// and the deployed process's V8 threads at nice 19 for its first 10 s).
const OVERHEAD_WARMUP_MS = 4_000;
/** Keep-alive, and a new connection per request: the runtime's per-connection work (tracking for the drain) shows only in the second. */
const OVERHEAD_MODES = ['ka', 'close'];

async function measureOverhead(tmp, appEntry) {
  const variants = [
    { key: 'bare', label: 'bare node' },
    { key: 'control', label: 'bare node, a second process (control)' },
    { key: 'preload', label: 'node --require preload (inert)' },
    { key: 'deployed', label: 'deployed by reuse-deploy' },
  ];
  const windowMs = opts.overheadWindowMs;
  const sets = [];
  for (let k = 0; k < opts.overheadSets; k++) {
    const set = [];
    sets.push(set);
    for (const v of variants) {
      const port = await freePort();
      if (v.key === 'deployed') {
        const rd = reuseDeploy(null, port, path.join(tmp, `state-overhead-${k + 1}`), appEntry);
        onCleanup(`overhead reuse-deploy ${k + 1}`, () => rd.stop());
        set.push({ key: v.key, port, pid: 0, stop: () => rd.stop() });
        await rd.start('v0');
        await waitHttp(port, 15_000, 'v0');
        set[set.length - 1].pid = rd.appPid();
        if (!set[set.length - 1].pid) throw new Error('could not find the pid of the deployed app process');
      } else {
        const app = startBare(port, 'v0', { preload: v.key === 'preload' });
        onCleanup(`overhead ${v.key} app ${k + 1}`, () => stopBare(app, 'SIGKILL'));
        set.push({ key: v.key, port, pid: app.pid, stop: () => stopBare(app, 'SIGKILL') });
        await waitHttp(port, 15_000, 'v0');
      }
    }
  }
  const pids = variants.map((_, i) => sets.map((set) => set[i].pid));
  const pinnedAll = os.cpus().length >= 2 && sets.flat().every((p) => pin(p.pid, 1));
  // The keeper gives a deployed app's main thread a 0.1 ms time slice. Side
  // by side, that alone made it preempt the others more often and answer
  // in smaller batches: +1.2-2.1% CPU per request against bare in four
  // runs, -0.5..+0.1% with the slice reset to the default in two runs
  // between them. Alone on a CPU, as an app normally is, the slice changes
  // nothing, so every process of a set gets the deployed one's slice: what
  // is compared is the runtime.
  const slices = sets.map((set) => equalizeSlices(set, set[variants.findIndex((v) => v.key === 'deployed')].pid));
  const windows = [];
  try {
    for (const set of sets) {
      for (const mode of OVERHEAD_MODES) if (!interrupted) await loadSideBySide(set, mode, mode === 'ka' ? OVERHEAD_WARMUP_MS : OVERHEAD_WARMUP_MS / 2, pinnedAll, tmp);
    }
    for (let round = 0; round < opts.overheadRounds && !interrupted; round++) {
      for (const [k, set] of sets.entries()) {
        for (const mode of OVERHEAD_MODES) {
          const m = await loadSideBySide(set, mode, windowMs, pinnedAll, tmp);
          windows.push({ set: k, round, mode, perVariant: m });
          log(`overhead round ${round + 1} set ${k + 1} ${mode}: ${variants.map((v, i) => `${v.key} ${m[i].cpuUsPerReq.toFixed(2)}`).join(', ')} µs/req`);
        }
      }
    }
  } finally {
    for (const p of sets.flat()) await p.stop();
  }
  if (!pinnedAll) log('overhead: could not pin the apps to CPU 1 (taskset); measured unpinned');
  const measured = [...new Set(windows.map((w) => w.set))];
  // The control against bare is the noise of comparing two single
  // processes; the other variants are compared with the mean of the two,
  // which halves the part of that noise that is the reference's own luck.
  const control = variants.findIndex((v) => v.key === 'control');
  const reference = (w, i) => (i === control ? w.perVariant[0].cpuUsPerReq : (w.perVariant[0].cpuUsPerReq + w.perVariant[control].cpuUsPerReq) / 2);
  const diff = (w, i) => (w.perVariant[i].cpuUsPerReq / reference(w, i) - 1) * 100;
  return OVERHEAD_MODES.flatMap((mode) => variants.map((v, i) => {
    const ws = windows.filter((w) => w.mode === mode);
    const perSet = measured.map((k) => median(ws.filter((w) => w.set === k).map((w) => diff(w, i))));
    const cpuUsPerReq = median(ws.map((w) => w.perVariant[i].cpuUsPerReq));
    return {
      key: v.key,
      label: v.label,
      mode,
      pids: pids[i],
      sliceNs: slices,
      cpuUsPerReq,
      reqPerCpuSecond: 1e6 / cpuUsPerReq,
      cpuDiffPct: median(perSet),
      perSetDiffPct: perSet,
      cpuDiffRange: [Math.min(...perSet), Math.max(...perSet)],
      windowDiffIqr: [quantile(ws.map((w) => diff(w, i)), 0.25), quantile(ws.map((w) => diff(w, i)), 0.75)],
      failed: ws.reduce((a, w) => a + w.perVariant[i].failed, 0),
      windows: ws.map((w) => ({ set: w.set, round: w.round, ...w.perVariant[i] })),
    };
  }));
}

/** The main thread's time slice (ns) of `pid`, from /proc/<pid>/sched (se.slice, Linux 6.6+), or null. */
function sliceOf(pid) {
  try {
    const m = /^se\.slice\s*:\s*(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/sched`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** Gives every process of `set` the time slice of process `pid` (main threads; the keeper sets only that one). Returns the slice, or null where the kernel has none to set. */
function equalizeSlices(set, pid) {
  const slice = sliceOf(pid);
  if (slice === null) return null;
  const { setSlice } = require(path.join(ROOT, 'dist', 'src', 'native'));
  for (const p of set) if (p.pid !== pid && sliceOf(p.pid) !== slice) setSlice(p.pid, slice);
  return slice;
}

/** The p-quantile of xs (linear between order statistics), null when empty. */
function quantile(xs, p) {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  const x = p * (s.length - 1);
  const lo = Math.floor(x);
  return s[lo] + (s[Math.min(lo + 1, s.length - 1)] - s[lo]) * (x - lo);
}

/**
 * One window of closed-loop load on every process of `set` at once, a load
 * generator each: per process, its requests per second, CPU time per
 * request, and failed requests.
 */
async function loadSideBySide(set, mode, windowMs, pinned, tmp) {
  const c0 = set.map((p) => cpuNs(p.pid));
  const runs = await Promise.all(set.map((p) => loadWindow(p, mode, windowMs, pinned, tmp)));
  return set.map((p, i) => ({
    pid: p.pid,
    rps: runs[i].rps,
    requests: runs[i].requests,
    cpuUsPerReq: (cpuNs(p.pid) - c0[i]) / 1000 / Math.max(1, runs[i].requests),
    failed: runs[i].failed,
  }));
}

/** One closed-loop run against one process: wrk, or scripts/load.js where wrk is not installed. */
async function loadWindow(p, mode, windowMs, pinned, tmp) {
  if (WRK) return wrk(p.port, windowMs, { pinned, close: mode === 'close' });
  const outFile = path.join(tmp, `overhead-${p.pid}.json`);
  const load = startLoad({ ns: null, port: p.port, mode, rate: 0, durationMs: windowMs, maxRequests: 2_000_000, outFile, cpu: pinned ? 0 : null });
  const r = await load.result();
  let failed = 0;
  for (let k = 0; k < r.requests; k++) if (r.kind[k] !== 0) failed++;
  return { rps: r.requests / ((r.end - r.t0) / 1000), requests: r.requests, failed };
}

// ---------------------------------------------------------------- saturating load

/** wrk's threads and connections for the saturated section. */
const SATURATE = { threads: 2, conns: 50 };

/**
 * reuse-deploy (one instance, this namespace) under a load that saturates
 * the host: wrk -t2 -c50, closed loop, as in the issue's nginx and PM2
 * figures. The rate-limited rows above leave CPU to spare; here every CPU
 * is busy, so a deploy's processes compete for it with the live version
 * and the load generator. wrk reports latency over a whole run only, so
 * the rest window and the deploy window are two runs; between them, the
 * bare app's boot time is measured under the same load (the fair measure
 * to hold a deploy's wall time against). Deploys start opts.gapMs (at
 * least 1.5 s: more than the handshake grace, which a deploy would wait
 * out) after the previous one ended, while the wrk run has 2 s left.
 */
async function measureSaturated(tmp, appEntry) {
  const port = await freePort();
  const impl = reuseDeploy(null, port, path.join(tmp, 'state-saturated'), appEntry);
  await impl.start('v0');
  try {
    await wrk(port, 1_000, SATURATE); // connections and JIT warm
    log(`saturated: rest window (${opts.restMs} ms)`);
    const rest = await wrk(port, opts.restMs, SATURATE);
    log(`saturated: rest ${fmt(rest.rps, 0)} req/s, p50 ${rest.p50} ms, p99 ${rest.p99} ms; bare boots under the same load`);
    const bootLoad = wrk(port, (opts.bootSamples + 2) * 1_000, SATURATE);
    await sleep(1_000);
    const bootsLoaded = await measureBoot(opts.bootSamples);
    await bootLoad;
    const gapMs = Math.max(opts.gapMs, 1_500);
    const windowMs = opts.saturatedDeploys * (gapMs + 1_500) + 2_000;
    log(`saturated: ${opts.saturatedDeploys} deploys under wrk (${windowMs} ms)`);
    const loadStart = now();
    const loaded = wrk(port, windowMs, SATURATE);
    await sleep(1_000);
    const deploys = [];
    for (let i = 1; i <= opts.saturatedDeploys && !interrupted && now() < loadStart + windowMs - 2_000; i++) {
      const d = await impl.deploy(`v${i}`);
      deploys.push(d);
      log(`saturated: deploy ${i} ${d.ok ? 'ok' : 'FAILED'} in ${Math.round(d.wallMs)} ms`);
      await sleep(gapMs);
    }
    const dep = await loaded;
    for (const w of [rest, dep]) delete w.text;
    return { threads: SATURATE.threads, conns: SATURATE.conns, gapMs, rest, dep, deploys: deploys.map(({ ok, wallMs, phases, error }) => ({ ok, wallMs, phases, error })), bootsLoadedMs: bootsLoaded };
  } finally {
    await impl.stop();
  }
}

// ---------------------------------------------------------------- output

function fmt(x, digits = 1) {
  if (x === null || x === undefined || !Number.isFinite(x)) return '-';
  return x.toFixed(digits);
}

function table(headers, rows, alignLeft = 2) {
  const w = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells) => cells.map((c, i) => (i < alignLeft ? String(c).padEnd(w[i]) : String(c).padStart(w[i]))).join('  ');
  return [line(headers), w.map((n) => '-'.repeat(n)).join('  '), ...rows.map(line)].join('\n');
}

function esc(s) {
  return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function svgPicture(scenarios, title) {
  const W = 1000;
  const PH = 170;
  const ml = 60;
  const mr = 60;
  const mt = 26;
  const mb = 24;
  const top = 52;
  const H = top + scenarios.length * PH + 20;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${ml}" y="22" font-size="14" font-weight="bold">${esc(title)}</text>`,
    `<text x="${ml}" y="40" fill="#555"><tspan fill="#1f77b4">━ ok req/s (left axis)</tspan>  <tspan fill="#d62728">▮ failed per 100 ms (right axis)</tspan>  <tspan fill="#888">┆ deploy start, shaded until the command returned</tspan></text>`,
  ];
  scenarios.forEach((s, idx) => {
    const y0 = top + idx * PH;
    const pw = W - ml - mr;
    const ph = PH - mt - mb;
    const b = s.summary.buckets;
    const n = Math.max(1, Math.floor(s.summary.loadMs / b.ms)); // whole buckets only
    const tMax = (n * b.ms) / 1000;
    const rps = b.ok.slice(0, n).map((c) => (c * 1000) / b.ms);
    const failed = b.failed.slice(0, n);
    const yMax = Math.max(10, ...rps) * 1.1;
    const fMax = Math.max(1, ...failed);
    const X = (sec) => ml + (sec / tMax) * pw;
    const Y = (v) => y0 + mt + ph - (v / yMax) * ph;
    const YF = (v) => y0 + mt + ph - (v / fMax) * ph * 0.9;
    parts.push(`<g>`);
    parts.push(`<text x="${ml}" y="${y0 + mt - 8}" font-weight="bold">${esc(`${s.label} / ${s.mode === 'ka' ? 'keep-alive' : 'new connection per request'}`)}</text>`);
    parts.push(`<text x="${W - mr}" y="${y0 + mt - 8}" text-anchor="end" fill="#333">${esc(`${s.summary.requests} requests, ${s.summary.failed} failed (connect ${s.summary.byKind.connect}, reset ${s.summary.byKind.reset}, timeout ${s.summary.byKind.timeout}, non-2xx ${s.summary.byKind.non2xx})`)}</text>`);
    parts.push(`<rect x="${ml}" y="${y0 + mt}" width="${pw}" height="${ph}" fill="#fafafa" stroke="#ccc"/>`);
    for (const m of s.summary.markers) {
      if (m.from / 1000 >= tMax) continue;
      const xa = X(m.from / 1000);
      const xb = Math.min(ml + pw, Math.max(xa + 1, X(m.to / 1000)));
      parts.push(`<rect x="${xa.toFixed(1)}" y="${y0 + mt}" width="${(xb - xa).toFixed(1)}" height="${ph}" fill="${m.ok ? '#e0e0e0' : '#f6c6c6'}"/>`);
      parts.push(`<line x1="${xa.toFixed(1)}" x2="${xa.toFixed(1)}" y1="${y0 + mt}" y2="${y0 + mt + ph}" stroke="#888" stroke-dasharray="3,2"/>`);
    }
    const step = tMax > 30 ? 5 : tMax > 10 ? 2 : 1;
    for (let t = 0; t <= tMax; t += step) {
      parts.push(`<line x1="${X(t).toFixed(1)}" x2="${X(t).toFixed(1)}" y1="${y0 + mt + ph}" y2="${y0 + mt + ph + 4}" stroke="#666"/>`);
      parts.push(`<text x="${X(t).toFixed(1)}" y="${y0 + mt + ph + 15}" text-anchor="middle" fill="#555">${t}s</text>`);
    }
    parts.push(`<text x="${ml - 4}" y="${Y(yMax / 1.1) + 4}" text-anchor="end" fill="#1f77b4">${Math.round(yMax / 1.1)}</text>`);
    parts.push(`<text x="${ml - 4}" y="${y0 + mt + ph}" text-anchor="end" fill="#1f77b4">0</text>`);
    parts.push(`<text x="${W - mr + 4}" y="${YF(fMax) + 4}" fill="#d62728">${fMax}</text>`);
    parts.push(`<text x="${W - mr + 4}" y="${y0 + mt + ph}" fill="#d62728">0</text>`);
    const bw = Math.max(1, pw / n);
    failed.forEach((f, i) => {
      if (f > 0) parts.push(`<rect x="${X((i * b.ms) / 1000).toFixed(1)}" y="${YF(f).toFixed(1)}" width="${bw.toFixed(1)}" height="${(y0 + mt + ph - YF(f)).toFixed(1)}" fill="#d62728"/>`);
    });
    const pts = rps.map((v, i) => `${X(((i + 0.5) * b.ms) / 1000).toFixed(1)},${Y(v).toFixed(1)}`).join(' ');
    parts.push(`<polyline points="${pts}" fill="none" stroke="#1f77b4" stroke-width="1.2"/>`);
    parts.push(`</g>`);
  });
  parts.push('</svg>');
  return parts.join('\n');
}

// ---------------------------------------------------------------- main

let appEntry = APP;

async function main() {
  if (!fs.existsSync(CLI) || !fs.existsSync(PRELOAD)) throw new Error('dist/ is missing: build first with `npm run build`');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rdbench-'));
  onCleanup('temp dir', () => {
    if (opts.keepTmp) log(`temp files kept in ${tmp}`);
    else fs.rmSync(tmp, { recursive: true, force: true });
  });
  // reuse-deploy snapshots the app's directory on every deploy: give it a
  // directory of its own holding just the app (a copy of scripts/bench-app.js).
  const appDir = path.join(tmp, 'app');
  fs.mkdirSync(appDir);
  fs.writeFileSync(path.join(appDir, 'package.json'), JSON.stringify({ name: 'rdbench-app', version: '1.0.0', private: true, main: 'bench-app.js' }));
  fs.copyFileSync(APP, path.join(appDir, 'bench-app.js'));
  appEntry = path.join(appDir, 'bench-app.js');
  const notes = [];
  // The deploy commands run in this process's session (CFS autogroup): a
  // session left at a raised nice value (`echo 19 > /proc/<pid>/autogroup`
  // on a process of it, as a script of one's own may do) gives them a CPU
  // share far below the apps' and the load's, and changes what a row
  // measures. Said in the table rather than refused.
  const sessionNice = autogroupNice();
  if (sessionNice !== null && sessionNice !== 0) notes.push(`this benchmark's session (CFS autogroup) runs at nice ${sessionNice}, and so do the deploy commands it starts: their figures are not comparable with a run at nice 0 (\`echo 0 > /proc/$$/autogroup\` in the shell that starts it)`);
  const meta = {
    date: new Date().toISOString(),
    sessionNice,
    node: process.version,
    kernel: os.release(),
    cpus: os.cpus().length,
    root: IS_ROOT,
    loadavgStart: os.loadavg(),
    options: opts,
    git: spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).stdout.trim() || null,
  };
  log(`${opts.quick ? 'quick run' : 'full run'}: ${opts.deploys} deploys per configuration and mode, ${opts.rate} req/s over ${opts.conns} connections, modes ${opts.modes.join(',')}`);

  // Configurations.
  let configs = [
    { key: 'plain', label: 'plain restart', ns: null },
    { key: 'pm2', label: 'pm2 reload (cluster, 2)', ns: null },
  ];
  let useNs = IS_ROOT;
  if (IS_ROOT) {
    try {
      await createNs('rdbench-0', 0);
      await createNs('rdbench-1', 1);
    } catch (err) {
      if (/already exists/.test(err.message)) throw err;
      useNs = false;
      notes.push(`could not create network namespaces (${err.message.split('\n')[0]}): reuse-deploy runs in the current namespace only`);
    }
  } else {
    notes.push(`not root: reuse-deploy runs only in the current network namespace (net.ipv4.tcp_migrate_req=${currentMigrate()}); the tcp_migrate_req=1 configuration is skipped`);
  }
  if (useNs) {
    configs.push({ key: 'rd-mig0', label: 'reuse-deploy migrate_req=0', ns: 'rdbench-0' }, { key: 'rd-mig1', label: 'reuse-deploy migrate_req=1', ns: 'rdbench-1' });
    configs.push({ key: 'rd-mig0-n2', label: 'reuse-deploy migrate_req=0, 2 inst', ns: 'rdbench-0', instances: 2 }, { key: 'rd-mig1-n2', label: 'reuse-deploy migrate_req=1, 2 inst', ns: 'rdbench-1', instances: 2 });
  } else {
    configs.push({ key: 'rd-cur', label: `reuse-deploy (this netns, migrate_req=${currentMigrate()})`, ns: null });
    configs.push({ key: 'rd-cur-n2', label: `reuse-deploy (this netns, migrate_req=${currentMigrate()}), 2 inst`, ns: null, instances: 2 });
  }
  notes.push('plain restart and pm2 run in the current network namespace' + (useNs ? '; reuse-deploy, its app and its load generator run in namespaces rdbench-0 / rdbench-1' : ''));
  if (opts.configs) {
    const known = configs.map((c) => c.key);
    for (const k of opts.configs) {
      if (known.includes(k)) continue;
      if (['rd-mig0', 'rd-mig1', 'rd-mig0-n2', 'rd-mig1-n2', 'rd-cur', 'rd-cur-n2'].includes(k)) notes.push(`--configs ${k}: not available here (${useNs ? 'network namespaces are in use' : 'no network namespaces'}); skipped`);
      else throw new Error(`--configs: unknown configuration ${k} (available: ${known.join(', ')})`);
    }
    configs = configs.filter((c) => opts.configs.includes(c.key));
  }

  // Boot time of the bare app: one process, and as many at once as a
  // configuration's release runs (its rows' "wall - boot" is against that).
  const boots = {};
  for (const instances of [...new Set([1, ...configs.map((c) => c.instances || 1)])].sort((a, b) => a - b)) {
    log(`measuring the bare app's boot time, ${instances === 1 ? 'one process' : `${instances} processes started at once`} (${opts.bootSamples} samples)`);
    const samples = await measureBoot(opts.bootSamples, instances);
    boots[instances] = { samples, medianMs: median(samples) };
    log(`boot: median ${fmt(boots[instances].medianMs)} ms (${samples.map((x) => Math.round(x)).join(', ')})`);
  }
  const bootSamples = boots[1].samples;
  const bootMs = boots[1].medianMs;
  const bootOf = (s) => boots[s.instances].medianMs;

  const scenarios = [];
  const pm2Home = path.join(tmp, 'pm2');
  for (const config of configs) {
    if (interrupted) break;
    config.port = config.ns ? NS_PORT : await freePort();
    for (const mode of opts.modes) {
      if (interrupted) break;
      let impl;
      if (config.key === 'plain') impl = plainImpl(config.port);
      else if (config.key === 'pm2') {
        if (!fs.existsSync(pm2Home)) {
          fs.mkdirSync(pm2Home, { recursive: true });
          onCleanup('pm2 kill', () => pm2Kill(pm2Home));
        }
        impl = pm2Impl(config.port, pm2Home);
      } else {
        const rd = reuseDeploy(config.ns, config.port, path.join(tmp, `state-${config.key}-${mode}`), appEntry, config.instances || 1);
        onCleanup(`reuse-deploy ${config.key}/${mode}`, () => rd.killLeftovers());
        impl = rd;
      }
      try {
        scenarios.push(await scenario(config, mode, impl, tmp));
      } catch (err) {
        if (interrupted) break;
        log(`${config.label} / ${mode} FAILED: ${err.message}`);
        notes.push(`${config.label} / ${mode}: scenario failed: ${err.message.split('\n')[0]}`);
      }
    }
    if (config.key === 'pm2' && fs.existsSync(pm2Home)) await pm2Kill(pm2Home);
  }

  let overhead = null;
  if (!interrupted && opts.overheadRounds > 0 && opts.overheadSets > 0) {
    log(`measuring the runtime preload's overhead (${opts.overheadSets} sets x ${opts.overheadRounds} window(s) of ${opts.overheadWindowMs} ms, the variants side by side on CPU 1, their load on CPU 0)`);
    try {
      overhead = await measureOverhead(tmp, appEntry);
    } catch (err) {
      log(`overhead measurement failed: ${err.message}`);
      notes.push(`preload overhead: measurement failed: ${err.message.split('\n')[0]}`);
    }
  }
  let saturated = null;
  if (!interrupted && opts.saturatedDeploys > 0) {
    if (!WRK) notes.push('saturated load: skipped, wrk is not installed (`apt install wrk`)');
    else {
      log(`measuring ${opts.saturatedDeploys} reuse-deploy deploys under a saturating load (wrk -t${SATURATE.threads} -c${SATURATE.conns})`);
      try {
        saturated = await measureSaturated(tmp, appEntry);
      } catch (err) {
        log(`saturated measurement failed: ${err.message}`);
        notes.push(`saturated load: measurement failed: ${err.message.split('\n')[0]}`);
      }
    }
  }
  if (interrupted) return;
  meta.loadavgEnd = os.loadavg();
  meta.durationS = (now() - T_START) / 1000;

  // ---- the table
  const rows = scenarios.map((s) => {
    const d = s.deploys.filter((x) => x.ok);
    const wall = median(d.map((x) => x.wallMs));
    const r = s.summary;
    return [
      s.label,
      s.mode === 'ka' ? 'keep-alive' : 'conn/req',
      `${d.length}/${s.deploys.length}`,
      r.requests,
      r.failed,
      r.byKind.connect,
      r.byKind.reset,
      r.byKind.timeout,
      r.byKind.non2xx + r.byKind.other,
      fmt(r.rest.p50, 2),
      fmt(r.rest.p99, 2),
      fmt(r.withDeploys.p50, 2),
      fmt(r.withDeploys.p99, 2),
      r.rest.p99 ? fmt(r.withDeploys.p99 / r.rest.p99, 2) : '-',
      fmt(wall, 0),
      fmt(bootOf(s), 0),
      fmt(r.bootLoadedMs, 0),
      fmt(wall - bootOf(s), 0),
      r.bootLoadedMs === null ? '-' : fmt(wall - r.bootLoadedMs, 0),
      `${fmt(r.hostCpuPct, 0)}%`,
    ];
  });
  const out = [];
  out.push(`reuse-deploy benchmark  ${meta.date}  node ${meta.node}, kernel ${meta.kernel}, ${meta.cpus} CPUs, load avg ${meta.loadavgStart.map((x) => x.toFixed(2)).join(' ')} at start`);
  out.push(`load: ${opts.rate} req/s over ${opts.conns} connections, request timeout ${opts.timeoutMs} ms; ${opts.deploys} deploys per row, ${opts.gapMs} ms apart; rest windows of ${opts.restMs} ms before the first deploy and after the last (from ${opts.settleMs} ms after it ended on)`);
  if (opts.rdArgs.length) out.push(`reuse-deploy deploys ran with the extra arguments ${opts.rdArgs.join(' ')}`);
  out.push(`latency in ms, of 2xx answers; "rest" = the two rest windows pooled (the first after ${opts.warmupMs} ms warm-up), "dep" = from the first deploy to the second rest window; other = non-2xx + other errors;`);
  out.push('wall = deploy command wall time (plain restart: SIGTERM to first 2xx of the new version), ms; host CPU = whole machine busy during the row (all processes, ours and others)');
  out.push(`app boot time (spawn of bare \`node scripts/bench-app.js\` to first 2xx, median of ${bootSamples.length}): ${fmt(bootMs)} ms${Object.keys(boots).length > 1 ? `; ${Object.keys(boots).filter((k) => k !== '1').map((k) => `${k} processes spawned at once, to the last one's first 2xx: ${fmt(boots[k].medianMs)} ms`).join('; ')} (the "boot idle" of the rows with that many instances)` : ''}`);
  out.push(`boot load = the same, measured in each row after its second rest window while its load still runs (median of ${opts.bootSamples}): the app's boot in the conditions its deploys boot in; "wall-boot load" is the target's measure`);
  out.push('');
  out.push(table(['configuration', 'mode', 'deploys', 'requests', 'failed', 'connect', 'reset', 'timeout', 'other', 'p50 rest', 'p99 rest', 'p50 dep', 'p99 dep', 'p99 x', 'wall med', 'boot idle', 'boot load', 'wall-boot idle', 'wall-boot load', 'host CPU'], rows));

  const rdScen = scenarios.filter((s) => s.config.startsWith('rd-'));
  if (rdScen.length) {
    const keys = [];
    for (const s of rdScen) for (const d of s.deploys) for (const k of Object.keys(d.phases || {})) if (!keys.includes(k)) keys.push(k);
    out.push('');
    out.push('reuse-deploy deploy phases (median ms, from the CLI\'s timestamped progress lines; "cli boot" = spawn to its first line):');
    out.push(table(['configuration', 'mode', ...keys, 'wall', 'keeper CPU'], rdScen.map((s) => [s.label, s.mode === 'ka' ? 'keep-alive' : 'conn/req', ...keys.map((k) => fmt(median(s.deploys.filter((d) => d.ok).map((d) => d.phases && d.phases[k])), 0)), fmt(median(s.deploys.filter((d) => d.ok).map((d) => d.wallMs)), 0), fmt(median(s.deploys.map((d) => d.keeperCpuMs)), 0)])));
    out.push('keeper CPU = CPU time (ms) the new release\'s keeper had used by the start of the next deploy (median)');
    out.push('');
    out.push('where the requests over 1.5x the rest p99 started, by part of the deploy cycle ("of window": share of all the deploy window\'s requests; p99 x <= 1.5 needs their sum below 1%):');
    const partRows = [];
    for (const s of rdScen) {
      const c = cycleParts(s);
      if (!c) continue;
      for (const p of c.parts) {
        partRows.push([`${s.label} / ${s.mode === 'ka' ? 'keep-alive' : 'conn/req'} (over ${fmt(c.limit, 2)} ms)`, p.name, p.n, p.over, p.n ? `${fmt((100 * p.over) / p.n, 2)}%` : '-', `${fmt((100 * p.over) / c.total, 2)}%`]);
      }
    }
    out.push(table(['row', 'part', 'requests', 'over', 'of part', 'of window'], partRows));
  }

  out.push('');
  out.push('p99 at rest (ms) in each of the two windows; the table pools them (a row whose two differ a lot ran on a host that changed under it):');
  out.push(table(['configuration', 'mode', 'p99 before', 'p99 after', 'pooled', 'p99 dep'], scenarios.map((s) => {
    const r = s.summary;
    return [s.label, s.mode === 'ka' ? 'keep-alive' : 'conn/req', fmt(r.restBefore.p99, 2), fmt(r.restAfter.p99, 2), fmt(r.rest.p99, 2), fmt(r.withDeploys.p99, 2)];
  })));

  // Every version change closes each keep-alive connection once (gracefully,
  // with reuse-deploy), and its client's next request pays for a new
  // connection; with deploys 1.5 s apart these are ~2% of the requests, so
  // they alone can set p99.
  const kaScen = scenarios.filter((s) => s.mode === 'ka' && s.summary.newConnections);
  if (kaScen.length) {
    out.push('');
    out.push('keep-alive rows, requests in the deploy window: those that opened a new connection (a client whose connection a version closed) and those on a reused one (ms):');
    out.push(table(['configuration', 'new conns', 'share', 'p50 new', 'p99 new', 'p50 reused', 'p99 reused', 'p99 rest', 'moved', 'p99 moved', 'over: moved / all'], kaScen.map((s) => {
      const { newConnections: f, reusedConnections: r, withDeploys: d, movedConnections: m } = s.summary;
      return [s.label, f.n, d.n ? `${fmt((100 * f.n) / d.n, 1)}%` : '-', fmt(f.p50, 2), fmt(f.p99, 2), fmt(r.p50, 2), fmt(r.p99, 2), fmt(s.summary.rest.p99, 2), m ? m.n : '-', m ? fmt(m.p99, 2) : '-', m ? `${m.over} / ${m.slow}` : '-'];
    })));
    out.push('moved = a connection\'s first request answered by a newer version on the same connection (handed over); over = requests above 1.5x the rest p99');
  }

  if (overhead) {
    out.push('');
    const pct = (x) => (x === null || !Number.isFinite(x) ? '-' : `${x >= 0 ? '+' : ''}${fmt(x, 1)}%`);
    const span = (r) => `${pct(r[0])}..${pct(r[1])}`;
    const sets = overhead[0].perSetDiffPct.length;
    const sliceNote = (ns) => (ns.some((x) => x !== null) ? `every process with the deployed one's time slice (${[...new Set(ns.filter((x) => x !== null).map((x) => x / 1e6))].join('/')} ms); ` : '');
    out.push(`runtime preload overhead: the variants side by side, one process each, apps pinned to CPU 1, one load generator each (${WRK ? 'wrk' : 'scripts/load.js; install wrk for a load that saturates the app'}, closed loop, ${opts.conns} connections, keep-alive and a new connection per request) on CPU 0; ${sliceNote(overhead[0].sliceNs)}${sets} sets of processes, ${opts.overheadRounds} windows of ${opts.overheadWindowMs} ms each after ${OVERHEAD_WARMUP_MS / 1000} s (keep-alive) and ${OVERHEAD_WARMUP_MS / 2000} s (new connections) untimed; CPU = the app process's CPU time per request; vs bare = median over the sets of each set's median difference, window by window, to the mean of its two bare processes (range over the sets); the control is the second bare process, against the first: the method's noise:`);
    out.push(table(['variant', 'mode', 'CPU µs/req', 'req per CPU-s', 'vs bare', 'range', 'per set', 'window IQR', 'failed'], overhead.map((v) => [v.label, v.mode === 'ka' ? 'keep-alive' : 'conn/req', fmt(v.cpuUsPerReq, 2), fmt(v.reqPerCpuSecond, 0), v.key !== 'bare' ? pct(v.cpuDiffPct) : '', v.key !== 'bare' ? span(v.cpuDiffRange) : '', v.key !== 'bare' ? v.perSetDiffPct.map(pct).join(' ') : '', v.key !== 'bare' ? span(v.windowDiffIqr) : '', v.failed]), 1));
  }

  if (saturated) {
    const { rest, dep } = saturated;
    const walls = saturated.deploys.filter((d) => d.ok).map((d) => d.wallMs);
    const bootLoaded = median(saturated.bootsLoadedMs);
    out.push('');
    out.push(`saturating load: wrk -t${saturated.threads} -c${saturated.conns} (closed loop, keep-alive) against reuse-deploy (one instance, this namespace); rest and deploy windows are separate wrk runs; boot under load = the bare app's boot while wrk runs (median of ${saturated.bootsLoadedMs.length}); failed = connect/read/write/timeout/non-2xx:`);
    out.push(table(['window', 'deploys', 'requests', 'req/s', 'failed', 'by kind', 'p50', 'p99', 'p99 x', 'wall med', 'wall range', 'boot idle', 'boot loaded', 'wall-boot loaded'], [
      ['rest', '-', rest.requests, fmt(rest.rps, 0), rest.failed, Object.values(rest.byKind).join('/'), fmt(rest.p50, 2), fmt(rest.p99, 2), '', '', '', '', '', ''],
      ['with deploys', `${walls.length}/${saturated.deploys.length}`, dep.requests, fmt(dep.rps, 0), dep.failed, Object.values(dep.byKind).join('/'), fmt(dep.p50, 2), fmt(dep.p99, 2), rest.p99 ? fmt(dep.p99 / rest.p99, 2) : '-', fmt(median(walls), 0), walls.length ? `${Math.round(Math.min(...walls))}-${Math.round(Math.max(...walls))}` : '-', fmt(bootMs, 1), fmt(bootLoaded, 1), fmt(median(walls) - bootLoaded, 0)],
    ], 1));
  }

  // ---- targets
  const targets = [];
  for (const s of rdScen) {
    const m = s.mode === 'ka' ? 'keep-alive' : 'conn/req';
    const wall = median(s.deploys.filter((x) => x.ok).map((x) => x.wallMs));
    targets.push({ target: `${s.label} ${m}: 0 failed requests`, value: s.summary.failed, pass: s.summary.failed === 0 && s.deploys.every((d) => d.ok) });
    const ratio = s.summary.rest.p99 ? s.summary.withDeploys.p99 / s.summary.rest.p99 : null;
    targets.push({ target: `${s.label} ${m}: p99 with deploys <= 1.5x p99 at rest`, value: ratio === null ? null : `${fmt(ratio, 2)}x`, pass: ratio !== null && ratio <= 1.5 });
    // Against the bare app's boot under the same load (the fair reference,
    // as in the saturated section); the idle host's boot is shown beside it.
    const loaded = s.summary.bootLoadedMs;
    const idle = bootOf(s);
    const procs = s.instances > 1 ? `${s.instances} processes at once` : 'one process';
    const value = `${loaded === null ? '-' : fmt(wall - loaded, 0)} ms (boot of ${procs} under the load ${fmt(loaded, 0)} ms; against the idle host's ${fmt(idle, 0)} ms: ${fmt(wall - idle, 0)} ms)`;
    targets.push({ target: `${s.label} ${m}: deploy wall - boot under the same load <= 150 ms`, value, pass: wall !== null && loaded !== null && wall - loaded <= 150 });
  }
  if (overhead) {
    const pct = (x) => `${x >= 0 ? '+' : ''}${fmt(x, 1)}%`;
    for (const mode of OVERHEAD_MODES) {
      const rows = overhead.filter((v) => v.mode === mode);
      const control = rows.find((v) => v.key === 'control');
      const m = mode === 'ka' ? 'keep-alive' : 'conn/req';
      // The control tells whether the method resolves 1% at all in this run.
      const resolves = Number.isFinite(control.cpuDiffPct) && Math.abs(control.cpuDiffPct) <= 1;
      for (const v of rows.filter((x) => x.key === 'preload' || x.key === 'deployed')) {
        const value = `${pct(v.cpuDiffPct)} vs bare (sets ${pct(v.cpuDiffRange[0])}..${pct(v.cpuDiffRange[1])}; control ${pct(control.cpuDiffPct)}, sets ${pct(control.cpuDiffRange[0])}..${pct(control.cpuDiffRange[1])}${resolves ? '' : ': too noisy to resolve 1%'})`;
        targets.push({ target: `preload overhead <= 1% (${v.label}, ${m}), CPU per request`, value, pass: resolves && Number.isFinite(v.cpuDiffPct) && v.cpuDiffPct <= 1 });
      }
    }
  }
  if (saturated) {
    const walls = saturated.deploys.filter((d) => d.ok).map((d) => d.wallMs);
    const ratio = saturated.rest.p99 && saturated.dep.p99 !== null ? saturated.dep.p99 / saturated.rest.p99 : null;
    const overBoot = median(walls) - median(saturated.bootsLoadedMs);
    targets.push({ target: 'saturated (wrk): 0 failed requests', value: saturated.dep.failed, pass: saturated.dep.failed === 0 && saturated.deploys.every((d) => d.ok) });
    targets.push({ target: 'saturated (wrk): p99 with deploys <= 1.5x p99 at rest', value: ratio === null ? null : `${fmt(ratio, 2)}x`, pass: ratio !== null && ratio <= 1.5 });
    targets.push({ target: 'saturated (wrk): deploy wall - boot under the same load <= 150 ms', value: `${fmt(overBoot, 0)} ms`, pass: walls.length > 0 && overBoot <= 150 });
  }
  out.push('');
  // The cadence is part of the result: p99 with deploys depends on it (README, "Benchmarks").
  out.push(`targets (deploys ${opts.gapMs} ms apart, ${opts.rate} req/s${saturated && saturated.gapMs !== opts.gapMs ? `; the saturated rows' deploys ${saturated.gapMs} ms apart` : ''}):`);
  for (const t of targets) out.push(`  ${t.pass ? 'PASS' : 'FAIL'}  ${t.target}: ${t.value ?? '-'}`);
  const loadEnd = os.loadavg();
  if (meta.loadavgStart[0] > 1 || loadEnd[0] > 3) notes.push(`the machine was busy (load average ${meta.loadavgStart[0].toFixed(2)} at start, ${loadEnd[0].toFixed(2)} at end, ${meta.cpus} CPUs): latency and overhead numbers are noisy`);
  if (notes.length) {
    out.push('');
    out.push('notes:');
    for (const n of notes) out.push(`  - ${n}`);
  }

  // ---- files
  process.stdout.write(out.join('\n') + '\n');
  out.length = 0;
  fs.mkdirSync(RESULTS, { recursive: true });
  const stem = path.join(RESULTS, `bench-${meta.date.replace(/[:.]/g, '-')}${opts.quick ? '-quick' : ''}`);
  const json = { meta, notes, boot: { samples: bootSamples, medianMs: bootMs, byInstances: boots }, scenarios, overhead, saturated, targets };
  fs.writeFileSync(`${stem}.json`, JSON.stringify(json));
  fs.writeFileSync(`${stem}.svg`, svgPicture(scenarios, `reuse-deploy benchmark ${meta.date}: throughput and failures per 100 ms`));
  out.push(`raw results: ${path.relative(ROOT, stem)}.json  picture: ${path.relative(ROOT, stem)}.svg  (run took ${fmt(meta.durationS, 0)} s)`);
  process.stdout.write(out.join('\n') + '\n');
}

let exitCode = 0;
main()
  .catch((err) => {
    if (!interrupted) {
      log(`failed: ${err.stack || err}`);
      exitCode = 1;
    }
  })
  .finally(async () => {
    if (interrupted) return; // the signal handler cleans up and exits
    await cleanupAll();
    process.exit(exitCode);
  });
