/**
 * Test helper: a regular file as a scan of the old tree records it (root-owned, 0644, one link
 * unless told, no xattrs), with any field changed by `more`.
 */
import type { ExistingEntry } from '../../src/deploy/apply/types.ts';

export function existingFile(
  path: string,
  size: number,
  ino: bigint,
  more: Partial<ExistingEntry> = {},
): ExistingEntry {
  return {
    path,
    type: 'reg',
    mode: 0o644,
    uid: 0,
    gid: 0,
    size,
    mtimeNs: 1n,
    ctimeNs: 2n,
    ino,
    dev: 1n,
    nlink: 1,
    rdev: 0n,
    xattrs: {},
    ...more,
  };
}
