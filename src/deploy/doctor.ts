// `reuse-deploy doctor`: can this host run deploys, and will they be
// zero-loss? Every check does the real thing where it can (binds, steers,
// connects on loopback) rather than guessing from versions.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { DeployError } from '../errors';
import { acceptQueue, attachSteering, bindReusePort, closeFd, detachSteering, ensureAddon, listenFd, type SystemError } from '../native';
import { listenersOn } from '../sys/proc-net';
import { defaultStateDir } from './paths';

export type CheckStatus = 'ok' | 'warn' | 'fail';

export interface DoctorCheck {
  name: string;
  status: CheckStatus;
  detail: string;
  /** What to do about a warn or fail. */
  hint?: string;
}

export interface DoctorReport {
  /** False when a deploy would fail on this host. */
  ok: boolean;
  checks: DoctorCheck[];
}

export interface DoctorOptions {
  stateDir: string;
  port?: number;
}

const MIN_NODE: [number, number] = [20, 18];
const MIGRATE_FILE = '/proc/sys/net/ipv4/tcp_migrate_req';
const UNPRIV_FILE = '/proc/sys/net/ipv4/ip_unprivileged_port_start';
const CAP_NET_BIND_SERVICE = 10;

function versionAtLeast(version: string, want: [number, number]): boolean {
  const [major = 0, minor = 0] = version.split(/[.-]/).map((n) => Number.parseInt(n, 10) || 0);
  return major > want[0] || (major === want[0] && minor >= want[1]);
}

function errorText(err: unknown): string {
  const e = err as Partial<SystemError>;
  return e.code ? `${e.code} (${e.message ?? ''})` : (err as Error).message ?? String(err);
}

function checkKernel(): DoctorCheck {
  const release = os.release();
  if (os.platform() !== 'linux') {
    return { name: 'kernel', status: 'fail', detail: `${os.platform()} ${release}: reuse-deploy runs on Linux only`, hint: 'run it on a Linux host' };
  }
  // SO_ATTACH_REUSEPORT_CBPF for TCP: 4.6; tcp_migrate_req: 5.14.
  if (!versionAtLeast(release, [4, 6])) {
    return {
      name: 'kernel',
      status: 'fail',
      detail: `Linux ${release}: steering a reuseport group (SO_ATTACH_REUSEPORT_CBPF for TCP) needs 4.6 or newer`,
      hint: 'upgrade the kernel',
    };
  }
  const extra = versionAtLeast(release, [5, 14]) ? 'steering and tcp_migrate_req available' : 'steering available; tcp_migrate_req needs 5.14';
  return { name: 'kernel', status: 'ok', detail: `Linux ${release} (${extra})` };
}

function checkNode(): DoctorCheck {
  const v = process.versions.node;
  if (!versionAtLeast(v, MIN_NODE)) {
    return { name: 'node', status: 'warn', detail: `Node.js ${v} (${process.execPath}); ${MIN_NODE.join('.')} or newer is supported`, hint: `install Node.js ${MIN_NODE.join('.')}+ (22 and 24 work too)` };
  }
  return { name: 'node', status: 'ok', detail: `Node.js ${v} (${process.execPath})` };
}

function checkAddon(): DoctorCheck {
  try {
    ensureAddon();
    return { name: 'addon', status: 'ok', detail: 'native addon loaded' };
  } catch (err) {
    const message = err instanceof DeployError ? err.message : (err as Error).message;
    return {
      name: 'addon',
      status: 'fail',
      detail: message.split('\n').join(' '),
      hint: 'npm rebuild reuse-deploy (needs python3, make, g++), or set REUSE_DEPLOY_ADDON to a built reuse_deploy.node',
    };
  }
}

/** A loopback port that was free a moment ago. */
async function freeLoopbackPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Binds `count` SO_REUSEPORT sockets on one free loopback port, retrying if someone takes the port meanwhile. */
async function bindGroup(count: number): Promise<{ port: number; fds: number[] }> {
  let lastErr: unknown;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freeLoopbackPort();
    const fds: number[] = [];
    try {
      for (let i = 0; i < count; i++) fds.push(bindReusePort('127.0.0.1', port));
      return { port, fds };
    } catch (err) {
      for (const fd of fds) closeFd(fd);
      lastErr = err;
      if ((err as SystemError).code !== 'EADDRINUSE' || fds.length > 0) throw err;
    }
  }
  throw lastErr;
}

