// V8's bytecode flushing, turned off in each app process on Node 20 and 22.
//
// V8 throws away the bytecode and the feedback of functions that have not
// run for a while (a few major GCs, which an idle server gets from V8's
// memory reducer). Measured here on the bench app, deployed, idle for 20 s,
// then loaded with wrk: one build served 10-25% fewer requests than with
// flushing off, in 11 of 11 runs on Node 20 and 2 of 2 on Node 22, and stayed
// so for as long as it was loaded. `perf` put 12-19% of its samples in
// Runtime_DefineKeyedOwnPropertyInLiteral, called from process.nextTick,
// which builds each tick object as
// `{ [async_id_symbol]: ..., [trigger_async_id_symbol]: ..., callback, args }`
// (lib/internal/process/task_queues.js). %DebugPrint(process.nextTick) in
// such a process showed three of the literal's four property slots
// MEGAMORPHIC: its feedback had been flushed and rebuilt with mixed maps, so
// TurboFan calls the runtime for every property of every tick object.
// Whether a process fell into this hung on nothing we control: the same
// preload fell in unbundled (2 of 2) and not bundled (0 of 4), and a small
// change to the bundle flipped it. With flushing off: 0 of 4 (Node 20 and
// 22). Node 24 (V8 13) did not fall in (0 of 3) and keeps V8's default. The
// cost is the bytecode of functions that ran once: about 1 MB of RSS for the
// bench app.
//
// Why here and not `--no-flush-bytecode` on node's command line, as before:
// a V8 flag off its default changes V8's flag hash, which every code cache is
// checked against (SerializedCodeData::SanityCheck), so Node's embedded code
// cache of its own modules stopped matching and each one the app loaded was
// compiled from source. The bench app took 55.9 ms (median of 15 starts) to
// listen with the flag against 47.5 without, on Node 20, and that is on the
// critical path of every deploy. Set once the app listens on the deploy
// port, it has loaded what it needs at start. V8 reads the flag at each GC
// (Heap::GetCodeFlushMode), and Node leaves flags writable after start-up
// (--no-freeze-flags-after-init). Checked with `--stress-flush-code
// --trace-flush-bytecode`: with the flag set this way, no function was
// flushed (316 trace lines without it).

/** A flushing choice of the release's own (`--node-arg=--flush-bytecode`, or V8's other spellings). */
const OWN_CHOICE = /^--(no-?)?flush[-_]bytecode$/;

/** Whether this Node keeps V8's default (Node 24 and later), or the app chose with --node-arg. */
export function keepsFlushing(execArgv: readonly string[] = process.execArgv, nodeVersion: string = process.versions.node): boolean {
  return Number(nodeVersion.split('.')[0]) >= 24 || execArgv.some((arg) => OWN_CHOICE.test(arg));
}

/** Turns bytecode flushing off for the rest of this process's life, unless keepsFlushing(). */
export function stopFlushingBytecode(): void {
  // node:v8 is loaded here, not at the top: the preload loads nothing in a
  // process that a keeper did not start.
  if (!keepsFlushing()) (require('node:v8') as typeof import('node:v8')).setFlagsFromString('--no-flush-bytecode');
}
