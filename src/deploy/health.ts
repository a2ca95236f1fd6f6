/**
 * Boot health: decide whether the snapshot that just booted is good, and roll back when not.
 *
 * tiu-health.service runs `tiu health --boot` before boot-complete.target on every boot:
 *
 *   booted snapshot already marked good    run the checks, report; never roll back a proven snapshot
 *   not marked (a new update) or bad       count the boot (userdata tiu-boot-attempts), then
 *     - attempts exhausted (earlier boots never got as far as marking it): roll back, no checks
 *     - checks pass: mark it good (tiu-health=good)
 *     - a check fails: mark it bad, make the last good snapshot the default, reboot
 *
 * The boot is counted before the checks run, so a boot that hangs or crashes in the middle
 * (and is reset by a watchdog or a person) still counts. State lives in snapper userdata of
 * the snapshots themselves, like everything else `tiu status` shows.
 *
 * The decisions are pure functions of the snapshot list (planBoot, planAfterChecks,
 * rollbackTarget); runBootHealth carries them out through the HealthHost it is given.
 */
import { TiuError } from '../errors.ts';

/** Userdata keys the health check writes. */
export const HEALTH_UD = {
  health: 'tiu-health',
  attempts: 'tiu-boot-attempts',
  /** Names of the checks that failed (comma-free, ';'-separated). */
  failed: 'tiu-health-failed',
} as const;

export type HealthMark = 'good' | 'bad';

/** What the health logic needs to know about a snapshot (deploy/state's SnapshotState fits). */
export interface HealthSnapshot {
  number: number;
  inProgress: boolean;
  userdata: Record<string, string>;
}

export interface HealthState {
  snapshots: HealthSnapshot[];
  booted?: number;
  default?: number;
}

export class HealthError extends TiuError {}

export const DEFAULT_MAX_ATTEMPTS = 3;

export function healthOf(s: { userdata: Record<string, string> }): HealthMark | undefined {
  const v = s.userdata[HEALTH_UD.health];
  return v === 'good' || v === 'bad' ? v : undefined;
}

export function attemptsOf(s: { userdata: Record<string, string> }): number {
  const n = Number(s.userdata[HEALTH_UD.attempts] ?? 0);
  return Number.isInteger(n) && n > 0 ? n : 0;
}

/**
 * Where to go when `booted` is unhealthy: the newest snapshot marked good; where none is marked
 * (snapshots from before tiu's health checks), the newest finished older one not marked bad.
 */
export function rollbackTarget(state: HealthState, booted: number): number | undefined {
  const candidates = state.snapshots
    .filter((s) => s.number !== booted && !s.inProgress && healthOf(s) !== 'bad')
    .sort((a, b) => a.number - b.number);
  const good = candidates.filter((s) => healthOf(s) === 'good');
  return (good.at(-1) ?? candidates.filter((s) => s.number < booted).at(-1))?.number;
}

export type BootPlan =
  /** Proven earlier: run the checks and report, change nothing. */
  | { kind: 'verify'; snapshot: number }
  /** Count this boot (write `attempt`), then run the checks. */
  | { kind: 'check'; snapshot: number; attempt: number }
  /** Boots were attempted `attempts` times without being marked good: roll back now. */
  | { kind: 'give-up'; snapshot: number; attempts: number; rollbackTo: number | undefined };

export function planBoot(state: HealthState, maxAttempts = DEFAULT_MAX_ATTEMPTS): BootPlan {
  const n = state.booted;
  if (n === undefined) {
    throw new HealthError(
      'SYSROOT_NOT_SNAPSHOT',
      'the running root is not a snapper snapshot (@/.snapshots/N/snapshot): nothing to check or roll back',
    );
  }
  const snap = state.snapshots.find((s) => s.number === n);
  if (!snap)
    throw new HealthError('SNAPSHOT_NOT_FOUND', `the booted snapshot ${n} is not in snapper's list`, { snapshot: n });
  if (healthOf(snap) === 'good') return { kind: 'verify', snapshot: n };
  const before = attemptsOf(snap);
  if (before >= maxAttempts)
    return { kind: 'give-up', snapshot: n, attempts: before, rollbackTo: rollbackTarget(state, n) };
  return { kind: 'check', snapshot: n, attempt: before + 1 };
}

export interface CheckResult {
  /** The check's file name, e.g. `50-network` or `health-checker:etcd.sh`. */
  name: string;
  path: string;
  ok: boolean;
  exitCode?: number;
  timedOut?: boolean;
  /** The tail of what it printed. */
  output: string;
}

export type AfterChecks =
  | { kind: 'mark-good'; snapshot: number }
  /** Failed on a snapshot proven earlier: report only. */
  | { kind: 'report'; snapshot: number; failed: string[] }
  | { kind: 'roll-back'; snapshot: number; failed: string[]; rollbackTo: number | undefined };

