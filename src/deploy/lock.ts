/**
 * One update at a time per system: the flock(2)ed lock file of src/host/file-lock.ts, which
 * goes away with the process, even on SIGKILL: a crashed update never leaves a stale lock
 * behind. A second update does not wait: it fails at once.
 *
 * The lock file lives under /run/tiu (tmpfs, writable even though / is a read-only
 * snapshot); for a --sysroot it is named after the sysroot's real path.
 */
import { createHash } from 'node:crypto';
import { mkdir, realpath } from 'node:fs/promises';
import { join } from 'node:path';
import { acquireFileLock } from '../host/file-lock.ts';
import { TiuError } from '../errors.ts';

export class UpdateLockedError extends TiuError {
  constructor(lockFile: string, holder: string) {
    super(
      'UPDATE_IN_PROGRESS',
      `another tiu update is running on this system (lock ${lockFile}${holder ? `, held by pid ${holder}` : ''})`,
      { lockFile, holder },
    );
  }
}

export interface UpdateLock {
  readonly file: string;
  release(): Promise<void>;
}

export const LOCK_DIR = process.env.TIU_LOCK_DIR ?? '/run/tiu';

export async function lockFileFor(sysroot: string): Promise<string> {
  const real = await realpath(sysroot);
  const name =
    real === '/' ? 'update.lock' : `update-${createHash('sha256').update(real).digest('hex').slice(0, 16)}.lock`;
  return join(LOCK_DIR, name);
}

/** Take the update lock of `sysroot` without waiting; UPDATE_IN_PROGRESS if someone holds it. */
export async function acquireUpdateLock(sysroot = '/'): Promise<UpdateLock> {
  const file = await lockFileFor(sysroot);
  await mkdir(LOCK_DIR, { recursive: true, mode: 0o700 });
  const lock = await acquireFileLock(file, 0);
  if ('busy' in lock) throw new UpdateLockedError(file, lock.holder);
  return { file, release: () => lock.release() };
}
