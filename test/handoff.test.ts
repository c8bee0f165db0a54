// The hand-over receiver's all-or-none rule (src/runtime/handoff.ts,
// openAll), on real TCP connections: the sender destroys its copies of a
// whole message once acknowledged, so a receiver that cannot open every
// descriptor must open none, close its copies and leave the connections,
// untouched, to the sender.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { dupFd } from '../src/native';
import { openAll } from '../src/runtime/handoff';

let server: net.Server;
const accepted: net.Socket[] = [];
const clients: net.Socket[] = [];

before(async () => {
  server = net.createServer((s) => accepted.push(s));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
});
after(() => {
  for (const s of [...accepted, ...clients]) s.destroy();
  server.close();
});

/** A connected pair; `fd` is a duplicate of the server side's descriptor, as a receiver gets one. */
async function connection(): Promise<{ client: net.Socket; served: net.Socket; fd: number }> {
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  clients.push(client);
  const n = accepted.length;
  await new Promise<void>((resolve) => client.once('connect', () => resolve()));
  while (accepted.length === n) await new Promise((resolve) => setImmediate(resolve));
  const served = accepted[accepted.length - 1]!;
  const fd = dupFd((served as net.Socket & { _handle: { fd: number } })._handle.fd);
  return { client, served, fd };
}

function isOpen(fd: number): boolean {
  try {
    fs.fstatSync(fd);
    return true;
  } catch {
    return false;
  }
}

/** The sender's side still owns the connection: a request written now reaches it, and its answer the client. */
async function stillServed(c: { client: net.Socket; served: net.Socket }): Promise<void> {
  const got = new Promise<string>((resolve) => c.served.once('data', (d) => resolve(String(d))));
  c.client.write('ping');
  assert.equal(await got, 'ping');
  const back = new Promise<string>((resolve) => c.client.once('data', (d) => resolve(String(d))));
  c.served.write('pong');
  assert.equal(await back, 'pong');
}

describe('hand-over receiver: all of a message or none', () => {
  test('a message the kernel cut short: none is opened, every copy is closed, the connections stay with the sender', async () => {
    const conns = [await connection(), await connection()];
    const logs: string[] = [];
    assert.equal(openAll(conns.map((c) => c.fd), true, (m) => logs.push(m)), null);
    for (const c of conns) assert.equal(isOpen(c.fd), false, `copy ${c.fd} closed`);
    assert.match(logs.join('\n'), /refused, the old version serves them on: the kernel cut the message short/);
    for (const c of conns) await stillServed(c);
  });

  test('one descriptor that cannot be opened: the sockets already opened are closed again, and the connections stay with the sender', async () => {
    const conns = [await connection(), await connection()];
    const file = fs.openSync(__filename, 'r'); // not a socket: net.Socket refuses it
    const logs: string[] = [];
    assert.equal(openAll([conns[0]!.fd, file, conns[1]!.fd], false, (m) => logs.push(m)), null);
    for (const fd of [conns[0]!.fd, file, conns[1]!.fd]) assert.equal(isOpen(fd), false, `copy ${fd} closed`);
    assert.match(logs.join('\n'), /a connection could not be opened/);
    for (const c of conns) await stillServed(c);
  });

  test('a whole message: every descriptor is opened, and nothing is logged', async () => {
    const conns = [await connection(), await connection()];
    const logs: string[] = [];
    const sockets = openAll(conns.map((c) => c.fd), false, (m) => logs.push(m));
    assert.equal(sockets?.length, 2);
    assert.deepEqual(logs, []);
    for (const s of sockets!) s.destroy();
  });
});
