// The smallest app reuse-deploy can deploy: a plain http server that reads
// its port from PORT and answers with its version. Edit VERSION and deploy
// again to see a zero-downtime replacement.
const http = require('node:http');

const VERSION = 'v1';

const server = http.createServer((req, res) => {
  if (req.url === '/healthz') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('ok\n');
    return;
  }
  res.writeHead(200, { 'content-type': 'text/plain' });
  res.end(`hello from ${VERSION} (pid ${process.pid})\n`);
});

server.listen(Number(process.env.PORT) || 8080, () => {
  console.log(`hello ${VERSION} listening on ${JSON.stringify(server.address())}`);
});
