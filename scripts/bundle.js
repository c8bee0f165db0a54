#!/usr/bin/env node
// Second step of `npm run build`, after tsc: bundles each of the three
// entry points into one file, in place of tsc's output for it.
//
//   src/cli.ts             -> dist/src/cli.js            the CLI
//   src/keeper/main.ts     -> dist/src/keeper/main.js    the keeper of a release
//   src/runtime/preload.ts -> dist/src/runtime/preload.js loaded by every app process
//
// A deploy starts three Node processes one after the other, and each loads
// one of these; resolving and reading thirty files is a measurable part of
// each start-up (see "Where the time of a deploy goes" in the README). The
// other files of dist/ stay as tsc wrote them (the tests import them one by
// one). Paths to the package's own files come from src/package-files.ts,
// which works in both layouts. Type checking stays with tsc.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const esbuild = require('esbuild');

const root = path.resolve(__dirname, '..');

const common = {
  absWorkingDir: root,
  // tsc's CommonJS output, not the TypeScript: every module keeps its own
  // lazy require() order (the CLI spawns the keeper before it loads the
  // rest), and `import fs from 'node:fs'` stays a plain require() instead of
  // esbuild's ESM interop, which copies every export of the module for each
  // importing file (about 5 ms for this CLI).
  outbase: 'dist/src',
  outdir: 'dist/src',
  allowOverwrite: true,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  // ora is ESM and loaded with import() on a TTY only; it stays a package.
  external: ['ora'],
  sourcemap: 'linked',
  logLevel: 'warning',
};

esbuild.buildSync({ ...common, entryPoints: ['dist/src/keeper/main.js', 'dist/src/runtime/preload.js'] });

// The CLI is the package's `reuse-deploy` command. As a command it starts
// with /bin/sh, which runs the line below and replaces itself with Node (one
// exec, no other process); to Node that line is a string and a comment. On
// the way it takes NODE_EXTRA_CA_CERTS out of Node's environment: Node 20
// parses that bundle at every start-up (~30 ms here), and the CLI makes no
// TLS connection that needs it. src/cli.ts puts it back into process.env at
// once, so the app gets it (src/deploy/prestart.ts). `node dist/src/cli.js`
// skips the line and works as well, paying the start-up cost.
const SH_LINE = `':' //; [ -z "\${NODE_EXTRA_CA_CERTS+set}" ] || { REUSE_DEPLOY_CARRIED_CA_CERTS=$NODE_EXTRA_CA_CERTS; export REUSE_DEPLOY_CARRIED_CA_CERTS; unset NODE_EXTRA_CA_CERTS; }; exec node "$0" "$@"`;
const cli = path.join(root, 'dist', 'src', 'cli.js');
fs.writeFileSync(cli, fs.readFileSync(cli, 'utf8').replace(/^#!.*\n/, '#!/bin/sh\n'));
esbuild.buildSync({ ...common, entryPoints: ['dist/src/cli.js'], banner: { js: SH_LINE } });
fs.chmodSync(cli, 0o755);
