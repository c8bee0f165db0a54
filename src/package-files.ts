// Where this package's own files are, for the bundled and the unbundled build.
//
// `npm run build` compiles every module with tsc, then esbuild bundles the
// three entry points (src/cli.ts, src/keeper/main.ts, src/runtime/preload.ts)
// each into one file in place of tsc's output (scripts/bundle.js): every
// deploy starts three Node processes in a row, and one file loads faster than
// thirty. Inside a bundle, __dirname is the entry's directory, not the
// module's, so paths start from the package root instead: the nearest
// directory up from here that holds binding.gyp.
import fs from 'node:fs';
import path from 'node:path';

function findPackageRoot(from: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'binding.gyp'))) return dir;
    if (path.dirname(dir) === dir) return path.resolve(__dirname, '..', '..'); // the unbundled layout, dist/src/<this file>
  }
}

export const packageRoot = findPackageRoot(__dirname);

/** The keeper's entry point (src/keeper/main.ts). */
export const KEEPER_MAIN = path.join(packageRoot, 'dist', 'src', 'keeper', 'main.js');

/** The runtime every app process loads with --require (src/runtime/preload.ts). */
export const PRELOAD = path.join(packageRoot, 'dist', 'src', 'runtime', 'preload.js');

/** The package's package.json. */
export const PACKAGE_JSON = path.join(packageRoot, 'package.json');