async function checkReusePort(addonOk: boolean): Promise<DoctorCheck> {
  if (!addonOk) return { name: 'so_reuseport', status: 'warn', detail: 'not checked: the native addon is not loaded', hint: 'fix the addon first' };
  let group: { port: number; fds: number[] } | null = null;
  try {
    group = await bindGroup(2);
    return { name: 'so_reuseport', status: 'ok', detail: `two sockets bound 127.0.0.1:${group.port} together` };
  } catch (err) {
    return {
      name: 'so_reuseport',
      status: 'fail',
      detail: `two SO_REUSEPORT sockets could not share a loopback port: ${errorText(err)}`,
      hint: 'a kernel with SO_REUSEPORT (3.9+) is needed; check seccomp or LSM policies that block setsockopt',
    };
  } finally {
    for (const fd of group?.fds ?? []) closeFd(fd);
  }
}

function checkMigrate(): DoctorCheck {
  const enable = "echo 'net.ipv4.tcp_migrate_req = 1' | sudo tee /etc/sysctl.d/90-reuse-deploy.conf && sudo sysctl --system";
  let value: string;
  try {
    value = fs.readFileSync(MIGRATE_FILE, 'utf8').trim();
  } catch {
    return {
      name: 'tcp_migrate_req',
      status: 'warn',
      detail: `${MIGRATE_FILE} is missing (kernel before 5.14): connections queued at an old listener rely on steering alone`,
      hint: 'a kernel 5.14+ with net.ipv4.tcp_migrate_req=1 adds a safety net for drains',
    };
  }
  if (value === '1') return { name: 'tcp_migrate_req', status: 'ok', detail: 'net.ipv4.tcp_migrate_req = 1: queued connections migrate when a listener closes' };
  return {
    name: 'tcp_migrate_req',
    status: 'warn',
    detail: `net.ipv4.tcp_migrate_req = ${value}: drains rely on steering alone (handshakes in flight to the old listener can be reset)`,
    hint: `enable it persistently (per network namespace): ${enable}`,
  };
}

function connectOnce(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1' });
    socket.once('connect', () => resolve(socket));
    socket.once('error', reject);
  });
}

/**
 * Two listeners in one group; a `ret 1` program attached through the second
 * one; a few connections; every one of them must wait in the second
 * listener's accept queue.
 */
async function checkSteering(addonOk: boolean): Promise<DoctorCheck> {
  const name = 'steering';
  if (!addonOk) return { name, status: 'warn', detail: 'not checked: the native addon is not loaded', hint: 'fix the addon first' };
  const CONNECTIONS = 6;
  let group: { port: number; fds: number[] } | null = null;
  const sockets: net.Socket[] = [];
  let attached = false;
  try {
    group = await bindGroup(2);
    const [first, second] = group.fds as [number, number];
    listenFd(first, 64);
    listenFd(second, 64);
    attachSteering(second, 1);
    attached = true;
    for (let i = 0; i < CONNECTIONS; i++) sockets.push(await connectOnce(group.port));
    const deadline = Date.now() + 1_000;
    let a = acceptQueue(first).queued;
    let b = acceptQueue(second).queued;
    while (a + b < CONNECTIONS && Date.now() < deadline) {
      await sleep(10);
      a = acceptQueue(first).queued;
      b = acceptQueue(second).queued;
    }
    if (b === CONNECTIONS && a === 0) {
      return { name, status: 'ok', detail: `a CBPF program attached unprivileged sent ${CONNECTIONS} of ${CONNECTIONS} connections to group index 1` };
    }
    return {
      name,
      status: 'fail',
      detail: `the steering program was attached but connections went ${a} to index 0 and ${b} to index 1 (expected 0 and ${CONNECTIONS})`,
      hint: 'the kernel does not honour SO_ATTACH_REUSEPORT_CBPF here; old versions would keep receiving connections while they drain. Report this kernel (uname -r) as an issue',
    };
  } catch (err) {
    return {
      name,
      status: 'fail',
      detail: `could not steer a reuseport group: ${errorText(err)}`,
      hint: 'SO_ATTACH_REUSEPORT_CBPF is refused here (seccomp, LSM, or a kernel before 4.6); go-live cannot steer connections to the new version',
    };
  } finally {
    for (const s of sockets) s.destroy();
    if (group) {
      if (attached) {
        try {
          detachSteering(group.fds[1]!);
        } catch {
          // closing the fd detaches it anyway
        }
      }
      for (const fd of group.fds) closeFd(fd);
    }
  }
}

