// The keep-alive drain of one app server, inside the app process.
//
// Invariant: no request that reached this process is answered with a reset.
// - Idle keep-alive connections go to the new version first, where it can
//   take them (handoff.ts): their clients see nothing at all. What follows is
//   for the rest, and for all of them where it cannot.
// - Node's http.Server#close() (since Node 19) destroys idle keep-alive
//   sockets at once. A client may already have written its next request on
//   one of them; close() with unread data in the receive queue sends a RST
//   (tcp_close, RFC 2525 §2.17), and the request is lost. So the listener is
//   closed with net.Server#close(), which leaves connections alone.
// - Every response not yet started, and every later request on an open
//   connection, is answered with `Connection: close` (RFC 9112 §9.6), after
//   which Node ends the socket itself. The connections take turns over the
//   first CLOSE_SPREAD_MS of the drain (connection i of n from i/n of it on),
//   so that their clients do not all reconnect to the new version in the
//   same few milliseconds; HAProxy's close-spread-time does the same for a
//   soft stop. Measured under keep-alive load, closing all at once made the
//   new version's answers 5-10x slower for ~60 ms.
// - An idle connection is closed only after it has been idle for the
//   server's keepAliveTimeout: the time Node already announces to clients in
//   `Keep-Alive: timeout=N`, after which well-behaved clients do not reuse it.
// - After the drain timeout, whatever is left is destroyed.
import net from 'node:net';
import type http from 'node:http';
import type { Http2Session } from 'node:http2';
import type { ConnectionsList, HandOffResult } from './handoff';

/** Connections get `Connection: close` in turns over this much of the drain (see the top). */
export const CLOSE_SPREAD_MS = 500;

export interface Tracked {
  server: net.Server;
  /** Open connections, or while `listed` is set only those that Node's list does not have (see track). */
  sockets: Set<net.Socket>;
  sessions: Set<Http2Session>;
  /** Set while draining: answers every request with `Connection: close`. */
  closeEach: ((req: http.IncomingMessage, res: http.ServerResponse) => void) | null;
  /** A live plain HTTP/1 server's own list of its connections (trackLazily), else null. */
  listed: ConnectionsList | null;
}

function add(tracked: Tracked, socket: net.Socket): void {
  if (tracked.sockets.has(socket) || socket.destroyed) return;
  tracked.sockets.add(socket);
  socket.once('close', () => tracked.sockets.delete(socket));
}

/**
 * Remembers every connection (and HTTP/2 session) of `server`, for drain and
 * status: one by one, until trackLazily() hands the common case to Node's
 * own list. Measured with a new connection per request (wrk, CPU time per
 * request side by side with a bare process on one CPU): a Set entry and a
 * 'close' listener per connection cost 4-8%, a listener that returns at
 * once nothing measurable.
 */
export function track(server: net.Server): Tracked {
  const tracked: Tracked = { server, sockets: new Set(), sessions: new Set(), closeEach: null, listed: null };
  server.prependListener('connection', (socket: net.Socket) => {
    // Node's list has what Node accepted on this server (net.js onconnection
    // sets socket.server); not what was handed to the server by
    // emit('connection'): health probes, handed-over connections.
    if (!tracked.listed || (socket as net.Socket & { server?: unknown }).server !== server) add(tracked, socket);
  });
  server.prependListener('session', (session: Http2Session) => {
    tracked.sessions.add(session);
    session.once('close', () => tracked.sessions.delete(session));
  });
  followUpgrades(tracked);
  return tracked;
}

/**
 * Stops tracking each connection of a live plain HTTP/1 server: Node keeps
 * every one with an HTTP parser in the server's connection list
 * (kConnections, lib/_http_server.js), and trackAll() reads it when needed.
 */
export function trackLazily(tracked: Tracked, list: ConnectionsList | null): void {
  tracked.listed = list;
}

/** Back to one by one, with every open connection in `sockets` (drain). */
export function trackAll(tracked: Tracked): void {
  for (const socket of listedSockets(tracked)) add(tracked, socket);
  tracked.listed = null;
}

function listedSockets(tracked: Tracked): net.Socket[] {
  if (!tracked.listed) return [];
  return tracked.listed
    .all()
    .map((parser) => parser.socket)
    .filter((socket): socket is net.Socket => socket !== undefined && socket !== null);
}

/** Open connections, without changing how they are tracked (status). */
export function openSockets(tracked: Tracked): Set<net.Socket> {
  return new Set([...tracked.sockets, ...listedSockets(tracked).filter((s) => !s.destroyed)]);
}

