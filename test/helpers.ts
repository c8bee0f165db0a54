// Shared test plumbing: run the real CLI, make real requests, clean up every
// process a test started (by pid, from the state files it wrote).
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach } from 'node:test';
import { Agent, request } from 'undici';
import { groupMembers } from '../src/deploy/instances';

export const ROOT = path.resolve(__dirname, '..', '..');
export const CLI = path.join(ROOT, 'dist', 'src', 'cli.js');
export const FIXTURES = path.join(ROOT, 'test', 'fixtures');
export const fixture = (name: string): string => path.join(FIXTURES, name);

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  timeoutMs?: number;
  /** Called with the child as soon as it is spawned (to track it for cleanup). */
  onSpawn?: (child: ChildProcess) => void;
}

/** Runs a command to its end, collecting stdout and stderr; killed and rejected after timeoutMs. */
export function runProcess(cmd: string, args: string[], options: RunOptions = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: options.cwd, env: options.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    options.onSpawn?.(child);
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd} ${args.join(' ')} did not finish in time\n${stderr}`));
    }, options.timeoutMs ?? 60_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/**
 * The CLI under a pseudo-terminal (util-linux `script`), as a person at a
 * terminal runs it: not CI, a terminal of 120x40. The CLI is exec'd, so that
 * it leads the terminal's session and gets its SIGHUP when it closes.
 */
export function spawnInTty(args: string[], env: NodeJS.ProcessEnv = {}): ChildProcess {
  const command = [process.execPath, CLI, ...args].map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(' ');
  const base = { ...process.env };
  delete base.CI; // CI=anything means "not interactive" to ora
  // `script` gives the terminal no size; a person's terminal has one.
  return spawn('script', ['-qec', `stty cols 120 rows 40; exec ${command}`, '/dev/null'], { env: { ...base, TERM: 'xterm-256color', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
}

export function runCli(args: string[], options: RunOptions = {}): Promise<CliResult> {
  return runProcess(process.execPath, [CLI, ...args], { ...options, env: { ...process.env, CI: 'true', ...options.env } });
}

/** A short temporary state dir (unix socket paths must stay under 108 bytes). */
export function tempStateDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'rd-'));
}

/**
 * A port free on 127.0.0.1 now, from 10000-19999: below the ephemeral range
 * (net.ipv4.ip_local_port_range, 32768-60999 by default), so that no
 * outgoing connection of the host picks it as its local port before the
 * test binds it (a connected socket's port refuses a bind, which would
 * fail the deploy with RD_ERR_PORT_TAKEN), and below the warm-up's source
 * ports (20000-30000, src/keeper/warm-up.ts). Falls back to a port the
 * kernel picks.
 */
export async function freePort(): Promise<number> {
  const tryListen = (port: number): Promise<number | null> =>
    new Promise((resolve) => {
      const server = net.createServer();
      server.once('error', () => resolve(null));
      server.listen(port, '127.0.0.1', () => {
        const got = (server.address() as net.AddressInfo).port;
        server.close(() => resolve(got));
      });
    });
  for (let i = 0; i < 50; i++) {
    const port = await tryListen(10_000 + Math.floor(Math.random() * 10_000));
    if (port !== null) return port;
  }
  const port = await tryListen(0);
  if (port === null) throw new Error('no free port on 127.0.0.1');
  return port;
}


export interface Answer {
  status: number;
  body: string;
}

export async function get(port: number, urlPath = '/', options: { host?: string; tls?: boolean; timeoutMs?: number } = {}): Promise<Answer> {
  const host = options.host ?? '127.0.0.1';
  const res = await request(`${options.tls ? 'https' : 'http'}://${host.includes(':') ? `[${host}]` : host}:${port}${urlPath}`, {
    dispatcher: new Agent({ connect: { rejectUnauthorized: false } }),
    reset: true,
    headersTimeout: options.timeoutMs ?? 5_000,
    bodyTimeout: options.timeoutMs ?? 5_000,
  });
  return { status: res.statusCode, body: await res.body.text() };
}

