// Zero loss for connections that sit in the OLD instance's accept queue at
// cutover: completed by the kernel, not yet accepted by the app.
//
// Kernel fact (DESIGN.md): closing a listener resets whatever is in its
// accept queue (inet_csk_listen_stop), unless net.ipv4.tcp_migrate_req=1
// moves them to another member of the reuseport group. The product must
// therefore steer away, wait until its app has accepted everything, and only
// then close. This file checks that, deterministically:
// - v1's app busy-blocks its event loop (zl-app.js, GET /block) so that it
//   cannot accept; 200 clients connect and send a full request each; the
//   test reads v1's queue length (rx_queue of the listener in /proc/net/tcp)
//   and sees all 200 there;
// - v2 is deployed while they wait; after the deploy returned and v1's
//   keeper has passed its handshake grace, v1 is released;
// - every one of the 200 must get a complete 200 answer, none a reset.
// A control case kills v1 while the connections are queued (a close without
// waiting for the queue) and shows that they are lost with
// tcp_migrate_req=0: the test can fail.
//
// Everything that touches the port runs in a network namespace of its own
// (`ip netns exec`), so the sysctl is the test's to choose. Needs root.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test, type TestContext } from 'node:test';
import { CLI, cleanup, fixture, isAlive, processGroup, readAppState, remember, runProcess, tempStateDir, waitUntil, type CliResult } from './helpers';

const QUEUED = 200;
const GRACE_MS = 1_000;

interface Namespace {
  name: string;
  migrateReq: 0 | 1;
}

function ipAvailable(): boolean {
  const r = spawnSync('ip', ['-V'], { stdio: 'ignore' });
  return !r.error && r.status === 0;
}

let skipReason: string | null =
  typeof process.getuid !== 'function' || process.getuid() !== 0
    ? `needs root to create a network namespace: running as uid ${process.getuid?.() ?? '?'}`
    : !ipAvailable()
      ? 'needs root to create a network namespace: the `ip` command (iproute2) is missing'
      : null;

const namespaces: Namespace[] = [];
const clients = new Set<ChildProcess>();
const stateDirs = new Set<string>();
const tempDirs = new Set<string>();

