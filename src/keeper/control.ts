// The keeper's control socket: HTTP over a unix socket, mode 0600, in the
// app's 0700 run directory. Only the keeper's own uid (or root) may talk to
// it; the peer is checked with SO_PEERCRED on every connection.
import fs from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import { peerCredentials } from '../native';
import type { KeeperStatus } from '../protocol';

export interface ControlHandlers {
  /** With `stats`, the apps are asked for fresh connection counts first (for `status`; it takes a round trip). */
  status(stats: boolean): Promise<KeeperStatus>;
  /** Answers once the phase is one of `phases`, or after timeoutMs: a long poll instead of polling. */
  wait(phases: string[], timeoutMs: number): Promise<KeeperStatus>;
  live(body: Record<string, unknown>): Promise<KeeperStatus>;
  unpark(body: Record<string, unknown>): Promise<KeeperStatus>;
  drain(body: Record<string, unknown>): void;
  stop(): void;
}

function allowed(socket: net.Socket): boolean {
  const fd = (socket as net.Socket & { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return false;
  const { uid } = peerCredentials(fd);
  return uid === process.getuid?.() || uid === 0;
}

async function readBody(req: http.IncomingMessage): Promise<Record<string, unknown>> {
  let text = '';
  for await (const chunk of req) text += chunk;
  return text ? (JSON.parse(text) as Record<string, unknown>) : {};
}

/** With a Content-Length, which the CLI's client needs (src/deploy/keeper-client.ts). */
function reply(res: http.ServerResponse, code: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

export async function serveControl(path: string, handlers: ControlHandlers): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    void (async () => {
      try {
        const body = req.method === 'POST' ? await readBody(req) : {};
        const url = new URL(req.url ?? '/', 'http://keeper');
        switch (`${req.method} ${url.pathname}`) {
          case 'GET /status':
            return reply(res, 200, await handlers.status(url.searchParams.get('stats') === '1'));
          case 'GET /wait': {
            const phases = (url.searchParams.get('phases') ?? '').split(',');
            const timeoutMs = Math.min(60_000, Number(url.searchParams.get('timeoutMs') ?? 5_000));
            return reply(res, 200, await handlers.wait(phases, timeoutMs));
          }
          case 'POST /live':
            return reply(res, 200, await handlers.live(body));
          case 'POST /unpark':
            return reply(res, 200, await handlers.unpark(body));
          case 'POST /drain':
            handlers.drain(body);
            return reply(res, 202, { accepted: true });
          case 'POST /stop':
            reply(res, 202, { accepted: true });
            return handlers.stop();
          default:
            return reply(res, 404, { error: `no such control call: ${req.method} ${req.url}` });
        }
      } catch (err) {
        reply(res, 500, { error: (err as Error).message });
      }
    })();
  });
  server.on('connection', (socket: net.Socket) => {
    if (!allowed(socket)) socket.destroy();
  });
  try {
    fs.unlinkSync(path);
  } catch {
    // no stale socket
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve());
  });
  fs.chmodSync(path, 0o600);
  return server;
}
