/**
 * Where snapshots are and which one runs or boots next: the snapshot layout of a MicroOS root
 * (`/.snapshots/N/snapshot`), read from the mounts and the btrfs default. Used by the state
 * reader and by the plain-btrfs snapshot backend alike.
 */
import { join } from 'node:path';
import { getDefault } from '../host/btrfs.ts';
import { mountAt } from '../host/mount.ts';

/** Where snapshot N's root is, seen from the sysroot. */
export function snapshotPath(sysroot: string, n: number): string {
  return join(sysroot, '.snapshots', String(n), 'snapshot');
}

/** `@/.snapshots/12/snapshot` (with or without a leading slash) -> 12. */
export function snapshotNumberOf(subvolPath: string): number | undefined {
  const m = /(?:^|\/)\.snapshots\/(\d+)\/snapshot$/.exec(subvolPath);
  return m ? Number(m[1]) : undefined;
}

/** The snapshot number the sysroot runs from (what is mounted there). */
export async function bootedSnapshot(sysroot: string): Promise<number | undefined> {
  const m = await mountAt(sysroot);
  if (!m || m.fsType !== 'btrfs') return undefined;
  return snapshotNumberOf(m.root);
}

export async function defaultSnapshot(sysroot: string): Promise<number | undefined> {
  return snapshotNumberOf((await getDefault(sysroot)).path);
}
