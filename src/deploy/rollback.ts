/**
 * `tiu rollback [N]`: make snapshot N the default again (by default the previous good one:
 * the running snapshot while an update is staged, otherwise the newest finished snapshot
 * older than the default). Like `transactional-update rollback`, nothing is copied: the
 * default subvolume moves, and the next boot starts N.
 */
import { TiuError } from '../errors.ts';
import { acquireUpdateLock } from './lock.ts';
import { setDefaultSnapshot } from './snapshot.ts';
import { openContext, readState } from './state.ts';
import { loadConfig } from './config.ts';
import { detectBoot } from './boot/index.ts';

export class RollbackError extends TiuError {}

export interface RollbackResult {
  /** The default before. */
  from: number | undefined;
  to: number;
  booted: number | undefined;
}

export async function rollback(opts: { sysroot?: string; snapshot?: number } = {}): Promise<RollbackResult> {
  const ctx = await openContext(opts.sysroot ?? '/');
  const lock = await acquireUpdateLock(ctx.sysroot);
  try {
    const state = await readState(ctx);
    const to = opts.snapshot ?? state.rollback;
    if (to === undefined)
      throw new RollbackError(
        'ROLLBACK_TARGET_MISSING',
        `there is no earlier snapshot to roll back to on ${ctx.sysroot}`,
        {
          default: state.default,
        },
      );
    const snap = state.snapshots.find((s) => s.number === to);
    if (!snap)
      throw new RollbackError('SNAPSHOT_NOT_FOUND', `snapshot ${to} does not exist on ${ctx.sysroot}`, {
        snapshot: to,
      });
    if (snap.inProgress && !snap.default)
      throw new RollbackError('SNAPSHOT_UNFINISHED', `snapshot ${to} is an unfinished update and cannot be booted`, {
        snapshot: to,
      });
    // systemd-boot: N's entry exists before the btrfs default moves (ESP_FULL refuses here,
    // nothing changed); after it, the reconcile parks the newer entries and N's becomes the
    // loader's choice. A crash in between boots the old default and the next run reconciles.
    const config = await loadConfig(ctx.sysroot);
    const sd = await detectBoot(ctx.sysroot, config);
    if (sd && !(await sd.entries()).some((e) => e.snapshot === to)) {
      const plan = await sd.prepare(ctx, to, config, { tries: false });
      if (!plan)
        throw new RollbackError('KERNEL_MISSING', `snapshot ${to} has no kernel to boot it with systemd-boot`, {
          snapshot: to,
        });
      await sd.stageFiles(ctx, plan);
      await sd.stageEntry(plan);
    }
    // A LoaderEntryDefault naming another entry would keep the loader off N (see commitSnapshot).
    if (sd) await sd.clearForeignEntryDefault();
    if (state.default !== to) await setDefaultSnapshot(ctx, to);
    // Not settleBoot: an admin's rollback to a snapshot whose counter ran out gives it tries again.
    if (sd) await sd.reconcile(ctx, await readState(ctx), config, { required: [to] });
    return { from: state.default, to, booted: state.booted };
  } finally {
    await lock.release();
  }
}
