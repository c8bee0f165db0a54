#!/usr/bin/env node
// Regenerates prebuilds/<platform>-<arch>/ (`npm run prebuildify`): builds the
// addon with `prebuildify --napi --strip` (one Node-API file for every Node
// version), checks that it loads and exports what src/native.ts expects, and
// records which sources it was built from (test/native.test.ts fails when
// native/ or binding.gyp change without a new prebuild).
'use strict';
const { spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const platformArch = `${process.platform}-${process.arch}`;
const outDir = path.join(root, 'prebuilds', platformArch);

/** The functions native/*.cc exports (`exports.Set("name", ...)`). */
function declaredExports() {
  const names = [];
  for (const f of fs.readdirSync(path.join(root, 'native')).filter((f) => f.endsWith('.cc'))) {
    for (const m of fs.readFileSync(path.join(root, 'native', f), 'utf8').matchAll(/exports\.Set\("(\w+)"/g)) names.push(m[1]);
  }
  return names;
}

/** The files a prebuild is made from; their hashes go into prebuilds/<platform>-<arch>/sources.json. */
function sourceHashes() {
  const files = ['binding.gyp', ...fs.readdirSync(path.join(root, 'native')).sort().map((f) => `native/${f}`)];
  return Object.fromEntries(files.map((f) => [f, crypto.createHash('sha256').update(fs.readFileSync(path.join(root, f))).digest('hex')]));
}

function main() {
  const env = { ...process.env };
  // Build against the headers of the Node that runs this (no download): Node-API
  // headers are the same for every version that has NAPI_VERSION 8.
  const headers = path.resolve(process.execPath, '..', '..', 'include', 'node');
  if (!env.npm_config_nodedir && fs.existsSync(path.join(headers, 'node_api.h'))) env.npm_config_nodedir = path.dirname(path.dirname(headers));
  // node-gyp: npm's bundled one when not run through npm (npm puts it on PATH itself).
  if (!env.npm_config_node_gyp) {
    const npmBin = path.join(path.dirname(fs.realpathSync(process.execPath)), '..', 'lib', 'node_modules', 'npm', 'bin', 'node-gyp-bin');
    if (fs.existsSync(npmBin)) env.PATH = `${npmBin}${path.delimiter}${env.PATH ?? ''}`;
  }

  fs.rmSync(outDir, { recursive: true, force: true });
  const prebuildify = require.resolve('prebuildify/bin.js', { paths: [root] });
  const args = [prebuildify, '--napi', '--strip', `--target=${process.versions.node}`];
  console.log(`prebuild: node ${path.relative(root, prebuildify)} ${args.slice(1).join(' ')}`);
  const run = spawnSync(process.execPath, args, { cwd: root, env, stdio: 'inherit' });
  if (run.status !== 0) {
    console.error(`prebuild: prebuildify failed (exit ${run.status ?? run.signal}); it needs python3, make, g++ and strip`);
    process.exit(1);
  }

  const built = fs.readdirSync(outDir).filter((f) => f.endsWith('.node'));
  if (built.length !== 1) throw new Error(`expected one .node file in ${outDir}, found: ${built.join(', ') || 'none'}`);
  const file = path.join(outDir, built[0]);
  const mod = { exports: {} };
  process.dlopen(mod, file);
  const missing = declaredExports().filter((name) => typeof mod.exports[name] !== 'function');
  if (missing.length) throw new Error(`${file} does not export ${missing.join(', ')}`);

  const bytes = fs.readFileSync(file);
  const cxx = spawnSync(process.env.CXX || 'g++', ['--version'], { encoding: 'utf8' });
  const record = {
    file: built[0],
    sha256: crypto.createHash('sha256').update(bytes).digest('hex'),
    builtWith: { node: process.version, napi: 8, compiler: (cxx.stdout || '').split('\n')[0] },
    sources: sourceHashes(),
  };
  fs.writeFileSync(path.join(outDir, 'sources.json'), `${JSON.stringify(record, null, 2)}\n`);
  console.log(`prebuild: ${path.relative(root, file)} (${bytes.length} bytes, sha256 ${record.sha256.slice(0, 16)}…) loads on ${process.version}, exports ${Object.keys(mod.exports).join(', ')}`);
}

if (require.main === module) main();
module.exports = { sourceHashes, declaredExports };
