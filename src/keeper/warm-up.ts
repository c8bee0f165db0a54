// Warming a release's app processes up through their own listener, after
// they accept and before new connections are steered to them (goLive in
// main.ts). The warm-up's connections come from source ports picked here,
// which the steering program sends to this release's socket while every
// other new connection still goes to the live one (native:
// attachSteeringBySource).
//
// Through the listener rather than the private probe socket, so that the
// process serves the warm-up as it serves its clients: on connections its
// own server accepted, after its listen(). (The warm-up went over the probe
// socket before go-live until this was measured.) How the warm-up affects
// the process's cost per request later, in `npm run bench`'s overhead
// measure (8 sets of processes side by side on one CPU):
// - over the probe socket: ~+20% (the README of then);
// - through the listener, 200 pipelined requests: +32% keep-alive, +42% a
//   new connection per request, in 7 of 8 sets. Most of it was Node 20's
//   memory reducer (keeper/apps.ts, defaultNodeArgs);
// - the same without the memory reducer (50 requests): +1.0% and +0.6%;
// - one request per connection (as now): -0.1% and -0.1%.
import { warmUp, type Endpoint } from '../deploy/health';
import type { AppStatus, WarmUpRequest } from '../protocol';

/** Warm-up connections in flight per app process. */
const IN_FLIGHT = 8;

/**
 * Source ports below Linux's default ephemeral range (32768-60999,
 * net.ipv4.ip_local_port_range), so that the host's own outgoing
 * connections seldom hold one (a request from a port that is taken fails,
 * and is not retried). A client elsewhere that happens to connect from one
 * of them during the warm-up reaches the new version a few milliseconds
 * early, which its processes, accepting by then, serve.
 */
const PORTS_FROM = 20_000;
const PORTS_TO = 30_000;

export interface WarmUpPorts {
  first: number;
  last: number;
}

/** One source port per warm-up request: a port is not used twice (the server's side of a closed connection stays in TIME_WAIT). */
export function pickWarmUpPorts(warm: WarmUpRequest, processes: number): WarmUpPorts {
  const count = Math.min(warm.count * processes, PORTS_TO - PORTS_FROM);
  const first = PORTS_FROM + Math.floor(Math.random() * (PORTS_TO - PORTS_FROM - count + 1));
  return { first, last: first + count - 1 };
}

/** A loopback address that reaches a listener bound to `address`. */
function loopbackFor(address: string): string {
  if (address === '0.0.0.0') return '127.0.0.1';
  if (address === '::') return '::1';
  return address;
}

/**
 * `warm.count` requests per app process, one per connection, from the ports
 * of `ports`; returns how many were answered. Each connection goes to
 * whichever process accepts it, so a process gets its share on average.
 */
export async function warmUpThroughPort(address: string, port: number, apps: AppStatus[], warm: WarmUpRequest, ports: WarmUpPorts): Promise<number> {
  const host = loopbackFor(address);
  const endpoints: Endpoint[] = [];
  for (let p = ports.first; p <= ports.last; p++) endpoints.push({ host, port, localPort: p });
  const target = { tls: apps.some((a) => a.tls), h2: apps.some((a) => a.h2) };
  return warmUp(endpoints, target, { path: warm.path, port }, IN_FLIGHT * apps.length);
}
