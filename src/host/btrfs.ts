/**
 * btrfs-progs, through the one process wrapper. Only what tiu's snapshot sequence needs:
 * subvolume create/snapshot/delete/show, the default subvolume, the read-only property.
 */
import { run } from './exec.ts';
import { TiuError } from '../errors.ts';

export class BtrfsError extends TiuError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('BTRFS_FAILED', message, details);
  }
}

export interface SubvolumeInfo {
  id: number;
  /** Path relative to the top-level subvolume, e.g. `@/.snapshots/2/snapshot`. */
  path: string;
}

export async function subvolumeSnapshot(
  source: string,
  dest: string,
  opts: { readOnly?: boolean } = {},
): Promise<void> {
  await run('btrfs', ['-q', 'subvolume', 'snapshot', ...(opts.readOnly ? ['-r'] : []), source, dest]);
}

export async function subvolumeDelete(path: string): Promise<void> {
  await run('btrfs', ['-q', 'subvolume', 'delete', path]);
}

/** Is `path` the root of a btrfs subvolume? (Its inode number is 256.) */
export async function isSubvolume(path: string): Promise<boolean> {
  const r = await run('stat', ['-f', '-c', '%T', path], { okExitCodes: [0, 1] });
  if (r.exitCode !== 0 || r.stdout.trim() !== 'btrfs') return false;
  const ino = await run('stat', ['-c', '%i', path]);
  return ino.stdout.trim() === '256';
}

export async function subvolumeShow(path: string): Promise<SubvolumeInfo> {
  const r = await run('btrfs', ['subvolume', 'show', path]);
  const id = /^\s*Subvolume ID:\s*(\d+)/m.exec(r.stdout);
  const first = r.stdout.split('\n')[0]?.trim() ?? '';
  if (!id) throw new BtrfsError(`btrfs subvolume show ${path}: no subvolume ID in its output`, { path });
  return { id: Number(id[1]), path: first === '/' ? '' : first };
}

/** The default subvolume of the filesystem that holds `mountPath`. */
export async function getDefault(mountPath: string): Promise<SubvolumeInfo> {
  const r = await run('btrfs', ['subvolume', 'get-default', mountPath]);
  const m = /^ID (\d+)(?: gen \d+ top level \d+ path (.*))?/.exec(r.stdout.trim());
  if (!m)
    throw new BtrfsError(`cannot parse 'btrfs subvolume get-default ${mountPath}': ${r.stdout.trim()}`, { mountPath });
  return { id: Number(m[1]), path: m[2] ?? '' };
}

/** Write everything of the filesystem holding `path` to disk (a btrfs transaction commit). */
export async function filesystemSync(path: string): Promise<void> {
  await run('btrfs', ['filesystem', 'sync', path]);
}

/** Make the subvolume with `id` the default of the filesystem holding `mountPath`. */
export async function setDefault(id: number, mountPath: string): Promise<void> {
  await run('btrfs', ['subvolume', 'set-default', String(id), mountPath]);
}

export async function setReadOnly(path: string, readOnly: boolean): Promise<void> {
  await run('btrfs', ['property', 'set', '-ts', path, 'ro', readOnly ? 'true' : 'false']);
}

/** The UUID of the btrfs filesystem holding `mountPath` (what `root=UUID=` names). */
export async function filesystemUuid(mountPath: string): Promise<string> {
  const r = await run('btrfs', ['filesystem', 'show', mountPath]);
  const m = /uuid:\s*([0-9a-f-]{36})/i.exec(r.stdout);
  if (!m) throw new BtrfsError(`btrfs filesystem show ${mountPath}: no uuid in its output`, { mountPath });
  return m[1]!.toLowerCase();
}
