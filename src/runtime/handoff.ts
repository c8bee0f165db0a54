// Keep-alive connections handed from a draining app process to the new
// version, so that their clients never reconnect.
//
// Invariant: a connection is served by exactly one process at a time, and
// is handed over only when no byte of a request is inside this process and
// no byte of a response is still queued in it:
// - its HTTP parser is between two messages (or it has read nothing at
//   all). Node's http server keeps every parser in a ConnectionsList, and
//   idle() lists those whose last message is complete and whose next has
//   not begun (node_http_parser.cc: on_message_begin sets
//   last_message_start_, on_message_complete clears it); a request read in
//   part has begun, and so has a pipelined one;
// - no response is in progress (socket._httpMessage), nothing waits in the
//   socket's write queue or its JS buffer, and the socket is not being
//   ended (a `Connection: close` answer shuts it down after the write);
// - it is reading, as Node started it (not paused, by the app or by the
//   http server's pipelining back-pressure), and reading stops (readStop) in
//   the same tick as these checks, so nothing more is read here. Bytes the
//   client sends from then on wait in the socket's kernel receive queue,
//   which travels with the socket.
// The descriptors go to the new process over a unix socket (SCM_RIGHTS).
// It takes them, all of a message or none, and, in the same tick, before it
// can read from any of them, writes one byte back. Only then are ours
// closed; closing them sends no FIN, as each socket's last reference is now
// in the new process. If the new process goes away without that byte, it
// cannot have read from them (a message it never took is dropped with its
// references): this process reads again and serves them as before. A
// connection that cannot be handed over (busy, TLS, HTTP/2, an upgraded
// one, a send that failed) is closed the usual way (drain.ts:
// `Connection: close`). Plain HTTP/1 servers only, on both sides.
import fs from 'node:fs';
import type http from 'node:http';
import net from 'node:net';
import { idleTimeoutUntilRequest } from './drain';

type Native = typeof import('../native');

/** Descriptors per message: SCM_MAX_FD in include/net/scm.h. */
const MAX_FDS = 253;
const NODE_MAJOR = Number(process.versions.node.split('.')[0]);
/** A sender has this long to deliver its message after connecting. */
const RECEIVE_WAIT_MS = 1_000;

/** Node's ConnectionsList (src/node_http_parser.cc): the parsers of an http server's connections. */
export interface ConnectionsList {
  idle(): Array<{ socket?: net.Socket }>;
  all(): Array<{ socket?: net.Socket }>;
}

interface HandleInternals {
  fd?: number;
  /** net.js's own flag: set when it starts reading (tryReadStart), cleared by socket.pause(). */
  reading?: boolean;
  readStop?: () => number;
  readStart?: () => number;
  writeQueueSize?: number;
}

/** The http server's own list of its connections' parsers (lib/_http_server.js, kConnections); null for other servers. */
export function connectionsList(server: net.Server): ConnectionsList | null {
  const sym = Object.getOwnPropertySymbols(server).find((s) => s.description === 'http.server.connections');
  const list = sym ? (server as unknown as Record<symbol, unknown>)[sym] : undefined;
  return list && typeof (list as ConnectionsList).idle === 'function' && typeof (list as ConnectionsList).all === 'function' ? (list as ConnectionsList) : null;
}

/** A plain HTTP/1 server whose connections can be handed over (or received). */
export function canHandOff(server: net.Server, tls: boolean, h2: boolean): boolean {
  return !tls && !h2 && connectionsList(server) !== null;
}

function handleOf(socket: net.Socket): HandleInternals | undefined {
  return (socket as net.Socket & { _handle?: HandleInternals })._handle;
}

/** Sockets sent and not yet acknowledged: not to be sent again. */
const awaitingAck = new WeakSet<net.Socket>();

/**
 * Sockets of `candidates` that are between requests, with reading stopped
 * (see the invariant at the top). The caller hands them over or resumes them.
 */
