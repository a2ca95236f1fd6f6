/**
 * The lock of a content store or cache directory: waits for its holder (another process, or
 * another caller in this one), up to a timeout. The lock itself is src/host/file-lock.ts.
 */
import { TiuError } from '../errors.ts';
import { acquireFileLock } from '../host/file-lock.ts';
import { inTurn } from '../util/in-turn.ts';

export class LockTimeoutError extends TiuError {
  constructor(path: string, ms: number, owner: string) {
    super('LOCK_TIMEOUT', `could not lock ${path} within ${ms} ms (held by ${owner || 'unknown'})`, { path, owner });
  }
}

/** Run `fn` holding the lock file `path`. */
export async function withLock<T>(path: string, fn: () => Promise<T>, timeoutMs = 60000): Promise<T> {
  return inTurn(path, async () => {
    const lock = await acquireFileLock(path, timeoutMs);
    if ('busy' in lock) throw new LockTimeoutError(path, timeoutMs, lock.holder ? `pid ${lock.holder}` : '');
    try {
      return await fn();
    } finally {
      await lock.release();
    }
  });
}
