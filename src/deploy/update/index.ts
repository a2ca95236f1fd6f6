/**
 * `tiu update`: an image reference -> a new snapper snapshot that is the next boot, as a
 * sequence of stages over one run state (./run.ts). Every effect comes in through `UpdateDeps`
 * (./deps.ts says why), wired in src/deploy/wiring.ts.
 *
 * Before `stageSnapshot` the stages only read the system and write the cache; a failure leaves
 * the system as it was. After it, a failure deletes the unfinished snapshot (`abandon`); a kill
 * leaves it marked in progress for the next run's `settle` to delete. The btrfs default, moved in
 * `commit`, is the one commit point. Whatever fails, `release` gives back the lock, the source
 * and the delta's content store.
 */
import { checkLocal } from './cached.ts';
import { commit } from './commit.ts';
import type { UpdateDeps } from './deps.ts';
import { fetchImage } from './fetch.ts';
import { hooks } from './hooks.ts';
import { merge, setEtcAside } from './merge.ts';
import { plan } from './plan.ts';
import { resolve } from './resolve.ts';
import { begin, release, type UpdateOptions, type UpdateResult } from './run.ts';
import { settle } from './settle.ts';
import { abandon, stageSnapshot } from './snapshot.ts';
import { apply } from './apply.ts';
import { trust } from './trust.ts';

export async function update(deps: UpdateDeps, opts: UpdateOptions = {}): Promise<UpdateResult> {
  const run = await begin(deps, opts);
  try {
    const found = await resolve(deps, await settle(deps, run));
    const { image, root, present, cleanup } = found;
    if (present !== undefined && !opts.downloadOnly) {
      run.progress(`${image} (${root.digest}) is already deployed in snapshot ${present}`);
      return { status: 'already-present', image, digest: root.digest, snapshot: present, cleanup };
    }
    const fetched = await fetchImage(deps, await plan(deps, await trust(deps, found)));
    if (opts.downloadOnly) return { status: 'downloaded', image, digest: root.digest, cache: found.cacheDir, cleanup };
    const staged = await stageSnapshot(deps, await checkLocal(deps, fetched));
    try {
      const applied = await apply(deps, await setEtcAside(deps, staged));
      return await commit(deps, await hooks(deps, await merge(deps, applied)));
    } catch (e) {
      throw await abandon(deps, staged, e);
    }
  } finally {
    await release(run.held);
  }
}