function sh(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr.trim()}`);
  return r.stdout;
}

function createNamespace(migrateReq: 0 | 1): Namespace {
  const ns: Namespace = { name: `rd-zl-${randomBytes(4).toString('hex')}`, migrateReq };
  sh('ip', ['netns', 'add', ns.name]);
  namespaces.push(ns);
  sh('ip', ['netns', 'exec', ns.name, 'ip', 'link', 'set', 'lo', 'up']);
  sh('ip', ['netns', 'exec', ns.name, 'sysctl', '-q', '-w', `net.ipv4.tcp_migrate_req=${migrateReq}`]);
  const actual = sh('ip', ['netns', 'exec', ns.name, 'cat', '/proc/sys/net/ipv4/tcp_migrate_req']).trim();
  assert.equal(actual, String(migrateReq), `tcp_migrate_req in ${ns.name}`);
  return ns;
}

before(() => {
  if (skipReason) return;
  try {
    createNamespace(0);
    createNamespace(1);
  } catch (err) {
    skipReason = `needs root to create a network namespace: ${(err as Error).message}`;
  }
});

after(async () => {
  for (const child of clients) if (child.pid && isAlive(child.pid)) child.kill('SIGKILL');
  clients.clear();
  for (const dir of stateDirs) await cleanup(dir);
  stateDirs.clear();
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
  for (const ns of namespaces.splice(0)) spawnSync('ip', ['netns', 'del', ns.name], { stdio: 'ignore' });
});

/** One app on one port, in one namespace, with its own state dir. */
class Scenario {
  readonly stateDir = tempStateDir();
  readonly zlDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rd-zl-'));

  constructor(
    readonly ns: Namespace,
    readonly port: number,
  ) {
    stateDirs.add(this.stateDir);
    tempDirs.add(this.zlDir);
  }

  async deploy(version: string, ...extra: string[]): Promise<CliResult> {
    const args = [
      'netns', 'exec', this.ns.name, process.execPath, CLI, fixture('zl-app.js'),
      '--port', String(this.port), '--host', '127.0.0.1', '--name', 'app', '--state-dir', this.stateDir,
      '--env', `APP_VERSION=${version}`, '--env', `ZL_DIR=${this.zlDir}`, '--handshake-grace', `${GRACE_MS}ms`, ...extra,
    ];
    try {
      return await runProcess('ip', args, { env: { ...process.env, CI: 'true' }, timeoutMs: 30_000 });
    } finally {
      remember(this.stateDir, 'app');
    }
  }

  liveKeeper(): number {
    const state = readAppState(this.stateDir, 'app') as { instances: { role: string; keeperPid: number }[] } | null;
    const live = (state?.instances ?? []).filter((i) => i.role === 'live');
    assert.equal(live.length, 1, 'one live instance');
    return live[0]!.keeperPid;
  }

  log(release: string): string {
    try {
      return fs.readFileSync(path.join(this.stateDir, 'app', 'logs', `${release}.log`), 'utf8');
    } catch {
      return '';
    }
  }

  /** rx_queue of every listener on the port (sk_ack_backlog: connections waiting for accept()), read inside the namespace. */
  queues(): number[] {
    return this.listeners().map((l) => l.queued);
  }

  /** Listeners on the port, fullest queue first. */
  listeners(): { queued: number; inode: number }[] {
    const text = sh('ip', ['netns', 'exec', this.ns.name, 'cat', '/proc/net/tcp']);
    const out: { queued: number; inode: number }[] = [];
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || f[3] !== '0A') continue;
      if (parseInt(f[1]!.split(':')[1]!, 16) !== this.port) continue;
      out.push({ queued: parseInt(f[4]!.split(':')[1]!, 16), inode: Number(f[9]) });
    }
    return out.sort((a, b) => b.queued - a.queued);
  }

  client(n: number, urlPath = '/', timeoutMs = 30_000) {
    const child = spawn('ip', ['netns', 'exec', this.ns.name, process.execPath, fixture('zl-client.js'), String(this.port), String(n), urlPath, String(timeoutMs)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    clients.add(child);
    let buffer = '';
    let onConnected: () => void;
    const connected = new Promise<void>((resolve) => (onConnected = resolve));
    const done = new Promise<ClientResult[]>((resolve, reject) => {
      let results: ClientResult[] | null = null;
      child.stdout!.on('data', (d) => {
        buffer += d;
        let nl: number;
        while ((nl = buffer.indexOf('\n')) >= 0) {
          const msg = JSON.parse(buffer.slice(0, nl)) as { connected?: number; results?: ClientResult[] };
          buffer = buffer.slice(nl + 1);
          if (msg.connected !== undefined) onConnected();
          if (msg.results) results = msg.results;
        }
      });
      child.on('close', (code) => {
        clients.delete(child);
        if (results) resolve(results);
        else reject(new Error(`zl-client exited ${code} without results`));
      });
    });
    return { connected, done };
  }

  /** Makes v1's app busy-block; resolves once it spins (it cannot accept from here on). */
  async block(version: string): Promise<void> {
    const [answer] = await this.client(1, '/block', 5_000).done;
    assert.deepEqual(answer, { status: 200, body: `${version} blocking` });
    await waitUntil(() => fs.existsSync(path.join(this.zlDir, `blocked-${version}`)), 5_000, `${version} to block`);
  }

  release(version: string): void {
    fs.writeFileSync(path.join(this.zlDir, `release-${version}`), '');
  }

  /** v1 live and blocked, QUEUED connections with a request each in its accept queue. */
  async queueInV1(t: TestContext) {
    const v1 = await this.deploy('v1');
    assert.equal(v1.code, 0, v1.stderr);
    const v1Keeper = this.liveKeeper();
    const v1Pids = processGroup(v1Keeper);
    assert.equal(v1Pids.length, 2, 'v1 keeper and one app process');
    await this.block('v1');
    const queued = this.client(QUEUED);
    await queued.connected;
    await waitUntil(() => this.queues()[0] === QUEUED, 5_000, `${QUEUED} connections in v1's accept queue (queues: ${this.queues()})`);
    assert.deepEqual(this.queues(), [QUEUED], 'one listener (v1), holding every connection');
    t.diagnostic(`v1 blocked with ${QUEUED} connections in its accept queue`);
    return { v1Keeper, v1Pids, queued };
  }

  async cleanup(): Promise<void> {
    await cleanup(this.stateDir);
    stateDirs.delete(this.stateDir);
  }
}

function socketInodes(pid: number): Set<number> {
  const inodes = new Set<number>();
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(Number(m[1]));
    } catch {
      // closed meanwhile
    }
  }
  return inodes;
}

type ClientResult = { status: number; body: string } | { error: string };

