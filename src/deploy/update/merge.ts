/**
 * The /etc pair of stages. `setEtcAside`: a second copy of the admin's /etc waits aside in the
 * new snapshot while the image is written over the first (so the image's /etc costs only what
 * differs). `merge`: the three-way /etc merge and the user databases merge write into it, it
 * becomes /etc, and every mount point gets a real directory. Reads and writes in the snapshots
 * go through the rooted API: a symlink on the way (usr/lib/tiu -> /elsewhere) is PATH_UNSAFE,
 * never followed.
 */
import { join } from 'node:path';
import { parentOf } from '../../layer/paths.ts';
import type { UpdateDeps } from './deps.ts';
import type { Applied, Aside, Merged, Staged } from './run.ts';
import { PRESERVE } from './settle.ts';

/** Where the admin's /etc waits in the new snapshot while the image is written. */
export const ETC_ASIDE = '.tiu-etc-merge';
/** The image's pristine /etc, the base of the next three-way merge. */
export const PRISTINE_ETC = 'usr/lib/tiu/etc';

export async function setEtcAside(deps: UpdateDeps, run: Staged): Promise<Aside> {
  const { newRoot, oldRoot } = run;
  const newRd = await deps.files.openRooted(newRoot);
  const oldRd = await deps.files.openRooted(oldRoot);
  // btrfs resolves the path it is given: only a real directory of the snapshot is asked about (as for the new /etc below).
  if ((await oldRd.isDir('etc')) && (await deps.system.isSubvolume(join(oldRoot, 'etc'))))
    await deps.system.subvolumeSnapshot(join(oldRoot, 'etc'), join(newRoot, ETC_ASIDE));
  else await newRd.copyTree(oldRd, 'etc', ETC_ASIDE);
  return { ...run, newRd, oldRd };
}

/** /etc: base = the running image's pristine copy, ours = the admin's, theirs = the new pristine copy. */
export async function merge(deps: UpdateDeps, run: Applied): Promise<Merged> {
  const { newRd, oldRd, newRoot } = run;
  if (!(await newRd.isDir(PRISTINE_ETC)) && (await newRd.lstat('etc'))) {
    await newRd.mkdir(parentOf(PRISTINE_ETC));
    await newRd.copyTree(newRd, 'etc', PRISTINE_ETC);
  }
  // The old pristine /etc may be missing (the first update); a symlink on its way is PATH_UNSAFE.
  await oldRd.isDir(PRISTINE_ETC);
  await newRd.verifyDir(ETC_ASIDE);
  const aside = join(newRoot, ETC_ASIDE);
  const theirs = newRd.abs(PRISTINE_ETC);
  const base = oldRd.abs(PRISTINE_ETC);
  run.progress('merging /etc');
  const etc = await deps.mergeEtc(base, aside, theirs);
  const users = await deps.mergeUsers(base, aside, theirs);
  // btrfs resolves the path it is given: only a real directory of the snapshot is asked about.
  if ((await newRd.isDir('etc')) && (await deps.system.isSubvolume(join(newRoot, 'etc'))))
    await deps.system.subvolumeDelete(join(newRoot, 'etc'));
  else await deps.files.removeAll(join(newRoot, 'etc'));
  await deps.files.rename(aside, join(newRoot, 'etc'));
  await keepMountPoints(deps, run);
  return { ...run, etcConflicts: etc.conflicts, userClashes: users.clashes, addedUsers: users.addedUsers };
}

/**
 * The new snapshot has a real directory for every mount point of the old and the new (merged)
 * /etc/fstab, every preserved path and proc, sys, dev, run, tmp, whatever the image held: on a
 * read-only root nothing could create a missing one at boot.
 */
async function keepMountPoints(deps: UpdateDeps, run: Applied): Promise<void> {
  const kept = await deps.system.keepMountPoints(run.newRoot, run.oldRoot, PRESERVE, run.reserved.mountPoints);
  if (kept.created.length)
    run.progress(`created mount point(s) the image lacks: ${kept.created.map((p) => '/' + p).join(', ')}`);
  if (kept.replaced.length)
    run.progress(
      `replaced non-directories of the image by mount points: ${kept.replaced.map((p) => '/' + p).join(', ')}`,
    );
}
