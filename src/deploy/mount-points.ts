/**
 * Mount points a snapshot must have to boot, whatever the image holds. MicroOS mounts its
 * subvolumes and partitions from /etc/fstab on a read-only root, where systemd cannot create a
 * missing mount point: an image without `boot/grub2`, `proc` or `tmp` would make the next boot
 * fail. So, after the apply and the /etc merge, the new snapshot gets a real directory (0755,
 * root:root) for every mount point of the old and the new /etc/fstab, every preserved path the
 * booted snapshot has and the API filesystems, created through the rooted API (never following a symlink).
 *
 * Also here: the reserved set of an update (apply/reserved.ts), from the booted snapshot's fstab.
 */
import { unlink } from 'node:fs/promises';
import { fstabMountPoints, reservedSet, type Reserved } from './apply/reserved.ts';
import { comparePaths, isAtOrBelow, parentOf } from '../layer/paths.ts';
import { RootedDir } from './rooted.ts';

/** The API filesystems systemd mounts (and a tmpfs /tmp): directories every root needs. */
export const API_MOUNT_POINTS = ['proc', 'sys', 'dev', 'run', 'tmp'] as const;

/** fstab is a small text file; a larger one is not read as one. */
const FSTAB_MAX = 1 << 20;

/** The mount points of `root`'s /etc/fstab (relative paths); [] when it has none. Never follows a symlink. */
export async function readFstabMountPoints(root: string): Promise<string[]> {
  const rd = await RootedDir.open(root);
  const st = await rd.lstat('etc/fstab').catch(() => undefined);
  if (!st?.isFile() || st.size > FSTAB_MAX) return [];
  return fstabMountPoints((await rd.readFile('etc/fstab')).toString('utf8'));
}

/** What an update keeps from the image: the preserved paths and the booted snapshot's fstab mount points. */
export async function reservedOf(oldRoot: string, preserve: readonly string[]): Promise<Reserved> {
  return reservedSet(preserve, await readFstabMountPoints(oldRoot));
}

/**
 * The directories the snapshot needs: `wanted` without those below another one of them (a
 * mount point inside /var lives in @/var, not in the snapshot), top-most first.
 */
export function mountPointsToKeep(wanted: readonly string[]): string[] {
  const all = [...new Set(wanted.filter((p) => p !== ''))].sort(comparePaths);
  return all.filter((p) => !all.some((q) => q !== p && isAtOrBelow(p, q)));
}

export interface KeptMountPoints {
  /** Directories that were missing and were created. */
  created: string[];
  /** Non-directories of the image that stood where a mount point must be, replaced by one. */
  replaced: string[];
}

/**
 * Make every mount point a real directory in the new snapshot at `newRoot`: those of the old
 * /etc/fstab (`oldMountPoints`, as reservedOf read them) and of the new one, `preserve`, and proc, sys, dev, run, tmp. Missing ones (and missing
 * parents) are created like the booted snapshot's (else 0755 root:root); a symlink or file where the mount point itself must be
 * is removed first (not followed). A symlink on the way to one is PATH_UNSAFE.
 */
export async function keepMountPoints(
  newRoot: string,
  oldRoot: string,
  preserve: readonly string[],
  oldMountPoints: readonly string[],
): Promise<KeptMountPoints> {
  // Preserved paths the host has (a directory in the booted snapshot): not every architecture's boot/grub2/<arch>.
  const old = await RootedDir.open(oldRoot);
  const hostPreserved: string[] = [];
  for (const p of preserve) if ((await old.lstat(p).catch(() => undefined))?.isDirectory()) hostPreserved.push(p);
  const wanted = [...oldMountPoints, ...(await readFstabMountPoints(newRoot)), ...hostPreserved, ...API_MOUNT_POINTS];
  const rd = await RootedDir.open(newRoot);
  const out: KeptMountPoints = { created: [], replaced: [] };
  for (const p of mountPointsToKeep(wanted)) {
    const chain: string[] = [];
    for (let d = p; d !== ''; d = parentOf(d)) chain.unshift(d);
    for (const d of chain) {
      const st = await rd.lstat(d);
      if (st?.isDirectory()) continue;
      if (st) {
        if (d !== p) continue; // rd.lstat of the next component refuses the symlink or file on the way
        await unlink(rd.abs(d));
        out.replaced.push(d);
      } else out.created.push(d);
      await rd.mkdir(d, 0o755);
      // As the booted snapshot has it (a /tmp stays 1777, and two identical updates give identical
      // trees); 0755 root:root where it has none.
      const was = await old.lstat(d).catch(() => undefined);
      const like = was?.isDirectory() ? was : undefined;
      const fh = await rd.openNoFollow(d, 'dir');
      try {
        await fh.chown(like?.uid ?? 0, like?.gid ?? 0);
        await fh.chmod(like ? like.mode & 0o7777 : 0o755);
        if (like) await fh.utimes(like.atime, like.mtime);
      } finally {
        await fh.close();
      }
    }
  }
  return out;
}