function summarize(results: ClientResult[]) {
  const errors = new Map<string, number>();
  const versions = new Map<string, number>();
  for (const r of results) {
    if ('error' in r) errors.set(r.error, (errors.get(r.error) ?? 0) + 1);
    else if (r.status !== 200) errors.set(`status ${r.status}`, (errors.get(`status ${r.status}`) ?? 0) + 1);
    else versions.set(r.body.split(' ')[0]!, (versions.get(r.body.split(' ')[0]!) ?? 0) + 1);
  }
  const lost = [...errors.values()].reduce((a, b) => a + b, 0);
  return { lost, errors: Object.fromEntries(errors), versions: Object.fromEntries(versions) };
}

let nextPort = 18_080;

async function cutoverKeepsQueue(t: TestContext, ns: Namespace): Promise<void> {
  const s = new Scenario(ns, nextPort++);
  try {
    const { v1Keeper, v1Pids, queued } = await s.queueInV1(t);
    const v1Listener = s.listeners()[0]!.inode;

    const v2 = await s.deploy('v2');
    assert.equal(v2.code, 0, v2.stderr);
    assert.match(v2.stdout, /replaced r1/);
    // The cutover and the drain of v1 begin with every connection in v1's queue.
    assert.deepEqual(s.queues(), [QUEUED, 0], 'v1 still holds every connection, v2 has none');
    await waitUntil(() => s.log('r1').includes('phase draining'), 5_000, 'v1 to start draining');
    // Past the handshake grace: v1's keeper now waits for its queue to empty.
    await sleep(GRACE_MS + 300);
    assert.deepEqual(s.queues(), [QUEUED, 0], 'v1 has not closed its listener while its queue is full');
    // The app's dup of the fd alone would keep the socket listening; the
    // keeper must not have closed its own either.
    assert.ok(socketInodes(v1Keeper).has(v1Listener), "v1's keeper still holds its listener while the queue is full");
    s.release('v1');

    const results = await queued.done;
    const summary = summarize(results);
    t.diagnostic(`queued connections: ${JSON.stringify(summary)}`);
    assert.equal(results.length, QUEUED);
    assert.deepEqual(summary.errors, {}, `every queued connection answered 200 (r1 log:\n${s.log('r1')})`);
    assert.equal(summary.lost, 0);

    const fresh = summarize(await s.client(20, '/', 5_000).done);
    assert.deepEqual(fresh, { lost: 0, errors: {}, versions: { v2: 20 } }, 'new connections are answered by v2');

    await waitUntil(() => v1Pids.every((pid) => !isAlive(pid)), 15_000, 'v1 processes to exit');
    const log = s.log('r1');
    assert.doesNotMatch(log, /accept queue still holds/, log);
    assert.match(log, /phase closed/);
  } finally {
    s.release('v1');
    await s.cleanup();
  }
}

describe('connections queued in the old instance survive the cutover', () => {
  test(`tcp_migrate_req=0: ${QUEUED} connections in v1's accept queue all get a 200 answer`, async (t) => {
    if (skipReason) return t.skip(skipReason);
    await cutoverKeepsQueue(t, namespaces.find((n) => n.migrateReq === 0)!);
  });

  test('control, tcp_migrate_req=0: closing v1 while connections are queued loses them', async (t) => {
    if (skipReason) return t.skip(skipReason);
    const s = new Scenario(namespaces.find((n) => n.migrateReq === 0)!, nextPort++);
    try {
      const { v1Pids, queued } = await s.queueInV1(t);
      const v2 = await s.deploy('v2');
      assert.equal(v2.code, 0, v2.stderr);
      assert.deepEqual(s.queues(), [QUEUED, 0]);
      // v2 is in the group and steered to; v1 is closed without waiting for its queue.
      for (const pid of v1Pids) process.kill(pid, 'SIGKILL');
      const summary = summarize(await queued.done);
      t.diagnostic(`after kill -9 of v1: ${JSON.stringify(summary)}`);
      assert.ok(summary.lost > 0, `a close with a full accept queue must lose connections: ${JSON.stringify(summary)}`);
      assert.equal(summary.errors.ECONNRESET, summary.lost, 'they were reset');
    } finally {
      await s.cleanup();
    }
  });

  test(`tcp_migrate_req=1: ${QUEUED} connections in v1's accept queue all get a 200 answer`, async (t) => {
    if (skipReason) return t.skip(skipReason);
    await cutoverKeepsQueue(t, namespaces.find((n) => n.migrateReq === 1)!);
  });
});
