// Binds the deploy socket before the app starts, and turns the kernel's
// refusals into errors that say whose socket is in the way.
import fs from 'node:fs';
import { bindReusePort, type SystemError } from '../native';
import { listenersOn, ownersOf } from '../sys/proc-net';

export interface BindFailure {
  code: 'RD_ERR_PORT_TAKEN' | 'RD_ERR_PORT_OTHER_USER' | 'RD_ERR_PORT_PRIVILEGED' | 'RD_ERR_ADDRESS';
  message: string;
}

export interface Bound {
  fd: number;
  address: string;
}

/** Binds host:port with SO_REUSEPORT, without listening. '::' falls back to 0.0.0.0 where IPv6 is off. */
export function bindDeploySocket(host: string, port: number): Bound | BindFailure {
  try {
    return { fd: bindReusePort(host, port), address: host };
  } catch (err) {
    const e = err as SystemError;
    if (host === '::' && (e.code === 'EAFNOSUPPORT' || e.code === 'EADDRNOTAVAIL')) return bindDeploySocket('0.0.0.0', port);
    return explain(e, host, port);
  }
}

function describeOwners(inode: number): string {
  const owners = ownersOf(inode);
  if (owners.length === 0) return 'a process this user cannot see (look with `ss -ltnp`)';
  return owners.map((o) => `pid ${o.pid} (${o.command.slice(0, 120)})`).join(', ');
}

function unprivilegedPortStart(): number {
  try {
    return Number(fs.readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8').trim());
  } catch {
    return 1024;
  }
}

function explain(e: SystemError, host: string, port: number): BindFailure {
  if (e.code === 'EACCES') {
    return {
      code: 'RD_ERR_PORT_PRIVILEGED',
      message:
        `Port ${port} is below net.ipv4.ip_unprivileged_port_start (${unprivilegedPortStart()}) and this user may not bind it. ` +
        `Give node the capability (sudo setcap cap_net_bind_service=+ep "$(readlink -f "$(which node)")"), ` +
        `add AmbientCapabilities=CAP_NET_BIND_SERVICE to the systemd unit, ` +
        `or lower the limit (sudo sysctl net.ipv4.ip_unprivileged_port_start=${port}).`,
    };
  }
  if (e.code === 'EADDRNOTAVAIL' || e.code === 'EAFNOSUPPORT') {
    return { code: 'RD_ERR_ADDRESS', message: `Cannot bind ${host}:${port}: ${e.message}. Is ${host} an address of this machine? Use --host.` };
  }
  if (e.code === 'EADDRINUSE') {
    const uid = process.getuid?.() ?? -1;
    const holders = listenersOn(port);
    const foreign = holders.find((l) => l.uid !== uid);
    if (foreign) {
      return {
        code: 'RD_ERR_PORT_OTHER_USER',
        message:
          `Port ${port} is held by uid ${foreign.uid}: ${describeOwners(foreign.inode)}. The kernel lets only sockets of the ` +
          `same effective uid share a port with SO_REUSEPORT, so the new version cannot join it as uid ${uid}. ` +
          `Run reuse-deploy as uid ${foreign.uid}, or stop that process first.`,
      };
    }
    const holder = holders[0];
    return {
      code: 'RD_ERR_PORT_TAKEN',
      message:
        `Port ${port} is already in use by a socket without SO_REUSEPORT` +
        (holder ? `: ${describeOwners(holder.inode)}` : '') +
        `. Stop that process (or let reuse-deploy start the app in its place), or choose another --port.`,
    };
  }
  return { code: 'RD_ERR_ADDRESS', message: `Cannot bind ${host}:${port}: ${e.message}` };
}

export function isBindFailure(r: Bound | BindFailure): r is BindFailure {
  return 'code' in r;
}