function takeIdle(server: net.Server, candidates: Iterable<net.Socket>): net.Socket[] {
  const list = connectionsList(server);
  if (!list) return [];
  const idle = new Set(list.idle().map((p) => p.socket));
  const taken: net.Socket[] = [];
  for (const socket of candidates) {
    const handle = handleOf(socket);
    const busy =
      awaitingAck.has(socket) ||
      !(idle.has(socket) || socket.bytesRead === 0) ||
      socket.destroyed ||
      !socket.writable ||
      socket.writableEnded ||
      (socket as net.Socket & { _httpMessage?: unknown })._httpMessage ||
      socket.writableLength > 0 ||
      socket.readableLength > 0 ||
      (handle?.writeQueueSize ?? 0) > 0 ||
      // Not reading (paused by the app, or by the http server while pipelined
      // answers queue up, `_paused`, which pauses its parser too), or not yet
      // (a resume queued for the next tick): readStop would not stop a read
      // that starts later, and resuming after a failed send would read behind
      // the back of whoever paused it.
      handle?.reading !== true ||
      (socket as net.Socket & { _paused?: boolean })._paused === true;
    if (busy || !handle || typeof handle.fd !== 'number' || handle.fd < 0 || !handle.readStop) continue;
    if (handle.readStop() !== 0) {
      handle.readStart?.();
      continue;
    }
    taken.push(socket);
  }
  return taken;
}

export interface HandOffResult {
  /** Connections the new process acknowledged (destroyed here, without a FIN). */
  handed: number;
  /** Why a batch did not go (its sockets are served here again), else null. */
  error: Error | null;
}

/**
 * Hands the idle sockets among `candidates` to the processes listening on
 * the paths that `nextTarget` names, called once per socket (the caller's
 * round robin runs across calls: most carry one socket or a few), in one
 * message per target of at most MAX_FDS.
 * `settled` is called once per batch: when the receiver acknowledged (the
 * sockets are then destroyed here and leave their owner through 'close'),
 * or with the error of a send that failed or went unacknowledged (the
 * sockets then read again here). Sockets awaiting an acknowledgement are
 * skipped by later calls.
 */
export function handOffIdle(
  native: Native,
  server: net.Server,
  candidates: Iterable<net.Socket>,
  nextTarget: () => string,
  settled: (result: HandOffResult) => void,
): void {
  const taken = takeIdle(server, candidates);
  const batches = new Map<string, net.Socket[]>();
  taken.forEach((socket) => {
    const target = nextTarget();
    const batch = batches.get(target) ?? [];
    batch.push(socket);
    batches.set(target, batch);
  });
  const resume = (chunk: net.Socket[]): void => {
    for (const socket of chunk) handleOf(socket)?.readStart?.();
  };
  for (const [target, sockets] of batches) {
    for (let i = 0; i < sockets.length; i += MAX_FDS) {
      const chunk = sockets.slice(i, i + MAX_FDS);
      let conn: number;
      try {
        conn = native.sendFds(target, chunk.map((s) => handleOf(s)?.fd as number));
      } catch (err) {
        resume(chunk);
        settled({ handed: 0, error: err as Error });
        continue;
      }
      for (const socket of chunk) awaitingAck.add(socket);
      whenAcknowledged(conn, (acknowledged) => {
        for (const socket of chunk) awaitingAck.delete(socket);
        if (acknowledged) {
          for (const socket of chunk) socket.destroy();
          settled({ handed: chunk.length, error: null });
        } else {
          resume(chunk);
          settled({ handed: 0, error: new Error(`${target} closed without taking the connections`) });
        }
      });
    }
  }
}

/** Waits on the hand-over connection `fd` for the receiver's one byte (true) or its close without one (false). */
function whenAcknowledged(fd: number, done: (acknowledged: boolean) => void): void {
  const conn = new net.Socket({ fd, readable: true, writable: true });
  let acknowledged = false;
  conn.once('data', () => {
    acknowledged = true;
    conn.destroy();
  });
  conn.on('error', () => undefined); // ends in 'close'
  conn.once('close', () => done(acknowledged));
}

/**
 * Listens on `socketPath` for connections handed over by an older process
 * of the app, and gives each to `server` as if it had accepted it. Only this
 * user (or root) may send: the socket is 0600, and the peer's uid is checked.
 */
