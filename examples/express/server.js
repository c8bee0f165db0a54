// Deploy: npx reuse-deploy examples/express/server.js --port 8080 --host 127.0.0.1 --health /healthz --env APP_VERSION=v2
// An Express 5 app started the usual way, app.listen(port, cb); reuse-deploy gives it PORT.
const express = require('express');

const version = process.env.APP_VERSION || 'v1';
const port = Number(process.env.PORT) || 8080;
const app = express();

app.get('/healthz', (_req, res) => {
  res.status(200).type('text/plain').send('ok\n');
});

app.get('/', (_req, res) => {
  res.type('text/plain').send(`${version} express (pid ${process.pid})\n`);
});

app.listen(port, () => {
  console.log(`express ${version} listening on ${port}`);
});
