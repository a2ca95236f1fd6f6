/** Whole-system actions: reboot. (Trees in snapshots are copied by RootedDir.copyTree, src/deploy/rooted.ts.) */
import { run } from './exec.ts';

export async function reboot(): Promise<void> {
  await run('systemctl', ['reboot']);
}