/** Effective capabilities of this process, from /proc/self/status. */
function effectiveCaps(): bigint | null {
  try {
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
    return m ? BigInt(`0x${m[1]}`) : null;
  } catch {
    return null;
  }
}

function checkPort(port: number | undefined): DoctorCheck | null {
  if (port === undefined) return null;
  let start = 1024;
  try {
    start = Number(fs.readFileSync(UNPRIV_FILE, 'utf8').trim());
  } catch {
    // older kernels: the fixed limit 1024
  }
  const uid = process.getuid?.() ?? -1;
  const others = listenersOn(port).filter((l) => l.uid !== uid);
  const foreign = others.length
    ? ` Note: uid ${[...new Set(others.map((l) => l.uid))].join(', ')} already listen(s) on port ${port}; the kernel lets only one uid share a port, so a deploy on the same address would fail.`
    : '';
  const status: CheckStatus = others.length ? 'warn' : 'ok';
  const foreignHint = others.length ? `stop the other user's listener on port ${port} (ss -ltnp 'sport = :${port}'), or run reuse-deploy as uid ${others[0]!.uid}` : undefined;
  if (port >= start) {
    return { name: 'port', status, detail: `port ${port} is not privileged (net.ipv4.ip_unprivileged_port_start = ${start}).${foreign}`, ...(foreignHint ? { hint: foreignHint } : {}) };
  }
  const caps = effectiveCaps();
  const canBind = caps !== null ? (caps & (1n << BigInt(CAP_NET_BIND_SERVICE))) !== 0n : uid === 0;
  if (canBind) {
    const who = uid === 0 ? 'root' : 'this user (CAP_NET_BIND_SERVICE)';
    return { name: 'port', status, detail: `port ${port} is below net.ipv4.ip_unprivileged_port_start (${start}); ${who} may bind it.${foreign}`, ...(foreignHint ? { hint: foreignHint } : {}) };
  }
  return {
    name: 'port',
    status: 'fail',
    detail: `port ${port} is below net.ipv4.ip_unprivileged_port_start (${start}) and uid ${uid} has no CAP_NET_BIND_SERVICE.${foreign}`,
    hint:
      `sudo setcap cap_net_bind_service=+ep "$(readlink -f "$(which node)")", or AmbientCapabilities=CAP_NET_BIND_SERVICE in the systemd unit, ` +
      `or sudo sysctl net.ipv4.ip_unprivileged_port_start=${port}`,
  };
}

/** Owner and mode rules of ensurePrivateDir (src/deploy/paths.ts), without creating anything. */
function trustProblem(dir: string, st: fs.Stats, uid: number): { detail: string; hint: string } | null {
  const mode = (st.mode & 0o777).toString(8).padStart(3, '0');
  if (st.uid !== uid) {
    return {
      detail: `${dir} belongs to uid ${st.uid}, not to this user (uid ${uid})`,
      hint: `run reuse-deploy as uid ${st.uid}, or pass --state-dir (or set REUSE_DEPLOY_HOME) to a directory of your own`,
    };
  }
  if ((st.mode & 0o022) !== 0) {
    return {
      detail: `${dir} is writable by group or others (mode ${mode})`,
      hint: `chmod 700 ${dir}, or pass --state-dir to a private directory`,
    };
  }
  return null;
}