export function planAfterChecks(
  state: HealthState,
  plan: Exclude<BootPlan, { kind: 'give-up' }>,
  results: CheckResult[],
): AfterChecks {
  const failed = results.filter((r) => !r.ok).map((r) => r.name);
  if (failed.length === 0)
    return plan.kind === 'verify'
      ? { kind: 'report', snapshot: plan.snapshot, failed }
      : { kind: 'mark-good', snapshot: plan.snapshot };
  if (plan.kind === 'verify') return { kind: 'report', snapshot: plan.snapshot, failed };
  return { kind: 'roll-back', snapshot: plan.snapshot, failed, rollbackTo: rollbackTarget(state, plan.snapshot) };
}

/** The side effects, given by the caller (the agent wires them to snapper, btrfs, systemctl). */
export interface HealthHost {
  readState(): Promise<HealthState>;
  /** Set userdata keys on snapshot n (an empty value removes the key). */
  setUserdata(n: number, data: Record<string, string>): Promise<void>;
  /** Make snapshot n the default (the next boot starts it). */
  setDefault(n: number): Promise<void>;
  runChecks(): Promise<CheckResult[]>;
  /**
   * The boot loader's verdict on snapshot n's entry (systemd-boot: bless drops the tries counter,
   * as systemd-bless-boot does; bad sets it to `+0-N`, so the loader goes back by itself).
   * Absent without a boot integration.
   */
  markEntry?(n: number, mark: HealthMark): Promise<void>;
  reboot(): Promise<void>;
  log(line: string): void;
}

export interface BootHealthResult {
  snapshot: number;
  /** What was decided. */
  outcome: 'good' | 'verified' | 'failed-proven' | 'rolled-back' | 'no-rollback-target';
  attempt?: number;
  checks: CheckResult[];
  failed: string[];
  rollbackTo?: number;
  rebooting: boolean;
}

/** The failed checks' names as one userdata value (snapper takes no ',' or '=' in values). */
export function failedValue(failed: string[]): string {
  return failed
    .map((f) => f.replace(/[,=\n]/g, '_'))
    .join(';')
    .slice(0, 200);
}

export async function runBootHealth(
  host: HealthHost,
  opts: { maxAttempts?: number; reboot?: boolean } = {},
): Promise<BootHealthResult> {
  const state = await host.readState();
  const plan = planBoot(state, opts.maxAttempts ?? DEFAULT_MAX_ATTEMPTS);
  const doReboot = opts.reboot ?? true;

  const rollBack = async (
    n: number,
    failed: string[],
    to: number | undefined,
    checks: CheckResult[],
    attempt?: number,
  ): Promise<BootHealthResult> => {
    await host.setUserdata(n, { [HEALTH_UD.health]: 'bad', [HEALTH_UD.failed]: failedValue(failed) });
    // Before the reboot: even if setting the default fails, the loader no longer picks n.
    if (to !== undefined) await host.markEntry?.(n, 'bad');
    if (to === undefined) {
      host.log(`snapshot ${n} is unhealthy, and there is no good snapshot to roll back to: staying on it`);
      return { snapshot: n, outcome: 'no-rollback-target', attempt, checks, failed, rebooting: false };
    }
    host.log(
      `snapshot ${n} is unhealthy (${failed.join(', ')}): making snapshot ${to} the default${doReboot ? ' and rebooting' : ''}`,
    );
    await host.setDefault(to);
    if (doReboot) await host.reboot();
    return { snapshot: n, outcome: 'rolled-back', attempt, checks, failed, rollbackTo: to, rebooting: doReboot };
  };

  if (plan.kind === 'give-up') {
    return rollBack(plan.snapshot, [`not marked good after ${plan.attempts} boots`], plan.rollbackTo, []);
  }
  if (plan.kind === 'check') {
    await host.setUserdata(plan.snapshot, { [HEALTH_UD.attempts]: String(plan.attempt) });
    host.log(`checking snapshot ${plan.snapshot} (boot attempt ${plan.attempt})`);
  }
  const checks = await host.runChecks();
  for (const c of checks)
    host.log(`check ${c.name}: ${c.ok ? 'ok' : c.timedOut ? 'timed out' : `failed (exit ${c.exitCode})`}`);
  const after = planAfterChecks(state, plan, checks);
  const attempt = plan.kind === 'check' ? plan.attempt : undefined;
  switch (after.kind) {
    case 'mark-good':
      await host.setUserdata(after.snapshot, { [HEALTH_UD.health]: 'good', [HEALTH_UD.failed]: '' });
      await host.markEntry?.(after.snapshot, 'good');
      host.log(`snapshot ${after.snapshot} is healthy: marked good`);
      return { snapshot: after.snapshot, outcome: 'good', attempt, checks, failed: [], rebooting: false };
    case 'report':
      // A proven snapshot whose entry still counts (blessed before the integration, or by hand).
      if (!after.failed.length) await host.markEntry?.(after.snapshot, 'good');
      if (after.failed.length)
        host.log(
          `snapshot ${after.snapshot} was good before; failing now (${after.failed.join(', ')}): not rolling back`,
        );
      return {
        snapshot: after.snapshot,
        outcome: after.failed.length ? 'failed-proven' : 'verified',
        checks,
        failed: after.failed,
        rebooting: false,
      };
    case 'roll-back':
      return rollBack(after.snapshot, after.failed, after.rollbackTo, checks, attempt);
  }
}
