/**
 * Stage `check`: what the apply will use is local and intact before a snapshot exists. Whole
 * layers are in the cache now. Layers with tables of contents (tiu bundles, zstd:chunked) are
 * applied from there the way a delta is: planned against the booted snapshot, only the changed
 * files read (by range, from the local blobs) and verified into the store. Other layers are read
 * through their digests and their tar headers checked as the apply will check them.
 */
import { asError, isTiuError } from '../../errors.ts';
import type { ImageManifest } from '../../oci/types.ts';
import type { DeltaTransfer } from '../delta/index.ts';
import { snapshotPath } from '../state.ts';
import { layerOpeners, verifyBlobs } from '../../layer/openers.ts';
import type { CacheTarget, UpdateDeps } from './deps.ts';
import { UpdateError, whileFetching } from './errors.ts';
import { downloadDelta } from './fetch.ts';
import { checkOsPlan, checkOsTree, imageManifest, indexOf } from './plan.ts';
import type { Checked, Planned } from './run.ts';
import { contentSources } from './sources.ts';

/**
 * Read the cached image with `step`. A cached copy that fails its digests (a disk that rots, a
 * copy cut short) is dropped from the cache, so that the next update downloads it again instead
 * of failing the same way: CACHE_DAMAGED. Content that fails its table of contents while its
 * layer still matches the layer digest is the image's fault, and is said as it is.
 */
async function fromTheCache<T>(
  cache: CacheTarget,
  digest: string,
  manifest: ImageManifest,
  o: { image: string; cacheDir: string; signal?: AbortSignal | undefined },
  step: () => Promise<T>,
): Promise<T> {
  try {
    return await step();
  } catch (e) {
    const blobMismatch = isTiuError(e, 'DIGEST_MISMATCH') || isTiuError(e, 'SIZE_MISMATCH');
    const fileMismatch = isTiuError(e, 'DELTA_FILE_MISMATCH') || isTiuError(e, 'TOC_CHECKSUM_MISMATCH');
    if (!blobMismatch && !fileMismatch) throw e;
    if (fileMismatch) {
      const layersIntact = await verifyBlobs(cache, manifest.layers, o.signal).then(
        () => true,
        () => false,
      );
      if (layersIntact) throw e;
    }
    let dropped = false;
    if (cache.removeImage)
      dropped = await cache.removeImage(digest).then(
        () => true,
        () => false,
      );
    throw new UpdateError(
      'CACHE_DAMAGED',
      `the copy of ${o.image} in the cache ${o.cacheDir} is damaged (${asError(e).message})${dropped ? '; it was removed from the cache, so the next update downloads it again' : ''}`,
      { cache: o.cacheDir, digest },
      { cause: e },
    );
  }
}

/** The cached layers as a delta where their TOCs allow it (its files then in the store), else validated as tars. */
async function readCache(deps: UpdateDeps, run: Planned, manifest: ImageManifest, expansionLimit: number) {
  const { cache, reserved, signal } = run;
  const local = await deps.delta.prepareTransfer({
    source: cache,
    manifest,
    oldRoot: snapshotPath(run.ctx.sysroot, run.from),
    preserve: reserved.paths,
    reserved,
    mode: 'auto',
    signal,
    indexFile: indexOf(run, run.from),
    saveIndexTo: indexOf(run, run.from),
    // The cached layers' TOCs, verified here, are kept for the updates after this one.
    tocStore: deps.delta.tocStore(run.cacheDir, { write: true }),
    sources: contentSources(run.state, run.from, run.cacheDir),
    spill: { dir: run.cacheDir, reserve: run.config.diskReserve },
  });
  if (local.path === 'delta' && local.rows) (run.held.rows ??= []).push(local.rows);
  if (local.path !== 'delta') {
    // Every blob read through its digest, and every tar header checked as the apply will, before a snapshot exists.
    const checked = await deps.delta.validateTarLayers(layerOpeners(cache, manifest, signal, expansionLimit), {
      reserved,
      explain: (k) => verifyBlobs(cache, [manifest.layers[k]!], signal),
    });
    checkOsTree((p) => checked.tree.get(p), run.image);
    return undefined;
  }
  const d = await downloadDelta(deps, local, run.cacheDir, run.root.digest, {
    progress: run.progress,
    signal,
    progressEveryMs: run.opts.progressEveryMs,
    fromCache: true,
  });
  run.held.store = d.store;
  return local;
}

/**
 * A downloaded delta is checked already (plan, fetch). Otherwise the cached image is read: no
 * layer may expand past what the root filesystem can hold above its reserve (a gzip or zstd bomb
 * of zeros would otherwise keep the validation and the apply busy for ever).
 */
export async function checkLocal(deps: UpdateDeps, run: Planned): Promise<Checked> {
  const { cache, root, image, cacheDir, signal } = run;
  const { manifest, manifests } =
    run.delta && run.manifests
      ? { manifest: run.delta.manifest, manifests: run.manifests }
      : await imageManifest(cache, root, run.platform, signal);
  const fsNow = await deps.system.fsSpace(run.ctx.sysroot, run.config.diskReserve);
  const expansionLimit = fsNow.total - fsNow.reserve;
  const cached: DeltaTransfer | undefined = run.delta
    ? undefined
    : await whileFetching(cacheDir, image, () =>
        fromTheCache(cache, root.digest, manifest, { image, cacheDir, signal }, () =>
          readCache(deps, run, manifest, expansionLimit),
        ),
      );
  if (cached) checkOsPlan(cached, image);
  return {
    ...run,
    manifest,
    manifests,
    delta: run.delta ?? cached,
    fromCache: cached !== undefined,
    expansionLimit,
  };
}
