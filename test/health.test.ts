// The CLI's health probe (src/deploy/health.ts, one GET written and read
// over node:net) against node:http's server and against raw servers that
// answer in every framing HTTP/1.1 allows, in pieces, or badly.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { probe, type ProbeResult } from '../src/deploy/health';
import { rawServer } from './helpers';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rd-health-'));
const servers: net.Server[] = [];
after(() => {
  for (const server of servers) server.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const plain = { tls: false, h2: false };
const rule = { path: '/healthz', port: 8080 };

/** Probes a raw server that answers with `parts`. */
async function probeRaw(name: string, parts: string[] | null, options: { keepOpen?: boolean; timeoutMs?: number } = {}): Promise<ProbeResult> {
  const socketPath = path.join(dir, name);
  servers.push(await rawServer(socketPath, parts, options.keepOpen));
  return probe(socketPath, plain, rule, options.timeoutMs ?? 5_000);
}

describe('health probe', () => {
  test("node:http's server sees one GET of the health path, and its chunked answer is read", async () => {
    const socketPath = path.join(dir, 'node-http.sock');
    const seen: http.IncomingHttpHeaders[] = [];
    const server = http.createServer((req, res) => {
      seen.push({ ...req.headers, method: req.method, url: req.url });
      res.writeHead(503, { 'content-type': 'text/plain' });
      res.write('database '); // a write before end(): chunked
      setTimeout(() => res.end('unreachable'), 5);
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    assert.deepEqual(await probe(socketPath, plain, rule, 5_000), { status: 503, bodyStart: 'database unreachable', error: null });
    assert.deepEqual(seen, [{ method: 'GET', url: '/healthz', host: 'localhost:8080', 'user-agent': 'reuse-deploy-health', connection: 'close' }]);
  });

  test('an answer framed by Content-Length is complete without the server closing', async () => {
    const r = await probeRaw('length.sock', ['HTTP/1.1 200 OK\r\nContent-Len', 'gth: 2\r\n\r\no', 'k'], { keepOpen: true });
    assert.deepEqual(r, { status: 200, bodyStart: 'ok', error: null });
  });

  test('a chunked answer in pieces, split inside chunk sizes and data, with a chunk extension', async () => {
    const r = await probeRaw('chunked.sock', ['HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nfi', 'ne\r\n', '5;ext=1\r', '\n, tha\r\n6\r\nnk you\r\n0\r\n\r\n'], { keepOpen: true });
    assert.deepEqual(r, { status: 200, bodyStart: 'fine, thank you', error: null });
  });

  test('interim 1xx answers are skipped; a 204 ends with its head', async () => {
    const r = await probeRaw('early-hints.sock', ['HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n', 'HTTP/1.1 204 No Content\r\n\r\n'], { keepOpen: true });
    assert.deepEqual(r, { status: 204, bodyStart: '', error: null });
  });

  test('an answer without framing ends with the connection (HTTP/1.0)', async () => {
    const r = await probeRaw('close.sock', ['HTTP/1.0 500 Internal Server Error\r\n\r\nout of ', 'memory']);
    assert.deepEqual(r, { status: 500, bodyStart: 'out of memory', error: null });
  });

  test('bodyStart keeps the first 200 characters of a long body', async () => {
    const body = 'x'.repeat(100_000);
    const r = await probeRaw('long.sock', [`HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n\r\n`, body]);
    assert.equal(r.status, 200);
    assert.equal(r.bodyStart, 'x'.repeat(200));
  });

  test('what is not an HTTP answer is reported with its first bytes', async () => {
    // The server keeps the connection open: its first bytes are enough.
    const r = await probeRaw('ssh.sock', ['SSH-2.0-OpenSSH_9.6\r\n'], { keepOpen: true });
    assert.equal(r.status, null);
    assert.match(r.error ?? '', /something other than HTTP\/1\.1: "SSH-2\.0-OpenSSH_9\.6/);
  });

  test('a connection closed in the middle of the answer is an error, not a pass', async () => {
    const short = await probeRaw('short.sock', ['HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc']);
    assert.deepEqual(short, { status: null, bodyStart: '', error: 'the app closed the connection after 3 of 10 bytes of its answer' });
    const unchunked = await probeRaw('short-chunked.sock', ['HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n']);
    assert.equal(unchunked.status, null);
    assert.match(unchunked.error ?? '', /middle of a chunked answer/);
    const headless = await probeRaw('headless.sock', ['HTTP/1.1 200 OK\r\ncontent-']);
    assert.deepEqual(headless, { status: null, bodyStart: '', error: 'the app closed the connection before a complete answer' });
    const garbled = await probeRaw('garbled.sock', ['HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n'], { keepOpen: true });
    assert.deepEqual(garbled, { status: null, bodyStart: '', error: 'the app\'s chunked answer has a malformed chunk size: "zz"' });
    const silent = await probeRaw('silent.sock', []);
    assert.deepEqual(silent, { status: null, bodyStart: '', error: 'the app closed the connection before a complete answer' });
  });

  test('no answer: ETIMEDOUT after timeoutMs', async () => {
    const r = await probeRaw('mute.sock', null, { timeoutMs: 200 });
    assert.deepEqual(r, { status: null, bodyStart: '', error: 'ETIMEDOUT: no answer within 200 ms' });
  });

  test('no server: the connect error', async () => {
    const r = await probe(path.join(dir, 'nobody.sock'), plain, rule, 1_000);
    assert.equal(r.status, null);
    assert.match(r.error ?? '', /^ENOENT/);
  });
});
