// Deploy: npx reuse-deploy examples/esm/server.mjs --port 8080 --host 127.0.0.1 --health /healthz --env APP_VERSION=v2
// An ES module server that awaits listen() with top-level await: the await resolves at go-live.
import { createServer } from 'node:http';
import { once } from 'node:events';

const version = process.env.APP_VERSION ?? 'v1';
const port = Number(process.env.PORT) || 8080;

const server = createServer((req, res) => {
  res.setHeader('content-type', 'text/plain');
  if (req.url === '/healthz') {
    res.writeHead(200);
    res.end('ok\n');
    return;
  }
  res.end(`${version} esm (pid ${process.pid})\n`);
});

server.listen(port);
await once(server, 'listening');
console.log(`esm ${version} listening on ${port}`);
