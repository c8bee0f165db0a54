// Who listens on a TCP port: from the kernel's socket diagnostics (netlink,
// see tcpListeners in native/), else from /proc/net/tcp and /proc/net/tcp6
// (tcp4_seq_show / tcp6_seq_show), where listening sockets are state 0A and
// addresses are printed as the raw in-kernel words in host byte order.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { tcpListeners } from '../native';

export interface Listener {
  address: string;
  port: number;
  uid: number;
  inode: number;
  /** Listen queue length: rx_queue column, sk_ack_backlog for a listener. */
  queued: number;
}

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

// One line of /proc/net/tcp{,6}, matched only for listeners (st 0A):
//   sl: local_address:port rem_address:port st tx_queue:rx_queue tr:when retrnsmt uid timeout inode
// The file lists every socket of the namespace, connections included, so a
// busy server has tens of thousands of lines; the regex skips all but the
// listeners on one port without splitting any line.
function listenerLine(portHex: string): RegExp {
  return new RegExp(`^\\s*\\d+: ([0-9A-F]+):${portHex} [0-9A-F]+:[0-9A-F]{4} 0A [0-9A-F]+:([0-9A-F]+) \\S+ \\S+\\s+(\\d+)\\s+\\d+ (\\d+)`, 'gm');
}

function readTable(file: string, port: number): Listener[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'latin1');
  } catch {
    return [];
  }
  const out: Listener[] = [];
  const portHex = port.toString(16).toUpperCase().padStart(4, '0');
  for (const m of text.matchAll(listenerLine(portHex))) {
    out.push({ address: decodeAddress(m[1]!), port, uid: Number(m[3]), inode: Number(m[4]), queued: parseInt(m[2]!, 16) });
  }
  return out;
}

/** Every listening TCP socket on `port` in this network namespace. */
export function listenersOn(port: number): Listener[] {
  let diag: ReturnType<typeof tcpListeners> = null;
  try {
    diag = tcpListeners(port);
  } catch {
    // no addon (doctor reports that): /proc still works
  }
  if (diag) return diag.map((l) => ({ address: normalizeAddress(l.address), port, uid: l.uid, inode: l.inode, queued: l.queued }));
  return procListenersOn(port);
}

/** The same, from /proc/net/tcp{,6} only: the fallback where netlink is refused. */
export function procListenersOn(port: number): Listener[] {
  return [...readTable('/proc/net/tcp', port), ...readTable('/proc/net/tcp6', port)];
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
