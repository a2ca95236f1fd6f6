/**
 * Stages before anything is read of the image: `onBooted` (the base snapshot and what the image
 * may not write; `tiu update --check` shares it) and `settle` (under the lock: what a crashed
 * run left, the ESP, the cache).
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { DEVICE_DATA } from '../../bundle/os-layout.ts';
import { snapshotPath } from '../state.ts';
import type { UpdateDeps } from './deps.ts';
import { UpdateError } from './errors.ts';
import type { OnBooted, Settled, UpdateRun } from './run.ts';

/** Top-level paths of a snapshot that are not image content: never written or deleted by the apply. */
export const PRESERVE = [
  ...DEVICE_DATA,
  'var',
  'boot/grub2/x86_64-efi',
  'boot/grub2/i386-pc',
  'boot/grub2/arm64-efi',
  'boot/grub2/powerpc-ieee1275',
  'boot/grub2/s390x-emu',
  'boot/efi',
] as const;

/** The tag an image reference is kept under in the cache layout. */
export function cacheTag(reference: string): string {
  return `tiu-${createHash('sha256').update(reference).digest('hex').slice(0, 32)}`;
}

/** The system runs from a snapper snapshot, the base of the update; the paths the image may not write. */
export async function onBooted<R extends UpdateRun>(deps: UpdateDeps, run: R): Promise<R & OnBooted> {
  const state = await deps.system.readState(run.ctx);
  if (state.booted === undefined)
    throw new UpdateError(
      'SYSROOT_NOT_SNAPSHOT',
      `${run.ctx.sysroot} does not run from a snapper snapshot (@/.snapshots/N/snapshot)`,
      { sysroot: run.ctx.sysroot },
    );
  // What the image may not write: the preserved paths and the booted system's fstab mount points.
  const reserved = await deps.system.reservedOf(snapshotPath(run.ctx.sysroot, state.booted), PRESERVE);
  return { ...run, state, from: state.booted, reserved };
}

/**
 * Under the update lock: unfinished snapshots of an interrupted run go, and with systemd-boot
 * the ESP follows the snapshots (deleted ones, a commit cut short, a counter that ran out)
 * before anything new is written; the booted snapshot's entry must exist. Then the cache opens.
 */
export async function settle(deps: UpdateDeps, run: UpdateRun): Promise<Settled> {
  const { ctx, config, progress } = run;
  run.held.lock = await deps.system.lock(ctx.sysroot);
  const cleanup = await deps.system.cleanupInProgress(ctx);
  if (cleanup.deleted.length)
    progress(`removed unfinished snapshot(s) ${cleanup.deleted.join(', ')} left by an interrupted update`);
  const boot = await deps.system.detectBoot(ctx.sysroot, config);
  if (boot) {
    const booted = (await deps.system.readState(ctx)).booted;
    await deps.system.settleBoot(ctx, boot, config, { log: progress, required: booted !== undefined ? [booted] : [] });
  }
  const based = await onBooted(deps, run);
  const cacheDir = join(ctx.sysroot, config.cache);
  const cache = await deps.openCache(cacheDir);
  return { ...based, cleanup, boot, cacheDir, cache, tag: cacheTag(run.image) };
}
