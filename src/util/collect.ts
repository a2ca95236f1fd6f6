/**
 * A full garbage collection on purpose, at a phase boundary where a large structure just died
 * (an update's plans before its writing). V8 times its full collections by how much the heap and
 * the ArrayBuffers outside it grew since the last one, so whether the garbage of planning was
 * collected before the writing's own allocations piled on top was a matter of luck: peak RSS of
 * the same update was ~92 or ~110-125 MiB from run to run. Collected here, the writing starts from
 * what is live. Node exposes V8's `gc` only behind a flag; setting it at run time and taking the
 * function from a fresh context is V8's documented way (`--expose-gc`), no command-line flag.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

let gc: (() => void) | undefined;

/** Collect all garbage now (a full, compacting collection: ~10-30 ms on an update's heap). */
export function collectNow(): void {
  if (!gc) {
    setFlagsFromString('--expose-gc');
    gc = runInNewContext('gc') as () => void;
  }
  gc();
}
