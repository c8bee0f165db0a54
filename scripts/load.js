'use strict';
// A small HTTP load generator for the benchmark (scripts/bench.js), run as
// its own process (inside a network namespace when needed).
//
//   node scripts/load.js --port N [--host 127.0.0.1] [--mode ka|close]
//        [--conns 32] [--rate 1600] [--duration-ms 60000]
//        [--max-requests 200000] [--timeout-ms 2000] --out result.json
//
// --conns workers, each with at most one request in flight. In `ka` mode
// each worker has its own keep-alive agent (maxSockets 1), so there are
// --conns persistent connections; in `close` mode every request opens a new
// connection (agent: false, Connection: close). --rate is the total target
// in requests per second, spread evenly over the workers (each sends at its
// own fixed interval, and never in a burst after a slow answer); 0 means as
// fast as possible (closed loop).
//
// It stops by itself after --duration-ms or --max-requests, and earlier when
// a line "stop" arrives on stdin or stdin closes; it then waits for the
// requests in flight (each is bounded by --timeout-ms), writes the result to
// --out and exits. It prints "started" on stderr once load is flowing.
//
// Per request it records the start time (ms since t0, an epoch time in ms
// taken from performance.timeOrigin + performance.now()), the latency (ms)
// and the outcome: ok (2xx) / connect (ECONNREFUSED etc.) / reset
// (ECONNRESET, EPIPE, socket hang up) / timeout / non2xx / other; and
// whether it opened a new connection (fresh: always in `close` mode, in
// `ka` mode the first request of each connection), and which version
// answered (N of a body "vN", as the bench app answers; 0 otherwise), and
// which worker (connection slot, 0..conns-1) sent it.
const http = require('node:http');
const fs = require('node:fs');
const { performance } = require('node:perf_hooks');

const KINDS = ['ok', 'connect', 'reset', 'timeout', 'non2xx', 'other'];
const OK = 0;
const CONNECT = 1;
const RESET = 2;
const TIMEOUT = 3;
const NON2XX = 4;
const OTHER = 5;

function parseArgs(argv) {
  const o = {
    host: '127.0.0.1',
    port: 0,
    mode: 'ka',
    conns: 32,
    rate: 1600,
    durationMs: 60_000,
    maxRequests: 200_000,
    timeoutMs: 2_000,
    out: '',
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    switch (a) {
      case '--host': o.host = v; i++; break;
      case '--port': o.port = Number(v); i++; break;
      case '--mode': o.mode = v; i++; break;
      case '--conns': o.conns = Number(v); i++; break;
      case '--rate': o.rate = Number(v); i++; break;
      case '--duration-ms': o.durationMs = Number(v); i++; break;
      case '--max-requests': o.maxRequests = Number(v); i++; break;
      case '--timeout-ms': o.timeoutMs = Number(v); i++; break;
      case '--out': o.out = v; i++; break;
      default:
        throw new Error(`load.js: unknown argument ${a}`);
    }
  }
  if (!(o.port > 0) || !o.out || !['ka', 'close'].includes(o.mode) || !(o.conns > 0)) {
    throw new Error('load.js: --port, --out, --mode ka|close and --conns > 0 are required');
  }
  if (!['127.0.0.1', '::1', 'localhost'].includes(o.host)) throw new Error('load.js: only loopback targets are allowed');
  return o;
}

const opts = parseArgs(process.argv.slice(2));
const now = () => performance.timeOrigin + performance.now();

const t0 = now();
const deadline = t0 + opts.durationMs;
const cap = Math.max(1, Math.floor(opts.maxRequests));
const starts = new Float64Array(cap);
const lats = new Float32Array(cap);
const kinds = new Uint8Array(cap);
const fresh = new Uint8Array(cap); // 1: the request opened a new connection (not req.reusedSocket)
const ver = new Uint16Array(cap); // N of the "vN" that answered (the bench app's body), 0 if none: which release served it
const wid = new Uint16Array(cap); // which worker (connection slot) sent it
const counts = Object.fromEntries(KINDS.map((k) => [k, 0]));
const errors = {};
const versions = {};
let issued = 0;
let recorded = 0;
let stopping = false;

