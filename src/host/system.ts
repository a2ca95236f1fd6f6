/** Whole-system actions: reboot, copying a tree with shared extents. */
import { run } from './exec.ts';

export async function reboot(): Promise<void> {
  await run('systemctl', ['reboot']);
}

/** `cp -a --reflink=auto`: a copy of `src` at `dst` whose file data shares extents on btrfs. */
export async function copyTreeReflink(src: string, dst: string): Promise<void> {
  await run('cp', ['-a', '--reflink=auto', '--no-target-directory', src, dst]);
}
