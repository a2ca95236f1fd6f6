/**
 * A full garbage collection on purpose, at a phase boundary where a large structure just died.
 * V8 times its full collections by how much the heap and the ArrayBuffers outside it grew since
 * the last one, so whether a phase's garbage is gone before the next phase's allocations pile on
 * top is otherwise a matter of luck: the same update peaked at ~92 or ~110-125 MiB from run to
 * run. Two callers; the collection is a last-resort one, because only that hands V8's freed heap pages
 * back to the system (a regular one keeps them pooled): an update before its writing
 * (delta/index.ts `applyTransfer`), and a build once its content is written, before the large
 * TOCs' level-19 tables (bundle/build.ts; larger bench tree, RSS 109 -> 106 MiB regular, 109 ->
 * 85 last-resort).
 *
 * bin/tiu passes `--expose-gc` to the commands that collect, so that V8's flags, which key
 * Node's compile cache, are the same all through a run. Where tiu runs without it (as a library,
 * in tests), the flag is set at run time and `gc` taken from a fresh context, V8's documented
 * way to reach it.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

let lateGc: NodeJS.GCFunction | undefined;

function exposedGc(): NodeJS.GCFunction {
  if (globalThis.gc) return globalThis.gc;
  if (!lateGc) {
    setFlagsFromString('--expose-gc');
    lateGc = runInNewContext('gc') as NodeJS.GCFunction;
  }
  return lateGc;
}

/**
 * Collect all garbage now: a full, compacting, last-resort collection, which also hands the
 * freed heap pages back (~10-100 ms on an update's heap).
 */
export function collectNow(): void {
  exposedGc()({ type: 'major', execution: 'sync', flavor: 'last-resort' });
}
