/**
 * One update at a time per system: an flock(2)ed lock file. The lock belongs to this
 * process's open file description, so it goes away with the process, even on SIGKILL: a
 * crashed update never leaves a stale lock behind.
 *
 * The lock file lives under /run/tiu (tmpfs, writable even though / is a read-only
 * snapshot); for a --sysroot it is named after the sysroot's real path.
 */
import { createHash } from 'node:crypto';
import { mkdir, open, realpath, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '../host/exec.ts';
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
  const fh: FileHandle = await open(file, 'a+', 0o600);
  try {
    // flock(1) locks its fd 3, which is our descriptor: the lock stays with our open file.
    const r = await run('flock', ['--nonblock', '--conflict-exit-code', '75', '3'], {
      passFds: [fh.fd],
      okExitCodes: [0, 75],
    });
    if (r.exitCode === 75) {
      const holder = (await fh.readFile('utf8')).trim();
      throw new UpdateLockedError(file, holder);
    }
    await fh.truncate(0);
    await fh.write(`${process.pid}\n`, 0);
  } catch (e) {
    await fh.close();
    throw e;
  }
  let released = false;
  return {
    file,
    async release() {
      if (released) return;
      released = true;
      await fh.close();
    },
  };
}
