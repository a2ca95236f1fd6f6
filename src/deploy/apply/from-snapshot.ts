/**
 * Taking a file's content from another snapshot (a content source, see sources.ts) into the
 * staging directory of the snapshot being written.
 *
 * The read side follows the write side's rules: the path is resolved beneath *that* snapshot's
 * root component by component with lstat (SafeRoot.verifyDir: a symlink or a missing directory
 * on the way is refused), the file is opened read-only with O_NOFOLLOW and must be a regular
 * file, and the clone is made from that open descriptor (/proc/self/fd/N names exactly the
 * opened inode), so nothing an image put there can redirect the read.
 *
 * What is trusted: a snapshot tiu committed is read-only, but the content index that matched the
 * file is only an accelerator in the cache (it can be stale or edited), and root can make a
 * snapshot writable. So the file must still be the inode the match saw: same inode, size, mtime
 * and ctime (ctime changes with every write and cannot be set from userspace). When this process
 * hashed the file itself while planning, that is enough: the digest is of these very bytes.
 * When the digest came from a saved index, the clone is read and hashed before it is used.
 * A file that vanished or changed is not an error: the caller fetches that content instead
 * (the image's signed TOC says what it must be; a source is only a shortcut to it).
 */
import { constants, type BigIntStats } from 'node:fs';
import { lstat, open, rm, type FileHandle } from 'node:fs/promises';
import { UnsafePathError } from './errors.ts';
import { reflinkFile, type SafeRoot } from './fsops.ts';
import { parentOf } from '../../layer/paths.ts';
import { hashFile } from './scan.ts';
import type { SnapshotFile, TreeEntry } from './types.ts';

export type Taken = { ok: true; reflinked: boolean } | { ok: false; why: string };

const GONE = new Set(['ENOENT', 'ENOTDIR', 'ELOOP']);

function unchanged(st: BigIntStats, seen: SnapshotFile['seen']): boolean {
  return (
    st.isFile() &&
    st.ino === seen.ino &&
    Number(st.size) === seen.size &&
    st.mtimeNs === seen.mtimeNs &&
    st.ctimeNs === seen.ctimeNs
  );
}

/**
 * Open `rel` beneath `src` for reading: its directories checked component by component (no
 * symlink on the way), the file itself with O_NOFOLLOW and O_NONBLOCK (a fifo put in its place
 * does not block), and the open file still the inode `seen` describes. Returns why not when it
 * is gone or changed; a path an image redirected is `UnsafePathError`'s message.
 */
export async function openUnchanged(
  src: SafeRoot,
  rel: string,
  seen: SnapshotFile['seen'],
): Promise<{ ok: true; fh: FileHandle } | { ok: false; why: string }> {
  let fh: FileHandle;
  try {
    await src.verifyDir(parentOf(rel), rel);
    // lstat first: never open a device or fifo that took the file's place.
    if (!unchanged(await lstat(src.path(rel), { bigint: true }), seen))
      return { ok: false, why: 'it changed since it was matched' };
    fh = await open(src.path(rel), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    if (e instanceof UnsafePathError) return { ok: false, why: e.message };
    if (GONE.has((e as NodeJS.ErrnoException).code ?? '')) return { ok: false, why: 'it is gone' };
    throw e;
  }
  if (unchanged(await fh.stat({ bigint: true }), seen)) return { ok: true, fh };
  await fh.close();
  return { ok: false, why: 'it changed since it was matched' };
}

/**
 * Clone `f` (of the snapshot `src` is rooted at) to the new file `to` for `entry`. Returns why
 * not when the file vanished or no longer holds the entry's content (nothing is left at `to`).
 */
export async function takeFromSnapshot(
  src: SafeRoot,
  f: SnapshotFile,
  entry: TreeEntry,
  to: Buffer,
  allowCopy: boolean,
): Promise<Taken> {
  const opened = await openUnchanged(src, f.seen.path, f.seen);
  if (!opened.ok) return opened;
  const { fh } = opened;
  try {
    const reflinked = await reflinkFile(`/proc/self/fd/${fh.fd}`, to, allowCopy);
    const st = await lstat(to);
    const digest = f.hashedHere && st.size === entry.size ? entry.digest : await hashFile(to);
    if (st.size !== entry.size || digest !== entry.digest) {
      await rm(to, { force: true });
      return { ok: false, why: `its content is not ${entry.digest} (the content index was wrong)` };
    }
    return { ok: true, reflinked };
  } finally {
    await fh.close();
  }
}
