/**
 * Stage `apply`: the new tree written into the snapshot as a difference to the booted one. A
 * delta (downloaded, or planned from the cached layers) from its content store, else the layers
 * streamed from the cache through the tar engine. DISK_FULL while the reserve is still free,
 * whatever the layers expand to.
 */
import { layerOpeners } from '../../layer/openers.ts';
import type { UpdateDeps } from './deps.ts';
import { ETC_ASIDE } from './merge.ts';
import { indexOf } from './plan.ts';
import type { Applied, Aside } from './run.ts';
import { indexesToKeep } from './sources.ts';

export async function apply(deps: UpdateDeps, run: Aside): Promise<Applied> {
  const { delta, newRoot, reserved, signal, snapshot: n } = run;
  const store = run.held.store;
  run.progress(`writing ${run.manifest.layers.length} layer(s) into snapshot ${n}`);
  const space = deps.system.spaceGuard(newRoot, run.config.diskReserve);
  const preserve = [...reserved.paths, ETC_ASIDE];
  if (!delta || !store) {
    // checkLocal validated these layers (checkOsTree included) before the snapshot was made.
    const report = await deps.applyLayers({
      root: newRoot,
      layers: layerOpeners(run.cache, run.manifest, signal, run.expansionLimit),
      preserve,
      reserved,
      signal,
      space,
    });
    return { ...run, apply: report };
  }
  const a = await deps.delta.applyTransfer(delta, newRoot, store, {
    preserve,
    reserved,
    signal,
    space,
    indexFile: indexOf(run, run.from),
    saveIndexTo: indexOf(run, n),
  });
  await deps.delta.pruneContentIndexes(run.cacheDir, indexesToKeep(run.state, run.from, n));
  // Content the store lacked at apply time was downloaded then: part of the transfer's cost.
  const transfer =
    a.extra.bytes && !run.fromCache
      ? { ...delta.report, downloaded: (run.transfer?.downloaded ?? 0) + a.extra.bytes }
      : run.transfer;
  return { ...run, apply: a.report, transfer };
}
