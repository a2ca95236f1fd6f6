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

export interface BootHealthOptions {
  sysroot?: string;
  maxAttempts?: number;
  checkTimeoutMs?: number;
  /** Reboot after a rollback (default true; false for tests and for a person watching). */
  reboot?: boolean;
  log?: (line: string) => void;
}

export async function bootHealth(opts: BootHealthOptions = {}): Promise<BootHealthResult> {
  const ctx = await openContext(opts.sysroot ?? '/');
  const log = opts.log ?? ((l: string) => process.stderr.write(`tiu-health: ${l}\n`));
  const host: HealthHost = {
    readState: () => readState(ctx),
    setUserdata: (n, data) => ctx.snapper.modify(n, { userdata: data }),
    async setDefault(n) {
      // Not while an update is writing: it would move the default under it.
      const lock = await acquireUpdateLock(ctx.sysroot);
      try {
        await setDefaultSnapshot(ctx, n);
      } finally {
        await lock.release();
      }
    },
    runChecks: async () => runChecks(await discoverChecks(ctx.sysroot), opts.checkTimeoutMs ?? DEFAULT_CHECK_TIMEOUT_MS),
    reboot: () => reboot(),
    log,
  };
  return runBootHealth(host, { maxAttempts: opts.maxAttempts, reboot: opts.reboot });
}