/**
 * An upgraded connection (WebSocket) or a CONNECT tunnel leaves Node's list
 * when its parser is freed (freeParser in lib/_http_common.js), so the
 * socket is taken from the event that hands it to the app. A listener of
 * ours is added only while the app has one for the same event: Node sets
 * req.upgrade only when 'upgrade' has listeners, and destroys a CONNECT
 * request when 'connect' has none (lib/_http_server.js), and that must not
 * change. 'newListener' fires before a listener is added, 'removeListener'
 * after one is removed (lib/events.js).
 */
function followUpgrades(tracked: Tracked): void {
  const { server } = tracked;
  const take = (_req: unknown, socket: net.Socket): void => add(tracked, socket);
  const ours = new Set<string>();
  const events = ['upgrade', 'connect'];
  const follow = (event: string): void => {
    if (ours.has(event)) return;
    ours.add(event);
    server.prependListener(event, take);
  };
  for (const event of events) if (server.listenerCount(event) > 0) follow(event);
  server.on('newListener', (event: string | symbol, listener: unknown) => {
    if (listener !== take && typeof event === 'string' && events.includes(event)) follow(event);
  });
  server.on('removeListener', (event: string | symbol, listener: unknown) => {
    if (listener === take || typeof event !== 'string' || !ours.has(event)) return;
    if (server.listeners(event).every((l) => l === take)) {
      ours.delete(event);
      server.removeListener(event, take);
    }
  });
}

function currentResponse(socket: net.Socket): http.ServerResponse | undefined {
  return (socket as net.Socket & { _httpMessage?: http.ServerResponse })._httpMessage ?? undefined;
}

/** HTTP/1 requests that have arrived on `sockets` (openSockets) and are not answered yet. */
export function countInflight(sockets: Iterable<net.Socket>): number {
  let n = 0;
  for (const socket of sockets) {
    const res = currentResponse(socket);
    if (res && !res.writableFinished) n++;
  }
  return n;
}

/** Hands over the idle ones among the given connections; `settled` once per batch (handoff.ts, handOffIdle bound to its targets). */
export type HandOff = (sockets: Iterable<net.Socket>, settled: (result: HandOffResult) => void) => void;

const idleArmed = new WeakSet<net.Socket>();
const clearsIdleTimeouts = new WeakSet<net.Server>();

/**
 * Closes `socket` after `ms` without a request, until its next request
 * arrives. Node arms keepAliveTimeout itself only after an answer, and on
 * the next request clears only a timeout it armed (keepAliveTimeoutSet in
 * lib/_http_server.js): one set here would stay armed through that request
 * and destroy it if it took longer.
 */
export function idleTimeoutUntilRequest(server: net.Server, socket: net.Socket, ms: number): void {
  if (!clearsIdleTimeouts.has(server)) {
    clearsIdleTimeouts.add(server);
    const clear = (req: http.IncomingMessage): void => {
      if (idleArmed.delete(req.socket)) req.socket.setTimeout((server as net.Server & { timeout?: number }).timeout ?? 0);
    };
    server.prependListener('request', clear);
    // An app that listens for these gets them instead of 'request'. Only then:
    // a listener of ours would stop Node's own `100 Continue` / 417 answer
    // (it emits them when listenerCount > 0, lib/_http_server.js).
    for (const event of ['checkContinue', 'checkExpectation']) if (server.listenerCount(event) > 0) server.prependListener(event, clear);
  }
  idleArmed.add(socket);
  socket.setTimeout(ms);
}

/** While handing over, the connections left are tried again this often, for twice CLOSE_SPREAD_MS. */
const HANDOFF_RETRY_MS = 5;

export interface DrainResult {
  forced: number;
  handedOver: number;
}

/**
 * Stops accepting, then lets connections finish. Resolves with the number
 * force-closed and handed over, or null if stopClosingConnections()
 * cancelled the drain (the process was parked and then made live again).
 */
