// Steering new connections away from older listeners in the port's
// reuseport group, so that they can be closed without resetting anything.
//
// Kernel facts this relies on (net/core/sock_reuseport.c):
// - sockets are numbered in the order they join the group, which is at
//   listen() (reuseport_add_sock from inet_csk_listen_start);
// - reuseport_select_sock runs the group's program and uses its return value
//   as an index; an index >= num_socks falls back to hash selection;
// - when a socket leaves (reuseport_detach_sock), the last socket is moved
//   into its slot.
// So the newest listener is always index (members - 1) at the moment it
// joins. A program returning that index sends every new connection to it.
// A release alone in the group keeps `ret 0` (attached at its go-live if it
// was alone then, by holdWhenAlone once it is): that keeps every new
// connection on it even after a newer release's listen(). A program
// attached before listen() is lost when the socket joins the group
// (reuseport_add_sock frees the socket's own group), so the newcomer cannot
// bring one; without the live release's, the kernel's hash sent some
// connections to the newcomer between its listen() and its own attach (a
// few microseconds), before its apps accepted. The group is still without
// a program after giveBackToPeers' 'hash' case, beside a listener of no
// known release that came first, or behind a release started by a version
// before this one: there the gap remains (those connections wait for the
// new apps to accept; a go-live that backs out resets them).
import { attachSteering, detachSteering } from '../native';
import { groupMembers, socketInodesOf } from '../sys/proc-net';

export interface Steering {
  index: number;
  groupSize: number;
  /** Members that belong to no process the deployer told us about. */
  unknown: number;
}

/** Members of the group other than our own socket, before we join. */
export function countPeers(address: string, port: number, ownInode: number): number {
  return groupMembers(address, port).filter((l) => l.inode !== ownInode).length;
}

/**
 * Attaches `ret index` through our socket, which must already be listening
 * (attached to a bound-only socket, the program would give it a group of its own).
 */
export function steerToSelf(fd: number, address: string, port: number, ownInode: number, peersBefore: number, knownPids: number[]): Steering {
  const members = groupMembers(address, port);
  const known = new Set<number>([ownInode]);
  for (const pid of knownPids) for (const inode of socketInodesOf(pid)) known.add(inode);
  const unknown = members.filter((l) => !known.has(l.inode)).length;
  attachSteering(fd, peersBefore);
  return { index: peersBefore, groupSize: members.length, unknown };
}

/**
 * Attaches `ret 0` through our socket, which must already be listening.
 * With one peer before us, that peer is index 0 and we are index 1, so every
 * new connection still goes to the peer while our app processes start to
 * accept; steerToSelf replaces the program (reuseport_attach_prog swaps
 * it). Alone, index 0 is us, and a newer release that joins (index 1) gets
 * nothing until it steers to itself.
 */
export function steerToFirst(fd: number): void {
  attachSteering(fd, 0);
}

/**
 * Undoes steerToSelf for a release stopped right after its go-live, while
 * the release before it still serves (the deploy failed before it told
 * that one to drain): new connections go back to the members that were
 * there before us, so that none waits in our queue when we leave the group
 * (that would reset it, without net.ipv4.tcp_migrate_req). With one peer
 * it is index 0 and we are index 1: `ret 0`. With more, the program is
 * removed and the kernel's hash picks among all members, ours included:
 * 'hash' tells the caller to warn.
 */
export function giveBackToPeers(fd: number, address: string, port: number, steering: Steering): 'peer' | 'hash' {
  if (steering.index === 1 && groupMembers(address, port).length === 2) {
    steerToFirst(fd);
    return 'peer';
  }
  detachSteering(fd);
  return 'hash';
}

/**
 * Polls the group until our socket is its only member, then replaces the
 * program by steerToFirst's `ret 0` and calls `done`. Stops without
 * replacing if the group grows (a newer release now owns the program) or
 * when `stillOpen` turns false. The group has one program, whoever attached
 * it, so the CLI makes a new release join only after this has finished
 * (cutover.ts, waitPortSettled): otherwise a late `ret 0` could replace the
 * newer release's program and steer everything back to us.
 */
export function holdWhenAlone(
  fd: number,
  address: string,
  port: number,
  groupSize: number,
  stillOpen: () => boolean,
  log: (m: string) => void,
  done: () => void,
): void {
  const timer = setInterval(() => {
    if (!stillOpen()) return clearInterval(timer);
    const n = groupMembers(address, port).length;
    if (n > groupSize) return clearInterval(timer);
    if (n <= 1) {
      clearInterval(timer);
      try {
        steerToFirst(fd);
        log('older listeners are gone; new connections stay here until a newer release steers them to itself');
      } catch (err) {
        log(`could not replace the steering program: ${(err as Error).message}`);
      }
      done();
    }
  }, 25); // netlink answers in ~50 µs (sys/proc-net.ts); the next deploy's go-live waits for this
  timer.unref();
}
