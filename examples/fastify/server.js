// Deploy: npx reuse-deploy examples/fastify/server.js --port 8080 --host 127.0.0.1 --health /healthz --env APP_VERSION=v2
// A Fastify 5 app started the usual way, await fastify.listen({ port, host }); reuse-deploy binds
// the deploy port on its own --host, so the host given here does not matter for that port.
const Fastify = require('fastify');

const version = process.env.APP_VERSION || 'v1';
const port = Number(process.env.PORT) || 8080;
const fastify = Fastify({ logger: false });

fastify.get('/healthz', async () => 'ok\n');

fastify.get('/', async (_req, reply) => {
  reply.type('text/plain');
  return `${version} fastify (pid ${process.pid})\n`;
});

async function main() {
  await fastify.listen({ port, host: '::' });
  console.log(`fastify ${version} listening on ${port}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
