/**
 * The boot integration as the update, health, rollback and status commands use it. Hosts without
 * systemd-boot on an ESP (GRUB with grub2-snapper-plugin, no ESP) get `undefined` from
 * detectBoot and everything works as before.
 */
import { efivarsDir, procCmdline, readLoaderVariable } from '../../host/esp.ts';
import { HEALTH_UD, failedValue, healthOf } from '../health.ts';
import { setDefaultSnapshot } from '../snapshot.ts';
import { readState, snapshotNumberOf, type Context, type SystemState } from '../state.ts';
import type { TiuConfig } from '../config.ts';
import { parseEntryName } from './entries.ts';
import type { ReconcileReport, SystemdBoot } from './systemd-boot.ts';

export { detectBoot, SystemdBoot, type BootStatus, type ReconcileReport } from './systemd-boot.ts';

export const COUNTER_RAN_OUT = 'the boot counter ran out: the kernel or initrd never reached userspace';

/** `rootflags=subvol=@/.snapshots/N/snapshot` in a kernel command line -> N. */
export function snapshotFromCmdline(cmdline: string): number | undefined {
  const m = /(?:^|\s)rootflags=(?:\S*,)?subvol=([^\s,]+)/.exec(cmdline);
  return m ? snapshotNumberOf(m[1]!) : undefined;
}

export interface BootedFacts {
  /** The snapshot that runs: /proc/cmdline's rootflags subvol on the real system, else what is mounted at the sysroot. */
  booted: number | undefined;
  /** LoaderEntrySelected (the entry systemd-boot started), where the firmware has it. */
  selectedEntry?: string;
}

export async function bootedFacts(ctx: Context, state: SystemState): Promise<BootedFacts> {
  if (ctx.sysroot !== '/') return { booted: state.booted };
  const fromCmdline = snapshotFromCmdline(await procCmdline().catch(() => ''));
  const selected = await readLoaderVariable('LoaderEntrySelected', efivarsDir(ctx.sysroot));
  const fromEntry = selected ? parseEntryName(selected.replace(/^.*\//, ''))?.snapshot : undefined;
  return { booted: fromCmdline ?? fromEntry ?? state.booted, ...(selected ? { selectedEntry: selected } : {}) };
}

export interface SettleResult {
  /** The snapshot whose counter ran out, now marked bad. */
  failed?: number;
  /** The booted good snapshot the defaults went back to. */
  backTo?: number;
  reconcile: ReconcileReport;
}

/**
 * Make the ESP and the snapshots agree; first, when the default snapshot's entry ran out of tries
 * (`+0-N`) and the loader booted an older one instead, mark the default bad (reason
 * COUNTER_RAN_OUT) and make the booted snapshot the btrfs default again (the loader default
 * follows in the reconcile). Callers hold the update lock.
 */
export async function settleBoot(
  ctx: Context,
  sd: SystemdBoot,
  config: Pick<TiuConfig, 'kernelCmdline' | 'bootTries'>,
  o: { log?: (l: string) => void; required?: number[] } = {},
): Promise<SettleResult> {
  let state = await readState(ctx);
  const { booted } = await bootedFacts(ctx, state);
  const out: Partial<SettleResult> = {};
  const def = state.default;
  if (def !== undefined && booted !== undefined && booted !== def) {
    const entry = (await sd.entries()).find((e) => e.snapshot === def);
    const snap = state.snapshots.find((s) => s.number === def);
    if (
      entry?.triesLeft === 0 &&
      snap &&
      healthOf(snap) !== 'good' &&
      state.snapshots.some((s) => s.number === booted)
    ) {
      o.log?.(
        `snapshot ${def}'s boot entry has no tries left and snapshot ${booted} booted instead: marking ${def} bad, making ${booted} the default again`,
      );
      await ctx.snapper.modify(def, {
        userdata: { [HEALTH_UD.health]: 'bad', [HEALTH_UD.failed]: failedValue([COUNTER_RAN_OUT]) },
      });
      await setDefaultSnapshot(ctx, booted);
      out.failed = def;
      out.backTo = booted;
      state = await readState(ctx);
    }
  }
  const required = [...new Set([...(o.required ?? []), ...(state.default !== undefined ? [state.default] : [])])];
  const reconcile = await sd.reconcile(ctx, state, config, { required });
  for (const s of reconcile.skipped) o.log?.(`no boot entry for snapshot ${s.snapshot}: ${s.reason}`);
  return { ...out, reconcile };
}
