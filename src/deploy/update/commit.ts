/**
 * Stage `commit`: read-only, userdata (also the image's signed created time and version, which the
 * next update's downgrade check compares against), boot entry and the btrfs default — the one commit point
 * (commitSnapshot) — then the applied image's layers leave the cache.
 */
import { asError } from '../../errors.ts';
import { ageOfManifests } from '../image-age.ts';
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

/**
 * Keep the deployed image's manifests in the cache's TOC store (its TOCs are there since they
 * were verified) and drop what no snapshot's image needs any more: the next update then knows
 * what this snapshot holds without asking a registry. An accelerator: failing only says so.
 */
async function rememberImage(deps: UpdateDeps, run: Hooked): Promise<void> {
  try {
    const store = deps.delta.tocStore(run.cacheDir, { write: true });
    await store.keepImage(run.manifests);
    const held = run.state.snapshots.flatMap((s) => (s.digest ? [s.digest] : []));
    await store.prune([...held, run.root.digest], run.platform);
  } catch (e) {
    run.progress(`could not keep the image's tables of contents in the cache: ${asError(e).message}`);
  }
}

export async function commit(deps: UpdateDeps, run: Hooked): Promise<UpdateResult & { status: 'updated' }> {
  const { image, root, snapshot: n, boot, config, progress } = run;
  run.signal?.throwIfAborted();
  await deps.system.commitSnapshot(run.ctx, n, {
    image,
    digest: root.digest,
    etcConflicts: run.etcConflicts.length,
    age: ageOfManifests(run.manifests),
    ...(boot ? { boot: { sd: boot, config, log: progress } } : {}),
  });
  progress(`snapshot ${n} is the default: it boots next`);
  await rememberImage(deps, run);
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
    ...(run.age ? { age: run.age } : {}),
  };
}
