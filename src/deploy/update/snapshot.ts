/**
 * Stage `snapshot`: the new snapper snapshot of the booted system, marked in progress, and what
 * happens to it when a later stage fails (`abandon`): it is deleted again, and the btrfs default
 * never moved, so the system is as it was.
 */
import { asError, isDiskFullError } from '../../errors.ts';
import { snapshotPath } from '../state.ts';
import type { UpdateDeps } from './deps.ts';
import { UpdateError } from './errors.ts';
import type { Checked, Staged } from './run.ts';

/** The reserve is still free (the apply checks it again as it writes); then the snapshot, in progress. */
export async function stageSnapshot(deps: UpdateDeps, run: Checked): Promise<Staged> {
  const { ctx, from, image } = run;
  await deps.system.checkRoom(ctx.sysroot, 0, run.config.diskReserve, `a new snapshot of ${image}`);
  run.progress(`creating snapshot from ${from}`);
  const n = await deps.system.createInProgress(ctx, {
    from,
    description: `tiu update to ${image}`.slice(0, 200),
    image,
  });
  return { ...run, snapshot: n, newRoot: snapshotPath(ctx.sysroot, n), oldRoot: snapshotPath(ctx.sysroot, from) };
}

/**
 * A stage after `stageSnapshot` failed with `e`: the snapshot is deleted (a failing delete is
 * left to the next run's cleanup of in-progress snapshots). Returns the error to throw: a full
 * disk said as DISK_FULL naming the snapshot, anything else unchanged.
 */
export async function abandon(deps: UpdateDeps, run: Staged, e: unknown): Promise<unknown> {
  const n = run.snapshot;
  run.progress(`update failed, deleting snapshot ${n}: ${asError(e).message}`);
  try {
    await deps.system.deleteSnapshot(run.ctx, n);
  } catch (d) {
    run.progress(`could not delete snapshot ${n} (the next run retries): ${asError(d).message}`);
  }
  if (!isDiskFullError(e)) return e;
  return new UpdateError(
    'DISK_FULL',
    `no space left on the filesystem of ${run.ctx.sysroot} while writing snapshot ${n}; it was deleted again: ${asError(e).message}`,
    { snapshot: n },
    { cause: e },
  );
}
