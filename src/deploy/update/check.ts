/**
 * `tiu update --check`: resolve, trust (freshness too), the downgrade check (an offer that would be
 * refused is DOWNGRADE here too) and plan as a real update does (the same stages) against
 * the booted snapshot. Takes no lock and writes nothing: no cache, no snapshot, no cleanup; the
 * booted snapshot's content index is only read, where an update left one. (The plan's file rows
 * may wait in a temporary file of the cache, unlinked as it is made: nothing of it stays.)
 */
import type { UpdateDeps } from './deps.ts';
import { refuseDowngrade } from './downgrade.ts';
import { indexOf, prepare } from './plan.ts';
import { resolveSource } from './resolve.ts';
import { begin, release, type CheckResult, type UpdateOptions } from './run.ts';
import { onBooted } from './settle.ts';
import { trust } from './trust.ts';

export async function checkUpdate(
  deps: UpdateDeps,
  opts: Omit<UpdateOptions, 'downloadOnly' | 'offline' | 'onProgress'> = {},
): Promise<CheckResult> {
  const run = await onBooted(deps, await begin(deps, opts));
  try {
    const found = await resolveSource(deps, run);
    const { image, root, present } = found;
    if (present !== undefined) return { status: 'already-present', image, digest: root.digest, snapshot: present };
    const judged = await refuseDowngrade(deps, await trust(deps, found));
    const { transfer } = await prepare(deps, judged, { load: indexOf(run, run.from), save: false });
    return {
      status: 'available',
      image,
      digest: root.digest,
      booted: run.from,
      transfer: transfer.report,
      age: judged.age,
    };
  } finally {
    await release(run.held);
  }
}
