// Who listens on a TCP port, read from /proc/net/tcp and /proc/net/tcp6
// (tcp4_seq_show / tcp6_seq_show). Listening sockets are state 0A. The
// address is printed as the raw in-kernel words in host byte order.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';

export interface Listener {
  address: string;
  port: number;
  uid: number;
  inode: number;
  /** Listen queue length: rx_queue column, sk_ack_backlog for a listener. */
  queued: number;
}

const LISTEN = '0A';

function decodeAddress(hex: string): string {
  const bytes = Buffer.from(hex, 'hex');
  // Each 32-bit word is printed in host order; undo that on little-endian hosts.
  if (os.endianness() === 'LE') for (let i = 0; i < bytes.length; i += 4) bytes.subarray(i, i + 4).reverse();
  if (bytes.length === 4) return Array.from(bytes).join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
  return normalizeAddress(groups.join(':'));
}

/** Canonical text for an IP address, so that '::0' and '::' compare equal. */
export function normalizeAddress(address: string): string {
  if (net.isIPv4(address)) return address;
  const sock = new net.SocketAddress({ address, family: 'ipv6' });
  return sock.address;
}

function readTable(file: string): Listener[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  const out: Listener[] = [];
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10 || f[3] !== LISTEN) continue;
    const [addrHex, portHex] = f[1]!.split(':') as [string, string];
    out.push({
      address: decodeAddress(addrHex),
      port: parseInt(portHex, 16),
      uid: Number(f[7]),
      inode: Number(f[9]),
      queued: parseInt(f[4]!.split(':')[1]!, 16),
    });
  }
  return out;
}

/** Every listening TCP socket on `port` in this network namespace. */
export function listenersOn(port: number): Listener[] {
  return [...readTable('/proc/net/tcp'), ...readTable('/proc/net/tcp6')].filter((l) => l.port === port);
}

/** Listening sockets that share one reuseport group with a socket bound to address:port. */
export function groupMembers(address: string, port: number): Listener[] {
  const want = normalizeAddress(address);
  return listenersOn(port).filter((l) => l.address === want);
}

/** The inodes of the sockets that process `pid` holds open (needs same uid or root). */
export function socketInodesOf(pid: number): Set<number> {
  const inodes = new Set<number>();
  let fds: string[];
  try {
    fds = fs.readdirSync(`/proc/${pid}/fd`);
  } catch {
    return inodes;
  }
  for (const fd of fds) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(Number(m[1]));
    } catch {
      // fd closed meanwhile
    }
  }
  return inodes;
}

export interface SocketOwner {
  pid: number;
  command: string;
}

/** Processes holding a socket inode, as far as /proc lets this user see. */
export function ownersOf(inode: number): SocketOwner[] {
  const owners: SocketOwner[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (!socketInodesOf(pid).has(inode)) continue;
    let command = '?';
    try {
      command = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' ');
    } catch {
      // gone
    }
    owners.push({ pid, command });
  }
  return owners;
}
