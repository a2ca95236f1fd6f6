/** The update's own error class and the failure classes its stages decide on. */
import { TiuError, asError, isTiuError, someCause } from '../../errors.ts';

export class UpdateError extends TiuError {}

/** Failures that a later run may not meet: the network, the registry's load, a signal. */
const TRANSIENT = [
  'REGISTRY_UNREACHABLE',
  'TIMEOUT',
  'REGISTRY_UNAVAILABLE',
  'TOO_MANY_REQUESTS',
  'REGISTRY_TOO_SLOW',
  'ABORTED',
  'INTERRUPTED',
];
export function isTransient(e: unknown, signal?: AbortSignal): boolean {
  return signal?.aborted === true || someCause(e, (x) => TRANSIENT.some((c) => isTiuError(x, c)));
}

/** ENOSPC anywhere in the cause chain (fs calls, a program's stderr, a wrapped error). */
export function isNoSpace(e: unknown): boolean {
  return someCause(
    e,
    (x) =>
      (x as NodeJS.ErrnoException).code === 'ENOSPC' ||
      (x instanceof Error && /ENOSPC|No space left on device/.test(x.message)),
  );
}

/** A full disk however it was said: ENOSPC, or the reserve guard's DISK_FULL somewhere in the chain. */
export function isOutOfSpace(e: unknown): boolean {
  return isNoSpace(e) || someCause(e, (x) => isTiuError(x, 'DISK_FULL'));
}

/** ENOSPC while the image is fetched into the cache (before any snapshot) becomes DISK_FULL naming the cache. */
export async function whileFetching<T>(cacheDir: string, image: string, step: () => Promise<T>): Promise<T> {
  try {
    return await step();
  } catch (e) {
    if (!isOutOfSpace(e)) throw e;
    throw new UpdateError(
      'DISK_FULL',
      `no space left on the filesystem of the cache ${cacheDir} while fetching ${image}; no snapshot was made: ${asError(e).message}`,
      { cache: cacheDir },
      { cause: e },
    );
  }
}
