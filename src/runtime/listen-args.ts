// Reads the many shapes of net.Server#listen() arguments, as far as the
// runtime needs to know whether a call is for the deploy port.
// Shapes: (port, host?, backlog?, cb?), (options, cb?), (path, cb?), (handle, cb?).

export interface ListenCall {
  port: number | null;
  host: string | undefined;
  backlog: number | undefined;
  callback: (() => void) | undefined;
}

export function parseListenArgs(args: unknown[]): ListenCall {
  const rest = [...args];
  const callback = typeof rest[rest.length - 1] === 'function' ? (rest.pop() as () => void) : undefined;
  const [first, second, third] = rest;
  const call: ListenCall = { port: null, host: undefined, backlog: undefined, callback };

  if (first !== null && typeof first === 'object') {
    const o = first as { port?: unknown; host?: unknown; backlog?: unknown; path?: unknown; fd?: unknown; _handle?: unknown };
    if (o.path !== undefined || o.fd !== undefined || o._handle !== undefined) return call;
    call.port = toPort(o.port);
    call.host = typeof o.host === 'string' ? o.host : undefined;
    call.backlog = typeof o.backlog === 'number' ? o.backlog : undefined;
    return call;
  }
  if (typeof first === 'string' && !/^\d+$/.test(first)) return call; // a unix socket path
  call.port = first === undefined ? 0 : toPort(first);
  if (typeof second === 'string') {
    call.host = second;
    if (typeof third === 'number') call.backlog = third;
  } else if (typeof second === 'number') {
    call.backlog = second;
  }
  return call;
}

function toPort(value: unknown): number | null {
  if (value === undefined || value === null) return 0;
  const n = typeof value === 'string' ? Number(value) : value;
  return typeof n === 'number' && Number.isInteger(n) && n >= 0 && n < 65536 ? n : null;
}
