/**
 * Stage `commit`: read-only, userdata, boot entry and the btrfs default — the one commit point
 * (commitSnapshot) — then the applied image's layers leave the cache.
 */
import { asError } from '../../errors.ts';
import type { CacheTarget, UpdateDeps } from './deps.ts';
import type { Hooked, UpdateResult } from './run.ts';

/**
 * The image is in a committed snapshot now: its layers in the cache (whole-layer and offline
 * updates, or an earlier --download-only) would only pile up, one image per update. Other
 * images in the cache (a --download-only of a later one) stay. Failing here does not fail the
 * update, which has already happened.
 */
async function releaseFromCache(cache: CacheTarget, digest: string, progress: (msg: string) => void): Promise<void> {
  if (!cache.removeImage) return;
  try {
    const freed = await cache.removeImage(digest);
    if (freed.blobs)
      progress(`freed ${freed.bytes} bytes (${freed.blobs} blob(s)) of the applied image from the cache`);
  } catch (e) {
    progress(`could not free the applied image from the cache, where it stays: ${asError(e).message}`);
  }
}

export async function commit(deps: UpdateDeps, run: Hooked): Promise<UpdateResult & { status: 'updated' }> {
  const { image, root, snapshot: n, boot, config, progress } = run;
  run.signal?.throwIfAborted();
  await deps.system.commitSnapshot(run.ctx, n, {
    image,
    digest: root.digest,
    etcConflicts: run.etcConflicts.length,
    ...(boot ? { boot: { sd: boot, config, log: progress } } : {}),
  });
  progress(`snapshot ${n} is the default: it boots next`);
  await releaseFromCache(run.cache, root.digest, progress);
  return {
    status: 'updated',
    image,
    digest: root.digest,
    snapshot: n,
    from: run.from,
    etcConflicts: run.etcConflicts,
    userClashes: run.userClashes,
    addedUsers: run.addedUsers,
    relabel: run.relabel,
    hooks: run.hooks,
    apply: run.apply,
    cleanup: run.cleanup,
    ...(run.transfer ? { transfer: run.transfer } : {}),
  };
}
