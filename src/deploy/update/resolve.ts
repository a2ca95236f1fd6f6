/**
 * Stage `resolve`: the reference -> the digest of the image to deploy, from its source (or the
 * cache for --offline), and whether a snapshot already holds it. `resolveSource` is shared with
 * `tiu update --check`.
 */
import type { Descriptor } from '../../oci/types.ts';
import type { SystemState } from '../state.ts';
import type { UpdateDeps } from './deps.ts';
import { UpdateError } from './errors.ts';
import type { OnBooted, Resolved, Settled, UpdateResult } from './run.ts';

/** The snapshot (default first, then booted) that already holds the image with this digest. */
function presentIn(state: SystemState, digest: string): number | undefined {
  const def = state.snapshots.find((s) => s.default);
  if (def?.digest === digest) return def.number;
  const booted = state.snapshots.find((s) => s.booted);
  if (booted?.digest === digest) return booted.number;
  return undefined;
}

/** Open the image's source (held until the run ends) and resolve its tag or only image to a digest. */
export async function resolveSource<R extends OnBooted>(deps: UpdateDeps, run: R): Promise<R & Resolved> {
  const { image, signal } = run;
  const src = await deps.openSource(image, { sysroot: run.ctx.sysroot, config: run.config, signal });
  run.held.source = src.target;
  run.progress(`resolving ${image}`);
  let root: Descriptor;
  if (src.reference !== undefined) root = await src.target.resolve(src.reference, { signal });
  else if (src.target.resolveDefault) root = await src.target.resolveDefault({ signal });
  else
    throw new UpdateError(
      'REFERENCE_MISSING',
      `${image} does not say which image of ${src.target.name} to use: add a tag or digest`,
      { image },
    );
  return { ...run, root, source: src.target, present: presentIn(run.state, root.digest) };
}

/** --offline: the image as an earlier --download-only left it in the cache; else resolveSource. */
export async function resolve(deps: UpdateDeps, run: Settled): Promise<Settled & Resolved> {
  if (!run.opts.offline) return resolveSource(deps, run);
  const { image, cacheDir } = run;
  run.progress(`looking up ${image} in the cache ${cacheDir}`);
  const root = await run.cache.resolve(run.tag, { signal: run.signal }).catch((e: unknown) => {
    throw new UpdateError(
      'CACHE_BLOB_MISSING',
      `${image} is not in the cache ${cacheDir}; run 'tiu update --download-only ${image}' first`,
      { image, cache: cacheDir },
      { cause: e },
    );
  });
  return { ...run, root, source: run.cache, present: presentIn(run.state, root.digest) };
}

/** The end of a run whose image a snapshot already holds (not for --download-only, which fetches it anyway). */
export function alreadyPresent(run: Settled & Resolved, snapshot: number): UpdateResult {
  run.progress(`${run.image} (${run.root.digest}) is already deployed in snapshot ${snapshot}`);
  return { status: 'already-present', image: run.image, digest: run.root.digest, snapshot, cleanup: run.cleanup };
}
