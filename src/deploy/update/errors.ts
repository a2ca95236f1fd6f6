/** The update's own error class and the failure classes its stages decide on. */
import { TiuError, asError, isDiskFullError, isTransientError } from '../../errors.ts';

export class UpdateError extends TiuError {}

/**
 * Whether the delta's content store is worth keeping for the next run: the failure is transient
 * (a retry may get past it) and not a full disk, which the store itself helps fill.
 */
export function storeWorthKeeping(e: unknown, signal?: AbortSignal): boolean {
  return signal?.aborted === true || (isTransientError(e) && !isDiskFullError(e));
}

/** ENOSPC while the image is fetched into the cache (before any snapshot) becomes DISK_FULL naming the cache. */
export async function whileFetching<T>(cacheDir: string, image: string, step: () => Promise<T>): Promise<T> {
  try {
    return await step();
  } catch (e) {
    if (!isDiskFullError(e)) throw e;
    throw new UpdateError(
      'DISK_FULL',
      `no space left on the filesystem of the cache ${cacheDir} while fetching ${image}; no snapshot was made: ${asError(e).message}`,
      { cache: cacheDir },
      { cause: e },
    );
  }
}
