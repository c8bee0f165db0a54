// Preloaded into every app process with `node --require`. It does nothing
// unless the process was started by a reuse-deploy keeper.
//
// Invariant: the app's server on the deploy port never accepts a public
// connection before the keeper says go-live. Until then its listen() is
// deferred; health probes reach the app's own request handler through a
// private unix socket whose connections are injected with
// `server.emit('connection', socket)` (works for http, https and http2).
// Once live, a plain HTTP/1 server also takes the idle keep-alive connections
// of the version it replaces through a second private socket (handoff.ts).
import type { EventEmitter } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import type tls from 'node:tls';
import { APP_LISTEN_FD, ENV, type AppMessage, type KeeperMessage } from '../protocol';
import { countInflight, drainServer, openSockets, stopClosingConnections, track, trackLazily, type HandOff, type Tracked } from './drain';
import { canHandOff, connectionsList, handOffIdle, receiveHandOffs } from './handoff';
import { parseListenArgs, type ListenCall } from './listen-args';

interface RuntimeConfig {
  port: number;
  probeSocket: string;
  handoffSocket: string;
  liveAtStart: boolean;
}

const originalListen = net.Server.prototype.listen;

/** The addon, loaded on first use: an app that is not started by a keeper never loads it. */
function native(): typeof import('../native') {
  return require('../native') as typeof import('../native');
}

function readConfig(): RuntimeConfig | null {
  const keeperPid = Number(process.env[ENV.keeperPid]);
  // Only the keeper's direct children: a process the app forks inherits our
  // --require through execArgv, but must behave as plain Node.
  if (!keeperPid || process.ppid !== keeperPid || typeof process.send !== 'function') return null;
  const config = {
    port: Number(process.env[ENV.port]),
    probeSocket: process.env[ENV.probe] ?? '',
    handoffSocket: process.env[ENV.handoff] ?? '',
    liveAtStart: process.env[ENV.live] === '1',
  };
  for (const name of Object.values(ENV)) delete process.env[name];
  return config;
}

/**
 * tls.Server and what extends it (https, http2 secure). Tested by its own
 * method rather than instanceof, so that a plain HTTP app does not load
 * node:tls (about 5 ms of its start-up on Node 20).
 */
function isTlsServer(server: net.Server): boolean {
  return typeof (server as Partial<tls.Server>).setSecureContext === 'function';
}

/** http2 servers that would refuse an HTTP/1.1 health probe. */
function speaksOnlyH2(server: net.Server): boolean {
  const name = server.constructor.name;
  const options = (server as net.Server & { [key: symbol]: unknown });
  const allowHTTP1 = Object.getOwnPropertySymbols(options).some((sym) => {
    const value = options[sym] as { allowHTTP1?: boolean } | undefined;
    return sym.description === 'options' && value?.allowHTTP1 === true;
  });
  return (name === 'Http2Server' || name === 'Http2SecureServer') && !allowHTTP1;
}

/** Threads other than the main one, as they are before the app's code runs: Node's own (AppMessage 'gated'). */
function ownThreads(): number[] {
  try {
    return fs
      .readdirSync('/proc/self/task')
      .map(Number)
      .filter((tid) => tid !== process.pid);
  } catch {
    return []; // no /proc: the keeper then leaves every thread at the same priority
  }
}

/**
 * Whether node:cluster's `file` (round_robin_handle or shared_handle, in
 * lib/internal/cluster/) is the caller: the first frame of Node's own code
 * (`node:`), past this file and any listen() wrapper (an APM agent's).
 * Only that frame: a primary that listens itself from a cluster event
 * handler (on 'online', say) has node:events first, and cluster frames
 * further up. Read from V8's call sites, with the app's own stack settings
 * set aside (it may have set the limit to 0, or installed a
 * prepareStackTrace, as source-map-support does).
 */