/** Sends requests one after another until stopped, recording every answer or error. */
export function requestLoop(port: number, options: { tls?: boolean; keepAlive?: boolean; maxRequests?: number } = {}) {
  const answers: string[] = [];
  const errors: string[] = [];
  let running = true;
  const agent = new Agent({ connect: options.tls ? { rejectUnauthorized: false } : {} });
  const done = (async () => {
    const max = options.maxRequests ?? 20_000;
    for (let i = 0; running && i < max; i++) {
      try {
        const res = await request(`${options.tls ? 'https' : 'http'}://127.0.0.1:${port}/`, {
          dispatcher: agent,
          headersTimeout: 5_000,
          bodyTimeout: 5_000,
          reset: !options.keepAlive, // a new connection per request unless keepAlive
        });
        const body = await res.body.text();
        if (res.statusCode !== 200) errors.push(`status ${res.statusCode}: ${body}`);
        else answers.push(body);
      } catch (err) {
        errors.push(`${(err as { code?: string }).code ?? ''} ${(err as Error).message}`);
      }
    }
    await agent.close();
  })();
  return {
    answers,
    errors,
    async stop() {
      running = false;
      await done;
    },
  };
}

interface StateFileShape {
  instances: { keeperPid: number }[];
}

export function readAppState(stateDir: string, name: string): (StateFileShape & Record<string, unknown>) | null {
  try {
    return JSON.parse(fs.readFileSync(path.join(stateDir, name, 'state.json'), 'utf8'));
  } catch {
    return null;
  }
}

/** Running, and not a zombie. */
export function isAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat[stat.lastIndexOf(')') + 2] !== 'Z';
  } catch {
    return false;
  }
}

/** Linux 6.12 and later take a time slice per thread (EEVDF, sched_setattr's sched_runtime). */
export const hasCustomSlices = ((): boolean => {
  const [major = 0, minor = 0] = os.release().split('.').map(Number);
  return major > 6 || (major === 6 && minor >= 12);
})();

/** A thread's scheduler time slice in ns (se.slice of /proc/<pid>/task/<tid>/sched). */
export function sliceOf(pid: number, tid = pid): number {
  const m = /^se\.slice\s*:\s*(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/task/${tid}/sched`, 'utf8'));
  if (!m) throw new Error(`no se.slice in /proc/${pid}/task/${tid}/sched`);
  return Number(m[1]);
}

/** Pids of every process in the keeper's process group (keeper and apps), as the repair finds a dead keeper's orphans. */
export const processGroup = groupMembers;

const keeperGroups = new Set<number>();

/** Remembers the keepers a state dir names, so that cleanup can kill them even after state.json changed. */
export function remember(stateDir: string, name: string): void {
  for (const i of readAppState(stateDir, name)?.instances ?? []) keeperGroups.add(i.keeperPid);
}

/** Kills every process group a test's keepers started. Safe to call twice. */
export async function cleanup(stateDir: string): Promise<void> {
  let names: string[] = [];
  try {
    names = fs.readdirSync(stateDir);
  } catch {
    // nothing was created
  }
  for (const name of names) remember(stateDir, name);
  for (const pgid of keeperGroups) {
    for (const pid of processGroup(pgid)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
  keeperGroups.clear();
  fs.rmSync(stateDir, { recursive: true, force: true });
}

export async function waitUntil(predicate: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** A listener without SO_REUSEPORT, in a child process of the test. */
export async function holdPortPlainly(port: number): Promise<ChildProcess> {
  const child = spawn(
    process.execPath,
    ['-e', `require('net').createServer().listen(${port}, '127.0.0.1', () => console.log('ready'))`],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
  return child;
}

/** Pids of every process whose working directory is inside `dir` (keepers and apps run in their release). */
export function processesUnder(dir: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (fs.readlinkSync(`/proc/${entry}/cwd`).startsWith(`${dir}/`)) pids.push(Number(entry));
    } catch {
      // gone, or a zombie
    }
  }
  return pids.sort((a, b) => a - b);
}

/** A fresh state dir and free port for every test of the file, and cleanup of all it started. */
export function freshAppPerTest(): { stateDir: string; port: number } {
  const t = { stateDir: '', port: 0 };
  beforeEach(async () => {
    t.stateDir = tempStateDir();
    t.port = await freePort();
  });
  afterEach(() => cleanup(t.stateDir));
  return t;
}

/**
 * A raw server on the unix socket `socketPath` that answers the first bytes
 * of every connection with `answer` (its parts written 5 ms apart, so that
 * the client reads them separately) and closes; `keepOpen` leaves the
 * connection open after the last part; null never answers.
 */
export async function rawServer(socketPath: string, answer: string | string[] | null, keepOpen = false): Promise<net.Server> {
  const parts = answer === null ? null : Array.isArray(answer) ? answer : [answer];
  const server = net.createServer((socket) => {
    socket.on('error', () => undefined);
    socket.once('data', async () => {
      if (parts === null) return;
      for (const [i, part] of parts.entries()) {
        if (i > 0) await sleep(5);
        socket.write(part);
      }
      if (!keepOpen) socket.end();
    });
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return server;
}
