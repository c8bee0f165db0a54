#!/usr/bin/env node
// The CLI's entry point. A command that may start a release starts its
// keeper first (src/deploy/prestart.ts), so that the keeper's Node start-up
// overlaps the rest of the CLI's; then it loads the commands (src/cli-main.ts).
// In the bundle (scripts/bundle.js) the require() below stays where it is:
// nothing of the commands runs before the keeper is spawned.
import os from 'node:os';
import { prestartKeeper } from './deploy/prestart';

// The CLI serves no traffic: let the live version have the CPU first. Only
// as root, because the keeper this starts inherits the value and must be
// able to return to 0 (see setBootPriority in src/keeper/main.ts).
if (process.getuid?.() === 0) os.setPriority(10);
prestartKeeper(process.argv.slice(2));
// Node >= 22.1 can cache compiled code between runs; a deploy starts three
// Node processes in a row, so start-up time counts.
(require('node:module') as { enableCompileCache?: () => unknown }).enableCompileCache?.();
require('./cli-main');