export function receiveHandOffs(native: Native, server: net.Server, socketPath: string, log: (m: string) => void): net.Server {
  try {
    fs.unlinkSync(socketPath);
  } catch {
    // not there: fine
  }
  const uid = process.getuid?.();
  const receiver = net.createServer({ pauseOnConnect: true }, (conn) => {
    const fd = handleOf(conn)?.fd ?? -1;
    const peer = fd >= 0 ? native.peerCredentials(fd).uid : -1;
    if (peer !== uid && peer !== 0) {
      conn.destroy();
      return;
    }
    // The sender writes its one message right after connecting; until it has
    // arrived, look again every millisecond (Node reads a unix socket with
    // read(2), which would discard the descriptors: we use recvmsg(2) here).
    const deadline = Date.now() + RECEIVE_WAIT_MS;
    const receive = (): void => {
      let got: ReturnType<Native['recvFds']>;
      try {
        got = native.recvFds(fd);
      } catch (err) {
        log(`receiving handed-over connections failed: ${(err as Error).message}`);
        conn.destroy();
        return;
      }
      if (got === null) {
        if (Date.now() < deadline) setTimeout(receive, 1);
        else conn.destroy();
        return;
      }
      const sockets = openAll(got.fds, got.truncated, log);
      if (sockets === null) {
        // No acknowledgement: the sender reads from all of them again.
        conn.destroy();
        return;
      }
      for (const socket of sockets) adopt(server, socket, log);
      // The acknowledgement, in the tick that adopted them: none has been
      // read from yet, so until it arrives the sender may still serve them.
      if (sockets.length > 0) conn.write('A', () => conn.destroy());
      else conn.destroy();
    };
    receive();
  });
  receiver.on('error', (err) => log(`the hand-over socket ${socketPath} failed: ${err.message}`));
  receiver.listen(socketPath, () => fs.chmodSync(socketPath, 0o600));
  // It must not keep alive an app that would otherwise exit (one that closed its own server).
  receiver.unref();
  return receiver;
}

/**
 * Opens every received descriptor, or none. The sender destroys its copies
 * of the whole message on our acknowledgement, so one that is not opened
 * here would be closed on its client, with a reset if a request waits in
 * it. A message the kernel cut short (MSG_CTRUNC: this process is out of
 * descriptors; the kernel installs the first ones and drops the rest), or a
 * descriptor that cannot be opened, ends in no acknowledgement: our copies
 * are closed (in this tick, before any is read from), and the sender serves
 * them all on.
 */
export function openAll(fds: number[], truncated: boolean, log: (m: string) => void): net.Socket[] | null {
  const sockets: net.Socket[] = [];
  let failure = truncated ? 'the kernel cut the message short (out of descriptors?)' : '';
  for (const fd of fds) {
    if (failure) {
      closeQuietly(fd);
      continue;
    }
    try {
      sockets.push(new net.Socket({ fd, readable: true, writable: true }));
    } catch (err) {
      failure = `a connection could not be opened: ${(err as Error).message}`;
      closeQuietly(fd);
    }
  }
  if (!failure) return sockets;
  for (const socket of sockets) socket.destroy();
  log(`handed-over connections refused, the old version serves them on: ${failure}`);
  return null;
}

function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    // already gone
  }
}

function adopt(server: net.Server, socket: net.Socket, log: (m: string) => void): void {
  try {
    server.emit('connection', socket);
  } catch (err) {
    // An app's own 'connection' listener threw; the next connections must still be taken.
    log(`a 'connection' listener of the app threw on a handed-over connection: ${(err as Error).message}`);
  }
  // It closes after the keep-alive timeout, as if it had just answered (the
  // new version's setting; normally the old one's too).
  const httpServer = server as http.Server;
  let idleMs = httpServer.keepAliveTimeout > 0 ? httpServer.keepAliveTimeout : Infinity;
  // Node's http server gave the connection a new parser, which counts as
  // active (a message begun) until its first request, so checkConnections
  // would answer 408 once headersTimeout passed, on a connection that was
  // idle in the old process. On Node 20 and 22, Parser::Remove
  // (node_http_parser.cc) takes it out of the server's connection lists, and
  // on_message_begin puts it back with the next request. On Node 24 the
  // parser answered no request after remove() (tried here), so the
  // connection closes, without a word, a little before the 408 would come.
  const parser = (socket as net.Socket & { parser?: { remove?: () => void } }).parser;
  if (NODE_MAJOR < 24 && typeof parser?.remove === 'function') parser.remove();
  else if (httpServer.headersTimeout > 0) idleMs = Math.min(idleMs, httpServer.headersTimeout - Math.min(1_000, httpServer.headersTimeout / 4));
  if (idleMs !== Infinity && !socket.destroyed) idleTimeoutUntilRequest(server, socket, idleMs);
}
