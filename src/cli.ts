#!/usr/bin/env node
// The CLI's entry point. A command that may start a release starts its
// keeper first (src/deploy/prestart.ts), so that the keeper's Node start-up
// overlaps the rest of the CLI's; then it loads the commands (src/cli-main.ts).
// In the bundle (scripts/bundle.js) the require() below stays where it is:
// nothing of the commands runs before the keeper is spawned.
import os from 'node:os';
import { prestartKeeper } from './deploy/prestart';
import { CLI_NICE } from './protocol';

// Run as the `reuse-deploy` command, the bundle's /bin/sh line (see
// scripts/bundle.js) started Node without NODE_EXTRA_CA_CERTS, to spare
// Node 20 parsing it: back into the environment it goes, for the app.
if (process.env.REUSE_DEPLOY_CARRIED_CA_CERTS !== undefined) {
  process.env.NODE_EXTRA_CA_CERTS = process.env.REUSE_DEPLOY_CARRIED_CA_CERTS;
  delete process.env.REUSE_DEPLOY_CARRIED_CA_CERTS;
}
// A reader that went away (`reuse-deploy ... | head`, a CI runner that
// stopped streaming the log, a closed terminal) makes writes fail with EPIPE
// or EIO, which Node raises as an uncaught error: the CLI died halfway
// through a deploy and left the new version half-started for the next
// command to repair. The output is lost; the command goes on, and its exit
// code still says how it went.
for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);
prestartKeeper(process.argv.slice(2));
// The CLI serves no traffic: let the live version, and anything else, have
// the CPU first. Only now: a process it started earlier keeps its own nice
// value, and only root may lower one again. Measured with a 1000 req/s load
// generator in the same session as a loop of Node start-ups, p99 was 3.5 ms
// at nice 0, 2.1 ms at 10 and 1.8 ms at 19 (0.9-1.5 ms without them).
try {
  os.setPriority(CLI_NICE);
} catch {
  // e.g. a seccomp profile that refuses setpriority: run as started
}
// Node >= 22.1 can cache compiled code between runs; a deploy starts three
// Node processes in a row, so start-up time counts.
(require('node:module') as { enableCompileCache?: () => unknown }).enableCompileCache?.();
require('./cli-main');