export async function drainServer(tracked: Tracked, timeoutMs: number, onListenerClosed: () => void, handOff: HandOff | null = null): Promise<DrainResult | null> {
  trackAll(tracked);
  const { server, sockets, sessions } = tracked;
  const httpServer = server as net.Server & { keepAliveTimeout?: number };

  const started = Date.now();
  const spreadMs = Math.min(CLOSE_SPREAD_MS, timeoutMs / 4);
  // Hand-over (handoff.ts): connection i of n may go from i/n of the spread
  // on, as the closes below, so that the new process, whose code is not
  // optimized yet, gets its load in steps rather than all at once (measured
  // under keep-alive load, 32 connections at once: p90 of its first 100 ms
  // 1.8-5 ms, against 0.3 ms later). An idle connection goes when its turn
  // comes; a busy one once its answer is written; the poll below tries
  // every few ms. Only a request that arrives after twice the spread still
  // gets `Connection: close` (on a connection whose client never pauses). A
  // send that fails (the new process has no hand-over socket: TLS, HTTP/2,
  // or it is gone) ends the hand-over, and connections close in turns from
  // then on; without a hand-over, from the start.
  let handedOver = 0;
  let handing = handOff !== null;
  const turn = new Map<net.Socket, number>();
  [...sockets].forEach((socket, i, all) => turn.set(socket, started + (spreadMs * i) / all.length));
  const handUntil = started + 2 * spreadMs;
  // While connections may go, one still here at handUntil gets `Connection:
  // close`; once a send failed, each from its own turn on.
  const closeAt = (socket: net.Socket): number => {
    const at = turn.get(socket);
    return at === undefined ? started : handing ? handUntil : at;
  };
  const closeEach = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    if (Date.now() >= closeAt(req.socket)) res.shouldKeepAlive = false;
    else afterAnswer(res, req.socket);
  };
  tracked.closeEach = closeEach;
  server.prependListener('request', closeEach);
  const attempt = (candidates: Iterable<net.Socket>): void => {
    // Not once the drain is cancelled (parked, then live again).
    if (!handing || !handOff || tracked.closeEach !== closeEach) return;
    const now = Date.now();
    const due = [...candidates].filter((s) => (turn.get(s) ?? started) <= now);
    // Most answers of the spread come from connections whose turn has not
    // come: nothing to do, and no look at the server's connection list.
    if (due.length === 0) return;
    handOff(
      due,
      (r) => {
        handedOver += r.handed;
        if (r.error !== null) handing = false;
      },
    );
  };
  // Between this answer and the client's next request: in the tick of
  // 'finish' (after Node's own listener has detached the response, and the
  // app's), before the loop next reads. Not setImmediate: an answer ended in
  // a timer callback (or the app's own setImmediate) meets the poll phase
  // before the check phase (libuv's uv_run order), and a next request that
  // came meanwhile would be read here first, and answered with `Connection:
  // close` instead of being handed over.
  const afterAnswer = (res: http.ServerResponse, socket: net.Socket): void => {
    if (handing) res.once('finish', () => process.nextTick(() => attempt([socket])));
  };
  const idleMs = Math.max(1, httpServer.keepAliveTimeout || 5000);
  for (const socket of sockets) {
    const res = currentResponse(socket);
    if (res && !res.headersSent && closeAt(socket) === started) res.shouldKeepAlive = false;
    else if (res) afterAnswer(res, socket);
    // Node arms keepAliveTimeout only after a response; a connection that has
    // never carried a request gets the same idle limit here.
    if (!res) idleTimeoutUntilRequest(server, socket, idleMs);
  }
  for (const session of sessions) session.close(); // sends GOAWAY, lets open streams finish

  net.Server.prototype.close.call(server);
  onListenerClosed();

  const deadline = Date.now() + timeoutMs;
  while (sockets.size > 0 || sessions.size > 0) {
    if (tracked.closeEach !== closeEach) return null;
    if (Date.now() >= deadline) {
      const forced = sockets.size + sessions.size;
      for (const session of sessions) session.destroy();
      for (const socket of sockets) socket.destroy();
      return { forced, handedOver };
    }
    // The first try, too, comes after a pause: the set-up above and a first
    // hand-over each run ~1-1.5 ms of code this process has never run (here,
    // 32 connections), and requests that arrive meanwhile are served between
    // the two rather than after both.
    const retrying = handing && Date.now() < handUntil;
    await new Promise((resolve) => setTimeout(resolve, retrying ? HANDOFF_RETRY_MS : 50));
    if (retrying && sockets.size > 0) attempt(sockets);
  }
  return { forced: 0, handedOver };
}

/** Undoes drainServer's request hook, for a parked server that serves again. */
export function stopClosingConnections(tracked: Tracked): void {
  if (tracked.closeEach) tracked.server.removeListener('request', tracked.closeEach);
  tracked.closeEach = null;
}
