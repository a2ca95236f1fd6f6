/**
 * tiu's delta artifact in the bench (issue 16): made in CI by `tiu delta oci:LAYOUT:base
 * oci:LAYOUT:upgraded` (time, peak RSS, artifact size: beside `ostree static-delta generate`),
 * then pushed with the upgraded image to its own repository (`tiu copy --referrers`), so the
 * update section measures `tiu update` with the artifact (bench/tiu-delta) and without it
 * (bench/tiu, the file-level path). A checkout without `tiu delta` leaves this out and says so.
 */
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { measured, sh } from './lib/proc.ts';
import { MAKE_DELTA } from './ostree.ts';
import { log, record, RUNS, tiuBin, tiuHas, type Ctx } from './run.ts';

export const TIU_DELTA = 'tiu delta';
/** The registry repository holding upgraded with its delta artifact. */
export const DELTA_REPO = 'bench/tiu-delta';

async function blobNames(layout: string): Promise<Set<string>> {
  return new Set(await readdir(join(layout, 'blobs/sha256')));
}

/**
 * Make the artifact RUNS times (it is reproducible: the same blobs each time) and record what it
 * took; its size is that of the blobs it added to the layout (manifest, index, patches, config).
 * Returns whether the layout now holds one.
 */
export async function makeTiuDelta(ctx: Ctx): Promise<boolean> {
  const layout = ctx.tiuLayout;
  if (!layout) return false;
  if (!(await tiuHas('delta'))) {
    ctx.missing.push(`${MAKE_DELTA} and update with delta artifact: \`tiu delta\` not in this checkout yet`);
    return false;
  }
  const before = await blobNames(layout);
  for (let i = 0; i < RUNS; i++) {
    log(`tiu delta base → upgraded (${i + 1}/${RUNS})`);
    const m = await measured(tiuBin, ['delta', `oci:${layout}:base`, `oci:${layout}:upgraded`]);
    let size = 0;
    for (const name of await blobNames(layout))
      if (!before.has(name)) size += (await stat(join(layout, 'blobs/sha256', name))).size;
    if (size === 0) throw new Error('tiu delta added no blob to the layout');
    record(
      ctx,
      MAKE_DELTA,
      'time',
      's',
      TIU_DELTA,
      [m.wall],
      'tiu delta oci:LAYOUT:base oci:LAYOUT:upgraded: zstd patch-from per changed file and TOC, an OCI artifact referring to upgraded; its size is the blobs it added to the layout',
    );
    record(ctx, MAKE_DELTA, 'peak RSS', 'B', TIU_DELTA, [m.rss]);
    record(ctx, MAKE_DELTA, 'delta size', 'B', TIU_DELTA, [size]);
  }
  return true;
}

/** upgraded with its referrers (the artifact) into the registry's DELTA_REPO. */
export async function pushWithDelta(ctx: Ctx): Promise<void> {
  await sh(tiuBin, [
    'copy',
    '--referrers',
    `oci:${ctx.tiuLayout!}:upgraded`,
    `docker://${ctx.proxy.host}/${DELTA_REPO}:upgraded`,
  ]);
}
