// The native addon through its single loader (src/native.ts): real sockets,
// real locks, real peer credentials; and the loader's RD_ERR_ADDON report.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import {
  acceptQueue,
  addonPath,
  attachSteering,
  attachSteeringBySource,
  bindReusePort,
  closeFd,
  detachSteering,
  ensureAddon,
  flock,
  listenFd,
  peerCredentials,
  recvFds,
  sendFds,
  tcpListeners,
  type SystemError,
} from '../src/native';
import { listenersOn, procListenersOn } from '../src/sys/proc-net';
import { freePort, ROOT } from './helpers';

const openFds: number[] = [];
const clients: net.Socket[] = [];
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rd-native-'));

after(() => {
  for (const c of clients.splice(0)) c.destroy();
  for (const fd of openFds.splice(0)) {
    try {
      closeFd(fd);
    } catch {
      // already closed
    }
  }
  fs.rmSync(tmp, { recursive: true, force: true });
});

function bound(address: string, port: number): number {
  const fd = bindReusePort(address, port);
  openFds.push(fd);
  return fd;
}

function close(fd: number): void {
  openFds.splice(openFds.indexOf(fd), 1);
  closeFd(fd);
}

function connect(port: number, host = '127.0.0.1', localPort?: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host, localPort });
    clients.push(socket);
    socket.once('connect', () => resolve(socket));
    socket.once('error', reject);
  });
}

/** Throws unless `fn` throws a SystemError with this code. */
function assertSystemError(fn: () => unknown, code: string): SystemError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof Error, `expected ${code}, nothing was thrown`);
  const e = caught as SystemError;
  assert.equal(e.code, code, e.message);
  assert.equal(typeof e.errno, 'number');
  assert.equal(typeof e.syscall, 'string');
  return e;
}

const hasIPv6 = (() => {
  try {
    return fs.readFileSync('/proc/net/if_inet6', 'utf8').split('\n').some((l) => l.startsWith('00000000000000000000000000000001'));
  } catch {
    return false;
  }
})();