function calledByCluster(file: 'round_robin_handle' | 'shared_handle'): boolean {
  const { stackTraceLimit, prepareStackTrace } = Error;
  try {
    Error.stackTraceLimit = 10;
    Error.prepareStackTrace = (_err, sites) => sites;
    const sites = new Error().stack as unknown as NodeJS.CallSite[];
    const caller = sites.find((site) => site.getFileName()?.startsWith('node:') === true);
    return caller?.getFileName() === `node:internal/cluster/${file}`;
  } finally {
    Error.stackTraceLimit = stackTraceLimit;
    Error.prepareStackTrace = prepareStackTrace;
  }
}

function send(message: AppMessage): void {
  if (process.connected) process.send?.(message);
}

function install(config: RuntimeConfig): void {
  const nodeThreads = ownThreads();
  const gatedMessage = (tls: boolean, h2: boolean): AppMessage => ({ rd: 'gated', tls, h2, nodeThreads });
  const channel = process.channel as { ref?: () => void; unref?: () => void } | undefined;
  let gated: { tracked: Tracked; call: ListenCall; tls: boolean; h2: boolean } | null = null;
  let probe: net.Server | null = null;
  let receiver: net.Server | null = null;
  let draining = false;

  /** Opens the probe socket, then tells the keeper the app is gated: a probe sent earlier would find no socket. */
  function openProbe(server: net.Server, tls: boolean, h2: boolean): void {
    try {
      fs.unlinkSync(config.probeSocket);
    } catch {
      // not there: fine
    }
    // The socket is 0600 in a 0700 directory; the peer's uid is checked as
    // well (SO_PEERCRED), so that only this user or root can reach the app
    // through it.
    const uid = process.getuid?.();
    const own = net.createServer((socket) => {
      const fd = (socket as net.Socket & { _handle?: { fd?: number } })._handle?.fd ?? -1;
      const peer = fd >= 0 ? native().peerCredentials(fd).uid : -1;
      if (peer !== uid && peer !== 0) socket.destroy();
      else server.emit('connection', socket);
    });
    // Should the socket fail to open, the log says why, and the health
    // check reports no answer (with the error) rather than "never listened".
    const onError = (err: Error): void => {
      console.error(`reuse-deploy: the private health-check socket ${config.probeSocket} could not be opened: ${err.message}`);
      send(gatedMessage(tls, h2));
    };
    own.once('error', onError);
    probe = own;
    originalListen.call(own, config.probeSocket, () => {
      own.removeListener('error', onError);
      fs.chmodSync(config.probeSocket, 0o600);
      send(gatedMessage(tls, h2));
      // The probe's peer check and go-live need the addon. Loading it takes
      // ~2.5 ms, spent here while the gate travels to the CLI and its probe
      // comes back, rather than before the probe's answer. A load that
      // fails fails again where the addon is used, and is reported there.
      try {
        native();
      } catch {
        // see above
      }
    });
  }

  function goLive(): void {
    if (!gated) return;
    const { tracked, call, tls, h2 } = gated;
    const server = tracked.server;
    const onError = (err: NodeJS.ErrnoException): void => send({ rd: 'listen-error', message: err.message, code: err.code });
    server.once('error', onError);
    server.once('listening', () => {
      server.removeListener('error', onError);
      probe?.close();
      probe = null;
      send({ rd: 'live' });
      // Node's http server sets up its connection list on 'listening', before this.
      if (canHandOff(server, tls, h2)) {
        trackLazily(tracked, connectionsList(server));
        if (config.handoffSocket && !receiver) receiver = receiveHandOffs(native(), server, config.handoffSocket, (m) => console.error(`reuse-deploy: ${m}`));
      }
    });
    // Node calls listen(2) again on the keeper's socket, which is already
    // listening: that only updates the backlog (inet_listen). The server gets
    // a duplicate of fd 4, so that closing it (drain) leaves fd 4 for a later
    // go-live of a parked process.
    const fd = native().dupFd(APP_LISTEN_FD);
    const options = call.backlog === undefined ? { fd } : { fd, backlog: call.backlog };
    originalListen.call(server, options, call.callback);
  }

  function gate(server: net.Server, call: ListenCall): net.Server {
    if (gated) {
      // Two servers on the port (say, one on 127.0.0.1 and one on ::1): the
      // keeper's one socket, bound to --host, is the port, and it goes to the first.
      const err = Object.assign(
        new Error(
          `listen EADDRINUSE: port ${config.port} is already used by another server in this process. ` +
            'reuse-deploy gives the deploy port to one server, on one socket bound to the address given with --host ' +
            '(by default ::, every IPv6 and, on most hosts, IPv4 address): listen on the port once.',
        ),
        { code: 'EADDRINUSE' },
      );
      process.nextTick(() => server.emit('error', err));
      return server;
    }
    // Told to drain before it listened (restarted after a crash while its
    // release was being replaced): the keeper stops this process, and it must
    // not start accepting on the socket meanwhile.
    if (draining) return server;
    const tls = isTlsServer(server);
    const h2 = speaksOnlyH2(server);
    gated = { tracked: track(server), call, tls, h2 };
    if (config.liveAtStart) {
      send(gatedMessage(tls, h2));
      goLive();
    } else {
      openProbe(server, tls, h2);
    }
    return server;
  }

  // Any other TCP port gets SO_REUSEPORT, so that old and new versions can
  // both hold it during the overlap. It is not health-gated.
  function listenShared(server: net.Server, call: ListenCall): net.Server {
    const host = call.host ?? '::';
    if (net.isIP(host) === 0) {
      // A host name ('localhost'): Node's own listen() looks it up and binds
      // the first address (lookupAndListen, lib/net.js); so does this, or the
      // new version's bind would fail with EADDRINUSE while the old holds it.
      (require('node:dns') as typeof import('node:dns')).lookup(host, (err, address) => {
        if (err) server.emit('error', err);
        else listenShared(server, { ...call, host: address });
      });
      return server;
    }
    let fd: number;
    try {
      fd = bindShared(call.host, call.port ?? 0);
    } catch (err) {
      process.nextTick(() => server.emit('error', err));
      return server;
    }
    const options = call.backlog === undefined ? { fd } : { fd, backlog: call.backlog };
    return originalListen.call(server, options, call.callback);
  }

  /**
   * A socket bound with SO_REUSEPORT to `host` (an address; every interface,
   * IPv6 and else IPv4, when undefined) and `port`, not listening yet, for a
   * port other than the deploy port. Throws the bind's error.
   */
  function bindShared(host: string | undefined, port: number): number {
    let fd: number;
    try {
      fd = native().bindReusePort(host ?? '::', port);
    } catch (err) {
      if (host !== undefined || (err as NodeJS.ErrnoException).code !== 'EAFNOSUPPORT') throw err;
      fd = native().bindReusePort('0.0.0.0', port);
    }
    send({ rd: 'other-port', port });
    return fd;
  }

  // node:cluster listens for its workers in this process, through this
  // listen() with the default round-robin policy (RoundRobinHandle, lib/
  // internal/cluster/round_robin_handle.js: a server whose 'connection'
  // handler is assert.fail, so a health probe handed to it would crash the
  // app), or through net._createServerHandle with SCHED_NONE
  // (shared_handle.js), which a worker then accepts on itself. Either way
  // the deploy port's connections would be served by processes this runtime
  // does not run in: the keeper fails the deploy with a message that says
  // what to do instead, and the port is not opened. Other ports are shared
  // as the app's own are: round robin comes through listenShared, and
  // SCHED_NONE gets a handle on a socket from bindShared.
  function refuseCluster(policy: 'round-robin' | 'none'): void {
    // Stay up until the keeper stops this process: with the workers gone
    // (their listen failed), the process could exit first, and the deploy
    // would fail as a crash at boot instead.
    channel?.ref?.();
    send({ rd: 'cluster', policy });
  }
  const netInternals = net as unknown as { _createServerHandle?: (address: unknown, port: unknown, ...rest: unknown[]) => unknown };
  const createServerHandle = netInternals._createServerHandle;
  if (typeof createServerHandle === 'function') {
    netInternals._createServerHandle = function (address, port, addressType, fd, flags) {
      if (typeof port !== 'number' || port <= 0 || !calledByCluster('shared_handle')) return createServerHandle.call(this, address, port, addressType, fd, flags);
      // Errors go back as libuv codes (negative errno), which SharedHandle
      // passes on to the worker's listen().
      if (port === config.port) {
        refuseCluster('none');
        return -(os.constants.errno.EADDRINUSE ?? 98);
      }
      let shared = -1;
      try {
        shared = bindShared(typeof address === 'string' && address !== '' ? address : undefined, port);
        const handle = createServerHandle.call(this, null, 0, addressType, shared, flags); // wraps the fd, binds nothing
        if (typeof handle === 'number') native().closeFd(shared);
        return handle;
      } catch (err) {
        if (shared >= 0) native().closeFd(shared);
        const errno = (err as { errno?: unknown }).errno;
        if (typeof errno === 'number') return -errno;
        // No errno (the addon did not load, an address it cannot parse): the
        // worker only gets EINVAL, so the reason goes to the log here.
        console.error(`reuse-deploy: port ${port} for cluster workers could not be bound: ${(err as Error).message}`);
        return -os.constants.errno.EINVAL;
      }
    };
  }

  net.Server.prototype.listen = function listen(this: net.Server, ...args: unknown[]) {
    const call = parseListenArgs(args);
    if (call.port === config.port && calledByCluster('round_robin_handle')) {
      refuseCluster('round-robin');
      return this;
    }
    if (call.port === config.port) return gate(this, call);
    if (call.port !== null && call.port > 0) return listenShared(this, call);
    return originalListen.apply(this, args as Parameters<typeof originalListen>);
  } as typeof net.Server.prototype.listen;

  process.on('message', (message: KeeperMessage) => {
    if (typeof message !== 'object' || message === null) return;
    if (message.rd === 'live') goLive();
    else if (message.rd === 'unpark' && draining && gated) {
      stopClosingConnections(gated.tracked);
      draining = false;
      channel?.unref?.();
      goLive();
    }
    else if (message.rd === 'stats') {
      const open = gated ? openSockets(gated.tracked) : new Set<net.Socket>();
      send({ rd: 'stats', connections: open.size, inflight: countInflight(open) });
    } else if (message.rd === 'drain' && !draining) {
      draining = true;
      // Stay up once the server is closed: the keeper decides when this
      // process ends (SIGTERM after the drain), or parks it for a rollback.
      channel?.ref?.();
      // The app's hook for long-lived streams: process.on('reuse-deploy:drain', ...).
      (process as EventEmitter).emit('reuse-deploy:drain');
      if (!gated) {
        send({ rd: 'drained', forced: 0, handedOver: 0 });
        return;
      }
      probe?.close();
      receiver?.close();
      receiver = null;
      const { server } = gated.tracked;
      const targets = Array.isArray(message.handoff) ? message.handoff : [];
      // Round robin over the new processes, per connection; each old process
      // starts at its pid, so that several spread theirs over different ones.
      let next = process.pid;
      const nextTarget = (): string => targets[next++ % targets.length] as string;
      const handOff: HandOff | null =
        targets.length > 0 && canHandOff(server, gated.tls, gated.h2) ? (sockets, settled) => handOffIdle(native(), server, sockets, nextTarget, settled) : null;
      void drainServer(gated.tracked, message.timeoutMs, () => send({ rd: 'listener-closed' }), handOff).then((result) => {
        if (result !== null) send({ rd: 'drained', forced: result.forced, handedOver: result.handedOver });
      });
    }
  });
  // The IPC channel must not keep an app alive that would otherwise exit.
  channel?.unref?.();
}

const config = readConfig();
if (config) install(config);
