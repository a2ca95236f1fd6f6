/**
 * `tiu update`: an image reference -> a new snapper snapshot that is the next boot, as a
 * sequence of stages over one run state (./run.ts). Every effect comes in through `UpdateDeps`
 * (./deps.ts says why), wired in src/deploy/wiring.ts.
 *
 * Before `stageSnapshot` the stages write only the cache (and `settle` removes what earlier runs
 * left unfinished); a failure leaves the system as it was. After it, a failure deletes the unfinished snapshot (`abandon`); a kill
 * leaves it marked in progress for the next run's `settle` to delete. The btrfs default, moved in
 * `commit`, is the one commit point. Whatever fails, `release` gives back the lock, the source
 * and the delta's content store.
 */
import { checkLocal } from './cached.ts';
import { commit } from './commit.ts';
import type { UpdateDeps } from './deps.ts';
import { refuseDowngrade } from './downgrade.ts';
import { downloaded, fetchImage } from './fetch.ts';
import { hooks } from './hooks.ts';
import { merge, setEtcAside } from './merge.ts';
import { plan } from './plan.ts';
import { alreadyPresent, resolve } from './resolve.ts';
import { begin, release, type UpdateOptions, type UpdateResult } from './run.ts';
import { settle } from './settle.ts';
import { abandon, stageSnapshot } from './snapshot.ts';
import { apply } from './apply.ts';
import { trust } from './trust.ts';

export async function update(deps: UpdateDeps, opts: UpdateOptions = {}): Promise<UpdateResult> {
  const run = await begin(deps, opts);
  try {
    const settled = await settle(deps, run);
    const found = await resolve(deps, settled);
    if (found.present !== undefined && !opts.downloadOnly) return alreadyPresent(found, found.present);
    const trusted = await trust(deps, found);
    // --offline: the cached copy is trusted in `fetch`, and judged after it; --download-only installs nothing.
    const judged = opts.offline || opts.downloadOnly ? trusted : await refuseDowngrade(deps, trusted);
    const planned = await plan(deps, judged);
    const fetched = await fetchImage(deps, planned);
    if (opts.downloadOnly) return downloaded(fetched);
    const current = opts.offline ? await refuseDowngrade(deps, fetched) : fetched;
    const checked = await checkLocal(deps, current);
    const staged = await stageSnapshot(deps, checked);
    try {
      const aside = await setEtcAside(deps, staged);
      const applied = await apply(deps, aside);
      const merged = await merge(deps, applied);
      const hooked = await hooks(deps, merged);
      return await commit(deps, hooked);
    } catch (e) {
      throw await abandon(deps, staged, e);
    }
  } finally {
    await release(run.held);
  }
}