describe('addon', () => {
  test('loads, from the package (no override)', (t) => {
    ensureAddon();
    const file = addonPath();
    assert.ok(fs.statSync(file).isFile(), file);
    t.diagnostic(`addon: ${path.relative(ROOT, file)}`);
    if (!process.env.REUSE_DEPLOY_ADDON) {
      assert.ok(file.startsWith(path.join(ROOT, 'prebuilds')) || file.startsWith(path.join(ROOT, 'build')), file);
    }
  });

  test('the committed prebuild is built from the current native/ sources and loads here', () => {
    const dir = path.join(ROOT, 'prebuilds', `${process.platform}-${process.arch}`);
    if (!fs.existsSync(dir)) {
      assert.notEqual(`${process.platform}-${process.arch}`, 'linux-x64', 'prebuilds/linux-x64/ must be committed (npm run prebuildify)');
      return;
    }
    const script = require(path.join(ROOT, 'scripts', 'prebuild.js')) as {
      sourceHashes(): Record<string, string>;
      declaredExports(): string[];
    };
    const record = JSON.parse(fs.readFileSync(path.join(dir, 'sources.json'), 'utf8')) as {
      file: string;
      sha256: string;
      sources: Record<string, string>;
    };
    const stale = 'the prebuild is stale: run `npm run prebuildify` and commit prebuilds/';
    assert.deepEqual(record.sources, script.sourceHashes(), stale);
    const file = path.join(dir, record.file);
    assert.equal(crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex'), record.sha256, `${file} is not the file sources.json describes; ${stale}`);
    assert.deepEqual(fs.readdirSync(dir).filter((f) => f.endsWith('.node')), [record.file], 'one prebuild per platform');
    const mod = { exports: {} as Record<string, unknown> };
    process.dlopen(mod, file);
    for (const name of script.declaredExports()) assert.equal(typeof mod.exports[name], 'function', `${name} missing from ${file}; ${stale}`);
  });
});

describe('bindReusePort', () => {
  test('127.0.0.1: an fd that listens and takes connections', async () => {
    const port = await freePort();
    const fd = bound('127.0.0.1', port);
    assert.ok(Number.isInteger(fd) && fd > 2, `fd ${fd}`);
    listenFd(fd, 16);
    await connect(port);
    assert.equal(acceptQueue(fd).queued, 1);
    close(fd);
  });

  test(':: is dual-stack: an IPv4 client connects after listenFd', { skip: !hasIPv6 && 'no IPv6 loopback here' }, async () => {
    const port = await freePort();
    const fd = bound('::', port);
    assert.ok(Number.isInteger(fd) && fd > 2, `fd ${fd}`);
    listenFd(fd, 16);
    await connect(port, '127.0.0.1');
    await connect(port, '::1');
    assert.equal(acceptQueue(fd).queued, 2);
    close(fd);
  });

  test('EADDRINUSE, with code, errno and syscall, when a plain node listener holds the port', async () => {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as net.AddressInfo;
    try {
      const e = assertSystemError(() => bindReusePort('127.0.0.1', port), 'EADDRINUSE');
      assert.match(e.syscall, /bind/);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  test('EACCES for port 80 as a non-root user', (t) => {
    const start = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8'));
    if (!(start > 80)) return t.skip(`ip_unprivileged_port_start is ${start}: port 80 is not privileged here`);
    const script = `
      const native = require(${JSON.stringify(path.join(ROOT, 'dist', 'src', 'native.js'))});
      try { native.bindReusePort('127.0.0.1', 80); console.log('BOUND'); }
      catch (e) { console.log(e.code === 'RD_ERR_ADDON' ? 'NOADDON' : 'CODE ' + e.code); }`;
    const asNobody = process.getuid?.() === 0;
    const run = spawnSync(process.execPath, ['-e', script], {
      encoding: 'utf8',
      timeout: 20_000,
      ...(asNobody ? { uid: 65534, gid: 65534 } : {}),
    });
    if (run.error) return t.skip(`user nobody cannot run ${process.execPath}: ${run.error.message}`);
    if (asNobody && !/^(CODE|BOUND|NOADDON)/m.test(run.stdout)) {
      return t.skip(`user nobody cannot run the package here: ${`${run.stderr}${run.stdout}`.split('\n')[0]}`);
    }
    if (run.stdout.includes('NOADDON')) return t.skip('user nobody cannot read the addon');
    assert.match(run.stdout, /^CODE EACCES$/m, run.stderr);
  });
});

describe('listening fd', () => {
  test('acceptQueue reports connections nobody accepted', async () => {
    const port = await freePort();
    const fd = bound('127.0.0.1', port);
    assert.equal(acceptQueue(fd).listening, false);
    listenFd(fd, 16);
    const before = acceptQueue(fd);
    assert.deepEqual(before, { listening: true, queued: 0, backlog: 16 });
    for (let i = 0; i < 3; i++) await connect(port);
    assert.deepEqual(acceptQueue(fd), { listening: true, queued: 3, backlog: 16 });
    close(fd);
  });

  test('attachSteering sends new connections to the chosen member; detachSteering undoes it', async () => {
    const port = await freePort();
    const first = bound('127.0.0.1', port);
    listenFd(first, 64);
    const second = bound('127.0.0.1', port);
    listenFd(second, 64); // joined second: index 1

    attachSteering(first, 1);
    for (let i = 0; i < 4; i++) await connect(port);
    assert.equal(acceptQueue(first).queued, 0);
    assert.equal(acceptQueue(second).queued, 4);

    attachSteering(second, 0); // either member replaces the group's program
    for (let i = 0; i < 3; i++) await connect(port);
    assert.equal(acceptQueue(first).queued, 3);
    assert.equal(acceptQueue(second).queued, 4);

    detachSteering(first);
    detachSteering(first); // nothing attached: not an error
    for (let i = 0; i < 20; i++) await connect(port);
    assert.equal(acceptQueue(first).queued + acceptQueue(second).queued, 27);
    close(first);
    close(second);
  });

  for (const [host, skip] of [
    ['127.0.0.1', false],
    ['::1', !hasIPv6 && 'no IPv6 loopback here'],
  ] as const) {
    test(`attachSteeringBySource (${host}): connections from the port range go to one member, the rest to the other`, { skip }, async () => {
      // Two source ports below the ephemeral range, as the warm-up's
      // (keeper/warm-up.ts). A port from freePort() is free to listen on
      // (Node's servers set SO_REUSEADDR), but the kernel also hands such
      // ports to outgoing connections, and a connection of an earlier test
      // still open or in TIME_WAIT on it fails a client's bind: one CI run
      // got EADDRINUSE so. A pair that is taken anyway is replaced.
      let port = 0;
      let live = -1;
      let next = -1;
      let lo = 0;
      for (let attempt = 1; ; attempt++) {
        port = await freePort();
        live = bound(host, port);
        listenFd(live, 64);
        next = bound(host, port);
        listenFd(next, 64); // index 1
        lo = 20_000 + Math.floor(Math.random() * 9_999);
        attachSteeringBySource(next, lo, lo + 1, 1, 0);
        try {
          await connect(port, host, lo);
          await connect(port, host, lo + 1);
          break;
        } catch (err) {
          close(live);
          close(next);
          if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt === 5) throw err;
        }
      }
      for (let i = 0; i < 5; i++) await connect(port, host); // ephemeral ports, outside the range
      assert.deepEqual([acceptQueue(live).queued, acceptQueue(next).queued], [5, 2]);
      // An index past the group's end leaves those to the kernel's hash.
      attachSteeringBySource(next, lo, lo + 1, 1, 0xffffffff);
      for (let i = 0; i < 40; i++) await connect(port, host);
      const spread = [acceptQueue(live).queued - 5, acceptQueue(next).queued - 2];
      assert.equal(spread[0] + spread[1], 40);
      assert.ok(spread[0] > 0 && spread[1] > 0, `hashed over both members: ${spread.join(' / ')}`);
      close(live);
      close(next);
    });
  }

  test('attachSteering on a socket that is not in a reuseport group fails with a code', () => {
    const fd = fs.openSync(path.join(tmp, 'not-a-socket'), 'w');
    try {
      assertSystemError(() => attachSteering(fd, 0), 'ENOTSOCK');
    } finally {
      fs.closeSync(fd);
    }
  });
});

describe('tcpListeners (netlink sock_diag)', () => {
  test('lists the listeners of one port, as /proc/net/tcp does, queue depths included', async () => {
    const port = await freePort();
    const other = await freePort();
    const a = bound('127.0.0.1', port);
    const b = bound('127.0.0.1', port);
    const c = bound('127.0.0.1', other);
    listenFd(a, 16);
    listenFd(b, 16);
    listenFd(c, 16);
    attachSteering(b, 1); // every new connection queues on b, which nobody accepts
    await connect(port);
    await connect(port);
    const viaNetlink = tcpListeners(port);
    assert.ok(viaNetlink, 'netlink answered');
    const key = (l: { inode: number }) => l.inode;
    const sorted = <T extends { inode: number }>(xs: T[]) => [...xs].sort((x, y) => key(x) - key(y));
    assert.deepEqual(
      sorted(viaNetlink!).map((l) => [l.inode, l.address, l.port, l.uid, l.queued]),
      sorted(procListenersOn(port)).map((l) => [l.inode, l.address, l.port, l.uid, l.queued]),
    );
    assert.deepEqual(sorted(viaNetlink!).map((l) => [l.inode, l.queued]), sorted([
      { inode: fs.fstatSync(a).ino, queued: 0 },
      { inode: fs.fstatSync(b).ino, queued: 2 },
    ]).map((l) => [l.inode, l.queued]));
    assert.deepEqual(sorted(listenersOn(port)), sorted(procListenersOn(port)));
    assert.deepEqual(tcpListeners(await freePort()), []);
    for (const fd of [a, b, c]) close(fd);
  });
});

describe('flock', () => {
  test('a second exclusive holder is refused; released by unlock or close', () => {
    const file = path.join(tmp, 'lock');
    fs.writeFileSync(file, '');
    const a = fs.openSync(file, 'r+');
    const b = fs.openSync(file, 'r+');
    try {
      assert.equal(flock(a, true, false), true);
      assert.equal(flock(b, true, false), false, 'second open file description');
      assert.equal(flock(a, true, false), true, 'the holder may take it again');
      assert.equal(flock(a, false, false), true, 'unlock');
      assert.equal(flock(b, true, false), true);
      fs.closeSync(b);
      assert.equal(flock(a, true, false), true, 'closing the holder releases it');
    } finally {
      fs.closeSync(a);
      try {
        fs.closeSync(b);
      } catch {
        // closed above
      }
    }
  });
});

describe('peerCredentials', () => {
  test("a unix socket connection reports this process's uid and pid", async () => {
    const sock = path.join(tmp, 'peer.sock');
    const server = net.createServer();
    const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
    await new Promise<void>((resolve) => server.listen(sock, resolve));
    const client = net.connect(sock);
    clients.push(client);
    const conn = await accepted;
    try {
      const fd = (conn as net.Socket & { _handle?: { fd?: number } })._handle?.fd;
      assert.ok(typeof fd === 'number' && fd >= 0, 'server-side fd');
      const cred = peerCredentials(fd);
      assert.equal(cred.pid, process.pid);
      assert.equal(cred.uid, process.getuid!());
      assert.equal(cred.gid, process.getgid!());
    } finally {
      conn.destroy();
      client.destroy();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});

describe('sendFds / recvFds', () => {
  test('descriptors arrive, close-on-exec, and still reach the same file', async () => {
    const sock = path.join(tmp, 'fds.sock');
    const server = net.createServer({ pauseOnConnect: true });
    const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
    await new Promise<void>((resolve) => server.listen(sock, resolve));
    const file = path.join(tmp, 'passed.txt');
    fs.writeFileSync(file, 'through SCM_RIGHTS');
    const sent = fs.openSync(file, 'r');
    try {
      const conn = sendFds(sock, [sent]);
      openFds.push(conn);
      const receiver = await accepted;
      const fd = (receiver as net.Socket & { _handle: { fd: number } })._handle.fd;
      let got = recvFds(fd);
      for (let i = 0; got === null && i < 100; i++) {
        await new Promise((resolve) => setTimeout(resolve, 5));
        got = recvFds(fd);
      }
      assert.ok(got && got.fds.length === 1 && !got.truncated, JSON.stringify(got));
      const received = got.fds[0]!;
      assert.notEqual(received, sent);
      const flags = Number.parseInt(/^flags:\s+(\d+)/m.exec(fs.readFileSync(`/proc/self/fdinfo/${received}`, 'utf8'))![1]!, 8);
      assert.ok(flags & 0o2000000, 'O_CLOEXEC (MSG_CMSG_CLOEXEC): an app child process must not inherit client connections');
      assert.equal(fs.readFileSync(received, 'utf8'), 'through SCM_RIGHTS');
      fs.closeSync(received);
      receiver.destroy();
    } finally {
      fs.closeSync(sent);
      await new Promise((resolve) => server.close(resolve));
    }
  });

  test('a receiver that does not accept: EAGAIN once its backlog is full, at once rather than after a wait', async () => {
    const sock = path.join(tmp, 'full.sock');
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen({ path: sock, backlog: 1 }, resolve));
    const passed = fs.openSync(__filename, 'r');
    try {
      // This loop never yields, so the server accepts nothing meanwhile.
      let failure: SystemError | null = null;
      let failedAfterMs = 0;
      for (let i = 0; i < 10 && !failure; i++) {
        const started = Date.now();
        try {
          openFds.push(sendFds(sock, [passed]));
        } catch (err) {
          failure = err as SystemError;
          failedAfterMs = Date.now() - started;
        }
      }
      assert.ok(failure?.code === 'EAGAIN' || failure?.code === 'EWOULDBLOCK', String(failure)); // errno 11 has both names
      // A blocking connect() would wait here (for SO_SNDTIMEO, or for ever) and stall an app's event loop.
      assert.ok(failedAfterMs < 500, `failed after ${failedAfterMs} ms`);
    } finally {
      fs.closeSync(passed);
      await new Promise((resolve) => server.close(resolve));
    }
  });
});

describe('RD_ERR_ADDON', () => {
  const nativeJs = path.join(ROOT, 'dist', 'src', 'native.js');

  /** Loads the addon in a fresh node process (fresh module cache); the error as JSON. */
  function loadInChild(env: NodeJS.ProcessEnv, entry = nativeJs): { code?: string; message?: string; tried?: string[]; loaded?: string } {
    const script = `
      try { console.log(JSON.stringify({ loaded: require(${JSON.stringify(entry)}).addonPath() })); }
      catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message, tried: e.details && e.details.tried })); }`;
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env, timeout: 20_000 });
    assert.equal(run.status, 0, run.stderr);
    return JSON.parse(run.stdout);
  }

  test('REUSE_DEPLOY_ADDON pointing at a bad file: RD_ERR_ADDON naming that file, no fallback', () => {
    const bad = path.join(tmp, 'bad.node');
    fs.writeFileSync(bad, 'not an ELF file\n');
    const result = loadInChild({ ...process.env, REUSE_DEPLOY_ADDON: bad });
    assert.equal(result.code, 'RD_ERR_ADDON', JSON.stringify(result));
    assert.ok(result.message!.includes(bad), result.message);
    assert.match(result.message!, /REUSE_DEPLOY_ADDON/);
    assert.deepEqual(result.tried!.length, 1);

    const missing = path.join(tmp, 'nowhere', 'reuse_deploy.node');
    const gone = loadInChild({ ...process.env, REUSE_DEPLOY_ADDON: missing });
    assert.equal(gone.code, 'RD_ERR_ADDON');
    assert.ok(gone.message!.includes(`${missing}: missing`), gone.message);
  });

  test('REUSE_DEPLOY_ADDON pointing at a good file is used', () => {
    const good = path.join(tmp, 'copy.node');
    fs.copyFileSync(addonPath(), good);
    assert.equal(loadInChild({ ...process.env, REUSE_DEPLOY_ADDON: good }).loaded, good);
  });

  test('the CLI exits 4 with RD_ERR_ADDON before starting anything', () => {
    const bad = path.join(tmp, 'bad2.node');
    fs.writeFileSync(bad, '');
    const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rd-'));
    try {
      const run = spawnSync(
        process.execPath,
        [path.join(ROOT, 'dist', 'src', 'cli.js'), path.join(ROOT, 'test', 'fixtures', 'app.js'), '--port', '1', '--host', '127.0.0.1', '--name', 'addon', '--state-dir', stateDir],
        { encoding: 'utf8', env: { ...process.env, CI: 'true', REUSE_DEPLOY_ADDON: bad }, timeout: 30_000 },
      );
      assert.equal(run.status, 4, run.stderr);
      assert.match(run.stderr, /RD_ERR_ADDON/);
      assert.ok(run.stderr.includes(bad), run.stderr);
      assert.equal(fs.existsSync(path.join(stateDir, 'addon', 'state.json')), false);
    } finally {
      fs.rmSync(stateDir, { recursive: true, force: true });
    }
  });

  test('no prebuild for this platform, no source build, no compiler: says what is missing and what to install', () => {
    // A copy of the loader in a package root without prebuilds/ or build/, and a PATH with only node.
    const pkg = path.join(tmp, 'pkg');
    fs.mkdirSync(path.join(pkg, 'dist', 'src'), { recursive: true });
    for (const f of ['native.js', 'errors.js', 'package-files.js']) fs.copyFileSync(path.join(ROOT, 'dist', 'src', f), path.join(pkg, 'dist', 'src', f));
    fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(pkg, 'package.json'));
    fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(pkg, 'node_modules'));
    fs.mkdirSync(path.join(pkg, 'prebuilds', 'plan9-mips'), { recursive: true });
    const bin = path.join(tmp, 'bin');
    fs.mkdirSync(bin);
    fs.symlinkSync(process.execPath, path.join(bin, 'node'));
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: bin };
    delete env.REUSE_DEPLOY_ADDON;
    delete env.CXX;
    delete env.PYTHON;
    delete env.npm_config_python;
    const result = loadInChild(env, path.join(pkg, 'dist', 'src', 'native.js'));
    assert.equal(result.code, 'RD_ERR_ADDON', JSON.stringify(result));
    const platform = `${process.platform}-${process.arch}`;
    assert.match(result.message!, new RegExp(`no prebuild for ${platform}, no source build and no compiler \\(python3, make, g\\+\\+ not on PATH\\)`));
    assert.match(result.message!, /prebuilds exist for plan9-mips/);
    assert.match(result.message!, /Install python3, make and g\+\+, then run `cd .* && npm run install`/);
    assert.ok(result.message!.includes(path.join(pkg, 'build', 'Release', 'reuse_deploy.node')), result.message);
  });
});
