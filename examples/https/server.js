// Deploy: npx reuse-deploy examples/https/server.js --port 8443 --host 127.0.0.1 --health /healthz --env APP_VERSION=v2
// A plain node:https server with the self-signed certificate in this folder (CN=localhost,
// for demos and tests only); reuse-deploy health-checks it over TLS.
const fs = require('node:fs');
const https = require('node:https');
const path = require('node:path');

const version = process.env.APP_VERSION || 'v1';
const port = Number(process.env.PORT) || 8443;

const server = https.createServer(
  {
    key: fs.readFileSync(path.join(__dirname, 'key.pem')),
    cert: fs.readFileSync(path.join(__dirname, 'cert.pem')),
  },
  (req, res) => {
    res.setHeader('content-type', 'text/plain');
    if (req.url === '/healthz') {
      res.writeHead(200);
      res.end('ok\n');
      return;
    }
    res.end(`${version} https (pid ${process.pid})\n`);
  },
);

server.listen(port, () => {
  console.log(`https ${version} listening on ${port}`);
});
