/**
 * Stage `downgrade` (a rollback attack: a mirror or a USB stick offers an older, validly signed
 * image): the offered image's signed age (src/deploy/image-age.ts) against the images the
 * device runs (booted snapshot) and has pending (the btrfs default). Older -> DOWNGRADE, unless
 * `--allow-downgrade`. Runs after `trust` (only signed manifests are believed) and fetches
 * nothing but the manifests, which `plan` then reuses; online before `plan`, --offline after
 * `fetch` checked the cached copy. What either side lacks is said, never a refusal.
 */
import { join } from 'node:path';
import { ageOfManifests, describeAge, judgeAge, type HeldAge } from '../image-age.ts';
import { snapshotAge } from '../snapshot-age.ts';
import type { SnapshotState } from '../state.ts';
import type { UpdateDeps } from './deps.ts';
import { UpdateError } from './errors.ts';
import { imageManifest } from './plan.ts';
import type { Judged, OnBooted, Resolved } from './run.ts';

/** The booted and the default snapshot's image ages: recorded at commit, else from the cache's kept manifests. */
async function heldAges(deps: UpdateDeps, run: OnBooted): Promise<HeldAge[]> {
  const store = deps.delta.tocStore(join(run.ctx.sysroot, run.config.cache), { write: false });
  const held: { s: SnapshotState; role: HeldAge['role'] }[] = [];
  const booted = run.state.snapshots.find((s) => s.booted);
  const def = run.state.snapshots.find((s) => s.default);
  if (booted) held.push({ s: booted, role: 'booted' });
  if (def && def !== booted) held.push({ s: def, role: 'default' });
  const out: HeldAge[] = [];
  for (const { s, role } of held)
    out.push({ snapshot: s.number, role, age: (await snapshotAge(s, store, run.platform)).age });
  return out;
}

/** Refuse an image older than the booted or pending one (DOWNGRADE); --allow-downgrade lets it through, said. */
export async function refuseDowngrade<R extends OnBooted & Resolved>(deps: UpdateDeps, run: R): Promise<R & Judged> {
  const offered = run.offered ?? (await imageManifest(run.source, run.root, run.platform, run.signal));
  const age = judgeAge(ageOfManifests(offered.manifests), await heldAges(deps, run));
  for (const note of age.notes) run.progress(`downgrade check: ${note}`);
  if (age.older.length > 0) {
    const why = age.older.join('; ');
    if (!run.opts.allowDowngrade)
      throw new UpdateError(
        'DOWNGRADE',
        `${run.image} (${run.root.digest}) is older than what this system runs or has pending: ${why}; nothing was downloaded or written (--allow-downgrade installs it)`,
        { image: run.image, digest: run.root.digest, offered: age.offered, older: age.older },
      );
    run.progress(`installing an older image (--allow-downgrade): ${why}`);
  } else if (age.notes.length === 0) run.progress(`image age: ${describeAge(age.offered)}, not older than this system`);
  return { ...run, offered, age };
}
