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
const path = require('node:path');
const esbuild = require('esbuild');

const root = path.resolve(__dirname, '..');

esbuild.buildSync({
  absWorkingDir: root,
  // tsc's CommonJS output, not the TypeScript: every module keeps its own
  // lazy require() order (the CLI spawns the keeper before it loads the
  // rest), and `import fs from 'node:fs'` stays a plain require() instead of
  // esbuild's ESM interop, which copies every export of the module for each
  // importing file (about 5 ms for this CLI).
  entryPoints: ['dist/src/cli.js', 'dist/src/keeper/main.js', 'dist/src/runtime/preload.js'],
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
});
