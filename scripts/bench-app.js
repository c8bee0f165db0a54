'use strict';
// The benchmark's example app: a plain http server that answers every
// request with 200 and a short body naming its version. It reads PORT,
// VERSION and HOST (default 127.0.0.1) from the environment, and works
// bare, under `node --require dist/src/runtime/preload.js`, under a
// reuse-deploy keeper and in PM2 cluster mode. No signal handlers: a
// SIGTERM / SIGINT ends it at once, as it would end most apps.
const http = require('node:http');

const VERSION = process.env.VERSION || 'v0';
const PORT = Number(process.env.PORT) || 8080;
const HOST = process.env.HOST || '127.0.0.1';
const BODY = Buffer.from(`${VERSION}\n`);

const server = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': BODY.length });
  res.end(BODY);
});

server.listen(PORT, HOST);