function checkStateDir(stateDir: string): DoctorCheck {
  const name = 'state dir';
  const dir = path.resolve(stateDir);
  const uid = process.getuid?.() ?? -1;
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      return { name, status: 'fail', detail: `cannot inspect ${dir}: ${(err as Error).message}`, hint: 'pass --state-dir (or set REUSE_DEPLOY_HOME) to a directory this user owns' };
    }
    // It will be created (mkdir -p, mode 0700): the nearest existing ancestor must be writable.
    let parent = path.dirname(dir);
    while (!fs.existsSync(parent) && path.dirname(parent) !== parent) parent = path.dirname(parent);
    try {
      fs.accessSync(parent, fs.constants.W_OK | fs.constants.X_OK);
      return { name, status: 'ok', detail: `${dir} does not exist yet; it will be created (mode 700) under ${parent}` };
    } catch {
      return {
        name,
        status: 'fail',
        detail: `${dir} does not exist and this user (uid ${uid}) cannot create it: ${parent} is not writable`,
        hint: `create it as root (sudo install -d -m 700 -o ${os.userInfo().username} ${dir}), or pass --state-dir to a directory of your own`,
      };
    }
  }
  if (!st.isDirectory()) {
    return { name, status: 'fail', detail: `${dir} is not a directory`, hint: 'pass --state-dir (or set REUSE_DEPLOY_HOME) to a directory' };
  }
  const problem = trustProblem(dir, st, uid);
  if (problem) return { name, status: 'fail', detail: problem.detail, hint: problem.hint };
  try {
    fs.accessSync(dir, fs.constants.W_OK | fs.constants.X_OK);
  } catch {
    return { name, status: 'fail', detail: `${dir} is not writable by this user`, hint: `chmod u+rwx ${dir}, or pass --state-dir to a directory of your own` };
  }
  // Each app folder is checked the same way when that app is deployed.
  const bad: { detail: string; hint: string }[] = [];
  let apps = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    if (!entry.isDirectory()) continue;
    apps++;
    const sub = path.join(dir, entry.name);
    const p = trustProblem(sub, fs.statSync(sub), uid);
    if (p) bad.push(p);
  }
  if (bad.length > 0) {
    return { name, status: 'fail', detail: bad.map((b) => b.detail).join('; '), hint: bad.map((b) => b.hint).join('; ') };
  }
  return { name, status: 'ok', detail: `${dir}: owned by uid ${st.uid}, mode ${(st.mode & 0o777).toString(8)}, writable, ${apps} app(s)` };
}

export async function doctorCommand(options: DoctorOptions): Promise<DoctorReport> {
  const checks: DoctorCheck[] = [];
  checks.push(checkKernel());
  checks.push(checkNode());
  const addon = checkAddon();
  checks.push(addon);
  checks.push(await checkReusePort(addon.status === 'ok'));
  checks.push(await checkSteering(addon.status === 'ok'));
  checks.push(checkMigrate());
  const port = checkPort(options.port);
  if (port) checks.push(port);
  checks.push(checkStateDir(options.stateDir || defaultStateDir()));
  return { ok: checks.every((c) => c.status !== 'fail'), checks };
}

export function formatDoctor(report: DoctorReport): string {
  const nameWidth = Math.max(...report.checks.map((c) => c.name.length));
  const lines = report.checks.map((c) => {
    const text = `${c.status.padEnd(4)}  ${c.name.padEnd(nameWidth)}  ${c.detail}`;
    return c.hint && c.status !== 'ok' ? `${text} -> fix: ${c.hint}` : text;
  });
  const fails = report.checks.filter((c) => c.status === 'fail').length;
  const warns = report.checks.filter((c) => c.status === 'warn').length;
  lines.push(
    report.ok
      ? `deploys can run here${warns ? ` (${warns} warning${warns > 1 ? 's' : ''})` : ''}`
      : `a deploy would fail here: ${fails} check${fails > 1 ? 's' : ''} failed`,
  );
  return lines.join('\n');
}
