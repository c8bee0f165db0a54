// The keep-alive drain of one app server, inside the app process.
//
// Invariant: no request that reached this process is answered with a reset.
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

/** Connections get `Connection: close` in turns over this much of the drain (see the top). */
export const CLOSE_SPREAD_MS = 500;

export interface Tracked {
  server: net.Server;
  sockets: Set<net.Socket>;
  sessions: Set<Http2Session>;
  /** Set while draining: answers every request with `Connection: close`. */
  closeEach: ((req: http.IncomingMessage, res: http.ServerResponse) => void) | null;
}

/** Remembers every connection (and HTTP/2 session) of `server`, for drain and status. */
export function track(server: net.Server): Tracked {
  const tracked: Tracked = { server, sockets: new Set(), sessions: new Set(), closeEach: null };
  server.prependListener('connection', (socket: net.Socket) => {
    tracked.sockets.add(socket);
    socket.once('close', () => tracked.sockets.delete(socket));
  });
  server.prependListener('session', (session: Http2Session) => {
    tracked.sessions.add(session);
    session.once('close', () => tracked.sessions.delete(session));
  });
  return tracked;
}

function currentResponse(socket: net.Socket): http.ServerResponse | undefined {
  return (socket as net.Socket & { _httpMessage?: http.ServerResponse })._httpMessage ?? undefined;
}

/** HTTP/1 requests that have arrived and are not answered yet. */
export function countInflight(tracked: Tracked): number {
  let n = 0;
  for (const socket of tracked.sockets) {
    const res = currentResponse(socket);
    if (res && !res.writableFinished) n++;
  }
  return n;
}

/**
 * Stops accepting, then lets connections finish. Resolves with the number
 * force-closed, or null if stopClosingConnections() cancelled the drain (the
 * process was parked and then made live again).
 */
export async function drainServer(tracked: Tracked, timeoutMs: number, onListenerClosed: () => void): Promise<number | null> {
  const { server, sockets, sessions } = tracked;
  const httpServer = server as net.Server & { keepAliveTimeout?: number };

  const started = Date.now();
  const spreadMs = Math.min(CLOSE_SPREAD_MS, timeoutMs / 4);
  const closeAt = new Map<net.Socket, number>();
  [...sockets].forEach((socket, i, all) => closeAt.set(socket, started + (spreadMs * i) / all.length));
  const closeEach = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    if (Date.now() >= (closeAt.get(req.socket) ?? started)) res.shouldKeepAlive = false;
  };
  tracked.closeEach = closeEach;
  server.prependListener('request', closeEach);
  const idleMs = Math.max(1, httpServer.keepAliveTimeout || 5000);
  for (const socket of sockets) {
    const res = currentResponse(socket);
    if (res && !res.headersSent && closeAt.get(socket) === started) res.shouldKeepAlive = false;
    // Node arms keepAliveTimeout only after a response; a connection that has
    // never carried a request gets the same idle limit here.
    if (!res) socket.setTimeout(idleMs);
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
      return forced;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return 0;
}

/** Undoes drainServer's request hook, for a parked server that serves again. */
export function stopClosingConnections(tracked: Tracked): void {
  if (tracked.closeEach) tracked.server.removeListener('request', tracked.closeEach);
  tracked.closeEach = null;
}
