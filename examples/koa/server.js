// Deploy: npx reuse-deploy examples/koa/server.js --port 8080 --host 127.0.0.1 --health /healthz --env APP_VERSION=v2
// A Koa 3 app started the usual way, app.listen(port); reuse-deploy gives it PORT.
const Koa = require('koa');

const version = process.env.APP_VERSION || 'v1';
const port = Number(process.env.PORT) || 8080;
const app = new Koa();

app.use(async (ctx) => {
  if (ctx.path === '/healthz') {
    ctx.status = 200;
    ctx.body = 'ok\n';
    return;
  }
  if (ctx.path === '/') {
    ctx.type = 'text/plain';
    ctx.body = `${version} koa (pid ${process.pid})\n`;
  }
  // anything else: Koa answers 404
});

app.listen(port);
console.log(`koa ${version} listening on ${port}`);
