// The hand-over receiver's all-or-none rule (src/runtime/handoff.ts,
// openAll), on real TCP connections: the sender destroys its copies of a
// whole message once acknowledged, so a receiver that cannot open every
// descriptor must open none, close its copies and leave the connections,
// untouched, to the sender. And the sender's rule that it takes only a
// connection that is reading (handOffIdle), on a real http server.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import * as native from '../src/native';
import { handOffIdle, openAll, type HandOffResult } from '../src/runtime/handoff';
import { waitUntil } from './helpers';

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
  const fd = native.dupFd((served as net.Socket & { _handle: { fd: number } })._handle.fd);
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

describe('hand-over sender: only a connection that is reading', () => {
  const REQUEST = 'GET / HTTP/1.1\r\nHost: t\r\n\r\n';
  /** Where no process listens: every send fails, as to a new process that has gone. */
  const nowhere = path.join(os.tmpdir(), `rd-handoff-nowhere-${process.pid}.sock`);
  let web: http.Server;
  const served: net.Socket[] = [];
  const webClients: net.Socket[] = [];

  before(async () => {
    web = http.createServer((_req, res) => res.end('ok'));
    web.on('connection', (s: net.Socket) => served.push(s));
    await new Promise<void>((resolve) => web.listen(0, '127.0.0.1', resolve));
  });
  after(() => {
    for (const s of [...served, ...webClients]) s.destroy();
    web.close();
  });

  /** A keep-alive connection that has had one answer; its server side. */
  async function answeredOnce(): Promise<{ client: net.Socket; socket: net.Socket; answers: string[] }> {
    const client = net.connect((web.address() as net.AddressInfo).port, '127.0.0.1');
    webClients.push(client);
    const answers: string[] = [];
    client.on('data', (d) => answers.push(String(d)));
    client.write(REQUEST);
    await waitUntil(() => answers.length > 0, 5_000, 'the first answer');
    return { client, socket: served[served.length - 1]!, answers };
  }

  test('one the app paused is not sent, and stays paused: a request waits for the app to resume it', async () => {
    const c = await answeredOnce();
    c.socket.pause();
    const settled: HandOffResult[] = [];
    handOffIdle(native, web, [c.socket], () => nowhere, (r) => settled.push(r));
    assert.deepEqual(settled, [], 'not tried');
    c.client.write(REQUEST);
    await sleep(200);
    assert.equal(c.answers.length, 1, 'not read while paused');
    c.socket.resume();
    await waitUntil(() => c.answers.length > 1, 5_000, 'the answer once resumed');
    assert.match(c.answers[1]!, /^HTTP\/1\.1 200 /);
  });

  test('one that is reading is tried; the send fails, and it is served here again', async () => {
    const c = await answeredOnce();
    const settled: HandOffResult[] = [];
    handOffIdle(native, web, [c.socket], () => nowhere, (r) => settled.push(r));
    assert.equal(settled.length, 1);
    assert.equal(settled[0]!.handed, 0);
    assert.ok(settled[0]!.error, 'the failed send is reported');
    c.client.write(REQUEST);
    await waitUntil(() => c.answers.length > 1, 5_000, 'the answer from this process');
    assert.match(c.answers[1]!, /^HTTP\/1\.1 200 /);
  });
});