function classify(err) {
  const code = err && err.code;
  const msg = (err && err.message) || '';
  if (['ECONNREFUSED', 'EADDRNOTAVAIL', 'ENETUNREACH', 'EHOSTUNREACH', 'EADDRINUSE'].includes(code)) return CONNECT;
  if (['ECONNRESET', 'EPIPE', 'ECONNABORTED'].includes(code) || msg === 'socket hang up' || msg === 'aborted') return RESET;
  if (code === 'ETIMEDOUT') return TIMEOUT;
  return OTHER;
}

function once(agent, w) {
  return new Promise((resolve) => {
    const start = now();
    let done = false;
    let timer = null;
    let served = 0;
    const finish = (kind, detail) => {
      if (done) return;
      done = true;
      if (timer) clearTimeout(timer);
      if (recorded < cap) {
        starts[recorded] = start - t0;
        lats[recorded] = now() - start;
        kinds[recorded] = kind;
        fresh[recorded] = req.reusedSocket ? 0 : 1;
        ver[recorded] = served;
        wid[recorded] = w;
        recorded++;
      }
      counts[KINDS[kind]]++;
      if (kind !== OK) errors[detail] = (errors[detail] || 0) + 1;
      resolve();
    };
    const req = http.request(
      {
        host: opts.host,
        port: opts.port,
        path: '/',
        method: 'GET',
        agent,
        headers: opts.mode === 'close' ? { connection: 'close' } : {},
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('error', (err) => finish(classify(err), `${err.code || 'ERR'} ${err.message} (in body)`));
        res.on('aborted', () => finish(RESET, 'aborted (in body)'));
        res.on('end', () => {
          const status = res.statusCode || 0;
          if (status >= 200 && status < 300) {
            const v = Buffer.concat(chunks).toString('utf8').trim().slice(0, 32);
            versions[v] = (versions[v] || 0) + 1;
            served = Number((/^v(\d+)$/.exec(v) || [])[1]) || 0;
            finish(OK, '');
          } else {
            finish(NON2XX, `HTTP ${status}`);
          }
        });
      },
    );
    req.on('error', (err) => finish(classify(err), `${err.code || 'ERR'} ${err.message}`));
    timer = setTimeout(() => {
      finish(TIMEOUT, `timeout ${opts.timeoutMs} ms`);
      req.destroy();
    }, opts.timeoutMs);
    req.end();
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function worker(i) {
  const agent = opts.mode === 'ka' ? new http.Agent({ keepAlive: true, maxSockets: 1, maxFreeSockets: 1 }) : false;
  const interval = opts.rate > 0 ? (opts.conns * 1000) / opts.rate : 0;
  let next = t0 + (interval * i) / opts.conns; // spread the workers over one interval
  while (!stopping && issued < cap && now() < deadline) {
    if (interval > 0) {
      const wait = next - now();
      if (wait > 0) await sleep(wait);
      if (stopping || now() >= deadline) break;
    }
    issued++;
    await once(agent, i);
    if (interval > 0) next = Math.max(next + interval, now());
  }
  if (agent) agent.destroy();
}

function stop() {
  stopping = true;
}

process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => {
  if (d.includes('stop')) stop();
});
process.stdin.on('end', stop);
process.stdin.on('error', stop);
process.on('SIGTERM', stop);

async function main() {
  const workers = [];
  for (let i = 0; i < opts.conns; i++) workers.push(worker(i));
  process.stderr.write('started\n');
  await Promise.all(workers);
  const end = now();
  const round = (x) => Math.round(x * 100) / 100;
  const result = {
    t0,
    end,
    mode: opts.mode,
    conns: opts.conns,
    rate: opts.rate,
    requests: recorded,
    issued,
    truncated: issued > recorded,
    counts,
    errors,
    versions,
    start: Array.from(starts.subarray(0, recorded), round),
    lat: Array.from(lats.subarray(0, recorded), round),
    kind: Array.from(kinds.subarray(0, recorded)),
    fresh: Array.from(fresh.subarray(0, recorded)),
    ver: Array.from(ver.subarray(0, recorded)),
    wid: Array.from(wid.subarray(0, recorded)),
  };
  fs.writeFileSync(opts.out, JSON.stringify(result));
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`load.js: ${err.stack || err}\n`);
  process.exit(1);
});
