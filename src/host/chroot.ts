/** chroot(8): run a program with `root` as its root directory (src/deploy/chroot.ts prepares the root). */
import { run, type RunOptions, type RunResult } from './exec.ts';

export function runChrooted(
  root: string,
  file: string,
  args: readonly string[],
  opts?: RunOptions,
): Promise<RunResult> {
  return run('chroot', [root, file, ...args], opts);
}
