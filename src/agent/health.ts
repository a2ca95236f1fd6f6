/**
 * The boot health check as tiu-health.service runs it (`tiu health --boot`): the decisions
 * of deploy/health.ts wired to the real system, snapper userdata for the marks, the btrfs
 * default subvolume for the rollback, systemctl for the reboot.
 */
import { reboot } from '../host/system.ts';
import { runBootHealth, type BootHealthResult, type HealthHost } from '../deploy/health.ts';
import { discoverChecks, runChecks, DEFAULT_CHECK_TIMEOUT_MS } from '../deploy/health-checks.ts';
import { openContext, readState } from '../deploy/state.ts';
import { setDefaultSnapshot } from '../deploy/snapshot.ts';
import { acquireUpdateLock } from '../deploy/lock.ts';
import { loadConfig } from '../deploy/config.ts';
import { detectBoot, settleBoot, type SettleResult } from '../deploy/boot/index.ts';

export interface BootHealthOptions {
  sysroot?: string;
  maxAttempts?: number;
  checkTimeoutMs?: number;
  /** Reboot after a rollback (default true; false for tests and for a person watching). */
  reboot?: boolean;
  log?: (line: string) => void;
}

export async function bootHealth(opts: BootHealthOptions = {}): Promise<BootHealthResult & { boot?: SettleResult }> {
  const ctx = await openContext(opts.sysroot ?? '/');
  const log = opts.log ?? ((l: string) => process.stderr.write(`tiu-health: ${l}\n`));
  const config = await loadConfig(ctx.sysroot);
  const sd = await detectBoot(ctx.sysroot, config);
  // Not while an update is writing: it would move the default under it.
  const locked = async <T>(f: () => Promise<T>): Promise<T> => {
    const lock = await acquireUpdateLock(ctx.sysroot);
    try {
      return await f();
    } finally {
      await lock.release();
    }
  };
  // systemd-boot: a default whose counter ran out (the loader went back by itself) is marked bad
  // and the defaults come back to the booted snapshot; deleted snapshots lose their entries.
  const settled = sd ? await locked(() => settleBoot(ctx, sd, config, { log })) : undefined;
  const host: HealthHost = {
    readState: () => readState(ctx),
    setUserdata: (n, data) => ctx.snapper.modify(n, { userdata: data }),
    async setDefault(n) {
      await locked(async () => {
        await setDefaultSnapshot(ctx, n);
        if (sd) await settleBoot(ctx, sd, config, { log });
      });
    },
    ...(sd
      ? {
          async markEntry(n: number, mark: 'good' | 'bad') {
            const name = await locked(() => sd.mark(n, mark));
            if (name) log(`boot entry of snapshot ${n}: ${name}`);
          },
        }
      : {}),
    runChecks: async () =>
      runChecks(await discoverChecks(ctx.sysroot), opts.checkTimeoutMs ?? DEFAULT_CHECK_TIMEOUT_MS),
    reboot: () => reboot(),
    log,
  };
  const r = await runBootHealth(host, { maxAttempts: opts.maxAttempts, reboot: opts.reboot });
  return settled ? { ...r, boot: settled } : r;
}
